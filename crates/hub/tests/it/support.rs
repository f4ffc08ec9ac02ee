//! Test support: the storage backends every test runs on ([`Backend`], [`on_both_backends!`]), a
//! real `edgemlops-hub` process on random ports in a temp directory, an API client, signed test
//! packages, and MQTT clients (rumqttc v3.1.1 and v5, mosquitto_pub/sub).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hub::Settings;
use hub::blobs::BlobsSettings;
use package::{Manifest, PackageBuilder, SecretKey, TrustedKeys};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::garage::Garage;
use crate::postgres::Postgres;

/// Defines, for each listed test function `f(backend: Backend)`, two tests: `sqlite_files::f`
/// on the embedded engines (SQLite and a local directory) and `postgres_s3::f` on PostgreSQL and
/// an S3-compatible store (Garage), both real and started by the tests themselves.
macro_rules! on_both_backends {
    ($(async: $($a:ident),+ $(,)?;)? $(sync: $($s:ident),+ $(,)?;)?) => {
        mod sqlite_files {
            $($(
                #[tokio::test]
                async fn $a() {
                    super::$a($crate::support::Backend::Embedded).await;
                }
            )+)?
            $($(
                #[test]
                fn $s() {
                    super::$s($crate::support::Backend::Embedded);
                }
            )+)?
        }
        mod postgres_s3 {
            $($(
                #[tokio::test]
                async fn $a() {
                    super::$a($crate::support::Backend::Shared).await;
                }
            )+)?
            $($(
                #[test]
                fn $s() {
                    super::$s($crate::support::Backend::Shared);
                }
            )+)?
        }
    };
}

/// Where a test hub keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded defaults: SQLite and a local directory in the hub's data directory.
    Embedded,
    /// PostgreSQL (a fresh database of the test process's cluster) and Garage (a fresh prefix of
    /// the test process's bucket).
    Shared,
}

impl Backend {
    /// Fresh storage for one hub (several nodes share one).
    pub fn storage(self) -> Storage {
        match self {
            Self::Embedded => Storage::default(),
            Self::Shared => {
                let pg = Postgres::shared();
                let g = Garage::shared();
                Storage {
                    database_url: pg.new_database("hub"),
                    blobs: BlobsSettings {
                        url: format!("s3://{}/t-{}", g.bucket, unique()),
                        endpoint: g.endpoint.clone(),
                        region: g.region.clone(),
                        access_key_id: g.access_key_id.clone(),
                        secret_access_key: g.secret_access_key.clone(),
                    },
                }
            }
        }
    }
}

/// A unique name part (process id, counter, time).
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A hub's database and blob store (empty values: the embedded defaults in its data directory).
#[derive(Clone, Debug, Default)]
pub struct Storage {
    /// `database.url`.
    pub database_url: String,
    /// `[blobs]`.
    pub blobs: BlobsSettings,
}

impl Storage {
    /// The `[database]` and `[blobs]` sections of a hub configuration file.
    pub fn config_toml(&self) -> String {
        let mut t = String::new();
        if !self.database_url.is_empty() {
            t.push_str(&format!("[database]\nurl = {:?}\n", self.database_url));
        }
        let b = &self.blobs;
        if !b.url.is_empty() {
            t.push_str(&format!(
                "[blobs]\nurl = {:?}\nendpoint = {:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n",
                b.url, b.endpoint, b.region, b.access_key_id, b.secret_access_key
            ));
        }
        t
    }

    /// In-process hub settings in `data_dir` on this storage.
    pub fn settings(&self, data_dir: PathBuf, trusted: TrustedKeys) -> Settings {
        let mut s = Settings::new(data_dir, trusted);
        s.database_url.clone_from(&self.database_url);
        s.blobs = self.blobs.clone();
        s
    }
}

/// The admin token every test hub starts with.
pub const ADMIN: &str = "test-admin-token-0123456789";

/// A publisher key from a seed.
pub fn publisher(seed: u8) -> SecretKey {
    SecretKey::from_seed(&[seed; 32])
}

