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

/// How a counter's window is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Fixed length, aligned to the Unix epoch (so minute, hour and day windows are UTC-aligned).
    Fixed(Duration),
    /// The calendar month in UTC (rolls over at 00:00 UTC on the 1st), because monthly budgets
    /// follow the invoice, not a rolling 30 days.
    Month,
}

impl Window {
    /// Time from now (by the system clock) until the current window rolls over, for usage
    /// reports that show when a limit resets without touching the store.
    pub fn reset_after(&self) -> Duration {
        WindowSlot::now_in(*self).reset_after
    }
}

impl From<Duration> for Window {
    fn from(length: Duration) -> Self {
        Self::Fixed(length)
    }
}

/// One counter change in a [`StateStore::window_apply`] batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowOp {
    pub key: String,
    pub window: Window,
    /// May be negative (a refund); totals reported to callers never go below zero (as
    /// `window_incr`/`window_get` already do). Clamped to ±(2^53 - 1), like `window_add`.
    pub amount: i64,
    /// When set and `amount > 0`: the op passes only if `current + amount <= limit`. If any op of
    /// the batch fails its limit, nothing in the batch is changed.
    pub limit: Option<u64>,
    /// Extra time the counter is kept after its window ends, so
    /// [`window_history`](StateStore::window_history) can still read past windows
    /// (`Duration::ZERO` for plain limits; the 5 s clock-skew margin always applies on top).
    pub keep: Duration,
    /// Place the op in the window that contains this instant (ms since the Unix epoch) instead of
    /// now. Used to replay ops recorded locally during a Redis outage. An op whose window end +
    /// `keep` is already in the past is skipped (reported as allowed, total 0), so a late replay
    /// cannot resurrect a counter nobody reads any more.
    pub at_ms: Option<u64>,
}

/// The outcome of [`StateStore::window_apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Every limited op passed and the whole batch was applied.
    pub allowed: bool,
    /// One per op, in order. When allowed: totals after the batch. When not: nothing changed,
    /// totals are the current values, and `allowed` is false exactly on the ops whose limit
    /// rejected. `reset_after` is the time until that op's window rolls over (from now; zero for
    /// an op placed in a past window).
    pub results: Vec<WindowResult>,
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

    /// Applies a batch of counter changes atomically (one Redis round trip: one Lua script), so
    /// that a request is admitted on every limit that applies to it (key, group, proxy; per
    /// minute, day and month) or on none, and a rejection reserves nothing anywhere.
    ///
    /// Keys in one batch are meant to be distinct; a key given twice is checked and applied in
    /// order, as if the ops had been applied one after the other. An empty batch is allowed and
    /// makes no round trip. Fixed windows share their counters with
    /// [`window_add`](Self::window_add) and friends.
    async fn window_apply(&self, ops: &[WindowOp]) -> Result<Applied, StateError>;

    /// Totals of the current window and the `count - 1` windows before it, newest first (0 where
    /// nothing was added or it expired). One round trip (`MGET`), for usage reports.
    async fn window_history(&self, key: &str, window: Window, count: usize) -> Result<Vec<u64>, StateError>;
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

    /// Window counters, with the window index in the key so that the counter rolls over by
    /// itself:
    ///
    /// - fixed windows: `{prefix}w:{key}:{window_ms}:{index}`, index = ms since the epoch /
    ///   window_ms; the window length keeps a per-minute and a per-day counter of the same key
    ///   apart;
    /// - calendar months: `{prefix}w:{key}:month:{index}`, index = months since 1970-01 in UTC
    ///   (`year * 12 + month0 - 1970 * 12`).
    fn window(&self, key: &str, slot: &WindowSlot) -> String {
        self.counter(key, slot.span, slot.index)
    }

    fn counter(&self, key: &str, span: Span, index: u64) -> String {
        match span {
            Span::Millis(length_ms) => format!("{}w:{key}:{length_ms}:{index}", self.prefix),
            Span::Month => format!("{}w:{key}:month:{index}", self.prefix),
        }
    }

    /// The keys [`StateStore::window_history`] reads, newest first. Windows before the epoch do
    /// not exist, so fewer than `count` keys may come back; the caller pads with zeros.
    fn history(&self, key: &str, window: Window, count: usize) -> Vec<String> {
        let slot = WindowSlot::now_in(window);
        let available = usize::try_from(slot.index).map_or(count, |index| count.min(index.saturating_add(1)));
        (0..available).map(|back| self.counter(key, slot.span, slot.index - back as u64)).collect()
    }
}

