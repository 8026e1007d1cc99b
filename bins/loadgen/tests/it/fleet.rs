//! Fleets: many devices over many connections or a few gateways, each device's seq proven
//! by the backend; a broker that refuses part of the fleet; a fleet too large to hold.

use test_support::{assert_matches_schema, Mosquitto};

use crate::common::{backend, n, publish};

/// Every device of the backend's report holds seq 0..per_device exactly once.
fn assert_every_device_complete(report: &serde_json::Value, devices: usize, per_device: u64) {
    let list = report["devices"].as_array().unwrap();
    assert_eq!(list.len(), devices, "devices seen by the backend");
    for d in list {
        assert_eq!(
            (n(d, "unique"), n(d, "missing"), n(d, "duplicate")),
            (per_device, 0, 0),
            "{}",
            d["device_id"]
        );
        assert_eq!((n(d, "min_seq"), n(d, "max_seq")), (0, per_device - 1));
    }
}

#[test]
fn a_thousand_devices_over_a_thousand_connections_deliver_every_seq_at_qos1() {
    let m = Mosquitto::start();
    let b = backend(&[
        "--broker",
        &m.url(),
        "--expect",
        "5000",
        "--idle-timeout",
        "10s",
    ]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "1000",
        "--qos",
        "1",
        "--rate-per-device",
        "5",
        "--batch",
        "1",
        "--total",
        "5000",
        "--quiet",
    ]);
    out.assert_code(0);
    let (code, backend) = b.wait();
    assert_eq!(code, 0, "{backend:#}");
    assert_every_device_complete(&backend, 1000, 5);
    let r = out.report();
    assert_matches_schema("schema/publisher-report.schema.json", r);
    // The publisher's totals are what the backend counted.
    assert_eq!(n(r, "points_acked"), n(&backend, "points_unique"));
    assert_eq!((n(r, "points_sent"), n(r, "points_failed")), (5000, 0));
    let c = &r["connections"];
    assert_eq!(
        (n(c, "planned"), n(c, "connected"), n(c, "failed")),
        (1000, 1000, 0)
    );
    assert_eq!(n(&r["connect_latency_us"], "count"), 1000);
    assert_eq!(r["device_id"], "sensor-{i:05}");
    let ids: Vec<&str> = backend["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"sensor-00000") && ids.contains(&"sensor-00999"));
    // A summary, not a thousand lines.
    assert!(out.stdout.lines().count() < 30, "{}", out.stdout);
    assert!(
        out.stdout.contains("1,000 came up, 0 failed"),
        "{}",
        out.stdout
    );
}

#[test]
fn ten_thousand_devices_over_ten_gateway_connections_deliver_every_seq() {
    let m = Mosquitto::start();
    let b = backend(&[
        "--broker",
        &m.url(),
        "--expect",
        "20000",
        "--idle-timeout",
        "10s",
        "--report-devices",
    ]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "10000",
        "--connections",
        "10",
        "--qos",
        "1",
        "--rate",
        "20000",
        "--batch",
        "1",
        "--total",
        "20000",
        "--quiet",
    ]);
    out.assert_code(0);
    let (code, backend) = b.wait();
    assert_eq!(code, 0, "{backend:#}");
    assert_every_device_complete(&backend, 10_000, 2);
    let r = out.report();
    assert_eq!(n(r, "points_acked"), n(&backend, "points_unique"));
    assert_eq!(n(&r["connections"], "connected"), 10);
}

/// A connect ramp slower than the run: 200 connections at 100/s take 2 s, the run asks for
/// 200 devices x 5 points/s x 2 s. Generation starts when the ramp is over, so every one of
/// the 2,000 points asked for is sent and acknowledged, and the backend proves each seq.
#[test]
fn a_slow_connect_ramp_sends_every_point_asked_for() {
    let m = Mosquitto::start();
    let b = backend(&[
        "--broker",
        &m.url(),
        "--expect",
        "2000",
        "--idle-timeout",
        "10s",
        "--report-devices",
    ]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "200",
        "--connect-rate",
        "100",
        "--qos",
        "1",
        "--rate-per-device",
        "5",
        "--batch",
        "1",
        "--duration",
        "2s",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_eq!(n(r, "points_planned"), 2000, "N x r x D");
    assert_eq!(
        (
            n(r, "points_sent"),
            n(r, "points_acked"),
            n(r, "points_dropped")
        ),
        (2000, 2000, 0)
    );
    assert!(
        n(&r["connections"], "planned") == 200
            && r["connections"]["ramp_s"].as_f64().unwrap() >= 1.5,
        "the ramp took its 2 s: {:#}",
        r["connections"]
    );
    // The rate is the one asked for: the window starts when the ramp is over.
    let rate = r["point_rate"].as_f64().unwrap();
    assert!((900.0..=1100.0).contains(&rate), "point_rate {rate}");
    let (code, backend) = b.wait();
    assert_eq!(code, 0, "{backend:#}");
    assert_every_device_complete(&backend, 200, 10);
}

/// More devices than points: 20 points of 20,000 devices at 1,000 points/s go out in 20 ms,
/// and the run ends then, not when the schedule's round over every device would (20 s).
#[test]
fn a_fleet_with_more_devices_than_points_ends_with_its_last_point() {
    let m = Mosquitto::start();
    let started = std::time::Instant::now();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "20000",
        "--connections",
        "10",
        "--rate",
        "1000",
        "--total",
        "20",
        "--quiet",
    ]);
    let took = started.elapsed();
    out.assert_code(0);
    let r = out.report();
    assert_eq!((n(r, "points_planned"), n(r, "points_sent")), (20, 20));
    assert!(took < std::time::Duration::from_secs(8), "took {took:?}");
}

