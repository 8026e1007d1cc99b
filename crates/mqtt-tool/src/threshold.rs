//! Thresholds over a report's own fields, as CI pipelines use them (k6's convention): each
//! `--threshold` is `FIELD OP VALUE` (`ack_latency_p99<5ms`, `point_rate>=9900`,
//! `points_failed==0`), judged after the run against the report's JSON; any failure makes
//! the run exit 99 once the whole report is written.
//!
//! A tool names its fields in a [`Fields`] table (name, JSON pointer into its report, unit);
//! the same table judges a merged report, which has the same shape.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// What a field's value measures, and so which units its limit takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A latency in the report in microseconds; limits take a time unit (`5ms`, `200us`).
    Micros,
    /// A time in the report in seconds; limits take a time unit (`30s`, `1m`).
    Seconds,
    /// A count; limits take `k`, `M`, `G` (`9.9k`).
    Number,
    /// A number in a named unit (`points/s`, `MB`), shown with it; limits take `k`, `M`,
    /// `G` like a count.
    Named(&'static str),
    /// A percentage; limits may end in `%`.
    Percent,
}

/// One field thresholds may name.
#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    /// JSON pointer into the report (`/latency_us/p99`).
    pub pointer: String,
    pub unit: Unit,
}

/// The fields of one kind of report.
#[derive(Debug, Clone, Default)]
pub struct Fields(pub Vec<Field>);

/// The percentiles a latency field offers, with the report key each reads.
const PERCENTILES: [&str; 7] = ["min", "p50", "p90", "p99", "p999", "max", "mean"];

impl Fields {
    /// A plain field at the report's top level (or at `pointer`).
    pub fn field(mut self, name: &str, pointer: &str, unit: Unit) -> Self {
        self.0.push(Field {
            name: name.to_string(),
            pointer: pointer.to_string(),
            unit,
        });
        self
    }

    /// Top-level numbers of the report, each under its own name.
    pub fn numbers(mut self, names: &[&str], unit: Unit) -> Self {
        for n in names {
            self = self.field(n, &format!("/{n}"), unit);
        }
        self
    }

    /// `{prefix}_min` .. `{prefix}_max` over the percentiles object at `pointer`.
    pub fn latency(mut self, prefix: &str, pointer: &str) -> Self {
        for p in PERCENTILES {
            self = self.field(
                &format!("{prefix}_{p}"),
                &format!("{pointer}/{p}"),
                Unit::Micros,
            );
        }
        self
    }

    /// The field named `name`.
    pub fn get(&self, name: &str) -> Option<&Field> {
        self.0.iter().find(|f| f.name == name)
    }

    /// The unit of field `name`, if the table has it.
    pub fn unit_of(&self, name: &str) -> Option<Unit> {
        self.get(name).map(|f| f.unit)
    }

    /// The field names for an error message, latencies folded (`ack_latency_{p50,..}`).
    pub fn names(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        for f in &self.0 {
            if f.unit == Unit::Micros {
                if let Some((prefix, p)) = f.name.rsplit_once('_') {
                    if PERCENTILES.contains(&p) {
                        let folded = format!("{prefix}_{{{}}}", PERCENTILES.join(","));
                        if !out.contains(&folded) {
                            out.push(folded);
                        }
                        continue;
                    }
                }
            }
            out.push(f.name.clone());
        }
        out.join(", ")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    fn holds(self, value: f64, limit: f64) -> bool {
        match self {
            Op::Lt => value < limit,
            Op::Le => value <= limit,
            Op::Gt => value > limit,
            Op::Ge => value >= limit,
            Op::Eq => value == limit,
            Op::Ne => value != limit,
        }
    }
}

/// A parsed threshold: its field, operator and limit in the report's unit.
#[derive(Debug, Clone)]
pub struct Threshold {
    pub expr: String,
    pub field: Field,
    pub op: Op,
    pub limit: f64,
}

/// A threshold judged: the value the run had (null: the report has none, which fails).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub expr: String,
    pub field: String,
    pub op: Op,
    /// The limit, in the unit of the report's field (µs for latencies).
    pub limit: f64,
    pub value: Option<f64>,
    pub pass: bool,
    /// The field's unit, for showing the value to people (not in the JSON: a merged
    /// report's thresholds are judged again on the merged figures).
    #[serde(skip)]
    pub unit: Option<Unit>,
}

impl Judged {
    /// `v` as people read it: in the field's unit (ms, points/s) when known.
    pub fn show(&self, v: f64) -> String {
        match self.unit {
            Some(u) => crate::summary::fmt_in_unit(v, u),
            None => fmt_value(&self.field, v),
        }
    }
}

