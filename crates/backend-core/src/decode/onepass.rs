//! The fast path: one forward pass over any point payload it can prove valid.
//!
//! A payload is a point object or a JSON array of them, with whitespace anywhere JSON allows
//! it. An object's members come in any order; `device_id`, `seq`, `timestamp`, `value`,
//! `temperature` and `humidity` are read, any other member is skipped (strings, numbers,
//! literals, nested objects and arrays, to a depth of [`MAX_DEPTH`]) but still checked to be
//! JSON. Strings may hold escapes, in keys too (`"s\u0065q"` is `seq`); a device id with
//! escapes is unescaped in place, so every id is still borrowed from the payload. A key given
//! twice counts as simd-json's tape reads it: each value is checked, the last one wins.
//!
//! [`OnePass::scan`] never refuses a payload, it only hands over (`None`) what it cannot
//! prove, and the decoder gives that to simd-json, which alone decides what is malformed and
//! says why. Handed over: anything not JSON or not a point (a missing or mistyped field, a
//! device id past `MAX_DEVICE_ID`), and the valid rarities whose conversion is not proven
//! the same here:
//! - a number with more than 18 digits, an exponent of more than 3 digits, or a power of
//!   ten outside 10^-300..10^280. In range, simd-json's `f64_from_parts` converts
//!   correctly rounded: with a significand up to 2^53 and a power up to 10^±22 by one
//!   multiplication or division by an exact power of ten, as here; otherwise by a 128-bit
//!   product, as std's parser does here (a differential test holds them bit for bit). An
//!   integer of at most 18 digits is its `U64`/`I64`, taken `as f64`;
//! - a negative `seq` (simd-json reads `-0` as seq 0, and refuses the others);
//! - a string with a raw control character, an escape that is not JSON, or a `\u` escape
//!   that is half a surrogate pair (the full path's `check_unicode_escapes` refuses those);
//! - nesting deeper than [`MAX_DEPTH`].
//!
//! So what this path accepts simd-json accepts too, with the same points; a differential
//! test in `decode.rs` holds it against simd-json and serde_json.
//!
//! The scan reads a shared borrow of the payload (the decoder still needs it mutably if it
//! must hand over): points get an empty id first; then [`OnePass::unescape`] rewrites
//! escaped ids in place and [`OnePass::attach`] borrows the ids. Consecutive points of one
//! device share one id, compared with `memcmp` instead of scanned again.

use std::borrow::Cow;

use point_format::{Point, MAX_DEVICE_ID};

use super::digits::{digits, div_pow10, literal, plain_string, uint, MAX_EXACT, POW10};
use super::{DecodeError, Shape};

/// Nesting of skipped values that the fast path follows; deeper goes to simd-json.
const MAX_DEPTH: usize = 64;

/// The fast path's scratch, reused between messages.
#[derive(Debug, Default)]
pub(super) struct OnePass {
    /// One entry per run of consecutive points with the same device id string.
    runs: Vec<Run>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    id: Span,
    /// Index of the run's first point among the points of this payload.
    first: usize,
}

/// A device id string in the payload, between its quotes.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    /// Its length once unescaped (`end - start` without escapes).
    len: usize,
    escaped: bool,
}

/// A point's device id as the scan found it.
#[derive(Debug, Clone, Copy)]
enum Id {
    /// The same string as the last run's.
    Last,
    New(Span),
}

/// The members the decoder reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    DeviceId,
    Seq,
    Timestamp,
    Value,
    Temperature,
    Humidity,
    Other,
}

