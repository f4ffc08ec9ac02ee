//! `cargo xtask setup`: everything the tests, the demo and the benchmarks run that is not ours,
//! fetched only through package registries' own clients and cached or installed once:
//!
//! - ONNX Runtime from the official PyPI wheel, and real exported test models (PP-OCR) from
//!   another PyPI wheel, both pinned by sha256 and cached under the target directory;
//! - from the system's apt repositories, when missing: `mosquitto-clients` (`mosquitto_pub`/
//!   `mosquitto_sub`, the hub tests' MQTT clients), `mosquitto` (the stand-in for a thin-edge
//!   device's local broker in the agent's tests), `postgresql` (the hub's database in its tests)
//!   and `haproxy` (the load balancer in front of several hub nodes);
//! - Garage, the S3-compatible object store of the hub's tests, built from crates.io into
//!   `<target>/tools/` ([`crate::setup_garage`]).
//!
//! pip downloads `onnxruntime==1.32.0` for this machine's architecture (pinned Python tag and
//! platform, so the same wheel comes back on every machine), the shared library is extracted with
//! Python's `zipfile`, its sha256 is checked against the value pinned below, and it is renamed into
//! `<target>/onnxruntime/1.32.0/`, where the binaries look for it. A second run only re-hashes the
//! cached files and checks that the programs are there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::setup_garage;
use crate::util::{self, sha256_file};

const VERSION: &str = "1.32.0";
const LIBRARY: &str = "libonnxruntime.so.1.32.0";
const WHEEL_MEMBER: &str = "onnxruntime/capi/libonnxruntime.so.1.32.0";

/// sha256 of the library inside the `onnxruntime==1.32.0` cp311 manylinux_2_28 wheels.
fn pinned() -> Result<(&'static str, &'static str)> {
    match std::env::consts::ARCH {
        "x86_64" => Ok((
            "manylinux_2_28_x86_64",
            "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
        )),
        "aarch64" => Ok((
            "manylinux_2_28_aarch64",
            "49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a",
        )),
        other => {
            bail!("no pinned ONNX Runtime {VERSION} build for architecture {other} (x86_64 and aarch64 are)")
        }
    }
}

/// Real exported models for tests: PP-OCR models shipped inside an Apache-2.0 wheel on PyPI.
const TEST_MODEL_WHEEL: &str = "rapidocr-onnxruntime==1.4.4";
const TEST_MODEL_DIR: &str = "test-models/rapidocr-1.4.4";
const TEST_MODELS: [(&str, &str); 3] = [
    (
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
    ),
    (
        "ch_PP-OCRv4_det_infer.onnx",
        "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
    ),
    (
        "ch_PP-OCRv4_rec_infer.onnx",
        "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
    ),
];

/// Everything the tests need (`cargo xtask setup`, `test`, `bench hub`): the runtime library, the
/// test models, the Debian packages and Garage. Nothing global is exported: each consumer finds
/// what it needs (the runtime and Garage under the target directory, the Debian programs at their
/// standard paths).
pub fn setup() -> Result<PathBuf> {
    let lib = setup_programs()?;
    ensure_apt_packages(&APT_PACKAGES)?;
    setup_garage::setup_garage()?;
    Ok(lib)
}

/// What the programs themselves need (the demo, the model benchmarks): the runtime library and
/// the test models, fetched through pip into the target directory. No root, no apt.
pub fn setup_programs() -> Result<PathBuf> {
    let lib = setup_runtime()?;
    setup_test_models()?;
    Ok(lib)
}

/// The Debian packages behind the third-party programs the tests start, each with what shows it
/// is installed: an executable on PATH, or a path in which a `*` component matches any entry.
const APT_PACKAGES: [(&str, &str); 5] = [
    // MQTT test clients of the hub's tests
    ("mosquitto_pub", "mosquitto-clients"),
    ("mosquitto_sub", "mosquitto-clients"),
    // the stand-in for a thin-edge device's local broker in the agent's tests
    ("mosquitto", "mosquitto"),
    // the hub's database in its tests (`testsupport/postgres.rs` runs `initdb` and `postgres`)
    ("/usr/lib/postgresql/*/bin/initdb", "postgresql"),
    // the load balancer in front of several hub nodes (`testsupport/haproxy.rs`)
    ("/usr/sbin/haproxy", "haproxy"),
];

/// Installs the Debian packages of `needs` whose probe (first element) finds nothing, with
/// `apt-get install` (after an `apt-get update` when the first try fails).
fn ensure_apt_packages(needs: &[(&str, &str)]) -> Result<()> {
    let mut packages: Vec<&str> = Vec::new();
    let mut missing: Vec<&str> = Vec::new();
    for &(probe, package) in needs {
        if !packages.contains(&package) {
            packages.push(package);
        }
        if !present(probe) && !missing.contains(&package) {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        eprintln!("xtask: Debian packages ready: {}", packages.join(", "));
        return Ok(());
    }
    let list = missing.join(" ");
    eprintln!("xtask: installing {list} with apt-get");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    let installed = install()
        || (Command::new("apt-get")
            .arg("update")
            .status()
            .is_ok_and(|s| s.success())
            && install());
    let absent: Vec<&str> = needs
        .iter()
        .filter(|(probe, _)| !present(probe))
        .map(|(probe, _)| *probe)
        .collect();
    if !installed || !absent.is_empty() {
        bail!(
            "the tests need the Debian/Ubuntu packages {list}, and `apt-get install {list}` {} \
             (still missing: {}); install them (as root) and run again",
            if installed {
                "did not provide them"
            } else {
                "failed"
            },
            absent.join(", ")
        );
    }
    eprintln!("xtask: installed {list}");
    Ok(())
}

/// Whether `probe` exists: an executable name is looked up on PATH; a path may have `*`
/// components.
fn present(probe: &str) -> bool {
    if !probe.contains('/') {
        return std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(probe).is_file()));
    }
    fn matches(base: &Path, rest: &[&str]) -> bool {
        match rest {
            [] => base.exists(),
            ["*", tail @ ..] => std::fs::read_dir(base)
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| matches(&e.path(), tail)),
            [name, tail @ ..] => matches(&base.join(name), tail),
        }
    }
    let parts: Vec<&str> = probe.split('/').filter(|p| !p.is_empty()).collect();
    matches(Path::new("/"), &parts)
}

