//! What the network benches (throughput, fleet, receive, subfleet, postgres, soak) share: building the release binaries they
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
///
/// The seed's tools ([`SEED_TOOLS`]; the benches run backend-sub, frontend1-pub and job-pub)
/// run as `loadgen` under their names: the function their own binaries call, with one
/// release binary to link instead of four (each thin-LTO link took 86-145 s of CI's two
/// cores).
const PACKAGES: &[&str] = &["loadgen", "loadgen-benches"];
const BINS: &[&str] = &["loadgen", "mqtt-refclient", "fleet-refclient"];
/// The names under which `loadgen` runs a seed tool (see `loadgen::run`).
const SEED_TOOLS: &[&str] = &["frontend1-pub", "frontend2-pub", "backend-sub", "job-pub"];

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
    let release = std::env::var_os("CARGO_TARGET_DIR")
        .map_or(root.join("target"), PathBuf::from)
        .join("release");
    // A directory of links (absolute, to the binaries in `release`), every binary under the
    // name the benches run: the built ones, and `loadgen` under each seed tool's name. Not the release directory itself, where a later
    // `cargo build` of a seed tool writes its own binary.
    let dir = release.join("bench-bin");
    std::fs::create_dir_all(&dir).expect("create target/release/bench-bin");
    let links = BINS
        .iter()
        .map(|b| (*b, *b))
        .chain(SEED_TOOLS.iter().map(|t| (*t, "loadgen")));
    for (name, target) in links {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(release.join(target), &link)
            .unwrap_or_else(|e| panic!("link {}: {e}", link.display()));
    }
    dir
}

