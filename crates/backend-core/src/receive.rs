//! The receiving loop: subscribe, then for every PUBLISH decode, route and verify, until a
//! stop condition holds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, SubscribeReasonCode};
use tokio::time::Instant;

use mqtt_tool::shutdown::Shutdown;

use crate::decode::{Decoder, Shape};
use crate::route::{FrontendId, Router};
use crate::verify::{Arrival, Budget, DeviceTracker};
use crate::Plan;

/// Live counts for the progress line.
#[derive(Debug, Default)]
pub struct Live {
    pub messages: AtomicU64,
    pub points: AtomicU64,
    pub unique: AtomicU64,
    pub devices: AtomicU64,
}

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

/// One device's state: counts and seq ranges, a few hundred bytes (latency histograms are
/// kept per frontend and overall, not per device).
#[derive(Debug)]
pub struct Device {
    pub id: String,
    pub frontend: Option<FrontendId>,
    pub tracker: DeviceTracker,
    /// Highest end-to-end latency of its points, µs.
    pub latency_max_us: u64,
    /// Its first message was a retained one (left on the topic before this run).
    pub first_retained: bool,
}

/// One frontend's share of the points.
#[derive(Debug)]
pub struct Frontend {
    pub name: String,
    pub points: u64,
    /// Indexes into [`Received::devices`].
    pub devices: Vec<usize>,
    pub latency_us: Histogram<u64>,
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
    /// The ranges all devices together may still hold.
    pub budget: Budget,
    pub latency_us: Histogram<u64>,
    /// First malformed payloads, for the report: (topic, error).
    pub malformed_samples: Vec<(String, String)>,
    pub first_message: Option<Instant>,
    pub last_message: Option<Instant>,
    /// When the broker confirmed the subscription (None: it never did).
    pub subscribed_at: Option<Instant>,
    /// A signal came while connecting: nothing was subscribed.
    pub connecting_interrupted: bool,
    pub stop: Stop,
}

const MAX_TRACKED_US: u64 = 3_600_000_000;
const MALFORMED_LOGGED: usize = 5;
const DISCONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, sigfig)
        .expect("static histogram bounds are valid")
}

impl Received {
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
            tracker: DeviceTracker::default(),
            latency_max_us: 0,
            first_retained: false,
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
                    latency_us: histogram(3),
                })
                .collect(),
            budget: Budget::default(),
            latency_us: histogram(3),
            malformed_samples: Vec::new(),
            first_message: None,
            last_message: None,
            subscribed_at: None,
            connecting_interrupted: false,
            stop: Stop::Idle,
        }
    }
}

