//! Point payloads in the shapes other writers produce, for the decode bench (D) and the raw
//! reference publisher of the receive bench (D2, `mqtt-refclient rawpub`).
//!
//! The seed's Python publisher writes `{"device_id":..,"timestamp":..,"value":..,"seq":..}`
//! in that key order with orjson: compact, the timestamp a `time.time()` float (16-17
//! digits), the value rounded to hundredths. Other JSON writers space it (`json.dumps`:
//! `, ` and `: `), indent it, add members of their own (nested too) or escape characters.
//! A point is written as `prefix + seq + suffix`, so that a publisher can pre-encode the
//! parts once and write N distinct seqs at memory speed.

#![allow(dead_code)] // each user takes what it needs

use std::io::Write;

/// How a point's members are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// orjson's compact form.
    Compact,
    /// `json.dumps`' default separators, `, ` and `: `.
    Spaced,
    /// Indented by two, a member a line (`json.dumps(indent=2)`).
    Pretty,
}

/// One shape of point: its layout and what it carries besides the four members.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub layout: Layout,
    /// Members after `device_id` (raw JSON, comma-free at the ends), e.g. a nested object.
    pub extra: &'static str,
    /// The device id as written in the JSON string (escapes allowed).
    pub device_id: &'static str,
    /// Write `device_id` as `d\u0065vice_id`: an escaped key.
    pub escaped_key: bool,
}

impl Shape {
    /// The seed's publisher, orjson's compact form.
    pub const SEED: Shape = Shape {
        layout: Layout::Compact,
        extra: "",
        device_id: "sensor-00001",
        escaped_key: false,
    };
}

/// Members another writer adds: a unit, and a nested object with an array.
pub const EXTRA_NESTED: &str = r#""unit":"C","meta":{"fw":"1.4.2","rssi":-67,"tags":["lab",2]}"#;
/// A device id with escapes, as `json.dumps` writes non-ASCII (`ensure_ascii`) and as some
/// writers escape `/`: `café/münchen-7`.
pub const ESCAPED_ID: &str = r#"caf\u00e9\/m\u00fcnchen-7"#;

/// The seed publisher's timestamp of point `seq`: seconds as a float (as `time.time()`),
/// whose shortest form takes 17 digits three times in four, as `time.time()`'s do (a step
/// of 0.000137 s, used before 2026-12-08, happened to land on 16-digit forms every time,
/// which a decoder exact only below 2^53 read without the slower path real streams need).
pub fn timestamp(seq: u64) -> f64 {
    1_763_798_400.0 + seq as f64 * 0.000_137_1
}

/// The seed publisher's value of point `seq`, rounded to hundredths.
pub fn value(seq: u64) -> f64 {
    // Hundredths as an integer first: `x / 100.0 - 20.0` would leave residues such as
    // 3.5e-15 that Python writes with an exponent and `{}` with 30 digits.
    ((seq.wrapping_mul(7919) % 10_000) as i64 - 2_000) as f64 / 100.0
}

/// A float as Python's `repr` (and orjson) writes it: shortest, with `.0` when integral.
fn python_float(out: &mut Vec<u8>, f: f64) {
    let at = out.len();
    let _ = write!(out, "{f}");
    if !out[at..].contains(&b'.') {
        out.extend_from_slice(b".0");
    }
}

/// `json` with `, ` and `: ` outside its strings.
fn spaced(json: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in json.chars() {
        out.push(c);
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            ',' | ':' if !in_string => out.push(' '),
            _ => {}
        }
    }
    out
}

impl Shape {
    /// Writes point `seq` up to its seq's digits (`prefix`) and after them (`suffix`).
    pub fn parts(&self, seq: u64) -> (Vec<u8>, Vec<u8>) {
        let (sep, colon, open, close) = match self.layout {
            Layout::Compact => (",", ":", "{", "}"),
            Layout::Spaced => (", ", ": ", "{", "}"),
            Layout::Pretty => (",\n    ", ": ", "{\n    ", "\n  }"),
        };
        let key = if self.escaped_key {
            r#""d\u0065vice_id""#
        } else {
            r#""device_id""#
        };
        let mut p = Vec::new();
        let _ = write!(p, "{open}{key}{colon}\"{}\"{sep}", self.device_id);
        if !self.extra.is_empty() {
            let extra = match self.layout {
                Layout::Compact => self.extra.to_string(),
                _ => spaced(self.extra),
            };
            let _ = write!(p, "{extra}{sep}");
        }
        let _ = write!(p, "\"timestamp\"{colon}");
        python_float(&mut p, timestamp(seq));
        let _ = write!(p, "{sep}\"value\"{colon}");
        python_float(&mut p, value(seq));
        let _ = write!(p, "{sep}\"seq\"{colon}");
        (p, close.as_bytes().to_vec())
    }

    /// Separator between the points of a batch, and the batch's brackets.
    pub fn batch_punctuation(&self) -> (&'static str, &'static str, &'static str) {
        match self.layout {
            Layout::Compact => ("[", ",", "]"),
            Layout::Spaced => ("[", ", ", "]"),
            Layout::Pretty => ("[\n  ", ",\n  ", "\n]"),
        }
    }

    /// A message of the points `seqs`: one object for one point, else an array.
    pub fn message(&self, seqs: std::ops::Range<u64>, out: &mut Vec<u8>) {
        let batch = seqs.end - seqs.start != 1;
        let (open, sep, close) = self.batch_punctuation();
        if batch {
            out.extend_from_slice(open.as_bytes());
        }
        for seq in seqs.clone() {
            if seq != seqs.start {
                out.extend_from_slice(sep.as_bytes());
            }
            let (prefix, suffix) = self.parts(seq);
            out.extend_from_slice(&prefix);
            let _ = write!(out, "{seq}");
            out.extend_from_slice(&suffix);
        }
        if batch {
            out.extend_from_slice(close.as_bytes());
        }
    }
}
