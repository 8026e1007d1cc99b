//! The pacer: one worker's cursor over the fleet's absolute [`Schedule`].
//!
//! The worker's devices are walked round by round: slot `k` of each device in turn, then
//! slot `k + 1`, which is the order their messages fall due (the fleet grid interleaves the
//! devices' phases). Given the schedule and a plain `now`, the cursor says which device
//! slot is due ([`Step::Due`]), which device's schedule has ended ([`Step::Ended`]), or
//! when the next slot falls due ([`Step::Wait`]). Times are the schedule's own, to the
//! nanosecond: nothing is rounded to milliseconds, so a million points a second stay a
//! microsecond apart.
//!
//! ```text
//! Schedule + anchor + now --> Pacer::step(points of the device at the cursor)
//!     --> Due { dl, k, at }  the worker fills device dl up to slot k
//!     --> Ended { dl, k }    device dl's slot k is past the end of the run
//!     --> Skipped(dl)        device dl generates nothing (done, or owing)
//!     --> Wait(at)           nothing due before `at`
//! ```
//!
//! A worker that fell behind (a stall, or a rate beyond what its connections take) does not
//! walk the rounds it missed slot by slot: [`Pacer::catch_up`] jumps the cursor to the round
//! due now and counts the rounds it jumped. Devices keep what they owe: each device's slots
//! up to [`Pacer::passed_slot`] are due, and the worker fills them as their connections
//! have room. Unpaced, every slot is due at once and the cursor is a round robin.
//!
//! No clock is read here: tests drive it with synthetic instants.

use std::time::Instant;

use crate::schedule::Schedule;

/// A cursor over one worker's devices on the fleet schedule.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Fleet index (in the schedule) of the worker's first device.
    d0: u64,
    /// The worker's devices.
    n: u32,
    /// Generation's anchor: slot times are offsets from it.
    anchor: Instant,
    /// The next slot to come due: slot `k` of device `dl`.
    k: u64,
    dl: u32,
    /// Rounds jumped over by [`Pacer::catch_up`].
    skipped_rounds: u64,
}

/// What the slot at the cursor is, now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Slot `k` of device `dl` was due at `at` (now or before); the cursor moved past it.
    Due { dl: u32, k: u64, at: Instant },
    /// Device `dl`'s slot `k`, and every later one, would fall due after the end of the
    /// run; the cursor moved past it.
    Ended { dl: u32, k: u64 },
    /// Device `dl` has nothing to generate (its quota is sent, it is owing, or its
    /// connection is gone); the cursor moved past it.
    Skipped(u32),
    /// Nothing is due before `at`; the cursor stays.
    Wait(Instant),
}

impl Pacer {
    /// A cursor over the `n` devices from fleet device `d0`, before the anchor is known.
    pub fn new(d0: u64, n: u32, anchor: Instant) -> Pacer {
        Pacer {
            d0,
            n,
            anchor,
            k: 0,
            dl: 0,
            skipped_rounds: 0,
        }
    }

    /// Sets generation's anchor: slot times count from it.
    pub fn start(&mut self, anchor: Instant) {
        self.anchor = anchor;
    }

    pub fn anchor(&self) -> Instant {
        self.anchor
    }

    /// The device at the cursor: the one [`Pacer::step`] asks about.
    pub fn device(&self) -> u32 {
        self.dl
    }

    /// The round at the cursor.
    pub fn round(&self) -> u64 {
        self.k
    }

    /// Rounds the cursor jumped over after stalls.
    pub fn skipped_rounds(&self) -> u64 {
        self.skipped_rounds
    }

    /// One step at the cursor's device, which is to send `points` points in its next
    /// message (`None`: it generates nothing). `now` decides whether its slot is due.
    pub fn step(&mut self, s: &Schedule, now: Instant, points: Option<u64>) -> Step {
        let dl = self.dl;
        let Some(points) = points else {
            self.advance();
            return Step::Skipped(dl);
        };
        let k = self.k;
        // Unpaced: every slot is due at the anchor.
        let due = s.due(self.d0 + dl as u64, k, points).unwrap_or_default();
        if s.is_past_end(due) {
            self.advance();
            return Step::Ended { dl, k };
        }
        let at = self.anchor + due;
        if at > now {
            return Step::Wait(at);
        }
        self.advance();
        Step::Due { dl, k, at }
    }

