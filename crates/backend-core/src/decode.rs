//! Decoding message payloads into the shared [`Point`] definition.
//!
//! A payload is either one point object (legacy) or an array of them (batched). The
//! [`Decoder`] tries three paths, and nothing is allocated per point on any:
//! - the canonical path (`canonical`) reads compact point objects: the point's members
//!   only, each once, in any key order, no whitespace, no escapes (what our encoder and the
//!   seed's orjson publishers write), with literal compares; anything else it hands over at
//!   its first point, a few bytes in. These are the common streams, and this path reads
//!   them about 1.5x as fast as the general one (bench D: 20.2M against 13.5M points/s
//!   measured side by side, for our form);
//! - the one-pass path (`onepass`) reads any payload it can prove valid: members in any
//!   order, whitespace, unknown members (nested too) skipped, escapes in keys and strings,
//!   numbers in every JSON form whose conversion it proves the same as simd-json's. Device
//!   ids are borrowed from the payload (unescaped in place when they hold escapes);
//! - both only hand over what they cannot prove, never refuse;
//! - the full path parses anything else into a simd-json tape (reusing its buffers and tape
//!   between messages) and reads the points off the tape: device ids are borrowed from the
//!   payload buffer, which simd-json unescapes in place. It is the one that decides what is
//!   malformed, and says why.
//!
//! All three give the same points for what the first two accept (differential tests
//! against the full path and serde_json hold this). A key given twice is read as the tape reads it:
//! every value must be valid, the last one counts. The field names are those of
//! `point_format::fields`.

use std::borrow::Cow;
use std::fmt;

use point_format::{fields, Point};
use simd_json::{Node, StaticNode, Tape};

use canonical::Canonical;
use onepass::OnePass;

mod canonical;
mod digits;
mod onepass;

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

/// Reusable decoding state: the fast path's scratch, simd-json's buffers and tape.
pub struct Decoder {
    canonical: Canonical,
    fast: OnePass,
    buffers: simd_json::Buffers,
    tape: Option<Tape<'static>>,
    /// Payloads the fast path decoded, so tests can tell it is taken.
    fast_payloads: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            canonical: Canonical::default(),
            fast: OnePass::default(),
            buffers: simd_json::Buffers::new(64 << 10),
            tape: Some(Tape::null().reset()),
            fast_payloads: 0,
        }
    }
}

