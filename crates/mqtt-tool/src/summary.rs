//! The summary people read, as a CI step summary shows it: the verdict first (PASS or FAIL
//! and why), then the few figures that matter for the run at hand, the thresholds with
//! their limits and values in their units, and one line on the generator's health.
//!
//! Each tool builds one [`Summary`] from its report ([`Summarize`]), choosing its rows: a row
//! that carries nothing for the run (no reconnects, no routes) is left out. The exporters
//! render it (Markdown for `--report-md`; an HTML report can render the same rows). The full
//! field list stays in the JSON and CSV exports.
//!
//! Text is plain until rendered: every label, value and reason is escaped for Markdown
//! here, so a device id or a topic cannot break a table or forge a line.

use crate::format::{fmt_int, fmt_rate, Percentiles};
use crate::out;
use crate::threshold::{fmt_value, Fields, Judged, Op, Unit};

/// A report that can say what matters about its run.
pub trait Summarize {
    fn summary(&self) -> Summary;
}

/// One threshold as the summary shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdRow {
    pub expr: String,
    pub field: String,
    /// `< 5 ms`, `>= 9,900 points/s`.
    pub limit: String,
    /// The run's value in the field's unit, or `no value`.
    pub value: String,
    pub pass: bool,
}

/// What a run's summary says, before it is rendered.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub tool: String,
    /// Why the run failed, in Markdown, most important first; empty: it passed.
    failures: Vec<String>,
    /// What passing means for this run (`100,000 points sent and acknowledged`).
    passed: Option<String>,
    /// `(label, value)`, plain text.
    pub rows: Vec<(String, String)>,
    pub thresholds: Vec<ThresholdRow>,
    /// `(label, line)`: the generator's (or the receiver's) health, plain text.
    pub health: Option<(String, String)>,
    /// Lines under the tables, plain text: how to read a figure of this run.
    pub notes: Vec<String>,
}

/// The reasons the verdict line names; the rest (and any cut) follow under the tables.
const REASONS_IN_VERDICT: usize = 3;
/// A reason longer than this (in characters) is cut in the verdict line.
const REASON_CHARS: usize = 240;
/// Reasons listed in full, each cut at [`FULL_REASON_CHARS`].
const REASONS_LISTED: usize = 20;
const FULL_REASON_CHARS: usize = 2_000;

impl Summary {
    pub fn new(tool: &str) -> Summary {
        Summary {
            tool: tool.to_string(),
            ..Default::default()
        }
    }

    /// The run failed because of `why` (plain text).
    pub fn fail(&mut self, why: &str) -> &mut Self {
        self.failures.push(md_text(why));
        self
    }

    /// What a pass means for this run, for the verdict line (plain text).
    pub fn passed(&mut self, what: &str) -> &mut Self {
        self.passed = Some(what.to_string());
        self
    }

    /// A row of the table (plain text).
    pub fn row(&mut self, label: &str, value: impl Into<String>) -> &mut Self {
        self.rows.push((label.to_string(), value.into()));
        self
    }

    /// The generator's (or receiver's) health, one line.
    pub fn health(&mut self, label: &str, line: impl Into<String>) -> &mut Self {
        self.health = Some((label.to_string(), line.into()));
        self
    }

    /// A line under the tables.
    pub fn note(&mut self, line: impl Into<String>) -> &mut Self {
        self.notes.push(line.into());
        self
    }

    /// The judged thresholds, their limits and values in the units `fields` gives them; a
    /// failed one fails the run.
    pub fn thresholds(&mut self, judged: &[Judged], fields: &Fields) -> &mut Self {
        for j in judged {
            let unit = fields.unit_of(&j.field);
            let show = |v: f64| match unit {
                Some(u) => fmt_in_unit(v, u),
                None => fmt_value(&j.field, v),
            };
            let value = j.value.map_or_else(|| "no value".to_string(), show);
            if !j.pass {
                self.failures.push(match j.value {
                    Some(_) => format!(
                        "threshold {} failed: the run had {}",
                        md_code(&j.expr),
                        md_text(&value)
                    ),
                    None => format!(
                        "threshold {} failed: the run has no {}",
                        md_code(&j.expr),
                        md_text(&j.field)
                    ),
                });
            }
            self.thresholds.push(ThresholdRow {
                expr: j.expr.clone(),
                field: j.field.clone(),
                limit: format!("{} {}", op_text(j.op), show(j.limit)),
                value,
                pass: j.pass,
            });
        }
        self
    }

    pub fn pass(&self) -> bool {
        self.failures.is_empty()
    }

