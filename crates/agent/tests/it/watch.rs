//! The watched input folder: a dropped image is inferred, moved to `done/` with its result JSON
//! beside it; a file named like an image that is not one goes to `failed/` with a clear error,
//! and the watcher carries on; other files are left alone. No hub is needed (the agent serves
//! while its link retries).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::support::*;

fn result(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn dropped_images_are_inferred_moved_aside_and_answered_next_to_them() {
    let work = tempfile::tempdir().unwrap();
    let config = agent_config(work.path(), "cam-watch", "unused", "127.0.0.1:1", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[inference]\n", "[inference]\nwatch_dir = \"in\"\n");
    std::fs::write(&config, text).unwrap();
    let v1 = package(work.path(), "1.0.0", 0.1, Spoil::None);
    let o = std::process::Command::new(agent_binary())
        .args(["plugin", "onnx", "--config"])
        .arg(&config)
        .args(["install", "tiny", "--module-version", "1.0.0", "--file"])
        .arg(&v1)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let agent = Agent::start(&config, None);
    let dir = work.path().join("in");
    wait_until("the watched folder exists", Duration::from_secs(10), || {
        dir.join("done").is_dir()
    });

    std::fs::write(dir.join("broken.jpg"), b"this is not a JPEG").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not for the model").unwrap();
    std::fs::write(dir.join("pole-7__north.png"), png(40, 30, 5)).unwrap();

    let done = dir.join("done/pole-7__north.png.json");
    let failed = dir.join("failed/broken.jpg.json");
    wait_until("both files processed", Duration::from_secs(30), || {
        done.is_file() && failed.is_file()
    });
    let r = result(&done);
    assert_eq!(r["model"]["version"], "1.0.0", "{r}");
    assert_eq!(r["asset_id"], "pole-7", "the asset id is the name up to `__`");
    assert_eq!(r["predictions"].as_array().unwrap().len(), 3, "{r}");
    assert!(r["event_id"].is_string(), "{r}");
    assert!(
        dir.join("done/pole-7__north.png").is_file(),
        "the image moved to done/"
    );
    assert!(!dir.join("pole-7__north.png").exists());

    let e = result(&failed);
    let error = e["error"].as_str().unwrap_or_default();
    assert!(error.contains("image"), "a clear error: {e}\n{}", agent.log());
    assert!(dir.join("failed/broken.jpg").is_file());
    assert!(!dir.join("broken.jpg").exists());
    assert!(
        dir.join("notes.txt").is_file(),
        "files that are not images are left alone"
    );

    // The watcher carries on after a failure.
    std::fs::write(dir.join("tower-3.png"), png(16, 16, 9)).unwrap();
    let next = dir.join("done/tower-3.png.json");
    wait_until("the next image processed", Duration::from_secs(30), || {
        next.is_file()
    });
    let r = result(&next);
    assert_eq!(r["model"]["name"], "tiny", "{r}");
    assert!(r.get("asset_id").is_none(), "no `__`, no asset id: {r}");
}

/// A config watching `in/`, for thin-edge mode's inference service (`infer --mqtt`, which follows
/// the model store), with the local broker unreachable: the service serves while its link retries.
fn watching_config(work: &Path) -> std::path::PathBuf {
    let config = agent_config(work, "cam-watch", "unused", "127.0.0.1:1", "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("[inference]\n", "[inference]\nwatch_dir = \"in\"\n");
    std::fs::write(&config, text).unwrap();
    config
}

fn plugin_install(config: &Path, package: &Path) {
    let o = std::process::Command::new(agent_binary())
        .args(["plugin", "onnx", "--config"])
        .arg(config)
        .args(["install", "tiny", "--module-version", "1.0.0", "--file"])
        .arg(package)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// What the stopped service left in its outbox (the local broker was never reachable).
fn queued(work: &Path) -> Vec<agent::outbox::Message> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let outbox = agent::outbox::Outbox::open(&work.join("data/outbox-local.db"), u64::MAX)
            .await
            .unwrap();
        outbox.after(0, 1000).await.unwrap()
    })
}

fn start_service(config: &Path) -> Agent {
    Agent::start_with(&["infer", "--mqtt", "127.0.0.1:1"], config, None)
}

