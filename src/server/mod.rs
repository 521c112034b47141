//! The socket server: binds the Unix socket (mode, stale-socket takeover), accepts
//! connections within the slot limits and hands each to a [`connection::Connection`], and
//! drains on shutdown. The caller binds and supplies the stop signal, so tests and socket
//! activation hand in their own listener. The route table is [`routes`], one function per
//! route is `handlers`, the answer bytes are [`response`], the status and code of each error
//! [`error`].

mod connection;
pub mod endpoint;
pub mod error;
mod handlers;
pub mod peer;
pub mod response;
pub mod routes;

use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tracing::{debug, info, warn};

use crate::broker::Broker;
use connection::{Bucket, Connection, Requests, Slots};
use peer::Peer;

/// How long requests in flight may run once shutdown starts (CONTRACT §6).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A client must send its whole request head within this, and an idle keep-alive connection
/// is closed after it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket file we created; removed on drop if it is still ours (same inode).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    ino: u64,
    dev: u64,
}

impl SocketFile {
    /// Where the socket was bound (and what drop removes).
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

/// The limits that keep a hostile or broken local client from costing more than its share.
///
/// A client that connects and says nothing, or trickles its request head, is closed at
/// `header_read_timeout` (hyper runs that timer whenever it waits for a request head, so it
/// is also the keep-alive idle timeout); a body that trickles is cut at `body_timeout`.
/// Every connection is its own task, so a slow one never holds up another; what it can hold
/// is a connection slot, and those are bounded per peer uid as well as in total, so one local
/// user cannot lock the others out.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A request head (or, between requests, the next one) must arrive within this.
    pub header_read_timeout: Duration,
    /// A request body must arrive within this.
    pub body_timeout: Duration,
    /// Largest request head (request line + headers); larger gets 431 and a close.
    pub max_header_bytes: usize,
    /// Most headers in one request; more gets 431.
    pub max_headers: usize,
    /// Connections open at once, all peers together. Over: 503 `too_many_connections`.
    pub max_connections: usize,
    /// Connections open at once per peer uid. Over: 503 `too_many_connections`.
    pub max_connections_per_uid: usize,
    /// How long a new connection over a limit waits for a slot before its 503.
    pub slot_wait: Duration,
    /// Requests that may cause upstream work (see [`routes::Upstream`]) one connection may
    /// sustain per second...
    pub requests_per_second: f64,
    /// ... after a burst of this many. Over: 429 `rate_limited`, then the connection closes.
    pub request_burst: f64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_timeout: Duration::from_secs(10),
            max_header_bytes: 8 * 1024,
            max_headers: 32,
            max_connections: 512,
            max_connections_per_uid: 128,
            slot_wait: Duration::from_secs(1),
            requests_per_second: 50.0,
            request_burst: 200.0,
        }
    }
}

/// hyper's HTTP/1.1 settings for `limits`: the same on the socket and the endpoint.
fn http_settings(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .max_buf_size(64 * 1024);
    http
}

/// Serves until `shutdown` resolves, then stops accepting and gives requests in flight up to
/// [`DRAIN_TIMEOUT`]. Uses the default [`Limits`].
pub async fn run(listener: UnixListener, broker: Arc<Broker>, shutdown: impl Future<Output = ()>) {
    run_with_limits(listener, broker, shutdown, Limits::default()).await
}

/// [`run`] with explicit limits (tests use short timeouts and small counts).
pub async fn run_with_limits(
    listener: UnixListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) {
    let ctx = Arc::new(handlers::Ctx {
        broker,
        daemon_uid: nix::unistd::geteuid().as_raw(),
        body_timeout: limits.body_timeout,
    });
    let slots = Arc::new(Slots::new(
        limits.max_connections,
        limits.max_connections_per_uid,
    ));
    let graceful = GracefulShutdown::new();
    let http = http_settings(&limits);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let peer = match Peer::of(&stream) {
                        Ok(peer) => Arc::new(peer),
                        Err(e) => {
                            debug!(error = %e, "no peer credentials; closing");
                            continue;
                        }
                    };
                    let rate = Bucket::new(
                        limits.request_burst,
                        limits.requests_per_second,
                        tokio::time::Instant::now(),
                    );
                    let connection = Connection {
                        stream,
                        slot_key: peer.uid,
                        answer: Requests::new(ctx.clone(), peer, rate),
                        slots: slots.clone(),
                        slot_wait: limits.slot_wait,
                        http: http.clone(),
                        watcher: graceful.watcher(),
                    };
                    tokio::spawn(connection.run());
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
