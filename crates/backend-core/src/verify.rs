//! Proof of delivery per (subscriber, device) pair: which `seq` values arrived, how often and
//! in what order. backend-sub (one subscriber) and a subscriber fleet (`fleet_verify`) both
//! keep one [`Tracker`] per pair and share one [`Pools`] per worker: one verifier.
//!
//! ```text
//! seq --> Tracker::record(seq, &mut Pools) --> Arrival (new, late, duplicate, unverifiable)
//!   Tracker (16 bytes): empty | an in-order run first..=last | a gap record in Pools
//!                       | settled at a floor (no record left; figures in the owner's Settled)
//!   Pools: gap records (seq ranges in a B-tree) + Budget (live and listed ranges, all pairs)
//! ```
//!
//! A pair whose seqs arrive in order (each the last plus one) is two numbers, the first and
//! the last seq: 16 bytes however long the run, nothing else allocated. The first seq that
//! breaks the run (a gap, a duplicate, one out of order) moves the pair into a gap record
//! drawn from the shared [`Pools`], where its seqs are kept as disjoint ranges, so memory
//! grows with the number of gaps, not with the number of points.
//!
//! The gaps are bounded too: when a pair holds more than [`LIVE_RANGES`] ranges (a long lossy
//! run), the lower half is retired below a floor. Their counts stay exact and the first
//! [`LISTED_RANGES`] of them stay listed; a seq that arrives at or below the floor can no
//! longer be told a duplicate from a late arrival and is counted as unverifiable.
//!
//! Memory is bounded across pairs too: a [`Budget`] caps the live ranges of all gap records
//! together ([`LIVE_RANGES_TOTAL`]) and the retired ranges they keep listed
//! ([`LISTED_RANGES_TOTAL`]). A pair that needs a new range when the pool is empty retires
//! half of its own (at least one); past the listing pool, retired ranges are counted, not
//! listed. So a pair with gaps costs a record of [`GAP_RECORD_BYTES`] and gaps, however many
//! pairs have them, draw on a pool of fixed size.
//!
//! The records can be bounded as well ([`Budget::with_records`]; a subscriber fleet's
//! worker holds [`GAP_RECORDS_FLEET`]). A pair that breaks its run with none left settles:
//! it keeps only its floor (the highest seq), and its figures go to its owner's [`Settled`],
//! exactly, as below a retired floor: later seqs above the floor are new (the seqs skipped
//! missing), seqs at or below it unverifiable. backend-sub's pools have no record limit (its
//! devices are bounded by `--max-devices`), so each of its devices keeps its own figures.

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

/// Gap records a subscriber fleet's worker keeps at most (each [`GAP_RECORD_BYTES`] and a
/// B-tree node, ~270 bytes: ~70 MB); past them a pair settles (see [`Settled`]).
pub const GAP_RECORDS_FLEET: usize = 262_144;

/// What all pairs together may still hold: gap records, live ranges and listed retired
/// ranges.
#[derive(Debug, Clone)]
pub struct Budget {
    live_left: usize,
    listed_left: usize,
    records_left: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget::new(LIVE_RANGES_TOTAL, LISTED_RANGES_TOTAL)
    }
}

impl Budget {
    /// Gap records without a limit: an owner whose pairs are bounded otherwise
    /// (backend-sub's `--max-devices`) and that reports each pair's own figures.
    pub fn new(live: usize, listed: usize) -> Budget {
        Budget {
            live_left: live,
            listed_left: listed,
            records_left: usize::MAX,
        }
    }

    /// At most `records` gap records; pairs that break their run past them settle, their
    /// figures kept by the caller's [`Settled`].
    pub fn with_records(self, records: usize) -> Budget {
        Budget {
            records_left: records,
            ..self
        }
    }
}

/// The figures of pairs that broke their run when no gap record was left: kept per owner
/// (a subscriber), since a settled pair holds only its floor. Exact, like a retired floor's:
/// everything at or below a pair's floor is settled, so a seq arriving there is
/// unverifiable (or, inside the run it had, a known duplicate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settled {
    pub pairs: u64,
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub unverifiable: u64,
    /// Missing between a pair's first seq and its floor.
    pub missing: u64,
    /// Missing below the pairs' first seqs (their sum): missing too when counting from 0.
    pub missing_below_first: u64,
}

