//! What `job-pub run` shows while it runs: Prometheus metrics at `--metrics-addr` (and
//! pushed with `--metrics-push`), copied from the run loop's own [`Counts`] and lateness
//! histogram once a turn (the histogram at most once a second), so the loop keeps its plain
//! counters and a scrape never waits for it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mqtt_tool::metrics::{Exposition, Families};

use crate::run::Counts;

/// How often the lateness histogram is copied for the metrics.
const HISTOGRAM_EVERY: Duration = Duration::from_secs(1);

/// The run's figures as the metrics read them.
#[derive(Debug, Default)]
pub struct Live {
    claimed: AtomicU64,
    published: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
    given_up: AtomicU64,
    unreadable: AtomicU64,
    skipped: AtomicU64,
    late: AtomicU64,
    republished: AtomicU64,
    db_retries: AtomicU64,
    mqtt_reconnects: AtomicU64,
    /// The lateness histogram as last copied, and when.
    lateness: Mutex<Option<(Histogram<u64>, Instant)>>,
    /// The connect phases as last copied (at each new connect), and how many connects.
    phases: mqtt_tool::phases::Shared,
    phases_copied: AtomicU64,
}

impl Live {
    /// Copies the loop's counts; the lateness histogram too when a second has passed or
    /// `last`, the connect phases when a connect was added.
    pub fn update(&self, n: &Counts, lateness: &Histogram<u64>, last: bool) {
        let connects = n.phases.connack_us.len();
        if connects != self.phases_copied.swap(connects, Relaxed) {
            self.phases.set(&n.phases);
        }
        for (a, v) in [
            (&self.claimed, n.claimed),
            (&self.published, n.published),
            (&self.acked, n.acked),
            (&self.failed, n.failed),
            (&self.rejected, n.rejected),
            (&self.given_up, n.given_up),
            (&self.unreadable, n.unreadable),
            (&self.skipped, n.skipped),
            (&self.late, n.late),
            (&self.republished, n.republished_after_lease_expiry),
            (&self.db_retries, n.db_retries),
            (&self.mqtt_reconnects, n.mqtt_reconnects),
        ] {
            a.store(v, Relaxed);
        }
        if let Ok(mut h) = self.lateness.lock() {
            let due = h
                .as_ref()
                .map_or(true, |(_, at)| at.elapsed() >= HISTOGRAM_EVERY);
            if last || due {
                *h = Some((lateness.clone(), Instant::now()));
            }
        }
    }
}

/// The families of one scrape (the run's label and `loadgen_run_finished` come from
/// [`mqtt_tool::live`]).
pub fn exposition(e: &mut Exposition, live: &Live) {
    let c = |a: &AtomicU64| a.load(Relaxed);
    e.info(
        "loadgen_info",
        mqtt_tool::live::INFO_HELP,
        &[
            ("tool", "job-pub".to_string()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ],
    )
    .counter(
        "loadgen_jobs_claimed_total",
        "Jobs this instance claimed.",
        c(&live.claimed),
    )
    .counter(
        "loadgen_jobs_published_total",
        "Jobs written to the socket as a PUBLISH.",
        c(&live.published),
    )
    .counter(
        "loadgen_jobs_acked_total",
        "Jobs acknowledged by the broker (QoS 1, 2) or written (QoS 0).",
        c(&live.acked),
    )
    .counter(
        "loadgen_jobs_failed_total",
        "Jobs not acknowledged within --ack-timeout: left for another claim.",
        c(&live.failed),
    )
    .counter(
        "loadgen_jobs_rejected_total",
        "Jobs refused for good (before sending, or by an MQTT 5 reason code): skipped.",
        c(&live.rejected),
    )
    .counter(
        "loadgen_jobs_given_up_total",
        "Jobs the broker closed the connection for each time: skipped.",
        c(&live.given_up),
    )
    .counter(
        "loadgen_jobs_unreadable_total",
        "Rows that could not be read as a job: skipped.",
        c(&live.unreadable),
    )
    .counter(
        "loadgen_jobs_skipped_total",
        "Jobs overdue past --max-lateness: marked processed unpublished.",
        c(&live.skipped),
    )
    .counter(
        "loadgen_jobs_late_total",
        "Jobs published more than --late-after after their fire_at.",
        c(&live.late),
    )
    .counter(
        "loadgen_jobs_republished_after_lease_expiry_total",
        "Jobs claimed again after their lease ran out, and published again.",
        c(&live.republished),
    )
    .counter(
        "loadgen_jobs_db_retries_total",
        "Database operations retried after a failure.",
        c(&live.db_retries),
    )
    .counter(
        "loadgen_jobs_mqtt_reconnects_total",
        "New MQTT connections after a batch left acknowledgements owed.",
        c(&live.mqtt_reconnects),
    );
    let guard = live.lateness.lock().ok();
    match guard.as_ref().and_then(|g| g.as_ref()) {
        Some((h, _)) => {
            e.histogram_us(
                "loadgen_jobs_lateness_seconds",
                "Written to the socket minus fire_at (0 when on time), copied once a second.",
                h,
            );
        }
        None => {
            let empty = Histogram::<u64>::new(3).expect("static precision");
            e.histogram_us(
                "loadgen_jobs_lateness_seconds",
                "Written to the socket minus fire_at (0 when on time), copied once a second.",
                &empty,
            );
        }
    }
    let phases = live.phases.get();
    mqtt_tool::phases::expose(e, &phases.tcp_us, &phases.tls_us, &phases.connack_us);
}

/// The metrics families of a run.
pub fn families(live: Arc<Live>) -> Families {
    Arc::new(move |e| exposition(e, &live))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_show_the_loops_counts_its_lateness_and_connect_phases() {
        let live = Live::default();
        let mut n = Counts {
            claimed: 10,
            acked: 7,
            failed: 3,
            ..Default::default()
        };
        n.phases.connect(&mqtt_tool::session::ConnectPhases {
            tcp: Duration::from_micros(300),
            tls: None,
            connack: Duration::from_micros(900),
        });
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        h.record(2_000).unwrap();
        live.update(&n, &h, false);
        let mut e = Exposition::with_labels(&[("run", "r1")]);
        exposition(&mut e, &live);
        let text = e.finish();
        for want in [
            "loadgen_jobs_claimed_total{run=\"r1\"} 10\n",
            "loadgen_jobs_acked_total{run=\"r1\"} 7\n",
            "loadgen_jobs_failed_total{run=\"r1\"} 3\n",
            "loadgen_jobs_lateness_seconds_count{run=\"r1\"} 1\n",
            "loadgen_tcp_connect_seconds_count{run=\"r1\"} 1\n",
            "loadgen_connack_seconds_count{run=\"r1\"} 1\n",
            "loadgen_tls_handshake_seconds_count{run=\"r1\"} 0\n",
            "loadgen_info{run=\"r1\",tool=\"job-pub\",",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
    }
}
