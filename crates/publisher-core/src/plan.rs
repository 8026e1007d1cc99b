//! A run's typed, validated plan: everything decided before the first byte is sent.
//!
//! [`Plan::from_args`] turns flags into a plan or a usage error that says what to change, so
//! the later stages never meet bad input. [`Plan::fleet_settings`] then gives the engine its
//! own small settings: nothing past this module knows the command line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mqtt_engine::schedule::Schedule;
use mqtt_engine::template::Template;
use mqtt_engine::{ConnSettings, FleetSettings, PublishSettings, RampSettings};
use point_format::Encoder;

use crate::args::{FleetArgs, LoadArgs, PublisherArgs, Qos, RampArgs};
use crate::error::Error;
use crate::Preset;
use mqtt_tool::args::Rate;
use mqtt_tool::connect::{connect_plan, ConnectPlan, MQTT_MAX_PACKET};

/// Payload bytes the QoS 1 windows may hold together when `--max-inflight` is not given.
const INFLIGHT_BUDGET: usize = 32 << 20;
/// Payload bytes the outboxes may hold together when `--max-queued` is not given.
const QUEUE_BUDGET: usize = 16 << 20;
/// Default QoS 1 window, as in the seed publishers.
const DEFAULT_INFLIGHT: usize = 50_000;
/// Default `--total` when neither it nor `--duration` is given.
pub const DEFAULT_TOTAL: u64 = 100_000;
/// Open files a run needs besides its connections: stdio, epoll and timer descriptors per
/// worker, the embedded broker's listener, a probe, the report.
const FILES_BESIDES_CONNECTIONS: u64 = 64;
/// Default connect retries of a fleet (a single connection's failure is the run's).
const FLEET_CONNECT_RETRIES: u32 = 3;
/// Most worker threads: one per core is what helps; each holds its own histograms.
const MAX_WORKERS: u64 = 256;
/// Descriptors each worker holds: its epoll, its waker and its timer.
const FILES_PER_WORKER: u64 = 3;

pub use point_format::MAX_DEVICE_ID;

/// One shard of a fleet: which, of how many, and its slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
    /// Its devices, as indexes into the whole fleet (before `--device-start`).
    pub devices: std::ops::Range<u64>,
    pub connections: u64,
}

/// How late `--start-at` may be when the run begins: a pod that started later than this
/// would not start together with the others.
pub const START_AT_LATE: Duration = Duration::from_secs(1);
/// How far ahead `--start-at` may be.
pub const START_AT_AHEAD: Duration = Duration::from_secs(24 * 3600);

/// Checks that `--start-at` is neither past (by more than [`START_AT_LATE`]) nor more than a
/// day away.
pub fn check_start_at(t: std::time::SystemTime) -> Result<std::time::SystemTime, Error> {
    let now = std::time::SystemTime::now();
    let shown = humantime::format_rfc3339_millis(t);
    match t.duration_since(now) {
        Ok(ahead) if ahead > START_AT_AHEAD => Err(Error::usage(format!(
            "--start-at {shown} is {} away, more than a day; pick a nearer instant",
            humantime::format_duration(Duration::from_secs(ahead.as_secs()))
        ))),
        Ok(_) => Ok(t),
        Err(e) if e.duration() <= START_AT_LATE => Ok(t),
        Err(e) => Err(Error::usage(format!(
            "--start-at {shown} passed {:.1} s ago, so this shard cannot start together with the \
             others; pick an instant further out (time for every pod to start)",
            e.duration().as_secs_f64()
        ))),
    }
}

