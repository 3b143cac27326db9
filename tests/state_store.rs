//! One behaviour suite run against every `StateStore` backend, so that the memory store used in
//! development cannot drift from the Redis store used in production; then what only Redis can
//! show: several nodes sharing state, the key layout, and surviving outages.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use portcullis::state::{self, MemoryStore, RedisStore, StateError, StateStore};
use support::redis::RedisServer;

/// Generous, because the suite is not about timeouts and CI machines stall.
const SUITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Short, because the outage tests measure that operations give up about this quickly.
const OUTAGE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long past the operation timeout a failing operation may take before it counts as hanging.
const SLACK: Duration = Duration::from_millis(700);
const HOUR: Duration = Duration::from_secs(3600);

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

    // The very first operation after Redis is back succeeds: the store retries a refused
    // connection once instead of failing on the attempt made while Redis was down.
    server.restart();
    assert_eq!(store.get("before").await.unwrap(), None, "the new server is empty");
    // It has lost its script cache too, so this covers loading the script after NOSCRIPT.
    let result = store.window_add("rpm", 1, 5, HOUR).await.unwrap();
    assert!(result.allowed);
    assert_eq!(result.total, 1);
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
