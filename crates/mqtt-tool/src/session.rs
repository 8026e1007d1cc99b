//! One MQTT 3.1.1 client session over tokio, for tools that receive at the broker's speed
//! (the backend): CONNECT and CONNACK, SUBSCRIBE, then packets read in large chunks and
//! handed out in place, payloads mutable so that a decoder can work in the read buffer
//! without a copy.
//!
//! rumqttc's event loop costs a `Publish` with an owned topic and payload per message and a
//! channel hop per event; at 1000-point batches a verifying backend then received 0.41x what
//! a raw subscriber did. Packets are still built by rumqttc's codec (`mqttbytes`, through
//! `mqtt_engine::packets`); only the framing of what arrives is ours: a fixed header and a
//! remaining length, then the packet's bytes where they lie.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::broker::BrokerTarget;
use crate::connect::ConnectPlan;
use crate::error::Error;
use crate::lowat::Lowat;
use crate::mqtt::{describe_failure, ConnackCode, ConnectFailure};

/// Bytes read in one go: a thousand 1000-point batches' worth of headers, or a few of them.
const READ_CHUNK: usize = 1 << 20;
/// Below this much free room at the end of the buffer, what is left is moved to the front.
const MIN_ROOM: usize = 64 << 10;

pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];

/// A packet from the broker, borrowed from the read buffer.
#[derive(Debug)]
pub enum Packet<'a> {
    Publish {
        qos: u8,
        retain: bool,
        pkid: u16,
        topic: &'a [u8],
        payload: &'a mut [u8],
    },
    SubAck {
        pkid: u16,
        codes: &'a [u8],
    },
    ConnAck {
        /// The broker kept this client's session (MQTT 3.1.1 section 3.2.2.2).
        session_present: bool,
        code: u8,
    },
    PingResp,
    /// Another packet type (its type nibble): nothing a subscriber acts on.
    Other(u8),
}

/// Why the bytes from the broker are not MQTT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a packet of {0} bytes, over the limit of {1} (--max-packet-size)")]
    TooLarge(usize, usize),
    #[error("not an MQTT packet: {0}")]
    Invalid(&'static str),
    /// Well-formed, but not what the protocol allows here.
    #[error("{0} (a protocol error)")]
    Protocol(String),
}

/// The start of a packet that has not arrived whole: what is left in the read buffer when
/// the connection ends or the broker goes silent.
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

    /// A PUBLISH's QoS (0 for other packets).
    pub fn qos(&self) -> u8 {
        if self.is_publish() {
            (self.first >> 1) & 3
        } else {
            0
        }
    }

    /// "a PUBLISH of 1,234 bytes, 617 of them received", for a verdict.
    pub fn describe(&self) -> String {
        let what = match self.first >> 4 {
            3 => "a PUBLISH",
            9 => "a SUBACK",
            _ => "a packet",
        };
        match self.len {
            Some(len) => format!(
                "{what} of {} bytes, {} of them received",
                crate::format::fmt_int(len as u64),
                crate::format::fmt_int(self.have as u64)
            ),
            None => format!("{what} whose fixed header was cut off"),
        }
    }
}

/// The connection: plain TCP, or TLS over it (`mqtts://`).
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub struct Session {
    stream: Stream,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// The frame at `start` is incomplete and this long.
    need: usize,
    max_packet: usize,
    keep_alive: Duration,
    /// MQTT 5: PUBLISH, SUBACK and CONNACK carry properties.
    v5: bool,
    last_write: Instant,
    /// When the PINGREQ with nothing read since went out.
    ping_sent: Option<Instant>,
    /// How many bytes a read waits for.
    lowat: Lowat,
    /// The packet id of the SUBSCRIBE not yet acknowledged: a SUBACK for any other is a
    /// protocol error.
    awaiting_suback: Option<u16>,
    /// The CONNACK said the broker kept this client's session.
    session_present: bool,
}

