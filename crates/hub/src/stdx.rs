//! Small helpers shared by the hub's modules: clock, random ids and secrets, hashing, hex.

use proto::Timestamp;
use sha2::{Digest, Sha256};

/// Milliseconds since the unix epoch, the unit of every time column.
pub fn now_ms() -> i64 {
    Timestamp::now().unix_millis()
}

/// A stored time column as a wire timestamp.
pub fn ts(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `n` random bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The OS generator failing means the system cannot produce secrets at all; nothing sensible
    // can continue, and continuing with zeros would hand out guessable tokens.
    getrandom::fill(&mut buf).expect("the operating system's random number generator works");
    buf
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// A new secret token with a readable prefix (`emh_` API tokens, `emd_` device tokens): 256 bits.
pub fn new_secret(prefix: &str) -> String {
    format!("{prefix}{}", hex(&random_bytes::<32>()))
}

/// A new random identifier (`c-…` commands, `t-…` tokens): 96 bits, hex.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", hex(&random_bytes::<12>()))
}

/// Hex sha256; secrets are stored only as this. They are 256-bit random values, so a plain hash
/// (no salt, no slow KDF) is enough: there is no dictionary to attack.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Whether `s` is 64 lowercase hex digits (a sha256 in text).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_long_distinct_and_hashed_to_hex() {
        let a = new_secret("emh_");
        let b = new_secret("emh_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 4 + 64);
        assert!(is_sha256_hex(&sha256_hex(a.as_bytes())));
        assert!(!is_sha256_hex("ABC"));
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }
}
