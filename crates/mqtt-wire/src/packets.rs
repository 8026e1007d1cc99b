//! MQTT 3.1.1 and 5 packets: encoded into bytes to write, decoded from frames in place.
//!
//! - Sending: CONNECT (rumqttc's codec, `rumqttc::mqttbytes`); PUBLISH framed in place in
//!   the caller's buffer, byte for byte what `Publish::write` produces (a test holds the
//!   two equal): the payload is encoded once, after room for the longest header it can
//!   need, and only a payload shorter than planned is moved to close the gap; the
//!   acknowledgements (PUBACK, PUBREC, PUBREL, PUBCOMP, with MQTT 5 reason codes) as a few
//!   bytes on the stack; SUBSCRIBE with several filters and MQTT 5 subscription options.
//! - Receiving: [`decode`] / [`decode_mut`] turn a frame's body (see [`crate::frame`]) into
//!   a [`Packet`] whose topic, properties, payload and SUBACK codes are slices of the frame:
//!   no allocation per message. [`next_packet`] is the publisher's view ([`Incoming`]).

use std::ops::Range;

use bytes::{BufMut, BytesMut};

use crate::frame;
pub use crate::malformed::{EncodeError, Malformed};
use crate::qos::Qos;

/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xc0, 0x00];
/// PINGRESP.
pub const PINGRESP: [u8; 2] = [0xd0, 0x00];
/// DISCONNECT (3.1.1; in MQTT 5 reason 0, normal disconnection).
pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// The CONNECT packet of a client.
pub fn connect(
    client_id: &str,
    keep_alive_s: u16,
    clean_session: bool,
    credentials: Option<(&str, &str)>,
) -> BytesMut {
    let mut c = rumqttc::Connect::new(client_id);
    c.keep_alive = keep_alive_s;
    c.clean_session = clean_session;
    if let Some((user, password)) = credentials {
        c.login = Some(rumqttc::Login::new(user, password));
    }
    let mut buf = BytesMut::new();
    // Writing into a growable buffer cannot fail; an id too long for MQTT is refused by the
    // plan before any connection opens.
    let _ = c.write(&mut buf);
    buf
}

/// What an MQTT 5 CONNECT asks for beyond 3.1.1's.
#[derive(Debug, Clone, Default)]
pub struct ConnectV5 {
    /// Seconds the broker keeps the session after a disconnect (0: it ends with it).
    pub session_expiry: u32,
    pub user_properties: Vec<(String, String)>,
}

/// The CONNECT packet of an MQTT 5 client (rumqttc's v5 codec).
pub fn connect_v5(
    client_id: &str,
    keep_alive_s: u16,
    clean_start: bool,
    credentials: Option<(&str, &str)>,
    v5: &ConnectV5,
) -> BytesMut {
    use rumqttc::v5::mqttbytes::v5::{Connect, ConnectProperties, Login};
    let mut props = ConnectProperties::new();
    props.session_expiry_interval = (v5.session_expiry > 0).then_some(v5.session_expiry);
    props.user_properties = v5.user_properties.clone();
    let c = Connect {
        keep_alive: keep_alive_s,
        client_id: client_id.to_string(),
        clean_start,
        properties: Some(props),
    };
    let login = credentials.map(|(u, p)| Login::new(u, p));
    let mut buf = BytesMut::new();
    // Writing into a growable buffer cannot fail (see `connect`).
    let _ = c.write(&None, &login, &mut buf);
    buf
}

/// Appends `n` as MQTT's variable byte integer.
fn put_var_int(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
}

/// The properties of every MQTT 5 PUBLISH, encoded once (their length first): the content
/// type and the user's properties.
pub fn publish_properties_v5(content_type: Option<&str>, user: &[(String, String)]) -> Vec<u8> {
    let mut p = Vec::new();
    let string = |p: &mut Vec<u8>, s: &str| {
        p.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_be_bytes());
        p.extend_from_slice(&s.as_bytes()[..s.len().min(u16::MAX as usize)]);
    };
    if let Some(ct) = content_type {
        p.push(0x03);
        string(&mut p, ct);
    }
    for (k, v) in user {
        p.push(0x26);
        string(&mut p, k);
        string(&mut p, v);
    }
    let mut out = Vec::with_capacity(p.len() + 4);
    put_var_int(&mut out, p.len());
    out.extend_from_slice(&p);
    out
}

/// Bytes of the variable-length encoding of `len`.
pub fn len_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Bytes a PUBLISH adds besides its payload, at most: fixed header, topic, packet id,
/// and MQTT 5 properties of `props_len` bytes.
pub fn publish_overhead(topic_len: usize, props_len: usize) -> usize {
    1 + 4 + 2 + topic_len + 2 + props_len
}

/// The fixed-header flags of a PUBLISH.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishFlags {
    pub qos: Qos,
    /// A resend of a QoS 1 or 2 message (never set at QoS 0).
    pub dup: bool,
    pub retain: bool,
}

impl PublishFlags {
    /// The fixed header's first byte.
    pub fn first(self) -> u8 {
        0x30 | (u8::from(self.dup && self.qos.acknowledged()) << 3)
            | (self.qos.level() << 1)
            | u8::from(self.retain)
    }
}

/// Appends a PUBLISH to `topic` (QoS 1 with `pkid`, else QoS 0) whose payload, at most
/// `max_payload` bytes, `write_payload` appends; returns the payload's length. `props`
/// are MQTT 5 properties as [`publish_properties_v5`] encodes them (empty for 3.1.1).
pub fn append_publish(
    buf: &mut BytesMut,
    topic: &[u8],
    pkid: Option<u16>,
    props: &[u8],
    max_payload: usize,
    write_payload: impl FnOnce(&mut BytesMut),
) -> usize {
    let flags = PublishFlags {
        qos: if pkid.is_some() {
            Qos::AtLeastOnce
        } else {
            Qos::AtMostOnce
        },
        ..PublishFlags::default()
    };
    append_publish_with(buf, flags, topic, pkid, props, max_payload, write_payload)
}

