//! The reference's receiving and idle modes, for the subscriber-fleet benches (FS1-FS4): the
//! least a client of each kind cannot avoid, on the same single epoll thread as the publisher.
//!
//! - `--subscribe FILTER`: every connection subscribes (QoS of `--qos`) and verifies what it
//!   gets: MQTT framed by hand, PUBACK answered at QoS 1, and per subscriber a next-seq per
//!   device (a device's id and `"seq":` read from every point object of every payload: gaps
//!   count missing, a seq below the next counts duplicate). It prints `subscribed N` on
//!   stderr once every SUBACK is in (the bench starts its publisher then) and ends when every
//!   subscriber has `--expect-per-conn` points, after `--idle` seconds without a delivery, or
//!   after `--duration` seconds.
//! - `--hold`: the connections stay up for `--duration`, each sending PINGREQ every
//!   `--keep-alive` seconds, the fleet's pings spread evenly over the interval.
//! - `--churn R`: R connections a second (spread, round robin) send DISCONNECT, close and
//!   connect again; each reconnect is timed from socket() to CONNACK.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use memchr::memmem::Finder;
use rumqttc::{QoS, Subscribe};

use super::{close, os_error, per_second, percentile, recv, send, Conn, Fleet, Io, Opts, State};

/// How long the end of a churn run waits for the reconnects it started.
const CHURN_DRAIN: Duration = Duration::from_secs(5);
const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// A periodic timer on the fleet's epoll, with the token `super::TIMER`.
pub(super) fn timer(epfd: RawFd, every: Duration) -> Result<RawFd, String> {
    // SAFETY: plain syscalls; the itimerspec is a local.
    unsafe {
        let tfd = libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        );
        if tfd < 0 {
            return Err(os_error("timerfd_create"));
        }
        let ts = libc::timespec {
            tv_sec: every.as_secs() as libc::time_t,
            tv_nsec: every.subsec_nanos() as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: super::TIMER,
        };
        if libc::timerfd_settime(tfd, 0, &spec, std::ptr::null_mut()) != 0
            || libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, tfd, &mut ev) != 0
        {
            let e = os_error("timerfd");
            close(tfd);
            return Err(e);
        }
        Ok(tfd)
    }
}

/// One subscriber's receive state.
#[derive(Default)]
struct Rx {
    /// The start of a packet split across reads.
    partial: Vec<u8>,
    /// PUBACKs not yet written.
    out: Vec<u8>,
    suback: Option<bool>,
    deliveries: u64,
    points: u64,
    missing: u64,
    duplicate: u64,
    /// (device id, next expected seq), with the last hit tried first.
    devices: Vec<(Box<[u8]>, u64)>,
    last: usize,
}

impl Rx {
    fn see(&mut self, device: &[u8], seq: u64) {
        self.points += 1;
        let i = if self.devices.get(self.last).is_some_and(|d| &*d.0 == device) {
            self.last
        } else if let Some(i) = self.devices.iter().position(|d| &*d.0 == device) {
            i
        } else {
            self.devices.push((Box::from(device), 0));
            self.devices.len() - 1
        };
        self.last = i;
        let next = &mut self.devices[i].1;
        if seq >= *next {
            self.missing += seq - *next;
            *next = seq + 1;
        } else {
            self.duplicate += 1;
        }
    }
}

struct Scan {
    device: Finder<'static>,
    seq: Finder<'static>,
}

impl Scan {
    fn new() -> Scan {
        Scan {
            device: Finder::new(b"\"device_id\":\""),
            seq: Finder::new(b"\"seq\":"),
        }
    }

    /// Every point object of a payload: its device id, then its seq.
    fn points(&self, rx: &mut Rx, p: &[u8]) {
        let mut at = 0;
        while let Some(d) = self.device.find(&p[at..]) {
            let start = at + d + self.device.needle().len();
            let Some(len) = memchr::memchr(b'"', &p[start..]) else {
                return;
            };
            let end = start + len;
            let Some(s) = self.seq.find(&p[end..]) else {
                return;
            };
            let mut k = end + s + self.seq.needle().len();
            let mut seq = 0u64;
            while let Some(&b) = p.get(k).filter(|b| b.is_ascii_digit()) {
                seq = seq.wrapping_mul(10).wrapping_add(u64::from(b - b'0'));
                k += 1;
            }
            rx.see(&p[start..end], seq);
            at = k;
        }
    }

