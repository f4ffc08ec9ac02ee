//! Accuracy-aware quantization: try candidate configurations, measure each on held-out data and
//! on this machine's ONNX Runtime, and keep the fastest that stays within an accuracy budget.
//!
//! Candidates, in order: the target's default format with min/max, percentile and entropy
//! calibration, per-tensor weights, the other activation type, and dynamic quantization. If none
//! fits the budget, the most accurate static candidate is repaired by keeping its most sensitive
//! nodes in float, one at a time. A node's sensitivity is the quantization noise its output gains
//! over its inputs' (noise-to-signal power against the float model, on held-out samples).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use infer::{Backend, ModelSource, OptLevel, Session, SessionOptions, Tensor};
use onnx::ModelProto;

use crate::calibrate::{CalibrationOptions, CalibrationStats, calibrate, with_extra_outputs};
use crate::data::Dataset;
use crate::dynamic::{DynamicConfig, quantize_dynamic};
use crate::error::QuantError;
use crate::histogram::{CalibrationMethod, DEFAULT_PERCENTILE};
use crate::metrics::{self, Agreement};
use crate::params::QType;
use crate::qdq::{self, StaticConfig};
use crate::target::TargetDefaults;

/// One configuration to try.
#[derive(Clone, Debug)]
pub enum Candidate {
    /// Static QDQ with a calibration method.
    Static {
        /// Format settings.
        config: StaticConfig,
        /// Range selection.
        method: CalibrationMethod,
    },
    /// Dynamic quantization.
    Dynamic(DynamicConfig),
}

impl Candidate {
    /// A short description for the table.
    pub fn label(&self) -> String {
        match self {
            Self::Static { config, method } => format!(
                "static {}s8 {} {}",
                config.activations,
                if config.per_channel {
                    "per-channel"
                } else {
                    "per-tensor"
                },
                method.name()
            ),
            Self::Dynamic(c) => format!(
                "dynamic u8s8 {}",
                if c.per_channel {
                    "per-channel"
                } else {
                    "per-tensor"
                }
            ),
        }
    }
}

/// The candidates for a hardware class's defaults, with the user's exclusions.
pub fn candidates(defaults: &TargetDefaults, exclude: &[String]) -> Vec<Candidate> {
    let base = StaticConfig {
        activations: defaults.activations,
        per_channel: defaults.per_channel,
        reduce_range: defaults.reduce_range,
        exclude: exclude.to_vec(),
        ..StaticConfig::default()
    };
    let other = match defaults.activations {
        QType::U8 => QType::S8,
        QType::S8 => QType::U8,
    };
    let st = |config: StaticConfig, method| Candidate::Static { config, method };
    vec![
        st(base.clone(), CalibrationMethod::MinMax),
        st(
            base.clone(),
            CalibrationMethod::Percentile {
                percentile: DEFAULT_PERCENTILE,
            },
        ),
        st(base.clone(), CalibrationMethod::Entropy),
        st(
            StaticConfig {
                per_channel: !base.per_channel,
                ..base.clone()
            },
            CalibrationMethod::MinMax,
        ),
        st(
            StaticConfig {
                activations: other,
                ..base.clone()
            },
            CalibrationMethod::MinMax,
        ),
        Candidate::Dynamic(DynamicConfig {
            per_channel: base.per_channel,
            reduce_range: base.reduce_range,
            exclude: exclude.to_vec(),
        }),
    ]
}

/// How the search runs.
#[derive(Clone, Debug)]
pub struct SearchOptions {
    /// Largest acceptable loss in percentage points (see [`Agreement::drop_pct`]).
    pub budget_pct: f64,
    /// Most nodes the repair step keeps in float.
    pub max_exclusions: usize,
    /// Timed runs per candidate.
    pub bench_runs: usize,
    /// Intra-op threads for evaluation and timing.
    pub threads: usize,
    /// Calibration settings (histograms are always collected: the candidates need them).
    pub calibration: CalibrationOptions,
    /// Samples per evaluation run.
    pub eval_batch: usize,
}

