//! Crafted payloads: gaps, duplicates, reordering, malformed messages, mixed formats.

use test_support::{payload, publish_payloads, Mosquitto};

use crate::common::{n, start, strings, validate};

const TOPIC: &str = "device_data/crafted";

fn batches(device: &str, seqs: impl IntoIterator<Item = u64>, size: usize) -> Vec<Vec<u8>> {
    let all: Vec<u64> = seqs.into_iter().collect();
    all.chunks(size).map(|c| payload(device, c)).collect()
}

#[test]
fn skipped_seqs_are_reported_as_missing_ranges_and_exit_5() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    let seqs = (0..1200).chain(1300..5000).chain(5001..6000);
    publish_payloads(m.port, TOPIC, &batches("dev_gap", seqs, 100));
    let out = backend.wait();
    out.assert_code(5);
    validate(&out.report);
    let d = out.device("dev_gap");
    assert_eq!(strings(&d["missing_ranges"]), ["1200-1299", "5000"]);
    assert_eq!((n(d, "missing"), n(d, "unique")), (101, 5899));
    assert_eq!(n(&out.report, "points_missing"), 101);
    assert!(
        out.stderr
            .contains("missing 101 points on dev_gap: 1200-1299, 5000"),
        "{}",
        out.stderr
    );
}

#[test]
fn republished_points_are_counted_as_duplicates_and_exit_5() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    let mut msgs = batches("dev_dup", 0..1000, 100);
    msgs.push(payload("dev_dup", &(500..600).collect::<Vec<_>>()));
    msgs.push(payload("dev_dup", &[999]));
    publish_payloads(m.port, TOPIC, &msgs);
    let out = backend.wait();
    out.assert_code(5);
    let d = out.device("dev_dup");
    assert_eq!(
        (n(d, "duplicate"), n(d, "unique"), n(d, "received")),
        (101, 1000, 1101)
    );
    assert_eq!(n(&out.report, "points_duplicate"), 101);
    assert!(
        out.stderr.contains("101 duplicate points"),
        "{}",
        out.stderr
    );
}

#[test]
fn reordered_points_are_counted_as_out_of_order_not_lost() {
    let m = Mosquitto::start();
    let backend = start(&[
        "--broker",
        &m.url(),
        "--expect",
        "200",
        "--idle-timeout",
        "2s",
    ]);
    let msgs = vec![
        payload("dev_ooo", &(0..100).collect::<Vec<_>>()),
        payload("dev_ooo", &(150..200).collect::<Vec<_>>()),
        payload("dev_ooo", &(100..150).collect::<Vec<_>>()),
    ];
    publish_payloads(m.port, TOPIC, &msgs);
    let out = backend.wait();
    out.assert_code(0);
    let d = out.device("dev_ooo");
    assert_eq!(
        (n(d, "out_of_order"), n(d, "missing"), n(d, "duplicate")),
        (50, 0, 0)
    );
    assert_eq!((n(d, "first_seq"), n(d, "last_seq")), (0, 149));
}

#[test]
fn malformed_payloads_are_counted_and_the_backend_goes_on() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    let good = payload("dev_ok", &(0..500).collect::<Vec<_>>());
    let truncated = good[..good.len() / 2].to_vec();
    let msgs = vec![
        b"not json at all".to_vec(),
        br#"{"temperature": 21.5}"#.to_vec(),
        truncated,
        good,
        br#"[1, 2, 3]"#.to_vec(),
        payload("dev_ok", &(500..1000).collect::<Vec<_>>()),
    ];
    publish_payloads(m.port, TOPIC, &msgs);
    let out = backend.wait();
    out.assert_code(5);
    let r = &out.report;
    assert_eq!(
        (n(r, "malformed_messages"), n(r, "messages_received")),
        (4, 6)
    );
    assert_eq!(
        (
            n(r, "points_received"),
            n(r, "points_unique"),
            n(r, "points_missing")
        ),
        (1000, 1000, 0)
    );
    assert!(
        out.stderr
            .contains(&format!("malformed message on {TOPIC}")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("4 malformed messages"),
        "{}",
        out.stderr
    );
}

#[test]
fn legacy_and_batched_formats_mix_on_one_topic() {
    let m = Mosquitto::start();
    let backend = start(&[
        "--broker",
        &m.url(),
        "--expect",
        "300",
        "--route",
        "dev_mix=frontend2",
    ]);
    let mut msgs: Vec<Vec<u8>> = (0..100).map(|s| payload("dev_mix", &[s])).collect();
    msgs.push(payload("dev_mix", &(100..250).collect::<Vec<_>>()));
    msgs.extend((250..300).map(|s| payload("dev_mix", &[s])));
    publish_payloads(m.port, TOPIC, &msgs);
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    validate(r);
    assert_eq!((n(r, "legacy_messages"), n(r, "batch_messages")), (150, 1));
    assert_eq!(n(r, "points_unique"), 300);
    assert_eq!(strings(&out.frontend("frontend2")["devices"]), ["dev_mix"]);
    assert_eq!(n(out.frontend("frontend1"), "points"), 0);
}

