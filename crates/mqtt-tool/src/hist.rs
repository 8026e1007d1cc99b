//! Histograms inside reports: HdrHistogram's V2 + DEFLATE encoding in base64 (the form its
//! interval logs use), so that reports of shards merge exactly (histograms added, never
//! percentiles averaged), and the interval log `--hdr-log` writes.
//!
//! A report's histogram comes from outside, and HdrHistogram's deserializer allocates what
//! the input claims (its payload length, its range). [`decode`] reads the V2 header itself
//! first and refuses a histogram larger than any our tools write ([`MAX_SIGFIG`],
//! [`MAX_HIGHEST`]), inflates with a hard cap, and only then hands the bounded bytes over.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime};

pub use mqtt_engine::stats::{histogram, record_clamped, MAX_TRACKED_US};

use base64::Engine;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

/// `h` as base64 of its V2 + DEFLATE encoding; `None` when it is empty.
pub fn encode(h: &Histogram<u64>) -> Option<String> {
    if h.is_empty() {
        return None;
    }
    let mut bytes = Vec::new();
    V2DeflateSerializer::new().serialize(h, &mut bytes).ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The most significant figures a histogram of our tools keeps (they all keep 3).
pub const MAX_SIGFIG: u8 = 3;
/// The highest value a histogram of our tools tracks, µs: a year (job-pub's lateness; the
/// latencies stop at an hour).
pub const MAX_HIGHEST: u64 = 366 * 24 * 3_600_000_000;
/// V2's header: cookie, payload length, normalizing offset, significant figures, lowest and
/// highest value, integer-to-double ratio.
const V2_HEADER: usize = 40;
/// The largest V2 encoding of a histogram within [`MAX_SIGFIG`] and [`MAX_HIGHEST`]: its
/// header and every count as the longest varint (9 bytes); 36,864 counts at most (a test
/// below holds it to HdrHistogram's own arithmetic).
const MAX_V2_BYTES: usize = V2_HEADER + 9 * 36_864;
const V2_COOKIE: u32 = 0x1c84_9313;
const V2_DEFLATE_COOKIE: u32 = 0x1c84_9314;

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The histogram of [`encode`]'s text; the error says what is wrong with it. Nothing is
/// allocated beyond what a histogram of our tools can need ([`MAX_V2_BYTES`]).
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    let v2 = match be_u32(&bytes, 0) {
        Some(V2_COOKIE) => bytes,
        Some(V2_DEFLATE_COOKIE) => {
            let len = be_u32(&bytes, 4).ok_or("its DEFLATE header is cut short")? as usize;
            let stream = bytes
                .get(8..8 + len)
                .ok_or("its DEFLATE stream is shorter than its header says")?;
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(stream)
                .take(MAX_V2_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| format!("its DEFLATE stream cannot be inflated ({e})"))?;
            if out.len() > MAX_V2_BYTES {
                return Err(format!(
                    "it inflates to more than {MAX_V2_BYTES} bytes, more than any histogram loadgen writes"
                ));
            }
            out
        }
        _ => return Err("not an HdrHistogram (it does not begin with a V2 cookie)".into()),
    };
    check_v2_header(&v2)?;
    Deserializer::new()
        .deserialize(&mut v2.as_slice())
        .map_err(|e| format!("not an HdrHistogram ({e})"))
}

