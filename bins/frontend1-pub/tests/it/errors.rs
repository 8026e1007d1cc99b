//! Bad input and unreachable or refusing brokers: one line, the documented exit code, no panic.

use std::net::TcpListener;
use std::time::Duration;

use test_support::{free_port, mosquitto_password_file, Mosquitto, TempDir};

use crate::common::{n, publish, publish_env};

/// Asserts exit `code` and a single `error:` line on stderr that contains `needle`.
fn assert_one_line_error(args: &[&str], code: i32, needle: &str) -> String {
    let out = publish(args);
    out.assert_code(code);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{}", out.stderr);
    assert!(lines[0].starts_with("error: "), "{}", lines[0]);
    assert!(lines[0].contains(needle), "'{}' lacks '{needle}'", lines[0]);
    lines[0].to_string()
}

#[test]
fn qos_3_is_a_usage_error() {
    assert_one_line_error(&["--qos", "3"], 2, "--qos");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    assert_one_line_error(&["--ratez", "5"], 2, "--ratez");
}

#[test]
fn malformed_values_are_usage_errors() {
    assert_one_line_error(&["--rate", "fast"], 2, "--rate");
    assert_one_line_error(&["--batch", "0"], 2, "--batch");
    assert_one_line_error(&["--duration", "soon"], 2, "--duration");
    assert_one_line_error(&["--broker", "http://localhost:1883"], 2, "--broker");
    assert_one_line_error(&["--max-inflight", "70000"], 2, "--max-inflight");
}

/// Values that parse but would overflow later: refused up front, never a panic.
#[test]
fn out_of_range_values_are_usage_errors_not_panics() {
    assert_one_line_error(&["--duration", "1e20"], 2, "--duration");
    assert_one_line_error(&["--drain-timeout", "400d"], 2, "--drain-timeout");
    assert_one_line_error(&["--batch", "100000000000000000"], 2, "--batch");
    assert_one_line_error(&["--broker", ""], 2, "--broker is empty");
}

