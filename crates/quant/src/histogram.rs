//! Activation statistics and the three calibration methods: min/max, percentile, and entropy
//! (the KL-divergence threshold search of TensorRT's calibrator).
//!
//! Histograms cover `[-2^k, 2^k)` with a fixed number of bins per side. When a value beyond the
//! range arrives, the range doubles and neighbouring bins merge exactly, so histograms built from
//! different batches (or on different threads) merge exactly too, in one pass over the data.

use std::fmt;
use std::str::FromStr;

/// Bins on each side of zero.
pub const BINS_PER_SIDE: usize = 2048;

/// How a tensor's range is chosen from its statistics.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum CalibrationMethod {
    /// The smallest and largest value seen.
    MinMax,
    /// Cut the given percentage of the distribution's mass (split over both tails).
    Percentile {
        /// Percentage kept, e.g. 99.999.
        percentile: f64,
    },
    /// The threshold whose 8-bit quantization loses the least information (KL divergence).
    Entropy,
}

impl CalibrationMethod {
    /// Whether the method needs histograms (min/max does not).
    pub fn needs_histogram(self) -> bool {
        !matches!(self, Self::MinMax)
    }

    /// The short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::MinMax => "minmax",
            Self::Percentile { .. } => "percentile",
            Self::Entropy => "entropy",
        }
    }
}

impl fmt::Display for CalibrationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Percentile { percentile } => write!(f, "percentile {percentile}"),
            other => f.write_str(other.name()),
        }
    }
}

/// The default percentile, as in ONNX Runtime's calibrator.
pub const DEFAULT_PERCENTILE: f64 = 99.999;

impl FromStr for CalibrationMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "minmax" | "min-max" => Ok(Self::MinMax),
            "percentile" => Ok(Self::Percentile {
                percentile: DEFAULT_PERCENTILE,
            }),
            "entropy" | "kl" => Ok(Self::Entropy),
            _ => Err(format!(
                "unknown calibration method '{s}' (minmax, percentile, entropy)"
            )),
        }
    }
}

/// Statistics of one tensor over all calibration data.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorStats {
    /// Smallest finite value.
    pub min: f32,
    /// Largest finite value.
    pub max: f32,
    /// Number of finite values seen.
    pub count: u64,
    /// Distribution, when collected.
    pub histogram: Option<Histogram>,
}

impl TensorStats {
    /// Empty statistics.
    pub fn new(with_histogram: bool) -> Self {
        Self {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            count: 0,
            histogram: with_histogram.then(Histogram::default),
        }
    }

    /// Adds values.
    pub fn add(&mut self, values: &[f32]) {
        let (mut lo, mut hi, mut n) = (self.min, self.max, 0u64);
        for &v in values {
            if v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
                n += 1;
            }
        }
        (self.min, self.max) = (lo, hi);
        self.count += n;
        if let Some(h) = &mut self.histogram {
            h.add(values, lo.abs().max(hi.abs()));
        }
    }

    /// Merges statistics of the same tensor from other data.
    pub fn merge(&mut self, other: &TensorStats) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.count += other.count;
        match (&mut self.histogram, &other.histogram) {
            (Some(a), Some(b)) => a.merge(b),
            (None, Some(b)) => self.histogram = Some(b.clone()),
            _ => {}
        }
    }

    /// The calibrated range. `quantized_levels` is how many integer steps the range will get
    /// (255 for 8 bits); entropy calibration uses it. Ranges are clamped to what was seen.
    pub fn range(&self, method: CalibrationMethod, quantized_levels: usize) -> (f32, f32) {
        if self.count == 0 {
            return (0.0, 0.0);
        }
        let seen = (self.min, self.max);
        let Some(h) = self.histogram.as_ref().filter(|h| h.total() > 0) else {
            return seen;
        };
        match method {
            CalibrationMethod::MinMax => seen,
            CalibrationMethod::Percentile { percentile } => {
                let tail = ((100.0 - percentile).max(0.0) / 200.0).min(0.5);
                let (lo, hi) = h.quantiles(tail, 1.0 - tail);
                let lo = lo.clamp(seen.0, seen.1);
                (lo, hi.clamp(lo, seen.1))
            }
            CalibrationMethod::Entropy => {
                let non_negative = seen.0 >= 0.0;
                // A one-sided tensor gets all levels on its side; a two-sided one half each side.
                let levels = if non_negative {
                    quantized_levels + 1
                } else {
                    quantized_levels.div_ceil(2)
                };
                let t = h.entropy_threshold(levels);
                (seen.0.max(-t), seen.1.min(t))
            }
        }
    }
}

/// A histogram over `[-range, range)`, `range` a power of two, [`BINS_PER_SIDE`] bins per side.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// log2 of the range (`None` until the first non-zero value).
    exponent: Option<i32>,
    /// `2 * BINS_PER_SIDE` counts, from `-range` up.
    counts: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            exponent: None,
            counts: vec![0; 2 * BINS_PER_SIDE],
        }
    }
}

