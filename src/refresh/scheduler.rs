//! One owner task per app. It alone calls upstream for its app, holds the refresh token, and
//! publishes a [`Snapshot`] on a `watch` channel. Readers serve a valid cached token straight
//! from the snapshot; anything that needs an upstream call becomes a command to the owner,
//! and commands that arrive while a call is in flight join it (single flight).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::policy::{backoff, refresh_delay, LivePolicy};
use super::state::{AppState, LastError, Snapshot, Token};
use crate::clock::Clock;
use crate::config::{AppConfig, Grant};
use crate::grant::{identity_context_claim, read_assertion, read_secret_file, SourceError};
use crate::secret::Secret;
use crate::upstream::{GrantRequest, IssuedToken, TokenIssuer, UpstreamError};

/// How long a token-exchange app waits for its subject app's first token before it counts as
/// a failure (start-up: both fetch at once).
pub const SUBJECT_WAIT: Duration = Duration::from_secs(30);

/// Bound on how long a socket request waits for its app's owner. Every step the owner takes is
/// bounded (SDK call timeout, command timeout, subject wait), so this only guards against bugs.
pub const REPLY_WAIT: Duration = Duration::from_secs(120);

/// How long stopping an app waits for its call in flight to finish (so a rotated refresh
/// token is saved) before the task is aborted.
pub const STOP_WAIT: Duration = Duration::from_secs(45);

/// Why a token cannot be served; the socket maps each to a status and code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServeError {
    /// Nothing will happen until someone logs in.
    #[error("app {app} needs a login: run `iamtokend login {app}`")]
    NeedsLogin {
        /// App name.
        app: String,
    },
    /// No valid token can be had now; carries the last upstream error.
    #[error("no valid token for app {app}: {code}: {message}")]
    Unavailable {
        /// App name.
        app: String,
        /// The underlying error code.
        code: String,
        /// The underlying error message.
        message: String,
    },
    /// Credentials asked of an app without `[role]`.
    #[error("app {app} has no [role]; add one to get AWS credentials")]
    NoRole {
        /// App name.
        app: String,
    },
    /// `login` asked of an app whose grant is not authorization-code.
    #[error("app {app} does not use the authorization-code grant")]
    WrongGrant {
        /// App name.
        app: String,
    },
}

type Reply = oneshot::Sender<Result<Arc<Token>, ServeError>>;

enum Command {
    /// `force`: call upstream even if the token is fine. Otherwise only if the token has less
    /// than `min_ttl` left (or none is valid) and the app is not backing off.
    Refresh {
        force: bool,
        min_ttl: Duration,
        reply: Reply,
    },
    /// Boxed: it is the large variant, and every app's channel allocates a block of 32
    /// commands up front.
    Login(Box<LoginCommand>),
    /// Liveness probe (the systemd watchdog): answered at once wherever the owner waits.
    Ping { reply: oneshot::Sender<()> },
}

struct LoginCommand {
    code: Secret,
    code_verifier: Secret,
    redirect_uri: String,
    reply: Reply,
}

/// What every owner shares.
#[derive(Clone)]
pub struct Shared {
    /// The clock.
    pub clock: Clock,
    /// `[refresh]` timing, as the last (re)load set it.
    pub policy: LivePolicy,
    /// `max_concurrent`: held only around the upstream call itself.
    pub permits: Arc<Semaphore>,
    /// Where refresh tokens are saved; `None` runs without persistence.
    pub store: Option<Arc<crate::store::Store>>,
    /// Counters of upstream calls and refreshes (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// A running app: its config, its snapshot, and the way to its owner task.
pub struct AppHandle {
    /// The app's config, as the owner runs it.
    pub config: Arc<AppConfig>,
    snapshot: watch::Receiver<Snapshot>,
    commands: mpsc::Sender<Command>,
    clock: Clock,
    /// Role credentials, for apps with `[role]`.
    credentials: Option<super::credentials::CredentialCache>,
    /// Tells the owner to finish what it is doing and exit.
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    /// The owner task.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl AppHandle {
    /// Starts the owner task. `subject` is the subject app's snapshot (token-exchange);
    /// `refresh_token` one recovered from elsewhere (state dir).
    pub fn spawn(
        config: Arc<AppConfig>,
        issuer: Arc<dyn TokenIssuer>,
        subject: Option<watch::Receiver<Snapshot>>,
        shared: Shared,
        refresh_token: Option<Secret>,
    ) -> AppHandle {
        let (publish, snapshot) = watch::channel(Snapshot::default());
        let (commands, rx) = mpsc::channel(256);
        let (stop, stop_rx) = oneshot::channel();
        let clock = shared.clock;
        let metrics = shared.metrics.clone();
        let owner = Owner {
            job: Job {
                app: config.clone(),
                issuer,
                permits: shared.permits.clone(),
                subject: subject.clone(),
                clock,
                metrics: shared.metrics.clone(),
            },
            subject,
            subject_seen: None,
            stop: stop_rx,
            shared,
            publish,
            commands: rx,
            refresh_token,
            failures: 0,
            next_attempt: None,
            deferred: VecDeque::new(),
        };
        let task = tokio::spawn(owner.run());
        AppHandle {
            config,
            snapshot,
            commands,
            clock,
            credentials: None,
            stop: std::sync::Mutex::new(Some(stop)),
            task: std::sync::Mutex::new(Some(task)),
            metrics,
        }
    }

