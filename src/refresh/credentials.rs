//! Identity-enhanced role credentials per app (`[role]`): STS `AssumeRole` with the app
//! token's identity context, cached and refreshed with the same policy as tokens.
//!
//! Credentials are pulled (credential_process asks once per AWS CLI call), so they are fetched
//! when asked and found due, not on a timer: the async mutex held across the fetch is the
//! single flight — concurrent callers queue behind it and find the fresh credentials. A read
//! that finds the last set fresh and of the current identity takes a published copy without
//! the mutex, so SDK fetches on the endpoint never queue behind one another. A
//! failure backs off with the token path's own [`Retry`]. What the cache needs of the token
//! side is the [`TokenSource`] trait declared here, which the app's handle implements.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use crate::clock::{BootInstant, Clock};
use tokio::sync::{Mutex, Semaphore};
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::error::ServeError;
use super::policy::{centered, refresh_delay, FailureKind, LivePolicy, Policy, Retry};
use super::state::Token;
use crate::grant::identity_claim;
use crate::upstream::UpstreamError;
use crate::upstream::{RoleAssumer, RoleCredentials};

/// Never hand out credentials with less than this left when new ones can be had: botocore
/// re-runs a credential_process helper on every call once under 15 minutes (reference §5).
pub(crate) const MIN_SERVED_TTL: Duration = Duration::from_secs(20 * 60);

/// Cached role credentials.
pub(crate) struct Credentials {
    /// The STS answer: keys, session token and wall-clock expiration.
    pub(crate) role: RoleCredentials,
    /// Expiry on the boottime timeline (suspend counted): what serving decides on.
    pub(crate) expires_at: BootInstant,
    /// When to fetch new ones (boottime timeline).
    pub(crate) refresh_at: BootInstant,
    /// The identity (idToken `sub`) of the token they were made from.
    identity: Option<String>,
    /// The credentials endpoint's answer, rendered once (`crate::endpoint::container_body`):
    /// the role ARN it was rendered for, and the JSON, zeroed when these credentials go.
    pub(crate) container: OnceLock<(String, Zeroizing<Vec<u8>>)>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("role", &self.role)
            .field("expires_at", &self.expires_at)
            .field("refresh_at", &self.refresh_at)
            .field(
                "identity",
                &self.identity.as_ref().map(|_| "** redacted **"),
            )
            .finish_non_exhaustive()
    }
}

/// The credentials the mutex-free read may hand out, and the token they were checked
/// against. `Weak`: an old token is not kept alive for this (its secret is zeroed when the
/// app drops it), and its allocation is, so its address is never another token's.
#[derive(Clone)]
struct Published {
    creds: Arc<Credentials>,
    token: Weak<Token>,
}

/// What role credentials need of the app's token side: its name and metrics, a valid token,
/// and a fresh one when STS refuses the context of the one held.
pub(crate) trait TokenSource: Sync {
    /// The app's name, for logs, metrics and errors.
    fn app_name(&self) -> &str;
    /// The daemon's metrics.
    fn metrics(&self) -> &crate::metrics::Metrics;
    /// A valid token (any time left), or why none can be had.
    fn valid_token(&self) -> impl Future<Output = Result<Arc<Token>, ServeError>> + Send;
    /// A token from a new upstream call.
    fn fresh_token(&self) -> impl Future<Output = Result<Arc<Token>, ServeError>> + Send;
}

struct Cached {
    current: Option<Arc<Credentials>>,
    retry: Retry,
    last_error: Option<(String, String)>,
}

/// One app's credentials.
pub(crate) struct CredentialCache {
    assumer: Arc<dyn RoleAssumer>,
    policy: LivePolicy,
    clock: Clock,
    permits: Arc<Semaphore>,
    cached: Mutex<Cached>,
    /// A copy of `cached.current`, for the read that finds it fresh without queueing on the
    /// async mutex (every SDK fetch on the endpoint is one). std `RwLock`: held to clone an
    /// `Arc`, never across an await; written only under `cached`.
    published: RwLock<Option<Published>>,
    /// A uniform draw in [0, 1) per decision: the refresh jitter of new credentials (as
    /// `2s − 1`; s = 0.75 and the defaults put a 1 h set's refresh at 0.55 × 60 = 33 min,
    /// before the 40 min that [`MIN_SERVED_TTL`] allows) and the backoff after a failure
    /// (first failure: 0.5 s + s × 0.5 s). The global generator unless a test fixes it.
    sample: fn() -> f64,
}

