//! The claim-publish-complete loop of `job-pub run`, and the other subcommands' frames.
//!
//! Each turn claims a batch (a lease, committed at once), holds each job until its fire_at
//! (claims look `--lookahead` ahead), publishes the batch pipelined, waits for every
//! acknowledgement, and marks the acknowledged jobs processed. A lost MQTT connection is
//! replaced and what it left unacknowledged is published again; a lost database is retried
//! with backoff, the claimed jobs kept, for `--db-timeout`. A signal ends the loop after the
//! batch in flight.

use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use hdrhistogram::Histogram;
use mqtt_tool::shutdown::Shutdown;
use mqtt_tool::Error;

use crate::args::{JobIdMode, Plan, RunPlan};
use crate::db::{self, Job};
use crate::link::{Ev, Link};
use crate::report::{HistogramsReport, Report, SCHEMA_VERSION};

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
            .await?;
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
struct Counts {
    claimed: u64,
    published: u64,
    acked: u64,
    failed: u64,
    rejected: u64,
    skipped: u64,
    late: u64,
    republished: u64,
    lease_lost: u64,
    resent: u64,
    claims: u64,
    db_retries: u64,
    mqtt_reconnects: u64,
}

async fn run(p: &RunPlan, shutdown: &Shutdown) -> Result<ExitCode, Error> {
    let pool = db::pool(&p.db)?;
    let mut n = Counts::default();
    // The table must be there, migrated: a clear error now rather than at the first claim.
    db::retry(
        &p.db,
        "checking the table",
        p.db_timeout.min(Duration::from_secs(30)),
        &mut n.db_retries,
        || db::due_left(&pool, &p.db.table),
    )
    .await
    .map_err(|e| match e {
        Error::Other(m) if m.contains("does not exist") => Error::usage(format!(
            "{m}; run job-pub migrate first (it creates the table and what job-pub needs)"
        )),
        e => e,
    })?;
    let raw_payload = db::retry(
        &p.db,
        "reading the payload column's type",
        p.db_timeout.min(Duration::from_secs(30)),
        &mut n.db_retries,
        || db::payload_is_bytea(&pool, &p.db.table),
    )
    .await?;
    let choice = p.connect.broker.clone();
    let (max_packet, port) = (p.connect.max_packet_size, p.connect.embedded_port);
    let target = tokio::task::spawn_blocking(move || {
        mqtt_tool::broker::resolve(&choice, false, max_packet, port)
    })
    .await
    .map_err(|e| Error::Other(format!("broker lookup failed: {e}")))??;
    mqtt_tool::broker::check_version(&target, p.connect.mqtt5)?;
    let inflight = p.batch.min(u16::MAX as usize) as u16;
    let mut link = Link::connect(&p.connect, &target, inflight).await?;
    let me = instance_name();
    // Lateness up to a year is exact; older jobs record as a year.
    let mut lateness =
        Histogram::<u64>::new_with_bounds(1, 366 * 24 * 3_600_000_000, 3).expect("bounds");
    let started_wall = SystemTime::now();
    let started = Instant::now();
    let mut last_progress = started;
    // On a terminal a live line (indicatif, redrawn in place); else a plain line a second.
    let bar = (!p.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
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
    let mut last_acked = 0u64;
    let mut error: Option<String> = None;
    let mut first_ack: Option<Instant> = None;
    let mut last_ack_at: Option<Instant> = None;

    // A database or broker failure ends the loop with `error`; the report is written either way.
    macro_rules! or_stop {
        ($l:lifetime, $e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    error = Some(e.to_string());
                    break $l;
                }
            }
        };
    }
    'run: loop {
        if shutdown.stop.is_cancelled() {
            break;
        }
        // Nothing is held while claiming: a signal during a database outage ends at once.
        let claimed = tokio::select! {
            r = db::retry(&p.db, "claiming jobs", p.db_timeout, &mut n.db_retries, || {
                db::claim(&pool, &p.db.table, p.batch, p.lookahead, p.lease, &me, raw_payload)
            }) => r,
            _ = shutdown.stop.cancelled() => break 'run,
        };
        let jobs = or_stop!('run, claimed);
        n.claims += 1;
        if jobs.is_empty() {
            if p.until_empty {
                let left = or_stop!(
                'run,
                    db::retry(
                        &p.db,
                        "counting due jobs",
                        p.db_timeout,
                        &mut n.db_retries,
                        || { db::due_left(&pool, &p.db.table) }
                    )
                    .await
                );
                if left == 0 {
                    break;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(p.poll) => {}
                _ = shutdown.stop.cancelled() => break 'run,
            }
            continue;
        }
        n.claimed += jobs.len() as u64;
        let now = SystemTime::now();
        let (skip, jobs): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| {
            p.max_lateness
                .is_some_and(|max| now.duration_since(j.fire_at).is_ok_and(|late| late > max))
        });
        // A job that cannot be published (a wildcard or empty topic, too large for the
        // packet limit) would fail every instance that claims it: refused here, counted,
        // marked processed and skipped.
        let (bad, publish): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| invalid(j, p).is_some());
        for j in bad.iter().take(3) {
            mqtt_tool::errln!(
                "job {} cannot be published: {}; it is marked processed and skipped",
                j.id,
                invalid(j, p).unwrap_or_default()
            );
        }
        for (set, count_in) in [(&skip, 0), (&bad, 1)] {
            if set.is_empty() {
                continue;
            }
            let ids: Vec<i64> = set.iter().map(|j| j.id).collect();
            let done = or_stop!(
                'run,
                db::retry(
                    &p.db,
                    "marking skipped jobs",
                    p.db_timeout,
                    &mut n.db_retries,
                    || { db::complete(&pool, &p.db.table, &ids, true, &me) }
                )
                .await
            );
            if count_in == 0 {
                n.skipped += done;
            } else {
                n.rejected += done;
            }
            n.lease_lost += ids.len() as u64 - done;
        }
        if publish.is_empty() {
            continue;
        }
        n.republished += publish.iter().filter(|j| j.attempts > 1).count() as u64;
        let outcome = publish_batch(p, &target, &mut link, &publish, &mut n, &mut lateness).await;
        let now_i = Instant::now();
        if !outcome.acked.is_empty() {
            first_ack.get_or_insert(now_i);
            last_ack_at = Some(now_i);
        }
        // What was acknowledged is marked processed even when the batch then failed: it must
        // not be published again by another instance.
        // The broker's refusals are marked skipped: processed, never published.
        for (ids, skipped) in [(&outcome.acked, false), (&outcome.rejected, true)] {
            if ids.is_empty() {
                continue;
            }
            let done = or_stop!(
                'run,
                db::retry(
                    &p.db,
                    "marking jobs processed",
                    p.db_timeout,
                    &mut n.db_retries,
                    || { db::complete(&pool, &p.db.table, ids, skipped, &me) }
                )
                .await
            );
            n.lease_lost += ids.len() as u64 - done;
        }
        n.acked += outcome.acked.len() as u64;
        n.rejected += outcome.rejected.len() as u64;
        let unacked = (publish.len() - outcome.acked.len() - outcome.rejected.len()) as u64;
        n.failed += unacked;
        if let Some(e) = outcome.error {
            error = Some(e.to_string());
            break;
        }
        if unacked > 0 {
            // Acknowledgements still owed would be matched to the next batch's messages:
            // start it on a new connection.
            match Link::connect(&p.connect, &target, inflight).await {
                Ok(l) => {
                    std::mem::replace(&mut link, l).close().await;
                    n.mqtt_reconnects += 1;
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        if !p.quiet && last_progress.elapsed() >= Duration::from_secs(1) {
            let dt = last_progress.elapsed().as_secs_f64();
            let line = format!(
                "{} jobs acknowledged ({} jobs/s), {} claimed, {} failed, {} late",
                mqtt_tool::format::fmt_int(n.acked),
                mqtt_tool::format::fmt_int(((n.acked - last_acked) as f64 / dt) as u64),
                mqtt_tool::format::fmt_int(n.claimed),
                mqtt_tool::format::fmt_int(n.failed),
                mqtt_tool::format::fmt_int(n.late)
            );
            match &bar {
                Some(b) => b.set_message(line),
                None => mqtt_tool::errln!("[{:>6.1}s] {line}", started.elapsed().as_secs_f64()),
            }
            last_progress = Instant::now();
            last_acked = n.acked;
        }
    }
    link.close().await;
    let signal = shutdown.signal();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let elapsed = match (first_ack, last_ack_at) {
        (Some(_), Some(b)) => b.saturating_duration_since(started).as_secs_f64(),
        _ => started.elapsed().as_secs_f64(),
    };
    if error.is_none() && n.failed > 0 {
        error = Some(format!(
            "{} jobs were not acknowledged within --ack-timeout; they stay unprocessed and are claimed again when their lease runs out",
            mqtt_tool::format::fmt_int(n.failed)
        ));
    }
    let mut report = Report {
        schema_version: SCHEMA_VERSION,
        tool: "job-pub".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        broker: target.url(),
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
        jobs_skipped: n.skipped,
        jobs_late: n.late,
        jobs_republished: n.republished,
        jobs_lease_lost: n.lease_lost,
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
        histograms: HistogramsReport {
            lateness_us: mqtt_tool::hist::encode(&lateness),
        },
        started_at: humantime::format_rfc3339_micros(started_wall).to_string(),
        ended_at: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
        outcome: match (signal, &error) {
            (Some(_), _) => "interrupted",
            (None, Some(_)) => "incomplete",
            (None, None) => "complete",
        }
        .into(),
        interrupted_by: signal.map(|s| s.name().to_string()),
        error: error.clone(),
        thresholds: Vec::new(),
    };
    report.judge(&p.thresholds);
    let text = report.render_text();
    p.exports.write(&report, &text)?;
    if let Some(sig) = signal {
        return Ok(ExitCode::from(sig.exit_code()));
    }
    if let Some(failed) = mqtt_tool::threshold::failures(&report.thresholds) {
        return Err(Error::Thresholds(failed));
    }
    match error {
        Some(e) => Err(Error::Incomplete(e)),
        None => Ok(ExitCode::SUCCESS),
    }
}

use mqtt_tool::format::Percentiles;

/// This instance's name: host, pid and a random part; its client id and `claimed_by`.
pub fn instance_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let host: String = hostname()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(40)
            .collect();
        format!("job-pub-{host}-{}-{:x}", std::process::id(), nanos)
    })
    .clone()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

