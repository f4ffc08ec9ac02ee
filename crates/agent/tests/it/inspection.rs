//! The visual-inspection application end to end with the real binaries: the committed VQI
//! reference model is signed and deployed through the hub, generated photos of a damaged pole are
//! sent to the agent's HTTP API, and the hub's asset register turns the pole's condition to
//! damaged (`major`) and raises its `asset_condition` alarm; photos of a good transformer leave it
//! good without an alarm; `repaired` clears the alarm.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infer::Tensor;
use package::{Manifest, PackageBuilder};
use serde_json::{Value, json};
use vqi::generate::photo_seed;
use vqi::scene::{PhotoSpec, render};
use vqi::taxonomy::{AssetType, Class, Health};

use super::support::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/vqi")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The FP32 reference model signed as `vqi@1.0.0` for any hardware class, with a smoke vector
/// computed here by ONNX Runtime.
fn vqi_package(dir: &Path) -> PathBuf {
    let model = fixtures().join("model.onnx");
    let input = Tensor::F32(ndarray::ArrayD::from_shape_fn(vec![1, 3, 64, 64], |i| {
        ((i[1] * 13 + i[2] * 5 + i[3]) % 17) as f32 / 8.0 - 1.0
    }));
    let logits = run_model(&model, &input);
    let manifest: Manifest = serde_json::from_value(json!({
        "format": 1, "name": "vqi", "version": "1.0.0", "task": "classification", "model": "model.onnx",
        "inputs": [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 64, 64]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 12]}],
        "preprocess": read_json(&fixtures().join("preprocess.json")),
        "postprocess": read_json(&fixtures().join("postprocess.json")),
        "labels": "labels.txt",
        "smoke_tests": "smoke/index.json",
        "hardware_class": "any", "runtime": {"name": "onnxruntime", "min_version": "1.17.0"},
        "files": {}, "created": "2026-12-04T12:00:00Z",
    }))
    .unwrap();
    let mut b = PackageBuilder::new(manifest);
    b.add_file("model.onnx", &model).unwrap();
    b.add_file("labels.txt", &fixtures().join("labels.txt")).unwrap();
    add_smoke(&mut b, &dir.join("vqi-build"), &input, &logits, 1e-3);
    let path = dir.join("vqi-1.0.0.emp");
    b.write(&path, &key()).unwrap();
    path
}

/// Photo 0 of `edgemlops vqi generate --count 1 --seed SEED --class <asset>_<health>` (PNG,
/// 64 px). The seeds the test uses are photos the reference model classifies right (it is
/// 92.5 % right on damaged photos of the held-out set): this test checks the path from a photo
/// to the asset register, not the model's accuracy (`vqi eval` and the fixtures' README do).
fn photo(asset: AssetType, health: Health, seed: u64) -> Vec<u8> {
    let (w, h, rgb) = render(&PhotoSpec {
        class: Class { asset, health },
        seed: photo_seed(seed, 0),
        size: 64,
        shift: None,
    });
    let img = image::RgbImage::from_raw(w, h, rgb).unwrap();
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

fn asset(hub: &Hub, id: &str) -> Value {
    hub.api("GET", &format!("/assets/{id}"), None)
}

#[test]
fn photos_of_a_damaged_pole_turn_its_condition_to_damaged_and_raise_an_alarm() {
    let hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    hub.push(&vqi_package(work.path()));
    for (id, kind) in [("P-17", "pole"), ("X-3", "transformer")] {
        hub.api(
            "POST",
            "/assets",
            Some(json!({"id": id, "name": format!("{kind} {id}"), "type": kind, "site": "Feeder 4"})),
        );
    }
    let token = hub.add_device("inspector-1");
    let config = agent_config(work.path(), "inspector-1", &token, &hub.mqtt, "");
    let agent = Agent::start(&config, None);
    let id = hub.deploy("inspector-1", "vqi", "1.0.0");
    let c = hub.wait_command(&id, Duration::from_secs(60));
    assert_eq!(c["status"], "successful", "{c}\n{}", agent.log());

    // A field engineer photographs the damaged pole three times, the good transformer twice.
    let mut sent = 0;
    for seed in [1, 2, 3] {
        let (status, r) = agent.infer(&photo(AssetType::Pole, Health::Damaged, seed), "P-17");
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["model"]["version"], "1.0.0");
        assert_eq!(r["predictions"][0]["label"], "pole_damaged", "{r}");
        assert_eq!(r["condition"], "major", "{r}");
        sent += 1;
    }
    for seed in [3, 4] {
        let (status, r) = agent.infer(&photo(AssetType::Transformer, Health::Good, seed), "X-3");
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["predictions"][0]["label"], "transformer_good", "{r}");
        sent += 1;
    }
    wait_until(
        "every inspection linked at the hub",
        Duration::from_secs(30),
        || {
            let count = |id| asset(&hub, id)["inspection_count"].as_u64().unwrap_or(0);
            count("P-17") + count("X-3") == sent
        },
    );

    let pole = asset(&hub, "P-17");
    assert_eq!(pole["condition"], "major", "{pole}");
    assert_eq!(pole["alarm_active"], true, "{pole}");
    let transformer = asset(&hub, "X-3");
    assert_eq!(transformer["condition"], "good", "{transformer}");
    assert_eq!(transformer["alarm_active"], false, "{transformer}");

    let alarms = hub.api("GET", "/alarms?type=asset_condition&active=true", None);
    let alarms = alarms.as_array().unwrap();
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert_eq!(alarms[0]["asset"], "P-17");
    assert_eq!(alarms[0]["severity"], "major");

    let list = hub.api("GET", "/assets/maintenance", None);
    assert_eq!(list[0]["id"], "P-17", "the damaged pole comes first: {list}");

    hub.api("POST", "/assets/P-17/repaired", Some(json!({})));
    let pole = asset(&hub, "P-17");
    assert_eq!(pole["condition"], "good", "{pole}");
    assert_eq!(pole["alarm_active"], false, "{pole}");
    let active = hub.api("GET", "/alarms?type=asset_condition&active=true", None);
    assert_eq!(active.as_array().unwrap().len(), 0, "{active}");
}
