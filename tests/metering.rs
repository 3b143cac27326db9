//! Budgets and rate limits across a fleet: gateway binaries sharing one real Redis enforce one
//! total, and through a Redis outage a node failing open enforces the limits on its own counters
//! and replays them into Redis when it returns, while a node failing closed answers 503.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::gateway::Gateway;
use support::redis::RedisServer;

const SHARED_KEY: &str = "pc-metering-shared";
const OUTAGE_KEY: &str = "pc-metering-outage";
const UNLIMITED_KEY: &str = "pc-metering-unlimited";

fn sha256_hex(s: &str) -> String {
    hex::encode(filters::auth::sha256(s.as_bytes()))
}

fn audit_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("portcullis-metering-audit-{name}-{}.jsonl", std::process::id()))
}

fn node(name: &str, redis_port: u16, mode: &str) -> Gateway {
    let audit = audit_path(name);
    let _ = std::fs::remove_file(&audit);
    let config = format!(
        "[audit]\npath = \"{}\"\n\n[state]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{redis_port}/0\"\n\
         on_redis_error = \"{mode}\"\nkey_prefix = \"t:metering:\"\nop_timeout_ms = 300\n\n\
         [providers.mock]\nkind = \"mock\"\nmodels = [\"echo\"]\n\n\
         [pricing]\n\"mock:*\" = {{ input = 1.0, output = 2.0 }}\n\n\
         [[auth.virtual_keys]]\nname = \"shared\"\nkey_sha256 = \"{}\"\nproviders = [\"mock\"]\n\
         limits = [{{ window = \"hour\", requests = 4 }}, {{ window = \"month\", cost_usd = 10.0 }}]\n\n\
         [[auth.virtual_keys]]\nname = \"outage\"\nkey_sha256 = \"{}\"\nproviders = [\"mock\"]\n\
         limits = [{{ window = \"hour\", requests = 3 }}]\n\n\
         [[auth.virtual_keys]]\nname = \"unlimited\"\nkey_sha256 = \"{}\"\nproviders = [\"mock\"]\n",
        audit.display(),
        sha256_hex(SHARED_KEY),
        sha256_hex(OUTAGE_KEY),
        sha256_hex(UNLIMITED_KEY),
    );
    Gateway::start(&format!("metering-{name}"), &config)
}

/// Hour windows are aligned to the clock; a test that fills one must not straddle its end.
fn wait_for_fresh_hour() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
    let left = 3600.0 - now % 3600.0;
    if left < 60.0 {
        std::thread::sleep(Duration::from_secs_f64(left + 0.2));
    }
}

/// `/v1/usage`, polled until `done` holds: each node writes its usage history every 5 s (a
/// node's own report includes its own at once), so another node's shows within that.
fn usage_until(gw: &Gateway, key: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut body = serde_json::Value::Null;
    support::wait_until("usage to be settled", Duration::from_secs(12), || {
        let a = gw.request("GET", "/v1/usage", Some(key), "");
        body = a.json();
        a.status == 200 && done(&body)
    });
    body
}

#[test]
fn two_nodes_enforce_one_total() {
    let redis = RedisServer::start();
    let (a, b) = (node("a", redis.port(), "fail_closed"), node("b", redis.port(), "fail_closed"));
    wait_for_fresh_hour();
    let mut remaining = Vec::new();
    for gw in [&a, &b, &a, &b] {
        let answer = gw.chat(SHARED_KEY);
        assert_eq!(answer.status, 200, "{}", answer.body);
        remaining.push(answer.header("x-ratelimit-remaining-requests").unwrap_or("?").to_string());
    }
    assert_eq!(remaining, ["3", "2", "1", "0"], "one counter for both nodes");
    for gw in [&a, &b] {
        let refused = gw.chat(SHARED_KEY);
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(refused.json()["error"]["code"], "rate_limit_exceeded");
        let wait: u64 = refused.header("retry-after").and_then(|v| v.parse().ok()).expect("retry-after");
        assert!((1..=3600).contains(&wait), "{wait}");
    }
    // Usage recorded by either node is seen from the other.
    let usage = usage_until(&b, SHARED_KEY, |u| u["usage"]["last24h"]["requestCount"] == 4);
    let cost = usage["usage"]["last24h"]["costUsd"].as_f64().expect("cost");
    assert!(cost > 0.0, "{usage}");
    let budget = &usage["budgets"][0];
    assert_eq!(budget["window"], "month");
    assert!((budget["spentCostUsd"].as_f64().expect("spent") - cost).abs() < 1e-9, "{usage}");
    let limit = &usage["rateLimits"][0];
    assert_eq!((limit["maxRequests"].as_u64(), limit["requests"].as_u64()), (Some(4), Some(4)), "{usage}");
}

