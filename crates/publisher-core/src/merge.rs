//! `loadgen merge` for publisher reports: the shards of one run added up into one report.
//!
//! Counts are summed; histograms (carried in each report, [`mqtt_tool::hist`]) are added, so
//! the merged percentiles are those of the union of the samples, never an average of
//! percentiles; the window runs from the earliest start to the latest end, and the rates are
//! over that window. A merge that lacks a shard (or has one twice) says which, and fails.

use std::collections::BTreeMap;
use std::time::SystemTime;

use hdrhistogram::Histogram;
use mqtt_tool::hist::Window;

use crate::error::Error;
use crate::format::{round3, Percentiles};
use crate::report::{fmt_list, rfc3339, MergedReport, Report, WorkerReport, SCHEMA_VERSION};

/// Merges the reports of one sharded run. `shards` is the number expected (default: what the
/// reports say, which must agree). `names` name the reports in errors (their paths).
pub fn merge(reports: Vec<(String, Report)>, shards: Option<u64>) -> Result<Report, Error> {
    let Some((first_name, first)) = reports.first() else {
        return Err(Error::usage("loadgen merge needs at least one report"));
    };
    for (name, r) in &reports {
        if r.schema_version != SCHEMA_VERSION {
            return Err(Error::usage(format!(
                "{name} is a report of schema {}; merging needs schema {SCHEMA_VERSION} (histograms in the report): rerun it with this version",
                r.schema_version
            )));
        }
        if r.merged.is_some() {
            return Err(Error::usage(format!(
                "{name} is a merged report already; merge the shards' own reports"
            )));
        }
        for (what, a, b) in [
            ("tool", r.tool.as_str(), first.tool.as_str()),
            ("topic", r.topic.as_str(), first.topic.as_str()),
        ] {
            if a != b {
                return Err(Error::usage(format!(
                    "{name} has {what} '{a}' but {first_name} has '{b}': these are reports of different runs"
                )));
            }
        }
        if r.qos != first.qos || r.batch != first.batch {
            return Err(Error::usage(format!(
                "{name} ran QoS {} with --batch {}, {first_name} QoS {} with --batch {}: these are reports of different runs",
                r.qos, r.batch, first.qos, first.batch
            )));
        }
        if r.shards != shards.unwrap_or(first.shards) {
            return Err(Error::usage(format!(
                "{name} is a shard of a run of {} shards, not {}: these are reports of different runs",
                r.shards,
                shards.unwrap_or(first.shards)
            )));
        }
        // Shards of one run waited for the same --start-at; a report left from another run
        // (a shard that died before writing its own) has another.
        if r.start_at != first.start_at {
            return Err(Error::usage(format!(
                "{name} started at --start-at {} but {first_name} at {}: a report of another run? \
                 Remove the old reports before a new run",
                r.start_at.as_deref().unwrap_or("none"),
                first.start_at.as_deref().unwrap_or("none")
            )));
        }
    }
    let expected = shards.unwrap_or(first.shards).max(1);
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut duplicated = Vec::new();
    let mut counted = Vec::new();
    for (i, (_, r)) in reports.iter().enumerate() {
        if r.shard >= expected {
            return Err(Error::usage(format!(
                "{} is shard {} of {}, which a run of {expected} shards does not have",
                reports[i].0, r.shard, r.shards
            )));
        }
        if seen.insert(r.shard, i).is_some() {
            duplicated.push(r.shard);
        } else {
            counted.push(i);
        }
    }
    let present: Vec<u64> = seen.keys().copied().collect();
    let missing: Vec<u64> = (0..expected).filter(|s| !seen.contains_key(s)).collect();
    duplicated.sort_unstable();
    duplicated.dedup();
    let parts: Vec<&Report> = counted.iter().map(|&i| &reports[i].1).collect();

    let mut m = first.clone();
    let sum = |f: fn(&Report) -> u64| parts.iter().map(|r| f(r)).sum::<u64>();
    let opt_sum = |f: fn(&Report) -> Option<u64>| -> Option<u64> {
        parts.iter().map(|r| f(r)).sum::<Option<u64>>()
    };
    m.points_enqueued = sum(|r| r.points_enqueued);
    m.points_sent = sum(|r| r.points_sent);
    m.points_acked = opt_sum(|r| r.points_acked);
    m.points_failed = sum(|r| r.points_failed);
    m.points_rejected = sum(|r| r.points_rejected);
    m.points_unsent = sum(|r| r.points_unsent);
    m.points_dropped = sum(|r| r.points_dropped);
    m.points_dropped_offline = sum(|r| r.points_dropped_offline);
    m.messages_sent = sum(|r| r.messages_sent);
    m.messages_resent = sum(|r| r.messages_resent);
    m.messages_acked = opt_sum(|r| r.messages_acked);
    m.reconnects = sum(|r| r.reconnects);
    m.duplicate_acks = sum(|r| r.duplicate_acks);
    m.bytes_sent = sum(|r| r.bytes_sent);
    m.window_clamped = sum(|r| r.window_clamped);
    m.devices = sum(|r| r.devices);
    m.points_planned = opt_sum(|r| r.points_planned);
    m.disconnected_s = round3(parts.iter().map(|r| r.disconnected_s).sum());
    m.device_start = parts.iter().map(|r| r.device_start).min().unwrap_or(0);
    m.receive_maximum = parts.iter().filter_map(|r| r.receive_maximum).min();
    m.target_rate = parts.iter().map(|r| r.target_rate).sum::<Option<f64>>();
    m.rejected_by_reason = add_maps(parts.iter().map(|r| &r.rejected_by_reason));

    let c = &mut m.connections;
    let csum = |f: fn(&crate::report::ConnectionsReport) -> u64| {
        parts.iter().map(|r| f(&r.connections)).sum::<u64>()
    };
    c.planned = csum(|c| c.planned);
    c.attempts = csum(|c| c.attempts);
    c.connected = csum(|c| c.connected);
    c.failed = csum(|c| c.failed);
    c.lost = csum(|c| c.lost);
    c.not_up = csum(|c| c.not_up);
    c.reconnected = csum(|c| c.reconnected);
    c.sessions_lost = csum(|c| c.sessions_lost);
    c.down_at_end = csum(|c| c.down_at_end);
    c.failed_by_reason = add_maps(parts.iter().map(|r| &r.connections.failed_by_reason));
    c.attempts_failed_by_reason = add_maps(
        parts
            .iter()
            .map(|r| &r.connections.attempts_failed_by_reason),
    );
    // The fleet was up when its last shard was.
    c.ramp_s = parts
        .iter()
        .map(|r| r.connections.ramp_s)
        .collect::<Option<Vec<f64>>>()
        .and_then(|v| v.into_iter().reduce(f64::max));

    let hist = |f: fn(&Report) -> &Option<String>| -> Result<Option<Histogram<u64>>, Error> {
        mqtt_tool::hist::sum(
            counted
                .iter()
                .map(|&i| (reports[i].0.as_str(), f(&reports[i].1))),
        )
    };
    let ack = hist(|r| &r.histograms.ack_us)?;
    let lag = hist(|r| &r.histograms.lag_us)?;
    let connect = hist(|r| &r.histograms.connect_us)?;
    m.latency_us = ack.as_ref().and_then(Percentiles::of);
    m.schedule_lag_us = lag.as_ref().and_then(Percentiles::of);
    m.connect_latency_us = connect.as_ref().and_then(Percentiles::of);
    m.histograms.ack_us = ack.as_ref().and_then(mqtt_tool::hist::encode);
    m.histograms.lag_us = lag.as_ref().and_then(mqtt_tool::hist::encode);
    m.histograms.connect_us = connect.as_ref().and_then(mqtt_tool::hist::encode);

    // The window: the earliest start to the latest end, and the rates over it.
    let times = |f: fn(&Report) -> &Option<String>| -> Result<Vec<SystemTime>, Error> {
        let mut v = Vec::new();
        for (i, r) in parts.iter().enumerate() {
            if let Some(t) = f(r) {
                v.push(humantime::parse_rfc3339(t).map_err(|e| {
                    Error::usage(format!("{}: bad time '{t}' ({e})", reports[counted[i]].0))
                })?);
            }
        }
        Ok(v)
    };
    let w = Window::of(times(|r| &r.started_at)?, times(|r| &r.ended_at)?);
    m.started_at = w.start.map(rfc3339);
    m.ended_at = w.end.map(rfc3339);
    let per_s = |n: u64| w.per_s(n);
    m.elapsed_s = round3(w.elapsed_s());
    m.point_rate = round3(per_s(m.points_sent));
    m.message_rate = round3(per_s(m.messages_sent));
    m.bytes_per_s = round3(per_s(m.bytes_sent));
    m.target_pct = m.target_rate.map(|r| round3(100.0 * m.point_rate / r));
    // Each shard's rate after its own ramp does not add up to the fleet's: left out.
    m.steady_point_rate = None;

    let g = &mut m.generator;
    g.workers = parts.iter().map(|r| r.generator.workers).sum();
    g.cpu_s = round3(parts.iter().map(|r| r.generator.cpu_s).sum());
    g.busiest_worker_cpu_pct = parts
        .iter()
        .map(|r| r.generator.busiest_worker_cpu_pct)
        .fold(0.0, f64::max);
    g.peak_rss_mb = parts
        .iter()
        .map(|r| r.generator.peak_rss_mb)
        .fold(0.0, f64::max);
    g.lag_grew = parts.iter().any(|r| r.generator.lag_grew);
    g.limited = parts.iter().any(|r| r.generator.limited);
    g.note = parts.iter().find_map(|r| {
        r.generator
            .note
            .as_ref()
            .map(|n| format!("shard {}: {n}", r.shard))
    });
    m.per_worker = parts
        .iter()
        .flat_map(|r| r.per_worker.iter())
        .enumerate()
        .map(|(i, w)| WorkerReport {
            worker: i,
            ..w.clone()
        })
        .collect();

    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "shards {} of {expected} are missing: the merged figures lack their devices",
            fmt_list(&missing)
        ));
    }
    if !duplicated.is_empty() {
        problems.push(format!(
            "shards {} were given more than once; each was counted once",
            fmt_list(&duplicated)
        ));
    }
    for r in &parts {
        if let Some(e) = &r.error {
            problems.push(format!("shard {}: {e}", r.shard));
        } else if let Some(sig) = &r.interrupted_by {
            // Interrupted after a clean flush: what it sent is counted, the rest of its
            // share never went out.
            problems.push(format!(
                "shard {} was interrupted by {sig}{}",
                r.shard,
                if r.interrupted_connecting {
                    " while connecting: it sent nothing"
                } else {
                    ""
                }
            ));
        }
    }
    m.error = (!problems.is_empty()).then(|| problems.join("; "));
    m.interrupted_by = parts.iter().find_map(|r| r.interrupted_by.clone());
    m.interrupted_connecting = parts.iter().any(|r| r.interrupted_connecting);
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
    m.thresholds = Vec::new();
    m.shard = 0;
    m.shards = expected;
    m.merged = Some(MergedReport {
        reports: reports.len() as u64,
        shards_present: present,
        shards_missing: missing,
        shards_duplicated: duplicated,
    });
    m.refused_on_reconnect = false;
    Ok(m)
}

fn add_maps<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}