    /// Whole packets of `data`; returns how many bytes it used (the rest is a split packet),
    /// or None when a remaining length is malformed.
    fn packets(&self, rx: &mut Rx, data: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            let rest = &data[at..];
            if rest.len() < 2 {
                return Some(at);
            }
            let (mut len, mut i, mut shift) = (0usize, 1usize, 0u32);
            loop {
                let &b = rest.get(i)?;
                len |= usize::from(b & 0x7f) << shift;
                i += 1;
                if b & 0x80 == 0 {
                    break;
                }
                shift += 7;
                if shift > 21 {
                    return None;
                }
                if i >= rest.len() {
                    return Some(at);
                }
            }
            if rest.len() < i + len {
                return Some(at);
            }
            let body = &rest[i..i + len];
            match rest[0] >> 4 {
                3 if body.len() >= 2 => {
                    let qos = (rest[0] >> 1) & 3;
                    let tlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let mut p = 2 + tlen;
                    if qos > 0 && body.len() >= p + 2 {
                        rx.out.extend_from_slice(&[0x40, 2, body[p], body[p + 1]]);
                        p += 2;
                    }
                    rx.deliveries += 1;
                    self.points(rx, body.get(p..).unwrap_or_default());
                }
                9 if body.len() >= 3 => rx.suback = Some(body[2] < 0x80),
                _ => {}
            }
            at += i + len;
        }
    }

    fn feed(&self, rx: &mut Rx, data: &[u8]) -> bool {
        if rx.partial.is_empty() {
            let Some(used) = self.packets(rx, data) else {
                return false;
            };
            rx.partial.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut rx.partial);
            buf.extend_from_slice(data);
            let Some(used) = self.packets(rx, &buf) else {
                return false;
            };
            buf.drain(..used);
            rx.partial = buf;
        }
        true
    }
}

fn filter_for(template: &str, i: usize) -> String {
    template
        .replace("{i:05}", &format!("{i:05}"))
        .replace("{i}", &i.to_string())
}

pub(super) fn subscribe(fleet: &mut Fleet, o: &Opts, template: &str) -> Result<String, String> {
    let n = fleet.conns.len();
    let mut rxs: Vec<Rx> = (0..n).map(|_| Rx::default()).collect();
    let qos = if o.qos1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let mut buf = bytes::BytesMut::with_capacity(256);
    let mut waiting = 0usize;
    for (i, c) in fleet.conns.iter_mut().enumerate() {
        if c.state != State::Up {
            continue;
        }
        buf.clear();
        let mut s = Subscribe::new(filter_for(template, i), qos);
        s.pkid = 1;
        s.write(&mut buf).map_err(|e| format!("SUBSCRIBE: {e:?}"))?;
        match send(c.fd, &buf) {
            Io::Done(k) if k == buf.len() => waiting += 1,
            _ => fleet.io.lose(c),
        }
    }
    let scan = Scan::new();
    let bound = Duration::from_secs_f64(o.duration);
    let idle = Duration::from_secs_f64(o.idle);
    let mut subscribed_at = None;
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut refused = 0usize;
    let started = Instant::now();
    loop {
        let now = Instant::now();
        match subscribed_at {
            None if now - started > bound => break,
            Some(at) if now - at > bound => break,
            _ => {}
        }
        if let Some(l) = last {
            if now - l > idle {
                break;
            }
        }
        if let (Some(want), Some(_)) = (o.expect_per_conn, subscribed_at) {
            let all =
                fleet.conns.iter().zip(&rxs).all(|(c, r)| {
                    c.state != State::Up || r.suback != Some(true) || r.points >= want
                });
            if all {
                break;
            }
        }
        let ready = fleet.wait(100)?;
        for j in 0..ready {
            let ev = fleet.events[j];
            let i = ev.u64 as usize;
            let (c, rx) = (&mut fleet.conns[i], &mut rxs[i]);
            if c.state != State::Up {
                continue;
            }
            let had = (rx.deliveries, rx.suback);
            loop {
                match recv(c.fd, &mut fleet.io.rbuf) {
                    Io::Done(k) => {
                        if !scan.feed(rx, &fleet.io.rbuf[..k]) {
                            fleet.io.lose(c);
                            break;
                        }
                        if k < fleet.io.rbuf.len() {
                            break;
                        }
                    }
                    Io::Blocked => break,
                    Io::Closed => {
                        fleet.io.lose(c);
                        break;
                    }
                }
            }
            if c.state == State::Up && !rx.out.is_empty() {
                match send(c.fd, &rx.out) {
                    Io::Done(k) => {
                        rx.out.drain(..k);
                    }
                    Io::Blocked => {}
                    Io::Closed => fleet.io.lose(c),
                }
            }
            if had.1.is_none() && rx.suback.is_some() {
                waiting -= 1;
                if rx.suback == Some(false) {
                    refused += 1;
                }
            }
            if rx.deliveries > had.0 {
                let t = Instant::now();
                first.get_or_insert(t);
                last = Some(t);
            }
        }
        if subscribed_at.is_none() && waiting == 0 {
            subscribed_at = Some(Instant::now());
            eprintln!(
                "subscribed {}",
                fleet.conns.iter().filter(|c| c.state == State::Up).count()
            );
        }
    }
    let subs: Vec<&Rx> = rxs.iter().filter(|r| r.suback == Some(true)).collect();
    let sum = |f: fn(&Rx) -> u64| subs.iter().map(|r| f(r)).sum::<u64>();
    let points = sum(|r| r.points);
    let want = o.expect_per_conn.unwrap_or(0);
    let complete = subs
        .iter()
        .filter(|r| r.points >= want && r.missing == 0 && r.duplicate == 0)
        .count();
    let receive_s = match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(format!(
        "\"subscribed\":{},\"subscribe_refused\":{refused},\"deliveries\":{},\"points\":{points},\
         \"missing\":{},\"duplicate\":{},\"min_points\":{},\"max_points\":{},\
         \"subscribers_complete\":{complete},\"receive_s\":{receive_s:.6},\
         \"delivery_rate\":{:.1},\"lost\":{}",
        subs.len(),
        sum(|r| r.deliveries),
        sum(|r| r.missing),
        sum(|r| r.duplicate),
        subs.iter().map(|r| r.points).min().unwrap_or(0),
        subs.iter().map(|r| r.points).max().unwrap_or(0),
        per_second(sum(|r| r.deliveries), receive_s),
        fleet.io.lost,
    ))
}

