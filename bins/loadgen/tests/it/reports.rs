//! The reports people read: the Markdown summary of `--report-md` (a CI step summary),
//! the text summary's lines and the progress line, on real runs of `loadgen pub` and
//! `loadgen merge`.

use std::process::{Command, Stdio};

use test_support::{Mosquitto, TempDir};

use crate::common::{n, publish, BIN};

/// Markdown rows of a report's field dump, as `--report-md` wrote before it was a summary.
const FIELD_DUMP: [&str; 3] = ["| field | value |", "latency_us", "points_acked"];

#[test]
fn the_markdown_summary_of_a_failed_run_leads_with_the_failed_threshold_in_ms() {
    let m = Mosquitto::start();
    let dir = TempDir::new("md-failed");
    let md = dir.path("summary.md");
    let out = publish(&[
        "--broker",
        &m.url(),
        "--qos",
        "1",
        "--total",
        "2000",
        "--rate",
        "2000",
        "--threshold",
        "ack_latency_p99<1us",
        "--threshold",
        "points_failed==0",
        "--report-md",
        md.to_str().unwrap(),
        "--quiet",
    ]);
    out.assert_code(99);
    let md = std::fs::read_to_string(&md).unwrap();
    let first = md.lines().next().unwrap();
    assert!(
        first.starts_with(
            "### ❌ FAIL: `loadgen pub` — threshold `ack_latency_p99<1us` failed: the run had "
        ) && first.ends_with(" ms"),
        "{md}"
    );
    assert!(
        md.contains("| `ack_latency_p99` | &lt; 0.001 ms | "),
        "the limit in ms: {md}"
    );
    assert!(md.contains(" ms | ❌ fail |"), "the value in ms: {md}");
    assert!(
        md.contains("| `points_failed` | == 0 | 0 | ✅ pass |"),
        "{md}"
    );
    assert!(
        md.contains("| points | 2,000 sent, 2,000 acknowledged, 0 lost"),
        "{md}"
    );
    assert!(md.contains("| ack latency | p50 "), "{md}");
    assert!(md.contains("**Generator:** behind schedule p99 "), "{md}");
    for dump in FIELD_DUMP {
        assert!(!md.contains(dump), "no field dump ({dump}): {md}");
    }
    assert!(md.lines().count() < 30, "short: {md}");
    // The full field list stays in the JSON.
    assert_eq!(n(out.report(), "points_acked"), 2000);
}

#[test]
fn the_markdown_summary_of_a_passing_run_says_pass_and_what_was_delivered() {
    let dir = TempDir::new("md-passed");
    let md = dir.path("summary.md");
    let out = publish(&[
        "--broker",
        "embedded",
        "--embedded-linger",
        "0s",
        "--qos",
        "1",
        "--total",
        "1000",
        "--rate",
        "max",
        "--threshold",
        "ack_latency_p99<1h",
        "--report-md",
        md.to_str().unwrap(),
        "--quiet",
    ]);
    out.assert_code(0);
    let md = std::fs::read_to_string(&md).unwrap();
    assert!(
        md.starts_with(
            "### ✅ PASS: `loadgen pub` — 1,000 points sent, 1,000 acknowledged; its threshold passed\n"
        ),
        "{md}"
    );
    assert!(md.contains("| `ack_latency_p99` | &lt; 3,600 s | "), "{md}");
    assert!(md.contains(" ms | ✅ pass |"), "{md}");
    assert!(
        md.contains("measures queueing in the generator"),
        "an unpaced QoS 1 run says what its latency measures: {md}"
    );
}

#[test]
fn an_unpaced_qos1_run_says_its_latency_measures_queueing_in_the_generator() {
    let unpaced = publish(&[
        "--broker",
        "embedded",
        "--embedded-linger",
        "0s",
        "--qos",
        "1",
        "--total",
        "500",
        "--rate",
        "max",
        "--quiet",
    ]);
    unpaced.assert_code(0);
    assert!(
        unpaced
            .stdout
            .contains("the ack latency from the scheduled time measures queueing in the generator"),
        "{}",
        unpaced.stdout
    );
    let paced = publish(&[
        "--broker",
        "embedded",
        "--embedded-linger",
        "0s",
        "--qos",
        "1",
        "--total",
        "500",
        "--rate",
        "5000",
        "--quiet",
    ]);
    paced.assert_code(0);
    assert!(!paced.stdout.contains("queueing"), "{}", paced.stdout);
}

