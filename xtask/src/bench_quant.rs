//! `cargo xtask bench quantization`: the paper's quantization figure on this machine, with
//! onnxruntime's Python tool side by side.
//!
//! For ResNet-50, ResNet-101 and MobileNetV2 (built by `edgemlops model build`): FP32, static S8S8,
//! static U8S8 and dynamic int8, each made by `edgemlops model quantize` and by onnxruntime's
//! `quant_pre_process` + `quantize_static`/`quantize_dynamic` (same model, same calibration
//! `.npy`, same batch size, per-channel weights), then
//! - quantization wall time of both tools (whole process),
//! - latency of every model with `edgemlops model bench`, 1 and 2 threads, 100 runs,
//! - agreement with FP32 (`edgemlops model eval`: SQNR, cosine, top-1) on held-out images,
//! - sizes.
//!
//! Inputs are "natural-looking" synthetic photographs (smooth 1/f colour noise, sky/ground
//! gradients, soft shapes), ImageNet-normalized: random weights and noise inputs would measure
//! nothing about calibration. Writes `bench/results/quantization.{json,md,svg}`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::bench::{python_env, read_json, release_cli};
use crate::live::load_average;
use crate::setup;
use crate::util::{self, path_str as s, workspace_root};

/// One quantized variant: label, file stem, and the arguments both tools get (ours and
/// `bench/ort_quantize.py` take the same flags).
struct Variant {
    label: &'static str,
    stem: &'static str,
    args: &'static [&'static str],
}

const VARIANTS: [Variant; 3] = [
    Variant {
        label: "static S8S8",
        stem: "s8s8",
        args: &["--mode", "static", "--activations", "s8", "--per-channel"],
    },
    Variant {
        label: "static U8S8",
        stem: "u8s8",
        args: &["--mode", "static", "--activations", "u8", "--per-channel"],
    },
    Variant {
        label: "dynamic S8",
        stem: "dyn",
        args: &["--mode", "dynamic", "--per-channel"],
    },
];

/// 7-bit weights (`--reduce-range`) where ONNX Runtime advises them: x86-64 without VNNI, whose
/// u8 x s8 kernels (`vpmaddubsw`) can saturate with full-range weights.
fn reduce_range_here() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let vnni = cpuinfo
        .split_whitespace()
        .any(|w| w == "avx512_vnni" || w == "avx_vnni");
    std::env::consts::ARCH == "x86_64" && !vnni
}

const MODELS: [(&str, &str); 3] = [
    ("ResNet-50", "resnet50"),
    ("ResNet-101", "resnet101"),
    ("MobileNetV2", "mobilenetv2"),
];

/// Calibration samples (the "32 images' worth").
const CALIBRATION_SAMPLES: usize = 32;
/// Held-out samples for agreement.
const EVAL_SAMPLES: usize = 64;
/// Samples per calibration run, for both tools.
const CALIBRATION_BATCH: &str = "1";

struct Options {
    runs: u32,
    models: Vec<(&'static str, &'static str)>,
    /// Free text about the conditions (e.g. other jobs sharing the CPU), printed with the machine.
    note: Option<String>,
    /// An `edgemlops` binary to use instead of building the release one (a shared working tree
    /// where others' edits would trigger a rebuild in the middle of a measurement session).
    cli: Option<PathBuf>,
}

fn parse(args: &[&str]) -> Result<Options> {
    let mut o = Options {
        runs: 100,
        models: MODELS.to_vec(),
        note: None,
        cli: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--runs" => o.runs = it.next().context("--runs takes a number")?.parse()?,
            "--note" => o.note = Some(it.next().context("--note takes a text")?.to_string()),
            "--cli" => o.cli = Some(PathBuf::from(it.next().context("--cli takes a path")?)),
            "--models" => {
                let want: Vec<&str> = it.next().context("--models takes a list")?.split(',').collect();
                // In the order given: results are written after each model, so a session short of
                // time can measure the most important ones first.
                o.models = want
                    .iter()
                    .map(|w| {
                        MODELS
                            .iter()
                            .copied()
                            .find(|(_, arch)| arch == w)
                            .with_context(|| {
                                format!("--models: '{w}' is not one of resnet50, resnet101, mobilenetv2")
                            })
                    })
                    .collect::<Result<_>>()?;
            }
            other => bail!(
                "usage: cargo xtask bench quantization [--runs N] [--models resnet50,resnet101,mobilenetv2] [--note TEXT] [--cli PATH] (got '{other}')"
            ),
        }
    }
    Ok(o)
}

