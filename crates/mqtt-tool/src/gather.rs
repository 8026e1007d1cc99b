//! How a read lets bytes gather in the kernel before it takes them, from the rate at which
//! they arrive.
//!
//! Mosquitto sends every message in a segment of its own (`set_tcp_nodelay`), and a reader
//! that takes each one as it comes wakes once per message: on the S1 stream (one point per
//! message) that cost the backend 4.5 s of CPU per million points, taken from a broker on the
//! same two cores. So the reader gathers, in one of three ways by the rate it measures (and
//! by a first read's size):
//! - a trickle (under [`MIN_GATHER`] bytes a hold) is read at its first byte;
//! - a stream of up to [`MAX_GATHER`] bytes a hold is read in pauses: a read that caught up
//!   (found less than a hold's worth) makes the next wait until [`HOLD`] after it, so that a
//!   millisecond's messages are read in one go;
//! - a flood (a backlog) waits for [`MAX_GATHER`] bytes at a time with `SO_RCVLOWAT`, as the
//!   reference subscriber does, and stays a flood while it brings a quarter of that a hold;
//!   a wait that times out (after [`FALLBACK_HOLDS`] holds) takes what is there and keeps
//!   the mark, unless almost nothing came (under [`MIN_GATHER`]: the stream stopped, and
//!   every byte wakes again); a single read that brings a mark's worth before any stream
//!   was measured (a backlog: the process was paused, or a session's queue arrives after a
//!   reconnect) sets the mark at once rather than after a window of reads at every
//!   segment, provisionally: the window that follows must measure a full flood to keep it.
//!
//! A drain stalls now and then: the receiving socket drops a segment and the broker waits to
//! send it again, for milliseconds. Marks that halved on such a timeout, and windows that
//! measured a stall and left the flood, made every stall a run of small reads and
//! wakeups: a drain of a million single-point messages took 1,100-1,600 context switches
//! and 0.19-0.25 s of CPU (the reference: about 110 and 0.09 s); with the mark kept,
//! about 200 and 0.14-0.17 s.
//!
//! End-to-end latencies are thus late by at most about `HOLD` (plus the timer's tick) in
//! pauses, by at most the fallback (4 ms) in a flood, and by nothing at low rates.
//!
//! The middle way replaced marks below 64 KiB, which stalled: a sender may send only so many
//! segments before an ACK, the kernel delays its ACKs while nothing is read, and a stream of
//! small messages stopped short of the mark until the read's fallback ran out (D2-S1: the
//! mark flapping between 16 KiB and 1 every few milliseconds, 5 ms stalls, 1.9-2.3 CPU s per
//! million points; capping the mark after a stall drove it down to 1). Pauses alone do not
//! serve a flood: a read between pauses wakes per segment (a drain of a million single-point
//! messages took 0.33-0.37 s of CPU that way, 0.17-0.23 s with the mark). Measured by hand
//! against Mosquitto with `set_tcp_nodelay`: 300,000 single-point messages live, 0.09 s of
//! CPU at 177,000 points/s in pauses against 0.23-0.34 s at 139,000 with marks.

use std::time::Duration;

use tokio::time::Instant;

/// The longest a byte should wait at a steady rate, by default.
pub const HOLD: Duration = Duration::from_millis(1);
/// A read waiting for the mark takes what there is after this many holds.
pub const FALLBACK_HOLDS: u32 = 4;
/// Below this many bytes a hold, the reader takes bytes as they come.
const MIN_GATHER: usize = 2 << 10;
/// From this many bytes a hold, reads wait for this many bytes (`SO_RCVLOWAT`): 64 KiB is
/// where the reference subscriber's wakeups stop costing anything measurable.
pub const MAX_GATHER: usize = 64 << 10;
/// The rate is measured over windows of at least this long.
const WINDOW: Duration = Duration::from_millis(10);

/// The gathering policy of one socket.
#[derive(Debug)]
pub struct Gather {
    /// The low-water mark set on the socket (1: the kernel's default, every byte wakes).
    pub mark: usize,
    /// The bytes a hold brings at the measured rate (0: a trickle, or no hold).
    per_hold: usize,
    /// Zero: never gather, every byte wakes the reader.
    hold: Duration,
    window_start: Instant,
    window_bytes: usize,
    /// The mark was set by one large read, not yet by a window's rate.
    provisional: bool,
}

/// What to do before the next read.
#[derive(Debug, PartialEq, Eq)]
pub struct Next {
    /// Set this low-water mark on the socket.
    pub mark: Option<usize>,
    /// Read no earlier than this.
    pub pause_until: Option<Instant>,
}

