//! Parameter sweeps (issue #17): `--sweep KEY=SPEC` axes become a list of
//! points, each a set of `--set`-style overrides for one run.
//!
//! SPEC is a comma-separated list of YAML values (`1e-4,3e-4,1e-3`),
//! `range(a, b, step)` (b excluded, like Python), or, with `--sweep-random N`,
//! a distribution: `uniform(a, b)`, `loguniform(a, b)`, `randint(a, b)`
//! (both ends included). Without `--sweep-random` the points are the grid
//! (every combination, first axis slowest); with it, N points are drawn with
//! a seeded generator (lists and ranges are sampled uniformly), so the same
//! command gives the same points.
use serde_json::{json, Value};

/// One `--sweep` axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    /// Dotted param key (may start with `+` to add a key, like `--set`).
    pub key: String,
    pub values: AxisValues,
    /// As typed, for messages.
    pub raw: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AxisValues {
    List(Vec<Value>),
    Uniform(f64, f64),
    LogUniform(f64, f64),
    RandInt(i64, i64),
}

/// A `--sweep` that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SweepError {
    #[error("invalid --sweep `{0}`: expected KEY=VALUES, e.g. `train.lr=1e-4,3e-4` or `train.steps=range(100,500,100)`")]
    Syntax(String),
    #[error("--sweep `{0}` has no values; give at least one, e.g. `{1}=1,2`")]
    Empty(String, String),
    #[error("--sweep `{raw}`: {reason}")]
    Bad { raw: String, reason: String },
    #[error("--sweep `{raw}` is a distribution; it needs `--sweep-random N` (lists and ranges work with or without it)")]
    NeedsRandom { raw: String },
    #[error("--sweep-random needs at least one `--sweep KEY=SPEC` to draw from")]
    RandomWithoutAxes,
    #[error("--sweep `{0}` names the same param twice; give one `--sweep` per param")]
    Duplicate(String),
}