/// Makes sure the verified library is cached; returns its path.
pub fn setup_runtime() -> Result<PathBuf> {
    let (platform, sha) = pinned()?;
    let dir = util::target_dir()?.join("onnxruntime").join(VERSION);
    let lib = dir.join(LIBRARY);
    if lib.is_file() && sha256_file(&lib)? == sha {
        eprintln!("xtask: ONNX Runtime {VERSION} ready at {}", lib.display());
        return Ok(lib);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let python = python()?;
    let wheels = dir.join("wheel");
    eprintln!("xtask: downloading onnxruntime=={VERSION} ({platform}) from PyPI with pip");
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
        ])
        .args([
            "--python-version",
            "3.11",
            "--platform",
            platform,
            "--implementation",
            "cp",
        ])
        .arg("--dest")
        .arg(&wheels)
        .arg(format!("onnxruntime=={VERSION}"))
        .status()
        .with_context(|| format!("running {python} -m pip"))?;
    if !status.success() {
        bail!(
            "pip could not download onnxruntime=={VERSION} for {platform} ({status}); \
             check that PyPI is reachable (pip config, proxy) and that pip works: {python} -m pip --version"
        );
    }
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(&format!("onnxruntime-{VERSION}-")) && n.ends_with(&format!("{platform}.whl"))
            })
        })
        .with_context(|| {
            format!(
                "pip reported success but no onnxruntime {VERSION} wheel is in {}",
                wheels.display()
            )
        })?;
    let tmp = dir.join(format!(".{LIBRARY}.partial"));
    extract(&python, &wheel, WHEEL_MEMBER, &tmp)?;
    let got = sha256_file(&tmp)?;
    if got != sha {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "{WHEEL_MEMBER} in {} has sha256 {got}, expected {sha}: refusing to use it",
            wheel.display()
        );
    }
    std::fs::rename(&tmp, &lib).with_context(|| format!("moving the library to {}", lib.display()))?;
    let _ = std::fs::remove_dir_all(&wheels);
    eprintln!(
        "xtask: ONNX Runtime {VERSION} verified and cached at {}",
        lib.display()
    );
    Ok(lib)
}

/// Fetches the PP-OCR models (pinned wheel, sha256 of each model checked) into `<target>/test-models/`.
fn setup_test_models() -> Result<()> {
    let dir = util::target_dir()?.join(TEST_MODEL_DIR);
    let mut ready = true;
    for (name, sha) in TEST_MODELS {
        let p = dir.join(name);
        ready &= p.is_file() && sha256_file(&p)? == sha;
    }
    if ready {
        eprintln!("xtask: test models ready in {}", dir.display());
        return Ok(());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let python = python()?;
    let wheels = dir.join("wheel");
    eprintln!("xtask: downloading {TEST_MODEL_WHEEL} (PP-OCR models, Apache-2.0) from PyPI with pip");
    util::run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
            ])
            .arg(&wheels)
            .arg(TEST_MODEL_WHEEL),
    )
    .context("pip could not download the test models; check that PyPI is reachable")?;
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip reported success but left no wheel")?;
    for (name, sha) in TEST_MODELS {
        let tmp = dir.join(format!(".{name}.partial"));
        extract(
            &python,
            &wheel,
            &format!("rapidocr_onnxruntime/models/{name}"),
            &tmp,
        )?;
        let got = sha256_file(&tmp)?;
        if got != sha {
            let _ = std::fs::remove_file(&tmp);
            bail!("{name} in {} has sha256 {got}, expected {sha}", wheel.display());
        }
        std::fs::rename(&tmp, dir.join(name))?;
    }
    let _ = std::fs::remove_dir_all(&wheels);
    eprintln!("xtask: test models verified and cached in {}", dir.display());
    Ok(())
}

/// Extracts one member of a wheel (a zip file) with Python's zipfile module.
fn extract(python: &str, wheel: &Path, member: &str, dest: &Path) -> Result<()> {
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst)\n";
    util::run(
        Command::new(python)
            .args(["-c", script])
            .arg(wheel)
            .arg(member)
            .arg(dest),
    )
    .with_context(|| format!("extracting {member} from {}", wheel.display()))
}

/// The Python interpreter pip runs under.
pub fn python() -> Result<String> {
    for candidate in ["python3", "python"] {
        if Command::new(candidate)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(candidate.to_owned());
        }
    }
    bail!("Python 3 with pip is needed to fetch ONNX Runtime from PyPI; install python3 and python3-pip")
}
