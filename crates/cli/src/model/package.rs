//! `edgemlops model package`: an ONNX model, its labels, pre/post-processing and smoke-test
//! vectors, as one signed package (`package` crate format).
//!
//! The manifest's inputs and outputs come from the model itself; pre- and post-processing from
//! presets or JSON (the `proto::pipeline` types, as `edgemlops vqi train` writes them). Smoke
//! vectors "auto" are deterministic inputs made from the model's input specs and the outputs ONNX
//! Runtime computes for them: the device runs the same inputs before switching to the model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use infer::{Backend, ModelSource, OrtBackend, SessionOptions};
use onnx::inspect::{ShapeDim, ValueSummary};
use onnx::rng::Rng;
use package::manifest::{
    self, Dim, Lineage, Manifest, Quantization, RuntimeRequirement, Task, TensorDtype, TensorInfo,
};
use package::smoke::{SMOKE_FORMAT, SMOKE_INDEX, SmokeCase, SmokeIndex, TensorFile, Tolerance};
use package::{PackageBuilder, SecretKey, Version};
use proto::Timestamp;
use proto::edgemlops::HardwareClass;
use proto::pipeline::{Activation, Layout, Postprocess, Preprocess};
use serde::Serialize;

use crate::fmt;
use crate::model::bench::make_input;

/// Oldest ONNX Runtime release that runs the opsets our tools write (opset 17 needs 1.13; 1.17 is
/// the oldest release with the int8 kernels the quantizer targets).
pub const DEFAULT_MIN_RUNTIME: &str = "1.17.0";

/// `edgemlops model package`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    edgemlops model package model.onnx --name vqi --version 1.0.0 --labels labels.txt \\\n      \
        --preprocess preprocess.json --postprocess postprocess.json --hardware-class any \\\n      \
        --key keys/publisher.key --out vqi-1.0.0.emp\n  \
    edgemlops model package r50.onnx --name resnet50 --version 0.1.0 --labels imagenet.txt \\\n      \
        --preprocess imagenet --hardware-class x86_64-avx2 --key keys/publisher.key --out r50.emp\n\n\
    --preprocess: 'imagenet' (224x224, resize 256 + center crop, ImageNet mean/std), 'none', a JSON file, or \
    inline JSON ('{\"width\": 64, \"height\": 64}'); fields: width, height, resize, filter, layout, channels, \
    scale, mean, std, dtype. --postprocess: 'softmax', 'sigmoid', 'none' (activation only), a JSON file or \
    inline JSON; fields: activation, top_k, min_confidence, classes. Unknown fields are errors.\n\n\
    Smoke tests 'auto': seeded inputs from the model's input specs (dynamic first dimension = 1, others via \
    --shape) and the outputs ONNX Runtime computes for them; a device passes when every output value a is \
    within ABS + REL x |expected| of the expected value.\n\n\
    Hardware classes: x86_64-vnni, x86_64-avx2, x86_64, aarch64-i8mm, aarch64-dotprod, aarch64, any, \
    or your own (lowercase letters, digits, '_', '-').")]