/// Parses `expr` against `fields`; a usage error says what is wrong and names the fields.
pub fn parse(expr: &str, fields: &Fields) -> Result<Threshold, Error> {
    let e = expr.trim();
    let ops = [
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];
    let found = e
        .char_indices()
        .find_map(|(i, _)| {
            ops.iter()
                .find(|(s, _)| e[i..].starts_with(s))
                .map(|(s, op)| (i, s.len(), *op))
        })
        .ok_or_else(|| {
            Error::usage(format!(
                "--threshold '{expr}' has no comparison; write FIELD OP VALUE with OP one of < <= > >= == !=, \
                 e.g. ack_latency_p99<5ms"
            ))
        })?;
    let (at, len, op) = found;
    let name = e[..at].trim();
    let value = e[at + len..].trim();
    let field = fields.get(name).ok_or_else(|| {
        Error::usage(format!(
            "--threshold '{expr}': unknown field '{name}'; the fields are: {}",
            fields.names()
        ))
    })?;
    let limit = parse_limit(value, field.unit)
        .and_then(|l| {
            // A limit the report's JSON cannot hold (it writes infinity as null).
            if l.is_finite() {
                Ok(l)
            } else {
                Err(format!(
                    "'{value}' is too large a number; give a limit below 1e308 in the field's unit"
                ))
            }
        })
        .map_err(|why| Error::usage(format!("--threshold '{expr}': {why}")))?;
    Ok(Threshold {
        expr: e.to_string(),
        field: field.clone(),
        op,
        limit,
    })
}

/// Parses each of `exprs`.
pub fn parse_all(exprs: &[String], fields: &Fields) -> Result<Vec<Threshold>, Error> {
    exprs.iter().map(|e| parse(e, fields)).collect()
}

fn parse_limit(v: &str, unit: Unit) -> Result<f64, String> {
    // A yes/no field (`verified==true`) compares as 1 or 0.
    match (unit, v) {
        (Unit::Number, "true") => return Ok(1.0),
        (Unit::Number, "false") => return Ok(0.0),
        _ => {}
    }
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'))
        .unwrap_or(v.len());
    // `1e3` parses as a number; a unit that starts with `e` does not exist.
    let (num, suffix) = v.split_at(split);
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| format!("'{v}' is not a number"))?;
    let suffix = suffix.trim();
    match unit {
        Unit::Micros | Unit::Seconds => {
            let us = match suffix {
                "ns" => n / 1000.0,
                "us" | "µs" => n,
                "ms" => n * 1e3,
                "s" => n * 1e6,
                "m" => n * 60e6,
                "h" => n * 3600e6,
                "" => {
                    return Err(format!(
                        "give the time a unit, e.g. {num}ms or {num}s (units: ns, us, ms, s, m, h)"
                    ))
                }
                other => {
                    return Err(format!(
                        "'{other}' is not a time unit; use ns, us, ms, s, m or h"
                    ))
                }
            };
            Ok(if unit == Unit::Seconds { us / 1e6 } else { us })
        }
        Unit::Number | Unit::Named(_) => match suffix {
            "" => Ok(n),
            "k" | "K" => Ok(n * 1e3),
            "M" => Ok(n * 1e6),
            "G" => Ok(n * 1e9),
            other => Err(format!(
                "'{other}' is not a multiplier; write the number plain or with k, M or G"
            )),
        },
        Unit::Percent => match suffix {
            "" | "%" => Ok(n),
            other => Err(format!(
                "'{other}' is not allowed here; write a percentage like 99.5 or 99.5%"
            )),
        },
    }
}

/// Judges every threshold against `report` (the report's JSON).
pub fn judge(thresholds: &[Threshold], report: &serde_json::Value) -> Vec<Judged> {
    thresholds
        .iter()
        .map(|t| {
            let value = report.pointer(&t.field.pointer).and_then(|v| match v {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::Bool(b) => Some(f64::from(u8::from(*b))),
                _ => None,
            });
            Judged {
                expr: t.expr.clone(),
                field: t.field.name.clone(),
                op: t.op,
                limit: t.limit,
                value,
                pass: value.is_some_and(|v| t.op.holds(v, t.limit)),
                unit: Some(t.field.unit),
            }
        })
        .collect()
}

/// Judges `thresholds` on `report` serialized (empty without thresholds: no tree is built).
pub fn judge_report<T: Serialize>(report: &T, thresholds: &[Threshold]) -> Vec<Judged> {
    if thresholds.is_empty() {
        return Vec::new();
    }
    judge(
        thresholds,
        &serde_json::to_value(report).unwrap_or_default(),
    )
}

/// Failed thresholds the error line names; the report and the summary list them all.
const FAILURES_NAMED: usize = 5;

/// The failed thresholds, as one line for the error (none: `None`): the first few, and how
/// many more.
pub fn failures(judged: &[Judged]) -> Option<String> {
    let failed: Vec<&Judged> = judged.iter().filter(|j| !j.pass).collect();
    if failed.is_empty() {
        return None;
    }
    let named: Vec<String> = failed
        .iter()
        .take(FAILURES_NAMED)
        .map(|j| match j.value {
            Some(v) => format!("{} (was {})", j.expr, j.show(v)),
            None => format!("{} (the run has no {})", j.expr, j.field),
        })
        .collect();
    let more = failed.len() - named.len();
    Some(format!(
        "thresholds failed: {}{}",
        named.join(", "),
        if more > 0 {
            format!(
                ", and {} more (the report lists every threshold)",
                crate::format::fmt_int(more as u64)
            )
        } else {
            String::new()
        }
    ))
}

