//! The connect ramp and a connection's life: connects at --connect-rate within
//! --max-connecting, CONNECT and CONNACK, failed attempts and their retries, losses and
//! reconnects, the close.

use super::*;

/// The pace of the connect ramp: one connect every `interval` (a worker's share of
/// `--connect-rate`; `None`: as fast as the slots allow), as tokens that do not pile up
/// while the ramp waits (on `--max-connecting`, or for retries). A dense ramp (an interval
/// under [`RAMP_GATHER`]) starts its connects in groups on a 10 ms grid, a wake-up each,
/// not a wake-up per connect: the rate is the same, and no connect starts early.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tokens {
    pub interval: Option<Duration>,
    /// When the next connect may start.
    pub next: Instant,
}

/// The grid a dense ramp's connects gather on.
pub(super) const RAMP_GATHER: Duration = Duration::from_millis(10);

impl Tokens {
    /// Whether a connect may start at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.interval.is_none() || now >= self.next
    }

    /// When the ramp wakes for its next connect: the token's time, on a dense ramp rounded
    /// up to the grid from `base`.
    pub fn wake(&self, base: Instant) -> Instant {
        match self.interval {
            Some(iv) if iv < RAMP_GATHER => timers::on_grid(base, self.next, RAMP_GATHER),
            _ => self.next,
        }
    }

    /// A connect starts at `now`: the next one an interval later, and after a wait no
    /// earlier than one interval before `now` (one connect's worth banked, no burst; a
    /// dense ramp banks a grid step's worth, what its wake-up gathered).
    /// `origin`: the clock's origin, which `now - interval` must not pass.
    pub fn take(&mut self, now: Instant, origin: Instant) {
        if let Some(iv) = self.interval {
            let bank = iv.max(RAMP_GATHER);
            let floor = now - bank.min(now.saturating_duration_since(origin));
            self.next = self.next.max(floor) + iv;
        }
    }
}

impl<P: Producer> Worker<P> {
    pub(super) fn start_connects(&mut self, now: Instant) {
        self.slots_full = false;
        while let Some(&c) = self.ramp.front() {
            if !self.tokens.ready(now) {
                break;
            }
            if !self
                .shared
                .take_connect_slot(self.s.ramp.max_connecting as u64)
            {
                self.slots_full = true;
                break;
            }
            self.tokens.take(now, self.shared.epoch);
            self.ramp.pop_front();
            self.start_connect(c, now);
            if !matches!(
                self.conns[c as usize].phase,
                Phase::Connecting | Phase::AwaitConnack
            ) {
                self.shared.give_connect_slot(); // it failed at once
            }
        }
    }

    /// A connection of this worker got its CONNACK or failed before: its slot is free.
    pub(super) fn connect_ended(&mut self) {
        self.connecting = self.connecting.saturating_sub(1);
        self.shared.give_connect_slot();
    }