impl CredentialCache {
    /// A cache over `assumer`. The policy's `min_lead` is raised to [`MIN_SERVED_TTL`].
    pub(crate) fn new(
        assumer: Arc<dyn RoleAssumer>,
        policy: LivePolicy,
        clock: Clock,
        permits: Arc<Semaphore>,
    ) -> CredentialCache {
        CredentialCache {
            assumer,
            policy,
            clock,
            permits,
            cached: Mutex::new(Cached {
                current: None,
                retry: Retry::default(),
                last_error: None,
            }),
            published: RwLock::new(None),
            sample: super::policy::uniform_sample,
        }
    }

    /// The same cache with every sample drawn from `sample`.
    #[cfg(test)]
    pub(crate) fn with_sample(self, sample: fn() -> f64) -> CredentialCache {
        CredentialCache { sample, ..self }
    }

    /// The live `[refresh]` policy with `min_lead` raised to [`MIN_SERVED_TTL`].
    fn policy(&self) -> Policy {
        let policy = self.policy.get();
        Policy {
            min_lead: policy.min_lead.max(MIN_SERVED_TTL),
            ..policy
        }
    }

    /// Credentials for `app`: cached while fresh and of the same identity, else new ones.
    pub(crate) async fn get(&self, app: &impl TokenSource) -> Result<Arc<Credentials>, ServeError> {
        // The common case, without the mutex: the published credentials are fresh and were
        // made from this very token (a pointer compare), or from one of the same identity.
        // Anything else (none yet, due, another identity, a failure's hold-off) takes the
        // mutex and decides below, one caller at a time.
        {
            let token = app.valid_token().await?;
            let now = self.clock.now();
            let published = self
                .published
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(p) = published {
                let fresh = now < p.creds.refresh_at && now < p.creds.expires_at;
                if fresh && std::ptr::eq(p.token.as_ptr(), Arc::as_ptr(&token)) {
                    return Ok(p.creds);
                }
                if fresh && p.creds.identity == identity_of(&token) {
                    // A rotated token of the same identity: compared by pointer from now on.
                    let mut slot = self.published.write().unwrap_or_else(|p| p.into_inner());
                    if let Some(p) = slot.as_mut().filter(|s| Arc::ptr_eq(&s.creds, &p.creds)) {
                        p.token = Arc::downgrade(&token);
                    }
                    return Ok(p.creds);
                }
            }
        }
        let mut cached = self.cached.lock().await;
        let token = app.valid_token().await?;
        let identity = identity_of(&token);
        let now = self.clock.now();
        let valid = cached
            .current
            .clone()
            .filter(|c| now < c.expires_at && c.identity == identity);
        if let Some(c) = &valid {
            if now < c.refresh_at {
                return Ok(c.clone());
            }
        }
        if cached.retry.holds_off(now) {
            if valid.is_some() {
                app.metrics().served_stale(app.app_name(), "credentials");
            }
            return valid.ok_or_else(|| self.unavailable(app, cached.last_error.clone()));
        }
        let made_from = Arc::downgrade(&token);
        match self.fetch(app, token).await {
            Ok(fresh) => {
                cached.current = Some(fresh.clone());
                *self.published.write().unwrap_or_else(|p| p.into_inner()) = Some(Published {
                    creds: fresh.clone(),
                    token: made_from,
                });
                cached.retry = Retry::default();
                cached.last_error = None;
                Ok(fresh)
            }
            Err(ServeError::Unavailable { code, message, .. }) => {
                let max_backoff = self.policy().max_backoff;
                let sample = (self.sample)();
                cached.retry =
                    cached
                        .retry
                        .failed(FailureKind::Retryable, max_backoff, now, sample);
                let wait = cached.retry.until().map_or(Duration::ZERO, |at| at - now);
                warn!(app = %app.app_name(), code = %code, error = %message, retry_in = wait.as_secs_f64(),
                      serving_last_good = valid.is_some(), "AssumeRole failed");
                cached.last_error = Some((code, message));
                if valid.is_some() {
                    app.metrics().served_stale(app.app_name(), "credentials");
                }
                valid.ok_or_else(|| self.unavailable(app, cached.last_error.clone()))
            }
            Err(other) => Err(other),
        }
    }

    fn unavailable(&self, app: &impl TokenSource, last: Option<(String, String)>) -> ServeError {
        let (code, message) =
            last.unwrap_or_else(|| ("no_credentials".into(), "no credentials yet".into()));
        ServeError::Unavailable {
            app: app.app_name().to_owned(),
            code,
            message,
        }
    }

