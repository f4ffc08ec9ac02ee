//! The end-to-end path: push, deploy, install, infer, event stored at the hub, deploy v2, roll
//! back to v1; and bad packages that must fail with a specific reason while v1 keeps serving.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::support::*;

#[test]
fn a_deployed_model_serves_reports_and_rolls_back_through_the_hub() {
    let hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    let v1 = package(work.path(), "1.0.0", 0.1, Spoil::None);
    let v2 = package(work.path(), "2.0.0", 3.0, Spoil::None);
    hub.push(&v1);
    hub.push(&v2);
    let token = hub.add_device("cam-1");
    let config = agent_config(work.path(), "cam-1", &token, &hub.mqtt, "");
    let agent = Agent::start(&config, None);
    assert_eq!(agent.infer(&png(32, 24, 3), "pole-1").0, 503, "no model yet");

    let id = hub.deploy("cam-1", "tiny", "1.0.0");
    let c = hub.wait_command(&id, Duration::from_secs(60));
    assert_eq!(c["status"], "successful", "{c}\n{}", agent.log());

    let (status, r) = agent.infer(&png(32, 24, 3), "pole-1");
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["model"]["name"], "tiny");
    assert_eq!(r["model"]["version"], "1.0.0");
    assert_eq!(r["predictions"].as_array().unwrap().len(), 3);
    assert!(r["asset_type"].is_string() && r["condition"].is_string(), "{r}");
    let event_id = r["event_id"].as_str().unwrap().to_owned();
    wait_until("the inspection event at the hub", Duration::from_secs(20), || {
        hub.events("cam-1")
            .iter()
            .any(|e| e["payload"]["idempotency_key"] == event_id.as_str())
    });
    let stored = hub.events("cam-1");
    let e = &stored[0]["payload"];
    assert_eq!(e["asset_id"], "pole-1");
    assert_eq!(e["model"]["version"], "1.0.0");
    assert_eq!(e["predictions"][0]["label"], r["predictions"][0]["label"]);

    let id = hub.deploy("cam-1", "tiny", "2.0.0");
    let c = hub.wait_command(&id, Duration::from_secs(60));
    assert_eq!(c["status"], "successful", "{c}");
    assert_eq!(
        agent.infer(&png(32, 24, 3), "pole-1").1["model"]["version"],
        "2.0.0"
    );

    let id = hub.rollback("cam-1", "tiny");
    let c = hub.wait_command(&id, Duration::from_secs(60));
    assert_eq!(c["status"], "successful", "{c}");
    assert_eq!(c["version"], "1.0.0");
    assert_eq!(
        agent.infer(&png(32, 24, 3), "pole-1").1["model"]["version"],
        "1.0.0"
    );
    assert_eq!(agent.models()["models"][0]["version"], "1.0.0");

    // software_list reports the installed model.
    let list = hub.api(
        "POST",
        "/commands/software_list",
        Some(serde_json::json!({"device": "cam-1"})),
    );
    let c = hub.wait_command(list["id"].as_str().unwrap(), Duration::from_secs(30));
    assert_eq!(c["status"], "successful", "{c}");
    let modules = &c["response"]["currentSoftwareList"][0]["modules"];
    assert_eq!(modules[0]["name"], "tiny");
    assert_eq!(modules[0]["version"], "1.0.0");
}

#[test]
fn bad_packages_fail_with_a_reason_while_the_old_model_keeps_serving() {
    let hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    hub.push(&package(work.path(), "1.0.0", 0.1, Spoil::None));
    let token = hub.add_device("cam-2");
    let config = agent_config(work.path(), "cam-2", &token, &hub.mqtt, "");
    let agent = Agent::start(&config, None);
    let c = hub.wait_command(&hub.deploy("cam-2", "tiny", "1.0.0"), Duration::from_secs(60));
    assert_eq!(c["status"], "successful", "{c}");

    // A client hammers the API during every bad install: no request may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), agent.url.clone());
        std::thread::spawn(move || {
            let http = http();
            let img = png(16, 16, 5);
            while !stop.load(Ordering::SeqCst) {
                let r = http
                    .post(format!("{url}/v1/infer"))
                    .body(img.clone())
                    .send()
                    .map(|r| r.status().as_u16());
                match r {
                    Ok(200) => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        })
    };

    // The hub verifies pushed packages (it trusts a second publisher key the device does not),
    // so a tampered file is made by corrupting the stored blob after the push.
    let blobs = hub.dir.path().join("data/blobs/packages");
    let cases: [(&str, Spoil, &str); 4] = [
        ("1.1.0", Spoil::SmokeMismatch, "smoke test failed"),
        ("1.2.0", Spoil::InputShape, "does not match its manifest"),
        ("1.3.0", Spoil::None, "package rejected"),
        ("1.5.0", Spoil::WrongKey, "package rejected"),
    ];
    for (version, spoil, reason) in cases {
        let pkg = package(work.path(), version, 0.5, spoil);
        let pushed = hub.push(&pkg);
        if version == "1.3.0" {
            // Tamper with the stored blob after the hub verified it: one flipped byte in the model.
            let sha = pushed["sha256"].as_str().unwrap();
            let path = blobs.join(format!("{sha}.emp"));
            let mut bytes = std::fs::read(&path).unwrap();
            let n = bytes.len();
            bytes[n / 2] ^= 0x55;
            std::fs::write(&path, bytes).unwrap();
        }
        let c = hub.wait_command(&hub.deploy("cam-2", "tiny", version), Duration::from_secs(60));
        assert_eq!(c["status"], "failed", "{version}: {c}");
        let why = c["reason"].as_str().unwrap_or_default();
        assert!(why.contains(reason), "{version}: expected '{reason}' in '{why}'");
        let (status, r) = agent.infer(&png(16, 16, 5), "a");
        assert_eq!(
            r["model"]["version"],
            "1.0.0",
            "{version}: {status} {r}\n{}",
            agent.log()
        );
    }
    // Truncated download: the blob loses its second half.
    let pkg = package(work.path(), "1.4.0", 0.5, Spoil::None);
    let sha = hub.push(&pkg)["sha256"].as_str().unwrap().to_owned();
    let path = blobs.join(format!("{sha}.emp"));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let c = hub.wait_command(&hub.deploy("cam-2", "tiny", "1.4.0"), Duration::from_secs(60));
    assert_eq!(c["status"], "failed", "{c}");
    assert!(c["reason"].as_str().unwrap().contains("tiny@1.4.0"), "{c}");

    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "requests failed during bad installs"
    );
    assert!(ok.load(Ordering::SeqCst) > 0);
    assert_eq!(agent.infer(&png(16, 16, 5), "a").1["model"]["version"], "1.0.0");
    let dirs: Vec<String> = std::fs::read_dir(work.path().join("data/models/tiny"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(dirs, ["1.0.0"], "nothing of the bad versions is left");
}
