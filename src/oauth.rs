//! The OAuth server's records in the state store: clients, access and refresh tokens,
//! authorization codes and token families. Every secret is kept only as its SHA-256.
//!
//! A family groups the tokens of one user authorization: an authorization code, the tokens it
//! was exchanged for and every refresh of them. Replaying a used code or a rotated refresh token
//! revokes the whole family (OAuth 2.1 §4.1.3 and §4.3.1), and so does revoking a refresh token.

use crate::state::{StateError, StateStore};
use filters::auth::sha256;
use filters::meter::Limit;
use filters::oauth::{CLIENT_ID_PREFIX, CLIENT_SECRET_PREFIX};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Hash map of stored clients, field = client id.
pub const CLIENTS_MAP: &str = "oauth_clients";

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `prefix` and 256 random bits in hex.
pub fn random_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", hex::encode(bytes))
}

fn digest_hex(secret: &str) -> String {
    hex::encode(sha256(secret.as_bytes()))
}

fn corrupt(e: serde_json::Error) -> StateError {
    StateError::Corrupt(e.to_string())
}

/// A client of the authorization server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientRecord {
    pub client_id: String,
    pub name: String,
    /// Hex SHA-256 of the secret; `None` for a public client.
    pub secret_sha256: Option<String>,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub proxies: Vec<String>,
    #[serde(default)]
    pub providers: Vec<String>,
    /// Named provider keys its client-credentials tokens use.
    #[serde(default)]
    pub provider_keys: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub limits: Option<Vec<Limit>>,
    pub created_at: u64,
    #[serde(default)]
    pub revoked_at: Option<u64>,
    /// Registered through RFC 7591 rather than by an operator.
    #[serde(default)]
    pub registered: bool,
}

impl ClientRecord {
    pub fn is_public(&self) -> bool {
        self.secret_sha256.is_none()
    }

    /// Constant-time check of a presented secret.
    pub fn secret_matches(&self, secret: &str) -> bool {
        match self.secret_sha256.as_deref().and_then(filters::auth::parse_sha256_hex) {
            Some(stored) => {
                use subtle::ConstantTimeEq;
                bool::from(stored.ct_eq(&sha256(secret.as_bytes())))
            }
            None => false,
        }
    }
}

/// What a new stored client may do.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub name: String,
    pub public: bool,
    pub redirect_uris: Vec<String>,
    pub proxies: Vec<String>,
    pub providers: Vec<String>,
    pub provider_keys: Vec<String>,
    pub groups: Vec<String>,
    pub limits: Option<Vec<Limit>>,
    pub registered: bool,
}

/// Store a new client; returns its record and, for a confidential client, the secret (to show
/// once).
pub async fn create_client(store: &dyn StateStore, c: NewClient) -> Result<(ClientRecord, Option<String>), StateError> {
    let client_id = format!("{CLIENT_ID_PREFIX}{}", hex::encode(rand::random::<[u8; 12]>()));
    let secret = (!c.public).then(|| random_secret(CLIENT_SECRET_PREFIX));
    let rec = ClientRecord {
        client_id: client_id.clone(),
        name: c.name,
        secret_sha256: secret.as_deref().map(digest_hex),
        redirect_uris: c.redirect_uris,
        proxies: c.proxies,
        providers: c.providers,
        provider_keys: c.provider_keys,
        groups: c.groups,
        limits: c.limits,
        created_at: now(),
        revoked_at: None,
        registered: c.registered,
    };
    store.hset(CLIENTS_MAP, &client_id, &serde_json::to_vec(&rec).map_err(corrupt)?).await?;
    Ok((rec, secret))
}

pub async fn list_clients(store: &dyn StateStore) -> Result<Vec<ClientRecord>, StateError> {
    let mut out: Vec<ClientRecord> =
        store.hgetall(CLIENTS_MAP).await?.into_iter().filter_map(|(_, v)| serde_json::from_slice(&v).ok()).collect();
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// Revoke every active client whose name or id matches; returns their ids.
pub async fn revoke_clients(store: &dyn StateStore, name_or_id: &str) -> Result<Vec<String>, StateError> {
    let mut revoked = Vec::new();
    for mut c in list_clients(store).await? {
        if c.revoked_at.is_none() && (c.name == name_or_id || c.client_id == name_or_id) {
            c.revoked_at = Some(now());
            store.hset(CLIENTS_MAP, &c.client_id, &serde_json::to_vec(&c).map_err(corrupt)?).await?;
            revoked.push(c.client_id);
        }
    }
    Ok(revoked)
}

/// The user a token acts for (authorization-code tokens).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    /// The `[[auth.oidc]]` entry they signed in with.
    pub idp: String,
    pub sub: String,
    pub groups: Vec<String>,
    pub mfa: bool,
}

