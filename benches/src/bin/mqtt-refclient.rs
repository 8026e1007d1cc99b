//! The reference client of the throughput and receive benches: the simplest fast thing
//! against the same broker. `pub` writes pre-encoded PUBLISH packets in large writes over a
//! raw socket (at QoS 1 with a 65,535-message window, reading PUBACKs on a second thread);
//! `rawpub` publishes exactly N distinct points (seqs 0..N/D-1 of each of D devices) at QoS
//! 0, in our encoder's shape or the seed publisher's key order, each point pre-encoded as a
//! prefix and a suffix around its seq so that writing costs copies and a seq's digits;
//! `sub` counts the messages a subscriber receives; `recv` is the raw reference subscriber
//! of the receive bench (scenario D2): one blocking socket, reads of up to 1 MiB that wait
//! for 64 KiB (SO_RCVLOWAT), MQTT framing by hand, PUBACKs at QoS 1, and points counted as
//! the occurrences of `"seq":` in each payload, or with `verify` parsed (device id, seq,
//! timestamp and value of every point, by hand, for exactly the flat shapes `rawpub`
//! writes) and checked against each device's next seq. Each prints one JSON line of
//! figures on stdout.
//!
//! ```text
//! mqtt-refclient pub PORT TOPIC QOS BATCH MESSAGES
//! mqtt-refclient rawpub PORT TOPIC ours|seed BATCH POINTS DEVICES
//! mqtt-refclient sub PORT FILTER        (prints "ready", counts until stdin closes and
//!                                        then nothing more arrived for 1 s)
//! mqtt-refclient recv PORT FILTER QOS POINTS IDLE_S [verify]
//!                                       (prints "ready", counts until POINTS points arrived
//!                                        or none for IDLE_S seconds)
//! ```

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use point_format::Encoder;
use point_format::Sample;
use publisher_core::source::PointSource;
use rumqttc::{Connect, Packet, Publish, QoS, Subscribe};

#[path = "../../shapes.rs"]
mod shapes;

const CHUNK: usize = 1 << 20;
const WINDOW: u64 = 65_535;
const POOL: usize = 256;
/// `sub`, asked to stop: it stops once nothing arrived for this long...
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// ...or this long after it was asked, whichever comes first.
const DRAIN_MAX: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("pub") if args.len() == 6 => publish(&args[1..]),
        Some("sub") if args.len() == 3 => subscribe(&args[1..]),
        Some("recv") if args.len() == 6 || args.len() == 7 => receive(&args[1..]),
        Some("rawpub") if args.len() == 7 => raw_publish(&args[1..]),
        _ => Err("usage: mqtt-refclient pub PORT TOPIC QOS BATCH MESSAGES \
                  | rawpub PORT TOPIC ours|seed BATCH POINTS DEVICES | sub PORT FILTER \
                  | recv PORT FILTER QOS POINTS IDLE_S [verify]"
            .into()),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn arg<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad {what}: {s}"))
}

fn connect(port: u16, id: &str) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    let mut c = Connect::new(id);
    c.keep_alive = 0;
    c.write(&mut buf).map_err(|e| format!("{e:?}"))?;
    s.write_all(&buf).map_err(|e| e.to_string())?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).map_err(|e| e.to_string())?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(format!("connection refused: {ack:?}"));
    }
    Ok(s)
}