/// The shard `--shards`/`--shard` (or `$JOB_COMPLETION_INDEX`) asks for, of a fleet of
/// `devices` over `connections`.
fn shard_of(
    a: &crate::args::ShardArgs,
    devices: u64,
    connections: u64,
) -> Result<Option<Shard>, Error> {
    let count = match (a.shards, a.shard) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(Error::usage(
                "--shard needs --shards N, the number of shards of the fleet",
            ))
        }
        (Some(0), _) => return Err(Error::usage("--shards must be at least 1")),
        (Some(n), _) if n > crate::merge::MAX_SHARDS => {
            return Err(Error::usage(format!(
                "--shards {n} is more than a run can have ({}, which loadgen merge adds up); run fewer, larger shards",
                crate::format::fmt_int(crate::merge::MAX_SHARDS)
            )))
        }
        (Some(n), _) => n,
    };
    let index = match a.shard {
        Some(i) => i,
        None => match std::env::var("JOB_COMPLETION_INDEX") {
            Ok(v) => v.trim().parse::<u64>().map_err(|_| {
                Error::usage(format!(
                    "JOB_COMPLETION_INDEX '{}' is not a shard index; it must be a whole number",
                    crate::out::escape(&v)
                ))
            })?,
            Err(_) => {
                return Err(Error::usage(
                    "--shards needs this process's shard: give --shard I (0 to N-1) or set JOB_COMPLETION_INDEX",
                ))
            }
        },
    };
    if index >= count {
        return Err(Error::usage(format!(
            "shard {index} is not one of --shards {count}; give an index from 0 to {}",
            count - 1
        )));
    }
    if connections < count {
        return Err(Error::usage(format!(
            "--shards {count} is more than the fleet's {connections} connections; every shard needs at least one (raise --connections or --devices)"
        )));
    }
    // Connections are split first, and each shard takes the devices of its connections, so
    // that a gateway carries the same devices sharded or not.
    let conns = mqtt_engine::schedule::spread(connections, count, index);
    let first = mqtt_engine::schedule::spread(devices, connections, conns.start).start;
    let end = mqtt_engine::schedule::spread(devices, connections, conns.end - 1).end;
    Ok(Some(Shard {
        index,
        count,
        devices: first..end,
        connections: conns.end - conns.start,
    }))
}

/// The fleet's shape.
#[derive(Debug, Clone)]
pub struct FleetPlan {
    pub devices: u64,
    pub device_start: u64,
    pub connections: u64,
    pub workers: usize,
    pub connect_rate: Option<f64>,
    pub max_connecting: usize,
    pub connect_retries: u32,
    pub source_ips: Vec<IpAddr>,
    /// The client id of each connection.
    pub client_id: Template,
}

/// Everything a publisher run needs, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub connect: ConnectPlan,
    pub fleet: FleetPlan,
    /// The device id of each device; for one device, its id.
    pub device_id_template: Template,
    pub device_id: String,
    /// The topic of each device; for one device, its topic.
    pub topic_template: Template,
    pub topic: String,
    pub qos: Qos,
    pub batch: usize,
    /// Points to send over the fleet; `None` = until `duration` ends.
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    /// Points per second of the fleet; `None` = as fast as possible.
    pub rate: Option<f64>,
    /// QoS 1 window of each connection.
    pub max_inflight: u16,
    /// Messages each connection may queue unwritten before its devices wait.
    pub max_queued: usize,
    pub drain_timeout: Duration,
    pub start_delay: Duration,
    /// `--verify`: the drain's timeout after the fleet ends (`None`: no verification).
    pub verify: Option<Duration>,
    /// `--verify`: the filter of `--topic` (a level with a placeholder becomes `+`).
    pub verify_filter: String,
    pub sensor_fields: bool,
    pub seed: u64,
    /// Upper bound of one message's payload.
    pub max_payload: usize,
    pub report_json: Option<PathBuf>,
    /// Where the report goes: JSON, CSV, Markdown.
    pub exports: mqtt_tool::export::Exports,
    pub thresholds: Vec<mqtt_tool::threshold::Threshold>,
    pub hdr_log: Option<PathBuf>,
    /// `--metrics-addr`, `--metrics-push`, `--metrics-linger`, `--run-id`.
    pub metrics: mqtt_tool::live::MetricsPlan,
    /// `--shards`: this process's slice of the whole fleet.
    pub shard: Option<Shard>,
    /// `--start-at`: the instant to wait for before connecting.
    pub start_at: Option<std::time::SystemTime>,
    pub quiet: bool,
    /// `None`: `--reconnect false`.
    pub reconnect: Option<mqtt_engine::ReconnectSettings>,
    pub clean_session: bool,
    /// MQTT 5 (`None`: 3.1.1).
    pub mqtt5: Option<mqtt_engine::settings::Mqtt5>,
    /// `mqtts://`: the engine's TLS settings.
    pub tls: Option<mqtt_engine::settings::TlsSettings>,
}

impl Plan {
    /// The fleet's schedule: when each device's points fall due, and how many it sends.
    pub fn schedule(&self) -> Schedule {
        Schedule::new(
            self.fleet.devices,
            self.rate,
            self.batch as u64,
            self.total,
            self.duration,
        )
    }

