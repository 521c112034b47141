//! What an app's owner task publishes: its state, the current token, and the facts `status`
//! shows. Readers take a `watch` snapshot; they never wait on the owner to read a token.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::secret::Secret;

/// App states of CONTRACT §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppState {
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
    pub fn as_str(self) -> &'static str {
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
pub struct Token {
    /// The bearer token.
    pub access_token: Secret,
    /// "Bearer".
    pub token_type: String,
    /// Monotonic expiry: what every validity decision uses.
    pub expires_at: Instant,
    /// Wall-clock expiry, for display.
    pub expires_at_wall: SystemTime,
    /// `scope` as returned.
    pub scopes: Option<Vec<String>>,
    /// `issuedTokenType` as returned.
    pub issued_token_type: Option<String>,
    /// `idToken` as returned.
    pub id_token: Option<Secret>,
    /// `awsAdditionalDetails.identityContext`, or the idToken's `sts:identity_context` claim.
    pub identity_context: Option<Secret>,
    /// The token route's JSON, serialized on first use and kept with the token (it holds the
    /// token, so it is zeroized with it): all of it but the `expires_in` value.
    pub rendered: std::sync::OnceLock<Rendered>,
}

/// A token's answer JSON around its one changing value, `expires_in`.
pub struct Rendered {
    /// Everything up to and including `"expires_in":`.
    pub before: zeroize::Zeroizing<Vec<u8>>,
    /// Everything after the number.
    pub after: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rendered(<redacted>)")
    }
}

impl Token {
    /// Whether the token may be served at `now`: strictly before expiry.
    pub fn is_valid_at(&self, now: Instant) -> bool {
        now < self.expires_at
    }

    /// Time left at `now` (zero once expired).
    pub fn ttl(&self, now: Instant) -> Duration {
        self.expires_at.saturating_duration_since(now)
    }
}

/// The last failure, as `status` shows it. Never carries a secret: messages come from the
/// upstream's error description or from our own wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// snake_case code, e.g. "invalid_grant", "server_error", "assertion_unreadable".
    pub code: String,
    /// One human sentence.
    pub message: String,
    /// When it happened.
    pub at: SystemTime,
}

/// One consistent view of an app, published by its owner task on every change.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// State as the owner last set it; see [`Snapshot::effective_state`].
    pub state: AppState,
    /// The last good token, if any (possibly expired: check before serving).
    pub token: Option<Arc<Token>>,
    /// When the last successful refresh finished.
    pub last_refresh_at: Option<SystemTime>,
    /// When the owner will next call upstream on its own, if it will.
    pub next_refresh_at: Option<SystemTime>,
    /// The last failure; cleared by a success.
    pub last_error: Option<LastError>,
    /// Failed attempts in a row (the backoff step); 0 after a success.
    pub consecutive_failures: u32,
}

impl Snapshot {
    /// The token, if it may be served at `now`.
    pub fn valid_token(&self, now: Instant) -> Option<&Arc<Token>> {
        self.token.as_ref().filter(|t| t.is_valid_at(now))
    }

    /// The state a reader should report at `now`: a held token that expired since the owner
    /// last published turns `failing` into `expired` without waiting for the owner to wake.
    pub fn effective_state(&self, now: Instant) -> AppState {
        match (self.state, self.token.as_ref()) {
            (AppState::Failing | AppState::Ready, Some(t)) if !t.is_valid_at(now) => {
                AppState::Expired
            }
            (state, _) => state,
        }
    }
}
