//! One connection's state: its phase, its socket, its outbox and QoS 1 window, and what it
//! knows for the report when it is lost. A few hundred bytes of its own (buffers are taken
//! only while bytes wait); the worker drives it.

use std::ops::Range;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::error::{Lost, LostKind};
use crate::inflight::Inflight;
use crate::outbox::{MsgMeta, Outbox};

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
    /// QoS 1 with reconnects: written messages stay in the outbox until acknowledged.
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
    /// QoS 1 every message in flight, written or not; at QoS 0 the messages not completely
    /// written), and the outbox starts afresh for the next connection. A message in flight
    /// whose bytes are gone (never, while retaining) leaves the window: sent, unacknowledged.
    pub fn take_replay(&mut self, qos1: bool) {
        let mut r = self.replay.take().unwrap_or_default();
        let written = self.out.written();
        let mut gone = Vec::new();
        let push = |r: &mut Replay, frame: &[u8], meta: MsgMeta| {
            let at = r.bytes.len();
            r.bytes.extend_from_slice(frame);
            r.frames.push((at, r.bytes.len(), meta));
        };
        if qos1 {
            for a in self.inflight.iter() {
                let meta = MsgMeta {
                    scheduled: a.scheduled,
                    points: a.points,
                    bytes: a.bytes,
                    pkid: a.pkid,
                    resend: a.written_before || a.end <= written,
                };
                match self.out.frame(a.start, a.end) {
                    Some(f) => push(&mut r, f, meta),
                    None => gone.push(a.pkid),
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
    /// messages learn where their bytes are now.
    pub fn put_replay(&mut self, dup: bool) {
        let Some(r) = self.replay.take() else {
            return;
        };
        let mut spans = Vec::with_capacity(r.frames.len());
        for (s, e, meta) in r.frames {
            let buf = self.out.buffer(e - s);
            let at = buf.len();
            buf.extend_from_slice(&r.bytes[s..e]);
            if meta.resend && dup {
                buf[at] |= 0x08; // DUP: the broker may have it (MQTT 3.1.1 section 3.3.1.1)
            } else {
                buf[at] &= !0x08; // a new message, though it went out before with DUP
            }
            spans.push((self.out.seal(meta), meta.resend));
        }
        for (a, (span, resend)) in self.inflight.iter_mut().zip(spans) {
            (a.start, a.end) = span;
            a.written_before = resend;
        }
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
    /// room in the window.
    pub fn has_room(&self, max_queued: usize, qos1: bool) -> bool {
        self.phase == Phase::Up
            && self.out.queued() < max_queued
            && !(qos1 && self.inflight.is_full())
    }
}
