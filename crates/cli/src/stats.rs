//! Latency statistics: the summary numbers of a benchmark and the five-number summary of a box plot.

use serde::Serialize;

/// Summary of a sample of latencies (milliseconds).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    /// Smallest sample.
    pub min_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// 50th percentile.
    pub median_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
    /// Population standard deviation (numpy's default, `ddof=0`).
    pub std_ms: f64,
}

/// Percentile `q` in `[0, 100]` of sorted data, linearly interpolated (numpy's default method).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let pos = q.clamp(0.0, 100.0) / 100.0 * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(n - 1);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

/// Sorted copy (NaNs last).
pub fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Summarizes samples; `None` when there are none.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let s = sorted(samples);
    let n = s.len() as f64;
    let mean = s.iter().sum::<f64>() / n;
    let var = s.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    Some(Summary {
        min_ms: s[0],
        mean_ms: mean,
        median_ms: percentile(&s, 50.0),
        p90_ms: percentile(&s, 90.0),
        p99_ms: percentile(&s, 99.0),
        max_ms: s[s.len() - 1],
        std_ms: var.sqrt(),
    })
}

/// What a box plot draws: quartiles, whiskers at the furthest samples within 1.5 IQR, and outliers.
#[derive(Clone, Debug, PartialEq)]
pub struct BoxStats {
    /// First quartile.
    pub q1: f64,
    /// Median.
    pub median: f64,
    /// Third quartile.
    pub q3: f64,
    /// Lowest sample ≥ q1 − 1.5 IQR.
    pub whisker_lo: f64,
    /// Highest sample ≤ q3 + 1.5 IQR.
    pub whisker_hi: f64,
    /// Samples beyond the whiskers.
    pub outliers: Vec<f64>,
}

/// Box-plot statistics (matplotlib's convention); `None` when there are no samples.
pub fn box_stats(samples: &[f64]) -> Option<BoxStats> {
    if samples.is_empty() {
        return None;
    }
    let s = sorted(samples);
    let (q1, median, q3) = (percentile(&s, 25.0), percentile(&s, 50.0), percentile(&s, 75.0));
    let iqr = q3 - q1;
    let (lo_fence, hi_fence) = (q1 - 1.5 * iqr, q3 + 1.5 * iqr);
    let inside: Vec<f64> = s
        .iter()
        .copied()
        .filter(|&x| x >= lo_fence && x <= hi_fence)
        .collect();
    Some(BoxStats {
        q1,
        median,
        q3,
        whisker_lo: inside.first().copied().unwrap_or(q1),
        whisker_hi: inside.last().copied().unwrap_or(q3),
        outliers: s.into_iter().filter(|&x| x < lo_fence || x > hi_fence).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear_interpolation() {
        // numpy.percentile([1, 2, 3, 4], [50, 90, 25]) == [2.5, 3.7, 1.75]
        let s = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile(&s, 50.0) - 2.5).abs() < 1e-12);
        assert!((percentile(&s, 90.0) - 3.7).abs() < 1e-12);
        assert!((percentile(&s, 25.0) - 1.75).abs() < 1e-12);
    }

    #[test]
    fn summary_of_a_known_sample() {
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.min_ms, s.max_ms, s.mean_ms, s.median_ms), (1.0, 4.0, 2.5, 2.5));
        assert!((s.std_ms - 1.25f64.sqrt()).abs() < 1e-12);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn outliers_fall_outside_the_whiskers() {
        let mut v: Vec<f64> = (0..20).map(|i| 10.0 + f64::from(i) * 0.1).collect();
        v.push(30.0);
        let b = box_stats(&v).unwrap();
        assert_eq!(b.outliers, vec![30.0]);
        assert!((b.whisker_hi - 11.9).abs() < 1e-9);
        assert_eq!(b.whisker_lo, 10.0);
        assert!(b.q1 < b.median && b.median < b.q3);
    }
}
