//! mqtt-wire: MQTT 3.1.1 and 5 as bytes, at the bottom of the workspace. No sockets, no
//! runtime: what a connection reads goes in as a slice, what it writes comes out as bytes.
//!
//! ```text
//! socket bytes --> frame::Framer (fixed header, size limit, flags) --> packets::decode
//!              --> Packet (topic and payload borrowed from the frame) --> the caller
//! the caller --> packets::{append_publish, ack, subscribe, connect, ..} --> bytes to write
//! per packet id: qos2 (the QoS 2 exchanges of both sides); per connection: backoff
//! ```
//!
//! - [`frame`]: where one packet ends and the next begins, and a read buffer that hands
//!   whole frames out in place ([`frame::Framer`]).
//! - [`packets`]: encoding and decoding (rumqttc's `mqttbytes` only for CONNECT).
//! - [`malformed`]: why bytes from a peer are not MQTT ([`Malformed`]), and why a packet
//!   cannot be encoded ([`EncodeError`]).
//! - [`qos`]: the one quality-of-service type; [`qos2`]: PUBREC/PUBREL/PUBCOMP as states.
//! - [`backoff`]: the reconnect delays, exponential and jittered.

pub mod backoff;
pub mod frame;
pub mod malformed;
pub mod packets;
pub mod qos;
pub mod qos2;

pub use backoff::Backoff;
pub use frame::{FixedHeader, Framer, Partial};
pub use malformed::{EncodeError, Malformed};
pub use packets::Packet;
pub use qos::{Qos, QosError};
