//! `CreateTokenWithIAM` through aws-sdk-ssooidc, and the SDK's errors mapped onto
//! [`UpstreamError`] per the reference's error table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_ssooidc::config::SharedHttpClient;
use aws_sdk_ssooidc::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssooidc::operation::create_token_with_iam::{
    CreateTokenWithIAMError, CreateTokenWithIamOutput,
};
use tokio::sync::Mutex;

use super::{
    BoxFuture, GrantRequest, IssuedToken, TokenIssuer, UpstreamError, ACCESS_TOKEN_URN,
    MAX_EXPIRES_IN,
};

use crate::config::{AppConfig, AwsConfig, CaBundle};
use crate::secret::Secret;

/// Connect timeout of the shared SDK config (the credential chain's own calls); an app's
/// calls use its `[aws] connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = crate::config::DEFAULT_CONNECT_TIMEOUT;
/// Whole-attempt timeout of the shared SDK config; an app's calls use its `[aws]`
/// `connect_timeout + read_timeout`.
pub const CALL_TIMEOUT: Duration = crate::config::DEFAULT_READ_TIMEOUT;

/// An app's `[aws]` timeouts as the SDK takes them: `connect_timeout` for TCP + TLS,
/// `read_timeout` from the request sent to the answer's head, and the two together as the
/// bound of one whole attempt (so a body that trickles in is cut off too).
pub(crate) fn timeouts(aws: &AwsConfig) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(aws.connect_timeout)
        .read_timeout(aws.read_timeout)
        .operation_attempt_timeout(aws.connect_timeout + aws.read_timeout)
        .build()
}

/// An app's own HTTPS client when it has an `[aws] ca_bundle`; `None` otherwise, so the SDK
/// picks its default client.
pub(crate) fn http_client(aws: &AwsConfig) -> Option<SharedHttpClient> {
    aws.ca_bundle
        .as_ref()
        .map(|bundle| https_client(Some(bundle)))
}

/// The SDK's default HTTPS client (hyper 1 + rustls with aws-lc, `HTTPS_PROXY`/`HTTP_PROXY`/
/// `NO_PROXY` from the environment), with `bundle`'s certificates added to the system's
/// trust roots.
///
/// Built the way aws-smithy-runtime builds its default (`default_https_client`), through
/// `Builder::build_with_connector_fn`, which caches one connector per timeout setting. The
/// simpler `Builder::tls_provider(..).build_https()` leaves the proxy settings out, so a
/// client built that way silently ignores `HTTPS_PROXY`.
pub(crate) fn https_client(bundle: Option<&CaBundle>) -> SharedHttpClient {
    use aws_smithy_http_client::{proxy::ProxyConfig, tls, Builder, ConnectorBuilder};
    let mut trust = tls::TrustStore::default();
    if let Some(bundle) = bundle {
        // Parsed and checked at config load: the TLS stack panics on a bad certificate.
        trust = trust.with_pem_certificate(bundle.pem.clone());
    }
    // `build` cannot fail today (it only stores the trust store); if it ever does, the
    // system's roots alone are the safe fallback, and the handshake will say why.
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .unwrap_or_default();
    Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = ConnectorBuilder::default()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context.clone());
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

/// Builds SDK clients for apps, loading each `[aws] profile`'s credential chain once.
pub struct Upstreams {
    /// Fixed credentials instead of the SDK chain (`serve --dev` and its simulator).
    credentials_override: Option<Credentials>,
    /// One loaded SdkConfig per profile (None = the default chain): credential providers
    /// cache their credentials, so apps sharing a profile share one cache.
    sdk_configs: Mutex<HashMap<Option<String>, SdkConfig>>,
    /// One HTTPS client (TLS context, trust roots, connection pool) for every SDK client.
    /// Without it each app's client builds its own on first use: about 150 kB per app (trust
    /// roots, pool) and an idle connection per app, where 10,000 apps must fit in 64 MB.
    http_client: SharedHttpClient,
    /// SDK clients by (profile, region, endpoint_url): an SDK client is ~10 kB of config
    /// layers and runtime plugins, and apps differ only in what each call carries (client id,
    /// scopes), so apps of one region share one client.
    oidc_clients: Mutex<HashMap<ClientKey, aws_sdk_ssooidc::Client>>,
    sts_clients: Mutex<HashMap<ClientKey, aws_sdk_sts::Client>>,
}

