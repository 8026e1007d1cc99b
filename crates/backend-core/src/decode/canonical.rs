//! The fast path: one forward pass over compact point objects, the form publishers write.
//!
//! A compact point is a JSON object of the members `device_id`, `seq`, `timestamp`,
//! `value` and optionally `temperature` and `humidity`, each once, in any order, with no
//! whitespace and no other member:
//!
//! ```text
//! {"device_id":"<id>","seq":<uint>,"timestamp":<dec>,"value":<dec>[,"temperature":<dec>][,"humidity":<dec>]}
//! ```
//!
//! is what `point_format::Encoder` writes; the seed's publishers (orjson) write
//! `{"device_id":..,"timestamp":..,"value":..,"seq":..}`. `<id>` holds no backslash and no
//! control character, `<uint>` is a JSON integer of at most 19 digits and `<dec>` an
//! optional minus, a JSON integer part, a point and at least one digit (the forms both
//! write). A compact payload is one such point or a JSON array of them, and nothing after
//! it. The order of the members is found per point by the byte after each key's quote, so
//! one stream's order costs a predicted branch per member, whichever order it is.
//!
//! Anything else, even valid JSON, is not for this path: [`Canonical::scan`] answers `None`
//! and the decoder hands the payload to the one-pass path (`onepass.rs`), then simd-json.
//! So this path only ever accepts, never refuses, and what it accepts simd-json accepts
//! too, with the same points:
//! - a number is converted the way simd-json converts it (`f64_from_parts`): with at most
//!   18 digits simd-json takes its exact conversion too, which for a significand below 2^53
//!   is one correctly rounded division by an exact power of ten, and past it (a 17-digit
//!   timestamp) a correctly rounded 128-bit quotient (`div_pow10`, which the one-pass
//!   path's differential test holds bit for bit); anything else is handed over;
//! - a device id is the bytes between the quotes, which are the unescaped id when there is
//!   no backslash; its length is checked against `MAX_DEVICE_ID` and it must be UTF-8;
//! - a payload without a backslash has no `\u` escape for `check_unicode_escapes` to refuse;
//! - a member given twice is handed over (simd-json's tape reads the last one; the one-pass
//!   path does the same).
//!
//! The scan works on a short borrow of the payload (the decoder still needs the buffer
//! mutably if it must hand over), so points get an empty id first and [`Canonical::attach`]
//! borrows the ids once the payload is known to be canonical. Consecutive points of one
//! device share one id slice, compared with `memcmp` instead of scanned again.

use std::borrow::Cow;

use point_format::{Point, MAX_DEVICE_ID};

use super::digits::{
    digits_bytewise as digits, div_pow10, literal, plain_string, uint_bytewise as uint, MAX_EXACT,
    POW10,
};
use super::Shape;

/// The fast path's scratch, reused between messages.
#[derive(Debug, Default)]
pub(super) struct Canonical {
    /// One entry per run of consecutive points with the same device id.
    runs: Vec<Run>,
    /// The buffer (address, length) of the last scan that answered `Some`, for a check.
    scanned: Option<(usize, usize)>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    /// The id's bytes in the payload, checked to be UTF-8 by the scan.
    start: usize,
    end: usize,
    /// Index of the run's first point among the points of this payload.
    first: usize,
}

/// The members of a point, as bits of the set a point has seen.
const DEVICE_ID: u8 = 1;
const SEQ: u8 = 2;
const TIMESTAMP: u8 = 4;
const VALUE: u8 = 8;
const TEMPERATURE: u8 = 16;
const HUMIDITY: u8 = 32;
/// The members every point has.
const REQUIRED: u8 = DEVICE_ID | SEQ | TIMESTAMP | VALUE;

