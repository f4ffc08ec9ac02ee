//! Errors of the quantizer; each variant says which file, node or tensor it is about.

use std::path::PathBuf;

/// Everything that can stop a quantization.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// Reading, checking or rewriting the ONNX graph failed.
    #[error(transparent)]
    Onnx(#[from] onnx::OnnxError),
    /// ONNX Runtime refused the model or failed while running it.
    #[error("{context}: {source}")]
    Runtime {
        /// What was being done.
        context: String,
        /// The runtime's error.
        #[source]
        source: infer::InferError,
    },
    /// The model is already quantized.
    #[error("the model is already quantized ({format}); quantize the float model instead")]
    AlreadyQuantized {
        /// `qdq`, `qoperator`, `dynamic` or `mixed`.
        format: String,
    },
    /// The model cannot be quantized as asked.
    #[error("{0}")]
    Unsupported(String),
    /// An `--exclude` entry names nothing in the model.
    #[error("--exclude '{pattern}' matches no node name, output name or operator type in the model")]
    UnknownExclude {
        /// The entry.
        pattern: String,
    },
    /// Calibration or evaluation data is unusable.
    #[error("{}: {reason}", source_name.display())]
    Data {
        /// The file or directory.
        source_name: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// An image could not be read or pre-processed.
    #[error(transparent)]
    Preprocess(#[from] infer::preprocess::PreprocessError),
    /// An `.npy` file could not be read.
    #[error(transparent)]
    Npy(#[from] infer::npy::NpyError),
    /// Calibration produced no usable statistics for a tensor.
    #[error("calibration: {0}")]
    Calibration(String),
}

impl QuantError {
    /// A runtime error with context.
    pub fn runtime(context: impl Into<String>, source: infer::InferError) -> Self {
        Self::Runtime {
            context: context.into(),
            source,
        }
    }

    /// A data error about `source_name`.
    pub fn data(source_name: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Data {
            source_name: source_name.into(),
            reason: reason.into(),
        }
    }
}