/// Sets `SO_RCVLOWAT` on `fd`.
fn set_rcvlowat(fd: RawFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    // SAFETY: setsockopt reads an int of ours for a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the socket holds now, without waiting and whatever the low-water mark: tokio's own
/// `try_read` would not ask the kernel, as the mark kept the socket from being reported
/// readable. `Ok(0)` is a closed connection; WouldBlock, nothing there.
fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most buf.len() bytes into buf, which we own mutably.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Reads a fixed header at the start of `b`: (first byte, header length, remaining length),
/// or `None` when the bytes end inside it.
fn fixed_header(b: &[u8]) -> Result<Option<(u8, usize, usize)>, Malformed> {
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
            return Ok(Some((first, 2 + i, len)));
        }
    }
    Err(Malformed::Invalid("a remaining length longer than 4 bytes"))
}

/// The length of MQTT 5 properties at the start of `b`, their length's bytes included.
fn props_len(b: &[u8]) -> Result<usize, Malformed> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *b.get(i).ok_or(Malformed::Invalid("properties cut short"))?;
        len |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(i + 1 + len);
        }
    }
    Err(Malformed::Invalid("a property length longer than 4 bytes"))
}

/// Parses one whole frame (header byte `first`, body `body`); `v5`: MQTT 5 framing.
fn packet(first: u8, body: &mut [u8], v5: bool) -> Result<Packet<'_>, Malformed> {
    match first >> 4 {
        3 => {
            let qos = (first >> 1) & 3;
            if qos == 3 {
                return Err(Malformed::Invalid("a PUBLISH with QoS 3"));
            }
            if body.len() < 2 {
                return Err(Malformed::Invalid("a PUBLISH without a topic"));
            }
            let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
            let id_len = if qos > 0 { 2 } else { 0 };
            if body.len() < 2 + tlen + id_len {
                return Err(Malformed::Invalid("a PUBLISH shorter than its topic"));
            }
            let props = if v5 {
                props_len(&body[2 + tlen + id_len..])?
            } else {
                0
            };
            if body.len() < 2 + tlen + id_len + props {
                return Err(Malformed::Invalid("a PUBLISH shorter than its properties"));
            }
            let (head, payload) = body.split_at_mut(2 + tlen + id_len + props);
            let pkid = if qos > 0 {
                u16::from_be_bytes([head[2 + tlen], head[3 + tlen]])
            } else {
                0
            };
            Ok(Packet::Publish {
                qos,
                retain: first & 1 == 1,
                pkid,
                topic: &head[2..2 + tlen],
                payload,
            })
        }
        9 => {
            if body.len() < 2 {
                return Err(Malformed::Invalid("a short SUBACK"));
            }
            let (id, rest) = body.split_at(2);
            let skip = if v5 { props_len(rest)? } else { 0 };
            Ok(Packet::SubAck {
                pkid: u16::from_be_bytes([id[0], id[1]]),
                codes: rest
                    .get(skip..)
                    .ok_or(Malformed::Invalid("a short SUBACK"))?,
            })
        }
        2 if body.len() == 2 || (v5 && body.len() > 2) => Ok(Packet::ConnAck {
            session_present: body[0] & 1 == 1,
            code: body[1],
        }),
        2 => Err(Malformed::Invalid("a CONNACK of the wrong length")),
        13 => Ok(Packet::PingResp),
        t => Ok(Packet::Other(t)),
    }
}

fn io_failure(e: &io::Error) -> ConnectFailure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        io::ErrorKind::TimedOut => ConnectFailure::Timeout,
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted => ConnectFailure::ClosedBeforeConnack,
        k => ConnectFailure::Io(k),
    }
}

/// A failed TLS handshake in words that say what to change (rustls's error, when it is
/// one); an end of stream during the handshake is a close before CONNACK.
fn tls_failure(e: &io::Error) -> ConnectFailure {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(r) => ConnectFailure::Tls(mqtt_engine::tls::describe(r)),
        None => match io_failure(e) {
            ConnectFailure::Io(_) => ConnectFailure::Tls(e.to_string()),
            other => other,
        },
    }
}

impl Session {
    /// Connects and waits for the CONNACK, within the plan's connect timeout. Failures are
    /// the exit codes' kinds: unreachable (3) or refused by the broker (4). With
    /// `clean_session` false the broker keeps the session (and queues QoS 1 messages for
    /// it) while this client is away.
    pub async fn open(
        cp: &ConnectPlan,
        target: &BrokerTarget,
        clean_session: bool,
        session_expiry: Duration,
    ) -> Result<Session, Error> {
        Session::open_with(cp, target, clean_session, session_expiry, false).await
    }

