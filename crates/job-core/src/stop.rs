//! When a `job-pub run` ends: `--until-empty`'s horizon, `--duration`'s deadline.
//!
//! Both are fixed at the run's start, on the database's clock (which `fire_at` and the
//! claims use) for what is claimed, and on this process's clock for when to stop:
//!
//! - `--until-empty` waits for every job due by the horizon's end, those inserted after the
//!   start too: `--horizon` after the start, or else the latest unprocessed `fire_at` at the
//!   start, at most `--max-horizon` after it (capped: the jobs due later are left, counted).
//!   No job due later is claimed ahead of time (one that falls due while the run lasts is
//!   published), so the run ends when none is left due by then and the last claimed batch
//!   is done.
//! - `--duration` ends the run by the clock: no job due after its end is claimed, so the
//!   batch in flight at the end is finished (its jobs are all due by then), never dropped.

use std::time::{Duration, Instant, SystemTime};

use crate::args::RunPlan;

/// Why a run ended (the report's `stopped_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// `--until-empty`: nothing left due within the horizon.
    Empty,
    /// `--duration` ran out.
    Duration,
    /// A signal.
    Signal,
    /// A failure (the database gone, the broker refusing).
    Failed,
}

impl Stopped {
    pub fn name(self) -> &'static str {
        match self {
            Stopped::Empty => "empty",
            Stopped::Duration => "duration",
            Stopped::Signal => "signal",
            Stopped::Failed => "failed",
        }
    }
}

/// The bounds of one run, fixed at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// `--until-empty`: the last fire_at the run waits for (the database's clock).
    pub horizon_end: Option<SystemTime>,
    /// The horizon was cut to `--max-horizon` (the table held jobs due later).
    pub horizon_capped: bool,
    /// The horizon's end on this process's clock.
    horizon_at: Option<Instant>,
    /// `--duration`: when the run ends, on this process's clock.
    pub deadline: Option<Instant>,
    /// `--duration`'s end on the database's clock: no job due later is claimed.
    pub deadline_db: Option<SystemTime>,
}

/// How much of the run is left, and what bounds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    pub time: Duration,
    /// `--duration` or `the horizon`.
    pub of: &'static str,
}

impl Bounds {
    /// The bounds of a run started at `started` (this process's clock) and `db_now` (the
    /// database's), when the latest unprocessed job fires at `latest`.
    pub fn new(
        p: &RunPlan,
        started: Instant,
        db_now: SystemTime,
        latest: Option<SystemTime>,
    ) -> Bounds {
        let (horizon, horizon_capped) = match (p.until_empty, p.horizon) {
            (false, _) => (None, false),
            (true, Some(h)) => (Some(h), false),
            (true, None) => {
                // Jobs already due (or none at all): the horizon is the start.
                let ahead = latest
                    .and_then(|l| l.duration_since(db_now).ok())
                    .unwrap_or_default();
                if ahead > p.max_horizon {
                    (Some(p.max_horizon), true)
                } else {
                    (Some(ahead), false)
                }
            }
        };
        Bounds {
            horizon_end: horizon.map(|h| db_now + h),
            horizon_capped,
            horizon_at: horizon.map(|h| started + h),
            deadline: p.duration.map(|d| started + d),
            deadline_db: p.duration.map(|d| db_now + d),
        }
    }

    /// What this run claims ahead of time.
    pub fn claim_bound(&self) -> crate::db::ClaimBound {
        crate::db::ClaimBound {
            horizon: self.horizon_end,
            deadline: self.deadline_db,
        }
    }

    /// The last fire_at this run waits for, the nearer of both ends (none: no bound).
    pub fn wait_until(&self) -> Option<SystemTime> {
        match (self.horizon_end, self.deadline_db) {
            (Some(h), Some(d)) => Some(h.min(d)),
            (h, d) => h.or(d),
        }
    }

