//! The MQTT connection of job-pub: rumqttc (3.1.1 or 5) with its event loop on a task that
//! turns what happens into [`Ev`]s, so that the run loop sees each PUBLISH written and each
//! acknowledgement, by packet id, whichever protocol is spoken.
//!
//! A link lives as long as its connection: when it fails the loop makes a new one (a clean
//! session) and publishes again what the old one left unacknowledged.

use std::time::Duration;

use bytes::Bytes;
use mqtt_tool::broker::BrokerTarget;
use mqtt_tool::connect::ConnectPlan;
use mqtt_tool::phases::Recorder;
use mqtt_tool::session::ConnectPhases;
use mqtt_tool::Error;
use tokio::sync::mpsc;

/// What the connection did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// The CONNACK arrived, after a connect of these phases (`None`: not measured).
    Up(Option<ConnectPhases>),
    /// A PUBLISH was written to the socket (packet id, 0 at QoS 0), in publish order.
    Written(u16),
    /// QoS 1: PUBACK; QoS 2: PUBCOMP. `Err` carries an MQTT 5 reason code of 0x80 or more.
    Acked(u16, Result<(), u8>),
    /// The connection failed (or could not be made): worth another try.
    Down(String),
    /// The broker refused the connection for good (credentials, authorization, client id).
    Refused(String),
}

enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

pub struct Link {
    client: Client,
    pub events: mpsc::UnboundedReceiver<Ev>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Requests queued in rumqttc before `publish` waits, and its window.
const QUEUE: usize = 10_000;

impl Link {
    /// Connects and waits for the CONNACK (at most `--connect-timeout`); a connect that
    /// gets it has its phases recorded in `recorder`.
    pub async fn connect(
        c: &ConnectPlan,
        target: &BrokerTarget,
        inflight: u16,
        recorder: &mut Recorder,
    ) -> Result<Link, Error> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client_id = c.client_id.clone();
        let (client, task) = if c.mqtt5 {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, target.host.clone(), target.port);
            o.set_keep_alive(c.keep_alive.max(Duration::from_secs(1)))
                .set_clean_start(true)
                .set_outgoing_inflight_upper_limit(inflight)
                .set_max_packet_size(Some(c.max_packet_size as u32));
            if let Some((u, p)) = &c.credentials {
                o.set_credentials(
                    u.clone(),
                    p.as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                );
            }
            let (client, mut el) = rumqttc::v5::AsyncClient::new(o, QUEUE);
            let task = tokio::spawn(async move {
                use rumqttc::v5::mqttbytes::v5::Packet;
                use rumqttc::v5::Event;
                loop {
                    let ev = match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(a))) => {
                            connack_v5(a.code, phases(el.connect_times))
                        }
                        Ok(Event::Incoming(Packet::PubAck(a))) => {
                            let code = puback_code(&a.reason);
                            Ev::Acked(a.pkid, if code >= 0x80 { Err(code) } else { Ok(()) })
                        }
                        Ok(Event::Incoming(Packet::PubRec(r)))
                            if pubrec_code(&r.reason) >= 0x80 =>
                        {
                            Ev::Acked(r.pkid, Err(pubrec_code(&r.reason)))
                        }
                        Ok(Event::Incoming(Packet::PubComp(a))) => Ev::Acked(a.pkid, Ok(())),
                        Ok(Event::Incoming(Packet::Disconnect(d))) => {
                            Ev::Down(format!("the broker sent DISCONNECT ({:?})", d.reason_code))
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Publish(p))) => Ev::Written(p),
                        Ok(_) => continue,
                        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => {
                            connack_v5(code, None)
                        }
                        Err(e) => Ev::Down(e.to_string()),
                    };
                    let down = matches!(ev, Ev::Down(_) | Ev::Refused(_));
                    if tx.send(ev).is_err() || down {
                        return;
                    }
                }
            });
            (Client::V5(client), task)
        } else {
            let mut o = rumqttc::MqttOptions::new(client_id, target.host.clone(), target.port);
            o.set_keep_alive(c.keep_alive.max(Duration::from_secs(1)))
                .set_clean_session(true)
                .set_inflight(inflight)
                .set_max_packet_size(c.max_packet_size, c.max_packet_size);
            if let Some((u, p)) = &c.credentials {
                o.set_credentials(
                    u.clone(),
                    p.as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                );
            }
            let (client, mut el) = rumqttc::AsyncClient::new(o, QUEUE);
            let task = tokio::spawn(async move {
                use rumqttc::{Event, Packet};
                loop {
                    let ev = match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(a))) => match a.code {
                            rumqttc::ConnectReturnCode::Success => {
                                Ev::Up(phases(el.connect_times))
                            }
                            rumqttc::ConnectReturnCode::ServiceUnavailable => Ev::Down(
                                "the broker turned the connection away for now (server unavailable)"
                                    .into(),
                            ),
                            other => Ev::Refused(format!("{other:?}")),
                        },
                        Ok(Event::Incoming(Packet::PubAck(a))) => Ev::Acked(a.pkid, Ok(())),
                        Ok(Event::Incoming(Packet::PubComp(a))) => Ev::Acked(a.pkid, Ok(())),
                        Ok(Event::Outgoing(rumqttc::Outgoing::Publish(p))) => Ev::Written(p),
                        Ok(_) => continue,
                        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => match code {
                            rumqttc::ConnectReturnCode::ServiceUnavailable => Ev::Down(
                                "the broker turned the connection away for now (server unavailable)".into(),
                            ),
                            other => Ev::Refused(format!("{other:?}")),
                        },
                        Err(e) => Ev::Down(e.to_string()),
                    };
                    let down = matches!(ev, Ev::Down(_) | Ev::Refused(_));
                    if tx.send(ev).is_err() || down {
                        return;
                    }
                }
            });
            (Client::V4(client), task)
        };
        let mut link = Link {
            client,
            events: rx,
            task: Some(task),
        };
        let first = tokio::time::timeout(c.connect_timeout, link.events.recv()).await;
        match first {
            Ok(Some(Ev::Up(p))) => {
                if let Some(p) = p {
                    recorder.connect(&p);
                }
                Ok(link)
            }
            Ok(Some(Ev::Refused(why))) => Err(Error::Refused {
                broker: target.url(),
                reason: why,
            }),
            Ok(Some(Ev::Down(why))) => Err(Error::Unreachable {
                broker: target.url(),
                reason: why,
            }),
            Ok(_) => Err(Error::Unreachable {
                broker: target.url(),
                reason: "the connection ended before its CONNACK".into(),
            }),
            Err(_) => {
                drop(link);
                Err(Error::Unreachable {
                    broker: target.url(),
                    reason: format!(
                        "no CONNACK within {} (--connect-timeout)",
                        humantime::format_duration(c.connect_timeout)
                    ),
                })
            }
        }
    }

    /// Queues one PUBLISH (it is written in the order queued); `job_id` becomes the MQTT 5
    /// user property when given.
    pub async fn publish(
        &self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: Bytes,
        job_id: Option<i64>,
    ) -> Result<(), String> {
        match &self.client {
            Client::V4(c) => {
                let q = match qos {
                    0 => rumqttc::QoS::AtMostOnce,
                    1 => rumqttc::QoS::AtLeastOnce,
                    _ => rumqttc::QoS::ExactlyOnce,
                };
                c.publish_bytes(topic, q, retain, payload)
                    .await
                    .map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let q = match qos {
                    0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                    1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
                };
                let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    user_properties: job_id
                        .map(|id| vec![("job_id".to_string(), id.to_string())])
                        .unwrap_or_default(),
                    ..Default::default()
                };
                c.publish_bytes_with_properties(topic, q, retain, payload, props)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// A DISCONNECT, then the end of the event loop.
    pub async fn close(mut self) {
        // Bounded: a stalled broker with a full queue must not hold the report.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            match &self.client {
                Client::V4(c) => c.disconnect().await.map_err(|e| e.to_string()),
                Client::V5(c) => c.disconnect().await.map_err(|e| e.to_string()),
            }
        })
        .await;
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// rumqttc's timing of the connect that got its CONNACK (patched in: vendor/rumqttc), as
/// the other tools report it. rumqttc speaks plain TCP here, so there is no TLS phase.
fn phases(t: Option<rumqttc::ConnectTimes>) -> Option<ConnectPhases> {
    let t = t?;
    Some(ConnectPhases {
        tcp: t.tcp?,
        tls: None,
        connack: t.connack,
    })
}

