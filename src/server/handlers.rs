//! One function per route of CONTRACT §5: each reads the broker and builds its answer. The
//! route comes from [`super::routes::resolve`]; the bytes from [`super::response`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::warn;

use super::error::ApiError;
use super::peer::{self, Peer};
use super::response::{self, json_response, token_response};
use super::routes::{resolve, shown, AppAction, Route, Target};
use crate::broker::Broker;
use crate::clock::rfc3339;
use crate::config::Grant;
use crate::refresh::AppHandle;
use crate::secret::Secret;

/// Largest request body taken (the login body is a few hundred bytes).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// Per-server state the handlers need besides the request.
pub(crate) struct Ctx {
    /// The running apps.
    pub(crate) broker: Arc<Broker>,
    /// The daemon's effective uid: with root, the readers of an app without `[access]`.
    pub(crate) daemon_uid: u32,
    /// How long a request body may take to arrive.
    pub(crate) body_timeout: Duration,
    /// Each peer uid's charged-request rate, over all its connections.
    pub(crate) uid_rates: super::rate::UidRates,
}

/// Answers one request from `peer` on `route` (resolved by the caller, which charged it) and
/// counts it in the metrics under the route's template.
pub(crate) async fn handle<B>(
    route: Route<Arc<AppHandle>>,
    request: Request<B>,
    ctx: &Ctx,
    peer: &Peer,
) -> Response<Full<Bytes>>
where
    B: hyper::body::Body + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let template = route.template;
    let response = answer(route.target, request, ctx, peer)
        .await
        .unwrap_or_else(response::error_response);
    ctx.broker
        .metrics()
        .request(template, response.status().as_u16());
    response
}

/// Resolves `request` against the route table, looking its app (if any) up in the broker.
pub(crate) fn route_of<B>(request: &Request<B>, broker: &Broker) -> Route<Arc<AppHandle>> {
    let uri = request.uri();
    resolve(request.method(), uri.path(), uri.query(), |name| {
        broker.app(name)
    })
}

/// Runs the handler of `target`.
async fn answer<B>(
    target: Target<Arc<AppHandle>>,
    request: Request<B>,
    ctx: &Ctx,
    peer: &Peer,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: hyper::body::Body + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let broker = &ctx.broker;
    let (app, action) = match target {
        Target::Health => return Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Target::Apps => return Ok(list_apps(ctx, peer).await),
        Target::Metrics => return Ok(metrics_response(broker)),
        Target::Refused(refusal) => return Err(refusal),
        Target::App { app, action } => (app, action),
    };
    if !may_read(ctx, peer, &app).await {
        warn!(app = app.name(), uid = peer.uid, gid = peer.gid, pid = peer.pid, path = %shown(request.uri().path()), "peer refused by the app's [access]");
        return Err(ApiError::forbidden(app.name()));
    }
    let now = || broker.clock().now();
    match action {
        AppAction::Token { min_ttl } => {
            let token = app.token(min_ttl).await?;
            if app.last_attempt_failed() {
                // The last attempt failed: this is the last good token.
                broker.metrics().served_stale(app.name(), "token");
            }
            Ok(token_response(&token, now()))
        }
        AppAction::Refresh => {
            let token = app.refresh().await?;
            Ok(token_response(&token, now()))
        }
        AppAction::Login => login(&app, request, ctx.body_timeout).await,
        AppAction::Credentials => {
            let creds = app.credentials().await?;
            Ok(json_response(
                StatusCode::OK,
                &crate::refresh::credentials::credential_process_json(&creds),
            ))
        }
        AppAction::Endpoint => endpoint(&app, broker),
    }
}

/// `GET /v1/apps/{app}/endpoint`: the credentials endpoint's URL for the app and its token,
/// to this peer only (it passed the app's `[access]`).
fn endpoint(app: &AppHandle, broker: &Broker) -> Result<Response<Full<Bytes>>, ApiError> {
    if app.config.role.is_none() {
        return Err(crate::refresh::ServeError::NoRole {
            app: app.name().to_owned(),
        }
        .into());
    }
    let Some(addr) = broker.endpoints().addr() else {
        return Err(ApiError::endpoint_disabled());
    };
    let Some(token) = broker.endpoints().get(app.name()) else {
        // Only between a reload's token sync and its restart of the app.
        return Err(ApiError::endpoint_disabled());
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "url": format!("http://{addr}/v1/apps/{}/credentials", app.name()),
            "authorization_token": token.expose(),
        }),
    ))
}

/// The app's `[access]` applied to the peer (see [`peer::admits`]).
async fn may_read(ctx: &Ctx, peer: &Peer, app: &AppHandle) -> bool {
    let access = app.config.access.as_ref();
    let groups: &[u32] = if peer::needs_groups(access) {
        peer.groups().await
    } else {
        &[]
    };
    peer::admits(access, ctx.daemon_uid, peer.uid, groups)
}

