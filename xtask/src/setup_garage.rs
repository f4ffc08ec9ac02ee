//! `cargo xtask setup`'s Garage step: the S3-compatible object store of the hub's tests and
//! benchmarks, built once from crates.io with `cargo install` (it is not in Debian, and nothing is
//! downloaded from other hosts) and cached in `<target>/tools/garage-<version>/bin/garage`, where
//! `testsupport/garage.rs` finds it. Later runs only check that the binary reports the version.
//!
//! Features: `bundled-libs` (libsodium and LMDB compiled from the crates' sources, no system
//! libraries) and `lmdb` (Garage's recommended metadata engine; `sqlite` would compile SQLite's
//! amalgamation too). `metrics` (Prometheus, OpenTelemetry) and `k2v` are not needed by the hub.
//! The build directory stays under `<target>/tools/garage-build/` while building, so an
//! interrupted build resumes where it stopped; it is removed once the binary is in place.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util;

const VERSION: &str = "2.5.0";
const FEATURES: &str = "bundled-libs,lmdb";

/// Makes sure Garage is built and cached; returns the binary's path.
pub fn setup_garage() -> Result<PathBuf> {
    let tools = util::target_dir()?.join("tools");
    let root = tools.join(format!("garage-{VERSION}"));
    let bin = root.join("bin").join("garage");
    if bin.is_file() {
        match reported_version(&bin) {
            Ok(v) if names_version(&v) => {
                eprintln!("xtask: Garage {VERSION} ready at {}", bin.display());
                return Ok(bin);
            }
            Ok(v) => eprintln!(
                "xtask: {} reports {v:?}, not {VERSION}: building it again",
                bin.display()
            ),
            Err(e) => eprintln!("xtask: {} does not run ({e:#}): building it again", bin.display()),
        }
    }
    let build_dir = tools.join("garage-build");
    eprintln!(
        "xtask: building Garage {VERSION} (S3 object store for the hub's tests) from crates.io with \
         cargo install, features {FEATURES}; once per target directory, about 10 minutes on 2 cores"
    );
    let started = Instant::now();
    util::run(
        Command::new(util::cargo_bin())
            .args([
                "install",
                "garage",
                "--version",
                &format!("={VERSION}"),
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features", FEATURES, "--root"])
            .arg(&root)
            .arg("--target-dir")
            .arg(&build_dir),
    )
    .context(
        "building Garage from crates.io failed; check that crates.io is reachable (run again to resume)",
    )?;
    let version = reported_version(&bin)?;
    if !names_version(&version) {
        bail!("the Garage just built reports {version:?}, expected {VERSION}");
    }
    // The binary is all that is needed; the build directory is about 750 MB.
    let _ = std::fs::remove_dir_all(&build_dir);
    eprintln!(
        "xtask: Garage {VERSION} built in {:.0?} and cached at {}",
        started.elapsed(),
        bin.display()
    );
    Ok(bin)
}

/// `garage --version`'s first line, e.g. `garage cargo:2.5.0 [features: bundled-libs, lmdb]`.
fn reported_version(bin: &Path) -> Result<String> {
    let out = util::captured(Command::new(bin).arg("--version"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned())
}

fn names_version(reported: &str) -> bool {
    reported
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|token| token == VERSION)
}
