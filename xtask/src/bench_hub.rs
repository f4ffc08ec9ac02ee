//! `cargo xtask bench hub`: the hub under a fleet-sized load, on each storage configuration in
//! the same run: SQLite with one node, PostgreSQL (and Garage for blobs) with one node, and
//! PostgreSQL with two nodes behind HAProxy. For each, a fresh database, release `edgemlops-hub`
//! processes, and the `loadgen` example: N devices (rumqttc, one TCP connection each) all connect
//! at the same moment (the thundering herd after a restart or an outage), then publish QoS 1
//! measurements at a fixed rate for a fixed time. The hubs' resident memory is sampled from /proc
//! while it runs, and the CPU time of every program from /proc. A second pass offers twice the
//! load to each configuration, to see what each can store. Writes
//! `bench/results/hub.json` and `bench/results/hub.md`.
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
    /// The capacity pass: PostgreSQL x1 and x2 at this rate (0: none).
    capacity_rate: f64,
    capacity_seconds: u64,
}

/// CPU seconds (user + system) of the running processes of the programs that take part, read
/// from /proc (clock ticks of 1/100 s).
fn cpu_by_program() -> std::collections::BTreeMap<&'static str, f64> {
    const PROGRAMS: [&str; 5] = ["edgemlops-hub", "loadgen", "postgres", "haproxy", "garage"];
    let mut out: std::collections::BTreeMap<&'static str, f64> = PROGRAMS.iter().map(|p| (*p, 0.0)).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        // After the command: state is field 3, utime 14 and stime 15 (1-based, whole line).
        let ticks = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if let Some(p) = PROGRAMS.iter().find(|p| comm.starts_with(&p[..p.len().min(15)])) {
            *out.entry(p).or_default() += (ticks(14) + ticks(15)) / 100.0;
        }
    }
    out
}

