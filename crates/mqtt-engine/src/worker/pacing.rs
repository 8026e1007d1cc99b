//! Generation: the schedule cursor walks the worker's devices; each due device encodes its
//! message into its connection's outbox, or owes it while the connection is full.

use super::*;
use crate::pacer::Step;

impl<P: Producer> Worker<P> {
    /// Points in `owed` slots of device `dl`, within what is left of its quota.
    pub(super) fn owed_points(&self, dl: u32, owed: u64) -> u64 {
        let d = self.d0 + dl as u64;
        let dev = &self.devices[dl as usize];
        let wanted = owed.saturating_mul(self.s.schedule.batch());
        match self.s.schedule.quota(d) {
            Some(q) => wanted.min(q.saturating_sub(dev.sent)),
            None => wanted,
        }
    }

    /// The last slot of device `dl` the cursor has passed.
    pub(super) fn passed_slot(&self, dl: u32) -> Option<u64> {
        self.pacer.passed_slot(dl)
    }

    /// After a reconnect: a device owing more points than the offline buffer holds drops
    /// the oldest (whole messages), counted, their seqs skipped, so that the backend sees the
    /// gap the report names.
    pub(super) fn bound_offline(&mut self, c: u32) {
        let Some(bound) = self.s.reconnect.as_ref().map(|r| r.offline_buffer) else {
            return;
        };
        if !self.paced {
            return;
        }
        let batch = self.s.schedule.batch().max(1);
        for dl in self.conns[c as usize].devices.clone() {
            let dev = self.devices[dl as usize];
            let owed = match dev.state {
                DevState::Active => match self.passed_slot(dl) {
                    Some(last) if last >= dev.next_slot => {
                        self.owed_points(dl, last + 1 - dev.next_slot)
                    }
                    _ => 0,
                },
                DevState::Owing => self.points_left(dl),
                DevState::Waiting | DevState::Done => 0,
            };
            if owed <= bound {
                continue;
            }
            let slots = (owed - bound).div_ceil(batch);
            let d = self.d0 + dl as u64;
            let skipped = match self.s.schedule.quota(d) {
                Some(q) => (slots * batch).min(q.saturating_sub(dev.sent)),
                None => slots * batch,
            };
            let dev = &mut self.devices[dl as usize];
            dev.next_slot += slots;
            dev.sent += skipped;
            self.stats.counts.points_dropped_offline += skipped;
            self.producer.skip(d, skipped);
            self.done_if_spent(dl);
        }
    }

    /// The devices of connection `c` will never send again: what their schedule still held
    /// (their quota, or their slots until --duration ends) is dropped.
    pub(super) fn devices_gone(&mut self, c: u32) {
        let devices = self.conns[c as usize].devices.clone();
        for dl in devices {
            let dev = self.devices[dl as usize];
            if dev.state == DevState::Done {
                continue;
            }
            self.stats.counts.points_dropped += self.points_left(dl);
            if dev.state == DevState::Owing {
                self.finish(dl);
                continue;
            }
            self.devices[dl as usize].state = DevState::Done;
            self.live_devices = self.live_devices.saturating_sub(1);
        }
    }

    /// Points device `dl`'s schedule still holds: what it is to send in all (its quota, and
    /// no more than its slots due by the end of --duration, as [`Schedule::planned_for`]
    /// counts them) less what it has generated or dropped offline.
    pub(super) fn points_left(&self, dl: u32) -> u64 {
        let d = self.d0 + dl as u64;
        let sent = self.devices[dl as usize].sent;
        self.s
            .schedule
            .planned_for(d)
            .map_or(0, |p| p.saturating_sub(sent))
    }

