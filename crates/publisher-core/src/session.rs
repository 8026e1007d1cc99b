//! One publishing session over one MQTT connection: the producer and the connection driver.
//!
//! ```text
//! producer:  Pacer -> PointSource -> Encoder -> Sink (frames / publishes) -> rumqttc queue
//! driver:    rumqttc EventLoop -> written (frames, publishes): "sent"
//!                              -> PUBACK (QoS 1): "acknowledged"
//! ```
//!
//! The producer encodes each message *before* it is due (its points carry their scheduled
//! time), waits for the schedule, and hands it over at once, so schedule lag measures the
//! hand-over and the write, not the encoding. Messages that fall behind schedule (or an
//! unpaced run) travel together: the [`Sink`] ships them as one frame once it is full or the
//! next message is not yet due. Nothing counts at hand-over; the [`driver`](crate::driver)
//! counts when rumqttc reports the write. When generation ends, the run waits for the acks
//! (QoS 1), then sends DISCONNECT through the same queue: its write proves every publish
//! before it was written. A drain timeout bounds the wait; whatever is missing then is
//! failed or unsent.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use point_format::Encoder;
use rumqttc::{AsyncClient, EventLoop};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::args::Qos;
use crate::driver::{drive, DriverOut, Lost, Shared};
use crate::pace::Pacer;
use crate::plan::Plan;
use crate::shutdown::Shutdown;
use crate::sink::{Cancel, Handover, Sink};
use crate::source::PointSource;
use crate::stats::{Counters, Latencies, Totals};

/// What a session did.
#[derive(Debug)]
pub struct SessionResult {
    pub totals: Totals,
    pub latencies: Latencies,
    /// Generation started (right after CONNACK).
    pub started: Instant,
    /// Last write (QoS 0) or last acknowledgement (QoS 1); `started` if none.
    pub finished: Instant,
    /// How the connection was lost mid-run, if it was.
    pub lost: Option<Lost>,
    /// Whether the broker accepted a new TCP connection right after the loss (None: not probed).
    pub broker_up: Option<bool>,
    /// PUBACKs for packet ids with nothing in flight (a broker repeating itself): ignored.
    pub duplicate_acks: u64,
    /// The drain timeout (or a second signal) cut the flush short.
    pub drain_cut_short: bool,
    pub paced: bool,
    /// A signal came while connecting: nothing was generated.
    pub connecting_interrupted: bool,
}

impl SessionResult {
    /// The result of a run stopped by a signal before the connection was up.
    pub fn interrupted_while_connecting(paced: bool) -> SessionResult {
        let now = Instant::now();
        SessionResult {
            totals: Totals::default(),
            latencies: Latencies::default(),
            started: now,
            finished: now,
            lost: None,
            broker_up: None,
            duplicate_acks: 0,
            drain_cut_short: false,
            paced,
            connecting_interrupted: true,
        }
    }
}

/// Runs generation and delivery to completion (or stop/abort) on a connected client.
pub async fn run(
    plan: &Plan,
    client: AsyncClient,
    eventloop: EventLoop,
    counters: Arc<Counters>,
    shutdown: &Shutdown,
) -> SessionResult {
    let shared = Arc::new(Shared::new(counters.clone(), plan.queue_requests));
    let qos1 = plan.qos == Qos::AtLeastOnce;
    let stop_driver = CancellationToken::new();
    let driver_done = CancellationToken::new();
    let driver = tokio::spawn(drive(
        eventloop,
        shared.clone(),
        qos1,
        stop_driver.clone(),
        driver_done.clone(),
    ));

    tokio::select! {
        _ = tokio::time::sleep(plan.start_delay) => {}
        _ = shutdown.stop.cancelled() => {}
    }
    let started = Instant::now();
    let mut sink = Sink::new(plan, client.clone());
    produce(plan, &mut sink, &shared, started, shutdown, &driver_done).await;

    // Drain: what was generated and due goes out, at QoS 1 every acknowledgement is awaited,
    // then DISCONNECT goes behind the last publish. The drain deadline bounds all of it, even
    // against a broker that stopped reading.
    let deadline = Instant::now() + plan.drain_timeout;
    let drain = Handover {
        pending: &shared.pending,
        room: &shared.room,
        counters: &shared.counters,
        cancel: Cancel {
            abort: &shutdown.abort,
            driver_done: &driver_done,
            stop: None,
            deadline: Some(deadline),
        },
    };
    let mut cut_short = !sink.ship(&drain).await;
    sink.abandon(&shared.counters);
    if qos1 && !cut_short {
        loop {
            let t = counters.snapshot();
            if t.messages_acked >= t.messages_enqueued || driver_done.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = shared.acked.notified() => {}
                _ = driver_done.cancelled() => break,
                _ = tokio::time::sleep_until(deadline) => { cut_short = true; break }
                _ = shutdown.abort.cancelled() => { cut_short = true; break }
            }
        }
    }
    // DISCONNECT queues behind every publish, and writing it may wait on a stalled socket. Its
    // write proves everything before it was written; past the deadline it gets a moment.
    let disconnect_by = deadline.max(Instant::now() + DISCONNECT_GRACE);
    let disconnect_then_wait = async {
        if client.disconnect().await.is_ok() {
            driver_done.cancelled().await;
        }
    };
    if !shutdown.abort.is_cancelled() {
        tokio::select! {
            _ = disconnect_then_wait => {}
            _ = driver_done.cancelled() => {}
            _ = tokio::time::sleep_until(disconnect_by) => cut_short = true,
            _ = shutdown.abort.cancelled() => cut_short = true,
        }
    } else {
        cut_short = true;
    }
    stop_driver.cancel();
    let out = match driver.await {
        Ok(out) => out,
        Err(e) => DriverOut {
            lost: Some(Lost::other(format!("connection driver failed: {e}"))),
            ..DriverOut::default()
        },
    };
    let finished = out.last_progress.unwrap_or(started);
    SessionResult {
        totals: counters.snapshot(),
        latencies: out.latencies,
        started,
        finished,
        lost: out.lost,
        broker_up: None,
        duplicate_acks: out.duplicate_acks,
        drain_cut_short: cut_short,
        paced: plan.rate.is_some(),
        connecting_interrupted: false,
    }
}

