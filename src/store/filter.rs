//! The `runs list --where` filter language: comparisons on a run's params,
//! final metrics and attributes, joined with `and`/`or` and parentheses.
//!
//! ```text
//! metrics.speedup >= 2 and (params.train.lr = 3e-4 or attributes.status = failed)
//! ```
//!
//! A small hand-written lexer and recursive-descent parser, so every error
//! can point at the column where the filter went wrong. It is evaluated in
//! Rust against values the caller looks up (`FieldSource`), which keeps the
//! SQL schema out of the language. A run that lacks a field never matches
//! a comparison on it (like SQL's NULL), `!=` included.
use std::fmt;

use serde_json::Value;

/// Run columns a filter may name as `attributes.<name>`.
pub const ATTRIBUTES: &[&str] = &[
    "id",
    "name",
    "status",
    "pipeline_path",
    "pipeline_sha",
    "git_commit",
    "git_dirty",
    "host",
    "device",
    "torch_version",
    "seed",
    "started_at",
    "ended_at",
];

/// A filter that did not parse: what and where (1-based column).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} at column {column}")]
pub struct FilterError {
    pub column: usize,
    pub message: String,
}

impl FilterError {
    /// The filter with a caret under the column, for the terminal.
    pub fn render(&self, filter: &str) -> String {
        format!(
            "error: {self}\n  {filter}\n  {}^",
            " ".repeat(self.column.saturating_sub(1))
        )
    }
}

/// What a field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `params.train.lr`: a flattened param key.
    Param(String),
    /// `metrics.speedup` or `metrics.stage.key`: a final metric value.
    Metric(String),
    /// `attributes.status`: a run column.
    Attribute(String),
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Param(k) => write!(f, "params.{k}"),
            Field::Metric(k) => write!(f, "metrics.{k}"),
            Field::Attribute(k) => write!(f, "attributes.{k}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal on the right of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    Bool(bool),
    Text(String),
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Cmp(Field, CmpOp, Literal),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Looks up a field's value for one run; None when the run lacks it.
pub trait FieldSource {
    fn value(&self, field: &Field) -> Option<Value>;
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Op(String),
    LParen,
    RParen,
}

/// (token, 1-based column)
fn lex(s: &str) -> Result<Vec<(Tok, usize)>, FilterError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            out.push((Tok::LParen, col));
            i += 1;
        } else if c == ')' {
            out.push((Tok::RParen, col));
            i += 1;
        } else if "=!<>".contains(c) {
            let start = i;
            while i < chars.len() && "=!<>".contains(chars[i]) {
                i += 1;
            }
            out.push((Tok::Op(chars[start..i].iter().collect()), col));
        } else if c == '"' || c == '\'' {
            let start = i;
            i += 1;
            let mut text = String::new();
            while i < chars.len() && chars[i] != c {
                text.push(chars[i]);
                i += 1;
            }
            if i == chars.len() {
                return Err(FilterError {
                    column: start + 1,
                    message: format!("unterminated string (missing closing {c})"),
                });
            }
            i += 1;
            out.push((Tok::Quoted(text), col));
        } else {
            let start = i;
            while i < chars.len() && !chars[i].is_whitespace() && !"()=!<>\"'".contains(chars[i]) {
                i += 1;
            }
            out.push((Tok::Word(chars[start..i].iter().collect()), col));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end_col: usize,
}

impl Parser {
    fn peek(&self) -> Option<&(Tok, usize)> {
        self.toks.get(self.pos)
    }

    fn col(&self) -> usize {
        self.peek().map(|t| t.1).unwrap_or(self.end_col)
    }

