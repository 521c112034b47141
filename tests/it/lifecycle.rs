//! Grant lifecycles: token-exchange chains, needs_login, and what a dependant does while its
//! subject has no token.

use std::time::Duration;

use crate::support::{client_id, TestEnv};

async fn wait_calls(env: &TestEnv, app: &str, n: usize) {
    for _ in 0..200 {
        if env.calls_for(app).len() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{app}: fewer than {n} calls: {:?}", env.calls_for(app));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_is_fetched_in_order_and_re_exchanged_when_its_subject_changes() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("base");
    env.exchange_app("middle", "base");
    env.exchange_app("top", "middle");
    let daemon = env.daemon().await;
    for app in ["base", "middle", "top"] {
        daemon.wait_state(app, "ready", 10).await;
    }
    let calls = env.sim.calls();
    let first = |app: &str| {
        calls
            .iter()
            .position(|c| c.client_id.as_deref() == Some(&client_id(app)))
            .unwrap()
    };
    assert!(first("base") < first("middle") && first("middle") < first("top"));
    // Each exchange presented its subject's token of the time.
    let base_token = daemon.token("base").await;
    let middle_token = daemon.token("middle").await;
    assert_eq!(
        env.calls_for("middle")[0].params["subjectToken"],
        base_token
    );
    assert_eq!(env.calls_for("top")[0].params["subjectToken"], middle_token);
    let top_token = daemon.token("top").await;

    // A new token for the base ripples down the chain, one exchange per level.
    assert!(daemon.cli(&["refresh", "base"]).await.status.success());
    wait_calls(&env, "top", 2).await;
    let new_base = daemon.token("base").await;
    let middle_calls = env.calls_for("middle");
    assert_eq!(middle_calls.len(), 2);
    assert_eq!(middle_calls[1].params["subjectToken"], new_base);
    let new_middle = daemon.token("middle").await;
    assert_ne!(new_middle, middle_token);
    let top_calls = env.calls_for("top");
    assert_eq!(top_calls[1].params["subjectToken"], new_middle);
    // The simulator records top's call before the daemon has applied its answer: wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while daemon.token("top").await == top_token && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(daemon.token("top").await, top_token);
    // ...and nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.calls_for("middle").len(), 2);
    assert_eq!(env.calls_for("top").len(), 2);
    assert_eq!(env.calls_for("base").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependant_fails_while_its_subject_has_no_token_then_recovers() {
    let env = TestEnv::new(3600).await;
    env.authcode_app("portal", "http://127.0.0.1:8400/callback");
    env.exchange_app("downstream", "portal");
    let daemon = env.daemon().await;
    daemon.wait_state("portal", "needs_login", 10).await;
    let row = daemon.wait_state("downstream", "failing", 10).await;
    assert_eq!(row["last_error"]["code"], "subject_unavailable", "{row}");
    assert!(
        row["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs_login"),
        "{row}"
    );
    let (status, body) = daemon.get("/v1/apps/downstream/token").await;
    assert_eq!(status, 503, "{body}");
    assert!(env.calls_for("downstream").is_empty());

    // The subject logs in: the dependant exchanges its token at once, not at its next retry.
    let (status, answer, _) = env
        .sim_login(&daemon, "portal", "http://127.0.0.1:8400/callback")
        .await;
    assert_eq!(status, 200, "{answer}");
    daemon.wait_state("downstream", "ready", 5).await;
    let calls = env.calls_for("downstream");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].params["subjectToken"],
        daemon.token("portal").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refresh_token_without_another_source_needs_login_and_stops_calling() {
    let env = TestEnv::new(3600).await;
    env.refresh_app("reports", "seed-reports");
    // A seed the service no longer accepts: needs_login from the start.
    env.refresh_app("stranger", "seed-stranger");
    env.sim.revoke_refresh_tokens(&client_id("stranger"));
    let daemon = env.daemon().await;
    daemon.wait_state("reports", "ready", 10).await;
    daemon.wait_state("stranger", "needs_login", 10).await;
    let token_before = daemon.token("reports").await;
    // Every refresh token of the client is revoked; the seed file holds only the dead seed.
    env.sim.revoke_refresh_tokens(&client_id("reports"));
    let out = daemon.cli(&["refresh", "reports"]).await;
    assert!(!out.status.success());
    let row = daemon.wait_state("reports", "needs_login", 5).await;
    assert_eq!(row["last_error"]["code"], "needs_login", "{row}");
    assert!(row["next_refresh_at"].is_null(), "{row}");
    let calls = env.calls_for("reports").len();

    // The last good token is still valid: served until it expires (CONTRACT §4), even to a
    // request that wants more time left than it has, and without an upstream call.
    assert_eq!(daemon.token("reports").await, token_before);
    let (status, body) = daemon.get("/v1/apps/reports/token?min_ttl=999999").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], token_before.as_str());
    // An app in needs_login with nothing valid to serve answers 503 needs_login.
    let (status, body) = daemon.get("/v1/apps/stranger/token").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "needs_login");
    let (status, body) = daemon.get("/v1/apps/stranger/token?min_ttl=60").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "needs_login");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        env.calls_for("reports").len(),
        calls,
        "no calls while needs_login"
    );
    assert_eq!(
        env.calls_for("stranger").len(),
        1,
        "no calls while needs_login"
    );

    // `iamtokend refresh` is an explicit retry: a fresh seed in the file makes it work again.
    env.sim
        .seed_refresh_token(&client_id("reports"), "second-seed");
    std::fs::write(env.path("reports.refresh"), "second-seed").unwrap();
    let out = daemon.cli(&["refresh", "reports"]).await;
    assert!(out.status.success(), "{out:?}");
    daemon.wait_state("reports", "ready", 5).await;
    assert_ne!(daemon.token("reports").await, token_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_fault_is_failing_in_status_and_retried_only_at_max_backoff() {
    let env = TestEnv::new(3600).await;
    // max_backoff 30 s (TestEnv's main file): the next try is 30 s out, not a second away.
    env.jwt_app("misfit");
    env.sim.push_fault_for(
        &client_id("misfit"),
        iamtokend::sim::Fault::invalid_client(),
    );
    let daemon = env.daemon().await;
    let row = daemon.wait_state("misfit", "failing", 10).await;
    assert_eq!(row["last_error"]["code"], "invalid_client", "{row}");
    assert!(row["last_error"]["at"].is_string(), "{row}");
    let next = humantime::parse_rfc3339(row["next_refresh_at"].as_str().unwrap()).unwrap();
    let at = humantime::parse_rfc3339(row["last_error"]["at"].as_str().unwrap()).unwrap();
    let wait = next.duration_since(at).unwrap();
    assert!(
        (Duration::from_secs(29)..=Duration::from_secs(31)).contains(&wait),
        "retry in {wait:?}, not max_backoff"
    );

    // `status` shows it, as a table and as JSON, and exits non-zero.
    let out = daemon.cli(&["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("misfit") && table.contains("failing"),
        "{table}"
    );
    assert!(table.contains("invalid_client"), "{table}");
    let out = daemon.cli(&["status", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["apps"][0]["last_error"]["code"], "invalid_client");

    // Token requests while it backs off do not call upstream.
    for _ in 0..5 {
        let (status, body) = daemon.get("/v1/apps/misfit/token").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "token_unavailable");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.calls_for("misfit").len(), 1);
}