/// SplitMix64: a tiny deterministic generator for the synthetic images.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// One synthetic photograph, `[3, side, side]` in 0..1: a horizon with sky and ground gradients,
/// 1/f colour noise (five octaves of bilinear value noise), and a few soft-edged blobs.
fn photo(rng: &mut Rng, side: usize) -> Vec<f32> {
    let mut img = vec![0f32; 3 * side * side];
    let horizon = 0.3 + 0.4 * rng.next();
    let sky: [f32; 3] = [
        0.4 + 0.3 * rng.next(),
        0.5 + 0.3 * rng.next(),
        0.7 + 0.3 * rng.next(),
    ];
    let ground: [f32; 3] = [
        0.2 + 0.4 * rng.next(),
        0.2 + 0.3 * rng.next(),
        0.1 + 0.2 * rng.next(),
    ];
    for y in 0..side {
        let fy = y as f32 / side as f32;
        for c in 0..3 {
            let v = if fy < horizon {
                sky[c] * (0.8 + 0.2 * fy / horizon)
            } else {
                ground[c] * (1.2 - 0.4 * (fy - horizon))
            };
            for x in 0..side {
                img[(c * side + y) * side + x] = v;
            }
        }
    }
    for octave in 0..5 {
        let cells = 2usize << octave;
        let amp = 0.25 / (1 << octave) as f32;
        let grid: Vec<f32> = (0..3 * (cells + 1) * (cells + 1))
            .map(|_| rng.next() - 0.5)
            .collect();
        let lum: Vec<f32> = (0..(cells + 1) * (cells + 1)).map(|_| rng.next() - 0.5).collect();
        for y in 0..side {
            let gy = y as f32 * cells as f32 / side as f32;
            let (y0, ty) = (gy as usize, gy.fract());
            for x in 0..side {
                let gx = x as f32 * cells as f32 / side as f32;
                let (x0, tx) = (gx as usize, gx.fract());
                let at = |g: &[f32], off: usize| {
                    let i = |yy: usize, xx: usize| g[off + yy * (cells + 1) + xx];
                    let top = i(y0, x0) * (1.0 - tx) + i(y0, x0 + 1) * tx;
                    let bottom = i(y0 + 1, x0) * (1.0 - tx) + i(y0 + 1, x0 + 1) * tx;
                    top * (1.0 - ty) + bottom * ty
                };
                let l = at(&lum, 0);
                for c in 0..3 {
                    let v = at(&grid, c * (cells + 1) * (cells + 1));
                    img[(c * side + y) * side + x] += amp * (0.6 * l + 0.4 * v);
                }
            }
        }
    }
    for _ in 0..(2 + (rng.next() * 4.0) as usize) {
        let (cx, cy) = (rng.next() * side as f32, rng.next() * side as f32);
        let (rx, ry) = (0.05 + 0.2 * rng.next(), 0.05 + 0.2 * rng.next());
        let colour: [f32; 3] = [rng.next(), rng.next(), rng.next()];
        for y in 0..side {
            for x in 0..side {
                let dx = (x as f32 - cx) / (rx * side as f32);
                let dy = (y as f32 - cy) / (ry * side as f32);
                let d = (dx * dx + dy * dy).sqrt();
                let alpha = (1.0 - d).clamp(0.0, 0.15) / 0.15;
                if alpha > 0.0 {
                    for c in 0..3 {
                        let p = &mut img[(c * side + y) * side + x];
                        *p = *p * (1.0 - alpha) + colour[c] * alpha;
                    }
                }
            }
        }
    }
    img.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    img
}

