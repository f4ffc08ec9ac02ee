//! `edgemlops model optimize`: the graph optimization that runs before quantization, on its own
//! (Constant nodes to initializers, constant folding, Identity/Dropout removal, BatchNorm and bias
//! folding into convolutions, division by constants as multiplication), optionally stopped after N
//! rewrites to find a rewrite that breaks a model.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use onnx::optim::Optimizer;

use crate::fmt;

/// `edgemlops model optimize`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    edgemlops model optimize det.onnx --out det.opt.onnx\n  \
    edgemlops model optimize det.onnx --out det.opt.onnx --max-steps 40 --verbose   # bisect a bad rewrite\n  \
    edgemlops model optimize cls.onnx --out cls.opt.onnx --opset 13")]
pub struct OptimizeArgs {
    /// The ONNX model.
    pub input: PathBuf,
    /// Where to write the optimized model.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Stop after this many rewrites.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Also raise the default-domain opset to 13 (what per-channel quantization needs).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(["13"]))]
    pub opset: Option<String>,
    /// List every rewrite.
    #[arg(long, short)]
    pub verbose: bool,
}

/// Runs the command.
pub fn run(a: &OptimizeArgs) -> Result<()> {
    let mut model = onnx::read_model(&a.input)?;
    let before = std::fs::metadata(&a.input)?.len();
    let report = Optimizer::standard()
        .with_max_steps(a.max_steps)
        .run(&mut model)
        .with_context(|| a.input.display().to_string())?;
    let mut notes = Vec::new();
    if a.opset.is_some() {
        notes = onnx::opset::upgrade_to_13(&mut model).with_context(|| a.input.display().to_string())?;
    }
    onnx::write_model(&model, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    let after = std::fs::metadata(&a.out)?.len();
    if a.verbose {
        for (i, s) in report.steps.iter().enumerate() {
            println!("{:5}  {:26} {} ({})", i + 1, s.rule, s.node, s.op_type);
        }
    }
    let counts: Vec<String> = report.counts().iter().map(|(r, n)| format!("{r} {n}")).collect();
    println!(
        "wrote {}: {} rewrites{}, {} -> {} nodes, {} -> {}{}",
        a.out.display(),
        report.steps.len(),
        if counts.is_empty() {
            String::new()
        } else {
            format!(" ({})", counts.join(", "))
        },
        report.nodes_before,
        report.nodes_after,
        fmt::bytes(before),
        fmt::bytes(after),
        if report.stopped_at_limit {
            "; stopped at --max-steps with rewrites left"
        } else {
            ""
        }
    );
    for n in notes {
        println!("  {n}");
    }
    Ok(())
}
