//! The Redis backend: state shared by every gateway node that points at the same Redis.
//!
//! Operations run on a multiplexed [`ConnectionManager`], which reconnects by itself after an
//! outage. Its I/O task lives on the tokio runtime that first drives it, and Pingora builds its
//! own runtimes inside `run()` (one per service, or one per thread without work stealing), so a
//! connection made in `main`, or on whichever runtime happened to come first, could be left
//! behind on a runtime that is gone. The store therefore keeps one manager per runtime that uses
//! it, created on that runtime's first operation: nothing connects in the constructor, each
//! runtime's traffic stays on its own threads, and a Redis that was down at start is picked up
//! once it answers. Every operation is bounded by the configured timeout, so a dead or stalled
//! Redis turns into a prompt [`StateError::Unavailable`] instead of requests hanging.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Cmd, ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind, Value};
use tokio::runtime::{self, Handle};

use super::{
    applied, clamp_counter, history_totals, millis, plan, reported_total, ttl_millis, Applied, Keys, StateError,
    StateStore, Window, WindowOp, WindowResult, WindowSlot,
};

/// A [`StateStore`] in Redis (6.2 or later, for `GETDEL`), shared by every node using the same
/// URL and prefix.
pub struct RedisStore {
    client: Client,
    keys: Keys,
    op_timeout: Duration,
    /// One connection per runtime, made by the runtime's first operation; see the module docs.
    /// A runtime's entry outlives the runtime, which is harmless: Pingora's runtimes live as
    /// long as the process, and a dead runtime's connection was closed when its tasks dropped.
    connections: RwLock<HashMap<runtime::Id, ConnectionManager>>,
    /// Sent as `EVALSHA`, falling back to loading the script when Redis does not know it (first
    /// use, or after Redis restarted and lost its script cache).
    window_add: Script,
    /// The batch script of `window_apply`, sent the same way.
    window_apply: Script,
}

impl RedisStore {
    /// Checks `url` (`redis://[user:password@]host[:port][/db]`) without connecting, so a typo
    /// stops start-up while a Redis that is merely down does not: it is picked up once it
    /// answers. `op_timeout` bounds every operation, connecting included.
    pub fn new(url: &str, prefix: &str, op_timeout: Duration) -> Result<Self, StateError> {
        if op_timeout.is_zero() {
            return Err(StateError::Config("the redis operation timeout must be greater than zero".to_owned()));
        }
        // The error names what is wrong without echoing the URL, which may hold a password.
        let client = Client::open(url).map_err(|err| StateError::Config(format!("invalid redis URL: {err}")))?;
        Ok(Self {
            client,
            keys: Keys::new(prefix),
            op_timeout,
            connections: RwLock::new(HashMap::new()),
            window_add: Script::new(include_str!("lua/window_add.lua")),
            window_apply: Script::new(include_str!("lua/window_apply.lua")),
        })
    }