    /// `--duration` has run out at `now`.
    pub fn out_of_time(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// What is left at `now` of the nearer bound (none: the run has none).
    pub fn left(&self, now: Instant) -> Option<Left> {
        let of = |at: Option<Instant>, of: &'static str| {
            at.map(|at| Left {
                time: at.saturating_duration_since(now),
                of,
            })
        };
        match (
            of(self.deadline, "--duration"),
            of(self.horizon_at, "the horizon"),
        ) {
            (Some(d), Some(h)) => Some(if h.time < d.time { h } else { d }),
            (d, h) => d.or(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Cmd, Plan};
    use clap::Parser;

    /// A run plan from job-pub's flags.
    fn plan(extra: &[&str]) -> RunPlan {
        let mut argv = vec![
            "job-pub",
            "run",
            "--database-url",
            "postgres://u@127.0.0.1:1/db",
            "--broker",
            "mqtt://127.0.0.1:1",
        ];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).unwrap();
        assert!(matches!(cli.cmd, Cmd::Run(_)));
        match Plan::from_cli(cli, false).unwrap() {
            Plan::Run(p) => *p,
            _ => unreachable!(),
        }
    }

    fn usage(extra: &[&str]) -> String {
        let mut argv = vec![
            "job-pub",
            "run",
            "--database-url",
            "postgres://u@127.0.0.1:1/db",
            "--broker",
            "mqtt://127.0.0.1:1",
        ];
        argv.extend_from_slice(extra);
        Plan::from_cli(Cli::try_parse_from(argv).unwrap(), false)
            .unwrap_err()
            .to_string()
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn until_empty_waits_up_to_the_latest_fire_at_at_the_start() {
        let (t0, db0) = (Instant::now(), SystemTime::UNIX_EPOCH + S(1_000_000));
        let b = Bounds::new(&plan(&["--until-empty"]), t0, db0, Some(db0 + S(3)));
        assert_eq!(b.horizon_end, Some(db0 + S(3)));
        assert!(!b.horizon_capped);
        assert_eq!(b.wait_until(), Some(db0 + S(3)));
        assert_eq!(
            b.claim_bound(),
            crate::db::ClaimBound {
                horizon: Some(db0 + S(3)),
                deadline: None
            }
        );
        assert_eq!(
            b.left(t0 + S(1)),
            Some(Left {
                time: S(2),
                of: "the horizon"
            })
        );
        assert!(!b.out_of_time(t0 + S(100)), "no --duration");
    }

    #[test]
    fn overdue_jobs_or_none_make_the_horizon_the_start() {
        let (t0, db0) = (Instant::now(), SystemTime::UNIX_EPOCH + S(1_000_000));
        let p = plan(&["--until-empty"]);
        for latest in [None, Some(db0 - S(60))] {
            let b = Bounds::new(&p, t0, db0, latest);
            assert_eq!((b.horizon_end, b.horizon_capped), (Some(db0), false));
        }
    }

    #[test]
    fn a_latest_job_beyond_max_horizon_caps_the_horizon() {
        let (t0, db0) = (Instant::now(), SystemTime::UNIX_EPOCH + S(1_000_000));
        let b = Bounds::new(&plan(&["--until-empty"]), t0, db0, Some(db0 + S(7200)));
        assert_eq!(
            (b.horizon_end, b.horizon_capped),
            (Some(db0 + S(3600)), true)
        );
        let p = plan(&["--until-empty", "--max-horizon", "10s"]);
        let b = Bounds::new(&p, t0, db0, Some(db0 + S(11)));
        assert_eq!((b.horizon_end, b.horizon_capped), (Some(db0 + S(10)), true));
    }

    #[test]
    fn an_explicit_horizon_counts_from_the_start_whatever_the_table_holds() {
        let (t0, db0) = (Instant::now(), SystemTime::UNIX_EPOCH + S(1_000_000));
        let p = plan(&["--until-empty", "--horizon", "5s"]);
        for latest in [None, Some(db0 + S(1)), Some(db0 + S(7200))] {
            let b = Bounds::new(&p, t0, db0, latest);
            assert_eq!((b.horizon_end, b.horizon_capped), (Some(db0 + S(5)), false));
        }
    }

    #[test]
    fn with_both_flags_the_nearer_end_bounds_claims_and_time_left() {
        let (t0, db0) = (Instant::now(), SystemTime::UNIX_EPOCH + S(1_000_000));
        let p = plan(&["--until-empty", "--duration", "2s"]);
        let b = Bounds::new(&p, t0, db0, Some(db0 + S(30)));
        assert_eq!(b.wait_until(), Some(db0 + S(2)));
        assert_eq!(b.left(t0).map(|l| l.of), Some("--duration"));
        assert!(!b.out_of_time(t0 + Duration::from_millis(1999)));
        assert!(b.out_of_time(t0 + S(2)));
        let b = Bounds::new(&p, t0, db0, Some(db0 + S(1)));
        assert_eq!(b.wait_until(), Some(db0 + S(1)));
        assert_eq!(b.left(t0).map(|l| l.of), Some("the horizon"));
    }

    #[test]
    fn a_run_without_stop_flags_has_no_bound() {
        let (t0, db0) = (Instant::now(), SystemTime::UNIX_EPOCH + S(1_000_000));
        let b = Bounds::new(&plan(&[]), t0, db0, Some(db0 + S(30)));
        assert_eq!(
            (b.horizon_end, b.wait_until(), b.left(t0)),
            (None, None, None)
        );
        let b = Bounds::new(&plan(&["--duration", "1m"]), t0, db0, None);
        assert_eq!(b.wait_until(), Some(db0 + S(60)));
        assert_eq!(b.horizon_end, None);
    }

    #[test]
    fn a_horizon_without_until_empty_or_beyond_the_cap_is_a_usage_error() {
        let e = usage(&["--horizon", "5s"]);
        assert!(e.contains("add --until-empty"), "{e}");
        let e = usage(&["--until-empty", "--horizon", "2h"]);
        assert!(
            e.contains("--horizon 2h is beyond --max-horizon 1h; raise --max-horizon"),
            "{e}"
        );
        let e = usage(&["--duration", "0s"]);
        assert!(e.contains("--duration 30s"), "{e}");
    }
}
