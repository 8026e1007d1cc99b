//! Proof of delivery for a subscriber fleet: every subscriber verifies every device it
//! receives, exactly as backend-sub verifies its devices (one verifier: [`crate::verify`]),
//! and the figures of all subscribers add up into one mergeable report part.
//!
//! ```text
//! per worker:  FleetVerifier
//!   point (subscriber s, device id, seq, latency)
//!     --> DeviceInterner: id -> dense u32, once per device (per subscriber a last-device
//!         check first: a byte compare, no hash)
//!     --> subscriber s's PairTable: u32 -> verify::Tracker (16 bytes; a gap record from the
//!         worker's shared verify::Pools only once the pair has a gap, duplicate or reordering;
//!         with no record left the pair settles, its figures in s's verify::Settled)
//!     --> s's counters and latency summary; the worker's HdrHistogram over all points
//! end of run:  FleetVerifier::stats(&Rules) --> FleetStats (per worker)
//!     --> += across workers, and across shard reports (JSON) --> verdict, Summary (Markdown)
//! ```
//!
//! A subscriber's table is a short list while it has seen a few devices (a one-to-one
//! subscriber sees one), a vector indexed by the device's number once it sees most of them
//! (`device_data/#`: fan-out), and an open-addressed table in between; none allocates per
//! point. 1,000 subscribers x 1,000 devices in order cost about 16 MB.
//!
//! In a share group the members divide the points between them, so a member's gaps say
//! nothing: the verdict then judges the total (`expect`) and each member's duplicates, and the
//! caller may give all members on a worker one slot (one subscriber to the verifier).
//!
//! Everything a [`FleetStats`] holds adds up exactly: counts are sums, the per-subscriber
//! spreads are exact value counts, the listed subscribers are the first by index and the
//! slowest are the top by latency (both the same from the parts as from the whole), and the
//! latency is one HdrHistogram (µs), added, never percentiles averaged.

use std::collections::{BTreeMap, HashMap};
use std::ops::AddAssign;

use hdrhistogram::Histogram;
use mqtt_tool::format::{fmt_int, Percentiles};
use mqtt_tool::hist::{histogram as latency_histogram, record_clamped};
use mqtt_tool::summary::{fmt_ms, Summary};
use serde::{Deserialize, Serialize};

use crate::verify::{Arrival, Budget, Pools, Settled, Tracker};

/// Subscribers with a problem named in a report, the first by index; the rest are counted.
pub const PROBLEMS_LISTED: usize = 20;
/// The slowest subscribers named.
pub const SLOWEST_LISTED: usize = 10;
/// Devices a subscriber's table keeps as a plain list before it becomes a table.
const FEW: usize = 8;

/// A device's number on one worker: dense, from 0, in the order devices were first seen.
pub type DeviceIx = u32;

/// Device ids to dense numbers, once per device (the only allocation a device costs the
/// worker beside its pairs).
#[derive(Debug, Default)]
pub struct DeviceInterner {
    ids: HashMap<Box<str>, DeviceIx>,
    names: Vec<Box<str>>,
}

impl DeviceInterner {
    /// The number of `id`, given on first sight; `None` past `max` devices.
    pub fn intern(&mut self, id: &str, max: usize) -> Option<DeviceIx> {
        if let Some(ix) = self.ids.get(id) {
            return Some(*ix);
        }
        if self.names.len() >= max.min(u32::MAX as usize) {
            return None;
        }
        let ix = self.names.len() as DeviceIx;
        self.names.push(id.into());
        self.ids.insert(id.into(), ix);
        Some(ix)
    }

