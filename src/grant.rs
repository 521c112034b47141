//! A grant's request, built right before each call from its inputs read anew: the jwt-bearer
//! assertion (file or command), the refresh-token file, the subject token. [`request`] is the
//! one place the request of each configured grant is made; the owner task and `fetch` share
//! it. Errors name the source, never its contents. Also reads the claims of an idToken.
//!
//! An `assertion_command` is bounded: the allowlisted environment (`COMMAND_ENV`) only, its
//! own process group, at most [`MAX_SECRET_BYTES`] + 1 bytes of stdout read, and the whole
//! group killed over the cap or after [`COMMAND_TIMEOUT`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use zeroize::Zeroizing;

use crate::config::{AssertionSource, Grant};
use crate::secret::Secret;
use crate::upstream::GrantRequest;

/// How long an `assertion_command` may run before it is killed.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest assertion or refresh token read (JWTs are a few KiB; this bounds a runaway file).
pub(crate) const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A grant input could not be had. `code` is snake_case for `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct SourceError {
    /// e.g. "assertion_unreadable".
    pub(crate) code: &'static str,
    /// One sentence naming the source.
    pub(crate) message: String,
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
pub(crate) async fn read_assertion(source: &AssertionSource) -> Result<Secret, SourceError> {
    match source {
        AssertionSource::File(path) => read_secret_file(path, "assertion_file").await,
        AssertionSource::Command(argv) => run_assertion_command(argv).await,
    }
}

/// Reads a secret from a file, trimmed; empty is an error.
pub(crate) async fn read_secret_file(path: &Path, what: &str) -> Result<Secret, SourceError> {
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
    run_command(argv, COMMAND_TIMEOUT).await
}

/// The environment an `assertion_command` gets from the daemon's, and nothing else (never
/// the daemon's `AWS_*` credentials): what a program needs to find its tools, home and locale.
pub(crate) const COMMAND_ENV: &[&str] =
    &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME"];

/// The allowlisted subset of `vars` ([`COMMAND_ENV`]).
fn command_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    vars.filter(|(name, _)| COMMAND_ENV.iter().any(|allowed| name == *allowed))
        .collect()
}

/// How a command's run ended before its result is judged.
enum Ran {
    /// stdout closed after `len` bytes and the command exited.
    Exited(usize, std::process::ExitStatus),
    /// It printed more than [`MAX_SECRET_BYTES`].
    TooBig,
}

/// Runs `argv` with `timeout` (a parameter so tests need not wait [`COMMAND_TIMEOUT`]):
/// stdin and stderr null, the allowlisted environment, in its own process group; at most
/// [`MAX_SECRET_BYTES`] + 1 bytes of stdout are read into a fixed, zeroized buffer. Over the
/// cap, past the timeout or on a read error the whole group is killed and the child reaped.
async fn run_command(argv: &[String], timeout: Duration) -> Result<Secret, SourceError> {
    const CODE: &str = "assertion_command_failed";
    let Some((program, args)) = argv.split_first() else {
        return Err(SourceError::new(CODE, "assertion_command is empty".into()));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(command_env(std::env::vars_os()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            SourceError::new(CODE, format!("cannot run assertion_command {program}: {e}"))
        })?;
    // The group id is the child's pid, reserved until the child is reaped.
    let group = child.id().map(|id| nix::unistd::Pid::from_raw(id as i32));
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| SourceError::new(CODE, format!("assertion_command {program}: no stdout")))?;
    let mut buf = Zeroizing::new(vec![0u8; MAX_SECRET_BYTES as usize + 1]);
    let run = async {
        let mut len = 0;
        while len < buf.len() {
            match stdout.read(&mut buf[len..]).await {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if len as u64 > MAX_SECRET_BYTES {
            return Ok(Ran::TooBig);
        }
        Ok(Ran::Exited(len, child.wait().await?))
    };
    let ran = tokio::time::timeout(timeout, run).await;
    let failure = match ran {
        Ok(Ok(Ran::Exited(len, status))) => {
            if !status.success() {
                return Err(SourceError::new(
                    CODE,
                    format!("assertion_command {program} failed ({status})"),
                ));
            }
            return secret_from_slice(&buf[..len]).ok_or_else(|| {
                SourceError::new(
                    CODE,
                    format!(
                        "assertion_command {program} printed nothing usable (empty or not UTF-8)"
                    ),
                )
            });
        }
        Ok(Ok(Ran::TooBig)) => {
            format!("assertion_command {program} printed more than {MAX_SECRET_BYTES} bytes")
        }
        Ok(Err(e)) => format!("assertion_command {program}: {e}"),
        Err(_) => format!(
            "assertion_command {program} did not finish within {}s",
            timeout.as_secs()
        ),
    };
    // Not reaped yet, so the group id is still this child's: kill everything it started.
    if let Some(group) = group {
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
    // Reaped here; if even SIGKILL takes long (a process in D state), kill_on_drop and
    // tokio's orphan reaping finish it.
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    Err(SourceError::new(CODE, failure))
}

fn secret_from_slice(bytes: &[u8]) -> Option<Secret> {
    let trimmed = std::str::from_utf8(bytes).ok()?.trim();
    (!trimmed.is_empty()).then(|| Secret::new(trimmed))
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
pub(crate) fn identity_claim(id_token: &str, claim: &str) -> Option<String> {
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

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// Whether `pid` is gone: no such process, or a zombie waiting for a reaper (the test's
    /// PID 1 may not reap orphans). Polled for up to 10 s.
    async fn is_gone(pid: u32) -> bool {
        for _ in 0..100 {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat) => {
                    let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
                    if state.is_some_and(|s| s.starts_with('Z') || s.starts_with('X')) {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn pids(file: &Path) -> Vec<u32> {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    /// Peak resident memory of this test process, in bytes.
    fn peak_rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Issue 14 item 5: the output used to be read whole before the cap was checked (and a
    /// background process holding stdout made the daemon wait for the timeout).
    #[tokio::test]
    async fn a_command_printing_far_more_than_the_cap_is_cut_and_its_group_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pids");
        let script = format!(
            "echo $$ > {p}; sleep 1000 & echo $! >> {p}; head -c 300000000 /dev/zero; wait",
            p = pid_file.display()
        );
        let before = peak_rss();
        let err = run_command(&sh(&script), Duration::from_secs(20))
            .await
            .unwrap_err();
        assert_eq!(err.code, "assertion_command_failed");
        assert!(
            err.message.contains("printed more than 65536 bytes"),
            "{err}"
        );
        let grown = peak_rss().saturating_sub(before);
        assert!(grown < 64 << 20, "memory grew by {grown} bytes");
        for pid in pids(&pid_file) {
            assert!(is_gone(pid).await, "pid {pid} still runs");
        }
    }

    /// Issue 14 item 5: the timeout used to kill only the direct child.
    #[tokio::test]
    async fn on_timeout_the_commands_grandchildren_are_killed_too() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pids");
        let script = format!(
            "sleep 1000 & echo $! > {p}; echo $$ >> {p}; wait",
            p = pid_file.display()
        );
        let err = run_command(&sh(&script), Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(err.message.contains("did not finish within 3s"), "{err}");
        let pids = pids(&pid_file);
        assert_eq!(pids.len(), 2, "{pids:?}");
        for pid in pids {
            assert!(is_gone(pid).await, "pid {pid} still runs after the timeout");
        }
    }

    #[test]
    fn the_command_environment_is_the_allowlist_only() {
        let vars = [
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SESSION_TOKEN", "t"),
            ("LANG", "C.UTF-8"),
            ("RUST_LOG", "debug"),
            ("path", "lowercase is another name"),
        ]
        .map(|(k, v)| (k.into(), v.into()));
        let kept: Vec<String> = command_env(vars.into_iter())
            .into_iter()
            .map(|(k, _)| k.into_string().unwrap())
            .collect();
        assert_eq!(kept, ["PATH", "HOME", "LANG"]);
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
