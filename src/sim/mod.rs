//! A simulated IAM Identity Center (SSO OIDC `CreateTokenWithIAM`) and STS (`AssumeRole`)
//! on 127.0.0.1, for the daemon's integration tests and `serve --dev`.
//!
//! The real AWS SDK clients are pointed at [`Sim::endpoint_url`] and run end to end: the
//! simulator verifies SigV4 for real (a client with the wrong secret is refused), validates
//! each grant's members, remembers what it issued (so refresh tokens rotate, codes are
//! single-use, token exchange and identity contexts are checked), and answers in each
//! service's wire format, errors included, so the SDK classifies them as it would AWS's.
//! Tests script behaviour through [`Fault`]s and the setters, and read back every call.
//!
//! It depends on no other module of the crate: it is copied into the daemon verbatim.
//!
//! # Layout
//! - `mod.rs`: the public API, the accept loop and the per-request pipeline
//!   (route, body cap, SigV4, fault, answer, call log).
//! - `sigv4.rs`: signature verification by re-signing with `aws-sigv4`.
//! - `oidc.rs`: `CreateTokenWithIAM`, one grant at a time.
//! - `sts.rs`: `AssumeRole` with an Identity Center provided context.
//! - `state.rs`: what the simulator remembers.
//! - `wire.rs`: the clock, random material, encodings and the [`wire::Answer`] shape.

mod authorize;
mod oidc;
mod sigv4;
mod state;
mod sts;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use state::{Grantee, Shared};
use wire::Answer;

/// Largest request body read; a larger one gets 413 unread. Real requests are a few KiB.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// How the simulator is set up. Only the lifetime can be changed later (see the setters).
#[derive(Clone)]
pub struct SimOptions {
    /// The only access key id accepted in a SigV4 credential scope.
    pub access_key_id: String,
    /// The secret the simulator re-signs with.
    pub secret_access_key: String,
    /// The region every credential scope must name, e.g. `us-east-1`.
    pub region: String,
    /// Default `expiresIn` of issued access tokens (and the life of their identity contexts).
    pub token_lifetime: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            access_key_id: "AKIDSIMULATOR000001".to_owned(),
            secret_access_key: "sim-secret-key".to_owned(),
            region: "us-east-1".to_owned(),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

impl fmt::Debug for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimOptions")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"** redacted **")
            .field("region", &self.region)
            .field("token_lifetime", &self.token_lifetime)
            .finish()
    }
}

/// A scripted misbehaviour, consumed by the next call it applies to, after that call's
/// signature check (a bad signature still fails first).
#[derive(Debug, Clone)]
pub enum Fault {
    /// A modeled error: status, the X-Amzn-ErrorType value, OAuth `error` code, `error_description`.
    /// For STS calls it is rendered in the STS XML error format with `Code` = `error_type`.
    Error {
        /// HTTP status.
        status: u16,
        /// The error type (OIDC `X-Amzn-ErrorType`, STS `Code`).
        error_type: String,
        /// The OAuth `error` code (OIDC only).
        error: String,
        /// `error_description` (OIDC) or `Message` (STS).
        description: String,
    },
    /// Delay this long, then answer normally.
    Delay(Duration),
    /// 200 with a body that is not valid JSON (nor XML, for STS).
    MalformedJson,
    /// Any raw answer.
    Raw {
        /// HTTP status.
        status: u16,
        /// `Content-Type` of the answer.
        content_type: String,
        /// The body, sent as is.
        body: String,
    },
    /// Close the connection without answering.
    Reset,
}

impl Fault {
    fn error(status: u16, error_type: &str, error: &str, description: &str) -> Fault {
        Fault::Error {
            status,
            error_type: error_type.to_owned(),
            error: error.to_owned(),
            description: description.to_owned(),
        }
    }

    /// 400 `InvalidGrantException` / `invalid_grant`.
    pub fn invalid_grant() -> Fault {
        Fault::error(
            400,
            "InvalidGrantException",
            "invalid_grant",
            "Invalid grant provided",
        )
    }

    /// 400 `SlowDownException` / `slow_down` (the SDK does not retry it).
    pub fn slow_down() -> Fault {
        Fault::error(400, "SlowDownException", "slow_down", "Slow down")
    }

    /// 500 `InternalServerException` / `server_error`.
    pub fn server_error() -> Fault {
        Fault::error(
            500,
            "InternalServerException",
            "server_error",
            "Internal server error",
        )
    }

