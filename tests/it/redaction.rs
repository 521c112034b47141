//! Planted canary secrets never appear in the daemon's logs, even at debug level.

use crate::support::{client_id, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secrets_never_reach_the_logs() {
    let env = TestEnv::new(3600).await;
    let assertion = crate::support::assertion("canary-subject-5d1f");
    env.jwt_app("analytics");
    std::fs::write(env.path("analytics.jwt"), &assertion).unwrap();
    env.refresh_app("reports", "canary-refresh-7b3e9");
    env.exchange_app("warehouse", "analytics");
    env.sim
        .set_issue_refresh_token(&client_id("analytics"), true);
    let daemon = env.daemon_with(&[("RUST_LOG", "trace")]).await;
    for app in ["analytics", "reports", "warehouse"] {
        daemon.wait_state(app, "ready", 10).await;
    }
    // Make the daemon use and rotate secrets: forced refreshes, a served token.
    let mut served = Vec::new();
    for app in ["analytics", "reports", "warehouse"] {
        assert!(daemon.cli(&["refresh", app]).await.status.success());
        let out = daemon.cli(&["token", app]).await;
        served.push(String::from_utf8(out.stdout).unwrap().trim().to_owned());
    }
    let status = daemon.cli(&["status", "--format", "json"]).await;
    let logs = daemon.logs();
    assert!(logs.contains("token issued"), "logs are empty?\n{logs}");
    let mut canaries: Vec<String> = vec![
        assertion.clone(),
        assertion.split('.').nth(2).unwrap().to_owned(),
        "canary-refresh-7b3e9".into(),
        env.options.secret_access_key.clone(),
    ];
    canaries.extend(served);
    for call in env.sim.calls() {
        for key in ["refreshToken", "subjectToken", "assertion"] {
            if let Some(v) = call.params.get(key) {
                canaries.push(v.clone());
            }
        }
    }
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    for canary in &canaries {
        assert!(!canary.is_empty());
        assert!(!logs.contains(canary.as_str()), "a secret reached the log");
        assert!(
            !status_text.contains(canary.as_str()),
            "a secret reached status"
        );
    }
}