/// [`append_publish`] at any QoS, DUP and RETAIN: `pkid` is written when given (it must
/// be for QoS 1 and 2).
pub fn append_publish_with(
    buf: &mut BytesMut,
    flags: PublishFlags,
    topic: &[u8],
    pkid: Option<u16>,
    props: &[u8],
    max_payload: usize,
    write_payload: impl FnOnce(&mut BytesMut),
) -> usize {
    let var_len = 2 + topic.len() + if pkid.is_some() { 2 } else { 0 } + props.len();
    let reserved = len_len(var_len + max_payload);
    let start = buf.len();
    let header_room = 1 + reserved + var_len;
    buf.put_bytes(0, header_room);
    write_payload(buf);
    let payload_len = buf.len() - start - header_room;
    let remaining = var_len + payload_len;
    let used = len_len(remaining);
    let header_len = 1 + used + var_len;
    if header_len < header_room {
        // Shorter than planned (a last, partial batch): close the gap.
        let gap = header_room - header_len;
        buf.copy_within(start + header_room.., start + header_len);
        buf.truncate(buf.len() - gap);
    }
    let header = &mut buf[start..start + header_len];
    header[0] = flags.first();
    write_remaining_length(&mut header[1..1 + used], remaining);
    let t = 1 + used;
    header[t..t + 2].copy_from_slice(&(topic.len() as u16).to_be_bytes());
    header[t + 2..t + 2 + topic.len()].copy_from_slice(topic);
    let mut at = t + 2 + topic.len();
    if let Some(id) = pkid {
        header[at..at + 2].copy_from_slice(&id.to_be_bytes());
        at += 2;
    }
    header[at..].copy_from_slice(props);
    payload_len
}

/// Writes `len` as MQTT's variable-length integer into exactly `out.len()` bytes.
fn write_remaining_length(out: &mut [u8], mut len: usize) {
    let last = out.len() - 1;
    for (i, b) in out.iter_mut().enumerate() {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if i < last {
            byte |= 0x80;
        }
        *b = byte;
    }
}

/// The four acknowledgements of a packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    /// QoS 1, receiver to sender.
    PubAck,
    /// QoS 2 step 1, receiver to sender.
    PubRec,
    /// QoS 2 step 2, sender to receiver (fixed-header flags 0010).
    PubRel,
    /// QoS 2 step 3, receiver to sender.
    PubComp,
}

impl AckKind {
    fn first(self) -> u8 {
        match self {
            AckKind::PubAck => 0x40,
            AckKind::PubRec => 0x50,
            AckKind::PubRel => 0x62,
            AckKind::PubComp => 0x70,
        }
    }
}

/// An acknowledgement's bytes, on the stack (4, or 5 with an MQTT 5 reason code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrame {
    bytes: [u8; 5],
    len: u8,
}

impl std::ops::Deref for AckFrame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// MQTT 5 reason codes of the acknowledgements (section 3.4.2.1 and after).
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
}

/// An acknowledgement of `pkid`. `reason` is MQTT 5's reason code (0, success, is left out
/// as the protocol allows); under 3.1.1 (`v5` false) there is none and it is not written.
pub fn ack(kind: AckKind, pkid: u16, reason: u8, v5: bool) -> AckFrame {
    let [hi, lo] = pkid.to_be_bytes();
    if v5 && reason != 0 {
        AckFrame {
            bytes: [kind.first(), 3, hi, lo, reason],
            len: 5,
        }
    } else {
        AckFrame {
            bytes: [kind.first(), 2, hi, lo, 0],
            len: 4,
        }
    }
}

/// A PUBACK of `pkid` with success (both versions).
pub fn puback(pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [0x40, 0x02, hi, lo]
}

/// MQTT 5's Retain Handling subscription option.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RetainHandling {
    /// Retained messages are sent at subscribe time.
    #[default]
    OnSubscribe,
    /// Only if the subscription did not exist.
    OnNewSubscribe,
    /// Not at all.
    Never,
}

/// A subscription's options: QoS (both versions) and MQTT 5's bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOptions {
    pub qos: Qos,
    /// MQTT 5: not the messages this connection publishes (forbidden on `$share/`).
    pub no_local: bool,
    /// MQTT 5: keep the RETAIN flag as published.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubOptions {
    pub fn at(qos: Qos) -> SubOptions {
        SubOptions {
            qos,
            ..SubOptions::default()
        }
    }

    /// The options byte: the QoS alone under 3.1.1.
    pub fn byte(&self, v5: bool) -> u8 {
        let mut b = self.qos.level();
        if v5 {
            b |= u8::from(self.no_local) << 2;
            b |= u8::from(self.retain_as_published) << 3;
            b |= (self.retain_handling as u8) << 4;
        }
        b
    }
}

/// Whether `filter` is a shared subscription (`$share/{group}/{filter}`).
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with("$share/")
}

/// Appends a SUBSCRIBE with packet id `pkid` for `filters` (MQTT 5: with a Subscription
/// Identifier when given, so that deliveries say which subscription matched).
pub fn subscribe<S: AsRef<str>>(
    out: &mut Vec<u8>,
    pkid: u16,
    filters: &[(S, SubOptions)],
    subscription_id: Option<u32>,
    v5: bool,
) -> Result<(), EncodeError> {
    if filters.is_empty() {
        return Err(EncodeError::NoFilters);
    }
    let mut props = Vec::new();
    if v5 {
        if let Some(id) = subscription_id {
            if id == 0 || id as usize > frame::MAX_REMAINING {
                return Err(EncodeError::SubscriptionId(id));
            }
            props.push(0x0B);
            put_var_int(&mut props, id as usize);
        }
    }
    let mut remaining = 2 + if v5 {
        len_len(props.len()) + props.len()
    } else {
        0
    };
    for (f, o) in filters {
        let f = f.as_ref();
        if f.is_empty() {
            return Err(EncodeError::EmptyFilter);
        }
        if f.len() > u16::MAX as usize {
            return Err(EncodeError::FilterTooLong(f.len()));
        }
        if v5 && o.no_local && is_shared(f) {
            return Err(EncodeError::NoLocalOnShared);
        }
        remaining += 2 + f.len() + 1;
    }
    if remaining > frame::MAX_REMAINING {
        return Err(EncodeError::TooLarge(remaining));
    }
    out.reserve(1 + len_len(remaining) + remaining);
    out.push(0x82);
    put_var_int(out, remaining);
    out.extend_from_slice(&pkid.to_be_bytes());
    if v5 {
        put_var_int(out, props.len());
        out.extend_from_slice(&props);
    }
    for (f, o) in filters {
        let f = f.as_ref();
        out.extend_from_slice(&(f.len() as u16).to_be_bytes());
        out.extend_from_slice(f.as_bytes());
        out.push(o.byte(v5));
    }
    Ok(())
}

