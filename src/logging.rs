//! tracing to stderr, text or JSON. Whatever level is asked for, the HTTP and signing layers
//! of the SDK stay at `info`: at debug/trace they print request details that can include
//! credentials and token bodies, and no secret may reach a log line (CONTRACT §6).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Dependency targets capped at `info`.
const CAPPED: &[&str] = &[
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http",
    "aws_smithy_http_client",
    "aws_smithy_types",
    "aws_sigv4",
    "aws_config",
    "aws_credential_types",
    "aws_sdk_ssooidc",
    "aws_sdk_sts",
    "aws_runtime",
    "hyper",
    "hyper_util",
    "h2",
    "rustls",
];

/// The filter for `level` (an EnvFilter directive), or `RUST_LOG` when set, with the caps.
pub(crate) fn filter(level: &str) -> EnvFilter {
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| level.to_owned());
    let mut directives = base;
    for target in CAPPED {
        directives.push_str(&format!(",{target}=info"));
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber (once; later calls are ignored). Colours only on a
/// terminal: under systemd stderr goes to the journal, where escape codes are noise.
pub(crate) fn init(format: LogFormat, level: &str) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
