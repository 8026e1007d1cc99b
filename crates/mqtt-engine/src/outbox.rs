//! The hand-over between the producer and a connection: messages are encoded straight into
//! the connection's outbox and count as sent only once their last byte is written to the
//! socket — never when they are queued.
//!
//! ```text
//! producer: append(meta, encode)  ->  [ bytes .......... | metas (end offsets) ]
//! connection: flush(socket)       ->  written bytes  ->  on_sent(meta) for each message
//!                                                         whose last byte went out
//! ```
//!
//! Room is counted in messages ([`Outbox::queued`]): the producer stops appending when a
//! connection has its share queued, so a broker that stops reading stalls its own
//! connections, costs bounded memory, and shows as schedule lag. Control packets (CONNECT,
//! PINGREQ, DISCONNECT) travel the same byte stream without a meta. What is left when a
//! connection is given up is [`Outbox::abandon`]ed: unsent, each message accounted for.
//!
//! For a reconnect, the bytes of messages that may have to go out again stay: a message
//! written in part (the broker drops a packet cut by a lost connection), and with
//! [`Outbox::retaining`] (QoS 1 when connections reconnect) every message until the worker
//! [`Outbox::release`]s it on its PUBACK. A lost connection's messages are then taken out
//! whole ([`Outbox::frame`]) and written again on the next connection.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::time::Instant;

use bytes::{Buf, BytesMut};

/// A message in an outbox, as the counters and histograms need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgMeta {
    /// When it was due (latency and schedule lag are measured from here).
    pub scheduled: Instant,
    pub points: u32,
    /// Payload bytes.
    pub bytes: u32,
    /// The QoS 1 packet id (0 at QoS 0).
    pub pkid: u16,
    /// Written before, on a connection since lost: counted as resent, not sent again.
    pub resend: bool,
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued is written.
    All,
    /// The socket would block: wait until it is writable.
    Blocked,
}

/// Bytes and messages queued for one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Bytes from stream offset `base`: kept ones, then those not yet written.
    buf: BytesMut,
    base: u64,
    /// Messages not completely written, oldest first: the stream offsets of their first
    /// byte and just past their last.
    metas: VecDeque<(u64, u64, MsgMeta)>,
    /// Bytes written so far.
    written: u64,
    /// Where the message being encoded starts.
    open: u64,
    /// Written messages are kept from this offset on (`retaining`), until released.
    released: u64,
    retaining: bool,
}

impl Outbox {
    /// An outbox that keeps written messages until [`Outbox::release`]d.
    pub fn retaining() -> Outbox {
        Outbox {
            retaining: true,
            ..Outbox::default()
        }
    }

    /// Messages queued and not completely written.
    pub fn queued(&self) -> usize {
        self.metas.len()
    }

    /// Bytes not yet written.
    pub fn bytes(&self) -> usize {
        (self.end() - self.written) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.end() == self.written
    }

    /// Stream offset just past the last byte queued.
    pub fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Bytes written so far, over the connection's life.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The buffer to encode into, with room for `additional` bytes.
    pub fn buffer(&mut self, additional: usize) -> &mut BytesMut {
        self.buf.reserve(additional);
        self.open = self.end();
        &mut self.buf
    }

    /// Records that the bytes appended to [`Outbox::buffer`] since it was called are the
    /// message `meta`; returns its stream offsets (first byte, just past the last).
    pub fn seal(&mut self, meta: MsgMeta) -> (u64, u64) {
        let span = (self.open, self.end());
        self.metas.push_back((span.0, span.1, meta));
        span
    }

    /// The bytes at stream offsets `start..end`, while they are kept.
    pub fn frame(&self, start: u64, end: u64) -> Option<&[u8]> {
        if start < self.base || end > self.end() || start > end {
            return None;
        }
        self.buf
            .get((start - self.base) as usize..(end - self.base) as usize)
    }

