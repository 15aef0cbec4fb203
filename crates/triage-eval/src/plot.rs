//! Hand-written SVG of quality against the share of strong-model calls: the router's curve, the
//! random line (weak-only to strong-only) and the oracle curve. No plotting dependency: the
//! picture is three polylines, two axes and a legend.

use std::fmt::Write as _;

use crate::replay::EvalReport;

const W: f64 = 640.0;
const H: f64 = 420.0;
const L: f64 = 64.0;
const R: f64 = 20.0;
const T: f64 = 40.0;
const B: f64 = 56.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Points of a curve over k = 0..=n (≤ 201 of them), as `x,y` SVG coordinates.
fn polyline(q: &[f64], lo: f64, hi: f64) -> String {
    let n = q.len().saturating_sub(1).max(1);
    let step = n.div_ceil(200).max(1);
    let mut s = String::new();
    let mut k = 0;
    loop {
        let x = L + (W - L - R) * k as f64 / n as f64;
        let y = T + (H - T - B) * (1.0 - (q[k] - lo) / (hi - lo));
        let _ = write!(s, "{x:.1},{y:.1} ");
        if k == q.len() - 1 {
            break;
        }
        k = (k + step).min(q.len() - 1);
    }
    s
}

/// The SVG document for `r`.
pub fn svg(r: &EvalReport) -> String {
    let c = &r.curves;
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in c.router.iter().chain(&c.oracle) {
        lo = lo.min(*v);
        hi = hi.max(*v);
    }
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (lo - pad, hi + pad);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{} — {} router ({}); APGR {:.3}</text>"#,
        W / 2.0,
        esc(&r.benchmark),
        esc(&r.router),
        esc(r.split.split(" (").next().unwrap_or("")),
        r.router_summary.apgr_trapezoid
    );
    // Axes and grid.
    for i in 0..=10 {
        let x = L + (W - L - R) * i as f64 / 10.0;
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{}" stroke="#eee"/>"##, H - B);
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#, H - B + 16.0, i * 10);
    }
    for i in 0..=5 {
        let v = lo + (hi - lo) * i as f64 / 5.0;
        let y = T + (H - T - B) * (1.0 - i as f64 / 5.0);
        let _ = writeln!(s, r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/>"##, W - R);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.3}</text>"#, L - 6.0, y + 4.0);
    }
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{T}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
        W - L - R,
        H - T - B
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">strong-model calls (%)</text>"#,
        (L + W - R) / 2.0,
        H - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">quality</text>"#,
        (T + H - B) / 2.0,
        (T + H - B) / 2.0
    );
    let random = [r.quality_weak, r.quality_strong];
    for (q, color, dash, name) in [
        (&c.oracle[..], "#2a9d8f", "", "oracle"),
        (&random[..], "#888888", r#" stroke-dasharray="6 4""#, "random"),
        (&c.router[..], "#e76f51", "", r.router.as_str()),
    ] {
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            polyline(q, lo, hi)
        );
        let _ = name;
    }
    for (i, (color, name)) in
        [("#e76f51", r.router.as_str()), ("#888888", "random"), ("#2a9d8f", "oracle")].iter().enumerate()
    {
        // Bottom right: every curve ends high on the right, so the corner below is free.
        let y = H - B - 52.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2"/>"#,
            W - R - 120.0,
            W - R - 96.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, W - R - 90.0, y + 4.0, esc(name));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polyline_spans_the_plot_and_svg_is_well_formed() {
        let q = [0.0, 0.5, 1.0];
        assert_eq!(
            polyline(&q, 0.0, 1.0),
            format!("{L:.1},{:.1} {:.1},{:.1} {:.1},{T:.1} ", H - B, (L + W - R) / 2.0, (T + H - B) / 2.0, W - R)
        );
    }
}
