//! MQTT 5 against Mosquitto: the broker's Receive Maximum clamps the QoS 1 window, and
//! PUBACK reason codes of 0x80 and up count as rejected, by code.

use test_support::{Mosquitto, Subscriber, TempDir};

use crate::common::{n, publish, DEVICE, TOPIC};

#[test]
fn the_brokers_receive_maximum_clamps_the_window_without_a_protocol_error() {
    let m = Mosquitto::start_with(&["max_inflight_messages 20".into()]);
    let sub = Subscriber::start(m.port, TOPIC);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--mqtt-version",
        "5",
        "--qos",
        "1",
        "--batch",
        "1",
        "--max-inflight",
        "1000",
        "--rate",
        "0",
        "--total",
        "20000",
        "--user-property",
        "run=r1",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_eq!(r["mqtt_version"], "5");
    assert_eq!(n(r, "receive_maximum"), 20);
    assert_eq!(n(r, "window_clamped"), 1);
    assert_eq!((n(r, "points_acked"), n(r, "points_rejected")), (20_000, 0));
    // More in flight than 20 would be a protocol error: Mosquitto would disconnect us.
    assert_eq!(n(r, "reconnects"), 0, "{}", out.stdout);
    let got = sub.finish(20_000, std::time::Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, 20_000);
}

#[test]
fn a_topic_the_acl_denies_is_counted_rejected_with_its_reason_code() {
    let dir = TempDir::new("acl");
    let acl = dir.path("acl");
    // Anonymous clients may read everything and write nothing.
    std::fs::write(&acl, "topic read #\n").unwrap();
    // (With max_queued_messages 0, Mosquitto 2.0.11 drops a client after its first
    // refused PUBLISH; see the size-limit test.)
    let m = Mosquitto::start_with(&[
        format!("acl_file {}", acl.display()),
        "max_queued_messages 1000".into(),
    ]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--mqtt-version",
        "5",
        "--qos",
        "1",
        "--batch",
        "1",
        "--rate",
        "0",
        "--total",
        "500",
        "--quiet",
    ]);
    out.assert_code(1);
    let r = out.report();
    assert_eq!(
        (
            n(r, "points_rejected"),
            n(r, "points_acked"),
            n(r, "points_failed")
        ),
        (500, 0, 0)
    );
    assert_eq!(n(&r["rejected_by_reason"], "0x87 not authorized"), 500);
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("rejected by the broker: 0x87 not authorized"),
        "{error}"
    );
}

#[test]
fn a_message_over_the_brokers_size_limit_is_rejected_under_mqtt5() {
    let m = Mosquitto::start_with(&[
        "message_size_limit 2000".into(),
        "max_queued_messages 1000".into(),
    ]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--mqtt-version",
        "5",
        "--qos",
        "1",
        "--batch",
        "100",
        "--rate",
        "0",
        "--total",
        "1000",
        "--quiet",
    ]);
    out.assert_code(1);
    let r = out.report();
    assert_eq!((n(r, "points_rejected"), n(r, "points_acked")), (1000, 0));
    assert_eq!(n(&r["rejected_by_reason"], "0x95 packet too large"), 10);
}

#[test]
fn mqtt5_with_the_embedded_broker_is_a_usage_error_that_says_what_to_pass() {
    let out = publish(&[
        "--broker",
        "embedded",
        "--mqtt-version",
        "5",
        "--total",
        "10",
    ]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("--broker mqtt://HOST:PORT"),
        "{}",
        out.stderr
    );
}
