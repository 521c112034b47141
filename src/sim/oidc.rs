//! Simulated SSO OIDC `CreateTokenWithIAM`: validates the members of each grant, judges
//! codes, refresh tokens, assertions and subject tokens against what the simulator issued,
//! and answers with fresh tokens and an identity context STS will accept.
//!
//! It does not check JWT signatures, application grants or scopes against an application
//! configuration: any well-formed application ARN is an application.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::state::{Grantee, Inner, Session, Shared};
use super::wire::{self, Answer};

pub(super) const OPERATION: &str = "CreateTokenWithIAM";

const AUTHORIZATION_CODE: &str = "authorization_code";
const REFRESH_TOKEN: &str = "refresh_token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const REFRESH_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:refresh_token";

/// The members each grant takes; all of them are required for that grant and refused for
/// the others.
const GRANT_MEMBERS: &[(&str, &[&str])] = &[
    (AUTHORIZATION_CODE, &["code", "redirectUri", "codeVerifier"]),
    (REFRESH_TOKEN, &["refreshToken"]),
    (JWT_BEARER, &["assertion"]),
    (
        TOKEN_EXCHANGE,
        &["subjectToken", "subjectTokenType", "requestedTokenType"],
    ),
];

/// Scopes an application grants when the request names none.
const DEFAULT_SCOPES: [&str; 3] = ["openid", "aws", "sts:identity_context"];

/// The request body: a JSON object, or why it is not one.
pub(super) type Body = Result<Map<String, Value>, String>;

pub(super) fn parse(body: &[u8]) -> Body {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(members)) => Ok(members),
        Ok(_) => Err("The request body must be a JSON object.".to_owned()),
        Err(_) => Err("The request body is not valid JSON.".to_owned()),
    }
}

/// What the call log keeps of a request: client id, grant type, every member as a string.
pub(super) fn summarize(body: &Body) -> (Option<String>, Option<String>, BTreeMap<String, String>) {
    let Ok(members) = body else {
        return (None, None, BTreeMap::new());
    };
    let text = |k: &str| members.get(k).and_then(Value::as_str).map(str::to_owned);
    let params = members
        .iter()
        .map(|(k, v)| (k.clone(), flatten(v)))
        .collect();
    (text("clientId"), text("grantType"), params)
}

