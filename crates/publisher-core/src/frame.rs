//! QoS 0 PUBLISH packets, framed here so that many go to rumqttc as one write.
//!
//! A packet is the MQTT 3.1.1 fixed header (type and flags, then the remaining length as a
//! variable-length integer), the topic with its 16-bit length, and the payload; the same bytes
//! as rumqttc's own `Publish::write` (a test holds the two equal). The payload is encoded in
//! place after room for the longest header the plan's payloads need, so a message is written
//! once; only a payload shorter than planned, whose length takes fewer bytes, is moved.

use bytes::{BufMut, BytesMut};

/// Writes QoS 0 PUBLISH packets to one topic.
#[derive(Debug, Clone)]
pub struct Framer {
    /// The topic with its 16-bit length prefix.
    topic: Vec<u8>,
    /// Bytes of the remaining-length field that the header room is sized for.
    reserved_len_len: usize,
}

/// PUBLISH, QoS 0, no DUP, no RETAIN.
const PUBLISH_QOS0: u8 = 0x30;

impl Framer {
    /// A framer for `topic` whose payloads are at most `max_payload` bytes.
    pub fn new(topic: &str, max_payload: usize) -> Framer {
        let mut t = Vec::with_capacity(topic.len() + 2);
        t.put_u16(topic.len() as u16);
        t.extend_from_slice(topic.as_bytes());
        let reserved_len_len = len_len(t.len() + max_payload);
        Framer {
            topic: t,
            reserved_len_len,
        }
    }

    /// Upper bound of the bytes one packet adds besides its payload.
    pub fn overhead(&self) -> usize {
        1 + 4 + self.topic.len()
    }

    /// Appends one packet whose payload `write_payload` appends; returns the payload's length.
    pub fn append(&self, buf: &mut BytesMut, write_payload: impl FnOnce(&mut BytesMut)) -> usize {
        let start = buf.len();
        let header_room = 1 + self.reserved_len_len + self.topic.len();
        buf.put_bytes(0, header_room);
        write_payload(buf);
        let payload_len = buf.len() - start - header_room;
        let remaining = self.topic.len() + payload_len;
        let len_len = len_len(remaining);
        let header_len = 1 + len_len + self.topic.len();
        if header_len < header_room {
            // Shorter than planned (rare: a last, partial batch): close the gap.
            let gap = header_room - header_len;
            buf.copy_within(start + header_room.., start + header_len);
            buf.truncate(buf.len() - gap);
        }
        let header = &mut buf[start..start + header_len];
        header[0] = PUBLISH_QOS0;
        write_remaining_length(&mut header[1..1 + len_len], remaining);
        header[1 + len_len..].copy_from_slice(&self.topic);
        payload_len
    }
}

/// Bytes of the variable-length encoding of `len`.
fn len_len(len: usize) -> usize {
    match len {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::{Publish, QoS};

    fn theirs(topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        Publish::new(topic, QoS::AtMostOnce, payload.to_vec())
            .write(&mut buf)
            .unwrap();
        buf.to_vec()
    }

    #[test]
    fn packets_are_byte_for_byte_rumqttcs() {
        let topic = "device_data/frontend1_ultra_high_perf_device";
        // Payload sizes around every boundary of the remaining-length encoding.
        for max in [10usize, 200, 20_000, 3_000_000] {
            let framer = Framer::new(topic, max);
            for len in [
                0usize, 1, 80, 81, 82, 127, 128, 16_300, 16_339, 16_340, 16_400, 2_097_100,
            ]
            .into_iter()
            .filter(|l| *l <= max)
            {
                let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let mut buf = BytesMut::new();
                buf.extend_from_slice(b"before");
                let n = framer.append(&mut buf, |b| b.extend_from_slice(&payload));
                assert_eq!(n, len);
                assert_eq!(&buf[..6], b"before");
                assert!(
                    buf[6..] == theirs(topic, &payload)[..],
                    "payload {len}, planned for {max}"
                );
            }
        }
    }

    #[test]
    fn packets_sit_back_to_back_and_read_back() {
        let framer = Framer::new("t/1", 300);
        let mut buf = BytesMut::new();
        for i in 0..3u8 {
            framer.append(&mut buf, |b| b.put_bytes(b'a' + i, 100 + i as usize));
        }
        let mut bytes = buf.split();
        for i in 0..3u8 {
            match rumqttc::Packet::read(&mut bytes, 1 << 20).unwrap() {
                rumqttc::Packet::Publish(p) => {
                    assert_eq!(p.topic, "t/1");
                    assert_eq!(p.qos, QoS::AtMostOnce);
                    assert_eq!(p.payload.len(), 100 + i as usize);
                    assert!(p.payload.iter().all(|c| *c == b'a' + i));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(bytes.is_empty());
    }
}
