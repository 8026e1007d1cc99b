//! What a worker counts, merged with `+=` for progress and for the report (one worker's
//! figures never wait on another's), and the live atomics the progress line reads.
//!
//! Every point generated ends in exactly one of: acknowledged (QoS 1 at its PUBACK, QoS 2
//! at its PUBCOMP), sent (QoS 0, or QoS 1 and 2 with no acknowledgement yet), failed (sent, never acknowledged), unsent (generated, never
//! completely written). `points_dropped` are points that were due and never generated: the
//! quota of a device whose connection failed or was lost, and the slots a device still owed
//! when the run ended because its connection could not take them.

use std::collections::BTreeMap;
use std::ops::AddAssign;
use std::sync::atomic::{AtomicU64, Ordering, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::error::{ConnectFailure, Lost, Takeover};

/// Counts of points and messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub points_enqueued: u64,
    pub messages_enqueued: u64,
    pub points_sent: u64,
    pub messages_sent: u64,
    /// Payload bytes written.
    pub bytes_sent: u64,
    pub points_acked: u64,
    pub messages_acked: u64,
    /// PUBACKs for an id used before and acknowledged already (a broker repeating itself):
    /// ignored.
    pub duplicate_acks: u64,
    /// PUBACKs for a packet id this connection never used (a broker's error, or a session
    /// resumed from an earlier client): ignored.
    pub acks_unknown_id: u64,
    pub points_dropped: u64,
    /// Messages written again on a new connection after theirs was lost unacknowledged.
    pub messages_resent: u64,
    /// QoS 2: PUBRELs written again on a new connection, within the resumed session, for
    /// messages whose PUBREC had come and whose PUBCOMP had not (the PUBLISH is not resent).
    pub pubrels_resent: u64,
    /// Points that fell due while their connection was down, beyond the offline buffer.
    pub points_dropped_offline: u64,
    /// MQTT 5: a PUBACK with a reason code of 0x80 or more refused them.
    pub points_rejected: u64,
    pub messages_rejected: u64,
    /// Latencies past the histograms' ceiling ([`MAX_TRACKED_US`]), recorded at it: PUBACK
    /// latency and schedule lag.
    pub latency_clamped: u64,
    pub lag_clamped: u64,
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.points_enqueued += o.points_enqueued;
        self.messages_enqueued += o.messages_enqueued;
        self.points_sent += o.points_sent;
        self.messages_sent += o.messages_sent;
        self.bytes_sent += o.bytes_sent;
        self.points_acked += o.points_acked;
        self.messages_acked += o.messages_acked;
        self.duplicate_acks += o.duplicate_acks;
        self.acks_unknown_id += o.acks_unknown_id;
        self.points_dropped += o.points_dropped;
        self.messages_resent += o.messages_resent;
        self.pubrels_resent += o.pubrels_resent;
        self.points_dropped_offline += o.points_dropped_offline;
        self.points_rejected += o.points_rejected;
        self.messages_rejected += o.messages_rejected;
        self.latency_clamped += o.latency_clamped;
        self.lag_clamped += o.lag_clamped;
    }
}

/// Highest latency a histogram tracks exactly; larger values are recorded as this, and
/// counted ([`record_clamped`]).
pub const MAX_TRACKED_US: u64 = 3_600_000_000;

/// Records `us` in `h`, at its ceiling when it is beyond, counting that in `clamped`.
pub fn record_clamped(h: &mut Histogram<u64>, us: u64, clamped: &mut u64) {
    if us > h.high() {
        *clamped += 1;
    }
    h.saturating_record(us);
}

/// An empty latency histogram in µs as every tool keeps one: 1 µs to [`MAX_TRACKED_US`],
/// three significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("static histogram bounds are valid")
}

/// Latency histograms in microseconds, all measured from a scheduled or started time.
#[derive(Debug, Clone)]
pub struct Histos {
    /// Scheduled send time -> PUBACK (QoS 1).
    pub ack_us: Histogram<u64>,
    /// Scheduled send time -> written to the socket.
    pub lag_us: Histogram<u64>,
    /// Connect started (socket) -> CONNACK, first connects.
    pub connect_us: Histogram<u64>,
    /// The phases of every attempt that got through them (reconnects included): socket ->
    /// writable (TCP connect), TCP connected -> TLS handshake done, CONNECT on its way ->
    /// CONNACK (after the handshake under TLS).
    pub tcp_us: Histogram<u64>,
    pub tls_us: Histogram<u64>,
    pub connack_us: Histogram<u64>,
    /// Connect started -> CONNACK of reconnects (after a loss, a churn or a storm).
    pub reconnect_us: Histogram<u64>,
    /// PINGREQ written -> PINGRESP.
    pub pingresp_us: Histogram<u64>,
}

