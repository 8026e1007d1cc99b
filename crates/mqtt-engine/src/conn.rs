//! One connection's state: its phase, its socket, its outbox and QoS 1 window, and what it
//! knows for the report when it is lost. A few hundred bytes of its own (buffers are taken
//! only while bytes wait); the worker drives it.

use std::ops::Range;
use std::time::Instant;

use mio::net::TcpStream;

use crate::error::{Lost, LostKind};
use crate::inflight::Inflight;
use crate::outbox::Outbox;

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

#[derive(Debug)]
pub struct Conn {
    /// Index in the fleet.
    pub index: u64,
    /// Its devices, as indexes into the worker's devices.
    pub devices: Range<u32>,
    pub phase: Phase,
    pub sock: Option<TcpStream>,
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
    /// Last time a write made progress (for the keep-alive).
    pub last_out: Instant,
    /// A PINGREQ sent at, and the stream offset just past its bytes.
    pub ping: Option<(Instant, u64)>,
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
}

impl Conn {
    pub fn new(index: u64, devices: Range<u32>, window: u16, now: Instant) -> Conn {
        Conn {
            index,
            devices,
            phase: Phase::Idle,
            sock: None,
            out: Outbox::default(),
            inbuf: Vec::new(),
            inflight: Inflight::new(window),
            attempt: 0,
            attempt_started: now,
            generation: 0,
            up_at: None,
            last_out: now,
            ping: None,
            blocked: false,
            watch_write: false,
            dirty: false,
            shut_write: false,
            owing: 0,
            acked_any: false,
            first_write: None,
            largest_message: 0,
        }
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
