//! The hub admin commands against a real `edgemlops-hub` process on random ports in a temp
//! directory.
//!
//! The hub binary belongs to another package, so Cargo gives this test no `CARGO_BIN_EXE_` path
//! for it. It is looked up next to the `edgemlops` binary (where `cargo test --workspace` builds
//! it) and used only if it is newer than every source it is built from; otherwise it is built
//! with `cargo build -p hub` into the same target directory and profile first. `EDGEMLOPS_HUB_BIN`
//! overrides the search.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use package::{Manifest, PackageBuilder, SecretKey};
use serde_json::{Value, json};

const ADMIN: &str = "cli-test-admin-token-0123456789";

#[path = "../../../../testsupport/hub_binary.rs"]
mod shared;

/// The `edgemlops-hub` binary, fresh.
fn hub_binary() -> &'static Path {
    shared::hub_binary(Path::new(env!("CARGO_BIN_EXE_edgemlops")))
}

struct Hub {
    dir: tempfile::TempDir,
    url: String,
    child: Child,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_hub(key: &SecretKey) -> Hub {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("publisher.pub"), key.public().to_file_text()).unwrap();
    std::fs::write(
        dir.path().join("hub.toml"),
        "[registry]\ntrusted_keys = [\"publisher.pub\"]\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("hub.log")).unwrap();
    let mut child = Command::new(hub_binary())
        .args([
            "serve",
            "--config",
            "hub.toml",
            "--data-dir",
            "data",
            "--http",
            "127.0.0.1:0",
        ])
        .args(["--mqtt", "127.0.0.1:0", "--admin-token", ADMIN])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let url = loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the hub starts");
        if let Some(addr) = line
            .strip_prefix("edgemlops-hub ready ")
            .and_then(|rest| rest.split_whitespace().find_map(|w| w.strip_prefix("http=")))
        {
            break format!("http://{addr}");
        }
    };
    Hub { dir, url, child }
}

