//! A connection's QoS 1 window: packet ids handed out in order, PUBACKs matched to them.
//!
//! Brokers acknowledge in order, so the window is a queue in the order ids were given and an
//! acknowledgement almost always matches its front. One out of order is found by a scan. A
//! PUBACK for an id with nothing in flight (a broker repeating itself) is reported as such
//! and changes nothing. An id comes back into use only after 65,535 others: it is skipped
//! while a message of its previous round is still in flight.

use std::collections::VecDeque;
use std::time::Instant;

/// A message waiting for its PUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Awaiting {
    pub pkid: u16,
    pub scheduled: Instant,
    pub points: u32,
    /// Payload bytes.
    pub bytes: u32,
    /// Its bytes in the connection's outbox (stream offsets), for a resend.
    pub start: u64,
    pub end: u64,
    /// Written on a connection since lost: another write is a resend.
    pub written_before: bool,
    /// Its place in the order ids were handed out.
    seq: u64,
}

/// The QoS 1 messages of one connection between their packet id and their PUBACK.
#[derive(Debug)]
pub struct Inflight {
    window: usize,
    /// The window asked for; a broker's Receive Maximum may make `window` smaller.
    configured: usize,
    queue: VecDeque<Awaiting>,
    /// Ids handed out so far.
    issued: u64,
}

/// Packet ids go 1..=65535.
const IDS: u64 = 65_535;

impl Inflight {
    /// A window of `window` messages (1..=65535).
    pub fn new(window: u16) -> Inflight {
        Inflight {
            window: window.max(1) as usize,
            configured: window.max(1) as usize,
            queue: VecDeque::new(),
            issued: 0,
        }
    }

    /// The broker takes at most `max` unacknowledged messages (MQTT 5 Receive Maximum;
    /// `None`: no limit of its own); returns whether the window is smaller than asked.
    pub fn limit(&mut self, max: Option<u16>) -> bool {
        self.window = match max {
            Some(m) => self.configured.min(m.max(1) as usize),
            None => self.configured,
        };
        self.window < self.configured
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.queue.len() >= self.window
    }

    /// The next packet id, for a message due at `scheduled` with `points` points; `None`
    /// when the window is full.
    pub fn issue(&mut self, scheduled: Instant, points: u32) -> Option<u16> {
        if self.is_full() {
            return None;
        }
        loop {
            let seq = self.issued;
            self.issued += 1;
            let pkid = (seq % IDS) as u16 + 1;
            // Only a message issued at least IDS ids ago can hold the same id.
            let taken = self.queue.front().is_some_and(|f| f.seq + IDS <= seq)
                && self
                    .queue
                    .iter()
                    .take_while(|a| a.seq + IDS <= seq)
                    .any(|a| a.pkid == pkid);
            if !taken {
                self.queue.push_back(Awaiting {
                    pkid,
                    scheduled,
                    points,
                    bytes: 0,
                    start: 0,
                    end: 0,
                    written_before: false,
                    seq,
                });
                return Some(pkid);
            }
        }
    }

    /// Matches a PUBACK; `None` for an id with nothing in flight.
    pub fn ack(&mut self, pkid: u16) -> Option<Awaiting> {
        if self.queue.front().is_some_and(|a| a.pkid == pkid) {
            return self.queue.pop_front();
        }
        let at = self.queue.iter().position(|a| a.pkid == pkid)?;
        self.queue.remove(at)
    }

    /// Whether `pkid` was handed out on this connection: a PUBACK for one that was not can
    /// be no repeat.
    pub fn was_issued(&self, pkid: u16) -> bool {
        pkid != 0 && (pkid as u64) <= self.issued.min(IDS)
    }

    /// Records where the message issued last lies in the outbox, and its payload bytes.
    pub fn place_last(&mut self, (start, end): (u64, u64), bytes: u32) {
        if let Some(a) = self.queue.back_mut() {
            (a.start, a.end, a.bytes) = (start, end, bytes);
        }
    }

    /// Where the oldest message in flight starts in the outbox (`None`: nothing in flight).
    pub fn first_start(&self) -> Option<u64> {
        self.queue.front().map(|a| a.start)
    }

    /// The messages in flight, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Awaiting> + '_ {
        self.queue.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Awaiting> + '_ {
        self.queue.iter_mut()
    }

    /// Gives up every message still in flight (the connection is gone or the drain is over).
    pub fn abandon(&mut self) -> impl Iterator<Item = Awaiting> + '_ {
        self.queue.drain(..)
    }

    /// Gives the queue's memory back when it is empty and was large.
    pub fn trim(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 64 {
            self.queue = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_issued_in_order_and_acknowledged_once() {
        let now = Instant::now();
        let mut w = Inflight::new(3);
        assert_eq!(w.issue(now, 1), Some(1));
        assert_eq!(w.issue(now, 2), Some(2));
        assert_eq!(w.issue(now, 3), Some(3));
        assert_eq!(w.issue(now, 4), None, "the window is full");
        assert_eq!(w.ack(2).map(|a| a.points), Some(2), "out of order");
        assert_eq!(w.ack(2), None, "a repeated PUBACK");
        assert_eq!(w.ack(9), None, "an id never issued");
        assert_eq!(w.ack(1).map(|a| a.points), Some(1));
        assert_eq!(w.issue(now, 5), Some(4));
        assert_eq!(w.len(), 2);
        assert_eq!(w.abandon().map(|a| a.pkid).collect::<Vec<_>>(), [3, 4]);
    }

    #[test]
    fn ids_wrap_and_skip_one_still_in_flight() {
        let now = Instant::now();
        let mut w = Inflight::new(u16::MAX);
        let first = w.issue(now, 0).unwrap();
        assert_eq!(first, 1);
        // Cycle through every other id, acknowledging as we go, while id 1 stays in flight.
        for _ in 1..IDS {
            let id = w.issue(now, 0).unwrap();
            assert_ne!(id, 1);
            assert!(w.ack(id).is_some());
        }
        // The next round would reuse id 1: it is skipped.
        assert_eq!(w.issue(now, 0), Some(2));
        assert!(w.ack(1).is_some());
    }
}