/// An issued access or refresh token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub client_id: String,
    pub scope: Vec<String>,
    pub issued_at: u64,
    pub expires_at: u64,
    #[serde(default)]
    pub user: Option<User>,
    /// The authorization this token belongs to (user tokens only).
    #[serde(default)]
    pub family: Option<String>,
}

/// An authorization code, redeemable once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRecord {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: Vec<String>,
    pub user: User,
    pub family: String,
}

/// A sign-in in progress: the client's authorization request, and what the gateway sent the
/// IdP, until the user comes back and decides on the consent page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub scope: Vec<String>,
    /// PKCE verifier and nonce of the gateway's own request to the IdP.
    pub idp_verifier: String,
    pub nonce: String,
    /// Set once the IdP vouched for the user.
    #[serde(default)]
    pub user: Option<User>,
    /// SHA-256 (hex) of the consent form's CSRF secret, also held in the browser's cookie.
    #[serde(default)]
    pub csrf_sha256: Option<String>,
}

fn access_key(token: &str) -> String {
    format!("oauth:at:{}", digest_hex(token))
}
fn refresh_key(token: &str) -> String {
    format!("oauth:rt:{}", digest_hex(token))
}
fn used_refresh_key(token: &str) -> String {
    format!("oauth:rt-used:{}", digest_hex(token))
}
fn code_key(code: &str) -> String {
    format!("oauth:code:{}", digest_hex(code))
}
fn used_code_key(code: &str) -> String {
    format!("oauth:code-used:{}", digest_hex(code))
}
fn family_key(id: &str) -> String {
    format!("oauth:family:{id}")
}
fn pending_key(id: &str) -> String {
    format!("oauth:pending:{}", digest_hex(id))
}

async fn put<T: Serialize>(store: &dyn StateStore, key: &str, value: &T, ttl: u64) -> Result<(), StateError> {
    store.set(key, &serde_json::to_vec(value).map_err(corrupt)?, Some(Duration::from_secs(ttl.max(1)))).await
}

fn parse<T: for<'de> Deserialize<'de>>(v: Option<Vec<u8>>) -> Option<T> {
    v.and_then(|v| serde_json::from_slice(&v).ok())
}

/// Issue an access token.
pub async fn issue_access(store: &dyn StateStore, rec: &TokenRecord) -> Result<String, StateError> {
    let token = random_secret(filters::oauth::ACCESS_TOKEN_PREFIX);
    put(store, &access_key(&token), rec, rec.expires_at.saturating_sub(now())).await?;
    Ok(token)
}

/// Issue a refresh token.
pub async fn issue_refresh(store: &dyn StateStore, rec: &TokenRecord) -> Result<String, StateError> {
    let token = random_secret(filters::oauth::REFRESH_TOKEN_PREFIX);
    put(store, &refresh_key(&token), rec, rec.expires_at.saturating_sub(now())).await?;
    Ok(token)
}

/// Start a family that lives as long as its refresh tokens may.
pub async fn open_family(store: &dyn StateStore, ttl: u64) -> Result<String, StateError> {
    let id = hex::encode(rand::random::<[u8; 16]>());
    store.set(&family_key(&id), b"active", Some(Duration::from_secs(ttl.max(1)))).await?;
    Ok(id)
}

pub async fn family_active(store: &dyn StateStore, id: &str) -> Result<bool, StateError> {
    Ok(store.get(&family_key(id)).await?.is_some())
}

pub async fn revoke_family(store: &dyn StateStore, id: &str) -> Result<(), StateError> {
    store.delete(&family_key(id)).await.map(|_| ())
}

/// A token's record under `key`, if it exists, has not expired, and its family still stands.
async fn find_live(store: &dyn StateStore, key: &str) -> Result<Option<TokenRecord>, StateError> {
    let Some(rec) = parse::<TokenRecord>(store.get(key).await?) else { return Ok(None) };
    if rec.expires_at <= now() {
        return Ok(None);
    }
    if let Some(f) = &rec.family {
        if !family_active(store, f).await? {
            return Ok(None);
        }
    }
    Ok(Some(rec))
}

/// An access token's live record.
pub async fn find_access(store: &dyn StateStore, token: &str) -> Result<Option<TokenRecord>, StateError> {
    find_live(store, &access_key(token)).await
}

/// A refresh token's live record.
pub async fn find_refresh(store: &dyn StateStore, token: &str) -> Result<Option<TokenRecord>, StateError> {
    find_live(store, &refresh_key(token)).await
}

pub async fn revoke_access(store: &dyn StateStore, token: &str) -> Result<(), StateError> {
    store.delete(&access_key(token)).await.map(|_| ())
}

/// What redeeming a refresh token found.
pub enum Redeemed<T> {
    Fresh(T),
    /// Used before: the family was revoked.
    Replayed,
    Unknown,
}

