//! One report, many forms: every tool builds its report struct once and hands it to the
//! exporters behind [`Exporter`]: the text summary, JSON (`--report-json`), CSV
//! (`--report-csv`) and Markdown (`--report-md`), each to a file or `-` for stdout
//! (hyperfine's convention). When an export takes stdout, the text summary goes to stderr.
//!
//! CSV shows the report's scalar fields, flattened (`latency_us.p99`), and one
//! `threshold <expr>` column per threshold; lists (devices, workers) and the encoded
//! histograms stay in the JSON. Markdown is the summary people read in CI, not a field
//! dump: the verdict, what matters for the run, the thresholds in their units
//! ([`crate::summary`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::Error;
use crate::out;
use crate::summary::{Summarize, Summary};

/// A report an exporter can render: its text summary, its JSON text, and its JSON tree,
/// each made only when an exporter asks (the tree of a 100,000-device backend report costs
/// hundreds of MB, so only CSV and Markdown build it).
pub struct Rendered<'a> {
    pub text: &'a str,
    json_text: &'a dyn Fn() -> Result<String, Error>,
    json_tree: &'a dyn Fn() -> Result<Value, Error>,
    summary: &'a dyn Fn() -> Summary,
    tree: std::cell::OnceCell<Value>,
}

impl<'a> Rendered<'a> {
    pub fn new(
        text: &'a str,
        json_text: &'a dyn Fn() -> Result<String, Error>,
        json_tree: &'a dyn Fn() -> Result<Value, Error>,
        summary: &'a dyn Fn() -> Summary,
    ) -> Self {
        Rendered {
            text,
            json_text,
            json_tree,
            summary,
            tree: std::cell::OnceCell::new(),
        }
    }

    /// The summary people read: verdict, what matters, thresholds in their units.
    pub fn summary(&self) -> Summary {
        (self.summary)()
    }

    /// The report as a JSON tree.
    pub fn tree(&self) -> Result<&Value, Error> {
        if self.tree.get().is_none() {
            let _ = self.tree.set((self.json_tree)()?);
        }
        Ok(self.tree.get().expect("set above"))
    }
}

/// One output format.
pub trait Exporter {
    /// The flag that asks for it, for error messages.
    fn flag(&self) -> &'static str;
    fn render(&self, report: &Rendered) -> Result<String, Error>;
}

pub struct TextExporter;
pub struct JsonExporter;
pub struct CsvExporter;
pub struct MarkdownExporter;

impl Exporter for TextExporter {
    fn flag(&self) -> &'static str {
        "the summary"
    }
    fn render(&self, r: &Rendered) -> Result<String, Error> {
        Ok(out::escape_keeping_lines(r.text).into_owned())
    }
}

impl Exporter for JsonExporter {
    fn flag(&self) -> &'static str {
        "--report-json"
    }
    fn render(&self, r: &Rendered) -> Result<String, Error> {
        (r.json_text)().map(|s| s + "\n")
    }
}

impl Exporter for CsvExporter {
    fn flag(&self) -> &'static str {
        "--report-csv"
    }
    fn render(&self, r: &Rendered) -> Result<String, Error> {
        let rows = flatten(r.tree()?);
        let line = |cells: Vec<&str>| {
            cells
                .iter()
                .map(|c| csv_cell(c))
                .collect::<Vec<_>>()
                .join(",")
        };
        let header = line(rows.iter().map(|(k, _)| k.as_str()).collect());
        let values = line(rows.iter().map(|(_, v)| v.as_str()).collect());
        Ok(format!("{header}\n{values}\n"))
    }
}

impl Exporter for MarkdownExporter {
    fn flag(&self) -> &'static str {
        "--report-md"
    }
    fn render(&self, r: &Rendered) -> Result<String, Error> {
        Ok(r.summary().markdown())
    }
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The report's scalars as `(key, value)` rows, nested keys joined with `.`; thresholds as
/// `threshold <expr>` = `pass` / `fail (value)`. Lists and histograms are left out.
pub fn flatten(v: &Value) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    fn walk(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if prefix.is_empty() && (k == "histograms" || k == "thresholds") {
                        continue;
                    }
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match v {
                        // Counts by reason: one cell, so that every run has the same columns.
                        Value::Object(by) if k.ends_with("_by_reason") => {
                            let cell: Vec<String> =
                                by.iter().map(|(r, n)| format!("{r}={n}")).collect();
                            rows.push((key, cell.join("; ")));
                        }
                        _ => walk(&key, v, rows),
                    }
                }
            }
            Value::Array(_) => {}
            Value::Null => rows.push((prefix.to_string(), String::new())),
            Value::String(s) => rows.push((prefix.to_string(), s.clone())),
            other => rows.push((prefix.to_string(), other.to_string())),
        }
    }
    walk("", v, &mut rows);
    if let Some(Value::Array(ts)) = v.get("thresholds") {
        for t in ts {
            let expr = t.get("expr").and_then(Value::as_str).unwrap_or("?");
            let pass = t.get("pass").and_then(Value::as_bool).unwrap_or(false);
            let value = match t.get("value") {
                Some(Value::Number(n)) => n.to_string(),
                _ => "no value".into(),
            };
            rows.push((
                format!("threshold {expr}"),
                if pass {
                    format!("pass ({value})")
                } else {
                    format!("fail ({value})")
                },
            ));
        }
    }
    rows
}

/// Where each export goes, checked before the run.
#[derive(Debug, Clone, Default)]
pub struct Exports {
    pub json: Option<PathBuf>,
    pub csv: Option<PathBuf>,
    pub md: Option<PathBuf>,
}

