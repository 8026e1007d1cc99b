//! E: encoding throughput on one core, for 1000-point batches and for single objects.
//!
//! The reference is serde_json writing the same points through the format's own `Point`
//! struct, measured in the same run, so the ratio holds on a noisy machine. Prints a
//! Markdown table: `cargo bench -p loadgen-benches --bench encode`. A counting allocator
//! shows how many allocations our path makes per point (the target is none).
//!
//! `--gate` fails, naming the scenario, when our path allocates at all (the target), or when
//! its rate falls below [`GATE_RATIO_BATCH`] / [`GATE_RATIO_SINGLE`] of serde_json's in the
//! same run. `--quick` changes nothing (the bench takes seconds); `--json PATH` writes
//! `encode.json` beside PATH (default `target/bench/encode.json`).

use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use point_format::{Encoder, Point};
use publisher_core::source::PointSource;
use serde_json::json;

mod alloc_count;
mod flags;

const DEVICE: &str = "frontend1_ultra_high_perf_device";
const ROUNDS: usize = 5;
const POINTS_PER_ROUND: usize = 2_000_000;
const TIMESTAMP_US: u64 = 1_763_798_400_123_456;
// CI gates, ours / serde_json in points/s (the median of the rounds' own ratios since
// 2026-12-07 evening; the figures below are the ratio of the two sides' medians, measured
// before), within ~15% of what
// `--quick` measured on a quiet machine: 0.85 x the median of 6 runs, or 0.95 x the lowest
// run when that is lower, rounded down.
// batch 1000: 6.20 6.24 6.08 6.80 6.29 6.04 (median 6.22): gate 5.2
// batch 1:    3.79 4.05 3.36 3.72 3.95 3.88 (median 3.84, lowest 3.36): gate 3.1
const GATE_RATIO_BATCH: f64 = 5.2;
const GATE_RATIO_SINGLE: f64 = 3.1;

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
    let flags::Flags {
        quick,
        gate,
        json: json_path,
    } = flags::parse("encode.json");
    // A few seconds in all: `--quick` runs the same rounds, so that the gate sees the median
    // of five.
    let rounds = ROUNDS;
    let _ = (ours(1000), reference(1000)); // warm-up
    println!(
        "| scenario | ours (M points/s) | serde_json reference (M points/s) | ratio (median of the rounds' own) | spread | gate | allocations per point (target 0) | pass |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (mut rows, mut failures) = (Vec::new(), Vec::new());
    for (batch, gate_ratio) in [(1000usize, GATE_RATIO_BATCH), (1, GATE_RATIO_SINGLE)] {
        let (mut a, mut b, mut allocs) = (Vec::new(), Vec::new(), 0.0f64);
        for _ in 0..rounds {
            let (rate, per_point) = ours(batch);
            a.push(rate);
            allocs = allocs.max(per_point);
            b.push(reference(batch));
        }
        // The median of the rounds' own ratios (ours, then the reference, moments apart), as in
        // bench D: a burst of host noise slows one pair, where the ratio of the two sides'
        // medians took them from different moments (a gate run: 5.26x against 5.2x, ours'
        // rounds spread 44%; 6.4-7.4x in the runs around it).
        let mut ratios: Vec<f64> = a.iter().zip(&b).map(|(o, r)| o / r).collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = ratios[ratios.len() / 2];
        let ((oa, sa), (ob, _)) = (median(a), median(b));
        let id = format!("E encode, batch {batch}");
        if ratio < gate_ratio {
            failures.push(format!(
                "{id}: {ratio:.2}x serde_json, below the gate {gate_ratio}x"
            ));
        }
        if allocs > 0.0 {
            failures.push(format!(
                "{id}: {allocs:.4} allocations per point, the target is none"
            ));
        }
        let pass = ratio >= gate_ratio && allocs == 0.0;
        println!(
            "| {id} | {:.2} | {:.2} | {ratio:.2} | {:.0}% | >= {gate_ratio}x | {allocs:.4} | {} |",
            oa / 1e6,
            ob / 1e6,
            sa * 100.0,
            if pass { "yes" } else { "NO" }
        );
        rows.push(json!({"scenario": id, "batch": batch, "rounds": rounds,
            "ours_points_per_s": oa, "reference_points_per_s": ob, "ratio": ratio,
            "spread": sa, "gate": gate_ratio, "allocations_per_point": allocs, "pass": pass}));
    }
    if let Some(dir) = json_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let doc = json!({"quick": quick, "scenarios": rows});
    if let Err(e) = std::fs::write(&json_path, format!("{doc:#}\n")) {
        eprintln!("cannot write {}: {e}", json_path.display());
    }
    if gate && !failures.is_empty() {
        for f in &failures {
            eprintln!("REGRESSION: {f}");
        }
        std::process::exit(1);
    }
}
