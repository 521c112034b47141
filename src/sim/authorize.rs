//! `GET /authorize`: the browser half of the authorization-code flow. The simulator plays
//! the user who has already signed in and consented: it issues a code bound to the PKCE
//! challenge and redirects to `redirect_uri` with `code` and `state` (or an `error`), so the
//! whole `iamtokend login` flow runs without a browser. The token half (code + verifier)
//! is judged in `oidc.rs`.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::Full;

use super::state::{AuthCode, Inner, Shared};
use super::wire;

/// Issues a single-use code for a new user `user-code-<n>`.
pub(super) fn issue_code(
    inner: &mut Inner,
    client_id: &str,
    redirect_uri: &str,
    code_challenge: &str,
) -> String {
    let code = format!("code-{}", wire::random_alnum(32));
    let user = format!("user-code-{}", inner.next_serial());
    inner.auth_codes.insert(
        code.clone(),
        AuthCode {
            client_id: client_id.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            code_challenge: code_challenge.to_owned(),
            user,
        },
    );
    code
}

/// The answer to `GET /authorize?QUERY`: 302 to the redirect URI, or 400 with a reason when
/// the request itself is malformed (as the real page shows an error instead of redirecting).
pub(super) fn answer(shared: &Shared, query: &str) -> Response<Full<Bytes>> {
    let params: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let client_id = match get("client_id") {
        Some(c) if super::oidc::is_application_arn(c) => c,
        _ => return bad_request("client_id must be an application ARN"),
    };
    if get("response_type") != Some("code") {
        return bad_request("response_type must be code");
    }
    if get("code_challenge_method") != Some("S256") {
        return bad_request("code_challenge_method must be S256");
    }
    let Some(challenge) = get("code_challenge") else {
        return bad_request("code_challenge is required");
    };
    let Some(state) = get("state") else {
        return bad_request("state is required");
    };
    let Some((redirect_raw, redirect)) = get("redirect_uri").and_then(|raw| {
        url::Url::parse(raw)
            .ok()
            .map(|parsed| (raw.to_owned(), parsed))
    }) else {
        return bad_request("redirect_uri must be an absolute URL");
    };
    let mut inner = shared.lock();
    let state = inner
        .authorize_state
        .clone()
        .unwrap_or_else(|| state.to_owned());
    let mut location = redirect.clone();
    match inner.authorize_error.clone() {
        Some(error) => {
            location
                .query_pairs_mut()
                .append_pair("error", &error)
                .append_pair("error_description", "The user denied the request.")
                .append_pair("state", &state);
        }
        None => {
            let code = issue_code(&mut inner, client_id, &redirect_raw, challenge);
            location
                .query_pairs_mut()
                .append_pair("code", &code)
                .append_pair("state", &state);
        }
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(v) = header::HeaderValue::from_str(location.as_str()) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

fn bad_request(why: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{why}\n"))));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
}
