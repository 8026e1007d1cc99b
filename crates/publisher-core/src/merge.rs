//! `loadgen merge` for publisher reports: the shards of one run added up into one report.
//!
//! Reports are added one at a time ([`Merge::add`]), so a merge holds one report and the
//! running sums, never every report. Each report is checked before it is trusted: it must
//! be of the same run as the first, and its own figures must add up (acknowledged within
//! sent, the workers' points the shard's, a histogram counting what it describes, an
//! outcome its counts allow). Counts are summed without wrapping; histograms (carried in
//! each report, [`mqtt_tool::hist`]) are added, so the merged percentiles are those of the
//! union of the samples, never an average of percentiles; the window runs from the earliest
//! start to the latest end, and the rates are over that window. A merge that lacks a shard
//! (or has one twice) says which, as ranges, and fails.

use std::collections::BTreeSet;
use std::time::Duration;

use hdrhistogram::Histogram;
use mqtt_tool::format::fmt_int;
use mqtt_tool::merge::{add_histogram, fmt_ranges, missing_of, ranges_of, Adding, Check, Windows};

use crate::error::Error;
use crate::format::{round3, Percentiles};
use crate::report::{MergedReport, Report, WorkerReport, SCHEMA_VERSION};

/// The most shards a run may have (`--shards` of `loadgen pub`, of `loadgen merge`, and a
/// report's own): Kubernetes' limit for an Indexed Job's completions.
pub const MAX_SHARDS: u64 = 100_000;

/// Shards whose own problem the merge's error line names before it says how many more.
const PROBLEMS_NAMED: usize = 3;

/// The histograms of one report, decoded (within the bounds of [`mqtt_tool::hist::decode`]).
struct Hists {
    ack: Option<Histogram<u64>>,
    lag: Option<Histogram<u64>>,
    connect: Option<Histogram<u64>>,
}

/// A merge in progress: the first counted report with every later one added into it.
pub struct Merge {
    shards: Option<u64>,
    max_gap: Duration,
    first_name: String,
    m: Option<Report>,
    expected: u64,
    reports: u64,
    /// Names of the reports counted so far, for errors.
    names: Vec<String>,
    present: BTreeSet<u64>,
    duplicated: BTreeSet<u64>,
    ack: Option<Histogram<u64>>,
    lag: Option<Histogram<u64>>,
    connect: Option<Histogram<u64>>,
    phases: mqtt_tool::phases::PhaseMerge,
    windows: Windows,
    problems: Vec<String>,
    problems_more: u64,
    interrupted_by: Option<String>,
    interrupted_connecting: bool,
    /// The fleet was up when its last shard was: the longest ramp, if every shard had one.
    ramp_s: Option<Option<f64>>,
    note: Option<String>,
}

impl Merge {
    /// A merge of one sharded run's reports. `shards` is the number expected (default: what
    /// the reports say, which must agree); `max_gap` the longest time between reports'
    /// windows that still makes them one run.
    pub fn new(shards: Option<u64>, max_gap: Duration) -> Result<Merge, Error> {
        if let Some(n) = shards {
            if n == 0 || n > MAX_SHARDS {
                return Err(Error::usage(format!(
                    "--shards {n} is not a shard count loadgen runs: give 1 to {} (a run has at most that many shards)",
                    fmt_int(MAX_SHARDS)
                )));
            }
        }
        Ok(Merge {
            shards,
            max_gap,
            first_name: String::new(),
            m: None,
            expected: 0,
            reports: 0,
            names: Vec::new(),
            present: BTreeSet::new(),
            duplicated: BTreeSet::new(),
            ack: None,
            lag: None,
            connect: None,
            phases: Default::default(),
            windows: Windows::default(),
            problems: Vec::new(),
            problems_more: 0,
            interrupted_by: None,
            interrupted_connecting: false,
            ramp_s: None,
            note: None,
        })
    }

