//! The data point that publishers send and backends read, defined once.
//!
//! A point is a JSON object:
//!
//! ```json
//! {"device_id":"frontend1_ultra_high_perf_device","seq":0,"timestamp":1763798400.123456,
//!  "value":50.12,"temperature":21.53,"humidity":45.2}
//! ```
//!
//! A message carries either one such object (the legacy format, batch size 1) or a JSON array
//! of them (the batched format). [`Sample`] is what a generator produces; [`Encoder`] writes
//! samples as JSON without allocating per point; [`Point`] is the serde view a decoder reads.
//! The field names live in [`fields`] and both sides use them, so the format has one definition.

use std::borrow::Cow;

use bytes::BufMut;
use serde::{Deserialize, Serialize};

/// JSON field names of a point.
pub mod fields {
    pub const DEVICE_ID: &str = "device_id";
    pub const SEQ: &str = "seq";
    pub const TIMESTAMP: &str = "timestamp";
    pub const VALUE: &str = "value";
    pub const TEMPERATURE: &str = "temperature";
    pub const HUMIDITY: &str = "humidity";
}

/// Longest device id, in bytes: real ids are far shorter, every point carries its id, and a
/// backend that tracks 100,000 devices must be able to bound what each costs.
pub const MAX_DEVICE_ID: usize = 1024;

/// A decoded point. Optional sensor fields may be absent; unknown fields are ignored so a
/// backend keeps reading payloads that carry more than this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point<'a> {
    #[serde(borrow)]
    pub device_id: Cow<'a, str>,
    pub seq: u64,
    /// Epoch seconds with microsecond precision.
    pub timestamp: f64,
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub humidity: Option<f64>,
}

/// One generated point, in fixed-point units so that encoding is integer formatting only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub seq: u64,
    /// Generation time in microseconds since the Unix epoch.
    pub timestamp_us: u64,
    /// `value` in hundredths.
    pub value_centi: i64,
    /// `temperature` in hundredths of a degree Celsius, when sensor fields are on.
    pub temperature_centi: Option<i64>,
    /// `humidity` in tenths of a percent, when sensor fields are on.
    pub humidity_deci: Option<i64>,
}

/// Longest encoding of the numeric part of a point (everything but the device id), with
/// every number at its widest. Used to size packet limits before a run starts.
const MAX_NUMERIC_PART: usize = 2 // "{" and "}"
    + 16 + 20 // ,"seq": and u64
    + 14 + 20 + 7 // ,"timestamp": secs . micros
    + 10 + 21 + 3 // ,"value": i64 . 2
    + 16 + 21 + 3 // ,"temperature":
    + 13 + 21 + 2; // ,"humidity":

/// Writes samples of one device as JSON. The device id is escaped once, at construction.
///
/// Each point is assembled in a stack buffer with fixed-size copies and digit-pair tables,
/// then appended with one copy: appending its dozen pieces one by one would cost a `memcpy`
/// call each. The part every point of a message shares (`,"timestamp":...,"value":`) is
/// formatted once per message.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// `{"device_id":"<escaped id>","seq":`
    prefix: Vec<u8>,
    /// `prefix` padded for a fixed-size copy, when it fits [`SHORT`].
    short_prefix: Option<[u8; SHORT]>,
}

/// Room for a fixed-size copy of a short piece (prefix, timestamp part).
const SHORT: usize = 64;
/// The stack buffer of one point: a short prefix, the numbers, and slack for a fixed copy.
const POINT_BUF: usize = SHORT + MAX_NUMERIC_PART + SHORT;

impl Encoder {
    pub fn new(device_id: &str) -> Self {
        let mut e = Encoder {
            prefix: Vec::with_capacity(device_id.len() + 32),
            short_prefix: None,
        };
        e.set_device_id(device_id.as_bytes());
        e
    }

    /// Makes this encoder write points of `device_id` (UTF-8 bytes), reusing its buffer: a
    /// producer of many devices keeps one encoder and switches it per message.
    pub fn set_device_id(&mut self, device_id: &[u8]) {
        self.prefix.clear();
        self.prefix.extend_from_slice(b"{\"");
        self.prefix.extend_from_slice(fields::DEVICE_ID.as_bytes());
        self.prefix.extend_from_slice(b"\":");
        write_json_string_bytes(&mut self.prefix, device_id);
        self.prefix.extend_from_slice(b",\"");
        self.prefix.extend_from_slice(fields::SEQ.as_bytes());
        self.prefix.extend_from_slice(b"\":");
        self.short_prefix = (self.prefix.len() <= SHORT).then(|| {
            let mut p = [0u8; SHORT];
            p[..self.prefix.len()].copy_from_slice(&self.prefix);
            p
        });
    }

