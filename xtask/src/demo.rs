//! `cargo xtask demo`: the visual-inspection application end to end with the real programs.
//!
//! Builds the release binaries, signs the committed VQI reference model (FP32 for every device,
//! int8 for this CPU architecture), starts a hub and three agents as separate processes on
//! loopback, registers grid assets, deploys the model over the air, sends generated inspection
//! photos to the agents' HTTP APIs as a field engineer's app would, and prints what the hub made
//! of them: conditions, alarms, the maintenance list, and per device its model and latency.
//! Everything lives in `target/demo/` (recreated by each run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::live::{self, Proc};
use crate::setup;
use crate::util::{self, path_str, workspace_root};

const ADMIN: &str = "demo-admin-token-4f1c9a0b7e2d";
const MODEL: &str = "vqi";
const VERSION: &str = "1.0.0";
/// Photos per inspected asset.
const PHOTOS: usize = 3;
/// Side of the generated photos (the agents resize them to the model's 64x64 input).
const PHOTO_SIZE: &str = "128";

/// One asset of the demo register and the health its photos show.
struct DemoAsset {
    id: &'static str,
    name: &'static str,
    kind: &'static str,
    site: &'static str,
    lat: f64,
    lon: f64,
    /// Health shown on the photos; `None`: never inspected.
    shows: Option<&'static str>,
}

const ASSETS: [DemoAsset; 10] = [
    DemoAsset {
        id: "P-101",
        name: "Pole 101",
        kind: "pole",
        site: "Feeder 4",
        lat: 47.3712,
        lon: 8.5412,
        shows: Some("good"),
    },
    DemoAsset {
        id: "P-102",
        name: "Pole 102",
        kind: "pole",
        site: "Feeder 4",
        lat: 47.3721,
        lon: 8.5433,
        shows: Some("damaged"),
    },
    DemoAsset {
        id: "P-103",
        name: "Pole 103",
        kind: "pole",
        site: "Feeder 4",
        lat: 47.3730,
        lon: 8.5450,
        shows: Some("critical"),
    },
    DemoAsset {
        id: "T-201",
        name: "Tower 201",
        kind: "tower",
        site: "Line 380-2",
        lat: 47.4012,
        lon: 8.6021,
        shows: Some("good"),
    },
    DemoAsset {
        id: "T-202",
        name: "Tower 202",
        kind: "tower",
        site: "Line 380-2",
        lat: 47.4055,
        lon: 8.6102,
        shows: Some("damaged"),
    },
    DemoAsset {
        id: "T-203",
        name: "Tower 203",
        kind: "tower",
        site: "Line 380-2",
        lat: 47.4098,
        lon: 8.6180,
        shows: None,
    },
    DemoAsset {
        id: "X-301",
        name: "Transformer 301",
        kind: "transformer",
        site: "Substation Nord",
        lat: 47.3899,
        lon: 8.5150,
        shows: Some("critical"),
    },
    DemoAsset {
        id: "X-302",
        name: "Transformer 302",
        kind: "transformer",
        site: "Substation Nord",
        lat: 47.3901,
        lon: 8.5155,
        shows: Some("good"),
    },
    DemoAsset {
        id: "I-401",
        name: "Insulator string 401",
        kind: "insulator",
        site: "Line 380-2",
        lat: 47.4055,
        lon: 8.6102,
        shows: Some("damaged"),
    },
    DemoAsset {
        id: "I-402",
        name: "Insulator string 402",
        kind: "insulator",
        site: "Line 380-2",
        lat: 47.4098,
        lon: 8.6180,
        shows: Some("good"),
    },
];

/// A demo device: its id and the package variant it is forced to (`None`: the hub picks the best
/// one for the hardware class in the device's twin).
const DEVICES: [(&str, Option<&str>); 3] = [
    ("inspector-1", None),
    ("inspector-2", None),
    ("inspector-3", Some("any")),
];

struct Demo {
    dir: PathBuf,
    cli: PathBuf,
    hub_url: String,
}

impl Demo {
    /// Runs `edgemlops ARGS` against the demo hub; returns stdout.
    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.cli)
            .args(args)
            .env("EDGEMLOPS_HUB", &self.hub_url)
            .env("EDGEMLOPS_TOKEN", ADMIN)
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("running edgemlops {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "edgemlops {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.cli(&args)?;
        serde_json::from_str(&text)
            .with_context(|| format!("edgemlops {} printed no JSON: {text}", args.join(" ")))
    }
}

fn step(n: usize, text: &str) {
    eprintln!("\ndemo [{n}/8] {text}");
}