/// Take a refresh token for rotation (atomically, once). A token that was already rotated
/// revokes its family.
pub async fn redeem_refresh(store: &dyn StateStore, token: &str) -> Result<Redeemed<TokenRecord>, StateError> {
    match parse::<TokenRecord>(store.take(&refresh_key(token)).await?) {
        Some(rec) => {
            if let Some(f) = &rec.family {
                let ttl = rec.expires_at.saturating_sub(now());
                store.set(&used_refresh_key(token), f.as_bytes(), Some(Duration::from_secs(ttl.max(1)))).await?;
                if !family_active(store, f).await? {
                    return Ok(Redeemed::Unknown);
                }
            }
            if rec.expires_at <= now() {
                return Ok(Redeemed::Unknown);
            }
            Ok(Redeemed::Fresh(rec))
        }
        None => match store.get(&used_refresh_key(token)).await? {
            Some(f) => {
                revoke_family(store, &String::from_utf8_lossy(&f)).await?;
                Ok(Redeemed::Replayed)
            }
            None => Ok(Redeemed::Unknown),
        },
    }
}

pub async fn store_code(store: &dyn StateStore, rec: &CodeRecord, ttl: u64) -> Result<String, StateError> {
    let code = random_secret("");
    put(store, &code_key(&code), rec, ttl).await?;
    Ok(code)
}

/// Take a code (atomically, once). A second redemption revokes what the first one issued.
pub async fn redeem_code(
    store: &dyn StateStore,
    code: &str,
    family_ttl: u64,
) -> Result<Redeemed<CodeRecord>, StateError> {
    match parse::<CodeRecord>(store.take(&code_key(code)).await?) {
        Some(rec) => {
            store
                .set(&used_code_key(code), rec.family.as_bytes(), Some(Duration::from_secs(family_ttl.max(1))))
                .await?;
            Ok(Redeemed::Fresh(rec))
        }
        None => match store.get(&used_code_key(code)).await? {
            Some(f) => {
                revoke_family(store, &String::from_utf8_lossy(&f)).await?;
                Ok(Redeemed::Replayed)
            }
            None => Ok(Redeemed::Unknown),
        },
    }
}

pub async fn put_pending(store: &dyn StateStore, id: &str, p: &Pending, ttl: u64) -> Result<(), StateError> {
    put(store, &pending_key(id), p, ttl).await
}

pub async fn get_pending(store: &dyn StateStore, id: &str) -> Result<Option<Pending>, StateError> {
    Ok(parse(store.get(&pending_key(id)).await?))
}

pub async fn take_pending(store: &dyn StateStore, id: &str) -> Result<Option<Pending>, StateError> {
    Ok(parse(store.take(&pending_key(id)).await?))
}

/// How long a lookup is trusted before asking the store again: bounds the store load from a
/// busy token and how long a revocation elsewhere takes to reach this node.
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX: usize = 20_000;

/// Lookups by key, each with when it was made (a miss is cached too).
type Cache<K, V> = Mutex<HashMap<K, (Option<V>, Instant)>>;

/// Gateway-side lookups of access tokens and stored clients, with a short cache. Revocations
/// made on this node evict at once.
pub struct Lookups {
    store: Arc<dyn StateStore>,
    tokens: Cache<[u8; 32], TokenRecord>,
    clients: Cache<String, ClientRecord>,
}

fn cache_get<K: std::hash::Hash + Eq, V: Clone>(m: &Mutex<HashMap<K, (V, Instant)>>, k: &K) -> Option<V> {
    let m = m.lock().ok()?;
    let (v, at) = m.get(k)?;
    (at.elapsed() < CACHE_TTL).then(|| v.clone())
}

fn cache_put<K: std::hash::Hash + Eq, V>(m: &Mutex<HashMap<K, (V, Instant)>>, k: K, v: V) {
    if let Ok(mut m) = m.lock() {
        if m.len() >= CACHE_MAX {
            m.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
            if m.len() >= CACHE_MAX {
                m.clear();
            }
        }
        m.insert(k, (v, Instant::now()));
    }
}

impl Lookups {
    pub fn new(store: Arc<dyn StateStore>) -> Self {
        Lookups { store, tokens: Mutex::new(HashMap::new()), clients: Mutex::new(HashMap::new()) }
    }

    pub async fn access(&self, token: &str) -> Result<Option<TokenRecord>, StateError> {
        let digest = sha256(token.as_bytes());
        if let Some(rec) = cache_get(&self.tokens, &digest) {
            return Ok(rec.filter(|r| r.expires_at > now()));
        }
        let rec = find_access(&*self.store, token).await?;
        cache_put(&self.tokens, digest, rec.clone());
        Ok(rec)
    }

