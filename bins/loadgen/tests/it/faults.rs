//! A fleet through a broker failure: every connection reconnects, and an independent
//! subscriber gets every point the report calls acknowledged.

use std::time::Duration;

use test_support::proxy::Proxy;
use test_support::{Mosquitto, Subscriber};

use crate::common::{backend, n, publish};

/// Fault 1, a fleet: 500 devices over 500 connections at QoS 1 with persistent sessions;
/// the broker is killed mid-run and started again. backend-sub comes back through its own
/// reconnect, and the proxy in front of the broker lets the fleet back in once it has
/// subscribed again; backend-sub then proves every device's every point.
#[test]
fn a_fleet_of_500_connections_comes_back_after_a_broker_restart_and_loses_nothing_acked() {
    let mut m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    // The test's own subscriber tells when the run is under way and when the broker has
    // handed on all it took.
    let sub = Subscriber::start(m.port, "device_data/#");
    let b = backend(&[
        "--broker",
        &m.url(),
        "--expect",
        "10000",
        "--idle-timeout",
        "10s",
        "--reconnect-backoff",
        "50ms..200ms",
        "--at-least-once",
        "--report-devices",
    ]);
    let (devices, per_device) = (500u64, 20u64);
    let args: Vec<String> = [
        "--broker",
        &proxy.url(),
        "--devices",
        "500",
        "--qos",
        "1",
        "--batch",
        "1",
        "--rate-per-device",
        "5",
        "--total",
        "10000",
        "--clean-session",
        "false",
        "--reconnect-backoff",
        "50ms..500ms",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = std::thread::spawn(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        publish(&a)
    });
    assert!(
        sub.wait_points(2_000, Duration::from_secs(15)),
        "the run started"
    );
    // Held back, then cut, once the broker has handed on everything it acknowledged: a
    // broker killed with acknowledged points in its queues loses them (an acknowledgement
    // proves receipt, not delivery), which is the broker's loss, not the fleet's.
    proxy.set_accepting(false);
    proxy.set_stalled(true);
    assert!(sub.wait_quiet(Duration::from_millis(300), Duration::from_secs(10)));
    proxy.cut_all();
    proxy.set_stalled(false);
    m.kill();
    std::thread::sleep(Duration::from_millis(500)); // the outage itself
    m.restart();
    assert!(b.wait_for_line("subscribed again", Duration::from_secs(10)));
    proxy.set_accepting(true);
    let out = run.join().unwrap();
    let (code, br) = b.wait();
    out.assert_code(0);
    assert_eq!(code, 0, "{br:#}");
    let r = out.report();
    let c = &r["connections"];
    assert_eq!(n(r, "points_acked"), devices * per_device, "{}", out.stdout);
    assert_eq!(n(c, "reconnected"), devices, "{}", out.stdout);
    assert!(n(r, "reconnects") >= devices, "{}", out.stdout);
    assert_eq!(n(c, "down_at_end"), 0);
    assert_eq!(
        (n(&br, "points_unique"), n(&br, "points_missing")),
        (10_000, 0)
    );
    assert_eq!(n(&br, "devices_seen"), devices);
    for d in br["devices"].as_array().unwrap() {
        assert_eq!(
            (n(d, "unique"), n(d, "missing")),
            (per_device, 0),
            "{}",
            d["device_id"]
        );
    }
    let duplicates = n(&br, "points_duplicate");
    assert!(
        duplicates <= n(r, "messages_resent"),
        "{duplicates} duplicates, {} resent",
        n(r, "messages_resent")
    );
    eprintln!(
        "fault 1, 500 connections: publisher acked {} reconnects {} resent {} disconnected {} s; \
         backend-sub unique {} missing {} duplicates {} reconnects {}",
        r["points_acked"],
        r["reconnects"],
        r["messages_resent"],
        r["disconnected_s"],
        br["points_unique"],
        br["points_missing"],
        br["points_duplicate"],
        br["reconnects"]
    );
}

/// Fault 5: a reconnect wave into `max_connections`. The fleet's 40 connections are cut
/// while other clients take 20 of the broker's 50 places; the reconnects that find it full
/// back off and get in once those clients leave, and every point is delivered.
#[test]
fn a_reconnect_wave_into_max_connections_backs_off_until_room_frees() {
    let mut m = Mosquitto::start_with(&["max_connections 50".into()]);
    let proxy = Proxy::start(m.port);
    let sub = Subscriber::start(m.port, "device_data/#");
    let (devices, per_device) = (40u64, 25u64);
    let args: Vec<String> = [
        "--broker",
        &proxy.url(),
        "--devices",
        "40",
        "--qos",
        "1",
        "--batch",
        "1",
        "--rate-per-device",
        "5",
        "--total",
        "1000",
        "--reconnect-backoff",
        "100ms..400ms",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = std::thread::spawn(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        publish(&a)
    });
    assert!(
        sub.wait_points(200, Duration::from_secs(15)),
        "the run started"
    );
    proxy.set_accepting(false);
    proxy.cut_all();
    // Mosquitto frees the cut clients' places when it reads their ends: nothing says when.
    std::thread::sleep(Duration::from_millis(300));
    // 20 other clients take their places (the subscriber holds one of the 50 too).
    let squatters: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", m.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200)); // their CONNECT-less places taken
    proxy.set_accepting(true);
    std::thread::sleep(Duration::from_millis(1500)); // the wave meets a full broker a while
    drop(squatters);
    let out = run.join().unwrap();
    let got = sub.finish(devices * per_device, Duration::from_secs(5));
    out.assert_code(0);
    let r = out.report();
    let c = &r["connections"];
    assert_eq!(n(r, "points_acked"), devices * per_device, "{}", out.stdout);
    assert_eq!(n(c, "reconnected"), devices, "{}", out.stdout);
    // Some reconnects found the broker full: it closed them before their CONNACK.
    let refused = c["attempts_failed_by_reason"]["closed before CONNACK"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused > 0, "no reconnect found the broker full: {c:#}");
    for device in got.seqs.keys() {
        let (missing, _, outside) = got.delivery(device, per_device);
        assert_eq!(
            (missing, outside),
            (0, 0),
            "{device}: acknowledged but lost"
        );
    }
    assert_eq!(got.seqs.len() as u64, devices);
    m.kill();
}
