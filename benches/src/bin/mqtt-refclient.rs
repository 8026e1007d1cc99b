//! The reference client of the throughput bench: the simplest fast thing against the same
//! broker. `pub` writes pre-encoded PUBLISH packets in large writes over a raw socket (at
//! QoS 1 with a 65,535-message window, reading PUBACKs on a second thread); `sub` counts
//! what a subscriber receives. Each prints one JSON line of figures on stdout.
//!
//! ```text
//! mqtt-refclient pub PORT TOPIC QOS BATCH MESSAGES
//! mqtt-refclient sub PORT FILTER        (prints "ready", counts until stdin closes)
//! ```

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use point_format::Encoder;
use publisher_core::source::PointSource;
use rumqttc::{Connect, Packet, Publish, QoS, Subscribe};

const CHUNK: usize = 1 << 20;
const WINDOW: u64 = 65_535;
const POOL: usize = 256;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("pub") if args.len() == 6 => publish(&args[1..]),
        Some("sub") if args.len() == 3 => subscribe(&args[1..]),
        _ => {
            Err("usage: mqtt-refclient pub PORT TOPIC QOS BATCH MESSAGES | sub PORT FILTER".into())
        }
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
    while !quit.load(Ordering::Relaxed) {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => rx.extend_from_slice(&chunk[..n]),
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
