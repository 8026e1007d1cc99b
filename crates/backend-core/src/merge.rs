//! `loadgen merge` for backend-sub reports: the members of a share group, each of which saw
//! a part of every device's points, added up so that the group's delivery is proven.
//!
//! Every member lists each device's received seq ranges (`--report-devices` for fleets past
//! 1,000 devices); per device the ranges are united: what two members both received is a
//! duplicate, and what no member received inside the device's span (from seq 0 with
//! `--expect`) is missing. Histograms are added, so latency percentiles are exact.
//!
//! Members are added one at a time ([`Merge::add`]). Each is checked before it is trusted:
//! its ranges must add up to its devices' own unique counts (a range can claim 2^64 seqs),
//! its devices' counts to its totals, its histogram to the points it describes, its sink to
//! the points it stored. Counts are summed without wrapping.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::report::{DeviceReport, FrontendReport, Report, SlowDevice, SCHEMA_VERSION, SLOWEST};
use crate::verify::SeqRange;
use mqtt_tool::format::{fmt_int, round3, Percentiles};
use mqtt_tool::merge::{add_histogram, fmt_names, Adding, Check, Windows};
use mqtt_tool::out::escape;
use mqtt_tool::Error;

/// Members whose own failure the verdict names before it says how many more.
const PROBLEMS_NAMED: usize = 3;

/// Every device's ranges and counts, over the members so far.
struct Acc {
    ranges: Vec<(u64, u64)>,
    /// Seqs the members' ranges list, together (each member's own are disjoint).
    listed: u64,
    received: u64,
    duplicate: u64,
    out_of_order: u64,
    unverifiable: u64,
    latency_max_us: Option<u64>,
    first_retained: bool,
    frontend: Option<String>,
    /// Each member's seqs it missed while itself disconnected (one list per member that
    /// saw the device).
    missed: Vec<Vec<SeqRange>>,
}

/// What tells one member's report from a copy of it.
type Fingerprint = (Option<String>, Option<String>, u64, u64);

/// A merge of a share group's members in progress.
pub struct Merge {
    expect: Option<u64>,
    max_gap: Duration,
    m: Option<Report>,
    first_name: String,
    names: Vec<String>,
    fingerprints: Vec<Fingerprint>,
    by_device: BTreeMap<String, Acc>,
    frontends: BTreeMap<String, u64>,
    latency: Option<Histogram<u64>>,
    phases: mqtt_tool::phases::PhaseMerge,
    suback: Option<Histogram<u64>>,
    windows: Windows,
    sink: Option<crate::sink::SinkReport>,
    problems: Vec<String>,
    problems_more: u64,
    at_least_once: bool,
    accept_disconnected: bool,
    /// The members' outages, as many as a report lists.
    outages: Vec<crate::report::OutageReport>,
    frontend_clamped: BTreeMap<String, u64>,
}

impl Merge {
    /// A merge of a share group's members; `expect` is the group's total, `max_gap` the
    /// longest time between members' windows that still makes them one run.
    pub fn new(expect: Option<u64>, max_gap: Duration) -> Merge {
        Merge {
            expect,
            max_gap,
            m: None,
            first_name: String::new(),
            names: Vec::new(),
            fingerprints: Vec::new(),
            by_device: BTreeMap::new(),
            frontends: BTreeMap::new(),
            latency: None,
            phases: Default::default(),
            suback: None,
            windows: Windows::default(),
            sink: None,
            problems: Vec::new(),
            problems_more: 0,
            at_least_once: true,
            accept_disconnected: true,
            outages: Vec::new(),
            frontend_clamped: BTreeMap::new(),
        }
    }

