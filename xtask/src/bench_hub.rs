//! `cargo xtask bench hub`: the hub under a fleet-sized load. Starts the release `edgemlops-hub`
//! in a fresh data directory, runs the `loadgen` example (N rumqttc devices publishing QoS 1
//! measurements for a fixed time, twice: at 1 message per second per device and at 10), samples
//! the hub's resident memory from /proc while it runs, and writes `bench/results/hub.json` and
//! `bench/results/hub.md`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::live::{Proc, memory};
use crate::util::{self, workspace_root};

const ADMIN: &str = "bench-admin-token-0123456789";

struct Hub {
    /// Stopped when the benchmark drops it.
    _proc: Proc,
    pid: u32,
    http: String,
    mqtt: String,
}

fn start_hub(bin: &Path, dir: &Path) -> Result<Hub> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let (proc, line) = Proc::spawn(
        "edgemlops-hub",
        Command::new(bin)
            .args(["serve", "--data-dir", "data"])
            .args(["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
            .args(["--admin-token", ADMIN])
            .current_dir(dir)
            .env("EDGEMLOPS_LOG", "warn"),
        &dir.join("hub.log"),
        "edgemlops-hub ready",
        Duration::from_secs(60),
    )?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .with_context(|| format!("no {name}= in '{line}'"))
    };
    Ok(Hub {
        pid: proc.pid().context("the hub has no pid")?,
        http: format!("http://{}", field("http")?),
        mqtt: field("mqtt")?,
        _proc: proc,
    })
}

/// `cargo xtask bench hub [--devices N] [--seconds S]`
pub fn run(args: &[&str]) -> Result<()> {
    let mut devices = 1000usize;
    let mut seconds = 60u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match *a {
            "--devices" => devices = v.parse()?,
            "--seconds" => seconds = v.parse()?,
            other => bail!("unknown argument {other} (use --devices N --seconds S)"),
        }
    }
    let release = util::release_build()?;
    let target = util::target_dir()?;
    let hub_bin = release.join("edgemlops-hub");
    let loadgen = release.join("examples/loadgen");
    let mut runs = Vec::new();
    for rate in [1.0, 10.0] {
        let dir = target.join("bench-hub");
        let hub = start_hub(&hub_bin, &dir)?;
        let pid = hub.pid;
        let peak_rss = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak_rss, done) = (peak_rss.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    if let Some((rss, _)) = memory(pid) {
                        peak_rss.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let out = dir.join("loadgen.json");
        eprintln!("xtask: loadgen {devices} devices x {rate} msg/s for {seconds} s");
        util::run(
            Command::new(&loadgen)
                .args(["--http", &hub.http, "--mqtt", &hub.mqtt, "--token", ADMIN])
                .args([
                    "--devices",
                    &devices.to_string(),
                    "--seconds",
                    &seconds.to_string(),
                ])
                .args(["--rate", &rate.to_string(), "--out", &out.to_string_lossy()])
                .stdout(Stdio::null()),
        )?;
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let (rss_end, hwm) = memory(pid).unwrap_or((0, 0));
        let mut result: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
        result["hub_rss_peak_bytes"] = json!(peak_rss.load(Ordering::Relaxed).max(hwm));
        result["hub_rss_end_bytes"] = json!(rss_end);
        runs.push(result);
        drop(hub);
    }
    let machine = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))),
        "note": "hub, load generator and SQLite share this machine's cores",
    });
    let report = json!({ "machine": machine, "runs": runs });
    let results = workspace_root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("hub.json"), serde_json::to_string_pretty(&report)?)?;
    let mut md = String::from(
        "# Hub load benchmark\n\n`cargo xtask bench hub`: N simulated devices (rumqttc, MQTT 3.1.1, one TCP \
         connection each) connect to a release `edgemlops-hub` with embedded defaults (SQLite WAL, one \
         MQTT worker) and publish QoS 1 measurements at a fixed rate for the window. Stored = messages the \
         hub committed (its `edgemlops_hub_messages_stored_total` counter); latency = publish written → \
         PUBACK received, which includes the group commit to SQLite. The load generator runs on the same \
         machine.\n\n\
         | devices | offered msg/s | stored msg/s | acked | stored | p50 ack ms | p99 ack ms | max ack ms | hub peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in &report["runs"].as_array().cloned().unwrap_or_default() {
        md.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} MB |\n",
            r["devices"],
            r["offered_msgs_per_sec"],
            r["stored_msgs_per_sec"].as_f64().unwrap_or(0.0),
            r["acknowledged"],
            r["stored"],
            r["ack_latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            r["ack_latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            r["ack_latency_ms"]["max"].as_f64().unwrap_or(f64::NAN),
            r["hub_rss_peak_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        ));
    }
    md.push_str(&format!(
        "\nMachine: {} cores, {}. Window: {seconds} s per run.\n",
        report["machine"]["cores"],
        report["machine"]["cpu"].as_str().unwrap_or("unknown CPU")
    ));
    std::fs::write(results.join("hub.md"), &md)?;
    print!("{md}");
    Ok(())
}