/// Refuses a V2 encoding (uncompressed) whose header asks for more than a histogram of our
/// tools: a payload longer than the bytes there are or than its range can need, more
/// significant figures, a higher range.
fn check_v2_header(v2: &[u8]) -> Result<(), String> {
    let (Some(V2_COOKIE), Some(payload), Some(sigfig), Some(low), Some(high)) = (
        be_u32(v2, 0),
        be_u32(v2, 4),
        be_u32(v2, 12),
        be_u64(v2, 16),
        be_u64(v2, 24),
    ) else {
        return Err("not an HdrHistogram (its V2 header is cut short)".into());
    };
    if sigfig > u32::from(MAX_SIGFIG)
        || low == 0
        || high > MAX_HIGHEST
        || high < low.saturating_mul(2)
    {
        return Err(format!(
            "its range ({low} to {high} at {sigfig} significant figures) is not one loadgen writes \
             (from 1 to at most {MAX_HIGHEST} at {MAX_SIGFIG})"
        ));
    }
    let payload = payload as usize;
    if payload > v2.len() - V2_HEADER.min(v2.len()) || payload + V2_HEADER > MAX_V2_BYTES {
        return Err(format!(
            "it claims {payload} bytes of counts, more than it holds ({}) or a histogram loadgen writes can need",
            v2.len().saturating_sub(V2_HEADER)
        ));
    }
    check_counts(&v2[V2_HEADER..V2_HEADER + payload])
}

