//! Reading JSON digits, strings and literals, shared by the canonical and the one-pass
//! paths.
//!
//! Decimals (`-?int.frac`, what points carry) are read byte by byte ([`digits_bytewise`],
//! by the canonical path's reader, which the one-pass path tries first too): measured in
//! bench D and in a loop decoding D2's one-point messages, that was faster than every
//! word-wise reading tried (the general one below, a u128 window, a one-word short form:
//! 68.5 against 62.1 ns a message for the last), though two of those ran fewer
//! instructions. Integers in skipped members and the numbers the decimal reader hands over
//! (exponents, integers in float members, long fractions) are read eight bytes at a time
//! ([`digits`]: one little-endian load says how many of the eight are digits, no branch
//! per digit); within eight bytes of the payload's end byte by byte. String bodies are
//! scanned eight bytes at a time ([`plain_string`]).

/// Exact powers of ten (every one up to 10^22 is an f64), as simd-json divides by them.
pub(super) const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Significands up to this are exact in an f64 (simd-json's bound for its exact conversion).
pub(super) const MAX_EXACT: u64 = (1 << 53) - 1;

/// 10^k for the digit counts of one word.
const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// Where `lit` ends when `buf[at..]` starts with it.
#[inline(always)]
pub(super) fn literal(buf: &[u8], at: usize, lit: &[u8]) -> Option<usize> {
    let end = at + lit.len();
    (buf.get(at..end)? == lit).then_some(end)
}

/// Where the string body at `buf[at..]` (after its opening quote) ends, at its closing
/// quote, and whether it is all ASCII; `None` when it holds a backslash or a raw control
/// character before that quote (an escape or not JSON: for the caller's slower path), or
/// has no closing quote. Bytes that are not ASCII are the caller's to check as UTF-8.
///
/// Eight bytes at a time while none is a quote, a backslash, a control character or
/// non-ASCII (SWAR: the lowest bit set in `special` is the high bit of the first such byte;
/// bits above it may be false), then byte by byte from the first such byte unless it is the
/// closing quote.
#[inline(always)]
pub(super) fn plain_string(buf: &[u8], at: usize) -> Option<(usize, bool)> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = at;
    while let Some(chunk) = buf.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        let quote = zero(w ^ (ONES * u64::from(b'"')));
        let special = quote
            | zero(w ^ (ONES * u64::from(b'\\')))
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH)
            | (w & HIGH);
        if special == 0 {
            i += 8;
            continue;
        }
        // Bytes below the first special one are plain ASCII (the borrows of the
        // subtractions above run only upward from a special byte, so the lowest bit of
        // each mask is exact).
        i += (special.trailing_zeros() / 8) as usize;
        if special & special.wrapping_neg() & quote != 0 {
            // It is the closing quote: done, without reading the byte again.
            return Some((i, true));
        }
        break;
    }
    let mut ascii = true;
    loop {
        match *buf.get(i)? {
            b'"' => return Some((i, ascii)),
            b'\\' | 0x00..=0x1f => return None,
            b => ascii &= b.is_ascii(),
        }
        i += 1;
    }
}

/// The digit at `buf[i]`, if there is one.
#[inline(always)]
fn digit(buf: &[u8], i: usize) -> Option<u64> {
    let d = buf.get(i)?.wrapping_sub(b'0');
    (d <= 9).then_some(u64::from(d))
}

/// Reads the digits at `*i` into `*n` (`n = 10 n + d` for each), at most `budget` of them
/// (at most 19, so that `n` fits a u64 when it starts at 0); returns how many, or `None`
/// when more than `budget` follow. `*i` and `*n` are left as they were on `None`.
#[inline(always)]
pub(super) fn digits(buf: &[u8], i: &mut usize, n: &mut u64, budget: usize) -> Option<usize> {
    let start = *i;
    let mut j = start;
    let mut m = *n;
    while let Some(eight) = buf.get(j..j + 8) {
        let word = u64::from_le_bytes(eight.try_into().unwrap_or_default());
        let (count, value) = leading_digits(word);
        if j - start + count > budget {
            return None;
        }
        m = m * POW10_U64[count] + value;
        j += count;
        if count < 8 {
            *i = j;
            *n = m;
            return Some(j - start);
        }
    }
    // Within eight bytes of the end: the rest byte by byte, under what is left of the budget.
    let left = budget - (j - start);
    digits_bytewise(buf, &mut j, &mut m, left)?;
    *i = j;
    *n = m;
    Some(j - start)
}

/// [`digits`] one byte at a time: faster where runs of digits are short and regular (the
/// canonical path, our encoder's output: in bench D word-wise reading there cost 11%).
#[inline(always)]
pub(super) fn digits_bytewise(
    buf: &[u8],
    i: &mut usize,
    n: &mut u64,
    budget: usize,
) -> Option<usize> {
    let start = *i;
    let mut j = start;
    let mut m = *n;
    while let Some(d) = digit(buf, j) {
        if j - start == budget {
            return None;
        }
        m = m * 10 + d;
        j += 1;
    }
    *i = j;
    *n = m;
    Some(j - start)
}

