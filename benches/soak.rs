//! The soak (scenario S7, full bench only, never in the CI gate): ten minutes of a 5,000-device
//! QoS 1 fleet (`loadgen pub --devices 5000 --rate-per-device 1 --qos 1 --duration 10m`)
//! through a Mosquitto started here, with `backend-sub --expect 3M` verifying every point.
//!
//! Every 10 s (on an absolute schedule) the bench reads each process's resident memory
//! (VmRSS) and CPU time from /proc, and its counters from its `--metrics-addr` endpoint
//! (points acknowledged by the broker; points received by backend-sub), and prints the
//! series. It passes when, for both processes, memory after the first minute stays within
//! 10% (highest sample over lowest), the rate after the first minute is within 0.5% of the
//! 5,000 points/s asked (from the counters, for both, and the publisher's own after-ramp
//! rate), and every point is verified: backend-sub exits 0 with 3,000,000 unique points and
//! the publisher's 3,000,000 planned points are all acknowledged.
//!
//! `cargo bench -p loadgen-benches --bench soak` (about 11 minutes); `--json PATH` writes
//! `soak.json` beside PATH (default `target/bench/soak.json`); `--gate` exits 1 on a failed
//! check; `--duration SECS` shortens the run (to try the bench out; the checks need more than a
//! minute). With `--quick` it does nothing: the soak is not a quick check.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::{free_port, Mosquitto, TempDir};

// Only build_release of it is used here.
#[allow(dead_code)]
mod common;

const DEVICES: u64 = 5_000;
const RATE: f64 = DEVICES as f64; // 1 point/s each
/// The run's length, unless `--duration SECS` says otherwise (to try the bench out).
const DURATION_S: u64 = 600;
const SAMPLE: Duration = Duration::from_secs(10);
/// Samples before this are the warm-up: the connect ramp, buffers growing to their size.
const WARM_UP_S: f64 = 60.0;
/// Memory after the warm-up: highest sample over lowest at most this.
const MEMORY_FLAT: f64 = 1.10;
/// Rate after the warm-up: off the asked rate by at most this.
const RATE_ERROR: f64 = 0.005;

/// One reading of both processes.
#[derive(Debug, Clone, Copy)]
struct Sample {
    t: f64,
    pub_rss_mb: f64,
    pub_cpu_s: f64,
    /// Points the broker acknowledged, as the publisher's metrics say.
    pub_acked: Option<u64>,
    sub_rss_mb: f64,
    sub_cpu_s: f64,
    /// Points backend-sub received.
    sub_received: Option<u64>,
}

