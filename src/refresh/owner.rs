//! The owner task of one app: it alone calls upstream for its app, holds the refresh token,
//! saves it in the state dir (on the blocking pool: the store writes and fsyncs), and
//! publishes a [`Snapshot`] on a `watch` channel. It waits for the first of its timer (a
//! point on the clock's boottime timeline), a command, the stop signal, a replaced subject
//! token, or a resume (a call that came due in the suspend then runs after a small jitter);
//! runs one attempt at a time while still answering commands (refresh requests join the call
//! in flight: single flight); then [`Owner::apply`] turns the outcome into the next state
//! with the pure [`after_attempt`], and it waits again.
//!
//! A call a request forces (`POST .../refresh`, a `min_ttl` the token does not meet, judged
//! with [`capped_min_ttl`]) starts no sooner than [`forced_call_at`] allows: within a second
//! of the last call's start, the request waits for the next slot with every other one that
//! arrives meanwhile, and they all share the call made then. However many connections or
//! clients ask, an app makes at most one forced call a second.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{debug, info, warn};

use super::attempt::{token_from, Attempt, Failure, Job, Outcome};
use super::error::ServeError;
use super::policy::{after_resume, capped_min_ttl, forced_call_at, LivePolicy, Retry};
use super::state::{after_attempt, AppState, Ending, LastError, Next, Snapshot, Token};
use crate::clock::{BootInstant, Clock};
use crate::config::{AppConfig, Grant};
use crate::secret::Secret;
use crate::upstream::TokenIssuer;

/// What every owner shares.
#[derive(Clone)]
pub(crate) struct Shared {
    /// The clock every owner reads time from (tokio's: paused in tests).
    pub(crate) clock: Clock,
    /// `[refresh]` timing, as the last (re)load set it.
    pub(crate) policy: LivePolicy,
    /// `max_concurrent`: held only around the upstream call itself.
    pub(crate) permits: Arc<Semaphore>,
    /// Where refresh tokens are saved; `None` runs without persistence.
    pub(crate) store: Option<Arc<crate::store::Store>>,
    /// Counters of upstream calls and refreshes (`GET /metrics`).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// One uniform draw in [0, 1) per attempt, for both jitters: [`uniform_sample`] unless a
    /// test fixes it (`Shared::with_sample`). After a success with draw `s` the next refresh
    /// is `refresh_delay(lifetime, policy, 2s − 1)`: defaults and a 1 h token, s = 0.75 gives
    /// jitter +0.5, so 0.55 × 60 = 33 min; s = 0.5 gives exactly `at`, 30 min. After the n-th
    /// failure in a row the wait is `backoff(n, max_backoff, s)`: s = 0 gives the shortest
    /// wait of each step, 0.5 s, 1 s, 2 s, ...; s → 1 the longest, just under 1 s, 2 s, 4 s.
    ///
    /// [`uniform_sample`]: super::policy::uniform_sample
    sample: fn() -> f64,
}

