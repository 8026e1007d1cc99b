//! Timers: connect timeouts, keep-alives (PINGREQ and the broker's silence), retries after
//! a backoff, the close linger; and how a loss is told for a takeover.

use super::*;

impl<P: Producer> Worker<P> {
    /// The `n`th delay (from 1) of a backoff from `lo`, doubling up to `hi`, jittered over
    /// [0.5, 1.5) of it so that a fleet refused at once does not come back at once.
    pub(super) fn backoff(&mut self, lo: Duration, hi: Duration, n: u32) -> Duration {
        mqtt_wire::backoff::delay(lo, hi, n, &mut self.rng)
    }

    /// Whether losing a connection this way means another client took its client id.
    pub(super) fn takeover(&self, kind: &LostKind, was_up: bool) -> Option<Takeover> {
        // Under 3.1.1 a takeover only closes the socket, and so do MQTT 5 brokers that do
        // not send the DISCONNECT (Mosquitto 2.0): an orderly close, after the broker read
        // all we sent. A broker that refuses a packet (too large) closes in the middle of
        // it, with our bytes unread: a reset, not taken for a takeover. A closed fleet
        // connection is more likely its broker going away; one connection's client id is
        // the same in every copy of the run (a preset's `1`, or `loadgen-{i}` with one
        // device).
        let one_id = self.s.connections == 1 || !self.s.conn.client_id.has_index();
        match kind {
            LostKind::TakenOver => Some(Takeover::Said),
            LostKind::Closed if was_up && one_id => Some(Takeover::Likely),
            _ => None,
        }
    }

    /// How soon after its connect a takeover counts as "shortly after" (see
    /// [`crate::takeover`]).
    pub(super) fn takeover_soon(&self) -> Duration {
        let backoff = self
            .s
            .reconnect
            .as_ref()
            .map_or(Duration::ZERO, |r| r.backoff_min);
        crate::takeover::soon(backoff)
    }

    /// Sets connection `c`'s keep-alive timer to look at `at`, rounded up to the grid.
    pub(super) fn keep_alive_timer(&mut self, at: Instant, c: u32, gen: u32) {
        let at = on_grid(self.grid_base, at, KEEP_ALIVE_GRID);
        self.timers
            .push(Reverse((at, TimerKind::KeepAlive, c, gen)));
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, kind, c, gen))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match kind {
                TimerKind::Churn => {
                    self.on_churn_timer(now);
                    continue;
                }
                TimerKind::Storm => {
                    self.on_storm_timer(now);
                    continue;
                }
                _ => {}
            }
            let conn = &self.conns[c as usize];
            if conn.generation != gen {
                continue;
            }
            match kind {
                TimerKind::ConnectTimeout => {
                    if matches!(conn.phase, Phase::Connecting | Phase::AwaitConnack) {
                        self.fail_attempt(c, ConnectFailure::Timeout, now);
                    }
                }
                TimerKind::Retry => {
                    if conn.phase == Phase::Backoff {
                        self.conns[c as usize].phase = Phase::Idle;
                        self.ramp.push_front(c);
                    }
                }
                TimerKind::KeepAlive => match keep_alive(&mut self.conns[c as usize], now) {
                    KeepAlive::Off => {}
                    KeepAlive::Next { at, pinged } => {
                        if pinged {
                            self.mark_dirty(c);
                        }
                        self.keep_alive_timer(at, c, gen);
                    }
                    KeepAlive::Lost(kind) => self.lose(c, kind, now),
                },
                TimerKind::CloseLinger => {
                    if conn.phase == Phase::Closing {
                        self.close(c);
                    }
                }
                TimerKind::Churn | TimerKind::Storm => {} // routed above
            }
        }
    }
}

/// `at` rounded up to the next multiple of `grid` from `base`.
pub(super) fn on_grid(base: Instant, at: Instant, grid: Duration) -> Instant {
    let since = at.saturating_duration_since(base).as_nanos();
    let g = grid.as_nanos().max(1);
    let up = since.div_ceil(g) * g;
    base + Duration::from_nanos(u64::try_from(up).unwrap_or(u64::MAX))
}

/// What a connection's keep-alive timer finds.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum KeepAlive {
    /// The connection is not up: the timer lapses.
    Off,
    /// Look again at `at`; `pinged`: a PINGREQ was queued now (the connection has bytes to
    /// write).
    Next { at: Instant, pinged: bool },
    /// The broker is gone, this way.
    Lost(LostKind),
}

