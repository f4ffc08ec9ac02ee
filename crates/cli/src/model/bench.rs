//! `edgemlops model bench`: load time and latency distribution per model, as a table, JSON with
//! every sample, and the two-panel figure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use infer::machine::MachineInfo;
use infer::{Backend, ElementType, ModelSource, OrtBackend, Session, SessionOptions, Tensor, TensorSpec};
use ndarray::ArrayD;
use onnx::rng::Rng;
use serde::Serialize;

use crate::args::BenchArgs;
use crate::fmt;
use crate::plot::{self, Figure, Series};
use crate::stats::{self, Summary};

/// The JSON document `--json` writes.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// `edgemlops <version>`.
    pub tool: String,
    /// The machine.
    pub machine: Machine,
    /// The inference runtime.
    pub runtime: Runtime,
    /// How the runs were made.
    pub settings: Settings,
    /// One entry per model, in command-line order.
    pub models: Vec<ModelResult>,
}

/// Machine facts in the report.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// Architecture.
    pub arch: String,
    /// Int8-relevant CPU features.
    pub features: Vec<String>,
}

/// Runtime facts in the report.
#[derive(Debug, Serialize)]
pub struct Runtime {
    /// Backend name.
    pub name: String,
    /// Backend version.
    pub version: String,
}

/// Settings in the report.
#[derive(Debug, Serialize)]
pub struct Settings {
    /// Timed runs per model.
    pub runs: u32,
    /// Warm-up runs per model.
    pub warmup: u32,
    /// Intra-op threads.
    pub threads: u32,
    /// Batch size for a dynamic first dimension.
    pub batch: u32,
    /// Graph optimization level.
    pub optimization: String,
    /// Input seed.
    pub seed: u64,
    /// Whether the models took turns (one run each per round) instead of running one after another.
    pub interleaved: bool,
}

/// One model's results.
#[derive(Debug, Serialize)]
pub struct ModelResult {
    /// Label (file name unless given).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// File size.
    pub size_bytes: u64,
    /// Time to create the session (parse, optimize, prepare kernels).
    pub load_ms: f64,
    /// Input shapes used.
    pub input_shapes: Vec<Vec<usize>>,
    /// Latency statistics.
    #[serde(flatten)]
    pub summary: Summary,
    /// Median relative to the first model's.
    pub median_ratio: f64,
    /// Mean relative to the first model's.
    pub mean_ratio: f64,
    /// Every timed run, in milliseconds, in the order they ran.
    pub samples: Vec<f64>,
}

/// Parses `NAME=1x3x224x224`.
pub fn parse_shape(s: &str) -> Result<(String, Vec<usize>)> {
    let (name, dims) = s
        .split_once('=')
        .with_context(|| format!("--shape '{s}': expected NAME=D1xD2x..."))?;
    let dims = dims
        .split(['x', 'X', ','])
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .with_context(|| format!("--shape '{s}': '{d}' is not a dimension"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((name.to_owned(), dims))
}

/// The concrete shape of an input: `--shape` if given, else the declared one with a dynamic
/// first dimension set to the batch size.
pub fn input_shape(
    spec: &TensorSpec,
    overrides: &HashMap<String, Vec<usize>>,
    batch: usize,
    model: &Path,
) -> Result<Vec<usize>> {
    if let Some(s) = overrides.get(&spec.name) {
        if s.len() != spec.shape.len() {
            bail!(
                "--shape {}: the model declares rank {} ({})",
                spec.name,
                spec.shape.len(),
                infer::format_shape(&spec.shape)
            );
        }
        return Ok(s.clone());
    }
    spec.shape
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(v) => Ok(*v as usize),
            None if i == 0 => Ok(batch),
            None => bail!(
                "{}: input '{}' has dynamic dimensions {}; give its shape with --shape {}=D1xD2x...",
                model.display(),
                spec.name,
                infer::format_shape(&spec.shape),
                spec.name
            ),
        })
        .collect()
}

/// Deterministic input data for a spec.
pub fn make_input(dtype: ElementType, shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let shape = shape.to_vec();
    let arr = |v| ArrayD::from_shape_vec(shape.clone(), v).expect("n is the product of the shape");
    match dtype {
        ElementType::F32 => Tensor::F32(arr(rng.normal_vec(n, 1.0))),
        ElementType::F64 => Tensor::F64(
            ArrayD::from_shape_vec(shape.clone(), (0..n).map(|_| rng.normal()).collect()).expect("shape"),
        ),
        ElementType::U8 => Tensor::U8(
            ArrayD::from_shape_vec(shape.clone(), (0..n).map(|_| rng.below(256) as u8).collect())
                .expect("shape"),
        ),
        ElementType::I8 => Tensor::I8(
            ArrayD::from_shape_vec(
                shape.clone(),
                (0..n).map(|_| (rng.below(256) as i16 - 128) as i8).collect(),
            )
            .expect("shape"),
        ),
        other => Tensor::zeros(other, &shape),
    }
}