impl Histogram {
    /// The half-width of the covered range.
    pub fn range(&self) -> f32 {
        self.exponent.map_or(0.0, |e| 2f32.powi(e))
    }

    /// Total count.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Counts from `-range` to `range`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> f32 {
        self.range() / BINS_PER_SIDE as f32
    }

    fn grow_to(&mut self, exponent: i32) {
        match self.exponent {
            None => self.exponent = Some(exponent),
            Some(e) if exponent > e => {
                let factor = 1usize << ((exponent - e) as u32).min(usize::BITS - 2);
                let mut merged = vec![0u64; 2 * BINS_PER_SIDE];
                for (i, &c) in self.counts.iter().enumerate() {
                    // Bin i covers [-R + i w, ...); in the wider histogram it lands in the bin
                    // counted from the centre, since both ranges are centred on zero.
                    let from_centre = i as i64 - BINS_PER_SIDE as i64;
                    let j = from_centre.div_euclid(factor as i64) + BINS_PER_SIDE as i64;
                    merged[j as usize] += c;
                }
                self.counts = merged;
                self.exponent = Some(exponent);
            }
            Some(_) => {}
        }
    }

    /// Adds values whose largest magnitude is `absmax` (non-finite values are skipped).
    pub fn add(&mut self, values: &[f32], absmax: f32) {
        if absmax > 0.0 && absmax.is_finite() {
            // The smallest power of two strictly above absmax, so absmax itself has a bin.
            let e = absmax.log2().floor() as i32 + 1;
            self.grow_to(e);
        }
        let Some(e) = self.exponent else {
            // Everything seen so far is zero: it belongs in the bin just above zero.
            self.counts[BINS_PER_SIDE] += values.iter().filter(|v| v.is_finite()).count() as u64;
            return;
        };
        let inv_width = BINS_PER_SIDE as f32 / 2f32.powi(e);
        let last = 2 * BINS_PER_SIDE - 1;
        for &v in values {
            if v.is_finite() {
                let b = (v * inv_width).floor() as i64 + BINS_PER_SIDE as i64;
                self.counts[b.clamp(0, last as i64) as usize] += 1;
            }
        }
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        let Some(e) = other.exponent else {
            self.counts[BINS_PER_SIDE] += other.total();
            return;
        };
        let mut other = other.clone();
        if let Some(mine) = self.exponent {
            other.grow_to(mine);
        }
        self.grow_to(e.max(self.exponent.unwrap_or(e)));
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    /// Values below which fractions `lo` and `hi` of the mass lie (bin edges).
    pub fn quantiles(&self, lo: f64, hi: f64) -> (f32, f32) {
        let total = self.total() as f64;
        let w = self.bin_width();
        let r = self.range();
        let edge = |fraction: f64, upper: bool| {
            let target = fraction * total;
            let mut acc = 0.0;
            for (i, &c) in self.counts.iter().enumerate() {
                acc += c as f64;
                if acc >= target && (c > 0 || !upper) {
                    return -r + (i as f32 + if upper { 1.0 } else { 0.0 }) * w;
                }
            }
            r
        };
        (edge(lo, false), edge(hi, true))
    }

    /// Magnitude histogram: bin `i` counts values with `|x|` in `[i w, (i+1) w)`.
    pub fn magnitudes(&self) -> Vec<u64> {
        (0..BINS_PER_SIDE)
            .map(|i| self.counts[BINS_PER_SIDE + i] + self.counts[BINS_PER_SIDE - 1 - i])
            .collect()
    }

    /// The threshold `T` minimizing the KL divergence between the magnitude distribution clipped
    /// at `T` and its quantization to `levels` levels (TensorRT's entropy calibration).
    pub fn entropy_threshold(&self, levels: usize) -> f32 {
        let hist = self.magnitudes();
        let w = self.bin_width();
        let last_used = hist.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
        if last_used <= levels {
            return last_used as f32 * w;
        }
        let mut best = (f64::INFINITY, last_used);
        let mut p = vec![0f64; last_used];
        let mut q = vec![0f64; last_used];
        let total_above: Vec<u64> = {
            let mut t = vec![0u64; last_used + 1];
            for i in (0..last_used).rev() {
                t[i] = t[i + 1] + hist[i];
            }
            t
        };
        // Step coarsely when many bins are used: the optimum is smooth in i.
        let step = (last_used / 512).max(1);
        let mut i = levels;
        while i <= last_used {
            // Reference: the first i bins, with the clipped mass folded into the last one.
            p[..i]
                .iter_mut()
                .zip(&hist[..i])
                .for_each(|(d, &s)| *d = s as f64);
            p[i - 1] += total_above[i] as f64;
            // Candidate: the first i bins merged into `levels` groups, each group's mass spread
            // evenly over its non-empty bins.
            for g in 0..levels {
                let start = g * i / levels;
                let end = ((g + 1) * i / levels).max(start + 1);
                let mass: f64 = hist[start..end].iter().map(|&c| c as f64).sum();
                let nonzero = hist[start..end].iter().filter(|&&c| c > 0).count();
                for k in start..end {
                    q[k] = if hist[k] > 0 { mass / nonzero as f64 } else { 0.0 };
                }
            }
            let kl = kl_divergence(&p[..i], &q[..i]);
            if kl < best.0 {
                best = (kl, i);
            }
            i += step;
        }
        best.1 as f32 * w
    }
}