    /// Upper bound of the encoded size of one point.
    pub fn max_point_len(&self) -> usize {
        self.prefix.len() + MAX_NUMERIC_PART
    }

    /// Upper bound of the payload size of a message of `batch` points (saturating: a
    /// batch too large for memory gives `usize::MAX`).
    pub fn max_payload_len(&self, batch: usize) -> usize {
        if batch <= 1 {
            self.max_point_len()
        } else {
            batch
                .saturating_mul(self.max_point_len() + 1)
                .saturating_add(2)
        }
    }

    /// Appends one point as a JSON object.
    pub fn write_point<B: BufMut>(&self, buf: &mut B, s: &Sample) {
        let mut out = self.point_buffer();
        self.write_point_with(buf, &mut out, s, &TimestampPart::new(s.timestamp_us));
    }

    /// A point's stack buffer, starting with the prefix when it is short.
    #[inline(always)]
    fn point_buffer(&self) -> [u8; POINT_BUF] {
        let mut out = [0u8; POINT_BUF];
        if let Some(p) = &self.short_prefix {
            out[..SHORT].copy_from_slice(p);
        }
        out
    }

    /// Appends one point, assembled in `out` (from [`Self::point_buffer`]) after the prefix.
    #[inline(always)]
    fn write_point_with<B: BufMut>(
        &self,
        buf: &mut B,
        out: &mut [u8; POINT_BUF],
        s: &Sample,
        ts: &TimestampPart,
    ) {
        let pos = if self.short_prefix.is_some() {
            self.prefix.len()
        } else {
            buf.put_slice(&self.prefix);
            0
        };
        let end = write_numbers(out, pos, s, ts);
        buf.put_slice(&out[..end]);
    }

    /// Appends one message payload: the legacy single object when `samples` has one element,
    /// else a JSON array of objects.
    pub fn write_message<B: BufMut>(&self, buf: &mut B, samples: &[Sample]) {
        let Some(first) = samples.first() else {
            buf.put_slice(b"[]");
            return;
        };
        let mut out = self.point_buffer();
        let mut ts = TimestampPart::new(first.timestamp_us);
        if samples.len() == 1 {
            self.write_point_with(buf, &mut out, first, &ts);
            return;
        }
        buf.put_u8(b'[');
        for (i, s) in samples.iter().enumerate() {
            if i > 0 {
                buf.put_u8(b',');
            }
            if s.timestamp_us != ts.us {
                ts = TimestampPart::new(s.timestamp_us);
            }
            self.write_point_with(buf, &mut out, s, &ts);
        }
        buf.put_u8(b']');
    }
}

/// `,"timestamp":<secs>.<micros>,"value":` of one timestamp, formatted once.
struct TimestampPart {
    us: u64,
    len: usize,
    bytes: [u8; SHORT],
}

impl TimestampPart {
    fn new(us: u64) -> TimestampPart {
        const HEAD: &[u8] = b",\"timestamp\":";
        const TAIL: &[u8] = b",\"value\":";
        // 13 + 20 + 1 + 6 + 9 = 49 bytes at most
        let mut bytes = [0u8; SHORT];
        bytes[..HEAD.len()].copy_from_slice(HEAD);
        let mut pos = write_u64(&mut bytes, HEAD.len(), us / 1_000_000);
        bytes[pos] = b'.';
        pos = write_padded(&mut bytes, pos + 1, us % 1_000_000, 6);
        bytes[pos..pos + TAIL.len()].copy_from_slice(TAIL);
        TimestampPart {
            us,
            len: pos + TAIL.len(),
            bytes,
        }
    }
}

