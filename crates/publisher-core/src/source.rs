//! Generates realistic device readings: slow random walks for `value`, `temperature` and
//! `humidity`, with `seq` counting up from 0. Deterministic for a seed; no allocation per point.

// Fixed-point literals are grouped at the decimal point: `21_50` is 21.50 in hundredths.
#![allow(clippy::inconsistent_digit_grouping)]

use point_format::Sample;

/// Produces the samples of one device, in `seq` order.
#[derive(Debug, Clone)]
pub struct PointSource {
    next_seq: u64,
    rng: u64,
    value_centi: i64,
    temperature_centi: i64,
    humidity_deci: i64,
    sensor_fields: bool,
}

impl PointSource {
    pub fn new(seed: u64, sensor_fields: bool) -> Self {
        PointSource {
            next_seq: 0,
            // xorshift must not start at 0
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            value_centi: 50_00,
            temperature_centi: 21_50,
            humidity_deci: 45_0,
            sensor_fields,
        }
    }

    /// Skips the next `n` seqs (points dropped before they were generated).
    pub fn skip(&mut self, n: u64) {
        self.next_seq += n;
    }

    /// Points generated so far.
    pub fn generated(&self) -> u64 {
        self.next_seq
    }

    #[inline]
    fn next_rand(&mut self) -> u64 {
        // xorshift64*: fast and good enough for sensor noise.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[inline]
    fn step(&mut self, span: i64) -> i64 {
        (self.next_rand() % (2 * span as u64 + 1)) as i64 - span
    }

    /// Replaces `out` with the next `n` samples, all stamped `timestamp_us`.
    pub fn fill(&mut self, n: usize, timestamp_us: u64, out: &mut Vec<Sample>) {
        out.clear();
        for _ in 0..n {
            self.value_centi = (self.value_centi + self.step(50)).clamp(0, 100_00);
            let (temperature_centi, humidity_deci) = if self.sensor_fields {
                self.temperature_centi =
                    (self.temperature_centi + self.step(5)).clamp(15_00, 35_00);
                self.humidity_deci = (self.humidity_deci + self.step(3)).clamp(20_0, 80_0);
                (Some(self.temperature_centi), Some(self.humidity_deci))
            } else {
                (None, None)
            };
            out.push(Sample {
                seq: self.next_seq,
                timestamp_us,
                value_centi: self.value_centi,
                temperature_centi,
                humidity_deci,
            });
            self.next_seq += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_counts_up_across_batches_and_values_stay_in_range() {
        let mut src = PointSource::new(7, true);
        let mut buf = Vec::new();
        let mut seen = 0;
        for _ in 0..50 {
            src.fill(100, 1, &mut buf);
            for s in &buf {
                assert_eq!(s.seq, seen);
                seen += 1;
                assert!((0..=100_00).contains(&s.value_centi));
                assert!((15_00..=35_00).contains(&s.temperature_centi.unwrap()));
                assert!((20_0..=80_0).contains(&s.humidity_deci.unwrap()));
            }
        }
        assert_eq!(src.generated(), 5000);
    }

    #[test]
    fn same_seed_same_values() {
        let (mut a, mut b) = (PointSource::new(3, false), PointSource::new(3, false));
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.fill(10, 0, &mut x);
        b.fill(10, 0, &mut y);
        assert_eq!(x, y);
        assert!(x.iter().all(|s| s.temperature_centi.is_none()));
    }
}
