//! SIGHUP reload: apps added, removed and changed take effect; unchanged apps keep their
//! tokens with no upstream call, and so do apps whose change leaves the grant alone (only
//! `[access]`); a config with any error is rejected whole.

use crate::support::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_removes_and_changes_apps_and_leaves_the_rest_alone() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("keeper");
    env.jwt_app("changer");
    env.refresh_app("goner", "seed-goner");
    let daemon = env.daemon().await;
    for app in ["keeper", "changer", "goner"] {
        daemon.wait_state(app, "ready", 10).await;
    }
    let kept = daemon.token("keeper").await;
    let changed = daemon.token("changer").await;
    assert!(env.path("state/goner.json").exists());
    let keeper_calls = env.calls_for("keeper").len();
    let changer_calls = env.calls_for("changer").len();

    env.jwt_app("newcomer");
    std::fs::remove_file(env.path("apps.d/goner.toml")).unwrap();
    std::fs::write(
        env.path("changer-2.jwt"),
        crate::support::assertion("changer"),
    )
    .unwrap();
    env.write_app(
        "changer",
        &format!(
            "grant = \"jwt-bearer\"\nassertion_file = \"{}\"\n",
            env.path("changer-2.jwt").display()
        ),
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("config reloaded", 1, 10).await;

    daemon.wait_state("newcomer", "ready", 10).await;
    daemon.wait_state("changer", "ready", 10).await;
    assert_ne!(
        daemon.token("changer").await,
        changed,
        "changed app: new token"
    );
    assert_eq!(env.calls_for("changer").len(), changer_calls + 1);
    assert_eq!(
        daemon.token("keeper").await,
        kept,
        "unchanged app: same token"
    );
    assert_eq!(
        env.calls_for("keeper").len(),
        keeper_calls,
        "unchanged app: no call"
    );
    let (status, body) = daemon.get("/v1/apps/goner/token").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_app");
    assert!(
        !env.path("state/goner.json").exists(),
        "a removed app's refresh token is deleted"
    );
    let (_, apps) = daemon.get("/v1/apps").await;
    let names: Vec<&str> = apps["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["changer", "keeper", "newcomer"]);
    assert_eq!(daemon.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_with_an_error_is_rejected_whole_and_the_running_one_stays() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("steady");
    let daemon = env.daemon().await;
    daemon.wait_state("steady", "ready", 10).await;
    let before = daemon.token("steady").await;

    // One good new app and one broken one: neither is taken.
    env.jwt_app("hopeful");
    std::fs::write(
        env.path("apps.d/broken.toml"),
        "client_id = \"arn:aws:sso::123456789012:application/ssoins-1/apl-1\"\ngrant = \"telepathy\"\n",
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    let logs = daemon.wait_log("reload rejected", 1, 10).await;
    assert!(
        logs.contains("broken.toml:2:9"),
        "the error is logged with file:line:col:\n{logs}"
    );
    let (status, _) = daemon.get("/v1/apps/hopeful/token").await;
    assert_eq!(status, 404, "nothing of a rejected config is applied");
    assert_eq!(daemon.token("steady").await, before);
    assert_eq!(env.calls_for("hopeful").len(), 0);

    // Fixed: the next SIGHUP takes it.
    std::fs::remove_file(env.path("apps.d/broken.toml")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("config reloaded", 1, 10).await;
    daemon.wait_state("hopeful", "ready", 10).await;
    assert_eq!(daemon.token("steady").await, before);
    assert_eq!(daemon.stop().code(), Some(0));
}

/// A change of `[access]` alone applies at once and keeps the token: no upstream call, the
/// same token once access is given back (CONTRACT §6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_only_change_applies_and_keeps_the_token() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("guarded");
    let daemon = env.daemon().await;
    daemon.wait_state("guarded", "ready", 10).await;
    let token = daemon.token("guarded").await;
    let calls = env.calls_for("guarded").len();

    // Somebody else only: we are refused from now on.
    env.append_app("guarded", "\n[access]\nuids = [65534]\n");
    daemon.signal(libc::SIGHUP);
    let logs = daemon.wait_log("config reloaded", 1, 10).await;
    assert!(logs.contains("reconfigured=[\"guarded\"]"), "{logs}");
    let (status, body) = daemon.get("/v1/apps/guarded/token").await;
    assert_eq!(status, 403, "the new [access] applies: {body}");

    // Us again: the same token, still no call.
    let me = nix::unistd::geteuid().as_raw();
    env.jwt_app("guarded");
    env.append_app("guarded", &format!("\n[access]\nuids = [{me}]\n"));
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("config reloaded", 2, 10).await;
    assert_eq!(daemon.token("guarded").await, token, "the token was kept");
    assert_eq!(
        env.calls_for("guarded").len(),
        calls,
        "an [access] change made an upstream call"
    );
    assert_eq!(daemon.stop().code(), Some(0));
}
