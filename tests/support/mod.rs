//! Helpers shared by the integration tests: free ports and real servers started on demand.
//!
//! Each test binary includes this with `mod support;` and uses what it needs, hence the
//! `dead_code` allowance.
#![allow(dead_code)]

pub mod gateway;
pub mod redis;

use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago (the OS picks it; the listener is closed again).
/// Another process could take it in between, which is rare enough for tests.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("no free loopback port")
}

/// Polls `ready` every 20 ms until it returns true, or panics with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
