//! Pipeline parameters: `--set` overrides and `${params.x.y}` interpolation.
//!
//! Overrides are typed the way YAML types a scalar (`3e-4` is a number,
//! `true` a bool, `[1, 2]` a list); a value that is exactly one `${...}`
//! keeps the referenced value's type, so `steps: "${params.train.steps}"`
//! is an integer. Like Hydra, overriding a key that does not exist is an
//! error unless it is prefixed with `+` (add a new key).
use serde_json::Value;

/// One `--set` argument, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Dotted path under `params`.
    pub key: String,
    pub value: Value,
    /// `+key=value`: the key may be new.
    pub add: bool,
    /// The argument as the user typed it (recorded with the run).
    pub raw: String,
}

/// Why an override or reference could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    #[error("invalid --set `{0}`: expected KEY=VALUE, e.g. `train.lr=1e-4`")]
    Syntax(String),
    #[error("invalid --set `{raw}`: value is not valid YAML: {reason}")]
    Value { raw: String, reason: String },
    #[error("--set `{raw}` overrides `params.{key}`, which the pipeline does not define{hint}")]
    UnknownKey {
        raw: String,
        key: String,
        hint: String,
    },
    #[error("--set `{raw}`: `params.{parent}` is not a mapping, so it has no key `{leaf}`")]
    NotAMapping {
        raw: String,
        parent: String,
        leaf: String,
    },
}

impl Override {
    pub fn parse(raw: &str) -> Result<Override, ParamError> {
        let (key, value) = raw
            .split_once('=')
            .ok_or_else(|| ParamError::Syntax(raw.to_string()))?;
        let (add, key) = match key.strip_prefix('+') {
            Some(k) => (true, k),
            None => (false, key),
        };
        let key = key.trim().strip_prefix("params.").unwrap_or(key.trim());
        if key.is_empty() || key.split('.').any(str::is_empty) {
            return Err(ParamError::Syntax(raw.to_string()));
        }
        let value = if value.trim().is_empty() {
            Value::String(String::new())
        } else {
            let yaml: serde_yaml::Value =
                serde_yaml::from_str(value).map_err(|e| ParamError::Value {
                    raw: raw.to_string(),
                    reason: e.to_string(),
                })?;
            serde_json::to_value(yaml).map_err(|e| ParamError::Value {
                raw: raw.to_string(),
                reason: e.to_string(),
            })?
        };
        Ok(Override {
            key: key.to_string(),
            value,
            add,
            raw: raw.to_string(),
        })
    }

    /// Applies the override to the `params` tree.
    pub fn apply(&self, params: &mut Value) -> Result<(), ParamError> {
        let parts: Vec<&str> = self.key.split('.').collect();
        let mut node = params;
        for (i, part) in parts.iter().enumerate() {
            let is_last = i + 1 == parts.len();
            let parent = parts[..i].join(".");
            if node.is_null() && self.add {
                *node = Value::Object(Default::default());
            }
            let Value::Object(map) = node else {
                return Err(ParamError::NotAMapping {
                    raw: self.raw.clone(),
                    parent,
                    leaf: part.to_string(),
                });
            };
            if !map.contains_key(*part) {
                if !self.add {
                    let hint = crate::pipeline::diagnostic::did_you_mean(
                        part,
                        map.keys().map(String::as_str),
                    )
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_else(|| format!("; to add it, write `--set +{}=...`", self.key));
                    return Err(ParamError::UnknownKey {
                        raw: self.raw.clone(),
                        key: self.key.clone(),
                        hint,
                    });
                }
                map.insert(part.to_string(), Value::Null);
            }
            let child = map.get_mut(*part).expect("key inserted above");
            if is_last {
                *child = self.value.clone();
                return Ok(());
            }
            node = child;
        }
        Ok(())
    }
}

/// Flattens `{"train": {"lr": 1}}` into `[("train.lr", 1)]`, the form stored
/// in the results DB and matched by `runs list --where params.train.lr = 1`.
pub fn flatten(value: &Value) -> Vec<(String, Value)> {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => out.push((prefix.to_string(), value.clone())),
        }
    }
    let mut out = Vec::new();
    if !value.is_null() {
        walk("", value, &mut out);
    }
    out
}

/// A problem with one `${...}` reference inside a string.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpolationError {
    #[error("unterminated `${{` in `{0}`")]
    Unterminated(String),
    #[error("`${{{0}}}` must refer to a parameter, like `${{params.train.lr}}`")]
    NotParams(String),
    #[error("`${{params.{key}}}` refers to a parameter that is not defined{hint}")]
    Unknown { key: String, hint: String },
    #[error("`${{params.{0}}}` is a mapping or list and cannot be embedded in a longer string")]
    NotScalar(String),
}

