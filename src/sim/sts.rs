//! Simulated STS `AssumeRole` with one Identity Center provided context: validates the form
//! fields, accepts only identity contexts the simulator issued and whose token is still
//! valid, and answers the awsQuery XML the SDK parses. The credentials it issues are kept,
//! so `GetCallerIdentity` signed with them (checked in `sigv4`, session token included, as
//! the real STS does) answers the assumed-role identity: one signed AWS call works end to
//! end in dev mode. Signed with the simulator's own key it answers an IAM user of that key.
//!
//! Role trust policies, session policies and tags are not simulated; other actions get
//! `InvalidAction`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::state::{Issued, Shared};
use super::wire::{self, xml_escape, Answer};

pub(super) const ACTION: &str = "AssumeRole";
const CALLER_IDENTITY: &str = "GetCallerIdentity";
/// The account `GetCallerIdentity` names for the simulator's own key.
const SIM_ACCOUNT: &str = "000000000000";
const VERSION: &str = "2011-06-15";
const IDENTITY_CENTER_PROVIDER: &str = "arn:aws:iam::aws:contextProvider/IdentityCenter";
const PROVIDER_ARN: &str = "ProvidedContexts.member.1.ProviderArn";
const CONTEXT_ASSERTION: &str = "ProvidedContexts.member.1.ContextAssertion";
/// STS's limits on `DurationSeconds`, in seconds.
const DURATION_RANGE: std::ops::RangeInclusive<u64> = 900..=43_200;
const DEFAULT_DURATION_SECS: u64 = 3600;

/// The form fields, or why the body is not a form.
pub(super) type Body = Result<BTreeMap<String, String>, String>;

/// Decodes an `application/x-www-form-urlencoded` body; a repeated field keeps its last value.
pub(super) fn parse(body: &[u8]) -> Body {
    let text = std::str::from_utf8(body).map_err(|_| "The body is not UTF-8.".to_owned())?;
    let mut fields = BTreeMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let malformed = || "The body is not a well-formed form.".to_owned();
        fields.insert(
            percent_decode(k).ok_or_else(malformed)?,
            percent_decode(v).ok_or_else(malformed)?,
        );
    }
    Ok(fields)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn validation(message: &str) -> Answer {
    Answer::sts_error(400, "ValidationError", message)
}

/// Answers one STS call; `caller` is the issued access key id that signed it, if any.
pub(super) fn answer(shared: &Shared, body: &Body, caller: Option<&str>) -> Answer {
    let fields = match body {
        Ok(f) => f,
        Err(why) => return validation(why),
    };
    let field = |k: &str| fields.get(k).map(String::as_str);
    let action = field("Action").unwrap_or_default();
    if action == CALLER_IDENTITY && field("Version") == Some(VERSION) {
        return caller_identity(shared, caller);
    }
    if action != ACTION || field("Version") != Some(VERSION) {
        return Answer::sts_error(
            400,
            "InvalidAction",
            &format!(
                "Could not find operation {action} for version {}",
                field("Version").unwrap_or_default()
            ),
        );
    }
    let Some((account, role_name)) = field("RoleArn").and_then(parse_role_arn) else {
        return validation("RoleArn must be an IAM role ARN (arn:aws:iam::<account>:role/<name>).");
    };
    let session_name = field("RoleSessionName").unwrap_or_default();
    if !is_session_name(session_name) {
        return validation("RoleSessionName must be 2 to 64 characters of [\\w+=,.@-].");
    }
    let duration = match field("DurationSeconds").map(str::parse::<u64>) {
        None => DEFAULT_DURATION_SECS,
        Some(Ok(d)) if DURATION_RANGE.contains(&d) => d,
        Some(_) => return validation("DurationSeconds must be between 900 and 43200."),
    };
    let contexts: Vec<&String> = fields
        .keys()
        .filter(|k| k.starts_with("ProvidedContexts."))
        .collect();
    if contexts.len() != 2 || field(PROVIDER_ARN).is_none() || field(CONTEXT_ASSERTION).is_none() {
        return validation("Exactly one ProvidedContexts member with ProviderArn and ContextAssertion is required.");
    }
    if field(PROVIDER_ARN) != Some(IDENTITY_CENTER_PROVIDER) {
        return validation(&format!("ProviderArn must be {IDENTITY_CENTER_PROVIDER}."));
    }
    let assertion = field(CONTEXT_ASSERTION).unwrap_or_default();
    if !(4..=3072).contains(&assertion.len()) {
        return validation("ContextAssertion must be 4 to 3072 characters.");
    }

    let now = wire::unix_secs(wire::now());
    let credentials_lifetime = {
        let inner = shared.lock();
        let live = inner
            .contexts
            .get(assertion)
            .is_some_and(|s| s.expires_at > now);
        if !live {
            return Answer::sts_error(
                400,
                "InvalidContextAssertion",
                "The context assertion is malformed, expired or was not issued by a trusted provider.",
            );
        }
        inner.credentials_lifetime
    };
    let lifetime = credentials_lifetime.unwrap_or(Duration::from_secs(duration));
    let expiration = now.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
    let access_key_id = format!("ASIA{}", wire::random_upper(16));
    let secret_access_key = wire::random_alnum(40);
    let session_token = wire::random_alnum(120);
    let role_id = format!("AROA{}", wire::random_upper(17));
    shared.lock().issued.insert(
        access_key_id.clone(),
        Issued {
            secret_access_key: secret_access_key.clone(),
            session_token: session_token.clone(),
            expires_at: expiration,
            arn: format!("arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}"),
            user_id: format!("{role_id}:{session_name}"),
            account: account.to_owned(),
        },
    );
    Answer::xml(
        200,
        format!(
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
             <AssumeRoleResult>\
             <Credentials>\
             <AccessKeyId>{}</AccessKeyId>\
             <SecretAccessKey>{}</SecretAccessKey>\
             <SessionToken>{}</SessionToken>\
             <Expiration>{}</Expiration>\
             </Credentials>\
             <AssumedRoleUser>\
             <AssumedRoleId>{}:{}</AssumedRoleId>\
             <Arn>arn:aws:sts::{}:assumed-role/{}/{}</Arn>\
             </AssumedRoleUser>\
             <PackedPolicySize>0</PackedPolicySize>\
             </AssumeRoleResult>\
             <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
             </AssumeRoleResponse>",
            access_key_id,
            secret_access_key,
            session_token,
            wire::rfc3339(expiration),
            role_id,
            xml_escape(session_name),
            account,
            xml_escape(role_name),
            xml_escape(session_name),
            wire::request_id(),
        ),
    )
}

