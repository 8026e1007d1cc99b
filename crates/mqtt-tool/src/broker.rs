//! Finding the broker: an explicit address, or `auto` (localhost:1883 when something listens
//! there, else the embedded broker), or the embedded rumqttd broker started in-process on
//! 127.0.0.1 and a free port, with limits sized for the batch.

use std::collections::HashMap;
use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::connect::BrokerChoice;
use crate::error::Error;
use crate::mqtt::accepts_connections;

/// The broker a run talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerTarget {
    pub host: String,
    pub port: u16,
    /// Started by this process.
    pub embedded: bool,
    /// Reached over TLS (`mqtts://`).
    pub tls: bool,
}

impl BrokerTarget {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BrokerTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url())?;
        if self.embedded {
            f.write_str(" (embedded rumqttd)")?;
        }
        Ok(())
    }
}

/// Turns the plan's choice into a broker to connect to, starting the embedded one if needed.
/// `max_packet` sizes the embedded broker's limits. Announces an embedded broker on stderr.
pub fn resolve(
    choice: &BrokerChoice,
    tls: bool,
    max_packet: usize,
    embedded_port: u16,
) -> Result<BrokerTarget, Error> {
    match choice {
        BrokerChoice::Remote { host, port } => Ok(BrokerTarget {
            host: host.clone(),
            port: *port,
            embedded: false,
            tls,
        }),
        BrokerChoice::Auto { host, port } => {
            if accepts_connections(host, *port, Duration::from_millis(500)) {
                Ok(BrokerTarget {
                    host: host.clone(),
                    port: *port,
                    embedded: false,
                    tls: false,
                })
            } else {
                let b = start_embedded(max_packet, embedded_port)?;
                crate::errln!(
                    "no broker at {host}:{port} and no --broker given: started an embedded broker (rumqttd) at {}",
                    b.url()
                );
                Ok(b)
            }
        }
        BrokerChoice::Embedded => {
            let b = start_embedded(max_packet, embedded_port)?;
            crate::errln!("started an embedded broker (rumqttd) at {}", b.url());
            Ok(b)
        }
    }
}

/// Starts rumqttd on 127.0.0.1 and a free port; it lives as long as the process.
/// `port` 0 picks a free one.
pub fn start_embedded(max_packet: usize, port: u16) -> Result<BrokerTarget, Error> {
    let port = match port {
        0 => free_port()
            .map_err(|e| Error::failed("cannot find a free port for the embedded broker", e))?,
        p => {
            TcpListener::bind(("127.0.0.1", p)).map_err(|e| {
                Error::usage(format!(
                    "--embedded-port {p} is not free ({e}); choose another or 0 for any"
                ))
            })?;
            p
        }
    };
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    let config = embedded_config(listen, max_packet);
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!("embedded broker stopped: {e}");
            }
        })
        .map_err(|e| Error::failed("cannot start the embedded broker", e))?;
    // Ready when it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&listen, Duration::from_millis(100)).is_ok() {
            return Ok(BrokerTarget {
                host: "127.0.0.1".into(),
                port,
                embedded: true,
                tls: false,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(Error::Other(format!(
        "the embedded broker did not start listening on {listen} within 5s"
    )))
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn embedded_config(listen: SocketAddr, max_packet: usize) -> Config {
    // The commit log keeps recent messages for subscribers that lag; keep it to a few
    // dozen MiB so the broker's memory stays bounded, but larger than any one message.
    let segment = (max_packet * 2).max(16 << 20);
    let connections = ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: max_packet,
        max_inflight_count: 1024,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "embedded-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 1024,
            max_segment_size: segment,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}

/// MQTT 5 needs a broker that speaks it: the embedded one (rumqttd, run for 3.1.1) does not.
pub fn check_version(target: &BrokerTarget, mqtt5: bool) -> Result<(), Error> {
    if mqtt5 && target.embedded {
        return Err(Error::usage(
            "--mqtt-version 5 needs an external broker: the embedded broker speaks MQTT 3.1.1; \
             pass --broker mqtt://HOST:PORT (or drop --mqtt-version 5)",
        ));
    }
    Ok(())
}
