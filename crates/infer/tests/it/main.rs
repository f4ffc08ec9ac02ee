//! Integration tests of the ONNX Runtime backend with real models: the ONNX I/O round trip is
//! checked by running the original and the rewritten file and comparing outputs bit for bit.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::path::PathBuf;

use infer::{Backend, InferError, ModelSource, OrtBackend, SessionOptions, Tensor};
use ndarray::ArrayD;
use onnx::rng::Rng;
use onnx::zoo::{self, Architecture};

/// The PP-OCR models `cargo xtask setup` downloads (real exporter output: Constant-node weights,
/// value_info, dynamic dimensions).
fn test_model(name: &str) -> PathBuf {
    let dir = infer::runtime::locate_in_target_dir("test-models/rapidocr-1.4.4")
        .expect("test models missing: run `cargo xtask setup` (cargo xtask test does)");
    dir.join(name)
}

fn backend() -> OrtBackend {
    OrtBackend::new().expect("ONNX Runtime missing: run `cargo xtask setup` (cargo xtask test does)")
}

fn random_input(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::F32(ArrayD::from_shape_vec(shape, Rng::new(seed).normal_vec(n, 1.0)).unwrap())
}

/// Runs `original` and its read → write copy on the same input; outputs must match bit for bit.
fn check_round_trip(original: &[u8], input_shape: &[usize]) {
    let model = onnx::decode_model(original).unwrap();
    let rewritten = onnx::encode_model(&model).unwrap();
    assert_eq!(
        onnx::decode_model(&rewritten).unwrap(),
        model,
        "decode(encode(m)) == m"
    );
    let b = backend();
    let opts = SessionOptions {
        intra_threads: Some(1),
        ..Default::default()
    };
    let mut a = b.load(ModelSource::Bytes(original), &opts).unwrap();
    let mut c = b.load(ModelSource::Bytes(&rewritten), &opts).unwrap();
    assert_eq!(a.inputs(), c.inputs());
    assert_eq!(a.outputs(), c.outputs());
    let x = random_input(input_shape, 42);
    let ya = a.run(std::slice::from_ref(&x)).unwrap();
    let yc = c.run(&[x]).unwrap();
    assert!(!ya.is_empty());
    for (p, q) in ya.iter().zip(&yc) {
        let (p, q) = (p.as_f32().unwrap(), q.as_f32().unwrap());
        assert_eq!(p.shape(), q.shape());
        assert!(
            p.iter().zip(q.iter()).all(|(u, v)| u.to_bits() == v.to_bits()),
            "outputs differ"
        );
        assert!(
            p.iter().any(|v| *v != 0.0),
            "a constant-zero output would prove nothing"
        );
    }
}

#[test]
fn round_trip_of_exported_classifier_runs_bit_identically() {
    let bytes = std::fs::read(test_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")).unwrap();
    check_round_trip(&bytes, &[1, 3, 48, 192]);
}

#[test]
fn round_trip_of_exported_detector_with_constant_weights_runs_bit_identically() {
    let bytes = std::fs::read(test_model("ch_PP-OCRv4_det_infer.onnx")).unwrap();
    let model = onnx::decode_model(&bytes).unwrap();
    let constants = model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type == "Constant")
        .count();
    assert!(constants > 0, "the detector keeps weights in Constant nodes");
    check_round_trip(&bytes, &[1, 3, 64, 96]);
}

#[test]
fn round_trip_of_built_mobilenetv2_runs_bit_identically() {
    let bytes = onnx::encode_model(&zoo::build(Architecture::MobileNetV2, 3)).unwrap();
    check_round_trip(&bytes, &[1, 3, 224, 224]);
}

#[test]
fn built_models_give_finite_outputs_of_order_one() {
    // Exploding or vanishing activations would make benchmark numbers meaningless (denormals).
    let bytes = onnx::encode_model(&zoo::build(Architecture::ResNet50, 1)).unwrap();
    let mut s = backend()
        .load(ModelSource::Bytes(&bytes), &SessionOptions::default())
        .unwrap();
    assert_eq!(infer::format_shape(&s.inputs()[0].shape), "[?, 3, 224, 224]");
    let y = s
        .run(&[random_input(&zoo::input_dims(2).map(|d| d as usize), 1)])
        .unwrap();
    let y = y[0].as_f32().unwrap();
    assert_eq!(y.shape(), &[2, 1000]);
    let rms = (y.iter().map(|v| v * v).sum::<f32>() / y.len() as f32).sqrt();
    assert!(y.iter().all(|v| v.is_finite()));
    assert!((0.05..50.0).contains(&rms), "logit rms {rms}");
}

#[test]
fn inputs_of_the_wrong_shape_type_or_count_are_typed_errors() {
    let bytes = std::fs::read(test_model("ch_ppocr_mobile_v2.0_cls_infer.onnx")).unwrap();
    let mut s = backend()
        .load(ModelSource::Bytes(&bytes), &SessionOptions::default())
        .unwrap();
    let e = s.run(&[random_input(&[1, 4, 48, 192], 1)]).unwrap_err();
    assert!(matches!(e, InferError::InputShape { .. }), "{e}");
    assert!(
        e.to_string().contains("[?, 3, ?, ?]") || e.to_string().contains("[?, 3, 48, 192]"),
        "{e}"
    );
    let e = s
        .run(&[Tensor::U8(ArrayD::zeros(vec![1, 3, 48, 192]))])
        .unwrap_err();
    assert!(matches!(e, InferError::InputType { .. }), "{e}");
    let e = s.run(&[]).unwrap_err();
    assert!(matches!(e, InferError::InputCount { expected: 1, got: 0 }), "{e}");
}

#[test]
fn garbage_is_an_invalid_model() {
    let e = backend()
        .load(ModelSource::Bytes(b"not a model"), &SessionOptions::default())
        .unwrap_err();
    assert!(matches!(e, InferError::ModelInvalid { .. }), "{e}");
}

#[test]
fn the_optimized_graph_can_be_saved() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("opt.onnx");
    let bytes = onnx::encode_model(&zoo::build(Architecture::MobileNetV2, 3)).unwrap();
    let opts = SessionOptions {
        optimized_model_path: Some(out.clone()),
        ..Default::default()
    };
    backend().load(ModelSource::Bytes(&bytes), &opts).unwrap();
    let optimized = onnx::read_model(&out).unwrap();
    let s = onnx::inspect::summarize(&optimized);
    assert!(
        !s.op_histogram.contains_key("Clip"),
        "ORT fuses Conv+Clip: {:?}",
        s.op_histogram
    );
}
