//! Per-device proof of delivery: which `seq` values arrived, how often and in what order.
//!
//! Received seqs are kept as disjoint ranges, so memory grows with the number of gaps, not
//! with the number of points: an in-order run of any length is one range.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

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

/// What happened to one point on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// First time seen, in order.
    New,
    /// First time seen, but a higher seq came before it.
    Late,
    /// Seen before.
    Duplicate,
}

/// Delivery state of one device.
#[derive(Debug, Default, Clone)]
pub struct DeviceTracker {
    seen: RangeSet,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

impl DeviceTracker {
    pub fn record(&mut self, seq: u64) -> Arrival {
        self.received += 1;
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
        let highest = self.seen.max();
        if !self.seen.insert(seq) {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        match highest {
            Some(h) if seq < h => {
                self.out_of_order += 1;
                Arrival::Late
            }
            _ => Arrival::New,
        }
    }

    pub fn unique(&self) -> u64 {
        self.seen.len()
    }

    pub fn seen(&self) -> &RangeSet {
        &self.seen
    }

    /// Missing seqs below the highest seen: from 0 (`from_zero`) or from the lowest seen.
    pub fn missing(&self, from_zero: bool) -> Vec<SeqRange> {
        match (from_zero, self.seen.min()) {
            (_, None) => Vec::new(),
            (true, Some(_)) => self.seen.gaps_from(0),
            (false, Some(min)) => self.seen.gaps_from(min),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_arrivals_are_one_range() {
        let mut t = DeviceTracker::default();
        for s in 0..100_000 {
            assert_eq!(t.record(s), Arrival::New);
        }
        assert_eq!(t.seen().ranges().count(), 1);
        assert_eq!((t.unique(), t.duplicates, t.out_of_order), (100_000, 0, 0));
        assert!(t.missing(true).is_empty());
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_told_apart() {
        let mut t = DeviceTracker::default();
        for s in (0..1200).chain(1300..5000).chain(5001..6000) {
            t.record(s);
        }
        assert_eq!(t.record(10), Arrival::Duplicate);
        assert_eq!(t.record(1250), Arrival::Late);
        let gaps: Vec<String> = t.missing(true).iter().map(|g| g.to_string()).collect();
        assert_eq!(gaps, ["1200-1249", "1251-1299", "5000"]);
        assert_eq!((t.duplicates, t.out_of_order, t.received), (1, 1, 5901));
        assert_eq!((t.first_seq, t.last_seq), (Some(0), Some(1250)));
    }

    #[test]
    fn missing_from_zero_or_from_first_seen() {
        let mut t = DeviceTracker::default();
        for s in 10..20 {
            t.record(s);
        }
        assert_eq!(t.missing(true), [SeqRange(0, 9)]);
        assert!(t.missing(false).is_empty());
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
}