    /// A cursor rounds behind `now` jumps to the round now due, so that a pass never walks
    /// slot by slot through rounds long past; the devices keep what they owe (see
    /// [`Pacer::passed_slot`]). Returns the rounds jumped.
    pub fn catch_up(&mut self, s: &Schedule, now: Instant) -> u64 {
        let now_slot = s.first_slot_at(self.d0, now.saturating_duration_since(self.anchor));
        if now_slot <= self.k + 1 {
            return 0;
        }
        let jumped = now_slot - 1 - self.k;
        self.k = now_slot - 1;
        self.dl = 0;
        self.skipped_rounds += jumped;
        jumped
    }

    /// The last slot of device `dl` the cursor has passed: its slots up to this one are
    /// due, whether or not they were generated.
    pub fn passed_slot(&self, dl: u32) -> Option<u64> {
        if dl < self.dl {
            Some(self.k)
        } else {
            self.k.checked_sub(1)
        }
    }

    /// Unpaced: the next device in turn (round robin); the cursor moves past it.
    pub fn round_robin(&mut self) -> u32 {
        let dl = self.dl;
        self.advance();
        dl
    }

    fn advance(&mut self) {
        self.dl += 1;
        if self.dl >= self.n {
            self.dl = 0;
            self.k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// Steps until the cursor waits (every device generating `batch`-point messages);
    /// the due slots in order, and the wait.
    fn due_until_wait(
        p: &mut Pacer,
        s: &Schedule,
        now: Instant,
    ) -> (Vec<(u32, u64, Instant)>, Step) {
        let mut due = Vec::new();
        for _ in 0..1_000_000 {
            match p.step(s, now, Some(s.batch())) {
                Step::Due { dl, k, at } => due.push((dl, k, at)),
                other => return (due, other),
            }
        }
        panic!("the cursor never waited");
    }

    #[test]
    fn at_a_million_points_a_second_each_slot_is_due_on_its_own_microsecond() {
        // 10 devices at 1M points/s: the fleet grid puts a point every microsecond, device
        // d's slot k at (10k + d + 1) µs. Whole-millisecond pacing would send 1,000 at once.
        let s = Schedule::new(10, Some(1_000_000.0), 1, None, None);
        let t0 = Instant::now();
        let mut p = Pacer::new(0, 10, t0);
        let (due, next) = due_until_wait(&mut p, &s, t0 + us(25));
        assert_eq!(due.len(), 25, "{due:?}");
        for (i, (dl, k, at)) in due.iter().enumerate() {
            assert_eq!((*dl as u64, *k), (i as u64 % 10, i as u64 / 10));
            assert_eq!(*at, t0 + us(i as u64 + 1), "slot {i}");
        }
        assert_eq!(next, Step::Wait(t0 + us(26)));
        // Half a microsecond later nothing more is due; at 26 µs exactly, one slot is.
        assert_eq!(p.step(&s, t0 + Duration::from_nanos(25_500), Some(1)), next);
        assert!(matches!(
            p.step(&s, t0 + us(26), Some(1)),
            Step::Due { dl: 5, k: 2, .. }
        ));
    }

    #[test]
    fn slots_keep_their_nanoseconds_at_rates_that_do_not_divide_a_second() {
        // 3M points/s from one device: 333.3 ns apart, rounded to the nanosecond each, so
        // the error never accumulates.
        let s = Schedule::new(1, Some(3_000_000.0), 1, None, None);
        let t0 = Instant::now();
        let mut p = Pacer::new(0, 1, t0);
        let (due, _) = due_until_wait(&mut p, &s, t0 + Duration::from_millis(1));
        assert_eq!(due.len(), 3000);
        assert_eq!(due[2].2, t0 + Duration::from_nanos(1000));
        assert_eq!(due[2999].2, t0 + Duration::from_millis(1));
    }

    #[test]
    fn a_worker_behind_jumps_to_the_round_due_and_its_devices_keep_what_they_owe() {
        // 4 devices at 1 point/s each: a slot every 250 ms across the fleet.
        let s = Schedule::new(4, Some(4.0), 1, None, None);
        let t0 = Instant::now();
        let mut p = Pacer::new(0, 4, t0);
        let (due, _) = due_until_wait(&mut p, &s, t0 + Duration::from_millis(500));
        assert_eq!(due.len(), 2);
        // A 10 s stall: 40 slots fall due meanwhile, 10 per device.
        let now = t0 + Duration::from_millis(10_500);
        let jumped = p.catch_up(&s, now);
        assert_eq!(jumped, 10, "rounds 0..10 are not walked slot by slot");
        assert_eq!(p.skipped_rounds(), 10);
        let (due, next) = due_until_wait(&mut p, &s, now);
        // The walk covers only the round now due.
        assert!(due.len() <= 4, "{due:?}");
        assert!(matches!(next, Step::Wait(at) if at > now));
        // Every slot due by now is owed by its device: the last passed slot of each is
        // its last slot due, so nothing due is lost and nothing early is counted.
        let mut owed = 0;
        for dl in 0..4u32 {
            let last = p.passed_slot(dl).expect("slots are due");
            assert!(
                s.due(dl as u64, last, 1).unwrap() <= now - t0,
                "device {dl}"
            );
            assert!(
                s.due(dl as u64, last + 1, 1).unwrap() > now - t0,
                "device {dl}"
            );
            owed += last + 1;
        }
        assert_eq!(owed, 42, "10.5 s at 4 points/s");
        // Catching up again at the same time jumps nothing.
        assert_eq!(p.catch_up(&s, now), 0);
    }

    #[test]
    fn each_device_ends_after_its_last_slot_before_the_end_of_the_run() {
        // 2 devices at 10 points/s for 1 s: 5 slots each, then the end.
        let s = Schedule::new(2, Some(10.0), 1, None, Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        let mut p = Pacer::new(0, 2, t0);
        let mut ended = [false; 2];
        let mut due = [0u64; 2];
        let end = t0 + Duration::from_secs(2);
        for _ in 0..100 {
            let dl = p.device();
            let points = (!ended[dl as usize]).then_some(1);
            match p.step(&s, end, points) {
                Step::Due { dl, k, at } => {
                    assert!(at <= t0 + Duration::from_secs(1));
                    assert_eq!(k, due[dl as usize]);
                    due[dl as usize] += 1;
                }
                Step::Ended { dl, k } => {
                    assert_eq!(k, 5);
                    ended[dl as usize] = true;
                }
                Step::Skipped(_) => {}
                Step::Wait(at) => panic!("nothing waits past the end: {at:?}"),
            }
        }
        assert_eq!(due, [5, 5]);
        assert_eq!(ended, [true, true]);
        assert_eq!(s.planned(), Some(10));
    }

    #[test]
    fn a_device_with_nothing_to_send_is_skipped_without_a_wait() {
        let s = Schedule::new(3, Some(3.0), 1, None, None);
        let t0 = Instant::now();
        let mut p = Pacer::new(0, 3, t0);
        assert_eq!(p.step(&s, t0, None), Step::Skipped(0));
        let second = t0 + s.due(1, 0, 1).unwrap();
        assert_eq!(p.step(&s, t0, Some(1)), Step::Wait(second));
        assert_eq!(p.device(), 1);
    }

    #[test]
    fn unpaced_every_slot_is_due_at_once_in_round_robin() {
        let s = Schedule::new(3, None, 5, Some(30), None);
        let t0 = Instant::now();
        let mut p = Pacer::new(0, 3, t0);
        assert_eq!(p.catch_up(&s, t0 + Duration::from_secs(3600)), 0);
        for i in 0..9u64 {
            assert_eq!(
                p.step(&s, t0, Some(5)),
                Step::Due {
                    dl: (i % 3) as u32,
                    k: i / 3,
                    at: t0
                }
            );
        }
        let order: Vec<u32> = (0..7).map(|_| p.round_robin()).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn a_worker_with_later_devices_of_the_fleet_keeps_their_phases() {
        // Devices 2 and 3 of 4 at 4 points/s: their first slots are at 750 ms and 1 s.
        let s = Schedule::new(4, Some(4.0), 1, None, None);
        let t0 = Instant::now();
        let mut p = Pacer::new(2, 2, t0);
        assert_eq!(
            p.step(&s, t0, Some(1)),
            Step::Wait(t0 + Duration::from_millis(750))
        );
        let (due, next) = due_until_wait(&mut p, &s, t0 + Duration::from_secs(1));
        assert_eq!(due.len(), 2);
        assert_eq!(next, Step::Wait(t0 + Duration::from_millis(1750)));
    }
}
