//! Decoding message payloads with simd-json into the shared [`Point`] definition.
//!
//! A payload is either one point object (legacy) or an array of them (batched). The
//! [`Decoder`] parses into a simd-json tape (reusing its buffers and tape between messages)
//! and reads the points off the tape directly: device ids are borrowed from the payload
//! buffer, which simd-json unescapes in place, and nothing is allocated per point. The field
//! names are those of `point_format::fields`.

use std::borrow::Cow;
use std::fmt;

use point_format::{fields, Point};
use simd_json::{Node, StaticNode, Tape};

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

fn err<T>(msg: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(msg.into()))
}

/// Reusable decoding state: simd-json's buffers and tape.
pub struct Decoder {
    buffers: simd_json::Buffers,
    tape: Option<Tape<'static>>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buffers: simd_json::Buffers::new(64 << 10),
            tape: Some(Tape::null().reset()),
        }
    }
}

impl Decoder {
    /// Decodes `buf` (modified in place) and appends its points to `out`. On error `out` is
    /// left as it was: a malformed message contributes no points.
    pub fn decode<'a>(
        &mut self,
        buf: &'a mut [u8],
        out: &mut Vec<Point<'a>>,
    ) -> Result<Shape, DecodeError> {
        check_unicode_escapes(buf)?;
        let mut tape: Tape<'a> = self.tape.take().unwrap_or_else(Tape::null).reset();
        let before = out.len();
        let result = match simd_json::fill_tape(buf, &mut self.buffers, &mut tape) {
            Ok(()) => read_payload(&tape.0, out),
            Err(e) => err(format!("not JSON: {e}")),
        };
        if result.is_err() {
            out.truncate(before);
        }
        self.tape = Some(tape.reset());
        result
    }
}

/// Refuses `\u` escapes that are not a character: a high surrogate (`\uD800`-`\uDBFF`)
/// without its low half, or a low one alone. simd-json decodes some of those to U+0000,
/// which would merge distinct device ids (`a\ud800b` with `a\u0000b`) and report false
/// duplicates; so every invalid escape is malformed, the same way. Payloads without a
/// backslash (the usual case) cost one `memchr` pass.
fn check_unicode_escapes(buf: &[u8]) -> Result<(), DecodeError> {
    fn hex4(buf: &[u8], at: usize) -> Option<u32> {
        let digits = buf.get(at..at + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        u32::from_str_radix(text, 16).ok()
    }
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'\\', &buf[i..]) {
        let at = i + off;
        if buf.get(at + 1) != Some(&b'u') {
            i = at + 2; // `\\`, `\"`, `\n`...: skips the escaped character too
            if i >= buf.len() {
                break;
            }
            continue;
        }
        // An escape that is not four hex digits is left to simd-json, which refuses it.
        let Some(cp) = hex4(buf, at + 2) else {
            i = at + 2;
            continue;
        };
        match cp {
            0xD800..=0xDBFF => {
                let low = (buf.get(at + 6..at + 8) == Some(b"\\u"))
                    .then(|| hex4(buf, at + 8))
                    .flatten();
                if !low.is_some_and(|l| (0xDC00..=0xDFFF).contains(&l)) {
                    return err(format!(
                        "a string holds \\u{cp:04x}, half of a surrogate pair without its other half"
                    ));
                }
                i = at + 12;
            }
            0xDC00..=0xDFFF => {
                return err(format!(
                    "a string holds \\u{cp:04x}, half of a surrogate pair without its other half"
                ))
            }
            _ => i = at + 6,
        }
    }
    Ok(())
}

/// Decodes with a fresh [`Decoder`]; for one-off use.
pub fn decode<'a>(buf: &'a mut [u8], out: &mut Vec<Point<'a>>) -> Result<Shape, DecodeError> {
    Decoder::default().decode(buf, out)
}

