//! Connect failures and lost connections in words: what the error line and the report say
//! ([`ConnectFailure`], [`Lost`]). Sessions themselves live in `session` (one connection)
//! and `mqtt_engine` (fleets).

use std::time::Duration;

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

pub use mqtt_engine::error::{BrokerLimit, ConnackCode, ConnectFailure, Lost, LostKind, Takeover};
pub use mqtt_engine::takeover::{soon as takeover_soon, Back, IdWatch, Loss};

/// One line on a lost connection: what happened, and the likely causes where they fit.
/// `broker_up` says whether the broker accepted a new TCP connection right after the loss
/// (`None`: not probed).
pub fn describe_lost(
    lost: &Lost,
    client_id: &str,
    broker: &str,
    broker_up: Option<bool>,
) -> String {
    let after = format!("{:.1} s", lost.after.as_secs_f64());
    let what = match &lost.kind {
        LostKind::Closed => format!("the broker closed the connection after {after}"),
        LostKind::Io(std::io::ErrorKind::ConnectionReset, _) => {
            format!("the broker reset the connection after {after}")
        }
        LostKind::Io(_, e) => format!("the connection failed after {after}: {e}"),
        LostKind::KeepAlive => {
            return format!(
                "the broker stopped answering: no reply to a keep-alive ping, {after} into the run"
            )
        }
        LostKind::WriteStalled => {
            return format!(
                "the broker stopped reading: writes made no progress for a keep-alive interval, {after} into the run"
            )
        }
        LostKind::TakenOver => return taken_over(client_id, Takeover::Said),
        LostKind::Other(e) => return format!("connection to the broker failed: {e}"),
    };
    if lost.takeover == Some(Takeover::Likely) && broker_up != Some(false) && !lost.early() {
        return format!("{what}; {}", taken_over(client_id, Takeover::Likely));
    }
    let cause = match broker_up {
        Some(false) => format!(
            "; nothing accepts connections at {broker} any more: the broker stopped or restarted"
        ),
        // Early, with messages large enough to meet a broker's size limit (those start at a
        // few KiB: AWS IoT 128 KiB, HiveMQ Cloud 256 KiB, an operator's message_size_limit).
        Some(true) if lost.early() && lost.largest_message as usize >= LIKELY_SIZE_LIMIT => {
            format!(
                "; it dropped the first messages ({} bytes): a packet size limit on the broker \
                 (Mosquitto: max_packet_size, message_size_limit) is the likely cause; lower --batch",
                crate::format::fmt_int(lost.largest_message as u64)
            )
        }
        // Early, with small messages: not their size, but what they are or where they go.
        Some(true) if lost.early() => format!(
            "; it dropped the first messages ({} bytes, too small for a size limit): the broker \
             refuses their topic (a reserved or invalid name), an ACL or a policy forbids them, \
             or it refuses this client; its log says which",
            crate::format::fmt_int(lost.largest_message as u64)
        ),
        Some(true) => format!(
            "; the broker still accepts connections: another client may have connected with \
             client id '{}' (a broker keeps one connection per client id), or a broker policy closed it",
            crate::out::escape(client_id)
        ),
        None => String::new(),
    };
    format!("{what}{cause}")
}

/// The line that names a takeover: another client connected with `client_id`, and the
/// broker, which keeps one connection per client id, closed ours.
pub fn taken_over(client_id: &str, how: Takeover) -> String {
    let id = crate::out::escape(client_id);
    match how {
        Takeover::Said => format!(
            "taken over: another client connected with client id '{id}' (the broker's DISCONNECT 0x8E)"
        ),
        Takeover::Likely => format!(
            "likely taken over: the broker closed a healthy connection of client id '{id}', as \
             brokers do when another client connects with the same id"
        ),
    }
}

/// The line that names a client id two clients keep taking from each other.
pub fn client_id_in_use(client_id: &str) -> String {
    format!(
        "client id '{}' is in use by another client (two copies running? give each its own --client-id)",
        crate::out::escape(client_id)
    )
}

