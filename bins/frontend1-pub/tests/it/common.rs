use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_frontend1-pub");
pub const DEVICE: &str = "frontend1_ultra_high_perf_device";
pub const TOPIC: &str = "device_data/frontend1_ultra_high_perf_device";

/// How a publisher process ended.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
    pub report: Option<Value>,
}

impl Outcome {
    pub fn report(&self) -> &Value {
        self.report
            .as_ref()
            .unwrap_or_else(|| panic!("no JSON report; stderr:\n{}", self.stderr))
    }

    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
    }
}

/// A publisher process started with a JSON report file; its output is collected as it
/// comes, so that a test can wait for a line before it acts.
pub struct Running {
    pub child: Child,
    started: Instant,
    dir: TempDir,
    stdout: Collected,
    stderr: Collected,
}

/// What a pipe said so far, and the thread that reads it.
struct Collected {
    text: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Collected {
    fn of(pipe: impl Read + Send + 'static) -> Collected {
        let text = Arc::new(Mutex::new(String::new()));
        let t = text.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut t = t.lock().unwrap();
                t.push_str(&line);
                t.push('\n');
            }
        });
        Collected {
            text,
            reader: Some(reader),
        }
    }

    fn contains(&self, needle: &str) -> bool {
        self.text.lock().unwrap().contains(needle)
    }

    fn finish(mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        std::mem::take(&mut *self.text.lock().unwrap())
    }
}

pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
    let dir = TempDir::new("pub");
    let report = dir.path("report.json");
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--report-json")
        .arg(&report)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // A test that names no broker gets `auto`, which probes 127.0.0.1:1883, where a real
    // broker may listen: it probes a port nothing listens on instead (a test may set its own).
    cmd.env(
        "LOADGEN_AUTO_BROKER",
        format!("127.0.0.1:{}", test_support::free_port()),
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn publisher");
    let stdout = Collected::of(child.stdout.take().expect("stdout piped"));
    let stderr = Collected::of(child.stderr.take().expect("stderr piped"));
    Running {
        child,
        started,
        dir,
        stdout,
        stderr,
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits until stdout or stderr holds `needle` (a progress line, the summary), for up
    /// to `within`; whether it did. What a test waits for before a signal or a fault.
    pub fn wait_for_output(&self, needle: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if self.stdout.contains(needle) || self.stderr.contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Whether the process exits within `limit` (its output is collected by [`Running::wait`]).
    pub fn exits_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn wait(self) -> Outcome {
        let Running {
            mut child,
            started,
            dir,
            stdout,
            stderr,
        } = self;
        let status = child.wait().expect("wait publisher");
        let wall = started.elapsed();
        let report = std::fs::read_to_string(dir.path("report.json"))
            .ok()
            .map(|t| serde_json::from_str(&t).expect("report is JSON"));
        Outcome {
            code: status.code().unwrap_or(-1),
            stdout: stdout.finish(),
            stderr: stderr.finish(),
            wall,
            report,
        }
    }
}

/// Asserts that `text` holds no terminal control sequence (ESC or BEL).
pub fn assert_no_escapes(text: &str) {
    assert!(
        !text.contains(['\u{1b}', '\u{7}', '\u{9b}']),
        "control characters reached the terminal: {text:?}"
    );
}

/// Runs the publisher to the end.
pub fn publish(args: &[&str]) -> Outcome {
    spawn(args, &[]).wait()
}

pub fn publish_env(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    spawn(args, env).wait()
}

/// A JSON number as u64.
pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v:#}"))
}
