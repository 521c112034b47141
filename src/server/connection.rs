//! One accepted connection, from its slot to its close: the accept loop takes a total slot
//! before it accepts ([`Slots::total`]), and [`Connection::run`] adds the share of its slot
//! key (or answers 503 and closes at once) and serves HTTP/1.1 on the stream with hyper,
//! handing each request to its [`Answer`]. The same code serves the Unix socket (where
//! [`Requests`] resolves each request against the route table once, charges the ones that may
//! call upstream to the connection's rate and to its peer uid's (`rate.rs`), and hands the
//! rest to the handlers) and the loopback credentials endpoint (`super::endpoint`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::error::ApiError;
use super::handlers::{self, Ctx};
use super::peer::Peer;
use super::response::error_response;

/// A stream the server accepts connections of.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes what the send buffer takes now, never waiting (the busy answer).
    fn write_now(&self, bytes: &[u8]) -> io::Result<usize>;
}

impl Stream for UnixStream {
    fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write(bytes)
    }
}

impl Stream for TcpStream {
    fn write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write(bytes)
    }
}

/// What answers the requests of one connection (one per connection, shared by its requests).
pub(crate) trait Answer: Send + Sync + 'static {
    /// Answers one request.
    fn answer(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<Full<Bytes>>> + Send;
    /// Logs that the connection was refused for want of a slot, naming the peer.
    fn refused_busy(&self);
}

/// One accepted connection and what serving it needs. Built by an accept loop, run on its
/// own task, so a slow connection never holds up another.
pub(crate) struct Connection<S, A> {
    /// The accepted stream; hyper owns it once a slot is held.
    pub(crate) stream: S,
    /// Whose share of the slots this connection takes: the peer's uid on the socket.
    pub(crate) slot_key: u32,
    /// What answers its requests.
    pub(crate) answer: A,
    /// The connection slots of the whole server; this connection holds one while it is open.
    pub(crate) slots: Arc<Slots>,
    /// The total slot the accept loop took before accepting this connection.
    pub(crate) total: OwnedSemaphorePermit,
    /// hyper's settings (head timeout and limits), shared by every connection.
    pub(crate) http: http1::Builder,
    /// Lets shutdown stop this connection between requests and wait for the one in flight.
    pub(crate) watcher: Watcher,
}

/// What every request of one socket connection shares: one per connection, behind an `Arc`
/// that hyper's service clones per request.
pub(crate) struct Requests {
    /// Handed to each handler.
    ctx: Arc<Ctx>,
    /// Checked against each app's `[access]`, and named in the logs.
    peer: Arc<Peer>,
    /// std `Mutex`: held to take one token, never across an await.
    rate: Mutex<Bucket>,
}

impl Requests {
    /// The requests of `peer`'s connection, at most `rate`'s pace for the charged ones.
    pub(crate) fn new(ctx: Arc<Ctx>, peer: Arc<Peer>, rate: Bucket) -> Requests {
        Requests {
            ctx,
            peer,
            rate: Mutex::new(rate),
        }
    }
}

impl<S: Stream, A: Answer> Connection<S, A> {
    /// Serves the connection until the peer closes it, a limit closes it, or shutdown does.
    pub(crate) async fn run(self) {
        let Some(slot) = self.slots.share(self.slot_key, self.total) else {
            self.answer.refused_busy();
            // Never waits: a fresh socket's send buffer takes these few bytes, and a peer
            // that does not read must not hold a task.
            let _ = self.stream.write_now(BUSY_ANSWER.as_bytes());
            return;
        };
        let answer = Arc::new(self.answer);
        let service = service_fn(move |request| {
            let answer = answer.clone();
            async move { Ok::<_, std::convert::Infallible>(answer.answer(request).await) }
        });
        let connection = self.watcher.watch(
            self.http
                .serve_connection(TokioIo::new(self.stream), service),
        );
        if let Err(e) = connection.await {
            debug!(error = %e, "connection ended with an error");
        }
        drop(slot);
    }
}

impl Answer for Requests {
    /// One request: resolved (its app looked up once), charged if it may call upstream, then
    /// answered, or refused with 429 `rate_limited` and `connection: close` when this
    /// connection, or its peer uid over all its connections, is over its rate.
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let route = handlers::route_of(&request, &self.ctx.broker);
        let now = tokio::time::Instant::now();
        let allowed = !route.charged
            || (self
                .rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(now)
                && self.ctx.uid_rates.take(self.peer.uid, now));
        if !allowed {
            debug!(
                uid = self.peer.uid,
                pid = self.peer.pid,
                "request rate over the limit; closing"
            );
            return closing(error_response(ApiError::rate_limited()));
        }
        handlers::handle(route, request, &self.ctx, &self.peer).await
    }

    fn refused_busy(&self) {
        debug!(
            uid = self.peer.uid,
            pid = self.peer.pid,
            "the uid's share of connections is used up; refusing"
        );
    }
}

