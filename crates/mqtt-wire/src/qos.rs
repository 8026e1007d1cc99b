//! The quality of service of a publish or a subscription: one type for every tool, the
//! engine and the wire. A level from the wire or a flag becomes a [`Qos`] through
//! `TryFrom<u8>`, which refuses anything but 0, 1 and 2.

/// MQTT's quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Qos {
    /// 0: no acknowledgement.
    #[default]
    AtMostOnce,
    /// 1: PUBACK.
    AtLeastOnce,
    /// 2: PUBREC, PUBREL, PUBCOMP.
    ExactlyOnce,
}

/// A QoS level MQTT does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("QoS {0} does not exist (MQTT has 0, 1 and 2)")]
pub struct QosError(pub u8);

impl Qos {
    /// 0, 1 or 2.
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }

    /// Whether the receiver answers (QoS 1 or 2): a packet id is needed.
    pub fn acknowledged(self) -> bool {
        self != Qos::AtMostOnce
    }
}

impl TryFrom<u8> for Qos {
    type Error = QosError;

    fn try_from(level: u8) -> Result<Qos, QosError> {
        match level {
            0 => Ok(Qos::AtMostOnce),
            1 => Ok(Qos::AtLeastOnce),
            2 => Ok(Qos::ExactlyOnce),
            n => Err(QosError(n)),
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        q.level()
    }
}

impl std::fmt::Display for Qos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.level())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_round_trip_and_three_is_refused() {
        for q in [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce] {
            assert_eq!(Qos::try_from(u8::from(q)), Ok(q));
        }
        for n in 3..=u8::MAX {
            assert_eq!(Qos::try_from(n), Err(QosError(n)));
        }
        assert_eq!(
            QosError(3).to_string(),
            "QoS 3 does not exist (MQTT has 0, 1 and 2)"
        );
    }
}