/// One row of the table of what was tried.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Trial {
    /// The configuration.
    pub label: String,
    /// Nodes kept in float beyond the user's exclusions.
    pub extra_excluded: Vec<String>,
    /// Loss in percentage points.
    pub drop_pct: f64,
    /// Top-1 agreement with the float model.
    pub top1_agreement: Option<f64>,
    /// SQNR of the first output.
    pub sqnr_db: f64,
    /// Median latency on this machine.
    pub latency_ms: f64,
    /// Serialized size.
    pub size_bytes: usize,
    /// Whether the loss is within the budget.
    pub within_budget: bool,
    /// Why the candidate could not be built or run, if so.
    pub error: Option<String>,
}

/// The search's result.
#[derive(Debug)]
pub struct SearchOutcome {
    /// Every trial, in the order tried.
    pub trials: Vec<Trial>,
    /// Index of the chosen trial.
    pub chosen: Option<usize>,
    /// The chosen model.
    pub model: Option<ModelProto>,
    /// Its configuration.
    pub candidate: Option<Candidate>,
    /// Median latency of the float model.
    pub reference_latency_ms: f64,
    /// Accuracy of the float model on the labels, if given.
    pub reference_accuracy: Option<f64>,
}

/// Median latency of `runs` runs after two warm-up runs.
pub fn median_latency_ms(session: &mut dyn Session, input: &Tensor, runs: usize) -> Result<f64, QuantError> {
    let x = std::slice::from_ref(input);
    for _ in 0..2 {
        session.run(x).map_err(|e| QuantError::runtime("timing", e))?;
    }
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            session.run(x).map(|_| s.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<Result<_, _>>()
        .map_err(|e| QuantError::runtime("timing", e))?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

struct Evaluator<'a> {
    backend: &'a dyn Backend,
    held: &'a Dataset,
    labels: Option<&'a [usize]>,
    names: Vec<String>,
    reference: Vec<Vec<Tensor>>,
    timing_input: Tensor,
    opts: &'a SearchOptions,
}

impl Evaluator<'_> {
    fn trial(
        &self,
        label: String,
        extra: Vec<String>,
        model: &ModelProto,
    ) -> Result<(Trial, Agreement), QuantError> {
        let bytes = onnx::encode_model(model)?;
        let mut s = metrics::load(
            self.backend,
            ModelSource::Bytes(&bytes),
            self.opts.threads,
            "a candidate",
        )?;
        let outs = metrics::run_all(s.as_mut(), self.held, self.opts.eval_batch, &|_| {})?;
        let a = metrics::compare(&self.names, &self.reference, &outs, self.labels)?;
        let latency_ms = median_latency_ms(s.as_mut(), &self.timing_input, self.opts.bench_runs)?;
        let drop_pct = a.drop_pct();
        Ok((
            Trial {
                label,
                extra_excluded: extra,
                drop_pct,
                top1_agreement: a.top1_agreement,
                sqnr_db: a.sqnr_db(),
                latency_ms,
                size_bytes: bytes.len(),
                within_budget: drop_pct <= self.opts.budget_pct,
                error: None,
            },
            a,
        ))
    }
}

/// Calibrates the tensors of `needed` that `stats` lacks, and merges them in.
fn ensure_stats(
    backend: &dyn Backend,
    model: &ModelProto,
    needed: &[String],
    data: &Dataset,
    opts: &CalibrationOptions,
    stats: &mut CalibrationStats,
) -> Result<(), QuantError> {
    let missing: Vec<String> = needed
        .iter()
        .filter(|t| !stats.tensors.contains_key(*t))
        .cloned()
        .collect();
    if !missing.is_empty() {
        let more = calibrate(backend, model, &missing, data, opts, &|_| {})?;
        stats.tensors.extend(more.tensors);
    }
    Ok(())
}

fn build(
    candidate: &Candidate,
    model: &ModelProto,
    stats: &CalibrationStats,
) -> Result<ModelProto, QuantError> {
    match candidate {
        Candidate::Static { config, method } => {
            let plan = qdq::plan(model, config)?;
            let ranges = stats.ranges(*method, crate::LEVELS_8BIT);
            Ok(qdq::apply(model, &plan, &ranges)?.0)
        }
        Candidate::Dynamic(c) => Ok(quantize_dynamic(model, c)?.0),
    }
}

