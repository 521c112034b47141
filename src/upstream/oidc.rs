//! `CreateTokenWithIAM` through aws-sdk-ssooidc, and the SDK's errors mapped onto
//! [`UpstreamError`] per the reference's error table.

use aws_sdk_ssooidc::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssooidc::operation::create_token_with_iam::{
    CreateTokenWithIAMError, CreateTokenWithIamOutput,
};

use super::{
    BoxFuture, GrantRequest, IssuedToken, TokenIssuer, UpstreamError, ACCESS_TOKEN_URN,
    MAX_EXPIRES_IN,
};
use crate::secret::Secret;

/// One app's `CreateTokenWithIAM` caller (built by [`super::clients::Upstreams`]).
pub(crate) struct OidcIssuer {
    /// The SDK client, shared with every app of the same profile, region and endpoint.
    pub(crate) client: aws_sdk_ssooidc::Client,
    /// Sent with every call: the client is shared, the app's identity is not.
    pub(crate) client_id: String,
    /// Sent with every call (`scope`), as configured.
    pub(crate) scopes: Option<Vec<String>>,
}

impl TokenIssuer for OidcIssuer {
    fn create_token(
        &self,
        grant: GrantRequest,
    ) -> BoxFuture<'_, Result<IssuedToken, UpstreamError>> {
        Box::pin(async move {
            let mut call = self
                .client
                .create_token_with_iam()
                .client_id(&self.client_id)
                .grant_type(grant.grant_type())
                .set_scope(self.scopes.clone());
            call = match &grant {
                GrantRequest::AuthorizationCode {
                    code,
                    redirect_uri,
                    code_verifier,
                } => call
                    .code(code.expose())
                    .redirect_uri(redirect_uri)
                    .code_verifier(code_verifier.expose()),
                GrantRequest::RefreshToken { refresh_token } => {
                    call.refresh_token(refresh_token.expose())
                }
                GrantRequest::JwtBearer { assertion } => call.assertion(assertion.expose()),
                GrantRequest::TokenExchange {
                    subject_token,
                    requested_token_type,
                } => call
                    .subject_token(subject_token.expose())
                    .subject_token_type(ACCESS_TOKEN_URN)
                    .requested_token_type(*requested_token_type),
            };
            match call.send().await {
                Ok(out) => issued_token(out),
                Err(err) => Err(map_error(err)),
            }
        })
    }
}

/// Checks and converts a success answer. A 200 without a usable token is a transient fault of
/// the upstream, not a token.
fn issued_token(out: CreateTokenWithIamOutput) -> Result<IssuedToken, UpstreamError> {
    let access_token = match out.access_token() {
        Some(t) if !t.is_empty() => Secret::new(t),
        _ => {
            return Err(UpstreamError::transient(
                "bad_answer",
                "the answer carried no accessToken",
            ))
        }
    };
    let expires_in = out.expires_in();
    if expires_in <= 0 {
        return Err(UpstreamError::transient(
            "bad_answer",
            format!("the answer's expiresIn ({expires_in}) is not positive"),
        ));
    }
    let identity_context = out
        .aws_additional_details()
        .and_then(|d| d.identity_context())
        .filter(|c| !c.is_empty())
        .map(Secret::new);
    Ok(IssuedToken {
        access_token,
        token_type: out.token_type().unwrap_or("Bearer").to_owned(),
        expires_in: (expires_in as u64).min(MAX_EXPIRES_IN),
        refresh_token: out
            .refresh_token()
            .filter(|t| !t.is_empty())
            .map(Secret::new),
        id_token: out.id_token().filter(|t| !t.is_empty()).map(Secret::new),
        issued_token_type: out.issued_token_type().map(str::to_owned),
        scopes: (!out.scope().is_empty()).then(|| out.scope().to_vec()),
        identity_context,
    })
}

