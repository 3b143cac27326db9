//! Shared state: budgets, rate-limit windows, virtual keys and OAuth state.
//!
//! Every gateway node of a fleet must see the same counters and records, so the proxy talks to
//! one [`StateStore`] trait and the deployment picks the backend: [`MemoryStore`] for a single
//! node (development, tests) and [`RedisStore`] for a fleet. Key naming and window arithmetic
//! live here, shared by both backends, so that they behave identically; `tests/state_store.rs`
//! runs one suite against both.

mod memory;
mod redis;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// How long a Redis operation may take before it counts as an outage, unless configured.
///
/// Short on purpose: the store sits on the request path, and a slow store must turn into a
/// prompt 503 (or a fail-open decision), not into requests piling up behind it.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a window counter outlives its window.
///
/// Nodes compute the window from their own clocks; the margin keeps a counter readable by a node
/// whose clock lags a little, instead of it silently starting again from zero.
const WINDOW_EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// Why a store operation failed, split by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The store could not answer in time (connection refused, timeout, server loading).
    /// Transient: the gateway answers 503 or fails open, depending on the feature.
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with data this code did not write (wrong type, not a number).
    /// Not transient: retrying will not help, so it is reported rather than retried.
    #[error("state store data is corrupt: {0}")]
    Corrupt(String),
    /// The store settings were rejected before anything was connected, so start-up can stop with
    /// a clear message instead of failing on the first request.
    #[error("invalid state store configuration: {0}")]
    Config(String),
}

/// The outcome of [`StateStore::window_add`], enough to answer a request and fill the
/// `x-ratelimit-*` headers without a second round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowResult {
    /// Whether the amount was added (the new total stays within the limit).
    pub allowed: bool,
    /// The total after adding when allowed, or the unchanged current total when rejected.
    pub total: u64,
    /// Time until the window rolls over and the counter starts again from zero.
    pub reset_after: Duration,
}

/// The operations the gateway needs from shared state, small enough that each backend can make
/// every one of them atomic.
///
/// Keys are plain strings chosen by the caller; the backend adds its configured prefix so that
/// several deployments can share one Redis. Values, hash maps and window counters live in
/// separate namespaces, so the same caller key may be used for each without clashing.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The backend name (`"memory"` or `"redis"`), for logs, metrics and the health endpoint.
    fn backend(&self) -> &'static str;

    /// Checks that the store answers, for readiness probes.
    async fn ping(&self) -> Result<(), StateError>;

    /// Reads a value; `None` when absent or expired.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Writes a value, replacing any previous value and its TTL. A TTL is rounded up to whole
    /// milliseconds (at least one).
    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StateError>;

    /// Creates a value only if absent; true when created. Lets one node claim something (a
    /// nonce, a refresh) without racing the others.
    async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, StateError>;

    /// Removes a value; true when there was one.
    async fn delete(&self, key: &str) -> Result<bool, StateError>;

    /// Atomically reads and removes a value, so that a one-time code (OAuth authorization code,
    /// PKCE state) can be redeemed exactly once across the fleet.
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Sets one field of a hash map (records such as virtual keys, keyed by digest). Hash maps do
    /// not expire.
    async fn hset(&self, map: &str, field: &str, value: &[u8]) -> Result<(), StateError>;

    /// Reads one field of a hash map.
    async fn hget(&self, map: &str, field: &str) -> Result<Option<Vec<u8>>, StateError>;

    /// Removes one field of a hash map; true when it existed.
    async fn hdel(&self, map: &str, field: &str) -> Result<bool, StateError>;

    /// Reads a whole hash map, sorted by field so both backends list it in the same order.
    async fn hgetall(&self, map: &str) -> Result<Vec<(String, Vec<u8>)>, StateError>;

    /// Fixed-window counter: adds `amount` to the counter for `key` in the window that contains
    /// now (window length `window`), but only if the new total stays `<= limit`. Atomic across
    /// nodes, so concurrent requests can never overshoot the limit together.
    ///
    /// Windows are aligned to the Unix epoch by the calling node's clock, so every node agrees
    /// on the window as long as clocks are synchronised. Amounts and limits above 2^53 - 1 are
    /// clamped to it, the largest integer the Redis script compares exactly.
    async fn window_add(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        window: Duration,
    ) -> Result<WindowResult, StateError>;

    /// Adds unconditionally to the same counter as [`window_add`](Self::window_add) and returns
    /// the new total. Settles the real cost once a stream ends: it may go over the limit, and a
    /// negative amount refunds an over-reservation.
    async fn window_incr(&self, key: &str, amount: i64, window: Duration) -> Result<i64, StateError>;

    /// Reads the counter of the current window without changing it (0 when nothing was added,
    /// and never negative).
    async fn window_get(&self, key: &str, window: Duration) -> Result<u64, StateError>;
}

