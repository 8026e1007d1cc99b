//! job-pub end to end, against a real PostgreSQL and a real Mosquitto, each started by the
//! test on a free port; every claim of exactly-once is checked by an independent subscriber.

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use test_support::{assert_matches_schema, free_port, Mosquitto, Postgres, TempDir};

mod hostile;
mod stop;

const BIN: &str = env!("CARGO_BIN_EXE_job-pub");

fn job_pub(pg: &Postgres, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("DATABASE_URL", pg.url())
        .env("PGPASSWORD", pg.password())
        .stdin(Stdio::null());
    c
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "exit {:?}: {stderr}",
        out.status.code()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v:#}"))
}

/// Every message on `job/#`, by payload.
struct Collector {
    seen: Arc<Mutex<HashMap<String, u32>>>,
    last: Arc<Mutex<Instant>>,
}

impl Collector {
    fn start(port: u16) -> Collector {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let last = Arc::new(Mutex::new(Instant::now()));
        let (s, l) = (seen.clone(), last.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut o = MqttOptions::new(format!("collector-{}", free_port()), "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(30))
                .set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut conn) = Client::new(o, 1024);
            client.subscribe("job/#", QoS::AtLeastOnce).unwrap();
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let body = String::from_utf8_lossy(&p.payload).into_owned();
                        *s.lock().unwrap().entry(body).or_default() += 1;
                        *l.lock().unwrap() = Instant::now();
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("collector subscribed");
        Collector { seen, last }
    }

    /// Waits until `count` distinct messages arrived and nothing for `quiet`.
    fn settle(&self, count: usize, quiet: Duration) -> HashMap<String, u32> {
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            let enough = self.seen.lock().unwrap().len() >= count;
            if enough && self.last.lock().unwrap().elapsed() >= quiet {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.seen.lock().unwrap().clone()
    }
}

fn seed(pg: &Postgres, count: &str, fire_in: &str) {
    ok(
        job_pub(pg, &["seed", "--count", count, "--fire-in", fire_in])
            .output()
            .unwrap(),
    );
}

#[test]
fn three_instances_drain_50000_due_jobs_and_a_subscriber_gets_each_exactly_once() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    let out = ok(job_pub(&pg, &["migrate"]).output().unwrap());
    assert!(out.contains("migrated"), "{out}");
    ok(job_pub(&pg, &["migrate"]).output().unwrap()); // again: nothing changes
                                                      // The index was built concurrently, and is valid (a failed build would leave it not).
    assert_eq!(
        pg.psql(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relname = 'jobs_due'"
        ),
        "t"
    );
    seed(&pg, "50000", "0s..0s");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-three");
    let children: Vec<_> = (0..3)
        .map(|i| {
            job_pub(
                &pg,
                &[
                    "run",
                    "--broker",
                    &m.url(),
                    "--mqtt-version",
                    "5",
                    "--until-empty",
                    "--quiet",
                ],
            )
            .arg("--report-json")
            .arg(dir.path(&format!("r{i}.json")))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reports: Vec<Value> = (0..3)
        .map(|i| {
            serde_json::from_str(&std::fs::read_to_string(dir.path(&format!("r{i}.json"))).unwrap())
                .unwrap()
        })
        .collect();
    let acked: u64 = reports.iter().map(|r| n(r, "jobs_acked")).sum();
    assert_eq!(
        acked, 50_000,
        "the instances together acknowledged every job once"
    );
    for r in &reports {
        assert_matches_schema("schema/job-pub-report.schema.json", r);
        assert_eq!(
            (
                n(r, "jobs_failed"),
                n(r, "jobs_republished_after_lease_expiry")
            ),
            (0, 0)
        );
        assert!(n(r, "jobs_acked") > 0, "every instance took a share: {r:#}");
        // MQTT 5's connects are timed as 3.1.1's: one sample a connection.
        let connects = 1 + n(r, "mqtt_reconnects");
        for phase in ["tcp_connect_us", "connack_us"] {
            assert_eq!(r["connect_phases_us"][phase]["count"], connects, "{r:#}");
        }
    }
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE NOT processed"),
        "0"
    );
    let seen = sub.settle(50_000, Duration::from_millis(500));
    assert_eq!(seen.len(), 50_000, "each job arrived");
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");
}

#[test]
fn overdue_jobs_are_published_and_counted_late_and_max_lateness_skips_older_ones() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    // 100 an hour overdue, 100 a minute overdue, 100 due in 1.5 s (within --lookahead 3s:
    // claimed at once and held until they fire).
    seed(&pg, "100", "-1h..-1h");
    seed(&pg, "100", "-1m..-1m");
    pg.psql("UPDATE jobs SET payload = 'minute-' || id WHERE id > 100");
    seed(&pg, "100", "1500ms..1500ms");
    pg.psql("UPDATE jobs SET payload = 'soon-' || id WHERE id > 200");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-late");
    let out = job_pub(
        &pg,
        &[
            "run",
            "--broker",
            &m.url(),
            "--until-empty",
            "--quiet",
            "--max-lateness",
            "30m",
            "--lookahead",
            "3s",
        ],
    )
    .args([
        "--threshold",
        "jobs_skipped==100",
        "--threshold",
        "lateness_p90<1s",
    ])
    .arg("--report-json")
    .arg(dir.path("r.json"))
    .arg("--report-md")
    .arg(dir.path("summary.md"))
    .output()
    .unwrap();
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path("r.json")).unwrap()).unwrap();
    assert_eq!(
        out.status.code(),
        Some(99),
        "lateness_p90<1s fails: half the jobs were a minute late\n{r:#}"
    );
    // The Markdown summary leads with the failed threshold, in its unit.
    let md = std::fs::read_to_string(dir.path("summary.md")).unwrap();
    let first = md.lines().next().unwrap();
    assert!(
        first.starts_with("### ❌ FAIL: `")
            && first.contains("` — threshold `lateness_p90<1s` failed: the run had 6"),
        "{md}"
    );
    assert!(md.contains("| `lateness_p90` | &lt; 1 s | 6"), "{md}");
    assert!(
        md.contains("| `jobs_skipped` | == 100 | 100 | ✅ pass |"),
        "{md}"
    );
    assert!(
        md.contains(
            "200 acknowledged, 100 skipped (past --max-lateness), 100 late (past --late-after)"
        ),
        "{md}"
    );
    assert!(md.contains("**Generator:** behind fire\\_at p99 "), "{md}");
    assert_eq!(n(&r, "jobs_claimed"), 300, "{r:#}\n{}", pg.psql("SELECT id, fire_at, now(), processed, claimed_until FROM jobs WHERE id IN (1, 150, 250)"));
    assert_eq!(
        n(&r, "jobs_skipped"),
        100,
        "an hour overdue: past --max-lateness"
    );
    assert_eq!(n(&r, "jobs_acked"), 200);
    assert_eq!(n(&r, "jobs_late"), 100, "a minute overdue: published, late");
    let lat = &r["lateness_us"];
    assert!(
        n(lat, "max") >= 60_000_000 && n(lat, "max") < 70_000_000,
        "{lat}"
    );
    assert!(
        n(lat, "min") < 100_000,
        "the jobs due in a second went out on time: {lat}"
    );
    let t = r["thresholds"].as_array().unwrap();
    assert_eq!(
        (t[0]["pass"].as_bool(), t[1]["pass"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(pg.psql("SELECT count(*) FROM jobs WHERE skipped"), "100");
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE NOT processed"),
        "0"
    );
    let seen = sub.settle(200, Duration::from_millis(300));
    assert_eq!(seen.len(), 200);
    assert!(
        seen.keys()
            .all(|k| k.starts_with("minute-") || k.starts_with("soon-")),
        "none of the skipped"
    );
}

#[test]
fn bad_input_is_a_one_line_usage_error() {
    let pg = Postgres::start();
    // A password in --database-url on the command line would show in the process list.
    let out = Command::new(BIN)
        .args([
            "migrate",
            "--database-url",
            "postgres://loadgen:secret@127.0.0.1:1/postgres",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("holds a password") && !err.contains("secret"),
        "{err}"
    );
    // The table is not there yet.
    let out = job_pub(
        &pg,
        &["run", "--broker", "mqtt://127.0.0.1:1", "--until-empty"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("run job-pub migrate first"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // A batch held for --lookahead and awaited for --ack-timeout must fit in its lease.
    let out = job_pub(&pg, &["run", "--lookahead", "25s", "--ack-timeout", "10s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("plus --ack-timeout 10s must be shorter than --lease 30s"),
        "{err}"
    );
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn read_report(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn spawn_run(
    pg: &Postgres,
    m: &Mosquitto,
    report: &std::path::Path,
    extra: &[&str],
) -> std::process::Child {
    job_pub(pg, &["run", "--broker", &m.url(), "--quiet"])
        .args(extra)
        .arg("--report-json")
        .arg(report)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn an_instance_killed_mid_batch_costs_at_most_its_batch_in_duplicates_and_loses_nothing() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    seed(&pg, "30000", "0s..0s");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-kill");
    let with_lease = |lease: &'static str| -> Vec<&'static str> {
        vec![
            "--lease",
            lease,
            "--ack-timeout",
            "1s",
            "--batch",
            "500",
            "--qos",
            "1",
            "--until-empty",
        ]
    };
    // The victim's lease outlives the others' draining of everything else, however slow
    // the machine; it is run out by hand below.
    let mut victim = spawn_run(&pg, &m, &dir.path("victim.json"), &with_lease("120s"));
    // Freeze it until it is caught holding a claimed batch, then kill it there.
    let victim_pid = victim.id();
    let end = Instant::now() + Duration::from_secs(30);
    let held = loop {
        assert!(Instant::now() < end, "the victim never held a batch");
        std::thread::sleep(Duration::from_millis(20));
        signal(victim_pid, "STOP");
        let held: u64 = pg
            .psql(&format!(
                "SELECT count(*) FROM jobs WHERE NOT processed AND claimed_until > now() AND claimed_by LIKE '%-{victim_pid}-%'"
            ))
            .parse()
            .unwrap();
        if held > 0 {
            break held;
        }
        signal(victim_pid, "CONT");
    };
    signal(victim_pid, "KILL");
    let _ = victim.wait();
    // Two others drain all but the dead instance's batch, which stays leased to it...
    let others: Vec<_> = (0..2)
        .map(|i| {
            spawn_run(
                &pg,
                &m,
                &dir.path(&format!("other{i}.json")),
                &with_lease("2s"),
            )
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(30);
    while pg
        .psql("SELECT count(*) FROM jobs WHERE NOT processed")
        .parse::<u64>()
        .unwrap()
        > held
    {
        assert!(Instant::now() < end, "the others did not drain the rest");
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in others {
        signal(c.id(), "TERM");
        let out = c.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(143),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE NOT processed"),
        held.to_string(),
        "the dead instance's batch was still leased when the others stopped"
    );
    // ...until the instance, started again, claims it once the lease has run out.
    pg.psql("UPDATE jobs SET claimed_until = now() - interval '1 second' WHERE NOT processed");
    let restarted = spawn_run(&pg, &m, &dir.path("restarted.json"), &with_lease("2s"));
    let out = restarted.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE NOT processed"),
        "0"
    );
    let again: u64 = pg
        .psql("SELECT count(*) FROM jobs WHERE attempts > 1")
        .parse()
        .unwrap();
    assert_eq!(
        again, held,
        "exactly the killed instance's claimed batch was claimed again"
    );
    assert!(held <= 500, "at most one batch: {held}");
    let r = read_report(&dir.path("restarted.json"));
    assert_eq!(
        (
            n(&r, "jobs_republished_after_lease_expiry"),
            n(&r, "jobs_acked")
        ),
        (held, held),
        "the restarted instance's report counts the republished batch: {r:#}"
    );
    for i in 0..2 {
        let o = read_report(&dir.path(&format!("other{i}.json")));
        assert_eq!(n(&o, "jobs_republished_after_lease_expiry"), 0, "{o:#}");
    }
    let seen = sub.settle(30_000, Duration::from_millis(500));
    assert_eq!(seen.len(), 30_000, "every job published at least once");
    let duplicates: u64 = seen.values().map(|c| u64::from(*c) - 1).sum();
    assert!(
        duplicates <= held,
        "{duplicates} duplicates, the killed batch held {held}"
    );
}

/// Waits until `n` jobs are marked processed: the run is under way, what a test waits for
/// before a fault (not a guessed sleep).
fn wait_processed(pg: &Postgres, n: u64) {
    let end = Instant::now() + Duration::from_secs(30);
    while pg
        .psql("SELECT count(*) FROM jobs WHERE processed")
        .parse::<u64>()
        .unwrap_or(0)
        < n
    {
        assert!(
            Instant::now() < end,
            "fewer than {n} jobs were ever processed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_finishes_the_batch_in_flight_and_a_database_restart_loses_no_job() {
    let mut pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    // Jobs firing over 6 s: the instance runs through a database restart, then a SIGTERM.
    seed(&pg, "6000", "0s..6s");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-restart");
    let mut a = spawn_run(&pg, &m, &dir.path("a.json"), &["--batch", "200"]);
    wait_processed(&pg, 500);
    pg.restart_fast();
    // Wait until every job due by now is done, then stop the instance.
    let end = Instant::now() + Duration::from_secs(30);
    while pg
        .psql("SELECT count(*) FROM jobs WHERE processed")
        .parse::<u64>()
        .unwrap()
        < 6000
    {
        assert!(
            Instant::now() < end,
            "jobs left: {}",
            pg.psql("SELECT count(*) FROM jobs WHERE NOT processed")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(a.id(), "TERM");
    let out = a.wait().unwrap();
    assert_eq!(out.code(), Some(143));
    let r = read_report(&dir.path("a.json"));
    assert_matches_schema("schema/job-pub-report.schema.json", &r);
    assert_eq!(r["outcome"], "interrupted");
    assert!(
        n(&r, "db_connections_opened") >= 2,
        "the connection lost with the restart was replaced: {r:#}"
    );
    assert_eq!(n(&r, "jobs_acked"), 6000, "{r:#}");
    assert_eq!(n(&r, "jobs_failed"), 0);
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE claimed_until IS NOT NULL"),
        "0",
        "nothing left leased"
    );
    let seen = sub.settle(6000, Duration::from_millis(300));
    assert_eq!(seen.len(), 6000, "no job lost");
    // A completion lost with the restart republishes its batch, never more.
    let duplicates: u64 = seen.values().map(|c| u64::from(*c) - 1).sum();
    assert!(duplicates <= 200, "{duplicates}");
}

#[test]
fn sigterm_mid_stream_completes_the_claimed_batch_and_leaves_nothing_leased() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    // Jobs falling due over 6 s, claimed a second ahead: a batch is always in flight.
    seed(&pg, "6000", "0s..6s");
    let sub = Collector::start(m.port);
    let dir = TempDir::new("job-pub-term");
    let mut a = spawn_run(
        &pg,
        &m,
        &dir.path("a.json"),
        &["--lookahead", "1s", "--batch", "5000"],
    );
    // Some jobs done and a batch leased: the signal comes mid-stream.
    let end = Instant::now() + Duration::from_secs(20);
    let leased_at_term = loop {
        let row = pg.psql(
            "SELECT count(*) FILTER (WHERE processed), \
                    count(*) FILTER (WHERE NOT processed AND claimed_until IS NOT NULL) FROM jobs",
        );
        let (done, leased) = row.split_once('|').unwrap();
        let (done, leased): (u64, u64) = (done.parse().unwrap(), leased.parse().unwrap());
        if done > 0 && leased > 0 {
            break leased;
        }
        assert!(Instant::now() < end, "no batch in flight: {row}");
        std::thread::sleep(Duration::from_millis(20));
    };
    signal(a.id(), "TERM");
    assert_eq!(a.wait().unwrap().code(), Some(143));
    assert!(leased_at_term > 0, "no batch was in flight at the signal");
    let r = read_report(&dir.path("a.json"));
    assert_eq!(r["outcome"], "interrupted", "{r:#}");
    // The batch in flight was published and marked processed; the rest was never claimed.
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE claimed_until IS NOT NULL"),
        "0",
        "nothing left leased"
    );
    let processed: u64 = pg
        .psql("SELECT count(*) FROM jobs WHERE processed")
        .parse()
        .unwrap();
    assert_eq!(n(&r, "jobs_acked"), processed, "{r:#}");
    assert!(processed < 6000, "the run did not stop early");
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE NOT processed AND attempts > 0"),
        "0"
    );
    let seen = sub.settle(processed as usize, Duration::from_millis(300));
    assert_eq!(
        seen.len() as u64,
        processed,
        "each processed job was received"
    );
}

#[test]
fn a_broker_restart_mid_run_is_reconnected_to_and_a_bad_job_is_refused_not_retried() {
    let pg = Postgres::start();
    let mut m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    seed(&pg, "4000", "0s..4s");
    // A job no broker takes: it is refused once, counted, and does not stop the others.
    pg.psql("UPDATE jobs SET topic = 'job/bad/#' WHERE id = 7");
    let dir = TempDir::new("job-pub-broker-restart");
    let mut a = spawn_run(
        &pg,
        &m,
        &dir.path("a.json"),
        &["--batch", "100", "--ack-timeout", "8s"],
    );
    wait_processed(&pg, 500);
    m.restart();
    let end = Instant::now() + Duration::from_secs(30);
    while pg
        .psql("SELECT count(*) FROM jobs WHERE processed")
        .parse::<u64>()
        .unwrap()
        < 4000
    {
        assert!(
            Instant::now() < end,
            "left: {}",
            pg.psql("SELECT count(*) FROM jobs WHERE NOT processed")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(a.id(), "TERM");
    assert_eq!(a.wait().unwrap().code(), Some(143));
    let r = read_report(&dir.path("a.json"));
    assert!(n(&r, "mqtt_reconnects") >= 1, "{r:#}");
    // Every connect that got its CONNACK has its phases: the first and each new connection.
    let connects = 1 + n(&r, "mqtt_reconnects");
    let phases = &r["connect_phases_us"];
    assert_eq!(phases["tcp_connect_us"]["count"], connects, "{r:#}");
    assert_eq!(phases["connack_us"]["count"], connects, "{r:#}");
    assert!(phases["tls_handshake_us"].is_null(), "{r:#}");
    for h in ["tcp_us", "connack_us"] {
        assert!(r["histograms"][h].is_string(), "{h}: {r:#}");
    }
    assert_eq!(n(&r, "jobs_rejected"), 1, "the wildcard topic: {r:#}");
    assert_eq!(n(&r, "jobs_acked") + n(&r, "jobs_rejected"), 4000, "{r:#}");
    assert_eq!(pg.psql("SELECT skipped FROM jobs WHERE id = 7"), "t");
    // Every acknowledgement was the broker's: nothing is left leased or unprocessed.
    assert_eq!(
        pg.psql("SELECT count(*) FROM jobs WHERE claimed_until IS NOT NULL"),
        "0"
    );
}

#[test]
fn a_job_the_broker_denies_by_acl_under_mqtt5_is_rejected_not_counted_acknowledged() {
    let pg = Postgres::start();
    let dir = TempDir::new("job-pub-acl");
    let acl = dir.path("acl");
    // Anonymous clients may publish under job/ok/ only, and read everything.
    std::fs::write(&acl, "topic write job/ok/#\ntopic read #\n").unwrap();
    // Mosquitto 2.0.11 with the project's `max_queued_messages 0` (no limit) closes the
    // connection after denying a QoS 1 publish, instead of answering 0x87: that case is
    // `hostile::a_job_the_broker_closes_the_connection_for_is_given_up_after_three_losses`.
    // Here, the broker as configured by default, which answers.
    let m = Mosquitto::start_with(&[
        format!("acl_file {}", acl.display()),
        "max_queued_messages 1000".into(),
    ]);
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    ok(job_pub(
        &pg,
        &[
            "seed",
            "--count",
            "20",
            "--fire-in",
            "0s..0s",
            "--topic-template",
            "job/ok/{i}",
        ],
    )
    .output()
    .unwrap());
    pg.psql("INSERT INTO jobs (topic, payload, fire_at) VALUES ('job/denied/1', 'x', now()), ('job/denied/2', 'y', now())");
    let sub = Collector::start(m.port);
    let report = dir.path("r.json");
    let out = job_pub(
        &pg,
        &[
            "run",
            "--broker",
            &m.url(),
            "--mqtt-version",
            "5",
            "--until-empty",
            "--quiet",
        ],
    )
    .arg("--report-json")
    .arg(&report)
    .output()
    .unwrap();
    let r = read_report(&report);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The broker answered 0x87 (not authorized) for the two: refused for good, counted.
    assert_eq!(
        (n(&r, "jobs_acked"), n(&r, "jobs_rejected")),
        (20, 2),
        "{r:#}"
    );
    assert_eq!(
        pg.psql(
            "SELECT count(*) FROM jobs WHERE topic LIKE 'job/denied/%' AND processed AND skipped"
        ),
        "2"
    );
    let seen = sub.settle(20, Duration::from_millis(300));
    assert_eq!(seen.len(), 20, "{seen:?}");
}

#[test]
fn run_needs_an_explicit_broker() {
    let pg = Postgres::start();
    let out = job_pub(&pg, &["run", "--until-empty"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs --broker"), "{err}");
}

#[test]
fn a_bytea_payload_is_published_as_its_bytes_not_its_hex_text() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    // The seed's columns, with the payload as bytea; migrate adds only what job-pub needs.
    pg.psql(
        "CREATE TABLE bjobs (id bigserial PRIMARY KEY, topic text NOT NULL, payload bytea NOT NULL,
                             fire_at timestamptz NOT NULL, processed boolean NOT NULL DEFAULT false,
                             processed_at timestamptz)",
    );
    ok(job_pub(&pg, &["migrate", "--table", "bjobs"])
        .output()
        .unwrap());
    pg.psql(
        "INSERT INTO bjobs (topic, payload, fire_at) VALUES
           ('job/b1', convert_to('héllo', 'UTF8'), now()),
           ('job/b2', '\\xdeadbeef'::bytea, now())",
    );
    let sub = Collector::start(m.port);
    ok(job_pub(
        &pg,
        &[
            "run",
            "--broker",
            &m.url(),
            "--table",
            "bjobs",
            "--until-empty",
            "--quiet",
        ],
    )
    .output()
    .unwrap());
    let seen = sub.settle(2, Duration::from_millis(300));
    let raw = String::from_utf8_lossy(&[0xde, 0xad, 0xbe, 0xef]).into_owned();
    assert_eq!(seen.get("héllo"), Some(&1), "{seen:?}");
    assert_eq!(seen.get(&raw), Some(&1), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(pg.psql("SELECT count(*) FROM bjobs WHERE processed"), "2");
}

#[test]
fn job_pub_serves_its_metrics_with_the_run_label_and_lingers_on_the_final_figures() {
    use std::io::BufRead;
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    seed(&pg, "500", "-1s..0s");
    let dir = TempDir::new("job-pub-metrics");
    let report = dir.path("r.json");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = job_pub(
        &pg,
        &[
            "run",
            "--broker",
            &m.url(),
            "--until-empty",
            "--metrics-addr",
            &addr,
            "--metrics-linger",
            "5m",
            "--run-id",
            "jobs-1",
        ],
    )
    .arg("--report-json")
    .arg(&report)
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
    let end = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with("serving the final metrics") => break,
            Ok(l) => seen.push(l),
            Err(_) => panic!("job-pub never said it lingers: {seen:#?}"),
        }
    }
    // The report is out, and the metrics are its figures.
    let r = read_report(&report);
    assert_matches_schema("schema/job-pub-report.schema.json", &r);
    assert_eq!(r["run_id"], "jobs-1");
    assert_eq!(n(&r, "jobs_acked"), 500);
    let (status, body) = test_support::http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    let (passed, said) = test_support::promtool_check_metrics(&body);
    assert!(passed, "{said}\n{body}");
    let run = ["run=\"jobs-1\""];
    for (name, want) in [
        ("loadgen_jobs_claimed_total", 500.0),
        ("loadgen_jobs_acked_total", 500.0),
        ("loadgen_jobs_failed_total", 0.0),
        ("loadgen_jobs_lateness_seconds_count", 500.0),
        ("loadgen_run_finished", 1.0),
    ] {
        assert_eq!(
            test_support::sample(&body, name, &run),
            Some(want),
            "{name} in\n{body}"
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "it lingers");
    signal(child.id(), "TERM");
    let end = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < end, "the linger outlived a signal");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}

/// A clean run's summary carries no line or count of zeros: no "0 failed, 0 rejected, 0
/// skipped", no "late 0".
#[test]
fn a_clean_runs_summary_names_no_fate_no_job_had() {
    let pg = Postgres::start();
    let m = Mosquitto::start();
    ok(job_pub(&pg, &["migrate"]).output().unwrap());
    seed(&pg, "10", "0s..0s");
    let out = ok(job_pub(
        &pg,
        &["run", "--broker", &m.url(), "--until-empty", "--quiet"],
    )
    .output()
    .unwrap());
    assert!(
        out.contains("10 claimed, 10 published, 10 acknowledged\n"),
        "{out}"
    );
    for zero in ["failed", "rejected", "skipped", "\nlate "] {
        assert!(
            !out.contains(zero),
            "'{zero}' in a clean run's summary:\n{out}"
        );
    }
}
