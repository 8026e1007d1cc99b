//! `loadgen merge` for backend-sub reports: the members of a share group, each of which saw
//! a part of every device's points, added up so that the group's delivery is proven.
//!
//! Every member lists each device's received seq ranges (`--report-devices` for fleets past
//! 1,000 devices); per device the ranges are united: what two members both received is a
//! duplicate, and what no member received inside the device's span (from seq 0 with
//! `--expect`) is missing. Histograms are added, so latency percentiles are exact.

use std::collections::BTreeMap;

use crate::report::{DeviceReport, FrontendReport, Report, SlowDevice, SCHEMA_VERSION, SLOWEST};
use crate::verify::SeqRange;
use mqtt_tool::format::{fmt_int, round3, Percentiles};
use mqtt_tool::Error;

/// Merges the reports of a share group's members; `expect` is the group's total.
pub fn merge(reports: Vec<(String, Report)>, expect: Option<u64>) -> Result<Report, Error> {
    let Some((first_name, first)) = reports.first() else {
        return Err(Error::usage("loadgen merge needs at least one report"));
    };
    for (name, r) in &reports {
        if r.schema_version != SCHEMA_VERSION {
            return Err(Error::usage(format!(
                "{name} is a backend report of schema {}; merging needs schema {SCHEMA_VERSION}: rerun it with this version",
                r.schema_version
            )));
        }
        if r.merged_reports.is_some() {
            return Err(Error::usage(format!(
                "{name} is a merged report already; merge the members' own reports"
            )));
        }
        if r.devices_listed != "all" || r.devices.iter().any(|d| d.ranges_truncated) {
            return Err(Error::usage(format!(
                "{name} does not list every device's received ranges in full; run the members with --report-devices so that the merge can prove delivery"
            )));
        }
        if r.share_group != first.share_group {
            return Err(Error::usage(format!(
                "{name} is of share group {:?} but {first_name} of {:?}: these are different runs",
                r.share_group, first.share_group
            )));
        }
    }
    // The same member twice (a copy, a second path) would count its points twice.
    for (i, (name, r)) in reports.iter().enumerate() {
        let same = |o: &Report| {
            o.started_at == r.started_at
                && o.ended_at == r.ended_at
                && o.messages_received == r.messages_received
                && o.bytes_received == r.bytes_received
        };
        if let Some((other, _)) = reports[..i].iter().find(|(_, o)| same(o)) {
            return Err(Error::usage(format!(
                "{name} and {other} are the same member's report; give each member once"
            )));
        }
    }
    let from_zero = expect.is_some();
    let at_least_once = reports.iter().all(|(_, r)| r.at_least_once);
    let accept_disconnected = reports.iter().all(|(_, r)| r.accept_disconnected);

    // Every device's ranges, over all members.
    struct Acc {
        ranges: Vec<(u64, u64)>,
        received: u64,
        duplicate: u64,
        out_of_order: u64,
        unverifiable: u64,
        latency_max_us: Option<u64>,
        first_retained: bool,
        frontend: Option<String>,
        /// Each member's seqs missed while it was disconnected.
        missed: Vec<Vec<SeqRange>>,
    }
    let mut by_device: BTreeMap<String, Acc> = BTreeMap::new();
    for (_, r) in &reports {
        for d in &r.devices {
            let a = by_device.entry(d.device_id.clone()).or_insert(Acc {
                ranges: Vec::new(),
                received: 0,
                duplicate: 0,
                out_of_order: 0,
                unverifiable: 0,
                latency_max_us: None,
                first_retained: false,
                frontend: d.frontend.clone(),
                missed: Vec::new(),
            });
            a.missed.push(d.missed_disconnected_ranges.clone());
            a.ranges
                .extend(d.received_ranges.iter().map(|r| (r.0, r.1)));
            a.received = a.received.saturating_add(d.received);
            a.duplicate = a.duplicate.saturating_add(d.duplicate);
            a.out_of_order = a.out_of_order.saturating_add(d.out_of_order);
            a.unverifiable = a.unverifiable.saturating_add(d.unverifiable);
            a.latency_max_us = a.latency_max_us.max(d.latency_max_us);
            a.first_retained |= d.first_retained;
        }
    }
    let mut devices = Vec::with_capacity(by_device.len());
    for (id, a) in by_device {
        // Saturating: a report's ranges come from outside (0-18446744073709551615).
        let len = |(s, e): &(u64, u64)| (e - s).saturating_add(1);
        let listed = a.ranges.iter().map(len).fold(0u64, u64::saturating_add);
        let union = unite(a.ranges);
        let unique = union.iter().map(len).fold(0u64, u64::saturating_add);
        let span_start = if from_zero {
            0
        } else {
            union.first().map_or(0, |r| r.0)
        };
        let mut missing_ranges = Vec::new();
        let mut at = span_start;
        for (s, e) in &union {
            if *s > at {
                missing_ranges.push(SeqRange(at, s - 1));
            }
            at = e.saturating_add(1);
        }
        let missing = missing_ranges
            .iter()
            .map(|r| r.len())
            .fold(0u64, u64::saturating_add);
        // What no member received and every member missed while it was itself
        // disconnected (a member that did not see the device vouches for nothing).
        let missed_ranges = if a.missed.len() == reports.len() {
            crate::outage::missed_by_all(&a.missed, &missing_ranges, usize::MAX)
        } else {
            Vec::new()
        };
        let missed = missed_ranges
            .iter()
            .map(|r| r.len())
            .fold(0u64, u64::saturating_add);
        devices.push(DeviceReport {
            device_id: id,
            frontend: a.frontend,
            received: a.received,
            unique,
            missing,
            // A seq two members both got is a duplicate of the group's, besides each
            // member's own.
            duplicate: a.duplicate.saturating_add(listed.saturating_sub(unique)),
            duplicates_accepted: at_least_once,
            out_of_order: a.out_of_order,
            unverifiable: a.unverifiable,
            first_seq: None,
            last_seq: None,
            min_seq: union.first().map(|r| r.0),
            max_seq: union.last().map(|r| r.1),
            missing_ranges,
            missed_disconnected: missed,
            missed_disconnected_ranges: missed_ranges,
            disconnected_accepted: accept_disconnected,
            received_ranges: union.iter().map(|(s, e)| SeqRange(*s, *e)).collect(),
            ranges_truncated: false,
            latency_max_us: a.latency_max_us,
            first_retained: a.first_retained,
        });
    }

    let mut m = first.clone();
    let parts: Vec<&Report> = reports.iter().map(|(_, r)| r).collect();
    let sum = |f: fn(&Report) -> u64| parts.iter().map(|r| f(r)).fold(0u64, u64::saturating_add);
    m.points_received = sum(|r| r.points_received);
    m.points_out_of_order = sum(|r| r.points_out_of_order);
    m.points_unverifiable = sum(|r| r.points_unverifiable);
    m.points_unrouted = sum(|r| r.points_unrouted);
    m.points_untracked = sum(|r| r.points_untracked);
    m.messages_received = sum(|r| r.messages_received);
    m.packets_truncated = sum(|r| r.packets_truncated);
    m.latency_clamped = sum(|r| r.latency_clamped);
    m.legacy_messages = sum(|r| r.legacy_messages);
    m.batch_messages = sum(|r| r.batch_messages);
    m.malformed_messages = sum(|r| r.malformed_messages);
    m.retained_messages = sum(|r| r.retained_messages);
    m.bytes_received = sum(|r| r.bytes_received);
    m.connections_lost = sum(|r| r.connections_lost);
    m.reconnects = sum(|r| r.reconnects);
    m.disconnected_s = round3(parts.iter().map(|r| r.disconnected_s).sum());
    m.points_unique = devices
        .iter()
        .map(|d| d.unique)
        .fold(0, u64::saturating_add);
    let missing = devices
        .iter()
        .map(|d| d.missing)
        .fold(0, u64::saturating_add);
    m.points_missing = Some(missing);
    let missed = devices
        .iter()
        .map(|d| d.missed_disconnected)
        .fold(0, u64::saturating_add);
    m.points_missed_disconnected = Some(missed);
    m.accept_disconnected = accept_disconnected;
    m.outages = parts
        .iter()
        .flat_map(|r| r.outages.iter().cloned())
        .take(crate::outage::LISTED_OUTAGES)
        .collect();
    m.points_duplicate = devices
        .iter()
        .map(|d| d.duplicate)
        .fold(0, u64::saturating_add);
    m.expect = expect;
    m.at_least_once = at_least_once;

    let latency = mqtt_tool::hist::sum(
        reports
            .iter()
            .map(|(name, r)| (name.as_str(), &r.histograms.latency_us)),
    )?;
    m.latency_us = latency.as_ref().and_then(Percentiles::of);
    m.histograms.latency_us = latency.as_ref().and_then(mqtt_tool::hist::encode);

    let times = |f: fn(&Report) -> &Option<String>| -> Vec<std::time::SystemTime> {
        parts
            .iter()
            .filter_map(|r| {
                f(r).as_deref()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
            })
            .collect()
    };
    let w = mqtt_tool::hist::Window::of(times(|r| &r.started_at), times(|r| &r.ended_at));
    m.started_at = w
        .start
        .map(|t| humantime::format_rfc3339_micros(t).to_string());
    m.ended_at = w
        .end
        .map(|t| humantime::format_rfc3339_micros(t).to_string());
    let per_s = |n: u64| w.per_s(n);
    m.elapsed_s = round3(w.elapsed_s());
    m.point_rate = round3(per_s(m.points_received));
    m.sink = merge_sinks(parts.iter().filter_map(|r| r.sink.as_ref()), m.elapsed_s);
    m.message_rate = round3(per_s(m.messages_received));
    m.bytes_per_s = round3(per_s(m.bytes_received));

    let mut frontends: BTreeMap<String, FrontendReport> = BTreeMap::new();
    for r in &parts {
        for f in &r.frontends {
            let e = frontends.entry(f.name.clone()).or_insert(FrontendReport {
                name: f.name.clone(),
                points: 0,
                device_count: 0,
                devices: Vec::new(),
                // Members' percentiles cannot be added: left out.
                latency_us: None,
                latency_clamped: 0,
            });
            e.points = e.points.saturating_add(f.points);
            e.latency_clamped = e.latency_clamped.saturating_add(f.latency_clamped);
        }
    }
    for f in frontends.values_mut() {
        let ids: Vec<String> = devices
            .iter()
            .filter(|d| d.frontend.as_deref() == Some(f.name.as_str()))
            .map(|d| d.device_id.clone())
            .collect();
        f.device_count = ids.len() as u64;
        f.devices = ids;
    }
    m.frontends = frontends.into_values().collect();
    let mut slow: Vec<SlowDevice> = devices
        .iter()
        .filter_map(|d| {
            d.latency_max_us.map(|l| SlowDevice {
                device_id: d.device_id.clone(),
                frontend: d.frontend.clone(),
                latency_max_us: l,
            })
        })
        .collect();
    slow.sort_by(|a, b| {
        b.latency_max_us
            .cmp(&a.latency_max_us)
            .then(a.device_id.cmp(&b.device_id))
    });
    slow.truncate(SLOWEST);
    m.slowest_devices = slow;
    m.devices_seen = devices.len() as u64;
    m.devices_failing = devices.iter().filter(|d| d.failing()).count() as u64;
    m.devices_listed = "all".into();

    // The verdict of the group.
    let mut problems = Vec::new();
    for (name, r) in &reports {
        if r.stopped_by == "failed" || r.stopped_by == "signal" {
            problems.push(format!(
                "{name} stopped by {}{}",
                r.stopped_by,
                r.reason
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(problem) = m
        .sink
        .as_ref()
        .and_then(crate::sink::SinkReport::not_stored)
    {
        problems.push(problem);
    }
    if missing > 0 && !(accept_disconnected && missed == missing) {
        let gappy: Vec<&DeviceReport> = devices.iter().filter(|d| d.missing > 0).collect();
        let gaps: Vec<String> = gappy[0]
            .missing_ranges
            .iter()
            .take(10)
            .map(|r| r.to_string())
            .collect();
        problems.push(format!(
            "no member received {} points{}: {} on {} ({}){}",
            fmt_int(missing),
            if missed > 0 {
                format!(
                    " ({} of them due while every member was disconnected)",
                    fmt_int(missed)
                )
            } else {
                String::new()
            },
            fmt_int(gappy[0].missing),
            gappy[0].device_id,
            gaps.join(", "),
            if gappy.len() > 1 {
                format!(
                    ", and more on {} other devices",
                    fmt_int(gappy.len() as u64 - 1)
                )
            } else {
                String::new()
            }
        ));
    }
    if m.points_duplicate > 0 && !at_least_once {
        let on: Vec<String> = devices
            .iter()
            .filter(|d| d.duplicate > 0)
            .take(3)
            .map(|d| format!("{} ({})", d.device_id, fmt_int(d.duplicate)))
            .collect();
        problems.push(format!(
            "{} duplicate points over the group, on {}",
            fmt_int(m.points_duplicate),
            on.join(", ")
        ));
    }
    if m.points_unverifiable > 0 {
        problems.push(format!(
            "{} points arrived too late to verify",
            fmt_int(m.points_unverifiable)
        ));
    }
    if m.points_untracked > 0 {
        problems.push(format!(
            "{} points came from devices beyond a member's --max-devices and were not verified",
            fmt_int(m.points_untracked)
        ));
    }
    if m.malformed_messages > 0 {
        problems.push(format!(
            "{} malformed messages",
            fmt_int(m.malformed_messages)
        ));
    }
    if let Some(n) = expect {
        if m.points_unique != n {
            problems.push(format!(
                "expected {} unique points over the group, {} arrived",
                fmt_int(n),
                fmt_int(m.points_unique)
            ));
        }
    } else if m.messages_received == 0 {
        problems.push("no message arrived at any member".into());
    }
    m.devices = devices;
    m.reason = (!problems.is_empty()).then(|| problems.join("; "));
    m.verified = m.reason.is_none();
    m.thresholds = Vec::new();
    m.merged_reports = Some(reports.len() as u64);
    Ok(m)
}

/// Sorted, overlapping or adjacent ranges joined.
fn unite(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        match out.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The members' sinks added up: counts summed, the rate over the merged window.
fn merge_sinks<'a>(
    sinks: impl Iterator<Item = &'a crate::sink::SinkReport>,
    elapsed_s: f64,
) -> Option<crate::sink::SinkReport> {
    let mut out: Option<crate::sink::SinkReport> = None;
    for k in sinks {
        let m = out.get_or_insert_with(|| crate::sink::SinkReport {
            database: k.database.clone(),
            table: k.table.clone(),
            connections: 0,
            batch_rows: k.batch_rows,
            ..Default::default()
        });
        m.connections += k.connections;
        m.rows_written += k.rows_written;
        m.rows_failed += k.rows_failed;
        m.rows_rejected += k.rows_rejected;
        m.batches += k.batches;
        m.batches_failed += k.batches_failed;
        m.retries += k.retries;
        m.paused_s = m.paused_s.max(k.paused_s);
        m.max_buffered_rows = m.max_buffered_rows.max(k.max_buffered_rows);
        for e in &k.errors {
            if m.errors.len() < 5 {
                m.errors.push(e.clone());
            }
        }
    }
    if let Some(m) = out.as_mut() {
        if elapsed_s > 0.0 {
            m.rows_per_s = round3(m.rows_written as f64 / elapsed_s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unite;

    #[test]
    fn ranges_unite_over_overlaps_and_neighbours() {
        assert_eq!(
            unite(vec![(5, 9), (0, 2), (3, 4), (8, 12), (20, 20)]),
            [(0, 12), (20, 20)]
        );
        assert_eq!(unite(vec![]), []);
    }
}
