//! The PostgreSQL benches (scenarios J and K), on a PostgreSQL and a Mosquitto started here
//! (both on this machine, on free ports; the server as the tests run it: `fsync=off`,
//! `synchronous_commit=off`).
//!
//! ```text
//! J1  job-pub, one instance, drains N due jobs (--until-empty)        jobs/s beside the seed's 750/s
//! J3  three instances together drain N due jobs                     jobs/s beside J1
//! J5  one instance, jobs falling due at 5,000/s steady              lateness p50/p99 (publish - fire_at)
//! K1  backend-sub --sink: N points of frontend1-pub into the table  rows/s beside psql \copy
//! ```
//!
//! In J, an independent subscriber (rumqttc, QoS 1, on the jobs' topics) counts every job
//! it receives: missing and duplicates are its counts, not job-pub's. J1 and J3 measure the
//! jobs acknowledged over the run's window (its report's `started_at`..`ended_at`; for J3 the
//! earliest start to the latest end). The seed (the team's C# publisher, one instance) did
//! 750 jobs/s; the targets are >= 7,500 for J1 (aim 20,000), J3 faster than J1, 0 missing,
//! 0 duplicates, and a lateness p99 under 100 ms in J5.
//!
//! In K1, frontend1-pub publishes N points (1000-point batches, QoS 1, as fast as it can) to
//! a backend-sub that stores each in the sink's table (10k-row batches, the shipped migration
//! with its index); its rate is the sink's own window, first batch sealed to last committed.
//! The reference loads the same rows into the same (truncated) table from files, with
//! `psql -c "\copy points FROM FILE (FORMAT binary)"`, the fastest form psql has, timed like
//! the sink: the COPY statements alone, from the database's clock just before the first to
//! just after the last (`clock_timestamp()` in the same session), over the same number of
//! connections: K1-1 is the sink with `--sink-connections 1` against one psql loading all
//! rows, K1-2 the sink's default 2 connections against two psql loading half the rows each
//! at once. psql's whole process (start-up and authentication included, 1 connection) and
//! CSV are shown beside, not compared. Ours shares the two cores with the broker, the
//! publisher and its own verification; psql has them to itself. Target: ours >= 0.8x psql's
//! binary copy. The rows stored are counted in the table itself (`count(DISTINCT seq)`), not
//! only by the sink's report. Beside it, the rate at which backend-sub receives and verifies
//! the same stream without a sink: with one, the stream goes at the slower of the two (the
//! database sets the pace while the subscription is paused).
//!
//! J1 and J3 run as three alternating pairs, gated on their medians. `--gate` fails below the
//! gates (`GATE_*`, J3 against J1 as well as absolute), or on any missing or duplicate job,
//! or rows the sink did not store. `--quick`: smaller N (K1 runs three times in both forms).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use test_support::{free_port, Mosquitto, Postgres, TempDir};

// Only build_release of it is used here.
#[allow(dead_code)]
mod common;
mod flags;

/// The seed's one instance: 45,000 jobs a minute.
const SEED_JOBS_PER_S: f64 = 750.0;
const TARGET_J1: f64 = 7_500.0;
const TARGET_LATENESS_P99_MS: f64 = 100.0;
const TARGET_K1: f64 = 0.8;
// CI gates, set well under what was measured (J1 30-42k jobs/s, K1 see the README) so that a
// noisy machine does not flake them; the targets are printed beside.
const GATE_J1: f64 = 7_500.0;
const GATE_LATENESS_P99_MS: f64 = 100.0;
// J3 over J1: three instances together must beat one by this factor. Measured 1.32x on this
// 2-core machine (README, bench J), where the three share the cores with PostgreSQL and
// Mosquitto; 1.10 is within ~15% of that, so a change that loses the parallel gain (claims
// that wait on each other's rows instead of SKIP LOCKED, one instance holding the others
// off) fails. Single pairs in --quick on a quiet machine measured 1.31 1.23 1.15 1.20 1.11 1.17
// 1.17 and, with other work on the machine, 1.08: the gate reads the median of J_PAIRS pairs.
const GATE_J3_OVER_J1: f64 = 1.10;
/// J1 and J3 run as this many alternating pairs, gated on their medians.
const J_PAIRS: usize = 3;
// K1, ours / psql's binary \copy with as many connections, COPY statements alone (the median
// of 3 runs): within ~15% of what `--quick` measured on a quiet machine, 0.85 x the median of
// 6 runs or 0.95 x the lowest when that is lower, rounded down.
//   K1-1 (1 connection each):  0.91 1.07 1.07 1.00 1.09 1.09 (median 1.07): 0.86
//   K1-2 (2 connections each): 1.00 0.87 1.03 1.24 1.20 1.11 (median 1.07): 0.82
const GATE_K1_1: f64 = 0.86;
const GATE_K1_2: f64 = 0.82;

