//! D: decoding throughput on one core, the backend's decoder (one pass over any valid point
//! payload, simd-json for what that cannot prove; into `point_format::Point`, borrowed device
//! ids) against serde_json decoding the same payloads into the same struct, measured in the
//! same run, for our encoder's form (batches of 1000 and single objects) and for the shapes
//! other writers produce (`shapes.rs`): the seed publisher's key order as orjson writes it,
//! the same with `, ` / `: ` spacing and pretty-printed, with extra and nested members, and
//! with a device id escaped as `json.dumps` writes non-ASCII, in batches of 1000 (and the seed's order one point a
//! message). The target is 10M points/s per core for batches of 1000. A counting allocator
//! shows how many allocations our path makes per message: the output `Vec` the backend
//! makes for each message, and nothing per point. Rates are per second of the bench
//! thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), so points/s per core.
//! `cargo bench -p loadgen-benches --bench decode`
//!
//! `--gate` fails, naming the scenario, when our encoder's batches fall below the target (an
//! absolute rate: the issue's own figure, like the job targets; the other shapes print it
//! beside their figures), when a message costs more than its one output `Vec`, or when the
//! rate falls below the scenario's gate ratio to serde_json in the same run.
//! `--quick` changes nothing (the bench takes seconds); `--json PATH` writes `decode.json`
//! beside PATH (default `target/bench/decode.json`).

use std::hint::black_box;

use backend_core::decode::Decoder;
use point_format::{Encoder, Point};
use publisher_core::source::PointSource;
use serde_json::json;

mod alloc_count;
mod flags;
mod shapes;

use shapes::{Layout, Shape, ESCAPED_ID, EXTRA_NESTED};

const DEVICE: &str = "frontend1_ultra_high_perf_device";
const ROUNDS: usize = 5;
const POINTS_PER_ROUND: usize = 1_000_000;
/// Points per second the decoder must reach for batches of [`TARGET_BATCH`].
const TARGET: f64 = 10e6;
const TARGET_BATCH: usize = 1000;
/// Allocations per message at most: the output `Vec` the backend makes for each message,
/// and the copy buffer growing to its size once in a round (a few per 1,000 messages).
const MAX_ALLOCATIONS_PER_MESSAGE: f64 = 1.01;
// CI gates, ours / serde_json in points/s (the median of the rounds' own ratios since
// 2026-12-07 evening; the figures below, measured before, are the ratio of the two sides'
// medians, which on a quiet run is the same within a few percent), within ~15% of what
// `--quick` measured: 0.85 x the median of the runs, or 0.95 x the lowest run when that is
// lower, rounded down.
// Our encoder's form, measured on a quiet machine with a wall clock:
// batch 1000: 3.63 3.67 3.70 4.13 3.94 3.70 (median 3.70; 14.3-19.1M points/s): gate 3.1
// batch 1:    1.99 2.11 2.13 1.99 1.93 2.01 (median 2.00): gate 1.7
// Rates are now per CPU second of the bench thread. The other shapes, measured on
// 2026-12-07 on the 2-core machine shared with four other sessions' builds (load 4-13, NOT
// quiet: the lead re-measures at merge), three `--quick` runs (the first two before the
// canonical path went back in front, which these shapes leave within their first point),
// points/s in M beside each ratio; our form measured 3.86 (20.1M) and 2.16 (11.5M) in the
// third:
// seed order (orjson), 1000:   2.64 (18.4) 2.69 (18.8) 2.45 (18.6): gate 2.2
// `, ` `: ` spacing, 1000:     2.04 (12.8) 2.67 (18.0) 2.41 (18.1): gate 1.9
// pretty-printed, 1000:        2.25 (13.9) 2.46 (15.6) 2.22 (16.0): gate 1.9
// extra and nested, 1000:      2.34 (8.8)  2.39 (9.8)  2.26 (9.3):  gate 1.9 (target missed)
// escaped id (json.dumps), 1000: 3.44 (18.4) 3.51 (18.9) 3.47 (17.0): gate 2.9
// seed order (orjson), 1:      1.22 (9.2)  1.13 (8.0)  1.08 (7.9):  gate 0.9
// Extra and nested again once skipped strings went eight bytes at a time and skipped short
// integers by their digits (2026-12-07 08:50-08:52, load 2.6-3.4, spreads 6-29%):
// 2.51 (9.2) 2.45 (9.0) 2.50 (9.7) 2.59 (10.4, load 3.6): gate 2.1 (10.07 at load
// 1.9 with the string skip alone; not yet >= 10M reliably on this machine).
// Re-measured quietly on 2026-12-07 (nothing else running): the two CI runs that failed
// here right after the test suite (10:05 on batch 1, seed order and pretty; 11:10 on the
// escaped id), the rerun after the first, and three `--quick` runs at 11:14-11:18, spreads
// of the rounds 4-66%:
// batch 1000:        -    3.66 -    3.63 3.69 3.60 (median 3.65): gate 3.1 (kept)
// batch 1:           1.62 2.14 1.98 2.11 2.30 2.21 (median 2.13, 0.95 x 1.62): gate 1.5
// seed order, 1000:  2.13 2.59 2.33 2.46 2.83 2.39 (median 2.43, 0.95 x 2.13): gate 2.0
// spacing, 1000:     -    2.56 -    2.09 2.65 2.27 (median 2.42, 0.95 x 2.09): gate 1.9 (kept)
// pretty, 1000:      1.83 2.21 1.93 2.14 2.31 2.25 (median 2.18, 0.95 x 1.83): gate 1.7
// extra and nested:  -    2.27 -    2.02 2.22 2.36 (median 2.25, 0.85 x 2.25 = 1.91): gate 1.9
// escaped id, 1000:  -    2.80 -    3.38 3.26 3.13 (median 3.20, 0.95 x 2.80): gate 2.6
// seed order, 1:     -    1.12 -    1.10 1.18 1.17 (median 1.15): gate 0.9 (kept)
// The shapes' gates above them came from loaded runs, which favoured ours over serde_json.
// 2026-12-08: the canonical path reads the seed's key order (it handed it to the one-pass
// path at its first point before), and the seed's timestamps take 17 digits three times in
// four, as time.time()'s do (`shapes::timestamp`). Two `--quick` runs with both (points/s in
// M): seed order, 1000: 2.99 (16.95) 3.04 (17.13): gate 2.5 (0.85 x 3.0, rounded down);
// seed order, 1: 2.24 (12.4) 2.13 (11.5), and 2.14 the same morning with the old
// timestamps: gate 1.8 (0.85 x 2.14). The others held: batch 1000 3.70 3.80, batch 1 2.85
// 2.79, spacing 2.32 2.32, pretty 2.14 2.15, extra and nested 2.12 2.13 (7.5-7.6M points/s:
// the target is still missed), escaped id 3.39 3.34.
const GATE_RATIO_BATCH: f64 = 3.1;
const GATE_RATIO_SINGLE: f64 = 1.5;
const GATE_SEED: f64 = 2.5;
const GATE_SPACED: f64 = 1.9;
const GATE_PRETTY: f64 = 1.7;
const GATE_EXTRA: f64 = 1.9;
const GATE_ESCAPES: f64 = 2.6;
const GATE_SEED_SINGLE: f64 = 1.8;

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

