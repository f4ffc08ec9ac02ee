//! Calibration: run the float model on sample data with the activations to quantize exposed as
//! extra graph outputs, and collect their statistics.
//!
//! The model runs through an [`infer::Backend`] (ONNX Runtime in practice) with only basic graph
//! optimizations, so no fusion can swallow an activation that was asked for. Batches are shared
//! out to several sessions on threads when that uses the cores better than one session's own
//! threads; statistics merge exactly, so the result does not depend on the split.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use infer::{Backend, ModelSource, OptLevel, SessionOptions, Tensor};
use onnx::ModelProto;
use onnx::builder::value_info;
use onnx::proto::ValueInfoProto;

use crate::data::Dataset;
use crate::error::QuantError;
use crate::histogram::{CalibrationMethod, TensorStats};

/// How calibration runs.
#[derive(Clone, Debug)]
pub struct CalibrationOptions {
    /// Collect histograms (needed for percentile and entropy calibration).
    pub histograms: bool,
    /// Samples per run (models with a fixed batch dimension use theirs).
    pub batch_size: usize,
    /// Sessions running in parallel.
    pub workers: usize,
    /// Intra-op threads of each session.
    pub threads_per_worker: usize,
}

impl CalibrationOptions {
    /// One session per core with one thread each: calibration runs many independent batches, and
    /// measured on 2 cores this beats one session with 2 threads (no synchronisation inside
    /// operators). `batch_size` 1 keeps memory small: every activation is copied out per run.
    pub fn for_cores(cores: usize, histograms: bool) -> Self {
        Self {
            histograms,
            batch_size: 1,
            workers: cores.max(1),
            threads_per_worker: 1,
        }
    }
}

/// Statistics of the calibrated tensors.
#[derive(Clone, Debug, Default)]
pub struct CalibrationStats {
    /// Per tensor name.
    pub tensors: BTreeMap<String, TensorStats>,
    /// Samples the statistics cover.
    pub samples: usize,
    /// Wall time of the calibration runs.
    pub seconds: f64,
}

impl CalibrationStats {
    /// The range of every tensor under `method` (`levels`: integer steps available, 255 for 8 bits).
    pub fn ranges(&self, method: CalibrationMethod, levels: usize) -> HashMap<String, (f32, f32)> {
        self.tensors
            .iter()
            .map(|(k, s)| (k.clone(), s.range(method, levels)))
            .collect()
    }

    fn merge(&mut self, other: CalibrationStats) {
        for (k, s) in other.tensors {
            match self.tensors.get_mut(&k) {
                Some(mine) => mine.merge(&s),
                None => {
                    self.tensors.insert(k, s);
                }
            }
        }
        self.samples += other.samples;
    }
}

/// The model with `tensors` added as float graph outputs (those that are not outputs already).
pub fn with_extra_outputs(model: &ModelProto, tensors: &[String]) -> ModelProto {
    let mut m = model.clone();
    if let Some(g) = m.graph.as_mut() {
        let existing: HashSet<String> = g.output.iter().chain(&g.input).map(|v| v.name.clone()).collect();
        let extra: Vec<ValueInfoProto> = tensors
            .iter()
            .filter(|t| !existing.contains(*t))
            .map(|t| value_info(t, onnx::DataType::Float, &[]))
            .map(|mut v| {
                // Rank unknown: drop the (empty) shape so the runtime does not read it as a scalar.
                if let Some(onnx::proto::type_proto::Value::TensorType(tt)) =
                    v.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    tt.shape = None;
                }
                v
            })
            .collect();
        g.output.extend(extra);
    }
    m
}