/// `n` ImageNet-normalized synthetic photographs as a `[n, 3, 224, 224]` float32 `.npy`.
fn write_photos(path: &Path, n: usize, seed: u64) -> Result<()> {
    const SIDE: usize = 224;
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    let mut rng = Rng(seed);
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, 3, {SIDE}, {SIDE}), }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for _ in 0..n {
        let img = photo(&mut rng, SIDE);
        for (i, v) in img.iter().enumerate() {
            let c = i / (SIDE * SIDE);
            bytes.extend_from_slice(&((v - MEAN[c]) / STD[c]).to_le_bytes());
        }
    }
    std::fs::write(path, bytes).with_context(|| path.display().to_string())
}

/// Runs a command quietly and returns its wall time in seconds.
fn timed(cmd: &mut Command) -> Result<f64> {
    eprintln!("xtask: {cmd:?}");
    let t = Instant::now();
    util::captured(cmd)?;
    Ok(t.elapsed().as_secs_f64())
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// `cargo xtask bench quantization [--runs N] [--models ...]`.
pub fn run(args: &[&str]) -> Result<()> {
    let o = parse(args)?;
    setup::setup_programs()?;
    let bin = match &o.cli {
        Some(p) if p.is_file() => p.clone(),
        Some(p) => bail!("--cli {}: no such file", p.display()),
        None => release_cli()?,
    };
    let load_before = load_average();
    let py = python_env()?;
    let script = workspace_root().join("bench").join("ort_quantize.py");
    let work = util::target_dir()?.join("bench-quantization");
    std::fs::create_dir_all(&work)?;
    let calib = work.join("calibration.npy");
    let eval = work.join("eval.npy");
    if !calib.is_file() {
        write_photos(&calib, CALIBRATION_SAMPLES, 1)?;
    }
    if !eval.is_file() {
        write_photos(&eval, EVAL_SAMPLES, 2)?;
    }
    let reduce_range = reduce_range_here();
    let reduce: &[&str] = if reduce_range { &["--reduce-range"] } else { &[] };
    let mut rows = Vec::new();
    let mut figure: Option<PathBuf> = None;
    for (label, arch) in &o.models {
        let fp32 = work.join(format!("{arch}.onnx"));
        if !fp32.is_file() {
            timed(Command::new(&bin).args(["model", "build", arch, "--out", &s(&fp32)]))?;
        }
        let mut files: Vec<(String, PathBuf)> = vec![("FP32".into(), fp32.clone())];
        let mut variants = Vec::new();
        for v in &VARIANTS {
            let ours = work.join(format!("{arch}.{}.edgemlops.onnx", v.stem));
            let ours_json = work.join(format!("{arch}.{}.edgemlops.json", v.stem));
            let ours_s = timed(
                Command::new(&bin)
                    .args(["model", "quantize", &s(&fp32), "--out", &s(&ours)])
                    .args(v.args)
                    .args(reduce)
                    .args(["--calibration-npy", &s(&calib), "--json", &s(&ours_json)]),
            )?;
            let python = work.join(format!("{arch}.{}.onnxruntime.onnx", v.stem));
            let python_json = work.join(format!("{arch}.{}.onnxruntime.json", v.stem));
            let python_s = timed(
                Command::new(&py)
                    .arg(&script)
                    .arg(&fp32)
                    .args(["--out", &s(&python)])
                    .args(v.args)
                    .args(reduce)
                    .args(["--calibration-npy", &s(&calib), "--batch", CALIBRATION_BATCH])
                    .args(["--json", &s(&python_json)]),
            )?;
            let python_report = read_json(&python_json)?;
            let mut agreement = Vec::new();
            for (tool, file) in [("edgemlops", &ours), ("onnxruntime", &python)] {
                let out = work.join(format!("{arch}.{}.{tool}.eval.json", v.stem));
                timed(Command::new(&bin).args([
                    "model",
                    "eval",
                    &s(&fp32),
                    &s(file),
                    "--npy",
                    &s(&eval),
                    "--json",
                    &s(&out),
                ]))?;
                let e = read_json(&out)?;
                agreement.push(json!({
                    "tool": tool,
                    "sqnr_db": e["outputs"][0]["sqnr_db"],
                    "cosine": e["outputs"][0]["cosine"],
                    "top1_agreement": e["top1_agreement"],
                    "top5_agreement": e["top5_agreement"],
                }));
            }
            files.push((format!("{} (edgemlops)", v.label), ours.clone()));
            files.push((format!("{} (onnxruntime)", v.label), python.clone()));
            variants.push(json!({
                "variant": v.label,
                "edgemlops": {"file": ours, "quantize_s": ours_s, "size_bytes": std::fs::metadata(&ours)?.len(),
                              "report": read_json(&ours_json)?},
                "onnxruntime": {"file": python, "quantize_s": python_s, "internal": python_report,
                                "size_bytes": std::fs::metadata(&python)?.len()},
                "agreement": agreement,
            }));
        }
        let mut latency = Vec::new();
        for threads in [1u32, 2] {
            let out = work.join(format!("{arch}.bench.{threads}.json"));
            let svg = work.join(format!("{arch}.bench.{threads}.svg"));
            let mut cmd = Command::new(&bin);
            cmd.args(["model", "bench"]);
            for (_, p) in &files {
                cmd.arg(p);
            }
            for (l, _) in &files {
                cmd.args(["--label", l]);
            }
            cmd.args([
                "--runs",
                &o.runs.to_string(),
                "--warmup",
                "10",
                "--threads",
                &threads.to_string(),
                "--json",
                &s(&out),
                "--plot",
                &s(&svg),
                "--interleave",
            ]);
            timed(&mut cmd)?;
            if *arch == "resnet50" && threads == 1 {
                figure = Some(svg.clone());
            }
            let b = read_json(&out)?;
            latency.push(json!({"threads": threads, "machine": b["machine"], "models": b["models"]}));
        }
        rows.push(json!({
            "model": label, "arch": arch, "fp32_size_bytes": std::fs::metadata(&fp32)?.len(),
            "variants": variants, "latency": latency,
        }));
        let md = write_results(&o, &rows, figure.as_deref(), load_before)?;
        if rows.len() == o.models.len() {
            print!("{md}");
        }
    }
    Ok(())
}

/// Writes `bench/results/quantization.{json,md,svg}` for the models measured so far; returns the
/// Markdown.
fn write_results(
    o: &Options,
    rows: &[Value],
    figure: Option<&Path>,
    load_before: Option<f64>,
) -> Result<String> {
    let results = workspace_root().join("bench").join("results");
    std::fs::create_dir_all(&results)?;
    let machine = rows
        .first()
        .map(|r| r["latency"][0]["machine"].clone())
        .unwrap_or(Value::Null);
    let doc = json!({
        "benchmark": "quantization", "runs": o.runs, "reduce_range": reduce_range_here(), "machine": machine, "onnxruntime": "1.32.0",
        "calibration_samples": CALIBRATION_SAMPLES, "eval_samples": EVAL_SAMPLES,
        "calibration_batch": CALIBRATION_BATCH, "note": o.note,
        "load_average": {"before": load_before, "after": load_average()},
        "cpu_family_model": cpu_family_model(), "rows": rows,
    });
    std::fs::write(
        results.join("quantization.json"),
        serde_json::to_vec_pretty(&doc)?,
    )?;
    let md = markdown(&doc);
    std::fs::write(results.join("quantization.md"), &md)?;
    if let Some(svg) = figure {
        std::fs::copy(svg, results.join("quantization.svg"))?;
    }
    Ok(md)
}

/// `cpu family` and `model` of /proc/cpuinfo (the CPU generation when the model name is generic).
fn cpu_family_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let field = |key: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_owned())
    };
    Some(format!(
        "family {}, model {}",
        field("cpu family")?,
        field("model")?
    ))
}

