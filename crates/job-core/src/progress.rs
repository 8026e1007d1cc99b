//! `job-pub run`'s progress on stderr: a line a second while it publishes, and while it
//! waits for jobs due later, what it waits for ("waiting: 1,200 jobs due, the next in 4.2 s
//! (at 12:00:05 UTC)"); both with the time left when `--duration` or `--until-empty`'s
//! horizon bound the run.
//!
//! On a terminal one live line (indicatif, redrawn in place); else plain lines, a waiting
//! one every [`PLAIN_WAITING_EVERY`] (a scheduled run may wait for an hour). The waiting
//! line's figures cost a count in the database: asked only when a line is shown, at most
//! once a second, never under `--quiet`.

use std::time::{Duration, Instant, SystemTime};

use mqtt_tool::format::fmt_int;

use crate::db::Waiting;
use crate::run::Counts;
use crate::stop::Left;

/// A line at most this often (and so the waiting count).
const EVERY: Duration = Duration::from_secs(1);

/// Plain lines (stderr not a terminal) while the run waits: one when it starts waiting, then
/// one this often.
pub const PLAIN_WAITING_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Option<Instant>,
    /// The last line shown was a waiting one.
    waiting: bool,
    last_acked: u64,
}

impl Progress {
    /// The progress of a run started at `started`; none with `--quiet`.
    pub fn new(quiet: bool, started: Instant) -> Option<Progress> {
        if quiet {
            return None;
        }
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            {
                bar.set_style(style);
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Some(Progress {
            bar,
            started,
            last_line: None,
            waiting: false,
            last_acked: 0,
        })
    }

    fn since_last(&self, now: Instant) -> Duration {
        self.last_line
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t))
    }

    fn show(&mut self, now: Instant, line: String, waiting: bool) {
        match &self.bar {
            Some(b) => b.set_message(line),
            None => mqtt_tool::errln!(
                "[{:>6.1}s] {line}",
                now.saturating_duration_since(self.started).as_secs_f64()
            ),
        }
        self.last_line = Some(now);
        self.waiting = waiting;
    }

    /// After a batch: the counts so far, at most once a second.
    pub fn working(&mut self, now: Instant, n: &Counts, left: Option<Left>) {
        let since = self.since_last(now);
        if since < EVERY {
            return;
        }
        // The rate since the last line (the first: since the start).
        let dt = since
            .min(now.saturating_duration_since(self.started))
            .as_secs_f64();
        let mut line = format!(
            "{} jobs acknowledged ({} jobs/s), {} claimed, {} failed, {} late",
            fmt_int(n.acked),
            fmt_int(((n.acked - self.last_acked.min(n.acked)) as f64 / dt.max(1e-3)) as u64),
            fmt_int(n.claimed),
            fmt_int(n.failed),
            fmt_int(n.late)
        );
        push_left(&mut line, left);
        self.last_acked = n.acked;
        self.show(now, line, false);
    }

    /// Whether a waiting line is due at `now` (and with it the count it shows).
    pub fn wait_due(&self, now: Instant) -> bool {
        let every = if self.bar.is_none() && self.waiting {
            PLAIN_WAITING_EVERY
        } else {
            EVERY
        };
        self.since_last(now) >= every
    }

    /// While no job is due: what the run waits for.
    pub fn waiting(&mut self, now: Instant, w: &Waiting, bounded: bool, left: Option<Left>) {
        let line = waiting_line(w, bounded, left);
        self.show(now, line, true);
    }

    /// The waiting figures could not be read at `now`: asked again when the next line is due,
    /// not at every poll.
    pub fn waiting_unknown(&mut self, now: Instant) {
        self.last_line = Some(now);
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

fn push_left(line: &mut String, left: Option<Left>) {
    if let Some(l) = left {
        line.push_str(&format!("; {} left of {}", fmt_span(l.time), l.of));
    }
}

/// The waiting line: the jobs due later and the next one's time, those due but leased,
/// and the time left (`bounded`: only jobs due within the run's bound were counted).
pub fn waiting_line(w: &Waiting, bounded: bool, left: Option<Left>) -> String {
    let mut parts = Vec::new();
    let more = if w.more { "+" } else { "" };
    if let Some(next) = w.next.filter(|_| w.later > 0) {
        let dt = next.duration_since(w.now).unwrap_or_default();
        let at = clock(next, dt);
        parts.push(match w.later {
            1 => format!("1 job due, in {} (at {at})", fmt_span(dt)),
            k => format!(
                "{}{more} jobs due, the next in {} (at {at})",
                fmt_int(k),
                fmt_span(dt)
            ),
        });
    }
    if w.leased > 0 {
        parts.push(format!(
            "{}{} due now but leased (to another instance, or not acknowledged here: claimed again when the lease runs out)",
            fmt_int(w.leased),
            if w.later == 0 { more } else { "" }
        ));
    }
    if parts.is_empty() {
        parts.push(
            if bounded {
                "no job due within the run's bound"
            } else {
                "no job due"
            }
            .to_string(),
        );
    }
    let mut line = format!("waiting: {}", parts.join(", "));
    push_left(&mut line, left);
    line
}

/// `t` (`dt` from now) as a reader's clock shows it, in UTC: the time of day, with the date
/// when it is not within the next 12 hours.
fn clock(t: SystemTime, dt: Duration) -> String {
    // humantime's Display fails (a panic in `to_string`) past year 9999: a fire_at of
    // 'infinity' or the year 20000 is a value a table can hold.
    const LAST_SHOWN: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    if t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(true, |d| d > LAST_SHOWN)
    {
        return "after 9999-12-31".to_string();
    }
    let full = humantime::format_rfc3339_seconds(t).to_string();
    match full.get(11..19) {
        Some(time) if dt < Duration::from_secs(12 * 3600) => format!("{time} UTC"),
        _ => full,
    }
}

/// A span of time for people: `4.2 s`, `3 min 05 s`, `2 h 10 min`.
pub fn fmt_span(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{:.1} s", d.as_secs_f64())
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, s % 3600 / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_796_126_400; // 2026-12-01T12:00:00Z

    fn at(secs_after: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_secs_f64(secs_after)
    }

    #[test]
    fn a_next_job_past_the_year_9999_is_shown_not_a_panic() {
        // fire_at 'infinity' or in the year 20000: values a timestamptz column holds.
        let w = Waiting {
            now: at(0.0),
            later: 1,
            leased: 0,
            next: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(600_000_000_000)),
            more: false,
        };
        let line = waiting_line(&w, true, None);
        assert!(line.contains("after 9999-12-31"), "{line}");
    }

    #[test]
    fn the_waiting_line_names_the_jobs_due_the_next_fire_and_the_time_left() {
        let w = Waiting {
            now: at(0.0),
            later: 1200,
            leased: 0,
            next: Some(at(4.2)),
            more: false,
        };
        let left = Left {
            time: Duration::from_millis(25_800),
            of: "the horizon",
        };
        assert_eq!(
            waiting_line(&w, true, Some(left)),
            "waiting: 1,200 jobs due, the next in 4.2 s (at 12:00:04 UTC); 25.8 s left of the horizon"
        );
        let one = Waiting { later: 1, ..w };
        assert_eq!(
            waiting_line(&one, false, None),
            "waiting: 1 job due, in 4.2 s (at 12:00:04 UTC)"
        );
    }

    #[test]
    fn a_capped_count_jobs_leased_and_nothing_due_are_said_as_such() {
        let w = Waiting {
            now: at(0.0),
            later: crate::db::WAITING_COUNTED,
            leased: 0,
            next: Some(at(3.0 * 86400.0)),
            more: true,
        };
        assert_eq!(
            waiting_line(&w, false, None),
            "waiting: 100,000+ jobs due, the next in 72 h 00 min (at 2026-12-04T12:00:00Z)"
        );
        let leased = Waiting {
            later: 0,
            leased: 3,
            next: None,
            more: false,
            ..w
        };
        let line = waiting_line(&leased, true, None);
        assert!(line.starts_with("waiting: 3 due now but leased"), "{line}");
        let none = Waiting {
            leased: 0,
            ..leased
        };
        let left = Left {
            time: Duration::from_secs(75),
            of: "--duration",
        };
        assert_eq!(
            waiting_line(&none, false, Some(left)),
            "waiting: no job due; 1 min 15 s left of --duration"
        );
    }

    #[test]
    fn plain_waiting_lines_come_at_once_then_every_ten_seconds() {
        let t0 = Instant::now();
        let mut p = Progress {
            bar: None,
            started: t0,
            last_line: None,
            waiting: false,
            last_acked: 0,
        };
        assert!(p.wait_due(t0), "the first line at once");
        p.last_line = Some(t0);
        assert!(!p.wait_due(t0 + Duration::from_millis(999)));
        assert!(p.wait_due(t0 + EVERY), "after a working line: a second");
        p.waiting = true;
        assert!(!p.wait_due(t0 + Duration::from_secs(9)));
        assert!(p.wait_due(t0 + PLAIN_WAITING_EVERY));
    }
}