/// Writes everything after the prefix: `seq`, the timestamp part, `value`, the optional
/// sensor fields and the closing brace, at `pos`; returns the end. `out` has room for a
/// fixed [`SHORT`]-byte copy at any position the numbers can reach.
#[inline(always)]
fn write_numbers(out: &mut [u8; POINT_BUF], pos: usize, s: &Sample, ts: &TimestampPart) -> usize {
    let mut pos = write_u64(out, pos, s.seq);
    out[pos..pos + SHORT].copy_from_slice(&ts.bytes);
    pos += ts.len;
    pos = write_fixed(out, pos, s.value_centi, 2);
    if let Some(t) = s.temperature_centi {
        const KEY: &[u8] = b",\"temperature\":";
        out[pos..pos + KEY.len()].copy_from_slice(KEY);
        pos = write_fixed(out, pos + KEY.len(), t, 2);
    }
    if let Some(h) = s.humidity_deci {
        const KEY: &[u8] = b",\"humidity\":";
        out[pos..pos + KEY.len()].copy_from_slice(KEY);
        pos = write_fixed(out, pos + KEY.len(), h, 1);
    }
    out[pos] = b'}';
    pos + 1
}

/// "00" to "99", for writing two digits at a time.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Writes `v` in decimal at `pos`; returns the end.
#[inline(always)]
fn write_u64(out: &mut [u8], pos: usize, v: u64) -> usize {
    let n = v.checked_ilog10().map_or(1, |d| d as usize + 1);
    write_padded(out, pos, v, n)
}

/// Writes `v` as exactly `width` decimal digits, zero padded (`v` < 10^width), at `pos`;
/// returns the end.
#[inline(always)]
fn write_padded(out: &mut [u8], pos: usize, mut v: u64, width: usize) -> usize {
    let end = pos + width;
    let mut i = end;
    while i >= pos + 2 {
        let d = (v % 100) as usize * 2;
        v /= 100;
        i -= 2;
        out[i..i + 2].copy_from_slice(&DIGIT_PAIRS[d..d + 2]);
    }
    if i > pos {
        out[pos] = b'0' + (v % 10) as u8;
    }
    end
}

/// Writes `v / 10^decimals` with exactly `decimals` digits after the point, at `pos`;
/// returns the end.
#[inline(always)]
fn write_fixed(out: &mut [u8], mut pos: usize, v: i64, decimals: u32) -> usize {
    let scale = 10u64.pow(decimals);
    if v < 0 {
        out[pos] = b'-';
        pos += 1;
    }
    let abs = v.unsigned_abs();
    pos = write_u64(out, pos, abs / scale);
    out[pos] = b'.';
    write_padded(out, pos + 1, abs % scale, decimals as usize)
}

/// Appends `s` as a JSON string literal, escaping what RFC 8259 requires.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    write_json_string_bytes(out, s.as_bytes())
}

