//! Framing: where one MQTT packet ends and the next begins, for both versions (the fixed
//! header is the same). [`frame`] checks a header as soon as its bytes are there (type,
//! flags, size limit), so a peer that is not MQTT, or sends a packet too large, is told
//! before its body is buffered. [`Framer`] is a read buffer built on it: bytes are read
//! into [`Framer::room`], whole frames handed out in place by [`Framer::next_frame`]
//! (mutable, so a decoder can work in the read buffer), and what is left of a frame not
//! yet whole is kept, moved to the front only when the room runs short.
//!
//! ```text
//! socket --read--> room() --filled(n)--> next_frame(): (header, body) in place --> decode
//! ```

use crate::malformed::Malformed;
use crate::qos::QosError;

/// MQTT's largest remaining length (a 4-byte variable integer).
pub const MAX_REMAINING: usize = 268_435_455;

/// A packet's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// The type in the high nibble, flags in the low one.
    pub first: u8,
    /// Bytes of the fixed header: 1 and those of the remaining length.
    pub header_len: usize,
    /// Bytes after the fixed header.
    pub remaining: usize,
}

impl FixedHeader {
    pub fn packet_type(&self) -> u8 {
        self.first >> 4
    }

    /// The whole packet's length, its fixed header included.
    #[inline]
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Reads a fixed header at the start of `b`, or `None` when the bytes end inside it; only
/// a remaining length that does not end within 4 bytes is an error here.
#[inline]
pub fn fixed_header(b: &[u8]) -> Result<Option<FixedHeader>, Malformed> {
    let Some(&first) = b.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = b.get(1 + i) else {
            return Ok(None);
        };
        len |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some(FixedHeader {
                first,
                header_len: 2 + i,
                remaining: len,
            }));
        }
    }
    Err(Malformed::RemainingLength)
}

/// The name of packet type `t`, for errors.
pub fn type_name(t: u8) -> &'static str {
    match t {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved packet",
    }
}

/// Checks a fixed header's first byte: type 0 is reserved; PUBREL, SUBSCRIBE and
/// UNSUBSCRIBE carry flags 0010, a PUBLISH any but QoS 3, every other type 0000. (Type 15
/// is AUTH in MQTT 5 and reserved in 3.1.1: the decoder, which knows the version, says.)
#[inline]
pub fn check_first(first: u8) -> Result<(), Malformed> {
    let (t, flags) = (first >> 4, first & 0x0F);
    let want = match t {
        0 => return Err(Malformed::ReservedType(0)),
        3 if (flags >> 1) & 3 == 3 => return Err(Malformed::PublishQos(QosError(3))),
        3 => return Ok(()),
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != want {
        return Err(Malformed::Flags {
            packet: type_name(t),
            flags,
        });
    }
    Ok(())
}

/// The frame at the start of `b`: its header once the header is there (the frame itself
/// may not be whole yet: compare `frame_len()` with what you have), `None` before. Type and
/// flags are checked from the first byte, the size limit `max` (the whole packet's bytes)
/// from the header.
#[inline]
pub fn frame(b: &[u8], max: usize) -> Result<Option<FixedHeader>, Malformed> {
    let Some(&first) = b.first() else {
        return Ok(None);
    };
    check_first(first)?;
    let Some(h) = fixed_header(b)? else {
        return Ok(None);
    };
    if h.frame_len() > max {
        return Err(Malformed::TooLarge {
            len: h.frame_len(),
            max,
        });
    }
    Ok(Some(h))
}

/// The start of a packet that has not arrived whole: what is left in the read buffer when
/// the connection ends or the peer goes silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    /// Its fixed header's first byte (the type in the high nibble, a PUBLISH's QoS in bits 1-2).
    pub first: u8,
    /// Bytes of it received.
    pub have: usize,
    /// Its whole length, when the fixed header arrived.
    pub len: Option<usize>,
}

impl Partial {
    pub fn is_publish(&self) -> bool {
        self.first >> 4 == 3
    }

    /// A PUBLISH's QoS level (0 for other packets).
    pub fn qos(&self) -> u8 {
        if self.is_publish() {
            (self.first >> 1) & 3
        } else {
            0
        }
    }
}

/// A read buffer that hands out whole frames in place.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The frame at `start` is incomplete and this long (0: not known).
    need: usize,
    /// The largest packet taken, in bytes (the whole frame).
    max_packet: usize,
    /// Below this much free room at the end, what is left is moved to the front.
    min_room: usize,
}

