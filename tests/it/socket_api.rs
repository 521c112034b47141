//! The socket API of CONTRACT §5: routes, the error envelope, codes.

use crate::support::raw_http::raw;
use crate::support::TestEnv;

fn assert_error(status: u16, body: &serde_json::Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_and_error_codes() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;

    let (status, body) = daemon.get("/v1/health").await;
    assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));

    let row = daemon.app("analytics").await;
    for key in [
        "name",
        "grant",
        "state",
        "expires_at",
        "next_refresh_at",
        "last_refresh_at",
        "last_error",
    ] {
        assert!(row.get(key).is_some(), "missing {key}: {row}");
    }
    assert_eq!(row["grant"], "jwt-bearer");
    assert!(!row.to_string().contains("access_token"));

    let (status, body) = daemon.get("/v1/apps/analytics/token").await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() > 3500);
    assert!(body.get("refresh_token").is_none());
    assert!(body["id_token"].as_str().is_some());

    let (s, b) = daemon.get("/v1/apps/nope/token").await;
    assert_error(s, &b, 404, "unknown_app");
    let (s, b) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_error(s, &b, 409, "no_role");
    let (s, b) = daemon.post("/metrics", None).await;
    assert_error(s, &b, 405, "method_not_allowed");
    let (s, b) = daemon.get("/v1/nothing").await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = daemon.get("/v1/apps/analytics/token?min_ttl=soon").await;
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = daemon.post("/v1/apps/analytics/token", None).await;
    assert_error(s, &b, 405, "method_not_allowed");
    let body = serde_json::json!({"code": "c", "code_verifier": "v", "redirect_uri": "http://127.0.0.1:1/cb"});
    let (s, b) = daemon.post("/v1/apps/analytics/login", Some(&body)).await;
    assert_error(s, &b, 409, "wrong_grant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_body_errors_and_garbage_bytes_get_clean_answers() {
    let env = TestEnv::new(3600).await;
    env.authcode_app("portal", "http://127.0.0.1:8400/callback");
    let daemon = env.daemon().await;
    let (s, b) = daemon.get("/v1/apps/portal/token").await;
    assert_error(s, &b, 503, "needs_login");
    let (s, b) = daemon
        .post(
            "/v1/apps/portal/login",
            Some(&serde_json::json!({"code": 1})),
        )
        .await;
    assert_error(s, &b, 400, "bad_request");
    let wrong_uri = serde_json::json!({"code": "c", "code_verifier": "v", "redirect_uri": "http://127.0.0.1:9/x"});
    let (s, b) = daemon.post("/v1/apps/portal/login", Some(&wrong_uri)).await;
    assert_error(s, &b, 400, "bad_request");

    // Raw garbage: a 400 or a closed connection, and the daemon keeps serving.
    for garbage in [
        &b"\x00\x01\x02 not http\r\n\r\n"[..],
        b"GET /v1/health HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
    ] {
        let text = raw(&daemon.socket, garbage).await;
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4") || text.starts_with("HTTP/1.0 4"),
            "{text}"
        );
    }
    let (status, _) = daemon.get("/v1/health").await;
    assert_eq!(status, 200);
}
