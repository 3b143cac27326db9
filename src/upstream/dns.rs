//! Asynchronous host resolution with a TTL cache. Pingora's `HttpPeer::new` resolves names with
//! blocking DNS and panics on failure, so peers are always built from an address resolved here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Resolved addresses of `(host, port)` and when they were looked up.
type Cache = HashMap<(String, u16), (Vec<SocketAddr>, Instant)>;

#[derive(Debug)]
pub struct Resolver {
    ttl: Duration,
    timeout: Duration,
    cache: Mutex<Cache>,
}

impl Resolver {
    pub fn new(ttl: Duration, timeout: Duration) -> Self {
        Resolver { ttl, timeout, cache: Mutex::new(HashMap::new()) }
    }

    /// An address for `host:port`. IP literals need no lookup. A failed refresh falls back to
    /// the last good answer, so a DNS blip does not take a provider down.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        let stale = {
            let cache = self.cache.lock().map_err(|_| "resolver cache poisoned")?;
            match cache.get(&key) {
                Some((addrs, at)) if at.elapsed() < self.ttl && !addrs.is_empty() => return Ok(addrs[0]),
                Some((addrs, _)) => addrs.first().copied(),
                None => None,
            }
        };
        let lookup = tokio::time::timeout(self.timeout, tokio::net::lookup_host((host, port))).await;
        match lookup {
            Ok(Ok(iter)) => {
                let mut addrs: Vec<SocketAddr> = iter.collect();
                // Prefer IPv4: many hosts publish AAAA records that are unreachable from
                // IPv4-only networks.
                addrs.sort_by_key(|a| a.is_ipv6());
                let first = addrs.first().copied().ok_or_else(|| format!("{host} resolves to no address"))?;
                if let Ok(mut cache) = self.cache.lock() {
                    cache.insert(key, (addrs, Instant::now()));
                }
                Ok(first)
            }
            Ok(Err(e)) => stale.ok_or_else(|| format!("cannot resolve {host}: {e}")),
            Err(_) => stale.ok_or_else(|| format!("resolving {host} timed out")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_and_localhost() {
        let r = Resolver::new(Duration::from_secs(60), Duration::from_secs(2));
        assert_eq!(r.resolve("127.0.0.1", 80).await.unwrap(), "127.0.0.1:80".parse().unwrap());
        assert!(r.resolve("localhost", 80).await.unwrap().ip().is_loopback());
        assert!(r.resolve("no-such-host.invalid", 80).await.is_err());
    }
}
