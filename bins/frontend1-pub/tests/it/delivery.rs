//! Exactly-once delivery against a real Mosquitto.

use std::time::Duration;

use test_support::{Mosquitto, Subscriber};

use crate::common::{n, publish, DEVICE, TOPIC};

#[test]
fn qos1_batch_1000_delivers_every_point_exactly_once() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--qos",
        "1",
        "--batch",
        "1000",
        "--total",
        "100000",
        "--rate",
        "0",
    ]);
    out.assert_code(0);
    let got = sub.finish(100_000, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, 100_000);
    assert_eq!((got.batch_messages, got.legacy_messages), (100, 0));

    let r = out.report();
    assert_eq!(n(r, "points_sent"), 100_000);
    assert_eq!(n(r, "points_acked"), 100_000);
    assert_eq!(n(r, "messages_sent"), 100);
    assert_eq!(n(r, "messages_acked"), 100);
    assert_eq!((n(r, "points_failed"), n(r, "points_unsent")), (0, 0));
    assert_eq!(r["outcome"], "complete");
    assert_eq!(n(&r["latency_us"], "count"), 100);
    assert!(n(&r["latency_us"], "max") >= n(&r["latency_us"], "p50"));
    assert!(
        out.stdout
            .contains("100,000 sent, 100,000 acknowledged, 0 failed"),
        "{}",
        out.stdout
    );
}

#[test]
fn qos1_legacy_objects_deliver_every_point_exactly_once() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--qos",
        "1",
        "--batch",
        "1",
        "--total",
        "100000",
        "--rate",
        "max",
    ]);
    out.assert_code(0);
    let got = sub.finish(100_000, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, 100_000);
    assert_eq!((got.legacy_messages, got.batch_messages), (100_000, 0));
    let r = out.report();
    assert_eq!(
        (
            n(r, "points_sent"),
            n(r, "points_acked"),
            n(r, "messages_sent")
        ),
        (100_000, 100_000, 100_000)
    );
}

#[test]
fn qos0_at_20k_points_per_second_delivers_every_point_on_loopback() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--qos",
        "0",
        "--rate",
        "20000",
        "--batch",
        "1000",
        "--total",
        "60000",
    ]);
    out.assert_code(0);
    let got = sub.finish(60_000, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, 60_000);
    let r = out.report();
    assert_eq!(n(r, "points_sent"), 60_000);
    assert!(r["points_acked"].is_null(), "QoS 0 has no acknowledgements");
    assert!(r["latency_us"].is_null());
    assert!(n(&r["schedule_lag_us"], "count") == 60);
}

#[test]
fn qos0_legacy_objects_at_20k_per_second_all_arrive() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--qos",
        "0",
        "--rate",
        "20k",
        "--batch",
        "1",
        "--total",
        "40000",
    ]);
    out.assert_code(0);
    let got = sub.finish(40_000, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, 40_000);
    assert_eq!(got.legacy_messages, 40_000);
}

#[test]
fn rate_10k_batch_1000_total_30k_takes_three_seconds() {
    let m = Mosquitto::start();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--rate",
        "10000",
        "--batch",
        "1000",
        "--total",
        "30000",
    ]);
    out.assert_code(0);
    let wall = out.wall.as_secs_f64();
    assert!((2.7..=3.3).contains(&wall), "took {wall:.3} s");
    let r = out.report();
    let elapsed = r["elapsed_s"].as_f64().unwrap();
    assert!((2.7..=3.3).contains(&elapsed), "report says {elapsed} s");
    let pct = r["target_pct"].as_f64().unwrap();
    assert!((95.0..=105.0).contains(&pct), "achieved {pct}% of target");
    // Progress about once a second on stderr.
    assert!(
        out.stderr.matches("points/s").count() >= 2,
        "{}",
        out.stderr
    );
}

#[test]
fn duration_bounds_an_open_ended_run() {
    let m = Mosquitto::start();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--rate",
        "5000",
        "--batch",
        "500",
        "--duration",
        "1s",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    // Paced, the duration plans rate x duration points; they all go out.
    assert_eq!(n(r, "points_planned"), 5000);
    assert_eq!(n(r, "points_sent"), 5000);
}

#[test]
fn unpaced_run_that_ends_with_a_full_client_queue_still_flushes_and_exits_0() {
    // The last DISCONNECT must wait for room behind the queued publishes, not be dropped.
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--rate",
        "0",
        "--batch",
        "1000",
        "--max-queued",
        "1",
        "--total",
        "200000",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_eq!((n(r, "points_sent"), n(r, "points_unsent")), (200_000, 0));
    assert!(r["error"].is_null(), "{}", r["error"]);
    let got = sub.finish(200_000, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, 200_000);
}
