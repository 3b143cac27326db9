//! AWS Signature Version 4 request signing (header form), as a pure function.
//!
//! [`sign`] takes the request as it will be sent and the credentials, and returns the headers to
//! add: `x-amz-date`, `x-amz-security-token` (temporary credentials only) and `authorization`.
//! The signing time is a parameter, so the result is deterministic and testable against AWS's
//! published test suite.
//!
//! Why not the `aws-sigv4` crate: with `default-features = false, features = ["sign-http"]` it
//! still pulls 69 crates, among them tokio, futures-util, tracing, a proc-macro stack and a
//! second `sha2`/`digest` generation (0.11 next to our 0.10), into a crate whose rule is "no
//! tokio, no I/O". Header signing is a few HMACs over a canonical string, done here with `hmac`
//! + `sha2` (both RustCrypto, already in our tree's `digest` family).
//!
//! Canonicalisation follows the rules for every service but S3:
//! - the canonical URI is the request path URI-encoded once more (so a model id sent as
//!   `anthropic.claude-v2%3A1` is signed as `anthropic.claude-v2%253A1`), which is what the AWS
//!   SDKs do; the path is used as given, without dot-segment normalisation (the gateway builds
//!   its paths and they contain none);
//! - the query is decoded, re-encoded with the unreserved set and sorted by name then value;
//! - header names are lower-cased, values trimmed with inner runs of spaces collapsed, repeated
//!   names joined with `,`; `host` and `x-amz-date` are always signed.
//!
//! The payload hash is signed but not sent as `x-amz-content-sha256` (only S3 needs it).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Credentials of one AWS principal.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// Present for temporary (STS) credentials; sent and signed as `x-amz-security-token`.
    pub session_token: Option<&'a str>,
}

impl std::fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("access_key_id", &self.access_key_id).finish_non_exhaustive()
    }
}

/// The request to sign, as it goes on the wire.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The `Host` header value (`bedrock-runtime.us-east-1.amazonaws.com`).
    pub host: &'a str,
    /// Path and optional query, already percent-encoded as sent
    /// (`/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/converse`).
    pub path_and_query: &'a str,
    /// Other headers to sign (e.g. `content-type`). `host` and any `x-amz-date`,
    /// `x-amz-security-token` or `authorization` given here are ignored: `sign` supplies them.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Where and when: region, service (`bedrock` for Bedrock Runtime) and signing time.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub region: &'a str,
    pub service: &'a str,
    /// Unix seconds.
    pub time: u64,
}