/// Splits at commas outside brackets and quotes (`[1, 2],[3]` is two values).
fn split_top(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut quote) = (0i32, None::<char>);
    let mut cur = String::new();
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{' | '(') => depth += 1,
            (None, ']' | '}' | ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

fn yaml_value(raw: &str, text: &str) -> Result<Value, SweepError> {
    let y: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| SweepError::Bad {
        raw: raw.to_string(),
        reason: format!("`{text}` is not a valid YAML value: {e}"),
    })?;
    serde_json::to_value(y).map_err(|e| SweepError::Bad {
        raw: raw.to_string(),
        reason: e.to_string(),
    })
}

fn numbers(raw: &str, args: &str, n: usize) -> Result<Vec<f64>, SweepError> {
    let parts: Vec<&str> = args.split(',').map(str::trim).collect();
    let nums: Option<Vec<f64>> = parts.iter().map(|p| p.parse::<f64>().ok()).collect();
    match nums {
        Some(v) if v.len() == n || (n == 3 && v.len() == 2) => Ok(v),
        _ => Err(SweepError::Bad {
            raw: raw.to_string(),
            reason: format!("expected {n} numbers in `({args})`"),
        }),
    }
}

/// Parses one `--sweep KEY=SPEC`.
pub fn parse_axis(raw: &str) -> Result<Axis, SweepError> {
    let (key, spec) = raw
        .split_once('=')
        .ok_or_else(|| SweepError::Syntax(raw.to_string()))?;
    let key = key.trim();
    let key = key.strip_prefix("params.").unwrap_or(key).to_string();
    if key.trim_start_matches('+').is_empty() {
        return Err(SweepError::Syntax(raw.to_string()));
    }
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(SweepError::Empty(raw.to_string(), key));
    }
    let call = |name: &str| -> Option<&str> {
        spec.strip_prefix(name)?
            .trim_start()
            .strip_prefix('(')?
            .strip_suffix(')')
    };
    let bad = |reason: &str| SweepError::Bad {
        raw: raw.to_string(),
        reason: reason.to_string(),
    };
    let values = if let Some(args) = call("range") {
        let v = numbers(raw, args, 3)?;
        let (a, b) = (v[0], v[1]);
        let step = v.get(2).copied().unwrap_or(1.0);
        if step == 0.0 || !step.is_finite() || (b - a) / step < 0.0 {
            return Err(bad(
                "`range(a, b, step)` needs a non-zero step that goes from a towards b",
            ));
        }
        let count = ((b - a) / step - 1e-9).ceil().max(0.0) as usize;
        if count == 0 {
            return Err(SweepError::Empty(raw.to_string(), key));
        }
        if count > 100_000 {
            return Err(bad("the range has more than 100000 values"));
        }
        let ints = v.iter().all(|x| x.fract() == 0.0);
        AxisValues::List(
            (0..count)
                .map(|i| {
                    let x = a + step * i as f64;
                    if ints {
                        json!(x as i64)
                    } else {
                        // Round away float noise (0.1 * 3 = 0.30000000000000004).
                        json!((x * 1e12).round() / 1e12)
                    }
                })
                .collect(),
        )
    } else if let Some(args) = call("uniform") {
        let v = numbers(raw, args, 2)?;
        AxisValues::Uniform(v[0], v[1])
    } else if let Some(args) = call("loguniform") {
        let v = numbers(raw, args, 2)?;
        if v[0] <= 0.0 || v[1] <= 0.0 {
            return Err(bad("`loguniform(a, b)` needs a > 0 and b > 0"));
        }
        AxisValues::LogUniform(v[0], v[1])
    } else if let Some(args) = call("randint") {
        let v = numbers(raw, args, 2)?;
        if v.iter().any(|x| x.fract() != 0.0) || v[0] > v[1] {
            return Err(bad("`randint(a, b)` needs integers a <= b"));
        }
        AxisValues::RandInt(v[0] as i64, v[1] as i64)
    } else {
        let parts = split_top(spec);
        if parts.iter().all(|p| p.trim().is_empty()) {
            return Err(SweepError::Empty(raw.to_string(), key));
        }
        let mut vals = Vec::new();
        for p in parts {
            if p.trim().is_empty() {
                return Err(bad("an empty value between commas"));
            }
            vals.push(yaml_value(raw, p.trim())?);
        }
        AxisValues::List(vals)
    };
    Ok(Axis {
        key,
        values,
        raw: raw.to_string(),
    })
}

/// splitmix64: a tiny, seedable generator, so points are reproducible
/// without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One point: (key, value) per axis, in axis order.
pub type Point = Vec<(String, Value)>;

/// The points of a sweep: the grid, or `random` draws with `seed`.
pub fn points(axes: &[Axis], random: Option<usize>, seed: u64) -> Result<Vec<Point>, SweepError> {
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].iter().any(|b| b.key == a.key) {
            return Err(SweepError::Duplicate(a.raw.clone()));
        }
    }
    match random {
        None => {
            let mut out: Vec<Point> = vec![Vec::new()];
            for a in axes {
                let AxisValues::List(vals) = &a.values else {
                    return Err(SweepError::NeedsRandom { raw: a.raw.clone() });
                };
                out = out
                    .into_iter()
                    .flat_map(|p| {
                        vals.iter().map(move |v| {
                            let mut q = p.clone();
                            q.push((a.key.clone(), v.clone()));
                            q
                        })
                    })
                    .collect();
            }
            Ok(out)
        }
        Some(n) => {
            if axes.is_empty() {
                return Err(SweepError::RandomWithoutAxes);
            }
            let mut rng = Rng(seed);
            Ok((0..n)
                .map(|_| {
                    axes.iter()
                        .map(|a| {
                            let v = match &a.values {
                                AxisValues::List(vals) => {
                                    vals[(rng.next_u64() % vals.len() as u64) as usize].clone()
                                }
                                AxisValues::Uniform(lo, hi) => json!(lo + (hi - lo) * rng.unit()),
                                AxisValues::LogUniform(lo, hi) => {
                                    json!((lo.ln() + (hi.ln() - lo.ln()) * rng.unit()).exp())
                                }
                                AxisValues::RandInt(lo, hi) => {
                                    json!(lo + (rng.next_u64() % (hi - lo + 1) as u64) as i64)
                                }
                            };
                            (a.key.clone(), v)
                        })
                        .collect()
                })
                .collect())
        }
    }
}