/// `--workers 3`: three threads share 30 connections evenly, each with its own figures in
/// the report, and together they send every point.
#[test]
fn workers_share_the_connections_and_their_figures_add_up() {
    let m = Mosquitto::start();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "30",
        "--workers",
        "3",
        "--qos",
        "1",
        "--rate",
        "3000",
        "--batch",
        "1",
        "--total",
        "3000",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_eq!(n(&r["generator"], "workers"), 3);
    let workers = r["per_worker"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    for w in workers {
        assert_eq!(n(w, "connections"), 10, "{w:#}");
        assert_eq!(n(w, "points_sent"), 1000, "{w:#}");
    }
    assert_eq!(n(r, "points_acked"), 3000);
}

/// `--max-connecting 3`: a broker that answers each CONNECT 100 ms late never holds more
/// than 3 of the fleet's 24 connections waiting at once, so the ramp takes at least
/// 24 / 3 x 100 ms.
#[test]
fn max_connecting_bounds_the_connections_awaiting_their_connack() {
    use test_support::fake::{Behaviour, FakeBroker};
    let fake = FakeBroker::start(Behaviour::SlowConnack { ms: 100 });
    let out = publish(&[
        "--broker",
        &fake.url(),
        "--devices",
        "24",
        "--connect-rate",
        "max",
        "--max-connecting",
        "3",
        "--workers",
        "2",
        "--total",
        "24",
        "--rate",
        "0",
        "--quiet",
    ]);
    out.assert_code(0);
    let most = fake.most_waiting();
    assert!((1..=3).contains(&most), "{most} waiting at once");
    let ramp = out.report()["connections"]["ramp_s"].as_f64().unwrap();
    assert!(ramp >= 0.75, "ramp {ramp} s");
}

/// A broker that answers 6 of 10 connections and never the other 4 (one out of
/// descriptors behaves so), with connects that time out after the run's duration: the ramp
/// waits for them, the run names the 4 connect timeouts as the cause (it used to blame the
/// ramp: "not up yet when generation ended"), and counts connections (`lost`) apart from
/// loss events (`losses`).
#[test]
fn connect_timeouts_are_named_as_such_not_blamed_on_the_ramp() {
    use test_support::fake::{Behaviour, FakeBroker};
    let fake = FakeBroker::start(Behaviour::AnswerFirst(6));
    let out = publish(&[
        "--broker",
        &fake.url(),
        "--devices",
        "10",
        "--connect-rate",
        "max",
        "--connect-timeout",
        "1500ms",
        "--connect-retries",
        "0",
        "--rate-per-device",
        "2",
        "--duration",
        "1s",
        "--quiet",
    ]);
    out.assert_code(1);
    let r = out.report();
    let error = r["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("4 of 10 connections failed: no CONNACK within 1s 500ms"),
        "{error}"
    );
    assert!(!error.contains("ramp"), "{error}");
    let c = &r["connections"];
    assert_eq!(
        (
            n(c, "connected"),
            n(c, "failed"),
            n(c, "not_up"),
            n(c, "losses")
        ),
        (6, 4, 0, 0),
        "{c:#}"
    );
    // The 6 that came up sent their whole share; the 4 failed ones' is counted dropped.
    assert_eq!((n(r, "points_sent"), n(r, "points_dropped")), (12, 8));
}

/// MQTT 5's Receive Maximum is reported at QoS 0 too (it used to be only at QoS 1).
#[test]
fn the_brokers_receive_maximum_is_reported_at_qos0() {
    use test_support::fake::{Behaviour, FakeBroker};
    let fake = FakeBroker::start(Behaviour::Mqtt5 {
        props: &[0x21, 0x00, 0x14],
        close_silent_ms: 0,
        disconnect_over: 0,
    });
    let out = publish(&[
        "--broker",
        &fake.url(),
        "--mqtt-version",
        "5",
        "--qos",
        "0",
        "--total",
        "10",
        "--rate",
        "0",
        "--quiet",
    ]);
    out.assert_code(0);
    assert_eq!(n(out.report(), "receive_maximum"), 20);
}

/// A broker that takes 50 more clients: the other 50 of a 100-connection fleet are counted
/// as failed with their reason, the run exits 1 with one line, and every point of the 50
/// connected devices arrives. Without retries: Mosquitto 2.0 lowers its count of clients
/// for every socket it refused, so retried connections get in after all.
#[test]
fn a_broker_at_its_connection_limit_refuses_half_the_fleet_and_the_rest_delivers() {
    // One more for the backend's own connection.
    let m = Mosquitto::start_with(&["max_connections 51".into()]);
    let b = backend(&["--broker", &m.url(), "--idle-timeout", "3s"]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "100",
        "--qos",
        "1",
        "--rate-per-device",
        "2",
        "--batch",
        "1",
        "--total",
        "400",
        "--connect-retries",
        "0",
        "--quiet",
    ]);
    out.assert_code(1);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].contains("50 of 100 connections failed"),
        "{}",
        lines[0]
    );
    let r = out.report();
    let c = &r["connections"];
    assert_eq!((n(c, "connected"), n(c, "failed")), (50, 50));
    assert_eq!(n(&c["failed_by_reason"], "closed before CONNACK"), 50);
    assert_eq!(n(c, "attempts"), 100);
    assert_eq!(n(r, "points_dropped"), 200);
    let (code, backend) = b.wait();
    assert_eq!(code, 0, "{backend:#}");
    assert_every_device_complete(&backend, 50, 4);
    assert_eq!(n(r, "points_acked"), 200);
}

