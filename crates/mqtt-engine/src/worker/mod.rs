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
//!
//! The stages, one module each, in the order of a turn of the loop:
//! - `ramp`: connects at `--connect-rate`, CONNECT and CONNACK, failed attempts and
//!   retries, losses and reconnects, the close;
//! - `timers`: connect timeouts, keep-alives, retries, the close linger; takeovers told;
//! - `pacing`: the schedule cursor ([`crate::pacer`]) and the devices' messages encoded
//!   into outboxes;
//! - `socket`: writing outboxes (plain or TLS) and reading what the broker sent;
//! - `receive`: a read framed into packets, each the event it is in its connection's phase;
//! - `churn`: held connections (`loadgen conn`): the churn and storm clocks, the outages;
//! - `subscribe`: the subscriber role: SUBSCRIBE after the CONNACK, SUBACK, deliveries to
//!   the [`Consumer`] with PUBACK or the QoS 2 receiver's answers;
//! - `drain`: the end of generation, DISCONNECTs, the deadline;
//! - `live`: the figures the fleet's watcher reads while the run goes on;
//! - `shared`: what the workers of a fleet share.
//!
//! Stages do not call each other back: what a write or a read brings that another stage
//! must act on (an outbox that drained, a window that opened, a socket that failed) is
//! handed back as a `Work` item or a receive `Event`, and this module's loop routes it
//! (`dispatch`, `on_event`). The one call across stages, generation writing an outbox that
//! grew past 64 KiB mid-pass, returns its outcome through the same queue.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::conn::{Conn, Phase, Role};
use crate::error::{BrokerLimit, ConnackCode, ConnectFailure, LostKind, Takeover};
use crate::outbox::{Flushed, MsgMeta};
use crate::pacer::Pacer;
use crate::packets::{self, Incoming};
use crate::settings::{FleetSettings, Qos};
use crate::stats::{micros, Live, Stats, LAG_SECONDS_KEPT};
use crate::sys;
use crate::tls;
use socket::Got;

mod churn;
mod drain;
mod gather;
mod live;
mod pacing;
mod ramp;
mod receive;
mod shared;
mod socket;
mod subscribe;
mod timers;

pub use shared::{Control, Shared};
pub use subscribe::{Consumer, SubStats};

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
    /// Held connections: the worker's churn and storm clocks (connection 0, generation 0:
    /// they belong to no connection).
    Churn,
    Storm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerPhase {
    Generating,
    Draining { deadline: Instant },
    Done,
}