impl Settled {
    /// Missing seqs (from 0 with `from_zero`).
    pub fn missing(&self, from_zero: bool) -> u64 {
        let below = if from_zero {
            self.missing_below_first
        } else {
            0
        };
        self.missing.saturating_add(below)
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

/// What a pair's gap record costs of its own, beside its ranges (drawn from the pools).
pub const GAP_RECORD_BYTES: usize = std::mem::size_of::<Gapped>();

/// The state a worker's pairs share: their gap records and the budget of their ranges. One
/// per backend-sub, one per fleet worker.
#[derive(Debug, Default)]
pub struct Pools {
    /// The ranges all gap records together may still hold.
    pub budget: Budget,
    /// Gap records, indexed by [`Tracker`]s that left their in-order run.
    gapped: Vec<Gapped>,
}

impl Pools {
    pub fn new(budget: Budget) -> Pools {
        Pools {
            budget,
            gapped: Vec::new(),
        }
    }

    /// Pairs that have left their in-order run.
    pub fn gap_records(&self) -> usize {
        self.gapped.len()
    }

    /// Live ranges the gap records hold together (bounded by the budget).
    pub fn live_ranges(&self) -> usize {
        self.gapped.iter().map(|g| g.seen.range_count()).sum()
    }

    /// Bytes the gap records hold beside their B-tree ranges.
    pub fn gap_record_bytes(&self) -> usize {
        self.gapped.capacity() * GAP_RECORD_BYTES
    }
}

/// One (subscriber, device) pair's delivery state, 16 bytes: nothing yet, an in-order run
/// `first..=last`, the index of its gap record in [`Pools`], or (no record left) settled
/// up to a floor.
///
/// Encoded in two words so that the common case needs no tag of its own: `a <= b` is the
/// run `a..=b`; `a == u64::MAX > b` is gap record `b`; `a == u64::MAX - 1 > b` is settled
/// up to floor `b`; `(1, 0)` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    a: u64,
    b: u64,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker::EMPTY
    }
}

/// A pair's figures, read from its [`Tracker`] and the [`Pools`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Arrivals, duplicates included.
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Arrived at or below the retired floor (see the module docs).
    pub unverifiable: u64,
    /// The first and the last seq to arrive.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub min_seq: Option<u64>,
    pub max_seq: Option<u64>,
}

enum State {
    Empty,
    Run(u64, u64),
    Gapped(usize),
    Settled(u64),
}

/// The highest floor a settled pair holds (its tag takes the word above); a seq beyond it
/// arriving at a settled pair is unverifiable.
const SETTLED_FLOOR_MAX: u64 = u64::MAX - 2;

impl Tracker {
    pub const EMPTY: Tracker = Tracker { a: 1, b: 0 };

    fn state(&self) -> State {
        if self.a <= self.b {
            State::Run(self.a, self.b)
        } else if self.a == u64::MAX {
            State::Gapped(self.b as usize)
        } else if self.a == u64::MAX - 1 {
            State::Settled(self.b)
        } else {
            State::Empty
        }
    }

    fn settled(floor: u64) -> Tracker {
        Tracker {
            a: u64::MAX - 1,
            b: floor,
        }
    }