/// Builds the configured backend, so that `main` and tests need not know either concrete type.
///
/// `redis_url` and `op_timeout` are used by the `redis` backend only. Nothing connects here: the
/// Redis connection is made on first use, inside the runtime that uses it.
pub fn from_config(
    backend: &str,
    redis_url: &str,
    prefix: &str,
    op_timeout: Duration,
) -> Result<Arc<dyn StateStore>, StateError> {
    match backend {
        "memory" => Ok(Arc::new(MemoryStore::new(prefix))),
        "redis" => Ok(Arc::new(RedisStore::new(redis_url, prefix, op_timeout)?)),
        other => Err(StateError::Config(format!("unknown state backend {other:?} (expected \"memory\" or \"redis\")"))),
    }
}

/// The key layout shared by both backends. Redis keys written by one gateway version are read
/// by the next during a rolling deploy, so this layout is part of the wire contract.
#[derive(Debug)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// `{prefix}k:{key}` for plain values.
    fn value(&self, key: &str) -> String {
        format!("{}k:{key}", self.prefix)
    }

    /// `{prefix}h:{map}` for hash maps.
    fn map(&self, map: &str) -> String {
        format!("{}h:{map}", self.prefix)
    }

    /// `{prefix}w:{key}:{window_ms}:{index}`: the window index in the key makes the counter
    /// roll over by itself, and the window length keeps a per-minute and a per-day counter of
    /// the same key apart.
    fn window(&self, key: &str, slot: &WindowSlot) -> String {
        format!("{}w:{key}:{}:{}", self.prefix, slot.length_ms, slot.index)
    }
}

/// The window that contains now, for a given window length.
#[derive(Debug, Clone, Copy)]
struct WindowSlot {
    length_ms: u64,
    index: u64,
    reset_after: Duration,
}

impl WindowSlot {
    /// Places now (by the system clock) in a window of length `window`, aligned to the Unix
    /// epoch. A window shorter than a millisecond counts as one millisecond.
    fn now(window: Duration) -> Self {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(millis).unwrap_or(0);
        let length_ms = millis(window).max(1);
        let index = now_ms / length_ms;
        let end_ms = (index + 1).saturating_mul(length_ms);
        Self { length_ms, index, reset_after: Duration::from_millis(end_ms - now_ms) }
    }

    /// How long the counter must be kept: the rest of the window plus a margin.
    fn expiry(&self) -> Duration {
        self.reset_after + WINDOW_EXPIRY_MARGIN
    }
}

/// Whole milliseconds, saturating (a duration of 584 million years is as good as forever).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A TTL in whole milliseconds, rounded up and at least one, because Redis rejects a zero TTL
/// and the memory backend must match it.
fn ttl_millis(ttl: Duration) -> u64 {
    let rounded_up = ttl.as_nanos().div_ceil(1_000_000);
    u64::try_from(rounded_up).unwrap_or(u64::MAX).max(1)
}

/// The largest amount or limit `window_add` takes: Lua numbers in Redis scripts are doubles,
/// which hold integers exactly up to 2^53 - 1. With both operands at most this, the script's
/// check `current + amount > limit` is exact for any stored 64-bit counter.
const MAX_COUNTER_ARG: u64 = (1 << 53) - 1;

/// Clamps an amount or limit so that both backends decide identically.
fn clamp_counter(value: u64) -> i64 {
    // Cannot fail: MAX_COUNTER_ARG is far below i64::MAX.
    i64::try_from(value.min(MAX_COUNTER_ARG)).unwrap_or(i64::MAX)
}

/// A counter as reported to callers, which never see a negative total from refunds.
fn reported_total(total: i64) -> u64 {
    u64::try_from(total).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1)), 1);
        assert_eq!(ttl_millis(Duration::from_micros(1_001)), 2);
        assert_eq!(ttl_millis(Duration::from_secs(3)), 3_000);
    }

    #[test]
    fn window_slot_is_aligned_and_within_the_window() {
        let slot = WindowSlot::now(Duration::from_secs(60));
        assert_eq!(slot.length_ms, 60_000);
        assert!(slot.reset_after > Duration::ZERO);
        assert!(slot.reset_after <= Duration::from_secs(60));
        let zero = WindowSlot::now(Duration::ZERO);
        assert_eq!(zero.length_ms, 1);
    }

    #[test]
    fn window_key_names_length_and_index() {
        let keys = Keys::new("p:");
        let slot = WindowSlot { length_ms: 1_000, index: 42, reset_after: Duration::from_millis(10) };
        assert_eq!(keys.window("tenant/a", &slot), "p:w:tenant/a:1000:42");
        assert_eq!(keys.value("x"), "p:k:x");
        assert_eq!(keys.map("x"), "p:h:x");
    }

    #[test]
    fn counters_clamp() {
        assert_eq!(clamp_counter(u64::MAX), (1 << 53) - 1);
        assert_eq!(clamp_counter(7), 7);
        assert_eq!(reported_total(-3), 0);
        assert_eq!(reported_total(3), 3);
    }
}
