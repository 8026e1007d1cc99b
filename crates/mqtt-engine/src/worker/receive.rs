//! Receiving: the bytes of a read framed into packets ([`Framer`], carrying a packet that
//! arrived in part over to the next read), each packet turned into the [`Event`] it is in
//! the connection's phase ([`event`]), and what a PUBACK, a PUBREC, a PUBCOMP and an
//! accepting CONNACK mean for the connection's window and the run's figures. Both functions are pure: the loop owns
//! the connection and routes the events (`Worker::take_bytes`, `Worker::on_event`).
//!
//! ```text
//! read_buf --> Framer (+ the partial packet of the last read) --> Incoming
//!          --> event(phase, packet) --> Event --> the loop: CONNACK, PUBACK, PUBREC,
//!                                                      PUBCOMP, loss, close
//! ```
//!
//! QoS 2 (MQTT 3.1.1 and 5, section 4.3.3): a PUBREC has the PUBREL written (or, with a
//! refusing reason, ends the message: rejected, counted by reason, not resent); the PUBCOMP
//! acknowledges the message and frees its place in the window. Ack latency runs from the
//! scheduled send time to the PUBCOMP.

use super::*;
use crate::inflight::{Awaiting, Pubcomp, Pubrec};
use crate::packets::Malformed;
use mqtt_wire::qos2::Sent;

/// What a packet from the broker is, in the phase its connection is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// The broker's answer to our CONNECT.
    ConnAck {
        code: u8,
        session_present: bool,
        limits: packets::ConnackLimits,
    },
    /// Before the CONNACK, anything else: whoever answered does not speak MQTT.
    NotMqtt,
    /// A PUBACK for packet id `id`, with its reason (MQTT 5; 0 under 3.1.1).
    Acked { id: u16, reason: u8 },
    /// QoS 2: a PUBREC for packet id `id`, with its reason.
    Received2 { id: u16, reason: u8 },
    /// QoS 2: a PUBCOMP for packet id `id`, with its reason.
    Completed { id: u16, reason: u8 },
    /// The answer to our PINGREQ.
    PingResp,
    /// MQTT 5: the broker's DISCONNECT after ours (a goodbye), with its reason.
    Goodbye(u8),
    /// MQTT 5: the broker's DISCONNECT while the connection is up, with its reason.
    Disconnect(u8),
    /// A PUBLISH from the broker: a delivery to a subscription. Publishers subscribe to
    /// nothing, so today it is skipped; a subscribing connection verifies it.
    Received,
    /// Anything else (a SUBACK, a PUBLISH acknowledgement we did not ask for): skipped.
    Skipped,
}

/// What packet `p` means to a connection in phase `phase`.
pub(super) fn event(phase: Phase, p: Incoming) -> Event {
    match (phase, p) {
        (
            Phase::AwaitConnack,
            Incoming::ConnAck {
                code,
                session_present,
                limits,
            },
        ) => Event::ConnAck {
            code,
            session_present,
            limits,
        },
        (Phase::AwaitConnack, _) => Event::NotMqtt,
        (Phase::Up | Phase::Closing, Incoming::PubAck(id, reason)) => Event::Acked { id, reason },
        (Phase::Up | Phase::Closing, Incoming::PubRec(id, reason)) => {
            Event::Received2 { id, reason }
        }
        (Phase::Up | Phase::Closing, Incoming::PubComp(id, reason)) => {
            Event::Completed { id, reason }
        }
        (_, Incoming::PingResp) => Event::PingResp,
        (Phase::Closing, Incoming::Disconnect(reason)) => Event::Goodbye(reason),
        (Phase::Up, Incoming::Disconnect(reason)) => Event::Disconnect(reason),
        (_, Incoming::Other(PUBLISH)) => Event::Received,
        _ => Event::Skipped,
    }
}

/// The packet type of a PUBLISH (the high nibble of its first byte).
const PUBLISH: u8 = 3;

/// Frames what one connection reads into packets. A read may end in the middle of a packet:
/// its start is kept (`pending`, the connection's `inbuf`) and completed by the next read.
/// Reads that end on a packet boundary (nearly all) are framed in place, without a copy.
#[derive(Debug, Clone, Copy)]
pub(super) struct Framer {
    /// The largest packet taken from the broker.
    pub max: usize,
    /// The connection speaks MQTT 5.
    pub v5: bool,
}

