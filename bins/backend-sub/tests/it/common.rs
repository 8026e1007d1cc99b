use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use test_support::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_backend-sub");

pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub report: Value,
}

/// A running backend, already subscribed.
pub struct Backend {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// Lines already taken from `stderr` by [`Backend::wait_for_line`].
    seen: Vec<String>,
    dir: TempDir,
}

/// Runs backend-sub with `args` to the end, without waiting for a subscription (for runs
/// that fail before it); returns (exit code, stdout, stderr).
pub fn run_to_end(args: &[&str]) -> (i32, String, String) {
    run_to_end_env(args, &[])
}

/// [`run_to_end`] with environment variables set.
pub fn run_to_end_env(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run backend-sub");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that `text` holds no terminal control sequence (ESC, BEL, CSI).
pub fn assert_no_escapes(text: &str) {
    assert!(
        !text.contains(['\u{1b}', '\u{7}', '\u{9b}']),
        "control characters reached the terminal: {text:?}"
    );
}

/// A batch payload whose points come from many devices: (device id, seq) each.
pub fn multi_device_payload(points: &[(String, u64)]) -> Vec<u8> {
    let items: Vec<String> = points
        .iter()
        .map(|(id, seq)| {
            format!(
                r#"{{"device_id":{},"seq":{seq},"timestamp":1763798400.5,"value":1.5}}"#,
                serde_json::to_string(id).unwrap()
            )
        })
        .collect();
    format!("[{}]", items.join(",")).into_bytes()
}

/// Starts backend-sub with `args` and waits until it has subscribed.
pub fn start(args: &[&str]) -> Backend {
    start_env(args, &[])
}

/// [`start`] with environment variables set.
pub fn start_env(args: &[&str], envs: &[(&str, &str)]) -> Backend {
    let dir = TempDir::new("backend");
    let mut child = Command::new(BIN)
        .args(args)
        .envs(envs.iter().copied())
        .arg("--report-json")
        .arg(dir.path("report.json"))
        .stdin(Stdio::null())
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
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => {
                let done = line.starts_with("subscribed to");
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(_) => panic!("backend never subscribed: {seen:?}"),
        }
    }
    Backend {
        child,
        stderr: rx,
        seen: Vec::new(),
        dir,
    }
}

impl Backend {
    /// Waits for a stderr line that starts with `prefix`, for up to `within`; the lines
    /// read meanwhile are kept for [`Backend::wait`].
    pub fn wait_for_line(&mut self, prefix: &str, within: Duration) -> bool {
        let end = std::time::Instant::now() + within;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.starts_with(prefix);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits until the backend says (on SIGUSR1, asked every 100 ms) that it received
    /// `points` points, for up to `within`: what a test waits for before a signal, rather
    /// than a guessed sleep.
    pub fn wait_received(&mut self, points: u64, within: Duration) -> bool {
        // The status line groups digits: "received 1,000 points".
        let digits = points.to_string();
        let mut grouped = String::new();
        for (i, ch) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        let want = format!("received {grouped} points");
        let end = std::time::Instant::now() + within;
        while std::time::Instant::now() < end {
            self.signal("USR1");
            let tick = std::time::Instant::now() + Duration::from_millis(100);
            while let Some(left) = tick.checked_duration_since(std::time::Instant::now()) {
                match self.stderr.recv_timeout(left) {
                    Ok(line) => {
                        let hit = line.contains(&want);
                        self.seen.push(line);
                        if hit {
                            return true;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        false
    }

    /// Whether the process has exited (its status is collected by [`Backend::wait`]).
    pub fn exited(&self) -> bool {
        match std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) {
            Ok(stat) => stat.contains(") Z "),
            Err(_) => true,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's peak resident memory so far, in kB (VmHWM).
    pub fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
    }

    pub fn wait(self) -> Outcome {
        let Backend {
            child,
            stderr,
            mut seen,
            dir,
        } = self;
        let out = child.wait_with_output().expect("wait backend");
        // The reader thread may still be forwarding the last lines: take them all, until it
        // ends with the stream (bounded, in case a grandchild holds stderr open).
        while let Ok(line) = stderr.recv_timeout(Duration::from_secs(5)) {
            seen.push(line);
        }
        let stderr = seen;
        let report =
            std::fs::read_to_string(dir.path("report.json")).expect("backend wrote its report");
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: stderr.join("\n"),
            report: serde_json::from_str(&report).expect("report is JSON"),
        }
    }
}

impl Outcome {
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code, code,
            "exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
    }

    pub fn device(&self, id: &str) -> &Value {
        self.report["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_id"] == id)
            .unwrap_or_else(|| panic!("no device {id} in {:#}", self.report))
    }

    pub fn frontend(&self, name: &str) -> &Value {
        self.report["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("no frontend {name}"))
    }
}

pub fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {v:#}"))
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Validates a backend report against the committed schema.
pub fn validate(report: &Value) {
    test_support::assert_matches_schema("schema/backend-report.schema.json", report);
}
