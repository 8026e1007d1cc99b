//! The raw fleet reference client: the physical limit that the fleet publisher is compared
//! against in the same bench run. Every connection is one simulated device with its own
//! client id (`{client-prefix}{c:05}`) and topic (`{topic-prefix}{c:05}`); the client does
//! little more than a fleet cannot avoid, a write on a device's socket whenever that device
//! has messages due, from ONE thread over non-blocking sockets and epoll, with every packet
//! encoded before the first connection is opened.
//!
//! ```text
//! fleet-refclient --port P [--host 127.0.0.1] --connections N [--rate-per-conn R=1]
//!                 [--duration SECS=10] [--qos 0|1] [--client-prefix ref-]
//!                 [--topic-prefix device_data/ref-] [--connect-only]
//!                 [--max-connecting K=1000] [--source-ip A.B.C.D]...
//! ```
//!
//! Phase 1 opens the N connections (IPv4) as fast as the broker takes them, at most K
//! awaiting CONNACK at once, and times each from socket() to CONNACK. Failures are counted,
//! not retried. A K beyond the broker's listen backlog (Mosquitto's is 100) overflows its
//! accept queue: the kernel drops SYNs, retried after 1 s and 3 s, which the latency
//! percentiles show. `--source-ip` spreads connections over local addresses, round robin,
//! so that a fleet larger than one address's ephemeral ports can reach one broker port.
//!
//! Phase 2 (skipped with `--connect-only`) publishes for SECS from the end of phase 1, over
//! the n connections that connected: message k of connection c is due at
//! (k + (c+1)/n) / R seconds, so the fleet's sends are spread evenly over time instead of
//! bursting at the top of every period. A 1 ms timerfd sends what is due. A socket that would
//! block keeps its unsent bytes and its messages stay owed, sent as soon as it drains; what is
//! still owed at the end is `messages_owed_at_end`, and `write_blocked` counts the writes that
//! fell short. At QoS 1 a connection keeps at most 65,535 messages unacknowledged (one per
//! packet id; beyond that they wait, owed), and the end waits up to 5 s for the PUBACKs of
//! what was sent.
//!
//! Prints one JSON line of figures on stdout (`lost` counts connections the broker closed
//! during phase 2; `first_failure` says why the first failed connection failed); a fatal
//! error is one line on stderr, exit 1. Exit 2 when N connections would not fit the
//! open-file limit.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

#[path = "fleet-refclient/modes.rs"]
mod modes;

use bytes::BytesMut;
use point_format::{Encoder, Sample};
use rumqttc::{Connect, Publish, QoS};

const USAGE: &str = "usage: fleet-refclient --port P [--host 127.0.0.1] --connections N \
    [--rate-per-conn R=1] [--duration SECS=10] [--qos 0|1] [--client-prefix ref-] \
    [--topic-prefix device_data/ref-] [--connect-only] [--max-connecting K=1000] \
    [--connect-rate R] [--source-ip A.B.C.D]... [--keep-alive SECS=0] \
    [--subscribe FILTER [--expect-per-conn N] [--idle SECS=2]] [--hold] [--churn R]";

/// The epoll token of the timer; connections use their index.
const TIMER: u64 = u64::MAX;
/// A connection still without CONNACK after this long counts as failed, so that a broker
/// that stops answering cannot hang phase 1.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the end of a QoS 1 run waits for PUBACKs of messages already sent.
const ACK_DRAIN: Duration = Duration::from_secs(5);
/// Packet ids are 1..=65535: more in flight on one connection would reuse an id still unacked.
const MAX_INFLIGHT: u64 = 65_535;
/// File descriptors besides the connections: stdio, epoll, timerfd and what the runtime holds.
const FD_SLACK: libc::rlim_t = 16;
const READ_BUF: usize = 64 << 10;
/// Messages owed by one connection are written in one syscall of up to this many bytes.
const WRITE_BUF: usize = 64 << 10;
const EVENTS: usize = 4096;
const DISCONNECT: [u8; 2] = [0xE0, 0x00];

