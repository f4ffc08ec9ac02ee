//! `edgemlops model quantize`, `model optimize` and `model eval` through the real binary: the
//! acceptance command on ResNet-50, image-directory calibration on the pretrained PP-OCR
//! classifier, dynamic mode, the accuracy-aware search, and one-line errors that leave no file.

use std::path::{Path, PathBuf};

use infer::Tensor;
use ndarray::ArrayD;
use onnx::rng::Rng;

use super::{check_error, edgemlops, stderr, stdout};

const CLS: &str = "ch_ppocr_mobile_v2.0_cls_infer.onnx";

fn test_model(name: &str) -> PathBuf {
    infer::runtime::locate_in_target_dir("test-models/rapidocr-1.4.4")
        .expect("test models missing: run `cargo xtask setup` (cargo xtask test does)")
        .join(name)
}

/// A grey 48×192 text line in 0..255: dark strokes on a light background (turned by 180° if `flip`).
fn text_line(rng: &mut Rng, flip: bool) -> Vec<u8> {
    let (h, w) = (48usize, 192usize);
    let bg = 190.0 + 50.0 * rng.next_f64();
    let mut img = vec![bg; h * w];
    let (top, bottom) = (8 + rng.below(8) as usize, 32 + rng.below(8) as usize);
    let mut x = 2 + rng.below(10) as usize;
    while x < w - 10 {
        let gw = 5 + rng.below(7) as usize;
        let ink = 15.0 + 60.0 * rng.next_f64();
        let sx = x + rng.below(gw as u64 - 1) as usize;
        for y in top..bottom {
            img[y * w + sx] = ink;
            img[y * w + sx + 1] = ink;
        }
        if rng.next_f64() < 0.7 {
            let yy = top + rng.below((bottom - top - 2) as u64) as usize;
            for xx in x..x + gw {
                img[yy * w + xx] = ink;
                img[(yy + 1) * w + xx] = ink;
            }
        }
        x += gw + 2 + rng.below(4) as usize;
    }
    if flip {
        img.reverse();
    }
    img.into_iter()
        .map(|v| (v + 8.0 * rng.normal()).clamp(0.0, 255.0) as u8)
        .collect()
}

/// `n` text lines as the classifier's normalized input `[n, 3, 48, 192]`.
fn text_tensor(n: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let mut v = Vec::new();
    for i in 0..n {
        let g = text_line(&mut rng, i % 2 == 1);
        for _ in 0..3 {
            v.extend(g.iter().map(|&p| (f32::from(p) / 255.0 - 0.5) / 0.5));
        }
    }
    Tensor::F32(ArrayD::from_shape_vec(vec![n, 3, 48, 192], v).unwrap())
}

/// Writes `n` text lines as PNG (even) and JPEG (odd) files into `dir`.
fn text_images(dir: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Rng::new(seed);
    for i in 0..n {
        let g = text_line(&mut rng, i % 2 == 1);
        let rgb: Vec<u8> = g.iter().flat_map(|&p| [p, p, p]).collect();
        let img = image::RgbImage::from_raw(192, 48, rgb).unwrap();
        let name = format!("line{i:03}.{}", if i % 2 == 0 { "png" } else { "jpg" });
        img.save(dir.join(name)).unwrap();
    }
}

fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn inspect(dir: &Path, file: &str) -> serde_json::Value {
    let o = edgemlops(dir, &["model", "inspect", file, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

const CLS_PREPROCESS: &[&str] = &[
    "--size",
    "192x48",
    "--resize",
    "stretch",
    "--mean",
    "0.5,0.5,0.5",
    "--std",
    "0.5,0.5,0.5",
];

#[test]
fn static_u8s8_resnet50_loads_in_onnx_runtime_at_under_27_percent_of_the_size() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        edgemlops(d, &["model", "build", "resnet50", "--out", "r50.onnx"])
            .status
            .success()
    );
    let mut rng = Rng::new(7);
    let calib = Tensor::F32(
        ArrayD::from_shape_vec(vec![4, 3, 224, 224], rng.normal_vec(4 * 3 * 224 * 224, 1.0)).unwrap(),
    );
    infer::npy::write_npy(&d.join("calib.npy"), &calib).unwrap();
    let o = edgemlops(
        d,
        &[
            "model",
            "quantize",
            "r50.onnx",
            "--out",
            "r50.u8s8.onnx",
            "--mode",
            "static",
            "--activations",
            "u8",
            "--calibration-npy",
            "calib.npy",
            "--json",
            "report.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let fp32 = std::fs::metadata(d.join("r50.onnx")).unwrap().len();
    let int8 = std::fs::metadata(d.join("r50.u8s8.onnx")).unwrap().len();
    assert!(
        int8 * 100 <= fp32 * 27,
        "{int8} bytes is more than 27 % of {fp32}"
    );
    assert!(stdout(&o).contains("% of the input"), "{}", stdout(&o));
    let j = inspect(d, "r50.u8s8.onnx");
    assert_eq!(j["quantization"]["format"], "qdq");
    assert_eq!(j["quantization"]["activation_dtype"], "uint8");
    assert!(
        j["metadata"]["edgemlops.quantization"]
            .as_str()
            .unwrap()
            .contains("x86_64")
    );
    let r = json_file(&d.join("report.json"));
    assert_eq!(r["static"]["result"]["quantized_ops"]["Conv"], 53);
    assert_eq!(r["static"]["calibration_samples"], 4);
    let o = edgemlops(
        d,
        &[
            "model",
            "bench",
            "r50.u8s8.onnx",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn image_directory_calibration_then_eval_with_labels() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    text_images(&d.join("calib"), 12, 1);
    text_images(&d.join("eval/lines"), 16, 2);
    std::fs::copy(test_model(CLS), d.join("cls.onnx")).unwrap();
    let mut args = vec![
        "model",
        "quantize",
        "cls.onnx",
        "--out",
        "cls.int8.onnx",
        "--calibration",
        "calib",
        "--method",
        "percentile",
    ];
    args.extend(CLS_PREPROCESS);
    let o = edgemlops(d, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("percentile 99.999 calibration on 12 samples"),
        "{}",
        stdout(&o)
    );
    let j = inspect(d, "cls.int8.onnx");
    assert_eq!(j["quantization"]["format"], "qdq");
    assert_eq!(j["parameters"]["constants"], 0);
    // Labels in sorted file order: even files upright (class 1), odd turned (class 0).
    let labels: String = (0..16).map(|i| format!("{}\n", 1 - i % 2)).collect();
    std::fs::write(d.join("labels.txt"), labels).unwrap();
    let mut args = vec![
        "model",
        "eval",
        "cls.onnx",
        "cls.int8.onnx",
        "--data",
        "eval",
        "--labels",
        "labels.txt",
        "--json",
        "eval.json",
    ];
    args.extend(CLS_PREPROCESS);
    let o = edgemlops(d, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("16 samples")
            && text.contains("top-1 agreement")
            && text.contains("accuracy: reference"),
        "{text}"
    );
    let e = json_file(&d.join("eval.json"));
    assert_eq!(e["samples"], 16);
    assert!(e["top1_agreement"].as_f64().unwrap() >= 0.8, "{e}");
    assert!(e["outputs"][0]["sqnr_db"].as_f64().unwrap() > 10.0, "{e}");
    assert!(e["reference_accuracy"].as_f64().is_some());
}

#[test]
fn dynamic_quantization_needs_no_calibration() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(test_model(CLS), d.join("cls.onnx")).unwrap();
    let o = edgemlops(
        d,
        &[
            "model",
            "quantize",
            "cls.onnx",
            "--out",
            "cls.dyn.onnx",
            "--mode",
            "dynamic",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(inspect(d, "cls.dyn.onnx")["quantization"]["format"], "dynamic");
    infer::npy::write_npy(&d.join("eval.npy"), &text_tensor(8, 3)).unwrap();
    let o = edgemlops(
        d,
        &["model", "eval", "cls.onnx", "cls.dyn.onnx", "--npy", "eval.npy"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_accuracy_aware_search_prints_what_it_tried_and_writes_the_chosen_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(test_model(CLS), d.join("cls.onnx")).unwrap();
    infer::npy::write_npy(&d.join("calib.npy"), &text_tensor(32, 1)).unwrap();
    let o = edgemlops(
        d,
        &[
            "model",
            "quantize",
            "cls.onnx",
            "--out",
            "cls.best.onnx",
            "--calibration-npy",
            "calib.npy",
            "--max-accuracy-drop",
            "10",
            "--json",
            "search.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("candidate") && text.contains("<- chosen"), "{text}");
    for row in ["static u8s8 per-channel minmax", "entropy", "dynamic u8s8"] {
        assert!(text.contains(row), "{row} missing from:\n{text}");
    }
    let r = json_file(&d.join("search.json"));
    let trials = r["search"]["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 6);
    assert!(r["search"]["chosen"].as_u64().is_some());
    assert!(d.join("cls.best.onnx").is_file());
}

#[test]
fn optimize_folds_batchnorm_and_constants_of_an_exported_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(test_model(CLS), d.join("cls.onnx")).unwrap();
    let o = edgemlops(
        d,
        &[
            "model",
            "optimize",
            "cls.onnx",
            "--out",
            "cls.opt.onnx",
            "--opset",
            "13",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("fold-batchnorm-into-conv 35"),
        "{}",
        stdout(&o)
    );
    let j = inspect(d, "cls.opt.onnx");
    assert!(j["op_histogram"].get("BatchNormalization").is_none(), "{j}");
    assert_eq!(j["parameters"]["constants"], 0);
    assert_eq!(j["opsets"][0]["version"], 13);
    infer::npy::write_npy(&d.join("x.npy"), &text_tensor(8, 5)).unwrap();
    let o = edgemlops(
        d,
        &[
            "model",
            "eval",
            "cls.onnx",
            "cls.opt.onnx",
            "--npy",
            "x.npy",
            "--json",
            "e.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let e = json_file(&d.join("e.json"));
    assert_eq!(e["top1_agreement"], 1.0);
    assert!(e["outputs"][0]["max_abs_diff"].as_f64().unwrap() < 1e-4, "{e}");
    let o = edgemlops(
        d,
        &[
            "model",
            "optimize",
            "cls.onnx",
            "--out",
            "cls.3.onnx",
            "--max-steps",
            "3",
            "-v",
        ],
    );
    assert!(
        o.status.success() && stdout(&o).contains("stopped at --max-steps"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn bad_inputs_are_one_line_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(test_model(CLS), d.join("cls.onnx")).unwrap();
    std::fs::write(d.join("junk.onnx"), b"not protobuf at all").unwrap();
    infer::npy::write_npy(&d.join("calib.npy"), &text_tensor(4, 1)).unwrap();
    infer::npy::write_npy(
        &d.join("empty.npy"),
        &Tensor::F32(ArrayD::zeros(vec![0, 3, 48, 192])),
    )
    .unwrap();
    infer::npy::write_npy(
        &d.join("wrong.npy"),
        &Tensor::F32(ArrayD::zeros(vec![2, 4, 48, 192])),
    )
    .unwrap();
    std::fs::create_dir(d.join("no-images")).unwrap();
    std::fs::write(d.join("no-images/readme.txt"), "nothing here").unwrap();
    let q = |extra: &[&str]| {
        let mut a = vec!["model", "quantize", "cls.onnx", "--out", "out.onnx"];
        a.extend(extra);
        edgemlops(d, &a)
    };
    check_error(
        &edgemlops(
            d,
            &[
                "model",
                "quantize",
                "junk.onnx",
                "--out",
                "out.onnx",
                "--calibration-npy",
                "calib.npy",
            ],
        ),
        1,
        "not an ONNX model",
    );
    check_error(&q(&["--calibration-npy", "empty.npy"]), 1, "no samples");
    check_error(&q(&["--calibration-npy", "wrong.npy"]), 1, "[?, 3, ?, ?]");
    check_error(
        &q(&["--calibration", "missing-dir", "--size", "192x48"]),
        1,
        "not a directory",
    );
    check_error(
        &q(&["--calibration", "no-images", "--size", "192x48"]),
        1,
        "no .jpg, .jpeg or .png images",
    );
    check_error(
        &q(&["--calibration-npy", "calib.npy", "--exclude", "conv99"]),
        1,
        "--exclude 'conv99' matches no node",
    );
    check_error(&q(&[]), 1, "needs calibration data");
    assert!(!d.join("out.onnx").exists(), "no output after a failure");
    // An already-quantized model is refused, not quantized twice.
    let o = q(&["--calibration-npy", "calib.npy", "--exclude", "HardSigmoid"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = edgemlops(
        d,
        &[
            "model",
            "quantize",
            "out.onnx",
            "--out",
            "again.onnx",
            "--calibration-npy",
            "calib.npy",
        ],
    );
    check_error(&o, 1, "already quantized (qdq)");
    assert!(!d.join("again.onnx").exists());
    for cmd in [
        ["model", "quantize", "--help"],
        ["model", "optimize", "--help"],
        ["model", "eval", "--help"],
    ] {
        let o = edgemlops(d, &cmd);
        assert!(o.status.success() && stdout(&o).contains("Examples:"), "{cmd:?}");
    }
}