/// What a stage hands back for the loop to route, instead of calling the next stage itself
/// (which made writing re-enter generation: flush -> catch up -> fill -> emit -> flush).
/// Queued with its connection and the connection's generation: work for a connection that
/// was lost or closed meanwhile is dropped.
#[derive(Debug)]
enum Work {
    /// The connection's outbox emptied after it was full: its devices generate the slots
    /// they owe.
    Drained,
    /// Acknowledgements freed room in its window: its devices catch up.
    Acked,
    /// It is back after a loss: what fell due while it was down goes out after the replay.
    Reconnected,
    /// Its socket failed.
    Failed(io::Error),
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
/// Keep-alive timers fall on a 10 ms grid: a fleet's pings go out (and their PINGRESPs come
/// back) in batches, a wake-up each, rather than a wake-up per connection. At most 10 ms
/// late on a keep-alive of at least a second (brokers allow 1.5 intervals).
const KEEP_ALIVE_GRID: Duration = Duration::from_millis(10);

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
    /// The schedule cursor: which device slot comes due next.
    pacer: Pacer,
    /// Devices not Done.
    live_devices: u64,
    ramp: VecDeque<u32>,
    /// This worker's connections awaiting their CONNACK (each holds a fleet-wide slot).
    connecting: usize,
    /// The ramp waits for a slot another worker holds: look again soon.
    slots_full: bool,
    /// The pace of connects: this worker's share of `--connect-rate`.
    tokens: ramp::Tokens,
    timers: BinaryHeap<Reverse<(Instant, TimerKind, u32, u32)>>,
    dirty: Vec<u32>,
    read_buf: Vec<u8>,
    topic: Vec<u8>,
    phase: WorkerPhase,
    anchor: Option<Instant>,
    wall_anchor_us: u64,
    qos: Qos,
    paced: bool,
    /// Sparse schedule: wake on the timerfd and spin the last stretch.
    precise: bool,
    /// Dense schedule: how far due messages may be coalesced.
    tick: Duration,
    last_pass: Instant,
    /// When the histograms were last handed to `shared.live_histos`.
    histos_shared: Instant,
    /// The origin of the keep-alive grid.
    grid_base: Instant,
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
    /// What the stages of this turn handed back, routed by [`Worker::dispatch`]:
    /// (connection, its generation, what happened).
    work: VecDeque<(u32, u32, Work)>,
    /// The readiness of the last poll, copied out of `events` (kept for its allocation).
    ready: Vec<(Token, bool, bool)>,
    /// Held connections: the churn's and the storms' clocks, once generation is anchored.
    churn: Option<churn::ChurnCursor>,
    storm: Option<churn::StormClock>,
    /// Connections down in the open outage.
    down_in_outage: u64,
    /// A subscriber fleet's side: its settings, consumer and connections' state.
    sub: Option<subscribe::Subscribing>,
    /// A subscriber worker's wakeups, gathered at high rates.
    wake_gather: gather::WakeGather,
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
            let retaining = s.publish.qos.acknowledged() && s.reconnect.is_some();
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
        let n_devices = devices.len() as u32;
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
            pacer: Pacer::new(d0, n_devices, now),
            connecting: 0,
            slots_full: false,
            tokens: ramp::Tokens {
                interval: token_interval,
                next: now,
            },
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            read_buf: vec![0u8; READ_BUF],
            topic: Vec::with_capacity(256),
            phase: WorkerPhase::Generating,
            anchor: None,
            wall_anchor_us: 0,
            qos: s.publish.qos,
            paced,
            precise,
            tick,
            last_pass: now,
            histos_shared: now,
            grid_base: now,
            keep_buffer,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
            up: 0,
            done_conns: 0,
            drain_check: Vec::new(),
            unpaced_idle: false,
            owing: 0,
            work: VecDeque::new(),
            ready: Vec::new(),
            churn: None,
            storm: None,
            down_in_outage: 0,
            sub: None,
            wake_gather: gather::WakeGather::new(Instant::now()),
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
            self.dispatch(now);
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
                    self.dispatch(now);
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
                    self.dispatch(now);
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
            // Only a sparse schedule's own due time is worth a spin to the microsecond: a
            // keep-alive or a hold's end is not (10x the CPU of a raw client holding 5,000
            // idle connections, FS3, when every PINGREQ's timer spun).
            let spin = self.precise && wake.is_some() && wake == next_due;
            if let Err(e) = self.wait(now, wake, spin) {
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
        self.pacer.start(anchor);
        self.start_hold(anchor);
        self.wall_anchor_us =
            self.shared.wall_epoch_us + micros(anchor.saturating_duration_since(self.shared.epoch));
    }

    // ----- routing: what the stages hand back -----------------------------------------

    /// Queues `w` for connection `c` (see [`Work`]).
    fn report(&mut self, c: u32, w: Work) {
        let gen = self.conns[c as usize].generation;
        self.work.push_back((c, gen, w));
    }

    /// Whether the last work queued is connection `c`'s failure: generation stops filling
    /// its outbox until the loop has dealt with it.
    fn failing(&self, c: u32) -> bool {
        matches!(self.work.back(), Some((wc, _, Work::Failed(_))) if *wc == c)
    }