/// The bytes of one read, joined to what the last read left of a packet.
pub(super) struct Frames<'a> {
    framer: Framer,
    /// The bytes to frame: the read's own, or `pending` with them appended.
    bytes: &'a [u8],
    joined: bool,
    at: usize,
    /// Where the last packet handed out starts.
    last: usize,
}

/// Where framing a read stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Framed {
    /// Bytes framed into whole packets.
    pub used: usize,
    /// Bytes there were.
    pub total: usize,
    /// They were the last read's partial packet with this read's bytes appended.
    pub joined: bool,
}

impl Framed {
    /// What is left for the next read: the start of a packet that arrived in part (kept in
    /// `pending`'s allocation when the bytes were joined there), or nothing.
    pub(super) fn leftover(self, mut pending: Vec<u8>, fresh: &[u8]) -> Vec<u8> {
        if self.used >= self.total {
            return Vec::new();
        }
        if self.joined {
            pending.drain(..self.used);
            pending
        } else {
            fresh[self.used..].to_vec()
        }
    }
}

impl Framer {
    /// The packets of `fresh`, after the partial packet `pending` of the last read (appended
    /// to it when there is one).
    pub(super) fn frames<'a>(self, pending: &'a mut Vec<u8>, fresh: &'a [u8]) -> Frames<'a> {
        let joined = !pending.is_empty();
        let bytes: &[u8] = if joined {
            pending.extend_from_slice(fresh);
            pending
        } else {
            fresh
        };
        Frames {
            framer: self,
            bytes,
            joined,
            at: 0,
            last: 0,
        }
    }
}

impl Frames<'_> {
    /// The next whole packet; `None` when only part of one (or nothing) is left.
    pub(super) fn next_packet(&mut self) -> Result<Option<Incoming>, Malformed> {
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        let f = self.framer;
        match packets::next_packet(&self.bytes[self.at..], f.max, f.v5)? {
            Some((p, len)) => {
                self.last = self.at;
                self.at += len;
                Ok(Some(p))
            }
            None => Ok(None),
        }
    }

    /// The whole frame (fixed header included) of the packet last handed out.
    pub(super) fn last_frame(&self) -> &[u8] {
        &self.bytes[self.last..self.at]
    }

    /// How far framing got.
    pub(super) fn framed(&self) -> Framed {
        Framed {
            used: self.at,
            total: self.bytes.len(),
            joined: self.joined,
        }
    }
}

impl<P: Producer> Worker<P> {
    /// MQTT 5: the broker's DISCONNECT while the connection is up says why it ends it; the
    /// close follows.
    pub(super) fn on_disconnect(&mut self, c: u32, reason: u8, now: Instant) {
        *self.stats.conns.disconnects.entry(reason).or_default() += 1;
        if self.qos.acknowledged() && crate::error::refuses_a_packet(reason) {
            // The broker reads in order and acknowledged all it took before: the oldest
            // message in flight it had not answered is the one it refused. Rejected, not
            // resent.
            let oldest = self.conns[c as usize]
                .inflight
                .iter()
                .find(|a| a.state == Sent::AwaitPubrec)
                .map(|a| a.pkid);
            if let Some(id) = oldest {
                let conn = &self.conns[c as usize];
                let before = (conn.acked_any, conn.acked_since_up);
                if let Some(a) = self.conns[c as usize].inflight.ack(id) {
                    self.answered(c, a, reason, now);
                }
                // No PUBACK came, and no progress: a loss per refused message ends in the
                // give-up.
                let conn = &mut self.conns[c as usize];
                (conn.acked_any, conn.acked_since_up) = before;
            }
        }
        let kind = if reason == crate::error::SESSION_TAKEN_OVER {
            LostKind::TakenOver
        } else {
            LostKind::Other(format!(
                "the broker sent DISCONNECT with reason 0x{reason:02x} ({})",
                crate::error::reason_name(reason)
            ))
        };
        self.lose(c, kind, now);
    }