/// Subscribes and receives until a stop condition; returns what arrived.
pub async fn run(
    plan: &Plan,
    client: AsyncClient,
    mut eventloop: EventLoop,
    live: Arc<Live>,
    shutdown: &Shutdown,
) -> Received {
    let router = Router::new(&plan.routes, &plan.route_prefixes);
    let mut rx = Received::new(&router);
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut decoder = Decoder::default();
    let filters = plan.filters();
    let qos = if plan.qos == 0 {
        rumqttc::QoS::AtMostOnce
    } else {
        rumqttc::QoS::AtLeastOnce
    };
    if let Err(e) = client
        .subscribe_many(
            filters
                .iter()
                .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos)),
        )
        .await
    {
        rx.stop = Stop::Failed(format!("cannot subscribe: {e}"));
        return rx;
    }
    let started = Instant::now();
    let end_at = plan.duration.map(|d| started + d);
    // A broker that never confirms the subscription is a failure of its own, not silence.
    let suback_deadline = started + plan.connect.connect_timeout;
    let mut last_device: Option<usize> = None;

    loop {
        let (deadline, why) = match (rx.subscribed_at, rx.last_message) {
            (None, _) => (suback_deadline, Stop::Failed(format!(
                "the broker did not confirm the subscription (no SUBACK within {}, --connect-timeout)",
                humantime::format_duration(plan.connect.connect_timeout)
            ))),
            (Some(_), Some(t)) => (t + plan.idle_timeout, Stop::Idle),
            (Some(sub), None) => (sub + plan.first_message_timeout, Stop::FirstMessageTimeout),
        };
        let (deadline, why) = match end_at {
            Some(e) if e <= deadline => (e, Stop::Duration),
            _ => (deadline, why),
        };
        let event = tokio::select! {
            biased;
            _ = shutdown.stop.cancelled() => { rx.stop = Stop::Signal; break }
            _ = tokio::time::sleep_until(deadline) => { rx.stop = why; break }
            ev = eventloop.poll() => ev,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = Instant::now();
                let arrival_us = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_micros() as f64);
                rx.first_message.get_or_insert(now);
                rx.last_message = Some(now);
                rx.messages += 1;
                rx.retained_messages += u64::from(p.retain);
                rx.bytes += p.payload.len() as u64;
                buf.clear();
                buf.extend_from_slice(&p.payload);
                let mut points = Vec::new();
                match decoder.decode(&mut buf, &mut points) {
                    Ok(shape) => {
                        match shape {
                            Shape::Legacy => rx.legacy_messages += 1,
                            Shape::Batch => rx.batch_messages += 1,
                        }
                        for pt in &points {
                            let di = match last_device {
                                Some(i) if rx.devices[i].id == pt.device_id => Some(i),
                                _ => {
                                    last_device = rx.device(
                                        &pt.device_id,
                                        &router,
                                        &mut index,
                                        plan.max_devices,
                                    );
                                    last_device
                                }
                            };
                            let Some(di) = di else {
                                rx.untracked_points += 1;
                                continue;
                            };
                            // In f64: any timestamp, however hostile, gives a latency
                            // (negative and NaN become 0, huge saturates).
                            let latency = (arrival_us - pt.timestamp * 1e6).max(0.0) as u64;
                            let dev = &mut rx.devices[di];
                            if dev.tracker.received == 0 {
                                dev.first_retained = p.retain;
                            }
                            if matches!(
                                dev.tracker.record(pt.seq, &mut rx.budget),
                                Arrival::New | Arrival::Late
                            ) {
                                rx.unique += 1;
                            }
                            dev.latency_max_us = dev.latency_max_us.max(latency);
                            rx.latency_us.saturating_record(latency);
                            match dev.frontend {
                                Some(fe) => {
                                    let f = &mut rx.frontends[fe];
                                    f.points += 1;
                                    f.latency_us.saturating_record(latency);
                                }
                                None => rx.unrouted_points += 1,
                            }
                        }
                        rx.points += points.len() as u64;
                    }
                    Err(e) => {
                        rx.malformed_messages += 1;
                        if rx.malformed_samples.len() < MALFORMED_LOGGED {
                            mqtt_tool::errln!(
                                "malformed message on {}: {e}",
                                mqtt_tool::out::escape(&p.topic)
                            );
                            rx.malformed_samples.push((p.topic.clone(), e.to_string()));
                        }
                    }
                }
                live.messages.store(rx.messages, Relaxed);
                live.points.store(rx.points, Relaxed);
                live.unique.store(rx.unique, Relaxed);
                live.devices.store(rx.devices.len() as u64, Relaxed);
                if plan.expect.is_some_and(|n| rx.unique >= n) {
                    rx.stop = Stop::Expected;
                    break;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                // A SUBACK holds a code per filter; a broker that sends more codes than
                // filters (or fewer) is answered by what we can tell, never an index panic.
                if let Some(i) = ack
                    .return_codes
                    .iter()
                    .position(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    rx.stop = Stop::Failed(format!(
                        "the broker refused the subscription to '{}'",
                        filters.get(i).map_or("?", String::as_str)
                    ));
                    break;
                }
                if rx.subscribed_at.is_none() {
                    rx.subscribed_at = Some(Instant::now());
                    mqtt_tool::errln!("subscribed to {}", filters.join(", "));
                    if plan.expect == Some(0) {
                        rx.stop = Stop::Expected;
                        break;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                rx.stop = Stop::Failed(format!("connection to the broker lost: {e}"));
                break;
            }
        }
    }
    if !matches!(rx.stop, Stop::Failed(_)) {
        // Send the DISCONNECT (and any PUBACK still queued) before the connection is
        // dropped, so the broker sees a clean goodbye; messages arriving meanwhile are past
        // the stop and not counted.
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    rx
}
