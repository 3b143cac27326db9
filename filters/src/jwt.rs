//! JSON Web Token verification (RFC 7519, JWS compact form RFC 7515) against a JWK set
//! (RFC 7517), for bearer tokens issued by an external OpenID Connect IdP.
//!
//! Pure logic: the caller fetches and caches the key set. Verification is strict by design:
//! the algorithm must be on the caller's allowlist and match the key's type (so an RSA public
//! key can never be used as an HMAC secret), `none` and HMAC are never accepted, unknown `crit`
//! extensions are refused, and `iss`, `aud` and `exp` are required.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::Value;
use std::fmt;

/// Longest token accepted; real IdP tokens are a few KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Asymmetric JWS algorithms this verifier implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 9] =
        [Alg::RS256, Alg::RS384, Alg::RS512, Alg::PS256, Alg::PS384, Alg::PS512, Alg::ES256, Alg::ES384, Alg::EdDSA];

    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }
}

/// Why a token was refused. The messages name the reason, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    Malformed(&'static str),
    /// `alg` is not one this gateway verifies, or not on the allowlist.
    AlgorithmNotAllowed(String),
    /// No key in the set has this `kid` (and fits the algorithm): the set may be stale.
    UnknownKey(Option<String>),
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim(&'static str),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(why) => write!(f, "malformed token: {why}"),
            JwtError::AlgorithmNotAllowed(a) => write!(f, "token algorithm `{a}` is not allowed"),
            JwtError::UnknownKey(Some(kid)) => write!(f, "token signed with unknown key `{kid}`"),
            JwtError::UnknownKey(None) => write!(f, "no key of the issuer fits the token"),
            JwtError::BadSignature => write!(f, "token signature is invalid"),
            JwtError::Expired => write!(f, "token has expired"),
            JwtError::NotYetValid => write!(f, "token is not valid yet"),
            JwtError::WrongIssuer => write!(f, "token issuer is not accepted"),
            JwtError::WrongAudience => write!(f, "token audience is not accepted"),
            JwtError::MissingClaim(c) => write!(f, "token lacks the `{c}` claim"),
        }
    }
}

#[derive(Debug, Clone)]
enum KeyMaterial {
    /// Big-endian modulus (no leading zeros) and exponent.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point `04 || x || y`.
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl KeyMaterial {
    fn fits(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (KeyMaterial::Rsa { .. }, Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512)
                | (KeyMaterial::P256(_), Alg::ES256)
                | (KeyMaterial::P384(_), Alg::ES384)
                | (KeyMaterial::Ed25519(_), Alg::EdDSA)
        )
    }

    fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        let rsa = |params: &'static signature::RsaParameters, n: &[u8], e: &[u8]| {
            RsaPublicKeyComponents { n, e }.verify(params, message, sig).is_ok()
        };
        match (self, alg) {
            (KeyMaterial::Rsa { n, e }, Alg::RS256) => rsa(&signature::RSA_PKCS1_2048_8192_SHA256, n, e),
            (KeyMaterial::Rsa { n, e }, Alg::RS384) => rsa(&signature::RSA_PKCS1_2048_8192_SHA384, n, e),
            (KeyMaterial::Rsa { n, e }, Alg::RS512) => rsa(&signature::RSA_PKCS1_2048_8192_SHA512, n, e),
            (KeyMaterial::Rsa { n, e }, Alg::PS256) => rsa(&signature::RSA_PSS_2048_8192_SHA256, n, e),
            (KeyMaterial::Rsa { n, e }, Alg::PS384) => rsa(&signature::RSA_PSS_2048_8192_SHA384, n, e),
            (KeyMaterial::Rsa { n, e }, Alg::PS512) => rsa(&signature::RSA_PSS_2048_8192_SHA512, n, e),
            (KeyMaterial::P256(p), Alg::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p).verify(message, sig).is_ok()
            }
            (KeyMaterial::P384(p), Alg::ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p).verify(message, sig).is_ok()
            }
            (KeyMaterial::Ed25519(p), Alg::EdDSA) => {
                UnparsedPublicKey::new(&signature::ED25519, p).verify(message, sig).is_ok()
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
struct Key {
    kid: Option<String>,
    /// The key's own `alg`, when the set pins one.
    alg: Option<Alg>,
    material: KeyMaterial,
}

/// The verification keys of one issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct JwkSetDoc {
    keys: Vec<Value>,
}

