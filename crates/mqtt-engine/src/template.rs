//! Names with an index in them: `sensor-{i:05}` gives `sensor-00042` for device 42,
//! `loadgen-{i}` gives `loadgen-42`. A topic template may also hold `{device_id}`, the
//! device's rendered id. `{{` and `}}` stand for literal braces. Rendering appends to a
//! buffer and allocates nothing, so a fleet never stores its names: 100,000 device ids and
//! topics are formatted when a message is written.

use std::fmt;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    /// The index, zero-padded to `width` digits (0: as it is).
    Index {
        width: usize,
    },
    /// The device id, rendered from the device template (topic templates only).
    DeviceId,
}

/// A parsed name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// Why a template does not parse; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// Widest zero padding accepted: a u64 has 20 digits.
const MAX_WIDTH: usize = 20;

impl Template {
    /// Parses `s`; `device_id` says whether `{device_id}` is allowed (topics), and `what`
    /// names the flag in errors.
    pub fn parse(s: &str, device_id: bool, what: &str) -> Result<Template, TemplateError> {
        let bad = |why: String| TemplateError(format!("{what} '{s}': {why}"));
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = s.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    lit.push('}');
                }
                '}' => return Err(bad("a lone '}'; write '}}' for a brace".into())),
                '{' => {
                    let rest = &s[at + 1..];
                    let end = rest
                        .find('}')
                        .ok_or_else(|| bad("a '{' without '}'; write '{{' for a brace".into()))?;
                    let name = &rest[..end];
                    for _ in 0..=end {
                        chars.next();
                    }
                    let piece = match name {
                        "i" => Piece::Index { width: 0 },
                        "device_id" if device_id => Piece::DeviceId,
                        n if n.starts_with("i:") => {
                            let spec = &n[2..];
                            let width = spec
                                .strip_prefix('0')
                                .and_then(|w| w.parse::<usize>().ok())
                                .filter(|w| (1..=MAX_WIDTH).contains(w))
                                .ok_or_else(|| {
                                    bad(format!(
                                        "'{{{n}}}' is not a padded index; use e.g. {{i:05}} (1 to 20 digits)"
                                    ))
                                })?;
                            Piece::Index { width }
                        }
                        other => {
                            let known = if device_id {
                                "{i}, {i:05} or {device_id}"
                            } else {
                                "{i} or {i:05}"
                            };
                            return Err(bad(format!(
                                "unknown placeholder '{{{other}}}'; use {known}, and '{{{{' for a brace"
                            )));
                        }
                    };
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(piece);
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template { pieces })
    }

    /// A template that is `s` as it is, with no placeholders.
    pub fn literal(s: &str) -> Template {
        Template {
            pieces: if s.is_empty() {
                Vec::new()
            } else {
                vec![Piece::Lit(s.to_string())]
            },
        }
    }

    /// Whether the index appears in it.
    pub fn has_index(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::Index { .. }))
    }

    /// Whether `{device_id}` appears in it.
    pub fn has_device_id(&self) -> bool {
        self.pieces.iter().any(|p| matches!(p, Piece::DeviceId))
    }

    /// This template with `_{i}` appended: how a fleet tells apart names that had no index.
    pub fn with_index_suffix(mut self) -> Template {
        self.pieces.push(Piece::Lit("_".into()));
        self.pieces.push(Piece::Index { width: 0 });
        self
    }

    /// Appends the name of index `i` to `out`; `device_id` is what `{device_id}` becomes.
    pub fn render_into(&self, i: u64, device_id: &[u8], out: &mut Vec<u8>) {
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Index { width } => write_padded(out, i, *width),
                Piece::DeviceId => out.extend_from_slice(device_id),
            }
        }
    }

    /// The name of index `i` as a string.
    pub fn render(&self, i: u64, device_id: &str) -> String {
        let mut out = Vec::new();
        self.render_into(i, device_id.as_bytes(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// The longest name of an index up to `max_index`, with a device id of at most
    /// `device_id_len` bytes.
    pub fn max_len(&self, max_index: u64, device_id_len: usize) -> usize {
        let digits = max_index.checked_ilog10().map_or(1, |d| d as usize + 1);
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Lit(s) => s.len(),
                Piece::Index { width } => digits.max(*width),
                Piece::DeviceId => device_id_len,
            })
            .sum()
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.pieces {
            match p {
                Piece::Lit(s) => f.write_str(&s.replace('{', "{{").replace('}', "}}"))?,
                Piece::Index { width: 0 } => f.write_str("{i}")?,
                Piece::Index { width } => write!(f, "{{i:0{width}}}")?,
                Piece::DeviceId => f.write_str("{device_id}")?,
            }
        }
        Ok(())
    }
}

/// Appends `v` in decimal, zero-padded to `width` digits.
fn write_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut digits = [0u8; MAX_WIDTH];
    let mut n = v;
    let mut len = 0;
    loop {
        digits[MAX_WIDTH - 1 - len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in len..width {
        out.push(b'0');
    }
    out.extend_from_slice(&digits[MAX_WIDTH - len..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, i: u64) -> String {
        Template::parse(t, true, "--x").unwrap().render(i, "dev")
    }

    #[test]
    fn indexes_render_plain_and_zero_padded() {
        assert_eq!(render("sensor-{i}", 42), "sensor-42");
        assert_eq!(render("sensor-{i:05}", 42), "sensor-00042");
        assert_eq!(render("s{i:03}", 123_456), "s123456");
        assert_eq!(render("{i:01}", 0), "0");
        assert_eq!(render("{i}", u64::MAX), u64::MAX.to_string());
        assert_eq!(
            render("device_data/{device_id}/{i}", 7),
            "device_data/dev/7"
        );
    }

    #[test]
    fn braces_escape_and_bad_placeholders_are_refused() {
        assert_eq!(render("a{{b}}c{i}", 1), "a{b}c1");
        for bad in [
            "a{", "a}", "{x}", "{i:5}", "{i:021}", "{i:0}", "{i:0x}", "{}",
        ] {
            assert!(Template::parse(bad, true, "--x").is_err(), "{bad}");
        }
        let e = Template::parse("id-{device_id}", false, "--device-id").unwrap_err();
        assert!(e.0.contains("--device-id") && e.0.contains("{i:05}"), "{e}");
    }

    #[test]
    fn a_template_without_an_index_gets_a_suffix_for_a_fleet() {
        let t = Template::parse("frontend1_dev", false, "--x").unwrap();
        assert!(!t.has_index());
        let t = t.with_index_suffix();
        assert_eq!(t.render(3, ""), "frontend1_dev_3");
        assert_eq!(t.to_string(), "frontend1_dev_{i}");
    }

    #[test]
    fn max_len_bounds_every_rendering() {
        let t = Template::parse("s-{i:04}/{device_id}", true, "--x").unwrap();
        for i in [0, 9, 10, 9_999, 10_000, 123_456] {
            assert!(t.render(i, "abc").len() <= t.max_len(123_456, 3), "{i}");
        }
        assert_eq!(t.max_len(99, 3), 2 + 4 + 1 + 3);
        assert_eq!(Template::literal("plain{x}").render(1, ""), "plain{x}");
    }
}