/// A value as the summary shows it: latencies in a readable unit.
pub fn fmt_value(field: &str, v: f64) -> String {
    let latency = PERCENTILES.iter().any(|p| {
        ["latency", "lag", "lateness"]
            .iter()
            .any(|kind| field.ends_with(&format!("{kind}_{p}")))
    });
    if latency {
        if v >= 1e6 {
            format!("{:.3}s", v / 1e6)
        } else if v >= 1e3 {
            format!("{:.3}ms", v / 1e3)
        } else {
            format!("{v}us")
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{:.3}", v)
    }
}

/// The summary's lines, one per threshold: `✓ ack_latency_p99<5ms  (2.104ms)`.
pub fn summary_lines(judged: &[Judged]) -> Vec<String> {
    judged
        .iter()
        .map(|j| {
            format!(
                "{} {}  ({})",
                if j.pass { "pass" } else { "FAIL" },
                j.expr,
                j.value
                    .map(|v| j.show(v))
                    .unwrap_or_else(|| "no value".into())
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> Fields {
        Fields::default()
            .numbers(&["point_rate", "points_failed"], Unit::Number)
            .numbers(&["target_pct"], Unit::Percent)
            .numbers(&["elapsed_s"], Unit::Seconds)
            .latency("ack_latency", "/latency_us")
    }

    #[test]
    fn thresholds_parse_with_units_and_judge_the_reports_fields() {
        let f = fields();
        let report = json!({
            "point_rate": 9950.5, "points_failed": 0, "target_pct": 99.5, "elapsed_s": 10.2,
            "latency_us": {"p99": 4200, "max": 80000}
        });
        let t = parse_all(
            &[
                "ack_latency_p99<5ms".into(),
                "point_rate >= 9.9k".into(),
                "points_failed==0".into(),
                "target_pct>=99%".into(),
                "elapsed_s<10s".into(),
                "ack_latency_max<=50ms".into(),
            ],
            &f,
        )
        .unwrap();
        assert_eq!(t[0].limit, 5000.0);
        assert_eq!(t[1].limit, 9900.0);
        assert_eq!(t[4].limit, 10.0);
        let j = judge(&t, &report);
        let pass: Vec<bool> = j.iter().map(|j| j.pass).collect();
        assert_eq!(pass, [true, true, true, true, false, false]);
        assert_eq!(j[5].value, Some(80000.0));
        let why = failures(&j).unwrap();
        // Values in their field's unit, as the summaries show them.
        assert!(why.contains("elapsed_s<10s (was 10.2 s)"), "{why}");
        assert!(why.contains("ack_latency_max<=50ms (was 80 ms)"), "{why}");
    }

    #[test]
    fn a_field_the_run_does_not_have_fails_its_threshold() {
        let t = parse_all(&["ack_latency_p99<5ms".into()], &fields()).unwrap();
        let j = judge(&t, &json!({"latency_us": null}));
        assert!(!j[0].pass);
        assert_eq!(j[0].value, None);
        assert!(failures(&j)
            .unwrap()
            .contains("the run has no ack_latency_p99"));
    }

    #[test]
    fn bad_thresholds_are_usage_errors_that_say_what_to_write() {
        let f = fields();
        let msg = |e: &str| {
            let err = parse(e, &f).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            err.to_string()
        };
        assert!(msg("p99 5ms").contains("has no comparison"));
        let m = msg("ack_p99<5ms");
        assert!(m.contains("unknown field 'ack_p99'"), "{m}");
        assert!(
            m.contains("ack_latency_{min,p50,p90,p99,p999,max,mean}"),
            "{m}"
        );
        assert!(m.contains("point_rate"), "{m}");
        assert!(msg("ack_latency_p99<5").contains("give the time a unit"));
        assert!(msg("ack_latency_p99<5parsecs").contains("not a time unit"));
        assert!(msg("point_rate>fast").contains("not a number"));
        assert!(msg("point_rate>5x").contains("not a multiplier"));
    }

    #[test]
    fn a_limit_that_overflows_to_infinity_is_a_usage_error() {
        let f = fields();
        for expr in [
            "point_rate>1e308k",
            "point_rate<1e306G",
            "ack_latency_p99<1e306h",
            "elapsed_s<1e306m",
        ] {
            let e = parse(expr, &f).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("too large"), "{expr}: {e}");
        }
        assert!(parse("point_rate>1e300k", &f).unwrap().limit.is_finite());
    }

    #[test]
    fn many_failed_thresholds_are_summarised_on_one_line() {
        let t: Vec<Threshold> = (1..=3000)
            .map(|i| parse(&format!("point_rate>={i}G"), &fields()).unwrap())
            .collect();
        let j = judge(&t, &json!({"point_rate": 10.0}));
        let line = failures(&j).unwrap();
        assert!(line.len() < 400, "{line}");
        assert!(line.contains("point_rate>=1G (was 10)"), "{line}");
        assert!(line.contains("and 2,995 more"), "{line}");
    }
}
