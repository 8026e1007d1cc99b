//! What can go wrong with a connection, as kinds rather than text: connecting again after a
//! loss, or retrying a failed connect, depends on telling transient failures (a reset, a
//! broker restarting, a full backlog) from fatal ones (bad credentials, not an MQTT server).
//! The tools turn these into sentences (`mqtt_tool::mqtt`).

use std::io;
use std::time::Duration;

/// A CONNACK return code other than 0 (MQTT 3.1.1 section 3.2.2.3, MQTT 5 section 3.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnackCode {
    /// 1 (0x84): the broker does not speak the protocol version asked for (4: 3.1.1, 5).
    Protocol(u8),
    /// 2 (0x85): the client id is not allowed.
    BadClientId,
    /// 3 (0x88, 0x89): the broker is unavailable or busy, for now.
    Unavailable,
    /// 4 (0x86, 0x8C): bad user name or password.
    BadCredentials,
    /// 5 (0x87, 0x8A): not authorized.
    NotAuthorized,
    /// MQTT 5 0x9F: connecting too fast, for now.
    RateExceeded,
    /// MQTT 5 0x97: a quota of the broker's is exhausted, for now.
    QuotaExceeded,
    /// Any other code.
    Other(u8),
}

impl ConnackCode {
    /// A 3.1.1 CONNACK return code.
    pub fn from_code(code: u8) -> ConnackCode {
        match code {
            1 => ConnackCode::Protocol(4),
            2 => ConnackCode::BadClientId,
            3 => ConnackCode::Unavailable,
            4 => ConnackCode::BadCredentials,
            5 => ConnackCode::NotAuthorized,
            other => ConnackCode::Other(other),
        }
    }

    /// An MQTT 5 CONNACK reason code (0x80 and up refuse).
    pub fn from_v5_code(code: u8) -> ConnackCode {
        match code {
            // A 3.1.1 broker answers an MQTT 5 CONNECT with its own codes: 1 says it does
            // not speak 5.
            1 | 0x84 => ConnackCode::Protocol(5),
            2..=5 => ConnackCode::from_code(code),
            0x85 => ConnackCode::BadClientId,
            0x88 | 0x89 => ConnackCode::Unavailable,
            0x86 | 0x8C => ConnackCode::BadCredentials,
            0x87 | 0x8A => ConnackCode::NotAuthorized,
            0x97 => ConnackCode::QuotaExceeded,
            0x9F => ConnackCode::RateExceeded,
            other => ConnackCode::Other(other),
        }
    }

    /// Whether the broker refuses only for now (unavailable, busy, too fast, over a quota):
    /// worth retrying, and no refusal of this client for good.
    pub fn is_for_now(self) -> bool {
        matches!(
            self,
            ConnackCode::Unavailable | ConnackCode::RateExceeded | ConnackCode::QuotaExceeded
        )
    }
}

/// The name of an MQTT 5 reason code of a PUBACK or DISCONNECT (section 2.4).
pub fn reason_name(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0x10 => "no matching subscribers",
        0x80 => "unspecified error",
        0x81 => "malformed packet",
        0x82 => "protocol error",
        0x83 => "implementation specific error",
        0x87 => "not authorized",
        0x89 => "server busy",
        0x8B => "server shutting down",
        0x8D => "keep alive timeout",
        0x8E => "session taken over",
        0x90 => "topic name invalid",
        0x91 => "packet identifier in use",
        0x93 => "receive maximum exceeded",
        0x95 => "packet too large",
        0x96 => "message rate too high",
        0x97 => "quota exceeded",
        0x98 => "administrative action",
        0x99 => "payload format invalid",
        0x9A => "retain not supported",
        0x9B => "QoS not supported",
        0x9C => "use another server",
        0x9D => "server moved",
        0x9E => "shared subscriptions not supported",
        0x9F => "connection rate exceeded",
        _ => "unknown reason",
    }
}

/// MQTT 5 reason 0x8E: another client connected with this client id.
pub const SESSION_TAKEN_OVER: u8 = 0x8E;

/// Whether a DISCONNECT with `reason` refuses the packet that provoked it (too large, a
/// topic or payload or QoS it does not take), rather than the connection as a whole.
pub fn refuses_a_packet(reason: u8) -> bool {
    matches!(reason, 0x90 | 0x95 | 0x99 | 0x9A | 0x9B)
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectFailure {
    /// The TCP connection was refused: nothing listens there, or its backlog is full.
    Refused,
    /// No CONNACK (or no TCP connection) within the connect timeout.
    Timeout,
    /// The connection closed before the CONNACK: a broker at its connection limit, a policy.
    ClosedBeforeConnack,
    /// The broker answered CONNECT with a refusal.
    Connack(ConnackCode),
    /// What answered is not an MQTT broker: an unexpected or malformed reply.
    NotMqtt,
    /// Another socket error: unreachable network, no local port left, DNS.
    Io(io::ErrorKind),
    /// The TLS handshake failed (a certificate not trusted, a name that does not match).
    Tls(String),
    /// The broker's CONNACK breaks the protocol (MQTT 5: Receive Maximum 0, ...).
    BrokerProtocol(&'static str),
    /// The broker cannot take what this run sends (its MQTT 5 CONNACK limits).
    Limit(BrokerLimit),
}

/// What an MQTT 5 broker's CONNACK rules out for this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokerLimit {
    /// Maximum QoS 0, and the run publishes at QoS 1 or 2.
    QosZeroOnly,
    /// Maximum QoS 1, and the run publishes at QoS 2.
    QosOneMax,
    /// Maximum Packet Size `limit`, and the run's largest PUBLISH takes `largest` bytes.
    PacketSize { limit: u32, largest: u64 },
}

impl ConnectFailure {
    /// Whether trying again cannot help: the broker said no to these credentials or this
    /// client, or it is not an MQTT broker. A fleet must not retry those in a storm.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ConnectFailure::NotMqtt
                | ConnectFailure::Tls(_)
                | ConnectFailure::BrokerProtocol(_)
                | ConnectFailure::Limit(_)
                | ConnectFailure::Connack(
                    ConnackCode::Protocol(_)
                        | ConnackCode::BadClientId
                        | ConnackCode::BadCredentials
                        | ConnackCode::NotAuthorized
                )
        )
    }

    /// Whether the broker refused this client for good (a CONNACK code that is not "for
    /// now"): exit code 4 rather than 3.
    pub fn is_refusal(&self) -> bool {
        match self {
            ConnectFailure::Connack(c) => !c.is_for_now(),
            ConnectFailure::Limit(_) => true,
            _ => false,
        }
    }

    pub fn of_io(e: &io::Error) -> ConnectFailure {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            io::ErrorKind::TimedOut => ConnectFailure::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => ConnectFailure::ClosedBeforeConnack,
            kind => ConnectFailure::Io(kind),
        }
    }
}

