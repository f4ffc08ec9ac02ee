//! Test support: the real `edgemlops-hub` (found next to this package's binary when fresh, else
//! built with `cargo build -p hub`: `testsupport/hub_binary.rs`), the real
//! `edgemlops-agent`, tiny classifier packages signed with a test key, and the hub's REST API.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use infer::{Backend, ModelSource, OrtBackend, SessionOptions, Tensor};
use onnx::DataType;
use onnx::builder::GraphBuilder;
use package::smoke::{SMOKE_FORMAT, SmokeCase, SmokeIndex, TensorFile, Tolerance};
use package::{Manifest, PackageBuilder, SecretKey};
use serde_json::{Value, json};

#[path = "../../../../testsupport/hub_binary.rs"]
mod shared;

pub const ADMIN: &str = "agent-test-admin-token-0123456789";
pub const LABELS: &str = "pole_good\npole_damaged\ntower_good\ntower_damaged\n";

/// An HTTP client (rustls needs its crypto provider chosen first).
pub fn http() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::new()
}

/// The publisher key devices trust.
pub fn key() -> SecretKey {
    SecretKey::from_seed(&[9; 32])
}

/// A key the hub trusts but devices do not.
pub fn other_key() -> SecretKey {
    SecretKey::from_seed(&[13; 32])
}

pub fn agent_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_edgemlops-agent"))
}

/// The `edgemlops-hub` binary, fresh (`EDGEMLOPS_HUB_BIN` overrides).
pub fn hub_binary() -> &'static Path {
    shared::hub_binary(agent_binary())
}

