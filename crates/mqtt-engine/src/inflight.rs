//! A connection's window of acknowledged messages (QoS 1 and 2): packet ids handed out in
//! order, PUBACKs (QoS 1) or PUBREC then PUBCOMP (QoS 2) matched to them.
//!
//! Brokers acknowledge in order, so the window is a queue in the order ids were given and an
//! acknowledgement almost always matches its front. One out of order is found by a scan. A
//! PUBACK for an id with nothing in flight (a broker repeating itself) is reported as such
//! and changes nothing. An id comes back into use only after 65,535 others: it is skipped
//! while a message of its previous round is still in flight.
//!
//! At QoS 2 each message carries its exchange's state ([`mqtt_wire::qos2::Sent`]) and stays
//! in the window until its PUBCOMP:
//!
//! ```text
//! issue --> Sent::AwaitPubrec --pubrec()--> Release (write PUBREL) / Refused (leaves)
//!           Sent::AwaitPubcomp --pubcomp()--> Complete (leaves: acknowledged)
//! ```
//!
//! PUBRECs come in order too: the first message still awaiting one sits just after those
//! released (`released` of them, at the front while the broker answers in order), so its
//! PUBREC is found without a scan.

use std::collections::VecDeque;
use std::time::Instant;

use mqtt_wire::qos2::{SenderStep, Sent};

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
    /// QoS 2: where its exchange stands (`AwaitPubrec` from the start; unused at QoS 1).
    pub state: Sent,
    /// Its place in the order ids were handed out.
    seq: u64,
}

/// What a PUBREC means for the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pubrec {
    /// The broker has the message: write PUBREL for it (again, for a repeated PUBREC).
    Release,
    /// MQTT 5: the broker refused the message (reason 0x80 or more); it left the window.
    Refused(Awaiting),
    /// No message with this id is in flight.
    NotInFlight,
}