/// A model loaded for timing: its session, generated inputs and the samples so far.
struct LoadedModel {
    name: String,
    path: PathBuf,
    size_bytes: u64,
    load_ms: f64,
    session: Box<dyn Session>,
    inputs: Vec<Tensor>,
    shapes: Vec<Vec<usize>>,
    samples: Vec<f64>,
}

impl LoadedModel {
    /// Runs the model once and records the latency in milliseconds.
    fn time_one_run(&mut self) -> Result<()> {
        let t = Instant::now();
        let out = self
            .session
            .run(&self.inputs)
            .with_context(|| self.path.display().to_string())?;
        self.samples.push(t.elapsed().as_secs_f64() * 1e3);
        drop(out);
        Ok(())
    }

    /// The result row (ratios are filled in once every model ran).
    fn finish(self) -> Result<ModelResult> {
        let summary = stats::summarize(&self.samples).context("no samples")?;
        Ok(ModelResult {
            name: self.name,
            path: self.path,
            size_bytes: self.size_bytes,
            load_ms: self.load_ms,
            input_shapes: self.shapes,
            summary,
            median_ratio: 1.0,
            mean_ratio: 1.0,
            samples: self.samples,
        })
    }
}

/// Loads the `i`-th model of the command line and makes its inputs.
fn load(
    a: &BenchArgs,
    i: usize,
    path: &Path,
    backend: &OrtBackend,
    options: &SessionOptions,
    overrides: &HashMap<String, Vec<usize>>,
) -> Result<LoadedModel> {
    let name = a.labels.get(i).cloned().unwrap_or_else(|| {
        path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    let size_bytes = std::fs::metadata(path)?.len();
    let t0 = Instant::now();
    let session = backend
        .load(ModelSource::File(path), options)
        .with_context(|| path.display().to_string())?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut rng = Rng::new(a.seed);
    let mut shapes = Vec::new();
    let mut inputs = Vec::new();
    for spec in session.inputs() {
        let shape = input_shape(spec, overrides, a.batch as usize, path)?;
        inputs.push(make_input(spec.dtype, &shape, &mut rng));
        shapes.push(shape);
    }
    Ok(LoadedModel {
        name,
        path: path.to_path_buf(),
        size_bytes,
        load_ms,
        session,
        inputs,
        shapes,
        samples: Vec::with_capacity((a.runs + a.warmup) as usize),
    })
}

/// Runs the benchmark and writes the outputs.
pub fn run(a: &BenchArgs) -> Result<()> {
    if !a.labels.is_empty() && a.labels.len() != a.files.len() {
        bail!(
            "{} --label given for {} models: give one per model or none",
            a.labels.len(),
            a.files.len()
        );
    }
    for f in &a.files {
        if !f.is_file() {
            bail!("{}: no such file", f.display());
        }
        onnx::read_model(f)?; // a clear "not an ONNX model" before the runtime's own message
    }
    let overrides: HashMap<String, Vec<usize>> =
        a.shapes.iter().map(|s| parse_shape(s)).collect::<Result<_>>()?;
    let machine = MachineInfo::detect();
    let threads = a.threads.unwrap_or(machine.cores as u32);
    let backend = OrtBackend::new()?;
    let options = SessionOptions {
        intra_threads: Some(threads as usize),
        optimization: a.optimization,
        // Interleaved, every model's session stays loaded: spinning threads of the idle ones
        // would take the cores from the one running (measured: ResNet-50 at 2 threads on 2
        // cores went from 27 ms alone to 51 ms next to one idle spinning session).
        spinning: a.interleave.then_some(false),
        ..Default::default()
    };

    let total = u64::from(a.runs + a.warmup) * a.files.len() as u64;
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg:24!} [{bar:30}] {pos}/{len} runs, {elapsed} (eta {eta})")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    let mut results = Vec::new();
    if a.interleave {
        // All sessions live at once and take turns, one run each per round, so that background
        // load (other processes on a shared machine) falls on every model alike.
        let mut loaded = Vec::new();
        for (i, path) in a.files.iter().enumerate() {
            loaded.push(load(a, i, path, &backend, &options, &overrides)?);
        }
        for m in &mut loaded {
            bar.set_message(m.name.clone());
            for _ in 0..a.warmup {
                m.time_one_run()?;
                bar.inc(1);
            }
            m.samples.clear();
        }
        bar.set_message("interleaved rounds");
        for _ in 0..a.runs {
            for m in &mut loaded {
                m.time_one_run()?;
                bar.inc(1);
            }
        }
        for m in loaded {
            results.push(m.finish()?);
        }
    } else {
        for (i, path) in a.files.iter().enumerate() {
            let mut m = load(a, i, path, &backend, &options, &overrides)?;
            bar.set_message(m.name.clone());
            for _ in 0..a.warmup {
                m.time_one_run()?;
                bar.inc(1);
            }
            m.samples.clear();
            for _ in 0..a.runs {
                m.time_one_run()?;
                bar.inc(1);
            }
            results.push(m.finish()?);
        }
    }
    bar.finish_and_clear();
    let (ref_median, ref_mean) = (results[0].summary.median_ms, results[0].summary.mean_ms);
    for r in &mut results {
        r.median_ratio = r.summary.median_ms / ref_median;
        r.mean_ratio = r.summary.mean_ms / ref_mean;
    }
    let report = BenchReport {
        tool: format!("edgemlops {}", env!("CARGO_PKG_VERSION")),
        machine: Machine {
            cpu: machine.cpu_model.clone(),
            cores: machine.cores,
            arch: machine.arch.clone(),
            features: machine.features,
        },
        runtime: Runtime {
            name: backend.name().to_owned(),
            version: backend.version(),
        },
        settings: Settings {
            runs: a.runs,
            warmup: a.warmup,
            threads,
            batch: a.batch,
            optimization: format!("{:?}", a.optimization).to_lowercase(),
            seed: a.seed,
            interleaved: a.interleave,
        },
        models: results,
    };
    print!("{}", render_table(&report));
    if let Some(p) = &a.json {
        let json = serde_json::to_vec_pretty(&report)?;
        onnx::io::write_atomic(p, &json)?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(p) = &a.plot {
        onnx::io::write_atomic(p, render_figure(&report).as_bytes())?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

/// The figure for a report.
pub fn render_figure(r: &BenchReport) -> String {
    let names: Vec<&str> = r.models.iter().map(|m| m.name.as_str()).collect();
    let threads = if r.settings.threads == 1 {
        "1 thread".to_owned()
    } else {
        format!("{} threads", r.settings.threads)
    };
    plot::render_svg(&Figure {
        title: format!("Inference latency: {}", names.join(" vs ")),
        subtitle: format!(
            "{} ({} cores), {threads}, batch {}, {} {}, {} runs",
            r.machine.cpu,
            r.machine.cores,
            r.settings.batch,
            r.runtime.name,
            r.runtime.version,
            r.settings.runs
        ),
        series: r
            .models
            .iter()
            .map(|m| Series {
                label: m.name.clone(),
                samples_ms: m.samples.clone(),
                mean_ms: m.summary.mean_ms,
                std_ms: m.summary.std_ms,
            })
            .collect(),
    })
}

/// The stdout table.
pub fn render_table(r: &BenchReport) -> String {
    let w = r.models.iter().map(|m| m.name.len()).max().unwrap_or(5).max(5);
    let mut out = format!(
        "{} ({} cores), {} thread(s), {} {}, {} runs after {} warm-up\n",
        r.machine.cpu,
        r.machine.cores,
        r.settings.threads,
        r.runtime.name,
        r.runtime.version,
        r.settings.runs,
        r.settings.warmup
    );
    out.push_str(&format!(
        "{:w$}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>8}  {:>7}  {:>7}  {:>7}\n",
        "model", "size", "load ms", "min", "mean", "median", "p90", "p99", "max", "std", "median×", "mean×"
    ));
    for m in &r.models {
        let s = &m.summary;
        out.push_str(&format!(
            "{:w$}  {:>9}  {:>8.1}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}  {:>8.2}  {:>7.2}  {:>7.3}  {:>7.3}\n",
            m.name,
            fmt::bytes(m.size_bytes),
            m.load_ms,
            s.min_ms,
            s.mean_ms,
            s.median_ms,
            s.p90_ms,
            s.p99_ms,
            s.max_ms,
            s.std_ms,
            m.median_ratio,
            m.mean_ratio
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_shape("x=1x3x64x64").unwrap(),
            ("x".to_owned(), vec![1, 3, 64, 64])
        );
        assert!(parse_shape("x").unwrap_err().to_string().contains("NAME=D1xD2"));
        assert!(parse_shape("x=1xAx3").unwrap_err().to_string().contains("'A'"));
    }

    #[test]
    fn dynamic_batch_is_filled_other_dynamic_dims_need_a_shape() {
        let spec = TensorSpec {
            name: "x".into(),
            dtype: ElementType::F32,
            shape: vec![None, Some(3), None],
        };
        let e = input_shape(&spec, &HashMap::new(), 2, Path::new("m.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--shape x="), "{e}");
        let o = HashMap::from([("x".to_owned(), vec![2, 3, 8])]);
        assert_eq!(
            input_shape(&spec, &o, 1, Path::new("m.onnx")).unwrap(),
            vec![2, 3, 8]
        );
        let fixed = TensorSpec {
            shape: vec![None, Some(3)],
            ..spec
        };
        assert_eq!(
            input_shape(&fixed, &HashMap::new(), 4, Path::new("m.onnx")).unwrap(),
            vec![4, 3]
        );
    }

    #[test]
    fn inputs_are_deterministic_for_a_seed() {
        let a = make_input(ElementType::F32, &[2, 3], &mut Rng::new(1));
        let b = make_input(ElementType::F32, &[2, 3], &mut Rng::new(1));
        assert_eq!(a, b);
        assert_eq!(make_input(ElementType::U8, &[4], &mut Rng::new(1)).shape(), &[4]);
    }
}
