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

/// Bytes of the variable-length encoding of `len`.
pub fn len_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Bytes a PUBLISH adds besides its payload, at most: fixed header, topic, packet id.
pub fn publish_overhead(topic_len: usize) -> usize {
    1 + 4 + 2 + topic_len + 2
}

/// Appends a PUBLISH to `topic` (QoS 1 with `pkid`, else QoS 0) whose payload, at most
/// `max_payload` bytes, `write_payload` appends; returns the payload's length.
pub fn append_publish(
    buf: &mut BytesMut,
    topic: &[u8],
    pkid: Option<u16>,
    max_payload: usize,
    write_payload: impl FnOnce(&mut BytesMut),
) -> usize {
    let var_len = 2 + topic.len() + if pkid.is_some() { 2 } else { 0 };
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
    if let Some(id) = pkid {
        header[t + 2 + topic.len()..].copy_from_slice(&id.to_be_bytes());
    }
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
    },
    PubAck(u16),
    PingResp,
    /// Anything else (a PUBLISH, a SUBACK): skipped.
    Other(u8),
}

/// Why the bytes from the broker are not MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a packet of {0} bytes, over the limit")]
    TooLarge(usize),
    #[error("not an MQTT packet ({0})")]
    Invalid(String),
}

/// Reads the first complete packet of `buf`: the packet and its length, or `None` when `buf`
/// holds only part of one.
pub fn next_packet(buf: &[u8], max_size: usize) -> Result<Option<(Incoming, usize)>, Malformed> {
    let header = match mqttbytes::check(buf.iter(), max_size) {
        Ok(h) => h,
        Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
        Err(mqttbytes::Error::PayloadSizeLimitExceeded(n)) => return Err(Malformed::TooLarge(n)),
        Err(e) => return Err(Malformed::Invalid(format!("{e:?}"))),
    };
    let len = header.frame_length();
    let frame = &buf[..len];
    let two = |f: &[u8]| (f.len() >= 4).then(|| [f[len - 2], f[len - 1]]);
    let packet = match header.packet_type() {
        Ok(PacketType::ConnAck) => {
            let [flags, code] =
                two(frame).ok_or_else(|| Malformed::Invalid("a short CONNACK".into()))?;
            Incoming::ConnAck {
                session_present: flags & 1 == 1,
                code,
            }
        }
        Ok(PacketType::PubAck) => {
            let id = two(frame).ok_or_else(|| Malformed::Invalid("a short PUBACK".into()))?;
            Incoming::PubAck(u16::from_be_bytes(id))
        }
        Ok(PacketType::PingResp) => Incoming::PingResp,
        Ok(_) => Incoming::Other(frame[0] >> 4),
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
                    let n = append_publish(&mut buf, topic.as_bytes(), pkid, max, |b| {
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
            while let Some((p, n)) = next_packet(&stream[at..cut], 1 << 20).unwrap() {
                got.push(p);
                at += n;
            }
        }
        assert_eq!(
            got,
            [
                Incoming::ConnAck {
                    session_present: true,
                    code: 0
                },
                Incoming::PubAck(0x1234),
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
        assert!(next_packet(&[0x00, 0x00], 1 << 20).is_err());
        assert!(next_packet(&[0xf0, 0x00], 1 << 20).is_err());
        assert_eq!(
            next_packet(&[0x30, 0xff, 0xff, 0x7f], 1000),
            Err(Malformed::TooLarge(2_097_151))
        );
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
