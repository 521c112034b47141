//! End-to-end tests: the real SDK clients against a running simulator.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_ssooidc::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssooidc::operation::create_token_with_iam::{
    CreateTokenWithIAMError, CreateTokenWithIamOutput,
};
use aws_sdk_sts::types::ProvidedContext;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::wire;
use super::*;

const CLIENT: &str =
    "arn:aws:sso::123456789012:application/ssoins-1234567890abcdef/apl-1234567890abcdef";
const OTHER_CLIENT: &str =
    "arn:aws:sso::123456789012:application/ssoins-1234567890abcdef/apl-fedcba0987654321";
const REDIRECT: &str = "http://127.0.0.1:8400/callback";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const REFRESH_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";
const ROLE: &str = "arn:aws:iam::123456789012:role/AnalyticsTIP";
const PROVIDER: &str = "arn:aws:iam::aws:contextProvider/IdentityCenter";

async fn sdk_config(sim: &Sim, akid: &str, secret: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(akid, secret, None, None, "test"))
        .endpoint_url(sim.endpoint_url())
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

struct Clients {
    oidc: aws_sdk_ssooidc::Client,
    sts: aws_sdk_sts::Client,
}

async fn clients_with(sim: &Sim, secret: &str) -> Clients {
    let config = sdk_config(sim, &SimOptions::default().access_key_id, secret).await;
    Clients {
        oidc: aws_sdk_ssooidc::Client::new(&config),
        sts: aws_sdk_sts::Client::new(&config),
    }
}

async fn start() -> (Sim, Clients) {
    let sim = Sim::start(SimOptions::default()).await.expect("sim starts");
    let clients = clients_with(&sim, &SimOptions::default().secret_access_key).await;
    (sim, clients)
}

fn jwt(claims: &str) -> String {
    format!(
        "{}.{}.{}",
        wire::b64url(r#"{"alg":"RS256"}"#),
        wire::b64url(claims),
        wire::b64url("sig")
    )
}

fn claims(id_token: &str) -> serde_json::Value {
    let payload = id_token.split('.').nth(1).expect("three parts");
    serde_json::from_slice(&wire::b64url_decode(payload).expect("base64url")).expect("json")
}

fn challenge(verifier: &str) -> String {
    wire::b64url(Sha256::digest(verifier.as_bytes()))
}

type OidcResult = Result<CreateTokenWithIamOutput, SdkError<CreateTokenWithIAMError>>;

async fn jwt_bearer(oidc: &aws_sdk_ssooidc::Client, client: &str, assertion: &str) -> OidcResult {
    oidc.create_token_with_iam()
        .client_id(client)
        .grant_type(JWT_BEARER)
        .assertion(assertion)
        .send()
        .await
}

async fn refresh(oidc: &aws_sdk_ssooidc::Client, token: &str) -> OidcResult {
    oidc.create_token_with_iam()
        .client_id(CLIENT)
        .grant_type("refresh_token")
        .refresh_token(token)
        .send()
        .await
}

async fn assume_role(
    sts: &aws_sdk_sts::Client,
    assertion: &str,
) -> Result<
    aws_sdk_sts::operation::assume_role::AssumeRoleOutput,
    aws_sdk_sts::error::SdkError<aws_sdk_sts::operation::assume_role::AssumeRoleError>,
> {
    sts.assume_role()
        .role_arn(ROLE)
        .role_session_name("iamtokend-analytics")
        .duration_seconds(900)
        .provided_contexts(
            ProvidedContext::builder()
                .provider_arn(PROVIDER)
                .context_assertion(assertion)
                .build(),
        )
        .send()
        .await
}

/// Every output member is present and consistent; returns the identity context.
fn assert_complete(out: &CreateTokenWithIamOutput, client: &str, user: &str) -> String {
    assert!(out.access_token().is_some_and(|t| t.starts_with("aoa-")));
    assert_eq!(out.token_type(), Some("Bearer"));
    assert_eq!(out.expires_in(), 3600);
    let context = out
        .aws_additional_details()
        .and_then(|d| d.identity_context())
        .expect("identity context")
        .to_owned();
    assert!(context.len() >= 4);
    let claims = claims(out.id_token().expect("id token"));
    assert_eq!(claims["sub"], user);
    assert_eq!(claims["aud"], client);
    assert_eq!(claims["sts:identity_context"], context.as_str());
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        3600
    );
    context
}

