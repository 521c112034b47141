//! The handle and its owner task against a scripted issuer on tokio's paused clock: hours
//! pass in milliseconds, and every upstream call is counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::owner::Shared;
use super::policy::LivePolicy;
use super::{AppHandle, AppState, ServeError};
use crate::clock::Clock;
use crate::config::{AppConfig, AssertionSource, AwsConfig, Grant};
use crate::secret::Secret;
use crate::upstream::{BoxFuture, GrantRequest, IssuedToken, TokenIssuer, UpstreamError};

/// Pops scripted results; when the script is empty, issues a fresh token of `lifetime`.
struct FakeIssuer {
    script: Mutex<VecDeque<Result<u64, UpstreamError>>>,
    lifetime: u64,
    calls: AtomicUsize,
    grants: Mutex<Vec<&'static str>>,
    delay: Duration,
}

impl FakeIssuer {
    fn new(lifetime: u64) -> Arc<FakeIssuer> {
        Arc::new(FakeIssuer {
            script: Mutex::new(VecDeque::new()),
            lifetime,
            calls: AtomicUsize::new(0),
            grants: Mutex::new(Vec::new()),
            delay: Duration::from_millis(50),
        })
    }
    fn push(&self, r: Result<u64, UpstreamError>) {
        self.script.lock().unwrap().push_back(r);
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl TokenIssuer for FakeIssuer {
    fn create_token(
        &self,
        grant: GrantRequest,
    ) -> BoxFuture<'_, Result<IssuedToken, UpstreamError>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            self.grants.lock().unwrap().push(grant.label());
            tokio::time::sleep(self.delay).await;
            let next = self.script.lock().unwrap().pop_front();
            let lifetime = match next {
                Some(Ok(l)) => l,
                Some(Err(e)) => return Err(e),
                None => self.lifetime,
            };
            Ok(IssuedToken {
                access_token: Secret::new(format!("token-{n}")),
                token_type: "Bearer".into(),
                expires_in: lifetime,
                refresh_token: Some(Secret::new(format!("refresh-{n}"))),
                id_token: None,
                issued_token_type: None,
                scopes: None,
                identity_context: None,
            })
        })
    }
}

fn app(grant: Grant) -> Arc<AppConfig> {
    Arc::new(AppConfig {
        name: "app".into(),
        file: "apps.d/app.toml".into(),
        client_id: "arn:aws:sso::123456789012:application/ssoins-1/apl-1".into(),
        region: "us-east-1".into(),
        scopes: None,
        endpoint_url: None,
        grant,
        aws: AwsConfig::default(),
        role: None,
        access: None,
        sinks: Vec::new(),
    })
}

fn jwt_app(dir: &std::path::Path) -> Arc<AppConfig> {
    let path = dir.join("a.jwt");
    std::fs::write(&path, "h.p.s").unwrap();
    app(Grant::JwtBearer {
        assertion: AssertionSource::File(path),
    })
}

fn shared(max_backoff: u64) -> Shared {
    Shared::new(
        Clock::system(),
        LivePolicy::new(crate::refresh::policy::Policy {
            at: 0.5,
            jitter: 0.0,
            min_lead: Duration::from_secs(300),
            max_backoff: Duration::from_secs(max_backoff),
        }),
        Arc::new(Semaphore::new(8)),
        None,
        Default::default(),
    )
}

async fn until_ready(handle: &AppHandle) {
    let mut rx = handle.subscribe();
    rx.wait_for(|s| s.state == AppState::Ready).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn refreshes_before_expiry_and_never_serves_expired() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FakeIssuer::new(3600);
    let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
    until_ready(&handle).await;
    assert_eq!(issuer.calls(), 1);
    assert_eq!(
        handle
            .token(Duration::ZERO)
            .await
            .unwrap()
            .access_token
            .expose(),
        "token-1"
    );
    // Half the lifetime (jitter 0) later the owner refreshes on its own, with the refresh
    // token it now holds.
    tokio::time::sleep(Duration::from_secs(1799)).await;
    assert_eq!(issuer.calls(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(issuer.calls(), 2);
    assert_eq!(
        *issuer.grants.lock().unwrap(),
        vec!["jwt_bearer", "refresh_token"]
    );
    assert_eq!(
        handle
            .token(Duration::ZERO)
            .await
            .unwrap()
            .access_token
            .expose(),
        "token-2"
    );
}

#[tokio::test(start_paused = true)]
async fn hundred_concurrent_forced_refreshes_share_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FakeIssuer::new(3600);
    let handle = Arc::new(AppHandle::spawn(
        jwt_app(dir.path()),
        issuer.clone(),
        None,
        shared(300),
        None,
    ));
    until_ready(&handle).await;
    let before = issuer.calls();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move { h.refresh().await }));
    }
    let mut tokens = std::collections::BTreeSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap().access_token.expose().to_owned());
    }
    let made = issuer.calls() - before;
    assert!((1..=2).contains(&made), "{made} upstream calls");
    assert_eq!(tokens.len(), made);
    // A forced refresh after the burst is a call of its own.
    let later = handle.refresh().await.unwrap();
    assert!(!tokens.contains(later.access_token.expose()));
    assert_eq!(issuer.calls() - before, made + 1);
}

