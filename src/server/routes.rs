//! One function per route of CONTRACT §5. Handlers read the broker and build JSON; the
//! token JSON here is the one place a token is written out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Deserialize;
use serde_json::{json, Value};

use tracing::warn;

use super::error::ApiError;
use super::peer::{self, Peer};
use crate::broker::Broker;
use crate::clock::rfc3339;
use crate::config::Grant;
use crate::refresh::{AppHandle, Token};
use crate::secret::Secret;

/// Largest request body taken (the login body is a few hundred bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// What a request asks for, once its method, path and query are understood. Built by
/// [`resolve`], which is pure, so routing can be tested (and fuzzed) without a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `GET /v1/health`.
    Health,
    /// `GET /v1/apps`.
    Apps,
    /// `GET /metrics`.
    Metrics,
    /// `/v1/apps/{app}/{action}` for an app that exists.
    App {
        /// The app's name, as it appeared in the path (it matched a configured app).
        name: &'a str,
        /// What to do with it.
        action: AppAction,
    },
}

impl Route<'_> {
    /// The route's template for metrics labels: never client text.
    pub fn template(&self) -> &'static str {
        match self {
            Route::Health => "/v1/health",
            Route::Apps => "/v1/apps",
            Route::Metrics => "/metrics",
            Route::App { action, .. } => match action {
                AppAction::Token { .. } => "/v1/apps/{app}/token",
                AppAction::Refresh => "/v1/apps/{app}/refresh",
                AppAction::Login => "/v1/apps/{app}/login",
                AppAction::Credentials => "/v1/apps/{app}/credentials",
            },
        }
    }
}

/// The per-app routes of CONTRACT §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppAction {
    /// `GET .../token[?min_ttl=SECS]`.
    Token {
        /// Refresh first if the cached token has less than this left.
        min_ttl: Duration,
    },
    /// `POST .../refresh`.
    Refresh,
    /// `POST .../login`.
    Login,
    /// `GET .../credentials`.
    Credentials,
}

/// Per-server state the handlers need besides the request.
pub struct Ctx {
    /// The running apps.
    pub broker: Arc<Broker>,
    /// The daemon's effective uid: with root, the readers of an app without `[access]`.
    pub daemon_uid: u32,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
}

/// Routes one request from `peer`.
pub async fn handle<B>(request: Request<B>, ctx: &Ctx, peer: &Peer) -> Response<Full<Bytes>>
where
    B: hyper::body::Body + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let (template, result) = route(request, ctx, peer).await;
    let response = result.unwrap_or_else(ApiError::into_response);
    ctx.broker
        .metrics()
        .request(template, response.status().as_u16());
    response
}

/// Method, path and query -> [`Route`]. `is_app` says whether a name is a configured app.
/// Paths are taken as sent: no percent-decoding (an app name never needs encoding, so
/// `/v1/apps/ana%6Cytics/token` names no app and answers 404 `unknown_app`).
///
/// # Errors
/// 404 `unknown_app` / `not_found`, 405 `method_not_allowed`, 400 `bad_request` (query).
pub fn resolve<'a>(
    method: &Method,
    path: &'a str,
    query: Option<&str>,
    is_app: impl Fn(&str) -> bool,
) -> Result<Route<'a>, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["v1", "health"] => {
            only(method, Method::GET)?;
            Ok(Route::Health)
        }
        ["v1", "apps"] => {
            only(method, Method::GET)?;
            Ok(Route::Apps)
        }
        ["v1", "apps", name, action] => {
            if !is_app(name) {
                return Err(ApiError::unknown_app(name));
            }
            let action = match *action {
                "token" => {
                    only(method, Method::GET)?;
                    AppAction::Token {
                        min_ttl: parse_min_ttl(query)?,
                    }
                }
                "refresh" => {
                    only(method, Method::POST)?;
                    AppAction::Refresh
                }
                "login" => {
                    only(method, Method::POST)?;
                    AppAction::Login
                }
                "credentials" => {
                    only(method, Method::GET)?;
                    AppAction::Credentials
                }
                _ => {
                    return Err(ApiError::not_found(&format!(
                        "/v1/apps/{{app}}/{}",
                        shown(action)
                    )))
                }
            };
            Ok(Route::App { name, action })
        }
        ["metrics"] => {
            only(method, Method::GET)?;
            Ok(Route::Metrics)
        }
        _ => Err(ApiError::not_found(&shown(path))),
    }
}

