//! The throughput bench: our publisher against a reference client, through the same
//! Mosquitto, minutes apart, so that ratios hold on a noisy machine.
//!
//! `scripts/bench` runs the full set; `scripts/bench --quick --gate` is the CI gate: it
//! fails, naming the scenario, when a ratio to the reference falls below its threshold.
//! Both print a Markdown table and write JSON (`--json PATH`, default
//! `target/bench/throughput.json`). Every process is a child, so its CPU seconds and peak
//! RSS come from `wait4`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::measure;
use serde_json::{json, Value};
use test_support::{Mosquitto, TempDir};

mod common;

const TOPIC: &str = "device_data/frontend1_ultra_high_perf_device";
/// CI gate: fail when a paced run's achieved rate is off the target by more than this, the
/// project's own target for a paced rate (F1, S7). `--quick` on a quiet machine, 7 runs: off
/// by 0.002-0.006% at 10k points/s, 0.001-0.058% at 1M points/s (the gate was 2%).
const PACING_GATE: f64 = 0.005;
// CI gates of S1-S4, ours / the reference in messages/s (the median of the runs): 0.85 x the
// median of 6 `--quick` runs on a quiet machine, or 0.95 x the lowest run when that is lower,
// rounded down. Measured 2026-12-07 with three runs a scenario and S2, S2+sub and S4 lasting
// 1-1.5 s (two runs of 0.15-0.35 s before, whose "median" was the faster run: S2 failed CI at
// 0.79 with its two pairs at 0.79 and 1.06; S4 measured 0.86 against its gate 0.89 here):
//   S1      1.00-1.04 (median 1.02): 0.86     S1+sub  0.94-1.06 (1.02): 0.86
//   S2      0.88-1.05 (0.96): 0.81            S2+sub  0.90-1.20 (1.02): 0.85
//   S3      1.02-1.11 (1.075): 0.91           S4      0.86-1.07 (0.995): 0.81
// S2+sub, five more quiet runs the same evening (a gate run that failed it at 0.83, pairs
// 0.82-1.03; then four runs, the publisher as its own binary and as `loadgen` under its
// name, in turn: 0.95 0.88 and 1.00 0.94): with all eleven (0.83-1.20, median 0.95) the
// rule gives 0.78 (0.95 x 0.83 = 0.789, rounded down).
// CI gate of S1: ours may spend at most this many times the reference's CPU per message
// (the median of each side's runs). `--quick` on a quiet machine, 1M messages, two runs a
// side: 3.81 4.30 4.39 4.07 (with 200,000 messages: 4.22 4.01 5.03); three runs a side
// (2026-12-07): 3.33 3.23 3.85 3.57 3.70 3.85. The gate is 1.15 x the median of all ten
// (3.83): 4.4 (it was 4.8, from the first four).
const GATE_S1_CPU: f64 = 4.4;
/// S6: with the broker stopped, the publisher queues up to `--max-queued` messages (16 MiB by
/// default), then waits. Its peak RSS may exceed that of the same paced run on a running
/// broker by at most this many times the queue's bytes, allocator slack included. Measured in
/// 6 `--quick` runs on a quiet machine: 2.56-2.61 (23.7 MB over a 9.2 MB queue); the gate is
/// 1.15 x that. 5 s of 100k points/s held in memory instead would be about 70 MB, 7.6 times
/// the queue.
const GATE_S6_QUEUE: f64 = 3.0;
/// S6: the report's schedule lag must show the 5 s stop, at least this much of it.
const S6_LAG_MIN_S: f64 = 4.0;

struct Opts {
    quick: bool,
    gate: bool,
    json: PathBuf,
}

/// One network scenario.
struct Scenario {
    id: &'static str,
    what: &'static str,
    qos: u8,
    batch: u64,
    points: u64,
    subscriber: bool,
    /// CI gate: fail when ours / reference (messages/s) is below this.
    gate: f64,
    /// CI gate: fail when reference / ours (CPU seconds per message) is below this.
    cpu_gate: Option<f64>,
}

/// Figures of one process run.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    points: f64,
    messages: f64,
    bytes: f64,
    elapsed: f64,
    cpu_s: f64,
    rss_mb: f64,
    delivered: f64,
    /// Wall time of the publishing process.
    wall: f64,
    /// CPU seconds the broker used meanwhile.
    broker_cpu: f64,
}