    /// An accepting CONNACK's limits: the broker's keep-alive replaces ours, its Receive
    /// Maximum bounds the window. A limit the run cannot live with fails the attempt.
    pub(super) fn accept_limits(
        &mut self,
        c: u32,
        limits: &packets::ConnackLimits,
    ) -> Result<(), ConnectFailure> {
        if let Some(f) = self.unusable(limits) {
            return Err(f);
        }
        // MQTT 5: the broker's Server Keep Alive replaces ours.
        self.conns[c as usize].keep_alive = limits
            .server_keep_alive
            .map_or(self.s.conn.keep_alive, |s| Duration::from_secs(s.into()));
        if let Some(rm) = limits.receive_maximum {
            let r = &mut self.stats.conns.receive_maximum;
            *r = Some(r.map_or(rm, |x| x.min(rm)));
        }
        // MQTT 5: never more unacknowledged than the broker takes.
        if self.qos.acknowledged()
            && self.conns[c as usize]
                .inflight
                .limit(limits.receive_maximum)
        {
            self.stats.conns.window_clamped += 1;
        }
        Ok(())
    }

    /// A PUBACK for `id` with `reason` (MQTT 5; 0 under 3.1.1).
    pub(super) fn on_puback(&mut self, c: u32, id: u16, reason: u8, now: Instant) {
        let conn = &mut self.conns[c as usize];
        match conn.inflight.ack(id) {
            Some(a) => self.answered(c, a, reason, now),
            None if conn.inflight.was_issued(id) => self.stats.counts.duplicate_acks += 1,
            None => self.stats.counts.acks_unknown_id += 1,
        }
    }

    /// QoS 2: a PUBREC for `id` with `reason`: the PUBREL goes out, or (a refusing reason)
    /// the message is rejected. Returns whether the window opened.
    pub(super) fn on_pubrec(&mut self, c: u32, id: u16, reason: u8, now: Instant) -> bool {
        let v5 = self.s.conn.mqtt5.is_some();
        let conn = &mut self.conns[c as usize];
        match conn.inflight.pubrec(id, reason) {
            Pubrec::Release => {
                conn.acked_any = true;
                conn.acked_since_up = true;
                conn.out
                    .push_control(&packets::ack(packets::AckKind::PubRel, id, 0, v5));
                self.mark_dirty(c);
                false
            }
            Pubrec::Refused(a) => {
                self.answered(c, a, reason, now);
                true
            }
            Pubrec::NotInFlight if conn.inflight.was_issued(id) => {
                self.stats.counts.duplicate_acks += 1;
                false
            }
            Pubrec::NotInFlight => {
                self.stats.counts.acks_unknown_id += 1;
                false
            }
        }
    }

    /// QoS 2: a PUBCOMP for `id`: the message is acknowledged (0x92 too: the broker had
    /// released it and forgotten the id). Returns whether the window opened.
    pub(super) fn on_pubcomp(&mut self, c: u32, id: u16, reason: u8, now: Instant) -> bool {
        let conn = &mut self.conns[c as usize];
        match conn.inflight.pubcomp(id, reason) {
            Pubcomp::Complete(a) => {
                self.answered(c, a, 0, now);
                true
            }
            // Before its PUBREC: it answers nothing we sent (its PUBREL never went).
            Pubcomp::Early => {
                self.stats.counts.acks_unknown_id += 1;
                false
            }
            Pubcomp::NotInFlight if conn.inflight.was_issued(id) => {
                self.stats.counts.duplicate_acks += 1;
                false
            }
            Pubcomp::NotInFlight => {
                self.stats.counts.acks_unknown_id += 1;
                false
            }
        }
    }