    /// 400 `AccessDeniedException` / `access_denied`.
    pub fn access_denied() -> Fault {
        Fault::error(
            400,
            "AccessDeniedException",
            "access_denied",
            "Access denied",
        )
    }

    /// 401 `InvalidClientException` / `invalid_client`.
    pub fn invalid_client() -> Fault {
        Fault::error(
            401,
            "InvalidClientException",
            "invalid_client",
            "Invalid client",
        )
    }

    fn answer(self, service: Service) -> Answer {
        match (self, service) {
            (
                Fault::Error {
                    status,
                    error_type,
                    error,
                    description,
                },
                Service::Oidc,
            ) => Answer::oidc_error(status, &error_type, &error, &description),
            (
                Fault::Error {
                    status,
                    error_type,
                    description,
                    ..
                },
                Service::Sts,
            ) => Answer::sts_error(status, &error_type, &description),
            (Fault::MalformedJson, Service::Oidc) => Answer::raw(
                200,
                "application/json",
                "{\"accessToken\": \"aoa-".to_owned(),
            ),
            (Fault::MalformedJson, Service::Sts) => {
                Answer::xml(200, "{\"AssumeRoleResponse\": <".to_owned())
            }
            (
                Fault::Raw {
                    status,
                    content_type,
                    body,
                },
                _,
            ) => Answer::raw(status, &content_type, body),
            // Handled before an answer is built; kept total so a new variant cannot panic.
            (Fault::Delay(_) | Fault::Reset, _) => {
                Answer::oidc_error(500, "InternalServerException", "server_error", "sim fault")
            }
        }
    }
}

/// One request the simulator received, as the call log keeps it.
#[derive(Debug, Clone)]
pub struct Call {
    /// Which simulated service the request was routed to.
    pub service: Service,
    /// `CreateTokenWithIAM`, or the STS `Action` asked for (empty when absent).
    pub operation: String,
    /// OIDC `clientId`, when the body had one.
    pub client_id: Option<String>,
    /// The raw `grantType` URN or value (OIDC).
    pub grant_type: Option<String>,
    /// Every request member flattened to strings (OIDC JSON members; STS form fields);
    /// `scope` joined by spaces.
    pub params: BTreeMap<String, String>,
    /// Whether the SigV4 signature verified.
    pub signature_valid: bool,
    /// The access key id of the credential scope.
    pub access_key_id: Option<String>,
    /// The region of the credential scope.
    pub region: Option<String>,
    /// The status answered; 0 while the answer is pending and for a [`Fault::Reset`].
    pub status: u16,
    /// The error type answered, if any (`"Reset"` for a [`Fault::Reset`]).
    pub error: Option<String>,
}

/// The two simulated services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// SSO OIDC, signing name `sso-oauth`.
    Oidc,
    /// STS, signing name `sts`.
    Sts,
}

impl Service {
    fn signing_name(self) -> &'static str {
        match self {
            Service::Oidc => "sso-oauth",
            Service::Sts => "sts",
        }
    }
}