    pub fn name(&self, ix: DeviceIx) -> &str {
        &self.names[ix as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One subscriber's pairs, by device number.
#[derive(Debug)]
enum PairTable {
    /// The first few devices (a one-to-one subscriber's one).
    Few(Vec<(DeviceIx, Tracker)>),
    /// Open addressing, linear probing; `u32::MAX` marks a free slot.
    Hashed {
        keys: Vec<DeviceIx>,
        pairs: Vec<Tracker>,
        len: usize,
    },
    /// Indexed by the device number; an empty tracker is a device not seen.
    Dense(Vec<Tracker>),
}

const FREE: DeviceIx = DeviceIx::MAX;

fn slot_of(dev: DeviceIx, mask: usize) -> usize {
    (dev as usize).wrapping_mul(0x9E37_79B9) & mask
}

impl PairTable {
    /// The tracker of `dev`, added (empty) on first sight.
    #[inline]
    fn get_mut(&mut self, dev: DeviceIx) -> &mut Tracker {
        let i = match self.find(dev) {
            Some(i) => i,
            None => self.insert(dev),
        };
        match self {
            PairTable::Few(v) => &mut v[i].1,
            PairTable::Hashed { pairs, .. } => &mut pairs[i],
            PairTable::Dense(v) => &mut v[i],
        }
    }

    fn get(&self, dev: DeviceIx) -> Option<&Tracker> {
        let i = self.find(dev)?;
        Some(match self {
            PairTable::Few(v) => &v[i].1,
            PairTable::Hashed { pairs, .. } => &pairs[i],
            PairTable::Dense(v) => &v[i],
        })
    }

    /// Where `dev`'s tracker is.
    #[inline]
    fn find(&self, dev: DeviceIx) -> Option<usize> {
        match self {
            PairTable::Dense(v) => ((dev as usize) < v.len()).then_some(dev as usize),
            PairTable::Few(v) => v.iter().position(|(d, _)| *d == dev),
            PairTable::Hashed { keys, .. } => {
                let mask = keys.len() - 1;
                let mut i = slot_of(dev, mask);
                loop {
                    match keys[i] {
                        k if k == dev => return Some(i),
                        FREE => return None,
                        _ => i = (i + 1) & mask,
                    }
                }
            }
        }
    }

    /// Adds `dev` (not there yet), growing or changing the table; where its tracker is.
    #[cold]
    fn insert(&mut self, dev: DeviceIx) -> usize {
        match self {
            PairTable::Few(v) if v.len() < FEW => {
                v.push((dev, Tracker::EMPTY));
                return v.len() - 1;
            }
            PairTable::Few(v) => {
                let entries = std::mem::take(v);
                *self = PairTable::rebuilt(entries.into_iter(), FEW + 1, dev);
            }
            PairTable::Hashed { keys, len, .. } if (*len + 1) * 10 <= keys.len() * 7 => {
                let mask = keys.len() - 1;
                let mut i = slot_of(dev, mask);
                while keys[i] != FREE {
                    i = (i + 1) & mask;
                }
                keys[i] = dev;
                *len += 1;
                return i;
            }
            PairTable::Hashed { keys, pairs, len } => {
                let entries: Vec<(DeviceIx, Tracker)> = keys
                    .iter()
                    .zip(pairs.iter())
                    .filter(|(k, _)| **k != FREE)
                    .map(|(k, p)| (*k, *p))
                    .collect();
                let n = *len + 1;
                *self = PairTable::rebuilt(entries.into_iter(), n, dev);
            }
            PairTable::Dense(v) => {
                // A little room beyond `dev` (an eighth): a fan-out subscriber meets devices
                // one by one, and doubling would leave up to half the table unused.
                let want = (dev as usize + 1).max(v.len() + v.len() / 8).max(FEW);
                v.reserve_exact(want - v.len());
                v.resize(want, Tracker::EMPTY);
            }
        }
        match self.find(dev) {
            Some(i) => i,
            None => self.insert(dev),
        }
    }

    /// A table for `n` devices holding `entries` (and room for `dev`): dense when the
    /// device numbers are mostly taken, hashed when they are scattered.
    fn rebuilt(
        entries: impl Iterator<Item = (DeviceIx, Tracker)> + Clone,
        n: usize,
        dev: DeviceIx,
    ) -> PairTable {
        let highest = entries.clone().map(|(d, _)| d).max().unwrap_or(0).max(dev) as usize;
        // 16 bytes a device number against 20 a slot at most 70% full.
        if (highest + 1) * 16 <= n * 2 * 20 {
            let mut v = vec![Tracker::EMPTY; highest + 1];
            for (d, t) in entries {
                v[d as usize] = t;
            }
            return PairTable::Dense(v);
        }
        let cap = (n * 2).next_power_of_two();
        let mut t = PairTable::Hashed {
            keys: vec![FREE; cap],
            pairs: vec![Tracker::EMPTY; cap],
            len: 0,
        };
        for (d, tr) in entries {
            let i = t.insert(d);
            if let PairTable::Hashed { pairs, .. } = &mut t {
                pairs[i] = tr;
            }
        }
        t
    }

    /// Every device seen, with its tracker.
    fn for_each(&self, mut f: impl FnMut(DeviceIx, &Tracker)) {
        match self {
            PairTable::Few(v) => v.iter().for_each(|(d, t)| f(*d, t)),
            PairTable::Hashed { keys, pairs, .. } => keys
                .iter()
                .zip(pairs)
                .filter(|(k, _)| **k != FREE)
                .for_each(|(k, t)| f(*k, t)),
            PairTable::Dense(v) => v
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.is_empty())
                .for_each(|(d, t)| f(d as DeviceIx, t)),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            PairTable::Few(v) => v.capacity() * std::mem::size_of::<(DeviceIx, Tracker)>(),
            PairTable::Hashed { keys, pairs, .. } => keys.capacity() * 4 + pairs.capacity() * 16,
            PairTable::Dense(v) => v.capacity() * std::mem::size_of::<Tracker>(),
        }
    }
}

/// Octaves of µs a subscriber's latency summary covers (2^33 µs > the histograms' hour).
const OCTAVES: usize = 33;

/// A subscriber's latency in a few hundred bytes: the highest, and counts in half-octave
/// buckets, enough to rank subscribers by their p99 (not a histogram each).
#[derive(Debug, Clone)]
pub struct LatencySummary {
    pub max_us: u64,
    buckets: [u32; 2 * OCTAVES],
}

impl Default for LatencySummary {
    fn default() -> Self {
        LatencySummary {
            max_us: 0,
            buckets: [0; 2 * OCTAVES],
        }
    }
}

impl LatencySummary {
    fn bucket(us: u64) -> usize {
        let us = us.max(1);
        let octave = 63 - us.leading_zeros() as usize;
        // The upper half of an octave: the bit below the leading one.
        let half = octave > 0 && us & (1 << (octave - 1)) != 0;
        (2 * octave + usize::from(half)).min(2 * OCTAVES - 1)
    }

    /// The highest µs bucket `b` holds.
    fn upper(b: usize) -> u64 {
        let octave = b / 2;
        if b % 2 == 0 && octave > 0 {
            (1u64 << octave) + (1u64 << (octave - 1)) - 1
        } else {
            (1u64 << (octave + 1)) - 1
        }
    }

    #[inline]
    pub fn record(&mut self, us: u64) {
        self.max_us = self.max_us.max(us);
        let b = &mut self.buckets[Self::bucket(us)];
        *b = b.saturating_add(1);
    }

    /// The p99, as the top of its half-octave bucket (at most the highest): within a factor
    /// of 1.5 above the true one, never below it.
    pub fn p99_at_most_us(&self) -> Option<u64> {
        let total: u64 = self.buckets.iter().map(|c| u64::from(*c)).sum();
        if total == 0 {
            return None;
        }
        let rank = total - total / 100; // the count at or below the p99
        let mut seen = 0u64;
        for (b, c) in self.buckets.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return Some(Self::upper(b).min(self.max_us));
            }
        }
        Some(self.max_us)
    }
}

/// One subscriber on a worker: its pairs and its counts.
#[derive(Debug)]
pub struct Subscriber {
    /// Its index in the fleet (`{i}`), for the report.
    pub index: u32,
    pairs: PairTable,
    /// The device of its last point: the next is most often the same.
    last_device: Option<DeviceIx>,
    pub deliveries: u64,
    pub points: u64,
    pub unique: u64,
    pub malformed: u64,
    /// Points of devices past the worker's device limit: counted, not verified.
    pub untracked: u64,
    /// The figures of its pairs that settled (no gap record was left for them).
    pub settled: Settled,
    pub latency: LatencySummary,
}

/// The fleet's proof on one worker: its subscribers, their pairs, the shared pools.
#[derive(Debug)]
pub struct FleetVerifier {
    devices: DeviceInterner,
    max_devices: usize,
    pools: Pools,
    subscribers: Vec<Subscriber>,
    /// End-to-end latency of every point delivered, µs.
    latency_us: Histogram<u64>,
    latency_clamped: u64,
}