/// A CONNACK of MQTT 5: up (with the connect's phases), turned away for now (server
/// unavailable or busy, quota, connection rate), or refused for good. By variant: rumqttc's
/// reason enums carry no wire values (`as u8` gives the variant's position, not its code).
fn connack_v5(
    code: rumqttc::v5::mqttbytes::v5::ConnectReturnCode,
    phases: Option<ConnectPhases>,
) -> Ev {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C;
    match code {
        C::Success => Ev::Up(phases),
        C::ServiceUnavailable
        | C::ServerUnavailable
        | C::ServerBusy
        | C::QuotaExceeded
        | C::ConnectionRateExceeded => Ev::Down(format!(
            "the broker turned the connection away for now: {code:?}"
        )),
        other => Ev::Refused(format!("{other:?}")),
    }
}

/// The wire code of a PUBACK's reason (MQTT 5, 3.4.2.1).
fn puback_code(r: &rumqttc::v5::mqttbytes::v5::PubAckReason) -> u8 {
    use rumqttc::v5::mqttbytes::v5::PubAckReason as R;
    match r {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

/// The wire code of a PUBREC's reason (MQTT 5, 3.5.2.1).
fn pubrec_code(r: &rumqttc::v5::mqttbytes::v5::PubRecReason) -> u8 {
    use rumqttc::v5::mqttbytes::v5::PubRecReason as R;
    match r {
        R::Success => 0x00,
        R::NoMatchingSubscribers => 0x10,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicNameInvalid => 0x90,
        R::PacketIdentifierInUse => 0x91,
        R::QuotaExceeded => 0x97,
        R::PayloadFormatInvalid => 0x99,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, PubAckReason};

    #[test]
    fn reasons_are_read_by_their_wire_codes_not_their_positions() {
        assert_eq!(puback_code(&PubAckReason::NotAuthorized), 0x87);
        assert_eq!(puback_code(&PubAckReason::QuotaExceeded), 0x97);
        assert_eq!(puback_code(&PubAckReason::NoMatchingSubscribers), 0x10);
        assert!(matches!(
            connack_v5(ConnectReturnCode::Success, None),
            Ev::Up(None)
        ));
        assert!(matches!(
            connack_v5(ConnectReturnCode::ServerBusy, None),
            Ev::Down(_)
        ));
        assert!(matches!(
            connack_v5(ConnectReturnCode::NotAuthorized, None),
            Ev::Refused(_)
        ));
    }
}
