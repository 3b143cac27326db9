//! Bearer JWTs from external OpenID Connect IdPs: each configured issuer's key set (discovered,
//! cached, refetched on rotation) and the grants a verified token carries.
//!
//! Verification itself is `filters::jwt`. A verified token is cached by its SHA-256 until it
//! expires, so a client reusing its token pays one signature check, not one per request.

use super::runtime::Grant;
use super::Shared;
use crate::config::{self, Oidc};
use crate::upstream::fetch;
use arc_swap::ArcSwapOption;
use filters::jwt::{Alg, Claims, KeySet, Rules, Unverified};
use filters::meter::{Limit, ScopeKind};
use filters::route::policy::Policy;
use filters::ApiError;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A key set fetch never waits longer than this per request.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one refetch per issuer this often, however many unknown `kid`s arrive (a token with
/// a random `kid` must not turn the gateway into a load generator against the IdP).
const MIN_REFETCH: Duration = Duration::from_secs(2);
/// The IdP's token endpoint, during a sign-in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Verified tokens remembered at most (per configuration).
const CACHE_CAPACITY: usize = 20_000;
/// Longest user claim accepted (an e-mail address is at most 254). Longer ones are refused,
/// not cut: two users sharing a prefix would share a meter and personal provider keys.
const MAX_USER_CHARS: usize = 256;

struct Fetched {
    keys: KeySet,
    at: Instant,
}

/// A verified token, valid until `expires` while its issuer's key set is the one it was
/// checked against (a refetch may have dropped the signing key: the token is then checked again).
struct Verified {
    grant: Arc<Grant>,
    expires: u64,
    issuer: Arc<Issuer>,
    keys: Arc<Fetched>,
}

/// One trusted issuer.
pub struct Issuer {
    cfg: Oidc,
    algorithms: Vec<Alg>,
    limits: Arc<[Limit]>,
    proxies: HashSet<String>,
    providers: HashSet<String>,
    keys: ArcSwapOption<Fetched>,
    /// The issuer's discovery document, once fetched.
    discovery: ArcSwapOption<Discovery>,
    /// Held while fetching; holds when the last fetch was tried.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

/// What the gateway uses from an issuer's OpenID Connect discovery document.
#[derive(Debug)]
pub struct Discovery {
    pub jwks_uri: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
}

/// Every configured issuer, and the tokens verified so far.
pub struct Issuers {
    by_issuer: HashMap<String, Arc<Issuer>>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unauthorized("invalid_token", message)
}

impl Issuers {
    pub fn new(configs: &[Oidc]) -> Issuers {
        let by_issuer = configs
            .iter()
            .map(|c| {
                let issuer = Issuer {
                    algorithms: c.algorithms.iter().filter_map(|a| Alg::parse(a)).collect(),
                    limits: c.limits.clone().into(),
                    proxies: c.proxies.iter().cloned().collect(),
                    providers: c.providers.iter().cloned().collect(),
                    keys: ArcSwapOption::empty(),
                    discovery: ArcSwapOption::empty(),
                    fetching: tokio::sync::Mutex::new(None),
                    cfg: c.clone(),
                };
                (c.issuer.clone(), Arc::new(issuer))
            })
            .collect();
        Issuers { by_issuer, verified: Mutex::new(HashMap::new()) }
    }

    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Issuer>> {
        self.by_issuer.values().find(|i| i.cfg.name == name)
    }

    /// Verify a bearer token that claims to come from a configured issuer and return its
    /// grant; `None` when it is not a JWT or names no configured issuer (it may be another kind
    /// of credential). `groups`: the configured groups.
    pub async fn authenticate(
        &self,
        shared: &Shared,
        token: &str,
        groups: &HashMap<String, Policy>,
    ) -> Result<Option<Arc<Grant>>, ApiError> {
        if self.by_issuer.is_empty() || !filters::jwt::looks_like_jwt(token) {
            return Ok(None);
        }
        let digest = filters::auth::sha256(token.as_bytes());
        let now = now_unix();
        if let Some(grant) = self.cached(&digest, now) {
            return Ok(Some(grant));
        }
        let Ok(unverified) = Unverified::parse(token) else { return Ok(None) };
        let Some(issuer) = unverified.issuer().and_then(|iss| self.by_issuer.get(iss)) else { return Ok(None) };
        let (claims, keys) = issuer.verify(shared, unverified, now, &issuer.cfg.audiences).await?;
        let grant = Arc::new(issuer.grant(&claims, groups)?);
        let expires = claims.expires_at().saturating_add(issuer.cfg.leeway_seconds);
        let entry = Verified { grant: grant.clone(), expires, issuer: issuer.clone(), keys };
        self.remember(digest, entry, now);
        Ok(Some(grant))
    }

    fn cached(&self, digest: &[u8; 32], now: u64) -> Option<Arc<Grant>> {
        let cache = self.verified.lock().ok()?;
        let v = cache.get(digest)?;
        let same_keys = v.issuer.keys.load().as_ref().is_some_and(|k| Arc::ptr_eq(k, &v.keys));
        (now < v.expires && same_keys).then(|| v.grant.clone())
    }

    fn remember(&self, digest: [u8; 32], entry: Verified, now: u64) {
        let Ok(mut cache) = self.verified.lock() else { return };
        if cache.len() >= CACHE_CAPACITY {
            cache.retain(|_, v| v.expires > now);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(digest, entry);
    }
}

impl Issuer {
    /// The token's claims, and the key set that verified them.
    async fn verify(
        &self,
        shared: &Shared,
        token: Unverified<'_>,
        now: u64,
        audiences: &[String],
    ) -> Result<(Claims, Arc<Fetched>), ApiError> {
        let rules = Rules {
            issuer: &self.cfg.issuer,
            audiences,
            algorithms: &self.algorithms,
            leeway: self.cfg.leeway_seconds,
            now,
        };
        let refresh = Duration::from_secs(self.cfg.jwks_refresh_seconds);
        let mut keys = match self.keys.load_full() {
            Some(f) if f.at.elapsed() < refresh => f,
            _ => self.refetch(shared).await?,
        };
        // An unknown `kid` may be a key the IdP rotated in since the last fetch: look once more.
        if token.kid().is_some_and(|kid| !keys.keys.has_kid(kid)) {
            keys = self.refetch(shared).await?;
        }
        let claims = token.verify(&keys.keys, &rules).map_err(|e| invalid(e.to_string()))?;
        Ok((claims, keys))
    }

    /// Fetch the key set again, unless another request just did (then use its result). Keeps
    /// serving the previous set when the IdP cannot be reached.
    async fn refetch(&self, shared: &Shared) -> Result<Arc<Fetched>, ApiError> {
        let before = self.keys.load_full();
        let mut last = self.fetching.lock().await;
        let current = self.keys.load_full();
        let fetched_meanwhile = match (&before, &current) {
            (Some(b), Some(c)) => !Arc::ptr_eq(b, c),
            (None, Some(_)) => true,
            _ => false,
        };
        if let (true, Some(c)) = (fetched_meanwhile, &current) {
            return Ok(c.clone());
        }
        if last.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
            return current.ok_or_else(|| self.unavailable());
        }
        *last = Some(Instant::now());
        match self.fetch(shared).await {
            Ok(keys) => {
                log::info!("oidc {}: fetched {} signing key(s)", self.cfg.name, keys.len());
                let fetched = Arc::new(Fetched { keys, at: Instant::now() });
                self.keys.store(Some(fetched.clone()));
                Ok(fetched)
            }
            Err(e) => {
                log::warn!("oidc {}: cannot fetch signing keys: {e}", self.cfg.name);
                match current {
                    Some(c) => Ok(c),
                    // A token the gateway cannot check now is not known to be bad: 503, not 401.
                    None => Err(self.unavailable()),
                }
            }
        }
    }

    fn unavailable(&self) -> ApiError {
        ApiError::unavailable("idp_unavailable", format!("cannot fetch the signing keys of IdP `{}`", self.cfg.name))
    }

    /// The discovery document, fetched once (again after a failure).
    pub async fn discovery(&self, shared: &Shared) -> Result<Arc<Discovery>, String> {
        if let Some(d) = self.discovery.load_full() {
            return Ok(d);
        }
        let allowed = shared.runtime.load().config.allowed_hosts();
        let at = format!("{}/.well-known/openid-configuration", self.cfg.issuer.trim_end_matches('/'));
        let url = url::Url::parse(&at).map_err(|e| e.to_string())?;
        let doc = fetch::get(&shared.connector, &shared.resolver, &url, FETCH_TIMEOUT).await?;
        let doc: serde_json::Value =
            serde_json::from_slice(&doc).map_err(|e| format!("discovery document is not JSON: {e}"))?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name the same issuer.
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.cfg.issuer.as_str()) {
            return Err("the discovery document names a different issuer".into());
        }
        // Every URL the gateway would follow must pass the same egress rules as the issuer.
        let endpoint = |name: &str| -> Result<Option<String>, String> {
            match doc.get(name).and_then(|v| v.as_str()) {
                Some(u) => {
                    config::idp_url(u, &allowed).map(|_| Some(u.to_string())).map_err(|m| format!("{name}: {m}"))
                }
                None => Ok(None),
            }
        };
        let d = Arc::new(Discovery {
            jwks_uri: endpoint("jwks_uri")?.ok_or("the discovery document has no jwks_uri")?,
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
        });
        self.discovery.store(Some(d.clone()));
        Ok(d)
    }

    pub fn config(&self) -> &Oidc {
        &self.cfg
    }

    /// Verify an ID token the IdP returned to the gateway's own sign-in: the audience is the
    /// gateway's login client, and the nonce must be the one it sent.
    pub async fn verify_id_token(&self, shared: &Shared, id_token: &str, nonce: &str) -> Result<Claims, ApiError> {
        let client_id = self.cfg.login_client_id.clone().unwrap_or_default();
        let unverified = Unverified::parse(id_token).map_err(|e| invalid(e.to_string()))?;
        let (claims, _) = self.verify(shared, unverified, now_unix(), &[client_id]).await?;
        let same = claims.str("nonce").is_some_and(|n| filters::auth::secret_eq(n.as_bytes(), nonce.as_bytes()));
        if !same {
            return Err(invalid("the ID token's nonce does not match the sign-in"));
        }
        Ok(claims)
    }

    /// Where to send a browser to sign in: the IdP's authorization endpoint, for the gateway's
    /// login client, with PKCE S256 (`verifier` kept by the caller), `state` and `nonce`.
    pub fn login_url(&self, endpoint: &str, redirect_uri: &str, state: &str, nonce: &str, verifier: &str) -> String {
        let client_id = self.cfg.login_client_id.clone().unwrap_or_default();
        let challenge = filters::oauth::s256_challenge(verifier);
        filters::oauth::redirect_with(
            endpoint,
            &[
                ("response_type", "code"),
                ("client_id", &client_id),
                ("redirect_uri", redirect_uri),
                ("scope", "openid"),
                ("state", state),
                ("nonce", nonce),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        )
    }

    /// Redeem the code the IdP sent back to `redirect_uri` at its token endpoint and verify the
    /// ID token it returns.
    pub async fn redeem_login(
        &self,
        shared: &Shared,
        discovery: &Discovery,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Claims, String> {
        let endpoint = discovery.token_endpoint.as_deref().ok_or("the IdP publishes no token_endpoint")?;
        let url = url::Url::parse(endpoint).map_err(|e| e.to_string())?;
        let cfg = &self.cfg;
        let client_id = cfg.login_client_id.clone().unwrap_or_default();
        let secret = match (&cfg.login_client_secret, &cfg.login_client_secret_env) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| format!("{var} is not set"))?),
            (None, None) => None,
        };
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let mut pairs = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", redirect_uri.to_string()),
            ("code_verifier", verifier.to_string()),
        ];
        let authorization = match &secret {
            Some(s) => {
                let pair = format!("{}:{}", enc(&client_id), enc(s));
                Some(format!("Basic {}", filters::oauth::base64_standard(pair.as_bytes())))
            }
            None => {
                pairs.push(("client_id", client_id.clone()));
                None
            }
        };
        let form = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&pairs).finish();
        let (status, body) =
            fetch::post_form(&shared.connector, &shared.resolver, &url, authorization, form, LOGIN_TIMEOUT).await?;
        if status != 200 {
            return Err(format!("the IdP's token endpoint answered HTTP {status}"));
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("token response is not JSON: {e}"))?;
        let id_token = doc.get("id_token").and_then(|v| v.as_str()).ok_or("the IdP returned no id_token")?;
        self.verify_id_token(shared, id_token, nonce).await.map_err(|e| e.message)
    }

    async fn fetch(&self, shared: &Shared) -> Result<KeySet, String> {
        let jwks_url = match &self.cfg.jwks_url {
            Some(u) => u.clone(),
            None => self.discovery(shared).await?.jwks_uri.clone(),
        };
        let url = url::Url::parse(&jwks_url).map_err(|e| e.to_string())?;
        let doc = fetch::get(&shared.connector, &shared.resolver, &url, FETCH_TIMEOUT).await?;
        let keys = KeySet::from_json(&doc)?;
        if keys.is_empty() {
            return Err("the key set has no usable signing key".into());
        }
        Ok(keys)
    }

    /// What a verified token's holder may do.
    fn grant(&self, claims: &Claims, groups: &HashMap<String, Policy>) -> Result<Grant, ApiError> {
        let c = &self.cfg;
        if let Some(scope) = &c.required_scope {
            let mut scopes = claims.strings("scope");
            scopes.extend(claims.strings("scp"));
            if !scopes.contains(&scope.as_str()) {
                return Err(ApiError::forbidden("insufficient_scope", format!("the token lacks the `{scope}` scope")));
            }
        }
        let (user, member_of, mfa) = self.identity(claims, groups)?;
        Ok(self.user_grant(&user, member_of, mfa))
    }

    /// The user, their configured groups and whether they signed in with MFA, from verified
    /// claims; refuses a missing user claim, and a missing MFA where this IdP requires it.
    pub fn identity(
        &self,
        claims: &Claims,
        groups: &HashMap<String, Policy>,
    ) -> Result<(String, Vec<String>, bool), ApiError> {
        let c = &self.cfg;
        let user = claims
            .str(&c.user_claim)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| invalid(format!("token lacks the `{}` claim", c.user_claim)))?;
        if user.chars().count() > MAX_USER_CHARS || user.chars().any(char::is_control) {
            return Err(invalid(format!(
                "the `{}` claim must be at most {MAX_USER_CHARS} characters without control characters",
                c.user_claim
            )));
        }
        let amr = claims.strings("amr");
        let mfa = amr.iter().any(|m| c.mfa_amr.iter().any(|want| want == m));
        if c.require_mfa && !mfa {
            let why = format!("IdP `{}` tokens must show multi-factor sign-in (`amr`)", c.name);
            return Err(ApiError::unauthorized("mfa_required", why));
        }
        let member_of = match &c.groups_claim {
            Some(claim) => {
                claims.strings(claim).into_iter().filter(|g| groups.contains_key(*g)).map(String::from).collect()
            }
            None => Vec::new(),
        };
        Ok((user.to_string(), member_of, mfa))
    }

    /// What this IdP's user may do, however they present themselves (a JWT, or an access
    /// token the gateway issued them): one meter per user.
    pub fn user_grant(&self, user: &str, groups: Vec<String>, mfa: bool) -> Grant {
        let c = &self.cfg;
        let user_digest = filters::auth::sha256(user.as_bytes());
        Grant {
            name: format!("{}:{user}", c.name),
            scope: ScopeKind::User,
            mfa,
            proxies: self.proxies.clone(),
            providers: self.providers.clone(),
            provider_keys: Vec::new(),
            groups,
            policy: c.policy.clone(),
            meter_id: format!("{}-{}", c.name, hex::encode(&user_digest[..8])),
            limits: self.limits.clone(),
        }
    }
}