/// Connections the broker drops before CONNACK are retried with backoff; all get in.
#[test]
fn failed_connects_are_retried_with_backoff_until_they_get_in() {
    use test_support::fake::{Behaviour, FakeBroker};
    let fake = FakeBroker::start(Behaviour::CloseFirst(20));
    let started = std::time::Instant::now();
    let out = publish(&[
        "--broker",
        &fake.url(),
        "--devices",
        "10",
        "--qos",
        "1",
        "--rate",
        "0",
        "--batch",
        "1",
        "--total",
        "100",
        "--connect-retries",
        "5",
        "--quiet",
    ]);
    out.assert_code(0);
    let c = &out.report()["connections"];
    assert_eq!(
        (n(c, "connected"), n(c, "failed"), n(c, "attempts")),
        (10, 0, 30)
    );
    assert_eq!(
        n(&c["attempts_failed_by_reason"], "closed before CONNACK"),
        20
    );
    assert_eq!(n(out.report(), "points_acked"), 100);
    // Two rounds of backoff (about 100 ms, then 200 ms, jittered): not at once, not for ever.
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(100), "{took:?}");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[test]
fn a_fleet_larger_than_the_open_file_limit_is_a_usage_error_before_connecting() {
    let hard = test_support::raise_nofile_limit();
    let devices = (hard + 1).to_string();
    let out = publish(&["--broker", "127.0.0.1:1", "--devices", &devices]);
    out.assert_code(2);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("open files"), "{}", out.stderr);
    assert!(out.stderr.contains("shards"), "{}", out.stderr);
}

/// Templates, a start index and source addresses: the names are the fleet's, the broker
/// sees the connections come from the given addresses.
#[test]
fn templates_start_index_and_source_addresses_shape_the_fleet() {
    let m = Mosquitto::start_with(&["log_type notice".into(), "connection_messages true".into()]);
    let b = backend(&["--broker", &m.url(), "--expect", "30", "--topic", "fleet/#"]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "3",
        "--device-start",
        "5",
        "--device-id",
        "dev-{i:03}",
        "--topic",
        "fleet/{device_id}/data",
        "--client-id",
        "gw-{i}",
        "--source-ip",
        "127.0.0.2-127.0.0.3",
        "--rate-per-device",
        "100",
        "--batch",
        "5",
        "--total",
        "30",
        "--quiet",
    ]);
    out.assert_code(0);
    let (code, backend) = b.wait();
    assert_eq!(code, 0, "{backend:#}");
    let mut ids: Vec<&str> = backend["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["dev-005", "dev-006", "dev-007"]);
    let log = m.log();
    for (ip, id) in [
        ("127.0.0.2", "gw-5"),
        ("127.0.0.3", "gw-6"),
        ("127.0.0.2", "gw-7"),
    ] {
        let from = log
            .lines()
            .find(|l| l.contains(&format!(" as {id} ")))
            .unwrap_or_else(|| panic!("{id} never connected:\n{log}"));
        assert!(from.contains(&format!("from {ip}:")), "{from}");
    }
}

