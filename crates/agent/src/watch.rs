//! The watched input folder: images dropped into it are inferred like `/v1/infer` requests (same
//! queue, same events), then moved to `done/` with the result beside them as `<file>.json`, or to
//! `failed/` with the error. The asset id is the file name up to the first `__`, if any
//! (`pole-17__north.jpg` → `pole-17`). Polled every 500 ms: simple, and correct on every file
//! system; a file is taken only once its size stopped changing between two polls.
//!
//! Only a final answer moves a file: a temporary refusal (503: no model installed yet, the model
//! named is not installed, shutting down) leaves it in place, and it is tried again at the next
//! poll. The task stops when told to (shutdown), between two files. An inspection's idempotency
//! key comes from the file's name and content, so a file inferred again after a crash (its event
//! queued, the file not yet moved) is stored once at the hub.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::fault;
use crate::http::{ApiState, InferQuery, run_inference};

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// Runs until `stop` turns true (or its sender is dropped).
pub async fn run(dir: PathBuf, state: ApiState, mut stop: watch::Receiver<bool>) {
    let (done, failed) = (dir.join("done"), dir.join("failed"));
    for d in [&dir, &done, &failed] {
        if let Err(e) = std::fs::create_dir_all(d) {
            tracing::error!(dir = %d.display(), error = %e, "watched folder unusable");
            return;
        }
    }
    let mut sizes: HashMap<PathBuf, u64> = HashMap::new();
    // Files left in place after a temporary refusal (logged once, not at every poll).
    let mut waiting: HashSet<PathBuf> = HashSet::new();
    loop {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && is_image(p))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        let mut seen = HashMap::new();
        for path in files {
            if *stop.borrow() {
                return;
            }
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            seen.insert(path.clone(), size);
            if sizes.get(&path) != Some(&size) {
                continue;
            }
            match process(&state, &path, &done, &failed).await {
                Processed::Moved => {
                    seen.remove(&path);
                    waiting.remove(&path);
                }
                Processed::Later(reason) => {
                    if waiting.insert(path.clone()) {
                        tracing::info!(file = %path.display(), %reason,
                            "cannot infer the file yet; it stays and is retried at the next poll");
                    }
                }
            }
        }
        waiting.retain(|p| seen.contains_key(p));
        sizes = seen;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
        }
    }
}

/// The idempotency key of a watched file's inspection: its name and content. A file inferred
/// again after a crash (the event queued, the file not yet moved) gets the same key, so the hub
/// stores it once; the same photo dropped again under the same name is the same inspection.
fn file_key(name: &str, bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(bytes);
    format!("file-{:x}", h.finalize())
}

/// What became of a file.
enum Processed {
    /// Moved to `done/` or `failed/`.
    Moved,
    /// A temporary refusal: left in place.
    Later(String),
}

async fn process(state: &ApiState, path: &Path, done: &Path, failed: &Path) -> Processed {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let asset_id = name.split_once("__").map(|(a, _)| a.to_owned());
    let Ok(admitted) = state.admission.clone().acquire_owned().await else {
        return Processed::Later("shutting down".into());
    };
    let outcome = match std::fs::read(path) {
        Ok(bytes) => {
            let idempotency_key = Some(file_key(&name, &bytes));
            let query = InferQuery {
                asset_id,
                model: None,
                idempotency_key,
            };
            let r = run_inference(state, bytes.into(), query).await;
            // The event is in the outbox; the file has not moved yet.
            fault::point("watch-queued");
            r.map_err(|e| (e.0 == StatusCode::SERVICE_UNAVAILABLE, e.1))
        }
        Err(e) => Err((false, e.to_string())),
    };
    drop(admitted);
    let outcome = match outcome {
        Err((true, reason)) => return Processed::Later(reason),
        Err((false, reason)) => Err(reason),
        Ok(r) => Ok(r),
    };
    let (dest, json) = match outcome {
        Ok(r) => (done, serde_json::to_vec_pretty(&r).unwrap_or_default()),
        Err(e) => (
            failed,
            serde_json::to_vec_pretty(&serde_json::json!({ "error": e })).unwrap_or_default(),
        ),
    };
    let _ = std::fs::write(dest.join(format!("{name}.json")), json);
    if let Err(e) = std::fs::rename(path, dest.join(&name)) {
        tracing::error!(file = %path.display(), error = %e, "cannot move a processed file");
    }
    Processed::Moved
}
