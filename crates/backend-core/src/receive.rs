//! The receiving loop: subscribe, then for every PUBLISH decode, route and verify, until a
//! stop condition holds.
//!
//! Acknowledgements are gathered per read and written together (held by `--sink` until
//! the rows are stored): PUBACK for a QoS 1 PUBLISH; at QoS 2 PUBREC for a PUBLISH and
//! PUBCOMP for a PUBREL, with mqtt-wire's [`Receiver`] so that a PUBLISH the broker sends
//! again before its PUBREL (our PUBREC lost with a connection) is not delivered twice. The
//! receiver's ids live as long as the session: cleared when a reconnect finds it gone.

use mqtt_tool::hist::record_clamped;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use point_format::Point;
use tokio::time::Instant;

use mqtt_tool::broker::BrokerTarget;
use mqtt_tool::session::{Describe, Packet, Session};
use mqtt_tool::shutdown::Shutdown;
use mqtt_wire::packets::{ack, AckKind};
use mqtt_wire::qos2::{Delivery, Receiver};
use mqtt_wire::Qos;

use crate::decode::{Decoder, Shape};
use crate::outage::{DeviceOutage, Outages};
use crate::route::{FrontendId, Router};
use crate::sink::Sink;
use crate::verify::{Arrival, Pools, SeqRange, Tracker};
use crate::Plan;

/// Live counts for the progress line and `--metrics-addr`.
#[derive(Debug, Default)]
pub struct Live {
    pub messages: AtomicU64,
    pub points: AtomicU64,
    pub unique: AtomicU64,
    pub devices: AtomicU64,
    /// Devices with a gap now, the points in those gaps, and duplicates (counted about once
    /// a second).
    pub gappy: AtomicU64,
    pub missing: AtomicU64,
    pub duplicate: AtomicU64,
    pub malformed: AtomicU64,
    /// 1 while subscribed to the broker.
    pub connected: AtomicU64,
    /// Rows `--sink` committed.
    pub stored: AtomicU64,
    /// Latencies past the histogram's ceiling, recorded at it.
    pub latency_clamped: AtomicU64,
    /// When `--duration` ends the run, once subscribed (for the progress line's time left).
    pub ends_at: std::sync::OnceLock<Instant>,
    /// The end-to-end latency histogram, copied about five times a second when
    /// `--metrics-addr` or `--hdr-log` reads it.
    pub latency_us: std::sync::Mutex<Option<Histogram<u64>>>,
    /// The connect phases and SUBACK latencies, copied at each connect and SUBACK.
    pub phases: mqtt_tool::phases::Shared,
}

/// How often the latency histogram is copied for `Live::latency_us`.
const LATENCY_SHARED_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Why receiving stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// `--expect` points arrived.
    Expected,
    /// Nothing arrived for `--idle-timeout` after the last message.
    Idle,
    /// Nothing at all arrived within `--first-message-timeout` after subscribing.
    FirstMessageTimeout,
    Duration,
    Signal,
    /// The connection failed or the broker refused a subscription.
    Failed(String),
}

/// One device's state: counts and seq ranges (16 bytes while its seqs come in order, a gap
/// record in [`Received::pools`] after), about a hundred bytes with its id (latency
/// histograms are kept per frontend and overall, not per device).
#[derive(Debug)]
pub struct Device {
    pub id: String,
    pub frontend: Option<FrontendId>,
    pub tracker: Tracker,
    /// Highest end-to-end latency of its points, µs.
    pub latency_max_us: u64,
    /// Its first message was a retained one (left on the topic before this run).
    pub first_retained: bool,
    /// When its highest seq so far was scheduled (the point's `ts`, s).
    pub frontier_ts: f64,
    /// Its seqs scheduled while this backend was disconnected, not received.
    pub outage: Option<Box<DeviceOutage>>,
}

/// One frontend's share of the points.
#[derive(Debug)]
pub struct Frontend {
    pub name: String,
    pub points: u64,
    /// Indexes into [`Received::devices`].
    pub devices: Vec<usize>,
    pub latency_us: Histogram<u64>,
    /// Latencies past the histogram's ceiling, recorded at it.
    pub latency_clamped: u64,
}