/// How a connection that was up got lost, with what the run knew at that moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Lost {
    pub kind: LostKind,
    /// From CONNACK to the loss.
    pub after: Duration,
    /// Whether any PUBACK arrived before.
    pub acked_any: bool,
    /// When the first publish was written, after CONNACK.
    pub first_write_after: Option<Duration>,
    /// Payload bytes of the largest message written or about to be written.
    pub largest_message: u32,
    /// Whether another client with the same client id took the connection over.
    pub takeover: Option<Takeover>,
}

/// What ended a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostKind {
    /// The broker closed the TCP connection.
    Closed,
    /// The connection was reset, or another socket error.
    Io(io::ErrorKind, String),
    /// No PINGRESP came back within the keep-alive interval.
    KeepAlive,
    /// Writes did not progress within the keep-alive interval: the broker stopped reading.
    WriteStalled,
    /// MQTT 5: the broker's DISCONNECT 0x8E (session taken over): another client connected
    /// with this client id.
    TakenOver,
    /// Anything else: a protocol error, an internal failure.
    Other(String),
}

/// Why a loss is taken for a takeover: another client connected with the same client id, and
/// a broker keeps one connection per client id (MQTT 3.1.1 section 3.1.4, MQTT 5 3.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// MQTT 5: the broker said so (DISCONNECT 0x8E).
    Said,
    /// The broker only closed the socket (as MQTT 3.1.1 brokers do, and MQTT 5 brokers that
    /// skip the DISCONNECT): it closed a connection that was up and well, and its client id
    /// is the same in every copy of the run (one connection).
    Likely,
}

impl LostKind {
    pub fn of_io(e: &io::Error) -> LostKind {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => LostKind::Closed,
            kind => LostKind::Io(kind, e.to_string()),
        }
    }
}

impl Lost {
    pub fn other(reason: String) -> Lost {
        Lost {
            kind: LostKind::Other(reason),
            after: Duration::ZERO,
            acked_any: false,
            first_write_after: None,
            largest_message: 0,
            takeover: None,
        }
    }

    /// Whether the loss came with the first messages, before the broker confirmed any: the
    /// sign of a message the broker will not take (it drops the connection as soon as it
    /// reads the header, within milliseconds).
    pub fn early(&self) -> bool {
        // No message made yet: none of ours can have been what the broker refused. (One
        // made and written only in part can: a broker closes on a packet too large.)
        !self.acked_any
            && self.largest_message > 0
            && self.first_write_after.map_or(true, |first| {
                self.after.saturating_sub(first) < Duration::from_millis(200)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_credentials_and_non_brokers_are_fatal_the_rest_transient() {
        assert!(ConnectFailure::Connack(ConnackCode::BadCredentials).is_fatal());
        assert!(ConnectFailure::NotMqtt.is_fatal());
        assert!(!ConnectFailure::Connack(ConnackCode::Unavailable).is_fatal());
        assert!(!ConnectFailure::Refused.is_fatal());
        assert!(!ConnectFailure::ClosedBeforeConnack.is_fatal());
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(
            ConnectFailure::of_io(&reset),
            ConnectFailure::ClosedBeforeConnack
        );
        assert_eq!(ConnackCode::from_code(4), ConnackCode::BadCredentials);
    }

    #[test]
    fn a_broker_unavailable_for_now_is_no_refusal_for_good() {
        // Exit 3 (unreachable for now), not 4 (refused): 3.1.1 code 3, MQTT 5 0x88, 0x89,
        // 0x97 and 0x9F.
        for f in [
            ConnackCode::from_code(3),
            ConnackCode::from_v5_code(0x88),
            ConnackCode::from_v5_code(0x89),
            ConnackCode::from_v5_code(0x97),
            ConnackCode::from_v5_code(0x9F),
        ] {
            let f = ConnectFailure::Connack(f);
            assert!(!f.is_refusal() && !f.is_fatal(), "{f:?}");
        }
        for f in [
            ConnackCode::from_code(4),
            ConnackCode::from_v5_code(0x87),
            ConnackCode::from_v5_code(0x85),
        ] {
            assert!(ConnectFailure::Connack(f).is_refusal(), "{f:?}");
        }
        assert_eq!(reason_name(0x9F), "connection rate exceeded");
        // A 3.1.1 broker answers an MQTT 5 CONNECT with code 1: it does not speak 5.
        assert_eq!(ConnackCode::from_v5_code(1), ConnackCode::Protocol(5));
        assert_eq!(ConnackCode::from_code(1), ConnackCode::Protocol(4));
    }
}
