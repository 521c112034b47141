//! The two upstream calls, behind small traits the refresh engine declares ([`TokenIssuer`],
//! [`RoleAssumer`]), and the one error enum whose variants say what the caller does next. SDK
//! types stop at this boundary: [`clients`] builds the SDK clients, [`oidc`] and [`sts`] make
//! the calls and map their errors.

pub mod clients;
pub(crate) mod oidc;
pub(crate) mod sts;

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use crate::secret::Secret;

/// A boxed future, so the traits can be used as `Arc<dyn ..>`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `urn:ietf:params:oauth:token-type:access_token`: the only subject token type.
pub(crate) const ACCESS_TOKEN_URN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The grant-specific members of one `CreateTokenWithIAM` call.
#[derive(Debug, Clone)]
pub(crate) enum GrantRequest {
    /// `authorization_code`.
    AuthorizationCode {
        /// The code from the redirect.
        code: Secret,
        /// The redirect URI the code was issued for.
        redirect_uri: String,
        /// The PKCE verifier.
        code_verifier: Secret,
    },
    /// `refresh_token`.
    RefreshToken {
        /// The refresh token.
        refresh_token: Secret,
    },
    /// `urn:ietf:params:oauth:grant-type:jwt-bearer`.
    JwtBearer {
        /// The JWT from the trusted token issuer.
        assertion: Secret,
    },
    /// `urn:ietf:params:oauth:grant-type:token-exchange`.
    TokenExchange {
        /// The subject app's access token.
        subject_token: Secret,
        /// URN of the requested token type.
        requested_token_type: &'static str,
    },
}

impl GrantRequest {
    /// The wire `grantType`.
    pub(crate) fn grant_type(&self) -> &'static str {
        match self {
            GrantRequest::AuthorizationCode { .. } => "authorization_code",
            GrantRequest::RefreshToken { .. } => "refresh_token",
            GrantRequest::JwtBearer { .. } => "urn:ietf:params:oauth:grant-type:jwt-bearer",
            GrantRequest::TokenExchange { .. } => "urn:ietf:params:oauth:grant-type:token-exchange",
        }
    }

    /// A short label for logs and metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            GrantRequest::AuthorizationCode { .. } => "authorization_code",
            GrantRequest::RefreshToken { .. } => "refresh_token",
            GrantRequest::JwtBearer { .. } => "jwt_bearer",
            GrantRequest::TokenExchange { .. } => "token_exchange",
        }
    }
}

/// A successful `CreateTokenWithIAM` answer, checked: the token is non-empty and
/// `expires_in` is positive.
#[derive(Debug, Clone)]
pub(crate) struct IssuedToken {
    /// `accessToken`.
    pub(crate) access_token: Secret,
    /// `tokenType`.
    pub(crate) token_type: String,
    /// `expiresIn`, seconds, > 0.
    pub(crate) expires_in: u64,
    /// `refreshToken`.
    pub(crate) refresh_token: Option<Secret>,
    /// `idToken`.
    pub(crate) id_token: Option<Secret>,
    /// `issuedTokenType`.
    pub(crate) issued_token_type: Option<String>,
    /// `scope`.
    pub(crate) scopes: Option<Vec<String>>,
    /// `awsAdditionalDetails.identityContext`.
    pub(crate) identity_context: Option<Secret>,
}

/// Longest `expiresIn` taken at face value (30 days). Longer answers are treated as this:
/// a broken upstream must not make the daemon sit on a token for years.
pub(crate) const MAX_EXPIRES_IN: u64 = 30 * 24 * 3600;

