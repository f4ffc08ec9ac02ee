//! Quantization parameters: from a real range to a scale and zero point, and values to integers
//! and back, with the conventions ONNX Runtime's kernels and Python tool use.
//!
//! `scale = (rmax - rmin) / (qmax - qmin)` over a range widened to include 0 (so that zero — the
//! padding value, a ReLU's floor — is exact), `zero_point = round(qmin - rmin / scale)`, and
//! `q = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)` as `QuantizeLinear` computes it.
//! Symmetric signed ranges are restricted to `[-127, 127]` so that negation never saturates.

use std::fmt;
use std::str::FromStr;

use onnx::DataType;

/// An 8-bit integer type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QType {
    /// Signed, `-128..=127`.
    S8,
    /// Unsigned, `0..=255`.
    U8,
}

impl QType {
    /// The ONNX element type.
    pub fn data_type(self) -> DataType {
        match self {
            Self::S8 => DataType::Int8,
            Self::U8 => DataType::Uint8,
        }
    }

    /// `(qmin, qmax)` for a range: symmetric signed ranges drop -128, reduced ranges use 7 bits.
    pub fn bounds(self, symmetric: bool, reduce_range: bool) -> (i32, i32) {
        match (self, reduce_range, symmetric) {
            (Self::S8, false, false) => (-128, 127),
            (Self::S8, false, true) => (-127, 127),
            (Self::S8, true, _) => (-64, 64),
            (Self::U8, false, _) => (0, 255),
            (Self::U8, true, _) => (0, 127),
        }
    }

    /// The short name (`s8`, `u8`).
    pub fn name(self) -> &'static str {
        match self {
            Self::S8 => "s8",
            Self::U8 => "u8",
        }
    }
}

impl fmt::Display for QType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "s8" | "int8" | "qint8" => Ok(Self::S8),
            "u8" | "uint8" | "quint8" => Ok(Self::U8),
            _ => Err(format!("unknown integer type '{s}' (s8 or u8)")),
        }
    }
}

/// Scale and zero point of one quantized tensor (or one channel of it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    /// Real value of one integer step.
    pub scale: f32,
    /// The integer that represents real zero.
    pub zero_point: i32,
    /// Smallest integer.
    pub qmin: i32,
    /// Largest integer.
    pub qmax: i32,
}

/// The scale ONNX Runtime substitutes for an all-zero range (any positive value works).
const ZERO_RANGE_SCALE: f32 = 1.0;

impl QParams {
    /// Parameters for values in `[rmin, rmax]` (widened to include 0) as `qtype`.
    pub fn from_range(rmin: f32, rmax: f32, qtype: QType, symmetric: bool, reduce_range: bool) -> Self {
        let (qmin, qmax) = qtype.bounds(symmetric, reduce_range);
        let (mut lo, mut hi) = (rmin.min(0.0), rmax.max(0.0));
        if !lo.is_finite() || !hi.is_finite() {
            (lo, hi) = (lo.clamp(f32::MIN, 0.0), hi.clamp(0.0, f32::MAX));
        }
        if symmetric {
            let m = lo.abs().max(hi.abs());
            (lo, hi) = (-m, m);
        }
        let scale = ((f64::from(hi) - f64::from(lo)) / f64::from(qmax - qmin)) as f32;
        if scale.is_nan() || scale <= f32::MIN_POSITIVE || !scale.is_finite() {
            // Nothing but zeros: any scale represents them; zero maps to the usual zero point.
            let zero_point = match (qtype, symmetric) {
                (QType::U8, true) => 128,
                (QType::S8, false) => qmin,
                _ => 0,
            };
            return Self {
                scale: ZERO_RANGE_SCALE,
                zero_point,
                qmin,
                qmax,
            };
        }
        let zero_point = if symmetric {
            // (qmin + qmax) / 2, rounded half to even as numpy does: 0 for s8, 128 for u8.
            (f64::from(qmin + qmax) / 2.0).round_ties_even() as i32
        } else {
            (f64::from(qmin) - f64::from(lo) / f64::from(scale))
                .round_ties_even()
                .clamp(f64::from(qmin), f64::from(qmax)) as i32
        };
        Self {
            scale,
            zero_point,
            qmin,
            qmax,
        }
    }

    /// The integer for `x`, as `QuantizeLinear` computes it.
    pub fn quantize(&self, x: f32) -> i32 {
        let q = (f64::from(x) / f64::from(self.scale)).round_ties_even() + f64::from(self.zero_point);
        q.clamp(f64::from(self.qmin), f64::from(self.qmax)) as i32
    }

    /// The real value of `q`.
    pub fn dequantize(&self, q: i32) -> f32 {
        (q - self.zero_point) as f32 * self.scale
    }

    /// The real range the integers can represent.
    pub fn real_range(&self) -> (f32, f32) {
        (self.dequantize(self.qmin), self.dequantize(self.qmax))
    }
}

/// Quantizes `values` with one parameter set per slice along `axis` of a tensor shaped `dims`
/// (`params.len() == 1`: per tensor). Returns the integers in storage order.
pub fn quantize_along(values: &[f32], dims: &[usize], axis: Option<usize>, params: &[QParams]) -> Vec<i32> {
    match axis {
        None => values.iter().map(|&v| params[0].quantize(v)).collect(),
        Some(a) => {
            let inner: usize = dims[a + 1..].iter().product();
            let channels = dims[a];
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| params[(i / inner) % channels].quantize(v))
                .collect()
        }
    }
}

