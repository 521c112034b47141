//! The socket server: binds the Unix socket (mode, stale-socket takeover), serves HTTP/1.1
//! with hyper, and drains on shutdown. The caller binds and supplies the stop signal, so tests
//! and socket activation hand in their own listener.

pub mod error;
pub mod peer;
pub mod routes;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::broker::Broker;
use error::ApiError;
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
    /// Requests that may cause upstream work (see [`charged`]) one connection may sustain
    /// per second...
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
    let ctx = Arc::new(routes::Ctx {
        broker,
        daemon_uid: nix::unistd::geteuid().as_raw(),
        body_timeout: limits.body_timeout,
    });
    let slots = Arc::new(Slots::new(
        limits.max_connections,
        limits.max_connections_per_uid,
    ));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .max_buf_size(64 * 1024);
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
                    let ctx = ctx.clone();
                    let slots = slots.clone();
                    let burst = limits.request_burst;
                    let rate = limits.requests_per_second;
                    let wait = limits.slot_wait;
                    let http = http.clone();
                    let watcher = graceful.watcher();
                    tokio::spawn(async move {
                        let Some(slot) = slots.take(peer.uid, wait).await else {
                            debug!(uid = peer.uid, pid = peer.pid, "too many connections; refusing");
                            // Never waits: a fresh socket's send buffer takes these few bytes,
                            // and a peer that does not read must not hold a task.
                            let _ = stream.try_write(BUSY_ANSWER.as_bytes());
                            return;
                        };
                        let bucket = Arc::new(std::sync::Mutex::new(Bucket::new(
                            burst,
                            rate,
                            tokio::time::Instant::now(),
                        )));
                        let service = service_fn(move |request| {
                            let (ctx, peer, bucket) = (ctx.clone(), peer.clone(), bucket.clone());
                            async move {
                                let allowed = !charged(request.method(), request.uri())
                                    || bucket
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .take(tokio::time::Instant::now());
                                if !allowed {
                                    debug!(uid = peer.uid, pid = peer.pid, "request rate over the limit; closing");
                                    let mut answer = ApiError::rate_limited().into_response();
                                    answer.headers_mut().insert(
                                        http::header::CONNECTION,
                                        http::HeaderValue::from_static("close"),
                                    );
                                    return Ok::<_, std::convert::Infallible>(answer);
                                }
                                Ok(routes::handle(request, &ctx, &peer).await)
                            }
                        });
                        let connection = watcher.watch(http.serve_connection(TokioIo::new(stream), service));
                        if let Err(e) = connection.await {
                            debug!(error = %e, "connection ended with an error");
                        }
                        drop(slot);
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

/// What a connection over the limits gets before it is closed, written without reading
/// its request (HTTP allows an early answer; the client sees it and the close).
const BUSY_ANSWER: &str = "HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 98\r\n\
\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections; try again shortly\"}}";

/// Connection slots: a total and a per-uid share, each a semaphore.
struct Slots {
    total: Arc<Semaphore>,
    per_uid_max: usize,
    /// One semaphore per uid seen (bounded by the uids on the host). std `Mutex`: held for
    /// a map lookup, never across an await.
    per_uid: Mutex<HashMap<u32, Arc<Semaphore>>>,
}

/// One open connection's slot; both permits are released on drop.
struct Slot {
    _uid: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Slots {
    fn new(total: usize, per_uid_max: usize) -> Slots {
        Slots {
            total: Arc::new(Semaphore::new(total)),
            per_uid_max,
            per_uid: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for a connection of `uid`, waiting up to `wait` for one to free up; `None`
    /// when the uid's share or the total stays used up. The uid's share is taken first, so
    /// a uid over its share never holds total slots while it waits.
    ///
    /// The short wait is for churn, not for hostile clients: a connection's slot is freed
    /// only once its task has seen the peer's close, and under load that lags the peer's
    /// next connect.
    async fn take(&self, uid: u32, wait: Duration) -> Option<Slot> {
        let share = {
            let mut map = self.per_uid.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(uid)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_uid_max)))
                .clone()
        };
        tokio::time::timeout(wait, async {
            let uid_permit = share.acquire_owned().await.ok()?;
            let total_permit = self.total.clone().acquire_owned().await.ok()?;
            Some(Slot {
                _uid: uid_permit,
                _total: total_permit,
            })
        })
        .await
        .ok()
        .flatten()
    }
}

/// Whether a request counts against its connection's rate: those that can make the daemon
/// call upstream however fresh the cached token is (a forced refresh, a login, a `min_ttl`,
/// role credentials). Cached reads (health, the app list, a token, metrics) are not charged:
/// they cost microseconds, a client may legitimately read its token at any rate, and one
/// connection is one task, so a flood of them cannot starve other clients.
pub fn charged(method: &http::Method, uri: &http::Uri) -> bool {
    *method != http::Method::GET
        || uri.path().ends_with("/credentials")
        || uri.query().is_some_and(|q| q.contains("min_ttl"))
}

/// A token bucket: `burst` requests at once, refilled at `rate` per second.
///
/// Worked example with the defaults (burst 200, 50/s): a client pipelining 1000 requests gets
/// about 200 answers plus what refills while they are served, then one 429 and a close; a
/// client polling every 100 ms never comes near the limit.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    fn new(burst: f64, rate: f64, now: tokio::time::Instant) -> Bucket {
        Bucket {
            tokens: burst,
            burst,
            rate,
            last: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: tokio::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_answer_is_well_formed() {
        let (head, body) = BUSY_ANSWER.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_bounded_per_uid_and_in_total() {
        let wait = Duration::from_secs(1);
        let slots = Slots::new(3, 2);
        let a1 = slots.take(1, wait).await.unwrap();
        let _a2 = slots.take(1, wait).await.unwrap();
        assert!(
            slots.take(1, wait).await.is_none(),
            "uid 1's share is used up"
        );
        let _b1 = slots.take(2, wait).await.unwrap();
        assert!(slots.take(3, wait).await.is_none(), "the total is used up");
        drop(a1);
        assert!(
            slots.take(1, wait).await.is_some(),
            "a closed connection frees its slot"
        );
        // A uid over its share does not hold total slots while it waits.
        let slots = Slots::new(10, 1);
        let _x = slots.take(7, wait).await.unwrap();
        for _ in 0..20 {
            assert!(slots.take(7, wait).await.is_none());
        }
        assert_eq!(slots.total.available_permits(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_during_the_wait_is_taken() {
        let slots = Arc::new(Slots::new(1, 1));
        let held = slots.take(1, Duration::ZERO).await.unwrap();
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.take(1, Duration::from_secs(1)).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(held);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = tokio::time::Instant::now();
        let mut bucket = Bucket::new(3.0, 2.0, t0);
        assert!(bucket.take(t0) && bucket.take(t0) && bucket.take(t0));
        assert!(!bucket.take(t0), "burst spent");
        assert!(
            !bucket.take(t0 + Duration::from_millis(400)),
            "0.8 of a token"
        );
        assert!(
            bucket.take(t0 + Duration::from_millis(500)),
            "refilled to 1"
        );
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| bucket.take(later)));
        assert!(!bucket.take(later));
    }

    #[test]
    fn only_requests_that_may_call_upstream_are_charged() {
        let charged = |m: http::Method, u: &str| super::charged(&m, &u.parse().unwrap());
        assert!(!charged(http::Method::GET, "/v1/health"));
        assert!(!charged(http::Method::GET, "/v1/apps"));
        assert!(!charged(http::Method::GET, "/v1/apps/a/token"));
        assert!(!charged(http::Method::GET, "/metrics"));
        assert!(charged(http::Method::GET, "/v1/apps/a/token?min_ttl=60"));
        assert!(charged(http::Method::GET, "/v1/apps/a/credentials"));
        assert!(charged(http::Method::POST, "/v1/apps/a/refresh"));
        assert!(charged(http::Method::POST, "/v1/apps/a/login"));
        assert!(charged(http::Method::DELETE, "/v1/health"));
    }
}
