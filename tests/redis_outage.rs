//! The gateway binary through a Redis outage, for both `on_redis_error` modes: stored keys are
//! looked up in Redis, Redis is stopped, and what each node answers is checked over HTTP.

mod support;

use std::time::Duration;

use portcullis::state::{RedisStore, StateStore};
use support::gateway::Gateway;
use support::redis::RedisServer;

const PREFIX: &str = "t:outage-gw:";
/// Past `keys::CACHE_TTL`, so lookups go to the store again.
const CACHE_EXPIRY: Duration = Duration::from_millis(5_300);

fn start(redis_port: u16, mode: &str) -> Gateway {
    Gateway::start(
        &format!("outage-{mode}"),
        &format!(
            "[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/0\"\n\
             on_redis_error = \"{mode}\"\nkey_prefix = \"{PREFIX}\"\nop_timeout_ms = 300\n\n\
             [providers.mock]\nkind = \"mock\"\nmodels = [\"echo\"]\n"
        ),
    )
}

/// (status, body) of a request without credentials.
fn open_call(gw: &Gateway, path: &str) -> (u16, String) {
    let a = gw.request("GET", path, None, "");
    (a.status, a.body)
}

/// (status, body) of a chat completion.
fn chat(gw: &Gateway, key: &str) -> (u16, String) {
    let a = gw.chat(key);
    (a.status, a.body)
}

#[test]
fn stored_keys_through_a_redis_outage() {
    let mut redis = RedisServer::start();
    let store = RedisStore::new(&redis.url(), PREFIX, Duration::from_secs(2)).expect("redis url");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let grants = portcullis::keys::Grants {
        proxies: vec!["default".into()],
        providers: vec!["mock".into()],
        ..Default::default()
    };
    let (key, _) = rt.block_on(portcullis::keys::create(&store, "outage", grants)).expect("create key");
    let never_seen = format!("pc-{}", "a".repeat(64));

    let open = start(redis.port(), "fail_open");
    let closed = start(redis.port(), "fail_closed");
    for gw in [&open, &closed] {
        let (status, body) = chat(gw, &key);
        assert_eq!(status, 200, "before the outage: {body}");
        assert_eq!(open_call(gw, "/ready").0, 200);
    }

    redis.stop();
    assert!(rt.block_on(store.ping()).is_err(), "redis is down");
    std::thread::sleep(CACHE_EXPIRY);

    // Failing open: the key seen before the outage keeps working, a key never seen is "retry
    // later" (not "wrong key"), and the node stays in the load balancer.
    let (status, body) = chat(&open, &key);
    assert_eq!(status, 200, "{body}");
    let (status, body) = chat(&open, &never_seen);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state_unavailable"), "{body}");
    let (status, body) = open_call(&open, "/ready");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("unavailable"), "{body}");

    // Failing closed: 503 for stored keys and for readiness.
    let (status, body) = chat(&closed, &key);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state_unavailable"), "{body}");
    assert_eq!(open_call(&closed, "/ready").0, 503);

    // Back to normal once Redis returns (a new, empty server: the key is gone, so 401).
    redis.restart();
    std::thread::sleep(CACHE_EXPIRY);
    for gw in [&open, &closed] {
        assert_eq!(open_call(gw, "/ready").0, 200);
        assert_eq!(chat(gw, &key).0, 401);
    }
}