    pub(super) fn start_connect(&mut self, c: u32, now: Instant) {
        let s = &self.s.conn;
        let conn = &mut self.conns[c as usize];
        conn.attempt += 1;
        conn.generation += 1;
        conn.attempt_started = now;
        conn.tcp_at = None;
        conn.connect_at = None;
        self.stats.conns.attempts += 1;
        self.stats.conns.first_attempt.get_or_insert(now);
        let addr = s.addrs[(conn.attempt as usize - 1) % s.addrs.len().max(1)];
        let source = (!s.source_ips.is_empty())
            .then(|| s.source_ips[(conn.index % s.source_ips.len() as u64) as usize]);
        match sys::connect(addr, source, s.tcp_nodelay) {
            Ok(mut sock) => {
                // Writability says the connect completed; after that only a blocked flush
                // watches it (every ACK of a write would be an event otherwise).
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    Token(c as usize),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.fail_attempt(c, ConnectFailure::of_io(&e), now);
                    return;
                }
                let conn = &mut self.conns[c as usize];
                conn.sock = Some(sock);
                conn.watch_write = true;
                conn.phase = Phase::Connecting;
                let gen = conn.generation;
                self.connecting += 1;
                self.timers.push(Reverse((
                    now + s.connect_timeout,
                    TimerKind::ConnectTimeout,
                    c,
                    gen,
                )));
            }
            Err(e) => self.fail_attempt(c, ConnectFailure::of_io(&e), now),
        }
    }

    /// The connection's TCP connect finished (or failed): send CONNECT.
    pub(super) fn on_connected_tcp(&mut self, c: u32, now: Instant) {
        let conn = &mut self.conns[c as usize];
        let Some(sock) = conn.sock.as_mut() else {
            return;
        };
        // Writable after a non-blocking connect means it completed; SO_ERROR says how.
        match sock.take_error() {
            Ok(Some(e)) | Err(e) => return self.fail_attempt(c, ConnectFailure::of_io(&e), now),
            Ok(None) => {}
        }
        conn.tcp_at = Some(now);
        let tcp_us = micros(now.saturating_duration_since(conn.attempt_started)).max(1);
        self.stats.histos.tcp_us.saturating_record(tcp_us);
        if self
            .poll
            .registry()
            .reregister(sock, Token(c as usize), Interest::READABLE)
            .is_ok()
        {
            conn.watch_write = false;
        }
        if let Some(t) = &self.s.conn.tls {
            // The handshake runs under the CONNECT, which rustls holds until it is done.
            match tls::connect(t) {
                Ok(tc) => conn.tls = Some(Box::new(tc)),
                Err(e) => return self.fail_attempt(c, ConnectFailure::Tls(e), now),
            }
        }
        let fleet_ix = self.conns[c as usize].index;
        let index = self
            .sub_index(fleet_ix)
            .unwrap_or_else(|| self.s.client_index(fleet_ix));
        let conn = &mut self.conns[c as usize];
        let s = &self.s.conn;
        let mut id = Vec::with_capacity(32);
        s.client_id.render_into(index, b"", &mut id);
        let id = String::from_utf8_lossy(&id);
        let keep_alive = s.keep_alive.as_secs().min(u16::MAX as u64) as u16;
        let credentials = s
            .credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        let packet = match &s.mqtt5 {
            Some(v5) => {
                packets::connect_v5(&id, keep_alive, s.clean_session, credentials, &v5.connect)
            }
            None => packets::connect(&id, keep_alive, s.clean_session, credentials),
        };
        conn.out.push_control(&packet);
        conn.phase = Phase::AwaitConnack;
        if conn.tls.is_none() {
            conn.connect_at = Some(now);
        }
        self.flush(c, now);
    }

    pub(super) fn on_connack(&mut self, c: u32, code: u8, session_present: bool, now: Instant) {
        if code != 0 {
            let code = if self.s.conn.mqtt5.is_some() {
                ConnackCode::from_v5_code(code)
            } else {
                ConnackCode::from_code(code)
            };
            return self.fail_attempt(c, ConnectFailure::Connack(code), now);
        }
        self.connect_ended();
        let conn = &mut self.conns[c as usize];
        if let Some(t) = conn.connect_at {
            let us = micros(now.saturating_duration_since(t)).max(1);
            self.stats.histos.connack_us.saturating_record(us);
        }
        // Up before: this is a reconnect after a loss.
        let reconnect = conn.up_at.is_some();
        conn.phase = Phase::Up;
        conn.up_at = Some(now);
        conn.last_out = now;
        conn.last_in = now;
        conn.ping = None;
        conn.acked_since_up = false;
        self.up += 1;
        self.unpaced_idle = false; // its devices have room now
        let gen = conn.generation;
        if reconnect {
            let st = &mut self.stats.conns;
            st.reconnects += 1;
            st.reconnected += u64::from(!conn.reconnected);
            st.churn_reconnects += u64::from(std::mem::replace(&mut conn.churned, false));
            let us = micros(now.saturating_duration_since(conn.attempt_started)).max(1);
            self.stats.histos.reconnect_us.saturating_record(us);
            conn.reconnected = true;
            conn.reconnect_attempt = 0;
            let back = conn.id_watch.back();
            if back.confirmed {
                // Closed by a broker that took the reconnect at once: it was not going away.
                st.takeovers += 1;
                self.shared
                    .collisions
                    .taken_over(conn.index, Takeover::Likely);
            }
            if let Some(t) = conn.down_since.take() {
                st.disconnected += now.saturating_duration_since(t);
            }
            if !self.s.conn.clean_session && !session_present {
                st.sessions_lost += 1;
            }
            self.outage_back(c, now);
            let conn = &mut self.conns[c as usize];
            // DUP only within the session that may hold them: in a new one (the broker
            // lost it, or a clean session) they are new messages.
            let replayed = conn.put_replay(
                !self.s.conn.clean_session && session_present,
                self.s.conn.mqtt5.is_some(),
            );
            self.stats.counts.pubrels_resent += replayed.pubrels;
        } else {
            self.stats.conns.connected += 1;
            if !self.s.conn.clean_session && session_present {
                self.stats.conns.sessions_resumed += 1;
            }
            let _ = self
                .stats
                .histos
                .connect_us
                .record(micros(now - conn.attempt_started).max(1));
            self.settle(now);
        }
        let keep_alive = self.conns[c as usize].keep_alive;
        if !keep_alive.is_zero() {
            self.keep_alive_timer(now + keep_alive, c, gen);
        }
        if reconnect {
            // What fell due while it was down goes out now (beyond the offline buffer:
            // dropped), after the replay.
            self.bound_offline(c);
            self.mark_dirty(c);
            self.report(c, Work::Reconnected);
            if self.phase != WorkerPhase::Generating {
                self.drain_check.push(c);
            }
            return;
        }
        if self.phase != WorkerPhase::Generating {
            return; // generation ended meanwhile: the drain closes it
        }
        // Generation starts when the ramp is over (the anchor), so every device starts at its
        // first slot: what the user asked for is N x r x D points, whatever the ramp took.
        let devices = self.conns[c as usize].devices.clone();
        for dl in devices {
            let d = self.d0 + dl as u64;
            let dev = &mut self.devices[dl as usize];
            if dev.state == DevState::Waiting {
                dev.state = DevState::Active;
                dev.next_slot = 0;
                // A device with nothing to send (more devices than points) is done at once,
                // not when its first slot comes round.
                if self.s.schedule.next_points(d, 0) == 0 {
                    self.finish(dl);
                }
            }
        }
    }

    /// One more connection is up or given up; the last one ends the ramp and anchors
    /// generation, `--start-delay` later, for every worker.
    pub(super) fn settle(&mut self, now: Instant) {
        let settled = self.shared.settled.fetch_add(1, Ordering::AcqRel) + 1;
        if settled >= self.s.connections {
            let ns = now.saturating_duration_since(self.shared.epoch).as_nanos() as u64 + 1;
            let _ =
                self.shared
                    .settled_ns
                    .compare_exchange(0, ns, Ordering::AcqRel, Ordering::Acquire);
            let a = self.shared.set_anchor(now + self.s.start_delay);
            self.set_anchor(a);
            // Workers asleep until their next keep-alive start generating now.
            self.shared.control.wake_all();
        }
    }

    pub(super) fn fail_attempt(&mut self, c: u32, f: ConnectFailure, now: Instant) {
        if matches!(
            self.conns[c as usize].phase,
            Phase::Connecting | Phase::AwaitConnack
        ) {
            self.connect_ended();
        }
        let conn = &mut self.conns[c as usize];
        conn.tls = None;
        conn.close_notify_sent = false;
        if let Some(mut sock) = conn.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        conn.out.abandon().for_each(drop);
        conn.inbuf.clear();
        conn.generation += 1;
        *self.stats.conns.failures.entry(f.clone()).or_default() += 1;
        // Up before: a reconnect, tried until the run ends unless the broker refuses for good.
        let reconnecting = conn.up_at.is_some();
        if reconnecting {
            conn.id_watch.failed_attempt();
        }
        let down_too_long = self.s.reconnect.as_ref().is_some_and(|r| {
            conn.down_since
                .is_some_and(|t| now.saturating_duration_since(t) >= r.give_up_after)
        });
        let retry = if reconnecting {
            !f.is_fatal() && self.phase != WorkerPhase::Done && !down_too_long
        } else {
            !f.is_fatal()
                && conn.attempt <= self.s.ramp.connect_retries
                && self.phase == WorkerPhase::Generating
        };
        if retry {
            let delay = if reconnecting {
                conn.reconnect_attempt += 1;
                let r = self.s.reconnect.as_ref();
                let (lo, hi) = r.map_or((self.s.ramp.backoff_base, self.s.ramp.backoff_max), |r| {
                    (r.backoff_min, r.backoff_max)
                });
                let n = conn.reconnect_attempt;
                self.backoff(lo, hi, n)
            } else {
                let n = conn.attempt;
                self.backoff(self.s.ramp.backoff_base, self.s.ramp.backoff_max, n)
            };
            let conn = &mut self.conns[c as usize];
            conn.phase = Phase::Backoff;
            let gen = conn.generation;
            self.timers
                .push(Reverse((now + delay, TimerKind::Retry, c, gen)));
        } else {
            conn.phase = Phase::Done;
            self.done_conns += 1;
            let fatal = f.is_fatal() && f.is_refusal();
            *self.stats.conns.gave_up.entry(f).or_default() += 1;
            if reconnecting {
                self.stats.conns.down_at_end += 1;
                self.stats.conns.refused_on_reconnect += u64::from(fatal);
                self.stats.conns.down_too_long += u64::from(down_too_long);
                if let Some(t) = conn.down_since.take() {
                    self.stats.conns.disconnected += now.saturating_duration_since(t);
                }
                conn.replay = None;
                conn.inflight.abandon().for_each(drop);
            } else {
                self.stats.conns.failed += 1;
                self.settle(now);
            }
            self.devices_gone(c);
        }
    }

    /// A connection that was up is gone: it reconnects when it still has something to
    /// deliver, else it is done.
    pub(super) fn lose(&mut self, c: u32, kind: LostKind, now: Instant) {
        let was_up = self.conns[c as usize].phase == Phase::Up;
        if was_up {
            self.outage_loss(c, now);
        }
        // A reset after our DISCONNECT: the broker dropped us before it read all we wrote.
        let reset_closing = self.conns[c as usize].phase == Phase::Closing;
        let needed = {
            let conn = &self.conns[c as usize];
            !conn.inflight.is_empty()
                || conn.unflushed()
                || conn.owing > 0
                || (self.phase == WorkerPhase::Generating && self.s.hold.is_some())
                // A subscriber is needed until generation ends: it is there to receive.
                || (self.phase == WorkerPhase::Generating && conn.role == Role::Subscriber)
                || (self.phase == WorkerPhase::Generating
                    && conn
                        .devices
                        .clone()
                        .any(|dl| !matches!(self.devices[dl as usize].state, DevState::Done)))
        };
        let conn = &mut self.conns[c as usize];
        // Progress: a PUBACK since it came up, or up a while with nothing left waiting for one
        // (QoS 0, or a sparse QoS 1 device between its messages).
        let up_a_while = conn
            .up_at
            .is_some_and(|t| now.saturating_duration_since(t) >= PROGRESS_UPTIME);
        let progress = conn.acked_since_up
            || (up_a_while && (!self.qos.acknowledged() || conn.inflight.is_empty()));
        conn.losses_in_a_row = if progress {
            1
        } else {
            conn.losses_in_a_row + 1
        };
        let flapping = conn.losses_in_a_row >= MAX_LOSSES_WITHOUT_PROGRESS;
        let takeover = self.takeover(&kind, was_up);
        let within = self.takeover_soon();
        let conn = &mut self.conns[c as usize];
        let soon = conn
            .up_at
            .is_some_and(|t| now.saturating_duration_since(t) < within);
        // Taken over again shortly after it came back from a takeover: another client keeps
        // taking this client id, and coming back would take it from that client in turn.
        // Found now, it takes the id back once more, so that the other client sees the
        // same (see `crate::takeover`); found before, it gives up.
        let (in_use, newly_in_use) = match conn.id_watch.lost(takeover, soon) {
            crate::takeover::Loss::Reconnect => (false, false),
            crate::takeover::Loss::InUse { newly } => (true, newly),
        };
        // A likely takeover counts once the broker takes the reconnect at once (see
        // `on_connack`), or now when the pattern names the client id in use.
        if let Some(how) = takeover.filter(|h| *h == Takeover::Said || in_use) {
            self.stats.conns.takeovers += 1;
            self.shared.collisions.taken_over(conn.index, how);
        }
        if newly_in_use {
            self.stats.conns.client_id_in_use += 1;
            self.stats.conns.first_in_use.get_or_insert(conn.index);
            self.shared.collisions.in_use(conn.index);
        }
        let gives_up_the_id = in_use && !newly_in_use;
        let reconnect = self.s.reconnect.is_some()
            && was_up
            && needed
            && !flapping
            && !gives_up_the_id
            && self.phase != WorkerPhase::Done
            && !self.shared.control.abort.load(Ordering::Relaxed);
        self.sub_lost(c);
        let conn = &mut self.conns[c as usize];
        let lost = crate::error::Lost {
            takeover,
            ..conn.lost(kind, now)
        };
        conn.tls = None;
        conn.close_notify_sent = false;
        if let Some(mut sock) = conn.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        if reconnect {
            conn.take_replay(self.qos);
            conn.inbuf.clear();
            conn.ping = None;
            conn.blocked = false;
            conn.watch_write = false;
            conn.shut_write = false;
            conn.generation += 1;
            conn.down_since = Some(now);
            conn.reconnect_attempt = 1;
            self.up = self.up.saturating_sub(1);
            let first = !std::mem::replace(&mut conn.lost_before, true);
            self.stats.conns.record_loss(conn.index, lost, first);
            let r = self.s.reconnect.as_ref().expect("reconnect is on");
            let (lo, hi) = (r.backoff_min, r.backoff_max);
            let delay = self.backoff(lo, hi, 1);
            let conn = &mut self.conns[c as usize];
            conn.phase = Phase::Backoff;
            let gen = conn.generation;
            self.timers
                .push(Reverse((now + delay, TimerKind::Retry, c, gen)));
            return;
        }
        if self.s.reconnect.is_some()
            && (was_up && (needed || !self.qos.acknowledged()) || reset_closing)
        {
            // Given up: its devices' points stay unsent, failed or dropped. At QoS 0 a
            // connection that ends lost is as bad with nothing left to send: what it wrote
            // last may never have been read.
            self.stats.conns.down_at_end += 1;
            self.stats.conns.flapping += u64::from(flapping);
            conn.replay = None;
        }
        // Unwritten messages stay enqueued-not-sent (unsent); written and unacknowledged
        // ones stay sent-not-acked (failed). Nothing to move: the counts already say it.
        conn.out.abandon().for_each(drop);
        conn.inflight.abandon().for_each(drop);
        conn.phase = Phase::Done;
        conn.generation += 1;
        self.done_conns += 1;
        self.up = self.up.saturating_sub(1);
        let first = !std::mem::replace(&mut conn.lost_before, true);
        self.stats.conns.record_loss(conn.index, lost, first);
        self.devices_gone(c);
    }

    /// Closes a connection that is not up (generation ended during the ramp) or that has
    /// finished its goodbye.
    pub(super) fn close(&mut self, c: u32) {
        if matches!(
            self.conns[c as usize].phase,
            Phase::Connecting | Phase::AwaitConnack
        ) {
            self.connect_ended();
        }
        let conn = &mut self.conns[c as usize];
        if let Some(t) = conn.down_since.take() {
            // Lost, and the run ended before it came back.
            self.stats.conns.down_at_end += 1;
            self.stats.conns.disconnected += t.elapsed();
            conn.replay = None;
        }
        if conn.phase == Phase::Up || conn.phase == Phase::Closing {
            self.up = self.up.saturating_sub(1);
        }
        conn.tls = None;
        conn.close_notify_sent = false;
        if let Some(mut sock) = conn.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        conn.out.abandon().for_each(drop);
        conn.inflight.abandon().for_each(drop);
        conn.phase = Phase::Done;
        conn.generation += 1;
        self.done_conns += 1;
    }

    /// A socket error on connection `c`, in whatever phase it is.
    pub(super) fn io_error(&mut self, c: u32, e: &io::Error, now: Instant) {
        match self.conns[c as usize].phase {
            Phase::Connecting | Phase::AwaitConnack => {
                self.fail_attempt(c, ConnectFailure::of_io(e), now)
            }
            Phase::Up => self.lose(c, LostKind::of_io(e), now),
            Phase::Closing if e.kind() == io::ErrorKind::ConnectionReset => {
                // A reset after our DISCONNECT: the broker had dropped us before it read
                // everything we wrote.
                self.lose(c, LostKind::of_io(e), now)
            }
            Phase::Closing => self.close(c),
            _ => {}
        }
    }

    /// The broker closed connection `c`.
    pub(super) fn closed(&mut self, c: u32, now: Instant) {
        match self.conns[c as usize].phase {
            Phase::Connecting | Phase::AwaitConnack => {
                self.fail_attempt(c, ConnectFailure::ClosedBeforeConnack, now)
            }
            Phase::Up => self.lose(c, LostKind::Closed, now),
            Phase::Closing => self.close(c),
            _ => {}
        }
    }

    /// What the broker sent connection `c` is no valid TLS.
    pub(super) fn bad_tls(&mut self, c: u32, e: &io::Error, now: Instant) {
        match self.conns[c as usize].phase {
            Phase::Connecting | Phase::AwaitConnack => {
                self.fail_attempt(c, ConnectFailure::Tls(e.to_string()), now)
            }
            Phase::Up => self.lose(c, LostKind::Other(format!("TLS: {e}")), now),
            Phase::Closing => self.close(c),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects the ramp starts from `from` to `to`, stepping a synthetic clock by 1 ms.
    fn connects(t: &mut Tokens, origin: Instant, from: Duration, to: Duration) -> u32 {
        let mut n = 0;
        let mut at = from;
        while at < to {
            let now = origin + at;
            while t.ready(now) {
                t.take(now, origin);
                n += 1;
                assert!(n < 100_000, "tokens never run out");
            }
            at += Duration::from_millis(1);
        }
        n
    }

    #[test]
    fn the_ramp_starts_connects_at_its_rate_and_banks_no_burst_while_it_waits() {
        let origin = Instant::now();
        let mut t = Tokens {
            interval: Some(Duration::from_millis(10)),
            next: origin,
        };
        // 100 connects a second: 100 in the first second.
        assert_eq!(
            connects(&mut t, origin, Duration::ZERO, Duration::from_secs(1)),
            100
        );
        // The ramp then waits 5 s (every slot taken): 500 tokens' worth of time, of which
        // one connect is banked, not 500 at once.
        let back = origin + Duration::from_secs(6);
        let mut burst = 0;
        while t.ready(back) {
            t.take(back, origin);
            burst += 1;
        }
        assert_eq!(burst, 2, "the connect due now and one banked");
        // And the pace goes on: 100 a second.
        let n = connects(
            &mut t,
            origin,
            Duration::from_secs(6) + Duration::from_millis(1),
            Duration::from_secs(7) + Duration::from_millis(1),
        );
        assert_eq!(n, 100);
    }

    #[test]
    fn a_dense_ramp_gathers_its_connects_on_the_grid_at_the_same_rate() {
        let origin = Instant::now();
        let mut t = Tokens {
            interval: Some(Duration::from_millis(2)),
            next: origin,
        };
        // 500 a second, woken only when the grid says: 5 connects a wake-up, 500 a second
        // (the tokens of 0 to 1 s inclusive: 501).
        let (mut n, mut wakes) = (0, 0);
        let mut now = origin;
        while now <= origin + Duration::from_secs(1) {
            wakes += 1;
            while t.ready(now) {
                t.take(now, origin);
                n += 1;
            }
            let w = t.wake(origin);
            assert!(w >= t.next, "never before the token");
            now = w;
        }
        assert_eq!(n, 501, "connects");
        assert_eq!(wakes, 101, "wake-ups");
        // 2,000 a second (a 500 µs interval): 20 a wake-up, the whole rate.
        let mut t = Tokens {
            interval: Some(Duration::from_micros(500)),
            next: origin,
        };
        let (mut n, mut now) = (0, origin);
        while now <= origin + Duration::from_secs(1) {
            while t.ready(now) {
                t.take(now, origin);
                n += 1;
            }
            now = t.wake(origin);
        }
        assert_eq!(n, 2001, "connects");
        // A sparse ramp wakes on its token's time.
        let t = Tokens {
            interval: Some(Duration::from_millis(20)),
            next: origin + Duration::from_millis(3),
        };
        assert_eq!(t.wake(origin), origin + Duration::from_millis(3));
    }

    #[test]
    fn an_unpaced_ramp_is_always_ready() {
        let origin = Instant::now();
        let mut t = Tokens {
            interval: None,
            next: origin,
        };
        for _ in 0..1000 {
            assert!(t.ready(origin));
            t.take(origin, origin);
        }
    }
}
