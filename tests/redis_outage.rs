//! The gateway binary through a Redis outage, for both `on_redis_error` modes: stored keys are
//! looked up in Redis, Redis is stopped, and what each node answers is checked over HTTP.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portcullis::state::{RedisStore, StateStore};
use support::redis::RedisServer;

const PREFIX: &str = "t:outage-gw:";
/// Past `keys::CACHE_TTL`, so lookups go to the store again.
const CACHE_EXPIRY: Duration = Duration::from_millis(5_300);

struct Gateway {
    child: Child,
    port: u16,
}

impl Gateway {
    fn start(redis_port: u16, mode: &str) -> Gateway {
        let (port, admin) = (support::free_port(), support::free_port());
        let dir = std::env::temp_dir().join(format!("portcullis-outage-{mode}-{port}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nthreads = 1\n\n\
                 [state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/0\"\n\
                 on_redis_error = \"{mode}\"\nkey_prefix = \"{PREFIX}\"\nop_timeout_ms = 300\n\n\
                 [providers.mock]\nkind = \"mock\"\nmodels = [\"echo\"]\n"
            ),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start portcullis");
        support::wait_until("the gateway to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Gateway { child, port }
    }

    /// One request on a fresh connection: (status, body).
    fn call(&self, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    fn chat(&self, key: &str) -> (u16, String) {
        self.call(
            "POST",
            "/v1/chat/completions",
            Some(key),
            r#"{"model":"mock:echo","messages":[{"role":"user","content":"hi"}]}"#,
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn stored_keys_through_a_redis_outage() {
    let mut redis = RedisServer::start();
    let store = RedisStore::new(&redis.url(), PREFIX, Duration::from_secs(2)).expect("redis url");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (key, _) = rt
        .block_on(portcullis::keys::create(&store, "outage", vec!["default".into()], vec!["mock".into()]))
        .expect("create key");
    let never_seen = format!("pc-{}", "a".repeat(64));

    let open = Gateway::start(redis.port(), "fail_open");
    let closed = Gateway::start(redis.port(), "fail_closed");
    for gw in [&open, &closed] {
        let (status, body) = gw.chat(&key);
        assert_eq!(status, 200, "before the outage: {body}");
        assert_eq!(gw.call("GET", "/ready", None, "").0, 200);
    }

    redis.stop();
    assert!(rt.block_on(store.ping()).is_err(), "redis is down");
    std::thread::sleep(CACHE_EXPIRY);

    // Failing open: the key seen before the outage keeps working, a key never seen is "retry
    // later" (not "wrong key"), and the node stays in the load balancer.
    let (status, body) = open.chat(&key);
    assert_eq!(status, 200, "{body}");
    let (status, body) = open.chat(&never_seen);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state_unavailable"), "{body}");
    let (status, body) = open.call("GET", "/ready", None, "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("unavailable"), "{body}");

    // Failing closed: 503 for stored keys and for readiness.
    let (status, body) = closed.chat(&key);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("state_unavailable"), "{body}");
    assert_eq!(closed.call("GET", "/ready", None, "").0, 503);

    // Back to normal once Redis returns (a new, empty server: the key is gone, so 401).
    redis.restart();
    std::thread::sleep(CACHE_EXPIRY);
    for gw in [&open, &closed] {
        assert_eq!(gw.call("GET", "/ready", None, "").0, 200);
        assert_eq!(gw.chat(&key).0, 401);
    }
}