impl FleetVerifier {
    /// A verifier for the subscribers of `indexes` (their slots 0.. in that order), at most
    /// `max_devices` devices, their gaps drawn from `budget` (a fleet's:
    /// `Budget::default().with_records(verify::GAP_RECORDS_FLEET)`).
    pub fn new(
        indexes: impl IntoIterator<Item = u32>,
        max_devices: usize,
        budget: Budget,
    ) -> FleetVerifier {
        FleetVerifier {
            devices: DeviceInterner::default(),
            max_devices,
            pools: Pools::new(budget),
            subscribers: indexes
                .into_iter()
                .map(|index| Subscriber {
                    index,
                    pairs: PairTable::Few(Vec::new()),
                    last_device: None,
                    deliveries: 0,
                    points: 0,
                    unique: 0,
                    malformed: 0,
                    untracked: 0,
                    settled: Settled::default(),
                    latency: LatencySummary::default(),
                })
                .collect(),
            latency_us: latency_histogram(),
            latency_clamped: 0,
        }
    }

    pub fn subscribers(&self) -> &[Subscriber] {
        &self.subscribers
    }

    pub fn devices(&self) -> &DeviceInterner {
        &self.devices
    }

    /// A message reached subscriber `slot` (its points follow through [`Self::point`]).
    #[inline]
    pub fn delivery(&mut self, slot: usize) {
        self.subscribers[slot].deliveries += 1;
    }

    /// A message to subscriber `slot` did not decode.
    pub fn malformed(&mut self, slot: usize) {
        self.subscribers[slot].malformed += 1;
    }

    /// One point of `device` (seq `seq`, `latency_us` from its timestamp) reached subscriber
    /// `slot`; `None`: the device is past the device limit (counted as untracked).
    #[inline]
    pub fn point(
        &mut self,
        slot: usize,
        device: &str,
        seq: u64,
        latency_us: u64,
    ) -> Option<Arrival> {
        let sub = &mut self.subscribers[slot];
        sub.points += 1;
        sub.latency.record(latency_us);
        record_clamped(&mut self.latency_us, latency_us, &mut self.latency_clamped);
        let dev = match sub.last_device {
            Some(d) if *self.devices.name(d) == *device => d,
            _ => match self.devices.intern(device, self.max_devices) {
                Some(d) => {
                    sub.last_device = Some(d);
                    d
                }
                None => {
                    sub.untracked += 1;
                    return None;
                }
            },
        };
        let arrival =
            sub.pairs
                .get_mut(dev)
                .record_settling(seq, &mut self.pools, &mut sub.settled);
        sub.unique += u64::from(matches!(arrival, Arrival::New | Arrival::Late));
        Some(arrival)
    }

    /// The figures of (`slot`, `device`), if that pair has seen a point (a settled pair's
    /// are its subscriber's: see [`Subscriber::settled`]).
    pub fn pair(&self, slot: usize, device: &str) -> Option<crate::verify::Counts> {
        let dev = *self.devices.ids.get(device)?;
        let t = self.subscribers[slot].pairs.get(dev)?;
        (!t.is_empty()).then(|| t.counts(&self.pools))
    }

    /// Bytes the pairs hold: the subscribers' tables, the gap records (not their ranges).
    pub fn pair_bytes(&self) -> usize {
        self.subscribers
            .iter()
            .map(|s| s.pairs.heap_bytes())
            .sum::<usize>()
            + self.pools.gap_record_bytes()
    }

    /// This worker's figures, judged by `rules` (planned / connected / failed are the
    /// caller's to fill).
    pub fn stats(&self, rules: &Rules) -> FleetStats {
        let from_zero = rules.expect_per_client.is_some();
        let mut st = FleetStats {
            latency_histogram: Hist(self.latency_us.clone()),
            latency_clamped: self.latency_clamped,
            ..FleetStats::default()
        };
        for sub in &self.subscribers {
            let mut c = SubscriberCounts {
                index: sub.index,
                deliveries: sub.deliveries,
                points: sub.points,
                unique: sub.unique,
                malformed: sub.malformed,
                untracked: sub.untracked,
                ..SubscriberCounts::default()
            };
            sub.pairs.for_each(|_, t| {
                let k = t.counts(&self.pools);
                c.duplicate += k.duplicates;
                c.out_of_order += k.out_of_order;
                c.unverifiable += k.unverifiable;
                if !rules.share_group {
                    let m = t.missing(&self.pools, from_zero, 0).count;
                    c.missing = c.missing.saturating_add(m);
                }
            });
            let settled = &sub.settled;
            c.duplicate += settled.duplicates;
            c.unverifiable += settled.unverifiable;
            c.missing = c.missing.saturating_add(settled.missing(from_zero));
            if rules.share_group {
                c.missing = 0;
            }
            st.add_subscriber(&c, &sub.latency, rules);
        }
        st.refresh();
        st
    }
}

/// What each subscriber must get, and how strictly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// `--expect-per-client`: each subscriber's unique points (missing then counts from 0).
    pub expect_per_client: Option<u64>,
    /// `--expect`: the fleet's unique points together (a share group's total).
    pub expect: Option<u64>,
    /// `--at-least-once`: duplicates are counted but pass.
    pub at_least_once: bool,
    /// Members divide the points: a member's gaps are not missing points.
    pub share_group: bool,
}

/// One subscriber's figures, as the stats see them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberCounts {
    pub index: u32,
    pub deliveries: u64,
    pub points: u64,
    pub unique: u64,
    pub missing: u64,
    pub duplicate: u64,
    pub out_of_order: u64,
    pub unverifiable: u64,
    pub malformed: u64,
    pub untracked: u64,
}

impl SubscriberCounts {
    /// Whether this subscriber fails the verdict under `rules`.
    pub fn has_problem(&self, rules: &Rules) -> bool {
        self.missing > 0
            || (self.duplicate > 0 && !rules.at_least_once)
            || self.unverifiable > 0
            || self.malformed > 0
            || self.untracked > 0
            || rules
                .expect_per_client
                .is_some_and(|n| self.unique != n && !rules.share_group)
    }
}

/// A subscriber among the slowest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowSubscriber {
    pub index: u32,
    /// The p99 of its points' end-to-end latency, as the top of its bucket (at most 1.5x
    /// the true one), µs.
    pub p99_at_most_us: u64,
    pub max_us: u64,
    pub points: u64,
}

/// An exact spread of a per-subscriber figure: how many subscribers had each value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Spread(BTreeMap<u64, u64>);

impl Spread {
    pub fn add(&mut self, value: u64) {
        *self.0.entry(value).or_default() += 1;
    }

