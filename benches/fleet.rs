//! The fleet bench (scenario F): `loadgen pub` fleets against the raw fleet reference client
//! (`fleet-refclient`: one thread, epoll, pre-formatted packets) through the same Mosquitto,
//! in the same run, with a counting subscriber attached.
//!
//! ```text
//! F1  10,000 devices over 10,000 connections, 1 point/s each, QoS 0, 60 s after the ramp
//! F2  the same at QoS 1
//! F3  100,000 devices over 100 connections, 1 point/s each (100k points/s), QoS 0
//! F4  15,000 connections as fast as the broker accepts them
//! ```
//!
//! `--quick` runs the short form CI gates on (F1 and F2 with 2,000 devices for 15 s, F3 for
//! 15 s, F4 with 10,000 connections); `--gate` fails, naming the scenario, past its
//! threshold. "Every point delivered" is the counting subscriber's count against what was
//! asked for (devices x rate x duration), never against the publisher's own count. Figures are
//! absolute (CPU seconds and per message, share of a core, peak RSS, rates, latencies) and
//! as the ratio to the reference, beside each target and emqtt-bench's figure from the issue
//! (measured on a machine like this one: 98% of a core and 3.0 GB at 10,000 clients). Every
//! run gets a Mosquitto of its own and a source address of its own (127.0.N.x, a /24 per bench run), so that no
//! run inherits another's sockets in TIME_WAIT. JSON goes to `target/bench/fleet.json`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{build_release, measure, Measured};
use serde_json::{json, Value};
use test_support::{Mosquitto, TempDir};

mod common;

struct Bins {
    loadgen: PathBuf,
    refclient: PathBuf,
    counter: PathBuf,
}

