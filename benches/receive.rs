//! The receive bench (scenario D2): `backend-sub`, which decodes every point and proves per
//! device that each seq arrived exactly once, against the raw reference subscriber
//! (`mqtt-refclient recv`: one blocking socket, reads of up to 1 MiB that wait for 64 KiB,
//! MQTT framing by hand, points counted as the `"seq":` keys of each payload), through the
//! same Mosquitto, in the same run.
//!
//! ```text
//! D2-S2   the S2 stream, 5,000,000 points in 1000-point batches, QoS 0, received live
//! D2-S2b  the same from a backlog
//! D2-S1   the S1 stream, 1,000,000 points, one per message, QoS 0, received live
//! D2-S1b  the same from a backlog
//! ```
//!
//! In each scenario the two subscribers take turns, 3 runs each (with `--quick` on 2,000,000
//! and 400,000 points), every run on a fresh broker: the subscriber subscribes,
//! then `frontend1-pub` publishes exactly N points of one device (seqs 0..N-1) as fast as it
//! can. (Not `mqtt-refclient pub`: it cycles 256 pre-encoded messages, so its seqs repeat,
//! which backend-sub rightly fails as duplicates.) The figure is what the subscriber
//! received per second from its first message to its last, as each reports it; ours must
//! also exit 0, every seq verified.
//!
//! Live, the publisher and the broker share the two cores with the subscriber and set the
//! pace of the reference: it receives what the publisher gets through (the publisher's
//! points/s is in the table), so a live ratio says whether backend-sub keeps up with the stream, which is what the
//! target (>= 0.9x) asks. From a backlog, the subscriber is stopped (SIGSTOP) while the
//! stream is published and resumed after it, so it drains the broker's queue at its own
//! speed: the ratio there is capacity (the reference counts at memory speed; a decoder cannot
//! reach 0.9x of that) and has no target, only a gate that catches a slower decoder.
//!
//! The broker's queue is unlimited (`max_queued_messages 0` and `max_queued_bytes 0`, as in
//! the project's config, set again here so that the bench does not depend on it): at QoS 0
//! Mosquitto otherwise drops messages for a subscriber past 1,000 queued, and a slow
//! subscriber would see fewer points rather than a lower rate. It buffers instead (about
//! 700 MB for the S2 backlog).
//!
//! `--gate` fails, naming the scenario, below its `GATE_D2_*` or when ours did not verify.
//! Figures: points/s, the ratio (of the median runs, and min..max of each run's pair), CPU
//! seconds per million points (from `wait4`), peak RSS (VmHWM), the broker's share of a
//! core. JSON goes to `target/bench/receive.json` (`--json PATH` puts it beside PATH).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{build_release, measure, Running};
use serde_json::{json, Value};
use test_support::{Mosquitto, TempDir};

mod common;

