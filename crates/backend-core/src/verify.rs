//! Per-device proof of delivery: which `seq` values arrived, how often and in what order.
//!
//! Received seqs are kept as disjoint ranges, so memory grows with the number of gaps, not
//! with the number of points: an in-order run of any length is one range. The gaps are
//! bounded too: when a device holds more than [`LIVE_RANGES`] ranges (a long lossy run), the
//! lower half is retired below a floor. Their counts stay exact and the first
//! [`LISTED_RANGES`] of them stay listed; a seq that arrives at or below the floor can no
//! longer be told a duplicate from a late arrival and is counted as unverifiable.
//!
//! Memory is bounded across devices too: a [`Budget`] caps the live ranges of all devices
//! together ([`LIVE_RANGES_TOTAL`]) and the retired ranges they keep listed
//! ([`LISTED_RANGES_TOTAL`]). A device that needs a new range when the pool is empty retires
//! half of its own (at least one); past the listing pool, retired ranges are counted, not
//! listed. So a device costs a few hundred bytes of its own, and gaps, however many devices
//! have them, draw on a pool of fixed size.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Ranges of received seqs a device keeps live before retiring the lower half.
pub const LIVE_RANGES: usize = 8192;
/// Ranges (received and missing) listed per device; counts stay exact beyond it.
pub const LISTED_RANGES: usize = 10_000;
/// Live ranges all devices together hold at most (~30 bytes each in a B-tree: ~64 MB).
pub const LIVE_RANGES_TOTAL: usize = 2_000_000;
/// Retired ranges all devices together keep listed (16 bytes each: ~32 MB).
pub const LISTED_RANGES_TOTAL: usize = 2_000_000;

/// What all devices together may still hold: live ranges and listed retired ranges.
#[derive(Debug, Clone)]
pub struct Budget {
    live_left: usize,
    listed_left: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(LIVE_RANGES_TOTAL, LISTED_RANGES_TOTAL)
    }
}

impl Budget {
    pub fn new(live: usize, listed: usize) -> Budget {
        Budget {
            live_left: live,
            listed_left: listed,
        }
    }
}

/// A set of `u64` kept as disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// start -> end (inclusive)
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Inserts `v`; false if it was already there.
    pub fn insert(&mut self, v: u64) -> bool {
        let below = self.ranges.range(..=v).next_back().map(|(s, e)| (*s, *e));
        if let Some((_, end)) = below {
            if end >= v {
                return false;
            }
        }
        let joins_below = below.filter(|(_, end)| end + 1 == v);
        let above = v
            .checked_add(1)
            .and_then(|n| self.ranges.get(&n).map(|e| (n, *e)));
        match (joins_below, above) {
            (Some((s, _)), Some((n, e))) => {
                self.ranges.remove(&n);
                self.ranges.insert(s, e);
            }
            (Some((s, _)), None) => {
                self.ranges.insert(s, v);
            }
            (None, Some((n, e))) => {
                self.ranges.remove(&n);
                self.ranges.insert(v, e);
            }
            (None, None) => {
                self.ranges.insert(v, v);
            }
        }
        true
    }

    pub fn contains(&self, v: u64) -> bool {
        self.ranges
            .range(..=v)
            .next_back()
            .is_some_and(|(_, e)| *e >= v)
    }

    pub fn min(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }

    pub fn max(&self) -> Option<u64> {
        self.ranges.values().next_back().copied()
    }

    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Removes and returns the lowest range.
    pub fn pop_first(&mut self) -> Option<SeqRange> {
        self.ranges.pop_first().map(|(s, e)| SeqRange(s, e))
    }

    pub fn ranges(&self) -> impl Iterator<Item = SeqRange> + '_ {
        self.ranges.iter().map(|(s, e)| SeqRange(*s, *e))
    }

    /// The gaps within `[from, max]`.
    pub fn gaps_from(&self, from: u64) -> Vec<SeqRange> {
        let mut gaps = Vec::new();
        let mut next = from;
        for (&s, &e) in &self.ranges {
            if e < next {
                continue;
            }
            if s > next {
                gaps.push(SeqRange(next, s - 1));
            }
            next = e.saturating_add(1);
        }
        gaps
    }
}

/// An inclusive range of seqs, shown as `1200-1299` or `5000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange(pub u64, pub u64);

impl SeqRange {
    pub fn len(&self) -> u64 {
        self.1 - self.0 + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl fmt::Display for SeqRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{}-{}", self.0, self.1)
        }
    }
}

impl Serialize for SeqRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for SeqRange {
    type Err = String;
    fn from_str(t: &str) -> Result<SeqRange, String> {
        let bad = || format!("'{t}' is not a seq range like 1200-1299 or 5000");
        let (a, b) = t.split_once('-').unwrap_or((t, t));
        let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a > b {
            return Err(bad());
        }
        Ok(SeqRange(a, b))
    }
}