impl OnePass {
    /// Appends the points of `buf` with empty device ids and returns its shape when the
    /// fast path can prove `buf` a valid payload; otherwise leaves `out` as it was and
    /// returns `None`.
    pub(super) fn scan<'a>(&mut self, buf: &[u8], out: &mut Vec<Point<'a>>) -> Option<Shape> {
        self.runs.clear();
        let before = out.len();
        let shape = self.payload(buf, out, before);
        if shape.is_none() {
            out.truncate(before);
        }
        shape
    }

    fn payload<'a>(
        &mut self,
        buf: &[u8],
        out: &mut Vec<Point<'a>>,
        before: usize,
    ) -> Option<Shape> {
        // simd-json refuses inputs whose offsets do not fit its u32 indexes.
        if u32::try_from(buf.len()).is_err() {
            return None;
        }
        let mut i = ws(buf, 0);
        let shape = match *buf.get(i)? {
            b'{' => {
                let (p, end) = self.point(buf, i, 0)?;
                out.push(p);
                i = end;
                Shape::Legacy
            }
            b'[' => {
                i = ws(buf, i + 1);
                if buf.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    let (p, end) = self.point(buf, i, 0)?;
                    // Points are about as long as the first: room for all of them at once,
                    // with a quarter to spare for shorter ones (a float's shortest form
                    // varies by a few digits). Bounded as in the full path, since only the
                    // first point is known to be one.
                    let more = (buf.len() - i) / (end - i);
                    out.reserve((more + more / 4 + 1).min(4096));
                    out.push(p);
                    i = ws(buf, end);
                    loop {
                        match *buf.get(i)? {
                            b',' => {
                                i = ws(buf, i + 1);
                                let (p, end) = self.point(buf, i, out.len() - before)?;
                                out.push(p);
                                i = ws(buf, end);
                            }
                            b']' => break,
                            _ => return None,
                        }
                    }
                    i += 1;
                }
                Shape::Batch
            }
            _ => return None,
        };
        (ws(buf, i) == buf.len()).then_some(shape)
    }

    /// Reads the point object at `buf[at..]`, the payload's point number `index`; returns it
    /// and where it ends.
    #[inline]
    fn point<'a>(&mut self, buf: &[u8], at: usize, index: usize) -> Option<(Point<'a>, usize)> {
        if buf.get(at) != Some(&b'{') {
            return None;
        }
        let mut i = ws(buf, at + 1);
        let mut id = None;
        let (mut seq, mut timestamp, mut value) = (None, None, None);
        let (mut temperature, mut humidity) = (None, None);
        loop {
            // An empty object has no device_id: the full path says so.
            if buf.get(i) != Some(&b'"') {
                return None;
            }
            let (field, after) = key(buf, i + 1)?;
            i = ws(buf, after);
            if buf.get(i) != Some(&b':') {
                return None;
            }
            i = ws(buf, i + 1);
            match field {
                Field::DeviceId => {
                    let (got, end) = self.device_id(buf, i)?;
                    id = Some(got);
                    i = end;
                }
                Field::Seq => seq = Some(uint(buf, &mut i)?),
                Field::Timestamp => timestamp = Some(number(buf, &mut i)?),
                Field::Value => value = Some(number(buf, &mut i)?),
                Field::Temperature => temperature = Some(number(buf, &mut i)?),
                Field::Humidity => humidity = Some(number(buf, &mut i)?),
                Field::Other => i = skip_value(buf, i, 0)?,
            }
            i = ws(buf, i);
            match *buf.get(i)? {
                b',' => i = ws(buf, i + 1),
                b'}' => break,
                _ => return None,
            }
        }
        let point = Point {
            device_id: Cow::Borrowed(""),
            seq: seq?,
            timestamp: timestamp?,
            value: value?,
            temperature,
            humidity,
        };
        match id? {
            Id::Last => {}
            Id::New(id) => self.runs.push(Run { id, first: index }),
        }
        Some((point, i + 1))
    }

    /// Reads the device id string at `buf[at..]` (its opening quote); returns it and where
    /// the string ends.
    #[inline]
    fn device_id(&self, buf: &[u8], at: usize) -> Option<(Id, usize)> {
        if buf.get(at) != Some(&b'"') {
            return None;
        }
        let body = at + 1;
        if let Some(run) = self.runs.last() {
            // The same bytes as the last id, then a quote: the same string (a valid string
            // body never ends inside an escape).
            let (start, end) = (run.id.start, run.id.end);
            let stop = body + (end - start);
            if buf.get(body..stop) == Some(&buf[start..end]) && buf.get(stop) == Some(&b'"') {
                return Some((Id::Last, stop + 1));
            }
        }
        let Some((end, ascii)) = plain_string(buf, body) else {
            return escaped_id(buf, body);
        };
        if end - body > MAX_DEVICE_ID || (!ascii && std::str::from_utf8(&buf[body..end]).is_err()) {
            return None;
        }
        let span = Span {
            start: body,
            end,
            len: end - body,
            escaped: false,
        };
        Some((Id::New(span), end + 1))
    }

    /// Rewrites the escaped device ids that [`Self::scan`] found in `buf` unescaped, in
    /// place: each id's bytes then start where it did and are `len` long.
    pub(super) fn unescape(&mut self, buf: &mut [u8]) -> Result<(), DecodeError> {
        for run in self.runs.iter_mut().filter(|r| r.id.escaped) {
            let len = unescape_in_place(buf, run.id.start, run.id.end)
                .filter(|&len| len == run.id.len)
                .ok_or_else(|| DecodeError("device_id holds an invalid escape".into()))?;
            run.id.end = run.id.start + len;
            run.id.escaped = false;
        }
        Ok(())
    }

    /// Gives the points that [`Self::scan`] appended (`points`) their device ids, borrowed
    /// from the same `buf` after [`Self::unescape`].
    pub(super) fn attach<'a>(
        &self,
        buf: &'a [u8],
        points: &mut [Point<'a>],
    ) -> Result<(), DecodeError> {
        for (k, run) in self.runs.iter().enumerate() {
            // Checked by the scan already; checked again rather than assumed, without
            // `unsafe`, at the cost of one pass over each distinct id.
            let id = std::str::from_utf8(&buf[run.id.start..run.id.start + run.id.len])
                .map_err(|_| DecodeError("device_id is not UTF-8".into()))?;
            let end = self.runs.get(k + 1).map_or(points.len(), |r| r.first);
            for p in &mut points[run.first..end] {
                p.device_id = Cow::Borrowed(id);
            }
        }
        Ok(())
    }
}