    /// The daemon's metrics (the credential cache and the socket count into them).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// Gives the app its role-credential cache.
    pub fn with_credentials(mut self, cache: super::credentials::CredentialCache) -> AppHandle {
        self.credentials = Some(cache);
        self
    }

    /// Identity-enhanced role credentials (`[role]` apps).
    pub async fn credentials(&self) -> Result<Arc<super::credentials::Credentials>, ServeError> {
        match &self.credentials {
            Some(cache) => cache.get(self).await,
            None => Err(ServeError::NoRole {
                app: self.config.name.clone(),
            }),
        }
    }

    /// Stops the owner: a call in flight is finished first (so a rotated refresh token is
    /// saved), then the task exits; after [`STOP_WAIT`] it is aborted. Requests that still
    /// hold this handle are answered from the last snapshot or get `app_stopped`.
    pub async fn stop(&self) {
        let stop = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
                warn!(app = %self.config.name, "the app's call in flight did not finish; abandoning it");
                task.abort();
            }
        }
    }

    /// App name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// Whether the owner's last attempt failed (what is served now is the last good token),
    /// without copying the snapshot.
    pub fn last_attempt_failed(&self) -> bool {
        self.snapshot.borrow().last_error.is_some()
    }

    /// A receiver of snapshots (token-exchange dependants watch their subject).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    /// A token with at least `min_ttl` left if one can be had; otherwise the last good token
    /// while it is valid; otherwise why not.
    pub async fn token(&self, min_ttl: Duration) -> Result<Arc<Token>, ServeError> {
        let now = self.clock.now();
        if let Some(t) = self.snapshot.borrow().valid_token(now) {
            if t.ttl(now) >= min_ttl {
                return Ok(t.clone());
            }
        }
        let result = self
            .ask(|reply| Command::Refresh {
                force: false,
                min_ttl,
                reply,
            })
            .await;
        match result {
            Ok(t) => Ok(t),
            Err(e) => self.last_good().ok_or(e),
        }
    }

    /// Calls upstream now (joining a call in flight) and reports its result.
    pub async fn refresh(&self) -> Result<Arc<Token>, ServeError> {
        self.ask(|reply| Command::Refresh {
            force: true,
            min_ttl: Duration::ZERO,
            reply,
        })
        .await
    }

    /// Exchanges an authorization code (from `iamtokend login`).
    pub async fn login(
        &self,
        code: Secret,
        code_verifier: Secret,
        redirect_uri: String,
    ) -> Result<Arc<Token>, ServeError> {
        if !matches!(self.config.grant, Grant::AuthorizationCode { .. }) {
            return Err(ServeError::WrongGrant {
                app: self.config.name.clone(),
            });
        }
        self.ask(|reply| {
            Command::Login(Box::new(LoginCommand {
                code,
                code_verifier,
                redirect_uri,
                reply,
            }))
        })
        .await
    }

    /// Whether the owner task is alive and taking commands: it answers a ping within `wait`.
    /// It answers between calls and while a call is in flight, so only a dead or wedged owner
    /// (or a full command queue) fails this.
    pub async fn ping(&self, wait: Duration) -> bool {
        let (reply, answer) = oneshot::channel();
        let probe = async {
            self.commands.send(Command::Ping { reply }).await.is_ok() && answer.await.is_ok()
        };
        tokio::time::timeout(wait, probe).await.unwrap_or(false)
    }

    fn last_good(&self) -> Option<Arc<Token>> {
        self.snapshot
            .borrow()
            .valid_token(self.clock.now())
            .cloned()
    }

    async fn ask(&self, make: impl FnOnce(Reply) -> Command) -> Result<Arc<Token>, ServeError> {
        let gone = || ServeError::Unavailable {
            app: self.config.name.clone(),
            code: "app_stopped".into(),
            message: "the app was stopped or reconfigured while the request waited".into(),
        };
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| gone())?;
        match tokio::time::timeout(REPLY_WAIT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(ServeError::Unavailable {
                app: self.config.name.clone(),
                code: "timeout".into(),
                message: format!("no answer within {}s", REPLY_WAIT.as_secs()),
            }),
        }
    }
}