#[test]
fn unrouted_devices_are_reported_and_not_given_to_a_frontend() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--expect", "20"]);
    publish_payloads(
        m.port,
        TOPIC,
        &[
            payload("sensor_x", &(0..10).collect::<Vec<_>>()),
            payload("frontend1_a", &(0..10).collect::<Vec<_>>()),
        ],
    );
    let out = backend.wait();
    out.assert_code(0);
    assert_eq!(n(&out.report, "points_unrouted"), 10);
    assert!(out.device("sensor_x")["frontend"].is_null());
    assert_eq!(
        strings(&out.frontend("frontend1")["devices"]),
        ["frontend1_a"]
    );
}

#[test]
fn routes_come_from_the_config_file() {
    let m = Mosquitto::start();
    let dir = test_support::TempDir::new("routes");
    let cfg = dir.path("backend.toml");
    std::fs::write(&cfg, "route = [\"sensor_7=frontend2\"]\nroute-prefix = [\"frontend1=frontend1\"]\nidle-timeout = \"1s\"\n").unwrap();
    let backend = start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--broker",
        &m.url(),
        "--expect",
        "10",
    ]);
    publish_payloads(
        m.port,
        TOPIC,
        &[payload("sensor_7", &(0..10).collect::<Vec<_>>())],
    );
    let out = backend.wait();
    out.assert_code(0);
    assert_eq!(strings(&out.frontend("frontend2")["devices"]), ["sensor_7"]);
}

/// Hostile but well-formed payloads: extreme numbers, an empty batch, a huge array of
/// non-points. Nothing panics; the extremes are reported, the junk counted as malformed.
#[test]
fn hostile_payloads_neither_crash_nor_hide_anything() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--idle-timeout", "1s"]);
    let max = u64::MAX;
    let extreme = format!(
        r#"[{{"device_id":"dev_far","seq":{max},"timestamp":-1e300,"value":1e308}},
            {{"device_id":"dev_far","seq":0,"timestamp":1e300,"value":-1e308}}]"#
    );
    let mut zeros = b"[0".to_vec();
    zeros.extend(std::iter::repeat(b",0".as_slice()).take(4 << 20).flatten());
    zeros.push(b']');
    let msgs = vec![
        extreme.into_bytes(),
        b"[]".to_vec(),
        zeros,
        format!(r#"{{"device_id":"dev_far","seq":{max}1,"timestamp":0,"value":0}}"#).into_bytes(),
        payload("dev_ok", &[0, 1, 2]),
    ];
    publish_payloads(m.port, TOPIC, &msgs);
    let out = backend.wait();
    out.assert_code(5);
    let r = &out.report;
    validate(r);
    assert_eq!(
        (n(r, "messages_received"), n(r, "malformed_messages")),
        (5, 2)
    );
    assert_eq!((n(r, "points_received"), n(r, "points_unique")), (5, 5));
    let d = out.device("dev_far");
    assert_eq!((n(d, "min_seq"), n(d, "max_seq")), (0, max));
    assert_eq!(strings(&d["missing_ranges"]), [format!("1-{}", max - 1)]);
    assert_eq!(n(d, "missing"), max - 1);
}

/// Past --max-devices, points are counted as untracked and fail verification.
#[test]
fn devices_beyond_the_limit_are_counted_not_tracked() {
    let m = Mosquitto::start();
    let backend = start(&[
        "--broker",
        &m.url(),
        "--idle-timeout",
        "1s",
        "--max-devices",
        "2",
    ]);
    let msgs: Vec<Vec<u8>> = ["dev_a", "dev_b", "dev_c", "dev_a"]
        .iter()
        .enumerate()
        .map(|(i, d)| payload(d, &[u64::from(i == 3)]))
        .collect();
    publish_payloads(m.port, TOPIC, &msgs);
    let out = backend.wait();
    out.assert_code(5);
    let r = &out.report;
    validate(r);
    assert_eq!((n(r, "points_received"), n(r, "points_untracked")), (4, 1));
    assert_eq!(r["devices"].as_array().unwrap().len(), 2);
    assert_eq!(n(out.device("dev_a"), "unique"), 2);
    assert!(out.stderr.contains("raise --max-devices"), "{}", out.stderr);
}