/// Appends a SUBACK (what a broker sends; for tests and fakes): a return code per filter
/// (3.1.1: 0, 1, 2 granted, 0x80 failure; MQTT 5: its reason codes), no properties.
pub fn suback(out: &mut Vec<u8>, pkid: u16, codes: &[u8], v5: bool) {
    let remaining = 2 + usize::from(v5) + codes.len();
    out.push(0x90);
    put_var_int(out, remaining);
    out.extend_from_slice(&pkid.to_be_bytes());
    if v5 {
        out.push(0);
    }
    out.extend_from_slice(codes);
}

/// A packet from the broker, as far as a publisher cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    ConnAck {
        session_present: bool,
        code: u8,
        /// MQTT 5: what the broker's CONNACK properties ask of the client.
        limits: ConnackLimits,
    },
    /// A packet id and its reason code (MQTT 5; 0, success, under 3.1.1).
    PubAck(u16, u8),
    /// QoS 2: the broker received the PUBLISH of this packet id (with a reason code).
    PubRec(u16, u8),
    /// QoS 2: the exchange of this packet id is complete (with a reason code).
    PubComp(u16, u8),
    /// MQTT 5: the broker ends the connection, with a reason code.
    Disconnect(u8),
    PingResp,
    /// Anything else (a PUBLISH, a SUBACK): skipped.
    Other(u8),
}

/// The MQTT 5 CONNACK properties that bind a client (section 3.2.2.3), as the broker sent
/// them (none under 3.1.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnackLimits {
    /// Receive Maximum: the most QoS 1 messages the broker takes unacknowledged.
    pub receive_maximum: Option<u16>,
    /// Maximum Packet Size: the largest packet the broker takes, in bytes.
    pub maximum_packet_size: Option<u32>,
    /// Maximum QoS: 0 or 1 (absent: 2).
    pub maximum_qos: Option<u8>,
    /// Server Keep Alive: the keep-alive the client must use instead of its own, seconds.
    pub server_keep_alive: Option<u16>,
}

impl ConnackLimits {
    /// What in them is a protocol error (a value of 0 where the protocol forbids it).
    pub fn violation(&self) -> Option<&'static str> {
        if self.receive_maximum == Some(0) {
            Some("Receive Maximum 0")
        } else if self.maximum_packet_size == Some(0) {
            Some("Maximum Packet Size 0")
        } else if self.maximum_qos.is_some_and(|q| q > 1) {
            Some("a Maximum QoS other than 0 or 1")
        } else {
            None
        }
    }
}

/// Skips one MQTT 5 property at the start of `b`; returns (its id, its value's bytes, the
/// length of the whole property), or `None` when it is malformed.
fn property(b: &[u8]) -> Option<(u8, &[u8], usize)> {
    let id = *b.first()?;
    let n = match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
        0x13 | 0x21 | 0x22 | 0x23 => 2,
        0x02 | 0x11 | 0x18 | 0x27 => 4,
        0x0B => {
            // A variable byte integer.
            let len = b[1..].iter().take(4).position(|x| x & 0x80 == 0)? + 1;
            return Some((id, b.get(1..1 + len)?, 1 + len));
        }
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
            let l = u16::from_be_bytes([*b.get(1)?, *b.get(2)?]) as usize;
            2 + l
        }
        0x26 => {
            let k = u16::from_be_bytes([*b.get(1)?, *b.get(2)?]) as usize;
            let v = u16::from_be_bytes([*b.get(3 + k)?, *b.get(4 + k)?]) as usize;
            4 + k + v
        }
        _ => return None,
    };
    Some((id, b.get(1..1 + n)?, 1 + n))
}

/// The length of MQTT 5 properties at the start of `b`, their length's bytes included,
/// or `None` when the length is malformed or runs past `b`.
fn props_len(b: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *b.get(i)?;
        len |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            let all = i + 1 + len;
            return (all <= b.len()).then_some(all);
        }
    }
    None
}

/// The properties of an MQTT 5 packet at the start of `b` (their length first): each
/// (id, value), or `None` when they are malformed.
pub fn properties(b: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let all = props_len(b)?;
    // The length's own bytes: those up to the first without the continuation bit.
    let skip = b.iter().take(4).position(|x| x & 0x80 == 0)? + 1;
    let mut rest = &b[skip..all];
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (id, v, n) = property(rest)?;
        out.push((id, v));
        rest = &rest[n..];
    }
    Some(out)
}

/// An acknowledgement as received: its packet id and reason code (0 under 3.1.1, and
/// when MQTT 5 left it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub pkid: u16,
    pub reason: u8,
}

/// A PUBLISH as received: everything borrowed from the frame. `P` is the payload:
/// `&[u8]`, or `&mut [u8]` from [`decode_mut`] for a decoder that works in place.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish<'a, P = &'a [u8]> {
    pub qos: Qos,
    pub dup: bool,
    pub retain: bool,
    /// 0 at QoS 0.
    pub pkid: u16,
    pub topic: &'a [u8],
    /// MQTT 5: the properties, their length first (empty under 3.1.1).
    pub properties: &'a [u8],
    pub payload: P,
}