fn package_file(dir: &Path, key: &SecretKey, version: &str, class: &str) -> PathBuf {
    let manifest: Manifest = serde_json::from_value(json!({
        "format": 1, "name": "vqi", "version": version, "task": "classification", "model": "model.onnx",
        "inputs": [{"name": "input", "dtype": "float32", "shape": [1, 3, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [1, 4]}],
        "hardware_class": class, "runtime": {"name": "onnxruntime", "min_version": "1.17.0"},
        "files": {}, "created": "2024-05-01T12:00:00Z",
    }))
    .unwrap();
    let mut b = PackageBuilder::new(manifest);
    b.add_bytes("model.onnx", vec![7u8; 50_000]).unwrap();
    let out = dir.join(format!("vqi-{version}-{class}.emp"));
    b.write(&out, key).unwrap();
    out
}

impl Hub {
    /// `edgemlops --hub URL --token ADMIN args...`
    fn run(&self, args: &[&str]) -> Output {
        self.run_as(ADMIN, args)
    }

    fn run_as(&self, token: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_edgemlops"))
            .args(["--hub", &self.url, "--token", token])
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("EDGEMLOPS_HUB")
            .env_remove("EDGEMLOPS_TOKEN")
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {o:?}"))
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_line_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one-line error: {err}");
    assert!(
        err.starts_with("edgemlops: error: ") && err.contains(needle),
        "expected '{needle}' in: {err}"
    );
}

#[test]
fn the_admin_cli_registers_devices_pushes_models_deploys_and_lists() {
    let key = SecretKey::from_seed(&[5; 32]);
    let hub = start_hub(&key);
    let work = hub.dir.path();

    // device add --json prints the id and the one-time token.
    let added = hub.json(&[
        "device",
        "add",
        "pole-cam-17",
        "--name",
        "Pole camera 17",
        "--json",
    ]);
    assert_eq!(added["id"], "pole-cam-17");
    let token = added["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("emd_"));
    let o = hub.run(&["device", "add", "pole-cam-17"]);
    one_line_error(&o, "409 Conflict: device 'pole-cam-17' already exists");
    let o = hub.run(&["device", "add", "bad/id"]);
    assert_eq!(o.status.code(), Some(2), "an invalid id is a usage error");

    let list = hub.json(&["device", "list", "--json"]);
    assert_eq!(list[0]["id"], "pole-cam-17");
    assert_eq!(list[0]["online"], false);
    assert!(!list.to_string().contains(&token), "listings never show tokens");
    let text = stdout(&hub.run(&["device", "list"]));
    assert!(
        text.contains("pole-cam-17") && text.contains("Pole camera 17") && text.contains("offline"),
        "{text}"
    );
    let shown = hub.json(&["device", "show", "pole-cam-17", "--json"]);
    assert_eq!(shown["name"], "Pole camera 17");

    // model push (twice: idempotent), list, show, alias.
    let pkg = package_file(work, &key, "1.0.0", "x86_64");
    let pkg_path = pkg.to_string_lossy().into_owned();
    let o = hub.run(&["model", "push", &pkg_path]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout(&o).starts_with("stored vqi@1.0.0 (x86_64) sha256 "),
        "{}",
        stdout(&o)
    );
    let again = hub.json(&["model", "push", &pkg_path, "--json"]);
    assert_eq!(again["created"], false);
    let untrusted = package_file(work, &SecretKey::from_seed(&[6; 32]), "1.0.1", "x86_64");
    let o = hub.run(&["model", "push", &untrusted.to_string_lossy()]);
    one_line_error(&o, "422 Unprocessable Entity: package refused");
    let models = hub.json(&["model", "list", "--json"]);
    assert_eq!(models[0]["name"], "vqi");
    assert_eq!(models[0]["versions"], json!(["1.0.0"]));
    let alias = hub.json(&["model", "alias", "vqi", "production", "1.0.0", "--json"]);
    assert_eq!(alias["version"], "1.0.0");
    let shown = hub.json(&["model", "show", "vqi", "--json"]);
    assert_eq!(shown["aliases"]["production"], "1.0.0");
    assert_eq!(shown["versions"][0]["variants"][0]["hardware_class"], "x86_64");
    let text = stdout(&hub.run(&["model", "show", "vqi"]));
    assert!(text.contains("production -> 1.0.0"), "{text}");

    // deploy through the alias (queued: the device is offline), command list/show.
    let cmd = hub.json(&[
        "deploy",
        "vqi@production",
        "--device",
        "pole-cam-17",
        "--hardware-class",
        "x86_64",
        "--json",
    ]);
    assert_eq!(cmd["operation"], "software_update");
    assert_eq!(cmd["version"], "1.0.0");
    assert_eq!(cmd["status"], "init");
    let id = cmd["id"].as_str().unwrap();
    let listed = hub.json(&["command", "list", "--device", "pole-cam-17", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let shown = hub.json(&["command", "show", id, "--json"]);
    assert_eq!(shown["history"][0]["status"], "init");
    let text = stdout(&hub.run(&["command", "list"]));
    assert!(
        text.contains(id) && text.contains("vqi@1.0.0") && text.contains("init"),
        "{text}"
    );
    let o = hub.run(&["rollback", "--device", "pole-cam-17", "--model", "vqi"]);
    one_line_error(&o, "no recorded install");
    assert_eq!(hub.json(&["alarm", "list", "--json"]), json!([]));
    assert_eq!(
        hub.json(&["alarm", "list", "--active", "--device", "pole-cam-17", "--json"]),
        json!([])
    );

    // Token rotation and revocation.
    let rotated = hub.json(&["device", "token", "pole-cam-17", "--json"]);
    assert_ne!(rotated["token"], token);
    let o = hub.run(&["device", "token", "pole-cam-17", "--revoke"]);
    assert!(o.status.success());
    assert_eq!(
        hub.json(&["device", "show", "pole-cam-17", "--json"])["has_token"],
        false
    );
}

#[test]
fn hub_commands_report_missing_and_wrong_credentials_in_one_line() {
    let key = SecretKey::from_seed(&[5; 32]);
    let hub = start_hub(&key);
    let o = hub.run_as("emh_wrong", &["device", "list"]);
    one_line_error(&o, "401 Unauthorized: invalid or revoked API token");
    let o = Command::new(env!("CARGO_BIN_EXE_edgemlops"))
        .args(["device", "list"])
        .env_remove("EDGEMLOPS_HUB")
        .env_remove("EDGEMLOPS_TOKEN")
        .output()
        .unwrap();
    one_line_error(&o, "no hub given: pass --hub URL or set EDGEMLOPS_HUB");
    // The environment supplies both.
    let o = Command::new(env!("CARGO_BIN_EXE_edgemlops"))
        .args(["device", "list", "--json"])
        .env("EDGEMLOPS_HUB", &hub.url)
        .env("EDGEMLOPS_TOKEN", ADMIN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(serde_json::from_slice::<Value>(&o.stdout).unwrap(), json!([]));
    let o = Command::new(env!("CARGO_BIN_EXE_edgemlops"))
        .args(["--hub", "http://127.0.0.1:9", "--token", "x", "model", "list"])
        .output()
        .unwrap();
    one_line_error(&o, "cannot reach the hub at http://127.0.0.1:9");
}

#[test]
fn the_asset_cli_adds_imports_lists_shows_and_repairs_and_names_bad_csv_lines() {
    let hub = start_hub(&SecretKey::from_seed(&[6; 32]));
    let work = hub.dir.path();
    let added = hub.json(&[
        "asset",
        "add",
        "P-17",
        "--name",
        "Pole 17",
        "--type",
        "pole",
        "--site",
        "Feeder 4",
        "--lat",
        "-33.9",
        "--lon",
        "18.4",
        "--meta",
        "height_m=12",
        "--meta",
        "material=wood",
        "--json",
    ]);
    assert_eq!(added["id"], "P-17");
    assert_eq!(added["latitude"], -33.9);
    assert_eq!(added["metadata"], json!({"height_m": 12, "material": "wood"}));
    one_line_error(
        &hub.run(&["asset", "add", "P-17", "--type", "pole"]),
        "409 Conflict: asset 'P-17' already exists",
    );

    // A file with bad lines is refused whole, with line numbers, in one line.
    std::fs::write(
        work.join("bad.csv"),
        "id,name,type,site\nT-1,Tower 1,tower,North\nT-2,Tower 2,towr,North\nT-3,,tower,North\n",
    )
    .unwrap();
    let o = hub.run(&["asset", "import", "bad.csv"]);
    one_line_error(&o, "nothing was imported");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("line 3: unknown asset type 'towr'") && err.contains("line 4:"),
        "{err}"
    );
    assert_eq!(
        hub.json(&["asset", "list", "--json"]).as_array().unwrap().len(),
        1
    );

    std::fs::write(
        work.join("good.csv"),
        "id,name,type,site,metadata\nT-1,Tower 1,tower,North,\"{\"\"kv\"\": 110}\"\nI-1,Insulator 1,insulator,North,\n",
    )
    .unwrap();
    let imported = hub.json(&["asset", "import", "good.csv", "--json"]);
    assert_eq!(imported["created"], json!(["T-1", "I-1"]));
    let o = hub.run(&["asset", "import", "good.csv"]);
    one_line_error(&o, "line 2: asset 'T-1' already exists");

    let towers = hub.json(&["asset", "list", "--type", "tower", "--json"]);
    assert_eq!(towers.as_array().unwrap().len(), 1);
    assert_eq!(towers[0]["metadata"]["kv"], 110);
    let table = stdout(&hub.run(&["asset", "list", "--site", "North"]));
    assert!(
        table.starts_with("ID") && table.contains("Insulator 1") && table.contains("unknown"),
        "{table}"
    );

    // Never inspected: listed as such in the maintenance list; "repaired" makes it good.
    let m = hub.json(&["asset", "maintenance", "--json"]);
    assert!(
        m.as_array().unwrap().iter().all(|x| x["never_inspected"] == true),
        "{m}"
    );
    let text = stdout(&hub.run(&["asset", "maintenance"]));
    assert!(text.contains("never inspected"), "{text}");
    let repaired = hub.json(&["asset", "repaired", "P-17", "--json"]);
    assert_eq!(repaired["condition"], "good");
    assert_eq!(repaired["history"][0]["source"], "repaired");
    let shown = stdout(&hub.run(&["asset", "show", "P-17"]));
    assert!(
        shown.contains("condition:  good") && shown.contains("repaired by admin"),
        "{shown}"
    );
    assert_eq!(
        hub.json(&["asset", "list", "--condition", "good", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    one_line_error(&hub.run(&["asset", "show", "nope"]), "asset 'nope' not found");
    one_line_error(&hub.run(&["asset", "import", "missing.csv"]), "missing.csv");
}
