//! Shards, merge and thresholds: a fleet run as four processes against one Mosquitto adds up
//! to the unsharded run, its merged percentiles are those of the union of the samples, a
//! merge that lacks a shard fails naming it, and thresholds fail a run with exit 99.

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use hdrhistogram::Histogram;
use serde_json::Value;
use test_support::{assert_matches_schema, Mosquitto, TempDir};

use crate::common::{backend, n, publish, BIN};

fn decode(v: &Value) -> Histogram<u64> {
    use hdrhistogram::serialization::Deserializer;
    let text = v.as_str().expect("an encoded histogram");
    let bytes = base64_decode(text);
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .expect("V2 + DEFLATE")
}

/// base64 (standard alphabet), without a crate of the test's own.
pub fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|c| val(*c) as u32).collect();
        let n = v
            .iter()
            .enumerate()
            .fold(0u32, |a, (i, x)| a | (x << (18 - 6 * i)));
        out.push((n >> 16) as u8);
        if v.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if v.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn read(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).expect("report written")).expect("JSON")
}

const DEVICES: &str = "40";
const TOTAL: u64 = 4000;

fn fleet_args(url: &str) -> Vec<String> {
    [
        "--broker",
        url,
        "--devices",
        DEVICES,
        "--qos",
        "1",
        "--rate",
        "2000",
        "--batch",
        "1",
        "--total",
        "4000",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn four_shards_against_one_broker_add_up_to_the_unsharded_run() {
    let m = Mosquitto::start();
    let url = m.url();

    // The unsharded run, proven by a backend.
    let b = backend(&[
        "--broker",
        &url,
        "--expect",
        "4000",
        "--idle-timeout",
        "10s",
    ]);
    let args = fleet_args(&url);
    let whole = publish(&args.iter().map(String::as_str).collect::<Vec<_>>());
    whole.assert_code(0);
    let (code, whole_backend) = b.wait();
    assert_eq!(code, 0, "{whole_backend:#}");
    let whole = whole.report().clone();

    // The same fleet as four shards that start together, proven by another backend.
    let b = backend(&[
        "--broker",
        &url,
        "--expect",
        "4000",
        "--idle-timeout",
        "10s",
    ]);
    let dir = TempDir::new("shards");
    let start_at = SystemTime::now() + Duration::from_secs(2);
    let start_at = format!(
        "{:.3}",
        start_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    );
    let report = dir.path("shard-{shard}.json");
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(BIN)
                .arg("pub")
                .args(&args)
                .args([
                    "--shards",
                    "4",
                    "--shard",
                    &i.to_string(),
                    "--start-at",
                    &start_at,
                ])
                .arg("--report-json")
                .arg(&report)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a shard")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (code, sharded_backend) = b.wait();
    assert_eq!(
        code, 0,
        "every device's seqs arrived exactly once: {sharded_backend:#}"
    );
    assert_eq!(n(&sharded_backend, "devices_seen"), 40);

    let shards: Vec<Value> = (0..4)
        .map(|i| read(&dir.path(&format!("shard-{i}.json"))))
        .collect();
    // Disjoint, complete device ranges: 10 devices each, from 0, 10, 20, 30.
    let mut starts: Vec<(u64, u64)> = shards
        .iter()
        .map(|s| (n(s, "device_start"), n(s, "devices")))
        .collect();
    starts.sort();
    assert_eq!(starts, [(0, 10), (10, 10), (20, 10), (30, 10)]);
    for (i, s) in shards.iter().enumerate() {
        assert_matches_schema("schema/publisher-report.schema.json", s);
        assert_eq!((n(s, "shard"), n(s, "shards")), (i as u64, 4));
        assert_eq!(n(s, "points_sent"), 1000, "a quarter of --total");
        assert_eq!(
            s["target_rate"].as_f64(),
            Some(500.0),
            "a quarter of --rate"
        );
    }
    // The shards started together, within a fraction of a second.
    let started: Vec<SystemTime> = shards
        .iter()
        .map(|s| humantime_parse(s["started_at"].as_str().unwrap()))
        .collect();
    let spread = started
        .iter()
        .max()
        .unwrap()
        .duration_since(*started.iter().min().unwrap());
    assert!(spread.unwrap() < Duration::from_millis(500), "{started:?}");

    // Merged: the sums, the window, the exact percentiles of the union.
    let merged_path = dir.path("merged.json");
    let (code, _, stderr) = run(&[
        "merge",
        "--threshold",
        "points_failed==0",
        "--threshold",
        "ack_latency_p99<1h",
        "--report-json",
        merged_path.to_str().unwrap(),
        dir.0.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let merged = read(&merged_path);
    assert_matches_schema("schema/publisher-report.schema.json", &merged);
    for key in [
        "points_sent",
        "points_acked",
        "messages_sent",
        "bytes_sent",
        "devices",
    ] {
        let sum: u64 = shards.iter().map(|s| n(s, key)).sum();
        assert_eq!(n(&merged, key), sum, "{key} is the sum of the shards'");
        assert_eq!(
            n(&merged, key),
            n(&whole, key),
            "{key} equals the unsharded run's"
        );
    }
    assert_eq!(n(&merged, "points_sent"), TOTAL);
    assert_eq!(n(&merged["connections"], "connected"), 40);
    assert_eq!(merged["target_rate"].as_f64(), Some(2000.0));
    let mut union = decode(&shards[0]["histograms"]["ack_us"]);
    for s in &shards[1..] {
        union.add(decode(&s["histograms"]["ack_us"])).unwrap();
    }
    let lat = &merged["latency_us"];
    assert_eq!(n(lat, "count"), union.len());
    assert_eq!(n(lat, "count"), TOTAL, "one ack sample a message");
    assert_eq!(
        n(lat, "p99"),
        union.value_at_quantile(0.99),
        "p99 of the union"
    );
    assert_eq!(n(lat, "max"), union.max());
    let elapsed = merged["elapsed_s"].as_f64().unwrap();
    for s in &shards {
        assert!(elapsed >= s["elapsed_s"].as_f64().unwrap() - 0.001);
    }
    let rate = merged["point_rate"].as_f64().unwrap();
    assert!(
        (rate - TOTAL as f64 / elapsed).abs() < 1.0,
        "rate over the window: {rate}"
    );
    assert_eq!(
        merged["merged"]["shards_present"],
        serde_json::json!(["0-3"])
    );
    assert!(merged["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["pass"] == true));

    // Each shard's histogram is its own latency: its encoding reproduces its percentiles.
    for s in &shards {
        let h = decode(&s["histograms"]["ack_us"]);
        let own = &s["latency_us"];
        assert_eq!(
            (h.len(), h.value_at_quantile(0.99)),
            (n(own, "count"), n(own, "p99"))
        );
    }

    // A shard interrupted (after a clean flush, so with no error of its own) fails the
    // merge with exit 1 before any threshold; a report of another run is refused.
    let mut interrupted = shards[1].clone();
    interrupted["interrupted_by"] = "SIGTERM".into();
    interrupted["outcome"] = "interrupted".into();
    let other = TempDir::new("shards-interrupted");
    for (i, s) in shards.iter().enumerate() {
        let v = if i == 1 { &interrupted } else { s };
        std::fs::write(other.path(&format!("shard-{i}.json")), v.to_string()).unwrap();
    }
    let (code, _, stderr) = run(&[
        "merge",
        "--threshold",
        "point_rate>=1G",
        other.0.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("shard 1 was interrupted by SIGTERM"),
        "{stderr}"
    );
    let mut stale = shards[1].clone();
    stale["start_at"] = "2026-01-01T00:00:00.000000Z".into();
    std::fs::write(other.path("shard-1.json"), stale.to_string()).unwrap();
    let (code, _, stderr) = run(&["merge", other.0.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("a report of another run?"), "{stderr}");

    // Three of four: named, and a failure.
    std::fs::remove_file(dir.path("shard-2.json")).unwrap();
    std::fs::remove_file(&merged_path).unwrap();
    let (code, stdout, stderr) = run(&["merge", dir.0.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("shards 2 of 4 are missing"), "{stderr}");
    assert!(stdout.contains("MISSING shards 2"), "{stdout}");
}

pub fn humantime_parse(s: &str) -> SystemTime {
    // RFC 3339 with microseconds, UTC: 2026-12-01T19:00:00.123456Z.
    let (date, time) = s.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<u64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, dd) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe - 719_468) as u64;
    let micros: u64 = format!("{frac:0<6}")[..6].parse().unwrap();
    SystemTime::UNIX_EPOCH
        + Duration::from_secs(days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2])
        + Duration::from_micros(micros)
}

#[test]
fn a_failed_threshold_exits_99_after_the_full_report_in_every_format() {
    let m = Mosquitto::start();
    let dir = TempDir::new("thresholds");
    let config = dir.path("ci.toml");
    std::fs::write(
        &config,
        "threshold = [\"ack_latency_p99<1h\", \"points_failed==0\", \"point_rate>=1G\"]\n",
    )
    .unwrap();
    let (csv, md) = (dir.path("r.csv"), dir.path("r.md"));
    let out = publish(&[
        "--broker",
        &m.url(),
        "--config",
        config.to_str().unwrap(),
        "--qos",
        "1",
        "--total",
        "2000",
        "--rate",
        "max",
        "--report-csv",
        csv.to_str().unwrap(),
        "--report-md",
        md.to_str().unwrap(),
        "--quiet",
    ]);
    out.assert_code(99);
    let r = out.report();
    assert_matches_schema("schema/publisher-report.schema.json", r);
    assert_eq!(n(r, "points_acked"), 2000, "the run itself went through");
    let t = r["thresholds"].as_array().unwrap();
    let verdicts: Vec<(&str, bool)> = t
        .iter()
        .map(|t| (t["expr"].as_str().unwrap(), t["pass"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("ack_latency_p99<1h", true),
            ("points_failed==0", true),
            ("point_rate>=1G", false)
        ],
        "the config file's, in order"
    );
    assert!(out.stdout.contains("FAIL point_rate>=1G"), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("thresholds failed: point_rate>=1G (was "),
        "{}",
        out.stderr
    );
    let csv = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let row: Vec<&str> = lines[1].split(',').collect();
    let col = header.iter().position(|h| *h == "points_acked").unwrap();
    assert_eq!(row[col], "2000");
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.starts_with("### ❌ FAIL: `loadgen pub` — threshold `point_rate>=1G` failed"),
        "{md}"
    );
    assert!(
        md.contains("| `point_rate` | &gt;= 1,000,000,000 points/s | "),
        "{md}"
    );
    assert!(
        md.contains("| points | 2,000 sent, 2,000 acknowledged"),
        "{md}"
    );
}

#[test]
fn bad_thresholds_shards_and_start_times_are_usage_errors_that_say_what_to_change() {
    let cases: [(&[&str], &str); 13] = [
        (
            &["--threshold", "ack_p99<5ms"],
            "unknown field 'ack_p99'; the fields are: point_rate",
        ),
        (
            &["--threshold", "ack_latency_p99<5"],
            "give the time a unit",
        ),
        (
            &["--shards", "4", "--shard", "4", "--devices", "8"],
            "shard 4 is not one of --shards 4",
        ),
        (
            &["--shards", "5", "--shard", "0", "--devices", "4"],
            "more than the fleet's 4 connections",
        ),
        (&["--shard", "1"], "--shard needs --shards N"),
        (
            &["--shards", "100001", "--shard", "0", "--devices", "200k"],
            "more than a run can have (100,000",
        ),
        (&["--start-at", "2020-01-01T00:00:00Z"], "passed"),
        (
            &["--start-at", "2099-01-01T00:00:00+01:00"],
            "more than a day",
        ),
        (&["--start-at", "tomorrow"], "is not a time"),
        // What a failed `date` leaves: no silent "no barrier".
        (&["--start-at", ""], "is empty"),
        (&["--start-at", "  "], "is empty"),
        // A source address of the wrong family, or one no connection can come from.
        (&["--source-ip", "::1"], "is IPv6 and broker"),
        (
            &["--source-ip", "224.0.0.1"],
            "multicast, broadcast or unspecified",
        ),
    ];
    for (args, want) in cases {
        let (code, _, stderr) = run(&[&["pub", "--broker", "mqtt://127.0.0.1:1"], args].concat());
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
    // The same through the environment, named by its variable.
    let out = Command::new(BIN)
        .args(["pub", "--broker", "mqtt://127.0.0.1:1"])
        .env("LOADGEN_START_AT", "")
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("LOADGEN_START_AT") && stderr.contains("is empty"),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["pub", "--shards", "2", "--devices", "2"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("give --shard I (0 to N-1) or set JOB_COMPLETION_INDEX"),
        "{stderr}"
    );
}

#[test]
fn a_share_groups_members_merge_into_one_proof_of_delivery() {
    let m = Mosquitto::start();
    let url = m.url();
    let member = || {
        backend(&[
            "--broker",
            &url,
            "--share-group",
            "g",
            "--report-devices",
            "--idle-timeout",
            "3s",
            "--qos",
            "1",
        ])
    };
    let (a, b) = (member(), member());
    let out = publish(&[
        "--broker",
        &url,
        "--devices",
        "20",
        "--qos",
        "1",
        "--rate",
        "4000",
        "--batch",
        "1",
        "--total",
        "6000",
        "--quiet",
    ]);
    out.assert_code(0);
    let (ca, ra) = a.wait();
    let (cb, rb) = b.wait();
    assert_eq!((ca, cb), (0, 0), "{ra:#}\n{rb:#}");
    let (got_a, got_b) = (n(&ra, "points_unique"), n(&rb, "points_unique"));
    assert!(
        got_a > 0 && got_b > 0,
        "both members got a share: {got_a}, {got_b}"
    );
    assert!(
        ra["points_missing"].is_null(),
        "a member alone cannot tell what is missing"
    );

    let dir = TempDir::new("share-merge");
    let (pa, pb, merged) = (
        dir.path("a.json"),
        dir.path("b.json"),
        dir.path("merged.json"),
    );
    std::fs::write(&pa, ra.to_string()).unwrap();
    std::fs::write(&pb, rb.to_string()).unwrap();
    let (code, stdout, stderr) = run(&[
        "merge",
        "--expect",
        "6000",
        "--threshold",
        "points_missing==0",
        "--report-json",
        merged.to_str().unwrap(),
        pa.to_str().unwrap(),
        pb.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let r = read(&merged);
    assert_matches_schema("schema/backend-report.schema.json", &r);
    assert_eq!(n(&r, "points_unique"), 6000);
    assert_eq!(n(&r, "points_missing"), 0);
    assert_eq!(n(&r, "points_duplicate"), 0);
    assert_eq!(n(&r, "points_received"), got_a + got_b);
    assert_eq!(n(&r, "devices_seen"), 20);
    assert_eq!(
        n(&r["latency_us"], "count"),
        6000,
        "the members' histograms, added"
    );
    assert!(
        stdout.contains("every point arrived exactly once"),
        "{stdout}"
    );

    // One member alone: the other's points are missing, and the merge says so.
    let (code, stdout, stderr) = run(&["merge", "--expect", "6000", pa.to_str().unwrap()]);
    assert_eq!(code, 5, "{stdout}\n{stderr}");
    assert!(stdout.contains("no member received "), "{stdout}");
    let want = format!(
        "expected 6,000 unique points over the group, {} arrived",
        fmt(got_a)
    );
    assert!(stdout.contains(&want), "{stdout}");
}

fn fmt(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn a_bad_job_completion_index_is_a_usage_error() {
    let out = Command::new(BIN)
        .args([
            "pub",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--shards",
            "4",
            "--devices",
            "8",
        ])
        .env("JOB_COMPLETION_INDEX", "three")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JOB_COMPLETION_INDEX 'three' is not a shard index"),
        "{err}"
    );
}

#[test]
fn an_export_to_stdout_moves_the_summary_to_stderr_and_start_at_now_starts_at_once() {
    let m = Mosquitto::start();
    let (code, stdout, stderr) = run(&[
        "pub",
        "--broker",
        &m.url(),
        "--total",
        "500",
        "--rate",
        "max",
        "--quiet",
        "--start-at",
        "now",
        "--report-csv",
        "-",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "only the CSV on stdout: {stdout}");
    assert!(lines[0].starts_with("schema_version,"), "{stdout}");
    assert!(stderr.contains("== loadgen pub summary"), "{stderr}");
    assert!(!stderr.contains("waiting"), "{stderr}");
}

#[test]
fn backend_sub_thresholds_fail_with_exit_99_after_a_verified_run() {
    let m = Mosquitto::start();
    let b = backend(&[
        "--broker",
        &m.url(),
        "--expect",
        "300",
        "--threshold",
        "points_missing==0",
        "--threshold",
        "points_unique>=1k",
        "--threshold",
        "verified==true",
    ]);
    let out = publish(&[
        "--broker",
        &m.url(),
        "--total",
        "300",
        "--qos",
        "1",
        "--quiet",
    ]);
    out.assert_code(0);
    let (code, r) = b.wait();
    assert_eq!(code, 99, "{r:#}");
    assert_matches_schema("schema/backend-report.schema.json", &r);
    assert_eq!(r["verified"], true, "the run itself verified");
    let pass: Vec<bool> = r["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["pass"].as_bool().unwrap())
        .collect();
    assert_eq!(pass, [true, false, true]);
}
