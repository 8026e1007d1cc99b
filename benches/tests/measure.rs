//! The benches' measurement of a child process: its peak memory read as it exits, however
//! fast, and its stops and signals passed on while it is followed.

use std::process::Command;
use std::time::{Duration, Instant};

use test_support::Mosquitto;

#[path = "../common.rs"]
#[allow(dead_code)]
mod common;

/// `dd` reads 128 MB into one buffer and exits: its peak comes in its last milliseconds,
/// between two samples of a 10 ms sampler. Read at the exit, it is there.
#[test]
fn a_process_is_measured_at_its_peak_however_fast_it_exits() {
    let broker = Mosquitto::start();
    let mut cmd = Command::new("dd");
    cmd.args([
        "if=/dev/zero",
        "of=/dev/null",
        "bs=128M",
        "count=1",
        "status=none",
    ]);
    let m = common::measure(cmd, &broker);
    assert!(m.ok, "dd failed");
    assert!(
        m.rss_at_exit,
        "the peak was sampled, not read at the exit: is ptrace of a child refused here?"
    );
    assert!(m.rss_mb >= 128.0, "peak {:.1} MB", m.rss_mb);
    // Its own peak, not the bench's (which exec would leave in ru_maxrss).
    assert!(m.rss_mb < 160.0, "peak {:.1} MB", m.rss_mb);
}

/// The state letter of /proc/PID/stat.
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(") ")
        .next()
        .and_then(|s| s.chars().next())
        .unwrap_or('?')
}

fn wait_state(pid: u32, want: &[char]) {
    let end = Instant::now() + Duration::from_secs(10);
    while !want.contains(&state(pid)) {
        assert!(Instant::now() < end, "state {} not in {want:?}", state(pid));
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; the pid is our own unreaped child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

/// Followed, a process still stops on SIGSTOP until a SIGCONT (the backlog scenarios stop
/// the subscriber while they publish), and a SIGTERM still ends it.
#[test]
fn a_followed_process_stops_resumes_and_ends_on_its_signals() {
    let broker = Mosquitto::start();
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let started = Instant::now();
    let run = common::Running::start(cmd, &broker);
    let pid = run.child.id();
    wait_state(pid, &['S']);
    kill(pid, libc::SIGSTOP);
    wait_state(pid, &['T', 't']);
    std::thread::sleep(Duration::from_millis(200));
    assert!(['T', 't'].contains(&state(pid)), "it did not stay stopped");
    kill(pid, libc::SIGCONT);
    wait_state(pid, &['S', 'R']);
    kill(pid, libc::SIGTERM);
    let m = run.finish(&broker);
    assert!(!m.ok);
    assert!(started.elapsed() < Duration::from_secs(20));
}