impl Gather {
    pub fn new(hold: Duration, now: Instant) -> Gather {
        Gather {
            mark: 1,
            per_hold: 0,
            hold,
            window_start: now,
            window_bytes: 0,
            provisional: false,
        }
    }

    /// Records a read of `n` bytes at `now`.
    pub fn read(&mut self, n: usize, now: Instant) -> Next {
        if self.hold.is_zero() {
            return Next {
                mark: None,
                pause_until: None,
            };
        }
        self.window_bytes += n;
        let span = now.saturating_duration_since(self.window_start);
        let mut mark = None;
        if span >= WINDOW {
            let per_hold = self.window_bytes as f64 * self.hold.as_secs_f64() / span.as_secs_f64();
            self.window_start = now;
            self.window_bytes = 0;
            self.per_hold = if per_hold < MIN_GATHER as f64 {
                0
            } else {
                per_hold as usize
            };
            // A flood stays one while it brings a quarter of the mark a hold: a window with
            // one of the sender's stalls in it must not drop the mark.
            let flood = self.per_hold >= MAX_GATHER
                || (self.mark > 1 && !self.provisional && self.per_hold >= MAX_GATHER / 4);
            self.provisional = false;
            mark = self.set(if flood { MAX_GATHER } else { 1 });
        } else if n >= MAX_GATHER && self.mark == 1 && self.per_hold == 0 {
            // One read brought a mark's worth where no stream was measured: a backlog (the
            // process was paused, or a session's queue came after a reconnect), a flood
            // from the next read on rather than after a window of reads at every segment.
            // D2's drains of 100,000 one-point messages took 18-54 ms of CPU that way (the
            // reference: 17-20 ms). Not for a stream read in pauses (its rate is known, and
            // one late read of it is no flood). Provisional: the window measures the rate
            // from here, and only a full flood keeps the mark at its end.
            self.window_start = now;
            self.window_bytes = 0;
            self.provisional = true;
            mark = self.set(MAX_GATHER);
        }
        // Caught up at a middling rate: let the next hold's bytes gather.
        let pausing =
            self.mark == 1 && self.per_hold > 0 && self.per_hold < MAX_GATHER && n < self.per_hold;
        Next {
            mark,
            pause_until: pausing.then(|| now + self.hold),
        }
    }

