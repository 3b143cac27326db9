//! The in-process backend: one node, no external service, the same semantics as Redis.
//!
//! Used for single-node deployments and tests. Every operation takes one short `std` mutex and
//! never awaits while holding it, so it is atomic like a Redis command without blocking the
//! runtime for longer than a hash-map lookup (plus, rarely, a sweep).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::{
    applied, clamp_counter, history_totals, plan, reported_total, ttl_millis, Applied, Keys, StateError, StateStore,
    Window, WindowOp, WindowResult, WindowSlot,
};

/// How often expired values and old window counters are swept out. Reads drop expired entries
/// lazily; the sweep bounds the memory held by keys nobody reads again.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// A [`StateStore`] held in this process. State is lost on restart and not shared between
/// nodes, which is what a single node or a test wants.
pub struct MemoryStore {
    keys: Keys,
    inner: Mutex<Inner>,
}

struct Inner {
    values: HashMap<String, Expiring<Vec<u8>>>,
    counters: HashMap<String, Expiring<i64>>,
    maps: HashMap<String, HashMap<String, Vec<u8>>>,
    next_sweep: Instant,
}

struct Expiring<T> {
    value: T,
    expires_at: Option<Instant>,
}

impl<T> Expiring<T> {
    fn is_live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

impl Inner {
    /// Drops expired entries when the sweep is due; called on writes, which are what grows the
    /// maps.
    fn sweep_if_due(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.values.retain(|_, entry| entry.is_live(now));
        self.counters.retain(|_, entry| entry.is_live(now));
        self.next_sweep = now + SWEEP_INTERVAL;
    }

    fn live_value(&mut self, key: &str, now: Instant) -> Option<&Expiring<Vec<u8>>> {
        if self.values.get(key).is_some_and(|entry| !entry.is_live(now)) {
            self.values.remove(key);
        }
        self.values.get(key)
    }

    fn live_counter(&self, key: &str, now: Instant) -> i64 {
        self.counters.get(key).filter(|entry| entry.is_live(now)).map_or(0, |entry| entry.value)
    }

    /// Stores a counter with the lifetime of its window, like `INCRBY` + `PEXPIRE`.
    fn put_counter(&mut self, key: String, value: i64, ttl: Duration, now: Instant) {
        self.sweep_if_due(now);
        // A far-future expiry that `Instant` cannot represent means "never".
        let expires_at = now.checked_add(ttl);
        self.counters.insert(key, Expiring { value, expires_at });
    }
}

impl MemoryStore {
    /// An empty store. `prefix` is applied to keys just as Redis does, so both backends share one
    /// key layout.
    pub fn new(prefix: &str) -> Self {
        Self {
            keys: Keys::new(prefix),
            inner: Mutex::new(Inner {
                values: HashMap::new(),
                counters: HashMap::new(),
                maps: HashMap::new(),
                next_sweep: Instant::now() + SWEEP_INTERVAL,
            }),
        }
    }

