//! Live figures: the worker's counters and, when asked, its histograms handed to the
//! thread that watches the fleet.

use super::*;

impl<P: Producer> Worker<P> {
    /// Copies the histograms to where [`crate::FleetHandle::live_histos`] reads them.
    pub(super) fn share_histos(&self) {
        if !self.s.live_histograms {
            return;
        }
        if let Ok(mut h) = self.shared.live_histos[self.id].lock() {
            h.ack_us.clone_from(&self.stats.histos.ack_us);
            h.lag_us.clone_from(&self.stats.histos.lag_us);
            h.connect_us.clone_from(&self.stats.histos.connect_us);
            h.tcp_us.clone_from(&self.stats.histos.tcp_us);
            h.tls_us.clone_from(&self.stats.histos.tls_us);
            h.connack_us.clone_from(&self.stats.histos.connack_us);
            h.reconnect_us.clone_from(&self.stats.histos.reconnect_us);
            h.pingresp_us.clone_from(&self.stats.histos.pingresp_us);
        }
    }

    pub(super) fn publish_live(&mut self, now: Instant) {
        if self.s.live_histograms
            && now.saturating_duration_since(self.histos_shared) >= HISTOS_EVERY
        {
            self.histos_shared = now;
            self.share_histos();
        }
        let l: &Live = &self.shared.live[self.id];
        let c = &self.stats.counts;
        let r = Ordering::Relaxed;
        l.points_enqueued.store(c.points_enqueued, r);
        l.points_sent.store(c.points_sent, r);
        l.messages_sent.store(c.messages_sent, r);
        l.points_acked.store(c.points_acked, r);
        l.messages_acked.store(c.messages_acked, r);
        l.bytes_sent.store(c.bytes_sent, r);
        l.points_dropped
            .store(c.points_dropped + c.points_dropped_offline, r);
        l.points_rejected.store(c.points_rejected, r);
        l.reconnects.store(self.stats.conns.reconnects, r);
        l.takeovers.store(self.stats.conns.takeovers, r);
        l.client_id_in_use
            .store(self.stats.conns.client_id_in_use, r);
        l.connected.store(self.stats.conns.connected, r);
        l.failed.store(self.stats.conns.failed, r);
        l.lost.store(self.stats.conns.lost, r);
        l.up.store(self.up, r);
        if self.qos.acknowledged() {
            l.inflight.store(
                c.messages_enqueued
                    .saturating_sub(c.messages_acked)
                    .saturating_sub(c.messages_rejected),
                r,
            );
        }
    }
}