fn read_payload<'a>(nodes: &[Node<'a>], out: &mut Vec<Point<'a>>) -> Result<Shape, DecodeError> {
    match nodes.first() {
        Some(Node::Object { .. }) => {
            out.push(read_point(nodes)?.0);
            Ok(Shape::Legacy)
        }
        Some(Node::Array { len, .. }) => {
            // The length is the payload's word: a 16 MiB `[0,0,...]` must not reserve
            // gigabytes before its first element fails.
            out.reserve((*len).min(4096));
            let mut i = 1;
            for k in 0..*len {
                let (p, used) = read_point(&nodes[i..])
                    .map_err(|e| DecodeError(format!("element {k}: {e}")))?;
                out.push(p);
                i += used;
            }
            Ok(Shape::Batch)
        }
        _ => err("expected a point object or an array of point objects"),
    }
}

/// Reads the point object at `nodes[0]`; returns it and the number of nodes it spans.
fn read_point<'a>(nodes: &[Node<'a>]) -> Result<(Point<'a>, usize), DecodeError> {
    let Some(Node::Object { len, count }) = nodes.first() else {
        return err("expected a point object");
    };
    let (mut device_id, mut seq, mut timestamp, mut value) = (None, None, None, None);
    let (mut temperature, mut humidity) = (None, None);
    let mut i = 1;
    for _ in 0..*len {
        let Some(Node::String(key)) = nodes.get(i) else {
            return err("truncated object");
        };
        let v = nodes
            .get(i + 1)
            .ok_or_else(|| DecodeError("truncated object".into()))?;
        match *key {
            fields::DEVICE_ID => match v {
                Node::String(s) if s.len() > point_format::MAX_DEVICE_ID => {
                    return err(format!(
                        "device_id is {} bytes, longer than {}",
                        s.len(),
                        point_format::MAX_DEVICE_ID
                    ))
                }
                Node::String(s) => device_id = Some(*s),
                _ => return err("device_id is not a string"),
            },
            fields::SEQ => match v {
                Node::Static(StaticNode::U64(n)) => seq = Some(*n),
                Node::Static(StaticNode::I64(n)) if *n >= 0 => seq = Some(*n as u64),
                _ => return err("seq is not a non-negative integer"),
            },
            fields::TIMESTAMP => timestamp = Some(number(v, key)?),
            fields::VALUE => value = Some(number(v, key)?),
            fields::TEMPERATURE => temperature = Some(number(v, key)?),
            fields::HUMIDITY => humidity = Some(number(v, key)?),
            _ => {}
        }
        i += 1 + span(v);
    }
    debug_assert_eq!(i, count + 1);
    let missing = |f: &str| DecodeError(format!("a point has no {f}"));
    Ok((
        Point {
            device_id: Cow::Borrowed(device_id.ok_or_else(|| missing(fields::DEVICE_ID))?),
            seq: seq.ok_or_else(|| missing(fields::SEQ))?,
            timestamp: timestamp.ok_or_else(|| missing(fields::TIMESTAMP))?,
            value: value.ok_or_else(|| missing(fields::VALUE))?,
            temperature,
            humidity,
        },
        i,
    ))
}

fn number(v: &Node<'_>, key: &str) -> Result<f64, DecodeError> {
    match v {
        Node::Static(StaticNode::F64(f)) => Ok(*f),
        Node::Static(StaticNode::I64(n)) => Ok(*n as f64),
        Node::Static(StaticNode::U64(n)) => Ok(*n as f64),
        _ => err(format!("{key} is not a number")),
    }
}

