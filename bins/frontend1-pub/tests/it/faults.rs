//! The fault catalog: the broker killed and restarted, stopped past the keep-alive,
//! connections cut, half-closed and stalled by a proxy, a reconnect refused for good, and an
//! outage longer than the offline buffer. Each run must go on through the fault, and its
//! report must agree with an independent subscriber: nothing the report calls acknowledged
//! is missing, duplicates are at most what it resent, and what it dropped offline is what
//! the subscriber misses.

use std::time::Duration;

use serde_json::Value;
use test_support::proxy::Proxy;
use test_support::{mosquitto_password_file, Mosquitto, Received, Subscriber, TempDir};

use crate::common::{n, spawn, Outcome, DEVICE, TOPIC};

/// Checks the run against what the subscriber received: every point acknowledged, none of
/// them missing, duplicate points at most those of the messages resent.
fn assert_every_acked_point_arrived(out: &Outcome, got: &Received, total: u64) {
    out.assert_code(0);
    let r = out.report();
    assert_eq!(r["outcome"], "complete", "{}", out.stdout);
    assert_eq!(n(r, "points_acked"), total, "{}", out.stdout);
    let (missing, extra, outside) = got.delivery(DEVICE, total);
    assert_eq!(
        (missing, outside),
        (0, 0),
        "acknowledged but lost\n{}",
        out.stdout
    );
    let resent_points = n(r, "messages_resent") * n(r, "batch");
    assert!(
        extra <= resent_points,
        "{extra} duplicate points, more than the {resent_points} resent\n{}",
        out.stdout
    );
}

/// The figures of a run beside the subscriber's, for the closing notes (`--no-capture`).
fn figures(what: &str, r: &Value, got: &Received, total: u64) {
    let (missing, extra, _) = got.delivery(DEVICE, total);
    eprintln!(
        "{what}: publisher acked {} failed {} reconnects {} resent {} disconnected {} s; \
         subscriber points {} missing {missing} duplicates {extra}",
        r["points_acked"],
        r["points_failed"],
        r["reconnects"],
        r["messages_resent"],
        r["disconnected_s"],
        got.points
    );
}

fn faults(r: &Value) -> String {
    format!(
        "reconnects {} resent {} disconnected {} s lost {}",
        r["reconnects"], r["messages_resent"], r["disconnected_s"], r["connections"]["lost"]
    )
}

/// Fault 1, one connection: the broker is killed mid-run (QoS 1, persistent session) and
/// started again. The proxy holds the publisher off until the subscriber is back, so that
/// what the broker takes after the restart has a subscription to go to.
#[test]
fn a_broker_killed_and_restarted_mid_run_loses_no_acknowledged_point() {
    let mut m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let sub = Subscriber::start(m.port, TOPIC);
    let total = 30_000u64;
    let run = spawn(
        &[
            "--broker",
            &proxy.url(),
            "--qos",
            "1",
            "--batch",
            "1",
            "--clean-session",
            "false",
            "--rate",
            "10000",
            "--total",
            "30000",
            "--reconnect-backoff",
            "50ms..500ms",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(5_000, Duration::from_secs(10)),
        "the run started"
    );
    // Held back first, so that the broker has handed on everything it acknowledged before
    // it dies: a broker killed with acknowledged points in its queues loses them, which is
    // the broker's loss (an acknowledgement proves receipt, not delivery), not ours.
    proxy.set_accepting(false);
    proxy.set_stalled(true);
    assert!(sub.wait_quiet(Duration::from_millis(300), Duration::from_secs(10)));
    proxy.cut_all(); // the publisher's connection goes with the broker
    proxy.set_stalled(false);
    m.kill();
    std::thread::sleep(Duration::from_millis(500)); // the outage itself
    m.restart();
    assert!(
        sub.wait_subscribed(2, Duration::from_secs(10)),
        "the subscriber did not come back"
    );
    proxy.set_accepting(true);
    let out = run.wait();
    let got = sub.finish(total, Duration::from_secs(5));
    let r = out.report();
    assert!(n(r, "reconnects") >= 1, "{}", faults(r));
    assert!(
        r["disconnected_s"].as_f64().unwrap() >= 0.4,
        "{}",
        faults(r)
    );
    // Mosquitto without persistence forgot the session: the report says so.
    assert!(n(&r["connections"], "sessions_lost") >= 1, "{}", faults(r));
    assert!(out.stdout.contains("faults"), "{}", out.stdout);
    figures("fault 1, one connection", r, &got, total);
    assert_every_acked_point_arrived(&out, &got, total);
}

/// Fault 2: the broker stopped (SIGSTOP) for longer than the keep-alive, then resumed: the
/// keep-alive finds the connection dead, reconnects wait out the stop, and nothing the broker
/// acknowledged is lost.
#[test]
fn a_broker_stopped_past_the_keep_alive_is_reconnected_to_when_it_resumes() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let total = 20_000u64;
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--qos",
            "1",
            "--batch",
            "1",
            "--rate",
            "5000",
            "--total",
            "20000",
            "--keep-alive",
            "1s",
            "--connect-timeout",
            "1s",
            "--reconnect-backoff",
            "50ms..500ms",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(2_000, Duration::from_secs(10)),
        "the run started"
    );
    m.signal("STOP");
    std::thread::sleep(Duration::from_millis(3000)); // the stop itself: past the keep-alive
    m.signal("CONT");
    let out = run.wait();
    let got = sub.finish(total, Duration::from_secs(5));
    let r = out.report();
    assert!(n(r, "reconnects") >= 1, "{}", faults(r));
    // Found by the keep-alive (about two intervals after the stop), back after the resume.
    assert!(
        r["disconnected_s"].as_f64().unwrap() >= 0.5,
        "{}",
        faults(r)
    );
    assert!(n(r, "messages_resent") > 0, "{}", faults(r));
    figures("fault 2", r, &got, total);
    assert_every_acked_point_arrived(&out, &got, total);
}

