//! The benchmark figure as a standalone SVG: (a) a bar chart of mean latency with ±1 std error bars
//! and (b) a box plot of the latency distributions, one bar and one box per model, as in the
//! paper's quantization figure. Written by hand: two panels do not justify a plotting library.

use std::fmt::Write;

use crate::stats::box_stats;

/// One model's data.
#[derive(Clone, Debug)]
pub struct Series {
    /// Label under the bar and the box.
    pub label: String,
    /// Latency samples in milliseconds.
    pub samples_ms: Vec<f64>,
    /// Mean latency.
    pub mean_ms: f64,
    /// Standard deviation.
    pub std_ms: f64,
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct Figure {
    /// First title line (the models).
    pub title: String,
    /// Second title line (machine, threads, runtime).
    pub subtitle: String,
    /// One entry per model.
    pub series: Vec<Series>,
}

const PALETTE: [&str; 10] = [
    "#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974",
    "#64B5CD",
];
const PLOT_TOP: f64 = 96.0;
const PLOT_HEIGHT: f64 = 330.0;
const AXIS_LEFT: f64 = 64.0;

/// Escapes text for SVG content and attributes.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nice" tick values covering `[lo, hi]` (steps of 1, 2, 2.5 or 5 × 10^k).
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let (lo, hi) = if hi > lo { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step + 1e-9).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    (first..=last.max(first + 1))
        .take(50)
        .map(|k| k as f64 * step)
        .collect()
}

/// Ticks at 1, 2 and 5 × 10^k from the one at or below `lo` to the one at or above `hi`.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut k = lo.log10().floor() as i32 - 1;
    while ticks.last().is_none_or(|&t| t < hi) && ticks.len() < 60 {
        for m in [1.0, 2.0, 5.0] {
            let t = m * 10f64.powi(k);
            if t * 2.5 > lo && ticks.last().is_none_or(|&last| last < hi) {
                ticks.push(t);
            }
        }
        k += 1;
    }
    // Keep exactly one tick at or below `lo`.
    while ticks.len() > 1 && ticks[1] <= lo {
        ticks.remove(0);
    }
    ticks
}

fn tick_label(v: f64, step: f64) -> String {
    // As many decimals as the step needs to be exact (0.25 -> 2, 2.5 -> 1, 10 -> 0).
    let decimals = (0..6).find(|&d| {
        let scaled = step * 10f64.powi(d);
        (scaled - scaled.round()).abs() < 1e-6 * scaled.max(1.0)
    });
    let decimals = decimals.unwrap_or(6) as usize;
    format!("{v:.decimals$}")
}

