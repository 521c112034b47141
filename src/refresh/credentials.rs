//! Identity-enhanced role credentials per app (`[role]`): STS `AssumeRole` with the app
//! token's identity context, cached and refreshed with the same policy as tokens.
//!
//! Credentials are pulled (credential_process asks once per AWS CLI call), so they are fetched
//! when asked and found due, not on a timer: the async mutex held across the fetch is the
//! single flight — concurrent callers queue behind it and find the fresh credentials.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use tracing::{info, warn};

use super::policy::{backoff, refresh_delay, LivePolicy, Policy};
use super::scheduler::{AppHandle, ServeError};
use super::state::Token;
use crate::clock::Clock;
use crate::grant::identity_claim;
use crate::upstream::UpstreamError;
use crate::upstream::{RoleAssumer, RoleCredentials};

/// Never hand out credentials with less than this left when new ones can be had: botocore
/// re-runs a credential_process helper on every call once under 15 minutes (reference §5).
pub const MIN_SERVED_TTL: Duration = Duration::from_secs(20 * 60);

/// Cached role credentials.
#[derive(Debug)]
pub struct Credentials {
    /// The credentials.
    pub role: RoleCredentials,
    /// Monotonic expiry.
    pub expires_at: Instant,
    /// When to fetch new ones.
    pub refresh_at: Instant,
    /// The identity (idToken `sub`) of the token they were made from.
    identity: Option<String>,
}

struct Cached {
    current: Option<Arc<Credentials>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<(String, String)>,
}

/// One app's credentials.
pub struct CredentialCache {
    assumer: Arc<dyn RoleAssumer>,
    policy: LivePolicy,
    clock: Clock,
    permits: Arc<Semaphore>,
    cached: Mutex<Cached>,
}

impl CredentialCache {
    /// A cache over `assumer`. The policy's `min_lead` is raised to [`MIN_SERVED_TTL`].
    pub fn new(
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
                failures: 0,
                retry_at: None,
                last_error: None,
            }),
        }
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
    pub async fn get(&self, app: &AppHandle) -> Result<Arc<Credentials>, ServeError> {
        let mut cached = self.cached.lock().await;
        let token = app.token(Duration::ZERO).await?;
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
        if cached.retry_at.is_some_and(|at| now < at) {
            if valid.is_some() {
                app.metrics().served_stale(app.name(), "credentials");
            }
            return valid.ok_or_else(|| self.unavailable(app, cached.last_error.clone()));
        }
        match self.fetch(app, token).await {
            Ok(fresh) => {
                cached.current = Some(fresh.clone());
                cached.failures = 0;
                cached.retry_at = None;
                cached.last_error = None;
                Ok(fresh)
            }
            Err(ServeError::Unavailable { code, message, .. }) => {
                cached.failures += 1;
                let wait = backoff(
                    cached.failures,
                    self.policy().max_backoff,
                    rand::random(),
                    false,
                );
                cached.retry_at = Some(now + wait);
                warn!(app = %app.name(), code = %code, error = %message, retry_in = wait.as_secs_f64(),
                      serving_last_good = valid.is_some(), "AssumeRole failed");
                cached.last_error = Some((code, message));
                if valid.is_some() {
                    app.metrics().served_stale(app.name(), "credentials");
                }
                valid.ok_or_else(|| self.unavailable(app, cached.last_error.clone()))
            }
            Err(other) => Err(other),
        }
    }

    fn unavailable(&self, app: &AppHandle, last: Option<(String, String)>) -> ServeError {
        let (code, message) =
            last.unwrap_or_else(|| ("no_credentials".into(), "no credentials yet".into()));
        ServeError::Unavailable {
            app: app.name().to_owned(),
            code,
            message,
        }
    }

    /// AssumeRole with the token's context; a refused context gets one fresh token and retry.
    async fn fetch(
        &self,
        app: &AppHandle,
        token: Arc<Token>,
    ) -> Result<Arc<Credentials>, ServeError> {
        let mut token = token;
        for attempt in 0..2 {
            let context = token.identity_context.clone().ok_or_else(|| ServeError::Unavailable {
                app: app.name().to_owned(),
                code: "no_identity_context".into(),
                message: "the app's token carries no identity context; the scope sts:identity_context is probably missing from the app's scopes".into(),
            })?;
            let result = {
                let _permit = self.permits.acquire().await.ok();
                let started = self.clock.now();
                let result = self.assumer.assume_role(context).await;
                let took = self.clock.now().saturating_duration_since(started);
                app.metrics()
                    .assume_role_call(app.name(), result.as_ref().map(|_| ()), took);
                result
            };
            match result {
                Ok(role) => return Ok(Arc::new(self.cache_entry(app, role, identity_of(&token)))),
                Err(UpstreamError::InvalidGrant { code, .. }) if attempt == 0 => {
                    info!(app = %app.name(), code = %code, "context assertion refused; refreshing the token once");
                    token = app.refresh().await?;
                }
                Err(e) => {
                    return Err(ServeError::Unavailable {
                        app: app.name().to_owned(),
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
        app: &AppHandle,
        role: RoleCredentials,
        identity: Option<String>,
    ) -> Credentials {
        let now = self.clock.now();
        let expires_at = self.clock.instant_of(role.expiration);
        let lifetime = expires_at.saturating_duration_since(now);
        let delay = refresh_delay(lifetime, &self.policy(), rand::random::<f64>() * 2.0 - 1.0);
        info!(app = %app.name(), expires_in = lifetime.as_secs(), next_refresh_in = delay.as_secs(), "role credentials issued");
        Credentials {
            role,
            expires_at,
            refresh_at: now + delay,
            identity,
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
pub fn credential_process_json(creds: &Credentials) -> serde_json::Value {
    serde_json::json!({
        "Version": 1,
        "AccessKeyId": creds.role.access_key_id,
        "SecretAccessKey": creds.role.secret_access_key.expose(),
        "SessionToken": creds.role.session_token.expose(),
        "Expiration": crate::clock::rfc3339(creds.role.expiration),
    })
}
