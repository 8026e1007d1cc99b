//! The publisher's flags: the shared connection and output flags ([`mqtt_tool::args`]) and
//! what to send and how fast. Checked for shape here, for meaning in [`crate::plan`].

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};
use mqtt_tool::args::{
    parse_count, parse_duration, parse_rate, parse_start_at, ConnectionArgs, OutputArgs, Rate,
    ReconnectArgs,
};

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
    pub fleet: FleetArgs,

    #[command(flatten)]
    pub shards: ShardArgs,

    #[command(flatten)]
    pub verify: VerifyArgs,

    #[command(flatten)]
    pub reconnect: ReconnectArgs,

    /// Points each device keeps while its connection is down (the schedule keeps running);
    /// they go out on reconnect, and older ones past this are dropped, counted as
    /// points_dropped_offline, their seqs skipped
    #[arg(long, value_name = "POINTS", default_value = "100k", value_parser = parse_count,
          env = "LOADGEN_OFFLINE_BUFFER", help_heading = "Faults")]
    pub offline_buffer: u64,

    /// MQTT 5: a user property KEY=VALUE on every PUBLISH (repeatable; the content type
    /// application/json is always set)
    #[arg(long = "user-property", value_name = "KEY=VALUE", value_parser = parse_property,
          env = "LOADGEN_USER_PROPERTY", help_heading = "MQTT 5")]
    pub user_properties: Vec<(String, String)>,

    #[command(flatten)]
    pub output: OutputArgs,
}

impl PublisherArgs {
    /// A fleet of `connections` connections, one "device" each, that publishes nothing of
    /// its own (no shards, no verifier, no offline buffer): the connections `loadgen conn`
    /// holds and `loadgen sub --clients` subscribes on, planned as the publisher plans its
    /// fleet's (TLS, MQTT 5, ramp, client ids, reconnects).
    pub fn connections_only(
        connection: ConnectionArgs,
        load: LoadArgs,
        connections: u64,
        ramp: RampArgs,
        reconnect: ReconnectArgs,
        output: OutputArgs,
    ) -> PublisherArgs {
        PublisherArgs {
            config: None,
            connection,
            load,
            fleet: FleetArgs {
                devices: connections,
                device_start: 0,
                connections: Some(connections),
                ramp,
            },
            shards: ShardArgs {
                shards: None,
                shard: None,
                start_at: None,
            },
            verify: VerifyArgs {
                verify: false,
                verify_timeout: Duration::from_secs(10),
            },
            reconnect,
            offline_buffer: 0,
            user_properties: Vec::new(),
            output,
        }
    }
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "'{s}' is not KEY=VALUE; use e.g. --user-property run=r1"
        )),
    }
}

/// What to send and how fast.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Load")]
pub struct LoadArgs {
    /// Device id written into every point, a template: `{i}` is the device's index, `{i:05}`
    /// zero-padded; a fleet without `{i}` gets `_{i}` appended [default: the preset's]
    #[arg(long, value_name = "TEMPLATE", env = "LOADGEN_DEVICE_ID")]
    pub device_id: Option<String>,

    /// Topic to publish to; `{device_id}` is replaced by the device id (and `{i}` by its index)
    #[arg(
        long,
        value_name = "TEMPLATE",
        default_value = "device_data/{device_id}",
        env = "LOADGEN_TOPIC"
    )]
    pub topic: String,

    /// Points per second of the whole fleet on an absolute schedule (accepts 10k, 1.5M); 0 or
    /// `max` = as fast as possible
    #[arg(long, value_name = "POINTS_PER_S", default_value = "10000", value_parser = parse_rate, env = "LOADGEN_RATE")]
    pub rate: Rate,

    /// Points per second of each device: the other way to give --rate (fleet = devices × this)
    #[arg(long, value_name = "POINTS_PER_S", value_parser = parse_rate, conflicts_with = "rate", env = "LOADGEN_RATE_PER_DEVICE")]
    pub rate_per_device: Option<Rate>,

    /// Points per MQTT message: 1 sends the legacy single JSON object, N > 1 a JSON array of N points
    #[arg(long, value_name = "N", default_value = "1000", value_parser = parse_count, env = "LOADGEN_BATCH")]
    pub batch: u64,

    /// Points to send, over the whole fleet (split evenly over its devices) [default: 100000,
    /// or unlimited when --duration is given]
    #[arg(long, value_name = "N", value_parser = parse_count, env = "LOADGEN_TOTAL")]
    pub total: Option<u64>,

    /// Stop generating after this long (30s, 5m); with --total, whichever comes first
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "LOADGEN_DURATION")]
    pub duration: Option<Duration>,

    /// MQTT quality of service: 0 by default, the load itself; 1 makes the broker
    /// acknowledge every message (receipt, not delivery) and each loss counted; 2 adds
    /// exactly-once hand-over (PUBREC, PUBREL, PUBCOMP: acknowledged at PUBCOMP). (`loadgen
    /// sub` subscribes at 1 by default, so that the broker queues for it)
    #[arg(long, default_value = "0", env = "LOADGEN_QOS",
          value_parser = mqtt_tool::args::qos_parser(Qos::ExactlyOnce))]
    pub qos: Qos,

    /// QoS 1 and 2 window: messages sent and not yet acknowledged (QoS 2: until PUBCOMP) (1..=65535) [default: 50000, capped
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

    /// Wait this long after the connect ramp before generating (lets subscribers attach first)
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

