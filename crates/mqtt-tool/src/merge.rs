//! What both kinds of `loadgen merge` share (publisher shards, backend-sub members): counts
//! added without wrapping, a report's own figures checked before they are trusted, ranges
//! of indexes for people, and the windows that tell one run's reports from another's.
//!
//! A report comes from outside: every figure it adds to the merge goes through [`Adding`]
//! (a sum past 2^64 - 1 is a usage error naming the field and the reports), and every rule
//! a report of our tools keeps (parts add up to totals, a histogram counts what it
//! describes) is checked with [`Check`] before the report is added.
//!
//! Every report's [`ReportHeader`] is merged here: its schema and window checked, its
//! pushes added, the merged window set and the thresholds left to be judged again.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::format::fmt_int;
use crate::frame::{rfc3339, ReportHeader};
use crate::hist::Window;

/// Names of reports an error lists before it says how many more.
const NAMES_SHOWN: usize = 3;

/// `a.json, b.json, c.json and 7 more`.
pub fn fmt_names(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(String::as_str).collect();
    let more = names.len() - shown.len();
    if more > 0 {
        format!("{} and {} more", shown.join(", "), fmt_int(more as u64))
    } else {
        shown.join(", ")
    }
}

/// One report's figures being added into the sums of the reports `before` it.
pub struct Adding<'a> {
    pub report: &'a str,
    pub before: &'a [String],
}

impl Adding<'_> {
    fn overflow(&self, field: &str) -> Error {
        Error::usage(format!(
            "{field} of {} added to that of {} is more than {}: these reports do not add up \
             (edited or damaged?); leave out the one that is wrong or rerun it",
            self.report,
            if self.before.is_empty() {
                "the reports before it".to_string()
            } else {
                fmt_names(self.before)
            },
            fmt_int(u64::MAX)
        ))
    }

    /// `into += v`, refusing a sum past 2^64 - 1.
    pub fn count(&self, field: &str, into: &mut u64, v: u64) -> Result<(), Error> {
        *into = into.checked_add(v).ok_or_else(|| self.overflow(field))?;
        Ok(())
    }

    /// A count only some reports have (`points_acked` at QoS 1): the sum when all have it.
    pub fn opt(&self, field: &str, into: &mut Option<u64>, v: Option<u64>) -> Result<(), Error> {
        *into = match (*into, v) {
            (Some(a), Some(b)) => Some(a.checked_add(b).ok_or_else(|| self.overflow(field))?),
            _ => None,
        };
        Ok(())
    }

    /// Seconds (or any non-negative measure) added; the sum must stay finite.
    pub fn secs(&self, field: &str, into: &mut f64, v: f64) -> Result<(), Error> {
        let sum = *into + v;
        if !sum.is_finite() {
            return Err(self.overflow(field));
        }
        *into = sum;
        Ok(())
    }

    /// Counts by reason added, reason by reason.
    pub fn by_reason(
        &self,
        field: &str,
        into: &mut BTreeMap<String, u64>,
        from: &BTreeMap<String, u64>,
    ) -> Result<(), Error> {
        for (k, v) in from {
            self.count(field, into.entry(k.clone()).or_default(), *v)?;
        }
        Ok(())
    }
}

/// The checks of one report's own figures, before any of them is trusted: each failure is
/// a usage error that names the report and the figure.
pub struct Check<'a> {
    pub report: &'a str,
}

impl Check<'_> {
    /// The error for `what`, a rule of the report's figures that does not hold.
    pub fn fails(&self, what: impl fmt::Display) -> Error {
        Error::usage(format!(
            "{}: {what}; its figures do not add up, so it cannot be merged (edited or damaged? \
             leave it out or rerun it)",
            self.report
        ))
    }

    /// Requires `holds`, else fails with `what`.
    pub fn that(&self, holds: bool, what: impl FnOnce() -> String) -> Result<(), Error> {
        if holds {
            Ok(())
        } else {
            Err(self.fails(what()))
        }
    }

    /// The sum of the report's own `field` over its parts, which must not pass 2^64 - 1.
    pub fn sum(&self, field: &str, parts: impl IntoIterator<Item = u64>) -> Result<u64, Error> {
        parts.into_iter().try_fold(0u64, |a, v| {
            a.checked_add(v).ok_or_else(|| {
                self.fails(format!(
                    "its {field} add up to more than {}",
                    fmt_int(u64::MAX)
                ))
            })
        })
    }

    /// A time the report writes (RFC 3339).
    pub fn time(&self, field: &str, t: &Option<String>) -> Result<Option<SystemTime>, Error> {
        t.as_deref()
            .map(|t| {
                humantime::parse_rfc3339_weak(t).map_err(|e| {
                    self.fails(format!(
                        "{field} '{}' is not a time ({e})",
                        crate::out::escape(t)
                    ))
                })
            })
            .transpose()
    }

    /// The count of the encoded histogram `name` (decoded within the bounds of
    /// [`crate::hist::decode`]), or 0 without one; with the histogram itself.
    pub fn histogram(
        &self,
        name: &str,
        text: &Option<String>,
    ) -> Result<Option<hdrhistogram::Histogram<u64>>, Error> {
        text.as_deref()
            .map(|t| {
                crate::hist::decode(t).map_err(|e| {
                    Error::usage(format!(
                        "{}: its {name} histogram cannot be read: {e}; leave the report out or rerun it",
                        self.report
                    ))
                })
            })
            .transpose()
    }
}