#[tokio::test(start_paused = true)]
async fn min_ttl_requests_join_one_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FakeIssuer::new(600);
    let handle = Arc::new(AppHandle::spawn(
        jwt_app(dir.path()),
        issuer.clone(),
        None,
        shared(300),
        None,
    ));
    until_ready(&handle).await;
    // 600 s token; ask for 700 s left: every request needs a refresh, one call serves all.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            h.token(Duration::from_secs(700)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(issuer.calls(), 2);
    // Now the token has ~600 s left: min_ttl 500 is served from cache.
    handle.token(Duration::from_secs(500)).await.unwrap();
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_serve_last_good_then_expire() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FakeIssuer::new(120);
    let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(30), None);
    until_ready(&handle).await;
    for _ in 0..50 {
        issuer.push(Err(UpstreamError::transient("server_error", "boom")));
    }
    // 120 s token: refresh at 30 s (lead capped at 3/4), then failures with backoff.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let snap = handle.snapshot();
    assert_eq!(snap.state, AppState::Failing);
    assert_eq!(snap.last_error.as_ref().unwrap().code, "server_error");
    // Still served: the last good token is valid.
    assert_eq!(
        handle
            .token(Duration::ZERO)
            .await
            .unwrap()
            .access_token
            .expose(),
        "token-1"
    );
    let calls_at_60 = issuer.calls();
    assert!(
        calls_at_60 < 10,
        "backoff should space calls: {calls_at_60}"
    );
    // Past expiry (120 s): never served.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let err = handle.token(Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(err, ServeError::Unavailable { ref code, .. } if code == "server_error"),
        "{err:?}"
    );
    assert_eq!(
        handle
            .snapshot()
            .effective_state(tokio::time::Instant::now()),
        AppState::Expired
    );
}

#[tokio::test(start_paused = true)]
async fn recovers_without_intervention() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FakeIssuer::new(3600);
    for _ in 0..3 {
        issuer.push(Err(UpstreamError::transient("server_error", "boom")));
    }
    let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
    // 1st try fails, then backoff 0.5-1 s, 1-2 s, 2-4 s: ready within 8 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(handle.snapshot().state, AppState::Ready);
    assert_eq!(issuer.calls(), 4);
    assert!(handle.snapshot().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn slow_down_waits_longer_than_plain_failures() {
    async fn calls_in(err: UpstreamError, window: u64) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(3600);
        for _ in 0..100 {
            issuer.push(Err(err.clone()));
        }
        let _h = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
        tokio::time::sleep(Duration::from_secs(window)).await;
        issuer.calls()
    }
    let plain = calls_in(UpstreamError::transient("server_error", "x"), 60).await;
    let slow = calls_in(
        UpstreamError::SlowDown {
            code: "slow_down".into(),
            message: "x".into(),
        },
        60,
    )
    .await;
    assert!(slow < plain, "slow_down {slow} calls vs plain {plain}");
}

#[tokio::test(start_paused = true)]
async fn config_faults_retry_only_at_max_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FakeIssuer::new(3600);
    for _ in 0..100 {
        issuer.push(Err(UpstreamError::ConfigFault {
            code: "invalid_client".into(),
            message: "x".into(),
        }));
    }
    let _h = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(60), None);
    tokio::time::sleep(Duration::from_secs(121)).await;
    assert_eq!(issuer.calls(), 3); // t=0, 60, 120
}