/// Everything received.
#[derive(Debug)]
pub struct Received {
    pub messages: u64,
    pub legacy_messages: u64,
    pub batch_messages: u64,
    pub malformed_messages: u64,
    /// Messages the broker delivered as retained (stored before this backend subscribed).
    pub retained_messages: u64,
    pub bytes: u64,
    pub points: u64,
    pub unique: u64,
    pub unrouted_points: u64,
    /// Points of devices beyond `--max-devices`: counted, not verified.
    pub untracked_points: u64,
    pub devices: Vec<Device>,
    pub frontends: Vec<Frontend>,
    /// The devices' gap records and the ranges all of them together may still hold.
    pub pools: Pools,
    pub latency_us: Histogram<u64>,
    /// Latencies past the histogram's ceiling ([`MAX_TRACKED_US`]), recorded at it.
    pub latency_clamped: u64,
    /// First malformed payloads, for the report: (topic, error).
    pub malformed_samples: Vec<(String, String)>,
    pub first_message: Option<Instant>,
    pub last_message: Option<Instant>,
    /// When the broker confirmed the subscription (None: it never did).
    pub subscribed_at: Option<Instant>,
    /// A signal came while connecting: nothing was subscribed.
    pub connecting_interrupted: bool,
    /// A reconnect was refused for good (credentials, authorization): exit 4.
    pub refused: bool,
    /// This backend's own outages, for what it missed during them.
    pub outages: Outages,
    /// Connections lost, reconnects that came through, and the time spent away.
    pub losses: u64,
    pub reconnects: u64,
    /// Losses to another client that connected with this client id (see
    /// [`mqtt_tool::mqtt::IdWatch`]).
    pub takeovers: u64,
    pub disconnected: std::time::Duration,
    /// Packets begun and never whole: cut off by the end of a connection, or left half
    /// sent by a broker gone silent until the idle stop.
    pub packets_truncated: u64,
    /// Of those, PUBLISHes the broker will not send again (QoS 0, or a clean session, or
    /// the run ended): their points are unknown.
    pub truncated_unrecovered: u64,
    /// The first of those, described for the verdict.
    pub truncated_first: Option<String>,
    pub stop: Stop,
    /// What `--sink` stored.
    pub sink: Option<crate::sink::SinkReport>,
    /// Every connect's phases and SUBSCRIBE -> SUBACK.
    pub phases: mqtt_tool::phases::Recorder,
}

/// The latency histograms' ceiling (an hour), the publishers' too.
pub use mqtt_tool::hist::MAX_TRACKED_US;
const MALFORMED_LOGGED: usize = 5;
const DISCONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

impl Received {
    /// Counts the packet `session` holds half of as the connection ends (`how`: why);
    /// `resent`: the broker sends an unacknowledged QoS 1 PUBLISH again (a persistent
    /// session, reconnecting).
    fn truncated(&mut self, session: &Session, how: &str, resent: bool) {
        let Some(p) = session.partial() else { return };
        self.packets_truncated += 1;
        if p.is_publish() && !(resent && p.qos() > 0) {
            self.truncated_unrecovered += 1;
            self.truncated_first
                .get_or_insert_with(|| format!("{} {how}", p.describe()));
        }
        mqtt_tool::errln!("{} was cut off {how}", p.describe());
    }

    /// The index of device `id`, added on first sight; `None` once `max` devices are tracked.
    fn device(
        &mut self,
        id: &str,
        router: &Router,
        index: &mut HashMap<String, usize>,
        max: usize,
    ) -> Option<usize> {
        if let Some(i) = index.get(id) {
            return Some(*i);
        }
        if self.devices.len() >= max {
            return None;
        }
        let frontend = router.route(id);
        self.devices.push(Device {
            id: id.to_string(),
            frontend,
            tracker: Tracker::EMPTY,
            latency_max_us: 0,
            first_retained: false,
            frontier_ts: f64::NAN,
            outage: None,
        });
        let i = self.devices.len() - 1;
        if let Some(fe) = frontend {
            self.frontends[fe].devices.push(i);
        }
        index.insert(id.to_string(), i);
        Some(i)
    }

