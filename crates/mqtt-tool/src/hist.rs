//! Histograms inside reports: HdrHistogram's V2 + DEFLATE encoding in base64 (the form its
//! interval logs use), so that reports of shards merge exactly (histograms added, never
//! percentiles averaged), and the interval log `--hdr-log` writes.

use std::io::Write;
use std::time::{Duration, SystemTime};

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

/// The histogram of [`encode`]'s text; the error says what is wrong with it.
pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("not an HdrHistogram: {e:?}"))
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

/// The sum of the encoded histograms of several reports (named for errors): what `loadgen
/// merge` computes its exact percentiles from; `None` when none has one.
pub fn sum<'a>(
    encoded: impl Iterator<Item = (&'a str, &'a Option<String>)>,
) -> Result<Option<Histogram<u64>>, crate::Error> {
    let mut into: Option<Histogram<u64>> = None;
    for (name, text) in encoded {
        let Some(text) = text else { continue };
        let h = decode(text).map_err(|e| {
            crate::Error::usage(format!("{name}: a histogram cannot be read ({e})"))
        })?;
        match &mut into {
            None => into = Some(h),
            Some(acc) => add(acc, &h).map_err(crate::Error::Other)?,
        }
    }
    Ok(into)
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
            crate::Error::Other(format!("cannot write --hdr-log {}: {e}", path.display()))
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
