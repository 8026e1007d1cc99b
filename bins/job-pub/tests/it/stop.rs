//! How a run ends: `--until-empty` waits for the jobs due within its horizon (and no
//! longer than `--max-horizon`), `--duration` ends it by the clock; and the line job-pub
//! shows while it waits.

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use test_support::{assert_matches_schema, Mosquitto, Postgres, TempDir};

use super::hostile::wait_bounded;
use super::{job_pub, n, ok, read_report, Collector};

/// `job-pub run` with `args`, its progress on a pipe (plain lines), its report in `report`.
fn run(pg: &Postgres, m: &Mosquitto, report: &std::path::Path, args: &[&str]) -> Child {
    job_pub(pg, &["run", "--broker", &m.url()])
        .args(args)
        .arg("--report-json")
        .arg(report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn seed(pg: &Postgres, count: &str, fire_in: &str, payload: &str) {
    ok(job_pub(
        pg,
        &[
            "seed",
            "--count",
            count,
            "--fire-in",
            fire_in,
            "--payload-template",
            payload,
        ],
    )
    .output()
    .unwrap());
}

/// The run succeeded: its report, checked against the schema.
fn succeeded(out: &Output, report: &std::path::Path) -> Value {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("panicked"),
        "exit {:?}: {err}",
        out.status.code()
    );
    let r = read_report(report);
    assert_matches_schema("schema/job-pub-report.schema.json", &r);
    r
}

#[test]
fn until_empty_waits_for_jobs_due_seconds_ahead_and_exits_by_itself() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    seed(&pg, "300", "2s..3s", "soon-{i}");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-until-empty");
    let report = dir.path("r.json");
    let out = wait_bounded(
        run(&pg, &m, &report, &["--until-empty", "--quiet"]),
        Duration::from_secs(60),
    );
    let r = succeeded(&out, &report);
    assert_eq!(
        (n(&r, "jobs_claimed"), n(&r, "jobs_acked")),
        (300, 300),
        "every job due within the horizon was waited for: {r:#}"
    );
    assert_eq!(r["stopped_by"], "empty", "{r:#}");
    assert_eq!(r["outcome"], "complete");
    assert_eq!(r["horizon_capped"], false);
    assert_eq!(n(&r, "jobs_left_after_horizon"), 0);
    let h = r["horizon_s"].as_f64().unwrap();
    assert!(
        h > 0.5 && h <= 3.0,
        "the horizon is the latest fire_at: {h}"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE NOT processed"),
        "0"
    );
    let seen = sub.settle(300, Duration::from_millis(300));
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|c| *c == 1), "each once");
}

#[test]
fn while_it_waits_job_pub_names_the_jobs_due_the_next_fire_and_the_time_left() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    seed(&pg, "50", "4s..4s", "{i}");
    let dir = TempDir::new("job-pub-waiting");
    let report = dir.path("r.json");
    let out = wait_bounded(
        run(&pg, &m, &report, &["--until-empty", "--duration", "30s"]),
        Duration::from_secs(60),
    );
    let r = succeeded(&out, &report);
    assert_eq!(n(&r, "jobs_acked"), 50, "{r:#}");
    let err = String::from_utf8_lossy(&out.stderr);
    // Plain lines (stderr is a pipe): the first as the wait begins, with the horizon (4 s)
    // nearer than --duration (30 s).
    let line = err
        .lines()
        .find(|l| l.contains("waiting: "))
        .unwrap_or_else(|| panic!("no waiting line: {err}"));
    assert!(
        line.contains("waiting: 50 jobs due, the next in ")
            && line.contains(" UTC)")
            && line.contains(" s left of the horizon"),
        "{line}"
    );
}

#[test]
fn duration_ends_a_run_by_the_clock_with_exit_0_and_claims_nothing_due_later() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    seed(&pg, "100", "0s..1s", "now-{i}");
    seed(&pg, "100", "60s..60s", "later-{i}");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-duration");
    // A run that would go on until stopped, ended by the clock.
    let report = dir.path("duration.json");
    let out = wait_bounded(
        run(&pg, &m, &report, &["--duration", "2s", "--quiet"]),
        Duration::from_secs(30),
    );
    let r = succeeded(&out, &report);
    assert_eq!(r["stopped_by"], "duration", "{r:#}");
    assert_eq!(r["outcome"], "complete");
    assert_eq!(r["duration_s"].as_f64(), Some(2.0));
    assert_eq!(
        (
            n(&r, "jobs_claimed"),
            n(&r, "jobs_acked"),
            n(&r, "jobs_failed")
        ),
        (100, 100, 0),
        "{r:#}"
    );
    // Nothing in flight was dropped: the jobs due later were never claimed or leased.
    assert_eq!(
        pg.psql(
            "SELECT count(*) FILTER (WHERE processed), \
                    count(*) FILTER (WHERE claimed_until IS NOT NULL OR attempts > 0 AND NOT processed) \
               FROM jobs"
        ),
        "100|0"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("stopped by          --duration 2.0 s"),
        "{stdout}"
    );
    let seen = sub.settle(100, Duration::from_millis(300));
    assert_eq!(seen.len(), 100);
    assert!(seen.keys().all(|k| k.starts_with("now-")), "{seen:?}");
    // With --until-empty too, whichever comes first: here --duration, long before the jobs
    // due a minute ahead.
    let report = dir.path("both.json");
    let out = wait_bounded(
        run(
            &pg,
            &m,
            &report,
            &["--until-empty", "--duration", "1s", "--quiet"],
        ),
        Duration::from_secs(20),
    );
    let r = succeeded(&out, &report);
    assert_eq!(r["stopped_by"], "duration", "{r:#}");
    assert_eq!(n(&r, "jobs_claimed"), 0, "{r:#}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE NOT processed"),
        "100"
    );
}