#[test]
fn an_image_dropped_before_any_model_is_installed_waits_and_is_inferred_after_the_install() {
    let work = tempfile::tempdir().unwrap();
    let config = watching_config(work.path());
    let v1 = package(work.path(), "1.0.0", 0.1, Spoil::None);
    let agent = start_service(&config);
    let dir = work.path().join("in");
    wait_until("the watched folder exists", Duration::from_secs(10), || {
        dir.join("done").is_dir()
    });
    std::fs::write(dir.join("pole-1.png"), png(20, 20, 4)).unwrap();
    let failed = dir.join("failed/pole-1.png.json");
    wait_until("the image taken", Duration::from_secs(30), || {
        agent.log().contains("retried at the next poll") || failed.exists()
    });
    assert!(
        !failed.exists(),
        "no model yet is a temporary refusal, not a bad image: {}",
        std::fs::read_to_string(&failed).unwrap_or_default()
    );
    assert!(dir.join("pole-1.png").is_file(), "the image stays in place");

    plugin_install(&config, &v1);
    let done = dir.join("done/pole-1.png.json");
    wait_until(
        "the image inferred after the install",
        Duration::from_secs(30),
        || done.is_file(),
    );
    let r = result(&done);
    assert_eq!(r["model"]["version"], "1.0.0", "{r}");
    assert!(!dir.join("failed/pole-1.png").exists());
}

#[test]
fn a_graceful_stop_with_a_watched_folder_keeps_the_final_inference_measurement() {
    let work = tempfile::tempdir().unwrap();
    let config = watching_config(work.path());
    plugin_install(&config, &package(work.path(), "1.0.0", 0.1, Spoil::None));
    let mut agent = start_service(&config);
    let dir = work.path().join("in");
    wait_until("the watched folder exists", Duration::from_secs(10), || {
        dir.join("done").is_dir()
    });
    std::fs::write(dir.join("pole-2.png"), png(20, 20, 6)).unwrap();
    wait_until("the image inferred", Duration::from_secs(30), || {
        dir.join("done/pole-2.png.json").is_file()
    });
    // SIGTERM: the counters are flushed (report_interval_secs is 3600, so only the final flush
    // can have queued them) into the outbox, which the next connection delivers.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = agent.child.wait().unwrap();
    assert!(exit.success(), "{exit}: {}", agent.log());
    let messages = queued(work.path());
    let measurement = messages
        .iter()
        .filter(|m| m.topic.ends_with("/m/inference"))
        .find_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .unwrap_or_else(|| {
            panic!(
                "no m/inference in the outbox: {:?}\n{}",
                messages.iter().map(|m| &m.topic).collect::<Vec<_>>(),
                agent.log()
            )
        });
    assert_eq!(measurement["tiny@1.0.0"]["count"], 1.0, "{measurement}");
}

#[test]
fn a_file_inferred_again_after_a_crash_keeps_its_idempotency_key() {
    let work = tempfile::tempdir().unwrap();
    let config = watching_config(work.path());
    plugin_install(&config, &package(work.path(), "1.0.0", 0.1, Spoil::None));
    let dir = work.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pole-4.png"), png(20, 20, 8)).unwrap();
    // Killed after the event is queued, before the file moves (what a power cut can do).
    let mut agent = Agent::start_with(
        &["infer", "--mqtt", "127.0.0.1:1"],
        &config,
        Some("watch-queued:exit"),
    );
    let exit = agent.child.wait().unwrap();
    assert_eq!(exit.code(), Some(86), "the fault point exits: {}", agent.log());
    assert!(dir.join("pole-4.png").is_file(), "not moved before the crash");
    drop(agent);

    let agent = start_service(&config);
    wait_until("the image inferred again", Duration::from_secs(30), || {
        dir.join("done/pole-4.png.json").is_file()
    });
    let messages = queued(work.path());
    let keys: Vec<String> = messages
        .iter()
        .filter(|m| m.topic.ends_with("/e/inspection"))
        .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
        .map(|e| e["idempotency_key"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        keys.len(),
        2,
        "one event per inference: {keys:?}\n{}",
        agent.log()
    );
    assert_eq!(keys[0], keys[1], "the hub stores the photo once");
    assert!(keys[0].starts_with("cam-watch-file-"), "{keys:?}");
}