/// The message body of `job`.
fn body(job: &Job, mode: JobIdMode) -> Bytes {
    match mode {
        JobIdMode::Wrapper => {
            // The payload as a JSON string; bytes that are not UTF-8 in base64 instead.
            let doc = match std::str::from_utf8(&job.payload) {
                Ok(text) => serde_json::json!({"job_id": job.id, "payload": text}),
                Err(_) => {
                    use base64::Engine;
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&job.payload);
                    serde_json::json!({"job_id": job.id, "payload_base64": b64})
                }
            };
            Bytes::from(doc.to_string())
        }
        _ => job.payload.clone(),
    }
}

/// What a batch came to: the jobs acknowledged and rejected, and the failure that ended it
/// early, if one did (what was acknowledged before it still counts).
struct Batch {
    acked: Vec<i64>,
    rejected: Vec<i64>,
    error: Option<Error>,
}

/// Why `job` cannot be published, if it cannot.
fn invalid(job: &Job, p: &RunPlan) -> Option<String> {
    if job.topic.is_empty() {
        return Some("its topic is empty".into());
    }
    if job.topic.contains(['+', '#', '\0']) {
        return Some(format!(
            "its topic '{}' holds a wildcard or NUL",
            mqtt_tool::out::escape(&job.topic)
        ));
    }
    if job.topic.len() > 65_535 {
        return Some("its topic is longer than 65,535 bytes".into());
    }
    let size = job.topic.len() + job.payload.len() + 64;
    if size > p.connect.max_packet_size {
        return Some(format!(
            "its message of {size} bytes is over --max-packet-size {}",
            p.connect.max_packet_size
        ));
    }
    None
}

