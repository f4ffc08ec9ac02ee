//! Owned tensors passed into and out of sessions, for the element types edge models use.

use std::fmt;

use ndarray::{ArrayD, Axis, Slice};

/// Element types a [`Tensor`] can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// Boolean.
    Bool,
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "float32",
            Self::F64 => "float64",
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I32 => "int32",
            Self::I64 => "int64",
            Self::Bool => "bool",
        })
    }
}

/// An owned n-dimensional array of one element type.
#[derive(Clone, Debug, PartialEq)]
pub enum Tensor {
    /// 32-bit floats.
    F32(ArrayD<f32>),
    /// 64-bit floats.
    F64(ArrayD<f64>),
    /// Unsigned bytes.
    U8(ArrayD<u8>),
    /// Signed bytes.
    I8(ArrayD<i8>),
    /// 32-bit integers.
    I32(ArrayD<i32>),
    /// 64-bit integers.
    I64(ArrayD<i64>),
    /// Booleans.
    Bool(ArrayD<bool>),
}

macro_rules! each {
    ($self:expr, $a:ident => $e:expr) => {
        match $self {
            Tensor::F32($a) => $e,
            Tensor::F64($a) => $e,
            Tensor::U8($a) => $e,
            Tensor::I8($a) => $e,
            Tensor::I32($a) => $e,
            Tensor::I64($a) => $e,
            Tensor::Bool($a) => $e,
        }
    };
}

impl Tensor {
    /// The element type.
    pub fn dtype(&self) -> ElementType {
        match self {
            Self::F32(_) => ElementType::F32,
            Self::F64(_) => ElementType::F64,
            Self::U8(_) => ElementType::U8,
            Self::I8(_) => ElementType::I8,
            Self::I32(_) => ElementType::I32,
            Self::I64(_) => ElementType::I64,
            Self::Bool(_) => ElementType::Bool,
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        each!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each!(self, a => a.len())
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The float32 array, if this is one.
    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match self {
            Self::F32(a) => Some(a),
            _ => None,
        }
    }

    /// Values converted to f64 (for comparisons and statistics across types).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match self {
            Self::Bool(a) => a.iter().map(|&v| f64::from(u8::from(v))).collect(),
            Self::F32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Self::F64(a) => a.iter().copied().collect(),
            Self::U8(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Self::I8(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Self::I32(a) => a.iter().map(|&v| f64::from(v)).collect(),
            Self::I64(a) => a.iter().map(|&v| v as f64).collect(),
        }
    }

    /// Samples `range` along the first (batch) axis; `None` if the tensor has no axes or the range
    /// is out of bounds.
    pub fn slice_batch(&self, range: std::ops::Range<usize>) -> Option<Self> {
        if self.shape().is_empty() || range.end > self.shape()[0] || range.start > range.end {
            return None;
        }
        let s = Slice::from(range);
        Some(match self {
            Self::F32(a) => Self::F32(a.slice_axis(Axis(0), s).to_owned()),
            Self::F64(a) => Self::F64(a.slice_axis(Axis(0), s).to_owned()),
            Self::U8(a) => Self::U8(a.slice_axis(Axis(0), s).to_owned()),
            Self::I8(a) => Self::I8(a.slice_axis(Axis(0), s).to_owned()),
            Self::I32(a) => Self::I32(a.slice_axis(Axis(0), s).to_owned()),
            Self::I64(a) => Self::I64(a.slice_axis(Axis(0), s).to_owned()),
            Self::Bool(a) => Self::Bool(a.slice_axis(Axis(0), s).to_owned()),
        })
    }

    /// Joins tensors along the first (batch) axis; `None` if they differ in type or in the other
    /// dimensions, or if there are none.
    pub fn concat_batch(parts: &[Tensor]) -> Option<Self> {
        macro_rules! join {
            ($variant:ident) => {{
                let views = parts
                    .iter()
                    .map(|p| match p {
                        Self::$variant(a) => Some(a.view()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                Self::$variant(ndarray::concatenate(Axis(0), &views).ok()?)
            }};
        }
        Some(match parts.first()? {
            Self::F32(_) => join!(F32),
            Self::F64(_) => join!(F64),
            Self::U8(_) => join!(U8),
            Self::I8(_) => join!(I8),
            Self::I32(_) => join!(I32),
            Self::I64(_) => join!(I64),
            Self::Bool(_) => join!(Bool),
        })
    }

    /// The same data with another shape of the same element count.
    pub fn reshaped(self, shape: &[usize]) -> Option<Self> {
        macro_rules! re {
            ($variant:ident, $a:expr) => {
                Self::$variant($a.into_shape_with_order(ndarray::IxDyn(shape)).ok()?)
            };
        }
        Some(match self {
            Self::F32(a) => re!(F32, a),
            Self::F64(a) => re!(F64, a),
            Self::U8(a) => re!(U8, a),
            Self::I8(a) => re!(I8, a),
            Self::I32(a) => re!(I32, a),
            Self::I64(a) => re!(I64, a),
            Self::Bool(a) => re!(Bool, a),
        })
    }

    /// A tensor of zeros of the given type and shape.
    pub fn zeros(dtype: ElementType, shape: &[usize]) -> Self {
        match dtype {
            ElementType::F32 => Self::F32(ArrayD::zeros(shape)),
            ElementType::F64 => Self::F64(ArrayD::zeros(shape)),
            ElementType::U8 => Self::U8(ArrayD::zeros(shape)),
            ElementType::I8 => Self::I8(ArrayD::zeros(shape)),
            ElementType::I32 => Self::I32(ArrayD::zeros(shape)),
            ElementType::I64 => Self::I64(ArrayD::zeros(shape)),
            ElementType::Bool => Self::Bool(ArrayD::from_elem(shape, false)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_slice_and_join_back() {
        let t = Tensor::F32(ArrayD::from_shape_vec(vec![3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap());
        let a = t.slice_batch(0..1).unwrap();
        let b = t.slice_batch(1..3).unwrap();
        assert_eq!(b.shape(), &[2, 2]);
        assert_eq!(Tensor::concat_batch(&[a, b]).unwrap(), t);
        assert!(t.slice_batch(2..4).is_none());
        let u = Tensor::U8(ArrayD::zeros(vec![1, 2]));
        assert!(Tensor::concat_batch(&[t.clone(), u]).is_none(), "types differ");
        assert_eq!(t.reshaped(&[1, 6]).unwrap().shape(), &[1, 6]);
    }
}
