//! `cargo xtask bench hub`: the hub under a fleet-sized load, on each storage configuration in
//! the same run: SQLite with one node, PostgreSQL (and Garage for blobs) with one node, and
//! PostgreSQL with two nodes behind HAProxy. For each, a fresh database, release `edgemlops-hub`
//! processes, and the `loadgen` example: N devices (rumqttc, one TCP connection each) all connect
//! at the same moment (the thundering herd after a restart or an outage), then publish QoS 1
//! measurements at a fixed rate for a fixed time. The hubs' resident memory is sampled from /proc
//! while it runs. Writes `bench/results/hub.json` and `bench/results/hub.md`.
//!
//! Every process (load generator, hubs, PostgreSQL, HAProxy) shares this machine's cores. A
//! process here may hold at most 20,000 file descriptors (the hard limit), and HAProxy needs two
//! per proxied connection, so the two-node configuration runs two HAProxy instances (as an
//! operator runs a pair of load balancers), each in front of both nodes, and the load generator
//! spreads the devices over them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::garage::Garage;
use crate::haproxy::Haproxy;
use crate::live::{Proc, load_average, memory};
use crate::postgres::{Postgres, PrivatePostgres};
use crate::util::{self, workspace_root};

const ADMIN: &str = "bench-admin-token-0123456789";

/// One storage configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Setup {
    postgres: bool,
    nodes: usize,
}

impl Setup {
    fn name(self) -> String {
        format!(
            "{} x{}",
            if self.postgres {
                "PostgreSQL + S3"
            } else {
                "SQLite + files"
            },
            self.nodes
        )
    }
}

struct Node {
    /// Stopped when the benchmark drops it.
    _proc: Proc,
    pid: u32,
    http: String,
    mqtt: String,
}

fn start_node(bin: &Path, dir: &Path, name: &str, storage_toml: &str) -> Result<Node> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("hub.toml"),
        format!("{storage_toml}\n[cluster]\nnode_id = {name:?}\n"),
    )?;
    let (proc, line) = Proc::spawn(
        "edgemlops-hub",
        Command::new(bin)
            .args(["serve", "--config", "hub.toml", "--data-dir", "data"])
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
    Ok(Node {
        pid: proc.pid().context("the hub has no pid")?,
        http: format!("http://{}", field("http")?),
        mqtt: field("mqtt")?,
        _proc: proc,
    })
}

/// What one configuration needs running besides the hubs (the servers run while this lives).
struct Engines {
    _postgres: Option<PrivatePostgres>,
    _garage: Option<Garage>,
    toml: String,
}

fn engines(setup: Setup) -> Engines {
    if !setup.postgres {
        return Engines {
            _postgres: None,
            _garage: None,
            toml: String::new(),
        };
    }
    let pg = Postgres::start_private();
    let g = Garage::start_private();
    let toml = format!(
        "[database]\nurl = {:?}\nmax_connections = 16\n[blobs]\nurl = \"s3://{}/bench\"\nendpoint = {:?}\n\
         region = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n",
        pg.new_database("hub"),
        g.bucket,
        g.endpoint,
        g.region,
        g.access_key_id,
        g.secret_access_key
    );
    Engines {
        _postgres: Some(pg),
        _garage: Some(g),
        toml,
    }
}

/// Options of `cargo xtask bench hub`.
#[derive(Debug)]
struct Options {
    devices: usize,
    seconds: u64,
    rate: f64,
    setups: Vec<Setup>,
}

fn parse(args: &[&str]) -> Result<Options> {
    let mut o = Options {
        devices: 10_000,
        seconds: 60,
        rate: 2.0,
        setups: Vec::new(),
    };
    let mut backend: Option<bool> = None;
    let mut nodes: Option<usize> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().with_context(|| format!("{a} needs a value"))?;
        match *a {
            "--devices" => o.devices = v.parse()?,
            "--seconds" => o.seconds = v.parse()?,
            "--rate" => o.rate = v.parse()?,
            "--backend" => {
                backend = Some(match *v {
                    "sqlite" => false,
                    "postgres" => true,
                    other => bail!("--backend {other}: use sqlite or postgres"),
                });
            }
            "--nodes" => nodes = Some(v.parse()?),
            other => bail!(
                "unknown argument {other} (use --backend sqlite|postgres --nodes 1|2 --devices N --seconds S --rate R)"
            ),
        }
    }
    o.setups = match (backend, nodes) {
        (None, None) => vec![
            Setup {
                postgres: false,
                nodes: 1,
            },
            Setup {
                postgres: true,
                nodes: 1,
            },
            Setup {
                postgres: true,
                nodes: 2,
            },
        ],
        (Some(false), Some(n)) if n > 1 => {
            bail!("SQLite serves one node; several nodes need --backend postgres")
        }
        (b, n) => vec![Setup {
            postgres: b.unwrap_or(n.unwrap_or(1) > 1),
            nodes: n.unwrap_or(1),
        }],
    };
    if o.setups.iter().any(|s| !(1..=2).contains(&s.nodes)) {
        bail!("--nodes is 1 or 2");
    }
    Ok(o)
}

