//! One worker: a thread with its own event loop (epoll through mio) that owns a contiguous
//! share of the fleet's connections and their devices, its own counters and histograms, and
//! one schedule cursor. No task, channel or timer per connection or device.
//!
//! ```text
//! loop:  ramp (start connects at --connect-rate, at most --max-connecting at once)
//!        timers (connect timeouts, keep-alives, retries: one heap)
//!        generate (the cursor walks the fleet schedule; each due device encodes its message
//!                  straight into its connection's outbox, or owes it while the outbox is full)
//!        flush (write every connection with bytes waiting; count what went out)
//!        drain (after generation: last writes, PUBACKs, DISCONNECT, all by one deadline)
//!        wait (epoll until the next due time: a timerfd to the microsecond for sparse
//!              schedules, millisecond ticks for dense ones, coalesced when a connection
//!              has many messages a tick)
//! ```
//!
//! Devices are worker-local indexes into `devices`; device `dl` is fleet device `d0 + dl`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::conn::{Conn, Phase};
use crate::error::{BrokerLimit, ConnackCode, ConnectFailure, LostKind, Takeover};
use crate::outbox::{Flushed, MsgMeta};
use crate::packets::{self, Incoming};
use crate::settings::{FleetSettings, Qos};
use crate::stats::{micros, Collisions, Live, Stats, LAG_SECONDS_KEPT};
use crate::sys;
use crate::tls;

/// What a tool puts in the messages; the engine decides when they go. One per worker.
pub trait Producer: Send {
    /// Appends the topic of fleet device `device` (0-based) to `out`.
    fn topic(&mut self, device: u64, out: &mut Vec<u8>);
    /// Appends the payload of `points` points of `device`, the first with seq `first_seq`,
    /// all stamped `ts_us` (wall clock, µs since the epoch: the message's scheduled time).
    fn payload(&mut self, device: u64, first_seq: u64, points: u32, ts_us: u64, out: &mut BytesMut);
    /// Device `device` skips its next `points` points (dropped while offline): their seqs
    /// are never sent.
    fn skip(&mut self, device: u64, points: u64) {
        let _ = (device, points);
    }
}

/// Stop and abort requests from outside, and how to wake the workers for them.
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicBool,
    abort: AtomicBool,
    wakers: Mutex<Vec<Arc<Waker>>>,
}

impl Control {
    /// Ends generation; the workers drain within the drain timeout.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Gives up whatever is left of the drain.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    fn wake_all(&self) {
        for w in self
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let _ = w.wake();
        }
    }

    fn add_waker(&self, w: Arc<Waker>) {
        self.wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(w);
    }
}

/// What the workers of one fleet share.
#[derive(Debug)]
pub struct Shared {
    /// The clock's origin for `anchor_ns`, and the wall clock then (µs since the epoch).
    pub epoch: Instant,
    pub wall_epoch_us: u64,
    /// Generation's anchor: nanoseconds after `epoch`, plus one (0: not yet set). Set when the
    /// connect ramp is over (every connection up or given up), `--start-delay` after it.
    anchor_ns: AtomicU64,
    /// Connections up or given up, fleet-wide: the ramp is over when it reaches the plan's.
    pub settled: AtomicU64,
    /// When the ramp was over, nanoseconds after `epoch` plus one (0: not yet).
    pub settled_ns: AtomicU64,
    /// Connections awaiting their CONNACK, fleet-wide: `--max-connecting` bounds the sum
    /// over workers, not each worker's share rounded up.
    connecting: AtomicU64,
    pub control: Control,
    pub live: Vec<Live>,
    /// The first takeover and client id in use, named by the tool as they happen.
    pub collisions: Collisions,
    /// Each worker's histograms as of its last hand-over (`live_histograms`).
    pub live_histos: Vec<std::sync::Mutex<crate::stats::Histos>>,
}

impl Shared {
    pub fn new(workers: usize) -> Shared {
        let wall_epoch_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        Shared {
            epoch: Instant::now(),
            wall_epoch_us,
            anchor_ns: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            settled_ns: AtomicU64::new(0),
            connecting: AtomicU64::new(0),
            control: Control::default(),
            live: (0..workers).map(|_| Live::default()).collect(),
            collisions: Collisions::default(),
            live_histos: (0..workers).map(|_| Default::default()).collect(),
        }
    }

    /// Generation's anchor, once set.
    pub fn anchor(&self) -> Option<Instant> {
        match self.anchor_ns.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// Sets the anchor to `at` unless another worker set it first; returns the anchor.
    fn set_anchor(&self, at: Instant) -> Instant {
        let ns = at.saturating_duration_since(self.epoch).as_nanos() as u64 + 1;
        match self
            .anchor_ns
            .compare_exchange(0, ns, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => at,
            Err(_) => self.anchor().unwrap_or(at),
        }
    }

    /// Takes one of `max` fleet-wide connect slots; false when all are taken.
    fn take_connect_slot(&self, max: u64) -> bool {
        self.connecting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_connect_slot(&self) {
        let _ = self
            .connecting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// When the ramp was over, once it is.
    pub fn settled_at(&self) -> Option<Instant> {
        match self.settled_ns.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n - 1)),
        }
    }
}

