//! STS `AssumeRole` with `ProvidedContexts` (identity-enhanced role sessions) through
//! aws-sdk-sts, and its errors mapped onto [`UpstreamError`].

use std::time::SystemTime;

use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_sdk_sts::types::ProvidedContext;

use super::{BoxFuture, RoleAssumer, RoleCredentials, UpstreamError};
use crate::config::RoleConfig;
use crate::secret::Secret;

/// The context provider for Identity Center assertions (reference §2).
pub(crate) const IDENTITY_CENTER_PROVIDER: &str = "arn:aws:iam::aws:contextProvider/IdentityCenter";

/// The SDK-backed assumer of one app's role (built by [`super::clients::Upstreams`]).
pub(crate) struct StsAssumer {
    /// The SDK client, shared with every app of the same profile, region and endpoint.
    pub(crate) client: aws_sdk_sts::Client,
    /// The role, session name and duration this app asks for.
    pub(crate) role: RoleConfig,
}

impl RoleAssumer for StsAssumer {
    fn assume_role(
        &self,
        context_assertion: Secret,
    ) -> BoxFuture<'_, Result<RoleCredentials, UpstreamError>> {
        Box::pin(async move {
            let context = ProvidedContext::builder()
                .provider_arn(IDENTITY_CENTER_PROVIDER)
                .context_assertion(context_assertion.expose())
                .build();
            let out = self
                .client
                .assume_role()
                .role_arn(&self.role.arn)
                .role_session_name(&self.role.session_name)
                .duration_seconds(self.role.duration.as_secs().min(43_200) as i32)
                .provided_contexts(context)
                .send()
                .await
                .map_err(map_error)?;
            let creds = out.credentials().ok_or_else(|| {
                UpstreamError::transient(
                    "bad_answer",
                    "the AssumeRole answer carried no credentials",
                )
            })?;
            let expiration = SystemTime::try_from(*creds.expiration()).map_err(|_| {
                UpstreamError::transient("bad_answer", "the AssumeRole Expiration is out of range")
            })?;
            if creds.access_key_id().is_empty() || creds.secret_access_key().is_empty() {
                return Err(UpstreamError::transient(
                    "bad_answer",
                    "the AssumeRole answer carried empty credentials",
                ));
            }
            Ok(RoleCredentials {
                access_key_id: creds.access_key_id().to_owned(),
                secret_access_key: Secret::new(creds.secret_access_key()),
                session_token: Secret::new(creds.session_token()),
                expiration,
            })
        })
    }
}

/// STS errors by what the caller does. `InvalidContextAssertion` (and an expired token) map to
/// `InvalidGrant`: get a fresh token and retry once.
fn map_error(err: SdkError<AssumeRoleError>) -> UpstreamError {
    let (err, status) = match super::split_sdk_error(err, "STS") {
        Ok(service_error) => service_error,
        Err(e) => return e,
    };
    let raw_code = err.code().unwrap_or("Unknown").to_owned();
    let message = err
        .message()
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("STS answered HTTP {status} {raw_code}"));
    let code = raw_code.clone();
    match raw_code.as_str() {
        "InvalidContextAssertion" | "ExpiredTokenException" | "ExpiredToken" => {
            UpstreamError::InvalidGrant { code, message }
        }
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => {
            UpstreamError::SlowDown { code, message }
        }
        _ if status >= 500 => UpstreamError::Transient { code, message },
        _ if status == 429 => UpstreamError::SlowDown { code, message },
        _ => UpstreamError::ConfigFault { code, message },
    }
}
