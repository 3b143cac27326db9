//! One behaviour suite run against every `StateStore` backend, so that the memory store used in
//! development cannot drift from the Redis store used in production; then what only Redis can
//! show: several nodes sharing state, the key layout, and surviving outages.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis::state::{self, Applied, MemoryStore, RedisStore, StateError, StateStore, Window, WindowOp};
use support::redis::RedisServer;

/// Generous, because the suite is not about timeouts and CI machines stall.
const SUITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Short, because the outage tests measure that operations give up about this quickly.
const OUTAGE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long past the operation timeout a failing operation may take before it counts as hanging.
const SLACK: Duration = Duration::from_millis(700);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A store for one test plus whatever keeps its backend alive.
struct Fixture {
    store: Arc<dyn StateStore>,
    _server: Option<Arc<RedisServer>>,
}

fn memory_fixture(_test: &str) -> Fixture {
    Fixture { store: Arc::new(MemoryStore::new("portcullis-test:")), _server: None }
}

/// Tests share one server; the prefix keeps their keys apart.
fn redis_fixture(test: &str) -> Fixture {
    let server = RedisServer::shared();
    let store = RedisStore::new(&server.url(), &format!("t:{test}:"), SUITE_TIMEOUT).expect("valid redis URL");
    Fixture { store: Arc::new(store), _server: Some(server) }
}

/// Runs every case in `cases` once per backend, as `memory_backend::<case>` and
/// `redis_backend::<case>`.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let fixture = super::memory_fixture(stringify!($case));
                    super::cases::$case(fixture.store.clone()).await;
                }
            )*
        }
        mod redis_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let fixture = super::redis_fixture(stringify!($case));
                    super::cases::$case(fixture.store.clone()).await;
                }
            )*
        }
    };
}

suite!(
    ping,
    values,
    ttl_expiry,
    set_nx,
    take_is_once,
    hashes,
    window_add_stops_at_the_limit,
    window_incr_may_exceed_the_limit,
    window_rolls_over,
    window_lengths_are_separate_counters,
    window_add_is_atomic_under_concurrency,
    window_apply_is_all_or_nothing,
    window_apply_refunds_and_unlimited_ops,
    window_apply_replays_into_kept_windows_only,
    window_keep_lets_history_read_the_previous_window,
    window_apply_months,
    window_history_is_newest_first_and_zero_filled,
    window_apply_empty_batch,
    window_apply_is_atomic_under_concurrency,
);

/// Milliseconds left in the current epoch-aligned window of length `window`.
fn left_in_window(window: Duration) -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let length = window.as_millis();
    Duration::from_millis((length - now.as_millis() % length) as u64)
}