impl Run {
    fn msg_rate(&self) -> f64 {
        self.messages / self.elapsed
    }
    fn point_rate(&self) -> f64 {
        self.points / self.elapsed
    }
    fn mb_s(&self) -> f64 {
        self.bytes / self.elapsed / 1e6
    }
    fn cpu_per_m_points(&self) -> f64 {
        self.cpu_s / (self.points / 1e6)
    }
    fn cpu_per_m_messages(&self) -> f64 {
        self.cpu_s / (self.messages / 1e6)
    }
    /// Share of one core the broker used while the publisher ran.
    fn broker_load(&self) -> f64 {
        self.broker_cpu / self.wall
    }
}

fn main() {
    let mut opts = Opts {
        quick: false,
        gate: false,
        json: test_support::workspace_root().join("target/bench/throughput.json"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--gate" => opts.gate = true,
            "--json" => opts.json = PathBuf::from(args.next().expect("--json PATH")),
            "--bench" => {} // passed by cargo bench
            other => {
                eprintln!("unknown argument {other}; use --quick, --gate, --json PATH");
                std::process::exit(2);
            }
        }
    }
    let bins = build_binaries();
    // Three runs, also when quick: with two, "the median" was the faster run, and one fast
    // reference run decided the ratio (S2 failed CI at 0.79 with its runs at 0.79..1.06).
    let reps = 3;
    let k = if opts.quick { 1 } else { 2 };
    let scenarios = [
        Scenario {
            id: "S1",
            what: "QoS 0, batch 1, max rate",
            qos: 0,
            batch: 1,
            // Enough for the reference's CPU time to be tens of milliseconds: with 200,000
            // messages it was about 10 ms, and the CPU ratio swung 4.0-5.0x with it.
            points: 1_000_000 * k,
            subscriber: false,
            gate: 0.86,
            cpu_gate: Some(1.0 / GATE_S1_CPU),
        },
        Scenario {
            id: "S1+sub",
            what: "S1 with a subscriber",
            qos: 0,
            batch: 1,
            points: 200_000 * k,
            subscriber: true,
            gate: 0.86,
            cpu_gate: None,
        },
        Scenario {
            id: "S2",
            what: "QoS 0, batch 1000, max rate",
            qos: 0,
            batch: 1000,
            // About 1.5 s a run: with 2.5M points a run lasted 0.35 s, mostly connecting
            // and draining, and the ratio swung 0.79..1.06 in one CI run.
            points: 10_000_000 * k,
            subscriber: false,
            gate: 0.81,
            cpu_gate: None,
        },
        Scenario {
            id: "S2+sub",
            what: "S2 with a subscriber",
            qos: 0,
            batch: 1000,
            points: 8_000_000 * k,
            subscriber: true,
            gate: 0.78,
            cpu_gate: None,
        },
        Scenario {
            id: "S3",
            what: "QoS 1, batch 1, widest window",
            qos: 1,
            batch: 1,
            points: 100_000 * k,
            subscriber: false,
            gate: 0.91,
            cpu_gate: None,
        },
        Scenario {
            id: "S4",
            what: "QoS 1, batch 1000",
            qos: 1,
            batch: 1000,
            // About 1 s a run (it was 0.15 s with 1M points).
            points: 6_000_000 * k,
            subscriber: false,
            gate: 0.81,
            cpu_gate: None,
        },
    ];
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    println!("| scenario | what | ours msg/s | ours points/s | ours MB/s | ref msg/s | ratio (median) | ratio min..max | CPU s / M msgs (ours, ref) | CPU ratio ref/ours | broker CPU % (ours, ref) | peak RSS MB | delivered to the counting subscriber (ours, every run) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &scenarios {
        let broker = Mosquitto::start();
        let (mut ours, mut refs) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            refs.push(run_reference(&bins, &broker, s));
            ours.push(run_ours(&bins, &broker, s, &[]));
        }
        let o = median_by(&ours, Run::msg_rate);
        let r = median_by(&refs, Run::msg_rate);
        let mut ratios: Vec<f64> = ours
            .iter()
            .zip(&refs)
            .map(|(a, b)| a.msg_rate() / b.msg_rate())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = o.msg_rate() / r.msg_rate();
        // CPU per message: the median of each side, so one noisy run does not decide.
        let cpu_ours = median_by(&ours, Run::cpu_per_m_messages).cpu_per_m_messages();
        let cpu_ref = median_by(&refs, Run::cpu_per_m_messages).cpu_per_m_messages();
        let cpu_ratio = cpu_ref / cpu_ours;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2}..{:.2} | {:.2}, {:.2} | {:.2} | {:.0}, {:.0} | {:.0} | {} |",
            s.id,
            s.what,
            o.msg_rate(),
            o.point_rate(),
            o.mb_s(),
            r.msg_rate(),
            ratio,
            ratios[0],
            ratios[ratios.len() - 1],
            cpu_ours,
            cpu_ref,
            cpu_ratio,
            100.0 * o.broker_load(),
            100.0 * r.broker_load(),
            o.rss_mb,
            if s.subscriber {
                let asked = s.points / s.batch;
                let got: Vec<String> = ours.iter().map(|r| format!("{:.0}", r.delivered)).collect();
                format!("{} of {asked}", got.join(", "))
            } else {
                "-".into()
            },
        );
        // Every message asked for reached the counting subscriber, in every run: counted by
        // the subscriber against what was asked, not against the publisher's own count.
        if s.subscriber {
            let asked = (s.points / s.batch) as f64;
            for (i, r) in ours.iter().enumerate() {
                if r.delivered != asked || r.messages != asked {
                    failures.push(format!(
                        "{} ({}) run {}: the counting subscriber received {:.0} of the {asked:.0} messages asked for (the publisher counted {:.0} sent)",
                        s.id, s.what, i + 1, r.delivered, r.messages
                    ));
                }
            }
        }
        if ratio < s.gate {
            failures.push(format!(
                "{} ({}) ran at {ratio:.2} of the reference, below the gate {:.2}",
                s.id, s.what, s.gate
            ));
        }
        if let Some(g) = s.cpu_gate {
            if cpu_ratio < g {
                failures.push(format!(
                    "{} ({}) used {:.1}x the reference's CPU per message, more than the gate's {:.0}x",
                    s.id, s.what, 1.0 / cpu_ratio, 1.0 / g
                ));
            }
        }
        rows.push(json!({
            "scenario": s.id, "what": s.what, "qos": s.qos, "batch": s.batch, "points": s.points,
            "subscriber": s.subscriber, "ratio": ratio, "ratios": ratios, "gate": s.gate,
            "cpu_ratio": cpu_ratio, "cpu_gate": s.cpu_gate,
            "delivered": ours.iter().map(|r| r.delivered).collect::<Vec<_>>(),
            "ours": figures(&o), "reference": figures(&r),
        }));
    }

    // S5: pacing accuracy (ours only; the reference does not pace).
    println!();
    println!("| scenario | target points/s | achieved points/s | rate error | schedule lag p99 | CPU s / M points | peak RSS MB |");
    println!("|---|---|---|---|---|---|---|");
    let broker = Mosquitto::start();
    for (rate, batch, total) in [
        (10_000u64, 1000u64, 30_000 * k),
        (1_000_000, 100, 2_000_000 * k),
    ] {
        let s = Scenario {
            id: "S5",
            what: "paced",
            qos: 0,
            batch,
            points: total,
            subscriber: false,
            gate: 0.0,
            cpu_gate: None,
        };
        let (run, report) = run_ours_report(&bins, &broker, &s, &["--rate", &rate.to_string()]);
        let achieved = report["point_rate"].as_f64().unwrap_or(0.0);
        let err = (achieved - rate as f64).abs() / rate as f64;
        if err > PACING_GATE {
            failures.push(format!(
                "S5 at {rate} points/s achieved {achieved:.0}, off by {:.2}% (gate {:.0}%)",
                err * 100.0,
                PACING_GATE * 100.0
            ));
        }
        let lag_p99 = report["schedule_lag_us"]["p99"].as_u64().unwrap_or(0);
        println!(
            "| S5 rate {rate} batch {batch} | {rate} | {achieved:.0} | {:.3}% | {lag_p99} µs | {:.2} | {:.0} |",
            err * 100.0,
            run.cpu_per_m_points(),
            run.rss_mb
        );
        rows.push(
            json!({"scenario": "S5", "rate": rate, "batch": batch, "achieved": achieved,
            "rate_error": err, "schedule_lag_p99_us": lag_p99, "ours": figures(&run)}),
        );
    }

    // S6: the broker stops reading (SIGSTOP) for 5 s in the middle of a paced run: memory
    // must stay bounded (the publisher waits) and the report must show the lag. Its peak RSS
    // is compared with the same paced run on a running broker, just before, and a counting
    // subscriber checks that every message the publisher counted sent arrived, and the
    // report that every point planned is sent or counted by reason.
    {
        println!();
        println!("| scenario | what | points planned | points sent | unsent, dropped | messages sent / counted by the subscriber | schedule lag max | peak RSS MB (S6, running broker; growth / the queue's MB) | pass |");
        println!("|---|---|---|---|---|---|---|---|---|");
        let broker = Mosquitto::start();
        let s = Scenario {
            id: "S6",
            what: "100k points/s in 100-point messages for 8 s, broker stopped for 5 s",
            qos: 0,
            batch: 100,
            points: 100_000_000,
            subscriber: true,
            gate: 0.0,
            cpu_gate: None,
        };
        let (base, _) =
            run_ours_report(&bins, &broker, &s, &["--rate", "100k", "--duration", "3s"]);
        let (run, report) = std::thread::scope(|scope| {
            let publisher = scope.spawn(|| {
                run_ours_report(&bins, &broker, &s, &["--rate", "100k", "--duration", "8s"])
            });
            std::thread::sleep(std::time::Duration::from_millis(1500));
            broker.signal("STOP");
            std::thread::sleep(std::time::Duration::from_secs(5));
            broker.signal("CONT");
            publisher.join().expect("S6 publisher")
        });
        let lag_max = report["schedule_lag_us"]["max"].as_u64().unwrap_or(0) as f64 / 1e6;
        let n = |k: &str| report[k].as_u64().unwrap_or(0);
        let planned = n("points_planned");
        let accounted = n("points_sent") + n("points_unsent") + n("points_dropped");
        // The queue's bound in MB: messages times their size.
        let queue_mb =
            n("max_queued") as f64 * run.bytes / run.messages.max(1.0) / (1 << 20) as f64;
        let rss_ratio = (run.rss_mb - base.rss_mb) / queue_mb.max(1e-9);
        let mut problems = Vec::new();
        if rss_ratio > GATE_S6_QUEUE {
            problems.push(format!(
                "peak RSS {:.1} MB, {:.1} MB above the same run on a running broker: {rss_ratio:.2}x the {queue_mb:.1} MB queue (gate {GATE_S6_QUEUE}x)",
                run.rss_mb, run.rss_mb - base.rss_mb
            ));
        }
        if lag_max < S6_LAG_MIN_S {
            problems.push(format!(
                "the report's schedule lag max is {lag_max:.2} s, not the {S6_LAG_MIN_S} s or more of the stop"
            ));
        }
        if run.delivered != run.messages || base.delivered != base.messages {
            problems.push(format!(
                "the counting subscriber received {:.0} of the {:.0} messages counted sent ({:.0} of {:.0} on a running broker)",
                run.delivered, run.messages, base.delivered, base.messages
            ));
        }
        if planned != 800_000 || accounted != planned {
            problems.push(format!(
                "{planned} points planned (800000 asked), {accounted} sent, unsent or dropped"
            ));
        }
        println!(
            "| S6 | {} | {planned} | {} | {}, {} | {:.0} / {:.0} | {lag_max:.2} s | {:.1}, {:.1}; {rss_ratio:.2}x of {queue_mb:.1} (gate {GATE_S6_QUEUE}x) | {} |",
            s.what,
            n("points_sent"),
            n("points_unsent"),
            n("points_dropped"),
            run.messages,
            run.delivered,
            run.rss_mb,
            base.rss_mb,
            if problems.is_empty() { "yes" } else { "NO" }
        );
        for p in problems {
            failures.push(format!("S6 ({}): {p}", s.what));
        }
        rows.push(
            json!({"scenario": "S6", "what": s.what, "points_planned": planned,
            "points_sent": report["points_sent"], "points_unsent": report["points_unsent"],
            "points_dropped": report["points_dropped"], "messages_sent": run.messages,
            "delivered_messages": run.delivered, "schedule_lag_max_us": report["schedule_lag_us"]["max"],
            "peak_rss_mb": run.rss_mb, "running_broker_peak_rss_mb": base.rss_mb,
            "queue_mb": queue_mb, "rss_growth_over_queue": rss_ratio,
            "rss_gate": GATE_S6_QUEUE}),
        );
    }

    if let Some(dir) = opts.json.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let doc = json!({"quick": opts.quick, "reps": reps, "scenarios": rows});
    std::fs::write(
        &opts.json,
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .expect("write JSON");
    eprintln!("wrote {}", opts.json.display());
    if opts.gate && !failures.is_empty() {
        for f in &failures {
            eprintln!("REGRESSION: {f}");
        }
        std::process::exit(1);
    }
}

