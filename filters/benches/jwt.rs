//! JWT verification per algorithm, against the cost of a verified-token cache hit (the SHA-256
//! of the token that keys the gateway's cache), measured in the same run. The gateway verifies
//! a token's signature once and then serves it from that cache until it expires.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use filters::jwt::{Alg, KeySet, Rules, Unverified};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, RsaPublicKeyComponents};
use std::hint::black_box;

const RSA_PKCS8: &[u8] = include_bytes!("../tests/data/rsa2048.pk8");
const NOW: u64 = 1_800_000_000;

fn enc(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn bench(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let rsa = RsaKeyPair::from_pkcs8(RSA_PKCS8).expect("fixture key");
    let ec_doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec key");
    let ec = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, ec_doc.as_ref(), &rng).expect("ec");
    let n = RsaPublicKeyComponents::<Vec<u8>>::from(rsa.public());
    let p = ec.public_key().as_ref();
    let jwks = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "r1", "alg": "RS256", "n": enc(&n.n), "e": enc(&n.e)},
        {"kty": "EC", "kid": "e1", "crv": "P-256", "x": enc(&p[1..33]), "y": enc(&p[33..])},
    ]});
    let keys = KeySet::from_json(jwks.to_string().as_bytes()).expect("jwks");
    let claims = serde_json::json!({"iss": "https://idp.example.com", "sub": "alice", "aud": "portcullis",
        "exp": NOW + 600, "iat": NOW, "amr": ["pwd", "mfa"], "groups": ["eng"], "scope": "openid llm:proxy"});
    let sign = |alg: &str, kid: &str| {
        let input = format!(
            "{}.{}",
            enc(serde_json::json!({"alg": alg, "kid": kid, "typ": "at+jwt"}).to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let sig = if alg == "RS256" {
            let mut s = vec![0; rsa.public().modulus_len()];
            rsa.sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut s).expect("sign");
            s
        } else {
            ec.sign(&rng, input.as_bytes()).expect("sign").as_ref().to_vec()
        };
        format!("{input}.{}", enc(&sig))
    };
    let audiences = vec!["portcullis".to_string()];
    let rules =
        Rules { issuer: "https://idp.example.com", audiences: &audiences, algorithms: &Alg::ALL, leeway: 0, now: NOW };
    let mut g = c.benchmark_group("jwt");
    for (name, token) in [("verify_rs256", sign("RS256", "r1")), ("verify_es256", sign("ES256", "e1"))] {
        assert!(Unverified::parse(&token).and_then(|t| t.verify(&keys, &rules)).is_ok());
        g.bench_function(name, |b| {
            b.iter(|| Unverified::parse(black_box(&token)).and_then(|t| t.verify(&keys, &rules)))
        });
    }
    let token = sign("ES256", "e1");
    g.bench_function("cache_key_sha256", |b| b.iter(|| filters::auth::sha256(black_box(token.as_bytes()))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
