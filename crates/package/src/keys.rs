//! Publisher keys (ed25519) and their text file format.
//!
//! A key file is UTF-8 text; lines starting with `#` and blank lines are comments. A key is one line
//! of three fields separated by single spaces:
//!
//! ```text
//! # EdgeMLOps publisher public key
//! edgemlops-ed25519-public-v1 3f2a9c0d1e4b5a67 8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c
//! ```
//!
//! - the kind: `edgemlops-ed25519-public-v1` or `edgemlops-ed25519-secret-v1`;
//! - the key id: the first 8 bytes of sha256(public key), as 16 lowercase hex digits (for a
//!   secret key, of its public half), so a signature can name its key and a reader can check that
//!   the line was not mixed up;
//! - the key: 32 bytes as 64 lowercase hex digits (the public key, or the secret seed).
//!
//! A trust file may hold several public key lines (a keyring); a trust directory holds `*.pub`
//! files. `edgemlops keygen` writes `NAME.key` (mode 0600) and `NAME.pub`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::PackageError;

const PUBLIC_KIND: &str = "edgemlops-ed25519-public-v1";
const SECRET_KIND: &str = "edgemlops-ed25519-secret-v1";

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Bytes of lowercase hex of exactly `N` bytes.
pub fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let b = text.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = nibble(b[2 * i])? << 4 | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

/// The id of a public key: the first 8 bytes of its sha256, as 16 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &VerifyingKey) -> Self {
        Self(hex(&Sha256::digest(key.as_bytes())[..8]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A publisher's public key, with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    /// Wraps a verifying key.
    pub fn new(key: VerifyingKey) -> Self {
        let id = KeyId::of(&key);
        Self { key, id }
    }

    /// The key id.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The ed25519 key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The key file line.
    pub fn to_line(&self) -> String {
        format!("{PUBLIC_KIND} {} {}", self.id, hex(self.key.as_bytes()))
    }

    /// The key file text (a comment and the key line).
    pub fn to_file_text(&self) -> String {
        format!("# EdgeMLOps publisher public key\n{}\n", self.to_line())
    }

    /// Reads the single public key of a key file's text.
    pub fn from_text(text: &str, origin: &Path) -> Result<Self, PackageError> {
        let keys = parse_lines(text, origin, PUBLIC_KIND)?;
        match <[_; 1]>::try_from(keys) {
            Ok([(id, bytes)]) => public_from(&id, bytes, origin),
            Err(keys) => Err(key_error(
                origin,
                format!("expected one public key, found {}", keys.len()),
            )),
        }
    }

    /// Verifies an ed25519 signature of `message` (strict verification: no malleable signatures).
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        self.key.verify_strict(message, signature).is_ok()
    }
}

/// A publisher's signing key.
pub struct SecretKey {
    key: SigningKey,
    public: PublicKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("id", &self.public.id)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// A new random key (from the operating system's random source).
    pub fn generate() -> Result<Self, PackageError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| PackageError::KeyFile {
            path: PathBuf::from("(random source)"),
            reason: format!("no randomness for a new key: {e}"),
        })?;
        Ok(Self::from_seed(&seed))
    }

    /// The key of a 32-byte seed (deterministic; for tests and key files).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let public = PublicKey::new(key.verifying_key());
        Self { key, public }
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// The key file text.
    pub fn to_file_text(&self) -> String {
        format!(
            "# EdgeMLOps publisher SECRET key: keep it private; it signs model packages\n{SECRET_KIND} {} {}\n",
            self.public.id,
            hex(self.key.as_bytes())
        )
    }

    /// Reads a secret key file's text.
    pub fn from_text(text: &str, origin: &Path) -> Result<Self, PackageError> {
        let keys = parse_lines(text, origin, SECRET_KIND)?;
        let Ok([(id, seed)]) = <[_; 1]>::try_from(keys) else {
            return Err(key_error(origin, "expected exactly one secret key line".into()));
        };
        let key = Self::from_seed(&seed);
        if key.public.id.as_str() != id {
            return Err(key_error(
                origin,
                format!("key id {id} does not match the key (its id is {})", key.public.id),
            ));
        }
        Ok(key)
    }

    /// Reads a secret key file.
    pub fn load(path: &Path) -> Result<Self, PackageError> {
        let text = std::fs::read_to_string(path).map_err(|e| PackageError::io(path, e))?;
        Self::from_text(&text, path)
    }
}

fn key_error(origin: &Path, reason: String) -> PackageError {
    PackageError::KeyFile {
        path: origin.to_owned(),
        reason,
    }
}

/// The `(key id, 32 bytes)` of every key line of `kind`; any other non-comment line is an error.
fn parse_lines(text: &str, origin: &Path, kind: &str) -> Result<Vec<(String, [u8; 32])>, PackageError> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| key_error(origin, format!("line {}: {reason}", n + 1));
        let fields: Vec<&str> = line.split(' ').collect();
        let [k, id, key] = fields[..] else {
            return Err(bad("expected '<kind> <key id> <hex key>'"));
        };
        if k != kind {
            let hint = match k {
                PUBLIC_KIND => " (this is a public key)",
                SECRET_KIND => " (this is a SECRET key)",
                _ => "",
            };
            return Err(bad(&format!("expected a {kind} line, found '{k}'{hint}")));
        }
        if unhex::<8>(id).is_none() {
            return Err(bad("key id must be 16 lowercase hex digits"));
        }
        let bytes = unhex::<32>(key).ok_or_else(|| bad("key must be 64 lowercase hex digits"))?;
        keys.push((id.to_owned(), bytes));
    }
    Ok(keys)
}