/// Publishes `jobs` (held until each fire_at) and waits for their acknowledgements. A lost
/// connection is replaced (with backoff, even when the new one comes up at once) and the
/// unacknowledged jobs published again.
async fn publish_batch(
    p: &RunPlan,
    target: &mqtt_tool::broker::BrokerTarget,
    link: &mut Link,
    jobs: &[Job],
    n: &mut Counts,
    lateness: &mut Histogram<u64>,
) -> Batch {
    let mut backoff = Duration::from_millis(100);
    let mut result = publish_attempts(p, target, link, jobs, n, lateness, &mut backoff).await;
    let (mut acked, mut rejected, error) = (Vec::new(), Vec::new(), result.2.take());
    for (i, j) in jobs.iter().enumerate() {
        if result.0[i] {
            acked.push(j.id);
        } else if result.1[i] == Refusal::ForGood {
            rejected.push(j.id);
        }
    }
    Batch {
        acked,
        rejected,
        error,
    }
}

/// How the broker answered a job it did not take (an MQTT 5 reason code of 0x80 or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// It did not refuse it (yet).
    No,
    /// For good (not authorized, topic or payload invalid): marked processed and skipped,
    /// counted rejected, never tried again.
    ForGood,
    /// For now (quota exceeded, packet id in use): left leased and counted failed, so that
    /// a later claim publishes it again once the lease runs out.
    ForNow,
}

