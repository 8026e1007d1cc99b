//! The publisher's flags: the shared connection and output flags ([`mqtt_tool::args`]) and
//! what to send and how fast. Checked for shape here, for meaning in [`crate::plan`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};
use mqtt_tool::args::{parse_count, parse_duration, parse_rate, ConnectionArgs, OutputArgs, Rate};

/// Every flag a publisher takes.
#[derive(Debug, Clone, Args)]
pub struct PublisherArgs {
    /// TOML file with flag values (keys are flag names, e.g. `rate = "10k"`); precedence:
    /// defaults < file < environment < command line
    #[arg(long, value_name = "FILE", env = "LOADGEN_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub load: LoadArgs,

    #[command(flatten)]
    pub output: OutputArgs,
}

/// What to send and how fast.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Load")]
pub struct LoadArgs {
    /// Device id written into every point [default: the preset's]
    #[arg(long, value_name = "ID", env = "LOADGEN_DEVICE_ID")]
    pub device_id: Option<String>,

    /// Topic to publish to; `{device_id}` is replaced by the device id
    #[arg(
        long,
        value_name = "TEMPLATE",
        default_value = "device_data/{device_id}",
        env = "LOADGEN_TOPIC"
    )]
    pub topic: String,

    /// Points per second on an absolute schedule (accepts 10k, 1.5M); 0 or `max` = as fast as possible
    #[arg(long, value_name = "POINTS_PER_S", default_value = "10000", value_parser = parse_rate, env = "LOADGEN_RATE")]
    pub rate: Rate,

    /// Points per MQTT message: 1 sends the legacy single JSON object, N > 1 a JSON array of N points
    #[arg(long, value_name = "N", default_value = "1000", value_parser = parse_count, env = "LOADGEN_BATCH")]
    pub batch: u64,

    /// Points to send [default: 100000, or unlimited when --duration is given]
    #[arg(long, value_name = "N", value_parser = parse_count, env = "LOADGEN_TOTAL")]
    pub total: Option<u64>,

    /// Stop generating after this long (30s, 5m); with --total, whichever comes first
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "LOADGEN_DURATION")]
    pub duration: Option<Duration>,

    /// MQTT quality of service
    #[arg(long, value_enum, default_value = "0", env = "LOADGEN_QOS")]
    pub qos: Qos,

    /// QoS 1 window: messages sent and not yet acknowledged (1..=65535) [default: 50000, capped
    /// so the window's payloads fit in 32 MiB]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..), env = "LOADGEN_MAX_INFLIGHT")]
    pub max_inflight: Option<u16>,

    /// Messages the client may queue before generation waits [default: what fits in 16 MiB]
    #[arg(long, value_name = "N", value_parser = parse_count, env = "LOADGEN_MAX_QUEUED")]
    pub max_queued: Option<u64>,

    /// After generation ends, how long to wait for the last writes and acknowledgements;
    /// what is still missing then is reported as failed
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "LOADGEN_DRAIN_TIMEOUT")]
    pub drain_timeout: Duration,

    /// Wait this long after connecting before generating (lets subscribers attach first)
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration, env = "LOADGEN_START_DELAY")]
    pub start_delay: Duration,

    /// Include the optional sensor fields `temperature` and `humidity` in every point
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", env = "LOADGEN_SENSOR_FIELDS")]
    pub sensor_fields: bool,

    /// Seed of the value generator (same seed, same values)
    #[arg(long, value_name = "N", default_value_t = 1, env = "LOADGEN_SEED")]
    pub seed: u64,
}

/// MQTT QoS levels the publisher supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Qos {
    /// At most once: no acknowledgement
    #[value(name = "0")]
    AtMostOnce,
    /// At least once: every message is acknowledged by a PUBACK
    #[value(name = "1")]
    AtLeastOnce,
}

impl Qos {
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
        }
    }
}
