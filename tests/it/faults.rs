//! Upstream faults against the simulator: each ends in the right state (read back through
//! `GET /v1/apps`), a served-or-refused answer per the contract, and no hot loop (the
//! simulator's call log is counted).
//!
//! Several apps share one daemon; faults are queued per app (`push_fault_for`), so the
//! cases run side by side and each app's calls are counted on their own.

use std::time::Duration;

use iamtokend::sim::Fault;

use crate::support::{client_id, Daemon, TestEnv};

fn raw_token(body: &str) -> Fault {
    Fault::Raw {
        status: 200,
        content_type: "application/json".to_owned(),
        body: body.to_owned(),
    }
}

/// A jwt-bearer app whose calls time out after `read_timeout`.
fn jwt_app_with_timeouts(env: &TestEnv, name: &str, read_timeout: &str) {
    env.jwt_app(name);
    env.append_app(
        name,
        &format!("[aws]\nconnect_timeout = \"1s\"\nread_timeout = \"{read_timeout}\"\n"),
    );
}

/// Each transient fault is retried with backoff and the app reaches `ready`; exactly one
/// call per fault plus the one that succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_until_ready() {
    let env = TestEnv::new(3600).await;
    let cases: Vec<(&str, Vec<Fault>)> = vec![
        ("e500", vec![Fault::server_error(), Fault::server_error()]),
        ("reset", vec![Fault::Reset, Fault::Reset]),
        ("garbled", vec![Fault::MalformedJson]),
        ("hang", vec![Fault::Delay(Duration::from_secs(4))]),
        (
            "zero",
            vec![raw_token(
                r#"{"accessToken":"t0","tokenType":"Bearer","expiresIn":0}"#,
            )],
        ),
        (
            "negative",
            vec![raw_token(
                r#"{"accessToken":"tn","tokenType":"Bearer","expiresIn":-30}"#,
            )],
        ),
        (
            "no-token",
            vec![raw_token(r#"{"tokenType":"Bearer","expiresIn":3600}"#)],
        ),
        (
            "empty-token",
            vec![raw_token(
                r#"{"accessToken":"","tokenType":"Bearer","expiresIn":3600}"#,
            )],
        ),
        (
            "past-i32",
            vec![raw_token(
                r#"{"accessToken":"tb","tokenType":"Bearer","expiresIn":1000000000000}"#,
            )],
        ),
        (
            "html",
            vec![Fault::Raw {
                status: 502,
                content_type: "text/html".into(),
                body: "<html>bad gateway</html>".into(),
            }],
        ),
        ("grant", vec![Fault::invalid_grant()]),
    ];
    for (name, faults) in &cases {
        jwt_app_with_timeouts(&env, name, "1s");
        for fault in faults {
            env.sim.push_fault_for(&client_id(name), fault.clone());
        }
    }
    let daemon = env.daemon().await;
    for (name, faults) in &cases {
        daemon.wait_state(name, "ready", 15).await;
        let (status, body) = daemon.get(&format!("/v1/apps/{name}/token")).await;
        assert_eq!(status, 200, "{name}: {body}");
        assert!(
            body["expires_in"].as_u64().unwrap() > 3000,
            "{name}: {body}"
        );
        let calls = env.calls_for(name);
        assert_eq!(
            calls.len(),
            faults.len() + 1,
            "{name}: one call per fault, then the good one: {calls:#?}"
        );
    }
    // The hang was cut at the configured 1 s read timeout, not the 4 s the upstream took:
    // its retry was answered while the simulator was still sitting on the first call.
    let hang = env.calls_for("hang");
    assert_eq!(hang[1].status, 200);
    let logs = daemon.logs();
    assert!(logs.contains("timeout"), "the timeout is logged");
    assert!(!logs.contains("panicked"));
}

/// Faults that do not stop: the app stays `failing`, nothing is served (503
/// `token_unavailable` carrying the upstream error), and the retries back off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_faults_back_off_without_a_hot_loop() {
    let env = TestEnv::new(3600).await;
    let cases: Vec<(&str, Fault, &str)> = vec![
        ("e500", Fault::server_error(), "server_error"),
        ("reset", Fault::Reset, "connection_failed"),
        ("slow", Fault::slow_down(), "slow_down"),
        (
            "zero",
            raw_token(r#"{"accessToken":"t0","tokenType":"Bearer","expiresIn":0}"#),
            "bad_answer",
        ),
        ("hang", Fault::Delay(Duration::from_secs(30)), "timeout"),
    ];
    for (name, fault, _) in &cases {
        jwt_app_with_timeouts(&env, name, "1s");
        for _ in 0..200 {
            env.sim.push_fault_for(&client_id(name), fault.clone());
        }
    }
    let daemon = env.daemon().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (name, _, code) in &cases {
        let row = daemon.app(name).await;
        assert!(
            row["state"] == "failing" || row["state"] == "refreshing",
            "{name}: {row}"
        );
        let (status, body) = daemon.get(&format!("/v1/apps/{name}/token")).await;
        assert_eq!(status, 503, "{name}: {body}");
        assert_eq!(body["error"]["code"], "token_unavailable", "{body}");
        let row = daemon.app(name).await;
        if row["state"] == "failing" {
            assert_eq!(row["last_error"]["code"], *code, "{name}: {row}");
        }
        // Backoff 0.5-1 s, 1-2 s, 2-4 s...: at most 4 calls in 4 s (a hot loop makes hundreds;
        // a hang spends 1 s per call on top).
        let n = env.calls_for(name).len();
        assert!((1..=4).contains(&n), "{name}: {n} calls in 4 s");
    }
}

/// `expiresIn` past what is sane is clamped to 30 days (documented), served, and does not
/// overflow any instant arithmetic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_lifetime_is_clamped() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("huge");
    env.sim.push_fault_for(
        &client_id("huge"),
        raw_token(r#"{"accessToken":"tok-huge","tokenType":"Bearer","expiresIn":2147483647}"#),
    );
    let daemon = env.daemon().await;
    daemon.wait_state("huge", "ready", 10).await;
    let (status, body) = daemon.get("/v1/apps/huge/token").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "tok-huge");
    let ttl = body["expires_in"].as_u64().unwrap();
    assert!(
        ttl <= 30 * 86_400 && ttl > 29 * 86_400,
        "clamped to 30 days: {ttl}"
    );
    // A min_ttl past what any token gives is capped at 90 % of the lifetime (27 days): the
    // fresh token meets it, no call (CONTRACT §4).
    let (status, body) = daemon.get("/v1/apps/huge/token?min_ttl=31536000").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], "tok-huge");
    assert_eq!(env.calls_for("huge").len(), 1);
    // A forced refresh after it calls, and the simulator answers normally.
    let (status, body) = daemon.post("/v1/apps/huge/refresh", None).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["access_token"], "tok-huge");
    assert_eq!(env.calls_for("huge").len(), 2);
}

