//! `iamtokend serve`: load the config, bind the socket, start the apps, serve until a signal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{error, info, warn};

use super::Failure;
use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::paths::{self, Env};
use crate::config::Config;
use crate::refresh::AppState;
use crate::server::SocketFile;
use crate::systemd::notify::Notifier;
use crate::systemd::watchdog::Supervisor;
use crate::upstream::clients::Upstreams;

/// Serves the config at `file` with the SDK's credentials; `hardened` is what the process
/// hardening at start achieved, logged here once logging is up.
pub(crate) async fn run(
    file: &Path,
    hardened: Option<crate::harden::Hardened>,
) -> Result<(), Failure> {
    // Before the config is read, so the refusal is the one line a stray variable gets.
    if let Some(why) = crate::clock::refuse_test_controls() {
        return Err(Failure::failed(why));
    }
    let config = crate::config::load(file).map_err(|d| {
        Failure::failed(format!(
            "refusing to start: the config has errors\n{}",
            d.to_string().trim_end()
        ))
    })?;
    crate::logging::init(config.log.format, &config.log.level);
    if let Some(h) = hardened {
        info!(
            dumpable = h.dumpable,
            core_limit_zero = h.core_limit_zero,
            "process hardening"
        );
    }
    serve(config, Upstreams::from_environment(), |_| {}).await
}

/// Serves `config` until SIGTERM/SIGINT, reloading it from its files on SIGHUP.
/// `on_listening` runs once the socket is bound.
pub(crate) async fn serve(
    config: Config,
    upstreams: Upstreams,
    on_listening: impl FnOnce(&Path),
) -> Result<(), Failure> {
    if let Some(why) = crate::clock::refuse_test_controls() {
        return Err(Failure::failed(why));
    }
    // First: it takes the systemd variables out of the environment before anything can spawn
    // a child.
    let notifier = Arc::new(Notifier::from_environment());
    // Before the server sizes its connection limit from it.
    match crate::harden::raise_fd_limit() {
        Ok((before, now)) if now > before => {
            info!(from = before, to = now, "raised the soft descriptor limit")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot raise the soft descriptor limit"),
    }
    let mut hangups = crate::signals::hangups()
        .map_err(|e| Failure::failed(format!("cannot handle SIGHUP: {e}")))?;
    let (listener, socket_file, socket, passed_port) = listen(&config)?;
    let endpoint = listen_endpoint(&config, passed_port).await?;
    let env = Env::from_process();
    let state_dir = paths::state_dir(config.state.dir.as_deref(), &env);
    // Read once, here: a reload never re-reads the key (`[state]` applies at restart).
    let sealing =
        crate::seal::Sealing::from_credentials(config.state.seal, env.credentials_dir().as_deref())
            .map_err(|e| Failure::failed(format!("refusing to start: {e}")))?;
    match &sealing {
        crate::seal::Sealing::Sealed { previous, .. } => {
            info!(
                seal = config.state.seal.as_str(),
                sealed = true,
                key_source = crate::seal::KEY_SOURCE,
                previous_key = previous.is_some(),
                "state files are sealed"
            )
        }
        crate::seal::Sealing::NoKey(why) => {
            info!(seal = config.state.seal.as_str(), sealed = false, why = %why, "state files are not sealed: no state key")
        }
        crate::seal::Sealing::Off => {
            info!(
                seal = config.state.seal.as_str(),
                sealed = false,
                "state files are not sealed: [state] seal = \"off\""
            )
        }
    }
    let store = match crate::store::Store::open(&state_dir) {
        Ok(store) => Some(Arc::new(store.with_sealing(sealing))),
        Err(crate::store::OpenError::Unsafe(why)) => {
            return Err(Failure::failed(format!("refusing to start: {why}")));
        }
        Err(crate::store::OpenError::Io(e)) => {
            warn!(dir = %state_dir.display(), error = %e, "cannot use the state dir; refresh tokens will not survive a restart");
            None
        }
    };
    let main_file = config.main_file.clone();
    let app_count = config.apps.len();
    let broker = Arc::new(Broker::start(config, upstreams, Clock::system(), store).await);
    if let Some((_, addr)) = &endpoint {
        broker.endpoints().set_addr(*addr);
        info!(address = %addr, "credentials endpoint listening");
    }
    info!(socket = %socket.display(), apps = app_count, "listening");
    on_listening(&socket);
    {
        let broker = broker.clone();
        tokio::spawn(async move {
            broker.settled().await;
            crate::broker::release_free_memory();
        });
    }
    let mut supervisor = supervise(notifier.clone(), &broker);
    let reloader = {
        let broker = broker.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                notifier.reloading();
                reload(&main_file, &broker).await;
                crate::broker::release_free_memory();
                notifier.ready();
            }
        })
    };
    let (first, again) = crate::signals::shutdown_twice();
    tokio::pin!(again);
    // The first signal stops the socket and the endpoint together.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let stop = async {
        first.await;
        supervisor.stopping();
        let _ = stopping.send(true);
    };
    let endpoint_served = async {
        if let Some((tcp, _)) = endpoint {
            let mut stopped = stopped;
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            let limits = crate::server::Limits::default();
            crate::server::endpoint::run(tcp, broker.clone(), shutdown, limits).await;
        }
    };
    let drained = tokio::select! {
        _ = async { tokio::join!(crate::server::run(listener, broker.clone(), stop), endpoint_served) } => true,
        _ = &mut again => false,
    };
    reloader.abort();
    drop(socket_file);
    if drained {
        // Calls in flight finish so a rotated refresh token is saved; a second signal skips it.
        tokio::select! {
            _ = broker.stop(crate::server::DRAIN_TIMEOUT) => {}
            _ = &mut again => {}
        }
    }
    info!("stopped");
    Ok(())
}