    /// Every critical section is panic-free map work, so a poisoned lock still holds consistent
    /// data; recover it rather than turning one panic elsewhere into a dead store.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn expires_at(ttl: Option<Duration>, now: Instant) -> Option<Instant> {
    ttl.map(|ttl| now + Duration::from_millis(ttl_millis(ttl)))
}

/// Stored counters `window_apply` accepts are below 2^62 in magnitude.
const COUNTER_RANGE: u64 = 1 << 62;

fn overflow(key: &str) -> StateError {
    StateError::Corrupt(format!("window counter {key} would overflow"))
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StateError> {
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let key = self.keys.value(key);
        let mut inner = self.lock();
        Ok(inner.live_value(&key, Instant::now()).map(|entry| entry.value.clone()))
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StateError> {
        let key = self.keys.value(key);
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep_if_due(now);
        let entry = Expiring { value: value.to_vec(), expires_at: expires_at(ttl, now) };
        inner.values.insert(key, entry);
        Ok(())
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, StateError> {
        let key = self.keys.value(key);
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.live_value(&key, now).is_some() {
            return Ok(false);
        }
        inner.sweep_if_due(now);
        let entry = Expiring { value: value.to_vec(), expires_at: expires_at(ttl, now) };
        inner.values.insert(key, entry);
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let key = self.keys.value(key);
        let mut inner = self.lock();
        Ok(inner.values.remove(&key).is_some_and(|entry| entry.is_live(Instant::now())))
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let key = self.keys.value(key);
        let mut inner = self.lock();
        Ok(inner.values.remove(&key).filter(|entry| entry.is_live(Instant::now())).map(|entry| entry.value))
    }

    async fn hset(&self, map: &str, field: &str, value: &[u8]) -> Result<(), StateError> {
        let map = self.keys.map(map);
        let mut inner = self.lock();
        inner.maps.entry(map).or_default().insert(field.to_owned(), value.to_vec());
        Ok(())
    }

    async fn hget(&self, map: &str, field: &str) -> Result<Option<Vec<u8>>, StateError> {
        let map = self.keys.map(map);
        let inner = self.lock();
        Ok(inner.maps.get(&map).and_then(|fields| fields.get(field)).cloned())
    }

    async fn hdel(&self, map: &str, field: &str) -> Result<bool, StateError> {
        let map = self.keys.map(map);
        let mut inner = self.lock();
        let Some(fields) = inner.maps.get_mut(&map) else {
            return Ok(false);
        };
        let removed = fields.remove(field).is_some();
        // Like Redis, a map whose last field is gone no longer exists.
        if fields.is_empty() {
            inner.maps.remove(&map);
        }
        Ok(removed)
    }

    async fn hgetall(&self, map: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let map = self.keys.map(map);
        let mut all: Vec<(String, Vec<u8>)> = {
            let inner = self.lock();
            inner.maps.get(&map).map_or_else(Vec::new, |fields| {
                fields.iter().map(|(field, value)| (field.clone(), value.clone())).collect()
            })
        };
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    async fn window_add(
        &self,
        key: &str,
        amount: u64,
        limit: u64,
        window: Duration,
    ) -> Result<WindowResult, StateError> {
        let slot = WindowSlot::now(window);
        let key = self.keys.window(key, &slot);
        let (amount, limit) = (clamp_counter(amount), clamp_counter(limit));
        let now = Instant::now();
        let mut inner = self.lock();
        let current = inner.live_counter(&key, now);
        // Compared in i128 so that the check itself cannot overflow; once the sum is known to be
        // within the limit it fits an i64.
        if i128::from(current) + i128::from(amount) > i128::from(limit) {
            return Ok(WindowResult { allowed: false, total: reported_total(current), reset_after: slot.reset_after });
        }
        let total = current + amount;
        inner.put_counter(key, total, slot.expiry(), now);
        Ok(WindowResult { allowed: true, total: reported_total(total), reset_after: slot.reset_after })
    }

    async fn window_incr(&self, key: &str, amount: i64, window: Duration) -> Result<i64, StateError> {
        let slot = WindowSlot::now(window);
        let key = self.keys.window(key, &slot);
        let now = Instant::now();
        let mut inner = self.lock();
        let total = inner.live_counter(&key, now).checked_add(amount).ok_or_else(|| overflow(&key))?;
        inner.put_counter(key, total, slot.expiry(), now);
        Ok(total)
    }

    async fn window_get(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let slot = WindowSlot::now(window);
        let key = self.keys.window(key, &slot);
        let inner = self.lock();
        Ok(reported_total(inner.live_counter(&key, Instant::now())))
    }

    async fn window_apply(&self, ops: &[WindowOp]) -> Result<Applied, StateError> {
        let planned = plan(&self.keys, ops);
        let ops: Vec<_> = planned.iter().flatten().collect();
        let now = Instant::now();
        let mut inner = self.lock();
        // First pass, changing nothing: the current totals, and what each op would make of its
        // counter. `running` holds the totals as the batch would leave them, so a key given
        // twice is checked with the earlier op's change included, as in the Redis script.
        let current: Vec<i64> = ops.iter().map(|op| inner.live_counter(&op.key, now)).collect();
        let mut running: HashMap<&str, i64> = HashMap::new();
        let mut outcomes = Vec::with_capacity(ops.len());
        for (op, current) in ops.iter().zip(&current) {
            // The same bound as the Redis script, which needs it to rule out INCRBY overflowing
            // halfway through a batch.
            if current.unsigned_abs() >= COUNTER_RANGE {
                return Err(StateError::Corrupt(format!("window counter {} is out of range", op.key)));
            }
            let before = running.get(op.key.as_str()).copied().unwrap_or(*current);
            let passed = op.limit.is_none_or(|limit| i128::from(before) + i128::from(op.amount) <= i128::from(limit));
            let after = before.checked_add(op.amount).ok_or_else(|| overflow(&op.key))?;
            running.insert(&op.key, after);
            outcomes.push((passed, after));
        }
        if outcomes.iter().any(|(passed, _)| !passed) {
            let rejected = outcomes.iter().zip(current).map(|((passed, _), current)| (*passed, current)).collect();
            return applied(&planned, rejected);
        }
        // Second pass: every op passed and no sum overflows, so apply them all.
        for (op, (_, total)) in ops.iter().zip(&outcomes) {
            inner.put_counter(op.key.clone(), *total, op.ttl, now);
        }
        drop(inner);
        applied(&planned, outcomes)
    }

    async fn window_history(&self, key: &str, window: Window, count: usize) -> Result<Vec<u64>, StateError> {
        let keys = self.keys.history(key, window, count);
        let now = Instant::now();
        let inner = self.lock();
        let read = keys.iter().map(|key| Some(inner.live_counter(key, now))).collect();
        drop(inner);
        Ok(history_totals(read, count))
    }
}
