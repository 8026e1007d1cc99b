//! The claim-publish-complete loop of `job-pub run`, and the other subcommands' frames.
//!
//! Each turn claims a batch (a lease, committed at once), sets aside what cannot be
//! published (past `--max-lateness`, a row that cannot be read, a topic MQTT forbids),
//! publishes the rest ([`crate::publish`]) and marks each job by its fate. A lost database
//! is retried with backoff, the claimed jobs kept, for `--db-timeout`. A signal ends the
//! loop after the batch in flight; so do `--until-empty` and `--duration` ([`crate::stop`]),
//! which bound what is claimed.
//!
//! Every job claimed ends in one count: acknowledged, failed, rejected, given up,
//! unreadable or skipped. Those whose fate could not be written to the database (it was
//! gone) are counted again in `jobs_unrecorded`: still leased, they are claimed (and, if
//! acknowledged, published) again when their lease runs out.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use deadpool_postgres::Pool;
use hdrhistogram::Histogram;
use mqtt_tool::format::Percentiles;
use mqtt_tool::frame::RunFrame;
use mqtt_tool::shutdown::Shutdown;
use mqtt_tool::Error;

use crate::args::{DbPlan, JobIdMode, Plan, RunPlan};
use crate::db::{self, Job};
use crate::link::Link;
use crate::progress::Progress;
use crate::publish::{invalid, publish_batch};
use crate::report::{HistogramsReport, Report, SCHEMA_VERSION};
use crate::stop::{Bounds, Stopped};

/// Jobs named on stderr per batch for each reason they are set aside; the rest are counted.
const NAMED_PER_BATCH: usize = 5;

/// The ceiling of the lateness histogram: later jobs are recorded at it, and counted.
pub const LATENESS_CEILING: Duration = Duration::from_secs(366 * 24 * 3600);

pub async fn main(plan: Plan, shutdown: Shutdown) -> Result<ExitCode, Error> {
    match plan {
        Plan::Migrate(d) => {
            let pool = db::pool(&d)?;
            let mut retries = 0;
            db::retry(
                &d,
                "migrating",
                Duration::from_secs(10),
                &mut retries,
                || db::migrate(&pool, &d.table),
            )
            .await?
            .map_err(Error::Usage)?;
            println!(
                "migrated: table {} is ready for job-pub ({})",
                d.table, d.database.shown
            );
            Ok(ExitCode::SUCCESS)
        }
        Plan::Seed(d, s) => {
            let pool = db::pool(&d)?;
            let mut retries = 0;
            let started = Instant::now();
            let n = db::retry(&d, "seeding", Duration::from_secs(10), &mut retries, || {
                crate::seed::seed(&pool, &d, &s)
            })
            .await?;
            let dt = started.elapsed().as_secs_f64();
            println!(
                "seeded {} jobs into {} in {dt:.2} s ({} rows/s)",
                mqtt_tool::format::fmt_int(n),
                d.table,
                mqtt_tool::format::fmt_int((n as f64 / dt.max(1e-9)) as u64)
            );
            Ok(ExitCode::SUCCESS)
        }
        Plan::Run(p) => run(&p, &shutdown).await,
    }
}

/// Counts of one run.
#[derive(Debug, Default)]
pub struct Counts {
    pub claimed: u64,
    pub published: u64,
    pub acked: u64,
    pub failed: u64,
    pub rejected: u64,
    pub given_up: u64,
    pub unreadable: u64,
    pub skipped: u64,
    pub late: u64,
    pub republished_after_lease_expiry: u64,
    pub lease_lost: u64,
    pub unrecorded: u64,
    pub resent: u64,
    pub claims: u64,
    pub db_retries: u64,
    pub mqtt_reconnects: u64,
    pub lateness_clamped: u64,
    /// Every connect's phases (the first and each new connection).
    pub phases: mqtt_tool::phases::Recorder,
}

