//! Progress on stderr (unless `--quiet`): a live bar when stderr is a terminal, else a plain
//! line about once a second; a line on SIGUSR1 either way. Read from the fleet's live
//! figures, which are sampled meanwhile for the report's rate after the ramp. A `--duration`
//! run shows the time it has left.

use std::sync::Arc;
use std::time::Duration;

use mqtt_engine::FleetHandle;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use std::io::IsTerminal;

use crate::format::fmt_int;

/// The live bar: points sent of the total (or a counter when the run is timed).
fn bar(total: Option<u64>) -> indicatif::ProgressBar {
    let (bar, template) = match total {
        Some(t) => (
            indicatif::ProgressBar::new(t),
            "{spinner} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} points, eta {eta}  {msg}",
        ),
        None => (
            indicatif::ProgressBar::new_spinner(),
            "{spinner} [{elapsed_precise}] {human_pos} points  {msg}",
        ),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr_with_hz(4));
    bar
}

/// What the watcher saw: points sent when generation began (the ramp and `--start-delay`
/// over), and the latest sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Samples {
    pub at_start: Option<(std::time::Instant, u64)>,
    pub last: Option<(std::time::Instant, u64)>,
}

/// What the progress line shows of the run's shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// `--total`: points of the whole run.
    pub total: Option<u64>,
    /// `--duration`: generation's length, from its start after the ramp and `--start-delay`.
    pub duration: Option<Duration>,
    pub qos: mqtt_tool::args::Qos,
    pub connections: u64,
    /// `loadgen conn`: connections held, no points; the line says connections and
    /// reconnects.
    pub held: bool,
}

/// `  25 s left` for a `--duration` run: before generation begins, the whole duration.
fn time_left(duration: Option<Duration>, anchor: Option<std::time::Instant>) -> String {
    let Some(d) = duration else {
        return String::new();
    };
    let left = match anchor {
        Some(a) => (a + d).saturating_duration_since(std::time::Instant::now()),
        None => d,
    };
    format!("  {}", crate::format::fmt_time_left(left))
}

/// How often the live figures are sampled; progress lines come every tenth sample.
const SAMPLE: Duration = Duration::from_millis(100);

/// Prints progress every second when `print` (and whenever `status` is notified) until
/// `stop` is cancelled; samples the figures every 100 ms meanwhile, and prints what
/// `collisions` names as soon as it happens, `--quiet` or not.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    fleet: FleetHandle,
    shape: Shape,
    print: bool,
    mut collisions: crate::observe::CollisionNotes,
    status: Arc<Notify>,
    stop: CancellationToken,
) -> Samples {
    let Shape {
        total,
        duration,
        qos,
        connections,
        held,
    } = shape;
    let acknowledged = qos.acknowledged();
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start + SAMPLE, SAMPLE);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut samples = Samples::default();
    let mut last = fleet.live();
    let mut last_at = start;
    let mut n = 0u64;
    let bar = (print && std::io::stderr().is_terminal()).then(|| bar(total));
    let mut recent = std::collections::VecDeque::with_capacity(12);
    loop {
        let on_demand = tokio::select! {
            _ = stop.cancelled() => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                // What the last turn saw (a copy that gave its connection up ends at once).
                for line in collisions.news(&fleet, &fleet.live()) {
                    mqtt_tool::errln!("{line}");
                }
                return samples;
            }
            _ = tick.tick() => false,
            _ = status.notified() => true,
        };
        let now = Instant::now();
        let t = fleet.live();
        for line in collisions.news(&fleet, &t) {
            match &bar {
                Some(b) => b.println(&line),
                None => mqtt_tool::errln!("{line}"),
            }
        }
        samples.last = Some((now.into_std(), t.points_sent));
        // From the anchor, not the end of the ramp: `--start-delay` idles in between, and
        // the rate after the ramp is the rate of generation.
        let anchor = fleet.anchor();
        if samples.at_start.is_none() && anchor.is_some_and(|a| now.into_std() >= a) {
            samples.at_start = Some((now.into_std(), t.points_sent));
        }
        n += u64::from(!on_demand);
        if let Some(b) = &bar {
            b.set_position(t.points_sent);
            // The rate over the last second of samples.
            recent.push_back((now, t.points_sent));
            while recent.len() > 11 {
                recent.pop_front();
            }
            let (t0, p0) = recent[0];
            let dt = (now - t0).as_secs_f64();
            let rate = if dt > 0.0 {
                (t.points_sent - p0.min(t.points_sent)) as f64 / dt
            } else {
                0.0
            };
            let mut msg = format!("{} points/s", fmt_int(rate.round() as u64));
            if acknowledged {
                msg.push_str(&format!("  acked {}", fmt_int(t.points_acked)));
            }
            if connections > 1 {
                msg.push_str(&format!(
                    "  conns {}/{} up",
                    fmt_int(t.up),
                    fmt_int(connections)
                ));
                if t.failed + t.lost > 0 {
                    msg.push_str(&format!(
                        " ({} failed, {} lost)",
                        fmt_int(t.failed),
                        fmt_int(t.lost)
                    ));
                }
            }
            msg.push_str(&time_left(duration, anchor));
            b.set_message(msg);
        }
        if !(on_demand || (print && bar.is_none() && n % 10 == 0)) {
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
        let acked = if acknowledged {
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
        let line = if held {
            format!(
                "[{:>6.1}s] conns {}/{} up  {} failed  {} lost  {} reconnects{}",
                (now - start).as_secs_f64(),
                fmt_int(t.up),
                fmt_int(connections),
                fmt_int(t.failed),
                fmt_int(t.lost),
                fmt_int(t.reconnects),
                time_left(duration, anchor)
            )
        } else {
            format!(
                "[{:>6.1}s] sent {}{} points  {} points/s  {} msg/s{}{}{}",
                (now - start).as_secs_f64(),
                fmt_int(t.points_sent),
                of_total,
                fmt_int(point_rate.round() as u64),
                fmt_int(msg_rate.round() as u64),
                acked,
                conns,
                time_left(duration, anchor)
            )
        };
        match &bar {
            Some(b) => b.println(line),
            None => mqtt_tool::errln!("{line}"),
        }
        last = t;
        last_at = now;
    }
}