fn public_from(id: &str, bytes: [u8; 32], origin: &Path) -> Result<PublicKey, PackageError> {
    let key = VerifyingKey::from_bytes(&bytes)
        .map_err(|_| key_error(origin, format!("key {id} is not a valid ed25519 public key")))?;
    let public = PublicKey::new(key);
    if public.id.as_str() != id {
        return Err(key_error(
            origin,
            format!("key id {id} does not match the key (its id is {})", public.id),
        ));
    }
    Ok(public)
}

/// The publisher keys a verifier trusts, by key id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: BTreeMap<KeyId, PublicKey>,
}

impl TrustedKeys {
    /// No keys (every package is refused).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key.
    pub fn add(&mut self, key: PublicKey) {
        self.keys.insert(key.id.clone(), key);
    }

    /// Adds every public key line of a keyring's text.
    pub fn add_text(&mut self, text: &str, origin: &Path) -> Result<(), PackageError> {
        for (id, bytes) in parse_lines(text, origin, PUBLIC_KIND)? {
            self.add(public_from(&id, bytes, origin)?);
        }
        Ok(())
    }

    /// Adds the keys of a key file, or of every `*.pub` file in a directory.
    pub fn add_path(&mut self, path: &Path) -> Result<(), PackageError> {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| PackageError::io(path, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(key_error(path, "no *.pub key files in this directory".into()));
            }
            for f in files {
                self.add_path(&f)?;
            }
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| PackageError::io(path, e))?;
        let before = self.keys.len();
        self.add_text(&text, path)?;
        if self.keys.len() == before && parse_lines(&text, path, PUBLIC_KIND)?.is_empty() {
            return Err(key_error(path, "no public key in this file".into()));
        }
        Ok(())
    }

    /// The keys of files or directories.
    pub fn load(paths: &[PathBuf]) -> Result<Self, PackageError> {
        let mut keys = Self::new();
        for p in paths {
            keys.add_path(p)?;
        }
        Ok(keys)
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&PublicKey> {
        self.keys.get(&KeyId(id.to_owned()))
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted key ids.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> &'static Path {
        Path::new("test.pub")
    }

    #[test]
    fn key_files_round_trip_and_ids_are_derived() {
        let secret = SecretKey::from_seed(&[7u8; 32]);
        let back = SecretKey::from_text(&secret.to_file_text(), origin()).unwrap();
        assert_eq!(back.public(), secret.public());
        let public = PublicKey::from_text(&secret.public().to_file_text(), origin()).unwrap();
        assert_eq!(&public, secret.public());
        assert_eq!(public.id().as_str().len(), 16);
        let sig = secret.sign(b"manifest");
        assert!(public.verify(b"manifest", &sig));
        assert!(!public.verify(b"manifesT", &sig));
        assert_ne!(
            SecretKey::generate().unwrap().public(),
            SecretKey::generate().unwrap().public()
        );
    }

    #[test]
    fn malformed_key_files_say_what_is_wrong() {
        let secret = SecretKey::from_seed(&[7u8; 32]);
        let public_line = secret.public().to_line();
        let other = SecretKey::from_seed(&[8u8; 32]);
        let wrong_id = format!(
            "{PUBLIC_KIND} {} {}",
            other.public().id(),
            hex(secret.public().verifying_key().as_bytes())
        );
        for (text, needle) in [
            ("", "found 0"),
            ("garbage", "expected '<kind> <key id> <hex key>'"),
            (&secret.to_file_text(), "this is a SECRET key"),
            (&public_line.replace(' ', "  "), "expected '<kind>"),
            (&public_line[..public_line.len() - 2], "64 lowercase hex"),
            (
                &public_line
                    .to_uppercase()
                    .replace("EDGEMLOPS-ED25519-PUBLIC-V1", PUBLIC_KIND),
                "lowercase hex",
            ),
            (&wrong_id, "does not match the key"),
            (&format!("{public_line}\n{public_line}"), "found 2"),
        ] {
            let e = PublicKey::from_text(text, origin()).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(e.starts_with("test.pub"), "{e}");
        }
        let e = SecretKey::from_text(&secret.public().to_file_text(), origin()).unwrap_err();
        assert!(e.to_string().contains("this is a public key"), "{e}");
    }

    #[test]
    fn a_keyring_trusts_several_keys() {
        let a = SecretKey::from_seed(&[1u8; 32]);
        let b = SecretKey::from_seed(&[2u8; 32]);
        let mut trusted = TrustedKeys::new();
        trusted
            .add_text(
                &format!("# ring\n{}\n\n{}\n", a.public().to_line(), b.public().to_line()),
                origin(),
            )
            .unwrap();
        assert_eq!(trusted.get(a.public().id().as_str()), Some(a.public()));
        assert_eq!(trusted.ids().count(), 2);
    }
}
