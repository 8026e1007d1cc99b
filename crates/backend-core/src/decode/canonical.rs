//! The fast path: one forward pass over exactly the bytes `point_format::Encoder` writes.
//!
//! A canonical point is
//!
//! ```text
//! {"device_id":"<id>","seq":<uint>,"timestamp":<dec>,"value":<dec>[,"temperature":<dec>][,"humidity":<dec>]}
//! ```
//!
//! with the keys in that order and no whitespace; `<id>` holds no backslash and no control
//! character, `<uint>` is a JSON integer of at most 19 digits and `<dec>` an optional minus,
//! a JSON integer part, a point and at least one digit: the forms the encoder writes. A
//! canonical payload is one such point or a JSON array of them, and nothing after it.
//!
//! Anything else, even valid JSON, is not for this path: [`Canonical::scan`] answers `None`
//! and the decoder hands the payload to the one-pass path (`onepass.rs`), then simd-json.
//! So this path only ever accepts, never refuses, and what it accepts simd-json accepts
//! too, with the same points:
//! - a number is converted the way simd-json converts it (`f64_from_parts`): with at most
//!   18 digits simd-json takes its exact conversion too, which for a significand below 2^53
//!   is one correctly rounded division by an exact power of ten; anything else is handed
//!   over;
//! - a device id is the bytes between the quotes, which are the unescaped id when there is
//!   no backslash; its length is checked against `MAX_DEVICE_ID` and it must be UTF-8;
//! - a payload without a backslash has no `\u` escape for `check_unicode_escapes` to refuse.
//!
//! The scan works on a short borrow of the payload (the decoder still needs the buffer
//! mutably if it must hand over), so points get an empty id first and [`Canonical::attach`]
//! borrows the ids once the payload is known to be canonical. Consecutive points of one
//! device share one id slice, compared with `memcmp` instead of scanned again.

use std::borrow::Cow;

use point_format::{Point, MAX_DEVICE_ID};

use super::digits::{digits_bytewise as digits, literal, uint_bytewise as uint, MAX_EXACT, POW10};
use super::{DecodeError, Shape};

/// The fast path's scratch, reused between messages.
#[derive(Debug, Default)]
pub(super) struct Canonical {
    /// One entry per run of consecutive points with the same device id.
    runs: Vec<Run>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    /// The id's bytes in the payload.
    start: usize,
    end: usize,
    /// Index of the run's first point among the points of this payload.
    first: usize,
}

const OPEN: &[u8] = b"{\"device_id\":\"";
const SEQ: &[u8] = b"\",\"seq\":";
const TIMESTAMP: &[u8] = b",\"timestamp\":";
const VALUE: &[u8] = b",\"value\":";
const TEMPERATURE: &[u8] = b",\"temperature\":";
const HUMIDITY: &[u8] = b",\"humidity\":";

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

    /// Reads the canonical point at `buf[at..]`, the payload's point number `index`;
    /// returns it and where it ends.
    #[inline]
    fn point<'a>(&mut self, buf: &[u8], at: usize, index: usize) -> Option<(Point<'a>, usize)> {
        let mut i = literal(buf, at, OPEN)?;
        i = self.device_id(buf, i, index)?;
        i = literal(buf, i, SEQ)?;
        let seq = uint(buf, &mut i)?;
        i = literal(buf, i, TIMESTAMP)?;
        let timestamp = decimal(buf, &mut i)?;
        i = literal(buf, i, VALUE)?;
        let value = decimal(buf, &mut i)?;
        let temperature = match literal(buf, i, TEMPERATURE) {
            Some(j) => {
                i = j;
                Some(decimal(buf, &mut i)?)
            }
            None => None,
        };
        let humidity = match literal(buf, i, HUMIDITY) {
            Some(j) => {
                i = j;
                Some(decimal(buf, &mut i)?)
            }
            None => None,
        };
        if buf.get(i) != Some(&b'}') {
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
        let mut ascii = true;
        let mut end = at;
        loop {
            match *buf.get(end)? {
                b'"' => break,
                b'\\' | 0x00..=0x1f => return None,
                b => ascii &= b.is_ascii(),
            }
            end += 1;
        }
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
    pub(super) fn attach<'a>(
        &self,
        buf: &'a [u8],
        points: &mut [Point<'a>],
    ) -> Result<(), DecodeError> {
        for (k, run) in self.runs.iter().enumerate() {
            // Checked by the scan already; checked again rather than assumed, without
            // `unsafe`, at the cost of one pass over each distinct id.
            let id = std::str::from_utf8(&buf[run.start..run.end])
                .map_err(|_| DecodeError("device_id is not UTF-8".into()))?;
            let end = self.runs.get(k + 1).map_or(points.len(), |r| r.first);
            for p in &mut points[run.first..end] {
                p.device_id = Cow::Borrowed(id);
            }
        }
        Ok(())
    }
}

/// A number with a fraction and no exponent at `*i` (`-?int.frac`), converted exactly as
/// simd-json converts it, or `None` when it is not of that form or not exactly convertible.
#[inline]
fn decimal(buf: &[u8], i: &mut usize) -> Option<f64> {
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
    if frac == 0 || frac >= POW10.len() || m > MAX_EXACT {
        return None;
    }
    // An exponent would change the value: leave it to simd-json.
    if matches!(buf.get(j), Some(b'e' | b'E')) {
        return None;
    }
    *i = j;
    // Below 2^53, so the signed conversion is exact and one instruction.
    let f = m as i64 as f64 / POW10[frac];
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
            // past 2^53, or 19 digits: not exactly convertible here
            "9007199254.740992",
            "1234567890.123456789",
            "18446744073709.551615",
            "0.000000000000000001",
        ] {
            assert_eq!(dec(s), None, "{s} accepted");
        }
    }
}