/// How many of the eight bytes of `word` (read little-endian: the first byte is the lowest)
/// are digits before the first that is not, and their value.
#[inline(always)]
fn leading_digits(word: u64) -> (usize, u64) {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A digit byte becomes 0..=9; a byte's high bit ends up set exactly when it was not a
    // digit: it is 10 or more in its low seven bits (adding 0x76 reaches 0x80, and cannot
    // carry into the next byte), or its high bit was set.
    let t = word ^ 0x3030_3030_3030_3030;
    let not_digit = (((t & LOW7) + 0x7676_7676_7676_7676) | t) & HIGH;
    let count = (not_digit.trailing_zeros() / 8) as usize;
    if count == 0 {
        return (0, 0);
    }
    // The digits to the top of the word: the bytes below become leading zeros.
    let v = t << (64 - 8 * count as u32);
    // fast_float's conversion of eight digit values: pairs, then fours, then eight.
    let mask = 0x0000_00FF_0000_00FF;
    let mul1 = 100 + (1_000_000 << 32);
    let mul2 = 1 + (10_000 << 32);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    let v = (v & mask)
        .wrapping_mul(mul1)
        .wrapping_add(((v >> 16) & mask).wrapping_mul(mul2))
        >> 32;
    (count, v & 0xFFFF_FFFF)
}

/// 10^k as integers, up to 10^19.
const POW10_INT: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut k = 1;
    while k < 20 {
        t[k] = t[k - 1] * 10;
        k += 1;
    }
    t
};

/// `m / 10^q` correctly rounded (to nearest, ties to even), for `m` past 2^53 (of at most
/// 18 digits) and `q` at most 19. First the quotient of the two conversions, `m` rounded
/// to an f64 and divided by the exact 10^q, taken when exact integer arithmetic proves it
/// within half an ulp of `m / 10^q` (no tie, not at a power of two, where the ulp below is
/// half as wide); otherwise [`div_pow10_exact`]. A 17-digit timestamp (`time.time()`'s,
/// three times in four) cost 18 ns a message by the exact division alone.
#[inline]
pub(super) fn div_pow10(m: u64, q: u32) -> f64 {
    let (Some(&p), Some(&exact)) = (POW10_INT.get(q as usize), POW10.get(q as usize)) else {
        return div_pow10_exact(m, q);
    };
    let c = m as f64 / exact;
    let bits = c.to_bits();
    // c = mantissa * 2^e, a normal number (at least 2^53 / 10^19).
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    let e = ((bits >> 52) & 0x7FF) as i32 - 1075;
    if (-63..0).contains(&e) && mantissa != 1 << 52 {
        // |m / 10^q - c| < 2^(e-1), times 10^q * 2^-e: |m * 2^-e - mantissa * 10^q| <
        // 10^q / 2, all exact in a u128 (m < 2^60 shifted by at most 62; 2^53 * 10^19).
        let lhs = u128::from(m) << (-e) as u32;
        let rhs = u128::from(mantissa) * u128::from(p);
        if 2 * lhs.abs_diff(rhs) < u128::from(p) {
            return c;
        }
    }
    div_pow10_exact(m, q)
}

/// [`div_pow10`] by division: the quotient of `m * 2^64` has at least 54 bits, the
/// remainder says whether anything lies below them.
#[inline]
fn div_pow10_exact(m: u64, q: u32) -> f64 {
    let d = u128::from(10u64.pow(q));
    let n = u128::from(m) << 64;
    let quotient = n / d;
    let inexact = n - quotient * d != 0;
    let mut shift = 128 - quotient.leading_zeros() - 53;
    let mut mantissa = (quotient >> shift) as u64;
    let below = quotient & ((1u128 << shift) - 1);
    let half = 1u128 << (shift - 1);
    if below > half || (below == half && (inexact || mantissa & 1 == 1)) {
        mantissa += 1;
        if mantissa == 1 << 53 {
            mantissa >>= 1;
            shift += 1;
        }
    }
    // mantissa * 2^(shift - 64): a 53-bit integer times an exact power of two.
    let scale = f64::from_bits(((i64::from(shift) - 64 + 1023) as u64) << 52);
    mantissa as f64 * scale
}

/// A JSON integer without sign at `*i`, of at most 19 digits (so it fits a u64; longer
/// ones are left to simd-json, which knows which of them overflow). What follows it is the
/// caller's to check: a fraction or exponent makes it no integer.
#[inline(always)]
pub(super) fn uint(buf: &[u8], i: &mut usize) -> Option<u64> {
    uint_with(buf, i, digits)
}

/// [`uint`] read byte by byte (see [`digits_bytewise`]).
#[inline(always)]
pub(super) fn uint_bytewise(buf: &[u8], i: &mut usize) -> Option<u64> {
    uint_with(buf, i, digits_bytewise)
}