    pub fn from_args(args: PublisherArgs, preset: &Preset) -> Result<Plan, Error> {
        let PublisherArgs {
            connection,
            load,
            fleet,
            output,
            reconnect,
            offline_buffer,
            user_properties,
            shards,
            verify,
            ..
        } = args;
        let mqtt5 = connection.mqtt_version == mqtt_tool::args::MqttVersion::V5;
        if !user_properties.is_empty() && !mqtt5 {
            return Err(Error::usage(
                "--user-property needs MQTT 5; add --mqtt-version 5",
            ));
        }
        let LoadArgs {
            device_id,
            topic,
            rate,
            rate_per_device,
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
        let FleetArgs {
            devices,
            mut device_start,
            connections,
            ramp:
                RampArgs {
                    workers,
                    connect_rate,
                    max_connecting,
                    connect_retries,
                    source_ips,
                },
        } = fleet;

        if devices == 0 {
            return Err(Error::usage("--devices must be at least 1"));
        }
        if devices > u32::MAX as u64 {
            return Err(Error::usage(format!(
                "--devices {devices} is more than one process can simulate; split the fleet with --device-start"
            )));
        }
        if device_start.checked_add(devices).is_none() {
            return Err(Error::usage(
                "--device-start plus --devices is past the largest index; lower --device-start",
            ));
        }
        let connections = connections.unwrap_or(devices);
        if connections == 0 || connections > devices {
            return Err(Error::usage(format!(
                "--connections {connections} must be from 1 to --devices ({devices}): a connection carries at least one device"
            )));
        }

        if verify.verify && verify.verify_timeout.is_zero() {
            return Err(Error::usage("--verify-timeout must be longer than 0s"));
        }
        let verify_filter = mqtt_tool::delivery::filter_of_template(&topic);
        let default_client = default_client_id(preset.client_id, reconnect.clean_session);
        let (device_id_template, client_id_template, topic_template) = templates(
            device_id,
            connection.client_id.clone(),
            &topic,
            preset,
            &default_client,
            devices,
            connections,
        )?;
        // A shard runs its slice of the whole fleet: the templates above were made for the
        // whole fleet (so `{i}` is in them whenever it has more than one device or
        // connection, and client ids never collide across shards), the rest for the slice.
        let shard = shard_of(&shards, devices, connections)?;
        let (fleet_devices, fleet_connections) = (devices, connections);
        let (mut devices, mut connections) = (devices, connections);
        if let Some(sh) = &shard {
            device_start += sh.devices.start;
            devices = sh.devices.end - sh.devices.start;
            connections = sh.connections;
        }
        let last_index = device_start + devices - 1;
        let device_id = device_id_template.render(device_start, "");
        let longest_id = device_id_template.render(last_index, "");
        for id in [&device_id, &longest_id] {
            check_device_id(id, &topic)?;
        }
        let first_topic = topic_template.render(device_start, &device_id);
        check_topic(&first_topic)?;
        check_topic(&topic_template.render(last_index, &longest_id))?;

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
        // The shard's share of the total: the points its devices send in the whole fleet's
        // split (the first `total % devices` devices send one more), so shards add up exactly.
        let total = match (&shard, total) {
            (Some(sh), Some(t)) => {
                let (base, extra) = (t / fleet_devices, t % fleet_devices);
                let more = extra.clamp(sh.devices.start, sh.devices.end) - sh.devices.start;
                let share = base * devices + more;
                if share == 0 {
                    return Err(Error::usage(format!(
                        "--total {t} leaves shard {} of {} nothing to send; raise --total or use fewer --shards",
                        sh.index, sh.count
                    )));
                }
                Some(share)
            }
            (_, t) => t,
        };
        let batch = usize::try_from(batch).map_err(|_| Error::usage("--batch is too large"))?;
        let max_payload = Encoder::new(&longest_id).max_payload_len(batch);
        let max_topic = topic_template.max_len(last_index, longest_id.len());
        // fixed header (5) + topic length prefix (2) + topic + packet id (2)
        // MQTT 5 properties: the content type (19 bytes), the user's, their length (4).
        let props_len: u64 = 23
            + user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() as u64 + v.len() as u64)
                .sum::<u64>();
        let packet_needed = (max_payload as u64)
            .saturating_add(max_topic as u64 + 9)
            .saturating_add(if mqtt5 { props_len } else { 0 });
        if packet_needed > MQTT_MAX_PACKET {
            return Err(Error::usage(format!(
                "--batch {batch} makes messages of up to {packet_needed} bytes, above MQTT's limit of {MQTT_MAX_PACKET}; lower --batch"
            )));
        }
        let mut connect = connect_plan(
            connection,
            &default_client,
            packet_needed,
            &format!("--batch {batch}"),
        )?;
        let tls = match (&connect.tls, &connect.broker) {
            (Some(t), mqtt_tool::connect::BrokerChoice::Remote { host, .. }) => {
                Some(mqtt_engine::settings::TlsSettings {
                    config: t.config.clone(),
                    server_name: mqtt_tool::tls::server_name(host)?,
                })
            }
            _ => None,
        };
        // The plan's client id is the template's first rendering; checked for every one.
        connect.client_id = client_id_template.render(device_start, "");
        let longest_client = client_id_template.render(last_index, "");
        mqtt_tool::connect::check_mqtt_string(&longest_client, "--client-id")?;

        let per_conn = connections as usize;
        let max_inflight = match max_inflight {
            Some(n) => n,
            None => (INFLIGHT_BUDGET / per_conn / max_payload).clamp(1, DEFAULT_INFLIGHT) as u16,
        };
        let max_queued = match max_queued {
            Some(0) => return Err(Error::usage("--max-queued must be at least 1")),
            Some(n) => usize::try_from(n).map_err(|_| Error::usage("--max-queued is too large"))?,
            // One connection keeps the seed's figure; a fleet shares the budget, each
            // connection room for at least a couple of messages.
            None if connections == 1 => (QUEUE_BUDGET / (max_payload + 256)).clamp(16, 1_000_000),
            None => (QUEUE_BUDGET / per_conn / (max_payload + 64)).clamp(2, 1_000_000),
        };
        let rate = match (rate_per_device, rate) {
            (Some(Rate::PerSecond(r)), _) => Some(r * devices as f64),
            (Some(Rate::Unlimited), _) | (None, Rate::Unlimited) => None,
            // A shard's share of the fleet's rate: its devices' share.
            (None, Rate::PerSecond(r)) => Some(r * devices as f64 / fleet_devices as f64),
        };
        if let Some(r) = rate {
            // One message of a device every batch / (rate / devices) seconds: past a year the
            // schedule means nothing.
            let interval = batch as f64 * devices as f64 / r;
            if interval > mqtt_tool::args::MAX_DURATION.as_secs_f64() {
                return Err(Error::usage(format!(
                    "--rate {r} over {devices} devices with --batch {batch} sends a device's message less than once a year; raise --rate or lower --batch"
                )));
            }
            if r > mqtt_tool::args::MAX_RATE {
                return Err(Error::usage(
                    "--rate-per-device times --devices is above the highest rate (1e12 points/s)",
                ));
            }
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let workers = match workers {
            Some(0) => return Err(Error::usage("--workers must be at least 1")),
            Some(w) if w > MAX_WORKERS => {
                return Err(Error::usage(format!(
                    "--workers {w} is more than {MAX_WORKERS}; a worker is a thread, and one per core ({cores} here) is what helps"
                )))
            }
            Some(w) => w.min(connections),
            None => cores.min(connections),
        } as usize;
        // The ramp's flags are the whole fleet's, like --rate: a shard takes its share.
        let share = connections as f64 / fleet_connections as f64;
        let connect_rate = match connect_rate {
            Rate::Unlimited => None,
            Rate::PerSecond(r) => Some(r * share),
        };
        if max_connecting == 0 {
            return Err(Error::usage("--max-connecting must be at least 1"));
        }
        let max_connecting = ((max_connecting as f64 * share).ceil() as u64).max(1);
        let connect_retries = match connect_retries {
            Some(n) => u32::try_from(n)
                .map_err(|_| Error::usage("--connect-retries is too large; use at most 1000"))?
                .min(1000),
            // One connection's failure is the run's; a shard's one connection is a fleet's.
            None if fleet_connections == 1 => 0,
            None => FLEET_CONNECT_RETRIES,
        };
        let source_ips = parse_source_ips(&source_ips)?;
        check_limits(connections, workers as u64, &source_ips, &connect.broker)?;
        if let (Some(r), Some(d)) = (rate, duration) {
            // The first device's first message is due after (batch - 1) points of every
            // device and one more: a run shorter than that sends nothing.
            let first = ((batch as f64 - 1.0) * devices as f64 + 1.0) / r;
            if d.as_secs_f64() < first {
                return Err(Error::usage(format!(
                    "--duration {} ends before any device's first message is due ({first:.1} s with --batch {batch} \
                     over {devices} devices at {r} points/s); lengthen --duration, raise --rate or lower --batch",
                    humantime::format_duration(d)
                )));
            }
        }

        let exports = output.export.exports(shard.as_ref().map(|s| s.index))?;
        let thresholds = mqtt_tool::threshold::parse_all(
            &output.export.thresholds,
            &crate::report::threshold_fields(),
        )?;
        let hdr_log = output.hdr_log.as_ref().map(|p| match &shard {
            Some(sh) => PathBuf::from(
                p.to_string_lossy()
                    .replace("{shard}", &sh.index.to_string()),
            ),
            None => p.clone(),
        });
        if let Some(p) = &hdr_log {
            crate::out::check_export_path("--hdr-log", p)?;
            if p.as_os_str() == "-" {
                return Err(Error::usage("--hdr-log needs a file path, not -"));
            }
        }
        let start_at = match shards.start_at {
            Some(mqtt_tool::args::StartAt(Some(t))) => Some(check_start_at(t)?),
            _ => None,
        };
        // The shards of a run share --start-at, and so their run id.
        let metrics = output.metrics.plan(start_at, output.quiet)?;
        Ok(Plan {
            connect,
            fleet: FleetPlan {
                devices,
                device_start,
                connections,
                workers,
                connect_rate,
                max_connecting: max_connecting.min(1_000_000) as usize,
                connect_retries,
                source_ips,
                client_id: client_id_template,
            },
            device_id_template,
            device_id,
            topic_template,
            topic: first_topic,
            qos,
            batch,
            total,
            duration,
            rate,
            max_inflight,
            max_queued,
            drain_timeout,
            start_delay,
            verify: verify.verify.then_some(verify.verify_timeout),
            verify_filter,
            sensor_fields,
            seed,
            max_payload,
            report_json: exports.json.clone(),
            exports,
            thresholds,
            hdr_log,
            metrics,
            shard,
            start_at,
            quiet: output.quiet,
            reconnect: reconnect
                .reconnect
                .then_some(mqtt_engine::ReconnectSettings {
                    backoff_min: reconnect.reconnect_backoff.0,
                    backoff_max: reconnect.reconnect_backoff.1,
                    give_up_after: reconnect.reconnect_timeout,
                    offline_buffer,
                }),
            clean_session: reconnect.clean_session,
            tls,
            mqtt5: mqtt5.then(|| mqtt_engine::settings::Mqtt5 {
                connect: mqtt_engine::packets::ConnectV5 {
                    session_expiry: if reconnect.clean_session {
                        0
                    } else {
                        reconnect.session_expiry.as_secs().min(u32::MAX as u64) as u32
                    },
                    user_properties: Vec::new(),
                },
                publish_properties: mqtt_engine::packets::publish_properties_v5(
                    Some("application/json"),
                    &user_properties,
                ),
            }),
        })
    }

    /// Whether this run is a fleet (more than one device), whose report says so.
    pub fn is_fleet(&self) -> bool {
        self.fleet.devices > 1
    }

    /// The engine's settings, for a broker at `addrs`.
    pub fn fleet_settings(&self, addrs: Vec<SocketAddr>) -> FleetSettings {
        let c = &self.connect;
        FleetSettings {
            devices: self.fleet.devices,
            device_start: self.fleet.device_start,
            connections: self.fleet.connections,
            workers: self.fleet.workers,
            conn: ConnSettings {
                addrs,
                source_ips: self.fleet.source_ips.clone(),
                tcp_nodelay: c.tcp_nodelay,
                keep_alive: c.keep_alive,
                connect_timeout: c.connect_timeout,
                clean_session: self.clean_session,
                credentials: c.credentials.as_ref().map(|(u, p)| {
                    (
                        u.clone(),
                        p.as_ref()
                            .map(|p| p.expose().to_string())
                            .unwrap_or_default(),
                    )
                }),
                client_id: self.fleet.client_id.clone(),
                max_packet_size: c.max_packet_size,
                mqtt5: self.mqtt5.clone(),
                tls: self.tls.clone(),
            },
            ramp: RampSettings {
                connect_rate: self.fleet.connect_rate,
                max_connecting: self.fleet.max_connecting,
                connect_retries: self.fleet.connect_retries,
                backoff_base: Duration::from_millis(100),
                backoff_max: Duration::from_secs(10),
            },
            reconnect: self.reconnect.clone(),
            publish: PublishSettings {
                qos: self.qos,
                max_inflight: self.max_inflight,
                max_queued: self.max_queued,
                max_payload: self.max_payload,
                max_topic: self.topic_template.max_len(
                    self.fleet.device_start + self.fleet.devices - 1,
                    MAX_DEVICE_ID,
                ),
            },
            schedule: self.schedule(),
            start_delay: self.start_delay,
            drain_timeout: self.drain_timeout,
            live_histograms: self.metrics.addr.is_some()
                || self.metrics.push.is_some()
                || self.hdr_log.is_some(),
            hold: None,
        }
    }
}

/// The client id template when `--client-id` is not given. A fleet preset's (`loadgen-{i}`)
/// gets a token of this process with a clean session (`loadgen-3fa9c1-{i}`): two copies of
/// one command would otherwise take each other's connections over, connection by connection,
/// which a fleet cannot tell from a broker closing connections. A persistent session keeps
/// the same ids on every start, so that a restart resumes its sessions; a single-device
/// preset keeps the seed's id (`1`), whose takeover is named.
pub fn default_client_id(preset_client_id: &str, clean_session: bool) -> String {
    if !clean_session || !preset_client_id.contains("{i}") {
        return preset_client_id.to_string();
    }
    static TOKEN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let token = TOKEN.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        (std::process::id().wrapping_mul(2_654_435_761) ^ nanos) & 0xff_ffff
    });
    preset_client_id.replacen("{i}", &format!("{token:06x}-{{i}}"), 1)
}

