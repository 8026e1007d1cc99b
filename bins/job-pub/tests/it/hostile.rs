//! Hostile rows, brokers and databases: a job MQTT forbids, a job the broker closes the
//! connection for, rows that cannot be read, a database that goes away or was never there.
//! Each ends in a count, a one-line error that says what to change, and the documented exit
//! code: never a loop, a panic or a job in no count.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::{
    assert_matches_schema, free_port, postgres_bindir, Mosquitto, Postgres, TempDir,
};

use super::{job_pub, n, ok, read_report, signal, Collector, BIN};

/// Waits for `child` at most `within`; kills it past that (a loop is a failure, not a hang).
pub(super) fn wait_bounded(mut child: Child, within: Duration) -> Output {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "still running after {within:?}: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn run_until_empty(
    pg: &Postgres,
    m: &Mosquitto,
    report: &std::path::Path,
    extra: &[&str],
) -> Child {
    job_pub(
        pg,
        &["run", "--broker", &m.url(), "--until-empty", "--quiet"],
    )
    .args(extra)
    .arg("--report-json")
    .arg(report)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that `out` is no panic.
fn assert_no_panic(out: &Output) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

#[test]
fn a_topic_mqtt_forbids_is_refused_up_front_and_the_jobs_around_it_go_out_once() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    // Mosquitto closes the connection of a client that publishes any of the middle three.
    pg.psql(
        "INSERT INTO jobs (topic, payload, fire_at) VALUES
           ('job/1', 'one', now()),
           (E'job/\\x01ctl', 'control', now()),
           ('$SYS/broker/x', 'sys', now()),
           (E'job/\\uFDD0', 'noncharacter', now()),
           ('job/5', 'five', now())",
    );
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-forbidden");
    let out = wait_bounded(
        run_until_empty(&pg, &m, &dir.path("r.json"), &[]),
        Duration::from_secs(40),
    );
    assert_no_panic(&out);
    let err = stderr(&out);
    let r = read_report(&dir.path("r.json"));
    assert_matches_schema("schema/job-pub-report.schema.json", &r);
    assert_eq!(
        (
            n(&r, "jobs_acked"),
            n(&r, "jobs_rejected"),
            n(&r, "jobs_failed")
        ),
        (2, 3, 0),
        "{r:#}\n{err}"
    );
    assert_eq!(
        n(&r, "mqtt_reconnects"),
        0,
        "nothing reached the broker: {r:#}"
    );
    assert_eq!(n(&r, "jobs_republished_after_lease_expiry"), 0, "{r:#}");
    // Each refused job is named by its id, its character escaped.
    assert!(err.contains("job 2 ") && err.contains("\\x01"), "{err}");
    assert!(err.contains("job 3 ") && err.contains("'$'"), "{err}");
    assert!(err.contains("job 4 ") && err.contains("U+FDD0"), "{err}");
    // Not everything asked for went out: said by the exit code and the outcome.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(r["outcome"], "incomplete");
    assert_eq!(
        pg.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM jobs WHERE skipped"),
        "2,3,4"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE NOT processed"),
        "0"
    );
    let seen = sub.settle(2, Duration::from_millis(300));
    assert_eq!(
        (seen.get("one"), seen.get("five"), seen.len()),
        (Some(&1), Some(&1), 2),
        "{seen:?}"
    );
    // Nor does seed write such jobs.
    let out = job_pub(
        &pg,
        &["seed", "--count", "3", "--topic-template", "$SYS/{i}"],
    )
    .output()
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--topic-template makes the topic '$SYS/0', which starts with '$'"),
        "{err}"
    );
}