/// [`write_json_string`] of UTF-8 bytes.
fn write_json_string_bytes(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x00..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64) -> Sample {
        Sample {
            seq,
            timestamp_us: 1_763_798_400_012_345,
            value_centi: -5,
            temperature_centi: Some(2153),
            humidity_deci: Some(452),
        }
    }

    fn encode(enc: &Encoder, samples: &[Sample]) -> Vec<u8> {
        let mut buf = Vec::new();
        enc.write_message(&mut buf, samples);
        buf
    }

    #[test]
    fn legacy_message_is_one_object_with_exact_numbers() {
        let enc = Encoder::new("dev");
        let text = String::from_utf8(encode(&enc, &[sample(7)])).unwrap();
        assert_eq!(
            text,
            r#"{"device_id":"dev","seq":7,"timestamp":1763798400.012345,"value":-0.05,"temperature":21.53,"humidity":45.2}"#
        );
    }

    #[test]
    fn batched_message_is_an_array_that_serde_reads_back() {
        let enc = Encoder::new("frontend1_ultra_high_perf_device");
        let samples: Vec<Sample> = (0..3).map(sample).collect();
        let bytes = encode(&enc, &samples);
        let points: Vec<Point> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(points.len(), 3);
        for (i, p) in points.iter().enumerate() {
            assert_eq!(p.device_id, "frontend1_ultra_high_perf_device");
            assert_eq!(p.seq, i as u64);
            assert_eq!(p.timestamp, 1_763_798_400.012_345);
            assert_eq!(p.value, -0.05);
            assert_eq!(p.temperature, Some(21.53));
            assert_eq!(p.humidity, Some(45.2));
        }
    }

    #[test]
    fn odd_device_ids_are_escaped_and_round_trip() {
        for id in [
            "quote\"d",
            "back\\slash",
            "new\nline",
            "tab\t",
            "nul\u{0}",
            "ctl\u{1f}",
            "ünï😀",
            "",
        ] {
            let enc = Encoder::new(id);
            let bytes = encode(&enc, &[sample(1)]);
            let p: Point = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{id:?} gave invalid JSON: {e}"));
            assert_eq!(p.device_id, id);
        }
    }

    #[test]
    fn one_encoder_switches_devices_without_leftovers() {
        let mut enc = Encoder::new("a_long_first_device_id_of_the_fleet");
        enc.set_device_id(b"d\"2");
        let text = String::from_utf8(encode(&enc, &[sample(1)])).unwrap();
        let p: Point = serde_json::from_str(&text).unwrap();
        assert_eq!(p.device_id, "d\"2");
        let long = "x".repeat(200);
        enc.set_device_id(long.as_bytes());
        let bytes = encode(&enc, &[sample(1)]);
        let p: Point = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(p.device_id, long);
    }

    #[test]
    fn optional_sensor_fields_may_be_absent() {
        let enc = Encoder::new("d");
        let s = Sample {
            temperature_centi: None,
            humidity_deci: None,
            ..sample(0)
        };
        let bytes = encode(&enc, &[s]);
        let p: Point = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((p.temperature, p.humidity), (None, None));
    }

    /// The obvious formatting, to check the fast one against.
    fn reference(device_id: &str, s: &Sample) -> String {
        let fixed = |v: i64, d: u32| {
            let scale = 10u64.pow(d);
            let sign = if v < 0 { "-" } else { "" };
            let a = v.unsigned_abs();
            format!("{sign}{}.{:0w$}", a / scale, a % scale, w = d as usize)
        };
        let mut id = Vec::new();
        write_json_string(&mut id, device_id);
        let mut out = format!(
            "{{\"device_id\":{},\"seq\":{},\"timestamp\":{}.{:06},\"value\":{}",
            String::from_utf8(id).unwrap(),
            s.seq,
            s.timestamp_us / 1_000_000,
            s.timestamp_us % 1_000_000,
            fixed(s.value_centi, 2)
        );
        if let Some(t) = s.temperature_centi {
            out += &format!(",\"temperature\":{}", fixed(t, 2));
        }
        if let Some(h) = s.humidity_deci {
            out += &format!(",\"humidity\":{}", fixed(h, 1));
        }
        out + "}"
    }

    #[test]
    fn fast_formatting_matches_the_obvious_one() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let edges = [
            0u64,
            1,
            9,
            10,
            99,
            100,
            999,
            1000,
            123_456,
            u64::MAX / 2,
            u64::MAX,
        ];
        let long_id = "x".repeat(200); // a prefix too long for the fixed-size copy
        for id in [
            "frontend1_ultra_high_perf_device",
            long_id.as_str(),
            "q\"\n",
        ] {
            let enc = Encoder::new(id);
            let mut samples = Vec::new();
            for i in 0..2000 {
                let r = next();
                let pick = |k: u64| edges[(k % edges.len() as u64) as usize];
                samples.push(Sample {
                    seq: if i % 3 == 0 { pick(r) } else { r >> (r % 64) },
                    // a few timestamps per message, so the shared part is re-formatted
                    timestamp_us: [1_763_798_400_012_345, 5, u64::MAX][(i / 700) % 3],
                    value_centi: (r as i64) >> (r % 64),
                    temperature_centi: (i % 5 != 0).then_some(-((r >> 3) as i64 >> (r % 60))),
                    humidity_deci: (i % 7 != 0).then_some(pick(r >> 9) as i64),
                });
            }
            let mut got = Vec::new();
            enc.write_message(&mut got, &samples);
            let want = format!(
                "[{}]",
                samples
                    .iter()
                    .map(|s| reference(id, s))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            assert_eq!(String::from_utf8(got).unwrap(), want);
            let mut one = Vec::new();
            enc.write_point(&mut one, &samples[7]);
            assert_eq!(String::from_utf8(one).unwrap(), reference(id, &samples[7]));
        }
    }

    #[test]
    fn max_lengths_bound_the_widest_point() {
        let enc = Encoder::new("a\"b");
        let widest = Sample {
            seq: u64::MAX,
            timestamp_us: u64::MAX,
            value_centi: i64::MIN,
            temperature_centi: Some(i64::MIN),
            humidity_deci: Some(i64::MIN),
        };
        let one = encode(&enc, &[widest]);
        assert!(
            one.len() <= enc.max_point_len(),
            "{} > {}",
            one.len(),
            enc.max_point_len()
        );
        let many = encode(&enc, &[widest; 10]);
        assert!(many.len() <= enc.max_payload_len(10));
    }
}