/// Renders the two-panel figure.
pub fn render_svg(fig: &Figure) -> String {
    let n = fig.series.len().max(1);
    let band = if n <= 4 { 110.0 } else { 80.0 };
    let panel_w = (band * n as f64).max(300.0);
    let gap = 100.0;
    let width = AXIS_LEFT + panel_w + gap + AXIS_LEFT + panel_w + 30.0;
    let long_labels = fig
        .series
        .iter()
        .any(|s| s.label.chars().count() as f64 * 7.0 > band);
    let height = PLOT_TOP + PLOT_HEIGHT + if long_labels { 130.0 } else { 70.0 };
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="DejaVu Sans, Arial, Helvetica, sans-serif">"#
    );
    let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="28" font-size="17" font-weight="bold" text-anchor="middle">{}</text>"#,
        width / 2.0,
        escape(&fig.title)
    );
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="50" font-size="13" fill="#333" text-anchor="middle">{}</text>"##,
        width / 2.0,
        escape(&fig.subtitle)
    );

    // (a) bars of the mean with ±1 std.
    let left_a = AXIS_LEFT;
    let top_a = fig
        .series
        .iter()
        .map(|s| s.mean_ms + s.std_ms)
        .fold(0.0, f64::max);
    let ticks_a = nice_ticks(0.0, top_a * 1.08, 6);
    let ymax_a = ticks_a.last().copied().unwrap_or(1.0).max(1e-9);
    let y_a = |v: f64| PLOT_TOP + PLOT_HEIGHT * (1.0 - v / ymax_a);
    axes(
        &mut svg,
        left_a,
        panel_w,
        &ticks_a,
        &y_a,
        "(a) Mean inference time",
        "latency [ms]",
    );
    for (i, s) in fig.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let cx = left_a + band * (i as f64 + 0.5);
        let bw = band * 0.6;
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{color}" stroke="black" stroke-width="0.6"/>"#,
            cx - bw / 2.0,
            y_a(s.mean_ms),
            (y_a(0.0) - y_a(s.mean_ms)).max(0.0)
        );
        let (lo, hi) = (y_a((s.mean_ms - s.std_ms).max(0.0)), y_a(s.mean_ms + s.std_ms));
        let _ = write!(
            svg,
            r#"<path d="M{cx:.1},{lo:.1}V{hi:.1}M{:.1},{lo:.1}H{:.1}M{:.1},{hi:.1}H{:.1}" stroke="black" stroke-width="1.2" fill="none"/>"#,
            cx - 6.0,
            cx + 6.0,
            cx - 6.0,
            cx + 6.0
        );
        let _ = write!(
            svg,
            r#"<text x="{cx:.1}" y="{:.1}" font-size="12" text-anchor="middle">{:.2} ms</text>"#,
            hi - 6.0,
            s.mean_ms
        );
        x_label(&mut svg, cx, &s.label, long_labels);
    }

    // (b) box plots.
    let left_b = AXIS_LEFT + panel_w + gap + AXIS_LEFT;
    let all: Vec<f64> = fig
        .series
        .iter()
        .flat_map(|s| s.samples_ms.iter().copied())
        .collect();
    let (lo_b, hi_b) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
        (a.min(x), b.max(x))
    });
    let (lo_b, hi_b) = if lo_b.is_finite() {
        (lo_b, hi_b)
    } else {
        (0.0, 1.0)
    };
    // Very different models share the panel: a log axis keeps every distribution readable.
    let log = lo_b > 0.0 && hi_b / lo_b > 4.0;
    let (ticks_b, ylabel_b) = if log {
        (log_ticks(lo_b, hi_b), "latency [ms, log scale]")
    } else {
        let pad = ((hi_b - lo_b) * 0.06).max(hi_b.abs() * 0.01).max(1e-6);
        (nice_ticks((lo_b - pad).max(0.0), hi_b + pad, 6), "latency [ms]")
    };
    let (ymin_b, ymax_b) = (
        ticks_b.first().copied().unwrap_or(0.0),
        ticks_b.last().copied().unwrap_or(1.0),
    );
    let scale = |v: f64| if log { v.max(1e-12).ln() } else { v };
    let span_b = (scale(ymax_b) - scale(ymin_b)).max(1e-9);
    let y_b = |v: f64| PLOT_TOP + PLOT_HEIGHT * (1.0 - (scale(v) - scale(ymin_b)) / span_b);
    axes(
        &mut svg,
        left_b,
        panel_w,
        &ticks_b,
        &y_b,
        "(b) Inference time distribution",
        ylabel_b,
    );
    for (i, s) in fig.series.iter().enumerate() {
        let Some(b) = box_stats(&s.samples_ms) else {
            continue;
        };
        let color = PALETTE[i % PALETTE.len()];
        let cx = left_b + band * (i as f64 + 0.5);
        let bw = band * 0.5;
        let _ = write!(
            svg,
            r#"<path d="M{cx:.1},{:.1}V{:.1}M{cx:.1},{:.1}V{:.1}M{:.1},{:.1}H{:.1}M{:.1},{:.1}H{:.1}" stroke="black" stroke-width="1" fill="none"/>"#,
            y_b(b.whisker_lo),
            y_b(b.q1),
            y_b(b.q3),
            y_b(b.whisker_hi),
            cx - bw / 4.0,
            y_b(b.whisker_lo),
            cx + bw / 4.0,
            cx - bw / 4.0,
            y_b(b.whisker_hi),
            cx + bw / 4.0
        );
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="{bw:.1}" height="{:.1}" fill="{color}" fill-opacity="0.85" stroke="black" stroke-width="1"/>"#,
            cx - bw / 2.0,
            y_b(b.q3),
            (y_b(b.q1) - y_b(b.q3)).max(0.5)
        );
        let _ = write!(
            svg,
            r#"<path d="M{:.1},{:.1}H{:.1}" stroke="black" stroke-width="2.2"/>"#,
            cx - bw / 2.0,
            y_b(b.median),
            cx + bw / 2.0
        );
        for o in &b.outliers {
            let _ = write!(
                svg,
                r#"<circle cx="{cx:.1}" cy="{:.1}" r="3" fill="none" stroke="black" stroke-width="0.8"/>"#,
                y_b(*o)
            );
        }
        x_label(&mut svg, cx, &s.label, long_labels);
    }
    svg.push_str("</svg>\n");
    svg
}