/// Per-node sensitivity of a static candidate: the rise in noise-to-signal ratio from a node's
/// inputs to its output, most sensitive first.
pub fn sensitivity(
    backend: &dyn Backend,
    float_model: &ModelProto,
    quantized: &ModelProto,
    config: &StaticConfig,
    data: &Dataset,
) -> Result<Vec<(String, f64)>, QuantError> {
    let plan = qdq::plan(float_model, config)?;
    let g = float_model
        .graph
        .as_ref()
        .ok_or_else(|| QuantError::Unsupported("no graph".into()))?;
    let nodes: Vec<(String, String, Vec<String>)> = plan
        .compute_nodes()
        .into_iter()
        .map(|i| {
            let n = &g.node[i];
            (qdq::node_label(n), n.output[0].clone(), n.input.clone())
        })
        .collect();
    let names: Vec<String> = nodes.iter().map(|(_, o, _)| o.clone()).collect();
    let opts = SessionOptions {
        intra_threads: None,
        optimization: OptLevel::Basic,
        optimized_model_path: None,
        spinning: None,
    };
    let run = |m: &ModelProto| -> Result<HashMap<String, Vec<f32>>, QuantError> {
        let bytes = onnx::encode_model(&with_extra_outputs(m, &names))?;
        let mut s = backend
            .load(ModelSource::Bytes(&bytes), &opts)
            .map_err(|e| QuantError::runtime("loading a model for sensitivity analysis", e))?;
        let out_names: Vec<String> = s.outputs().iter().map(|o| o.name.clone()).collect();
        let mut acc: HashMap<String, Vec<f32>> = HashMap::new();
        let spec = s.inputs()[0].clone();
        let size = Dataset::batch_size_for(&spec, 1);
        for r in data
            .batches(size, matches!(spec.shape.first(), Some(Some(_))))
            .into_iter()
            .take(8)
        {
            let outs = s
                .run(&[data.batch(r)?])
                .map_err(|e| QuantError::runtime("sensitivity analysis", e))?;
            for (name, t) in out_names.iter().zip(outs) {
                if let Some(a) = t.as_f32() {
                    acc.entry(name.clone()).or_default().extend(a.iter().copied());
                }
            }
        }
        Ok(acc)
    };
    let f = run(float_model)?;
    let q = run(quantized)?;
    let noise = |name: &str| -> Option<f64> {
        let (a, b) = (f.get(name)?, q.get(name)?);
        if a.len() != b.len() {
            return None;
        }
        let s: f64 = a.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let e: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum();
        Some(if s > 0.0 { e / s } else { 0.0 })
    };
    let mut out: Vec<(String, f64)> = nodes
        .iter()
        .filter_map(|(label, output, inputs)| {
            let own = noise(output)?;
            let inherited = inputs.iter().filter_map(|i| noise(i)).fold(0.0, f64::max);
            Some((label.clone(), own - inherited))
        })
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(out)
}