fn publish(a: &[String]) -> Result<(), String> {
    let port: u16 = arg(&a[0], "port")?;
    let topic = &a[1];
    let qos1 = arg::<u8>(&a[2], "qos")? == 1;
    let batch: usize = arg(&a[3], "batch")?;
    let messages: u64 = arg(&a[4], "messages")?;
    let mut stream = connect(port, &format!("refclient-pub-{}", std::process::id()))?;

    // Pre-encode a pool of distinct messages; the pkid is patched in per write at QoS 1.
    let enc = Encoder::new("frontend1_ultra_high_perf_device");
    let mut src = PointSource::new(1, true);
    let mut samples = Vec::new();
    let mut pool: Vec<(Vec<u8>, usize)> = Vec::new();
    for _ in 0..POOL.min(messages as usize).max(1) {
        src.fill(batch, 1_763_798_400_000_000, &mut samples);
        let mut payload = Vec::new();
        enc.write_message(&mut payload, &samples);
        let payload_len = payload.len();
        let mut p = Publish::new(
            topic.as_str(),
            if qos1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            payload,
        );
        p.pkid = if qos1 { 1 } else { 0 };
        let mut buf = BytesMut::new();
        p.write(&mut buf).map_err(|e| format!("{e:?}"))?;
        let pkid_at = buf.len() - payload_len - 2;
        pool.push((buf.to_vec(), pkid_at));
    }

    let acked = Arc::new(AtomicU64::new(0));
    let reader = if qos1 {
        let mut rd = stream.try_clone().map_err(|e| e.to_string())?;
        let acked = acked.clone();
        Some(std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            let mut pending = 0usize; // bytes of a PUBACK split across reads
            while acked.load(Ordering::Relaxed) < messages {
                let n = match rd.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                // PUBACKs are 4 bytes each; anything else would be a protocol surprise.
                let total = pending + n;
                acked.fetch_add((total / 4) as u64, Ordering::Relaxed);
                pending = total % 4;
            }
        }))
    } else {
        None
    };

    let mut out: Vec<u8> = Vec::with_capacity(CHUNK * 2);
    let (mut points, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    for i in 0..messages {
        let (pkt, pkid_at) = &pool[i as usize % pool.len()];
        if qos1 {
            while i >= acked.load(Ordering::Relaxed) + WINDOW {
                if !out.is_empty() {
                    stream.write_all(&out).map_err(|e| e.to_string())?;
                    out.clear();
                }
                std::thread::yield_now();
            }
        }
        if out.len() + pkt.len() > CHUNK && !out.is_empty() {
            stream.write_all(&out).map_err(|e| e.to_string())?;
            out.clear();
        }
        let at = out.len();
        out.extend_from_slice(pkt);
        if qos1 {
            let pkid = (i % WINDOW + 1) as u16;
            out[at + pkid_at..at + pkid_at + 2].copy_from_slice(&pkid.to_be_bytes());
        }
        points += batch as u64;
        bytes += pkt.len() as u64;
    }
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let mut end = Instant::now();
    if let Some(r) = reader {
        let _ = r.join();
        end = Instant::now();
    }
    let _ = stream.write_all(&[0xE0, 0x00]);
    let elapsed = (end - start).as_secs_f64();
    println!(
        "{{\"messages\":{messages},\"points\":{points},\"bytes\":{bytes},\"acked\":{},\"elapsed_s\":{elapsed}}}",
        acked.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Distinct point bodies a `rawpub` device cycles through (its seqs never repeat).
const BODIES: usize = 1000;

/// `rawpub`: exactly `points` points, spread over `devices` devices message by message
/// (message m is device m % D's), each device's seqs 0, 1, 2... in order, at QoS 0, as fast
/// as the socket takes them.
fn raw_publish(a: &[String]) -> Result<(), String> {
    let port: u16 = arg(&a[0], "port")?;
    let topic = a[1].as_bytes();
    let seed_shape = match a[2].as_str() {
        "ours" => false,
        "seed" => true,
        other => return Err(format!("bad shape: {other} (ours or seed)")),
    };
    let batch: u64 = arg(&a[3], "batch")?;
    let points: u64 = arg(&a[4], "points")?;
    let devices: u64 = arg(&a[5], "devices")?;
    if batch == 0 || devices == 0 || points % (batch * devices) != 0 {
        return Err("POINTS must be a multiple of BATCH x DEVICES, both above 0".into());
    }
    // Each device's point bodies, as (prefix, suffix) around the seq's digits.
    let mut bodies: Vec<Vec<(Vec<u8>, Vec<u8>)>> = Vec::new();
    for d in 0..devices {
        let id = format!("sensor-{d:05}");
        let parts = if seed_shape {
            let shape = shapes::Shape {
                device_id: Box::leak(id.into_boxed_str()),
                ..shapes::Shape::SEED
            };
            (0..BODIES as u64).map(|k| shape.parts(k)).collect()
        } else {
            let enc = Encoder::new(&id);
            let mut samples = Vec::new();
            PointSource::new(1 + d, true).fill(BODIES, 1_763_798_400_000_000, &mut samples);
            samples
                .iter()
                .map(|s| {
                    let mut p = Vec::new();
                    enc.write_point(&mut p, &Sample { seq: 0, ..*s });
                    let at = memchr::memmem::find(&p, b"\"seq\":0").expect("a seq") + 6;
                    (p[..at].to_vec(), p[at + 1..].to_vec())
                })
                .collect()
        };
        bodies.push(parts);
    }
    let (open, sep, close) = if seed_shape {
        shapes::Shape::SEED.batch_punctuation()
    } else {
        ("[", ",", "]")
    };
    let mut stream = connect(port, &format!("refclient-rawpub-{}", std::process::id()))?;
    let mut next = vec![0u64; devices as usize];
    let mut out: Vec<u8> = Vec::with_capacity(CHUNK * 2);
    let mut payload: Vec<u8> = Vec::with_capacity(1 << 20);
    let (mut messages, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    for m in 0..points / batch {
        let d = (m % devices) as usize;
        payload.clear();
        if batch > 1 {
            payload.extend_from_slice(open.as_bytes());
        }
        for k in 0..batch {
            let seq = next[d] + k;
            if k > 0 {
                payload.extend_from_slice(sep.as_bytes());
            }
            let (prefix, suffix) = &bodies[d][seq as usize % BODIES];
            payload.extend_from_slice(prefix);
            write_u64(&mut payload, seq);
            payload.extend_from_slice(suffix);
        }
        if batch > 1 {
            payload.extend_from_slice(close.as_bytes());
        }
        next[d] += batch;
        if out.len() + payload.len() + topic.len() + 7 > CHUNK && !out.is_empty() {
            stream.write_all(&out).map_err(|e| e.to_string())?;
            out.clear();
        }
        // PUBLISH, QoS 0: fixed header, remaining length, topic, payload.
        out.push(0x30);
        let mut remaining = 2 + topic.len() + payload.len();
        loop {
            let byte = (remaining & 0x7f) as u8;
            remaining >>= 7;
            out.push(if remaining > 0 { byte | 0x80 } else { byte });
            if remaining == 0 {
                break;
            }
        }
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic);
        out.extend_from_slice(&payload);
        messages += 1;
        bytes += payload.len() as u64;
    }
    stream.write_all(&out).map_err(|e| e.to_string())?;
    let elapsed = start.elapsed().as_secs_f64();
    let _ = stream.write_all(&[0xE0, 0x00]);
    // Let the broker read the DISCONNECT before the socket closes.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.read(&mut [0u8; 64]);
    println!(
        "{{\"messages\":{messages},\"points\":{points},\"bytes\":{bytes},\"elapsed_s\":{elapsed},\"point_rate\":{}}}",
        points as f64 / elapsed.max(1e-9)
    );
    Ok(())
}

/// Appends `n` in decimal.
fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn subscribe(a: &[String]) -> Result<(), String> {
    let port: u16 = arg(&a[0], "port")?;
    let mut stream = connect(port, &format!("refclient-sub-{}", std::process::id()))?;
    let mut buf = BytesMut::new();
    let mut s = Subscribe::new(a[1].as_str(), QoS::AtMostOnce);
    s.pkid = 1;
    s.write(&mut buf).map_err(|e| format!("{e:?}"))?;
    stream.write_all(&buf).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;

    let quit = Arc::new(AtomicBool::new(false));
    let q = quit.clone();
    std::thread::spawn(move || {
        for _ in std::io::stdin().lock().lines() {}
        q.store(true, Ordering::Relaxed);
    });
    let (mut messages, mut bytes) = (0u64, 0u64);
    let mut rx = BytesMut::with_capacity(4 << 20);
    let mut chunk = vec![0u8; 1 << 20];
    // Once asked to stop, what the broker still has for us is read until the socket stays
    // quiet (a backlog keeps it busy however long it takes to drain, within DRAIN_MAX).
    let mut last_data = Instant::now();
    let mut quit_at: Option<Instant> = None;
    loop {
        if quit.load(Ordering::Relaxed) {
            let at = *quit_at.get_or_insert_with(Instant::now);
            if last_data.elapsed() >= DRAIN_QUIET || at.elapsed() >= DRAIN_MAX {
                break;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                rx.extend_from_slice(&chunk[..n]);
                last_data = Instant::now();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.to_string()),
        }
        loop {
            match Packet::read(&mut rx, 256 << 20) {
                Ok(Packet::Publish(p)) => {
                    messages += 1;
                    bytes += p.payload.len() as u64;
                }
                Ok(Packet::SubAck(_)) => {
                    println!("ready");
                }
                Ok(_) => {}
                Err(_) => break, // needs more bytes
            }
        }
    }
    println!("{{\"messages\":{messages},\"bytes\":{bytes}}}");
    Ok(())
}

/// Bytes a `recv` read asks for at least.
const READ: usize = 1 << 20;
/// Bytes that must have arrived before a `recv` read returns (unless it times out).
const LOWAT: libc::c_int = 64 << 10;

/// `recv`: the raw reference subscriber. Counts the points of every PUBLISH as the
/// occurrences of `"seq":` in its payload (a batch is an array of point objects, a legacy
/// message one object, and each point has one `seq` key). The pattern cannot appear unescaped
/// inside a JSON string value, so it counts keys; only a key that itself ends in an escaped
/// quote followed by `seq` (`"x\"seq":`) would fool it, and no payload of ours has one.
fn receive(a: &[String]) -> Result<(), String> {
    let port: u16 = arg(&a[0], "port")?;
    let qos = match arg::<u8>(&a[2], "qos")? {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        q => return Err(format!("bad qos: {q} (0 or 1)")),
    };
    let want: u64 = arg(&a[3], "points")?;
    let idle = Duration::from_secs(arg(&a[4], "idle seconds")?);
    let mut verifier = match a.get(5).map(String::as_str) {
        None => None,
        Some("verify") => Some(Verifier::default()),
        Some(other) => return Err(format!("bad mode: {other} (verify or nothing)")),
    };
    let mut stream = connect(port, &format!("refclient-recv-{}", std::process::id()))?;
    let mut out = BytesMut::new();
    let mut s = Subscribe::new(a[1].as_str(), qos);
    s.pkid = 1;
    s.write(&mut out).map_err(|e| format!("{e:?}"))?;
    stream.write_all(&out).map_err(|e| e.to_string())?;
    // A read wakes once LOWAT bytes arrived, or after the timeout with what there is: small
    // messages then cost a wakeup per 64 KiB, not one each. Without it the S1 stream cost 3.5 s
    // of CPU per million points in wakeups, which on two cores the broker missed (90k points/s
    // instead of 127k). The timeout also paces the look at the idle deadline, and bounds how
    // late the last message's time can be (5 ms).
    set_rcvlowat(&stream, LOWAT)?;
    stream
        .set_read_timeout(Some(Duration::from_millis(5)))
        .map_err(|e| e.to_string())?;

    let seq = memchr::memmem::Finder::new(b"\"seq\":");
    let (mut messages, mut points, mut bytes) = (0u64, 0u64, 0u64);
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    let mut quiet_since = Instant::now();
    let mut acks: Vec<u8> = Vec::new();
    // buf[start..end] was read and not yet framed: at most the head of one packet after a
    // pass. It moves to the front only when fewer than READ bytes are free behind it.
    let mut buf = vec![0u8; 4 * READ];
    let (mut start, mut end) = (0usize, 0usize);
    while want == 0 || points < want {
        if buf.len() - end < READ {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
            if buf.len() - end < READ {
                buf.resize(end + READ, 0); // a packet larger than the buffer
            }
        }
        let n = match stream.read(&mut buf[end..]) {
            Ok(0) => break, // the broker closed the connection
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if quiet_since.elapsed() >= idle {
                    break;
                }
                continue;
            }
            // A read with a timeout is not restarted after SIGSTOP and SIGCONT (the bench
            // stops a subscriber to give it a backlog).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        };
        let now = Instant::now();
        end += n;
        let before = messages;
        while let Some((hdr, total)) = frame(&buf[start..end])? {
            let pkt = &buf[start..start + total];
            match pkt[0] >> 4 {
                3 => {
                    let body = &pkt[hdr..];
                    let qos = (pkt[0] >> 1) & 3;
                    let topic_len = body
                        .get(..2)
                        .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                        .ok_or("PUBLISH without a topic")?;
                    let topic_end = 2 + topic_len;
                    let payload_at = topic_end + if qos > 0 { 2 } else { 0 };
                    let payload = body
                        .get(payload_at..)
                        .ok_or("PUBLISH shorter than its topic")?;
                    if qos == 1 {
                        acks.extend_from_slice(&[0x40, 0x02, body[topic_end], body[topic_end + 1]]);
                    }
                    messages += 1;
                    bytes += payload.len() as u64;
                    points += match &mut verifier {
                        Some(v) => v.payload(payload),
                        None => seq.find_iter(payload).count() as u64,
                    };
                }
                9 => println!("ready"), // SUBACK
                _ => {}
            }
            start += total;
        }
        if messages > before {
            first.get_or_insert(now);
            last = Some(now);
            quiet_since = now;
        }
        if !acks.is_empty() {
            stream.write_all(&acks).map_err(|e| e.to_string())?;
            acks.clear();
        }
    }
    let _ = stream.write_all(&[0xE0, 0x00]);
    let elapsed = match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    let rate = if elapsed > 0.0 {
        points as f64 / elapsed
    } else {
        0.0
    };
    let verified = match &verifier {
        Some(v) => format!(
            ",\"verified\":{},\"errors\":{},\"devices\":{},\"checksum\":{}",
            v.errors == 0 && points == want,
            v.errors,
            v.devices.len(),
            v.checksum
        ),
        None => String::new(),
    };
    println!(
        "{{\"messages\":{messages},\"points\":{points},\"bytes\":{bytes},\"elapsed_s\":{elapsed},\"point_rate\":{rate},\"cpu_s\":{}{verified}}}",
        cpu_seconds()
    );
    Ok(())
}

/// `recv verify`: every point of the flat shapes `rawpub` writes (our encoder's and the
/// seed's key order, no whitespace, no escapes, `device_id` first) parsed by hand: its
/// device id, seq, timestamp and value; the seq checked against its device's next.
struct Verifier {
    /// Each device's id and next seq; the last one used is looked at first.
    devices: Vec<(Vec<u8>, u64)>,
    last: usize,
    /// Points whose seq was not their device's next, or that did not parse.
    errors: u64,
    /// The sum of the timestamps and values read, printed so that reading them is not
    /// optimized away.
    checksum: f64,
    id_key: memchr::memmem::Finder<'static>,
    seq_key: memchr::memmem::Finder<'static>,
    timestamp_key: memchr::memmem::Finder<'static>,
    value_key: memchr::memmem::Finder<'static>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            devices: Vec::new(),
            last: 0,
            errors: 0,
            checksum: 0.0,
            id_key: memchr::memmem::Finder::new(b"\"device_id\":\""),
            seq_key: memchr::memmem::Finder::new(b"\"seq\":"),
            timestamp_key: memchr::memmem::Finder::new(b"\"timestamp\":"),
            value_key: memchr::memmem::Finder::new(b"\"value\":"),
        }
    }
}

