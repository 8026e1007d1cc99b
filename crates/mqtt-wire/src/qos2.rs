//! QoS 2 exchanges as data and pure steps, for both sides of a packet id (MQTT 3.1.1
//! section 4.3.3, MQTT 5 section 4.3.3). A connection holds a [`Sent`] per packet id it
//! published at QoS 2 and one [`Receiver`] for the packet ids it received; packets go in,
//! what to write (and whether to deliver) comes out. Nothing here writes or allocates per
//! message beyond the receiver's sorted list of ids awaiting PUBREL.
//!
//! ```text
//! sender:   PUBLISH --> Sent::AwaitPubrec --PUBREC--> (write PUBREL) Sent::AwaitPubcomp
//!                                          --PUBCOMP--> complete (acknowledged)
//! receiver: PUBLISH --> deliver once, write PUBREC; id awaits PUBREL
//!           (the same id again before PUBREL: write PUBREC, do not deliver)
//!           PUBREL --> write PUBCOMP; id free (a PUBLISH with it now is a new message)
//! ```
//!
//! After a reconnect with the session kept, [`Sent::resend`] says what goes again: the
//! PUBLISH with DUP while no PUBREC came, else the PUBREL (never the PUBLISH once PUBREC came).

use crate::packets::reason;

/// Where a QoS 2 message this side published stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Published; the receiver has not answered.
    AwaitPubrec,
    /// PUBREC came and PUBREL went; waiting for PUBCOMP.
    AwaitPubcomp,
}

/// What a sender does after a packet for one of its ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderStep {
    /// Write PUBREL for the id.
    SendPubrel,
    /// The exchange is over and the message acknowledged (PUBCOMP, with its reason code:
    /// 0x92 says the receiver had already forgotten the id): forget the id.
    Complete(u8),
    /// MQTT 5: the receiver refused the message (PUBREC with a reason of 0x80 or more):
    /// the exchange ends without PUBREL; forget the id.
    Refused(u8),
    /// A packet that is not the next step here (PUBCOMP before PUBREC): nothing to do.
    Unexpected,
}

/// What to send again for an id after a reconnect that kept the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// The PUBLISH, with DUP set.
    PublishDup,
    /// The PUBREL.
    Pubrel,
}

impl Sent {
    /// A PUBREC with `reason` (0 under 3.1.1) came for this id.
    pub fn on_pubrec(&mut self, reason: u8) -> SenderStep {
        match self {
            Sent::AwaitPubrec if reason >= 0x80 => SenderStep::Refused(reason),
            Sent::AwaitPubrec => {
                *self = Sent::AwaitPubcomp;
                SenderStep::SendPubrel
            }
            // A PUBREC again (the receiver resent it): PUBREL again, as the spec allows.
            Sent::AwaitPubcomp => SenderStep::SendPubrel,
        }
    }

    /// A PUBCOMP with `reason` came for this id.
    pub fn on_pubcomp(&mut self, reason: u8) -> SenderStep {
        match self {
            Sent::AwaitPubcomp => SenderStep::Complete(reason),
            Sent::AwaitPubrec => SenderStep::Unexpected,
        }
    }

    /// What to send again after a reconnect with the session kept.
    pub fn resend(self) -> Resend {
        match self {
            Sent::AwaitPubrec => Resend::PublishDup,
            Sent::AwaitPubcomp => Resend::Pubrel,
        }
    }
}

/// Whether a QoS 2 PUBLISH that came is handed to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// New: deliver it (and write PUBREC).
    Deliver,
    /// Its id awaits PUBREL: delivered already; write PUBREC again, do not deliver.
    Duplicate,
}

/// The receiving side's QoS 2 state of one connection (one session): the ids whose
/// PUBLISH was delivered and whose PUBREL has not come.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Receiver {
    /// Sorted, without repeats.
    awaiting_pubrel: Vec<u16>,
}

impl Receiver {
    /// A QoS 2 PUBLISH with `pkid` came (DUP or not: the id decides): deliver it or not;
    /// either way answer PUBREC.
    pub fn on_publish(&mut self, pkid: u16) -> Delivery {
        match self.awaiting_pubrel.binary_search(&pkid) {
            Ok(_) => Delivery::Duplicate,
            Err(at) => {
                self.awaiting_pubrel.insert(at, pkid);
                Delivery::Deliver
            }
        }
    }

