//! Stage fingerprints: kind + resolved config + upstream artifact hashes +
//! declared input files + code version + the pipeline's seed. Two executions with the same
//! fingerprint would compute the same thing, so the second reuses the
//! first's outputs. The inputs are stored next to the hash so `plan` can say
//! which one changed.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FingerprintInputs {
    pub kind: String,
    pub config: Value,
    /// Upstream stage -> combined hash of its content artifacts.
    pub upstream: BTreeMap<String, String>,
    /// Declared input file/folder (relative to the pipeline) -> hash.
    pub deps: BTreeMap<String, String>,
    /// Crate version + the kind's own implementation version.
    pub code_version: String,
    /// The pipeline's `params.seed`, which every stage receives (training
    /// draws its batches from it): another seed is another result. Absent
    /// (and left out of the hash, so older fingerprints stay valid) when the
    /// pipeline sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
}

/// Recursively sorted JSON, so key order in YAML never changes a hash.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, Value> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

impl FingerprintInputs {
    pub fn fingerprint(&self) -> String {
        let mut c = self.clone();
        c.config = canonical(&c.config);
        let text = serde_json::to_string(&c).expect("fingerprint inputs serialize");
        blake3::hash(text.as_bytes()).to_hex().to_string()
    }

    /// Human-readable reasons why `self` differs from `old`.
    pub fn changes_since(&self, old: &FingerprintInputs) -> Vec<String> {
        let mut out = Vec::new();
        if self.kind != old.kind {
            out.push(format!("kind changed: `{}` -> `{}`", old.kind, self.kind));
        }
        diff_values("with", &old.config, &self.config, &mut out);
        for (name, hash) in &self.upstream {
            match old.upstream.get(name) {
                None => out.push(format!("new upstream `{name}`")),
                Some(h) if h != hash => out.push(format!("output of upstream `{name}` changed")),
                _ => {}
            }
        }
        for name in old.upstream.keys() {
            if !self.upstream.contains_key(name) {
                out.push(format!("upstream `{name}` removed"));
            }
        }
        for (dep, hash) in &self.deps {
            match old.deps.get(dep) {
                None => out.push(format!("new input file `{dep}`")),
                Some(h) if h != hash => out.push(format!("input file `{dep}` changed")),
                _ => {}
            }
        }
        for dep in old.deps.keys() {
            if !self.deps.contains_key(dep) {
                out.push(format!("input file `{dep}` no longer declared"));
            }
        }
        if self.seed != old.seed {
            let show = |s: Option<i64>| s.map_or_else(|| "none".to_string(), |s| s.to_string());
            out.push(format!(
                "`params.seed` changed: {} -> {}",
                show(old.seed),
                show(self.seed)
            ));
        }
        if self.code_version != old.code_version {
            out.push(format!(
                "code version changed: {} -> {}",
                old.code_version, self.code_version
            ));
        }
        out
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(37).collect::<String>())
    } else {
        s
    }
}

fn diff_values(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff_values(&p, x, y, out),
                    (None, Some(y)) => out.push(format!("`{p}` added: {}", short(y))),
                    (Some(_), None) => out.push(format!("`{p}` removed")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(format!("`{path}` changed: {} -> {}", short(a), short(b))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn inputs(config: Value) -> FingerprintInputs {
        FingerprintInputs {
            kind: "command".into(),
            config,
            upstream: BTreeMap::from([("a".to_string(), "h1".to_string())]),
            deps: BTreeMap::new(),
            code_version: "1".into(),
            seed: None,
        }
    }

    /// Another `params.seed` is another result (training draws its batches
    /// from it), so it must not be reused; no seed hashes as before.
    #[test]
    fn the_seed_is_part_of_the_fingerprint_and_named_when_it_changes() {
        let none = inputs(json!({"x": 1}));
        let mut a = none.clone();
        a.seed = Some(42);
        let mut b = none.clone();
        b.seed = Some(43);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), none.fingerprint());
        assert_eq!(b.changes_since(&a), vec!["`params.seed` changed: 42 -> 43"]);
        assert_eq!(
            a.changes_since(&none),
            vec!["`params.seed` changed: none -> 42"]
        );
        // Stored inputs from before the field read back as "no seed", and a
        // seedless stage's hash text has no `seed` key.
        let text = serde_json::to_string(&none).unwrap();
        assert!(!text.contains("seed"), "{text}");
        let back: FingerprintInputs = serde_json::from_str(&text).unwrap();
        assert_eq!(back.fingerprint(), none.fingerprint());
    }

    #[test]
    fn key_order_does_not_matter_but_values_do() {
        let a = inputs(json!({"x": 1, "y": {"p": 1, "q": 2}}));
        let b = inputs(serde_json::from_str(r#"{"y": {"q": 2, "p": 1}, "x": 1}"#).unwrap());
        assert_eq!(a.fingerprint(), b.fingerprint());
        let c = inputs(json!({"x": 2, "y": {"p": 1, "q": 2}}));
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(c.changes_since(&a), vec!["`with.x` changed: 1 -> 2"]);
    }

    #[test]
    fn upstream_changes_are_named() {
        let a = inputs(json!({}));
        let mut b = a.clone();
        b.upstream.insert("a".into(), "h2".into());
        assert_eq!(b.changes_since(&a), vec!["output of upstream `a` changed"]);
    }
}
