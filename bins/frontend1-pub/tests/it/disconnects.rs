//! Connections lost mid-run say what is known and name only the causes that fit; a broker
//! that repeats its PUBACKs is not mistaken for a broken one.

use std::time::Duration;

use test_support::fake::{Behaviour, FakeBroker};
use test_support::{Mosquitto, Subscriber};

use crate::common::{assert_no_escapes, n, publish, publish_env, spawn, TOPIC};

/// Two runs with the preset client id `1`: the broker drops the first when the second
/// connects, and the first says the client id may be in use elsewhere.
#[test]
fn a_client_id_takeover_is_named_as_a_likely_cause() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let first = spawn(
        &[
            "--broker",
            &m.url(),
            "--rate",
            "5000",
            "--duration",
            "6s",
            // The loss ends the run, so that its cause is what the report names.
            "--reconnect",
            "false",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(2_000, Duration::from_secs(10)),
        "the run started"
    );
    let second = publish(&[
        "--broker",
        &m.url(),
        "--total",
        "1000",
        "--rate",
        "0",
        "--quiet",
    ]);
    second.assert_code(0);
    let out = first.wait();
    out.assert_code(1);
    let error = out.report()["error"].as_str().unwrap().to_string();
    assert!(error.contains("closed the connection"), "{error}");
    assert!(error.contains("client id '1'"), "{error}");
    assert!(!error.contains("packet size"), "{error}");
}

#[test]
fn a_broker_that_dies_mid_run_is_named_as_gone() {
    let mut m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--qos",
            "1",
            "--rate",
            "5000",
            "--duration",
            "6s",
            // The loss ends the run, so that its cause is what the report names.
            "--reconnect",
            "false",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(2_000, Duration::from_secs(10)),
        "the run started"
    );
    m.kill();
    let out = run.wait();
    out.assert_code(1);
    let error = out.report()["error"].as_str().unwrap().to_string();
    assert!(error.contains("stopped or restarted"), "{error}");
    assert!(
        !error.contains("packet size") && !error.contains("client id"),
        "{error}"
    );
    // Sent and never acknowledged: lost with the connection, not late for the drain timeout.
    if n(out.report(), "points_failed") > 0 {
        assert!(error.contains("before the connection was lost"), "{error}");
    }
    assert!(!error.contains("--drain-timeout"), "{error}");
}

#[test]
fn a_message_over_the_brokers_limit_is_named_with_its_size() {
    let m = Mosquitto::start_with(&["max_packet_size 10000".into()]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--batch",
        "1000",
        "--rate",
        "0",
        "--total",
        "10000",
        "--quiet",
    ]);
    out.assert_code(1);
    let error = out.report()["error"].as_str().unwrap().to_string();
    assert!(error.contains("packet size limit"), "{error}");
    assert!(error.contains(" bytes)"), "{error}");
    assert!(!error.contains("client id"), "{error}");
}

/// Each PUBLISH answered by two PUBACKs: the first counts, the repeat is counted apart, and
/// no log line carries colour codes into a stderr that is not a terminal.
#[test]
fn repeated_pubacks_count_once_and_the_run_completes() {
    let fake = FakeBroker::start(Behaviour::DuplicateAcks);
    let out = publish_env(
        &[
            "--broker",
            &fake.url(),
            "--qos",
            "1",
            "--batch",
            "1",
            "--total",
            "10000",
            "--rate",
            "0",
            "--quiet",
        ],
        &[("LOADGEN_LOG", "debug")],
    );
    out.assert_code(0);
    let r = out.report();
    assert_eq!((n(r, "points_acked"), n(r, "points_failed")), (10_000, 0));
    assert_eq!(n(r, "duplicate_acks"), 10_000);
    assert!(
        out.stdout.contains("10,000 PUBACKs repeated"),
        "{}",
        out.stdout
    );
    assert_no_escapes(&out.stderr);
}
