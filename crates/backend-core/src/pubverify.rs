//! `loadgen pub --verify`: backend-sub's receive path (its session, decoder and verifier,
//! [`crate::receive::run`]) as a library, on its own thread and runtime inside the publisher.
//!
//! ```text
//! subscribe(plan, broker): thread "verify" --> Session::open_first --> receive::run
//!                          returns once the SUBACK is in (live.connected), or the failure
//! finish(expected):        the stream drains (quiet, or complete and quiet, bounded)
//!                          --> stop --> Received (per-device trackers)
//!                          --> compare with each device's written seqs --> Delivery
//! ```
//!
//! The publisher (publisher-core) sees only [`mqtt_tool::delivery`]'s traits; `bins/loadgen`
//! hands it [`PubVerifier`].

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mqtt_tool::broker::BrokerTarget;
use mqtt_tool::connect::MQTT_MAX_PACKET;
use mqtt_tool::delivery::{
    Delivery, DeliveryCheck, DeliveryPlan, DeliveryRun, DeviceProblem, Expected, NAMED_DEVICES,
};
use mqtt_tool::format::Percentiles;
use mqtt_tool::shutdown::Shutdown;
use mqtt_tool::Error;
use tokio::sync::oneshot;

use crate::outage::{intersect, subtract};
use crate::receive::{self, Live, Received, Stop};
use crate::verify::SeqRange;

/// The verifier `bins/loadgen` injects into the publisher.
pub struct PubVerifier;

/// The stream is quiet this long with every expected point in: it has drained.
const SETTLE: Duration = Duration::from_millis(100);
/// How often the drain looks at the live counts.
const TICK: Duration = Duration::from_millis(5);
/// The drain ends at the latest after this many `--verify-timeout`s (a stream that never
/// goes quiet: another publisher on the filter).
const HARD_BOUND: u32 = 10;
/// The route of the fleet's own devices.
const OWN: &str = "fleet";
/// Missing ranges listed per named device.
const RANGES_LISTED: usize = 5;

impl DeliveryCheck for PubVerifier {
    fn subscribe(
        &self,
        plan: &DeliveryPlan,
        target: &BrokerTarget,
    ) -> Result<Box<dyn DeliveryRun>, Error> {
        let backend = backend_plan(plan);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
        let (expected_tx, expected_rx) = oneshot::channel::<Expected>();
        let (target, plan) = (target.clone(), plan.clone());
        let thread = std::thread::Builder::new()
            .name("verify".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(Error::failed("cannot start the verifier", e)));
                        return None;
                    }
                };
                rt.block_on(verify(backend, plan, target, ready_tx, expected_rx))
            })
            .map_err(|e| Error::failed("cannot start the verifier's thread", e))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Box::new(Running {
                thread,
                expected: expected_tx,
            })),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(Error::Other("the verifier's thread ended".into())),
        }
    }
}

struct Running {
    thread: std::thread::JoinHandle<Option<Delivery>>,
    expected: oneshot::Sender<Expected>,
}

impl DeliveryRun for Running {
    fn finish(self: Box<Self>, expected: Expected) -> Delivery {
        let _ = self.expected.send(expected);
        match self.thread.join() {
            Ok(Some(d)) => d,
            _ => Delivery {
                error: Some("the verifier's thread failed".into()),
                ..Delivery::default()
            },
        }
    }
}

/// backend-sub's plan for the verifier: the publisher's connection under its own client
/// id, a clean session at QoS 1, no reconnect (a lost verifier is the verifier's failure,
/// said in the report), and no stop of its own: [`verify`] ends it.
fn backend_plan(p: &DeliveryPlan) -> crate::Plan {
    let mut connect = p.connect.clone();
    connect.client_id = mqtt_tool::connect::instance_client_id("loadgen-verify");
    connect.max_packet_size = MQTT_MAX_PACKET as usize;
    // Far enough never to end the run, near enough for Instant arithmetic.
    let never = Duration::from_secs(30 * 86_400);
    crate::Plan {
        connect,
        topics: vec![p.filter.clone()],
        qos: 1,
        share_group: None,
        // One frontend holding the fleet's own devices: its latency histogram is theirs.
        routes: p
            .device_ids
            .iter()
            .map(|id| (id.clone(), OWN.to_string()))
            .collect(),
        route_prefixes: Vec::new(),
        expect: None,
        idle_timeout: never,
        first_message_timeout: never,
        duration: None,
        max_devices: usize::try_from(p.devices.saturating_add(1024)).unwrap_or(usize::MAX),
        read_hold: Duration::from_millis(1),
        at_least_once: false,
        accept_disconnected: false,
        reconnect: None,
        clean_session: true,
        session_expiry: Duration::ZERO,
        report_json: None,
        exports: Default::default(),
        thresholds: Vec::new(),
        hdr_log: None,
        metrics: mqtt_tool::live::MetricsPlan {
            addr: None,
            linger: Duration::ZERO,
            push: None,
            run_id: String::new(),
            instance: String::new(),
            quiet: true,
        },
        live_histograms: false,
        report_devices: false,
        quiet: true,
        sink: None,
    }
}