/// A packet as received (either side's), borrowed from its frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a, P = &'a [u8]> {
    ConnAck {
        /// The broker kept this client's session (MQTT 3.1.1 section 3.2.2.2).
        session_present: bool,
        code: u8,
        /// MQTT 5: what the CONNACK's properties ask of the client.
        limits: ConnackLimits,
    },
    Publish(Publish<'a, P>),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    SubAck {
        pkid: u16,
        /// A return code (MQTT 5: reason code) per filter, in the SUBSCRIBE's order; 0x80
        /// and above refuse.
        codes: &'a [u8],
    },
    PingReq,
    PingResp,
    /// A DISCONNECT, with MQTT 5's reason code (0 under 3.1.1).
    Disconnect(u8),
    /// Another packet type (its type nibble): CONNECT, SUBSCRIBE, UNSUBACK, AUTH...
    Other(u8),
}

/// What [`parse`] found: the packet, with offsets into the body where it borrows.
enum Parsed {
    Publish {
        qos: Qos,
        dup: bool,
        retain: bool,
        pkid: u16,
        topic: Range<usize>,
        props: Range<usize>,
        payload_at: usize,
    },
    SubAck {
        pkid: u16,
        codes_at: usize,
    },
    ConnAck {
        session_present: bool,
        code: u8,
        limits: ConnackLimits,
    },
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    PingReq,
    PingResp,
    Disconnect(u8),
    Other(u8),
}

fn id_of(body: &[u8], what: &'static str) -> Result<u16, Malformed> {
    match body {
        [hi, lo, ..] => Ok(u16::from_be_bytes([*hi, *lo])),
        _ => Err(Malformed::Short(what)),
    }
}

/// An acknowledgement's body: packet id, then (MQTT 5) a reason code and properties.
fn parse_ack(body: &[u8], v5: bool, what: &'static str) -> Result<Ack, Malformed> {
    let pkid = id_of(body, what)?;
    if !v5 {
        return Ok(Ack { pkid, reason: 0 });
    }
    let reason = body.get(2).copied().unwrap_or(0);
    if body.len() > 3 && props_len(&body[3..]).is_none() {
        return Err(Malformed::Properties(what));
    }
    Ok(Ack { pkid, reason })
}

#[inline]
fn parse(first: u8, body: &[u8], v5: bool) -> Result<Parsed, Malformed> {
    frame::check_first(first)?;
    Ok(match first >> 4 {
        3 => {
            let level = (first >> 1) & 3;
            let qos = Qos::try_from(level).map_err(Malformed::PublishQos)?;
            let tlen = u16::from_be_bytes(match body {
                [a, b, ..] => [*a, *b],
                _ => return Err(Malformed::Short("a PUBLISH's topic")),
            }) as usize;
            let id_len = if qos.acknowledged() { 2 } else { 0 };
            let after_topic = 2 + tlen;
            if body.len() < after_topic + id_len {
                return Err(Malformed::Short("a PUBLISH's topic"));
            }
            let pkid = if qos.acknowledged() {
                u16::from_be_bytes([body[after_topic], body[after_topic + 1]])
            } else {
                0
            };
            let props_at = after_topic + id_len;
            let plen = if v5 {
                props_len(&body[props_at..]).ok_or(Malformed::Properties("a PUBLISH"))?
            } else {
                0
            };
            Parsed::Publish {
                qos,
                dup: first & 0x08 != 0,
                retain: first & 1 == 1,
                pkid,
                topic: 2..after_topic,
                props: props_at..props_at + plen,
                payload_at: props_at + plen,
            }
        }
        2 => {
            let (flags, code) = match body {
                [f, c] => (*f, *c),
                [f, c, ..] if v5 => (*f, *c),
                [_, _, ..] => {
                    return Err(Malformed::Protocol(format!(
                        "a CONNACK of {} bytes where MQTT 3.1.1 has 2",
                        body.len()
                    )))
                }
                _ => return Err(Malformed::Short("a CONNACK")),
            };
            if flags & 0xFE != 0 {
                return Err(Malformed::Protocol(format!(
                    "CONNACK flags {flags:#04x}: only bit 0 is defined"
                )));
            }
            let mut limits = ConnackLimits::default();
            if v5 && body.len() > 2 {
                let props = properties(&body[2..]).ok_or(Malformed::Properties("a CONNACK"))?;
                for (id, v) in props {
                    match (id, v) {
                        (0x21, [a, b]) => {
                            limits.receive_maximum = Some(u16::from_be_bytes([*a, *b]))
                        }
                        (0x27, [a, b, c, d]) => {
                            limits.maximum_packet_size = Some(u32::from_be_bytes([*a, *b, *c, *d]))
                        }
                        (0x24, [q]) => limits.maximum_qos = Some(*q),
                        (0x13, [a, b]) => {
                            limits.server_keep_alive = Some(u16::from_be_bytes([*a, *b]))
                        }
                        _ => {}
                    }
                }
            }
            Parsed::ConnAck {
                session_present: flags & 1 == 1,
                code,
                limits,
            }
        }
        4 => Parsed::PubAck(parse_ack(body, v5, "a PUBACK")?),
        5 => Parsed::PubRec(parse_ack(body, v5, "a PUBREC")?),
        6 => Parsed::PubRel(parse_ack(body, v5, "a PUBREL")?),
        7 => Parsed::PubComp(parse_ack(body, v5, "a PUBCOMP")?),
        9 => {
            let pkid = id_of(body, "a SUBACK")?;
            let skip = if v5 {
                props_len(&body[2..]).ok_or(Malformed::Properties("a SUBACK"))?
            } else {
                0
            };
            Parsed::SubAck {
                pkid,
                codes_at: 2 + skip,
            }
        }
        12 => Parsed::PingReq,
        13 => Parsed::PingResp,
        14 => {
            if v5 && body.len() > 1 && props_len(&body[1..]).is_none() {
                return Err(Malformed::Properties("a DISCONNECT"));
            }
            Parsed::Disconnect(if v5 {
                body.first().copied().unwrap_or(0)
            } else {
                0
            })
        }
        15 if !v5 => return Err(Malformed::ReservedType(15)),
        t => Parsed::Other(t),
    })
}

impl Parsed {
    /// Where the payload begins (the end of the body for every packet but PUBLISH).
    #[inline]
    fn payload_at(&self, body_len: usize) -> usize {
        match self {
            Parsed::Publish { payload_at, .. } => *payload_at,
            _ => body_len,
        }
    }