/// `cargo xtask demo [--keep-running]`
pub fn run(args: &[&str]) -> Result<()> {
    let mut keep_running = false;
    for a in args {
        match *a {
            "--keep-running" => keep_running = true,
            other => bail!("unknown option '{other}' (cargo xtask demo [--keep-running])"),
        }
    }
    let started = Instant::now();
    step(
        1,
        "set-up and release build of edgemlops, edgemlops-hub, edgemlops-agent",
    );
    setup::setup_programs()?;
    let bin = util::release_build()?;
    let dir = util::target_dir()?.join("demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the previous demo in {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut demo = Demo {
        dir: dir.clone(),
        cli: bin.join("edgemlops"),
        hub_url: String::new(),
    };

    step(
        2,
        "signing the VQI reference model: FP32 for any device, int8 for this architecture",
    );
    let packages = make_packages(&demo)?;

    step(3, "starting the hub");
    std::fs::write(
        dir.join("hub.toml"),
        "[registry]\ntrusted_keys = [\"keys/publisher.pub\"]\n",
    )?;
    let (mut hub, line) = Proc::spawn(
        "edgemlops-hub",
        Command::new(bin.join("edgemlops-hub"))
            .args(["serve", "--config", "hub.toml", "--data-dir", "hub-data"])
            .args(["--http", "127.0.0.1:0", "--mqtt", "127.0.0.1:0"])
            .args(["--admin-token", ADMIN])
            .current_dir(&dir),
        &dir.join("hub.log"),
        "edgemlops-hub ready",
        Duration::from_secs(60),
    )?;
    let field = |name: &str| -> Result<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .with_context(|| format!("no {name}= in '{line}'"))
    };
    demo.hub_url = format!("http://{}", field("http")?);
    let mqtt = field("mqtt")?;
    eprintln!("demo: hub at {} (MQTT {mqtt})", demo.hub_url);
    for p in &packages {
        demo.cli(&["model", "push", &path_str(p)])?;
    }
    print!("{}", demo.cli(&["model", "show", MODEL])?);

    step(4, "registering the assets (CSV import) and three devices");
    let csv = dir.join("assets.csv");
    let mut text = String::from("id,name,type,site,latitude,longitude\n");
    for a in &ASSETS {
        text.push_str(&format!(
            "{},{},{},{},{},{}\n",
            a.id, a.name, a.kind, a.site, a.lat, a.lon
        ));
    }
    std::fs::write(&csv, text)?;
    demo.cli(&["asset", "import", &path_str(&csv)])?;
    let mut agents = Vec::new();
    for (device, _) in DEVICES {
        let creds = demo.cli_json(&["device", "add", device])?;
        let token = creds["token"].as_str().context("device add printed no token")?;
        agents.push(start_agent(&dir, &bin, device, token, &mqtt)?);
        eprintln!("demo: {device} serving on {}", agents[agents.len() - 1].1);
    }

    step(
        5,
        "deploying vqi@1.0.0 over the air (inspector-3 forced to the FP32 variant)",
    );
    let mut commands = Vec::new();
    for (device, class) in DEVICES {
        commands.push(deploy(&demo, device, class)?);
    }
    for ((device, _), id) in DEVICES.iter().zip(&commands) {
        let c = wait_command(&demo, id, Duration::from_secs(180))?;
        if c["status"] != "successful" {
            bail!(
                "deploying to {device} ended {}: {}",
                c["status"],
                c["reason"].as_str().unwrap_or("no reason")
            );
        }
        eprintln!("demo: {device}: command {id} successful");
    }

    step(
        6,
        "generating inspection photos and sending them to the agents' HTTP APIs",
    );
    let photos = make_photos(&demo)?;
    let mut latencies: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut sent = 0usize;
    let mut predicted: BTreeMap<&str, String> = BTreeMap::new();
    for (i, (asset, files)) in photos.iter().enumerate() {
        // Each asset is visited by one field engineer; engineers take turns.
        let (device, url) = (&agents[i % agents.len()].2, &agents[i % agents.len()].1);
        for f in files {
            let body = std::fs::read(f)?;
            let t = Instant::now();
            let r = live::request(
                "POST",
                &format!("{url}/v1/infer?asset_id={asset}"),
                "image/png",
                &body,
            )?;
            let e2e = t.elapsed().as_secs_f64() * 1e3;
            let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            if r.status != 200 {
                bail!("{device} answered {} for {}: {v}", r.status, f.display());
            }
            sent += 1;
            let model_ms = v["timing"]["total_ms"].as_f64().unwrap_or(0.0);
            latencies
                .entry(device.as_str())
                .or_default()
                .push((e2e, model_ms));
            predicted.insert(
                asset,
                format!(
                    "{} {:.2}",
                    v["predictions"][0]["label"].as_str().unwrap_or("?"),
                    v["predictions"][0]["score"].as_f64().unwrap_or(0.0)
                ),
            );
        }
    }
    eprintln!("demo: {sent} photos inferred; waiting for the hub to store every result");
    wait_for_inspections(&demo, sent)?;

    step(7, "the hub's view");
    let assets = demo.cli_json(&["asset", "list"])?;
    let alarms = demo.cli_json(&["alarm", "list", "--active", "--type", "asset_condition"])?;
    let maintenance = demo.cli_json(&["asset", "maintenance"])?;
    let mut devices = Vec::new();
    for (_, url, device) in &agents {
        let r = live::request("GET", &format!("{url}/v1/models"), "text/plain", b"")?;
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        devices.push((device.clone(), url.clone(), v));
    }
    print_summary(
        &demo,
        &assets,
        &alarms,
        &maintenance,
        &devices,
        &latencies,
        &predicted,
    );

    step(8, if keep_running { "running" } else { "stopping" });
    println!(
        "\ndemo finished in {:.0} s; everything is in {}",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    if keep_running {
        println!("the hub and the agents keep running; Ctrl-C stops them all (they stop cleanly on SIGINT)");
        loop {
            std::thread::sleep(Duration::from_secs(1));
            if !hub.running() {
                bail!("the hub stopped; see {}", dir.join("hub.log").display());
            }
            for (p, _, device) in &mut agents {
                if !p.running() {
                    bail!(
                        "{device} stopped; see its log in {}",
                        dir.join(device.as_str()).display()
                    );
                }
            }
        }
    }
    for (mut p, _, _) in agents {
        p.stop();
    }
    hub.stop();
    Ok(())
}