const TOPIC: &str = "device_data/#";
/// The target of the issue: ours receives at least this share of the reference's points/s.
const TARGET: f64 = 0.9;
// CI gates, ours / reference in points/s (the median of 3 runs), within ~15% of what `--quick`
// measured on a quiet machine: 0.85 x the median of 4 `--quick` runs, or 0.95 x the lowest
// when that is lower, rounded down.
//   D2-S2  0.85 0.89 0.93 0.86: 0.74       D2-S2b 0.37 0.39 0.36 0.49: 0.31
//   D2-S1  1.12 0.96 1.07 1.01: 0.88       D2-S1b 0.55 0.65 0.62 0.53: 0.49
// (D2-S2b: the full bench, 5M points, measured 0.32, so 0.31 rather than 0.32.)
// (One run each, as --quick used to do: D2-S2 0.97 0.74 1.15, D2-S2b 0.38 0.56 0.33, D2-S1
// 1.13 1.08 1.15, D2-S1b 0.65 0.57 0.51: too wide for a gate this close.)
// History: the gates were first set to about 70% of what backend-sub reached. Measured over
// full and --quick runs, on a quiet machine and with one or two busy loops beside: D2-S2
// 0.60-0.87, D2-S2b 0.13-0.37, D2-S1 0.64-1.01, D2-S1b 0.38-0.66 (rumqttc's receive path). With the
// backend's own session (large reads, decoding in place) D2-S2 is 0.88-0.93 and D2-S2b
// 0.35-0.36, but D2-S1b fell to 0.11-0.15: Mosquitto sends each message in its own segment
// (set_tcp_nodelay), so draining a backlog of single points cost one read per message. With
// reads that wait for a low-water mark that follows the rate (`--read-hold`, 1 ms;
// mqtt_tool::lowat) the full bench gave D2-S2 0.97 (0.91-1.01), D2-S2b 0.39 (0.33-0.39),
// D2-S1 1.16 (1.16-1.17) and D2-S1b 0.54 (0.52-0.58); --quick runs D2-S1 0.88-1.08 and
// D2-S1b 0.41-0.59.
const GATE_D2_S2: f64 = 0.74;
const GATE_D2_S2_BACKLOG: f64 = 0.31;
const GATE_D2_S1: f64 = 0.88;
const GATE_D2_S1_BACKLOG: f64 = 0.49;
/// The reference subscriber stops when nothing arrived for this long (seconds): longer than
/// a backlog's publishing takes on a busy machine.
const REF_IDLE_S: &str = "30";
/// How long a subscriber may take to subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

struct Bins {
    backend: PathBuf,
    publisher: PathBuf,
    refclient: PathBuf,
}

/// One stream, received live or from a backlog.
struct Scenario {
    id: &'static str,
    what: &'static str,
    batch: u64,
    points: u64,
    /// The subscriber is stopped (SIGSTOP) while the stream is published and resumed after
    /// it: it drains the broker's queue, so the publisher does not set its pace.
    backlog: bool,
    gate: f64,
}

/// One subscriber's run.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    points: f64,
    messages: f64,
    /// First to last message, as the subscriber measured it.
    elapsed: f64,
    /// Points/s over `elapsed`, as the subscriber reported it (backend-sub's `elapsed_s` is
    /// rounded to the millisecond, its `point_rate` is not).
    point_rate: f64,
    cpu_s: f64,
    rss_mb: f64,
    /// Share of a core the broker used while the subscriber ran.
    broker_load: f64,
    /// The publisher's points/s.
    pub_rate: f64,
    /// Ours: exited 0, every seq verified. The reference: counted every point.
    verified: bool,
}

impl Run {
    fn rate(&self) -> f64 {
        self.point_rate
    }
    fn cpu_per_m_points(&self) -> f64 {
        self.cpu_s / (self.points / 1e6).max(1e-9)
    }
}