    /// A stored client (active or revoked).
    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRecord>, StateError> {
        if let Some(rec) = cache_get(&self.clients, &client_id.to_string()) {
            return Ok(rec);
        }
        let rec = parse::<ClientRecord>(self.store.hget(CLIENTS_MAP, client_id).await?);
        cache_put(&self.clients, client_id.to_string(), rec.clone());
        Ok(rec)
    }

    /// Forget cached lookups after a revocation on this node.
    pub fn evict_token(&self, token: &str) {
        if let Ok(mut m) = self.tokens.lock() {
            m.remove(&sha256(token.as_bytes()));
        }
    }

    pub fn evict_all_tokens(&self) {
        if let Ok(mut m) = self.tokens.lock() {
            m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MemoryStore;

    fn record(family: Option<String>) -> TokenRecord {
        TokenRecord {
            client_id: "c".into(),
            scope: vec!["llm:proxy".into()],
            issued_at: now(),
            expires_at: now() + 60,
            user: None,
            family,
        }
    }

    #[tokio::test]
    async fn clients_round_trip_and_revoke() {
        let store = MemoryStore::new("t:");
        let (rec, secret) =
            create_client(&store, NewClient { name: "batch".into(), ..Default::default() }).await.unwrap();
        let secret = secret.unwrap();
        assert!(rec.client_id.starts_with(CLIENT_ID_PREFIX) && secret.starts_with(CLIENT_SECRET_PREFIX));
        assert!(rec.secret_matches(&secret) && !rec.secret_matches("pccs_nope"));
        let (public, none) =
            create_client(&store, NewClient { name: "cli".into(), public: true, ..Default::default() }).await.unwrap();
        assert!(public.is_public() && none.is_none() && !public.secret_matches(""));
        assert_eq!(list_clients(&store).await.unwrap().len(), 2);
        assert_eq!(revoke_clients(&store, "batch").await.unwrap(), vec![rec.client_id.clone()]);
        assert!(revoke_clients(&store, "batch").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn refresh_rotation_and_replay_revoke_the_family() {
        let store = MemoryStore::new("t:");
        let family = open_family(&store, 600).await.unwrap();
        let access = issue_access(&store, &record(Some(family.clone()))).await.unwrap();
        let refresh = issue_refresh(&store, &record(Some(family.clone()))).await.unwrap();
        assert!(find_access(&store, &access).await.unwrap().is_some());
        assert!(matches!(redeem_refresh(&store, &refresh).await.unwrap(), Redeemed::Fresh(_)));
        let next = issue_refresh(&store, &record(Some(family.clone()))).await.unwrap();
        // The rotated token comes back: the whole family goes.
        assert!(matches!(redeem_refresh(&store, &refresh).await.unwrap(), Redeemed::Replayed));
        assert!(find_access(&store, &access).await.unwrap().is_none());
        assert!(find_refresh(&store, &next).await.unwrap().is_none());
        assert!(matches!(redeem_refresh(&store, &next).await.unwrap(), Redeemed::Unknown));
        assert!(matches!(redeem_refresh(&store, "pcrt_unknown").await.unwrap(), Redeemed::Unknown));
    }

    #[tokio::test]
    async fn a_code_redeems_once() {
        let store = MemoryStore::new("t:");
        let family = open_family(&store, 600).await.unwrap();
        let user = User { idp: "corp".into(), sub: "alice".into(), groups: vec![], mfa: true };
        let code = CodeRecord {
            client_id: "c".into(),
            redirect_uri: "http://127.0.0.1/cb".into(),
            code_challenge: "x".into(),
            scope: vec![],
            user,
            family: family.clone(),
        };
        let code = store_code(&store, &code, 60).await.unwrap();
        let access = issue_access(&store, &record(Some(family.clone()))).await.unwrap();
        assert!(matches!(redeem_code(&store, &code, 600).await.unwrap(), Redeemed::Fresh(_)));
        assert!(matches!(redeem_code(&store, &code, 600).await.unwrap(), Redeemed::Replayed));
        assert!(find_access(&store, &access).await.unwrap().is_none(), "tokens from a replayed code are revoked");
        assert!(!family_active(&store, &family).await.unwrap());
    }

    #[tokio::test]
    async fn access_tokens_expire_and_revoke() {
        let store = Arc::new(MemoryStore::new("t:"));
        let t = issue_access(&*store, &record(None)).await.unwrap();
        let lookups = Lookups::new(store.clone());
        assert!(lookups.access(&t).await.unwrap().is_some());
        revoke_access(&*store, &t).await.unwrap();
        assert!(lookups.access(&t).await.unwrap().is_some(), "cached for a few seconds");
        lookups.evict_token(&t);
        assert!(lookups.access(&t).await.unwrap().is_none());
        let mut old = record(None);
        old.expires_at = now().saturating_sub(1);
        let t = issue_access(&*store, &old).await.unwrap();
        assert!(lookups.access(&t).await.unwrap().is_none());
    }
}