    pub fn subscribers(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn min(&self) -> Option<u64> {
        self.0.keys().next().copied()
    }

    pub fn max(&self) -> Option<u64> {
        self.0.keys().next_back().copied()
    }

    /// The lower median: the value of the subscriber at rank (n - 1) / 2.
    pub fn median(&self) -> Option<u64> {
        let rank = self.subscribers().checked_sub(1)? / 2;
        let mut seen = 0;
        for (v, n) in &self.0 {
            seen += n;
            if seen > rank {
                return Some(*v);
            }
        }
        None
    }
}

impl AddAssign<&Spread> for Spread {
    fn add_assign(&mut self, o: &Spread) {
        for (v, n) in &o.0 {
            *self.0.entry(*v).or_default() += n;
        }
    }
}

/// The latency histogram inside a report: base64 of its V2 + DEFLATE encoding.
#[derive(Clone)]
pub struct Hist(pub Histogram<u64>);

impl std::fmt::Debug for Hist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.0;
        write!(
            f,
            "Hist(count {}, min {}, max {}, high {})",
            h.len(),
            h.min(),
            h.max(),
            h.high()
        )
    }
}

impl Default for Hist {
    fn default() -> Self {
        Hist(latency_histogram())
    }
}

/// The same values recorded (a decoded histogram may differ in its unused bucket space).
impl PartialEq for Hist {
    fn eq(&self, o: &Hist) -> bool {
        let recorded = |h: &Histogram<u64>| {
            h.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect::<Vec<_>>()
        };
        self.0.len() == o.0.len() && recorded(&self.0) == recorded(&o.0)
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        mqtt_tool::hist::encode(&self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Hist, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(Hist::default()),
            Some(t) => mqtt_tool::hist::decode(&t)
                .map(Hist)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The fleet's figures: per worker, summed with `+=` across workers and with
/// [`FleetStats::merge`] across shard reports. A field a report lacks (an older one) reads
/// as empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetStats {
    /// Subscribers the run planned, those that connected (and subscribed), and those that
    /// failed, by reason.
    pub subscribers_planned: u64,
    pub subscribers_connected: u64,
    pub subscribers_failed: BTreeMap<String, u64>,
    /// Subscribers verified (with figures below).
    pub subscribers_verified: u64,
    pub deliveries: u64,
    pub points: u64,
    pub points_unique: u64,
    /// Summed over subscribers (a point two subscribers miss counts twice).
    pub points_missing: u64,
    pub points_duplicate: u64,
    pub points_out_of_order: u64,
    pub points_unverifiable: u64,
    pub points_untracked: u64,
    pub malformed_messages: u64,
    /// Messages and points each subscriber got: value -> subscribers.
    pub deliveries_per_subscriber: Spread,
    pub points_per_subscriber: Spread,
    /// Subscribers that fail the verdict: the first [`PROBLEMS_LISTED`] by index, and how
    /// many more.
    pub subscribers_with_problems: Vec<SubscriberCounts>,
    pub subscribers_with_problems_more: u64,
    /// The slowest [`SLOWEST_LISTED`] subscribers, by their p99, then their highest.
    pub slowest_subscribers: Vec<SlowSubscriber>,
    /// End-to-end latency of every point delivered, µs (from the histogram).
    pub latency_us: Option<Percentiles>,
    /// Latencies past the histogram's ceiling, recorded at it.
    pub latency_clamped: u64,
    pub latency_histogram: Hist,
}

impl FleetStats {
    fn add_subscriber(&mut self, c: &SubscriberCounts, lat: &LatencySummary, rules: &Rules) {
        self.subscribers_verified += 1;
        self.deliveries += c.deliveries;
        self.points += c.points;
        self.points_unique += c.unique;
        self.points_missing = self.points_missing.saturating_add(c.missing);
        self.points_duplicate += c.duplicate;
        self.points_out_of_order += c.out_of_order;
        self.points_unverifiable += c.unverifiable;
        self.points_untracked += c.untracked;
        self.malformed_messages += c.malformed;
        self.deliveries_per_subscriber.add(c.deliveries);
        self.points_per_subscriber.add(c.points);
        if c.has_problem(rules) {
            self.subscribers_with_problems.push(c.clone());
        }
        if let Some(p99) = lat.p99_at_most_us() {
            self.slowest_subscribers.push(SlowSubscriber {
                index: c.index,
                p99_at_most_us: p99,
                max_us: lat.max_us,
                points: c.points,
            });
        }
    }

    /// Cuts the lists to their length and derives the percentiles (after adding).
    fn refresh(&mut self) {
        let p = &mut self.subscribers_with_problems;
        p.sort_by_key(|c| c.index);
        if p.len() > PROBLEMS_LISTED {
            self.subscribers_with_problems_more += (p.len() - PROBLEMS_LISTED) as u64;
            p.truncate(PROBLEMS_LISTED);
        }
        self.slowest_subscribers.sort_by(|a, b| {
            (b.p99_at_most_us, b.max_us)
                .cmp(&(a.p99_at_most_us, a.max_us))
                .then(a.index.cmp(&b.index))
        });
        self.slowest_subscribers.truncate(SLOWEST_LISTED);
        self.latency_us = Percentiles::of(&self.latency_histogram.0);
    }

    /// Whether every subscriber got what it should, exactly once (`at_least_once`: at least
    /// once); why not, one reason a line.
    pub fn verdict(&self, rules: &Rules) -> Verdict {
        let mut why = Vec::new();
        let failed: u64 = self.subscribers_failed.values().sum();
        if failed > 0 {
            let reasons: Vec<String> = self
                .subscribers_failed
                .iter()
                .map(|(r, n)| format!("{} {r}", fmt_int(*n)))
                .collect();
            why.push(format!(
                "{} of {} subscribers failed ({})",
                fmt_int(failed),
                fmt_int(self.subscribers_planned),
                reasons.join(", ")
            ));
        } else if self.subscribers_connected < self.subscribers_planned {
            why.push(format!(
                "{} of {} subscribers connected",
                fmt_int(self.subscribers_connected),
                fmt_int(self.subscribers_planned)
            ));
        }
        let problems =
            self.subscribers_with_problems.len() as u64 + self.subscribers_with_problems_more;
        if problems > 0 {
            let named: Vec<String> = self
                .subscribers_with_problems
                .iter()
                .take(5)
                .map(|c| describe(c, rules))
                .collect();
            let more = problems - named.len() as u64;
            let mut line = format!(
                "{} subscribers did not get every point exactly once: {}",
                fmt_int(problems),
                named.join("; ")
            );
            if more > 0 {
                line.push_str(&format!("; and {} more", fmt_int(more)));
            }
            why.push(line);
        }
        // Without an expectation the run still has to show delivery: a run where nothing
        // arrived, or a subscriber that got nothing while it was subscribed, proves nothing
        // (backend-sub fails "no message arrived" the same way). In a share group a member
        // may get none of a short stream, so only the group's total is judged.
        if self.subscribers_verified > 0 && self.points == 0 {
            why.push("no point arrived at any subscriber".into());
        } else if !rules.share_group {
            let empty = self.points_per_subscriber.0.get(&0).copied().unwrap_or(0);
            if empty > 0 {
                why.push(format!(
                    "{} of {} subscribers got no point",
                    fmt_int(empty),
                    fmt_int(self.points_per_subscriber.subscribers())
                ));
            }
        }
        if let Some(n) = rules.expect.filter(|n| *n != self.points_unique) {
            why.push(format!(
                "{} unique points of {} expected",
                fmt_int(self.points_unique),
                fmt_int(n)
            ));
        }
        Verdict {
            pass: why.is_empty(),
            why,
        }
    }

    /// The summary for people: the verdict and the rows that matter (Markdown through
    /// [`Summary::markdown`]).
    pub fn summary(&self, tool: &str, rules: &Rules) -> Summary {
        let mut s = Summary::new(tool);
        let v = self.verdict(rules);
        for w in &v.why {
            s.fail(&format!("verification failed: {w}"));
        }
        s.passed(&format!(
            "every subscriber got every point {} ({} subscribers, {} unique points)",
            if rules.at_least_once {
                "at least once"
            } else {
                "exactly once"
            },
            fmt_int(self.subscribers_verified),
            fmt_int(self.points_unique)
        ));
        let mut subs = vec![format!("{} planned", fmt_int(self.subscribers_planned))];
        subs.push(format!("{} connected", fmt_int(self.subscribers_connected)));
        for (r, n) in &self.subscribers_failed {
            subs.push(format!("{} failed: {r}", fmt_int(*n)));
        }
        s.row("subscribers", subs.join(", "));
        let spread = |sp: &Spread| match (sp.min(), sp.median(), sp.max()) {
            (Some(a), Some(m), Some(b)) => format!(
                "per subscriber min {}, median {}, max {}",
                fmt_int(a),
                fmt_int(m),
                fmt_int(b)
            ),
            _ => "none".to_string(),
        };
        s.row(
            "deliveries",
            format!(
                "{} messages ({})",
                fmt_int(self.deliveries),
                spread(&self.deliveries_per_subscriber)
            ),
        );
        s.row(
            "points",
            format!(
                "{} received, {} unique ({})",
                fmt_int(self.points),
                fmt_int(self.points_unique),
                spread(&self.points_per_subscriber)
            ),
        );
        let mut bad = Vec::new();
        if !rules.share_group {
            bad.push(format!("{} missing", fmt_int(self.points_missing)));
        }
        bad.push(format!(
            "{} duplicate{}",
            fmt_int(self.points_duplicate),
            if rules.at_least_once {
                " (accepted)"
            } else {
                ""
            }
        ));
        bad.push(format!(
            "{} out of order",
            fmt_int(self.points_out_of_order)
        ));
        for (n, what) in [
            (self.points_unverifiable, "unverifiable"),
            (self.points_untracked, "untracked"),
            (self.malformed_messages, "malformed messages"),
        ] {
            if n > 0 {
                bad.push(format!("{} {what}", fmt_int(n)));
            }
        }
        s.row("summed over subscribers", bad.join(", "));
        if let Some(p) = &self.latency_us {
            s.row(
                "end-to-end latency",
                format!(
                    "p50 {}, p99 {}, max {}",
                    fmt_ms(p.p50 as f64),
                    fmt_ms(p.p99 as f64),
                    fmt_ms(p.max as f64)
                ),
            );
        }
        if !self.slowest_subscribers.is_empty() {
            let slow: Vec<String> = self
                .slowest_subscribers
                .iter()
                .take(3)
                .map(|x| {
                    format!(
                        "#{} (p99 <= {}, max {})",
                        x.index,
                        fmt_ms(x.p99_at_most_us as f64),
                        fmt_ms(x.max_us as f64)
                    )
                })
                .collect();
            s.row("slowest subscribers", slow.join(", "));
        }
        s
    }
}

impl FleetStats {
    /// The text report's part: the summary's rows, every listed subscriber with a problem,
    /// the slowest, and the verdict.
    pub fn render_text(&self, rules: &Rules) -> String {
        let mut o = String::new();
        let rows = self.summary("", rules).rows;
        // A column as wide as the longest label and a space ("summed over subscribers").
        let w = rows
            .iter()
            .map(|(k, _)| k.chars().count() + 1)
            .max()
            .unwrap_or(0)
            .max(20);
        let mut line = |k: &str, v: &str| o.push_str(&format!("{k:<w$}{v}\n"));
        for (k, v) in &rows {
            line(k, v);
        }
        for (i, c) in self.subscribers_with_problems.iter().enumerate() {
            line(if i == 0 { "problems" } else { "" }, &describe(c, rules));
        }
        if self.subscribers_with_problems_more > 0 {
            line(
                "",
                &format!(
                    "and {} more subscribers",
                    fmt_int(self.subscribers_with_problems_more)
                ),
            );
        }
        for (i, x) in self.slowest_subscribers.iter().enumerate() {
            line(
                if i == 0 { "slowest" } else { "" },
                &format!(
                    "#{}: p99 <= {}, max {}, {} points",
                    x.index,
                    fmt_ms(x.p99_at_most_us as f64),
                    fmt_ms(x.max_us as f64),
                    fmt_int(x.points)
                ),
            );
        }
        let v = self.verdict(rules);
        if v.pass {
            line("verdict", "verified: every subscriber got every point");
        }
        for w in &v.why {
            line("verdict", &format!("FAILED: {}", mqtt_tool::out::escape(w)));
        }
        o
    }
}

/// One subscriber's problem, as the verdict names it.
fn describe(c: &SubscriberCounts, rules: &Rules) -> String {
    let mut what = Vec::new();
    if let Some(n) = rules
        .expect_per_client
        .filter(|n| *n != c.unique && !rules.share_group)
    {
        what.push(format!("{} of {} unique", fmt_int(c.unique), fmt_int(n)));
    }
    for (n, label, counts) in [
        (c.missing, "missing", true),
        (c.duplicate, "duplicate", !rules.at_least_once),
        (c.unverifiable, "unverifiable", true),
        (c.malformed, "malformed", true),
        (c.untracked, "untracked", true),
    ] {
        if n > 0 && counts {
            what.push(format!("{} {label}", fmt_int(n)));
        }
    }
    format!("#{} ({})", c.index, what.join(", "))
}

/// The verdict: pass, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub pass: bool,
    pub why: Vec<String>,
}

impl FleetStats {
    /// Adds a shard report's figures (read from a file): a sum that overflows or a
    /// histogram that does not add is an error naming the field, nothing is half added.
    pub fn merge(&mut self, o: &FleetStats) -> Result<(), String> {
        let mut sum = self.clone();
        sum.add(o, true)?;
        *self = sum;
        Ok(())
    }

