//! Live figures: a real Prometheus scrapes a running publisher and its values read back
//! through the query API; the exposition passes `promtool check metrics`; the HdrHistogram
//! interval log has one interval a second that add up to the report's histogram.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use test_support::{
    free_port, http_get, promtool_check_metrics, sample, Mosquitto, Prometheus, Pushgateway,
    TempDir,
};

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
            if sample(&body, "loadgen_connections_up", &[]) == Some(10.0) {
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
    assert_eq!(
        sample(&backend_body, "loadgen_backend_connected", &[]),
        Some(1.0),
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
        "tool=\"loadgen pub\"",
    ] {
        assert!(body.contains(family), "{family} in\n{body}");
    }
    assert!(
        sample(
            &body,
            "loadgen_ack_latency_seconds_bucket",
            &["le=\"+Inf\""]
        )
        .is_some(),
        "{body}"
    );

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

    // What Prometheus stored, through its query API: the final figures, scraped during the
    // linger after the run.
    let q = |expr: &str| {
        prom.query(expr)
            .unwrap_or_else(|| panic!("no result for {expr}"))
    };
    let scraped = q("max_over_time(loadgen_points_sent_total[5m])");
    assert_eq!(scraped, sent as f64, "scrapes missed the end");
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
    assert_eq!(
        received,
        n(&br, "points_received") as f64,
        "the backend's end"
    );
    assert_eq!(
        q(&format!(
            "max_over_time(loadgen_run_finished{{instance=\"{backend_addr}\"}}[5m])"
        )),
        1.0,
        "the backend's end"
    );
    assert_eq!(
        q(&format!(
            "max_over_time(loadgen_run_finished{{instance=\"{addr}\"}}[5m])"
        )),
        1.0
    );
    assert_eq!(q("max_over_time(loadgen_backend_points_missing[5m])"), 0.0);
    let e2e = q("max_over_time(loadgen_backend_e2e_latency_seconds_count[5m])");
    assert!(e2e > 0.0 && e2e <= sent as f64, "{e2e}");
    // The backend's one connect and one subscription, phase by phase.
    for family in [
        "loadgen_tcp_connect_seconds",
        "loadgen_connack_seconds",
        "loadgen_suback_seconds",
    ] {
        assert_eq!(
            q(&format!(
                "max_over_time({family}_count{{instance=\"{backend_addr}\"}}[5m])"
            )),
            1.0,
            "{family}"
        );
    }
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

/// A `loadgen pub` whose stderr lines come through a channel.
struct Running {
    child: std::process::Child,
    stderr: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        use std::io::BufRead;
        let mut child = Command::new(BIN)
            .arg("pub")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running {
            child,
            stderr: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line that starts with `prefix`.
    fn wait_for_line(&mut self, prefix: &str, within: Duration) -> String {
        let end = Instant::now() + within;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no line '{prefix}...' on stderr: {:#?}", self.seen);
    }

    /// The exit code, within `within`.
    fn exit_within(&mut self, within: Duration) -> Option<i32> {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        None
    }
}

fn report_at(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the report is written"))
        .expect("the report is JSON")
}

#[test]
fn the_final_figures_are_served_until_the_linger_ends() {
    let m = Mosquitto::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let dir = TempDir::new("linger");
    let report = dir.path("report.json");
    let mut run = Running::start(&[
        "--broker",
        &m.url(),
        "--devices",
        "4",
        "--qos",
        "1",
        "--rate",
        "400",
        "--duration",
        "1s",
        "--metrics-addr",
        &addr,
        "--metrics-linger",
        "5m",
        "--report-json",
        report.to_str().unwrap(),
    ]);
    let said = run.wait_for_line("serving the final metrics", Duration::from_secs(30));
    assert!(said.contains(&format!("http://{addr}/metrics")), "{said}");
    // The report is out before the linger, and the metrics are its figures, final.
    let r = report_at(&report);
    let run_id = r["run_id"].as_str().expect("run_id").to_string();
    let (status, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let label = format!("run=\"{run_id}\"");
    assert_eq!(
        sample(&body, "loadgen_run_finished", &[&label]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "loadgen_points_acked_total", &[&label]),
        Some(n(&r, "points_acked") as f64),
        "{body}"
    );
    assert!(run.child.try_wait().unwrap().is_none(), "it lingers");
    // A signal ends the linger at once; the run's exit code stands.
    let pid = run.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert_eq!(run.exit_within(Duration::from_secs(5)), Some(0));
}

#[test]
fn prometheus_reads_the_end_of_a_run_during_the_default_linger() {
    let m = Mosquitto::start();
    let addr = format!("127.0.0.1:{}", free_port());
    let prom = Prometheus::start(std::slice::from_ref(&addr));
    let dir = TempDir::new("linger-prom");
    let report = dir.path("report.json");
    let out = Command::new(BIN)
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
            "--duration",
            "3s",
            "--quiet",
            "--run-id",
            "linger-test",
            "--metrics-addr",
            &addr,
            "--report-json",
        ])
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report_at(&report);
    assert_eq!(r["run_id"], "linger-test");
    let acked = n(&r, "points_acked");
    assert!(acked >= 5_900, "{acked}");
    // What Prometheus stored of the run, by its label: the end, and the final count.
    let q = |expr: &str| prom.query(expr);
    assert_eq!(
        q("max_over_time(loadgen_run_finished{run=\"linger-test\"}[5m])"),
        Some(1.0)
    );
    assert_eq!(
        q("max_over_time(loadgen_points_acked_total{run=\"linger-test\"}[5m])"),
        Some(acked as f64)
    );
}

#[test]
fn the_final_figures_are_pushed_to_a_pushgateway_under_the_runs_group() {
    let m = Mosquitto::start();
    let gw = Pushgateway::start();
    let dir = TempDir::new("push");
    let report = dir.path("report.json");
    let child = Command::new(BIN)
        .args([
            "pub",
            "--broker",
            &m.url(),
            "--devices",
            "4",
            "--qos",
            "1",
            "--rate",
            "400",
            "--duration",
            "1s",
            "--quiet",
            "--run-id",
            "nightly 7/12",
            "--metrics-push",
            &gw.url(),
            "--report-json",
        ])
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let r = report_at(&report);
    assert!(n(&r, "metrics_pushes") >= 1, "{r:#}");
    assert_eq!(n(&r, "metrics_push_failures"), 0);
    // Grouped by job, run (a value a path segment would not keep, base64 on the way) and
    // instance host:pid.
    let body = gw.metrics();
    let labels = ["job=\"loadgen\"", "run=\"nightly 7/12\""];
    assert_eq!(
        sample(&body, "loadgen_run_finished", &labels),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "loadgen_points_acked_total", &labels),
        Some(n(&r, "points_acked") as f64),
        "{body}"
    );
    let instance = body
        .lines()
        .find(|l| l.starts_with("loadgen_run_finished{"))
        .and_then(|l| l.split("instance=\"").nth(1))
        .and_then(|i| i.split('"').next())
        .unwrap_or_default();
    assert!(
        instance.ends_with(&format!(":{pid}")),
        "{instance} in\n{body}"
    );
}

#[test]
fn a_push_to_a_gateway_that_never_answers_is_a_counted_warning_not_a_hang() {
    let m = Mosquitto::start();
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let dir = TempDir::new("push-fail");
    let report = dir.path("report.json");
    let started = Instant::now();
    let out = Command::new(BIN)
        .args([
            "pub",
            "--broker",
            &m.url(),
            "--total",
            "100",
            "--quiet",
            "--metrics-push",
            &url,
            "--report-json",
        ])
        .arg(&report)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("warning: --metrics-push: the final figures were not pushed: no answer"),
        "{stderr}"
    );
    let r = report_at(&report);
    assert!(n(&r, "metrics_push_failures") >= 1, "{r:#}");
    drop(silent);
}

#[test]
fn a_push_url_that_is_not_http_is_a_usage_error() {
    for (url, says) in [
        ("https://gw:9091", "https is not supported"),
        ("gw:9091", "is not an http:// URL"),
    ] {
        let out = Command::new(BIN)
            .args([
                "pub",
                "--broker",
                "mqtt://127.0.0.1:1",
                "--metrics-push",
                url,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && err.lines().count() == 1, "{err}");
    }
}

#[test]
fn the_dashboard_filters_every_query_by_run_and_instance() {
    let dashboard =
        std::fs::read_to_string(test_support::workspace_root().join("deploy/grafana/loadgen.json"))
            .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"run") && vars.contains(&"instance"),
        "{vars:?}"
    );
    let mut exprs = Vec::new();
    collect_exprs(&dashboard["panels"], &mut exprs);
    for e in &exprs {
        for name in metric_names(e) {
            let filtered = format!("{name}{{run=~\"$run\",instance=~\"$instance\"}}");
            assert!(e.contains(&filtered), "{name} is not filtered in {e}");
        }
    }
}
