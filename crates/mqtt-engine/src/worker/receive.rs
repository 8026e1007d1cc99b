//! Receiving: bytes read from the broker framed into packets (CONNACK, PUBACK, PINGRESP,
//! DISCONNECT) and what each means for the connection.

use super::*;

impl<P: Producer> Worker<P> {
    /// Handles the `n` bytes just read into `read_buf`; false when the connection is over.
    pub(super) fn take_bytes(&mut self, c: u32, n: usize, now: Instant) -> bool {
        self.conns[c as usize].last_in = now;
        if self.conns[c as usize].phase == Phase::AwaitConnack
            && self.conns[c as usize].inbuf.is_empty()
            && self.read_buf[0] != 0x20
        {
            // The first packet of a broker is its CONNACK; anything else is not MQTT.
            self.fail_attempt(c, ConnectFailure::NotMqtt, now);
            return false;
        }
        let mut pending = std::mem::take(&mut self.conns[c as usize].inbuf);
        let from_scratch = pending.is_empty();
        if !from_scratch {
            pending.extend_from_slice(&self.read_buf[..n]);
        }
        let max = self.s.conn.max_packet_size;
        let mut at = 0;
        let total = if from_scratch { n } else { pending.len() };
        let mut ok = true;
        let mut acked = false;
        while at < total {
            let bytes: &[u8] = if from_scratch {
                &self.read_buf[at..n]
            } else {
                &pending[at..]
            };
            match packets::next_packet(bytes, max, self.s.conn.mqtt5.is_some()) {
                Ok(Some((packet, len))) => {
                    at += len;
                    match self.on_packet(c, packet, now) {
                        Some(a) => acked |= a,
                        None => {
                            ok = false;
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    match self.conns[c as usize].phase {
                        Phase::AwaitConnack => self.fail_attempt(c, ConnectFailure::NotMqtt, now),
                        _ => self.lose(c, LostKind::Other(format!("the broker sent {e}")), now),
                    }
                    return false;
                }
            }
        }
        if ok && at < total {
            let rest = if from_scratch {
                self.read_buf[at..n].to_vec()
            } else {
                pending.drain(..at);
                pending
            };
            self.conns[c as usize].inbuf = rest;
        }
        if acked {
            self.catch_up(c);
        }
        ok
    }

    /// Handles one packet; `Some(acked)` while the connection goes on.
    pub(super) fn on_packet(&mut self, c: u32, packet: Incoming, now: Instant) -> Option<bool> {
        let phase = self.conns[c as usize].phase;
        match (phase, packet) {
            (
                Phase::AwaitConnack,
                Incoming::ConnAck {
                    code,
                    session_present,
                    limits,
                },
            ) => {
                if code == 0 {
                    if let Some(f) = self.unusable(&limits) {
                        self.fail_attempt(c, f, now);
                        return None;
                    }
                    // MQTT 5: the broker's Server Keep Alive replaces ours.
                    self.conns[c as usize].keep_alive = limits
                        .server_keep_alive
                        .map_or(self.s.conn.keep_alive, |s| Duration::from_secs(s.into()));
                }
                let receive_maximum = limits.receive_maximum;
                if code == 0 {
                    if let Some(rm) = receive_maximum {
                        let r = &mut self.stats.conns.receive_maximum;
                        *r = Some(r.map_or(rm, |x| x.min(rm)));
                    }
                }
                if code == 0 && self.qos1 {
                    // MQTT 5: never more unacknowledged than the broker takes.
                    if self.conns[c as usize].inflight.limit(receive_maximum) {
                        self.stats.conns.window_clamped += 1;
                    }
                }
                self.on_connack(c, code, session_present, now);
                (self.conns[c as usize].phase == Phase::Up).then_some(false)
            }
            (Phase::AwaitConnack, _) => {
                self.fail_attempt(c, ConnectFailure::NotMqtt, now);
                None
            }
            (Phase::Up | Phase::Closing, Incoming::PubAck(id, reason)) => {
                self.on_puback(c, id, reason, now);
                Some(true)
            }
            (_, Incoming::PingResp) => {
                self.conns[c as usize].ping = None;
                Some(false)
            }
            (Phase::Closing, Incoming::Disconnect(reason)) => {
                // Our DISCONNECT is out and everything was acknowledged: a broker that says
                // goodbye first is no loss. (Its reason still counts: at QoS 0 a refusal
                // of a packet fails the run.)
                if reason != 0 {
                    *self.stats.conns.disconnects.entry(reason).or_default() += 1;
                }
                self.close(c);
                None
            }
            (Phase::Up, Incoming::Disconnect(reason)) => {
                // MQTT 5: the broker says why it ends the connection; the close follows.
                *self.stats.conns.disconnects.entry(reason).or_default() += 1;
                if self.qos1 && crate::error::refuses_a_packet(reason) {
                    // The broker reads in order and acknowledged all it took before: the
                    // oldest message in flight is the one it refused. Rejected, not resent.
                    let oldest = self.conns[c as usize]
                        .inflight
                        .iter()
                        .next()
                        .map(|a| a.pkid);
                    if let Some(id) = oldest {
                        let conn = &self.conns[c as usize];
                        let before = (conn.acked_any, conn.acked_since_up);
                        self.on_puback(c, id, reason, now);
                        // No PUBACK came, and no progress: a loss per refused message ends
                        // in the give-up.
                        let conn = &mut self.conns[c as usize];
                        (conn.acked_any, conn.acked_since_up) = before;
                    }
                }
                let kind = if reason == crate::error::SESSION_TAKEN_OVER {
                    LostKind::TakenOver
                } else {
                    LostKind::Other(format!(
                        "the broker sent DISCONNECT with reason 0x{reason:02x} ({})",
                        crate::error::reason_name(reason)
                    ))
                };
                self.lose(c, kind, now);
                None
            }
            _ => Some(false),
        }
    }

    /// A PUBACK for `id` with `reason` (MQTT 5; 0 under 3.1.1).
    pub(super) fn on_puback(&mut self, c: u32, id: u16, reason: u8, now: Instant) {
        let conn = &mut self.conns[c as usize];
        match conn.inflight.ack(id) {
            Some(a) => {
                conn.acked_any = true;
                conn.acked_since_up = true;
                if reason >= 0x80 {
                    // MQTT 5: the broker answered, and refused (not authorized, too
                    // large, quota): rejected, not acknowledged, not failed.
                    self.stats.counts.points_rejected += a.points as u64;
                    self.stats.counts.messages_rejected += 1;
                    *self.stats.rejected_by_reason.entry(reason).or_default() += 1;
                } else {
                    self.stats.counts.points_acked += a.points as u64;
                    self.stats.counts.messages_acked += 1;
                    crate::stats::record_clamped(
                        &mut self.stats.histos.ack_us,
                        micros(now.saturating_duration_since(a.scheduled)),
                        &mut self.stats.counts.latency_clamped,
                    );
                }
                self.stats.last_ack = Some(now);
                if conn.retaining {
                    let upto = conn.inflight.first_start().unwrap_or(conn.out.end());
                    conn.out.release(upto);
                }
                if conn.inflight.is_empty() {
                    conn.inflight.trim();
                    conn.out.trim(self.keep_buffer);
                    if self.phase != WorkerPhase::Generating {
                        self.drain_check.push(c);
                    }
                }
                self.unpaced_idle = false;
            }
            None if conn.inflight.was_issued(id) => self.stats.counts.duplicate_acks += 1,
            None => self.stats.counts.acks_unknown_id += 1,
        }
    }

    /// What in an accepting MQTT 5 CONNACK rules this run out: a protocol error, QoS 0
    /// only for a QoS 1 run, or a Maximum Packet Size our largest message exceeds (a clear
    /// error before anything is sent, not a DISCONNECT 0x95 per message).
    pub(super) fn unusable(&self, limits: &packets::ConnackLimits) -> Option<ConnectFailure> {
        if let Some(what) = limits.violation() {
            return Some(ConnectFailure::BrokerProtocol(what));
        }
        if self.qos1 && limits.maximum_qos == Some(0) {
            return Some(ConnectFailure::Limit(BrokerLimit::QosZeroOnly));
        }
        let limit = limits.maximum_packet_size?;
        let props = self
            .s
            .conn
            .mqtt5
            .as_ref()
            .map_or(0, |v5| v5.publish_properties.len());
        let p = &self.s.publish;
        let largest = (packets::publish_overhead(p.max_topic, props) + p.max_payload) as u64;
        (largest > limit as u64).then_some(ConnectFailure::Limit(BrokerLimit::PacketSize {
            limit,
            largest,
        }))
    }
}