/// How long DISCONNECT may take when the drain deadline has already passed.
const DISCONNECT_GRACE: Duration = Duration::from_millis(250);

/// Generates, encodes and hands over messages on schedule until the plan is done, stopped,
/// or `--duration` ends, even while a full queue blocks the hand-over. Messages generated and
/// due but not handed over stay in `sink` for the drain.
async fn produce(
    plan: &Plan,
    sink: &mut Sink,
    shared: &Shared,
    started: Instant,
    shutdown: &Shutdown,
    driver_done: &CancellationToken,
) {
    let mut pacer = Pacer::new(started, plan.rate, plan.batch as u64);
    let wall_start_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let end_at = plan.duration.map(|d| started + d);
    let mut source = PointSource::new(plan.seed, plan.sensor_fields);
    let encoder = Encoder::new(&plan.device_id);
    let mut samples = Vec::with_capacity(plan.batch);
    let to = Handover {
        pending: &shared.pending,
        room: &shared.room,
        counters: &shared.counters,
        cancel: Cancel {
            abort: &shutdown.abort,
            driver_done,
            stop: Some(&shutdown.stop),
            deadline: end_at,
        },
    };
    let batch = plan.batch as u64;
    let mut done_points = 0u64;

    loop {
        let remaining = plan.total.map_or(u64::MAX, |t| t - done_points);
        // A signal during connect or --start-delay: generate nothing. Later ones are seen
        // when a frame ships (is_cancelled takes a lock: not once per message).
        if remaining == 0 || (done_points == 0 && shutdown.stop.is_cancelled()) {
            break;
        }
        let through = done_points + batch.min(remaining);
        let due = pacer.deadline(through);
        if let (Some(end), Some(due)) = (end_at, due) {
            if due > end {
                break;
            }
        }
        let scheduled = due.unwrap_or_else(Instant::now);
        if due.is_none() && end_at.is_some_and(|end| scheduled >= end) {
            break;
        }
        let ts_us = wall_start_us + (scheduled - started).as_micros() as u64;
        source.fill((through - done_points) as usize, ts_us, &mut samples);
        sink.push(&encoder, &samples, scheduled);
        done_points = through;
        if due.is_some_and(|due| due > Instant::now()) {
            // Encoded ahead of time; hand it over when due. Only this message is unshipped:
            // earlier ones went as soon as this one was found to be not yet due.
            let on_time = tokio::select! {
                biased;
                _ = shutdown.stop.cancelled() => false,
                _ = driver_done.cancelled() => false,
                _ = pacer.wait(through) => true,
            };
            if !on_time {
                sink.discard();
                break;
            }
        }
        let left = plan.total.map_or(u64::MAX, |t| t - done_points);
        let more = left > 0;
        let next_not_due = more
            && pacer
                .deadline(done_points + batch.min(left))
                .is_some_and(|next| next > Instant::now());
        let ship_now = !more || next_not_due || sink.is_full();
        if ship_now && !sink.ship(&to).await {
            break;
        }
        if ship_now && shutdown.stop.is_cancelled() {
            break;
        }
        // Unpaced runs never wait on the timer: give other tasks their turn.
        tokio::task::consume_budget().await;
    }
}
