//! mqtt-engine: many MQTT connections on a few worker threads, each connection small enough
//! to count in bytes.
//!
//! ```text
//! FleetSettings --> Fleet::start --> W workers (threads), each with its share of the
//!                                    connections and their devices:
//!   schedule (the fleet's absolute grid) --> Producer (a tool's payloads and topics)
//!     --> outbox (encoded in place; counted as sent when written) --> socket (mio, epoll)
//!   socket --> packets (CONNACK, PUBACK, PUBREC, PUBCOMP, PINGRESP) --> inflight (QoS 1, 2)
//!          --> stats
//! subscriber fleets (Fleet::start_subscribers): SUBSCRIBE after the CONNACK, then
//!   socket --> PUBLISH --> Consumer (a tool's verifier), PUBACK / PUBREC / PUBCOMP back
//! Fleet::join --> FleetResult (stats merged with +=)
//! ```
//!
//! A fleet with no devices and [`settings::HoldSettings`] holds its connections instead
//! (`loadgen conn`): held with PINGREQ, churned or stormed by the worker's `churn` stage.
//!
//! - [`settings`]: the engine's typed settings; [`template`]: names with `{i}` in them.
//! - [`schedule`]: when each device's messages are due; [`pacer`]: a worker's cursor over
//!   it; [`worker`]: the event loop and its stages;
//!   [`conn`]: a connection's state; [`outbox`]: the hand-over from producer to socket;
//!   [`inflight`]: the QoS 1 and 2 window; [`packets`]: MQTT on the wire (`mqtt-wire`).
//! - [`stats`]: counters and histograms, merged; [`error`]: failures as kinds;
//!   [`takeover`]: two clients with one client id.
//! - [`sys`]: sockets, timers, limits and clocks of the operating system.
//!
//! rumqttc's client was measured for this (10,000 connections publishing once a second on
//! one process): about 46 KB of memory per connection (a 100-event queue, two 8 KiB buffers,
//! an 8 KiB QoS 2 bitset, the inflight vector, a task) and one task, channel and timer per
//! connection. Here a connection is a few hundred bytes and the worker's event loop does the
//! rest; `mqtt-wire` encodes the packets (CONNECT with rumqttc's codec) and frames what the
//! broker sends.

pub mod conn;
pub mod error;
pub mod fleet;
pub mod inflight;
pub mod outbox;
pub mod pacer;
pub mod schedule;
pub mod settings;
pub mod stats;
pub mod sys;
pub mod takeover;
pub mod template;
pub mod tls;
pub mod worker;

/// MQTT on the wire (packets, framing, `Malformed`): `mqtt-wire`'s, under the engine's old
/// path.
pub use mqtt_wire::packets;

pub use fleet::{Fleet, FleetHandle, FleetResult};
pub use settings::{
    ConnSettings, FleetSettings, PublishSettings, Qos, RampSettings, ReconnectSettings,
    SubscribeSettings,
};
pub use worker::{Consumer, Producer, SubStats, MAX_LOSSES_WITHOUT_PROGRESS};