/// Refuses the one count HdrHistogram's decoder cannot take: a run of 2^63 empty buckets
/// (zig-zag u64::MAX), which it negates, overflowing. The varints are read as it reads them:
/// 7 bits a byte, the ninth byte whole.
fn check_counts(payload: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < payload.len() {
        let mut value = 0u64;
        let mut n = 0;
        while let Some(&b) = payload.get(i + n) {
            if n == 8 {
                value |= u64::from(b) << 56;
                n += 1;
                break;
            }
            value |= u64::from(b & 0x7f) << (7 * n);
            n += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        if value == u64::MAX {
            return Err(format!(
                "a count at byte {i} is a run of 2^63 empty buckets, which no histogram has"
            ));
        }
        i += n.max(1);
    }
    Ok(())
}

/// Adds `from` into `into`, growing `into`'s range when `from` reaches further.
pub fn add(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<(), String> {
    if from.is_empty() {
        return Ok(());
    }
    if into.high() < from.high() {
        into.auto(true);
    }
    into.add(from).map_err(|e| format!("{e:?}"))
}

/// The window of merged reports, from the earliest start to the latest end, and rates over it.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Option<SystemTime>,
    pub end: Option<SystemTime>,
}

impl Window {
    pub fn of(starts: Vec<SystemTime>, ends: Vec<SystemTime>) -> Window {
        Window {
            start: starts.into_iter().min(),
            end: ends.into_iter().max(),
        }
    }

    /// Seconds from start to end (0 without both).
    pub fn elapsed_s(&self) -> f64 {
        match (self.start, self.end) {
            (Some(s), Some(e)) => e.duration_since(s).map_or(0.0, |d| d.as_secs_f64()),
            _ => 0.0,
        }
    }

    /// `n` per second of the window (0 for an empty window).
    pub fn per_s(&self, n: u64) -> f64 {
        let e = self.elapsed_s();
        if e > 0.0 {
            n as f64 / e
        } else {
            0.0
        }
    }
}

/// An HdrHistogram interval log being written: one histogram per tag and interval, as
/// HdrHistogram's own log tools (HistogramLogProcessor, `IntervalLogIterator`) read them.
/// Values are microseconds (the max column too).
pub struct IntervalLog<W: Write> {
    out: W,
    serializer: V2DeflateSerializer,
}

impl<W: Write> IntervalLog<W> {
    /// Begins a log whose timestamps count from `started` (its StartTime and BaseTime).
    pub fn begin(mut out: W, started: SystemTime, comment: &str) -> std::io::Result<Self> {
        let mut serializer = V2DeflateSerializer::new();
        IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .with_start_time(started)
            .with_base_time(started)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(std::io::Error::other)?;
        out.flush()?;
        Ok(IntervalLog { out, serializer })
    }

    /// Writes `h` as the interval `[from, from + length)` after the log's start.
    pub fn interval(
        &mut self,
        tag: &str,
        h: &Histogram<u64>,
        from: Duration,
        length: Duration,
    ) -> std::io::Result<()> {
        let mut line = Vec::new();
        {
            let mut w = IntervalLogWriterBuilder::new()
                .begin_log_with(&mut line, &mut self.serializer)
                .map_err(std::io::Error::other)?;
            w.write_histogram(h, from, length, Tag::new(tag))
                .map_err(std::io::Error::other)?;
        }
        self.out.write_all(&line)?;
        self.out.flush()
    }
}

/// `--hdr-log`: an interval log fed with cumulative histograms (a snapshot of each tag's
/// histogram so far); each interval is the difference from the last, so the intervals add
/// up to the last snapshot exactly.
pub struct CumulativeLog {
    log: IntervalLog<std::io::BufWriter<std::fs::File>>,
    started: std::time::Instant,
    prev: Vec<(String, Histogram<u64>)>,
    prev_at: Duration,
}

impl CumulativeLog {
    /// Creates the log at `path`; its timestamps count from `started`.
    pub fn create(
        path: &std::path::Path,
        started: std::time::Instant,
        comment: &str,
    ) -> Result<CumulativeLog, crate::Error> {
        let fail = |e: std::io::Error| {
            crate::Error::failed(format!("cannot write --hdr-log {}", path.display()), e)
        };
        let file = std::fs::File::create(path).map_err(fail)?;
        let wall = SystemTime::now()
            .checked_sub(started.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let log = IntervalLog::begin(std::io::BufWriter::new(file), wall, comment).map_err(fail)?;
        Ok(CumulativeLog {
            log,
            started,
            prev: Vec::new(),
            prev_at: Duration::ZERO,
        })
    }

    /// Writes the interval from the last call to `at`, one histogram per tag of `now`.
    pub fn interval(
        &mut self,
        now: &[(&str, &Histogram<u64>)],
        at: std::time::Instant,
    ) -> std::io::Result<()> {
        let at = at.saturating_duration_since(self.started);
        let length = at.saturating_sub(self.prev_at);
        for (tag, h) in now {
            let mut d = (*h).clone();
            if let Some((_, prev)) = self.prev.iter().find(|(t, _)| t == tag) {
                // Counts only grow between snapshots; if one ever shrank, say so.
                if let Err(e) = d.subtract(prev) {
                    return Err(std::io::Error::other(format!(
                        "the {tag} histogram shrank between intervals ({e:?})"
                    )));
                }
            }
            self.log.interval(tag, &d, self.prev_at, length)?;
        }
        self.prev = now
            .iter()
            .map(|(t, h)| (t.to_string(), (*h).clone()))
            .collect();
        self.prev_at = at;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    fn sample(values: impl Iterator<Item = u64>) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in values {
            h.record(v).unwrap();
        }
        h
    }

    #[test]
    fn histograms_round_trip_through_their_text_and_add_exactly() {
        let a = sample(1..=900);
        let b = sample(std::iter::repeat(10_000).take(100));
        let (ta, tb) = (encode(&a).unwrap(), encode(&b).unwrap());
        let (mut da, db) = (decode(&ta).unwrap(), decode(&tb).unwrap());
        assert_eq!(da, a);
        add(&mut da, &db).unwrap();
        assert_eq!(da.len(), 1000);
        assert_eq!(
            da.value_at_quantile(0.95),
            da.highest_equivalent(10_000),
            "the union's p95, not an average"
        );
        assert!(encode(&sample(std::iter::empty())).is_none());
        assert!(decode("not base64!").unwrap_err().contains("base64"));
        assert!(decode("aGVsbG8=").unwrap_err().contains("HdrHistogram"));
    }

    #[test]
    fn the_largest_histogram_loadgen_writes_fits_the_decoders_bound() {
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX_HIGHEST, MAX_SIGFIG).unwrap();
        assert!(V2_HEADER + 9 * h.distinct_values() <= MAX_V2_BYTES);
        // A count in every bucket.
        let mut v = 1;
        while v < MAX_HIGHEST {
            h.record_n(v, 1 << 40).unwrap();
            v = h.next_non_equivalent(v);
        }
        let text = encode(&h).unwrap();
        assert_eq!(decode(&text).unwrap(), h);
    }

    fn v2(payload: u32, sigfig: u32, high: u64, extra: usize) -> String {
        let mut b = Vec::new();
        b.extend(V2_COOKIE.to_be_bytes());
        b.extend(payload.to_be_bytes());
        b.extend(0u32.to_be_bytes());
        b.extend(sigfig.to_be_bytes());
        b.extend(1u64.to_be_bytes());
        b.extend(high.to_be_bytes());
        b.extend(1.0f64.to_be_bytes());
        b.extend(std::iter::repeat(0).take(extra));
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn headers_that_claim_more_than_loadgen_writes_are_refused_before_decoding() {
        let e = decode(&v2(0xffff_fff0, 3, 3_600_000_000, 0)).unwrap_err();
        assert!(e.contains("claims 4294967280 bytes"), "{e}");
        let e = decode(&v2(4, 5, 3_600_000_000, 4)).unwrap_err();
        assert!(e.contains("significant figures"), "{e}");
        let e = decode(&v2(4, 3, u64::MAX, 4)).unwrap_err();
        assert!(e.contains("range"), "{e}");
        assert!(decode(&v2(0, 3, 3_600_000_000, 0)).unwrap().is_empty());
        // A zero run of 2^63 (zig-zag u64::MAX): HdrHistogram's decoder would negate it.
        let mut b = base64::engine::general_purpose::STANDARD
            .decode(v2(9, 3, 3_600_000_000, 0))
            .unwrap();
        b.extend([0xff; 9]);
        let e = decode(&base64::engine::general_purpose::STANDARD.encode(b)).unwrap_err();
        assert!(e.contains("2^63 empty buckets"), "{e}");
    }

    #[test]
    fn a_deflate_stream_is_inflated_with_a_hard_cap() {
        use flate2::write::ZlibEncoder;
        // A plausible header, then 64 MiB of zeros: refused at the cap, not inflated whole.
        let mut z = ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(
            &base64::engine::general_purpose::STANDARD
                .decode(v2(16, 3, 3_600_000_000, 0))
                .unwrap(),
        )
        .unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            z.write_all(&zeros).unwrap();
        }
        let stream = z.finish().unwrap();
        let mut b = Vec::new();
        b.extend(V2_DEFLATE_COOKIE.to_be_bytes());
        b.extend((stream.len() as u32).to_be_bytes());
        b.extend(stream);
        let e = decode(&base64::engine::general_purpose::STANDARD.encode(b)).unwrap_err();
        assert!(e.contains("inflates to more than"), "{e}");
    }

    #[test]
    fn an_interval_log_reads_back_with_hdrhistograms_own_iterator() {
        let mut out = Vec::new();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut log = IntervalLog::begin(&mut out, start, "test").unwrap();
        for s in 0..3u64 {
            let h = sample((1..=10).map(|v| v * (s + 1)));
            log.interval("ack", &h, Duration::from_secs(s), Duration::from_secs(1))
                .unwrap();
        }
        drop(log);
        let mut intervals = 0;
        let mut start_seen = None;
        for e in IntervalLogIterator::new(&out) {
            match e.unwrap() {
                LogEntry::StartTime(t) => start_seen = Some(t),
                LogEntry::Interval(i) => {
                    assert_eq!(i.tag().map(|t| t.as_str()), Some("ack"));
                    let h = decode(i.encoded_histogram()).unwrap();
                    assert_eq!(h.len(), 10);
                    assert_eq!(i.start_timestamp(), Duration::from_secs(intervals));
                    intervals += 1;
                }
                LogEntry::BaseTime(_) => {}
            }
        }
        assert_eq!(intervals, 3);
        assert_eq!(start_seen, Some(Duration::from_secs(1_700_000_000)));
    }
}