/// How many devices over how many connections, and how they connect.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Fleet")]
pub struct FleetArgs {
    /// Simulated devices, each with its own seq, schedule and topic
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_count, env = "LOADGEN_DEVICES")]
    pub devices: u64,

    /// Index of the first device (`{i}` of the first device), so that machines can take
    /// disjoint ranges
    #[arg(long, value_name = "K", default_value = "0", value_parser = parse_count, env = "LOADGEN_DEVICE_START")]
    pub device_start: u64,

    /// MQTT connections the devices are spread over (fewer than devices: gateways) [default:
    /// one per device]
    #[arg(long, value_name = "M", value_parser = parse_count, env = "LOADGEN_CONNECTIONS")]
    pub connections: Option<u64>,

    #[command(flatten)]
    pub ramp: RampArgs,
}

/// How a fleet's connections come up: workers, the connect ramp, retries, source addresses.
/// Shared by `loadgen pub`, `loadgen conn` and the subscriber fleet (`loadgen sub --clients`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Fleet")]
pub struct RampArgs {
    /// Worker threads, each owning its share of the connections [default: the cores this
    /// process may use, at most one per connection]
    #[arg(long, value_name = "W", value_parser = parse_count, env = "LOADGEN_WORKERS")]
    pub workers: Option<u64>,

    /// New connections per second over the fleet; `max` = as fast as the broker takes them
    #[arg(long, value_name = "PER_S", default_value = "1000", value_parser = parse_rate, env = "LOADGEN_CONNECT_RATE")]
    pub connect_rate: Rate,

    /// CONNECTs awaiting their CONNACK at once (Mosquitto's listen backlog is 100: more only
    /// makes the kernel drop SYNs and retry them seconds later)
    #[arg(long, value_name = "K", default_value = "100", value_parser = parse_count, env = "LOADGEN_MAX_CONNECTING")]
    pub max_connecting: u64,

    /// Retries of a connection whose connect failed transiently (refused, timeout, closed),
    /// with jittered exponential backoff from 100ms to 10s; refused credentials are never
    /// retried [default: 3, 0 for a single connection]
    #[arg(long, value_name = "N", value_parser = parse_count, env = "LOADGEN_CONNECT_RETRIES")]
    pub connect_retries: Option<u64>,

    /// Local address to connect from, or a range (127.0.0.1-127.0.0.8), repeatable: spread
    /// over the connections, for fleets past one address's ephemeral ports
    #[arg(
        long = "source-ip",
        value_name = "IP[-IP]",
        env = "LOADGEN_SOURCE_IP",
        value_delimiter = ','
    )]
    pub source_ips: Vec<String>,
}

/// One fleet run as many processes (machines, pods), and when they start.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Shards")]
pub struct ShardArgs {
    /// Run the fleet as N shards, one process (machine, pod) each: a shard takes its
    /// contiguous slice of --devices and --connections and its share of --rate and --total;
    /// `loadgen merge` adds their reports up
    #[arg(long, value_name = "N", value_parser = parse_count, env = "LOADGEN_SHARDS")]
    pub shards: Option<u64>,

    /// This process's shard, 0 to N-1 [default: $JOB_COMPLETION_INDEX, which a Kubernetes
    /// Indexed Job sets]
    #[arg(long, value_name = "I", value_parser = parse_count, env = "LOADGEN_SHARD")]
    pub shard: Option<u64>,

    /// Wait for this wall-clock instant before the first connect, so that every shard starts
    /// together: RFC 3339 in UTC (2026-12-01T12:00:00Z), seconds since the epoch, or `now`
    #[arg(long, value_name = "TIME", value_parser = parse_start_at, env = "LOADGEN_START_AT")]
    pub start_at: Option<mqtt_tool::args::StartAt>,
}

/// `--verify`: prove delivery in the same process.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Verification")]
pub struct VerifyArgs {
    /// Prove delivery too: before the first publish, subscribe in this process to what the
    /// fleet publishes (the topic template with `+` for each level holding a placeholder:
    /// device_data/+), verify every point as `loadgen sub` does, and compare with the seqs
    /// each device wrote. The report gains a `delivery` section and one verdict; exit 5
    /// when a point is missing, duplicated, unexpected or malformed. At QoS 1 the
    /// acknowledgement proves the broker's receipt, this proves delivery. (docs/verify.md)
    #[arg(long, env = "LOADGEN_VERIFY")]
    pub verify: bool,

    /// With --verify, after the fleet ends: stop once every expected point arrived and the
    /// stream is quiet for 100ms, or the stream is quiet this long (at the latest after 10
    /// times this, for a stream that never pauses)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration,
          env = "LOADGEN_VERIFY_TIMEOUT")]
    pub verify_timeout: Duration,
}

/// MQTT QoS: the workspace's one type (the publishers run 0, 1 and 2).
pub use mqtt_tool::args::Qos;