/// JSON whitespace from `buf[i]` on; returns where it ends.
#[inline(always)]
fn ws(buf: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = buf.get(i) {
        i += 1;
    }
    i
}

/// Reads the key at `buf[at..]` (after its opening quote); returns the member it names and
/// where the string ends.
#[inline(always)]
fn key(buf: &[u8], at: usize) -> Option<(Field, usize)> {
    // The names we read, with their closing quote, compared as fixed-size words.
    fn is<const N: usize>(buf: &[u8], at: usize, name: &[u8; N]) -> bool {
        buf.get(at..at + N) == Some(&name[..])
    }
    let known = match buf.get(at) {
        Some(b'd') if is(buf, at, b"device_id\"") => Some((Field::DeviceId, 10)),
        Some(b's') if is(buf, at, b"seq\"") => Some((Field::Seq, 4)),
        Some(b't') if is(buf, at, b"timestamp\"") => Some((Field::Timestamp, 10)),
        Some(b't') if is(buf, at, b"temperature\"") => Some((Field::Temperature, 12)),
        Some(b'v') if is(buf, at, b"value\"") => Some((Field::Value, 6)),
        Some(b'h') if is(buf, at, b"humidity\"") => Some((Field::Humidity, 9)),
        _ => None,
    };
    if let Some((field, len)) = known {
        return Some((field, at + len));
    }
    // A plain ASCII key that is none of the names above (each was compared with its
    // closing quote) is no member we read; one with escapes or other bytes may still be.
    match plain_string(buf, at) {
        Some((end, true)) => Some((Field::Other, end + 1)),
        _ => key_unescaped(buf, at),
    }
}

#[inline(always)]
fn field(name: &[u8]) -> Field {
    match name {
        b"device_id" => Field::DeviceId,
        b"seq" => Field::Seq,
        b"timestamp" => Field::Timestamp,
        b"value" => Field::Value,
        b"temperature" => Field::Temperature,
        b"humidity" => Field::Humidity,
        _ => Field::Other,
    }
}

