//! Visual quality inspection (VQI) of power-grid assets: the project's reference application.
//!
//! - [`taxonomy`]: asset types × health conditions, class names, `labels.txt`, and what each class
//!   means for the asset register.
//! - [`raster`] and [`scene`]: a procedural generator of inspection photos (backgrounds, assets,
//!   damage, lighting, camera) with named distribution shifts; [`generate`] writes datasets in the
//!   image-folder layout with a JSONL index.
//! - [`dataset`]: loading such datasets into normalised tensors; the model's input spec.
//! - [`nn`], [`model`] and [`train`]: the reference CNN's layers (forward and backward, written
//!   here: im2col + sgemm), the network and its export to ONNX with [`onnx::builder`], and a
//!   deterministic multi-threaded trainer; the export is checked in ONNX Runtime ([`eval`]).
//!
//! The crate never depends on the hub or the agent: it produces data, models and specs that the
//! toolchain packages and the devices run.

pub mod dataset;
pub mod error;
pub mod eval;
pub mod generate;
pub mod model;
pub mod nn;
pub mod raster;
pub mod scene;
pub mod taxonomy;
pub mod train;

pub use error::VqiError;