/// A counting subscriber on `device_data/#`.
struct Counter {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Counter {
    fn start(bins: &Bins, broker: &Mosquitto) -> Counter {
        let mut child = Command::new(&bins.counter)
            .args(["sub", &broker.port.to_string(), "device_data/#"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn subscriber");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("subscriber ready");
        assert_eq!(line.trim(), "ready");
        Counter { child, out }
    }

    /// Messages received, once the broker delivered what it still had (the subscriber reads
    /// on until its socket stays quiet).
    fn stop(mut self) -> u64 {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.out.read_line(&mut line).expect("subscriber count");
        let _ = self.child.wait();
        let v: Value = serde_json::from_str(line.trim()).expect("subscriber JSON");
        v["messages"].as_u64().unwrap_or(0)
    }
}

/// One side's figures.
#[derive(Debug, Default, Clone)]
struct Side {
    cpu_s: f64,
    wall_s: f64,
    rss_mb: f64,
    messages: u64,
    /// Messages the counting subscriber received.
    delivered: u64,
    /// Ours: the report's points planned and acknowledged (QoS 1).
    planned: Option<u64>,
    acked: Option<u64>,
    /// Points/s after the ramp (ours) or over the publish phase (reference).
    rate: f64,
    lag_p99_us: Option<u64>,
    ack_p50_us: Option<u64>,
    ack_p99_us: Option<u64>,
    connect_rate: Option<f64>,
    connect_p99_us: Option<u64>,
    broker_cpu_pct: f64,
}

impl Side {
    fn cpu_us_per_msg(&self) -> f64 {
        1e6 * self.cpu_s / self.messages.max(1) as f64
    }
    fn core_pct(&self) -> f64 {
        100.0 * self.cpu_s / self.wall_s.max(1e-9)
    }
}

fn fresh_broker() -> Mosquitto {
    // max_queued_messages 0: Mosquitto drops QoS 0 messages for an online subscriber once
    // more than 1,000 wait for it, and F3 (100k messages/s in, as many out to the counting
    // subscriber) keeps the broker near 100% of a core: a burst then cost 0.5% of the points
    // on their way to the counter, after the publisher had written them all.
    Mosquitto::start_with(&["max_connections -1".into(), "max_queued_messages 0".into()])
}

/// `loadgen pub` with `args`, measured, with the subscriber counting.
fn ours(bins: &Bins, source: &str, args: &[&str], count: bool) -> Side {
    let broker = fresh_broker();
    let counter = count.then(|| Counter::start(bins, &broker));
    let dir = TempDir::new("fleet-bench");
    let report_path = dir.path("report.json");
    let mut cmd = Command::new(&bins.loadgen);
    if std::env::var_os("FLEET_BENCH_DEBUG").is_some() {
        eprintln!("loadgen pub {args:?}");
    }
    cmd.arg("pub")
        .args(["--broker", &broker.url(), "--quiet", "--source-ip", source])
        .args(args)
        .arg("--report-json")
        .arg(&report_path);
    let m: Measured = measure(cmd, &broker);
    let delivered = counter.map_or(0, Counter::stop);
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap_or_default())
        .unwrap_or_else(|_| panic!("no report from loadgen pub {args:?}: {}", m.stdout));
    assert!(m.ok, "loadgen pub {args:?} failed: {}", r["error"]);
    let ramp = r["connections"]["ramp_s"].as_f64().unwrap_or(0.0);
    let planned = r["connections"]["planned"].as_f64().unwrap_or(0.0);
    Side {
        cpu_s: m.cpu_s,
        wall_s: m.wall,
        rss_mb: m.rss_mb,
        messages: r["messages_sent"].as_u64().unwrap_or(0),
        delivered,
        planned: r["points_planned"].as_u64(),
        acked: r["points_acked"].as_u64(),
        rate: r["steady_point_rate"].as_f64().unwrap_or(0.0),
        lag_p99_us: r["schedule_lag_us"]["p99"].as_u64(),
        ack_p50_us: r["latency_us"]["p50"].as_u64(),
        ack_p99_us: r["latency_us"]["p99"].as_u64(),
        connect_rate: (ramp > 0.0).then(|| planned / ramp),
        connect_p99_us: r["connect_latency_us"]["p99"].as_u64(),
        broker_cpu_pct: 100.0 * m.broker_cpu / m.wall.max(1e-9),
    }
}

/// `fleet-refclient` with `args`, measured, with the subscriber counting.
fn reference(bins: &Bins, source: &str, args: &[&str], count: bool) -> Side {
    let broker = fresh_broker();
    let counter = count.then(|| Counter::start(bins, &broker));
    let mut cmd = Command::new(&bins.refclient);
    cmd.args(["--port", &broker.port.to_string(), "--source-ip", source])
        .args(["--topic-prefix", "device_data/ref-"])
        .args(args);
    let m = measure(cmd, &broker);
    let delivered = counter.map_or(0, Counter::stop);
    assert!(m.ok, "fleet-refclient {args:?} failed: {}", m.stdout);
    let v: Value = serde_json::from_str(m.stdout.trim()).expect("fleet-refclient JSON");
    Side {
        cpu_s: m.cpu_s,
        wall_s: m.wall,
        rss_mb: m.rss_mb,
        messages: v["messages_sent"].as_u64().unwrap_or(0),
        delivered,
        rate: v["message_rate"].as_f64().unwrap_or(0.0),
        connect_rate: v["connect_rate"].as_f64(),
        connect_p99_us: v["connect_p99_us"].as_u64(),
        broker_cpu_pct: 100.0 * m.broker_cpu / m.wall.max(1e-9),
        ..Side::default()
    }
}

// CI gates, from 6 `--quick` runs on a quiet machine: 1.15 x the median, or 1.05 x the highest
// run when that is higher, rounded up (one pair of runs a scenario swings more than 15%).
// F1 --quick, ours / the reference's CPU per message: 0.93 1.16 1.06 1.12 1.33 0.92 (median
// 1.09): 1.4. The full bench keeps the issue's target, 1.5x.
const GATE_F1_CPU_QUICK: f64 = 1.4;
// F2 (QoS 1) / F1 CPU per message: 1.47 1.17 1.33 1.26 1.36 1.64 (median 1.35): 1.75, under
// the issue's target of 2x.
const GATE_F2_CPU_OVER_F1: f64 = 1.75;
/// F3: share of one core at most, the issue's target (an absolute figure, like the job
/// targets: a ratio needs a reference, and fleet-refclient has no gateway mode). Measured
/// 2.3-3.5% in `--quick` (15 s), lower over 60 s.
const GATE_F3_CORE_PCT: f64 = 10.0;

struct Row {
    id: &'static str,
    what: String,
    figure: String,
    reference: String,
    ratio: Option<f64>,
    target: String,
    emqtt: &'static str,
    pass: bool,
    json: Value,
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn main() {
    let mut quick = false;
    let mut gate = false;
    let mut only: Option<String> = None;
    let mut json_path = test_support::workspace_root().join("target/bench/fleet.json");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--gate" => gate = true,
            // The throughput bench's JSON path: this one writes fleet.json beside it.
            "--json" => {
                let p = PathBuf::from(args.next().expect("--json PATH"));
                json_path = p.with_file_name("fleet.json");
            }
            "--only" => only = args.next(),
            "--bench" => {}
            other => {
                eprintln!(
                    "unknown argument {other}; use --quick, --gate, --only F1..F4, --json PATH"
                );
                std::process::exit(2);
            }
        }
    }
    test_support::raise_nofile_limit();
    let dir = build_release();
    let bins = Bins {
        loadgen: dir.join("loadgen"),
        refclient: dir.join("fleet-refclient"),
        counter: dir.join("mqtt-refclient"),
    };
    let (n1, secs, n4) = if quick {
        (2_000u64, 15u64, 10_000u64)
    } else {
        (10_000, 60, 15_000)
    };
    // F3's seconds after its ramp.
    let secs3 = if quick { 15u64 } else { 60 };
    let mut rows = Vec::new();
    // A /24 of its own for each bench run (127.0.N.x, N from the process id): a run right
    // after another would otherwise connect from addresses whose ports still sit in
    // TIME_WAIT, and the kernel's port search slows the ramp (measured: F4 0.78x instead of
    // 0.95x).
    let net = 1 + std::process::id() % 250;
    let mut ip = 1u8;
    let mut next_ip = || {
        ip += 1;
        format!("127.0.{net}.{ip}")
    };

