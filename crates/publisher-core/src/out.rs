//! Writing to the terminal without panicking: `frontend1-pub | head -1` closes stdout, and
//! a progress line or summary must not turn that into a panic (exit 101). What cannot be
//! written is dropped; the exit code still tells how the run ended.

use std::io::Write;
use std::path::Path;

use crate::error::Error;

/// `eprintln!` that ignores a closed stderr.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Prints the text summary: on stdout, or on stderr when the JSON report goes to stdout.
pub fn summary(text: &str, report_json: Option<&Path>) {
    let _ = if report_json.is_some_and(|p| p.as_os_str() == "-") {
        std::io::stderr().write_all(text.as_bytes())
    } else {
        std::io::stdout().write_all(text.as_bytes())
    };
}

/// Writes `report` as pretty JSON to `path` (`-` = stdout).
pub fn write_json<T: serde::Serialize>(report: &T, path: &Path) -> Result<(), Error> {
    let json = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Other(format!("cannot encode the report: {e}")))?;
    if path.as_os_str() == "-" {
        writeln!(std::io::stdout().lock(), "{json}")
            .map_err(|e| Error::Other(format!("cannot write the report to stdout: {e}")))
    } else {
        std::fs::write(path, json + "\n").map_err(|e| {
            Error::Other(format!(
                "cannot write --report-json {}: {e}",
                path.display()
            ))
        })
    }
}

/// Checks a `--report-json` path before the run, so a long run does not end without its
/// report: `-`, or a file (new or not) in an existing directory.
pub fn check_report_path(p: &Path) -> Result<(), Error> {
    if p.as_os_str().is_empty() {
        return Err(Error::usage("--report-json needs a path, or - for stdout"));
    }
    if p.as_os_str() == "-" {
        return Ok(());
    }
    if p.is_dir() {
        return Err(Error::usage(format!(
            "--report-json {} is a directory; give a file path",
            p.display()
        )));
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::usage(format!(
            "--report-json {}: directory {} does not exist; create it or choose another path",
            p.display(),
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_paths_are_checked_before_the_run() {
        assert!(check_report_path(Path::new("-")).is_ok());
        assert!(check_report_path(Path::new("report.json")).is_ok());
        assert!(check_report_path(Path::new("")).is_err());
        assert!(check_report_path(Path::new("/")).is_err());
        let e = check_report_path(Path::new("/no/such/dir/report.json")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