/// `answer` with `connection: close`: hyper closes the connection once it is sent.
pub(crate) fn closing(mut answer: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    answer.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    answer
}

/// What a connection over the limits gets before it is closed, written without reading
/// its request (HTTP allows an early answer; the client sees it and the close).
const BUSY_ANSWER: &str = "HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 98\r\n\
\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections; try again shortly\"}}";

/// A token bucket: `burst` requests at once, refilled at `rate` per second.
///
/// Worked example with the defaults (burst 200, 50/s): a client pipelining 1000 requests gets
/// about 200 answers plus what refills while they are served, then one 429 and a close; a
/// client polling every 100 ms never comes near the limit.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: tokio::time::Instant,
}

impl Bucket {
    pub(crate) fn new(burst: f64, rate: f64, now: tokio::time::Instant) -> Bucket {
        Bucket {
            tokens: burst,
            burst,
            rate,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(super) fn take(&mut self, now: tokio::time::Instant) -> bool {
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

/// Connection slots: a total and a per-uid share, each a semaphore.
///
/// The total is taken before `accept` (so while it is used up the daemon holds no more
/// descriptors for connections: new ones wait in the kernel's backlog), the uid's share only
/// after, when the peer is known; over the share a connection is refused at once. The total
/// is larger than any one uid's share, so one uid flooding the socket holds its share and
/// nothing more, and other uids' connections keep being accepted.
pub(crate) struct Slots {
    total: Arc<Semaphore>,
    per_uid_max: usize,
    /// One semaphore per uid seen (bounded by the uids on the host). std `Mutex`: held for
    /// a map lookup, never across an await.
    per_uid: Mutex<HashMap<u32, Arc<Semaphore>>>,
}

/// One open connection's slot; both permits are released on drop.
pub(crate) struct Slot {
    _uid: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl Slots {
    pub(crate) fn new(total: usize, per_uid_max: usize) -> Slots {
        Slots {
            total: Arc::new(Semaphore::new(total)),
            per_uid_max,
            per_uid: Mutex::new(HashMap::new()),
        }
    }

    /// A total slot, waiting until one is free (the accept loop calls this before `accept`).
    /// `None` only if the semaphore were closed, which nothing does.
    pub(crate) async fn total(&self) -> Option<OwnedSemaphorePermit> {
        self.total.clone().acquire_owned().await.ok()
    }

    /// The connection's slot: `total` plus one of `uid`'s share, or `None` (and `total`
    /// released) when the share is used up. Never waits.
    pub(crate) fn share(&self, uid: u32, total: OwnedSemaphorePermit) -> Option<Slot> {
        let share = {
            let mut map = self.per_uid.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(uid)
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_uid_max)))
                .clone()
        };
        let uid_permit = share.try_acquire_owned().ok()?;
        Some(Slot {
            _uid: uid_permit,
            _total: total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    #[tokio::test(start_paused = true)]
    async fn slots_are_bounded_per_uid_and_in_total() {
        let slots = Slots::new(3, 2);
        let a1 = slots.share(1, slots.total().await.unwrap()).unwrap();
        let _a2 = slots.share(1, slots.total().await.unwrap()).unwrap();
        assert!(
            slots.share(1, slots.total().await.unwrap()).is_none(),
            "uid 1's share is used up"
        );
        assert_eq!(
            slots.total.available_permits(),
            1,
            "a refused connection gives its total slot back"
        );
        let _b1 = slots.share(2, slots.total().await.unwrap()).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), slots.total())
                .await
                .is_err(),
            "the total is used up: no accept"
        );
        drop(a1);
        assert!(
            slots.share(1, slots.total().await.unwrap()).is_some(),
            "a closed connection frees its slot"
        );
        // A uid over its share never holds total slots.
        let slots = Slots::new(10, 1);
        let _x = slots.share(7, slots.total().await.unwrap()).unwrap();
        for _ in 0..20 {
            assert!(slots.share(7, slots.total().await.unwrap()).is_none());
        }
        assert_eq!(slots.total.available_permits(), 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_total_slot_freed_while_waiting_is_taken() {
        let slots = Arc::new(Slots::new(1, 1));
        let held = slots.share(1, slots.total().await.unwrap()).unwrap();
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.share(2, slots.total().await.unwrap()).is_some() })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiter.is_finished());
        drop(held);
        assert!(waiter.await.unwrap());
    }
}