/// Walks the connections round robin at `per_s` a second from `start`: the ones due now.
struct Cursor {
    start: Instant,
    per_s: f64,
    done: u64,
    pos: usize,
}

impl Cursor {
    fn due(&mut self, now: Instant, until: f64) -> u64 {
        let t = (now - self.start).as_secs_f64().min(until);
        let due = (t * self.per_s) as u64;
        due.saturating_sub(self.done)
    }

    fn next(&mut self, n: usize) -> usize {
        let i = self.pos;
        self.pos = (self.pos + 1) % n;
        self.done += 1;
        i
    }
}

pub(super) fn hold(fleet: &mut Fleet, o: &Opts) -> Result<String, String> {
    let n = fleet.conns.len();
    for c in &mut fleet.conns {
        c.rx.want = 13; // PINGRESP
    }
    let tfd = timer(fleet.epfd, Duration::from_millis(10))?;
    let mut cur = Cursor {
        start: Instant::now(),
        per_s: n as f64 / f64::from(o.keep_alive),
        done: 0,
        pos: 0,
    };
    let mut pings = 0u64;
    let result = loop {
        let ready = match fleet.wait(-1) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        let mut tick = false;
        for j in 0..ready {
            let ev = fleet.events[j];
            if ev.u64 == super::TIMER {
                let _ = recv(tfd, &mut [0u8; 8]);
                tick = true;
            } else {
                fleet
                    .io
                    .on_event(&mut fleet.conns[ev.u64 as usize], ev.events, false);
            }
        }
        if !tick {
            continue;
        }
        let now = Instant::now();
        for _ in 0..cur.due(now, o.duration) {
            let c = &mut fleet.conns[cur.next(n)];
            if c.state == State::Up {
                match send(c.fd, &PINGREQ) {
                    Io::Done(2) => pings += 1,
                    Io::Closed => fleet.io.lose(c),
                    _ => {}
                }
            }
        }
        if (now - cur.start).as_secs_f64() >= o.duration {
            break Ok(());
        }
    };
    close(tfd);
    result?;
    let up = fleet.conns.iter().filter(|c| c.state == State::Up).count();
    Ok(format!(
        "\"hold_s\":{:.3},\"pings\":{pings},\"pingresps\":{},\"up_at_end\":{up},\"lost\":{}",
        o.duration, fleet.io.acks, fleet.io.lost
    ))
}