#[test]
fn a_graceful_stop_writes_the_nodes_usage_history() {
    let redis = RedisServer::start();
    wait_for_fresh_hour();
    let mut a = node("stop-a", redis.port(), "fail_closed");
    for _ in 0..2 {
        assert_eq!(a.chat(UNLIMITED_KEY).status, 200);
    }
    // Well within the 5 s between flushes: only the flush at shutdown can have written these.
    a.terminate();
    let b = node("stop-b", redis.port(), "fail_closed");
    let usage = b.request("GET", "/v1/usage", Some(UNLIMITED_KEY), "").json();
    assert_eq!(usage["usage"]["last24h"]["requestCount"], 2, "{usage}");
}

#[test]
fn limits_through_a_redis_outage() {
    let mut redis = RedisServer::start();
    let open = node("open", redis.port(), "fail_open");
    let closed = node("closed", redis.port(), "fail_closed");
    wait_for_fresh_hour();
    assert_eq!(open.chat(UNLIMITED_KEY).status, 200);

    redis.stop();
    // Failing open: the limit holds on the node's own counters.
    for i in 0..3 {
        let answer = open.chat(OUTAGE_KEY);
        assert_eq!(answer.status, 200, "request {i} during the outage: {}", answer.body);
    }
    let refused = open.chat(OUTAGE_KEY);
    assert_eq!(refused.status, 429, "{}", refused.body);
    // Failing closed: a limited key cannot be checked, so 503; an unlimited one is served.
    let answer = closed.chat(OUTAGE_KEY);
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(answer.json()["error"]["code"], "state_unavailable");
    assert_eq!(closed.chat(UNLIMITED_KEY).status, 200);

    // Redis returns empty (a new server): what the open node counted is replayed into it, so
    // the fleet's total includes the outage and the limit still binds, on every node.
    redis.restart();
    std::thread::sleep(Duration::from_millis(1_200));
    let after = open.chat(OUTAGE_KEY);
    assert_eq!(after.status, 429, "the outage's requests count after it: {}", after.body);
    let refused = closed.chat(OUTAGE_KEY);
    assert_eq!(refused.status, 429, "the other node sees the replayed total: {}", refused.body);
    let usage = usage_until(&closed, OUTAGE_KEY, |u| u["usage"]["last24h"]["requestCount"] == 3);
    assert_eq!(usage["rateLimits"][0]["requests"], 3, "{usage}");
}

#[test]
fn stored_keys_take_limits_from_the_cli() {
    let redis = RedisServer::start();
    let gw = node("cli", redis.port(), "fail_closed");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keys", "create", "--name", "ci-bot", "--providers", "mock", "--limit", "hour:requests=2"])
        .args(["--limit", "day:cost_usd=1", "--config"])
        .arg(&gw.config_path)
        .output()
        .expect("run keys create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).expect("utf-8").trim().to_string();
    let listed = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keys", "list", "--config"])
        .arg(&gw.config_path)
        .output()
        .expect("run keys list");
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.contains("limits=hour:requests=2,day:cost_usd=1"), "{listed}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["keys", "create", "--name", "x", "--providers", "mock", "--limit", "week:requests=1", "--config"])
        .arg(&gw.config_path)
        .output()
        .expect("run keys create");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("minute, hour, day or month"));
    // The admin change is in the audit trail, and the trail verifies.
    let trail = std::fs::read_to_string(audit_path("cli")).expect("audit trail");
    assert!(trail.contains(r#""event":"key_created""#) && trail.contains("ci-bot"), "{trail}");
    assert!(!trail.contains(&key), "the new key itself must not be in the trail");
    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "verify", "--config"])
        .arg(&gw.config_path)
        .output()
        .expect("run audit verify");
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));

    wait_for_fresh_hour();
    assert_eq!(gw.chat(&key).status, 200);
    assert_eq!(gw.chat(&key).status, 200);
    let refused = gw.chat(&key);
    assert_eq!(refused.status, 429, "{}", refused.body);
    assert!(refused.body.contains("ci-bot"), "the message names the key, not its id: {}", refused.body);
    let usage = usage_until(&gw, &key, |u| u["usage"]["last24h"]["requestCount"] == 2);
    assert_eq!(usage["principal"], "ci-bot");
    assert_eq!(usage["budgets"][0]["maxCostUsd"], 1.0);
}
