//! What a broker sends that a real one would not: a packet cut off by the end of the
//! connection or by silence, a SUBACK for a packet id never used. A scripted server plays
//! the broker, since no real one does these on demand.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use test_support::fake::read_packet;
use test_support::payload;

use crate::common::{n, run_to_end, start, validate};

/// What a connection of the scripted broker does after CONNACK, once the SUBSCRIBE (with
/// its packet id) came.
type Script = fn(&mut TcpStream, [u8; 2]);

/// An MQTT 3.1.1 server on 127.0.0.1 that answers CONNECT, reads SUBSCRIBE and hands the
/// connection to the next script (the last one repeats); after a script the connection stays
/// open, PINGREQs answered, until the script closed it or the broker is dropped.
struct Scripted {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scripted {
    fn start(scripts: Vec<Script>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            let mut next = 0usize;
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let script = scripts[next.min(scripts.len() - 1)];
                        next += 1;
                        let s = s.clone();
                        conns.push(std::thread::spawn(move || serve(sock, script, &s)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Scripted {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut sock: TcpStream, script: Script, stop: &AtomicBool) {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut scripted = false;
    while let Some((first, body)) = read_packet(&mut sock, stop) {
        let reply: &[u8] = match first >> 4 {
            1 => &[0x20, 0x02, 0x00, 0x00], // CONNACK, accepted
            8 if !scripted && body.len() >= 2 => {
                scripted = true;
                script(&mut sock, [body[0], body[1]]);
                continue;
            }
            12 => &[0xd0, 0x00], // PINGRESP
            14 => return,
            _ => continue,
        };
        if sock.write_all(reply).is_err() {
            return;
        }
    }
}

/// A QoS 0 PUBLISH of `payload` on `topic`.
fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x30];
    let mut len = 2 + topic.len() + payload.len();
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        p.push(if len > 0 { b | 0x80 } else { b });
        if len == 0 {
            break;
        }
    }
    p.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    p.extend_from_slice(topic.as_bytes());
    p.extend_from_slice(payload);
    p
}

fn suback(sock: &mut TcpStream, id: [u8; 2]) {
    let _ = sock.write_all(&[0x90, 0x03, id[0], id[1], 0x00]);
}

/// SUBACK, ten points of dev_cut, then the first half of a PUBLISH of ten more.
fn ten_points_and_half_a_packet(sock: &mut TcpStream, id: [u8; 2]) {
    suback(sock, id);
    let whole = publish(
        "device_data/cut",
        &payload("dev_cut", &(0..10).collect::<Vec<_>>()),
    );
    let next = publish(
        "device_data/cut",
        &payload("dev_cut", &(10..20).collect::<Vec<_>>()),
    );
    let _ = sock.write_all(&whole);
    let _ = sock.write_all(&next[..next.len() / 2]);
    let _ = sock.flush();
}

/// A PUBLISH cut off by the end of the connection (the backend reconnects to a broker that
/// then sends nothing more) is counted and fails the verdict: its points are unknown, and
/// neither QoS 0 nor a clean session gets them sent again.
#[test]
fn a_packet_cut_off_by_the_end_of_the_connection_is_counted_and_fails_the_verdict() {
    let broker = Scripted::start(vec![
        |sock, id| {
            ten_points_and_half_a_packet(sock, id);
            std::thread::sleep(Duration::from_millis(100));
            let _ = sock.shutdown(std::net::Shutdown::Both);
        },
        suback,
    ]);
    let mut backend = start(&[
        "--broker",
        &broker.url(),
        "--idle-timeout",
        "1s",
        "--first-message-timeout",
        "1s",
        "--reconnect-backoff",
        "10ms..50ms",
    ]);
    assert!(backend.wait_for_line("subscribed again", Duration::from_secs(10)));
    let out = backend.wait();
    out.assert_code(5);
    let r = &out.report;
    validate(r);
    assert_eq!(n(r, "packets_truncated"), 1, "{r:#}");
    assert_eq!(n(out.device("dev_cut"), "unique"), 10);
    let verdict = r["reason"].as_str().unwrap();
    assert!(verdict.contains("cut off"), "{verdict}");
}

/// Half a PUBLISH and then silence until the idle stop: the same.
#[test]
fn half_a_packet_left_by_a_silent_broker_is_counted_and_fails_the_verdict() {
    let broker = Scripted::start(vec![ten_points_and_half_a_packet]);
    let backend = start(&["--broker", &broker.url(), "--idle-timeout", "1s"]);
    let out = backend.wait();
    out.assert_code(5);
    let r = &out.report;
    validate(r);
    assert_eq!(n(r, "packets_truncated"), 1, "{r:#}");
    let verdict = r["reason"].as_str().unwrap();
    assert!(verdict.contains("cut off"), "{verdict}");
}

/// A SUBACK for a packet id the backend never used, or a second one for its SUBSCRIBE, is a
/// protocol error that fails the run (exit 1) with a line that says so.
#[test]
fn a_suback_for_a_packet_id_never_used_fails_the_run() {
    let stray = Scripted::start(vec![|sock, id| {
        let other = u16::from_be_bytes(id).wrapping_add(6).to_be_bytes();
        suback(sock, other);
    }]);
    let repeated = Scripted::start(vec![|sock, id| {
        suback(sock, id);
        suback(sock, id);
    }]);
    for (broker, what) in [(&stray, "packet id 7"), (&repeated, "packet id 1")] {
        let (code, stdout, stderr) = run_to_end(&[
            "--broker",
            &broker.url(),
            "--first-message-timeout",
            "2s",
            "--reconnect",
            "false",
        ]);
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(
            stderr.contains("SUBACK") && stderr.contains(what),
            "{stderr}"
        );
    }
}
