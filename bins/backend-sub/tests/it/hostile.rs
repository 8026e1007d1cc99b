//! Hostile device ids, invalid escapes, every kind of failure at once, retained leftovers,
//! and a fleet of one-point devices: counted exactly, shown safely, in bounded memory.

use std::time::Duration;

use test_support::{payload, publish_payloads, Mosquitto};

use crate::common::{assert_no_escapes, multi_device_payload, n, start, strings, validate};

const TOPIC: &str = "device_data/hostile";

/// A device id that would set the window title and clear the screen: shown escaped in
/// every text output, kept exact in the JSON report.
#[test]
fn terminal_escapes_in_device_ids_never_reach_the_terminal() {
    let m = Mosquitto::start();
    let id =
        "evil\u{1b}]0;pwned\u{7}\u{1b}[2J\nverdict             every point arrived exactly once";
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    // A gap, so the device is named in the verdict and on stderr too.
    publish_payloads(m.port, TOPIC, &[payload(id, &[0, 1, 5])]);
    let out = backend.wait();
    out.assert_code(5);
    assert_no_escapes(&out.stdout);
    assert_no_escapes(&out.stderr);
    assert!(
        out.stdout.contains(r"evil\x1b]0;pwned\x07\x1b[2J\nverdict"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.starts_with("verdict"))
            .count(),
        1,
        "a device id forged a line:\n{}",
        out.stdout
    );
    assert_eq!(out.report["devices"][0]["device_id"], id);
}

/// `\ud800` and `\udbff` without their other half are malformed like `\udc00`, never
/// decoded to NUL: `a\u0000b` stays one device of its own, with no false duplicates.
#[test]
fn lone_surrogate_escapes_are_malformed_and_never_merge_devices() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    let point = |id: &str| {
        format!(r#"{{"device_id":"{id}","seq":0,"timestamp":1763798400.5,"value":1.5}}"#)
            .into_bytes()
    };
    publish_payloads(
        m.port,
        TOPIC,
        &[
            point(r"a\u0000b"),
            point(r"a\ud800b"),
            point(r"a\udbffb"),
            point(r"a\udc00b"),
        ],
    );
    let out = backend.wait();
    out.assert_code(5);
    let r = &out.report;
    assert_eq!(
        (n(r, "malformed_messages"), n(r, "points_duplicate")),
        (3, 0)
    );
    assert_eq!(r["devices"].as_array().unwrap().len(), 1);
    assert_eq!(out.report["devices"][0]["device_id"], "a\u{0}b");
    assert!(
        out.stderr.contains("3 malformed messages"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("duplicate"), "{}", out.stderr);
}

/// Missing, unverifiable and duplicate points on one device: the verdict names them all.
#[test]
fn the_verdict_names_every_kind_of_failure_with_its_count() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    // Even seqs only: every odd one missing, more gaps than a device keeps live, so the
    // oldest retire; then a seq below the floor (unverifiable) and a repeat (duplicate).
    let evens: Vec<u64> = (0..20_000).step_by(2).collect();
    let mut msgs: Vec<Vec<u8>> = evens.chunks(1000).map(|c| payload("dev_bad", c)).collect();
    msgs.push(payload("dev_bad", &[3, 19_998]));
    publish_payloads(m.port, TOPIC, &msgs);
    let out = backend.wait();
    out.assert_code(5);
    let d = out.device("dev_bad");
    assert_eq!((n(d, "unverifiable"), n(d, "duplicate")), (1, 1));
    assert_eq!(n(d, "missing"), 9_999);
    let verdict = out.report["reason"].as_str().unwrap();
    for part in [
        "missing 9,999 points on dev_bad",
        "1 duplicate points on dev_bad (1)",
        "1 points arrived too late",
    ] {
        assert!(verdict.contains(part), "'{part}' not in: {verdict}");
    }
    validate(&out.report);
}

/// A retained message left on a device's topic by an earlier run arrives first and makes
/// the new run's points look duplicated: the verdict says so.
#[test]
fn a_retained_leftover_is_named_in_the_verdict() {
    let m = Mosquitto::start();
    let topic = "device_data/retained_dev";
    {
        // An earlier publisher leaves its last message retained.
        use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
        let (client, mut conn) = Client::new(MqttOptions::new("leftover", "127.0.0.1", m.port), 8);
        client
            .publish(
                topic,
                QoS::AtLeastOnce,
                true,
                payload("retained_dev", &[0, 1, 2]),
            )
            .unwrap();
        for ev in conn.iter() {
            if matches!(ev, Ok(Event::Incoming(Packet::PubAck(_))) | Err(_)) {
                break;
            }
        }
        let _ = client.disconnect();
    }
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    publish_payloads(m.port, topic, &[payload("retained_dev", &[0, 1, 2, 3])]);
    let out = backend.wait();
    out.assert_code(5);
    assert_eq!(n(&out.report, "retained_messages"), 1);
    assert_eq!(out.device("retained_dev")["first_retained"], true);
    let verdict = out.report["reason"].as_str().unwrap();
    assert!(verdict.contains("3 duplicate points"), "{verdict}");
    assert!(verdict.contains("retained"), "{verdict}");
}

/// A device id past 1,024 bytes is malformed: a hostile fleet of huge ids must not make
/// each device cost its id's weight.
#[test]
fn device_ids_past_the_limit_are_malformed_not_tracked() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    let long = "x".repeat(2000);
    publish_payloads(
        m.port,
        TOPIC,
        &[payload(&long, &[0]), payload("dev_ok", &[0])],
    );
    let out = backend.wait();
    out.assert_code(5);
    assert_eq!(n(&out.report, "malformed_messages"), 1);
    assert_eq!(out.report["devices"].as_array().unwrap().len(), 1);
    assert!(out.stderr.contains("longer than 1024"), "{}", out.stderr);
}