#[tokio::test]
async fn the_four_grants_succeed_and_parse() {
    let (sim, c) = start().await;

    let verifier = "v".repeat(64);
    let code = sim.issue_auth_code(CLIENT, REDIRECT, &challenge(&verifier));
    let out = c
        .oidc
        .create_token_with_iam()
        .client_id(CLIENT)
        .grant_type("authorization_code")
        .code(&code)
        .redirect_uri(REDIRECT)
        .code_verifier(&verifier)
        .send()
        .await
        .expect("authorization_code");
    let code_user = claims(out.id_token().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(code_user.starts_with("user-code-"));
    let first_context = assert_complete(&out, CLIENT, &code_user);
    assert_eq!(out.issued_token_type(), Some(ACCESS_TYPE));
    assert_eq!(out.scope(), ["openid", "aws", "sts:identity_context"]);
    let refresh_token = out.refresh_token().expect("refresh token").to_owned();

    let out = refresh(&c.oidc, &refresh_token)
        .await
        .expect("refresh_token");
    let context = assert_complete(&out, CLIENT, &code_user);
    assert_ne!(context, first_context, "a context per issued token");
    assert!(out.refresh_token().is_some());

    let out = c
        .oidc
        .create_token_with_iam()
        .client_id(OTHER_CLIENT)
        .grant_type(JWT_BEARER)
        .assertion(jwt(r#"{"sub":"alice","iss":"https://idp"}"#))
        .scope("openid")
        .scope("sts:identity_context")
        .send()
        .await
        .expect("jwt-bearer");
    assert_complete(&out, OTHER_CLIENT, "alice");
    assert_eq!(out.scope(), ["openid", "sts:identity_context"]);
    assert_eq!(out.refresh_token(), None, "off by default for jwt-bearer");
    let alice_token = out.access_token().unwrap().to_owned();

    for (requested, issued, has_refresh) in [
        (ACCESS_TYPE, ACCESS_TYPE, false),
        (REFRESH_TYPE, REFRESH_TYPE, true),
    ] {
        let out = c
            .oidc
            .create_token_with_iam()
            .client_id(CLIENT)
            .grant_type(TOKEN_EXCHANGE)
            .subject_token(&alice_token)
            .subject_token_type(ACCESS_TYPE)
            .requested_token_type(requested)
            .send()
            .await
            .expect("token-exchange");
        assert_complete(&out, CLIENT, "alice");
        assert_eq!(out.issued_token_type(), Some(issued));
        assert_eq!(out.refresh_token().is_some(), has_refresh);
    }

    sim.set_issue_refresh_token(OTHER_CLIENT, true);
    let out = jwt_bearer(&c.oidc, OTHER_CLIENT, &jwt(r#"{"iss":"x"}"#))
        .await
        .expect("jwt-bearer");
    assert_complete(&out, OTHER_CLIENT, "user-jwt");
    assert!(out.refresh_token().is_some());

    let calls = sim.calls();
    assert_eq!(calls.len(), 6);
    assert!(calls
        .iter()
        .all(|c| c.status == 200 && c.signature_valid && c.error.is_none()));
    assert_eq!(calls[0].grant_type.as_deref(), Some("authorization_code"));
    assert_eq!(calls[0].params["code"], code);
    assert_eq!(calls[2].params["scope"], "openid sts:identity_context");
    assert_eq!(calls[2].client_id.as_deref(), Some(OTHER_CLIENT));
    assert_eq!(calls[3].params["requestedTokenType"], ACCESS_TYPE);
    assert_eq!(
        calls[0].access_key_id.as_deref(),
        Some("AKIDSIMULATOR000001")
    );
    assert_eq!(calls[0].region.as_deref(), Some("us-east-1"));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused() {
    let sim = Sim::start(SimOptions::default()).await.unwrap();
    let c = clients_with(&sim, "not-the-secret").await;

    let err = jwt_bearer(&c.oidc, CLIENT, &jwt("{}"))
        .await
        .expect_err("refused");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert_eq!(
        err.into_service_error().code(),
        Some("InvalidSignatureException")
    );

    let err = assume_role(&c.sts, "abcdefgh").await.expect_err("refused");
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(403));
    assert_eq!(
        err.into_service_error().code(),
        Some("SignatureDoesNotMatch")
    );

    let calls = sim.calls();
    assert_eq!(calls.len(), 2);
    assert!(calls.iter().all(|c| !c.signature_valid && c.status == 403));
    assert_eq!(calls[0].service, Service::Oidc);
    assert_eq!(calls[1].service, Service::Sts);
    assert_eq!(calls[1].operation, "AssumeRole");

    let stranger = sdk_config(&sim, "AKIDSTRANGER", "sim-secret-key").await;
    let err = jwt_bearer(&aws_sdk_ssooidc::Client::new(&stranger), CLIENT, &jwt("{}"))
        .await
        .expect_err("refused");
    assert_eq!(
        err.into_service_error().code(),
        Some("UnrecognizedClientException")
    );
    let err = assume_role(&aws_sdk_sts::Client::new(&stranger), "abcdefgh")
        .await
        .expect_err("refused");
    assert_eq!(
        err.into_service_error().code(),
        Some("InvalidClientTokenId")
    );

    let other_region = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new(
            "AKIDSIMULATOR000001",
            "sim-secret-key",
            None,
            None,
            "t",
        ))
        .endpoint_url(sim.endpoint_url())
        .retry_config(RetryConfig::disabled())
        .load()
        .await;
    let err = jwt_bearer(
        &aws_sdk_ssooidc::Client::new(&other_region),
        CLIENT,
        &jwt("{}"),
    )
    .await
    .expect_err("refused");
    assert_eq!(
        err.into_service_error().code(),
        Some("InvalidSignatureException")
    );
    assert_eq!(sim.calls()[4].region.as_deref(), Some("eu-west-1"));
}

#[tokio::test]
async fn a_tampered_body_is_refused() {
    let (sim, _c) = start().await;
    let body = format!(
        r#"{{"clientId":"{CLIENT}","grantType":"{JWT_BEARER}","assertion":"{}"}}"#,
        jwt("{}")
    );
    let signed = signed_request(
        &sim,
        "/token?aws_iam=t",
        "sso-oauth",
        "application/json",
        &body,
    );
    let answer = raw_exchange(&sim, &signed).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let stale = signed_request_at(
        &sim,
        "/token?aws_iam=t",
        "sso-oauth",
        "application/json",
        &body,
        wire::now() - Duration::from_secs(10 * 60),
    );
    let answer = raw_exchange(&sim, &stale).await;
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("Signature expired"),
        "{answer}"
    );

    let tampered = signed.replacen(r#""clientId""#, r#""clientID""#, 1);
    let answer = raw_exchange(&sim, &tampered).await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer
        .to_ascii_lowercase()
        .contains("x-amzn-errortype: invalidsignatureexception"));
}

#[tokio::test]
async fn refresh_tokens_rotate() {
    let (sim, c) = start().await;
    sim.seed_refresh_token(CLIENT, "seeded-1");
    let first = refresh(&c.oidc, "seeded-1")
        .await
        .expect("seeded token works");
    let user = claims(first.id_token().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(user.starts_with("user-seeded-"));
    let next = first.refresh_token().expect("rotated").to_owned();
    assert_ne!(next, "seeded-1");

    let err = refresh(&c.oidc, "seeded-1")
        .await
        .expect_err("old token is dead");
    let err = err.into_service_error();
    assert!(
        matches!(err, CreateTokenWithIAMError::InvalidGrantException(_)),
        "{err:?}"
    );
    assert_eq!(err.meta().code(), Some("InvalidGrantException"));
    let CreateTokenWithIAMError::InvalidGrantException(e) = err else {
        unreachable!()
    };
    assert_eq!(e.error(), Some("invalid_grant"));
    assert!(e.error_description().is_some());

    let second = refresh(&c.oidc, &next).await.expect("new token works");
    assert_eq!(
        claims(second.id_token().unwrap())["sub"],
        user.as_str(),
        "same identity"
    );

    let other = c
        .oidc
        .create_token_with_iam()
        .client_id(OTHER_CLIENT)
        .grant_type("refresh_token")
        .refresh_token(second.refresh_token().unwrap())
        .send()
        .await;
    assert!(
        other
            .unwrap_err()
            .into_service_error()
            .is_invalid_grant_exception(),
        "bound to its client"
    );

    sim.revoke_refresh_tokens(CLIENT);
    let err = refresh(&c.oidc, second.refresh_token().unwrap())
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_grant_exception());
}

#[tokio::test]
async fn rotation_grace_keeps_a_used_token_until_its_successor_is_used() {
    let (sim, c) = start().await;
    sim.set_rotation_grace(true);
    sim.seed_refresh_token(CLIENT, "seeded-1");
    let first = refresh(&c.oidc, "seeded-1").await.expect("seed works");
    // The answer was "lost": the old token still works, and rotates again.
    let again = refresh(&c.oidc, "seeded-1").await.expect("grace");
    let next = again.refresh_token().unwrap().to_owned();
    assert_ne!(first.refresh_token().unwrap(), next);
    // Using the successor ends the predecessor's grace.
    refresh(&c.oidc, &next).await.expect("successor works");
    let err = refresh(&c.oidc, "seeded-1").await.unwrap_err();
    assert!(err.into_service_error().is_invalid_grant_exception());
}

#[tokio::test]
async fn authorization_codes_are_checked_and_single_use() {
    let (sim, c) = start().await;
    let exchange = |code: String, redirect: &'static str, verifier: &'static str| {
        c.oidc
            .create_token_with_iam()
            .client_id(CLIENT)
            .grant_type("authorization_code")
            .code(code)
            .redirect_uri(redirect)
            .code_verifier(verifier)
            .send()
    };
    let code = sim.issue_auth_code(CLIENT, REDIRECT, &challenge("right-verifier"));
    let err = exchange(code.clone(), REDIRECT, "wrong-verifier")
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_grant_exception());
    let err = exchange(code, REDIRECT, "right-verifier")
        .await
        .unwrap_err();
    assert!(
        err.into_service_error().is_invalid_grant_exception(),
        "consumed by the failed try"
    );

    let code = sim.issue_auth_code(CLIENT, REDIRECT, &challenge("right-verifier"));
    let err = exchange(code, "http://127.0.0.1:9999/cb", "right-verifier")
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_grant_exception());

    let code = sim.issue_auth_code(CLIENT, REDIRECT, &challenge("right-verifier"));
    exchange(code.clone(), REDIRECT, "right-verifier")
        .await
        .expect("right verifier");
    let err = exchange(code, REDIRECT, "right-verifier")
        .await
        .unwrap_err();
    assert!(
        err.into_service_error().is_invalid_grant_exception(),
        "single use"
    );
}

#[tokio::test]
async fn requests_are_validated_per_grant() {
    let (sim, c) = start().await;
    let err = jwt_bearer(&c.oidc, "not-an-arn", &jwt("{}"))
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_request_exception());

    let err = c
        .oidc
        .create_token_with_iam()
        .client_id(CLIENT)
        .grant_type("client_credentials")
        .send()
        .await
        .unwrap_err();
    let err = err.into_service_error();
    assert!(err.is_unsupported_grant_type_exception(), "{err:?}");

    let err = c
        .oidc
        .create_token_with_iam()
        .client_id(CLIENT)
        .grant_type(JWT_BEARER)
        .assertion(jwt("{}"))
        .refresh_token("stray")
        .send()
        .await
        .unwrap_err();
    let err = err.into_service_error();
    let CreateTokenWithIAMError::InvalidRequestException(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.error(), Some("invalid_request"));
    assert!(e.error_description().unwrap().contains("refreshToken"));

    let err = c
        .oidc
        .create_token_with_iam()
        .client_id(CLIENT)
        .grant_type("authorization_code")
        .code("x")
        .send()
        .await
        .unwrap_err();
    assert!(
        err.into_service_error().is_invalid_request_exception(),
        "missing members"
    );

    let err = jwt_bearer(&c.oidc, CLIENT, "not.a-jwt").await.unwrap_err();
    assert!(err.into_service_error().is_invalid_grant_exception());
    let rejected = jwt(r#"{"sub":"mallory"}"#);
    jwt_bearer(&c.oidc, CLIENT, &rejected)
        .await
        .expect("accepted at first");
    sim.reject_assertion(&rejected);
    let err = jwt_bearer(&c.oidc, CLIENT, &rejected).await.unwrap_err();
    assert!(err.into_service_error().is_invalid_grant_exception());

    let exchange = |subject: String, subject_type: &'static str| {
        c.oidc
            .create_token_with_iam()
            .client_id(CLIENT)
            .grant_type(TOKEN_EXCHANGE)
            .subject_token(subject)
            .subject_token_type(subject_type)
            .requested_token_type(ACCESS_TYPE)
            .send()
    };
    let err = exchange("aoa-unknown".to_owned(), ACCESS_TYPE)
        .await
        .unwrap_err();
    assert!(err.into_service_error().is_invalid_grant_exception());
    sim.set_token_lifetime(Some(OTHER_CLIENT), 0);
    let expired = jwt_bearer(&c.oidc, OTHER_CLIENT, &jwt("{}")).await.unwrap();
    assert_eq!(expired.expires_in(), 0);
    let err = exchange(expired.access_token().unwrap().to_owned(), ACCESS_TYPE)
        .await
        .unwrap_err();
    assert!(
        err.into_service_error().is_invalid_grant_exception(),
        "expired subject"
    );
    let live = jwt_bearer(&c.oidc, CLIENT, &jwt("{}")).await.unwrap();
    let err = exchange(live.access_token().unwrap().to_owned(), REFRESH_TYPE)
        .await
        .unwrap_err();
    assert!(
        err.into_service_error().is_invalid_request_exception(),
        "wrong subject type"
    );

    sim.set_token_lifetime(None, 120);
    let out = jwt_bearer(&c.oidc, CLIENT, &jwt("{}")).await.unwrap();
    assert_eq!(out.expires_in(), 120);
}

