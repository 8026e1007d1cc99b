//! `loadgen sub --clients N` against a real Mosquitto: subscriber fleets on the engine's
//! workers, every subscriber proving what it got (fan-out, one-to-one, a share group,
//! persistent sessions, QoS 2), the report checked against its committed schema.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use test_support::{
    assert_matches_schema, free_port, http_get, payload, publish_payloads_at, sample, Mosquitto,
    TempDir,
};

use crate::common::{n, publish, BIN};

/// A `loadgen sub --clients` process, every subscriber subscribed.
struct Fleet {
    child: Child,
    dir: TempDir,
    stderr: mpsc::Receiver<String>,
}

impl Fleet {
    /// Starts `loadgen sub ARGS` and waits for its "subscribed: N of N" line.
    fn start(args: &[&str]) -> Fleet {
        let dir = TempDir::new("subfleet");
        let mut child = Command::new(BIN)
            .arg("sub")
            .args(args)
            .arg("--report-json")
            .arg(dir.path("report.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn loadgen sub");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let clients = args
            .iter()
            .position(|a| *a == "--clients")
            .map(|i| args[i + 1])
            .expect("--clients");
        let want = format!("subscribed: {clients} of {clients} subscribers");
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line == want => break,
                Ok(line) => seen.push(line),
                Err(_) => panic!(
                    "the subscribers never all subscribed; stderr:\n{}",
                    seen.join("\n")
                ),
            }
        }
        Fleet {
            child,
            dir,
            stderr: rx,
        }
    }

    /// Waits for the verdict: (exit code, report), the report checked against its schema.
    fn wait(self) -> (i32, Value) {
        let (code, report, _) = self.wait_with_stderr();
        (code, report)
    }

    /// [`Fleet::wait`], with the stderr lines after "subscribed".
    fn wait_with_stderr(self) -> (i32, Value, Vec<String>) {
        let Fleet {
            mut child,
            dir,
            stderr,
        } = self;
        let status = child.wait().expect("wait loadgen sub");
        let rest: Vec<String> = stderr.try_iter().collect();
        let text = std::fs::read_to_string(dir.path("report.json"))
            .unwrap_or_else(|_| panic!("no report; stderr:\n{}", rest.join("\n")));
        let report: Value = serde_json::from_str(&text).expect("report is JSON");
        assert!(!rest.iter().any(|l| l.contains("panicked")), "{rest:?}");
        assert_matches_schema("schema/loadgen-sub-fleet.schema.json", &report);
        assert_matches_schema("schema/fleet-verify.schema.json", &report["fleet"]);
        (status.code().unwrap_or(-1), report, rest)
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish_fleet(broker: &str, devices: &str, total: &str, qos: &str) {
    let out = publish(&[
        "--broker",
        broker,
        "--devices",
        devices,
        "--total",
        total,
        "--rate",
        "2000",
        "--qos",
        qos,
        "--quiet",
    ]);
    out.assert_code(0);
}

#[test]
fn fan_out_200_subscribers_each_prove_every_point_of_20_devices() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "200",
        "--topic",
        "device_data/#",
        "--expect-per-client",
        "200",
        "--idle-timeout",
        "3s",
        "--quiet",
    ]);
    publish_fleet(&url, "20", "200", "1");
    let (code, r) = fleet.wait();
    let f = &r["fleet"];
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(n(&r["connections"], "subscribed"), 200);
    assert_eq!(n(f, "subscribers_verified"), 200);
    assert_eq!(n(f, "points_unique"), 200 * 200);
    assert_eq!(n(f, "points_missing"), 0);
    assert_eq!(n(f, "points_duplicate"), 0);
    assert_eq!(f["points_per_subscriber"], serde_json::json!({"200": 200}));
    assert!(
        r["suback_latency_us"]["count"].as_u64() == Some(200),
        "{r:#}"
    );
    // Every connect's phases, TLS none on a plain connection.
    let phases = &r["connect_phases_us"];
    assert_eq!(n(&phases["tcp_connect_us"], "count"), 200, "{r:#}");
    assert_eq!(n(&phases["connack_us"], "count"), 200);
    assert!(phases["tls_handshake_us"].is_null());
    for h in ["tcp_us", "connack_us", "suback_us"] {
        assert!(r["histograms"][h].is_string(), "{h}: {r:#}");
    }
}

