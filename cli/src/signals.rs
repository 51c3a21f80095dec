//! The signals that end a long-running command (`ferry transfer`, `ferry job list
//! --watch`, `ferry fleet distribute`): Ctrl-C (SIGINT), SIGTERM (a service manager,
//! `kill`) and SIGHUP (the terminal closed). Each is handled the same way: the command
//! cleans up (a transfer cancels its job) and exits.

use anyhow::Context as _;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// Handlers for the three signals, installed before the work they guard starts (a
/// signal that comes before [`Terminations::recv`] is polled is kept, not lost).
pub(crate) struct Terminations {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Terminations {
    /// Installs the handlers: from now on these signals no longer kill the process.
    pub(crate) fn install() -> anyhow::Result<Self> {
        let install = |kind| signal(kind).context("cannot install a signal handler");
        Ok(Self {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
        })
    }

    /// Waits for one of the signals; its name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}
