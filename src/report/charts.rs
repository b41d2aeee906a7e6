//! Inline SVG charts for reports, drawn with plotters' SVG backend.
//!
//! Reports must open offline and from an e-mail attachment, so charts are
//! SVG text embedded in the page rather than images or a JS library. The
//! backend escapes every text it writes, so labels that come from users or
//! checkpoints cannot inject markup.
use plotters::prelude::*;

/// Why a chart could not be drawn (a plotters error, as text).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw chart `{title}`: {message}")]
pub struct ChartError {
    pub title: String,
    pub message: String,
}

/// One line of a line chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One group of a bar chart: its name and one bar per series.
#[derive(Debug, Clone)]
pub struct BarGroup {
    pub name: String,
    pub bars: Vec<(String, f64)>,
}

const WIDTH: u32 = 720;
const HEIGHT: u32 = 360;

/// Colour-blind-safe palette (Okabe-Ito).
fn color(i: usize) -> RGBColor {
    const P: [RGBColor; 7] = [
        RGBColor(0, 114, 178),
        RGBColor(230, 159, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
        RGBColor(213, 94, 0),
        RGBColor(120, 120, 120),
    ];
    P[i % P.len()]
}

/// Padded range of finite values; a flat series still gets some height.
fn range(values: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    let pad = if hi > lo {
        (hi - lo) * 0.08
    } else {
        hi.abs().max(1.0) * 0.1
    };
    (
        if from_zero && lo >= 0.0 {
            0.0
        } else {
            lo - pad
        },
        hi + pad,
    )
}

macro_rules! tri {
    ($title:expr, $e:expr) => {
        $e.map_err(|e| ChartError {
            title: $title.to_string(),
            message: e.to_string(),
        })?
    };
}

/// Where a chart's legend goes: the corner its lines leave empty
/// (upper left for rising latency curves, upper right for falling losses).
pub use plotters::chart::SeriesLabelPosition as LegendAt;

/// Lines with point markers and a legend; x and y linear.
pub fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    legend: LegendAt,
) -> Result<String, ChartError> {
    let (x0, x1) = range(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        false,
    );
    let (y0, y1) = range(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.1)),
        true,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        tri!(title, root.fill(&WHITE));
        let mut chart = tri!(
            title,
            ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1, y0..y1)
        );
        tri!(
            title,
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .y_label_formatter(&|v| crate::format::fmt_value(*v))
                .x_label_formatter(&|v| crate::format::fmt_value(*v))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
        );
        for (i, s) in series.iter().enumerate() {
            let c = color(i);
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            tri!(
                title,
                chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            )
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
            if pts.len() <= 64 {
                tri!(
                    title,
                    chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 3, c.filled())))
                );
            }
        }
        tri!(
            title,
            chart
                .configure_series_labels()
                .position(legend)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .draw()
        );
        tri!(title, root.present());
    }
    Ok(svg)
}

/// Grouped bars (one colour per series, named in the legend), each bar
/// labelled with its value formatted by `fmt`; the group name sits above
/// its bars.
pub fn bar_chart(
    title: &str,
    y_desc: &str,
    groups: &[BarGroup],
    fmt: &dyn Fn(f64) -> String,
) -> Result<String, ChartError> {
    let n = groups.len().max(1) as f64;
    let (_, y1) = range(groups.iter().flat_map(|g| g.bars.iter().map(|b| b.1)), true);
    let top = y1 * 1.12;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        tri!(title, root.fill(&WHITE));
        let mut chart = tri!(
            title,
            ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(10)
                .y_label_area_size(80)
                .build_cartesian_2d(0f64..n, 0f64..top)
        );
        tri!(
            title,
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_desc(y_desc)
                .y_label_formatter(&|v| fmt(*v))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
        );
        let mut legend: Vec<String> = Vec::new();
        for g in groups {
            for (name, _) in &g.bars {
                if !legend.contains(name) {
                    legend.push(name.clone());
                }
            }
        }
        for (si, name) in legend.iter().enumerate() {
            let c = color(si);
            let width = 0.7 / legend.len() as f64;
            let rects: Vec<Rectangle<(f64, f64)>> = groups
                .iter()
                .enumerate()
                .filter_map(|(gi, g)| {
                    let v = g.bars.iter().find(|b| &b.0 == name)?.1;
                    let x = gi as f64 + 0.15 + si as f64 * width;
                    Some(Rectangle::new([(x, 0.0), (x + width * 0.9, v)], c.filled()))
                })
                .collect();
            tri!(title, chart.draw_series(rects))
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            let labels: Vec<Text<(f64, f64), String>> = groups
                .iter()
                .enumerate()
                .filter_map(|(gi, g)| {
                    let v = g.bars.iter().find(|b| &b.0 == name)?.1;
                    let x = gi as f64 + 0.15 + si as f64 * width;
                    Some(Text::new(fmt(v), (x, v + top * 0.04), ("sans-serif", 12)))
                })
                .collect();
            tri!(title, chart.draw_series(labels));
        }
        let names: Vec<Text<(f64, f64), String>> = groups
            .iter()
            .enumerate()
            .map(|(gi, g)| {
                Text::new(
                    g.name.clone(),
                    (gi as f64 + 0.15, top * 0.99),
                    ("sans-serif", 14).into_font().style(FontStyle::Bold),
                )
            })
            .collect();
        tri!(title, chart.draw_series(names));
        tri!(
            title,
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .draw()
        );
        tri!(title, root.present());
    }
    Ok(svg)
}

/// Bytes in the largest binary unit that keeps the number above 1.
pub fn fmt_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = v;
    let mut u = 0;
    while x.abs() >= 1024.0 && u + 1 < UNITS.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{x:.0} B")
    } else {
        format!("{x:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_and_escape_labels() {
        let svg = line_chart(
            "loss",
            "step",
            "loss",
            &[Series {
                label: "<script>alert(1)</script>".into(),
                points: vec![(0.0, 3.0), (1.0, 2.0), (2.0, f64::NAN)],
            }],
            LegendAt::UpperRight,
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("&lt;script&gt;"));
        assert!(!svg.contains("<script>"));
        let bars = bar_chart(
            "memory",
            "bytes",
            &[BarGroup {
                name: "weights".into(),
                bars: vec![("baseline".into(), 4096.0), ("bitnet".into(), 512.0)],
            }],
            &fmt_bytes,
        )
        .unwrap();
        assert!(
            bars.contains("4.00 KiB") && bars.contains("weights"),
            "{bars}"
        );
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(3.0 * 1024.0 * 1024.0), "3.00 MiB");
    }
}
