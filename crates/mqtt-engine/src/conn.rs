//! One connection's state: its phase, its socket, its outbox and QoS 1/2 window, and what
//! it knows for the report when it is lost. A few hundred bytes of its own (buffers are
//! taken only while bytes wait); the worker drives it.
//!
//! A lost connection's messages in flight go out again on the next one ([`Conn::take_replay`],
//! [`Conn::put_replay`]): within a resumed session a PUBLISH with DUP, or at QoS 2 the PUBREL
//! of a message whose PUBREC came (MQTT 3.1.1 and 5, section 4.4); in a new session every
//! one as a new message.

use std::ops::Range;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::error::{Lost, LostKind};
use crate::inflight::Inflight;
use crate::outbox::{MsgMeta, Outbox};
use crate::packets::{self, AckKind};
use crate::settings::Qos;
use mqtt_wire::qos2::Sent;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for its turn in the ramp.
    Idle,
    /// TCP connect in progress.
    Connecting,
    /// CONNECT written, waiting for the CONNACK.
    AwaitConnack,
    Up,
    /// Waiting to try again after a failed attempt.
    Backoff,
    /// DISCONNECT queued or written; waiting for the broker to close its side.
    Closing,
    /// Closed, given up or lost: nothing more happens on it.
    Done,
}

/// What a connection is for: publishing (held connections, `loadgen conn`, are publishers
/// of a fleet with no devices, see [`crate::settings::HoldSettings`]) or subscribing
/// (SUBSCRIBE after the CONNACK, each delivery to the worker's consumer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Its devices publish on the fleet schedule.
    #[default]
    Publisher,
    /// It subscribes after its CONNACK and hands what it receives to a consumer
    /// (`worker::subscribe`); it has no devices.
    Subscriber,
}

#[derive(Debug)]
pub struct Conn {
    /// Index in the fleet.
    pub index: u64,
    pub role: Role,
    /// Its devices, as indexes into the worker's devices.
    pub devices: Range<u32>,
    pub phase: Phase,
    pub sock: Option<TcpStream>,
    /// TLS over `sock` (boxed: a few KB of state that plain connections do not pay for).
    pub tls: Option<Box<rustls::ClientConnection>>,
    /// TLS: close_notify is queued (once, before our FIN).
    pub close_notify_sent: bool,
    pub out: Outbox,
    /// Bytes of a packet that arrived in part.
    pub inbuf: Vec<u8>,
    pub inflight: Inflight,
    /// Attempts so far, and when the current one started.
    pub attempt: u32,
    pub attempt_started: Instant,
    /// Bumped whenever timers set earlier must not apply any more.
    pub generation: u32,
    pub up_at: Option<Instant>,
    /// The keep-alive in force: ours, or the broker's Server Keep Alive (MQTT 5).
    pub keep_alive: Duration,
    /// Last time a write made progress, and a read brought bytes (for the keep-alive).
    pub last_out: Instant,
    pub last_in: Instant,
    /// A PINGREQ unanswered: when it was queued (or, once written, when it was), the
    /// stream offset just past its bytes, and whether it is written.
    pub ping: Option<(Instant, u64, bool)>,
    /// The last flush would have blocked: wait for the socket to be writable.
    pub blocked: bool,
    /// Registered for writability too (while connecting, or while a flush is blocked).
    pub watch_write: bool,
    /// On the worker's list of connections to flush.
    pub dirty: bool,
    /// Our side is shut down for writing (DISCONNECT written): waiting for the broker's EOF.
    pub shut_write: bool,
    /// Its devices whose schedule ended with slots still owed (the connection was full):
    /// the drain writes them before this connection says DISCONNECT.
    pub owing: u32,
    pub acked_any: bool,
    pub first_write: Option<Instant>,
    pub largest_message: u32,
    /// QoS 1 or 2 with reconnects: written messages stay in the outbox until acknowledged
    /// (at QoS 2 until PUBCOMP: a new session sends the PUBLISH again).
    pub retaining: bool,
    /// Lost and not back yet: since when.
    pub down_since: Option<Instant>,
    /// Reconnect attempts since the loss (the backoff's exponent).
    pub reconnect_attempt: u32,
    /// It came back at least once.
    pub reconnected: bool,
    /// Lost at least once.
    pub lost_before: bool,
    /// A PUBACK arrived since it was last up.
    pub acked_since_up: bool,
    /// Losses in a row without progress in between (see the worker's `lose`).
    pub losses_in_a_row: u32,
    /// What the lost connection had not delivered, written first on the next one.
    pub replay: Option<Replay>,
    /// Whether another client keeps taking its client id.
    pub id_watch: crate::takeover::IdWatch,
    /// The phases of the current attempt: TCP connected, and CONNECT on its way (under TLS:
    /// the handshake done); `None` until then.
    pub tcp_at: Option<Instant>,
    pub connect_at: Option<Instant>,
    /// Disconnected by the churn: its reconnect is a churn's, not a loss's.
    pub churned: bool,
    /// Down after a loss or a storm: part of the worker's open outage.
    pub in_outage: bool,
}