/// A key with escapes or non-ASCII: unescaped into a scratch as long as the longest name.
#[cold]
fn key_unescaped(buf: &[u8], at: usize) -> Option<(Field, usize)> {
    let mut name = [0u8; 12];
    let mut len = 0;
    let end = string_body(buf, at, |b| {
        if let Some(slot) = name.get_mut(len) {
            *slot = b;
        }
        len += 1;
    })?;
    let field = if len <= name.len() {
        field(&name[..len])
    } else {
        Field::Other
    };
    Some((field, end))
}

/// A device id with escapes: checked and measured; unescaped later, in place.
#[cold]
fn escaped_id(buf: &[u8], body: usize) -> Option<(Id, usize)> {
    let mut len = 0;
    let end = string_body(buf, body, |_| len += 1)?;
    if len > MAX_DEVICE_ID {
        return None;
    }
    let span = Span {
        start: body,
        end: end - 1,
        len,
        escaped: true,
    };
    Some((Id::New(span), end))
}

/// Reads the string body at `buf[at..]` (after its opening quote), giving each of its bytes
/// unescaped to `emit`; returns where the string ends (after its closing quote). `None` for a
/// raw control character, an escape JSON does not have, half a surrogate pair, or bytes that
/// are not UTF-8.
#[inline]
fn string_body(buf: &[u8], at: usize, mut emit: impl FnMut(u8)) -> Option<usize> {
    let mut i = at;
    let mut ascii = true;
    loop {
        match *buf.get(i)? {
            b'"' => break,
            b'\\' => {
                let (bytes, n, used) = escape(buf, i)?;
                bytes[..n].iter().for_each(|&b| emit(b));
                i += used;
            }
            0x00..=0x1f => return None,
            b => {
                ascii &= b.is_ascii();
                emit(b);
                i += 1;
            }
        }
    }
    // Escapes are ASCII, so the raw body is UTF-8 exactly when its other bytes are.
    if !ascii && std::str::from_utf8(&buf[at..i]).is_err() {
        return None;
    }
    Some(i + 1)
}

/// Skips the string body at `buf[at..]` (after its opening quote), checking it; returns
/// where the string ends. A body without escapes or control characters takes one tight
/// loop, eight bytes at a time.
#[inline]
fn skip_string(buf: &[u8], at: usize) -> Option<usize> {
    let Some((end, ascii)) = plain_string(buf, at) else {
        return string_body(buf, at, |_| {});
    };
    if !ascii && std::str::from_utf8(&buf[at..end]).is_err() {
        return None;
    }
    Some(end + 1)
}

/// The escape at `buf[i]` (a backslash): the UTF-8 bytes it stands for (`n` of them) and how
/// many bytes of the payload it takes.
#[inline]
fn escape(buf: &[u8], i: usize) -> Option<([u8; 4], usize, usize)> {
    let one = |b: u8| Some(([b, 0, 0, 0], 1, 2));
    match *buf.get(i + 1)? {
        b'"' => one(b'"'),
        b'\\' => one(b'\\'),
        b'/' => one(b'/'),
        b'b' => one(0x08),
        b'f' => one(0x0c),
        b'n' => one(b'\n'),
        b'r' => one(b'\r'),
        b't' => one(b'\t'),
        b'u' => {
            let (cp, used) = match hex4(buf, i + 2)? {
                high @ 0xD800..=0xDBFF => {
                    if buf.get(i + 6..i + 8) != Some(b"\\u") {
                        return None;
                    }
                    let low = hex4(buf, i + 8)?;
                    if !(0xDC00..=0xDFFF).contains(&low) {
                        return None;
                    }
                    (0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00), 12)
                }
                0xDC00..=0xDFFF => return None,
                cp => (cp, 6),
            };
            let mut bytes = [0u8; 4];
            let n = char::from_u32(cp)?.encode_utf8(&mut bytes).len();
            Some((bytes, n, used))
        }
        _ => None,
    }
}

