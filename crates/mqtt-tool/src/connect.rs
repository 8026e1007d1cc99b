//! The connection a tool asks for, validated: which broker ([`BrokerChoice`]), as whom
//! (client id, user and a [`Secret`] password), with which limits and timeouts. Every tool
//! that talks MQTT builds its [`ConnectPlan`] with [`connect_plan`].

use std::fmt;
use std::time::Duration;

use crate::args::ConnectionArgs;
use crate::error::Error;

/// MQTT's own limit on a packet's size (the remaining-length field's maximum plus header).
pub const MQTT_MAX_PACKET: u64 = 268_435_455;
/// The environment variable that holds the broker password.
pub const PASSWORD_ENV: &str = "LOADGEN_PASSWORD";
/// The environment variable that changes the address `--broker auto` probes.
pub const AUTO_PROBE_ENV: &str = "LOADGEN_AUTO_BROKER";

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    /// Probe `host:port`; when nothing accepts connections there, start the embedded broker.
    Auto { host: String, port: u16 },
    /// Always start the embedded broker.
    Embedded,
    /// This broker, or fail.
    Remote { host: String, port: u16 },
}

/// A password that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Connection settings, shared with every tool that talks MQTT.
#[derive(Debug, Clone)]
pub struct ConnectPlan {
    pub broker: BrokerChoice,
    pub client_id: String,
    pub credentials: Option<(String, Option<Secret>)>,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub tcp_nodelay: bool,
    /// Limit for packets in both directions.
    pub max_packet_size: usize,
    /// Port of the embedded broker (0 = any free port).
    pub embedded_port: u16,
    /// How long the embedded broker outlives the run.
    pub embedded_linger: Duration,
    pub mqtt5: bool,
    /// `mqtts://`: TLS with this configuration.
    pub tls: Option<crate::tls::TlsPlan>,
}

/// Validates connection flags. `packet_needed` is the largest packet the tool will send,
/// and `cause` names the flag that makes it that large, for the error message.
pub fn connect_plan(
    c: ConnectionArgs,
    default_client_id: &str,
    packet_needed: u64,
    cause: &str,
) -> Result<ConnectPlan, Error> {
    let broker = parse_broker(&c.broker)?;
    let tls = if broker_uses_tls(&c.broker) {
        if c.insecure {
            crate::errln!(
                "warning: --insecure: the broker's certificate is not verified; anyone between here and the broker can read and change this traffic"
            );
        }
        Some(crate::tls::client_config(
            c.ca_file.as_deref(),
            c.cert.as_deref(),
            c.key.as_deref(),
            c.insecure,
        )?)
    } else {
        if c.ca_file.is_some() || c.cert.is_some() || c.key.is_some() || c.insecure {
            return Err(Error::usage(
                "--ca-file, --cert, --key and --insecure are for TLS; use an mqtts://host:port broker",
            ));
        }
        None
    };
    if !c.keep_alive.is_zero() && c.keep_alive < Duration::from_secs(1) {
        return Err(Error::usage("--keep-alive must be 0 (off) or at least 1s"));
    }
    if c.keep_alive > Duration::from_secs(u16::MAX as u64) {
        return Err(Error::usage("--keep-alive must be at most 65535s"));
    }
    if c.connect_timeout < Duration::from_millis(10) {
        return Err(Error::usage("--connect-timeout must be at least 10ms"));
    }
    let max_packet_size = match c.max_packet_size {
        Some(limit) if limit < packet_needed => {
            return Err(Error::usage(format!(
                "{cause} makes messages of up to {packet_needed} bytes but --max-packet-size is {limit}; raise --max-packet-size or lower {cause_flag}",
                cause_flag = cause.split_whitespace().next().unwrap_or(cause)
            )))
        }
        Some(limit) if limit > MQTT_MAX_PACKET => {
            return Err(Error::usage(format!("--max-packet-size must be at most {MQTT_MAX_PACKET} (MQTT's limit)")))
        }
        Some(limit) => limit as usize,
        // Room for what we send, and at least 1 MiB for what we may receive.
        None => packet_needed.max(1 << 20) as usize,
    };
    let password = read_password(c.password_file.as_deref())?;
    let credentials = match (c.username, password) {
        (Some(u), p) => Some((u, p)),
        (None, Some(_)) => {
            return Err(Error::usage(format!(
                "a password is set ({PASSWORD_ENV} or --password-file) but no --username; add --username"
            )))
        }
        (None, None) => None,
    };
    if let Some((user, _)) = &credentials {
        check_mqtt_string(user, "--username")?;
    }
    let client_id = c.client_id.unwrap_or_else(|| default_client_id.to_string());
    check_mqtt_string(&client_id, "--client-id")?;
    Ok(ConnectPlan {
        broker,
        client_id,
        credentials,
        keep_alive: c.keep_alive,
        connect_timeout: c.connect_timeout,
        tcp_nodelay: c.tcp_nodelay,
        max_packet_size,
        embedded_port: c.embedded_port,
        embedded_linger: c.embedded_linger,
        mqtt5: c.mqtt_version == crate::args::MqttVersion::V5,
        tls,
    })
}