const DAY_MS: u64 = 86_400_000;

/// A [`Window`] normalised into what names it in keys and places instants in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// Fixed length in whole milliseconds, at least one.
    Millis(u64),
    Month,
}

impl Span {
    fn of(window: Window) -> Self {
        match window {
            Window::Fixed(length) => Self::Millis(millis(length).max(1)),
            Window::Month => Self::Month,
        }
    }

    /// The index of the window that contains `at_ms`.
    fn index_at(self, at_ms: u64) -> u64 {
        match self {
            Self::Millis(length_ms) => at_ms / length_ms,
            Self::Month => {
                let (year, month, _) = civil_from_days((at_ms / DAY_MS) as i64);
                // Years from 1970 on only, since `at_ms` is unsigned.
                u64::try_from((year - 1970) * 12 + i64::from(month) - 1).unwrap_or(0)
            }
        }
    }

    /// When window `index` starts, in ms since the epoch (saturating far in the future).
    fn start_ms(self, index: u64) -> u64 {
        match self {
            Self::Millis(length_ms) => index.saturating_mul(length_ms),
            Self::Month => {
                // u64::MAX ms is in the year 584,556,019; later months start "never", which
                // also keeps the date arithmetic below far from overflowing.
                let year = index / 12;
                if year > 600_000_000 {
                    return u64::MAX;
                }
                let year = year as i64;
                // `index % 12 + 1` is in 1..=12.
                let days = days_from_civil(1970 + year, (index % 12) as u32 + 1, 1);
                u64::try_from(days).map_or(u64::MAX, |days| days.saturating_mul(DAY_MS))
            }
        }
    }
}

/// The window an op lands in.
#[derive(Debug, Clone, Copy)]
struct WindowSlot {
    span: Span,
    index: u64,
    /// When the window ends (ms since the epoch).
    end_ms: u64,
    /// Time from now until the window ends; zero for a past window.
    reset_after: Duration,
}

impl WindowSlot {
    /// Places now (by the system clock) in a window of length `window`, aligned to the Unix
    /// epoch. A window shorter than a millisecond counts as one millisecond.
    fn now(window: Duration) -> Self {
        Self::now_in(Window::Fixed(window))
    }

    fn now_in(window: Window) -> Self {
        let now = now_ms();
        Self::at(window, now, now)
    }

    /// The window that contains `at_ms`, seen from `now_ms`.
    fn at(window: Window, at_ms: u64, now_ms: u64) -> Self {
        let span = Span::of(window);
        let index = span.index_at(at_ms);
        let end_ms = span.start_ms(index.saturating_add(1));
        Self { span, index, end_ms, reset_after: Duration::from_millis(end_ms.saturating_sub(now_ms)) }
    }

    /// How long the counter must be kept: the rest of the window plus a margin.
    fn expiry(&self) -> Duration {
        self.kept_for(Duration::ZERO)
    }

    /// How long the counter must be kept when it is to stay readable `keep` past its window.
    fn kept_for(&self, keep: Duration) -> Duration {
        self.reset_after.saturating_add(keep).saturating_add(WINDOW_EXPIRY_MARGIN)
    }

