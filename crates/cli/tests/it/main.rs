//! The `edgemlops` binary, driven as a user would: real files in a temporary directory, exit
//! codes, stdout and stderr.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns unwrap too

use std::path::Path;
use std::process::{Command, Output};

mod hub;
mod packaging;
mod quantize;

fn edgemlops(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgemlops"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failing command exits with `code` and prints exactly one line, an `edgemlops: error:` line containing `needle`.
fn check_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one-line error, got: {err}");
    assert!(err.starts_with("edgemlops: error: "), "{err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn resnet50_is_built_loads_and_inspects_as_53_convolutions() {
    let dir = tempfile::tempdir().unwrap();
    let o = edgemlops(dir.path(), &["model", "build", "resnet50", "--out", "r50.onnx"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let size = std::fs::metadata(dir.path().join("r50.onnx")).unwrap().len();
    assert!(
        (95_000_000..110_000_000).contains(&size),
        "ResNet-50 FP32 is about 102 MB, got {size}"
    );

    let text = stdout(&edgemlops(dir.path(), &["model", "inspect", "r50.onnx"]));
    let conv_line = text
        .lines()
        .find(|l| l.contains("Conv"))
        .unwrap_or_default()
        .to_owned();
    assert!(conv_line.split_whitespace().last() == Some("53"), "{text}");
    assert!(text.contains("[batch, 3, 224, 224]"), "{text}");

    let o = edgemlops(dir.path(), &["model", "inspect", "r50.onnx", "--json"]);
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON");
    assert_eq!(j["op_histogram"]["Conv"], 53);
    assert_eq!(j["inputs"][0]["shape"], serde_json::json!(["batch", 3, 224, 224]));
    assert_eq!(j["outputs"][0]["name"], "logits");
    assert_eq!(j["opsets"][0]["domain"], "ai.onnx");
    assert_eq!(j["parameters"]["count"], 25_530_472);
    assert_eq!(j["quantization"]["format"], "none");
    assert_eq!(j["size_bytes"], size);

    // ONNX Runtime loads and runs it (one timed run is enough to prove that).
    let o = edgemlops(
        dir.path(),
        &[
            "model",
            "bench",
            "r50.onnx",
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
fn bench_writes_json_with_every_sample_and_a_two_panel_svg() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, file) in [("mobilenetv2", "mnv2.onnx"), ("resnet50", "r50.onnx")] {
        assert!(
            edgemlops(dir.path(), &["model", "build", arch, "--out", file])
                .status
                .success()
        );
    }
    let o = edgemlops(
        dir.path(),
        &[
            "model",
            "bench",
            "r50.onnx",
            "mnv2.onnx",
            "--runs",
            "4",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--json",
            "b.json",
            "--plot",
            "b.svg",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(
        table.contains("r50.onnx") && table.contains("mnv2.onnx") && table.contains("median"),
        "{table}"
    );

    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("b.json")).unwrap()).unwrap();
    assert_eq!(j["settings"]["threads"], 1);
    assert_eq!(j["settings"]["runs"], 4);
    let models = j["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        for key in [
            "median_ms",
            "mean_ms",
            "p90_ms",
            "p99_ms",
            "min_ms",
            "max_ms",
            "std_ms",
            "load_ms",
        ] {
            assert!(m[key].as_f64().is_some_and(|v| v >= 0.0), "{key} in {m}");
        }
        assert!(m["size_bytes"].as_u64().unwrap() > 1_000_000);
        let samples = m["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 4);
        let min = samples
            .iter()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(min, m["min_ms"].as_f64().unwrap());
    }
    assert_eq!(models[0]["median_ratio"], 1.0);
    let ratio = models[1]["median_ratio"].as_f64().unwrap();
    let expected = models[1]["median_ms"].as_f64().unwrap() / models[0]["median_ms"].as_f64().unwrap();
    assert!((ratio - expected).abs() < 1e-9);

    let svg = std::fs::read_to_string(dir.path().join("b.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the plot is well-formed SVG");
    let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
    assert!(
        texts.iter().any(|t| t.contains("r50.onnx vs mnv2.onnx")),
        "title names the models"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("cores") && t.contains("1 thread")),
        "subtitle names machine and threads"
    );
    assert!(texts.contains(&"(a) Mean inference time") && texts.contains(&"(b) Inference time distribution"));
}

#[test]
fn interleaved_bench_times_every_model_the_same_number_of_rounds() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        edgemlops(dir.path(), &["model", "build", "mobilenetv2", "--out", "a.onnx"])
            .status
            .success()
    );
    std::fs::copy(dir.path().join("a.onnx"), dir.path().join("b.onnx")).unwrap();
    let o = edgemlops(
        dir.path(),
        &[
            "model",
            "bench",
            "a.onnx",
            "b.onnx",
            "--runs",
            "3",
            "--warmup",
            "2",
            "--threads",
            "1",
            "--interleave",
            "--json",
            "i.json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("i.json")).unwrap()).unwrap();
    assert_eq!(j["settings"]["interleaved"], true);
    let models = j["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        // Warm-up runs are not recorded: exactly the timed rounds.
        let samples = m["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 3, "{m}");
        assert!(samples.iter().all(|s| s.as_f64().is_some_and(|v| v > 0.0)));
        assert!(m["load_ms"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn garbage_truncated_and_missing_models_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    check_error(
        &edgemlops(dir.path(), &["model", "inspect", "/etc/hostname"]),
        1,
        "not an ONNX model",
    );
    assert!(
        edgemlops(dir.path(), &["model", "build", "mobilenetv2", "--out", "m.onnx"])
            .status
            .success()
    );
    let bytes = std::fs::read(dir.path().join("m.onnx")).unwrap();
    std::fs::write(dir.path().join("cut.onnx"), &bytes[..bytes.len() / 2]).unwrap();
    check_error(
        &edgemlops(dir.path(), &["model", "inspect", "cut.onnx"]),
        1,
        "cut.onnx: not an ONNX model",
    );
    check_error(
        &edgemlops(dir.path(), &["model", "bench", "cut.onnx"]),
        1,
        "not an ONNX model",
    );
    check_error(
        &edgemlops(dir.path(), &["model", "inspect", "nope.onnx"]),
        1,
        "nope.onnx: No such file",
    );
    check_error(
        &edgemlops(dir.path(), &["model", "bench", "m.onnx", "nope.onnx"]),
        1,
        "nope.onnx: no such file",
    );
    std::fs::write(dir.path().join("empty.onnx"), b"").unwrap();
    check_error(
        &edgemlops(dir.path(), &["model", "inspect", "empty.onnx"]),
        1,
        "empty",
    );
}

#[test]
fn external_data_is_read_from_beside_the_model_and_escapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = onnx::builder::GraphBuilder::new("g");
    let x = b.input("x", onnx::DataType::Float, &[4.into()]);
    let w = b.initializer(onnx::TensorProto::from_values(
        "w",
        &[4],
        &[1.0f32, 2.0, 3.0, 4.0],
    ));
    let y = b.node("Mul", "mul", &[&x, &w], vec![]);
    b.output(&y, onnx::DataType::Float, &[4.into()]);
    let mut model = b.finish("");
    let t = &mut model.graph.as_mut().unwrap().initializer[0];
    std::fs::write(dir.path().join("w.bin"), &t.raw_data).unwrap();
    t.raw_data.clear();
    t.data_location = onnx::proto::DataLocation::External as i32;
    let entry = |k: &str, v: &str| onnx::proto::StringStringEntryProto {
        key: k.into(),
        value: v.into(),
    };
    t.external_data = vec![
        entry("location", "w.bin"),
        entry("offset", "0"),
        entry("length", "16"),
    ];
    onnx::write_model(&model, &dir.path().join("ext.onnx")).unwrap();
    let o = edgemlops(dir.path(), &["model", "inspect", "ext.onnx", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["parameters"]["bytes"], 16);

    model.graph.as_mut().unwrap().initializer[0].external_data[0] = entry("location", "../../etc/passwd");
    onnx::write_model(&model, &dir.path().join("evil.onnx")).unwrap();
    check_error(
        &edgemlops(dir.path(), &["model", "inspect", "evil.onnx"]),
        1,
        "inside the model's directory",
    );
}

#[test]
fn a_missing_runtime_library_says_how_to_get_it() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        edgemlops(dir.path(), &["model", "build", "mobilenetv2", "--out", "m.onnx"])
            .status
            .success()
    );
    let o = Command::new(env!("CARGO_BIN_EXE_edgemlops"))
        .args(["model", "bench", "m.onnx", "--runs", "1"])
        .env("ORT_DYLIB_PATH", dir.path().join("no-such-libonnxruntime.so"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    check_error(&o, 3, "cargo xtask setup");
}

#[test]
fn usage_errors_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let o = edgemlops(dir.path(), &["model", "build", "vgg16", "--out", "x.onnx"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("resnet50, resnet101, mobilenetv2"),
        "{}",
        stderr(&o)
    );
    for cmd in [
        &["--help"][..],
        &["model", "build", "--help"],
        &["model", "inspect", "--help"],
        &["model", "bench", "--help"],
    ] {
        let o = edgemlops(dir.path(), cmd);
        assert!(o.status.success());
        assert!(stdout(&o).contains("Examples:"), "{cmd:?} has examples");
    }
    let o = edgemlops(
        dir.path(),
        &["model", "bench", "a.onnx", "b.onnx", "--label", "only-one"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("one per model"));
}
