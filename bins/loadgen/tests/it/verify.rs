//! `loadgen pub --verify`: one command, one verdict. The in-process subscriber (backend-sub's
//! receive path) is subscribed before the first publish and compares what arrived with the
//! seqs each device wrote.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use test_support::{assert_matches_schema, payload, publish_payloads, Mosquitto, TempDir};

use crate::common::{n, publish, BIN};

fn delivery(r: &serde_json::Value) -> &serde_json::Value {
    let d = &r["delivery"];
    assert!(d.is_object(), "no delivery section: {r}");
    d
}

#[test]
fn a_verified_fleet_run_exits_0_with_every_point_delivered_once() {
    let m = Mosquitto::start();
    let dir = TempDir::new("verify-md");
    let md = dir.path("summary.md");
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "10",
        "--rate",
        "5k",
        "--total",
        "5000",
        "--verify",
        "--threshold",
        "delivery_missing==0",
        "--threshold",
        "e2e_latency_p99<60s",
        "--report-md",
        md.to_str().unwrap(),
        "--quiet",
    ]);
    out.assert_code(0);
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.contains("Subscribed to") && md.contains("device\\_data/+"),
        "{md}"
    );
    let r = out.report();
    assert_matches_schema("schema/publisher-report.schema.json", r);
    let d = delivery(r);
    assert_eq!(d["filter"], "device_data/+");
    assert_eq!(n(r, "points_sent"), 5000);
    for k in ["expected", "delivered", "unique"] {
        assert_eq!(n(d, k), 5000, "{k}: {d}");
    }
    for k in ["missing", "duplicate", "unexpected", "malformed"] {
        assert_eq!(n(d, k), 0, "{k}: {d}");
    }
    assert_eq!(n(d, "devices"), 10);
    assert!(n(&d["e2e_latency_us"], "count") == 5000, "{d}");
    assert!(out.stdout.contains("delivery (subscribed to device_data/+"));
}

#[test]
fn a_qos1_verified_run_has_every_acknowledged_point_delivered() {
    let m = Mosquitto::start();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "4",
        "--rate",
        "4k",
        "--total",
        "4000",
        "--qos",
        "1",
        "--verify",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    let d = delivery(r);
    assert_eq!(n(r, "points_acked"), 4000);
    assert_eq!((n(d, "delivered"), n(d, "unique")), (4000, 4000), "{d}");
    assert_eq!(n(d, "missing") + n(d, "duplicate"), 0, "{d}");
}

/// Generation starts at once (no --start-delay) at a high rate: had the fleet published
/// before the verifier's SUBACK, the first seqs of every device would be missing.
#[test]
fn the_verifier_is_subscribed_before_the_first_publish() {
    let m = Mosquitto::start();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "8",
        "--connect-rate",
        "max",
        "--rate",
        "50k",
        "--total",
        "16000",
        "--start-delay",
        "0s",
        "--verify",
        "--quiet",
    ]);
    out.assert_code(0);
    let d = delivery(out.report());
    assert_eq!((n(d, "unique"), n(d, "missing")), (16000, 0), "{d}");
    assert!(d["problem_devices"].as_array().unwrap().is_empty(), "{d}");
}

/// A second publisher writes seq 0 of sensor-00001 into its topic during the run: the
/// verifier counts a duplicate, names the device, and the run exits 5.
#[test]
fn a_duplicate_seq_in_a_device_topic_fails_delivery_naming_the_device() {
    let m = Mosquitto::start();
    let dir = TempDir::new("verify-dup");
    let report = dir.path("report.json");
    let mut child = Command::new(BIN)
        .args([
            "pub",
            "--broker",
            &m.url(),
            "--devices",
            "3",
            "--rate-per-device",
            "20",
            "--duration",
            "2s",
            "--verify",
            "--verify-timeout",
            "2s",
            "--quiet",
            "--report-json",
        ])
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen pub");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut err = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the verifier never subscribed:\n{err}"));
        err.push_str(&line);
        err.push('\n');
        if line.contains("subscribed to device_data/+") {
            break;
        }
    }
    publish_payloads(
        m.port,
        "device_data/sensor-00001",
        &[payload("sensor-00001", &[0])],
    );
    let status = child.wait().expect("wait");
    err.extend(rx.try_iter().map(|l| l + "\n"));
    assert_eq!(status.code(), Some(5), "stderr:\n{err}");
    assert!(
        err.contains("delivery failed") && err.contains("sensor-00001"),
        "{err}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let d = delivery(&r);
    assert_eq!((n(d, "duplicate"), n(d, "missing")), (1, 0), "{d}");
    assert_eq!(n(d, "devices_with_problems"), 1);
    assert_eq!(d["problem_devices"][0]["device"], "sensor-00001");
}

#[test]
fn verify_timeout_must_be_longer_than_0s() {
    let out = Command::new(BIN)
        .args(["pub", "--verify", "--verify-timeout", "0s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--verify-timeout"));
}

/// Two shards of one fleet run at once, each verifying its own devices (the other's seen,
/// not judged); `loadgen merge` adds their delivery sections into the fleet's.
#[test]
fn verified_shards_merge_into_one_delivery_section() {
    let m = Mosquitto::start();
    let dir = TempDir::new("verify-shards");
    let report = dir.path("shard-{shard}.json");
    let children: Vec<_> = (0..2)
        .map(|i| {
            Command::new(BIN)
                .args([
                    "pub",
                    "--broker",
                    &m.url(),
                    "--devices",
                    "6",
                    "--rate",
                    "3k",
                ])
                .args([
                    "--total",
                    "3000",
                    "--shards",
                    "2",
                    "--shard",
                    &i.to_string(),
                ])
                .args(["--verify", "--quiet", "--report-json"])
                .arg(&report)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a shard")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
    }
    let merged = dir.path("merged.json");
    let out = Command::new(BIN)
        .args([
            "merge",
            "--threshold",
            "delivery_missing==0",
            "--report-json",
        ])
        .arg(&merged)
        .arg(&dir.0)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    assert_matches_schema("schema/publisher-report.schema.json", &r);
    let d = delivery(&r);
    assert_eq!(
        (n(d, "expected"), n(d, "unique"), n(d, "missing")),
        (3000, 3000, 0),
        "{d}"
    );
    assert_eq!((n(d, "devices"), n(d, "merged_from")), (6, 2), "{d}");
    assert_eq!(n(&d["e2e_latency_us"], "count"), 3000, "{d}");
}
