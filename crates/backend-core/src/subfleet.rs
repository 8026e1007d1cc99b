//! The receive path of a subscriber fleet (`loadgen sub --clients N`): the engine's workers
//! hand each delivery to a [`FleetConsumer`] (one per worker, an `mqtt_engine::Consumer`),
//! which decodes it with backend-sub's [`Decoder`] and proves it with the fleet's
//! [`FleetVerifier`]. One framer (mqtt-wire's, in the engine), one decoder, one verifier:
//! the same as backend-sub's, not a second implementation.
//!
//! ```text
//! engine worker --> PUBLISH (subscriber i, topic, payload) --> FleetConsumer::received
//!   --> Decoder (any key order) --> points --> FleetVerifier::point (i's pair per device,
//!       e2e latency from the point's timestamp) ; live counters for the stop rules
//! end of run: each worker's verifier --> Finished --> FleetStats (+=) --> the report
//! ```
//!
//! A worker's consumer is dropped when its worker ends; it leaves its verifier in the
//! run's [`Finished`], where the run picks them all up after the fleet is joined.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use point_format::Point;

use crate::decode::Decoder;
use crate::fleet_verify::{FleetStats, FleetVerifier, Rules};
use crate::verify::{Budget, GAP_RECORDS_FLEET};

/// What every worker's consumer counts as it goes, read by the run's stop rules and
/// progress line. One per worker (no cache line shared between workers).
#[derive(Debug, Default)]
pub struct LiveCounts {
    pub deliveries: AtomicU64,
    pub points: AtomicU64,
    /// Microseconds after the run's epoch of the last delivery, plus one (0: none yet).
    pub last_us: AtomicU64,
}

/// The verifiers of the workers that ended.
#[derive(Debug, Default)]
pub struct Finished(Mutex<Vec<FleetVerifier>>);

impl Finished {
    /// The fleet's figures: every worker's, judged by `rules`, added.
    pub fn stats(&self, rules: &Rules) -> FleetStats {
        let mut st = FleetStats::default();
        for v in self.0.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            st += &v.stats(rules);
        }
        st
    }

    /// Bytes the pairs of all verifiers hold.
    pub fn pair_bytes(&self) -> usize {
        let v = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        v.iter().map(FleetVerifier::pair_bytes).sum()
    }
}

/// The clock of a run: an instant and the wall clock then, so a delivery's `Instant` gives
/// its wall-clock arrival for the e2e latency without a system call per delivery.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub epoch: Instant,
    pub wall_epoch_us: f64,
}

impl Clock {
    pub fn now() -> Clock {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_micros() as f64);
        Clock {
            epoch: Instant::now(),
            wall_epoch_us: wall,
        }
    }

    fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }
}

/// One worker's consumer: its subscribers' verifier, the decoder, the points of one message.
pub struct FleetConsumer {
    /// The index of the worker's first subscriber (its slot 0).
    first: u32,
    verifier: Option<FleetVerifier>,
    decoder: Decoder,
    /// The points of one message; kept between messages for its allocation.
    points: Vec<Point<'static>>,
    clock: Clock,
    live: Arc<LiveCounts>,
    finished: Arc<Finished>,
}

/// An empty vector of points of any lifetime, in the allocation of `v`.
fn reuse<'a, 'b>(mut v: Vec<Point<'a>>) -> Vec<Point<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!()).collect()
}

impl FleetConsumer {
    /// The consumer of subscribers `subs` (their indexes), at most `max_devices` devices
    /// each worker tracks.
    pub fn new(
        subs: std::ops::Range<u64>,
        max_devices: usize,
        clock: Clock,
        live: Arc<LiveCounts>,
        finished: Arc<Finished>,
    ) -> FleetConsumer {
        let first = subs.start as u32;
        let budget = Budget::default().with_records(GAP_RECORDS_FLEET);
        FleetConsumer {
            first,
            verifier: Some(FleetVerifier::new(
                subs.map(|i| i as u32),
                max_devices,
                budget,
            )),
            decoder: Decoder::default(),
            points: Vec::new(),
            clock,
            live,
            finished,
        }
    }

    /// The verifier (tests).
    pub fn verifier(&self) -> Option<&FleetVerifier> {
        self.verifier.as_ref()
    }
}

impl mqtt_engine::Consumer for FleetConsumer {
    fn received(&mut self, sub: u32, _topic: &[u8], payload: &mut [u8], now: Instant) {
        let Some(v) = self.verifier.as_mut() else {
            return;
        };
        let slot = sub.wrapping_sub(self.first) as usize;
        if slot >= v.subscribers().len() {
            return; // not one of this worker's: cannot happen
        }
        let at_us = self.clock.micros(now);
        let arrival_us = self.clock.wall_epoch_us + at_us as f64;
        v.delivery(slot);
        let mut points = reuse(std::mem::take(&mut self.points));
        let n = match self.decoder.decode(payload, &mut points) {
            Ok(_) => {
                for pt in &points {
                    // In f64: any timestamp gives a latency (negative and NaN become 0).
                    let latency = (arrival_us - pt.timestamp * 1e6).max(0.0) as u64;
                    v.point(slot, &pt.device_id, pt.seq, latency);
                }
                points.len() as u64
            }
            Err(_) => {
                v.malformed(slot);
                0
            }
        };
        self.points = reuse(points);
        self.live.deliveries.fetch_add(1, Relaxed);
        self.live.points.fetch_add(n, Relaxed);
        self.live.last_us.store(at_us + 1, Relaxed);
    }
}

impl Drop for FleetConsumer {
    fn drop(&mut self) {
        if let Some(v) = self.verifier.take() {
            self.finished
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtt_engine::Consumer;

    fn payload(device: &str, seq: u64) -> Vec<u8> {
        format!(r#"{{"device_id":"{device}","seq":{seq},"timestamp":1.0,"value":2.5}}"#)
            .into_bytes()
    }

    #[test]
    fn each_subscriber_proves_its_own_points_and_the_verifiers_are_left_at_the_end() {
        let finished = Arc::new(Finished::default());
        let live = Arc::new(LiveCounts::default());
        let clock = Clock::now();
        let mut c = FleetConsumer::new(10..12, 100, clock, live.clone(), finished.clone());
        let now = Instant::now();
        // Subscriber 10 gets 0,1,2,5,6,6 of device d; subscriber 11 gets 0..=6.
        for s in [0, 1, 2, 5, 6, 6] {
            c.received(10, b"t", &mut payload("d", s), now);
        }
        for s in 0..=6 {
            c.received(11, b"t", &mut payload("d", s), now);
        }
        c.received(11, b"t", &mut b"not json".to_vec(), now);
        assert_eq!(live.deliveries.load(Relaxed), 14);
        assert_eq!(live.points.load(Relaxed), 13);
        drop(c);
        let rules = Rules {
            expect_per_client: Some(7),
            ..Rules::default()
        };
        let st = finished.stats(&rules);
        assert_eq!(st.subscribers_verified, 2);
        assert_eq!(st.points_missing, 2);
        assert_eq!(st.points_duplicate, 1);
        assert_eq!(st.malformed_messages, 1);
        let listed: Vec<u32> = st
            .subscribers_with_problems
            .iter()
            .map(|c| c.index)
            .collect();
        assert_eq!(
            listed,
            vec![10, 11],
            "10 for its gap, 11 for its malformed message"
        );
        assert!(
            st.latency_us.is_some(),
            "e2e latency from the points' timestamps"
        );
    }
}