struct Opts {
    host: String,
    port: u16,
    connections: usize,
    rate: f64,
    duration: f64,
    qos1: bool,
    client_prefix: String,
    topic_prefix: String,
    connect_only: bool,
    max_connecting: usize,
    /// Connects a second, started on a 10 ms tick (None: as fast as the window allows).
    connect_rate: Option<f64>,
    source_ips: Vec<Ipv4Addr>,
    keep_alive: u16,
    /// Subscriber mode: every connection subscribes to this filter (`{i}`, `{i:05}`: its index).
    subscribe: Option<String>,
    expect_per_conn: Option<u64>,
    idle: f64,
    /// Idle mode: hold the connections for the duration, PINGREQ as the keep-alive asks.
    hold: bool,
    /// Churn mode: R reconnects a second, spread, round robin over the connections.
    churn: Option<f64>,
}

fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => fail(&e),
    };
    let limit = raise_nofile_limit();
    if opts.connections as libc::rlim_t + FD_SLACK > limit {
        eprintln!(
            "error: {} connections need {} open files, the limit is {limit}",
            opts.connections,
            opts.connections as libc::rlim_t + FD_SLACK
        );
        std::process::exit(2);
    }
    match run(&opts) {
        Ok(line) => println!("{line}"),
        Err(e) => fail(&e),
    }
}

fn fail(e: &str) -> ! {
    eprintln!("error: {e}");
    std::process::exit(1);
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Opts, String> {
    fn value(it: &mut impl Iterator<Item = String>, flag: &str) -> Result<String, String> {
        it.next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))
    }
    fn num<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
        s.parse().map_err(|_| format!("bad {flag}: {s}"))
    }
    let mut port = None;
    let mut connections = None;
    let mut o = Opts {
        host: "127.0.0.1".into(),
        port: 0,
        connections: 0,
        rate: 1.0,
        duration: 10.0,
        qos1: false,
        client_prefix: "ref-".into(),
        topic_prefix: "device_data/ref-".into(),
        connect_only: false,
        max_connecting: 1000,
        connect_rate: None,
        source_ips: Vec::new(),
        keep_alive: 0,
        subscribe: None,
        expect_per_conn: None,
        idle: 2.0,
        hold: false,
        churn: None,
    };
    let mut it = args;
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--port" => port = Some(num::<u16>(&value(&mut it, &flag)?, &flag)?),
            "--host" => o.host = value(&mut it, &flag)?,
            "--connections" => connections = Some(num::<usize>(&value(&mut it, &flag)?, &flag)?),
            "--rate-per-conn" => o.rate = num(&value(&mut it, &flag)?, &flag)?,
            "--duration" => o.duration = num(&value(&mut it, &flag)?, &flag)?,
            "--qos" => {
                o.qos1 = match value(&mut it, &flag)?.as_str() {
                    "0" => false,
                    "1" => true,
                    q => return Err(format!("bad --qos: {q} (0 or 1)")),
                }
            }
            "--client-prefix" => o.client_prefix = value(&mut it, &flag)?,
            "--topic-prefix" => o.topic_prefix = value(&mut it, &flag)?,
            "--connect-only" => o.connect_only = true,
            "--max-connecting" => o.max_connecting = num(&value(&mut it, &flag)?, &flag)?,
            "--connect-rate" => o.connect_rate = Some(num(&value(&mut it, &flag)?, &flag)?),
            "--source-ip" => o.source_ips.push(num(&value(&mut it, &flag)?, &flag)?),
            "--keep-alive" => o.keep_alive = num(&value(&mut it, &flag)?, &flag)?,
            "--subscribe" => o.subscribe = Some(value(&mut it, &flag)?),
            "--expect-per-conn" => o.expect_per_conn = Some(num(&value(&mut it, &flag)?, &flag)?),
            "--idle" => o.idle = num(&value(&mut it, &flag)?, &flag)?,
            "--hold" => o.hold = true,
            "--churn" => o.churn = Some(num(&value(&mut it, &flag)?, &flag)?),
            _ => return Err(format!("unknown argument: {flag}; {USAGE}")),
        }
    }
    o.port = port.ok_or_else(|| format!("--port is required; {USAGE}"))?;
    o.connections = connections.ok_or_else(|| format!("--connections is required; {USAGE}"))?;
    if o.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if !(o.rate.is_finite() && o.rate > 0.0) {
        return Err(format!(
            "bad --rate-per-conn: {} (a positive number)",
            o.rate
        ));
    }
    if !(o.duration.is_finite() && o.duration >= 0.0) {
        return Err(format!("bad --duration: {}", o.duration));
    }
    if o.max_connecting == 0 {
        return Err("--max-connecting must be at least 1".into());
    }
    if o.connect_rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return Err("bad --connect-rate (a positive number)".into());
    }
    let modes = usize::from(o.subscribe.is_some())
        + usize::from(o.hold)
        + usize::from(o.churn.is_some())
        + usize::from(o.connect_only);
    if modes > 1 {
        return Err("--subscribe, --hold, --churn and --connect-only exclude each other".into());
    }
    if let Some(r) = o.churn {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!("bad --churn: {r} (reconnects a second, positive)"));
        }
    }
    if o.hold && o.keep_alive == 0 {
        return Err("--hold needs --keep-alive SECS (how often each connection pings)".into());
    }
    if !(o.idle.is_finite() && o.idle > 0.0) {
        return Err(format!("bad --idle: {}", o.idle));
    }
    Ok(o)
}