    #[inline]
    fn assemble<P>(self, head: &[u8], payload: P) -> Packet<'_, P> {
        match self {
            Parsed::Publish {
                qos,
                dup,
                retain,
                pkid,
                topic,
                props,
                ..
            } => Packet::Publish(Publish {
                qos,
                dup,
                retain,
                pkid,
                topic: &head[topic],
                properties: &head[props],
                payload,
            }),
            Parsed::SubAck { pkid, codes_at } => Packet::SubAck {
                pkid,
                codes: &head[codes_at..],
            },
            Parsed::ConnAck {
                session_present,
                code,
                limits,
            } => Packet::ConnAck {
                session_present,
                code,
                limits,
            },
            Parsed::PubAck(a) => Packet::PubAck(a),
            Parsed::PubRec(a) => Packet::PubRec(a),
            Parsed::PubRel(a) => Packet::PubRel(a),
            Parsed::PubComp(a) => Packet::PubComp(a),
            Parsed::PingReq => Packet::PingReq,
            Parsed::PingResp => Packet::PingResp,
            Parsed::Disconnect(r) => Packet::Disconnect(r),
            Parsed::Other(t) => Packet::Other(t),
        }
    }
}

/// Decodes a whole frame: `first` its fixed header's first byte, `body` what follows the
/// fixed header (see [`crate::frame`]). `v5`: the connection speaks MQTT 5.
#[inline]
pub fn decode(first: u8, body: &[u8], v5: bool) -> Result<Packet<'_>, Malformed> {
    let parsed = parse(first, body, v5)?;
    let (head, payload) = body.split_at(parsed.payload_at(body.len()));
    Ok(parsed.assemble(head, payload))
}

/// [`decode`], with a PUBLISH's payload mutable in place (for a decoder that unescapes in
/// the read buffer).
#[inline]
pub fn decode_mut(
    first: u8,
    body: &mut [u8],
    v5: bool,
) -> Result<Packet<'_, &mut [u8]>, Malformed> {
    let parsed = parse(first, body, v5)?;
    let (head, payload) = body.split_at_mut(parsed.payload_at(body.len()));
    Ok(parsed.assemble(head, payload))
}