/// Runs `model` on every sample of `data` and returns the statistics of `tensors` (float
/// activations or the model input). `progress` is called with the number of samples done.
pub fn calibrate(
    backend: &dyn Backend,
    model: &ModelProto,
    tensors: &[String],
    data: &Dataset,
    options: &CalibrationOptions,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<CalibrationStats, QuantError> {
    let started = Instant::now();
    let input_name = single_input(model)?;
    let augmented = with_extra_outputs(model, tensors);
    let bytes = onnx::encode_model(&augmented)?;
    let session_options = SessionOptions {
        intra_threads: Some(options.threads_per_worker.max(1)),
        optimization: OptLevel::Basic,
        optimized_model_path: None,
        spinning: None,
    };
    let first = backend
        .load(ModelSource::Bytes(&bytes), &session_options)
        .map_err(|e| QuantError::runtime("loading the model for calibration", e))?;
    let input_spec = first.inputs()[0].clone();
    data.check_fits(&input_spec)?;
    let batch = Dataset::batch_size_for(&input_spec, options.batch_size);
    let fixed = matches!(input_spec.shape.first(), Some(Some(_)));
    let batches = data.batches(batch, fixed);
    if batches.is_empty() {
        return Err(QuantError::data(
            data.origin(),
            format!(
                "{} sample(s) cannot fill one batch of the model's fixed batch size {batch}",
                data.len()
            ),
        ));
    }
    let wanted: HashSet<&str> = tensors.iter().map(String::as_str).collect();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let workers = options.workers.clamp(1, batches.len());
    let first = Mutex::new(Some(first));
    let results: Vec<Result<CalibrationStats, QuantError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let reuse = first.lock().ok().and_then(|mut f| f.take());
                    let mut session = match reuse {
                        Some(s) => s,
                        None => backend
                            .load(ModelSource::Bytes(&bytes), &session_options)
                            .map_err(|e| QuantError::runtime("loading the model for calibration", e))?,
                    };
                    let names: Vec<String> = session.outputs().iter().map(|o| o.name.clone()).collect();
                    let mut stats = CalibrationStats::default();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(range) = batches.get(k) else { break };
                        let x = data.batch(range.clone())?;
                        if wanted.contains(input_name.as_str()) {
                            add(&mut stats, &input_name, &x, options.histograms);
                        }
                        let outputs = session
                            .run(std::slice::from_ref(&x))
                            .map_err(|e| QuantError::runtime(format!("calibration batch {range:?}"), e))?;
                        for (name, t) in names.iter().zip(&outputs) {
                            if wanted.contains(name.as_str()) {
                                add(&mut stats, name, t, options.histograms);
                            }
                        }
                        stats.samples += range.len();
                        progress(done.fetch_add(range.len(), Ordering::Relaxed) + range.len());
                    }
                    Ok(stats)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(QuantError::Calibration("a calibration thread panicked".into())))
            })
            .collect()
    });
    let mut total = CalibrationStats::default();
    for r in results {
        total.merge(r?);
    }
    for t in tensors {
        match total.tensors.get(t) {
            Some(s) if s.count > 0 => {}
            _ => {
                return Err(QuantError::Calibration(format!(
                    "tensor '{t}' produced no finite float values on the calibration data"
                )));
            }
        }
    }
    total.seconds = started.elapsed().as_secs_f64();
    Ok(total)
}

fn add(stats: &mut CalibrationStats, name: &str, t: &Tensor, histograms: bool) {
    let Some(a) = t.as_f32() else { return };
    let entry = stats
        .tensors
        .entry(name.to_owned())
        .or_insert_with(|| TensorStats::new(histograms));
    match a.as_slice() {
        Some(s) => entry.add(s),
        None => entry.add(&a.iter().copied().collect::<Vec<_>>()),
    }
}

/// The name of the model's only (non-initializer) input.
pub fn single_input(model: &ModelProto) -> Result<String, QuantError> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| QuantError::Unsupported("the model has no graph".into()))?;
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<&str> = g
        .input
        .iter()
        .map(|v| v.name.as_str())
        .filter(|n| !inits.contains(n))
        .collect();
    match inputs.as_slice() {
        [one] => Ok((*one).to_owned()),
        other => Err(QuantError::Unsupported(format!(
            "calibration and evaluation data feed single-input models; this model has {} inputs ({})",
            other.len(),
            other.join(", ")
        ))),
    }
}
