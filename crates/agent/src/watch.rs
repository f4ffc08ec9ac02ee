//! The watched input folder: images dropped into it are inferred like `/v1/infer` requests (same
//! queue, same events), then moved to `done/` with the result beside them as `<file>.json`, or to
//! `failed/` with the error. The asset id is the file name up to the first `__`, if any
//! (`pole-17__north.jpg` → `pole-17`). Polled every 500 ms: simple, and correct on every file
//! system; a file is taken only once its size stopped changing between two polls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http::{ApiState, InferQuery, run_inference};

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// Runs forever.
pub async fn run(dir: PathBuf, state: ApiState) {
    let (done, failed) = (dir.join("done"), dir.join("failed"));
    for d in [&dir, &done, &failed] {
        if let Err(e) = std::fs::create_dir_all(d) {
            tracing::error!(dir = %d.display(), error = %e, "watched folder unusable");
            return;
        }
    }
    let mut sizes: HashMap<PathBuf, u64> = HashMap::new();
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
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            seen.insert(path.clone(), size);
            if sizes.get(&path) != Some(&size) {
                continue;
            }
            process(&state, &path, &done, &failed).await;
            seen.remove(&path);
        }
        sizes = seen;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn process(state: &ApiState, path: &Path, done: &Path, failed: &Path) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let asset_id = name.split_once("__").map(|(a, _)| a.to_owned());
    let Ok(admitted) = state.admission.clone().acquire_owned().await else {
        return;
    };
    let outcome = match std::fs::read(path) {
        Ok(bytes) => run_inference(
            state,
            bytes.into(),
            InferQuery {
                asset_id,
                model: None,
            },
        )
        .await
        .map_err(|e| e.1),
        Err(e) => Err(e.to_string()),
    };
    drop(admitted);
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
}
