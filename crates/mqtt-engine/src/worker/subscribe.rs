//! The subscriber role: a connection that, once its CONNACK accepts it, subscribes (its
//! filters rendered with its index), counts the SUBACK, and hands every PUBLISH that comes
//! to the worker's [`Consumer`], answering PUBACK at QoS 1 and the QoS 2 receiver's exchange
//! (PUBREC; PUBREL -> PUBCOMP; a PUBLISH repeated before its PUBREL not handed over twice).
//! With a persistent session (`clean_session` false) a reconnect the broker answers with
//! session present keeps its subscription (the queued messages simply arrive); one without
//! subscribes again.
//!
//! ```text
//! CONNACK (accepting) --> on_up: SUBSCRIBE (or, session present, nothing to do)
//! frame from the broker --> a copy in the worker's scratch --> mqtt-wire decode_mut
//!   PUBLISH --> SubConn::on_publish: deliver? answer? --> Consumer::received, PUBACK/PUBREC
//!   PUBREL  --> SubConn::on_pubrel --> PUBCOMP
//!   SUBACK  --> SubConn::on_suback --> subscribed / refused by reason, SUBSCRIBE->SUBACK µs
//! ```
//!
//! The state steps ([`SubConn`], [`subscribe_packet`]) are pure and unit-tested; the worker's
//! glue below only moves bytes between them, the outbox and the consumer. A PUBLISH frame is
//! copied once into the worker's scratch buffer (reused, so no allocation per delivery) to
//! get it mutable for a decoder that unescapes in place: the framer hands out read-only
//! slices of the read buffer.

use std::collections::BTreeMap;
use std::ops::AddAssign;

use hdrhistogram::Histogram;
use mqtt_wire::packets::{AckKind, Packet, SubOptions};
use mqtt_wire::qos2::{Delivery, Receiver};

use super::*;
use crate::settings::SubscribeSettings;

/// What a tool does with what its subscribers receive; the engine decides nothing about it.
/// One per worker.
pub trait Consumer: Send {
    /// Subscriber `sub` (its index: the `{i}` of its filters and client id) received
    /// `payload` on `topic` at `now`. The payload may be changed in place (a decoder that
    /// unescapes); it is not used after.
    fn received(&mut self, sub: u32, topic: &[u8], payload: &mut [u8], now: Instant);
}

/// The packet id of every SUBSCRIBE (one outstanding per connection at a time).
const SUBSCRIBE_PKID: u16 = 1;

/// Appends subscriber `index`'s SUBSCRIBE: every filter rendered with the index, behind
/// `$share/{group}/` when the fleet is a share group, at the fleet's options.
pub fn subscribe_packet(
    s: &SubscribeSettings,
    index: u64,
    v5: bool,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<(), mqtt_wire::EncodeError> {
    let mut filters: Vec<(String, SubOptions)> = Vec::with_capacity(s.filters.len());
    for f in &s.filters {
        scratch.clear();
        if let Some(g) = &s.share_group {
            scratch.extend_from_slice(b"$share/");
            scratch.extend_from_slice(g.as_bytes());
            scratch.push(b'/');
        }
        f.render_into(index, b"", scratch);
        filters.push((String::from_utf8_lossy(scratch).into_owned(), s.options));
    }
    mqtt_wire::packets::subscribe(out, SUBSCRIBE_PKID, &filters, None, v5)
}

/// What a subscribing connection does once its CONNACK accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUp {
    /// Send the SUBSCRIBE.
    Subscribe,
    /// The broker kept the session and its subscription: its queued messages come as they
    /// are; nothing to send.
    Resume,
}

/// What a SUBACK said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Suback {
    /// Every filter granted; `first`: the first time this connection is subscribed;
    /// `qos`: the lowest QoS granted (a broker may grant less than asked, e.g. Mosquitto's
    /// `max_qos`).
    Granted { first: bool, qos: u8 },
    /// Some filters refused, with their return codes (0x80 and above).
    Refused(Vec<u8>),
    /// Not the id of our SUBSCRIBE, or none outstanding.
    Unexpected,
}

/// One subscribing connection's state, across its reconnects.
#[derive(Debug, Default)]
pub struct SubConn {
    /// The SUBSCRIBE written and unanswered: when it went.
    pending: Option<Instant>,
    /// A SUBACK granted everything at least once.
    subscribed_once: bool,
    /// The QoS 2 ids delivered and awaiting PUBREL (the session's).
    qos2: Receiver,
}

