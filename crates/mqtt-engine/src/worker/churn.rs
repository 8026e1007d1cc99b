//! Held connections (`loadgen conn`): the churn (`--churn R`: R disconnects a second over
//! the fleet, each followed by a reconnect, spread evenly and round robin) and the storm
//! (`--storm EVERY`: every connection dropped at once, back through the reconnect backoff),
//! and the outages whose recovery the report times.
//!
//! ```text
//! timers heap --(TimerKind::Churn)--> ChurnCursor::due(now, is_up) --> connections to churn
//!             --(TimerKind::Storm)--> StormClock::due(now)          --> drop every one up
//! the loop: churn_out (DISCONNECT, close, back on the ramp) / storm_out (close, backoff)
//! ```
//!
//! The cursors are plain values over a given `now` (unit-tested with synthetic time); the
//! worker methods below act on what they return.

use super::*;

/// Churn slots walked in one go: a worker that fell far behind (stopped in a debugger,
/// starved of CPU) does not churn a burst to catch up; the missed slots are counted.
const CHURN_CATCH_UP: u32 = 16;

/// Where a worker's churn is: its slots at `origin + k x interval` (the fleet's rate spread
/// over its workers, each offset so that the fleet's slots interleave), its next slot, and
/// the connection the round robin reached.
#[derive(Debug, Clone)]
pub(super) struct ChurnCursor {
    interval: Duration,
    next: Instant,
    /// The next connection to look at (worker-local index).
    cursor: u32,
    conns: u32,
}

/// What a churn step found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct ChurnDue {
    /// Connections to disconnect now, in order.
    pub conns: Vec<u32>,
    /// Slots that came due with no connection up to churn.
    pub missed: u64,
}

impl ChurnCursor {
    /// A churn of `rate` disconnects a second over a fleet of `workers` workers, for worker
    /// `id` with `conns` connections, starting at `origin`. `None` when there is nothing to
    /// churn (no rate, or no connection).
    pub fn new(
        rate: f64,
        workers: usize,
        id: usize,
        conns: u32,
        fleet_conns: u64,
        origin: Instant,
    ) -> Option<ChurnCursor> {
        if rate.is_nan() || rate <= 0.0 || conns == 0 || fleet_conns == 0 {
            return None;
        }
        // This worker's share of the rate: by its share of the connections.
        let share = rate * conns as f64 / fleet_conns as f64;
        let interval = Duration::from_secs_f64(1.0 / share).min(Duration::from_secs(3600));
        // Offset by the worker's place, so that W workers' slots interleave evenly.
        let offset = interval.mul_f64(id as f64 / workers.max(1) as f64);
        Some(ChurnCursor {
            interval,
            next: origin + offset,
            cursor: 0,
            conns,
        })
    }

    /// When the next slot is due.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// The slots due at `now`: each takes the next connection, round robin, that
    /// `is_up` (connections still connecting or in a backoff are skipped, and so is one
    /// already taken in this step); a slot with none is missed.
    pub fn due(&mut self, now: Instant, mut is_up: impl FnMut(u32) -> bool) -> ChurnDue {
        let mut out = ChurnDue::default();
        let mut walked = 0u32;
        while self.next <= now {
            self.next += self.interval;
            walked += 1;
            if walked > CHURN_CATCH_UP {
                out.missed += 1;
                continue;
            }
            let mut found = None;
            for _ in 0..self.conns {
                let c = self.cursor;
                self.cursor = (self.cursor + 1) % self.conns;
                if is_up(c) && !out.conns.contains(&c) {
                    found = Some(c);
                    break;
                }
            }
            match found {
                Some(c) => out.conns.push(c),
                None => out.missed += 1,
            }
        }
        out
    }
}

/// When the storms come: every `every` after `origin`, at most `left` more times.
#[derive(Debug, Clone)]
pub(super) struct StormClock {
    every: Duration,
    next: Instant,
    left: u32,
}