/// Re-reads every config file and applies the result; a config with any error is rejected
/// whole and the running one stays.
pub(crate) async fn reload(main_file: &Path, broker: &Broker) {
    info!(config = %main_file.display(), "SIGHUP: reloading the config");
    // Off the async workers: loading reads every config file, PEM bundles and the user
    // database (NSS), any of which can block.
    let file = main_file.to_owned();
    let Ok(loaded) = tokio::task::spawn_blocking(move || crate::config::load(&file)).await else {
        error!("reload rejected: loading the config did not finish; the running config stays");
        return;
    };
    let config = match loaded {
        Ok(config) => config,
        Err(diagnostics) => {
            for line in diagnostics.to_string().lines() {
                error!("{line}");
            }
            error!(
                problems = diagnostics.0.len(),
                "reload rejected: the config has errors; the running config stays"
            );
            return;
        }
    };
    let report = broker.reload(config).await;
    if !report.needs_restart.is_empty() {
        warn!(sections = ?report.needs_restart, "these settings changed but apply only at restart");
    }
    info!(
        added = ?report.added, removed = ?report.removed, changed = ?report.changed,
        reconfigured = ?report.reconfigured,
        unchanged = report.unchanged.len(), "config reloaded"
    );
}

/// A listener and the address it listens on.
type PortListener = (tokio::net::TcpListener, std::net::SocketAddr);

/// The socket systemd passed (socket activation: never unlinked by us), else our own bound
/// at the configured or default path (removed on exit); and the credentials endpoint's port
/// when systemd passed that too.
fn listen(
    config: &Config,
) -> Result<
    (
        tokio::net::UnixListener,
        Option<SocketFile>,
        PathBuf,
        Option<PortListener>,
    ),
    Failure,
> {
    let socket: PathBuf = paths::socket_path(config.server.socket.as_deref(), &Env::from_process());
    match crate::systemd::activation::take().map_err(|e| Failure::failed(e.to_string()))? {
        Some(passed) => {
            let path = passed
                .path
                .unwrap_or_else(|| PathBuf::from("(unnamed socket)"));
            info!(socket = %path.display(), name = passed.name.as_deref().unwrap_or(""), "using the socket passed by the service manager");
            if path != socket {
                warn!(configured = %socket.display(), passed = %path.display(), "the passed socket is not the configured one; serving on the passed one");
            }
            Ok((passed.listener, None, path, passed.credentials))
        }
        None => {
            let (listener, file) = crate::server::bind(&socket, config.server.socket_mode)
                .map_err(|e| {
                    Failure::failed(format!("cannot listen on {}: {e}", socket.display()))
                })?;
            Ok((listener, Some(file), socket, None))
        }
    }
}