    /// The wait for the mark timed out with `got` bytes there: a stall in a flood keeps the
    /// mark; a stream that stopped (almost nothing there) wakes at every byte again until
    /// the next window measures the rate anew.
    pub fn timed_out(&mut self, got: usize, now: Instant) -> Option<usize> {
        if got >= MIN_GATHER {
            // The window goes on: the reads that time out count in it, so a stream that is
            // no flood (under a quarter of the mark a hold) is measured as one and leaves.
            return None;
        }
        self.window_start = now;
        self.window_bytes = 0;
        self.provisional = false;
        self.set(1)
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

    /// Feeds `rate` bytes/s in 150-byte messages for `ms`, reading whenever the policy allows
    /// (at once, after a pause, or once the mark's bytes are there) and taking everything
    /// that arrived since the last read; returns the reads made.
    fn steady(g: &mut Gather, t: &mut Instant, rate: f64, ms: u64) -> usize {
        let end = *t + Duration::from_millis(ms);
        let each = Duration::from_secs_f64(150.0 / rate);
        let mut last = *t;
        let mut reads = 0;
        while *t < end {
            let need = g.mark.max(150) as f64;
            *t = (*t + each).max(last + Duration::from_secs_f64(need / rate));
            let n = (rate * t.saturating_duration_since(last).as_secs_f64()) as usize;
            last = *t;
            reads += 1;
            if let Some(at) = g.read(n, *t).pause_until {
                *t = at.max(*t);
            }
        }
        reads
    }

    #[test]
    fn a_trickle_is_read_at_its_first_byte_a_stream_in_pauses_a_flood_by_the_mark() {
        let mut t = Instant::now();
        let mut g = Gather::new(HOLD, t);
        // 1,000 messages of 150 bytes a second: every message read as it comes.
        let reads = steady(&mut g, &mut t, 150_000.0, 100);
        assert!(reads >= 95, "{reads}");
        assert_eq!((g.per_hold, g.mark), (0, 1));
        // 120,000 a second (18 MB/s): about one read a hold, not one a message, no mark.
        steady(&mut g, &mut t, 18e6, 20);
        let reads = steady(&mut g, &mut t, 18e6, 100);
        assert!(reads <= 250, "{reads} reads in 100 ms");
        assert_eq!(g.mark, 1);
        // A backlog drained at 1 GB/s: the largest mark, reads of it.
        steady(&mut g, &mut t, 1e9, 20);
        assert_eq!(g.mark, MAX_GATHER);
        let reads = steady(&mut g, &mut t, 1e9, 100);
        assert!(
            reads <= 100_000_000 / MAX_GATHER + 10,
            "{reads} reads in 100 ms"
        );
        // The flood stops: the wait times out, and every byte wakes again.
        assert_eq!(g.timed_out(300, t), Some(1));
        steady(&mut g, &mut t, 150_000.0, 100);
        assert_eq!((g.per_hold, g.mark), (0, 1));
    }

    #[test]
    fn a_read_of_a_marks_worth_is_a_flood_at_once_and_a_window_undoes_it_for_a_stream() {
        let mut t = Instant::now();
        let mut g = Gather::new(HOLD, t);
        // The first read after a pause of the process finds a backlog.
        let next = g.read(MAX_GATHER * 4, t);
        assert_eq!((next.mark, next.pause_until), (Some(MAX_GATHER), None));
        assert_eq!(g.mark, MAX_GATHER);
        // Then a stream of 1,000 messages a second: the window's rate takes the mark away.
        t += WINDOW;
        g.read(150, t);
        assert_eq!(g.mark, 1);
        // A provisional mark is kept only by a full flood: 20 KiB a hold (which keeps a
        // measured flood through a stall) does not keep it.
        let mut g = Gather::new(HOLD, t);
        g.read(MAX_GATHER * 2, t);
        assert_eq!(g.mark, MAX_GATHER);
        t += WINDOW;
        assert_eq!(g.read(200 << 10, t).mark, Some(1));
        // A stream read in pauses (its rate measured) is not taken for a flood by one late
        // read of a mark's worth.
        steady(&mut g, &mut t, 18e6, 30);
        assert_eq!(g.mark, 1);
        assert_eq!(g.read(MAX_GATHER * 2, t).mark, None);
        assert_eq!(g.mark, 1);
    }

    #[test]
    fn a_read_that_found_a_holds_worth_reads_on() {
        let t = Instant::now();
        let mut g = Gather::new(HOLD, t);
        // 20 KiB in the first window: 2 KiB a hold.
        assert_eq!(g.read(20 << 10, t + WINDOW).pause_until, None);
        assert_eq!(g.read(100, t + WINDOW).pause_until, Some(t + WINDOW + HOLD));
    }

    #[test]
    fn a_stall_in_a_flood_keeps_the_mark() {
        let mut t = Instant::now();
        let mut g = Gather::new(HOLD, t);
        steady(&mut g, &mut t, 1e9, 100);
        assert_eq!(g.mark, MAX_GATHER);
        // The wait timed out with 20 KiB there: the mark stays.
        assert_eq!(g.timed_out(20 << 10, t), None);
        assert_eq!(g.mark, MAX_GATHER);
        // No pause while a mark is set: the mark gathers.
        assert_eq!(g.read(100, t).pause_until, None);
        // A window with the stall in it (20 KiB a hold) is still a flood.
        t += WINDOW;
        assert_eq!(g.read(200 << 10, t).mark, None);
        assert_eq!(g.mark, MAX_GATHER);
        // Under a quarter of the mark a hold, it is a stream again: read in pauses.
        t += WINDOW;
        assert_eq!(g.read(100 << 10, t).mark, Some(1));
        // Never a flood from a stream at the same rate.
        t += WINDOW;
        assert_eq!(g.read(200 << 10, t).mark, None);
        assert_eq!(g.mark, 1);
    }

    #[test]
    fn a_stream_whose_waits_all_time_out_leaves_the_flood() {
        let mut t = Instant::now();
        let mut g = Gather::new(HOLD, t);
        steady(&mut g, &mut t, 1e9, 100);
        assert_eq!(g.mark, MAX_GATHER);
        // Then 10 MB/s: every wait for the mark times out with 40 KB there, and the reads
        // that follow come sooner than a window; the window still fills and measures it.
        let mut marks = Vec::new();
        for _ in 0..10 {
            t += g.fallback();
            let got = 40_000;
            assert_eq!(g.timed_out(got, t), None);
            marks.extend(g.read(got, t).mark);
        }
        assert_eq!(marks, [1], "read in pauses again within a window or so");
    }

    #[test]
    fn a_hold_of_zero_never_gathers() {
        let t = Instant::now();
        let mut g = Gather::new(Duration::ZERO, t);
        let none = Next {
            mark: None,
            pause_until: None,
        };
        assert_eq!(g.read(1 << 20, t + WINDOW), none);
        assert_eq!(g.read(1, t + WINDOW * 2), none);
        assert_eq!(g.mark, 1);
    }
}