/// The apps this peer may read; the others are left out, not marked. `state`: whether the
/// state dir is sealed (`{"sealed", "key_source"}`), for every peer.
async fn list_apps(ctx: &Ctx, peer: &Peer) -> Response<Full<Bytes>> {
    let clock = ctx.broker.clock();
    let now = clock.now();
    let mut apps: Vec<Value> = Vec::new();
    for app in ctx.broker.apps() {
        if !may_read(ctx, peer, &app).await {
            continue;
        }
        let snap = app.snapshot();
        let sinks: Vec<Value> = ctx
            .broker
            .sinks_of(app.name())
            .into_iter()
            .map(|sink| {
                json!({
                    "path": sink.path.display().to_string(),
                    "content": sink.content.as_str(),
                    "last_write_at": sink.status.last_write.map(rfc3339),
                    "expires_at": sink.status.expires_at.map(rfc3339),
                    "last_error": sink.status.last_error.as_ref().map(|e| json!({
                        "code": e.code, "message": e.message, "at": rfc3339(e.at)
                    })),
                })
            })
            .collect();
        apps.push(json!({
            "name": app.name(),
            "grant": app.config.grant.kind().as_str(),
            "state": snap.effective_state(now).as_str(),
            "expires_at": snap.token.as_ref().map(|t| rfc3339(t.expires_at_wall)),
            "next_refresh_at": snap.next_refresh_at.map(rfc3339),
            "last_refresh_at": snap.last_refresh_at.map(rfc3339),
            "last_error": snap.last_error.as_ref().map(|e| json!({
                "code": e.code, "message": e.message, "at": rfc3339(e.at)
            })),
            "sinks": sinks,
        }));
    }
    let state = ctx.broker.seal_status().to_json();
    json_response(StatusCode::OK, &json!({ "apps": apps, "state": state }))
}

/// `GET /metrics`: the counters, then each app's gauges from its snapshot as of now.
fn metrics_response(broker: &Broker) -> Response<Full<Bytes>> {
    let now = broker.clock().now();
    let samples = broker
        .apps()
        .iter()
        .map(|app| {
            let snap = app.snapshot();
            crate::metrics::AppSample {
                app: app.name().to_owned(),
                state: snap.effective_state(now),
                expires_in: snap.token.as_ref().map(|t| t.ttl(now).as_secs_f64()),
                consecutive_failures: snap.consecutive_failures,
                sinks: broker
                    .sinks_of(app.name())
                    .into_iter()
                    .map(|sink| {
                        let expiry = sink.status.expires_at.map(|at| {
                            at.duration_since(std::time::UNIX_EPOCH)
                                .map_or(0.0, |d| d.as_secs_f64())
                        });
                        (sink.path.display().to_string(), expiry)
                    })
                    .collect(),
            }
        })
        .collect();
    response::with_type(
        broker.metrics().encode(samples),
        crate::metrics::CONTENT_TYPE,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    code: Secret,
    code_verifier: Secret,
    redirect_uri: String,
}

async fn login<B>(
    app: &AppHandle,
    request: Request<B>,
    body_timeout: Duration,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: hyper::body::Body + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Grant::AuthorizationCode { redirect_uri } = &app.config.grant else {
        return Err(crate::refresh::ServeError::WrongGrant {
            app: app.name().to_owned(),
        }
        .into());
    };
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(ApiError::bad_request(
            "the login body must be application/json",
        ));
    }
    let collect = Limited::new(request.into_body(), MAX_BODY).collect();
    let bytes = tokio::time::timeout(body_timeout, collect)
        .await
        .map_err(|_| ApiError::body_timeout(body_timeout))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::too_large(MAX_BODY)
            } else {
                ApiError::bad_request("the request body could not be read")
            }
        })?
        .to_bytes();
    let body: LoginBody = serde_json::from_slice(&bytes).map_err(|e| {
        // serde's message names the field or position, never the value.
        ApiError::bad_request(format!(
            "the login body must be {{\"code\", \"code_verifier\", \"redirect_uri\"}}: {}",
            e.classify_name()
        ))
    })?;
    if body.code.is_empty() || body.code_verifier.is_empty() {
        return Err(ApiError::bad_request(
            "code and code_verifier must not be empty",
        ));
    }
    if body.redirect_uri != *redirect_uri {
        return Err(ApiError::bad_request(
            "redirect_uri does not match the app's configured redirect_uri",
        ));
    }
    let token = app
        .login(body.code, body.code_verifier, body.redirect_uri)
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"state": "ready", "expires_at": rfc3339(token.expires_at_wall)}),
    ))
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => {
                "a member is missing, unknown or of the wrong type"
            }
            serde_json::error::Category::Eof => "the JSON ends early",
        }
    }
}
