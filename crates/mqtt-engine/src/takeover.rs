//! Two clients with one client id: a broker keeps one connection per client id and closes
//! the older when another connects (MQTT 3.1.1 and 5, section 3.1.4), so two copies of a
//! run that reconnect take the id from each other in turn, each loss looking like a flaky
//! broker. [`IdWatch`] is the rule that names it, for one connection: the engine keeps one
//! per connection, a tool with one session (backend-sub) its own.
//!
//! A takeover (the broker said so, or closed a healthy connection whose id is the same in
//! every copy, and took the reconnect at once: a broker that went away refuses it) starts
//! the watch. The client id is in use by another client when the connection is taken over
//! again shortly after the reconnect that followed.
//!
//! A connection that finds its id in use names it and takes the id back once more, so that
//! the other client meets the same pattern; the next takeover ends it. Of two copies
//! taking turns, the one taken over first finds it first and reconnects once more, which
//! is the other's second takeover soon after its reconnect: it finds it too and reconnects
//! once more, which ends the first. The other runs on alone. Both know within three or
//! four reconnect backoffs (a few hundred milliseconds), and both runs fail.

use std::time::Duration;

use crate::error::Takeover;

/// "Shortly after" a connect: twice the first reconnect backoff (the other copy's
/// reconnect comes after at most 1.5 times it, jittered) plus this for its connect. Tight
/// on purpose: a connection cut once, soon after it came up, is not two copies.
pub const SOON: Duration = Duration::from_millis(250);

/// The window of [`IdWatch`]'s "shortly after", for a first reconnect backoff of `backoff`.
pub fn soon(backoff: Duration) -> Duration {
    SOON.saturating_add(backoff.saturating_mul(2))
}

/// One connection's watch. Three bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdWatch {
    /// Its last loss was a takeover: whether that came shortly after its connect.
    taken_over: Option<bool>,
    /// That takeover is only likely (the broker closed the socket and said nothing) until
    /// the broker takes the reconnect at once: a broker that went away refuses it.
    unconfirmed: bool,
    /// Its client id was found in use.
    in_use: bool,
}

/// What a loss means for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Not a takeover, or the first: reconnect as usual.
    Reconnect,
    /// Its client id is in use by another client. `newly`: found now: name it, and take the
    /// id back once more, so that the other client sees the same; else give up.
    InUse { newly: bool },
}

/// What a reconnect's CONNACK means for the connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Back {
    /// The loss before was likely a takeover, and the broker took this reconnect at once:
    /// count and name it now.
    pub confirmed: bool,
}

impl IdWatch {
    /// The connection is lost; `takeover`: to another client with its id (certain, or
    /// likely); `soon`: within [`soon`] of its (re)connect.
    pub fn lost(&mut self, takeover: Option<Takeover>, soon: bool) -> Loss {
        let Some(how) = takeover else {
            self.taken_over = None;
            self.unconfirmed = false;
            return Loss::Reconnect;
        };
        let again = self.in_use || self.taken_over.is_some() && soon;
        self.taken_over = Some(soon);
        // In use: the pattern itself confirms it.
        self.unconfirmed = how == Takeover::Likely && !again;
        if again {
            let newly = !self.in_use;
            self.in_use = true;
            return Loss::InUse { newly };
        }
        Loss::Reconnect
    }

    /// A reconnect attempt failed: the broker was away, not taken by another client.
    pub fn failed_attempt(&mut self) {
        if self.unconfirmed {
            self.taken_over = None;
            self.unconfirmed = false;
        }
    }

    /// The connection is back after a loss (its CONNACK).
    pub fn back(&mut self) -> Back {
        let confirmed = std::mem::take(&mut self.unconfirmed) && self.taken_over.is_some();
        Back { confirmed }
    }

    /// Whether its client id was found in use.
    pub fn in_use(&self) -> bool {
        self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAID: Option<Takeover> = Some(Takeover::Said);
    const LIKELY: Option<Takeover> = Some(Takeover::Likely);

    /// Copy A is up; copy B connects (A's first loss, after a long time up); A comes back
    /// (B's first loss, soon); B comes back (A's second loss, soon: A finds the id in use);
    /// A comes back once more (B's second loss, soon: B finds it too); B comes back once
    /// more (A's third loss: A gives up).
    #[test]
    fn two_copies_taking_turns_both_find_the_id_in_use() {
        for how in [SAID, LIKELY] {
            let (mut a, mut b) = (IdWatch::default(), IdWatch::default());
            assert_eq!(a.lost(how, false), Loss::Reconnect);
            a.back();
            assert_eq!(b.lost(how, true), Loss::Reconnect);
            b.back();
            assert_eq!(a.lost(how, true), Loss::InUse { newly: true });
            a.back();
            assert_eq!(b.lost(how, true), Loss::InUse { newly: true });
            assert!(a.in_use() && b.in_use());
            b.back();
            assert_eq!(a.lost(how, true), Loss::InUse { newly: false });
        }
    }

    #[test]
    fn a_likely_takeover_is_confirmed_by_a_reconnect_the_broker_takes_at_once() {
        let mut w = IdWatch::default();
        assert_eq!(w.lost(LIKELY, false), Loss::Reconnect);
        assert_eq!(w.back(), Back { confirmed: true });
        // Said by the broker: counted at the loss, nothing to confirm.
        assert_eq!(w.lost(SAID, false), Loss::Reconnect);
        assert_eq!(w.back(), Back::default());
    }

    /// A broker that restarts closes its connections and refuses the first reconnects:
    /// no takeover, however soon after a connect it comes, however often.
    #[test]
    fn a_broker_restarting_is_no_takeover() {
        let mut w = IdWatch::default();
        for _ in 0..5 {
            assert_eq!(w.lost(LIKELY, true), Loss::Reconnect);
            w.failed_attempt();
            assert_eq!(w.back(), Back::default());
        }
        assert!(!w.in_use());
    }

    #[test]
    fn a_single_takeover_or_other_losses_never_find_the_id_in_use() {
        // One takeover soon after the connect (a cut, or a client that came and went).
        let mut w = IdWatch::default();
        assert_eq!(w.lost(LIKELY, true), Loss::Reconnect);
        w.back();
        assert!(!w.in_use());
        // Taken over once after a long time up, back, and up a long time again.
        let mut w = IdWatch::default();
        assert_eq!(w.lost(SAID, false), Loss::Reconnect);
        w.back();
        assert_eq!(w.lost(SAID, false), Loss::Reconnect);
        // Resets and timeouts between them, however soon.
        for _ in 0..5 {
            assert_eq!(w.lost(None, true), Loss::Reconnect);
            assert_eq!(w.back(), Back::default());
        }
        // A takeover soon after connecting, then a loss of another kind: no pattern.
        assert_eq!(w.lost(SAID, true), Loss::Reconnect);
        assert_eq!(w.lost(None, true), Loss::Reconnect);
        w.back();
        assert!(!w.in_use());
    }

    #[test]
    fn the_window_grows_with_the_reconnect_backoff() {
        assert_eq!(soon(Duration::from_millis(100)), Duration::from_millis(450));
        assert_eq!(soon(Duration::from_secs(5)), Duration::from_millis(10_250));
    }
}
