//! Caps on concurrent work: LLM requests in flight on the client listener (`server.max_in_flight`)
//! and calls in flight to each provider (`providers.NAME.max_in_flight`). A slot is held by a
//! guard in the request context and returned when the request ends, streams included.

use prometheus::IntGauge;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A count of work in flight, mirrored to a gauge.
#[derive(Debug)]
pub struct Gate {
    in_flight: AtomicUsize,
    gauge: Option<IntGauge>,
}

/// One unit of admitted work; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<Gate>);

impl Gate {
    pub fn new(gauge: Option<IntGauge>) -> Arc<Gate> {
        Arc::new(Gate { in_flight: AtomicUsize::new(0), gauge })
    }

    /// A slot, unless `max` (0: no cap) are taken.
    pub fn try_enter(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if max != 0 && before >= max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        if let Some(g) = &self.gauge {
            g.inc();
        }
        Some(Slot(self.clone()))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.0.gauge {
            g.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_returned_on_drop() {
        let gauge = IntGauge::new("t", "t").unwrap();
        let gate = Gate::new(Some(gauge.clone()));
        let a = gate.try_enter(2).unwrap();
        let b = gate.try_enter(2).unwrap();
        assert!(gate.try_enter(2).is_none());
        assert_eq!((gate.in_flight(), gauge.get()), (2, 2));
        drop(a);
        let c = gate.try_enter(2).unwrap();
        drop((b, c));
        assert_eq!((gate.in_flight(), gauge.get()), (0, 0));
        // 0 is no cap.
        let many: Vec<Slot> = (0..100).filter_map(|_| gate.try_enter(0)).collect();
        assert_eq!(many.len(), 100);
    }
}