    /// Generates what is due; returns whether more could be generated at once (unpaced)
    /// and when the next message falls due (paced).
    pub(super) fn generate(&mut self, now: Instant) -> (bool, Option<Instant>) {
        if self.devices.is_empty() {
            return (false, None);
        }
        let anchor = self.anchor.unwrap_or(now);
        if now < anchor {
            return (false, Some(anchor)); // --start-delay
        }
        if !self.paced {
            return (self.generate_unpaced(now), None);
        }
        // A cursor rounds behind (a rate beyond what the connections take) jumps to the
        // round now due: the devices keep what they owe, and a pass never walks slot by slot
        // through rounds that are long past.
        self.pacer.catch_up(&self.s.schedule, now);
        let mut steps = 0usize;
        loop {
            if self.live_devices == 0 {
                return (false, None);
            }
            steps += 1;
            if steps > PASS_STEPS {
                return (true, None); // events and signals get their turn
            }
            let dl = self.pacer.device();
            let dev = self.devices[dl as usize];
            let points = match dev.state {
                DevState::Done | DevState::Owing => None,
                DevState::Waiting | DevState::Active => {
                    Some(self.s.schedule.next_points(self.d0 + dl as u64, dev.sent))
                }
            };
            match self.pacer.step(&self.s.schedule, now, points) {
                Step::Skipped(_) => {}
                Step::Wait(at) => return (false, Some(at)),
                Step::Ended { .. } => {
                    // Its schedule is over (and every later slot's too). What it still owes
                    // was due before the end: it goes out as its connection drains.
                    self.live_devices -= 1;
                    if dev.state == DevState::Active {
                        // Owing until fill finds nothing more before the end.
                        self.devices[dl as usize].state = DevState::Owing;
                        self.owing += 1;
                        self.conns[dev.conn as usize].owing += 1;
                        self.fill(dl, u64::MAX, anchor);
                        if !self.work.is_empty() {
                            return (true, None); // a write failed: the loop deals with it first
                        }
                    } else {
                        self.devices[dl as usize].state = DevState::Done;
                    }
                }
                Step::Due { k, .. } => {
                    if dev.state == DevState::Active {
                        self.fill(dl, k, anchor);
                        if !self.work.is_empty() {
                            return (true, None); // a write failed: the loop deals with it first
                        }
                    }
                }
            }
        }
    }

    /// A device whose quota is all generated is done at once, not when its next slot comes.
    pub(super) fn done_if_spent(&mut self, dl: u32) {
        let d = self.d0 + dl as u64;
        let dev = self.devices[dl as usize];
        if self.s.schedule.next_points(d, dev.sent) == 0 {
            self.finish(dl);
        }
    }

    /// Device `dl` will generate no more: Active or Owing becomes Done.
    pub(super) fn finish(&mut self, dl: u32) {
        let dev = self.devices[dl as usize];
        match dev.state {
            DevState::Active => self.live_devices -= 1,
            DevState::Owing => {
                self.owing -= 1;
                let conn = &mut self.conns[dev.conn as usize];
                conn.owing -= 1;
                if conn.owing == 0 && self.phase != WorkerPhase::Generating {
                    self.drain_check.push(dev.conn);
                }
            }
            DevState::Waiting | DevState::Done => return,
        }
        self.devices[dl as usize].state = DevState::Done;
    }

    /// Devices that still owe slots drop them: a stop, or the drain's deadline.
    pub(super) fn drop_owing(&mut self) {
        if self.owing == 0 {
            return;
        }
        for dl in 0..self.devices.len() as u32 {
            if self.devices[dl as usize].state == DevState::Owing {
                self.stats.counts.points_dropped += self.points_left(dl);
                self.finish(dl);
            }
        }
    }

    /// Generates device `dl`'s slots up to `upto` (those it owes first), while its
    /// connection has room.
    pub(super) fn fill(&mut self, dl: u32, upto: u64, anchor: Instant) {
        let d = self.d0 + dl as u64;
        loop {
            let dev = self.devices[dl as usize];
            let owing = dev.state == DevState::Owing;
            if !(dev.state == DevState::Active || owing) || dev.next_slot > upto {
                return;
            }
            let points = self.s.schedule.next_points(d, dev.sent);
            if points == 0 {
                return self.finish(dl);
            }
            let due = self
                .s
                .schedule
                .due(d, dev.next_slot, points)
                .unwrap_or_default();
            if self.s.schedule.is_past_end(due) {
                if owing {
                    self.finish(dl); // it owes nothing more
                }
                return; // an Active one: the cursor ends it
            }
            let c = dev.conn as usize;
            if !self.conns[c].has_room(self.s.publish.max_queued, self.qos) {
                self.conns[c].blocked |= self.conns[c].out.queued() > 0;
                return; // owed until the connection drains
            }
            if !self.emit(dl, points, anchor + due) {
                return;
            }
            self.devices[dl as usize].next_slot += 1;
            self.done_if_spent(dl);
            if self.failing(dev.conn) {
                return; // its socket failed: nothing more goes in until the loop says how
            }
        }
    }

