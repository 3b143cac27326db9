//! A value read from the state store and shared by every node (stored provider keys, admin
//! policy overrides): requests use the last snapshot, which is reread in the background once it
//! is a few seconds old, so a change made on one node reaches the others within `TTL`.

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a snapshot is used before it is reread (in the background).
pub const TTL: Duration = Duration::from_secs(5);
/// While nothing was ever read, a request waits for another attempt at most this often.
const RETRY: Duration = Duration::from_secs(1);

/// What a request should do about a snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// Use it, and reread it in the background.
    Stale,
    /// Never read: wait for a read.
    Missing,
    /// Never read, and the last attempt was just now: go on without it.
    Failing,
}

/// The snapshot and when it was read. Checked on every request, so the times are atomics:
/// milliseconds since `epoch`, 0 for never.
#[derive(Debug)]
pub struct Reread<T> {
    value: ArcSwap<T>,
    epoch: Instant,
    loaded_at: AtomicU64,
    /// When a read last failed.
    failed_at: AtomicU64,
    refreshing: AtomicBool,
    /// Reads are numbered as they start; a read that started before the stored one is dropped,
    /// so a slow background read cannot undo a newer change.
    next_read: AtomicU64,
    stored_read: std::sync::Mutex<u64>,
}

/// A read in progress (from [`Reread::begin`]).
#[derive(Debug, Clone, Copy)]
pub struct ReadTicket(u64);

impl<T: Default> Default for Reread<T> {
    fn default() -> Self {
        Reread {
            value: ArcSwap::from_pointee(T::default()),
            epoch: Instant::now(),
            loaded_at: AtomicU64::new(0),
            failed_at: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            next_read: AtomicU64::new(1),
            stored_read: std::sync::Mutex::new(0),
        }
    }
}

impl<T> Reread<T> {
    fn now(&self) -> u64 {
        // +1 so that a time is never the "never" 0.
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn age(&self, at: &AtomicU64) -> Option<Duration> {
        match at.load(Ordering::Acquire) {
            0 => None,
            t => Some(Duration::from_millis(self.now().saturating_sub(t))),
        }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.value.load()
    }

    pub fn load_full(&self) -> Arc<T> {
        self.value.load_full()
    }

    /// Nothing was ever read.
    pub fn unread(&self) -> bool {
        self.age(&self.loaded_at).is_none()
    }

    pub fn freshness(&self) -> Freshness {
        match self.age(&self.loaded_at) {
            Some(age) if age < TTL => Freshness::Fresh,
            Some(_) => Freshness::Stale,
            None if self.age(&self.failed_at).is_some_and(|a| a < RETRY) => Freshness::Failing,
            None => Freshness::Missing,
        }
    }

    /// Claim the one background reread; `false` when another is running.
    pub fn claim(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// A read is starting.
    pub fn begin(&self) -> ReadTicket {
        ReadTicket(self.next_read.fetch_add(1, Ordering::AcqRel))
    }

    /// A read ended: store its value unless a later read was stored already; a failure is
    /// remembered so that requests do not all wait on the next attempt at once.
    pub fn finish<E>(&self, ticket: ReadTicket, read: Result<T, E>) -> Result<(), E> {
        self.refreshing.store(false, Ordering::Release);
        match read {
            Ok(value) => {
                let Ok(mut stored) = self.stored_read.lock() else { return Ok(()) };
                if ticket.0 > *stored {
                    *stored = ticket.0;
                    self.value.store(Arc::new(value));
                    self.loaded_at.store(self.now(), Ordering::Release);
                }
                Ok(())
            }
            Err(e) => {
                self.failed_at.store(self.now(), Ordering::Release);
                Err(e)
            }
        }
    }
}

/// Make sure `r` is recent enough for a request: the first read is awaited, later ones run in
/// the background while requests use the previous snapshot. `read` does one read and stores it.
pub async fn keep_fresh<T, F, Fut>(r: &Reread<T>, what: &'static str, read: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::state::StateError>> + Send + 'static,
{
    match r.freshness() {
        Freshness::Fresh | Freshness::Failing => {}
        Freshness::Missing => {
            if let Err(e) = read().await {
                log::warn!("cannot read the {what}: {e}");
            }
        }
        Freshness::Stale if r.claim() => {
            let pending = read();
            tokio::spawn(async move {
                if let Err(e) = pending.await {
                    log::warn!("cannot reread the {what} (using the last ones read): {e}");
                }
            });
        }
        Freshness::Stale => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_missing_then_fresh_and_one_reread_is_claimed_at_a_time() {
        let r: Reread<Vec<u32>> = Reread::default();
        assert!(r.unread() && r.freshness() == Freshness::Missing);
        let first = r.begin();
        assert_eq!(r.freshness(), Freshness::Missing, "a read in progress is not a failure");
        assert!(r.finish(first, Err::<Vec<u32>, &str>("down")).is_err());
        assert_eq!(r.freshness(), Freshness::Failing, "a failed first read is not retried at once");
        let (older, newer) = (r.begin(), r.begin());
        r.finish(newer, Ok::<_, ()>(vec![2])).unwrap();
        r.finish(older, Ok::<_, ()>(vec![1])).unwrap();
        assert!(!r.unread() && r.freshness() == Freshness::Fresh);
        assert_eq!(r.load().as_slice(), [2], "an older read does not replace a newer one");
        assert!(r.claim() && !r.claim());
        r.finish(r.begin(), Ok::<_, ()>(vec![3])).unwrap();
        assert!(r.claim());
    }
}
