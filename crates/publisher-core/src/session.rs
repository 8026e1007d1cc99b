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
use crate::driver::{drive, DriverOut, Shared};
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
    /// The connection failed mid-run.
    pub connection_error: Option<String>,
    /// The drain timeout (or a second signal) cut the flush short.
    pub drain_cut_short: bool,
    pub paced: bool,
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
    let sink = Sink::new(plan, client.clone());
    produce(plan, sink, &shared, started, shutdown, &driver_done).await;

    // Drain: at QoS 1 wait for every acknowledgement, then DISCONNECT behind the last publish.
    let deadline = Instant::now() + plan.drain_timeout;
    let mut cut_short = false;
    if qos1 {
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
    // DISCONNECT queues behind every publish (the queue may still be full at QoS 0), and
    // writing it may wait on a stalled socket: allow a little past the deadline for both.
    let hard_deadline = deadline.max(Instant::now()) + Duration::from_secs(2);
    let disconnect_then_wait = async {
        if client.disconnect().await.is_ok() {
            driver_done.cancelled().await;
        }
    };
    tokio::select! {
        _ = disconnect_then_wait => {}
        _ = driver_done.cancelled() => {}
        _ = tokio::time::sleep_until(hard_deadline) => cut_short = true,
        _ = shutdown.abort.cancelled() => cut_short = true,
    }
    stop_driver.cancel();
    let out = match driver.await {
        Ok(out) => out,
        Err(e) => DriverOut {
            error: Some(format!("connection driver failed: {e}")),
            ..DriverOut::default()
        },
    };
    let finished = out.last_progress.unwrap_or(started);
    SessionResult {
        totals: counters.snapshot(),
        latencies: out.latencies,
        started,
        finished,
        connection_error: out.error,
        drain_cut_short: cut_short,
        paced: plan.rate.is_some(),
    }
}

/// Generates, encodes and hands over messages on schedule until the plan is done or stopped.
async fn produce(
    plan: &Plan,
    mut sink: Sink,
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
    // Generated and due, not yet handed over (a run cut short by --duration or a signal).
    sink.ship(&to).await;
}
