//! Errors of the `onnx` crate; each variant carries the file or tensor it is about.

use std::path::PathBuf;

/// Everything that can go wrong reading, checking or writing an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model (not protobuf, or protobuf without a graph/opsets).
    #[error("{}not an ONNX model: {reason}", display_prefix(.path))]
    NotOnnx {
        /// The file, when the bytes came from one.
        path: Option<PathBuf>,
        /// What was wrong.
        reason: String,
    },
    /// A tensor stored in external data could not be resolved.
    #[error("external data of tensor '{tensor}': {reason}")]
    ExternalData {
        /// The tensor name.
        tensor: String,
        /// What was wrong.
        reason: String,
    },
    /// A tensor payload does not match its declared type and shape.
    #[error("tensor '{tensor}': {reason}")]
    InvalidTensor {
        /// The tensor name.
        tensor: String,
        /// What was wrong.
        reason: String,
    },
    /// The serialized model would exceed protobuf's 2 GiB message limit.
    #[error("model is {bytes} bytes, above protobuf's 2 GiB limit (external data writing is not supported)")]
    TooLarge {
        /// The encoded size.
        bytes: usize,
    },
    /// The graph refers to values that nothing defines, or is otherwise malformed.
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
}

fn display_prefix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

impl OnnxError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn tensor(tensor: &str, reason: impl Into<String>) -> Self {
        Self::InvalidTensor {
            tensor: tensor.to_owned(),
            reason: reason.into(),
        }
    }
}