    /// Adds the member's report `r`, named `name` (its path) in errors.
    pub fn add(&mut self, name: String, r: Report) -> Result<(), Error> {
        self.same_group(&name, &r)?;
        let latency = check_figures(&name, &r)?;
        let (start, end) = r.header.window(&Check { report: &name })?;
        self.windows.add(&name, start, end);
        let add = Adding {
            report: &name,
            before: &self.names,
        };
        for d in &r.devices {
            let a = self.by_device.entry(d.device_id.clone()).or_insert(Acc {
                ranges: Vec::new(),
                listed: 0,
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
            let field = |f: &str| format!("{f} of device {}", escape(&d.device_id));
            a.ranges
                .extend(d.received_ranges.iter().map(|r| (r.0, r.1)));
            // The member's ranges add up to its unique count (checked above).
            add.count(&field("received_ranges"), &mut a.listed, d.unique)?;
            add.count(&field("received"), &mut a.received, d.received)?;
            add.count(&field("duplicate"), &mut a.duplicate, d.duplicate)?;
            add.count(&field("out_of_order"), &mut a.out_of_order, d.out_of_order)?;
            add.count(&field("unverifiable"), &mut a.unverifiable, d.unverifiable)?;
            a.latency_max_us = a.latency_max_us.max(d.latency_max_us);
            a.first_retained |= d.first_retained;
        }
        for f in &r.frontends {
            let points = self.frontends.entry(f.name.clone()).or_default();
            add.count(
                &format!("points of frontend {}", escape(&f.name)),
                points,
                f.points,
            )?;
            let clamped = self.frontend_clamped.entry(f.name.clone()).or_default();
            add.count(
                &format!("latency_clamped of frontend {}", escape(&f.name)),
                clamped,
                f.latency_clamped,
            )?;
        }
        for o in &r.outages {
            if self.outages.len() < crate::outage::LISTED_OUTAGES {
                self.outages.push(o.clone());
            }
        }
        if let Some(k) = &r.sink {
            add_sink(&mut self.sink, k, &add)?;
        }
        add_histogram(&mut self.latency, latency)?;
        let c = Check { report: &name };
        self.phases.add(&c, &r.histograms.phases)?;
        add_histogram(
            &mut self.suback,
            c.histogram("suback", &r.histograms.suback_us)?,
        )?;
        if r.stopped_by == "failed" || r.stopped_by == "signal" {
            if self.problems.len() < PROBLEMS_NAMED {
                self.problems.push(format!(
                    "{name} stopped by {}{}",
                    r.stopped_by,
                    r.reason
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ));
            } else {
                self.problems_more += 1;
            }
        }
        self.at_least_once &= r.at_least_once;
        self.accept_disconnected &= r.accept_disconnected;
        match &mut self.m {
            None => {
                let mut r = r;
                // Kept per device and per frontend above; the merged lists are built at the end.
                r.devices = Vec::new();
                r.frontends = Vec::new();
                self.m = Some(r);
            }
            Some(m) => add_counts(m, &r, &add)?,
        }
        self.names.push(name);
        Ok(())
    }

    /// Whether `r` is a member this merge can take: mergeable, listing every range, of the
    /// group of the first, and not a copy of a member already added.
    fn same_group(&mut self, name: &str, r: &Report) -> Result<(), Error> {
        r.header.check_schema(name, "backend ", SCHEMA_VERSION)?;
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
        if let Some(first) = &self.m {
            if r.share_group != first.share_group {
                return Err(Error::usage(format!(
                    "{name} is of share group {:?} but {} of {:?}: these are different runs",
                    r.share_group.as_deref().map(escape),
                    self.first_name,
                    first.share_group.as_deref().map(escape)
                )));
            }
        } else {
            self.first_name = name.to_string();
        }
        // The same member twice (a copy, a second path) would count its points twice.
        let print = (
            r.header.started_at.clone(),
            r.header.ended_at.clone(),
            r.messages_received,
            r.bytes_received,
        );
        if let Some(i) = self.fingerprints.iter().position(|f| *f == print) {
            return Err(Error::usage(format!(
                "{name} and {} are the same member's report; give each member once",
                self.names[i]
            )));
        }
        self.fingerprints.push(print);
        Ok(())
    }

    /// The merged report.
    pub fn finish(mut self) -> Result<Report, Error> {
        let Some(mut m) = self.m.take() else {
            return Err(Error::usage("loadgen merge needs at least one report"));
        };
        self.windows.check_one_run(self.max_gap)?;
        let from_zero = self.expect.is_some();
        let at_least_once = self.at_least_once;
        let accept_disconnected = self.accept_disconnected;
        let members = self.names.len();
        let names = std::mem::take(&mut self.names);
        let total = |field: &'static str| {
            let names = &names;
            move |a: u64, b: u64| {
                a.checked_add(b).ok_or_else(|| {
                    Error::usage(format!(
                        "the group's {field} is more than {}: the members' seqs reach too far to count (reports {})",
                        fmt_int(u64::MAX),
                        fmt_names(names)
                    ))
                })
            }
        };

        let mut devices = Vec::with_capacity(self.by_device.len());
        for (id, a) in std::mem::take(&mut self.by_device) {
            // Each member's ranges add up to its unique count, so no length passes 2^64 - 1
            // but one range of all 2^64 seqs, which a member cannot have.
            let len = |(s, e): &(u64, u64)| (e - s).saturating_add(1);
            let union = unite(a.ranges);
            let unique = union.iter().map(len).try_fold(0, total("points_unique"))?;
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
                .try_fold(0, total("points_missing"))?;
            // What no member received and every member missed while it was itself
            // disconnected (a member that did not see the device vouches for nothing).
            let missed_ranges = if a.missed.len() == members {
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
                // member's own: the united ranges are within what the members listed.
                duplicate: total("points_duplicate")(a.duplicate, a.listed - unique)?,
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

        m.points_unique = devices
            .iter()
            .map(|d| d.unique)
            .try_fold(0, total("points_unique"))?;
        let missing = devices
            .iter()
            .map(|d| d.missing)
            .try_fold(0, total("points_missing"))?;
        m.points_missing = Some(missing);
        let missed = devices
            .iter()
            .map(|d| d.missed_disconnected)
            .fold(0, u64::saturating_add);
        m.points_missed_disconnected = Some(missed);
        m.accept_disconnected = accept_disconnected;
        m.outages = std::mem::take(&mut self.outages);
        m.points_duplicate = devices
            .iter()
            .map(|d| d.duplicate)
            .try_fold(0, total("points_duplicate"))?;
        m.expect = self.expect;
        m.at_least_once = at_least_once;
        m.disconnected_s = round3(m.disconnected_s);

        m.latency_us = self.latency.as_ref().and_then(Percentiles::of);
        m.histograms.latency_us = self.latency.as_ref().and_then(mqtt_tool::hist::encode);
        (m.connect_phases_us, m.histograms.phases) = self.phases.finish();
        m.suback_latency_us = self.suback.as_ref().and_then(Percentiles::of);
        m.histograms.suback_us = self.suback.as_ref().and_then(mqtt_tool::hist::encode);

        let w = self.windows.window();
        m.header.merged(&w);
        m.elapsed_s = round3(w.elapsed_s());
        m.point_rate = round3(w.per_s(m.points_received));
        m.message_rate = round3(w.per_s(m.messages_received));
        m.bytes_per_s = round3(w.per_s(m.bytes_received));
        m.sink = self.sink.take().map(|mut k| {
            if m.elapsed_s > 0.0 {
                k.rows_per_s = round3(k.rows_written as f64 / m.elapsed_s);
            }
            k
        });

        let frontend_clamped = std::mem::take(&mut self.frontend_clamped);
        m.frontends = self
            .frontends
            .into_iter()
            .map(|(name, points)| {
                let latency_clamped = frontend_clamped.get(&name).copied().unwrap_or(0);
                let ids: Vec<String> = devices
                    .iter()
                    .filter(|d| d.frontend.as_deref() == Some(name.as_str()))
                    .map(|d| d.device_id.clone())
                    .collect();
                FrontendReport {
                    name,
                    points,
                    device_count: ids.len() as u64,
                    devices: ids,
                    // Members' percentiles cannot be added: left out.
                    latency_us: None,
                    latency_clamped,
                }
            })
            .collect();
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
        let mut problems = std::mem::take(&mut self.problems);
        if self.problems_more > 0 {
            problems.push(format!(
                "and {} more members stopped early (each one's report says why)",
                fmt_int(self.problems_more)
            ));
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
                escape(&gappy[0].device_id),
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
                .map(|d| format!("{} ({})", escape(&d.device_id), fmt_int(d.duplicate)))
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
        if let Some(n) = self.expect {
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
        m.merged_reports = Some(names.len() as u64);
        Ok(m)
    }
}

/// Checks the member's own figures before any of them is trusted, and decodes its
/// histogram: each device's ranges disjoint and adding up to its unique count, its counts
/// to its received; the devices' counts to the report's; the histogram counting the points
/// it describes; the sink storing at most the unique points.
fn check_figures(name: &str, r: &Report) -> Result<Option<Histogram<u64>>, Error> {
    let c = Check { report: name };
    // A device listed twice would count its points twice and pass for two members.
    let mut ids: Vec<&str> = r.devices.iter().map(|d| d.device_id.as_str()).collect();
    ids.sort_unstable();
    if let Some(pair) = ids.windows(2).find(|p| p[0] == p[1]) {
        return Err(c.fails(format!("it lists device {} twice", escape(pair[0]))));
    }
    for d in &r.devices {
        let id = escape(&d.device_id);
        for pair in d.received_ranges.windows(2) {
            c.that(pair[1].0 > pair[0].1, || {
                format!(
                    "the received_ranges of device {id} overlap or are out of order ({} then {})",
                    pair[0], pair[1]
                )
            })?;
        }
        let mut lens = Vec::with_capacity(d.received_ranges.len());
        for r in &d.received_ranges {
            lens.push((r.1 - r.0).checked_add(1).ok_or_else(|| {
                c.fails(format!(
                    "the received_ranges of device {id} hold all 2^64 seqs ({r}), but it received {} unique",
                    fmt_int(d.unique)
                ))
            })?);
        }
        let listed = c.sum(&format!("received_ranges of device {id}"), lens)?;
        c.that(listed == d.unique, || {
            format!(
                "the received_ranges of device {id} hold {} seqs, but it received {} unique",
                fmt_int(listed),
                fmt_int(d.unique)
            )
        })?;
        let parts = c.sum(
            &format!("unique, duplicate and unverifiable of device {id}"),
            [d.unique, d.duplicate, d.unverifiable],
        )?;
        c.that(parts == d.received, || {
            format!(
                "device {id} received {} points, but its unique, duplicate and unverifiable add up to {}",
                fmt_int(d.received),
                fmt_int(parts)
            )
        })?;
        c.that(d.out_of_order <= d.unique, || {
            format!(
                "device {id} has {} points out of order, more than its {} unique",
                fmt_int(d.out_of_order),
                fmt_int(d.unique)
            )
        })?;
    }
    let devices = |field: &str, f: fn(&DeviceReport) -> u64| {
        c.sum(&format!("devices' {field}"), r.devices.iter().map(f))
    };
    let received = devices("received", |d| d.received)?;
    for (field, total, sum) in [
        (
            "points_unique",
            r.points_unique,
            devices("unique", |d| d.unique)?,
        ),
        (
            "points_duplicate",
            r.points_duplicate,
            devices("duplicate", |d| d.duplicate)?,
        ),
        (
            "points_unverifiable",
            r.points_unverifiable,
            devices("unverifiable", |d| d.unverifiable)?,
        ),
        (
            "points_out_of_order",
            r.points_out_of_order,
            devices("out_of_order", |d| d.out_of_order)?,
        ),
        (
            "points_received",
            r.points_received,
            c.sum(
                "devices' received and points_untracked",
                [received, r.points_untracked],
            )?,
        ),
        ("devices_seen", r.devices_seen, r.devices.len() as u64),
    ] {
        c.that(total == sum, || {
            format!(
                "{field} is {} but its devices add up to {}",
                fmt_int(total),
                fmt_int(sum)
            )
        })?;
    }
    let routed = c.sum(
        "frontends' points and points_unrouted",
        r.frontends
            .iter()
            .map(|f| f.points)
            .chain([r.points_unrouted]),
    )?;
    c.that(routed == received, || {
        format!(
            "its frontends' points and points_unrouted add up to {}, but its devices received {}",
            fmt_int(routed),
            fmt_int(received)
        )
    })?;
    c.that(r.verified == r.reason.is_none(), || {
        format!(
            "verified is {} {} a reason",
            r.verified,
            if r.reason.is_some() {
                "with"
            } else {
                "without"
            }
        )
    })?;
    let latency = c.histogram("latency", &r.histograms.latency_us)?;
    let counted = latency.as_ref().map_or(0, Histogram::len);
    c.that(counted == received, || {
        format!(
            "its latency histogram counts {} points, but its devices received {} (points_received less points_untracked)",
            fmt_int(counted),
            fmt_int(received)
        )
    })?;
    if let Some(k) = &r.sink {
        let rows = c.sum(
            "sink rows_written, rows_failed and rows_rejected",
            [k.rows_written, k.rows_failed, k.rows_rejected],
        )?;
        c.that(rows <= r.points_unique, || {
            format!(
                "its sink's rows_written, rows_failed and rows_rejected add up to {}, more than its {} unique points",
                fmt_int(rows),
                fmt_int(r.points_unique)
            )
        })?;
    }
    Ok(latency)
}

/// Adds the member's totals into `m`'s, refusing a sum past 2^64 - 1.
fn add_counts(m: &mut Report, r: &Report, add: &Adding) -> Result<(), Error> {
    m.header.add(&r.header, add)?;
    add.count("points_received", &mut m.points_received, r.points_received)?;
    add.count(
        "points_out_of_order",
        &mut m.points_out_of_order,
        r.points_out_of_order,
    )?;
    add.count(
        "points_unverifiable",
        &mut m.points_unverifiable,
        r.points_unverifiable,
    )?;
    add.count("points_unrouted", &mut m.points_unrouted, r.points_unrouted)?;
    add.count(
        "points_untracked",
        &mut m.points_untracked,
        r.points_untracked,
    )?;
    add.count(
        "messages_received",
        &mut m.messages_received,
        r.messages_received,
    )?;
    add.count("legacy_messages", &mut m.legacy_messages, r.legacy_messages)?;
    add.count("batch_messages", &mut m.batch_messages, r.batch_messages)?;
    add.count(
        "malformed_messages",
        &mut m.malformed_messages,
        r.malformed_messages,
    )?;
    add.count(
        "retained_messages",
        &mut m.retained_messages,
        r.retained_messages,
    )?;
    add.count("bytes_received", &mut m.bytes_received, r.bytes_received)?;
    add.count("takeovers", &mut m.takeovers, r.takeovers)?;
    add.count(
        "connections_lost",
        &mut m.connections_lost,
        r.connections_lost,
    )?;
    add.count("reconnects", &mut m.reconnects, r.reconnects)?;
    add.count(
        "packets_truncated",
        &mut m.packets_truncated,
        r.packets_truncated,
    )?;
    add.count("latency_clamped", &mut m.latency_clamped, r.latency_clamped)?;
    add.secs("disconnected_s", &mut m.disconnected_s, r.disconnected_s)
}

/// Adds a member's sink into the group's: counts summed without wrapping; the rate is set
/// over the merged window at the end.
fn add_sink(
    into: &mut Option<crate::sink::SinkReport>,
    k: &crate::sink::SinkReport,
    add: &Adding,
) -> Result<(), Error> {
    let m = into.get_or_insert_with(|| crate::sink::SinkReport {
        database: k.database.clone(),
        table: k.table.clone(),
        connections: 0,
        batch_rows: k.batch_rows,
        ..Default::default()
    });
    add.count("sink.connections", &mut m.connections, k.connections)?;
    add.count("sink.rows_written", &mut m.rows_written, k.rows_written)?;
    add.count("sink.rows_failed", &mut m.rows_failed, k.rows_failed)?;
    add.count("sink.rows_rejected", &mut m.rows_rejected, k.rows_rejected)?;
    add.count("sink.batches", &mut m.batches, k.batches)?;
    add.count(
        "sink.batches_failed",
        &mut m.batches_failed,
        k.batches_failed,
    )?;
    add.count("sink.retries", &mut m.retries, k.retries)?;
    m.paused_s = m.paused_s.max(k.paused_s);
    m.max_buffered_rows = m.max_buffered_rows.max(k.max_buffered_rows);
    for e in &k.errors {
        if m.errors.len() < 5 {
            m.errors.push(e.clone());
        }
    }
    Ok(())
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
