//! The backend's own outages, and the points it missed during them.
//!
//! A clean-session subscriber that loses its connection is sent nothing until it has
//! subscribed again: the broker does not queue for it. Points published meanwhile never
//! reach it, and without more they would read as the broker's loss. So each outage is kept
//! as a window of scheduled time, and a gap whose points were scheduled inside one is
//! "missed while disconnected": counted and listed apart from what was lost while
//! connected.
//!
//! ```text
//! connection lost --> Outage { from: last bytes read - margin, to: None }
//! subscribed again (SUBACK, or the first PUBLISH) --> to: now
//! a point opens a gap above a device's highest seq --> the gap's scheduled times,
//!     interpolated between its received neighbours, against every window
//!     --> the seqs inside: DeviceOutage ranges; a late arrival among them is taken back
//! ```
//!
//! - **From**: the last bytes read on the lost connection, the last moment the backend
//!   knows it was connected (a broker killed closes at once; a network gone silent is
//!   noticed only a keep-alive later, and nothing here can tell when it went).
//! - **Margin**: points scheduled shortly before were still in flight (publisher queue,
//!   broker) and died with the connection. How long a point was in flight is what the
//!   stream showed just then: the highest end-to-end latency of the points that arrived in
//!   the last second or two before the loss (retained ones aside, each at most an hour,
//!   the histograms' ceiling); if none arrived then, the run's p99 so far.
//! - **A kept session**: when the backend reconnects with `--clean-session false` at QoS 1
//!   and the broker says it kept the session (CONNACK's Session Present), the broker queued
//!   what came meanwhile: the outage excuses nothing (a gap is the broker's, its queue
//!   limit say).
//! - **To**: the first sign that the new subscription delivers (its SUBACK, or a PUBLISH
//!   before it). A point scheduled later reached the broker after the subscription was
//!   live (its timestamp is when it was due, never later than its sending), so it was
//!   routed here: no margin is needed on this side.
//! - **Scheduled time of a missing point**: it never came, so it is interpolated between
//!   the device's received neighbours (`seq` is paced against a schedule: `ts` is linear in
//!   `seq` for the publishers here, a step per batch). A gap that opens with a device's
//!   first point after the outage, below which nothing arrived, has no lower neighbour and
//!   is not classified (counted as lost).

use crate::verify::SeqRange;

/// Outages kept for classification; past this many, further ones are not (their gaps count
/// as lost while connected).
pub const MAX_OUTAGES: usize = 10_000;
/// Outages listed in the report.
pub const LISTED_OUTAGES: usize = 100;
/// Ranges all devices together keep for their outages (16 bytes each: 16 MB); past it a
/// gap is not classified (counted as lost while connected).
pub const OUTAGE_RANGES_TOTAL: usize = 1_000_000;
/// Ranges one device keeps for its outages.
pub const OUTAGE_RANGES_PER_DEVICE: usize = 10_000;

/// One outage of this backend's subscription, in the wall-clock seconds of points' `ts`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    /// The last bytes read on the lost connection.
    pub from: f64,
    /// How long before `from` a point may have been scheduled and still be in flight.
    pub margin: f64,
    /// When the new subscription delivered (its SUBACK or a PUBLISH); `None`: never.
    pub to: Option<f64>,
    /// The broker kept the backend's persistent session (QoS 1) across it: it queued what
    /// came meanwhile, so nothing is excused.
    pub session_kept: bool,
}

impl Outage {
    /// Scheduled times whose points this backend could not receive: `[from - margin, to]`
    /// (`to` being `end` if the run ended disconnected).
    pub fn window(&self, end: f64) -> (f64, f64) {
        (self.from - self.margin, self.to.unwrap_or(end))
    }
}

/// The outages of a run and what sets their margins.
#[derive(Debug, Clone, Default)]
pub struct Outages {
    pub list: Vec<Outage>,
    /// Outages past [`MAX_OUTAGES`], not kept.
    pub dropped: u64,
    /// The highest latency (µs) of the points that arrived in the previous and the current
    /// second, retained ones aside.
    recent_us: [u64; 2],
    /// Ranges all devices may still keep.
    ranges_left: usize,
}

