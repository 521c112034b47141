//! The socket server: binds the Unix socket ([`bind`], in `socket`), accepts
//! connections within the slot limits and hands each to a [`connection::Connection`], and
//! drains on shutdown. The caller binds and supplies the stop signal, so tests and socket
//! activation hand in their own listener. The route table is [`routes`], one function per
//! route is `handlers`, the answer bytes are [`response`], the status and code of each error
//! [`error`].

mod connection;
pub mod endpoint;
pub(crate) mod error;
mod handlers;
pub(crate) mod peer;
mod rate;
pub(crate) mod response;
pub mod routes;
mod socket;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::broker::Broker;
use connection::{Bucket, Connection, Requests, Slots};
use peer::Peer;
pub(crate) use socket::{bind, SocketFile};

/// How long requests in flight may run once shutdown starts (CONTRACT §6).
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A client must send its whole request head within this, and an idle keep-alive connection
/// is closed after it.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits that keep a hostile or broken local client from costing more than its share.
///
/// A client that connects and says nothing, or trickles its request head, is closed at
/// `header_read_timeout` (hyper runs that timer whenever it waits for a request head, so it
/// is also the keep-alive idle timeout); a body that trickles is cut at `body_timeout`.
/// Every connection is its own task, so a slow one never holds up another; what it can hold
/// is a connection slot, and those are bounded per peer uid as well as in total (the total
/// larger than a uid's share), so one local user cannot lock the others out, and the total is
/// kept under the descriptor limit so that refresh work always has descriptors left.
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
    /// Connections open at once, all peers together (and at most what the descriptor limit
    /// leaves, `connection_budget`). While they are all open the daemon does not `accept`: new
    /// connections wait in the kernel's backlog (or are refused by it when that is full).
    pub max_connections: usize,
    /// Connections open at once per peer uid; smaller than the total, so one uid cannot take
    /// all of it. Over: 503 `too_many_connections` at once, and the connection is closed.
    pub max_connections_per_uid: usize,
    /// Requests that may cause upstream work (see [`routes::Upstream`]) one connection may
    /// sustain per second...
    pub requests_per_second: f64,
    /// ... after a burst of this many. Over: 429 `rate_limited`, then the connection closes.
    pub request_burst: f64,
    /// The same, counted per peer uid over all its connections: requests per second...
    pub uid_requests_per_second: f64,
    /// ... after a burst of this many.
    pub uid_request_burst: f64,
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
            requests_per_second: 50.0,
            request_burst: 200.0,
            uid_requests_per_second: 100.0,
            uid_request_burst: 400.0,
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
pub(crate) async fn run(
    listener: UnixListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) {
    run_with_limits(listener, broker, shutdown, Limits::default()).await
}

/// Descriptors the connection limit leaves free for everything else: refresh work (assertion
/// files and commands' pipes, state file writes, upstream connections, several per app in
/// flight, `[refresh] max_concurrent` at once), the login listener, logs and the runtime's own.
pub(crate) const FD_RESERVE: u64 = 256;

/// The (total, per-uid) connection slots `limits` allow under a soft descriptor limit of
/// `soft`: the total is at most `soft` minus [`FD_RESERVE`] (half of `soft` when that is
/// small), and when the descriptors cut it, the per-uid share shrinks to a quarter of it (the
/// defaults' ratio), so one uid still cannot hold it all.
pub(crate) fn connection_budget(limits: &Limits, soft: u64) -> (usize, usize) {
    let room = if soft >= 2 * FD_RESERVE {
        soft - FD_RESERVE
    } else {
        soft / 2
    };
    let room = usize::try_from(room).unwrap_or(usize::MAX).max(1);
    if room >= limits.max_connections {
        (limits.max_connections, limits.max_connections_per_uid)
    } else {
        (room, limits.max_connections_per_uid.min((room / 4).max(1)))
    }
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
        uid_rates: rate::UidRates::new(limits.uid_request_burst, limits.uid_requests_per_second),
    });
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let (total, per_uid) = connection_budget(&limits, soft);
    if total < limits.max_connections {
        warn!(
            descriptors = soft,
            connections = total,
            per_uid,
            "the descriptor limit allows fewer connections than configured (raise LimitNOFILE=)"
        );
    }
    let slots = Arc::new(Slots::new(total, per_uid));
    let graceful = GracefulShutdown::new();
    let http = http_settings(&limits);
    tokio::pin!(shutdown);
    loop {
        // A total slot first: while every one is in use nothing is accepted, so connections
        // never cost the daemon more descriptors than the budget.
        let total = tokio::select! {
            total = slots.total() => match total {
                Some(total) => total,
                None => break,
            },
            _ = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => break,
        };
        match accepted {
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
                    total,
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
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => debug!("all connections drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => warn!("requests still in flight after {}s; stopping anyway", DRAIN_TIMEOUT.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_descriptors_for_refresh_work() {
        let defaults = Limits::default();
        // Plenty of descriptors: the configured limits.
        assert_eq!(connection_budget(&defaults, 65536), (512, 128));
        assert_eq!(connection_budget(&defaults, 1024), (512, 128));
        // Fewer: the total leaves FD_RESERVE, and one uid still gets only a quarter of it.
        assert_eq!(connection_budget(&defaults, 512), (256, 64));
        assert_eq!(connection_budget(&defaults, 600), (344, 86));
        // Very few: half for connections, at least one slot.
        assert_eq!(connection_budget(&defaults, 64), (32, 8));
        assert_eq!(connection_budget(&defaults, 1), (1, 1));
        assert_eq!(connection_budget(&defaults, 0), (1, 1));
        // Small configured limits are kept as they are.
        let small = Limits {
            max_connections: 3,
            max_connections_per_uid: 2,
            ..Limits::default()
        };
        assert_eq!(connection_budget(&small, 1024), (3, 2));
    }
}