    /// The connection manager of the calling runtime, created on its first use there. Creating
    /// it does not connect: the manager connects when the first command needs it and reconnects
    /// after failures, each attempt bounded by the operation timeout.
    fn connection(&self, runtime: runtime::Id) -> Result<ConnectionManager, StateError> {
        let known = self.connections.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(manager) = known.get(&runtime) {
            return Ok(manager.clone());
        }
        drop(known);
        let mut known = self.connections.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(manager) = known.get(&runtime) {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            .set_response_timeout(Some(self.op_timeout))
            // No retry loop with back-off inside the manager: a failed attempt fails the
            // operation waiting on it and the next operation starts a fresh attempt, so a
            // restarted Redis is used as soon as it answers.
            .set_number_of_retries(0);
        let manager = self
            .client
            .get_connection_manager_lazy(config)
            .map_err(|err| StateError::Unavailable(format!("connecting: {err}")))?;
        known.insert(runtime, manager.clone());
        Ok(manager)
    }

    /// Runs one round trip on the calling runtime's connection under the operation timeout and
    /// converts the reply, keeping "Redis is not answering" apart from "Redis answered nonsense".
    ///
    /// A refused connection is retried once within the timeout: the command cannot have reached
    /// Redis, and the manager has just started a fresh connection attempt, so the first
    /// operation after Redis comes back succeeds instead of failing on the stale attempt.
    async fn run<T, F, Fut>(&self, what: &str, round_trip: F) -> Result<T, StateError>
    where
        T: FromRedisValue,
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<Value, RedisError>>,
    {
        // Checked first, because the timeout below would panic outside a runtime.
        let runtime =
            Handle::try_current().map_err(|_| StateError::Unavailable(format!("{what}: not on a tokio runtime")))?.id();
        let attempt = async {
            let connection = self.connection(runtime)?;
            let reply = match round_trip(connection.clone()).await {
                Err(err) if err.is_connection_refusal() => round_trip(connection).await,
                reply => reply,
            };
            ::redis::from_redis_value::<T>(reply.map_err(|err| classify(what, err))?)
                .map_err(|err| StateError::Corrupt(format!("{what}: unexpected reply: {err}")))
        };
        match tokio::time::timeout(self.op_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StateError::Unavailable(format!("{what}: no reply from redis within {:?}", self.op_timeout))),
        }
    }

    /// Runs one command; see [`run`](Self::run).
    async fn query<T: FromRedisValue>(&self, what: &str, cmd: Cmd) -> Result<T, StateError> {
        let cmd = &cmd;
        self.run(what, |mut connection| async move { cmd.query_async(&mut connection).await }).await
    }
}

/// `SET key value [NX] [PX ttl]`.
fn set_command(key: String, value: &[u8], ttl: Option<Duration>, only_if_absent: bool) -> Cmd {
    let mut cmd = ::redis::cmd("SET");
    cmd.arg(key).arg(value);
    if only_if_absent {
        cmd.arg("NX");
    }
    if let Some(ttl) = ttl {
        cmd.arg("PX").arg(ttl_millis(ttl));
    }
    cmd
}