impl Canonical {
    /// Appends the points of `buf` with empty device ids and returns its shape when `buf`
    /// is canonical; otherwise leaves `out` as it was and returns `None`.
    pub(super) fn scan<'a>(&mut self, buf: &[u8], out: &mut Vec<Point<'a>>) -> Option<Shape> {
        self.runs.clear();
        let before = out.len();
        let shape = self.scan_payload(buf, out, before);
        if shape.is_none() {
            out.truncate(before);
        }
        self.scanned = shape.map(|_| (buf.as_ptr() as usize, buf.len()));
        shape
    }

    fn scan_payload<'a>(
        &mut self,
        buf: &[u8],
        out: &mut Vec<Point<'a>>,
        before: usize,
    ) -> Option<Shape> {
        // simd-json refuses inputs whose offsets do not fit its u32 indexes.
        if u32::try_from(buf.len()).is_err() {
            return None;
        }
        match buf.first()? {
            b'{' => {
                let (p, end) = self.point(buf, 0, 0)?;
                out.push(p);
                (end == buf.len()).then_some(Shape::Legacy)
            }
            b'[' => {
                let (p, mut at) = self.point(buf, 1, 0)?;
                // Points are about as long as the first: room for all of them at once, with
                // an eighth to spare for points a digit shorter. Bounded as in the full
                // path, since only the first point is known to be one.
                let more = buf.len() / at;
                out.reserve((more + more / 8 + 1).min(4096));
                out.push(p);
                loop {
                    match buf.get(at)? {
                        b',' => {
                            let (p, end) = self.point(buf, at + 1, out.len() - before)?;
                            out.push(p);
                            at = end;
                        }
                        b']' => break,
                        _ => return None,
                    }
                }
                (at + 1 == buf.len()).then_some(Shape::Batch)
            }
            _ => None,
        }
    }

    /// Reads the compact point at `buf[at..]`, the payload's point number `index`; returns
    /// it and where it ends.
    #[inline]
    fn point<'a>(&mut self, buf: &[u8], at: usize, index: usize) -> Option<(Point<'a>, usize)> {
        if buf.get(at) != Some(&b'{') {
            return None;
        }
        let mut i = at + 1;
        let mut seen = 0u8;
        let (mut seq, mut timestamp, mut value) = (0, 0.0, 0.0);
        let (mut temperature, mut humidity) = (None, None);
        loop {
            // The key's first letter says which it must be; `literal` checks the rest,
            // quotes and colon included.
            let member = match *buf.get(i + 1)? {
                b'd' => {
                    i = literal(buf, i, b"\"device_id\":\"")?;
                    i = self.device_id(buf, i, index)? + 1;
                    DEVICE_ID
                }
                b's' => {
                    i = literal(buf, i, b"\"seq\":")?;
                    seq = uint(buf, &mut i)?;
                    SEQ
                }
                b't' => match literal(buf, i, b"\"timestamp\":") {
                    Some(j) => {
                        i = j;
                        timestamp = decimal(buf, &mut i)?;
                        TIMESTAMP
                    }
                    None => {
                        i = literal(buf, i, b"\"temperature\":")?;
                        temperature = Some(decimal(buf, &mut i)?);
                        TEMPERATURE
                    }
                },
                b'v' => {
                    i = literal(buf, i, b"\"value\":")?;
                    value = decimal(buf, &mut i)?;
                    VALUE
                }
                b'h' => {
                    i = literal(buf, i, b"\"humidity\":")?;
                    humidity = Some(decimal(buf, &mut i)?);
                    HUMIDITY
                }
                _ => return None,
            };
            if seen & member != 0 {
                return None;
            }
            seen |= member;
            match *buf.get(i)? {
                b',' => i += 1,
                b'}' => break,
                _ => return None,
            }
        }
        if seen & REQUIRED != REQUIRED {
            return None;
        }
        let point = Point {
            device_id: Cow::Borrowed(""),
            seq,
            timestamp,
            value,
            temperature,
            humidity,
        };
        Some((point, i + 1))
    }

    /// Reads the id starting at `buf[at..]` (after its opening quote) of the point with
    /// index `point`; returns where its closing quote is.
    #[inline]
    fn device_id(&mut self, buf: &[u8], at: usize, point: usize) -> Option<usize> {
        if let Some(run) = self.runs.last() {
            // The same bytes as the previous id, then a quote: the same plain string.
            let end = at + (run.end - run.start);
            if buf.get(at..end) == Some(&buf[run.start..run.end]) && buf.get(end) == Some(&b'"') {
                return Some(end);
            }
        }
        let (end, ascii) = plain_string(buf, at)?;
        if end - at > MAX_DEVICE_ID || (!ascii && std::str::from_utf8(&buf[at..end]).is_err()) {
            return None;
        }
        self.runs.push(Run {
            start: at,
            end,
            first: point,
        });
        Some(end)
    }

    /// Gives the points that [`Self::scan`] appended (`points`) their device ids, borrowed
    /// from the same `buf`.
    ///
    /// # Safety
    ///
    /// `buf` must hold the bytes of the last scan that answered `Some`, unmodified: the
    /// scan checked each run's bytes to be UTF-8, and they are not checked again here
    /// (that cost 6% of a drain of one point a message: 121 instructions of 2,090).
    pub(super) unsafe fn attach<'a>(&self, buf: &'a [u8], points: &mut [Point<'a>]) {
        debug_assert_eq!(self.scanned, Some((buf.as_ptr() as usize, buf.len())));
        for (k, run) in self.runs.iter().enumerate() {
            let bytes = &buf[run.start..run.end];
            debug_assert!(std::str::from_utf8(bytes).is_ok());
            // SAFETY: the scan checked these bytes to be UTF-8 (all ASCII, or
            // `str::from_utf8`), and the caller passes them unmodified.
            let id = unsafe { std::str::from_utf8_unchecked(bytes) };
            let end = self.runs.get(k + 1).map_or(points.len(), |r| r.first);
            for p in &mut points[run.first..end] {
                p.device_id = Cow::Borrowed(id);
            }
        }
    }
}

