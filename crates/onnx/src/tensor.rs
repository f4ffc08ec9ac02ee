//! Typed access to `TensorProto` payloads: element types, sizes, reading values out and building tensors.
//!
//! ONNX stores a tensor either in `raw_data` (little-endian bytes) or in one of the typed repeated
//! fields; readers here accept both, writers always use `raw_data` (what exporters write and what
//! ONNX Runtime reads fastest).

use crate::error::OnnxError;
use crate::proto::{DataLocation, DataType, TensorProto};

impl DataType {
    /// The element type of a raw `data_type`/`elem_type` field, if it is one the spec defines.
    pub fn from_raw(value: i32) -> Option<Self> {
        Self::try_from(value).ok()
    }

    /// A short lowercase name, as numpy and the ONNX Runtime Python API print it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Undefined => "undefined",
            Self::Float => "float32",
            Self::Uint8 => "uint8",
            Self::Int8 => "int8",
            Self::Uint16 => "uint16",
            Self::Int16 => "int16",
            Self::Int32 => "int32",
            Self::Int64 => "int64",
            Self::String => "string",
            Self::Bool => "bool",
            Self::Float16 => "float16",
            Self::Double => "float64",
            Self::Uint32 => "uint32",
            Self::Uint64 => "uint64",
            Self::Complex64 => "complex64",
            Self::Complex128 => "complex128",
            Self::Bfloat16 => "bfloat16",
            Self::Float8e4m3fn => "float8e4m3fn",
            Self::Float8e4m3fnuz => "float8e4m3fnuz",
            Self::Float8e5m2 => "float8e5m2",
            Self::Float8e5m2fnuz => "float8e5m2fnuz",
            Self::Uint4 => "uint4",
            Self::Int4 => "int4",
            Self::Float4e2m1 => "float4e2m1",
            Self::Float8e8m0 => "float8e8m0",
        }
    }

    /// Storage size of one element in bits (`None` for strings and undefined).
    pub fn bit_width(self) -> Option<usize> {
        Some(match self {
            Self::Undefined | Self::String => return None,
            Self::Uint4 | Self::Int4 | Self::Float4e2m1 => 4,
            Self::Bool
            | Self::Uint8
            | Self::Int8
            | Self::Float8e4m3fn
            | Self::Float8e4m3fnuz
            | Self::Float8e5m2
            | Self::Float8e5m2fnuz
            | Self::Float8e8m0 => 8,
            Self::Uint16 | Self::Int16 | Self::Float16 | Self::Bfloat16 => 16,
            Self::Int32 | Self::Uint32 | Self::Float => 32,
            Self::Int64 | Self::Uint64 | Self::Double | Self::Complex64 => 64,
            Self::Complex128 => 128,
        })
    }

    /// Whether this is a floating-point type (the types quantization and statistics work on).
    pub fn is_float(self) -> bool {
        matches!(self, Self::Float | Self::Double | Self::Float16 | Self::Bfloat16)
    }
}

/// The printable name of a raw element-type number (`"unknown(99)"` for numbers the spec lacks).
pub fn dtype_name(raw: i32) -> String {
    match DataType::from_raw(raw) {
        Some(t) => t.name().to_owned(),
        None => format!("unknown({raw})"),
    }
}

/// A Rust type that maps to one ONNX element type.
pub trait Element: Copy + Sized {
    /// The ONNX element type.
    const DATA_TYPE: DataType;
    /// Bytes per element in `raw_data`.
    const SIZE: usize;
    /// Decodes one element from exactly `SIZE` little-endian bytes.
    fn from_le(bytes: &[u8]) -> Self;
    /// Appends the little-endian bytes of `self`.
    fn put_le(self, out: &mut Vec<u8>);
    /// Reads the typed repeated field that holds this type when `raw_data` is not used.
    fn from_typed_field(t: &TensorProto) -> Vec<Self>;
}

macro_rules! element {
    ($ty:ty, $dt:ident, |$t:ident| $typed:expr) => {
        impl Element for $ty {
            const DATA_TYPE: DataType = DataType::$dt;
            const SIZE: usize = std::mem::size_of::<$ty>();
            fn from_le(bytes: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$ty>()];
                a.copy_from_slice(bytes);
                <$ty>::from_le_bytes(a)
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn from_typed_field($t: &TensorProto) -> Vec<Self> {
                $typed
            }
        }
    };
}

// The spec stores 8/16-bit integers widened in `int32_data`; the narrowing casts below undo that widening.
element!(f32, Float, |t| t.float_data.clone());
element!(f64, Double, |t| t.double_data.clone());
element!(i64, Int64, |t| t.int64_data.clone());
element!(i32, Int32, |t| t.int32_data.clone());
element!(i8, Int8, |t| t.int32_data.iter().map(|&v| v as i8).collect());
element!(u8, Uint8, |t| t.int32_data.iter().map(|&v| v as u8).collect());
element!(i16, Int16, |t| t.int32_data.iter().map(|&v| v as i16).collect());
element!(u16, Uint16, |t| t.int32_data.iter().map(|&v| v as u16).collect());
element!(u64, Uint64, |t| t.uint64_data.clone());