/// Resolves and answers one request; also returns its route template for the metrics (the
/// resolved route's own, or for a refused request the template its path has).
async fn route<B>(
    request: Request<B>,
    ctx: &Ctx,
    peer: &Peer,
) -> (&'static str, Result<Response<Full<Bytes>>, ApiError>)
where
    B: hyper::body::Body + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let broker = &ctx.broker;
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let method = request.method().clone();
    let resolved = resolve(&method, &path, query.as_deref(), |name| {
        broker.app(name).is_some()
    });
    let template = match &resolved {
        Ok(route) => route.template(),
        Err(_) => crate::metrics::route_template(&path),
    };
    let result = match resolved {
        Ok(route) => answer(route, request, ctx, peer, &path).await,
        Err(e) => Err(e),
    };
    (template, result)
}

/// Answers a resolved request.
async fn answer<B>(
    route: Route<'_>,
    request: Request<B>,
    ctx: &Ctx,
    peer: &Peer,
    path: &str,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: hyper::body::Body + Send,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let broker = &ctx.broker;
    match route {
        Route::Health => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        Route::Apps => Ok(list_apps(ctx, peer).await),
        Route::Metrics => Ok(metrics_response(broker)),
        Route::App { name, action } => {
            // Gone between `resolve` and here only through a reload: the same 404.
            let app = broker
                .app(name)
                .ok_or_else(|| ApiError::unknown_app(name))?;
            if !may_read(ctx, peer, &app).await {
                warn!(app = name, uid = peer.uid, gid = peer.gid, pid = peer.pid, path = %shown(path), "peer refused by the app's [access]");
                return Err(ApiError::forbidden(name));
            }
            match action {
                AppAction::Token { min_ttl } => {
                    let token = app.token(min_ttl).await?;
                    if app.last_attempt_failed() {
                        // The last attempt failed: this is the last good token.
                        broker.metrics().served_stale(app.name(), "token");
                    }
                    Ok(token_response(broker, &token))
                }
                AppAction::Refresh => {
                    let token = app.refresh().await?;
                    Ok(token_response(broker, &token))
                }
                AppAction::Login => login(&app, request, ctx.body_timeout).await,
                AppAction::Credentials => {
                    let creds = app.credentials().await?;
                    Ok(json_response(
                        StatusCode::OK,
                        &crate::refresh::credentials::credential_process_json(&creds),
                    ))
                }
            }
        }
    }
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

fn only(method: &Method, allowed: Method) -> Result<(), ApiError> {
    if *method == allowed {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(allowed.as_str()))
    }
}

/// Echoes a client-supplied path piece safely: bounded, debug-quoted.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    format!("{cut:?}")
}

/// `min_ttl=SECS`: whole non-negative seconds; other query keys are refused so a typo
/// (`minttl=`) does not silently mean 0.
fn parse_min_ttl(query: Option<&str>) -> Result<Duration, ApiError> {
    let mut min_ttl = Duration::ZERO;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "min_ttl" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {}",
                shown(key)
            )));
        }
        let secs: u64 = value
            .parse()
            .map_err(|_| ApiError::bad_request("min_ttl must be a whole number of seconds"))?;
        if secs > 86_400 * 365 {
            return Err(ApiError::bad_request("min_ttl is larger than a year"));
        }
        min_ttl = Duration::from_secs(secs);
    }
    Ok(min_ttl)
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
            }
        })
        .collect();
    let mut response = Response::new(Full::new(Bytes::from(broker.metrics().encode(samples))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    response
}

/// The token JSON of CONTRACT §5, serialized straight from borrowed fields (this is the hot
/// path: no intermediate `Value` map). Never the refresh token.
#[derive(serde::Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<&'a str>,
}