impl Default for Histos {
    fn default() -> Self {
        Histos {
            ack_us: histogram(),
            lag_us: histogram(),
            connect_us: histogram(),
            tcp_us: histogram(),
            tls_us: histogram(),
            connack_us: histogram(),
            reconnect_us: histogram(),
            pingresp_us: histogram(),
        }
    }
}

impl AddAssign<&Histos> for Histos {
    fn add_assign(&mut self, o: &Histos) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.ack_us.add(&o.ack_us);
        let _ = self.lag_us.add(&o.lag_us);
        let _ = self.connect_us.add(&o.connect_us);
        let _ = self.tcp_us.add(&o.tcp_us);
        let _ = self.tls_us.add(&o.tls_us);
        let _ = self.connack_us.add(&o.connack_us);
        let _ = self.reconnect_us.add(&o.reconnect_us);
        let _ = self.pingresp_us.add(&o.pingresp_us);
    }
}

/// Microseconds of `d`, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What happened to the connections.
#[derive(Debug, Default, Clone)]
pub struct Conns {
    /// Connections of the plan.
    pub planned: u64,
    /// Connect attempts started (retries included).
    pub attempts: u64,
    /// Connections that got their CONNACK.
    pub connected: u64,
    /// Connections given up after their last attempt.
    pub failed: u64,
    /// Losses of a connection that was up (events: one connection may be lost many times).
    pub losses: u64,
    /// Connections lost at least once after they were up.
    pub lost: u64,
    /// Connections not up yet when generation ended (the ramp was not over).
    pub not_up: u64,
    /// Reconnects that got their CONNACK, and the connections that made at least one.
    pub reconnects: u64,
    pub reconnected: u64,
    /// Reconnects whose broker had lost the persistent session (`--clean-session false`).
    pub sessions_lost: u64,
    /// First connects whose broker still held a session of this client id from before
    /// (`--clean-session false`): an earlier run's, or another client's.
    pub sessions_resumed: u64,
    /// MQTT 5 DISCONNECTs from the broker while up, by reason code.
    pub disconnects: BTreeMap<u8, u64>,
    /// Connections lost and not back at the end (a fatal refusal, or the run ended first).
    pub down_at_end: u64,
    /// Time connections spent down after a loss, summed over connections.
    pub disconnected: Duration,
    /// Connections given up after losses in a row with no progress between them, after a
    /// fatal refusal of a reconnect, and after being down longer than allowed.
    pub flapping: u64,
    pub refused_on_reconnect: u64,
    pub down_too_long: u64,
    /// Losses to another client that connected with the same client id: said by the
    /// broker (MQTT 5 DISCONNECT 0x8E) or likely (MQTT 3.1.1, see [`Takeover`]).
    pub takeovers: u64,
    /// Connections whose client id another client kept taking: closed by a takeover again
    /// shortly after a reconnect that followed one (two copies of a run, each taking the
    /// id back in turn). The one lost then is given up; the one just back keeps going.
    pub client_id_in_use: u64,
    /// The first of those, by connection index.
    pub first_in_use: Option<u64>,
    /// MQTT 5: the smallest Receive Maximum a CONNACK gave, and the connections whose QoS 1
    /// window it made smaller than `--max-inflight`.
    pub receive_maximum: Option<u16>,
    pub window_clamped: u64,
    /// Every failed attempt, by reason.
    pub failures: BTreeMap<ConnectFailure, u64>,
    /// The reason each given-up connection failed the last time.
    pub gave_up: BTreeMap<ConnectFailure, u64>,
    /// The first losses, by connection index.
    pub first_losses: Vec<(u64, Lost)>,
    /// When the last connection came up or was given up.
    pub settled_at: Option<Instant>,
    /// When the first connect attempt started.
    pub first_attempt: Option<Instant>,
    /// Held connections (`loadgen conn`): disconnects by `--churn` and their reconnects;
    /// churn slots that found no connection up; connections dropped by `--storm`.
    pub churned: u64,
    pub churn_reconnects: u64,
    pub churn_missed: u64,
    pub storm_drops: u64,
    /// Connections up when the hold ended, and those on their way back from a churn then.
    pub up_at_end: u64,
    pub churning_at_end: u64,
    /// Outages: from a loss (or a storm) while every connection was back, until every
    /// lost one is up again; in order.
    pub outages: Vec<Outage>,
}

