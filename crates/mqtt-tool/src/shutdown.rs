//! Signals. SIGINT, SIGTERM and SIGHUP (a closed terminal) end a run: the first asks it to
//! stop and finish within its deadlines (a publisher flushes what was generated, the backend
//! writes its report); a second one abandons what is left. SIGUSR1 asks for a status line,
//! as `dd` does, and ends nothing. The run's outcome remembers which signal came, for the
//! exit code (128 + the signal's number, as shells report it).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A signal that ended a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Hangup,
    Interrupt,
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hangup => "SIGHUP",
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    fn number(self) -> u8 {
        match self {
            Signal::Hangup => 1,
            Signal::Interrupt => 2,
            Signal::Terminate => 15,
        }
    }

    fn from_number(n: u8) -> Option<Signal> {
        [Signal::Hangup, Signal::Interrupt, Signal::Terminate]
            .into_iter()
            .find(|s| s.number() == n)
    }

    /// 128 + the signal number, as shells report it.
    pub fn exit_code(self) -> u8 {
        128 + self.number()
    }
}

/// Stop and abort requests, from signals or from a test.
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Stop: end generation (or receiving) and finish within the deadlines.
    pub stop: CancellationToken,
    /// Give up what is left of finishing.
    pub abort: CancellationToken,
    /// SIGUSR1: print a status line now.
    pub status: Arc<Notify>,
    signal: Arc<AtomicU8>,
    /// What the first signal does, for the line that acknowledges it.
    first_means: &'static str,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new("stopping")
    }
}

impl Shutdown {
    /// A shutdown whose first signal is acknowledged with `first_means` (e.g. "stopping,
    /// writing the report").
    pub fn new(first_means: &'static str) -> Shutdown {
        Shutdown {
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            status: Arc::new(Notify::new()),
            signal: Arc::new(AtomicU8::new(0)),
            first_means,
        }
    }

    /// Listens for SIGINT, SIGTERM, SIGHUP and SIGUSR1 on the current tokio runtime.
    pub fn from_signals(first_means: &'static str) -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{signal, SignalKind};
        let shutdown = Shutdown::new(first_means);
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let s = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    _ = int.recv() => Signal::Interrupt,
                    _ = term.recv() => Signal::Terminate,
                    _ = hup.recv() => Signal::Hangup,
                    _ = usr1.recv() => {
                        s.status.notify_waiters();
                        continue;
                    }
                };
                s.request(got);
            }
        });
        Ok(shutdown)
    }

    /// Records `sig` and stops the run; a second request aborts what is left.
    pub fn request(&self, sig: Signal) {
        if self.stop.is_cancelled() {
            crate::errln!("{}: second signal, abandoning what is left", sig.name());
            self.abort.cancel();
            return;
        }
        let _ = self
            .signal
            .compare_exchange(0, sig.number(), Ordering::SeqCst, Ordering::SeqCst);
        crate::errln!(
            "{}: {} (a second signal abandons it)",
            sig.name(),
            self.first_means
        );
        self.stop.cancel();
    }

    pub fn signal(&self) -> Option<Signal> {
        Signal::from_number(self.signal.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_128_plus_the_signal_number() {
        assert_eq!(Signal::Hangup.exit_code(), 129);
        assert_eq!(Signal::Interrupt.exit_code(), 130);
        assert_eq!(Signal::Terminate.exit_code(), 143);
    }

    #[test]
    fn the_first_signal_stops_and_is_remembered_the_second_aborts() {
        let s = Shutdown::new("stopping");
        s.request(Signal::Hangup);
        assert!(s.stop.is_cancelled() && !s.abort.is_cancelled());
        s.request(Signal::Interrupt);
        assert!(s.abort.is_cancelled());
        assert_eq!(s.signal(), Some(Signal::Hangup));
    }
}