#[test]
fn a_crafted_stream_with_a_gap_and_a_duplicate_fails_every_one_of_200_subscribers() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "200",
        "--idle-timeout",
        "2s",
        "--quiet",
    ]);
    let payloads: Vec<Vec<u8>> = [0, 1, 2, 5, 6, 6]
        .iter()
        .map(|s| payload("crafted-1", &[*s]))
        .collect();
    publish_payloads_at(broker.port, "device_data/crafted-1", &payloads, 1);
    let (code, r) = fleet.wait();
    let f = &r["fleet"];
    assert_eq!(code, 5, "{r:#}");
    // Each of the 200 misses 3 and 4 and gets 6 twice: summed, and each listed one alike.
    assert_eq!(n(f, "points_missing"), 2 * 200);
    assert_eq!(n(f, "points_duplicate"), 200);
    let listed = f["subscribers_with_problems"].as_array().expect("listed");
    assert_eq!(listed.len(), 20);
    assert_eq!(n(f, "subscribers_with_problems_more"), 180);
    for s in listed {
        assert_eq!((n(s, "missing"), n(s, "duplicate")), (2, 1), "{s:#}");
    }
    assert!(
        r["failure"]
            .as_str()
            .is_some_and(|w| w.contains("200 subscribers")),
        "{r:#}"
    );
}

#[test]
fn one_to_one_templates_give_each_subscriber_its_own_device() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "10",
        "--topic",
        "device_data/sensor-{i:05}",
        "--expect-per-client",
        "15",
        "--idle-timeout",
        "3s",
        "--quiet",
    ]);
    publish_fleet(&url, "10", "150", "1");
    let (code, r) = fleet.wait();
    let f = &r["fleet"];
    assert_eq!(code, 0, "{r:#}");
    // Every subscriber got its own device's 15 points and nothing of the other nine.
    assert_eq!(f["points_per_subscriber"], serde_json::json!({"15": 10}));
    assert_eq!(n(f, "points_unique"), 150);
}

#[test]
fn a_share_group_of_10_in_one_process_proves_the_total_exactly_once() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "10",
        "--share-group",
        "g1",
        "--expect",
        "300",
        "--idle-timeout",
        "3s",
        "--quiet",
    ]);
    publish_fleet(&url, "20", "300", "1");
    let (code, r) = fleet.wait();
    let f = &r["fleet"];
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        n(f, "points_unique"),
        300,
        "the members together, once each"
    );
    assert_eq!(n(f, "points_duplicate"), 0);
    // The broker divided them: no member got them all.
    let most = f["points_per_subscriber"]
        .as_object()
        .expect("spread")
        .keys()
        .filter_map(|k| k.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(most < 300, "{f:#}");
}

#[test]
fn persistent_subscribers_killed_and_restarted_get_what_was_queued() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let args = [
        "--broker",
        &url,
        "--clients",
        "5",
        "--clean-session",
        "false",
        "--qos",
        "1",
        "--expect-per-client",
        "30",
        "--idle-timeout",
        "3s",
        "--quiet",
    ];
    // The sessions exist and subscribed; then the process dies without a word.
    Fleet::start(&args).kill();
    publish_fleet(&url, "3", "30", "1");
    // Back with the same client ids: the broker kept the sessions and what was published.
    let (code, r) = Fleet::start(&args).wait();
    let f = &r["fleet"];
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(f["points_per_subscriber"], serde_json::json!({"30": 5}));
    assert_eq!(n(&r["connections"], "sessions_resumed"), 5);
    assert_eq!(n(&r["connections"], "queued_deliveries"), 5 * 30);
}

