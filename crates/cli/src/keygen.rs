//! `edgemlops keygen`: a new ed25519 publisher key pair for signing model packages.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use package::SecretKey;

/// `edgemlops keygen`
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  edgemlops keygen --out keys\n  \
                        edgemlops keygen --out keys --name ci-publisher\n\n\
                        Writes NAME.key (the secret key, file mode 0600) and NAME.pub (the public key to give to \
                        the hub and devices as a trusted publisher). Both are one-line text files: \
                        'edgemlops-ed25519-<secret|public>-v1 <key id> <64 hex digits>'. Existing files are never \
                        overwritten.")]
pub struct KeygenArgs {
    /// Directory for the key files (created if missing).
    #[arg(long, short)]
    pub out: PathBuf,
    /// File name stem of the key files.
    #[arg(long, default_value = "publisher")]
    pub name: String,
}

/// Writes `text` to a new file (never replacing one), readable only by the owner when `secret`.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::File::options();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = options.open(path).with_context(|| path.display().to_string())?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| path.display().to_string())
}

/// Generates the key pair and writes both files.
pub fn run(a: &KeygenArgs) -> Result<()> {
    if a.name.is_empty() || a.name.contains(['/', '\\']) || a.name.starts_with('.') {
        bail!("--name '{}': use a plain file name stem", a.name);
    }
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let secret_path = a.out.join(format!("{}.key", a.name));
    let public_path = a.out.join(format!("{}.pub", a.name));
    for p in [&secret_path, &public_path] {
        if p.exists() {
            bail!("{}: already exists; keys are never overwritten", p.display());
        }
    }
    let key = SecretKey::generate()?;
    write_new(&secret_path, &key.to_file_text(), true)?;
    write_new(&public_path, &key.public().to_file_text(), false)?;
    println!(
        "key id {}\nsecret key: {} (keep it private)\npublic key: {}",
        key.public().id(),
        secret_path.display(),
        public_path.display()
    );
    Ok(())
}
