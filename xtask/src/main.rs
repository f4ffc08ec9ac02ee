//! `cargo xtask`: the project's developer tasks, so that set-up, tests, demo and benchmarks are one
//! command each on a fresh machine.
//!
//! - `setup`: fetch, build or install what the tests run that is not ours: ONNX Runtime, test
//!   models, Debian packages, Garage (see [`setup`]).
//! - `test`: set-up, then formatting, clippy and every test of the workspace (what CI runs).
//! - `demo`: set-up, then the main job end to end (see [`demo`]).
//! - `bench <name>`: benchmarks that write their figures under `bench/results/`.

mod bench;
mod bench_agent;
mod bench_hub;
mod bench_quant;
// Real third-party servers for `bench hub` (the launchers the hub's tests use).
#[path = "../../testsupport/child.rs"]
mod child;
mod demo;
#[path = "../../testsupport/garage.rs"]
mod garage;
#[path = "../../testsupport/haproxy.rs"]
mod haproxy;
mod live;
#[path = "../../testsupport/postgres.rs"]
mod postgres;
mod setup;
mod setup_garage;
#[cfg(test)]
mod tidy;
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  setup              fetch ONNX Runtime 1.32.0 and test models from PyPI (pip), verify and cache them in the
                     target dir; install mosquitto, postgresql and haproxy with apt-get when missing;
                     build Garage (S3 object store) from crates.io once into the target dir
  test               setup, then cargo fmt --check and every test of the workspace, built with clippy -D warnings
  demo [--keep-running]
                     setup, then the main job: a hub and three agents on loopback, the VQI model
                     signed, deployed over the air and fed inspection photos; prints the asset register
  bench runtime      our ONNX Runtime path vs onnxruntime's Python API on ResNet-50 and MobileNetV2
  bench hub [--backend sqlite|postgres] [--nodes 1|2] [--devices N] [--seconds S] [--rate R]
                     10,000 simulated MQTT devices connecting at once, then publishing QoS 1
                     telemetry for 60 s: SQLite x1, PostgreSQL x1 and PostgreSQL x2 (HAProxy)
  bench quantization FP32 / static S8S8 / static U8S8 / dynamic int8 of ResNet-50, ResNet-101, MobileNetV2:
                     edgemlops model quantize vs onnxruntime's Python tool (time, latency, agreement, size)
  bench agent        the edge agent (profile release-agent): binary size, idle and serving RSS, /v1/infer
                     latency of a 1920x1080 JPEG on ResNet-50 int8 vs the bare session, hot swap under load
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
        ["demo", rest @ ..] => demo::run(rest),
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
    // Clippy runs as the compiler of the workspace's own crates inside the test build (what
    // `cargo clippy` does in check mode, with `-D warnings`), so every dependency is compiled
    // once instead of checked once and then built again: a cold run skips a whole check pass.
    // `cargo test` builds libraries, binaries, tests and examples: all our targets (no benches).
    eprintln!(
        "xtask: cargo test --workspace --locked, workspace crates compiled by clippy-driver -D warnings"
    );
    let mut cmd = std::process::Command::new(util::cargo_bin());
    cmd.args(["test", "--workspace", "--locked"])
        .env("RUSTC_WORKSPACE_WRAPPER", "clippy-driver")
        .env("CLIPPY_ARGS", "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__")
        .current_dir(util::workspace_root());
    util::run(&mut cmd)?;
    eprintln!("xtask: all checks passed");
    Ok(())
}