    /// A PUBREL for `pkid` came: answer PUBCOMP with the reason code returned (MQTT 5: 0x92,
    /// Packet Identifier not found, for an id not awaited; 3.1.1 writes none). The id is
    /// free again.
    pub fn on_pubrel(&mut self, pkid: u16) -> u8 {
        match self.awaiting_pubrel.binary_search(&pkid) {
            Ok(at) => {
                self.awaiting_pubrel.remove(at);
                reason::SUCCESS
            }
            Err(_) => reason::PACKET_IDENTIFIER_NOT_FOUND,
        }
    }

    /// Whether `pkid` awaits its PUBREL.
    pub fn awaits_pubrel(&self, pkid: u16) -> bool {
        self.awaiting_pubrel.binary_search(&pkid).is_ok()
    }

    /// Ids awaiting PUBREL.
    pub fn len(&self) -> usize {
        self.awaiting_pubrel.len()
    }

    pub fn is_empty(&self) -> bool {
        self.awaiting_pubrel.is_empty()
    }

    /// The session is gone (a clean session, or a CONNACK without Session Present): the
    /// broker will not send PUBREL for these ids.
    pub fn clear(&mut self) {
        self.awaiting_pubrel.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_releases_after_pubrec_and_completes_at_pubcomp() {
        let mut s = Sent::AwaitPubrec;
        assert_eq!(s.resend(), Resend::PublishDup);
        assert_eq!(s.on_pubcomp(0), SenderStep::Unexpected);
        assert_eq!(s, Sent::AwaitPubrec);
        assert_eq!(s.on_pubrec(0), SenderStep::SendPubrel);
        assert_eq!(s, Sent::AwaitPubcomp);
        // Once PUBREC came, a reconnect sends PUBREL, never the PUBLISH again.
        assert_eq!(s.resend(), Resend::Pubrel);
        assert_eq!(s.on_pubrec(0), SenderStep::SendPubrel);
        assert_eq!(s.on_pubcomp(0), SenderStep::Complete(0));
        let mut s = Sent::AwaitPubcomp;
        assert_eq!(
            s.on_pubcomp(reason::PACKET_IDENTIFIER_NOT_FOUND),
            SenderStep::Complete(0x92)
        );
    }

    #[test]
    fn a_refusing_pubrec_ends_the_exchange_without_pubrel() {
        let mut s = Sent::AwaitPubrec;
        assert_eq!(
            s.on_pubrec(reason::QUOTA_EXCEEDED),
            SenderStep::Refused(0x97)
        );
        assert_eq!(s, Sent::AwaitPubrec);
        // 0x10 (no matching subscribers) is a success.
        assert_eq!(
            s.on_pubrec(reason::NO_MATCHING_SUBSCRIBERS),
            SenderStep::SendPubrel
        );
    }

    #[test]
    fn a_dup_publish_before_pubrel_is_not_delivered_twice() {
        let mut r = Receiver::default();
        assert_eq!(r.on_publish(7), Delivery::Deliver);
        assert_eq!(r.on_publish(9), Delivery::Deliver);
        // The broker resends 7 with DUP (our PUBREC was lost with the connection).
        assert_eq!(r.on_publish(7), Delivery::Duplicate);
        assert!(r.awaits_pubrel(7) && r.awaits_pubrel(9));
        assert_eq!(r.on_pubrel(7), reason::SUCCESS);
        assert!(!r.awaits_pubrel(7));
        // After PUBREL the id is free: a PUBLISH with it is a new message.
        assert_eq!(r.on_publish(7), Delivery::Deliver);
        // A PUBREL again (ours was lost): PUBCOMP all the same, "not found" in MQTT 5.
        assert_eq!(r.on_pubrel(9), reason::SUCCESS);
        assert_eq!(r.on_pubrel(9), reason::PACKET_IDENTIFIER_NOT_FOUND);
        assert_eq!(r.len(), 1);
        r.clear();
        assert!(r.is_empty());
    }

    #[test]
    fn a_stream_of_resends_delivers_each_message_exactly_once() {
        // Every id of a window published, half of them again before PUBREL, then released,
        // then reused: deliveries are exactly the first PUBLISH of each use.
        let mut r = Receiver::default();
        let mut delivered = 0;
        for round in 0..3 {
            for id in 1..=500u16 {
                delivered += usize::from(r.on_publish(id) == Delivery::Deliver);
            }
            for id in (1..=500u16).step_by(2) {
                assert_eq!(r.on_publish(id), Delivery::Duplicate, "round {round}");
            }
            for id in 1..=500u16 {
                assert_eq!(r.on_pubrel(id), 0);
            }
            assert!(r.is_empty());
        }
        assert_eq!(delivered, 1500);
    }
}
