//! A real `redis-server` on a free loopback port, killed on drop.
//!
//! Tests use the real server rather than a fake so that scripts, expiry and reconnects behave as
//! in production. It can be stopped, restarted on the same port and paused, to test outages.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use super::{free_port, wait_until};

/// The installed server binary, looked up on `PATH`.
const BINARY: &str = "redis-server";

/// One `redis-server` process, with persistence off so it never writes files.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    pub fn start() -> Self {
        // A free port can be taken by someone else before the server binds it; try a few.
        for _ in 0..3 {
            let mut server = Self::not_started(free_port());
            if server.try_spawn() {
                return server;
            }
        }
        panic!("redis-server failed to start on three different ports; see the logs above");
    }

    /// A server shared by every test of the binary that runs while another holds it, so a suite
    /// pays for one start. It is killed when the last holder drops it (a static would never be
    /// dropped and would leak the process). Give each test its own key prefix.
    pub fn shared() -> Arc<Self> {
        static SHARED: Mutex<Weak<RedisServer>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(Self::start());
        *shared = Arc::downgrade(&server);
        server
    }

    /// The port the server listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL for clients, the same across restarts.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server abruptly (SIGKILL), as a crash or a lost host would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty, and waits until it answers `PING`.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.try_spawn(), "redis-server did not restart on port {}", self.port);
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, as with a hung
    /// host or a network partition.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Undoes [`pause`](Self::pause).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn not_started(port: u16) -> Self {
        let log = std::env::temp_dir().join(format!("portcullis-test-redis-{}-{port}.log", std::process::id()));
        Self { port, child: None, log }
    }

    /// Spawns the process and waits for `PING`; false when it exited (e.g. the port was taken).
    fn try_spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = std::env::temp_dir();
        let spawned = Command::new(BINARY)
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{BINARY}` was not found on PATH. The Redis tests need a real server: install \
                 it with `apt-get install redis-server`"
            ),
            Err(err) => panic!("could not run `{BINARY}`: {err}"),
        };
        let child = self.child.insert(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let mut exited = false;
        wait_until("redis-server to answer PING", Duration::from_secs(10), || {
            exited = matches!(child.try_wait(), Ok(Some(_)));
            exited || answers_ping(addr)
        });
        if exited {
            self.child = None;
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("redis-server on port {} exited at start:\n{log}", self.port);
        }
        !exited
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .expect("could not run `kill`");
        assert!(status.success(), "kill -{signal} failed");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Speaks just enough RESP to see whether the server is up.
fn answers_ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