/// A number with a fraction and no exponent at `*i` (`-?int.frac`), converted exactly as
/// simd-json converts it, or `None` when it is not of that form or not exactly convertible.
#[inline(always)]
pub(super) fn decimal(buf: &[u8], i: &mut usize) -> Option<f64> {
    let negative = buf.get(*i) == Some(&b'-');
    let mut j = *i + usize::from(negative);
    let start = j;
    let mut m = 0;
    // 18 digits in all, fewer than simd-json's bound (19) for leaving its exact path.
    let int = digits(buf, &mut j, &mut m, 18)?;
    if int == 0 || (int > 1 && buf[start] == b'0') || buf.get(j) != Some(&b'.') {
        return None;
    }
    j += 1;
    let frac = digits(buf, &mut j, &mut m, 18 - int)?;
    if frac == 0 {
        return None;
    }
    // An exponent would change the value: leave it to simd-json.
    if matches!(buf.get(j), Some(b'e' | b'E')) {
        return None;
    }
    *i = j;
    let f = if m <= MAX_EXACT {
        // Below 2^53, so the signed conversion is exact and one instruction, and the
        // division rounds once, as simd-json's.
        m as i64 as f64 / POW10[frac]
    } else {
        // A 17- or 18-digit significand (Python's `time.time()` needs 17 digits three times
        // in four): simd-json's 128-bit product, correctly rounded, as `div_pow10` is.
        div_pow10(m, frac as u32)
    };
    Some(if negative { -f } else { f })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Option<f64> {
        let mut i = 0;
        let f = decimal(s.as_bytes(), &mut i)?;
        (i == s.len()).then_some(f)
    }

    #[test]
    fn compact_points_in_any_key_order_are_read_and_the_rest_handed_over() {
        let scan = |s: &str| {
            let mut c = Canonical::default();
            let mut out = Vec::new();
            let shape = c.scan(s.as_bytes(), &mut out)?;
            // SAFETY: the bytes the scan just read.
            unsafe { c.attach(s.as_bytes(), &mut out) };
            let p = out.first()?.clone();
            Some((
                shape,
                p.device_id.into_owned(),
                p.seq,
                p.timestamp,
                p.value,
                p.temperature,
                p.humidity,
            ))
        };
        let seed =
            r#"{"device_id":"sensor-00001","timestamp":1763798401.6924994,"value":-20.0,"seq":7}"#;
        assert_eq!(
            scan(seed),
            Some((
                Shape::Legacy,
                "sensor-00001".into(),
                7,
                1763798401.6924994,
                -20.0,
                None,
                None
            ))
        );
        let ours = r#"[{"device_id":"d","seq":1,"timestamp":1.5,"value":2.25,"temperature":-3.5,"humidity":45.2},{"humidity":1.0,"seq":2,"value":0.5,"timestamp":2.5,"device_id":"d"}]"#;
        let got = scan(ours).unwrap();
        assert_eq!(
            got,
            (
                Shape::Batch,
                "d".into(),
                1,
                1.5,
                2.25,
                Some(-3.5),
                Some(45.2)
            )
        );
        for handed_over in [
            // a member twice, one missing, one unknown, whitespace, an escape
            r#"{"device_id":"d","seq":1,"seq":2,"timestamp":1.5,"value":2.5}"#,
            r#"{"device_id":"d","seq":1,"timestamp":1.5}"#,
            r#"{"device_id":"d","seq":1,"timestamp":1.5,"value":2.5,"unit":"C"}"#,
            r#"{"device_id":"d", "seq":1,"timestamp":1.5,"value":2.5}"#,
            r#"{"device_id":"d\u0041","seq":1,"timestamp":1.5,"value":2.5}"#,
            r#"{"device_id":"d","seq":1,"timestamp":1.5,"value":2.5,}"#,
        ] {
            assert_eq!(scan(handed_over), None, "{handed_over}");
        }
    }

    #[test]
    fn decimals_convert_like_the_standard_parser_or_are_handed_over() {
        for s in [
            "1763798400.123456",
            "1763798400.000001",
            "0.0",
            "-0.0",
            "-0.05",
            "50.12",
            "100.00",
            "45.2",
            "9007199254.740991",
            "0.1",
            "0.00000000000000001",
            // past 2^53: 17 and 18 digits, the 128-bit quotient
            "9007199254.740992",
            "1763798401.6924994",
            "-1763798401.6924994",
            "176379840.123456789",
            "99999999.9999999999",
            "0.99999999999999999",
        ] {
            let f = dec(s).unwrap_or_else(|| panic!("{s} handed over"));
            assert_eq!(f.to_bits(), s.parse::<f64>().unwrap().to_bits(), "{s}");
        }
        for s in [
            "1",
            "1.",
            ".5",
            "-",
            "-.5",
            "01.5",
            "00.5",
            "1.5e3",
            "1.5E3",
            "+1.5",
            // 19 digits or more: past simd-json's exact conversion, handed over
            "1234567890.123456789",
            "18446744073709.551615",
            "0.000000000000000001",
        ] {
            assert_eq!(dec(s), None, "{s} accepted");
        }
    }
}