#[tokio::test]
async fn faults_arrive_as_sdk_errors() {
    let (sim, c) = start().await;
    let assertion = jwt(r#"{"sub":"alice"}"#);

    sim.push_fault(Fault::invalid_grant());
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion)
        .await
        .unwrap_err()
        .into_service_error();
    let CreateTokenWithIAMError::InvalidGrantException(e) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(e.error(), Some("invalid_grant"));

    sim.push_fault(Fault::slow_down());
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion)
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_slow_down_exception(), "{err:?}");

    sim.push_fault(Fault::server_error());
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion).await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    assert!(err.into_service_error().is_internal_server_exception());

    sim.push_fault(Fault::access_denied());
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion)
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_access_denied_exception(), "{err:?}");

    sim.push_fault(Fault::invalid_client());
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion).await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(401));
    assert!(err.into_service_error().is_invalid_client_exception());

    sim.push_fault(Fault::MalformedJson);
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion).await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(200));
    assert!(
        format!("{err:?}").contains("DeserializeError"),
        "a parse error: {err:?}"
    );
    assert_eq!(err.into_service_error().code(), None);

    sim.push_fault(Fault::Raw {
        status: 503,
        content_type: "text/plain".to_owned(),
        body: "busy".to_owned(),
    });
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion).await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(503));

    sim.push_fault(Fault::Reset);
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion).await.unwrap_err();
    assert!(matches!(err, SdkError::DispatchFailure(_)), "{err:?}");

    sim.push_fault(Fault::Delay(Duration::from_millis(200)));
    let started = tokio::time::Instant::now();
    jwt_bearer(&c.oidc, CLIENT, &assertion)
        .await
        .expect("delayed, then fine");
    assert!(started.elapsed() >= Duration::from_millis(200));

    let calls = sim.calls();
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, [400, 400, 500, 400, 401, 200, 503, 0, 200]);
    assert_eq!(calls[0].error.as_deref(), Some("InvalidGrantException"));
    assert_eq!(calls[7].error.as_deref(), Some("Reset"));

    jwt_bearer(&c.oidc, CLIENT, &assertion)
        .await
        .expect("the queue is empty again");
}

