//! The bytes of every answer the socket sends: JSON bodies, the error envelope
//! `{"error": {"code", "message"}}` of CONTRACT §5, and the token JSON (the one place a token
//! is written out).

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::error::ApiError;
use crate::clock::rfc3339;
use crate::refresh::Token;

/// A JSON answer.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    json_bytes_response(status, Bytes::from(body.to_string()))
}

/// A JSON answer whose body is already rendered.
pub(crate) fn json_bytes_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// The error envelope for `error`, with its status.
pub(crate) fn error_response(error: ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "error": { "code": error.code, "message": error.message }
    });
    json_response(error.status, &body)
}

/// A 200 with `body` as is, labelled `content_type`.
pub(crate) fn with_type(
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// The token JSON of CONTRACT §5, serialized straight from borrowed fields (this is the hot
/// path: no intermediate `Value` map). Never the refresh token.
#[derive(serde::Serialize)]
struct TokenBody<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scopes: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    issued_token_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<&'a str>,
}

/// The token JSON of CONTRACT §5, its `expires_in` as of `now`. Never the refresh token.
/// Everything but `expires_in` is
/// serialized once per token (escaping a JWT-sized id token is most of a request's work);
/// each answer splices the current `expires_in` in.
pub(crate) fn token_response(
    token: &Token,
    now: crate::clock::BootInstant,
) -> Response<Full<Bytes>> {
    with_type(token_json(token, now), "application/json")
}

/// The bytes of the token JSON as of `now`: what the token route answers and what a
/// `token_json` sink holds (the caller owns the zeroizing of the copy).
pub(crate) fn token_json(token: &Token, now: crate::clock::BootInstant) -> Vec<u8> {
    let rendered = token.rendered.get_or_init(|| render(token));
    let expires_in = token.ttl(now).as_secs().to_string();
    let mut bytes =
        Vec::with_capacity(rendered.before.len() + expires_in.len() + rendered.after.len());
    bytes.extend_from_slice(&rendered.before);
    bytes.extend_from_slice(expires_in.as_bytes());
    bytes.extend_from_slice(&rendered.after);
    bytes
}

/// Serializes `token` with a marker for `expires_in` and splits the JSON there.
fn render(token: &Token) -> crate::refresh::state::Rendered {
    const MARK: u64 = u64::MAX;
    let body = TokenBody {
        access_token: token.access_token.expose(),
        token_type: &token.token_type,
        expires_at: rfc3339(token.expires_at_wall),
        expires_in: MARK,
        scopes: token.scopes.as_deref(),
        issued_token_type: token.issued_token_type.as_deref(),
        id_token: token.id_token.as_ref().map(|t| t.expose()),
    };
    let mut json = zeroize::Zeroizing::new(Vec::with_capacity(
        256 + body.access_token.len() + body.id_token.map_or(0, str::len),
    ));
    // Serializing borrowed strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *json, &body);
    // The key and the number are outside any string (strings are quoted), so the first match
    // is the field itself.
    let key = format!("\"expires_in\":{MARK}");
    let at = json
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .unwrap_or(json.len());
    let split = (at + key.len() - MARK.to_string().len()).min(json.len());
    let after_at = (at + key.len()).min(json.len());
    crate::refresh::state::Rendered {
        before: zeroize::Zeroizing::new(json[..split].to_vec()),
        after: zeroize::Zeroizing::new(json[after_at..].to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;
    use std::time::Duration;

    #[test]
    fn the_rendered_token_json_splices_expires_in_and_keeps_every_field() {
        let now = crate::clock::BootInstant::from_secs(0);
        let token = Token {
            // The marker's digits inside a string must not confuse the split.
            access_token: Secret::new("tok-\"expires_in\":18446744073709551615"),
            token_type: "Bearer".into(),
            expires_at: now + Duration::from_secs(3600),
            expires_at_wall: std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            scopes: Some(vec!["openid".into()]),
            issued_token_type: None,
            id_token: Some(Secret::new("a.b.c")),
            identity_context: None,
            rendered: std::sync::OnceLock::new(),
        };
        for expires_in in [3599u64, 0, 12] {
            let r = render(&token);
            let mut bytes = r.before.to_vec();
            bytes.extend_from_slice(expires_in.to_string().as_bytes());
            bytes.extend_from_slice(&r.after);
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["expires_in"], expires_in);
            assert_eq!(v["access_token"], "tok-\"expires_in\":18446744073709551615");
            assert_eq!(v["expires_at"], "2027-01-15T08:00:00Z");
            assert_eq!(v["scopes"][0], "openid");
            assert_eq!(v["id_token"], "a.b.c");
            assert!(v.get("issued_token_type").is_none());
        }
        assert_eq!(format!("{:?}", render(&token)), "Rendered(<redacted>)");
    }

    #[tokio::test]
    async fn the_error_envelope_carries_status_code_and_message() {
        use http_body_util::BodyExt;
        let response = error_response(ApiError::unknown_app("nope"));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "unknown_app");
        assert_eq!(v["error"]["message"], "no app named \"nope\" is configured");
    }
}
