//! The reconnect backoff every tool uses: the `n`th delay of a run of failures is `lo`
//! doubled `n - 1` times, capped at `hi`, and jittered over [0.5, 1.5) of that, so that a
//! fleet refused at once does not come back at once. Pure: the randomness is a xorshift
//! state the caller owns (a worker's, a connection's), so tests can replay it.

use std::time::Duration;

/// Steps a xorshift64 state and returns a jitter factor in [0.5, 1.5).
fn jitter(rng: &mut u64) -> f64 {
    if *rng == 0 {
        // xorshift stays at 0 for ever.
        *rng = 0x9E37_79B9_7F4A_7C15;
    }
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    0.5 + (*rng >> 11) as f64 / (1u64 << 53) as f64
}

/// The `n`th delay (from 1) of a backoff from `lo`, doubling up to `hi`, jittered over
/// [0.5, 1.5) of it with the xorshift state `rng` (stepped once).
pub fn delay(lo: Duration, hi: Duration, n: u32, rng: &mut u64) -> Duration {
    let exp = lo.as_secs_f64() * 2f64.powi(n.saturating_sub(1).min(30) as i32);
    let capped = exp.min(hi.as_secs_f64());
    Duration::from_secs_f64(capped * jitter(rng))
}

/// A run of attempts: [`Backoff::next`] is the delay before the next one, [`Backoff::reset`]
/// starts over after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    lo: Duration,
    hi: Duration,
    /// Delays given since the last reset.
    attempts: u32,
    rng: u64,
}

impl Backoff {
    /// From `lo` doubling up to `hi`; `seed` picks the jitter (any value; two backoffs that
    /// should not move together take different seeds).
    pub fn new(lo: Duration, hi: Duration, seed: u64) -> Backoff {
        Backoff {
            lo,
            hi: hi.max(lo),
            attempts: 0,
            rng: seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.attempts = self.attempts.saturating_add(1);
        delay(self.lo, self.hi, self.attempts, &mut self.rng)
    }

    /// Delays given since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// After progress: the next delay is the first again.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_the_jitter() {
        let (lo, hi) = (Duration::from_millis(100), Duration::from_secs(10));
        let mut b = Backoff::new(lo, hi, 7);
        for n in 1..=40u32 {
            let d = b.next_delay();
            let base = (0.1 * 2f64.powi(n as i32 - 1)).min(10.0);
            let s = d.as_secs_f64();
            assert!(
                s >= base * 0.5 - 1e-9 && s < base * 1.5 + 1e-9,
                "{n}: {d:?}"
            );
        }
        assert_eq!(b.attempts(), 40);
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(150));
    }

    #[test]
    fn the_jitter_spreads_a_fleet_and_replays_from_its_state() {
        let (lo, hi) = (Duration::from_millis(100), Duration::from_secs(10));
        let firsts: Vec<_> = (0..100)
            .map(|seed| Backoff::new(lo, hi, seed).next_delay())
            .collect();
        let (min, max) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
        assert!(*max - *min > Duration::from_millis(50), "{min:?}..{max:?}");
        // The free function is the formula itself: the same state, the same delays.
        let (mut a, mut b) = (12345u64, 12345u64);
        for n in 1..10 {
            assert_eq!(delay(lo, hi, n, &mut a), delay(lo, hi, n, &mut b));
        }
        // A zero state would stay zero under xorshift: it is moved off it.
        let mut z = 0u64;
        delay(lo, hi, 1, &mut z);
        assert_ne!(z, 0);
    }
}
