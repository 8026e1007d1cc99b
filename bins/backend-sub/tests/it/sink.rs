//! `--sink postgres://...` against a real PostgreSQL (started by the test on a free port):
//! what the backend verified is what the table holds, once; a slow database pauses the
//! subscription without the backend's memory growing; bad sinks are usage errors.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use test_support::{payload, publish_payloads, workspace_bin, Mosquitto, Postgres};

use crate::common::{n, run_to_end, run_to_end_env, start_env, validate};

fn publisher(bin: &str, url: &str, extra: &[&str]) -> std::process::Child {
    Command::new(workspace_bin(bin))
        .args(["--broker", url, "--qos", "1", "--quiet"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn publisher")
}

fn count(pg: &Postgres, sql: &str) -> u64 {
    let v = pg.psql(sql);
    v.parse()
        .unwrap_or_else(|_| panic!("{sql} gave {v:?}, not a count"))
}

#[test]
fn the_table_holds_each_verified_point_once_and_redeliveries_are_not_stored_again() {
    let m = Mosquitto::start();
    let pg = Postgres::start();
    let url = m.url();
    let sink = pg.url();
    let backend = start_env(
        &[
            "--broker",
            &url,
            "--sink",
            &sink,
            "--sink-batch",
            "5000",
            "--idle-timeout",
            "3s",
            "--at-least-once",
        ],
        &[("PGPASSWORD", pg.password())],
    );
    let mut p1 = publisher(
        "frontend1-pub",
        &url,
        &["--total", "100000", "--batch", "1000", "--rate", "0"],
    );
    let mut p2 = publisher(
        "frontend2-pub",
        &url,
        &["--total", "50000", "--batch", "100", "--rate", "0"],
    );
    assert!(p1.wait().unwrap().success());
    assert!(p2.wait().unwrap().success());
    // Points the backend has already seen, sent again, and two new ones of another device.
    publish_payloads(
        m.port,
        "device_data/again",
        &[
            payload("frontend2_ultra_high_perf_device", &[0, 1, 2, 3, 4]),
            payload("dev_extra", &[0, 1]),
        ],
    );
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    validate(r);
    let unique = n(r, "points_unique");
    let k = &r["sink"];
    assert_eq!(unique, 150_002, "{:#}", r);
    assert_eq!(
        (
            n(k, "rows_written"),
            n(k, "rows_failed"),
            n(k, "rows_rejected")
        ),
        (unique, 0, 0),
        "{k:#}"
    );
    assert!(n(r, "points_duplicate") >= 5, "{r:#}");
    assert!(!k["database"].as_str().unwrap().contains(pg.password()));
    assert_eq!(count(&pg, "SELECT count(*) FROM points"), unique);
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM points) d"
        ),
        unique
    );
    // Each device's seqs, whole, as the backend verified them.
    let f1 = pg.psql(
        "SELECT count(*), min(seq), max(seq) FROM points WHERE device_id = 'frontend1_ultra_high_perf_device'",
    );
    assert_eq!(f1, "100000|0|99999");
    // Times are the points' own, and arrival comes after them (one clock).
    let bad_times = count(
        &pg,
        "SELECT count(*) FROM points WHERE received_at < ts - interval '1 second' \
         OR ts < now() - interval '10 minutes' OR ts > now()",
    );
    assert_eq!(bad_times, 0);
    assert!(out.stdout.contains("rows written"), "{}", out.stdout);
}