fn flatten(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

enum Grant {
    AuthorizationCode {
        code: String,
        redirect_uri: String,
        code_verifier: String,
    },
    RefreshToken(String),
    JwtBearer(String),
    TokenExchange {
        subject_token: String,
        wants_refresh_token: bool,
    },
}

struct Request {
    client_id: String,
    grant: Grant,
    scope: Option<Vec<String>>,
}

fn invalid_request(description: &str) -> Answer {
    Answer::oidc_error(
        400,
        "InvalidRequestException",
        "invalid_request",
        description,
    )
}

fn invalid_grant(description: &str) -> Answer {
    Answer::oidc_error(400, "InvalidGrantException", "invalid_grant", description)
}

/// Answers one `CreateTokenWithIAM` call.
pub(super) fn answer(shared: &Shared, body: &Body) -> Answer {
    let request = match body
        .as_ref()
        .map_err(|e| invalid_request(e))
        .and_then(validate)
    {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let now = wire::unix_secs(wire::now());
    let mut inner = shared.lock();
    let (user, refresh, issued_type) = match resolve(&mut inner, &request, now) {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    issue(&mut inner, &request, &user, refresh, issued_type, now)
}

fn validate(members: &Map<String, Value>) -> Result<Request, Answer> {
    let text = |k: &str| -> Result<Option<String>, Answer> {
        match members.get(k) {
            None => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(invalid_request(&format!("{k} must be a non-empty string."))),
        }
    };
    let client_id = text("clientId")?.ok_or_else(|| invalid_request("clientId is required."))?;
    if !is_application_arn(&client_id) {
        return Err(invalid_request(
            "clientId must be an application ARN (arn:aws:sso::<account>:application/ssoins-.../apl-...).",
        ));
    }
    let grant_type = text("grantType")?.ok_or_else(|| invalid_request("grantType is required."))?;
    let Some((_, own)) = GRANT_MEMBERS.iter().find(|(g, _)| *g == grant_type) else {
        return Err(Answer::oidc_error(
            400,
            "UnsupportedGrantTypeException",
            "unsupported_grant_type",
            "grantType is not supported.",
        ));
    };
    for key in members.keys() {
        if matches!(key.as_str(), "clientId" | "grantType" | "scope") || own.contains(&key.as_str())
        {
            continue;
        }
        let other = GRANT_MEMBERS.iter().any(|(_, m)| m.contains(&key.as_str()));
        return Err(invalid_request(&if other {
            format!("{key} does not belong to grant {grant_type}.")
        } else {
            format!("{key} is not a member of CreateTokenWithIAM.")
        }));
    }
    let mut values = Vec::with_capacity(own.len());
    for member in *own {
        values.push(text(member)?.ok_or_else(|| {
            invalid_request(&format!("{member} is required for grant {grant_type}."))
        })?);
    }
    let scope = match members.get("scope") {
        None => None,
        Some(Value::Array(items)) if !items.is_empty() => Some(
            items
                .iter()
                .map(|s| s.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid_request("scope must hold non-empty strings."))?,
        ),
        Some(_) => {
            return Err(invalid_request(
                "scope must be a non-empty array of strings.",
            ))
        }
    };
    let mut values = values.into_iter();
    let mut next = || values.next().unwrap_or_default();
    let grant = match grant_type.as_str() {
        AUTHORIZATION_CODE => Grant::AuthorizationCode {
            code: next(),
            redirect_uri: next(),
            code_verifier: next(),
        },
        REFRESH_TOKEN => Grant::RefreshToken(next()),
        JWT_BEARER => Grant::JwtBearer(next()),
        _ => {
            let subject_token = next();
            if next() != ACCESS_TOKEN_TYPE {
                return Err(invalid_request(&format!(
                    "subjectTokenType must be {ACCESS_TOKEN_TYPE}."
                )));
            }
            let wants_refresh_token = match next().as_str() {
                ACCESS_TOKEN_TYPE => false,
                REFRESH_TOKEN_TYPE => true,
                _ => {
                    return Err(invalid_request(&format!(
                        "requestedTokenType must be {ACCESS_TOKEN_TYPE} or {REFRESH_TOKEN_TYPE}."
                    )))
                }
            };
            Grant::TokenExchange {
                subject_token,
                wants_refresh_token,
            }
        }
    };
    Ok(Request {
        client_id,
        grant,
        scope,
    })
}

/// `arn:aws:sso::<12 digits>:application/ssoins-<id>/apl-<id>`.
pub(super) fn is_application_arn(s: &str) -> bool {
    let id = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    let Some(rest) = s.strip_prefix("arn:aws:sso::") else {
        return false;
    };
    let Some((account, rest)) = rest.split_once(":application/ssoins-") else {
        return false;
    };
    let Some((instance, app)) = rest.split_once("/apl-") else {
        return false;
    };
    account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) && id(instance) && id(app)
}

/// Judges the grant against what the simulator issued: the user, whether the answer
/// carries a refresh token, and the issued token type.
fn resolve(
    inner: &mut Inner,
    request: &Request,
    now: i64,
) -> Result<(String, bool, &'static str), Answer> {
    let client_id = &request.client_id;
    match &request.grant {
        Grant::AuthorizationCode {
            code,
            redirect_uri,
            code_verifier,
        } => {
            // Single use: any attempt consumes the code, as OAuth servers should.
            let issued = inner.auth_codes.remove(code).ok_or_else(|| {
                invalid_grant("The authorization code is invalid or was already used.")
            })?;
            if issued.client_id != *client_id || issued.redirect_uri != *redirect_uri {
                return Err(invalid_grant(
                    "The authorization code was issued to another client or redirect URI.",
                ));
            }
            if wire::b64url(Sha256::digest(code_verifier.as_bytes())) != issued.code_challenge {
                return Err(invalid_grant(
                    "The code verifier does not match the code challenge.",
                ));
            }
            Ok((issued.user, true, ACCESS_TOKEN_TYPE))
        }
        Grant::RefreshToken(token) => match inner.refresh_tokens.get(token) {
            Some(g) if g.client_id == *client_id => {
                let user = g.user.clone();
                if inner.rotation_grace {
                    // The client has proven it holds this token: its predecessor dies.
                    if let Some(parent) = inner.refresh_parent.remove(token) {
                        inner.refresh_tokens.remove(&parent);
                    }
                } else {
                    inner.refresh_tokens.remove(token);
                }
                Ok((user, true, ACCESS_TOKEN_TYPE))
            }
            _ => Err(invalid_grant(
                "The refresh token is invalid, expired or revoked.",
            )),
        },
        Grant::JwtBearer(assertion) => {
            if inner.rejected_assertions.contains(assertion) {
                return Err(invalid_grant(
                    "The assertion was rejected by the trusted token issuer.",
                ));
            }
            let user = jwt_subject(assertion)
                .ok_or_else(|| invalid_grant("The assertion is not a JWT."))?;
            Ok((
                user,
                inner.refresh_for.contains(client_id),
                ACCESS_TOKEN_TYPE,
            ))
        }
        Grant::TokenExchange {
            subject_token,
            wants_refresh_token,
        } => {
            let session = inner
                .access_tokens
                .get(subject_token)
                .filter(|s| s.expires_at > now)
                .ok_or_else(|| invalid_grant("The subject token is invalid or expired."))?;
            let user = session.user.clone();
            if *wants_refresh_token {
                Ok((user, true, REFRESH_TOKEN_TYPE))
            } else {
                Ok((
                    user,
                    inner.refresh_for.contains(client_id),
                    ACCESS_TOKEN_TYPE,
                ))
            }
        }
    }
}

/// The user of a JWT-shaped assertion: its payload's `sub`, else `user-jwt`. `None` when it
/// is not three dot-separated base64url parts with a decodable header and payload.
fn jwt_subject(assertion: &str) -> Option<String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, payload, signature] = parts[..] else {
        return None;
    };
    let b64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if header.is_empty()
        || payload.is_empty()
        || ![header, payload, signature].iter().all(|p| b64url(p))
    {
        return None;
    }
    wire::b64url_decode(header)?;
    let payload = wire::b64url_decode(payload)?;
    let claims: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
    Some(
        claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("user-jwt")
            .to_owned(),
    )
}