/// What a PUBCOMP means for the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pubcomp {
    /// The exchange is over: the message is acknowledged and left the window.
    Complete(Awaiting),
    /// The message awaits its PUBREC: a PUBCOMP now answers nothing we sent.
    Early,
    /// No message with this id is in flight.
    NotInFlight,
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
    /// QoS 2: messages in the window whose PUBREC came (the hint where the next PUBREC's
    /// message stands).
    released: usize,
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
            released: 0,
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
                    state: Sent::AwaitPubrec,
                    seq,
                });
                return Some(pkid);
            }
        }
    }

    /// Matches a PUBACK; `None` for an id with nothing in flight.
    pub fn ack(&mut self, pkid: u16) -> Option<Awaiting> {
        let a = if self.queue.front().is_some_and(|a| a.pkid == pkid) {
            self.queue.pop_front()
        } else {
            let at = self.queue.iter().position(|a| a.pkid == pkid)?;
            self.queue.remove(at)
        }?;
        if a.state == Sent::AwaitPubcomp {
            self.released -= 1;
        }
        Some(a)
    }

    /// Where the message with `pkid` stands in the queue: at `hint` when the broker answers
    /// in order, else found by a scan.
    fn position(&self, pkid: u16, hint: usize) -> Option<usize> {
        if self.queue.get(hint).is_some_and(|a| a.pkid == pkid) {
            return Some(hint);
        }
        self.queue.iter().position(|a| a.pkid == pkid)
    }

    /// QoS 2: matches a PUBREC with `reason` (MQTT 5; 0 under 3.1.1).
    pub fn pubrec(&mut self, pkid: u16, reason: u8) -> Pubrec {
        let Some(at) = self.position(pkid, self.released) else {
            return Pubrec::NotInFlight;
        };
        let a = &mut self.queue[at];
        let was = a.state;
        match a.state.on_pubrec(reason) {
            SenderStep::SendPubrel => {
                if was == Sent::AwaitPubrec {
                    self.released += 1;
                }
                Pubrec::Release
            }
            SenderStep::Refused(_) => {
                Pubrec::Refused(self.queue.remove(at).expect("found at this position"))
            }
            SenderStep::Complete(_) | SenderStep::Unexpected => Pubrec::NotInFlight,
        }
    }

    /// QoS 2: matches a PUBCOMP with `reason`.
    pub fn pubcomp(&mut self, pkid: u16, reason: u8) -> Pubcomp {
        let Some(at) = self.position(pkid, 0) else {
            return Pubcomp::NotInFlight;
        };
        match self.queue[at].state.on_pubcomp(reason) {
            SenderStep::Complete(_) => {
                self.released = self.released.saturating_sub(1);
                Pubcomp::Complete(self.queue.remove(at).expect("found at this position"))
            }
            _ => Pubcomp::Early,
        }
    }

    /// Counts again the messages whose PUBREC came, after their states were set anew (a
    /// replay into a new session makes them new messages).
    pub fn recount(&mut self) {
        self.released = self
            .queue
            .iter()
            .filter(|a| a.state == Sent::AwaitPubcomp)
            .count();
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
        self.released = 0;
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

    #[test]
    fn a_qos_2_message_holds_its_place_until_pubcomp() {
        let now = Instant::now();
        let mut w = Inflight::new(2);
        assert_eq!(w.issue(now, 1), Some(1));
        assert_eq!(w.issue(now, 2), Some(2));
        assert_eq!(w.pubrec(1, 0), Pubrec::Release);
        assert_eq!(w.issue(now, 3), None, "PUBREC does not free the place");
        // A repeated PUBREC has the PUBREL written again, nothing else.
        assert_eq!(w.pubrec(1, 0), Pubrec::Release);
        assert_eq!(w.released, 1);
        // PUBCOMP before PUBREC answers nothing sent; the message stays.
        assert_eq!(w.pubcomp(2, 0), Pubcomp::Early);
        assert_eq!(w.len(), 2);
        match w.pubcomp(1, 0) {
            Pubcomp::Complete(a) => assert_eq!((a.pkid, a.points), (1, 1)),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.pubcomp(1, 0), Pubcomp::NotInFlight, "a repeated PUBCOMP");
        assert_eq!(
            w.pubrec(1, 0),
            Pubrec::NotInFlight,
            "a PUBREC after PUBCOMP"
        );
        assert_eq!(w.issue(now, 3), Some(3), "PUBCOMP frees the place");
        assert_eq!(w.released, 0);
    }

    #[test]
    fn a_refusing_pubrec_takes_the_message_out_without_pubrel() {
        let now = Instant::now();
        let mut w = Inflight::new(4);
        for points in 1..=3 {
            w.issue(now, points);
        }
        match w.pubrec(2, 0x97) {
            Pubrec::Refused(a) => assert_eq!((a.pkid, a.points), (2, 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(w.iter().map(|a| a.pkid).collect::<Vec<_>>(), [1, 3]);
        // 0x10 (no matching subscribers) is no refusal.
        assert_eq!(w.pubrec(3, 0x10), Pubrec::Release);
        assert_eq!(w.pubrec(2, 0), Pubrec::NotInFlight);
    }

    #[test]
    fn pubrecs_in_order_and_out_of_order_release_the_right_messages() {
        let now = Instant::now();
        let mut w = Inflight::new(1000);
        for _ in 0..1000 {
            w.issue(now, 1);
        }
        // In order for the first half, then the rest backwards, PUBCOMPs trailing behind.
        for id in 1..=500u16 {
            assert_eq!(w.pubrec(id, 0), Pubrec::Release);
            if id > 10 {
                assert!(matches!(w.pubcomp(id - 10, 0), Pubcomp::Complete(_)));
            }
        }
        for id in (501..=1000u16).rev() {
            assert_eq!(w.pubrec(id, 0), Pubrec::Release);
        }
        assert!(w.iter().all(|a| a.state == Sent::AwaitPubcomp));
        assert_eq!(w.released, w.len());
        for id in 491..=1000u16 {
            assert!(matches!(w.pubcomp(id, 0), Pubcomp::Complete(_)), "{id}");
        }
        assert!(w.is_empty());
        assert_eq!(w.released, 0);
    }
}