impl Decoder {
    /// Decodes `buf` (possibly modified in place) and appends its points to `out`. On error
    /// `out` is left as it was: a malformed message contributes no points.
    pub fn decode<'a>(
        &mut self,
        buf: &'a mut [u8],
        out: &mut Vec<Point<'a>>,
    ) -> Result<Shape, DecodeError> {
        let before = out.len();
        if let Some(shape) = self.canonical.scan(buf, out) {
            // Canonical: no handing over from here, so the buffer can be borrowed for 'a.
            let buf: &'a [u8] = buf;
            // SAFETY: `buf` is what the scan just read, not written since.
            unsafe { self.canonical.attach(buf, &mut out[before..]) };
            self.fast_payloads += 1;
            return Ok(shape);
        }
        if let Some(shape) = self.fast.scan(buf, out) {
            // Proven: no handing over from here, so escaped ids can be rewritten in place
            // and then the buffer borrowed for 'a.
            let attached = self.fast.unescape(buf).and_then(|()| {
                let buf: &'a [u8] = buf;
                self.fast.attach(buf, &mut out[before..])
            });
            if attached.is_err() {
                out.truncate(before);
            }
            self.fast_payloads += 1;
            return attached.map(|()| shape);
        }
        self.decode_full(buf, out)
    }

    /// The full path: simd-json, for any payload.
    fn decode_full<'a>(
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
    use point_format::{Encoder, Sample, MAX_DEVICE_ID};
    use publisher_core::source::PointSource;

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

    /// A point with its numbers as bits: `-0.0` and `0.0` differ, as do any two roundings.
    #[derive(Debug, PartialEq)]
    struct Bits {
        id: String,
        seq: u64,
        numbers: [u64; 2],
        sensors: [Option<u64>; 2],
    }

    impl Bits {
        fn of(p: &Point<'_>) -> Bits {
            Bits {
                id: p.device_id.to_string(),
                seq: p.seq,
                numbers: [p.timestamp.to_bits(), p.value.to_bits()],
                sensors: [
                    p.temperature.map(f64::to_bits),
                    p.humidity.map(f64::to_bits),
                ],
            }
        }
    }

    /// What decoding a payload answers, and the output it leaves (which held one point).
    type Answer = (Result<Shape, DecodeError>, Vec<Bits>);

    fn answer(d: &mut Decoder, payload: &[u8], full: bool) -> Answer {
        let mut buf = payload.to_vec();
        let mut out = vec![Point {
            device_id: Cow::Borrowed("before"),
            seq: 7,
            timestamp: 1.0,
            value: 2.0,
            temperature: None,
            humidity: Some(3.0),
        }];
        let r = if full {
            d.decode_full(&mut buf, &mut out)
        } else {
            d.decode(&mut buf, &mut out)
        };
        (r, out.iter().map(Bits::of).collect())
    }

    /// Decodes payloads with [`Decoder::decode`] and with the full path alone, and holds
    /// that the answers are the same. Each decoder lives across payloads, as in the backend.
    struct Differential {
        ours: Decoder,
        full: Decoder,
        checked: u64,
    }

    impl Differential {
        fn new() -> Self {
            Differential {
                ours: Decoder::default(),
                full: Decoder::default(),
                checked: 0,
            }
        }

        fn check(&mut self, payload: &[u8]) {
            let want = answer(&mut self.full, payload, true);
            let got = answer(&mut self.ours, payload, false);
            if got != want {
                let head = String::from_utf8_lossy(&payload[..payload.len().min(400)]);
                panic!(
                    "decoders differ on {} bytes {head:?}...\nours: {:?}\nfull: {:?}",
                    payload.len(),
                    (
                        &got.0,
                        got.1.len(),
                        got.1.iter().find(|b| !want.1.contains(b))
                    ),
                    (
                        &want.0,
                        want.1.len(),
                        want.1.iter().find(|b| !got.1.contains(b))
                    ),
                );
            }
            self.checked += 1;
        }
    }

    /// xorshift64: deterministic mutations without a crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// Plain ids, the empty one, non-ASCII, at and past the limit, and ids the encoder must
    /// escape (never canonical).
    fn odd_ids() -> Vec<String> {
        vec![
            "frontend1_ultra_high_perf_device".into(),
            String::new(),
            "ünï😀".into(),
            "del\u{7f}".into(),
            "a,\"b}".into(),
            "back\\slash".into(),
            "tab\t".into(),
            "nul\u{0}".into(),
            "x".repeat(MAX_DEVICE_ID),
            "x".repeat(MAX_DEVICE_ID + 1),
            "é".repeat(MAX_DEVICE_ID / 2) + "x",
        ]
    }

    fn generated(batch: usize, sensors: bool, seed: u64) -> Vec<Sample> {
        let mut samples = Vec::new();
        PointSource::new(seed, sensors).fill(batch, 1_763_798_400_123_456, &mut samples);
        samples
    }

    /// Numbers at the edges of what the fast path converts, and past them.
    fn edge_samples() -> Vec<Sample> {
        let s = |seq, timestamp_us, value_centi, temperature_centi, humidity_deci| Sample {
            seq,
            timestamp_us,
            value_centi,
            temperature_centi,
            humidity_deci,
        };
        vec![
            s(0, 0, 0, None, None),
            s(u64::MAX, u64::MAX, i64::MIN, Some(i64::MAX), Some(i64::MIN)),
            s(
                9_999_999_999_999_999_999,
                9_007_199_254_740_991,
                -5,
                Some(0),
                None,
            ),
            s(
                10_000_000_000_000_000_000,
                9_007_199_254_740_992,
                9_007_199_254_740_991,
                None,
                Some(-1),
            ),
            s(1, 1_763_798_400_000_001, -1, Some(-2153), Some(999)),
            s(
                12,
                999_999_999_999_999_999,
                99_999_999_999_999_999,
                Some(1),
                Some(1),
            ),
        ]
    }

    fn message(enc: &Encoder, samples: &[Sample]) -> Vec<u8> {
        let mut buf = Vec::new();
        enc.write_message(&mut buf, samples);
        buf
    }

    /// The members of an encoded point object (`"key":value`, in order). The encoder's
    /// strings never hold `,"` (a quote inside a string is escaped), so it splits there.
    fn members(point: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(point).expect("encoder output is UTF-8");
        let inner = &text[1..text.len() - 1];
        let mut parts: Vec<String> = inner.split(",\"").map(|m| format!("\"{m}")).collect();
        parts[0].remove(0);
        parts
    }

    fn object(members: &[String]) -> Vec<u8> {
        format!("{{{}}}", members.join(",")).into_bytes()
    }

    /// Valid and invalid JSON that differs from a canonical point in its members: order,
    /// missing, duplicate and unknown members, escaped keys, other number forms.
    fn member_variants(point: &[u8]) -> Vec<Vec<u8>> {
        let m = members(point);
        let mut out = Vec::new();
        let mut reversed = m.clone();
        reversed.reverse();
        out.push(object(&reversed));
        for k in 0..m.len() {
            let mut v = m.clone();
            if k + 1 < m.len() {
                v.swap(k, k + 1);
                out.push(object(&v));
            }
            let mut v = m.clone();
            v.remove(k);
            out.push(object(&v));
            let mut v = m.clone();
            v.insert(k, m[k].clone());
            out.push(object(&v));
            let mut v = m.clone();
            v.push(m[k].clone());
            out.push(object(&v));
            for extra in [
                r#""extra":1"#,
                r#""tags":[]"#,
                r#""x":{"a":[1,{"b":2}]}"#,
                r#""device_idx":"y""#,
                r#""seq2":1"#,
                r#""temperature":null"#,
            ] {
                let mut v = m.clone();
                v.insert(k, extra.into());
                out.push(object(&v));
            }
        }
        let mut v = m.clone();
        v.push(r#""extra":1"#.into());
        out.push(object(&v));
        // The same keys, escaped: the same point to a JSON parser.
        for (key, escaped) in [
            ("\"seq\"", r#""s\u0065q""#),
            ("\"value\"", r#""valu\u0065""#),
        ] {
            let v: Vec<String> = m.iter().map(|x| x.replacen(key, escaped, 1)).collect();
            out.push(object(&v));
        }
        let numbers = [
            "0",
            "-0",
            "1",
            "-1",
            "01",
            "1.",
            ".5",
            "+1",
            "-",
            "1e2",
            "1E2",
            "1.5e-3",
            "-0.0",
            "0.0",
            "00.1",
            "1.00",
            "-00.5",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775808",
            "-9223372036854775808",
            "9999999999999999999",
            "9007199254740991.0",
            "9007199254740993.0",
            "900719925474099.3",
            "123456789012345678.9",
            "12345678901234567.89",
            "0.1234567890123456789012345",
            "0.00000000000000000000001",
            "1.7976931348623157e309",
            "4.9e-324",
            "1763798400.123456",
            "1763798400.1234567",
            "true",
            "null",
            "\"1.5\"",
            "[1.5]",
        ];
        for (k, member) in m.iter().enumerate().skip(1) {
            let key = &member[..member.find(':').expect("a member has a colon")];
            for n in numbers {
                let mut v = m.clone();
                v[k] = format!("{key}:{n}");
                out.push(object(&v));
            }
        }
        out
    }

    /// The same bytes with whitespace where JSON allows it: around every structural character.
    fn spaced(payload: &[u8], ws: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut in_string = false;
        let mut escaped = false;
        for (i, &b) in payload.iter().enumerate() {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'}' | b'[' | b']' | b':' | b',' => {
                    for at in [i, i + 1] {
                        let mut v = payload.to_vec();
                        v.splice(at..at, ws.iter().copied());
                        out.push(v);
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// Bytes that matter to a JSON parser, for inserting and replacing.
    const INTERESTING: &[u8] = b"\"\\,:{}[]0159-.eE+ \n\t\rnux\x00\x1f\x7f\x80\xc3\xff";

    /// `rounds` random flips, replacements, insertions and deletions of one byte each, and
    /// replaced digits.
    fn byte_mutations(payload: &[u8], rng: &mut Rng, rounds: usize) -> Vec<Vec<u8>> {
        (0..rounds)
            .map(|_| {
                let mut v = payload.to_vec();
                let at = rng.below(v.len());
                match rng.below(5) {
                    0 => v[at] ^= 1 << rng.below(8),
                    // Mostly still canonical: other numbers, for the fast path to convert.
                    4 if v[at].is_ascii_digit() => v[at] = b'0' + rng.below(10) as u8,
                    4 => v[at] = b'0',
                    1 => v[at] = INTERESTING[rng.below(INTERESTING.len())],
                    2 => v.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
                    _ => {
                        v.remove(at);
                    }
                }
                v
            })
            .collect()
    }

    /// Whole payloads around a point: wrapped, doubled, padded, with junk after.
    fn wrappers(point: &[u8]) -> Vec<Vec<u8>> {
        let p = String::from_utf8_lossy(point);
        [
            format!("[{p}]"),
            format!("[{p},{p}]"),
            format!("[{p},]"),
            format!("[[{p}]]"),
            format!("{p}{p}"),
            format!("[{p}]]"),
            format!("[{p}]x"),
            format!("{p}x"),
            format!(" {p}"),
            format!("{p} "),
            format!("{p}\n"),
            format!("[{p}] "),
            format!("[,{p}]"),
            format!("[{p} ,{p}]"),
            "[]".into(),
            "[ ]".into(),
            "[{}]".into(),
            "{}".into(),
        ]
        .into_iter()
        .map(String::into_bytes)
        .collect()
    }

    #[test]
    fn the_fast_path_answers_as_the_full_path_for_encoder_output_and_its_mutations() {
        let mut diff = Differential::new();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for (n, id) in odd_ids().iter().enumerate() {
            let mut enc = Encoder::new("a_first_device_to_switch_away_from");
            enc.set_device_id(id.as_bytes());
            for sensors in [false, true] {
                for batch in [1, 2, 1000] {
                    let payload = message(&enc, &generated(batch, sensors, n as u64));
                    diff.check(&payload);
                    let rounds = if batch == 1000 { 24 } else { 200 };
                    for m in byte_mutations(&payload, &mut rng, rounds) {
                        diff.check(&m);
                    }
                    if batch < 1000 {
                        for end in 0..payload.len() {
                            diff.check(&payload[..end]);
                        }
                        for ws in [&b" "[..], b"\n", b"\t", b"\r", b" \n\t"] {
                            for m in spaced(&payload, ws) {
                                diff.check(&m);
                            }
                        }
                    } else {
                        for _ in 0..8 {
                            diff.check(&payload[..rng.below(payload.len())]);
                        }
                        diff.check(&payload[..payload.len() - 1]);
                    }
                }
            }
            for s in edge_samples() {
                let mut point = Vec::new();
                enc.write_point(&mut point, &s);
                diff.check(&point);
                for m in member_variants(&point).iter().chain(&wrappers(&point)) {
                    diff.check(m);
                }
            }
            diff.check(&message(&enc, &edge_samples()));
        }
        // A mutated point inside a batch, first, in the middle and last.
        let enc = Encoder::new("frontend1_ultra_high_perf_device");
        let points: Vec<Vec<u8>> = generated(3, true, 9)
            .iter()
            .map(|s| {
                let mut p = Vec::new();
                enc.write_point(&mut p, s);
                p
            })
            .collect();
        for k in 0..points.len() {
            for m in member_variants(&points[k]) {
                let mut batch = points.clone();
                batch[k] = m;
                diff.check(&[b"[", &batch.join(&b","[..])[..], b"]"].concat());
            }
        }
        assert!(diff.checked > 50_000, "{} payloads", diff.checked);
        // Not a vacuous agreement: mutants that stay canonical take the fast path.
        assert!(
            diff.ours.fast_payloads > 1_000,
            "{} of {} payloads took the fast path",
            diff.ours.fast_payloads,
            diff.checked
        );
    }

    #[test]
    fn random_decimals_convert_bit_for_bit_as_simd_json_converts_them() {
        let mut diff = Differential::new();
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..50_000 {
            let mut number = || {
                let digits: String = (0..1 + rng.below(21))
                    .map(|_| char::from(b'0' + rng.below(10) as u8))
                    .collect();
                let point = 1 + rng.below(digits.len());
                let sign = if rng.below(4) == 0 { "-" } else { "" };
                // Sometimes no leading zero, sometimes significands right at 2^53.
                let int = match &digits[..point] {
                    i if rng.below(2) == 0 => i.trim_start_matches('0').to_string(),
                    i => i.to_string(),
                };
                let int = if int.is_empty() { "0".into() } else { int };
                match rng.below(8) {
                    0 => format!("{sign}9007199254.74099{}", rng.below(10)),
                    1 => format!("{sign}0.9007199254740{}", 990 + rng.below(10)),
                    // Exponents, and Python's `time.time()` as orjson writes it (17 digits).
                    2 => format!(
                        "{sign}{int}.{}5e{}",
                        &digits[point..],
                        rng.below(80) as i64 - 40
                    ),
                    3 => format!(
                        "17637{:05}.{:07}",
                        rng.below(100_000),
                        rng.below(10_000_000)
                    ),
                    _ => format!("{sign}{int}.{}5", &digits[point..]),
                }
            };
            let payload = format!(
                r#"{{"device_id":"d","seq":1,"timestamp":{},"value":{},"humidity":{}}}"#,
                number(),
                number(),
                number()
            );
            diff.check(payload.as_bytes());
        }
        assert!(
            diff.ours.fast_payloads > 2_000,
            "{} of {} payloads took the fast path",
            diff.ours.fast_payloads,
            diff.checked
        );
    }

    #[test]
    fn points_of_several_devices_in_one_batch_keep_their_own_ids() {
        let ids = ["a", "a", "bb", "bb", "a", "ünï", "", "a", "a"];
        let points: Vec<Vec<u8>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut p = Vec::new();
                Encoder::new(id).write_point(&mut p, &generated(1, i % 2 == 0, i as u64)[0]);
                p
            })
            .collect();
        let mut payload = [b"[", &points.join(&b","[..])[..], b"]"].concat();
        let mut d = Decoder::default();
        let mut out = Vec::new();
        assert_eq!(d.decode(&mut payload, &mut out), Ok(Shape::Batch));
        assert_eq!(d.fast_payloads, 1);
        let got: Vec<&str> = out.iter().map(|p| p.device_id.as_ref()).collect();
        assert_eq!(got, ids);
        assert!(out.iter().all(|p| matches!(p.device_id, Cow::Borrowed(_))));
    }

    #[test]
    fn any_valid_shape_takes_the_fast_path_and_only_rarities_the_full_one() {
        let mut d = Decoder::default();
        let mut taken = 0;
        let mut decode = |d: &mut Decoder, payload: &[u8]| {
            let mut buf = payload.to_vec();
            let mut out = Vec::new();
            let r = d.decode(&mut buf, &mut out).map(|s| (s, out.len()));
            let fast = d.fast_payloads > taken;
            taken = d.fast_payloads;
            (r, fast)
        };
        for id in [
            "frontend1_ultra_high_perf_device",
            "",
            "ünï😀",
            &"x".repeat(MAX_DEVICE_ID),
        ] {
            let enc = Encoder::new(id);
            for sensors in [false, true] {
                for (batch, shape) in [(1, Shape::Legacy), (2, Shape::Batch), (1000, Shape::Batch)]
                {
                    let payload = message(&enc, &generated(batch, sensors, 1));
                    assert_eq!(
                        decode(&mut d, &payload),
                        (Ok((shape, batch)), true),
                        "{id} {batch}"
                    );
                }
            }
            // Mixed sensor fields, extreme values within the exact range.
            let mut s = edge_samples();
            s.retain(|s| {
                s.seq < 10_000_000_000_000_000_000 && s.timestamp_us < 9_007_199_254_740_992
            });
            assert_eq!(
                decode(&mut d, &message(&enc, &s)),
                (Ok((Shape::Batch, s.len())), true)
            );
        }
        let canonical = message(&Encoder::new("d"), &generated(2, true, 1));
        let text = String::from_utf8(canonical.clone()).unwrap();
        // Other spacing, members, escapes: still the fast path, with the same points.
        for other in [
            text.replacen(",", ", ", 1),
            text.replacen("\"seq\":0", "\"seq\":0,\"extra\":1", 1),
            text.replacen("\"d\"", "\"d\\u0041\"", 1),
            text.replacen("\"seq\"", "\"s\\u0065q\"", 1),
            text.replace(':', ": ").replace(',', ",\n  "),
            format!("{text}\n"),
        ] {
            assert_eq!(
                decode(&mut d, other.as_bytes()),
                (Ok((Shape::Batch, 2)), true),
                "{other}"
            );
        }
        for escaped in ["q\"", "tab\t", "nul\u{0}", "back\\slash"] {
            let payload = message(&Encoder::new(escaped), &generated(1, true, 1));
            assert_eq!(
                decode(&mut d, &payload),
                (Ok((Shape::Legacy, 1)), true),
                "{escaped:?}"
            );
        }
        // What the fast path cannot prove goes to simd-json, valid or not.
        let point = |members: &str| format!(r#"{{"device_id":"d",{members}}}"#);
        let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
        for (rare, valid) in [
            (
                point(r#""seq":1,"timestamp":0.1234567890123456789,"value":1"#),
                true,
            ),
            (point(r#""seq":1,"timestamp":1e300,"value":1"#), true),
            (point(r#""seq":-0,"timestamp":1,"value":1"#), true),
            (
                point(r#""seq":12345678901234567890,"timestamp":1,"value":1"#),
                true,
            ),
            (
                point(&format!(r#""seq":1,"timestamp":1,"value":1,"x":{deep}"#)),
                true,
            ),
            (point(r#""seq":1,"timestamp":1,"value":1,"x":"a	b""#), false),
            (
                point(r#""seq":1,"timestamp":1,"value":1,"x":"\ud800""#),
                false,
            ),
            (point(r#""seq":-1,"timestamp":1,"value":1"#), false),
        ] {
            let (answer, fast) = decode(&mut d, rare.as_bytes());
            assert!(!fast, "{rare} took the fast path");
            assert_eq!(answer.is_ok(), valid, "{rare}: {answer:?}");
        }
        assert!(
            decode(&mut d, &canonical).1,
            "the fast path after a full one"
        );
    }

    /// How a [`seed_point`] is laid out.
    #[derive(Debug, Clone, Copy)]
    enum Layout {
        /// orjson's compact form, as the seed's Python publisher writes it.
        Compact,
        /// `json.dumps`' default separators: `, ` and `: `.
        Spaced,
        /// Indented, a member a line.
        Pretty,
    }

    /// The seed publisher's point, `{"device_id","timestamp","value","seq"}` in that order,
    /// with `extra` members inserted after the first.
    fn seed_point(id: &str, seq: u64, layout: Layout, extra: &[&str]) -> String {
        let mut members = vec![
            format!(r#""device_id":"{id}""#),
            format!(r#""timestamp":{}"#, 1_763_798_400.0 + seq as f64 / 1000.0),
            format!(r#""value":{}"#, (seq % 10_000) as f64 / 100.0 - 20.0),
            format!(r#""seq":{seq}"#),
        ];
        for (k, e) in extra.iter().enumerate() {
            members.insert(1 + k, e.to_string());
        }
        match layout {
            Layout::Compact => format!("{{{}}}", members.join(",")),
            Layout::Spaced => format!("{{{}}}", members.join(", ").replacen("\":", "\": ", 99)),
            Layout::Pretty => format!(
                "{{\n    {}\n  }}",
                members.join(",\n    ").replacen("\":", "\": ", 99)
            ),
        }
    }

    fn seed_batch(points: &[String], layout: Layout) -> Vec<u8> {
        match layout {
            Layout::Pretty => format!("[\n  {}\n]", points.join(",\n  ")),
            Layout::Spaced => format!("[{}]", points.join(", ")),
            Layout::Compact => format!("[{}]", points.join(",")),
        }
        .into_bytes()
    }

    const NESTED: &str =
        r#""meta":{"fw":"1.2.3","tags":["a","b\"c",{"x":null,"y":[true,false,-1.5e-3]}],"n":0}"#;

    #[test]
    fn the_seed_publishers_shapes_decode_on_the_fast_path() {
        let mut d = Decoder::default();
        for layout in [Layout::Compact, Layout::Spaced, Layout::Pretty] {
            for extra in [&[][..], &[r#""unit":"C""#, NESTED]] {
                let points: Vec<String> = (0..50)
                    .map(|seq| seed_point("sensor-00042", seq, layout, extra))
                    .collect();
                for (payload, shape, n) in [
                    (points[7].clone().into_bytes(), Shape::Legacy, 1),
                    (seed_batch(&points, layout), Shape::Batch, 50),
                ] {
                    let before = d.fast_payloads;
                    let mut buf = payload.clone();
                    let mut out = Vec::new();
                    assert_eq!(
                        d.decode(&mut buf, &mut out),
                        Ok(shape),
                        "{layout:?} {}",
                        String::from_utf8_lossy(&payload)
                    );
                    assert_eq!(d.fast_payloads, before + 1, "{layout:?} {extra:?}");
                    assert_eq!(out.len(), n);
                    let first = if n == 1 { 7 } else { 0 };
                    for (k, p) in out.iter().enumerate() {
                        let seq = (first + k) as u64;
                        assert_eq!(p.device_id, "sensor-00042");
                        assert_eq!(p.seq, seq);
                        assert_eq!(p.timestamp, 1_763_798_400.0 + seq as f64 / 1000.0);
                        assert_eq!(p.value, (seq % 10_000) as f64 / 100.0 - 20.0);
                        assert_eq!((p.temperature, p.humidity), (None, None));
                    }
                }
            }
        }
    }

    #[test]
    fn escaped_keys_and_device_ids_decode_unescaped_on_the_fast_path() {
        let mut d = Decoder::default();
        let payload = r#"[{"d\u0065vice_id":"caf\u00e9 \"\\\/\ud83d\ude00","\u0073eq":1,"timestamp":1.5,"valu\u0065":2,"h\u0075midity":3},
            {"device_id":"caf\u00e9 \"\\\/\ud83d\ude00","seq":2,"timestamp":1.5,"value":2},
            {"device_id":"plain","seq":3,"timestamp":1.5,"value":2,"n\u00f6te":"\n\t\u0000"},
            {"device_id":"a\nb","seq":4,"timestamp":1.5,"value":2}]"#;
        let mut buf = payload.as_bytes().to_vec();
        let mut out = Vec::new();
        assert_eq!(d.decode(&mut buf, &mut out), Ok(Shape::Batch));
        assert_eq!(d.fast_payloads, 1);
        let got: Vec<(&str, u64, Option<f64>)> = out
            .iter()
            .map(|p| (p.device_id.as_ref(), p.seq, p.humidity))
            .collect();
        assert_eq!(
            got,
            [
                ("café \"\\/😀", 1, Some(3.0)),
                ("café \"\\/😀", 2, None),
                ("plain", 3, None),
                ("a\nb", 4, None)
            ]
        );
        assert!(out.iter().all(|p| matches!(p.device_id, Cow::Borrowed(_))));
    }

    #[test]
    fn bad_escapes_in_keys_and_device_ids_are_malformed() {
        let mut d = Decoder::default();
        for bad in [
            r#"{"device_id":"a\x","seq":1,"timestamp":1,"value":2}"#,
            r#"{"device_id":"a\u00g1","seq":1,"timestamp":1,"value":2}"#,
            r#"{"device_id":"a\ud800","seq":1,"timestamp":1,"value":2}"#,
            r#"{"device_id":"a\udc00\ud800","seq":1,"timestamp":1,"value":2}"#,
            r#"{"device_id":"a\u12","seq":1,"timestamp":1,"value":2}"#,
            r#"{"device_id":"a","s\q":1,"seq":1,"timestamp":1,"value":2}"#,
            r#"{"device_id":"a","s\ud800eq":1,"seq":1,"timestamp":1,"value":2}"#,
            r#"{"device_id":"a","seq\u00":1,"timestamp":1,"value":2}"#,
            "{\"device_id\":\"a\tb\",\"seq\":1,\"timestamp\":1,\"value\":2}",
            "{\"device_id\":\"a\",\"se\nq\":1,\"seq\":1,\"timestamp\":1,\"value\":2}",
        ] {
            let mut buf = bad.as_bytes().to_vec();
            let mut out = Vec::new();
            assert!(d.decode(&mut buf, &mut out).is_err(), "{bad} decoded");
            assert!(out.is_empty());
        }
        assert_eq!(d.fast_payloads, 0);
    }

    /// Decided: a key given twice is read as simd-json's tape reads it, the last value
    /// counts and every one must be valid (serde_json would refuse the object).
    #[test]
    fn duplicate_keys_count_their_last_value_and_each_must_be_valid() {
        let mut d = Decoder::default();
        let one = |d: &mut Decoder, text: &str| {
            let mut buf = text.as_bytes().to_vec();
            let mut out = Vec::new();
            d.decode(&mut buf, &mut out)
                .map(|_| (out[0].device_id.to_string(), out[0].seq, out[0].value))
        };
        assert_eq!(
            one(
                &mut d,
                r#"{"device_id":"a","seq":1,"timestamp":1,"value":2,"seq":5,"device_id":"b","value":3}"#
            ),
            Ok(("b".into(), 5, 3.0))
        );
        assert_eq!(
            one(&mut d, r#"[{"device_id":"b","seq":1,"timestamp":1,"value":2},{"device_id":"b","device_id":"c","seq":2,"timestamp":1,"value":2}]"#).map(|p| p.0),
            Ok("b".into())
        );
        assert_eq!(d.fast_payloads, 2);
        for bad in [
            r#"{"device_id":7,"device_id":"a","seq":1,"timestamp":1,"value":2}"#,
            r#"{"device_id":"a","seq":"x","seq":1,"timestamp":1,"value":2}"#,
            r#"{"device_id":"a","seq":1,"timestamp":null,"timestamp":1,"value":2}"#,
        ] {
            assert!(one(&mut d, bad).is_err(), "{bad}");
        }
        let mut out = Vec::new();
        let mut batch = br#"[{"device_id":"b","seq":1,"timestamp":1,"value":2},{"device_id":"b","device_id":"c","seq":2,"timestamp":1,"value":2}]"#.to_vec();
        d.decode(&mut batch, &mut out).expect("valid");
        let ids: Vec<&str> = out.iter().map(|p| p.device_id.as_ref()).collect();
        assert_eq!(ids, ["b", "c"]);
    }

    #[test]
    fn the_seed_shapes_truncated_at_every_byte_are_malformed() {
        let mut diff = Differential::new();
        for layout in [Layout::Compact, Layout::Spaced, Layout::Pretty] {
            let points: Vec<String> = (0..3)
                .map(|seq| seed_point("s-\u{e9}\\\"", seq, layout, &[NESTED]))
                .collect();
            for payload in [points[0].clone().into_bytes(), seed_batch(&points, layout)] {
                for end in 0..payload.len() {
                    let mut buf = payload[..end].to_vec();
                    assert!(
                        diff.ours.decode(&mut buf, &mut Vec::new()).is_err(),
                        "{:?} decoded",
                        String::from_utf8_lossy(&payload[..end])
                    );
                    diff.check(&payload[..end]);
                }
                diff.check(&payload);
            }
        }
    }

    /// A random point object in the forms JSON allows: members in any order, whitespace,
    /// unknown members (nested), escaped keys and ids, numbers with fractions and exponents;
    /// no key twice, so serde_json reads it too.
    fn random_point(rng: &mut Rng) -> String {
        const WS: [&str; 6] = ["", "", " ", "\n    ", "\t", "\r\n"];
        let w = |rng: &mut Rng| WS[rng.below(WS.len())];
        let key = |rng: &mut Rng, name: &str| -> String {
            if rng.below(6) == 0 {
                let k = rng.below(name.len());
                format!(
                    "\"{}\\u{:04x}{}\"",
                    &name[..k],
                    name.as_bytes()[k],
                    &name[k + 1..]
                )
            } else {
                format!("\"{name}\"")
            }
        };
        let ids = [
            "sensor-00001",
            "frontend1_ultra_high_perf_device",
            r#"q\"uote"#,
            r"caf\u00e9\/\ud83d\ude00",
            "ünï",
            r"back\\slash\t",
            "",
        ];
        let seq = rng.below(1 << 40) as u64;
        let ts_us = 1_763_798_400_000_000 + rng.below(1 << 30) as u64;
        let timestamp = match rng.below(5) {
            0 => format!("{}.{:06}", ts_us / 1_000_000, ts_us % 1_000_000),
            1 => format!("{}", ts_us / 1_000_000),
            2 => format!("{}e-6", ts_us),
            3 => format!("{}", ts_us as f64 / 1e6),
            _ => format!("{}.{:06}E0", ts_us / 1_000_000, ts_us % 1_000_000),
        };
        let centi = rng.below(20_000) as i64 - 10_000;
        let number = |rng: &mut Rng| match rng.below(5) {
            0 => format!("{}", centi as f64 / 100.0),
            1 => format!("{centi}e-2"),
            2 => format!("{centi}"),
            3 => format!("{}.{:02}", centi / 100, (centi % 100).abs()),
            _ => format!("{}E+1", centi as f64 / 1000.0),
        };
        let mut members = vec![
            (
                key(rng, "device_id"),
                format!("\"{}\"", ids[rng.below(ids.len())]),
            ),
            (key(rng, "seq"), seq.to_string()),
            (key(rng, "timestamp"), timestamp),
            (key(rng, "value"), number(rng)),
        ];
        for name in ["temperature", "humidity"] {
            if rng.below(2) == 0 {
                members.push((key(rng, name), number(rng)));
            }
        }
        let extras = [
            ("\"unit\"", "\"C\""),
            ("\"tags\"", "[]"),
            (
                "\"meta\"",
                r#"{"fw":"1.2","n":[1,{"x":null,"y":[true,false]}],"e":-1.5e-3}"#,
            ),
            ("\"n\\u00f6te\"", r#""line\nbreak \"quoted\"""#),
            ("\"seq2\"", "0"),
            ("\"device\"", "{}"),
        ];
        for _ in 0..rng.below(3) {
            let (k, v) = extras[rng.below(extras.len())];
            members.push((k.to_string(), v.to_string()));
        }
        for k in (1..members.len()).rev() {
            members.swap(k, rng.below(k + 1));
        }
        let mut text = format!("{{{}", w(rng));
        for (k, (name, value)) in members.iter().enumerate() {
            if k > 0 {
                text += &format!("{},{}", w(rng), w(rng));
            }
            text += &format!("{name}{}:{}{value}", w(rng), w(rng));
        }
        text + w(rng) + "}"
    }

    #[test]
    fn generated_shapes_decode_on_the_fast_path_as_simd_json_and_serde_json_read_them() {
        let mut diff = Differential::new();
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let mut serde_checked = 0;
        for round in 0..2_000 {
            let n = if round % 4 == 0 { 1 } else { 1 + rng.below(20) };
            let points: Vec<String> = (0..n).map(|_| random_point(&mut rng)).collect();
            let payload = if n == 1 && round % 8 == 0 {
                points[0].clone()
            } else {
                format!("[{}]", points.join([",", " ,\n", ", "][rng.below(3)]))
            };
            let fast = diff.ours.fast_payloads;
            diff.check(payload.as_bytes());
            assert_eq!(diff.ours.fast_payloads, fast + 1, "{payload}");
            // serde_json: the same points (its floats are best-effort, so within an ulp).
            let mut buf = payload.clone().into_bytes();
            let mut ours = Vec::new();
            diff.ours.decode(&mut buf, &mut ours).expect("valid");
            let theirs: Vec<Point> = if payload.starts_with('[') {
                serde_json::from_str(&payload).expect("serde_json reads it")
            } else {
                vec![serde_json::from_str(&payload).expect("serde_json reads it")]
            };
            assert_eq!(ours.len(), theirs.len());
            let close = |a: f64, b: f64| a == b || (a - b).abs() <= a.abs() * 2.3e-16;
            for (a, b) in ours.iter().zip(&theirs) {
                assert_eq!((&a.device_id, a.seq), (&b.device_id, b.seq), "{payload}");
                assert!(
                    close(a.timestamp, b.timestamp) && close(a.value, b.value),
                    "{payload}"
                );
                assert_eq!(a.temperature.is_some(), b.temperature.is_some());
                assert_eq!(a.humidity.is_some(), b.humidity.is_some());
            }
            serde_checked += 1;
            // Their mutations and truncations: the fast path answers as simd-json does.
            for m in byte_mutations(payload.as_bytes(), &mut rng, 8) {
                diff.check(&m);
            }
            diff.check(&payload.as_bytes()[..rng.below(payload.len())]);
        }
        assert_eq!(serde_checked, 2_000);
    }
}
