use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use test_support::{workspace_bin, TempDir};

pub const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

/// How a process ended, with its JSON report.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
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

fn run_with_report(mut cmd: Command) -> Outcome {
    let dir = TempDir::new("loadgen");
    let report = dir.path("report.json");
    let out = cmd
        .arg("--report-json")
        .arg(&report)
        .stdin(Stdio::null())
        .output()
        .expect("run");
    Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report: std::fs::read_to_string(&report)
            .ok()
            .map(|t| serde_json::from_str(&t).expect("report is JSON")),
    }
}

/// Runs `loadgen pub ARGS` to the end.
pub fn publish(args: &[&str]) -> Outcome {
    let mut cmd = Command::new(BIN);
    cmd.arg("pub").args(args);
    run_with_report(cmd)
}

/// A backend-sub, subscribed and waiting.
pub struct Backend {
    child: Child,
    dir: TempDir,
    stderr: mpsc::Receiver<String>,
}

pub fn backend(args: &[&str]) -> Backend {
    let dir = TempDir::new("fleet-backend");
    let mut child = Command::new(workspace_bin("backend-sub"))
        .args(args)
        .arg("--quiet")
        .arg("--report-json")
        .arg(dir.path("report.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn backend-sub");
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) if line.starts_with("subscribed to") => break,
            Ok(_) => {}
            Err(_) => panic!("backend never subscribed"),
        }
    }
    Backend {
        child,
        dir,
        stderr: rx,
    }
}

impl Backend {
    /// Waits for a stderr line that starts with `prefix`, for up to `within`.
    pub fn wait_for_line(&self, prefix: &str, within: Duration) -> bool {
        let end = std::time::Instant::now() + within;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits for the backend's verdict: (exit code, report).
    pub fn wait(self) -> (i32, Value) {
        let Backend { child, dir, .. } = self;
        let out = child.wait_with_output().expect("wait backend");
        let report = std::fs::read_to_string(dir.path("report.json")).expect("backend report");
        (
            out.status.code().unwrap_or(-1),
            serde_json::from_str(&report).expect("backend report is JSON"),
        )
    }
}

pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v:#}"))
}