fn issue(
    inner: &mut Inner,
    request: &Request,
    user: &str,
    with_refresh_token: bool,
    issued_type: &str,
    now: i64,
) -> Answer {
    let client_id = &request.client_id;
    let lifetime = inner.lifetime_secs(client_id);
    let expires_at = now.saturating_add(lifetime);
    let serial = inner.next_serial();
    let context = wire::b64url(json!({ "user": user, "serial": serial }).to_string());
    let session = Session {
        user: user.to_owned(),
        expires_at,
    };
    let access_token = format!("aoa-{}", wire::random_alnum(32));
    inner
        .access_tokens
        .insert(access_token.clone(), session.clone());
    inner.contexts.insert(context.clone(), session);

    let scope = request
        .scope
        .clone()
        .unwrap_or_else(|| DEFAULT_SCOPES.map(str::to_owned).to_vec());
    // As the real service: the identity context (claim and awsAdditionalDetails) comes only
    // with the scope sts:identity_context.
    let with_context = scope.iter().any(|s| s == "sts:identity_context");
    let mut claims = json!({
        "sub": user,
        "aud": client_id,
        "iat": now,
        "exp": expires_at,
    });
    if with_context {
        claims["sts:identity_context"] = Value::String(context.clone());
    }
    let id_token = [
        json!({ "alg": "RS256", "typ": "JWT", "kid": "iamtokend-sim" }),
        claims,
    ]
    .iter()
    .map(|part| wire::b64url(part.to_string()))
    .chain([wire::b64url("sig")])
    .collect::<Vec<_>>()
    .join(".");

    let mut body = json!({
        "accessToken": access_token,
        "tokenType": "Bearer",
        "expiresIn": lifetime,
        "idToken": id_token,
        "issuedTokenType": issued_type,
        "scope": scope,
    });
    if with_context {
        body["awsAdditionalDetails"] = json!({ "identityContext": context });
    }
    if with_refresh_token {
        let refresh_token = format!("aor-{}", wire::random_alnum(48));
        inner.refresh_tokens.insert(
            refresh_token.clone(),
            Grantee {
                client_id: client_id.clone(),
                user: user.to_owned(),
            },
        );
        if let (true, Grant::RefreshToken(used)) = (inner.rotation_grace, &request.grant) {
            inner
                .refresh_parent
                .insert(refresh_token.clone(), used.clone());
        }
        body["refreshToken"] = Value::String(refresh_token);
    }
    Answer::json(200, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_arns() {
        assert!(is_application_arn(
            "arn:aws:sso::123456789012:application/ssoins-1234567890abcdef/apl-1234567890abcdef"
        ));
        for bad in [
            "",
            "arn:aws:sso::12345678901:application/ssoins-1/apl-1",
            "arn:aws:sso::123456789012:application/ssoins-/apl-1",
            "arn:aws:sso::123456789012:application/ssoins-1/apl-",
            "arn:aws:iam::123456789012:application/ssoins-1/apl-1",
            "arn:aws:sso::123456789012:application/ssoins-1/apl-1/x",
        ] {
            assert!(!is_application_arn(bad), "{bad}");
        }
    }

    #[test]
    fn jwt_subjects() {
        let jwt = |payload: &str| format!("{}.{}.c2ln", wire::b64url("{}"), wire::b64url(payload));
        assert_eq!(
            jwt_subject(&jwt(r#"{"sub":"alice"}"#)).as_deref(),
            Some("alice")
        );
        assert_eq!(
            jwt_subject(&jwt(r#"{"iss":"x"}"#)).as_deref(),
            Some("user-jwt")
        );
        assert_eq!(jwt_subject(&jwt("not json")).as_deref(), Some("user-jwt"));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "a+b.c.d",
            ".e30.x",
            "e30..x",
            "e30.e30.s/g",
        ] {
            assert!(jwt_subject(bad).is_none(), "{bad}");
        }
    }
}