impl Outages {
    pub fn new() -> Outages {
        Outages {
            ranges_left: OUTAGE_RANGES_TOTAL,
            ..Outages::default()
        }
    }

    /// A point arrived `latency_us` after it was scheduled.
    pub fn arrived(&mut self, latency_us: u64) {
        self.recent_us[1] = self.recent_us[1].max(latency_us);
    }

    /// About once a second: the current second becomes the previous one.
    pub fn roll(&mut self) {
        self.recent_us = [self.recent_us[1], 0];
    }

    /// The connection was lost; the last bytes were read at `last_read` (s). `p99_us`: the
    /// run's p99 latency so far, the margin when no point arrived lately.
    pub fn lost(&mut self, last_read: f64, p99_us: u64) {
        if self.list.len() >= MAX_OUTAGES {
            self.dropped += 1;
            return;
        }
        let recent = self.recent_us[0].max(self.recent_us[1]);
        let margin_us = if recent > 0 { recent } else { p99_us };
        self.list.push(Outage {
            from: last_read,
            margin: margin_us as f64 / 1e6,
            to: None,
            session_kept: false,
        });
        self.recent_us = [0, 0];
    }

    /// The subscription delivers again, at `now` (s): closes the open outage, if any.
    pub fn back(&mut self, now: f64) {
        if let Some(o) = self.list.last_mut().filter(|o| o.to.is_none()) {
            o.to = Some(now);
        }
    }

    /// The broker kept the session across the open outage and queued for it.
    pub fn session_kept(&mut self) {
        if let Some(o) = self.list.last_mut().filter(|o| o.to.is_none()) {
            o.session_kept = true;
        }
    }

    /// Whether an outage is open (lost and not back).
    pub fn open(&self) -> bool {
        self.list.last().is_some_and(|o| o.to.is_none())
    }

    /// A device's points `lo..=hi` never came, between `lo - 1` scheduled at `a` and
    /// `hi + 1` at `b`: records the part scheduled within an outage on `dev`.
    pub fn gap(&mut self, dev: &mut Option<Box<DeviceOutage>>, gap: SeqRange, a: f64, b: f64) {
        if self.list.is_empty() {
            return;
        }
        let (lo_t, hi_t) = (a.min(b), a.max(b));
        // Outages are in time order: the first whose window may reach the gap's span.
        let first = self
            .list
            .partition_point(|o| o.to.is_some_and(|to| to < lo_t));
        for o in self.list[first..].iter().filter(|o| !o.session_kept) {
            let (from, to) = o.window(f64::INFINITY);
            if from > hi_t {
                continue;
            }
            let Some(r) = scheduled_within(gap, a, b, from, to) else {
                continue;
            };
            let d = dev.get_or_insert_with(Box::default);
            // Windows that overlap (a margin reaching into the outage before) give
            // overlapping parts of one gap: joined, each seq counted once.
            if let Some(last) = d.ranges.last_mut().filter(|l| r.0 <= l.1.saturating_add(1)) {
                if r.1 > last.1 {
                    d.missed += r.1 - last.1;
                    last.1 = r.1;
                }
                continue;
            }
            if self.ranges_left == 0 || d.ranges.len() >= OUTAGE_RANGES_PER_DEVICE {
                return;
            }
            self.ranges_left -= 1;
            d.missed += r.len();
            d.ranges.push(r);
        }
    }
}

/// One device's seqs scheduled while this backend was disconnected and not received.
#[derive(Debug, Clone, Default)]
pub struct DeviceOutage {
    /// Disjoint and in order: gaps open above a device's highest seq, so one after another.
    pub ranges: Vec<SeqRange>,
    /// Of those, how many have not arrived since.
    pub missed: u64,
}

impl DeviceOutage {
    /// `seq` arrived late (first time seen): if it was counted missed, it is not.
    pub fn arrived_late(&mut self, seq: u64) {
        let i = self.ranges.partition_point(|r| r.1 < seq);
        if self.ranges.get(i).is_some_and(|r| r.0 <= seq) {
            self.missed = self.missed.saturating_sub(1);
        }
    }
}