/// What one attempt is asked to do.
enum Attempt {
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
enum Failure {
    Upstream(UpstreamError),
    Source(SourceError),
    NeedsLogin(String),
}

impl Failure {
    fn code(&self) -> &str {
        match self {
            Failure::Upstream(e) => e.code(),
            Failure::Source(e) => e.code,
            Failure::NeedsLogin(_) => "needs_login",
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Upstream(e) => e.message(),
            Failure::Source(e) => &e.message,
            Failure::NeedsLogin(why) => why,
        }
    }
}

/// An attempt's result. `refresh_token_refused`: the held refresh token got `invalid_grant`
/// and must be dropped whatever happened next.
struct Outcome {
    result: Result<(IssuedToken, &'static str), Failure>,
    refresh_token_refused: bool,
    /// The subject app's token this attempt exchanged (token-exchange).
    subject_used: Option<Arc<Token>>,
}

/// Everything an attempt needs, owned, so it can run while the owner keeps taking commands.
#[derive(Clone)]
struct Job {
    app: Arc<AppConfig>,
    issuer: Arc<dyn TokenIssuer>,
    permits: Arc<Semaphore>,
    subject: Option<watch::Receiver<Snapshot>>,
    clock: Clock,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Job {
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

    async fn run(self, refresh_token: Option<Secret>, attempt: Attempt) -> Outcome {
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

    /// The app's configured grant, from its configured source.
    async fn own_grant(
        &self,
        refused: Option<Secret>,
        subject_used: &mut Option<Arc<Token>>,
    ) -> Result<(IssuedToken, &'static str), Failure> {
        let grant = match &self.app.grant {
            Grant::JwtBearer { assertion } => GrantRequest::JwtBearer {
                assertion: read_assertion(assertion).await.map_err(Failure::Source)?,
            },
            Grant::TokenExchange {
                subject_app,
                requested_token_type,
            } => {
                let subject = self.subject_token(subject_app).await?;
                let subject_token = subject.access_token.clone();
                *subject_used = Some(subject);
                GrantRequest::TokenExchange {
                    subject_token,
                    requested_token_type: requested_token_type.urn(),
                }
            }
            Grant::RefreshToken { refresh_token_file } => {
                let from_file = read_secret_file(refresh_token_file, "refresh_token_file")
                    .await
                    .map_err(Failure::Source)?;
                if refused.as_ref() == Some(&from_file) {
                    return Err(Failure::NeedsLogin(format!(
                        "the refresh token was refused and {} holds no newer one",
                        refresh_token_file.display()
                    )));
                }
                GrantRequest::RefreshToken {
                    refresh_token: from_file,
                }
            }
            Grant::AuthorizationCode { .. } => {
                return Err(Failure::NeedsLogin(
                    "no usable refresh token; an authorization-code login is needed".into(),
                ))
            }
        };
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

    async fn subject_token(&self, subject_app: &str) -> Result<Arc<Token>, Failure> {
        let unavailable = |state: Option<AppState>| {
            Failure::Source(SourceError {
                code: "subject_unavailable",
                message: match state {
                    Some(state) => format!(
                        "subject app {subject_app} has no valid token (it is {})",
                        state.as_str()
                    ),
                    None => format!("subject app {subject_app} has no valid token"),
                },
            })
        };
        let mut subject = self.subject.clone().ok_or_else(|| unavailable(None))?;
        let clock = self.clock;
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

struct Owner {
    job: Job,
    shared: Shared,
    publish: watch::Sender<Snapshot>,
    commands: mpsc::Receiver<Command>,
    /// The newest refresh token: only the owner ever holds it.
    refresh_token: Option<Secret>,
    /// Consecutive failures (0 after a success).
    failures: u32,
    /// When to call upstream next on our own; `None` = only when asked.
    next_attempt: Option<Instant>,
    /// Logins that arrived while a call was in flight, run after it.
    deferred: VecDeque<Command>,
    /// The subject app's snapshots (token-exchange), watched for a replaced token.
    subject: Option<watch::Receiver<Snapshot>>,
    /// The subject token last exchanged or seen, to tell a replaced one.
    subject_seen: Option<Arc<Token>>,
    /// Set by [`AppHandle::stop`].
    stop: oneshot::Receiver<()>,
}

/// Resolves when the subject's snapshot changes (true) or its owner is gone (false); never
/// without a subject.
async fn subject_changed(subject: &mut Option<watch::Receiver<Snapshot>>) -> bool {
    match subject {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Owner {
    async fn run(mut self) {
        let now = self.shared.clock.now();
        let needs_login = matches!(self.job.app.grant, Grant::AuthorizationCode { .. })
            && self.refresh_token.is_none();
        if needs_login {
            self.publish_with(|s| {
                s.state = AppState::NeedsLogin;
                s.next_refresh_at = None;
            });
        } else {
            self.next_attempt = Some(now);
        }
        loop {
            let command = match self.deferred.pop_front() {
                Some(c) => Some(c),
                None => {
                    let next = self.next_attempt;
                    let timer = async move {
                        match next {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = timer => None,
                        c = self.commands.recv() => match c {
                            Some(c) => Some(c),
                            None => return,
                        },
                        _ = &mut self.stop => return,
                        alive = subject_changed(&mut self.subject) => {
                            if !alive {
                                self.subject = None;
                            }
                            if !self.subject_replaced() {
                                continue;
                            }
                            info!(app = %self.job.app.name, "the subject app's token was replaced; exchanging it");
                            None
                        }
                    }
                }
            };
            let flow = match command {
                // Boxed: an attempt's future is kilobytes, and inlined it would make every idle
                // app's task that large too.
                None => Box::pin(self.flight(Attempt::Refresh, Vec::new())).await,
                Some(Command::Refresh {
                    force,
                    min_ttl,
                    reply,
                }) => match self.answer_without_call(force, min_ttl) {
                    Some(answer) => {
                        let _ = reply.send(answer);
                        ControlFlow::Continue(())
                    }
                    None => Box::pin(self.flight(Attempt::Refresh, vec![reply])).await,
                },
                Some(Command::Login(login)) => {
                    let LoginCommand {
                        code,
                        code_verifier,
                        redirect_uri,
                        reply,
                    } = *login;
                    let attempt = Attempt::Login {
                        code,
                        code_verifier,
                        redirect_uri,
                    };
                    Box::pin(self.flight(attempt, vec![reply])).await
                }
                Some(Command::Ping { reply }) => {
                    let _ = reply.send(());
                    ControlFlow::Continue(())
                }
            };
            if flow.is_break() {
                return;
            }
        }
    }

    /// Answers a non-forced refresh request from what is held, when no call is due: the token
    /// already has `min_ttl` left (another request just refreshed it), or the app is waiting
    /// for a login, or it is backing off (clients asking harder must not defeat the backoff).
    fn answer_without_call(
        &self,
        force: bool,
        min_ttl: Duration,
    ) -> Option<Result<Arc<Token>, ServeError>> {
        if force {
            return None;
        }
        let now = self.shared.clock.now();
        let snapshot = self.publish.borrow();
        let valid = snapshot.valid_token(now);
        if let Some(t) = valid {
            if t.ttl(now) >= min_ttl {
                return Some(Ok(t.clone()));
            }
        }
        if snapshot.state == AppState::NeedsLogin {
            return Some(match valid {
                Some(t) => Ok(t.clone()),
                None => Err(ServeError::NeedsLogin {
                    app: self.job.app.name.clone(),
                }),
            });
        }
        let backing_off = self.failures > 0 && self.next_attempt.is_some_and(|at| at > now);
        if backing_off {
            return Some(match valid {
                Some(t) => Ok(t.clone()),
                None => Err(self.unavailable(snapshot.last_error.as_ref())),
            });
        }
        None
    }

    fn unavailable(&self, last: Option<&LastError>) -> ServeError {
        ServeError::Unavailable {
            app: self.job.app.name.clone(),
            code: last.map_or("no_token".into(), |e| e.code.clone()),
            message: last.map_or("no token has been issued yet".into(), |e| e.message.clone()),
        }
    }

    /// Runs one attempt while still taking commands: refresh requests join it, logins wait.
    async fn flight(&mut self, attempt: Attempt, mut waiters: Vec<Reply>) -> ControlFlow<()> {
        self.publish_with(|s| s.state = AppState::Refreshing);
        let job = self.job.clone().run(self.refresh_token.clone(), attempt);
        tokio::pin!(job);
        // The call is always finished, even once every handle is gone: it may have rotated
        // the refresh token, and the new one must be saved.
        let mut open = true;
        let outcome = loop {
            tokio::select! {
                outcome = &mut job => break outcome,
                command = self.commands.recv(), if open => match command {
                    Some(Command::Refresh { reply, .. }) => waiters.push(reply),
                    Some(login @ Command::Login(_)) => self.deferred.push_back(login),
                    Some(Command::Ping { reply }) => {
                        let _ = reply.send(());
                    }
                    None => open = false,
                },
            }
        };
        if outcome.subject_used.is_some() {
            self.subject_seen = outcome.subject_used.clone();
        }
        let result = outcome_label(&outcome);
        self.shared.metrics.refresh_done(&self.job.app.name, result);
        let answer = self.apply(outcome);
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
        if open {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    /// Every outcome of an attempt, as one match: new state, schedule, answer.
    fn apply(&mut self, outcome: Outcome) -> Result<Arc<Token>, ServeError> {
        let clock = self.shared.clock;
        let now = clock.now();
        let app = self.job.app.name.clone();
        if outcome.refresh_token_refused {
            self.refresh_token = None;
            if let Some(store) = &self.shared.store {
                store.remove(&app);
            }
        }
        let failure = match outcome.result {
            Ok((issued, via)) => {
                if let Some(refresh_token) = issued.refresh_token.clone() {
                    // Saved before anything else uses it: the old one may already be dead.
                    if let Some(store) = &self.shared.store {
                        if let Err(e) = store.save(&app, &self.job.app.client_id, &refresh_token) {
                            warn!(app = %app, error = %e, "cannot save the new refresh token; it is kept in memory only");
                        }
                    }
                    self.refresh_token = Some(refresh_token);
                }
                let lifetime = Duration::from_secs(issued.expires_in);
                let token = Arc::new(token_from(issued, now, clock));
                let delay = refresh_delay(lifetime, &self.shared.policy.get(), jitter_sample());
                self.failures = 0;
                self.next_attempt = Some(now + delay);
                info!(
                    app = %app, via, expires_in = lifetime.as_secs(),
                    next_refresh_in = delay.as_secs(), refresh_token_held = self.refresh_token.is_some(),
                    "token issued"
                );
                let published = token.clone();
                self.publish_with(|s| {
                    s.state = AppState::Ready;
                    s.token = Some(published);
                    s.last_refresh_at = Some(clock.wall(now));
                    s.next_refresh_at = Some(clock.wall(now + delay));
                    s.last_error = None;
                    s.consecutive_failures = 0;
                });
                return Ok(token);
            }
            Err(failure) => failure,
        };
        let last_error = LastError {
            code: failure.code().to_owned(),
            message: failure.message().to_owned(),
            at: clock.wall(now),
        };
        let wait = match &failure {
            Failure::NeedsLogin(_) => None,
            Failure::Upstream(UpstreamError::SlowDown { .. }) => {
                self.failures += 1;
                Some(backoff(
                    self.failures,
                    self.shared.policy.get().max_backoff,
                    unit_sample(),
                    true,
                ))
            }
            Failure::Upstream(UpstreamError::ConfigFault { .. }) => {
                self.failures += 1;
                Some(self.shared.policy.get().max_backoff)
            }
            Failure::Upstream(
                UpstreamError::Transient { .. } | UpstreamError::InvalidGrant { .. },
            )
            | Failure::Source(_) => {
                self.failures += 1;
                Some(backoff(
                    self.failures,
                    self.shared.policy.get().max_backoff,
                    unit_sample(),
                    false,
                ))
            }
        };
        self.next_attempt = wait.map(|w| now + w);
        let snapshot = self.publish.borrow().clone();
        let valid = snapshot.valid_token(now).cloned();
        let state = match (&failure, &valid, &snapshot.token) {
            (Failure::NeedsLogin(_), _, _) => AppState::NeedsLogin,
            (_, Some(_), _) | (_, None, None) => AppState::Failing,
            (_, None, Some(_)) => AppState::Expired,
        };
        warn!(
            app = %app, code = %last_error.code, error = %last_error.message,
            failures = self.failures, retry_in = wait.map(|w| w.as_secs_f64()),
            serving_last_good = valid.is_some(), state = state.as_str(),
            "refresh failed"
        );
        let next_wall = self.next_attempt.map(|at| clock.wall(at));
        let answer = match &failure {
            Failure::NeedsLogin(_) => ServeError::NeedsLogin { app },
            _ => self.unavailable(Some(&last_error)),
        };
        self.publish_with(|s| {
            s.state = state;
            s.next_refresh_at = next_wall;
            s.last_error = Some(last_error);
            s.consecutive_failures = self.failures;
        });
        Err(answer)
    }

    /// Whether the subject app now holds a token other than the one this app last exchanged
    /// or saw, and this app re-exchanges on that: token-exchange, no refresh token of its own.
    fn subject_replaced(&mut self) -> bool {
        let Some(subject) = &self.subject else {
            return false;
        };
        let current = subject
            .borrow()
            .valid_token(self.shared.clock.now())
            .cloned();
        let replaced = match (&current, &self.subject_seen) {
            (Some(now), Some(seen)) => !Arc::ptr_eq(now, seen),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if current.is_some() {
            self.subject_seen = current;
        }
        replaced
            && self.refresh_token.is_none()
            && matches!(self.job.app.grant, Grant::TokenExchange { .. })
            && self.publish.borrow().state != AppState::NeedsLogin
    }

    fn publish_with(&self, change: impl FnOnce(&mut Snapshot)) {
        self.publish.send_modify(change);
    }
}

/// The `result` label of `iamtokend_refreshes_total`.
fn outcome_label(outcome: &Outcome) -> &'static str {
    match &outcome.result {
        Ok(_) => "ok",
        Err(Failure::Upstream(_)) => "upstream_error",
        Err(Failure::Source(_)) => "source_error",
        Err(Failure::NeedsLogin(_)) => "needs_login",
    }
}

fn token_from(issued: IssuedToken, now: Instant, clock: Clock) -> Token {
    let expires_at = now + Duration::from_secs(issued.expires_in);
    let identity_context = issued.identity_context.or_else(|| {
        issued
            .id_token
            .as_ref()
            .and_then(|t| identity_context_claim(t.expose()))
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

/// Uniform in [-1, 1] for the refresh jitter.
fn jitter_sample() -> f64 {
    rand::random::<f64>() * 2.0 - 1.0
}

/// Uniform in [0, 1) for the backoff jitter.
fn unit_sample() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    //! The owner task against a scripted issuer on tokio's paused clock: hours pass in
    //! milliseconds, and every upstream call is counted.
    use super::*;
    use crate::config::{AssertionSource, AwsConfig};
    use crate::upstream::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Pops scripted results; when the script is empty, issues a fresh token of `lifetime`.
    struct FakeIssuer {
        script: Mutex<VecDeque<Result<u64, UpstreamError>>>,
        lifetime: u64,
        calls: AtomicUsize,
        grants: Mutex<Vec<&'static str>>,
        delay: Duration,
    }

    impl FakeIssuer {
        fn new(lifetime: u64) -> Arc<FakeIssuer> {
            Arc::new(FakeIssuer {
                script: Mutex::new(VecDeque::new()),
                lifetime,
                calls: AtomicUsize::new(0),
                grants: Mutex::new(Vec::new()),
                delay: Duration::from_millis(50),
            })
        }
        fn push(&self, r: Result<u64, UpstreamError>) {
            self.script.lock().unwrap().push_back(r);
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl TokenIssuer for FakeIssuer {
        fn create_token(
            &self,
            grant: GrantRequest,
        ) -> BoxFuture<'_, Result<IssuedToken, UpstreamError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                self.grants.lock().unwrap().push(grant.label());
                tokio::time::sleep(self.delay).await;
                let next = self.script.lock().unwrap().pop_front();
                let lifetime = match next {
                    Some(Ok(l)) => l,
                    Some(Err(e)) => return Err(e),
                    None => self.lifetime,
                };
                Ok(IssuedToken {
                    access_token: Secret::new(format!("token-{n}")),
                    token_type: "Bearer".into(),
                    expires_in: lifetime,
                    refresh_token: Some(Secret::new(format!("refresh-{n}"))),
                    id_token: None,
                    issued_token_type: None,
                    scopes: None,
                    identity_context: None,
                })
            })
        }
    }

    fn app(grant: Grant) -> Arc<AppConfig> {
        Arc::new(AppConfig {
            name: "app".into(),
            file: "apps.d/app.toml".into(),
            client_id: "arn:aws:sso::123456789012:application/ssoins-1/apl-1".into(),
            region: "us-east-1".into(),
            scopes: None,
            endpoint_url: None,
            grant,
            aws: AwsConfig::default(),
            role: None,
            access: None,
        })
    }

    fn jwt_app(dir: &std::path::Path) -> Arc<AppConfig> {
        let path = dir.join("a.jwt");
        std::fs::write(&path, "h.p.s").unwrap();
        app(Grant::JwtBearer {
            assertion: AssertionSource::File(path),
        })
    }

    fn shared(max_backoff: u64) -> Shared {
        Shared {
            clock: Clock::system(),
            policy: LivePolicy::new(crate::refresh::policy::Policy {
                at: 0.5,
                jitter: 0.0,
                min_lead: Duration::from_secs(300),
                max_backoff: Duration::from_secs(max_backoff),
            }),
            permits: Arc::new(Semaphore::new(8)),
            store: None,
            metrics: Default::default(),
        }
    }

    async fn until_ready(handle: &AppHandle) {
        let mut rx = handle.subscribe();
        rx.wait_for(|s| s.state == AppState::Ready).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_before_expiry_and_never_serves_expired() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(3600);
        let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
        until_ready(&handle).await;
        assert_eq!(issuer.calls(), 1);
        assert_eq!(
            handle
                .token(Duration::ZERO)
                .await
                .unwrap()
                .access_token
                .expose(),
            "token-1"
        );
        // Half the lifetime (jitter 0) later the owner refreshes on its own, with the refresh
        // token it now holds.
        tokio::time::sleep(Duration::from_secs(1799)).await;
        assert_eq!(issuer.calls(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(issuer.calls(), 2);
        assert_eq!(
            *issuer.grants.lock().unwrap(),
            vec!["jwt_bearer", "refresh_token"]
        );
        assert_eq!(
            handle
                .token(Duration::ZERO)
                .await
                .unwrap()
                .access_token
                .expose(),
            "token-2"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn hundred_concurrent_forced_refreshes_share_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(3600);
        let handle = Arc::new(AppHandle::spawn(
            jwt_app(dir.path()),
            issuer.clone(),
            None,
            shared(300),
            None,
        ));
        until_ready(&handle).await;
        let before = issuer.calls();
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move { h.refresh().await }));
        }
        let mut tokens = std::collections::BTreeSet::new();
        for t in tasks {
            tokens.insert(t.await.unwrap().unwrap().access_token.expose().to_owned());
        }
        let made = issuer.calls() - before;
        assert!((1..=2).contains(&made), "{made} upstream calls");
        assert_eq!(tokens.len(), made);
        // A forced refresh after the burst is a call of its own.
        let later = handle.refresh().await.unwrap();
        assert!(!tokens.contains(later.access_token.expose()));
        assert_eq!(issuer.calls() - before, made + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn min_ttl_requests_join_one_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(600);
        let handle = Arc::new(AppHandle::spawn(
            jwt_app(dir.path()),
            issuer.clone(),
            None,
            shared(300),
            None,
        ));
        until_ready(&handle).await;
        // 600 s token; ask for 700 s left: every request needs a refresh, one call serves all.
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let h = handle.clone();
            tasks.push(tokio::spawn(async move {
                h.token(Duration::from_secs(700)).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(issuer.calls(), 2);
        // Now the token has ~600 s left: min_ttl 500 is served from cache.
        handle.token(Duration::from_secs(500)).await.unwrap();
        assert_eq!(issuer.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_serve_last_good_then_expire() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(120);
        let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(30), None);
        until_ready(&handle).await;
        for _ in 0..50 {
            issuer.push(Err(UpstreamError::transient("server_error", "boom")));
        }
        // 120 s token: refresh at 30 s (lead capped at 3/4), then failures with backoff.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let snap = handle.snapshot();
        assert_eq!(snap.state, AppState::Failing);
        assert_eq!(snap.last_error.as_ref().unwrap().code, "server_error");
        // Still served: the last good token is valid.
        assert_eq!(
            handle
                .token(Duration::ZERO)
                .await
                .unwrap()
                .access_token
                .expose(),
            "token-1"
        );
        let calls_at_60 = issuer.calls();
        assert!(
            calls_at_60 < 10,
            "backoff should space calls: {calls_at_60}"
        );
        // Past expiry (120 s): never served.
        tokio::time::sleep(Duration::from_secs(61)).await;
        let err = handle.token(Duration::ZERO).await.unwrap_err();
        assert!(
            matches!(err, ServeError::Unavailable { ref code, .. } if code == "server_error"),
            "{err:?}"
        );
        assert_eq!(
            handle
                .snapshot()
                .effective_state(tokio::time::Instant::now()),
            AppState::Expired
        );
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_without_intervention() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(3600);
        for _ in 0..3 {
            issuer.push(Err(UpstreamError::transient("server_error", "boom")));
        }
        let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
        // 1st try fails, then backoff 0.5-1 s, 1-2 s, 2-4 s: ready within 8 s.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(handle.snapshot().state, AppState::Ready);
        assert_eq!(issuer.calls(), 4);
        assert!(handle.snapshot().last_error.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_waits_longer_than_plain_failures() {
        async fn calls_in(err: UpstreamError, window: u64) -> usize {
            let dir = tempfile::tempdir().unwrap();
            let issuer = FakeIssuer::new(3600);
            for _ in 0..100 {
                issuer.push(Err(err.clone()));
            }
            let _h = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
            tokio::time::sleep(Duration::from_secs(window)).await;
            issuer.calls()
        }
        let plain = calls_in(UpstreamError::transient("server_error", "x"), 60).await;
        let slow = calls_in(
            UpstreamError::SlowDown {
                code: "slow_down".into(),
                message: "x".into(),
            },
            60,
        )
        .await;
        assert!(slow < plain, "slow_down {slow} calls vs plain {plain}");
    }

    #[tokio::test(start_paused = true)]
    async fn config_faults_retry_only_at_max_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(3600);
        for _ in 0..100 {
            issuer.push(Err(UpstreamError::ConfigFault {
                code: "invalid_client".into(),
                message: "x".into(),
            }));
        }
        let _h = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(60), None);
        tokio::time::sleep(Duration::from_secs(121)).await;
        assert_eq!(issuer.calls(), 3); // t=0, 60, 120
    }

    #[tokio::test(start_paused = true)]
    async fn authorization_code_app_needs_login_and_makes_no_calls() {
        let issuer = FakeIssuer::new(3600);
        let handle = AppHandle::spawn(
            app(Grant::AuthorizationCode {
                redirect_uri: "http://127.0.0.1:8400/cb".into(),
            }),
            issuer.clone(),
            None,
            shared(300),
            None,
        );
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(issuer.calls(), 0);
        assert_eq!(handle.snapshot().state, AppState::NeedsLogin);
        assert!(matches!(
            handle.token(Duration::ZERO).await,
            Err(ServeError::NeedsLogin { .. })
        ));
        let token = handle
            .login(
                Secret::new("code"),
                Secret::new("verifier"),
                "http://127.0.0.1:8400/cb".into(),
            )
            .await
            .unwrap();
        assert_eq!(token.access_token.expose(), "token-1");
        assert_eq!(*issuer.grants.lock().unwrap(), vec!["authorization_code"]);
        assert_eq!(handle.snapshot().state, AppState::Ready);
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_refresh_token_reruns_the_jwt_grant() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(3600);
        let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
        until_ready(&handle).await;
        issuer.push(Err(UpstreamError::InvalidGrant {
            code: "invalid_grant".into(),
            message: "x".into(),
        }));
        handle.refresh().await.unwrap();
        assert_eq!(
            *issuer.grants.lock().unwrap(),
            vec!["jwt_bearer", "refresh_token", "jwt_bearer"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn token_exchange_uses_the_subject_token() {
        let dir = tempfile::tempdir().unwrap();
        let subject_issuer = FakeIssuer::new(3600);
        let subject = AppHandle::spawn(
            jwt_app(dir.path()),
            subject_issuer.clone(),
            None,
            shared(300),
            None,
        );
        let issuer = FakeIssuer::new(3600);
        let exchange = AppHandle::spawn(
            app(Grant::TokenExchange {
                subject_app: "app".into(),
                requested_token_type: crate::config::RequestedTokenType::AccessToken,
            }),
            issuer.clone(),
            Some(subject.subscribe()),
            shared(300),
            None,
        );
        until_ready(&exchange).await;
        assert_eq!(*issuer.grants.lock().unwrap(), vec!["token_exchange"]);
    }

    /// Panics on every call: the owner task dies with it, as after a bug.
    struct PanickingIssuer;

    impl TokenIssuer for PanickingIssuer {
        fn create_token(
            &self,
            _grant: GrantRequest,
        ) -> BoxFuture<'_, Result<IssuedToken, UpstreamError>> {
            Box::pin(async { panic!("test issuer: the owner task dies here") })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ping_is_answered_while_a_call_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = Arc::new(FakeIssuer {
            script: Mutex::new(VecDeque::new()),
            lifetime: 3600,
            calls: AtomicUsize::new(0),
            grants: Mutex::new(Vec::new()),
            delay: Duration::from_secs(60),
        });
        let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(handle.snapshot().state, AppState::Refreshing);
        assert!(handle.ping(Duration::from_millis(10)).await);
        until_ready(&handle).await;
        assert!(handle.ping(Duration::from_millis(10)).await);
        assert_eq!(issuer.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ping_fails_once_the_owner_task_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let handle = AppHandle::spawn(
            jwt_app(dir.path()),
            Arc::new(PanickingIssuer),
            None,
            shared(300),
            None,
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!handle.ping(Duration::from_secs(1)).await);
    }
}