/// Waits, if needed, until at least `need` is left in the current window, so that a test's
/// operations all land in one window.
async fn fresh_window(window: Duration, need: Duration) {
    let left = left_in_window(window);
    if left < need {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// An op in the current window, kept no longer than its window.
fn op(key: &str, window: impl Into<Window>, amount: i64, limit: Option<u64>) -> WindowOp {
    WindowOp { key: key.to_owned(), window: window.into(), amount, limit, keep: Duration::ZERO, at_ms: None }
}

fn passed(applied: &Applied) -> Vec<bool> {
    applied.results.iter().map(|r| r.allowed).collect()
}

fn totals(applied: &Applied) -> Vec<u64> {
    applied.results.iter().map(|r| r.total).collect()
}

mod cases {
    use super::*;

    pub async fn ping(store: Arc<dyn StateStore>) {
        store.ping().await.unwrap();
        assert!(["memory", "redis"].contains(&store.backend()));
    }

    pub async fn values(store: Arc<dyn StateStore>) {
        assert_eq!(store.get("a").await.unwrap(), None);
        store.set("a", b"one", None).await.unwrap();
        assert_eq!(store.get("a").await.unwrap(), Some(b"one".to_vec()));
        store.set("a", b"two", None).await.unwrap();
        assert_eq!(store.get("a").await.unwrap(), Some(b"two".to_vec()));

        // Binary and empty values come back byte for byte.
        let binary = [0u8, 255, 10, 13, 0xc3];
        store.set("bin", &binary, None).await.unwrap();
        assert_eq!(store.get("bin").await.unwrap(), Some(binary.to_vec()));
        store.set("empty", b"", None).await.unwrap();
        assert_eq!(store.get("empty").await.unwrap(), Some(Vec::new()));

        assert!(store.delete("a").await.unwrap());
        assert!(!store.delete("a").await.unwrap());
        assert_eq!(store.get("a").await.unwrap(), None);
    }

    pub async fn ttl_expiry(store: Arc<dyn StateStore>) {
        let ttl = Some(Duration::from_millis(300));
        store.set("short", b"v", ttl).await.unwrap();
        assert!(store.set_nx("claim", b"v", ttl).await.unwrap());
        store.set("taken", b"v", ttl).await.unwrap();
        store.set("deleted", b"v", ttl).await.unwrap();
        // A later SET without a TTL makes the value permanent, as in Redis.
        store.set("kept", b"old", ttl).await.unwrap();
        store.set("kept", b"new", None).await.unwrap();
        assert_eq!(store.get("short").await.unwrap(), Some(b"v".to_vec()));

        tokio::time::sleep(Duration::from_millis(450)).await;
        assert_eq!(store.get("short").await.unwrap(), None);
        assert_eq!(store.take("taken").await.unwrap(), None);
        assert!(!store.delete("deleted").await.unwrap());
        assert!(store.set_nx("claim", b"again", ttl).await.unwrap());
        assert_eq!(store.get("kept").await.unwrap(), Some(b"new".to_vec()));
    }

    pub async fn set_nx(store: Arc<dyn StateStore>) {
        assert!(store.set_nx("nonce", b"first", None).await.unwrap());
        assert!(!store.set_nx("nonce", b"second", None).await.unwrap());
        assert_eq!(store.get("nonce").await.unwrap(), Some(b"first".to_vec()));
        store.delete("nonce").await.unwrap();
        assert!(store.set_nx("nonce", b"third", None).await.unwrap());

        // Of many nodes racing for one claim, exactly one wins.
        let racers = (0..20).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.set_nx("race", &[i], None).await.unwrap() })
        });
        let winners = futures_count(racers).await;
        assert_eq!(winners, 1);
    }

    pub async fn take_is_once(store: Arc<dyn StateStore>) {
        assert_eq!(store.take("code").await.unwrap(), None);
        store.set("code", b"grant", None).await.unwrap();
        assert_eq!(store.take("code").await.unwrap(), Some(b"grant".to_vec()));
        assert_eq!(store.take("code").await.unwrap(), None);
        assert_eq!(store.get("code").await.unwrap(), None);

        // A one-time code redeemed concurrently is handed out once.
        store.set("code", b"grant", None).await.unwrap();
        let takers = (0..20).map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take("code").await.unwrap().is_some() })
        });
        assert_eq!(futures_count(takers).await, 1);
    }

    pub async fn hashes(store: Arc<dyn StateStore>) {
        assert_eq!(store.hget("keys", "d1").await.unwrap(), None);
        assert!(store.hgetall("keys").await.unwrap().is_empty());
        assert!(!store.hdel("keys", "d1").await.unwrap());

        store.hset("keys", "d2", b"two").await.unwrap();
        store.hset("keys", "d1", b"one").await.unwrap();
        store.hset("keys", "d3", &[0, 255]).await.unwrap();
        store.hset("keys", "d2", b"TWO").await.unwrap();
        assert_eq!(store.hget("keys", "d2").await.unwrap(), Some(b"TWO".to_vec()));
        assert_eq!(
            store.hgetall("keys").await.unwrap(),
            vec![
                ("d1".to_owned(), b"one".to_vec()),
                ("d2".to_owned(), b"TWO".to_vec()),
                ("d3".to_owned(), vec![0, 255]),
            ]
        );

        assert!(store.hdel("keys", "d1").await.unwrap());
        assert!(!store.hdel("keys", "d1").await.unwrap());
        assert_eq!(store.hget("keys", "d1").await.unwrap(), None);
        assert_eq!(store.hgetall("keys").await.unwrap().len(), 2);

        // Hash maps, values and counters are separate namespaces.
        store.set("keys", b"plain", None).await.unwrap();
        assert_eq!(store.get("keys").await.unwrap(), Some(b"plain".to_vec()));
        assert_eq!(store.hget("keys", "d2").await.unwrap(), Some(b"TWO".to_vec()));
        assert_eq!(store.hget("other", "d2").await.unwrap(), None);
    }

    pub async fn window_add_stops_at_the_limit(store: Arc<dyn StateStore>) {
        fresh_window(HOUR, Duration::from_secs(2)).await;
        let first = store.window_add("rpm", 4, 10, HOUR).await.unwrap();
        assert!(first.allowed);
        assert_eq!(first.total, 4);
        assert!(first.reset_after > Duration::ZERO && first.reset_after <= HOUR);
        let reset = left_in_window(HOUR);
        let skew = first.reset_after.abs_diff(reset);
        assert!(skew < Duration::from_millis(500), "reset_after off by {skew:?}");

        let exactly = store.window_add("rpm", 6, 10, HOUR).await.unwrap();
        assert!(exactly.allowed, "reaching the limit exactly is allowed");
        assert_eq!(exactly.total, 10);

        let over = store.window_add("rpm", 1, 10, HOUR).await.unwrap();
        assert!(!over.allowed);
        assert_eq!(over.total, 10, "a rejected add reports the current total");
        assert!(over.reset_after <= exactly.reset_after);
        assert_eq!(store.window_get("rpm", HOUR).await.unwrap(), 10);

        // A zero amount is always within a limit that is not yet exceeded; a huge one never is.
        assert!(store.window_add("rpm", 0, 10, HOUR).await.unwrap().allowed);
        let huge = store.window_add("rpm", u64::MAX, u64::MAX, HOUR).await;
        let huge = huge.unwrap();
        assert!(!huge.allowed, "amount and limit are clamped to 2^53 - 1");
        assert_eq!(huge.total, 10);

        // A rejected first add does not create a counter.
        let refused = store.window_add("tpm", 11, 10, HOUR).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.total, 0);
        assert_eq!(store.window_get("tpm", HOUR).await.unwrap(), 0);
    }

    pub async fn window_incr_may_exceed_the_limit(store: Arc<dyn StateStore>) {
        fresh_window(HOUR, Duration::from_secs(2)).await;
        assert_eq!(store.window_get("budget", HOUR).await.unwrap(), 0);
        assert!(store.window_add("budget", 8, 10, HOUR).await.unwrap().allowed);
        // Settling the real cost of a stream may go over the limit...
        assert_eq!(store.window_incr("budget", 7, HOUR).await.unwrap(), 15);
        assert_eq!(store.window_get("budget", HOUR).await.unwrap(), 15);
        // ...and then nothing more is admitted.
        let denied = store.window_add("budget", 1, 10, HOUR).await.unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.total, 15);
        // A refund brings it back under.
        assert_eq!(store.window_incr("budget", -7, HOUR).await.unwrap(), 8);
        let allowed = store.window_add("budget", 2, 10, HOUR).await.unwrap();
        assert!(allowed.allowed);
        assert_eq!(allowed.total, 10);

        // A counter refunded below zero reads as zero but keeps its exact value.
        assert_eq!(store.window_incr("refund", -5, HOUR).await.unwrap(), -5);
        assert_eq!(store.window_get("refund", HOUR).await.unwrap(), 0);
        assert_eq!(store.window_incr("refund", 6, HOUR).await.unwrap(), 1);
    }

    pub async fn window_rolls_over(store: Arc<dyn StateStore>) {
        let window = Duration::from_secs(1);
        fresh_window(window, Duration::from_millis(700)).await;
        assert!(store.window_add("rps", 3, 5, window).await.unwrap().allowed);
        let full = store.window_add("rps", 3, 5, window).await.unwrap();
        assert!(!full.allowed);
        assert_eq!(full.total, 3);
        assert!(full.reset_after > Duration::ZERO && full.reset_after <= window);

        tokio::time::sleep(full.reset_after + Duration::from_millis(30)).await;
        assert_eq!(store.window_get("rps", window).await.unwrap(), 0);
        let next = store.window_add("rps", 3, 5, window).await.unwrap();
        assert!(next.allowed, "a new window starts from zero");
        assert_eq!(next.total, 3);
    }

    pub async fn window_lengths_are_separate_counters(store: Arc<dyn StateStore>) {
        let minute = Duration::from_secs(60);
        fresh_window(minute, Duration::from_secs(2)).await;
        assert_eq!(store.window_incr("key", 5, minute).await.unwrap(), 5);
        assert_eq!(store.window_incr("key", 1, HOUR).await.unwrap(), 1);
        assert_eq!(store.window_get("key", minute).await.unwrap(), 5);
        assert_eq!(store.window_get("key", HOUR).await.unwrap(), 1);
        assert_eq!(store.window_get("other", minute).await.unwrap(), 0);
        // The same caller key as a plain value does not touch the counters.
        store.set("key", b"x", None).await.unwrap();
        assert_eq!(store.window_get("key", minute).await.unwrap(), 5);
    }

    pub async fn window_add_is_atomic_under_concurrency(store: Arc<dyn StateStore>) {
        fresh_window(HOUR, Duration::from_secs(2)).await;
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.window_add("burst", 1, 20, HOUR).await.unwrap() })
            })
            .collect();
        let mut totals = Vec::new();
        for task in tasks {
            let result = task.await.unwrap();
            if result.allowed {
                totals.push(result.total);
            } else {
                assert_eq!(result.total, 20);
            }
        }
        totals.sort_unstable();
        assert_eq!(totals, (1..=20).collect::<Vec<u64>>(), "each admission sees its own total");
        assert_eq!(store.window_get("burst", HOUR).await.unwrap(), 20);

        // Unconditional adds are exact too.
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.window_incr("settle", 3, HOUR).await.unwrap() })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.window_get("settle", HOUR).await.unwrap(), 150);
    }

    pub async fn window_apply_is_all_or_nothing(store: Arc<dyn StateStore>) {
        fresh_window(HOUR, Duration::from_secs(2)).await;
        // The second op is over its limit: the first, which would fit, is not applied either.
        let refused = store.window_apply(&[op("a", HOUR, 3, Some(10)), op("b", HOUR, 5, Some(4))]).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(passed(&refused), [true, false], "only the op over its limit is flagged");
        assert_eq!(totals(&refused), [0, 0]);
        assert_eq!(store.window_get("a", HOUR).await.unwrap(), 0);
        assert_eq!(store.window_get("b", HOUR).await.unwrap(), 0);

        // Fixed windows share their counters with window_add, window_incr and window_get.
        assert_eq!(store.window_incr("b", 2, HOUR).await.unwrap(), 2);
        let both = store.window_apply(&[op("a", HOUR, 3, Some(10)), op("b", HOUR, 2, Some(4))]).await.unwrap();
        assert!(both.allowed);
        assert_eq!(passed(&both), [true, true]);
        assert_eq!(totals(&both), [3, 4], "reaching a limit exactly is allowed");
        let skew = both.results[0].reset_after.abs_diff(left_in_window(HOUR));
        assert!(skew < Duration::from_millis(500), "reset_after off by {skew:?}");
        assert_eq!(store.window_get("a", HOUR).await.unwrap(), 3);

        // A refusal reports the current totals and changes nothing.
        let refused = store.window_apply(&[op("a", HOUR, 7, Some(10)), op("b", HOUR, 1, Some(4))]).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(passed(&refused), [true, false]);
        assert_eq!(totals(&refused), [3, 4]);
        let refused = store.window_apply(&[op("a", HOUR, 8, Some(10)), op("b", HOUR, 1, Some(4))]).await.unwrap();
        assert_eq!(passed(&refused), [false, false], "every op over its limit is flagged");
        assert_eq!(store.window_get("a", HOUR).await.unwrap(), 3);
        assert_eq!(store.window_get("b", HOUR).await.unwrap(), 4);

        // An amount of zero passes even on a counter already over its limit.
        assert_eq!(store.window_incr("b", 3, HOUR).await.unwrap(), 7);
        let zero = store.window_apply(&[op("a", HOUR, 7, Some(10)), op("b", HOUR, 0, Some(4))]).await.unwrap();
        assert!(zero.allowed);
        assert_eq!(totals(&zero), [10, 7]);
        // Different windows of one caller key are different counters.
        let day = store.window_apply(&[op("a", DAY, 1, Some(1))]).await.unwrap();
        assert!(day.allowed);
        assert_eq!(totals(&day), [1]);
    }

    pub async fn window_apply_refunds_and_unlimited_ops(store: Arc<dyn StateStore>) {
        fresh_window(HOUR, Duration::from_secs(2)).await;
        assert_eq!(totals(&store.window_apply(&[op("x", HOUR, 5, None)]).await.unwrap()), [5]);
        // Without a limit anything goes.
        let big = store.window_apply(&[op("x", HOUR, 100, None)]).await.unwrap();
        assert!(big.allowed);
        assert_eq!(totals(&big), [105]);
        // A refund is never refused, even below a limit it is over; totals never read negative,
        // but the counter keeps its exact value.
        let refund = store.window_apply(&[op("x", HOUR, -200, Some(1))]).await.unwrap();
        assert!(refund.allowed);
        assert_eq!(totals(&refund), [0]);
        assert_eq!(store.window_get("x", HOUR).await.unwrap(), 0);
        assert_eq!(store.window_incr("x", 0, HOUR).await.unwrap(), -95);
        let back = store.window_apply(&[op("x", HOUR, 96, Some(1))]).await.unwrap();
        assert!(back.allowed, "-95 + 96 is within 1");
        assert_eq!(totals(&back), [1]);

        // A refund in a refused batch is not applied either.
        let refused = store.window_apply(&[op("x", HOUR, -1, None), op("y", HOUR, 5, Some(1))]).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(passed(&refused), [true, false]);
        assert_eq!(store.window_get("x", HOUR).await.unwrap(), 1);

        // Amounts and limits clamp to 2^53 - 1, as in window_add.
        let max = (1u64 << 53) - 1;
        let clamped = store.window_apply(&[op("z", HOUR, i64::MAX, Some(u64::MAX))]).await.unwrap();
        assert!(clamped.allowed);
        assert_eq!(totals(&clamped), [max]);
        let over = store.window_apply(&[op("z", HOUR, 1, Some(u64::MAX))]).await.unwrap();
        assert!(!over.allowed);
        assert_eq!(totals(&over), [max]);
    }

    pub async fn window_apply_replays_into_kept_windows_only(store: Arc<dyn StateStore>) {
        let second = Duration::from_secs(1);
        fresh_window(second, Duration::from_millis(500)).await;
        let now = now_ms();
        // Three windows ago: over for 2 s already.
        let past = now - 3_000;
        let replay =
            |key: &str, amount, limit, keep| WindowOp { keep, at_ms: Some(past), ..op(key, second, amount, limit) };

        let kept = store.window_apply(&[replay("late", 4, None, Duration::from_secs(10))]).await.unwrap();
        assert!(kept.allowed);
        assert_eq!(totals(&kept), [4]);
        assert_eq!(kept.results[0].reset_after, Duration::ZERO, "that window has rolled over");
        // The limit of a replayed op is checked against its own window.
        let full = store.window_apply(&[replay("late", 1, Some(4), Duration::from_secs(10))]).await.unwrap();
        assert!(!full.allowed);
        assert_eq!(totals(&full), [4]);
        assert_eq!(store.window_get("late", second).await.unwrap(), 0, "not counted in the current window");

        // Kept for less than the time since its window ended: skipped, as if allowed, total 0.
        let gone = store
            .window_apply(&[replay("gone", 4, None, Duration::ZERO), replay("gone-too", 4, Some(1), second)])
            .await
            .unwrap();
        assert!(gone.allowed);
        assert_eq!(passed(&gone), [true, true]);
        assert_eq!(totals(&gone), [0, 0]);

        let back = (now / 1_000 - past / 1_000) as usize;
        let mut expected = vec![0; 6];
        expected[back] = 4;
        assert_eq!(store.window_history("late", second.into(), 6).await.unwrap(), expected);
        assert_eq!(store.window_history("gone", second.into(), 6).await.unwrap(), vec![0; 6]);
        assert_eq!(store.window_history("gone-too", second.into(), 6).await.unwrap(), vec![0; 6]);
    }

    pub async fn window_keep_lets_history_read_the_previous_window(store: Arc<dyn StateStore>) {
        let window = Duration::from_secs(1);
        let kept = |amount| WindowOp { keep: Duration::from_secs(2), ..op("h", window, amount, None) };
        fresh_window(window, Duration::from_millis(600)).await;
        let first = store.window_apply(&[kept(3)]).await.unwrap();
        assert_eq!(totals(&first), [3]);
        tokio::time::sleep(first.results[0].reset_after + Duration::from_millis(30)).await;
        assert_eq!(totals(&store.window_apply(&[kept(1)]).await.unwrap()), [1]);
        assert_eq!(store.window_history("h", window.into(), 3).await.unwrap(), [1, 3, 0]);
    }

    pub async fn window_apply_months(store: Arc<dyn StateStore>) {
        let month = Window::Month;
        let first = store.window_apply(&[op("spend", month, 5, Some(10))]).await.unwrap();
        assert!(first.allowed);
        assert_eq!(totals(&first), [5]);
        let reset = first.results[0].reset_after;
        assert!(reset > Duration::ZERO && reset <= 31 * DAY, "{reset:?}");
        assert!(reset.abs_diff(month.reset_after()) < Duration::from_secs(1));
        let over = store.window_apply(&[op("spend", month, 6, Some(10))]).await.unwrap();
        assert!(!over.allowed);
        assert_eq!(totals(&over), [5]);
        assert_eq!(store.window_history("spend", month, 3).await.unwrap(), [5, 0, 0]);
        // A month is not a fixed window of any length.
        assert_eq!(store.window_get("spend", 30 * DAY).await.unwrap(), 0);
        assert_eq!(store.window_get("spend", 31 * DAY).await.unwrap(), 0);

        // 40 days ago is one or two months back: kept for 90 days it still counts there, kept
        // for none it is skipped.
        let at_ms = Some(now_ms() - 40 * 86_400_000);
        let last = |key: &str, keep| WindowOp { keep, at_ms, ..op(key, month, 4, None) };
        let kept = store.window_apply(&[last("old", 90 * DAY), last("older", Duration::ZERO)]).await.unwrap();
        assert_eq!(totals(&kept), [4, 0]);
        let history = store.window_history("old", month, 3).await.unwrap();
        assert_eq!(history[0], 0, "{history:?}");
        assert_eq!(history.iter().sum::<u64>(), 4, "{history:?}");
        assert_eq!(store.window_history("older", month, 3).await.unwrap(), [0, 0, 0]);
    }

    pub async fn window_history_is_newest_first_and_zero_filled(store: Arc<dyn StateStore>) {
        let minute = Duration::from_secs(60);
        fresh_window(minute, Duration::from_secs(2)).await;
        let now = now_ms();
        for (back, amount) in [(0, 1), (2, 3), (3, 4)] {
            let ops = [WindowOp { keep: HOUR, at_ms: Some(now - back * 60_000), ..op("hist", minute, amount, None) }];
            assert_eq!(totals(&store.window_apply(&ops).await.unwrap()), [amount as u64]);
        }
        assert_eq!(store.window_history("hist", minute.into(), 6).await.unwrap(), [1, 0, 3, 4, 0, 0]);
        assert_eq!(store.window_history("hist", minute.into(), 1).await.unwrap(), [1]);
        assert!(store.window_history("hist", minute.into(), 0).await.unwrap().is_empty());
        assert_eq!(store.window_history("nobody", minute.into(), 2).await.unwrap(), [0, 0]);
        // A refund below zero reads as zero in history too.
        store.window_apply(&[op("negative", minute, -3, None)]).await.unwrap();
        assert_eq!(store.window_history("negative", minute.into(), 2).await.unwrap(), [0, 0]);
    }

    pub async fn window_apply_empty_batch(store: Arc<dyn StateStore>) {
        let applied = store.window_apply(&[]).await.unwrap();
        assert_eq!(applied, Applied { allowed: true, results: Vec::new() });
    }

    pub async fn window_apply_is_atomic_under_concurrency(store: Arc<dyn StateStore>) {
        fresh_window(HOUR, Duration::from_secs(2)).await;
        // Each request reserves on a tight hourly limit and a loose daily one: exactly ten pass,
        // and the refused ones leave no trace on the daily counter.
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.window_apply(&[op("rph", HOUR, 1, Some(10)), op("rpd", DAY, 1, Some(100))]).await.unwrap()
                })
            })
            .collect();
        let mut admitted = Vec::new();
        for task in tasks {
            let applied = task.await.unwrap();
            if applied.allowed {
                assert_eq!(totals(&applied)[0], totals(&applied)[1]);
                admitted.push(applied.results[0].total);
            } else {
                assert_eq!(passed(&applied), [false, true]);
                assert_eq!(applied.results[0].total, 10);
            }
        }
        admitted.sort_unstable();
        assert_eq!(admitted, (1..=10).collect::<Vec<u64>>(), "each admission sees its own total");
        assert_eq!(store.window_get("rph", HOUR).await.unwrap(), 10);
        assert_eq!(store.window_get("rpd", DAY).await.unwrap(), 10);
    }

    /// How many of the tasks returned true.
    async fn futures_count(tasks: impl Iterator<Item = tokio::task::JoinHandle<bool>>) -> usize {
        let tasks: Vec<_> = tasks.collect();
        let mut count = 0;
        for task in tasks {
            count += usize::from(task.await.unwrap());
        }
        count
    }
}