/// Replaces every `${params.a.b}` inside `value`, recursively. Errors carry
/// the path (inside `value`) of the string that failed.
pub fn interpolate(
    value: &Value,
    params: &Value,
) -> Result<Value, Vec<(Vec<String>, InterpolationError)>> {
    let mut errors = Vec::new();
    let out = interpolate_at(value, params, &mut Vec::new(), &mut errors);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn interpolate_at(
    value: &Value,
    params: &Value,
    path: &mut Vec<String>,
    errors: &mut Vec<(Vec<String>, InterpolationError)>,
) -> Value {
    match value {
        Value::String(s) => match interpolate_str(s, params) {
            Ok(v) => v,
            Err(e) => {
                errors.push((path.clone(), e));
                value.clone()
            }
        },
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    path.push(i.to_string());
                    let out = interpolate_at(v, params, path, errors);
                    path.pop();
                    out
                })
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    path.push(k.clone());
                    let out = interpolate_at(v, params, path, errors);
                    path.pop();
                    (k.clone(), out)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn lookup(params: &Value, expr: &str) -> Result<Value, InterpolationError> {
    let expr = expr.trim();
    let key = expr
        .strip_prefix("params.")
        .ok_or_else(|| InterpolationError::NotParams(expr.to_string()))?;
    let mut node = params;
    let mut seen = Vec::new();
    for part in key.split('.') {
        match node.get(part) {
            Some(child) => {
                seen.push(part);
                node = child;
            }
            None => {
                let hint = node
                    .as_object()
                    .and_then(|m| {
                        crate::pipeline::diagnostic::did_you_mean(
                            part,
                            m.keys().map(String::as_str),
                        )
                    })
                    .map(|s| {
                        let mut full = seen.join(".");
                        if !full.is_empty() {
                            full.push('.');
                        }
                        let name = s
                            .trim_start_matches("did you mean `")
                            .trim_end_matches("`?");
                        format!(" (did you mean `params.{full}{name}`?)")
                    })
                    .unwrap_or_default();
                return Err(InterpolationError::Unknown {
                    key: key.to_string(),
                    hint,
                });
            }
        }
    }
    Ok(node.clone())
}

fn interpolate_str(s: &str, params: &Value) -> Result<Value, InterpolationError> {
    if !s.contains("${") {
        return Ok(Value::String(s.to_string()));
    }
    // A string that is exactly one reference keeps the referenced type.
    if let Some(inner) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        if !inner.contains("${") && !inner.contains('}') {
            return lookup(params, inner);
        }
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        // `$${` is an escaped literal `${`.
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| InterpolationError::Unterminated(s.to_string()))?;
        let expr = &after[..end];
        match lookup(params, expr)? {
            Value::String(v) => out.push_str(&v),
            Value::Array(_) | Value::Object(_) => {
                return Err(InterpolationError::NotScalar(
                    expr.trim().trim_start_matches("params.").to_string(),
                ))
            }
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overrides_are_typed() {
        assert_eq!(Override::parse("train.lr=3e-4").unwrap().value, json!(3e-4));
        assert_eq!(Override::parse("a=true").unwrap().value, json!(true));
        assert_eq!(Override::parse("a=[1, 2]").unwrap().value, json!([1, 2]));
        assert_eq!(Override::parse("a=hello").unwrap().value, json!("hello"));
        assert_eq!(Override::parse("params.a=7").unwrap().key, "a");
        assert!(matches!(
            Override::parse("nokey"),
            Err(ParamError::Syntax(_))
        ));
    }

    #[test]
    fn unknown_override_keys_are_errors_unless_added() {
        let mut params = json!({"train": {"lr": 1.0, "steps": 2}});
        let err = Override::parse("train.stesp=5")
            .unwrap()
            .apply(&mut params)
            .unwrap_err();
        assert!(err.to_string().contains("did you mean `steps`"), "{err}");
        Override::parse("+train.warmup=5")
            .unwrap()
            .apply(&mut params)
            .unwrap();
        Override::parse("train.steps=9")
            .unwrap()
            .apply(&mut params)
            .unwrap();
        assert_eq!(
            params,
            json!({"train": {"lr": 1.0, "steps": 9, "warmup": 5}})
        );
    }

    #[test]
    fn interpolation_keeps_types_and_embeds_strings() {
        let params = json!({"train": {"steps": 200, "name": "x"}, "lrs": [1, 2]});
        let v = json!({"steps": "${params.train.steps}", "tag": "run-${params.train.steps}-${params.train.name}", "l": "${params.lrs}", "lit": "$${not}"});
        let out = interpolate(&v, &params).unwrap();
        assert_eq!(
            out,
            json!({"steps": 200, "tag": "run-200-x", "l": [1, 2], "lit": "${not}"})
        );
    }

    #[test]
    fn interpolation_errors_name_the_path() {
        let params = json!({"train": {"steps": 200}});
        let v = json!({"a": {"b": "${params.train.stepz}"}, "c": "${oops", "d": "${env.HOME}"});
        let errs = interpolate(&v, &params).unwrap_err();
        assert_eq!(errs.len(), 3);
        assert_eq!(errs[0].0, vec!["a", "b"]);
        assert!(errs[0]
            .1
            .to_string()
            .contains("did you mean `params.train.steps`"));
        assert!(matches!(errs[1].1, InterpolationError::Unterminated(_)));
        assert!(matches!(errs[2].1, InterpolationError::NotParams(_)));
    }

    #[test]
    fn flatten_uses_dotted_keys() {
        let flat = flatten(&json!({"a": {"b": 1, "c": [1]}, "d": "x"}));
        assert_eq!(
            flat,
            vec![
                ("a.b".to_string(), json!(1)),
                ("a.c".to_string(), json!([1])),
                ("d".to_string(), json!("x"))
            ]
        );
    }
}