/// The device id, client id and topic templates. A single device keeps its names exactly as
/// given; in a fleet a name without `{i}` gets `_{i}` so that devices and connections differ.
fn templates(
    device_id: Option<String>,
    client_id: Option<String>,
    topic: &str,
    preset: &Preset,
    default_client: &str,
    devices: u64,
    connections: u64,
) -> Result<(Template, Template, Template), Error> {
    let usage = |e: mqtt_engine::template::TemplateError| Error::Usage(e.0);
    let parse = |s: &str, what: &str, n: u64| -> Result<Template, Error> {
        let t = Template::parse(s, false, what).map_err(usage)?;
        Ok(if n > 1 && !t.has_index() {
            t.with_index_suffix()
        } else {
            t
        })
    };
    let device = match device_id {
        Some(d) => parse(&d, "--device-id", devices)?,
        None => parse(preset.device_id, "--device-id", devices)?,
    };
    let client = match client_id {
        Some(c) => parse(&c, "--client-id", connections)?,
        None => parse(default_client, "--client-id", connections)?,
    };
    let topic = Template::parse(topic, true, "--topic").map_err(usage)?;
    if devices > 1 && !topic.has_device_id() && !topic.has_index() {
        return Err(Error::usage(format!(
            "--topic '{}' is the same for every device of the fleet; put {{device_id}} or {{i}} in it",
            crate::out::escape(&topic.to_string())
        )));
    }
    Ok((device, client, topic))
}