    fn err<T>(&self, column: usize, message: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            column,
            message: message.into(),
        })
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some((Tok::Word(w), _)) if w.eq_ignore_ascii_case(kw))
    }

    fn or_expr(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.and_expr()?;
        while self.keyword("or") {
            self.pos += 1;
            let right = self.and_expr()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, FilterError> {
        let mut left = self.primary()?;
        while self.keyword("and") {
            self.pos += 1;
            let right = self.primary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<Expr, FilterError> {
        match self.peek().cloned() {
            Some((Tok::LParen, col)) => {
                self.pos += 1;
                let e = self.or_expr()?;
                match self.peek() {
                    Some((Tok::RParen, _)) => {
                        self.pos += 1;
                        Ok(e)
                    }
                    _ => self.err(
                        self.col(),
                        format!("expected `)` to close the `(` at column {col}"),
                    ),
                }
            }
            Some((Tok::Word(w), col)) => {
                self.pos += 1;
                let field = parse_field(&w, col)?;
                let op = self.op()?;
                let lit = self.literal()?;
                Ok(Expr::Cmp(field, op, lit))
            }
            Some((_, col)) => self.err(
                col,
                "expected a field such as `metrics.speedup`, `params.train.lr` or `attributes.status`",
            ),
            None => self.err(
                self.end_col,
                "expected a comparison such as `metrics.speedup >= 2`",
            ),
        }
    }

    fn op(&mut self) -> Result<CmpOp, FilterError> {
        let col = self.col();
        match self.peek().cloned() {
            Some((Tok::Op(o), _)) => {
                self.pos += 1;
                Ok(match o.as_str() {
                    "=" | "==" => CmpOp::Eq,
                    "!=" | "<>" => CmpOp::Ne,
                    "<" => CmpOp::Lt,
                    "<=" => CmpOp::Le,
                    ">" => CmpOp::Gt,
                    ">=" => CmpOp::Ge,
                    _ => {
                        return self.err(
                            col,
                            format!("unknown operator `{o}` (use =, !=, <, <=, >, >=)"),
                        )
                    }
                })
            }
            _ => self.err(col, "expected an operator (=, !=, <, <=, >, >=)"),
        }
    }

    fn literal(&mut self) -> Result<Literal, FilterError> {
        let col = self.col();
        match self.peek().cloned() {
            Some((Tok::Quoted(s), _)) => {
                self.pos += 1;
                Ok(Literal::Text(s))
            }
            Some((Tok::Word(w), _)) => {
                self.pos += 1;
                Ok(match w.as_str() {
                    "true" => Literal::Bool(true),
                    "false" => Literal::Bool(false),
                    _ => match w.parse::<f64>() {
                        Ok(n) => Literal::Number(n),
                        Err(_) => Literal::Text(w),
                    },
                })
            }
            _ => self.err(col, "expected a value (number, word or quoted string)"),
        }
    }
}

fn parse_field(w: &str, col: usize) -> Result<Field, FilterError> {
    let bad = |message: String| FilterError {
        column: col,
        message,
    };
    let (prefix, rest) = w.split_once('.').ok_or_else(|| {
        bad(format!(
            "`{w}` needs a prefix: `params.`, `metrics.` or `attributes.`"
        ))
    })?;
    if rest.is_empty() {
        return Err(bad(format!("`{w}` names no key after `{prefix}.`")));
    }
    match prefix {
        "params" => Ok(Field::Param(rest.to_string())),
        "metrics" => Ok(Field::Metric(rest.to_string())),
        "attributes" => {
            if ATTRIBUTES.contains(&rest) {
                Ok(Field::Attribute(rest.to_string()))
            } else {
                let hint = crate::pipeline::did_you_mean(rest, ATTRIBUTES.iter().copied())
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                Err(bad(format!(
                    "unknown attribute `{rest}`{hint}; attributes are {}",
                    ATTRIBUTES.join(", ")
                )))
            }
        }
        _ => Err(bad(format!(
            "unknown prefix `{prefix}.`; use `params.`, `metrics.` or `attributes.`"
        ))),
    }
}

/// Parses a filter; the error names the column of the problem.
pub fn parse(filter: &str) -> Result<Expr, FilterError> {
    let toks = lex(filter)?;
    let mut p = Parser {
        toks,
        pos: 0,
        end_col: filter.chars().count() + 1,
    };
    let e = p.or_expr()?;
    if let Some((t, col)) = p.peek() {
        let what = match t {
            Tok::RParen => "unmatched `)`".to_string(),
            _ => "expected `and`, `or` or the end of the filter".to_string(),
        };
        return Err(FilterError {
            column: *col,
            message: what,
        });
    }
    Ok(e)
}

fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        _ => None,
    }
}

fn holds(op: CmpOp, ord: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        CmpOp::Eq => ord == Equal,
        CmpOp::Ne => ord != Equal,
        CmpOp::Lt => ord == Less,
        CmpOp::Le => ord != Greater,
        CmpOp::Gt => ord == Greater,
        CmpOp::Ge => ord != Less,
    }
}