#[tokio::test(start_paused = true)]
async fn authorization_code_app_needs_login_and_makes_no_calls() {
    let issuer = FakeIssuer::new(3600);
    let handle = AppHandle::spawn(
        app(Grant::AuthorizationCode {
            redirect_uri: "http://127.0.0.1:8400/cb".into(),
        }),
        issuer.clone(),
        None,
        shared(300),
        None,
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(issuer.calls(), 0);
    assert_eq!(handle.snapshot().state, AppState::NeedsLogin);
    assert!(matches!(
        handle.token(Duration::ZERO).await,
        Err(ServeError::NeedsLogin { .. })
    ));
    let token = handle
        .login(
            Secret::new("code"),
            Secret::new("verifier"),
            "http://127.0.0.1:8400/cb".into(),
        )
        .await
        .unwrap();
    assert_eq!(token.access_token.expose(), "token-1");
    assert_eq!(*issuer.grants.lock().unwrap(), vec!["authorization_code"]);
    assert_eq!(handle.snapshot().state, AppState::Ready);
}

#[tokio::test(start_paused = true)]
async fn invalid_refresh_token_reruns_the_jwt_grant() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FakeIssuer::new(3600);
    let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
    until_ready(&handle).await;
    issuer.push(Err(UpstreamError::InvalidGrant {
        code: "invalid_grant".into(),
        message: "x".into(),
    }));
    handle.refresh().await.unwrap();
    assert_eq!(
        *issuer.grants.lock().unwrap(),
        vec!["jwt_bearer", "refresh_token", "jwt_bearer"]
    );
}

#[tokio::test(start_paused = true)]
async fn token_exchange_uses_the_subject_token() {
    let dir = tempfile::tempdir().unwrap();
    let subject_issuer = FakeIssuer::new(3600);
    let subject = AppHandle::spawn(
        jwt_app(dir.path()),
        subject_issuer.clone(),
        None,
        shared(300),
        None,
    );
    let issuer = FakeIssuer::new(3600);
    let exchange = AppHandle::spawn(
        app(Grant::TokenExchange {
            subject_app: "app".into(),
            requested_token_type: crate::config::RequestedTokenType::AccessToken,
        }),
        issuer.clone(),
        Some(subject.subscribe()),
        shared(300),
        None,
    );
    until_ready(&exchange).await;
    assert_eq!(*issuer.grants.lock().unwrap(), vec!["token_exchange"]);
}

/// Panics on every call: the owner task dies with it, as after a bug.
struct PanickingIssuer;

impl TokenIssuer for PanickingIssuer {
    fn create_token(
        &self,
        _grant: GrantRequest,
    ) -> BoxFuture<'_, Result<IssuedToken, UpstreamError>> {
        Box::pin(async { panic!("test issuer: the owner task dies here") })
    }
}

#[tokio::test(start_paused = true)]
async fn ping_is_answered_while_a_call_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Arc::new(FakeIssuer {
        script: Mutex::new(VecDeque::new()),
        lifetime: 3600,
        calls: AtomicUsize::new(0),
        grants: Mutex::new(Vec::new()),
        delay: Duration::from_secs(60),
    });
    let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared(300), None);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.snapshot().state, AppState::Refreshing);
    assert!(handle.ping(Duration::from_millis(10)).await);
    until_ready(&handle).await;
    assert!(handle.ping(Duration::from_millis(10)).await);
    assert_eq!(issuer.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn ping_fails_once_the_owner_task_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let handle = AppHandle::spawn(
        jwt_app(dir.path()),
        Arc::new(PanickingIssuer),
        None,
        shared(300),
        None,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!handle.ping(Duration::from_secs(1)).await);
}

/// A fixed sample makes every wait exact. Sample 0 is the shortest wait of each backoff step:
/// each call takes 50 ms, the first fails at 0.05 s and waits 0.5 s, the second (0.55 s) fails
/// at 0.6 s and waits 1 s, the third (1.6 s) fails at 1.65 s and waits 2 s, and the fourth
/// starts at 3.65 s and is issued at 3.7 s.
#[tokio::test(start_paused = true)]
async fn a_fixed_sample_sets_the_backoff_to_the_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = FakeIssuer::new(3600);
    for _ in 0..3 {
        issuer.push(Err(UpstreamError::transient("server_error", "boom")));
    }
    let shared = shared(300).with_sample(|| 0.0);
    let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared, None);
    let ms = Duration::from_millis;
    tokio::time::sleep(ms(540)).await;
    assert_eq!(issuer.calls(), 1);
    assert_eq!(handle.snapshot().state, AppState::Failing);
    assert_eq!(handle.snapshot().consecutive_failures, 1);
    tokio::time::sleep(ms(20)).await; // 0.56 s
    assert_eq!(issuer.calls(), 2);
    tokio::time::sleep(ms(1030)).await; // 1.59 s
    assert_eq!(issuer.calls(), 2);
    tokio::time::sleep(ms(2050)).await; // 3.64 s
    assert_eq!(issuer.calls(), 3);
    assert_eq!(handle.snapshot().consecutive_failures, 3);
    tokio::time::sleep(ms(70)).await; // 3.71 s
    assert_eq!(issuer.calls(), 4);
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, AppState::Ready);
    assert_eq!(snapshot.consecutive_failures, 0);
}