fn axes(
    svg: &mut String,
    left: f64,
    w: f64,
    ticks: &[f64],
    y: &dyn Fn(f64) -> f64,
    title: &str,
    ylabel: &str,
) {
    let bottom = PLOT_TOP + PLOT_HEIGHT;
    for (i, &t) in ticks.iter().enumerate() {
        // The spacing around each tick sets its decimals (log axes have uneven steps).
        let step = match (i.checked_sub(1).map(|j| ticks[j]), ticks.get(i + 1)) {
            (_, Some(next)) => next - t,
            (Some(prev), None) => t - prev,
            (None, None) => 1.0,
        };
        let step = step.min(if t > 0.0 { t } else { step });
        let ty = y(t);
        let _ = write!(
            svg,
            r##"<path d="M{left:.1},{ty:.1}H{:.1}" stroke="#ddd" stroke-width="0.8"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            left + w,
            left - 6.0,
            ty + 4.0,
            tick_label(t, step)
        );
    }
    let _ = write!(
        svg,
        r#"<path d="M{left:.1},{PLOT_TOP:.1}V{bottom:.1}H{:.1}" stroke="black" stroke-width="1" fill="none"/>"#,
        left + w
    );
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold" text-anchor="middle">{}</text>"#,
        left + w / 2.0,
        PLOT_TOP - 14.0,
        escape(title)
    );
    let (lx, ly) = (left - 48.0, PLOT_TOP + PLOT_HEIGHT / 2.0);
    let _ = write!(
        svg,
        r#"<text x="{lx:.1}" y="{ly:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        escape(ylabel)
    );
}

fn x_label(svg: &mut String, cx: f64, label: &str, rotate: bool) {
    let y = PLOT_TOP + PLOT_HEIGHT + 18.0;
    if rotate {
        let _ = write!(
            svg,
            r#"<text x="{cx:.1}" y="{y:.1}" font-size="12" text-anchor="end" transform="rotate(-30 {cx:.1} {y:.1})">{}</text>"#,
            escape(label)
        );
    } else {
        let _ = write!(
            svg,
            r#"<text x="{cx:.1}" y="{y:.1}" font-size="12" text-anchor="middle">{}</text>"#,
            escape(label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = nice_ticks(0.0, 47.0, 6);
        assert_eq!(t.first(), Some(&0.0));
        assert!(*t.last().unwrap() >= 47.0);
        assert!((t[1] - t[0] - 10.0).abs() < 1e-9, "{t:?}");
        assert_eq!(log_ticks(13.0, 120.0), vec![10.0, 20.0, 50.0, 100.0, 200.0]);
        assert_eq!(log_ticks(0.3, 0.9), vec![0.2, 0.5, 1.0]);
        let t = nice_ticks(3.1, 3.9, 5);
        assert!(t[0] <= 3.1 && *t.last().unwrap() >= 3.9, "{t:?}");
        assert_eq!(tick_label(2.5, 0.5), "2.5");
        assert_eq!(tick_label(20.0, 10.0), "20");
        assert_eq!(tick_label(0.25, 0.25), "0.25");
    }

    #[test]
    fn the_figure_is_wellformed_svg_with_one_bar_and_one_box_per_model() {
        let series = ["fp32 <ref>", "int8 & co"]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let samples: Vec<f64> = (0..30)
                    .map(|k| 10.0 / (i as f64 + 1.0) + f64::from(k % 7) * 0.1)
                    .collect();
                Series {
                    label: (*l).into(),
                    mean_ms: samples.iter().sum::<f64>() / 30.0,
                    std_ms: 0.2,
                    samples_ms: samples,
                }
            })
            .collect();
        let svg = render_svg(&Figure {
            title: "a & b".into(),
            subtitle: "CPU (2 cores), 1 thread".into(),
            series,
        });
        let doc = roxmltree::Document::parse(&svg).expect("valid XML");
        let rects = doc.descendants().filter(|n| n.has_tag_name("rect")).count();
        assert_eq!(rects, 1 + 2 + 2, "background, two bars, two boxes");
        let texts: Vec<_> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(
            texts.contains(&"fp32 <ref>") && texts.contains(&"a & b"),
            "labels escaped and present"
        );
        assert!(
            texts
                .iter()
                .any(|t| t.contains("(b) Inference time distribution"))
        );
    }
}
