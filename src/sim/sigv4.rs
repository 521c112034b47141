//! SigV4 verification: the simulator re-signs each request with the configured secret and
//! compares, so a daemon that signs wrongly (wrong key, region, service name, or a body
//! changed after signing) fails here as it would against AWS.
//!
//! Only header signing with `AWS4-HMAC-SHA256` is accepted (what the SDK sends); presigned
//! query strings and SigV4a are refused.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use http::request::Parts;

use super::wire::{self, Answer};
use super::{Service, SimOptions};

/// How far `X-Amz-Date` may be from the simulator's clock, as AWS allows.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The outcome of checking one request, with what could be read from its credential scope
/// even when the check failed (the call log wants it).
#[derive(Debug)]
pub(super) struct Verdict {
    /// The key that signed, when the signature held: the configured one (`None` here) or
    /// role credentials the simulator issued (their access key id).
    pub(super) issued_key: Option<String>,
    pub(super) access_key_id: Option<String>,
    pub(super) region: Option<String>,
    pub(super) outcome: Result<(), Rejection>,
}

#[derive(Debug)]
pub(super) enum Rejection {
    /// The access key id is neither the configured one nor issued credentials (or their
    /// session token is missing or wrong).
    UnknownKey,
    /// Issued role credentials past their expiration.
    Expired,
    /// Anything else: malformed header, wrong scope, stale date, signature mismatch.
    Invalid(String),
}

impl Rejection {
    /// The answer AWS gives for this failure in the service's own error format.
    pub(super) fn answer(&self, service: Service) -> Answer {
        match (self, service) {
            (Rejection::UnknownKey, Service::Oidc) => Answer::oidc_auth_error(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ),
            (Rejection::Invalid(why), Service::Oidc) => {
                Answer::oidc_auth_error("InvalidSignatureException", why)
            }
            (Rejection::UnknownKey, Service::Sts) => Answer::sts_error(
                403,
                "InvalidClientTokenId",
                "The security token included in the request is invalid.",
            ),
            (Rejection::Invalid(why), Service::Sts) => {
                Answer::sts_error(403, "SignatureDoesNotMatch", why)
            }
            (Rejection::Expired, Service::Sts) => Answer::sts_error(
                403,
                "ExpiredToken",
                "The security token included in the request is expired",
            ),
            (Rejection::Expired, Service::Oidc) => Answer::oidc_auth_error(
                "ExpiredTokenException",
                "The security token included in the request is expired",
            ),
        }
    }
}

/// The parsed `Authorization` header.
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix(ALGORITHM)?.strip_prefix(' ')?;
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => signature = Some(v),
            _ => return None,
        }
    }
    let scope: Vec<&str> = credential?.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return None;
    };
    let signed_headers: Vec<&str> = signed?.split(';').collect();
    if signed_headers.iter().any(|h| h.is_empty()) {
        return None;
    }
    Some(Authorization {
        access_key_id,
        date,
        region,
        service,
        signed_headers,
        signature: signature?,
    })
}

/// A signing key the simulator knows besides the configured one: role credentials it issued
/// (their secret, their session token, which must be sent as `X-Amz-Security-Token`, and
/// whether they are still valid). STS calls only.
pub(super) struct IssuedKey {
    pub(super) secret_access_key: String,
    pub(super) session_token: String,
    pub(super) expired: bool,
}

/// Checks the request's SigV4 signature for `service` against the configured identity, or
/// (STS only) role credentials the simulator issued, which `issued` looks up by key id.
pub(super) fn verify(
    parts: &Parts,
    body: &[u8],
    service: Service,
    opts: &SimOptions,
    now: SystemTime,
    issued: impl FnOnce(&str) -> Option<IssuedKey>,
) -> Verdict {
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(auth) = header.and_then(parse_authorization) else {
        return Verdict {
            issued_key: None,
            access_key_id: None,
            region: None,
            outcome: Err(Rejection::Invalid(
                "Authorization header is missing or is not AWS4-HMAC-SHA256 header signing"
                    .to_owned(),
            )),
        };
    };
    let key = if auth.access_key_id == opts.access_key_id {
        Ok((opts.secret_access_key.clone(), None))
    } else {
        match issued(auth.access_key_id).filter(|_| service == Service::Sts) {
            None => Err(Rejection::UnknownKey),
            Some(key) if key.expired => Err(Rejection::Expired),
            Some(key) => {
                let sent = parts
                    .headers
                    .get("x-amz-security-token")
                    .and_then(|v| v.to_str().ok());
                if sent
                    .is_some_and(|t| constant_time_eq(t.as_bytes(), key.session_token.as_bytes()))
                {
                    Ok((key.secret_access_key, Some(auth.access_key_id.to_owned())))
                } else {
                    Err(Rejection::UnknownKey)
                }
            }
        }
    };
    let (outcome, issued_key) = match key {
        Ok((secret, issued_key)) => {
            let outcome = check(parts, body, service, opts, now, &auth, &secret);
            let signed = outcome.is_ok().then_some(issued_key).flatten();
            (outcome, signed)
        }
        Err(rejection) => (Err(rejection), None),
    };
    Verdict {
        issued_key,
        access_key_id: Some(auth.access_key_id.to_owned()),
        region: Some(auth.region.to_owned()),
        outcome,
    }
}