/// Nodes a value occupies on the tape.
fn span(v: &Node<'_>) -> usize {
    match v {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        _ => 1,
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
        let mut d = Decoder::default();
        let enc = Encoder::new("dev \"one\"");
        let mut legacy = Vec::new();
        enc.write_message(&mut legacy, &[sample(5)]);
        let mut out = Vec::new();
        assert_eq!(d.decode(&mut legacy, &mut out), Ok(Shape::Legacy));
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].device_id.as_ref(), out[0].seq, out[0].humidity),
            ("dev \"one\"", 5, Some(45.5))
        );
        assert_eq!(out[0].temperature, None);

        let mut batch = Vec::new();
        enc.write_message(&mut batch, &(0..1000).map(sample).collect::<Vec<_>>());
        let mut out = Vec::new();
        assert_eq!(d.decode(&mut batch, &mut out), Ok(Shape::Batch));
        assert_eq!(out.len(), 1000);
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, p)| p.seq == i as u64 && p.value == 12.34));
        assert!((out[999].timestamp - 1_763_798_400.000_001).abs() < 1e-6);
    }

    #[test]
    fn malformed_payloads_are_errors_and_add_no_points() {
        let cases: [&[u8]; 9] = [
            b"not json",
            b"{\"device_id\":\"d\",\"seq\":1",
            b"[{\"device_id\":\"d\",\"seq\":1,\"timestamp\":1.0,\"value\":2.0}, 5]",
            b"{\"device_id\":\"d\",\"timestamp\":1.0,\"value\":2.0}",
            b"{\"device_id\":7,\"seq\":1,\"timestamp\":1.0,\"value\":2.0}",
            b"{\"device_id\":\"d\",\"seq\":-1,\"timestamp\":1.0,\"value\":2.0}",
            b"{\"device_id\":\"d\",\"seq\":1,\"timestamp\":\"x\",\"value\":2.0}",
            b"42",
            b"",
        ];
        let mut d = Decoder::default();
        for c in cases {
            let mut buf = c.to_vec();
            let mut out = Vec::new();
            assert!(
                d.decode(&mut buf, &mut out).is_err(),
                "{:?} decoded",
                String::from_utf8_lossy(c)
            );
            assert!(out.is_empty());
        }
        // The decoder is still good after errors.
        let mut ok = br#"{"device_id":"d","seq":1,"timestamp":1,"value":2}"#.to_vec();
        let mut out = Vec::new();
        assert_eq!(d.decode(&mut ok, &mut out), Ok(Shape::Legacy));
    }

    #[test]
    fn invalid_escapes_are_malformed_and_distinct_ids_never_merge() {
        let point = |id: &str| format!(r#"{{"device_id":"{id}","seq":1,"timestamp":1,"value":2}}"#);
        let mut d = Decoder::default();
        for bad in [
            r"a\ud800b",
            r"a\udbffb",
            r"a\udc00b",
            r"a\ud800\u0041",
            r"\udfff",
        ] {
            let mut buf = point(bad).into_bytes();
            let mut out = Vec::new();
            assert!(
                d.decode(&mut buf, &mut out).is_err(),
                "{bad} decoded: {out:?}"
            );
        }
        for (good, id) in [
            (r"a\u0000b", "a\u{0}b"),
            (r"\ud83d\ude00", "😀"),
            (r"a\\ud800b", r"a\ud800b"),
            (r#"q\"\u00e9"#, "q\"é"),
        ] {
            let mut buf = point(good).into_bytes();
            let mut out = Vec::new();
            assert_eq!(d.decode(&mut buf, &mut out), Ok(Shape::Legacy), "{good}");
            assert_eq!(out[0].device_id, id, "{good}");
        }
    }

    #[test]
    fn device_ids_past_the_limit_are_malformed() {
        let point = |id: &str| format!(r#"{{"device_id":"{id}","seq":1,"timestamp":1,"value":2}}"#);
        let mut d = Decoder::default();
        let mut ok = point(&"d".repeat(point_format::MAX_DEVICE_ID)).into_bytes();
        assert!(d.decode(&mut ok, &mut Vec::new()).is_ok());
        let mut long = point(&"d".repeat(point_format::MAX_DEVICE_ID + 1)).into_bytes();
        let e = d.decode(&mut long, &mut Vec::new()).unwrap_err();
        assert!(e.0.contains("longer than 1024"), "{e}");
    }

    #[test]
    fn unknown_and_nested_fields_are_skipped() {
        let mut buf =
            br#"[{"extra":{"a":[1,{"b":2}]},"device_id":"d","seq":3,"timestamp":1.5,"value":2,"tags":[]},{"device_id":"e","seq":4,"timestamp":1,"value":-1}]"#
                .to_vec();
        let mut out = Vec::new();
        assert_eq!(decode(&mut buf, &mut out), Ok(Shape::Batch));
        assert_eq!(
            (out[0].seq, out[0].value, out[1].device_id.as_ref()),
            (3, 2.0, "e")
        );
    }
}