    /// Whether the window and its `keep` are over, so a replayed op has nothing left to count in.
    fn is_over(&self, keep: Duration, now_ms: u64) -> bool {
        self.end_ms.saturating_add(millis(keep)) <= now_ms
    }
}

/// The system clock in ms since the epoch (0 for a clock set before 1970).
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

/// The proleptic Gregorian date `(year, month 1..=12, day 1..=31)` of a day count since
/// 1970-01-01 (Howard Hinnant's `civil_from_days`, exact for every `i64` day we can reach).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March first
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`] (Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400); // [0, 399]
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 }); // [0, 11]
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// One op of a `window_apply` batch placed in its window and clamped, so that both backends
/// decide from the same numbers.
#[derive(Debug, Clone)]
struct PlannedOp {
    /// The counter's full key.
    key: String,
    amount: i64,
    /// Only for ops that can be refused (a limit and a positive amount).
    limit: Option<i64>,
    /// The counter's lifetime from now: the rest of the window, `keep`, and the margin.
    ttl: Duration,
    reset_after: Duration,
}

/// Places every op of a batch; `None` for ops skipped because their window and `keep` are over.
fn plan(keys: &Keys, ops: &[WindowOp]) -> Vec<Option<PlannedOp>> {
    let now = now_ms();
    ops.iter()
        .map(|op| {
            let slot = WindowSlot::at(op.window, op.at_ms.unwrap_or(now), now);
            if slot.is_over(op.keep, now) {
                return None;
            }
            let amount = clamp_amount(op.amount);
            Some(PlannedOp {
                key: keys.window(&op.key, &slot),
                amount,
                limit: op.limit.filter(|_| amount > 0).map(clamp_counter),
                ttl: slot.kept_for(op.keep),
                reset_after: slot.reset_after,
            })
        })
        .collect()
}

/// Puts a backend's `(passed, total)` per planned op back in batch order, with skipped ops
/// reported as allowed with total 0.
fn applied(planned: &[Option<PlannedOp>], outcomes: Vec<(bool, i64)>) -> Result<Applied, StateError> {
    let expected = planned.iter().flatten().count();
    if outcomes.len() != expected {
        return Err(StateError::Corrupt(format!("window_apply: {} results for {expected} counters", outcomes.len())));
    }
    let allowed = outcomes.iter().all(|(passed, _)| *passed);
    let mut outcomes = outcomes.into_iter();
    let results = planned
        .iter()
        .map(|op| match (op, op.as_ref().and_then(|_| outcomes.next())) {
            (Some(op), Some((passed, total))) => {
                WindowResult { allowed: passed, total: reported_total(total), reset_after: op.reset_after }
            }
            _ => WindowResult { allowed: true, total: 0, reset_after: Duration::ZERO },
        })
        .collect();
    Ok(Applied { allowed, results })
}

/// Pads history totals read for [`Keys::history`] to `count` with zeros (windows before the
/// epoch).
fn history_totals(read: Vec<Option<i64>>, count: usize) -> Vec<u64> {
    let mut totals: Vec<u64> = read.into_iter().map(|total| total.map_or(0, reported_total)).collect();
    totals.resize(count, 0);
    totals
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

/// Clamps a signed amount to ±MAX_COUNTER_ARG, the range the Redis script handles exactly.
fn clamp_amount(amount: i64) -> i64 {
    let max = clamp_counter(MAX_COUNTER_ARG);
    amount.clamp(-max, max)
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
        assert_eq!(slot.span, Span::Millis(60_000));
        assert!(slot.reset_after > Duration::ZERO);
        assert!(slot.reset_after <= Duration::from_secs(60));
        let zero = WindowSlot::now(Duration::ZERO);
        assert_eq!(zero.span, Span::Millis(1));
    }

    #[test]
    fn window_key_names_length_and_index() {
        let keys = Keys::new("p:");
        let slot = WindowSlot::at(Window::Fixed(Duration::from_secs(1)), 42_500, 42_500);
        assert_eq!(keys.window("tenant/a", &slot), "p:w:tenant/a:1000:42");
        assert_eq!(slot.reset_after, Duration::from_millis(500));
        assert_eq!(keys.value("x"), "p:k:x");
        assert_eq!(keys.map("x"), "p:h:x");
        let month = WindowSlot::at(Window::Month, at(2024, 2, 29, 12), at(2024, 2, 29, 12));
        assert_eq!(keys.window("tenant/a", &month), "p:w:tenant/a:month:649");
    }

    /// Ms since the epoch of `year-month-day hour:00` UTC, from the code under test but checked
    /// against known day numbers in `civil_dates_round_trip`.
    fn at(year: i64, month: u32, day: u32, hour: u64) -> u64 {
        let days = u64::try_from(days_from_civil(year, month, day)).unwrap();
        days * DAY_MS + hour * 3_600_000
    }

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
        assert_eq!(civil_from_days(47_541), (2100, 3, 1), "2100 is not a leap year");
        assert_eq!(days_from_civil(2100, 2, 28) + 1, days_from_civil(2100, 3, 1));
        // Every day of a few centuries, leap rules included, maps back to itself and follows
        // the day before it.
        let mut previous = civil_from_days(-1);
        for days in 0..200_000 {
            let date = civil_from_days(days);
            assert_eq!(days_from_civil(date.0, date.1, date.2), days);
            let (y, m, d) = date;
            let follows = (d == previous.2 + 1 && m == previous.1 && y == previous.0)
                || (d == 1 && m == previous.1 % 12 + 1 && y == previous.0 + i64::from(m == 1));
            assert!(follows, "{previous:?} -> {date:?}");
            previous = date;
        }
    }

    #[test]
    fn month_windows_roll_over_at_midnight_utc_on_the_first() {
        let last_ms_of_feb = at(2024, 3, 1, 0) - 1;
        let feb = WindowSlot::at(Window::Month, last_ms_of_feb, last_ms_of_feb);
        assert_eq!(feb.index, (2024 - 1970) * 12 + 1);
        assert_eq!(feb.reset_after, Duration::from_millis(1));
        assert_eq!(feb.end_ms, at(2024, 3, 1, 0));

        let march = WindowSlot::at(Window::Month, at(2024, 3, 1, 0), at(2024, 3, 1, 0));
        assert_eq!(march.index, feb.index + 1);
        assert_eq!(march.reset_after, Duration::from_secs(31 * 86_400));

        // From the middle of February: 12 hours left of the 29th.
        let feb_29_noon = WindowSlot::at(Window::Month, at(2024, 2, 29, 12), at(2024, 2, 29, 12));
        assert_eq!(feb_29_noon.index, feb.index);
        assert_eq!(feb_29_noon.reset_after, Duration::from_secs(12 * 3_600));

        // Year rollover: December is month0 11, January the next index.
        let last_ms_of_2023 = at(2024, 1, 1, 0) - 1;
        let december = WindowSlot::at(Window::Month, last_ms_of_2023, last_ms_of_2023);
        assert_eq!(december.index, (2023 - 1970) * 12 + 11);
        assert_eq!(december.reset_after, Duration::from_millis(1));
        let january = WindowSlot::at(Window::Month, at(2024, 1, 1, 0), at(2024, 1, 1, 0));
        assert_eq!(january.index, december.index + 1);
        assert_eq!(Span::Month.start_ms(january.index), at(2024, 1, 1, 0));

        assert_eq!(Span::Month.index_at(0), 0);
        assert_eq!(Span::Month.start_ms(0), 0);
        assert_eq!(Span::Month.start_ms(12), at(1971, 1, 1, 0));
        assert_eq!(Span::Month.start_ms(u64::MAX), u64::MAX, "saturates instead of overflowing");
        let last = Span::Month.index_at(u64::MAX);
        assert!(Span::Month.start_ms(last) > u64::MAX - 31 * DAY_MS, "the last month starts within 31 days of the end");
        assert_eq!(Span::Month.start_ms(last + 1), u64::MAX);
        assert_eq!(WindowSlot::at(Window::Month, u64::MAX, 0).end_ms, u64::MAX);
    }

    #[test]
    fn past_windows_are_over_only_after_keep() {
        let hour = Window::Fixed(Duration::from_secs(3_600));
        let now = at(2024, 5, 10, 12);
        let an_hour_ago = WindowSlot::at(hour, now - 3_600_000, now);
        assert_eq!(an_hour_ago.reset_after, Duration::ZERO);
        assert!(an_hour_ago.is_over(Duration::ZERO, now));
        assert!(!an_hour_ago.is_over(Duration::from_secs(60), now));
        assert_eq!(an_hour_ago.kept_for(Duration::from_secs(60)), Duration::from_secs(65));
        let current = WindowSlot::at(hour, now, now);
        assert!(!current.is_over(Duration::ZERO, now));
        assert_eq!(current.kept_for(Duration::from_secs(10)), Duration::from_secs(3_615));
        // Last month, kept for 40 days: still open on the 10th.
        let april = WindowSlot::at(Window::Month, at(2024, 4, 15, 0), now);
        assert!(april.is_over(Duration::from_secs(9 * 86_400), now));
        assert!(!april.is_over(Duration::from_secs(40 * 86_400), now));
    }

    #[test]
    fn history_keys_are_newest_first() {
        let keys = Keys::new("p:");
        let history = keys.history("k", Window::Fixed(Duration::from_secs(60)), 3);
        let index: u64 = history[0].rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(history[1], format!("p:w:k:60000:{}", index - 1));
        assert_eq!(history[2], format!("p:w:k:60000:{}", index - 2));
        assert!(keys.history("k", Window::Month, 0).is_empty());
        assert_eq!(history_totals(vec![Some(3), None, Some(-2)], 5), vec![3, 0, 0, 0, 0]);
    }

    #[test]
    fn plans_clamp_and_skip() {
        let keys = Keys::new("p:");
        let op = |amount, limit, at_ms| WindowOp {
            key: "k".to_owned(),
            window: Window::Fixed(Duration::from_secs(1)),
            amount,
            limit,
            keep: Duration::ZERO,
            at_ms,
        };
        let planned =
            plan(&keys, &[op(i64::MIN, Some(5), None), op(i64::MAX, Some(u64::MAX), None), op(1, None, Some(0))]);
        let refund = planned[0].as_ref().unwrap();
        assert_eq!(refund.amount, -((1 << 53) - 1));
        assert_eq!(refund.limit, None, "a refund is never refused");
        let big = planned[1].as_ref().unwrap();
        assert_eq!((big.amount, big.limit), ((1 << 53) - 1, Some((1 << 53) - 1)));
        assert!(big.ttl > WINDOW_EXPIRY_MARGIN);
        assert!(planned[2].is_none(), "a window of 1970 is long over");

        let result = applied(&planned, vec![(true, 4), (false, 7)]).unwrap();
        assert!(!result.allowed);
        assert_eq!(
            result.results.iter().map(|r| (r.allowed, r.total)).collect::<Vec<_>>(),
            [(true, 4), (false, 7), (true, 0)]
        );
        assert!(matches!(applied(&planned, vec![(true, 1)]), Err(StateError::Corrupt(_))));
    }

    #[test]
    fn counters_clamp() {
        assert_eq!(clamp_counter(u64::MAX), (1 << 53) - 1);
        assert_eq!(clamp_counter(7), 7);
        assert_eq!(reported_total(-3), 0);
        assert_eq!(reported_total(3), 3);
        assert_eq!(clamp_amount(i64::MIN), -((1 << 53) - 1));
        assert_eq!(clamp_amount(-4), -4);
    }
}