#[test]
fn a_job_the_broker_closes_the_connection_for_is_given_up_after_three_losses() {
    let pg = Postgres::start();
    // Mosquitto disconnects a 3.1.1 client that sends a packet over its limit: the job is
    // fine by MQTT and by --max-packet-size, only this broker will not take it.
    let m = Mosquitto::start_with(&["max_packet_size 2000".into()]);
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    let big = "x".repeat(5000);
    pg.psql(&format!(
        "INSERT INTO jobs (topic, payload, fire_at) VALUES
           ('job/1', 'one', now()), ('job/2', '{big}', now()), ('job/3', 'three', now())"
    ));
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-killer");
    let out = wait_bounded(
        run_until_empty(&pg, &m, &dir.path("r.json"), &[]),
        Duration::from_secs(60),
    );
    assert_no_panic(&out);
    let err = stderr(&out);
    let r = read_report(&dir.path("r.json"));
    assert_matches_schema("schema/job-pub-report.schema.json", &r);
    assert_eq!(
        (
            n(&r, "jobs_acked"),
            n(&r, "jobs_given_up"),
            n(&r, "jobs_failed")
        ),
        (2, 1, 0),
        "{r:#}\n{err}"
    );
    assert_eq!(n(&r, "jobs_republished_after_lease_expiry"), 0, "{r:#}");
    assert!(
        err.contains("job 2 ") && err.contains("given up"),
        "the job is named: {err}"
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        pg.psql("SELECT processed AND skipped FROM jobs WHERE id = 2"),
        "t"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE NOT processed"),
        "0"
    );
    let seen = sub.settle(2, Duration::from_millis(500));
    assert!(!seen.contains_key(&big), "{}", seen.len());
    // The jobs around it arrived; the one before it at most once more than it was
    // acknowledged (its acknowledgement may be lost with the connection).
    assert_eq!(seen.get("three"), Some(&1), "{seen:?}");
    assert!(seen.get("one").is_some_and(|c| *c <= 2), "{seen:?}");
}

/// The size check measures what goes out: a payload of quotes doubles when the wrapper
/// escapes it into a JSON string. 600,000 quotes fit the 1 MiB packet limit raw, not
/// wrapped: refused up front, not sent and refused by the client or the broker on every
/// instance that claims it.
#[test]
fn a_job_over_the_packet_limit_once_wrapped_is_refused_up_front() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    pg.psql(
        "INSERT INTO jobs (topic, payload, fire_at) VALUES
           ('job/1', 'one', now()), ('job/2', repeat('\"', 600000), now()),
           ('job/3', 'three', now())",
    );
    let dir = TempDir::new("job-pub-wrapped");
    let out = wait_bounded(
        run_until_empty(&pg, &m, &dir.path("r.json"), &["--job-id", "wrapper"]),
        Duration::from_secs(60),
    );
    assert_no_panic(&out);
    assert!(dir.path("r.json").exists(), "no report: {}", stderr(&out));
    let r = read_report(&dir.path("r.json"));
    assert_eq!(
        (
            n(&r, "jobs_acked"),
            n(&r, "jobs_rejected"),
            n(&r, "jobs_failed")
        ),
        (2, 1, 0),
        "{r:#}\n{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("job 2 "), "{}", stderr(&out));
}

