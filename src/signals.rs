//! Signals as futures. tokio's signal support is used rather than signal-hook directly: it is
//! built on signal-hook-registry (the same handler registry), and gives async streams the
//! runtime already polls, with no extra thread.

use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown() {
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => info!(signal = "SIGTERM", "shutting down"),
                _ = int.recv() => info!(signal = "SIGINT", "shutting down"),
            }
        }
        _ => {
            // Without handlers the default action (exit) applies anyway; wait forever.
            std::future::pending::<()>().await
        }
    }
}

/// SIGHUP, the reload request. Registered at start, before the daemon says it is ready, so
/// an early SIGHUP never hits the default action (exit).
pub fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    signal(SignalKind::hangup())
}