#[tokio::test]
async fn faults_for_a_client_go_first_and_only_to_it() {
    let (sim, c) = start().await;
    let assertion = jwt("{}");
    sim.push_fault(Fault::slow_down());
    sim.push_fault_for(OTHER_CLIENT, Fault::invalid_grant());

    let err = jwt_bearer(&c.oidc, OTHER_CLIENT, &assertion)
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        err.is_invalid_grant_exception(),
        "client fault first: {err:?}"
    );
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion)
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_slow_down_exception(), "general queue: {err:?}");
    jwt_bearer(&c.oidc, OTHER_CLIENT, &assertion)
        .await
        .expect("both consumed");

    sim.push_fault(Fault::invalid_grant());
    let bad = clients_with(&sim, "wrong").await;
    let err = jwt_bearer(&bad.oidc, CLIENT, &assertion)
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(
        err.code(),
        Some("InvalidSignatureException"),
        "signature first"
    );
    let err = jwt_bearer(&c.oidc, CLIENT, &assertion)
        .await
        .unwrap_err()
        .into_service_error();
    assert!(
        err.is_invalid_grant_exception(),
        "the fault is still queued"
    );
}

#[tokio::test]
async fn assume_role_with_an_identity_context() {
    let (sim, c) = start().await;
    let out = jwt_bearer(&c.oidc, CLIENT, &jwt(r#"{"sub":"alice"}"#))
        .await
        .unwrap();
    let context = out
        .aws_additional_details()
        .unwrap()
        .identity_context()
        .unwrap()
        .to_owned();

    let role = assume_role(&c.sts, &context).await.expect("assume role");
    let creds = role.credentials().expect("credentials");
    assert!(creds.access_key_id().starts_with("ASIA"));
    assert!(!creds.secret_access_key().is_empty());
    assert!(!creds.session_token().is_empty());
    let now = wire::unix_secs(wire::now());
    let expires = creds.expiration().secs();
    assert!(
        (now + 895..=now + 905).contains(&expires),
        "DurationSeconds 900"
    );
    let user = role.assumed_role_user().expect("assumed role user");
    assert_eq!(
        user.arn(),
        "arn:aws:sts::123456789012:assumed-role/AnalyticsTIP/iamtokend-analytics"
    );
    assert!(user.assumed_role_id().starts_with("AROA"));
    assert_eq!(role.source_identity(), None);

    sim.set_credentials_lifetime(Some(Duration::from_secs(60)));
    let role = assume_role(&c.sts, &context).await.unwrap();
    let expires = role.credentials().unwrap().expiration().secs();
    assert!((now + 55..=now + 65).contains(&expires), "override");

    let err = assume_role(&c.sts, "bm90LWlzc3VlZA").await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(400));
    assert_eq!(
        err.into_service_error().code(),
        Some("InvalidContextAssertion")
    );

    sim.set_token_lifetime(None, -5);
    let stale = jwt_bearer(&c.oidc, CLIENT, &jwt("{}")).await.unwrap();
    let stale = stale
        .aws_additional_details()
        .unwrap()
        .identity_context()
        .unwrap();
    let err = assume_role(&c.sts, stale).await.unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("InvalidContextAssertion"),
        "expired"
    );

    let err = c
        .sts
        .assume_role()
        .role_arn("arn:aws:iam::123:role/x")
        .role_session_name("s")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.into_service_error().code(), Some("ValidationError"));

    sim.push_fault(Fault::access_denied());
    let err = assume_role(&c.sts, &context)
        .await
        .unwrap_err()
        .into_service_error();
    assert_eq!(err.code(), Some("AccessDeniedException"));
    assert_eq!(err.message(), Some("Access denied"));
    sim.push_fault(Fault::MalformedJson);
    let err = assume_role(&c.sts, &context).await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(200));
    assert_eq!(err.into_service_error().code(), None, "a parse error");

    let calls = sim.calls();
    let sts_calls: Vec<&Call> = calls.iter().filter(|c| c.service == Service::Sts).collect();
    assert_eq!(sts_calls[0].operation, "AssumeRole");
    assert_eq!(sts_calls[0].params["RoleArn"], ROLE);
    assert_eq!(sts_calls[0].params["DurationSeconds"], "900");
    assert_eq!(
        sts_calls[0].params["ProvidedContexts.member.1.ProviderArn"],
        PROVIDER
    );
    assert_eq!(
        sts_calls[0].params["ProvidedContexts.member.1.ContextAssertion"],
        context
    );
    assert_eq!(
        sts_calls[2].error.as_deref(),
        Some("InvalidContextAssertion")
    );
    sim.clear_calls();
    assert!(sim.calls().is_empty());
}