#[test]
fn a_locked_table_pauses_the_subscription_with_bounded_memory_and_loses_nothing() {
    let m = Mosquitto::start();
    let pg = Postgres::start();
    let url = m.url();
    let sink = pg.url();
    let total: u64 = 400_000;
    let batch: u64 = 5_000;
    let backend = start_env(
        &[
            "--broker",
            &url,
            "--sink",
            &sink,
            "--sink-batch",
            "5000",
            "--sink-connections",
            "1",
            "--expect",
            &total.to_string(),
            "--idle-timeout",
            "20s",
        ],
        &[("PGPASSWORD", pg.password())],
    );
    // Another session holds the table for 6 s: every COPY waits for it.
    let mut holder = lock_table(&pg, 6);
    let mut p = publisher(
        "frontend1-pub",
        &url,
        &[
            "--total",
            &total.to_string(),
            "--batch",
            "1000",
            "--rate",
            "0",
        ],
    );
    assert!(p.wait().unwrap().success());
    // The publisher is done: the broker holds what the backend has not taken.
    let peak_kb = backend.peak_rss_kb().expect("VmHWM");
    assert!(holder.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    validate(r);
    let k = &r["sink"];
    assert_eq!(n(r, "points_unique"), total);
    assert_eq!((n(k, "rows_written"), n(k, "rows_failed")), (total, 0));
    assert_eq!(count(&pg, "SELECT count(*) FROM points"), total);
    // The pause was the database's, and while it lasted at most the sealed batches (2 for
    // one connection), the open one and what one read brought were held: not the 400k.
    assert!(k["paused_s"].as_f64().unwrap() >= 2.0, "{k:#}");
    let buffered = n(k, "max_buffered_rows");
    assert!(buffered <= 3 * batch + 40_000, "{k:#}");
    // About 14 MB here; 400,000 rows held at once would add over 40 MB on their own.
    assert!(peak_kb < 30_000, "peak RSS {peak_kb} kB while paused");
}

/// Another session takes the table `points` and holds it for `secs`: every COPY waits.
/// Returns once the lock is held.
fn lock_table(pg: &Postgres, secs: u32) -> std::process::Child {
    let holder = Command::new(test_support::postgres_bindir().join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "loadgen",
        ])
        .args(["-d", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"])
        .arg("-c")
        .arg(format!(
            "BEGIN; LOCK TABLE points IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep({secs}); COMMIT;"
        ))
        .env("PGPASSWORD", pg.password())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql");
    let locked_by = Instant::now() + Duration::from_secs(10);
    while count(
        pg,
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
         WHERE c.relname = 'points' AND l.mode = 'AccessExclusiveLock' AND l.granted",
    ) == 0
    {
        assert!(Instant::now() < locked_by, "the lock was never taken");
        std::thread::sleep(Duration::from_millis(50));
    }
    holder
}

#[test]
fn a_batch_held_by_the_database_is_not_taken_for_an_idle_stream() {
    // Mosquitto's default window: 20 unacknowledged messages, then it waits for PUBACKs,
    // which the backend holds until their points are stored.
    let m = Mosquitto::start_with(&["max_inflight_messages 20".to_string()]);
    let pg = Postgres::start();
    let url = m.url();
    let sink = pg.url();
    let total: u64 = 60_000;
    let backend = start_env(
        &[
            "--broker",
            &url,
            "--sink",
            &sink,
            "--expect",
            &total.to_string(),
            "--idle-timeout",
            "1s",
        ],
        &[("PGPASSWORD", pg.password())],
    );
    let mut holder = lock_table(&pg, 3);
    let mut p = publisher(
        "frontend1-pub",
        &url,
        &[
            "--total",
            &total.to_string(),
            "--batch",
            "1000",
            "--rate",
            "0",
        ],
    );
    // The stream stalls for 3 s behind the lock: longer than --idle-timeout, yet not idle.
    assert!(p.wait().unwrap().success());
    assert!(holder.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    assert_eq!(r["stopped_by"], "expected", "{r:#}");
    assert_eq!(n(&r["sink"], "rows_written"), total);
    assert_eq!(count(&pg, "SELECT count(*) FROM points"), total);
}

#[test]
fn a_backend_killed_before_its_rows_are_stored_leaves_them_with_the_broker_for_the_next() {
    let m = Mosquitto::start();
    let pg = Postgres::start();
    let url = m.url();
    let sink = pg.url();
    let total: u64 = 50_000;
    let args = |expect: Option<&str>| -> Vec<String> {
        let mut a: Vec<String> = [
            "--broker",
            &url,
            "--sink",
            &sink,
            "--client-id",
            "sink-restarted",
            "--clean-session",
            "false",
            "--idle-timeout",
            "20s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(n) = expect {
            a.extend(["--expect".to_string(), n.to_string()]);
        }
        a
    };
    let first_args = args(None);
    let first: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let first = start_env(&first, &[("PGPASSWORD", pg.password())]);
    // Held until the test lets go, after the kill, however slow the machine.
    let mut holder = lock_table(&pg, 120);
    let mut p = publisher(
        "frontend1-pub",
        &url,
        &[
            "--total",
            &total.to_string(),
            "--batch",
            "1000",
            "--rate",
            "0",
        ],
    );
    assert!(p.wait().unwrap().success());
    // Received, their rows waiting on the lock, their PUBACKs held: killed.
    std::thread::sleep(Duration::from_millis(500));
    first.signal("KILL");
    while !first.exited() {
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE '%LOCK TABLE points%' AND pid <> pg_backend_pid()",
    );
    let _ = holder.wait();
    // Nothing of the first backend's was stored: it all waited on the lock.
    assert_eq!(count(&pg, "SELECT count(*) FROM points"), 0);
    let second_args = args(Some(&total.to_string()));
    let second: Vec<&str> = second_args.iter().map(String::as_str).collect();
    // The broker sends the session's messages before it confirms the subscription: the
    // second backend may be done before it says it subscribed, so it runs to its end here.
    let dir = test_support::TempDir::new("sink-second");
    let second = Command::new(crate::common::BIN)
        .args(&second)
        .arg("--report-json")
        .arg(dir.path("report.json"))
        .env("PGPASSWORD", pg.password())
        .stdin(Stdio::null())
        .output()
        .expect("run backend-sub");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("report.json")).unwrap()).unwrap();
    let k = &report["sink"];
    assert_eq!(n(&report, "points_unique"), total, "{report:#}");
    assert_eq!(n(k, "rows_written"), total, "{k:#}");
    // Every point is in the table: the broker sent the next backend what the first never
    // acknowledged, which was everything not stored.
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM points) d"
        ),
        total
    );
}

