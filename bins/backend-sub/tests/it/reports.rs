//! The reports people read: the Markdown summary of `--report-md`, the text summary's
//! routing lines (only when a point was routed) and the progress line's time left.

use std::process::Command;

use test_support::{workspace_bin, Mosquitto, TempDir};

use crate::common::{n, start};

fn publish(url: &str, args: &[&str]) {
    let st = Command::new(workspace_bin("frontend1-pub"))
        .args(["--broker", url, "--qos", "1", "--rate", "0", "--quiet"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run frontend1-pub");
    assert!(st.success());
}

#[test]
fn points_no_route_matched_leave_the_routing_lines_out_of_the_summaries() {
    let m = Mosquitto::start();
    let dir = TempDir::new("backend-md");
    let md = dir.path("summary.md");
    let backend = start(&[
        "--broker",
        &m.url(),
        "--expect",
        "2000",
        "--idle-timeout",
        "5s",
        "--quiet",
        "--threshold",
        "e2e_latency_p99<1us",
        "--threshold",
        "point_rate>0",
        "--report-md",
        md.to_str().unwrap(),
    ]);
    publish(
        &m.url(),
        &[
            "--device-id",
            "sensor-7",
            "--total",
            "1000",
            "--batch",
            "100",
        ],
    );
    let out = backend.wait();
    out.assert_code(99);
    assert_eq!(n(&out.report, "points_unrouted"), 1000, "still in the JSON");
    // The seed's routes (frontend1, frontend2) matched nothing: no line on them.
    for routing in ["unrouted", "frontend"] {
        assert!(!out.stdout.contains(routing), "{}", out.stdout);
    }
    let md = std::fs::read_to_string(&md).unwrap();
    let first = md.lines().next().unwrap();
    assert!(
        first.starts_with(
            "### ❌ FAIL: `backend-sub` — verification failed: expected 2,000 unique points, 1,000 arrived"
        ),
        "{md}"
    );
    assert!(
        first.contains("; threshold `e2e_latency_p99<1us` failed: the run had "),
        "{md}"
    );
    assert!(
        md.contains("| `e2e_latency_p99` | &lt; 0.001 ms | "),
        "the limit in ms: {md}"
    );
    assert!(md.contains("| `point_rate` | &gt; 0 points/s | "), "{md}");
    assert!(
        md.contains("| points | 1,000 received, 1,000 unique of 2,000 expected, 0 missing"),
        "{md}"
    );
    assert!(md.contains("| e2e latency | p50 "), "{md}");
    assert!(!md.contains("frontend"), "{md}");
    assert!(!md.contains("unrouted"), "{md}");
}

#[test]
fn routed_points_keep_their_frontend_lines() {
    let m = Mosquitto::start();
    let backend = start(&[
        "--broker",
        &m.url(),
        "--expect",
        "1000",
        "--idle-timeout",
        "5s",
        "--quiet",
    ]);
    publish(&m.url(), &["--total", "1000", "--batch", "100"]);
    let out = backend.wait();
    out.assert_code(0);
    assert!(
        out.stdout
            .contains("frontend1: 1,000 points from frontend1_ultra_high_perf_device"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("frontend2: no points"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_duration_run_shows_the_time_it_has_left_in_its_progress() {
    let m = Mosquitto::start();
    let backend = start(&["--broker", &m.url(), "--duration", "3s"]);
    let out = backend.wait();
    let progress: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with('[')).collect();
    assert!(!progress.is_empty(), "{}", out.stderr);
    assert!(
        progress.iter().all(|l| l.ends_with(" s left")),
        "{}",
        out.stderr
    );
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