    /// The summary as GitHub-flavoured Markdown: fit for a file, a pull request comment or
    /// `>> "$GITHUB_STEP_SUMMARY"`.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        o.push_str(&self.verdict_line());
        o.push_str("\n\n");
        if !self.rows.is_empty() {
            o.push_str("| | this run |\n|:---|:---|\n");
            for (label, value) in &self.rows {
                o.push_str(&format!("| {} | {} |\n", md_text(label), md_text(value)));
            }
            o.push('\n');
        }
        if !self.thresholds.is_empty() {
            o.push_str("| threshold | limit | this run | |\n|:---|:---|:---|:---|\n");
            for t in &self.thresholds {
                o.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    md_code(&t.field),
                    md_text(&t.limit),
                    md_text(&t.value),
                    if t.pass { "✅ pass" } else { "❌ fail" }
                ));
            }
            o.push('\n');
        }
        if let Some((label, line)) = &self.health {
            o.push_str(&format!("**{}:** {}\n\n", md_text(label), md_text(line)));
        }
        for n in &self.notes {
            o.push_str(&format!("> {}\n\n", md_text(n)));
        }
        let cut = self.failures.len() > REASONS_IN_VERDICT
            || self
                .failures
                .iter()
                .any(|f| f.chars().count() > REASON_CHARS);
        if cut {
            o.push_str("**Why, in full:**\n\n");
            for f in self.failures.iter().take(REASONS_LISTED) {
                o.push_str(&format!("- {}\n", cut_chars(f, FULL_REASON_CHARS)));
            }
            if self.failures.len() > REASONS_LISTED {
                o.push_str(&format!(
                    "- and {} more (the JSON report has them all)\n",
                    fmt_int((self.failures.len() - REASONS_LISTED) as u64)
                ));
            }
            o.push('\n');
        }
        o
    }

    /// `### ❌ FAIL: tool — why` or `### ✅ PASS: tool — what`: one line.
    fn verdict_line(&self) -> String {
        let tool = md_code(&self.tool);
        if self.failures.is_empty() {
            let mut what: Vec<String> = self.passed.iter().map(|p| md_text(p)).collect();
            if !self.thresholds.is_empty() {
                what.push(match self.thresholds.len() {
                    1 => "its threshold passed".to_string(),
                    n => format!("all {n} thresholds passed"),
                });
            }
            return if what.is_empty() {
                format!("### ✅ PASS: {tool}")
            } else {
                format!("### ✅ PASS: {tool} — {}", what.join("; "))
            };
        }
        let mut why: Vec<String> = self
            .failures
            .iter()
            .take(REASONS_IN_VERDICT)
            .map(|f| cut_chars(f, REASON_CHARS))
            .collect();
        if self.failures.len() > REASONS_IN_VERDICT {
            why.push(format!(
                "and {} more",
                fmt_int((self.failures.len() - REASONS_IN_VERDICT) as u64)
            ));
        }
        format!("### ❌ FAIL: {tool} — {}", why.join("; "))
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Lt => "<",
        Op::Le => "<=",
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Eq => "==",
        Op::Ne => "!=",
    }
}

/// `s` cut to at most `max` characters, with `…` when cut.
fn cut_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => {
            // Do not leave a backslash escape or a code span open at the cut.
            let mut kept = s[..at].trim_end_matches('\\').to_string();
            if kept.matches('`').count() % 2 == 1 {
                kept.push('`');
            }
            kept.push('…');
            kept
        }
    }
}

/// Plain text as Markdown: control characters and line breaks escaped, every character
/// Markdown or a table gives a meaning backslash-escaped, `<`, `>` and `&` as entities.
pub fn md_text(s: &str) -> String {
    let s = out::escape(s);
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            // What gives text a meaning in GFM anywhere in a line; `(` and `!` only do next
            // to `[`/`]`, which are escaped.
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '|' | '~' => {
                o.push('\\');
                o.push(c);
            }
            c => o.push(c),
        }
    }
    o
}

/// `s` as a code span, when it can be one; else as escaped text.
fn md_code(s: &str) -> String {
    let s = out::escape(s);
    if s.is_empty() || s.contains(['`', '|']) {
        md_text(&s)
    } else {
        format!("`{s}`")
    }
}

/// A latency in microseconds, in milliseconds (seconds from 1 s): `0.412 ms`, `2.35 ms`,
/// `123.4 ms`, `1.25 s`.
pub fn fmt_ms(us: f64) -> String {
    let ms = us / 1e3;
    if ms < 1.0 {
        format!("{} ms", trim_zeros(format!("{ms:.3}")))
    } else if ms < 10.0 {
        format!("{} ms", trim_zeros(format!("{ms:.2}")))
    } else if ms < 1_000.0 {
        format!("{} ms", trim_zeros(format!("{ms:.1}")))
    } else if ms < 100_000.0 {
        format!("{} s", trim_zeros(format!("{:.2}", ms / 1e3)))
    } else {
        format!("{} s", fmt_int((ms / 1e3).round() as u64))
    }
}

/// `2.30` -> `2.3`, `1.00` -> `1`.
fn trim_zeros(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Seconds for people: `0.250 s`, `12.3 s`, `3,600 s`.
pub fn fmt_secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.3} s")
    } else if s < 1_000.0 {
        format!("{s:.1} s")
    } else {
        format!("{} s", fmt_int(s.round() as u64))
    }
}

