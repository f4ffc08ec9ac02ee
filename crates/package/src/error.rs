//! The package error type: every variant names what failed (which file, which key, which field),
//! because "verification failed" alone does not tell an operator whether the package was tampered
//! with, signed by someone else, or damaged in transit.

use std::path::PathBuf;

/// Why a package could not be built, read, verified or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The archive is not a well-formed package archive (bad header, checksum, padding, truncation).
    #[error("malformed package archive: {reason}")]
    Archive {
        /// What is malformed.
        reason: String,
    },
    /// A member name that could escape the unpack directory or is not allowed in packages.
    #[error("unsafe path '{name}' in package: {reason}")]
    UnsafePath {
        /// The member name as stored.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A member that is not a regular file (link, directory, device, extended header).
    #[error("'{name}' in package is a {kind}, only regular files are allowed")]
    NotRegularFile {
        /// The member name.
        name: String,
        /// What it is.
        kind: &'static str,
    },
    /// A size limit was exceeded.
    #[error("package too large: {what} ({size} bytes) exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What exceeded the limit (a member name, or `the archive`).
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// More members than allowed.
    #[error("package has more than {limit} files")]
    TooManyFiles {
        /// The limit.
        limit: usize,
    },
    /// A member name appears twice.
    #[error("'{name}' appears twice in the package")]
    DuplicateFile {
        /// The member name.
        name: String,
    },
    /// No `manifest.json` as the first member.
    #[error("not a model package: the first file must be manifest.json{}", found.as_ref().map(|f| format!(", found '{f}'")).unwrap_or_default())]
    MissingManifest {
        /// What the first member was, if any.
        found: Option<String>,
    },
    /// No `manifest.sig` after the manifest.
    #[error("package is unsigned: manifest.sig is missing")]
    Unsigned,
    /// `manifest.sig` is not a valid signature document.
    #[error("manifest.sig is malformed: {reason}")]
    SignatureFormat {
        /// What is wrong.
        reason: String,
    },
    /// The package is signed by a key that is not trusted.
    #[error("package is signed by key {key_id}, which is not trusted (trusted: {trusted})")]
    UntrustedKey {
        /// The signer's key id.
        key_id: String,
        /// The trusted key ids (comma-separated, or `none`).
        trusted: String,
    },
    /// The signature does not match manifest.json.
    #[error(
        "bad signature: manifest.json does not match its signature by key {key_id} (manifest.json or manifest.sig was modified)"
    )]
    BadSignature {
        /// The signer's key id.
        key_id: String,
    },
    /// The manifest is not valid (JSON, unknown field, bad value).
    #[error("invalid manifest.json: {reason}")]
    Manifest {
        /// What is wrong (serde's message names an unknown field).
        reason: String,
    },
    /// A file listed in the manifest is not in the archive.
    #[error("'{name}' is listed in the manifest but missing from the package")]
    MissingFile {
        /// The file.
        name: String,
    },
    /// A file in the archive is not listed in the manifest.
    #[error("'{name}' is in the package but not listed in the manifest")]
    UnlistedFile {
        /// The file.
        name: String,
    },
    /// A file's size differs from the manifest.
    #[error("size mismatch for '{name}': manifest says {expected} bytes, package has {actual}")]
    SizeMismatch {
        /// The file.
        name: String,
        /// Size in the manifest.
        expected: u64,
        /// Size in the archive.
        actual: u64,
    },
    /// A file's sha256 differs from the manifest.
    #[error("digest mismatch for '{name}': manifest says sha256 {expected}, file has {actual}")]
    DigestMismatch {
        /// The file.
        name: String,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the content.
        actual: String,
    },
    /// A key file could not be read.
    #[error("{}: {reason}", path.display())]
    KeyFile {
        /// The key file (or `-` for text).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The smoke-test index is invalid or refers to files that are not in the package.
    #[error("invalid smoke tests: {reason}")]
    Smoke {
        /// What is wrong.
        reason: String,
    },
    /// The unpack destination already exists.
    #[error("{}: already exists; unpack into a new directory", path.display())]
    DestinationExists {
        /// The destination.
        path: PathBuf,
    },
}

impl PackageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn archive(reason: impl Into<String>) -> Self {
        Self::Archive {
            reason: reason.into(),
        }
    }
}