impl Shared {
    /// What the owners of one daemon share; samples are drawn from the global generator.
    pub(crate) fn new(
        clock: Clock,
        policy: LivePolicy,
        permits: Arc<Semaphore>,
        store: Option<Arc<crate::store::Store>>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Shared {
        Shared {
            clock,
            policy,
            permits,
            store,
            metrics,
            sample: super::policy::uniform_sample,
        }
    }

    /// The same, with every sample drawn from `sample` (tests: a fixed draw makes every wait
    /// exact).
    #[cfg(test)]
    pub(crate) fn with_sample(self, sample: fn() -> f64) -> Shared {
        Shared { sample, ..self }
    }
}

/// How a waiting request is answered.
pub(crate) type Reply = oneshot::Sender<Result<Arc<Token>, ServeError>>;

/// What the handle asks of the owner.
pub(crate) enum Command {
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

/// An authorization code to exchange, from `iamtokend login`.
pub(crate) struct LoginCommand {
    pub(crate) code: Secret,
    pub(crate) code_verifier: Secret,
    pub(crate) redirect_uri: String,
    pub(crate) reply: Reply,
}

/// The ways to a started owner task, for its handle.
pub(crate) struct Started {
    pub(crate) snapshot: watch::Receiver<Snapshot>,
    pub(crate) commands: mpsc::Sender<Command>,
    /// Tells the owner to finish what it is doing and exit.
    pub(crate) stop: oneshot::Sender<()>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// Starts the owner task of `config`. `subject` is the subject app's snapshot
/// (token-exchange); `refresh_token` one recovered from elsewhere (state dir).
pub(crate) fn start(
    config: Arc<AppConfig>,
    issuer: Arc<dyn TokenIssuer>,
    subject: Option<watch::Receiver<Snapshot>>,
    shared: Shared,
    refresh_token: Option<Secret>,
) -> Started {
    let (publish, snapshot) = watch::channel(Snapshot::default());
    let (commands, rx) = mpsc::channel(256);
    let (stop, stop_rx) = oneshot::channel();
    let shared_resumes = shared.clock.resumes();
    let job = Job::new(
        config,
        issuer,
        shared.permits.clone(),
        subject.clone(),
        shared.clock.clone(),
        shared.metrics.clone(),
    );
    let owner = Owner {
        job,
        subject,
        subject_seen: None,
        stop: stop_rx,
        shared,
        publish,
        commands: rx,
        refresh_token,
        retry: Retry::default(),
        next_attempt: None,
        deferred: VecDeque::new(),
        resumes: Some(shared_resumes),
        slot_waiters: Vec::new(),
        last_call_start: None,
        last_lifetime: None,
    };
    Started {
        snapshot,
        commands,
        stop,
        task: tokio::spawn(owner.run()),
    }
}

struct Owner {
    job: Job,
    shared: Shared,
    publish: watch::Sender<Snapshot>,
    commands: mpsc::Receiver<Command>,
    /// The newest refresh token: only the owner ever holds it.
    refresh_token: Option<Secret>,
    /// Consecutive failures and the backoff they impose.
    retry: Retry,
    /// When to call upstream next on our own; `None` = only when asked.
    next_attempt: Option<BootInstant>,
    /// Logins that arrived while a call was in flight, run after it.
    deferred: VecDeque<Command>,
    /// Requests that need a call and wait for the next forced-call slot; the call made then
    /// answers them all.
    slot_waiters: Vec<Reply>,
    /// When the last upstream call (of any kind) started: the forced-call slots count from it.
    last_call_start: Option<BootInstant>,
    /// The lifetime of the token last issued, which caps `min_ttl`.
    last_lifetime: Option<Duration>,
    /// The subject app's snapshots (token-exchange), watched for a replaced token.
    subject: Option<watch::Receiver<Snapshot>>,
    /// The subject token last exchanged or seen, to tell a replaced one.
    subject_seen: Option<Arc<Token>>,
    /// Set by `AppHandle::stop`.
    stop: oneshot::Receiver<()>,
    /// The clock's resume epoch: on a change the owner recomputes its deadline.
    /// `None` once closed (not reached: the clock holds the sender, and the owner the clock).
    resumes: Option<watch::Receiver<u64>>,
}

/// Resolves when the resume epoch changes (true) or its channel closed (false); never
/// without one.
async fn epoch_changed(resumes: &mut Option<watch::Receiver<u64>>) -> bool {
    match resumes {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
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
                None => match self.wait().await {
                    ControlFlow::Continue(c) => c,
                    ControlFlow::Break(()) => return,
                },
            };
            let flow = match command {
                // The timer (the owner's own or the forced-call slot) or a replaced subject:
                // the call answers whoever waits for the slot. Boxed: an attempt's future is
                // kilobytes, and inlined it would make every idle app's task that large too.
                None => {
                    let waiters = std::mem::take(&mut self.slot_waiters);
                    Box::pin(self.flight(Attempt::Refresh, waiters)).await
                }
                Some(Command::Refresh {
                    force,
                    min_ttl,
                    reply,
                }) => {
                    let min_ttl = capped_min_ttl(min_ttl, self.last_lifetime);
                    match self.answer_without_call(force, min_ttl) {
                        Some(answer) => {
                            let _ = reply.send(answer);
                            ControlFlow::Continue(())
                        }
                        None => {
                            let now = self.shared.clock.now();
                            if forced_call_at(self.last_call_start, now) <= now {
                                Box::pin(self.flight(Attempt::Refresh, vec![reply])).await
                            } else {
                                self.slot_waiters.push(reply);
                                ControlFlow::Continue(())
                            }
                        }
                    }
                }
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

    /// Waits for the next thing to do: a command, or `None` when the timer fires (the
    /// owner's own, or the forced-call slot while requests wait for it) or the subject's
    /// token was replaced. Breaks when stopped or every handle is gone. The timer sleeps on
    /// tokio's clock until the tokio instant of its point as of now; a resume (the clock's
    /// epoch) makes it recompute, after [`Owner::resumed`] moved a call that came due in the
    /// suspend to now (jittered).
    async fn wait(&mut self) -> ControlFlow<(), Option<Command>> {
        loop {
            let slot = (!self.slot_waiters.is_empty())
                .then(|| forced_call_at(self.last_call_start, self.shared.clock.now()));
            let next = match (self.next_attempt, slot) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let deadline = next.map(|at| self.shared.clock.deadline(at));
            let timer = async move {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = timer => return ControlFlow::Continue(None),
                open = epoch_changed(&mut self.resumes) => {
                    if open {
                        self.resumed();
                    } else {
                        self.resumes = None;
                    }
                }
                c = self.commands.recv() => return match c {
                    Some(c) => ControlFlow::Continue(Some(c)),
                    None => ControlFlow::Break(()),
                },
                _ = &mut self.stop => return ControlFlow::Break(()),
                alive = subject_changed(&mut self.subject) => {
                    if !alive {
                        self.subject = None;
                    }
                    if self.subject_replaced() {
                        info!(app = %self.job.app.name, "the subject app's token was replaced; exchanging it");
                        return ControlFlow::Continue(None);
                    }
                }
            }
        }
    }

    /// After a resume: a call that came due in the suspend is moved to now plus a small
    /// jitter ([`after_resume`]), and `next_refresh_at` says so.
    fn resumed(&mut self) {
        let now = self.shared.clock.now();
        let next = after_resume(self.next_attempt, now, (self.shared.sample)());
        if next == self.next_attempt {
            return;
        }
        self.next_attempt = next;
        let in_secs = next.map(|at| (at - now).as_secs_f64());
        debug!(app = %self.job.app.name, refresh_in = in_secs, "resumed: the refresh came due in the suspend");
        let clock = self.shared.clock.clone();
        self.publish_with(|s| s.next_refresh_at = next.map(|at| clock.wall(at)));
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
        if self.retry.holds_off(now) {
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
        self.last_call_start = Some(self.shared.clock.now());
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
        let result = match &outcome.result {
            Ok(_) => "ok",
            Err(failure) => failure.label(),
        };
        self.shared.metrics.refresh_done(&self.job.app.name, result);
        let answer = self.apply(outcome).await;
        for waiter in waiters {
            let _ = waiter.send(answer.clone());
        }
        if open {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }

    /// Every outcome of an attempt, as one match: the refresh token kept, the next step from
    /// the pure [`after_attempt`], then published and answered.
    async fn apply(&mut self, outcome: Outcome) -> Result<Arc<Token>, ServeError> {
        let clock = self.shared.clock.clone();
        let now = clock.now();
        if outcome.refresh_token_refused {
            self.refresh_token = None;
            self.forget_saved().await;
        }
        let policy = self.shared.policy.get();
        let sample = (self.shared.sample)();
        match outcome.result {
            Ok((issued, via)) => {
                if let Some(refresh_token) = issued.refresh_token.clone() {
                    // Saved before anything else uses it: the old one may already be dead.
                    self.save(&refresh_token).await;
                    self.refresh_token = Some(refresh_token);
                }
                let lifetime = Duration::from_secs(issued.expires_in);
                self.last_lifetime = Some(lifetime);
                let ending = Ending::Issued { lifetime };
                let next = after_attempt(self.retry, ending, None, now, &policy, sample);
                let token = Arc::new(token_from(issued, now, &clock));
                self.issued(next, token.clone(), via, lifetime, now);
                Ok(token)
            }
            Err(failure) => {
                let held = self.publish.borrow().token.clone();
                let ending = Ending::Failed(failure.kind());
                let next = after_attempt(self.retry, ending, held.as_deref(), now, &policy, sample);
                Err(self.failed(
                    next,
                    &failure,
                    held.is_some_and(|t| t.is_valid_at(now)),
                    now,
                ))
            }
        }
    }

    /// Takes `next` after a success and publishes `token`.
    fn issued(
        &mut self,
        next: Next,
        token: Arc<Token>,
        via: &str,
        lifetime: Duration,
        now: BootInstant,
    ) {
        let clock = self.shared.clock.clone();
        self.retry = next.retry;
        self.next_attempt = next.next_attempt;
        let delay = next.next_attempt.map_or(Duration::ZERO, |at| at - now);
        info!(
            app = %self.job.app.name, via, expires_in = lifetime.as_secs(),
            next_refresh_in = delay.as_secs(), refresh_token_held = self.refresh_token.is_some(),
            "token issued"
        );
        self.publish_with(|s| {
            s.state = next.state;
            s.token = Some(token);
            s.last_refresh_at = Some(clock.wall(now));
            s.next_refresh_at = next.next_attempt.map(|at| clock.wall(at));
            s.last_error = None;
            s.consecutive_failures = next.retry.failures();
        });
    }

    /// Takes `next` after `failure`, publishes it, and says why no token is served.
    /// `serving_last_good`: the last good token is still valid (and served).
    fn failed(
        &mut self,
        next: Next,
        failure: &Failure,
        serving_last_good: bool,
        now: BootInstant,
    ) -> ServeError {
        let clock = self.shared.clock.clone();
        self.retry = next.retry;
        self.next_attempt = next.next_attempt;
        let last_error = LastError {
            code: failure.code().to_owned(),
            message: failure.message().to_owned(),
            at: clock.wall(now),
        };
        warn!(
            app = %self.job.app.name, code = %last_error.code, error = %last_error.message,
            failures = next.retry.failures(),
            retry_in = next.next_attempt.map(|at| (at - now).as_secs_f64()),
            serving_last_good, state = next.state.as_str(),
            "refresh failed"
        );
        let answer = match failure {
            Failure::NeedsLogin(_) => ServeError::NeedsLogin {
                app: self.job.app.name.clone(),
            },
            _ => self.unavailable(Some(&last_error)),
        };
        self.publish_with(|s| {
            s.state = next.state;
            s.next_refresh_at = next.next_attempt.map(|at| clock.wall(at));
            s.last_error = Some(last_error);
            s.consecutive_failures = next.retry.failures();
        });
        answer
    }

    /// Saves a new refresh token in the state dir, off the async workers (write, fsync,
    /// rename, fsync the directory). A failure keeps it in memory only.
    async fn save(&self, refresh_token: &Secret) {
        let Some(store) = self.shared.store.clone() else {
            return;
        };
        let app = self.job.app.clone();
        let token = refresh_token.clone();
        let saved =
            tokio::task::spawn_blocking(move || store.save(&app.name, &app.client_id, &token))
                .await;
        let error = match saved {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the saving task did not finish".to_owned(),
        };
        warn!(app = %self.job.app.name, error = %error, "cannot save the new refresh token; it is kept in memory only");
    }

    /// Deletes the saved refresh token (upstream refused it), off the async workers.
    async fn forget_saved(&self) {
        let Some(store) = self.shared.store.clone() else {
            return;
        };
        let app = self.job.app.clone();
        let _ = tokio::task::spawn_blocking(move || store.remove(&app.name)).await;
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