    // F1 and F2: one device per connection, 1 point/s, ours and the reference in turn.
    let n1s = n1.to_string();
    // The ramp at --connect-rate max takes a second or two; the rate is judged after it.
    let ours_duration = format!("{}s", secs + 2);
    let secs_s = secs.to_string();
    let mut f1_cpu_per_msg = None;
    let wanted = |id: &str| only.as_deref().map_or(true, |o| o == id);
    // What a fleet run is asked for: devices x 1 point/s x its duration.
    let asked = n1 * (secs + 2);
    for (id, qos) in [("F1", "0"), ("F2", "1")] {
        if !wanted(id) {
            continue;
        }
        let fleet_args = [
            "--devices",
            &n1s,
            "--rate-per-device",
            "1",
            "--batch",
            "1",
            "--qos",
            qos,
            "--duration",
            &ours_duration,
            "--connect-rate",
            "max",
            "--max-connecting",
            "100",
        ];
        let o = ours(&bins, &next_ip(), &fleet_args, true);
        // F2 is gated against F1, not the reference: --quick leaves its reference out.
        let r = if quick && id == "F2" {
            Side::default()
        } else {
            reference(
                &bins,
                &next_ip(),
                &[
                    "--connections",
                    &n1s,
                    "--rate-per-conn",
                    "1",
                    "--duration",
                    &secs_s,
                    "--qos",
                    qos,
                    "--max-connecting",
                    "100",
                ],
                true,
            )
        };
        let ratio = o.cpu_us_per_msg() / r.cpu_us_per_msg().max(1e-9);
        let rate_err = (o.rate - n1 as f64).abs() / n1 as f64;
        // The subscriber's count against what was asked; the report must agree on both.
        let delivered_all = o.delivered == asked && o.planned == Some(asked) && o.messages == asked;
        let (target, pass) = if id == "F1" {
            f1_cpu_per_msg = Some(o.cpu_us_per_msg());
            let cpu_gate = if quick { GATE_F1_CPU_QUICK } else { 1.5 };
            // The issue's targets, in --quick too (measured there on a quiet machine: the rate
            // off by 0.001-0.007%, lag p99 1.1-3.5 ms; the rate's gate was 2%, the lag's none).
            let rate_gate = 0.005;
            let lag_ok = o.lag_p99_us.is_some_and(|l| l < 5_000);
            let rss_ok = o.rss_mb <= 64.0;
            (
                format!(
                    "CPU <= {cpu_gate}x ref, RSS <= 64 MB (aim 32), all delivered, rate within {:.1}%, lag p99 < 5 ms",
                    rate_gate * 100.0
                ),
                ratio <= cpu_gate && rss_ok && delivered_all && rate_err <= rate_gate && lag_ok,
            )
        } else {
            // Against F1 of the same bench run; run alone (--only F2), against the target.
            let vs_f1 = f1_cpu_per_msg.map(|f1| o.cpu_us_per_msg() / f1.max(1e-9));
            let acked_all = o.acked == Some(asked);
            (
                format!(
                    "all acknowledged and delivered, CPU <= {GATE_F2_CPU_OVER_F1}x F1's ({})",
                    vs_f1.map_or("F1 not run".into(), |v| format!("{v:.2}x"))
                ),
                vs_f1.map_or(true, |v| v <= GATE_F2_CPU_OVER_F1) && delivered_all && acked_all,
            )
        };
        rows.push(Row {
            id,
            what: format!("{n1} devices / {n1} connections, 1 pt/s, QoS {qos}, {secs} s"),
            figure: format!(
                "{:.2} CPU s ({:.1} µs/msg, {:.1}% core), {:.0} MB, {:.0} pts/s after ramp ({:+.2}%), lag p99 {} µs{}, delivered {}/{asked} asked ({} sent{})",
                o.cpu_s,
                o.cpu_us_per_msg(),
                o.core_pct(),
                o.rss_mb,
                o.rate,
                100.0 * (o.rate - n1 as f64) / n1 as f64,
                fmt_opt(o.lag_p99_us),
                if qos == "1" {
                    format!(", ack p50 {} p99 {} µs", fmt_opt(o.ack_p50_us), fmt_opt(o.ack_p99_us))
                } else {
                    String::new()
                },
                o.delivered,
                o.messages,
                o.acked.map_or(String::new(), |a| format!(", {a} acked"))
            ),
            reference: if r.messages == 0 {
                "not run (--quick)".into()
            } else {
                format!(
                    "{:.2} CPU s ({:.1} µs/msg), {:.0} MB, delivered {}/{} sent",
                    r.cpu_s,
                    r.cpu_us_per_msg(),
                    r.rss_mb,
                    r.delivered,
                    r.messages
                )
            },
            ratio: (r.messages > 0).then_some(ratio),
            target,
            emqtt: if n1 >= 10_000 { "98% core, 3.0 GB" } else { "18-65% core, 0.55-1.4 GB" },
            pass,
            json: json!({"ours": side_json(&o), "reference": side_json(&r), "cpu_ratio": ratio}),
        });
    }