#[test]
fn an_unwritable_report_path_is_refused_before_the_run() {
    // Not through `publish`, which gives its own --report-json.
    let out = std::process::Command::new(crate::common::BIN)
        .args([
            "--report-json",
            "/no/such/dir/report.json",
            "--broker",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--report-json") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn unknown_host_is_unreachable() {
    let out = publish(&[
        "--broker",
        "mqtt://no-such-host.invalid:1883",
        "--connect-timeout",
        "3s",
    ]);
    out.assert_code(3);
    assert!(out.stderr.contains("cannot reach broker"), "{}", out.stderr);
    assert!(out.wall < Duration::from_secs(5), "took {:?}", out.wall);
}

#[test]
fn a_server_that_is_not_mqtt_is_unreachable() {
    // Answers CONNECT with an HTTP response.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("mqtt://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let out = publish(&["--broker", &url, "--connect-timeout", "2s"]);
    out.assert_code(3);
    assert!(out.stderr.contains("MQTT broker"), "{}", out.stderr);
    server.join().unwrap();
}

/// `frontend1-pub | head -1`: a closed stdout loses the summary, not the run.
#[test]
fn a_closed_stdout_does_not_panic() {
    use std::process::{Command, Stdio};
    let m = Mosquitto::start();
    let mut child = Command::new(crate::common::BIN)
        .args([
            "--broker",
            &m.url(),
            "--rate",
            "0",
            "--total",
            "10000",
            "--batch",
            "10",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn batch_larger_than_the_packet_limit_is_a_usage_error() {
    let line = assert_one_line_error(
        &["--batch", "1000", "--max-packet-size", "10k"],
        2,
        "--max-packet-size",
    );
    assert!(line.contains("--batch"), "{line}");
}

#[test]
fn wildcard_topic_is_a_usage_error() {
    assert_one_line_error(&["--topic", "device_data/#"], 2, "wildcard");
    assert_one_line_error(&["--topic", "a/+/b"], 2, "wildcard");
}

/// A broker closes the connection of a client that publishes what MQTT forbids in a topic:
/// refused before connecting, naming the flag and the character, never blamed on a packet
/// size or a lost connection.
#[test]
fn a_control_character_or_a_dollar_topic_is_a_usage_error_naming_the_flag() {
    let line = assert_one_line_error(&["--topic", "device_data/\u{1}x"], 2, "--topic");
    assert!(line.contains("control character \\x01 (U+0001)"), "{line}");
    assert!(!line.contains("--batch"), "{line}");
    let line = assert_one_line_error(&["--topic", "$SYS/broker/x"], 2, "--topic");
    assert!(line.contains("starts with '$'"), "{line}");
    let line = assert_one_line_error(
        &["--topic", "d/{device_id}", "--device-id", "dev\u{1b}ice"],
        2,
        "--device-id",
    );
    assert!(line.contains("\\x1b (U+001B)"), "{line}");
}

#[test]
fn refused_tcp_connection_is_unreachable() {
    let url = format!("mqtt://127.0.0.1:{}", free_port());
    let out = publish(&["--broker", &url, "--connect-timeout", "2s"]);
    out.assert_code(3);
    assert!(out.stderr.contains("cannot reach broker"), "{}", out.stderr);
    assert!(out.wall < Duration::from_secs(3), "took {:?}", out.wall);
}

#[test]
fn silent_broker_fails_within_the_connect_timeout() {
    // Accepts TCP connections but never answers CONNECT.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("mqtt://{}", listener.local_addr().unwrap());
    let out = publish(&["--broker", &url, "--connect-timeout", "1s"]);
    out.assert_code(3);
    assert!(
        out.stderr.contains("no CONNACK within 1s"),
        "{}",
        out.stderr
    );
    assert!(out.wall < Duration::from_secs(3), "took {:?}", out.wall);
    drop(listener);
}

#[test]
fn wrong_password_is_refused_and_right_password_works_without_leaking() {
    let dir = TempDir::new("auth");
    let secret = "s3cr3t-Pa55";
    let pw = mosquitto_password_file(&dir, "loader", secret);
    let m = Mosquitto::start_with(&[
        "allow_anonymous false".into(),
        format!("password_file {}", pw.display()),
    ]);

    let wrong = publish_env(
        &[
            "--broker",
            &m.url(),
            "--username",
            "loader",
            "--total",
            "1000",
        ],
        &[("LOADGEN_PASSWORD", "wrong")],
    );
    wrong.assert_code(4);
    assert!(
        wrong.stderr.contains("refused the connection"),
        "{}",
        wrong.stderr
    );

    let file = dir.path("pw.txt");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let right = publish(&[
        "--broker",
        &m.url(),
        "--username",
        "loader",
        "--password-file",
        file.to_str().unwrap(),
        "--total",
        "1000",
        "--rate",
        "0",
    ]);
    right.assert_code(0);
    assert_eq!(n(right.report(), "points_sent"), 1000);
    for text in [&right.stdout, &right.stderr, &right.report().to_string()] {
        assert!(!text.contains(secret), "password leaked: {text}");
    }
}

#[test]
fn password_without_user_is_a_usage_error() {
    let out = publish_env(&["--total", "1"], &[("LOADGEN_PASSWORD", "x")]);
    out.assert_code(2);
    assert!(out.stderr.contains("--username"), "{}", out.stderr);
}

#[test]
fn credentials_in_the_broker_url_are_a_usage_error_that_hides_the_password() {
    let line = assert_one_line_error(
        &["--broker", "mqtt://u:secretpw@127.0.0.1:1883"],
        2,
        "--username",
    );
    assert!(!line.contains("secretpw"), "{line}");
    assert!(
        line.contains("LOADGEN_PASSWORD") && line.contains("--password-file"),
        "{line}"
    );
}

#[test]
fn broker_addresses_with_stray_colons_are_usage_errors_and_ipv6_brokers_are_reached() {
    assert_one_line_error(
        &["--broker", "mqtt://127.0.0.1:18950:1"],
        2,
        "write an IPv6 address in brackets",
    );
    // That a bare IPv6 address is a host on the default port (`::1` is [::1]:1883) is
    // parse_broker's unit test: a run would connect to 1883, where a real broker may listen.
    // Here an IPv6 broker is reached, on a port of ::1 that nothing listens on.
    let port = TcpListener::bind(("::1", 0))
        .expect("IPv6 loopback")
        .local_addr()
        .unwrap()
        .port();
    let broker = format!("[::1]:{port}");
    let line = assert_one_line_error(
        &["--broker", &broker, "--connect-timeout", "1s"],
        3,
        &broker,
    );
    assert!(line.contains("connection refused"), "{line}");
}

#[test]
fn counts_and_rates_beyond_the_largest_are_refused_not_clamped() {
    assert_one_line_error(&["--total", "18446744073709551616"], 2, "--total");
    assert_one_line_error(&["--rate", "18446744073709551616"], 2, "--rate");
}

#[test]
fn a_slow_rate_prints_as_itself_not_zero() {
    let m = Mosquitto::start();
    let out = publish(&[
        "--broker",
        &m.url(),
        "--rate",
        "0.5",
        "--batch",
        "1",
        "--total",
        "1",
        "--quiet",
    ]);
    out.assert_code(0);
    assert!(out.stdout.contains("0.50 points/s"), "{}", out.stdout);
}

#[test]
fn endless_config_and_password_files_are_usage_errors_not_hangs() {
    let line = assert_one_line_error(&["--config", "/dev/zero"], 2, "larger than");
    assert!(line.contains("/dev/zero"), "{line}");
    let line = assert_one_line_error(
        &["--username", "u", "--password-file", "/dev/zero"],
        2,
        "--password-file",
    );
    assert!(line.contains("larger than"), "{line}");
}

/// A report path that cannot be written (even by root: sysfs refuses new files) is found
/// before the run, not after it.
#[test]
fn an_unwritable_report_path_is_found_before_connecting() {
    let out = std::process::Command::new(crate::common::BIN)
        .args([
            "--report-json",
            "/sys/loadgen-report.json",
            "--broker",
            "127.0.0.1:1",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot be written"), "{stderr}");
}

#[test]
fn an_empty_password_is_refused_not_sent() {
    let out = publish_env(&["--username", "u"], &[("LOADGEN_PASSWORD", "")]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("LOADGEN_PASSWORD is set but empty"),
        "{}",
        out.stderr
    );
    let dir = TempDir::new("emptypw");
    let file = dir.path("pw");
    std::fs::write(&file, "\nsecond line\n").unwrap();
    let line = assert_one_line_error(
        &["--username", "u", "--password-file", file.to_str().unwrap()],
        2,
        "first line is empty",
    );
    assert!(!line.contains("second line"), "{line}");
}

#[test]
fn a_bad_environment_value_names_the_variable_not_the_flag() {
    let out = publish_env(&[], &[("LOADGEN_RATE", "fast")]);
    out.assert_code(2);
    assert!(out.stderr.contains("LOADGEN_RATE"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[test]
fn config_file_mistakes_say_what_to_change() {
    let dir = TempDir::new("cfg");
    let array = dir.path("array.toml");
    std::fs::write(&array, "rate = [\"10k\", \"20k\"]\n").unwrap();
    assert_one_line_error(
        &["--config", array.to_str().unwrap()],
        2,
        "takes one value, not an array",
    );
    let nul = dir.path("nul.toml");
    std::fs::write(&nul, "client-id = \"a\\u0000b\"\n").unwrap();
    assert_one_line_error(
        &["--config", nul.to_str().unwrap()],
        2,
        "--client-id contains a NUL",
    );
    let unknown = dir.path("unknown.toml");
    std::fs::write(&unknown, "ratee = 5\n").unwrap();
    let line = assert_one_line_error(
        &["--config", unknown.to_str().unwrap()],
        2,
        "unknown key 'ratee'",
    );
    assert!(
        line.contains("did you mean 'rate'?") && line.contains("frontend1-pub"),
        "{line}"
    );
}

#[test]
fn an_oversized_device_id_is_named_as_such() {
    let id = "d".repeat(100_000);
    assert_one_line_error(&["--device-id", &id], 2, "--device-id is 100000 bytes");
}

#[test]
fn credentials_in_the_auto_probe_variable_are_refused_and_hidden() {
    let out = publish_env(&[], &[("LOADGEN_AUTO_BROKER", "u:secretpw@127.0.0.1:1883")]);
    out.assert_code(2);
    assert!(!out.stderr.contains("secretpw"), "{}", out.stderr);
    assert!(out.stderr.contains("LOADGEN_AUTO_BROKER"), "{}", out.stderr);
}

#[test]
fn a_value_refused_by_the_plan_names_the_variable_or_file_it_came_from() {
    let out = publish_env(&[], &[("LOADGEN_DURATION", "0s")]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("(from LOADGEN_DURATION)"),
        "{}",
        out.stderr
    );
    let dir = TempDir::new("plansrc");
    let cfg = dir.path("p.toml");
    std::fs::write(&cfg, "broker = \"mqtt://h:1:2\"\n").unwrap();
    let line = assert_one_line_error(&["--config", cfg.to_str().unwrap()], 2, "--broker");
    assert!(line.contains("(from config file"), "{line}");
}
