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