fn main() {
    let mut quick = false;
    let mut gate = false;
    let mut only: Option<String> = None;
    let mut json_path = test_support::workspace_root().join("target/bench/receive.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--gate" => gate = true,
            // The throughput bench's JSON path: this one writes receive.json beside it.
            "--json" => {
                let p = PathBuf::from(args.next().expect("--json PATH"));
                json_path = p.with_file_name("receive.json");
            }
            "--only" => only = args.next(),
            "--bench" => {} // passed by cargo bench
            other => {
                eprintln!(
                    "unknown argument {other}; use --quick, --gate, --only D2-S2|D2-S2b|D2-S1|D2-S1b, --json PATH"
                );
                std::process::exit(2);
            }
        }
    }
    let dir = build_release();
    let bins = Bins {
        backend: dir.join("backend-sub"),
        publisher: dir.join("frontend1-pub"),
        refclient: dir.join("mqtt-refclient"),
    };
    // Three runs in both modes: one run's ratio swung by a third on a quiet machine (D2-S2
    // 0.74-1.15 in --quick), and the gates are within ~15% of the median.
    let reps = 3;
    let (s2_points, s1_points) = if quick {
        (2_000_000, 400_000)
    } else {
        (5_000_000, 1_000_000)
    };
    let scenarios = [
        Scenario {
            id: "D2-S2",
            what: "1000-point batches, QoS 0, live",
            batch: 1000,
            points: s2_points,
            backlog: false,
            gate: GATE_D2_S2,
        },
        Scenario {
            id: "D2-S2b",
            what: "1000-point batches, QoS 0, from a backlog",
            batch: 1000,
            points: s2_points,
            backlog: true,
            gate: GATE_D2_S2_BACKLOG,
        },
        Scenario {
            id: "D2-S1",
            what: "one point per message, QoS 0, live",
            batch: 1,
            points: s1_points,
            backlog: false,
            gate: GATE_D2_S1,
        },
        Scenario {
            id: "D2-S1b",
            what: "one point per message, QoS 0, from a backlog",
            batch: 1,
            points: s1_points,
            backlog: true,
            gate: GATE_D2_S1_BACKLOG,
        },
    ];

    let mut rows = Vec::new();
    let mut failures = Vec::new();
    let mut table = vec![
        "| scenario | what | points | ours points/s | ref points/s | ratio (median) | ratio min..max | target | gate | CPU s / M points (ours, ref) | peak RSS MB (ours, ref) | broker CPU % (ours, ref) | publisher points/s | verified | pass |".to_string(),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".to_string(),
    ];
    for s in &scenarios {
        if only.as_deref().is_some_and(|o| o != s.id) {
            continue;
        }
        let (mut ours, mut refs) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            ours.push(run_ours(&bins, s));
            refs.push(run_reference(&bins, s));
        }
        let o = median_by(&ours, Run::rate);
        let r = median_by(&refs, Run::rate);
        let ratio = o.rate() / r.rate().max(1e-9);
        let mut ratios: Vec<f64> = ours
            .iter()
            .zip(&refs)
            .map(|(a, b)| a.rate() / b.rate().max(1e-9))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let cpu_ours = median_by(&ours, Run::cpu_per_m_points).cpu_per_m_points();
        let cpu_ref = median_by(&refs, Run::cpu_per_m_points).cpu_per_m_points();
        let mut pub_rates: Vec<f64> = ours.iter().chain(&refs).map(|r| r.pub_rate).collect();
        pub_rates.sort_by(f64::total_cmp);
        let pub_rate = pub_rates[pub_rates.len() / 2];
        let verified = ours.iter().all(|r| r.verified);
        let counted = refs.iter().all(|r| r.verified);
        let rss = |runs: &[Run]| runs.iter().map(|r| r.rss_mb).fold(0.0, f64::max);
        let gate_ok = ratio >= s.gate && verified && counted;
        table.push(format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2}..{:.2} | {} | >= {}x: {} | {:.2}, {:.2} | {:.0}, {:.0} | {:.0}, {:.0} | {:.0} | {} | {} |",
            s.id,
            s.what,
            s.points,
            o.rate(),
            r.rate(),
            ratio,
            ratios[0],
            ratios[ratios.len() - 1],
            if s.backlog {
                "n/a (capacity)".to_string()
            } else {
                format!(
                    ">= {TARGET}x ref: {}",
                    if ratio >= TARGET { "yes" } else { "no" }
                )
            },
            s.gate,
            if ratio >= s.gate { "yes" } else { "NO" },
            cpu_ours,
            cpu_ref,
            rss(&ours),
            rss(&refs),
            100.0 * o.broker_load,
            100.0 * r.broker_load,
            pub_rate,
            if verified {
                format!("yes, {}/{} runs exit 0", ours.len(), ours.len())
            } else {
                format!(
                    "NO: {} of {} runs failed",
                    ours.iter().filter(|r| !r.verified).count(),
                    ours.len()
                )
            },
            if gate_ok { "yes" } else { "NO" },
        ));
        if ratio < s.gate {
            failures.push(format!(
                "{} ({}) received at {ratio:.2}x the reference subscriber, below the gate {}x",
                s.id, s.what, s.gate
            ));
        }
        if !verified {
            failures.push(format!(
                "{} ({}): backend-sub did not verify every seq (exit code not 0)",
                s.id, s.what
            ));
        }
        if !counted {
            failures.push(format!(
                "{} ({}): the reference subscriber did not count all {} points",
                s.id, s.what, s.points
            ));
        }
        rows.push(json!({
            "scenario": s.id, "what": s.what, "batch": s.batch, "points": s.points,
            "backlog": s.backlog, "reps": reps, "ratio": ratio, "ratios": ratios,
            "target": (!s.backlog).then_some(TARGET), "gate": s.gate, "verified": verified,
            "reference_counted_all": counted, "publisher_points_per_s": pub_rate,
            "ours": figures(&o, cpu_ours, rss(&ours)),
            "reference": figures(&r, cpu_ref, rss(&refs)),
            "runs": {
                "ours": ours.iter().map(run_json).collect::<Vec<_>>(),
                "reference": refs.iter().map(run_json).collect::<Vec<_>>(),
            },
        }));
    }
    for line in &table {
        println!("{line}");
    }

    if let Some(dir) = json_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let doc = json!({"quick": quick, "reps": reps, "scenarios": rows});
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&doc).expect("JSON") + "\n",
    )
    .expect("write JSON");
    eprintln!("wrote {}", json_path.display());
    if gate && !failures.is_empty() {
        for f in &failures {
            eprintln!("REGRESSION: {f}");
        }
        std::process::exit(1);
    }
}

