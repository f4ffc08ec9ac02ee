//! `edgemlops model verify`: checks a package as a device would (signature by a trusted key, every
//! file's digest, the manifest), and with `--smoke` also runs its smoke-test vectors in ONNX
//! Runtime.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use infer::{Backend, ModelSource, OrtBackend, SessionOptions};
use package::smoke::{SmokeIndex, Values};
use package::{TrustedKeys, VerifiedPackage};
use serde::Serialize;

use crate::fmt;

/// `edgemlops model verify`
#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  edgemlops model verify vqi-1.0.0.emp --trust keys/publisher.pub\n  \
                        edgemlops model verify vqi-1.0.0.emp --trust trusted-keys/ --smoke --json\n\n\
                        --trust takes a public key file, a keyring (several key lines in one file) or a \
                        directory of *.pub files; repeat it to trust several. Exit code 0 when the package \
                        verifies, 1 with a one-line reason when it does not."
)]
pub struct VerifyArgs {
    /// The package file.
    pub file: PathBuf,
    /// Trusted publisher key: a .pub file, a keyring file or a directory of .pub files.
    #[arg(long, required = true)]
    pub trust: Vec<PathBuf>,
    /// Also unpack the package and run its smoke-test vectors with ONNX Runtime.
    #[arg(long)]
    pub smoke: bool,
    /// Print a JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The JSON report.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// The package file.
    pub path: PathBuf,
    /// Always true (failures are errors).
    pub verified: bool,
    /// sha256 of the package.
    pub sha256: String,
    /// Package size.
    pub size_bytes: u64,
    /// Signing key id.
    pub key_id: String,
    /// The manifest.
    pub manifest: package::Manifest,
    /// Smoke-test results, when run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smoke: Option<SmokeReport>,
}

/// Outcome of the smoke tests.
#[derive(Debug, Serialize)]
pub struct SmokeReport {
    /// Cases run (all passed).
    pub cases: usize,
    /// Largest difference between an output and its expected value.
    pub max_difference: f64,
}

/// Runs every smoke case of an unpacked package; fails on the first output out of tolerance.
pub fn run_smoke_tests(dir: &Path, verified: &VerifiedPackage) -> Result<SmokeReport> {
    let manifest = &verified.manifest;
    let index = SmokeIndex::load(dir, manifest)?;
    let backend = OrtBackend::new()?;
    let mut session = backend
        .load(
            ModelSource::File(&dir.join(&manifest.model)),
            &SessionOptions::default(),
        )
        .with_context(|| format!("loading {}", manifest.model))?;
    let mut max_difference = 0.0f64;
    for (i, case) in index.cases.iter().enumerate() {
        let read = |file: &str| -> Result<infer::Tensor> { Ok(infer::npy::read_npy(&dir.join(file))?) };
        let inputs = case
            .inputs
            .iter()
            .map(|t| read(&t.file))
            .collect::<Result<Vec<_>>>()?;
        let outputs = session.run(&inputs).with_context(|| format!("smoke case {i}"))?;
        if outputs.len() != case.outputs.len() {
            bail!(
                "smoke case {i}: the model returned {} outputs, expected {}",
                outputs.len(),
                case.outputs.len()
            );
        }
        for (expected_file, actual) in case.outputs.iter().zip(&outputs) {
            let expected = read(&expected_file.file)?;
            let (e, a) = (expected.to_f64_vec(), actual.to_f64_vec());
            let diff = index
                .tolerance
                .check(
                    &expected_file.name,
                    Values {
                        shape: expected.shape(),
                        values: &e,
                    },
                    Values {
                        shape: actual.shape(),
                        values: &a,
                    },
                )
                .with_context(|| format!("smoke case {i}"))?;
            max_difference = max_difference.max(diff);
        }
    }
    Ok(SmokeReport {
        cases: index.cases.len(),
        max_difference,
    })
}

/// Verifies the package (and runs its smoke tests with `--smoke`).
pub fn run(a: &VerifyArgs) -> Result<()> {
    let trusted = TrustedKeys::load(&a.trust)?;
    if !a.file.is_file() {
        bail!("{}: no such file", a.file.display());
    }
    let (verified, smoke) = if a.smoke {
        let scratch = tempfile::tempdir().context("creating a temporary directory")?;
        let dir = scratch.path().join("package");
        let verified =
            package::unpack_file(&a.file, &trusted, &dir).with_context(|| a.file.display().to_string())?;
        let smoke = run_smoke_tests(&dir, &verified).with_context(|| a.file.display().to_string())?;
        (verified, Some(smoke))
    } else {
        let verified =
            package::verify_file(&a.file, &trusted).with_context(|| a.file.display().to_string())?;
        (verified, None)
    };
    let m = &verified.manifest;
    if a.json {
        let report = VerifyReport {
            path: a.file.clone(),
            verified: true,
            sha256: verified.sha256.clone(),
            size_bytes: verified.size,
            key_id: verified.signer.to_string(),
            manifest: m.clone(),
            smoke,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "verified {} ({}): {}@{} for {}, signed by key {}, {} files match the manifest\nsha256 {}",
        a.file.display(),
        fmt::bytes(verified.size),
        m.name,
        m.version,
        m.hardware_class,
        verified.signer,
        m.files.len(),
        verified.sha256
    );
    if let Some(s) = smoke {
        println!(
            "smoke tests: {} cases passed (largest difference {:.3e})",
            s.cases, s.max_difference
        );
    }
    Ok(())
}