fn main() {
    let mut quick = false;
    let mut gate = false;
    let mut duration_s = DURATION_S;
    let mut json_path = test_support::workspace_root().join("target/bench/soak.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--gate" => gate = true,
            "--json" => {
                let p = PathBuf::from(args.next().expect("--json PATH"));
                json_path = p.with_file_name("soak.json");
            }
            "--duration" => {
                duration_s = args
                    .next()
                    .and_then(|d| d.parse().ok())
                    .filter(|d| *d > 0)
                    .expect("--duration SECS");
            }
            "--only" => {
                args.next();
            }
            "--bench" => {}
            other => {
                eprintln!("unknown argument {other}; use --gate, --duration SECS, --json PATH");
                std::process::exit(2);
            }
        }
    }
    if quick {
        println!("S7 (the soak) runs in the full bench only");
        return;
    }
    test_support::raise_nofile_limit();
    let dir = common::build_release();
    let broker =
        Mosquitto::start_with(&["max_connections -1".into(), "max_queued_messages 0".into()]);
    let tmp = TempDir::new("soak");
    let (sub_report, pub_report) = (tmp.path("backend.json"), tmp.path("pub.json"));
    let (sub_metrics, pub_metrics) = (free_port(), free_port());
    let expect = (DEVICES * duration_s).to_string();

    let mut sub = Command::new(dir.join("backend-sub"))
        .args(["--broker", &broker.url(), "--topic", "device_data/#"])
        .args(["--qos", "1", "--expect", &expect, "--idle-timeout", "30s"])
        .args(["--metrics-addr", &format!("127.0.0.1:{sub_metrics}")])
        .arg("--quiet")
        .arg("--report-json")
        .arg(&sub_report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backend-sub");
    wait_subscribed(&mut sub);

    let started = Instant::now();
    let mut publisher = Command::new(dir.join("loadgen"))
        .args(["pub", "--broker", &broker.url()])
        .args(["--devices", &DEVICES.to_string(), "--rate-per-device", "1"])
        .args(["--qos", "1", "--duration", &format!("{duration_s}s")])
        .args(["--metrics-addr", &format!("127.0.0.1:{pub_metrics}")])
        .arg("--quiet")
        .arg("--report-json")
        .arg(&pub_report)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("loadgen pub");

    println!("| t s | loadgen pub RSS MB | acked points/s | CPU % | backend-sub RSS MB | received points/s | CPU % |");
    println!("|---|---|---|---|---|---|---|");
    let mut samples: Vec<Sample> = Vec::new();
    // Bounded: the run's duration, its ramp and drain, and a margin.
    let give_up = started + Duration::from_secs(duration_s + 120);
    let mut next = started + SAMPLE;
    let pub_status = loop {
        if let Some(st) = publisher.try_wait().expect("wait loadgen pub") {
            break Some(st);
        }
        if Instant::now() >= give_up {
            break None;
        }
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        next += SAMPLE;
        let s = Sample {
            t: started.elapsed().as_secs_f64(),
            pub_rss_mb: rss_mb(publisher.id()),
            pub_cpu_s: cpu_s(publisher.id()),
            pub_acked: scrape(pub_metrics, "loadgen_points_acked_total"),
            sub_rss_mb: rss_mb(sub.id()),
            sub_cpu_s: cpu_s(sub.id()),
            sub_received: scrape(sub_metrics, "loadgen_backend_points_received_total"),
        };
        print_sample(samples.last(), &s);
        samples.push(s);
    };
    let Some(pub_status) = pub_status else {
        let _ = publisher.kill();
        let _ = sub.kill();
        panic!(
            "loadgen pub still ran {} s after it started",
            duration_s + 120
        );
    };
    let sub_status = wait_within(&mut sub, Duration::from_secs(60));
    let pub_r = read_json(&pub_report);
    let sub_r = read_json(&sub_report);

    let mut failures = Vec::new();
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t >= WARM_UP_S).collect();
    for (who, rss) in [
        (
            "loadgen pub",
            after.iter().map(|s| s.pub_rss_mb).collect::<Vec<_>>(),
        ),
        ("backend-sub", after.iter().map(|s| s.sub_rss_mb).collect()),
    ] {
        let (lo, hi) = rss
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), r| (a.min(*r), b.max(*r)));
        if rss.is_empty() || hi > lo * MEMORY_FLAT {
            failures.push(format!(
                "{who}: RSS after the first minute {lo:.1}..{hi:.1} MB, more than {:.0}% apart",
                (MEMORY_FLAT - 1.0) * 100.0
            ));
        }
    }
    for (who, counts) in [
        (
            "loadgen pub (acknowledged)",
            after.iter().map(|s| (s.t, s.pub_acked)).collect::<Vec<_>>(),
        ),
        (
            "backend-sub (received)",
            after.iter().map(|s| (s.t, s.sub_received)).collect(),
        ),
    ] {
        // The rate between the first and the last sample after the warm-up, both taken
        // while the publisher still ran.
        let rate = match (counts.first(), counts.last()) {
            (Some((t0, Some(a))), Some((t1, Some(b)))) if t1 > t0 => {
                Some((b - a) as f64 / (t1 - t0))
            }
            _ => None,
        };
        match rate {
            Some(r) if (r - RATE).abs() / RATE <= RATE_ERROR => {}
            Some(r) => failures.push(format!(
                "{who}: {r:.1} points/s after the first minute, off {RATE} by more than {:.1}%",
                RATE_ERROR * 100.0
            )),
            None => failures.push(format!("{who}: no counters to take a rate from")),
        }
    }
    let steady = pub_r["steady_point_rate"].as_f64().unwrap_or(0.0);
    if (steady - RATE).abs() / RATE > RATE_ERROR {
        failures.push(format!(
            "loadgen pub: {steady:.1} points/s after the ramp (its report), off {RATE} by more than {:.1}%",
            RATE_ERROR * 100.0
        ));
    }
    let planned = DEVICES * duration_s;
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    if !pub_status.success()
        || n(&pub_r, "points_planned") != planned
        || n(&pub_r, "points_acked") != planned
    {
        failures.push(format!(
            "loadgen pub: {} ({} planned, {} acknowledged, {} asked)",
            pub_status,
            n(&pub_r, "points_planned"),
            n(&pub_r, "points_acked"),
            planned
        ));
    }
    let verified = sub_status.is_some_and(|s| s.success())
        && sub_r["verified"] == true
        && n(&sub_r, "points_unique") == planned;
    if !verified {
        failures.push(format!(
            "backend-sub: {} unique of {planned}, missing {}, duplicate {}, verified {}: {}",
            n(&sub_r, "points_unique"),
            n(&sub_r, "points_missing"),
            n(&sub_r, "points_duplicate"),
            sub_r["verified"],
            sub_r["reason"]
        ));
    }

    println!();
    println!("| scenario | what | points asked | acknowledged | verified by backend-sub | rate after ramp | RSS after 1 min (pub; sub) | pass |");
    println!("|---|---|---|---|---|---|---|---|");
    let range = |f: fn(&Sample) -> f64| {
        let v: Vec<f64> = after.iter().map(|s| f(s)).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), r| (a.min(*r), b.max(*r)));
        format!("{lo:.1}..{hi:.1} MB")
    };
    println!(
        "| S7 | 5,000 devices, 1 point/s each, QoS 1, {duration_s} s, backend-sub verifying | {planned} | {} | {} unique, {} | {steady:.1} points/s | {}; {} | {} |",
        n(&pub_r, "points_acked"),
        n(&sub_r, "points_unique"),
        if verified { "verified" } else { "NOT verified" },
        range(|s| s.pub_rss_mb),
        range(|s| s.sub_rss_mb),
        if failures.is_empty() { "yes" } else { "NO" }
    );
    let doc = json!({
        "scenario": "S7", "devices": DEVICES, "duration_s": duration_s, "rate": RATE,
        "points_planned": planned, "points_acked": pub_r["points_acked"],
        "points_unique": sub_r["points_unique"], "verified": verified,
        "steady_point_rate": steady, "failures": failures,
        "samples": samples.iter().map(|s| json!({
            "t_s": s.t, "pub_rss_mb": s.pub_rss_mb, "pub_cpu_s": s.pub_cpu_s,
            "pub_points_acked": s.pub_acked, "sub_rss_mb": s.sub_rss_mb,
            "sub_cpu_s": s.sub_cpu_s, "sub_points_received": s.sub_received,
        })).collect::<Vec<_>>(),
    });
    if let Some(p) = json_path.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    if let Err(e) = std::fs::write(&json_path, format!("{doc:#}\n")) {
        eprintln!("cannot write {}: {e}", json_path.display());
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("S7: {f}");
        }
        if gate {
            std::process::exit(1);
        }
    }
}