impl TensorProto {
    /// The element type, if the `data_type` number is one the spec defines.
    pub fn dtype(&self) -> Option<DataType> {
        DataType::from_raw(self.data_type)
    }

    /// Whether the payload lives in an external file (not yet resolved by [`crate::io::read_model`]).
    pub fn is_external(&self) -> bool {
        self.data_location == DataLocation::External as i32
    }

    /// Number of elements (product of `dims`; 1 for a scalar).
    pub fn num_elements(&self) -> Result<usize, OnnxError> {
        dims_product(&self.dims)
            .ok_or_else(|| OnnxError::tensor(&self.name, format!("invalid dimensions {:?}", self.dims)))
    }

    /// Size of the payload in bytes as stored in memory (elements × element width).
    pub fn payload_bytes(&self) -> usize {
        let n = self.num_elements().unwrap_or(0);
        match self.dtype() {
            Some(DataType::String) => self.string_data.iter().map(Vec::len).sum(),
            Some(t) => t.bit_width().map_or(0, |bits| (n * bits).div_ceil(8)),
            None => self.raw_data.len(),
        }
    }

    /// Reads the values as `T`; fails if the element type differs or the payload has the wrong length.
    pub fn values<T: Element>(&self) -> Result<Vec<T>, OnnxError> {
        if self.data_type != T::DATA_TYPE as i32 {
            return Err(OnnxError::tensor(
                &self.name,
                format!(
                    "holds {}, not {}",
                    dtype_name(self.data_type),
                    T::DATA_TYPE.name()
                ),
            ));
        }
        if self.is_external() {
            return Err(OnnxError::tensor(
                &self.name,
                "payload is in unresolved external data",
            ));
        }
        let n = self.num_elements()?;
        let values: Vec<T> = if self.raw_data.is_empty() {
            T::from_typed_field(self)
        } else {
            if self.raw_data.len() != n * T::SIZE {
                return Err(OnnxError::tensor(
                    &self.name,
                    format!(
                        "raw_data has {} bytes, expected {} for {n} elements",
                        self.raw_data.len(),
                        n * T::SIZE
                    ),
                ));
            }
            self.raw_data.chunks_exact(T::SIZE).map(T::from_le).collect()
        };
        if values.len() != n {
            return Err(OnnxError::tensor(
                &self.name,
                format!("holds {} values, dims {:?} need {n}", values.len(), self.dims),
            ));
        }
        Ok(values)
    }

    /// Builds a tensor stored in `raw_data`.
    ///
    /// # Panics
    /// If `values.len()` is not the product of `dims`: a caller bug, never input-dependent.
    pub fn from_values<T: Element>(name: impl Into<String>, dims: &[i64], values: &[T]) -> Self {
        assert_eq!(
            dims_product(dims),
            Some(values.len()),
            "tensor dims {dims:?} do not match {} values",
            values.len()
        );
        let mut raw = Vec::with_capacity(values.len() * T::SIZE);
        for &v in values {
            v.put_le(&mut raw);
        }
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: T::DATA_TYPE as i32,
            raw_data: raw,
            ..Default::default()
        }
    }
}

/// Product of tensor dimensions, `None` on a negative dimension or overflow.
pub fn dims_product(dims: &[i64]) -> Option<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_typed_payloads_read_the_same_values() {
        let raw = TensorProto::from_values("w", &[2, 2], &[1.0f32, -2.0, 3.5, 0.0]);
        let typed = TensorProto {
            name: "w".into(),
            dims: vec![2, 2],
            data_type: DataType::Float as i32,
            float_data: vec![1.0, -2.0, 3.5, 0.0],
            ..Default::default()
        };
        assert_eq!(raw.values::<f32>().unwrap(), typed.values::<f32>().unwrap());
        assert_eq!(raw.payload_bytes(), 16);
    }

    #[test]
    fn narrow_integers_come_back_from_int32_data() {
        let t = TensorProto {
            name: "zp".into(),
            dims: vec![3],
            data_type: DataType::Int8 as i32,
            int32_data: vec![-128, 0, 127],
            ..Default::default()
        };
        assert_eq!(t.values::<i8>().unwrap(), vec![-128, 0, 127]);
    }

    #[test]
    fn wrong_type_or_length_is_an_error_naming_the_tensor() {
        let t = TensorProto::from_values("bias", &[2], &[1i64, 2]);
        let e = t.values::<f32>().unwrap_err().to_string();
        assert!(e.contains("bias") && e.contains("int64"), "{e}");
        let mut short = TensorProto::from_values("w", &[4], &[1.0f32, 2.0, 3.0, 4.0]);
        short.raw_data.truncate(10);
        let e = short.values::<f32>().unwrap_err().to_string();
        assert!(e.contains("raw_data has 10 bytes"), "{e}");
    }

    #[test]
    fn negative_dims_are_rejected() {
        let t = TensorProto {
            name: "x".into(),
            dims: vec![-1, 3],
            data_type: 1,
            ..Default::default()
        };
        assert!(t.num_elements().is_err());
        assert_eq!(dims_product(&[]), Some(1));
    }
}