/// The seqs of `gap` whose scheduled times, interpolated between the received neighbours
/// (`gap.0 - 1` at `a`, `gap.1 + 1` at `b`, in seconds), fall within `[from, to]`.
pub fn scheduled_within(gap: SeqRange, a: f64, b: f64, from: f64, to: f64) -> Option<SeqRange> {
    if !(a.is_finite() && b.is_finite()) || from > to || gap.0 == 0 {
        return None;
    }
    if b <= a {
        // No slope to follow (one timestamp for a whole batch, or a clock gone back): the
        // gap is within the window if its span touches it.
        return (from <= a && b <= to).then_some(gap);
    }
    let below = gap.0 - 1;
    let steps = gap.1.saturating_sub(below).saturating_add(1) as f64;
    // Seq `below + k` is scheduled at a + k / steps * (b - a).
    let at = |t: f64| (t - a) / (b - a) * steps;
    let k_lo = at(from).ceil().max(1.0);
    let k_hi = at(to).floor().min(steps - 1.0);
    if k_lo > k_hi {
        return None;
    }
    let lo = below.saturating_add(k_lo as u64).max(gap.0);
    let hi = below.saturating_add(k_hi as u64).min(gap.1);
    (lo <= hi).then_some(SeqRange(lo, hi))
}

