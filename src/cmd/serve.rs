//! `iamtokend serve`: load the config, bind the socket, start the apps, serve until a signal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

use super::Failure;
use crate::broker::Broker;
use crate::clock::Clock;
use crate::config::paths::{self, Env};
use crate::config::Config;
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
    if let Some(h) = super::HARDENED.get() {
        info!(
            dumpable = h.dumpable,
            core_limit_zero = h.core_limit_zero,
            "process hardening"
        );
    }
    serve(config, Upstreams::from_environment(), |_| {}).await
}

/// Serves `config` until SIGTERM/SIGINT. `on_listening` runs once the socket is bound.
pub async fn serve(
    config: Config,
    upstreams: Upstreams,
    on_listening: impl FnOnce(&Path),
) -> Result<(), Failure> {
    let socket: PathBuf = paths::socket_path(config.server.socket.as_deref(), &Env::from_process());
    let (listener, socket_file) = crate::server::bind(&socket, config.server.socket_mode)
        .map_err(|e| Failure::failed(format!("cannot listen on {}: {e}", socket.display())))?;
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
    on_listening(socket_file.path());
    crate::server::run(listener, broker, crate::signals::shutdown()).await;
    drop(socket_file);
    info!("stopped");
    Ok(())
}
