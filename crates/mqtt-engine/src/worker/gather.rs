//! Wakeups gathered: a subscriber worker at a high wake rate lets a hold's events gather
//! before it polls again.
//!
//! A fan-out wakes a subscriber worker for every delivery: Mosquitto writes each PUBLISH to
//! each subscriber as it comes, so 1,000 subscribers at 100 messages/s each make 100,000
//! wakeups a second of a few events each. On two cores shared with the broker that cost 10.1
//! CPU s per million deliveries (FS1, two workers; 6.2 s with one) against the raw
//! reference's 5.0. When wakes come faster than [`MIN_RATE`] a second, the worker waits out
//! the rest of a [`HOLD`] after each poll before the next, so that each poll takes a
//! millisecond's events. Deliveries are then read late by at most about `HOLD`, which the
//! report says; a slow stream (idle subscribers, held connections) is read as it comes.

use std::time::{Duration, Instant};

/// The longest a delivery waits for its worker at a high wake rate.
pub const HOLD: Duration = Duration::from_millis(1);
/// Wakes a second from which a worker gathers (and a quarter of it, down to which it goes on).
const MIN_RATE: u64 = 2_000;
/// The wake rate is measured over windows of this long.
const WINDOW: Duration = Duration::from_millis(20);

/// The gathering policy of one worker.
#[derive(Debug)]
pub struct WakeGather {
    window_start: Instant,
    wakes: u64,
    gathering: bool,
    last_poll: Instant,
}

impl WakeGather {
    pub fn new(now: Instant) -> WakeGather {
        WakeGather {
            window_start: now,
            wakes: 0,
            gathering: false,
            last_poll: now,
        }
    }

    /// How long to wait before the next poll, which is due within `timeout` (None: no
    /// deadline); records the poll as made at the end of that wait.
    pub fn before_poll(&mut self, now: Instant, timeout: Option<Duration>) -> Duration {
        self.wakes += 1;
        let span = now.saturating_duration_since(self.window_start);
        if span >= WINDOW {
            let per_s = self.wakes as f64 / span.as_secs_f64();
            // Gathering caps the polls at one a hold (1,000/s): it stops only when polls come
            // at a quarter of the rate that started it, the stream having slowed.
            let from = if self.gathering {
                MIN_RATE / 4
            } else {
                MIN_RATE
            };
            self.gathering = per_s >= from as f64;
            self.window_start = now;
            self.wakes = 0;
        }
        let wait = if self.gathering {
            (self.last_poll + HOLD).saturating_duration_since(now)
        } else {
            Duration::ZERO
        };
        let wait = timeout.map_or(wait, |t| wait.min(t));
        self.last_poll = now + wait;
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_wakes_is_gathered_a_trickle_is_not() {
        let mut t = Instant::now();
        let mut g = WakeGather::new(t);
        // 1,000 wakes a second: none held.
        for _ in 0..100 {
            t += Duration::from_millis(1);
            assert_eq!(g.before_poll(t, None), Duration::ZERO);
        }
        // 100,000 a second: after the first window, a poll at most every HOLD.
        let mut polls = 0;
        let end = t + Duration::from_millis(100);
        while t < end {
            t += Duration::from_micros(10);
            let w = g.before_poll(t, None);
            t += w;
            polls += 1;
        }
        assert!(polls < 2_000 + 130, "{polls} polls in 100 ms");
        // The stream slows to 200 wakes a second: reads as they come again.
        for _ in 0..10 {
            t += Duration::from_millis(5);
            g.before_poll(t, None);
        }
        t += Duration::from_millis(5);
        assert_eq!(g.before_poll(t, None), Duration::ZERO);
        // A timer due sooner than the hold is not overslept.
        t += Duration::from_micros(10);
        assert!(g.before_poll(t, Some(Duration::from_micros(100))) <= Duration::from_micros(100));
    }
}
