//! The client subcommands: one request to the daemon's socket each, then print.

use std::time::{Duration, SystemTime};

use http::Method;
use serde_json::Value;
use zeroize::Zeroizing;

use super::{daemon_failure, print_stdout, Failure};
use crate::cli::{Command, StatusFormat, TokenFormat};
use crate::client::{zeroize_json, SocketClient};

/// Runs a client subcommand.
pub(crate) async fn run(command: Command, client: &SocketClient) -> Result<(), Failure> {
    match command {
        Command::Token {
            app,
            min_ttl,
            format,
            ..
        } => token(client, &app, min_ttl, format).await,
        Command::CredentialProcess { app, .. } => credential_process(client, &app).await,
        Command::Exec { app, command, .. } => super::exec::run(client, &app, command).await,
        Command::Status { format, .. } => status(client, format).await,
        Command::Refresh { app, .. } => refresh(client, &app).await,
        Command::Serve { .. }
        | Command::CheckConfig
        | Command::Fetch { .. }
        | Command::Login { .. }
        | Command::Completions { .. } => Err(Failure::usage("not a client subcommand")),
    }
}

/// App names travel in the path; refuse anything that is not a valid name before sending.
pub(crate) fn app_path(app: &str, action: &str) -> Result<String, Failure> {
    let valid = !app.is_empty()
        && app
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && app.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        });
    if !valid {
        return Err(Failure::usage(format!(
            "{app:?} is not an app name (lowercase letters, digits, '.', '_', '-')"
        )));
    }
    Ok(format!("/v1/apps/{app}/{action}"))
}

async fn token(
    client: &SocketClient,
    app: &str,
    min_ttl: Option<u64>,
    format: TokenFormat,
) -> Result<(), Failure> {
    let mut path = app_path(app, "token")?;
    if let Some(secs) = min_ttl {
        path.push_str(&format!("?min_ttl={secs}"));
    }
    let mut answer = client.request(Method::GET, &path, None).await?;
    if !answer.status.is_success() {
        return Err(daemon_failure(&answer));
    }
    let printed = match format {
        TokenFormat::Raw => match answer.body.get("access_token").and_then(Value::as_str) {
            Some(token) => print_stdout(&Zeroizing::new(format!("{token}\n"))),
            None => Err(Failure::failed("the daemon's answer has no access_token")),
        },
        TokenFormat::Json => print_stdout(&Zeroizing::new(format!("{}\n", answer.body))),
    };
    zeroize_json(&mut answer.body);
    printed
}

async fn credential_process(client: &SocketClient, app: &str) -> Result<(), Failure> {
    let mut answer = client
        .request(Method::GET, &app_path(app, "credentials")?, None)
        .await?;
    if !answer.status.is_success() {
        return Err(daemon_failure(&answer));
    }
    let printed = print_stdout(&Zeroizing::new(format!("{}\n", answer.body)));
    zeroize_json(&mut answer.body);
    printed
}

async fn refresh(client: &SocketClient, app: &str) -> Result<(), Failure> {
    let mut answer = client
        .request(Method::POST, &app_path(app, "refresh")?, None)
        .await?;
    if !answer.status.is_success() {
        return Err(daemon_failure(&answer));
    }
    let expires = answer
        .body
        .get("expires_at")
        .and_then(Value::as_str)
        .unwrap_or("?");
    eprintln!("{app}: refreshed; expires at {expires}");
    // The answer is the token JSON: wiped, though only its expiry was shown.
    zeroize_json(&mut answer.body);
    Ok(())
}

/// Whether a `/v1/apps` row counts as ready for `status`'s exit code. A routine refresh of a
/// healthy app (`refreshing`, a token held, no error) is not a reason to fail a health check
/// for the moment it takes.
fn healthy(row: &Value) -> bool {
    match row.get("state").and_then(Value::as_str) {
        Some("ready") => true,
        Some("refreshing") => {
            row.get("last_error").is_none_or(Value::is_null)
                && row.get("expires_at").is_some_and(Value::is_string)
        }
        _ => false,
    }
}

