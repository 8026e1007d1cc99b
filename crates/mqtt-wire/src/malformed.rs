//! Why bytes from a peer are not MQTT ([`Malformed`]), and why a packet cannot be encoded
//! ([`EncodeError`]). Each variant is a kind a caller can count (`kind()`); each displays as
//! one line, bounded: no peer bytes are echoed beyond a number or a flag.

use crate::qos::QosError;

/// Why the bytes from the peer are not MQTT (or not MQTT the protocol allows here).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A frame longer than the connection takes (its maximum packet size).
    #[error("a packet of {len} bytes, over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// A remaining length (or a property length) that does not end within 4 bytes.
    #[error("a remaining length longer than 4 bytes")]
    RemainingLength,
    /// Packet type 0 (or 15 under MQTT 3.1.1).
    #[error("a packet of reserved type {0}")]
    ReservedType(u8),
    /// Fixed-header flags the packet type does not allow.
    #[error("a {packet} with fixed-header flags {flags:#06b}, which MQTT forbids")]
    Flags { packet: &'static str, flags: u8 },
    /// A PUBLISH whose QoS bits are 3.
    #[error("a PUBLISH whose QoS bits are 3")]
    PublishQos(#[source] QosError),
    /// A packet shorter than what it says it holds.
    #[error("{0} cut short")]
    Short(&'static str),
    /// MQTT 5 properties that do not parse.
    #[error("malformed properties in {0}")]
    Properties(&'static str),
    /// Well-formed, but not what the protocol allows here.
    #[error("{0} (a protocol error)")]
    Protocol(String),
}

impl Malformed {
    /// A short name for the kind, for counters and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Malformed::TooLarge { .. } => "too_large",
            Malformed::RemainingLength => "remaining_length",
            Malformed::ReservedType(_) => "reserved_type",
            Malformed::Flags { .. } => "flags",
            Malformed::PublishQos(_) => "publish_qos",
            Malformed::Short(_) => "short",
            Malformed::Properties(_) => "properties",
            Malformed::Protocol(_) => "protocol",
        }
    }
}

/// Why a packet cannot be encoded (what the caller asked for does not fit MQTT).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("a SUBSCRIBE needs at least one topic filter")]
    NoFilters,
    #[error("an empty topic filter")]
    EmptyFilter,
    #[error("a topic filter of {0} bytes, over MQTT's 65535")]
    FilterTooLong(usize),
    /// MQTT 5 section 3.8.3.1: No Local on a shared subscription is a protocol error.
    #[error("No Local on a shared subscription ($share/...), which MQTT 5 forbids")]
    NoLocalOnShared,
    #[error("a subscription identifier of {0}, outside 1..=268435455")]
    SubscriptionId(u32),
    #[error("a packet of {0} bytes, over MQTT's 268435455")]
    TooLarge(usize),
}