pub struct PackageArgs {
    /// The ONNX model (external data next to it is inlined into the package).
    pub model: PathBuf,
    /// Model name (letters, digits, '.', '_', '-').
    #[arg(long)]
    pub name: String,
    /// Model version (semver, e.g. 1.2.0).
    #[arg(long)]
    pub version: String,
    /// What the model does: classification, segmentation, detection.
    #[arg(long, default_value = "classification")]
    pub task: Task,
    /// Class labels, one per line, in output order.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Pre-processing: imagenet, none, a JSON file or inline JSON.
    #[arg(long)]
    pub preprocess: Option<String>,
    /// Post-processing: softmax, sigmoid, none, a JSON file or inline JSON (default for
    /// classification: softmax, top 5).
    #[arg(long)]
    pub postprocess: Option<String>,
    /// Hardware class this variant is built for.
    #[arg(long)]
    pub hardware_class: HardwareClass,
    /// Smoke-test vectors: auto (computed with ONNX Runtime) or none.
    #[arg(long, default_value = "auto")]
    pub smoke_inputs: SmokeInputs,
    /// Number of smoke-test cases.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub smoke_cases: u32,
    /// Seed of the smoke-test inputs.
    #[arg(long, default_value_t = 0)]
    pub smoke_seed: u64,
    /// Smoke-test tolerance as ABS,REL.
    #[arg(long, default_value = "1e-4,1e-3")]
    pub smoke_tolerance: String,
    /// Shape of an input for smoke tests, as NAME=D1xD2x... (for dynamic dimensions other than the first).
    #[arg(long = "shape", value_name = "NAME=SHAPE")]
    pub shapes: Vec<String>,
    /// Quantization record (JSON file with mode, weight_type, calibration, parent, accuracy_delta...).
    #[arg(long)]
    pub quantization: Option<PathBuf>,
    /// Lineage record (JSON file with dataset, dataset_sha256, training_run, parent, notes).
    #[arg(long)]
    pub lineage: Option<PathBuf>,
    /// Free description.
    #[arg(long)]
    pub description: Option<String>,
    /// Oldest ONNX Runtime version that runs the model.
    #[arg(long, default_value = DEFAULT_MIN_RUNTIME)]
    pub min_runtime: String,
    /// Secret key file (from `edgemlops keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// Output package file (.emp).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Package files as `(name, bytes)`.
type NamedFiles = Vec<(String, Vec<u8>)>;

/// Where smoke-test vectors come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmokeInputs {
    /// Seeded inputs from the input specs, outputs from ONNX Runtime.
    Auto,
    /// No smoke tests.
    None,
}

impl std::str::FromStr for SmokeInputs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            _ => Err(format!("unknown smoke inputs '{s}' (auto, none)")),
        }
    }
}

/// The JSON summary `--json` prints.
#[derive(Debug, Serialize)]
pub struct PackageSummary {
    /// The package file.
    pub path: PathBuf,
    /// sha256 of the package (its content address).
    pub sha256: String,
    /// Package size.
    pub size_bytes: u64,
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Hardware class.
    pub hardware_class: String,
    /// Signing key id.
    pub key_id: String,
    /// Files in the package besides manifest and signature.
    pub files: Vec<String>,
    /// Smoke-test cases.
    pub smoke_cases: usize,
}

/// Reads `value` as inline JSON (starting with `{`) or as a JSON file.
fn json_spec<T: serde::de::DeserializeOwned>(value: &str, flag: &str) -> Result<T> {
    let (text, origin) = if value.trim_start().starts_with('{') {
        (value.to_owned(), "inline JSON".to_owned())
    } else {
        let text = std::fs::read_to_string(value).with_context(|| format!("{flag} {value}"))?;
        (text, value.to_owned())
    };
    serde_json::from_str(&text).with_context(|| format!("{flag}: {origin}"))
}

/// `--preprocess`: a preset, `none`, a JSON file or inline JSON.
pub fn parse_preprocess(value: &str) -> Result<Option<Preprocess>> {
    let spec = match value {
        "none" => return Ok(None),
        "imagenet" => Preprocess::imagenet(),
        other => json_spec(other, "--preprocess")?,
    };
    spec.validate()
        .map_err(|e| anyhow::anyhow!("--preprocess: {e}"))?;
    Ok(Some(spec))
}

/// `--postprocess`: an activation preset, `none`, a JSON file or inline JSON.
pub fn parse_postprocess(value: &str) -> Result<Postprocess> {
    let activation = |activation| Postprocess {
        activation,
        ..Postprocess::default()
    };
    Ok(match value {
        "softmax" => activation(Activation::Softmax),
        "sigmoid" => activation(Activation::Sigmoid),
        "none" => activation(Activation::None),
        other => json_spec(other, "--postprocess")?,
    })
}

fn parse_tolerance(s: &str) -> Result<Tolerance> {
    let parse = |v: &str| {
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
    };
    match s.split_once(',') {
        Some((a, r)) => match (parse(a), parse(r)) {
            (Some(absolute), Some(relative)) => Ok(Tolerance { absolute, relative }),
            _ => bail!("--smoke-tolerance '{s}': expected two non-negative numbers ABS,REL"),
        },
        None => bail!("--smoke-tolerance '{s}': expected ABS,REL (e.g. 1e-4,1e-3)"),
    }
}