/// Credentials the simulated STS issued sign `GetCallerIdentity`, which names the assumed
/// role; a wrong session token, a wrong secret or expired credentials are refused.
#[tokio::test]
async fn get_caller_identity_with_issued_credentials() {
    let (sim, c) = start().await;
    let out = jwt_bearer(&c.oidc, CLIENT, &jwt(r#"{"sub":"alice"}"#))
        .await
        .unwrap();
    let context = out
        .aws_additional_details()
        .unwrap()
        .identity_context()
        .unwrap()
        .to_owned();
    let role = assume_role(&c.sts, &context).await.unwrap();
    let creds = role.credentials().unwrap();
    let sts_with = |secret: &str, token: &str| {
        let config = aws_sdk_sts::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(sim.endpoint_url())
            .credentials_provider(Credentials::new(
                creds.access_key_id(),
                secret,
                Some(token.to_owned()),
                None,
                "test",
            ))
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_sts::Client::from_conf(config)
    };
    let me = sts_with(creds.secret_access_key(), creds.session_token())
        .get_caller_identity()
        .send()
        .await
        .expect("signed with issued credentials");
    assert_eq!(
        me.arn(),
        Some("arn:aws:sts::123456789012:assumed-role/AnalyticsTIP/iamtokend-analytics")
    );
    assert_eq!(me.account(), Some("123456789012"));
    assert!(me.user_id().unwrap().ends_with(":iamtokend-analytics"));

    let err = sts_with(creds.secret_access_key(), "not-the-token")
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("InvalidClientTokenId")
    );
    let err = sts_with("wrong-secret", creds.session_token())
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.into_service_error().code(),
        Some("SignatureDoesNotMatch")
    );

    // The simulator's own key answers its IAM user.
    let me = c.sts.get_caller_identity().send().await.unwrap();
    assert_eq!(me.account(), Some("000000000000"));

    sim.set_credentials_lifetime(Some(Duration::from_secs(0)));
    let role = assume_role(&c.sts, &context).await.unwrap();
    let stale = role.credentials().unwrap();
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(sim.endpoint_url())
        .credentials_provider(Credentials::new(
            stale.access_key_id(),
            stale.secret_access_key(),
            Some(stale.session_token().to_owned()),
            None,
            "test",
        ))
        .retry_config(RetryConfig::disabled())
        .build();
    let err = aws_sdk_sts::Client::from_conf(config)
        .get_caller_identity()
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.into_service_error().code(), Some("ExpiredToken"));
}