    /// Round robin over the devices, one message each while their connections have room.
    pub(super) fn generate_unpaced(&mut self, now: Instant) -> bool {
        if self.unpaced_idle {
            return false;
        }
        let n_dev = self.devices.len() as u32;
        let mut idle = 0u32;
        let mut made = 0usize;
        while self.live_devices > 0 && idle < n_dev {
            let dl = self.pacer.round_robin();
            let dev = self.devices[dl as usize];
            if dev.state != DevState::Active
                || !self.conns[dev.conn as usize].has_room(self.s.publish.max_queued, self.qos)
            {
                idle += 1;
                continue;
            }
            let d = self.d0 + dl as u64;
            let points = self.s.schedule.next_points(d, dev.sent);
            if points == 0 {
                self.devices[dl as usize].state = DevState::Done;
                self.live_devices -= 1;
                continue;
            }
            if !self.emit(dl, points, now) {
                idle += 1;
                continue;
            }
            self.devices[dl as usize].next_slot += 1;
            self.done_if_spent(dl);
            idle = 0;
            made += 1;
            if made >= PASS_MESSAGES || !self.work.is_empty() {
                return true; // events get their turn, a failed write first
            }
        }
        self.unpaced_idle = idle >= n_dev;
        false
    }

    /// Encodes one message of device `dl` into its connection's outbox.
    pub(super) fn emit(&mut self, dl: u32, points: u64, scheduled: Instant) -> bool {
        let d = self.d0 + dl as u64;
        let Worker {
            devices,
            conns,
            producer,
            topic,
            stats,
            s,
            dirty,
            ..
        } = self;
        let props = s
            .conn
            .mqtt5
            .as_ref()
            .map_or(&[][..], |v5| &v5.publish_properties[..]);
        let dev = &mut devices[dl as usize];
        let conn = &mut conns[dev.conn as usize];
        let points = points.min(u32::MAX as u64) as u32;
        let pkid = if self.qos.acknowledged() {
            match conn.inflight.issue(scheduled, points) {
                Some(id) => Some(id),
                None => return false,
            }
        } else {
            None
        };
        topic.clear();
        producer.topic(d, topic);
        let anchor = self.anchor.unwrap_or(scheduled);
        let ts_us = self.wall_anchor_us + micros(scheduled.saturating_duration_since(anchor));
        let max_payload = s.publish.max_payload;
        let first_seq = dev.sent;
        let buf = conn
            .out
            .buffer(packets::publish_overhead(topic.len(), props.len()) + max_payload);
        let flags = packets::PublishFlags {
            qos: self.qos,
            ..Default::default()
        };
        let bytes =
            packets::append_publish_with(buf, flags, topic, pkid, props, max_payload, |b| {
                producer.payload(d, first_seq, points, ts_us, b)
            });
        let bytes = bytes.min(u32::MAX as usize) as u32;
        let span = conn.out.seal(MsgMeta {
            scheduled,
            points,
            bytes,
            pkid: pkid.unwrap_or(0),
            resend: false,
        });
        if pkid.is_some() {
            conn.inflight.place_last(span, bytes);
        }
        conn.largest_message = conn.largest_message.max(bytes);
        dev.sent += points as u64;
        stats.counts.points_enqueued += points as u64;
        stats.counts.messages_enqueued += 1;
        // A connection waiting for writability is not tried again: each try would be a
        // failed write.
        let big = conn.out.bytes() >= FLUSH_BYTES && !conn.blocked;
        if !conn.dirty {
            conn.dirty = true;
            dirty.push(dev.conn);
        }
        if big {
            // Written mid-pass to bound the outbox; a failure goes to the loop (`failing`).
            let c = dev.conn;
            self.flush(c, Instant::now());
        }
        true
    }

    /// After a connection drained (or acknowledgements freed its window), its devices
    /// generate the slots they owe.
    pub(super) fn catch_up(&mut self, c: u32) {
        if !self.paced {
            return;
        }
        let Some(anchor) = self.anchor else { return };
        let generating = self.phase == WorkerPhase::Generating;
        if !generating && self.conns[c as usize].owing == 0 {
            return;
        }
        let devices = self.conns[c as usize].devices.clone();
        for dl in devices {
            if generating {
                if let Some(last) = self.passed_slot(dl) {
                    self.fill(dl, last, anchor);
                }
            } else if self.devices[dl as usize].state == DevState::Owing {
                self.fill(dl, u64::MAX, anchor);
            }
            if self.failing(c) {
                return;
            }
        }
    }
}
