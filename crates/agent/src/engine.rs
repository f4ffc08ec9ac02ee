//! The inference engine: a loaded, health-checked model version and the slots that serve them.
//!
//! A [`LoadedModel`] is one version with its session, pre-processing (per the manifest, through
//! `infer::preprocess`) and post-processing (activation, top-k, labels, confidence threshold,
//! class → asset type and condition). [`Slots`] maps each model name to its serving
//! `Arc<LoadedModel>`; a hot swap replaces the `Arc` after the new version is loaded and checked,
//! so requests in flight finish on the old one and no request ever waits for a load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use infer::preprocess::{Preprocessor, RgbImage};
use infer::{Backend, ModelSource, Session, SessionOptions, Tensor};
use package::Manifest;
use package::manifest::{Dim, TensorDtype};
use package::smoke::{SmokeIndex, Values};
use proto::edgemlops::{ModelRef, Prediction};
use proto::pipeline::{Activation, Condition, Postprocess};
use serde::Serialize;

/// Why a model cannot be loaded, checked or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The unpacked package is unreadable.
    #[error("{path}: {reason}")]
    Files {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The runtime refused the model.
    #[error("the model does not load: {0}")]
    Load(#[source] infer::InferError),
    /// The model's inputs or outputs differ from the manifest.
    #[error("the model does not match its manifest: {0}")]
    Mismatch(String),
    /// A smoke-test vector failed.
    #[error("smoke test failed: {0}")]
    Smoke(String),
    /// The smoke tests ran slower than the budget.
    #[error("latency {measured_ms:.1} ms exceeds the budget of {budget_ms} ms")]
    TooSlow {
        /// Slowest smoke inference.
        measured_ms: f64,
        /// The budget.
        budget_ms: u64,
    },
    /// The image could not be decoded or converted.
    #[error("bad image: {0}")]
    Image(#[from] infer::preprocess::PreprocessError),
    /// The model has no image pre-processing.
    #[error("model {0} takes no images (no preprocess section in its manifest)")]
    NotAnImageModel(String),
    /// The runtime failed on an input.
    #[error("inference failed: {0}")]
    Run(#[source] infer::InferError),
}

/// Latency split of one inference.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timing {
    /// Decode + resize + normalize.
    pub preprocess_ms: f64,
    /// The session run.
    pub inference_ms: f64,
    /// Activation, top-k, mapping.
    pub postprocess_ms: f64,
    /// Everything.
    pub total_ms: f64,
}

/// The result of one image.
#[derive(Clone, Debug, Serialize)]
pub struct InferenceResult {
    /// The model version that produced it.
    pub model: ModelRef,
    /// Top predictions, best first.
    pub predictions: Vec<Prediction>,
    /// Asset type of the top class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset_type: Option<String>,
    /// Condition of the top class.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    /// Top score below the manifest's minimum confidence.
    pub low_confidence: bool,
    /// Where the time went.
    pub timing: Timing,
}

/// A loaded model version.
#[derive(Debug)]
pub struct LoadedModel {
    /// Name and version.
    pub model: ModelRef,
    /// The manifest.
    pub manifest: Manifest,
    labels: Vec<String>,
    preprocessor: Option<Preprocessor>,
    postprocess: Postprocess,
    session: Mutex<Box<dyn Session>>,
    dir: PathBuf,
}

fn files_error(path: &Path, reason: &dyn std::fmt::Display) -> EngineError {
    EngineError::Files {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn dtype_matches(m: TensorDtype, e: infer::ElementType) -> bool {
    use infer::ElementType as E;
    matches!(
        (m, e),
        (TensorDtype::Float32, E::F32)
            | (TensorDtype::Float64, E::F64)
            | (TensorDtype::Int8, E::I8)
            | (TensorDtype::Uint8, E::U8)
            | (TensorDtype::Int32, E::I32)
            | (TensorDtype::Int64, E::I64)
            | (TensorDtype::Bool, E::Bool)
    )
}

impl LoadedModel {
    /// Loads the unpacked (verified) package in `dir` and checks the session against the
    /// manifest: input and output names, types and fixed dimensions, and the pre-processing's
    /// tensor shape.
    pub fn load(backend: &dyn Backend, dir: &Path, threads: usize) -> Result<Self, EngineError> {
        let manifest_path = dir.join(package::manifest::MANIFEST_FILE);
        let bytes = std::fs::read(&manifest_path).map_err(|e| files_error(&manifest_path, &e))?;
        let manifest = Manifest::from_json(&bytes).map_err(|e| files_error(&manifest_path, &e))?;
        let labels = match &manifest.labels {
            Some(f) => {
                let p = dir.join(f);
                let text = std::fs::read_to_string(&p).map_err(|e| files_error(&p, &e))?;
                proto::pipeline::parse_labels(&text).map_err(|e| files_error(&p, &e))?
            }
            None => Vec::new(),
        };
        let options = SessionOptions {
            intra_threads: (threads > 0).then_some(threads),
            ..SessionOptions::default()
        };
        let session = backend
            .load(ModelSource::File(&dir.join(&manifest.model)), &options)
            .map_err(EngineError::Load)?;
        check_signature("input", &manifest.inputs, session.inputs())?;
        check_signature("output", &manifest.outputs, session.outputs())?;
        let preprocessor = match &manifest.preprocess {
            Some(spec) => {
                let want = spec.input_shape(1);
                let input = &session.inputs()[0];
                let fits = input.shape.len() == 4
                    && input
                        .shape
                        .iter()
                        .zip(want)
                        .all(|(d, w)| d.is_none_or(|d| d == w as i64));
                if !fits {
                    return Err(EngineError::Mismatch(format!(
                        "pre-processing makes {want:?} but input '{}' is {}",
                        input.name,
                        infer::format_shape(&input.shape)
                    )));
                }
                Some(Preprocessor::new(spec.clone())?)
            }
            None => None,
        };
        Ok(Self {
            model: manifest.model_ref(),
            postprocess: manifest.postprocess.clone().unwrap_or_default(),
            manifest,
            labels,
            preprocessor,
            session: Mutex::new(session),
            dir: dir.to_owned(),
        })
    }

    /// Runs the package's smoke-test vectors; returns the slowest inference in ms.
    pub fn smoke_test(&self, budget_ms: u64) -> Result<f64, EngineError> {
        let index =
            SmokeIndex::load(&self.dir, &self.manifest).map_err(|e| EngineError::Smoke(e.to_string()))?;
        let mut slowest = 0.0f64;
        for (i, case) in index.cases.iter().enumerate() {
            let read = |file: &str| {
                let p = self.dir.join(file);
                infer::npy::read_npy(&p).map_err(|e| files_error(&p, &e))
            };
            let inputs = case
                .inputs
                .iter()
                .map(|t| read(&t.file))
                .collect::<Result<Vec<_>, _>>()?;
            let start = Instant::now();
            let outputs = self.run(&inputs)?;
            slowest = slowest.max(start.elapsed().as_secs_f64() * 1e3);
            if outputs.len() != case.outputs.len() {
                return Err(EngineError::Smoke(format!(
                    "case {i}: {} outputs, expected {}",
                    outputs.len(),
                    case.outputs.len()
                )));
            }
            for (expected_file, actual) in case.outputs.iter().zip(&outputs) {
                let expected = read(&expected_file.file)?;
                let (e, a) = (expected.to_f64_vec(), actual.to_f64_vec());
                index
                    .tolerance
                    .check(
                        &expected_file.name,
                        Values {
                            shape: expected.shape(),
                            values: &e,
                        },
                        Values {
                            shape: actual.shape(),
                            values: &a,
                        },
                    )
                    .map_err(|err| EngineError::Smoke(format!("case {i}: {err}")))?;
            }
        }
        if slowest > budget_ms as f64 {
            return Err(EngineError::TooSlow {
                measured_ms: slowest,
                budget_ms,
            });
        }
        Ok(slowest)
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        session.run(inputs).map_err(EngineError::Run)
    }

    /// Infers one encoded image (JPEG or PNG).
    pub fn infer_image(&self, bytes: &[u8]) -> Result<InferenceResult, EngineError> {
        let start = Instant::now();
        let Some(pre) = &self.preprocessor else {
            return Err(EngineError::NotAnImageModel(self.model.to_string()));
        };
        // A clone is a fresh resize buffer: requests run in parallel without sharing one.
        let mut pre = pre.clone();
        let tensor = pre.tensor(&RgbImage::decode(bytes)?)?;
        let t_pre = start.elapsed().as_secs_f64() * 1e3;
        let outputs = self.run(std::slice::from_ref(&tensor))?;
        let t_inf = start.elapsed().as_secs_f64() * 1e3;
        let scores = outputs
            .first()
            .map(Tensor::to_f64_vec)
            .ok_or_else(|| EngineError::Mismatch("the model returned no output".into()))?;
        let mut result = self.postprocess(&scores);
        let total = start.elapsed().as_secs_f64() * 1e3;
        result.timing = Timing {
            preprocess_ms: t_pre,
            inference_ms: t_inf - t_pre,
            postprocess_ms: total - t_inf,
            total_ms: total,
        };
        Ok(result)
    }

    /// Activation, top-k, labels, threshold and class mapping over the first output row.
    pub fn postprocess(&self, raw: &[f64]) -> InferenceResult {
        let p = &self.postprocess;
        let scores: Vec<f64> = match p.activation {
            Activation::Softmax => {
                let max = raw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let exp: Vec<f64> = raw.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = exp.iter().sum();
                exp.iter().map(|e| e / sum).collect()
            }
            Activation::Sigmoid => raw.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
            Activation::None => raw.to_vec(),
        };
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let predictions: Vec<Prediction> = order
            .iter()
            .take(p.top_k.max(1))
            .map(|&i| Prediction {
                label: self.labels.get(i).cloned().unwrap_or_else(|| i.to_string()),
                score: scores[i].clamp(0.0, 1.0) as f32,
            })
            .collect();
        let top = predictions.first();
        let meaning = top.and_then(|t| p.classes.get(&t.label));
        InferenceResult {
            model: self.model.clone(),
            asset_type: meaning.map(|m| m.asset_type.clone()),
            condition: meaning.map(|m| m.condition),
            low_confidence: top.is_none_or(|t| t.score < p.min_confidence),
            predictions,
            timing: Timing::default(),
        }
    }
}

fn check_signature(
    what: &str,
    declared: &[package::manifest::TensorInfo],
    actual: &[infer::TensorSpec],
) -> Result<(), EngineError> {
    if declared.len() != actual.len() {
        return Err(EngineError::Mismatch(format!(
            "the manifest declares {} {what}s, the model has {}",
            declared.len(),
            actual.len()
        )));
    }
    for (d, a) in declared.iter().zip(actual) {
        if d.name != a.name || !dtype_matches(d.dtype, a.dtype) {
            return Err(EngineError::Mismatch(format!(
                "{what} '{}' ({:?}) is '{}' ({}) in the model",
                d.name, d.dtype, a.name, a.dtype
            )));
        }
        let shape_fits = d.shape.len() == a.shape.len()
            && d.shape.iter().zip(&a.shape).all(|(dd, ad)| match (dd, ad) {
                (Dim::Fixed(x), Some(y)) => *x as i64 == *y,
                _ => true,
            });
        if !shape_fits {
            return Err(EngineError::Mismatch(format!(
                "{what} '{}' has shape {} in the model, the manifest says {:?}",
                a.name,
                infer::format_shape(&a.shape),
                d.shape
            )));
        }
    }
    Ok(())
}

/// The serving model of each name. Cloning shares the slots.
#[derive(Clone, Debug, Default)]
pub struct Slots {
    inner: Arc<RwLock<BTreeMap<String, Arc<LoadedModel>>>>,
}

impl Slots {
    /// Makes `model` the serving version of its name; returns the one it replaced (requests
    /// holding it finish on it).
    pub fn swap(&self, model: Arc<LoadedModel>) -> Option<Arc<LoadedModel>> {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        map.insert(model.model.name.clone(), model)
    }

    /// Stops serving `name`.
    pub fn remove(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner()).remove(name)
    }

    /// The serving version of `name`, or the only / first model when `name` is `None`.
    pub fn get(&self, name: Option<&str>) -> Option<Arc<LoadedModel>> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        match name {
            Some(n) => map.get(n).cloned(),
            None => map.values().next().cloned(),
        }
    }

    /// Every serving model.
    pub fn all(&self) -> Vec<Arc<LoadedModel>> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
