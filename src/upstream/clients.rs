//! The SDK client factory: one shared HTTPS client, one loaded SDK config per `[aws] profile`,
//! and SDK clients shared by every app of the same profile, region, endpoint and `[aws]`
//! settings. It builds the callers of [`super::oidc`] and [`super::sts`]; those two know
//! nothing of each other or of how their clients are made.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_ssooidc::config::SharedHttpClient;
use tokio::sync::Mutex;

use super::oidc::OidcIssuer;
use super::sts::StsAssumer;
use super::{RoleAssumer, TokenIssuer};
use crate::config::{AppConfig, AwsConfig, CaBundle, RoleConfig};

/// Connect timeout of the shared SDK config (the credential chain's own calls); an app's
/// calls use its `[aws] connect_timeout`.
pub(crate) const CONNECT_TIMEOUT: Duration = crate::config::DEFAULT_CONNECT_TIMEOUT;
/// Whole-attempt timeout of the shared SDK config; an app's calls use its `[aws]`
/// `connect_timeout + read_timeout`.
pub(crate) const CALL_TIMEOUT: Duration = crate::config::DEFAULT_READ_TIMEOUT;

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
    pub(crate) fn from_environment() -> Upstreams {
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
    pub(crate) async fn sdk_config(&self, profile: Option<&str>) -> SdkConfig {
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
    pub(crate) async fn role_assumer(&self, app: &AppConfig) -> Option<Arc<dyn RoleAssumer>> {
        let role = app.role.as_ref()?;
        let key = ClientKey::of(app, role.endpoint_url.as_ref());
        let cached = self.sts_clients.lock().await.get(&key).cloned();
        let client = match cached {
            Some(client) => client,
            None => {
                let sdk = self.sdk_config(app.aws.profile.as_deref()).await;
                let client = sts_client(&sdk, app, role);
                self.sts_clients.lock().await.insert(key, client.clone());
                client
            }
        };
        Some(Arc::new(StsAssumer {
            client,
            role: role.clone(),
        }))
    }

    /// A token issuer for one app.
    pub(crate) async fn token_issuer(&self, app: &AppConfig) -> Arc<dyn TokenIssuer> {
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

/// An STS client for `app`'s `[role]`, in the app's region (shareable by every app with the
/// same profile, region and endpoint).
fn sts_client(sdk: &SdkConfig, app: &AppConfig, role: &RoleConfig) -> aws_sdk_sts::Client {
    let mut builder =
        aws_sdk_sts::config::Builder::from(sdk).region(Region::new(app.region.clone()));
    if let Some(url) = &role.endpoint_url {
        builder = builder.endpoint_url(url);
    }
    builder = builder.timeout_config(timeouts(&app.aws));
    if let Some(client) = http_client(&app.aws) {
        builder = builder.http_client(client);
    }
    aws_sdk_sts::Client::from_conf(builder.build())
}
