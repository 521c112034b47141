//! The loopback credentials endpoint (CONTRACT §5b): the TCP accept loop and the one route it
//! serves, `GET /v1/apps/{app}/credentials` in the container-credentials format every AWS SDK
//! reads. Same hyper settings, head limits, timeouts, connection caps and drain as the socket
//! ([`super::Limits`], [`Connection`]), with its own connection slots, so a flood on the port
//! cannot take the socket's. No request rate: like the socket's cached reads, nothing a client
//! sends here can make the daemon call STS sooner than it would anyway (no `min_ttl`, no
//! forced refresh); the credential cache alone decides when, single-flight and with backoff,
//! so a flood costs CPU time on its own connection's task and no extra upstream call.
//!
//! TCP has no peer credentials: the app's endpoint token in `Authorization` is the
//! authorization (checked in constant time, `crate::endpoint`). An unknown app, an app
//! without a `[role]` and a wrong token all answer the same 403, so the port does not tell
//! which apps exist; a connection is closed after [`MAX_TOKEN_FAILURES`] of them. A request
//! with an `Origin` header came from a browser (a page on this host, or DNS rebinding) and is
//! refused before anything else is looked at.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::connection::{closing, Answer, Connection, Slots};
use super::error::ApiError;
use super::response::{error_response, json_bytes_response};
use super::routes::shown;
use super::{http_settings, Limits, DRAIN_TIMEOUT};
use crate::broker::Broker;

/// Wrong or missing tokens one connection may send; the answer to the last says
/// `connection: close`.
pub(crate) const MAX_TOKEN_FAILURES: u32 = 3;

/// The metrics `route` label of every request on the port, whatever it asked: the port's one
/// route, told apart from the socket's.
pub(crate) const ROUTE_LABEL: &str = "tcp:/v1/apps/{app}/credentials";

/// The one slot key: TCP peers have no uid, so the endpoint's own slots are one share.
const TCP_PEERS: u32 = u32::MAX;

/// Serves the endpoint on `listener` until `shutdown` resolves, then drains like the socket.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) {
    let slots = Arc::new(Slots::new(limits.max_connections, limits.max_connections));
    let graceful = GracefulShutdown::new();
    let http = http_settings(&limits);
    tokio::pin!(shutdown);
    loop {
        // As on the socket: a total slot before `accept`, so a flood on the port holds at
        // most the port's own slots' descriptors.
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
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                let connection = Connection {
                    stream,
                    slot_key: TCP_PEERS,
                    answer: EndpointRequests {
                        broker: broker.clone(),
                        from,
                        failures: AtomicU32::new(0),
                    },
                    slots: slots.clone(),
                    total,
                    http: http.clone(),
                    watcher: graceful.watcher(),
                };
                tokio::spawn(connection.run());
            }
            Err(e) => {
                warn!(error = %e, "credentials endpoint: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => debug!("credentials endpoint drained"),
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => warn!("credentials endpoint: requests still in flight after {}s; stopping anyway", DRAIN_TIMEOUT.as_secs()),
    }
}

/// What the requests of one endpoint connection share.
struct EndpointRequests {
    broker: Arc<Broker>,
    /// The peer's address (always loopback), for the logs.
    from: std::net::SocketAddr,
    /// Wrong or missing tokens so far on this connection.
    failures: AtomicU32,
}

/// What a refused request does to its connection.
enum Refusal {
    /// Answer and keep the connection.
    Answer(ApiError),
    /// Answer and close the connection.
    Close(ApiError),
}

impl Answer for EndpointRequests {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let answer = match self.credentials(&request).await {
            Ok(answer) => answer,
            Err(Refusal::Answer(e)) => error_response(e),
            Err(Refusal::Close(e)) => closing(error_response(e)),
        };
        self.broker
            .metrics()
            .request(ROUTE_LABEL, answer.status().as_u16());
        answer
    }

    fn refused_busy(&self) {
        debug!(from = %self.from, "credentials endpoint: too many connections; refusing");
    }
}

impl EndpointRequests {
    async fn credentials<B>(&self, request: &Request<B>) -> Result<Response<Full<Bytes>>, Refusal> {
        if request.headers().contains_key(header::ORIGIN) {
            debug!(from = %self.from, "credentials endpoint: a request with an Origin header; refusing");
            return Err(Refusal::Close(ApiError::origin_refused()));
        }
        let path = request.uri().path();
        let name = match path
            .strip_prefix("/v1/apps/")
            .and_then(|rest| rest.strip_suffix("/credentials"))
        {
            Some(name) if !name.is_empty() && !name.contains('/') => name,
            _ => return Err(Refusal::Answer(ApiError::not_found(&shown(path)))),
        };
        if request.method() != Method::GET {
            return Err(Refusal::Answer(ApiError::method_not_allowed("GET")));
        }
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let token = self.broker.endpoints().get(name);
        let app = self.broker.app(name);
        let admitted = match (presented, &token, &app) {
            (Some(presented), Some(token), Some(_)) => token.admits(presented),
            _ => false,
        };
        let (Some(app), true) = (app, admitted) else {
            let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            // The name only: it passed the path check, and the header is never logged.
            warn!(from = %self.from, app = %shown(name), failures, "credentials endpoint: missing or wrong endpoint token");
            let refusal = ApiError::bad_endpoint_token();
            return Err(if failures >= MAX_TOKEN_FAILURES {
                Refusal::Close(refusal)
            } else {
                Refusal::Answer(refusal)
            });
        };
        let Some(role) = app.config.role.as_ref() else {
            return Err(Refusal::Answer(ApiError::bad_endpoint_token()));
        };
        let creds = app
            .credentials()
            .await
            .map_err(|e| Refusal::Answer(e.into()))?;
        Ok(json_bytes_response(
            StatusCode::OK,
            crate::endpoint::container_body(&creds, &role.arn),
        ))
    }
}
