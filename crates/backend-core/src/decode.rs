//! Decoding message payloads with simd-json into the shared [`Point`] definition.
//!
//! A payload is either one point object (legacy) or an array of them (batched). Device ids
//! are borrowed from the payload buffer (simd-json unescapes in place), so decoding a batch
//! allocates only the vector of points.

use std::fmt;

use point_format::Point;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Which of the two formats a payload used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Legacy,
    Batch,
}

/// Why a payload is not points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes `buf` (modified in place) and appends its points to `out`; on error `out` is
/// left as it was, so a malformed message contributes no points.
pub fn decode<'a>(buf: &'a mut [u8], out: &mut Vec<Point<'a>>) -> Result<Shape, DecodeError> {
    let before = out.len();
    let mut de =
        simd_json::Deserializer::from_slice(buf).map_err(|e| DecodeError(e.to_string()))?;
    let shape = Points(out)
        .deserialize(&mut de)
        .map_err(|e| DecodeError(e.to_string()));
    if shape.is_err() {
        out.truncate(before);
    }
    shape
}

struct Points<'v, 'a>(&'v mut Vec<Point<'a>>);

impl<'de: 'a, 'a> DeserializeSeed<'de> for Points<'_, 'a> {
    type Value = Shape;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for Points<'_, 'a> {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a point object or an array of point objects")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Shape, A::Error> {
        let p = Point::deserialize(de::value::MapAccessDeserializer::new(map))?;
        self.0.push(p);
        Ok(Shape::Legacy)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        if let Some(n) = seq.size_hint() {
            self.0.reserve(n);
        }
        while let Some(p) = seq.next_element::<Point<'de>>()? {
            self.0.push(p);
        }
        Ok(Shape::Batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use point_format::{Encoder, Sample};

    fn sample(seq: u64) -> Sample {
        Sample {
            seq,
            timestamp_us: 1_763_798_400_000_001,
            value_centi: 1234,
            temperature_centi: None,
            humidity_deci: Some(455),
        }
    }

    #[test]
    fn both_formats_decode_from_the_encoder_output() {
        let enc = Encoder::new("dev \"one\"");
        let mut legacy = Vec::new();
        enc.write_message(&mut legacy, &[sample(5)]);
        let mut out = Vec::new();
        assert_eq!(decode(&mut legacy, &mut out), Ok(Shape::Legacy));
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].device_id.as_ref(), out[0].seq, out[0].humidity),
            ("dev \"one\"", 5, Some(45.5))
        );

        let mut batch = Vec::new();
        enc.write_message(&mut batch, &(0..1000).map(sample).collect::<Vec<_>>());
        let mut out = Vec::new();
        assert_eq!(decode(&mut batch, &mut out), Ok(Shape::Batch));
        assert_eq!(out.len(), 1000);
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, p)| p.seq == i as u64 && p.value == 12.34));
        assert!((out[999].timestamp - 1_763_798_400.000_001).abs() < 1e-6);
    }

    #[test]
    fn malformed_payloads_are_errors_and_add_no_points() {
        let cases: [&[u8]; 7] = [
            b"not json",
            b"{\"device_id\":\"d\",\"seq\":1", // truncated
            b"[{\"device_id\":\"d\",\"seq\":1,\"timestamp\":1.0,\"value\":2.0}, 5]", // wrong element
            b"{\"device_id\":\"d\",\"timestamp\":1.0,\"value\":2.0}",                // no seq
            b"{\"device_id\":7,\"seq\":1,\"timestamp\":1.0,\"value\":2.0}",          // wrong type
            b"42",
            b"",
        ];
        for c in cases {
            let mut buf = c.to_vec();
            let mut out = Vec::new();
            assert!(
                decode(&mut buf, &mut out).is_err(),
                "{:?} decoded",
                String::from_utf8_lossy(c)
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut buf =
            br#"{"device_id":"d","seq":3,"timestamp":1.5,"value":2,"extra":{"a":[1]}}"#.to_vec();
        let mut out = Vec::new();
        assert_eq!(decode(&mut buf, &mut out), Ok(Shape::Legacy));
        assert_eq!(out[0].seq, 3);
    }
}