pub(super) fn churn(
    fleet: &mut Fleet,
    o: &Opts,
    rate: f64,
    dest: &libc::sockaddr_in,
    sources: &[libc::sockaddr_in],
) -> Result<String, String> {
    let n = fleet.conns.len();
    let tfd = timer(fleet.epfd, Duration::from_millis(1))?;
    let mut cur = Cursor {
        start: Instant::now(),
        per_s: rate,
        done: 0,
        pos: 0,
    };
    let (mut started, mut done, mut failed, mut skipped) = (0u64, 0u64, 0u64, 0u64);
    let mut first_failure = None;
    let mut lat: Vec<u64> = Vec::new();
    let mut connecting = 0usize;
    let mut end_at = None::<Instant>;
    let result = loop {
        let ready = match fleet.wait(-1) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        let mut tick = false;
        for j in 0..ready {
            let ev = fleet.events[j];
            if ev.u64 == super::TIMER {
                let _ = recv(tfd, &mut [0u8; 8]);
                tick = true;
                continue;
            }
            let i = ev.u64 as usize;
            match fleet.conns[i].state {
                State::Connecting | State::AwaitConnack => {
                    if let Some(r) = fleet.on_connect_event(i, ev.events) {
                        connecting -= 1;
                        match r {
                            Ok(us) => {
                                done += 1;
                                lat.push(us);
                            }
                            Err(e) => {
                                failed += 1;
                                first_failure.get_or_insert(e);
                            }
                        }
                    }
                }
                State::Up => fleet.io.on_event(&mut fleet.conns[i], ev.events, false),
                State::Idle | State::Dead => {}
            }
        }
        if !tick {
            continue;
        }
        let now = Instant::now();
        if let Some(end) = end_at {
            if connecting == 0 || now > end {
                break Ok((now - cur.start).as_secs_f64());
            }
            continue;
        }
        for _ in 0..cur.due(now, o.duration) {
            let i = cur.next(n);
            let c: &mut Conn = &mut fleet.conns[i];
            match c.state {
                State::Up => {
                    let _ = send(c.fd, &super::DISCONNECT);
                    close(c.fd);
                    c.state = State::Dead;
                }
                State::Dead => {}
                _ => {
                    skipped += 1;
                    continue;
                }
            }
            started += 1;
            match fleet.open(i, dest, sources) {
                Ok(()) => connecting += 1,
                Err(e) => {
                    fleet.conns[i].state = State::Dead;
                    failed += 1;
                    first_failure.get_or_insert(e);
                }
            }
        }
        if (now - cur.start).as_secs_f64() >= o.duration {
            end_at = Some(now + CHURN_DRAIN);
        }
    };
    close(tfd);
    let churn_s = result?;
    lat.sort_unstable();
    let mut line = format!(
        "\"churn_rate\":{rate},\"churn_s\":{churn_s:.6},\"churn_started\":{started},\
         \"churn_done\":{done},\"churn_failed\":{failed},\"churn_skipped\":{skipped},\
         \"churn_achieved\":{:.1},\"churn_connect_p50_us\":{},\"churn_connect_p99_us\":{},\
         \"churn_connect_max_us\":{},\"lost\":{}",
        per_second(done, o.duration),
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
        fleet.io.lost,
    );
    if let Some(e) = first_failure {
        line.push_str(",\"churn_first_failure\":");
        line.push_str(&serde_json::to_string(&e).map_err(|e| e.to_string())?);
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(topic: &str, payload: &[u8], qos1: bool) -> Vec<u8> {
        let mut p = rumqttc::Publish::new(
            topic,
            if qos1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            payload.to_vec(),
        );
        p.pkid = u16::from(qos1) * 7;
        let mut b = bytes::BytesMut::new();
        p.write(&mut b).unwrap();
        b.to_vec()
    }

    #[test]
    fn points_are_verified_across_any_split() {
        let mut stream = vec![0x90, 3, 0, 1, 1];
        for seq in [0u64, 1, 2, 5, 6, 6] {
            let payload = format!(
                "[{{\"device_id\":\"sensor-00001\",\"timestamp\":1,\"seq\":{seq},\"value\":1.5}}]"
            );
            stream.extend(publish("device_data/x", payload.as_bytes(), true));
        }
        let scan = Scan::new();
        for cut in 0..=stream.len() {
            let mut rx = Rx::default();
            assert!(scan.feed(&mut rx, &stream[..cut]));
            assert!(scan.feed(&mut rx, &stream[cut..]));
            assert_eq!(rx.suback, Some(true), "cut {cut}");
            assert_eq!((rx.deliveries, rx.points), (6, 6), "cut {cut}");
            assert_eq!((rx.missing, rx.duplicate), (2, 1), "cut {cut}");
            assert_eq!(rx.out.len(), 6 * 4, "a PUBACK each, cut {cut}");
            assert!(rx.partial.is_empty());
        }
    }

    #[test]
    fn a_batch_counts_every_point_of_every_device() {
        let payload = b"[{\"device_id\":\"a\",\"seq\":0},{\"device_id\":\"b\",\"seq\":0},\
                        {\"device_id\":\"a\",\"seq\":1}]";
        let mut rx = Rx::default();
        assert!(Scan::new().feed(&mut rx, &publish("t", payload, false)));
        assert_eq!(
            (rx.points, rx.missing, rx.duplicate, rx.devices.len()),
            (3, 0, 0, 2)
        );
        assert!(rx.out.is_empty());
    }

    #[test]
    fn filters_take_the_subscriber_index() {
        assert_eq!(filter_for("d/sensor-{i:05}", 7), "d/sensor-00007");
        assert_eq!(filter_for("d/{i}/#", 12), "d/12/#");
    }
}
