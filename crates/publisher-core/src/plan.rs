//! A run's typed, validated plan: everything decided before the first byte is sent.
//!
//! [`Plan::from_args`] turns flags into a plan or a usage error that says what to change, so
//! the later stages never meet bad input.

use std::path::PathBuf;
use std::time::Duration;

use point_format::Encoder;

use crate::args::{LoadArgs, PublisherArgs, Qos};
use crate::error::Error;
use crate::Preset;
use mqtt_tool::args::Rate;
use mqtt_tool::connect::{connect_plan, ConnectPlan, MQTT_MAX_PACKET};

/// Payload bytes the QoS 1 window may hold when `--max-inflight` is not given.
const INFLIGHT_BUDGET: usize = 32 << 20;
/// Payload bytes the client queue may hold when `--max-queued` is not given.
const QUEUE_BUDGET: usize = 16 << 20;
/// Default QoS 1 window, as in the seed publishers.
const DEFAULT_INFLIGHT: usize = 50_000;
/// Default `--total` when neither it nor `--duration` is given.
pub const DEFAULT_TOTAL: u64 = 100_000;
/// Everything a publisher run needs, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub connect: ConnectPlan,
    pub device_id: String,
    pub topic: String,
    pub qos: Qos,
    pub batch: usize,
    /// Points to send; `None` = until `duration` ends.
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    /// Points per second; `None` = as fast as possible.
    pub rate: Option<f64>,
    pub max_inflight: u16,
    /// Messages the client may queue before generation waits.
    pub max_queued: usize,
    /// QoS 0: messages that travel together in one frame at most (1 at QoS 1).
    pub frame_messages: usize,
    /// Capacity of rumqttc's request queue, in requests (frames at QoS 0), so that it holds
    /// at most `max_queued` messages.
    pub queue_requests: usize,
    pub drain_timeout: Duration,
    pub start_delay: Duration,
    pub sensor_fields: bool,
    pub seed: u64,
    /// Upper bound of one message's payload.
    pub max_payload: usize,
    pub report_json: Option<PathBuf>,
    pub quiet: bool,
}

impl Plan {
    pub fn from_args(args: PublisherArgs, preset: &Preset) -> Result<Plan, Error> {
        let PublisherArgs {
            connection,
            load,
            output,
            ..
        } = args;
        let LoadArgs {
            device_id,
            topic,
            rate,
            batch,
            total,
            duration,
            qos,
            max_inflight,
            max_queued,
            drain_timeout,
            start_delay,
            sensor_fields,
            seed,
        } = load;
        let device_id = device_id.unwrap_or_else(|| preset.device_id.to_string());
        let topic = render_topic(&topic, &device_id)?;

        if batch == 0 {
            return Err(Error::usage("--batch must be at least 1"));
        }
        if total == Some(0) {
            return Err(Error::usage("--total must be at least 1"));
        }
        if duration == Some(Duration::ZERO) {
            return Err(Error::usage("--duration must be longer than 0s"));
        }
        let total = match (total, duration) {
            (None, None) => Some(DEFAULT_TOTAL),
            (t, _) => t,
        };
        let batch = usize::try_from(batch).map_err(|_| Error::usage("--batch is too large"))?;
        let max_payload = Encoder::new(&device_id).max_payload_len(batch);
        // fixed header (5) + topic length prefix (2) + topic + packet id (2)
        let packet_needed = (max_payload as u64).saturating_add(topic.len() as u64 + 9);
        if packet_needed > MQTT_MAX_PACKET {
            return Err(Error::usage(format!(
                "--batch {batch} makes messages of up to {packet_needed} bytes, above MQTT's limit of {MQTT_MAX_PACKET}; lower --batch"
            )));
        }
        let connect = connect_plan(
            connection,
            preset.client_id,
            packet_needed,
            &format!("--batch {batch}"),
        )?;

        let max_inflight = match max_inflight {
            Some(n) => n,
            None => (INFLIGHT_BUDGET / max_payload).clamp(1, DEFAULT_INFLIGHT) as u16,
        };
        let max_queued = match max_queued {
            Some(0) => return Err(Error::usage("--max-queued must be at least 1")),
            Some(n) => usize::try_from(n).map_err(|_| Error::usage("--max-queued is too large"))?,
            None => (QUEUE_BUDGET / (max_payload + 256)).clamp(16, 1_000_000),
        };
        let frame_messages = match qos {
            Qos::AtLeastOnce => 1,
            Qos::AtMostOnce => (crate::sink::FRAME_BYTES / max_payload).clamp(1, max_queued),
        };
        let queue_requests = (max_queued / frame_messages).max(1);
        let rate = match rate {
            Rate::Unlimited => None,
            Rate::PerSecond(r) => Some(r),
        };
        if let Some(r) = rate {
            // One message every batch / rate seconds: past a year the schedule means nothing.
            if batch as f64 / r > mqtt_tool::args::MAX_DURATION.as_secs_f64() {
                return Err(Error::usage(format!(
                    "--rate {r} with --batch {batch} sends one message less than once a year; raise --rate or lower --batch"
                )));
            }
        }
        let report_json = output.report_json;
        if let Some(p) = &report_json {
            crate::out::check_report_path(p)?;
        }
        Ok(Plan {
            connect,
            device_id,
            topic,
            qos,
            batch,
            total,
            duration,
            rate,
            max_inflight,
            max_queued,
            frame_messages,
            queue_requests,
            drain_timeout,
            start_delay,
            sensor_fields,
            seed,
            max_payload,
            report_json,
            quiet: output.quiet,
        })
    }
}