impl Expr {
    /// Whether a run matches. Numbers compare numerically (`3e-4` equals
    /// `0.0003`), text compares as text, booleans as booleans.
    pub fn matches(&self, src: &dyn FieldSource) -> bool {
        match self {
            Expr::And(a, b) => a.matches(src) && b.matches(src),
            Expr::Or(a, b) => a.matches(src) || b.matches(src),
            Expr::Cmp(field, op, lit) => {
                let Some(v) = src.value(field) else {
                    return false;
                };
                match lit {
                    Literal::Number(n) => match as_number(&v) {
                        Some(x) => x.partial_cmp(n).is_some_and(|o| holds(*op, o)),
                        None => *op == CmpOp::Ne,
                    },
                    Literal::Bool(b) => {
                        let x = match &v {
                            Value::Bool(x) => Some(*x),
                            Value::Number(n) => n.as_f64().map(|f| f != 0.0),
                            Value::String(s) => s.parse().ok(),
                            _ => None,
                        };
                        match (x, op) {
                            (Some(x), CmpOp::Eq) => x == *b,
                            (Some(x), CmpOp::Ne) => x != *b,
                            _ => false,
                        }
                    }
                    Literal::Text(t) => {
                        let x = match &v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        holds(*op, x.as_str().cmp(t.as_str()))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    struct Src(BTreeMap<String, Value>);
    impl FieldSource for Src {
        fn value(&self, field: &Field) -> Option<Value> {
            self.0.get(&field.to_string()).cloned()
        }
    }

    fn src(pairs: &[(&str, Value)]) -> Src {
        Src(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect())
    }

    #[test]
    fn parses_and_or_with_precedence_and_parentheses() {
        let e = parse("metrics.speedup >= 2 and params.train.lr = 3e-4").unwrap();
        assert_eq!(
            e,
            Expr::And(
                Box::new(Expr::Cmp(
                    Field::Metric("speedup".into()),
                    CmpOp::Ge,
                    Literal::Number(2.0)
                )),
                Box::new(Expr::Cmp(
                    Field::Param("train.lr".into()),
                    CmpOp::Eq,
                    Literal::Number(3e-4)
                )),
            )
        );
        // `and` binds tighter than `or`.
        let e = parse("params.a = 1 or params.b = 2 AND params.c = 3").unwrap();
        assert!(matches!(e, Expr::Or(_, ref r) if matches!(**r, Expr::And(..))));
        let e = parse("(params.a = 1 or params.b = 2) and params.c = 3").unwrap();
        assert!(matches!(e, Expr::And(ref l, _) if matches!(**l, Expr::Or(..))));
    }

    #[test]
    fn evaluates_numbers_text_bools_and_missing_fields() {
        let s = src(&[
            ("metrics.speedup", json!(2.5)),
            ("params.train.lr", json!(0.0003)),
            ("attributes.status", json!("completed")),
            ("attributes.git_dirty", json!(false)),
        ]);
        let m = |f: &str| parse(f).unwrap().matches(&s);
        assert!(m("metrics.speedup >= 2 and params.train.lr = 3e-4"));
        assert!(!m("metrics.speedup > 2.5"));
        assert!(m("attributes.status = completed"));
        assert!(m("attributes.status != 'failed'"));
        assert!(m("attributes.git_dirty = false"));
        assert!(m(
            "metrics.speedup < 1 or attributes.status = \"completed\""
        ));
        // A missing field never matches, not even with `!=`.
        assert!(!m("metrics.ppl_bitnet != 3"));
        assert!(!m("metrics.ppl_bitnet < 3"));
    }

    #[test]
    fn errors_name_the_column() {
        let err = parse("metrics.speedup => 2").unwrap_err();
        assert_eq!(err.column, 17);
        assert_eq!(
            err.to_string(),
            "unknown operator `=>` (use =, !=, <, <=, >, >=) at column 17"
        );
        let err = parse("speedup >= 2").unwrap_err();
        assert_eq!(err.column, 1);
        assert!(err.message.contains("needs a prefix"), "{}", err.message);
        let err = parse("metrics.speedup >= 2 and attributes.statu = x").unwrap_err();
        assert_eq!(err.column, 26);
        assert!(err.message.contains("`status`"), "{}", err.message);
        let err = parse("(metrics.a = 1").unwrap_err();
        assert_eq!(err.column, 15);
        assert!(err.message.contains("column 1"), "{}", err.message);
        let err = parse("metrics.a = 1 metrics.b = 2").unwrap_err();
        assert_eq!(err.column, 15);
        let err = parse("metrics.a >=").unwrap_err();
        assert_eq!(err.column, 13);
        let err = parse("attributes.name = 'open").unwrap_err();
        assert_eq!(err.column, 19);
        assert_eq!(
            err.render("metrics.a => 1"),
            "error: unterminated string (missing closing ') at column 19\n  metrics.a => 1\n                    ^"
        );
    }
}