impl StormClock {
    pub fn new(every: Duration, storms: u32, origin: Instant) -> Option<StormClock> {
        (storms > 0 && !every.is_zero()).then(|| StormClock {
            every,
            next: origin + every,
            left: storms,
        })
    }

    /// When the next storm comes (`None`: no more).
    pub fn next(&self) -> Option<Instant> {
        (self.left > 0).then_some(self.next)
    }

    /// Whether a storm is due at `now` (one at a time: a late worker does not storm twice).
    pub fn due(&mut self, now: Instant) -> bool {
        if self.left == 0 || now < self.next {
            return false;
        }
        self.left -= 1;
        while self.next <= now {
            self.next += self.every;
        }
        true
    }
}

impl<P: Producer> Worker<P> {
    /// Generation anchored: a hold's churn and storms start their clocks.
    pub(super) fn start_hold(&mut self, anchor: Instant) {
        let Some(h) = self.s.hold.clone() else {
            return;
        };
        if let Some(rate) = h.churn {
            self.churn = ChurnCursor::new(
                rate,
                self.s.workers,
                self.id,
                self.conns.len() as u32,
                self.s.connections,
                anchor,
            );
            if let Some(ch) = &self.churn {
                self.timers
                    .push(Reverse((ch.next(), TimerKind::Churn, 0, 0)));
            }
        }
        if let Some(every) = h.storm_every {
            self.storm = StormClock::new(every, h.storms, anchor);
            if let Some(at) = self.storm.as_ref().and_then(|s| s.next()) {
                self.timers.push(Reverse((at, TimerKind::Storm, 0, 0)));
            }
        }
    }

    /// The churn's timer: disconnects the connections due, and looks again at the next slot.
    pub(super) fn on_churn_timer(&mut self, now: Instant) {
        if self.phase != WorkerPhase::Generating {
            return;
        }
        let Some(mut ch) = self.churn.take() else {
            return;
        };
        let conns = &self.conns;
        let due = ch.due(now, |c| conns[c as usize].phase == Phase::Up);
        self.stats.conns.churn_missed += due.missed;
        self.timers
            .push(Reverse((ch.next(), TimerKind::Churn, 0, 0)));
        self.churn = Some(ch);
        for c in due.conns {
            self.churn_out(c, now);
        }
    }

    /// The storm's timer: every connection up is dropped at once.
    pub(super) fn on_storm_timer(&mut self, now: Instant) {
        if self.phase != WorkerPhase::Generating {
            return;
        }
        let Some(st) = self.storm.as_mut() else {
            return;
        };
        if !st.due(now) {
            if let Some(at) = st.next() {
                self.timers.push(Reverse((at, TimerKind::Storm, 0, 0)));
            }
            return;
        }
        if let Some(at) = st.next() {
            self.timers.push(Reverse((at, TimerKind::Storm, 0, 0)));
        }
        for c in 0..self.conns.len() as u32 {
            if self.conns[c as usize].phase == Phase::Up {
                self.storm_out(c, now);
            }
        }
    }

    /// Connection `c` leaves in order (DISCONNECT, then the socket closed) and goes back on
    /// the ramp at once: a reconnect of the churn's.
    fn churn_out(&mut self, c: u32, now: Instant) {
        self.conns[c as usize]
            .out
            .push_control(&packets::DISCONNECT);
        self.flush(c, now);
        self.dispatch(now);
        if self.conns[c as usize].phase != Phase::Up {
            return; // the write failed: lost meanwhile, the loss reconnects it
        }
        self.drop_conn(c, now);
        self.stats.conns.churned += 1;
        let conn = &mut self.conns[c as usize];
        conn.churned = true;
        conn.phase = Phase::Idle;
        self.ramp.push_back(c);
    }