/// Connections lost together and how long until all were back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    pub started: Instant,
    /// When the first lost connection was up again: with `recovered`, how far the backoff
    /// spread them.
    pub first_back: Option<Instant>,
    /// When the last lost connection was up again (`None`: not all came back).
    pub recovered: Option<Instant>,
    /// Losses during the outage.
    pub dropped: u64,
}

impl Outage {
    /// How long the connections took to come back.
    pub fn took(&self) -> Option<Duration> {
        self.recovered
            .map(|r| r.saturating_duration_since(self.started))
    }
}

/// Outages of several workers as the fleet's: the ones that overlap in time are one.
pub fn merge_outages(into: &mut Vec<Outage>, more: &[Outage]) {
    into.extend_from_slice(more);
    into.sort_by_key(|o| o.started);
    let mut merged: Vec<Outage> = Vec::with_capacity(into.len());
    for o in into.drain(..) {
        match merged.last_mut() {
            // Overlaps the last one (started before it ended, or it never ended).
            Some(m) if m.recovered.map_or(true, |r| o.started <= r) => {
                m.dropped += o.dropped;
                m.first_back = earlier(m.first_back, o.first_back);
                m.recovered = match (m.recovered, o.recovered) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
            }
            _ => merged.push(o),
        }
    }
    *into = merged;
}

/// Outages kept per worker; later ones are counted into the last.
pub const OUTAGES_KEPT: usize = 1000;

/// Losses kept in detail; the rest are counted.
const LOSSES_KEPT: usize = 10;

impl Conns {
    /// A loss of connection `conn`; `first`: its first.
    pub fn record_loss(&mut self, conn: u64, lost: Lost, first: bool) {
        self.losses += 1;
        self.lost += u64::from(first);
        if self.first_losses.len() < LOSSES_KEPT {
            self.first_losses.push((conn, lost));
        }
    }
}

impl AddAssign<&Conns> for Conns {
    fn add_assign(&mut self, o: &Conns) {
        self.planned += o.planned;
        self.attempts += o.attempts;
        self.connected += o.connected;
        self.failed += o.failed;
        self.losses += o.losses;
        self.lost += o.lost;
        self.not_up += o.not_up;
        self.reconnects += o.reconnects;
        self.reconnected += o.reconnected;
        self.sessions_lost += o.sessions_lost;
        self.sessions_resumed += o.sessions_resumed;
        for (k, v) in &o.disconnects {
            *self.disconnects.entry(*k).or_default() += v;
        }
        self.down_at_end += o.down_at_end;
        self.disconnected += o.disconnected;
        self.flapping += o.flapping;
        self.refused_on_reconnect += o.refused_on_reconnect;
        self.down_too_long += o.down_too_long;
        self.takeovers += o.takeovers;
        self.client_id_in_use += o.client_id_in_use;
        self.first_in_use = match (self.first_in_use, o.first_in_use) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.receive_maximum = match (self.receive_maximum, o.receive_maximum) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.window_clamped += o.window_clamped;
        for (k, v) in &o.failures {
            *self.failures.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &o.gave_up {
            *self.gave_up.entry(k.clone()).or_default() += v;
        }
        for l in &o.first_losses {
            if self.first_losses.len() < LOSSES_KEPT {
                self.first_losses.push(l.clone());
            }
        }
        self.first_losses.sort_by_key(|(c, _)| *c);
        self.settled_at = later(self.settled_at, o.settled_at);
        self.first_attempt = earlier(self.first_attempt, o.first_attempt);
        self.churned += o.churned;
        self.churn_reconnects += o.churn_reconnects;
        self.churn_missed += o.churn_missed;
        self.storm_drops += o.storm_drops;
        self.up_at_end += o.up_at_end;
        self.churning_at_end += o.churning_at_end;
        merge_outages(&mut self.outages, &o.outages);
    }
}

/// Everything one worker saw, mergeable.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub counts: Counts,
    pub histos: Histos,
    pub conns: Conns,
    /// First and last write to a socket, last PUBACK.
    pub first_write: Option<Instant>,
    pub last_write: Option<Instant>,
    pub last_ack: Option<Instant>,
    /// When generation ended (all devices done, the duration, or a signal).
    pub generation_end: Option<Instant>,
    /// The drain deadline (or a second signal) cut the end short.
    pub cut_short: bool,
    /// CPU time the worker thread used, and how long it ran.
    pub cpu: Duration,
    pub wall: Duration,
    /// Highest schedule lag in each second after the anchor, ms: shows whether lag grew.
    pub lag_max_ms: Vec<u32>,
    /// MQTT 5: rejected messages by their PUBACK's reason code.
    pub rejected_by_reason: BTreeMap<u8, u64>,
    /// What the subscribing connections did (a subscriber fleet).
    pub sub: crate::worker::SubStats,
}

fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl AddAssign<&Stats> for Stats {
    fn add_assign(&mut self, o: &Stats) {
        self.counts += o.counts;
        self.histos += &o.histos;
        self.conns += &o.conns;
        self.first_write = earlier(self.first_write, o.first_write);
        self.last_write = later(self.last_write, o.last_write);
        self.last_ack = later(self.last_ack, o.last_ack);
        self.generation_end = later(self.generation_end, o.generation_end);
        self.cut_short |= o.cut_short;
        self.cpu += o.cpu;
        self.wall = self.wall.max(o.wall);
        if self.lag_max_ms.len() < o.lag_max_ms.len() {
            self.lag_max_ms.resize(o.lag_max_ms.len(), 0);
        }
        for (a, b) in self.lag_max_ms.iter_mut().zip(&o.lag_max_ms) {
            *a = (*a).max(*b);
        }
        for (k, v) in &o.rejected_by_reason {
            *self.rejected_by_reason.entry(*k).or_default() += v;
        }
        self.sub += &o.sub;
    }
}

/// Seconds of per-second lag kept (a day); later seconds share the last slot.
pub const LAG_SECONDS_KEPT: usize = 86_400;

/// Figures the progress line reads while a worker runs.
#[derive(Debug, Default)]
pub struct Live {
    pub points_enqueued: AtomicU64,
    pub points_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    pub points_acked: AtomicU64,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    /// Connections lost at least once (as the report's `connections.lost`).
    pub lost: AtomicU64,
    /// Connections up right now.
    pub up: AtomicU64,
    /// QoS 1 messages awaiting a PUBACK right now.
    pub inflight: AtomicU64,
    pub messages_acked: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Never generated, and dropped offline.
    pub points_dropped: AtomicU64,
    pub points_rejected: AtomicU64,
    pub reconnects: AtomicU64,
    /// As [`Conns::takeovers`] and [`Conns::client_id_in_use`].
    pub takeovers: AtomicU64,
    pub client_id_in_use: AtomicU64,
}

/// A copy of [`Live`], summed over workers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LiveTotals {
    pub points_enqueued: u64,
    pub points_sent: u64,
    pub messages_sent: u64,
    pub points_acked: u64,
    pub connected: u64,
    pub failed: u64,
    pub lost: u64,
    pub up: u64,
    pub inflight: u64,
    pub messages_acked: u64,
    pub bytes_sent: u64,
    pub points_dropped: u64,
    pub points_rejected: u64,
    pub reconnects: u64,
    pub takeovers: u64,
    pub client_id_in_use: u64,
}

impl Live {
    pub fn read(&self) -> LiveTotals {
        LiveTotals {
            points_enqueued: self.points_enqueued.load(Relaxed),
            points_sent: self.points_sent.load(Relaxed),
            messages_sent: self.messages_sent.load(Relaxed),
            points_acked: self.points_acked.load(Relaxed),
            connected: self.connected.load(Relaxed),
            failed: self.failed.load(Relaxed),
            lost: self.lost.load(Relaxed),
            up: self.up.load(Relaxed),
            inflight: self.inflight.load(Relaxed),
            messages_acked: self.messages_acked.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            points_dropped: self.points_dropped.load(Relaxed),
            points_rejected: self.points_rejected.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            takeovers: self.takeovers.load(Relaxed),
            client_id_in_use: self.client_id_in_use.load(Relaxed),
        }
    }
}

impl AddAssign for LiveTotals {
    fn add_assign(&mut self, o: LiveTotals) {
        self.points_enqueued += o.points_enqueued;
        self.points_sent += o.points_sent;
        self.messages_sent += o.messages_sent;
        self.points_acked += o.points_acked;
        self.connected += o.connected;
        self.failed += o.failed;
        self.lost += o.lost;
        self.up += o.up;
        self.inflight += o.inflight;
        self.messages_acked += o.messages_acked;
        self.bytes_sent += o.bytes_sent;
        self.points_dropped += o.points_dropped;
        self.points_rejected += o.points_rejected;
        self.reconnects += o.reconnects;
        self.takeovers += o.takeovers;
        self.client_id_in_use += o.client_id_in_use;
    }
}