    /// Adds the report `r`, named `name` (its path) in errors.
    pub fn add(&mut self, name: String, r: Report) -> Result<(), Error> {
        self.same_run(&name, &r)?;
        let hists = check_figures(&name, &r)?;
        let (start, end) = r.header.window(&Check { report: &name })?;
        self.reports += 1;
        if !self.present.insert(r.shard) {
            self.duplicated.insert(r.shard);
            return Ok(());
        }
        self.windows.add(&name, start, end);
        self.note_problems(&r);
        self.ramp_s = Some(match (self.ramp_s, r.connections.ramp_s) {
            (None, ramp) => ramp,
            (Some(Some(a)), Some(b)) => Some(a.max(b)),
            _ => None,
        });
        if self.note.is_none() {
            self.note = r
                .generator
                .note
                .as_ref()
                .map(|n| format!("shard {}: {n}", r.shard));
        }
        add_histogram(&mut self.ack, hists.ack)?;
        add_histogram(&mut self.lag, hists.lag)?;
        add_histogram(&mut self.connect, hists.connect)?;
        self.phases
            .add(&Check { report: &name }, &r.histograms.phases)?;
        match &mut self.m {
            None => self.m = Some(r),
            Some(m) => {
                let add = Adding {
                    report: &name,
                    before: &self.names,
                };
                add_counts(m, &r, &add)?;
            }
        }
        self.names.push(name);
        Ok(())
    }

    /// Whether `r` is a report this merge can take: mergeable, and of the run of the first.
    fn same_run(&mut self, name: &str, r: &Report) -> Result<(), Error> {
        r.header.check_schema(name, "", SCHEMA_VERSION)?;
        if r.merged.is_some() {
            return Err(Error::usage(format!(
                "{name} is a merged report already; merge the shards' own reports"
            )));
        }
        if r.shards == 0 || r.shards > MAX_SHARDS {
            return Err(Error::usage(format!(
                "{name} claims a run of {} shards; a run has 1 to {}: a damaged report? Leave it out or rerun its shard",
                fmt_int(r.shards),
                fmt_int(MAX_SHARDS)
            )));
        }
        if self.m.is_none() && self.reports == 0 {
            self.first_name = name.to_string();
            self.expected = self.shards.unwrap_or(r.shards);
        }
        let expected = self.expected;
        let first = &self.first_name;
        if r.shards != expected {
            return Err(Error::usage(format!(
                "{name} is a shard of a run of {} shards, not {expected}: these are reports of different runs",
                r.shards
            )));
        }
        if r.shard >= expected {
            return Err(Error::usage(format!(
                "{name} is shard {} of {}, which a run of {expected} shards does not have",
                r.shard, r.shards
            )));
        }
        let Some(f) = &self.m else { return Ok(()) };
        for (what, a, b) in [
            ("tool", r.header.tool.as_str(), f.header.tool.as_str()),
            ("topic", r.topic.as_str(), f.topic.as_str()),
        ] {
            if a != b {
                return Err(Error::usage(format!(
                    "{name} has {what} '{}' but {first} has '{}': these are reports of different runs",
                    mqtt_tool::out::escape(a),
                    mqtt_tool::out::escape(b)
                )));
            }
        }
        if r.qos != f.qos || r.batch != f.batch {
            return Err(Error::usage(format!(
                "{name} ran QoS {} with --batch {}, {first} QoS {} with --batch {}: these are reports of different runs",
                r.qos, r.batch, f.qos, f.batch
            )));
        }
        // Shards of one run waited for the same --start-at; a report left from another run
        // (a shard that died before writing its own) has another.
        if r.start_at != f.start_at {
            return Err(Error::usage(format!(
                "{name} started at --start-at {} but {first} at {}: a report of another run? \
                 Remove the old reports before a new run",
                r.start_at.as_deref().unwrap_or("none"),
                f.start_at.as_deref().unwrap_or("none")
            )));
        }
        Ok(())
    }