#[inline(always)]
fn uint_with(
    buf: &[u8],
    i: &mut usize,
    read: fn(&[u8], &mut usize, &mut u64, usize) -> Option<usize>,
) -> Option<u64> {
    let start = *i;
    let mut n = 0;
    let len = read(buf, i, &mut n, 19)?;
    // JSON has no leading zeros.
    (len == 1 || (len > 1 && buf[start] != b'0')).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-by-byte reading the word-wise one must equal.
    fn bytewise(buf: &[u8], at: usize, budget: usize) -> Option<(usize, u64)> {
        let mut j = at;
        let mut m = 0u64;
        while let Some(d) = digit(buf, j) {
            if j - at == budget {
                return None;
            }
            m = m * 10 + d;
            j += 1;
        }
        Some((j - at, m))
    }

    #[test]
    fn every_run_length_at_every_offset_reads_as_byte_by_byte() {
        // Each run of 0..=20 digits, followed by each kind of byte that ends one (and by
        // nothing), at offsets that put the word boundary everywhere, under budgets
        // around the run's length.
        let enders: [&[u8]; 9] = [b"", b".", b",", b"}", b"e", b"/", b":", b"\xB5", b"\x00"];
        for len in 0..=20usize {
            let run: Vec<u8> = (0..len).map(|k| b"9817263540"[k % 10]).collect();
            for ender in enders {
                for pad in 0..9 {
                    let mut buf = vec![b'x'; pad];
                    buf.extend_from_slice(&run);
                    buf.extend_from_slice(ender);
                    buf.extend_from_slice(&b"12345678"[..pad.min(8)]);
                    // What follows the ender must not be read as digits.
                    buf.truncate(pad + len + ender.len() + if ender.is_empty() { 0 } else { pad });
                    for budget in [len.saturating_sub(1), len, len + 1, 19] {
                        let budget = budget.min(19);
                        let mut i = pad;
                        let mut n = 0;
                        let got = digits(&buf, &mut i, &mut n, budget).map(|c| (c, n));
                        let want = bytewise(&buf, pad, budget);
                        let (mut k, mut b) = (pad, 0);
                        let other = digits_bytewise(&buf, &mut k, &mut b, budget).map(|c| (c, b));
                        assert_eq!(other, want);
                        assert_eq!(
                            got, want,
                            "{len} digits, ender {ender:?}, pad {pad}, budget {budget}"
                        );
                        match want {
                            Some((c, _)) => assert_eq!(i, pad + c),
                            None => assert_eq!((i, n), (pad, 0), "left as it was"),
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn division_by_a_power_of_ten_is_correctly_rounded_on_either_way() {
        // Significands past 2^53 (17 and 18 digits, and the edges), every power the
        // decoders divide by: both ways, and std's correctly rounded parser, agree.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut ms = vec![
            (1 << 53) + 1,
            (1 << 53) + 3,
            999_999_999_999_999_999,
            17_637_984_016_924_994,
        ];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ms.push((1 << 53) + x % (1_000_000_000_000_000_000 - (1 << 53)));
        }
        let mut fast = 0;
        for &m in &ms {
            for q in 1..=19u32 {
                let want: f64 = format!("{m}e-{q}").parse().unwrap();
                let got = div_pow10(m, q);
                assert_eq!(got.to_bits(), want.to_bits(), "{m}e-{q}");
                assert_eq!(div_pow10_exact(m, q).to_bits(), want.to_bits(), "{m}e-{q}");
                fast += usize::from((m as f64 / POW10[q as usize]).to_bits() == got.to_bits());
            }
        }
        // Not vacuous: the quotient of the conversions is mostly right, and taken.
        assert!(fast > ms.len() * 19 / 2, "{fast}");
    }

    #[test]
    fn every_byte_value_ends_a_run_exactly_when_it_is_no_digit() {
        for b in 0..=255u8 {
            let mut word = *b"12345678";
            word[3] = b;
            let (count, value) = leading_digits(u64::from_le_bytes(word));
            if b.is_ascii_digit() {
                let want: u64 = std::str::from_utf8(&word).unwrap().parse().unwrap();
                assert_eq!((count, value), (8, want), "byte {b:#x}");
            } else {
                assert_eq!((count, value), (3, 123), "byte {b:#x}");
            }
        }
    }

    #[test]
    fn integers_fit_a_u64_and_have_no_leading_zeros() {
        let read = |s: &str| {
            let (mut i, mut k) = (0, 0);
            let a = uint(s.as_bytes(), &mut i).filter(|_| i == s.len());
            let b = uint_bytewise(s.as_bytes(), &mut k).filter(|_| k == s.len());
            assert_eq!(a, b, "{s}");
            a
        };
        assert_eq!(read("0"), Some(0));
        assert_eq!(read("1234567890123456789"), Some(1_234_567_890_123_456_789));
        assert_eq!(read("9999999999999999999"), Some(9_999_999_999_999_999_999));
        for s in [
            "",
            "00",
            "01",
            "-1",
            "18446744073709551615",
            "12345678901234567890",
        ] {
            assert_eq!(read(s), None, "{s} accepted");
        }
    }
}