/// The fleet's first takeover and first client id found in use, as they happen, so that a
/// tool names them at once (the counts are in [`Live`]). Each holds a connection's fleet
/// index, encoded so that 0 means none yet.
#[derive(Debug, Default)]
pub struct Collisions {
    /// `(index + 1) * 2`, plus 1 when the broker said so ([`Takeover::Said`]).
    first_takeover: AtomicU64,
    /// `index + 1`.
    first_in_use: AtomicU64,
}

impl Collisions {
    /// Connection `index` was taken over; only the first is kept.
    pub fn taken_over(&self, index: u64, how: Takeover) {
        let v = index.saturating_add(1).saturating_mul(2) + u64::from(how == Takeover::Said);
        let _ = self
            .first_takeover
            .compare_exchange(0, v, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Connection `index`'s client id is in use by another client; only the first is kept.
    pub fn in_use(&self, index: u64) {
        let _ = self.first_in_use.compare_exchange(
            0,
            index.saturating_add(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The first connection taken over, and how it is known.
    pub fn first_takeover(&self) -> Option<(u64, Takeover)> {
        match self.first_takeover.load(Ordering::Acquire) {
            0 => None,
            v => {
                let how = if v % 2 == 1 {
                    Takeover::Said
                } else {
                    Takeover::Likely
                };
                Some((v / 2 - 1, how))
            }
        }
    }

    /// The first connection whose client id was found in use.
    pub fn first_in_use(&self) -> Option<u64> {
        self.first_in_use.load(Ordering::Acquire).checked_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_past_the_ceiling_are_recorded_at_it_and_counted() {
        let mut h = histogram();
        let mut clamped = 0;
        record_clamped(&mut h, 1_000, &mut clamped);
        // 56 years, as a timestamp from another era gives.
        record_clamped(&mut h, 56 * 365 * 86_400 * 1_000_000, &mut clamped);
        assert_eq!((h.len(), clamped), (2, 1));
        assert!(h.max() >= MAX_TRACKED_US && h.max() < MAX_TRACKED_US * 2);
    }

    #[test]
    fn per_worker_stats_merge_exactly() {
        let now = Instant::now();
        let mut a = Stats::default();
        let mut b = Stats::default();
        a.counts.points_sent = 10;
        b.counts.points_sent = 5;
        for us in 1..=900u64 {
            a.histos.ack_us.record(us).unwrap();
        }
        for _ in 0..100 {
            b.histos.ack_us.record(10_000).unwrap();
        }
        a.conns.connected = 3;
        b.conns.connected = 4;
        *a.conns.failures.entry(ConnectFailure::Refused).or_default() += 2;
        *b.conns.failures.entry(ConnectFailure::Refused).or_default() += 1;
        b.conns.failures.insert(ConnectFailure::Timeout, 1);
        a.first_write = Some(now + Duration::from_secs(1));
        b.first_write = Some(now);
        a.lag_max_ms = vec![1, 9];
        b.lag_max_ms = vec![5, 2, 7];
        a += &b;
        assert_eq!(a.counts.points_sent, 15);
        assert_eq!(a.histos.ack_us.len(), 1000);
        assert_eq!(a.histos.ack_us.value_at_quantile(0.5), 500);
        assert_eq!(a.conns.connected, 7);
        assert_eq!(a.conns.failures[&ConnectFailure::Refused], 3);
        assert_eq!(a.conns.failures[&ConnectFailure::Timeout], 1);
        assert_eq!(a.first_write, Some(now));
        assert_eq!(a.lag_max_ms, [5, 9, 7]);
    }

    #[test]
    fn the_first_takeover_and_the_first_id_in_use_are_kept_with_how_they_are_known() {
        let c = Collisions::default();
        assert_eq!((c.first_takeover(), c.first_in_use()), (None, None));
        c.taken_over(0, Takeover::Likely);
        c.taken_over(7, Takeover::Said);
        c.in_use(7);
        c.in_use(0);
        assert_eq!(c.first_takeover(), Some((0, Takeover::Likely)));
        assert_eq!(c.first_in_use(), Some(7));
        let c = Collisions::default();
        c.taken_over(41, Takeover::Said);
        assert_eq!(c.first_takeover(), Some((41, Takeover::Said)));
    }
}
