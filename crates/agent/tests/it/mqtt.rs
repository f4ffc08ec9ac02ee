//! thin-edge mode: `edgemlops-agent infer --mqtt` against a real Debian `mosquitto` standing in
//! for a thin-edge device's local broker, with models installed by `plugin onnx` (as tedge-agent
//! would). A `mosquitto_sub` on `te/#` checks the service registration, its health, the
//! `e/inspection` events and `m/inference` measurements on the service's topics, the pick-up of a
//! newly installed version, and the last will when the service is killed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::support::*;

const SERVICE: &str = "te/device/main/service/edgemlops-infer";

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `mosquitto` on a free port of 127.0.0.1, anonymous access, no persistence.
fn broker(dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("mosquitto runs (installed by `cargo xtask setup`)");
    let broker = Proc(child);
    wait_until("mosquitto listens", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (broker, port)
}

/// Every `topic payload` line `mosquitto_sub -v -t te/#` printed so far.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(String, String)>>>);

impl Seen {
    fn on(&self, topic: &str) -> Vec<Value> {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .filter(|(t, _)| t == topic)
            .filter_map(|(_, p)| serde_json::from_str(p).ok())
            .collect()
    }

    fn wait_for(&self, what: &str, topic: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = self.on(topic).into_iter().find(|v| f(v)) {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what} on {topic}; seen: {:?}",
                self.0.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn subscriber(port: u16) -> (Proc, Seen) {
    let mut child = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-v", "-t", "te/#"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let seen = Seen::default();
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some((t, p)) = line.split_once(' ') {
                sink.0.lock().unwrap().push((t.to_owned(), p.to_owned()));
            }
        }
    });
    // Subscribed once a probe published after it arrives.
    let sub = Proc(child);
    wait_until("mosquitto_sub is subscribed", Duration::from_secs(10), || {
        let _ = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                "te/probe",
                "-m",
                "{}",
            ])
            .status();
        !seen.on("te/probe").is_empty()
    });
    (sub, seen)
}

fn plugin_install(config: &Path, package: &Path, version: &str) {
    let o = Command::new(agent_binary())
        .args(["plugin", "onnx", "--config"])
        .arg(config)
        .args(["install", "tiny", "--module-version", version, "--file"])
        .arg(package)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn start_infer(config: &Path, port: u16) -> Agent {
    Agent::start_with(&["infer", "--mqtt", &format!("127.0.0.1:{port}")], config, None)
}

#[test]
fn the_thin_edge_inference_service_publishes_on_te_topics_of_the_local_broker() {
    let work = tempfile::tempdir().unwrap();
    let (_broker, port) = broker(work.path());
    let (_sub, seen) = subscriber(port);
    // The plugin's config: the [hub] keys are unused in thin-edge mode.
    let config = agent_config(work.path(), "tedge-dev", "unused", "127.0.0.1:1", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("report_interval_secs = 3600", "report_interval_secs = 1");
    std::fs::write(&config, text).unwrap();
    let v1 = package(work.path(), "1.0.0", 0.1, Spoil::None);
    let v2 = package(work.path(), "2.0.0", 3.0, Spoil::None);
    plugin_install(&config, &v1, "1.0.0");

    let mut agent = start_infer(&config, port);
    // The entity's topic id has four segments: its registration topic is the id itself.
    let registration = seen.wait_for("the service registration", SERVICE, |_| true);
    assert_eq!(registration["@type"], "service", "{registration}");
    assert_eq!(registration["name"], "edgemlops-infer");
    let health = format!("{SERVICE}/status/health");
    seen.wait_for("health up", &health, |h| h["status"] == "up");

    let (status, r) = agent.infer(&png(32, 24, 3), "pole-1");
    assert_eq!(status, 200, "{r}\n{}", agent.log());
    assert_eq!(r["model"]["version"], "1.0.0");
    let event_id = r["event_id"].as_str().unwrap().to_owned();
    let event = seen.wait_for("the inspection event", &format!("{SERVICE}/e/inspection"), |e| {
        e["idempotency_key"] == event_id.as_str()
    });
    assert_eq!(
        event["model"],
        serde_json::json!({"name": "tiny", "version": "1.0.0"})
    );
    assert_eq!(event["asset_id"], "pole-1");
    let m = seen.wait_for(
        "the inference measurement",
        &format!("{SERVICE}/m/inference"),
        |m| m.get("tiny@1.0.0").is_some(),
    );
    assert_eq!(m["tiny@1.0.0"]["count"], 1.0, "{m}");
    assert!(
        seen.0
            .lock()
            .unwrap()
            .iter()
            .all(|(t, _)| !t.starts_with("devices/")),
        "only te/ topics on a local broker"
    );

    // tedge-agent installs v2 through the plugin: the running service picks it up.
    plugin_install(&config, &v2, "2.0.0");
    wait_until("the service serves 2.0.0", Duration::from_secs(20), || {
        agent.models()["models"][0]["version"] == "2.0.0"
    });
    let (status, r) = agent.infer(&png(32, 24, 3), "pole-2");
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"]["version"], "2.0.0");
    let event_id = r["event_id"].as_str().unwrap().to_owned();
    let event = seen.wait_for(
        "the v2 inspection event",
        &format!("{SERVICE}/e/inspection"),
        |e| e["idempotency_key"] == event_id.as_str(),
    );
    assert_eq!(event["model"]["version"], "2.0.0");

    // Killed without a goodbye: the broker publishes the last will.
    let ups = seen.on(&health).len();
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let mut last = Value::Null;
    wait_until("the last will (health down)", Duration::from_secs(20), || {
        let all = seen.on(&health);
        last = all.last().cloned().unwrap_or(Value::Null);
        all.len() > ups && last["status"] == "down"
    });
    assert_eq!(last["status"], "down", "{last}");
}