fn b64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn coordinate(jwk: &Value, name: &str, len: usize) -> Option<Vec<u8>> {
    b64(jwk.get(name)?.as_str()?).filter(|v| v.len() == len)
}

fn parse_jwk(jwk: &Value) -> Option<Key> {
    let field = |n: &str| jwk.get(n).and_then(Value::as_str);
    // Encryption keys and private members have no place in a verification set.
    if field("use").is_some_and(|u| u != "sig") || jwk.get("d").is_some() {
        return None;
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array) {
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return None;
        }
    }
    let alg = match field("alg") {
        Some(a) => Some(Alg::parse(a)?),
        None => None,
    };
    let material = match (field("kty")?, field("crv")) {
        ("RSA", _) => {
            let n = b64(field("n")?)?;
            let e = b64(field("e")?)?;
            let first = n.iter().position(|&b| b != 0)?;
            let n = n[first..].to_vec();
            if n.len() < 256 || e.is_empty() {
                return None; // under 2048 bits
            }
            KeyMaterial::Rsa { n, e }
        }
        ("EC", Some("P-256")) => {
            let mut p = vec![4];
            p.extend(coordinate(jwk, "x", 32)?);
            p.extend(coordinate(jwk, "y", 32)?);
            KeyMaterial::P256(p)
        }
        ("EC", Some("P-384")) => {
            let mut p = vec![4];
            p.extend(coordinate(jwk, "x", 48)?);
            p.extend(coordinate(jwk, "y", 48)?);
            KeyMaterial::P384(p)
        }
        ("OKP", Some("Ed25519")) => KeyMaterial::Ed25519(coordinate(jwk, "x", 32)?),
        _ => return None,
    };
    if alg.is_some_and(|a| !material.fits(a)) {
        return None;
    }
    Some(Key { kid: field("kid").map(str::to_string), alg, material })
}

impl KeySet {
    /// Parse a JWK set document. Keys this verifier cannot use (encryption keys, symmetric keys,
    /// unknown curves, RSA under 2048 bits) are skipped; a document that is not a JWK set is an
    /// error.
    pub fn from_json(doc: &[u8]) -> Result<KeySet, String> {
        let doc: JwkSetDoc = serde_json::from_slice(doc).map_err(|e| format!("not a JWK set: {e}"))?;
        Ok(KeySet { keys: doc.keys.iter().filter_map(parse_jwk).collect() })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Alg) -> impl Iterator<Item = &'a Key> {
        self.keys.iter().filter(move |k| {
            k.material.fits(alg)
                && k.alg.is_none_or(|a| a == alg)
                && match (kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Vec<String>>,
}

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Unverified<'a> {
    signing_input: &'a str,
    signature: Vec<u8>,
    alg: String,
    kid: Option<String>,
    claims: serde_json::Map<String, Value>,
}

/// Whether `token` has the shape of a JWS compact token (three base64url parts, the first a
/// JSON header), to tell JWTs from opaque keys before doing any work.
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|&b| b == b'.').count() == 2
}

impl<'a> Unverified<'a> {
    pub fn parse(token: &'a str) -> Result<Unverified<'a>, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = b64(h)
            .and_then(|raw| serde_json::from_slice(&raw).ok())
            .ok_or(JwtError::Malformed("header is not base64url JSON"))?;
        if header.crit.is_some_and(|c| !c.is_empty()) {
            return Err(JwtError::Malformed("unsupported critical header extension"));
        }
        let claims = b64(p)
            .and_then(|raw| serde_json::from_slice::<serde_json::Map<String, Value>>(&raw).ok())
            .ok_or(JwtError::Malformed("payload is not a base64url JSON object"))?;
        let signature = b64(s).ok_or(JwtError::Malformed("signature is not base64url"))?;
        let signing_input = &token[..h.len() + 1 + p.len()];
        Ok(Unverified { signing_input, signature, alg: header.alg, kid: header.kid, claims })
    }