    fn add(&mut self, o: &FleetStats, checked: bool) -> Result<(), String> {
        let add = |field: &str, a: &mut u64, b: u64| -> Result<(), String> {
            *a = match a.checked_add(b) {
                Some(v) => v,
                None if checked => return Err(format!("{field} add up past 2^64")),
                None => u64::MAX,
            };
            Ok(())
        };
        add(
            "subscribers_planned",
            &mut self.subscribers_planned,
            o.subscribers_planned,
        )?;
        add(
            "subscribers_connected",
            &mut self.subscribers_connected,
            o.subscribers_connected,
        )?;
        for (r, n) in &o.subscribers_failed {
            add(
                "subscribers_failed",
                self.subscribers_failed.entry(r.clone()).or_default(),
                *n,
            )?;
        }
        add(
            "subscribers_verified",
            &mut self.subscribers_verified,
            o.subscribers_verified,
        )?;
        add("deliveries", &mut self.deliveries, o.deliveries)?;
        add("points", &mut self.points, o.points)?;
        add("points_unique", &mut self.points_unique, o.points_unique)?;
        // Saturating, as each part's: a hostile seq near 2^64 claims that many missing.
        self.points_missing = self.points_missing.saturating_add(o.points_missing);
        add(
            "points_duplicate",
            &mut self.points_duplicate,
            o.points_duplicate,
        )?;
        add(
            "points_out_of_order",
            &mut self.points_out_of_order,
            o.points_out_of_order,
        )?;
        add(
            "points_unverifiable",
            &mut self.points_unverifiable,
            o.points_unverifiable,
        )?;
        add(
            "points_untracked",
            &mut self.points_untracked,
            o.points_untracked,
        )?;
        add(
            "malformed_messages",
            &mut self.malformed_messages,
            o.malformed_messages,
        )?;
        for (mine, theirs, field) in [
            (
                &mut self.deliveries_per_subscriber,
                &o.deliveries_per_subscriber,
                "deliveries_per_subscriber",
            ),
            (
                &mut self.points_per_subscriber,
                &o.points_per_subscriber,
                "points_per_subscriber",
            ),
        ] {
            for (v, n) in &theirs.0 {
                add(field, mine.0.entry(*v).or_default(), *n)?;
            }
        }
        self.subscribers_with_problems
            .extend(o.subscribers_with_problems.iter().cloned());
        add(
            "subscribers_with_problems_more",
            &mut self.subscribers_with_problems_more,
            o.subscribers_with_problems_more,
        )?;
        self.slowest_subscribers
            .extend(o.slowest_subscribers.iter().cloned());
        add(
            "latency_clamped",
            &mut self.latency_clamped,
            o.latency_clamped,
        )?;
        let added = mqtt_tool::hist::add(&mut self.latency_histogram.0, &o.latency_histogram.0);
        if checked {
            added.map_err(|e| format!("latency_histogram: {e}"))?;
        } else {
            // Workers' histograms share their bounds (an hour, 3 figures): they always add.
            debug_assert!(added.is_ok(), "{added:?}");
        }
        self.refresh();
        Ok(())
    }
}

/// Adds another worker's figures (a run's own: sums saturate; shard reports from files go
/// through [`FleetStats::merge`]).
impl AddAssign<&FleetStats> for FleetStats {
    fn add_assign(&mut self, o: &FleetStats) {
        let _ = self.add(o, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

    /// The system allocator, counting allocations and the bytes held (nextest runs each test
    /// in a process of its own, so a test's deltas are its own).
    struct Counting;
    static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
    static HELD: AtomicI64 = AtomicI64::new(0);

    // SAFETY: every call is forwarded to the system allocator unchanged.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Relaxed);
            HELD.fetch_add(l.size() as i64, Relaxed);
            System.alloc(l)
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            HELD.fetch_sub(l.size() as i64, Relaxed);
            System.dealloc(p, l)
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            ALLOCATIONS.fetch_add(1, Relaxed);
            HELD.fetch_add(n as i64 - l.size() as i64, Relaxed);
            System.realloc(p, l, n)
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|d| format!("sensor-{d:05}")).collect()
    }