fn tensor_info(v: &ValueSummary, model: &Path) -> Result<TensorInfo> {
    let dtype = match v.dtype.as_str() {
        "float32" => TensorDtype::Float32,
        "float16" => TensorDtype::Float16,
        "float64" => TensorDtype::Float64,
        "int8" => TensorDtype::Int8,
        "uint8" => TensorDtype::Uint8,
        "int32" => TensorDtype::Int32,
        "int64" => TensorDtype::Int64,
        "bool" => TensorDtype::Bool,
        other => bail!(
            "{}: '{}' has element type {other}, which packages do not support",
            model.display(),
            v.name
        ),
    };
    let shape = v
        .shape
        .as_ref()
        .with_context(|| format!("{}: '{}' has no declared shape", model.display(), v.name))?
        .iter()
        .map(|d| match d {
            ShapeDim::Fixed(n) if *n >= 0 => Dim::Fixed(*n as u64),
            ShapeDim::Symbolic(s) => Dim::Symbolic(s.clone()),
            _ => Dim::Symbolic(String::new()),
        })
        .collect();
    Ok(TensorInfo {
        name: v.name.clone(),
        dtype,
        shape,
    })
}

/// Checks that the pre-processing makes a tensor the first input accepts.
fn check_preprocess_fits(pre: &Preprocess, input: &TensorInfo) -> Result<()> {
    let want = pre.input_shape(1);
    let fits = input.shape.len() == 4
        && input
            .shape
            .iter()
            .zip(want)
            .skip(1)
            .all(|(d, w)| !matches!(d, Dim::Fixed(n) if *n as usize != w));
    let dtype_ok = match pre.dtype {
        proto::pipeline::InputDtype::Float32 => input.dtype == TensorDtype::Float32,
        proto::pipeline::InputDtype::Uint8 => input.dtype == TensorDtype::Uint8,
    };
    if !fits || !dtype_ok {
        let layout = match pre.layout {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        };
        bail!(
            "--preprocess makes {}x{} {layout} {:?} tensors, but input '{}' is {:?} {:?}",
            pre.width,
            pre.height,
            pre.dtype,
            input.name,
            input.dtype,
            input.shape
        );
    }
    Ok(())
}

fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    proto::pipeline::parse_labels(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The packaged model bytes: the file as it is, or with external data inlined.
fn model_bytes(path: &Path) -> Result<(Vec<u8>, onnx::ModelProto)> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    match onnx::decode_model(&bytes) {
        Ok(model) => Ok((bytes, model)),
        Err(onnx::OnnxError::ExternalData { .. }) => {
            let model = onnx::read_model(path)?;
            Ok((onnx::encode_model(&model)?, model))
        }
        Err(e) => Err(anyhow::Error::new(e).context(path.display().to_string())),
    }
}

/// The smoke-test files: `(package file name, bytes)` and the index.
fn smoke_vectors(
    model: &[u8],
    manifest: &Manifest,
    a: &PackageArgs,
    tolerance: Tolerance,
) -> Result<(NamedFiles, SmokeIndex)> {
    let overrides: std::collections::HashMap<String, Vec<usize>> = a
        .shapes
        .iter()
        .map(|s| crate::model::bench::parse_shape(s))
        .collect::<Result<_>>()?;
    let backend = OrtBackend::new()?;
    let mut session = backend
        .load(ModelSource::Bytes(model), &SessionOptions::default())
        .with_context(|| a.model.display().to_string())?;
    let mut rng = Rng::new(a.smoke_seed);
    let mut files = Vec::new();
    let mut cases = Vec::new();
    for case in 0..a.smoke_cases {
        let mut inputs = Vec::new();
        let mut input_files = Vec::new();
        for spec in session.inputs() {
            let shape = crate::model::bench::input_shape(spec, &overrides, 1, &a.model)?;
            let tensor = make_input(spec.dtype, &shape, &mut rng);
            let file = format!("smoke/case-{case}/input-{}.npy", input_files.len());
            files.push((file.clone(), infer::npy::encode_npy(&tensor)));
            input_files.push(TensorFile {
                name: spec.name.clone(),
                file,
            });
            inputs.push(tensor);
        }
        let outputs = session
            .run(&inputs)
            .with_context(|| format!("{}: running smoke case {case}", a.model.display()))?;
        let mut output_files = Vec::new();
        for (spec, tensor) in session.outputs().iter().zip(&outputs) {
            let file = format!("smoke/case-{case}/output-{}.npy", output_files.len());
            files.push((file.clone(), infer::npy::encode_npy(tensor)));
            output_files.push(TensorFile {
                name: spec.name.clone(),
                file,
            });
        }
        cases.push(SmokeCase {
            inputs: input_files,
            outputs: output_files,
        });
    }
    let index = SmokeIndex {
        format: SMOKE_FORMAT,
        tolerance,
        cases,
    };
    // The session's names must be the manifest's (both come from the same graph).
    let mut check = manifest.clone();
    for (name, _) in &files {
        check.files.insert(
            name.clone(),
            manifest::FileDigest {
                sha256: "0".repeat(64),
                size: 0,
            },
        );
    }
    index.check_against(&check)?;
    Ok((files, index))
}

