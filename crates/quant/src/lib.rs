//! int8 quantization of ONNX models, natively on the graph, for ONNX Runtime's int8 kernels.
//!
//! - [`prepare`]: refuse quantized input, optimize the graph (via [`onnx::optim`]), upgrade the opset.
//! - [`qdq`]: static quantization in QDQ format (S8S8 or U8S8, per-tensor or per-channel weights).
//! - [`dynamic`]: dynamic quantization (`DynamicQuantizeLinear` + `MatMulInteger`/`ConvInteger`).
//! - [`calibrate`] runs the float model through an [`infer::Backend`] and collects statistics;
//!   [`histogram`] turns them into ranges (min/max, percentile, entropy); [`params`] into scales.
//! - [`data`]: calibration and evaluation samples (`.npy` or images with pre-processing).
//! - [`metrics`]: agreement of a quantized model with the float one (SQNR, cosine, top-k, accuracy).
//! - [`target`]: hardware classes and their defaults; [`search`]: the accuracy-aware search.
//!
//! ```no_run
//! # fn main() -> Result<(), quant::QuantError> {
//! use quant::{calibrate, data::Dataset, histogram::CalibrationMethod, qdq};
//! let mut model = onnx::read_model(std::path::Path::new("r50.onnx"))?;
//! quant::prepare::prepare(&mut model, true, true, None)?;
//! let config = qdq::StaticConfig::default(); // U8S8, per-channel
//! let plan = qdq::plan(&model, &config)?;
//! let data = Dataset::from_npy(std::path::Path::new("calib.npy"))?;
//! let backend = infer::OrtBackend::new().map_err(|e| quant::QuantError::runtime("ONNX Runtime", e))?;
//! let stats = calibrate::calibrate(&backend, &model, &plan.calibrate, &data,
//!     &calibrate::CalibrationOptions::for_cores(2, false), &|_| {})?;
//! let (quantized, report) = qdq::apply(&model, &plan, &stats.ranges(CalibrationMethod::MinMax, 255))?;
//! # Ok(()) }
//! ```

pub mod calibrate;
pub mod data;
pub mod dynamic;
pub mod error;
pub mod histogram;
pub mod metrics;
pub mod params;
pub mod prepare;
pub mod qdq;
pub mod search;
pub mod target;

pub use error::QuantError;

use onnx::ModelProto;
use onnx::proto::StringStringEntryProto;

/// Metadata key under which the quantization record (JSON) is stored in the model.
pub const METADATA_KEY: &str = "edgemlops.quantization";

/// Stores (or replaces) the quantization record in the model's metadata.
pub fn record(model: &mut ModelProto, record: &serde_json::Value) {
    model.metadata_props.retain(|e| e.key != METADATA_KEY);
    model.metadata_props.push(StringStringEntryProto {
        key: METADATA_KEY.into(),
        value: record.to_string(),
    });
}

/// Integer steps of an 8-bit range, what entropy calibration distributes.
pub const LEVELS_8BIT: usize = 255;
