//! Small wire helpers shared by both simulated services: the clock, random token material,
//! base64url, timestamps, XML escaping, and [`Answer`], the one shape every reply takes
//! before it becomes an HTTP response.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_smithy_types::date_time::{DateTime, Format};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use rand::distr::{Alphanumeric, SampleString};

/// Header carrying the modeled error type of a restJson1 error; without it the SDK cannot
/// classify the error (see the protocol reference on mocks).
pub(super) const ERROR_TYPE_HEADER: &str = "x-amzn-errortype";

/// The wall clock. The crate bans `SystemTime::now` so that time is injected everywhere else;
/// the simulator stands in for AWS, whose clock is by nature the real one.
#[allow(clippy::disallowed_methods)] // the sim's one clock read
pub(super) fn now() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch; times before it (a broken clock) count as 0.
pub(super) fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC with a `Z`, whole seconds, as STS writes `Expiration`.
pub(super) fn rfc3339(unix_secs: i64) -> String {
    DateTime::from_secs(unix_secs)
        .fmt(Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

/// Parses SigV4's basic ISO 8601 form `YYYYMMDDTHHMMSSZ`.
pub(super) fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    let parsed = DateTime::from_str(&rfc, Format::DateTime).ok()?;
    SystemTime::try_from(parsed).ok()
}

/// `n` random ASCII letters and digits.
pub(super) fn random_alnum(n: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), n)
}

/// `n` random upper-case letters and digits, the alphabet of AWS key ids.
pub(super) fn random_upper(n: usize) -> String {
    random_alnum(n).to_ascii_uppercase()
}

/// A request id shaped like AWS's (UUID-shaped hex).
pub(super) fn request_id() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

pub(super) fn b64url(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub(super) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

/// Escapes text for an XML element body.
pub(super) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// One reply, before it becomes an HTTP response; also what the call log records.
#[derive(Debug)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) content_type: String,
    /// Sent as `X-Amzn-ErrorType` (restJson1 errors only; awsQuery carries the code in the body).
    pub(super) error_header: Option<String>,
    /// The error type recorded in the call log.
    pub(super) error: Option<String>,
    pub(super) body: String,
}

impl Answer {
    pub(super) fn json(status: u16, body: &serde_json::Value) -> Answer {
        Answer {
            status,
            content_type: "application/json".to_owned(),
            error_header: None,
            error: None,
            body: body.to_string(),
        }
    }

    /// A restJson1 error as SSO OIDC sends it: the type in the header, the OAuth code and
    /// description in the body.
    pub(super) fn oidc_error(
        status: u16,
        error_type: &str,
        error: &str,
        description: &str,
    ) -> Answer {
        let body = serde_json::json!({ "error": error, "error_description": description });
        Answer {
            error_header: Some(error_type.to_owned()),
            error: Some(error_type.to_owned()),
            ..Answer::json(status, &body)
        }
    }

    /// An authentication failure as AWS's front end sends it for JSON services: a `message`,
    /// no OAuth code.
    pub(super) fn oidc_auth_error(error_type: &str, message: &str) -> Answer {
        let body = serde_json::json!({ "message": message });
        Answer {
            error_header: Some(error_type.to_owned()),
            error: Some(error_type.to_owned()),
            ..Answer::json(403, &body)
        }
    }

    pub(super) fn xml(status: u16, body: String) -> Answer {
        Answer::raw(status, "text/xml", body)
    }

    pub(super) fn raw(status: u16, content_type: &str, body: String) -> Answer {
        Answer {
            status,
            content_type: content_type.to_owned(),
            error_header: None,
            error: None,
            body,
        }
    }

    /// An awsQuery error document; `Type` is `Sender` for 4xx, `Receiver` otherwise.
    pub(super) fn sts_error(status: u16, code: &str, message: &str) -> Answer {
        let kind = if (400..500).contains(&status) {
            "Sender"
        } else {
            "Receiver"
        };
        let body = format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
             <Error><Type>{kind}</Type><Code>{}</Code><Message>{}</Message></Error>\
             <RequestId>{}</RequestId></ErrorResponse>",
            xml_escape(code),
            xml_escape(message),
            request_id()
        );
        Answer {
            error: Some(code.to_owned()),
            ..Answer::xml(status, body)
        }
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.content_type) {
            headers.insert(header::CONTENT_TYPE, v);
        }
        if let Some(v) = self
            .error_header
            .and_then(|t| HeaderValue::from_str(&t).ok())
        {
            headers.insert(ERROR_TYPE_HEADER, v);
        }
        if let Ok(v) = HeaderValue::from_str(&request_id()) {
            headers.insert("x-amzn-requestid", v);
        }
        response
    }
}
