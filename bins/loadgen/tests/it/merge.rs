//! `loadgen merge` against reports that lie, overflow, explode or do not belong together: each
//! is refused with one bounded line that names the report and the figure, in bounded memory,
//! and what does belong together (a slow shard, a run of 100,000 shards) still merges.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hdrhistogram::serialization::{Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use test_support::{limit_memory, Mosquitto, TempDir};

use crate::common::{backend, n, publish, BIN};

/// The longest error line any tool prints (the run frame's bound), with room for its note.
const ERROR_LINE_MAX: usize = 2200;

/// Address space a merge of small reports needs at most: a regression that allocates what
/// a report claims fails its allocation under it instead of taking the machine's memory.
const MERGE_MEMORY: u64 = 256 << 20;

struct Merged {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Merged {
    /// The error line (the last line on stderr), checked to be one bounded line.
    fn error(&self) -> &str {
        let line = self.stderr.lines().last().unwrap_or("");
        assert!(
            line.len() <= ERROR_LINE_MAX,
            "an error line of {} bytes",
            line.len()
        );
        line
    }

    fn assert_usage_error(&self, wants: &[&str]) {
        assert_eq!(
            self.code, 2,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        let line = self.error();
        for want in wants {
            assert!(line.contains(want), "wanted '{want}' in: {line}");
        }
        for internal in ["struct ", "Probe", "Report", "enum "] {
            assert!(!line.contains(internal), "an internal name in: {line}");
        }
    }
}

fn merge_with(args: &[&str], env: &[(&str, &str)], memory: Option<u64>) -> Merged {
    let mut cmd = Command::new(BIN);
    cmd.arg("merge")
        .args(args)
        .env_remove("LOADGEN_THRESHOLD")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    if let Some(bytes) = memory {
        limit_memory(&mut cmd, bytes);
    }
    let out = cmd.output().expect("run loadgen merge");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    Merged {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

fn merge(args: &[&str]) -> Merged {
    merge_with(args, &[], Some(MERGE_MEMORY))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The shard reports of a real run: `shards` shards of a QoS 1 fleet, each on its own
/// embedded broker, one after another.
fn shard_reports(dir: &TempDir, shards: u64) -> Vec<Value> {
    (0..shards)
        .map(|i| {
            let out = publish(&[
                "--broker",
                "embedded",
                "--embedded-linger",
                "0s",
                "--devices",
                &(2 * shards).to_string(),
                "--qos",
                "1",
                "--batch",
                "1",
                "--rate",
                "2000",
                "--total",
                &(200 * shards).to_string(),
                "--shards",
                &shards.to_string(),
                "--shard",
                &i.to_string(),
                "--quiet",
            ]);
            out.assert_code(0);
            let r = out.report().clone();
            write(dir, &format!("shard-{i}.json"), &r);
            r
        })
        .collect()
}

fn write(dir: &TempDir, name: &str, v: &Value) -> PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

/// base64 (standard alphabet, padded), without a crate of the test's own.
fn base64_encode(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn encode(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).unwrap();
    base64_encode(&bytes)
}

/// The header of an uncompressed V2 histogram (HdrHistogram's encoding) that claims
/// `payload` bytes of counts.
fn v2_header(payload: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(0x1c84_9313u32.to_be_bytes()); // V2 cookie
    b.extend(payload.to_be_bytes());
    b.extend(0u32.to_be_bytes()); // normalizing offset
    b.extend(3u32.to_be_bytes()); // significant figures
    b.extend(1u64.to_be_bytes()); // lowest discernible
    b.extend(3_600_000_000u64.to_be_bytes()); // highest trackable
    b.extend(1.0f64.to_be_bytes()); // integer to double ratio
    b
}

/// A V2 + DEFLATE histogram whose stream inflates to `mib` MiB (its header claims nearly
/// 4 GiB): the same 1 MiB of zeros, compressed once with a full flush (which makes the block
/// stand alone) and repeated.
fn deflate_bomb(mib: usize) -> String {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::best(), true);
    let mut stream = Vec::with_capacity(1 << 20);
    c.compress_vec(&v2_header(0xffff_ff00), &mut stream, FlushCompress::Full)
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    let mut block = Vec::with_capacity(64 << 10);
    c.compress_vec(&zeros, &mut block, FlushCompress::Full)
        .unwrap();
    assert_eq!(c.total_in() as usize, 40 + zeros.len(), "one pass");
    let mut bytes = Vec::with_capacity(8 + stream.len() + block.len() * mib);
    bytes.extend(0x1c84_9314u32.to_be_bytes()); // V2 + DEFLATE cookie
    for _ in 0..mib {
        stream.extend_from_slice(&block);
    }
    bytes.extend((stream.len() as u32).to_be_bytes());
    bytes.extend(stream);
    base64_encode(&bytes)
}

#[test]
fn merge_refuses_counts_that_overflow_when_added() {
    let dir = TempDir::new("merge-overflow");
    let shards = shard_reports(&dir, 2);
    let half = 1u64 << 63;
    // A count no invariant ties to another: only the sum can catch it.
    let mut a = shards[0].clone();
    let mut b = shards[1].clone();
    a["duplicate_acks"] = half.into();
    b["duplicate_acks"] = half.into();
    let (pa, pb) = (write(&dir, "a.json", &a), write(&dir, "b.json", &b));
    let out = merge(&[s(&pa), s(&pb)]);
    out.assert_usage_error(&["duplicate_acks", "b.json", "a.json"]);

    // The case: points_failed 2^63 twice wrapped to 0 and merged "complete".
    for r in [&mut a, &mut b] {
        r["duplicate_acks"] = 0.into();
        r["points_failed"] = half.into();
    }
    let (pa, pb) = (write(&dir, "a.json", &a), write(&dir, "b.json", &b));
    let out = merge(&[s(&pa), s(&pb)]);
    out.assert_usage_error(&["points_failed", "a.json"]);
}

#[test]
fn merge_refuses_a_shard_whose_figures_do_not_add_up() {
    let dir = TempDir::new("merge-figures");
    let shards = shard_reports(&dir, 2);
    let other = write(&dir, "shard-1.json", &shards[1]);
    let refused = |r: &Value, wants: &[&str]| {
        let p = write(&dir, "bad.json", r);
        merge(&[s(&p), s(&other)]).assert_usage_error(&[&["bad.json"], wants].concat());
    };

    // A latency count of 2^64 - 2 against 200 acknowledged messages.
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    h.record_n(1000, i64::MAX as u64).unwrap();
    h.record_n(2000, i64::MAX as u64).unwrap();
    let mut r = shards[0].clone();
    r["histograms"]["ack_us"] = encode(&h).into();
    refused(&r, &["ack", "messages_acked"]);

    // "complete", and 10 of 200 acknowledged.
    let mut r = shards[0].clone();
    r["points_acked"] = 10.into();
    r["messages_acked"] = 10.into();
    refused(&r, &["points_acked"]);

    // The workers' points do not add up to the shard's.
    let mut r = shards[0].clone();
    r["per_worker"][0]["points_sent"] = 7.into();
    refused(&r, &["per_worker", "points_sent"]);

    // An outcome no run has.
    let mut r = shards[0].clone();
    r["outcome"] = "splendid".into();
    refused(&r, &["outcome"]);

    // Unsent points that do not follow from what was generated and sent.
    let mut r = shards[0].clone();
    r["points_unsent"] = 5.into();
    refused(&r, &["points_unsent"]);

    // "complete", having generated fewer points than it planned.
    let mut r = shards[0].clone();
    let planned = r["points_planned"].as_u64().unwrap();
    r["points_planned"] = (planned * 2).into();
    refused(&r, &["complete", "planned"]);

    // The real shards still merge.
    let p0 = write(&dir, "shard-0.json", &shards[0]);
    let out = merge(&[s(&p0), s(&other)]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

#[test]
fn merge_refuses_histograms_larger_than_its_tools_write_before_decoding_them() {
    let dir = TempDir::new("merge-histograms");
    let shards = shard_reports(&dir, 2);
    let other = write(&dir, "shard-1.json", &shards[1]);

    // 40 bytes that claim 4 GiB of counts.
    let mut r = shards[0].clone();
    r["histograms"]["ack_us"] = base64_encode(&v2_header(0xffff_fff0)).into();
    let p = write(&dir, "claims.json", &r);
    merge(&[s(&p), s(&other)]).assert_usage_error(&["claims.json", "histogram"]);

    // A DEFLATE stream that inflates to 4 GiB from a 5.5 MB report.
    let mut r = shards[0].clone();
    r["histograms"]["ack_us"] = deflate_bomb(4096).into();
    let p = write(&dir, "bomb.json", &r);
    merge(&[s(&p), s(&other)]).assert_usage_error(&["bomb.json", "histogram"]);

    // Parameters no tool of ours uses (5 significant figures up to 2^62).
    let mut big = Histogram::<u64>::new_with_bounds(1, 1 << 62, 5).unwrap();
    big.record(5).unwrap();
    let mut r = shards[0].clone();
    r["histograms"]["connect_us"] = encode(&big).into();
    let p = write(&dir, "params.json", &r);
    merge(&[s(&p), s(&other)]).assert_usage_error(&["params.json", "histogram"]);
}

#[test]
fn merge_bounds_the_shards_it_accounts_for_and_names_the_missing_as_ranges() {
    let dir = TempDir::new("merge-shard-count");
    let shards = shard_reports(&dir, 1);

    // A report that claims 2^63 shards: refused, not a list of 2^63 - 1 missing ones.
    let mut r = shards[0].clone();
    r["shards"] = (1u64 << 63).into();
    let p = write(&dir, "huge.json", &r);
    merge(&[s(&p)]).assert_usage_error(&["huge.json", "100,000"]);
    let p0 = dir.path("shard-0.json");
    merge(&["--shards", "9223372036854775808", s(&p0)])
        .assert_usage_error(&["--shards", "100,000"]);

    // 100,000 shards, of which one is here: the missing ones are a range.
    let mut r = shards[0].clone();
    r["shards"] = 100_000.into();
    let p = write(&dir, "one-of-many.json", &r);
    let merged = dir.path("merged.json");
    let out = merge(&["--report-json", s(&merged), s(&p)]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.error().contains("shards 1-99999 of 100000 are missing"),
        "{}",
        out.stderr
    );
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    test_support::assert_matches_schema("schema/publisher-report.schema.json", &m);
    assert_eq!(m["merged"]["shards_missing"], json!(["1-99999"]));
    assert_eq!(m["merged"]["shards_present"], json!(["0"]));
    assert!(
        out.stdout.contains("MISSING shards 1-99999"),
        "{}",
        out.stdout
    );

    // Every other shard of 1,000 present: 500 missing ranges, summarised on the error line;
    // the report keeps them all.
    let many = TempDir::new("merge-many-shards");
    for i in (1..1000).step_by(2) {
        let mut r = shards[0].clone();
        r["shards"] = 1000.into();
        r["shard"] = i.into();
        write(&many, &format!("shard-{i}.json"), &r);
    }
    let merged = dir.path("merged-many.json");
    let out = merge_with(&["--report-json", s(&merged), s(&many.0)], &[], None);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let line = out.error();
    assert!(line.contains("shards 0, 2, 4"), "{line}");
    assert!(line.contains("more"), "{line}");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    assert_eq!(m["merged"]["shards_missing"].as_array().unwrap().len(), 500);
}

#[test]
fn merge_reads_one_report_at_a_time_and_refuses_one_past_its_size_limit() {
    let dir = TempDir::new("merge-one-at-a-time");
    let shards = shard_reports(&dir, 2);
    // Each report padded to 80 MB (whitespace is JSON): two at once would not fit.
    let pad = " ".repeat(80 << 20);
    let paths: Vec<PathBuf> = shards
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let p = dir.path(&format!("padded-{i}.json"));
            std::fs::write(&p, format!("{r}{pad}")).unwrap();
            p
        })
        .collect();
    drop(pad);
    let out = merge_with(&[s(&paths[0]), s(&paths[1])], &[], Some(128 << 20));
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // A report past the stated limit (2 GiB; sparse, so it costs no disk) is refused
    // before it is read.
    let big = dir.path("big.json");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((2 << 30) + 1)
        .unwrap();
    merge(&[s(&big)]).assert_usage_error(&["big.json", "larger than 2 GiB"]);
}

#[test]
fn merge_says_what_is_wrong_with_each_file_it_cannot_use() {
    let dir = TempDir::new("merge-files");
    let cases: Vec<(PathBuf, &str)> = vec![
        (dir.path("nowhere.json"), "does not exist"),
        (PathBuf::from("/dev/zero"), "not a regular file"),
        (
            write(&dir, "array.json", &json!([])),
            "is JSON but not a report",
        ),
        (
            write(&dir, "object.json", &json!({"points": 1})),
            "is JSON but not a report",
        ),
        (
            write(&dir, "string.json", &json!("points_sent")),
            "is JSON but not a report",
        ),
    ];
    for (p, want) in &cases {
        merge(&[s(p)]).assert_usage_error(&[s(p), want]);
    }
    let text = dir.path("text.json");
    std::fs::write(&text, "shard 0 sent 4000 points\n").unwrap();
    merge(&[s(&text)]).assert_usage_error(&["text.json", "is not JSON"]);

    // A backend report among publisher reports: the kind expected is named.
    let shards = shard_reports(&dir, 1);
    let member = write(
        &dir,
        "member.json",
        &json!({"schema_version": 5, "tool": "backend-sub", "points_received": 1}),
    );
    let p0 = dir.path("shard-0.json");
    merge(&[s(&p0), s(&member)]).assert_usage_error(&["member.json", "publisher"]);
    drop(shards);
}

#[test]
fn merge_names_the_variable_a_bad_threshold_came_from() {
    let dir = TempDir::new("merge-threshold-env");
    shard_reports(&dir, 1);
    let p0 = dir.path("shard-0.json");
    let out = merge_with(&[s(&p0)], &[("LOADGEN_THRESHOLD", "ack_p99<5ms")], None);
    out.assert_usage_error(&["unknown field 'ack_p99'", "LOADGEN_THRESHOLD"]);
    let out = merge_with(&["--threshold", "ack_p99<5ms", s(&p0)], &[], None);
    out.assert_usage_error(&["unknown field 'ack_p99'"]);
    assert!(!out.stderr.contains("LOADGEN_THRESHOLD"), "{}", out.stderr);
}

#[test]
fn failed_thresholds_are_summarised_on_the_error_line_and_listed_in_the_report() {
    let dir = TempDir::new("merge-many-thresholds");
    shard_reports(&dir, 1);
    let p0 = dir.path("shard-0.json");
    let thresholds: Vec<String> = (1..=3000).map(|i| format!("points_sent>={i}G")).collect();
    let merged = dir.path("merged.json");
    let out = merge_with(
        &["--report-json", s(&merged), s(&p0)],
        &[("LOADGEN_THRESHOLD", &thresholds.join(";"))],
        None,
    );
    assert_eq!(out.code, 99, "{}", out.stderr);
    let line = out.error();
    assert!(line.contains("points_sent>=1G"), "{line}");
    assert!(line.contains("2,995 more"), "{line}");
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    assert_eq!(m["thresholds"].as_array().unwrap().len(), 3000);

    // The same of `loadgen pub`, whose run frame prints it.
    let out = Command::new(BIN)
        .args([
            "pub",
            "--broker",
            "embedded",
            "--embedded-linger",
            "0s",
            "--total",
            "10",
            "--quiet",
        ])
        .env("LOADGEN_THRESHOLD", thresholds.join(";"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(99));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr.lines().last().unwrap();
    assert!(line.len() <= ERROR_LINE_MAX, "{} bytes", line.len());
    assert!(line.contains("2,995 more"), "{line}");
}

#[test]
fn merge_refuses_shards_of_different_runs_and_keeps_a_slow_shard() {
    let dir = TempDir::new("merge-runs");
    let shards = shard_reports(&dir, 2);
    let shift = |r: &Value, secs: u64| {
        let mut r = r.clone();
        for key in ["started_at", "ended_at"] {
            let t =
                humantime_parse(r[key].as_str().unwrap()) + std::time::Duration::from_secs(secs);
            r[key] = humantime_fmt(t).into();
        }
        r
    };
    let p0 = dir.path("shard-0.json");
    // Six hours later: another run.
    let late = write(&dir, "late.json", &shift(&shards[1], 6 * 3600));
    merge(&[s(&p0), s(&late)]).assert_usage_error(&["late.json", "different runs"]);
    let out = merge(&["--max-gap", "7h", s(&p0), s(&late)]);
    assert_eq!(out.code, 0, "{}", out.stderr);

    // A slow shard, started with the others and done ten minutes later, is of the run.
    let mut slow = shards[1].clone();
    let end =
        humantime_parse(slow["ended_at"].as_str().unwrap()) + std::time::Duration::from_secs(600);
    slow["ended_at"] = humantime_fmt(end).into();
    let slow = write(&dir, "slow.json", &slow);
    let out = merge(&[s(&p0), s(&slow)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

fn humantime_parse(t: &str) -> std::time::SystemTime {
    crate::shards::humantime_parse(t)
}

/// RFC 3339 with microseconds, UTC, as the reports write it.
fn humantime_fmt(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// A member's report of a share group, from a real run: 2 devices, 200 points, QoS 1.
pub(crate) fn member_report() -> Value {
    let m = Mosquitto::start();
    let b = backend(&[
        "--broker",
        &m.url(),
        "--report-devices",
        "--expect",
        "200",
        "--idle-timeout",
        "5s",
        "--qos",
        "1",
    ]);
    publish(&[
        "--broker",
        &m.url(),
        "--devices",
        "2",
        "--qos",
        "1",
        "--total",
        "200",
        "--rate",
        "max",
        "--quiet",
    ])
    .assert_code(0);
    let (code, r) = b.wait();
    assert_eq!(code, 0, "{r:#}");
    r
}

#[test]
fn merge_refuses_member_reports_whose_figures_do_not_add_up() {
    let dir = TempDir::new("merge-members");
    let r = member_report();
    assert_eq!(n(&r, "points_unique"), 200);
    // Its one connect and subscription, phase by phase.
    assert_eq!(
        n(&r["connect_phases_us"]["tcp_connect_us"], "count"),
        1,
        "{r:#}"
    );
    assert_eq!(n(&r["connect_phases_us"]["connack_us"], "count"), 1);
    assert_eq!(n(&r["suback_latency_us"], "count"), 1);
    let good = write(&dir, "member.json", &r);
    let out = merge(&["--expect", "200", s(&good)]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    // The merged report rebuilds the phases from the members' histograms (adding two
    // real members' is the share-group test's, in subfleet.rs for the fleet's report).
    let merged = dir.path("merged.json");
    let out = merge(&["--expect", "200", "--report-json", s(&merged), s(&good)]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    test_support::assert_matches_schema("schema/backend-report.schema.json", &m);
    assert_eq!(
        n(&m["connect_phases_us"]["connack_us"], "count"),
        1,
        "{m:#}"
    );
    assert_eq!(n(&m["suback_latency_us"], "count"), 1);
    let refused = |r: &Value, wants: &[&str]| {
        let p = write(&dir, "bad.json", r);
        merge(&[s(&p)]).assert_usage_error(&[&["bad.json"], wants].concat());
    };

    // Ranges that claim every seq for a device that received 100.
    let mut bad = r.clone();
    bad["devices"][0]["received_ranges"] = json!(["0-18446744073709551615"]);
    refused(
        &bad,
        &[
            "received_ranges",
            bad["devices"][0]["device_id"].as_str().unwrap(),
        ],
    );

    // Ranges that overlap within one member: its own count would hide their duplicates.
    let mut bad = r.clone();
    bad["devices"][0]["received_ranges"] = json!(["0-60", "40-99"]);
    refused(&bad, &["received_ranges"]);

    // A device listed twice: its points counted twice, as if two members had it.
    let mut bad = r.clone();
    let first = bad["devices"][0].clone();
    bad["devices"].as_array_mut().unwrap().push(first);
    refused(&bad, &["twice"]);

    // A latency count of 2^64 - 2 against 200 points.
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
    h.record_n(1000, i64::MAX as u64).unwrap();
    h.record_n(2000, i64::MAX as u64).unwrap();
    let mut bad = r.clone();
    bad["histograms"]["latency_us"] = encode(&h).into();
    refused(&bad, &["latency", "points_received"]);

    // Unique points that are not the devices' own.
    let mut bad = r.clone();
    bad["points_unique"] = 150.into();
    refused(&bad, &["points_unique"]);

    // A sink that stored more rows than the member had points: its counts would overflow
    // the group's (2^63 twice).
    let mut bad = r.clone();
    bad["sink"] = json!({
        "database": "postgres://db/x", "table": "points", "connections": 1, "batch_rows": 100,
        "rows_written": 1u64 << 63, "rows_failed": 0, "rows_rejected": 0, "batches": 1,
        "batches_failed": 0, "retries": 0, "rows_per_s": 1.0, "paused_s": 0.0,
        "max_buffered_rows": 1, "errors": []
    });
    refused(&bad, &["sink", "rows_written"]);

    // A histogram claiming 4 GiB of counts.
    let mut bad = r.clone();
    bad["histograms"]["latency_us"] = base64_encode(&v2_header(0xffff_fff0)).into();
    refused(&bad, &["histogram"]);
}

#[test]
fn merge_adds_up_the_connect_phases_and_reads_a_shard_from_before_them() {
    let dir = TempDir::new("merge-phases");
    let shards = shard_reports(&dir, 2);
    for r in &shards {
        let p = &r["connect_phases_us"];
        assert_eq!(n(&p["tcp_connect_us"], "count"), 2, "{r:#}");
        assert_eq!(n(&p["connack_us"], "count"), 2, "{r:#}");
        assert!(p["tls_handshake_us"].is_null());
        test_support::assert_matches_schema("schema/publisher-report.schema.json", r);
    }
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let (p0, p1) = (dir.path("shard-0.json"), dir.path("shard-1.json"));
    let merged = dir.path("merged.json");
    let out = merge(&["--report-json", s(&merged), s(&p0), s(&p1)]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let m = read(&merged);
    test_support::assert_matches_schema("schema/publisher-report.schema.json", &m);
    assert_eq!(n(&m["connect_phases_us"]["tcp_connect_us"], "count"), 4);
    assert_eq!(n(&m["connect_phases_us"]["connack_us"], "count"), 4);

    // A shard written before the phases were measured: no such fields at all.
    let mut old = shards[1].clone();
    old.as_object_mut().unwrap().remove("connect_phases_us");
    for h in ["tcp_us", "tls_us", "connack_us"] {
        old["histograms"].as_object_mut().unwrap().remove(h);
    }
    let old = write(&dir, "old.json", &old);
    let out = merge(&["--report-json", s(&merged), s(&p0), s(&old)]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let m = read(&merged);
    test_support::assert_matches_schema("schema/publisher-report.schema.json", &m);
    assert_eq!(n(&m["connect_phases_us"]["tcp_connect_us"], "count"), 2);
}
