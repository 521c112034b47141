//! A grant's request, built right before each call from its inputs read anew: the jwt-bearer
//! assertion (file or command), the refresh-token file, the subject token. [`request`] is the
//! one place the request of each configured grant is made; the owner task and `fetch` share
//! it. Errors name the source, never its contents. Also reads the claims of an idToken.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::config::{AssertionSource, Grant};
use crate::secret::Secret;
use crate::upstream::GrantRequest;

/// How long an `assertion_command` may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest assertion or refresh token read (JWTs are a few KiB; this bounds a runaway file).
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A grant input could not be had. `code` is snake_case for `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// e.g. "assertion_unreadable".
    pub code: &'static str,
    /// One sentence naming the source.
    pub message: String,
}

impl SourceError {
    fn new(code: &'static str, message: String) -> SourceError {
        SourceError { code, message }
    }
}

/// Why a grant's request could not be built. `E` is the subject-token source's error.
#[derive(Debug)]
pub(crate) enum RequestError<E> {
    /// An input could not be read.
    Source(SourceError),
    /// A token-exchange app's subject token could not be had.
    Subject(E),
    /// The authorization-code grant: its code comes only from a login.
    NeedsLogin,
    /// `refresh_token_file` still holds the refresh token that was just refused.
    RefusedAgain(PathBuf),
}

/// The request of the configured `grant`, its inputs read now. `refused` is a refresh token
/// upstream has just refused (a `refresh_token_file` holding that same token is no use);
/// `subject_token` gets a token-exchange app its subject's access token (the owner waits for
/// the subject app's owner, `fetch` runs the subject's grant).
pub(crate) async fn request<'a, E, F, Fut>(
    grant: &'a Grant,
    refused: Option<&Secret>,
    subject_token: F,
) -> Result<GrantRequest, RequestError<E>>
where
    F: FnOnce(&'a str) -> Fut,
    Fut: Future<Output = Result<Secret, E>>,
{
    Ok(match grant {
        Grant::JwtBearer { assertion } => GrantRequest::JwtBearer {
            assertion: read_assertion(assertion)
                .await
                .map_err(RequestError::Source)?,
        },
        Grant::TokenExchange {
            subject_app,
            requested_token_type,
        } => GrantRequest::TokenExchange {
            subject_token: subject_token(subject_app)
                .await
                .map_err(RequestError::Subject)?,
            requested_token_type: requested_token_type.urn(),
        },
        Grant::RefreshToken { refresh_token_file } => {
            let from_file = read_secret_file(refresh_token_file, "refresh_token_file")
                .await
                .map_err(RequestError::Source)?;
            if refused == Some(&from_file) {
                return Err(RequestError::RefusedAgain(refresh_token_file.clone()));
            }
            GrantRequest::RefreshToken {
                refresh_token: from_file,
            }
        }
        Grant::AuthorizationCode { .. } => return Err(RequestError::NeedsLogin),
    })
}

/// Reads the jwt-bearer assertion anew.
pub async fn read_assertion(source: &AssertionSource) -> Result<Secret, SourceError> {
    match source {
        AssertionSource::File(path) => read_secret_file(path, "assertion_file").await,
        AssertionSource::Command(argv) => run_assertion_command(argv).await,
    }
}

/// Reads a secret from a file, trimmed; empty is an error.
pub async fn read_secret_file(path: &Path, what: &str) -> Result<Secret, SourceError> {
    let code = if what == "assertion_file" {
        "assertion_unreadable"
    } else {
        "refresh_token_unreadable"
    };
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        SourceError::new(code, format!("cannot read {what} {}: {e}", path.display()))
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| {
            SourceError::new(code, format!("cannot read {what} {}: {e}", path.display()))
        })?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(SourceError::new(
            code,
            format!(
                "{what} {} is larger than {MAX_SECRET_BYTES} bytes",
                path.display()
            ),
        ));
    }
    secret_from_bytes(bytes).ok_or_else(|| {
        SourceError::new(
            code,
            format!("{what} {} is empty or not UTF-8", path.display()),
        )
    })
}

async fn run_assertion_command(argv: &[String]) -> Result<Secret, SourceError> {
    const CODE: &str = "assertion_command_failed";
    let Some((program, args)) = argv.split_first() else {
        return Err(SourceError::new(CODE, "assertion_command is empty".into()));
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            SourceError::new(CODE, format!("cannot run assertion_command {program}: {e}"))
        })?;
    let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| {
            SourceError::new(
                CODE,
                format!(
                    "assertion_command {program} did not finish within {}s",
                    COMMAND_TIMEOUT.as_secs()
                ),
            )
        })?
        .map_err(|e| SourceError::new(CODE, format!("assertion_command {program}: {e}")))?;
    if !output.status.success() {
        return Err(SourceError::new(
            CODE,
            format!("assertion_command {program} failed ({})", output.status),
        ));
    }
    if output.stdout.len() as u64 > MAX_SECRET_BYTES {
        return Err(SourceError::new(
            CODE,
            format!("assertion_command {program} printed more than {MAX_SECRET_BYTES} bytes"),
        ));
    }
    secret_from_bytes(output.stdout).ok_or_else(|| {
        SourceError::new(
            CODE,
            format!("assertion_command {program} printed nothing usable (empty or not UTF-8)"),
        )
    })
}

fn secret_from_bytes(bytes: Vec<u8>) -> Option<Secret> {
    let text = zeroize::Zeroizing::new(String::from_utf8(bytes).ok()?);
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| Secret::new(trimmed))
}

/// The `sts:identity_context` claim of an idToken (base64url JSON payload; no signature check
/// is needed to read it, see the reference §2).
pub fn identity_context_claim(id_token: &str) -> Option<String> {
    identity_claim(id_token, "sts:identity_context")
}

/// A string claim of a JWT's payload (read without verifying: the daemon only routes on it).
pub fn identity_claim(id_token: &str, claim: &str) -> Option<String> {
    use base64::Engine;
    let payload = id_token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims
        .get(claim)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn assertion_file_is_trimmed_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jwt");
        std::fs::write(&path, "one.two.three\n").unwrap();
        let src = AssertionSource::File(path.clone());
        assert_eq!(
            read_assertion(&src).await.unwrap().expose(),
            "one.two.three"
        );
        std::fs::write(&path, "four.five.six").unwrap();
        assert_eq!(
            read_assertion(&src).await.unwrap().expose(),
            "four.five.six"
        );
        std::fs::write(&path, "  \n").unwrap();
        let err = read_assertion(&src).await.unwrap_err();
        assert_eq!(err.code, "assertion_unreadable");
        std::fs::remove_file(&path).unwrap();
        assert!(read_assertion(&src).await.is_err());
    }

    #[tokio::test]
    async fn assertion_command_stdout_and_failures() {
        let ok = AssertionSource::Command(vec!["echo".into(), " x.y.z ".into()]);
        assert_eq!(read_assertion(&ok).await.unwrap().expose(), "x.y.z");
        let fails = AssertionSource::Command(vec!["false".into()]);
        let err = read_assertion(&fails).await.unwrap_err();
        assert!(err.message.contains("failed"), "{err}");
        let missing = AssertionSource::Command(vec!["/nonexistent/get-jwt".into()]);
        assert!(read_assertion(&missing).await.is_err());
    }

    #[test]
    fn reads_identity_context_claim() {
        use base64::Engine;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            enc("{}"),
            enc(r#"{"sub":"u","sts:identity_context":"ctx-1"}"#)
        );
        assert_eq!(identity_context_claim(&token).as_deref(), Some("ctx-1"));
        assert_eq!(identity_context_claim("garbage"), None);
        assert_eq!(identity_context_claim("a.!!!.c"), None);
    }
}
