//! MQTT 3.1.1 packets on the wire, with rumqttc's codec (`rumqttc::mqttbytes`) where one is
//! needed: CONNECT is encoded by it, incoming packets are framed by its fixed-header check.
//! PUBLISH packets are framed here, in place in the outbox, byte for byte what
//! `Publish::write` produces (a test holds the two equal): the payload is encoded once, after
//! room for the longest header it can need, and only a payload shorter than planned is moved
//! to close the gap.

use bytes::{BufMut, BytesMut};
use rumqttc::mqttbytes::{self, PacketType};

/// PINGREQ.
pub const PINGREQ: [u8; 2] = [0xc0, 0x00];
/// DISCONNECT.
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
    let mut len = p.len();
    loop {
        let b = (len % 128) as u8;
        len /= 128;
        out.push(if len > 0 { b | 0x80 } else { b });
        if len == 0 {
            break;
        }
    }
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
    header[0] = if pkid.is_some() { 0x32 } else { 0x30 };
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

/// Why the bytes from the broker are not MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a packet of {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("not an MQTT packet ({0})")]
    Invalid(String),
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

/// The properties of an MQTT 5 packet at the start of `b` (their length first): each
/// (id, value), or `None` when they are malformed.
pub fn properties(b: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut len = 0usize;
    let mut i = 0;
    loop {
        let byte = *b.get(i)?;
        len |= ((byte & 0x7F) as usize) << (7 * i);
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if i == 4 {
            return None;
        }
    }
    let mut rest = b.get(i..i + len)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (id, v, n) = property(rest)?;
        out.push((id, v));
        rest = &rest[n..];
    }
    Some(out)
}

/// Reads the first complete packet of `buf`: the packet and its length, or `None` when `buf`
/// holds only part of one. `v5`: the connection speaks MQTT 5.
pub fn next_packet(
    buf: &[u8],
    max_size: usize,
    v5: bool,
) -> Result<Option<(Incoming, usize)>, Malformed> {
    let header = match mqttbytes::check(buf.iter(), max_size) {
        Ok(h) => h,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => return Err(Malformed::TooLarge(n)),
        Err(e) => return Err(Malformed::Invalid(format!("{e:?}"))),
    };
    let len = header.frame_length();
    // The fixed header: its byte, then the remaining length's (checked whole just above).
    let hlen = 1
        + buf[1..]
            .iter()
            .take(4)
            .take_while(|b| *b & 0x80 != 0)
            .count()
        + 1;
    let body = &buf[hlen.min(len)..len];
    let packet = match header.packet_type() {
        Ok(PacketType::ConnAck) => {
            let (&flags, &code) = body
                .first()
                .zip(body.get(1))
                .ok_or_else(|| Malformed::Invalid("a short CONNACK".into()))?;
            let mut limits = ConnackLimits::default();
            if v5 && body.len() > 2 {
                let props = properties(&body[2..])
                    .ok_or_else(|| Malformed::Invalid("CONNACK properties".into()))?;
                for (id, v) in props {
                    match (id, v.len()) {
                        (0x21, 2) => {
                            limits.receive_maximum = Some(u16::from_be_bytes([v[0], v[1]]))
                        }
                        (0x27, 4) => {
                            limits.maximum_packet_size =
                                Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
                        }
                        (0x24, 1) => limits.maximum_qos = Some(v[0]),
                        (0x13, 2) => {
                            limits.server_keep_alive = Some(u16::from_be_bytes([v[0], v[1]]))
                        }
                        _ => {}
                    }
                }
            }
            Incoming::ConnAck {
                session_present: flags & 1 == 1,
                code,
                limits,
            }
        }
        Ok(PacketType::PubAck) => {
            if body.len() < 2 {
                return Err(Malformed::Invalid("a short PUBACK".into()));
            }
            let reason = if v5 {
                body.get(2).copied().unwrap_or(0)
            } else {
                0
            };
            Incoming::PubAck(u16::from_be_bytes([body[0], body[1]]), reason)
        }
        Ok(PacketType::Disconnect) if v5 => {
            Incoming::Disconnect(body.first().copied().unwrap_or(0))
        }
        Ok(PacketType::PingResp) => Incoming::PingResp,
        Ok(_) => Incoming::Other(buf[0] >> 4),
        Err(e) => return Err(Malformed::Invalid(format!("{e:?}"))),
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
        // Type 0 and 15 are reserved in MQTT 3.1.1. (A reply such as "HTTP/1.1" frames as a
        // long PUBACK and waits for bytes; the connection refuses any first packet but a
        // CONNACK.)
        assert!(next_packet(&[0x00, 0x00], 1 << 20, false).is_err());
        assert!(next_packet(&[0xf0, 0x00], 1 << 20, false).is_err());
        assert_eq!(
            next_packet(&[0x30, 0xff, 0xff, 0x7f], 1000, false),
            Err(Malformed::TooLarge(2_097_151))
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
}