impl<'de> serde::Deserialize<'de> for SeqRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SeqRange, D::Error> {
        let t = String::deserialize(d)?;
        t.parse().map_err(serde::de::Error::custom)
    }
}

/// What happened to one point on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time seen, in order.
    New,
    /// First time seen, but a higher seq came before it.
    Late,
    /// Seen before.
    Duplicate,
    /// At or below the retired floor: a duplicate or a very late arrival, no longer known.
    Unverifiable,
}

/// Ranges retired below the floor: exact counts, the first [`LISTED_RANGES`] listed.
#[derive(Debug, Default, Clone)]
struct Retired {
    /// Highest retired seq; everything at or below it is settled.
    floor: u64,
    /// Lowest seq ever seen.
    min: u64,
    unique: u64,
    /// Seqs missing strictly between `min` and `floor`.
    missing: u64,
    received_listed: Vec<SeqRange>,
    missing_listed: Vec<SeqRange>,
    received_ranges: u64,
    missing_ranges: u64,
}

/// A device's missing seqs: the exact count and the first ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub count: u64,
    pub ranges: Vec<SeqRange>,
    /// More ranges exist than are listed.
    pub truncated: bool,
}

/// Delivery state of one device.
#[derive(Debug, Default, Clone)]
pub struct DeviceTracker {
    /// Live ranges, all above `retired.floor`.
    seen: RangeSet,
    retired: Option<Box<Retired>>,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Arrived at or below the retired floor (see the module docs).
    pub unverifiable: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

impl DeviceTracker {
    /// Records one arrival of `seq`, drawing any new range from `budget`.
    pub fn record(&mut self, seq: u64, budget: &mut Budget) -> Arrival {
        self.received += 1;
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
        if self.retired.as_ref().is_some_and(|r| seq <= r.floor) {
            self.unverifiable += 1;
            return Arrival::Unverifiable;
        }
        let highest = self.seen.max();
        let ranges_before = self.seen.range_count();
        if !self.seen.insert(seq) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        let ranges = self.seen.range_count();
        if ranges > ranges_before {
            if budget.live_left == 0 {
                // The pool is empty: make room from this device's own ranges.
                self.retire(ranges.div_ceil(2).min(ranges - 1).max(1), budget);
            } else if ranges > LIVE_RANGES {
                self.retire(LIVE_RANGES / 2, budget);
            }
            budget.live_left = budget.live_left.saturating_sub(1);
        } else if ranges < ranges_before {
            budget.live_left += 1; // two ranges merged
        }
        match highest {
            Some(h) if seq < h => {
                self.out_of_order += 1;
                Arrival::Late
            }
            _ => Arrival::New,
        }
    }

    /// Moves the lowest `n` live ranges below the floor, returning them to `budget`.
    fn retire(&mut self, n: usize, budget: &mut Budget) {
        for _ in 0..n {
            let Some(r) = self.seen.pop_first() else {
                return;
            };
            budget.live_left += 1;
            let retired = self.retired.get_or_insert_with(|| {
                Box::new(Retired {
                    floor: r.1,
                    min: r.0,
                    ..Retired::default()
                })
            });
            // A late point at `floor + 1` starts a live range that touches the floor: no gap.
            if retired.received_ranges > 0 && r.0 > retired.floor + 1 {
                let gap = SeqRange(retired.floor + 1, r.0 - 1);
                retired.missing += gap.len();
                retired.missing_ranges += 1;
                if retired.missing_listed.len() < LISTED_RANGES && budget.listed_left > 0 {
                    budget.listed_left -= 1;
                    retired.missing_listed.push(gap);
                }
            }
            retired.unique += r.len();
            match retired.received_listed.last_mut() {
                // Touches the last listed range (a range retired as soon as it was made, with
                // the pool empty): one listed range grows instead of many of one seq each.
                Some(last) if last.1 == retired.floor && r.0 == retired.floor + 1 => {
                    last.1 = r.1;
                }
                _ => {
                    retired.received_ranges += 1;
                    if retired.received_listed.len() < LISTED_RANGES && budget.listed_left > 0 {
                        budget.listed_left -= 1;
                        retired.received_listed.push(r);
                    }
                }
            }
            retired.floor = r.1;
        }
    }

    /// Whether seqs are missing below the highest seen (from 0 with `from_zero`).
    pub fn has_gaps(&self, from_zero: bool) -> bool {
        self.missing(from_zero, 0).count > 0
    }

    pub fn unique(&self) -> u64 {
        self.retired.as_ref().map_or(0, |r| r.unique) + self.seen.len()
    }

    pub fn min_seq(&self) -> Option<u64> {
        self.retired.as_ref().map(|r| r.min).or(self.seen.min())
    }