    /// [`Session::open`] for a run's first connection: a failure that a scheme mixed up
    /// with the port explains (`mqtt://` at a TLS port, `mqtts://` at a plain one) is
    /// probed once with the other scheme and named.
    pub async fn open_first(
        cp: &ConnectPlan,
        target: &BrokerTarget,
        clean_session: bool,
        session_expiry: Duration,
    ) -> Result<Session, Error> {
        Session::open_with(cp, target, clean_session, session_expiry, true).await
    }

    async fn open_with(
        cp: &ConnectPlan,
        target: &BrokerTarget,
        clean_session: bool,
        session_expiry: Duration,
        hint: bool,
    ) -> Result<Session, Error> {
        let broker = target.url();
        let fail = |f: ConnectFailure, io: Option<io::Error>| match f {
            // A refusal for good (credentials, authorization); "server unavailable" and
            // the like are a broker not ready yet: unreachable, tried again.
            ConnectFailure::Connack(_) if f.is_fatal() => Error::Refused {
                broker: broker.clone(),
                reason: describe_failure(&f, cp.connect_timeout),
            },
            _ => Error::Unreachable {
                broker: broker.clone(),
                reason: match io {
                    Some(e) if !matches!(f, ConnectFailure::ClosedBeforeConnack) => e.to_string(),
                    _ => describe_failure(&f, cp.connect_timeout),
                },
            },
        };
        let attempt = async {
            let stream = TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(|e| (io_failure(&e), Some(e)))?;
            let _ = stream.set_nodelay(cp.tcp_nodelay);
            let stream = match &cp.tls {
                None => Stream::Plain(stream),
                Some(t) => {
                    let name = crate::tls::server_name(&target.host)
                        .map_err(|e| (ConnectFailure::Tls(e.to_string()), None))?;
                    let tls = tokio_rustls::TlsConnector::from(t.config.clone())
                        .connect(name, stream)
                        .await
                        .map_err(|e| (tls_failure(&e), None))?;
                    Stream::Tls(Box::new(tls))
                }
            };
            let mut s = Session {
                stream,
                buf: vec![0; READ_CHUNK],
                start: 0,
                end: 0,
                need: 0,
                max_packet: cp.max_packet_size.max(64),
                keep_alive: cp.keep_alive,
                v5: cp.mqtt5,
                last_write: Instant::now(),
                ping_sent: None,
                lowat: Lowat::new(Duration::ZERO, Instant::now()),
                awaiting_suback: None,
                session_present: false,
            };
            let credentials = cp
                .credentials
                .as_ref()
                .map(|(u, p)| (u.as_str(), p.as_ref().map_or("", |p| p.expose())));
            let keep_alive = cp.keep_alive.as_secs().min(u16::MAX as u64) as u16;
            let connect = if cp.mqtt5 {
                let v5 = mqtt_engine::packets::ConnectV5 {
                    session_expiry: if clean_session {
                        0
                    } else {
                        session_expiry.as_secs().min(u32::MAX as u64) as u32
                    },
                    user_properties: Vec::new(),
                };
                mqtt_engine::packets::connect_v5(
                    &cp.client_id,
                    keep_alive,
                    clean_session,
                    credentials,
                    &v5,
                )
            } else {
                mqtt_engine::packets::connect(&cp.client_id, keep_alive, clean_session, credentials)
            };
            s.write(&connect)
                .await
                .map_err(|e| (io_failure(&e), Some(e)))?;
            let code = loop {
                match s.next_packet() {
                    Ok(Some(Packet::ConnAck {
                        code,
                        session_present,
                    })) => {
                        s.session_present = session_present;
                        break code;
                    }
                    Ok(Some(_)) | Err(_) => return Err((ConnectFailure::NotMqtt, None)),
                    Ok(None) => {}
                }
                match s.read_more().await {
                    Ok(0) => return Err((ConnectFailure::ClosedBeforeConnack, None)),
                    Ok(_) => {}
                    Err(e) => return Err((io_failure(&e), Some(e))),
                }
            };
            Ok((s, code))
        };
        let (mut s, code) = match tokio::time::timeout(cp.connect_timeout, attempt).await {
            Err(_) => return Err(fail(ConnectFailure::Timeout, None)),
            Ok(Err((f, io))) => {
                let mut e = fail(f.clone(), io);
                if hint {
                    let (host, port, tls) = (target.host.clone(), target.port, cp.tls.is_some());
                    let said = tokio::task::spawn_blocking(move || {
                        crate::mqtt::scheme_hint(&f, &host, port, tls)
                    })
                    .await
                    .ok()
                    .flatten();
                    if let (Some(said), Error::Unreachable { reason, .. }) = (said, &mut e) {
                        *reason = format!("{reason}; {said}");
                    }
                }
                return Err(e);
            }
            Ok(Ok(s)) => s,
        };
        if code != 0 {
            let code = if cp.mqtt5 {
                ConnackCode::from_v5_code(code)
            } else {
                ConnackCode::from_code(code)
            };
            return Err(fail(ConnectFailure::Connack(code), None));
        }
        s.compact();
        Ok(s)
    }

