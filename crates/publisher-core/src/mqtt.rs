//! Opening the MQTT connection (rumqttc) and mapping its failures to exit codes.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, NetworkOptions,
    Packet,
};

use crate::broker::BrokerTarget;
use crate::error::Error;
use crate::plan::ConnectPlan;

/// Connects and waits for the CONNACK, within the plan's connect timeout.
/// `inflight` is the QoS 1 window, `queue` the client's request queue in messages.
pub async fn connect(
    cp: &ConnectPlan,
    target: &BrokerTarget,
    inflight: u16,
    queue: usize,
) -> Result<(AsyncClient, EventLoop), Error> {
    let mut opts = MqttOptions::new(cp.client_id.clone(), target.host.clone(), target.port);
    opts.set_keep_alive(cp.keep_alive)
        .set_max_packet_size(cp.max_packet_size, cp.max_packet_size)
        .set_inflight(inflight.max(1))
        .set_clean_session(true);
    if let Some((user, password)) = &cp.credentials {
        opts.set_credentials(
            user.clone(),
            password
                .as_ref()
                .map(|p| p.expose().to_string())
                .unwrap_or_default(),
        );
    }
    let (client, mut eventloop) = AsyncClient::new(opts, queue.max(1));
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(cp.tcp_nodelay);
    // rumqttc uses this for TCP connect and for every flush. Our own timeout below bounds
    // connecting; mid-run, a broker that stalls for a few seconds must not kill the run.
    net.set_connection_timeout(cp.connect_timeout.as_secs().saturating_add(1).max(30));
    eventloop.set_network_options(net);

    let broker = target.url();
    let timed_out = || Error::Unreachable {
        broker: target.url(),
        reason: format!(
            "no CONNACK within {} (--connect-timeout)",
            humantime::format_duration(round_ms(cp.connect_timeout))
        ),
    };
    match tokio::time::timeout(cp.connect_timeout, eventloop.poll()).await {
        Err(_) | Ok(Err(ConnectionError::NetworkTimeout)) => Err(timed_out()),
        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => Ok((client, eventloop)),
        Ok(Ok(other)) => Err(Error::Unreachable {
            broker,
            reason: format!(
                "it answered CONNECT with {other:?}, not a CONNACK (is it an MQTT broker?)"
            ),
        }),
        Ok(Err(e)) => Err(connect_error(broker, e)),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

fn connect_error(broker: String, e: ConnectionError) -> Error {
    match e {
        ConnectionError::ConnectionRefused(code) => Error::Refused {
            broker,
            reason: refusal(code).into(),
        },
        ConnectionError::Io(io) => Error::Unreachable {
            broker,
            reason: io.to_string(),
        },
        ConnectionError::MqttState(rumqttc::StateError::Io(io)) => Error::Unreachable {
            broker,
            reason: io.to_string(),
        },
        ConnectionError::MqttState(rumqttc::StateError::ConnectionAborted) => Error::Unreachable {
            broker,
            reason: "the connection closed before CONNACK (is it an MQTT broker?)".into(),
        },
        // Anything else before CONNACK (a malformed packet, a protocol error): whatever
        // listens there is not an MQTT broker we can use.
        other => Error::Unreachable {
            broker,
            reason: format!("{other} before CONNACK (is it an MQTT broker?)"),
        },
    }
}

fn refusal(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::BadUserNamePassword => {
            "bad user name or password; check --username and LOADGEN_PASSWORD or --password-file"
        }
        ConnectReturnCode::NotAuthorized => "not authorized; check --username and the password",
        ConnectReturnCode::BadClientId => "client id rejected; choose another --client-id",
        ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 is not accepted by this broker",
        ConnectReturnCode::ServiceUnavailable => "service unavailable",
        ConnectReturnCode::Success => "success code in a refusal",
    }
}
