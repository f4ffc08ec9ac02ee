//! Verification and unpacking, in one streaming pass over the archive.
//!
//! Order of checks, each with its own error: `manifest.json` is the first member, `manifest.sig`
//! the second (else the package is unsigned); the signature names a trusted key and matches the
//! exact manifest bytes; the manifest parses (unknown fields named) and validates; every later
//! member is listed in the manifest, has the listed size and sha256, appears once; every listed
//! file was present. Nothing is parsed from the manifest before its signature is checked.
//!
//! Unpacking writes into a fresh temporary directory next to the destination and renames it into
//! place only after everything verified, so a destination never holds unverified files.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::{ArchiveReader, Limits};
use crate::error::PackageError;
use crate::keys::{KeyId, TrustedKeys, hex, unhex};
use crate::manifest::{MANIFEST_FILE, Manifest, SIGNATURE_FILE};

/// `manifest.sig`: which key signed the manifest, and the signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Always `ed25519`.
    pub algorithm: String,
    /// The signer's key id.
    pub key_id: String,
    /// The 64-byte signature of the exact `manifest.json` bytes, as 128 hex digits.
    pub signature: String,
}

impl SignatureFile {
    /// The file bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("signature files serialize (three strings)");
        v.push(b'\n');
        v
    }

    fn parse(bytes: &[u8]) -> Result<(Self, Signature), PackageError> {
        let bad = |reason: String| PackageError::SignatureFormat { reason };
        let file: Self = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if file.algorithm != "ed25519" {
            return Err(bad(format!(
                "algorithm '{}' is not supported (ed25519)",
                file.algorithm
            )));
        }
        if unhex::<8>(&file.key_id).is_none() {
            return Err(bad("key_id must be 16 lowercase hex digits".into()));
        }
        let sig = unhex::<64>(&file.signature)
            .ok_or_else(|| bad("signature must be 128 lowercase hex digits".into()))?;
        Ok((file, Signature::from_bytes(&sig)))
    }
}

/// What a successful verification established.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedPackage {
    /// The manifest (signed, parsed, validated).
    pub manifest: Manifest,
    /// Its exact bytes (what was signed).
    pub manifest_bytes: Vec<u8>,
    /// The key that signed it.
    pub signer: KeyId,
    /// sha256 of the whole archive (the package's content address), hex.
    pub sha256: String,
    /// Size of the whole archive in bytes.
    pub size: u64,
}

/// Counts and hashes every byte read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes what is written through it, and passes it on to an optional file.
struct DigestSink<'a> {
    hasher: Sha256,
    file: Option<&'a mut dyn Write>,
}

impl Write for DigestSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(f) = self.file.as_mut() {
            f.write_all(buf)?;
        }
        self.hasher.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

/// Where verified members go.
#[derive(Clone, Copy)]
enum Destination<'a> {
    /// Nowhere: verification only.
    Discard,
    /// Files under this (fresh, private) directory.
    Dir(&'a Path),
}

/// Verifies the package file at `path` with the default [`Limits`].
pub fn verify_file(path: &Path, trusted: &TrustedKeys) -> Result<VerifiedPackage, PackageError> {
    let file = File::open(path).map_err(|e| PackageError::io(path, e))?;
    verify_reader(BufReader::new(file), trusted, &Limits::default())
}

/// Verifies a package read from `reader` (consumed to its end).
pub fn verify_reader(
    reader: impl Read,
    trusted: &TrustedKeys,
    limits: &Limits,
) -> Result<VerifiedPackage, PackageError> {
    run(reader, trusted, limits, Destination::Discard)
}

/// Verifies the package at `path` and unpacks it into `dest`, which must not exist yet (its
/// parent must). On any failure `dest` is not created.
pub fn unpack_file(path: &Path, trusted: &TrustedKeys, dest: &Path) -> Result<VerifiedPackage, PackageError> {
    let file = File::open(path).map_err(|e| PackageError::io(path, e))?;
    unpack_reader(BufReader::new(file), trusted, &Limits::default(), dest)
}

/// Verifies a package read from `reader` and unpacks it into `dest` (see [`unpack_file`]).
pub fn unpack_reader(
    reader: impl Read,
    trusted: &TrustedKeys,
    limits: &Limits,
    dest: &Path,
) -> Result<VerifiedPackage, PackageError> {
    if dest.exists() {
        return Err(PackageError::DestinationExists {
            path: dest.to_owned(),
        });
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "package".into());
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{file_name}.unpack-"))
        .tempdir_in(&parent)
        .map_err(|e| PackageError::io(&parent, e))?;
    let verified = run(reader, trusted, limits, Destination::Dir(staging.path()))?;
    let staged = staging.keep();
    std::fs::rename(&staged, dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(&staged);
        PackageError::io(dest, e)
    })?;
    if let Ok(dir) = File::open(&parent) {
        // Make the rename durable; a failure here loses nothing that verification depends on.
        let _ = dir.sync_all();
    }
    Ok(verified)
}

