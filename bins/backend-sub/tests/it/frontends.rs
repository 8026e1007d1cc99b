//! The frontend publishers into the backend: routing, exact delivery, share groups.

use std::process::Command;

use test_support::{free_port, workspace_bin, Mosquitto};

use crate::common::{n, start, strings, validate};

fn publisher(bin: &str, url: &str, extra: &[&str]) -> std::process::Child {
    Command::new(workspace_bin(bin))
        .args(["--broker", url, "--qos", "1", "--rate", "0", "--quiet"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn publisher")
}

#[test]
fn both_frontends_at_qos1_arrive_exactly_once_and_each_frontend_sees_only_its_device() {
    let m = Mosquitto::start();
    let url = m.url();
    let backend = start(&[
        "--broker",
        &url,
        "--expect",
        "200000",
        "--idle-timeout",
        "10s",
    ]);
    let mut p1 = publisher(
        "frontend1-pub",
        &url,
        &["--total", "100000", "--batch", "1000"],
    );
    let mut p2 = publisher(
        "frontend2-pub",
        &url,
        &["--total", "100000", "--batch", "100"],
    );
    assert!(p1.wait().unwrap().success());
    assert!(p2.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    validate(r);
    assert_eq!(
        (n(r, "points_received"), n(r, "points_unique")),
        (200_000, 200_000)
    );
    assert_eq!(
        (
            n(r, "points_missing"),
            n(r, "points_duplicate"),
            n(r, "malformed_messages")
        ),
        (0, 0, 0)
    );
    assert_eq!(r["stopped_by"], "expected");
    assert_eq!(r["verified"], true);
    let f1 = out.frontend("frontend1");
    let f2 = out.frontend("frontend2");
    assert_eq!(
        strings(&f1["devices"]),
        ["frontend1_ultra_high_perf_device"]
    );
    assert_eq!(
        strings(&f2["devices"]),
        ["frontend2_ultra_high_perf_device"]
    );
    assert_eq!((n(f1, "points"), n(f2, "points")), (100_000, 100_000));
    for dev in [
        "frontend1_ultra_high_perf_device",
        "frontend2_ultra_high_perf_device",
    ] {
        let d = out.device(dev);
        assert_eq!(
            (n(d, "unique"), n(d, "min_seq"), n(d, "max_seq")),
            (100_000, 0, 99_999)
        );
        assert_eq!(strings(&d["received_ranges"]), ["0-99999"]);
    }
    assert!(n(&r["latency_us"], "count") == 200_000);
}

#[test]
fn two_backends_in_one_share_group_together_receive_every_point_once() {
    let m = Mosquitto::start();
    let url = m.url();
    let args = [
        "--broker",
        url.as_str(),
        "--share-group",
        "verifiers",
        "--idle-timeout",
        "2s",
    ];
    let a = start(&args);
    let b = start(&args);
    let mut p = publisher(
        "frontend1-pub",
        &url,
        &["--total", "50000", "--batch", "100"],
    );
    assert!(p.wait().unwrap().success());
    let (a, b) = (a.wait(), b.wait());
    a.assert_code(0);
    b.assert_code(0);
    validate(&a.report);
    let mut seen = vec![0u8; 50_000];
    for out in [&a, &b] {
        assert!(
            n(&out.report, "points_received") > 0,
            "one member got nothing"
        );
        assert!(out.report["points_missing"].is_null());
        let d = out.device("frontend1_ultra_high_perf_device");
        for range in strings(&d["received_ranges"]) {
            let (lo, hi) = match range.split_once('-') {
                Some((l, h)) => (l.parse::<usize>().unwrap(), h.parse::<usize>().unwrap()),
                None => (range.parse().unwrap(), range.parse().unwrap()),
            };
            seen[lo..=hi].iter_mut().for_each(|c| *c += 1);
        }
    }
    let missing = seen.iter().filter(|c| **c == 0).count();
    let twice = seen.iter().filter(|c| **c > 1).count();
    assert_eq!(
        (missing, twice),
        (0, 0),
        "together: {missing} missing, {twice} received by both"
    );
    assert_eq!(
        n(&a.report, "points_received") + n(&b.report, "points_received"),
        50_000
    );
}

#[test]
fn unreachable_broker_exits_3() {
    let out = Command::new(crate::common::BIN)
        .args([
            "--broker",
            &format!("127.0.0.1:{}", free_port()),
            "--connect-timeout",
            "2s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach broker"));
}

#[test]
fn sigint_prints_the_summary_and_exits_130() {
    let m = Mosquitto::start();
    let mut backend = start(&["--broker", &m.url()]);
    test_support::publish_payloads(
        m.port,
        "device_data/x",
        &[test_support::payload("dev", &[0, 1, 2])],
    );
    assert!(backend.wait_received(3, std::time::Duration::from_secs(10)));
    backend.signal("INT");
    let out = backend.wait();
    out.assert_code(130);
    assert_eq!(out.report["stopped_by"], "signal");
    assert_eq!(n(&out.report, "points_unique"), 3);
    assert!(out.stdout.contains("summary"));
}

#[test]
fn sigterm_prints_the_summary_and_exits_143() {
    let m = Mosquitto::start();
    let mut backend = start(&["--broker", &m.url()]);
    test_support::publish_payloads(
        m.port,
        "device_data/x",
        &[test_support::payload("dev", &[0, 1])],
    );
    assert!(backend.wait_received(2, std::time::Duration::from_secs(10)));
    backend.signal("TERM");
    let out = backend.wait();
    out.assert_code(143);
    assert_eq!(out.report["stopped_by"], "signal");
    assert_eq!(n(&out.report, "points_unique"), 2);
}

/// --duration stops a backend that still receives; what arrived is verified.
#[test]
fn duration_stops_the_backend_while_points_still_arrive() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--duration", "1500ms"]);
    let started = std::time::Instant::now();
    let mut seq = 0u64;
    // Keep publishing past the duration, one message every 100 ms (bounded: 4 s).
    while started.elapsed() < std::time::Duration::from_secs(4) && !backend.exited() {
        test_support::publish_payloads(
            m.port,
            "device_data/x",
            &[test_support::payload("dev", &[seq])],
        );
        seq += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let publishing = started.elapsed();
    let out = backend.wait();
    out.assert_code(0);
    assert_eq!(out.report["stopped_by"], "duration");
    assert!(
        publishing < std::time::Duration::from_secs(3),
        "still running after {publishing:?}"
    );
    let got = n(&out.report, "points_unique");
    assert!((5..=seq).contains(&got), "{got} of {seq}");
}

#[test]
fn expect_zero_stops_once_subscribed() {
    let m = Mosquitto::start();
    let out = start(&["--broker", &m.url(), "--expect", "0"]).wait();
    out.assert_code(0);
    assert_eq!(out.report["stopped_by"], "expected");
}

#[test]
fn expect_in_a_share_group_is_a_usage_error() {
    let out = Command::new(crate::common::BIN)
        .args([
            "--broker",
            "127.0.0.1:1",
            "--share-group",
            "g",
            "--expect",
            "10",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("drop --expect"), "{err}");
}

/// MQTT 5 on both sides: PUBLISHes with properties (content type, a user property) are
/// framed and verified like 3.1.1 ones, through a persistent session.
#[test]
fn mqtt5_publisher_and_backend_prove_every_point() {
    let m = Mosquitto::start();
    let url = m.url();
    let backend = start(&[
        "--broker",
        &url,
        "--mqtt-version",
        "5",
        "--clean-session",
        "false",
        "--expect",
        "30000",
        "--idle-timeout",
        "10s",
    ]);
    let mut p = publisher(
        "frontend1-pub",
        &url,
        &[
            "--mqtt-version",
            "5",
            "--user-property",
            "run=r1",
            "--total",
            "30000",
            "--batch",
            "10",
        ],
    );
    assert!(p.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    assert_eq!(
        (
            n(&out.report, "points_unique"),
            n(&out.report, "malformed_messages")
        ),
        (30_000, 0)
    );
}

/// TLS on both sides (`mqtts://`, the test's CA): the backend proves every point, and its
/// report names the broker as mqtts.
#[test]
fn tls_publisher_and_backend_prove_every_point() {
    let dir = test_support::TempDir::new("btls");
    let files = test_support::TlsFiles::new(&dir);
    let port = free_port();
    let _m = Mosquitto::start_with(&files.listener(port, false));
    assert!(test_support::wait_for_listener(
        port,
        std::time::Duration::from_secs(5)
    ));
    let url = format!("mqtts://127.0.0.1:{port}");
    let ca = files.ca.to_str().unwrap();
    let backend = start(&[
        "--broker",
        &url,
        "--ca-file",
        ca,
        "--expect",
        "20000",
        "--idle-timeout",
        "10s",
    ]);
    let mut p = Command::new(workspace_bin("loadgen"))
        .args(["pub", "--broker", &url, "--ca-file", ca, "--qos", "1"])
        .args(["--devices", "20", "--rate-per-device", "0", "--batch", "10"])
        .args(["--total", "20000", "--quiet"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn loadgen");
    assert!(p.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    assert_eq!(out.report["broker"], url);
    assert_eq!(
        (
            n(&out.report, "points_unique"),
            n(&out.report, "devices_seen")
        ),
        (20_000, 20)
    );
}

/// backend-sub's TLS failures say what to change, as the publishers' do: an issuer it does
/// not trust (--ca-file), and a scheme mixed up with the port (mqtt:// at the TLS listener,
/// mqtts:// at the plain one), found by one probe with the other scheme.
#[test]
fn tls_failures_of_the_backend_say_what_to_change() {
    let dir = test_support::TempDir::new("btlserr");
    let files = test_support::TlsFiles::new(&dir);
    let port = free_port();
    let m = Mosquitto::start_with(&files.listener(port, false));
    assert!(test_support::wait_for_listener(
        port,
        std::time::Duration::from_secs(5)
    ));
    let tls_url = format!("mqtts://127.0.0.1:{port}");
    let (code, _, err) = crate::common::run_to_end(&[
        "--broker",
        &tls_url,
        "--ca-file",
        files.other_ca.to_str().unwrap(),
        "--reconnect",
        "false",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("--ca-file") && err.contains("does not trust"),
        "{err}"
    );
    let (code, _, err) = crate::common::run_to_end(&[
        "--broker",
        &format!("mqtt://127.0.0.1:{port}"),
        "--reconnect",
        "false",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("use mqtts://127.0.0.1:{port}")),
        "{err}"
    );
    let (code, _, err) = crate::common::run_to_end(&[
        "--broker",
        &format!("mqtts://127.0.0.1:{}", m.port),
        "--ca-file",
        files.ca.to_str().unwrap(),
        "--reconnect",
        "false",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!("use mqtt://127.0.0.1:{}", m.port)),
        "{err}"
    );
}