/// KL(P || Q) of two unnormalized distributions; bins where P has mass and Q has none count as a
/// large but finite penalty (the clipped tail lands there).
fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (sp, sq): (f64, f64) = (p.iter().sum(), q.iter().sum());
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    let mut kl = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        if a > 0.0 {
            let pa = a / sp;
            let qb = if b > 0.0 { b / sq } else { 1e-10 };
            kl += pa * (pa / qb).ln();
        }
    }
    kl
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx::rng::Rng;

    fn stats(values: &[f32]) -> TensorStats {
        let mut s = TensorStats::new(true);
        s.add(values);
        s
    }

    #[test]
    fn minmax_is_the_extremes() {
        let s = stats(&[-1.5, 0.25, 3.0, f32::NAN]);
        assert_eq!(s.range(CalibrationMethod::MinMax, 255), (-1.5, 3.0));
        assert_eq!(s.count, 3);
    }

    #[test]
    fn histograms_of_split_data_merge_to_the_histogram_of_all_data() {
        let mut rng = Rng::new(5);
        let small: Vec<f32> = rng.normal_vec(1000, 0.1);
        let large: Vec<f32> = rng.normal_vec(1000, 10.0);
        let mut a = stats(&small);
        a.merge(&stats(&large));
        let mut both = small.clone();
        both.extend(&large);
        let whole = stats(&both);
        assert_eq!(a, whole);
        let mut b = stats(&large);
        b.merge(&stats(&small));
        assert_eq!(b.histogram, whole.histogram, "merge order does not matter");
        assert_eq!(whole.histogram.as_ref().unwrap().total(), 2000);
    }

    #[test]
    fn percentile_cuts_the_tails() {
        // 0, 1, ..., 9999 once each: 99 % keeps 0.5 % .. 99.5 % of the mass.
        let v: Vec<f32> = (0..10_000).map(|i| i as f32).collect();
        let (lo, hi) = stats(&v).range(CalibrationMethod::Percentile { percentile: 99.0 }, 255);
        assert!((lo - 50.0).abs() < 10.0, "{lo}");
        assert!((hi - 9950.0).abs() < 10.0, "{hi}");
        let sym: Vec<f32> = (-5000..5000).map(|i| i as f32).collect();
        let (lo, hi) = stats(&sym).range(CalibrationMethod::Percentile { percentile: 98.0 }, 255);
        assert!(
            (lo + 4900.0).abs() < 10.0 && (hi - 4900.0).abs() < 10.0,
            "{lo} {hi}"
        );
    }

    #[test]
    fn entropy_ignores_rare_outliers_but_keeps_a_uniform_range() {
        let mut rng = Rng::new(1);
        let mut v: Vec<f32> = rng.normal_vec(200_000, 1.0);
        v.extend([60.0, -55.0, 40.0]); // a few far outliers
        let (lo, hi) = stats(&v).range(CalibrationMethod::Entropy, 255);
        assert!(
            hi < 20.0 && hi > 2.5,
            "threshold {hi} sits between the bulk and the outliers"
        );
        assert!(lo < -2.5 && lo > -20.0, "{lo}");
        let uniform: Vec<f32> = (0..100_000).map(|i| i as f32 / 100_000.0 * 8.0).collect();
        let (lo, hi) = stats(&uniform).range(CalibrationMethod::Entropy, 255);
        assert_eq!(lo, 0.0);
        assert!(hi > 7.5, "nothing to clip in a uniform distribution: {hi}");
    }

    #[test]
    fn entropy_of_a_known_histogram_stops_where_the_mass_ends() {
        // Mass only in the first 100 magnitude bins: any threshold beyond adds nothing.
        let mut h = Histogram::default();
        h.add(&[0.0], 1.0);
        let w = h.bin_width();
        let values: Vec<f32> = (0..100).flat_map(|i| vec![(i as f32 + 0.5) * w; 10]).collect();
        h.add(&values, 1.0);
        let t = h.entropy_threshold(128);
        assert!((t - 100.0 * w).abs() < 1e-6, "{t} vs {}", 100.0 * w);
    }

    #[test]
    fn methods_parse() {
        assert_eq!("entropy".parse(), Ok(CalibrationMethod::Entropy));
        assert!("max".parse::<CalibrationMethod>().is_err());
    }
}
