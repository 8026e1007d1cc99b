//! How the backend stops, and bad input: each ends with the exit code and the one line
//! that says what happened.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::fake::{Behaviour, FakeBroker};
use test_support::{Mosquitto, TempDir};

use crate::common::{run_to_end, start, BIN};

fn assert_usage_error(args: &[&str], needle: &str) -> String {
    let (code, _, stderr) = run_to_end(args);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(needle), "'{needle}' not in: {stderr}");
    stderr
}

#[test]
fn invalid_topic_filters_are_usage_errors_naming_the_rule() {
    for (filter, rule) in [
        ("a/#/b", "'#' must be a whole level and the last one"),
        ("a#", "'#' must be a whole level and the last one"),
        ("a+/b", "'+' must be a whole level"),
    ] {
        assert_usage_error(&["--broker", "127.0.0.1:1", "--topic", filter], rule);
    }
    let dir = TempDir::new("filters");
    let cfg = dir.path("b.toml");
    std::fs::write(&cfg, "topic = [\"device_data/#\", \"x/+y\"]\n").unwrap();
    assert_usage_error(
        &["--broker", "127.0.0.1:1", "--config", cfg.to_str().unwrap()],
        "'+' must be a whole level",
    );
}

#[test]
fn degenerate_stops_are_refused() {
    assert_usage_error(&["--duration", "0s"], "--duration must be longer than 0s");
}

#[test]
fn a_config_key_of_the_publisher_is_refused_with_the_backends_own_keys() {
    let dir = TempDir::new("bkeys");
    let cfg = dir.path("b.toml");
    std::fs::write(&cfg, "batch = 1000\n").unwrap();
    let line = assert_usage_error(&["--config", cfg.to_str().unwrap()], "unknown key 'batch'");
    assert!(
        line.contains("backend-sub") && line.contains("idle-timeout"),
        "{line}"
    );
    assert!(!line.contains("such as rate"), "{line}");
}

#[test]
fn expect_zero_says_that_nothing_was_checked() {
    let m = Mosquitto::start();
    let out = start(&["--broker", &m.url(), "--expect", "0"]).wait();
    out.assert_code(0);
    assert!(out.stdout.contains("nothing was checked"), "{}", out.stdout);
    // The run ends at its SUBACK, which is still timed.
    assert_eq!(
        out.report["suback_latency_us"]["count"], 1,
        "{:#}",
        out.report
    );
    assert!(
        !out.stdout.contains("every point arrived"),
        "{}",
        out.stdout
    );
}

#[test]
fn no_first_message_is_reported_as_the_first_message_timeout() {
    let m = Mosquitto::start();
    let out = start(&["--broker", &m.url(), "--first-message-timeout", "1s"]).wait();
    out.assert_code(5);
    assert_eq!(out.report["stopped_by"], "first-message-timeout");
    assert!(
        out.stderr.contains("--first-message-timeout"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_broker_that_never_confirms_the_subscription_says_so() {
    let fake = FakeBroker::start(Behaviour::NoSuback);
    let started = Instant::now();
    let (code, stdout, stderr) = run_to_end(&["--broker", &fake.url(), "--connect-timeout", "1s"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("no SUBACK within 1s"), "{stderr}");
    assert!(!stderr.contains("no message arrived"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

/// SIGTERM while the broker has not answered CONNECT: 143 at once, with a summary.
#[test]
fn sigterm_while_connecting_exits_143_at_once() {
    let fake = FakeBroker::start(Behaviour::Silent);
    let mut child = Command::new(BIN)
        .args(["--broker", &fake.url(), "--connect-timeout", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        fake.wait_accepted(1, Duration::from_secs(10)),
        "it connects"
    );
    let sent = Instant::now();
    signal(child.id(), "TERM");
    while sent.elapsed() < Duration::from_secs(3) {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !matches!(child.try_wait(), Ok(Some(_))) {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "SIGTERM while connecting was ignored"
    );
    assert_eq!(out.status.code(), Some(143), "{stdout}");
    assert!(stdout.contains("nothing was received"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("flushing"), "{stderr}");
}

/// A SUBACK with more return codes than filters (one a failure) is a refusal, not a panic.
#[test]
fn a_suback_with_too_many_codes_is_a_refusal_not_a_panic() {
    let fake = FakeBroker::start(Behaviour::ExtraSubackCode);
    let (code, stdout, stderr) = run_to_end(&["--broker", &fake.url(), "--connect-timeout", "2s"]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("refused the subscription"), "{stderr}");
}

/// A value that fails validation names the variable or file it came from.
#[test]
fn a_bad_value_from_the_environment_or_a_file_names_its_source() {
    let out = Command::new(BIN)
        .args(["--broker", "127.0.0.1:1", "--idle-timeout", "0s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        !stderr.contains("(from"),
        "the command line is not annotated: {stderr}"
    );
    let dir = TempDir::new("srcs");
    let cfg = dir.path("b.toml");
    std::fs::write(&cfg, "duration = \"0s\"\n").unwrap();
    let line = assert_usage_error(
        &["--config", cfg.to_str().unwrap()],
        "--duration must be longer than 0s",
    );
    assert!(line.contains("from config file"), "{line}");
}

/// At QoS 0 a subscriber writes nothing but its PINGREQs, and a stream that never pauses
/// must not crowd them out: a strict broker closes a client silent for 1.5 keep-alives.
/// (Mosquitto lets a client it is sending to stay, so a scripted broker plays the strict one.)
#[test]
fn a_qos0_flood_longer_than_the_keep_alive_keeps_the_connection() {
    let fake = FakeBroker::start(Behaviour::Flood);
    let out = start(&[
        "--broker",
        &fake.url(),
        "--qos",
        "0",
        "--keep-alive",
        "1s",
        "--read-hold",
        "0s",
        "--idle-timeout",
        "1s",
    ])
    .wait();
    assert_eq!(
        out.report["stopped_by"], "idle",
        "{}\n{}",
        out.stdout, out.stderr
    );
    out.assert_code(0);
    let elapsed = out.report["elapsed_s"].as_f64().unwrap();
    assert!(elapsed > 2.0, "the flood lasted only {elapsed} s");
}
