//! The embedded broker: forced with `--broker embedded`, and as the fallback when nothing
//! listens where `auto` looks.

use std::time::Duration;

use test_support::{free_port, Subscriber};

use crate::common::{n, spawn, DEVICE, TOPIC};

#[test]
fn forced_embedded_broker_delivers_qos1_batches_exactly_once() {
    let port = free_port();
    let p = port.to_string();
    let run = spawn(
        &[
            "--broker",
            "embedded",
            "--embedded-port",
            &p,
            "--start-delay",
            "2s",
            "--qos",
            "1",
            "--total",
            "100000",
            "--rate",
            "0",
        ],
        &[],
    );
    let sub = Subscriber::start(port, TOPIC);
    let out = run.wait();
    out.assert_code(0);
    assert!(
        out.stderr.contains("started an embedded broker"),
        "{}",
        out.stderr
    );
    let got = sub.finish(100_000, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, 100_000);
    let r = out.report();
    assert_eq!(r["broker_embedded"], true);
    assert_eq!(
        (n(r, "points_acked"), n(r, "messages_sent")),
        (100_000, 100)
    );
    assert!(out.stdout.contains("(embedded rumqttd)"));
}

#[test]
fn embedded_broker_is_the_fallback_when_nothing_listens() {
    let nothing = format!("127.0.0.1:{}", free_port());
    let port = free_port();
    let p = port.to_string();
    let run = spawn(
        &[
            "--embedded-port",
            &p,
            "--start-delay",
            "2s",
            "--qos",
            "1",
            "--batch",
            "1",
            "--total",
            "20000",
            "--rate",
            "0",
        ],
        &[("LOADGEN_AUTO_BROKER", &nothing)],
    );
    let sub = Subscriber::start(port, TOPIC);
    let out = run.wait();
    out.assert_code(0);
    assert!(
        out.stderr.contains(&format!("no broker at {nothing}")),
        "{}",
        out.stderr
    );
    let got = sub.finish(20_000, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, 20_000);
    assert_eq!(out.report()["broker_embedded"], true);
}

#[test]
fn embedded_broker_delivers_qos0_at_20k_points_per_second() {
    let port = free_port();
    let p = port.to_string();
    let run = spawn(
        &[
            "--broker",
            "embedded",
            "--embedded-port",
            &p,
            "--start-delay",
            "2s",
            "--qos",
            "0",
            "--rate",
            "20000",
            "--total",
            "40000",
        ],
        &[],
    );
    let sub = Subscriber::start(port, TOPIC);
    let out = run.wait();
    out.assert_code(0);
    let got = sub.finish(40_000, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, 40_000);
}
