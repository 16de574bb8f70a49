//! Just enough SVG for the reports: line charts and bar charts with axes and a legend. Written
//! by hand because a plotting crate would cost more to build than these 150 lines.

use std::fmt::Write as _;

const W: f64 = 760.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn header(title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    s
}

/// A tidy upper bound for an axis: a round multiple of a power of ten, not far above `v`.
fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let exp = 10f64.powf(v.log10().floor());
    [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * exp)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * exp)
}

fn axes(s: &mut String, x_label: &str, y_label: &str, x_max: f64, y_max: f64) {
    let (x0, y0, x1, y1) = (LEFT, H - BOTTOM, W - RIGHT, TOP);
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>"#
    );
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>"#
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let x = x0 + f * (x1 - x0);
        let y = y0 - f * (y0 - y1);
        let _ = writeln!(
            s,
            r#"<text x="{x}" y="{}" text-anchor="middle">{}</text>"#,
            y0 + 16.0,
            fmt_tick(f * x_max)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y + 4.0,
            fmt_tick(f * y_max)
        );
        let _ = writeln!(
            s,
            r##"<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#eee"/>"##
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        H - 20.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 || (v.abs() >= 0.01 && v.abs() < 1e6) {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.1e}")
    }
}

/// Line chart of (x, y) series, both axes from 0.
pub fn lines(title: &str, x_label: &str, y_label: &str, series: &[(&str, &[(f64, f64)])]) -> String {
    let mut s = header(title);
    let all = series.iter().flat_map(|(_, p)| p.iter());
    let x_max = nice_max(all.clone().map(|p| p.0).fold(0.0, f64::max));
    let y_max = nice_max(all.map(|p| p.1).fold(0.0, f64::max));
    axes(&mut s, x_label, y_label, x_max, y_max);
    for (i, (name, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(x, y)| {
                let px = LEFT + x / x_max * (W - LEFT - RIGHT);
                let py = H - BOTTOM - y / y_max * (H - BOTTOM - TOP);
                format!("{px:.1},{py:.1}")
            })
            .collect();
        if !path.is_empty() {
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
                path.join(" ")
            );
        }
        // The legend sits in the lower half, where the lines (shares near 1, or a CDF) are not.
        let ly = H - BOTTOM - 16.0 * (series.len() - i) as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
            W - RIGHT - 330.0,
            ly - 9.0,
            W - RIGHT - 314.0,
            ly,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Bar chart of labelled values.
pub fn bars(title: &str, y_label: &str, bars: &[(String, f64)]) -> String {
    let mut s = header(title);
    let y_max = nice_max(bars.iter().map(|b| b.1).fold(0.0, f64::max));
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - BOTTOM - TOP;
    let (x0, y0) = (LEFT, H - BOTTOM);
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{y0}" x2="{}" y2="{y0}" stroke="black"/>"#,
        W - RIGHT
    );
    let _ = writeln!(
        s,
        r#"<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{TOP}" stroke="black"/>"#
    );
    for i in 0..=5 {
        let f = f64::from(i) / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            x0 - 6.0,
            y0 - f * plot_h + 4.0,
            fmt_tick(f * y_max)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">{}</text>"#,
        y0 - plot_h / 2.0,
        y0 - plot_h / 2.0,
        escape(y_label)
    );
    let slot = plot_w / bars.len().max(1) as f64;
    for (i, (label, value)) in bars.iter().enumerate() {
        let h = value / y_max * plot_h;
        let x = x0 + slot * i as f64 + slot * 0.15;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"/>"#,
            y0 - h,
            slot * 0.7,
            COLOURS[0]
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x + slot * 0.35,
            y0 + 16.0,
            escape(label),
            x + slot * 0.35,
            y0 - h - 4.0,
            fmt_tick(*value)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_well_formed_svg_with_their_data() {
        let svg = lines("t <1>", "x", "y", &[("a", &[(0.0, 0.0), (3.0, 0.5)])]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;") && svg.contains("<polyline"));
        let svg = bars("b", "KiB", &[("push".into(), 3.0), ("sync".into(), 7.0)]);
        assert_eq!(svg.matches("<rect").count(), 3, "background and two bars");
        assert_eq!(nice_max(7.0), 8.0);
        assert_eq!(nice_max(235_288.0), 250_000.0);
        assert!((nice_max(0.27) - 0.3).abs() < 1e-12);
    }
}