    /// Routes what the stages handed back, until nothing is left (catching up may write,
    /// and a write may fail).
    fn dispatch(&mut self, now: Instant) {
        while let Some((c, gen, w)) = self.work.pop_front() {
            if self.conns[c as usize].generation != gen {
                continue; // lost or closed since
            }
            match w {
                Work::Drained | Work::Acked | Work::Reconnected => self.catch_up(c),
                Work::Failed(e) => self.io_error(c, &e, now),
            }
        }
    }

    pub(super) fn flush_dirty(&mut self, now: Instant) {
        let dirty = std::mem::take(&mut self.dirty);
        for &c in &dirty {
            let conn = &mut self.conns[c as usize];
            conn.dirty = false;
            // `blocked` with nobody watching writability: the outbox was full (its devices
            // wait for room), not the socket. Flushing it is what makes room.
            if !conn.blocked || !conn.watch_write {
                self.flush(c, now);
                self.dispatch(now);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty; // keep the allocation
        }
    }

    /// Connection `c` is readable: reads until the socket is empty, each read framed into
    /// packets and each packet's event routed in order.
    fn readable(&mut self, c: u32, now: Instant) {
        let gen = self.conns[c as usize].generation;
        loop {
            let (got, records) = self.read(c);
            self.handshake_done(c, now);
            let more = match got {
                Got::Bytes { n, more } => {
                    if !self.take_bytes(c, n, now) {
                        return self.dispatch(now);
                    }
                    more
                }
                Got::Empty => false,
                Got::Again => true,
                Got::Closed => return self.closed(c, now),
                Got::BadTls(e) => return self.bad_tls(c, &e, now),
                Got::Failed(e) => return self.io_error(c, &e, now),
            };
            // TLS: the handshake's (and alerts') records go out as they come.
            if records {
                self.flush(c, now);
            }
            self.dispatch(now);
            if !more || self.conns[c as usize].generation != gen {
                return;
            }
        }
    }

    /// Handles the `n` bytes just read into `read_buf`: framed into packets, each routed as
    /// the event it is; false when the connection is over.
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
        let framer = receive::Framer {
            max: self.s.conn.max_packet_size,
            v5: self.s.conn.mqtt5.is_some(),
        };
        let mut pending = std::mem::take(&mut self.conns[c as usize].inbuf);
        let fresh = std::mem::take(&mut self.read_buf);
        let mut frames = framer.frames(&mut pending, &fresh[..n]);
        let mut ok = true;
        let mut acked = false;
        let broken = loop {
            match frames.next_packet() {
                Ok(Some(p)) => {
                    let ev = receive::event(self.conns[c as usize].phase, p);
                    if matches!(ev, receive::Event::Received | receive::Event::Skipped)
                        && self.conns[c as usize].role == Role::Subscriber
                    {
                        if !self.sub_frame(c, frames.last_frame(), now) {
                            ok = false;
                            break None;
                        }
                        continue;
                    }
                    match self.on_event(c, ev, now) {
                        Some(a) => acked |= a,
                        None => {
                            ok = false;
                            break None;
                        }
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        let framed = frames.framed();
        if let Some(e) = broken {
            self.read_buf = fresh;
            match self.conns[c as usize].phase {
                Phase::AwaitConnack => self.fail_attempt(c, ConnectFailure::NotMqtt, now),
                _ => self.lose(c, LostKind::Other(format!("the broker sent {e}")), now),
            }
            return false;
        }
        if ok && framed.used < framed.total {
            // Part of a packet: kept for the next read.
            self.conns[c as usize].inbuf = framed.leftover(pending, &fresh[..n]);
        }
        self.read_buf = fresh;
        if acked {
            self.report(c, Work::Acked);
        }
        ok
    }

    /// Routes one packet's event; `Some(acked)` while the connection goes on.
    fn on_event(&mut self, c: u32, ev: receive::Event, now: Instant) -> Option<bool> {
        use receive::Event;
        match ev {
            Event::ConnAck {
                code,
                session_present,
                limits,
            } => {
                if code == 0 {
                    if let Err(f) = self.accept_limits(c, &limits) {
                        self.fail_attempt(c, f, now);
                        return None;
                    }
                }
                self.on_connack(c, code, session_present, now);
                let up = self.conns[c as usize].phase == Phase::Up;
                if up && self.conns[c as usize].role == Role::Subscriber {
                    self.sub_up(c, session_present, now);
                }
                (self.conns[c as usize].phase == Phase::Up).then_some(false)
            }
            Event::NotMqtt => {
                self.fail_attempt(c, ConnectFailure::NotMqtt, now);
                None
            }
            Event::Acked { id, reason } => {
                self.on_puback(c, id, reason, now);
                Some(true)
            }
            Event::Received2 { id, reason } => Some(self.on_pubrec(c, id, reason, now)),
            Event::Completed { id, reason } => Some(self.on_pubcomp(c, id, reason, now)),
            Event::PingResp => {
                if let Some((written, _, true)) = self.conns[c as usize].ping {
                    let us = micros(now.saturating_duration_since(written)).max(1);
                    self.stats.histos.pingresp_us.saturating_record(us);
                }
                self.conns[c as usize].ping = None;
                Some(false)
            }
            Event::Goodbye(reason) => {
                // Our DISCONNECT is out and everything was acknowledged: a broker that says
                // goodbye first is no loss. (Its reason still counts: at QoS 0 a refusal
                // of a packet fails the run.)
                if reason != 0 {
                    *self.stats.conns.disconnects.entry(reason).or_default() += 1;
                }
                self.close(c);
                None
            }
            Event::Disconnect(reason) => {
                self.on_disconnect(c, reason, now);
                None
            }
            // A delivery: publishers subscribe to nothing (subscribers' go to `sub_frame`).
            Event::Received | Event::Skipped => Some(false),
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
                consider(self.tokens.wake(self.grid_base).max(now));
            } else if self.connecting == 0 {
                // Every slot is another worker's: none of ours will wake us when one frees.
                consider(now + Duration::from_millis(1));
            }
        }
        if let WorkerPhase::Draining { deadline } = self.phase {
            consider(deadline);
        }
        if let (WorkerPhase::Generating, Some(a), Some(h)) =
            (self.phase, self.anchor, self.s.hold.as_ref())
        {
            consider(a + h.duration); // the hold ends by the clock
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
    /// `spin`: `wake` is a sparse schedule's due time, met to the microsecond (a timerfd,
    /// then a spin over the last stretch).
    fn wait(&mut self, now: Instant, wake: Option<Instant>, spin: bool) -> io::Result<()> {
        let timeout = match wake {
            None => None,
            Some(t) if t <= now => Some(Duration::ZERO),
            Some(t) if spin => {
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
        // A subscriber worker woken per delivery lets a hold's deliveries gather first
        // (see gather.rs); pending work (a zero timeout) and a spun due time never wait.
        let timeout = if self.sub.is_some() && !spin {
            let hold = self.wake_gather.before_poll(now, timeout);
            if !hold.is_zero() {
                std::thread::sleep(hold);
            }
            timeout.map(|t| t.saturating_sub(hold))
        } else {
            timeout
        };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| {
            (
                e.token(),
                e.is_readable() || e.is_read_closed() || e.is_error(),
                e.is_writable() || e.is_error(),
            )
        }));
        for &(token, readable, writable) in &ready {
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
                        self.dispatch(now);
                    }
                    if readable && self.conns[c as usize].sock.is_some() {
                        match self.conns[c as usize].phase {
                            Phase::AwaitConnack | Phase::Up | Phase::Closing => {
                                self.readable(c, now)
                            }
                            Phase::Connecting => self.on_connected_tcp(c, now),
                            _ => {}
                        }
                        self.dispatch(now);
                    }
                }
            }
        }
        self.ready = ready;
        // A sparse schedule spins the last stretch to its due time.
        if let (true, Some(t)) = (spin, wake) {
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