/// Per-slice minimum and maximum along `axis` of a tensor shaped `dims` (`None`: whole tensor).
pub fn ranges_along(values: &[f32], dims: &[usize], axis: Option<usize>) -> Vec<(f32, f32)> {
    let n = axis.map_or(1, |a| dims[a]);
    let inner: usize = axis.map_or(1, |a| dims[a + 1..].iter().product());
    let mut out = vec![(f32::INFINITY, f32::NEG_INFINITY); n];
    for (i, &v) in values.iter().enumerate() {
        if v.is_finite() {
            let c = if axis.is_some() { (i / inner) % n } else { 0 };
            out[c].0 = out[c].0.min(v);
            out[c].1 = out[c].1.max(v);
        }
    }
    for r in &mut out {
        if r.0 > r.1 {
            *r = (0.0, 0.0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asymmetric_u8_maps_the_range_ends_to_0_and_255() {
        let p = QParams::from_range(-1.0, 3.0, QType::U8, false, false);
        assert!((p.scale - 4.0 / 255.0).abs() < 1e-7);
        assert_eq!(p.zero_point, 64);
        assert_eq!(p.quantize(-1.0), 0);
        assert_eq!(p.quantize(3.0), 255);
        assert_eq!(p.quantize(0.0), 64, "zero is exact");
        assert_eq!(p.quantize(100.0), 255, "saturates");
    }

    #[test]
    fn a_relu_range_gets_zero_point_at_the_bottom() {
        let u = QParams::from_range(0.0, 6.0, QType::U8, false, false);
        assert_eq!(u.zero_point, 0);
        let s = QParams::from_range(0.0, 6.0, QType::S8, false, false);
        assert_eq!(s.zero_point, -128);
        assert_eq!(s.real_range(), (0.0, 6.0));
    }

    #[test]
    fn symmetric_weights_use_127_steps_each_side_and_zero_point_0() {
        let p = QParams::from_range(-0.5, 2.54, QType::S8, true, false);
        assert_eq!((p.qmin, p.qmax, p.zero_point), (-127, 127, 0));
        assert!((p.scale - 2.54 / 127.0).abs() < 1e-7);
        let r = QParams::from_range(-0.5, 2.54, QType::S8, true, true);
        assert_eq!((r.qmin, r.qmax), (-64, 64));
        assert_eq!(
            QParams::from_range(-1.0, 1.0, QType::U8, true, false).zero_point,
            128
        );
    }

    #[test]
    fn a_constant_zero_tensor_gets_a_usable_scale() {
        let p = QParams::from_range(0.0, 0.0, QType::S8, true, false);
        assert!(p.scale > 0.0);
        assert_eq!(p.quantize(0.0), 0);
    }

    #[test]
    fn ties_round_to_even_like_quantize_linear() {
        let p = QParams {
            scale: 1.0,
            zero_point: 0,
            qmin: -128,
            qmax: 127,
        };
        assert_eq!((p.quantize(0.5), p.quantize(1.5), p.quantize(-2.5)), (0, 2, -2));
    }

    #[test]
    fn per_channel_ranges_and_quantization_follow_the_axis() {
        // dims [2, 3]: channel 0 = [1, -2, 0.5], channel 1 = [10, 0, 5]
        let v = [1.0, -2.0, 0.5, 10.0, 0.0, 5.0];
        let r = ranges_along(&v, &[2, 3], Some(0));
        assert_eq!(r, vec![(-2.0, 1.0), (0.0, 10.0)]);
        let params: Vec<QParams> = r
            .iter()
            .map(|&(lo, hi)| QParams::from_range(lo, hi, QType::S8, true, false))
            .collect();
        let q = quantize_along(&v, &[2, 3], Some(0), &params);
        assert_eq!(q, vec![64, -127, 32, 127, 0, 64]);
        let r1 = ranges_along(&v, &[2, 3], Some(1));
        assert_eq!(r1, vec![(1.0, 10.0), (-2.0, 0.0), (0.5, 5.0)]);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any value inside the represented range comes back within half a step.
        #[test]
        fn quantize_then_dequantize_stays_within_half_a_step(
            values in proptest::collection::vec(-1e4f32..1e4, 1..64),
            signed in any::<bool>(),
            symmetric in any::<bool>(),
            reduce in any::<bool>(),
        ) {
            let qtype = if signed { QType::S8 } else { QType::U8 };
            let lo = values.iter().copied().fold(f32::INFINITY, f32::min);
            let hi = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let p = QParams::from_range(lo, hi, qtype, symmetric, reduce);
            let (rlo, rhi) = p.real_range();
            for &x in &values {
                let back = p.dequantize(p.quantize(x));
                // Rounding the zero point may shift the grid by up to half a step at the edges.
                let slack = p.scale * 0.5 * (1.0 + 1e-4);
                let inside = x >= rlo - slack && x <= rhi + slack;
                prop_assert!(inside, "{x} outside [{rlo}, {rhi}]");
                let tolerance = p.scale * 0.5 * (1.0 + 1e-4) + x.abs() * 1e-6;
                let clamped = x.clamp(rlo, rhi);
                prop_assert!((back - clamped).abs() <= tolerance,
                    "{x} -> {} -> {back}, step {}", p.quantize(x), p.scale);
            }
        }
    }
}