impl SubConn {
    /// The CONNACK accepted the connection with `session_present`.
    pub fn on_up(&mut self, session_present: bool, clean_session: bool, now: Instant) -> OnUp {
        if session_present && !clean_session && self.subscribed_once {
            return OnUp::Resume;
        }
        // A new session: nothing of the old one's QoS 2 exchanges is awaited any more.
        self.qos2 = Receiver::default();
        self.pending = Some(now);
        OnUp::Subscribe
    }

    /// A SUBACK for `pkid` with a return code per filter; the latency, when it answers ours.
    pub fn on_suback(
        &mut self,
        pkid: u16,
        codes: &[u8],
        now: Instant,
    ) -> (Suback, Option<Duration>) {
        let Some(sent) = self.pending.filter(|_| pkid == SUBSCRIBE_PKID) else {
            return (Suback::Unexpected, None);
        };
        self.pending = None;
        let took = now.saturating_duration_since(sent);
        let refused: Vec<u8> = codes.iter().copied().filter(|c| *c >= 0x80).collect();
        if !refused.is_empty() || codes.is_empty() {
            return (Suback::Refused(refused), Some(took));
        }
        let first = !std::mem::replace(&mut self.subscribed_once, true);
        let qos = codes.iter().copied().min().unwrap_or(0);
        (Suback::Granted { first, qos }, Some(took))
    }

    /// A PUBLISH at `qos` with `pkid`: whether to hand it over, and what to answer.
    pub fn on_publish(&mut self, qos: Qos, pkid: u16, v5: bool) -> (bool, Option<AckFrameBytes>) {
        match qos {
            Qos::AtMostOnce => (true, None),
            Qos::AtLeastOnce => (true, Some(ack(AckKind::PubAck, pkid, v5))),
            Qos::ExactlyOnce => {
                let deliver = self.qos2.on_publish(pkid) == Delivery::Deliver;
                (deliver, Some(ack(AckKind::PubRec, pkid, v5)))
            }
        }
    }

    /// A PUBREL for `pkid`: the PUBCOMP to answer.
    pub fn on_pubrel(&mut self, pkid: u16, v5: bool) -> AckFrameBytes {
        let reason = self.qos2.on_pubrel(pkid);
        AckFrameBytes(mqtt_wire::packets::ack(AckKind::PubComp, pkid, reason, v5))
    }
}

/// An acknowledgement to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrameBytes(pub mqtt_wire::packets::AckFrame);

fn ack(kind: AckKind, pkid: u16, v5: bool) -> AckFrameBytes {
    AckFrameBytes(mqtt_wire::packets::ack(kind, pkid, 0, v5))
}

/// What the subscribers of a worker did, mergeable with `+=`.
#[derive(Debug, Clone)]
pub struct SubStats {
    /// Subscribers whose SUBSCRIBE was granted at least once.
    pub subscribed: u64,
    /// SUBSCRIBEs sent (first and after reconnects without a session).
    pub subscribes: u64,
    /// Filters refused in a SUBACK, by return code.
    pub refused: BTreeMap<u8, u64>,
    /// Subscribers by the lowest QoS their first SUBACK granted.
    pub granted_qos: BTreeMap<u8, u64>,
    /// Connections up with their session kept by the broker (a reconnect, or a restarted
    /// subscriber with the same client id).
    pub resumed: u64,
    /// PUBLISHes handed to the consumer.
    pub deliveries: u64,
    /// Deliveries on connections whose session the broker kept (what it had queued for
    /// the session among them).
    pub queued_deliveries: u64,
    /// QoS 2 PUBLISHes repeated before their PUBREL: answered, not handed over again.
    pub qos2_repeats: u64,
    /// SUBSCRIBE -> SUBACK, µs.
    pub suback_us: Histogram<u64>,
}

impl Default for SubStats {
    fn default() -> Self {
        SubStats {
            subscribed: 0,
            subscribes: 0,
            refused: BTreeMap::new(),
            granted_qos: BTreeMap::new(),
            resumed: 0,
            deliveries: 0,
            queued_deliveries: 0,
            qos2_repeats: 0,
            suback_us: crate::stats::histogram(),
        }
    }
}

