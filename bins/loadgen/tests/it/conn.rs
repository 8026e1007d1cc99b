//! `loadgen conn` against a real Mosquitto: connections refused past `max_connections` fail
//! by reason; a hold with a short keep-alive sees PINGRESPs; a churn does about what it was
//! asked (counted; the timing is a bench's); a broker restarted under 2,000 connections is
//! an outage the connections come back from through the backoff, and the report times it.
//! Every report is checked against `schema/conn-report.schema.json`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::{assert_matches_schema, free_port, http_get, sample, Mosquitto, TempDir};

use crate::common::{n, Outcome, BIN};

const SCHEMA: &str = "schema/conn-report.schema.json";

fn conn(args: &[&str]) -> Outcome {
    let dir = TempDir::new("conn");
    let report = dir.path("report.json");
    let out = Command::new(BIN)
        .arg("conn")
        .args(args)
        .arg("--quiet")
        .arg("--report-json")
        .arg(&report)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen conn");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report: std::fs::read_to_string(&report)
            .ok()
            .map(|t| serde_json::from_str(&t).expect("report is JSON")),
    }
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v:#}"))
}

#[test]
fn connections_past_the_brokers_max_connections_fail_by_reason_and_exit_1() {
    let m = Mosquitto::start_with(&["max_connections 20".into()]);
    let out = conn(&[
        "--broker",
        &m.url(),
        "--connections",
        "30",
        "--connect-retries",
        "1",
        "--hold",
        "1s",
    ]);
    out.assert_code(1);
    let r = out.report();
    assert_matches_schema(SCHEMA, r);
    assert_eq!(n(r, "connections_connected"), 20, "{r:#}");
    assert_eq!(n(r, "connections_failed"), 10);
    assert_eq!(r["failed_by_reason"]["closed before CONNACK"], 10, "{r:#}");
    assert_eq!(n(r, "connections_up_at_end"), 20);
    assert_eq!(r["outcome"], "incomplete");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("10 of 30 connections failed")),
        "{r:#}"
    );
    // The phases of every attempt that got through them: the refused ones connected TCP.
    let tcp = n(&r["connect_phases_us"]["tcp_connect_us"], "count");
    assert!(tcp >= 30, "{tcp} TCP connects: {r:#}");
    assert_eq!(n(&r["connect_phases_us"]["connack_us"], "count"), 20);
    assert!(r["connect_phases_us"]["tls_handshake_us"].is_null());
}

#[test]
fn a_hold_with_a_short_keep_alive_sees_pingresps_and_exits_0() {
    let m = Mosquitto::start();
    let out = conn(&[
        "--broker",
        &m.url(),
        "--connections",
        "10",
        "--keep-alive",
        "1s",
        "--hold",
        "3s",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_matches_schema(SCHEMA, r);
    assert_eq!(n(r, "connections_connected"), 10);
    assert_eq!(n(r, "connections_up_at_end"), 10);
    assert_eq!(r["outcome"], "complete");
    // A PINGREQ a second per connection for 3 s, each answered.
    let pings = n(&r["pingresp_latency_us"], "count");
    assert!(pings >= 20, "{pings} PINGRESPs: {r:#}");
    assert!(r["histograms"]["pingresp_us"].is_string());
    assert!(out.stdout.contains("pingresp latency"), "{}", out.stdout);
}

#[test]
fn a_churn_of_r_a_second_disconnects_and_reconnects_about_r_a_second() {
    let m = Mosquitto::start();
    let out = conn(&[
        "--broker",
        &m.url(),
        "--connections",
        "100",
        "--churn",
        "50",
        "--hold",
        "4s",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_matches_schema(SCHEMA, r);
    let held = f(r, "held_s");
    let churned = n(r, "churned");
    let slots = churned + n(r, "churn_missed");
    // The slots of the hold, each taken or counted missed (one more for the slot at 0).
    let due = (50.0 * held).floor() as u64 + 1;
    assert!(slots.abs_diff(due) <= 1, "{slots} slots of {due}: {r:#}");
    assert!(
        churned as f64 >= 0.9 * 50.0 * held,
        "{churned} churned: {r:#}"
    );
    // Each churn came back (those still on their way at the end are counted apart).
    let back = n(r, "reconnects_churned") + n(r, "connections_churning_at_end");
    assert_eq!(back, churned, "{r:#}");
    assert_eq!(n(r, "reconnects_lost"), 0);
    assert!(n(&r["reconnect_latency_us"], "count") >= n(r, "reconnects_churned"));
}

#[test]
fn a_broker_restarted_under_2000_connections_is_an_outage_they_come_back_from() {
    let mut m = Mosquitto::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = TempDir::new("conn-storm");
    let report = dir.path("report.json");
    let child = Command::new(BIN)
        .args([
            "conn",
            "--broker",
            &m.url(),
            "--connections",
            "2000",
            "--hold",
            "12s",
            "--reconnect-backoff",
            "200ms..2s",
            "--quiet",
            "--metrics-addr",
            &addr,
        ])
        .arg("--report-json")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen conn");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, body)) = http_get(&addr, "/metrics") {
            if sample(&body, "loadgen_connections_up", &[]) == Some(2000.0) {
                break;
            }
        }
        assert!(
            Instant::now() < end,
            "the 2,000 connections never all came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    m.restart();
    let out = child.wait_with_output().expect("wait loadgen conn");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).expect("report"))
        .expect("report is JSON");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{r:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_matches_schema(SCHEMA, &r);
    assert_eq!(n(&r, "connections_up_at_end"), 2000, "{r:#}");
    let outages = r["outages"].as_array().expect("outages");
    assert_eq!(outages.len(), 1, "one restart, one outage: {r:#}");
    assert_eq!(n(&outages[0], "dropped"), 2000);
    assert!(n(&r, "reconnects_lost") >= 2000, "{r:#}");
    // Back through the backoff: the first reconnect waits 100-300 ms (200 ms jittered), so
    // all back takes at least the shortest of those, and the report says how long.
    let took = f(&outages[0], "recovered_after_s");
    assert!(
        (0.1..12.0).contains(&took),
        "recovered after {took} s: {r:#}"
    );
    assert_eq!(f(&r, "recovery_max_s"), took);
    // The backoff's jitter spread them: the first was back well before the last.
    let first = f(&outages[0], "first_back_after_s");
    assert!(
        took - first >= 0.05,
        "all back within {} s: {r:#}",
        took - first
    );
    assert!(n(&r["reconnect_latency_us"], "count") >= 2000);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("outage 1"), "{text}");
}

#[test]
fn a_tls_run_reports_each_connect_phase_tcp_tls_and_connack() {
    let dir = TempDir::new("conn-tls");
    let tls = test_support::TlsFiles::new(&dir);
    let port = free_port();
    let _m = Mosquitto::start_with(&tls.listener(port, false));
    let out = conn(&[
        "--broker",
        &format!("mqtts://127.0.0.1:{port}"),
        "--ca-file",
        tls.ca.to_str().expect("a UTF-8 path"),
        "--connections",
        "5",
        "--hold",
        "1s",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_matches_schema(SCHEMA, r);
    let phases = &r["connect_phases_us"];
    for phase in ["tcp_connect_us", "tls_handshake_us", "connack_us"] {
        assert_eq!(n(&phases[phase], "count"), 5, "{phase}: {r:#}");
    }
    for h in ["tcp_us", "tls_us", "connack_us"] {
        assert!(r["histograms"][h].is_string(), "{h}: {r:#}");
    }
    assert!(out.stdout.contains("tls handshake"), "{}", out.stdout);
}