/// The messages of a lost connection that go out again on the next: their bytes, and each
/// one's place in them with its meta (`resend`: it had been written).
#[derive(Debug, Default)]
pub struct Replay {
    pub bytes: Vec<u8>,
    pub frames: Vec<(usize, usize, MsgMeta)>,
    /// QoS 2: the frames (by index) whose PUBREC came: in a resumed session their PUBREL
    /// goes again, not their PUBLISH. Empty at QoS 0 and 1.
    pub released: Vec<usize>,
}

/// What [`Conn::put_replay`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed {
    /// QoS 2: PUBRELs written again (their PUBREC had come).
    pub pubrels: u64,
    /// QoS 2: messages that left the window unacknowledged: released, their PUBLISH's bytes
    /// gone with an earlier replay (as PUBREL), and the new session forgot them.
    pub gone: u64,
}

impl Conn {
    pub fn new(
        index: u64,
        devices: Range<u32>,
        window: u16,
        retaining: bool,
        keep_alive: Duration,
        now: Instant,
    ) -> Conn {
        Conn {
            keep_alive,
            index,
            role: Role::Publisher,
            devices,
            phase: Phase::Idle,
            sock: None,
            tls: None,
            close_notify_sent: false,
            out: Conn::outbox(retaining),
            inbuf: Vec::new(),
            inflight: Inflight::new(window),
            attempt: 0,
            attempt_started: now,
            generation: 0,
            up_at: None,
            last_out: now,
            last_in: now,
            ping: None,
            blocked: false,
            watch_write: false,
            dirty: false,
            shut_write: false,
            owing: 0,
            acked_any: false,
            first_write: None,
            largest_message: 0,
            retaining,
            down_since: None,
            reconnect_attempt: 0,
            reconnected: false,
            lost_before: false,
            acked_since_up: false,
            losses_in_a_row: 0,
            replay: None,
            id_watch: Default::default(),
            tcp_at: None,
            connect_at: None,
            churned: false,
            in_outage: false,
        }
    }

    fn outbox(retaining: bool) -> Outbox {
        if retaining {
            Outbox::retaining()
        } else {
            Outbox::default()
        }
    }

    /// The connection is lost: what it had not delivered is taken out of its outbox (at
    /// QoS 1 and 2 every message in flight, written or not; at QoS 0 the messages not
    /// completely written), and the outbox starts afresh for the next connection. A message
    /// in flight whose bytes are gone (never, while retaining) leaves the window: sent,
    /// unacknowledged; at QoS 2 one whose PUBREC came stays (its PUBREL needs no bytes).
    pub fn take_replay(&mut self, qos: Qos) {
        let mut r = self.replay.take().unwrap_or_default();
        let written = self.out.written();
        let mut gone = Vec::new();
        let push = |r: &mut Replay, frame: &[u8], meta: MsgMeta| {
            let at = r.bytes.len();
            r.bytes.extend_from_slice(frame);
            r.frames.push((at, r.bytes.len(), meta));
        };
        if qos.acknowledged() {
            for a in self.inflight.iter() {
                let meta = MsgMeta {
                    scheduled: a.scheduled,
                    points: a.points,
                    bytes: a.bytes,
                    pkid: a.pkid,
                    resend: a.written_before || a.end <= written,
                };
                let released = qos == Qos::ExactlyOnce && a.state == Sent::AwaitPubcomp;
                match self.out.frame(a.start, a.end) {
                    Some(f) => push(&mut r, f, meta),
                    None if released => push(&mut r, &[], meta),
                    None => {
                        gone.push(a.pkid);
                        continue;
                    }
                }
                if released {
                    r.released.push(r.frames.len() - 1);
                }
            }
        } else {
            for (start, end, meta) in self.out.unwritten() {
                if let Some(f) = self.out.frame(*start, *end) {
                    push(&mut r, f, *meta);
                }
            }
        }
        for id in gone {
            self.inflight.ack(id);
        }
        self.out = Conn::outbox(self.retaining);
        self.replay = Some(r);
    }