fn figures(r: &Run) -> Value {
    json!({"messages_per_s": r.msg_rate(), "points_per_s": r.point_rate(), "mb_per_s": r.mb_s(),
           "elapsed_s": r.elapsed, "cpu_s": r.cpu_s, "cpu_s_per_m_points": r.cpu_per_m_points(),
           "cpu_s_per_m_messages": r.cpu_per_m_messages(), "broker_cpu_share": r.broker_load(),
           "peak_rss_mb": r.rss_mb, "delivered_messages": r.delivered})
}

fn median_by(runs: &[Run], key: fn(&Run) -> f64) -> Run {
    let mut v = runs.to_vec();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v[v.len() / 2]
}

struct Bins {
    publisher: PathBuf,
    refclient: PathBuf,
}

/// Builds the release binaries the bench runs.
fn build_binaries() -> Bins {
    let dir = common::build_release();
    Bins {
        publisher: dir.join("frontend1-pub"),
        refclient: dir.join("mqtt-refclient"),
    }
}

/// A counting subscriber, when the scenario has one.
struct Sub {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

fn start_sub(bins: &Bins, broker: &Mosquitto, s: &Scenario) -> Option<Sub> {
    if !s.subscriber {
        return None;
    }
    let mut child = Command::new(&bins.refclient)
        .args(["sub", &broker.port.to_string(), TOPIC])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn subscriber");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("subscriber ready");
    assert_eq!(line.trim(), "ready");
    Some(Sub { child, out })
}

/// Stops the subscriber and returns the messages it received.
fn stop_sub(sub: Option<Sub>) -> f64 {
    let Some(mut sub) = sub else { return 0.0 };
    // It reads what the broker still has for it until its socket stays quiet, then counts.
    drop(sub.child.stdin.take());
    let mut line = String::new();
    sub.out.read_line(&mut line).expect("subscriber count");
    let _ = sub.child.wait();
    let v: Value = serde_json::from_str(line.trim()).expect("subscriber JSON");
    v["messages"].as_f64().unwrap_or(0.0)
}

fn run_reference(bins: &Bins, broker: &Mosquitto, s: &Scenario) -> Run {
    let sub = start_sub(bins, broker, s);
    let messages = s.points / s.batch;
    let mut cmd = Command::new(&bins.refclient);
    cmd.args([
        "pub",
        &broker.port.to_string(),
        TOPIC,
        &s.qos.to_string(),
        &s.batch.to_string(),
        &messages.to_string(),
    ]);
    let m = measure(cmd, broker);
    assert!(m.ok, "the reference client failed: {}", m.stdout);
    let v: Value = serde_json::from_str(m.stdout.trim()).expect("refclient JSON");
    let delivered = stop_sub(sub);
    Run {
        points: v["points"].as_f64().unwrap(),
        messages: v["messages"].as_f64().unwrap(),
        bytes: v["bytes"].as_f64().unwrap(),
        elapsed: v["elapsed_s"].as_f64().unwrap(),
        cpu_s: m.cpu_s,
        rss_mb: m.rss_mb,
        delivered,
        wall: m.wall,
        broker_cpu: m.broker_cpu,
    }
}

fn run_ours(bins: &Bins, broker: &Mosquitto, s: &Scenario, extra: &[&str]) -> Run {
    run_ours_report(bins, broker, s, extra).0
}

fn run_ours_report(bins: &Bins, broker: &Mosquitto, s: &Scenario, extra: &[&str]) -> (Run, Value) {
    let sub = start_sub(bins, broker, s);
    let dir = TempDir::new("bench");
    let report_path = dir.path("report.json");
    let mut cmd = Command::new(&bins.publisher);
    cmd.args([
        "--broker",
        &broker.url(),
        "--quiet",
        "--qos",
        &s.qos.to_string(),
        "--batch",
        &s.batch.to_string(),
    ])
    .args(["--total", &s.points.to_string()])
    .args(if extra.is_empty() {
        &["--rate", "max"][..]
    } else {
        extra
    })
    .arg("--report-json")
    .arg(&report_path);
    let m = measure(cmd, broker);
    assert!(m.ok, "the publisher failed: {}", m.stdout);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let delivered = stop_sub(sub);
    let run = Run {
        points: report["points_sent"].as_f64().unwrap(),
        messages: report["messages_sent"].as_f64().unwrap(),
        bytes: report["bytes_sent"].as_f64().unwrap(),
        elapsed: report["elapsed_s"].as_f64().unwrap(),
        cpu_s: m.cpu_s,
        rss_mb: m.rss_mb,
        delivered,
        wall: m.wall,
        broker_cpu: m.broker_cpu,
    };
    (run, report)
}