/// The acceptance figures for ResNet-50 at 1 thread, when ResNet-50 was measured.
fn headline(doc: &Value) -> String {
    let Some(r) = doc["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["arch"] == "resnet50"))
    else {
        return String::new();
    };
    let Some(l) = r["latency"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["threads"] == 1))
    else {
        return String::new();
    };
    let fp32 = median_of(&l["models"], "FP32");
    let ratio = |label: &str, tool: &str| fp32 / median_of(&l["models"], &format!("{label} ({tool})"));
    let mut out = String::from(
        "## Acceptance figures (ResNet-50, 1 thread)\n\n\
         | variant | FP32 / ours (median) | FP32 / onnxruntime tool | quantization: ours s | tool s | ours faster by | SQNR ours − tool dB | top-1 ours | top-1 tool |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for v in r["variants"].as_array().into_iter().flatten() {
        let label = v["variant"].as_str().unwrap_or("?");
        let (a, b) = (
            f(&v["edgemlops"]["quantize_s"]),
            f(&v["onnxruntime"]["quantize_s"]),
        );
        let g = &v["agreement"];
        out.push_str(&format!(
            "| {label} | {:.2}x | {:.2}x | {a:.1} | {b:.1} | {:.2}x | {:+.2} | {:.1} % | {:.1} % |\n",
            ratio(label, "edgemlops"),
            ratio(label, "onnxruntime"),
            b / a,
            f(&g[0]["sqnr_db"]) - f(&g[1]["sqnr_db"]),
            f(&g[0]["top1_agreement"]) * 100.0,
            f(&g[1]["top1_agreement"]) * 100.0,
        ));
    }
    out.push_str(&format!(
        "\nSize of our static U8S8 file: {:.1} % of FP32.\n\n",
        r["variants"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["variant"] == "static U8S8"))
            .map_or(f64::NAN, |v| f(&v["edgemlops"]["size_bytes"])
                / f(&r["fp32_size_bytes"])
                * 100.0)
    ));
    out
}