#[test]
fn a_database_restart_mid_run_is_retried_and_every_point_is_stored() {
    let m = Mosquitto::start();
    let mut pg = Postgres::start();
    let url = m.url();
    let sink = pg.url();
    let total: u64 = 300_000;
    let backend = start_env(
        &[
            "--broker",
            &url,
            "--sink",
            &sink,
            "--sink-batch",
            "2000",
            "--expect",
            &total.to_string(),
            "--idle-timeout",
            "20s",
        ],
        &[("PGPASSWORD", pg.password())],
    );
    let mut p = publisher(
        "frontend1-pub",
        &url,
        &[
            "--total",
            &total.to_string(),
            "--batch",
            "100",
            "--rate",
            "100k",
        ],
    );
    // Storing, when the database goes.
    let end = Instant::now() + Duration::from_secs(30);
    while count(&pg, "SELECT count(*) FROM points") < 20_000 {
        assert!(Instant::now() < end, "nothing was stored");
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.restart_fast();
    assert!(p.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    let k = &r["sink"];
    assert_eq!(
        (n(k, "rows_written"), n(k, "rows_failed")),
        (total, 0),
        "{k:#}"
    );
    assert!(n(k, "retries") >= 1, "the restart was not noticed: {k:#}");
    // Exactly once: a batch counts when its COMMIT is answered, and a COMMIT whose answer
    // the restart took is looked up before the batch is sent again.
    assert_eq!(count(&pg, "SELECT count(*) FROM points"), total);
}

/// The server ends the connection while it commits a batch (a deferred constraint trigger
/// that terminates its own session, once: what a fast shutdown or a crash does at the wrong
/// moment). The COPY had already answered "COPY n", but its transaction never committed:
/// the batch is written again, and the report counts only what the table holds.
#[test]
fn a_connection_lost_in_the_commit_is_not_counted_as_written_and_the_batch_is_stored() {
    let m = Mosquitto::start();
    let pg = Postgres::start();
    pg.psql(
        "CREATE TABLE points (device_id text NOT NULL, seq bigint NOT NULL, \
                ts timestamptz NOT NULL, value double precision NOT NULL, \
                temperature double precision, humidity double precision, \
                received_at timestamptz NOT NULL); \
         CREATE SEQUENCE commits_seen; \
         CREATE FUNCTION end_the_first_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF nextval('commits_seen') = 1 THEN \
                 PERFORM pg_terminate_backend(pg_backend_pid()); \
             END IF; \
             RETURN NULL; \
         END $$; \
         CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON points \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION end_the_first_commit();",
    );
    let url = m.url();
    let sink = pg.url();
    let total: u64 = 20_000;
    let backend = start_env(
        &[
            "--broker",
            &url,
            "--sink",
            &sink,
            "--sink-batch",
            "2000",
            "--expect",
            &total.to_string(),
            "--idle-timeout",
            "20s",
        ],
        &[("PGPASSWORD", pg.password())],
    );
    let mut p = publisher(
        "frontend1-pub",
        &url,
        &[
            "--total",
            &total.to_string(),
            "--batch",
            "100",
            "--rate",
            "0",
        ],
    );
    assert!(p.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    validate(r);
    let k = &r["sink"];
    // The trigger did end a session in a commit.
    assert!(count(&pg, "SELECT last_value FROM commits_seen") >= 1);
    assert_eq!(
        n(k, "rows_written"),
        count(&pg, "SELECT count(*) FROM points"),
        "the report counts rows the table does not hold: {k:#}"
    );
    assert_eq!(
        (n(k, "rows_written"), n(k, "rows_failed")),
        (total, 0),
        "{k:#}"
    );
    assert!(
        n(k, "retries") >= 1,
        "the lost commit was not retried: {k:#}"
    );
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM points) d"
        ),
        total
    );
}