    /// A shard's own error or interruption, for the merge's: the first few named.
    fn note_problems(&mut self, r: &Report) {
        let problem = if let Some(e) = &r.error {
            Some(format!("shard {}: {e}", r.shard))
        } else {
            // Interrupted after a clean flush: what it sent is counted, the rest of its
            // share never went out.
            r.interrupted_by.as_ref().map(|sig| {
                format!(
                    "shard {} was interrupted by {sig}{}",
                    r.shard,
                    if r.interrupted_connecting {
                        " while connecting: it sent nothing"
                    } else {
                        ""
                    }
                )
            })
        };
        if let Some(p) = problem {
            if self.problems.len() < PROBLEMS_NAMED {
                self.problems.push(p);
            } else {
                self.problems_more += 1;
            }
        }
        if self.interrupted_by.is_none() {
            self.interrupted_by = r.interrupted_by.clone();
        }
        self.interrupted_connecting |= r.interrupted_connecting;
    }

    /// The merged report.
    pub fn finish(mut self) -> Result<Report, Error> {
        let Some(mut m) = self.m.take() else {
            return Err(Error::usage("loadgen merge needs at least one report"));
        };
        self.windows.check_one_run(self.max_gap)?;
        let expected = self.expected;
        let missing = missing_of(expected, self.present.iter().copied());
        let duplicated = ranges_of(self.duplicated.iter().copied());

        m.latency_us = self.ack.as_ref().and_then(Percentiles::of);
        m.schedule_lag_us = self.lag.as_ref().and_then(Percentiles::of);
        m.connect_latency_us = self.connect.as_ref().and_then(Percentiles::of);
        m.histograms.ack_us = self.ack.as_ref().and_then(mqtt_tool::hist::encode);
        m.histograms.lag_us = self.lag.as_ref().and_then(mqtt_tool::hist::encode);
        m.histograms.connect_us = self.connect.as_ref().and_then(mqtt_tool::hist::encode);
        (m.connect_phases_us, m.histograms.phases) = self.phases.finish();
        m.connections.ramp_s = self.ramp_s.flatten();

        // The window: the earliest start to the latest end, and the rates over it.
        let w = self.windows.window();
        m.header.merged(&w);
        m.elapsed_s = round3(w.elapsed_s());
        m.point_rate = round3(w.per_s(m.points_sent));
        m.message_rate = round3(w.per_s(m.messages_sent));
        m.bytes_per_s = round3(w.per_s(m.bytes_sent));
        m.disconnected_s = round3(m.disconnected_s);
        m.target_pct = m.target_rate.map(|r| round3(100.0 * m.point_rate / r));
        // Each shard's rate after its own ramp does not add up to the fleet's: left out.
        m.steady_point_rate = None;
        m.generator.cpu_s = round3(m.generator.cpu_s);
        m.generator.note = self.note;
        for (i, w) in m.per_worker.iter_mut().enumerate() {
            w.worker = i;
        }

        let mut problems = Vec::new();
        if !missing.is_empty() {
            let count = missing.iter().map(|r| r.len()).sum::<u64>();
            problems.push(format!(
                "shards {} of {expected} are missing{}: the merged figures lack their devices",
                fmt_ranges(&missing),
                if count > 1 {
                    format!(" ({} shards)", fmt_int(count))
                } else {
                    String::new()
                }
            ));
        }
        if !duplicated.is_empty() {
            problems.push(format!(
                "shards {} were given more than once; each was counted once",
                fmt_ranges(&duplicated)
            ));
        }
        problems.append(&mut self.problems);
        if self.problems_more > 0 {
            problems.push(format!(
                "and {} more shards with a problem (each one's report says which)",
                fmt_int(self.problems_more)
            ));
        }
        m.error = (!problems.is_empty()).then(|| problems.join("; "));
        m.interrupted_by = self.interrupted_by;
        m.interrupted_connecting = self.interrupted_connecting;
        m.outcome = if !missing.is_empty() || !duplicated.is_empty() {
            "incomplete"
        } else if m.interrupted_by.is_some() {
            "interrupted"
        } else if m.error.is_some() {
            "incomplete"
        } else {
            "complete"
        }
        .into();
        m.shard = 0;
        m.shards = expected;
        m.merged = Some(MergedReport {
            reports: self.reports,
            shards_present: ranges_of(self.present.iter().copied()),
            shards_missing: missing,
            shards_duplicated: duplicated,
        });
        m.refused_on_reconnect = false;
        Ok(m)
    }
}