/// A running simulator. Dropping it stops the server too; [`Sim::shutdown`] also waits.
pub struct Sim {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// Binds 127.0.0.1 on a free port and spawns the server task on the current runtime.
    pub async fn start(opts: SimOptions) -> std::io::Result<Sim> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(opts));
        let (stop, stopped) = oneshot::channel();
        let server = tokio::spawn(serve(listener, Arc::clone(&shared), stopped));
        tracing::debug!(%addr, "simulated Identity Center and STS listening");
        Ok(Sim {
            shared,
            addr,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT`, for the SDK's `endpoint_url` (both services).
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets `expiresIn` of access tokens issued from now on: for one client, or with `None`
    /// the default for every client without a setting of its own. Zero or negative values
    /// are allowed, to hand out tokens (and identity contexts) that are already expired.
    pub fn set_token_lifetime(&self, client_id: Option<&str>, lifetime_secs: i64) {
        let mut inner = self.shared.lock();
        match client_id {
            Some(c) => {
                inner
                    .client_lifetime_secs
                    .insert(c.to_owned(), lifetime_secs);
            }
            None => inner.default_lifetime_secs = lifetime_secs,
        }
    }

    /// STS issues credentials expiring after `lifetime` instead of `DurationSeconds`;
    /// `None` goes back to `DurationSeconds`.
    pub fn set_credentials_lifetime(&self, lifetime: Option<Duration>) {
        self.shared.lock().credentials_lifetime = lifetime;
    }

    /// Whether jwt-bearer and token-exchange (access token) answers for this client carry a
    /// refresh token (default no). Authorization-code and refresh-token answers, and token
    /// exchange asking for a refresh token, always carry one.
    pub fn set_issue_refresh_token(&self, client_id: &str, yes: bool) {
        let mut inner = self.shared.lock();
        if yes {
            inner.refresh_for.insert(client_id.to_owned());
        } else {
            inner.refresh_for.remove(client_id);
        }
    }

    /// Queues a fault for the next OIDC or STS call.
    pub fn push_fault(&self, fault: Fault) {
        self.shared.push_fault(fault);
    }

    /// Queues a fault for the next OIDC call with this `clientId`; it goes before the
    /// general queue.
    pub fn push_fault_for(&self, client_id: &str, fault: Fault) {
        self.shared.push_fault_for(client_id, fault);
    }

    /// Every request routed to a service, in the order received (unroutable ones get 404
    /// and are not kept).
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls()
    }

    /// Forgets the calls logged so far.
    pub fn clear_calls(&self) {
        self.shared.clear_calls();
    }

    /// Makes `refresh_token` valid for the client, as if issued earlier, for a new user
    /// `user-seeded-<n>`.
    pub fn seed_refresh_token(&self, client_id: &str, refresh_token: &str) {
        let mut inner = self.shared.lock();
        let user = format!("user-seeded-{}", inner.next_serial());
        inner.refresh_tokens.insert(
            refresh_token.to_owned(),
            Grantee {
                client_id: client_id.to_owned(),
                user,
            },
        );
    }

    /// Rotation with grace (default off: strict, a used refresh token dies at once). With
    /// grace a used refresh token stays valid until the one it was rotated into is first
    /// used, as many OAuth services do, so a client that crashed before saving the new
    /// token can still recover with the old one, and one that used the new token before
    /// saving it cannot.
    pub fn set_rotation_grace(&self, yes: bool) {
        self.shared.lock().rotation_grace = yes;
    }

    /// `GET /authorize` answers the redirect with this OAuth `error` (e.g. `access_denied`)
    /// instead of a code; `None` (default) issues codes.
    pub fn set_authorize_error(&self, error: Option<&str>) {
        self.shared.lock().authorize_error = error.map(str::to_owned);
    }

    /// `GET /authorize` sends this `state` back instead of the one it was given (a forged
    /// callback); `None` (default) echoes it.
    pub fn set_authorize_state(&self, state: Option<&str>) {
        self.shared.lock().authorize_state = state.map(str::to_owned);
    }

    /// Every refresh token of the client now gets `invalid_grant`.
    pub fn revoke_refresh_tokens(&self, client_id: &str) {
        self.shared
            .lock()
            .refresh_tokens
            .retain(|_, g| g.client_id != client_id);
    }

    /// This jwt-bearer assertion now gets `invalid_grant`.
    pub fn reject_assertion(&self, assertion: &str) {
        self.shared
            .lock()
            .rejected_assertions
            .insert(assertion.to_owned());
    }

    /// Issues a single-use authorization code for the client and redirect URI, bound to an
    /// S256 `code_challenge` (unpadded base64url of SHA-256 of the verifier), for a new user
    /// `user-code-<n>`.
    pub fn issue_auth_code(
        &self,
        client_id: &str,
        redirect_uri: &str,
        code_challenge: &str,
    ) -> String {
        authorize::issue_code(
            &mut self.shared.lock(),
            client_id,
            redirect_uri,
            code_challenge,
        )
    }

    /// Stops accepting, drops open connections and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The accept loop; connections live in a `JoinSet` so stopping aborts them all, including
/// the SDK's idle keep-alive connections.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = Arc::clone(&shared);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    connections.shutdown().await;
}

/// Returned by the request handler to make hyper drop the connection unanswered.
#[derive(Debug)]
struct ConnectionReset;

impl fmt::Display for ConnectionReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection reset by a simulated fault")
    }
}

impl std::error::Error for ConnectionReset {}

/// The parsed body of a routed request.
enum Parsed {
    Oidc(oidc::Body),
    Sts(sts::Body),
}

/// Which service a request is for, from its method and path.
fn route(req: &Request<Incoming>) -> Option<Service> {
    if req.method() != Method::POST {
        return None;
    }
    match req.uri().path() {
        "/token"
            if req
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .any(|p| p == "aws_iam=t") =>
        {
            Some(Service::Oidc)
        }
        "/" => Some(Service::Sts),
        _ => None,
    }
}

fn not_found() -> Answer {
    Answer::oidc_error(
        404,
        "UnknownOperationException",
        "not_found",
        "The simulator serves only POST /token?aws_iam=t (SSO OIDC) and POST / (STS).",
    )
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ConnectionReset> {
    if req.method() == Method::GET && req.uri().path() == "/authorize" {
        return Ok(authorize::answer(&shared, req.uri().query().unwrap_or("")));
    }
    let Some(service) = route(&req) else {
        tracing::debug!(method = %req.method(), path = req.uri().path(), "sim: no such route");
        return Ok(not_found().into_response());
    };
    let (parts, body) = req.into_parts();
    let body = match read_body(&parts.headers, body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            let answer = too_large(service);
            let seq = shared.record_call(Call {
                service,
                operation: String::new(),
                client_id: None,
                grant_type: None,
                params: BTreeMap::new(),
                signature_valid: false,
                access_key_id: None,
                region: None,
                status: 0,
                error: None,
            });
            shared.finish_call(seq, answer.status, answer.error.clone());
            return Ok(answer.into_response());
        }
        Err(BodyError::Broken) => return Err(ConnectionReset),
    };

    let parsed = match service {
        Service::Oidc => Parsed::Oidc(oidc::parse(&body)),
        Service::Sts => Parsed::Sts(sts::parse(&body)),
    };
    let (operation, client_id, grant_type, params) = match &parsed {
        Parsed::Oidc(members) => {
            let (client_id, grant_type, params) = oidc::summarize(members);
            (oidc::OPERATION.to_owned(), client_id, grant_type, params)
        }
        Parsed::Sts(fields) => {
            let fields = fields.clone().unwrap_or_default();
            let action = fields.get("Action").cloned().unwrap_or_default();
            (action, None, None, fields)
        }
    };
    let now = wire::now();
    let verdict = sigv4::verify(&parts, &body, service, &shared.opts, now, |key| {
        let inner = shared.lock();
        let issued = inner.issued.get(key)?;
        Some(sigv4::IssuedKey {
            secret_access_key: issued.secret_access_key.clone(),
            session_token: issued.session_token.clone(),
            expired: issued.expires_at <= wire::unix_secs(now),
        })
    });
    let caller = verdict.issued_key.clone();
    let seq = shared.record_call(Call {
        service,
        operation: operation.clone(),
        client_id: client_id.clone(),
        grant_type,
        params,
        signature_valid: verdict.outcome.is_ok(),
        access_key_id: verdict.access_key_id,
        region: verdict.region,
        status: 0,
        error: None,
    });

    let answer = match verdict.outcome {
        Err(rejection) => rejection.answer(service),
        Ok(()) => match shared.take_fault(service, client_id.as_deref()) {
            None => respond(&shared, &parsed, caller.as_deref()),
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                respond(&shared, &parsed, caller.as_deref())
            }
            Some(Fault::Reset) => {
                tracing::debug!(?service, %operation, "sim: resetting the connection (fault)");
                shared.finish_call(seq, 0, Some("Reset".to_owned()));
                return Err(ConnectionReset);
            }
            Some(fault) => fault.answer(service),
        },
    };
    tracing::debug!(
        ?service,
        %operation,
        status = answer.status,
        error = answer.error.as_deref().unwrap_or(""),
        "sim: answered"
    );
    shared.finish_call(seq, answer.status, answer.error.clone());
    Ok(answer.into_response())
}

/// `caller`: the issued role credentials that signed the call, if it was not the configured
/// key.
fn respond(shared: &Shared, parsed: &Parsed, caller: Option<&str>) -> Answer {
    match parsed {
        Parsed::Oidc(members) => oidc::answer(shared, members),
        Parsed::Sts(fields) => sts::answer(shared, fields, caller),
    }
}

fn too_large(service: Service) -> Answer {
    let message = "The request body is larger than the simulator accepts (1 MiB).";
    match service {
        Service::Oidc => Answer::oidc_error(
            413,
            "RequestEntityTooLargeException",
            "invalid_request",
            message,
        ),
        Service::Sts => Answer::sts_error(413, "RequestEntityTooLarge", message),
    }
}

enum BodyError {
    TooLarge,
    /// The client went away or sent a broken body; there is nobody to answer.
    Broken,
}

async fn read_body(headers: &http::HeaderMap, body: Incoming) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Broken),
    }
}
