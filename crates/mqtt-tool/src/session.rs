//! One MQTT (3.1.1 or 5) client session over tokio, for tools that receive at the broker's speed
//! (the backend): CONNECT and CONNACK, SUBSCRIBE, then packets read in large chunks and
//! handed out in place, payloads mutable so that a decoder can work in the read buffer
//! without a copy.
//!
//! rumqttc's event loop costs a `Publish` with an owned topic and payload per message and a
//! channel hop per event; at 1000-point batches a verifying backend then received 0.41x what
//! a raw subscriber did. Packets, and the framing of what arrives, are `mqtt-wire`'s: its
//! [`Framer`] is the read buffer (a fixed header and a remaining length, then the packet's
//! bytes where they lie), its decoder hands out topic and payload as slices of the frame.
//!
//! ```text
//! socket --read_more--> Framer --next_packet: frame, decode_mut--> Packet (in place)
//! ```

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use mqtt_wire::packets::SubOptions;
use mqtt_wire::{Framer, Qos};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::broker::BrokerTarget;
use crate::connect::ConnectPlan;
use crate::error::Error;
use crate::gather::Gather;
use crate::mqtt::{describe_failure, ConnackCode, ConnectFailure};

/// Bytes read in one go: a thousand 1000-point batches' worth of headers, or a few of them.
const READ_CHUNK: usize = 1 << 20;
/// Below this much free room at the end of the buffer, what is left is moved to the front.
const MIN_ROOM: usize = 64 << 10;

pub use mqtt_wire::packets::{DISCONNECT, PINGREQ};
pub use mqtt_wire::{Malformed, Partial};

/// A packet from the broker, borrowed from the read buffer (a PUBLISH's payload mutable,
/// for a decoder that works in place).
pub type Packet<'a> = mqtt_wire::Packet<'a, &'a mut [u8]>;

/// A packet cut off, in words for a verdict.
pub trait Describe {
    /// "a PUBLISH of 1,234 bytes, 617 of them received".
    fn describe(&self) -> String;
}