    /// Nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        *self == Tracker::EMPTY
    }

    /// Whether the pair has left its in-order run (it has a gap record in the pools).
    pub fn is_gapped(&self) -> bool {
        matches!(self.state(), State::Gapped(_))
    }

    /// Whether the pair broke its run with no gap record left (its figures are its owner's).
    pub fn is_settled(&self) -> bool {
        matches!(self.state(), State::Settled(_))
    }

    /// Records one arrival of `seq`; a pair leaving its in-order run takes a gap record
    /// from `pools` and draws any new range from its budget. For pools without a limit on
    /// gap records (see [`Budget::with_records`]); else [`Tracker::record_settling`].
    #[inline]
    pub fn record(&mut self, seq: u64, pools: &mut Pools) -> Arrival {
        let mut settled = Settled::default();
        let arrival = self.record_settling(seq, pools, &mut settled);
        debug_assert_eq!(
            settled,
            Settled::default(),
            "a pair settled: use record_settling"
        );
        arrival
    }

    /// [`Tracker::record`], and with no gap record left the pair settles: its figures go to
    /// `settled` (its owner's), and it keeps only its floor.
    #[inline]
    pub fn record_settling(
        &mut self,
        seq: u64,
        pools: &mut Pools,
        settled: &mut Settled,
    ) -> Arrival {
        match self.state() {
            State::Run(_, last) if last.checked_add(1) == Some(seq) => {
                self.b = seq;
                Arrival::New
            }
            State::Empty => {
                *self = Tracker { a: seq, b: seq };
                Arrival::New
            }
            State::Gapped(i) => pools.gapped[i].record(seq, &mut pools.budget),
            State::Settled(floor) => {
                settled.received += 1;
                if seq <= floor || seq > SETTLED_FLOOR_MAX {
                    settled.unverifiable += 1;
                    return Arrival::Unverifiable;
                }
                settled.unique += 1;
                settled.missing += seq - floor - 1;
                *self = Tracker::settled(seq);
                Arrival::New
            }
            State::Run(first, last) if pools.budget.records_left == 0 => {
                // The run's figures go to the owner; the pair keeps its floor.
                settled.pairs += 1;
                settled.received += last - first + 2;
                settled.unique += last - first + 1;
                settled.missing_below_first = settled.missing_below_first.saturating_add(first);
                let (arrival, floor) = if seq > last && seq <= SETTLED_FLOOR_MAX {
                    settled.unique += 1;
                    settled.missing += seq - last - 1;
                    (Arrival::New, seq)
                } else if (first..=last).contains(&seq) {
                    settled.duplicates += 1;
                    (Arrival::Duplicate, last)
                } else {
                    // Below the run (or past the highest floor): not told apart any more.
                    settled.unverifiable += 1;
                    (Arrival::Unverifiable, last)
                };
                *self = Tracker::settled(floor.min(SETTLED_FLOOR_MAX));
                arrival
            }
            State::Run(first, last) => {
                pools.budget.records_left -= 1;
                let mut g = Gapped::run(first, last, &mut pools.budget);
                let arrival = g.record(seq, &mut pools.budget);
                let i = pools.gapped.len();
                pools.gapped.push(g);
                *self = Tracker {
                    a: u64::MAX,
                    b: i as u64,
                };
                arrival
            }
        }
    }

    /// The pair's figures.
    pub fn counts(&self, pools: &Pools) -> Counts {
        match self.state() {
            State::Empty => Counts::default(),
            State::Run(first, last) => Counts {
                received: last - first + 1,
                unique: last - first + 1,
                first_seq: Some(first),
                last_seq: Some(last),
                min_seq: Some(first),
                max_seq: Some(last),
                ..Counts::default()
            },
            // Its figures are its owner's (see `Settled`): only the floor is its own.
            State::Settled(floor) => Counts {
                max_seq: Some(floor),
                ..Counts::default()
            },
            State::Gapped(i) => {
                let g = &pools.gapped[i];
                Counts {
                    received: g.received,
                    unique: g.unique(),
                    duplicates: g.duplicates,
                    out_of_order: g.out_of_order,
                    unverifiable: g.unverifiable,
                    first_seq: Some(g.first_seq),
                    last_seq: Some(g.last_seq),
                    min_seq: g.min_seq(),
                    max_seq: g.max_seq(),
                }
            }
        }
    }

    /// The highest seq that arrived.
    pub fn max_seq(&self, pools: &Pools) -> Option<u64> {
        match self.state() {
            State::Empty => None,
            State::Run(_, last) | State::Settled(last) => Some(last),
            State::Gapped(i) => pools.gapped[i].max_seq(),
        }
    }

    /// Missing seqs below the highest seen (from 0 with `from_zero`, else from the lowest
    /// seen): the exact count and at most `limit` (and [`LISTED_RANGES`]) ranges.
    pub fn missing(&self, pools: &Pools, from_zero: bool, limit: usize) -> Missing {
        match self.state() {
            State::Gapped(i) => pools.gapped[i].missing(from_zero, limit),
            State::Run(first, _) if from_zero && first > 0 => Missing {
                count: first,
                ranges: (limit.min(LISTED_RANGES) > 0)
                    .then_some(SeqRange(0, first - 1))
                    .into_iter()
                    .collect(),
                truncated: limit == 0,
            },
            // A settled pair's missing seqs are counted in its owner's `Settled`.
            State::Empty | State::Run(..) | State::Settled(_) => Missing {
                count: 0,
                ranges: Vec::new(),
                truncated: false,
            },
        }
    }

    /// Whether seqs are missing below the highest seen (from 0 with `from_zero`).
    pub fn has_gaps(&self, pools: &Pools, from_zero: bool) -> bool {
        self.missing(pools, from_zero, 0).count > 0
    }

    /// What arrived, as ranges: at most `limit` (and [`LISTED_RANGES`]), and whether there
    /// are more.
    pub fn received_ranges(&self, pools: &Pools, limit: usize) -> (Vec<SeqRange>, bool) {
        match self.state() {
            State::Empty => (Vec::new(), false),
            State::Settled(_) => (Vec::new(), true),
            State::Run(first, last) if limit.min(LISTED_RANGES) > 0 => {
                (vec![SeqRange(first, last)], false)
            }
            State::Run(..) => (Vec::new(), true),
            State::Gapped(i) => pools.gapped[i].received_ranges(limit),
        }
    }
}

