//! Plain aligned text tables and short number formatting, shared by the CLI,
//! the HTML report and the `validate` stage (it sits below all three, so
//! none of them depends on another to print a value).

/// Renders rows under a header, columns padded to their widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// Short human form of a metric value.
pub fn fmt_value(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e6) {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3e}")
    }
}

/// A cell no wider than `max` characters: longer text (a model config's
/// JSON, say) keeps its start and ends in `...`, so one value cannot stretch
/// a terminal table to hundreds of columns. Machine formats keep the full
/// value.
pub fn shorten(text: &str, max: usize) -> String {
    let text = text.replace(['\n', '\r'], " ");
    if text.chars().count() <= max {
        return text;
    }
    let keep: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{keep}...")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortens_long_cells_only() {
        assert_eq!(shorten("short", 10), "short");
        let long = format!("{{\"hidden_size\": 256, {}}}", "x".repeat(300));
        let s = shorten(&long, 40);
        assert_eq!(s.chars().count(), 40);
        assert!(
            s.starts_with("{\"hidden_size\": 256") && s.ends_with("..."),
            "{s}"
        );
    }

    #[test]
    fn pads_columns() {
        let t = render(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\nxyz  1\n");
        assert_eq!(fmt_value(1.5), "1.5");
        assert_eq!(fmt_value(3e-4), "3.000e-4");
    }
}
