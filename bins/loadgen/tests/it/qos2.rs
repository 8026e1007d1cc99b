//! QoS 2 end to end: `loadgen pub --qos 2` against a real Mosquitto, proven by backend-sub
//! subscribed at QoS 2 (exactly once: a duplicate fails its verdict), through a broker
//! restart with persistent sessions on both sides, and a PUBREC that refuses (MQTT 5).

use std::time::{Duration, Instant};

use test_support::proxy::Proxy;
use test_support::{assert_matches_schema, Mosquitto, Subscriber, TempDir};

use crate::common::{backend, n, publish};

#[test]
fn a_qos_2_run_delivers_every_point_exactly_once() {
    let m = Mosquitto::start();
    let b = backend(&[
        "--broker",
        &m.url(),
        "--qos",
        "2",
        "--expect",
        "5000",
        "--idle-timeout",
        "10s",
    ]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "10",
        "--qos",
        "2",
        "--batch",
        "1",
        "--rate",
        "0",
        "--total",
        "5000",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    assert_matches_schema("schema/publisher-report.schema.json", r);
    assert_eq!(n(r, "qos"), 2);
    assert_eq!(
        (
            n(r, "points_acked"),
            n(r, "points_failed"),
            n(r, "messages_acked")
        ),
        (5000, 0, 5000)
    );
    assert_eq!(n(&r["latency_us"], "count"), 5000, "{:#}", r["latency_us"]);
    let (code, br) = b.wait();
    assert_eq!(code, 0, "{br:#}");
    assert_eq!(
        (
            n(&br, "points_unique"),
            n(&br, "points_missing"),
            n(&br, "points_duplicate")
        ),
        (5000, 0, 0)
    );
}

/// The broker (persistence on) is stopped mid-run and started again on the same port:
/// the publisher's persistent session resends what had no PUBREC with DUP and the PUBREL of
/// what had, the backend's answers what the broker resends; nothing is lost, nothing twice.
///
/// The publisher reaches the broker through a proxy that holds it back just before the
/// stop, once the broker has handed on what it released: Mosquitto 2.0.11 restores an
/// outgoing QoS 2 message whose PUBREL it had sent as one to PUBLISH again (its log shows
/// "Sending PUBLISH (d1 ..." after "Sending PUBREL" for the same id), which a subscriber that
/// took the PUBREL must take as a new message; MQTT 4.4 has it resend the PUBREL. So the
/// stop interrupts the publisher's exchanges (PUBRECs and PUBRELs in flight, kept in the
/// broker's database), not the broker's towards the subscriber.
#[test]
fn qos_2_end_to_end_survives_a_broker_restart_with_nothing_lost_and_no_duplicate() {
    let db = TempDir::new("qos2-persistence");
    // Mosquitto started as root writes its database as the user it drops to.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&db.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut m = Mosquitto::start_with(&[
        "persistence true".into(),
        format!("persistence_location {}/", db.0.display()),
    ]);
    let proxy = Proxy::start(m.port);
    // The test's own subscriber tells when the run is under way, and when the broker has
    // handed on all it released.
    let sub = Subscriber::start(m.port, "device_data/#");
    // The backend's count, to see it has taken all the broker handed on before the stop.
    let metrics = format!("127.0.0.1:{}", test_support::free_port());
    let b = backend(&[
        "--metrics-addr",
        &metrics,
        "--metrics-linger",
        "0s",
        "--broker",
        &m.url(),
        "--qos",
        "2",
        "--clean-session",
        "false",
        "--client-id",
        "qos2-backend",
        "--expect",
        "20000",
        "--idle-timeout",
        "15s",
        "--reconnect-backoff",
        "50ms..200ms",
    ]);
    let args: Vec<String> = [
        "--broker",
        &proxy.url(),
        "--devices",
        "10",
        "--qos",
        "2",
        "--batch",
        "1",
        "--rate",
        "4000",
        "--total",
        "20000",
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
        sub.wait_points(3_000, Duration::from_secs(15)),
        "the run started"
    );
    proxy.set_accepting(false);
    proxy.set_stalled(true);
    assert!(sub.wait_quiet(Duration::from_millis(300), Duration::from_secs(10)));
    proxy.cut_all();
    proxy.set_stalled(false);
    // What the proxy held may reach the broker as it cuts (PUBRELs, so deliveries): quiet
    // again before the stop.
    assert!(sub.wait_quiet(Duration::from_millis(300), Duration::from_secs(10)));
    // And the backend has taken every message the broker handed on, and had the time to
    // finish its exchanges for them (PUBREC, PUBREL, PUBCOMP): a stop between the broker's
    // PUBREL and the backend's PUBCOMP makes Mosquitto 2.0.11 send the PUBLISH again after
    // the restart (see above), a duplicate the backend rightly counts. On a loaded machine
    // the backend lagged the test's subscriber past its 300 ms quiet (CI: 1 duplicate).
    let handed_on = sub.snapshot().points;
    let end = Instant::now() + Duration::from_secs(15);
    while backend_points(&metrics) < Some(handed_on) {
        assert!(
            Instant::now() < end,
            "the backend took {:?} of the {handed_on} points handed on",
            backend_points(&metrics)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    m.stop();
    m.restart();
    assert!(b.wait_for_line("subscribed again", Duration::from_secs(15)));
    proxy.set_accepting(true);
    let out = run.join().unwrap();
    let (code, br) = b.wait();
    out.assert_code(0);
    let r = out.report();
    assert_matches_schema("schema/publisher-report.schema.json", r);
    assert_eq!(n(r, "points_acked"), 20_000, "{}", out.stdout);
    assert!(n(r, "reconnects") >= 10, "{}", out.stdout);
    assert_eq!(n(&r["connections"], "sessions_lost"), 0, "{}", out.stdout);
    let why = || {
        format!(
            "backend-sub: {}\npublisher: resent {} PUBRELs resent {}\nbroker log (warnings):\n{}",
            br["reason"],
            r["messages_resent"],
            r["pubrels_resent"],
            m.log()
        )
    };
    assert_eq!(
        (
            n(&br, "points_unique"),
            n(&br, "points_missing"),
            n(&br, "points_duplicate")
        ),
        (20_000, 0, 0),
        "{}",
        why()
    );
    assert_eq!(code, 0, "{}", why());
    assert!(n(&br, "reconnects") >= 1, "{br:#}");
    eprintln!(
        "QoS 2 through a broker restart: publisher acked {} reconnects {} resent {} PUBRELs \
         resent {}; backend-sub unique {} duplicates {} reconnects {}",
        r["points_acked"],
        r["reconnects"],
        r["messages_resent"],
        r["pubrels_resent"],
        br["points_unique"],
        br["points_duplicate"],
        br["reconnects"]
    );
}

/// Mosquitto answers a QoS 2 PUBLISH its ACL denies with PUBREC 0x87 under MQTT 5: each
/// message is rejected, counted by reason, not resent and not failed.
#[test]
fn a_refusing_pubrec_is_counted_rejected_by_its_reason() {
    let dir = TempDir::new("acl-qos2");
    let acl = dir.path("acl");
    std::fs::write(&acl, "topic read #\n").unwrap();
    let m = Mosquitto::start_with(&[
        format!("acl_file {}", acl.display()),
        "max_queued_messages 1000".into(),
    ]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--mqtt-version",
        "5",
        "--qos",
        "2",
        "--batch",
        "1",
        "--rate",
        "0",
        "--total",
        "300",
        "--quiet",
    ]);
    out.assert_code(1);
    let r = out.report();
    assert_eq!(
        (
            n(r, "points_rejected"),
            n(r, "points_acked"),
            n(r, "points_failed"),
            n(r, "messages_resent")
        ),
        (300, 0, 0, 0)
    );
    assert_eq!(n(&r["rejected_by_reason"], "0x87 not authorized"), 300);
}

/// The points backend-sub has received, from its `/metrics` (None while it does not answer).
fn backend_points(addr: &str) -> Option<u64> {
    let (status, body) = test_support::http_get(addr, "/metrics").ok()?;
    if status != 200 {
        return None;
    }
    test_support::sample(&body, "loadgen_backend_points_received_total", &[]).map(|v| v as u64)
}
