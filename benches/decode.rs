//! D: decoding throughput on one core, for 1000-point batches and for single objects, the
//! backend's decoder (our encoder's form read directly, simd-json for anything else; into
//! `point_format::Point`, borrowed device ids) against serde_json decoding the same payloads
//! into the same struct, measured in the same run. The target is 10M points/s for batches of
//! 1000. A counting allocator shows how many allocations our path makes per message: the
//! output `Vec` the backend makes for each message, and nothing per point.
//! `cargo bench -p loadgen-benches --bench decode`

use std::hint::black_box;
use std::time::Instant;

use backend_core::decode::Decoder;
use point_format::{Encoder, Point};
use publisher_core::source::PointSource;

mod alloc_count;

const DEVICE: &str = "frontend1_ultra_high_perf_device";
const ROUNDS: usize = 5;
const POINTS_PER_ROUND: usize = 1_000_000;
/// Points per second the decoder must reach for batches of [`TARGET_BATCH`].
const TARGET: f64 = 10e6;
const TARGET_BATCH: usize = 1000;

fn payloads(batch: usize) -> Vec<Vec<u8>> {
    let enc = Encoder::new(DEVICE);
    let mut src = PointSource::new(1, true);
    let mut samples = Vec::new();
    (0..POINTS_PER_ROUND / batch)
        .map(|_| {
            src.fill(batch, 1_763_798_400_123_456, &mut samples);
            let mut buf = Vec::new();
            enc.write_message(&mut buf, &samples);
            buf
        })
        .collect()
}

/// (points/s, bytes/s) of the backend's decoder, copying each payload as the backend does,
/// and allocations per message.
fn ours(msgs: &[Vec<u8>]) -> ((f64, f64), f64) {
    let mut buf = Vec::new();
    let mut decoder = Decoder::default();
    let (mut points, mut bytes) = (0usize, 0usize);
    let allocations = alloc_count::allocations();
    let start = Instant::now();
    for m in msgs {
        buf.clear();
        buf.extend_from_slice(m);
        let mut out = Vec::new();
        decoder.decode(&mut buf, &mut out).expect("valid payload");
        points += black_box(out.len());
        bytes += m.len();
    }
    let s = start.elapsed().as_secs_f64();
    let allocations = alloc_count::allocations() - allocations;
    (
        (points as f64 / s, bytes as f64 / s),
        allocations as f64 / msgs.len() as f64,
    )
}

fn reference(msgs: &[Vec<u8>]) -> (f64, f64) {
    let (mut points, mut bytes) = (0usize, 0usize);
    let start = Instant::now();
    for m in msgs {
        let n = if m.first() == Some(&b'[') {
            serde_json::from_slice::<Vec<Point>>(m)
                .expect("valid")
                .len()
        } else {
            serde_json::from_slice::<Point>(m)
                .map(|_| 1)
                .expect("valid")
        };
        points += black_box(n);
        bytes += m.len();
    }
    let s = start.elapsed().as_secs_f64();
    (points as f64 / s, bytes as f64 / s)
}

fn median(mut v: Vec<(f64, f64)>) -> ((f64, f64), f64) {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mid = v[v.len() / 2];
    (mid, (v[v.len() - 1].0 - v[0].0) / mid.0)
}

fn main() {
    println!("| scenario | ours (M points/s) | ours (MB/s) | ours (allocations/message) | serde_json reference (M points/s) | ratio | spread | target |");
    println!("|---|---|---|---|---|---|---|---|");
    for batch in [1000usize, 1] {
        let msgs = payloads(batch);
        let _ = (ours(&msgs), reference(&msgs)); // warm-up
        let (mut a, mut b, mut allocations) = (Vec::new(), Vec::new(), 0.0f64);
        for _ in 0..ROUNDS {
            let (rates, allocs) = ours(&msgs);
            a.push(rates);
            allocations = allocations.max(allocs);
            b.push(reference(&msgs));
        }
        let (((pts, bps), spread), ((rpts, _), _)) = (median(a), median(b));
        let target = if batch == TARGET_BATCH {
            let verdict = if pts >= TARGET { "met" } else { "MISSED" };
            format!(
                "target >= {:.0}M points/s (batch {TARGET_BATCH}): {verdict}",
                TARGET / 1e6
            )
        } else {
            "-".to_string()
        };
        println!(
            "| D decode, batch {batch} | {:.2} | {:.0} | {allocations:.2} | {:.2} | {:.2} | {:.0}% | {target} |",
            pts / 1e6,
            bps / 1e6,
            rpts / 1e6,
            pts / rpts,
            spread * 100.0
        );
    }
}
