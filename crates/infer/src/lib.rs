//! Inference backends behind one small trait.
//!
//! A [`Backend`] loads a model into a [`Session`]; a session runs positional inputs to positional
//! outputs as [`Tensor`]s. Two backends exist: [`OrtBackend`] (ONNX Runtime, loaded at run time
//! from the library `cargo xtask setup` caches, see [`runtime`]) and [`FakeBackend`] (no native
//! code, for tests of code that only needs *a* session).
//!
//! [`preprocess`] turns JPEG/PNG images into input tensors as a manifest's pre-processing spec
//! says, and [`npy`] reads and writes NumPy arrays (calibration, evaluation and test data).
//!
//! Errors are typed ([`InferError`]) so callers can tell a missing runtime from a bad model from a
//! bad input.

pub mod error;
pub mod fake;
pub mod machine;
pub mod npy;
pub mod ort_backend;
pub mod preprocess;
pub mod runtime;
pub mod tensor;

use std::path::{Path, PathBuf};

pub use error::InferError;
pub use fake::FakeBackend;
pub use ort_backend::OrtBackend;
pub use tensor::{ElementType, Tensor};

/// Where a model comes from.
#[derive(Clone, Copy, Debug)]
pub enum ModelSource<'a> {
    /// A file on disk.
    File(&'a Path),
    /// Serialized ONNX bytes.
    Bytes(&'a [u8]),
}

/// Graph optimization levels (ONNX Runtime's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptLevel {
    /// No graph rewrites.
    Disable,
    /// Constant folding and redundant-node removal.
    Basic,
    /// Plus operator fusions.
    Extended,
    /// Everything, layout transformations included (the runtime's default).
    #[default]
    All,
}

impl std::str::FromStr for OptLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disable" | "none" => Ok(Self::Disable),
            "basic" => Ok(Self::Basic),
            "extended" => Ok(Self::Extended),
            "all" => Ok(Self::All),
            _ => Err(format!(
                "unknown optimization level '{s}' (disable, basic, extended, all)"
            )),
        }
    }
}

/// Session settings.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Threads for parallelism inside an operator; `None` lets the runtime choose (one per core).
    pub intra_threads: Option<usize>,
    /// Graph optimization level.
    pub optimization: OptLevel,
    /// Where to write the graph after the runtime's optimizations (to check what it will execute).
    pub optimized_model_path: Option<PathBuf>,
    /// Whether idle intra-op threads spin waiting for work (`None`: the runtime's default, spin).
    /// Spinning shortens back-to-back runs of one session, but the threads of several idle
    /// sessions in one process then burn the cores the running session needs.
    pub spinning: Option<bool>,
}

/// Declared element type and shape of a session input or output (`None` = dynamic dimension).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// Value name.
    pub name: String,
    /// Element type.
    pub dtype: ElementType,
    /// Dimensions, `None` where the model leaves them open.
    pub shape: Vec<Option<i64>>,
}

impl TensorSpec {
    /// The shape with dynamic dimensions replaced by `fill` (to make a runnable input).
    pub fn concrete_shape(&self, fill: usize) -> Vec<usize> {
        self.shape
            .iter()
            .map(|d| d.map_or(fill, |v| v.max(0) as usize))
            .collect()
    }
}

/// A loaded model that can be run.
pub trait Session: Send + std::fmt::Debug {
    /// Declared inputs, in the order `run` takes them.
    fn inputs(&self) -> &[TensorSpec];
    /// Declared outputs, in the order `run` returns them.
    fn outputs(&self) -> &[TensorSpec];
    /// Runs the model on one tensor per declared input.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferError>;
}

/// Something that turns a model into a [`Session`].
pub trait Backend: Send + Sync {
    /// Short name for reports (`onnxruntime`, `fake`).
    fn name(&self) -> &'static str;
    /// Runtime version string.
    fn version(&self) -> String;
    /// Loads a model.
    fn load(&self, model: ModelSource<'_>, options: &SessionOptions) -> Result<Box<dyn Session>, InferError>;
}

/// Checks inputs against declared specs: count, element type, and every fixed dimension.
pub fn check_inputs(specs: &[TensorSpec], inputs: &[Tensor]) -> Result<(), InferError> {
    if specs.len() != inputs.len() {
        return Err(InferError::InputCount {
            expected: specs.len(),
            got: inputs.len(),
        });
    }
    for (spec, t) in specs.iter().zip(inputs) {
        if spec.dtype != t.dtype() {
            return Err(InferError::InputType {
                name: spec.name.clone(),
                expected: spec.dtype,
                got: t.dtype(),
            });
        }
        let shape = t.shape();
        let fits = shape.len() == spec.shape.len()
            && spec
                .shape
                .iter()
                .zip(shape)
                .all(|(want, &got)| want.is_none_or(|w| w == got as i64));
        if !fits {
            return Err(InferError::InputShape {
                name: spec.name.clone(),
                expected: format_shape(&spec.shape),
                got: format!("{shape:?}"),
            });
        }
    }
    Ok(())
}

/// `[?, 3, 224, 224]`-style rendering of a declared shape.
pub fn format_shape(shape: &[Option<i64>]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| d.map_or_else(|| "?".to_owned(), |v| v.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}