    fn fleet(subscribers: std::ops::Range<u32>) -> FleetVerifier {
        FleetVerifier::new(subscribers, 100_000, Budget::default())
    }

    /// Feeds `seqs` of every device in `devices` to every subscriber, in order, device by
    /// device (a message per point).
    fn feed(v: &mut FleetVerifier, devices: &[String], seqs: &[u64]) {
        for s in seqs {
            for d in devices {
                for slot in 0..v.subscribers().len() {
                    let index = u64::from(v.subscribers()[slot].index);
                    v.delivery(slot);
                    v.point(slot, d, *s, 1_000 + index);
                }
            }
        }
    }

    #[test]
    fn a_thousand_subscribers_of_a_thousand_in_order_devices_hold_about_16_mb() {
        let devices = names(1000);
        let held = HELD.load(Relaxed);
        let mut v = fleet(0..1000);
        feed(&mut v, &devices, &[0]);
        let allocations = ALLOCATIONS.load(Relaxed);
        feed(&mut v, &devices, &[1, 2]);
        assert_eq!(
            ALLOCATIONS.load(Relaxed),
            allocations,
            "allocated per point"
        );
        let bytes = (HELD.load(Relaxed) - held) as f64;
        eprintln!(
            "1,000 x 1,000 pairs: {:.1} MB held, {:.1} MB in the tables",
            bytes / 1e6,
            v.pair_bytes() as f64 / 1e6
        );
        // 16 bytes a pair, the tables' room to grow (an eighth at most), a summary a
        // subscriber, the ids once.
        let pairs = 1000.0 * 1000.0;
        assert_eq!(std::mem::size_of::<Tracker>(), 16);
        assert!(
            v.pair_bytes() as f64 <= pairs * 16.0 * 1.13,
            "{}",
            v.pair_bytes()
        );
        assert!(
            bytes <= pairs * 16.0 * 1.15,
            "{bytes} bytes for {pairs} pairs"
        );
        assert_eq!(v.pools.gap_records(), 0);
        let st = v.stats(&Rules {
            expect_per_client: Some(3000),
            ..Rules::default()
        });
        assert_eq!((st.points_unique, st.points_missing), (3_000_000, 0));
        assert!(st.verdict(&Rules::default()).pass);
    }

