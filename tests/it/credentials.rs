//! Identity-enhanced role credentials: `/credentials`, `credential-process` as the AWS SDK for
//! Rust's own credential_process provider runs it, ProvidedContexts, caching and refresh.

use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use iamtokend::sim::Service;

use crate::support::{bin, TestEnv};

const ROLE: &str = "arn:aws:iam::123456789012:role/AnalyticsTIP";

fn role_app(env: &TestEnv, name: &str, scopes: &str) {
    std::fs::write(
        env.path(&format!("{name}.jwt")),
        crate::support::assertion(name),
    )
    .unwrap();
    env.write_app(
        name,
        &format!(
            "grant = \"jwt-bearer\"\nscopes = {scopes}\nassertion_file = \"{}\"\n\n[role]\narn = \"{ROLE}\"\nendpoint_url = \"{}\"\n",
            env.path(&format!("{name}.jwt")).display(),
            env.sim.endpoint_url()
        ),
    );
}

const WITH_CONTEXT: &str = r#"["openid", "aws", "sts:identity_context"]"#;

fn assume_role_calls(env: &TestEnv) -> Vec<iamtokend::sim::Call> {
    env.sim
        .calls()
        .into_iter()
        .filter(|c| c.service == Service::Sts)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_sdks_credential_process_provider_gets_the_simulators_credentials() {
    let env = TestEnv::new(3600).await;
    role_app(&env, "analytics", WITH_CONTEXT);
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;

    let command = format!(
        "{} --socket {} credential-process analytics",
        bin(),
        daemon.socket.display()
    );
    let provider = aws_config::credential_process::CredentialProcessProvider::new(command);
    let creds = provider
        .provide_credentials()
        .await
        .expect("the SDK accepts our output");
    assert!(creds.access_key_id().starts_with("ASIA"));
    assert!(creds.session_token().is_some());
    assert!(creds.expiry().is_some());

    // The simulator saw one AssumeRole carrying the token's identity context.
    let calls = assume_role_calls(&env);
    assert_eq!(calls.len(), 1, "{calls:?}");
    let call = &calls[0];
    assert!(call.signature_valid);
    assert_eq!(call.status, 200);
    assert_eq!(call.params["RoleArn"], ROLE);
    assert_eq!(call.params["RoleSessionName"], "iamtokend-analytics");
    assert_eq!(call.params["DurationSeconds"], "3600");
    assert_eq!(
        call.params["ProvidedContexts.member.1.ProviderArn"],
        "arn:aws:iam::aws:contextProvider/IdentityCenter"
    );
    let (_, token) = daemon.get("/v1/apps/analytics/token").await;
    let context = iamtokend::grant::identity_context_claim(token["id_token"].as_str().unwrap());
    assert_eq!(
        call.params
            .get("ProvidedContexts.member.1.ContextAssertion"),
        context.as_ref()
    );

    // Exactly the credential_process JSON; cached: a second ask makes no STS call.
    let out = daemon.cli(&["credential-process", "analytics"]).await;
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["Version"], serde_json::json!(1));
    assert_eq!(json["AccessKeyId"], creds.access_key_id());
    assert!(json["Expiration"].as_str().unwrap().ends_with('Z'));
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "{json}");
    assert_eq!(assume_role_calls(&env).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_credentials_are_refreshed_and_a_new_identity_forces_new_ones() {
    let env = TestEnv::new(3600).await;
    // 4 s credentials: refreshed after 1 s (the lead is capped at 3/4 of the lifetime).
    env.sim
        .set_credentials_lifetime(Some(Duration::from_secs(4)));
    role_app(&env, "analytics", WITH_CONTEXT);
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    let key = |b: &serde_json::Value| b["AccessKeyId"].as_str().unwrap().to_owned();
    let (s, first) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(s, 200, "{first}");
    let (_, again) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(key(&first), key(&again), "cached");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, later) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_ne!(
        key(&first),
        key(&later),
        "refreshed after its refresh point"
    );
    assert_eq!(assume_role_calls(&env).len(), 2);

    // Long credentials from here on. A token refresh of the same identity keeps them...
    env.sim.set_credentials_lifetime(None);
    tokio::time::sleep(Duration::from_millis(1100)).await; // `later` passes its refresh point
    let (_, long) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_ne!(key(&long), key(&later));
    let calls = assume_role_calls(&env).len();
    assert!(daemon.cli(&["refresh", "analytics"]).await.status.success());
    let (_, same) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(key(&long), key(&same), "same identity: credentials kept");
    assert_eq!(assume_role_calls(&env).len(), calls);
    // ...a token of a new identity replaces them.
    std::fs::write(
        env.path("analytics.jwt"),
        crate::support::assertion("someone-else"),
    )
    .unwrap();
    assert!(daemon.cli(&["refresh", "analytics"]).await.status.success());
    let (_, other) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_ne!(key(&long), key(&other), "new identity: new credentials");
    assert_eq!(assume_role_calls(&env).len(), calls + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_context_refreshes_the_token_once_and_retries() {
    let env = TestEnv::new(3600).await;
    role_app(&env, "analytics", WITH_CONTEXT);
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    let oidc_before = env
        .sim
        .calls()
        .iter()
        .filter(|c| c.service == Service::Oidc)
        .count();
    env.sim.push_fault(iamtokend::sim::Fault::Error {
        status: 400,
        error_type: "InvalidContextAssertion".into(),
        error: "InvalidContextAssertion".into(),
        description: "the context assertion expired".into(),
    });
    let (s, body) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(s, 200, "{body}");
    let sts = assume_role_calls(&env);
    assert_eq!(sts.len(), 2);
    assert_eq!(sts[0].error.as_deref(), Some("InvalidContextAssertion"));
    let oidc_after = env
        .sim
        .calls()
        .iter()
        .filter(|c| c.service == Service::Oidc)
        .count();
    assert_eq!(oidc_after, oidc_before + 1, "one token refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_role_and_missing_identity_context_are_clear_errors() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("plain");
    role_app(&env, "noctx", r#"["openid", "aws"]"#);
    let daemon = env.daemon().await;
    daemon.wait_state("plain", "ready", 10).await;
    daemon.wait_state("noctx", "ready", 10).await;

    let (s, body) = daemon.get("/v1/apps/plain/credentials").await;
    assert_eq!(s, 409);
    assert_eq!(body["error"]["code"], "no_role");
    let out = daemon.cli(&["credential-process", "plain"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("[role]"), "{stderr}");

    let out = daemon.cli(&["credential-process", "noctx"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sts:identity_context"), "{stderr}");
    assert!(assume_role_calls(&env).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_failures_serve_the_last_good_credentials_until_they_expire() {
    let env = TestEnv::new(3600).await;
    // 3 s credentials: due for refresh after 0.75 s, expired after 3 s.
    env.sim
        .set_credentials_lifetime(Some(Duration::from_secs(3)));
    role_app(&env, "analytics", WITH_CONTEXT);
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    let (s, first) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(s, 200, "{first}");
    for _ in 0..20 {
        env.sim.push_fault(iamtokend::sim::Fault::server_error());
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (s, during) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(s, 200, "{during}");
    assert_eq!(
        during["AccessKeyId"], first["AccessKeyId"],
        "last good served"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (s, after) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(s, 503, "expired credentials must not be served: {after}");
    assert_eq!(after["error"]["code"], "token_unavailable");
}
