//! E: encoding throughput on one core, for 1000-point batches and for single objects.
//!
//! The reference is serde_json writing the same points through the format's own `Point`
//! struct, measured in the same run, so the ratio holds on a noisy machine. Prints a
//! Markdown table: `cargo bench -p loadgen-benches --bench encode`. A counting allocator
//! shows how many allocations our path makes per point (the target is none).

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use point_format::{Encoder, Point};
use publisher_core::source::PointSource;

mod alloc_count;

const DEVICE: &str = "frontend1_ultra_high_perf_device";
const ROUNDS: usize = 5;
const POINTS_PER_ROUND: usize = 2_000_000;
const TIMESTAMP_US: u64 = 1_763_798_400_123_456;

/// Points per second through our encoder, and allocations per point.
fn ours(batch: usize) -> (f64, f64) {
    let enc = Encoder::new(DEVICE);
    let mut src = PointSource::new(1, true);
    let mut samples = Vec::with_capacity(batch);
    let mut buf = BytesMut::with_capacity(enc.max_payload_len(batch));
    let mut bytes = 0usize;
    let allocations = alloc_count::allocations();
    let start = Instant::now();
    for _ in 0..POINTS_PER_ROUND / batch {
        src.fill(batch, TIMESTAMP_US, &mut samples);
        buf.clear();
        enc.write_message(&mut buf, &samples);
        bytes += black_box(buf.len());
    }
    let rate = POINTS_PER_ROUND as f64 / start.elapsed().as_secs_f64();
    let allocations = alloc_count::allocations() - allocations;
    black_box(bytes);
    (rate, allocations as f64 / POINTS_PER_ROUND as f64)
}

/// Points per second through serde_json, same points.
fn reference(batch: usize) -> f64 {
    let mut src = PointSource::new(1, true);
    let mut samples = Vec::with_capacity(batch);
    let mut buf = Vec::with_capacity(256 * batch);
    let mut points: Vec<Point> = Vec::with_capacity(batch);
    let mut bytes = 0usize;
    let start = Instant::now();
    for _ in 0..POINTS_PER_ROUND / batch {
        src.fill(batch, TIMESTAMP_US, &mut samples);
        points.clear();
        points.extend(samples.iter().map(|s| Point {
            device_id: DEVICE.into(),
            seq: s.seq,
            timestamp: s.timestamp_us as f64 / 1e6,
            value: s.value_centi as f64 / 100.0,
            temperature: s.temperature_centi.map(|t| t as f64 / 100.0),
            humidity: s.humidity_deci.map(|h| h as f64 / 10.0),
        }));
        buf.clear();
        if batch == 1 {
            serde_json::to_writer(&mut buf, &points[0]).expect("serialize");
        } else {
            serde_json::to_writer(&mut buf, &points).expect("serialize");
        }
        bytes += black_box(buf.len());
    }
    black_box(bytes);
    POINTS_PER_ROUND as f64 / start.elapsed().as_secs_f64()
}

/// Median and relative spread (max - min) / median.
fn median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v[v.len() / 2];
    (mid, (v[v.len() - 1] - v[0]) / mid)
}

fn main() {
    let _ = (ours(1000), reference(1000)); // warm-up
    println!(
        "| scenario | ours (M points/s) | serde_json reference (M points/s) | ratio | spread | allocations per point |"
    );
    println!("|---|---|---|---|---|---|");
    for batch in [1000usize, 1] {
        let (mut a, mut b, mut allocs) = (Vec::new(), Vec::new(), 0.0f64);
        for _ in 0..ROUNDS {
            let (rate, per_point) = ours(batch);
            a.push(rate);
            allocs = allocs.max(per_point);
            b.push(reference(batch));
        }
        let ((oa, sa), (ob, _)) = (median(a), median(b));
        println!(
            "| E encode, batch {batch} | {:.2} | {:.2} | {:.2} | {:.0}% | {allocs:.4} |",
            oa / 1e6,
            ob / 1e6,
            oa / ob,
            sa * 100.0
        );
    }
}
