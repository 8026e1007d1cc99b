//! One publishing session over one MQTT connection: the producer and the connection driver.
//!
//! ```text
//! producer:  Pacer -> PointSource -> Encoder -> pending meta + client queue (rumqttc)
//! driver:    rumqttc EventLoop -> Outgoing::Publish  (written to the socket: "sent")
//!                              -> Incoming::PubAck   (QoS 1: "acknowledged")
//! ```
//!
//! The producer pushes each message's metadata (scheduled time, points, bytes) on a FIFO just
//! before handing the payload to rumqttc. rumqttc writes requests in order and reports each
//! write as `Outgoing::Publish(pkid)`, so the driver pops the FIFO there: that is the moment a
//! message counts as sent. At QoS 1 the metadata waits under its packet id for the PUBACK.
//! Nothing counts at enqueue time. When generation ends, the run waits for the acks (QoS 1),
//! then sends DISCONNECT through the same queue: its write proves every publish before it was
//! written. A drain timeout bounds the wait; whatever is missing then is failed or unsent.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use point_format::Encoder;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::args::Qos;
use crate::pace::Pacer;
use crate::plan::Plan;
use crate::shutdown::Shutdown;
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

/// A message handed to rumqttc and not yet written.
#[derive(Debug, Clone, Copy)]
struct MsgMeta {
    scheduled: Instant,
    points: u32,
    bytes: u32,
}

struct Shared {
    counters: Arc<Counters>,
    pending: Mutex<VecDeque<MsgMeta>>,
    /// Woken on every acknowledgement, for the drain wait.
    acked: tokio::sync::Notify,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, VecDeque<MsgMeta>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
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
    let shared = Arc::new(Shared {
        counters: counters.clone(),
        pending: Mutex::new(VecDeque::with_capacity(plan.max_queued.min(1 << 16) + 1)),
        acked: tokio::sync::Notify::new(),
    });
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
    produce(plan, &client, &shared, started, shutdown, &driver_done).await;

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

/// Generates, encodes and enqueues messages on schedule until the plan is done or stopped.
async fn produce(
    plan: &Plan,
    client: &AsyncClient,
    shared: &Shared,
    started: Instant,
    shutdown: &Shutdown,
    driver_done: &CancellationToken,
) {
    let pacer = Pacer::for_batches(started, plan.rate, plan.batch);
    let wall_start_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let end_at = plan.duration.map(|d| started + d);
    let qos = match plan.qos {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
    };
    let mut source = PointSource::new(plan.seed, plan.sensor_fields);
    let encoder = Encoder::new(&plan.device_id);
    let mut samples = Vec::with_capacity(plan.batch);
    let mut buf = BytesMut::new();
    // Small messages share one allocation of at least this size.
    let chunk = plan.max_payload.max(64 << 10);
    let counters = &shared.counters;
    let mut done_points = 0u64;

    loop {
        let remaining = plan.total.map_or(u64::MAX, |t| t - done_points);
        if remaining == 0 {
            break;
        }
        let n = (plan.batch as u64).min(remaining) as usize;
        let through = done_points + n as u64;
        if let (Some(end), Some(due)) = (end_at, pacer.deadline(through)) {
            if due > end {
                break;
            }
        }
        let scheduled = tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => break,
            _ = driver_done.cancelled() => break,
            t = pacer.wait(through) => t,
        };
        if let Some(end) = end_at {
            if !pacer.is_paced() && scheduled >= end {
                break;
            }
        }
        let ts_us = wall_start_us + (scheduled - started).as_micros() as u64;
        source.fill(n, ts_us, &mut samples);
        if buf.capacity() - buf.len() < plan.max_payload {
            buf.reserve(chunk);
        }
        encoder.write_message(&mut buf, &samples);
        let payload = buf.split().freeze();
        let meta = MsgMeta {
            scheduled,
            points: n as u32,
            bytes: payload.len() as u32,
        };
        // The driver pops this when rumqttc reports the write, so it goes in first.
        shared.pending().push_back(meta);
        let enqueued = tokio::select! {
            biased;
            r = client.publish_bytes(plan.topic.as_str(), qos, false, payload) => r.is_ok(),
            _ = shutdown.abort.cancelled() => false,
            _ = driver_done.cancelled() => false,
        };
        if !enqueued {
            // Not handed over: the meta is the newest entry and nobody else took it.
            shared.pending().pop_back();
            break;
        }
        counters.points_enqueued.fetch_add(n as u64, Relaxed);
        counters.messages_enqueued.fetch_add(1, Relaxed);
        done_points = through;
        // Unpaced runs never wait on the timer: give other tasks their turn.
        tokio::task::consume_budget().await;
    }
}

#[derive(Debug, Default)]
struct DriverOut {
    latencies: Latencies,
    error: Option<String>,
    last_progress: Option<Instant>,
}

/// Polls the rumqttc event loop, counting writes and acknowledgements, until DISCONNECT is
/// written, the connection fails, or `stop` is cancelled.
async fn drive(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    qos1: bool,
    stop: CancellationToken,
    done: CancellationToken,
) -> DriverOut {
    let mut out = DriverOut::default();
    let c = &shared.counters;
    // Packet id -> (scheduled, points) of messages awaiting a PUBACK.
    let mut inflight: Vec<Option<(Instant, u32)>> = vec![None; u16::MAX as usize + 1];
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let now = Instant::now();
                let Some(m) = shared.pending().pop_front() else {
                    tracing::warn!("rumqttc wrote a publish that this run did not enqueue");
                    continue;
                };
                out.latencies.record_lag(now - m.scheduled);
                c.points_sent.fetch_add(m.points as u64, Relaxed);
                c.bytes_sent.fetch_add(m.bytes as u64, Relaxed);
                c.messages_sent.fetch_add(1, Relaxed);
                if qos1 {
                    if inflight[pkid as usize]
                        .replace((m.scheduled, m.points))
                        .is_some()
                    {
                        tracing::warn!(pkid, "packet id reused before its PUBACK");
                    }
                } else {
                    out.last_progress = Some(now);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some((scheduled, points)) = inflight[ack.pkid as usize].take() {
                    let now = Instant::now();
                    out.latencies.record_ack(now - scheduled);
                    c.points_acked.fetch_add(points as u64, Relaxed);
                    c.messages_acked.fetch_add(1, Relaxed);
                    out.last_progress = Some(now);
                    shared.acked.notify_one();
                }
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => {}
            Err(e) => {
                out.error = Some(describe(&e));
                break;
            }
        }
    }
    done.cancel();
    out
}

fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::MqttState(rumqttc::StateError::Io(io)) | ConnectionError::Io(io) => {
            format!("connection to the broker lost: {io}")
        }
        ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => {
            "the broker closed the connection (a message over its packet size limit, or a policy?)"
                .into()
        }
        other => format!("connection to the broker failed: {other}"),
    }
}
