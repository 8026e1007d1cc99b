//! Two copies of a preset share its client id `1`: the broker keeps one connection per
//! client id, so each copy's reconnect takes the id from the other. Both name it at once,
//! count it in their reports and fail, instead of taking turns for the whole run.

use std::time::{Duration, Instant};

use test_support::fake::{Behaviour, FakeBroker};
use test_support::{Mosquitto, Subscriber};

use crate::common::{n, spawn, Outcome, Running, TOPIC};

const IN_USE: &str =
    "client id '1' is in use by another client (two copies running? give each its own --client-id)";

/// A copy that sends 80,000 points at 10,000 a second (8 s: its end, and the error line
/// that ends it, come well after the line it prints at once), QoS 1 so that the survivor's
/// delivery is counted; `extra` adds flags.
fn copy(broker: &str, extra: &[&str]) -> Running {
    let mut args = vec![
        "--broker", broker, "--qos", "1", "--rate", "10000", "--total", "80000", "--quiet",
    ];
    args.extend_from_slice(extra);
    spawn(&args, &[])
}

/// Starts a first copy, waits until its points arrive, starts a second; both must print
/// `line` within `within` of the second's start. Returns both outcomes.
fn two_copies(m: &Mosquitto, extra: &[&str], line: &str, within: Duration) -> (Outcome, Outcome) {
    let sub = Subscriber::start(m.port, TOPIC);
    let first = copy(&m.url(), extra);
    assert!(
        sub.wait_points(2_000, Duration::from_secs(10)),
        "the first copy publishes"
    );
    let second = copy(&m.url(), extra);
    let started = Instant::now();
    let seen = (
        first.wait_for_output(line, within),
        second.wait_for_output(line, within),
    );
    let took = started.elapsed();
    let (first, second) = (first.wait(), second.wait());
    assert!(
        seen.0 && seen.1,
        "within {within:?} ({took:?}): first {}, second {}\nfirst's stderr:\n{}\nsecond's stderr:\n{}",
        seen.0,
        seen.1,
        first.stderr,
        second.stderr
    );
    (first, second)
}

fn assert_failed_in_use(out: &Outcome, which: &str) {
    out.assert_code(1);
    let r = out.report();
    let c = &r["connections"];
    assert_eq!(n(c, "client_id_in_use"), 1, "{which}: {c:#}");
    assert!(n(c, "takeovers") >= 1, "{which}: {c:#}");
    assert_eq!(r["outcome"], "incomplete", "{which}");
    let error = r["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(IN_USE), "{which}: {error}");
    assert!(out.stdout.contains("takeovers"), "{which}: {}", out.stdout);
    test_support::assert_matches_schema("schema/publisher-report.schema.json", r);
}

/// MQTT 3.1.1: the broker only closes the connection taken over. Each copy names the
/// likely takeover, then the client id in use, and exits 1; the one still connected
/// delivers the rest of its points.
#[test]
fn two_copies_of_a_preset_both_name_the_client_id_in_use_and_fail() {
    let m = Mosquitto::start();
    let (first, second) = two_copies(&m, &[], &format!("error: {IN_USE}"), Duration::from_secs(4));
    for (out, which) in [(&first, "first"), (&second, "second")] {
        assert_failed_in_use(out, which);
        assert!(
            out.stderr.contains("warning: likely taken over: the broker closed a healthy connection of client id '1'"),
            "{which}: {}",
            out.stderr
        );
        // Named at once and in the error line that ends the run, not once a reconnect.
        assert_eq!(
            out.stderr.matches(IN_USE).count(),
            2,
            "{which}: {}",
            out.stderr
        );
    }
    // One copy gave its connection up; the other kept going, alone now, to the end.
    let given_up = |o: &Outcome| n(&o.report()["connections"], "down_at_end");
    assert_eq!(given_up(&first) + given_up(&second), 1);
    let survivor = if given_up(&first) == 0 {
        &first
    } else {
        &second
    };
    let r = survivor.report();
    assert_eq!(n(r, "points_acked"), 80_000, "{}", survivor.stdout);
}

/// MQTT 5 with Mosquitto 2.0, which closes the connection taken over without the
/// DISCONNECT 0x8E it could send: named as under 3.1.1.
#[test]
fn under_mqtt5_two_copies_both_name_the_client_id_in_use_and_fail() {
    let m = Mosquitto::start();
    let (first, second) = two_copies(
        &m,
        &["--mqtt-version", "5"],
        &format!("error: {IN_USE}"),
        Duration::from_secs(4),
    );
    for (out, which) in [(&first, "first"), (&second, "second")] {
        assert_failed_in_use(out, which);
        assert!(
            out.stderr.contains("warning: likely taken over"),
            "{which}: {}",
            out.stderr
        );
    }
}

/// An MQTT 5 broker that says why (DISCONNECT 0x8E) each time another client takes the id:
/// the first is named a takeover at once, the second, shortly after the reconnect, the
/// client id in use; the copy takes the id back once more (so that a second copy would see
/// the same) and gives up at the third; the run fails.
#[test]
fn an_mqtt5_disconnect_0x8e_is_named_a_takeover_at_once() {
    let broker = FakeBroker::start(Behaviour::TakenOver { after_ms: 300 });
    let run = copy(&broker.url(), &["--mqtt-version", "5"]);
    let said = "warning: taken over: another client connected with client id '1' (the broker's DISCONNECT 0x8E)";
    assert!(
        run.wait_for_output(said, Duration::from_secs(4)),
        "no takeover line"
    );
    assert!(
        run.wait_for_output(&format!("error: {IN_USE}"), Duration::from_secs(4)),
        "no in-use line"
    );
    let out = run.wait();
    assert_failed_in_use(&out, "the copy");
    let c = &out.report()["connections"];
    assert_eq!(n(c, "takeovers"), 3, "{c:#}");
    assert_eq!(n(&c["disconnects_by_reason"], "0x8e session taken over"), 3);
    assert_eq!(n(c, "down_at_end"), 1, "{c:#}");
}

/// Each copy with its own --client-id: no takeover, both deliver everything.
#[test]
fn copies_with_their_own_client_ids_run_side_by_side() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let first = copy(&m.url(), &["--client-id", "frontend1-a"]);
    assert!(sub.wait_points(2_000, Duration::from_secs(10)));
    let second = copy(&m.url(), &["--client-id", "frontend1-b"]);
    for out in [first.wait(), second.wait()] {
        out.assert_code(0);
        let c = &out.report()["connections"];
        assert_eq!(
            (n(c, "takeovers"), n(c, "client_id_in_use"), n(c, "losses")),
            (0, 0, 0)
        );
        assert!(!out.stderr.contains("taken over"), "{}", out.stderr);
    }
}