/// The token JSON of CONTRACT §5. Never the refresh token. Everything but `expires_in` is
/// serialized once per token (escaping a JWT-sized id token is most of a request's work);
/// each answer splices the current `expires_in` in.
fn token_response(broker: &Broker, token: &Token) -> Response<Full<Bytes>> {
    let rendered = token.rendered.get_or_init(|| render(token));
    let expires_in = token.ttl(broker.clock().now()).as_secs().to_string();
    let mut bytes =
        Vec::with_capacity(rendered.before.len() + expires_in.len() + rendered.after.len());
    bytes.extend_from_slice(&rendered.before);
    bytes.extend_from_slice(expires_in.as_bytes());
    bytes.extend_from_slice(&rendered.after);
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Serializes `token` with a marker for `expires_in` and splits the JSON there.
fn render(token: &Token) -> crate::refresh::state::Rendered {
    const MARK: u64 = u64::MAX;
    let body = TokenBody {
        access_token: token.access_token.expose(),
        token_type: &token.token_type,
        expires_at: rfc3339(token.expires_at_wall),
        expires_in: MARK,
        scopes: token.scopes.as_deref(),
        issued_token_type: token.issued_token_type.as_deref(),
        id_token: token.id_token.as_ref().map(|t| t.expose()),
    };
    let mut json = zeroize::Zeroizing::new(Vec::with_capacity(
        256 + body.access_token.len() + body.id_token.map_or(0, str::len),
    ));
    // Serializing borrowed strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *json, &body);
    // The key and the number are outside any string (strings are quoted), so the first match
    // is the field itself.
    let key = format!("\"expires_in\":{MARK}");
    let at = json
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap_or(json.len());
    let split = (at + key.len() - MARK.to_string().len()).min(json.len());
    let after_at = (at + key.len()).min(json.len());
    crate::refresh::state::Rendered {
        before: zeroize::Zeroizing::new(json[..split].to_vec()),
        after: zeroize::Zeroizing::new(json[after_at..].to_vec()),
    }
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

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolved_route_has_the_template_its_path_has() {
        for (method, path, query) in [
            (Method::GET, "/v1/health", None),
            (Method::GET, "/v1/apps", None),
            (Method::GET, "/metrics", None),
            (Method::GET, "/v1/apps/a/token", Some("min_ttl=5")),
            (Method::POST, "/v1/apps/a/refresh", None),
            (Method::POST, "/v1/apps/a/login", None),
            (Method::GET, "/v1/apps/a/credentials", None),
        ] {
            let route = resolve(&method, path, query, |n| n == "a").unwrap();
            assert_eq!(
                route.template(),
                crate::metrics::route_template(path),
                "{path}"
            );
        }
    }

    #[test]
    fn the_rendered_token_json_splices_expires_in_and_keeps_every_field() {
        let now = tokio::time::Instant::now();
        let token = Token {
            // The marker's digits inside a string must not confuse the split.
            access_token: Secret::new("tok-\"expires_in\":18446744073709551615"),
            token_type: "Bearer".into(),
            expires_at: now + Duration::from_secs(3600),
            expires_at_wall: std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            scopes: Some(vec!["openid".into()]),
            issued_token_type: None,
            id_token: Some(Secret::new("a.b.c")),
            identity_context: None,
            rendered: std::sync::OnceLock::new(),
        };
        for expires_in in [3599u64, 0, 12] {
            let r = render(&token);
            let mut bytes = r.before.to_vec();
            bytes.extend_from_slice(expires_in.to_string().as_bytes());
            bytes.extend_from_slice(&r.after);
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["expires_in"], expires_in);
            assert_eq!(v["access_token"], "tok-\"expires_in\":18446744073709551615");
            assert_eq!(v["expires_at"], "2027-01-15T08:00:00Z");
            assert_eq!(v["scopes"][0], "openid");
            assert_eq!(v["id_token"], "a.b.c");
            assert!(v.get("issued_token_type").is_none());
        }
        assert_eq!(format!("{:?}", render(&token)), "Rendered(<redacted>)");
    }

    #[test]
    fn min_ttl_parsing() {
        assert_eq!(parse_min_ttl(None).unwrap(), Duration::ZERO);
        assert_eq!(
            parse_min_ttl(Some("min_ttl=90")).unwrap(),
            Duration::from_secs(90)
        );
        assert!(parse_min_ttl(Some("min_ttl=-1")).is_err());
        assert!(parse_min_ttl(Some("min_ttl=abc")).is_err());
        assert!(parse_min_ttl(Some("minttl=5")).is_err());
        assert!(parse_min_ttl(Some("min_ttl=99999999999999999999")).is_err());
    }
}