    /// Message `a` left the window answered: acknowledged, or (`reason` 0x80 or more)
    /// refused by the broker.
    fn answered(&mut self, c: u32, a: Awaiting, reason: u8, now: Instant) {
        let conn = &mut self.conns[c as usize];
        conn.acked_any = true;
        conn.acked_since_up = true;
        if reason >= 0x80 {
            // MQTT 5: the broker answered, and refused (not authorized, too
            // large, quota): rejected, not acknowledged, not failed.
            self.stats.counts.points_rejected += a.points as u64;
            self.stats.counts.messages_rejected += 1;
            *self.stats.rejected_by_reason.entry(reason).or_default() += 1;
        } else {
            self.stats.counts.points_acked += a.points as u64;
            self.stats.counts.messages_acked += 1;
            crate::stats::record_clamped(
                &mut self.stats.histos.ack_us,
                micros(now.saturating_duration_since(a.scheduled)),
                &mut self.stats.counts.latency_clamped,
            );
        }
        self.stats.last_ack = Some(now);
        if conn.retaining {
            let upto = conn.inflight.first_start().unwrap_or(conn.out.end());
            conn.out.release(upto);
        }
        if conn.inflight.is_empty() {
            conn.inflight.trim();
            conn.out.trim(self.keep_buffer);
            if self.phase != WorkerPhase::Generating {
                self.drain_check.push(c);
            }
        }
        self.unpaced_idle = false;
    }

