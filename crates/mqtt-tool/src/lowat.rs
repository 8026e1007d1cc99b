//! How many bytes a read waits for (`SO_RCVLOWAT`), from the rate at which bytes arrive.
//!
//! Mosquitto sends every message in a segment of its own (`set_tcp_nodelay`), and a socket
//! that is ready at its first byte wakes its reader for each one: on the S1 stream (one point
//! per message) that cost the backend 4.5 s of CPU per million points, taken from a broker on
//! the same two cores, and a broker whose reader takes every segment at once writes each
//! message as its own packet, at a quarter of the speed it drains a reader that lets bytes
//! gather. Waiting for a low-water mark of bytes gives one wakeup per batch; the mark follows
//! the measured rate so that no byte waits in the kernel longer than about [`HOLD`]: a
//! trickle is read at its first byte, a flood in reads of up to [`MAX_LOWAT`]. When the rate
//! drops, the read gives up waiting after [`FALLBACK`] and takes what is there, so the last
//! messages of a burst are not held. Arrival times (and so the backend's end-to-end
//! latencies) are then late by at most about `HOLD` at high rates and by nothing at low ones.

use std::time::Duration;

use tokio::time::Instant;

/// The longest a byte should wait for the low-water mark at a steady rate, by default.
pub const HOLD: Duration = Duration::from_millis(1);
/// A read waiting for the mark takes what there is after this many holds.
pub const FALLBACK_HOLDS: u32 = 4;
/// The largest mark: 64 KiB is where the reference subscriber's wakeups stop costing anything
/// measurable.
pub const MAX_LOWAT: usize = 64 << 10;
/// Marks below this are not worth a wait: the reader takes bytes as they come.
const MIN_LOWAT: usize = 2 << 10;
/// The rate is measured over windows of at least this long.
const WINDOW: Duration = Duration::from_millis(10);

/// The largest power of two not above `x` (x > 0).
fn floor_pow2(x: usize) -> usize {
    1 << (usize::BITS - 1 - x.max(1).leading_zeros())
}

/// The low-water mark policy of one socket.
#[derive(Debug)]
pub struct Lowat {
    /// The mark set on the socket (1: the kernel's default, every byte wakes).
    pub mark: usize,
    /// Zero: no mark, every byte wakes the reader.
    hold: Duration,
    window_start: Instant,
    window_bytes: usize,
}

impl Lowat {
    pub fn new(hold: Duration, now: Instant) -> Lowat {
        Lowat {
            mark: 1,
            hold,
            window_start: now,
            window_bytes: 0,
        }
    }

    /// Records a read of `n` bytes at `now`; returns the mark to set when it changes.
    pub fn read(&mut self, n: usize, now: Instant) -> Option<usize> {
        if self.hold.is_zero() {
            return None;
        }
        self.window_bytes += n;
        let span = now.saturating_duration_since(self.window_start);
        if span < WINDOW {
            return None;
        }
        let per_hold = self.window_bytes as f64 * self.hold.as_secs_f64() / span.as_secs_f64();
        self.window_start = now;
        self.window_bytes = 0;
        // Powers of two, so that a rate that wobbles does not cost a setsockopt per window.
        let mark = if per_hold < MIN_LOWAT as f64 {
            1
        } else {
            floor_pow2((per_hold as usize).min(MAX_LOWAT))
        };
        self.set(mark)
    }

    /// The wait for the mark timed out with `got` bytes there: the rate fell, so the mark
    /// follows what did arrive (nothing: every byte wakes again).
    pub fn timed_out(&mut self, got: usize, now: Instant) -> Option<usize> {
        self.window_start = now;
        self.window_bytes = 0;
        let mark = if got < MIN_LOWAT {
            1
        } else {
            floor_pow2(got).min(self.mark / 2).max(1)
        };
        self.set(mark)
    }

    /// How long a read waits for the mark before it takes what there is.
    pub fn fallback(&self) -> Duration {
        self.hold * FALLBACK_HOLDS
    }

    fn set(&mut self, mark: usize) -> Option<usize> {
        (mark != self.mark).then(|| {
            self.mark = mark;
            mark
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rate` bytes/s in reads of `chunk` for `ms`, returning the mark it settles on.
    fn steady(l: &mut Lowat, t: &mut Instant, rate: f64, chunk: usize, ms: u64) -> usize {
        let step = Duration::from_secs_f64(chunk as f64 / rate);
        let end = *t + Duration::from_millis(ms);
        while *t < end {
            *t += step;
            l.read(chunk, *t);
        }
        l.mark
    }

    #[test]
    fn a_trickle_is_read_at_its_first_byte_and_a_flood_in_large_reads() {
        let mut t = Instant::now();
        let mut l = Lowat::new(HOLD, t);
        // 1,000 messages of 150 bytes a second: every byte wakes the reader.
        assert_eq!(steady(&mut l, &mut t, 150_000.0, 150, 100), 1);
        // 120,000 a second (18 MB/s): a mark that fills in at most HOLD.
        let m = steady(&mut l, &mut t, 18e6, 150, 100);
        assert!(m > 1 && m as f64 <= 18e6 * HOLD.as_secs_f64(), "{m}");
        // A backlog drained at 1 GB/s: the largest mark.
        assert_eq!(steady(&mut l, &mut t, 1e9, 64 << 10, 100), MAX_LOWAT);
        // The flood stops: the wait times out with little there, and every byte wakes again.
        assert_eq!(l.timed_out(300, t), Some(1));
        assert_eq!(steady(&mut l, &mut t, 150_000.0, 150, 100), 1);
    }

    #[test]
    fn a_hold_of_zero_never_sets_a_mark() {
        let mut t = Instant::now();
        let mut l = Lowat::new(Duration::ZERO, t);
        assert_eq!(steady(&mut l, &mut t, 1e9, 64 << 10, 100), 1);
    }

    #[test]
    fn a_timeout_with_bytes_there_lowers_the_mark_at_once() {
        let mut t = Instant::now();
        let mut l = Lowat::new(HOLD, t);
        steady(&mut l, &mut t, 1e9, 64 << 10, 100);
        let before = l.mark;
        let after = l.timed_out(20 << 10, t).expect("a lower mark");
        assert!(after < before && after <= 20 << 10, "{before} -> {after}");
    }
}
