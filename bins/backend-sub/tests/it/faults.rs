//! backend-sub through faults: it reconnects, subscribes again, and its counts go on, so
//! that the run's verdict covers the whole stream.

use std::process::Command;
use std::time::Duration;

use test_support::proxy::Proxy;
use test_support::{workspace_bin, Mosquitto};

use crate::common::{n, start};

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
    std::thread::sleep(Duration::from_millis(1000));
    proxy.set_accepting(false);
    proxy.cut_all();
    std::thread::sleep(Duration::from_millis(1000));
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
}

/// Fault 1 with both sides reconnecting: the broker is killed and started again; the
/// backend reconnects and subscribes again before the publisher is let back in (the proxy
/// in front of the publisher holds it off), and the backend proves every point arrived.
#[test]
fn publisher_and_backend_both_come_back_after_a_broker_restart() {
    let mut m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
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
    let mut p = publisher(&proxy.url(), "20000");
    std::thread::sleep(Duration::from_millis(1200));
    proxy.set_accepting(false);
    m.kill();
    std::thread::sleep(Duration::from_millis(500));
    m.restart();
    assert!(backend.wait_for_line("subscribed again", Duration::from_secs(10)));
    proxy.set_accepting(true);
    assert!(p.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    assert_eq!((n(r, "points_unique"), n(r, "points_missing")), (20_000, 0));
    assert!(n(r, "reconnects") >= 1, "{r:#}");
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