    pub fn new(router: &Router) -> Received {
        Received {
            messages: 0,
            legacy_messages: 0,
            batch_messages: 0,
            malformed_messages: 0,
            retained_messages: 0,
            bytes: 0,
            points: 0,
            unique: 0,
            unrouted_points: 0,
            untracked_points: 0,
            devices: Vec::new(),
            frontends: router
                .frontends()
                .iter()
                .map(|name| Frontend {
                    name: name.clone(),
                    points: 0,
                    devices: Vec::new(),
                    latency_us: mqtt_tool::hist::histogram(),
                    latency_clamped: 0,
                })
                .collect(),
            pools: Pools::default(),
            latency_us: mqtt_tool::hist::histogram(),
            latency_clamped: 0,
            malformed_samples: Vec::new(),
            first_message: None,
            last_message: None,
            subscribed_at: None,
            connecting_interrupted: false,
            refused: false,
            outages: Outages::new(),
            losses: 0,
            takeovers: 0,
            reconnects: 0,
            disconnected: std::time::Duration::ZERO,
            packets_truncated: 0,
            truncated_unrecovered: 0,
            truncated_first: None,
            stop: Stop::Idle,
            phases: Default::default(),
            sink: None,
        }
    }
}

/// What turns one payload into verified points: the decoder, the router and the device index.
struct Pipeline<'p> {
    plan: &'p Plan,
    router: Router,
    index: HashMap<String, usize>,
    decoder: Decoder,
    last_device: Option<usize>,
    /// The points of one message; kept between messages for its allocation.
    points: Vec<Point<'static>>,
    /// `--sink`: where each unique point goes.
    sink: Option<Sink>,
}

/// An empty vector of points of any lifetime, in the allocation of `v` (collecting an
/// emptied `IntoIter` into a vector of a type of the same layout reuses its buffer).
fn reuse<'a, 'b>(mut v: Vec<Point<'a>>) -> Vec<Point<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!()).collect()
}

impl Pipeline<'_> {
    /// Decodes, routes and verifies one message that arrived at `now` (`arrival_us` on the
    /// wall clock).
    fn message(
        &mut self,
        rx: &mut Received,
        topic: &[u8],
        payload: &mut [u8],
        retain: bool,
        arrival_us: f64,
    ) {
        rx.messages += 1;
        rx.retained_messages += u64::from(retain);
        rx.bytes += payload.len() as u64;
        let mut points = reuse(std::mem::take(&mut self.points));
        match self.decoder.decode(payload, &mut points) {
            Ok(shape) => {
                match shape {
                    Shape::Legacy => rx.legacy_messages += 1,
                    Shape::Batch => rx.batch_messages += 1,
                }
                for pt in &points {
                    let di = match self.last_device {
                        Some(i) if rx.devices[i].id == pt.device_id => Some(i),
                        _ => {
                            self.last_device = rx.device(
                                &pt.device_id,
                                &self.router,
                                &mut self.index,
                                self.plan.max_devices,
                            );
                            self.last_device
                        }
                    };
                    let Some(di) = di else {
                        rx.untracked_points += 1;
                        continue;
                    };
                    // In f64: any timestamp, however hostile, gives a latency (negative and
                    // NaN become 0, huge saturates).
                    let latency = (arrival_us - pt.timestamp * 1e6).max(0.0) as u64;
                    let dev = &mut rx.devices[di];
                    if dev.tracker.is_empty() {
                        dev.first_retained = retain;
                    }
                    // Only after an outage of this backend's: where the device stood.
                    let highest = match rx.outages.list.is_empty() {
                        true => None,
                        false => dev.tracker.max_seq(&rx.pools),
                    };
                    let arrival = dev.tracker.record(pt.seq, &mut rx.pools);
                    match arrival {
                        Arrival::New => {
                            if let Some(h) = highest.filter(|h| pt.seq > h.saturating_add(1)) {
                                let gap = SeqRange(h + 1, pt.seq - 1);
                                rx.outages
                                    .gap(&mut dev.outage, gap, dev.frontier_ts, pt.timestamp);
                            }
                            dev.frontier_ts = pt.timestamp;
                        }
                        Arrival::Late => {
                            if let Some(o) = dev.outage.as_mut() {
                                o.arrived_late(pt.seq);
                            }
                        }
                        Arrival::Duplicate | Arrival::Unverifiable => {}
                    }
                    if matches!(arrival, Arrival::New | Arrival::Late) {
                        rx.unique += 1;
                        if let Some(sink) = self.sink.as_mut() {
                            sink.push(pt, arrival_us);
                        }
                    }
                    if !retain {
                        // What the stream has in flight, for an outage's margin; a
                        // timestamp from another era is bounded by the histograms' ceiling.
                        rx.outages.arrived(latency.min(MAX_TRACKED_US));
                    }
                    dev.latency_max_us = dev.latency_max_us.max(latency);
                    // Past the ceiling a latency is recorded at it: counted, so said.
                    record_clamped(&mut rx.latency_us, latency, &mut rx.latency_clamped);
                    match dev.frontend {
                        Some(fe) => {
                            let f = &mut rx.frontends[fe];
                            f.points += 1;
                            record_clamped(&mut f.latency_us, latency, &mut f.latency_clamped);
                        }
                        None => rx.unrouted_points += 1,
                    }
                }
                rx.points += points.len() as u64;
            }
            Err(e) => {
                rx.malformed_messages += 1;
                if rx.malformed_samples.len() < MALFORMED_LOGGED {
                    let topic = String::from_utf8_lossy(topic).into_owned();
                    mqtt_tool::errln!(
                        "malformed message on {}: {e}",
                        mqtt_tool::out::escape(&topic)
                    );
                    rx.malformed_samples.push((topic, e.to_string()));
                }
            }
        }
        self.points = reuse(points);
    }
}

