//! What an app's owner task publishes (its state, the current token, and the facts `status`
//! shows), and the pure decision of what comes after an attempt: [`after_attempt`]. Readers
//! take a `watch` snapshot; they never wait on the owner to read a token.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::policy::{centered, refresh_delay, FailureKind, Policy, Retry};
use crate::clock::BootInstant;
use crate::secret::Secret;

/// App states of CONTRACT §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum AppState {
    /// No token yet, first fetch not finished.
    #[default]
    Pending,
    /// A valid token is held and the next refresh is scheduled.
    Ready,
    /// An upstream call is in flight.
    Refreshing,
    /// The last attempt failed; retrying with backoff. A valid token may still be served.
    Failing,
    /// Nothing can be done until someone logs in (or the config changes, or a forced refresh).
    NeedsLogin,
    /// Retrying, and the last token has expired: nothing to serve.
    Expired,
}

impl AppState {
    /// The contract's snake_case name.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AppState::Pending => "pending",
            AppState::Ready => "ready",
            AppState::Refreshing => "refreshing",
            AppState::Failing => "failing",
            AppState::NeedsLogin => "needs_login",
            AppState::Expired => "expired",
        }
    }
}

/// A token as the daemon holds it. The refresh token is not here: only the owner task holds it,
/// so no reader can leak it.
#[derive(Debug)]
pub(crate) struct Token {
    /// The bearer token.
    pub(crate) access_token: Secret,
    /// "Bearer".
    pub(crate) token_type: String,
    /// Expiry on the boottime timeline (suspend counted): what every validity decision uses.
    pub(crate) expires_at: BootInstant,
    /// Wall-clock expiry, for display.
    pub(crate) expires_at_wall: SystemTime,
    /// `scope` as returned.
    pub(crate) scopes: Option<Vec<String>>,
    /// `issuedTokenType` as returned.
    pub(crate) issued_token_type: Option<String>,
    /// `idToken` as returned.
    pub(crate) id_token: Option<Secret>,
    /// `awsAdditionalDetails.identityContext`, or the idToken's `sts:identity_context` claim.
    pub(crate) identity_context: Option<Secret>,
    /// The token route's JSON, serialized on first use and kept with the token (it holds the
    /// token, so it is zeroized with it): all of it but the `expires_in` value.
    pub(crate) rendered: std::sync::OnceLock<Rendered>,
}

/// A token's answer JSON around its one changing value, `expires_in`.
pub(crate) struct Rendered {
    /// Everything up to and including `"expires_in":`.
    pub(crate) before: zeroize::Zeroizing<Vec<u8>>,
    /// Everything after the number.
    pub(crate) after: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rendered(<redacted>)")
    }
}

impl Token {
    /// Whether the token may be served at `now`: strictly before expiry.
    pub(crate) fn is_valid_at(&self, now: BootInstant) -> bool {
        now < self.expires_at
    }

    /// Time left at `now` (zero once expired).
    pub(crate) fn ttl(&self, now: BootInstant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }
}

/// The last failure, as `status` shows it. Never carries a secret: messages come from the
/// upstream's error description or from our own wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastError {
    /// snake_case code, e.g. "invalid_grant", "server_error", "assertion_unreadable".
    pub(crate) code: String,
    /// One human sentence.
    pub(crate) message: String,
    /// When it happened.
    pub(crate) at: SystemTime,
}

/// One consistent view of an app, published by its owner task on every change.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// State as the owner last set it; see [`Snapshot::effective_state`].
    pub(crate) state: AppState,
    /// The last good token, if any (possibly expired: check before serving).
    pub(crate) token: Option<Arc<Token>>,
    /// When the last successful refresh finished.
    pub(crate) last_refresh_at: Option<SystemTime>,
    /// When the owner will next call upstream on its own, if it will.
    pub(crate) next_refresh_at: Option<SystemTime>,
    /// The last failure; cleared by a success.
    pub(crate) last_error: Option<LastError>,
    /// Failed attempts in a row (the backoff step); 0 after a success.
    pub(crate) consecutive_failures: u32,
}

impl Snapshot {
    /// The token, if it may be served at `now`.
    pub(crate) fn valid_token(&self, now: BootInstant) -> Option<&Arc<Token>> {
        self.token.as_ref().filter(|t| t.is_valid_at(now))
    }

    /// The state a reader should report at `now`: a held token that expired since the owner
    /// last published turns `failing` into `expired` without waiting for the owner to wake.
    pub(crate) fn effective_state(&self, now: BootInstant) -> AppState {
        match (self.state, self.token.as_ref()) {
            (AppState::Failing | AppState::Ready, Some(t)) if !t.is_valid_at(now) => {
                AppState::Expired
            }
            (state, _) => state,
        }
    }
}

/// What an attempt came to, as far as what follows depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A token was issued that lives `lifetime`.
    Issued {
        /// The token's `expiresIn`.
        lifetime: Duration,
    },
    /// The attempt failed.
    Failed(FailureKind),
}