/// Longest password file read: a password is a line, not a file's worth.
pub const MAX_PASSWORD_FILE: u64 = 4 << 10;

fn read_password(file: Option<&std::path::Path>) -> Result<Option<Secret>, Error> {
    if let Some(path) = file {
        let what = format!("--password-file {}", path.display());
        let text = crate::out::read_bounded(path, MAX_PASSWORD_FILE, &what)?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            return Err(Error::usage(format!(
                "{what}: the first line is empty; put the password on it"
            )));
        }
        return Ok(Some(Secret(line)));
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(p) if p.is_empty() => Err(Error::usage(format!(
            "{PASSWORD_ENV} is set but empty; set the password in it, or unset it"
        ))),
        Ok(p) => Ok(Some(Secret(p))),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(Error::usage(format!(
            "{PASSWORD_ENV} is not valid UTF-8; MQTT passwords here are UTF-8 text"
        ))),
    }
}

/// A client id of its own for this process: `prefix`, the host name, the pid and a part
/// from the clock, so that instances on one host, or in containers that all run as pid 1,
/// never share one (a broker keeps one connection per client id).
pub fn instance_client_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let host: String = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let host = if host.is_empty() { "host".into() } else { host };
    format!("{prefix}-{host}-{}-{nanos:x}", std::process::id())
}

/// Checks an MQTT UTF-8 string field (client id, user name): no NUL, at most 65535 bytes.
pub fn check_mqtt_string(value: &str, flag: &str) -> Result<(), Error> {
    if value.contains('\0') {
        return Err(Error::usage(format!(
            "{flag} contains a NUL character, which MQTT does not allow; remove it"
        )));
    }
    if value.len() > u16::MAX as usize {
        return Err(Error::usage(format!(
            "{flag} is {} bytes, longer than MQTT allows (65535 bytes)",
            value.len()
        )));
    }
    Ok(())
}

/// Parses `--broker`: `auto`, `embedded`, `mqtt://host:port`, `tcp://host:port`, `host[:port]`,
/// `[v6]:port` or a bare IPv6 address. Credentials in the URL are refused with the secret
/// redacted: they would show in process lists, shell history and every message naming the broker.
pub fn parse_broker(s: &str) -> Result<BrokerChoice, Error> {
    let s = s.trim();
    match s {
        "" => {
            return Err(Error::usage(
                "--broker is empty; use mqtt://host:port, host:port, auto or embedded",
            ))
        }
        "auto" => {
            let probe = std::env::var(AUTO_PROBE_ENV).unwrap_or_else(|_| "127.0.0.1:1883".into());
            refuse_credentials(&probe, AUTO_PROBE_ENV)?;
            let (host, port) = host_port(&probe, AUTO_PROBE_ENV, 1883)?;
            return Ok(BrokerChoice::Auto { host, port });
        }
        "embedded" => return Ok(BrokerChoice::Embedded),
        _ => {}
    }
    refuse_credentials(s, "--broker")?;
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, s),
    };
    let tls = match scheme {
        None | Some("mqtt" | "tcp") => false,
        Some("mqtts" | "ssl") => true,
        Some(scheme) => {
            return Err(Error::usage(format!(
                "--broker scheme '{scheme}://' is not supported; use mqtt://host:port, mqtts://host:port, host:port, auto or embedded"
            )))
        }
    };
    let rest = rest.trim_end_matches('/');
    // Without a port: MQTT's, or its TLS port.
    let (host, port) = host_port(rest, "--broker", if tls { 8883 } else { 1883 })?;
    Ok(BrokerChoice::Remote { host, port })
}

/// Whether `--broker` asks for TLS (`mqtts://`).
pub fn broker_uses_tls(s: &str) -> bool {
    matches!(s.trim().split_once("://"), Some(("mqtts" | "ssl", _)))
}

