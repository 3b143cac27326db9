//! Bearer credential parsing and the virtual-key table.
//!
//! Keys are never held in clear: the table maps the SHA-256 of a key to its id, and the final
//! comparison is constant-time so a lookup leaks nothing about how close a guess was.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// Virtual keys issued by Portcullis start with this prefix.
pub const VIRTUAL_KEY_PREFIX: &str = "pc-";

/// SHA-256 of a secret.
pub fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Parse a 64-character hex SHA-256 digest.
pub fn parse_sha256_hex(hex_digest: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_digest.trim(), &mut out).ok()?;
    Some(out)
}

/// The credential a request carries, by where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// A `pc-` virtual key.
    VirtualKey(&'a str),
    /// Any other bearer token: a provider key on a pass-through route, later a JWT or an
    /// access token.
    Other(&'a str),
}

/// Extract the token from an `Authorization: Bearer <token>` value. Scheme match is
/// case-insensitive (RFC 7235); anything else is `None`.
pub fn bearer_token(authorization: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(authorization).ok()?;
    let (scheme, rest) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    if token.is_empty() || token.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()) {
        return None;
    }
    Some(token)
}

/// Classify a token.
pub fn classify(token: &str) -> Credential<'_> {
    if token.starts_with(VIRTUAL_KEY_PREFIX) {
        Credential::VirtualKey(token)
    } else {
        Credential::Other(token)
    }
}

/// Hashed keys → an index into the caller's own key records.
#[derive(Debug, Default, Clone)]
pub struct KeyTable {
    by_hash: HashMap<[u8; 32], usize>,
}

impl KeyTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a key digest. Returns false when the digest was already present.
    pub fn insert(&mut self, digest: [u8; 32], index: usize) -> bool {
        self.by_hash.insert(digest, index).is_none()
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Find the record for a presented key.
    pub fn lookup(&self, key: &str) -> Option<usize> {
        let digest = sha256(key.as_bytes());
        let (stored, index) = self.by_hash.get_key_value(&digest)?;
        // The map lookup already matched; the constant-time re-check keeps the final decision
        // independent of where the digests differ should the map ever be swapped for a
        // prefix-ordered structure.
        bool::from(stored.ct_eq(&digest)).then_some(*index)
    }
}

/// Constant-time equality of two secrets of possibly different length.
pub fn secret_eq(a: &[u8], b: &[u8]) -> bool {
    sha256(a).ct_eq(&sha256(b)).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(&[0xff, 0xfe]), None);
    }

    #[test]
    fn table_lookup() {
        let mut t = KeyTable::new();
        let d = sha256(b"pc-secret");
        assert!(t.insert(d, 3));
        assert!(!t.insert(d, 4));
        assert_eq!(t.lookup("pc-secret"), Some(4));
        assert_eq!(t.lookup("pc-secreT"), None);
        assert_eq!(parse_sha256_hex(&hex::encode(d)), Some(d));
        assert_eq!(parse_sha256_hex("zz"), None);
    }

    #[test]
    fn classify_prefix() {
        assert_eq!(classify("pc-x"), Credential::VirtualKey("pc-x"));
        assert_eq!(classify("sk-x"), Credential::Other("sk-x"));
        assert!(secret_eq(b"a", b"a"));
        assert!(!secret_eq(b"a", b"ab"));
    }
}