/// The headers to add to the request: `x-amz-date`, then `x-amz-security-token` when the
/// credentials have one, then `authorization`.
pub fn sign(req: &Request<'_>, creds: &Credentials<'_>, scope: &Scope<'_>) -> Vec<(&'static str, String)> {
    let amz_date = format_amz_date(scope.time);
    let date = &amz_date[..8];

    let mut headers: Vec<(String, String)> = vec![("host".into(), canonical_value(req.host))];
    for (name, value) in req.headers {
        let name = name.to_ascii_lowercase();
        if matches!(name.as_str(), "host" | "x-amz-date" | "x-amz-security-token" | "authorization") {
            continue;
        }
        headers.push((name, canonical_value(value)));
    }
    headers.push(("x-amz-date".into(), amz_date.clone()));
    if let Some(token) = creds.session_token {
        headers.push(("x-amz-security-token".into(), canonical_value(token)));
    }
    // Stable sort keeps repeated names in the order given, as the join below needs.
    headers.sort_by(|a, b| a.0.cmp(&b.0));
    let mut canonical_headers = String::new();
    let mut signed_headers = String::new();
    let mut i = 0;
    while i < headers.len() {
        let name = &headers[i].0;
        let mut values = vec![headers[i].1.as_str()];
        let mut j = i + 1;
        while j < headers.len() && headers[j].0 == *name {
            values.push(headers[j].1.as_str());
            j += 1;
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
        if !signed_headers.is_empty() {
            signed_headers.push(';');
        }
        signed_headers.push_str(name);
        i = j;
    }

    let (path, query) = req.path_and_query.split_once('?').unwrap_or((req.path_and_query, ""));
    let canonical_uri = if path.is_empty() { "/".to_string() } else { encode(path, false) };
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.to_ascii_uppercase(),
        canonical_uri,
        canonical_query(query),
        canonical_headers,
        signed_headers,
        hex::encode(Sha256::digest(req.body)),
    );
    let credential_scope = format!("{date}/{}/{}/aws4_request", scope.region, scope.service);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{credential_scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", creds.secret_access_key).as_bytes(), date.as_bytes());
    for part in [scope.region, scope.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));

    let mut out = vec![("x-amz-date", amz_date)];
    if let Some(token) = creds.session_token {
        out.push(("x-amz-security-token", token.to_string()));
    }
    out.push((
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{credential_scope}, SignedHeaders={signed_headers}, Signature={signature}",
            creds.access_key_id
        ),
    ));
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Trim, and collapse runs of spaces into one, as SigV4 canonical header values require.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Percent-encode everything but the unreserved set `A-Z a-z 0-9 - _ . ~` (and `/` unless
/// `encode_slash`), upper-case hex, as SigV4 requires.
pub fn encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (b == b'/' && !encode_slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> Vec<u8> {
    fn hex_digit(b: &u8) -> Option<u8> {
        (*b as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(hi), Some(lo)) = (b.get(i + 1).and_then(hex_digit), b.get(i + 2).and_then(hex_digit)) {
                out.push(hi << 4 | lo);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = String::from_utf8_lossy(&decode(k)).into_owned();
            let v = String::from_utf8_lossy(&decode(v)).into_owned();
            (encode(&k, true), encode(&v, true))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

/// `YYYYMMDDTHHMMSSZ` for Unix seconds (proleptic Gregorian, UTC).
pub fn format_amz_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil-from-days (H. Hinnant), valid for any day count here.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's SigV4 test suite: credentials, region, service and time shared by every case.
    const SUITE_CREDS: Credentials<'static> = Credentials {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
    };
    /// 2015-08-30T12:36:00Z
    const SUITE_TIME: u64 = 1_440_938_160;
    const SUITE_SCOPE: Scope<'static> = Scope { region: "us-east-1", service: "service", time: SUITE_TIME };
    const SUITE_TOKEN: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    fn suite(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        creds: &Credentials<'_>,
    ) -> Vec<(&'static str, String)> {
        let req = Request { method, host: "example.amazonaws.com", path_and_query: path, headers, body: b"" };
        sign(&req, creds, &SUITE_SCOPE)
    }

    fn authz(h: &[(&'static str, String)]) -> String {
        h.iter().find(|(n, _)| *n == "authorization").map(|(_, v)| v.clone()).unwrap()
    }

    fn expected(signed: &str, sig: &str) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders={signed}, Signature={sig}"
        )
    }

    #[test]
    fn amz_date() {
        assert_eq!(format_amz_date(SUITE_TIME), "20150830T123600Z");
        assert_eq!(format_amz_date(0), "19700101T000000Z");
        assert_eq!(format_amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(format_amz_date(4_102_444_799), "20991231T235959Z");
    }

    #[test]
    fn aws_suite_vanilla() {
        let h = suite("GET", "/", &[], &SUITE_CREDS);
        assert_eq!(h[0], ("x-amz-date", "20150830T123600Z".to_string()));
        assert_eq!(
            authz(&h),
            expected("host;x-amz-date", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
        assert_eq!(
            authz(&suite("POST", "/", &[], &SUITE_CREDS)),
            expected("host;x-amz-date", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
        );
    }

    #[test]
    fn aws_suite_query_headers_path() {
        assert_eq!(
            authz(&suite("GET", "/?Param2=value2&Param1=value1", &[], &SUITE_CREDS)),
            expected("host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
        );
        assert_eq!(
            authz(&suite("POST", "/", &[("My-Header1", "VALUE1")], &SUITE_CREDS)),
            expected("host;my-header1;x-amz-date", "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d")
        );
        assert_eq!(
            authz(&suite("GET", "/", &[("My-Header1", " value1"), ("My-Header2", " \"a   b   c\"")], &SUITE_CREDS)),
            expected(
                "host;my-header1;my-header2;x-amz-date",
                "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"
            )
        );
        assert_eq!(
            authz(&suite(
                "GET",
                "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                &[],
                &SUITE_CREDS
            )),
            expected("host;x-amz-date", "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f")
        );
    }

    #[test]
    fn aws_suite_session_token() {
        let creds = Credentials { session_token: Some(SUITE_TOKEN), ..SUITE_CREDS };
        let h = suite("POST", "/", &[], &creds);
        assert_eq!(h[1], ("x-amz-security-token", SUITE_TOKEN.to_string()));
        assert_eq!(
            authz(&h),
            expected(
                "host;x-amz-date;x-amz-security-token",
                "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"
            )
        );
    }

    /// A Bedrock-shaped POST: the model id's `:` is sent as `%3A` and signed double-encoded; the
    /// expected signature was computed independently (Python `hmac`/`hashlib`, the algorithm the
    /// mock upstream verifies with).
    #[test]
    fn bedrock_converse_post() {
        let body = br#"{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}"#;
        let req = Request {
            method: "POST",
            host: "bedrock-runtime.us-east-1.amazonaws.com",
            path_and_query: "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
            headers: &[("content-type", "application/json")],
            body,
        };
        let creds = Credentials {
            access_key_id: "AKIDTESTBEDROCK",
            secret_access_key: "test-bedrock-secret",
            session_token: None,
        };
        let h = sign(&req, &creds, &Scope { region: "us-east-1", service: "bedrock", time: 1_700_000_000 });
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].1, "20231114T221320Z");
        assert_eq!(
            authz(&h),
            "AWS4-HMAC-SHA256 Credential=AKIDTESTBEDROCK/20231114/us-east-1/bedrock/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=f7a275033978b0970702168d6d0baa29f4ad097d1928bcbb83e752f01c6c05d4"
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a:b/c d", true), "a%3Ab%2Fc%20d");
        assert_eq!(encode("/model/x%3A0", false), "/model/x%253A0");
        assert_eq!(canonical_query("b=2&a=%7e&a=1&c"), "a=1&a=~&b=2&c=");
        assert_eq!(decode("%zz%4"), b"%zz%4");
    }
}
