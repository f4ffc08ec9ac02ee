//! Typed errors of the VQI crate; every variant names what it was working on.

use std::path::PathBuf;

/// What can go wrong while generating data, loading it, training or exporting.
#[derive(Debug, thiserror::Error)]
pub enum VqiError {
    /// A parameter is out of range or unknown.
    #[error("invalid {name}: {message}")]
    InvalidArgument {
        /// The parameter (`count`, `size`, `shift`, ...).
        name: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The generator refuses to write into a directory that already holds files.
    #[error("output directory {} is not empty (choose a new directory)", path.display())]
    OutputNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{action} {}", path.display())]
    Io {
        /// `reading`, `writing`, `creating directory`, ...
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An image could not be decoded or encoded.
    #[error("image {}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: image::ImageError,
    },
    /// An image could not be decoded or brought to the model's input.
    #[error("image {}", path.display())]
    Preprocess {
        /// The image file (or dataset directory for a bad spec).
        path: PathBuf,
        /// The cause.
        #[source]
        source: infer::preprocess::PreprocessError,
    },
    /// A line of a dataset index is malformed or inconsistent with the dataset.
    #[error("{}:{line}: {message}", path.display())]
    Index {
        /// The index file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// `labels.txt` is missing, malformed, or does not fit the index or model.
    #[error("labels {}: {message}", path.display())]
    Labels {
        /// The labels file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A dataset has too few images for what was asked.
    #[error("dataset {}: {message}", path.display())]
    Dataset {
        /// The dataset directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Writing or checking the ONNX model failed.
    #[error("ONNX model")]
    Onnx(#[from] onnx::OnnxError),
    /// Running the exported model in ONNX Runtime failed.
    #[error("running the exported model in ONNX Runtime")]
    Infer(#[from] infer::InferError),
    /// Training diverged or produced unusable values.
    #[error("training: {0}")]
    Training(String),
}

impl VqiError {
    /// An [`VqiError::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// An [`VqiError::InvalidArgument`].
    pub fn invalid(name: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            name,
            message: message.into(),
        }
    }
}