fn wall_us() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_micros() as f64)
}

/// Subscribes and receives until a stop condition; returns what arrived.
pub async fn run(
    plan: &Plan,
    mut session: Session,
    target: &BrokerTarget,
    live: Arc<Live>,
    shutdown: &Shutdown,
    sink: Option<Sink>,
) -> Received {
    let router = Router::new(&plan.routes, &plan.route_prefixes);
    let mut rx = Received::new(&router);
    let mut pipe = Pipeline {
        plan,
        router,
        index: HashMap::new(),
        decoder: Decoder::default(),
        last_device: None,
        points: Vec::new(),
        sink,
    };
    session.set_read_hold(plan.read_hold);
    rx.phases.connect(&session.connect_phases());
    live.phases.set(&rx.phases);
    let filters = plan.filters();
    if let Err(e) = session.subscribe(&filters, plan.qos).await {
        rx.stop = Stop::Failed(format!("cannot subscribe: {e}"));
        if let Some(sink) = pipe.sink.take() {
            rx.sink = Some(sink.finish(&shutdown.abort).await.1);
        }
        return rx;
    }
    let started = Instant::now();
    let end_at = plan.duration.map(|d| started + d);
    if let Some(e) = end_at {
        let _ = live.ends_at.set(e);
    }
    // A broker that never confirms the subscription is a failure of its own, not silence.
    let mut suback_deadline = started + plan.connect.connect_timeout;
    // PUBACKs (QoS 1), PUBRECs and PUBCOMPs (QoS 2) for the packets of one read, written
    // together.
    let mut acks: Vec<u8> = Vec::new();
    // QoS 2: the ids delivered and awaiting their PUBREL, for this session's life.
    let mut qos2 = Receiver::default();
    let v5 = session.v5();
    // Arrival: when the read that brought the bytes returned.
    let (mut now, mut arrival_us) = (Instant::now(), wall_us());
    // Devices with gaps, for the progress line: a walk over all devices about once a second.
    let mut gaps_counted = now;
    let mut latency_shared = now;
    let from_zero = plan.expect.is_some();
    // Since the last reconnect: silence while the broker was away is not idleness.
    let mut back_at: Option<Instant> = None;
    // The SUBACK after the last reconnect arrived (said once on stderr).
    let mut resubscribed = false;
    // When the sink last released PUBACKs: a broker waiting for them is not idle.
    let mut released_at: Option<Instant> = None;
    let mut rng = (std::process::id() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    // Another client with this client id (a second copy with the same --client-id) takes
    // the session, and each reconnect takes it back: named at once, and the run fails.
    let mut id_watch = mqtt_tool::mqtt::IdWatch::default();
    let mut up_at = Instant::now();
    let client_id = plan.connect.client_id.clone();

    'session: loop {
        // The broker closed the connection in order (what it does to a session taken over).
        let mut closed_by_broker = false;
        // Some(why): the connection was lost; None: a stop condition holds (rx.stop).
        let lost: Option<String> = 'receiving: loop {
            loop {
                let packet = match session.next_packet() {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(e) => {
                        let flag = match e {
                            mqtt_wire::Malformed::TooLarge { .. } => " (--max-packet-size)",
                            _ => "",
                        };
                        rx.stop = Stop::Failed(format!("the broker sent {e}{flag}"));
                        break 'receiving None;
                    }
                };
                match packet {
                    Packet::Publish(mqtt_wire::packets::Publish {
                        qos,
                        retain,
                        pkid,
                        topic,
                        payload,
                        ..
                    }) => {
                        match qos {
                            Qos::AtMostOnce => {}
                            Qos::AtLeastOnce => {
                                acks.extend_from_slice(&mqtt_wire::packets::puback(pkid))
                            }
                            Qos::ExactlyOnce => {
                                acks.extend_from_slice(&ack(AckKind::PubRec, pkid, 0, v5));
                                if qos2.on_publish(pkid) == Delivery::Duplicate {
                                    // Delivered already, its PUBREL not yet here.
                                    continue;
                                }
                            }
                        }
                        rx.first_message.get_or_insert(now);
                        rx.last_message = Some(now);
                        // Delivering again (a persistent session's queue may come before
                        // the SUBACK). Looked at first: the division cost 2% of a drain.
                        if rx.outages.open() {
                            rx.outages.back(arrival_us / 1e6);
                        }
                        pipe.message(&mut rx, topic, payload, retain, arrival_us);
                        if plan.expect.is_some_and(|n| rx.unique >= n) {
                            rx.stop = Stop::Expected;
                            break 'receiving None;
                        }
                    }
                    Packet::PubRel(a) => {
                        let reason = qos2.on_pubrel(a.pkid);
                        acks.extend_from_slice(&ack(AckKind::PubComp, a.pkid, reason, v5));
                    }
                    Packet::SubAck { codes, .. } => {
                        // A SUBACK holds a code per filter; a broker that sends more codes than
                        // filters (or fewer) is answered by what we can tell, never an index panic.
                        let refused = codes.iter().position(|c| *c >= 0x80);
                        // Timed here, before any stop below ends the read's loop.
                        if let Some(took) = session.take_suback_took() {
                            rx.phases.suback(took);
                            live.phases.set(&rx.phases);
                        }
                        if let Some(i) = refused {
                            rx.stop = Stop::Failed(format!(
                                "the broker refused the subscription to '{}'",
                                filters.get(i).map_or("?", String::as_str)
                            ));
                            break 'receiving None;
                        }
                        rx.outages.back(wall_us() / 1e6);
                        if rx.subscribed_at.is_some() && back_at.is_some() && !resubscribed {
                            resubscribed = true;
                            mqtt_tool::errln!("subscribed again to {}", filters.join(", "));
                        }
                        if rx.subscribed_at.is_none() {
                            rx.subscribed_at = Some(Instant::now());
                            mqtt_tool::errln!("subscribed to {}", filters.join(", "));
                            if plan.expect == Some(0) {
                                rx.stop = Stop::Expected;
                                break 'receiving None;
                            }
                        }
                    }
                    _ => {}
                }
            }
            live.messages.store(rx.messages, Relaxed);
            live.points.store(rx.points, Relaxed);
            live.unique.store(rx.unique, Relaxed);
            live.devices.store(rx.devices.len() as u64, Relaxed);
            live.malformed.store(rx.malformed_messages, Relaxed);
            live.latency_clamped.store(rx.latency_clamped, Relaxed);
            if rx.subscribed_at.is_some() {
                live.connected.store(1, Relaxed);
            }
            if now.duration_since(gaps_counted) >= std::time::Duration::from_secs(1) {
                gaps_counted = now;
                rx.outages.roll();
                let (mut gappy, mut missing, mut duplicate) = (0u64, 0u64, 0u64);
                for d in &rx.devices {
                    let t = d.tracker.counts(&rx.pools);
                    duplicate += t.duplicates;
                    if plan.share_group.is_none() {
                        // Below the highest seen (from 0 with --expect): what has not come.
                        let start = if from_zero { Some(0) } else { t.min_seq };
                        if let (Some(lo), Some(hi)) = (start, t.max_seq) {
                            let gap = (hi - lo).saturating_add(1).saturating_sub(t.unique);
                            gappy += u64::from(gap > 0);
                            missing = missing.saturating_add(gap);
                        }
                    }
                }
                live.gappy.store(gappy, Relaxed);
                live.missing.store(missing, Relaxed);
                live.duplicate.store(duplicate, Relaxed);
            }
            if plan.live_histograms && now.duration_since(latency_shared) >= LATENCY_SHARED_EVERY {
                latency_shared = now;
                if let Ok(mut h) = live.latency_us.lock() {
                    match h.as_mut() {
                        Some(h) => h.clone_from(&rx.latency_us),
                        None => *h = Some(rx.latency_us.clone()),
                    }
                }
            }
            if let Some(sink) = pipe.sink.as_mut() {
                // Acknowledged once stored: the sink holds them until then.
                sink.hold(&mut acks);
                let due = sink.step(Instant::now());
                live.stored.store(sink.written(), Relaxed);
                if !due.is_empty() {
                    if let Err(e) = session.write(&due).await {
                        break Some(e.to_string());
                    }
                    released_at = Some(Instant::now());
                }
            }
            if !acks.is_empty() {
                if let Err(e) = session.write(&acks).await {
                    break Some(e.to_string());
                }
                acks.clear();
            }
            // The database lags: read nothing more (the broker holds the rest), and take
            // neither the pause nor a batch being written for idleness.
            let paused = pipe.sink.as_ref().is_some_and(Sink::full);
            let sink_busy = pipe.sink.as_ref().is_some_and(Sink::busy);
            // Reading held back for the sink: an unread PINGRESP then says nothing about the
            // broker. (A ping goes out every half keep-alive meanwhile, so once reading
            // resumes the last one has half a keep-alive left to be answered.)
            let held_back = paused;
            let (deadline, why) = match (rx.subscribed_at, rx.last_message) {
            (None, _) => (suback_deadline, Stop::Failed(format!(
                "the broker did not confirm the subscription (no SUBACK within {}, --connect-timeout)",
                humantime::format_duration(plan.connect.connect_timeout)
            ))),
            // Back from an outage with nothing since: the publishers may still be backing
            // off, so the first-message timeout applies again, not the idle one.
            (Some(_), Some(t)) if back_at.is_some_and(|b| b > t) => (
                back_at.unwrap_or(t) + plan.first_message_timeout.max(plan.idle_timeout),
                Stop::Idle,
            ),
            // The sink is writing what came: PUBACKs are held, so a broker with a small
            // in-flight window waits for them; that is not the stream going idle.
            (Some(_), Some(_)) if paused || sink_busy => (
                // Woken by the batch's end (bounded by --sink-timeout), not by a deadline.
                Instant::now() + std::time::Duration::from_secs(3600),
                Stop::Idle,
            ),
            (Some(_), Some(t)) => (t.max(released_at.unwrap_or(t)) + plan.idle_timeout, Stop::Idle),
            (Some(sub), None) => (
                sub.max(back_at.unwrap_or(sub)) + plan.first_message_timeout,
                Stop::FirstMessageTimeout,
            ),
        };
            let (deadline, why) = match end_at {
                Some(e) if e <= deadline => (e, Stop::Duration),
                _ => (deadline, why),
            };
            if why == Stop::Duration && Instant::now() >= deadline {
                rx.stop = why; // a stream that never pauses still ends by --duration
                break None;
            }
            // A flood that never pauses would starve the ping branch below (bytes win): at QoS 0
            // nothing else is written, and the broker would close us after 1.5 keep-alives.
            // Held back, the answers are not read: a PINGREQ every half keep-alive regardless,
            // so that the broker keeps the connection through a long pause.
            let ping_at = if held_back {
                session.keepalive_due()
            } else {
                session.ping_due()
            };
            if ping_at.is_some_and(|p| p <= Instant::now()) {
                if let Err(e) = session.ping().await {
                    break Some(e.to_string());
                }
            }
            let dead_at = if held_back { None } else { session.dead_at() };
            if dead_at.is_some_and(|d| d <= Instant::now()) {
                break Some("the broker did not answer a PINGREQ within the keep-alive".into());
            }
            // The next timer: the stop deadline, a ping to send, or a ping unanswered.
            let ping_at = if held_back {
                session.keepalive_due()
            } else {
                session.ping_due()
            };
            let timer = [ping_at, dead_at]
                .into_iter()
                .flatten()
                .fold(deadline, Instant::min);
            // Bytes already waiting win over a deadline that passed meanwhile: they arrived
            // before it, and a busy machine must not turn them into an idle stop.
            let read = tokio::select! {
                biased;
                _ = shutdown.stop.cancelled() => { rx.stop = Stop::Signal; break None }
                r = session.read_more(), if !paused => r,
                _ = async {
                    match pipe.sink.as_mut() {
                        Some(s) => s.next_done().await,
                        None => std::future::pending().await,
                    }
                }, if sink_busy => continue,
                _ = tokio::time::sleep_until(timer) => {
                    if timer == deadline {
                        rx.stop = why;
                        break None;
                    }
                    continue; // a ping to send, or the connection is dead: both are seen above
                }
            };
            match read {
                Ok(0) => {
                    closed_by_broker = true;
                    break Some("the broker closed the connection".into());
                }
                Ok(_) => (now, arrival_us) = (Instant::now(), wall_us()),
                Err(e) => break Some(e.to_string()),
            }
        };
        let Some(why) = lost else {
            if matches!(rx.stop, Stop::Idle | Stop::FirstMessageTimeout) {
                // Silence with half a packet read: the broker stopped inside it.
                rx.truncated(&session, "when the broker went silent", false);
            }
            break 'session;
        };
        rx.truncated(
            &session,
            "when the connection ended",
            plan.reconnect.is_some() && !plan.clean_session,
        );
        let backoff = plan.reconnect.map_or(std::time::Duration::ZERO, |r| r.0);
        let soon = up_at.elapsed() < mqtt_tool::mqtt::takeover_soon(backoff);
        let takeover = closed_by_broker.then_some(mqtt_tool::mqtt::Takeover::Likely);
        if let mqtt_tool::mqtt::Loss::InUse { newly } = id_watch.lost(takeover, soon) {
            rx.takeovers += 1;
            let line = mqtt_tool::mqtt::client_id_in_use(&client_id);
            if !newly {
                rx.losses += 1;
                rx.stop = Stop::Failed(line);
                break 'session;
            }
            // Named now; the reconnect below takes the session back once more, so that the
            // other client sees the same, and then this run stops.
            mqtt_tool::errln!("error: {line}");
        }
        let Some((lo, hi, give_up)) = plan.reconnect else {
            rx.stop = Stop::Failed(format!("connection to the broker lost: {why}"));
            break 'session;
        };
        // Reconnect: what the lost connection had not acknowledged the broker sends again (a
        // persistent session) or never (a clean one: the verdict shows the gap).
        acks.clear();
        if let Some(sink) = pipe.sink.as_mut() {
            sink.forget_acks();
        }
        let down = Instant::now();
        rx.losses += 1;
        // From the last bytes read: nothing since proves the connection was there.
        let p99 = rx.latency_us.value_at_quantile(0.99);
        rx.outages.lost(arrival_us / 1e6, p99);
        live.connected.store(0, Relaxed);
        mqtt_tool::errln!(
            "connection to the broker lost: {}; reconnecting",
            mqtt_tool::out::escape(&why)
        );
        let mut attempt = 0u32;
        session = loop {
            attempt += 1;
            let delay = mqtt_wire::backoff::delay(lo, hi, attempt, &mut rng);
            let wake = end_at.map_or(Instant::now() + delay, |e| e.min(Instant::now() + delay));
            tokio::select! {
                _ = shutdown.stop.cancelled() => {
                    rx.stop = Stop::Signal;
                    rx.disconnected += down.elapsed();
                    break 'session;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            if end_at.is_some_and(|e| Instant::now() >= e) {
                rx.stop = Stop::Duration;
                rx.disconnected += down.elapsed();
                break 'session;
            }
            if down.elapsed() >= give_up {
                rx.stop = Stop::Failed(format!(
                    "connection to the broker lost ({why}) and not back within --reconnect-timeout {}",
                    humantime::format_duration(give_up)
                ));
                rx.disconnected += down.elapsed();
                break 'session;
            }
            let opened = tokio::select! {
                s = Session::open(&plan.connect, target, plan.clean_session, plan.session_expiry) => s,
                _ = shutdown.stop.cancelled() => {
                    rx.stop = Stop::Signal;
                    rx.disconnected += down.elapsed();
                    break 'session;
                }
            };
            match opened {
                Ok(s) => break s,
                Err(e @ mqtt_tool::error::Error::Refused { .. }) => {
                    // Fatal: credentials or authorization, not a broker coming back.
                    rx.refused = true;
                    rx.stop = Stop::Failed(format!("reconnecting failed: {e}"));
                    rx.disconnected += down.elapsed();
                    break 'session;
                }
                Err(_) => id_watch.failed_attempt(),
            }
        };
        rx.reconnects += 1;
        rx.phases.connect(&session.connect_phases());
        live.phases.set(&rx.phases);
        up_at = Instant::now();
        let back = id_watch.back();
        if back.confirmed {
            rx.takeovers += 1;
            if rx.takeovers == 1 {
                mqtt_tool::errln!(
                    "warning: {}",
                    mqtt_tool::mqtt::taken_over(&client_id, mqtt_tool::mqtt::Takeover::Likely)
                );
            }
        }
        if id_watch.in_use() {
            // Back once more after finding the client id in use: the other client has just
            // seen the same; this run stops.
            rx.disconnected += down.elapsed();
            rx.stop = Stop::Failed(mqtt_tool::mqtt::client_id_in_use(&client_id));
            break 'session;
        }
        rx.disconnected += down.elapsed();
        if !plan.clean_session && plan.qos > 0 && session.session_present() {
            // The broker queued for this session while it was away: nothing is excused.
            rx.outages.session_kept();
        }
        if !session.session_present() {
            // A new session: the broker will send no PUBREL for the ids of the old one.
            qos2.clear();
        }
        session.set_read_hold(plan.read_hold);
        if let Err(e) = session.subscribe(&filters, plan.qos).await {
            rx.stop = Stop::Failed(format!("cannot subscribe after reconnecting: {e}"));
            break 'session;
        }
        back_at = Some(Instant::now());
        resubscribed = false;
        if rx.subscribed_at.is_none() {
            suback_deadline = Instant::now() + plan.connect.connect_timeout;
        }
        // What came with the CONNACK arrived now, not before the outage.
        (now, arrival_us) = (Instant::now(), wall_us());
        mqtt_tool::errln!("reconnected after {:.1} s", down.elapsed().as_secs_f64());
    }
    live.messages.store(rx.messages, Relaxed);
    live.points.store(rx.points, Relaxed);
    live.unique.store(rx.unique, Relaxed);
    live.devices.store(rx.devices.len() as u64, Relaxed);
    if let Some(mut sink) = pipe.sink.take() {
        // What was counted is stored (or fails) before its PUBACKs go.
        sink.hold(&mut acks);
        let (due, report) = sink.finish(&shutdown.abort).await;
        live.stored.store(report.rows_written, Relaxed);
        rx.sink = Some(report);
        acks = due;
    }
    if !matches!(rx.stop, Stop::Failed(_)) {
        // The PUBACKs of what was counted, then DISCONNECT, so the broker sees a clean
        // goodbye; messages arriving meanwhile are past the stop and not counted.
        if !acks.is_empty() {
            let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, session.write(&acks)).await;
        }
        session.disconnect(DISCONNECT_TIMEOUT).await;
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100,000 devices in order: each costs its `Device` (168 bytes and a B-tree node of
    /// about 190 before the 16-byte tracker) and its id, no gap record.
    #[test]
    fn in_order_devices_cost_their_struct_and_no_gap_record() {
        let size = std::mem::size_of::<Device>();
        eprintln!("a Device is {size} bytes");
        assert!(size <= 96, "a Device is {size} bytes");
        let router = Router::new(&[], &[]);
        let mut rx = Received::new(&router);
        let mut index = HashMap::new();
        for d in 0..100_000 {
            let i = rx
                .device(&format!("sensor-{d:06}"), &router, &mut index, 100_000)
                .expect("within --max-devices");
            for s in 0..3 {
                rx.devices[i].tracker.record(s, &mut rx.pools);
            }
        }
        assert_eq!(rx.pools.gap_records(), 0);
        assert_eq!(rx.devices[99_999].tracker.counts(&rx.pools).unique, 3);
    }
}