impl Verifier {
    /// Reads and checks the points of one payload; returns how many there were.
    fn payload(&mut self, p: &[u8]) -> u64 {
        let mut n = 0;
        let mut at = 0;
        while let Some(off) = self.id_key.find(&p[at..]) {
            let id_start = at + off + 13;
            let Some(id_len) = memchr::memchr(b'"', &p[id_start..]) else {
                self.errors += 1;
                break;
            };
            let rest = id_start + id_len;
            let Some(end) = memchr::memchr(b'}', &p[rest..]).map(|e| rest + e) else {
                self.errors += 1;
                break;
            };
            let body = &p[rest..end];
            let number = |finder: &memchr::memmem::Finder, len: usize| {
                finder.find(body).map(|k| decimal(&body[k + len..]))
            };
            match (
                number(&self.seq_key, 6),
                number(&self.timestamp_key, 12),
                number(&self.value_key, 8),
            ) {
                (Some((seq, 0)), Some((ts, ts_frac)), Some((v, v_frac))) => {
                    self.checksum += ts as f64 / POW10[ts_frac] + v as f64 / POW10[v_frac];
                    self.check(&p[id_start..rest], seq);
                }
                _ => self.errors += 1,
            }
            n += 1;
            at = end + 1;
        }
        n
    }

