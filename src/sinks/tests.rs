//! A credentials sink against a scripted issuer and STS on tokio's paused clock: the role
//! credentials are refreshed on the sink's own timer (nobody asks over the socket), and the
//! file follows each new set; when STS stops answering the file goes once they expire.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::Sinks;
use crate::clock::Clock;
use crate::config::{AppConfig, AssertionSource, AwsConfig, Grant, SinkConfig, SinkContent};
use crate::refresh::credentials::CredentialCache;
use crate::refresh::owner::Shared;
use crate::refresh::policy::{LivePolicy, Policy};
use crate::refresh::AppHandle;
use crate::secret::Secret;
use crate::upstream::{
    BoxFuture, GrantRequest, IssuedToken, RoleAssumer, RoleCredentials, TokenIssuer, UpstreamError,
};

/// Eight-hour tokens with an identity context.
struct Issuer;

impl TokenIssuer for Issuer {
    fn create_token(&self, _: GrantRequest) -> BoxFuture<'_, Result<IssuedToken, UpstreamError>> {
        Box::pin(async {
            Ok(IssuedToken {
                access_token: Secret::new("token"),
                token_type: "Bearer".into(),
                expires_in: 8 * 3600,
                refresh_token: None,
                id_token: None,
                issued_token_type: None,
                scopes: None,
                identity_context: Some(Secret::new("ctx")),
            })
        })
    }
}

/// One-hour credentials numbered by call; fails from call `fail_from` on.
struct Sts {
    clock: Clock,
    calls: AtomicUsize,
    fail_from: usize,
}

impl RoleAssumer for Sts {
    fn assume_role(&self, _: Secret) -> BoxFuture<'_, Result<RoleCredentials, UpstreamError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= self.fail_from {
                return Err(UpstreamError::transient("server_error", "down"));
            }
            Ok(RoleCredentials {
                access_key_id: format!("ASIA{n}"),
                secret_access_key: Secret::new("secret"),
                session_token: Secret::new("session"),
                expiration: self.clock.wall_now() + Duration::from_secs(3600),
            })
        })
    }
}

fn key_in(path: &std::path::Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["AccessKeyId"].as_str().map(str::to_owned)
}

async fn wait_key(path: &std::path::Path, want: Option<&str>) {
    // Up to three hours of paused time, a second at a time.
    for _ in 0..3 * 3600 {
        if key_in(path).as_deref() == want {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    panic!("{} never held {want:?}", path.display());
}

#[tokio::test(start_paused = true)]
async fn a_credentials_sink_refreshes_them_on_a_timer_and_drops_them_at_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = dir.path().join("a.jwt");
    std::fs::write(&jwt, "h.p.s").unwrap();
    let path = dir.path().join("creds.json");
    let sink = SinkConfig {
        path: path.clone(),
        content: SinkContent::CredentialsJson,
        mode: 0o600,
        user: None,
        group: None,
        notify: None,
        signal: None,
    };
    let config = Arc::new(AppConfig {
        name: "app".into(),
        file: "apps.d/app.toml".into(),
        client_id: "arn:aws:sso::123456789012:application/ssoins-1/apl-1".into(),
        region: "us-east-1".into(),
        scopes: None,
        endpoint_url: None,
        grant: Grant::JwtBearer {
            assertion: AssertionSource::File(jwt),
        },
        aws: AwsConfig::default(),
        role: None,
        access: None,
        sinks: vec![sink.clone()],
    });
    let clock = Clock::system();
    let policy = LivePolicy::new(Policy {
        at: 0.5,
        jitter: 0.0,
        min_lead: Duration::from_secs(300),
        max_backoff: Duration::from_secs(60),
    });
    let permits = Arc::new(Semaphore::new(8));
    let shared = Shared::new(
        clock.clone(),
        policy.clone(),
        permits.clone(),
        None,
        Default::default(),
    );
    let metrics = shared.metrics.clone();
    let sts = Arc::new(Sts {
        clock: clock.clone(),
        calls: AtomicUsize::new(0),
        fail_from: 3,
    });
    let handle = AppHandle::spawn(config, Arc::new(Issuer), None, shared, None).with_credentials(
        CredentialCache::new(sts.clone(), policy, clock.clone(), permits),
    );
    let sinks = Sinks::new(clock.clone(), metrics);
    sinks.sync(&[(Arc::new(handle), vec![sink])]).await;

    wait_key(&path, Some("ASIA1")).await;
    let started = clock.now();
    // Jitter 0: the second set is fetched half-way through the first one's hour, by the
    // sink's own timer.
    wait_key(&path, Some("ASIA2")).await;
    let took = clock.now() - started;
    assert!(
        (Duration::from_secs(1790)..Duration::from_secs(1900)).contains(&took),
        "{took:?}"
    );
    assert_eq!(sts.calls.load(Ordering::SeqCst), 2);
    // STS fails from now on: the file keeps the second set until it expires, then goes.
    let second = clock.now();
    wait_key(&path, None).await;
    let held = clock.now() - second;
    assert!(
        (Duration::from_secs(3500)..Duration::from_secs(3700)).contains(&held),
        "{held:?}"
    );
    assert!(sts.calls.load(Ordering::SeqCst) >= 3);
    let view = sinks.of("app");
    assert_eq!(view.len(), 1);
    assert!(view[0].status.expires_at.is_none());
    sinks.stop().await;
}