    /// AssumeRole with the token's context; a refused context gets one fresh token and retry.
    async fn fetch(
        &self,
        app: &impl TokenSource,
        token: Arc<Token>,
    ) -> Result<Arc<Credentials>, ServeError> {
        let mut token = token;
        for attempt in 0..2 {
            let context = token.identity_context.clone().ok_or_else(|| ServeError::Unavailable {
                app: app.app_name().to_owned(),
                code: "no_identity_context".into(),
                message: "the app's token carries no identity context; the scope sts:identity_context is probably missing from the app's scopes".into(),
            })?;
            let result = {
                let _permit = self.permits.acquire().await.ok();
                let started = self.clock.now();
                let result = self.assumer.assume_role(context).await;
                let took = self.clock.now().saturating_duration_since(started);
                app.metrics()
                    .assume_role_call(app.app_name(), result.as_ref().map(|_| ()), took);
                result
            };
            match result {
                Ok(role) => return Ok(Arc::new(self.cache_entry(app, role, identity_of(&token)))),
                Err(UpstreamError::InvalidGrant { code, .. }) if attempt == 0 => {
                    info!(app = %app.app_name(), code = %code, "context assertion refused; refreshing the token once");
                    token = app.fresh_token().await?;
                }
                Err(e) => {
                    return Err(ServeError::Unavailable {
                        app: app.app_name().to_owned(),
                        code: e.code().to_owned(),
                        message: e.message().to_owned(),
                    })
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    fn cache_entry(
        &self,
        app: &impl TokenSource,
        role: RoleCredentials,
        identity: Option<String>,
    ) -> Credentials {
        let now = self.clock.now();
        let expires_at = self.clock.instant_of(role.expiration);
        let lifetime = expires_at.saturating_duration_since(now);
        let delay = refresh_delay(lifetime, &self.policy(), centered((self.sample)()));
        info!(app = %app.app_name(), expires_in = lifetime.as_secs(), next_refresh_in = delay.as_secs(), "role credentials issued");
        Credentials {
            role,
            expires_at,
            refresh_at: now + delay,
            identity,
            container: OnceLock::new(),
        }
    }
}

/// Who a token belongs to: the idToken's `sub`, else (no idToken) the identity context itself.
fn identity_of(token: &Token) -> Option<String> {
    token
        .id_token
        .as_ref()
        .and_then(|t| identity_claim(t.expose(), "sub"))
        .or_else(|| {
            token
                .identity_context
                .as_ref()
                .map(|c| c.expose().to_owned())
        })
}

/// The credential_process JSON (reference §5).
pub(crate) fn credential_process_json(creds: &Credentials) -> serde_json::Value {
    serde_json::json!({
        "Version": 1,
        "AccessKeyId": creds.role.access_key_id,
        "SecretAccessKey": creds.role.secret_access_key.expose(),
        "SessionToken": creds.role.session_token.expose(),
        "Expiration": crate::clock::rfc3339(creds.role.expiration),
    })
}

#[cfg(test)]
mod tests {
    //! The cache against a fake token side and a scripted STS, on tokio's paused clock: the
    //! trait is all it needs of an app.
    use super::*;
    use crate::secret::Secret;
    use crate::upstream::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Source {
        token: Arc<Token>,
        metrics: crate::metrics::Metrics,
    }

    impl TokenSource for Source {
        fn app_name(&self) -> &str {
            "app"
        }
        fn metrics(&self) -> &crate::metrics::Metrics {
            &self.metrics
        }
        async fn valid_token(&self) -> Result<Arc<Token>, ServeError> {
            Ok(self.token.clone())
        }
        async fn fresh_token(&self) -> Result<Arc<Token>, ServeError> {
            Ok(self.token.clone())
        }
    }

    /// A token side whose token lives `ttl` from now, of identity context `ctx`.
    fn source_of(clock: &Clock, ttl: Duration, ctx: &str) -> Source {
        Source {
            token: Arc::new(Token {
                access_token: Secret::new("t"),
                token_type: "Bearer".into(),
                expires_at: clock.now() + ttl,
                expires_at_wall: clock.wall_now(),
                scopes: None,
                issued_token_type: None,
                id_token: None,
                identity_context: Some(Secret::new(ctx)),
                rendered: std::sync::OnceLock::new(),
            }),
            metrics: crate::metrics::Metrics::new(),
        }
    }

    /// The cache over `sts` with the default policy, every sample 0.
    fn cache_over(sts: Arc<Sts>, clock: &Clock) -> CredentialCache {
        CredentialCache::new(
            sts,
            LivePolicy::new(Policy::default()),
            clock.clone(),
            Arc::new(Semaphore::new(1)),
        )
        .with_sample(|| 0.0)
    }

    /// Fails its first call, then issues one-hour credentials.
    struct Sts {
        clock: Clock,
        calls: AtomicUsize,
    }

    impl RoleAssumer for Sts {
        fn assume_role(
            &self,
            _context_assertion: Secret,
        ) -> BoxFuture<'_, Result<RoleCredentials, UpstreamError>> {
            Box::pin(async move {
                if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(UpstreamError::transient("server_error", "boom"));
                }
                Ok(RoleCredentials {
                    access_key_id: "ASIA".into(),
                    secret_access_key: Secret::new("s"),
                    session_token: Secret::new("t"),
                    expiration: self.clock.wall_now() + Duration::from_secs(3600),
                })
            })
        }
    }

    /// Sample 0: the first failure holds off exactly 0.5 s, and new credentials of 1 h are
    /// refreshed at (0.5 − 0.1) × 3600 = 1440 s (the 20 min floor allows up to 2400 s).
    #[tokio::test(start_paused = true)]
    async fn a_failure_backs_off_with_the_shared_retry_then_credentials_are_cached() {
        let clock = Clock::anchored_at(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let source = source_of(&clock, Duration::from_secs(3600), "ctx");
        let sts = Arc::new(Sts {
            clock: clock.clone(),
            calls: AtomicUsize::new(0),
        });
        let cache = cache_over(sts.clone(), &clock);
        let unavailable = |r: Result<Arc<Credentials>, ServeError>| matches!(r, Err(ServeError::Unavailable { ref code, .. }) if code == "server_error");
        assert!(unavailable(cache.get(&source).await));
        tokio::time::sleep(Duration::from_millis(499)).await;
        assert!(unavailable(cache.get(&source).await));
        assert_eq!(sts.calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let creds = cache.get(&source).await.unwrap();
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
        assert_eq!(creds.refresh_at, clock.now() + Duration::from_secs(1440));
        let again = cache.get(&source).await.unwrap();
        assert!(Arc::ptr_eq(&creds, &again));
        assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    }

    /// Fresh credentials are answered without the mutex: a read while it is held (as by a
    /// slow call in flight) does not queue; a read of another identity does, and is answered
    /// once the mutex is free.
    #[tokio::test(start_paused = true)]
    async fn a_fresh_read_does_not_queue_on_the_mutex() {
        let clock = Clock::anchored_at(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let source = source_of(&clock, Duration::from_secs(3600), "ctx");
        let sts = Arc::new(Sts {
            clock: clock.clone(),
            calls: AtomicUsize::new(1),
        });
        let cache = cache_over(sts.clone(), &clock);
        let first = cache.get(&source).await.unwrap();
        let held = cache.cached.lock().await;
        let again = tokio::time::timeout(Duration::from_secs(1), cache.get(&source))
            .await
            .expect("a fresh read queued on the mutex")
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = source_of(&clock, Duration::from_secs(3600), "another-identity");
        assert!(
            tokio::time::timeout(Duration::from_secs(1), cache.get(&other))
                .await
                .is_err(),
            "another identity's read skipped the mutex"
        );
        drop(held);
        let theirs = cache.get(&other).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &theirs));
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);

        // The endpoint's body: rendered once, the same bytes as the JSON; another role ARN
        // gets its own. Debug shows neither the body nor the identity.
        let arn = "arn:aws:iam::123456789012:role/R";
        let body = crate::endpoint::container_body(&theirs, arn);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            crate::endpoint::container_json(&theirs, arn)
        );
        assert_eq!(crate::endpoint::container_body(&theirs, arn), body);
        let other_arn = "arn:aws:iam::210987654321:role/R";
        let json: serde_json::Value =
            serde_json::from_slice(&crate::endpoint::container_body(&theirs, other_arn)).unwrap();
        assert_eq!(json["AccountId"], "210987654321");
        let debug = format!("{theirs:?}");
        assert!(
            !debug.contains("another-identity") && !debug.contains("AccountId"),
            "{debug}"
        );
    }

    /// Credentials that expired while the machine was suspended are never served: the cache
    /// judges on the boottime now, and the new set lives its hour from the resume.
    #[tokio::test(start_paused = true)]
    async fn credentials_that_died_in_a_suspend_are_replaced() {
        let clock = Clock::anchored_at(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let source = source_of(&clock, Duration::from_secs(10 * 3600), "ctx");
        let sts = Arc::new(Sts {
            clock: clock.clone(),
            // The first call's scripted failure is skipped.
            calls: AtomicUsize::new(1),
        });
        let cache = cache_over(sts.clone(), &clock);
        let first = cache.get(&source).await.unwrap();
        // 10 min suspended: 50 min left, before the refresh point (24 min): the cached set.
        clock.suspend_for(Duration::from_secs(600));
        assert!(Arc::ptr_eq(&first, &cache.get(&source).await.unwrap()));
        // 2 h more: the cached set expired in the suspend; a new one is fetched.
        clock.suspend_for(Duration::from_secs(7200));
        let fresh = cache.get(&source).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &fresh));
        assert_eq!(sts.calls.load(Ordering::SeqCst), 3);
        assert_eq!(fresh.expires_at - clock.now(), Duration::from_secs(3600));
    }
}