// ---- Redis only ----------------------------------------------------------------------------

fn redis_store(server: &RedisServer, prefix: &str, timeout: Duration) -> Arc<dyn StateStore> {
    Arc::new(RedisStore::new(&server.url(), prefix, timeout).expect("valid redis URL"))
}

/// A plain connection for looking under the store, at the keys as Redis holds them.
async fn raw_connection(server: &RedisServer) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(server.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn raw<T: ::redis::FromRedisValue>(connection: &mut ::redis::aio::MultiplexedConnection, args: &[&str]) -> T {
    let mut cmd = ::redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(connection).await.unwrap()
}

/// Runs `op` and checks that it failed as `Unavailable`, and promptly.
async fn assert_unavailable_within<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    op: impl Future<Output = Result<T, StateError>>,
) {
    let started = Instant::now();
    let result = op.await;
    let took = started.elapsed();
    assert!(matches!(result, Err(StateError::Unavailable(_))), "{what}: expected Unavailable, got {result:?}");
    assert!(took < timeout + SLACK, "{what}: took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_nodes_share_state() {
    let server = RedisServer::shared();
    let node_a = redis_store(&server, "t:nodes:", SUITE_TIMEOUT);
    let node_b = redis_store(&server, "t:nodes:", SUITE_TIMEOUT);

    node_a.set("session", b"s1", None).await.unwrap();
    assert_eq!(node_b.get("session").await.unwrap(), Some(b"s1".to_vec()));
    node_b.hset("vkeys", "digest", b"record").await.unwrap();
    assert_eq!(node_a.hgetall("vkeys").await.unwrap(), vec![("digest".to_owned(), b"record".to_vec())]);
    assert_eq!(node_b.take("session").await.unwrap(), Some(b"s1".to_vec()));
    assert_eq!(node_a.take("session").await.unwrap(), None);

    // Both nodes admitting from one budget at once never overshoot it together.
    fresh_window(HOUR, Duration::from_secs(2)).await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let node = (if i % 2 == 0 { &node_a } else { &node_b }).clone();
            tokio::spawn(async move { node.window_add("shared", 1, 20, HOUR).await.unwrap() })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        allowed += usize::from(task.await.unwrap().allowed);
    }
    assert_eq!(allowed, 20);
    assert_eq!(node_a.window_incr("shared", 5, HOUR).await.unwrap(), 25);
    assert_eq!(node_b.window_get("shared", HOUR).await.unwrap(), 25);

    // Another prefix is another deployment: nothing is shared.
    let other = redis_store(&server, "t:nodes-other:", SUITE_TIMEOUT);
    assert_eq!(other.hget("vkeys", "digest").await.unwrap(), None);
    assert_eq!(other.window_get("shared", HOUR).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_key_layout_and_window_expiry() {
    let server = RedisServer::shared();
    let store = redis_store(&server, "t:layout:", SUITE_TIMEOUT);
    let mut raw_conn = raw_connection(&server).await;

    store.set("v", b"1", None).await.unwrap();
    store.hset("m", "f", b"1").await.unwrap();
    assert_eq!(raw::<i64>(&mut raw_conn, &["EXISTS", "t:layout:k:v"]).await, 1);
    assert_eq!(raw::<i64>(&mut raw_conn, &["HEXISTS", "t:layout:h:m", "f"]).await, 1);
    store.set("ttl", b"1", Some(Duration::from_secs(30))).await.unwrap();
    let ttl: i64 = raw(&mut raw_conn, &["PTTL", "t:layout:k:ttl"]).await;
    assert!(ttl > 29_000 && ttl <= 30_000, "PTTL {ttl}");

    // A window counter is named after its window and expires with it, plus a margin.
    let window = Duration::from_secs(60);
    fresh_window(window, Duration::from_secs(2)).await;
    let result = store.window_add("rpm", 1, 5, window).await.unwrap();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let key = format!("t:layout:w:rpm:60000:{}", now_ms / 60_000);
    assert_eq!(raw::<Option<i64>>(&mut raw_conn, &["GET", &key]).await, Some(1));
    let ttl = Duration::from_millis(raw::<u64>(&mut raw_conn, &["PTTL", &key]).await);
    assert!(ttl > result.reset_after, "the counter outlives its window ({ttl:?})");
    assert!(ttl <= result.reset_after + Duration::from_secs(10), "PTTL {ttl:?}");
    store.window_incr("rpm", 1, window).await.unwrap();
    let ttl = raw::<i64>(&mut raw_conn, &["PTTL", &key]).await;
    assert!(ttl > 0, "window_incr keeps the expiry");
}

/// `window_apply` writes the documented keys, and each counter lives for the rest of its window
/// plus `keep` plus the margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_window_apply_key_layout_and_expiry() {
    let server = RedisServer::shared();
    let store = redis_store(&server, "t:apply-layout:", SUITE_TIMEOUT);
    let mut raw_conn = raw_connection(&server).await;
    let margin = Duration::from_secs(5);
    let slack = Duration::from_millis(500);

    let minute = Duration::from_secs(60);
    fresh_window(minute, Duration::from_secs(2)).await;
    let keep = Duration::from_secs(600);
    let ops = [WindowOp { keep, ..op("rpm", minute, 2, Some(5)) }, op("budget", Window::Month, 7, None)];
    let applied = store.window_apply(&ops).await.unwrap();
    assert!(applied.allowed);

    let key = format!("t:apply-layout:w:rpm:60000:{}", now_ms() / 60_000);
    assert_eq!(raw::<Option<i64>>(&mut raw_conn, &["GET", &key]).await, Some(2));
    let ttl = Duration::from_millis(raw::<u64>(&mut raw_conn, &["PTTL", &key]).await);
    let expected = applied.results[0].reset_after + keep + margin;
    assert!(ttl <= expected && ttl + slack > expected, "PTTL {ttl:?}, expected about {expected:?}");

    let months: Vec<String> = raw(&mut raw_conn, &["KEYS", "t:apply-layout:w:budget:*"]).await;
    assert_eq!(months.len(), 1, "{months:?}");
    let index: u64 = months[0].strip_prefix("t:apply-layout:w:budget:month:").expect("a month key").parse().unwrap();
    // Months since 1970-01, checked against the mean Gregorian month.
    let approx = now_ms() / 2_629_746_000;
    assert!(index.abs_diff(approx) <= 1, "month index {index}, about {approx}");
    assert_eq!(raw::<Option<i64>>(&mut raw_conn, &["GET", &months[0]]).await, Some(7));
    let ttl = Duration::from_millis(raw::<u64>(&mut raw_conn, &["PTTL", &months[0]]).await);
    let expected = applied.results[1].reset_after + margin;
    assert!(ttl <= expected && ttl + slack > expected, "PTTL {ttl:?}, expected about {expected:?}");

    // A refused batch creates no counter.
    let refused = store.window_apply(&[op("fresh", minute, 1, None), op("rpm", minute, 4, Some(5))]).await.unwrap();
    assert!(!refused.allowed);
    let fresh = format!("t:apply-layout:w:fresh:60000:{}", now_ms() / 60_000);
    assert_eq!(raw::<i64>(&mut raw_conn, &["EXISTS", &fresh]).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_window_apply_foreign_data_is_corrupt_and_changes_nothing() {
    let server = RedisServer::shared();
    let store = redis_store(&server, "t:apply-corrupt:", SUITE_TIMEOUT);
    let mut raw_conn = raw_connection(&server).await;

    let minute = Duration::from_secs(60);
    fresh_window(minute, Duration::from_secs(2)).await;
    let index = now_ms() / 60_000;
    let key = |name: &str| format!("t:apply-corrupt:w:{name}:60000:{index}");
    raw::<()>(&mut raw_conn, &["SET", &key("float"), "1.5"]).await;
    raw::<()>(&mut raw_conn, &["SET", &key("huge"), "9000000000000000000"]).await;
    raw::<()>(&mut raw_conn, &["HSET", &key("hash"), "f", "1"]).await;
    for bad in ["float", "huge", "hash"] {
        // The good op comes first: nothing of it may be written before the bad one is found.
        let ops = [op("good", minute, 1, None), op(bad, minute, 1, None)];
        let applied = store.window_apply(&ops).await;
        assert!(matches!(applied, Err(StateError::Corrupt(_))), "{bad}: {applied:?}");
        assert_eq!(raw::<i64>(&mut raw_conn, &["EXISTS", &key("good")]).await, 0, "{bad}");
    }
    let history = store.window_history("float", minute.into(), 2).await;
    assert!(matches!(history, Err(StateError::Corrupt(_))), "{history:?}");
    // MGET reads a key of another type as absent rather than failing, unlike GET.
    assert_eq!(store.window_history("hash", minute.into(), 2).await.unwrap(), [0, 0]);
    // A foreign value in a window never read is no concern.
    assert_eq!(store.window_history("good", minute.into(), 2).await.unwrap(), [0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_foreign_data_is_corrupt_not_unavailable() {
    let server = RedisServer::shared();
    let store = redis_store(&server, "t:corrupt:", SUITE_TIMEOUT);
    let mut raw_conn = raw_connection(&server).await;

    let window = Duration::from_secs(60);
    fresh_window(window, Duration::from_secs(2)).await;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let key = format!("t:corrupt:w:rpm:60000:{}", now_ms / 60_000);
    raw::<()>(&mut raw_conn, &["SET", &key, "not a number"]).await;
    let add = store.window_add("rpm", 1, 5, window).await;
    assert!(matches!(add, Err(StateError::Corrupt(_))), "{add:?}");
    let incr = store.window_incr("rpm", 1, window).await;
    assert!(matches!(incr, Err(StateError::Corrupt(_))), "{incr:?}");
    let get = store.window_get("rpm", window).await;
    assert!(matches!(get, Err(StateError::Corrupt(_))), "{get:?}");

    raw::<()>(&mut raw_conn, &["HSET", "t:corrupt:k:v", "f", "1"]).await;
    let value = store.get("v").await;
    assert!(matches!(value, Err(StateError::Corrupt(_))), "{value:?}");
    raw::<()>(&mut raw_conn, &["SET", "t:corrupt:h:m", "1"]).await;
    let map = store.hgetall("m").await;
    assert!(matches!(map, Err(StateError::Corrupt(_))), "{map:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_fails_fast_and_the_same_store_recovers() {
    let mut server = RedisServer::start();
    let store = redis_store(&server, "t:outage:", OUTAGE_TIMEOUT);
    store.set("before", b"1", None).await.unwrap();
    fresh_window(HOUR, Duration::from_secs(5)).await;
    assert!(store.window_add("rpm", 1, 5, HOUR).await.unwrap().allowed);

    server.stop();
    let t = OUTAGE_TIMEOUT;
    assert_unavailable_within("ping", t, store.ping()).await;
    assert_unavailable_within("get", t, store.get("before")).await;
    assert_unavailable_within("set", t, store.set("x", b"1", None)).await;
    assert_unavailable_within("take", t, store.take("x")).await;
    assert_unavailable_within("hgetall", t, store.hgetall("m")).await;
    assert_unavailable_within("window_add", t, store.window_add("rpm", 1, 5, HOUR)).await;
    assert_unavailable_within("window_incr", t, store.window_incr("rpm", 1, HOUR)).await;
    let batch = [op("rpm", HOUR, 1, Some(5))];
    assert_unavailable_within("window_apply", t, store.window_apply(&batch)).await;
    assert_unavailable_within("window_history", t, store.window_history("rpm", HOUR.into(), 24)).await;
    // Nothing to count needs no round trip: an empty batch, or replays of windows long gone.
    assert!(store.window_apply(&[]).await.unwrap().allowed);
    let gone = WindowOp { at_ms: Some(now_ms() - 2 * 3_600_000), ..op("rpm", HOUR, 1, None) };
    assert_eq!(totals(&store.window_apply(&[gone]).await.unwrap()), [0]);
    assert_eq!(store.window_history("rpm", HOUR.into(), 0).await.unwrap(), Vec::<u64>::new());

    // The very first operation after Redis is back succeeds: the store retries a refused
    // connection once instead of failing on the attempt made while Redis was down.
    server.restart();
    assert_eq!(store.get("before").await.unwrap(), None, "the new server is empty");
    // It has lost its script cache too, so this covers loading the script after NOSCRIPT.
    let result = store.window_add("rpm", 1, 5, HOUR).await.unwrap();
    assert!(result.allowed);
    assert_eq!(result.total, 1);
    let applied = store.window_apply(&batch).await.unwrap();
    assert_eq!(totals(&applied), [2], "the batch script is loaded again too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_hung_server_times_out_and_replies_stay_in_order() {
    let server = RedisServer::start();
    let store = redis_store(&server, "t:hung:", OUTAGE_TIMEOUT);
    store.set("a", b"A", None).await.unwrap();
    store.set("b", b"B", None).await.unwrap();

    server.pause();
    // Many requests at once while Redis hangs: each gives up on its own deadline.
    let started = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = if i % 2 == 0 { "a" } else { "b" };
                store.get(key).await
            })
        })
        .collect();
    for task in tasks {
        let result = task.await.unwrap();
        assert!(matches!(result, Err(StateError::Unavailable(_))), "{result:?}");
    }
    assert!(started.elapsed() < OUTAGE_TIMEOUT + SLACK);
    assert_unavailable_within("window_add", OUTAGE_TIMEOUT, store.window_add("w", 1, 5, HOUR)).await;

    server.resume();
    // Late replies to the abandoned requests must not be handed to new ones.
    for _ in 0..5 {
        assert_eq!(store.get("a").await.unwrap(), Some(b"A".to_vec()));
        assert_eq!(store.get("b").await.unwrap(), Some(b"B".to_vec()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_at_start_is_picked_up_later() {
    let mut server = RedisServer::start();
    server.stop();
    let store = redis_store(&server, "t:late:", OUTAGE_TIMEOUT);
    assert_unavailable_within("ping", OUTAGE_TIMEOUT, store.ping()).await;
    assert_unavailable_within("get", OUTAGE_TIMEOUT, store.get("k")).await;

    server.restart();
    store.set("k", b"v", None).await.unwrap();
    assert_eq!(store.get("k").await.unwrap(), Some(b"v".to_vec()));
}

/// Pingora builds its own tokio runtimes: the store is built outside any runtime, is used from
/// several, and keeps working when the runtime that first used it is gone.
#[test]
fn redis_store_works_across_runtimes() {
    let server = RedisServer::shared();
    let store = redis_store(&server, "t:runtimes:", SUITE_TIMEOUT);
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    let first = runtime();
    let second = runtime();
    first.block_on(store.set("k", b"1", None)).unwrap();
    second.block_on(store.set("k", b"2", None)).unwrap();
    assert_eq!(first.block_on(store.get("k")).unwrap(), Some(b"2".to_vec()));
    drop(first);
    assert_eq!(second.block_on(store.get("k")).unwrap(), Some(b"2".to_vec()));
    let third = runtime();
    assert_eq!(third.block_on(store.get("k")).unwrap(), Some(b"2".to_vec()));

    // Outside any runtime an operation fails at once instead of panicking.
    let mut outside = std::pin::pin!(store.get("k"));
    let polled = outside.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    assert!(matches!(polled, std::task::Poll::Ready(Err(StateError::Unavailable(_)))), "{polled:?}");
}

#[tokio::test]
async fn from_config_builds_the_named_backend() {
    let timeout = state::DEFAULT_OP_TIMEOUT;
    let memory = state::from_config("memory", "", "p:", timeout).unwrap();
    assert_eq!(memory.backend(), "memory");
    // Nothing listens on port 1: building a Redis store must not connect.
    let redis = state::from_config("redis", "redis://127.0.0.1:1/", "p:", timeout).unwrap();
    assert_eq!(redis.backend(), "redis");

    let unknown = state::from_config("etcd", "", "p:", timeout);
    assert!(matches!(unknown, Err(StateError::Config(_))));
    let bad_url = RedisStore::new("http://127.0.0.1:6379", "p:", timeout);
    assert!(matches!(bad_url, Err(StateError::Config(_))));
    let zero = RedisStore::new("redis://127.0.0.1:6379", "p:", Duration::ZERO);
    assert!(matches!(zero, Err(StateError::Config(_))));
}
