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

/// `/dev/zero` (or any endless file) as a certificate or key file: a usage error at once,
/// not gigabytes read.
#[test]
fn an_endless_tls_file_is_refused_at_once() {
    for flags in [
        vec!["--ca-file", "/dev/zero"],
        vec!["--cert", "/dev/zero", "--key", "/dev/zero"],
    ] {
        let started = std::time::Instant::now();
        let mut args = vec!["--broker", "mqtts://127.0.0.1:1", "--total", "1"];
        args.extend(flags.iter().copied());
        let out = publish(&args);
        out.assert_code(2);
        assert!(out.stderr.contains("larger than"), "{}", out.stderr);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{flags:?}"
        );
    }
}

/// An encrypted private key is named as such, with what to do, not "no items found".
#[test]
fn an_encrypted_client_key_says_so_and_how_to_decrypt_it() {
    let dir = TempDir::new("tlsenc");
    let files = TlsFiles::new(&dir);
    let enc = dir.path("enc.key");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(&files.client_key)
        .arg("-out")
        .arg(&enc)
        .status()
        .expect("openssl")
        .success();
    assert!(ok);
    let out = publish(&[
        "--broker",
        "mqtts://127.0.0.1:1",
        "--cert",
        files.client_cert.to_str().unwrap(),
        "--key",
        enc.to_str().unwrap(),
        "--total",
        "1",
    ]);
    out.assert_code(2);
    assert!(
        out.stderr.contains("encrypted private key") && out.stderr.contains("openssl pkey"),
        "{}",
        out.stderr
    );
}

/// A broker certificate from an issuer the client does not trust: the error says to pass
/// the issuer with --ca-file.
#[test]
fn an_unknown_issuer_says_to_pass_its_ca_with_ca_file() {
    let dir = TempDir::new("tlsissuer");
    let files = TlsFiles::new(&dir);
    let (_m, port) = tls_broker(&files, false);
    let out = publish(&[
        "--broker",
        &format!("mqtts://127.0.0.1:{port}"),
        "--ca-file",
        files.other_ca.to_str().unwrap(),
        "--total",
        "1",
        "--quiet",
    ]);
    out.assert_code(3);
    assert!(
        out.stderr.contains("issuer this host does not trust") && out.stderr.contains("--ca-file"),
        "{}",
        out.stderr
    );
}

/// A chain signed with P-521, which ring does not verify: said in words, not as the OID
/// bytes of rustls's debug form.
#[test]
fn a_signature_algorithm_the_client_cannot_verify_is_said_in_words() {
    let dir = TempDir::new("tlsp521");
    let files = TlsFiles::with_ca_curve(&dir, "secp521r1");
    let (_m, port) = tls_broker(&files, false);
    let out = publish(&[
        "--broker",
        &format!("mqtts://127.0.0.1:{port}"),
        "--ca-file",
        files.ca.to_str().unwrap(),
        "--total",
        "1",
        "--quiet",
    ]);
    out.assert_code(3);
    assert!(
        out.stderr.contains("algorithm this client does not verify"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("signature_algorithm_id"),
        "{}",
        out.stderr
    );
}

/// The scheme mixed up: mqtt:// at a TLS listener, mqtts:// at a plain one. Both fail as a
/// closed connection; the error says which scheme the port speaks.
#[test]
fn a_scheme_mixed_up_with_the_port_says_which_scheme_to_use() {
    let dir = TempDir::new("tlsmix");
    let files = TlsFiles::new(&dir);
    let (m, port) = tls_broker(&files, false);
    let out = publish(&[
        "--broker",
        &format!("mqtt://127.0.0.1:{port}"),
        "--total",
        "1",
        "--quiet",
    ]);
    out.assert_code(3);
    assert!(
        out.stderr
            .contains(&format!("use mqtts://127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    let out = publish(&[
        "--broker",
        &format!("mqtts://127.0.0.1:{}", m.port),
        "--ca-file",
        files.ca.to_str().unwrap(),
        "--total",
        "1",
        "--quiet",
    ]);
    out.assert_code(3);
    assert!(
        out.stderr
            .contains(&format!("use mqtt://127.0.0.1:{}", m.port)),
        "{}",
        out.stderr
    );
}