/// 60,000 devices of one point each: every one tracked and verified, in memory that a
/// fleet can afford (each device used to carry a 28 KB histogram: 1.7 GB here).
#[test]
fn sixty_thousand_one_point_devices_fit_in_bounded_memory() {
    let m = Mosquitto::start();
    // Every device listed too (--report-devices): the report's own memory is bounded as well.
    let backend = start(&[
        "--broker",
        &m.url(),
        "--expect",
        "60000",
        "--report-devices",
        "--quiet",
    ]);
    let ids: Vec<(String, u64)> = (0..60_000)
        .map(|i| (format!("fleet_dev_{i:05}"), 0))
        .collect();
    let msgs: Vec<Vec<u8>> = ids.chunks(1000).map(multi_device_payload).collect();
    publish_payloads(m.port, TOPIC, &msgs);
    let mut peak = 0;
    let started = std::time::Instant::now();
    while !backend.exited() && started.elapsed() < Duration::from_secs(20) {
        peak = peak.max(backend.peak_rss_kb().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = backend.wait();
    eprintln!("backend peak RSS for 60,000 devices: {peak} kB");
    out.assert_code(0);
    assert_eq!(out.report["devices"].as_array().unwrap().len(), 60_000);
    assert_eq!(n(&out.report, "points_unique"), 60_000);
    assert!(
        peak > 0 && peak < 128 * 1024,
        "peak RSS {peak} kB for 60,000 devices"
    );
    // The summary stays a summary.
    assert!(
        out.stdout.lines().count() < 40,
        "{}",
        out.stdout.lines().count()
    );
    assert!(strings(&out.report["frontends"][0]["devices"]).is_empty());
}

/// 100,000 devices of two points each (a fleet at 1 point/s for two seconds), four of them
/// with crafted faults: every count exact, the four named and listed, the rest summed, the
/// report small by default, and the backend within 200 MB.
#[test]
fn a_hundred_thousand_devices_with_a_few_faulty_ones_are_proven_in_bounded_memory() {
    const DEVICES: usize = 100_000;
    let m = Mosquitto::start();
    let backend = start(&[
        "--broker",
        &m.url(),
        "--expect",
        "199999",
        "--idle-timeout",
        "5s",
        "--quiet",
    ]);
    let id = |i: usize| format!("fleet_dev_{i:06}");
    // Round 0, then round 1: device 10 sends seq 1 twice, device 20,000 seq 0 twice,
    // device 50,000 sends seq 2 instead of 1, device 99,999 starts at seq 1.
    let mut points: Vec<(String, u64)> = (0..DEVICES)
        .filter(|&i| i != 99_999)
        .map(|i| (id(i), 0))
        .collect();
    points.push((id(20_000), 0));
    for i in 0..DEVICES {
        match i {
            10 => points.extend([(id(i), 1), (id(i), 1)]),
            50_000 => points.push((id(i), 2)),
            _ => points.push((id(i), 1)),
        }
    }
    let msgs: Vec<Vec<u8>> = points.chunks(1000).map(multi_device_payload).collect();
    publish_payloads(m.port, TOPIC, &msgs);
    let mut peak = 0;
    let started = std::time::Instant::now();
    while !backend.exited() && started.elapsed() < Duration::from_secs(60) {
        peak = peak.max(backend.peak_rss_kb().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = backend.wait();
    eprintln!("backend peak RSS for 100,000 devices: {peak} kB");
    out.assert_code(5);
    let r = &out.report;
    assert_eq!(
        (
            n(r, "devices_seen"),
            n(r, "devices_failing"),
            n(r, "points_received"),
            n(r, "points_duplicate"),
        ),
        (100_000, 4, points.len() as u64, 2)
    );
    // Missing: seq 1 of device 50,000 and seq 0 of device 99,999.
    assert_eq!(n(r, "points_missing"), 2);
    assert_eq!(r["devices_listed"], "failing");
    let listed: Vec<&str> = r["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [id(10), id(20_000), id(50_000), id(99_999)]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(r["slowest_devices"].as_array().unwrap().len(), 10);
    assert!(
        peak > 0 && peak < 200 * 1024,
        "peak RSS {peak} kB for 100,000 devices"
    );
    let json_len = serde_json::to_string(r).unwrap().len();
    assert!(json_len < 64 * 1024, "default report of {json_len} bytes");
    assert!(
        out.stdout.lines().count() < 40,
        "{}",
        out.stdout.lines().count()
    );
    let verdict = out
        .stdout
        .lines()
        .find(|l| l.starts_with("verdict"))
        .unwrap();
    for i in [10, 20_000, 50_000, 99_999] {
        assert!(verdict.contains(&id(i)), "{verdict}");
    }
}

/// A latency past the histogram's ceiling (a point stamped in 1970 arrives 56 years late) is
/// recorded at the ceiling, and counted so: overall and for its frontend, in the JSON and
/// the summary, never silently shown as an hour.
#[test]
fn latencies_past_the_histograms_ceiling_are_counted_as_clamped() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    let stale = br#"{"device_id":"frontend1_old","seq":0,"timestamp":1.0,"value":1.5}"#.to_vec();
    publish_payloads(
        m.port,
        TOPIC,
        &[stale, payload("frontend1_new", &[0, 1, 2])],
    );
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    validate(r);
    assert_eq!(n(r, "latency_clamped"), 1, "{r:#}");
    assert_eq!(n(out.frontend("frontend1"), "latency_clamped"), 1);
    assert_eq!(n(out.frontend("frontend2"), "latency_clamped"), 0);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("e2e latency"))
        .unwrap_or_default();
    assert!(line.contains("1 sample above 1h"), "{}", out.stdout);
}
