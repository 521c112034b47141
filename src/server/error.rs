//! `ApiError`: the one place where domain errors become HTTP statuses and error codes
//! (CONTRACT §5). [`super::response::error_response`] writes the envelope.

use http::StatusCode;

use crate::refresh::ServeError;

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    /// The answer's status (CONTRACT §5's table).
    pub(crate) status: StatusCode,
    /// The envelope's `error.code`: a fixed snake_case word, never client text.
    pub(crate) code: &'static str,
    /// The envelope's `error.message`: one sentence; any client text in it is bounded and
    /// quoted.
    pub(crate) message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `bad_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 403 `forbidden`: the app's `[access]` does not admit the peer.
    pub(crate) fn forbidden(app: &str) -> ApiError {
        let shown: String = app.chars().take(64).collect();
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this peer may not read app {shown:?} (see its [access])"),
        )
    }

    /// 409 `endpoint_disabled`: `[server] credentials_listen` is not set (CONTRACT §5b).
    pub(crate) fn endpoint_disabled() -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "endpoint_disabled",
            "the credentials endpoint is off; set [server] credentials_listen to turn it on",
        )
    }

    /// 403 `forbidden` on the credentials endpoint: the `Authorization` header is missing or
    /// is not the app's endpoint token (an unknown app answers the same, so the port does not
    /// tell which apps exist).
    pub(crate) fn bad_endpoint_token() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the Authorization header is not this app's endpoint token",
        )
    }

    /// 403 `forbidden` on the credentials endpoint: the request carries an `Origin` header,
    /// so a browser sent it; no web page may read credentials.
    pub(crate) fn origin_refused() -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "requests with an Origin header are refused (no browser may read credentials)",
        )
    }

    /// 408 `request_timeout`: the body did not arrive in time (not in the contract's list).
    pub(crate) fn body_timeout(limit: std::time::Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request body did not arrive within {}s",
                limit.as_secs()
            ),
        )
    }

    /// 429 `rate_limited`: this connection sent requests faster than allowed (not in the
    /// contract's list); the connection is closed after this answer.
    pub(crate) fn rate_limited() -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests on this connection; reconnect and slow down",
        )
    }

    /// 404 `unknown_app`.
    pub(crate) fn unknown_app(name: &str) -> ApiError {
        let shown: String = name.chars().take(64).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_app",
            format!("no app named {shown:?} is configured"),
        )
    }

    /// 404 `not_found`.
    pub(crate) fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} is not served here"),
        )
    }

    /// 405 `method_not_allowed` (not in the contract's list; see README "Socket API").
    pub(crate) fn method_not_allowed(allowed: &str) -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("this path takes {allowed}"),
        )
    }

    /// 413 for a body over the limit.
    pub(crate) fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            format!("the request body is larger than {limit} bytes"),
        )
    }
}

impl From<ServeError> for ApiError {
    fn from(err: ServeError) -> ApiError {
        let message = err.to_string();
        match err {
            ServeError::NeedsLogin { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "needs_login", message)
            }
            ServeError::Unavailable { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "token_unavailable",
                message,
            ),
            ServeError::NoRole { .. } => ApiError::new(StatusCode::CONFLICT, "no_role", message),
            ServeError::WrongGrant { .. } => {
                ApiError::new(StatusCode::CONFLICT, "wrong_grant", message)
            }
        }
    }
}