fn print_sample(prev: Option<&Sample>, s: &Sample) {
    let (t0, pub0, sub0, pcpu0, scpu0) = prev.map_or((0.0, Some(0), Some(0), 0.0, 0.0), |p| {
        (p.t, p.pub_acked, p.sub_received, p.pub_cpu_s, p.sub_cpu_s)
    });
    let dt = (s.t - t0).max(1e-9);
    let rate = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.1}", b.saturating_sub(a) as f64 / dt),
        _ => "-".into(),
    };
    println!(
        "| {:.0} | {:.1} | {} | {:.1} | {:.1} | {} | {:.1} |",
        s.t,
        s.pub_rss_mb,
        rate(pub0, s.pub_acked),
        100.0 * (s.pub_cpu_s - pcpu0) / dt,
        s.sub_rss_mb,
        rate(sub0, s.sub_received),
        100.0 * (s.sub_cpu_s - scpu0) / dt,
    );
}

/// Waits for backend-sub's "subscribed to" line on stderr (within 30 s), then passes the
/// rest of its stderr through.
fn wait_subscribed(sub: &mut Child) {
    let stderr = sub.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("subscribed to") {
                let _ = tx.send(());
            } else {
                eprintln!("backend-sub: {line}");
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("backend-sub did not subscribe");
}

fn wait_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(st) = child.try_wait().expect("wait") {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn read_json(path: &std::path::Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// A line of /proc/PID/status, its first number (0 once the process is gone).
fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn rss_mb(pid: u32) -> f64 {
    status_kb(pid, "VmRSS:") as f64 / 1024.0
}

/// User + system CPU seconds of a running process (0 once it is gone).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: f64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// The value of an unlabelled counter `name` at http://127.0.0.1:port/metrics.
fn scrape(port: u16, name: &str) -> Option<u64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.take(16 << 20).read_to_string(&mut body).ok()?;
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse::<f64>().ok().map(|v| v as u64))?
    })
}