#[test]
fn a_latest_job_past_max_horizon_ends_the_run_at_the_cap_and_counts_the_jobs_left() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    seed(&pg, "40", "1s..2s", "soon-{i}");
    seed(&pg, "25", "2h..2h", "later-{i}");
    let dir = TempDir::new("job-pub-cap");
    let report = dir.path("capped.json");
    let out = wait_bounded(
        run(
            &pg,
            &m,
            &report,
            &["--until-empty", "--max-horizon", "3s", "--quiet"],
        ),
        Duration::from_secs(30),
    );
    let r = succeeded(&out, &report);
    assert_eq!(
        (
            n(&r, "jobs_acked"),
            n(&r, "jobs_left_after_horizon"),
            r["horizon_capped"].as_bool(),
            r["horizon_s"].as_f64(),
        ),
        (40, 25, Some(true), Some(3.0)),
        "{r:#}"
    );
    assert_eq!(r["stopped_by"], "empty");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("capped by --max-horizon; 25 jobs due later left for a later run"),
        "{stdout}"
    );
    // An explicit --horizon: what the table holds does not move it.
    let report = dir.path("horizon.json");
    let out = wait_bounded(
        run(
            &pg,
            &m,
            &report,
            &["--until-empty", "--horizon", "500ms", "--quiet"],
        ),
        Duration::from_secs(20),
    );
    let r = succeeded(&out, &report);
    assert_eq!(
        (
            n(&r, "jobs_claimed"),
            n(&r, "jobs_left_after_horizon"),
            r["horizon_capped"].as_bool(),
            r["horizon_s"].as_f64(),
        ),
        (0, 25, Some(false), Some(0.5)),
        "{r:#}"
    );
    // A horizon past the cap, or without --until-empty: one line saying what to change.
    for (args, needle) in [
        (
            &["--until-empty", "--horizon", "2h"][..],
            "--horizon 2h is beyond --max-horizon 1h; raise --max-horizon",
        ),
        (&["--horizon", "5s"][..], "add --until-empty"),
    ] {
        let out = job_pub(&pg, &["run", "--broker", &m.url()])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(needle) && err.lines().count() == 1, "{err}");
    }
}

/// Reads `child`'s stderr on a thread until a line holds `needle` (panics past `within`);
/// the thread then reads the rest, and returns all it read.
fn wait_for_stderr_line(
    child: &mut Child,
    needle: &'static str,
    within: Duration,
) -> std::thread::JoinHandle<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(needle) {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if rx.recv_timeout(within).is_err() {
        let _ = child.kill();
        panic!("no line with '{needle}': {}", reader.join().unwrap());
    }
    reader
}

#[test]
fn jobs_inserted_after_the_start_and_due_within_the_horizon_are_published_too() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    seed(&pg, "20", "4s..4s", "seeded-{i}");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-inserted");
    let report = dir.path("r.json");
    let mut child = run(&pg, &m, &report, &["--until-empty"]);
    // The run has started (and drawn its horizon, 4 s ahead) once it says it waits.
    let stderr = wait_for_stderr_line(&mut child, "waiting: ", Duration::from_secs(20));
    pg.psql(
        "INSERT INTO jobs (topic, payload, fire_at) \
         SELECT 'job/late-' || i, 'inserted-' || i, now() + interval '1 second' \
           FROM generate_series(1, 10) i",
    );
    let out = wait_bounded(child, Duration::from_secs(60));
    let stderr = stderr.join().unwrap();
    assert!(out.status.success(), "{stderr}");
    let r = read_report(&report);
    assert_eq!(n(&r, "jobs_acked"), 30, "{r:#}\n{stderr}");
    let seen = sub.settle(30, Duration::from_millis(300));
    assert_eq!(
        seen.keys().filter(|k| k.starts_with("inserted-")).count(),
        10,
        "{seen:?}"
    );
}
