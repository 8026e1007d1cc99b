//! frontend2-pub publishes as frontend 2: its device, topic and client id.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use test_support::{Mosquitto, Subscriber, TempDir};

#[test]
fn frontend2_publishes_its_own_device_on_its_own_topic() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, "device_data/#");
    let dir = TempDir::new("f2");
    let report = dir.path("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_frontend2-pub"))
        .args([
            "--broker",
            &m.url(),
            "--qos",
            "1",
            "--rate",
            "0",
            "--total",
            "10000",
            "--quiet",
            "--report-json",
        ])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = sub.finish(10_000, Duration::from_secs(5));
    got.assert_exactly_once("frontend2_ultra_high_perf_device", 10_000);
    assert_eq!(
        got.topics.keys().collect::<Vec<_>>(),
        ["device_data/frontend2_ultra_high_perf_device"]
    );
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["client_id"], "2");
    assert_eq!(r["tool"], "frontend2-pub");
    assert_eq!(r["points_acked"], 10_000);
}