/// A pair's gap record: its seqs as live ranges above a floor, retired ones below it.
#[derive(Debug, Default, Clone)]
struct Gapped {
    /// Live ranges, all above `retired.floor`.
    seen: RangeSet,
    retired: Option<Box<Retired>>,
    received: u64,
    duplicates: u64,
    out_of_order: u64,
    unverifiable: u64,
    first_seq: u64,
    last_seq: u64,
}

impl Gapped {
    /// The record of an in-order run `first..=last` (its one range drawn from `budget`).
    fn run(first: u64, last: u64, budget: &mut Budget) -> Gapped {
        let mut g = Gapped {
            received: last - first + 1,
            first_seq: first,
            last_seq: last,
            ..Gapped::default()
        };
        g.seen.ranges.insert(first, last);
        if budget.live_left == 0 {
            g.retire(1, budget);
        }
        budget.live_left = budget.live_left.saturating_sub(1);
        g
    }

    /// Records one arrival of `seq`, drawing any new range from `budget`.
    fn record(&mut self, seq: u64, budget: &mut Budget) -> Arrival {
        self.received += 1;
        self.last_seq = seq;
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

    fn unique(&self) -> u64 {
        self.retired.as_ref().map_or(0, |r| r.unique) + self.seen.len()
    }

    fn min_seq(&self) -> Option<u64> {
        self.retired.as_ref().map(|r| r.min).or(self.seen.min())
    }

    fn max_seq(&self) -> Option<u64> {
        self.seen.max().or(self.retired.as_ref().map(|r| r.floor))
    }

    /// What arrived, as ranges: at most `limit` (and [`LISTED_RANGES`]), and whether there
    /// are more.
    fn received_ranges(&self, limit: usize) -> (Vec<SeqRange>, bool) {
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
    fn missing(&self, from_zero: bool, limit: usize) -> Missing {
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

    /// A pair's gap record (the pair has left its in-order run).
    fn rec<'p>(t: &Tracker, p: &'p Pools) -> &'p Gapped {
        match t.state() {
            State::Gapped(i) => &p.gapped[i],
            _ => panic!("{t:?} has no gap record"),
        }
    }

    fn budget(live: usize, listed: usize) -> Pools {
        Pools::new(Budget::new(live, listed))
    }

    #[test]
    fn in_order_arrivals_are_one_range() {
        let mut t = Tracker::default();
        let mut p = Pools::default();
        for s in 0..100_000 {
            assert_eq!(t.record(s, &mut p), Arrival::New);
        }
        assert!(!t.is_gapped());
        assert_eq!(p.gap_records(), 0);
        assert_eq!(
            t.received_ranges(&p, 10),
            (vec![SeqRange(0, 99_999)], false)
        );
        let c = t.counts(&p);
        assert_eq!((c.unique, c.duplicates, c.out_of_order), (100_000, 0, 0));
        assert_eq!(t.missing(&p, true, LISTED_RANGES).count, 0);
        assert!(t.missing(&p, true, LISTED_RANGES).ranges.is_empty());
    }

    /// The in-order case costs its two words and nothing else, however long the run.
    #[test]
    fn a_pair_without_gaps_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Tracker>(), 16);
        let mut t = Tracker::default();
        let mut p = Pools::default();
        for s in 7..1_000_007 {
            t.record(s, &mut p);
        }
        assert_eq!((p.gap_records(), p.gap_record_bytes()), (0, 0));
        assert_eq!(t.counts(&p).unique, 1_000_000);
        assert_eq!(t.counts(&p).min_seq, Some(7));
        // From zero, the seqs before the first are missing, without a record of its own.
        assert_eq!(
            t.missing(&p, true, 5),
            Missing {
                count: 7,
                ranges: vec![SeqRange(0, 6)],
                truncated: false
            }
        );
    }

    /// 0,1,2,5,6,6: the run breaks at 5 (a gap of two) and again at the second 6.
    #[test]
    fn a_gap_and_a_duplicate_move_the_pair_into_a_gap_record() {
        let mut t = Tracker::default();
        let mut p = Pools::default();
        let arrivals: Vec<Arrival> = [0, 1, 2, 5, 6, 6]
            .into_iter()
            .map(|s| t.record(s, &mut p))
            .collect();
        use Arrival::*;
        assert_eq!(arrivals, [New, New, New, New, New, Duplicate]);
        assert!(t.is_gapped());
        let c = t.counts(&p);
        assert_eq!((c.received, c.unique, c.duplicates), (6, 5, 1));
        assert_eq!(
            (c.first_seq, c.last_seq, c.max_seq),
            (Some(0), Some(6), Some(6))
        );
        let m = t.missing(&p, true, 10);
        assert_eq!((m.count, m.ranges), (2, vec![SeqRange(3, 4)]));
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_told_apart() {
        let mut t = Tracker::default();
        let mut p = Pools::default();
        for s in (0..1200).chain(1300..5000).chain(5001..6000) {
            t.record(s, &mut p);
        }
        assert_eq!(t.record(10, &mut p), Arrival::Duplicate);
        assert_eq!(t.record(1250, &mut p), Arrival::Late);
        let missing = t.missing(&p, true, LISTED_RANGES);
        let gaps: Vec<String> = missing.ranges.iter().map(|g| g.to_string()).collect();
        assert_eq!(gaps, ["1200-1249", "1251-1299", "5000"]);
        assert_eq!((missing.count, missing.truncated), (50 + 49 + 1, false));
        let c = t.counts(&p);
        assert_eq!((c.duplicates, c.out_of_order, c.received), (1, 1, 5901));
        assert_eq!((c.first_seq, c.last_seq), (Some(0), Some(1250)));
    }

    #[test]
    fn missing_from_zero_or_from_first_seen() {
        let mut t = Tracker::default();
        let mut p = Pools::default();
        for s in 10..20 {
            t.record(s, &mut p);
        }
        assert_eq!(t.missing(&p, true, LISTED_RANGES).ranges, [SeqRange(0, 9)]);
        assert_eq!(t.missing(&p, true, LISTED_RANGES).count, 10);
        assert_eq!(t.missing(&p, false, LISTED_RANGES).count, 0);
        // The same once the pair has a gap record.
        t.record(25, &mut p);
        assert_eq!(
            t.missing(&p, true, LISTED_RANGES).ranges,
            [SeqRange(0, 9), SeqRange(20, 24)]
        );
        assert_eq!(t.missing(&p, false, LISTED_RANGES).count, 5);
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

    /// No gap record left: a pair that breaks its run settles at a floor, its figures (and
    /// those of later arrivals) counted exactly in its owner's `Settled`.
    #[test]
    fn past_the_last_gap_record_a_pair_settles_and_its_owner_counts_exactly() {
        let mut p = Pools::new(Budget::default().with_records(1));
        let (mut a, mut b) = (Tracker::default(), Tracker::default());
        let mut owner = Settled::default();
        for s in [3, 4, 5, 8] {
            a.record_settling(s, &mut p, &mut owner);
        }
        assert!(a.is_gapped(), "the one record");
        use Arrival::*;
        let arrivals: Vec<Arrival> = [3, 4, 5, 8, 9, 12, 4, 7, 2]
            .into_iter()
            .map(|s| b.record_settling(s, &mut p, &mut owner))
            .collect();
        assert_eq!(
            arrivals,
            [
                New,
                New,
                New,
                New,
                New,
                New,
                Unverifiable,
                Unverifiable,
                Unverifiable
            ]
        );
        assert!(b.is_settled());
        assert_eq!(p.gap_records(), 1);
        assert_eq!(
            owner,
            Settled {
                pairs: 1,
                received: 9,
                unique: 6,
                duplicates: 0,
                unverifiable: 3,
                missing: 2 + 2,
                missing_below_first: 3,
            }
        );
        assert_eq!((owner.missing(true), b.max_seq(&p)), (7, Some(12)));
        // A duplicate inside the run it had is still known as one.
        let mut c = Tracker::default();
        c.record_settling(0, &mut p, &mut owner);
        c.record_settling(1, &mut p, &mut owner);
        assert_eq!(c.record_settling(0, &mut p, &mut owner), Duplicate);
        assert_eq!(owner.duplicates, 1);
    }

    /// A run that reaches the highest seq cannot grow; what comes next leaves the run.
    #[test]
    fn a_run_up_to_the_highest_seq_is_still_a_run() {
        let mut t = Tracker::default();
        let mut p = Pools::default();
        assert_eq!(t.record(u64::MAX - 1, &mut p), Arrival::New);
        assert_eq!(t.record(u64::MAX, &mut p), Arrival::New);
        assert!(!t.is_gapped() && !t.is_empty());
        assert_eq!(t.record(u64::MAX, &mut p), Arrival::Duplicate);
        assert_eq!(t.counts(&p).unique, 2);
    }

    /// A long lossy run: every third seq lost, far more gaps than stay live.
    #[test]
    fn many_gaps_stay_bounded_and_counted_exactly() {
        let mut t = Tracker::default();
        let mut p = Pools::default();
        let n: u64 = 30 * LIVE_RANGES as u64;
        let kept = |s: u64| s % 3 != 2;
        for s in (0..n).filter(|s| kept(*s)) {
            assert_ne!(t.record(s, &mut p), Arrival::Unverifiable);
        }
        assert!(rec(&t, &p).seen.range_count() <= LIVE_RANGES);
        let expect_unique = (0..n).filter(|s| kept(*s)).count() as u64;
        let expect_missing = n - 1 - expect_unique + 1 - u64::from(!kept(n - 1));
        assert_eq!(t.counts(&p).unique, expect_unique);
        let missing = t.missing(&p, true, LISTED_RANGES);
        assert_eq!(missing.count, expect_missing);
        assert!(missing.truncated);
        assert_eq!(missing.ranges.len(), LISTED_RANGES);
        assert_eq!(&missing.ranges[..2], [SeqRange(2, 2), SeqRange(5, 5)]);
        let c = t.counts(&p);
        assert_eq!((c.min_seq, c.max_seq), (Some(0), Some(n - 2)));
        let (received, truncated) = t.received_ranges(&p, LISTED_RANGES);
        assert!(truncated);
        assert_eq!(&received[..2], [SeqRange(0, 1), SeqRange(3, 4)]);

        // A late fill-in above the floor is still told apart; one below it is not.
        let floor = rec(&t, &p).retired.as_ref().unwrap().floor;
        assert_eq!(t.record(n - 3 * 4 + 2, &mut p), Arrival::Late);
        assert_eq!(t.record(n - 3 * 4 + 2, &mut p), Arrival::Duplicate);
        assert_eq!(t.record(floor - 1, &mut p), Arrival::Unverifiable);
        assert_eq!(t.missing(&p, true, LISTED_RANGES).count, expect_missing - 1);
        assert_eq!(t.counts(&p).unverifiable, 1);
    }

    /// Many lossy devices share one pool: live ranges never exceed it, counts stay exact.
    #[test]
    fn gaps_of_many_devices_share_a_bounded_pool() {
        let mut p = budget(64, 32);
        let mut devices = [Tracker::default(); 20];
        for s in (0..200).step_by(2) {
            for d in &mut devices {
                d.record(s, &mut p);
            }
            let live: usize = p.gapped.iter().map(|g| g.seen.range_count()).sum();
            assert!(live <= 64, "{live} live ranges");
        }
        for d in &devices {
            let c = d.counts(&p);
            assert_eq!(c.unique, 100);
            let m = d.missing(&p, true, LISTED_RANGES);
            assert_eq!(m.count, 99);
            assert_eq!(c.unique + m.count, c.max_seq.unwrap() + 1);
        }
        let listed: usize = p
            .gapped
            .iter()
            .filter_map(|g| g.retired.as_ref())
            .map(|r| r.received_listed.len() + r.missing_listed.len())
            .sum();
        assert!(listed <= 32, "{listed} listed");
    }

    /// With the pool empty, an in-order device keeps its run (no range of the pool's), and
    /// what breaks the run later is judged as if every range had been retired as it came.
    #[test]
    fn an_in_order_device_with_an_empty_pool_lists_one_range() {
        let mut p = budget(0, 8);
        let mut t = Tracker::default();
        for s in 0..1000 {
            assert_eq!(t.record(s, &mut p), Arrival::New);
        }
        assert_eq!(t.counts(&p).unique, 1000);
        assert_eq!(t.received_ranges(&p, LISTED_RANGES).0, [SeqRange(0, 999)]);
        assert_eq!(t.missing(&p, true, LISTED_RANGES).count, 0);
        assert_eq!(t.record(999, &mut p), Arrival::Unverifiable);
        assert_eq!(t.received_ranges(&p, LISTED_RANGES).0, [SeqRange(0, 999)]);
        assert_eq!(t.counts(&p).unique, 1000);
    }

    /// The seq just above the floor arrives late, then gets retired itself: it joins the
    /// retired ranges without a gap of its own.
    #[test]
    fn a_late_point_just_above_the_floor_retires_cleanly() {
        let mut t = Tracker::default();
        let mut p = Pools::default();
        // Even seqs only: each is its own range, every odd seq a gap.
        let mut next = 0u64;
        while !t.is_gapped() || rec(&t, &p).retired.is_none() {
            t.record(next, &mut p);
            next += 2;
        }
        let floor = rec(&t, &p).retired.as_ref().unwrap().floor;
        assert_eq!(t.record(floor + 1, &mut p), Arrival::Late);
        let before = t.missing(&p, true, LISTED_RANGES).count;
        for _ in 0..LIVE_RANGES {
            t.record(next, &mut p);
            next += 2;
        }
        assert!(rec(&t, &p).retired.as_ref().unwrap().floor > floor + 1);
        let m = t.missing(&p, true, LISTED_RANGES);
        assert_eq!(m.count, before + LIVE_RANGES as u64);
        assert!(m.ranges.iter().all(|r| r.0 <= r.1));
        assert_eq!(t.counts(&p).unique + m.count, t.max_seq(&p).unwrap() + 1);
    }
}
