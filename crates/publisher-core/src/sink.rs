//! Handing encoded messages to rumqttc: the one place where messages are enqueued.
//!
//! - QoS 0: messages are framed as complete PUBLISH packets, back to back in one buffer
//!   ([`crate::frame`]), and up to [`FRAME_BYTES`] of them (or one larger message) go to
//!   rumqttc as one `Request::PublishFrames`. A small message then costs its encoding, not a
//!   channel hop, a topic allocation, a copy and an event of its own (see
//!   `vendor/rumqttc/PATCHED.md`).
//! - QoS 1: one `Request::Publish` per message, so that rumqttc assigns packet ids, keeps the
//!   inflight window and matches PUBACKs.
//!
//! Every message's [`MsgMeta`] goes on the shared [`Pending`] FIFO just before its request is
//! queued; the connection driver pops it when rumqttc reports the write. Nothing here counts a
//! message as sent.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};
use point_format::{Encoder, Sample};
use rumqttc::{AsyncClient, ClientError, PublishFrames, QoS, Request};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::args::Qos;
use crate::frame::Framer;
use crate::plan::Plan;
use crate::stats::Counters;

/// A QoS 0 frame is handed over once it holds this many bytes.
pub const FRAME_BYTES: usize = 64 << 10;

/// A message handed to rumqttc and not yet written.
#[derive(Debug, Clone, Copy)]
pub struct MsgMeta {
    pub scheduled: Instant,
    pub points: u32,
    /// Payload bytes.
    pub bytes: u32,
}

/// Messages queued in rumqttc, oldest first, in the order rumqttc writes them.
#[derive(Debug, Default)]
pub struct Pending(Mutex<VecDeque<MsgMeta>>);

