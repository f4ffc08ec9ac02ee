//! Owned tensors passed into and out of sessions, for the element types edge models use.

use std::fmt;

use ndarray::ArrayD;

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