/// Reads the first complete packet of `buf`: the packet and its length, or `None` when `buf`
/// holds only part of one. `max_size`: the largest packet taken, in bytes. `v5`: the
/// connection speaks MQTT 5.
pub fn next_packet(
    buf: &[u8],
    max_size: usize,
    v5: bool,
) -> Result<Option<(Incoming, usize)>, Malformed> {
    let Some(h) = frame::frame(buf, max_size)? else {
        return Ok(None);
    };
    let len = h.frame_len();
    if buf.len() < len {
        return Ok(None);
    }
    let packet = match decode(h.first, &buf[h.header_len..len], v5)? {
        Packet::ConnAck {
            session_present,
            code,
            limits,
        } => Incoming::ConnAck {
            session_present,
            code,
            limits,
        },
        Packet::PubAck(a) => Incoming::PubAck(a.pkid, a.reason),
        Packet::PubRec(a) => Incoming::PubRec(a.pkid, a.reason),
        Packet::PubComp(a) => Incoming::PubComp(a.pkid, a.reason),
        Packet::Disconnect(r) if v5 => Incoming::Disconnect(r),
        Packet::PingResp => Incoming::PingResp,
        _ => Incoming::Other(h.packet_type()),
    };
    Ok(Some((packet, len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{Publish, QoS};

    fn theirs(topic: &str, pkid: Option<u16>, payload: &[u8]) -> Vec<u8> {
        let qos = if pkid.is_some() {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let mut p = Publish::new(topic, qos, payload.to_vec());
        p.pkid = pkid.unwrap_or(0);
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        buf.to_vec()
    }

    #[test]
    fn publish_packets_are_byte_for_byte_rumqttcs() {
        let topic = "device_data/frontend1_ultra_high_perf_device";
        for pkid in [None, Some(1), Some(65_535)] {
            for max in [10usize, 200, 20_000, 3_000_000] {
                for len in [
                    0usize, 1, 80, 81, 127, 128, 16_300, 16_339, 16_400, 2_097_100,
                ]
                .into_iter()
                .filter(|l| *l <= max)
                {
                    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                    let mut buf = BytesMut::new();
                    buf.extend_from_slice(b"before");
                    let n = append_publish(&mut buf, topic.as_bytes(), pkid, &[], max, |b| {
                        b.extend_from_slice(&payload)
                    });
                    assert_eq!(n, len);
                    assert_eq!(&buf[..6], b"before");
                    assert!(
                        buf[6..] == theirs(topic, pkid, &payload)[..],
                        "payload {len}, planned for {max}, pkid {pkid:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn incoming_packets_are_framed_across_partial_reads() {
        let mut stream = Vec::new();
        stream.extend_from_slice(&[0x20, 0x02, 0x01, 0x00]); // CONNACK, session present
        stream.extend_from_slice(&[0x40, 0x02, 0x12, 0x34]); // PUBACK 0x1234
        stream.extend_from_slice(&[0xd0, 0x00]); // PINGRESP
        let mut publish = BytesMut::new();
        Publish::new("t", QoS::AtMostOnce, vec![1u8; 300])
            .write(&mut publish)
            .unwrap();
        stream.extend_from_slice(&publish);
        let mut got = Vec::new();
        let mut at = 0;
        for cut in [3usize, 5, 9, 10, 200, stream.len()] {
            while let Some((p, n)) = next_packet(&stream[at..cut], 1 << 20, false).unwrap() {
                got.push(p);
                at += n;
            }
        }
        assert_eq!(
            got,
            [
                Incoming::ConnAck {
                    session_present: true,
                    code: 0,
                    limits: ConnackLimits::default(),
                },
                Incoming::PubAck(0x1234, 0),
                Incoming::PingResp,
                Incoming::Other(3),
            ]
        );
        assert_eq!(at, stream.len());
    }

    #[test]
    fn garbage_and_oversized_packets_are_malformed() {
        // Type 0 and 15 are reserved in MQTT 3.1.1.
        assert_eq!(
            next_packet(&[0x00, 0x00], 1 << 20, false),
            Err(Malformed::ReservedType(0))
        );
        assert_eq!(
            next_packet(&[0xf0, 0x00], 1 << 20, false),
            Err(Malformed::ReservedType(15))
        );
        assert_eq!(
            next_packet(&[0x30, 0xff, 0xff, 0x7f], 1000, false),
            Err(Malformed::TooLarge {
                len: 2_097_155,
                max: 1000
            })
        );
    }

    #[test]
    fn mqtt5_packets_carry_their_properties_and_reason_codes() {
        use rumqttc::v5::mqttbytes::v5::{Packet as P5, Publish as Pub5};
        let props = publish_properties_v5(
            Some("application/json"),
            &[("run".to_string(), "r1".to_string())],
        );
        let mut buf = BytesMut::new();
        let n = append_publish(&mut buf, b"t/x", Some(7), &props, 100, |b| {
            b.extend_from_slice(b"{}")
        });
        assert_eq!(n, 2);
        match P5::read(&mut buf, Some(1 << 20)).unwrap() {
            P5::Publish(Pub5 {
                pkid,
                payload,
                properties: Some(p),
                ..
            }) => {
                assert_eq!((pkid, &payload[..]), (7, &b"{}"[..]));
                assert_eq!(p.content_type.as_deref(), Some("application/json"));
                assert_eq!(p.user_properties, [("run".to_string(), "r1".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        // CONNACK with a Receive Maximum of 20, a PUBACK with 0x87, one without a reason.
        let connack = [0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x14];
        assert_eq!(
            next_packet(&connack, 1 << 20, true).unwrap(),
            Some((
                Incoming::ConnAck {
                    session_present: false,
                    code: 0,
                    limits: ConnackLimits {
                        receive_maximum: Some(20),
                        ..Default::default()
                    }
                },
                8
            ))
        );
        // Maximum Packet Size 10,000, Maximum QoS 0, Server Keep Alive 5 s.
        let connack = [
            0x20, 0x0D, 0x01, 0x00, 0x0A, 0x27, 0x00, 0x00, 0x27, 0x10, 0x24, 0x00, 0x13, 0x00,
            0x05,
        ];
        let limits = ConnackLimits {
            maximum_packet_size: Some(10_000),
            maximum_qos: Some(0),
            server_keep_alive: Some(5),
            ..Default::default()
        };
        assert_eq!(
            next_packet(&connack, 1 << 20, true).unwrap(),
            Some((
                Incoming::ConnAck {
                    session_present: true,
                    code: 0,
                    limits
                },
                15
            ))
        );
        assert_eq!(limits.violation(), None);
        // Receive Maximum 0 is a protocol error (MQTT 5 section 3.2.2.3.3).
        let zero = [0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00];
        match next_packet(&zero, 1 << 20, true).unwrap() {
            Some((Incoming::ConnAck { limits, .. }, _)) => {
                assert_eq!(limits.violation(), Some("Receive Maximum 0"))
            }
            other => panic!("{other:?}"),
        }
        let puback = [0x40, 0x04, 0x00, 0x07, 0x87, 0x00];
        assert_eq!(
            next_packet(&puback, 1 << 20, true).unwrap(),
            Some((Incoming::PubAck(7, 0x87), 6))
        );
        assert_eq!(
            next_packet(&[0x40, 0x02, 0x00, 0x07], 1 << 20, true).unwrap(),
            Some((Incoming::PubAck(7, 0), 4))
        );
        assert_eq!(
            next_packet(&[0xe0, 0x01, 0x8e], 1 << 20, true).unwrap(),
            Some((Incoming::Disconnect(0x8e), 3))
        );
        let c = connect_v5(
            "dev",
            30,
            false,
            None,
            &ConnectV5 {
                session_expiry: 3600,
                ..Default::default()
            },
        );
        let mut b = c.clone();
        match P5::read(&mut b, Some(1 << 20)).unwrap() {
            P5::Connect(c, _, _) => {
                assert!(!c.clean_start);
                assert_eq!(c.properties.unwrap().session_expiry_interval, Some(3600));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_carries_the_client_id_and_login() {
        let c = connect("dev-1", 30, true, Some(("u", "p")));
        let mut b = c.clone();
        match rumqttc::Packet::read(&mut b, 1 << 20).unwrap() {
            rumqttc::Packet::Connect(c) => {
                assert_eq!((c.client_id.as_str(), c.keep_alive), ("dev-1", 30));
                assert_eq!(c.login.unwrap().username, "u");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_http_reply_is_malformed_at_its_first_byte() {
        // 'H' is 0x48: a PUBACK with flags 1000, which MQTT forbids.
        assert_eq!(
            next_packet(b"HTTP/1.1 400 Bad Request\r\n", 1 << 20, false),
            Err(Malformed::Flags {
                packet: "PUBACK",
                flags: 0b1000
            })
        );
        assert_eq!(
            next_packet(b"H", 1 << 20, true).unwrap_err().kind(),
            "flags"
        );
    }

    fn one(bytes: &[u8], v5: bool) -> Packet<'_> {
        let h = frame::frame(bytes, 1 << 28).unwrap().unwrap();
        assert_eq!(h.frame_len(), bytes.len(), "{bytes:?}");
        decode(h.first, &bytes[h.header_len..], v5).unwrap()
    }

    #[test]
    fn acknowledgements_round_trip_in_both_versions() {
        for kind in [
            AckKind::PubAck,
            AckKind::PubRec,
            AckKind::PubRel,
            AckKind::PubComp,
        ] {
            for pkid in [1u16, 0x1234, 65_535] {
                for reason in [0u8, 0x10, 0x92] {
                    for v5 in [false, true] {
                        let a = ack(kind, pkid, reason, v5);
                        let want = Ack {
                            pkid,
                            reason: if v5 { reason } else { 0 },
                        };
                        let got = match one(&a, v5) {
                            Packet::PubAck(x) if kind == AckKind::PubAck => x,
                            Packet::PubRec(x) if kind == AckKind::PubRec => x,
                            Packet::PubRel(x) if kind == AckKind::PubRel => x,
                            Packet::PubComp(x) if kind == AckKind::PubComp => x,
                            other => panic!("{kind:?}: {other:?}"),
                        };
                        assert_eq!(got, want, "{kind:?} v5 {v5}");
                    }
                }
            }
        }
        assert_eq!(
            puback(0x0102)[..],
            ack(AckKind::PubAck, 0x0102, 0, false)[..]
        );
        // 3.1.1: as rumqttc writes them.
        let mut b = BytesMut::new();
        rumqttc::PubRel::new(77).write(&mut b).unwrap();
        assert_eq!(b[..], ack(AckKind::PubRel, 77, 0, false)[..]);
        let mut b = BytesMut::new();
        rumqttc::PubRec::new(77).write(&mut b).unwrap();
        assert_eq!(b[..], ack(AckKind::PubRec, 77, 0, false)[..]);
        // MQTT 5: rumqttc reads our reason codes, and we read its properties past them.
        use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubRec, PubRecProperties, PubRecReason};
        let mut b = BytesMut::from(&ack(AckKind::PubRec, 9, 0x97, true)[..]);
        match P5::read(&mut b, Some(1 << 20)).unwrap() {
            P5::PubRec(r) => assert_eq!((r.pkid, r.reason), (9, PubRecReason::QuotaExceeded)),
            other => panic!("{other:?}"),
        }
        let mut r = PubRec::new(9, None);
        r.reason = PubRecReason::NotAuthorized;
        r.properties = Some(PubRecProperties {
            reason_string: Some("no".into()),
            user_properties: vec![],
        });
        let mut b = BytesMut::new();
        r.write(&mut b).unwrap();
        assert_eq!(
            one(&b, true),
            Packet::PubRec(Ack {
                pkid: 9,
                reason: 0x87
            })
        );
    }

    #[test]
    fn publishes_round_trip_at_every_qos_with_dup_and_retain() {
        for v5 in [false, true] {
            let props = if v5 {
                publish_properties_v5(Some("application/json"), &[])
            } else {
                Vec::new()
            };
            for qos in [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce] {
                for (dup, retain) in [(false, false), (true, false), (true, true)] {
                    for len in [0usize, 1, 200, 20_000] {
                        let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                        let flags = PublishFlags { qos, dup, retain };
                        let pkid = qos.acknowledged().then_some(4242);
                        let mut buf = BytesMut::new();
                        append_publish_with(&mut buf, flags, b"t/1", pkid, &props, len, |b| {
                            b.extend_from_slice(&payload)
                        });
                        let want = super::Publish {
                            qos,
                            dup: dup && qos.acknowledged(),
                            retain,
                            pkid: pkid.unwrap_or(0),
                            topic: &b"t/1"[..],
                            properties: &props[..],
                            payload: &payload[..],
                        };
                        assert_eq!(one(&buf, v5), Packet::Publish(want));
                        // In place: the payload is the frame's own bytes, mutable.
                        let h = frame::frame(&buf, 1 << 28).unwrap().unwrap();
                        let mut frame = buf.to_vec();
                        match decode_mut(h.first, &mut frame[h.header_len..], v5).unwrap() {
                            Packet::Publish(p) => {
                                if let Some(b) = p.payload.first_mut() {
                                    *b = 0xEE;
                                }
                            }
                            other => panic!("{other:?}"),
                        }
                        if len > 0 {
                            assert_eq!(frame[buf.len() - len], 0xEE);
                        }
                    }
                }
            }
        }
        // QoS 2 with DUP as rumqttc writes it.
        let mut p = Publish5::new("a", QoS::ExactlyOnce, vec![1, 2, 3]);
        p.pkid = 5;
        p.dup = true;
        p.retain = true;
        let mut theirs_buf = BytesMut::new();
        p.write(&mut theirs_buf).unwrap();
        let mut ours = BytesMut::new();
        let flags = PublishFlags {
            qos: Qos::ExactlyOnce,
            dup: true,
            retain: true,
        };
        append_publish_with(&mut ours, flags, b"a", Some(5), &[], 3, |b| {
            b.extend_from_slice(&[1, 2, 3])
        });
        assert_eq!(ours, theirs_buf);
    }
    use rumqttc::Publish as Publish5;

    #[test]
    fn subscribe_carries_every_filter_and_its_options_in_both_versions() {
        let filters = [
            ("device_data/#", SubOptions::at(Qos::AtLeastOnce)),
            ("$share/g1/device_data/+", SubOptions::at(Qos::ExactlyOnce)),
            (
                "x/y",
                SubOptions {
                    qos: Qos::AtMostOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::Never,
                },
            ),
        ];
        let mut out = Vec::new();
        subscribe(&mut out, 3, &filters, None, false).unwrap();
        let mut b = BytesMut::from(&out[..]);
        match rumqttc::Packet::read(&mut b, 1 << 20).unwrap() {
            rumqttc::Packet::Subscribe(s) => {
                assert_eq!(s.pkid, 3);
                let got: Vec<_> = s
                    .filters
                    .iter()
                    .map(|f| (f.path.as_str(), f.qos as u8))
                    .collect();
                assert_eq!(
                    got,
                    [
                        ("device_data/#", 1),
                        ("$share/g1/device_data/+", 2),
                        ("x/y", 0)
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        use rumqttc::v5::mqttbytes::v5::{Packet as P5, RetainForwardRule};
        let mut out = Vec::new();
        subscribe(&mut out, 4, &filters, Some(300), true).unwrap();
        let mut b = BytesMut::from(&out[..]);
        match P5::read(&mut b, Some(1 << 20)).unwrap() {
            P5::Subscribe(s) => {
                assert_eq!(s.pkid, 4);
                assert_eq!(s.properties.unwrap().id, Some(300));
                assert_eq!(s.filters.len(), 3);
                assert_eq!(s.filters[1].path, "$share/g1/device_data/+");
                assert_eq!(s.filters[1].qos as u8, 2);
                let f = &s.filters[2];
                assert!(f.nolocal && f.preserve_retain);
                assert_eq!(f.retain_forward_rule, RetainForwardRule::Never);
            }
            other => panic!("{other:?}"),
        }
        // What MQTT cannot carry is refused, not written.
        let mut out = Vec::new();
        let none: [(&str, SubOptions); 0] = [];
        assert_eq!(
            subscribe(&mut out, 1, &none, None, false),
            Err(EncodeError::NoFilters)
        );
        let shared_no_local = [(
            "$share/g/t",
            SubOptions {
                no_local: true,
                ..SubOptions::default()
            },
        )];
        assert_eq!(
            subscribe(&mut out, 1, &shared_no_local, None, true),
            Err(EncodeError::NoLocalOnShared)
        );
        let long = "a".repeat(70_000);
        assert_eq!(
            subscribe(
                &mut out,
                1,
                &[(long.as_str(), SubOptions::default())],
                None,
                false
            ),
            Err(EncodeError::FilterTooLong(70_000))
        );
        assert_eq!(
            subscribe(&mut out, 1, &[("", SubOptions::default())], None, false),
            Err(EncodeError::EmptyFilter)
        );
        assert_eq!(
            subscribe(&mut out, 1, &[("t", SubOptions::default())], Some(0), true),
            Err(EncodeError::SubscriptionId(0))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn suback_gives_a_code_per_filter_in_both_versions() {
        for (v5, codes) in [
            (false, &[0x00u8, 0x01, 0x02, 0x80][..]),
            (true, &[0x00, 0x01, 0x02, 0x87, 0x9E][..]),
        ] {
            let mut out = Vec::new();
            suback(&mut out, 9, codes, v5);
            assert_eq!(one(&out, v5), Packet::SubAck { pkid: 9, codes });
        }
        // rumqttc's MQTT 5 SUBACK with a reason string: the codes come after it.
        use rumqttc::v5::mqttbytes::v5::{SubAck, SubAckProperties, SubscribeReasonCode as R};
        let s = SubAck {
            pkid: 2,
            return_codes: vec![
                R::Success(rumqttc::v5::mqttbytes::QoS::AtLeastOnce),
                R::NotAuthorized,
            ],
            properties: Some(SubAckProperties {
                reason_string: Some("why".into()),
                user_properties: vec![],
            }),
        };
        let mut b = BytesMut::new();
        s.write(&mut b).unwrap();
        assert_eq!(
            one(&b, true),
            Packet::SubAck {
                pkid: 2,
                codes: &[0x01, 0x87][..]
            }
        );
    }

    #[test]
    fn pings_and_disconnects_decode() {
        assert_eq!(one(&PINGREQ, false), Packet::PingReq);
        assert_eq!(one(&PINGRESP, true), Packet::PingResp);
        assert_eq!(one(&DISCONNECT, false), Packet::Disconnect(0));
        assert_eq!(
            one(&[0xe0, 0x02, 0x8e, 0x00], true),
            Packet::Disconnect(0x8e)
        );
        // AUTH exists in MQTT 5 only.
        assert_eq!(one(&[0xf0, 0x00], true), Packet::Other(15));
    }

    #[test]
    fn broken_bodies_are_malformed_by_kind() {
        let kind = |first: u8, body: &[u8], v5: bool| decode(first, body, v5).unwrap_err().kind();
        assert_eq!(kind(0x30, &[], false), "short");
        assert_eq!(kind(0x30, &[0, 5, b'a'], false), "short");
        assert_eq!(kind(0x32, &[0, 1, b'a'], false), "short"); // QoS 1 without a packet id
        assert_eq!(kind(0x36, &[0, 0], false), "publish_qos");
        assert_eq!(
            kind(0x32, &[0, 1, b't', 0, 9, 0x80, 0x80, 0x80, 0x80], true),
            "properties"
        );
        assert_eq!(kind(0x32, &[0, 1, b't', 0, 9, 5, 0x23], true), "properties");
        assert_eq!(kind(0x40, &[0], false), "short");
        assert_eq!(kind(0x60, &[0, 1], false), "flags"); // PUBREL without its 0010
        assert_eq!(kind(0x20, &[0], false), "short");
        assert_eq!(kind(0x20, &[0, 0, 0], false), "protocol");
        assert_eq!(kind(0x20, &[0x02, 0], false), "protocol");
        assert_eq!(kind(0x20, &[0, 0, 5, 0x21], true), "properties");
        assert_eq!(kind(0x90, &[0], false), "short");
        assert_eq!(kind(0x90, &[0, 1, 9], true), "properties");
        assert_eq!(kind(0xf0, &[], false), "reserved_type");
        // Each says what in one line.
        let e = decode(0x36, &[0, 0], false).unwrap_err();
        assert_eq!(e.to_string(), "a PUBLISH whose QoS bits are 3");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn publishes_of_every_length_class_decode_as_rumqttc_wrote_them() {
        for len in [0usize, 1, 100, 127, 128, 16_383, 16_384, 2_097_152] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for (qos, pkid) in [(0u8, 0u16), (1, 7), (1, 65_535), (2, 9)] {
                let q = match qos {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    _ => QoS::ExactlyOnce,
                };
                let mut p = rumqttc::Publish::new("device_data/x", q, payload.clone());
                p.pkid = pkid;
                p.retain = qos == 1;
                let mut frame = BytesMut::new();
                p.write(&mut frame).unwrap();
                let h = frame::frame(&frame, 1 << 28).unwrap().unwrap();
                // Every prefix of the header is incomplete, never an error.
                for cut in 0..h.header_len {
                    assert_eq!(frame::fixed_header(&frame[..cut]), Ok(None));
                }
                match one(&frame, false) {
                    Packet::Publish(p) => {
                        assert_eq!((p.qos.level(), p.pkid, p.retain), (qos, pkid, qos == 1));
                        assert_eq!(p.topic, b"device_data/x");
                        assert_eq!(p.payload, &payload[..]);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }
}
