//! Pacing on an absolute schedule.
//!
//! Message k is due when its last point is due: `start + points_through_k / rate`. Deadlines
//! are computed from the start, never from the previous send, so a late message does not push
//! later ones back (no drift) and the achieved rate converges to the target. How late sending
//! actually was is measured where the message hits the socket (see [`crate::driver`]).
//!
//! tokio's timer has millisecond ticks and may wake a tick late, which alone would make a
//! 10,000 points/s run in 1000-point messages up to a millisecond late per message. So when
//! messages are at least [`PRECISE_MIN_INTERVAL`] apart, a wait sleeps on tokio's timer until
//! [`COARSE_MARGIN`] before the deadline, then on a high-resolution timer (a Linux timerfd)
//! until [`SPIN_WINDOW`] before it, and yields for the rest: at most that much spinning per
//! message, and the kernel's wake-up latency stays out of the schedule lag. Closer
//! messages use tokio's timer alone and go out in bursts per tick: a wake-up per message
//! would cost more CPU (a context switch each) than sub-millisecond smoothness is worth.

use std::time::Duration;

use tokio::time::Instant;

/// How much of a wait is left to the high-resolution timer.
const COARSE_MARGIN: Duration = Duration::from_millis(2);
/// The high-resolution timer wakes this early; yielding covers the rest, so the kernel's
/// wake-up latency (tens of microseconds, more on a virtual machine) does not add to the lag.
const SPIN_WINDOW: Duration = Duration::from_micros(150);
/// Messages at least this far apart are paced with the high-resolution timer.
const PRECISE_MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The schedule of one run, and the timer that keeps it.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    /// Points per second; `None` = as fast as possible.
    rate: Option<f64>,
    /// The high-resolution timer; `None` where there is none (the tokio timer alone then).
    fine: Option<fine::Timer>,
}

impl Pacer {
    /// The schedule of `rate` points per second (`None`: unpaced) in messages of `batch`.
    pub fn new(start: Instant, rate: Option<f64>, batch: u64) -> Self {
        let precise = rate.is_some_and(|r| batch as f64 / r >= PRECISE_MIN_INTERVAL.as_secs_f64());
        let fine = precise.then(fine::Timer::new).and_then(|t| match t {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("no high-resolution timer ({e}); pacing to the millisecond");
                None
            }
        });
        Pacer { start, rate, fine }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    /// Whether waits end on the high-resolution timer.
    pub fn is_precise(&self) -> bool {
        self.fine.is_some()
    }

    pub fn is_paced(&self) -> bool {
        self.rate.is_some()
    }

    /// When the message whose last point is point number `points_through` (1-based count of
    /// points sent once it is out) is due, or `None` when unpaced.
    pub fn deadline(&self, points_through: u64) -> Option<Instant> {
        self.rate.map(|r| {
            self.start + Duration::from_nanos((points_through as f64 * 1e9 / r).round() as u64)
        })
    }

    /// Waits until the message ending at `points_through` is due and returns its scheduled
    /// time; unpaced, returns now at once.
    pub async fn wait(&mut self, points_through: u64) -> Instant {
        let Some(due) = self.deadline(points_through) else {
            return Instant::now();
        };
        // Only a deadline in the future: tokio rounds up to its next tick even a past one.
        if let Some(coarse) = due.checked_sub(COARSE_MARGIN) {
            if coarse > Instant::now() {
                tokio::time::sleep_until(coarse).await;
            }
        }
        let now = Instant::now();
        if now < due {
            if let Some(fine) = &mut self.fine {
                let early = due.checked_sub(SPIN_WINDOW).unwrap_or(due);
                if now < early {
                    if let Err(e) = fine.sleep(early - now).await {
                        tracing::warn!(
                            "high-resolution timer failed ({e}); pacing to the millisecond"
                        );
                        self.fine = None;
                    }
                }
                let mut last = Instant::now();
                while self.fine.is_some() && last < due {
                    tokio::task::yield_now().await;
                    let now = Instant::now();
                    if now == last {
                        break; // a paused (test) clock only moves when every task sleeps
                    }
                    last = now;
                }
            }
            // A paused clock does not move with real time, and without a fine timer the wait
            // is not over yet: tokio's timer does the rest.
            if Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
        }
        due
    }
}

#[cfg(target_os = "linux")]
mod fine {
    //! A timerfd on CLOCK_MONOTONIC (the clock of `Instant`), awaited through tokio's reactor.

    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::Duration;

    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    #[derive(Debug)]
    pub struct Timer(AsyncFd<OwnedFd>);

    impl Timer {
        pub fn new() -> io::Result<Timer> {
            // SAFETY: plain syscall; the result is checked before use.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the AsyncFd owns `fd`, which stays open and the same until it drops.
            let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
            Ok(Timer(fd))
        }

