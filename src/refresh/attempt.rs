//! One attempt of an app's grant, run by its owner task while it keeps taking commands: the
//! held refresh token first, the app's own grant when that is refused (or none is held), an
//! authorization code when a login brought one. Also the wait for a token-exchange app's
//! subject token. An attempt only calls upstream and reports; what follows is the owner's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tracing::{debug, info};

use super::policy::FailureKind;
use super::state::{AppState, Snapshot, Token};
use crate::clock::{BootInstant, Clock};
use crate::config::AppConfig;
use crate::grant::{request, RequestError, SourceError};
use crate::secret::Secret;
use crate::upstream::{GrantRequest, IssuedToken, TokenIssuer, UpstreamError};

/// How long a token-exchange app waits for its subject app's first token before it counts as
/// a failure (start-up: both fetch at once).
pub(crate) const SUBJECT_WAIT: Duration = Duration::from_secs(30);

/// What one attempt is asked to do.
pub(crate) enum Attempt {
    /// Refresh: refresh token if held, else the app's own grant.
    Refresh,
    /// Exchange this authorization code.
    Login {
        code: Secret,
        code_verifier: Secret,
        redirect_uri: String,
    },
}

/// Why an attempt failed.
pub(crate) enum Failure {
    Upstream(UpstreamError),
    Source(SourceError),
    NeedsLogin(String),
}

impl Failure {
    pub(crate) fn code(&self) -> &str {
        match self {
            Failure::Upstream(e) => e.code(),
            Failure::Source(e) => e.code,
            Failure::NeedsLogin(_) => "needs_login",
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::Upstream(e) => e.message(),
            Failure::Source(e) => &e.message,
            Failure::NeedsLogin(why) => why,
        }
    }

    /// How this failure bears on the next call (the backoff's kinds).
    pub(crate) fn kind(&self) -> FailureKind {
        match self {
            Failure::NeedsLogin(_) => FailureKind::NeedsLogin,
            Failure::Upstream(UpstreamError::SlowDown { .. }) => FailureKind::Throttled,
            Failure::Upstream(UpstreamError::ConfigFault { .. }) => FailureKind::ConfigFault,
            Failure::Upstream(
                UpstreamError::Transient { .. } | UpstreamError::InvalidGrant { .. },
            )
            | Failure::Source(_) => FailureKind::Retryable,
        }
    }

    /// The `result` label of `iamtokend_refreshes_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Failure::Upstream(_) => "upstream_error",
            Failure::Source(_) => "source_error",
            Failure::NeedsLogin(_) => "needs_login",
        }
    }
}

