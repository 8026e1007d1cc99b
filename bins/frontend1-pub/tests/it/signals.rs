//! Ctrl-C and SIGTERM mid-run: stop generating, flush, report, exit 130 / 143.

use std::time::Duration;

use test_support::{Mosquitto, Subscriber};

use crate::common::{n, spawn, DEVICE, TOPIC};

#[test]
fn sigint_mid_run_flushes_reports_and_exits_130() {
    let m = Mosquitto::start();
    let sub = Subscriber::start(m.port, TOPIC);
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--qos",
            "1",
            "--rate",
            "20000",
            "--batch",
            "100",
            "--total",
            "1000000",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(1500));
    run.signal("INT");
    let out = run.wait();
    out.assert_code(130);
    assert!(
        out.stdout.contains("summary") && out.stdout.contains("by SIGINT"),
        "{}",
        out.stdout
    );
    let r = out.report();
    assert_eq!(r["outcome"], "interrupted");
    let sent = n(r, "points_sent");
    assert!(sent > 0 && sent < 1_000_000, "sent {sent}");
    // Everything generated was flushed and acknowledged, and the subscriber got exactly that.
    assert_eq!(n(r, "points_acked"), sent);
    assert_eq!((n(r, "points_failed"), n(r, "points_unsent")), (0, 0));
    let got = sub.finish(sent, Duration::from_secs(5));
    got.assert_exactly_once(DEVICE, sent);
}

#[test]
fn sigterm_mid_run_exits_143_with_a_report() {
    let m = Mosquitto::start();
    let run = spawn(
        &[
            "--broker",
            &m.url(),
            "--rate",
            "10000",
            "--total",
            "1000000",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(1200));
    run.signal("TERM");
    let out = run.wait();
    out.assert_code(143);
    let r = out.report();
    assert_eq!(r["interrupted_by"], "SIGTERM");
    assert_eq!(n(r, "points_sent"), n(r, "points_enqueued"));
}
