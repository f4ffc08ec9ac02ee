//! `edgemlops model inspect`: what a model is, as text or JSON.

use std::path::Path;

use anyhow::{Context, Result};
use onnx::inspect::{ModelSummary, ValueSummary, summarize};
use serde::Serialize;

use crate::args::InspectArgs;
use crate::fmt;

/// The JSON document: file facts plus the summary.
#[derive(Serialize)]
struct Report<'a> {
    path: &'a Path,
    size_bytes: u64,
    #[serde(flatten)]
    summary: &'a ModelSummary,
}

/// Reads the model and prints its summary.
pub fn run(a: &InspectArgs) -> Result<()> {
    let model = onnx::read_model(&a.file)?;
    let size = std::fs::metadata(&a.file)
        .with_context(|| a.file.display().to_string())?
        .len();
    let summary = summarize(&model);
    if a.json {
        let report = Report {
            path: &a.file,
            size_bytes: size,
            summary: &summary,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&a.file, size, &summary));
    }
    Ok(())
}

fn values(vs: &[ValueSummary]) -> String {
    let width = vs.iter().map(|v| v.name.len()).max().unwrap_or(0);
    vs.iter()
        .map(|v| {
            let shape = match &v.shape {
                Some(dims) => format!(
                    "[{}]",
                    dims.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => "(unranked)".to_owned(),
            };
            format!("{:width$}  {:8} {shape}", v.name, v.dtype)
        })
        .collect::<Vec<_>>()
        .join("\n             ")
}

/// The text report.
pub fn render_text(path: &Path, size: u64, s: &ModelSummary) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:12} {v}\n"));
    line("model", format!("{} ({})", path.display(), fmt::bytes(size)));
    let producer = match (s.producer.name.as_str(), s.producer.version.as_str()) {
        ("", _) => "unknown".to_owned(),
        (n, "") => n.to_owned(),
        (n, v) => format!("{n} {v}"),
    };
    line("producer", format!("{producer}, IR version {}", s.ir_version));
    if !s.graph_name.is_empty() {
        line("graph", s.graph_name.clone());
    }
    line(
        "opsets",
        s.opsets
            .iter()
            .map(|o| format!("{} {}", o.domain, o.version))
            .collect::<Vec<_>>()
            .join(", "),
    );
    line("inputs", values(&s.inputs));
    line("outputs", values(&s.outputs));
    line("nodes", s.node_count.to_string());
    let mut ops: Vec<(&String, &usize)> = s.op_histogram.iter().collect();
    ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let width = ops.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let ops: Vec<String> = ops.iter().map(|(k, v)| format!("{k:width$}  {v:>5}")).collect();
    line("operators", ops.join("\n             "));
    let p = &s.parameters;
    line(
        "parameters",
        format!(
            "{} ({}) in {} initializers and {} Constant nodes",
            fmt::thousands(p.count),
            fmt::bytes(p.bytes),
            p.initializers,
            p.constants
        ),
    );
    for (dtype, d) in &p.by_dtype {
        line(
            "",
            format!(
                "{dtype:10} {:>14} in {:>4} tensors ({})",
                fmt::thousands(d.count),
                d.tensors,
                fmt::bytes(d.bytes)
            ),
        );
    }
    let q = &s.quantization;
    let quant = match q.format {
        "none" => "no".to_owned(),
        f => {
            let mut v = format!("{f} ({} quantization nodes", q.quantized_nodes);
            if let Some(a) = &q.activation_dtype {
                v.push_str(&format!(", activations {a}"));
            }
            if !q.weight_dtypes.is_empty() {
                v.push_str(&format!(", weights {}", q.weight_dtypes.join("/")));
            }
            v + ")"
        }
    };
    line("quantized", quant);
    if !s.metadata.is_empty() {
        line(
            "metadata",
            s.metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\n             "),
        );
    }
    out
}