/// Four hex digits at `buf[at..]`.
#[inline]
fn hex4(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4)?.iter().try_fold(0u32, |n, &b| {
        let d = char::from(b).to_digit(16)?;
        Some(n << 4 | d)
    })
}

/// Unescapes the string body `buf[start..end]` in place (unescaped text is never longer);
/// returns its new length.
fn unescape_in_place(buf: &mut [u8], start: usize, end: usize) -> Option<usize> {
    let (mut r, mut w) = (start, start);
    while r < end {
        if buf[r] == b'\\' {
            let (bytes, n, used) = escape(buf, r)?;
            buf[w..w + n].copy_from_slice(&bytes[..n]);
            w += n;
            r += used;
        } else {
            buf[w] = buf[r];
            w += 1;
            r += 1;
        }
    }
    Some(w - start)
}

/// Skips the JSON value at `buf[i..]`, checking it; returns where it ends.
fn skip_value(buf: &[u8], i: usize, depth: usize) -> Option<usize> {
    match *buf.get(i)? {
        b'"' => skip_string(buf, i + 1),
        b'{' if depth < MAX_DEPTH => {
            let mut j = ws(buf, i + 1);
            if buf.get(j) == Some(&b'}') {
                return Some(j + 1);
            }
            loop {
                if buf.get(j) != Some(&b'"') {
                    return None;
                }
                j = ws(buf, skip_string(buf, j + 1)?);
                if buf.get(j) != Some(&b':') {
                    return None;
                }
                j = ws(buf, skip_value(buf, ws(buf, j + 1), depth + 1)?);
                match *buf.get(j)? {
                    b',' => j = ws(buf, j + 1),
                    b'}' => return Some(j + 1),
                    _ => return None,
                }
            }
        }
        b'[' if depth < MAX_DEPTH => {
            let mut j = ws(buf, i + 1);
            if buf.get(j) == Some(&b']') {
                return Some(j + 1);
            }
            loop {
                j = ws(buf, skip_value(buf, j, depth + 1)?);
                match *buf.get(j)? {
                    b',' => j = ws(buf, j + 1),
                    b']' => return Some(j + 1),
                    _ => return None,
                }
            }
        }
        b't' => literal(buf, i, b"true"),
        b'f' => literal(buf, i, b"false"),
        b'n' => literal(buf, i, b"null"),
        b'-' | b'0'..=b'9' => skip_number(buf, i),
        _ => None,
    }
}

/// Skips the number at `buf[i..]` as [`number`] checks it, without converting it: a short
/// integer (what skipped members mostly hold) by its digits alone, anything else by
/// [`number`].
#[inline]
fn skip_number(buf: &[u8], i: usize) -> Option<usize> {
    let start = i + usize::from(buf[i] == b'-');
    let mut j = start;
    while let Some(b'0'..=b'9') = buf.get(j) {
        j += 1;
    }
    let int = j - start;
    let plain = (1..=18).contains(&int)
        && (int == 1 || buf[start] != b'0')
        && !matches!(buf.get(j), Some(b'.' | b'e' | b'E'));
    if plain {
        return Some(j);
    }
    let mut j = i;
    number(buf, &mut j)?;
    Some(j)
}