#[test]
fn the_database_gone_after_publishing_counts_the_jobs_left_unmarked_and_exits_3() {
    let mut pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    // Claimed at once (within --lookahead), held until they fire: the database goes away
    // while the batch is held, before it can be marked processed.
    seed_fire_in(&pg, "100", "4s..4s");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-db-gone");
    let child = run_until_empty(
        &pg,
        &m,
        &dir.path("r.json"),
        &["--lookahead", "10s", "--db-timeout", "2s"],
    );
    let end = Instant::now() + Duration::from_secs(20);
    while pg.psql("SELECT count(*) FROM jobs WHERE claimed_until IS NOT NULL") != "100" {
        assert!(Instant::now() < end, "the batch was never claimed");
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.kill();
    let out = wait_bounded(child, Duration::from_secs(40));
    assert_no_panic(&out);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: cannot reach database postgres://"),
        "{last}"
    );
    assert!(!err.contains("broker postgres"), "{err}");
    let r = read_report(&dir.path("r.json"));
    assert_matches_schema("schema/job-pub-report.schema.json", &r);
    assert_eq!(
        (
            n(&r, "jobs_claimed"),
            n(&r, "jobs_acked"),
            n(&r, "jobs_unrecorded")
        ),
        (100, 100, 100),
        "acknowledged, never marked processed: counted {r:#}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("published again"), "{text}");
    let seen = sub.settle(100, Duration::from_millis(300));
    assert_eq!(seen.len(), 100);
}

fn seed_fire_in(pg: &Postgres, count: &str, fire_in: &str) {
    ok(
        job_pub(pg, &["seed", "--count", count, "--fire-in", fire_in])
            .output()
            .unwrap(),
    );
}

/// `job-pub ARGS` against `url` (with the test's password unless `password` says otherwise).
fn job_pub_at(url: &str, password: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", url)
        .env("PGPASSWORD", password)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts exit `code` and one `error:` line holding each of `needles`; returns the line.
fn one_line_error(out: &Output, code: i32, needles: &[&str]) -> String {
    assert_no_panic(out);
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {err}");
    for needle in needles {
        assert!(lines[0].contains(needle), "'{needle}' not in: {}", lines[0]);
    }
    lines[0].to_string()
}

#[test]
fn database_errors_name_the_database_and_say_what_to_change() {
    let pg = Postgres::start();
    let base = pg.url().trim_end_matches("/postgres").to_string();
    let run = ["run", "--broker", "mqtt://127.0.0.1:1", "--until-empty"];
    // No such database: not a missing table, and not the broker.
    for args in [&["migrate"][..], &run[..]] {
        let line = one_line_error(
            &job_pub_at(&format!("{base}/nosuch"), pg.password(), args),
            4,
            &["database", "\"nosuch\" does not exist", "CREATE DATABASE"],
        );
        assert!(
            !line.contains("migrate") && !line.contains("broker"),
            "{line}"
        );
    }
    // A wrong password, and a user the server does not know (which scram reports alike).
    let url = pg.url();
    let line = one_line_error(
        &job_pub_at(&url, "wrong", &run),
        4,
        &["password authentication failed", "PGPASSWORD"],
    );
    assert!(!line.contains("migrate"), "{line}");
    let nobody = url.replace("loadgen@", "nobody@");
    one_line_error(
        &job_pub_at(&nobody, pg.password(), &run),
        4,
        &["\"nobody\"", "--database-url"],
    );
    // A role that may not log in.
    pg.psql("CREATE ROLE cannot_login PASSWORD 'pw'");
    one_line_error(
        &job_pub_at(&url.replace("loadgen@", "cannot_login@"), "pw", &run),
        4,
        &["not permitted to log in", "LOGIN"],
    );
    // The table missing: that one is for migrate.
    let out = job_pub_at(
        &url,
        pg.password(),
        &[&run[..], &["--table", "nosuch"]].concat(),
    );
    one_line_error(&out, 2, &["nosuch", "run job-pub migrate first"]);
    // No server at all: unreachable, and named as the database.
    let gone = format!("postgres://loadgen@127.0.0.1:{}/postgres", free_port());
    let out = job_pub_at(
        &gone,
        pg.password(),
        &[&run[..], &["--db-timeout", "1s"]].concat(),
    );
    assert_no_panic(&out);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    // A line says it retries; the error is the last.
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: cannot reach database postgres://")
            && last.contains("--db-timeout"),
        "{err}"
    );
}

#[test]
fn migrate_and_run_refuse_columns_of_the_wrong_type_or_that_allow_null() {
    let pg = Postgres::start();
    pg.psql(
        "CREATE TABLE itopic (id bigserial PRIMARY KEY, topic integer NOT NULL, payload text NOT NULL,
                              fire_at timestamptz NOT NULL, processed boolean NOT NULL DEFAULT false,
                              processed_at timestamptz)",
    );
    for args in [
        &["migrate", "--table", "itopic"][..],
        &["run", "--broker", "mqtt://127.0.0.1:1", "--table", "itopic"][..],
    ] {
        one_line_error(
            &job_pub(&pg, args).output().unwrap(),
            2,
            &["itopic", "topic", "integer", "text"],
        );
    }
    pg.psql(
        "CREATE TABLE nulls (id bigserial PRIMARY KEY, topic text, payload text NOT NULL,
                             fire_at timestamptz NOT NULL, processed boolean NOT NULL DEFAULT false,
                             processed_at timestamptz)",
    );
    one_line_error(
        &job_pub(&pg, &["migrate", "--table", "nulls"])
            .output()
            .unwrap(),
        2,
        &["nulls", "topic", "NULL", "SET NOT NULL"],
    );
}

