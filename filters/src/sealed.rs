//! Secrets the gateway must be able to read back (provider API keys stored through the admin
//! API), sealed with AES-256-GCM under the deployment's secrets key. A sealed value is
//! `v1.` + base64url(nonce ‖ ciphertext ‖ tag); the record it belongs to is the associated
//! data, so a ciphertext copied onto another record does not open.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};

const PREFIX: &str = "v1.";

/// The secrets key, ready to seal and open.
pub struct Sealer {
    key: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// A key given as 64 hex digits or as base64 (standard or URL-safe, padded or not) of
    /// 32 bytes.
    pub fn from_text(text: &str) -> Result<Sealer, String> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| e.to_string())?
        } else {
            let standard = base64::engine::general_purpose::STANDARD.decode(t);
            let bytes = standard.or_else(|_| URL_SAFE_NO_PAD.decode(t.trim_end_matches('=')));
            bytes.map_err(|_| "the secrets key must be 64 hex digits or base64 of 32 bytes".to_string())?
        };
        let bytes: [u8; 32] =
            bytes.try_into().map_err(|b: Vec<u8>| format!("the secrets key must be 32 bytes, not {}", b.len()))?;
        Ok(Sealer::new(&bytes))
    }

    pub fn new(key: &[u8; 32]) -> Sealer {
        // 32 bytes is AES-256's key length, so this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!("AES-256 takes 32 bytes"));
        Sealer { key: LessSafeKey::new(unbound) }
    }

    /// Seal `plaintext` for the record named by `aad`; `nonce` must never repeat under one key
    /// (callers draw it at random).
    pub fn seal(&self, aad: &str, plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Result<String, String> {
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
            .map_err(|_| "value too large to seal".to_string())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Open a value sealed for `aad`; any tampering, a wrong key or another record's value fails.
    pub fn open(&self, aad: &str, sealed: &str) -> Result<Vec<u8>, String> {
        let body = sealed.strip_prefix(PREFIX).ok_or("not a sealed value")?;
        let mut bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| "not a sealed value")?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err("sealed value too short".into());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let opened = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut bytes[NONCE_LEN..])
            .map_err(|_| "the sealed value does not open with this key (wrong key, or tampered)".to_string())?;
        Ok(opened.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_record_and_key() {
        let s = Sealer::new(&[7; 32]);
        let v = s.seal("provider-key:team:openai", b"sk-secret", [1; 12]).unwrap();
        assert!(v.starts_with("v1.") && !v.contains("sk-secret"), "{v}");
        assert_eq!(s.open("provider-key:team:openai", &v).unwrap(), b"sk-secret");
        assert!(s.open("provider-key:other:openai", &v).is_err(), "another record's value");
        assert!(Sealer::new(&[8; 32]).open("provider-key:team:openai", &v).is_err(), "another key");
        let mut tampered = v.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(s.open("provider-key:team:openai", std::str::from_utf8(&tampered).unwrap()).is_err());
        for junk in ["", "v1.", "v1.!!", "v2.AAAA", "v1.AAAA"] {
            assert!(s.open("x", junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn keys_are_read_as_hex_or_base64_of_32_bytes() {
        let hex_key = "07".repeat(32);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let v = Sealer::from_text(&hex_key).unwrap().seal("a", b"x", [0; 12]).unwrap();
        assert_eq!(Sealer::from_text(&b64).unwrap().open("a", &v).unwrap(), b"x");
        assert_eq!(Sealer::from_text(b64.trim_end_matches('=')).unwrap().open("a", &v).unwrap(), b"x");
        assert!(Sealer::from_text("short").is_err());
        assert!(Sealer::from_text(&"07".repeat(16)).is_err());
        assert!(format!("{:?}", Sealer::from_text(&hex_key).unwrap()) == "Sealer(..)");
    }
}
