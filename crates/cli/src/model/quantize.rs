//! `edgemlops model quantize`: static (QDQ) or dynamic int8 quantization, with defaults per
//! hardware class and an optional accuracy-aware search.
//!
//! Nothing is written unless ONNX Runtime loads the quantized model: a failure at any step leaves
//! the output path untouched.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use infer::machine::MachineInfo;
use infer::{Backend, ModelSource, OrtBackend};
use onnx::ModelProto;
use quant::calibrate::{CalibrationOptions, calibrate};
use quant::data::Dataset;
use quant::dynamic::{DynamicConfig, quantize_dynamic};
use quant::histogram::CalibrationMethod;
use quant::params::QType;
use quant::qdq::{self, StaticConfig};
use quant::search::{self, Candidate, SearchOptions, Trial};
use quant::target::{HardwareClass, Target};
use serde_json::json;

use crate::fmt;
use crate::model::data::{PreprocessArgs, dataset, progress, read_labels};

/// Quantization mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Calibrated activations and weights, QDQ format (fastest; needs calibration data).
    Static,
    /// Int8 weights, activations quantized at run time (no calibration data).
    Dynamic,
}

/// `edgemlops model quantize`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    edgemlops model quantize r50.onnx --out r50.u8s8.onnx --mode static --activations u8 --calibration-npy calib.npy\n  \
    edgemlops model quantize r50.onnx --out r50.int8.onnx --calibration images/ --method entropy\n  \
    edgemlops model quantize cls.onnx --out cls.int8.onnx --calibration-npy calib.npy --max-accuracy-drop 1\n  \
    edgemlops model quantize r50.onnx --out r50.dyn.onnx --mode dynamic\n\n\
    Defaults per --target (auto = this machine): x86_64 and x86_64-vnni use U8S8 (u8 activations, s8 weights), \
    aarch64 uses S8S8; all use per-channel weights. Weights are symmetric int8; biases int32 with scale = input \
    scale x weight scale. The model is optimized first (Constant nodes to initializers, constant folding, \
    BatchNorm folding; --no-optimize skips it). Calibration data: --calibration DIR of JPEG/PNG images \
    (pre-processed with the flags below, default ImageNet normalization at the model's input size) or \
    --calibration-npy FILE holding [samples, ...input dims].\n\n\
    With --max-accuracy-drop X the command tries candidate configurations, evaluates each on held-out data \
    (--eval-data/--eval-npy, or the last --holdout share of the calibration data), prints what it tried, and \
    writes the fastest within X percentage points (accuracy drop with --labels, else top-1 disagreement with \
    the float model).")]
pub struct QuantizeArgs {
    /// The float ONNX model.
    pub input: PathBuf,
    /// Where to write the quantized model.
    #[arg(long, short)]
    pub out: PathBuf,
    /// static or dynamic.
    #[arg(long, value_enum, default_value = "static")]
    pub mode: Mode,
    /// Hardware class the defaults are chosen for: auto, x86_64-vnni, x86_64, aarch64.
    #[arg(long, default_value = "auto")]
    pub target: Target,
    /// Activation type of static quantization: s8 (S8S8) or u8 (U8S8) (default: per target).
    #[arg(long)]
    pub activations: Option<QType>,
    /// One weight scale per output channel (default: per target).
    #[arg(long, conflicts_with = "per_tensor")]
    pub per_channel: bool,
    /// One weight scale per tensor.
    #[arg(long)]
    pub per_tensor: bool,
    /// 7-bit weights (guards against vpmaddubsw saturation on x86 without VNNI).
    #[arg(long)]
    pub reduce_range: bool,
    /// Symmetric activation ranges (disables ReLU folding).
    #[arg(long)]
    pub symmetric_activations: bool,
    /// Asymmetric weight ranges (with zero points).
    #[arg(long)]
    pub asymmetric_weights: bool,
    /// Calibration images (JPEG/PNG, subdirectories included).
    #[arg(long, value_name = "DIR", conflicts_with = "calibration_npy")]
    pub calibration: Option<PathBuf>,
    /// Calibration tensors as .npy, [samples, ...input dims].
    #[arg(long, value_name = "FILE")]
    pub calibration_npy: Option<PathBuf>,
    /// Calibration method: minmax, percentile, entropy.
    #[arg(long, default_value = "minmax")]
    pub method: String,
    /// Percentage of the distribution kept by --method percentile.
    #[arg(long, default_value_t = quant::histogram::DEFAULT_PERCENTILE)]
    pub percentile: f64,
    /// Use at most this many calibration samples.
    #[arg(long)]
    pub max_samples: Option<usize>,
    /// Keep a node (by name or output name) or every node of an operator type in float; repeatable.
    #[arg(long = "exclude", value_name = "NODE_OR_OPTYPE")]
    pub exclude: Vec<String>,
    /// Skip graph optimization before quantizing.
    #[arg(long)]
    pub no_optimize: bool,
    /// Accuracy-aware mode: the largest acceptable loss in percentage points.
    #[arg(long, value_name = "X")]
    pub max_accuracy_drop: Option<f64>,
    /// Held-out images for --max-accuracy-drop.
    #[arg(long, value_name = "DIR", conflicts_with = "eval_npy")]
    pub eval_data: Option<PathBuf>,
    /// Held-out tensors (.npy) for --max-accuracy-drop.
    #[arg(long, value_name = "FILE")]
    pub eval_npy: Option<PathBuf>,
    /// Labels of the held-out samples (one class index per line) for --max-accuracy-drop.
    #[arg(long, value_name = "FILE", requires = "max_accuracy_drop")]
    pub labels: Option<PathBuf>,
    /// Share of the calibration data held out when no --eval-data/--eval-npy is given.
    #[arg(long, default_value_t = 0.25)]
    pub holdout: f64,
    /// Threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Write a JSON report (settings, sizes, timings, what was quantized, the search table).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Image pre-processing.
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

fn parse_method(a: &QuantizeArgs) -> Result<CalibrationMethod> {
    let m: CalibrationMethod = a.method.parse().map_err(anyhow::Error::msg)?;
    Ok(match m {
        CalibrationMethod::Percentile { .. } => {
            if !(50.0..=100.0).contains(&a.percentile) {
                bail!(
                    "--percentile {}: expected a value between 50 and 100",
                    a.percentile
                );
            }
            CalibrationMethod::Percentile {
                percentile: a.percentile,
            }
        }
        other => other,
    })
}

/// Checks the quantized model loads in ONNX Runtime (with its int8 fusions) before anything is written.
fn verify(backend: &OrtBackend, bytes: &[u8]) -> Result<()> {
    backend
        .load(ModelSource::Bytes(bytes), &quant::metrics::runtime_options(1))
        .context("ONNX Runtime refused the quantized model; nothing was written")?;
    Ok(())
}

/// Runs the command.
pub fn run(a: &QuantizeArgs) -> Result<()> {
    let started = Instant::now();
    let mut model = onnx::read_model(&a.input)?;
    let input_size = std::fs::metadata(&a.input)?.len();
    quant::prepare::check_float_model(&model).with_context(|| a.input.display().to_string())?;
    qdq::check_excludes(&model, &a.exclude)?;
    let method = parse_method(a)?;
    let machine = MachineInfo::detect();
    let class = a.target.resolve(&machine);
    let defaults = class.defaults();
    let threads = a.threads.map_or(machine.cores, |t| t as usize);
    let per_channel = if a.per_tensor {
        false
    } else {
        a.per_channel || defaults.per_channel
    };
    let config = StaticConfig {
        activations: a.activations.unwrap_or(defaults.activations),
        activations_symmetric: a.symmetric_activations,
        weights_symmetric: !a.asymmetric_weights,
        per_channel,
        reduce_range: a.reduce_range || defaults.reduce_range,
        exclude: a.exclude.clone(),
    };
    let calibration = match (&a.calibration, &a.calibration_npy) {
        (None, None) => None,
        (dir, npy) => {
            let d = dataset(dir.as_deref(), npy.as_deref(), &a.preprocess, &model)?;
            Some(match a.max_samples {
                Some(n) => d.subset(0..n.min(d.len())),
                None => d,
            })
        }
    };
    let static_mode = a.mode == Mode::Static || a.max_accuracy_drop.is_some();
    if static_mode && calibration.is_none() {
        bail!("static quantization needs calibration data: --calibration DIR or --calibration-npy FILE");
    }
    println!(
        "target {class}{}: {}",
        if a.target == Target::Auto {
            " (this machine)"
        } else {
            ""
        },
        defaults.reason
    );
    let backend = OrtBackend::new()?;

    let t0 = Instant::now();
    let prepared = quant::prepare::prepare(&mut model, !a.no_optimize, static_mode && per_channel, None)
        .with_context(|| a.input.display().to_string())?;
    let prepare_s = t0.elapsed().as_secs_f64();

    let mut report = json!({
        "input": a.input, "output": a.out, "target": class.name(),
        "optimize": prepared.optimize.as_ref().map(|r| json!({
            "rewrites": r.steps.len(), "nodes_before": r.nodes_before, "nodes_after": r.nodes_after,
            "by_rule": r.counts().into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<std::collections::BTreeMap<_, _>>(),
        })),
        "notes": prepared.notes,
    });
    let (mut quantized, summary) = if let Some(budget) = a.max_accuracy_drop {
        let data = calibration.as_ref().context("calibration data checked above")?;
        accuracy_aware(
            a,
            &backend,
            &model,
            data,
            &config,
            class,
            budget,
            threads,
            &mut report,
        )?
    } else if a.mode == Mode::Static {
        let data = calibration.as_ref().context("calibration data checked above")?;
        let plan = qdq::plan(&model, &config)?;
        let bar = progress(data.len() as u64, "calibrating");
        let stats = calibrate(
            &backend,
            &model,
            &plan.calibrate,
            data,
            &CalibrationOptions::for_cores(threads, method.needs_histogram()),
            &|n| bar.set_position(n as u64),
        )?;
        bar.finish_and_clear();
        let t = Instant::now();
        let (m, r) = qdq::apply(&model, &plan, &stats.ranges(method, quant::LEVELS_8BIT))?;
        report["static"] = json!({
            "config": config, "method": method, "calibration_samples": stats.samples,
            "calibration_seconds": stats.seconds, "quantize_seconds": t.elapsed().as_secs_f64(), "result": r,
        });
        let ops = ops_line(&r.quantized_ops);
        (
            m,
            format!(
                "static {}S8 {}, {method} calibration on {} samples of {} in {:.1} s\n  quantized   {ops}; {} ReLU/Clip folded; {} node(s) left in float",
                config.activations.name().to_uppercase(),
                if config.per_channel {
                    "per-channel"
                } else {
                    "per-tensor"
                },
                stats.samples,
                data.origin().display(),
                stats.seconds,
                r.folded_activations,
                r.skipped.len()
            ),
        )
    } else {
        if calibration.is_some() {
            eprintln!("note: dynamic quantization needs no calibration data; it is not used");
        }
        let cfg = DynamicConfig {
            per_channel,
            reduce_range: config.reduce_range,
            exclude: a.exclude.clone(),
        };
        let (m, r) = quantize_dynamic(&model, &cfg)?;
        report["dynamic"] = json!({"config": cfg, "result": r});
        (
            m,
            format!(
                "dynamic (u8 activations at run time, s8 weights {})\n  quantized   {}; {} node(s) left in float",
                if per_channel { "per-channel" } else { "per-tensor" },
                ops_line(&r.quantized_ops),
                r.skipped.len()
            ),
        )
    };
    quant::record(
        &mut quantized,
        &json!({
            "tool": format!("edgemlops {}", env!("CARGO_PKG_VERSION")),
            "target": class.name(),
            "source": a.input.file_name().map(|n| n.to_string_lossy().into_owned()),
            "settings": report.get("static").or(report.get("dynamic")).or(report.get("search")).map(|v| v.get("config").cloned()),
        }),
    );
    let t = Instant::now();
    let bytes = onnx::encode_model(&quantized)?;
    verify(&backend, &bytes)?;
    onnx::io::write_atomic(&a.out, &bytes).with_context(|| format!("writing {}", a.out.display()))?;
    let write_s = t.elapsed().as_secs_f64();
    let total = started.elapsed().as_secs_f64();
    let ratio = bytes.len() as f64 / input_size as f64;
    println!("wrote {}: {summary}", a.out.display());
    println!(
        "  size        {} -> {} ({:.1} % of the input)",
        fmt::bytes(input_size),
        fmt::bytes(bytes.len() as u64),
        ratio * 100.0
    );
    println!("  time        {total:.1} s (prepare {prepare_s:.1} s, write and check {write_s:.1} s)");
    report["size_bytes"] = json!({"input": input_size, "output": bytes.len(), "ratio": ratio});
    report["seconds"] = json!({"total": total, "prepare": prepare_s, "write": write_s});
    if let Some(p) = &a.json {
        onnx::io::write_atomic(p, &serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

fn ops_line(ops: &std::collections::BTreeMap<String, usize>) -> String {
    let mut v: Vec<(&String, &usize)> = ops.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(clippy::too_many_arguments)]
fn accuracy_aware(
    a: &QuantizeArgs,
    backend: &OrtBackend,
    model: &ModelProto,
    data: &Dataset,
    config: &StaticConfig,
    class: HardwareClass,
    budget: f64,
    threads: usize,
    report: &mut serde_json::Value,
) -> Result<(ModelProto, String)> {
    if !(0.0..=100.0).contains(&budget) {
        bail!("--max-accuracy-drop {budget}: expected percentage points between 0 and 100");
    }
    let (calib, held) = match (&a.eval_data, &a.eval_npy) {
        (None, None) => {
            if a.labels.is_some() {
                bail!("--labels go with --eval-data or --eval-npy (the labels of the held-out samples)");
            }
            if data.len() < 2 {
                bail!(
                    "--max-accuracy-drop needs held-out data: give --eval-data/--eval-npy or more calibration samples"
                );
            }
            data.split(a.holdout.clamp(0.05, 0.95))
        }
        (dir, npy) => (
            data.clone(),
            dataset(dir.as_deref(), npy.as_deref(), &a.preprocess, model)?,
        ),
    };
    let labels = a
        .labels
        .as_ref()
        .map(|l| read_labels(l, held.len()))
        .transpose()?;
    let mut defaults = class.defaults();
    defaults.activations = config.activations;
    defaults.per_channel = config.per_channel;
    defaults.reduce_range = config.reduce_range;
    let candidates = search::candidates(&defaults, &a.exclude);
    eprintln!(
        "accuracy-aware search: {} candidates, budget {budget} points, {} calibration and {} held-out samples",
        candidates.len(),
        calib.len(),
        held.len()
    );
    let opts = SearchOptions {
        budget_pct: budget,
        max_exclusions: 10,
        bench_runs: 20,
        threads,
        calibration: CalibrationOptions::for_cores(threads, true),
        eval_batch: 8,
    };
    let outcome = search::search(
        backend,
        model,
        &candidates,
        &calib,
        &held,
        labels.as_deref(),
        &opts,
        &|t: &Trial| {
            eprintln!(
                "  tried {:44} drop {:6.2}  {:8.2} ms",
                trial_name(t),
                t.drop_pct,
                t.latency_ms
            );
        },
    )?;
    print!(
        "{}",
        render_trials(
            &outcome.trials,
            outcome.chosen,
            outcome.reference_latency_ms,
            budget
        )
    );
    report["search"] = json!({
        "budget_pct": budget, "reference_latency_ms": outcome.reference_latency_ms,
        "reference_accuracy": outcome.reference_accuracy, "trials": outcome.trials,
        "chosen": outcome.chosen,
        "config": match &outcome.candidate {
            Some(Candidate::Static { config, method }) => json!({"mode": "static", "config": config, "method": method}),
            Some(Candidate::Dynamic(c)) => json!({"mode": "dynamic", "config": c}),
            None => serde_json::Value::Null,
        },
    });
    let (Some(m), Some(i)) = (outcome.model, outcome.chosen) else {
        if let Some(p) = &a.json {
            onnx::io::write_atomic(p, &serde_json::to_vec_pretty(report)?)?;
        }
        bail!("no configuration stays within {budget} points; nothing was written (see the table)");
    };
    let t = &outcome.trials[i];
    Ok((
        m,
        format!(
            "{} chosen by the accuracy-aware search (drop {:.2} points, {:.2} ms vs {:.2} ms float)",
            trial_name(t),
            t.drop_pct,
            t.latency_ms,
            outcome.reference_latency_ms
        ),
    ))
}

fn trial_name(t: &Trial) -> String {
    if t.extra_excluded.is_empty() {
        t.label.clone()
    } else {
        format!("{} + {} node(s) in float", t.label, t.extra_excluded.len())
    }
}

/// The table of what the search tried.
pub fn render_trials(trials: &[Trial], chosen: Option<usize>, reference_ms: f64, budget: f64) -> String {
    let w = trials
        .iter()
        .map(|t| trial_name(t).len())
        .max()
        .unwrap_or(10)
        .max(10);
    let mut out = format!(
        "{:w$}  {:>9}  {:>7}  {:>8}  {:>10}  {:>8}  {:>9}\n",
        "candidate", "drop (pt)", "top-1", "SQNR dB", "latency ms", "speed-up", "size"
    );
    for (i, t) in trials.iter().enumerate() {
        let mark = match (Some(i) == chosen, t.within_budget) {
            (true, _) => "  <- chosen",
            (false, true) => "  within budget",
            (false, false) if t.error.is_some() => "  failed",
            _ => "",
        };
        out.push_str(&format!(
            "{:w$}  {:>9.2}  {:>7}  {:>8.1}  {:>10.2}  {:>7.2}x  {:>9}{mark}\n",
            trial_name(t),
            t.drop_pct,
            t.top1_agreement
                .map_or("-".to_owned(), |v| format!("{:.1}%", v * 100.0)),
            t.sqnr_db,
            t.latency_ms,
            reference_ms / t.latency_ms,
            fmt::bytes(t.size_bytes as u64),
        ));
        if let Some(e) = &t.error {
            out.push_str(&format!("{:w$}  error: {e}\n", ""));
        }
    }
    out.push_str(&format!(
        "float model: {reference_ms:.2} ms; budget {budget} points (accuracy drop with labels, else top-1 disagreement)\n"
    ));
    out
}
