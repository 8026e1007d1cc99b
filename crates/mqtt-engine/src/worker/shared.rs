//! What the workers of one fleet share: stop and abort requests and the wakers that carry
//! them, the generation anchor set when the connect ramp is over, the fleet-wide bound on
//! connections awaiting their CONNACK, and the live figures the fleet's watcher reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::stats::{Collisions, Live};

/// Stop and abort requests from outside, and how to wake the workers for them.
#[derive(Debug, Default)]
pub struct Control {
    pub(super) stop: AtomicBool,
    pub(super) abort: AtomicBool,
    wakers: Mutex<Vec<Arc<Waker>>>,
}

impl Control {
    /// Ends generation; the workers drain within the drain timeout.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Gives up whatever is left of the drain.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    pub(super) fn wake_all(&self) {
        for w in self
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = w.wake();
        }
    }

    pub(super) fn add_waker(&self, w: Arc<Waker>) {
        self.wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(w);
    }
}

/// What the workers of one fleet share.
#[derive(Debug)]
pub struct Shared {
    /// The clock's origin for `anchor_ns`, and the wall clock then (µs since the epoch).
    pub epoch: Instant,
    pub wall_epoch_us: u64,
    /// Generation's anchor: nanoseconds after `epoch`, plus one (0: not yet set). Set when the
    /// connect ramp is over (every connection up or given up), `--start-delay` after it.
    pub(super) anchor_ns: AtomicU64,
    /// Connections up or given up, fleet-wide: the ramp is over when it reaches the plan's.
    pub settled: AtomicU64,
    /// When the ramp was over, nanoseconds after `epoch` plus one (0: not yet).
    pub settled_ns: AtomicU64,
    /// Connections awaiting their CONNACK, fleet-wide: `--max-connecting` bounds the sum
    /// over workers, not each worker's share rounded up.
    pub(super) connecting: AtomicU64,
    pub control: Control,
    pub live: Vec<Live>,
    /// The first takeover and client id in use, named by the tool as they happen.
    pub collisions: Collisions,
    /// Subscribers whose subscription was granted at least once, fleet-wide, and those
    /// refused theirs.
    pub subscribed: AtomicU64,
    pub refused: AtomicU64,
    /// Each worker's histograms as of its last hand-over (`live_histograms`).
    pub live_histos: Vec<std::sync::Mutex<crate::stats::Histos>>,
}

impl Shared {
    pub fn new(workers: usize) -> Shared {
        let wall_epoch_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Shared {
            epoch: Instant::now(),
            wall_epoch_us,
            anchor_ns: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            settled_ns: AtomicU64::new(0),
            connecting: AtomicU64::new(0),
            control: Control::default(),
            live: (0..workers).map(|_| Live::default()).collect(),
            collisions: Collisions::default(),
            subscribed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            live_histos: (0..workers).map(|_| Default::default()).collect(),
        }
    }

    /// Generation's anchor, once set.
    pub fn anchor(&self) -> Option<Instant> {
        match self.anchor_ns.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// Sets the anchor to `at` unless another worker set it first; returns the anchor.
    pub(super) fn set_anchor(&self, at: Instant) -> Instant {
        let ns = at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
        match self
            .anchor_ns
            .compare_exchange(0, ns, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => at,
            Err(_) => self.anchor().unwrap_or(at),
        }
    }

    /// Takes one of `max` fleet-wide connect slots; false when all are taken.
    pub(super) fn take_connect_slot(&self, max: u64) -> bool {
        self.connecting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(super) fn give_connect_slot(&self) {
        let _ = self
            .connecting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// When the ramp was over, once it is.
    pub fn settled_at(&self) -> Option<Instant> {
        match self.settled_ns.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_slots_bound_the_connects_awaiting_a_connack_over_the_whole_fleet() {
        let shared = Shared::new(3);
        // Three workers share --max-connecting 2: the third taker waits, whoever it is.
        assert!(shared.take_connect_slot(2));
        assert!(shared.take_connect_slot(2));
        assert!(!shared.take_connect_slot(2));
        shared.give_connect_slot();
        assert!(shared.take_connect_slot(2));
        assert!(!shared.take_connect_slot(2));
        // Giving back more than was taken never wraps below zero.
        for _ in 0..5 {
            shared.give_connect_slot();
        }
        assert_eq!(shared.connecting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_first_worker_to_end_the_ramp_sets_the_anchor_for_all() {
        let shared = Shared::new(2);
        assert_eq!(shared.anchor(), None);
        let a = shared.epoch + Duration::from_millis(5);
        assert_eq!(shared.set_anchor(a), a);
        // A later worker gets the anchor already set, not its own.
        assert_eq!(shared.set_anchor(a + Duration::from_secs(1)), a);
        assert_eq!(shared.anchor(), Some(a));
    }
}
