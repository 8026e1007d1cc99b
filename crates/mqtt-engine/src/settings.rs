//! The engine's own small, typed settings: built once by a tool's plan, read by the hot path.
//! Nothing here knows the command line.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::schedule::Schedule;
use crate::template::Template;

/// The quality of service of every publish (the workspace's one type; 0, 1 and 2).
pub use mqtt_wire::Qos;

/// How each connection reaches the broker and introduces itself.
#[derive(Debug, Clone)]
pub struct ConnSettings {
    /// The broker's addresses, tried in turn by successive attempts.
    pub addrs: Vec<SocketAddr>,
    /// Local addresses spread over the connections, round robin (none: the kernel's choice).
    pub source_ips: Vec<IpAddr>,
    pub tcp_nodelay: bool,
    /// MQTT keep-alive (zero: off).
    pub keep_alive: Duration,
    /// How long TCP and CONNACK together may take.
    pub connect_timeout: Duration,
    pub clean_session: bool,
    /// User and password, the password in the clear only here.
    pub credentials: Option<(String, String)>,
    /// The client id of connection `i` (its index, see [`FleetSettings::client_index`]).
    pub client_id: Template,
    /// Largest packet accepted from the broker.
    pub max_packet_size: usize,
    /// `None`: MQTT 3.1.1.
    pub mqtt5: Option<Mqtt5>,
    /// `None`: plain TCP.
    pub tls: Option<TlsSettings>,
}

/// TLS for every connection: rustls's client configuration and the name to verify.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub config: std::sync::Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

/// What a connection says and adds under MQTT 5.
#[derive(Debug, Clone, Default)]
pub struct Mqtt5 {
    pub connect: crate::packets::ConnectV5,
    /// The properties of every PUBLISH, as [`crate::packets::publish_properties_v5`]
    /// encodes them.
    pub publish_properties: Vec<u8>,
}

/// How the fleet connects: the ramp and its retries.
#[derive(Debug, Clone)]
pub struct RampSettings {
    /// New connections per second over the whole fleet (`None`: as fast as possible).
    pub connect_rate: Option<f64>,
    /// CONNECTs awaiting their CONNACK at once, over the whole fleet.
    pub max_connecting: usize,
    /// Attempts after the first for a connection that failed transiently.
    pub connect_retries: u32,
    /// The first retry waits about this long (jittered), each later one twice as long...
    pub backoff_base: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
}

/// How a connection that was up comes back after it is lost.
#[derive(Debug, Clone)]
pub struct ReconnectSettings {
    /// The first reconnect waits about this long (jittered), each later one twice as long...
    pub backoff_min: Duration,
    /// ...up to this.
    pub backoff_max: Duration,
    /// A connection down this long is given up (bounds a run whose broker never returns).
    pub give_up_after: Duration,
    /// Points a device keeps while its connection is down (a paced schedule keeps running);
    /// older ones are dropped, counted, and their seqs skipped.
    pub offline_buffer: u64,
}

/// What every connection publishes and how much may wait.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    pub qos: Qos,
    /// The window of each connection at QoS 1 and 2 (a QoS 2 message holds its place
    /// until its PUBCOMP).
    pub max_inflight: u16,
    /// Messages a connection may have queued and unwritten before its devices wait.
    pub max_queued: usize,
    /// Upper bound of one message's payload.
    pub max_payload: usize,
    /// Upper bound of one topic.
    pub max_topic: usize,
}

/// What every connection of a subscriber fleet subscribes to (see
/// [`crate::Fleet::start_subscribers`]).
#[derive(Debug, Clone)]
pub struct SubscribeSettings {
    /// Topic filters, each a template: `{i}` is the subscriber's index.
    pub filters: Vec<Template>,
    /// The subscription's options: QoS, and MQTT 5's No Local, Retain As Published, Retain
    /// Handling.
    pub options: mqtt_wire::packets::SubOptions,
    /// `$share/{group}/` before every filter.
    pub share_group: Option<String>,
    /// The index of the fleet's first subscriber: subscriber `c` is `first_index + c` in
    /// its client id and filters.
    pub first_index: u64,
}

/// The whole fleet.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Devices in the fleet, and the index of the first (`--device-start`).
    pub devices: u64,
    pub device_start: u64,
    pub connections: u64,
    pub workers: usize,
    pub conn: ConnSettings,
    pub ramp: RampSettings,
    /// `None`: a lost connection stays lost (`--reconnect false`).
    pub reconnect: Option<ReconnectSettings>,
    pub publish: PublishSettings,
    pub schedule: Schedule,
    /// Generation starts this long after the first connection is up.
    pub start_delay: Duration,
    /// After generation: how long the last writes, acknowledgements and DISCONNECTs may take.
    pub drain_timeout: Duration,
    /// Hand each worker's histograms to [`crate::FleetHandle::live_histos`] about five times
    /// a second (for Prometheus and interval logs); off, the workers keep them to the end.
    pub live_histograms: bool,
    /// Held connections (`loadgen conn`): no devices; the connections are held, churned or
    /// stormed for a while after the ramp. `None`: a publishing fleet.
    pub hold: Option<HoldSettings>,
}

/// What a fleet of held connections does once every connection is up or given up.
#[derive(Debug, Clone)]
pub struct HoldSettings {
    /// How long the connections are held (PINGREQ as the keep-alive asks).
    pub duration: Duration,
    /// Disconnects (each followed by a reconnect) a second over the fleet, spread evenly,
    /// round robin over the connections.
    pub churn: Option<f64>,
    /// Every connection dropped at once, every this long...
    pub storm_every: Option<Duration>,
    /// ...at most this many times.
    pub storms: u32,
}

impl FleetSettings {
    /// The devices of connection `c` (fleet indexes, from 0), spread evenly.
    pub fn conn_devices(&self, c: u64) -> std::ops::Range<u64> {
        crate::schedule::spread(self.devices, self.connections, c)
    }

    /// The `{i}` of connection `c`'s client id: with one device per connection its device's
    /// index, in a gateway the index of its first device, with no devices its own index; so
    /// fleets of disjoint `--device-start` ranges never share a client id.
    pub fn client_index(&self, c: u64) -> u64 {
        if self.devices == 0 {
            // Held connections have no devices: their own index.
            return self.device_start + c;
        }
        self.device_start + self.conn_devices(c).start
    }

    /// The connections of worker `w`, spread evenly.
    pub fn worker_conns(&self, w: usize) -> std::ops::Range<u64> {
        crate::schedule::spread(self.connections, self.workers as u64, w as u64)
    }
}
