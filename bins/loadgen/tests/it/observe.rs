//! Live figures: a real Prometheus scrapes a running publisher and its values read back
//! through the query API; the exposition passes `promtool check metrics`; the HdrHistogram
//! interval log has one interval a second that add up to the report's histogram.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use test_support::{free_port, http_get, promtool_check_metrics, Mosquitto, Prometheus, TempDir};

use crate::common::{backend, n, BIN};

#[test]
fn prometheus_scrapes_a_running_publisher_and_backend_and_reads_back_their_counts() {
    let m = Mosquitto::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let backend_addr = format!("127.0.0.1:{}", free_port());
    let prom = Prometheus::start(&[addr.clone(), backend_addr.clone()]);
    let dir = TempDir::new("observe");
    let backend_hdr = dir.path("backend.hlog");
    let b = backend(&[
        "--broker",
        &m.url(),
        "--idle-timeout",
        "2s",
        "--metrics-addr",
        &backend_addr,
        "--hdr-log",
        backend_hdr.to_str().unwrap(),
    ]);
    let (report, hdr) = (dir.path("report.json"), dir.path("latency.hlog"));
    let child = Command::new(BIN)
        .args([
            "pub",
            "--broker",
            &m.url(),
            "--devices",
            "10",
            "--qos",
            "1",
            "--rate",
            "2000",
            "--batch",
            "1",
            "--duration",
            "6s",
            "--quiet",
            "--metrics-addr",
            &addr,
        ])
        .arg("--report-json")
        .arg(&report)
        .arg("--hdr-log")
        .arg(&hdr)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Mid-run: the exposition as a scraper sees it, checked by promtool.
    let end = Instant::now() + Duration::from_secs(10);
    let body = loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Ok((200, body)) = http_get(&addr, "/metrics") {
            if body.contains("loadgen_connections_up 10") {
                break body;
            }
        }
        assert!(Instant::now() < end, "no metrics with every connection up");
    };
    let (ok, said) = promtool_check_metrics(&body);
    assert!(ok, "promtool check metrics: {said}\n{body}");
    let (status, backend_body) = http_get(&backend_addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let (ok, said) = promtool_check_metrics(&backend_body);
    assert!(ok, "promtool check metrics: {said}\n{backend_body}");
    assert!(
        backend_body.contains("loadgen_backend_connected 1"),
        "{backend_body}"
    );
    // The Grafana dashboard asks only for what the tools serve.
    let dashboard =
        std::fs::read_to_string(test_support::workspace_root().join("deploy/grafana/loadgen.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 8, "{exprs:?}");
    for e in &exprs {
        for name in metric_names(e) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            let declared = format!("# TYPE {family} ");
            assert!(
                body.contains(&declared) || backend_body.contains(&declared),
                "the dashboard's {name} (in {e}) is not served"
            );
        }
    }
    for family in [
        "loadgen_points_sent_total",
        "loadgen_points_acked_total",
        "loadgen_points_failed_total",
        "loadgen_points_dropped_total",
        "loadgen_messages_sent_total",
        "loadgen_messages_inflight",
        "loadgen_ack_latency_seconds_bucket{le=\"+Inf\"}",
        "loadgen_info{tool=\"loadgen pub\"",
    ] {
        assert!(body.contains(family), "{family} in\n{body}");
    }

    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let sent = n(&r, "points_sent");
    assert!(
        (11_900..=12_000).contains(&sent),
        "{sent} points in 6 s at 2,000/s"
    );

    // What Prometheus stored, through its query API. The last scrape was up to a second
    // before the end; the run sent 2,000 points a second.
    let q = |expr: &str| {
        prom.query(expr)
            .unwrap_or_else(|| panic!("no result for {expr}"))
    };
    let scraped = q("max_over_time(loadgen_points_sent_total[5m])");
    assert!(scraped <= sent as f64, "{scraped} > {sent}");
    assert!(
        scraped >= sent as f64 - 4_000.0,
        "{scraped} of {sent}: scrapes missed"
    );
    assert_eq!(q("max_over_time(loadgen_connections_up[5m])"), 10.0);
    let acked = q("max_over_time(loadgen_ack_latency_seconds_count[5m])");
    assert!(
        acked > 0.0 && acked <= n(&r, "messages_acked") as f64,
        "{acked}"
    );
    let p99 = q("histogram_quantile(0.99, max_over_time(loadgen_ack_latency_seconds_bucket[5m]))");
    assert!(p99 > 0.0 && p99 < 10.0, "p99 {p99} s");
    let (code, br) = b.wait();
    assert_eq!(code, 0, "{br:#}");
    let received = q("max_over_time(loadgen_backend_points_received_total[5m])");
    assert!(
        received > 0.0 && received <= n(&br, "points_received") as f64,
        "{received}"
    );
    assert_eq!(q("max_over_time(loadgen_backend_points_missing[5m])"), 0.0);
    let e2e = q("max_over_time(loadgen_backend_e2e_latency_seconds_count[5m])");
    assert!(e2e > 0.0 && e2e <= sent as f64, "{e2e}");
    let scrapes = q("count_over_time(loadgen_points_sent_total[5m])");
    assert!(
        scrapes >= 4.0,
        "{scrapes} scrapes of a 6 s run, one a second"
    );

    // The interval log: HdrHistogram's own iterator reads it, one interval a second for
    // each tag, adding up to the report's counts exactly.
    let text = std::fs::read(&hdr).unwrap();
    let (mut ack, mut ack_intervals, mut lag) = (0u64, 0, 0u64);
    for e in IntervalLogIterator::new(&text) {
        if let LogEntry::Interval(i) = e.expect("a well-formed log") {
            let bytes = crate::shards::base64_decode(i.encoded_histogram());
            let h: hdrhistogram::Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .unwrap();
            match i.tag().map(|t| t.as_str()) {
                Some("ack") => {
                    ack += h.len();
                    ack_intervals += 1;
                    assert!(
                        i.duration() <= Duration::from_millis(1500),
                        "{:?}",
                        i.duration()
                    );
                }
                Some("lag") => lag += h.len(),
                other => panic!("tag {other:?}"),
            }
        }
    }
    assert_eq!(ack, n(&r["latency_us"], "count"));
    assert_eq!(lag, n(&r["schedule_lag_us"], "count"));
    assert!(
        (6..=9).contains(&ack_intervals),
        "{ack_intervals} intervals for a 6 s run"
    );
    let (e2e, intervals) = log_counts(&backend_hdr, "e2e");
    assert_eq!(
        e2e,
        n(&br["latency_us"], "count"),
        "the backend's log adds up to its report"
    );
    assert!(intervals >= 6, "{intervals}");
}

/// Samples and intervals of `tag` in the interval log at `path`.
fn log_counts(path: &std::path::Path, tag: &str) -> (u64, u64) {
    let text = std::fs::read(path).unwrap();
    let (mut count, mut intervals) = (0, 0);
    for e in IntervalLogIterator::new(&text) {
        if let LogEntry::Interval(i) = e.expect("a well-formed log") {
            assert_eq!(i.tag().map(|t| t.as_str()), Some(tag));
            let bytes = crate::shards::base64_decode(i.encoded_histogram());
            let h: hdrhistogram::Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .unwrap();
            count += h.len();
            intervals += 1;
        }
    }
    (count, intervals)
}

#[test]
fn a_metrics_address_in_use_is_a_usage_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args([
            "pub",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--metrics-addr",
            &addr,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot be listened on") && err.lines().count() == 1,
        "{err}"
    );
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The `loadgen_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("loadgen_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        names.push(expr[start..end].to_string());
        i = end;
    }
    names
}