pub use point_format::MAX_DEVICE_ID;

/// Checks `--device-id` on its own, so that an error names it rather than the topic it
/// goes into.
pub fn check_device_id(device_id: &str, template: &str) -> Result<(), Error> {
    if device_id.len() > MAX_DEVICE_ID {
        return Err(Error::usage(format!(
            "--device-id is {} bytes; use at most {MAX_DEVICE_ID}",
            device_id.len()
        )));
    }
    if template.contains("{device_id}") {
        if device_id.contains(['+', '#']) {
            return Err(Error::usage(format!(
                "--device-id '{}' contains '+' or '#', which are wildcards in the topic it goes into; remove them",
                crate::out::escape(device_id)
            )));
        }
        if device_id.contains('\0') {
            return Err(Error::usage(
                "--device-id contains a NUL character, which a topic cannot hold; remove it",
            ));
        }
    }
    Ok(())
}

/// Renders the topic template and checks it is a valid topic to publish to.
pub fn render_topic(template: &str, device_id: &str) -> Result<String, Error> {
    check_device_id(device_id, template)?;
    let topic = template.replace("{device_id}", device_id);
    if topic.is_empty() {
        return Err(Error::usage(
            "--topic is empty; give a topic such as device_data/{device_id}",
        ));
    }
    if topic.contains(['+', '#']) {
        return Err(Error::usage(format!(
            "--topic '{}' contains a wildcard ('+' or '#'); publish topics must name one topic",
            crate::out::escape(&topic)
        )));
    }
    if topic.contains('\0') {
        return Err(Error::usage("--topic must not contain a NUL character"));
    }
    if topic.len() > u16::MAX as usize {
        return Err(Error::usage(format!(
            "--topic is {} bytes, longer than MQTT allows (65535 bytes)",
            topic.len()
        )));
    }
    Ok(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_with_wildcards_are_refused() {
        assert_eq!(
            render_topic("device_data/{device_id}", "d1").unwrap(),
            "device_data/d1"
        );
        assert!(render_topic("a/+/b", "d").is_err());
        assert!(render_topic("a/#", "d").is_err());
        assert!(render_topic("{device_id}", "").is_err());
    }
}
