//! What the broker's CONNACK and DISCONNECT say, held to the letter: refusals for now are
//! exit 3 and refusals for good exit 4, each with a report; MQTT 5 limits (Maximum Packet
//! Size, Maximum QoS, Server Keep Alive, Receive Maximum) are honoured or refused clearly;
//! sessions resumed or lost change what DUP and the counts say. Scripted brokers, for what
//! a real one cannot be made to answer on demand; a real Mosquitto where it can.

use std::time::Duration;

use test_support::fake::{Behaviour, FakeBroker};
use test_support::{Mosquitto, Subscriber};

use crate::common::{n, publish};

fn qos1_points(broker: &str, extra: &[&str]) -> crate::common::Outcome {
    let mut args = vec![
        "--broker", broker, "--qos", "1", "--batch", "1", "--rate", "0", "--total", "10", "--quiet",
    ];
    args.extend_from_slice(extra);
    publish(&args)
}

/// CONNACK "server unavailable" (3.1.1 code 3) is a refusal for now: exit 3 as the README
/// says, not 4, and the JSON report is written with the reason.
#[test]
fn a_broker_unavailable_for_now_exits_3_with_a_report() {
    let fake = FakeBroker::start(Behaviour::Refuse(3));
    let out = qos1_points(&fake.url(), &["--connect-retries", "0"]);
    out.assert_code(3);
    let r = out.report();
    assert_eq!(r["outcome"], "incomplete");
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("unavailable for now"), "{error}");
    assert!(out.stderr.contains("unavailable for now"), "{}", out.stderr);
}

/// `--mqtt-version 5` against a broker that speaks only 3.1.1 (it answers with 3.1.1's code
/// 1): the error says MQTT 5 is what it does not accept, and what to pass; exit 4; a report.
#[test]
fn mqtt5_against_a_3_1_1_broker_says_to_use_3_1_1_and_writes_a_report() {
    let fake = FakeBroker::start(Behaviour::Refuse(1));
    let out = qos1_points(&fake.url(), &["--mqtt-version", "5"]);
    out.assert_code(4);
    assert!(
        out.stderr
            .contains("does not accept MQTT 5; use --mqtt-version 3.1.1"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("3.1.1 is not accepted"),
        "{}",
        out.stderr
    );
    let error = out.report()["error"].as_str().unwrap().to_string();
    assert!(error.contains("does not accept MQTT 5"), "{error}");
}

/// Receive Maximum 0 in a CONNACK is a protocol error (MQTT 5 section 3.2.2.3.3): the
/// connection is refused with that said, not run with a window of one.
#[test]
fn a_connack_with_receive_maximum_0_is_a_protocol_error() {
    let fake = FakeBroker::start(Behaviour::Mqtt5 {
        props: &[0x21, 0x00, 0x00],
        close_silent_ms: 0,
        disconnect_over: 0,
    });
    let out = qos1_points(&fake.url(), &["--mqtt-version", "5"]);
    out.assert_code(3);
    assert!(out.stderr.contains("Receive Maximum 0"), "{}", out.stderr);
    assert!(fake.published().is_empty(), "nothing is sent");
}

/// Maximum QoS 0 and a QoS 1 run: refused for good before anything is sent, saying what to
/// pass.
#[test]
fn a_broker_taking_qos0_only_refuses_a_qos1_run_before_sending() {
    let fake = FakeBroker::start(Behaviour::Mqtt5 {
        props: &[0x24, 0x00],
        close_silent_ms: 0,
        disconnect_over: 0,
    });
    let out = qos1_points(&fake.url(), &["--mqtt-version", "5"]);
    out.assert_code(4);
    assert!(out.stderr.contains("use --qos 0"), "{}", out.stderr);
    assert!(fake.published().is_empty(), "nothing is sent");
}

/// A real Mosquitto with `max_packet_size 10000` tells an MQTT 5 client so in its CONNACK:
/// 1000-point batches cannot fit, and the run says so before sending (it used to be
/// disconnected with 0x95 three times, its QoS 0 points counted sent).
#[test]
fn batches_over_the_brokers_maximum_packet_size_are_a_clear_error_before_sending() {
    let m = Mosquitto::start_with(&["max_packet_size 10000".into()]);
    let sub = Subscriber::start(m.port, "device_data/#");
    for qos in ["0", "1"] {
        let out = publish(&[
            "--broker",
            &m.url(),
            "--mqtt-version",
            "5",
            "--qos",
            qos,
            "--batch",
            "1000",
            "--rate",
            "0",
            "--total",
            "5000",
            "--quiet",
        ]);
        out.assert_code(4);
        assert!(
            out.stderr.contains("Maximum Packet Size") && out.stderr.contains("lower --batch"),
            "{}",
            out.stderr
        );
        let r = out.report();
        assert_eq!(n(r, "points_sent"), 0, "qos {qos}");
    }
    // Small enough messages go through the same broker.
    let out = publish(&[
        "--broker",
        &m.url(),
        "--mqtt-version",
        "5",
        "--qos",
        "1",
        "--batch",
        "10",
        "--rate",
        "0",
        "--total",
        "5000",
        "--quiet",
    ]);
    out.assert_code(0);
    let got = sub.finish(5000, Duration::from_secs(5));
    assert_eq!(got.points, 5000);
}

/// A broker that refuses a packet by DISCONNECT 0x95 without having announced its limit. At
/// QoS 1 the refused message (the oldest unacknowledged) is counted rejected with its reason;
/// at QoS 0, where nothing tells which points it refused, the run fails saying so instead of
/// counting them delivered.
#[test]
fn a_packet_refused_by_disconnect_is_counted_rejected_or_fails_a_qos0_run() {
    let behaviour = Behaviour::Mqtt5 {
        props: &[],
        close_silent_ms: 0,
        disconnect_over: 2000,
    };
    let fake = FakeBroker::start(behaviour);
    let out = publish(&[
        "--broker",
        &fake.url(),
        "--mqtt-version",
        "5",
        "--qos",
        "1",
        "--batch",
        "100",
        "--rate",
        "0",
        "--total",
        "300",
        "--quiet",
    ]);
    out.assert_code(1);
    let r = out.report();
    assert!(
        n(&r["rejected_by_reason"], "0x95 packet too large") >= 1,
        "{:#}",
        r["rejected_by_reason"]
    );
    assert!(n(r, "points_rejected") >= 100, "{r:#}");
    assert!(
        n(
            &r["connections"]["disconnects_by_reason"],
            "0x95 packet too large"
        ) >= 1,
        "{:#}",
        r["connections"]
    );
    let fake = FakeBroker::start(behaviour);
    let out = publish(&[
        "--broker",
        &fake.url(),
        "--mqtt-version",
        "5",
        "--qos",
        "0",
        "--batch",
        "100",
        "--rate",
        "0",
        "--total",
        "300",
        "--quiet",
    ]);
    out.assert_code(1);
    let error = out.report()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("DISCONNECT 0x95 packet too large") && error.contains("QoS 0"),
        "{error}"
    );
}