    // F3: 100,000 devices over 100 gateway connections.
    if wanted("F3") {
        let duration3 = format!("{}s", secs3 + 2);
        let asked3 = 100_000 * (secs3 + 2);
        let o = ours(
            &bins,
            &next_ip(),
            &[
                "--devices",
                "100000",
                "--connections",
                "100",
                "--rate-per-device",
                "1",
                "--batch",
                "1",
                "--duration",
                &duration3,
                "--connect-rate",
                "max",
            ],
            true,
        );
        let delivered_all =
            o.delivered == asked3 && o.planned == Some(asked3) && o.messages == asked3;
        let pass = o.core_pct() <= GATE_F3_CORE_PCT && delivered_all;
        rows.push(Row {
            id: "F3",
            what: format!(
                "100,000 devices / 100 connections, 1 pt/s (100k pts/s), QoS 0, {secs3} s"
            ),
            figure: format!(
                "{:.2} CPU s ({:.1}% core), {:.0} MB, {:.0} pts/s, lag p99 {} µs, delivered {}/{asked3} asked ({} sent)",
                o.cpu_s,
                o.core_pct(),
                o.rss_mb,
                o.rate,
                fmt_opt(o.lag_p99_us),
                o.delivered,
                o.messages
            ),
            reference: "n/a (one device per connection)".into(),
            ratio: None,
            target: format!("<= {GATE_F3_CORE_PCT}% of one core, all delivered"),
            emqtt: "n/a",
            pass,
            json: json!({"ours": side_json(&o)}),
        });
    }