/// A side's median figures: points/s of the median run, CPU per M points as the median of
/// each run's, RSS the highest of the runs.
fn figures(r: &Run, cpu_per_m_points: f64, rss_mb: f64) -> Value {
    json!({"points_per_s": r.rate(), "messages": r.messages, "elapsed_s": r.elapsed,
           "cpu_s_per_m_points": cpu_per_m_points, "peak_rss_mb": rss_mb,
           "broker_cpu_share": r.broker_load})
}

fn run_json(r: &Run) -> Value {
    json!({"points": r.points, "messages": r.messages, "elapsed_s": r.elapsed,
           "points_per_s": r.rate(), "cpu_s": r.cpu_s, "peak_rss_mb": r.rss_mb,
           "broker_cpu_share": r.broker_load, "publisher_points_per_s": r.pub_rate,
           "verified": r.verified})
}

fn median_by(runs: &[Run], key: fn(&Run) -> f64) -> Run {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v[v.len() / 2]
}

fn fresh_broker() -> Mosquitto {
    // At QoS 0 Mosquitto drops messages for a subscriber with more than 1,000 queued
    // (unless 0 = unlimited): a slow subscriber must see a lower rate, not fewer points.
    Mosquitto::start_with(&["max_queued_messages 0".into(), "max_queued_bytes 0".into()])
}

/// Publishes the stream's N points of one device, seqs 0..N-1, as fast as the broker takes
/// them; returns the publisher's points/s.
fn publish(bins: &Bins, broker: &Mosquitto, s: &Scenario) -> f64 {
    let dir = TempDir::new("receive-bench-pub");
    let report_path = dir.path("report.json");
    let mut cmd = Command::new(&bins.publisher);
    cmd.args(["--broker", &broker.url(), "--quiet", "--qos", "0"])
        .args(["--batch", &s.batch.to_string()])
        .args(["--total", &s.points.to_string(), "--rate", "max"])
        .arg("--report-json")
        .arg(&report_path)
        .stdin(Stdio::null());
    let m = measure(cmd, broker);
    assert!(m.ok, "frontend1-pub failed: {}", m.stdout);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap_or_default())
        .unwrap_or_else(|_| panic!("no report from frontend1-pub: {}", m.stdout));
    let sent = r["points_sent"].as_f64().unwrap_or(0.0);
    assert_eq!(sent as u64, s.points, "frontend1-pub sent {sent} points");
    sent / r["elapsed_s"].as_f64().unwrap_or(0.0).max(1e-9)
}

