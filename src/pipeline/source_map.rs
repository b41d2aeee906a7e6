//! Where each key and value of a YAML document sits in the file.
//!
//! serde_yaml gives typed values but no positions; yaml-rust2's event parser
//! gives positions. We walk its events once and remember the line/column of
//! every key and value by path, so any later check (an unknown `needs`, a
//! type error inside `with`) can point at the exact spot. Duplicate keys are
//! detected here too, because a `Value` silently cannot hold them.
use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Pos {
    fn from(m: Marker) -> Self {
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// A repeated key in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    pub parent: Vec<String>,
    pub key: String,
    pub first: Pos,
    pub second: Pos,
}

#[derive(Debug, Default)]
pub struct SourceMap {
    keys: HashMap<Vec<String>, Pos>,
    values: HashMap<Vec<String>, Pos>,
    pub duplicates: Vec<DuplicateKey>,
}

/// Deepest nesting mapped; serde_yaml refuses deeper documents (its recursion
/// limit is 128) with a located error of its own.
pub const MAX_DEPTH: usize = 128;

impl SourceMap {
    /// Builds the map; a document yaml-rust2 cannot parse gives an empty map
    /// (serde_yaml reports the syntax error itself).
    ///
    /// Events are pulled one at a time rather than through `Parser::load`, which
    /// recurses once per nesting level: a hand-written or hostile file nested a few
    /// thousand levels deep overflowed the stack there (issue #16). Past
    /// [`MAX_DEPTH`] levels (serde_yaml's own recursion limit, which then reports the
    /// error with its location) the map stops growing, so paths, which are copied
    /// per value, cannot take quadratic memory either.
    pub fn build(text: &str) -> SourceMap {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        loop {
            match parser.next_token() {
                Ok((Event::StreamEnd, _)) => return builder.map,
                Ok((ev, mark)) => {
                    builder.on_event(ev, mark);
                    if builder.stack.len() > MAX_DEPTH {
                        return SourceMap::default();
                    }
                }
                Err(_) => return SourceMap::default(),
            }
        }
    }

    /// Position of the key at `path` (for "unknown key" errors).
    pub fn key(&self, path: &[String]) -> Option<Pos> {
        self.keys.get(path).copied()
    }

    /// Position of the value at `path`, else of its key, else of the nearest
    /// ancestor that has one.
    pub fn value(&self, path: &[String]) -> Option<Pos> {
        if let Some(pos) = self.values.get(path).or_else(|| self.keys.get(path)) {
            return Some(*pos);
        }
        // For an ancestor, its key is the better anchor: a block mapping's
        // own start marker points into its first entry.
        let mut p = path.to_vec();
        loop {
            p.pop()?;
            if let Some(pos) = self.keys.get(&p).or_else(|| self.values.get(&p)) {
                return Some(*pos);
            }
        }
    }
}

enum Frame {
    Mapping {
        path: Vec<String>,
        key: Option<String>,
        seen: HashMap<String, Pos>,
    },
    Sequence {
        path: Vec<String>,
        index: usize,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    map: SourceMap,
}

impl Builder {
    /// Path of the value that the next event starts, if it is a value.
    fn next_value_path(&mut self) -> Option<Vec<String>> {
        match self.stack.last_mut() {
            None => Some(Vec::new()),
            Some(Frame::Mapping { path, key, .. }) => key.take().map(|k| {
                let mut p = path.clone();
                p.push(k);
                p
            }),
            Some(Frame::Sequence { path, index }) => {
                let mut p = path.clone();
                p.push(index.to_string());
                *index += 1;
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from(mark);
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Mapping { path, key, seen }) = self.stack.last_mut() {
                    if key.is_none() {
                        let mut full = path.clone();
                        full.push(text.clone());
                        if let Some(first) = seen.get(&text) {
                            self.map.duplicates.push(DuplicateKey {
                                parent: path.clone(),
                                key: text.clone(),
                                first: *first,
                                second: pos,
                            });
                        } else {
                            seen.insert(text.clone(), pos);
                            self.map.keys.insert(full, pos);
                        }
                        *key = Some(text);
                        return;
                    }
                }
                if let Some(p) = self.next_value_path() {
                    self.map.values.entry(p).or_insert(pos);
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.next_value_path() {
                    self.map.values.entry(p).or_insert(pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_mapping = matches!(ev, Event::MappingStart(..));
                // A complex (non-scalar) key: give it a synthetic name.
                let path = match self.stack.last_mut() {
                    Some(Frame::Mapping { key, .. }) if key.is_none() => {
                        *key = Some("<complex key>".into());
                        None
                    }
                    _ => self.next_value_path(),
                }
                .unwrap_or_else(|| vec!["<complex key>".into()]);
                self.map.values.entry(path.clone()).or_insert(pos);
                self.stack.push(if is_mapping {
                    Frame::Mapping {
                        path,
                        key: None,
                        seen: HashMap::new(),
                    }
                } else {
                    Frame::Sequence { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn records_keys_and_values_by_path() {
        let text = "version: 1\nstages:\n  train:\n    uses: command\n    needs: [a, b]\n";
        let map = SourceMap::build(text);
        assert_eq!(
            map.key(&p(&["stages", "train"])),
            Some(Pos { line: 3, column: 3 })
        );
        assert_eq!(
            map.value(&p(&["stages", "train", "uses"])),
            Some(Pos {
                line: 4,
                column: 11
            })
        );
        assert_eq!(
            map.value(&p(&["stages", "train", "needs", "1"])),
            Some(Pos {
                line: 5,
                column: 16
            })
        );
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(
            map.value(&p(&["stages", "train", "with", "x"])),
            Some(Pos { line: 3, column: 3 })
        );
    }

    #[test]
    fn finds_duplicate_keys() {
        let map = SourceMap::build("stages:\n  a: {}\n  a: {}\n");
        assert_eq!(map.duplicates.len(), 1);
        assert_eq!(map.duplicates[0].key, "a");
        assert_eq!(map.duplicates[0].first.line, 2);
        assert_eq!(map.duplicates[0].second.line, 3);
    }
}
