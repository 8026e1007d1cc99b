//! Ctrl-C and SIGTERM mid-run: stop generating, flush, report, exit 130 / 143.

use std::time::Duration;

use test_support::fake::{Behaviour, FakeBroker};
use test_support::{Mosquitto, Subscriber};

use crate::common::{n, spawn, DEVICE, TOPIC};

#[test]
fn sigint_mid_run_flushes_reports_and_exits_130() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--qos",
            "1",
            "--rate",
            "20000",
            "--batch",
            "100",
            "--total",
            "1000000",
        ],
        &[],
    );
    assert!(
        sub.wait_points(2_000, Duration::from_secs(10)),
        "the run started"
    );
    run.signal("INT");
    let out = run.wait();
    out.assert_code(130);
    assert!(
        out.stdout.contains("summary") && out.stdout.contains("by SIGINT"),
        "{}",
        out.stdout
    );
    let r = out.report();
    assert_eq!(r["outcome"], "interrupted");
    let sent = n(r, "points_sent");
    assert!(sent > 0 && sent < 1_000_000, "sent {sent}");
    // Everything generated was flushed and acknowledged, and the subscriber got exactly that.
    assert_eq!(n(r, "points_acked"), sent);
    assert_eq!((n(r, "points_failed"), n(r, "points_unsent")), (0, 0));
    let got = sub.finish(sent, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, sent);
}

#[test]
fn sigterm_mid_run_exits_143_with_a_report() {
    let m = Mosquitto::start();
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--rate",
            "10000",
            "--total",
            "1000000",
        ],
        &[],
    );
    assert!(run.wait_for_output("points/s", Duration::from_secs(10)));
    run.signal("TERM");
    let out = run.wait();
    out.assert_code(143);
    let r = out.report();
    assert_eq!(r["interrupted_by"], "SIGTERM");
    assert_eq!(n(r, "points_sent"), n(r, "points_enqueued"));
}

/// A server that takes the CONNECT and then never reads: one SIGTERM ends generation (blocked
/// on a full queue) and the drain within --drain-timeout, with the summary and the report.
#[test]
fn one_sigterm_ends_a_run_blocked_on_a_broker_that_stopped_reading() {
    let fake = FakeBroker::start(Behaviour::Deaf);
    let mut run = spawn(
        &[
            "--broker",
            &fake.url(),
            "--total",
            "200k",
            "--rate",
            "0",
            "--drain-timeout",
            "3s",
        ],
        &[],
    );
    // Under way (a progress line), and soon blocked: the broker reads nothing.
    assert!(run.wait_for_output("points/s", Duration::from_secs(10)));
    run.signal("TERM");
    let ended = run.exits_within(Duration::from_secs(6));
    if !ended {
        run.signal("KILL");
    }
    let out = run.wait();
    assert!(ended, "one SIGTERM did not end the run:\n{}", out.stderr);
    out.assert_code(143);
    assert!(out.stdout.contains("by SIGTERM"), "{}", out.stdout);
    let r = out.report();
    assert_eq!(r["outcome"], "interrupted");
    assert!(n(r, "points_unsent") > 0, "{r:#}");
    assert!(n(r, "points_sent") < 200_000);
}

/// SIGINT while the broker has not answered CONNECT: exit 130 at once, not after the timeout.
#[test]
fn sigint_while_connecting_exits_130_at_once_with_a_summary() {
    let fake = FakeBroker::start(Behaviour::Silent);
    let mut run = spawn(&["--broker", &fake.url(), "--connect-timeout", "20s"], &[]);
    assert!(
        fake.wait_accepted(1, Duration::from_secs(10)),
        "it connects"
    );
    run.signal("INT");
    let ended = run.exits_within(Duration::from_secs(3));
    if !ended {
        run.signal("KILL");
    }
    let out = run.wait();
    assert!(
        ended,
        "SIGINT while connecting was ignored:\n{}",
        out.stderr
    );
    out.assert_code(130);
    assert!(
        out.stdout.contains("while connecting: nothing was sent"),
        "{}",
        out.stdout
    );
    let r = out.report();
    assert_eq!(
        (n(r, "points_sent"), r["interrupted_connecting"].as_bool()),
        (0, Some(true))
    );
}

/// SIGHUP (the terminal went away) ends a run like SIGTERM: summary, report, 129.
#[test]
fn sighup_mid_run_exits_129_with_a_report() {
    let m = Mosquitto::start();
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--rate",
            "10000",
            "--total",
            "1000000",
        ],
        &[],
    );
    assert!(run.wait_for_output("points/s", Duration::from_secs(10)));
    run.signal("HUP");
    let out = run.wait();
    out.assert_code(129);
    assert!(out.stdout.contains("by SIGHUP"), "{}", out.stdout);
    let r = out.report();
    assert_eq!(r["interrupted_by"], "SIGHUP");
    assert_eq!(n(r, "points_sent"), n(r, "points_enqueued"));
}

/// SIGUSR1 prints a status line, even with --quiet, and ends nothing.
#[test]
fn sigusr1_prints_a_status_line_and_the_run_goes_on() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--rate",
            "10000",
            "--total",
            "20000",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(1_000, Duration::from_secs(10)),
        "the run started"
    );
    run.signal("USR1");
    let out = run.wait();
    out.assert_code(0);
    assert_eq!(out.stderr.matches("points/s").count(), 1, "{}", out.stderr);
    assert_eq!(n(out.report(), "points_sent"), 20_000);
}

/// The first SIGINT ends --embedded-linger; the run it follows completed, so exit 0.
#[test]
fn the_first_signal_ends_the_embedded_linger() {
    let run = spawn(
        &[
            "--broker",
            "embedded",
            "--embedded-linger",
            "60s",
            "--total",
            "1000",
            "--rate",
            "0",
            "--quiet",
        ],
        &[],
    );
    // The summary is out before the linger starts.
    assert!(run.wait_for_output("summary", Duration::from_secs(10)));
    run.signal("INT");
    let mut run = run;
    let ended = run.exits_within(Duration::from_secs(3));
    if !ended {
        run.signal("KILL");
    }
    let out = run.wait();
    assert!(ended, "the first SIGINT did not end the linger");
    out.assert_code(0);
    assert_eq!(out.report()["outcome"], "complete");
}
