//! The socket server: binds the Unix socket (mode, stale-socket takeover), serves HTTP/1.1
//! with hyper, and drains on shutdown. The caller binds and supplies the stop signal, so tests
//! and socket activation hand in their own listener.

pub mod activation;
pub mod error;
pub mod routes;

use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use crate::broker::Broker;

/// How long requests in flight may run once shutdown starts (CONTRACT §6).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A client must send its whole request head within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket file we created; removed on drop if it is still ours (same inode).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    ino: u64,
    dev: u64,
}

impl SocketFile {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.ino() == self.ino && meta.dev() == self.dev {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds `path` with `mode`. A socket file nobody answers on (a dead daemon's) is replaced;
/// one a live process answers on is refused; anything that is not a socket is left alone.
pub fn bind(path: &Path, mode: u32) -> io::Result<(UnixListener, SocketFile)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::create_dir_all(parent)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process is serving on {}", path.display()),
                ));
            }
            info!(socket = %path.display(), "replacing a stale socket file");
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    let meta = std::fs::symlink_metadata(path)?;
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            ino: meta.ino(),
            dev: meta.dev(),
        },
    ))
}

/// Serves until `shutdown` resolves, then stops accepting and gives requests in flight up to
/// [`DRAIN_TIMEOUT`].
pub async fn run(listener: UnixListener, broker: Arc<Broker>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let broker = broker.clone();
                    let service = service_fn(move |request| {
                        let broker = broker.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(routes::handle(request, broker).await)
                        }
                    });
                    let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            debug!(error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => debug!("all connections drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => warn!("requests still in flight after {}s; stopping anyway", DRAIN_TIMEOUT.as_secs()),
    }
}