    pub fn max_seq(&self) -> Option<u64> {
        self.seen.max().or(self.retired.as_ref().map(|r| r.floor))
    }

    /// What arrived, as ranges: at most `limit` (and [`LISTED_RANGES`]), and whether there
    /// are more.
    pub fn received_ranges(&self, limit: usize) -> (Vec<SeqRange>, bool) {
        let limit = limit.min(LISTED_RANGES);
        let mut out = Vec::new();
        let mut total = self.seen.range_count() as u64;
        if let Some(r) = &self.retired {
            out.extend(r.received_listed.iter().take(limit));
            total += r.received_ranges;
        }
        out.extend(self.seen.ranges().take(limit.saturating_sub(out.len())));
        let truncated = total > out.len() as u64;
        (out, truncated)
    }

    /// Missing seqs below the highest seen (from 0 with `from_zero`, else from the lowest
    /// seen): the exact count and at most `limit` (and [`LISTED_RANGES`]) ranges.
    pub fn missing(&self, from_zero: bool, limit: usize) -> Missing {
        let limit = limit.min(LISTED_RANGES);
        let mut m = Missing {
            count: 0,
            ranges: Vec::new(),
            truncated: false,
        };
        let Some(min) = self.min_seq() else {
            return m;
        };
        let mut total = 0u64;
        let mut unlisted = 0u64;
        let mut add = |m: &mut Missing, g: SeqRange| {
            m.count += g.len();
            total += 1;
            if m.ranges.len() < limit {
                m.ranges.push(g);
            }
        };
        if from_zero && min > 0 {
            add(&mut m, SeqRange(0, min - 1));
        }
        let live_from = match &self.retired {
            Some(r) => {
                for g in &r.missing_listed {
                    add(&mut m, *g);
                }
                // Retired beyond the listed ones: counted, not listed.
                m.count += r.missing - r.missing_listed.iter().map(SeqRange::len).sum::<u64>();
                unlisted = r.missing_ranges - r.missing_listed.len() as u64;
                r.floor.saturating_add(1)
            }
            None => min,
        };
        for g in self.seen.gaps_from(live_from) {
            add(&mut m, g);
        }
        m.truncated = total + unlisted > m.ranges.len() as u64;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_arrivals_are_one_range() {
        let mut t = DeviceTracker::default();
        let mut b = Budget::default();
        for s in 0..100_000 {
            assert_eq!(t.record(s, &mut b), Arrival::New);
        }
        assert_eq!(t.seen.ranges().count(), 1);
        assert_eq!((t.unique(), t.duplicates, t.out_of_order), (100_000, 0, 0));
        assert_eq!(t.missing(true, LISTED_RANGES).count, 0);
        assert!(t.missing(true, LISTED_RANGES).ranges.is_empty());
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_told_apart() {
        let mut t = DeviceTracker::default();
        let mut b = Budget::default();
        for s in (0..1200).chain(1300..5000).chain(5001..6000) {
            t.record(s, &mut b);
        }
        assert_eq!(t.record(10, &mut b), Arrival::Duplicate);
        assert_eq!(t.record(1250, &mut b), Arrival::Late);
        let missing = t.missing(true, LISTED_RANGES);
        let gaps: Vec<String> = missing.ranges.iter().map(|g| g.to_string()).collect();
        assert_eq!(gaps, ["1200-1249", "1251-1299", "5000"]);
        assert_eq!((missing.count, missing.truncated), (50 + 49 + 1, false));
        assert_eq!((t.duplicates, t.out_of_order, t.received), (1, 1, 5901));
        assert_eq!((t.first_seq, t.last_seq), (Some(0), Some(1250)));
    }

    #[test]
    fn missing_from_zero_or_from_first_seen() {
        let mut t = DeviceTracker::default();
        let mut b = Budget::default();
        for s in 10..20 {
            t.record(s, &mut b);
        }
        assert_eq!(t.missing(true, LISTED_RANGES).ranges, [SeqRange(0, 9)]);
        assert_eq!(t.missing(true, LISTED_RANGES).count, 10);
        assert_eq!(t.missing(false, LISTED_RANGES).count, 0);
    }

    #[test]
    fn range_set_merges_both_sides() {
        let mut r = RangeSet::default();
        for v in [5, 7, 6, 1, 3, 2, 4] {
            assert!(r.insert(v));
        }
        assert_eq!(r.ranges().collect::<Vec<_>>(), [SeqRange(1, 7)]);
        assert!(!r.insert(4));
        assert!(r.contains(7) && !r.contains(8));
        assert!(r.insert(u64::MAX));
        assert_eq!(r.len(), 8);
    }

    /// A long lossy run: every third seq lost, far more gaps than stay live.
    #[test]
    fn many_gaps_stay_bounded_and_counted_exactly() {
        let mut t = DeviceTracker::default();
        let mut b = Budget::default();
        let n: u64 = 30 * LIVE_RANGES as u64;
        let kept = |s: u64| s % 3 != 2;
        for s in (0..n).filter(|s| kept(*s)) {
            assert_ne!(t.record(s, &mut b), Arrival::Unverifiable);
        }
        assert!(t.seen.range_count() <= LIVE_RANGES);
        let expect_unique = (0..n).filter(|s| kept(*s)).count() as u64;
        let expect_missing = n - 1 - expect_unique + 1 - u64::from(!kept(n - 1));
        assert_eq!(t.unique(), expect_unique);
        let missing = t.missing(true, LISTED_RANGES);
        assert_eq!(missing.count, expect_missing);
        assert!(missing.truncated);
        assert_eq!(missing.ranges.len(), LISTED_RANGES);
        assert_eq!(&missing.ranges[..2], [SeqRange(2, 2), SeqRange(5, 5)]);
        assert_eq!((t.min_seq(), t.max_seq()), (Some(0), Some(n - 2)));
        let (received, truncated) = t.received_ranges(LISTED_RANGES);
        assert!(truncated);
        assert_eq!(&received[..2], [SeqRange(0, 1), SeqRange(3, 4)]);

        // A late fill-in above the floor is still told apart; one below it is not.
        let floor = t.retired.as_ref().unwrap().floor;
        assert_eq!(t.record(n - 3 * 4 + 2, &mut b), Arrival::Late);
        assert_eq!(t.record(n - 3 * 4 + 2, &mut b), Arrival::Duplicate);
        assert_eq!(t.record(floor - 1, &mut b), Arrival::Unverifiable);
        assert_eq!(t.missing(true, LISTED_RANGES).count, expect_missing - 1);
        assert_eq!(t.unverifiable, 1);
    }

    /// Many lossy devices share one pool: live ranges never exceed it, counts stay exact.
    #[test]
    fn gaps_of_many_devices_share_a_bounded_pool() {
        let mut b = Budget::new(64, 32);
        let mut devices: Vec<DeviceTracker> = (0..20).map(|_| DeviceTracker::default()).collect();
        for s in (0..200).step_by(2) {
            for d in &mut devices {
                d.record(s, &mut b);
            }
            let live: usize = devices.iter().map(|d| d.seen.range_count()).sum();
            assert!(live <= 64, "{live} live ranges");
        }
        for d in &devices {
            assert_eq!(d.unique(), 100);
            let m = d.missing(true, LISTED_RANGES);
            assert_eq!(m.count, 99);
            assert_eq!(d.unique() + m.count, d.max_seq().unwrap() + 1);
        }
        let listed: usize = devices
            .iter()
            .filter_map(|d| d.retired.as_ref())
            .map(|r| r.received_listed.len() + r.missing_listed.len())
            .sum();
        assert!(listed <= 32, "{listed} listed");
    }

    /// With the pool empty, an in-order device retires as it goes: one listed range, not one
    /// per seq, and every later seq still counts.
    #[test]
    fn an_in_order_device_with_an_empty_pool_lists_one_range() {
        let mut b = Budget::new(0, 8);
        let mut t = DeviceTracker::default();
        for s in 0..1000 {
            assert_eq!(t.record(s, &mut b), Arrival::New);
        }
        assert_eq!(t.unique(), 1000);
        assert_eq!(t.received_ranges(LISTED_RANGES).0, [SeqRange(0, 999)]);
        assert_eq!(t.missing(true, LISTED_RANGES).count, 0);
        assert_eq!(t.record(999, &mut b), Arrival::Unverifiable);
    }

    /// The seq just above the floor arrives late, then gets retired itself: it joins the
    /// retired ranges without a gap of its own.
    #[test]
    fn a_late_point_just_above_the_floor_retires_cleanly() {
        let mut t = DeviceTracker::default();
        let mut b = Budget::default();
        // Even seqs only: each is its own range, every odd seq a gap.
        let mut next = 0u64;
        while t.retired.is_none() {
            t.record(next, &mut b);
            next += 2;
        }
        let floor = t.retired.as_ref().unwrap().floor;
        assert_eq!(t.record(floor + 1, &mut b), Arrival::Late);
        let before = t.missing(true, LISTED_RANGES).count;
        for _ in 0..LIVE_RANGES {
            t.record(next, &mut b);
            next += 2;
        }
        assert!(t.retired.as_ref().unwrap().floor > floor + 1);
        let m = t.missing(true, LISTED_RANGES);
        assert_eq!(m.count, before + LIVE_RANGES as u64);
        assert!(m.ranges.iter().all(|r| r.0 <= r.1));
        assert_eq!(t.unique() + m.count, t.max_seq().unwrap() + 1);
    }
}