    /// The issue's crafted stream: seqs 0,1,2,5,6,6 of one device, beside devices in order.
    #[test]
    fn every_one_of_200_subscribers_reports_the_crafted_streams_gap_and_duplicate() {
        let devices = names(20);
        let mut v = fleet(0..200);
        feed(&mut v, &devices, &[0, 1, 2, 3, 4, 5, 6]);
        feed(&mut v, &["crafted".to_string()], &[0, 1, 2, 5, 6, 6]);
        let rules = Rules::default();
        for slot in 0..200 {
            let c = v.pair(slot, "crafted").expect("seen");
            assert_eq!((c.received, c.unique, c.duplicates), (6, 5, 1));
            assert_eq!(v.pair(slot, "sensor-00007").expect("seen").unique, 7);
        }
        let st = v.stats(&rules);
        assert_eq!(st.points_missing, 200 * 2);
        assert_eq!(st.points_duplicate, 200);
        assert_eq!(st.subscribers_with_problems.len(), PROBLEMS_LISTED);
        assert_eq!(
            st.subscribers_with_problems_more,
            200 - PROBLEMS_LISTED as u64
        );
        let first = &st.subscribers_with_problems[0];
        assert_eq!((first.index, first.missing, first.duplicate), (0, 2, 1));
        assert!(st.subscribers_with_problems.iter().all(|c| c.missing == 2));
        let verdict = st.verdict(&rules);
        assert!(!verdict.pass);
        assert!(
            verdict.why[0].starts_with(
                "200 subscribers did not get every point exactly once: #0 (2 missing, 1 duplicate)"
            ),
            "{:?}",
            verdict.why
        );
        // Only the crafted device left its run: one gap record a subscriber.
        assert_eq!(v.pools.gap_records(), 200);
    }

    /// No gap record left: each subscriber's pair settles, and the crafted stream's gap and
    /// repeat are still counted (the repeat, past the floor, as unverifiable).
    #[test]
    fn with_no_gap_record_left_200_subscribers_still_count_the_crafted_stream() {
        let mut v = FleetVerifier::new(0..200, 100_000, Budget::default().with_records(0));
        feed(&mut v, &names(20), &[0, 1, 2, 3]);
        feed(&mut v, &["crafted".to_string()], &[0, 1, 2, 5, 6, 6]);
        let st = v.stats(&Rules::default());
        assert_eq!(v.pools.gap_records(), 0);
        assert_eq!(
            (st.points_missing, st.points_unverifiable, st.points_unique),
            (200 * 2, 200, 200 * (20 * 4 + 5))
        );
        assert!(st
            .subscribers_with_problems
            .iter()
            .all(|c| (c.missing, c.unverifiable) == (2, 1)));
        assert!(!st.verdict(&Rules::default()).pass);
    }

    /// Pools far too small for the gaps: ranges stay within them, every count stays exact.
    #[test]
    fn exhausted_pools_keep_counts_exact_and_ranges_bounded() {
        let mut v = FleetVerifier::new(0..50, 100_000, Budget::new(16, 8));
        let even: Vec<u64> = (0..200).step_by(2).collect();
        for s in &even {
            for slot in 0..50 {
                v.point(slot, "lossy", *s, 10);
                assert!(v.pools.live_ranges() <= 16);
            }
        }
        let rules = Rules {
            expect_per_client: Some(199),
            ..Rules::default()
        };
        let st = v.stats(&rules);
        for slot in 0..50 {
            let c = v.pair(slot, "lossy").expect("seen");
            assert_eq!((c.unique, c.max_seq), (100, Some(198)));
        }
        assert_eq!(st.points_unique, 50 * 100);
        assert_eq!(st.points_missing, 50 * 99);
        // Late arrivals below a retired floor cannot be told apart: unverifiable, counted.
        v.point(0, "lossy", 1, 10);
        let st = v.stats(&rules);
        assert_eq!(st.points_unverifiable + st.points_unique, 50 * 100 + 1);
    }

    /// Two shards of a fleet (and their JSON) add up to the fleet run as one.
    #[test]
    fn two_shards_merge_into_the_figures_of_one_run() {
        let devices = names(5);
        let rules = Rules {
            expect_per_client: Some(5 * 4),
            ..Rules::default()
        };
        let run = |subs: std::ops::Range<u32>| {
            let n = subs.len() as u64;
            let mut v = fleet(subs.clone());
            feed(&mut v, &devices, &[0, 1, 3]);
            for (slot, i) in subs.enumerate() {
                // Every seventh subscriber a duplicate, each its own latency.
                if i % 7 == 0 {
                    v.point(slot, &devices[1], 3, 50_000 + u64::from(i));
                }
            }
            let mut st = v.stats(&rules);
            st.subscribers_planned = n;
            st.subscribers_connected = n;
            st
        };
        let whole = run(0..100);
        let mut merged = FleetStats::default();
        for part in [run(0..37), run(37..100)] {
            let json = serde_json::to_string(&part).expect("serializes");
            let back: FleetStats = serde_json::from_str(&json).expect("reads back");
            merged.merge(&back).expect("adds up");
        }
        assert_eq!(merged, whole);
        // Workers add with +=; a shard whose sums overflow is refused, nothing half added.
        let mut workers = run(0..37);
        workers += &run(37..100);
        assert_eq!(workers, whole);
        let mut hostile = run(0..1);
        hostile.points = u64::MAX;
        assert_eq!(
            merged.merge(&hostile),
            Err("points add up past 2^64".to_string())
        );
        assert_eq!(merged, whole);
        assert_eq!(
            whole.subscribers_with_problems_more,
            100 - PROBLEMS_LISTED as u64
        );
        assert_eq!(whole.slowest_subscribers[0].index, 98);
        assert_eq!(whole.points_per_subscriber.median(), Some(15));
        assert_eq!(whole.points_per_subscriber.max(), Some(16));
    }

