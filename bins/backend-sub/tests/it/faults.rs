//! backend-sub through faults: it reconnects, subscribes again, and its counts go on, so
//! that the run's verdict covers the whole stream.

use std::process::Command;
use std::time::Duration;

use test_support::proxy::Proxy;
use test_support::{workspace_bin, Mosquitto, Subscriber};

use crate::common::{n, run_to_end, start, validate};

fn publisher(url: &str, total: &str) -> std::process::Child {
    Command::new(workspace_bin("frontend1-pub"))
        .args([
            "--broker", url, "--qos", "1", "--batch", "1", "--rate", "5000",
        ])
        .args([
            "--total",
            total,
            "--reconnect-backoff",
            "50ms..500ms",
            "--quiet",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn publisher")
}

/// Its own connection cut by a proxy and refused for a second: with a persistent session
/// the broker keeps what arrives meanwhile, and after the reconnect every point is there.
#[test]
fn a_backend_cut_off_for_a_while_reconnects_to_its_session_and_misses_nothing() {
    let m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let sub = Subscriber::start(m.port, "device_data/#");
    let mut backend = start(&[
        "--broker",
        &proxy.url(),
        "--clean-session",
        "false",
        "--expect",
        "15000",
        "--idle-timeout",
        "10s",
        "--reconnect-backoff",
        "50ms..200ms",
        "--at-least-once",
    ]);
    let mut p = publisher(&m.url(), "15000");
    wait_points(&sub, 2_000);
    proxy.set_accepting(false);
    proxy.cut_all();
    std::thread::sleep(Duration::from_millis(1000)); // the outage itself
    proxy.set_accepting(true);
    assert!(backend.wait_for_line("subscribed again", Duration::from_secs(10)));
    assert!(p.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    assert_eq!(n(r, "points_unique"), 15_000);
    assert_eq!(n(r, "points_missing"), 0);
    assert!(
        n(r, "reconnects") >= 1 && n(r, "connections_lost") >= 1,
        "{r:#}"
    );
    assert!(r["disconnected_s"].as_f64().unwrap() >= 0.9, "{r:#}");
    assert!(out.stdout.contains("faults"), "{}", out.stdout);
    // The broker kept the session and queued for it: the outage excuses nothing.
    assert!(
        r["outages"]
            .as_array()
            .is_some_and(|o| !o.is_empty() && o.iter().all(|o| o["session_kept"] == true)),
        "{r:#}"
    );
    assert_eq!(n(r, "points_missed_disconnected"), 0);
    // Every connect that got through (the first and each reconnect) in the connect
    // phases, every subscription in the SUBACK latency; a plain connection has no TLS.
    let connects = 1 + n(r, "reconnects");
    let phases = &r["connect_phases_us"];
    assert_eq!(n(&phases["tcp_connect_us"], "count"), connects, "{r:#}");
    assert_eq!(n(&phases["connack_us"], "count"), connects);
    assert!(phases["tls_handshake_us"].is_null());
    assert_eq!(n(&r["suback_latency_us"], "count"), connects);
    assert!(out.stdout.contains("connect->connack"), "{}", out.stdout);
    assert!(out.stdout.contains("subscribe->suback"), "{}", out.stdout);
}

/// Fault 1 with both sides reconnecting: the broker is killed and started again; the
/// backend reconnects and subscribes again before the publisher is let back in (the proxy
/// in front of the publisher holds it off), and the backend proves every point arrived.
#[test]
fn publisher_and_backend_both_come_back_after_a_broker_restart() {
    let mut m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let sub = Subscriber::start(m.port, "device_data/#");
    let mut backend = start(&[
        "--broker",
        &m.url(),
        "--expect",
        "20000",
        "--idle-timeout",
        "10s",
        "--reconnect-backoff",
        "50ms..200ms",
        "--at-least-once",
    ]);
    let dir = test_support::TempDir::new("both");
    let pub_report = dir.path("pub.json");
    let mut p = Command::new(workspace_bin("frontend1-pub"))
        .args([
            "--broker",
            &proxy.url(),
            "--qos",
            "1",
            "--batch",
            "1",
            "--rate",
            "5000",
        ])
        .args(["--total", "20000", "--clean-session", "false"])
        .args([
            "--reconnect-backoff",
            "50ms..500ms",
            "--quiet",
            "--report-json",
        ])
        .arg(&pub_report)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn publisher");
    wait_points(&sub, 3_000);
    hold_back_then_cut(&proxy, &sub);
    m.kill();
    std::thread::sleep(Duration::from_millis(500)); // the outage itself
    m.restart();
    assert!(backend.wait_for_line("subscribed again", Duration::from_secs(10)));
    proxy.set_accepting(true);
    assert!(p.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    let pr: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&pub_report).unwrap()).unwrap();
    assert_eq!((n(r, "points_unique"), n(r, "points_missing")), (20_000, 0));
    assert_eq!(n(&pr, "points_acked"), 20_000);
    assert!(n(r, "reconnects") >= 1, "{r:#}");
    // What the backend saw twice, the publisher resent (one point a message).
    assert!(
        n(r, "points_duplicate") <= n(&pr, "messages_resent"),
        "{r:#}"
    );
    eprintln!(
        "fault 1, both sides: publisher acked {} reconnects {} resent {} disconnected {} s; \
         backend-sub unique {} missing {} duplicates {} reconnects {} disconnected {} s",
        pr["points_acked"],
        pr["reconnects"],
        pr["messages_resent"],
        pr["disconnected_s"],
        r["points_unique"],
        r["points_missing"],
        r["points_duplicate"],
        r["reconnects"],
        r["disconnected_s"]
    );
}

/// With --reconnect false a lost connection ends the run, as it always did (exit 1).
#[test]
fn without_reconnect_a_lost_connection_ends_the_backend() {
    let m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let backend = start(&["--broker", &proxy.url(), "--reconnect", "false"]);
    proxy.cut_all();
    let out = backend.wait();
    out.assert_code(1);
    assert!(
        out.stderr.contains("connection to the broker lost"),
        "{}",
        out.stderr
    );
}

/// Fault 6 under MQTT 3.1.1: Mosquitto's `message_size_limit` drops a larger message and
/// still acknowledges it, so the publisher can only report it acknowledged; the backend is
/// what shows the loss. (MQTT 5 reason codes would let the publisher count it rejected.)
#[test]
fn an_oversized_message_acked_and_dropped_by_the_broker_shows_as_missing_at_the_backend() {
    // With max_queued_messages 0 (the project's config), Mosquitto 2.0.11 drops the
    // connection of a client whose message it dropped for its size ("Bad socket
    // read/write"); its default queue limit does not.
    let m = Mosquitto::start_with(&[
        "message_size_limit 2000".into(),
        "max_queued_messages 1000".into(),
    ]);
    let backend = start(&[
        "--broker",
        &m.url(),
        "--idle-timeout",
        "2s",
        "--first-message-timeout",
        "5s",
    ]);
    // Single points (about 150 bytes) pass, 100-point batches (about 14 KB) do not.
    let small = Command::new(workspace_bin("frontend1-pub"))
        .args([
            "--broker",
            &m.url(),
            "--qos",
            "1",
            "--batch",
            "1",
            "--rate",
            "0",
        ])
        .args(["--total", "100", "--device-id", "small", "--quiet"])
        .output()
        .unwrap();
    assert!(small.status.success());
    let dir = test_support::TempDir::new("oversized");
    let report = dir.path("pub.json");
    let large = Command::new(workspace_bin("frontend1-pub"))
        .args([
            "--broker",
            &m.url(),
            "--qos",
            "1",
            "--batch",
            "100",
            "--rate",
            "0",
        ])
        .args(["--total", "1000", "--device-id", "large", "--quiet"])
        .arg("--report-json")
        .arg(&report)
        .output()
        .unwrap();
    // The broker acknowledged all ten messages: the publisher cannot know better.
    assert!(
        large.status.success(),
        "{}{}",
        String::from_utf8_lossy(&large.stdout),
        String::from_utf8_lossy(&large.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(n(&r, "points_acked"), 1000);
    let out = backend.wait();
    let b = &out.report;
    assert_eq!(
        n(b, "points_unique"),
        100,
        "only the small device's points arrived"
    );
    assert!(
        out.report["devices"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["device_id"] != "large"),
        "{b:#}"
    );
}

/// Back from a broker restart before the publisher is: the backend with its default idle
/// timeout (3 s) must wait for the publisher, not stop as idle.
#[test]
fn a_backend_back_before_the_publisher_waits_for_it_instead_of_idling_out() {
    let mut m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let sub = Subscriber::start(m.port, "device_data/#");
    let mut backend = start(&[
        "--broker",
        &m.url(),
        "--expect",
        "10000",
        "--reconnect-backoff",
        "50ms..200ms",
        "--at-least-once",
    ]);
    let mut p = publisher(&proxy.url(), "10000");
    wait_points(&sub, 1_000);
    hold_back_then_cut(&proxy, &sub);
    m.kill();
    std::thread::sleep(Duration::from_millis(300)); // the outage itself
    m.restart();
    assert!(backend.wait_for_line("subscribed again", Duration::from_secs(10)));
    // The publisher stays away longer than the idle timeout (the scenario's own time).
    std::thread::sleep(Duration::from_millis(4000));
    assert!(
        !backend.exited(),
        "the backend stopped while the publisher was still away"
    );
    proxy.set_accepting(true);
    assert!(p.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    assert_eq!(n(&out.report, "points_unique"), 10_000);
}

/// A reconnect refused for bad credentials (the password changed meanwhile) ends the
/// backend with exit 4, as it would at the start, not with a retry storm.
#[test]
fn a_backend_reconnect_refused_for_bad_credentials_exits_4() {
    let dir = test_support::TempDir::new("brefuse");
    let pw = test_support::mosquitto_password_file(&dir, "reader", "first-pass");
    let m = Mosquitto::start_with(&[
        "allow_anonymous false".into(),
        format!("password_file {}", pw.display()),
        // Its reload on SIGHUP is logged at this level: what the test waits for.
        "log_type error".into(),
        "log_type warning".into(),
        "log_type information".into(),
    ]);
    let proxy = Proxy::start(m.port);
    let secret = dir.path("secret");
    std::fs::write(&secret, "first-pass").unwrap();
    let backend = start(&[
        "--broker",
        &proxy.url(),
        "--username",
        "reader",
        "--password-file",
        secret.to_str().unwrap(),
        "--reconnect-backoff",
        "50ms..100ms",
    ]);
    test_support::mosquitto_password_file(&dir, "reader", "second-pass");
    m.signal("HUP");
    assert!(
        m.wait_for_log("Reloading config", Duration::from_secs(10)),
        "{}",
        m.log()
    );
    let before = proxy.accepted();
    proxy.cut_all();
    let out = backend.wait();
    out.assert_code(4);
    assert!(
        proxy.accepted() - before <= 2,
        "{} attempts",
        proxy.accepted() - before
    );
    assert!(!out.stderr.contains("first-pass") && !out.stdout.contains("first-pass"));
}

/// frontend1-pub, QoS 1, one point a message at `rate`, `total` points.
fn paced_publisher(url: &str, total: u64, rate: u64) -> std::process::Child {
    Command::new(workspace_bin("frontend1-pub"))
        .args(["--broker", url, "--qos", "1", "--batch", "1", "--quiet"])
        .args(["--rate", &rate.to_string(), "--total", &total.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn publisher")
}

/// Waits until the independent subscriber holds at least `points`: the stream is under
/// way, what a test waits for before a fault.
fn wait_points(sub: &Subscriber, points: u64) {
    assert!(
        sub.wait_points(points, Duration::from_secs(30)),
        "the stream never reached {points} points"
    );
}

/// Holds the publisher (behind `proxy`) back and cuts it once the broker has handed on
/// all it took: a broker killed with acknowledged points in its queues loses them, which
/// is the broker's loss (an acknowledgement proves receipt, not delivery), not a test of
/// the backend.
fn hold_back_then_cut(proxy: &Proxy, sub: &Subscriber) {
    proxy.set_accepting(false);
    proxy.set_stalled(true);
    assert!(sub.wait_quiet(Duration::from_millis(300), Duration::from_secs(10)));
    proxy.cut_all();
    proxy.set_stalled(false);
}

/// backend-sub's own outage (a clean session: the broker keeps nothing for it meanwhile)
/// in the middle of a stream that an independent subscriber receives whole. What it
/// missed is told from what was lost while it was connected (nothing here): counted and
/// listed apart, named in the verdict, which fails (exit 5) unless --accept-disconnected.
#[test]
fn points_due_while_the_backend_was_away_are_told_from_points_lost_while_connected() {
    let m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let witness = Subscriber::start(m.port, "device_data/#");
    let total: u64 = 12_000;
    let args = |accept: bool| {
        let mut a = vec![
            "--broker".to_string(),
            proxy.url(),
            "--expect".into(),
            total.to_string(),
            "--idle-timeout".into(),
            "2s".into(),
        ];
        if accept {
            a.push("--accept-disconnected".into());
        }
        a
    };
    let strict_args = args(false);
    let lenient_args = args(true);
    let mut strict = start(&strict_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut lenient = start(&lenient_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut p = paced_publisher(&m.url(), total, 2000);
    wait_points(&witness, 2000);
    proxy.set_accepting(false);
    proxy.cut_all();
    let at_cut = witness.snapshot().points;
    wait_points(&witness, at_cut + 2000);
    proxy.set_accepting(true);
    for b in [&mut strict, &mut lenient] {
        assert!(b.wait_for_line("subscribed again", Duration::from_secs(10)));
    }
    assert!(p.wait().unwrap().success());
    // Nothing was lost by the broker: the witness, connected throughout, has it all.
    witness
        .finish(total, Duration::from_secs(5))
        .assert_exactly_once("frontend1_ultra_high_perf_device", total);
    for (b, accepted) in [(strict, false), (lenient, true)] {
        let out = b.wait();
        out.assert_code(if accepted { 0 } else { 5 });
        let r = &out.report;
        validate(r);
        let missing = n(r, "points_missing");
        assert!(missing >= 1000, "{r:#}");
        assert_eq!(n(r, "points_unique") + missing, total, "{r:#}");
        assert_eq!(n(r, "points_missed_disconnected"), missing, "{r:#}");
        let d = out.device("frontend1_ultra_high_perf_device");
        assert_eq!(
            d["missed_disconnected_ranges"], d["missing_ranges"],
            "{d:#}"
        );
        let outages = r["outages"].as_array().unwrap();
        assert_eq!(outages.len(), 1, "{r:#}");
        assert!(outages[0]["to"].is_string(), "{r:#}");
        let stdout = &out.stdout;
        assert!(
            stdout.contains("while this backend was disconnected"),
            "{stdout}"
        );
        if accepted {
            assert_eq!(r["verified"], true, "{r:#}");
        } else {
            let verdict = r["reason"].as_str().unwrap();
            assert!(
                verdict.contains(&format!(
                    "{} points were due while this backend was itself disconnected",
                    thousands(missing)
                )),
                "{verdict}"
            );
            assert!(
                !verdict.contains("while this backend was connected"),
                "{verdict}"
            );
        }
    }
}

/// The stream ends while backend-sub is away (the case a default 10 s backoff made common):
/// with --expect, the points that never came after the last one that did are missed while
/// disconnected, not lost.
#[test]
fn a_stream_that_ended_while_the_backend_was_away_is_missed_not_lost() {
    let m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let witness = Subscriber::start(m.port, "device_data/#");
    let total: u64 = 4000;
    let mut backend = start(&[
        "--broker",
        &proxy.url(),
        "--expect",
        &total.to_string(),
        "--idle-timeout",
        "1s",
        "--first-message-timeout",
        "1s",
    ]);
    let mut p = paced_publisher(&m.url(), total, 2000);
    wait_points(&witness, 1000);
    proxy.set_accepting(false);
    proxy.cut_all();
    assert!(p.wait().unwrap().success());
    witness
        .finish(total, Duration::from_secs(5))
        .assert_exactly_once("frontend1_ultra_high_perf_device", total);
    proxy.set_accepting(true);
    assert!(backend.wait_for_line("subscribed again", Duration::from_secs(10)));
    let out = backend.wait();
    out.assert_code(5);
    let r = &out.report;
    validate(r);
    let unique = n(r, "points_unique");
    assert!(unique < total, "{r:#}");
    assert_eq!(n(r, "points_missed_disconnected"), total - unique, "{r:#}");
    let verdict = r["reason"].as_str().unwrap();
    assert!(
        verdict.contains("the stream having ended meanwhile"),
        "{verdict}"
    );
}

/// backend-sub's reconnect backoff is short and capped by default: a clean-session
/// subscriber misses what is published while it is away.
#[test]
fn the_backends_default_reconnect_backoff_is_short() {
    let (code, stdout, _) = run_to_end(&["--help"]);
    assert_eq!(code, 0);
    let line = stdout
        .lines()
        .skip_while(|l| !l.contains("--reconnect-backoff"))
        .take_while(|l| !l.trim_start().starts_with("--reconnect-timeout"))
        .collect::<String>();
    assert!(line.contains("[default: 50ms..1s]"), "{line}");
}

/// 12,345 as the summaries write it.
fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
