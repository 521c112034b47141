//! Every grant type reaches `ready` and serves exactly the token the simulator issued.

use crate::support::{client_id, TestEnv};
use iamtokend::sim::Service;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_grant_reaches_ready_and_serves_the_simulators_token() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    env.refresh_app("reports", "seed-refresh-token-1");
    env.exchange_app("warehouse", "analytics");
    env.authcode_app("portal", "http://127.0.0.1:8400/callback");
    let daemon = env.daemon().await;
    for app in ["analytics", "reports", "warehouse"] {
        daemon.wait_state(app, "ready", 10).await;
    }
    daemon.wait_state("portal", "needs_login", 5).await;

    // The CLI prints the token the simulator issued, and nothing else.
    let out = daemon.cli(&["token", "analytics"]).await;
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, format!("{}\n", daemon.token("analytics").await));

    // Every call was correctly signed, and each grant sent what it should.
    let calls = env.sim.calls();
    assert!(calls.iter().all(|c| c.signature_valid), "{calls:?}");
    let grant_of = |app: &str| {
        calls
            .iter()
            .filter(|c| {
                c.service == Service::Oidc && c.client_id.as_deref() == Some(&client_id(app))
            })
            .map(|c| c.grant_type.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        grant_of("analytics"),
        ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    );
    assert_eq!(grant_of("reports"), ["refresh_token"]);
    assert_eq!(
        grant_of("warehouse"),
        ["urn:ietf:params:oauth:grant-type:token-exchange"]
    );
    let reports = calls
        .iter()
        .find(|c| c.client_id.as_deref() == Some(&client_id("reports")))
        .unwrap();
    assert_eq!(reports.params["refreshToken"], "seed-refresh-token-1");
    // token-exchange presented analytics' current access token as the subject.
    let exchange = calls
        .iter()
        .find(|c| c.client_id.as_deref() == Some(&client_id("warehouse")))
        .unwrap();
    assert_eq!(
        exchange.params["subjectToken"],
        daemon.token("analytics").await
    );

    // The authorization-code app logs in with a code + verifier issued for its challenge.
    let (status, answer, body) = env
        .sim_login(&daemon, "portal", "http://127.0.0.1:8400/callback")
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state"], "ready");
    daemon.wait_state("portal", "ready", 5).await;
    daemon.token("portal").await;
    // A used code is refused by the simulator: the login answer says so.
    let (status, answer) = daemon.post("/v1/apps/portal/login", Some(&body)).await;
    assert_eq!(status, 503, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertion_file_change_is_picked_up_on_the_next_refresh() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    // The app holds no refresh token (the simulator gives none for jwt-bearer by default), so
    // a forced refresh runs the jwt-bearer grant again and must re-read the file.
    std::fs::write(
        env.path("analytics.jwt"),
        crate::support::assertion("rotated-user"),
    )
    .unwrap();
    let out = daemon.cli(&["refresh", "analytics"]).await;
    assert!(out.status.success(), "{out:?}");
    let assertions: Vec<String> = env
        .sim
        .calls()
        .iter()
        .filter_map(|c| c.params.get("assertion").cloned())
        .collect();
    assert_eq!(assertions.len(), 2);
    assert_eq!(assertions[0], crate::support::assertion("analytics"));
    assert_eq!(assertions[1], crate::support::assertion("rotated-user"));
}

/// Issue 14 item 5: the command used to inherit the daemon's whole environment, including
/// its `AWS_SECRET_ACCESS_KEY`. It gets the README's allowlist only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertion_command_runs_with_the_allowlisted_environment_only() {
    let env = TestEnv::new(3600).await;
    let jwt = env.path("analytics.jwt");
    std::fs::write(&jwt, crate::support::assertion("analytics")).unwrap();
    let dump = env.path("command-env.txt");
    env.write_app(
        "analytics",
        &format!(
            "grant = \"jwt-bearer\"\nassertion_command = [\"sh\", \"-c\", \"env > {}; cat {}\"]\n",
            dump.display(),
            jwt.display()
        ),
    );
    let daemon = env
        .daemon_with(&[("LANG", "C.UTF-8"), ("UNRELATED_SETTING", "x")])
        .await;
    daemon.wait_state("analytics", "ready", 10).await;
    let text = std::fs::read_to_string(&dump).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    for wanted in ["PATH", "HOME", "LANG"] {
        assert!(names.contains(&wanted), "{wanted} missing: {names:?}");
    }
    assert!(
        !text.contains(&env.options.secret_access_key),
        "the daemon's secret key reached the command"
    );
    for name in &names {
        assert!(
            !name.starts_with("AWS_") && *name != "UNRELATED_SETTING" && *name != "RUST_LOG",
            "{name} reached the command: {names:?}"
        );
    }
}