/// The reference's error table, as one match.
pub(crate) fn map_error(err: SdkError<CreateTokenWithIAMError>) -> UpstreamError {
    use CreateTokenWithIAMError as E;
    let (err, status) = match super::split_sdk_error(err, "Identity Center") {
        Ok(service_error) => service_error,
        Err(e) => return e,
    };
    // Modeled errors carry the OAuth `error` and `error_description`; `.message()` is None.
    let (code, description, default_code) = match &err {
        E::InvalidGrantException(e) => (e.error(), e.error_description(), "invalid_grant"),
        E::ExpiredTokenException(e) => (e.error(), e.error_description(), "expired_token"),
        E::SlowDownException(e) => (e.error(), e.error_description(), "slow_down"),
        E::InternalServerException(e) => (e.error(), e.error_description(), "server_error"),
        E::InvalidClientException(e) => (e.error(), e.error_description(), "invalid_client"),
        E::UnauthorizedClientException(e) => {
            (e.error(), e.error_description(), "unauthorized_client")
        }
        E::UnsupportedGrantTypeException(e) => {
            (e.error(), e.error_description(), "unsupported_grant_type")
        }
        E::InvalidScopeException(e) => (e.error(), e.error_description(), "invalid_scope"),
        E::AccessDeniedException(e) => (e.error(), e.error_description(), "access_denied"),
        E::InvalidRequestException(e) => (e.error(), e.error_description(), "invalid_request"),
        E::InvalidRequestRegionException(e) => {
            (e.error(), e.error_description(), "invalid_request")
        }
        E::AuthorizationPendingException(e) => {
            (e.error(), e.error_description(), "authorization_pending")
        }
        other => (None, other.message(), "unhandled"),
    };
    let code = code
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| match &err {
            e if e.code().is_some() && default_code == "unhandled" => {
                snake_case(e.code().unwrap_or_default())
            }
            _ => default_code.to_owned(),
        });
    let message = description
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("Identity Center answered HTTP {status} {code}"));
    match &err {
        E::InvalidGrantException(_) | E::ExpiredTokenException(_) => {
            UpstreamError::InvalidGrant { code, message }
        }
        E::SlowDownException(_) => UpstreamError::SlowDown { code, message },
        E::InternalServerException(_) | E::AuthorizationPendingException(_) => {
            UpstreamError::Transient { code, message }
        }
        E::InvalidClientException(_)
        | E::UnauthorizedClientException(_)
        | E::UnsupportedGrantTypeException(_)
        | E::InvalidScopeException(_)
        | E::AccessDeniedException(_)
        | E::InvalidRequestException(_)
        | E::InvalidRequestRegionException(_) => UpstreamError::ConfigFault { code, message },
        other => {
            let raw_code = other.code().unwrap_or_default();
            if is_throttling(raw_code) || status == 429 {
                UpstreamError::SlowDown { code, message }
            } else if status >= 500 {
                UpstreamError::Transient { code, message }
            } else if (400..500).contains(&status) {
                UpstreamError::ConfigFault { code, message }
            } else {
                UpstreamError::Transient { code, message }
            }
        }
    }
}

/// Throttling codes the SDK itself recognises (aws-smithy-runtime's list).
fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "ProvisionedThroughputExceededException"
            | "TransactionInProgressException"
            | "RequestLimitExceeded"
            | "BandwidthLimitExceeded"
            | "LimitExceededException"
            | "RequestThrottled"
            | "SlowDown"
            | "PriorRequestNotComplete"
            | "EC2ThrottledException"
    )
}

/// "InvalidSignatureException" -> "invalid_signature".
fn snake_case(code: &str) -> String {
    let trimmed = code.strip_suffix("Exception").unwrap_or(code);
    let mut out = String::with_capacity(trimmed.len() + 4);
    for (i, ch) in trimmed.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else if ch.is_ascii_alphanumeric() {
            out.push(ch);
        } else {
            out.push('_');
        }
    }
    if out.is_empty() {
        "unknown".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_cases_error_types() {
        assert_eq!(snake_case("InvalidSignatureException"), "invalid_signature");
        assert_eq!(snake_case("ThrottlingException"), "throttling");
        assert_eq!(snake_case(""), "unknown");
    }
}