#[test]
fn qos2_subscriptions_deliver_exactly_once() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "20",
        "--qos",
        "2",
        "--expect-per-client",
        "50",
        "--idle-timeout",
        "2s",
        "--quiet",
    ]);
    let payloads: Vec<Vec<u8>> = (0..50).map(|s| payload("q2-dev", &[s])).collect();
    publish_payloads_at(broker.port, "device_data/q2-dev", &payloads, 2);
    let (code, r) = fleet.wait();
    let f = &r["fleet"];
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(r["qos"], 2);
    assert_eq!(f["points_per_subscriber"], serde_json::json!({"50": 20}));
    assert_eq!(n(f, "points_duplicate"), 0);
}

#[test]
fn thresholds_judge_the_fleet_report_and_a_failed_one_exits_99() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "3",
        "--expect-per-client",
        "100",
        "--idle-timeout",
        "2s",
        "--threshold",
        "points_per_subscriber_min>=100",
        "--threshold",
        "subscribers_with_problems==0",
        "--threshold",
        "suback_latency_p99<10s",
        // Not even loopback delivers in a microsecond: this one fails.
        "--threshold",
        "e2e_latency_min<1us",
        "--quiet",
    ]);
    publish_fleet(&url, "10", "100", "1");
    let (code, r) = fleet.wait();
    assert_eq!(code, 99, "{r:#}");
    // The proof itself held: only the threshold failed.
    assert_eq!(r["failure"], Value::Null, "{r:#}");
    let judged: Vec<(String, bool)> = r["thresholds"]
        .as_array()
        .expect("thresholds")
        .iter()
        .map(|t| {
            (
                t["field"].as_str().unwrap_or("").to_string(),
                t["pass"] == true,
            )
        })
        .collect();
    assert_eq!(
        judged,
        [
            ("points_per_subscriber_min".to_string(), true),
            ("subscribers_with_problems".to_string(), true),
            ("suback_latency_p99".to_string(), true),
            ("e2e_latency_min".to_string(), false),
        ],
        "{r:#}"
    );
    assert_eq!(r["thresholds"][0]["value"], 100.0, "{r:#}");
}

#[test]
fn a_broker_that_grants_less_qos_than_asked_is_named_in_the_report() {
    // Mosquitto's max_qos caps what its SUBACKs grant.
    let broker = Mosquitto::start_with(&["max_qos 1".into()]);
    let url = broker.url();
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "3",
        "--qos",
        "2",
        // No expectation: the run lasts until 2 s of silence, time for progress lines.
        "--idle-timeout",
        "2s",
    ]);
    publish_fleet(&url, "5", "50", "1");
    let (code, r, stderr) = fleet.wait_with_stderr();
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(n(&r["fleet"], "points_unique"), 150, "{r:#}");
    assert_eq!(
        r["connections"]["granted_qos"],
        serde_json::json!({"1": 3}),
        "{r:#}"
    );
    // Without --quiet: a progress line a second.
    assert!(
        stderr.iter().any(|l| l
            .starts_with("subscribers 3 of 3 subscribed, 3 up | 150 deliveries (")
            && l.ends_with("| 150 points")),
        "{stderr:#?}"
    );
}