fn command(name: &str, args: &[&str]) -> Cmd {
    let mut cmd = ::redis::cmd(name);
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

/// Errors where Redis answered but the data is not what this code writes are `Corrupt`;
/// everything else (I/O, timeouts, `LOADING`, `OOM`, failover, authentication) means the store is
/// not usable right now and is `Unavailable`.
fn classify(what: &str, err: RedisError) -> StateError {
    let bad_data =
        matches!(err.kind(), ErrorKind::UnexpectedReturnType | ErrorKind::Server(ServerErrorKind::ResponseError))
            || err.code() == Some("WRONGTYPE");
    if bad_data {
        StateError::Corrupt(format!("{what}: {err}"))
    } else {
        StateError::Unavailable(format!("{what}: {err}"))
    }
}

#[async_trait::async_trait]
impl StateStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.query::<String>("PING", ::redis::cmd("PING")).await.map(drop)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let key = self.keys.value(key);
        self.query("GET", command("GET", &[&key])).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StateError> {
        let cmd = set_command(self.keys.value(key), value, ttl, false);
        self.query("SET", cmd).await
    }

    async fn set_nx(&self, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<bool, StateError> {
        let cmd = set_command(self.keys.value(key), value, ttl, true);
        // `OK` when created, nil when the key already existed.
        let reply: Option<String> = self.query("SET NX", cmd).await?;
        Ok(reply.is_some())
    }

    async fn delete(&self, key: &str) -> Result<bool, StateError> {
        let key = self.keys.value(key);
        let removed: u64 = self.query("DEL", command("DEL", &[&key])).await?;
        Ok(removed > 0)
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let key = self.keys.value(key);
        self.query("GETDEL", command("GETDEL", &[&key])).await
    }

    async fn hset(&self, map: &str, field: &str, value: &[u8]) -> Result<(), StateError> {
        let mut cmd = command("HSET", &[&self.keys.map(map), field]);
        cmd.arg(value);
        self.query("HSET", cmd).await
    }

    async fn hget(&self, map: &str, field: &str) -> Result<Option<Vec<u8>>, StateError> {
        let map = self.keys.map(map);
        self.query("HGET", command("HGET", &[&map, field])).await
    }

    async fn hdel(&self, map: &str, field: &str) -> Result<bool, StateError> {
        let map = self.keys.map(map);
        let removed: u64 = self.query("HDEL", command("HDEL", &[&map, field])).await?;
        Ok(removed > 0)
    }

    async fn hgetall(&self, map: &str) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let map = self.keys.map(map);
        let mut all: Vec<(String, Vec<u8>)> = self.query("HGETALL", command("HGETALL", &[&map])).await?;
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
        let mut invocation = self.window_add.prepare_invoke();
        invocation
            .key(self.keys.window(key, &slot))
            .arg(clamp_counter(amount))
            .arg(clamp_counter(limit))
            .arg(millis(slot.expiry()));
        let invocation = &invocation;
        let (allowed, total): (i64, i64) = self
            .run("window_add", |mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        Ok(WindowResult { allowed: allowed == 1, total: reported_total(total), reset_after: slot.reset_after })
    }

    async fn window_incr(&self, key: &str, amount: i64, window: Duration) -> Result<i64, StateError> {
        let slot = WindowSlot::now(window);
        let key = self.keys.window(key, &slot);
        // MULTI/EXEC so that the counter never exists without its expiry.
        let mut pipe = ::redis::pipe();
        pipe.atomic().cmd("INCRBY").arg(&key).arg(amount).cmd("PEXPIRE").arg(&key).arg(millis(slot.expiry())).ignore();
        let pipe = &pipe;
        let (total,): (i64,) =
            self.run("window_incr", |mut connection| async move { pipe.query_async(&mut connection).await }).await?;
        Ok(total)
    }

    async fn window_get(&self, key: &str, window: Duration) -> Result<u64, StateError> {
        let key = self.keys.window(key, &WindowSlot::now(window));
        let total: Option<i64> = self.query("GET", command("GET", &[&key])).await?;
        Ok(total.map_or(0, reported_total))
    }

    async fn window_apply(&self, ops: &[WindowOp]) -> Result<Applied, StateError> {
        let planned = plan(&self.keys, ops);
        let sent: Vec<_> = planned.iter().flatten().collect();
        // Nothing to count (an empty batch, or only replays of windows long gone): no round trip.
        if sent.is_empty() {
            return applied(&planned, Vec::new());
        }
        let mut invocation = self.window_apply.prepare_invoke();
        for op in &sent {
            invocation.key(&op.key).arg(op.amount).arg(op.limit.unwrap_or(-1)).arg(millis(op.ttl));
        }
        let invocation = &invocation;
        let reply: Vec<i64> = self
            .run("window_apply", |mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        if reply.len() != 2 * sent.len() {
            return Err(StateError::Corrupt(format!(
                "window_apply: {} values in the reply for {} counters",
                reply.len(),
                sent.len()
            )));
        }
        let outcomes = reply.chunks_exact(2).map(|pair| (pair[0] == 1, pair[1])).collect();
        applied(&planned, outcomes)
    }

    async fn window_history(&self, key: &str, window: Window, count: usize) -> Result<Vec<u64>, StateError> {
        let keys = self.keys.history(key, window, count);
        if keys.is_empty() {
            return Ok(vec![0; count]);
        }
        // One MGET for all windows. A non-integer string is `Corrupt` as with GET, but MGET
        // reads a key of another type (a hash someone wrote there) as absent, so it counts 0.
        let mut cmd = ::redis::cmd("MGET");
        cmd.arg(&keys);
        let read: Vec<Option<i64>> = self.query("MGET", cmd).await?;
        if read.len() != keys.len() {
            return Err(StateError::Corrupt(format!("MGET: {} values for {} keys", read.len(), keys.len())));
        }
        Ok(history_totals(read, count))
    }
}