/// Checks the report's own figures before any of them is trusted, and decodes its
/// histograms: acknowledged within sent, failed what neither acknowledged nor rejected,
/// the workers' points the shard's, each histogram counting what it describes, an outcome
/// the counts allow.
fn check_figures(name: &str, r: &Report) -> Result<Hists, Error> {
    let c = Check { report: name };
    // QoS 1 and 2 count acknowledgements (PUBACK, PUBCOMP); QoS 0 none.
    let acknowledged = r.qos >= 1;
    c.that(r.qos <= 2, || format!("qos {} is not 0, 1 or 2", r.qos))?;
    c.that(
        r.points_acked.is_some() == acknowledged && r.messages_acked.is_some() == acknowledged,
        || {
            format!(
                "points_acked and messages_acked are {} at QoS {}",
                if acknowledged { "missing" } else { "set" },
                r.qos
            )
        },
    )?;
    let acked = r.points_acked.unwrap_or(0);
    let answered = acked
        .checked_add(r.points_rejected)
        .filter(|a| *a <= r.points_sent);
    let Some(answered) = answered else {
        return Err(c.fails(format!(
            "points_acked {} and points_rejected {} add up to more than points_sent {}",
            fmt_int(acked),
            fmt_int(r.points_rejected),
            fmt_int(r.points_sent)
        )));
    };
    let failed = if acknowledged {
        r.points_sent - answered
    } else {
        0
    };
    c.that(r.points_failed == failed, || {
        format!(
            "points_failed is {} but what points_acked and points_rejected leave of points_sent is {}",
            fmt_int(r.points_failed),
            fmt_int(failed)
        )
    })?;
    c.that(
        r.points_unsent == r.points_enqueued.saturating_sub(r.points_sent),
        || {
            format!(
                "points_unsent is {} but what points_sent leaves of points_enqueued is {}",
                fmt_int(r.points_unsent),
                fmt_int(r.points_enqueued.saturating_sub(r.points_sent))
            )
        },
    )?;
    let messages_acked = r.messages_acked.unwrap_or(0);
    c.that(messages_acked <= r.messages_sent, || {
        format!(
            "messages_acked {} is more than messages_sent {}",
            fmt_int(messages_acked),
            fmt_int(r.messages_sent)
        )
    })?;
    let workers = c.sum(
        "per_worker points_sent",
        r.per_worker.iter().map(|w| w.points_sent),
    )?;
    c.that(workers == r.points_sent, || {
        format!(
            "its per_worker points_sent add up to {}, not to its points_sent {}",
            fmt_int(workers),
            fmt_int(r.points_sent)
        )
    })?;

    let ack = c.histogram("ack", &r.histograms.ack_us)?;
    let lag = c.histogram("lag", &r.histograms.lag_us)?;
    let connect = c.histogram("connect", &r.histograms.connect_us)?;
    let count = |h: &Option<Histogram<u64>>| h.as_ref().map_or(0, Histogram::len);
    c.that(count(&ack) == messages_acked, || {
        format!(
            "its ack histogram counts {} acknowledgements but messages_acked is {}",
            fmt_int(count(&ack)),
            fmt_int(messages_acked)
        )
    })?;
    let writes = r.messages_sent.saturating_add(r.messages_resent);
    c.that(count(&lag) <= writes, || {
        format!(
            "its lag histogram counts {} writes but messages_sent and messages_resent are {}",
            fmt_int(count(&lag)),
            fmt_int(writes)
        )
    })?;
    c.that(count(&connect) <= r.connections.attempts, || {
        format!(
            "its connect histogram counts {} connects but connections.attempts is {}",
            fmt_int(count(&connect)),
            fmt_int(r.connections.attempts)
        )
    })?;

    match r.outcome.as_str() {
        "complete" => {
            let left = [
                ("error", u64::from(r.error.is_some())),
                ("interrupted_by", u64::from(r.interrupted_by.is_some())),
                ("points_failed", r.points_failed),
                ("points_unsent", r.points_unsent),
                ("points_rejected", r.points_rejected),
                ("points_dropped", r.points_dropped),
                ("points_dropped_offline", r.points_dropped_offline),
            ];
            if let Some((field, n)) = left.iter().find(|(_, n)| *n > 0) {
                return Err(c.fails(format!(
                    "its outcome is complete, with {field} {}",
                    if *field == "error" || *field == "interrupted_by" {
                        "set".to_string()
                    } else {
                        fmt_int(*n)
                    }
                )));
            }
            // Complete means every planned point was generated.
            if let Some(planned) = r.points_planned {
                c.that(r.points_enqueued >= planned, || {
                    format!(
                        "its outcome is complete, but it generated {} of the {} points planned",
                        fmt_int(r.points_enqueued),
                        fmt_int(planned)
                    )
                })?;
            }
        }
        "interrupted" => c.that(r.interrupted_by.is_some(), || {
            "its outcome is interrupted, without interrupted_by".into()
        })?,
        "incomplete" => c.that(r.error.is_some() && r.interrupted_by.is_none(), || {
            "its outcome is incomplete, without an error or with interrupted_by".into()
        })?,
        other => {
            return Err(c.fails(format!(
                "its outcome '{}' is none of complete, interrupted, incomplete",
                mqtt_tool::out::escape(other)
            )))
        }
    }
    Ok(Hists { ack, lag, connect })
}