fn check(
    parts: &Parts,
    body: &[u8],
    service: Service,
    opts: &SimOptions,
    now: SystemTime,
    auth: &Authorization<'_>,
    secret: &str,
) -> Result<(), Rejection> {
    let invalid = |why: &str| Err(Rejection::Invalid(why.to_owned()));
    if auth.region != opts.region {
        return invalid("Credential should be scoped to a valid region.");
    }
    if auth.service != service.signing_name() {
        return invalid("Credential should be scoped to correct service.");
    }
    let amz_date = parts
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(signed_at) = wire::parse_amz_date(amz_date) else {
        return invalid("X-Amz-Date is missing or malformed.");
    };
    if !amz_date.starts_with(auth.date) || auth.date.len() != 8 {
        return invalid("Credential should be scoped to the date of X-Amz-Date.");
    }
    let skew = now
        .duration_since(signed_at)
        .unwrap_or_else(|e| e.duration());
    if skew > MAX_CLOCK_SKEW {
        return invalid(
            "Signature expired: X-Amz-Date is more than 5 minutes from the server time.",
        );
    }
    let key = (auth.access_key_id, secret);
    let expected = resign(
        parts,
        body,
        service,
        opts,
        key,
        signed_at,
        &auth.signed_headers,
    )
    .ok_or_else(|| Rejection::Invalid("The request cannot be canonicalized.".to_owned()))?;
    if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        Ok(())
    } else {
        invalid(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method.",
        )
    }
}

/// Signs the request as the client should have: the signed headers only, the exact body,
/// the request's own time. `None` when the request cannot be signed at all.
fn resign(
    parts: &Parts,
    body: &[u8],
    service: Service,
    opts: &SimOptions,
    (access_key_id, secret): (&str, &str),
    time: SystemTime,
    signed_headers: &[&str],
) -> Option<String> {
    let host = parts.headers.get(http::header::HOST)?.to_str().ok()?;
    host.parse::<http::uri::Authority>().ok()?;
    let path_and_query = parts.uri.path_and_query()?.as_str();
    let uri = format!("http://{host}{path_and_query}");

    let mut headers: Vec<(&str, &str)> = Vec::new();
    for name in signed_headers {
        let mut found = false;
        for value in parts.headers.get_all(*name) {
            headers.push((name, value.to_str().ok()?));
            found = true;
        }
        if !found {
            return None;
        }
    }

    // The session token is one of the signed headers when the client sent it (the SDKs do),
    // so signing without it here gives the same signature.
    let identity = Credentials::new(
        access_key_id.to_owned(),
        secret.to_owned(),
        None,
        None,
        "iamtokend-sim",
    )
    .into();
    // Sign exactly what the client listed: the default exclusions would drop a header the
    // client chose to sign and so turn a correct signature into a mismatch.
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&opts.region)
        .name(service.signing_name())
        .time(time)
        .settings(settings)
        .build()
        .ok()?
        .into();
    let request = SignableRequest::new(
        parts.method.as_str(),
        uri,
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .ok()?;
    let (_, signature) = sign(request, &params).ok()?.into_parts();
    Some(signature)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_sdk_header_shape() {
        let a = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sts/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature=abc123",
        )
        .expect("parses");
        assert_eq!(a.access_key_id, "AKID");
        assert_eq!(a.date, "20240101");
        assert_eq!(a.service, "sts");
        assert_eq!(a.signed_headers, ["content-type", "host", "x-amz-date"]);
        assert_eq!(a.signature, "abc123");
    }

    #[test]
    fn refuses_malformed_headers() {
        for bad in [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sts, SignedHeaders=host, Signature=x",
            "AWS4-ECDSA-P256-SHA256 Credential=AKID/20240101/sts/aws4_request, SignedHeaders=host, Signature=x",
            "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sts/aws4_request, SignedHeaders=, Signature=x",
            "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/sts/aws4_request, Signature=x",
        ] {
            assert!(parse_authorization(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn compares_in_full() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
