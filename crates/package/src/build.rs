//! Writing packages: digest every file, fill the manifest's `files`, sign the manifest bytes, write
//! the archive to a temporary file next to the output, verify the result with the signer's key,
//! then rename it into place. A file that changes while being packaged therefore fails the build
//! instead of producing a package that devices would refuse.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::archive::{ArchiveWriter, check_name};
use crate::error::PackageError;
use crate::keys::{SecretKey, TrustedKeys, hex};
use crate::manifest::{FileDigest, MANIFEST_FILE, Manifest, SIGNATURE_FILE};
use crate::verify::{SignatureFile, VerifiedPackage, verify_file};

/// Where a file's content comes from.
#[derive(Debug)]
enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

/// Collects a manifest and files and writes a signed package.
#[derive(Debug)]
pub struct PackageBuilder {
    manifest: Manifest,
    files: BTreeMap<String, Source>,
}

fn digest(reader: &mut dyn Read, origin: &Path) -> Result<FileDigest, PackageError> {
    let mut hasher = Sha256::new();
    let size = std::io::copy(reader, &mut hasher).map_err(|e| PackageError::io(origin, e))?;
    Ok(FileDigest {
        sha256: hex(&hasher.finalize()),
        size,
    })
}

impl PackageBuilder {
    /// A builder for `manifest`; its `files` map is filled in by [`PackageBuilder::write`].
    pub fn new(manifest: Manifest) -> Self {
        Self {
            manifest,
            files: BTreeMap::new(),
        }
    }

    /// The manifest as it stands (without the file digests).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest, to fill in fields after files were chosen.
    pub fn manifest_mut(&mut self) -> &mut Manifest {
        &mut self.manifest
    }

    fn insert(&mut self, name: &str, source: Source) -> Result<(), PackageError> {
        check_name(name)?;
        if name == MANIFEST_FILE || name == SIGNATURE_FILE {
            return Err(PackageError::UnsafePath {
                name: name.to_owned(),
                reason: "reserved for the package's own manifest and signature",
            });
        }
        if self.files.insert(name.to_owned(), source).is_some() {
            return Err(PackageError::DuplicateFile {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Adds the file at `path` as `name`.
    pub fn add_file(&mut self, name: &str, path: &Path) -> Result<(), PackageError> {
        if !path.is_file() {
            return Err(PackageError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            ));
        }
        self.insert(name, Source::Path(path.to_owned()))
    }

    /// Adds `bytes` as `name`.
    pub fn add_bytes(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), PackageError> {
        self.insert(name, Source::Bytes(bytes))
    }

    /// Writes the signed package to `out` (replacing it) and returns what verification of the
    /// written file established.
    pub fn write(mut self, out: &Path, key: &SecretKey) -> Result<VerifiedPackage, PackageError> {
        let mut files = BTreeMap::new();
        for (name, source) in &self.files {
            let d = match source {
                Source::Path(p) => {
                    let f = File::open(p).map_err(|e| PackageError::io(p, e))?;
                    digest(&mut BufReader::new(f), p)?
                }
                Source::Bytes(b) => digest(&mut b.as_slice(), Path::new(name))?,
            };
            files.insert(name.clone(), d);
        }
        self.manifest.files = files;
        self.manifest.validate()?;
        let manifest_bytes = self.manifest.to_json();
        let signature = SignatureFile {
            algorithm: "ed25519".into(),
            key_id: key.public().id().to_string(),
            signature: hex(&key.sign(&manifest_bytes).to_bytes()),
        }
        .to_json();

        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".package-")
            .tempfile_in(&dir)
            .map_err(|e| PackageError::io(&dir, e))?;
        let mtime = u64::try_from(self.manifest.created.unix_nanos().div_euclid(1_000_000_000)).unwrap_or(0);
        let mut writer = ArchiveWriter::new(BufWriter::new(tmp.as_file()), mtime);
        let io_err = |e| PackageError::io(tmp.path(), e);
        writer
            .append(
                MANIFEST_FILE,
                manifest_bytes.len() as u64,
                &mut manifest_bytes.as_slice(),
            )
            .map_err(io_err)?;
        writer
            .append(SIGNATURE_FILE, signature.len() as u64, &mut signature.as_slice())
            .map_err(io_err)?;
        for (name, source) in &self.files {
            let size = self.manifest.files[name].size;
            match source {
                Source::Path(p) => {
                    let f = File::open(p).map_err(|e| PackageError::io(p, e))?;
                    writer
                        .append(name, size, &mut BufReader::new(f))
                        .map_err(|e| PackageError::io(p, e))?;
                }
                Source::Bytes(b) => writer.append(name, size, &mut b.as_slice()).map_err(io_err)?,
            }
        }
        writer
            .finish()
            .and_then(|w| w.into_inner().map_err(std::io::IntoInnerError::into_error))
            .map_err(io_err)?;
        tmp.as_file().sync_all().map_err(io_err)?;

        let mut signer = TrustedKeys::new();
        signer.add(key.public().clone());
        let verified = verify_file(tmp.path(), &signer)?;
        // Temporary files are created private (0600); a package is an ordinary, shareable file.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
                .map_err(|e| PackageError::io(tmp.path(), e))?;
        }
        tmp.persist(out).map_err(|e| PackageError::io(out, e.error))?;
        Ok(verified)
    }
}