fn lines(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// A running hub on random ports in a temp directory (restartable on the same ports).
pub struct Hub {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub mqtt: String,
    child: Option<Child>,
    http_client: reqwest::blocking::Client,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Hub {
    pub fn start() -> Hub {
        Hub::start_with("")
    }

    /// A hub whose configuration file also holds `extra` (TOML sections other than `[registry]`).
    pub fn start_with(extra: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("publisher.pub"), key().public().to_file_text()).unwrap();
        std::fs::write(dir.path().join("other.pub"), other_key().public().to_file_text()).unwrap();
        std::fs::write(
            dir.path().join("hub.toml"),
            format!("[registry]\ntrusted_keys = [\"publisher.pub\", \"other.pub\"]\n{extra}"),
        )
        .unwrap();
        let mut hub = Hub {
            dir,
            url: String::new(),
            mqtt: String::new(),
            child: None,
            http_client: http(),
        };
        hub.spawn("127.0.0.1:0", "127.0.0.1:0");
        hub
    }

    fn spawn(&mut self, http: &str, mqtt: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("hub.log"))
            .unwrap();
        let mut child = Command::new(hub_binary())
            .args([
                "serve",
                "--config",
                "hub.toml",
                "--data-dir",
                "data",
                "--http",
                http,
            ])
            .args(["--mqtt", mqtt, "--admin-token", ADMIN])
            .current_dir(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let rx = lines(&mut child);
        self.child = Some(child);
        loop {
            let line = rx.recv_timeout(Duration::from_secs(60)).expect("the hub starts");
            if let Some(rest) = line.strip_prefix("edgemlops-hub ready ") {
                for w in rest.split_whitespace() {
                    if let Some(a) = w.strip_prefix("http=") {
                        self.url = format!("http://{a}");
                    }
                    if let Some(a) = w.strip_prefix("mqtt=") {
                        self.mqtt = a.to_owned();
                    }
                }
                break;
            }
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the hub again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        let (http, mqtt) = (
            self.url.trim_start_matches("http://").to_owned(),
            self.mqtt.clone(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The old listener may linger a moment.
            let free = std::net::TcpListener::bind(&http).is_ok();
            if free || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn(&http, &mqtt);
    }

    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/api/v1{path}", self.url);
        let req = match method {
            "GET" => self.http_client.get(&url),
            "POST" => self.http_client.post(&url),
            _ => unreachable!(),
        }
        .bearer_auth(ADMIN);
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        let resp = req.send().unwrap();
        let status = resp.status();
        let text = resp.text().unwrap();
        assert!(status.is_success(), "{method} {path}: {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub fn push(&self, package: &Path) -> Value {
        let resp = self
            .http_client
            .post(format!("{}/api/v1/packages", self.url))
            .bearer_auth(ADMIN)
            .header("content-type", "application/octet-stream")
            .body(std::fs::read(package).unwrap())
            .send()
            .unwrap();
        let status = resp.status();
        let text = resp.text().unwrap();
        assert!(status.is_success(), "push: {status}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Registers a device; returns its token.
    pub fn add_device(&self, id: &str) -> String {
        let v = self.api("POST", "/devices", Some(json!({ "id": id })));
        v["token"].as_str().unwrap().to_owned()
    }

    pub fn deploy(&self, device: &str, model: &str, version: &str) -> String {
        let v = self.api(
            "POST",
            "/commands/software_update",
            Some(json!({"device": device, "model": model, "version": version})),
        );
        v["id"].as_str().unwrap().to_owned()
    }

    pub fn rollback(&self, device: &str, model: &str) -> String {
        let v = self.api(
            "POST",
            "/commands/rollback",
            Some(json!({"device": device, "model": model})),
        );
        v["id"].as_str().unwrap().to_owned()
    }

    /// Waits until the command is final; returns it.
    pub fn wait_command(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.api("GET", &format!("/commands/{id}"), None);
            let status = c["status"].as_str().unwrap_or_default().to_owned();
            if status == "successful" || status == "failed" {
                return c;
            }
            assert!(Instant::now() < deadline, "command {id} still {status}: {c}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn events(&self, device: &str) -> Vec<Value> {
        let v = self.api(
            "GET",
            &format!("/events?device={device}&type=inspection&limit=10000"),
            None,
        );
        v.as_array().cloned().unwrap_or_default()
    }
}

/// A tiny classifier: [1, 3, 8, 8] → global average pool → Gemm → 4 logits; `bias` makes versions
/// differ; `side` changes the input size (for the shape-mismatch case).
pub fn tiny_model(path: &Path, bias: f32, side: i64) {
    let mut b = GraphBuilder::new("tiny");
    let x = b.input(
        "input",
        DataType::Float,
        &[1.into(), 3.into(), side.into(), side.into()],
    );
    let w = b.initializer(onnx::TensorProto::from_values(
        "w",
        &[3, 4],
        &[
            0.5f32, -1.0, 2.0, 0.25, 1.5, 0.0, -0.5, 1.0, -2.0, 0.75, 1.0, -0.25,
        ],
    ));
    let c = b.initializer(onnx::TensorProto::from_values("c", &[4], &[bias, -0.2, 0.3, 0.0]));
    let pooled = b.node("GlobalAveragePool", "pool", &[&x], vec![]);
    let flat = b.node(
        "Flatten",
        "flatten",
        &[&pooled],
        vec![onnx::builder::attr_int("axis", 1)],
    );
    let y = b.node_to("Gemm", "fc", &[&flat, &w, &c], "logits", vec![]);
    b.output(&y, DataType::Float, &[1.into(), 4.into()]);
    onnx::write_model(&b.finish("tiny test classifier"), path).unwrap();
}

/// How to spoil a package (the signature stays valid unless said otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spoil {
    None,
    /// The expected smoke output is off by 1.
    SmokeMismatch,
    /// The manifest declares 8x8 input, the model takes 16x16.
    InputShape,
    /// Signed by an unknown key.
    WrongKey,
}

/// The model's output for `input` in ONNX Runtime.
pub fn run_model(model: &Path, input: &Tensor) -> Tensor {
    let mut session = OrtBackend::new()
        .unwrap()
        .load(ModelSource::File(model), &SessionOptions::default())
        .unwrap();
    session.run(std::slice::from_ref(input)).unwrap().remove(0)
}

/// Adds a one-case smoke test (`input` → `logits`, within `absolute` and a relative 1e-3) to a
/// package; the vectors are written to `work/smoke/` first.
pub fn add_smoke(b: &mut PackageBuilder, work: &Path, input: &Tensor, logits: &Tensor, absolute: f64) {
    std::fs::create_dir_all(work.join("smoke")).unwrap();
    infer::npy::write_npy(&work.join("smoke/input.npy"), input).unwrap();
    infer::npy::write_npy(&work.join("smoke/logits.npy"), logits).unwrap();
    let index = SmokeIndex {
        format: SMOKE_FORMAT,
        tolerance: Tolerance {
            absolute,
            relative: 1e-3,
        },
        cases: vec![SmokeCase {
            inputs: vec![TensorFile {
                name: "input".into(),
                file: "smoke/input.npy".into(),
            }],
            outputs: vec![TensorFile {
                name: "logits".into(),
                file: "smoke/logits.npy".into(),
            }],
        }],
    };
    b.add_bytes("smoke/index.json", index.to_json()).unwrap();
    b.add_file("smoke/input.npy", &work.join("smoke/input.npy"))
        .unwrap();
    b.add_file("smoke/logits.npy", &work.join("smoke/logits.npy"))
        .unwrap();
}

/// A signed package `tiny@version` in `dir`.
pub fn package(dir: &Path, version: &str, bias: f32, spoil: Spoil) -> PathBuf {
    let work = dir.join(format!("build-{version}-{spoil:?}"));
    std::fs::create_dir_all(&work).unwrap();
    let side = if spoil == Spoil::InputShape { 16 } else { 8 };
    let model_path = work.join("model.onnx");
    tiny_model(&model_path, bias, side);
    let input = Tensor::F32(ndarray::ArrayD::from_shape_fn(
        vec![1, 3, side as usize, side as usize],
        |i| ((i[1] * 7 + i[2] * 3 + i[3]) % 11) as f32 / 11.0 - 0.5,
    ));
    let mut out = run_model(&model_path, &input);
    if spoil == Spoil::SmokeMismatch
        && let Tensor::F32(a) = &mut out
    {
        a.iter_mut().for_each(|x| *x += 1.0);
    }
    let manifest: Manifest = serde_json::from_value(json!({
        "format": 1, "name": "tiny", "version": version, "task": "classification", "model": "model.onnx",
        "inputs": [{"name": "input", "dtype": "float32", "shape": [1, 3, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 4]}],
        "preprocess": {"width": 8, "height": 8},
        "postprocess": {"activation": "softmax", "top_k": 3, "classes": {
            "pole_good": {"asset_type": "pole", "condition": "good"},
            "pole_damaged": {"asset_type": "pole", "condition": "major"},
            "tower_good": {"asset_type": "tower", "condition": "good"},
            "tower_damaged": {"asset_type": "tower", "condition": "critical"}}},
        "labels": "labels.txt",
        "smoke_tests": "smoke/index.json",
        "hardware_class": "any", "runtime": {"name": "onnxruntime", "min_version": "1.17.0"},
        "files": {}, "created": "2026-11-25T12:00:00Z",
    }))
    .unwrap();
    let mut b = PackageBuilder::new(manifest);
    b.add_file("model.onnx", &model_path).unwrap();
    b.add_bytes("labels.txt", LABELS.as_bytes().to_vec()).unwrap();
    add_smoke(&mut b, &work, &input, &out, 1e-4);
    let out_path = dir.join(format!("tiny-{version}-{spoil:?}.emp"));
    let signer = if spoil == Spoil::WrongKey {
        other_key()
    } else {
        key()
    };
    b.write(&out_path, &signer).unwrap();
    out_path
}

/// A PNG image of `w`x`h`.
pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(seed), (y as u8).wrapping_add(seed), seed])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

/// A running agent.
pub struct Agent {
    pub child: Child,
    pub url: String,
    pub stderr_path: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an agent config in `dir` (data in `dir/data`); returns its path.
pub fn agent_config(dir: &Path, device: &str, token: &str, mqtt: &str, extra: &str) -> PathBuf {
    std::fs::write(dir.join("publisher.pub"), key().public().to_file_text()).unwrap();
    let text = format!(
        "device_id = \"{device}\"\ndata_dir = \"data\"\ntrusted_keys = [\"publisher.pub\"]\n{extra}\n\
         [hub]\nmqtt = \"{mqtt}\"\ntoken = \"{token}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 500\n\
         [inference]\nlisten = \"127.0.0.1:0\"\nreport_interval_secs = 3600\n\
         [download]\nretries = 3\nbackoff_ms = 100\nbackoff_max_ms = 300\ntimeout_secs = 5\n",
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

impl Agent {
    /// Starts the agent; waits for its ready line unless `fault` is set and reached first.
    pub fn start(config: &Path, fault: Option<&str>) -> Agent {
        Self::start_with(&["run"], config, fault)
    }

    /// Starts `edgemlops-agent ARGS --config CONFIG` (stderr appended to a log beside the
    /// config); waits for its ready line unless `fault` is set and reached first.
    pub fn start_with(args: &[&str], config: &Path, fault: Option<&str>) -> Agent {
        let dir = config.parent().unwrap();
        let stderr_path = dir.join(format!("agent-{}.log", std::process::id()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let mut cmd = Command::new(agent_binary());
        cmd.args(args)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(log)
            .env("EDGEMLOPS_LOG", "info");
        match fault {
            Some(f) => cmd.env("EDGEMLOPS_AGENT_FAULT", f),
            None => cmd.env_remove("EDGEMLOPS_AGENT_FAULT"),
        };
        let mut child = cmd.spawn().unwrap();
        let rx = lines(&mut child);
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            panic!(
                "the agent did not start: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            )
        });
        let url = line
            .strip_prefix("edgemlops-agent ready ")
            .and_then(|r| r.split_whitespace().find_map(|w| w.strip_prefix("http=")))
            .map(|a| format!("http://{a}"))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"));
        Agent {
            child,
            url,
            stderr_path,
        }
    }

    pub fn infer(&self, image: &[u8], asset: &str) -> (u16, Value) {
        let resp = http()
            .post(format!("{}/v1/infer?asset_id={asset}", self.url))
            .header("content-type", "image/png")
            .body(image.to_vec())
            .send()
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    pub fn models(&self) -> Value {
        http()
            .get(format!("{}/v1/models", self.url))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// Waits until `f` holds.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