/// Adds the counts of `r` into `m`, refusing a sum past 2^64 - 1.
fn add_counts(m: &mut Report, r: &Report, add: &Adding) -> Result<(), Error> {
    m.header.add(&r.header, add)?;
    // --verify: each shard verified its own devices (disjoint), so the sections add up.
    // A shard without one leaves the sum short of its devices, and says so.
    match (&mut m.delivery, &r.delivery) {
        (Some(d), Some(o)) => {
            d.merged_from = d.merged_from.max(1);
            d.merge(o)
                .map_err(|e| Error::usage(format!("{}: {e}", add.report)))?;
        }
        (None, None) => {}
        (mine, theirs) => {
            let d = mine.get_or_insert_with(|| theirs.clone().unwrap_or_default());
            let why = "some shards ran without --verify: delivery covers only the others";
            if d.error.as_deref() != Some(why) {
                d.error = Some(why.into());
            }
        }
    }
    add.count("points_enqueued", &mut m.points_enqueued, r.points_enqueued)?;
    add.count("points_sent", &mut m.points_sent, r.points_sent)?;
    add.opt("points_acked", &mut m.points_acked, r.points_acked)?;
    add.count("points_failed", &mut m.points_failed, r.points_failed)?;
    add.count("points_rejected", &mut m.points_rejected, r.points_rejected)?;
    add.count("points_unsent", &mut m.points_unsent, r.points_unsent)?;
    add.count("points_dropped", &mut m.points_dropped, r.points_dropped)?;
    add.count(
        "points_dropped_offline",
        &mut m.points_dropped_offline,
        r.points_dropped_offline,
    )?;
    add.count("messages_sent", &mut m.messages_sent, r.messages_sent)?;
    add.count("messages_resent", &mut m.messages_resent, r.messages_resent)?;
    add.count("pubrels_resent", &mut m.pubrels_resent, r.pubrels_resent)?;
    add.opt("messages_acked", &mut m.messages_acked, r.messages_acked)?;
    add.count("reconnects", &mut m.reconnects, r.reconnects)?;
    add.count("duplicate_acks", &mut m.duplicate_acks, r.duplicate_acks)?;
    add.count("acks_unknown_id", &mut m.acks_unknown_id, r.acks_unknown_id)?;
    add.count("latency_clamped", &mut m.latency_clamped, r.latency_clamped)?;
    add.count(
        "schedule_lag_clamped",
        &mut m.schedule_lag_clamped,
        r.schedule_lag_clamped,
    )?;
    add.count("bytes_sent", &mut m.bytes_sent, r.bytes_sent)?;
    add.count("window_clamped", &mut m.window_clamped, r.window_clamped)?;
    add.count("devices", &mut m.devices, r.devices)?;
    add.opt("points_planned", &mut m.points_planned, r.points_planned)?;
    add.secs("disconnected_s", &mut m.disconnected_s, r.disconnected_s)?;
    add.by_reason(
        "rejected_by_reason",
        &mut m.rejected_by_reason,
        &r.rejected_by_reason,
    )?;
    m.target_rate = match (m.target_rate, r.target_rate) {
        (Some(mut a), Some(b)) => {
            add.secs("target_rate", &mut a, b)?;
            Some(a)
        }
        _ => None,
    };
    m.device_start = m.device_start.min(r.device_start);
    m.receive_maximum = match (m.receive_maximum, r.receive_maximum) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };

    let (c, o) = (&mut m.connections, &r.connections);
    add.count("connections.planned", &mut c.planned, o.planned)?;
    add.count("connections.attempts", &mut c.attempts, o.attempts)?;
    add.count("connections.connected", &mut c.connected, o.connected)?;
    add.count("connections.failed", &mut c.failed, o.failed)?;
    add.count("connections.lost", &mut c.lost, o.lost)?;
    add.count("connections.losses", &mut c.losses, o.losses)?;
    add.count(
        "connections.sessions_resumed",
        &mut c.sessions_resumed,
        o.sessions_resumed,
    )?;
    add.by_reason(
        "connections.disconnects_by_reason",
        &mut c.disconnects_by_reason,
        &o.disconnects_by_reason,
    )?;
    add.count("connections.not_up", &mut c.not_up, o.not_up)?;
    add.count("connections.reconnected", &mut c.reconnected, o.reconnected)?;
    add.count(
        "connections.sessions_lost",
        &mut c.sessions_lost,
        o.sessions_lost,
    )?;
    add.count("connections.down_at_end", &mut c.down_at_end, o.down_at_end)?;
    add.count("connections.takeovers", &mut c.takeovers, o.takeovers)?;
    add.count(
        "connections.client_id_in_use",
        &mut c.client_id_in_use,
        o.client_id_in_use,
    )?;
    add.by_reason(
        "connections.failed_by_reason",
        &mut c.failed_by_reason,
        &o.failed_by_reason,
    )?;
    add.by_reason(
        "connections.attempts_failed_by_reason",
        &mut c.attempts_failed_by_reason,
        &o.attempts_failed_by_reason,
    )?;

    let (g, o) = (&mut m.generator, &r.generator);
    g.workers = g
        .workers
        .checked_add(o.workers)
        .ok_or_else(|| Error::usage(format!("{}: generator.workers overflows", add.report)))?;
    add.secs("generator.cpu_s", &mut g.cpu_s, o.cpu_s)?;
    g.busiest_worker_cpu_pct = g.busiest_worker_cpu_pct.max(o.busiest_worker_cpu_pct);
    g.peak_rss_mb = g.peak_rss_mb.max(o.peak_rss_mb);
    g.lag_grew |= o.lag_grew;
    g.limited |= o.limited;
    m.per_worker
        .extend(r.per_worker.iter().map(|w| WorkerReport {
            worker: 0,
            ..w.clone()
        }));
    Ok(())
}
