//! Regex renames for checkpoints whose tensor names differ from HF LLaMA names.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::error::{CheckpointError, Result};

/// One rename rule: `pattern` (a regex) replaced by `replace` (`$1` refers to groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRule {
    pub pattern: String,
    pub replace: String,
}

/// Ordered rename rules; every rule is applied to every name, in order.
#[derive(Debug, Clone, Default)]
pub struct NameMap {
    rules: Vec<(Regex, String)>,
}

impl NameMap {
    pub fn new(rules: &[NameRule]) -> Result<Self> {
        let mut out = Vec::new();
        for r in rules {
            let re = Regex::new(&r.pattern).map_err(|e| CheckpointError::NameMap {
                pattern: r.pattern.clone(),
                detail: e.to_string(),
            })?;
            out.push((re, r.replace.clone()));
        }
        Ok(NameMap { rules: out })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn apply(&self, name: &str) -> String {
        let mut s = name.to_string();
        for (re, rep) in &self.rules {
            s = re.replace_all(&s, rep.as_str()).into_owned();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_in_order() {
        let m = NameMap::new(&[
            NameRule {
                pattern: r"^transformer\.h\.(\d+)\.".into(),
                replace: "model.layers.$1.".into(),
            },
            NameRule {
                pattern: r"\.attn\.".into(),
                replace: ".self_attn.".into(),
            },
        ])
        .unwrap();
        assert_eq!(
            m.apply("transformer.h.3.attn.q_proj.weight"),
            "model.layers.3.self_attn.q_proj.weight"
        );
        let e = NameMap::new(&[NameRule {
            pattern: "(".into(),
            replace: String::new(),
        }])
        .unwrap_err();
        assert!(e.to_string().contains("`(`"));
    }
}