/// Fault 3: a proxy between publisher and broker cuts the connection (a reset), half-closes
/// it, and stalls it past the keep-alive; each time the publisher reconnects, and the
/// subscriber behind the broker gets every point.
#[test]
fn connections_cut_half_closed_and_stalled_by_a_proxy_reconnect_with_exact_counts() {
    let m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let sub = Subscriber::start(m.port, TOPIC);
    let total = 40_000u64;
    let run = spawn(
        &[
            "--broker",
            &proxy.url(),
            "--qos",
            "1",
            "--batch",
            "1",
            "--rate",
            "5000",
            "--total",
            "40000",
            "--keep-alive",
            "1s",
            "--reconnect-backoff",
            "50ms..200ms",
            "--quiet",
        ],
        &[],
    );
    // Each fault once the run delivers (again): more points at the subscriber prove the
    // connection came back.
    let delivers_more = |more: u64| {
        let now = sub.snapshot().points;
        assert!(
            sub.wait_points(now + more, Duration::from_secs(10)),
            "no points after {now}"
        );
    };
    delivers_more(3_000);
    proxy.cut_all();
    delivers_more(3_000);
    proxy.half_close_all();
    delivers_more(3_000);
    proxy.set_stalled(true);
    std::thread::sleep(Duration::from_millis(2500)); // the stall itself: past the keep-alive
    proxy.set_stalled(false);
    proxy.cut_all(); // the stalled connection's bytes must not arrive late
    let out = run.wait();
    let got = sub.finish(total, Duration::from_secs(5));
    let r = out.report();
    assert!(n(r, "reconnects") >= 3, "{}", faults(r));
    // Three losses of the one connection: events in `losses`, connections in `lost`.
    assert!(n(&r["connections"], "losses") >= 3, "{}", faults(r));
    assert_eq!(n(&r["connections"], "lost"), 1, "{}", faults(r));
    assert_every_acked_point_arrived(&out, &got, total);
}

