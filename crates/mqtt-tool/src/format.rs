//! Numbers for people: thousands separators, rates that do not round to zero, percentiles of
//! an HdrHistogram as reports show them.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Percentiles of a histogram in microseconds, as they appear in the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        Some(Percentiles {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        })
    }
}

/// `p50 0.312 ms  p90 ...` (all percentiles) or `p50 ...  p99 ...  max ...`: in ms (s from
/// a second), as people read latencies.
pub fn fmt_percentiles(p: &Percentiles, all: bool) -> String {
    let us = |v: u64| crate::summary::fmt_ms(v as f64);
    if all {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            us(p.p50),
            us(p.p90),
            us(p.p99),
            us(p.p999),
            us(p.max)
        )
    } else {
        format!("p50 {}  p99 {}  max {}", us(p.p50), us(p.p99), us(p.max))
    }
}

/// Rounds to three decimals, for reports.
pub fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A rate for people: whole numbers from 100 up, else enough decimals that a slow rate
/// (0.5 points/s, 0.001) does not print as 0.
pub fn fmt_rate(v: f64) -> String {
    if v >= 100.0 {
        fmt_int(v.round() as u64)
    } else if v >= 1.0 || v == 0.0 {
        format!("{v:.1}")
    } else {
        let digits = (-v.log10()).ceil().clamp(1.0, 9.0) as usize + 1;
        format!("{v:.digits$}")
    }
}

/// The time a `--duration` run has left, for progress lines: `42 s left`, `4 min 05 s
/// left`, `2 h 03 min left` (rounded up, so that it says `1 s left` until the end).
pub fn fmt_time_left(left: std::time::Duration) -> String {
    let s = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    if s >= 3600 {
        format!("{} h {:02} min left", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{} min {:02} s left", s / 60, s % 60)
    } else {
        format!("{s} s left")
    }
}

/// `1234567` -> `1,234,567`.
pub fn fmt_int(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{fmt_int, fmt_rate, fmt_time_left};
    use std::time::Duration;

    #[test]
    fn time_left_reads_in_seconds_minutes_and_hours_rounded_up() {
        assert_eq!(fmt_time_left(Duration::from_millis(41_200)), "42 s left");
        assert_eq!(fmt_time_left(Duration::from_millis(100)), "1 s left");
        assert_eq!(fmt_time_left(Duration::ZERO), "0 s left");
        assert_eq!(fmt_time_left(Duration::from_secs(245)), "4 min 05 s left");
        assert_eq!(fmt_time_left(Duration::from_secs(7_380)), "2 h 03 min left");
    }

    #[test]
    fn slow_rates_do_not_print_as_zero() {
        assert_eq!(fmt_rate(0.5), "0.50");
        assert_eq!(fmt_rate(0.001), "0.0010");
        assert_eq!(fmt_rate(2.5), "2.5");
        assert_eq!(fmt_rate(12_345.6), "12,346");
    }

    #[test]
    fn integers_get_thousands_separators() {
        assert_eq!(fmt_int(0), "0");
        assert_eq!(fmt_int(999), "999");
        assert_eq!(fmt_int(1000), "1,000");
        assert_eq!(fmt_int(1234567), "1,234,567");
    }
}