/// An attempt's result. `refresh_token_refused`: the held refresh token got `invalid_grant`
/// and must be dropped whatever happened next.
pub(crate) struct Outcome {
    /// The token issued and the grant that got it, or why none was.
    pub(crate) result: Result<(IssuedToken, &'static str), Failure>,
    pub(crate) refresh_token_refused: bool,
    /// The subject app's token this attempt exchanged (token-exchange).
    pub(crate) subject_used: Option<Arc<Token>>,
}

/// Everything an attempt needs, owned, so it can run while the owner keeps taking commands.
#[derive(Clone)]
pub(crate) struct Job {
    pub(crate) app: Arc<AppConfig>,
    issuer: Arc<dyn TokenIssuer>,
    /// `max_concurrent`: held only around the upstream call itself.
    permits: Arc<Semaphore>,
    subject: Option<watch::Receiver<Snapshot>>,
    clock: Clock,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Job {
    pub(crate) fn new(
        app: Arc<AppConfig>,
        issuer: Arc<dyn TokenIssuer>,
        permits: Arc<Semaphore>,
        subject: Option<watch::Receiver<Snapshot>>,
        clock: Clock,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Job {
        Job {
            app,
            issuer,
            permits,
            subject,
            clock,
            metrics,
        }
    }

    async fn call(
        &self,
        grant: GrantRequest,
    ) -> Result<(IssuedToken, &'static str), UpstreamError> {
        let label = grant.label();
        // The semaphore is never closed; if it were, calling without a permit is the safe side.
        let _permit = self.permits.acquire().await.ok();
        debug!(app = %self.app.name, grant = label, "calling CreateTokenWithIAM");
        let started = self.clock.now();
        let result = self.issuer.create_token(grant).await;
        let took = self.clock.now().saturating_duration_since(started);
        let outcome = result.as_ref().map(|_| ());
        self.metrics
            .upstream_call(&self.app.name, label, outcome, took);
        result.map(|t| (t, label))
    }

    /// Runs the attempt: a login's code exchange, or the held refresh token and, when upstream
    /// refuses it (or none is held), the app's own grant.
    pub(crate) async fn run(self, refresh_token: Option<Secret>, attempt: Attempt) -> Outcome {
        if let Attempt::Login {
            code,
            code_verifier,
            redirect_uri,
        } = attempt
        {
            let grant = GrantRequest::AuthorizationCode {
                code,
                redirect_uri,
                code_verifier,
            };
            return Outcome {
                result: self.call(grant).await.map_err(Failure::Upstream),
                refresh_token_refused: false,
                subject_used: None,
            };
        }
        let mut refused: Option<Secret> = None;
        if let Some(refresh_token) = refresh_token {
            match self
                .call(GrantRequest::RefreshToken {
                    refresh_token: refresh_token.clone(),
                })
                .await
            {
                Err(UpstreamError::InvalidGrant { code, .. }) => {
                    info!(app = %self.app.name, code = %code, "refresh token refused; running the app's own grant");
                    refused = Some(refresh_token);
                }
                other => {
                    return Outcome {
                        result: other.map_err(Failure::Upstream),
                        refresh_token_refused: false,
                        subject_used: None,
                    }
                }
            }
        }
        let refresh_token_refused = refused.is_some();
        let mut subject_used = None;
        let result = self.own_grant(refused, &mut subject_used).await;
        Outcome {
            result,
            refresh_token_refused,
            subject_used,
        }
    }

    /// The app's configured grant, from its configured source (the request is built by
    /// [`crate::grant::request`], which `fetch` shares).
    async fn own_grant(
        &self,
        refused: Option<Secret>,
        subject_used: &mut Option<Arc<Token>>,
    ) -> Result<(IssuedToken, &'static str), Failure> {
        let subject_token = |subject_app| async move {
            let subject = self.subject_token(subject_app).await?;
            let token = subject.access_token.clone();
            *subject_used = Some(subject);
            Ok::<_, SourceError>(token)
        };
        let grant = request(&self.app.grant, refused.as_ref(), subject_token)
            .await
            .map_err(|e| match e {
                RequestError::Source(e) | RequestError::Subject(e) => Failure::Source(e),
                RequestError::NeedsLogin => Failure::NeedsLogin(
                    "no usable refresh token; an authorization-code login is needed".into(),
                ),
                RequestError::RefusedAgain(file) => Failure::NeedsLogin(format!(
                    "the refresh token was refused and {} holds no newer one",
                    file.display()
                )),
            })?;
        let from_refresh_file = matches!(grant, GrantRequest::RefreshToken { .. });
        match self.call(grant).await {
            Err(UpstreamError::InvalidGrant { message, .. }) if from_refresh_file => {
                Err(Failure::NeedsLogin(format!(
                    "the refresh token from refresh_token_file was refused: {message}"
                )))
            }
            other => other.map_err(Failure::Upstream),
        }
    }

    /// The subject app's valid token: at once when it holds one, else once it has one, within
    /// [`SUBJECT_WAIT`]; an error when it settles without one (needs a login, failing,
    /// expired) or is gone.
    async fn subject_token(&self, subject_app: &str) -> Result<Arc<Token>, SourceError> {
        let unavailable = |state: Option<AppState>| SourceError {
            code: "subject_unavailable",
            message: match state {
                Some(state) => format!(
                    "subject app {subject_app} has no valid token (it is {})",
                    state.as_str()
                ),
                None => format!("subject app {subject_app} has no valid token"),
            },
        };
        let mut subject = self.subject.clone().ok_or_else(|| unavailable(None))?;
        let clock = self.clock.clone();
        let wait = async move {
            let snapshot = subject
                .wait_for(|s| {
                    s.valid_token(clock.now()).is_some()
                        || matches!(
                            s.state,
                            AppState::NeedsLogin | AppState::Failing | AppState::Expired
                        )
                })
                .await
                .map_err(|_| None)?;
            snapshot
                .valid_token(clock.now())
                .cloned()
                .ok_or(Some(snapshot.effective_state(clock.now())))
        };
        match tokio::time::timeout(SUBJECT_WAIT, wait).await {
            Ok(Ok(token)) => Ok(token),
            Ok(Err(state)) => Err(unavailable(state)),
            Err(_) => Err(unavailable(None)),
        }
    }
}

/// The token as the daemon holds it, from what upstream issued at `now`: the identity context
/// from `awsAdditionalDetails`, else from the idToken's claim.
pub(crate) fn token_from(issued: IssuedToken, now: BootInstant, clock: &Clock) -> Token {
    let expires_at = now + Duration::from_secs(issued.expires_in);
    let identity_context = issued.identity_context.or_else(|| {
        issued
            .id_token
            .as_ref()
            .and_then(|t| crate::grant::identity_context_claim(t.expose()))
            .map(Secret::new)
    });
    Token {
        access_token: issued.access_token,
        token_type: issued.token_type,
        expires_at,
        expires_at_wall: clock.wall(expires_at),
        scopes: issued.scopes,
        issued_token_type: issued.issued_token_type,
        id_token: issued.id_token,
        identity_context,
        rendered: std::sync::OnceLock::new(),
    }
}