/// Publishes the stream to the subscribed `sub`: with a backlog, while `sub` is stopped.
fn publish_to(sub: &Running, bins: &Bins, broker: &Mosquitto, s: &Scenario) -> f64 {
    /// Resumes a stopped process when dropped, so that a failed publish leaves none behind.
    struct Stopped(libc::pid_t);
    impl Drop for Stopped {
        fn drop(&mut self) {
            // SAFETY: kill has no memory preconditions; the pid is our own, unreaped child.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    let _stopped = s.backlog.then(|| {
        let pid = sub.child.id() as libc::pid_t;
        // SAFETY: as in Stopped::drop.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        Stopped(pid)
    });
    publish(bins, broker, s)
}

/// backend-sub subscribed, the stream published, backend-sub measured to its end.
fn run_ours(bins: &Bins, s: &Scenario) -> Run {
    let broker = fresh_broker();
    let dir = TempDir::new("receive-bench");
    let report_path = dir.path("report.json");
    let mut cmd = Command::new(&bins.backend);
    cmd.args(["--broker", &broker.url(), "--topic", TOPIC, "--qos", "0"])
        .args(["--expect", &s.points.to_string()])
        .arg("--report-json")
        .arg(&report_path)
        .arg("--quiet")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut sub = Running::start(cmd, &broker);
    // backend-sub says "subscribed to ..." on stderr once the SUBACK is in; the rest of its
    // stderr passes through.
    let stderr = sub.child.stderr.take().expect("stderr");
    let (tx, subscribed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("subscribed to") {
                let _ = tx.send(());
            } else {
                eprintln!("backend-sub: {line}");
            }
        }
    });
    subscribed
        .recv_timeout(SUBSCRIBE_TIMEOUT)
        .expect("backend-sub did not subscribe");
    let pub_rate = publish_to(&sub, bins, &broker, s);
    let m = sub.finish(&broker);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap_or_default())
            .unwrap_or_else(|_| panic!("no report from backend-sub: {}", m.stdout));
    if !m.ok {
        eprintln!("backend-sub failed: {}", report["reason"]);
    }
    Run {
        points: report["points_received"].as_f64().unwrap_or(0.0),
        messages: report["messages_received"].as_f64().unwrap_or(0.0),
        elapsed: report["elapsed_s"].as_f64().unwrap_or(0.0),
        point_rate: report["point_rate"].as_f64().unwrap_or(0.0),
        cpu_s: m.cpu_s,
        rss_mb: m.rss_mb,
        broker_load: m.broker_cpu / m.wall.max(1e-9),
        pub_rate,
        verified: m.ok && report["verified"] == true,
    }
}

/// The reference subscriber subscribed, the stream published, the reference measured to its
/// end.
fn run_reference(bins: &Bins, s: &Scenario) -> Run {
    let broker = fresh_broker();
    let mut cmd = Command::new(&bins.refclient);
    cmd.args(["recv", &broker.port.to_string(), TOPIC, "0"])
        .args([&s.points.to_string(), REF_IDLE_S])
        .stdin(Stdio::null());
    let mut sub = Running::start(cmd, &broker);
    let mut line = String::new();
    sub.stdout.read_line(&mut line).expect("reference ready");
    assert_eq!(
        line.trim(),
        "ready",
        "the reference subscriber did not subscribe"
    );
    let pub_rate = publish_to(&sub, bins, &broker, s);
    let m = sub.finish(&broker);
    assert!(m.ok, "the reference subscriber failed: {}", m.stdout);
    let v: Value = serde_json::from_str(m.stdout.trim()).expect("reference JSON");
    let points = v["points"].as_f64().unwrap_or(0.0);
    Run {
        points,
        messages: v["messages"].as_f64().unwrap_or(0.0),
        elapsed: v["elapsed_s"].as_f64().unwrap_or(0.0),
        point_rate: v["point_rate"].as_f64().unwrap_or(0.0),
        cpu_s: m.cpu_s,
        rss_mb: m.rss_mb,
        broker_load: m.broker_cpu / m.wall.max(1e-9),
        pub_rate,
        verified: points as u64 == s.points,
    }
}