impl Refusal {
    fn of(code: u8) -> Refusal {
        match code {
            0x91 | 0x97 => Refusal::ForNow,
            _ => Refusal::ForGood,
        }
    }
}

/// The attempts of [`publish_batch`]: (done, refused, the failure that ended it).
async fn publish_attempts(
    p: &RunPlan,
    target: &mqtt_tool::broker::BrokerTarget,
    link: &mut Link,
    jobs: &[Job],
    n: &mut Counts,
    lateness: &mut Histogram<u64>,
    backoff: &mut Duration,
) -> (Vec<bool>, Vec<Refusal>, Option<Error>) {
    let qos = p.qos.level();
    let mut done = vec![false; jobs.len()];
    let mut rejected = vec![Refusal::No; jobs.len()];
    let mut written_once = vec![false; jobs.len()];
    let mut to_send: Vec<usize> = (0..jobs.len()).collect();
    // The acknowledgements are awaited from the last job's fire_at (the batch is held until
    // then), so the whole batch stays within --lookahead + --ack-timeout, inside its lease.
    let last_fire = jobs
        .iter()
        .map(|j| {
            j.fire_at
                .duration_since(SystemTime::now())
                .unwrap_or_default()
        })
        .max()
        .unwrap_or_default();
    let deadline = Instant::now() + last_fire + p.ack_timeout;
    loop {
        // Publish what is to be sent, in order; written ones are matched in that order.
        let mut order: VecDeque<usize> = VecDeque::with_capacity(to_send.len());
        let mut by_pkid: HashMap<u16, usize> = HashMap::with_capacity(to_send.len());
        let mut down: Option<String> = None;
        for &i in &to_send {
            let j = &jobs[i];
            if let Ok(wait) = j.fire_at.duration_since(SystemTime::now()) {
                tokio::time::sleep(wait).await;
            }
            let id = (p.job_id == JobIdMode::Property).then_some(j.id);
            if let Err(e) = link
                .publish(&j.topic, qos, p.retain, body(j, p.job_id), id)
                .await
            {
                down = Some(e);
                break;
            }
            order.push_back(i);
            // Keep up with what the connection did meanwhile.
            while let Ok(ev) = link.events.try_recv() {
                if let Some(why) = absorb(
                    ev,
                    qos,
                    jobs,
                    &mut order,
                    &mut by_pkid,
                    &mut done,
                    &mut rejected,
                    &mut written_once,
                    n,
                    lateness,
                    p,
                ) {
                    down = Some(why);
                }
            }
            if down.is_some() {
                break;
            }
        }
        // Wait for the rest.
        while down.is_none()
            && done
                .iter()
                .zip(&rejected)
                .any(|(d, r)| !d && *r == Refusal::No)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, link.events.recv()).await {
                Err(_) => break,
                Ok(None) => down = Some("the connection's event loop ended".into()),
                Ok(Some(ev)) => {
                    if let Some(why) = absorb(
                        ev,
                        qos,
                        jobs,
                        &mut order,
                        &mut by_pkid,
                        &mut done,
                        &mut rejected,
                        &mut written_once,
                        n,
                        lateness,
                        p,
                    ) {
                        down = Some(why);
                    }
                }
            }
        }
        let Some(why) = down else {
            break;
        };
        // A lost connection: a new one, and what is not acknowledged goes out again.
        mqtt_tool::errln!(
            "connection to the broker lost: {}; reconnecting",
            mqtt_tool::out::escape(&why)
        );
        let new = loop {
            // Past the ack deadline, what is unacknowledged is left for another claim.
            if Instant::now() >= deadline {
                return (
                    done,
                    rejected,
                    Some(Error::Unreachable {
                        broker: target.url(),
                        reason: format!("lost ({why}) and not back within --ack-timeout"),
                    }),
                );
            }
            // Backoff even when the last connection came up at once: a broker that closes
            // every connection must not be hammered.
            tokio::time::sleep(*backoff).await;
            *backoff = (*backoff * 2).min(Duration::from_secs(5));
            match Link::connect(&p.connect, target, p.batch.min(u16::MAX as usize) as u16).await {
                Ok(l) => break l,
                Err(e @ Error::Refused { .. }) => return (done, rejected, Some(e)),
                Err(_) => {}
            }
        };
        *link = new;
        n.mqtt_reconnects += 1;
        to_send = (0..jobs.len())
            .filter(|&i| !done[i] && rejected[i] == Refusal::No)
            .collect();
        n.resent += to_send.iter().filter(|&&i| written_once[i]).count() as u64;
    }
    (done, rejected, None)
}

