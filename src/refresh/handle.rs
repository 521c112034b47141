//! [`AppHandle`], what callers hold of a running app: its config, its snapshot, and the way to
//! its owner task. Readers serve a valid cached token straight from the snapshot; anything
//! that needs an upstream call becomes a command to the owner (`owner.rs`), and commands that
//! arrive while a call is in flight join it (single flight).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::warn;

use super::credentials::{CredentialCache, Credentials, TokenSource};
use super::error::ServeError;
use super::owner::{Command, LoginCommand, Reply, Shared};
use super::state::{Snapshot, Token};
use crate::clock::Clock;
use crate::config::{AppConfig, Grant};
use crate::secret::Secret;
use crate::upstream::TokenIssuer;

/// Bound on how long a socket request waits for its app's owner. Every step the owner takes is
/// bounded (SDK call timeout, command timeout, subject wait), so this only guards against bugs.
pub(crate) const REPLY_WAIT: Duration = Duration::from_secs(120);

/// How long stopping an app waits for its call in flight to finish (so a rotated refresh
/// token is saved) before the task is aborted.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(45);

/// A running app: its config, its snapshot, and the way to its owner task.
pub(crate) struct AppHandle {
    /// The app's config, as the owner runs it.
    pub(crate) config: Arc<AppConfig>,
    snapshot: watch::Receiver<Snapshot>,
    commands: mpsc::Sender<Command>,
    clock: Clock,
    /// Role credentials, for apps with `[role]` (shared with the handle that replaces this
    /// one on a reload that leaves `[role]` alone).
    credentials: Option<Arc<CredentialCache>>,
    /// Tells the owner to finish what it is doing and exit.
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    /// The owner task.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl AppHandle {
    /// Starts the owner task. `subject` is the subject app's snapshot (token-exchange);
    /// `refresh_token` one recovered from elsewhere (state dir).
    pub(crate) fn spawn(
        config: Arc<AppConfig>,
        issuer: Arc<dyn TokenIssuer>,
        subject: Option<watch::Receiver<Snapshot>>,
        shared: Shared,
        refresh_token: Option<Secret>,
    ) -> AppHandle {
        let clock = shared.clock.clone();
        let metrics = shared.metrics.clone();
        let started = super::owner::start(config.clone(), issuer, subject, shared, refresh_token);
        AppHandle {
            config,
            snapshot: started.snapshot,
            commands: started.commands,
            clock,
            credentials: None,
            stop: std::sync::Mutex::new(Some(started.stop)),
            task: std::sync::Mutex::new(Some(started.task)),
            metrics,
        }
    }

    /// Gives the app its role-credential cache.
    pub(crate) fn with_credentials(mut self, cache: CredentialCache) -> AppHandle {
        self.credentials = Some(Arc::new(cache));
        self
    }

    /// This app's running owner under `config`, whose grant is this one's (only `[access]`,
    /// `[[sink]]` or `[role]` differ): the token, its refresh schedule and the owner task go
    /// on as they are (no upstream call); the role credentials are `credentials`, this
    /// handle's own when `[role]` is unchanged. The owner task moves to the new handle, so
    /// stopping the app stops it there; requests still holding this handle finish normally.
    pub(crate) fn reconfigured(
        &self,
        config: Arc<AppConfig>,
        credentials: Option<CredentialCache>,
        keep_credentials: bool,
    ) -> AppHandle {
        AppHandle {
            config,
            snapshot: self.snapshot.clone(),
            commands: self.commands.clone(),
            clock: self.clock.clone(),
            credentials: if keep_credentials {
                self.credentials.clone()
            } else {
                credentials.map(Arc::new)
            },
            stop: std::sync::Mutex::new(taken(&self.stop)),
            task: std::sync::Mutex::new(taken(&self.task)),
            metrics: self.metrics.clone(),
        }
    }

    /// Identity-enhanced role credentials (`[role]` apps).
    pub(crate) async fn credentials(&self) -> Result<Arc<Credentials>, ServeError> {
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
    pub(crate) async fn stop(&self) {
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

    /// The app's name (its config file's stem).
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// Whether the owner's last attempt failed (what is served now is the last good token),
    /// without copying the snapshot.
    pub(crate) fn last_attempt_failed(&self) -> bool {
        self.snapshot.borrow().last_error.is_some()
    }

    /// A receiver of snapshots (token-exchange dependants watch their subject).
    pub(crate) fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    /// A token with at least `min_ttl` left (capped by the owner at 90 % of the last token's
    /// lifetime) if one can be had; otherwise the last good token while it is valid; otherwise
    /// why not.
    pub(crate) async fn token(&self, min_ttl: Duration) -> Result<Arc<Token>, ServeError> {
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

    /// Calls upstream (joining a call in flight; within a second of the app's last call, the
    /// call made at the next second, shared by all who wait for it) and reports its result.
    pub(crate) async fn refresh(&self) -> Result<Arc<Token>, ServeError> {
        self.ask(|reply| Command::Refresh {
            force: true,
            min_ttl: Duration::ZERO,
            reply,
        })
        .await
    }

    /// Exchanges an authorization code (from `iamtokend login`).
    pub(crate) async fn login(
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
    pub(crate) async fn ping(&self, wait: Duration) -> bool {
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

/// What `slot` holds, leaving it empty.
fn taken<T>(slot: &std::sync::Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// What role credentials need of the token side, served by the app's owner.
impl TokenSource for AppHandle {
    fn app_name(&self) -> &str {
        self.name()
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    async fn valid_token(&self) -> Result<Arc<Token>, ServeError> {
        self.token(Duration::ZERO).await
    }

    async fn fresh_token(&self) -> Result<Arc<Token>, ServeError> {
        self.refresh().await
    }
}
