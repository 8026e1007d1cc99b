//! A broker that stops reading (SIGSTOP) mid-run: the publisher waits instead of buffering
//! without limit, and the report shows how far sending fell behind.

use std::time::{Duration, Instant};

use test_support::{Mosquitto, Subscriber};

use crate::common::{n, spawn, TOPIC};

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn stalled_broker_keeps_memory_bounded_and_shows_up_as_schedule_lag() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--rate",
            "100k",
            "--batch",
            "100",
            "--duration",
            "8s",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(1_000, Duration::from_secs(10)),
        "the run started"
    );
    m.signal("STOP");
    let stalled = Instant::now();
    let mut peak = 0;
    while stalled.elapsed() < Duration::from_secs(5) {
        peak = peak.max(rss_kb(run.pid()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(200));
    }
    m.signal("CONT");
    let out = run.wait();
    out.assert_code(0);
    // 5 s at 100k points/s would be ~70 MB of payload if the publisher buffered it all.
    assert!(
        peak > 0 && peak < 64 * 1024,
        "peak RSS {peak} kB during the stall"
    );
    let r = out.report();
    assert_eq!(
        (n(r, "points_sent"), n(r, "points_unsent")),
        (n(r, "points_enqueued"), 0)
    );
    let lag_max = n(&r["schedule_lag_us"], "max");
    assert!(
        lag_max >= 3_000_000,
        "a 5 s stall must show in the lag, max was {lag_max} µs"
    );
}

/// A broker that stops reading while generation waits on the full client queue: generation
/// still ends at --duration, the drain deadline bounds the rest, and the report is written.
fn stalled_broker_cannot_hold_the_run_past_duration_and_drain(qos: &str) {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let mut run = spawn(
        &[
            "--broker",
            &m.url(),
            "--qos",
            qos,
            "--rate",
            "100k",
            "--batch",
            "100",
            "--max-queued",
            "100",
            "--duration",
            "3s",
            "--drain-timeout",
            "2s",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(1_000, Duration::from_secs(10)),
        "the run started"
    );
    m.signal("STOP");
    // 3 s of generation, then at most 2 s of drain (and a moment for DISCONNECT).
    let ended = run.exits_within(Duration::from_secs(8));
    m.signal("CONT");
    let out = run.wait();
    assert!(ended, "still running 8 s after the start:\n{}", out.stdout);
    assert!(out.wall < Duration::from_secs(8), "took {:?}", out.wall);
    out.assert_code(1);
    let r = out.report();
    assert_eq!(r["outcome"], "incomplete");
    let never_delivered = n(r, "points_unsent") + n(r, "points_failed");
    assert!(never_delivered > 0, "{r:#}");
    // What was due but never generated is dropped at the drain's deadline, and counted.
    assert!(n(r, "points_dropped") > 0, "{r:#}");
    assert!(n(r, "points_enqueued") >= n(r, "points_sent"));
    assert!(out.stdout.contains("summary"), "{}", out.stdout);
}

#[test]
fn stalled_broker_at_qos0_cannot_hold_the_run_past_duration_and_drain() {
    stalled_broker_cannot_hold_the_run_past_duration_and_drain("0");
}

#[test]
fn stalled_broker_at_qos1_cannot_hold_the_run_past_duration_and_drain() {
    stalled_broker_cannot_hold_the_run_past_duration_and_drain("1");
}

/// A broker that stalls until just after --duration ends: the points due before the end,
/// owed while the connection was full, go out in the drain once the broker reads again. No
/// point is dropped, the run is complete, and the lag shows how late they were.
#[test]
fn points_owed_when_the_schedule_ends_are_written_in_the_drain() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--rate",
            "100k",
            "--batch",
            "100",
            "--max-queued",
            "100",
            "--duration",
            "3s",
            "--drain-timeout",
            "20s",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(1_000, Duration::from_secs(10)),
        "the run started"
    );
    m.signal("STOP");
    std::thread::sleep(Duration::from_millis(3500)); // the stall itself: past the duration
    m.signal("CONT");
    let out = run.wait();
    out.assert_code(0);
    let r = out.report();
    assert_eq!(
        (
            n(r, "points_sent"),
            n(r, "points_dropped"),
            n(r, "points_unsent")
        ),
        (300_000, 0, 0),
        "{r:#}"
    );
    let lag_max = n(&r["schedule_lag_us"], "max");
    assert!(lag_max >= 1_000_000, "lag max {lag_max} µs");
}

/// Small messages and a short queue: after a stall the device owes more than its queue
/// holds, fills it, and the queue (not the socket) is full. The connection must still be
/// flushed and the rest generated as it drains, not wait for writability nobody watches.
#[test]
fn a_full_queue_of_small_messages_drains_after_a_stall() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--rate",
            "10k",
            "--batch",
            "1",
            "--max-queued",
            "10",
            "--duration",
            "3s",
            "--drain-timeout",
            "10s",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(1_000, Duration::from_secs(10)),
        "the run started"
    );
    m.signal("STOP");
    std::thread::sleep(Duration::from_millis(1000)); // the stall itself
    m.signal("CONT");
    let out = run.wait();
    out.assert_code(0);
    let r = out.report();
    assert_eq!(
        (
            n(r, "points_sent"),
            n(r, "points_dropped"),
            n(r, "points_unsent")
        ),
        (30_000, 0, 0),
        "{r:#}"
    );
    assert!(out.wall < Duration::from_secs(8), "took {:?}", out.wall);
}

/// A broker that takes the CONNECT and never reads again, with no --duration and no signal:
/// the keep-alive finds the writes stalled and ends the run, instead of waiting for ever.
#[test]
fn a_broker_that_stops_reading_is_found_by_the_keep_alive() {
    use test_support::fake::{Behaviour, FakeBroker};
    let fake = FakeBroker::start(Behaviour::Deaf);
    let mut run = spawn(
        &[
            "--broker",
            &fake.url(),
            "--total",
            "200k",
            "--rate",
            "0",
            "--keep-alive",
            "2s",
            "--drain-timeout",
            "2s",
            "--reconnect",
            "false",
            "--quiet",
        ],
        &[],
    );
    // Stalled writes are found within two keep-alive intervals of the last progress.
    let ended = run.exits_within(Duration::from_secs(15));
    if !ended {
        run.signal("KILL");
    }
    let out = run.wait();
    assert!(ended, "still running 15 s after the broker stopped reading");
    out.assert_code(1);
    let error = out.report()["error"].as_str().unwrap().to_string();
    assert!(error.contains("stopped reading"), "{error}");
    assert!(n(out.report(), "points_unsent") > 0);
}

/// Unpaced with --duration against a broker that stopped: the run ends by the clock (the
/// duration, then the drain), not when some other timer happens to fire.
#[test]
fn an_unpaced_run_over_a_stalled_broker_ends_by_its_duration() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let mut run = spawn(
        &[
            "--broker",
            &m.url(),
            "--rate",
            "0",
            "--duration",
            "3s",
            "--drain-timeout",
            "2s",
            "--connect-timeout",
            "30s",
            "--quiet",
        ],
        &[],
    );
    assert!(
        sub.wait_points(1_000, Duration::from_secs(10)),
        "the run started"
    );
    m.signal("STOP");
    let ended = run.exits_within(Duration::from_secs(9));
    m.signal("CONT");
    let out = run.wait();
    assert!(ended, "still running 9 s into a 3 s run");
    assert!(out.wall < Duration::from_secs(9), "took {:?}", out.wall);
    assert!(n(out.report(), "points_sent") > 0);
}