/// Applies one event; returns why the connection went down, if it did.
#[allow(clippy::too_many_arguments)]
fn absorb(
    ev: Ev,
    qos: u8,
    jobs: &[Job],
    order: &mut VecDeque<usize>,
    by_pkid: &mut HashMap<u16, usize>,
    done: &mut [bool],
    rejected: &mut [Refusal],
    written_once: &mut [bool],
    n: &mut Counts,
    lateness: &mut Histogram<u64>,
    p: &RunPlan,
) -> Option<String> {
    match ev {
        Ev::Written(pkid) => {
            let i = order.pop_front()?;
            if !written_once[i] {
                written_once[i] = true;
                n.published += 1;
                let late = SystemTime::now()
                    .duration_since(jobs[i].fire_at)
                    .unwrap_or_default();
                lateness.saturating_record(late.as_micros().min(u64::MAX as u128) as u64);
                if late > p.late_after {
                    n.late += 1;
                }
            }
            if qos == 0 {
                done[i] = true;
            } else {
                by_pkid.insert(pkid, i);
            }
            None
        }
        Ev::Acked(pkid, result) => {
            if let Some(i) = by_pkid.remove(&pkid) {
                match result {
                    Ok(()) => done[i] = true,
                    Err(code) => rejected[i] = Refusal::of(code),
                }
            }
            None
        }
        Ev::Up => None,
        Ev::Down(why) | Ev::Refused(why) => Some(why),
    }
}
