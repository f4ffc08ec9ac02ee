//! `edgemlops model build`: a standard architecture with seeded weights, written as ONNX.

use anyhow::{Context, Result};
use onnx::zoo;

use crate::args::BuildArgs;
use crate::fmt;

/// Builds and writes the model, then reports what was written.
pub fn run(a: &BuildArgs) -> Result<()> {
    let model = zoo::build(a.arch, a.seed);
    onnx::write_model(&model, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    let summary = onnx::inspect::summarize(&model);
    let size = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({}, seed {}): {} parameters, {} nodes, {}",
        a.out.display(),
        a.arch,
        a.seed,
        fmt::thousands(summary.parameters.count),
        summary.node_count,
        fmt::bytes(size)
    );
    Ok(())
}