/// Checks a device id, so that an error names `--device-id` rather than the topic it goes
/// into.
pub fn check_device_id(device_id: &str, topic_template: &str) -> Result<(), Error> {
    if device_id.len() > MAX_DEVICE_ID {
        return Err(Error::usage(format!(
            "--device-id is {} bytes; use at most {MAX_DEVICE_ID}",
            device_id.len()
        )));
    }
    if topic_template.contains("{device_id}") {
        if let Err(e) = mqtt_tool::topic::check_characters(device_id) {
            return Err(Error::usage(format!(
                "--device-id '{}' {e}, and it goes into the topic; remove it",
                crate::out::escape(device_id)
            )));
        }
    }
    Ok(())
}

/// Checks a rendered topic: one topic to publish to, by MQTT's rules for topic names (the
/// check job-pub makes of each job's topic too): a broker closes the connection of a client
/// that publishes to a topic it forbids, which would read as a lost connection.
pub fn check_topic(topic: &str) -> Result<(), Error> {
    use mqtt_tool::topic::TopicError;
    mqtt_tool::topic::check_topic_name(topic).map_err(|e| {
        let change = match e {
            TopicError::Empty => "give a topic such as device_data/{device_id}",
            TopicError::TooLong(_) => "shorten it",
            TopicError::Reserved => "publish under another first level",
            TopicError::Wildcard(_) | TopicError::Forbidden(_) => "remove it",
        };
        Error::usage(format!(
            "--topic '{}' {e}; {change}",
            crate::out::escape(topic)
        ))
    })
}

