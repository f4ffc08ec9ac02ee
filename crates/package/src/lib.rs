//! Model packages: one signed tar archive per model variant, and its verification.
//!
//! A package (`.emp`) holds, in this order: `manifest.json` ([`Manifest`]: what the model is, how
//! to run it, and the sha256 and size of every other file), `manifest.sig` (an ed25519 signature of
//! the exact manifest bytes by a publisher key, [`SignatureFile`]), then the files: the ONNX model,
//! `labels.txt`, and smoke-test vectors ([`smoke`]). The whole archive's sha256 is its content
//! address in the hub's registry.
//!
//! - Write: [`PackageBuilder`] digests, signs, writes atomically, and verifies what it wrote.
//! - Read: [`verify_file`] / [`verify_reader`] check everything in one streaming pass and name
//!   exactly what failed ([`PackageError`]); [`unpack_file`] / [`unpack_reader`] also write the
//!   files, into a new directory that appears only once everything verified.
//! - Keys: [`SecretKey`], [`PublicKey`], [`TrustedKeys`] and their text format ([`keys`]).
//!
//! The archive format is a strict ustar subset ([`archive`]): regular files with safe relative
//! names only, bounded by [`Limits`]. This crate does no networking and no inference: smoke vectors
//! are computed by the toolchain and executed by the agent, which both link ONNX Runtime.

pub mod archive;
pub mod build;
pub mod error;
pub mod keys;
pub mod manifest;
pub mod smoke;
pub mod verify;

pub use archive::Limits;
pub use build::PackageBuilder;
pub use error::PackageError;
pub use keys::{KeyId, PublicKey, SecretKey, TrustedKeys};
pub use manifest::{Manifest, Version};
pub use verify::{
    SignatureFile, VerifiedPackage, read_manifest_unverified, unpack_file, unpack_reader, verify_file,
    verify_reader,
};

/// The usual file extension of packages.
pub const EXTENSION: &str = "emp";