/// What tells SDK clients apart: `[aws] profile`, region, endpoint override, and the `[aws]`
/// settings that shape the client (timeouts, CA bundle).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    profile: Option<String>,
    region: String,
    endpoint: Option<String>,
    connect_timeout: Duration,
    read_timeout: Duration,
    ca_bundle: Option<std::path::PathBuf>,
}

impl ClientKey {
    fn of(app: &AppConfig, endpoint: Option<&String>) -> ClientKey {
        ClientKey {
            profile: app.aws.profile.clone(),
            region: app.region.clone(),
            endpoint: endpoint.cloned(),
            connect_timeout: app.aws.connect_timeout,
            read_timeout: app.aws.read_timeout,
            ca_bundle: app.aws.ca_bundle.as_ref().map(|b| b.path.clone()),
        }
    }
}

impl Upstreams {
    /// Signs with the SDK's default chain, or per app `[aws] profile`.
    pub fn from_environment() -> Upstreams {
        Upstreams {
            credentials_override: None,
            sdk_configs: Mutex::new(HashMap::new()),
            http_client: https_client(None),
            oidc_clients: Mutex::new(HashMap::new()),
            sts_clients: Mutex::new(HashMap::new()),
        }
    }

    /// Signs every call with these credentials (dev mode).
    pub fn with_credentials(credentials: Credentials) -> Upstreams {
        Upstreams {
            credentials_override: Some(credentials),
            sdk_configs: Mutex::new(HashMap::new()),
            http_client: https_client(None),
            oidc_clients: Mutex::new(HashMap::new()),
            sts_clients: Mutex::new(HashMap::new()),
        }
    }

    /// The shared SDK config for a profile.
    pub async fn sdk_config(&self, profile: Option<&str>) -> SdkConfig {
        let key = profile.map(str::to_owned);
        let mut configs = self.sdk_configs.lock().await;
        if let Some(c) = configs.get(&key) {
            return c.clone();
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(self.http_client.clone())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(CALL_TIMEOUT)
                    .build(),
            );
        if let Some(p) = profile {
            loader = loader.profile_name(p);
        }
        if let Some(creds) = &self.credentials_override {
            // A region too, so the SDK's region chain never probes IMDS: dev mode talks to
            // loopback only. (Each client still gets its app's region.)
            loader = loader
                .credentials_provider(creds.clone())
                .region(Region::new("us-east-1"));
        }
        let config = loader.load().await;
        configs.insert(key, config.clone());
        config
    }

    /// A role assumer for an app with a `[role]`.
    pub async fn role_assumer(&self, app: &AppConfig) -> Option<Arc<dyn super::sts::RoleAssumer>> {
        let role = app.role.as_ref()?;
        let key = ClientKey::of(app, role.endpoint_url.as_ref());
        let cached = self.sts_clients.lock().await.get(&key).cloned();
        let client = match cached {
            Some(client) => client,
            None => {
                let sdk = self.sdk_config(app.aws.profile.as_deref()).await;
                let client = super::sts::StsAssumer::client(&sdk, app, role);
                self.sts_clients.lock().await.insert(key, client.clone());
                client
            }
        };
        Some(Arc::new(super::sts::StsAssumer {
            client,
            role: role.clone(),
        }))
    }

    /// A token issuer for one app.
    pub async fn token_issuer(&self, app: &AppConfig) -> Arc<dyn TokenIssuer> {
        let key = ClientKey::of(app, app.endpoint_url.as_ref());
        let cached = self.oidc_clients.lock().await.get(&key).cloned();
        let client = match cached {
            Some(client) => client,
            None => {
                let sdk = self.sdk_config(app.aws.profile.as_deref()).await;
                let mut builder = aws_sdk_ssooidc::config::Builder::from(&sdk)
                    .region(Region::new(app.region.clone()))
                    .timeout_config(timeouts(&app.aws));
                if let Some(url) = &app.endpoint_url {
                    builder = builder.endpoint_url(url);
                }
                if let Some(client) = http_client(&app.aws) {
                    builder = builder.http_client(client);
                }
                let client = aws_sdk_ssooidc::Client::from_conf(builder.build());
                self.oidc_clients.lock().await.insert(key, client.clone());
                client
            }
        };
        Arc::new(OidcIssuer {
            client,
            client_id: app.client_id.clone(),
            scopes: app.scopes.clone(),
        })
    }
}

/// One app's `CreateTokenWithIAM` caller.
struct OidcIssuer {
    client: aws_sdk_ssooidc::Client,
    client_id: String,
    scopes: Option<Vec<String>>,
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