/// Renders the topic template for one device and checks it (for one-off use and tests).
pub fn render_topic(template: &str, device_id: &str) -> Result<String, Error> {
    check_device_id(device_id, template)?;
    let t = Template::parse(template, true, "--topic").map_err(|e| Error::Usage(e.0))?;
    let topic = t.render(0, device_id);
    check_topic(&topic)?;
    Ok(topic)
}

/// Parses `--source-ip` values: addresses, or IPv4 ranges `127.0.0.1-127.0.0.8`.
pub fn parse_source_ips(values: &[String]) -> Result<Vec<IpAddr>, Error> {
    const MAX: u64 = 65_536;
    let mut out = Vec::new();
    for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
        let bad = || {
            Error::usage(format!(
                "--source-ip '{}' is not an address or a range such as 127.0.0.1-127.0.0.8",
                crate::out::escape(v)
            ))
        };
        match v.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a.trim().parse().map_err(|_| bad())?;
                let b: Ipv4Addr = b.trim().parse().map_err(|_| bad())?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || (b - a) as u64 >= MAX {
                    return Err(bad());
                }
                out.extend((a..=b).map(|n| IpAddr::V4(Ipv4Addr::from(n))));
            }
            None => out.push(v.parse().map_err(|_| bad())?),
        }
        if let Some(ip) = out.iter().find(|ip| !is_unicast(ip)) {
            return Err(Error::usage(format!(
                "--source-ip {ip} is a multicast, broadcast or unspecified address: a connection \
                 comes from one unicast address of this host (omit --source-ip for the default)"
            )));
        }
        if out.len() as u64 > MAX {
            return Err(Error::usage("--source-ip gives more than 65,536 addresses"));
        }
    }
    Ok(out)
}