    // F4: the connect ramp, as fast as the broker takes connections.
    let n4s = n4.to_string();
    if wanted("F4") {
        // A connect ramp of a few seconds swings with the machine (one pair measured
        // 0.79-0.99x in a row): three pairs, alternating, and the median pair's ratio.
        let mut pairs = Vec::new();
        for _ in 0..3 {
            let o = ours(
                &bins,
                &next_ip(),
                &[
                    "--devices",
                    &n4s,
                    "--connect-rate",
                    "max",
                    "--max-connecting",
                    "100",
                    "--rate",
                    "max",
                    "--batch",
                    "1",
                    "--total",
                    &n4s,
                    // Publishing waits until the ramp is over, as the reference's does.
                    "--start-delay",
                    "3s",
                    "--workers",
                    "1",
                ],
                false,
            );
            let r = reference(
                &bins,
                &next_ip(),
                &[
                    "--connections",
                    &n4s,
                    "--connect-only",
                    "--max-connecting",
                    "100",
                ],
                false,
            );
            let ratio = o.connect_rate.unwrap_or(0.0) / r.connect_rate.unwrap_or(1.0).max(1e-9);
            pairs.push((ratio, o, r));
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, o, r) = pairs.swap_remove(1);
        // --quick, the median of three pairs: 0.79-0.99 over the quiet runs that set the other
        // gates (0.79 and 0.82 among them), so the old 0.8 failed a quiet machine; 0.85 x
        // the median of ~0.89, as every other gate, is 0.75. The full bench keeps 0.9.
        let gate4 = if quick { 0.75 } else { 0.9 };
        rows.push(Row {
            id: "F4",
            what: format!("{n4} connections, as fast as the broker accepts"),
            figure: format!(
                "{:.0} connections/s, connect p99 {} µs",
                o.connect_rate.unwrap_or(0.0),
                fmt_opt(o.connect_p99_us)
            ),
            reference: format!(
                "{:.0} connections/s, connect p99 {} µs",
                r.connect_rate.unwrap_or(0.0),
                fmt_opt(r.connect_p99_us)
            ),
            ratio: Some(ratio),
            target: format!(">= {gate4}x ref"),
            emqtt: "n/a",
            pass: ratio >= gate4,
            json: json!({"ours": side_json(&o), "reference": side_json(&r), "ratio": ratio}),
        });
    }

    println!("| scenario | what | ours | reference | ratio | target | emqtt-bench | pass |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.id,
            r.what,
            r.figure,
            r.reference,
            r.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            r.target,
            r.emqtt,
            if r.pass { "yes" } else { "NO" }
        );
    }
    let out: Value = rows
        .iter()
        .map(|r| (r.id.to_string(), r.json.clone()))
        .collect::<serde_json::Map<_, _>>()
        .into();
    if let Some(parent) = json_path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let _ = std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    );
    println!("wrote {}", json_path.display());
    if gate {
        let failed: Vec<&str> = rows.iter().filter(|r| !r.pass).map(|r| r.id).collect();
        if !failed.is_empty() {
            eprintln!(
                "REGRESSION: fleet scenario {} missed its target (see the table)",
                failed.join(", ")
            );
            std::process::exit(1);
        }
    }
}

fn side_json(s: &Side) -> Value {
    json!({
        "cpu_s": s.cpu_s, "wall_s": s.wall_s, "rss_mb": s.rss_mb, "messages": s.messages,
        "delivered": s.delivered, "rate": s.rate, "cpu_us_per_msg": s.cpu_us_per_msg(),
        "core_pct": s.core_pct(), "lag_p99_us": s.lag_p99_us, "ack_p50_us": s.ack_p50_us,
        "ack_p99_us": s.ack_p99_us, "connect_rate": s.connect_rate,
        "connect_p99_us": s.connect_p99_us, "broker_cpu_pct": s.broker_cpu_pct,
    })
}