/// Why a connect attempt failed, as the error line says it.
pub fn describe_failure(f: &ConnectFailure, connect_timeout: Duration) -> String {
    match f {
        ConnectFailure::Refused => "connection refused".into(),
        ConnectFailure::Timeout => format!(
            "no CONNACK within {} (--connect-timeout)",
            humantime::format_duration(round_ms(connect_timeout))
        ),
        ConnectFailure::ClosedBeforeConnack => {
            "the connection closed before CONNACK (a broker at its connection limit, or not an MQTT broker?)"
                .into()
        }
        ConnectFailure::Connack(code) => connack_refusal(*code),
        ConnectFailure::NotMqtt => {
            "it answered CONNECT with something other than a CONNACK (is it an MQTT broker?)".into()
        }
        ConnectFailure::Io(kind) => std::io::Error::from(*kind).to_string(),
        ConnectFailure::Tls(e) => format!("the TLS handshake failed: {e}"),
        ConnectFailure::BrokerProtocol(what) => {
            format!("the broker's CONNACK breaks the MQTT 5 protocol ({what})")
        }
        ConnectFailure::Limit(BrokerLimit::QosZeroOnly) => {
            "the broker takes QoS 0 only (MQTT 5 Maximum QoS 0); use --qos 0".into()
        }
        ConnectFailure::Limit(BrokerLimit::QosOneMax) => {
            "the broker takes QoS 0 and 1 only (MQTT 5 Maximum QoS 1); use --qos 1".into()
        }
        ConnectFailure::Limit(BrokerLimit::PacketSize { limit, largest }) => format!(
            "the broker takes packets of at most {} bytes (MQTT 5 Maximum Packet Size) and a \
             message of this run takes up to {}; lower --batch",
            crate::format::fmt_int(*limit as u64),
            crate::format::fmt_int(*largest)
        ),
    }
}

/// A short name of a failure, for counts by reason.
pub fn failure_key(f: &ConnectFailure) -> String {
    match f {
        ConnectFailure::Refused => "refused".into(),
        ConnectFailure::Timeout => "timeout".into(),
        ConnectFailure::ClosedBeforeConnack => "closed before CONNACK".into(),
        ConnectFailure::Connack(code) => format!("CONNACK: {}", connack_name(*code)),
        ConnectFailure::NotMqtt => "not MQTT".into(),
        ConnectFailure::Io(kind) => format!("io: {kind:?}"),
        ConnectFailure::Tls(_) => "TLS".into(),
        ConnectFailure::BrokerProtocol(_) => "CONNACK: protocol error".into(),
        ConnectFailure::Limit(BrokerLimit::QosZeroOnly) => "broker limit: QoS 0 only".into(),
        ConnectFailure::Limit(BrokerLimit::QosOneMax) => "broker limit: QoS 1 at most".into(),
        ConnectFailure::Limit(BrokerLimit::PacketSize { .. }) => {
            "broker limit: maximum packet size".into()
        }
    }
}

fn connack_name(code: ConnackCode) -> String {
    match code {
        ConnackCode::Protocol(_) => "protocol version".into(),
        ConnackCode::BadClientId => "client id rejected".into(),
        ConnackCode::Unavailable => "server unavailable".into(),
        ConnackCode::BadCredentials => "bad user name or password".into(),
        ConnackCode::NotAuthorized => "not authorized".into(),
        ConnackCode::RateExceeded => "connection rate exceeded".into(),
        ConnackCode::QuotaExceeded => "quota exceeded".into(),
        ConnackCode::Other(n) => format!("code {n}"),
    }
}