/// A JSON number at `*i` as simd-json gives it to a float field, or `None` when it is not a
/// JSON number or not one whose conversion is proven the same here (see the module doc).
#[inline]
fn number(buf: &[u8], i: &mut usize) -> Option<f64> {
    // The common form first, `-?int.frac` of at most 18 digits, read as the canonical path
    // reads it (byte by byte: faster than words for the short numbers points carry);
    // anything else (an integer, an exponent, more digits) below.
    if let Some(f) = super::canonical::decimal(buf, i) {
        return Some(f);
    }
    let negative = buf.get(*i) == Some(&b'-');
    let mut j = *i + usize::from(negative);
    let start = j;
    let mut m = 0;
    // 18 digits in all, fewer than simd-json's bound (19) for leaving its exact path.
    let int = digits(buf, &mut j, &mut m, 18)?;
    if int == 0 || (int > 1 && buf[start] == b'0') {
        return None;
    }
    let mut float = false;
    let mut frac = 0;
    if buf.get(j) == Some(&b'.') {
        j += 1;
        frac = digits(buf, &mut j, &mut m, 18 - int)?;
        if frac == 0 {
            return None;
        }
        float = true;
    }
    let mut exponent = -(frac as i64);
    if let Some(b'e' | b'E') = buf.get(j) {
        j += 1;
        let negative_exponent = buf.get(j) == Some(&b'-');
        if let Some(b'-' | b'+') = buf.get(j) {
            j += 1;
        }
        let mut e = 0;
        if digits(buf, &mut j, &mut e, 3)? == 0 {
            return None;
        }
        exponent += if negative_exponent {
            -(e as i64)
        } else {
            e as i64
        };
        float = true;
    }
    if !float {
        *i = j;
        // At most 18 digits: simd-json's U64, or I64 when negative (`-0` is I64 0).
        return Some(if negative {
            -(m as i64) as f64
        } else {
            m as f64
        });
    }
    if (-22..=22).contains(&exponent) && m <= MAX_EXACT {
        let f = m as f64;
        let f = if exponent < 0 {
            f / POW10[exponent.unsigned_abs() as usize]
        } else {
            f * POW10[exponent as usize]
        };
        *i = j;
        return Some(if negative { -f } else { f });
    }
    // A significand past 2^53 (a 17-digit timestamp: Python's `time.time()` as orjson
    // writes it) or a larger power: simd-json takes its 128-bit multiplication, correctly
    // rounded (or, when it cannot tell, std's parser); so are these.
    let f = if (0..=19).contains(&exponent) {
        // Exact in a u128 (below 10^37), then one correctly rounded conversion.
        (u128::from(m) * 10u128.pow(exponent as u32)) as f64
    } else if (-19..0).contains(&exponent) && m > MAX_EXACT {
        div_pow10(m, exponent.unsigned_abs() as u32)
    } else if (-300..=280).contains(&exponent) {
        // Rare: std's parser (slower, no tables here). The result is finite and normal.
        std::str::from_utf8(&buf[*i..j])
            .ok()?
            .parse::<f64>()
            .ok()?
            .abs()
    } else {
        return None;
    };
    *i = j;
    Some(if negative { -f } else { f })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(s: &str) -> Option<f64> {
        let mut i = 0;
        let f = number(s.as_bytes(), &mut i)?;
        (i == s.len()).then_some(f)
    }

    #[test]
    fn numbers_convert_like_the_standard_parser_or_are_handed_over() {
        for s in [
            "1763798400.123456",
            "1763798400.000001",
            "1763798400",
            "0.0",
            "-0.0",
            "-0.05",
            "50.12",
            "100.00",
            "45.2",
            "9007199254.740991",
            "0.1",
            "0.00000000000000001",
            "0",
            "-1",
            "1e2",
            "1E2",
            "1.5e-3",
            "1.5E+3",
            "-2.5e10",
            "17637984001234.56e-4",
            "123456789012345678",
            // past 2^53 or 10^22: the 128-bit path
            "1763798400.1234567",
            "9007199254.740992",
            "1e23",
            "-1.5e-23",
            "123456789012345678e-300",
        ] {
            let f = num(s).unwrap_or_else(|| panic!("{s} handed over"));
            assert_eq!(f.to_bits(), s.parse::<f64>().unwrap().to_bits(), "{s}");
        }
        // simd-json reads `-0` as the integer 0: +0.0 in a float field.
        assert_eq!(num("-0").map(f64::to_bits), Some(0.0f64.to_bits()));
        for s in [
            "",
            "1.",
            ".5",
            "-",
            "-.5",
            "01.5",
            "00.5",
            "01",
            "+1.5",
            "1e",
            "1e+",
            "1.5e1000",
            "1e300",
            "1e-301",
            // 19 digits and more: simd-json's slow path, not proven the same here
            "1234567890.123456789",
            "18446744073709.551615",
            "0.000000000000000001",
            "1234567890123456789",
        ] {
            assert_eq!(num(s), None, "{s} accepted");
        }
    }

    #[test]
    fn long_significands_round_as_the_standard_parser_rounds_them() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for k in 0..300_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = 16 + (k % 3) as usize; // 16..18 digits, past 2^53 mostly
            let m = x % 10u64.pow(digits as u32);
            let point = 1 + (x >> 40) as usize % (digits - 1);
            let text = format!("{m:0digits$}");
            let text = format!("{}.{}", &text[..point], &text[point..]);
            let text = text.trim_start_matches('0');
            let text = if text.starts_with('.') {
                format!("0{text}")
            } else {
                text.to_string()
            };
            if let Some(f) = num(&text) {
                assert_eq!(
                    f.to_bits(),
                    text.parse::<f64>().unwrap().to_bits(),
                    "{text}"
                );
            }
        }
        // Ties and near-ties at the 53rd bit.
        for text in [
            "9007199254.7409925",
            "9007199254.7409935",
            "18014398509.481985",
            "1763798400.1234567",
            "0.9007199254740993",
            "999999999999999.999",
        ] {
            let f = num(text).unwrap_or_else(|| panic!("{text} handed over"));
            assert_eq!(
                f.to_bits(),
                text.parse::<f64>().unwrap().to_bits(),
                "{text}"
            );
        }
    }

    #[test]
    fn skipped_strings_stop_at_the_first_quote_escape_control_or_non_ascii_byte_in_any_lane() {
        // Every special byte at every offset across two eight-byte words: the word-at-a-time
        // skip must find the same end (or refusal) as reading byte by byte.
        for len in 0..20 {
            for at in 0..len {
                for special in [b'"', b'\\', 0x00, 0x1f, 0x7f, 0x80, 0xc3, 0xff] {
                    let mut body = vec![b'a'; len];
                    body[at] = special;
                    body.extend_from_slice(b"\"tail\"");
                    let by_bytes = string_body(&body, 0, |_| {});
                    assert_eq!(skip_string(&body, 0), by_bytes, "{len} {at} {special:#x}");
                }
            }
        }
    }

    #[test]
    fn skipped_numbers_end_where_reading_them_ends_or_are_handed_over_alike() {
        for n in [
            "0",
            "-0",
            "7",
            "-67",
            "2",
            "00",
            "-",
            "01",
            "123456789012345678",
            "1234567890123456789",
            "1.5",
            "1e3",
            "-1.25e-2",
            "1.",
            "-x",
            "0x1",
        ] {
            let mut end = 0;
            let read = number(n.as_bytes(), &mut end).map(|_| end);
            assert_eq!(skip_number(n.as_bytes(), 0), read, "{n}");
        }
    }

    #[test]
    fn escapes_decode_to_their_utf8_and_half_surrogates_are_handed_over() {
        let body = |s: &str| {
            let mut out = Vec::new();
            string_body(s.as_bytes(), 0, |b| out.push(b)).map(|_| out)
        };
        assert_eq!(
            body(r#"a\"\\\/\b\f\n\r\tz""#).as_deref(),
            Some(&b"a\"\\/\x08\x0c\n\r\tz"[..])
        );
        assert_eq!(
            body(r#"\u00e9\ud83d\ude00\u0000""#).as_deref(),
            Some("é😀\0".as_bytes())
        );
        for bad in [
            r#"\ud800""#,
            r#"\ud800\u0041""#,
            r#"\udc00""#,
            r#"\x""#,
            r#"\u00g0""#,
            "tab\t\"",
            r#"unterminated"#,
        ] {
            let bytes = bad.as_bytes();
            assert_eq!(
                string_body(bytes, 0, |_| {}).filter(|&e| e == bytes.len()),
                None,
                "{bad:?} accepted"
            );
        }
        assert_eq!(string_body(b"\xc3\xa9\"", 0, |_| {}), Some(3));
        assert_eq!(string_body(b"\xc3\"", 0, |_| {}), None);
    }
}