    /// Connection `c` is dropped as a storm drops it (no DISCONNECT) and comes back after a
    /// reconnect backoff: an outage the report times.
    fn storm_out(&mut self, c: u32, now: Instant) {
        self.drop_conn(c, now);
        self.stats.conns.storm_drops += 1;
        self.outage_loss(c, now);
        let (lo, hi) = self
            .s
            .reconnect
            .as_ref()
            .map_or((self.s.ramp.backoff_base, self.s.ramp.backoff_max), |r| {
                (r.backoff_min, r.backoff_max)
            });
        let delay = self.backoff(lo, hi, 1);
        let conn = &mut self.conns[c as usize];
        conn.reconnect_attempt = 1;
        conn.phase = Phase::Backoff;
        let gen = conn.generation;
        self.timers
            .push(Reverse((now + delay, TimerKind::Retry, c, gen)));
    }

    /// Closes the socket of connection `c`, which was up, and marks it down since `now`.
    fn drop_conn(&mut self, c: u32, now: Instant) {
        let conn = &mut self.conns[c as usize];
        conn.tls = None;
        conn.close_notify_sent = false;
        if let Some(mut sock) = conn.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        conn.out.abandon().for_each(drop);
        conn.inbuf.clear();
        conn.ping = None;
        conn.blocked = false;
        conn.watch_write = false;
        conn.shut_write = false;
        conn.dirty = false;
        conn.generation += 1;
        conn.down_since = Some(now);
        self.up = self.up.saturating_sub(1);
    }

    /// Connection `c` is down by a loss or a storm: it joins the open outage, or opens one.
    pub(super) fn outage_loss(&mut self, c: u32, now: Instant) {
        if self.s.hold.is_none() || self.conns[c as usize].in_outage {
            return;
        }
        self.conns[c as usize].in_outage = true;
        self.down_in_outage += 1;
        let outages = &mut self.stats.conns.outages;
        let full = outages.len() >= crate::stats::OUTAGES_KEPT;
        match outages.last_mut() {
            Some(o) if o.recovered.is_none() => o.dropped += 1,
            Some(o) if full => {
                o.recovered = None;
                o.dropped += 1;
            }
            _ => outages.push(crate::stats::Outage {
                started: now,
                first_back: None,
                recovered: None,
                dropped: 1,
            }),
        }
    }