/// A proxy to PostgreSQL that ends every connection when the server first answers a
/// COMMIT, before the answer reaches the client: the transaction committed, and the sink
/// cannot know it from the connection.
struct CommitEater {
    port: u16,
    eaten: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl CommitEater {
    fn start(upstream: u16) -> CommitEater {
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let eaten = Arc::new(AtomicBool::new(false));
        let flag = eaten.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &c2, &mut &s2);
                    let _ = s2.shutdown(Shutdown::Both);
                });
                let flag = flag.clone();
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    // CommandComplete 'C', length 11, "COMMIT\0".
                    const COMMIT: &[u8] = b"C\0\0\0\x0bCOMMIT\0";
                    let (mut from, mut to) = (&server, &client);
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let answer = buf[..n].windows(COMMIT.len()).any(|w| w == COMMIT);
                        if answer && !flag.swap(true, Ordering::SeqCst) {
                            break;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                });
            }
        });
        CommitEater { port, eaten }
    }
}

/// The first COMMIT's answer is lost on its way (the server committed): the sink asks the
/// server what became of that transaction instead of copying the batch again, so the table
/// holds each point once and the report counts the batch once.
#[test]
fn a_commit_whose_answer_is_lost_is_looked_up_and_not_stored_twice() {
    let m = Mosquitto::start();
    let pg = Postgres::start();
    let proxy = CommitEater::start(pg.port);
    let url = m.url();
    let sink = format!("postgres://loadgen@127.0.0.1:{}/postgres", proxy.port);
    let total: u64 = 20_000;
    let backend = start_env(
        &[
            "--broker",
            &url,
            "--sink",
            &sink,
            "--sink-batch",
            "2000",
            "--expect",
            &total.to_string(),
            "--idle-timeout",
            "20s",
        ],
        &[("PGPASSWORD", pg.password())],
    );
    let mut p = publisher(
        "frontend1-pub",
        &url,
        &[
            "--total",
            &total.to_string(),
            "--batch",
            "100",
            "--rate",
            "0",
        ],
    );
    assert!(p.wait().unwrap().success());
    let out = backend.wait();
    out.assert_code(0);
    let r = &out.report;
    validate(r);
    let k = &r["sink"];
    assert!(
        proxy.eaten.load(std::sync::atomic::Ordering::SeqCst),
        "no COMMIT was answered: {k:#}"
    );
    assert!(
        n(k, "retries") >= 1,
        "the lost answer was not noticed: {k:#}"
    );
    assert_eq!(
        (n(k, "rows_written"), n(k, "rows_failed")),
        (total, 0),
        "{k:#}"
    );
    assert_eq!(count(&pg, "SELECT count(*) FROM points"), total);
    assert_eq!(
        count(
            &pg,
            "SELECT count(*) FROM (SELECT DISTINCT device_id, seq FROM points) d"
        ),
        total
    );
}