/// A rate beyond what the connection takes: the schedule cursor jumps to the round that is
/// due instead of walking every past slot, so the run goes as fast as unpaced and a signal
/// still ends it at once.
#[test]
fn a_rate_far_beyond_the_broker_neither_hangs_nor_ignores_signals() {
    let m = Mosquitto::start();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--rate",
        "1000G",
        "--batch",
        "1",
        "--total",
        "200k",
        "--quiet",
    ]);
    out.assert_code(0);
    assert_eq!(n(out.report(), "points_sent"), 200_000);
    let sub = test_support::Subscriber::start(m.port, "device_data/#");
    let mut child = std::process::Command::new(crate::common::BIN)
        .args([
            "pub",
            "--broker",
            &m.url(),
            "--rate",
            "1000G",
            "--batch",
            "1",
        ])
        .args(["--duration", "60s", "--devices", "100", "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Generating, far behind its schedule, when the signal comes.
    assert!(
        sub.wait_points(10_000, std::time::Duration::from_secs(15)),
        "the run started"
    );
    let sent = std::time::Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        if sent.elapsed() > std::time::Duration::from_secs(15) {
            let _ = child.kill();
            panic!("SIGTERM did not end a run far behind its schedule");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(code, Some(143));
}

/// A device is done as soon as its quota is out: elapsed is the schedule's, not a device
/// interval longer, and the DISCONNECT does not count as a write.
#[test]
fn a_fleet_with_a_total_reports_the_schedules_elapsed_time() {
    let m = Mosquitto::start();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "10",
        "--total",
        "20",
        "--rate",
        "10",
        "--batch",
        "1",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    // 20 points at 10 points/s: the last is due at 2.0 s.
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    assert!((1.9..2.3).contains(&elapsed), "elapsed {elapsed}");
    let pct = r["target_pct"].as_f64().unwrap();
    assert!((88.0..=105.0).contains(&pct), "achieved {pct}%");
}

/// A fleet whose ramp outlasts the run's duration: generation waits for the ramp, so the
/// run is complete, with the 300 points asked for (it used to end with 200 devices not up).
#[test]
fn a_run_shorter_than_its_ramp_still_sends_every_point() {
    let m = Mosquitto::start();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "300",
        "--connect-rate",
        "100",
        "--rate-per-device",
        "1",
        "--batch",
        "1",
        "--duration",
        "1s",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    let c = &r["connections"];
    assert_eq!((n(c, "connected"), n(c, "not_up")), (300, 0), "{c:#}");
    assert_eq!((n(r, "points_planned"), n(r, "points_sent")), (300, 300));
}

/// Without a --total, the points a failed connection's devices would have sent before
/// --duration ended are dropped, counted.
#[test]
fn points_of_failed_connections_are_dropped_by_the_clock_too() {
    use test_support::fake::{Behaviour, FakeBroker};
    let fake = FakeBroker::start(Behaviour::CloseFirst(5));
    let out = publish(&[
        "--broker",
        &fake.url(),
        "--devices",
        "10",
        "--connect-retries",
        "0",
        "--qos",
        "1",
        "--rate-per-device",
        "10",
        "--batch",
        "1",
        "--duration",
        "2s",
        "--quiet",
    ]);
    out.assert_code(1);
    let r = out.report();
    assert_eq!(n(&r["connections"], "failed"), 5);
    // Five devices at 10 points/s for 2 s.
    let dropped = n(r, "points_dropped");
    assert!((95..=100).contains(&dropped), "dropped {dropped}");
}

#[test]
fn nonsense_fleet_shapes_are_usage_errors() {
    for (args, needle) in [
        (&["--workers", "1000"][..], "--workers 1000 is more than"),
        (
            &["--devices", "100", "--batch", "1000", "--duration", "2s"][..],
            "ends before any device's first message",
        ),
        (
            &["--devices", "3", "--connections", "5"][..],
            "--connections 5 must be from 1",
        ),
        (
            &["--devices", "3", "--topic", "one/topic"][..],
            "the same for every device",
        ),
        (&["--device-id", "x{j}"][..], "unknown placeholder"),
    ] {
        let mut all = vec!["--broker", "127.0.0.1:1"];
        all.extend_from_slice(args);
        let out = publish(&all);
        out.assert_code(2);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}