/// The credentials endpoint's listener, when `[server] credentials_listen` is set, and the
/// address it got (the real port when the config said 0): the port systemd passed, if it
/// passed one, else bound here. A passed port without `credentials_listen` is refused (the
/// setting is what turns the endpoint on, and what `check-config` and the operator see).
async fn listen_endpoint(
    config: &Config,
    passed: Option<PortListener>,
) -> Result<Option<PortListener>, Failure> {
    let configured = config.server.credentials_listen;
    match (configured, passed) {
        (None, None) => Ok(None),
        (None, Some((_, passed))) => Err(Failure::failed(format!(
            "refusing to start: socket activation passed the TCP port {passed}, but [server] credentials_listen is not set; set it to \"{passed}\" to turn the credentials endpoint on there"
        ))),
        (Some(addr), Some((listener, passed))) => {
            info!(address = %passed, "using the credentials endpoint port passed by the service manager");
            let same = addr.ip() == passed.ip() && (addr.port() == 0 || addr.port() == passed.port());
            if !same {
                warn!(configured = %addr, passed = %passed, "the passed credentials endpoint port is not the configured one; serving on the passed one");
            }
            Ok(Some((listener, passed)))
        }
        (Some(addr), None) => {
            let cannot = |e: std::io::Error| {
                Failure::failed(format!(
                    "cannot listen on {addr} ([server] credentials_listen): {e}"
                ))
            };
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(cannot)?;
            let bound = listener.local_addr().map_err(cannot)?;
            Ok(Some((listener, bound)))
        }
    }
}

/// The systemd supervision of this daemon: the watchdog pings while every app's owner task
/// answers ([`Broker::alive`]), and `STATUS=` is the summary of the app states.
fn supervise(notifier: Arc<Notifier>, broker: &Arc<Broker>) -> Supervisor {
    let probe = {
        let broker = broker.clone();
        move |wait| {
            let broker = broker.clone();
            async move { broker.alive(wait).await }
        }
    };
    let status = {
        let broker = broker.clone();
        move || broker_summary(&broker)
    };
    Supervisor::start(notifier, probe, status)
}

/// The one-line `STATUS=` summary: "4 apps: 3 ready, 1 failing" (states with no app left out,
/// in the order an operator reads them: good, in progress, bad).
fn summary(states: impl IntoIterator<Item = AppState>) -> String {
    const ORDER: [AppState; 6] = [
        AppState::Ready,
        AppState::Refreshing,
        AppState::Pending,
        AppState::Failing,
        AppState::Expired,
        AppState::NeedsLogin,
    ];
    let mut counts = [0usize; ORDER.len()];
    let mut total = 0;
    for state in states {
        total += 1;
        if let Some(i) = ORDER.iter().position(|s| *s == state) {
            counts[i] += 1;
        }
    }
    if total == 0 {
        return "no apps configured".into();
    }
    let parts: Vec<String> = ORDER
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect();
    let noun = if total == 1 { "app" } else { "apps" };
    format!("{total} {noun}: {}", parts.join(", "))
}

/// The summary of `broker`'s apps now.
fn broker_summary(broker: &Broker) -> String {
    let now = broker.clock().now();
    summary(
        broker
            .apps()
            .iter()
            .map(|app| app.snapshot().effective_state(now)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_counts_states() {
        use AppState::*;
        assert_eq!(summary([]), "no apps configured");
        assert_eq!(summary([Ready]), "1 app: 1 ready");
        assert_eq!(
            summary([Failing, Ready, NeedsLogin, Ready, Ready]),
            "5 apps: 3 ready, 1 failing, 1 needs_login"
        );
        assert_eq!(
            summary([Expired, Pending, Refreshing]),
            "3 apps: 1 refreshing, 1 pending, 1 expired"
        );
    }
}