impl ReportHeader {
    /// Refuses the report `name` unless it is of schema `expected`: `kind` names the tool's
    /// reports in the error ("backend " or nothing).
    pub fn check_schema(&self, name: &str, kind: &str, expected: u32) -> Result<(), Error> {
        if self.schema_version != expected {
            return Err(Error::usage(format!(
                "{name} is a {kind}report of schema {}; merging needs schema {expected}: rerun it with this version",
                self.schema_version
            )));
        }
        Ok(())
    }

    /// The report's window, checked: both ends times, the end not before the start.
    pub fn window(&self, c: &Check) -> Result<(Option<SystemTime>, Option<SystemTime>), Error> {
        let start = c.time("started_at", &self.started_at)?;
        let end = c.time("ended_at", &self.ended_at)?;
        if let (Some(s), Some(e)) = (start, end) {
            c.that(s <= e, || "ended_at is before started_at".into())?;
        }
        Ok((start, end))
    }

    /// Adds the header of a further report `r` into this one, the first report's.
    pub fn add(&mut self, r: &ReportHeader, add: &Adding) -> Result<(), Error> {
        add.count("metrics_pushes", &mut self.metrics_pushes, r.metrics_pushes)?;
        add.count(
            "metrics_push_failures",
            &mut self.metrics_push_failures,
            r.metrics_push_failures,
        )
    }

    /// The merged header: the window of every report, no thresholds (the merge judges its
    /// own on the merged figures).
    pub fn merged(&mut self, w: &Window) {
        self.started_at = w.start.map(rfc3339);
        self.ended_at = w.end.map(rfc3339);
        self.thresholds = Vec::new();
    }
}

/// Adds `h` into the running sum `into`.
pub fn add_histogram(
    into: &mut Option<hdrhistogram::Histogram<u64>>,
    h: Option<hdrhistogram::Histogram<u64>>,
) -> Result<(), Error> {
    let Some(h) = h else { return Ok(()) };
    match into {
        None => *into = Some(h),
        Some(acc) => crate::hist::add(acc, &h)
            .map_err(|e| Error::Other(format!("cannot add histograms: {e}")))?,
    }
    Ok(())
}

/// An inclusive range of indexes (shards), written `3-99` or `5`; JSON: that string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRange(pub u64, pub u64);

impl IndexRange {
    pub fn len(&self) -> u64 {
        // At most 2^64 - 1 with start 0 and end u64::MAX - 1: merge bounds its indexes.
        (self.1 - self.0).saturating_add(1)
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for IndexRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

impl Serialize for IndexRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IndexRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<IndexRange, D::Error> {
        let t = String::deserialize(d)?;
        let bad = || serde::de::Error::custom(format!("'{t}' is not a range like 3-99 or 5"));
        let (a, b) = t.split_once('-').unwrap_or((&t, &t));
        match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) if a <= b => Ok(IndexRange(a, b)),
            _ => Err(bad()),
        }
    }
}

/// The ranges of sorted, distinct `indexes`.
pub fn ranges_of(indexes: impl IntoIterator<Item = u64>) -> Vec<IndexRange> {
    let mut out: Vec<IndexRange> = Vec::new();
    for i in indexes {
        match out.last_mut() {
            Some(r) if r.1.checked_add(1) == Some(i) => r.1 = i,
            _ => out.push(IndexRange(i, i)),
        }
    }
    out
}

/// The ranges of `0..n` that are not among the sorted, distinct `present`: as long as the
/// list of what is present, never as long as `n`.
pub fn missing_of(n: u64, present: impl IntoIterator<Item = u64>) -> Vec<IndexRange> {
    let mut out = Vec::new();
    let mut next = 0u64;
    for p in present {
        if p >= n {
            break;
        }
        if p > next {
            out.push(IndexRange(next, p - 1));
        }
        next = p + 1;
    }
    if next < n {
        out.push(IndexRange(next, n - 1));
    }
    out
}

/// Ranges a line names before it says how many more.
const RANGES_SHOWN: usize = 10;

/// `0, 2, 4-9 and 495 more ranges` (or `none`): a list for a line of text, however long.
pub fn fmt_ranges(ranges: &[IndexRange]) -> String {
    if ranges.is_empty() {
        return "none".into();
    }
    let shown: Vec<String> = ranges
        .iter()
        .take(RANGES_SHOWN)
        .map(|r| r.to_string())
        .collect();
    let more = ranges.len() - shown.len();
    if more > 0 {
        format!(
            "{} and {} more ranges",
            shown.join(", "),
            fmt_int(more as u64)
        )
    } else {
        shown.join(", ")
    }
}