#[test]
fn a_threshold_on_a_field_the_fleet_report_lacks_is_a_usage_error() {
    let out = Command::new(BIN)
        .args([
            "sub",
            "--clients",
            "2",
            "--threshold",
            "ack_latency_p99<5ms",
        ])
        .output()
        .expect("run loadgen sub");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ack_latency_p99"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_share_group_of_10_over_two_processes_merges_into_one_exact_proof() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let args = [
        "--broker",
        &url,
        "--clients",
        "5",
        "--share-group",
        "g2",
        "--idle-timeout",
        "2s",
        "--quiet",
    ];
    let a = Fleet::start(&args);
    let b = Fleet::start(&args);
    publish_fleet(&url, "20", "300", "1");
    let (ra, rb) = (a.wait(), b.wait());
    assert_eq!((ra.0, rb.0), (0, 0), "{:#}\n{:#}", ra.1, rb.1);
    let dir = TempDir::new("subfleet-merge");
    let (pa, pb, pm) = (dir.path("a.json"), dir.path("b.json"), dir.path("m.json"));
    std::fs::write(&pa, ra.1.to_string()).expect("write a");
    std::fs::write(&pb, rb.1.to_string()).expect("write b");
    // `loadgen merge a.json OTHER --expect N --report-json m.json`.
    let merge_with = |other: &std::path::Path, expect: &str| {
        Command::new(BIN)
            .arg("merge")
            .arg(&pa)
            .arg(other)
            .args(["--expect", expect, "--report-json"])
            .arg(&pm)
            .output()
            .expect("run loadgen merge")
    };
    let merge = |expect: &str| merge_with(&pb, expect);
    // A merge that passed: its report, checked against the schema.
    let merged = |out: std::process::Output| -> Value {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        let m: Value = serde_json::from_str(&std::fs::read_to_string(&pm).expect("merged"))
            .expect("merged report is JSON");
        assert_matches_schema("schema/loadgen-sub-fleet.schema.json", &m);
        m
    };
    let m = merged(merge("300"));
    assert_eq!(n(&m, "merged_reports"), 2);
    assert_eq!(n(&m, "clients"), 10);
    assert_eq!(n(&m["fleet"], "points_unique"), 300, "{m:#}");
    assert_eq!(n(&m["fleet"], "points_duplicate"), 0);
    // The same reports against a total they did not get: the merged verdict fails.
    assert_eq!(merge("301").status.code(), Some(5));
    // Thresholds judge the merged report.
    let judged = |t: &str| {
        Command::new(BIN)
            .arg("merge")
            .args([&pa, &pb])
            .args(["--expect", "300", "--threshold", t, "--report-json"])
            .arg(&pm)
            .output()
            .expect("run loadgen merge")
            .status
            .code()
    };
    assert_eq!(judged("points_unique==300"), Some(0));
    assert_eq!(judged("points_unique>300"), Some(99));
    // The latencies add up from each report's histograms: every subscriber's SUBACK and
    // connect phases, and thresholds judge them on the merge.
    assert_eq!(n(&m["suback_latency_us"], "count"), 10, "{m:#}");
    assert_eq!(n(&m["connect_phases_us"]["tcp_connect_us"], "count"), 10);
    assert_eq!(n(&m["connect_phases_us"]["connack_us"], "count"), 10);
    assert_eq!(judged("suback_latency_p99<1h"), Some(0));
    assert_eq!(judged("suback_latency_p99<1us"), Some(99));
    // A report from before the histograms were kept: its phases add nothing, and its
    // SUBACK percentiles, which cannot be added, leave the merge with none, not part.
    let mut old = rb.1.clone();
    old.as_object_mut().unwrap().remove("histograms");
    old.as_object_mut().unwrap().remove("connect_phases_us");
    let po = dir.path("old.json");
    std::fs::write(&po, old.to_string()).expect("write old");
    let m = merged(merge_with(&po, "300"));
    assert!(m["suback_latency_us"].is_null(), "{m:#}");
    assert_eq!(n(&m["connect_phases_us"]["connack_us"], "count"), 5);
    // A shard's own failed threshold judged its own figures, not the merged ones.
    let mut failed = ra.1.clone();
    failed["thresholds"] = serde_json::json!([{"expr": "points<0", "field": "points",
        "op": "<", "limit": 0.0, "value": 150.0, "pass": false}]);
    std::fs::write(&pa, failed.to_string()).expect("write a");
    assert_eq!(merge("300").status.code(), Some(0));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&pm).expect("merged"))
        .expect("merged report is JSON");
    assert_eq!(m["thresholds"], serde_json::json!([]), "{m:#}");
}