struct Bins {
    job_pub: PathBuf,
    backend: PathBuf,
    publisher: PathBuf,
}

/// Every message on a topic filter, counted by topic (one topic per job).
struct Collector {
    seen: Arc<Mutex<HashMap<String, u32>>>,
}

impl Collector {
    fn start(port: u16, filter: &str) -> Collector {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let s = seen.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let filter = filter.to_string();
        std::thread::spawn(move || {
            let mut o = MqttOptions::new(
                format!("bench-collector-{}", free_port()),
                "127.0.0.1",
                port,
            );
            o.set_keep_alive(Duration::from_secs(60))
                .set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut conn) = Client::new(o, 1024);
            client
                .subscribe(&filter, QoS::AtLeastOnce)
                .expect("subscribe");
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        *s.lock().unwrap().entry(p.topic.clone()).or_insert(0) += 1;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the collector subscribed");
        Collector { seen }
    }

    /// (distinct jobs, duplicates) once `n` distinct arrived or nothing new came for 3 s.
    fn settle(&self, n: u64, within: Duration) -> (u64, u64) {
        let end = Instant::now() + within;
        let mut last = (0, 0);
        let mut quiet_since = Instant::now();
        loop {
            let now = {
                let s = self.seen.lock().unwrap();
                let distinct = s.len() as u64;
                let total: u64 = s.values().map(|c| u64::from(*c)).sum();
                (distinct, total - distinct)
            };
            if now != last {
                quiet_since = Instant::now();
                last = now;
            }
            if (now.0 >= n && quiet_since.elapsed() > Duration::from_millis(500))
                || quiet_since.elapsed() > Duration::from_secs(3)
                || Instant::now() >= end
            {
                return now;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn job_pub(bins: &Bins, pg: &Postgres, args: &[&str]) -> Command {
    let mut c = Command::new(&bins.job_pub);
    c.args(args)
        .env("DATABASE_URL", pg.url())
        .env("PGPASSWORD", pg.password())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

fn ok(mut c: Command, what: &str) {
    let st = c.stderr(Stdio::null()).status().expect(what);
    assert!(st.success(), "{what} failed: {st}");
}

fn read_report(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("report {}: {e}", path.display()));
    serde_json::from_str(&text).expect("report is JSON")
}

fn instant(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().expect("an RFC 3339 time")).expect("RFC 3339")
}

/// Seeds `n` jobs on topics `job/<tag>/{i}` due over `fire_in`, after emptying the table.
fn seed(bins: &Bins, pg: &Postgres, n: u64, tag: &str, fire_in: &str) {
    pg.psql("TRUNCATE jobs");
    ok(
        job_pub(
            bins,
            pg,
            &[
                "seed",
                "--count",
                &n.to_string(),
                "--fire-in",
                fire_in,
                "--topic-template",
                &format!("job/{tag}/{{i}}"),
            ],
        ),
        "job-pub seed",
    );
}

struct Drained {
    jobs_per_s: f64,
    acked: u64,
    distinct: u64,
    duplicates: u64,
    republished: u64,
}

/// Runs `instances` job-pub instances with --until-empty over `n` seeded jobs.
fn drain(
    bins: &Bins,
    pg: &Postgres,
    m: &Mosquitto,
    n: u64,
    instances: usize,
    tag: &str,
) -> Drained {
    seed(bins, pg, n, tag, "-1s..0s");
    let collector = Collector::start(m.port, &format!("job/{tag}/#"));
    let dir = TempDir::new("job-bench");
    let url = m.url();
    let children: Vec<_> = (0..instances)
        .map(|i| {
            let report = dir.path(&format!("r{i}.json"));
            let mut c = job_pub(
                bins,
                pg,
                &[
                    "run",
                    "--broker",
                    &url,
                    "--until-empty",
                    "--quiet",
                    "--report-json",
                ],
            );
            c.arg(&report);
            (
                c.stderr(Stdio::inherit()).spawn().expect("job-pub run"),
                report,
            )
        })
        .collect();
    let reports: Vec<Value> = children
        .into_iter()
        .map(|(mut c, path)| {
            assert!(c.wait().expect("wait").success(), "job-pub run failed");
            read_report(&path)
        })
        .collect();
    let (distinct, duplicates) = collector.settle(n, Duration::from_secs(30));
    let acked: u64 = reports
        .iter()
        .map(|r| r["jobs_acked"].as_u64().unwrap_or(0))
        .sum();
    let republished: u64 = reports
        .iter()
        .map(|r| {
            r["jobs_republished_after_lease_expiry"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    let start = reports
        .iter()
        .map(|r| instant(&r["started_at"]))
        .min()
        .expect("a report");
    let end = reports
        .iter()
        .map(|r| instant(&r["ended_at"]))
        .max()
        .expect("a report");
    let window = end.duration_since(start).unwrap_or_default().as_secs_f64();
    Drained {
        jobs_per_s: acked as f64 / window.max(1e-9),
        acked,
        distinct,
        duplicates,
        republished,
    }
}

fn drained_json(d: &Drained, jobs: u64) -> Value {
    json!({"jobs_per_s": d.jobs_per_s, "acked": d.acked, "missing": jobs.saturating_sub(d.distinct),
        "duplicates": d.duplicates, "republished": d.republished})
}

struct Steady {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    distinct: u64,
    duplicates: u64,
    late: u64,
}

/// `n` jobs due over `secs` from 2 s on, one instance running until all arrived.
fn steady(bins: &Bins, pg: &Postgres, m: &Mosquitto, n: u64, secs: u64) -> Steady {
    seed(bins, pg, n, "steady", &format!("2s..{}s", 2 + secs));
    let collector = Collector::start(m.port, "job/steady/#");
    let dir = TempDir::new("job-bench");
    let report = dir.path("steady.json");
    let mut c = job_pub(
        bins,
        pg,
        &["run", "--broker", &m.url(), "--quiet", "--report-json"],
    );
    c.arg(&report);
    let mut child = c.stderr(Stdio::inherit()).spawn().expect("job-pub run");
    std::thread::sleep(Duration::from_secs(2 + secs));
    let (distinct, duplicates) = collector.settle(n, Duration::from_secs(20));
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let _ = child.wait();
    let r = read_report(&report);
    let ms = |k: &str| r["lateness_us"][k].as_f64().unwrap_or(f64::NAN) / 1000.0;
    Steady {
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        max_ms: ms("max"),
        distinct,
        duplicates,
        late: r["jobs_late"].as_u64().unwrap_or(0),
    }
}

/// One K1 run: the sink with `connections`, psql with as many.
struct Sunk {
    connections: usize,
    /// The sink's window: first batch sealed to last committed.
    ours_rows_per_s: f64,
    written: u64,
    failed: u64,
    /// Rows in the table after the run, and distinct seqs among them (one device).
    counted: u64,
    distinct: u64,
    paused_s: f64,
    arrival_points_per_s: f64,
    /// psql's binary \copy over as many connections, the COPY statements alone.
    psql_binary_rows_per_s: f64,
}

/// psql's figures for the same rows, once per K1 run.
struct Psql {
    /// Binary \copy, COPY statements alone, by connections (1 and 2).
    binary_rows_per_s: [f64; 2],
    /// Binary \copy, one psql process from its start to its exit.
    process_rows_per_s: f64,
    /// CSV \copy, 1 connection, the COPY statement alone.
    csv_rows_per_s: f64,
}

fn psql_cmd(pg: &Postgres) -> Command {
    let mut c = Command::new(test_support::postgres_bindir().join("psql"));
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        "loadgen",
        "-d",
        "postgres",
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
    ])
    .env("PGPASSWORD", pg.password())
    .stdin(Stdio::null());
    c
}

fn psql(pg: &Postgres, cmd: &str) -> String {
    let out = psql_cmd(pg).args(["-c", cmd]).output().expect("psql");
    assert!(
        out.status.success(),
        "psql {cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One psql per file at once, each running `\copy points FROM FILE (FORMAT format)` between
/// two readings of the database's clock in its session: (the COPY statements' window, from
/// the first start to the last end, and the processes' window, from their spawn to the last
/// exit), in seconds.
fn psql_copy(pg: &Postgres, files: &[PathBuf], format: &str) -> (f64, f64) {
    const NOW: &str = "SELECT extract(epoch FROM clock_timestamp())";
    let started = Instant::now();
    let children: Vec<_> = files
        .iter()
        .map(|f| {
            psql_cmd(pg)
                .args(["-c", NOW, "-c"])
                .arg(format!(
                    "\\copy points FROM '{}' (FORMAT {format})",
                    f.display()
                ))
                .args(["-c", NOW])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("psql")
        })
        .collect();
    let (mut first, mut last) = (f64::MAX, f64::MIN);
    for c in children {
        let out = c.wait_with_output().expect("psql");
        assert!(
            out.status.success(),
            "psql \\copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        assert_eq!(times.len(), 2, "psql printed the clock twice");
        first = first.min(times[0]);
        last = last.max(times[1]);
    }
    (last - first, started.elapsed().as_secs_f64())
}

/// backend-sub storing `n` points with `--sink-connections connections`, into a new table.
fn sink(bins: &Bins, pg: &Postgres, m: &Mosquitto, n: u64, connections: usize) -> Sunk {
    psql(pg, "DROP TABLE IF EXISTS points");
    let sink_url = pg.url();
    let conns = connections.to_string();
    let (r, _dir) = stream(
        bins,
        m,
        n,
        &["--sink", &sink_url, "--sink-connections", &conns],
        &[("PGPASSWORD", pg.password())],
    );
    let k = &r["sink"];
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let counts = psql(
        pg,
        "SELECT count(*) || ' ' || count(DISTINCT seq) FROM points",
    );
    let mut counts = counts.split_whitespace().map(|c| c.parse().unwrap_or(0));
    Sunk {
        connections,
        ours_rows_per_s: f(&k["rows_per_s"]),
        written: k["rows_written"].as_u64().unwrap_or(0),
        failed: k["rows_failed"].as_u64().unwrap_or(0),
        counted: counts.next().unwrap_or(0),
        distinct: counts.next().unwrap_or(0),
        paused_s: f(&k["paused_s"]),
        arrival_points_per_s: f(&r["point_rate"]),
        psql_binary_rows_per_s: 0.0,
    }
}

/// psql loading the `n` rows now in the table into it again, truncated: binary over one and
/// two connections, CSV over one.
fn psql_loads(pg: &Postgres, n: u64) -> Psql {
    let dir = TempDir::new("sink-bench-psql");
    // psql's \copy reads and writes the files itself, as this user.
    let all = dir.path("points.bin");
    let halves = [dir.path("points-0.bin"), dir.path("points-1.bin")];
    let csv = dir.path("points.csv");
    psql(
        pg,
        &format!("\\copy points TO '{}' (FORMAT binary)", all.display()),
    );
    for (i, h) in halves.iter().enumerate() {
        psql(
            pg,
            &format!(
                "\\copy (SELECT * FROM points WHERE seq % 2 = {i}) TO '{}' (FORMAT binary)",
                h.display()
            ),
        );
    }
    psql(
        pg,
        &format!("\\copy points TO '{}' (FORMAT csv)", csv.display()),
    );
    let n = n as f64;
    psql(pg, "TRUNCATE points");
    let (one, process) = psql_copy(pg, std::slice::from_ref(&all), "binary");
    psql(pg, "TRUNCATE points");
    let (two, _) = psql_copy(pg, &halves, "binary");
    psql(pg, "TRUNCATE points");
    let (csv_s, _) = psql_copy(pg, std::slice::from_ref(&csv), "csv");
    Psql {
        binary_rows_per_s: [n / one.max(1e-9), n / two.max(1e-9)],
        process_rows_per_s: n / process.max(1e-9),
        csv_rows_per_s: n / csv_s.max(1e-9),
    }
}

/// backend-sub without a sink on the same stream: the points/s verification alone reaches.
fn verify_only(bins: &Bins, m: &Mosquitto, n: u64) -> f64 {
    stream(bins, m, n, &[], &[]).0["point_rate"]
        .as_f64()
        .unwrap_or(0.0)
}

/// backend-sub (with `extra` flags and `envs`) subscribed, then frontend1-pub publishing `n`
/// points to it as fast as it can (1000-point batches, QoS 1); returns the backend's report
/// and the directory it lies in.
fn stream(
    bins: &Bins,
    m: &Mosquitto,
    n: u64,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (Value, TempDir) {
    let dir = TempDir::new("sink-bench");
    let report = dir.path("backend.json");
    let url = m.url();
    let mut backend = Command::new(&bins.backend)
        .args(["--broker", &url, "--expect", &n.to_string()])
        .args(extra)
        .args(["--idle-timeout", "30s", "--quiet", "--report-json"])
        .arg(&report)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("backend-sub");
    // Subscribed (a sink's table is made before that).
    {
        use std::io::BufRead;
        let err = backend.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(err).lines();
        for line in lines.by_ref() {
            if line.expect("stderr").starts_with("subscribed to") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
    }
    let st = Command::new(&bins.publisher)
        .args(["--broker", &url, "--qos", "1", "--rate", "0", "--quiet"])
        .args(["--total", &n.to_string(), "--batch", "1000"])
        .stdout(Stdio::null())
        .status()
        .expect("frontend1-pub");
    assert!(st.success(), "frontend1-pub failed");
    assert!(
        backend.wait().expect("wait").success(),
        "backend-sub failed"
    );
    (read_report(&report), dir)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let flags::Flags {
        quick,
        gate,
        json: json_path,
    } = flags::parse("postgres.json");
    let dir = common::build_release();
    let bins = Bins {
        job_pub: dir.join("job-pub"),
        backend: dir.join("backend-sub"),
        publisher: dir.join("frontend1-pub"),
    };
    let m = Mosquitto::start();
    let pg = Postgres::start();
    ok(job_pub(&bins, &pg, &["migrate"]), "job-pub migrate");
    let (jobs, steady_jobs, steady_s, points, reps) = if quick {
        (100_000, 25_000, 5, 400_000, 1)
    } else {
        (300_000, 50_000, 10, 1_000_000, 3)
    };
    // K1 is gated on a ratio within ~15% of what it measures: three runs in both modes, and
    // their median.
    let k1_reps = 3;
    let mut failures: Vec<String> = Vec::new();

    // J1 and J3 in three alternating pairs, gated on their medians: one pair's J3 / J1
    // swung 1.08-1.31 in --quick on this machine, too wide for a gate of 1.10.
    let mut j_runs: Vec<(Drained, Drained)> = Vec::new();
    for p in 0..J_PAIRS {
        let one = drain(&bins, &pg, &m, jobs, 1, &format!("j1-{p}"));
        let three = drain(&bins, &pg, &m, jobs, 3, &format!("j3-{p}"));
        j_runs.push((one, three));
    }
    let j5 = steady(&bins, &pg, &m, steady_jobs, steady_s);
    let j1_rate = median(j_runs.iter().map(|(a, _)| a.jobs_per_s).collect());
    let j3_rate = median(j_runs.iter().map(|(_, b)| b.jobs_per_s).collect());
    println!(
        "| scenario | what | jobs | jobs/s (median of {J_PAIRS}) | x seed (750/s) | target | gate | received (every run) | missing | duplicates | republished | pass |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (id, what, side, rate, target, gate_at) in [
        (
            "J1",
            "one instance",
            0,
            j1_rate,
            format!(">= {TARGET_J1} jobs/s"),
            GATE_J1,
        ),
        (
            "J3",
            "three instances",
            1,
            j3_rate,
            format!(">= {GATE_J3_OVER_J1}x J1 ({j1_rate:.0})"),
            GATE_J1,
        ),
    ] {
        let runs: Vec<&Drained> = j_runs
            .iter()
            .map(|(a, b)| if side == 0 { a } else { b })
            .collect();
        let missing: u64 = runs.iter().map(|d| jobs.saturating_sub(d.distinct)).sum();
        let duplicates: u64 = runs.iter().map(|d| d.duplicates).sum();
        let all_acked = runs.iter().all(|d| d.acked == jobs);
        let pass = rate >= gate_at && missing == 0 && duplicates == 0 && all_acked;
        let received: Vec<String> = runs.iter().map(|d| d.distinct.to_string()).collect();
        println!(
            "| {id} | {what} | {jobs} | {rate:.0} | {:.1}x | {target} | >= {gate_at:.0} | {} | {missing} | {duplicates} | {} | {} |",
            rate / SEED_JOBS_PER_S,
            received.join(", "),
            runs.iter().map(|d| d.republished).sum::<u64>(),
            if pass { "yes" } else { "NO" }
        );
        if !pass {
            let acked: Vec<String> = runs.iter().map(|d| d.acked.to_string()).collect();
            failures.push(format!(
                "{id} ({what}): {rate:.0} jobs/s (gate {gate_at:.0}), acked {} of {jobs}, {missing} missing, {duplicates} duplicates",
                acked.join(", ")
            ));
        }
    }
    let j_ratios: Vec<f64> = j_runs
        .iter()
        .map(|(a, b)| b.jobs_per_s / a.jobs_per_s.max(1e-9))
        .collect();
    let j3_over_j1 = median(j_ratios.clone());
    let j3_faster = j3_over_j1 >= GATE_J3_OVER_J1;
    let shown: Vec<String> = j_ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "\nJ3 / J1: {j3_over_j1:.2}x, the median of {} (gate {GATE_J3_OVER_J1}x; {}: three instances together faster than one)\n",
        shown.join(", "),
        if j3_faster { "yes" } else { "NO" }
    );
    if !j3_faster {
        failures.push(format!(
            "J3: three instances {j3_over_j1:.2}x one instance, the median of {} (gate {GATE_J3_OVER_J1}x)",
            shown.join(", ")
        ));
    }
    let j5_missing = steady_jobs.saturating_sub(j5.distinct);
    let j5_pass = j5.p99_ms < GATE_LATENESS_P99_MS && j5_missing == 0 && j5.duplicates == 0;
    println!("| scenario | what | jobs | lateness p50 ms | p99 ms | max ms | target p99 | jobs late (> 1 s) | missing | duplicates | pass |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| J5 | 5,000 jobs/s steady for {steady_s} s | {steady_jobs} | {:.1} | {:.1} | {:.1} | < {TARGET_LATENESS_P99_MS} | {} | {j5_missing} | {} | {} |\n",
        j5.p50_ms,
        j5.p99_ms,
        j5.max_ms,
        j5.late,
        j5.duplicates,
        if j5_pass { "yes" } else { "NO" }
    );
    if !j5_pass {
        failures.push(format!(
            "J5: lateness p99 {:.1} ms (gate {GATE_LATENESS_P99_MS}), {j5_missing} missing, {} duplicates",
            j5.p99_ms, j5.duplicates
        ));
    }

    // Each run: the sink with one connection, then with two, then psql on the rows stored.
    let (mut runs, mut loads) = (Vec::new(), Vec::new());
    for _ in 0..k1_reps {
        let mut one = sink(&bins, &pg, &m, points, 1);
        let mut two = sink(&bins, &pg, &m, points, 2);
        let l = psql_loads(&pg, points);
        one.psql_binary_rows_per_s = l.binary_rows_per_s[0];
        two.psql_binary_rows_per_s = l.binary_rows_per_s[1];
        runs.push(one);
        runs.push(two);
        loads.push(l);
    }
    let alone = median((0..reps).map(|_| verify_only(&bins, &m, points)).collect());
    println!("| scenario | what | rows | ours rows/s (sink window) | psql \\copy binary rows/s (COPY statements, as many connections) | ratio (median) | ratio min..max | target | gate | psql \\copy binary, whole process, 1 connection | psql \\copy csv rows/s (COPY statement, 1 connection) | arrival points/s (without the sink) | paused s (db behind) | stored all (sink's count, table's count) | pass |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut k1_json = Vec::new();
    for (id, connections, gate_at) in [("K1-1", 1, GATE_K1_1), ("K1-2", 2, GATE_K1_2)] {
        let mine: Vec<&Sunk> = runs
            .iter()
            .filter(|s| s.connections == connections)
            .collect();
        let ours = median(mine.iter().map(|s| s.ours_rows_per_s).collect());
        let binary = median(mine.iter().map(|s| s.psql_binary_rows_per_s).collect());
        let ratios: Vec<f64> = mine
            .iter()
            .map(|s| s.ours_rows_per_s / s.psql_binary_rows_per_s.max(1e-9))
            .collect();
        let ratio = median(ratios.clone());
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, 0f64), |(a, b), r| (a.min(*r), b.max(*r)));
        let stored = mine.iter().all(|s| {
            s.written == points && s.failed == 0 && s.counted == points && s.distinct == points
        });
        let pass = ratio >= gate_at && stored;
        println!(
            "| {id} | backend-sub --sink, {connections} connection{}, against psql over {connections} | {points} | {ours:.0} | {binary:.0} | {ratio:.2} | {lo:.2}..{hi:.2} | >= {TARGET_K1} | >= {gate_at} | {:.0} | {:.0} | {:.0} ({alone:.0}) | {:.2} | {} | {} |",
            if connections == 1 { "" } else { "s" },
            median(loads.iter().map(|l| l.process_rows_per_s).collect()),
            median(loads.iter().map(|l| l.csv_rows_per_s).collect()),
            median(mine.iter().map(|s| s.arrival_points_per_s).collect()),
            median(mine.iter().map(|s| s.paused_s).collect()),
            if stored {
                "yes".to_string()
            } else {
                let w: Vec<String> = mine
                    .iter()
                    .map(|s| format!("{} written, {} failed, {} in the table ({} distinct)", s.written, s.failed, s.counted, s.distinct))
                    .collect();
                format!("NO: {}", w.join("; "))
            },
            if pass { "yes" } else { "NO" }
        );
        if !pass {
            failures.push(format!(
                "{id}: the sink over {connections} connection(s) at {ratio:.2}x psql's binary \\copy over as many (gate {gate_at}), all stored: {stored}"
            ));
        }
        k1_json.push(
            json!({"scenario": id, "connections": connections, "rows": points,
            "runs": mine.len(), "ours_rows_per_s": ours, "psql_binary_rows_per_s": binary,
            "ratio": ratio, "ratios": ratios, "gate": gate_at, "stored_all": stored}),
        );
    }
    let doc = json!({
        "quick": quick,
        "seed_jobs_per_s": SEED_JOBS_PER_S,
        "J1": {"jobs": jobs, "jobs_per_s": j1_rate, "runs": j_runs.iter().map(|(a, _)| drained_json(a, jobs)).collect::<Vec<_>>()},
        "J3": {"jobs": jobs, "jobs_per_s": j3_rate, "over_j1": j3_over_j1, "over_j1_runs": j_ratios, "gate_over_j1": GATE_J3_OVER_J1, "runs": j_runs.iter().map(|(_, b)| drained_json(b, jobs)).collect::<Vec<_>>()},
        "J5": {"jobs": steady_jobs, "lateness_p50_ms": j5.p50_ms, "lateness_p99_ms": j5.p99_ms, "lateness_max_ms": j5.max_ms, "missing": j5_missing, "duplicates": j5.duplicates},
        "K1": {"rows": points, "verify_only_points_per_s": alone, "scenarios": k1_json,
            "psql_binary_process_rows_per_s": median(loads.iter().map(|l| l.process_rows_per_s).collect()),
            "psql_csv_rows_per_s": median(loads.iter().map(|l| l.csv_rows_per_s).collect())},
        "failures": failures,
    });
    if let Some(p) = json_path.parent() {
        let _ = std::fs::create_dir_all(p);
    }
    if let Err(e) = std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    ) {
        eprintln!("cannot write {}: {e}", json_path.display());
    }
    if gate && !failures.is_empty() {
        for f in &failures {
            eprintln!("gate: {f}");
        }
        std::process::exit(1);
    }
}
