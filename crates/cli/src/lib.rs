//! The `edgemlops` command line: the model toolchain (`model build|inspect|bench|package|verify`)
//! and the hub's admin client ([`hub`]: `device`, `model push|list|show|alias`, `deploy`,
//! `rollback`, `command`, `alarm`).
//!
//! `main.rs` only calls [`main_entry`]; every command is a plain function over parsed arguments
//! ([`args`]), so the integration tests drive the real binary and unit tests call functions.
//! Errors print as one line (`edgemlops: error: ...`, causes joined with `: `) and map to exit
//! codes: 1 for failures, 2 for usage errors, 3 when the ONNX Runtime library is missing.

pub mod args;
pub mod fmt;
pub mod hub;
pub mod keygen;
pub mod model;
pub mod plot;
pub mod stats;
pub mod vqi;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command, ModelCommand};

/// Exit code when the ONNX Runtime library cannot be found.
pub const EXIT_RUNTIME_MISSING: u8 = 3;

/// Parses the process arguments, runs the command, prints errors, returns the exit code.
pub fn main_entry() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgemlops: error: {e:#}");
            let runtime_missing = e
                .chain()
                .any(|c| matches!(c.downcast_ref(), Some(infer::InferError::LibraryMissing { .. })));
            ExitCode::from(if runtime_missing { EXIT_RUNTIME_MISSING } else { 1 })
        }
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Model(ModelCommand::Build(a)) => model::build::run(&a),
        Command::Model(ModelCommand::Inspect(a)) => model::inspect::run(&a),
        Command::Model(ModelCommand::Bench(a)) => model::bench::run(&a),
        Command::Model(ModelCommand::Quantize(a)) => model::quantize::run(&a),
        Command::Model(ModelCommand::Optimize(a)) => model::optimize::run(&a),
        Command::Model(ModelCommand::Eval(a)) => model::eval::run(&a),
        Command::Model(ModelCommand::Push(a)) => hub::push(&cli.hub, &a),
        Command::Model(ModelCommand::List(a)) => hub::list_models(&cli.hub, &a),
        Command::Model(ModelCommand::Show(a)) => hub::show_model(&cli.hub, &a),
        Command::Model(ModelCommand::Alias(a)) => hub::alias(&cli.hub, &a),
        Command::Device(c) => hub::device(&cli.hub, &c),
        Command::Deploy(a) => hub::deploy(&cli.hub, &a),
        Command::Rollback(a) => hub::rollback(&cli.hub, &a),
        Command::Cmd(c) => hub::command(&cli.hub, &c),
        Command::Alarm(c) => hub::alarm(&cli.hub, &c),
        Command::Asset(c) => hub::asset::run(&cli.hub, &c),
        Command::Model(ModelCommand::Package(a)) => model::package::run(&a),
        Command::Model(ModelCommand::Verify(a)) => model::verify::run(&a),
        Command::Keygen(a) => keygen::run(&a),
        Command::Vqi(c) => vqi::run(&c),
    }
}
