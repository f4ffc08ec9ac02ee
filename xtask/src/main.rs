//! `cargo xtask`: the project's developer tasks, so that set-up, tests, demo and benchmarks are one
//! command each on a fresh machine.
//!
//! - `setup`: fetch and verify the ONNX Runtime library (see [`setup`]).
//! - `test`: set-up, then formatting, clippy and every test of the workspace (what CI runs).
//! - `demo`: set-up, then the main job end to end.
//! - `bench <name>`: benchmarks that write their figures under `bench/results/`.

mod bench;
mod bench_hub;
mod bench_quant;
mod setup;
#[cfg(test)]
mod tidy;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup              fetch ONNX Runtime 1.32.0 from PyPI (pip), verify it, cache it in the target dir
  test               setup, then cargo fmt --check, clippy -D warnings, and every test of the workspace
  demo               setup, then the main job: build models, inspect them, benchmark them
  bench runtime      our ONNX Runtime path vs onnxruntime's Python API on ResNet-50 and MobileNetV2
  bench hub          1000 simulated MQTT devices publishing QoS 1 telemetry to the hub for 60 s
  bench quantization FP32 / static S8S8 / static U8S8 / dynamic int8 of ResNet-50, ResNet-101, MobileNetV2:
                     edgemlops model quantize vs onnxruntime's Python tool (time, latency, agreement, size)
";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["setup"] => setup::setup().map(|_| ()),
        ["test"] => test(),
        ["demo", rest @ ..] => bench::demo(rest),
        ["bench", name, rest @ ..] => bench::bench(name, rest),
        [] | ["help" | "--help" | "-h"] => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

fn test() -> Result<()> {
    setup::setup()?;
    util::cargo(&["fmt", "--all", "--", "--check"])?;
    util::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])?;
    util::cargo(&["test", "--workspace", "--locked"])?;
    eprintln!("xtask: all checks passed");
    Ok(())
}