/// Raises the soft open-file limit to the hard one and returns the limit in force.
fn raise_nofile_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // An infinite hard limit can be refused (above fs.nr_open): keep the soft one then.
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    lim.rlim_cur
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn close(fd: RawFd) {
    // SAFETY: fd is a descriptor this process opened and closes once.
    unsafe { libc::close(fd) };
}

enum Io {
    Done(usize),
    Blocked,
    Closed,
}

fn send(fd: RawFd, buf: &[u8]) -> Io {
    loop {
        // MSG_NOSIGNAL: a broker that closed the connection must be a counted loss, not SIGPIPE.
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Io::Done(n as usize);
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Io::Blocked,
            _ => return Io::Closed,
        }
    }
}

fn recv(fd: RawFd, buf: &mut [u8]) -> Io {
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 {
            return Io::Done(n as usize);
        }
        if n == 0 {
            return Io::Closed;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return Io::Blocked,
            _ => return Io::Closed,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    /// connect() in progress: CONNECT goes out when the socket turns writable.
    Connecting,
    AwaitConnack,
    Up,
    Dead,
}

/// Skips MQTT packets as they arrive, split anywhere across reads, counting PUBACKs (or the
/// packet type `want`, PINGRESP in the idle modes). Only those are expected, but the broker
/// may send anything (a PINGRESP) without breaking the count.
#[derive(Default)]
struct Frames {
    /// The packet type counted, 0 meaning PUBACK (4).
    want: u8,
    kind: u8,
    /// 0: next byte is a packet type, 1: in the remaining length, 2: in the body.
    stage: u8,
    shift: u8,
    left: u32,
}

impl Frames {
    /// The PUBACKs completed in `data`, or None on a malformed remaining length.
    fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        let mut acks = 0;
        while let Some((&b, rest)) = data.split_first() {
            match self.stage {
                0 => {
                    // The common case, a whole PUBACK: no need to go byte by byte.
                    if self.want == 0 && b == 0x40 && rest.len() >= 3 && rest[0] == 2 {
                        acks += 1;
                        data = &rest[3..];
                        continue;
                    }
                    self.kind = b;
                    self.stage = 1;
                    self.shift = 0;
                    self.left = 0;
                    data = rest;
                }
                1 => {
                    if self.shift > 21 {
                        return None;
                    }
                    self.left |= u32::from(b & 0x7f) << self.shift;
                    self.shift += 7;
                    data = rest;
                    if b & 0x80 == 0 {
                        if self.left == 0 {
                            acks += self.done();
                        } else {
                            self.stage = 2;
                        }
                    }
                }
                _ => {
                    let n = (self.left as usize).min(data.len());
                    data = &data[n..];
                    self.left -= n as u32;
                    if self.left == 0 {
                        acks += self.done();
                    }
                }
            }
        }
        Some(acks)
    }

    fn done(&mut self) -> u64 {
        self.stage = 0;
        let want = if self.want == 0 { 4 } else { self.want };
        u64::from(self.kind >> 4 == want)
    }
}

struct Conn {
    fd: RawFd,
    state: State,
    /// When socket() was called: connect latency runs from here to CONNACK.
    t0: Instant,
    connect: Box<[u8]>,
    connack: [u8; 4],
    got: usize,
    /// The PUBLISH packet, repeated for every message; at QoS 1 its pkid is patched per copy.
    publish: Box<[u8]>,
    pkid_at: usize,
    next_pkid: u16,
    /// Bytes of messages already taken off `owed` that the socket did not accept yet.
    pending: Vec<u8>,
    pending_at: usize,
    /// A write fell short: wait for EPOLLOUT before writing again.
    blocked: bool,
    /// Queued for a flush in this tick.
    dirty: bool,
    /// Due messages not yet taken into a write.
    owed: u64,
    /// Messages taken into a write (fully sent or in `pending`).
    taken: u64,
    written_bytes: u64,
    acks: u64,
    rx: Frames,
}