    /// The `iss` claim, to choose which issuer's keys and rules apply. Not trusted until
    /// [`Unverified::verify`] succeeds.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Check the signature against `keys` and the registered claims against `rules`.
    pub fn verify(self, keys: &KeySet, rules: &Rules<'_>) -> Result<Claims, JwtError> {
        let alg = Alg::parse(&self.alg)
            .filter(|a| rules.algorithms.contains(a))
            .ok_or_else(|| JwtError::AlgorithmNotAllowed(self.alg.chars().take(16).collect()))?;
        let mut candidates = keys.candidates(self.kid.as_deref(), alg).peekable();
        if candidates.peek().is_none() {
            return Err(JwtError::UnknownKey(self.kid.clone()));
        }
        if !candidates.any(|k| k.material.verify(alg, self.signing_input.as_bytes(), &self.signature)) {
            return Err(JwtError::BadSignature);
        }
        let claims = Claims(self.claims);
        claims.check(rules)?;
        Ok(claims)
    }
}

/// What a verified token must satisfy.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    pub issuer: &'a str,
    /// `aud` must contain one of these.
    pub audiences: &'a [String],
    pub algorithms: &'a [Alg],
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway: u64,
    /// Unix seconds.
    pub now: u64,
}

/// The claims of a verified token.
#[derive(Debug, Clone)]
pub struct Claims(serde_json::Map<String, Value>);

fn numeric(v: &Value) -> Option<u64> {
    // NumericDate may be fractional; whole seconds are enough here.
    v.as_u64().or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
}

impl Claims {
    fn check(&self, rules: &Rules<'_>) -> Result<(), JwtError> {
        if self.str("iss").ok_or(JwtError::MissingClaim("iss"))? != rules.issuer {
            return Err(JwtError::WrongIssuer);
        }
        let exp = self.0.get("exp").and_then(numeric).ok_or(JwtError::MissingClaim("exp"))?;
        if rules.now >= exp.saturating_add(rules.leeway) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = self.0.get("nbf").and_then(numeric) {
            if rules.now.saturating_add(rules.leeway) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        let aud = self.strings("aud");
        if aud.is_empty() {
            return Err(JwtError::MissingClaim("aud"));
        }
        if !aud.iter().any(|a| rules.audiences.iter().any(|want| want == a)) {
            return Err(JwtError::WrongAudience);
        }
        Ok(())
    }

    /// A string claim.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(Value::as_str)
    }