#[test]
fn bad_sinks_are_usage_errors_and_an_unreachable_database_exits_3() {
    let (code, _, err) = run_to_end(&["--broker", "embedded", "--sink", "mysql://x@y/z"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--sink takes a PostgreSQL URL"), "{err}");
    let (code, _, err) = run_to_end(&[
        "--broker",
        "embedded",
        "--sink",
        "postgres://u:hunter2@127.0.0.1:1/db",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("holds a password") && !err.contains("hunter2"),
        "{err}"
    );
    let (code, _, err) = run_to_end(&[
        "--broker",
        "embedded",
        "--sink",
        "postgres://u@127.0.0.1:1/db",
        "--sink-table",
        "points; drop table x",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a plain table name"), "{err}");
    let port = test_support::free_port();
    let started = Instant::now();
    let (code, _, err) = run_to_end(&[
        "--broker",
        "embedded",
        "--sink",
        &format!("postgres://u@127.0.0.1:{port}/db"),
        "--sink-timeout",
        "1s",
    ]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A table the sink cannot fill: a column of its own that must be set and has no default,
/// a NOT NULL on a sensor column (points may come without one), a CHECK or a trigger that
/// refuses every row. Each is a usage error at start that names what to change, not a run
/// whose every batch fails after its messages were taken from the broker.
#[test]
fn a_table_that_would_refuse_every_row_is_a_usage_error_naming_why() {
    let pg = Postgres::start();
    let cols = "device_id text, seq bigint, ts timestamptz, value double precision, \
                temperature double precision, humidity double precision, received_at timestamptz";
    pg.psql(&format!(
        "CREATE TABLE tenanted ({cols}, tenant text NOT NULL); \
         CREATE TABLE defaulted ({cols}, tenant text NOT NULL DEFAULT 'acme', \
                                 id bigint GENERATED ALWAYS AS IDENTITY); \
         CREATE TABLE strict_sensors (device_id text, seq bigint, ts timestamptz, \
                value double precision, temperature double precision NOT NULL, \
                humidity double precision, received_at timestamptz); \
         CREATE TABLE checked ({cols}, CONSTRAINT no_rows_please CHECK (seq < 0)); \
         CREATE TABLE triggered ({cols}); \
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'this table takes no points'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON triggered FOR EACH ROW EXECUTE FUNCTION refuse();"
    ));
    let sink = pg.url();
    let run = |table: &str| {
        run_to_end_env(
            &[
                "--broker",
                "embedded",
                "--sink",
                &sink,
                "--sink-table",
                table,
                "--sink-migrate",
                "false",
                "--sink-timeout",
                "5s",
                "--expect",
                "0",
            ],
            &[("PGPASSWORD", pg.password())],
        )
    };
    for (table, needles) in [
        ("tenanted", &["tenant", "NOT NULL", "no default"][..]),
        ("strict_sensors", &["temperature", "NOT NULL"][..]),
        ("checked", &["no_rows_please"][..]),
        ("triggered", &["this table takes no points"][..]),
    ] {
        let (code, _, err) = run(table);
        assert_eq!(code, 2, "{table}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{table}: '{needle}' not in {err}");
        }
        assert!(err.contains(table), "{table}: {err}");
    }
    // A column of its own with a default (or generated) is filled by the database: fine,
    // and the start-up check leaves no row behind.
    let (code, _, err) = run("defaulted");
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&pg, "SELECT count(*) FROM defaulted"), 0);
}

/// The database down with rows waiting: the first signal waits for the sink within its
/// deadlines, the second abandons every database wait at once, counts what is not stored
/// as failed, and the report is written within a second or two, not after the
/// (2 x connections + 1) x --sink-timeout the queued batches could take.
///
/// Five messages of 100 points are what the sink holds with the database down (4 sealed
/// batches of 100 for 2 connections, and the open one): a sixth would wait at the broker
/// (backpressure), so the test sends five and signals once the backend has read them all.
#[test]
fn a_second_signal_abandons_the_sinks_database_waits_at_once() {
    let m = Mosquitto::start();
    let mut pg = Postgres::start();
    let sink = pg.url();
    let mut backend = start_env(
        &[
            "--broker",
            &m.url(),
            "--sink",
            &sink,
            "--sink-batch",
            "100",
            "--sink-timeout",
            "30s",
            "--idle-timeout",
            "60s",
        ],
        &[("PGPASSWORD", pg.password())],
    );
    pg.kill();
    let msgs: Vec<Vec<u8>> = (0..5u64)
        .map(|i| payload("dev_down", &(i * 100..(i + 1) * 100).collect::<Vec<_>>()))
        .collect();
    publish_payloads(m.port, "device_data/down", &msgs);
    // The writers have found the database gone and are retrying.
    assert!(
        backend.wait_for_line("database ", Duration::from_secs(20)),
        "the sink never said the database was gone"
    );
    assert!(
        backend.wait_received(500, Duration::from_secs(20)),
        "the backend never read the 500 points"
    );
    backend.signal("TERM");
    assert!(backend.wait_for_line("SIGTERM:", Duration::from_secs(10)));
    let second = Instant::now();
    backend.signal("TERM");
    let out = backend.wait();
    let took = second.elapsed();
    out.assert_code(143);
    assert!(
        took < Duration::from_secs(3),
        "the exit took {took:?} after the second signal"
    );
    let r = &out.report;
    validate(r);
    let k = &r["sink"];
    assert_eq!(n(r, "points_unique"), 500, "{r:#}");
    assert_eq!(
        (n(k, "rows_written"), n(k, "rows_failed")),
        (0, 500),
        "{k:#}"
    );
    let errors = k["errors"].to_string();
    assert!(errors.contains("second signal"), "{errors}");
}

/// Whatever the sink waits for, its errors name the database and the flag that bounds the
/// wait (--sink-timeout), never a broker or a flag backend-sub does not have.
#[test]
fn database_errors_name_the_database_and_the_sinks_own_flag() {
    let port = test_support::free_port();
    let (code, _, err) = run_to_end(&[
        "--broker",
        "embedded",
        "--sink",
        &format!("postgres://u@127.0.0.1:{port}/db"),
        "--sink-timeout",
        "1s",
    ]);
    assert_eq!(code, 3, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("database postgres://u@127.0.0.1:{port}/db")),
        "{err}"
    );
    assert!(last.contains("--sink-timeout"), "{err}");
    assert!(
        !err.contains("broker postgres") && !err.contains("--db-timeout"),
        "{err}"
    );
}
