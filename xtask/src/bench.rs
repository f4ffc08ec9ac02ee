//! `cargo xtask bench <name>`: commands that build release binaries, run them, and write their
//! figures to files (`bench/results/`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::setup;
use crate::util::{self, workspace_root};

/// Builds the release binaries ([`util::release_build`]) and returns the `edgemlops` path.
pub fn release_cli() -> Result<PathBuf> {
    Ok(util::release_build()?.join("edgemlops"))
}

fn edgemlops(bin: &Path, args: &[&str]) -> Result<()> {
    eprintln!("xtask: edgemlops {}", args.join(" "));
    util::run(Command::new(bin).args(args))
}

/// `cargo xtask bench <name>`.
pub fn bench(name: &str, args: &[&str]) -> Result<()> {
    match name {
        "runtime" => runtime(args),
        "hub" => crate::bench_hub::run(args),
        "quantization" => crate::bench_quant::run(args),
        "agent" => crate::bench_agent::run(args),
        other => bail!("unknown benchmark '{other}' (available: runtime, hub, quantization, agent)"),
    }
}

/// A Python virtual environment under the target directory with onnxruntime, numpy, and what
/// onnxruntime's quantization tool imports (`onnx`, and `sympy` for its symbolic shape inference).
pub fn python_env() -> Result<PathBuf> {
    let venv = util::target_dir()?.join("pyenv");
    let py = venv.join("bin").join("python");
    let ready = py.is_file()
        && Command::new(&py)
            .args([
                "-c",
                "import onnxruntime, numpy, onnx, sympy, PIL; assert onnxruntime.__version__ == '1.32.0'",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ready {
        eprintln!(
            "xtask: preparing {} with onnxruntime==1.32.0, numpy, onnx, sympy and pillow (pip)",
            venv.display()
        );
        if !py.is_file() {
            util::run(Command::new(setup::python()?).args(["-m", "venv"]).arg(&venv))
                .context("creating a Python venv (on Debian: apt install python3-venv)")?;
        }
        util::run(Command::new(&py).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "onnxruntime==1.32.0",
            "numpy",
            "onnx",
            "sympy",
            "pillow",
        ]))
        .context("installing onnxruntime, numpy, onnx, sympy and pillow from PyPI")?;
    }
    Ok(py)
}

/// Reads a JSON file.
pub fn read_json(p: &Path) -> Result<Value> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
}