/// The same number of points in another writer's shape.
fn shaped_payloads(shape: &Shape, batch: usize) -> Vec<Vec<u8>> {
    (0..(POINTS_PER_ROUND / batch) as u64)
        .map(|m| {
            let mut buf = Vec::new();
            let first = m * batch as u64;
            shape.message(first..first + batch as u64, &mut buf);
            buf
        })
        .collect()
}

/// One row of the table: a payload shape, how many points a message, its gate.
struct Scenario {
    id: &'static str,
    batch: usize,
    /// None: our encoder's form.
    shape: Option<Shape>,
    /// Ours / serde_json at least.
    gate: f64,
}

fn scenarios() -> Vec<Scenario> {
    let seed = Shape::SEED;
    let with = |layout, extra, device_id, escaped_key| Shape {
        layout,
        extra,
        device_id,
        escaped_key,
    };
    vec![
        Scenario {
            id: "D decode, batch 1000",
            batch: 1000,
            shape: None,
            gate: GATE_RATIO_BATCH,
        },
        Scenario {
            id: "D decode, batch 1",
            batch: 1,
            shape: None,
            gate: GATE_RATIO_SINGLE,
        },
        Scenario {
            id: "D seed order (orjson), batch 1000",
            batch: 1000,
            shape: Some(seed),
            gate: GATE_SEED,
        },
        Scenario {
            id: "D seed order, `, ` `: ` spacing, batch 1000",
            batch: 1000,
            shape: Some(with(Layout::Spaced, "", seed.device_id, false)),
            gate: GATE_SPACED,
        },
        Scenario {
            id: "D seed order, pretty-printed, batch 1000",
            batch: 1000,
            shape: Some(with(Layout::Pretty, "", seed.device_id, false)),
            gate: GATE_PRETTY,
        },
        Scenario {
            id: "D seed order + extra and nested members, batch 1000",
            batch: 1000,
            shape: Some(with(Layout::Compact, EXTRA_NESTED, seed.device_id, false)),
            gate: GATE_EXTRA,
        },
        Scenario {
            id: "D escaped device id (json.dumps), batch 1000",
            batch: 1000,
            shape: Some(with(Layout::Compact, "", ESCAPED_ID, false)),
            gate: GATE_ESCAPES,
        },
        Scenario {
            id: "D seed order (orjson), batch 1",
            batch: 1,
            shape: Some(seed),
            gate: GATE_SEED_SINGLE,
        },
    ]
}

/// (points/s, bytes/s) of the backend's decoder, copying each payload as the backend does,
/// and allocations per message.
fn ours(msgs: &[Vec<u8>]) -> ((f64, f64), f64) {
    let mut buf = Vec::new();
    let mut decoder = Decoder::default();
    let (mut points, mut bytes) = (0usize, 0usize);
    let allocations = alloc_count::allocations();
    let start = thread_cpu_s();
    for m in msgs {
        buf.clear();
        buf.extend_from_slice(m);
        let mut out = Vec::new();
        decoder.decode(&mut buf, &mut out).expect("valid payload");
        points += black_box(out.len());
        bytes += m.len();
    }
    let s = thread_cpu_s() - start;
    let allocations = alloc_count::allocations() - allocations;
    (
        (points as f64 / s, bytes as f64 / s),
        allocations as f64 / msgs.len() as f64,
    )
}