/// Names up to [`NAMED_PER_BATCH`] of `jobs` (id, why) on stderr, then how many more.
fn name_jobs<'a>(jobs: impl ExactSizeIterator<Item = (Option<i64>, &'a str)>, fate: &str) {
    let total = jobs.len();
    for (id, why) in jobs.take(NAMED_PER_BATCH) {
        match id {
            Some(id) => mqtt_tool::errln!("job {id} {fate}: {why}; it is marked processed and skipped"),
            None => mqtt_tool::errln!(
                "a claimed row {fate}: {why}; without an id it cannot be set aside, and is claimed again when its lease runs out"
            ),
        }
    }
    if total > NAMED_PER_BATCH {
        mqtt_tool::errln!(
            "... and {} more jobs {fate} in this batch",
            total - NAMED_PER_BATCH
        );
    }
}

/// Marks each group of ids processed (`true`: skipped, never published), in order; counts
/// in `lease_lost` those another instance had claimed meanwhile. When the database is gone
/// this group and the ones after it are counted in `unrecorded`, and the error returned.
async fn mark(
    db: &DbPlan,
    pool: &Pool,
    me: &str,
    give_up: Duration,
    n: &mut Counts,
    groups: &[(&[i64], bool)],
) -> Result<(), Error> {
    for (k, (ids, skipped)) in groups.iter().enumerate() {
        if ids.is_empty() {
            continue;
        }
        let what = if *skipped {
            "marking jobs skipped"
        } else {
            "marking jobs processed"
        };
        let r = db::retry(db, what, give_up, &mut n.db_retries, || {
            db::complete(pool, &db.table, ids, *skipped, me)
        })
        .await;
        match r {
            Ok(done) => n.lease_lost += ids.len() as u64 - done.min(ids.len() as u64),
            Err(e) => {
                n.unrecorded += groups[k..].iter().map(|(g, _)| g.len() as u64).sum::<u64>();
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn run(p: &RunPlan, shutdown: &Shutdown) -> Result<ExitCode, Error> {
    let live = std::sync::Arc::new(crate::observe::Live::default());
    let mut frame = RunFrame::open(
        p.metrics.clone(),
        p.exports.clone(),
        p.thresholds.clone(),
        crate::observe::families(live.clone()),
    )?;
    let result = run_framed(p, shutdown, &live, &mut frame).await;
    frame.close(result, shutdown).await
}

async fn run_framed(
    p: &RunPlan,
    shutdown: &Shutdown,
    live: &crate::observe::Live,
    frame: &mut RunFrame,
) -> Result<ExitCode, Error> {
    let pool = db::pool(&p.db)?;
    let mut n = Counts::default();
    // The table must be there, migrated, of columns job-pub can read: a clear error now
    // rather than at the first claim.
    let columns = db::retry(
        &p.db,
        "checking the table",
        p.db_timeout.min(Duration::from_secs(30)),
        &mut n.db_retries,
        || db::table_columns(&pool, &p.db.table),
    )
    .await?;
    let raw_payload = db::judge(&p.db.table, &columns)
        .map_err(|e| Error::usage(format!("{e} (database {})", p.db.database.shown)))?;
    let sql_ascii = db::retry(
        &p.db,
        "reading the database's encoding",
        p.db_timeout.min(Duration::from_secs(30)),
        &mut n.db_retries,
        || db::sql_ascii(&pool),
    )
    .await?;
    let reading = db::Reading {
        raw_payload,
        sql_ascii,
    };
    let target = frame.broker(&p.connect).await?;
    let inflight = p.batch.min(u16::MAX as usize) as u16;
    let mut link = Link::connect(&p.connect, &target, inflight, &mut n.phases).await?;
    let me = instance_name();
    // Lateness up to a year is exact; later jobs record at the ceiling, counted.
    let mut lateness = Histogram::<u64>::new_with_bounds(1, LATENESS_CEILING.as_micros() as u64, 3)
        .map_err(|e| Error::failed("cannot make the lateness histogram", e))?;
    // The run's bounds count from here, on the database's clock as on this one's.
    let (db_now, latest) = db::retry(
        &p.db,
        "reading the latest fire_at",
        p.db_timeout.min(Duration::from_secs(30)),
        &mut n.db_retries,
        || db::start_point(&pool, &p.db.table),
    )
    .await?;
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let bounds = Bounds::new(p, started, db_now, latest);
    let (claim_bound, wait_until) = (bounds.claim_bound(), bounds.wait_until());
    let mut progress = Progress::new(p.quiet, started);
    // The failure that ended the run early (the database gone, the broker refusing).
    let mut error: Option<Error> = None;
    let mut stopped = Stopped::Signal;
    let mut first_ack: Option<Instant> = None;
    let mut last_ack_at: Option<Instant> = None;

    loop {
        live.update(&n, &lateness, false);
        if shutdown.stop.is_cancelled() {
            break;
        }
        if bounds.out_of_time(Instant::now()) {
            stopped = Stopped::Duration;
            break;
        }
        // Nothing is held while claiming: a signal during a database outage ends at once.
        // A claim started before --duration's end is not cut (its jobs, all due by then,
        // are published), but an outage is not waited out past that end.
        let give_up = match bounds.deadline {
            Some(d) => p
                .db_timeout
                .min(d.saturating_duration_since(Instant::now())),
            None => p.db_timeout,
        };
        let claimed = tokio::select! {
            r = db::retry(&p.db, "claiming jobs", give_up, &mut n.db_retries, || {
                db::claim(&pool, &p.db.table, p.batch, p.lookahead, claim_bound, p.lease, &me, reading)
            }) => r,
            _ = shutdown.stop.cancelled() => break,
        };
        let claimed = match claimed {
            Ok(c) => c,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        n.claims += 1;
        if claimed.is_empty() {
            // Nothing due by the horizon's end is left unprocessed, here or anywhere (a job
            // another instance holds, or one that failed here and waits for its lease to
            // run out, is waited for).
            if let Some(until) = bounds.horizon_end {
                let left = db::retry(
                    &p.db,
                    "looking for jobs due",
                    give_up,
                    &mut n.db_retries,
                    || db::any_left(&pool, &p.db.table, until),
                )
                .await;
                match left {
                    Ok(false) => {
                        stopped = Stopped::Empty;
                        break;
                    }
                    Ok(true) => {}
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            let now = Instant::now();
            if let Some(pr) = progress.as_mut().filter(|pr| pr.wait_due(now)) {
                // Only for the line, so a database that does not answer at once is not
                // waited for here: the next claim retries it.
                let w = tokio::time::timeout(
                    Duration::from_secs(1),
                    db::waiting(&pool, &p.db.table, wait_until),
                )
                .await;
                match w {
                    Ok(Ok(w)) => pr.waiting(now, &w, wait_until.is_some(), bounds.left(now)),
                    _ => pr.waiting_unknown(now),
                }
            }
            let nap = match bounds.deadline {
                Some(d) => p.poll.min(d.saturating_duration_since(Instant::now())),
                None => p.poll,
            };
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = shutdown.stop.cancelled() => break,
            }
            continue;
        }
        n.claimed += claimed.len() as u64;
        let now = SystemTime::now();
        let (skip, jobs): (Vec<Job>, Vec<Job>) = claimed.jobs.into_iter().partition(|j| {
            p.max_lateness
                .is_some_and(|max| now.duration_since(j.fire_at).is_ok_and(|late| late > max))
        });
        // A job that cannot be published (a topic MQTT forbids, too large for the packet
        // limit) or a row that cannot be read would fail every instance that claims it:
        // counted, marked processed and skipped, named.
        let mut publish = Vec::with_capacity(jobs.len());
        let mut bad: Vec<(i64, String)> = Vec::new();
        for j in jobs {
            match invalid(&j, p) {
                Some(why) => bad.push((j.id, why)),
                None => publish.push(j),
            }
        }
        name_jobs(
            bad.iter().map(|(id, why)| (Some(*id), why.as_str())),
            "cannot be published",
        );
        name_jobs(
            claimed.unreadable.iter().map(|u| (u.id, u.why.as_str())),
            "cannot be read",
        );
        let skip_ids: Vec<i64> = skip.iter().map(|j| j.id).collect();
        let bad_ids: Vec<i64> = bad.iter().map(|(id, _)| *id).collect();
        let unreadable_ids: Vec<i64> = claimed.unreadable.iter().filter_map(|u| u.id).collect();
        n.skipped += skip_ids.len() as u64;
        n.rejected += bad_ids.len() as u64;
        n.unreadable += claimed.unreadable.len() as u64;
        let set_aside = [&skip_ids[..], &bad_ids[..], &unreadable_ids[..]].concat();
        if let Err(e) = mark(
            &p.db,
            &pool,
            &me,
            p.db_timeout,
            &mut n,
            &[(&set_aside, true)],
        )
        .await
        {
            // What was to be published is left leased, never sent: failed, claimed again
            // when its lease runs out.
            n.failed += publish.len() as u64;
            error = Some(e);
            break;
        }
        if publish.is_empty() {
            continue;
        }
        n.republished_after_lease_expiry +=
            publish.iter().filter(|j| j.attempts > 1).count() as u64;
        let outcome = publish_batch(p, &target, &mut link, &publish, &mut n, &mut lateness).await;
        let now_i = Instant::now();
        if !outcome.acked.is_empty() {
            first_ack.get_or_insert(now_i);
            last_ack_at = Some(now_i);
        }
        n.acked += outcome.acked.len() as u64;
        n.rejected += outcome.rejected.len() as u64;
        n.given_up += outcome.given_up.len() as u64;
        let settled = outcome.acked.len() + outcome.rejected.len() + outcome.given_up.len();
        let unacked = (publish.len() - settled) as u64;
        n.failed += unacked;
        // What was acknowledged is marked processed first, even when the batch then failed:
        // it must not be published again by another instance. The broker's refusals and the
        // jobs given up are marked skipped: processed, never published.
        let refused = [&outcome.rejected[..], &outcome.given_up[..]].concat();
        let marked = mark(
            &p.db,
            &pool,
            &me,
            p.db_timeout,
            &mut n,
            &[(&outcome.acked, false), (&refused, true)],
        )
        .await;
        if let Err(e) = marked {
            error = Some(e);
            break;
        }
        if let Some(e) = outcome.error {
            error = Some(e);
            break;
        }
        if unacked > 0 {
            // Acknowledgements still owed would be matched to the next batch's messages:
            // start it on a new connection.
            match Link::connect(&p.connect, &target, inflight, &mut n.phases).await {
                Ok(l) => {
                    std::mem::replace(&mut link, l).close().await;
                    n.mqtt_reconnects += 1;
                }
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if let Some(pr) = progress.as_mut() {
            let now = Instant::now();
            pr.working(now, &n, bounds.left(now));
        }
    }
    link.close().await;
    live.update(&n, &lateness, true);
    let signal = shutdown.signal();
    if let Some(pr) = &progress {
        pr.finish();
    }
    if error.is_some() {
        stopped = Stopped::Failed;
    }
    if signal.is_some() {
        stopped = Stopped::Signal;
    }
    // What the horizon left: jobs due after its end (asked once; a database gone by now
    // leaves it unknown, said as 0 and in the error already).
    let left_after_horizon = match bounds.horizon_end {
        Some(end) if stopped == Stopped::Empty => db::retry(
            &p.db,
            "counting the jobs due after the horizon",
            Duration::from_secs(10),
            &mut n.db_retries,
            || db::left_after(&pool, &p.db.table, end),
        )
        .await
        .unwrap_or_else(|e| {
            error.get_or_insert(e);
            0
        }),
        _ => 0,
    };
    let elapsed = match (first_ack, last_ack_at) {
        (Some(_), Some(b)) => b.saturating_duration_since(started).as_secs_f64(),
        _ => started.elapsed().as_secs_f64(),
    };
    // Not everything claimed went out: said, after what ended the run, if anything did.
    if error.is_none() && n.failed > 0 {
        error = Some(Error::Incomplete(format!(
            "{} jobs were not acknowledged within --ack-timeout; they stay unprocessed and are claimed again when their lease runs out",
            mqtt_tool::format::fmt_int(n.failed)
        )));
    }
    let not_published = n.rejected + n.given_up + n.unreadable;
    if error.is_none() && not_published > 0 {
        let why: Vec<String> = [
            (n.rejected, "rejected"),
            (
                n.given_up,
                "given up after the broker closed the connection for each",
            ),
            (n.unreadable, "unreadable rows"),
        ]
        .iter()
        .filter(|(k, _)| *k > 0)
        .map(|(k, what)| format!("{} {what}", mqtt_tool::format::fmt_int(*k)))
        .collect();
        error = Some(Error::Incomplete(format!(
            "{} jobs could not be published ({}); they are marked processed and skipped, named above",
            mqtt_tool::format::fmt_int(not_published),
            why.join(", ")
        )));
    }
    let (connect_phases_us, phase_histograms, _, _) = n.phases.report();
    let mut report = Report {
        header: mqtt_tool::frame::ReportHeader {
            started_at: Some(mqtt_tool::frame::rfc3339(started_wall)),
            ended_at: Some(mqtt_tool::frame::rfc3339(SystemTime::now())),
            ..mqtt_tool::frame::ReportHeader::new(
                "job-pub",
                SCHEMA_VERSION,
                target.url(),
                frame.run_id(),
            )
        },
        database: p.db.database.shown.clone(),
        table: p.db.table.clone(),
        instance: me.clone(),
        qos: p.qos.level(),
        mqtt_version: if p.connect.mqtt5 { "5" } else { "3.1.1" }.into(),
        job_id: match p.job_id {
            JobIdMode::Property => "property",
            JobIdMode::Wrapper => "wrapper",
            JobIdMode::None => "none",
        }
        .into(),
        batch: p.batch as u64,
        jobs_claimed: n.claimed,
        jobs_published: n.published,
        jobs_acked: n.acked,
        jobs_failed: n.failed,
        jobs_rejected: n.rejected,
        jobs_given_up: n.given_up,
        jobs_unreadable: n.unreadable,
        jobs_skipped: n.skipped,
        jobs_late: n.late,
        jobs_republished_after_lease_expiry: n.republished_after_lease_expiry,
        jobs_lease_lost: n.lease_lost,
        jobs_unrecorded: n.unrecorded,
        messages_resent: n.resent,
        claims: n.claims,
        db_retries: n.db_retries,
        db_connections_opened: db::CONNECTIONS_OPENED.load(std::sync::atomic::Ordering::Relaxed),
        mqtt_reconnects: n.mqtt_reconnects,
        elapsed_s: mqtt_tool::format::round3(elapsed),
        job_rate: mqtt_tool::format::round3(if elapsed > 0.0 {
            n.acked as f64 / elapsed
        } else {
            0.0
        }),
        lateness_us: Percentiles::of(&lateness),
        lateness_clamped: n.lateness_clamped,
        connect_phases_us,
        histograms: HistogramsReport {
            lateness_us: mqtt_tool::hist::encode(&lateness),
            phases: phase_histograms,
        },
        outcome: match (signal, &error) {
            (Some(_), _) => "interrupted",
            (None, Some(_)) => "incomplete",
            (None, None) => "complete",
        }
        .into(),
        interrupted_by: signal.map(|s| s.name().to_string()),
        stopped_by: stopped.name().into(),
        horizon_end: bounds
            .horizon_end
            .map(|t| humantime::format_rfc3339_micros(t).to_string()),
        horizon_s: bounds.horizon_end.map(|t| {
            mqtt_tool::format::round3(t.duration_since(db_now).unwrap_or_default().as_secs_f64())
        }),
        horizon_capped: bounds.horizon_capped,
        jobs_left_after_horizon: left_after_horizon,
        duration_s: p
            .duration
            .map(|d| mqtt_tool::format::round3(d.as_secs_f64())),
        error: error.as_ref().map(|e| e.to_string()),
    };
    frame.report(&mut report).await?;
    // What kept the run from going on (the database or the broker gone or refusing) is a
    // failure before any threshold; jobs not published are the run's shortfall.
    let (failure, shortfall) = match error {
        Some(e @ Error::Incomplete(_)) => (None, Err(e)),
        Some(e) => (Some(e), Ok(ExitCode::SUCCESS)),
        None => (None, Ok(ExitCode::SUCCESS)),
    };
    mqtt_tool::frame::exit(signal, failure, &report.header, shortfall)
}

/// This instance's name: host, pid and a part from the clock; its client id and
/// `claimed_by`.
pub fn instance_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| mqtt_tool::connect::instance_client_id("job-pub"))
        .clone()
}