    /// Messages not completely written: (first byte, past the last, meta).
    pub fn unwritten(&self) -> impl Iterator<Item = &(u64, u64, MsgMeta)> + '_ {
        self.metas.iter()
    }

    /// Written messages before stream offset `upto` need not be kept any more.
    pub fn release(&mut self, upto: u64) {
        self.released = upto;
        self.compact();
    }

    /// Drops the bytes nobody may need again: written, not in a message written in part,
    /// and (retaining) released.
    fn compact(&mut self) {
        let mut to = self.written;
        if let Some((start, _, _)) = self.metas.front() {
            to = to.min(*start);
        }
        if self.retaining {
            to = to.min(self.released);
        }
        if to > self.base {
            self.buf.advance((to - self.base) as usize);
            self.base = to;
        }
    }

    /// Appends a control packet: written in order, counted as no message.
    pub fn push_control(&mut self, packet: &[u8]) {
        self.buf.extend_from_slice(packet);
    }

    /// Writes as much as `w` takes; `on_sent` sees each message whose last byte went out.
    pub fn flush<W: Write>(
        &mut self,
        w: &mut W,
        mut on_sent: impl FnMut(&MsgMeta),
    ) -> io::Result<Flushed> {
        let result = loop {
            if self.is_empty() {
                break Ok(Flushed::All);
            }
            match w.write(&self.buf[(self.written - self.base) as usize..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n as u64;
                    while let Some((_, end, meta)) = self.metas.front() {
                        if *end > self.written {
                            break;
                        }
                        on_sent(meta);
                        self.metas.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.compact();
        result
    }

    /// Drops everything unwritten; returns the messages that never went out entirely.
    pub fn abandon(&mut self) -> impl Iterator<Item = MsgMeta> + '_ {
        self.buf.clear();
        self.base = self.written;
        self.metas.drain(..).map(|(_, _, m)| m)
    }

    /// Gives the buffer's memory back when it is empty and larger than `keep` bytes: a
    /// fleet's connections each held a large message once must not each keep its buffer.
    pub fn trim(&mut self, keep: usize) {
        if self.buf.is_empty() && self.buf.capacity() > keep {
            self.buf = BytesMut::new();
        }
        if self.metas.is_empty() && self.metas.capacity() > 64 {
            self.metas = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An in-memory transport: takes at most `per_write` bytes a call and `budget` in all
    /// before it would block, like a socket whose buffer fills.
    struct Pipe {
        got: Vec<u8>,
        per_write: usize,
        budget: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.per_write).min(self.budget);
            self.got.extend_from_slice(&b[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn meta(i: u32) -> MsgMeta {
        MsgMeta {
            scheduled: Instant::now() + Duration::from_millis(i as u64),
            points: i,
            bytes: 10,
            pkid: 0,
            resend: false,
        }
    }

    fn push(o: &mut Outbox, i: u32) {
        o.buffer(10).extend_from_slice(&[b'a' + i as u8; 10]);
        o.seal(meta(i));
    }

    #[test]
    fn a_message_counts_as_sent_only_when_its_last_byte_is_written() {
        let mut o = Outbox::default();
        for i in 0..3 {
            push(&mut o, i);
        }
        assert_eq!(o.queued(), 3);
        let mut pipe = Pipe {
            got: Vec::new(),
            per_write: 7,
            budget: 25,
        };
        let mut sent = Vec::new();
        assert_eq!(
            o.flush(&mut pipe, |m| sent.push(m.points)).unwrap(),
            Flushed::Blocked
        );
        // 25 bytes out: messages 0 and 1 whole, message 2 half.
        assert_eq!(sent, [0, 1]);
        assert_eq!((o.queued(), o.bytes(), o.written()), (1, 5, 25));
        pipe.budget = 100;
        assert_eq!(
            o.flush(&mut pipe, |m| sent.push(m.points)).unwrap(),
            Flushed::All
        );
        assert_eq!(sent, [0, 1, 2]);
        assert_eq!(pipe.got.len(), 30);
        assert!(o.is_empty());
    }

    #[test]
    fn control_packets_keep_their_place_and_count_as_no_message() {
        let mut o = Outbox::default();
        o.push_control(b"CONNECT");
        push(&mut o, 0);
        o.push_control(b"PING");
        let mut pipe = Pipe {
            got: Vec::new(),
            per_write: 1000,
            budget: 1000,
        };
        let mut sent = 0;
        o.flush(&mut pipe, |_| sent += 1).unwrap();
        assert_eq!(sent, 1);
        assert_eq!(&pipe.got[..7], b"CONNECT");
        assert_eq!(&pipe.got[17..], b"PING");
    }

    #[test]
    fn abandoned_messages_are_returned_whole_or_partly_written() {
        let mut o = Outbox::default();
        for i in 0..4 {
            push(&mut o, i);
        }
        let mut pipe = Pipe {
            got: Vec::new(),
            per_write: 1000,
            budget: 15,
        };
        let mut sent = 0;
        o.flush(&mut pipe, |_| sent += 1).unwrap();
        let left: Vec<u32> = o.abandon().map(|m| m.points).collect();
        assert_eq!((sent, left), (1, vec![1, 2, 3]));
        assert!(o.is_empty() && o.queued() == 0);
    }

    #[test]
    fn a_socket_error_is_returned_and_nothing_more_counts() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::ConnectionReset.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut o = Outbox::default();
        push(&mut o, 0);
        let mut sent = 0;
        let e = o.flush(&mut Broken, |_| sent += 1).unwrap_err();
        assert_eq!(
            (e.kind(), sent, o.queued()),
            (io::ErrorKind::ConnectionReset, 0, 1)
        );
    }

    #[test]
    fn a_message_written_in_part_stays_whole_for_a_reconnect() {
        let mut o = Outbox::default();
        for i in 0..3 {
            push(&mut o, i);
        }
        let mut pipe = Pipe {
            got: Vec::new(),
            per_write: 1000,
            budget: 15,
        };
        o.flush(&mut pipe, |_| {}).unwrap();
        // Message 0 is gone, message 1 half written: it is kept whole, with message 2.
        assert_eq!(o.frame(0, 10), None);
        let spans: Vec<(u64, u64)> = o.unwritten().map(|(s, e, _)| (*s, *e)).collect();
        assert_eq!(spans, [(10, 20), (20, 30)]);
        assert_eq!(o.frame(10, 20), Some(&[b'b'; 10][..]));
        assert_eq!(o.bytes(), 15);
    }

    #[test]
    fn a_retaining_outbox_keeps_written_messages_until_released() {
        let mut o = Outbox::retaining();
        let spans: Vec<(u64, u64)> = (0..3)
            .map(|i| {
                o.buffer(10).extend_from_slice(&[b'a' + i as u8; 10]);
                o.seal(meta(i))
            })
            .collect();
        assert_eq!(spans, [(0, 10), (10, 20), (20, 30)]);
        let mut pipe = Pipe {
            got: Vec::new(),
            per_write: 1000,
            budget: 1000,
        };
        assert_eq!(o.flush(&mut pipe, |_| {}).unwrap(), Flushed::All);
        assert!(o.is_empty());
        assert_eq!(
            o.frame(0, 10),
            Some(&[b'a'; 10][..]),
            "written, not released"
        );
        o.release(10);
        assert_eq!(o.frame(0, 10), None);
        assert_eq!(o.frame(10, 30).map(|f| f.len()), Some(20));
        // A message sealed after everything was released is kept in its turn.
        o.release(o.end());
        o.buffer(10).extend_from_slice(&[b'd'; 10]);
        let span = o.seal(meta(3));
        o.flush(&mut pipe, |_| {}).unwrap();
        assert_eq!(o.frame(span.0, span.1), Some(&[b'd'; 10][..]));
    }

    #[test]
    fn trimming_returns_a_large_idle_buffer() {
        let mut o = Outbox::default();
        o.buffer(1 << 20).extend_from_slice(&[0; 100]);
        o.seal(meta(0));
        let mut pipe = Pipe {
            got: Vec::new(),
            per_write: 1 << 20,
            budget: 1 << 20,
        };
        o.flush(&mut pipe, |_| {}).unwrap();
        o.trim(4096);
        assert_eq!(o.buf.capacity(), 0);
    }
}
