//! Socket I/O: writing a connection's outbox (plain or through TLS) and counting what went
//! out, reading what the broker sent, shutting our side after the DISCONNECT.

use super::*;

impl<P: Producer> Worker<P> {
    pub(super) fn mark_dirty(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(c);
        }
    }

    pub(super) fn flush_dirty(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for &c in &dirty {
            let conn = &mut self.conns[c as usize];
            conn.dirty = false;
            // `blocked` with nobody watching writability: the outbox was full (its devices
            // wait for room), not the socket. Flushing it is what makes room.
            if !conn.blocked || !conn.watch_write {
                self.flush(c, now);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// Writes what connection `c` has waiting; counts every message that went out whole.
    pub(super) fn flush(&mut self, c: u32, now: Instant) {
        let conn = &mut self.conns[c as usize];
        let records = conn.tls.as_ref().is_some_and(|t| t.wants_write());
        if conn.sock.is_some() && conn.out.is_empty() && !records {
            // Nothing to write: a connection that was full has room for what its devices owe.
            if std::mem::replace(&mut conn.blocked, false) {
                self.catch_up(c);
            }
            return;
        }
        let Worker {
            conns,
            stats,
            anchor,
            ..
        } = self;
        let conn = &mut conns[c as usize];
        let Some(sock) = conn.sock.as_mut() else {
            return;
        };
        if conn.out.is_empty() && !records {
            conn.blocked = false;
            return;
        }
        let before = conn.out.written();
        let paced = self.paced;
        let first_write = &mut conn.first_write;
        let mut io = tls::Io {
            sock,
            tls: conn.tls.as_deref_mut(),
        };
        let result = conn.out.flush(&mut io, |m| {
            if m.resend {
                // Counted when first written, on the connection that was lost.
                stats.counts.messages_resent += 1;
                return;
            }
            // Only messages count for the run's first and last write, not control packets
            // (the DISCONNECT of the drain).
            first_write.get_or_insert(now);
            if stats.first_write.is_none() {
                stats.first_write = Some(now);
            }
            stats.last_write = Some(now);
            stats.counts.points_sent += m.points as u64;
            stats.counts.messages_sent += 1;
            stats.counts.bytes_sent += m.bytes as u64;
            if paced {
                let lag = now.saturating_duration_since(m.scheduled);
                crate::stats::record_clamped(
                    &mut stats.histos.lag_us,
                    micros(lag),
                    &mut stats.counts.lag_clamped,
                );
                if let Some(a) = anchor {
                    let second = (now.saturating_duration_since(*a).as_secs() as usize)
                        .min(LAG_SECONDS_KEPT - 1);
                    if stats.lag_max_ms.len() <= second {
                        stats.lag_max_ms.resize(second + 1, 0);
                    }
                    let ms = lag.as_millis().min(u32::MAX as u128) as u32;
                    let slot = &mut stats.lag_max_ms[second];
                    *slot = (*slot).max(ms);
                }
            }
        });
        if conn.out.written() > before {
            conn.last_out = now;
            self.unpaced_idle = false; // the outbox has room again
            if let Some((_, end, false)) = conn.ping {
                if conn.out.written() >= end {
                    conn.ping = Some((now, end, true)); // the broker's interval starts now
                }
            }
        }
        // Through TLS, the outbox is out only once rustls's records are.
        let result = match (result, conn.tls.as_deref_mut()) {
            (Ok(Flushed::All), Some(t)) => match tls::push(t, sock) {
                Ok(true) => Ok(Flushed::All),
                Ok(false) => Ok(Flushed::Blocked),
                Err(e) => Err(e),
            },
            (r, _) => r,
        };
        match result {
            Ok(Flushed::All) => {
                let was_blocked = conn.blocked;
                conn.blocked = false;
                conn.out.trim(self.keep_buffer);
                if conn.watch_write && conn.phase != Phase::Connecting {
                    let r = self.poll.registry().reregister(
                        sock,
                        Token(c as usize),
                        Interest::READABLE,
                    );
                    conn.watch_write = r.is_err();
                }
                if was_blocked {
                    self.catch_up(c);
                }
                if self.phase != WorkerPhase::Generating {
                    self.drain_check.push(c);
                }
            }
            Ok(Flushed::Blocked) => {
                conn.blocked = true;
                if !conn.watch_write {
                    let r = self.poll.registry().reregister(
                        sock,
                        Token(c as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    conn.watch_write = r.is_ok();
                }
            }
            Err(e) => self.io_error(c, &e, now),
        }
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

    pub(super) fn on_readable(&mut self, c: u32, now: Instant) {
        if self.conns[c as usize].tls.is_some() {
            return self.on_readable_tls(c, now);
        }
        loop {
            let conn = &mut self.conns[c as usize];
            let Some(sock) = conn.sock.as_mut() else {
                return;
            };
            match sock.read(&mut self.read_buf) {
                Ok(0) => {
                    return match conn.phase {
                        Phase::Connecting | Phase::AwaitConnack => {
                            self.fail_attempt(c, ConnectFailure::ClosedBeforeConnack, now)
                        }
                        Phase::Up => self.lose(c, LostKind::Closed, now),
                        Phase::Closing => self.close(c),
                        _ => {}
                    };
                }
                Ok(n) => {
                    if !self.take_bytes(c, n, now) {
                        return;
                    }
                    if n < self.read_buf.len() {
                        // A short read emptied the socket; more data is a new edge.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.io_error(c, &e, now),
            }
        }
    }

    /// [`Worker::on_readable`] through TLS: records in, plaintext to the framing, and the
    /// handshake's own records out.
    pub(super) fn on_readable_tls(&mut self, c: u32, now: Instant) {
        loop {
            let Worker {
                conns, read_buf, ..
            } = self;
            let conn = &mut conns[c as usize];
            let (Some(sock), Some(t)) = (conn.sock.as_mut(), conn.tls.as_deref_mut()) else {
                return;
            };
            let got = tls::read(t, sock, read_buf);
            let records = t.wants_write();
            match got {
                Ok(tls::Got::Bytes(0)) => {
                    if records {
                        self.flush(c, now);
                    }
                    return;
                }
                Ok(tls::Got::Bytes(n)) => {
                    if !self.take_bytes(c, n, now) {
                        return;
                    }
                }
                Ok(tls::Got::Closed) => {
                    return match self.conns[c as usize].phase {
                        Phase::Connecting | Phase::AwaitConnack => {
                            self.fail_attempt(c, ConnectFailure::ClosedBeforeConnack, now)
                        }
                        Phase::Up => self.lose(c, LostKind::Closed, now),
                        Phase::Closing => self.close(c),
                        _ => {}
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return match self.conns[c as usize].phase {
                        Phase::Connecting | Phase::AwaitConnack => {
                            self.fail_attempt(c, ConnectFailure::Tls(e.to_string()), now)
                        }
                        Phase::Up => self.lose(c, LostKind::Other(format!("TLS: {e}")), now),
                        Phase::Closing => self.close(c),
                        _ => {}
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.io_error(c, &e, now),
            }
            if records {
                self.flush(c, now);
            }
        }
    }

    /// Once the DISCONNECT is written, shuts our side for writing (once): the broker's EOF
    /// then says it read everything, and a reset says it did not.
    pub(super) fn shut_write(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        if conn.shut_write || conn.unflushed() {
            return;
        }
        if let Some(sock) = conn.sock.as_mut() {
            if let Some(t) = conn.tls.as_deref_mut() {
                // rustls's last records, then close_notify, must be out before the FIN.
                if !conn.close_notify_sent {
                    t.send_close_notify();
                    conn.close_notify_sent = true;
                }
                match tls::push(t, sock) {
                    Ok(true) => {}
                    Ok(false) => {
                        // The flush that finishes it puts us back on the drain list.
                        conn.blocked = true;
                        if !conn.watch_write {
                            let r = self.poll.registry().reregister(
                                sock,
                                Token(c as usize),
                                Interest::READABLE | Interest::WRITABLE,
                            );
                            conn.watch_write = r.is_ok();
                        }
                        return;
                    }
                    Err(_) => {}
                }
            }
            let _ = sock.shutdown(std::net::Shutdown::Write);
        }
        conn.shut_write = true;
    }
}