impl Pending {
    pub fn lock(&self) -> MutexGuard<'_, VecDeque<MsgMeta>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How full rumqttc's request queue is. A producer that finds it full sleeps until it is half
/// empty and then refills it in one go, instead of being woken for every slot that frees up
/// (a context switch each, which made small QoS 1 messages cost microseconds apiece).
#[derive(Debug)]
pub struct QueueRoom {
    /// Requests handed over and not yet written, and the one being handed over.
    queued: AtomicUsize,
    /// A waiting producer goes on once `queued` falls to this: half the queue, plus its own.
    low_water: usize,
    waiting: AtomicBool,
    notify: Notify,
}

impl QueueRoom {
    /// A queue of `capacity` requests.
    pub fn new(capacity: usize) -> QueueRoom {
        QueueRoom {
            queued: AtomicUsize::new(0),
            low_water: capacity / 2 + 1,
            waiting: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// The driver saw `requests` requests written.
    pub fn written(&self, requests: usize) {
        let left = self
            .queued
            .fetch_sub(requests, SeqCst)
            .saturating_sub(requests);
        if left <= self.low_water && self.waiting.swap(false, SeqCst) {
            self.notify.notify_one();
        }
    }

    /// Waits until the queue is at most half full; false when `cancel` ended the wait.
    async fn drained(&self, cancel: &Cancel<'_>) -> bool {
        loop {
            if cancel.is_fired() {
                return false;
            }
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.waiting.store(true, SeqCst);
            if self.queued.load(SeqCst) <= self.low_water {
                self.waiting.store(false, SeqCst);
                return true;
            }
            tokio::select! {
                biased;
                _ = &mut notified => {}
                _ = cancel.fired() => return false,
            }
        }
    }
}

/// What ends a hand-over that waits for room in the queue.
pub struct Cancel<'a> {
    /// Give up flushing (second signal).
    pub abort: &'a CancellationToken,
    /// The connection driver ended: nothing will be written any more.
    pub driver_done: &'a CancellationToken,
    /// During generation, a stop request (the first signal) ends the wait: generation is over.
    pub stop: Option<&'a CancellationToken>,
    /// The wait ends here in any case: the end of `--duration` during generation, the drain
    /// deadline after it.
    pub deadline: Option<Instant>,
}

impl Cancel<'_> {
    /// Whether the wait should end now.
    pub fn is_fired(&self) -> bool {
        self.abort.is_cancelled()
            || self.driver_done.is_cancelled()
            || self.stop.is_some_and(CancellationToken::is_cancelled)
            || self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Completes when the wait should end.
    pub async fn fired(&self) {
        let stop = async {
            match self.stop {
                Some(t) => t.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let deadline = async {
            match self.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.abort.cancelled() => {}
            _ = self.driver_done.cancelled() => {}
            _ = stop => {}
            _ = deadline => {}
        }
    }
}

/// Messages encoded and not yet handed to rumqttc, and the hand-over itself.
///
/// Encoded messages are *sealed* into requests (one frame of QoS 0 packets, or one QoS 1
/// publish each) in an outbox, and handed over from there in order. A hand-over that is
/// cancelled (a signal, `--duration`, the drain deadline) leaves the rest in the outbox, so a
/// later [`Sink::ship`] can still deliver them; [`Sink::abandon`] counts what is left as
/// unsent.
pub struct Sink {
    client: AsyncClient,
    qos1: bool,
    topic: String,
    framer: Framer,
    /// QoS 0: the frame being built. QoS 1: room for the next payloads.
    buf: BytesMut,
    /// QoS 1: the payloads of `metas`.
    payloads: Vec<Bytes>,
    /// Encoded messages not yet sealed.
    metas: Vec<MsgMeta>,
    /// Sealed requests, each with the number of its messages (at the front of `outbox_metas`).
    outbox: VecDeque<(Request, usize)>,
    outbox_metas: VecDeque<MsgMeta>,
    /// Hand over once `metas` holds this many messages (1 at QoS 1).
    frame_messages: usize,
    /// Bytes reserved at a time; small messages share one allocation.
    chunk: usize,
    /// Upper bound of one message's bytes in `buf`.
    max_message: usize,
}

impl Sink {
    pub fn new(plan: &Plan, client: AsyncClient) -> Sink {
        let qos1 = plan.qos == Qos::AtLeastOnce;
        let framer = Framer::new(&plan.topic, plan.max_payload);
        let max_message = plan.max_payload + framer.overhead();
        Sink {
            client,
            qos1,
            topic: plan.topic.clone(),
            framer,
            buf: BytesMut::new(),
            payloads: Vec::new(),
            metas: Vec::with_capacity(plan.frame_messages),
            outbox: VecDeque::new(),
            outbox_metas: VecDeque::new(),
            frame_messages: plan.frame_messages,
            chunk: (4 * max_message).max(1 << 20),
            max_message,
        }
    }

    /// Messages encoded and not handed over.
    pub fn len(&self) -> usize {
        self.metas.len() + self.outbox_metas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the unsealed messages make a full frame.
    pub fn is_full(&self) -> bool {
        self.metas.len() >= self.frame_messages || (!self.qos1 && self.buf.len() >= FRAME_BYTES)
    }

    /// Encodes one message of `samples`, scheduled at `scheduled`, behind the unshipped ones.
    pub fn push(&mut self, encoder: &Encoder, samples: &[Sample], scheduled: Instant) {
        if self.buf.capacity() - self.buf.len() < self.max_message {
            self.buf.reserve(self.chunk);
        }
        let bytes = if self.qos1 {
            encoder.write_message(&mut self.buf, samples);
            let payload = self.buf.split().freeze();
            let n = payload.len();
            self.payloads.push(payload);
            n
        } else {
            self.framer
                .append(&mut self.buf, |b| encoder.write_message(b, samples))
        };
        self.metas.push(MsgMeta {
            scheduled,
            points: samples.len() as u32,
            bytes: bytes as u32,
        });
    }

    /// Drops the unsealed messages: generation stopped before they were due.
    pub fn discard(&mut self) {
        self.metas.clear();
        self.payloads.clear();
        self.buf.clear();
    }

    /// Turns the encoded messages into requests at the back of the outbox.
    fn seal(&mut self) {
        if self.metas.is_empty() {
            return;
        }
        if self.qos1 {
            for payload in self.payloads.drain(..) {
                let publish =
                    rumqttc::Publish::from_bytes(self.topic.as_str(), QoS::AtLeastOnce, payload);
                self.outbox.push_back((Request::Publish(publish), 1));
            }
        } else {
            let frames = PublishFrames {
                bytes: self.buf.split().freeze(),
                count: self.metas.len() as u32,
            };
            self.outbox
                .push_back((Request::PublishFrames(frames), self.metas.len()));
        }
        self.outbox_metas.extend(self.metas.drain(..));
    }

    /// Hands every message to rumqttc in order, waiting for room in its queue; false when
    /// `to.cancel` ended a wait, and the messages not handed over stay for a later call.
    pub async fn ship(&mut self, to: &Handover<'_>) -> bool {
        self.seal();
        while let Some((request, n)) = self.outbox.pop_front() {
            let metas = self.outbox_metas.range(..n);
            match hand_over(&self.client, request, metas, to).await {
                Ok(()) => {
                    self.outbox_metas.drain(..n);
                }
                Err(request) => {
                    self.outbox.push_front((request, n));
                    return false;
                }
            }
        }
        true
    }

    /// Gives up on every message not handed over: they count as generated and never
    /// written, so the report shows them as unsent.
    pub fn abandon(&mut self, counters: &Counters) {
        self.seal();
        count_enqueued(counters, self.outbox_metas.iter());
        self.outbox.clear();
        self.outbox_metas.clear();
    }
}

/// Where shipped messages are recorded, and what ends a wait for room.
pub struct Handover<'a> {
    pub pending: &'a Pending,
    pub room: &'a QueueRoom,
    pub counters: &'a Counters,
    pub cancel: Cancel<'a>,
}

/// Queues one request carrying `metas`, waiting for room unless cancelled; a cancelled
/// request comes back.
async fn hand_over<'m>(
    client: &AsyncClient,
    mut request: Request,
    metas: impl ExactSizeIterator<Item = &'m MsgMeta> + Clone,
    to: &Handover<'_>,
) -> Result<(), Request> {
    let n = metas.len();
    // The driver pops these when rumqttc reports the write, so they go in first.
    to.pending.lock().extend(metas.clone().copied());
    to.room.queued.fetch_add(1, SeqCst);
    loop {
        match client.try_send_request(request) {
            Ok(()) => {
                count_enqueued(to.counters, metas);
                return Ok(());
            }
            Err(ClientError::TryRequest(r) | ClientError::Request(r)) => request = r,
        }
        // The queue is full: wait until it is half empty. Our count of queued requests is
        // never below what the channel holds, so room by the count is room in the channel.
        if !to.room.drained(&to.cancel).await {
            // Not handed over: these are the newest entries and nobody else took them.
            to.room.queued.fetch_sub(1, SeqCst);
            let mut q = to.pending.lock();
            let keep = q.len() - n;
            q.truncate(keep);
            return Err(request);
        }
    }
}

/// Counts `metas` as generated for the client: each then ends as sent, acked, failed or unsent.
fn count_enqueued<'m>(counters: &Counters, metas: impl Iterator<Item = &'m MsgMeta>) {
    let (mut points, mut messages) = (0u64, 0u64);
    for m in metas {
        points += m.points as u64;
        messages += 1;
    }
    counters.points_enqueued.fetch_add(points, Relaxed);
    counters.messages_enqueued.fetch_add(messages, Relaxed);
}