        /// Sleeps `d` of real time. Dropping the future leaves the timer armed; the next call
        /// re-arms it, which also clears a stale expiry.
        pub async fn sleep(&mut self, d: Duration) -> io::Result<()> {
            if d.is_zero() {
                return Ok(()); // a zero it_value would disarm the timer instead
            }
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: d.as_secs() as libc::time_t,
                    tv_nsec: d.subsec_nanos() as libc::c_long,
                },
            };
            let fd = self.0.get_ref().as_raw_fd();
            // SAFETY: `fd` is our open timerfd and `spec` a valid itimerspec.
            if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } < 0 {
                return Err(io::Error::last_os_error());
            }
            loop {
                let mut guard = self.0.readable().await?;
                let read = guard.try_io(|inner| {
                    let mut expirations = [0u8; 8];
                    // SAFETY: reads at most 8 bytes into an 8-byte buffer from our timerfd.
                    let n = unsafe {
                        libc::read(
                            inner.get_ref().as_raw_fd(),
                            expirations.as_mut_ptr().cast(),
                            8,
                        )
                    };
                    if n < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                });
                match read {
                    Ok(result) => return result,
                    Err(_would_block) => continue, // readiness was stale
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod fine {
    //! No high-resolution timer here: tokio's timer does the whole wait.

    use std::io;
    use std::time::Duration;

    #[derive(Debug)]
    pub struct Timer;

    impl Timer {
        pub fn new() -> io::Result<Timer> {
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "timerfd is Linux only",
            ))
        }

        pub async fn sleep(&mut self, _d: Duration) -> io::Result<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_absolute_schedule() {
        let start = Instant::now();
        let mut p = Pacer::new(start, Some(10_000.0), 1000);
        assert!(p.is_precise());
        // batch 1000 at 10k points/s: one message every 100 ms, the first at 100 ms
        for k in 1..=30u64 {
            let due = p.wait(k * 1000).await;
            assert_eq!(due - start, Duration::from_millis(100 * k));
            assert_eq!(Instant::now(), due);
        }
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_message_does_not_shift_later_deadlines() {
        let start = Instant::now();
        let mut p = Pacer::new(start, Some(1_000.0), 100);
        p.wait(100).await; // due at 100 ms
        tokio::time::advance(Duration::from_millis(250)).await; // encoding stalls to 350 ms
        let due = p.wait(200).await; // due at 200 ms: already late, no sleep
        assert_eq!(due - start, Duration::from_millis(200));
        assert_eq!(Instant::now() - start, Duration::from_millis(350));
        let due = p.wait(400).await; // back on schedule at 400 ms, not 550 ms
        assert_eq!(due - start, Duration::from_millis(400));
        assert_eq!(Instant::now() - start, Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn high_rates_are_paced_below_a_millisecond() {
        let start = Instant::now();
        let p = Pacer::new(start, Some(1_000_000.0), 100);
        assert!(!p.is_precise());
        // batch 100 at 1M points/s: every 100 µs
        assert_eq!(p.deadline(100).unwrap() - start, Duration::from_micros(100));
        assert_eq!(
            p.deadline(1_000_000).unwrap() - start,
            Duration::from_secs(1)
        );
        let p = Pacer::new(start, Some(3.0), 1);
        assert_eq!(
            p.deadline(1).unwrap() - start,
            Duration::from_nanos(333_333_333)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sub_millisecond_deadlines_are_kept_under_a_paused_clock() {
        let start = Instant::now();
        let mut p = Pacer::new(start, Some(1_000_000.0), 100);
        for k in 1..=20u64 {
            assert_eq!(
                p.wait(k * 100).await - start,
                Duration::from_micros(100 * k)
            );
            assert!(Instant::now() >= start + Duration::from_micros(100 * k));
        }
    }

    #[tokio::test]
    async fn waits_end_within_a_fraction_of_a_millisecond_in_real_time() {
        let start = Instant::now();
        let mut p = Pacer::new(start, Some(1_000.0), 10);
        assert!(p.is_precise());
        let mut late = Vec::new();
        for k in 1..=20u64 {
            let due = p.wait(k * 10).await;
            assert!(Instant::now() >= due, "woke before the deadline");
            late.push(Instant::now() - due);
        }
        late.sort();
        // Functional check only (the bench measures precision): the tokio timer alone is
        // routinely a millisecond late; a loaded machine may delay any single wake.
        assert!(late[late.len() / 2] < Duration::from_millis(50), "{late:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unpaced_never_waits() {
        let start = Instant::now();
        let mut p = Pacer::new(start, None, 1000);
        assert!(!p.is_paced());
        let t = p.wait(1_000_000).await;
        assert_eq!(t, start);
    }
}