#[test]
fn subscribers_that_never_get_a_message_stop_at_the_first_message_timeout_and_fail() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "3",
        "--expect-per-client",
        "10",
        "--first-message-timeout",
        "1s",
        "--quiet",
    ]);
    let (code, r) = fleet.wait();
    assert_eq!(code, 5, "{r:#}");
    assert_eq!(n(&r["fleet"], "points"), 0);
    assert!(r["failure"].as_str().is_some(), "{r:#}");
}

#[test]
fn without_an_expectation_a_run_where_nothing_arrives_still_fails() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "3",
        "--first-message-timeout",
        "1s",
        "--quiet",
    ]);
    let (code, r) = fleet.wait();
    assert_eq!(code, 5, "{r:#}");
    let failure = r["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("no point arrived"), "{r:#}");
}

#[test]
fn a_broker_that_is_not_there_is_unreachable_not_a_failed_verdict() {
    let port = test_support::free_port();
    let out = Command::new(BIN)
        .args(["sub", "--clients", "3", "--quiet", "--connect-retries", "0"])
        .args(["--broker", &format!("mqtt://127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen sub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("all 3 connections failed"), "{stderr}");
}

#[test]
fn persistent_subscribers_cut_off_reconnect_resume_their_sessions_and_get_what_was_queued() {
    let broker = Mosquitto::start();
    let proxy = test_support::proxy::Proxy::start(broker.port);
    let fleet = Fleet::start(&[
        "--broker",
        &proxy.url(),
        "--clients",
        "5",
        "--clean-session",
        "false",
        "--qos",
        "1",
        "--reconnect-backoff",
        "50ms..200ms",
        "--expect-per-client",
        "30",
        "--quiet",
    ]);
    // Every subscriber is cut off and cannot come back while the points are published.
    proxy.set_accepting(false);
    proxy.cut_all();
    publish_fleet(&broker.url(), "3", "30", "1");
    proxy.set_accepting(true);
    let (code, r) = fleet.wait();
    let c = &r["connections"];
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        r["fleet"]["points_per_subscriber"],
        serde_json::json!({"30": 5})
    );
    assert_eq!(n(c, "lost"), 5, "{c:#}");
    assert_eq!(
        n(c, "sessions_resumed"),
        5,
        "resumed, not subscribed again: {c:#}"
    );
}

/// `--metrics-addr` serves the fleet's connections and connect phases as `loadgen conn`
/// serves them, and the subscribers' deliveries and points as they come.
#[test]
fn metrics_serve_the_fleets_connections_and_deliveries_while_it_runs() {
    let broker = Mosquitto::start();
    let url = broker.url();
    let addr = format!("127.0.0.1:{}", free_port());
    let fleet = Fleet::start(&[
        "--broker",
        &url,
        "--clients",
        "20",
        "--topic",
        "device_data/#",
        "--idle-timeout",
        "4s",
        "--metrics-addr",
        &addr,
        "--quiet",
    ]);
    // Polls the scrape until `done` holds of it (the workers hand their histograms over
    // about five times a second).
    let scrape_until = |what: &str, done: &dyn Fn(&str) -> bool| {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok((200, body)) = http_get(&addr, "/metrics") {
                if done(&body) {
                    return body;
                }
                assert!(std::time::Instant::now() < end, "{what}:\n{body}");
            }
            assert!(std::time::Instant::now() < end, "{what}: no scrape");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let body = scrape_until("20 up, 20 CONNACKs", &|b| {
        sample(b, "loadgen_connections_up", &[]) == Some(20.0)
            && sample(b, "loadgen_connack_seconds_count", &[]) == Some(20.0)
    });
    assert_eq!(
        sample(&body, "loadgen_tcp_connect_seconds_count", &[]),
        Some(20.0)
    );
    publish_fleet(&url, "2", "100", "1");
    scrape_until("every subscriber's 100 points", &|b| {
        sample(b, "loadgen_sub_points_total", &[]) == Some(2_000.0)
            && sample(b, "loadgen_sub_deliveries_total", &[]).is_some_and(|d| d >= 20.0)
    });
    let (code, r) = fleet.wait();
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(n(&r["fleet"], "points_unique"), 2_000);
}