impl Conn {
    fn sent(&self) -> u64 {
        self.written_bytes / self.publish.len() as u64
    }
}

struct Counters {
    qos1: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    acks: u64,
    write_blocked: u64,
    lost: u64,
}

impl Counters {
    fn lose(&mut self, c: &mut Conn) {
        close(c.fd);
        c.state = State::Dead;
        self.lost += 1;
    }

    /// Writes what the connection owes: first the rest of a short write, so the stream stays
    /// whole packets in order, then its owed messages, many per syscall when several are due.
    fn flush(&mut self, c: &mut Conn) {
        if c.state != State::Up || c.blocked {
            return;
        }
        if c.pending_at < c.pending.len() {
            match send(c.fd, &c.pending[c.pending_at..]) {
                Io::Done(n) => {
                    c.written_bytes += n as u64;
                    c.pending_at += n;
                    if c.pending_at < c.pending.len() {
                        c.blocked = true;
                        self.write_blocked += 1;
                        return;
                    }
                    c.pending.clear();
                    c.pending_at = 0;
                }
                Io::Blocked => {
                    c.blocked = true;
                    self.write_blocked += 1;
                    return;
                }
                Io::Closed => return self.lose(c),
            }
        }
        let len = c.publish.len();
        let per_write = (WRITE_BUF / len).max(1) as u64;
        while c.owed > 0 {
            let mut k = c.owed.min(per_write);
            if self.qos1 {
                k = k.min(MAX_INFLIGHT.saturating_sub(c.taken.saturating_sub(c.acks)));
                if k == 0 {
                    return; // the window is full: the next PUBACK resumes this connection
                }
            }
            let first_pkid = c.next_pkid;
            self.wbuf.clear();
            for _ in 0..k {
                let at = self.wbuf.len();
                self.wbuf.extend_from_slice(&c.publish);
                if self.qos1 {
                    let p = at + c.pkid_at;
                    self.wbuf[p..p + 2].copy_from_slice(&c.next_pkid.to_be_bytes());
                    c.next_pkid = if c.next_pkid == u16::MAX {
                        1
                    } else {
                        c.next_pkid + 1
                    };
                }
            }
            match send(c.fd, &self.wbuf) {
                Io::Done(n) => {
                    c.owed -= k;
                    c.taken += k;
                    c.written_bytes += n as u64;
                    if n < self.wbuf.len() {
                        c.pending.extend_from_slice(&self.wbuf[n..]);
                        c.blocked = true;
                        self.write_blocked += 1;
                        return;
                    }
                }
                Io::Blocked => {
                    // Nothing went out: these messages stay owed, with their packet ids.
                    c.next_pkid = first_pkid;
                    c.blocked = true;
                    self.write_blocked += 1;
                    return;
                }
                Io::Closed => return self.lose(c),
            }
        }
    }

    /// Handles a phase 2 event. `writing` is off while the end of the run only collects acks.
    fn on_event(&mut self, c: &mut Conn, bits: u32, writing: bool) {
        if c.state != State::Up {
            return;
        }
        let mut acked = false;
        if bits & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP | libc::EPOLLRDHUP) as u32 != 0 {
            loop {
                match recv(c.fd, &mut self.rbuf) {
                    Io::Done(n) => {
                        match c.rx.feed(&self.rbuf[..n]) {
                            Some(a) => {
                                c.acks += a;
                                self.acks += a;
                                acked |= a > 0;
                            }
                            None => return self.lose(c),
                        }
                        // Edge triggered, and a short read drained the socket: more data
                        // raises a new edge, so a read that would only say EAGAIN is saved.
                        if n < self.rbuf.len() {
                            break;
                        }
                    }
                    Io::Blocked => break,
                    Io::Closed => return self.lose(c),
                }
            }
        }
        if !writing {
            return;
        }
        if bits & libc::EPOLLOUT as u32 != 0 && c.blocked {
            c.blocked = false;
            self.flush(c);
        } else if acked && c.owed > 0 {
            self.flush(c);
        }
    }
}

struct ConnectFigures {
    connected: usize,
    failed: usize,
    seconds: f64,
    latencies_us: Vec<u64>,
    first_failure: Option<String>,
}

struct Fleet {
    epfd: RawFd,
    conns: Vec<Conn>,
    io: Counters,
    events: Vec<libc::epoll_event>,
}

