//! TLS (`mqtts://`) against a Mosquitto TLS listener whose certificates the test makes:
//! delivery through it, a CA that does not match, client-certificate authentication, and
//! `--insecure`.

use test_support::{free_port, Mosquitto, Subscriber, TempDir, TlsFiles};

use crate::common::{n, publish, DEVICE, TOPIC};

/// A broker with its plain listener (for the test's subscriber) and a TLS one.
fn tls_broker(files: &TlsFiles, require_client: bool) -> (Mosquitto, u16) {
    let port = free_port();
    let m = Mosquitto::start_with(&files.listener(port, require_client));
    assert!(test_support::wait_for_listener(
        port,
        std::time::Duration::from_secs(5)
    ));
    (m, port)
}

#[test]
fn points_published_over_tls_arrive_exactly_once() {
    let dir = TempDir::new("tls");
    let files = TlsFiles::new(&dir);
    let (m, port) = tls_broker(&files, false);
    let sub = Subscriber::start(m.port, TOPIC);
    let url = format!("mqtts://127.0.0.1:{port}");
    let out = publish(&[
        "--broker",
        &url,
        "--ca-file",
        files.ca.to_str().unwrap(),
        "--qos",
        "1",
        "--batch",
        "1",
        "--rate",
        "0",
        "--total",
        "20000",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_eq!(r["broker"], url);
    assert_eq!(n(r, "points_acked"), 20_000);
    sub.finish(20_000, std::time::Duration::from_secs(5))
        .assert_exactly_once(DEVICE, 20_000);
}

#[test]
fn a_broker_certificate_from_another_ca_is_exit_3_with_a_one_line_reason() {
    let dir = TempDir::new("tlsca");
    let files = TlsFiles::new(&dir);
    let (_m, port) = tls_broker(&files, false);
    let out = publish(&[
        "--broker",
        &format!("mqtts://127.0.0.1:{port}"),
        "--ca-file",
        files.other_ca.to_str().unwrap(),
        "--total",
        "10",
        "--quiet",
    ]);
    out.assert_code(3);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].contains("TLS handshake failed"), "{}", lines[0]);
    assert!(
        lines[0].to_lowercase().contains("certificate"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_broker_that_asks_for_a_client_certificate_takes_ours() {
    let dir = TempDir::new("tlscert");
    let files = TlsFiles::new(&dir);
    let (m, port) = tls_broker(&files, true);
    let sub = Subscriber::start(m.port, TOPIC);
    let url = format!("mqtts://127.0.0.1:{port}");
    let ca = files.ca.to_str().unwrap();
    // Without one the broker ends the handshake.
    let refused = publish(&[
        "--broker",
        &url,
        "--ca-file",
        ca,
        "--total",
        "10",
        "--quiet",
    ]);
    assert_eq!(refused.code, 3, "{}", refused.stderr);
    let out = publish(&[
        "--broker",
        &url,
        "--ca-file",
        ca,
        "--cert",
        files.client_cert.to_str().unwrap(),
        "--key",
        files.client_key.to_str().unwrap(),
        "--qos",
        "1",
        "--rate",
        "0",
        "--total",
        "5000",
        "--batch",
        "1",
        "--quiet",
    ]);
    out.assert_code(0);
    sub.finish(5_000, std::time::Duration::from_secs(5))
        .assert_exactly_once(DEVICE, 5_000);
}

#[test]
fn insecure_skips_verification_and_says_so_loudly() {
    let dir = TempDir::new("tlsins");
    let files = TlsFiles::new(&dir);
    let (_m, port) = tls_broker(&files, false);
    let out = publish(&[
        "--broker",
        &format!("mqtts://127.0.0.1:{port}"),
        "--insecure",
        "--total",
        "100",
        "--rate",
        "0",
        "--quiet",
    ]);
    out.assert_code(0);
    assert!(out.stderr.contains("warning: --insecure"), "{}", out.stderr);
    // TLS flags on a plain broker are a usage error.
    let plain = publish(&[
        "--broker",
        "mqtt://127.0.0.1:1",
        "--ca-file",
        "x",
        "--total",
        "1",
    ]);
    plain.assert_code(2);
    assert!(plain.stderr.contains("mqtts://"), "{}", plain.stderr);
}

/// QoS 0 over TLS as fast as the broker takes it: the end of the run waits until rustls's
/// last records (and close_notify) left, so the tail is not cut off by our FIN.
#[test]
fn a_qos0_flood_over_tls_arrives_whole_to_its_last_point() {
    let dir = TempDir::new("tlsflood");
    let files = TlsFiles::new(&dir);
    let (m, port) = tls_broker(&files, false);
    let sub = Subscriber::start(m.port, TOPIC);
    let out = publish(&[
        "--broker",
        &format!("mqtts://127.0.0.1:{port}"),
        "--ca-file",
        files.ca.to_str().unwrap(),
        "--qos",
        "0",
        "--batch",
        "1000",
        "--rate",
        "max",
        "--total",
        "300000",
        "--quiet",
    ]);
    out.assert_code(0);
    sub.finish(300_000, std::time::Duration::from_secs(5))
        .assert_exactly_once(DEVICE, 300_000);
}