/// A count for people, whole or with three decimals.
fn fmt_number(v: f64) -> String {
    let plain = (0.0..1e15).contains(&v);
    if plain && v.fract() == 0.0 {
        fmt_int(v as u64)
    } else if plain {
        fmt_rate(v)
    } else {
        format!("{v}")
    }
}

/// `v`, a value in the report's unit, as people read it: latencies in ms, rates with their
/// unit, percentages with `%`.
pub fn fmt_in_unit(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Micros => fmt_ms(v),
        Unit::Seconds => fmt_secs(v),
        Unit::Number => fmt_number(v),
        Unit::Percent => format!("{v:.2}%"),
        Unit::Named(u) => format!("{} {u}", fmt_number(v)),
    }
}

/// `p50 0.412 ms · p90 … · p99 … · p99.9 … · max …`.
pub fn fmt_percentiles_ms(p: &Percentiles) -> String {
    format!(
        "p50 {} · p90 {} · p99 {} · p99.9 {} · max {}",
        fmt_ms(p.p50 as f64),
        fmt_ms(p.p90 as f64),
        fmt_ms(p.p99 as f64),
        fmt_ms(p.p999 as f64),
        fmt_ms(p.max as f64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threshold::{judge, parse_all};
    use serde_json::json;

    fn fields() -> Fields {
        Fields::default()
            .numbers(&["point_rate"], Unit::Named("points/s"))
            .numbers(&["points_failed"], Unit::Number)
            .latency("ack_latency", "/latency_us")
    }

    fn judged(exprs: &[&str], report: serde_json::Value) -> Vec<Judged> {
        let exprs: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
        judge(&parse_all(&exprs, &fields()).unwrap(), &report)
    }

    #[test]
    fn a_failed_threshold_leads_the_summary_with_its_limit_and_value_in_ms() {
        let j = judged(
            &["ack_latency_p99<1ms", "point_rate>=9.9k"],
            json!({"latency_us": {"p99": 2345}, "point_rate": 10000.0}),
        );
        let mut s = Summary::new("loadgen pub");
        s.passed("10,000 points sent and acknowledged")
            .row("rate", "10,000 points/s")
            .thresholds(&j, &fields());
        let md = s.markdown();
        assert!(!s.pass());
        let first = md.lines().next().unwrap();
        assert_eq!(
            first,
            "### ❌ FAIL: `loadgen pub` — threshold `ack_latency_p99<1ms` failed: the run had 2.35 ms"
        );
        assert!(
            md.contains("| `ack_latency_p99` | &lt; 1 ms | 2.35 ms | ❌ fail |"),
            "{md}"
        );
        assert!(
            md.contains("| `point_rate` | &gt;= 9,900 points/s | 10,000 points/s | ✅ pass |"),
            "{md}"
        );
        assert!(!md.contains("2345"), "no raw µs: {md}");
    }

    #[test]
    fn a_passing_run_says_what_passed() {
        let j = judged(&["points_failed==0"], json!({"points_failed": 0}));
        let mut s = Summary::new("loadgen pub");
        s.passed("1,000 points sent and acknowledged")
            .thresholds(&j, &fields());
        assert!(s.pass());
        assert!(s.markdown().starts_with(
            "### ✅ PASS: `loadgen pub` — 1,000 points sent and acknowledged; its threshold passed\n"
        ));
    }

    #[test]
    fn text_from_outside_cannot_break_the_table_or_the_verdict() {
        let mut s = Summary::new("backend-sub");
        s.fail("missing 3 points on dev|1\n### forged <b>x</b>")
            .row("topic", "a|b*c_d`e");
        let md = s.markdown();
        let first = md.lines().next().unwrap();
        assert!(
            first.contains("dev\\|1\\\\n\\#\\#\\# forged &lt;b&gt;x&lt;/b&gt;"),
            "{first}"
        );
        assert!(md.contains("| topic | a\\|b\\*c\\_d\\`e |"), "{md}");
    }

    #[test]
    fn many_or_long_reasons_are_cut_in_the_verdict_and_listed_below() {
        let mut s = Summary::new("loadgen pub");
        for i in 0..5 {
            s.fail(&format!("problem {i} {}", "x".repeat(500)));
        }
        let md = s.markdown();
        let first = md.lines().next().unwrap();
        assert!(first.chars().count() < 1_000, "{first}");
        assert!(first.ends_with("; and 2 more"), "{first}");
        assert!(md.contains("**Why, in full:**"), "{md}");
        assert!(md.contains("- problem 4 "), "{md}");
    }

    #[test]
    fn latencies_read_in_milliseconds() {
        assert_eq!(fmt_ms(412.0), "0.412 ms");
        assert_eq!(fmt_ms(2_345.0), "2.35 ms");
        assert_eq!(fmt_ms(123_400.0), "123.4 ms");
        assert_eq!(fmt_ms(1_250_000.0), "1.25 s");
        assert_eq!(fmt_ms(5_000.0), "5 ms");
        assert_eq!(
            fmt_in_unit(9_900.0, Unit::Named("points/s")),
            "9,900 points/s"
        );
        assert_eq!(fmt_in_unit(99.5, Unit::Percent), "99.50%");
    }
}
