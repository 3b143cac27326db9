//! The `portcullis` binary started on free ports with a config written for one test, and raw
//! HTTP/1.1 requests to it (one connection each, so every answer stands alone).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Gateway {
    child: Child,
    pub port: u16,
    /// The config file it runs on, for CLI commands against the same state store.
    pub config_path: std::path::PathBuf,
}

/// One answer: status, headers (names lower-cased) and body.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Gateway {
    /// Starts the gateway with `[server]` filled in and `config` (every other section) after it.
    pub fn start(name: &str, config: &str) -> Gateway {
        let (port, admin) = (super::free_port(), super::free_port());
        let dir = std::env::temp_dir().join(format!("portcullis-{name}-{port}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("portcullis.toml");
        let server = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nadmin_listen = \"127.0.0.1:{admin}\"\nthreads = 1\n\
             pid_file = \"{0}/portcullis.pid\"\nupgrade_sock = \"{0}/upgrade.sock\"\n\n",
            dir.display()
        );
        std::fs::write(&path, server + config).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start portcullis");
        super::wait_until("the gateway to listen", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Gateway { child, port, config_path: path }
    }

    /// One request on a fresh connection.
    pub fn request(&self, method: &str, path: &str, key: Option<&str>, body: &str) -> Answer {
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
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let mut lines = head.lines();
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Answer { status, headers, body: body.to_string() }
    }

    /// A graceful stop (SIGTERM, as systemd sends), waited for.
    pub fn terminate(&mut self) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        super::wait_until("the gateway to exit", Duration::from_secs(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
    }

    /// A one-message chat completion with the built-in mock provider.
    pub fn chat(&self, key: &str) -> Answer {
        self.request(
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