fn reference(msgs: &[Vec<u8>]) -> (f64, f64) {
    let (mut points, mut bytes) = (0usize, 0usize);
    let start = thread_cpu_s();
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
    let s = thread_cpu_s() - start;
    (points as f64 / s, bytes as f64 / s)
}

/// CPU seconds this thread has run: rates per second of CPU are rates per core, which a
/// machine shared with other work does not lower by taking the core away (a wall clock
/// counted the time the bench waited for a core, on a machine with builds beside it).
fn thread_cpu_s() -> f64 {
    // SAFETY: a zeroed timespec is valid, and clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn median(mut v: Vec<(f64, f64)>) -> ((f64, f64), f64) {
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mid = v[v.len() / 2];
    (mid, (v[v.len() - 1].0 - v[0].0) / mid.0)
}

fn main() {
    let flags::Flags {
        quick,
        gate,
        json: json_path,
    } = flags::parse("decode.json");
    // A few seconds in all: `--quick` runs the same rounds, so that the gate sees the median
    // of five.
    let rounds = ROUNDS;
    println!("| scenario | ours (M points/s, one core) | ours (MB/s) | ours (allocations/message, at most {MAX_ALLOCATIONS_PER_MESSAGE}) | serde_json reference (M points/s) | ratio (median of the rounds' own) | spread | gate | target | pass |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let (mut rows, mut failures) = (Vec::new(), Vec::new());
    for sc in scenarios() {
        let (batch, gate_ratio) = (sc.batch, sc.gate);
        let msgs = match &sc.shape {
            None => payloads(batch),
            Some(shape) => shaped_payloads(shape, batch),
        };
        let _ = (ours(&msgs), reference(&msgs)); // warm-up
        let (mut a, mut b, mut allocations) = (Vec::new(), Vec::new(), 0.0f64);
        for _ in 0..rounds {
            let (rates, allocs) = ours(&msgs);
            a.push(rates);
            allocations = allocations.max(allocs);
            b.push(reference(&msgs));
        }
        // The ratio is the median of the rounds' own ratios (each round runs ours, then the
        // reference, on the same core moments apart): a burst of the host's noise then slows
        // one pair, where a ratio of the two sides' medians took ours from one moment and
        // the reference from another (1.78x and 1.88x against a gate of 1.9x in two gate
        // runs during such a burst, spreads 30-50%, and 2.14x three times right after).
        let mut ratios: Vec<f64> = a.iter().zip(&b).map(|(o, r)| o.0 / r.0).collect();
        ratios.sort_by(f64::total_cmp);
        let ratio = ratios[ratios.len() / 2];
        let (((pts, bps), spread), ((rpts, _), _)) = (median(a), median(b));
        let id = sc.id;
        let target_met = batch != TARGET_BATCH || pts >= TARGET;
        let target = if batch == TARGET_BATCH {
            format!(
                ">= {:.0}M points/s: {}",
                TARGET / 1e6,
                if target_met { "met" } else { "MISSED" }
            )
        } else {
            "-".to_string()
        };
        // The target gates our encoder's form, as before; the other shapes print theirs
        // beside their figures and are gated on their ratio to serde_json.
        let target_gated = sc.shape.is_none();
        if !target_met && target_gated {
            failures.push(format!(
                "{id}: {:.2}M points/s, below the target {:.0}M",
                pts / 1e6,
                TARGET / 1e6
            ));
        }
        if ratio < gate_ratio {
            failures.push(format!(
                "{id}: {ratio:.2}x serde_json, below the gate {gate_ratio}x"
            ));
        }
        if allocations > MAX_ALLOCATIONS_PER_MESSAGE {
            failures.push(format!(
                "{id}: {allocations:.2} allocations per message, more than the output Vec"
            ));
        }
        let pass = (target_met || !target_gated)
            && ratio >= gate_ratio
            && allocations <= MAX_ALLOCATIONS_PER_MESSAGE;
        println!(
            "| {id} | {:.2} | {:.0} | {allocations:.2} | {:.2} | {ratio:.2} | {:.0}% | >= {gate_ratio}x | {target} | {} |",
            pts / 1e6,
            bps / 1e6,
            rpts / 1e6,
            spread * 100.0,
            if pass { "yes" } else { "NO" }
        );
        rows.push(json!({"scenario": id, "batch": batch, "rounds": rounds,
            "ours_ns_per_point": 1e9 / pts,
            "ours_points_per_s": pts, "ours_bytes_per_s": bps, "reference_points_per_s": rpts,
            "ratio": ratio, "spread": spread, "gate": gate_ratio,
            "target_points_per_s": (batch == TARGET_BATCH).then_some(TARGET),
            "allocations_per_message": allocations, "pass": pass}));
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