/// Reads the manifest of a package without checking the signature or any digest: for showing what
/// a file claims to be. Never install from this.
pub fn read_manifest_unverified(path: &Path) -> Result<Manifest, PackageError> {
    let file = File::open(path).map_err(|e| PackageError::io(path, e))?;
    let mut archive = ArchiveReader::new(BufReader::new(file), Limits::default());
    let (_, bytes) = read_manifest(&mut archive, &Limits::default())?;
    Manifest::from_json(&bytes)
}

/// The current member's content, in memory (callers check its size against a limit first).
fn read_small<R: Read>(archive: &mut ArchiveReader<R>) -> Result<Vec<u8>, PackageError> {
    let mut bytes = Vec::new();
    archive.copy_content(&mut bytes)?;
    Ok(bytes)
}

fn read_manifest<R: Read>(
    archive: &mut ArchiveReader<R>,
    limits: &Limits,
) -> Result<(u64, Vec<u8>), PackageError> {
    let first = archive.next_member()?;
    match first {
        Some(m) if m.name == MANIFEST_FILE => {
            if m.size > limits.max_manifest_bytes {
                return Err(PackageError::TooLarge {
                    what: MANIFEST_FILE.into(),
                    size: m.size,
                    limit: limits.max_manifest_bytes,
                });
            }
            Ok((m.size, read_small(archive)?))
        }
        other => Err(PackageError::MissingManifest {
            found: other.map(|m| m.name),
        }),
    }
}

fn run<R: Read>(
    reader: R,
    trusted: &TrustedKeys,
    limits: &Limits,
    dest: Destination<'_>,
) -> Result<VerifiedPackage, PackageError> {
    let mut archive = ArchiveReader::new(
        HashingReader {
            inner: reader,
            hasher: Sha256::new(),
            count: 0,
        },
        *limits,
    );
    let (_, manifest_bytes) = read_manifest(&mut archive, limits)?;

    let sig_member = archive.next_member()?.filter(|m| m.name == SIGNATURE_FILE);
    let Some(sig_member) = sig_member else {
        return Err(PackageError::Unsigned);
    };
    if sig_member.size > limits.max_signature_bytes {
        return Err(PackageError::TooLarge {
            what: SIGNATURE_FILE.into(),
            size: sig_member.size,
            limit: limits.max_signature_bytes,
        });
    }
    let sig_bytes = read_small(&mut archive)?;
    let (sig_file, signature) = SignatureFile::parse(&sig_bytes)?;
    let Some(key) = trusted.get(&sig_file.key_id) else {
        let ids: Vec<String> = trusted.ids().map(|k| k.to_string()).collect();
        return Err(PackageError::UntrustedKey {
            key_id: sig_file.key_id,
            trusted: if ids.is_empty() {
                "none".into()
            } else {
                ids.join(", ")
            },
        });
    };
    if !key.verify(&manifest_bytes, &signature) {
        return Err(PackageError::BadSignature {
            key_id: sig_file.key_id,
        });
    }
    let manifest = Manifest::from_json(&manifest_bytes)?;

    let mut seen = BTreeSet::new();
    while let Some(member) = archive.next_member()? {
        if member.name == MANIFEST_FILE || member.name == SIGNATURE_FILE || !seen.insert(member.name.clone())
        {
            return Err(PackageError::DuplicateFile { name: member.name });
        }
        let Some(listed) = manifest.files.get(&member.name) else {
            return Err(PackageError::UnlistedFile { name: member.name });
        };
        if member.size != listed.size {
            return Err(PackageError::SizeMismatch {
                name: member.name,
                expected: listed.size,
                actual: member.size,
            });
        }
        let actual = match dest {
            Destination::Discard => {
                let mut sink = DigestSink {
                    hasher: Sha256::new(),
                    file: None,
                };
                archive.copy_content(&mut sink)?;
                hex(&sink.hasher.finalize())
            }
            Destination::Dir(dir) => {
                let path = dir.join(&member.name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| PackageError::io(parent, e))?;
                }
                let file = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| PackageError::io(&path, e))?;
                let mut out = BufWriter::new(file);
                let mut sink = DigestSink {
                    hasher: Sha256::new(),
                    file: Some(&mut out),
                };
                archive.copy_content(&mut sink)?;
                let digest = hex(&sink.hasher.finalize());
                let file = out
                    .into_inner()
                    .map_err(|e| PackageError::io(&path, e.into_error()))?;
                file.sync_all().map_err(|e| PackageError::io(&path, e))?;
                digest
            }
        };
        if actual != listed.sha256 {
            return Err(PackageError::DigestMismatch {
                name: member.name,
                expected: listed.sha256.clone(),
                actual,
            });
        }
    }
    if let Some(missing) = manifest.files.keys().find(|f| !seen.contains(*f)) {
        return Err(PackageError::MissingFile {
            name: missing.clone(),
        });
    }
    let hashing = archive.into_inner();
    Ok(VerifiedPackage {
        manifest,
        manifest_bytes,
        signer: key.id().clone(),
        sha256: hex(&hashing.hasher.finalize()),
        size: hashing.count,
    })
}