/// The broker's Server Keep Alive (1 s) replaces ours (60 s): with messages 2 s apart, the
/// client pings within each second, and a broker closing clients silent for 1.5 s never
/// closes it.
#[test]
fn the_brokers_server_keep_alive_is_honoured() {
    let fake = FakeBroker::start(Behaviour::Mqtt5 {
        props: &[0x13, 0x00, 0x01],
        close_silent_ms: 1000,
        disconnect_over: 0,
    });
    let out = publish(&[
        "--broker",
        &fake.url(),
        "--mqtt-version",
        "5",
        "--keep-alive",
        "60s",
        "--qos",
        "1",
        "--batch",
        "1",
        "--rate",
        "0.5",
        "--total",
        "2",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_eq!(n(&r["connections"], "losses"), 0, "{:#}", r["connections"]);
    assert_eq!(n(r, "points_acked"), 2);
}

/// A reconnect whose broker lost the session (Session Present 0 with --clean-session false):
/// the unacknowledged message goes out again as a new message, without DUP; within a session
/// the broker kept, with DUP set and its packet id (MQTT 3.1.1 section 4.4).
#[test]
fn resends_carry_dup_only_within_the_session_that_may_hold_them() {
    for (kept, dup) in [(false, false), (true, true)] {
        let fake = FakeBroker::start(Behaviour::DropFirstUnacked {
            session_present: kept,
        });
        let out = publish(&[
            "--broker",
            &fake.url(),
            "--clean-session",
            "false",
            "--client-id",
            "dup-test",
            "--qos",
            "1",
            "--batch",
            "1",
            "--rate",
            "0",
            "--total",
            "3",
            "--reconnect-backoff",
            "10ms..50ms",
            "--quiet",
        ]);
        out.assert_code(0);
        let published = fake.published();
        let first = published
            .iter()
            .find(|p| p.conn == 1)
            .copied()
            .expect("a PUBLISH on the first connection");
        assert!(!first.dup(), "{published:?}");
        // All three went out on the first connection (the broker read one before it
        // closed): all three are resends on the second, with its packet ids.
        let again: Vec<_> = published.iter().filter(|p| p.conn == 2).collect();
        assert!(
            again.iter().any(|p| p.pkid == first.pkid),
            "resent with its packet id: {published:?}"
        );
        assert!(
            again.iter().all(|p| p.dup() == dup),
            "session kept: {kept}; {published:?}"
        );
        let r = out.report();
        assert_eq!(n(r, "messages_resent"), again.len() as u64, "{published:?}");
        assert_eq!(n(&r["connections"], "sessions_lost"), u64::from(!kept));
    }
}

/// A first connect that finds a session of its client id kept from before (Session Present
/// with --clean-session false) is said in the report and the summary; the PUBACK that
/// session's packet id brings is counted as an id this run never used, not as a duplicate.
#[test]
fn a_session_resumed_from_before_is_reported_and_its_acks_named() {
    let fake = FakeBroker::start(Behaviour::StaleSession);
    let out = qos1_points(&fake.url(), &["--clean-session", "false"]);
    out.assert_code(0);
    let r = out.report();
    assert_eq!(n(&r["connections"], "sessions_resumed"), 1);
    assert_eq!((n(r, "acks_unknown_id"), n(r, "duplicate_acks")), (1, 0));
    assert!(out.stdout.contains("resumed a session"), "{}", out.stdout);
    assert!(out.stdout.contains("never used"), "{}", out.stdout);
}