async fn verify(
    backend: crate::Plan,
    plan: DeliveryPlan,
    target: BrokerTarget,
    ready: std::sync::mpsc::Sender<Result<(), Error>>,
    mut expected_rx: oneshot::Receiver<Expected>,
) -> Option<Delivery> {
    let session = match mqtt_tool::session::Session::open_first(
        &backend.connect,
        &target,
        true,
        Duration::ZERO,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return None;
        }
    };
    let mut shutdown = Shutdown::new("stopping the verifier");
    shutdown.stop = plan.stop.child_token();
    let stop = shutdown.stop.clone();
    let live = Arc::new(Live::default());
    let run = receive::run(&backend, session, &target, live.clone(), &shutdown, None);
    tokio::pin!(run);
    // Until the SUBACK: nothing is published before it.
    let mut done: Option<Received> = None;
    while live.connected.load(Relaxed) == 0 {
        tokio::select! {
            rx = &mut run => { done = Some(rx); break; }
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
    if let Some(rx) = done {
        let why = match rx.stop {
            Stop::Failed(e) => e,
            other => format!("stopped before subscribing ({other:?})"),
        };
        let _ = ready.send(Err(Error::Other(format!(
            "--verify: cannot subscribe to {}: {why}",
            plan.filter
        ))));
        return None;
    }
    let _ = ready.send(Ok(()));
    // The fleet runs; the verifier receives until it is told what was written.
    let expected = loop {
        tokio::select! {
            rx = &mut run, if done.is_none() => done = Some(rx),
            e = &mut expected_rx => break e.unwrap_or_default(),
        }
    };
    let total: u64 = expected.devices.iter().map(|d| d.count()).sum();
    let mut stopped = "failed";
    if done.is_none() {
        let started = tokio::time::Instant::now();
        let (mut seen, mut seen_at) = (live.points.load(Relaxed), started);
        stopped = loop {
            tokio::select! {
                rx = &mut run => { done = Some(rx); break "failed"; }
                _ = tokio::time::sleep(TICK) => {}
            }
            let now = tokio::time::Instant::now();
            let points = live.points.load(Relaxed);
            if points != seen {
                (seen, seen_at) = (points, now);
            }
            let quiet = now - seen_at;
            if stop.is_cancelled() {
                break "signal";
            }
            if live.unique.load(Relaxed) >= total && quiet >= SETTLE {
                break "drained";
            }
            if quiet >= plan.timeout {
                break "quiet";
            }
            if now - started >= plan.timeout * HARD_BOUND {
                break "timeout";
            }
        };
        stop.cancel();
    }
    let rx = match done {
        Some(rx) => rx,
        None => run.await,
    };
    if rx.stop == Stop::Signal {
        stopped = "signal";
    }
    Some(compare(&plan.filter, &rx, &expected, stopped))
}

/// What arrived against what each device wrote.
pub fn compare(filter: &str, rx: &Received, expected: &Expected, stopped: &str) -> Delivery {
    // The fleet's own devices' latencies (everything received when no route was set).
    let latency = rx
        .frontends
        .iter()
        .find(|f| f.name == OWN)
        .map_or(&rx.latency_us, |f| &f.latency_us);
    let mut d = Delivery {
        filter: filter.to_string(),
        malformed: rx.malformed_messages,
        unexpected: rx.untracked_points,
        unwritten: expected.unwritten,
        devices: expected.devices.len() as u64,
        e2e_latency_us: Percentiles::of(latency),
        e2e_histogram: mqtt_tool::hist::encode(latency),
        stopped: stopped.to_string(),
        ..Delivery::default()
    };
    if let Stop::Failed(e) = &rx.stop {
        d.error = Some(e.clone());
    }
    let index: HashMap<&str, usize> = rx
        .devices
        .iter()
        .enumerate()
        .map(|(i, dev)| (dev.id.as_str(), i))
        .collect();
    let name = |p: DeviceProblem, d: &mut Delivery| {
        d.devices_with_problems += 1;
        if d.problem_devices.len() < NAMED_DEVICES {
            d.problem_devices.push(p);
        }
    };
    let mut known = vec![false; rx.devices.len()];
    for e in &expected.devices {
        let want = e.count();
        d.expected += want;
        let mut p = DeviceProblem {
            device: e.id.clone(),
            expected: want,
            ..DeviceProblem::default()
        };
        let written: Vec<SeqRange> = if e.sent == 0 {
            Vec::new()
        } else {
            let skipped: Vec<SeqRange> = e.skipped.iter().map(|&(a, b)| SeqRange(a, b)).collect();
            subtract(&[SeqRange(0, e.sent - 1)], &skipped, usize::MAX)
        };
        let received = match index.get(e.id.as_str()) {
            Some(&i) => {
                known[i] = true;
                let dev = &rx.devices[i];
                let c = dev.tracker.counts(&rx.pools);
                let (ranges, _) = dev.tracker.received_ranges(&rx.pools, usize::MAX);
                let unique_written: u64 = intersect(&ranges, &written, usize::MAX)
                    .iter()
                    .map(SeqRange::len)
                    .sum();
                p.delivered = c.received;
                p.duplicate = c.duplicates;
                p.out_of_order = c.out_of_order;
                p.unexpected = c.unique.saturating_sub(unique_written) + c.unverifiable;
                d.unique += unique_written;
                ranges
            }
            None => Vec::new(),
        };
        p.missing = want.saturating_sub(
            intersect(&received, &written, usize::MAX)
                .iter()
                .map(SeqRange::len)
                .sum(),
        );
        if p.missing > 0 {
            p.missing_ranges = subtract(&written, &received, RANGES_LISTED)
                .iter()
                .map(|r| (r.0, r.1))
                .collect();
        }
        d.delivered += p.delivered;
        d.missing += p.missing;
        d.duplicate += p.duplicate;
        d.out_of_order += p.out_of_order;
        d.unexpected += p.unexpected;
        if p.missing + p.duplicate + p.unexpected > 0 {
            name(p, &mut d);
        }
    }
    // Devices the fleet never had, on its filter: unexpected, named (a shard's: the other
    // shards', not judged here).
    for (i, dev) in rx.devices.iter().enumerate() {
        if known[i] {
            continue;
        }
        let c = dev.tracker.counts(&rx.pools);
        if expected.others_expected {
            d.other_devices_points += c.received;
            continue;
        }
        d.delivered += c.received;
        d.unexpected += c.received;
        name(
            DeviceProblem {
                device: dev.id.clone(),
                delivered: c.received,
                unexpected: c.received,
                duplicate: c.duplicates,
                ..DeviceProblem::default()
            },
            &mut d,
        );
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::receive::Device;
    use crate::route::Router;
    use crate::verify::Tracker;
    use mqtt_tool::delivery::ExpectedDevice;

    fn received(devices: &[(&str, &[u64])]) -> Received {
        let mut rx = Received::new(&Router::default());
        for (id, seqs) in devices {
            let mut tracker = Tracker::default();
            for s in *seqs {
                tracker.record(*s, &mut rx.pools);
            }
            rx.devices.push(Device {
                id: id.to_string(),
                frontend: None,
                tracker,
                latency_max_us: 0,
                first_retained: false,
                frontier_ts: 0.0,
                outage: None,
            });
        }
        rx
    }

    fn expect(id: &str, sent: u64, skipped: &[(u64, u64)]) -> ExpectedDevice {
        ExpectedDevice {
            id: id.into(),
            sent,
            skipped: skipped.to_vec(),
        }
    }

    #[test]
    fn seqs_skipped_offline_are_not_expected_and_arriving_they_are_unexpected() {
        let rx = received(&[("a", &[0, 1, 4, 5]), ("b", &[0, 1, 2, 2, 9])]);
        let e = Expected {
            devices: vec![expect("a", 6, &[(2, 3)]), expect("b", 4, &[])],
            ..Expected::default()
        };
        let d = compare("device_data/+", &rx, &e, "drained");
        // a: 0..6 less 2..=3 all arrived; b: 3 missing, 2 twice, 9 never written.
        assert_eq!(d.expected, 8);
        assert_eq!(
            (d.unique, d.missing, d.duplicate, d.unexpected),
            (7, 1, 1, 1)
        );
        assert_eq!(d.devices_with_problems, 1);
        let b = &d.problem_devices[0];
        assert_eq!(b.device, "b");
        assert_eq!(b.missing_ranges, vec![(3, 3)]);
        assert!(d.failure().unwrap().contains("b"));
    }

    #[test]
    fn a_device_that_never_arrived_misses_everything_and_a_stranger_is_unexpected() {
        let rx = received(&[("stranger", &[0, 1])]);
        let e = Expected {
            devices: vec![expect("a", 3, &[])],
            ..Expected::default()
        };
        let d = compare("t/+", &rx, &e, "quiet");
        assert_eq!(
            (d.missing, d.unexpected, d.devices_with_problems),
            (3, 2, 2)
        );
        // A shard's verifier: the stranger is another shard's device, not judged.
        let shard = Expected {
            others_expected: true,
            ..e
        };
        let d = compare("t/+", &rx, &shard, "quiet");
        assert_eq!((d.missing, d.unexpected, d.other_devices_points), (3, 0, 2));
    }
}
