//! The ONNX Runtime backend, through the `ort` crate with the library loaded at run time.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session as OrtSessionInner, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::error::InferError;
use crate::runtime;
use crate::tensor::{ElementType, Tensor};
use crate::{Backend, ModelSource, OptLevel, Session, SessionOptions, TensorSpec, check_inputs};

/// The process-wide ONNX Runtime environment: the library can be loaded once per process.
static ENVIRONMENT: OnceLock<Result<(Environment, PathBuf), String>> = OnceLock::new();

/// ONNX Runtime on the CPU.
#[derive(Clone, Debug)]
pub struct OrtBackend {
    env: Environment,
    library: PathBuf,
}

impl OrtBackend {
    /// Loads the runtime library (found by [`runtime::locate_library`]) once per process.
    pub fn new() -> Result<Self, InferError> {
        let path = runtime::locate_library()?;
        let (env, library) = ENVIRONMENT
            .get_or_init(|| init(&path))
            .as_ref()
            .map_err(|reason| InferError::LibraryLoad {
                path: path.clone(),
                reason: reason.clone(),
            })?;
        Ok(Self {
            env: env.clone(),
            library: library.clone(),
        })
    }

    /// The library file in use.
    pub fn library_path(&self) -> &Path {
        &self.library
    }
}

fn init(path: &Path) -> Result<(Environment, PathBuf), String> {
    let env = ort::init_from(path)
        .map_err(|e| e.to_string())?
        .with_name("edgemlops")
        .with_telemetry(false)
        .build()
        .map_err(|e| e.to_string())?;
    Ok((env, path.to_owned()))
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn version(&self) -> String {
        runtime::ORT_VERSION.to_owned()
    }

    fn load(&self, model: ModelSource<'_>, options: &SessionOptions) -> Result<Box<dyn Session>, InferError> {
        let invalid = |e: &dyn std::fmt::Display| InferError::ModelInvalid {
            reason: e.to_string(),
        };
        let level = match options.optimization {
            OptLevel::Disable => GraphOptimizationLevel::Disable,
            OptLevel::Basic => GraphOptimizationLevel::Level1,
            OptLevel::Extended => GraphOptimizationLevel::Level2,
            OptLevel::All => GraphOptimizationLevel::All,
        };
        let mut builder = OrtSessionInner::builder(&self.env)
            .map_err(|e| invalid(&e))?
            .with_optimization_level(level)
            .map_err(|e| invalid(&e))?
            .with_inter_threads(1)
            .map_err(|e| invalid(&e))?;
        if let Some(n) = options.intra_threads {
            builder = builder.with_intra_threads(n).map_err(|e| invalid(&e))?;
        }
        if let Some(spin) = options.spinning {
            builder = builder.with_intra_op_spinning(spin).map_err(|e| invalid(&e))?;
        }
        if let Some(p) = &options.optimized_model_path {
            builder = builder.with_optimized_model_path(p).map_err(|e| invalid(&e))?;
        }
        let session = match model {
            ModelSource::File(p) => {
                if !p.is_file() {
                    return Err(InferError::ModelInvalid {
                        reason: format!("{}: no such file", p.display()),
                    });
                }
                builder.commit_from_file(p)
            }
            ModelSource::Bytes(b) => builder.commit_from_memory(b),
        }
        .map_err(|e| invalid(&e))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect::<Result<_, _>>()?;
        let outputs = session
            .outputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype()))
            .collect::<Result<_, _>>()?;
        Ok(Box::new(OrtSession {
            session,
            inputs,
            outputs,
        }))
    }
}

fn spec(name: &str, ty: &ValueType) -> Result<TensorSpec, InferError> {
    let unsupported = |detail: String| InferError::UnsupportedType {
        name: name.to_owned(),
        detail,
    };
    match ty {
        ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
            name: name.to_owned(),
            dtype: element_type(*ty).ok_or_else(|| unsupported(format!("tensor of {ty:?}")))?,
            shape: shape.iter().map(|&d| (d >= 0).then_some(d)).collect(),
        }),
        other => Err(unsupported(format!("{other:?}"))),
    }
}

fn element_type(t: TensorElementType) -> Option<ElementType> {
    Some(match t {
        TensorElementType::Float32 => ElementType::F32,
        TensorElementType::Float64 => ElementType::F64,
        TensorElementType::Uint8 => ElementType::U8,
        TensorElementType::Int8 => ElementType::I8,
        TensorElementType::Int32 => ElementType::I32,
        TensorElementType::Int64 => ElementType::I64,
        TensorElementType::Bool => ElementType::Bool,
        _ => return None,
    })
}

struct OrtSession {
    session: OrtSessionInner,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for OrtSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtSession")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

fn run_err(e: impl std::fmt::Display) -> InferError {
    InferError::Run(e.to_string())
}

impl Session for OrtSession {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferError> {
        check_inputs(&self.inputs, inputs)?;
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (spec, t) in self.inputs.iter().zip(inputs) {
            let v: SessionInputValue<'_> = match t {
                Tensor::F32(a) => TensorRef::from_array_view(a.view()).map_err(run_err)?.into(),
                Tensor::F64(a) => TensorRef::from_array_view(a.view()).map_err(run_err)?.into(),
                Tensor::U8(a) => TensorRef::from_array_view(a.view()).map_err(run_err)?.into(),
                Tensor::I8(a) => TensorRef::from_array_view(a.view()).map_err(run_err)?.into(),
                Tensor::I32(a) => TensorRef::from_array_view(a.view()).map_err(run_err)?.into(),
                Tensor::I64(a) => TensorRef::from_array_view(a.view()).map_err(run_err)?.into(),
                Tensor::Bool(a) => TensorRef::from_array_view(a.view()).map_err(run_err)?.into(),
            };
            values.push((Cow::Borrowed(spec.name.as_str()), v));
        }
        let outputs = self.session.run(values).map_err(run_err)?;
        self.outputs
            .iter()
            .map(|spec| {
                let v = outputs
                    .get(&spec.name)
                    .ok_or_else(|| run_err(format!("output '{}' missing", spec.name)))?;
                Ok(match spec.dtype {
                    ElementType::F32 => {
                        Tensor::F32(v.try_extract_array::<f32>().map_err(run_err)?.to_owned())
                    }
                    ElementType::F64 => {
                        Tensor::F64(v.try_extract_array::<f64>().map_err(run_err)?.to_owned())
                    }
                    ElementType::U8 => Tensor::U8(v.try_extract_array::<u8>().map_err(run_err)?.to_owned()),
                    ElementType::I8 => Tensor::I8(v.try_extract_array::<i8>().map_err(run_err)?.to_owned()),
                    ElementType::I32 => {
                        Tensor::I32(v.try_extract_array::<i32>().map_err(run_err)?.to_owned())
                    }
                    ElementType::I64 => {
                        Tensor::I64(v.try_extract_array::<i64>().map_err(run_err)?.to_owned())
                    }
                    ElementType::Bool => {
                        Tensor::Bool(v.try_extract_array::<bool>().map_err(run_err)?.to_owned())
                    }
                })
            })
            .collect()
    }
}
