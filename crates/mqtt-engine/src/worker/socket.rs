//! Socket I/O: writing a connection's outbox (plain or through TLS) and counting what went
//! out, reading what the broker sent, shutting our side after the DISCONNECT. Each says
//! what happened (a [`Work`] item for the loop, a [`Got`]) and calls no other stage.

use super::*;
use std::io::Read as _;

/// What one read from a connection brought.
#[derive(Debug)]
pub(super) enum Got {
    /// `n` bytes in `read_buf`; `more`: the socket may hold more (a full read, or TLS).
    Bytes {
        n: usize,
        more: bool,
    },
    /// Nothing to read now (or no socket any more).
    Empty,
    /// Interrupted: read again.
    Again,
    /// The broker closed its side.
    Closed,
    /// TLS: what the broker sent is no valid TLS.
    BadTls(io::Error),
    Failed(io::Error),
}

impl<P: Producer> Worker<P> {
    pub(super) fn mark_dirty(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(c);
        }
    }

    /// Writes what connection `c` has waiting; counts every message that went out whole.
    /// What follows from it goes to the loop: [`Work::Drained`] when an outbox that was
    /// full emptied (its devices owe slots), [`Work::Failed`] when the socket failed.
    pub(super) fn flush(&mut self, c: u32, now: Instant) {
        let conn = &mut self.conns[c as usize];
        let records = conn.tls.as_ref().is_some_and(|t| t.wants_write());
        if conn.sock.is_some() && conn.out.is_empty() && !records {
            // Nothing to write: a connection that was full has room for what its devices owe.
            if std::mem::replace(&mut conn.blocked, false) {
                self.report(c, Work::Drained);
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
                    self.report(c, Work::Drained);
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
            Err(e) => self.report(c, Work::Failed(e)),
        }
    }

    /// Reads once from connection `c` into `read_buf`, through TLS when it has it; the
    /// second value says rustls has records to write (handshake, alerts).
    pub(super) fn read(&mut self, c: u32) -> (Got, bool) {
        let Worker {
            conns, read_buf, ..
        } = self;
        let conn = &mut conns[c as usize];
        let Some(sock) = conn.sock.as_mut() else {
            return (Got::Empty, false);
        };
        let Some(t) = conn.tls.as_deref_mut() else {
            let got = match sock.read(read_buf) {
                Ok(0) => Got::Closed,
                // A short read emptied the socket; more data is a new edge.
                Ok(n) => Got::Bytes {
                    n,
                    more: n == read_buf.len(),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Got::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Got::Again,
                Err(e) => Got::Failed(e),
            };
            return (got, false);
        };
        let got = tls::read(t, sock, read_buf);
        let records = t.wants_write();
        let got = match got {
            Ok(tls::Got::Bytes(0)) => Got::Empty,
            Ok(tls::Got::Bytes(n)) => Got::Bytes { n, more: true },
            Ok(tls::Got::Closed) => Got::Closed,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Got::BadTls(e),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Got::Again,
            Err(e) => Got::Failed(e),
        };
        (got, records)
    }

    /// TLS: when a read finished the handshake of connection `c`'s attempt, records how long
    /// it took from the TCP connect; the CONNECT rustls held goes out from here.
    pub(super) fn handshake_done(&mut self, c: u32, now: Instant) {
        let conn = &mut self.conns[c as usize];
        if conn.connect_at.is_some() || conn.phase != Phase::AwaitConnack {
            return;
        }
        if let (Some(t), Some(tcp)) = (conn.tls.as_deref(), conn.tcp_at) {
            if !t.is_handshaking() {
                conn.connect_at = Some(now);
                let us = micros(now.saturating_duration_since(tcp)).max(1);
                self.stats.histos.tls_us.saturating_record(us);
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