impl Fleet {
    fn wait(&mut self, timeout_ms: i32) -> Result<usize, String> {
        loop {
            // SAFETY: events is valid for its length.
            let n = unsafe {
                libc::epoll_wait(
                    self.epfd,
                    self.events.as_mut_ptr(),
                    self.events.len() as i32,
                    timeout_ms,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            if errno() != libc::EINTR {
                return Err(os_error("epoll_wait"));
            }
        }
    }

    /// Opens connection i's socket and starts its connect().
    fn open(
        &mut self,
        i: usize,
        dest: &libc::sockaddr_in,
        sources: &[libc::sockaddr_in],
    ) -> Result<(), String> {
        let c = &mut self.conns[i];
        c.t0 = Instant::now();
        c.got = 0;
        // SAFETY: plain syscalls on a descriptor we own; pointers are to locals of the right size.
        unsafe {
            let fd = libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            );
            if fd < 0 {
                return Err(os_error("socket"));
            }
            let one: libc::c_int = 1;
            let one_ptr = (&one as *const libc::c_int).cast();
            let int_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            let addr_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let r = libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, one_ptr, int_len);
            if r != 0 {
                let e = os_error("TCP_NODELAY");
                close(fd);
                return Err(e);
            }
            if !sources.is_empty() {
                // Without it bind() reserves a port per address for the socket's whole life,
                // and a port can then serve one connection only instead of one per
                // destination.
                let r = libc::setsockopt(
                    fd,
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    one_ptr,
                    int_len,
                );
                let src = &sources[i % sources.len()];
                if r != 0 || libc::bind(fd, (src as *const libc::sockaddr_in).cast(), addr_len) != 0
                {
                    let e = os_error("bind");
                    close(fd);
                    return Err(e);
                }
            }
            let r = libc::connect(fd, (dest as *const libc::sockaddr_in).cast(), addr_len);
            if r != 0 && errno() != libc::EINPROGRESS {
                let e = os_error("connect");
                close(fd);
                return Err(e);
            }
            // Edge triggered: one epoll_ctl per connection for its whole life, and
            // writability is reported only after a write fell short, not after every ACK.
            let mut ev = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: i as u64,
            };
            if libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) != 0 {
                let e = os_error("epoll_ctl");
                close(fd);
                return Err(e);
            }
            c.fd = fd;
        }
        c.state = State::Connecting;
        Ok(())
    }

    /// Advances connection i's handshake. Some(Ok(latency)) once connected, Some(Err) on
    /// failure (the socket is closed), None while waiting.
    fn on_connect_event(&mut self, i: usize, bits: u32) -> Option<Result<u64, String>> {
        let c = &mut self.conns[i];
        let hangup = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
        let error = match c.state {
            State::Connecting if bits & (libc::EPOLLOUT as u32 | hangup) != 0 => {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: err and len are locals of the sizes getsockopt is told.
                let r = unsafe {
                    libc::getsockopt(
                        c.fd,
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        (&mut err as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                if r != 0 {
                    os_error("getsockopt")
                } else if err != 0 {
                    format!("connect: {}", std::io::Error::from_raw_os_error(err))
                } else {
                    // A fresh socket takes a CONNECT of a few dozen bytes whole, or not at all.
                    match send(c.fd, &c.connect) {
                        Io::Done(n) if n == c.connect.len() => {
                            // Kept: churn sends it again on every reconnect.
                            c.state = State::AwaitConnack;
                            return None;
                        }
                        _ => os_error("writing CONNECT"),
                    }
                }
            }
            State::AwaitConnack
                if bits & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 | hangup != 0 =>
            {
                // Read no further than the CONNACK: nothing else is sent before we publish.
                loop {
                    match recv(c.fd, &mut c.connack[c.got..]) {
                        Io::Done(n) => {
                            c.got += n;
                            if c.got == 4 {
                                break;
                            }
                        }
                        Io::Blocked => return None,
                        Io::Closed => break,
                    }
                }
                let a = c.connack;
                if c.got < 4 {
                    "closed before CONNACK".to_string()
                } else if a[0] == 0x20 && a[1] == 2 && a[3] == 0 {
                    c.state = State::Up;
                    return Some(Ok(c.t0.elapsed().as_micros() as u64));
                } else {
                    format!("CONNACK {a:02x?}")
                }
            }
            _ => return None,
        };
        Some(self.handshake_failed(i, error))
    }

    fn handshake_failed(&mut self, i: usize, e: String) -> Result<u64, String> {
        let c = &mut self.conns[i];
        close(c.fd);
        c.state = State::Dead;
        Err(e)
    }

    /// Phase 1: every connection, at most `window` awaiting CONNACK at once, and with a
    /// `rate`, the connects due by then started every 10 ms.
    fn connect_all(
        &mut self,
        window: usize,
        rate: Option<f64>,
        dest: &libc::sockaddr_in,
        sources: &[libc::sockaddr_in],
    ) -> Result<ConnectFigures, String> {
        let n = self.conns.len();
        let mut fig = ConnectFigures {
            connected: 0,
            failed: 0,
            seconds: 0.0,
            latencies_us: Vec::with_capacity(n),
            first_failure: None,
        };
        let note = |fig: &mut ConnectFigures, r: Result<u64, String>| match r {
            Ok(us) => {
                fig.connected += 1;
                fig.latencies_us.push(us);
            }
            Err(e) => {
                fig.failed += 1;
                fig.first_failure.get_or_insert(e);
            }
        };
        let (mut next, mut awaiting, mut oldest) = (0usize, 0usize, 0usize);
        let mut first_socket = None;
        let mut last_connack = None;
        let mut last_scan = Instant::now();
        let start = Instant::now();
        let due = |now: Instant| match rate {
            Some(r) => ((now - start).as_secs_f64() * r) as usize + 1,
            None => n,
        };
        while fig.connected + fig.failed < n {
            let due_now = due(Instant::now());
            while next < n && awaiting < window && next < due_now {
                let r = self.open(next, dest, sources);
                first_socket.get_or_insert(self.conns[next].t0);
                match r {
                    Ok(()) => awaiting += 1,
                    Err(e) => {
                        self.conns[next].state = State::Dead;
                        note(&mut fig, Err(e));
                    }
                }
                next += 1;
            }
            let paced = next < n && next >= due_now;
            if awaiting == 0 && !paced {
                continue;
            }
            let ready = self.wait(if paced { 10 } else { 100 })?;
            for j in 0..ready {
                let ev = self.events[j];
                let (bits, i) = (ev.events, ev.u64 as usize);
                if let Some(r) = self.on_connect_event(i, bits) {
                    awaiting -= 1;
                    if r.is_ok() {
                        last_connack = Some(Instant::now());
                    }
                    note(&mut fig, r);
                }
            }
            if last_scan.elapsed() >= Duration::from_secs(1) {
                last_scan = Instant::now();
                let waiting = |s: State| matches!(s, State::Connecting | State::AwaitConnack);
                while oldest < next && !waiting(self.conns[oldest].state) {
                    oldest += 1;
                }
                for i in oldest..next {
                    let c = &self.conns[i];
                    if waiting(c.state) && c.t0.elapsed() > CONNECT_TIMEOUT {
                        let r = self.handshake_failed(i, "no CONNACK within 30 s".into());
                        awaiting -= 1;
                        note(&mut fig, r);
                    }
                }
            }
        }
        if let (Some(a), Some(b)) = (first_socket, last_connack) {
            fig.seconds = b.duration_since(a).as_secs_f64();
        }
        fig.latencies_us.sort_unstable();
        Ok(fig)
    }

    /// Phase 2. Returns (messages due, seconds of sending).
    fn publish(&mut self, rate: f64, duration: f64) -> Result<(u64, f64), String> {
        let up: Vec<usize> = (0..self.conns.len())
            .filter(|&i| self.conns[i].state == State::Up)
            .collect();
        let tfd = modes::timer(self.epfd, Duration::from_millis(1))?;
        let start = Instant::now();
        // The fleet's global message g = k*n + c is due at (g+1) / (n*R): the due count at
        // time t is floor(t*n*R), and a cursor walks connections in that order.
        let fleet_rate = up.len() as f64 * rate;
        let (mut cursor, mut pos) = (0u64, 0usize);
        let mut dirty: Vec<usize> = Vec::with_capacity(up.len());
        let result = loop {
            let ready = match self.wait(-1) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let mut tick = false;
            for j in 0..ready {
                let ev = self.events[j];
                let (bits, token) = (ev.events, ev.u64);
                if token == TIMER {
                    let mut expirations = [0u8; 8];
                    let _ = recv(tfd, &mut expirations);
                    tick = true;
                } else {
                    self.io
                        .on_event(&mut self.conns[token as usize], bits, true);
                }
            }
            if !tick {
                continue;
            }
            let t = start.elapsed().as_secs_f64();
            let last = t >= duration;
            let due = (t.min(duration) * fleet_rate) as u64;
            while cursor < due {
                let i = up[pos];
                let c = &mut self.conns[i];
                c.owed += 1;
                if !c.dirty && !c.blocked && c.state == State::Up {
                    c.dirty = true;
                    dirty.push(i);
                }
                pos += 1;
                if pos == up.len() {
                    pos = 0;
                }
                cursor += 1;
            }
            for &i in &dirty {
                let c = &mut self.conns[i];
                c.dirty = false;
                self.io.flush(c);
            }
            dirty.clear();
            if last {
                break Ok((cursor, start.elapsed().as_secs_f64()));
            }
        };
        close(tfd);
        result
    }

    /// At QoS 1, reads PUBACKs of what was sent until all are in or ACK_DRAIN has passed.
    fn collect_acks(&mut self, sent: u64) -> Result<(), String> {
        let deadline = Instant::now() + ACK_DRAIN;
        while self.io.acks < sent {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let ready = self.wait(left.as_millis().max(1) as i32)?;
            for j in 0..ready {
                let ev = self.events[j];
                let (bits, i) = (ev.events, ev.u64 as usize);
                self.io.on_event(&mut self.conns[i], bits, false);
            }
        }
        Ok(())
    }

    /// DISCONNECT where the stream is at a packet boundary, then close every socket.
    fn close_all(&mut self) {
        for c in &mut self.conns {
            match c.state {
                State::Up => {
                    if c.pending_at >= c.pending.len() {
                        let _ = send(c.fd, &DISCONNECT);
                    }
                    close(c.fd);
                }
                State::Connecting | State::AwaitConnack => close(c.fd),
                State::Idle | State::Dead => {}
            }
            c.state = State::Dead;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.close_all();
        close(self.epfd);
    }
}

/// Every connection's CONNECT and PUBLISH, encoded before the first socket is opened.
fn build_conns(o: &Opts) -> Result<Vec<Conn>, String> {
    let now = Instant::now();
    let mut conns = Vec::with_capacity(o.connections);
    let mut buf = BytesMut::with_capacity(512);
    let mut payload = Vec::with_capacity(256);
    for i in 0..o.connections {
        let id = format!("{}{i:05}", o.client_prefix);
        buf.clear();
        let mut connect = Connect::new(id.as_str());
        connect.keep_alive = o.keep_alive;
        connect.clean_session = true;
        connect
            .write(&mut buf)
            .map_err(|e| format!("CONNECT: {e:?}"))?;
        let connect = Box::from(&buf[..]);

        let sample = Sample {
            seq: 0,
            timestamp_us: 1_763_798_400_123_456,
            value_centi: 5012 + (i as i64 % 100) * 7,
            temperature_centi: Some(2153),
            humidity_deci: Some(452),
        };
        payload.clear();
        Encoder::new(&id).write_message(&mut payload, &[sample]);
        let payload_len = payload.len();
        let qos = if o.qos1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let mut p = Publish::new(format!("{}{i:05}", o.topic_prefix), qos, payload.clone());
        p.pkid = u16::from(o.qos1);
        buf.clear();
        p.write(&mut buf).map_err(|e| format!("PUBLISH: {e:?}"))?;
        conns.push(Conn {
            fd: -1,
            state: State::Idle,
            t0: now,
            connect,
            connack: [0; 4],
            got: 0,
            publish: Box::from(&buf[..]),
            pkid_at: buf.len() - payload_len - 2,
            next_pkid: 1,
            pending: Vec::new(),
            pending_at: 0,
            blocked: false,
            dirty: false,
            owed: 0,
            taken: 0,
            written_bytes: 0,
            acks: 0,
            rx: Frames::default(),
        });
    }
    Ok(conns)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn run(o: &Opts) -> Result<String, String> {
    let dest_ip = (o.host.as_str(), o.port)
        .to_socket_addrs()
        .map_err(|e| format!("resolving {}: {e}", o.host))?
        .find_map(|a| match a {
            SocketAddr::V4(v4) => Some(*v4.ip()),
            SocketAddr::V6(_) => None,
        })
        .ok_or_else(|| format!("{} has no IPv4 address", o.host))?;
    let dest = sockaddr(dest_ip, o.port);
    let sources: Vec<libc::sockaddr_in> = o.source_ips.iter().map(|&ip| sockaddr(ip, 0)).collect();

    let conns = build_conns(o)?;
    // SAFETY: plain syscall.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(os_error("epoll_create1"));
    }
    let mut fleet = Fleet {
        epfd,
        conns,
        io: Counters {
            qos1: o.qos1,
            rbuf: vec![0; READ_BUF],
            wbuf: Vec::with_capacity(WRITE_BUF * 2),
            acks: 0,
            write_blocked: 0,
            lost: 0,
        },
        events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS],
    };

    let fig = fleet.connect_all(o.max_connecting, o.connect_rate, &dest, &sources)?;
    if fig.connected == 0 {
        return Err(format!(
            "no connection succeeded ({} failed, first: {})",
            fig.failed,
            fig.first_failure.as_deref().unwrap_or("?")
        ));
    }

    let mode = if let Some(filter) = &o.subscribe {
        Some(modes::subscribe(&mut fleet, o, filter)?)
    } else if o.hold {
        Some(modes::hold(&mut fleet, o)?)
    } else if let Some(rate) = o.churn {
        Some(modes::churn(&mut fleet, o, rate, &dest, &sources)?)
    } else {
        None
    };
    if let Some(fields) = mode {
        fleet.close_all();
        let lat = &fig.latencies_us;
        return Ok(format!(
            "{{\"connections\":{},\"connected\":{},\"failed\":{},\"connect_s\":{:.6},\
             \"connect_p50_us\":{},\"connect_p99_us\":{},\"connect_max_us\":{},{fields}}}",
            o.connections,
            fig.connected,
            fig.failed,
            fig.seconds,
            percentile(lat, 50.0),
            percentile(lat, 99.0),
            lat.last().copied().unwrap_or(0),
        ));
    }

    let (mut due, mut sent, mut publish_s) = (0u64, 0u64, 0.0f64);
    if !o.connect_only {
        (due, publish_s) = fleet.publish(o.rate, o.duration)?;
        sent = fleet.conns.iter().map(Conn::sent).sum();
        if o.qos1 {
            fleet.collect_acks(sent)?;
        }
    }
    fleet.close_all();

    let lat = &fig.latencies_us;
    let mut line = format!(
        "{{\"connections\":{},\"connected\":{},\"failed\":{},\"connect_s\":{:.6},\
         \"connect_rate\":{:.1},\"connect_p50_us\":{},\"connect_p99_us\":{},\
         \"connect_max_us\":{},\"qos\":{},\"rate_per_conn\":{},\"messages_due\":{due},\
         \"messages_sent\":{sent},\"messages_owed_at_end\":{},\"acks\":{},\
         \"write_blocked\":{},\"lost\":{},\"publish_s\":{publish_s:.6},\"message_rate\":{:.1}",
        o.connections,
        fig.connected,
        fig.failed,
        fig.seconds,
        per_second(fig.connected as u64, fig.seconds),
        percentile(lat, 50.0),
        percentile(lat, 99.0),
        lat.last().copied().unwrap_or(0),
        u8::from(o.qos1),
        o.rate,
        due.saturating_sub(sent),
        fleet.io.acks,
        fleet.io.write_blocked,
        fleet.io.lost,
        per_second(sent, publish_s),
    );
    if let Some(e) = &fig.first_failure {
        line.push_str(",\"first_failure\":");
        line.push_str(&serde_json::to_string(e).map_err(|e| e.to_string())?);
    }
    line.push('}');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubacks_are_counted_across_any_split() {
        // Two PUBACKs around a PINGRESP and a SUBACK with a 3-byte body.
        let stream = [
            0x40, 2, 0, 1, 0xD0, 0, 0x90, 3, 0, 1, 0, 0x40, 2, 0xFF, 0xFF,
        ];
        for cut in 0..=stream.len() {
            for cut2 in cut..=stream.len() {
                let mut f = Frames::default();
                let a = f.feed(&stream[..cut]).unwrap()
                    + f.feed(&stream[cut..cut2]).unwrap()
                    + f.feed(&stream[cut2..]).unwrap();
                assert_eq!(a, 2, "cuts at {cut} and {cut2}");
                assert_eq!(f.stage, 0);
            }
        }
    }

    #[test]
    fn a_remaining_length_over_four_bytes_is_malformed() {
        let mut f = Frames::default();
        assert_eq!(f.feed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