/// Refuses `user[:password]@host` in a broker address before anything echoes it, with the
/// password redacted: it would show in process lists, shell history and every message that
/// names the broker.
fn refuse_credentials(s: &str, what: &str) -> Result<(), Error> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, s),
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return Ok(());
    };
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_string(),
    };
    let scheme = scheme.map_or(String::new(), |s| format!("{s}://"));
    Err(Error::usage(format!(
        "{what} {scheme}{shown}@{host} carries credentials; give the broker as mqtt://host:port, \
         the user with --username and the password in {PASSWORD_ENV} or --password-file"
    )))
}

fn host_port(s: &str, what: &str, default_port: u16) -> Result<(String, u16), Error> {
    let bad = |why: &str| {
        Error::usage(format!(
            "{what} '{s}' is not host:port ({why}); use e.g. mqtt://localhost:1883 or mqtt://[::1]:1883"
        ))
    };
    if let Ok(v6) = s.parse::<std::net::Ipv6Addr>() {
        return Ok((v6.to_string(), default_port)); // a bare IPv6 address: its colons are not a port
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(|| bad("'[' without ']'"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("brackets hold an IPv6 address"));
        }
        let port = match p {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| bad("only :port may follow ']'"))?,
            ),
        };
        (h.to_string(), port)
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(bad("more than one ':'; write an IPv6 address in brackets"))
            }
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (s.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if host.contains(['/', '?', '#', ' ']) {
        return Err(bad("a host has no '/', '?', '#' or spaces"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is a number from 1 to 65535"))?,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtts_brokers_default_to_port_8883_and_mqtt_ones_to_1883() {
        for (url, host, port) in [
            ("mqtts://host", "host", 8883),
            ("mqtts://host:9000", "host", 9000),
            ("mqtts://[::1]", "::1", 8883),
            ("mqtts://::1", "::1", 8883),
            ("mqtt://[::1]", "::1", 1883),
            ("host", "host", 1883),
        ] {
            match parse_broker(url).unwrap() {
                BrokerChoice::Remote { host: h, port: p } => {
                    assert_eq!((h.as_str(), p), (host, port), "{url}")
                }
                other => panic!("{url}: {other:?}"),
            }
            assert_eq!(broker_uses_tls(url), url.starts_with("mqtts"), "{url}");
        }
    }

    #[test]
    fn broker_urls_parse() {
        assert_eq!(
            parse_broker("mqtt://localhost:1884").unwrap(),
            BrokerChoice::Remote {
                host: "localhost".into(),
                port: 1884
            }
        );
        assert_eq!(
            parse_broker("10.0.0.1").unwrap(),
            BrokerChoice::Remote {
                host: "10.0.0.1".into(),
                port: 1883
            }
        );
        assert_eq!(
            parse_broker("[::1]:1999").unwrap(),
            BrokerChoice::Remote {
                host: "::1".into(),
                port: 1999
            }
        );
        assert_eq!(parse_broker("embedded").unwrap(), BrokerChoice::Embedded);
        assert!(parse_broker("http://x:1").is_err());
        assert!(parse_broker("host:notaport").is_err());
        assert!(parse_broker("host:0").is_err());
    }

    #[test]
    fn bare_ipv6_and_stray_colons_parse_or_are_refused() {
        assert_eq!(
            parse_broker("::1").unwrap(),
            BrokerChoice::Remote {
                host: "::1".into(),
                port: 1883
            }
        );
        assert_eq!(
            parse_broker("mqtt://[::1]").unwrap(),
            BrokerChoice::Remote {
                host: "::1".into(),
                port: 1883
            }
        );
        for bad in [
            "mqtt://127.0.0.1:18950:1",
            "[::1]x",
            "[nothost]:1",
            "[::1",
            ":1883",
        ] {
            let e = parse_broker(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
    }

    #[test]
    fn credentials_in_the_broker_url_are_refused_and_redacted() {
        for url in [
            "mqtt://u:secretpw@127.0.0.1:1883",
            "u:secretpw@host",
            "mqtt://u:secretpw@",
        ] {
            let e = parse_broker(url).unwrap_err();
            let msg = e.to_string();
            assert_eq!(e.exit_code(), 2);
            assert!(!msg.contains("secretpw"), "{msg}");
            assert!(
                msg.contains("--username") && msg.contains(PASSWORD_ENV),
                "{msg}"
            );
        }
    }

    #[test]
    fn credentials_in_the_auto_probe_address_are_refused_too() {
        std::env::set_var(AUTO_PROBE_ENV, "u:secretpw@127.0.0.1:1883");
        let e = parse_broker("auto").unwrap_err();
        std::env::remove_var(AUTO_PROBE_ENV);
        assert!(!e.to_string().contains("secretpw"), "{e}");
        assert!(e.to_string().contains(AUTO_PROBE_ENV), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }
}