    /// The committed schema holds what a run writes: problems, failures, an empty fleet.
    #[test]
    fn fleet_stats_match_their_committed_schema() {
        let devices = names(3);
        let mut v = fleet(0..30);
        feed(&mut v, &devices, &[0, 2]);
        v.malformed(3);
        let rules = Rules::default();
        let mut st = v.stats(&rules);
        st.subscribers_planned = 31;
        st.subscribers_connected = 30;
        st.subscribers_failed.insert("connect timeout".into(), 1);
        for s in [st, FleetStats::default()] {
            let json = serde_json::to_value(&s).expect("serializes");
            test_support::assert_matches_schema("schema/fleet-verify.schema.json", &json);
        }
    }

    #[test]
    fn the_verdict_judges_each_subscriber_and_the_fleet() {
        let devices = names(3);
        let mut v = fleet(0..4);
        feed(&mut v, &devices, &[0, 1, 2]);
        v.point(2, &devices[0], 2, 5); // subscriber 2: a duplicate
        v.point(3, &devices[0], 1, 5); // subscriber 3: a duplicate
        let exact = Rules {
            expect_per_client: Some(9),
            ..Rules::default()
        };
        let st = v.stats(&exact);
        let why = st.verdict(&exact).why;
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].contains("#2 (1 duplicate); #3 (1 duplicate)"),
            "{why:?}"
        );
        // --at-least-once: duplicates counted, not failing.
        let relaxed = Rules {
            at_least_once: true,
            ..exact
        };
        assert!(v.stats(&relaxed).verdict(&relaxed).pass);
        assert_eq!(v.stats(&relaxed).points_duplicate, 2);
        // A subscriber short of what it should get fails, even without a gap.
        let more = Rules {
            expect_per_client: Some(12),
            at_least_once: true,
            ..Rules::default()
        };
        let why = v.stats(&more).verdict(&more).why;
        assert!(
            why[0].contains("#0 (9 of 12 unique); #1 (9 of 12 unique)"),
            "{why:?}"
        );
        // A share group: gaps of a member are not missing points; the total is judged.
        let group = Rules {
            expect: Some(36),
            share_group: true,
            at_least_once: true,
            ..Rules::default()
        };
        assert!(v.stats(&group).verdict(&group).pass);
        let short = Rules {
            expect: Some(40),
            ..group
        };
        assert_eq!(
            v.stats(&short).verdict(&short).why,
            ["36 unique points of 40 expected"]
        );
        // Without any expectation a run must still show delivery.
        let none = Rules::default();
        assert!(v.stats(&relaxed).verdict(&relaxed).pass);
        let silent = fleet(0..3);
        assert_eq!(
            silent.stats(&none).verdict(&none).why,
            ["no point arrived at any subscriber"]
        );
        let mut partly = fleet(0..3);
        partly.delivery(0);
        partly.point(0, &devices[0], 0, 5);
        assert_eq!(
            partly.stats(&none).verdict(&none).why,
            ["2 of 3 subscribers got no point"]
        );
        let members = Rules {
            share_group: true,
            ..Rules::default()
        };
        assert!(partly.stats(&members).verdict(&members).pass);
        // Subscribers that never connected fail the run, by reason.
        let mut st = v.stats(&relaxed);
        st.subscribers_planned = 6;
        st.subscribers_connected = 4;
        st.subscribers_failed.insert("connection refused".into(), 2);
        assert_eq!(
            st.verdict(&relaxed).why,
            ["2 of 6 subscribers failed (2 connection refused)"]
        );
        let md = st.summary("loadgen sub", &relaxed).markdown();
        assert!(md.contains("2 failed: connection refused"), "{md}");
        assert!(
            md.contains("per subscriber min 9, median 9, max 10"),
            "{md}"
        );
        let mut st = v.stats(&exact);
        st.subscribers_planned = 6;
        st.subscribers_connected = 4;
        st.subscribers_failed.insert("connection refused".into(), 2);
        let text = st.render_text(&exact);
        // The column is as wide as the longest label ("summed over subscribers") and a space.
        assert!(text.contains("summed over subscribers 0 missing"), "{text}");
        assert!(
            text.contains(
                "problems                #2 (1 duplicate)\n                        #3 (1 duplicate)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("verdict                 FAILED: 2 of 6 subscribers failed"),
            "{text}"
        );
        assert!(
            text.contains("slowest                 #3: p99 <="),
            "{text}"
        );
    }

    /// A subscriber that sees a few devices scattered over the worker's numbers keeps a
    /// small table, not one the size of all devices.
    #[test]
    fn scattered_devices_use_a_small_table_and_one_to_one_a_list() {
        let devices = names(2000);
        let mut v = fleet(0..3);
        for (i, d) in devices.iter().enumerate() {
            v.point(0, d, 0, 1); // subscriber 0: all of them
            if i % 50 == 0 {
                v.point(1, d, 0, 1); // subscriber 1: every fiftieth
            }
        }
        v.point(2, &devices[1999], 0, 1); // subscriber 2: one
        let allocations = ALLOCATIONS.load(Relaxed);
        for (i, d) in devices.iter().enumerate() {
            v.point(0, d, 1, 1);
            if i % 50 == 0 {
                v.point(1, d, 1, 1);
            }
        }
        v.point(2, &devices[1999], 1, 1);
        assert_eq!(
            ALLOCATIONS.load(Relaxed),
            allocations,
            "allocated per point"
        );
        for (i, d) in devices.iter().enumerate().filter(|(i, _)| i % 50 == 0) {
            assert_eq!(v.point(1, d, 2, 1), Some(Arrival::New), "device {i}");
            assert_eq!(v.pair(1, d).expect("seen").unique, 3);
        }
        assert!(matches!(v.subscribers[0].pairs, PairTable::Dense(_)));
        assert!(matches!(v.subscribers[1].pairs, PairTable::Hashed { .. }));
        assert!(matches!(v.subscribers[2].pairs, PairTable::Few(_)));
        assert!(v.subscribers[1].pairs.heap_bytes() < 2000);
        assert_eq!(v.pair(1, &devices[1]), None);
    }

    #[test]
    fn a_subscribers_p99_is_at_most_half_an_octave_above_the_true_one() {
        let mut l = LatencySummary::default();
        for us in 1..=10_000u64 {
            l.record(us);
        }
        let p = l.p99_at_most_us().expect("recorded");
        assert!((9_900..=9_900 * 3 / 2).contains(&p), "{p}");
        assert_eq!(l.max_us, 10_000);
        let mut one = LatencySummary::default();
        one.record(0);
        assert_eq!(one.p99_at_most_us(), Some(0));
    }
}
