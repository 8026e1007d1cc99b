//! What backend-sub shows while it runs, besides the progress line: Prometheus metrics at
//! `--metrics-addr`, and the end-to-end latency as an HdrHistogram interval log
//! (`--hdr-log`, tag `e2e`), both read from the receive loop's [`Live`] figures.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mqtt_tool::hist::CumulativeLog;
use mqtt_tool::metrics::Exposition;
use tokio_util::sync::CancellationToken;

use crate::receive::Live;

fn empty() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds")
}

/// The families of one scrape (the run's label and `loadgen_run_finished` come from
/// [`mqtt_tool::live`]).
pub fn exposition(e: &mut Exposition, tool: &str, live: &Live) {
    let latency = live
        .latency_us
        .lock()
        .ok()
        .and_then(|h| h.clone())
        .unwrap_or_else(empty);
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
    e.info(
            "loadgen_info",
            mqtt_tool::live::INFO_HELP,
            &[
                ("tool", tool.to_string()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ],
        )
        .counter(
            "loadgen_backend_points_received_total",
            "Points received, duplicates included.",
            c(&live.points),
        )
        .counter(
            "loadgen_backend_points_unique_total",
            "Points received once at least.",
            c(&live.unique),
        )
        .counter(
            "loadgen_backend_points_duplicate_total",
            "Points received again (counted about once a second).",
            c(&live.duplicate),
        )
        .counter(
            "loadgen_backend_sink_rows_written_total",
            "Rows --sink committed to PostgreSQL.",
            c(&live.stored),
        )
        .counter(
            "loadgen_backend_messages_received_total",
            "MQTT messages received.",
            c(&live.messages),
        )
        .counter(
            "loadgen_backend_malformed_messages_total",
            "Messages that were not points.",
            c(&live.malformed),
        )
        .gauge(
            "loadgen_backend_points_missing",
            "Points not (yet) received below each device's highest seq (about once a second; 0 in a share group).",
            c(&live.missing) as f64,
        )
        .gauge(
            "loadgen_backend_devices_seen",
            "Devices that sent a point.",
            c(&live.devices) as f64,
        )
        .gauge(
            "loadgen_backend_devices_with_gaps",
            "Devices with points missing now.",
            c(&live.gappy) as f64,
        )
        .gauge(
            "loadgen_backend_connected",
            "1 while subscribed to the broker.",
            c(&live.connected) as f64,
        )
        .counter(
            "loadgen_backend_e2e_latency_clamped_total",
            "Latencies past the histogram's ceiling (an hour), recorded in it as an hour.",
            c(&live.latency_clamped),
        )
        .histogram_us(
            "loadgen_backend_e2e_latency_seconds",
            "A point's timestamp to its arrival (publisher and backend share a clock).",
            &latency,
        );
    let phases = live.phases.get();
    mqtt_tool::phases::expose(e, &phases.tcp_us, &phases.tls_us, &phases.connack_us);
    e.histogram_us(
        "loadgen_suback_seconds",
        "SUBSCRIBE written to its SUBACK.",
        &phases.suback_us,
    );
}

/// Writes `--hdr-log` intervals until `stop`; returns the log for its last interval.
pub async fn watch(
    live: Arc<Live>,
    mut log: Option<CumulativeLog>,
    stop: CancellationToken,
) -> Option<CumulativeLog> {
    log.as_ref()?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let h = live
            .latency_us
            .lock()
            .ok()
            .and_then(|h| h.clone())
            .unwrap_or_else(empty);
        if let Some(l) = &mut log {
            if let Err(e) = l.interval(&[("e2e", &h)], Instant::now()) {
                mqtt_tool::errln!("warning: --hdr-log stopped: {e}");
                log = None;
            }
        }
    }
    log
}