/// A device's state in its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DevState {
    /// Its connection is not up yet.
    Waiting,
    Active,
    /// Its schedule ended while its connection was full: the slots it still owes (all due
    /// before the end) are written in the drain, or dropped at its deadline or a stop.
    Owing,
    /// Its schedule ended, its quota is sent, or its connection is gone.
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Device {
    /// Its connection, an index into the worker's `conns`.
    conn: u32,
    /// Points generated so far: the seq of its next point.
    sent: u64,
    /// The next slot it fills.
    next_slot: u64,
    state: DevState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    ConnectTimeout,
    KeepAlive,
    Retry,
    CloseLinger,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerPhase {
    Generating,
    Draining { deadline: Instant },
    Done,
}

const WAKER: Token = Token(usize::MAX);
const TIMER: Token = Token(usize::MAX - 1);
/// A connection's bytes are written once this many wait, even mid-pass.
const FLUSH_BYTES: usize = 64 << 10;
/// Read buffer, shared by the worker's connections.
const READ_BUF: usize = 64 << 10;
/// Messages generated in one go before events get their turn (unpaced runs).
const PASS_MESSAGES: usize = 4096;
/// Schedule slots walked in one go before events get their turn (paced runs).
const PASS_STEPS: usize = 16_384;
/// A connection lost this many times in a row, with no progress in between, is given up: a
/// message the broker refuses by closing (too large, not authorized) would otherwise be
/// replayed into the same loss for ever, and a client id taken by another client would
/// take it back in turn.
pub const MAX_LOSSES_WITHOUT_PROGRESS: u32 = 3;
/// Progress at QoS 0, where nothing is acknowledged: the connection stayed up this long.
const PROGRESS_UPTIME: Duration = Duration::from_secs(1);
/// How long a closing connection waits for the broker to close its side.
const CLOSE_LINGER: Duration = Duration::from_millis(250);
/// Sparse schedules wake this early on the timerfd and spin the rest, so that the kernel's
/// wake-up latency stays out of the schedule lag.
const SPIN_WINDOW: Duration = Duration::from_micros(150);
/// Messages per second of a worker up to which it wakes exactly on time (timerfd and spin);
/// denser schedules wake on millisecond ticks and send what is due.
const PRECISE_MAX_RATE: f64 = 100.0;
/// Writes per second one worker aims to stay under when its connections each have many
/// messages a millisecond: past it, messages of a connection are coalesced into one write.
const WRITES_PER_S: f64 = 5_000.0;
/// How often a worker hands its histograms over when `live_histograms` is on: a copy of
/// three histograms (~0.5 MB), cheap at this pace.
const HISTOS_EVERY: Duration = Duration::from_millis(200);

/// One worker's loop and everything it owns.
pub struct Worker<P: Producer> {
    id: usize,
    s: Arc<FleetSettings>,
    shared: Arc<Shared>,
    poll: Poll,
    events: Events,
    timer: sys::Timer,
    conns: Vec<Conn>,
    devices: Vec<Device>,
    /// Fleet index of the worker's first device.
    d0: u64,
    producer: P,
    stats: Stats,
    // The schedule cursor: slot `cur_k` of device `cur_dl` is the next to come due.
    cur_k: u64,
    cur_dl: u32,
    /// Devices not Done.
    live_devices: u64,
    ramp: VecDeque<u32>,
    /// This worker's connections awaiting their CONNACK (each holds a fleet-wide slot).
    connecting: usize,
    /// The ramp waits for a slot another worker holds: look again soon.
    slots_full: bool,
    token_interval: Option<Duration>,
    next_token: Instant,
    timers: BinaryHeap<Reverse<(Instant, TimerKind, u32, u32)>>,
    dirty: Vec<u32>,
    read_buf: Vec<u8>,
    topic: Vec<u8>,
    phase: WorkerPhase,
    anchor: Option<Instant>,
    wall_anchor_us: u64,
    qos1: bool,
    paced: bool,
    /// Sparse schedule: wake on the timerfd and spin the last stretch.
    precise: bool,
    /// Dense schedule: how far due messages may be coalesced.
    tick: Duration,
    last_pass: Instant,
    /// When the histograms were last handed to `shared.live_histos`.
    histos_shared: Instant,
    /// Outbox capacity a connection keeps after a complete flush.
    keep_buffer: usize,
    rng: u64,
    up: u64,
    /// Connections that are Done: the worker is done when all are.
    done_conns: usize,
    /// During the drain, connections to look at again (their outbox or window emptied).
    drain_check: Vec<u32>,
    /// Unpaced: a full round found no device with room; nothing to try until a connection
    /// drains or a PUBACK frees a window.
    unpaced_idle: bool,
    /// Devices in the state Owing.
    owing: usize,
}

impl<P: Producer> Worker<P> {
    /// Worker `id` of the fleet, producing with `producer`.
    pub fn new(
        id: usize,
        s: Arc<FleetSettings>,
        shared: Arc<Shared>,
        producer: P,
    ) -> io::Result<Worker<P>> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        shared.control.add_waker(waker);
        let mut timer = sys::Timer::new()?;
        poll.registry()
            .register(&mut timer, TIMER, Interest::READABLE)?;
        let now = Instant::now();
        let my_conns = s.worker_conns(id);
        let d0 = if my_conns.is_empty() {
            0
        } else {
            s.conn_devices(my_conns.start).start
        };
        let mut conns = Vec::with_capacity(my_conns.clone().count());
        let mut devices = Vec::new();
        for (local, c) in my_conns.clone().enumerate() {
            let ds = s.conn_devices(c);
            let first = (ds.start - d0) as u32;
            let last = (ds.end - d0) as u32;
            for _ in ds {
                devices.push(Device {
                    conn: local as u32,
                    sent: 0,
                    next_slot: 0,
                    state: DevState::Waiting,
                });
            }
            let retaining = s.publish.qos == Qos::AtLeastOnce && s.reconnect.is_some();
            conns.push(Conn::new(
                c,
                first..last,
                s.publish.max_inflight,
                retaining,
                s.conn.keep_alive,
                now,
            ));
        }
        let workers = s.workers.max(1) as f64;
        let token_interval = s
            .ramp
            .connect_rate
            .map(|r| Duration::from_secs_f64(workers / r.max(1e-9)).min(Duration::from_secs(3600)));
        let paced = s.schedule.is_paced();
        // How many messages a second this worker and each of its connections send.
        let (worker_rate, conn_rate) = match s.schedule.rate() {
            Some(points_per_s) => {
                let msgs = points_per_s / s.schedule.batch() as f64;
                let share = devices.len() as f64 / s.devices.max(1) as f64;
                let per_conn = msgs / s.connections.max(1) as f64;
                (msgs * share, per_conn)
            }
            None => (f64::INFINITY, f64::INFINITY),
        };
        // Spinning the last 150 µs to each due time costs up to 1.5% of a core at 100
        // messages a second, 15% at 1,000: only sparse schedules get it.
        let precise = paced && worker_rate <= PRECISE_MAX_RATE;
        let tick = if paced && conn_rate >= 200.0 && worker_rate > WRITES_PER_S {
            Duration::from_secs_f64(conns.len() as f64 / WRITES_PER_S)
                .clamp(Duration::from_millis(1), Duration::from_millis(20))
        } else {
            Duration::from_millis(1)
        };
        let keep_buffer = if s.connections <= 16 {
            4 << 20
        } else {
            4 << 10
        };
        let stats = Stats {
            conns: crate::stats::Conns {
                planned: conns.len() as u64,
                ..Default::default()
            },
            ..Default::default()
        };
        Ok(Worker {
            id,
            shared,
            poll,
            events: Events::with_capacity(1024),
            timer,
            ramp: (0..conns.len() as u32).collect(),
            live_devices: devices.len() as u64,
            conns,
            devices,
            d0,
            producer,
            stats,
            cur_k: 0,
            cur_dl: 0,
            connecting: 0,
            slots_full: false,
            token_interval,
            next_token: now,
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            read_buf: vec![0u8; READ_BUF],
            topic: Vec::with_capacity(256),
            phase: WorkerPhase::Generating,
            anchor: None,
            wall_anchor_us: 0,
            qos1: s.publish.qos == Qos::AtLeastOnce,
            paced,
            precise,
            tick,
            last_pass: now,
            histos_shared: now,
            keep_buffer,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            up: 0,
            done_conns: 0,
            drain_check: Vec::new(),
            unpaced_idle: false,
            owing: 0,
            s,
        })
    }

    /// Runs until every connection is done; returns what the worker saw.
    pub fn run(mut self) -> Stats {
        let started = Instant::now();
        let cpu0 = sys::thread_cpu_time();
        if self.conns.is_empty() {
            self.phase = WorkerPhase::Done;
        }
        loop {
            let now = Instant::now();
            if self.shared.control.abort.load(Ordering::Relaxed) {
                self.abandon_all(now);
                break;
            }
            self.start_connects(now);
            self.fire_timers(now);
            let mut more = false;
            let mut next_due = None;
            if self.phase == WorkerPhase::Generating {
                if self.anchor.is_none() {
                    self.anchor = self.shared.anchor();
                    if let Some(a) = self.anchor {
                        self.set_anchor(a);
                    }
                }
                if self.anchor.is_some() {
                    (more, next_due) = self.generate(now);
                    self.last_pass = now;
                }
            }
            self.flush_dirty(now);
            // Checked after the timers and the generation of this turn, which may end it.
            if self.phase == WorkerPhase::Generating && self.generation_over(now) {
                self.end_generation(now);
                next_due = None;
                more = false;
            }
            if let WorkerPhase::Draining { deadline } = self.phase {
                if now >= deadline {
                    self.cut_short(now);
                } else {
                    self.drain_step(now);
                }
            }
            self.publish_live(now);
            if self.phase == WorkerPhase::Done {
                break;
            }
            // Connections made dirty during this turn's flushes (a drained outbox let its
            // devices catch up) are flushed at once, not at the next timer.
            let wake = if more || !self.dirty.is_empty() {
                Some(now)
            } else {
                self.next_wake(now, next_due)
            };
            if let Err(e) = self.wait(now, wake) {
                tracing::error!("worker {}: poll failed: {e}", self.id);
                self.abandon_all(Instant::now());
                break;
            }
        }
        self.publish_live(Instant::now());
        self.share_histos();
        self.stats.cpu = sys::thread_cpu_time().saturating_sub(cpu0);
        self.stats.wall = started.elapsed();
        self.stats
    }

    fn set_anchor(&mut self, anchor: Instant) {
        self.anchor = Some(anchor);
        self.wall_anchor_us =
            self.shared.wall_epoch_us + micros(anchor.saturating_duration_since(self.shared.epoch));
    }

    fn generation_over(&self, now: Instant) -> bool {
        if self.shared.control.stop.load(Ordering::Relaxed) {
            return true;
        }
        // Before the anchor the ramp is still on: devices of other connections may yet come
        // up, and connections with nothing to send are load all the same.
        if self.anchor.is_none() {
            return false;
        }
        if self.live_devices == 0 {
            return true;
        }
        // Unpaced, --duration ends generation by the clock; paced, each device's schedule ends.
        match (self.anchor, self.s.schedule.duration()) {
            (Some(a), Some(d)) if !self.paced => now >= a + d,
            _ => false,
        }
    }

    /// Generation is over: what devices still owed is dropped, connections not up yet are
    /// given up, and the drain starts.
    fn end_generation(&mut self, now: Instant) {
        self.stats.generation_end = Some(now);
        for dl in 0..self.devices.len() {
            let dev = self.devices[dl];
            if dev.state == DevState::Active && self.paced {
                let passed = self.passed_slot(dl as u32);
                if let Some(last) = passed {
                    let owed = (last + 1).saturating_sub(dev.next_slot);
                    self.stats.counts.points_dropped += self.owed_points(dl as u32, owed);
                }
            }
            if matches!(dev.state, DevState::Active | DevState::Waiting) {
                self.devices[dl].state = DevState::Done;
            }
        }
        self.live_devices = 0;
        if self.shared.control.stop.load(Ordering::Relaxed) {
            self.drop_owing();
        }
        for c in 0..self.conns.len() {
            match self.conns[c].phase {
                Phase::Idle | Phase::Connecting | Phase::AwaitConnack | Phase::Backoff
                    if self.conns[c].down_since.is_some() =>
                {
                    // Reconnecting: it delivers what it still holds in the drain, if it is
                    // back in time.
                    let conn = &self.conns[c];
                    let holds = conn.owing > 0
                        || !conn.inflight.is_empty()
                        || conn.replay.as_ref().is_some_and(|r| !r.frames.is_empty());
                    if !holds {
                        // Nothing of its own is lost: at QoS 1 every point it sent was
                        // acknowledged. (At QoS 0, what it wrote last may not have been read.)
                        if self.qos1 {
                            if let Some(t) = self.conns[c].down_since.take() {
                                self.stats.conns.disconnected += now.saturating_duration_since(t);
                            }
                            self.conns[c].replay = None;
                        }
                        self.close(c as u32);
                    }
                }
                Phase::Idle | Phase::Connecting | Phase::AwaitConnack | Phase::Backoff => {
                    // The ramp was not over: this connection never came up.
                    self.stats.conns.not_up += 1;
                    self.close(c as u32);
                }
                _ => {}
            }
        }
        // Reconnects waiting for their turn keep it: they deliver what they hold in the drain.
        let conns = &self.conns;
        self.ramp.retain(|c| {
            conns[*c as usize].down_since.is_some() && conns[*c as usize].phase == Phase::Idle
        });
        self.drain_check = (0..self.conns.len() as u32).collect();
        self.phase = WorkerPhase::Draining {
            deadline: now + self.s.drain_timeout,
        };
    }

    /// Points in `owed` slots of device `dl`, within what is left of its quota.
    fn owed_points(&self, dl: u32, owed: u64) -> u64 {
        let d = self.d0 + dl as u64;
        let dev = &self.devices[dl as usize];
        let wanted = owed.saturating_mul(self.s.schedule.batch());
        match self.s.schedule.quota(d) {
            Some(q) => wanted.min(q.saturating_sub(dev.sent)),
            None => wanted,
        }
    }

    /// The last slot of device `dl` the cursor has passed.
    fn passed_slot(&self, dl: u32) -> Option<u64> {
        if dl < self.cur_dl {
            Some(self.cur_k)
        } else {
            self.cur_k.checked_sub(1)
        }
    }

    // ----- the ramp -------------------------------------------------------------------

    fn start_connects(&mut self, now: Instant) {
        self.slots_full = false;
        while let Some(&c) = self.ramp.front() {
            if self.token_interval.is_some() && now < self.next_token {
                break;
            }
            if !self
                .shared
                .take_connect_slot(self.s.ramp.max_connecting as u64)
            {
                self.slots_full = true;
                break;
            }
            if let Some(iv) = self.token_interval {
                // Tokens do not pile up while the ramp waits on --max-connecting.
                self.next_token = self.next_token.max(now - iv.min(now - self.shared.epoch)) + iv;
            }
            self.ramp.pop_front();
            self.start_connect(c, now);
            if !matches!(
                self.conns[c as usize].phase,
                Phase::Connecting | Phase::AwaitConnack
            ) {
                self.shared.give_connect_slot(); // it failed at once
            }
        }
    }

    /// A connection of this worker got its CONNACK or failed before: its slot is free.
    fn connect_ended(&mut self) {
        self.connecting = self.connecting.saturating_sub(1);
        self.shared.give_connect_slot();
    }

    fn start_connect(&mut self, c: u32, now: Instant) {
        let s = &self.s.conn;
        let conn = &mut self.conns[c as usize];
        conn.attempt += 1;
        conn.generation += 1;
        conn.attempt_started = now;
        self.stats.conns.attempts += 1;
        self.stats.conns.first_attempt.get_or_insert(now);
        let addr = s.addrs[(conn.attempt as usize - 1) % s.addrs.len().max(1)];
        let source = (!s.source_ips.is_empty())
            .then(|| s.source_ips[(conn.index % s.source_ips.len() as u64) as usize]);
        match sys::connect(addr, source, s.tcp_nodelay) {
            Ok(mut sock) => {
                // Writability says the connect completed; after that only a blocked flush
                // watches it (every ACK of a write would be an event otherwise).
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    Token(c as usize),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.fail_attempt(c, ConnectFailure::of_io(&e), now);
                    return;
                }
                let conn = &mut self.conns[c as usize];
                conn.sock = Some(sock);
                conn.watch_write = true;
                conn.phase = Phase::Connecting;
                let gen = conn.generation;
                self.connecting += 1;
                self.timers.push(Reverse((
                    now + s.connect_timeout,
                    TimerKind::ConnectTimeout,
                    c,
                    gen,
                )));
            }
            Err(e) => self.fail_attempt(c, ConnectFailure::of_io(&e), now),
        }
    }

    /// The connection's TCP connect finished (or failed): send CONNECT.
    fn on_connected_tcp(&mut self, c: u32, now: Instant) {
        let conn = &mut self.conns[c as usize];
        let Some(sock) = conn.sock.as_mut() else {
            return;
        };
        // Writable after a non-blocking connect means it completed; SO_ERROR says how.
        match sock.take_error() {
            Ok(Some(e)) | Err(e) => return self.fail_attempt(c, ConnectFailure::of_io(&e), now),
            Ok(None) => {}
        }
        if self
            .poll
            .registry()
            .reregister(sock, Token(c as usize), Interest::READABLE)
            .is_ok()
        {
            conn.watch_write = false;
        }
        if let Some(t) = &self.s.conn.tls {
            // The handshake runs under the CONNECT, which rustls holds until it is done.
            match tls::connect(t) {
                Ok(tc) => conn.tls = Some(Box::new(tc)),
                Err(e) => return self.fail_attempt(c, ConnectFailure::Tls(e), now),
            }
        }
        let conn = &mut self.conns[c as usize];
        let s = &self.s.conn;
        let mut id = Vec::with_capacity(32);
        s.client_id
            .render_into(self.s.client_index(conn.index), b"", &mut id);
        let id = String::from_utf8_lossy(&id);
        let keep_alive = s.keep_alive.as_secs().min(u16::MAX as u64) as u16;
        let credentials = s
            .credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()));
        let packet = match &s.mqtt5 {
            Some(v5) => {
                packets::connect_v5(&id, keep_alive, s.clean_session, credentials, &v5.connect)
            }
            None => packets::connect(&id, keep_alive, s.clean_session, credentials),
        };
        conn.out.push_control(&packet);
        conn.phase = Phase::AwaitConnack;
        self.flush(c, now);
    }

    fn on_connack(&mut self, c: u32, code: u8, session_present: bool, now: Instant) {
        if code != 0 {
            let code = if self.s.conn.mqtt5.is_some() {
                ConnackCode::from_v5_code(code)
            } else {
                ConnackCode::from_code(code)
            };
            return self.fail_attempt(c, ConnectFailure::Connack(code), now);
        }
        self.connect_ended();
        let conn = &mut self.conns[c as usize];
        // Up before: this is a reconnect after a loss.
        let reconnect = conn.up_at.is_some();
        conn.phase = Phase::Up;
        conn.up_at = Some(now);
        conn.last_out = now;
        conn.last_in = now;
        conn.ping = None;
        conn.acked_since_up = false;
        self.up += 1;
        self.unpaced_idle = false; // its devices have room now
        let gen = conn.generation;
        if reconnect {
            let st = &mut self.stats.conns;
            st.reconnects += 1;
            st.reconnected += u64::from(!conn.reconnected);
            conn.reconnected = true;
            conn.reconnect_attempt = 0;
            let back = conn.id_watch.back();
            if back.confirmed {
                // Closed by a broker that took the reconnect at once: it was not going away.
                st.takeovers += 1;
                self.shared
                    .collisions
                    .taken_over(conn.index, Takeover::Likely);
            }
            if let Some(t) = conn.down_since.take() {
                st.disconnected += now.saturating_duration_since(t);
            }
            if !self.s.conn.clean_session && !session_present {
                st.sessions_lost += 1;
            }
            // DUP only within the session that may hold them: in a new one (the broker
            // lost it, or a clean session) they are new messages.
            conn.put_replay(!self.s.conn.clean_session && session_present);
        } else {
            self.stats.conns.connected += 1;
            if !self.s.conn.clean_session && session_present {
                self.stats.conns.sessions_resumed += 1;
            }
            let _ = self
                .stats
                .histos
                .connect_us
                .record(micros(now - conn.attempt_started).max(1));
            self.settle(now);
        }
        let keep_alive = self.conns[c as usize].keep_alive;
        if !keep_alive.is_zero() {
            self.timers
                .push(Reverse((now + keep_alive, TimerKind::KeepAlive, c, gen)));
        }
        if reconnect {
            // What fell due while it was down goes out now (beyond the offline buffer:
            // dropped), after the replay.
            self.bound_offline(c);
            self.mark_dirty(c);
            self.catch_up(c);
            if self.phase != WorkerPhase::Generating {
                self.drain_check.push(c);
            }
            return;
        }
        if self.phase != WorkerPhase::Generating {
            return; // generation ended meanwhile: the drain closes it
        }
        // Generation starts when the ramp is over (the anchor), so every device starts at its
        // first slot: what the user asked for is N x r x D points, whatever the ramp took.
        let devices = self.conns[c as usize].devices.clone();
        for dl in devices {
            let d = self.d0 + dl as u64;
            let dev = &mut self.devices[dl as usize];
            if dev.state == DevState::Waiting {
                dev.state = DevState::Active;
                dev.next_slot = 0;
                // A device with nothing to send (more devices than points) is done at once,
                // not when its first slot comes round.
                if self.s.schedule.next_points(d, 0) == 0 {
                    self.finish(dl);
                }
            }
        }
    }

    /// One more connection is up or given up; the last one ends the ramp and anchors
    /// generation, `--start-delay` later, for every worker.
    fn settle(&mut self, now: Instant) {
        let settled = self.shared.settled.fetch_add(1, Ordering::AcqRel) + 1;
        if settled >= self.s.connections {
            let ns = now.saturating_duration_since(self.shared.epoch).as_nanos() as u64 + 1;
            let _ =
                self.shared
                    .settled_ns
                    .compare_exchange(0, ns, Ordering::AcqRel, Ordering::Acquire);
            let a = self.shared.set_anchor(now + self.s.start_delay);
            self.set_anchor(a);
            // Workers asleep until their next keep-alive start generating now.
            self.shared.control.wake_all();
        }
    }

    fn fail_attempt(&mut self, c: u32, f: ConnectFailure, now: Instant) {
        if matches!(
            self.conns[c as usize].phase,
            Phase::Connecting | Phase::AwaitConnack
        ) {
            self.connect_ended();
        }
        let conn = &mut self.conns[c as usize];
        conn.tls = None;
        conn.close_notify_sent = false;
        if let Some(mut sock) = conn.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        conn.out.abandon().for_each(drop);
        conn.inbuf.clear();
        conn.generation += 1;
        *self.stats.conns.failures.entry(f.clone()).or_default() += 1;
        // Up before: a reconnect, tried until the run ends unless the broker refuses for good.
        let reconnecting = conn.up_at.is_some();
        if reconnecting {
            conn.id_watch.failed_attempt();
        }
        let down_too_long = self.s.reconnect.as_ref().is_some_and(|r| {
            conn.down_since
                .is_some_and(|t| now.saturating_duration_since(t) >= r.give_up_after)
        });
        let retry = if reconnecting {
            !f.is_fatal() && self.phase != WorkerPhase::Done && !down_too_long
        } else {
            !f.is_fatal()
                && conn.attempt <= self.s.ramp.connect_retries
                && self.phase == WorkerPhase::Generating
        };
        if retry {
            let delay = if reconnecting {
                conn.reconnect_attempt += 1;
                let r = self.s.reconnect.as_ref();
                let (lo, hi) = r.map_or((self.s.ramp.backoff_base, self.s.ramp.backoff_max), |r| {
                    (r.backoff_min, r.backoff_max)
                });
                let n = conn.reconnect_attempt;
                self.backoff(lo, hi, n)
            } else {
                let n = conn.attempt;
                self.backoff(self.s.ramp.backoff_base, self.s.ramp.backoff_max, n)
            };
            let conn = &mut self.conns[c as usize];
            conn.phase = Phase::Backoff;
            let gen = conn.generation;
            self.timers
                .push(Reverse((now + delay, TimerKind::Retry, c, gen)));
        } else {
            conn.phase = Phase::Done;
            self.done_conns += 1;
            let fatal = f.is_fatal() && f.is_refusal();
            *self.stats.conns.gave_up.entry(f).or_default() += 1;
            if reconnecting {
                self.stats.conns.down_at_end += 1;
                self.stats.conns.refused_on_reconnect += u64::from(fatal);
                self.stats.conns.down_too_long += u64::from(down_too_long);
                if let Some(t) = conn.down_since.take() {
                    self.stats.conns.disconnected += now.saturating_duration_since(t);
                }
                conn.replay = None;
                conn.inflight.abandon().for_each(drop);
            } else {
                self.stats.conns.failed += 1;
                self.settle(now);
            }
            self.devices_gone(c);
        }
    }

    /// The `n`th delay (from 1) of a backoff from `lo`, doubling up to `hi`, jittered over
    /// [0.5, 1.5) of it so that a fleet refused at once does not come back at once.
    fn backoff(&mut self, lo: Duration, hi: Duration, n: u32) -> Duration {
        let exp = lo.as_secs_f64() * 2f64.powi(n.saturating_sub(1).min(30) as i32);
        let capped = exp.min(hi.as_secs_f64());
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.5 + (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(capped * jitter)
    }

    /// After a reconnect: a device owing more points than the offline buffer holds drops
    /// the oldest (whole messages), counted, their seqs skipped, so that the backend sees the
    /// gap the report names.
    fn bound_offline(&mut self, c: u32) {
        let Some(bound) = self.s.reconnect.as_ref().map(|r| r.offline_buffer) else {
            return;
        };
        if !self.paced {
            return;
        }
        let batch = self.s.schedule.batch().max(1);
        for dl in self.conns[c as usize].devices.clone() {
            let dev = self.devices[dl as usize];
            let owed = match dev.state {
                DevState::Active => match self.passed_slot(dl) {
                    Some(last) if last >= dev.next_slot => {
                        self.owed_points(dl, last + 1 - dev.next_slot)
                    }
                    _ => 0,
                },
                DevState::Owing => self.points_left(dl),
                DevState::Waiting | DevState::Done => 0,
            };
            if owed <= bound {
                continue;
            }
            let slots = (owed - bound).div_ceil(batch);
            let d = self.d0 + dl as u64;
            let skipped = match self.s.schedule.quota(d) {
                Some(q) => (slots * batch).min(q.saturating_sub(dev.sent)),
                None => slots * batch,
            };
            let dev = &mut self.devices[dl as usize];
            dev.next_slot += slots;
            dev.sent += skipped;
            self.stats.counts.points_dropped_offline += skipped;
            self.producer.skip(d, skipped);
            self.done_if_spent(dl);
        }
    }

    /// The devices of connection `c` will never send again: what their schedule still held
    /// (their quota, or their slots until --duration ends) is dropped.
    fn devices_gone(&mut self, c: u32) {
        let devices = self.conns[c as usize].devices.clone();
        for dl in devices {
            let dev = self.devices[dl as usize];
            if dev.state == DevState::Done {
                continue;
            }
            self.stats.counts.points_dropped += self.points_left(dl);
            if dev.state == DevState::Owing {
                self.finish(dl);
                continue;
            }
            self.devices[dl as usize].state = DevState::Done;
            self.live_devices = self.live_devices.saturating_sub(1);
        }
    }

    /// Points device `dl`'s schedule still holds: what it is to send in all (its quota, and
    /// no more than its slots due by the end of --duration, as [`Schedule::planned_for`]
    /// counts them) less what it has generated or dropped offline.
    fn points_left(&self, dl: u32) -> u64 {
        let d = self.d0 + dl as u64;
        let sent = self.devices[dl as usize].sent;
        self.s
            .schedule
            .planned_for(d)
            .map_or(0, |p| p.saturating_sub(sent))
    }

    /// A connection that was up is gone: it reconnects when it still has something to
    /// deliver, else it is done.
    fn lose(&mut self, c: u32, kind: LostKind, now: Instant) {
        let was_up = self.conns[c as usize].phase == Phase::Up;
        // A reset after our DISCONNECT: the broker dropped us before it read all we wrote.
        let reset_closing = self.conns[c as usize].phase == Phase::Closing;
        let needed = {
            let conn = &self.conns[c as usize];
            !conn.inflight.is_empty()
                || conn.unflushed()
                || conn.owing > 0
                || (self.phase == WorkerPhase::Generating
                    && conn
                        .devices
                        .clone()
                        .any(|dl| !matches!(self.devices[dl as usize].state, DevState::Done)))
        };
        let conn = &mut self.conns[c as usize];
        // Progress: a PUBACK since it came up, or up a while with nothing left waiting for one
        // (QoS 0, or a sparse QoS 1 device between its messages).
        let up_a_while = conn
            .up_at
            .is_some_and(|t| now.saturating_duration_since(t) >= PROGRESS_UPTIME);
        let progress =
            conn.acked_since_up || (up_a_while && (!self.qos1 || conn.inflight.is_empty()));
        conn.losses_in_a_row = if progress {
            1
        } else {
            conn.losses_in_a_row + 1
        };
        let flapping = conn.losses_in_a_row >= MAX_LOSSES_WITHOUT_PROGRESS;
        let takeover = self.takeover(&kind, was_up);
        let within = self.takeover_soon();
        let conn = &mut self.conns[c as usize];
        let soon = conn
            .up_at
            .is_some_and(|t| now.saturating_duration_since(t) < within);
        // Taken over again shortly after it came back from a takeover: another client keeps
        // taking this client id, and coming back would take it from that client in turn.
        // Found now, it takes the id back once more, so that the other client sees the
        // same (see `crate::takeover`); found before, it gives up.
        let (in_use, newly_in_use) = match conn.id_watch.lost(takeover, soon) {
            crate::takeover::Loss::Reconnect => (false, false),
            crate::takeover::Loss::InUse { newly } => (true, newly),
        };
        // A likely takeover counts once the broker takes the reconnect at once (see
        // `on_connack`), or now when the pattern names the client id in use.
        if let Some(how) = takeover.filter(|h| *h == Takeover::Said || in_use) {
            self.stats.conns.takeovers += 1;
            self.shared.collisions.taken_over(conn.index, how);
        }
        if newly_in_use {
            self.stats.conns.client_id_in_use += 1;
            self.stats.conns.first_in_use.get_or_insert(conn.index);
            self.shared.collisions.in_use(conn.index);
        }
        let gives_up_the_id = in_use && !newly_in_use;
        let reconnect = self.s.reconnect.is_some()
            && was_up
            && needed
            && !flapping
            && !gives_up_the_id
            && self.phase != WorkerPhase::Done
            && !self.shared.control.abort.load(Ordering::Relaxed);
        let conn = &mut self.conns[c as usize];
        let lost = crate::error::Lost {
            takeover,
            ..conn.lost(kind, now)
        };
        conn.tls = None;
        conn.close_notify_sent = false;
        if let Some(mut sock) = conn.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        if reconnect {
            conn.take_replay(self.qos1);
            conn.inbuf.clear();
            conn.ping = None;
            conn.blocked = false;
            conn.watch_write = false;
            conn.shut_write = false;
            conn.generation += 1;
            conn.down_since = Some(now);
            conn.reconnect_attempt = 1;
            self.up = self.up.saturating_sub(1);
            let first = !std::mem::replace(&mut conn.lost_before, true);
            self.stats.conns.record_loss(conn.index, lost, first);
            let r = self.s.reconnect.as_ref().expect("reconnect is on");
            let (lo, hi) = (r.backoff_min, r.backoff_max);
            let delay = self.backoff(lo, hi, 1);
            let conn = &mut self.conns[c as usize];
            conn.phase = Phase::Backoff;
            let gen = conn.generation;
            self.timers
                .push(Reverse((now + delay, TimerKind::Retry, c, gen)));
            return;
        }
        if self.s.reconnect.is_some() && (was_up && (needed || !self.qos1) || reset_closing) {
            // Given up: its devices' points stay unsent, failed or dropped. At QoS 0 a
            // connection that ends lost is as bad with nothing left to send: what it wrote
            // last may never have been read.
            self.stats.conns.down_at_end += 1;
            self.stats.conns.flapping += u64::from(flapping);
            conn.replay = None;
        }
        // Unwritten messages stay enqueued-not-sent (unsent); written and unacknowledged
        // ones stay sent-not-acked (failed). Nothing to move: the counts already say it.
        conn.out.abandon().for_each(drop);
        conn.inflight.abandon().for_each(drop);
        conn.phase = Phase::Done;
        conn.generation += 1;
        self.done_conns += 1;
        self.up = self.up.saturating_sub(1);
        let first = !std::mem::replace(&mut conn.lost_before, true);
        self.stats.conns.record_loss(conn.index, lost, first);
        self.devices_gone(c);
    }

    /// Whether losing a connection this way means another client took its client id.
    fn takeover(&self, kind: &LostKind, was_up: bool) -> Option<Takeover> {
        // Under 3.1.1 a takeover only closes the socket, and so do MQTT 5 brokers that do
        // not send the DISCONNECT (Mosquitto 2.0): an orderly close, after the broker read
        // all we sent. A broker that refuses a packet (too large) closes in the middle of
        // it, with our bytes unread: a reset, not taken for a takeover. A closed fleet
        // connection is more likely its broker going away; one connection's client id is
        // the same in every copy of the run (a preset's `1`, or `loadgen-{i}` with one
        // device).
        let one_id = self.s.connections == 1 || !self.s.conn.client_id.has_index();
        match kind {
            LostKind::TakenOver => Some(Takeover::Said),
            LostKind::Closed if was_up && one_id => Some(Takeover::Likely),
            _ => None,
        }
    }

    /// How soon after its connect a takeover counts as "shortly after" (see
    /// [`crate::takeover`]).
    fn takeover_soon(&self) -> Duration {
        let backoff = self
            .s
            .reconnect
            .as_ref()
            .map_or(Duration::ZERO, |r| r.backoff_min);
        crate::takeover::soon(backoff)
    }

    /// Closes a connection that is not up (generation ended during the ramp) or that has
    /// finished its goodbye.
    fn close(&mut self, c: u32) {
        if matches!(
            self.conns[c as usize].phase,
            Phase::Connecting | Phase::AwaitConnack
        ) {
            self.connect_ended();
        }
        let conn = &mut self.conns[c as usize];
        if let Some(t) = conn.down_since.take() {
            // Lost, and the run ended before it came back.
            self.stats.conns.down_at_end += 1;
            self.stats.conns.disconnected += t.elapsed();
            conn.replay = None;
        }
        if conn.phase == Phase::Up || conn.phase == Phase::Closing {
            self.up = self.up.saturating_sub(1);
        }
        conn.tls = None;
        conn.close_notify_sent = false;
        if let Some(mut sock) = conn.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        conn.out.abandon().for_each(drop);
        conn.inflight.abandon().for_each(drop);
        conn.phase = Phase::Done;
        conn.generation += 1;
        self.done_conns += 1;
    }

    // ----- timers ---------------------------------------------------------------------

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse((at, kind, c, gen))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let conn = &self.conns[c as usize];
            if conn.generation != gen {
                continue;
            }
            match kind {
                TimerKind::ConnectTimeout => {
                    if matches!(conn.phase, Phase::Connecting | Phase::AwaitConnack) {
                        self.fail_attempt(c, ConnectFailure::Timeout, now);
                    }
                }
                TimerKind::Retry => {
                    if conn.phase == Phase::Backoff {
                        self.conns[c as usize].phase = Phase::Idle;
                        self.ramp.push_front(c);
                    }
                }
                TimerKind::KeepAlive => self.keep_alive(c, now),
                TimerKind::CloseLinger => {
                    if conn.phase == Phase::Closing {
                        self.close(c);
                    }
                }
            }
        }
    }

    fn keep_alive(&mut self, c: u32, now: Instant) {
        let conn = &mut self.conns[c as usize];
        let ka = conn.keep_alive;
        if conn.phase != Phase::Up {
            return;
        }
        let gen = conn.generation;
        let next = match conn.ping {
            // Still queued behind our writes: lost only when the writes stopped moving (the
            // broker stopped reading), not while a busy broker reads them slowly.
            Some((_, _, false)) if now.saturating_duration_since(conn.last_out) >= ka => {
                return self.lose(c, LostKind::WriteStalled, now);
            }
            Some((_, _, false)) => conn.last_out + ka,
            // Written an interval ago, and nothing read since: the broker stopped answering.
            Some((written, _, true)) if now >= written + ka => {
                if conn.last_in <= written {
                    return self.lose(c, LostKind::KeepAlive, now);
                }
                conn.ping = None; // it answered with something else first
                now + ka
            }
            Some((written, _, true)) => written + ka,
            // Silent either way for an interval: MQTT wants a packet from us, and we want to
            // know the broker is there (a stopped broker acknowledges nothing while the
            // socket still takes our writes).
            None if now >= conn.last_out.min(conn.last_in) + ka => {
                conn.out.push_control(&packets::PINGREQ);
                let end = conn.out.written() + conn.out.bytes() as u64;
                conn.ping = Some((now, end, false));
                self.mark_dirty(c);
                now + ka
            }
            None => conn.last_out.min(conn.last_in) + ka,
        };
        self.timers
            .push(Reverse((next, TimerKind::KeepAlive, c, gen)));
    }

    // ----- generation -----------------------------------------------------------------

    /// Generates what is due; returns whether more could be generated at once (unpaced)
    /// and when the next message falls due (paced).
    fn generate(&mut self, now: Instant) -> (bool, Option<Instant>) {
        if self.devices.is_empty() {
            return (false, None);
        }
        let anchor = self.anchor.unwrap_or(now);
        if now < anchor {
            return (false, Some(anchor)); // --start-delay
        }
        if !self.paced {
            return (self.generate_unpaced(now), None);
        }
        let n_dev = self.devices.len() as u32;
        // A cursor rounds behind (a rate beyond what the connections take) jumps to the
        // round now due: the devices keep what they owe, and a pass never walks slot by slot
        // through rounds that are long past.
        let now_slot = self
            .s
            .schedule
            .first_slot_at(self.d0, now.saturating_duration_since(anchor));
        if now_slot > self.cur_k + 1 {
            self.cur_k = now_slot - 1;
            self.cur_dl = 0;
        }
        let mut steps = 0usize;
        loop {
            if self.live_devices == 0 {
                return (false, None);
            }
            steps += 1;
            if steps > PASS_STEPS {
                return (true, None); // events and signals get their turn
            }
            let dl = self.cur_dl;
            let d = self.d0 + dl as u64;
            let dev = self.devices[dl as usize];
            if matches!(dev.state, DevState::Done | DevState::Owing) {
                self.advance(n_dev);
                continue;
            }
            let points = self.s.schedule.next_points(d, dev.sent);
            let due = self
                .s
                .schedule
                .due(d, self.cur_k, points)
                .unwrap_or_default();
            if self.s.schedule.is_past_end(due) {
                // Its schedule is over (and every later slot's too). What it still owes was
                // due before the end: it goes out as its connection drains.
                self.advance(n_dev);
                self.live_devices -= 1;
                if dev.state == DevState::Active {
                    // Owing until fill finds nothing more before the end.
                    self.devices[dl as usize].state = DevState::Owing;
                    self.owing += 1;
                    self.conns[dev.conn as usize].owing += 1;
                    self.fill(dl, u64::MAX, anchor);
                } else {
                    self.devices[dl as usize].state = DevState::Done;
                }
                continue;
            }
            let at = anchor + due;
            if at > now {
                return (false, Some(at));
            }
            let k = self.cur_k;
            self.advance(n_dev);
            if dev.state == DevState::Active {
                self.fill(dl, k, anchor);
            }
        }
    }

    /// A device whose quota is all generated is done at once, not when its next slot comes.
    fn done_if_spent(&mut self, dl: u32) {
        let d = self.d0 + dl as u64;
        let dev = self.devices[dl as usize];
        if self.s.schedule.next_points(d, dev.sent) == 0 {
            self.finish(dl);
        }
    }

    /// Device `dl` will generate no more: Active or Owing becomes Done.
    fn finish(&mut self, dl: u32) {
        let dev = self.devices[dl as usize];
        match dev.state {
            DevState::Active => self.live_devices -= 1,
            DevState::Owing => {
                self.owing -= 1;
                let conn = &mut self.conns[dev.conn as usize];
                conn.owing -= 1;
                if conn.owing == 0 && self.phase != WorkerPhase::Generating {
                    self.drain_check.push(dev.conn);
                }
            }
            DevState::Waiting | DevState::Done => return,
        }
        self.devices[dl as usize].state = DevState::Done;
    }

    /// Devices that still owe slots drop them: a stop, or the drain's deadline.
    fn drop_owing(&mut self) {
        if self.owing == 0 {
            return;
        }
        for dl in 0..self.devices.len() as u32 {
            if self.devices[dl as usize].state == DevState::Owing {
                self.stats.counts.points_dropped += self.points_left(dl);
                self.finish(dl);
            }
        }
    }

    fn advance(&mut self, n_dev: u32) {
        self.cur_dl += 1;
        if self.cur_dl >= n_dev {
            self.cur_dl = 0;
            self.cur_k += 1;
        }
    }

    /// Generates device `dl`'s slots up to `upto` (those it owes first), while its
    /// connection has room.
    fn fill(&mut self, dl: u32, upto: u64, anchor: Instant) {
        let d = self.d0 + dl as u64;
        loop {
            let dev = self.devices[dl as usize];
            let owing = dev.state == DevState::Owing;
            if !(dev.state == DevState::Active || owing) || dev.next_slot > upto {
                return;
            }
            let points = self.s.schedule.next_points(d, dev.sent);
            if points == 0 {
                return self.finish(dl);
            }
            let due = self
                .s
                .schedule
                .due(d, dev.next_slot, points)
                .unwrap_or_default();
            if self.s.schedule.is_past_end(due) {
                if owing {
                    self.finish(dl); // it owes nothing more
                }
                return; // an Active one: the cursor ends it
            }
            let c = dev.conn as usize;
            if !self.conns[c].has_room(self.s.publish.max_queued, self.qos1) {
                self.conns[c].blocked |= self.conns[c].out.queued() > 0;
                return; // owed until the connection drains
            }
            if !self.emit(dl, points, anchor + due) {
                return;
            }
            self.devices[dl as usize].next_slot += 1;
            self.done_if_spent(dl);
        }
    }

    /// Round robin over the devices, one message each while their connections have room.
    fn generate_unpaced(&mut self, now: Instant) -> bool {
        if self.unpaced_idle {
            return false;
        }
        let n_dev = self.devices.len() as u32;
        let mut idle = 0u32;
        let mut made = 0usize;
        while self.live_devices > 0 && idle < n_dev {
            let dl = self.cur_dl;
            self.advance(n_dev);
            let dev = self.devices[dl as usize];
            if dev.state != DevState::Active
                || !self.conns[dev.conn as usize].has_room(self.s.publish.max_queued, self.qos1)
            {
                idle += 1;
                continue;
            }
            let d = self.d0 + dl as u64;
            let points = self.s.schedule.next_points(d, dev.sent);
            if points == 0 {
                self.devices[dl as usize].state = DevState::Done;
                self.live_devices -= 1;
                continue;
            }
            if !self.emit(dl, points, now) {
                idle += 1;
                continue;
            }
            self.devices[dl as usize].next_slot += 1;
            self.done_if_spent(dl);
            idle = 0;
            made += 1;
            if made >= PASS_MESSAGES {
                return true;
            }
        }
        self.unpaced_idle = idle >= n_dev;
        false
    }

    /// Encodes one message of device `dl` into its connection's outbox.
    fn emit(&mut self, dl: u32, points: u64, scheduled: Instant) -> bool {
        let d = self.d0 + dl as u64;
        let Worker {
            devices,
            conns,
            producer,
            topic,
            stats,
            s,
            dirty,
            ..
        } = self;
        let props = s
            .conn
            .mqtt5
            .as_ref()
            .map_or(&[][..], |v5| &v5.publish_properties[..]);
        let dev = &mut devices[dl as usize];
        let conn = &mut conns[dev.conn as usize];
        let points = points.min(u32::MAX as u64) as u32;
        let pkid = if self.qos1 {
            match conn.inflight.issue(scheduled, points) {
                Some(id) => Some(id),
                None => return false,
            }
        } else {
            None
        };
        topic.clear();
        producer.topic(d, topic);
        let anchor = self.anchor.unwrap_or(scheduled);
        let ts_us = self.wall_anchor_us + micros(scheduled.saturating_duration_since(anchor));
        let max_payload = s.publish.max_payload;
        let first_seq = dev.sent;
        let buf = conn
            .out
            .buffer(packets::publish_overhead(topic.len(), props.len()) + max_payload);
        let bytes = packets::append_publish(buf, topic, pkid, props, max_payload, |b| {
            producer.payload(d, first_seq, points, ts_us, b)
        });
        let bytes = bytes.min(u32::MAX as usize) as u32;
        let span = conn.out.seal(MsgMeta {
            scheduled,
            points,
            bytes,
            pkid: pkid.unwrap_or(0),
            resend: false,
        });
        if pkid.is_some() {
            conn.inflight.place_last(span, bytes);
        }
        conn.largest_message = conn.largest_message.max(bytes);
        dev.sent += points as u64;
        stats.counts.points_enqueued += points as u64;
        stats.counts.messages_enqueued += 1;
        // A connection waiting for writability is not tried again: each try would be a
        // failed write.
        let big = conn.out.bytes() >= FLUSH_BYTES && !conn.blocked;
        if !conn.dirty {
            conn.dirty = true;
            dirty.push(dev.conn);
        }
        if big {
            let c = dev.conn;
            self.flush(c, Instant::now());
        }
        true
    }

    /// After a connection drained (or acknowledgements freed its window), its devices
    /// generate the slots they owe.
    fn catch_up(&mut self, c: u32) {
        if !self.paced {
            return;
        }
        let Some(anchor) = self.anchor else { return };
        let generating = self.phase == WorkerPhase::Generating;
        if !generating && self.conns[c as usize].owing == 0 {
            return;
        }
        let devices = self.conns[c as usize].devices.clone();
        for dl in devices {
            if generating {
                if let Some(last) = self.passed_slot(dl) {
                    self.fill(dl, last, anchor);
                }
            } else if self.devices[dl as usize].state == DevState::Owing {
                self.fill(dl, u64::MAX, anchor);
            }
        }
    }

    // ----- writing and reading --------------------------------------------------------

    fn mark_dirty(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(c);
        }
    }

    fn flush_dirty(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for &c in &dirty {
            let conn = &mut self.conns[c as usize];
            conn.dirty = false;
            // `blocked` with nobody watching writability: the outbox was full (its devices
            // wait for room), not the socket. Flushing it is what makes room.
            if !conn.blocked || !conn.watch_write {
                self.flush(c, now);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// Writes what connection `c` has waiting; counts every message that went out whole.
    fn flush(&mut self, c: u32, now: Instant) {
        let conn = &mut self.conns[c as usize];
        let records = conn.tls.as_ref().is_some_and(|t| t.wants_write());
        if conn.sock.is_some() && conn.out.is_empty() && !records {
            // Nothing to write: a connection that was full has room for what its devices owe.
            if std::mem::replace(&mut conn.blocked, false) {
                self.catch_up(c);
            }
            return;
        }
        let Worker {
            conns,
            stats,
            anchor,
            ..
        } = self;
        let conn = &mut conns[c as usize];
        let Some(sock) = conn.sock.as_mut() else {
            return;
        };
        if conn.out.is_empty() && !records {
            conn.blocked = false;
            return;
        }
        let before = conn.out.written();
        let paced = self.paced;
        let first_write = &mut conn.first_write;
        let mut io = tls::Io {
            sock,
            tls: conn.tls.as_deref_mut(),
        };
        let result = conn.out.flush(&mut io, |m| {
            if m.resend {
                // Counted when first written, on the connection that was lost.
                stats.counts.messages_resent += 1;
                return;
            }
            // Only messages count for the run's first and last write, not control packets
            // (the DISCONNECT of the drain).
            first_write.get_or_insert(now);
            if stats.first_write.is_none() {
                stats.first_write = Some(now);
            }
            stats.last_write = Some(now);
            stats.counts.points_sent += m.points as u64;
            stats.counts.messages_sent += 1;
            stats.counts.bytes_sent += m.bytes as u64;
            if paced {
                let lag = now.saturating_duration_since(m.scheduled);
                crate::stats::record_clamped(
                    &mut stats.histos.lag_us,
                    micros(lag),
                    &mut stats.counts.lag_clamped,
                );
                if let Some(a) = anchor {
                    let second = (now.saturating_duration_since(*a).as_secs() as usize)
                        .min(LAG_SECONDS_KEPT - 1);
                    if stats.lag_max_ms.len() <= second {
                        stats.lag_max_ms.resize(second + 1, 0);
                    }
                    let ms = lag.as_millis().min(u32::MAX as u128) as u32;
                    let slot = &mut stats.lag_max_ms[second];
                    *slot = (*slot).max(ms);
                }
            }
        });
        if conn.out.written() > before {
            conn.last_out = now;
            self.unpaced_idle = false; // the outbox has room again
            if let Some((_, end, false)) = conn.ping {
                if conn.out.written() >= end {
                    conn.ping = Some((now, end, true)); // the broker's interval starts now
                }
            }
        }
        // Through TLS, the outbox is out only once rustls's records are.
        let result = match (result, conn.tls.as_deref_mut()) {
            (Ok(Flushed::All), Some(t)) => match tls::push(t, sock) {
                Ok(true) => Ok(Flushed::All),
                Ok(false) => Ok(Flushed::Blocked),
                Err(e) => Err(e),
            },
            (r, _) => r,
        };
        match result {
            Ok(Flushed::All) => {
                let was_blocked = conn.blocked;
                conn.blocked = false;
                conn.out.trim(self.keep_buffer);
                if conn.watch_write && conn.phase != Phase::Connecting {
                    let r = self.poll.registry().reregister(
                        sock,
                        Token(c as usize),
                        Interest::READABLE,
                    );
                    conn.watch_write = r.is_err();
                }
                if was_blocked {
                    self.catch_up(c);
                }
                if self.phase != WorkerPhase::Generating {
                    self.drain_check.push(c);
                }
            }
            Ok(Flushed::Blocked) => {
                conn.blocked = true;
                if !conn.watch_write {
                    let r = self.poll.registry().reregister(
                        sock,
                        Token(c as usize),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    conn.watch_write = r.is_ok();
                }
            }
            Err(e) => self.io_error(c, &e, now),
        }
    }

    /// A socket error on connection `c`, in whatever phase it is.
    fn io_error(&mut self, c: u32, e: &io::Error, now: Instant) {
        match self.conns[c as usize].phase {
            Phase::Connecting | Phase::AwaitConnack => {
                self.fail_attempt(c, ConnectFailure::of_io(e), now)
            }
            Phase::Up => self.lose(c, LostKind::of_io(e), now),
            Phase::Closing if e.kind() == io::ErrorKind::ConnectionReset => {
                // A reset after our DISCONNECT: the broker had dropped us before it read
                // everything we wrote.
                self.lose(c, LostKind::of_io(e), now)
            }
            Phase::Closing => self.close(c),
            _ => {}
        }
    }

    fn on_readable(&mut self, c: u32, now: Instant) {
        if self.conns[c as usize].tls.is_some() {
            return self.on_readable_tls(c, now);
        }
        loop {
            let conn = &mut self.conns[c as usize];
            let Some(sock) = conn.sock.as_mut() else {
                return;
            };
            match sock.read(&mut self.read_buf) {
                Ok(0) => {
                    return match conn.phase {
                        Phase::Connecting | Phase::AwaitConnack => {
                            self.fail_attempt(c, ConnectFailure::ClosedBeforeConnack, now)
                        }
                        Phase::Up => self.lose(c, LostKind::Closed, now),
                        Phase::Closing => self.close(c),
                        _ => {}
                    };
                }
                Ok(n) => {
                    if !self.take_bytes(c, n, now) {
                        return;
                    }
                    if n < self.read_buf.len() {
                        // A short read emptied the socket; more data is a new edge.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.io_error(c, &e, now),
            }
        }
    }

    /// [`Worker::on_readable`] through TLS: records in, plaintext to the framing, and the
    /// handshake's own records out.
    fn on_readable_tls(&mut self, c: u32, now: Instant) {
        loop {
            let Worker {
                conns, read_buf, ..
            } = self;
            let conn = &mut conns[c as usize];
            let (Some(sock), Some(t)) = (conn.sock.as_mut(), conn.tls.as_deref_mut()) else {
                return;
            };
            let got = tls::read(t, sock, read_buf);
            let records = t.wants_write();
            match got {
                Ok(tls::Got::Bytes(0)) => {
                    if records {
                        self.flush(c, now);
                    }
                    return;
                }
                Ok(tls::Got::Bytes(n)) => {
                    if !self.take_bytes(c, n, now) {
                        return;
                    }
                }
                Ok(tls::Got::Closed) => {
                    return match self.conns[c as usize].phase {
                        Phase::Connecting | Phase::AwaitConnack => {
                            self.fail_attempt(c, ConnectFailure::ClosedBeforeConnack, now)
                        }
                        Phase::Up => self.lose(c, LostKind::Closed, now),
                        Phase::Closing => self.close(c),
                        _ => {}
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return match self.conns[c as usize].phase {
                        Phase::Connecting | Phase::AwaitConnack => {
                            self.fail_attempt(c, ConnectFailure::Tls(e.to_string()), now)
                        }
                        Phase::Up => self.lose(c, LostKind::Other(format!("TLS: {e}")), now),
                        Phase::Closing => self.close(c),
                        _ => {}
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.io_error(c, &e, now),
            }
            if records {
                self.flush(c, now);
            }
        }
    }

    /// Handles the `n` bytes just read into `read_buf`; false when the connection is over.
    fn take_bytes(&mut self, c: u32, n: usize, now: Instant) -> bool {
        self.conns[c as usize].last_in = now;
        if self.conns[c as usize].phase == Phase::AwaitConnack
            && self.conns[c as usize].inbuf.is_empty()
            && self.read_buf[0] != 0x20
        {
            // The first packet of a broker is its CONNACK; anything else is not MQTT.
            self.fail_attempt(c, ConnectFailure::NotMqtt, now);
            return false;
        }
        let mut pending = std::mem::take(&mut self.conns[c as usize].inbuf);
        let from_scratch = pending.is_empty();
        if !from_scratch {
            pending.extend_from_slice(&self.read_buf[..n]);
        }
        let max = self.s.conn.max_packet_size;
        let mut at = 0;
        let total = if from_scratch { n } else { pending.len() };
        let mut ok = true;
        let mut acked = false;
        while at < total {
            let bytes: &[u8] = if from_scratch {
                &self.read_buf[at..n]
            } else {
                &pending[at..]
            };
            match packets::next_packet(bytes, max, self.s.conn.mqtt5.is_some()) {
                Ok(Some((packet, len))) => {
                    at += len;
                    match self.on_packet(c, packet, now) {
                        Some(a) => acked |= a,
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    match self.conns[c as usize].phase {
                        Phase::AwaitConnack => self.fail_attempt(c, ConnectFailure::NotMqtt, now),
                        _ => self.lose(c, LostKind::Other(format!("the broker sent {e}")), now),
                    }
                    return false;
                }
            }
        }
        if ok && at < total {
            let rest = if from_scratch {
                self.read_buf[at..n].to_vec()
            } else {
                pending.drain(..at);
                pending
            };
            self.conns[c as usize].inbuf = rest;
        }
        if acked {
            self.catch_up(c);
        }
        ok
    }

    /// Handles one packet; `Some(acked)` while the connection goes on.
    fn on_packet(&mut self, c: u32, packet: Incoming, now: Instant) -> Option<bool> {
        let phase = self.conns[c as usize].phase;
        match (phase, packet) {
            (
                Phase::AwaitConnack,
                Incoming::ConnAck {
                    code,
                    session_present,
                    limits,
                },
            ) => {
                if code == 0 {
                    if let Some(f) = self.unusable(&limits) {
                        self.fail_attempt(c, f, now);
                        return None;
                    }
                    // MQTT 5: the broker's Server Keep Alive replaces ours.
                    self.conns[c as usize].keep_alive = limits
                        .server_keep_alive
                        .map_or(self.s.conn.keep_alive, |s| Duration::from_secs(s.into()));
                }
                let receive_maximum = limits.receive_maximum;
                if code == 0 {
                    if let Some(rm) = receive_maximum {
                        let r = &mut self.stats.conns.receive_maximum;
                        *r = Some(r.map_or(rm, |x| x.min(rm)));
                    }
                }
                if code == 0 && self.qos1 {
                    // MQTT 5: never more unacknowledged than the broker takes.
                    if self.conns[c as usize].inflight.limit(receive_maximum) {
                        self.stats.conns.window_clamped += 1;
                    }
                }
                self.on_connack(c, code, session_present, now);
                (self.conns[c as usize].phase == Phase::Up).then_some(false)
            }
            (Phase::AwaitConnack, _) => {
                self.fail_attempt(c, ConnectFailure::NotMqtt, now);
                None
            }
            (Phase::Up | Phase::Closing, Incoming::PubAck(id, reason)) => {
                self.on_puback(c, id, reason, now);
                Some(true)
            }
            (_, Incoming::PingResp) => {
                self.conns[c as usize].ping = None;
                Some(false)
            }
            (Phase::Closing, Incoming::Disconnect(reason)) => {
                // Our DISCONNECT is out and everything was acknowledged: a broker that says
                // goodbye first is no loss. (Its reason still counts: at QoS 0 a refusal
                // of a packet fails the run.)
                if reason != 0 {
                    *self.stats.conns.disconnects.entry(reason).or_default() += 1;
                }
                self.close(c);
                None
            }
            (Phase::Up, Incoming::Disconnect(reason)) => {
                // MQTT 5: the broker says why it ends the connection; the close follows.
                *self.stats.conns.disconnects.entry(reason).or_default() += 1;
                if self.qos1 && crate::error::refuses_a_packet(reason) {
                    // The broker reads in order and acknowledged all it took before: the
                    // oldest message in flight is the one it refused. Rejected, not resent.
                    let oldest = self.conns[c as usize]
                        .inflight
                        .iter()
                        .next()
                        .map(|a| a.pkid);
                    if let Some(id) = oldest {
                        let conn = &self.conns[c as usize];
                        let before = (conn.acked_any, conn.acked_since_up);
                        self.on_puback(c, id, reason, now);
                        // No PUBACK came, and no progress: a loss per refused message ends
                        // in the give-up.
                        let conn = &mut self.conns[c as usize];
                        (conn.acked_any, conn.acked_since_up) = before;
                    }
                }
                let kind = if reason == crate::error::SESSION_TAKEN_OVER {
                    LostKind::TakenOver
                } else {
                    LostKind::Other(format!(
                        "the broker sent DISCONNECT with reason 0x{reason:02x} ({})",
                        crate::error::reason_name(reason)
                    ))
                };
                self.lose(c, kind, now);
                None
            }
            _ => Some(false),
        }
    }

    /// A PUBACK for `id` with `reason` (MQTT 5; 0 under 3.1.1).
    fn on_puback(&mut self, c: u32, id: u16, reason: u8, now: Instant) {
        let conn = &mut self.conns[c as usize];
        match conn.inflight.ack(id) {
            Some(a) => {
                conn.acked_any = true;
                conn.acked_since_up = true;
                if reason >= 0x80 {
                    // MQTT 5: the broker answered, and refused (not authorized, too
                    // large, quota): rejected, not acknowledged, not failed.
                    self.stats.counts.points_rejected += a.points as u64;
                    self.stats.counts.messages_rejected += 1;
                    *self.stats.rejected_by_reason.entry(reason).or_default() += 1;
                } else {
                    self.stats.counts.points_acked += a.points as u64;
                    self.stats.counts.messages_acked += 1;
                    crate::stats::record_clamped(
                        &mut self.stats.histos.ack_us,
                        micros(now.saturating_duration_since(a.scheduled)),
                        &mut self.stats.counts.latency_clamped,
                    );
                }
                self.stats.last_ack = Some(now);
                if conn.retaining {
                    let upto = conn.inflight.first_start().unwrap_or(conn.out.end());
                    conn.out.release(upto);
                }
                if conn.inflight.is_empty() {
                    conn.inflight.trim();
                    conn.out.trim(self.keep_buffer);
                    if self.phase != WorkerPhase::Generating {
                        self.drain_check.push(c);
                    }
                }
                self.unpaced_idle = false;
            }
            None if conn.inflight.was_issued(id) => self.stats.counts.duplicate_acks += 1,
            None => self.stats.counts.acks_unknown_id += 1,
        }
    }

    /// What in an accepting MQTT 5 CONNACK rules this run out: a protocol error, QoS 0
    /// only for a QoS 1 run, or a Maximum Packet Size our largest message exceeds (a clear
    /// error before anything is sent, not a DISCONNECT 0x95 per message).
    fn unusable(&self, limits: &packets::ConnackLimits) -> Option<ConnectFailure> {
        if let Some(what) = limits.violation() {
            return Some(ConnectFailure::BrokerProtocol(what));
        }
        if self.qos1 && limits.maximum_qos == Some(0) {
            return Some(ConnectFailure::Limit(BrokerLimit::QosZeroOnly));
        }
        let limit = limits.maximum_packet_size?;
        let props = self
            .s
            .conn
            .mqtt5
            .as_ref()
            .map_or(0, |v5| v5.publish_properties.len());
        let p = &self.s.publish;
        let largest = (packets::publish_overhead(p.max_topic, props) + p.max_payload) as u64;
        (largest > limit as u64).then_some(ConnectFailure::Limit(BrokerLimit::PacketSize {
            limit,
            largest,
        }))
    }

    // ----- the end --------------------------------------------------------------------

    /// During the drain: a connection with nothing left to write or acknowledge says
    /// DISCONNECT and waits for the broker to close; the worker is done when all are.
    fn drain_step(&mut self, now: Instant) {
        if self.owing > 0 && self.shared.control.stop.load(Ordering::Relaxed) {
            self.drop_owing(); // a stop: what was owed is not written any more
        }
        let check = std::mem::take(&mut self.drain_check);
        for &c in &check {
            let conn = &mut self.conns[c as usize];
            match conn.phase {
                Phase::Up if conn.out.is_empty() && conn.inflight.is_empty() && conn.owing == 0 => {
                    conn.out.push_control(&packets::DISCONNECT);
                    conn.phase = Phase::Closing;
                    let gen = conn.generation;
                    self.timers.push(Reverse((
                        now + CLOSE_LINGER,
                        TimerKind::CloseLinger,
                        c,
                        gen,
                    )));
                    self.flush(c, now);
                    self.shut_write(c);
                }
                Phase::Closing => self.shut_write(c),
                _ => {}
            }
        }
        let mut check = check;
        check.clear();
        if self.drain_check.is_empty() {
            self.drain_check = check; // keep the allocation
        }
        if self.done_conns >= self.conns.len() {
            self.phase = WorkerPhase::Done;
        }
    }

    /// Once the DISCONNECT is written, shuts our side for writing (once): the broker's EOF
    /// then says it read everything, and a reset says it did not.
    fn shut_write(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        if conn.shut_write || conn.unflushed() {
            return;
        }
        if let Some(sock) = conn.sock.as_mut() {
            if let Some(t) = conn.tls.as_deref_mut() {
                // rustls's last records, then close_notify, must be out before the FIN.
                if !conn.close_notify_sent {
                    t.send_close_notify();
                    conn.close_notify_sent = true;
                }
                match tls::push(t, sock) {
                    Ok(true) => {}
                    Ok(false) => {
                        // The flush that finishes it puts us back on the drain list.
                        conn.blocked = true;
                        if !conn.watch_write {
                            let r = self.poll.registry().reregister(
                                sock,
                                Token(c as usize),
                                Interest::READABLE | Interest::WRITABLE,
                            );
                            conn.watch_write = r.is_ok();
                        }
                        return;
                    }
                    Err(_) => {}
                }
            }
            let _ = sock.shutdown(std::net::Shutdown::Write);
        }
        conn.shut_write = true;
    }

    /// The drain deadline passed: what is left is abandoned and counted as it stands.
    fn cut_short(&mut self, _now: Instant) {
        self.drop_owing();
        for c in 0..self.conns.len() as u32 {
            let conn = &self.conns[c as usize];
            if conn.phase == Phase::Done {
                continue;
            }
            if conn.phase != Phase::Closing || conn.unflushed() {
                self.stats.cut_short = true;
            }
            self.close(c);
        }
        self.phase = WorkerPhase::Done;
    }

    fn abandon_all(&mut self, now: Instant) {
        if self.stats.generation_end.is_none() {
            self.stats.generation_end = Some(now);
        }
        self.drop_owing();
        for c in 0..self.conns.len() as u32 {
            if self.conns[c as usize].phase != Phase::Done {
                if !self.conns[c as usize].out.is_empty()
                    || !self.conns[c as usize].inflight.is_empty()
                {
                    self.stats.cut_short = true;
                }
                self.close(c);
            }
        }
        self.phase = WorkerPhase::Done;
    }

    /// Copies the histograms to where [`crate::FleetHandle::live_histos`] reads them.
    fn share_histos(&self) {
        if !self.s.live_histograms {
            return;
        }
        if let Ok(mut h) = self.shared.live_histos[self.id].lock() {
            h.ack_us.clone_from(&self.stats.histos.ack_us);
            h.lag_us.clone_from(&self.stats.histos.lag_us);
            h.connect_us.clone_from(&self.stats.histos.connect_us);
        }
    }

    fn publish_live(&mut self, now: Instant) {
        if self.s.live_histograms
            && now.saturating_duration_since(self.histos_shared) >= HISTOS_EVERY
        {
            self.histos_shared = now;
            self.share_histos();
        }
        let l: &Live = &self.shared.live[self.id];
        let c = &self.stats.counts;
        let r = Ordering::Relaxed;
        l.points_enqueued.store(c.points_enqueued, r);
        l.points_sent.store(c.points_sent, r);
        l.messages_sent.store(c.messages_sent, r);
        l.points_acked.store(c.points_acked, r);
        l.messages_acked.store(c.messages_acked, r);
        l.bytes_sent.store(c.bytes_sent, r);
        l.points_dropped
            .store(c.points_dropped + c.points_dropped_offline, r);
        l.points_rejected.store(c.points_rejected, r);
        l.reconnects.store(self.stats.conns.reconnects, r);
        l.takeovers.store(self.stats.conns.takeovers, r);
        l.client_id_in_use
            .store(self.stats.conns.client_id_in_use, r);
        l.connected.store(self.stats.conns.connected, r);
        l.failed.store(self.stats.conns.failed, r);
        l.lost.store(self.stats.conns.lost, r);
        l.up.store(self.up, r);
        if self.qos1 {
            l.inflight.store(
                c.messages_enqueued
                    .saturating_sub(c.messages_acked)
                    .saturating_sub(c.messages_rejected),
                r,
            );
        }
    }

    // ----- waiting --------------------------------------------------------------------

    fn next_wake(&self, now: Instant, next_due: Option<Instant>) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut consider = |t: Instant| wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
        if let Some(due) = next_due {
            // Dense schedules coalesce to the tick; sparse ones wake on time.
            consider(if self.precise {
                due
            } else {
                due.max(self.last_pass + self.tick)
            });
        }
        if let Some(Reverse((at, ..))) = self.timers.peek() {
            consider(*at);
        }
        if !self.ramp.is_empty() {
            if !self.slots_full {
                consider(self.next_token.max(now));
            } else if self.connecting == 0 {
                // Every slot is another worker's: none of ours will wake us when one frees.
                consider(now + Duration::from_millis(1));
            }
        }
        if let WorkerPhase::Draining { deadline } = self.phase {
            consider(deadline);
        }
        if let (WorkerPhase::Generating, false, Some(a), Some(d)) = (
            self.phase,
            self.paced,
            self.anchor,
            self.s.schedule.duration(),
        ) {
            consider(a + d); // an unpaced run ends by the clock, blocked or not
        }
        wake
    }

    /// Waits for events until `wake` (none: until an event or a wake-up from outside).
    fn wait(&mut self, now: Instant, wake: Option<Instant>) -> io::Result<()> {
        let timeout = match wake {
            None => None,
            Some(t) if t <= now => Some(Duration::ZERO),
            Some(t) if self.precise => {
                let left = t - now;
                if left > SPIN_WINDOW {
                    self.timer.arm(left - SPIN_WINDOW)?;
                    None
                } else {
                    Some(Duration::ZERO)
                }
            }
            Some(t) => Some(t - now),
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let events: Vec<(Token, bool, bool)> = self
            .events
            .iter()
            .map(|e| {
                (
                    e.token(),
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable() || e.is_error(),
                )
            })
            .collect();
        for (token, readable, writable) in events {
            match token {
                WAKER => {}
                TIMER => self.timer.clear(),
                Token(c) => {
                    let c = c as u32;
                    if c as usize >= self.conns.len() {
                        continue;
                    }
                    if writable {
                        match self.conns[c as usize].phase {
                            Phase::Connecting => self.on_connected_tcp(c, now),
                            // flush() clears `blocked`, and then the devices catch up.
                            Phase::AwaitConnack | Phase::Up | Phase::Closing => self.flush(c, now),
                            _ => {}
                        }
                    }
                    if readable && self.conns[c as usize].sock.is_some() {
                        match self.conns[c as usize].phase {
                            Phase::AwaitConnack | Phase::Up | Phase::Closing => {
                                self.on_readable(c, now)
                            }
                            Phase::Connecting => self.on_connected_tcp(c, now),
                            _ => {}
                        }
                    }
                }
            }
        }
        // A sparse schedule spins the last stretch to its due time.
        if let (true, Some(t)) = (self.precise, wake) {
            while Instant::now() < t && t - Instant::now() <= SPIN_WINDOW {
                if self.shared.control.stop.load(Ordering::Relaxed) {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        Ok(())
    }
}
