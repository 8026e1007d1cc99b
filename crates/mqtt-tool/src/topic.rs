//! Topic names a PUBLISH may carry, checked before anything is sent.
//!
//! A broker answers a topic name it will not take by closing the connection (MQTT 3.1.1
//! 4.7 and 1.5.3, MQTT 5 4.7 and 1.5.4; Mosquitto does so for each case below), which a
//! client can only see as a lost connection: so what MQTT forbids is refused here, once,
//! with its reason, by every tool that publishes (the publishers' plan for `--topic` and
//! `--device-id`, job-pub for each job's topic).

use std::fmt;

/// The longest topic name MQTT can carry (a two-byte length).
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Why a topic name cannot be published to. Its `Display` reads after the quoted topic:
/// `--topic 'a/#' holds the wildcard '#' ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    /// `+` or `#`: a topic to publish to names one topic.
    Wildcard(char),
    /// NUL, a control character (U+0001..U+001F, U+007F..U+009F) or a Unicode
    /// noncharacter (U+FDD0..U+FDEF, U+xxFFFE, U+xxFFFF).
    Forbidden(char),
    /// Starts with `$`: the brokers' own topics (`$SYS`).
    Reserved,
    /// Longer than [`MAX_TOPIC_LEN`] bytes.
    TooLong(usize),
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicError::Empty => write!(f, "is empty"),
            TopicError::Wildcard(c) => write!(
                f,
                "holds the wildcard '{c}'; a topic to publish to names one topic"
            ),
            TopicError::Forbidden(c) => {
                let what = match *c {
                    '\0' => "the NUL character",
                    c if c.is_control() => "the control character",
                    _ => "the noncharacter",
                };
                write!(
                    f,
                    "holds {what} {} (U+{:04X}), which MQTT forbids in a topic name",
                    crate::out::escape(c.encode_utf8(&mut [0; 4])),
                    *c as u32
                )
            }
            TopicError::Reserved => write!(
                f,
                "starts with '$', which brokers keep for their own topics ($SYS) and close the connection of a client that publishes there"
            ),
            TopicError::TooLong(n) => {
                write!(f, "is {n} bytes, longer than MQTT allows ({MAX_TOPIC_LEN})")
            }
        }
    }
}

impl std::error::Error for TopicError {}

/// Whether MQTT forbids `c` in a topic name (a receiver may treat it as malformed, and
/// brokers do): NUL, the C0 and C1 controls with DEL, and the noncharacters.
pub fn is_forbidden(c: char) -> bool {
    let u = c as u32;
    u <= 0x1f
        || (0x7f..=0x9f).contains(&u)
        || (0xfdd0..=0xfdef).contains(&u)
        || u & 0xfffe == 0xfffe
}

/// The first character of `s` that a topic name cannot hold: a wildcard or one MQTT
/// forbids. For a part of a topic (a device id that goes into one).
pub fn check_characters(s: &str) -> Result<(), TopicError> {
    match s.chars().find(|&c| c == '+' || c == '#' || is_forbidden(c)) {
        None => Ok(()),
        Some(c @ ('+' | '#')) => Err(TopicError::Wildcard(c)),
        Some(c) => Err(TopicError::Forbidden(c)),
    }
}

/// Checks a topic name to publish to: not empty, no wildcard, nothing MQTT forbids, not a
/// `$` topic, at most 65,535 bytes.
pub fn check_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong(topic.len()));
    }
    check_characters(topic)?;
    if topic.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_mqtt_forbids_in_a_topic_name_is_refused_with_its_reason() {
        assert_eq!(check_topic_name("device_data/d1"), Ok(()));
        assert_eq!(check_topic_name("a/é/ü/€/😀"), Ok(()));
        assert_eq!(check_topic_name("a/b$"), Ok(()));
        assert_eq!(check_topic_name(""), Err(TopicError::Empty));
        assert_eq!(check_topic_name("a/+/b"), Err(TopicError::Wildcard('+')));
        assert_eq!(check_topic_name("a/#"), Err(TopicError::Wildcard('#')));
        assert_eq!(check_topic_name("$SYS/x"), Err(TopicError::Reserved));
        assert_eq!(check_topic_name("$share/g/x"), Err(TopicError::Reserved));
        for c in [
            '\0', '\u{1}', '\t', '\n', '\u{1f}', '\u{7f}', '\u{85}', '\u{9f}',
        ] {
            assert_eq!(
                check_topic_name(&format!("a/{c}")),
                Err(TopicError::Forbidden(c)),
                "U+{:04X}",
                c as u32
            );
        }
        for c in [
            '\u{fdd0}',
            '\u{fdef}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{1fffe}',
            '\u{10ffff}',
        ] {
            assert_eq!(
                check_topic_name(&format!("a/{c}")),
                Err(TopicError::Forbidden(c))
            );
        }
        for c in [
            '\u{20}',
            '\u{a0}',
            '\u{fdcf}',
            '\u{fdf0}',
            '\u{fffd}',
            '\u{1fffd}',
        ] {
            assert_eq!(
                check_topic_name(&format!("a/{c}")),
                Ok(()),
                "U+{:04X}",
                c as u32
            );
        }
        assert_eq!(check_topic_name(&"a".repeat(MAX_TOPIC_LEN)), Ok(()));
        assert_eq!(
            check_topic_name(&"a".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong(MAX_TOPIC_LEN + 1))
        );
    }

    #[test]
    fn the_reason_shows_the_character_escaped_and_its_code_point() {
        let e = check_topic_name("job/\u{1}x").unwrap_err().to_string();
        assert!(e.contains("control character \\x01 (U+0001)"), "{e}");
        let e = check_topic_name("job/\u{9b}").unwrap_err().to_string();
        assert!(e.contains("\\u{9b} (U+009B)"), "{e}");
        assert!(!e.contains('\u{9b}'), "{e}");
        let e = check_topic_name("a\0").unwrap_err().to_string();
        assert!(e.contains("NUL character \\x00 (U+0000)"), "{e}");
        let e = check_topic_name("$SYS/a").unwrap_err().to_string();
        assert!(e.contains("'$'"), "{e}");
    }
}