    /// What in an accepting MQTT 5 CONNACK rules this run out: a protocol error, QoS 0
    /// only for a QoS 1 run, or a Maximum Packet Size our largest message exceeds (a clear
    /// error before anything is sent, not a DISCONNECT 0x95 per message).
    pub(super) fn unusable(&self, limits: &packets::ConnackLimits) -> Option<ConnectFailure> {
        if let Some(what) = limits.violation() {
            return Some(ConnectFailure::BrokerProtocol(what));
        }
        match limits.maximum_qos {
            Some(0) if self.qos.acknowledged() => {
                return Some(ConnectFailure::Limit(BrokerLimit::QosZeroOnly));
            }
            Some(1) if self.qos == Qos::ExactlyOnce => {
                return Some(ConnectFailure::Limit(BrokerLimit::QosOneMax));
            }
            _ => {}
        }
        let limit = limits.maximum_packet_size?;
        let props = self
            .s
            .conn
            .mqtt5
            .as_ref()
            .map_or(0, |v5| v5.publish_properties.len());
        let p = &self.s.publish;
        let largest = (packets::publish_overhead(p.max_topic, props) + p.max_payload) as u64;
        (largest > limit as u64).then_some(ConnectFailure::Limit(BrokerLimit::PacketSize {
            limit,
            largest,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CONNACK, PUBACK 1, PINGRESP, a QoS 0 PUBLISH (topic "t/1", payload "hi"), a
    /// SUBACK, PUBACK 65535: what a broker may send a connection, back to back.
    fn stream() -> Vec<u8> {
        let mut b = vec![0x20, 0x02, 0x01, 0x00];
        b.extend([0x40, 0x02, 0x00, 0x01]);
        b.extend([0xd0, 0x00]);
        b.extend([0x30, 0x07, 0x00, 0x03, b't', b'/', b'1', b'h', b'i']);
        b.extend([0x90, 0x03, 0x00, 0x02, 0x01]);
        b.extend([0x40, 0x02, 0xff, 0xff]);
        b
    }

    const FRAMER: Framer = Framer {
        max: 1 << 20,
        v5: false,
    };

    /// Frames `reads` one after the other as a connection does, carrying a partial packet
    /// over; the packets in order.
    fn frame_reads(reads: &[&[u8]]) -> Vec<Incoming> {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for fresh in reads {
            let mut pend = std::mem::take(&mut pending);
            let mut frames = FRAMER.frames(&mut pend, fresh);
            while let Some(p) = frames.next_packet().expect("valid packets") {
                out.push(p);
            }
            let framed = frames.framed();
            pending = framed.leftover(pend, fresh);
        }
        assert!(pending.is_empty(), "a whole stream leaves nothing over");
        out
    }

    #[test]
    fn framing_finds_the_same_packets_wherever_a_read_splits_the_stream() {
        let s = stream();
        let whole = frame_reads(&[&s]);
        assert_eq!(whole.len(), 6, "{whole:?}");
        assert!(matches!(
            whole[0],
            Incoming::ConnAck {
                session_present: true,
                code: 0,
                ..
            }
        ));
        assert_eq!(whole[1], Incoming::PubAck(1, 0));
        assert_eq!(whole[2], Incoming::PingResp);
        assert_eq!(whole[3], Incoming::Other(PUBLISH));
        assert_eq!(whole[5], Incoming::PubAck(65_535, 0));
        // Split at every byte, in two reads and in three.
        for i in 0..=s.len() {
            assert_eq!(frame_reads(&[&s[..i], &s[i..]]), whole, "split at {i}");
            for j in i..=s.len() {
                assert_eq!(
                    frame_reads(&[&s[..i], &s[i..j], &s[j..]]),
                    whole,
                    "split at {i} and {j}"
                );
            }
        }
        // One byte a read.
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(frame_reads(&bytes), whole);
    }

    #[test]
    fn a_read_ending_on_a_packet_boundary_keeps_nothing_and_copies_nothing() {
        let s = stream();
        let mut pending = Vec::new();
        let mut frames = FRAMER.frames(&mut pending, &s);
        while frames.next_packet().unwrap().is_some() {}
        let framed = frames.framed();
        assert_eq!(
            (framed.used, framed.total, framed.joined),
            (s.len(), s.len(), false)
        );
        assert!(framed.leftover(pending, &s).is_empty());
    }

    #[test]
    fn bytes_that_are_not_mqtt_are_malformed() {
        let mut pending = Vec::new();
        let junk = [0x00, 0x02, 0x00, 0x00];
        let mut frames = FRAMER.frames(&mut pending, &junk);
        assert!(frames.next_packet().is_err());
        let too_large = [0x30, 0xff, 0xff, 0xff, 0x7f];
        let mut frames = Framer {
            max: 1024,
            v5: false,
        }
        .frames(&mut pending, &too_large);
        assert!(matches!(
            frames.next_packet(),
            Err(Malformed::TooLarge { .. })
        ));
    }

    #[test]
    fn each_packet_is_the_event_its_connections_phase_makes_it() {
        let connack = Incoming::ConnAck {
            session_present: false,
            code: 0,
            limits: Default::default(),
        };
        assert!(matches!(
            event(Phase::AwaitConnack, connack),
            Event::ConnAck { code: 0, .. }
        ));
        // Before the CONNACK anything else says the peer is no broker.
        for p in [
            Incoming::PubAck(1, 0),
            Incoming::PingResp,
            Incoming::Other(3),
        ] {
            assert_eq!(event(Phase::AwaitConnack, p), Event::NotMqtt, "{p:?}");
        }
        let ack = Incoming::PubAck(7, 0x10);
        assert_eq!(
            event(Phase::Up, ack),
            Event::Acked {
                id: 7,
                reason: 0x10
            }
        );
        assert_eq!(
            event(Phase::Closing, ack),
            Event::Acked {
                id: 7,
                reason: 0x10
            }
        );
        assert_eq!(event(Phase::Up, Incoming::PingResp), Event::PingResp);
        assert_eq!(
            event(Phase::Up, Incoming::Disconnect(0x8e)),
            Event::Disconnect(0x8e)
        );
        assert_eq!(
            event(Phase::Closing, Incoming::Disconnect(0)),
            Event::Goodbye(0)
        );
        // A delivery to a subscription is its own event, ready for a verifier.
        assert_eq!(event(Phase::Up, Incoming::Other(PUBLISH)), Event::Received);
        assert_eq!(event(Phase::Up, Incoming::Other(9)), Event::Skipped);
        // A second CONNACK on a connection that is up means nothing.
        assert_eq!(event(Phase::Up, connack), Event::Skipped);
    }

    #[test]
    fn pubrec_and_pubcomp_are_qos_2_events_once_the_connection_is_up() {
        for phase in [Phase::Up, Phase::Closing] {
            assert_eq!(
                event(phase, Incoming::PubRec(9, 0x97)),
                Event::Received2 {
                    id: 9,
                    reason: 0x97
                }
            );
            assert_eq!(
                event(phase, Incoming::PubComp(9, 0)),
                Event::Completed { id: 9, reason: 0 }
            );
        }
        // Before the CONNACK they mean the peer is not an MQTT broker.
        assert_eq!(
            event(Phase::AwaitConnack, Incoming::PubRec(9, 0)),
            Event::NotMqtt
        );
    }
}