fn connack_refusal(code: ConnackCode) -> String {
    match code {
        ConnackCode::BadCredentials => {
            "bad user name or password; check --username and LOADGEN_PASSWORD or --password-file"
                .into()
        }
        ConnackCode::NotAuthorized => "not authorized; check --username and the password".into(),
        ConnackCode::BadClientId => "client id rejected; choose another --client-id".into(),
        ConnackCode::Protocol(5) => {
            "the broker does not accept MQTT 5; use --mqtt-version 3.1.1".into()
        }
        ConnackCode::Protocol(_) => {
            "the broker does not accept MQTT 3.1.1; try --mqtt-version 5".into()
        }
        ConnackCode::Unavailable => {
            "the broker is unavailable for now (CONNACK: server unavailable or busy)".into()
        }
        ConnackCode::RateExceeded => {
            "the broker refuses connections this fast for now (CONNACK 0x9F); lower --connect-rate"
                .into()
        }
        ConnackCode::QuotaExceeded => {
            "a quota of the broker's is exhausted for now (CONNACK 0x97)".into()
        }
        ConnackCode::Other(n) => format!(
            "refused with CONNACK code {n} (0x{n:02x}: {})",
            mqtt_engine::error::reason_name(n)
        ),
    }
}

/// A blocking TCP connection to `host:port` with `timeout` on connecting and on each read
/// and write; `None` when there is none.
pub fn connect_with_timeout(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Option<std::net::TcpStream> {
    use std::net::{TcpStream, ToSocketAddrs};
    let addrs = (host, port).to_socket_addrs().ok()?;
    for a in addrs.take(4) {
        if let Ok(s) = TcpStream::connect_timeout(&a, timeout) {
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
            return Some(s);
        }
    }
    None
}

/// Whether what listens at `host:port` answers a plain MQTT 3.1.1 CONNECT with a CONNACK
/// (within `timeout`): tells an `mqtts://` URL pointed at a plain port.
pub fn speaks_plain_mqtt(host: &str, port: u16, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let Some(mut s) = connect_with_timeout(host, port, timeout) else {
        return false;
    };
    // CONNECT, MQTT 3.1.1, clean session, keep-alive 10 s, client id "loadgen-probe".
    let id = b"loadgen-probe";
    let mut p = vec![0x10, (10 + 2 + id.len()) as u8];
    p.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    p.extend_from_slice(&(id.len() as u16).to_be_bytes());
    p.extend_from_slice(id);
    let mut got = [0u8; 4];
    let answered = s.write_all(&p).is_ok() && s.read_exact(&mut got).is_ok();
    let _ = s.write_all(&[0xE0, 0x00]); // DISCONNECT
    answered && got[0] == 0x20 && got[1] == 0x02
}

/// When a broker could not be connected to in a way a scheme mix-up explains (closed or
/// reset before CONNACK, an answer that is not MQTT, a TLS failure), what to change if it
/// is one: probes `host:port` once with the other scheme.
pub fn scheme_hint(f: &ConnectFailure, host: &str, port: u16, tls: bool) -> Option<String> {
    let suspicious = matches!(
        f,
        ConnectFailure::ClosedBeforeConnack | ConnectFailure::NotMqtt | ConnectFailure::Tls(_)
    );
    if !suspicious {
        return None;
    }
    let timeout = Duration::from_secs(2);
    if tls && speaks_plain_mqtt(host, port, timeout) {
        Some(format!(
            "it speaks plain MQTT there, not TLS: use mqtt://{host}:{port}"
        ))
    } else if !tls && crate::tls::answers_tls(host, port, timeout) {
        Some(format!(
            "it speaks TLS there: use mqtts://{host}:{port} (with --ca-file if its issuer is your own)"
        ))
    } else {
        None
    }
}

/// Payload bytes below which a message is taken to be too small to meet a broker's packet
/// size limit: an early close of smaller ones has another cause.
const LIKELY_SIZE_LIMIT: usize = 1024;

/// Whether something at `host:port` accepts a TCP connection within `timeout`.
pub fn accepts_connections(host: &str, port: u16, timeout: Duration) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, timeout).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(kind: LostKind, after: u64, acked_any: bool, first: Option<u64>) -> Lost {
        Lost {
            kind,
            after: Duration::from_millis(after),
            acked_any,
            first_write_after: first.map(Duration::from_millis),
            largest_message: 140_000,
            takeover: None,
        }
    }

    #[test]
    fn a_takeover_is_named_with_the_client_id_and_how_it_is_known() {
        let url = "mqtt://127.0.0.1:1";
        let said = describe_lost(
            &lost(LostKind::TakenOver, 900, true, Some(1)),
            "1",
            url,
            None,
        );
        assert_eq!(
            said,
            "taken over: another client connected with client id '1' (the broker's DISCONNECT 0x8E)"
        );
        let likely = Lost {
            takeover: Some(Takeover::Likely),
            ..lost(LostKind::Closed, 4_000, true, Some(1))
        };
        let text = describe_lost(&likely, "1", url, None);
        assert!(
            text.starts_with("the broker closed the connection after 4.0 s; likely taken over")
                && text.contains("client id '1'"),
            "{text}"
        );
        // A broker that went away took the connection with it: no takeover.
        let gone = describe_lost(&likely, "1", url, Some(false));
        assert!(!gone.contains("taken over"), "{gone}");
        assert_eq!(
            client_id_in_use("2"),
            "client id '2' is in use by another client (two copies running? give each its own --client-id)"
        );
    }

    #[test]
    fn a_loss_names_the_cause_that_fits() {
        let url = "mqtt://127.0.0.1:1";
        let gone = describe_lost(
            &lost(LostKind::Closed, 3_000, true, Some(10)),
            "1",
            url,
            Some(false),
        );
        assert!(gone.contains("closed the connection after 3.0 s"), "{gone}");
        assert!(
            gone.contains("stopped or restarted") && !gone.contains("packet size"),
            "{gone}"
        );

        let taken = describe_lost(
            &lost(LostKind::Closed, 5_000, true, Some(10)),
            "1",
            url,
            Some(true),
        );
        assert!(
            taken.contains("client id '1'") && !taken.contains("packet size"),
            "{taken}"
        );
        // QoS 0 acknowledges nothing: a loss well after the first write is not about size.
        let taken = describe_lost(
            &lost(LostKind::Closed, 1_500, false, Some(200)),
            "1",
            url,
            Some(true),
        );
        assert!(
            taken.contains("client id '1'") && !taken.contains("packet size"),
            "{taken}"
        );
        let unwritten = describe_lost(
            &lost(LostKind::Closed, 20, false, None),
            "1",
            url,
            Some(true),
        );
        assert!(unwritten.contains("packet size"), "{unwritten}");

        let reset = LostKind::Io(std::io::ErrorKind::ConnectionReset, "reset".into());
        let big = describe_lost(&lost(reset, 300, false, Some(250)), "1", url, Some(true));
        assert!(
            big.contains("reset the connection") && big.contains("140,000 bytes"),
            "{big}"
        );
        assert!(
            big.contains("packet size") && !big.contains("client id"),
            "{big}"
        );

        let unprobed = describe_lost(&lost(LostKind::Closed, 300, false, Some(5)), "1", url, None);
        assert_eq!(unprobed, "the broker closed the connection after 0.3 s");
        let ping = describe_lost(
            &lost(LostKind::KeepAlive, 61_000, true, Some(1)),
            "1",
            url,
            Some(true),
        );
        assert!(
            ping.contains("keep-alive") && !ping.contains("client id"),
            "{ping}"
        );
    }

    /// A broker that drops the first 117-byte messages (a `$SYS` or control-character topic,
    /// an ACL): not blamed on a size limit, which such a message cannot meet.
    #[test]
    fn an_early_close_of_small_messages_is_not_blamed_on_a_size_limit() {
        let small = Lost {
            largest_message: 117,
            ..lost(LostKind::Closed, 50, false, Some(10))
        };
        let text = describe_lost(&small, "1", "mqtt://127.0.0.1:1", Some(true));
        assert!(!text.contains("packet size limit"), "{text}");
        assert!(text.contains("refuses their topic"), "{text}");
        let large = lost(LostKind::Closed, 50, false, Some(10));
        let text = describe_lost(&large, "1", "mqtt://127.0.0.1:1", Some(true));
        assert!(text.contains("packet size limit"), "{text}");
    }
}