fn parse(args: &[&str]) -> Result<Options> {
    let mut o = Options {
        devices: 10_000,
        seconds: 60,
        rate: 2.0,
        setups: Vec::new(),
        capacity_rate: 4.0,
        capacity_seconds: 30,
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
            "--capacity-rate" => o.capacity_rate = v.parse()?,
            other => bail!(
                "unknown argument {other} (use --backend sqlite|postgres --nodes 1|2 --devices N --seconds S \
                 --rate R --capacity-rate R)"
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
        (b, n) => {
            // One configuration asked for: no capacity pass.
            o.capacity_rate = 0.0;
            vec![Setup {
                postgres: b.unwrap_or(n.unwrap_or(1) > 1),
                nodes: n.unwrap_or(1),
            }]
        }
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
    let mut passes: Vec<(Setup, f64, u64, &str)> =
        o.setups.iter().map(|s| (*s, o.rate, o.seconds, "goal")).collect();
    if o.capacity_rate > 0.0 {
        for (postgres, nodes) in [(false, 1), (true, 1), (true, 2)] {
            passes.push((
                Setup { postgres, nodes },
                o.capacity_rate,
                o.capacity_seconds,
                "capacity",
            ));
        }
    }
    let mut runs = Vec::new();
    for (setup, rate, seconds, pass) in passes {
        eprintln!(
            "xtask: {} ({pass}): {} devices x {rate} msg/s for {seconds} s",
            setup.name(),
            o.devices,
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
        let cpu_before = cpu_by_program();
        let started = std::time::Instant::now();
        let out = dir.join("loadgen.json");
        util::run(
            Command::new(&loadgen)
                .args(["--http", &nodes[0].http, "--token", ADMIN])
                .args(["--mqtt", &mqtt.join(","), "--metrics", &metrics.join(",")])
                .args([
                    "--devices",
                    &o.devices.to_string(),
                    "--seconds",
                    &seconds.to_string(),
                ])
                .args(["--rate", &rate.to_string(), "--out", &util::path_str(&out)])
                .stdout(Stdio::null()),
        )?;
        let wall = started.elapsed().as_secs_f64();
        let cpu_after = cpu_by_program();
        done.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        // The loadgen has exited: its time is gone from /proc, so it is the machine's rest.
        let cores: serde_json::Map<String, Value> = cpu_after
            .iter()
            .map(|(p, after)| {
                let used = after - cpu_before.get(p).copied().unwrap_or(0.0);
                ((*p).to_owned(), json!((used / wall * 100.0).round() / 100.0))
            })
            .collect();
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
        result["pass"] = json!(pass);
        let mut cores = cores;
        if let Some(cpu) = result["cpu_secs"].as_f64() {
            cores.insert("loadgen".into(), json!((cpu / wall * 100.0).round() / 100.0));
        }
        result["cores_used"] = Value::Object(cores);
        result["wall_secs"] = json!(wall);
        result["backend"] = json!(if setup.postgres { "postgres" } else { "sqlite" });
        result["nodes"] = json!(setup.nodes);
        result["load_balancers"] = json!(balancers.len());
        result["hub_rss_peak_bytes"] = json!(rss);
        result["load_average_before"] = json!(load_before);
        result["load_average_after"] = json!(load_average());
        eprintln!(
            "xtask: {} ({pass}): {:.0} stored/s, PUBACK p50 {:.1} ms p99 {:.1} ms, herd connected in {:.1} s",
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
    let header = "| setup | devices | all connected s | connection attempts | offered msg/s | stored msg/s | acked | stored | p50 ack ms | p99 ack ms | hub peak RSS | cores used: load generator / hubs / PostgreSQL / HAProxy |\n\
                  |---|---|---|---|---|---|---|---|---|---|---|---|\n";
    let row = |r: &Value| {
        let rss: Vec<String> = r["hub_rss_peak_bytes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| format!("{:.0} MB", b.as_f64().unwrap_or(0.0) / 1e6))
            .collect();
        let c = &r["cores_used"];
        format!(
            "| {} | {} | {:.1} | {} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {} | {:.2} / {:.2} / {:.2} / {:.2} |\n",
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
            f(&c["loadgen"]),
            f(&c["edgemlops-hub"]),
            f(&c["postgres"]),
            f(&c["haproxy"]),
        )
    };
    let mut md = format!(
        "# Hub load benchmark\n\n`cargo xtask bench hub`: {} simulated devices (rumqttc, MQTT 3.1.1, one TCP \
         connection each) start connecting at the same moment (a thundering herd, as after a hub restart), \
         then publish QoS 1 measurements at a fixed rate, on each storage configuration with release \
         `edgemlops-hub` nodes and default settings (MQTT workers: one per core). Stored = messages the hubs \
         committed (the sum of their `edgemlops_hub_messages_stored_total`); stored msg/s counts what was \
         stored during the publishing window (the sustained rate), stored counts everything up to the last \
         acknowledgement (a backlog drained after the window too); PUBACK latency = publish \
         written → PUBACK received, which includes the group commit. Two nodes sit behind two HAProxy \
         instances (TCP mode; one would need more file descriptors than a process may hold here). Cores \
         used = CPU seconds of each program over the run's wall time (registration, connect and publish \
         phases); the machine has {} cores.\n\n## The goal: {} msg/s each for {} s\n\n{header}",
        o.devices, report["machine"]["cores"], o.rate, o.seconds
    );
    for r in runs.iter().filter(|r| r["pass"] == "goal") {
        md.push_str(&row(r));
    }
    let capacity: Vec<&Value> = runs.iter().filter(|r| r["pass"] == "capacity").collect();
    if !capacity.is_empty() {
        md.push_str(&format!(
            "\n## Capacity: {} msg/s each for {} s (twice the goal)\n\n{header}",
            o.capacity_rate, o.capacity_seconds
        ));
        for r in &capacity {
            md.push_str(&row(r));
        }
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