    /// On the next connection: the replay goes first, resends with DUP set when the session
    /// is persistent (`dup`; in a clean session they are new messages), and the window's
    /// messages learn where their bytes are now. At QoS 2, within the session, a message
    /// whose PUBREC came has its PUBREL written (`v5`: MQTT 5's form) instead of its
    /// PUBLISH; in a new session it is a new message, waiting for its PUBREC again.
    pub fn put_replay(&mut self, dup: bool, v5: bool) -> Replayed {
        let mut done = Replayed::default();
        let Some(r) = self.replay.take() else {
            return done;
        };
        let mut spans = Vec::with_capacity(r.frames.len());
        let mut released = r.released.iter().copied().peekable();
        let mut gone = Vec::new();
        for (i, (s, e, meta)) in r.frames.into_iter().enumerate() {
            let rel = released.next_if_eq(&i).is_some();
            if rel && dup {
                self.out
                    .push_control(&packets::ack(AckKind::PubRel, meta.pkid, 0, v5));
                let at = self.out.end();
                spans.push(((at, at), true, Sent::AwaitPubcomp));
                done.pubrels += 1;
                continue;
            }
            if s == e {
                // Released, its PUBLISH gone with an earlier replay, and the session too.
                gone.push(meta.pkid);
                let at = self.out.end();
                spans.push(((at, at), true, Sent::AwaitPubrec));
                continue;
            }
            let buf = self.out.buffer(e - s);
            let at = buf.len();
            buf.extend_from_slice(&r.bytes[s..e]);
            if meta.resend && dup {
                buf[at] |= 0x08; // DUP: the broker may have it (MQTT 3.1.1 section 3.3.1.1)
            } else {
                buf[at] &= !0x08; // a new message, though it went out before with DUP
            }
            spans.push((self.out.seal(meta), meta.resend, Sent::AwaitPubrec));
        }
        for (a, (span, resend, state)) in self.inflight.iter_mut().zip(spans) {
            (a.start, a.end) = span;
            a.written_before = resend;
            a.state = state;
        }
        self.inflight.recount();
        for id in gone {
            self.inflight.ack(id);
            done.gone += 1;
        }
        done
    }

