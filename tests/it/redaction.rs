//! Planted canary secrets never appear in the daemon's logs (at trace level), in error
//! messages, or in `status` output; and the processes that hold secrets are not dumpable.
//!
//! Canaries sit in every secret position: the assertion file, the refresh token file, the
//! access/refresh/id tokens of an upstream answer, the login code and PKCE verifier handed in
//! over the socket (good and bad ones), the role credentials STS returns, and the AWS secret
//! key the daemon signs with. The daemon is made to use, rotate, send and fail with them.

use iamtokend::secret::Secret;
use iamtokend::sim::Fault;

use crate::support::{client_id, TestEnv};

const ROLE: &str = "arn:aws:iam::123456789012:role/CanaryTIP";

/// The soft and hard core file size limits of process `pid`, and the `/proc/PID/limits` line
/// they were read from.
fn core_limits(pid: u32) -> (Vec<String>, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap()
        .to_owned();
    let soft_hard = core.split_whitespace().collect::<Vec<_>>()[4..6]
        .iter()
        .map(|s| s.to_string())
        .collect();
    (soft_hard, core)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secrets_never_reach_logs_errors_or_status() {
    let env = TestEnv::new(3600).await;
    // Assertion file.
    let assertion = crate::support::assertion("canary-subject-5d1f");
    env.jwt_app("analytics");
    std::fs::write(env.path("analytics.jwt"), &assertion).unwrap();
    // Refresh token file.
    env.refresh_app("reports", "canary-refresh-file-7b3e9");
    // Token exchange (the subject token is a secret too).
    env.exchange_app("warehouse", "analytics");
    env.sim
        .set_issue_refresh_token(&client_id("analytics"), true);
    // Upstream answer carrying canary access, refresh and id tokens.
    env.jwt_app("planted");
    env.sim.push_fault_for(
        &client_id("planted"),
        Fault::Raw {
            status: 200,
            content_type: "application/json".into(),
            body: r#"{"accessToken":"canary-access-91ce","tokenType":"Bearer","expiresIn":3600,
                      "refreshToken":"canary-answer-refresh-44d0","idToken":"canary-id-token-e2a7"}"#
                .into(),
        },
    );
    // Authorization code login.
    env.authcode_app("portal", "http://127.0.0.1:8400/callback");
    // Role credentials from STS.
    std::fs::write(
        env.path("roled.jwt"),
        crate::support::assertion("canary-role"),
    )
    .unwrap();
    env.write_app(
        "roled",
        &format!(
            "grant = \"jwt-bearer\"\nscopes = [\"openid\", \"aws\", \"sts:identity_context\"]\n\
             assertion_file = \"{}\"\n[role]\narn = \"{ROLE}\"\nendpoint_url = \"{}\"\n",
            env.path("roled.jwt").display(),
            env.sim.endpoint_url()
        ),
    );

    let daemon = env.daemon_with(&[("RUST_LOG", "trace")]).await;
    for app in ["analytics", "reports", "warehouse", "planted", "roled"] {
        daemon.wait_state(app, "ready", 10).await;
    }

    // Login: a bad code and verifier first (refused upstream), then good ones.
    let verifier = Secret::new("canary-verifier-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFG");
    let code = env.sim.issue_auth_code(
        &client_id("portal"),
        "http://127.0.0.1:8400/callback",
        &iamtokend::pkce::challenge(&verifier),
    );
    let bad = serde_json::json!({"code": "canary-bad-code-5150", "code_verifier": "canary-bad-verifier-6161",
                                 "redirect_uri": "http://127.0.0.1:8400/callback"});
    let (status, bad_answer) = daemon.post("/v1/apps/portal/login", Some(&bad)).await;
    assert_ne!(status, 200);
    let good = serde_json::json!({"code": code, "code_verifier": verifier.expose(),
                                  "redirect_uri": "http://127.0.0.1:8400/callback"});
    let (status, body) = daemon.post("/v1/apps/portal/login", Some(&good)).await;
    assert_eq!(status, 200, "{body}");
    // A replayed code is refused: one more error path with a secret in hand.
    let (status, replay_answer) = daemon.post("/v1/apps/portal/login", Some(&good)).await;
    assert_ne!(status, 200);

    // Use and rotate everything: forced refreshes (the planted refresh token is sent and
    // refused, so the app falls back to its assertion), served tokens, credentials.
    let mut outputs = vec![bad_answer.to_string(), replay_answer.to_string()];
    let mut served = Vec::new();
    for app in [
        "analytics",
        "reports",
        "warehouse",
        "planted",
        "portal",
        "roled",
    ] {
        let out = daemon.cli(&["refresh", app]).await;
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
        let out = daemon.cli(&["token", app, "--format", "json"]).await;
        assert!(out.status.success(), "{app}: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        served.push(json["access_token"].as_str().unwrap().to_owned());
        if let Some(id) = json["id_token"].as_str() {
            served.push(id.to_owned());
        }
    }
    let creds = daemon.cli(&["credential-process", "roled"]).await;
    assert!(creds.status.success(), "{creds:?}");
    let creds: serde_json::Value = serde_json::from_slice(&creds.stdout).unwrap();
    served.push(creds["SecretAccessKey"].as_str().unwrap().to_owned());
    served.push(creds["SessionToken"].as_str().unwrap().to_owned());
    // Failures whose messages could carry a secret: an app made to fail upstream, its
    // token and credentials asked for.
    env.sim.reject_assertion(&assertion);
    env.sim.revoke_refresh_tokens(&client_id("analytics"));
    // Forced refreshes within 1 s of the last one share its result (README).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    for args in [
        &["refresh", "analytics"][..],
        &["credential-process", "analytics"],
        &["token", "nope"],
    ] {
        let out = daemon.cli(args).await;
        assert!(!out.status.success(), "{args:?}");
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    for format in ["table", "json"] {
        let out = daemon.cli(&["status", "--format", format]).await;
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }

    let logs = daemon.logs();
    assert!(logs.contains("token issued"), "logs are empty?\n{logs}");
    assert!(
        logs.contains("DEBUG"),
        "verbose logging is on (RUST_LOG=trace)"
    );
    let mut canaries: Vec<String> = vec![
        assertion.clone(),
        assertion.split('.').nth(2).unwrap().to_owned(),
        "canary-refresh-file-7b3e9".into(),
        "canary-access-91ce".into(),
        "canary-answer-refresh-44d0".into(),
        "canary-id-token-e2a7".into(),
        "canary-bad-code-5150".into(),
        "canary-bad-verifier-6161".into(),
        verifier.expose().to_owned(),
        code.clone(),
        env.options.secret_access_key.clone(),
    ];
    canaries.extend(served);
    for call in env.sim.calls() {
        for key in [
            "refreshToken",
            "subjectToken",
            "assertion",
            "code",
            "codeVerifier",
            "ProvidedContexts.member.1.ContextAssertion",
        ] {
            if let Some(v) = call.params.get(key) {
                canaries.push(v.clone());
            }
        }
    }
    // The planted refresh token really was sent (and so was in the daemon's hands).
    assert!(env
        .sim
        .calls()
        .iter()
        .any(|c| c.params.get("refreshToken").map(String::as_str)
            == Some("canary-answer-refresh-44d0")));
    for canary in &canaries {
        assert!(canary.len() >= 8, "{canary:?}");
        assert!(!logs.contains(canary.as_str()), "a secret reached the log");
        for output in &outputs {
            assert!(
                !output.contains(canary.as_str()),
                "a secret reached an error or status output"
            );
        }
    }

    // The daemon hardened itself: not dumpable, no core files.
    let logs = crate::support::strip_ansi(&logs);
    assert!(
        logs.contains("process hardening")
            && logs.contains("dumpable=false")
            && logs.contains("core_limit_zero=true"),
        "{logs}"
    );
    let (limits, core) = core_limits(daemon.pid() as u32);
    assert_eq!(limits, ["0", "0"], "{core}");
}

/// The one-shot commands that hold secrets harden themselves too: caught mid-request (the
/// "daemon" here accepts and never answers), their core limit is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_commands_disable_core_dumps() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mute.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    for args in [&["token", "a"][..], &["credential-process", "a"]] {
        let mut child = tokio::process::Command::new(crate::support::bin())
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (_held, _) =
            tokio::time::timeout(std::time::Duration::from_secs(10), listener.accept())
                .await
                .expect("the client connects")
                .unwrap();
        let pid = child.id().unwrap();
        let (limits, core) = core_limits(pid);
        assert_eq!(limits, ["0", "0"], "{args:?}: {core}");
        child.kill().await.unwrap();
    }
}
