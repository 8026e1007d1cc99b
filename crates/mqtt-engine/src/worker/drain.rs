//! The end of generation and the drain: what devices still owe is written or dropped,
//! connections say DISCONNECT once everything is out and acknowledged, and a deadline or an
//! abort cuts the rest short, counted.

use super::*;

impl<P: Producer> Worker<P> {
    pub(super) fn generation_over(&self, now: Instant) -> bool {
        if self.shared.control.stop.load(Ordering::Relaxed) {
            return true;
        }
        // Before the anchor the ramp is still on: devices of other connections may yet come
        // up, and connections with nothing to send are load all the same.
        if self.anchor.is_none() {
            return false;
        }
        if let (Some(a), Some(h)) = (self.anchor, self.s.hold.as_ref()) {
            return now >= a + h.duration; // held connections: the hold ends it
        }
        // A subscriber fleet has no devices: it receives until it is stopped.
        if self.live_devices == 0 && self.sub.is_none() {
            return true;
        }
        // Unpaced, --duration ends generation by the clock; paced, each device's schedule ends.
        match (self.anchor, self.s.schedule.duration()) {
            (Some(a), Some(d)) if !self.paced => now >= a + d,
            _ => false,
        }
    }

    /// Generation is over: what devices still owed is dropped, connections not up yet are
    /// given up, and the drain starts.
    pub(super) fn end_generation(&mut self, now: Instant) {
        self.stats.generation_end = Some(now);
        if self.s.hold.is_some() {
            let up = |c: &&Conn| c.phase == Phase::Up;
            self.stats.conns.up_at_end = self.conns.iter().filter(up).count() as u64;
            self.stats.conns.churning_at_end =
                self.conns.iter().filter(|c| !up(c) && c.churned).count() as u64;
        }
        for dl in 0..self.devices.len() {
            let dev = self.devices[dl];
            if dev.state == DevState::Active && self.paced {
                let passed = self.passed_slot(dl as u32);
                if let Some(last) = passed {
                    let owed = (last + 1).saturating_sub(dev.next_slot);
                    self.stats.counts.points_dropped += self.owed_points(dl as u32, owed);
                }
            }
            if matches!(dev.state, DevState::Active | DevState::Waiting) {
                self.devices[dl].state = DevState::Done;
            }
        }
        self.live_devices = 0;
        if self.shared.control.stop.load(Ordering::Relaxed) {
            self.drop_owing();
        }
        for c in 0..self.conns.len() {
            match self.conns[c].phase {
                Phase::Idle | Phase::Connecting | Phase::AwaitConnack | Phase::Backoff
                    if self.conns[c].down_since.is_some() =>
                {
                    // Reconnecting: it delivers what it still holds in the drain, if it is
                    // back in time.
                    let conn = &self.conns[c];
                    let holds = conn.owing > 0
                        || !conn.inflight.is_empty()
                        || conn.replay.as_ref().is_some_and(|r| !r.frames.is_empty());
                    if !holds {
                        // Nothing of its own is lost: at QoS 1 every point it sent was
                        // acknowledged. (At QoS 0, what it wrote last may not have been read.)
                        if self.qos.acknowledged() {
                            if let Some(t) = self.conns[c].down_since.take() {
                                self.stats.conns.disconnected += now.saturating_duration_since(t);
                            }
                            self.conns[c].replay = None;
                        }
                        self.close(c as u32);
                    }
                }
                Phase::Idle | Phase::Connecting | Phase::AwaitConnack | Phase::Backoff => {
                    // The ramp was not over: this connection never came up.
                    self.stats.conns.not_up += 1;
                    self.close(c as u32);
                }
                _ => {}
            }
        }
        // Reconnects waiting for their turn keep it: they deliver what they hold in the drain.
        let conns = &self.conns;
        self.ramp.retain(|c| {
            conns[*c as usize].down_since.is_some() && conns[*c as usize].phase == Phase::Idle
        });
        self.drain_check = (0..self.conns.len() as u32).collect();
        self.phase = WorkerPhase::Draining {
            deadline: now + self.s.drain_timeout,
        };
    }

    /// During the drain: a connection with nothing left to write or acknowledge says
    /// DISCONNECT and waits for the broker to close; the worker is done when all are.
    pub(super) fn drain_step(&mut self, now: Instant) {
        if self.owing > 0 && self.shared.control.stop.load(Ordering::Relaxed) {
            self.drop_owing(); // a stop: what was owed is not written any more
        }
        let check = std::mem::take(&mut self.drain_check);
        for &c in &check {
            let conn = &mut self.conns[c as usize];
            match conn.phase {
                Phase::Up if conn.out.is_empty() && conn.inflight.is_empty() && conn.owing == 0 => {
                    conn.out.push_control(&packets::DISCONNECT);
                    conn.phase = Phase::Closing;
                    let gen = conn.generation;
                    self.timers.push(Reverse((
                        now + CLOSE_LINGER,
                        TimerKind::CloseLinger,
                        c,
                        gen,
                    )));
                    self.flush(c, now);
                    self.shut_write(c);
                }
                Phase::Closing => self.shut_write(c),
                _ => {}
            }
        }
        let mut check = check;
        check.clear();
        if self.drain_check.is_empty() {
            self.drain_check = check; // keep the allocation
        }
        if self.done_conns >= self.conns.len() {
            self.phase = WorkerPhase::Done;
        }
    }

    /// The drain deadline passed: what is left is abandoned and counted as it stands.
    pub(super) fn cut_short(&mut self, _now: Instant) {
        self.drop_owing();
        for c in 0..self.conns.len() as u32 {
            let conn = &self.conns[c as usize];
            if conn.phase == Phase::Done {
                continue;
            }
            if conn.phase != Phase::Closing || conn.unflushed() {
                self.stats.cut_short = true;
            }
            self.close(c);
        }
        self.phase = WorkerPhase::Done;
    }

    pub(super) fn abandon_all(&mut self, now: Instant) {
        if self.stats.generation_end.is_none() {
            self.stats.generation_end = Some(now);
        }
        self.drop_owing();
        for c in 0..self.conns.len() as u32 {
            if self.conns[c as usize].phase != Phase::Done {
                if !self.conns[c as usize].out.is_empty()
                    || !self.conns[c as usize].inflight.is_empty()
                {
                    self.stats.cut_short = true;
                }
                self.close(c);
            }
        }
        self.phase = WorkerPhase::Done;
    }
}
