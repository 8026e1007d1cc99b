//! The connection driver: polls rumqttc's event loop and counts what reached the socket and
//! what the broker acknowledged.
//!
//! rumqttc writes requests in order and reports each write after the flush: a QoS 0 frame as
//! `Outgoing::PublishFrames(count)`, a QoS 1 publish as `Outgoing::Publish(pkid)`. The driver
//! pops that many entries off the [`Pending`] FIFO there: that is the moment a message counts
//! as sent, and its schedule lag is measured. At QoS 1 the entry then waits under its packet
//! id for the PUBACK, which gives the publish→PUBACK latency from the scheduled time.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use rumqttc::{Event, EventLoop, Outgoing, Packet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use crate::mqtt::{Lost, LostKind};
use crate::sink::{MsgMeta, Pending, QueueRoom};
use crate::stats::{Counters, Latencies};

/// State shared by the producer, the driver and the drain wait.
#[derive(Debug)]
pub struct Shared {
    pub counters: Arc<Counters>,
    pub pending: Pending,
    pub room: QueueRoom,
    /// Woken when an acknowledgement arrives, for the drain wait.
    pub acked: tokio::sync::Notify,
}

impl Shared {
    /// For a client whose request queue holds `queue_requests` requests.
    pub fn new(counters: Arc<Counters>, queue_requests: usize) -> Shared {
        Shared {
            counters,
            pending: Pending::default(),
            room: QueueRoom::new(queue_requests),
            acked: tokio::sync::Notify::new(),
        }
    }
}

/// What the driver saw.
#[derive(Debug, Default)]
pub struct DriverOut {
    pub latencies: Latencies,
    /// How the connection was lost, if it was.
    pub lost: Option<Lost>,
    /// PUBACKs whose packet id had nothing in flight: a broker that repeats itself.
    pub duplicate_acks: u64,
    /// Last write (QoS 0) or acknowledgement (QoS 1).
    pub last_progress: Option<Instant>,
}

/// Polls the event loop, counting writes and acknowledgements, until DISCONNECT is written,
/// the connection fails, or `stop` is cancelled; then cancels `done`.
pub async fn drive(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    qos1: bool,
    stop: CancellationToken,
    done: CancellationToken,
) -> DriverOut {
    let mut out = DriverOut::default();
    let c = &shared.counters;
    // Packet id -> (scheduled, points) of messages awaiting a PUBACK.
    let mut inflight: Vec<Option<(Instant, u32)>> = if qos1 {
        vec![None; u16::MAX as usize + 1]
    } else {
        Vec::new()
    };
    let mut written: Vec<MsgMeta> = Vec::new();
    let up_since = Instant::now();
    let mut first_write: Option<Instant> = None;
    let mut largest_message = 0u32;
    // Created once: a cancellation future registers a waiter, too costly per event.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let event = tokio::select! {
            biased;
            ev = eventloop.poll() => ev,
            _ = &mut stopped => break,
        };
        let (count, pkid) = match event {
            Ok(Event::Outgoing(Outgoing::PublishFrames(count))) => (count as usize, None),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => (1, Some(pkid)),
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                match inflight.get_mut(ack.pkid as usize).and_then(Option::take) {
                    Some((scheduled, points)) => {
                        let now = Instant::now();
                        out.latencies.record_ack(now - scheduled);
                        c.points_acked.fetch_add(points as u64, Relaxed);
                        c.messages_acked.fetch_add(1, Relaxed);
                        out.last_progress = Some(now);
                        shared.acked.notify_one();
                    }
                    // Already acknowledged (or never sent): the first PUBACK counted, not this.
                    None => out.duplicate_acks += 1,
                }
                continue;
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
            Ok(_) => continue,
            Err(e) => {
                let waiting = shared.pending.lock().front().map_or(0, |m| m.bytes);
                out.lost = Some(Lost {
                    kind: LostKind::of(&e),
                    after: up_since.elapsed(),
                    acked_any: c.messages_acked.load(Relaxed) > 0,
                    first_write_after: first_write.map(|t| t - up_since),
                    largest_message: largest_message.max(waiting),
                });
                break;
            }
        };
        shared.room.written(1);
        let now = Instant::now();
        {
            let mut q = shared.pending.lock();
            let n = count.min(q.len());
            written.extend(q.drain(..n));
        }
        if written.len() < count {
            tracing::warn!(
                missing = count - written.len(),
                "rumqttc wrote publishes that this run did not enqueue"
            );
        }
        let (mut points, mut bytes) = (0u64, 0u64);
        first_write.get_or_insert(now);
        for m in &written {
            largest_message = largest_message.max(m.bytes);
            out.latencies.record_lag(now - m.scheduled);
            points += m.points as u64;
            bytes += m.bytes as u64;
        }
        c.points_sent.fetch_add(points, Relaxed);
        c.bytes_sent.fetch_add(bytes, Relaxed);
        c.messages_sent.fetch_add(written.len() as u64, Relaxed);
        if qos1 {
            if let (Some(pkid), Some(m)) = (pkid, written.first()) {
                if inflight[pkid as usize]
                    .replace((m.scheduled, m.points))
                    .is_some()
                {
                    tracing::warn!(pkid, "packet id reused before its PUBACK");
                }
            }
        } else {
            out.last_progress = Some(now);
        }
        written.clear();
    }
    done.cancel();
    out
}
