//! Typed inference errors: callers branch on them (retry, roll back, tell the user to run set-up).

use std::path::PathBuf;

use crate::tensor::ElementType;

/// Errors of loading and running models.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The ONNX Runtime library was not found.
    #[error(
        "ONNX Runtime library {lib} not found (looked in: {}); run `cargo xtask setup` or set ORT_DYLIB_PATH",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    LibraryMissing {
        /// The file name looked for.
        lib: String,
        /// Places searched.
        searched: Vec<PathBuf>,
    },
    /// The library exists but could not be loaded or initialised.
    #[error("cannot load ONNX Runtime from {}: {reason}", path.display())]
    LibraryLoad {
        /// The library file.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The runtime refused the model.
    #[error("invalid model: {reason}")]
    ModelInvalid {
        /// The runtime's message.
        reason: String,
    },
    /// Wrong number of inputs.
    #[error("the model takes {expected} input(s), {got} given")]
    InputCount {
        /// Declared inputs.
        expected: usize,
        /// Given inputs.
        got: usize,
    },
    /// Input of the wrong element type.
    #[error("input '{name}' must be {expected}, got {got}")]
    InputType {
        /// Input name.
        name: String,
        /// Declared type.
        expected: ElementType,
        /// Given type.
        got: ElementType,
    },
    /// Input of the wrong shape.
    #[error("input '{name}' must have shape {expected}, got {got}")]
    InputShape {
        /// Input name.
        name: String,
        /// Declared shape.
        expected: String,
        /// Given shape.
        got: String,
    },
    /// The model uses a type this crate cannot pass in or out.
    #[error("unsupported type for '{name}': {detail}")]
    UnsupportedType {
        /// Value name.
        name: String,
        /// What the type is.
        detail: String,
    },
    /// Running failed inside the runtime.
    #[error("inference failed: {0}")]
    Run(String),
}