/// `invalid_grant` for a refresh-token app whose tokens were revoked: `needs_login`, the
/// last good token served until it expires, and no more calls until something changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_refresh_token_needs_login_and_stops_calling() {
    let env = TestEnv::new(3600).await;
    env.refresh_app("reports", "seed-refresh-1");
    let daemon = env.daemon().await;
    daemon.wait_state("reports", "ready", 10).await;
    env.sim.revoke_refresh_tokens(&client_id("reports"));
    let (status, body) = daemon.post("/v1/apps/reports/refresh", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "needs_login", "{body}");
    daemon.wait_state("reports", "needs_login", 5).await;
    // Still valid: served (CONTRACT §4: the last good token until it actually expires).
    let (status, _) = daemon.get("/v1/apps/reports/token").await;
    assert_eq!(status, 200);
    let before = env.calls_for("reports").len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = daemon.get("/v1/apps/reports/token").await;
    assert_eq!(
        env.calls_for("reports").len(),
        before,
        "no calls while needs_login"
    );
}

/// A token that expires while the upstream is down is never served past expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_never_served_during_an_outage() {
    let env = TestEnv::new(3).await;
    jwt_app_with_timeouts(&env, "short", "1s");
    let daemon = env.daemon().await;
    daemon.wait_state("short", "ready", 10).await;
    for _ in 0..100 {
        env.sim
            .push_fault_for(&client_id("short"), Fault::server_error());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut saw_expired = false;
    while tokio::time::Instant::now() < deadline {
        let (status, body) = daemon.get("/v1/apps/short/token").await;
        match status {
            200 => assert!(body["expires_in"].as_u64().unwrap() <= 3, "{body}"),
            503 => {
                assert_eq!(body["error"]["code"], "token_unavailable", "{body}");
                saw_expired = true;
            }
            other => panic!("{other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_expired, "the 3 s token ran out during the outage");
    assert_eq!(daemon.app("short").await["state"], "expired");
    assert!(env.calls_for("short").len() < 10);
    drop::<Daemon>(daemon);
}

/// `[aws] ca_bundle` builds the app's own HTTP client (extra trust roots); it and the SDK's
/// default client both honour the proxy environment: a dead `HTTP_PROXY` makes the calls
/// fail, and `NO_PROXY` naming the endpoint's host sends them direct again. (The simulator
/// speaks plain HTTP, so this checks the client and proxy wiring, not a TLS handshake.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_bundle_client_and_proxy_environment() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("plain");
    env.jwt_app("bundled");
    let bundle = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config/valid/full/apps/intercept-ca.pem");
    env.append_app(
        "bundled",
        &format!("[aws]\nca_bundle = \"{}\"\n", bundle.display()),
    );

    // A proxy nobody listens on: every call fails to connect, the apps keep retrying.
    let dead_proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", dead_proxy.local_addr().unwrap());
    drop(dead_proxy);
    let daemon = env
        .daemon_with(&[("HTTP_PROXY", &proxy_url), ("HTTPS_PROXY", &proxy_url)])
        .await;
    for name in ["plain", "bundled"] {
        let row = daemon.wait_state(name, "failing", 10).await;
        assert_eq!(row["last_error"]["code"], "connection_failed", "{row}");
        assert!(
            env.calls_for(name).is_empty(),
            "{name} went around the proxy"
        );
    }
    daemon.stop();

    let daemon = env
        .daemon_with(&[
            ("HTTP_PROXY", &proxy_url),
            ("HTTPS_PROXY", &proxy_url),
            ("NO_PROXY", "127.0.0.1"),
        ])
        .await;
    for name in ["plain", "bundled"] {
        daemon.wait_state(name, "ready", 10).await;
        assert_eq!(daemon.get(&format!("/v1/apps/{name}/token")).await.0, 200);
    }
}