    /// Whether the broker kept this client's session (and so what it queued for it while
    /// it was away): the CONNACK's Session Present flag.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// Sends SUBSCRIBE (packet id 1) for `filters`, each at `qos`.
    pub async fn subscribe(&mut self, filters: &[String], qos: u8) -> io::Result<()> {
        self.awaiting_suback = Some(1);
        if self.v5 {
            use rumqttc::v5::mqttbytes::v5::{Filter, Subscribe};
            let q = if qos == 0 {
                rumqttc::v5::mqttbytes::QoS::AtMostOnce
            } else {
                rumqttc::v5::mqttbytes::QoS::AtLeastOnce
            };
            let mut sub =
                Subscribe::new_many(filters.iter().map(|f| Filter::new(f.clone(), q)), None);
            sub.pkid = 1;
            let mut b = BytesMut::new();
            sub.write(&mut b)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
            return self.write(&b).await;
        }
        let q = if qos == 0 {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        };
        let mut sub = rumqttc::Subscribe::new_many(
            filters
                .iter()
                .map(|f| rumqttc::SubscribeFilter::new(f.clone(), q)),
        );
        sub.pkid = 1;
        let mut b = BytesMut::new();
        sub.write(&mut b)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e:?}")))?;
        self.write(&b).await
    }

    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        if matches!(self.stream, Stream::Tls(_)) {
            self.stream.flush().await?; // out of rustls's buffer, onto the socket
        }
        self.last_write = Instant::now();
        Ok(())
    }

    /// Lets reads wait for bytes to gather, so that no byte waits longer than about `hold`
    /// at a steady rate (zero: every byte wakes the reader); see [`crate::lowat`].
    pub fn set_read_hold(&mut self, hold: Duration) {
        // Through TLS the kernel's bytes are records for rustls: no reading around it.
        let hold = if matches!(self.stream, Stream::Tls(_)) {
            Duration::ZERO
        } else {
            hold
        };
        self.lowat = Lowat::new(hold, Instant::now());
    }

    /// When a PINGREQ is due (the broker closes a client silent for 1.5 keep-alives).
    pub fn ping_due(&self) -> Option<Instant> {
        (!self.keep_alive.is_zero() && self.ping_sent.is_none())
            .then(|| self.last_write + self.keep_alive / 2)
    }

    /// When the broker last heard from us half a keep-alive ago, answered or not: a reader
    /// that holds back (backpressure) still keeps the connection alive by this.
    pub fn keepalive_due(&self) -> Option<Instant> {
        (!self.keep_alive.is_zero()).then(|| self.last_write + self.keep_alive / 2)
    }

    /// Writes a PINGREQ; the broker must answer (or send anything) within a keep-alive.
    pub async fn ping(&mut self) -> io::Result<()> {
        self.write(&PINGREQ).await?;
        self.ping_sent = Some(self.last_write);
        Ok(())
    }

    /// When the connection counts as dead: a keep-alive after a PINGREQ with nothing read
    /// since (a broker that stopped, or a network that did).
    pub fn dead_at(&self) -> Option<Instant> {
        self.ping_sent.map(|t| t + self.keep_alive)
    }

    /// Reads what the socket has (at least one byte, or 0 when the broker closed).
    pub async fn read_more(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let room = self.buf.len() - self.end;
        if room < MIN_ROOM.max(self.need.saturating_sub(self.end - self.start)) {
            self.compact();
            if self.need > self.buf.len() {
                self.buf.resize(self.need, 0);
            }
        }
        let fd = self.stream.fd();
        let n = if self.lowat.mark > 1 {
            let fallback = self.lowat.fallback();
            let waited = tokio::select! {
                biased;
                r = self.stream.read(&mut self.buf[self.end..]) => Some(r?),
                _ = tokio::time::sleep(fallback) => None,
            };
            match waited {
                Some(n) => n,
                None => {
                    // The rate fell: take what is there, or (the mark now 1) wait for any byte.
                    let got = match recv_now(fd, &mut self.buf[self.end..]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(e),
                    };
                    let mark = self.lowat.timed_out(got, Instant::now());
                    if let Some(mark) = mark {
                        set_rcvlowat(fd, mark)?;
                    }
                    if got > 0 {
                        self.end += got;
                        self.ping_sent = None;
                        return Ok(got);
                    }
                    self.stream.read(&mut self.buf[self.end..]).await?
                }
            }
        } else {
            self.stream.read(&mut self.buf[self.end..]).await?
        };
        self.end += n;
        if n > 0 {
            self.ping_sent = None;
        }
        if let Some(mark) = self.lowat.read(n, Instant::now()) {
            set_rcvlowat(fd, mark)?;
        }
        Ok(n)
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }

    /// The next whole packet in the buffer, or `None` when more must be read.
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>, Malformed> {
        let unread = &self.buf[self.start..self.end];
        let Some((first, hlen, len)) = fixed_header(unread)? else {
            self.need = 0;
            return Ok(None);
        };
        let frame = hlen + len;
        if frame > self.max_packet {
            return Err(Malformed::TooLarge(frame, self.max_packet));
        }
        if unread.len() < frame {
            self.need = frame;
            return Ok(None);
        }
        self.need = 0;
        let at = self.start;
        self.start += frame;
        let p = packet(first, &mut self.buf[at + hlen..at + frame], self.v5)?;
        if let Packet::SubAck { pkid, .. } = &p {
            if self.awaiting_suback != Some(*pkid) {
                return Err(Malformed::Protocol(format!(
                    "a SUBACK for packet id {pkid}, which no SUBSCRIBE of this connection waits for"
                )));
            }
            self.awaiting_suback = None;
        }
        Ok(Some(p))
    }

    /// The packet begun in the read buffer and not whole yet, if any (after
    /// [`Session::next_packet`] said `None`).
    pub fn partial(&self) -> Option<Partial> {
        let unread = &self.buf[self.start..self.end];
        let first = *unread.first()?;
        let len = match fixed_header(unread) {
            Ok(Some((_, hlen, rest))) => Some(hlen + rest),
            _ => None,
        };
        Some(Partial {
            first,
            have: unread.len(),
            len,
        })
    }

    /// Says DISCONNECT and closes our side, within `timeout`.
    pub async fn disconnect(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, async {
            let _ = self.write(&DISCONNECT).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, qos: u8, pkid: u16, payload: &[u8], retain: bool) -> Vec<u8> {
        let q = if qos == 0 {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        };
        let mut p = rumqttc::Publish::new(topic, q, payload.to_vec());
        p.pkid = pkid;
        p.retain = retain;
        let mut b = BytesMut::new();
        p.write(&mut b).unwrap();
        b.to_vec()
    }

    #[test]
    fn publishes_of_every_length_class_frame_as_rumqttc_wrote_them() {
        for len in [0usize, 1, 100, 127, 128, 16_383, 16_384, 2_097_152] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for (qos, pkid) in [(0u8, 0u16), (1, 7), (1, 65_535)] {
                let mut frame = publish("device_data/x", qos, pkid, &payload, qos == 1);
                let (first, hlen, rest) = fixed_header(&frame).unwrap().unwrap();
                assert_eq!(hlen + rest, frame.len());
                // Every prefix is incomplete, never an error.
                for cut in [0, 1, hlen - 1] {
                    assert!(fixed_header(&frame[..cut]).unwrap().is_none() || cut >= hlen);
                }
                match packet(first, &mut frame[hlen..], false).unwrap() {
                    Packet::Publish {
                        qos: q,
                        retain,
                        pkid: id,
                        topic,
                        payload: p,
                    } => {
                        assert_eq!((q, id, retain), (qos, pkid, qos == 1));
                        assert_eq!(topic, b"device_data/x");
                        assert_eq!(&p[..], &payload[..]);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
    }

    /// A session over a local socket whose read buffer holds `bytes`, as if read.
    async fn session_holding(bytes: &[u8]) -> Session {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let mut buf = vec![0; 1024];
        buf[..bytes.len()].copy_from_slice(bytes);
        Session {
            stream: Stream::Plain(stream),
            buf,
            start: 0,
            end: bytes.len(),
            need: 0,
            max_packet: 1024,
            keep_alive: Duration::ZERO,
            v5: false,
            last_write: Instant::now(),
            ping_sent: None,
            lowat: Lowat::new(Duration::ZERO, Instant::now()),
            awaiting_suback: Some(1),
            session_present: false,
        }
    }

    #[tokio::test]
    async fn a_suback_no_subscribe_waits_for_is_a_protocol_error() {
        let suback = |id: u8| [0x90, 3, 0, id, 0];
        let mut s = session_holding(&[suback(7), suback(1), suback(1)].concat()).await;
        let e = s.next_packet().unwrap_err();
        assert!(matches!(e, Malformed::Protocol(_)), "{e}");
        assert!(e.to_string().contains("packet id 7"), "{e}");
        assert!(matches!(
            s.next_packet(),
            Ok(Some(Packet::SubAck { pkid: 1, .. }))
        ));
        // Its SUBSCRIBE was acknowledged already.
        assert!(matches!(s.next_packet(), Err(Malformed::Protocol(_))));
    }

    #[tokio::test]
    async fn a_packet_not_yet_whole_is_described_as_partial() {
        let publish = publish("device_data/x", 1, 9, b"{}", false);
        let mut s = session_holding(&publish[..6]).await;
        assert!(s.next_packet().unwrap().is_none());
        let p = s.partial().expect("a partial packet");
        assert_eq!(
            p,
            Partial {
                first: 0x32,
                have: 6,
                len: Some(publish.len())
            }
        );
        assert!(p.is_publish() && p.qos() == 1);
        assert_eq!(p.describe(), "a PUBLISH of 21 bytes, 6 of them received");
        let s = session_holding(&publish[..1]).await;
        assert_eq!(
            s.partial().map(|p| p.describe()),
            Some("a PUBLISH whose fixed header was cut off".to_string())
        );
        assert!(session_holding(&[]).await.partial().is_none());
    }

    #[test]
    fn broken_frames_are_malformed_not_panics() {
        assert!(fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
        for body in [&[][..], &[0u8][..], &[0, 5, b'a'][..]] {
            let mut b = body.to_vec();
            assert!(packet(0x30, &mut b, false).is_err(), "{body:?}");
        }
        let mut b = vec![0, 1, b'a'];
        assert!(
            packet(0x32, &mut b, false).is_err(),
            "QoS 1 without a packet id"
        );
        assert!(
            packet(0x36, &mut [0, 0][..].to_vec(), false).is_err(),
            "QoS 3"
        );
        // MQTT 5: properties after the packet id of a PUBLISH and of a SUBACK.
        let mut p5 = vec![0, 1, b't', 0, 9, 3, 0x23, 0, 1, b'{', b'}'];
        match packet(0x32, &mut p5, true).unwrap() {
            Packet::Publish {
                pkid,
                topic,
                payload,
                ..
            } => assert_eq!((pkid, topic, &payload[..]), (9, &b"t"[..], &b"{}"[..])),
            other => panic!("{other:?}"),
        }
        let mut s5 = vec![0, 1, 0, 0x87];
        match packet(0x90, &mut s5, true).unwrap() {
            Packet::SubAck { codes, .. } => assert_eq!(codes, &[0x87][..]),
            other => panic!("{other:?}"),
        }
        let mut suback = vec![0, 1, 0x00, 0x80];
        match packet(0x90, &mut suback, false).unwrap() {
            Packet::SubAck { pkid, codes } => assert_eq!((pkid, codes), (1, &[0x00, 0x80][..])),
            other => panic!("{other:?}"),
        }
    }
}