/// Runs the accuracy-aware search on a prepared float model. `log` sees every trial as it ends.
#[allow(clippy::too_many_arguments)]
pub fn search(
    backend: &dyn Backend,
    model: &ModelProto,
    candidates: &[Candidate],
    calib: &Dataset,
    held: &Dataset,
    labels: Option<&[usize]>,
    opts: &SearchOptions,
    log: &dyn Fn(&Trial),
) -> Result<SearchOutcome, QuantError> {
    let fp32 = onnx::encode_model(model)?;
    let mut s = metrics::load(
        backend,
        ModelSource::Bytes(&fp32),
        opts.threads,
        "the float model",
    )?;
    let names: Vec<String> = s.outputs().iter().map(|o| o.name.clone()).collect();
    let reference = metrics::run_all(s.as_mut(), held, opts.eval_batch, &|_| {})?;
    let timing_input = held.batch(0..1)?;
    let reference_latency_ms = median_latency_ms(s.as_mut(), &timing_input, opts.bench_runs)?;
    let reference_accuracy = metrics::compare(&names, &reference, &reference, labels)?.reference_accuracy;
    drop(s);
    let ev = Evaluator {
        backend,
        held,
        labels,
        names,
        reference,
        timing_input,
        opts,
    };

    // One calibration pass with histograms covers every static candidate.
    let mut needed: Vec<String> = Vec::new();
    for c in candidates {
        if let Candidate::Static { config, .. } = c {
            needed.extend(qdq::plan(model, config)?.calibrate);
        }
    }
    needed.sort();
    needed.dedup();
    let calib_opts = CalibrationOptions {
        histograms: true,
        ..opts.calibration.clone()
    };
    let mut stats = CalibrationStats::default();
    if !needed.is_empty() {
        stats = calibrate(backend, model, &needed, calib, &calib_opts, &|_| {})?;
    }

    let mut trials = Vec::new();
    let mut built: Vec<Option<(ModelProto, Candidate)>> = Vec::new();
    for c in candidates {
        let result = build(c, model, &stats).and_then(|m| ev.trial(c.label(), vec![], &m).map(|t| (t, m)));
        match result {
            Ok(((t, _), m)) => {
                log(&t);
                trials.push(t);
                built.push(Some((m, c.clone())));
            }
            Err(e) => {
                let t = failed_trial(c.label(), &e);
                log(&t);
                trials.push(t);
                built.push(None);
            }
        }
    }
    let fastest_within = |trials: &[Trial]| {
        trials
            .iter()
            .enumerate()
            .filter(|(_, t)| t.within_budget && t.error.is_none())
            .min_by(|a, b| a.1.latency_ms.total_cmp(&b.1.latency_ms))
            .map(|(i, _)| i)
    };
    let mut chosen = fastest_within(&trials);

    // Repair: keep the most sensitive nodes of the most accurate static candidate in float.
    if chosen.is_none() {
        let best = trials
            .iter()
            .enumerate()
            .filter(|(i, t)| t.error.is_none() && matches!(built[*i], Some((_, Candidate::Static { .. }))))
            .min_by(|a, b| a.1.drop_pct.total_cmp(&b.1.drop_pct))
            .map(|(i, _)| i);
        if let Some(b) = best
            && let Some((mut current, Candidate::Static { mut config, method })) = built[b].clone()
        {
            let user: HashSet<String> = config.exclude.iter().cloned().collect();
            for _ in 0..opts.max_exclusions {
                let ranked = sensitivity(backend, model, &current, &config, held)?;
                let Some((worst, _)) = ranked.into_iter().find(|(n, _)| !config.exclude.contains(n)) else {
                    break;
                };
                config.exclude.push(worst);
                let candidate = Candidate::Static {
                    config: config.clone(),
                    method,
                };
                let plan = qdq::plan(model, &config)?;
                ensure_stats(backend, model, &plan.calibrate, calib, &calib_opts, &mut stats)?;
                let extra: Vec<String> = config
                    .exclude
                    .iter()
                    .filter(|e| !user.contains(*e))
                    .cloned()
                    .collect();
                let m = build(&candidate, model, &stats)?;
                let (t, _) = ev.trial(candidate.label(), extra, &m)?;
                log(&t);
                let ok = t.within_budget;
                trials.push(t);
                built.push(Some((m.clone(), candidate)));
                current = m;
                if ok {
                    break;
                }
            }
        }
        chosen = fastest_within(&trials);
    }
    let (model, candidate) = match chosen.and_then(|i| built[i].clone()) {
        Some((m, c)) => (Some(m), Some(c)),
        None => (None, None),
    };
    Ok(SearchOutcome {
        trials,
        chosen,
        model,
        candidate,
        reference_latency_ms,
        reference_accuracy,
    })
}

fn failed_trial(label: String, e: &QuantError) -> Trial {
    Trial {
        label,
        extra_excluded: vec![],
        drop_pct: f64::NAN,
        top1_agreement: None,
        sqnr_db: f64::NAN,
        latency_ms: f64::NAN,
        size_bytes: 0,
        within_budget: false,
        error: Some(e.to_string()),
    }
}