/// What [`measure`] saw of a process.
pub struct Measured {
    pub stdout: String,
    /// User + system CPU seconds.
    pub cpu_s: f64,
    /// Peak resident memory of the process's own image (VmHWM), read as it exits (see
    /// [`Running`]). Not `wait4`'s `ru_maxrss`: exec keeps the high-water mark of the memory
    /// it replaces, the bench's own (shared with a spawned child until its exec), so every
    /// process smaller than the bench would report the bench's size.
    pub rss_mb: f64,
    /// Whether `rss_mb` was read at the exit (else sampled every [`RSS_SAMPLE`] while the
    /// process ran, which can miss a peak in its last moments).
    pub rss_at_exit: bool,
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

/// How often a measured process's peak memory is sampled (where it cannot be read at its
/// exit).
pub const RSS_SAMPLE: Duration = Duration::from_millis(10);

/// A child process under measurement: started, read from while it runs, then reaped by
/// [`Running::finish`] for its figures.
///
/// Its peak memory is read when it exits: a thread of ours follows it with ptrace
/// (`PTRACE_SEIZE` with `PTRACE_O_TRACEEXIT`), which stops it on its way out, before its
/// memory is released, where its VmHWM is final; the thread passes every other stop on
/// (signals are delivered, and a SIGSTOP stops it until a SIGCONT, as the backlog scenarios
/// need). A sampler that reads VmHWM every 10 ms missed what a process took in its last
/// milliseconds (a backend building its report and exiting). Where ptrace is not allowed,
/// the sampler's figure stands.
pub struct Running {
    /// The process, its stdout taken (stdin and stderr there when `cmd` piped them).
    pub child: Child,
    /// Its stdout, for lines to wait on while it runs; [`Running::finish`] reads the rest.
    pub stdout: BufReader<ChildStdout>,
    started: Instant,
    broker_before: f64,
    peak_kb: Arc<AtomicU64>,
    /// Follows the process to its end and reaps it.
    follower: JoinHandle<Exit>,
}

/// How a followed process ended.
struct Exit {
    status: libc::c_int,
    ru: libc::rusage,
    /// VmHWM when it stopped on its way out (None: not traced, or gone first).
    at_exit_kb: Option<u64>,
}

/// The VmHWM line of a /proc/PID/status, in kB (none once the process has exited).
fn vm_hwm_kb(status_path: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_path).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One ptrace request with no address.
fn ptrace(request: libc::c_uint, pid: libc::pid_t, data: libc::c_long) -> libc::c_long {
    // SAFETY: these requests (SEIZE, CONT, LISTEN) read no memory of ours; `data` is an
    // option mask or a signal number.
    unsafe {
        libc::ptrace(
            request,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            data as *mut libc::c_void,
        )
    }
}

/// Follows child `pid` to its exit (see [`Running`]) and reaps it; `sampler` is stopped
/// (`sampled`) and joined before the reaping, so that it never reads a process that took
/// the pid.
fn follow(
    pid: libc::pid_t,
    status_path: &str,
    sampled: &AtomicBool,
    sampler: JoinHandle<()>,
) -> Exit {
    // This thread is the tracer: it must make every ptrace request.
    let traced = ptrace(
        libc::PTRACE_SEIZE,
        pid,
        libc::PTRACE_O_TRACEEXIT as libc::c_long,
    ) == 0;
    let mut at_exit_kb = None;
    loop {
        // SAFETY: a zeroed siginfo_t is valid, and waitid writes it for our own child.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // WNOWAIT: the exit is seen here, and reaped below once the sampler has stopped.
        // SAFETY: waitid writes `info`, which we own.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WSTOPPED | libc::WNOWAIT | libc::__WALL,
            )
        };
        if rc != 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("waitid: {}", std::io::Error::last_os_error());
        }
        // SAFETY: waitid filled a SIGCHLD siginfo, whose si_status is set.
        let st = unsafe { info.si_status() };
        match info.si_code {
            libc::CLD_EXITED | libc::CLD_KILLED | libc::CLD_DUMPED => break,
            libc::CLD_TRAPPED if traced => {
                let (sig, event) = (st & 0xff, (st >> 8) & 0xff);
                let stopping = [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU];
                if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
                    // On its way out, its memory still there: the final peak.
                    at_exit_kb = vm_hwm_kb(status_path);
                    ptrace(libc::PTRACE_CONT, pid, 0);
                } else if event == libc::PTRACE_EVENT_STOP && stopping.contains(&sig) {
                    // A group-stop (SIGSTOP): stopped it stays, until a SIGCONT.
                    ptrace(libc::PTRACE_LISTEN, pid, 0);
                } else if event == libc::PTRACE_EVENT_STOP {
                    // Woken from a group-stop (or interrupted): it runs on.
                    ptrace(libc::PTRACE_CONT, pid, 0);
                } else {
                    // A signal on its way: delivered as it would have been.
                    ptrace(libc::PTRACE_CONT, pid, sig as libc::c_long);
                }
            }
            _ => {
                // Stopped untraced (SIGSTOP): take the report, wait on.
                let mut status = 0;
                // SAFETY: waitpid writes `status`, which we own.
                unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED | libc::WNOHANG) };
            }
        }
    }
    sampled.store(true, Ordering::Relaxed);
    sampler.join().expect("memory sampler");
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid, and wait4 writes it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, libc::__WALL, &mut ru) };
    assert_eq!(rc, pid, "wait4");
    Exit {
        status,
        ru,
        at_exit_kb,
    }
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
            let (peak_kb, sampled, status_path) =
                (peak_kb.clone(), sampled.clone(), status_path.clone());
            move || {
                while !sampled.load(Ordering::Relaxed) {
                    if let Some(kb) = vm_hwm_kb(&status_path) {
                        peak_kb.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(RSS_SAMPLE);
                }
            }
        });
        let pid = child.id() as libc::pid_t;
        let follower = std::thread::spawn(move || follow(pid, &status_path, &sampled, sampler));
        Running {
            child,
            stdout,
            started,
            broker_before,
            peak_kb,
            follower,
        }
    }

    /// Waits for the process to end and returns what it printed and used.
    pub fn finish(self, broker: &Mosquitto) -> Measured {
        let Running {
            child: _child,
            mut stdout,
            started,
            broker_before,
            peak_kb,
            follower,
        } = self;
        let mut out = String::new();
        stdout.read_to_string(&mut out).expect("read stdout");
        let exit = follower.join().expect("the process follower");
        let wall = started.elapsed().as_secs_f64();
        let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        let sampled_kb = peak_kb.load(Ordering::Relaxed);
        let (kb, at_exit) = match exit.at_exit_kb {
            Some(kb) => (kb.max(sampled_kb), true),
            None if sampled_kb > 0 => (sampled_kb, false),
            None => (exit.ru.ru_maxrss as u64, false), // gone before the first sample
        };
        let status = exit.status;
        let m = Measured {
            stdout: out,
            cpu_s: cpu(exit.ru.ru_utime) + cpu(exit.ru.ru_stime),
            rss_mb: kb as f64 / 1024.0,
            rss_at_exit: at_exit,
            wall,
            broker_cpu: broker.cpu_seconds() - broker_before,
            ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        };
        if !m.rss_at_exit {
            eprintln!(
                "note: peak memory of pid {} sampled every {RSS_SAMPLE:?}, not read at its exit (ptrace refused?): a last-moment peak may be missed",
                _child.id()
            );
        }
        m
    }
}
