//! What the throughput, fleet and receive benches share: building the release binaries they
//! run, and measuring a child process's CPU and peak memory (from `wait4`) beside the
//! broker's.

use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

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
pub fn measure(mut cmd: Command, broker: &Mosquitto) -> Measured {
    cmd.stderr(Stdio::inherit());
    Running::start(cmd, broker).finish(broker)
}

/// A child process under measurement: started, read from while it runs, then reaped by
/// [`Running::finish`] for its figures.
pub struct Running {
    /// The process, its stdout taken (stdin and stderr there when `cmd` piped them).
    pub child: Child,
    /// Its stdout, for lines to wait on while it runs; [`Running::finish`] reads the rest.
    pub stdout: BufReader<ChildStdout>,
    started: Instant,
    broker_before: f64,
}

impl Running {
    /// Spawns `cmd` with its stdout piped (its stdin and stderr as `cmd` sets them).
    // The child is reaped with wait4 (for its rusage), which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    pub fn start(mut cmd: Command, broker: &Mosquitto) -> Running {
        let broker_before = broker.cpu_seconds();
        let started = Instant::now();
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Running {
            child,
            stdout,
            started,
            broker_before,
        }
    }

    /// Waits for the process to end and returns what it printed and used.
    pub fn finish(mut self, broker: &Mosquitto) -> Measured {
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).expect("read stdout");
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid, and wait4 writes it for our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let pid = self.child.id() as libc::pid_t;
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        assert_eq!(rc, pid, "wait4");
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Measured {
            stdout: out,
            cpu_s: cpu(ru.ru_utime) + cpu(ru.ru_stime),
            rss_mb: ru.ru_maxrss as f64 / 1024.0,
            wall,
            broker_cpu: broker.cpu_seconds() - self.broker_before,
            ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        }
    }
}