    fn check(&mut self, id: &[u8], seq: u64) {
        let i = match self.devices.get(self.last) {
            Some((d, _)) if d == id => self.last,
            _ => match self.devices.iter().position(|(d, _)| d == id) {
                Some(i) => i,
                None => {
                    self.devices.push((id.to_vec(), 0));
                    self.devices.len() - 1
                }
            },
        };
        self.last = i;
        let next = &mut self.devices[i].1;
        if seq != *next {
            self.errors += 1;
        }
        *next = seq + 1;
    }
}

const POW10: [f64; 20] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19,
];

/// The decimal at the head of `b` (`-?digits[.digits]`) as its digits and how many of them
/// follow the point (a minus sign is read and dropped: the checksum need not know).
fn decimal(b: &[u8]) -> (u64, usize) {
    let mut i = usize::from(b.first() == Some(&b'-'));
    let (mut n, mut frac, mut after_point) = (0u64, 0usize, false);
    while let Some(&c) = b.get(i) {
        match c {
            b'0'..=b'9' => {
                n = n.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
                frac += usize::from(after_point);
            }
            b'.' if !after_point => after_point = true,
            _ => break,
        }
        i += 1;
    }
    (n, frac.min(POW10.len() - 1))
}

/// The packet at the head of `b` as (fixed header length, packet length), or `None` while it
/// is incomplete.
fn frame(b: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let mut len = 0usize;
    for i in 1..5 {
        let Some(&byte) = b.get(i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            let total = i + 1 + len;
            return Ok((b.len() >= total).then_some((i + 1, total)));
        }
    }
    Err("malformed remaining length".into())
}

fn set_rcvlowat(stream: &TcpStream, bytes: libc::c_int) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads an int of ours for a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(format!("SO_RCVLOWAT: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: a zeroed rusage is valid, and getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}