/// `GetCallerIdentity`: who signed the call.
fn caller_identity(shared: &Shared, caller: Option<&str>) -> Answer {
    let (arn, user_id, account) = match caller.and_then(|key| {
        let inner = shared.lock();
        let issued = inner.issued.get(key)?;
        Some((
            issued.arn.clone(),
            issued.user_id.clone(),
            issued.account.clone(),
        ))
    }) {
        Some(who) => who,
        None => (
            format!("arn:aws:iam::{SIM_ACCOUNT}:user/iamtokend-sim"),
            "AIDASIMULATOR0000001".to_owned(),
            SIM_ACCOUNT.to_owned(),
        ),
    };
    Answer::xml(
        200,
        format!(
            "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
             <GetCallerIdentityResult>\
             <Arn>{}</Arn><UserId>{}</UserId><Account>{}</Account>\
             </GetCallerIdentityResult>\
             <ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
             </GetCallerIdentityResponse>",
            xml_escape(&arn),
            xml_escape(&user_id),
            account,
            wire::request_id(),
        ),
    )
}

/// `arn:aws:iam::<12 digits>:role/[path/]name` as (account, name).
fn parse_role_arn(arn: &str) -> Option<(&str, &str)> {
    let (account, path) = arn.strip_prefix("arn:aws:iam::")?.split_once(":role/")?;
    let name = path.rsplit('/').next()?;
    let valid = account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && path.len() <= 512
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b));
    valid.then_some((account, name))
}

fn is_session_name(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_forms() {
        let f = parse(b"Action=AssumeRole&A=arn%3Aaws%3Aiam&B=a+b&C=&D").expect("form");
        assert_eq!(f["Action"], "AssumeRole");
        assert_eq!(f["A"], "arn:aws:iam");
        assert_eq!(f["B"], "a b");
        assert_eq!(f["C"], "");
        assert_eq!(f["D"], "");
        assert!(parse(b"A=%zz").is_err());
        assert!(parse(b"A=%4").is_err());
        assert!(parse(b"A=%ff").is_err());
        assert!(parse(&[0xff]).is_err());
    }

    #[test]
    fn role_arns_and_session_names() {
        assert_eq!(
            parse_role_arn("arn:aws:iam::123456789012:role/team/Analytics"),
            Some(("123456789012", "Analytics"))
        );
        assert!(parse_role_arn("arn:aws:iam::12345678901:role/x").is_none());
        assert!(parse_role_arn("arn:aws:iam::123456789012:role/").is_none());
        assert!(parse_role_arn("arn:aws:iam::123456789012:user/x").is_none());
        assert!(is_session_name("iamtokend-app@x.y"));
        assert!(!is_session_name("a"));
        assert!(!is_session_name("has space"));
        assert!(!is_session_name(&"a".repeat(65)));
    }
}