/// The keep-alive of `conn` at `now`, from its last write and read and its PINGREQ: queues
/// a PINGREQ after an interval of silence, and finds the connection lost when the broker
/// stopped reading or answering.
pub(super) fn keep_alive(conn: &mut Conn, now: Instant) -> KeepAlive {
    let ka = conn.keep_alive;
    if conn.phase != Phase::Up {
        return KeepAlive::Off;
    }
    let mut pinged = false;
    let at = match conn.ping {
        // Still queued behind our writes: lost only when the writes stopped moving (the
        // broker stopped reading), not while a busy broker reads them slowly.
        Some((_, _, false)) if now.saturating_duration_since(conn.last_out) >= ka => {
            return KeepAlive::Lost(LostKind::WriteStalled);
        }
        Some((_, _, false)) => conn.last_out + ka,
        // Written an interval ago, and nothing read since: the broker stopped answering.
        Some((written, _, true)) if now >= written + ka => {
            if conn.last_in <= written {
                return KeepAlive::Lost(LostKind::KeepAlive);
            }
            conn.ping = None; // it answered with something else first
            now + ka
        }
        Some((written, _, true)) => written + ka,
        // Silent either way for an interval: MQTT wants a packet from us, and we want to
        // know the broker is there (a stopped broker acknowledges nothing while the
        // socket still takes our writes).
        None if now >= conn.last_out.min(conn.last_in) + ka => {
            conn.out.push_control(&packets::PINGREQ);
            let end = conn.out.written() + conn.out.bytes() as u64;
            conn.ping = Some((now, end, false));
            pinged = true;
            now + ka
        }
        None => conn.last_out.min(conn.last_in) + ka,
    };
    KeepAlive::Next { at, pinged }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KA: Duration = Duration::from_secs(10);

    fn up(t0: Instant) -> Conn {
        let mut c = Conn::new(0, 0..1, 10, false, KA, t0);
        c.phase = Phase::Up;
        c
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn an_interval_of_silence_queues_one_pingreq() {
        let t0 = Instant::now();
        let mut c = up(t0);
        assert_eq!(
            keep_alive(&mut c, t0 + s(5)),
            KeepAlive::Next {
                at: t0 + s(10),
                pinged: false
            }
        );
        assert_eq!(
            keep_alive(&mut c, t0 + s(10)),
            KeepAlive::Next {
                at: t0 + s(20),
                pinged: true
            }
        );
        assert_eq!(c.out.bytes(), packets::PINGREQ.len());
        // Traffic either way keeps it quiet: a write at 8 s moves the next look to 18 s.
        let mut c = up(t0);
        c.last_out = t0 + s(8);
        c.last_in = t0 + s(9);
        assert_eq!(
            keep_alive(&mut c, t0 + s(10)),
            KeepAlive::Next {
                at: t0 + s(18),
                pinged: false
            }
        );
    }

    #[test]
    fn a_pingreq_stuck_behind_writes_that_stopped_moving_is_a_write_stall() {
        let t0 = Instant::now();
        let mut c = up(t0);
        keep_alive(&mut c, t0 + s(10));
        // Writes moved at 15 s: a slow broker, not a stopped one.
        c.last_out = t0 + s(15);
        assert_eq!(
            keep_alive(&mut c, t0 + s(20)),
            KeepAlive::Next {
                at: t0 + s(25),
                pinged: false
            }
        );
        assert_eq!(
            keep_alive(&mut c, t0 + s(25)),
            KeepAlive::Lost(LostKind::WriteStalled)
        );
    }

    #[test]
    fn a_pingreq_written_and_unanswered_for_an_interval_loses_the_connection() {
        let t0 = Instant::now();
        let mut c = up(t0);
        c.ping = Some((t0 + s(10), 2, true));
        assert_eq!(
            keep_alive(&mut c, t0 + s(19)),
            KeepAlive::Next {
                at: t0 + s(20),
                pinged: false
            }
        );
        assert_eq!(
            keep_alive(&mut c, t0 + s(20)),
            KeepAlive::Lost(LostKind::KeepAlive)
        );
        // Anything read after the PINGREQ answers it.
        c.last_in = t0 + s(12);
        assert_eq!(
            keep_alive(&mut c, t0 + s(20)),
            KeepAlive::Next {
                at: t0 + s(30),
                pinged: false
            }
        );
        assert_eq!(c.ping, None);
    }

    #[test]
    fn keep_alive_times_round_up_to_the_grid() {
        let t0 = Instant::now();
        let g = Duration::from_millis(10);
        let ms = Duration::from_millis;
        assert_eq!(on_grid(t0, t0, g), t0);
        assert_eq!(on_grid(t0, t0 + ms(1), g), t0 + ms(10));
        assert_eq!(on_grid(t0, t0 + ms(10), g), t0 + ms(10));
        assert_eq!(
            on_grid(t0, t0 + Duration::from_nanos(10_000_001), g),
            t0 + ms(20)
        );
        // Never earlier than asked, at most a grid later.
        for us in [0u64, 1, 9_999, 123_456, 5_000_003] {
            let at = t0 + Duration::from_micros(us);
            let r = on_grid(t0, at, g);
            assert!(r >= at && r - at < g, "{us}");
        }
    }

    #[test]
    fn a_connection_that_is_not_up_has_no_keep_alive() {
        let t0 = Instant::now();
        let mut c = up(t0);
        c.phase = Phase::Closing;
        assert_eq!(keep_alive(&mut c, t0 + s(100)), KeepAlive::Off);
        assert_eq!(c.out.bytes(), 0);
    }
}
