//! `cargo xtask setup`: ONNX Runtime from the official PyPI wheel, with no other host involved, and
//! the MQTT test clients (`mosquitto-clients`) and broker (`mosquitto`, the stand-in for a thin-edge
//! device's local broker in the agent's tests) from the system's apt repositories.
//!
//! pip downloads `onnxruntime==1.32.0` for this machine's architecture (pinned Python tag and
//! platform, so the same wheel comes back on every machine), the shared library is extracted with
//! Python's `zipfile`, its sha256 is checked against the value pinned below, and it is renamed into
//! `<target>/onnxruntime/1.32.0/`, where the binaries look for it. A second run only re-hashes the
//! cached file.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

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

/// Everything the tests and binaries need: the runtime library and the test models.
pub fn setup() -> Result<PathBuf> {
    let lib = setup_runtime()?;
    setup_test_models()?;
    setup_mqtt_clients()?;
    Ok(lib)
}

/// Debian's `mosquitto_pub` / `mosquitto_sub` (the third-party MQTT clients of the hub's tests)
/// and `mosquitto` (the broker of the agent's thin-edge mode test): installed with apt-get when
/// missing.
fn setup_mqtt_clients() -> Result<()> {
    let present = |tool: &str| {
        Command::new(tool).arg("--help").output().is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout).contains("mosquitto")
                || String::from_utf8_lossy(&o.stderr).contains("mosquitto")
        })
    };
    let all_present = || present("mosquitto_pub") && present("mosquitto_sub") && present("mosquitto");
    if all_present() {
        eprintln!("xtask: mosquitto, mosquitto_pub and mosquitto_sub ready");
        return Ok(());
    }
    eprintln!(
        "xtask: installing mosquitto-clients and mosquitto (MQTT test clients and broker) with apt-get"
    );
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "mosquitto-clients",
                "mosquitto",
            ])
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
    if !(installed && all_present()) {
        bail!(
            "the tests need mosquitto_pub, mosquitto_sub and mosquitto, and `apt-get install \
             mosquitto-clients mosquitto` failed; install the Debian/Ubuntu packages mosquitto-clients and \
             mosquitto (as root) and run again"
        );
    }
    eprintln!("xtask: mosquitto-clients and mosquitto installed");
    Ok(())
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
fn extract(python: &str, wheel: &std::path::Path, member: &str, dest: &std::path::Path) -> Result<()> {
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