/// Fault 7: an outage longer than the offline buffer holds. What fell due beyond it is
/// dropped, counted, and exactly what the subscriber misses.
#[test]
fn an_outage_past_the_offline_buffer_drops_what_the_subscriber_misses() {
    let m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let sub = Subscriber::start(m.port, TOPIC);
    let total = 12_000u64;
    let run = spawn(
        &[
            "--broker",
            &proxy.url(),
            "--qos",
            "1",
            "--batch",
            "1",
            "--rate",
            "2000",
            "--total",
            "12000",
            "--offline-buffer",
            "500",
            "--reconnect-backoff",
            "50ms..100ms",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(1_000, Duration::from_secs(10)),
        "the run started"
    );
    proxy.set_accepting(false);
    proxy.cut_all();
    std::thread::sleep(Duration::from_millis(2000)); // the outage itself
    proxy.set_accepting(true);
    let out = run.wait();
    let got = sub.finish(total, Duration::from_secs(3));
    let r = out.report();
    let dropped = n(r, "points_dropped_offline");
    // About 4,000 points fell due in the 2 s outage; 500 were kept.
    assert!(dropped >= 2000, "{dropped} dropped offline: {}", out.stdout);
    assert_eq!(n(r, "points_acked") + dropped, total, "{}", out.stdout);
    let (missing, extra, outside) = got.delivery(DEVICE, total);
    assert_eq!(
        missing, dropped,
        "the subscriber misses what was dropped offline"
    );
    assert_eq!(outside, 0);
    assert!(extra <= n(r, "messages_resent") * n(r, "batch"));
    out.assert_code(1);
    assert!(
        r["error"].as_str().unwrap().contains("--offline-buffer"),
        "{}",
        out.stdout
    );
}

/// Fault 4 on a reconnect: the password changed while the run was up, so the reconnect
/// after a cut is refused. Refused credentials are fatal: exit 4 at once, no retry storm,
/// and the password in no output.
#[test]
fn a_reconnect_refused_for_bad_credentials_exits_4_without_retrying() {
    let dir = TempDir::new("refuse");
    let secret = "s3cret-Reconnect";
    let pw = mosquitto_password_file(&dir, "loader", secret);
    let m = Mosquitto::start_with(&[
        "allow_anonymous false".into(),
        format!("password_file {}", pw.display()),
        // Its reload on SIGHUP is logged at this level: what the test waits for.
        "log_type error".into(),
        "log_type warning".into(),
        "log_type information".into(),
    ]);
    let proxy = Proxy::start(m.port);
    let secret_file = dir.path("secret");
    std::fs::write(&secret_file, secret).unwrap();
    let run = spawn(
        &[
            "--broker",
            &proxy.url(),
            "--username",
            "loader",
            "--password-file",
            secret_file.to_str().unwrap(),
            "--rate",
            "1000",
            "--duration",
            "20s",
            "--reconnect-backoff",
            "50ms..100ms",
        ],
        &[],
    );
    // Connected and publishing (a progress line) before the password changes.
    assert!(run.wait_for_output("points/s", Duration::from_secs(10)));
    // A new password for the user, read by Mosquitto on SIGHUP; then the connection is cut.
    mosquitto_password_file(&dir, "loader", "another-password");
    m.signal("HUP");
    assert!(
        m.wait_for_log("Reloading config", Duration::from_secs(10)),
        "{}",
        m.log()
    );
    let before = proxy.accepted();
    proxy.cut_all();
    let mut run = run;
    assert!(
        run.exits_within(Duration::from_secs(5)),
        "still retrying 5 s after the refusal"
    );
    let out = run.wait();
    out.assert_code(4);
    assert!(
        proxy.accepted() - before <= 2,
        "{} reconnect attempts after a refusal",
        proxy.accepted() - before
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(secret), "the password leaked: {text}");
    }
    let error = out.report()["error"].as_str().unwrap().to_string();
    assert!(error.contains("refused"), "{error}");
}

/// A broker that never comes back: a run with a total and no duration must still end, once
/// the connection has been down for --reconnect-timeout, and say so.
#[test]
fn a_broker_that_never_returns_ends_the_run_after_the_reconnect_timeout() {
    let mut m = Mosquitto::start();
    let mut run = spawn(
        &[
            "--broker",
            &m.url(),
            "--qos",
            "1",
            "--batch",
            "1",
            "--rate",
            "1000",
            "--total",
            "100000",
            "--reconnect-backoff",
            "50ms..200ms",
            "--reconnect-timeout",
            "2s",
        ],
        &[],
    );
    assert!(run.wait_for_output("points/s", Duration::from_secs(10)));
    m.kill();
    let ended = run.exits_within(Duration::from_secs(15));
    if !ended {
        run.signal("KILL");
    }
    let out = run.wait();
    assert!(
        ended,
        "still running 15 s after the broker went away for good"
    );
    out.assert_code(1);
    let r = out.report();
    assert_eq!(n(&r["connections"], "down_at_end"), 1);
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("--reconnect-timeout 2s"), "{error}");
    // Every point is in one bucket: acknowledged, failed, unsent or dropped.
    let planned = 100_000;
    assert_eq!(
        n(r, "points_acked")
            + n(r, "points_failed")
            + n(r, "points_unsent")
            + n(r, "points_dropped"),
        planned,
        "{}",
        out.stdout
    );
}

/// QoS 0 through a cut: the connection comes back and the run completes; what was in the
/// cut connection's buffers may be gone (QoS 0 promises no more), the rest arrives.
#[test]
fn a_qos0_run_reconnects_after_a_cut_and_completes() {
    let m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let sub = Subscriber::start(m.port, TOPIC);
    let total = 20_000u64;
    let run = spawn(
        &[
            "--broker",
            &proxy.url(),
            "--qos",
            "0",
            "--batch",
            "1",
            "--rate",
            "5000",
            "--total",
            "20000",
            "--reconnect-backoff",
            "50ms..200ms",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(5_000, Duration::from_secs(10)),
        "the run started"
    );
    proxy.cut_all();
    let out = run.wait();
    let got = sub.finish(total, Duration::from_secs(3));
    out.assert_code(0);
    let r = out.report();
    assert!(n(r, "reconnects") >= 1, "{}", faults(r));
    assert_eq!(n(r, "points_sent"), total);
    let (missing, _, outside) = got.delivery(DEVICE, total);
    assert_eq!(outside, 0);
    assert!(
        missing < total / 10,
        "{missing} of {total} missing after one cut"
    );
}
