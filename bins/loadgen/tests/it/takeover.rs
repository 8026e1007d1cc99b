//! Fleets whose client ids are made per connection (`loadgen-{i}`) are not taken for two
//! copies of a run: connections the broker closes are lost and back, not "taken over", and
//! fleets of disjoint `--device-start` ranges share a broker without a collision.

use std::time::Duration;

use test_support::proxy::Proxy;
use test_support::{Mosquitto, Subscriber};

use crate::common::{n, publish};

fn fleet(broker: &str, device_start: &str) -> Vec<String> {
    [
        "--broker",
        broker,
        "--devices",
        "20",
        "--device-start",
        device_start,
        "--qos",
        "1",
        "--batch",
        "1",
        "--rate-per-device",
        "20",
        "--total",
        "2000",
        "--reconnect-backoff",
        "50ms..200ms",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn a_fleet_with_templated_client_ids_is_not_taken_for_a_takeover() {
    let m = Mosquitto::start();
    let proxy = Proxy::start(m.port);
    let sub = Subscriber::start(m.port, "device_data/#");
    let runs: Vec<_> = [fleet(&proxy.url(), "0"), fleet(&m.url(), "20")]
        .into_iter()
        .map(|args| {
            std::thread::spawn(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                publish(&a)
            })
        })
        .collect();
    assert!(
        sub.wait_points(800, Duration::from_secs(15)),
        "the runs started"
    );
    // Every connection of the first fleet is closed under it: lost, back, no takeover.
    proxy.cut_all();
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.join().unwrap();
        out.assert_code(0);
        let r = out.report();
        let c = &r["connections"];
        assert_eq!(n(r, "points_acked"), 2_000, "fleet {i}: {}", out.stdout);
        assert_eq!(
            (n(c, "takeovers"), n(c, "client_id_in_use")),
            (0, 0),
            "fleet {i}: {c:#}"
        );
        if i == 0 {
            assert_eq!(n(c, "reconnected"), 20, "{c:#}");
        }
        assert!(!out.stderr.contains("taken over"), "{}", out.stderr);
        assert!(!out.stderr.contains("in use"), "{}", out.stderr);
    }
}

/// Two copies of one fleet command on one broker: with default client ids each copy's are
/// its own (a token of the process), so neither takes the other's connections (with the
/// seed's `loadgen-{i}` both lost every connection again and again, unnoticed).
#[test]
fn two_copies_of_one_fleet_command_keep_their_own_connections() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, "device_data/#");
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let args = fleet(&m.url(), "0");
            std::thread::spawn(move || {
                let a: Vec<&str> = args.iter().map(String::as_str).collect();
                publish(&a)
            })
        })
        .collect();
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.join().unwrap();
        out.assert_code(0);
        let r = out.report();
        let c = &r["connections"];
        assert_eq!(n(r, "points_acked"), 2_000, "copy {i}: {}", out.stdout);
        assert_eq!(
            (n(c, "losses"), n(c, "takeovers")),
            (0, 0),
            "copy {i}: {c:#}"
        );
    }
    // Both copies' points reached the broker: the same devices, twice.
    assert!(
        sub.wait_points(4_000, Duration::from_secs(10)),
        "4,000 points"
    );
}