    /// A claim that is a string or an array of strings (`aud`, `amr`, `groups`); a
    /// space-separated `scope` string is split.
    pub fn strings(&self, name: &str) -> Vec<&str> {
        match self.0.get(name) {
            Some(Value::String(s)) if name == "scope" => s.split_ascii_whitespace().collect(),
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// `exp`, checked present by verification.
    pub fn expires_at(&self) -> u64 {
        self.0.get("exp").and_then(numeric).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
    use serde_json::json;

    const RSA_PKCS8: &[u8] = include_bytes!("../tests/data/rsa2048.pk8");
    const ISS: &str = "https://idp.example.com";
    const NOW: u64 = 1_800_000_000;

    fn enc(v: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn claims() -> Value {
        json!({"iss": ISS, "sub": "u1", "aud": ["portcullis", "x"], "exp": NOW + 60, "iat": NOW,
               "amr": ["pwd", "mfa"], "scope": "openid llm:proxy"})
    }

    fn signing_input(header: &Value, claims: &Value) -> String {
        format!("{}.{}", enc(header.to_string().as_bytes()), enc(claims.to_string().as_bytes()))
    }

    struct Signer {
        rsa: RsaKeyPair,
        ec: EcdsaKeyPair,
        ed: Ed25519KeyPair,
    }

    impl Signer {
        fn new() -> Signer {
            let rng = SystemRandom::new();
            let ec_doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
            let ed_doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            Signer {
                rsa: RsaKeyPair::from_pkcs8(RSA_PKCS8).unwrap(),
                ec: EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, ec_doc.as_ref(), &rng)
                    .unwrap(),
                ed: Ed25519KeyPair::from_pkcs8(ed_doc.as_ref()).unwrap(),
            }
        }

        fn jwks(&self) -> Value {
            let rsa = RsaPublicKeyComponents::<Vec<u8>>::from(self.rsa.public());
            let p = self.ec.public_key().as_ref();
            json!({"keys": [
                {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256", "n": enc(&rsa.n), "e": enc(&rsa.e)},
                {"kty": "EC", "kid": "e1", "crv": "P-256", "x": enc(&p[1..33]), "y": enc(&p[33..])},
                {"kty": "OKP", "kid": "d1", "crv": "Ed25519", "x": enc(self.ed.public_key().as_ref())},
                {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
                {"kty": "RSA", "kid": "enc1", "use": "enc", "n": enc(&rsa.n), "e": enc(&rsa.e)}
            ]})
        }

        fn sign(&self, alg: &str, kid: &str, claims: &Value) -> String {
            let input = signing_input(&json!({"alg": alg, "kid": kid, "typ": "JWT"}), claims);
            let rng = SystemRandom::new();
            let sig = match alg {
                "RS256" => {
                    let mut s = vec![0; self.rsa.public().modulus_len()];
                    self.rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut s).unwrap();
                    s
                }
                "PS256" => {
                    let mut s = vec![0; self.rsa.public().modulus_len()];
                    self.rsa.sign(&signature::RSA_PSS_SHA256, &rng, input.as_bytes(), &mut s).unwrap();
                    s
                }
                "ES256" => self.ec.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
                "EdDSA" => self.ed.sign(input.as_bytes()).as_ref().to_vec(),
                _ => unreachable!(),
            };
            format!("{input}.{}", enc(&sig))
        }
    }

    fn rules(audiences: &[String]) -> Rules<'_> {
        Rules { issuer: ISS, audiences, algorithms: &Alg::ALL, leeway: 0, now: NOW }
    }

    fn check(token: &str, keys: &KeySet) -> Result<Claims, JwtError> {
        let aud = vec!["portcullis".to_string()];
        Unverified::parse(token)?.verify(keys, &rules(&aud))
    }

    #[test]
    fn verifies_each_algorithm_and_reads_claims() {
        let s = Signer::new();
        let keys = KeySet::from_json(s.jwks().to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), 3, "oct and encryption keys are skipped");
        for (alg, kid) in [("RS256", "r1"), ("ES256", "e1"), ("EdDSA", "d1")] {
            let c = check(&s.sign(alg, kid, &claims()), &keys).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(c.str("sub"), Some("u1"));
            assert_eq!(c.strings("amr"), ["pwd", "mfa"]);
            assert_eq!(c.strings("scope"), ["openid", "llm:proxy"]);
            assert_eq!(c.expires_at(), NOW + 60);
        }
        // PS256 with a key pinned to RS256 is refused: the key's own `alg` wins.
        assert_eq!(
            check(&s.sign("PS256", "r1", &claims()), &keys).unwrap_err(),
            JwtError::UnknownKey(Some("r1".into()))
        );
    }

    #[test]
    fn refuses_tampering_and_algorithm_confusion() {
        let s = Signer::new();
        let keys = KeySet::from_json(s.jwks().to_string().as_bytes()).unwrap();
        let good = s.sign("RS256", "r1", &claims());
        // A flipped signature byte.
        let (input, sig) = good.rsplit_once('.').unwrap();
        let mut raw = b64(sig).unwrap();
        raw[10] ^= 1;
        assert_eq!(check(&format!("{input}.{}", enc(&raw)), &keys).unwrap_err(), JwtError::BadSignature);
        // A payload swapped under the original signature.
        let mut forged = claims();
        forged["sub"] = json!("admin");
        let header = good.split('.').next().unwrap();
        let swapped = format!("{header}.{}.{sig}", enc(forged.to_string().as_bytes()));
        assert_eq!(check(&swapped, &keys).unwrap_err(), JwtError::BadSignature);
        // `none`, HMAC with the public key as secret, and unknown names.
        for alg in ["none", "HS256", "RS1"] {
            let t = format!("{}.", signing_input(&json!({"alg": alg, "kid": "r1"}), &claims()));
            assert!(matches!(check(&t, &keys), Err(JwtError::AlgorithmNotAllowed(_))), "{alg}");
        }
        // ES256 claimed on the RSA key's kid: no key fits.
        let confused = s.sign("ES256", "e1", &claims()).replacen(
            &enc(json!({"alg": "ES256", "kid": "e1", "typ": "JWT"}).to_string().as_bytes()),
            &enc(json!({"alg": "ES256", "kid": "r1", "typ": "JWT"}).to_string().as_bytes()),
            1,
        );
        assert!(matches!(check(&confused, &keys), Err(JwtError::UnknownKey(_))));
        // An algorithm off the allowlist.
        let aud = vec!["portcullis".to_string()];
        let only_rsa = Rules { algorithms: &[Alg::RS256], ..rules(&aud) };
        let es = s.sign("ES256", "e1", &claims());
        assert!(matches!(
            Unverified::parse(&es).unwrap().verify(&keys, &only_rsa),
            Err(JwtError::AlgorithmNotAllowed(_))
        ));
        // Unknown critical extensions.
        let crit =
            format!("{}.{sig}", signing_input(&json!({"alg": "RS256", "kid": "r1", "crit": ["b64"]}), &claims()));
        assert!(matches!(Unverified::parse(&crit), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn registered_claims() {
        let s = Signer::new();
        let keys = KeySet::from_json(s.jwks().to_string().as_bytes()).unwrap();
        let with = |k: &str, v: Value| {
            let mut c = claims();
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v;
            }
            check(&s.sign("ES256", "e1", &c), &keys)
        };
        assert_eq!(with("exp", json!(NOW)).unwrap_err(), JwtError::Expired);
        assert_eq!(with("exp", Value::Null).unwrap_err(), JwtError::MissingClaim("exp"));
        assert!(with("exp", json!(NOW as f64 + 1.5)).is_ok());
        assert_eq!(with("nbf", json!(NOW + 5)).unwrap_err(), JwtError::NotYetValid);
        assert_eq!(with("iss", json!("https://evil.example.com")).unwrap_err(), JwtError::WrongIssuer);
        assert_eq!(with("aud", json!("someone-else")).unwrap_err(), JwtError::WrongAudience);
        assert!(with("aud", json!("portcullis")).is_ok());
        assert_eq!(with("aud", Value::Null).unwrap_err(), JwtError::MissingClaim("aud"));
        // Leeway tolerates a little clock skew.
        let aud = vec!["portcullis".to_string()];
        let mut c = claims();
        c["exp"] = json!(NOW - 10);
        let t = s.sign("ES256", "e1", &c);
        assert!(Unverified::parse(&t).unwrap().verify(&keys, &Rules { leeway: 30, ..rules(&aud) }).is_ok());
    }

    #[test]
    fn unknown_kid_and_malformed_input() {
        let s = Signer::new();
        let keys = KeySet::from_json(s.jwks().to_string().as_bytes()).unwrap();
        assert_eq!(
            check(&s.sign("ES256", "rotated", &claims()), &keys).unwrap_err(),
            JwtError::UnknownKey(Some("rotated".into()))
        );
        assert!(check(&s.sign("ES256", "e1", &claims()), &KeySet::default()).is_err());
        for bad in ["", "a.b", "a.b.c.d", "eyJhbGciOi.x.y", "!!.??.**", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
            assert!(matches!(Unverified::parse(bad), Err(JwtError::Malformed(_))), "{bad:.20}");
        }
        let not_object = format!("{}.{}.", enc(br#"{"alg":"RS256"}"#), enc(b"[1]"));
        assert!(matches!(Unverified::parse(&not_object), Err(JwtError::Malformed(_))));
        assert!(KeySet::from_json(b"{}").is_err());
        assert!(
            KeySet::from_json(br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#).unwrap().is_empty(),
            "short RSA"
        );
        assert!(looks_like_jwt(&s.sign("ES256", "e1", &claims())));
        assert!(!looks_like_jwt("pc-abc") && !looks_like_jwt("sk-a.b.c"));
    }
}
