//! A progress line on stderr about once a second (unless `--quiet`), and on SIGUSR1, read
//! from the live counters.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::format::fmt_int;
use crate::stats::Counters;

/// Prints progress every `every` (`None`: never by itself) and whenever `status` is
/// notified, until `stop` is cancelled.
pub async fn run(
    counters: Arc<Counters>,
    total: Option<u64>,
    qos1: bool,
    every: Option<Duration>,
    status: Arc<Notify>,
    stop: CancellationToken,
) {
    let start = Instant::now();
    let period = every.unwrap_or(Duration::from_secs(3600));
    let mut tick = tokio::time::interval_at(start + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last = counters.snapshot();
    let mut last_at = start;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick(), if every.is_some() => {}
            _ = status.notified() => {}
        }
        let now = Instant::now();
        let t = counters.snapshot();
        let dt = (now - last_at).as_secs_f64().max(1e-9);
        let point_rate = (t.points_sent - last.points_sent) as f64 / dt;
        let msg_rate = (t.messages_sent - last.messages_sent) as f64 / dt;
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
        mqtt_tool::errln!(
            "[{:>6.1}s] sent {}{} points  {} points/s  {} msg/s{}",
            (now - start).as_secs_f64(),
            fmt_int(t.points_sent),
            of_total,
            fmt_int(point_rate.round() as u64),
            fmt_int(msg_rate.round() as u64),
            acked
        );
        last = t;
        last_at = now;
    }
}
