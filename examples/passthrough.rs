//! The load-test baseline: the least a Pingora proxy can do.
//!
//! Every request goes unchanged to one fixed upstream; no routing, authentication, body reading,
//! metrics or logging. `load-tests/run.sh` runs it next to the gateway so the gateway's cost is
//! read as a ratio to this, not as an absolute that drifts with the machine. Keep it that way:
//! anything added here hides the same amount of gateway overhead.
//!
//! ```sh
//! cargo build --release --example passthrough
//! UPSTREAM=127.0.0.1:18081 LISTEN=127.0.0.1:18082 THREADS=1 target/release/examples/passthrough
//! ```
//!
//! Pingora already sets `TCP_NODELAY` on accepted and upstream sockets and pools upstream
//! connections, as the gateway does, so the two differ only in per-request work.

use async_trait::async_trait;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;

/// Proxies everything to `peer`.
struct Passthrough {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

/// `name` from the environment, or `default`.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn main() {
    env_logger::init();
    let upstream: SocketAddr = env_or("UPSTREAM", "127.0.0.1:18081")
        .parse()
        .expect("UPSTREAM must be an ip:port socket address, e.g. 127.0.0.1:18081");
    let listen = env_or("LISTEN", "127.0.0.1:18082");
    let threads: usize = env_or("THREADS", "1").parse().expect("THREADS must be a positive integer");

    // A socket address, not a host name: HttpPeer would resolve a name with blocking DNS.
    let peer = HttpPeer::new(upstream, false, String::new());
    let conf = ServerConf { threads, ..ServerConf::default() };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Passthrough { peer });
    service.add_tcp(&listen);
    server.add_service(service);
    eprintln!("passthrough: listening on {listen}, upstream {upstream}, {threads} thread(s)");
    server.run_forever();
}