/// Why an upstream call failed, named for what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The grant itself was refused (`invalid_grant`, `expired_token`): drop the refresh token
    /// or code, re-run the app's own grant where it can be, else needs login.
    #[error("{code}: {message}")]
    InvalidGrant {
        /// OAuth error code.
        code: String,
        /// Description.
        message: String,
    },
    /// The service asked for less traffic (`slow_down`, throttling): back off, doubled.
    #[error("{code}: {message}")]
    SlowDown {
        /// Error code.
        code: String,
        /// Description.
        message: String,
    },
    /// Worth retrying soon with backoff: 5xx, timeouts, connection failures, garbled answers.
    #[error("{code}: {message}")]
    Transient {
        /// Error code.
        code: String,
        /// Description.
        message: String,
    },
    /// The app or the daemon's identity is misconfigured (`invalid_client`,
    /// `unauthorized_client`, `invalid_scope`, `access_denied`, bad signature, ...): retrying
    /// soon cannot help, so retry only at `max_backoff`.
    #[error("{code}: {message}")]
    ConfigFault {
        /// Error code.
        code: String,
        /// Description.
        message: String,
    },
}

impl UpstreamError {
    /// The snake_case code.
    pub(crate) fn code(&self) -> &str {
        match self {
            UpstreamError::InvalidGrant { code, .. }
            | UpstreamError::SlowDown { code, .. }
            | UpstreamError::Transient { code, .. }
            | UpstreamError::ConfigFault { code, .. } => code,
        }
    }

    /// The human message.
    pub(crate) fn message(&self) -> &str {
        match self {
            UpstreamError::InvalidGrant { message, .. }
            | UpstreamError::SlowDown { message, .. }
            | UpstreamError::Transient { message, .. }
            | UpstreamError::ConfigFault { message, .. } => message,
        }
    }

    pub(crate) fn transient(code: &str, message: impl Into<String>) -> UpstreamError {
        UpstreamError::Transient {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Splits any SDK call's error: the service's own error (with the HTTP status) to classify,
/// or the transport failures every call shares, already classified.
pub(crate) fn split_sdk_error<E>(
    err: aws_sdk_ssooidc::error::SdkError<E>,
    service: &str,
) -> Result<(E, u16), UpstreamError>
where
    E: std::error::Error + 'static,
{
    use aws_sdk_ssooidc::error::{DisplayErrorContext, SdkError};
    let context = DisplayErrorContext(&err).to_string();
    match err {
        SdkError::ServiceError(service_error) => {
            let status = service_error.raw().status().as_u16();
            Ok((service_error.into_err(), status))
        }
        SdkError::TimeoutError(_) => Err(UpstreamError::transient(
            "timeout",
            format!("the call to {service} timed out"),
        )),
        // The HTTP client's own connect and read timeouts arrive as dispatch failures.
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            Err(UpstreamError::transient(
                "timeout",
                format!("the call to {service} timed out: {context}"),
            ))
        }
        SdkError::DispatchFailure(_) => Err(UpstreamError::transient(
            "connection_failed",
            format!("could not reach {service}: {context}"),
        )),
        SdkError::ResponseError(_) => Err(UpstreamError::transient(
            "bad_answer",
            format!("{service}'s answer could not be read: {context}"),
        )),
        _ => Err(UpstreamError::ConfigFault {
            code: "request_failed".into(),
            message: format!("the call could not be made: {context}"),
        }),
    }
}

/// Issues tokens for one app (`CreateTokenWithIAM`).
pub(crate) trait TokenIssuer: Send + Sync {
    /// One call, no retries: the refresh engine owns retrying.
    fn create_token(
        &self,
        grant: GrantRequest,
    ) -> BoxFuture<'_, Result<IssuedToken, UpstreamError>>;
}

/// Role credentials as STS returned them.
#[derive(Debug, Clone)]
pub(crate) struct RoleCredentials {
    /// `AccessKeyId` (not secret on its own, but never logged either).
    pub(crate) access_key_id: String,
    /// `SecretAccessKey`.
    pub(crate) secret_access_key: Secret,
    /// `SessionToken`.
    pub(crate) session_token: Secret,
    /// `Expiration`.
    pub(crate) expiration: SystemTime,
}

/// Assumes one app's role.
pub(crate) trait RoleAssumer: Send + Sync {
    /// One `AssumeRole` call with `context_assertion` as the provided context; no retries.
    fn assume_role(
        &self,
        context_assertion: Secret,
    ) -> BoxFuture<'_, Result<RoleCredentials, UpstreamError>>;
}
