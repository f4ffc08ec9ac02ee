//! ONNX models as data: protobuf read/write, tensor helpers, inspection, and a graph builder.
//!
//! This crate never links ONNX Runtime: it reads, writes, rewrites and builds ONNX files.
//! Running them is the `infer` crate's job.
//!
//! - [`proto`]: the `onnx.proto` messages (prost), written from the ONNX IR specification.
//! - [`io`]: reading and writing model files (external data resolved safely, atomic writes).
//! - [`tensor`]: typed access to `TensorProto` payloads and constructors.
//! - [`inspect`]: the summary behind `edgemlops model inspect`.
//! - [`builder`]: a small graph builder; [`zoo`] builds ResNet-50/101 and MobileNetV2 with it.
//! - [`graph`]: a read-only index of a graph (producers, consumers, constants); [`patch`]: a graph
//!   change computed from it and applied in one step; [`optim`]: rewrite rules per operator type
//!   (the pre-quantization optimizer), with [`fold`] (constant evaluation), [`types`] (element-type
//!   inference) and [`opset`] (upgrading to opset 13).

pub mod builder;
pub mod error;
pub mod fold;
pub mod graph;
pub mod inspect;
pub mod io;
pub mod opset;
pub mod optim;
pub mod patch;
pub mod proto;
pub mod rng;
pub mod tensor;
pub mod types;
pub mod walk;
pub mod zoo;

pub use error::OnnxError;
pub use io::{decode_model, encode_model, read_model, write_model};
pub use proto::{DataType, GraphProto, ModelProto, NodeProto, TensorProto};

/// Opset of the default ONNX domain used by models this crate builds.
pub const DEFAULT_OPSET: i64 = 17;
/// IR version written by models this crate builds (IR 8 goes with opset 17).
pub const DEFAULT_IR_VERSION: i64 = 8;
