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
#[derive(Debug, Clone)]
pub struct Encoder {
    /// `{"device_id":"<escaped id>","seq":`
    prefix: Vec<u8>,
}

impl Encoder {
    pub fn new(device_id: &str) -> Self {
        let mut prefix = Vec::with_capacity(device_id.len() + 32);
        prefix.extend_from_slice(b"{\"");
        prefix.extend_from_slice(fields::DEVICE_ID.as_bytes());
        prefix.extend_from_slice(b"\":");
        write_json_string(&mut prefix, device_id);
        prefix.extend_from_slice(b",\"");
        prefix.extend_from_slice(fields::SEQ.as_bytes());
        prefix.extend_from_slice(b"\":");
        Encoder { prefix }
    }

    /// Upper bound of the encoded size of one point.
    pub fn max_point_len(&self) -> usize {
        self.prefix.len() + MAX_NUMERIC_PART
    }

    /// Upper bound of the payload size of a message of `batch` points.
    pub fn max_payload_len(&self, batch: usize) -> usize {
        if batch <= 1 {
            self.max_point_len()
        } else {
            2 + batch * (self.max_point_len() + 1)
        }
    }

    /// Appends one point as a JSON object.
    #[inline]
    pub fn write_point<B: BufMut>(&self, buf: &mut B, s: &Sample) {
        let mut num = itoa::Buffer::new();
        buf.put_slice(&self.prefix);
        buf.put_slice(num.format(s.seq).as_bytes());
        buf.put_slice(b",\"timestamp\":");
        buf.put_slice(num.format(s.timestamp_us / 1_000_000).as_bytes());
        let micros = (s.timestamp_us % 1_000_000) as u32;
        buf.put_u8(b'.');
        write_padded(buf, micros, 6);
        buf.put_slice(b",\"value\":");
        write_fixed(buf, s.value_centi, 2);
        if let Some(t) = s.temperature_centi {
            buf.put_slice(b",\"temperature\":");
            write_fixed(buf, t, 2);
        }
        if let Some(h) = s.humidity_deci {
            buf.put_slice(b",\"humidity\":");
            write_fixed(buf, h, 1);
        }
        buf.put_u8(b'}');
    }

    /// Appends one message payload: the legacy single object when `samples` has one element,
    /// else a JSON array of objects.
    pub fn write_message<B: BufMut>(&self, buf: &mut B, samples: &[Sample]) {
        match samples {
            [one] => self.write_point(buf, one),
            _ => {
                buf.put_u8(b'[');
                for (i, s) in samples.iter().enumerate() {
                    if i > 0 {
                        buf.put_u8(b',');
                    }
                    self.write_point(buf, s);
                }
                buf.put_u8(b']');
            }
        }
    }
}

/// Writes `v / 10^decimals` with exactly `decimals` digits after the point.
#[inline]
fn write_fixed<B: BufMut>(buf: &mut B, v: i64, decimals: u32) {
    let scale = 10u64.pow(decimals);
    if v < 0 {
        buf.put_u8(b'-');
    }
    let abs = v.unsigned_abs();
    let mut num = itoa::Buffer::new();
    buf.put_slice(num.format(abs / scale).as_bytes());
    buf.put_u8(b'.');
    write_padded(buf, (abs % scale) as u32, decimals as usize);
}

/// Writes `v` as exactly `width` decimal digits, zero padded (`v` < 10^width).
#[inline]
fn write_padded<B: BufMut>(buf: &mut B, mut v: u32, width: usize) {
    let mut digits = [b'0'; 10];
    for i in (0..width).rev() {
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    buf.put_slice(&digits[..width]);
}

/// Appends `s` as a JSON string literal, escaping what RFC 8259 requires.
pub fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
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