/// Writes `key`'s public key file into `dir` and returns its path.
pub fn trust(dir: &Path, key: &SecretKey, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.pub"));
    std::fs::write(&path, key.public().to_file_text()).unwrap();
    path
}

/// Deterministic filler bytes.
pub fn filler(len: usize, seed: u8) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A signed package of `name@version` for `class` with a `model_bytes`-byte model file.
pub fn package(
    dir: &Path,
    key: &SecretKey,
    name: &str,
    version: &str,
    class: &str,
    model_bytes: usize,
) -> PathBuf {
    let manifest: Manifest = serde_json::from_value(json!({
        "format": 1,
        "name": name,
        "version": version,
        "task": "classification",
        "model": "model.onnx",
        "inputs": [{"name": "input", "dtype": "float32", "shape": [1, 3, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 4]}],
        "hardware_class": class,
        "runtime": {"name": "onnxruntime", "min_version": "1.17.0"},
        "files": {},
        "created": "2024-05-01T12:00:00Z",
    }))
    .unwrap();
    let mut b = PackageBuilder::new(manifest);
    b.add_bytes(
        "model.onnx",
        filler(model_bytes, version.len() as u8 + class.len() as u8),
    )
    .unwrap();
    let out = dir.join(format!("{name}-{version}-{class}.emp"));
    b.write(&out, key).unwrap();
    out
}