impl AddAssign<&SubStats> for SubStats {
    fn add_assign(&mut self, o: &SubStats) {
        self.subscribed += o.subscribed;
        self.subscribes += o.subscribes;
        for (k, v) in &o.refused {
            *self.refused.entry(*k).or_default() += v;
        }
        for (k, v) in &o.granted_qos {
            *self.granted_qos.entry(*k).or_default() += v;
        }
        self.resumed += o.resumed;
        self.deliveries += o.deliveries;
        self.queued_deliveries += o.queued_deliveries;
        self.qos2_repeats += o.qos2_repeats;
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.suback_us.add(&o.suback_us);
    }
}

/// A worker's subscribing side: the settings, the consumer, each connection's state.
pub(super) struct Subscribing {
    pub settings: Arc<SubscribeSettings>,
    pub consumer: Box<dyn Consumer>,
    pub conns: Vec<SubConn>,
    /// Per connection: up with its session kept by the broker.
    resumed: Vec<bool>,
    /// A frame copied to be decoded in place; kept for its allocation.
    scratch: Vec<u8>,
    /// SUBSCRIBE bytes and a filter being rendered; kept for their allocations.
    packet: Vec<u8>,
    filter: Vec<u8>,
}

impl<P: Producer> Worker<P> {
    /// Every connection of this worker subscribes (see [`crate::Fleet::start_subscribers`])
    /// and hands what it receives to `consumer`.
    pub fn subscribing(
        mut self,
        settings: Arc<SubscribeSettings>,
        consumer: Box<dyn Consumer>,
    ) -> Worker<P> {
        for conn in &mut self.conns {
            conn.role = Role::Subscriber;
        }
        self.sub = Some(Subscribing {
            settings,
            consumer,
            conns: (0..self.conns.len()).map(|_| SubConn::default()).collect(),
            resumed: vec![false; self.conns.len()],
            scratch: Vec::new(),
            packet: Vec::new(),
            filter: Vec::new(),
        });
        self
    }

    /// Subscriber `c`'s index: the `{i}` of its client id and filters.
    pub(super) fn sub_index(&self, c: u64) -> Option<u64> {
        self.sub.as_ref().map(|s| s.settings.first_index + c)
    }

    /// Connection `c`'s CONNACK accepted it: a subscriber subscribes, or resumes its session.
    pub(super) fn sub_up(&mut self, c: u32, session_present: bool, now: Instant) {
        let v5 = self.s.conn.mqtt5.is_some();
        let clean = self.s.conn.clean_session;
        let index = self.conns[c as usize].index;
        let Some(sub) = self.sub.as_mut() else {
            return;
        };
        let kept = session_present && !clean;
        sub.resumed[c as usize] = kept;
        self.stats.sub.resumed += u64::from(kept);
        match sub.conns[c as usize].on_up(session_present, clean, now) {
            OnUp::Resume => {}
            OnUp::Subscribe => {
                sub.packet.clear();
                let i = sub.settings.first_index + index;
                let r = subscribe_packet(&sub.settings, i, v5, &mut sub.filter, &mut sub.packet);
                if let Err(e) = r {
                    // The plan checked the filters; a rendered one can still be too long.
                    return self.lose(c, LostKind::Other(format!("its SUBSCRIBE: {e}")), now);
                }
                self.stats.sub.subscribes += 1;
                self.conns[c as usize].out.push_control(&sub.packet);
                self.mark_dirty(c);
            }
        }
    }

    /// A frame from the broker the publishing side skips (a PUBLISH, SUBACK, PUBREL) on a
    /// subscribing connection; false when it broke the connection.
    pub(super) fn sub_frame(&mut self, c: u32, frame: &[u8], now: Instant) -> bool {
        let v5 = self.s.conn.mqtt5.is_some();
        let Some(sub) = self.sub.as_mut() else {
            return true;
        };
        let mut scratch = std::mem::take(&mut sub.scratch);
        scratch.clear();
        scratch.extend_from_slice(frame);
        let ok = self.sub_packet(c, &mut scratch, v5, now);
        if let Some(sub) = self.sub.as_mut() {
            sub.scratch = scratch;
        }
        ok
    }

