//! Ctrl-C and SIGTERM. The first signal asks the run to stop generating and flush; a second
//! one aborts the flush. The run's outcome remembers which signal came, for the exit code.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// A signal that ended a run early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }

    /// 128 + the signal number, as shells report it.
    pub fn exit_code(self) -> u8 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// Stop and abort requests, from signals or from a test.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop generating; flush what was generated.
    pub stop: CancellationToken,
    /// Give up flushing.
    pub abort: CancellationToken,
    signal: Arc<AtomicU8>,
}

impl Shutdown {
    /// Listens for SIGINT and SIGTERM on the current tokio runtime.
    pub fn from_signals() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{signal, SignalKind};
        let shutdown = Shutdown::default();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let s = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    _ = int.recv() => Signal::Interrupt,
                    _ = term.recv() => Signal::Terminate,
                };
                s.request(got);
            }
        });
        Ok(shutdown)
    }

    /// Records `sig` and stops the run; a second request aborts the flush.
    pub fn request(&self, sig: Signal) {
        if self.stop.is_cancelled() {
            crate::errln!(
                "{}: second signal, abandoning what is not yet flushed",
                sig.name()
            );
            self.abort.cancel();
            return;
        }
        let code = match sig {
            Signal::Interrupt => 1,
            Signal::Terminate => 2,
        };
        let _ = self
            .signal
            .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst);
        crate::errln!(
            "{}: stopping, flushing what was generated (again to abandon it)",
            sig.name()
        );
        self.stop.cancel();
    }

    pub fn signal(&self) -> Option<Signal> {
        match self.signal.load(Ordering::SeqCst) {
            1 => Some(Signal::Interrupt),
            2 => Some(Signal::Terminate),
            _ => None,
        }
    }
}