/// What the owner does after an attempt: the state it publishes, its retry state, and when it
/// calls upstream next on its own (`None`: only when asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Next {
    /// The state to publish.
    pub(crate) state: AppState,
    /// Failures in a row and the backoff they impose.
    pub(crate) retry: Retry,
    /// The owner's own next call.
    pub(crate) next_attempt: Option<BootInstant>,
}

/// The owner's next step after an attempt that ended in `ending` at `now`: a pure function of
/// the retry state before it, the ending, the token held (the last good one, possibly expired;
/// not the one just issued), the `[refresh]` policy and one uniform `sample` in [0, 1).
///
/// - Issued: `ready`, failures back to 0, next call after [`refresh_delay`] with the sample
///   [`centered`] for the jitter. Defaults, 1 h token, sample 0.75 (jitter +0.5): 33 min.
/// - Needs a login: `needs_login`, no timer.
/// - Any other failure: `failing` while the held token is valid (it is still served) or when
///   none was ever held, `expired` once the held one has expired; next call after the backoff
///   of [`Retry::failed`]. Max 5 min, first failure, sample 0.5: 0.75 s.
pub(crate) fn after_attempt(
    retry: Retry,
    ending: Ending,
    held: Option<&Token>,
    now: BootInstant,
    policy: &Policy,
    sample: f64,
) -> Next {
    let kind = match ending {
        Ending::Issued { lifetime } => {
            return Next {
                state: AppState::Ready,
                retry: Retry::default(),
                next_attempt: Some(now + refresh_delay(lifetime, policy, centered(sample))),
            }
        }
        Ending::Failed(kind) => kind,
    };
    let retry = retry.failed(kind, policy.max_backoff, now, sample);
    let state = match (kind, held) {
        (FailureKind::NeedsLogin, _) => AppState::NeedsLogin,
        (_, Some(t)) if !t.is_valid_at(now) => AppState::Expired,
        _ => AppState::Failing,
    };
    Next {
        state,
        retry,
        next_attempt: retry.until(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn token(expires_at: BootInstant) -> Token {
        Token {
            access_token: Secret::new("t"),
            token_type: "Bearer".into(),
            expires_at,
            expires_at_wall: SystemTime::UNIX_EPOCH,
            scopes: None,
            issued_token_type: None,
            id_token: None,
            identity_context: None,
            rendered: std::sync::OnceLock::new(),
        }
    }

    #[test]
    fn after_attempt_table() {
        let now = BootInstant::from_secs(1_000);
        let policy = Policy::default();
        let valid = token(now + S(60));
        let expired = token(now);
        let fresh = Retry::default();
        let twice = fresh
            .failed(FailureKind::Retryable, policy.max_backoff, now, 0.0)
            .failed(FailureKind::Retryable, policy.max_backoff, now, 0.0);
        let issued = Ending::Issued { lifetime: S(3600) };
        let (retryable, throttled, config, login) = (
            Ending::Failed(FailureKind::Retryable),
            Ending::Failed(FailureKind::Throttled),
            Ending::Failed(FailureKind::ConfigFault),
            Ending::Failed(FailureKind::NeedsLogin),
        );
        let (ok, bad) = (Some(&valid), Some(&expired));
        let ms = Duration::from_millis;
        use AppState::{Expired, Failing, NeedsLogin, Ready};
        // (retry before, ending, held, sample, state, failures after, next call in)
        let cases = [
            (fresh, issued, None, 0.75, Ready, 0, Some(S(1980))),
            (twice, issued, bad, 0.5, Ready, 0, Some(S(1800))),
            (fresh, retryable, None, 0.5, Failing, 1, Some(ms(750))),
            (fresh, retryable, ok, 0.0, Failing, 1, Some(ms(500))),
            (twice, retryable, bad, 0.0, Expired, 3, Some(S(2))),
            (fresh, throttled, ok, 0.0, Failing, 1, Some(S(1))),
            (twice, config, bad, 0.9, Expired, 3, Some(S(300))),
            (fresh, login, ok, 0.5, NeedsLogin, 0, None),
            (twice, login, bad, 0.5, NeedsLogin, 2, None),
        ];
        for (retry, ending, held, sample, state, failures, wait) in cases {
            let next = after_attempt(retry, ending, held, now, &policy, sample);
            let what = format!(
                "{retry:?} {ending:?} held {:?}",
                held.map(|t| t.is_valid_at(now))
            );
            assert_eq!(next.state, state, "{what}");
            assert_eq!(next.retry.failures(), failures, "{what}");
            assert_eq!(next.next_attempt, wait.map(|w| now + w), "{what}");
            assert_eq!(
                next.retry.holds_off(now),
                failures > 0 && wait.is_some(),
                "{what}"
            );
        }
    }
}