    fn sub_packet(&mut self, c: u32, frame: &mut [u8], v5: bool, now: Instant) -> bool {
        let header = match mqtt_wire::frame::frame(frame, usize::MAX) {
            Ok(Some(h)) => h,
            _ => return true, // framed already: cannot happen
        };
        let first = frame[0];
        let packet = match packets::decode_mut(first, &mut frame[header.header_len..], v5) {
            Ok(p) => p,
            Err(e) => {
                self.lose(c, LostKind::Other(format!("the broker sent {e}")), now);
                return false;
            }
        };
        let index = self.conns[c as usize].index;
        let Some(sub) = self.sub.as_mut() else {
            return true;
        };
        let state = &mut sub.conns[c as usize];
        let answer = match packet {
            Packet::Publish(p) => {
                let (deliver, answer) = state.on_publish(p.qos, p.pkid, v5);
                if deliver {
                    let i = (sub.settings.first_index + index) as u32;
                    sub.consumer.received(i, p.topic, p.payload, now);
                    self.stats.sub.deliveries += 1;
                    if sub.resumed[c as usize] {
                        self.stats.sub.queued_deliveries += 1;
                    }
                } else {
                    self.stats.sub.qos2_repeats += 1;
                }
                answer
            }
            Packet::PubRel(a) => Some(state.on_pubrel(a.pkid, v5)),
            Packet::SubAck { pkid, codes } => {
                let (outcome, took) = state.on_suback(pkid, codes, now);
                if let Some(t) = took {
                    crate::stats::record_clamped(
                        &mut self.stats.sub.suback_us,
                        micros(t).max(1),
                        &mut self.stats.counts.latency_clamped,
                    );
                }
                match outcome {
                    Suback::Granted { first, qos } => {
                        if first {
                            *self.stats.sub.granted_qos.entry(qos).or_default() += 1;
                            self.stats.sub.subscribed += 1;
                            self.shared.subscribed.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                    Suback::Refused(codes) => {
                        for &code in &codes {
                            *self.stats.sub.refused.entry(code).or_default() += 1;
                        }
                        if codes.is_empty() {
                            *self.stats.sub.refused.entry(0x80).or_default() += 1;
                        }
                        self.shared.refused.fetch_add(1, Ordering::AcqRel);
                        // A subscriber refused its subscription has nothing to do: it
                        // fails, counted by reason, and is not retried.
                        self.close_refused(c, now);
                        return false;
                    }
                    Suback::Unexpected => {}
                }
                None
            }
            _ => None,
        };
        if let Some(a) = answer {
            self.conns[c as usize].out.push_control(&a.0);
            self.mark_dirty(c);
        }
        true
    }

    /// A subscriber whose subscription was refused says DISCONNECT and is done.
    fn close_refused(&mut self, c: u32, now: Instant) {
        let conn = &mut self.conns[c as usize];
        conn.out.push_control(&packets::DISCONNECT);
        conn.phase = Phase::Closing;
        let gen = conn.generation;
        self.timers.push(Reverse((
            now + CLOSE_LINGER,
            TimerKind::CloseLinger,
            c,
            gen,
        )));
        self.flush(c, now);
        self.shut_write(c);
    }

    /// A subscribing connection that is lost: its queued-delivery mark ends.
    pub(super) fn sub_lost(&mut self, c: u32) {
        if let Some(sub) = self.sub.as_mut() {
            sub.resumed[c as usize] = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::Template;
    use mqtt_wire::packets::{decode, Packet};

    fn settings(filters: &[&str], share: Option<&str>, qos: Qos) -> SubscribeSettings {
        SubscribeSettings {
            filters: filters
                .iter()
                .map(|f| Template::parse(f, false, "--topic").expect("template"))
                .collect(),
            options: SubOptions::at(qos),
            share_group: share.map(str::to_owned),
            first_index: 0,
        }
    }

    /// The filters and option bytes of a SUBSCRIBE, read back with the wire's decoder's
    /// framing (the broker's side).
    fn filters_of(packet: &[u8], v5: bool) -> Vec<(String, u8)> {
        let h = mqtt_wire::frame::frame(packet, usize::MAX)
            .expect("framed")
            .expect("whole");
        assert_eq!(packet[0], 0x82, "a SUBSCRIBE");
        let mut b = &packet[h.header_len + 2..];
        if v5 {
            b = &b[1..]; // no properties
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let n = u16::from_be_bytes([b[0], b[1]]) as usize;
            out.push((
                String::from_utf8(b[2..2 + n].to_vec()).expect("utf-8"),
                b[2 + n],
            ));
            b = &b[3 + n..];
        }
        out
    }

    #[test]
    fn a_subscriber_renders_its_index_into_every_filter() {
        let s = settings(
            &["device_data/sensor-{i:05}", "cmd/{i}/#"],
            None,
            Qos::AtLeastOnce,
        );
        let mut out = Vec::new();
        subscribe_packet(&s, 42, false, &mut Vec::new(), &mut out).expect("encoded");
        assert_eq!(
            filters_of(&out, false),
            vec![
                ("device_data/sensor-00042".to_owned(), 1),
                ("cmd/42/#".to_owned(), 1)
            ]
        );
    }

    #[test]
    fn a_share_group_puts_share_before_every_filter_with_mqtt5_options() {
        let mut s = settings(&["device_data/#"], Some("g1"), Qos::ExactlyOnce);
        s.options.retain_handling = mqtt_wire::packets::RetainHandling::Never;
        let mut out = Vec::new();
        subscribe_packet(&s, 0, true, &mut Vec::new(), &mut out).expect("encoded");
        assert_eq!(
            filters_of(&out, true),
            vec![("$share/g1/device_data/#".to_owned(), 2 | (2 << 4))]
        );
    }

    #[test]
    fn a_resumed_persistent_session_does_not_subscribe_again_but_a_lost_one_does() {
        let now = Instant::now();
        let mut st = SubConn::default();
        // Never subscribed: subscribe whatever the broker says.
        assert_eq!(st.on_up(true, false, now), OnUp::Subscribe);
        assert_eq!(
            st.on_suback(SUBSCRIBE_PKID, &[1], now).0,
            Suback::Granted {
                first: true,
                qos: 1
            }
        );
        assert_eq!(st.on_up(true, false, now), OnUp::Resume);
        // The broker lost the session: subscribe again (not a first subscription).
        assert_eq!(st.on_up(false, false, now), OnUp::Subscribe);
        assert_eq!(
            st.on_suback(SUBSCRIBE_PKID, &[2, 0], now).0,
            Suback::Granted {
                first: false,
                qos: 0
            }
        );
        // A clean session always subscribes.
        assert_eq!(st.on_up(true, true, now), OnUp::Subscribe);
    }

    #[test]
    fn a_suback_refusing_a_filter_is_a_failure_with_its_code_and_its_latency_counts() {
        let t0 = Instant::now();
        let mut st = SubConn::default();
        st.on_up(false, true, t0);
        let (what, took) = st.on_suback(SUBSCRIBE_PKID, &[0, 0x87], t0 + Duration::from_millis(3));
        assert_eq!(what, Suback::Refused(vec![0x87]));
        assert_eq!(took, Some(Duration::from_millis(3)));
        // Answered already: a second SUBACK is not ours.
        assert_eq!(st.on_suback(SUBSCRIBE_PKID, &[0], t0).0, Suback::Unexpected);
    }

    #[test]
    fn qos1_deliveries_are_acknowledged_and_handed_over() {
        let mut st = SubConn::default();
        let (deliver, answer) = st.on_publish(Qos::AtLeastOnce, 7, false);
        assert!(deliver);
        assert_eq!(&*answer.expect("PUBACK").0, &[0x40, 2, 0, 7]);
        assert_eq!(st.on_publish(Qos::AtMostOnce, 0, false), (true, None));
    }

    #[test]
    fn a_qos2_publish_repeated_before_its_pubrel_is_answered_but_not_delivered_twice() {
        let mut st = SubConn::default();
        let (deliver, answer) = st.on_publish(Qos::ExactlyOnce, 9, true);
        assert!(deliver);
        assert_eq!(&*answer.expect("PUBREC").0, &[0x50, 2, 0, 9]);
        let (again, answer) = st.on_publish(Qos::ExactlyOnce, 9, true);
        assert!(!again, "a repeat before PUBREL is not delivered");
        assert!(answer.is_some(), "but answered with PUBREC again");
        let comp = st.on_pubrel(9, true);
        assert_eq!(&*comp.0, &[0x70, 2, 0, 9]);
        // The id is free: the same id now is a new message.
        assert!(st.on_publish(Qos::ExactlyOnce, 9, true).0);
        // A PUBREL for an id not awaited: PUBCOMP with "not found" under MQTT 5.
        let comp = st.on_pubrel(10, true);
        match decode(comp.0[0], &comp.0[2..], true).expect("decoded") {
            Packet::PubComp(a) => assert_eq!(a.reason, 0x92),
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn a_new_session_forgets_the_old_sessions_qos2_ids() {
        let now = Instant::now();
        let mut st = SubConn::default();
        st.on_up(false, true, now);
        assert!(st.on_publish(Qos::ExactlyOnce, 3, false).0);
        // Lost before PUBREL; the new session's id 3 is a new message.
        st.on_up(false, true, now);
        assert!(st.on_publish(Qos::ExactlyOnce, 3, false).0);
    }
}