/// A request signed with aws-sigv4 directly, as raw HTTP/1.1 text.
fn signed_request(sim: &Sim, path: &str, service: &str, content_type: &str, body: &str) -> String {
    signed_request_at(sim, path, service, content_type, body, wire::now())
}

fn signed_request_at(
    sim: &Sim,
    path: &str,
    service: &str,
    content_type: &str,
    body: &str,
    time: std::time::SystemTime,
) -> String {
    use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
    let host = sim.endpoint_url().trim_start_matches("http://").to_owned();
    let identity =
        Credentials::new("AKIDSIMULATOR000001", "sim-secret-key", None, None, "t").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let length = body.len().to_string();
    let headers = [
        ("content-type", content_type),
        ("content-length", length.as_str()),
    ];
    let request = SignableRequest::new(
        "POST",
        format!("http://{host}{path}"),
        headers.into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    let mut text = format!("POST {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers.into_iter().chain(instructions.headers()) {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

async fn raw_exchange(sim: &Sim, request: &str) -> String {
    let addr = sim.endpoint_url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn garbage_gets_answers_not_panics() {
    let (sim, c) = start().await;
    let host = sim.endpoint_url().trim_start_matches("http://").to_owned();
    let get = format!("GET /token?aws_iam=t HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    assert!(raw_exchange(&sim, &get).await.starts_with("HTTP/1.1 404"));
    let other = format!("POST /elsewhere HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    assert!(raw_exchange(&sim, &other).await.starts_with("HTTP/1.1 404"));
    let huge = format!(
        "POST /token?aws_iam=t HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        2 * MAX_BODY_BYTES
    );
    assert!(raw_exchange(&sim, &huge).await.starts_with("HTTP/1.1 413"));
    let unsigned = format!(
        "POST / HTTP/1.1\r\nhost: {host}\r\ncontent-length: 7\r\nauthorization: AWS4-HMAC-SHA256 nonsense\r\nconnection: close\r\n\r\n%%%&=&="
    );
    let answer = raw_exchange(&sim, &unsigned).await;
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("SignatureDoesNotMatch"),
        "{answer}"
    );
    assert!(raw_exchange(&sim, "\x00\x01garbage\r\n\r\n")
        .await
        .starts_with("HTTP/1.1 400"));

    for body in ["[]", "{", "{\"clientId\":5}", "\u{0}"] {
        let signed = signed_request(
            &sim,
            "/token?aws_iam=t",
            "sso-oauth",
            "application/json",
            body,
        );
        let answer = raw_exchange(&sim, &signed).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{body}: {answer}");
    }
    for body in [
        "Action=GetSessionToken&Version=2011-06-15",
        "%zz",
        "Action=AssumeRole&Version=2011-06-15",
    ] {
        let signed = signed_request(&sim, "/", "sts", "application/x-www-form-urlencoded", body);
        let answer = raw_exchange(&sim, &signed).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{body}: {answer}");
    }
    let signed = signed_request(
        &sim,
        "/",
        "sso-oauth",
        "application/x-www-form-urlencoded",
        "Action=AssumeRole",
    );
    assert!(
        raw_exchange(&sim, &signed)
            .await
            .starts_with("HTTP/1.1 403"),
        "wrong service name"
    );

    jwt_bearer(&c.oidc, CLIENT, &jwt("{}"))
        .await
        .expect("still serving");
    sim.shutdown().await;
}