    /// Bytes still to go to the socket: the outbox's, or TLS records rustls holds.
    pub fn unflushed(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// What the report says about this connection being lost now.
    pub fn lost(&self, kind: LostKind, now: Instant) -> Lost {
        let up = self.up_at.unwrap_or(now);
        Lost {
            kind,
            after: now.saturating_duration_since(up),
            acked_any: self.acked_any,
            first_write_after: self.first_write.map(|t| t.saturating_duration_since(up)),
            largest_message: self.largest_message,
            takeover: None,
        }
    }

    /// Whether its devices may put another message in: up, room in the outbox, and at QoS 1
    /// or 2 room in the window.
    pub fn has_room(&self, max_queued: usize, qos: Qos) -> bool {
        self.phase == Phase::Up
            && self.out.queued() < max_queued
            && !(qos.acknowledged() && self.inflight.is_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inflight::Pubrec;
    use crate::packets::PublishFlags;

    /// A QoS 2 connection (retaining, as with reconnects) with messages 1..=n written.
    fn published(n: u16) -> Conn {
        let now = Instant::now();
        let mut c = Conn::new(0, 0..1, 8, true, Duration::ZERO, now);
        for _ in 0..n {
            let pkid = c.inflight.issue(now, 1).expect("room");
            let flags = PublishFlags {
                qos: Qos::ExactlyOnce,
                ..Default::default()
            };
            let buf = c.out.buffer(64);
            let bytes = packets::append_publish_with(buf, flags, b"t", Some(pkid), &[], 8, |b| {
                b.extend_from_slice(&[pkid as u8; 4])
            });
            let meta = MsgMeta {
                scheduled: now,
                points: 1,
                bytes: bytes as u32,
                pkid,
                resend: false,
            };
            let span = c.out.seal(meta);
            c.inflight.place_last(span, bytes as u32);
        }
        c.out
            .flush(&mut Vec::new(), |_| {})
            .expect("a Vec takes all");
        c
    }

    /// What the outbox writes now, as (first byte, packet id) per packet.
    fn written(c: &mut Conn) -> Vec<(u8, u16)> {
        let mut out = Vec::new();
        c.out.flush(&mut out, |_| {}).expect("a Vec takes all");
        let mut at = 0;
        let mut packets = Vec::new();
        while at < out.len() {
            let (first, len) = (out[at], out[at + 1] as usize);
            let body = &out[at + 2..at + 2 + len];
            let id_at = if first >> 4 == 3 { 3 } else { 0 }; // PUBLISH: after topic "t"
            packets.push((first, u16::from_be_bytes([body[id_at], body[id_at + 1]])));
            at += 2 + len;
        }
        packets
    }

    const PUBREL: u8 = 0x62;
    const PUBLISH_QOS2: u8 = 0x34;
    const PUBLISH_QOS2_DUP: u8 = 0x3c;

    #[test]
    fn a_resumed_session_gets_pubrel_for_received_messages_and_dup_publish_for_the_rest() {
        let mut c = published(3);
        assert_eq!(c.inflight.pubrec(1, 0), Pubrec::Release);
        c.take_replay(Qos::ExactlyOnce);
        let done = c.put_replay(true, false);
        assert_eq!(
            done,
            Replayed {
                pubrels: 1,
                gone: 0
            }
        );
        assert_eq!(
            written(&mut c),
            [(PUBREL, 1), (PUBLISH_QOS2_DUP, 2), (PUBLISH_QOS2_DUP, 3)]
        );
        let states: Vec<_> = c.inflight.iter().map(|a| (a.pkid, a.state)).collect();
        assert_eq!(
            states,
            [
                (1, Sent::AwaitPubcomp),
                (2, Sent::AwaitPubrec),
                (3, Sent::AwaitPubrec)
            ]
        );
        // The exchange goes on where it stood: PUBCOMP for 1, PUBREC for 2.
        assert!(matches!(
            c.inflight.pubcomp(1, 0),
            crate::inflight::Pubcomp::Complete(_)
        ));
        assert_eq!(c.inflight.pubrec(2, 0), Pubrec::Release);
    }

    #[test]
    fn a_new_session_gets_every_message_again_as_a_new_one() {
        let mut c = published(2);
        assert_eq!(c.inflight.pubrec(1, 0), Pubrec::Release);
        c.take_replay(Qos::ExactlyOnce);
        let done = c.put_replay(false, false);
        assert_eq!(done, Replayed::default());
        assert_eq!(written(&mut c), [(PUBLISH_QOS2, 1), (PUBLISH_QOS2, 2)]);
        assert!(c.inflight.iter().all(|a| a.state == Sent::AwaitPubrec));
        // Message 1 awaits its PUBREC again: a PUBCOMP now is early.
        assert_eq!(c.inflight.pubcomp(1, 0), crate::inflight::Pubcomp::Early);
        assert_eq!(c.inflight.pubrec(1, 0), Pubrec::Release);
    }

    #[test]
    fn a_pubrel_resent_then_a_lost_session_leaves_that_message_unacknowledged() {
        let mut c = published(2);
        assert_eq!(c.inflight.pubrec(1, 0), Pubrec::Release);
        c.take_replay(Qos::ExactlyOnce);
        c.put_replay(true, false);
        written(&mut c);
        // Lost again; its PUBLISH went with the first replay (PUBREL in its place): within
        // the session the PUBREL goes again, in a new one it cannot be sent.
        c.take_replay(Qos::ExactlyOnce);
        let done = c.put_replay(false, false);
        assert_eq!(
            done,
            Replayed {
                pubrels: 0,
                gone: 1
            }
        );
        assert_eq!(written(&mut c), [(PUBLISH_QOS2, 2)]);
        assert_eq!(c.inflight.iter().map(|a| a.pkid).collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn a_pubrel_goes_again_after_a_second_loss_within_the_session() {
        let mut c = published(2);
        assert_eq!(c.inflight.pubrec(2, 0), Pubrec::Release);
        for _ in 0..2 {
            c.take_replay(Qos::ExactlyOnce);
            assert_eq!(c.put_replay(true, true).pubrels, 1);
            assert_eq!(written(&mut c), [(PUBLISH_QOS2_DUP, 1), (PUBREL, 2)]);
        }
    }
}
