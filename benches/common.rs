//! What the throughput, fleet and receive benches share: building the release binaries they
//! run, and measuring a child process's CPU (from `wait4`) and peak memory (its VmHWM)
//! beside the broker's.

use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use test_support::Mosquitto;

/// Every package and binary any bench runs. Each bench builds them all, the same set every
/// time: cargo unifies features per build, so benches that each built their own few
/// packages compiled the shared dependencies once per distinct set (minutes in CI); one set
/// builds once, and the later benches find it done.
const PACKAGES: &[&str] = &[
    "loadgen",
    "frontend1-pub",
    "backend-sub",
    "job-pub",
    "loadgen-benches",
];
const BINS: &[&str] = &[
    "loadgen",
    "frontend1-pub",
    "backend-sub",
    "job-pub",
    "mqtt-refclient",
    "fleet-refclient",
];

/// The release binaries a bench runs, built with the cargo that runs the bench.
pub fn build_release() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = test_support::workspace_root();
    let mut args = vec!["build", "--release", "--locked"];
    for p in PACKAGES {
        args.extend(["-p", p]);
    }
    for b in BINS {
        args.extend(["--bin", b]);
    }
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root).args(&args);
    // Without what `cargo bench` set for this bench's own process (its package, its
    // library paths): a build script that watches such a variable (ring's does) would see
    // it change from bench to bench, and every bench rebuilt ring and all above it.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let keep = [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTRIES_",
            "CARGO_REGISTRY_",
            "CARGO_BUILD_",
            "CARGO_PROFILE_",
            "CARGO_TERM_",
        ]
        .iter()
        .any(|p| k.starts_with(p));
        if (k.starts_with("CARGO_") && !keep)
            || k == "OUT_DIR"
            || k == "LD_LIBRARY_PATH"
            || k == "RUST_RECURSION_COUNT"
        {
            cmd.env_remove(k.as_ref());
        }
    }
    let st = cmd.status().expect("run cargo build");
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
    /// Peak resident memory of the process's own image (VmHWM), sampled every
    /// [`RSS_SAMPLE`] while it ran. Not `wait4`'s `ru_maxrss`: exec keeps the high-water mark
    /// of the memory it replaces, the bench's own (shared with a spawned child until its
    /// exec), so every process smaller than the bench would report the bench's size.
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

/// How often a measured process's peak memory is sampled.
pub const RSS_SAMPLE: Duration = Duration::from_millis(10);

/// A child process under measurement: started, read from while it runs, then reaped by
/// [`Running::finish`] for its figures.
pub struct Running {
    /// The process, its stdout taken (stdin and stderr there when `cmd` piped them).
    pub child: Child,
    /// Its stdout, for lines to wait on while it runs; [`Running::finish`] reads the rest.
    pub stdout: BufReader<ChildStdout>,
    started: Instant,
    broker_before: f64,
    peak_kb: Arc<AtomicU64>,
    sampled: Arc<AtomicBool>,
    sampler: JoinHandle<()>,
}

/// The VmHWM line of a /proc/PID/status, in kB (none once the process has exited).
fn vm_hwm_kb(status_path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
        let peak_kb = Arc::new(AtomicU64::new(0));
        let sampled = Arc::new(AtomicBool::new(false));
        let status_path = format!("/proc/{}/status", child.id());
        let sampler = std::thread::spawn({
            let (peak_kb, sampled) = (peak_kb.clone(), sampled.clone());
            move || {
                while !sampled.load(Ordering::Relaxed) {
                    if let Some(kb) = vm_hwm_kb(&status_path) {
                        peak_kb.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(RSS_SAMPLE);
                }
            }
        });
        Running {
            child,
            stdout,
            started,
            broker_before,
            peak_kb,
            sampled,
            sampler,
        }
    }

    /// Waits for the process to end and returns what it printed and used.
    pub fn finish(mut self, broker: &Mosquitto) -> Measured {
        let mut out = String::new();
        self.stdout.read_to_string(&mut out).expect("read stdout");
        let pid = self.child.id() as libc::pid_t;
        // Wait for the exit without reaping, so that the sampler's last look is at this
        // process and not at one that took its pid.
        // SAFETY: a zeroed siginfo_t is valid, and waitid writes it for our own child.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(rc, 0, "waitid");
        self.sampled.store(true, Ordering::Relaxed);
        self.sampler.join().expect("memory sampler");
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid, and wait4 writes it for our own child.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        assert_eq!(rc, pid, "wait4");
        let wall = self.started.elapsed().as_secs_f64();
        let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Measured {
            stdout: out,
            cpu_s: cpu(ru.ru_utime) + cpu(ru.ru_stime),
            rss_mb: match self.peak_kb.load(Ordering::Relaxed) {
                0 => ru.ru_maxrss as f64, // gone before the first sample
                kb => kb as f64,
            } / 1024.0,
            wall,
            broker_cpu: broker.cpu_seconds() - self.broker_before,
            ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        }
    }
}