/// Median of the named model in a bench run's models.
fn median_of(models: &Value, label: &str) -> f64 {
    models
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == label))
        .map_or(f64::NAN, |m| f(&m["median_ms"]))
}

fn markdown(doc: &Value) -> String {
    let m = &doc["machine"];
    let mut out = format!(
        "# Quantization: FP32, static S8S8, static U8S8 and dynamic int8\n\n\
         Machine: {} ({}; {} cores, int8-relevant features: {}). \
         Load average {} before, {} after.{}\n\n\
         ONNX Runtime 1.32.0, batch 1, {} timed runs after 10 warm-up, graph optimizations on; the models of \
         one table row take turns (one run each per round, `model bench --interleave`), so background load \
         falls on all of them alike. Regenerate with `cargo xtask bench quantization`.\n\n\
         Each variant is made twice from the same FP32 file (built by `edgemlops model build`): by \
         `edgemlops model quantize` and by onnxruntime's Python tool (`quant_pre_process` + \
         `quantize_static`/`quantize_dynamic`), both with the same settings: per-channel {} weights, min/max calibration on the same {} \
         synthetic photographs (`.npy`, batch {}). Agreement is measured with `edgemlops model eval` on {} \
         other synthetic photographs. Weights are random (seeded), so agreement compares the tools with each \
         other, not with ImageNet accuracy.\n\n![latency](quantization.svg)\n\n",
        m["cpu"].as_str().unwrap_or("?"),
        doc["cpu_family_model"].as_str().unwrap_or("?"),
        m["cores"],
        m["features"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        doc["load_average"]["before"],
        doc["load_average"]["after"],
        doc["note"].as_str().map(|n| format!(" {n}")).unwrap_or_default(),
        doc["runs"],
        if doc["reduce_range"] == true {
            "7-bit (`reduce_range`, what ONNX Runtime advises on x86-64 without VNNI)"
        } else {
            "8-bit (no `reduce_range`: this CPU has VNNI or is not x86-64)"
        },
        doc["calibration_samples"],
        doc["calibration_batch"].as_str().unwrap_or("?"),
        doc["eval_samples"],
    );
    out.push_str(&headline(doc));
    out.push_str("## Latency (median ms) and speed-up over FP32\n\n| model | threads | FP32 |");
    for v in &VARIANTS {
        out.push_str(&format!(" {} ours | {} onnxruntime |", v.label, v.label));
    }
    out.push_str("\n|---|---|---|");
    out.push_str(&"---|---|".repeat(VARIANTS.len()));
    out.push('\n');
    let rows = doc["rows"].as_array().cloned().unwrap_or_default();
    for r in &rows {
        for l in r["latency"].as_array().into_iter().flatten() {
            let fp32 = median_of(&l["models"], "FP32");
            out.push_str(&format!(
                "| {} | {} | {fp32:.2} |",
                r["model"].as_str().unwrap_or("?"),
                l["threads"]
            ));
            for v in &VARIANTS {
                for tool in ["edgemlops", "onnxruntime"] {
                    let m = median_of(&l["models"], &format!("{} ({tool})", v.label));
                    out.push_str(&format!(" {m:.2} ({:.2}x) |", fp32 / m));
                }
            }
            out.push('\n');
        }
    }
    out.push_str(
        "\n## Quantization wall time (whole process, seconds)\n\n\
         | model | variant | edgemlops | onnxruntime tool | onnxruntime without imports | edgemlops faster by |\n|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        for v in r["variants"].as_array().into_iter().flatten() {
            let (a, b) = (
                f(&v["edgemlops"]["quantize_s"]),
                f(&v["onnxruntime"]["quantize_s"]),
            );
            out.push_str(&format!(
                "| {} | {} | {a:.2} | {b:.2} | {:.2} | {:.2}x |\n",
                r["model"].as_str().unwrap_or("?"),
                v["variant"].as_str().unwrap_or("?"),
                f(&v["onnxruntime"]["internal"]["total_s"]),
                b / a
            ));
        }
    }
    out.push_str(
        "\n## Agreement with FP32 (held-out synthetic photographs)\n\n\
         | model | variant | SQNR dB ours | SQNR dB onnxruntime | top-1 ours | top-1 onnxruntime | cosine ours | cosine onnxruntime |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in &rows {
        for v in r["variants"].as_array().into_iter().flatten() {
            let a = &v["agreement"];
            let pct = |x: &Value| {
                x.as_f64()
                    .map_or("-".to_owned(), |v| format!("{:.1} %", v * 100.0))
            };
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} | {} | {} | {:.5} | {:.5} |\n",
                r["model"].as_str().unwrap_or("?"),
                v["variant"].as_str().unwrap_or("?"),
                f(&a[0]["sqnr_db"]),
                f(&a[1]["sqnr_db"]),
                pct(&a[0]["top1_agreement"]),
                pct(&a[1]["top1_agreement"]),
                f(&a[0]["cosine"]),
                f(&a[1]["cosine"]),
            ));
        }
    }
    out.push_str("\n## Size\n\n| model | FP32 | variant | edgemlops | onnxruntime | edgemlops / FP32 |\n|---|---|---|---|---|---|\n");
    for r in &rows {
        let fp32 = f(&r["fp32_size_bytes"]);
        for v in r["variants"].as_array().into_iter().flatten() {
            let (a, b) = (
                f(&v["edgemlops"]["size_bytes"]),
                f(&v["onnxruntime"]["size_bytes"]),
            );
            out.push_str(&format!(
                "| {} | {:.1} MB | {} | {:.1} MB | {:.1} MB | {:.1} % |\n",
                r["model"].as_str().unwrap_or("?"),
                fp32 / 1e6,
                v["variant"].as_str().unwrap_or("?"),
                a / 1e6,
                b / 1e6,
                a / fp32 * 100.0
            ));
        }
    }
    out
}