/// Key pair and the two signed variants of vqi@1.0.0.
fn make_packages(demo: &Demo) -> Result<Vec<PathBuf>> {
    let fixtures = workspace_root().join("fixtures").join("vqi");
    demo.cli(&["keygen", "--out", "keys"])?;
    let arch = std::env::consts::ARCH;
    let mut out = Vec::new();
    for (file, class) in [("model.onnx", "any"), ("model.int8.onnx", arch)] {
        let package = demo.dir.join(format!("vqi-{VERSION}-{class}.emp"));
        let f = |name: &str| path_str(&fixtures.join(name));
        demo.cli(&[
            "model",
            "package",
            &f(file),
            "--name",
            MODEL,
            "--version",
            VERSION,
            "--labels",
            &f("labels.txt"),
            "--preprocess",
            &f("preprocess.json"),
            "--postprocess",
            &f("postprocess.json"),
            "--hardware-class",
            class,
            "--smoke-inputs",
            "auto",
            "--key",
            "keys/publisher.key",
            "--out",
            &path_str(&package),
        ])?;
        eprintln!("demo: {} ({class})", package.display());
        out.push(package);
    }
    Ok(out)
}

/// Writes the device's config and starts its agent; returns (process, API URL, device id).
fn start_agent(
    dir: &Path,
    bin: &Path,
    device: &str,
    token: &str,
    mqtt: &str,
) -> Result<(Proc, String, String)> {
    let home = dir.join(device);
    std::fs::create_dir_all(&home)?;
    std::fs::copy(dir.join("keys/publisher.pub"), home.join("publisher.pub"))?;
    std::fs::write(
        home.join("agent.toml"),
        format!(
            "device_id = \"{device}\"\ndata_dir = \"data\"\ntrusted_keys = [\"publisher.pub\"]\n\n\
             [hub]\nmqtt = \"{mqtt}\"\ntoken = \"{token}\"\n\n\
             [inference]\nlisten = \"127.0.0.1:0\"\nthreads = 1\nreport_interval_secs = 10\n"
        ),
    )?;
    let (proc, line) = Proc::spawn(
        device,
        Command::new(bin.join("edgemlops-agent"))
            .args(["run", "--config", "agent.toml"])
            .current_dir(&home),
        &home.join("agent.log"),
        "edgemlops-agent ready",
        Duration::from_secs(60),
    )?;
    let url = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .map(|a| format!("http://{a}"))
        .with_context(|| format!("no http= in '{line}'"))?;
    Ok((proc, url, device.to_owned()))
}