/// The parts of sorted, disjoint `a` that are in sorted, disjoint `b`, at most `limit`.
pub fn intersect(a: &[SeqRange], b: &[SeqRange], limit: usize) -> Vec<SeqRange> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() && out.len() < limit {
        let lo = a[i].0.max(b[j].0);
        let hi = a[i].1.min(b[j].1);
        if lo <= hi {
            out.push(SeqRange(lo, hi));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The parts of sorted, disjoint `a` not in sorted, disjoint `b`, at most `limit`.
pub fn subtract(a: &[SeqRange], b: &[SeqRange], limit: usize) -> Vec<SeqRange> {
    let mut out = Vec::new();
    let mut j = 0;
    for r in a {
        while j < b.len() && b[j].1 < r.0 {
            j += 1;
        }
        // The next seq of `r` not yet known covered; None: past u64::MAX.
        let mut next = Some(r.0);
        let mut k = j;
        while let Some(lo) = next.filter(|lo| *lo <= r.1) {
            match b.get(k) {
                Some(x) if x.0 <= r.1 => {
                    if x.0 > lo {
                        out.push(SeqRange(lo, x.0 - 1));
                    }
                    // Sorted and disjoint: `x` ends at or after `lo`.
                    next = x.1.checked_add(1);
                    k += 1;
                }
                _ => {
                    out.push(SeqRange(lo, r.1));
                    next = None;
                }
            }
        }
        if out.len() >= limit {
            out.truncate(limit);
            break;
        }
    }
    out
}

/// For a share group's merge: the part of `missing` (no member received it) that every
/// member lists as missed while it was itself disconnected. `lists`: each member's ranges
/// for the device (a member that did not see the device gives none).
pub fn missed_by_all(lists: &[Vec<SeqRange>], missing: &[SeqRange], limit: usize) -> Vec<SeqRange> {
    let Some((first, rest)) = lists.split_first() else {
        return Vec::new();
    };
    let mut common = intersect(missing, first, usize::MAX);
    for l in rest {
        common = intersect(&common, l, usize::MAX);
    }
    common.truncate(limit);
    common
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: u64, b: u64) -> SeqRange {
        SeqRange(a, b)
    }

    /// Points 0..100 scheduled at 100 + seq/10 s: 1 to 98 missing, 0 and 99 received. An
    /// outage over scheduled times 102.0..104.05 covers seqs 20..=40.
    #[test]
    fn a_gaps_points_are_placed_in_time_between_their_neighbours() {
        let gap = r(1, 98);
        let (a, b) = (100.0, 109.9);
        assert_eq!(scheduled_within(gap, a, b, 102.0, 104.05), Some(r(20, 40)));
        // The whole gap, and nothing of it.
        assert_eq!(scheduled_within(gap, a, b, 90.0, 200.0), Some(gap));
        assert_eq!(scheduled_within(gap, a, b, 110.0, 120.0), None);
        assert_eq!(scheduled_within(gap, a, b, 50.0, 99.0), None);
        // The received neighbours themselves are never counted.
        assert_eq!(scheduled_within(gap, a, b, 100.0, 100.05), None);
        // One timestamp for a whole batch: inside or not, whole.
        assert_eq!(scheduled_within(gap, 100.0, 100.0, 99.0, 101.0), Some(gap));
        assert_eq!(scheduled_within(gap, 100.0, 100.0, 101.0, 102.0), None);
        // Hostile times and a degenerate window say nothing.
        assert_eq!(scheduled_within(gap, f64::NAN, b, 0.0, 1e12), None);
        assert_eq!(scheduled_within(gap, a, b, 104.0, 102.0), None);
        // Huge seqs do not overflow.
        let far = r(u64::MAX - 10, u64::MAX - 1);
        assert_eq!(scheduled_within(far, 0.0, 1.0, -1.0, 2.0), Some(far));
    }

    #[test]
    fn an_outage_classifies_the_gaps_scheduled_inside_it_and_takes_back_late_points() {
        let mut o = Outages::new();
        // A point arrived 50 ms after it was due shortly before the loss: the margin.
        o.arrived(50_000);
        o.lost(1000.0, 0);
        assert!(o.open());
        o.back(1002.0);
        assert_eq!(
            o.list,
            [Outage {
                from: 1000.0,
                margin: 0.05,
                to: Some(1002.0),
                session_kept: false,
            }]
        );
        // Seqs 951..=2999 never came, between 950 (due at 999.95) and 3000 (at 1002.0):
        // all of them within the window, 999.95 (1000.0 less 50 ms) to 1002.0.
        let mut dev = None;
        o.gap(&mut dev, r(951, 2999), 999.95, 1002.0);
        let d = dev.as_mut().expect("classified");
        assert_eq!((d.ranges.clone(), d.missed), (vec![r(951, 2999)], 2049));
        d.arrived_late(1000);
        d.arrived_late(5000);
        assert_eq!(d.missed, 2048);
        // A second outage whose margin reaches into the first: one gap over both is
        // counted once.
        let mut o2 = o.clone();
        o2.arrived(1_500_000);
        o2.lost(1003.0, 0);
        o2.back(1004.0);
        let mut both = None;
        o2.gap(&mut both, r(1, 4999), 999.0, 1004.0);
        let b = both.expect("classified");
        // 999.95..1002.0 and 1001.5..1004.0 at 1 ms a seq from 999.0: 951..=4999.
        assert_eq!((b.ranges, b.missed), (vec![r(951, 4999)], 4049));
        // An outage across which the broker kept the session (and queued): nothing of
        // it is excused.
        let mut kept = Outages::new();
        kept.lost(1000.0, 0);
        kept.session_kept();
        kept.back(1002.0);
        let mut none = None;
        kept.gap(&mut none, r(951, 2999), 999.95, 1002.0);
        assert!(none.is_none());
        // A gap while connected, after the outage: not classified.
        o.gap(&mut dev, r(4000, 4100), 1003.0, 1003.2);
        assert_eq!(dev.as_ref().map(|d| d.ranges.len()), Some(1));
    }

    #[test]
    fn without_recent_points_the_margin_is_the_runs_p99() {
        let mut o = Outages::new();
        o.arrived(900_000);
        o.roll();
        o.roll();
        o.lost(10.0, 2_000);
        assert_eq!(o.list[0].margin, 0.002);
        o.back(11.0);
        o.arrived(30_000);
        o.lost(20.0, 2_000);
        assert_eq!(o.list[1].margin, 0.03);
        assert_eq!(o.list[1].window(25.0), (19.97, 25.0));
    }

    /// A share group's member that received `seqs` of device d, and missed `away` while it
    /// was itself disconnected.
    fn member(seqs: &[u64], away: &[SeqRange], stamp: u64) -> crate::Report {
        use clap::FromArgMatches;
        let m = crate::command(&crate::BACKEND_SUB).get_matches_from([
            "backend-sub",
            "--share-group",
            "g",
            "--report-devices",
        ]);
        let plan =
            crate::Plan::from_args(crate::BackendArgs::from_arg_matches(&m).unwrap()).unwrap();
        let router = crate::route::Router::new(&[], &[]);
        let mut rx = crate::receive::Received::new(&router);
        let mut t = crate::verify::Tracker::EMPTY;
        for s in seqs {
            t.record(*s, &mut rx.pools);
        }
        rx.devices.push(crate::receive::Device {
            id: "d".into(),
            frontend: None,
            tracker: t,
            latency_max_us: 0,
            first_retained: false,
            frontier_ts: f64::NAN,
            outage: (!away.is_empty()).then(|| {
                Box::new(DeviceOutage {
                    ranges: away.to_vec(),
                    missed: away.iter().map(SeqRange::len).sum(),
                })
            }),
        });
        rx.messages = 1 + stamp; // members told apart
        rx.points = seqs.len() as u64;
        rx.unique = seqs.len() as u64;
        // A member's figures add up (the merge checks): every point unrouted, each with
        // its latency.
        rx.unrouted_points = seqs.len() as u64;
        for _ in seqs {
            rx.latency_us.saturating_record(1_000);
        }
        crate::Report::build("backend-sub", &plan, "mqtt://b", false, &rx)
    }

    /// Two members of a share group, both away over seqs 40..=59 (a broker restart): what
    /// no member received there is missed while disconnected; where only one was away, the
    /// other should have been sent it, so a gap there is lost.
    #[test]
    fn merge_counts_as_missed_while_disconnected_only_what_every_member_missed() {
        let a: Vec<u64> = (0..100)
            .filter(|s| s % 2 == 0 && !(40..60).contains(s))
            .collect();
        let b: Vec<u64> = (0..100)
            .filter(|s| s % 2 == 1 && !(40..60).contains(s) && !(80..90).contains(s))
            .collect();
        let ra = member(&a, &[r(41, 59), r(81, 89)], 0);
        let rb = member(&b, &[r(40, 58)], 1);
        // Listed as it stands: what it did not receive of what fell in its outages.
        assert_eq!(
            ra.devices[0].missed_disconnected_ranges,
            [
                r(41, 59),
                r(81, 81),
                r(83, 83),
                r(85, 85),
                r(87, 87),
                r(89, 89)
            ]
        );
        let mut m = crate::merge::Merge::new(None, std::time::Duration::from_secs(60));
        m.add("a".into(), ra).unwrap();
        m.add("b".into(), rb).unwrap();
        let m = m.finish().unwrap();
        let d = &m.devices[0];
        assert_eq!(
            d.missing_ranges,
            [
                r(40, 59),
                r(81, 81),
                r(83, 83),
                r(85, 85),
                r(87, 87),
                r(89, 89)
            ]
        );
        assert_eq!(d.missed_disconnected_ranges, [r(41, 58)]);
        assert_eq!((d.missing, d.missed_disconnected), (25, 18));
        assert_eq!(m.points_missed_disconnected, Some(18));
        let reason = m.reason.unwrap_or_default();
        assert!(
            reason.contains(
                "no member received 25 points (18 of them due while every member was disconnected)"
            ),
            "{reason}"
        );
    }

    #[test]
    fn ranges_intersect_and_subtract() {
        let a = [r(0, 9), r(20, 29), r(40, 40)];
        let b = [r(5, 24), r(40, 50)];
        assert_eq!(intersect(&a, &b, 10), [r(5, 9), r(20, 24), r(40, 40)]);
        assert_eq!(intersect(&a, &b, 1), [r(5, 9)]);
        assert_eq!(subtract(&a, &b, 10), [r(0, 4), r(25, 29)]);
        assert_eq!(subtract(&a, &[], 10), a);
        assert_eq!(
            subtract(&[r(0, u64::MAX)], &[r(5, u64::MAX)], 10),
            [r(0, 4)]
        );
        assert_eq!(
            subtract(&[r(0, 10)], &[r(2, 3), r(5, 6)], 10),
            [r(0, 1), r(4, 4), r(7, 10)]
        );
        assert_eq!(
            missed_by_all(&[vec![r(0, 50)], vec![r(10, 60)]], &[r(5, 100)], 10),
            [r(10, 50)]
        );
        assert!(missed_by_all(&[vec![r(0, 50)], vec![]], &[r(5, 100)], 10).is_empty());
        assert!(missed_by_all(&[], &[r(5, 100)], 10).is_empty());
    }
}
