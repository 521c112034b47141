//! `iamtokend serve`: load the config, bind the socket, start the apps, serve until a signal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::Failure;
use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::paths::{self, Env};
use crate::config::Config;
use crate::server::SocketFile;
use crate::upstream::oidc::Upstreams;

/// Serves the config at `file` with the SDK's credentials.
pub async fn run(file: &Path) -> Result<(), Failure> {
    let config = crate::config::load(file).map_err(|d| {
        Failure::failed(format!(
            "refusing to start: the config has errors\n{}",
            d.to_string().trim_end()
        ))
    })?;
    crate::logging::init(config.log.format, &config.log.level);
    serve(config, Upstreams::from_environment(), |_| {}).await
}

/// Serves `config` until SIGTERM/SIGINT. `on_listening` runs once the socket is bound.
pub async fn serve(
    config: Config,
    upstreams: Upstreams,
    on_listening: impl FnOnce(&Path),
) -> Result<(), Failure> {
    crate::notify::init();
    let (listener, socket_file, socket) = listen(&config)?;
    let state_dir = paths::state_dir(config.state.dir.as_deref(), &Env::from_process());
    let store = match crate::store::Store::open(&state_dir) {
        Ok(store) => Some(Arc::new(store)),
        Err(e) => {
            warn!(dir = %state_dir.display(), error = %e, "cannot use the state dir; refresh tokens will not survive a restart");
            None
        }
    };
    let broker = Arc::new(Broker::start(&config, &upstreams, Clock::system(), store).await);
    info!(socket = %socket.display(), apps = config.apps.len(), "listening");
    on_listening(&socket);
    let mut supervisor = crate::notify::Supervisor::start(broker.clone());
    let (first, again) = crate::signals::shutdown_twice();
    let stop = async {
        first.await;
        supervisor.stopping();
    };
    tokio::select! {
        _ = crate::server::run(listener, broker, stop) => {}
        _ = again => {}
    }
    drop(socket_file);
    info!("stopped");
    Ok(())
}

/// The socket systemd passed (socket activation: never unlinked by us), else our own bound
/// at the configured or default path (removed on exit).
fn listen(
    config: &Config,
) -> Result<(tokio::net::UnixListener, Option<SocketFile>, PathBuf), Failure> {
    let socket: PathBuf = paths::socket_path(config.server.socket.as_deref(), &Env::from_process());
    match crate::server::activation::take().map_err(|e| Failure::failed(e.to_string()))? {
        Some(passed) => {
            let path = passed
                .path
                .unwrap_or_else(|| PathBuf::from("(unnamed socket)"));
            info!(socket = %path.display(), name = passed.name.as_deref().unwrap_or(""), "using the socket passed by the service manager");
            if path != socket {
                warn!(configured = %socket.display(), passed = %path.display(), "the passed socket is not the configured one; serving on the passed one");
            }
            Ok((passed.listener, None, path))
        }
        None => {
            let (listener, file) = crate::server::bind(&socket, config.server.socket_mode)
                .map_err(|e| {
                    Failure::failed(format!("cannot listen on {}: {e}", socket.display()))
                })?;
            Ok((listener, Some(file), socket))
        }
    }
}