impl Describe for Partial {
    fn describe(&self) -> String {
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
    /// The read buffer: whole frames out, in place (`--max-packet-size` their limit).
    framer: Framer,
    keep_alive: Duration,
    /// MQTT 5: PUBLISH, SUBACK and CONNACK carry properties.
    v5: bool,
    last_write: Instant,
    /// When the PINGREQ with nothing read since went out.
    ping_sent: Option<Instant>,
    /// How long reads let bytes gather.
    gather: Gather,
    /// The next read waits until then (bytes gathering at a high rate).
    read_after: Option<Instant>,
    /// The packet id of the SUBSCRIBE not yet acknowledged: a SUBACK for any other is a
    /// protocol error.
    awaiting_suback: Option<u16>,
    /// The CONNACK said the broker kept this client's session.
    session_present: bool,
    /// How long this connection's connect took, phase by phase.
    phases: ConnectPhases,
    /// When the SUBSCRIBE awaiting its SUBACK went out, and how long the last SUBACK took.
    subscribed_at: Option<Instant>,
    suback_took: Option<Duration>,
    /// When the last read returned bytes: a SUBACK's arrival (not when it was parsed,
    /// after the PUBLISHes before it in the same read).
    read_at: Instant,
}

/// The phases of one connect: socket to TCP connected, TCP connected to TLS handshake done
/// (none without TLS), CONNECT on its way to CONNACK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectPhases {
    pub tcp: Duration,
    pub tls: Option<Duration>,
    pub connack: Duration,
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
            // The name looked up first: the TCP phase is the connect alone, as the engine
            // measures it (its fleets look their addresses up once, before the ramp).
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((target.host.as_str(), target.port))
                    .await
                    .map_err(|e| (io_failure(&e), Some(e)))?
                    .collect();
            let started = Instant::now();
            let stream = TcpStream::connect(&addrs[..])
                .await
                .map_err(|e| (io_failure(&e), Some(e)))?;
            let tcp_done = Instant::now();
            let mut phases = ConnectPhases {
                tcp: tcp_done - started,
                ..ConnectPhases::default()
            };
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
                    phases.tls = Some(tcp_done.elapsed());
                    Stream::Tls(Box::new(tls))
                }
            };
            let mut s = Session {
                stream,
                framer: Framer::new(READ_CHUNK, MIN_ROOM, cp.max_packet_size.max(64)),
                keep_alive: cp.keep_alive,
                v5: cp.mqtt5,
                last_write: Instant::now(),
                ping_sent: None,
                gather: Gather::new(Duration::ZERO, Instant::now()),
                read_after: None,
                awaiting_suback: None,
                session_present: false,
                phases,
                subscribed_at: None,
                suback_took: None,
                read_at: Instant::now(),
            };
            let credentials = cp
                .credentials
                .as_ref()
                .map(|(u, p)| (u.as_str(), p.as_ref().map_or("", |p| p.expose())));
            let keep_alive = cp.keep_alive.as_secs().min(u16::MAX as u64) as u16;
            let connect = if cp.mqtt5 {
                let v5 = mqtt_wire::packets::ConnectV5 {
                    session_expiry: if clean_session {
                        0
                    } else {
                        session_expiry.as_secs().min(u32::MAX as u64) as u32
                    },
                    user_properties: Vec::new(),
                };
                mqtt_wire::packets::connect_v5(
                    &cp.client_id,
                    keep_alive,
                    clean_session,
                    credentials,
                    &v5,
                )
            } else {
                mqtt_wire::packets::connect(&cp.client_id, keep_alive, clean_session, credentials)
            };
            let connect_sent = Instant::now();
            s.write(&connect)
                .await
                .map_err(|e| (io_failure(&e), Some(e)))?;
            let code = loop {
                match s.next_packet() {
                    Ok(Some(Packet::ConnAck {
                        code,
                        session_present,
                        ..
                    })) => {
                        s.session_present = session_present;
                        s.phases.connack = connect_sent.elapsed();
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
        s.framer.compact();
        Ok(s)
    }

    /// Whether the broker kept this client's session (and so what it queued for it while
    /// it was away): the CONNACK's Session Present flag.
    pub fn session_present(&self) -> bool {
        self.session_present
    }

    /// How long this connection's connect took, phase by phase.
    pub fn connect_phases(&self) -> ConnectPhases {
        self.phases
    }

    /// SUBSCRIBE -> SUBACK of a subscription acknowledged since the last call (none: no
    /// SUBACK came since).
    pub fn take_suback_took(&mut self) -> Option<Duration> {
        self.suback_took.take()
    }

    /// Whether the session speaks MQTT 5 (its acknowledgements may carry reason codes).
    pub fn v5(&self) -> bool {
        self.v5
    }

    /// Sends SUBSCRIBE (packet id 1) for `filters`, each at `qos`.
    pub async fn subscribe(&mut self, filters: &[String], qos: u8) -> io::Result<()> {
        let invalid =
            |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let qos = Qos::try_from(qos).map_err(|e| invalid(&e))?;
        let filters: Vec<(&str, SubOptions)> = filters
            .iter()
            .map(|f| (f.as_str(), SubOptions::at(qos)))
            .collect();
        let mut b = Vec::new();
        mqtt_wire::packets::subscribe(&mut b, 1, &filters, None, self.v5)
            .map_err(|e| invalid(&e))?;
        self.awaiting_suback = Some(1);
        self.subscribed_at = Some(Instant::now());
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
    /// at a steady rate (zero: every byte wakes the reader); see [`crate::gather`].
    pub fn set_read_hold(&mut self, hold: Duration) {
        // Through TLS the kernel's bytes are records for rustls: no reading around it.
        let hold = if matches!(self.stream, Stream::Tls(_)) {
            Duration::ZERO
        } else {
            hold
        };
        self.gather = Gather::new(hold, Instant::now());
        self.read_after = None;
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

    /// Reads what the socket has (at least one byte, or 0 when the broker closed), letting
    /// bytes gather first at a high rate ([`crate::gather`]); cancelled, it loses nothing.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        if let Some(at) = self.read_after {
            tokio::time::sleep_until(at).await;
            self.read_after = None;
        }
        let fd = self.stream.fd();
        let n = if self.gather.mark > 1 {
            let waited = tokio::select! {
                biased;
                r = self.stream.read(self.framer.room()) => Some(r?),
                _ = tokio::time::sleep(self.gather.fallback()) => None,
            };
            match waited {
                Some(n) => n,
                None => {
                    // The rate fell: take what is there, or (the mark now 1) wait for any byte.
                    let got = match recv_now(fd, self.framer.room()) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(e),
                    };
                    if let Some(mark) = self.gather.timed_out(got, Instant::now()) {
                        set_rcvlowat(fd, mark)?;
                    }
                    if got > 0 {
                        got
                    } else {
                        self.stream.read(self.framer.room()).await?
                    }
                }
            }
        } else {
            self.stream.read(self.framer.room()).await?
        };
        self.framer.filled(n);
        if n > 0 {
            self.ping_sent = None;
            self.read_at = Instant::now();
        }
        let next = self.gather.read(n, Instant::now());
        if let Some(mark) = next.mark {
            set_rcvlowat(fd, mark)?;
        }
        self.read_after = next.pause_until;
        Ok(n)
    }

    /// The next whole packet in the buffer, or `None` when more must be read.
    #[inline]
    pub fn next_packet(&mut self) -> Result<Option<Packet<'_>>, Malformed> {
        let Some((h, body)) = self.framer.next_frame()? else {
            return Ok(None);
        };
        let p = mqtt_wire::packets::decode_mut(h.first, body, self.v5)?;
        if let Packet::SubAck { pkid, .. } = &p {
            if self.awaiting_suback != Some(*pkid) {
                return Err(Malformed::Protocol(format!(
                    "a SUBACK for packet id {pkid}, which no SUBSCRIBE of this connection waits for"
                )));
            }
            self.awaiting_suback = None;
            self.suback_took = self
                .subscribed_at
                .take()
                .map(|t| self.read_at.saturating_duration_since(t));
        }
        Ok(Some(p))
    }

    /// The packet begun in the read buffer and not whole yet, if any (after
    /// [`Session::next_packet`] said `None`).
    pub fn partial(&self) -> Option<Partial> {
        self.framer.partial()
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
        let mut b = bytes::BytesMut::new();
        p.write(&mut b).unwrap();
        b.to_vec()
    }

    /// A session over a local socket whose read buffer holds `bytes`, as if read.
    async fn session_holding(bytes: &[u8]) -> Session {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let mut framer = Framer::new(1024, 64, 1024);
        framer.push(bytes);
        Session {
            stream: Stream::Plain(stream),
            framer,
            keep_alive: Duration::ZERO,
            v5: false,
            last_write: Instant::now(),
            ping_sent: None,
            gather: Gather::new(Duration::ZERO, Instant::now()),
            read_after: None,
            phases: ConnectPhases::default(),
            subscribed_at: None,
            suback_took: None,
            read_at: Instant::now(),
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
}