impl Exports {
    /// Checks every path (writable, at most one `-`).
    pub fn new(
        json: Option<PathBuf>,
        csv: Option<PathBuf>,
        md: Option<PathBuf>,
    ) -> Result<Exports, Error> {
        let e = Exports { json, csv, md };
        let mut stdout = Vec::new();
        for (flag, p) in e.targets() {
            out::check_export_path(flag, p)?;
            if p.as_os_str() == "-" {
                stdout.push(flag);
            }
        }
        if stdout.len() > 1 {
            return Err(Error::usage(format!(
                "{} all ask for stdout (-); give all but one of them a file path",
                stdout.join(" and ")
            )));
        }
        Ok(e)
    }

    fn targets(&self) -> Vec<(&'static str, &Path)> {
        let mut t = Vec::new();
        if let Some(p) = &self.json {
            t.push((JsonExporter.flag(), p.as_path()));
        }
        if let Some(p) = &self.csv {
            t.push((CsvExporter.flag(), p.as_path()));
        }
        if let Some(p) = &self.md {
            t.push((MarkdownExporter.flag(), p.as_path()));
        }
        t
    }

    /// Whether an export writes to stdout (the summary then goes to stderr).
    pub fn takes_stdout(&self) -> bool {
        self.targets().iter().any(|(_, p)| p.as_os_str() == "-")
    }

    /// Prints the summary and writes every export of `report`.
    pub fn write<R: Serialize + Summarize>(&self, report: &R, text: &str) -> Result<(), Error> {
        let encode = |e: serde_json::Error| Error::failed("cannot encode the report", e);
        let json_text = || serde_json::to_string_pretty(report).map_err(encode);
        let json_tree = || serde_json::to_value(report).map_err(encode);
        let summary = || report.summary();
        let r = Rendered::new(text, &json_text, &json_tree, &summary);
        let summary = TextExporter.render(&r)?;
        let _ = if self.takes_stdout() {
            std::io::stderr().write_all(summary.as_bytes())
        } else {
            std::io::stdout().write_all(summary.as_bytes())
        };
        let exporters: [(&dyn Exporter, &Option<PathBuf>); 3] = [
            (&JsonExporter, &self.json),
            (&CsvExporter, &self.csv),
            (&MarkdownExporter, &self.md),
        ];
        for (exporter, path) in exporters {
            if let Some(p) = path {
                let body = exporter.render(&r)?;
                write_to(exporter.flag(), p, &body)?;
            }
        }
        Ok(())
    }
}

fn write_to(flag: &str, p: &Path, body: &str) -> Result<(), Error> {
    if p.as_os_str() == "-" {
        let mut o = std::io::stdout().lock();
        o.write_all(body.as_bytes())
            .and_then(|_| o.flush())
            .map_err(|e| Error::failed(format!("cannot write {flag} to stdout"), e))
    } else {
        std::fs::write(p, body)
            .map_err(|e| Error::failed(format!("cannot write {flag} {}", p.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> Value {
        json!({
            "tool": "loadgen pub", "points_sent": 1000, "latency_us": {"p99": 42, "max": 90},
            "error": null, "topic": "a,\"b\"|c", "per_worker": [{"worker": 0}],
            "histograms": {"ack_us": "HISTFAAAA"},
            "failed_by_reason": {"refused": 2, "timeout": 1},
            "thresholds": [{"expr": "points_sent>=1k", "pass": true, "value": 1000}]
        })
    }

    #[test]
    fn csv_has_one_header_and_one_row_of_the_reports_scalars() {
        let r = report();
        let (t, v) = (|| Ok(String::new()), || Ok(r.clone()));
        let summary = || Summary::new("loadgen pub");
        let csv = CsvExporter
            .render(&Rendered::new("", &t, &v, &summary))
            .unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("latency_us.p99"), "{csv}");
        assert!(lines[0].ends_with("threshold points_sent>=1k"), "{csv}");
        assert!(lines[1].contains("\"a,\"\"b\"\"|c\""), "quoted: {csv}");
        assert!(!csv.contains("HISTF"), "histograms stay in the JSON");
        assert!(!csv.contains("per_worker"));
        assert!(lines[1].contains("refused=2; timeout=1"), "one cell: {csv}");
    }

    #[test]
    fn markdown_is_the_reports_summary_not_its_fields() {
        let r = report();
        let (t, v) = (|| Ok(String::new()), || Ok(r.clone()));
        let summary = || {
            let mut s = Summary::new("loadgen pub");
            s.passed("1,000 points sent").row("points", "1,000 sent");
            s
        };
        let md = MarkdownExporter
            .render(&Rendered::new("", &t, &v, &summary))
            .unwrap();
        assert!(
            md.starts_with("### ✅ PASS: `loadgen pub` — 1,000 points sent\n"),
            "{md}"
        );
        assert!(md.contains("| points | 1,000 sent |"), "{md}");
        assert!(!md.contains("points_sent"), "no field dump: {md}");
    }

    #[test]
    fn only_one_export_may_take_stdout() {
        let dash = || Some(PathBuf::from("-"));
        let e = Exports::new(dash(), dash(), None).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(
            e.to_string().contains("--report-json and --report-csv"),
            "{e}"
        );
        assert!(Exports::new(dash(), None, None).unwrap().takes_stdout());
        let e = Exports::new(None, Some("/no/such/dir/r.csv".into()), None).unwrap_err();
        assert!(e.to_string().starts_with("--report-csv"), "{e}");
    }
}