/// The windows of the reports of a merge (first to last message of each), which must be
/// of one run: no report may start more than the largest gap after every earlier one ended.
#[derive(Debug, Default)]
pub struct Windows {
    spans: Vec<(SystemTime, SystemTime, String)>,
    starts: Vec<SystemTime>,
    ends: Vec<SystemTime>,
}

impl Windows {
    /// Adds the window of `report` (either end may be missing: it sent nothing).
    pub fn add(&mut self, report: &str, start: Option<SystemTime>, end: Option<SystemTime>) {
        self.starts.extend(start);
        self.ends.extend(end);
        if let (Some(s), Some(e)) = (start, end) {
            self.spans.push((s, e.max(s), report.to_string()));
        }
    }

    /// From the earliest start to the latest end.
    pub fn window(&self) -> Window {
        Window::of(self.starts.clone(), self.ends.clone())
    }

    /// Refuses reports whose windows leave a gap longer than `max_gap`: while none of them
    /// ran, the run was over, and the next is of another run (a report left from an earlier
    /// run in the directory). A slow shard overlaps the others and is kept.
    pub fn check_one_run(&mut self, max_gap: Duration) -> Result<(), Error> {
        self.spans.sort();
        let mut reach: Option<(SystemTime, &str)> = None;
        for (s, e, name) in &self.spans {
            if let Some((until, last)) = reach {
                if let Ok(gap) = s.duration_since(until) {
                    if gap > max_gap {
                        return Err(Error::usage(format!(
                            "{name} started {} after {last} and every report before it had ended: \
                             these are reports of different runs; give the reports of one run \
                             (or --max-gap {} if its reports really are this far apart)",
                            fmt_gap(gap),
                            fmt_gap(Duration::from_secs(gap.as_secs() + 1)),
                        )));
                    }
                }
                if *e > until {
                    reach = Some((*e, name));
                }
            } else {
                reach = Some((*e, name));
            }
        }
        Ok(())
    }
}

/// A gap for people: `6h 0m 12s`, or `412ms` under ten seconds.
fn fmt_gap(d: Duration) -> String {
    let d = if d < Duration::from_secs(10) {
        Duration::from_millis(d.as_millis() as u64)
    } else {
        Duration::from_secs(d.as_secs())
    };
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_indexes_are_ranges_as_long_as_what_is_present() {
        assert_eq!(missing_of(100_000, [0]), [IndexRange(1, 99_999)]);
        assert_eq!(
            missing_of(10, [1, 2, 5, 9]),
            [IndexRange(0, 0), IndexRange(3, 4), IndexRange(6, 8)]
        );
        assert_eq!(missing_of(3, [0, 1, 2]), []);
        assert_eq!(missing_of(u64::MAX, []), [IndexRange(0, u64::MAX - 1)]);
        assert_eq!(
            ranges_of([0, 1, 2, 4]),
            [IndexRange(0, 2), IndexRange(4, 4)]
        );
        let many = missing_of(1000, (1..1000).step_by(2));
        assert_eq!(many.len(), 500);
        let line = fmt_ranges(&many);
        assert!(line.starts_with("0, 2, 4,"), "{line}");
        assert!(line.ends_with("and 490 more ranges"), "{line}");
        assert_eq!(
            serde_json::to_string(&[IndexRange(1, 99_999), IndexRange(5, 5)]).unwrap(),
            r#"["1-99999","5"]"#
        );
    }

    #[test]
    fn sums_that_pass_two_to_the_64_are_usage_errors_naming_field_and_reports() {
        let before = ["a.json".to_string()];
        let add = Adding {
            report: "b.json",
            before: &before,
        };
        let mut n = 1u64 << 63;
        let e = add.count("duplicate_acks", &mut n, 1 << 63).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = e.to_string();
        assert!(
            e.contains("duplicate_acks of b.json added to that of a.json"),
            "{e}"
        );
        let mut s = f64::MAX;
        assert!(add.secs("cpu_s", &mut s, f64::MAX).is_err());
        let mut o = Some(1);
        add.opt("points_acked", &mut o, None).unwrap();
        assert_eq!(o, None);
    }

    #[test]
    fn windows_of_one_run_overlap_or_nearly() {
        let t = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s);
        let mut w = Windows::default();
        w.add("a", Some(t(0)), Some(t(60)));
        w.add("slow", Some(t(1)), Some(t(660)));
        w.add("late starter", Some(t(600)), Some(t(640)));
        w.add("nothing sent", None, None);
        w.check_one_run(Duration::from_secs(60)).unwrap();
        assert_eq!(w.window().elapsed_s(), 660.0);
        w.add("next run", Some(t(6 * 3600)), Some(t(6 * 3600 + 60)));
        let e = w
            .check_one_run(Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(e.contains("next run started 5h 49m after slow"), "{e}");
        assert!(e.contains("different runs"), "{e}");
        w.check_one_run(Duration::from_secs(7 * 3600)).unwrap();
    }
}
