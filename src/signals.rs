//! Signals as futures. tokio's signal support is used rather than signal-hook directly: it is
//! built on signal-hook-registry (the same handler registry), and gives async streams the
//! runtime already polls, with no extra thread.

use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

/// SIGHUP, the reload request. Registered at start, before the daemon says it is ready, so
/// an early SIGHUP never hits the default action (exit).
pub(crate) fn hangups() -> std::io::Result<tokio::signal::unix::Signal> {
    signal(SignalKind::hangup())
}

/// Shutdown in two steps: the first future resolves on the first SIGTERM or SIGINT (stop
/// accepting, drain); the second on another one after it (stop draining, exit now). Without
/// the second, a handler registered for the first would leave a stuck drain unkillable by
/// the usual signal. Both are pending forever if the handlers cannot be installed (the
/// default action, exit, then applies).
pub(crate) fn shutdown_twice() -> (
    impl std::future::Future<Output = ()>,
    impl std::future::Future<Output = ()>,
) {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (again_tx, again_rx) = tokio::sync::oneshot::channel::<()>();
    // Registered now, so a signal that arrives before anyone awaits is not lost.
    if let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        tokio::spawn(async move {
            let mut next = async || {
                tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                }
            };
            let signal = next().await;
            info!(signal, "shutting down");
            let _ = first_tx.send(());
            let signal = next().await;
            tracing::warn!(
                signal,
                "second signal: exiting now, without waiting for requests in flight"
            );
            let _ = again_tx.send(());
        });
    }
    let pending_unless_sent = |rx: tokio::sync::oneshot::Receiver<()>| async move {
        if rx.await.is_err() {
            std::future::pending::<()>().await
        }
    };
    (pending_unless_sent(first_rx), pending_unless_sent(again_rx))
}
