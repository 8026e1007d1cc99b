//! What the throughput and fleet benches share: building the release binaries they run,
//! and measuring a child process's CPU and peak memory (from `wait4`) beside the broker's.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use test_support::Mosquitto;

/// The release binaries a bench runs, built with the cargo that runs the bench.
pub fn build_release(packages: &[&str], bins: &[&str]) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = test_support::workspace_root();
    let mut args = vec!["build", "--release", "--locked"];
    for p in packages {
        args.extend(["-p", p]);
    }
    for b in bins {
        args.extend(["--bin", b]);
    }
    let st = Command::new(cargo)
        .current_dir(&root)
        .args(&args)
        .status()
        .expect("run cargo build");
    assert!(st.success(), "cargo build failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or(root.join("target"), PathBuf::from)
        .join("release")
}

/// What [`measure`] saw of a process.
pub struct Measured {
    pub stdout: String,
    /// User + system CPU seconds.
    pub cpu_s: f64,
    pub rss_mb: f64,
    pub wall: f64,
    /// CPU seconds the broker used meanwhile.
    pub broker_cpu: f64,
    /// Whether it exited 0.
    pub ok: bool,
}

/// Runs `cmd` to completion next to `broker`.
// The child is reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn measure(mut cmd: Command, broker: &Mosquitto) -> Measured {
    let broker_before = broker.cpu_seconds();
    let started = std::time::Instant::now();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.expect("stdout");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).expect("read stdout");
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid, and wait4 writes it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(rc, pid, "wait4");
    let wall = started.elapsed().as_secs_f64();
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Measured {
        stdout: out,
        cpu_s: cpu(ru.ru_utime) + cpu(ru.ru_stime),
        rss_mb: ru.ru_maxrss as f64 / 1024.0,
        wall,
        broker_cpu: broker.cpu_seconds() - broker_before,
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    }
}