/// Property tests: `resolve` never panics, and answers a known status for any method, path
/// and query; names that are apps route, others never do.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "v1",
                "apps",
                "health",
                "token",
                "refresh",
                "login",
                "credentials",
                "metrics",
                "analytics",
                "",
                ".",
                "..",
                "%2F",
                "ana%6Cytics",
            ])
            .prop_map(str::to_owned),
            "[ -~]{0,12}",
            "\\PC{0,6}",
        ]
    }

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::POST),
            Just(Method::PUT),
            Just(Method::DELETE),
            Just(Method::HEAD),
            Just(Method::OPTIONS),
            "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
        ]
    }

    fn query() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            "min_ttl=[0-9]{0,25}",
            "(min_ttl|minttl|x)=[ -~]{0,10}(&[ -~]{0,10})?",
            "[ -~]{0,30}",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn resolve_never_panics_and_answers_a_known_status(
            method in method(),
            segments in prop::collection::vec(segment(), 0..6),
            leading_slash in any::<bool>(),
            query in query(),
        ) {
            let path = format!("{}{}", if leading_slash { "/" } else { "" }, segments.join("/"));
            let is_app = |name: &str| name == "analytics";
            match resolve(&method, &path, query.as_deref(), is_app) {
                Ok(Route::App { name, action }) => {
                    prop_assert_eq!(name, "analytics");
                    if let AppAction::Token { min_ttl } = action {
                        prop_assert!(min_ttl <= Duration::from_secs(86_400 * 365));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    prop_assert!(
                        matches!(e.status.as_u16(), 400 | 404 | 405),
                        "{} {}", e.status, e.code
                    );
                    prop_assert!(e.message.chars().count() <= 200, "{}", e.message);
                }
            }
        }
    }

    #[test]
    fn known_routes() {
        let app = |n: &str| n == "analytics";
        let r = |m: Method, p: &'static str, q: Option<&str>| resolve(&m, p, q, app);
        assert_eq!(r(Method::GET, "/v1/health", None), Ok(Route::Health));
        assert_eq!(r(Method::GET, "/v1/apps", None), Ok(Route::Apps));
        assert_eq!(
            r(Method::GET, "/v1/apps/analytics/token", Some("min_ttl=60")),
            Ok(Route::App {
                name: "analytics",
                action: AppAction::Token {
                    min_ttl: Duration::from_secs(60)
                }
            })
        );
        assert_eq!(
            r(Method::GET, "/v1/apps/ana%6Cytics/token", None)
                .unwrap_err()
                .code,
            "unknown_app"
        );
        assert_eq!(
            r(Method::GET, "/v1/apps/analytics/refresh", None)
                .unwrap_err()
                .code,
            "method_not_allowed"
        );
    }
}
