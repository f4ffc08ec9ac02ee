//! `edgemlops model eval`: how closely a candidate model (quantized, say) follows a reference on
//! the same inputs: per-output SQNR, cosine and largest difference, top-1/top-5 agreement, and
//! accuracy against labels.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use infer::machine::MachineInfo;
use infer::{ModelSource, OrtBackend};
use quant::metrics::{self, Agreement};
use serde::Serialize;

use crate::model::data::{PreprocessArgs, dataset, progress, read_labels};

/// `edgemlops model eval`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    edgemlops model eval r50.onnx r50.u8s8.onnx --npy eval.npy\n  \
    edgemlops model eval r50.onnx r50.u8s8.onnx --data images/ --labels labels.txt --json eval.json\n\n\
    SQNR = 10 log10(sum ref^2 / sum (ref - cand)^2) per output; cosine is the mean over samples; top-1 agreement \
    is the share of samples where both models pick the same class, top-5 agreement the share where the \
    reference's class is in the candidate's top 5 (for outputs shaped [N, classes]). Labels: one class index per \
    line, in sample order (sorted file paths for --data).")]
pub struct EvalArgs {
    /// The reference model (usually the float one).
    pub reference: PathBuf,
    /// The model to compare with it.
    pub candidate: PathBuf,
    /// Images (JPEG/PNG, subdirectories included), pre-processed with the flags below.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "npy",
        required_unless_present = "npy"
    )]
    pub data: Option<PathBuf>,
    /// Input tensors as .npy, [samples, ...input dims].
    #[arg(long, value_name = "FILE")]
    pub npy: Option<PathBuf>,
    /// Labels, one class index per line, for accuracy.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Samples per run.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Intra-op threads (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Write the result as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Image pre-processing.
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

#[derive(Serialize)]
struct Report<'a> {
    reference: &'a PathBuf,
    candidate: &'a PathBuf,
    data: String,
    #[serde(flatten)]
    agreement: &'a Agreement,
}

/// Runs the command.
pub fn run(a: &EvalArgs) -> Result<()> {
    let reference = onnx::read_model(&a.reference)?;
    onnx::read_model(&a.candidate)?;
    let data = dataset(a.data.as_deref(), a.npy.as_deref(), &a.preprocess, &reference)?;
    let labels = a
        .labels
        .as_ref()
        .map(|l| read_labels(l, data.len()))
        .transpose()?;
    let threads = a.threads.map_or(MachineInfo::detect().cores, |t| t as usize);
    let backend = OrtBackend::new()?;
    let bar = progress(2 * data.len() as u64, "evaluating");
    let mut r = metrics::load(
        &backend,
        ModelSource::File(&a.reference),
        threads,
        "the reference model",
    )?;
    let mut c = metrics::load(
        &backend,
        ModelSource::File(&a.candidate),
        threads,
        "the candidate model",
    )?;
    let names: Vec<String> = r.outputs().iter().map(|o| o.name.clone()).collect();
    let ref_out = metrics::run_all(r.as_mut(), &data, a.batch as usize, &|n| {
        bar.set_position(n as u64);
    })?;
    let n = data.len() as u64;
    let cand_out = metrics::run_all(c.as_mut(), &data, a.batch as usize, &|k| {
        bar.set_position(n + k as u64);
    })?;
    bar.finish_and_clear();
    let agreement = metrics::compare(&names, &ref_out, &cand_out, labels.as_deref())?;
    print!("{}", render(&agreement, &data.origin().display().to_string()));
    if let Some(p) = &a.json {
        let report = Report {
            reference: &a.reference,
            candidate: &a.candidate,
            data: data.origin().display().to_string(),
            agreement: &agreement,
        };
        onnx::io::write_atomic(p, &serde_json::to_vec_pretty(&report)?)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The text report.
pub fn render(a: &Agreement, data: &str) -> String {
    let w = a.outputs.iter().map(|o| o.name.len()).max().unwrap_or(6).max(6);
    let mut out = format!("{} samples from {data}\n", a.samples);
    out.push_str(&format!(
        "{:w$}  {:>8}  {:>9}  {:>12}\n",
        "output", "SQNR dB", "cosine", "max |diff|"
    ));
    for o in &a.outputs {
        out.push_str(&format!(
            "{:w$}  {:>8}  {:>9.6}  {:>12.6}\n",
            o.name,
            if o.sqnr_db.is_finite() {
                format!("{:.2}", o.sqnr_db)
            } else {
                "inf".to_owned()
            },
            o.cosine,
            o.max_abs_diff
        ));
    }
    if let (Some(t1), Some(t5)) = (a.top1_agreement, a.top5_agreement) {
        out.push_str(&format!(
            "top-1 agreement {:.2} %, top-5 agreement {:.2} %\n",
            t1 * 100.0,
            t5 * 100.0
        ));
    }
    if let (Some(r), Some(c)) = (a.reference_accuracy, a.candidate_accuracy) {
        out.push_str(&format!(
            "accuracy: reference {:.2} %, candidate {:.2} % (drop {:.2} points)\n",
            r * 100.0,
            c * 100.0,
            (r - c) * 100.0
        ));
    }
    out
}