#[test]
fn the_rate_after_the_ramp_leaves_out_the_start_delay() {
    // 1,000 points/s for 3 s after a 2 s --start-delay: counted from the end of the ramp,
    // the rate would be about 3,000 points over 5 s.
    let out = publish(&[
        "--broker",
        "embedded",
        "--embedded-linger",
        "0s",
        "--devices",
        "4",
        "--qos",
        "1",
        "--rate",
        "1000",
        "--duration",
        "3s",
        "--start-delay",
        "2s",
        "--quiet",
    ]);
    out.assert_code(0);
    let r = out.report();
    let steady = r["steady_point_rate"].as_f64().unwrap();
    assert!(
        steady > 850.0 && steady < 1100.0,
        "{steady}\n{}",
        out.stdout
    );
    assert!(out.stdout.contains("after the ramp"), "{}", out.stdout);
}

#[test]
fn a_duration_run_shows_the_time_it_has_left_in_its_progress() {
    let out = Command::new(BIN)
        .args([
            "pub",
            "--broker",
            "embedded",
            "--embedded-linger",
            "0s",
            "--rate",
            "100",
            "--duration",
            "3s",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let progress: Vec<&str> = stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert!(!progress.is_empty(), "{stderr}");
    assert!(progress.iter().all(|l| l.ends_with(" s left")), "{stderr}");
    // Seconds left, rounded up: at most the duration, never growing.
    let left: Vec<u64> = progress
        .iter()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words[words.len() - 3].parse().unwrap()
        })
        .collect();
    assert!(
        left.iter().all(|s| *s <= 3) && left.windows(2).all(|w| w[1] <= w[0]),
        "{left:?}"
    );
}

#[test]
fn the_markdown_summary_of_a_merge_with_missing_shards_fails_and_names_them() {
    let dir = TempDir::new("md-merge");
    let out = publish(&[
        "--broker",
        "embedded",
        "--embedded-linger",
        "0s",
        "--devices",
        "3",
        "--qos",
        "1",
        "--total",
        "300",
        "--rate",
        "3000",
        "--shards",
        "3",
        "--shard",
        "0",
        "--quiet",
    ]);
    out.assert_code(0);
    let shard = dir.path("shard-0.json");
    std::fs::write(&shard, out.report().to_string()).unwrap();
    let md = dir.path("merged.md");
    let merged = Command::new(BIN)
        .args(["merge", "--report-md", md.to_str().unwrap()])
        .args(["--threshold", "ack_latency_max<1h"])
        .arg(&shard)
        .env_remove("LOADGEN_THRESHOLD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(merged.status.code(), Some(1));
    let md = std::fs::read_to_string(&md).unwrap();
    let first = md.lines().next().unwrap();
    assert!(
        first.starts_with("### ❌ FAIL: `loadgen pub` — incomplete: shards 1-2 of 3 are missing"),
        "{md}"
    );
    assert!(
        md.contains("| merged | 1 reports, shards 0 of 3; MISSING shards 1-2 (2) |"),
        "{md}"
    );
    assert!(md.contains("| `ack_latency_max` | &lt; 3,600 s | "), "{md}");
}

#[test]
fn the_markdown_summary_of_a_merged_share_group_leads_with_its_verification() {
    let dir = TempDir::new("md-merge-members");
    let member = dir.path("member.json");
    std::fs::write(&member, crate::merge::member_report().to_string()).unwrap();
    let md = dir.path("merged.md");
    let merged = Command::new(BIN)
        .args([
            "merge",
            "--expect",
            "300",
            "--report-md",
            md.to_str().unwrap(),
        ])
        .args(["--threshold", "e2e_latency_p99<1us"])
        .arg(&member)
        .env_remove("LOADGEN_THRESHOLD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_ne!(merged.status.code(), Some(0));
    let md = std::fs::read_to_string(&md).unwrap();
    let first = md.lines().next().unwrap();
    assert!(
        first.contains(
            " — verification failed: expected 300 unique points over the group, 200 arrived"
        ),
        "{md}"
    );
    assert!(
        first.contains("; threshold `e2e_latency_p99<1us` failed: the run had "),
        "{md}"
    );
    assert!(
        md.contains("| `e2e_latency_p99` | &lt; 0.001 ms | "),
        "{md}"
    );
    assert!(
        md.contains("| merged | 1 reports of the share group's members |"),
        "{md}"
    );
}
