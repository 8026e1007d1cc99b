//! Writing to the terminal and to files, safely.
//!
//! - Nothing panics on a closed pipe: `frontend1-pub | head -1` closes stdout, and a progress
//!   line or summary must not turn that into a panic (exit 101). What cannot be written is
//!   dropped; the exit code still tells how the run ended.
//! - Text that came from outside (device ids and topics off the network, broker messages,
//!   user input echoed back) never reaches a terminal raw: [`escape`] shows control
//!   characters as escapes, so a device id cannot set the window title, clear the screen or
//!   forge a line of the summary. Every line written through [`errln!`] and [`summary`] is
//!   escaped again (all but its line breaks), as a net under the field-level escaping. JSON
//!   reports stay exact: serde escapes what JSON must.
//! - Files the tool reads are read with a bound ([`read_bounded`]), and a report file is
//!   checked for writability before the run ([`check_report_path`]).

use std::borrow::Cow;
use std::io::{Read, Write};
use std::path::Path;

use crate::error::Error;

/// `eprintln!` that ignores a closed stderr and escapes control characters (all but line
/// breaks) in what it writes.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        $crate::out::write_stderr_line(&format!($($arg)*));
    }};
}

/// Writes `line` and a newline to stderr, control characters other than `\n` and `\t`
/// escaped; a closed stderr is ignored.
pub fn write_stderr_line(line: &str) {
    let mut text = escape_keeping_lines(line).into_owned();
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

/// A writer for log lines: stderr, with control characters escaped, a closed stderr ignored.
pub struct EscapingStderr;

impl Write for EscapingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let _ = std::io::stderr().write_all(escape_keeping_lines(&text).as_bytes());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Whether `c` must not reach a terminal raw: C0 and C1 controls, DEL, and the Unicode
/// controls that reorder or hide text (bidi overrides and isolates, zero-width marks).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

fn escape_with(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c) && !keep(c) {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` with every control character shown as an escape (`\x1b`, `\n`, `\u{9b}`): for a
/// value from outside (a device id, a topic) shown in text output.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_with(s, |_| false)
}

/// Like [`escape`], but keeps line breaks and tabs: for whole lines of our own text.
pub fn escape_keeping_lines(s: &str) -> Cow<'_, str> {
    escape_with(s, |c| c == '\n' || c == '\t')
}

/// Prints the text summary: on stdout, or on stderr when the JSON report goes to stdout.
pub fn summary(text: &str, report_json: Option<&Path>) {
    let text = escape_keeping_lines(text);
    let _ = if report_json.is_some_and(|p| p.as_os_str() == "-") {
        std::io::stderr().write_all(text.as_bytes())
    } else {
        std::io::stdout().write_all(text.as_bytes())
    };
}

/// Writes `report` as pretty JSON to `path` (`-` = stdout).
pub fn write_json<T: serde::Serialize>(report: &T, path: &Path) -> Result<(), Error> {
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::failed("cannot encode the report", e))?;
    if path.as_os_str() == "-" {
        writeln!(std::io::stdout().lock(), "{json}")
            .map_err(|e| Error::failed("cannot write the report to stdout", e))
    } else {
        std::fs::write(path, json + "\n")
            .map_err(|e| Error::failed(format!("cannot write --report-json {}", path.display()), e))
    }
}

/// Reads the text file at `path`, refusing one over `limit` bytes (a mistaken `/dev/zero`
/// must not eat memory or hang). `what` names it in errors, e.g. `config file x.toml`.
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> Result<String, Error> {
    let file =
        std::fs::File::open(path).map_err(|e| Error::usage(format!("cannot read {what}: {e}")))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::usage(format!("cannot read {what}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(Error::usage(format!(
            "{what} is larger than {}; give a smaller file",
            fmt_size(limit)
        )));
    }
    String::from_utf8(bytes).map_err(|_| Error::usage(format!("{what} is not UTF-8 text")))
}

/// Opens the regular file at `path` to be read whole, refusing one over `limit` bytes before
/// a byte is read; each error says which of the cases it is: not there, not a regular file
/// (a device such as `/dev/zero`, a directory, a pipe), too large, or unreadable. `what`
/// names it, e.g. `report shard-0.json`.
pub fn open_regular(path: &Path, limit: u64, what: &str) -> Result<std::fs::File, Error> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::usage(format!("{what} does not exist")),
        _ => Error::usage(format!("cannot read {what}: {e}")),
    })?;
    if !meta.is_file() {
        return Err(Error::usage(format!(
            "{what} is not a regular file ({}); give a file",
            if meta.is_dir() {
                "a directory"
            } else {
                "a device, pipe or socket"
            }
        )));
    }
    if meta.len() > limit {
        return Err(Error::usage(format!(
            "{what} is larger than {} ({} bytes)",
            fmt_size(limit),
            crate::format::fmt_int(meta.len())
        )));
    }
    std::fs::File::open(path).map_err(|e| Error::usage(format!("cannot read {what}: {e}")))
}

fn fmt_size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        return format!("{} GiB", bytes >> 30);
    }
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// Checks a `--report-json` path before the run, so a long run does not end without its
/// report: `-`, or a file (new or not) that can be written, in an existing directory. A new
/// file is created to prove it and removed again.
pub fn check_report_path(p: &Path) -> Result<(), Error> {
    check_export_path("--report-json", p)
}

/// [`check_report_path`] for the output of `flag`.
pub fn check_export_path(flag: &str, p: &Path) -> Result<(), Error> {
    if p.as_os_str().is_empty() {
        return Err(Error::usage(format!(
            "{flag} needs a path, or - for stdout"
        )));
    }
    if p.as_os_str() == "-" {
        return Ok(());
    }
    if p.is_dir() {
        return Err(Error::usage(format!(
            "{flag} {} is a directory; give a file path",
            p.display()
        )));
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::usage(format!(
            "{flag} {}: directory {} does not exist; create it or choose another path",
            p.display(),
            dir.display()
        )));
    }
    let unwritable = |e: std::io::Error| {
        Error::usage(format!(
            "{flag} {} cannot be written ({e}); choose another path",
            p.display()
        ))
    };
    if p.exists() {
        // Opened for appending, not truncated: the old report stays until the new one is written.
        std::fs::OpenOptions::new()
            .append(true)
            .open(p)
            .map_err(unwritable)?;
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .map_err(unwritable)?;
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_paths_are_checked_before_the_run() {
        assert!(check_report_path(Path::new("-")).is_ok());
        let tmp = std::env::temp_dir().join(format!("loadgen-out-{}.json", std::process::id()));
        assert!(check_report_path(&tmp).is_ok());
        assert!(!tmp.exists(), "the probe file is removed again");
        assert!(check_report_path(Path::new("")).is_err());
        assert!(check_report_path(Path::new("/")).is_err());
        let e = check_report_path(Path::new("/no/such/dir/report.json")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        let hostile = "dev\u{1b}]0;pwned\u{7}\u{1b}[2J\nverdict ok\u{9b}\u{202e}";
        let shown = escape(hostile);
        assert!(!shown.chars().any(is_unsafe), "{shown}");
        assert_eq!(
            shown,
            "dev\\x1b]0;pwned\\x07\\x1b[2J\\nverdict ok\\u{9b}\\u{202e}"
        );
        assert!(matches!(escape("plain ünï 😀"), Cow::Borrowed(_)));
        assert_eq!(escape_keeping_lines("a\nb\u{1b}"), "a\nb\\x1b");
    }

    #[test]
    fn bounded_reads_refuse_endless_files() {
        let e = read_bounded(Path::new("/dev/zero"), 1 << 10, "config file /dev/zero").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("larger than 1 KiB"), "{e}");
    }
}
