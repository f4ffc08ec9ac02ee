//! The real `edgemlops-hub` binary for integration tests of other packages (the agent's and the
//! CLI's), included by each with `#[path]` so the locator exists once.
//!
//! `cargo test --workspace` (what `cargo xtask test` runs) builds every binary of the workspace,
//! so the hub is already next to the package's own binary. A developer running
//! `cargo test -p agent` gets it rebuilt when any hub source is newer than the binary.
//! `EDGEMLOPS_HUB_BIN` points at another build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

/// The `edgemlops-hub` binary in the same profile directory as `sibling` (a binary of the
/// package under test, from `env!("CARGO_BIN_EXE_...")`), built first when stale.
pub fn hub_binary(sibling: &Path) -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("EDGEMLOPS_HUB_BIN") {
            return PathBuf::from(p);
        }
        let profile_dir = sibling.parent().expect("a binary lives in a profile directory");
        let candidate = profile_dir.join("edgemlops-hub");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut newest = SystemTime::UNIX_EPOCH;
        for dir in ["crates/hub", "crates/proto/src", "crates/package/src"] {
            newest_mtime(&root.join(dir), &mut newest);
        }
        if let Ok(m) = std::fs::metadata(root.join("Cargo.lock")).and_then(|m| m.modified()) {
            newest = newest.max(m);
        }
        let fresh = std::fs::metadata(&candidate)
            .and_then(|m| m.modified())
            .is_ok_and(|built| built >= newest);
        if !fresh {
            let target_dir = profile_dir.parent().expect("a profile directory has a parent");
            let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
            cmd.args(["build", "-p", "hub", "--bin", "edgemlops-hub", "--target-dir"])
                .arg(target_dir)
                .current_dir(&root);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo runs to build edgemlops-hub");
            assert!(status.success(), "building edgemlops-hub for the tests failed");
        }
        assert!(candidate.is_file(), "no edgemlops-hub at {}", candidate.display());
        candidate
    })
}

fn newest_mtime(dir: &Path, newest: &mut SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            newest_mtime(&p, newest);
        } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
            *newest = (*newest).max(m);
        }
    }
}