/// `cargo xtask bench hub [--backend sqlite|postgres] [--nodes 1|2] [--devices N] [--seconds S]
/// [--rate R]`
pub fn run(args: &[&str]) -> Result<()> {
    let o = parse(args)?;
    crate::setup::setup()?;
    let release = util::release_build()?;
    let target = util::target_dir()?;
    let hub_bin = release.join("edgemlops-hub");
    let loadgen = release.join("examples/loadgen");
    let mut runs = Vec::new();
    for setup in &o.setups {
        let setup = *setup;
        eprintln!(
            "xtask: {}: {} devices x {} msg/s for {} s",
            setup.name(),
            o.devices,
            o.rate,
            o.seconds
        );
        let dir = target.join("bench-hub");
        let _ = std::fs::remove_dir_all(&dir);
        let engines = engines(setup);
        let nodes: Vec<Node> = (0..setup.nodes)
            .map(|i| {
                start_node(
                    &hub_bin,
                    &dir.join(format!("node-{i}")),
                    &format!("node-{i}"),
                    &engines.toml,
                )
            })
            .collect::<Result<_>>()?;
        let balancers: Vec<Haproxy> = if setup.nodes > 1 {
            let backends: Vec<std::net::SocketAddr> =
                nodes.iter().map(|n| n.mqtt.parse()).collect::<Result<_, _>>()?;
            (0..2)
                .map(|_| Haproxy::start(&[("mqtt", backends.clone())]))
                .collect()
        } else {
            Vec::new()
        };
        let mqtt: Vec<String> = if balancers.is_empty() {
            nodes.iter().map(|n| n.mqtt.clone()).collect()
        } else {
            balancers.iter().map(|b| b.addr("mqtt").to_string()).collect()
        };
        let metrics: Vec<String> = nodes.iter().map(|n| n.http.clone()).collect();
        let pids: Vec<u32> = nodes.iter().map(|n| n.pid).collect();
        let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peaks, done, pids) = (peaks.clone(), done.clone(), pids.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    for (i, pid) in pids.iter().enumerate() {
                        if let Some((rss, _)) = memory(*pid) {
                            peaks[i].fetch_max(rss, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        let load_before = load_average();
        let out = dir.join("loadgen.json");
        util::run(
            Command::new(&loadgen)
                .args(["--http", &nodes[0].http, "--token", ADMIN])
                .args(["--mqtt", &mqtt.join(","), "--metrics", &metrics.join(",")])
                .args([
                    "--devices",
                    &o.devices.to_string(),
                    "--seconds",
                    &o.seconds.to_string(),
                ])
                .args(["--rate", &o.rate.to_string(), "--out", &util::path_str(&out)])
                .stdout(Stdio::null()),
        )?;
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let mut result: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
        let rss: Vec<u64> = pids
            .iter()
            .enumerate()
            .map(|(i, pid)| {
                let hwm = memory(*pid).map_or(0, |(_, hwm)| hwm);
                peaks[i].load(Ordering::Relaxed).max(hwm)
            })
            .collect();
        result["setup"] = json!(setup.name());
        result["backend"] = json!(if setup.postgres { "postgres" } else { "sqlite" });
        result["nodes"] = json!(setup.nodes);
        result["load_balancers"] = json!(balancers.len());
        result["hub_rss_peak_bytes"] = json!(rss);
        result["load_average_before"] = json!(load_before);
        result["load_average_after"] = json!(load_average());
        eprintln!(
            "xtask: {}: {:.0} stored/s, PUBACK p50 {:.1} ms p99 {:.1} ms, herd connected in {:.1} s",
            setup.name(),
            result["stored_msgs_per_sec"].as_f64().unwrap_or(0.0),
            result["ack_latency_ms"]["p50"].as_f64().unwrap_or(f64::NAN),
            result["ack_latency_ms"]["p99"].as_f64().unwrap_or(f64::NAN),
            result["herd"]["connect_all_secs"].as_f64().unwrap_or(f64::NAN),
        );
        runs.push(result);
        drop(balancers);
        drop(nodes);
        drop(engines);
    }
    write_results(&o, &runs)
}

fn write_results(o: &Options, runs: &[Value]) -> Result<()> {
    let machine = json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))),
        "note": "load generator, hubs, PostgreSQL, Garage and HAProxy share this machine's cores",
    });
    let report = json!({ "machine": machine, "runs": runs });
    let results = workspace_root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    std::fs::write(results.join("hub.json"), serde_json::to_string_pretty(&report)?)?;
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut md = format!(
        "# Hub load benchmark\n\n`cargo xtask bench hub`: {} simulated devices (rumqttc, MQTT 3.1.1, one TCP \
         connection each) start connecting at the same moment (a thundering herd, as after a hub restart), \
         then publish QoS 1 measurements at {} msg/s each for {} s, on each storage configuration with \
         release `edgemlops-hub` nodes and default settings (MQTT workers: one per core). Stored = messages \
         the hubs committed (the sum of their `edgemlops_hub_messages_stored_total`); PUBACK latency = \
         publish written → PUBACK received, which includes the group commit. Two nodes sit behind two \
         HAProxy instances (TCP mode; one would need more file descriptors than a process may hold here).\n\n\
         | setup | devices | all connected s | connection attempts | offered msg/s | stored msg/s | acked | stored | p50 ack ms | p99 ack ms | hub peak RSS |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
        o.devices, o.rate, o.seconds
    );
    for r in runs {
        let rss: Vec<String> = r["hub_rss_peak_bytes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{:.0} MB", b.as_f64().unwrap_or(0.0) / 1e6))
            .collect();
        md.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {} |\n",
            r["setup"].as_str().unwrap_or("?"),
            r["devices"],
            f(&r["herd"]["connect_all_secs"]),
            r["herd"]["connection_attempts"],
            r["offered_msgs_per_sec"],
            f(&r["stored_msgs_per_sec"]),
            r["acknowledged"],
            r["stored"],
            f(&r["ack_latency_ms"]["p50"]),
            f(&r["ack_latency_ms"]["p99"]),
            rss.join(" + "),
        ));
    }
    md.push_str(&format!(
        "\nMachine: {} cores, {}.\n",
        report["machine"]["cores"],
        report["machine"]["cpu"].as_str().unwrap_or("unknown CPU")
    ));
    std::fs::write(results.join("hub.md"), &md)?;
    print!("{md}");
    Ok(())
}