/// Whether `ip` can be a TCP connection's own address.
fn is_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified()),
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified()),
    }
}

/// Refuses `--source-ip` addresses of a family the broker's addresses are not (an IPv6
/// source cannot reach an IPv4 broker): a usage error naming both, not a connect failure
/// per connection.
pub fn check_source_families(
    source_ips: &[IpAddr],
    broker_addrs: &[std::net::SocketAddr],
    broker: &str,
) -> Result<(), Error> {
    let Some(ip) = source_ips
        .iter()
        .find(|ip| !broker_addrs.iter().any(|a| a.is_ipv4() == ip.is_ipv4()))
    else {
        return Ok(());
    };
    let (mine, theirs) = if ip.is_ipv4() {
        ("IPv4", "IPv6")
    } else {
        ("IPv6", "IPv4")
    };
    Err(Error::usage(format!(
        "--source-ip {ip} is {mine} and broker {broker} has {theirs} addresses only ({}); give \
         {theirs} source addresses",
        broker_addrs
            .iter()
            .take(3)
            .map(|a| a.ip().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// The broker's addresses the source addresses can reach (all of them without
/// `--source-ip`): a family none of the sources has is left out.
pub fn reachable_from(
    source_ips: &[IpAddr],
    broker_addrs: Vec<std::net::SocketAddr>,
) -> Vec<std::net::SocketAddr> {
    if source_ips.is_empty() {
        return broker_addrs;
    }
    broker_addrs
        .into_iter()
        .filter(|a| source_ips.iter().any(|ip| ip.is_ipv4() == a.is_ipv4()))
        .collect()
}

/// The local ports one source address can use for connections (Linux's
/// ip_local_port_range), or a common default.
fn ephemeral_ports() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|n| n.parse::<u64>().ok());
            Some((it.next()??, it.next()??))
        })
        .map_or(28_232, |(lo, hi)| hi.saturating_sub(lo) + 1)
}

/// Refuses a fleet the process cannot hold: more connections than open files allowed (the
/// soft limit is raised to the hard one first), or than one broker port can take from the
/// source addresses.
fn check_limits(
    connections: u64,
    workers: u64,
    source_ips: &[IpAddr],
    broker: &mqtt_tool::connect::BrokerChoice,
) -> Result<(), Error> {
    let files = mqtt_engine::sys::raise_nofile_limit();
    // An embedded broker holds the other end of every connection in this same process.
    let embedded = !matches!(broker, mqtt_tool::connect::BrokerChoice::Remote { .. });
    let per_conn = if embedded && connections > 1 { 2 } else { 1 };
    let besides = FILES_BESIDES_CONNECTIONS + workers * FILES_PER_WORKER;
    let needed = connections * per_conn + besides;
    if needed > files {
        let fit = files.saturating_sub(besides) / per_conn;
        return Err(Error::usage(format!(
            "--connections {connections} needs {needed} open files but this process may open {files} \
             (RLIMIT_NOFILE, raised to its hard limit); use at most {fit} connections per process \
             and run the rest as shards (--device-start){}",
            if embedded {
                ", against an external broker (the embedded one holds a file per connection too)"
            } else {
                ""
            }
        )));
    }
    if connections > 1 {
        mqtt_engine::sys::reserve_descriptors(needed);
    }
    let ports = ephemeral_ports();
    let addresses = source_ips.len().max(1) as u64;
    if connections > ports * addresses {
        return Err(Error::usage(format!(
            "--connections {connections} needs more local ports than {addresses} source address{} \
             can give one broker ({ports} each); add addresses with --source-ip 127.0.0.1-127.0.0.{}",
            if addresses == 1 { "" } else { "es" },
            connections.div_ceil(ports).min(254)
        )));
    }
    Ok(())
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

    #[test]
    fn topics_mqtt_forbids_are_usage_errors_naming_the_flag_and_the_character() {
        let usage = |r: Result<String, Error>| match r {
            Err(Error::Usage(m)) => m,
            other => panic!("not a usage error: {other:?}"),
        };
        let m = usage(render_topic("job/\u{1}/{device_id}", "d1"));
        assert!(m.starts_with("--topic 'job/\\x01/d1'"), "{m}");
        assert!(m.contains("control character \\x01 (U+0001)"), "{m}");
        let m = usage(render_topic("$SYS/{device_id}", "d1"));
        assert!(m.starts_with("--topic '$SYS/d1' starts with '$'"), "{m}");
        let m = usage(render_topic("d/\u{85}", "d1"));
        assert!(m.contains("\\u{85} (U+0085)"), "{m}");
        // In the device id, the device id is named.
        let m = usage(render_topic("d/{device_id}", "dev\u{7f}ice"));
        assert!(m.starts_with("--device-id 'dev\\x7fice' holds"), "{m}");
        let m = usage(render_topic("d/{device_id}", "a+b"));
        assert!(m.contains("wildcard '+'"), "{m}");
        // Outside the topic, a device id may hold anything printable.
        assert_eq!(render_topic("d/x", "a+b").unwrap(), "d/x");
    }

    #[test]
    fn source_addresses_and_ranges_parse() {
        for bad in ["224.0.0.1", "255.255.255.255", "0.0.0.0", "ff02::1", "::"] {
            let e = parse_source_ips(&[bad.into()]).unwrap_err().to_string();
            assert!(
                e.contains("multicast, broadcast or unspecified"),
                "{bad}: {e}"
            );
        }
        let v4: Vec<std::net::SocketAddr> = vec!["127.0.0.1:1883".parse().unwrap()];
        let e = check_source_families(&["::1".parse().unwrap()], &v4, "localhost:1883")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("IPv6 and broker localhost:1883 has IPv4 addresses only"),
            "{e}"
        );
        assert!(check_source_families(&["127.0.0.2".parse().unwrap()], &v4, "b").is_ok());
        // localhost with both families, IPv4 sources: its IPv4 address only.
        let both: Vec<std::net::SocketAddr> = vec![
            "[::1]:1883".parse().unwrap(),
            "127.0.0.1:1883".parse().unwrap(),
        ];
        assert_eq!(
            reachable_from(&["127.0.0.2".parse().unwrap()], both.clone()),
            vec!["127.0.0.1:1883".parse::<std::net::SocketAddr>().unwrap()]
        );
        assert_eq!(reachable_from(&[], both.clone()), both);
        let ips = parse_source_ips(&["127.0.0.1-127.0.0.3".into(), "::1".into()]).unwrap();
        assert_eq!(ips.len(), 4);
        assert_eq!(ips[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        for bad in [
            "127.0.0.3-127.0.0.1",
            "x",
            "10.0.0.0-10.2.0.0",
            "1.2.3.4-::1",
        ] {
            assert!(parse_source_ips(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