    /// Connection `c` is up again: when it was the last one of the outage down, the outage
    /// is over.
    pub(super) fn outage_back(&mut self, c: u32, now: Instant) {
        if !std::mem::replace(&mut self.conns[c as usize].in_outage, false) {
            return;
        }
        self.down_in_outage = self.down_in_outage.saturating_sub(1);
        if let Some(o) = self.stats.conns.outages.last_mut() {
            o.first_back.get_or_insert(now);
            if self.down_in_outage == 0 {
                o.recovered.get_or_insert(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn churn_slots_are_spread_evenly_not_in_bursts() {
        let t0 = Instant::now();
        // 100 a second over one worker of 1,000 connections: one every 10 ms.
        let mut ch = ChurnCursor::new(100.0, 1, 0, 1000, 1000, t0).expect("a churn");
        let mut at = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(1) {
            let due = ch.due(now, |_| true);
            assert!(due.conns.len() <= 1, "a burst at {:?}", now - t0);
            at.extend(due.conns.iter().map(|_| now - t0));
            now += ms(1);
        }
        assert_eq!(at.len(), 100);
        for w in at.windows(2) {
            assert_eq!(w[1] - w[0], ms(10), "slots {at:?}");
        }
    }

    #[test]
    fn workers_interleave_their_churn_slots() {
        let t0 = Instant::now();
        // 100 a second over 2 workers of 500 connections each: each 50 a second, 20 ms
        // apart, the second 10 ms after the first.
        let a = ChurnCursor::new(100.0, 2, 0, 500, 1000, t0).expect("a churn");
        let b = ChurnCursor::new(100.0, 2, 1, 500, 1000, t0).expect("a churn");
        assert_eq!(a.next(), t0);
        assert_eq!(b.next(), t0 + ms(10));
        assert_eq!(a.interval, ms(20));
    }

    #[test]
    fn churn_goes_round_robin_and_skips_connections_not_up() {
        let t0 = Instant::now();
        let mut ch = ChurnCursor::new(1000.0, 1, 0, 4, 4, t0).expect("a churn");
        // Connection 1 is still connecting.
        let up = |c: u32| c != 1;
        let mut order = Vec::new();
        for i in 0..6 {
            order.extend(ch.due(t0 + ms(i), up).conns);
        }
        assert_eq!(order, vec![0, 2, 3, 0, 2, 3]);
    }

    #[test]
    fn a_churn_slot_with_no_connection_up_is_missed_and_counted() {
        let t0 = Instant::now();
        let mut ch = ChurnCursor::new(1000.0, 1, 0, 3, 3, t0).expect("a churn");
        let due = ch.due(t0 + ms(2), |_| false);
        assert_eq!(due.conns, Vec::<u32>::new());
        assert_eq!(due.missed, 3);
        // Two slots due at once take two connections, never one twice.
        let mut ch = ChurnCursor::new(1000.0, 1, 0, 1, 1, t0).expect("a churn");
        let due = ch.due(t0 + ms(1), |_| true);
        assert_eq!(due.conns, vec![0]);
        assert_eq!(due.missed, 1);
    }

    #[test]
    fn a_churn_far_behind_does_not_burst_to_catch_up() {
        let t0 = Instant::now();
        let mut ch = ChurnCursor::new(1000.0, 1, 0, 1000, 1000, t0).expect("a churn");
        let due = ch.due(t0 + Duration::from_secs(1), |_| true);
        assert_eq!(due.conns.len(), CHURN_CATCH_UP as usize);
        assert_eq!(due.missed, 1001 - u64::from(CHURN_CATCH_UP));
        assert!(ch.next() > t0 + Duration::from_secs(1));
    }

    #[test]
    fn no_churn_without_a_rate_or_connections() {
        let t0 = Instant::now();
        assert!(ChurnCursor::new(0.0, 1, 0, 10, 10, t0).is_none());
        assert!(ChurnCursor::new(f64::NAN, 1, 0, 10, 10, t0).is_none());
        assert!(ChurnCursor::new(10.0, 2, 1, 0, 10, t0).is_none());
    }

    #[test]
    fn storms_come_every_interval_up_to_their_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut st = StormClock::new(s * 10, 2, t0).expect("storms");
        assert!(!st.due(t0 + s * 9));
        assert!(st.due(t0 + s * 10));
        assert!(!st.due(t0 + s * 10), "one storm at a time");
        assert_eq!(st.next(), Some(t0 + s * 20));
        // Late: one storm, not two, and the next on the grid.
        assert!(st.due(t0 + s * 35));
        assert_eq!(st.next(), None);
        assert!(!st.due(t0 + s * 100));
    }

    #[test]
    fn outages_of_workers_that_overlap_are_one() {
        use crate::stats::{merge_outages, Outage};
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let o = |a: u32, b: Option<u32>, n| Outage {
            started: t0 + s * a,
            first_back: b.map(|b| t0 + s * b),
            recovered: b.map(|b| t0 + s * b),
            dropped: n,
        };
        let mut a = vec![o(10, Some(13), 5), o(30, Some(31), 1)];
        merge_outages(&mut a, &[o(11, Some(14), 7), o(40, None, 2)]);
        // The first back is the earliest worker's, the recovery the latest's.
        let mut first = o(10, Some(14), 12);
        first.first_back = Some(t0 + s * 13);
        assert_eq!(a, vec![first, o(30, Some(31), 1), o(40, None, 2)]);
        assert_eq!(a[0].took(), Some(s * 4));
    }
}
