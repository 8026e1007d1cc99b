//! The phases of a connect as reports show them: TCP connect (socket -> writable), TLS
//! handshake (TCP connected -> handshake done), CONNECT -> CONNACK, each an HdrHistogram in
//! µs that a tool's stats hold and merge with `+=`.
//!
//! ```text
//! a tool's histograms --> Phases::of --> the report's `connect_phases_us` (percentiles)
//!                                    --> its `histograms` (`tcp_us`, `tls_us`, `connack_us`)
//! loadgen merge: PhaseMerge::add (each report's histograms) --> PhaseMerge::finish
//! ```
//!
//! Every field defaults to null, so reports written before the phases were measured still
//! read and merge.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::format::{fmt_percentiles, Percentiles};
use crate::merge::{add_histogram, Check};

/// The percentiles of each connect phase (null: no connect got through it; TLS: a plain
/// run).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    #[serde(default)]
    pub tcp_connect_us: Option<Percentiles>,
    #[serde(default)]
    pub tls_handshake_us: Option<Percentiles>,
    #[serde(default)]
    pub connack_us: Option<Percentiles>,
}

/// The histograms behind [`Phases`], encoded as [`crate::hist::encode`] does: what
/// `loadgen merge` adds up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseHistograms {
    #[serde(default)]
    pub tcp_us: Option<String>,
    #[serde(default)]
    pub tls_us: Option<String>,
    #[serde(default)]
    pub connack_us: Option<String>,
}

impl Phases {
    /// The report part of the three histograms, and their encoded form.
    pub fn of(
        tcp: &Histogram<u64>,
        tls: &Histogram<u64>,
        connack: &Histogram<u64>,
    ) -> (Phases, PhaseHistograms) {
        (
            Phases {
                tcp_connect_us: Percentiles::of(tcp),
                tls_handshake_us: Percentiles::of(tls),
                connack_us: Percentiles::of(connack),
            },
            PhaseHistograms {
                tcp_us: crate::hist::encode(tcp),
                tls_us: crate::hist::encode(tls),
                connack_us: crate::hist::encode(connack),
            },
        )
    }

    /// Lines for a text report: (label, `p50 .. p99 .. max ..`), the phases measured only.
    pub fn lines(&self) -> Vec<(&'static str, String)> {
        [
            ("tcp connect", &self.tcp_connect_us),
            ("tls handshake", &self.tls_handshake_us),
            ("connect->connack", &self.connack_us),
        ]
        .into_iter()
        .filter_map(|(k, p)| p.as_ref().map(|p| (k, fmt_percentiles(p, false))))
        .collect()
    }
}

/// The phase histograms of a tool that times its own connects ([`crate::session::Session`]'s
/// subscribers, job-pub through rumqttc): every connect's phases (reconnects included) and
/// every SUBSCRIBE -> SUBACK, in µs.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub tcp_us: Histogram<u64>,
    pub tls_us: Histogram<u64>,
    pub connack_us: Histogram<u64>,
    pub suback_us: Histogram<u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        let h = crate::hist::histogram;
        Recorder {
            tcp_us: h(),
            tls_us: h(),
            connack_us: h(),
            suback_us: h(),
        }
    }
}

impl Recorder {
    /// Records one connect's phases.
    pub fn connect(&mut self, p: &crate::session::ConnectPhases) {
        let us = |d: std::time::Duration| (d.as_micros() as u64).max(1);
        self.tcp_us.saturating_record(us(p.tcp));
        if let Some(tls) = p.tls {
            self.tls_us.saturating_record(us(tls));
        }
        self.connack_us.saturating_record(us(p.connack));
    }

    /// Records one SUBSCRIBE -> SUBACK.
    pub fn suback(&mut self, took: std::time::Duration) {
        self.suback_us
            .saturating_record((took.as_micros() as u64).max(1));
    }

    /// The report's parts: the connect phases and their histograms, the SUBACK latency and
    /// its histogram.
    pub fn report(&self) -> (Phases, PhaseHistograms, Option<Percentiles>, Option<String>) {
        let (phases, histograms) = Phases::of(&self.tcp_us, &self.tls_us, &self.connack_us);
        (
            phases,
            histograms,
            Percentiles::of(&self.suback_us),
            crate::hist::encode(&self.suback_us),
        )
    }
}

