//! Integration tests of the quantizer with ONNX Runtime: per-operator fixtures quantized and run
//! against their float originals, proof from ONNX Runtime's optimized graph that int8 kernels
//! run, and real exported models (PP-OCR) for accuracy and Constant-node weights.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

mod fixtures;
mod real_models;

use std::collections::BTreeMap;
use std::path::PathBuf;

use infer::{Backend, ModelSource, OptLevel, OrtBackend, SessionOptions, Tensor};
use ndarray::ArrayD;
use onnx::ModelProto;
use onnx::rng::Rng;
use quant::calibrate::{CalibrationOptions, calibrate};
use quant::data::Dataset;
use quant::histogram::CalibrationMethod;
use quant::qdq::{self, StaticConfig};

pub fn backend() -> OrtBackend {
    OrtBackend::new().expect("ONNX Runtime missing: run `cargo xtask setup` (cargo xtask test does)")
}

/// The PP-OCR models `cargo xtask setup` downloads.
pub fn test_model(name: &str) -> PathBuf {
    infer::runtime::locate_in_target_dir("test-models/rapidocr-1.4.4")
        .expect("test models missing: run `cargo xtask setup` (cargo xtask test does)")
        .join(name)
}

pub fn normal(shape: &[usize], seed: u64, std: f32) -> Tensor {
    let n = shape.iter().product();
    Tensor::F32(ArrayD::from_shape_vec(shape, Rng::new(seed).normal_vec(n, std)).unwrap())
}

/// Static settings with this machine's hardware-class defaults (7-bit weights on x86 without
/// VNNI, where 8-bit ones saturate `vpmaddubsw`).
pub fn machine_config() -> StaticConfig {
    let d = quant::target::HardwareClass::detect(&infer::machine::MachineInfo::detect()).defaults();
    StaticConfig {
        activations: d.activations,
        per_channel: d.per_channel,
        reduce_range: d.reduce_range,
        ..StaticConfig::default()
    }
}

/// Static quantization end to end: prepare, plan, calibrate (min/max), apply.
pub fn quantize_static(model: &ModelProto, config: &StaticConfig, calib: &Tensor) -> ModelProto {
    quantize_static_with(model, config, calib, CalibrationMethod::MinMax)
}

pub fn quantize_static_with(
    model: &ModelProto,
    config: &StaticConfig,
    calib: &Tensor,
    method: CalibrationMethod,
) -> ModelProto {
    let mut m = model.clone();
    quant::prepare::prepare(&mut m, true, config.per_channel, None).unwrap();
    let plan = qdq::plan(&m, config).unwrap();
    let data = Dataset::from_tensor(std::path::Path::new("calib"), calib.clone()).unwrap();
    let opts = CalibrationOptions {
        batch_size: 4,
        ..CalibrationOptions::for_cores(2, method.needs_histogram())
    };
    let stats = calibrate(&backend(), &m, &plan.calibrate, &data, &opts, &|_| {}).unwrap();
    let (q, _) = qdq::apply(&m, &plan, &stats.ranges(method, quant::LEVELS_8BIT)).unwrap();
    onnx::io::check_model(&q).unwrap();
    q
}

/// Runs a model (all optimizations, as in production) on one input; the first output as floats.
pub fn run(model: &ModelProto, x: &Tensor) -> Vec<f32> {
    let bytes = onnx::encode_model(model).unwrap();
    let opts = SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    let mut s = backend().load(ModelSource::Bytes(&bytes), &opts).unwrap();
    let y = s.run(std::slice::from_ref(x)).unwrap();
    y[0].to_f64_vec().into_iter().map(|v| v as f32).collect()
}

/// Operator histogram of the graph ONNX Runtime really executes (its optimized model).
pub fn executed_ops(model: &ModelProto) -> BTreeMap<String, usize> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("optimized.onnx");
    let bytes = onnx::encode_model(model).unwrap();
    let opts = SessionOptions {
        intra_threads: Some(1),
        optimization: OptLevel::All,
        optimized_model_path: Some(out.clone()),
        spinning: None,
    };
    backend().load(ModelSource::Bytes(&bytes), &opts).unwrap();
    onnx::inspect::summarize(&onnx::read_model(&out).unwrap()).op_histogram
}

/// Relative RMS error of `b` against `a`.
pub fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let s: f64 = a.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    let e: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    (e / s.max(1e-30)).sqrt()
}

/// SQNR in dB of `b` against `a`.
pub fn sqnr_db(a: &[f32], b: &[f32]) -> f64 {
    -20.0 * rel_rms(a, b).log10()
}