fn samples(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Order of the tools' legs: alternating pairs, so that drift and noisy neighbours on a shared
/// machine hit both tools alike.
const LEGS: [&str; 16] = [
    "rust", "python", "python", "rust", "rust", "python", "python", "rust", "rust", "python", "python",
    "rust", "rust", "python", "python", "rust",
];

/// `cargo xtask bench runtime [--runs N]`: median latency of ResNet-50 and MobileNetV2 FP32 at 1
/// and 2 threads, `edgemlops model bench` next to onnxruntime's Python API on the same files, in
/// the alternating legs of [`LEGS`] (each leg an eighth of the runs, after its own warm-up).
fn runtime(args: &[&str]) -> Result<()> {
    let runs: u32 = match args {
        [] => 100,
        ["--runs", n] => n.parse().context("--runs takes a number")?,
        other => bail!("usage: cargo xtask bench runtime [--runs N] (got {other:?})"),
    };
    setup::setup_programs()?;
    let bin = release_cli()?;
    let py = python_env()?;
    let script = workspace_root().join("bench").join("ort_python.py");
    let work = util::target_dir()?.join("bench-runtime");
    std::fs::create_dir_all(&work)?;
    let models = [("ResNet-50", "resnet50"), ("MobileNetV2", "mobilenetv2")];
    for (_, arch) in models {
        let out = work.join(format!("{arch}.onnx"));
        if !out.is_file() {
            edgemlops(&bin, &["model", "build", arch, "--out", &out.to_string_lossy()])?;
        }
    }
    let per_leg = (runs / 8).max(1).to_string();
    let mut rows = Vec::new();
    for threads in [1u32, 2] {
        for (label, arch) in models {
            let model = work.join(format!("{arch}.onnx"));
            let (mut rust, mut python) = (Vec::new(), Vec::new());
            let mut leg_medians = Vec::new();
            for (leg, tool) in LEGS.iter().enumerate() {
                let out = work.join(format!("{arch}-{threads}-{leg}.json"));
                let t = threads.to_string();
                if *tool == "rust" {
                    let m = model.to_string_lossy();
                    let o = out.to_string_lossy();
                    let a = [
                        "model",
                        "bench",
                        &m,
                        "--runs",
                        &per_leg,
                        "--warmup",
                        "10",
                        "--threads",
                        &t,
                        "--json",
                        &o,
                    ];
                    util::run(
                        Command::new(&bin)
                            .args(a)
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null()),
                    )?;
                    let s = samples(&read_json(&out)?["models"][0]["samples"]);
                    leg_medians.push(json!({"tool": "edgemlops", "median_ms": median(&s)}));
                    rust.extend(s);
                } else {
                    util::run(
                        Command::new(&py)
                            .arg(&script)
                            .arg(&model)
                            .args(["--runs", &per_leg, "--warmup", "10", "--threads", &t, "--json"])
                            .arg(&out),
                    )?;
                    let s = samples(&read_json(&out)?["samples"]);
                    leg_medians.push(json!({"tool": "python", "median_ms": median(&s)}));
                    python.extend(s);
                }
            }
            let (rm, pm) = (median(&rust), median(&python));
            let (rmin, pmin) = (
                rust.iter().copied().fold(f64::INFINITY, f64::min),
                python.iter().copied().fold(f64::INFINITY, f64::min),
            );
            eprintln!(
                "xtask: {label} {threads} thread(s): edgemlops {rm:.2} ms, python {pm:.2} ms, ratio {:.3}",
                rm / pm
            );
            rows.push(json!({
                "model": label, "threads": threads,
                "edgemlops_median_ms": rm, "python_median_ms": pm, "ratio": rm / pm, "legs": leg_medians,
                "edgemlops_min_ms": rmin, "python_min_ms": pmin, "min_ratio": rmin / pmin,
                "edgemlops_samples": rust, "python_samples": python,
            }));
        }
    }
    let machine = read_json(&work.join("resnet50-1-0.json"))?["machine"].clone();
    let results = workspace_root().join("bench").join("results");
    std::fs::create_dir_all(&results)?;
    let doc = json!({ "benchmark": "runtime", "runs_per_tool": runs, "machine": machine, "onnxruntime": "1.32.0", "rows": rows });
    std::fs::write(results.join("runtime.json"), serde_json::to_vec_pretty(&doc)?)?;
    let mut md = format!(
        "# Runtime parity: edgemlops vs onnxruntime Python API\n\nMachine: {} ({} cores). ONNX Runtime 1.32.0, FP32, batch 1, \
         {runs} runs per tool in 8 legs each, alternating A-B-B-A, graph optimizations on, one inter-op thread.\n\
         Regenerate with `cargo xtask bench runtime`.\n\n\
         | model | threads | edgemlops median (ms) | Python median (ms) | median ratio | min ratio |\n|---|---|---|---|---|---|\n",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cores"]
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.2} | {:.3} | {:.3} |\n",
            r["model"].as_str().unwrap_or("?"),
            r["threads"],
            r["edgemlops_median_ms"].as_f64().unwrap_or(f64::NAN),
            r["python_median_ms"].as_f64().unwrap_or(f64::NAN),
            r["ratio"].as_f64().unwrap_or(f64::NAN),
            r["min_ratio"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    std::fs::write(results.join("runtime.md"), &md)?;
    print!("{md}");
    let worst = rows
        .iter()
        .filter_map(|r| r["ratio"].as_f64())
        .fold(0.0, f64::max);
    println!(
        "\nworst ratio {worst:.3} ({})",
        if worst <= 1.05 {
            "within 1.05"
        } else {
            "ABOVE 1.05"
        }
    );
    Ok(())
}
