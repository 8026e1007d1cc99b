//! A progress line on stderr about once a second (unless `--quiet`) and on SIGUSR1, read
//! from the fleet's live figures; and samples of them, from which the report takes the rate
//! after the ramp.

use std::sync::Arc;
use std::time::Duration;

use mqtt_engine::FleetHandle;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::format::fmt_int;

/// What the watcher saw: points sent when the ramp ended, and the latest sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Samples {
    pub at_settle: Option<(std::time::Instant, u64)>,
    pub last: Option<(std::time::Instant, u64)>,
}

/// How often the live figures are sampled; progress lines come every tenth sample.
const SAMPLE: Duration = Duration::from_millis(100);

/// Prints progress every second when `print` (and whenever `status` is notified) until
/// `stop` is cancelled; samples the figures every 100 ms meanwhile.
pub async fn run(
    fleet: FleetHandle,
    total: Option<u64>,
    qos1: bool,
    connections: u64,
    print: bool,
    status: Arc<Notify>,
    stop: CancellationToken,
) -> Samples {
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start + SAMPLE, SAMPLE);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut samples = Samples::default();
    let mut last = fleet.live();
    let mut last_at = start;
    let mut n = 0u64;
    loop {
        let on_demand = tokio::select! {
            _ = stop.cancelled() => return samples,
            _ = tick.tick() => false,
            _ = status.notified() => true,
        };
        let now = Instant::now();
        let t = fleet.live();
        samples.last = Some((now.into_std(), t.points_sent));
        if samples.at_settle.is_none() && fleet.settled_at().is_some() {
            samples.at_settle = Some((now.into_std(), t.points_sent));
        }
        n += u64::from(!on_demand);
        if !(on_demand || (print && n % 10 == 0)) {
            continue;
        }
        let dt = (now - last_at).as_secs_f64().max(1e-9);
        let point_rate = (t.points_sent.saturating_sub(last.points_sent)) as f64 / dt;
        let msg_rate = (t.messages_sent.saturating_sub(last.messages_sent)) as f64 / dt;
        let of_total = match total {
            Some(total) => format!(
                "/{} ({:.1}%)",
                fmt_int(total),
                100.0 * t.points_sent as f64 / total as f64
            ),
            None => String::new(),
        };
        let acked = if qos1 {
            format!("  acked {}", fmt_int(t.points_acked))
        } else {
            String::new()
        };
        let conns = if connections > 1 {
            format!(
                "  conns {}/{} up{}",
                fmt_int(t.up),
                fmt_int(connections),
                if t.failed + t.lost > 0 {
                    format!(" ({} failed, {} lost)", fmt_int(t.failed), fmt_int(t.lost))
                } else {
                    String::new()
                }
            )
        } else {
            String::new()
        };
        mqtt_tool::errln!(
            "[{:>6.1}s] sent {}{} points  {} points/s  {} msg/s{}{}",
            (now - start).as_secs_f64(),
            fmt_int(t.points_sent),
            of_total,
            fmt_int(point_rate.round() as u64),
            fmt_int(msg_rate.round() as u64),
            acked,
            conns
        );
        last = t;
        last_at = now;
    }
}
