//! Command-line arguments (clap derive); every command's help ends with examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use onnx::zoo::Architecture;

/// EdgeMLOps: take ONNX models to fleets of edge devices.
#[derive(Debug, Parser)]
#[command(
    name = "edgemlops",
    version,
    about = "EdgeMLOps toolchain: inspect, build and benchmark ONNX models for edge devices",
    after_help = "Examples:\n  edgemlops model build resnet50 --out r50.onnx\n  edgemlops model inspect r50.onnx\n  \
                  edgemlops model bench r50.onnx mnv2.onnx --runs 30 --threads 1 --plot bench.svg\n\n\
                  Exit codes: 0 success, 1 failure, 2 usage error, 3 ONNX Runtime library missing \
                  (run `cargo xtask setup` or set ORT_DYLIB_PATH)."
)]
pub struct Cli {
    /// Hub connection (`--hub`, `--token`) for the hub commands.
    #[command(flatten)]
    pub hub: crate::hub::HubArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing buys nothing"
)]
pub enum Command {
    /// Work with ONNX models: build, inspect, benchmark.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Hub: register devices, issue and revoke their tokens, show their inventory.
    #[command(subcommand)]
    Device(crate::hub::DeviceCommand),
    /// Hub: install (or remove) MODEL@VERSION on a device.
    Deploy(crate::hub::DeployArgs),
    /// Hub: reinstall the model version a device had before its current one.
    Rollback(crate::hub::RollbackArgs),
    /// Hub: commands sent to devices and their state history.
    #[command(subcommand, name = "command")]
    Cmd(crate::hub::CommandCommand),
    /// Hub: alarms raised by devices (active and cleared).
    #[command(subcommand)]
    Alarm(crate::hub::AlarmCommand),
    /// Hub: the asset register (visual inspection): assets, conditions, maintenance list.
    #[command(subcommand)]
    Asset(crate::hub::asset::AssetCommand),
    /// Create an ed25519 publisher key pair for signing model packages.
    Keygen(crate::keygen::KeygenArgs),
    /// Visual quality inspection: generate synthetic inspection photos, train and evaluate the reference model.
    #[command(subcommand)]
    Vqi(crate::vqi::VqiCommand),
}

/// `edgemlops model ...`
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Build a standard architecture (seeded random weights) as an ONNX file.
    Build(BuildArgs),
    /// Show a model's inputs, outputs, opsets, operators, parameters and quantization.
    Inspect(InspectArgs),
    /// Measure load time and latency distribution of one or more models with ONNX Runtime.
    Bench(BenchArgs),
    /// Quantize a model to int8: static (QDQ, calibrated) or dynamic.
    Quantize(crate::model::quantize::QuantizeArgs),
    /// Optimize a graph as quantization does first (constant folding, BatchNorm folding, ...).
    Optimize(crate::model::optimize::OptimizeArgs),
    /// Compare a model with a reference on the same inputs (SQNR, agreement, accuracy).
    Eval(crate::model::eval::EvalArgs),
    /// Hub: push a signed package to the model registry (with a progress bar).
    Push(crate::hub::PushArgs),
    /// Hub: list the models of the registry.
    List(crate::hub::JsonArgs),
    /// Hub: show a model's versions, variants and aliases.
    Show(crate::hub::ModelShowArgs),
    /// Hub: point an alias (production, canary) at a version.
    Alias(crate::hub::AliasArgs),
    /// Package a model with its manifest, labels and smoke-test vectors, signed with a publisher key.
    Package(Box<crate::model::package::PackageArgs>),
    /// Verify a package's signature and digests (and run its smoke tests with --smoke).
    Verify(crate::model::verify::VerifyArgs),
}

/// `edgemlops model build`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  edgemlops model build resnet50 --out r50.onnx\n  \
                        edgemlops model build mobilenetv2 --out mnv2.onnx --seed 7\n\n\
                        Architectures: resnet50, resnet101, mobilenetv2 (torchvision layouts, 224x224 NCHW input \
                        'input' with a symbolic batch dimension, 1000-class output 'logits', BatchNorm folded).")]
pub struct BuildArgs {
    /// Architecture: resnet50, resnet101 or mobilenetv2.
    pub arch: Architecture,
    /// Output file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Seed of the random weights (same seed, same file).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `edgemlops model inspect`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgemlops model inspect r50.onnx\n  edgemlops model inspect r50.onnx --json | jq .op_histogram"
)]
pub struct InspectArgs {
    /// The ONNX model.
    pub file: PathBuf,
    /// Print a JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `edgemlops model bench`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  edgemlops model bench r50.onnx\n  \
                        edgemlops model bench r50.onnx mnv2.onnx --runs 30 --threads 1 --json b.json --plot b.svg\n  \
                        edgemlops model bench det.onnx --shape x=1x3x640x640\n\n\
                        Inputs are deterministic (seeded normal floats, uniform bytes). Ratios compare each model's \
                        median and mean with the first model's.")]
pub struct BenchArgs {
    /// Models to compare (the first is the reference for ratios).
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Timed runs per model.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Untimed warm-up runs per model.
    #[arg(long, default_value_t = 10)]
    pub warmup: u32,
    /// Intra-op threads (default: one per available core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Option<u32>,
    /// Size of a dynamic first (batch) dimension.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Shape of an input, as NAME=D1xD2x... (needed for dynamic dimensions other than the batch).
    #[arg(long = "shape", value_name = "NAME=SHAPE")]
    pub shapes: Vec<String>,
    /// Label of a model in the table and plot (repeat once per model, in order; default: file name).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// ONNX Runtime graph optimization level: disable, basic, extended, all.
    #[arg(long, default_value = "all")]
    pub optimization: infer::OptLevel,
    /// Seed of the generated inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep every model loaded and let them take turns, one run each per round, so that load from
    /// other processes on a shared machine falls on all of them alike (idle sessions' threads do
    /// not spin, so they leave the cores to the one running).
    #[arg(long)]
    pub interleave: bool,
    /// Write every number and sample as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the figure (mean-latency bars and latency box plots) as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}