#[test]
fn a_null_row_at_run_time_is_set_aside_by_its_id_and_the_others_go_on() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    pg.psql("INSERT INTO jobs (topic, payload, fire_at) VALUES ('job/1', 'one', now())");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-null-row");
    let mut child = job_pub(&pg, &["run", "--broker", &m.url(), "--quiet"])
        .arg("--report-json")
        .arg(dir.path("r.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Past its start-up check (the first job done), the table changes under it.
    let wait_for = |sql: &str, want: &str, child: &mut Child| {
        let end = Instant::now() + Duration::from_secs(30);
        while pg.psql(sql) != want {
            assert!(child.try_wait().unwrap().is_none(), "job-pub ended early");
            assert!(Instant::now() < end, "{sql}: never {want}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("SELECT count(*) FROM jobs WHERE processed", "1", &mut child);
    pg.psql(
        "ALTER TABLE jobs ALTER COLUMN topic DROP NOT NULL, ALTER COLUMN payload DROP NOT NULL;
         INSERT INTO jobs (topic, payload, fire_at) VALUES
           (NULL, 'no topic', now()), ('job/3', NULL, now()), ('job/4', 'four', now())",
    );
    wait_for("SELECT count(*) FROM jobs WHERE processed", "4", &mut child);
    signal(child.id(), "TERM");
    let out = wait_bounded(child, Duration::from_secs(20));
    assert_no_panic(&out);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(143), "{err}");
    let r = read_report(&dir.path("r.json"));
    assert_matches_schema("schema/job-pub-report.schema.json", &r);
    assert_eq!(
        (n(&r, "jobs_acked"), n(&r, "jobs_unreadable")),
        (2, 2),
        "{r:#}\n{err}"
    );
    assert!(
        err.contains("job 2 ") && err.contains("topic is NULL"),
        "{err}"
    );
    assert!(
        err.contains("job 3 ") && err.contains("payload is NULL"),
        "{err}"
    );
    assert_eq!(
        pg.psql("SELECT string_agg(id::text, ',' ORDER BY id) FROM jobs WHERE skipped"),
        "2,3"
    );
    let seen = sub.settle(2, Duration::from_millis(300));
    assert_eq!((seen.get("four"), seen.len()), (Some(&1), 2), "{seen:?}");
}

#[test]
fn a_row_that_is_not_utf8_in_an_sql_ascii_database_is_set_aside_by_id_and_the_others_go_out() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    pg.psql(
        "CREATE DATABASE ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    );
    let url = pg.url().replace("/postgres", "/ascii");
    let out = job_pub_at(&url, pg.password(), &["migrate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let psql = Command::new(postgres_bindir().join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "loadgen",
            "-d",
            "ascii",
        ])
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(
            "INSERT INTO jobs (topic, payload, fire_at) VALUES
               ('job/1', 'one', now()), (E'job/\\xff', 'bad topic', now()),
               ('job/3', E'\\xfe\\xff', now()), ('job/4', 'four', now())",
        )
        .env("PGPASSWORD", pg.password())
        .output()
        .unwrap();
    assert!(psql.status.success(), "{}", stderr(&psql));
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-ascii");
    let child = Command::new(BIN)
        .args(["run", "--broker", &m.url(), "--until-empty", "--quiet"])
        .arg("--report-json")
        .arg(dir.path("r.json"))
        .env("DATABASE_URL", &url)
        .env("PGPASSWORD", pg.password())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(40));
    assert_no_panic(&out);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "two jobs could not go out: {err}"
    );
    let r = read_report(&dir.path("r.json"));
    assert_eq!(
        (n(&r, "jobs_acked"), n(&r, "jobs_unreadable")),
        (2, 2),
        "{r:#}\n{err}"
    );
    assert!(
        err.contains("job 2 ") && err.contains("topic is not UTF-8"),
        "{err}"
    );
    assert!(
        err.contains("job 3 ") && err.contains("payload is not UTF-8"),
        "{err}"
    );
    let seen = sub.settle(2, Duration::from_millis(300));
    assert_eq!(
        (seen.get("one"), seen.get("four"), seen.len()),
        (Some(&1), Some(&1), 2),
        "{seen:?}"
    );
}

#[test]
fn lateness_past_the_histograms_ceiling_is_counted_as_clamped() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    pg.psql(
        "INSERT INTO jobs (topic, payload, fire_at) VALUES
           ('job/old', 'two years late', now() - interval '2 years'), ('job/new', 'on time', now())",
    );
    let dir = TempDir::new("job-pub-clamped");
    let out = wait_bounded(
        run_until_empty(&pg, &m, &dir.path("r.json"), &[]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Value = read_report(&dir.path("r.json"));
    assert_matches_schema("schema/job-pub-report.schema.json", &r);
    assert_eq!(n(&r, "lateness_clamped"), 1, "{r:#}");
    assert!(
        text.contains("1 job later than the lateness histogram's ceiling"),
        "{text}"
    );
}
