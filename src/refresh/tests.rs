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
    /// When each call started (tokio time: paused in these tests).
    starts: Mutex<Vec<tokio::time::Instant>>,
}

impl FakeIssuer {
    fn new(lifetime: u64) -> Arc<FakeIssuer> {
        Arc::new(FakeIssuer {
            script: Mutex::new(VecDeque::new()),
            lifetime,
            calls: AtomicUsize::new(0),
            grants: Mutex::new(Vec::new()),
            delay: Duration::from_millis(50),
            starts: Mutex::new(Vec::new()),
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
            self.starts
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now());
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
        Clock::anchored_at(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
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
    // 600 s token, 100 s later (500 s left); ask for 700 s left, capped at 90 % of the
    // lifetime (540 s): every request needs a refresh, one call serves all.
    tokio::time::sleep(Duration::from_secs(100)).await;
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
    let shared = shared(30);
    let clock = shared.clock.clone();
    let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared, None);
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
        handle.snapshot().effective_state(clock.now()),
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
        starts: Mutex::new(Vec::new()),
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

/// Suspends on the paused clock: `Clock::suspend_for` adds suspended time without tokio's
/// clock moving, as a closed lid does to `CLOCK_MONOTONIC`; the clock's resume detector runs
/// as in the daemon. Sample 0.5: the resume jitter is exactly 1 s.
mod suspend {
    use super::*;
    use crate::clock::{BootInstant, RESUME_CHECK};

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MIN: u64 = 60;

    struct Running {
        handle: AppHandle,
        issuer: Arc<FakeIssuer>,
        clock: Clock,
        _dir: tempfile::TempDir,
    }

    /// A jwt app with 1 h tokens (refreshed at 30 min: jitter 0), ready, its first token
    /// issued at boottime ~0.05 s; and the resume detector.
    async fn running() -> Running {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(3600);
        let shared = shared(300).with_sample(|| 0.5);
        let clock = shared.clock.clone();
        tokio::spawn(clock.clone().watch_resumes());
        let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared, None);
        until_ready(&handle).await;
        assert_eq!(issuer.calls(), 1);
        Running {
            handle,
            issuer,
            clock,
            _dir: dir,
        }
    }

    fn served(token: &Result<Arc<crate::refresh::Token>, ServeError>) -> String {
        token.as_ref().unwrap().access_token.expose().to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_that_died_in_a_suspend_is_never_served_and_a_request_refreshes_at_once() {
        let r = running().await;
        tokio::time::sleep(S(10 * MIN)).await;
        r.clock.suspend_for(S(120 * MIN));
        // Before any timer or detector ran: the snapshot already judges on the boottime now.
        let now = r.clock.now();
        let snapshot = r.handle.snapshot();
        assert!(snapshot.valid_token(now).is_none());
        assert_eq!(snapshot.effective_state(now), AppState::Expired);
        // A request never gets the old token: it makes the owner call at once (no jitter).
        let token = r.handle.token(Duration::ZERO).await;
        assert_eq!(served(&token), "token-2");
        assert_eq!(r.issuer.calls(), 2);
        // The new one lives its hour from the resume, in boottime and in wall terms.
        let token = token.unwrap();
        let left = token.expires_at - r.clock.now();
        assert!(left > S(3599) && left <= S(3600), "{left:?}");
        let wall = r.clock.wall(BootInstant::from_secs(130 * MIN + 3600));
        let off = token.expires_at_wall.duration_since(wall).unwrap();
        assert!(off < S(1), "{off:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_refreshes_on_its_own_right_after_a_long_suspend() {
        let r = running().await;
        tokio::time::sleep(S(10 * MIN)).await;
        r.clock.suspend_for(S(120 * MIN));
        // The detector notices within its tick; the owner then waits its 1 s of jitter.
        tokio::time::sleep(RESUME_CHECK).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(r.issuer.calls(), 1, "the jitter is 1 s at sample 0.5");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(r.issuer.calls(), 2);
        let now = r.clock.now();
        let snapshot = r.handle.snapshot();
        assert_eq!(snapshot.effective_state(now), AppState::Ready);
        assert_eq!(
            snapshot.valid_token(now).unwrap().access_token.expose(),
            "token-2"
        );
        // And not again until its own refresh point, 30 min on.
        tokio::time::sleep(S(29 * MIN)).await;
        assert_eq!(r.issuer.calls(), 2);
        tokio::time::sleep(S(MIN + 1)).await;
        assert_eq!(r.issuer.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_suspend_keeps_the_token_served_and_moves_the_refresh_earlier() {
        let r = running().await;
        // 50 min left, then 10 min suspended: 40 min left, still served, no call.
        tokio::time::sleep(S(10 * MIN)).await;
        let due_wall = r.handle.snapshot().next_refresh_at.unwrap();
        r.clock.suspend_for(S(10 * MIN));
        let token = r.handle.token(S(15 * MIN)).await;
        assert_eq!(served(&token), "token-1");
        let left = token.unwrap().expires_at - r.clock.now();
        assert!(left <= S(40 * MIN) && left > S(39 * MIN), "{left:?}");
        assert_eq!(r.issuer.calls(), 1);
        // The refresh point (30 min on the boottime timeline) is now 10 min of tokio time
        // away, not 20: the owner recomputed its deadline on the resume.
        assert_eq!(r.handle.snapshot().next_refresh_at.unwrap(), due_wall);
        tokio::time::sleep(S(10 * MIN) - S(5)).await;
        assert_eq!(r.issuer.calls(), 1);
        tokio::time::sleep(S(6)).await;
        assert_eq!(r.issuer.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspend_past_the_refresh_point_serves_the_live_token_and_refreshes_at_once() {
        let r = running().await;
        tokio::time::sleep(S(10 * MIN)).await;
        // 25 min suspended: past the 30 min refresh point, 25 min of life left.
        r.clock.suspend_for(S(25 * MIN));
        let token = r.handle.token(Duration::ZERO).await;
        assert_eq!(served(&token), "token-1");
        tokio::time::sleep(RESUME_CHECK + S(2)).await;
        assert_eq!(r.issuer.calls(), 2);
        let resumed_at = r.clock.wall(BootInstant::from_secs(35 * MIN));
        let next = r.handle.snapshot().next_refresh_at.unwrap();
        // Refreshed right after the resume: the next refresh is ~30 min after it.
        let after = next.duration_since(resumed_at).unwrap();
        assert!(
            after >= S(30 * MIN) && after <= S(30 * MIN + 10),
            "{after:?}"
        );
    }

    /// NTP or `date -s` stepping the system clock 2 h forward, then 2 h back: no resume, no
    /// call, the same token with the same life and the same printed times.
    #[tokio::test(start_paused = true)]
    async fn a_wall_step_either_way_neither_refreshes_nor_freshens_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(3600);
        let start = std::time::UNIX_EPOCH + S(1_800_000_000);
        let live = Arc::new(Mutex::new(start));
        let source = live.clone();
        let clock = Clock::with_wall_source(move || *source.lock().unwrap());
        let mut shared = shared(300).with_sample(|| 0.5);
        shared.clock = clock.clone();
        tokio::spawn(clock.clone().watch_resumes());
        let resumes = clock.resumes();
        let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared, None);
        until_ready(&handle).await;
        let before = handle.snapshot();
        let token = before.token.clone().unwrap();
        for (at, step) in [(5 * MIN, 7200i64), (10 * MIN, -7200)] {
            tokio::time::sleep_until(clock.deadline(BootInstant::from_secs(at))).await;
            let real = start + S(at);
            *live.lock().unwrap() = if step > 0 {
                real + S(step as u64)
            } else {
                real - S((-step) as u64)
            };
            tokio::time::sleep(RESUME_CHECK * 2).await;
            assert!(!resumes.has_changed().unwrap(), "a wall step is no resume");
            let served = handle.token(Duration::ZERO).await.unwrap();
            assert!(Arc::ptr_eq(&served, &token));
            assert_eq!(
                served.expires_at - clock.now(),
                S(3600) - S(at) - RESUME_CHECK * 2 + Duration::from_millis(50)
            );
            let now = handle.snapshot();
            assert_eq!(now.next_refresh_at, before.next_refresh_at);
            assert_eq!(served.expires_at_wall, token.expires_at_wall);
        }
        assert_eq!(issuer.calls(), 1);
        // The refresh still comes at its point on the daemon's timeline (30 min after the
        // issue at 0.05 s), not early or late by the steps.
        tokio::time::sleep_until(clock.deadline(BootInstant::from_secs(30 * MIN))).await;
        assert_eq!(issuer.calls(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(issuer.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_backoff_that_ran_out_in_the_suspend_retries_after_the_resume() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = FakeIssuer::new(3600);
        issuer.push(Err(UpstreamError::ConfigFault {
            code: "access_denied".into(),
            message: "no".into(),
        }));
        let shared = shared(300).with_sample(|| 0.5);
        let clock = shared.clock.clone();
        tokio::spawn(clock.clone().watch_resumes());
        let handle = AppHandle::spawn(jwt_app(dir.path()), issuer.clone(), None, shared, None);
        let mut rx = handle.subscribe();
        rx.wait_for(|s| s.state == AppState::Failing).await.unwrap();
        // A config fault waits max_backoff (300 s); 10 min of suspend run it out.
        clock.suspend_for(S(10 * MIN));
        tokio::time::sleep(RESUME_CHECK + S(2)).await;
        assert_eq!(issuer.calls(), 2);
        assert_eq!(handle.snapshot().state, AppState::Ready);
    }
}

/// The calls' start times, as offsets from the first.
fn start_offsets(issuer: &FakeIssuer) -> Vec<Duration> {
    let starts = issuer.starts.lock().unwrap();
    starts.iter().map(|s| *s - starts[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn a_forced_refresh_right_after_a_call_waits_for_the_next_slot_and_shares_it() {
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
    // 50 ms after the first call started: the next forced call starts 1 s after it, and
    // every forced refresh arriving meanwhile shares it.
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(40 * i)).await;
            h.refresh().await
        }));
    }
    let mut tokens = std::collections::BTreeSet::new();
    for t in tasks {
        tokens.insert(t.await.unwrap().unwrap().access_token.expose().to_owned());
    }
    assert_eq!(tokens, ["token-2".to_owned()].into());
    assert_eq!(issuer.calls(), 2);
    assert_eq!(
        start_offsets(&issuer),
        [Duration::ZERO, Duration::from_secs(1)]
    );
    // More than a second after the last call started, a forced refresh calls at once.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = tokio::time::Instant::now();
    let t = handle.refresh().await.unwrap();
    assert_eq!(t.access_token.expose(), "token-3");
    assert_eq!(
        *issuer.starts.lock().unwrap().last().unwrap(),
        before,
        "no wait"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flood_of_forced_refreshes_makes_one_call_a_second() {
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
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for i in 0..30u64 {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(7 * i)).await;
            let mut answered = 0;
            while tokio::time::Instant::now() < end {
                h.refresh().await.unwrap();
                answered += 1;
            }
            answered
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert!(answered >= 30 * 5, "every request answered, {answered}");
    let offsets = start_offsets(&issuer);
    // The first call, then one a second: t = 1, 2, 3, 4, 5 (the last serves requests that
    // arrived just before the end).
    assert_eq!(
        offsets,
        (0..=5).map(Duration::from_secs).collect::<Vec<_>>(),
        "call starts"
    );
}

#[tokio::test(start_paused = true)]
async fn a_min_ttl_no_token_could_meet_is_capped_at_90_percent_of_the_lifetime() {
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
    // A fresh 1 h token meets min_ttl 999999 capped at 3240 s: no call.
    for _ in 0..50 {
        let t = handle.token(Duration::from_secs(999_999)).await.unwrap();
        assert_eq!(t.access_token.expose(), "token-1");
    }
    assert_eq!(issuer.calls(), 1);
    // 400 s later 3200 s are left, under the cap: one call, shared, then served again.
    tokio::time::sleep(Duration::from_secs(400)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            h.token(Duration::from_secs(999_999)).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().access_token.expose(), "token-2");
    }
    handle.token(Duration::from_secs(999_999)).await.unwrap();
    assert_eq!(issuer.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_min_ttl_refresh_keeps_to_the_one_second_slot() {
    let dir = tempfile::tempdir().unwrap();
    // 20 s tokens (min_ttl 60 s capped at 18 s): every request past 2 s of a token's life
    // wants a call, long before the owner's own refresh at 10 s; the slot keeps it to one a
    // second.
    let issuer = FakeIssuer::new(20);
    let handle = Arc::new(AppHandle::spawn(
        jwt_app(dir.path()),
        issuer.clone(),
        None,
        shared(300),
        None,
    ));
    until_ready(&handle).await;
    let end = tokio::time::Instant::now() + Duration::from_millis(3500);
    while tokio::time::Instant::now() < end {
        let _ = handle.token(Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let offsets = start_offsets(&issuer);
    assert!(
        offsets
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_secs(1)),
        "{offsets:?}"
    );
    assert!((2..=5).contains(&offsets.len()), "{offsets:?}");
}
