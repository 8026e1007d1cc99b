//! What the publisher puts in its messages: for each device its own readings (a
//! [`PointSource`] each, seeded by the device's index), its id and topic rendered from the
//! templates when a message is written, and the point format's encoder. The engine decides
//! when; this decides what. With `--verify`, a [`SentLog`] keeps each device's next seq and
//! the seqs it skipped: what the verifier expects.

use bytes::BytesMut;
use mqtt_engine::template::Template;
use mqtt_engine::Producer;
use point_format::{Encoder, Sample};

use crate::source::PointSource;

/// Each device's seqs, for `--verify`: its next seq (one relaxed store a message, on its
/// worker's own slice of the array) and the ranges it skipped (dropped while offline: rare).
#[derive(Debug)]
pub struct SentLog {
    next: Vec<std::sync::atomic::AtomicU64>,
    skipped: std::sync::Mutex<Vec<(u64, u64, u64)>>,
}

impl SentLog {
    /// For fleet devices `0..devices`.
    pub fn new(devices: u64) -> SentLog {
        SentLog {
            next: (0..devices)
                .map(|_| std::sync::atomic::AtomicU64::new(0))
                .collect(),
            skipped: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Device `d`'s next seq: `0..` this were generated or skipped.
    pub fn next(&self, d: u64) -> u64 {
        self.next
            .get(d as usize)
            .map_or(0, |n| n.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Device `d`'s skipped seq ranges (inclusive), in order.
    pub fn skipped(&self, d: u64) -> Vec<(u64, u64)> {
        let all = self.skipped.lock().map(|g| g.clone()).unwrap_or_default();
        all.iter()
            .filter(|(dev, ..)| *dev == d)
            .map(|(_, a, b)| (*a, *b))
            .collect()
    }

    fn set(&self, d: u64, next: u64) {
        if let Some(n) = self.next.get(d as usize) {
            n.store(next, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The producer of one worker's devices.
pub struct Points {
    /// Fleet index of the first device this producer serves.
    first: u64,
    /// Added to a device's fleet index to give its `{i}`.
    index_offset: u64,
    sources: Vec<PointSource>,
    device_id: Template,
    topic: Template,
    encoder: Encoder,
    /// The device the encoder is set for, and its rendered id.
    current: Option<u64>,
    id: Vec<u8>,
    samples: Vec<Sample>,
    log: Option<std::sync::Arc<SentLog>>,
}

impl Points {
    /// For fleet devices `devices`, whose `{i}` is their index plus `index_offset`.
    pub fn new(
        devices: std::ops::Range<u64>,
        index_offset: u64,
        device_id: Template,
        topic: Template,
        seed: u64,
        sensor_fields: bool,
    ) -> Points {
        let sources = devices
            .clone()
            .map(|d| PointSource::new(device_seed(seed, d), sensor_fields))
            .collect();
        Points {
            first: devices.start,
            index_offset,
            sources,
            device_id,
            topic,
            encoder: Encoder::new(""),
            current: None,
            id: Vec::with_capacity(64),
            samples: Vec::new(),
            log: None,
        }
    }

    /// Logs each device's seqs into `log` (`--verify`).
    pub fn logging(mut self, log: Option<std::sync::Arc<SentLog>>) -> Points {
        self.log = log;
        self
    }

    /// Renders device `d`'s id into `self.id` and points the encoder at it.
    fn select(&mut self, d: u64) {
        if self.current == Some(d) {
            return;
        }
        self.id.clear();
        self.device_id
            .render_into(d + self.index_offset, b"", &mut self.id);
        self.encoder.set_device_id(&self.id);
        self.current = Some(d);
    }
}

/// Device 0 keeps the run's seed, so one device gives the same values as ever; the others
/// get seeds of their own.
fn device_seed(seed: u64, d: u64) -> u64 {
    seed ^ d.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Producer for Points {
    fn topic(&mut self, device: u64, out: &mut Vec<u8>) {
        self.select(device);
        self.topic
            .render_into(device + self.index_offset, &self.id, out);
    }

    fn payload(
        &mut self,
        device: u64,
        first_seq: u64,
        points: u32,
        ts_us: u64,
        out: &mut BytesMut,
    ) {
        self.select(device);
        let Some(source) = self.sources.get_mut((device - self.first) as usize) else {
            return;
        };
        debug_assert_eq!(source.generated(), first_seq);
        source.fill(points as usize, ts_us, &mut self.samples);
        self.encoder.write_message(out, &self.samples);
        if let Some(log) = &self.log {
            log.set(device, source.generated());
        }
    }

    fn skip(&mut self, device: u64, points: u64) {
        self.select(device);
        if let Some(source) = self.sources.get_mut((device - self.first) as usize) {
            let from = source.generated();
            source.skip(points);
            if let (Some(log), true) = (&self.log, points > 0) {
                if let Ok(mut s) = log.skipped.lock() {
                    s.push((device, from, from + points - 1));
                }
                log.set(device, source.generated());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use point_format::Point;

    #[test]
    fn each_device_has_its_own_id_topic_and_seq() {
        let dev = Template::parse("sensor-{i:03}", false, "--device-id").unwrap();
        let topic = Template::parse("device_data/{device_id}", true, "--topic").unwrap();
        let mut p = Points::new(10..13, 100, dev, topic, 1, false);
        let mut t = Vec::new();
        p.topic(11, &mut t);
        assert_eq!(t, b"device_data/sensor-111");
        let mut buf = BytesMut::new();
        p.payload(12, 0, 2, 1_000_000, &mut buf);
        let pts: Vec<Point> = serde_json::from_slice(&buf).unwrap();
        assert_eq!(
            pts.iter()
                .map(|x| (x.device_id.as_ref(), x.seq))
                .collect::<Vec<_>>(),
            [("sensor-112", 0), ("sensor-112", 1)]
        );
        let mut buf = BytesMut::new();
        p.payload(12, 2, 1, 1_000_000, &mut buf);
        let pt: Point = serde_json::from_slice(&buf).unwrap();
        assert_eq!(pt.seq, 2);
    }

    #[test]
    fn the_sent_log_holds_each_devices_next_seq_and_its_skipped_ranges() {
        let dev = Template::parse("sensor-{i:03}", false, "--device-id").unwrap();
        let topic = Template::parse("device_data/{device_id}", true, "--topic").unwrap();
        let log = std::sync::Arc::new(SentLog::new(3));
        let mut p = Points::new(1..3, 0, dev, topic, 1, false).logging(Some(log.clone()));
        let mut buf = BytesMut::new();
        p.payload(2, 0, 2, 1_000_000, &mut buf);
        p.skip(2, 3);
        p.payload(2, 5, 1, 1_000_000, &mut buf);
        p.payload(1, 0, 1, 1_000_000, &mut buf);
        assert_eq!((log.next(0), log.next(1), log.next(2)), (0, 1, 6));
        assert_eq!(log.skipped(2), vec![(2, 4)]);
        assert!(log.skipped(1).is_empty());
    }
}
