//! `iamtokend fetch APP`: runs the app's grant once with the same config, no daemon, and prints
//! the `CreateTokenWithIAM` answer's fields. This is how an operator debugs a grant config.
//! Tokens are masked unless `--show-secrets`. A token-exchange app first runs its subject's
//! grant (recursively) to get a subject token; an authorization-code app needs `login`.

use std::future::Future;
use std::pin::Pin;

use serde_json::{json, Value};

use super::{print_stdout, Failure};
use crate::cli::FetchFormat;
use crate::config::{Config, GrantKind, LogFormat};
use crate::grant::{request, RequestError};
use crate::secret::Secret;
use crate::upstream::clients::Upstreams;
use crate::upstream::IssuedToken;

/// Runs `fetch`.
pub(crate) async fn run(
    file: &std::path::Path,
    app: &str,
    format: FetchFormat,
    show_secrets: bool,
) -> Result<(), Failure> {
    crate::logging::init(LogFormat::Text, "warn");
    let config = crate::config::load(file).map_err(|d| {
        Failure::failed(format!(
            "the config has errors\n{}",
            d.to_string().trim_end()
        ))
    })?;
    let upstreams = Upstreams::from_environment();
    let issued = one_shot(&config, &upstreams, app).await?;
    print_stdout(&render(&issued, format, show_secrets))
}

type Fetched<'a> = Pin<Box<dyn Future<Output = Result<IssuedToken, Failure>> + 'a>>;

/// One grant call for `app`, from its configured source.
fn one_shot<'a>(config: &'a Config, upstreams: &'a Upstreams, app: &'a str) -> Fetched<'a> {
    Box::pin(async move {
        let settings = config
            .apps
            .get(app)
            .ok_or_else(|| Failure::failed(format!("no app named {app:?} in the config")))?;
        let subject_token = |subject_app| async move {
            Ok::<_, Failure>(one_shot(config, upstreams, subject_app).await?.access_token)
        };
        let grant = match request(&settings.grant, None, subject_token).await {
            Ok(grant) => grant,
            Err(RequestError::Source(e)) => return Err(Failure::failed(e.message)),
            Err(RequestError::Subject(failure)) => return Err(failure),
            Err(RequestError::RefusedAgain(file)) => {
                return Err(Failure::failed(format!(
                    "{app}: the refresh token in {} was refused",
                    file.display()
                )))
            }
            Err(RequestError::NeedsLogin) => {
                return Err(Failure::failed(format!(
                    "{app} uses the {} grant, which needs a browser: run `iamtokend login {app}` against the daemon",
                    GrantKind::AuthorizationCode
                )))
            }
        };
        let issuer = upstreams.token_issuer(settings).await;
        issuer
            .create_token(grant)
            .await
            .map_err(|e| Failure::failed(format!("{app}: {}: {}", e.code(), e.message())))
    })
}

fn shown(secret: Option<&Secret>, show: bool) -> Value {
    match secret {
        None => Value::Null,
        Some(s) if show => json!(s.expose()),
        Some(s) => json!(format!("**** ({} chars)", s.expose().chars().count())),
    }
}

/// The OUTPUT fields, in the service's member names.
fn render(issued: &IssuedToken, format: FetchFormat, show: bool) -> String {
    let fields: Vec<(&str, Value)> = vec![
        ("accessToken", shown(Some(&issued.access_token), show)),
        ("tokenType", json!(issued.token_type)),
        ("expiresIn", json!(issued.expires_in)),
        ("refreshToken", shown(issued.refresh_token.as_ref(), show)),
        ("idToken", shown(issued.id_token.as_ref(), show)),
        ("issuedTokenType", json!(issued.issued_token_type)),
        ("scope", json!(issued.scopes)),
    ];
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    };
    match format {
        FetchFormat::Json => {
            let object: serde_json::Map<String, Value> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            format!("{}\n", Value::Object(object))
        }
        FetchFormat::Text => fields
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", text(v)))
            .collect(),
        FetchFormat::Table => {
            let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            let mut out = format!("{:<width$}  VALUE\n", "FIELD");
            for (k, v) in &fields {
                out.push_str(&format!("{k:<width$}  {}\n", text(v)));
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued() -> IssuedToken {
        IssuedToken {
            access_token: Secret::new("aoa-secret-value"),
            token_type: "Bearer".into(),
            expires_in: 3600,
            refresh_token: None,
            id_token: Some(Secret::new("a.b.c")),
            issued_token_type: Some("urn:ietf:params:oauth:token-type:access_token".into()),
            scopes: Some(vec!["openid".into(), "aws".into()]),
            identity_context: None,
        }
    }

    #[test]
    fn masks_unless_asked() {
        let text = render(&issued(), FetchFormat::Text, false);
        assert!(!text.contains("aoa-secret-value"), "{text}");
        assert!(text.contains("accessToken: **** (16 chars)"), "{text}");
        assert!(text.contains("refreshToken: -"));
        assert!(text.contains("scope: openid aws"));
        let json: Value =
            serde_json::from_str(&render(&issued(), FetchFormat::Json, true)).unwrap();
        assert_eq!(json["accessToken"], "aoa-secret-value");
        assert_eq!(json["expiresIn"], 3600);
        assert!(render(&issued(), FetchFormat::Table, false).starts_with("FIELD"));
    }
}