/// A point as `--set` arguments (values written as JSON, which YAML reads back
/// as the same value).
pub fn overrides(point: &Point) -> Vec<String> {
    point.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_every_combination_first_axis_slowest() {
        let a = parse_axis("train.lr=1e-4,3e-4").unwrap();
        let b = parse_axis("train.distill_weight=0,0.5,1").unwrap();
        let p = points(&[a, b], None, 0).unwrap();
        assert_eq!(p.len(), 6);
        assert_eq!(
            p[0],
            vec![
                ("train.lr".into(), json!(1e-4)),
                ("train.distill_weight".into(), json!(0))
            ]
        );
        assert_eq!(p[5][0].1, json!(3e-4));
        assert_eq!(
            overrides(&p[1]),
            ["train.lr=0.0001", "train.distill_weight=0.5"]
        );
    }

    #[test]
    fn ranges_exclude_the_end_and_keep_integers() {
        let a = parse_axis("steps=range(100, 400, 100)").unwrap();
        assert_eq!(
            a.values,
            AxisValues::List(vec![json!(100), json!(200), json!(300)])
        );
        let a = parse_axis("w=range(0, 0.35, 0.1)").unwrap();
        assert_eq!(
            a.values,
            AxisValues::List(vec![json!(0.0), json!(0.1), json!(0.2), json!(0.3)])
        );
        assert!(matches!(
            parse_axis("w=range(1, 0, 1)"),
            Err(SweepError::Bad { .. })
        ));
    }

    #[test]
    fn lists_keep_brackets_and_strings_together() {
        let a = parse_axis("dims=[1, 2],[3],'a,b'").unwrap();
        assert_eq!(
            a.values,
            AxisValues::List(vec![json!([1, 2]), json!([3]), json!("a,b")])
        );
    }

    #[test]
    fn empty_and_malformed_axes_are_errors() {
        assert!(matches!(
            parse_axis("train.lr="),
            Err(SweepError::Empty(..))
        ));
        assert!(matches!(
            parse_axis("train.lr= , "),
            Err(SweepError::Empty(..))
        ));
        assert!(matches!(parse_axis("train.lr"), Err(SweepError::Syntax(_))));
        let u = parse_axis("lr=loguniform(1e-5, 1e-3)").unwrap();
        assert!(matches!(
            points(&[u], None, 0),
            Err(SweepError::NeedsRandom { .. })
        ));
        assert!(matches!(
            points(&[], Some(3), 0),
            Err(SweepError::RandomWithoutAxes)
        ));
        let d = parse_axis("lr=1,2").unwrap();
        assert!(matches!(
            points(&[d.clone(), d], None, 0),
            Err(SweepError::Duplicate(_))
        ));
    }

    #[test]
    fn random_points_are_seeded_and_in_range() {
        let axes = [
            parse_axis("lr=loguniform(1e-5, 1e-3)").unwrap(),
            parse_axis("k=randint(1, 3)").unwrap(),
            parse_axis("mode=a,b").unwrap(),
        ];
        let p = points(&axes, Some(20), 7).unwrap();
        assert_eq!(p, points(&axes, Some(20), 7).unwrap());
        assert_ne!(p, points(&axes, Some(20), 8).unwrap());
        for pt in &p {
            let lr = pt[0].1.as_f64().unwrap();
            assert!((1e-5..=1e-3).contains(&lr), "{lr}");
            assert!((1..=3).contains(&pt[1].1.as_i64().unwrap()));
            assert!(pt[2].1 == json!("a") || pt[2].1 == json!("b"));
        }
    }
}