/// A [`Recorder`] copied for `/metrics` (at each connect and SUBACK, not per message), so a
/// scrape never waits for the run loop.
#[derive(Debug, Default)]
pub struct Shared(std::sync::Mutex<Option<Recorder>>);

impl Shared {
    pub fn set(&self, r: &Recorder) {
        // Cloned before the lock: a scrape waits for a pointer swap, not for the copy.
        let copy = Some(r.clone());
        if let Ok(mut p) = self.0.lock() {
            *p = copy;
        }
    }

    /// The last copy (empty histograms before the first connect).
    pub fn get(&self) -> Recorder {
        self.0
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .unwrap_or_default()
    }
}

/// The phases of many reports added up.
#[derive(Debug, Default)]
pub struct PhaseMerge {
    tcp: Option<Histogram<u64>>,
    tls: Option<Histogram<u64>>,
    connack: Option<Histogram<u64>>,
}

impl PhaseMerge {
    /// Adds one report's histograms (`c` names the report in an error).
    pub fn add(&mut self, c: &Check, h: &PhaseHistograms) -> Result<(), Error> {
        add_histogram(&mut self.tcp, c.histogram("tcp connect", &h.tcp_us)?)?;
        add_histogram(&mut self.tls, c.histogram("tls handshake", &h.tls_us)?)?;
        add_histogram(&mut self.connack, c.histogram("connack", &h.connack_us)?)?;
        Ok(())
    }

    /// The merged report part and histograms.
    pub fn finish(&self) -> (Phases, PhaseHistograms) {
        let p = |h: &Option<Histogram<u64>>| h.as_ref().and_then(Percentiles::of);
        let e = |h: &Option<Histogram<u64>>| h.as_ref().and_then(crate::hist::encode);
        (
            Phases {
                tcp_connect_us: p(&self.tcp),
                tls_handshake_us: p(&self.tls),
                connack_us: p(&self.connack),
            },
            PhaseHistograms {
                tcp_us: e(&self.tcp),
                tls_us: e(&self.tls),
                connack_us: e(&self.connack),
            },
        )
    }
}

/// The phases in a `/metrics` scrape, as the tool's other latency histograms are.
pub fn expose(
    e: &mut crate::metrics::Exposition,
    tcp: &Histogram<u64>,
    tls: &Histogram<u64>,
    connack: &Histogram<u64>,
) {
    e.histogram_us(
        "loadgen_tcp_connect_seconds",
        "Connect attempt started (socket) to TCP connected.",
        tcp,
    )
    .histogram_us(
        "loadgen_tls_handshake_seconds",
        "TCP connected to TLS handshake done.",
        tls,
    )
    .histogram_us(
        "loadgen_connack_seconds",
        "CONNECT on its way (after the TLS handshake) to CONNACK.",
        connack,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
        for v in values {
            h.record(*v).expect("in range");
        }
        h
    }

    #[test]
    fn phases_of_two_reports_merge_exactly_and_old_reports_read_as_null() {
        let empty = h(&[]);
        let (a, ha) = Phases::of(&h(&[100, 200]), &empty, &h(&[1000]));
        assert_eq!(a.tls_handshake_us, None);
        assert_eq!(a.tcp_connect_us.map(|p| p.count), Some(2));
        let (_, hb) = Phases::of(&h(&[300]), &empty, &h(&[3000]));
        let mut m = PhaseMerge::default();
        let c = Check { report: "a.json" };
        m.add(&c, &ha).expect("adds");
        m.add(&c, &hb).expect("adds");
        let (p, _) = m.finish();
        assert_eq!(p.tcp_connect_us.map(|p| (p.count, p.max)), Some((3, 300)));
        assert_eq!(p.connack_us.map(|p| p.count), Some(2));
        // A report from before the phases: no fields at all.
        let old: PhaseHistograms = serde_json::from_str("{}").expect("reads");
        m.add(&c, &old).expect("adds nothing");
        let old: Phases = serde_json::from_str("{}").expect("reads");
        assert_eq!(old, Phases::default());
    }
}