/// sha256 of bytes, hex.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A running hub process.
#[derive(Debug)]
pub struct TestHub {
    /// Its temp directory (data dir inside).
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:port`.
    pub http: String,
    /// MQTT port.
    pub mqtt_port: u16,
    /// MQTT TLS port, when started with TLS.
    pub mqtts_port: Option<u16>,
    /// Its database and blob store (to start it again on the same ones, or a second node).
    pub storage: Storage,
    child: Option<Child>,
}

/// Options of a test hub.
#[derive(Debug, Default)]
pub struct Options {
    /// Extra TOML for the config file (no `[database]` or `[blobs]`: see `storage`).
    pub config: String,
    /// Reuse this directory (restart after a crash).
    pub dir: Option<tempfile::TempDir>,
    /// Database and blob store (default: embedded in the data directory).
    pub storage: Storage,
}

impl TestHub {
    /// A hub on `backend` that trusts the key of [`publisher`]`(1)`.
    pub fn start(backend: Backend) -> Self {
        Self::start_with(Options {
            storage: backend.storage(),
            ..Options::default()
        })
    }

    /// A hub with options.
    pub fn start_with(options: Options) -> Self {
        let dir = options.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let key_file = trust(dir.path(), &publisher(1), "publisher");
        let config = format!(
            "{}\n[registry]\ntrusted_keys = [{:?}]\nmax_package_bytes = 2000000\n{}\n",
            options.storage.config_toml(),
            key_file.display().to_string(),
            options.config
        );
        std::fs::write(dir.path().join("hub.toml"), config).unwrap();
        let stderr = std::fs::File::create(dir.path().join("hub.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_edgemlops-hub"))
            .args(["serve", "--config", "hub.toml", "--data-dir", "data"])
            .args([
                "--http",
                "127.0.0.1:0",
                "--mqtt",
                "127.0.0.1:0",
                "--admin-token",
                ADMIN,
            ])
            .current_dir(dir.path())
            .env("EDGEMLOPS_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("edgemlops-hub starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("edgemlops-hub ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let log = std::fs::read_to_string(dir.path().join("hub.log")).unwrap_or_default();
            panic!("the hub did not report ready; its log:\n{log}")
        });
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap()
                .to_owned()
        };
        let port = |a: String| a.rsplit(':').next().unwrap().parse::<u16>().ok();
        Self {
            storage: options.storage,
            http: format!("http://{}", field("http")),
            mqtt_port: port(field("mqtt")).unwrap(),
            mqtts_port: port(field("mqtts")),
            child: Some(child),
            dir,
        }
    }

    /// The hub's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hub.log")).unwrap_or_default()
    }

    /// An API client with the admin token.
    pub fn api(&self) -> Api {
        Api::new(&self.http, ADMIN)
    }

    /// Registers a device and returns its token.
    pub fn device(&self, id: &str) -> String {
        let r = self.api().post("/api/v1/devices", &json!({ "id": id }));
        assert_eq!(r.0, 201, "{}", r.1);
        r.1["token"].as_str().unwrap().to_owned()
    }

    /// Kills the process with SIGKILL and returns the directory for a restart.
    pub fn kill(mut self) -> tempfile::TempDir {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    /// Sends SIGTERM and returns the exit status (waits up to 30 s).
    pub fn terminate(self) -> std::process::ExitStatus {
        self.stop().0
    }

    /// Sends SIGTERM, waits up to 30 s, and returns the exit status and the directory.
    pub fn stop(mut self) -> (std::process::ExitStatus, tempfile::TempDir) {
        let mut c = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(status) = c.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the hub did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let dir = tempfile::tempdir().unwrap();
        (status, std::mem::replace(&mut self.dir, dir))
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A blocking API client.
#[derive(Debug)]
pub struct Api {
    http: reqwest::blocking::Client,
    base: String,
    token: String,
}

impl Api {
    /// A client with `token`.
    pub fn new(base: &str, token: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    fn finish(r: reqwest::blocking::RequestBuilder, token: &str) -> (u16, Value) {
        let r = r.bearer_auth(token).send().unwrap();
        let status = r.status().as_u16();
        let text = r.text().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// GET → (status, JSON).
    pub fn get(&self, path: &str) -> (u16, Value) {
        Self::finish(self.http.get(format!("{}{path}", self.base)), &self.token)
    }

    /// GET, asserting 200, deserialized.
    pub fn get_ok<T: DeserializeOwned>(&self, path: &str) -> T {
        let (s, v) = self.get(path);
        assert_eq!(s, 200, "GET {path}: {v}");
        serde_json::from_value(v).unwrap()
    }

    /// POST JSON → (status, JSON).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::finish(
            self.http.post(format!("{}{path}", self.base)).json(body),
            &self.token,
        )
    }

    /// PUT JSON → (status, JSON).
    pub fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        Self::finish(
            self.http.put(format!("{}{path}", self.base)).json(body),
            &self.token,
        )
    }

    /// POST a file as the body → (status, JSON).
    pub fn upload(&self, path: &str, bytes: Vec<u8>) -> (u16, Value) {
        Self::finish(
            self.http.post(format!("{}{path}", self.base)).body(bytes),
            &self.token,
        )
    }

    /// A plain GET of a URL without the token (downloads), with optional Range.
    pub fn fetch(&self, url: &str, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut r = self.http.get(url);
        if let Some(range) = range {
            r = r.header("Range", range);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.bytes().unwrap().to_vec())
    }
}

/// Waits until `f` returns `Some`, polling every 20 ms for up to 10 s.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `mosquitto_pub` / `mosquitto_sub` with arguments; fails clearly when not installed.
pub fn mosquitto(tool: &str, args: &[&str]) -> Output {
    Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("{tool} is needed (Debian package mosquitto-clients; `cargo xtask setup` installs it): {e}")
    })
}

/// rumqttc MQTT 3.1.1 options for a device.
pub fn v3_options(port: u16, client_id: &str, user: &str, password: &str) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// rumqttc MQTT 5 options for a device.
pub fn v5_options(port: u16, client_id: &str, user: &str, password: &str) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_credentials(user, password);
    o.set_keep_alive(Duration::from_secs(30));
    o
}

/// Waits for the first event that `f` accepts on a v3.1.1 connection; panics on error or timeout.
pub fn wait_v3<T>(
    conn: &mut rumqttc::Connection,
    what: &str,
    mut f: impl FnMut(&rumqttc::Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        match conn.recv_timeout(left) {
            Ok(Ok(e)) => {
                if let Some(v) = f(&e) {
                    return v;
                }
            }
            Ok(Err(e)) => panic!("connection error while waiting for {what}: {e:?}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// Same for MQTT 5.
pub fn wait_v5<T>(
    conn: &mut rumqttc::v5::Connection,
    what: &str,
    mut f: impl FnMut(&rumqttc::v5::Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out waiting for {what}");
        match conn.recv_timeout(left) {
            Ok(Ok(e)) => {
                if let Some(v) = f(&e) {
                    return v;
                }
            }
            Ok(Err(e)) => panic!("connection error while waiting for {what}: {e:?}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// The first connection error of a v3.1.1 connection (panics if it connects fine and stays up).
pub fn error_v3(conn: &mut rumqttc::Connection) -> rumqttc::ConnectionError {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "expected the connection to fail");
        match conn.recv_timeout(left) {
            Ok(Err(e)) => return e,
            Ok(Ok(_)) => {}
            Err(_) => panic!("expected the connection to fail"),
        }
    }
}

/// The first connection error of a v5 connection.
pub fn error_v5(conn: &mut rumqttc::v5::Connection) -> rumqttc::v5::ConnectionError {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "expected the connection to fail");
        match conn.recv_timeout(left) {
            Ok(Err(e)) => return e,
            Ok(Ok(_)) => {}
            Err(_) => panic!("expected the connection to fail"),
        }
    }
}

/// Measurements stored for a device.
pub fn measurements(api: &Api, device: &str) -> Vec<Value> {
    api.get_ok::<Vec<Value>>(&format!("/api/v1/measurements?device={device}&limit=10000"))
}

/// A device that publishes QoS 1 measurements `{"seq": n}` (up to 10 in flight, `pause` between
/// publishes) through `port` and records the acknowledged seq numbers in `acked`. Without `stop`
/// it ends when its connection dies; with `stop` it connects again (a new client, so nothing is
/// resent under an old packet id) whenever the connection dies, until `stop` is set. Returns the
/// number of connections it made.
pub fn publish_sequence(
    port: u16,
    device: &str,
    token: &str,
    acked: &std::sync::Mutex<std::collections::BTreeSet<u64>>,
    pause: Duration,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> u64 {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let topic = format!("devices/{device}/te/device/main///m/load");
    let stopped = || stop.is_some_and(|s| s.load(Ordering::Relaxed));
    let mut next_seq = 0u64;
    let mut connections = 0;
    loop {
        let mut o = v3_options(port, device, device, token);
        o.set_inflight(10);
        let (client, mut conn) = rumqttc::Client::new(o, 20);
        let quit = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (quit, topic, first) = (quit.clone(), topic.clone(), next_seq);
            std::thread::spawn(move || {
                let mut seq = first;
                while !quit.load(Ordering::Relaxed) {
                    if client
                        .publish(
                            &topic,
                            rumqttc::QoS::AtLeastOnce,
                            false,
                            format!(r#"{{"seq": {seq}}}"#),
                        )
                        .is_err()
                    {
                        return;
                    }
                    seq += 1;
                    std::thread::sleep(pause);
                }
                let _ = client.disconnect();
            })
        };
        // Packet ids are assigned in publish order on this connection (nothing is resent: a dead
        // connection's client is dropped), so the n-th outgoing publish carries seq first + n.
        let mut in_flight = std::collections::HashMap::new();
        for event in conn.iter() {
            if stopped() {
                quit.store(true, Ordering::Relaxed);
            }
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => connections += 1,
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                    in_flight.insert(pkid, next_seq);
                    next_seq += 1;
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(ack))) => {
                    if let Some(seq) = in_flight.remove(&ack.pkid) {
                        acked.lock().unwrap().insert(seq);
                    }
                }
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        quit.store(true, Ordering::Relaxed);
        drop(conn);
        let _ = publisher.join();
        if stop.is_none() || stopped() {
            return connections;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