/// Builds, signs and writes the package.
pub fn run(a: &PackageArgs) -> Result<()> {
    manifest::check_model_name(&a.name).map_err(anyhow::Error::msg)?;
    Version::parse(&a.version).map_err(anyhow::Error::msg)?;
    Version::parse(&a.min_runtime).map_err(|e| anyhow::anyhow!("--min-runtime: {e}"))?;
    let tolerance = parse_tolerance(&a.smoke_tolerance)?;
    let key = SecretKey::load(&a.key)?;
    let (model_bytes, model) = model_bytes(&a.model)?;
    let summary = onnx::inspect::summarize(&model);
    let inputs = summary
        .inputs
        .iter()
        .map(|v| tensor_info(v, &a.model))
        .collect::<Result<Vec<_>>>()?;
    let outputs = summary
        .outputs
        .iter()
        .map(|v| tensor_info(v, &a.model))
        .collect::<Result<Vec<_>>>()?;
    if inputs.is_empty() || outputs.is_empty() {
        bail!("{}: the model has no inputs or no outputs", a.model.display());
    }
    // The decoded graph is as large as the model; the session for smoke vectors needs that memory.
    drop(model);

    let preprocess = a
        .preprocess
        .as_deref()
        .map(parse_preprocess)
        .transpose()?
        .flatten();
    if let Some(pre) = &preprocess {
        check_preprocess_fits(pre, &inputs[0])?;
    }
    let labels = a.labels.as_deref().map(read_labels).transpose()?;
    if let Some(labels) = &labels
        && a.task == Task::Classification
        && let Some(Dim::Fixed(classes)) = outputs[0].shape.last()
        && *classes as usize != labels.len()
    {
        bail!(
            "{} has {} labels, but output '{}' has {classes} classes",
            a.labels.as_deref().unwrap_or(Path::new("labels")).display(),
            labels.len(),
            outputs[0].name
        );
    }
    let postprocess = match (&a.postprocess, a.task) {
        (Some(v), _) => Some(parse_postprocess(v)?),
        (None, Task::Classification) => Some(Postprocess::default()),
        (None, _) => None,
    };
    if let Some(post) = &postprocess
        && !post.classes.is_empty()
    {
        let Some(labels) = &labels else {
            bail!("--postprocess maps classes to assets, which needs --labels");
        };
        if let Some(unknown) = post.classes.keys().find(|c| !labels.contains(c)) {
            bail!("--postprocess maps class '{unknown}', which is not in the labels");
        }
    }
    let quantization: Option<Quantization> = a
        .quantization
        .as_ref()
        .map(|p| json_spec(&p.to_string_lossy(), "--quantization"))
        .transpose()?;
    let lineage: Option<Lineage> = a
        .lineage
        .as_ref()
        .map(|p| json_spec(&p.to_string_lossy(), "--lineage"))
        .transpose()?;
    let opset = summary
        .opsets
        .iter()
        .find(|o| o.domain == "ai.onnx")
        .map(|o| o.version);

    let mut manifest = Manifest {
        format: manifest::FORMAT,
        name: a.name.clone(),
        version: a.version.clone(),
        task: a.task,
        description: a.description.clone(),
        model: "model.onnx".into(),
        inputs,
        outputs,
        preprocess,
        postprocess,
        labels: labels.as_ref().map(|_| "labels.txt".to_owned()),
        quantization,
        hardware_class: a.hardware_class.clone(),
        runtime: RuntimeRequirement {
            name: "onnxruntime".into(),
            min_version: a.min_runtime.clone(),
            opset,
        },
        lineage,
        smoke_tests: None,
        files: Default::default(),
        created: Timestamp::now(),
    };
    let mut smoke = None;
    if a.smoke_inputs == SmokeInputs::Auto {
        let (files, index) = smoke_vectors(&model_bytes, &manifest, a, tolerance)?;
        manifest.smoke_tests = Some(SMOKE_INDEX.into());
        smoke = Some((files, index));
    }

    let mut builder = PackageBuilder::new(manifest);
    builder.add_bytes("model.onnx", model_bytes)?;
    if let Some(labels) = &labels {
        builder.add_bytes("labels.txt", format!("{}\n", labels.join("\n")).into_bytes())?;
    }
    let mut smoke_cases = 0;
    if let Some((files, index)) = smoke {
        smoke_cases = index.cases.len();
        builder.add_bytes(SMOKE_INDEX, index.to_json())?;
        for (name, bytes) in files {
            builder.add_bytes(&name, bytes)?;
        }
    }
    let verified = builder.write(&a.out, &key)?;
    let m = &verified.manifest;
    let summary = PackageSummary {
        path: a.out.clone(),
        sha256: verified.sha256.clone(),
        size_bytes: verified.size,
        name: m.name.clone(),
        version: m.version.clone(),
        hardware_class: m.hardware_class.to_string(),
        key_id: verified.signer.to_string(),
        files: m.files.keys().cloned().collect(),
        smoke_cases,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "wrote {} ({}): {}@{} for {}, {} files, {} smoke cases, signed by key {}\nsha256 {}",
            a.out.display(),
            fmt::bytes(verified.size),
            m.name,
            m.version,
            m.hardware_class,
            m.files.len(),
            smoke_cases,
            verified.signer,
            verified.sha256
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_files_and_inline_json_make_specs() {
        assert_eq!(
            parse_preprocess("imagenet").unwrap(),
            Some(Preprocess::imagenet())
        );
        assert_eq!(parse_preprocess("none").unwrap(), None);
        let p = parse_preprocess(r#"{"width": 64, "height": 48}"#)
            .unwrap()
            .unwrap();
        assert_eq!((p.width, p.height), (64, 48));
        let e = parse_preprocess(r#"{"width": 64, "height": 48, "meen": 1}"#).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `meen`"), "{e:#}");
        let e = parse_preprocess("missing.json").unwrap_err();
        assert!(format!("{e:#}").contains("--preprocess missing.json"), "{e:#}");
        assert_eq!(
            parse_postprocess("sigmoid").unwrap().activation,
            Activation::Sigmoid
        );
        assert_eq!(parse_postprocess(r#"{"top_k": 3}"#).unwrap().top_k, 3);
        let t = parse_tolerance("1e-3, 0").unwrap();
        assert_eq!((t.absolute, t.relative), (1e-3, 0.0));
        assert!(parse_tolerance("1e-3").is_err() && parse_tolerance("-1,0").is_err());
    }

    #[test]
    fn preprocessing_must_fit_the_first_input() {
        let input = |dims: &[u64]| TensorInfo {
            name: "x".into(),
            dtype: TensorDtype::Float32,
            shape: std::iter::once(Dim::Symbolic("batch".into()))
                .chain(dims.iter().map(|d| Dim::Fixed(*d)))
                .collect(),
        };
        check_preprocess_fits(&Preprocess::imagenet(), &input(&[3, 224, 224])).unwrap();
        let e = check_preprocess_fits(&Preprocess::imagenet(), &input(&[3, 64, 64])).unwrap_err();
        assert!(e.to_string().contains("224x224 NCHW"), "{e}");
        let nhwc = Preprocess {
            layout: Layout::Nhwc,
            ..Preprocess::imagenet()
        };
        check_preprocess_fits(&nhwc, &input(&[224, 224, 3])).unwrap();
    }
}