/// Creates the software_update command; retries while the hub does not know the device's
/// hardware class yet (its twin arrives just after it connects).
fn deploy(demo: &Demo, device: &str, class: Option<&str>) -> Result<String> {
    let target = format!("{MODEL}@{VERSION}");
    let mut args = vec!["deploy", target.as_str(), "--device", device];
    if let Some(c) = class {
        args.extend(["--hardware-class", c]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match demo.cli_json(&args) {
            Ok(c) => {
                return c["id"]
                    .as_str()
                    .map(str::to_owned)
                    .context("deploy printed no command id");
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("demo: {device} not ready for a deployment yet ({e:#}); retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

fn wait_command(demo: &Demo, id: &str, timeout: Duration) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let c = demo.cli_json(&["command", "show", id])?;
        if c["status"] == "successful" || c["status"] == "failed" {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("command {id} still {} after {} s", c["status"], timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `PHOTOS` generated photos per inspected asset, showing its type in the asset's health.
fn make_photos(demo: &Demo) -> Result<Vec<(&'static str, Vec<PathBuf>)>> {
    let mut out = Vec::new();
    for (i, a) in ASSETS.iter().enumerate() {
        let Some(health) = a.shows else { continue };
        let folder = demo.dir.join("photos").join(a.id);
        let class = format!("{}_{health}", a.kind);
        let seed = (100 + i).to_string();
        let count = PHOTOS.to_string();
        demo.cli(&[
            "vqi",
            "generate",
            "--out",
            &path_str(&folder),
            "--count",
            &count,
            "--seed",
            &seed,
            "--size",
            PHOTO_SIZE,
            "--class",
            &class,
        ])?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(folder.join(&class))
            .with_context(|| format!("listing {}", folder.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .collect();
        files.sort();
        out.push((a.id, files));
    }
    Ok(out)
}

fn wait_for_inspections(demo: &Demo, expected: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let assets = demo.cli_json(&["asset", "list"])?;
        let stored: u64 = assets
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["inspection_count"].as_u64()).sum())
            .unwrap_or(0);
        if stored as usize >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the hub stored {stored} of {expected} inspection results within 60 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

fn print_summary(
    demo: &Demo,
    assets: &Value,
    alarms: &Value,
    maintenance: &Value,
    devices: &[(String, String, Value)],
    latencies: &BTreeMap<&str, Vec<(f64, f64)>>,
    predicted: &BTreeMap<&str, String>,
) {
    println!("\n=== Asset register (hub) ===");
    println!(
        "asset   name                  type         site             photos    condition  alarm last photo (agent)"
    );
    for a in assets.as_array().into_iter().flatten() {
        let id = s(a, "id");
        let shows = ASSETS
            .iter()
            .find(|d| d.id == id)
            .and_then(|d| d.shows)
            .unwrap_or("-");
        println!(
            "{:<7} {:<21} {:<12} {:<16} {:<9} {:<10} {:<5} {}",
            id,
            s(a, "name"),
            a.get("type")
                .or(a.get("asset_type"))
                .and_then(Value::as_str)
                .unwrap_or("-"),
            s(a, "site"),
            shows,
            a["condition"].as_str().unwrap_or("unknown"),
            if a["alarm_active"] == true { "yes" } else { "-" },
            predicted.get(id).map_or("-", String::as_str),
        );
    }
    println!("(photos: the health the generated photos show; damaged maps to the register's major)");

    println!("\n=== Active alarms ===");
    let list = alarms.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("none");
    }
    for al in &list {
        println!(
            "{:<9} {:<7} {}",
            s(al, "severity"),
            al["asset"].as_str().unwrap_or("-"),
            s(al, "text")
        );
    }

    println!("\n=== Maintenance list (most urgent first) ===");
    for m in maintenance.as_array().into_iter().flatten() {
        let a = m;
        let last = if m["never_inspected"] == true {
            "never inspected".to_owned()
        } else {
            format!(
                "inspected {} s ago",
                m["since_inspection_secs"].as_i64().unwrap_or(0)
            )
        };
        println!(
            "{:>2}. {:<7} {:<21} {:<10} {last}",
            m["rank"].as_u64().unwrap_or(0),
            s(a, "id"),
            s(a, "name"),
            a["condition"].as_str().unwrap_or("unknown"),
        );
    }

    println!("\n=== Devices ===");
    for (device, url, v) in devices {
        let m = &v["models"][0];
        let l = latencies.get(device.as_str()).cloned().unwrap_or_default();
        let e2e = median(l.iter().map(|x| x.0).collect());
        let agent = median(l.iter().map(|x| x.1).collect());
        println!(
            "{device:<12} {}@{} {:<10} {:>2} photos  median {e2e:.1} ms end to end, {agent:.1} ms in the agent  API {url}",
            s(m, "name"),
            s(m, "version"),
            s(m, "hardware_class"),
            l.len(),
        );
    }

    println!("\n=== Where to look ===");
    println!("hub API      {}/api/v1  (token: {ADMIN})", demo.hub_url);
    println!("OpenAPI      {}/api/v1/openapi.json", demo.hub_url);
    println!("metrics      {}/metrics", demo.hub_url);
    println!(
        "CLI          EDGEMLOPS_HUB={} EDGEMLOPS_TOKEN={ADMIN} target/release/edgemlops asset show P-102",
        demo.hub_url
    );
    println!(
        "logs         {}/hub.log, {}/inspector-*/agent.log",
        demo.dir.display(),
        demo.dir.display()
    );
}