async fn status(client: &SocketClient, format: StatusFormat) -> Result<(), Failure> {
    let answer = client.request(Method::GET, "/v1/apps", None).await?;
    if !answer.status.is_success() {
        return Err(daemon_failure(&answer));
    }
    let apps = answer
        .body
        .get("apps")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match format {
        StatusFormat::Json => print_stdout(&format!("{}\n", answer.body))?,
        StatusFormat::Table => {
            let mut table = status_table(&apps, read_wall_now());
            table.push_str(&seal_line(answer.body.get("state")));
            print_stdout(&table)?
        }
    }
    let not_ready: Vec<&str> = apps
        .iter()
        .filter(|a| !healthy(a))
        .filter_map(|a| a.get("name").and_then(Value::as_str))
        .collect();
    if not_ready.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "not ready: {}",
            not_ready.join(", ")
        )))
    }
}

#[allow(clippy::disallowed_methods)] // a client process: the display's "in 5m" is relative to now
fn read_wall_now() -> SystemTime {
    SystemTime::now()
}

/// The table `status` prints. Times are shown relative to `now` ("in 4m12s", "3s ago").
pub(crate) fn status_table(apps: &[Value], now: SystemTime) -> String {
    let header = [
        "APP",
        "GRANT",
        "STATE",
        "EXPIRES",
        "NEXT REFRESH",
        "LAST REFRESH",
        "LAST ERROR",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    // Each row's sink lines, printed under it (one per `[[sink]]`).
    let mut sink_lines: Vec<Vec<String>> = vec![Vec::new()];
    for app in apps {
        let text = |key: &str| {
            app.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let when = |key: &str| {
            app.get(key)
                .and_then(Value::as_str)
                .and_then(|s| humantime::parse_rfc3339(s).ok())
                .map(|t| relative(t, now))
                .unwrap_or_else(|| "-".into())
        };
        let last_error = app
            .get("last_error")
            .filter(|e| !e.is_null())
            .map(|e| {
                format!(
                    "{}: {}",
                    e.get("code").and_then(Value::as_str).unwrap_or("?"),
                    e.get("message").and_then(Value::as_str).unwrap_or("")
                )
            })
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            text("name"),
            text("grant"),
            text("state"),
            when("expires_at"),
            when("next_refresh_at"),
            when("last_refresh_at"),
            last_error,
        ]);
        sink_lines.push(sink_rows(app, now));
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (row, sinks) in rows.into_iter().zip(sink_lines) {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        for sink in sinks {
            out.push_str(&sink);
            out.push('\n');
        }
    }
    out
}

/// The line under the table about the state dir, from `/v1/apps`' `state`: "state: sealed
/// (credentials:state-key)" or "state: not sealed"; nothing from a daemon that does not say.
fn seal_line(state: Option<&Value>) -> String {
    let Some(sealed) = state.and_then(|s| s.get("sealed")).and_then(Value::as_bool) else {
        return String::new();
    };
    if !sealed {
        return "\nstate: not sealed\n".to_owned();
    }
    let source = state
        .and_then(|s| s.get("key_source"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!("\nstate: sealed ({source})\n")
}

/// One line per sink of an app row: `  sink PATH (CONTENT): written .., expires .., error`.
fn sink_rows(app: &Value, now: SystemTime) -> Vec<String> {
    let Some(sinks) = app.get("sinks").and_then(Value::as_array) else {
        return Vec::new();
    };
    sinks
        .iter()
        .map(|sink| {
            let text = |key: &str| sink.get(key).and_then(Value::as_str).unwrap_or("?");
            let when = |key: &str| {
                sink.get(key)
                    .and_then(Value::as_str)
                    .and_then(|s| humantime::parse_rfc3339(s).ok())
                    .map(|t| relative(t, now))
                    .unwrap_or_else(|| "never".into())
            };
            let mut line = format!(
                "  sink {} ({}): written {}, expires {}",
                text("path"),
                text("content"),
                when("last_write_at"),
                when("expires_at")
            );
            if let Some(e) = sink.get("last_error").filter(|e| !e.is_null()) {
                line.push_str(&format!(
                    ", last error {}: {}",
                    e.get("code").and_then(Value::as_str).unwrap_or("?"),
                    e.get("message").and_then(Value::as_str).unwrap_or("")
                ));
            }
            line
        })
        .collect()
}

fn relative(t: SystemTime, now: SystemTime) -> String {
    let whole = |d: Duration| {
        humantime::format_duration(Duration::from_secs(d.as_secs()))
            .to_string()
            .replace(' ', "")
    };
    match t.duration_since(now) {
        Ok(ahead) => format!("in {}", whole(ahead)),
        Err(behind) => format!("{} ago", whole(behind.duration())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_relative_times_and_errors() {
        let now = humantime::parse_rfc3339("2026-11-27T01:00:00Z").unwrap();
        let apps = serde_json::json!([
            {"name": "analytics", "grant": "jwt-bearer", "state": "ready",
             "expires_at": "2026-11-27T01:30:00Z", "next_refresh_at": "2026-11-27T01:15:00Z",
             "last_refresh_at": "2026-11-27T00:59:58Z", "last_error": null,
             "sinks": [{"path": "/run/a/token", "content": "access_token",
                        "last_write_at": "2026-11-27T00:59:58Z", "expires_at": "2026-11-27T01:30:00Z",
                        "last_error": {"code": "write_failed", "message": "/run/a/token: No space left on device", "at": "2026-11-27T00:59:59Z"}}]},
            {"name": "portal", "grant": "authorization-code", "state": "needs_login",
             "expires_at": null, "next_refresh_at": null, "last_refresh_at": null,
             "last_error": {"code": "needs_login", "message": "log in", "at": "2026-11-27T00:59:00Z"}}
        ]);
        let table = status_table(apps.as_array().unwrap(), now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("APP"));
        assert_eq!(
            lines[2],
            "  sink /run/a/token (access_token): written 2s ago, expires in 30m, last error write_failed: /run/a/token: No space left on device"
        );
        assert!(
            lines[1].contains("in 30m")
                && lines[1].contains("in 15m")
                && lines[1].contains("2s ago"),
            "{table}"
        );
        assert!(lines[3].contains("needs_login: log in"), "{table}");
    }

    #[test]
    fn the_seal_line_says_whether_state_is_sealed() {
        let sealed = serde_json::json!({"sealed": true, "key_source": "credentials:state-key"});
        assert_eq!(
            seal_line(Some(&sealed)),
            "\nstate: sealed (credentials:state-key)\n"
        );
        let plain = serde_json::json!({"sealed": false, "key_source": null});
        assert_eq!(seal_line(Some(&plain)), "\nstate: not sealed\n");
        assert_eq!(seal_line(None), "");
    }

    #[test]
    fn app_names_are_checked() {
        assert!(app_path("analytics", "token").is_ok());
        assert_eq!(app_path("../x", "token").unwrap_err().code, 2);
        assert_eq!(app_path("", "token").unwrap_err().code, 2);
        assert_eq!(app_path("A", "token").unwrap_err().code, 2);
    }

    #[test]
    fn a_routine_refresh_counts_as_ready_for_the_exit_code() {
        let row = |state: &str, expires: Value, error: Value| serde_json::json!({"name": "a", "state": state, "expires_at": expires, "last_error": error});
        let at = Value::from("2026-11-27T01:00:00Z");
        let err = serde_json::json!({"code": "server_error", "message": "x", "at": "2026-11-27T00:00:00Z"});
        assert!(healthy(&row("ready", at.clone(), Value::Null)));
        assert!(healthy(&row("refreshing", at.clone(), Value::Null)));
        assert!(
            !healthy(&row("refreshing", Value::Null, Value::Null)),
            "first fetch"
        );
        assert!(
            !healthy(&row("refreshing", at.clone(), err.clone())),
            "retrying"
        );
        assert!(!healthy(&row("failing", at, err)));
        assert!(!healthy(&row("needs_login", Value::Null, Value::Null)));
    }
}