impl Framer {
    /// A framer with a buffer of `capacity` bytes (grown for a frame that needs more),
    /// refusing frames over `max_packet` bytes. It keeps at least `min_room` bytes (at
    /// most `capacity`) to read into.
    pub fn new(capacity: usize, min_room: usize, max_packet: usize) -> Framer {
        let capacity = capacity.max(1);
        Framer {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            need: 0,
            max_packet,
            min_room: min_room.clamp(1, capacity),
        }
    }

    pub fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// Bytes read and not yet handed out.
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Where the next read goes: free room at the end of the buffer, at least `min_room`
    /// bytes or what the frame begun still needs (moving the unread bytes to the front,
    /// or growing the buffer, when it must). Call [`Framer::filled`] with what was read.
    pub fn room(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let room = self.buf.len() - self.end;
        if room
            < self
                .min_room
                .max(self.need.saturating_sub(self.end - self.start))
        {
            self.compact();
            if self.need > self.buf.len() {
                self.buf.resize(self.need, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into [`Framer::room`].
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Appends `bytes` (as a read would), making room for them.
    pub fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.room();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.filled(n);
            bytes = &bytes[n..];
            if n == 0 {
                // No room even after compacting: grow.
                let want = self.buf.len() + bytes.len();
                self.buf.resize(want, 0);
            }
        }
    }

    /// Moves the unread bytes to the front of the buffer.
    pub fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// The next whole frame: its header and its body (after the fixed header), mutable in
    /// place; `None` when more must be read. After an error the framer is not to be used
    /// again (the stream has lost its frame boundaries).
    #[inline]
    pub fn next_frame(&mut self) -> Result<Option<(FixedHeader, &mut [u8])>, Malformed> {
        let unread = &self.buf[self.start..self.end];
        let Some(h) = frame(unread, self.max_packet)? else {
            self.need = 0;
            return Ok(None);
        };
        let len = h.frame_len();
        if unread.len() < len {
            self.need = len;
            return Ok(None);
        }
        self.need = 0;
        let at = self.start;
        self.start += len;
        Ok(Some((h, &mut self.buf[at + h.header_len..at + len])))
    }

    /// The packet begun in the buffer and not whole yet, if any (after
    /// [`Framer::next_frame`] said `None`).
    pub fn partial(&self) -> Option<Partial> {
        let unread = self.unread();
        let first = *unread.first()?;
        let len = match fixed_header(unread) {
            Ok(Some(h)) => Some(h.frame_len()),
            _ => None,
        };
        Some(Partial {
            first,
            have: unread.len(),
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{self, AckKind, PublishFlags, SubOptions};
    use crate::qos::Qos;
    use bytes::BytesMut;

    /// A stream of every kind of packet a client receives, for `v5`.
    fn stream(v5: bool) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&[0x20, 0x02, 0x01, 0x00]);
        let mut b = BytesMut::new();
        for (qos, len) in [
            (Qos::AtMostOnce, 300usize),
            (Qos::AtLeastOnce, 0),
            (Qos::ExactlyOnce, 130),
        ] {
            let flags = PublishFlags {
                qos,
                dup: qos == Qos::ExactlyOnce,
                retain: false,
            };
            let props = if v5 { vec![0] } else { vec![] };
            packets::append_publish_with(
                &mut b,
                flags,
                b"device_data/x",
                qos.acknowledged().then_some(9),
                &props,
                len,
                |b| b.extend((0..len).map(|i| i as u8)),
            );
        }
        s.extend_from_slice(&b);
        for kind in [
            AckKind::PubAck,
            AckKind::PubRec,
            AckKind::PubRel,
            AckKind::PubComp,
        ] {
            s.extend_from_slice(&packets::ack(kind, 0x0102, 0x10, v5));
        }
        packets::suback(&mut s, 1, &[0, 1, 0x80], v5);
        s.extend_from_slice(&packets::PINGRESP);
        s.extend_from_slice(&packets::DISCONNECT);
        let mut sub = Vec::new();
        packets::subscribe(
            &mut sub,
            2,
            &[("a/#", SubOptions::at(Qos::AtLeastOnce))],
            None,
            v5,
        )
        .unwrap();
        s.extend_from_slice(&sub);
        s
    }

    /// Every packet the framer hands out, decoded and described.
    fn drain(f: &mut Framer, v5: bool, out: &mut Vec<String>) {
        while let Some((h, body)) = f.next_frame().unwrap() {
            out.push(format!(
                "{:?}",
                packets::decode_mut(h.first, body, v5).unwrap()
            ));
        }
    }

    #[test]
    fn a_stream_split_at_every_byte_gives_the_same_packets() {
        for v5 in [false, true] {
            let s = stream(v5);
            let mut whole = Framer::new(1 << 16, 1 << 10, 1 << 20);
            let mut want = Vec::new();
            whole.push(&s);
            drain(&mut whole, v5, &mut want);
            assert_eq!(want.len(), 12, "{want:?}");
            assert!(whole.unread().is_empty() && whole.partial().is_none());
            for cut in 0..=s.len() {
                // A small buffer: it compacts and grows on the way.
                let mut f = Framer::new(64, 16, 1 << 20);
                let mut got = Vec::new();
                f.push(&s[..cut]);
                drain(&mut f, v5, &mut got);
                let partial = f.partial();
                assert_eq!(partial.is_some(), !f.unread().is_empty(), "cut {cut}");
                f.push(&s[cut..]);
                drain(&mut f, v5, &mut got);
                assert_eq!(got, want, "v5 {v5}, cut at {cut}");
            }
            // A byte at a time, through room() and filled() as a socket read would.
            let mut f = Framer::new(32, 8, 1 << 20);
            let mut got = Vec::new();
            for b in &s {
                let room = f.room();
                room[0] = *b;
                f.filled(1);
                drain(&mut f, v5, &mut got);
            }
            assert_eq!(got, want, "v5 {v5}, byte by byte");
        }
    }

    #[test]
    fn a_packet_not_yet_whole_is_partial() {
        let mut b = BytesMut::new();
        packets::append_publish(&mut b, b"device_data/x", Some(9), &[], 2, |b| {
            b.extend_from_slice(b"{}")
        });
        let mut f = Framer::new(64, 16, 1024);
        f.push(&b[..6]);
        assert!(f.next_frame().unwrap().is_none());
        let p = f.partial().unwrap();
        assert_eq!(
            p,
            Partial {
                first: 0x32,
                have: 6,
                len: Some(b.len())
            }
        );
        assert!(p.is_publish() && p.qos() == 1);
    }

    #[test]
    fn broken_headers_are_malformed_before_their_body_arrives() {
        let mut f = Framer::new(64, 16, 1000);
        f.push(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(f.next_frame().unwrap_err(), Malformed::RemainingLength);
        // Over the limit as soon as the remaining length says so.
        let mut f = Framer::new(64, 16, 1000);
        f.push(&[0x30, 0xE8, 0x07]);
        assert_eq!(
            f.next_frame().unwrap_err(),
            Malformed::TooLarge {
                len: 1003,
                max: 1000
            }
        );
        // Bad flags at the first byte.
        for (first, packet) in [
            (0x41u8, "PUBACK"),
            (0x60, "PUBREL"),
            (0x80, "SUBSCRIBE"),
            (0xd4, "PINGRESP"),
        ] {
            let mut f = Framer::new(64, 16, 1000);
            f.push(&[first]);
            assert_eq!(
                f.next_frame().unwrap_err(),
                Malformed::Flags {
                    packet,
                    flags: first & 0x0F
                }
            );
        }
        let mut f = Framer::new(64, 16, 1000);
        f.push(&[0x00]);
        assert_eq!(f.next_frame().unwrap_err(), Malformed::ReservedType(0));
        assert_eq!(
            frame(&[0x36], 1000).unwrap_err(),
            Malformed::PublishQos(QosError(3))
        );
    }

    /// Random bytes, and valid streams with bytes changed, never panic: every outcome is a
    /// packet, a wait for more, or a `Malformed`.
    #[test]
    fn random_and_mangled_bytes_never_panic() {
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let valid = [stream(false), stream(true)];
        for i in 0..20_000 {
            let mut bytes: Vec<u8> = if i % 2 == 0 {
                let n = (next() % 48) as usize;
                (0..n).map(|_| next() as u8).collect()
            } else {
                let mut v = valid[i % 4 / 2].clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % v.len();
                    v[at] = next() as u8;
                }
                v.truncate((next() as usize) % (v.len() + 1));
                v
            };
            for v5 in [false, true] {
                let _ = packets::next_packet(&bytes, 4096, v5);
                let mut f = Framer::new(32, 8, 4096);
                f.push(&bytes);
                for _ in 0..64 {
                    match f.next_frame() {
                        Ok(Some((h, body))) => {
                            let _ = packets::decode_mut(h.first, body, v5);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                let _ = f.partial();
                if let Some(first) = bytes.first().copied() {
                    let _ = packets::decode(first, &bytes[1..], v5);
                }
            }
            bytes.clear();
        }
    }
}
