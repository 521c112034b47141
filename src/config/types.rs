//! The typed configuration: what the rest of the crate sees once a config has been
//! validated. No `Option` stands for "not validated yet"; every default is already applied.
//! Built only by `config::load` (the checks are in `main_file.rs`, `apps.rs` and `grant.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The whole validated configuration: the main file plus every app file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The main file this was loaded from (absolute or as given).
    pub(crate) main_file: PathBuf,
    /// Resolved apps directory (`apps_dir` relative to the main file's directory).
    pub(crate) apps_dir: PathBuf,
    /// `[server]`.
    pub(crate) server: ServerConfig,
    /// `[state]`.
    pub(crate) state: StateConfig,
    /// `[refresh]`.
    pub(crate) refresh: RefreshConfig,
    /// `[log]`.
    pub(crate) log: LogConfig,
    /// Apps by name (the file stem), sorted.
    pub(crate) apps: BTreeMap<String, AppConfig>,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerConfig {
    /// `socket`, when set; otherwise `paths::socket_path` decides.
    pub(crate) socket: Option<PathBuf>,
    /// `socket_mode`, parsed from its octal string. Default 0o660.
    pub(crate) socket_mode: u32,
    /// `credentials_listen`: the loopback TCP address of the credentials endpoint
    /// (CONTRACT §5b); `None` = the endpoint is off. Port 0 = any free port.
    pub(crate) credentials_listen: Option<std::net::SocketAddr>,
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StateConfig {
    /// `dir`, when set; otherwise `paths::state_dir` decides.
    pub(crate) dir: Option<PathBuf>,
    /// `seal`: whether state files are sealed at rest. Default `Auto`.
    pub(crate) seal: SealMode,
}

/// `[state] seal` (CONTRACT §7; `crate::seal` does the sealing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealMode {
    /// `"auto"`: sealed when `$CREDENTIALS_DIRECTORY/state-key` is there, unsealed otherwise.
    Auto,
    /// `"off"`: never sealed, the key is not read.
    Off,
    /// `"required"`: `serve` and `check-config` refuse to run without the key.
    Required,
}

impl SealMode {
    /// The config's spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SealMode::Auto => "auto",
            SealMode::Off => "off",
            SealMode::Required => "required",
        }
    }
}

/// `[refresh]`: see CONTRACT §3/§4.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RefreshConfig {
    /// Fraction of the lifetime after which to refresh. Default 0.5; 0 < at < 1.
    pub(crate) at: f64,
    /// +/- fraction of the lifetime. Default 0.1; 0 <= jitter, at - jitter > 0, at + jitter < 1.
    pub(crate) jitter: f64,
    /// Never later than this before expiry. Default 5m.
    pub(crate) min_lead: Duration,
    /// Cap of the exponential backoff. Default 5m; must be >= 1s.
    pub(crate) max_backoff: Duration,
    /// Upstream calls in flight at once, all apps together. Default 8; >= 1.
    pub(crate) max_concurrent: usize,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LogConfig {
    /// Default `Text`.
    pub(crate) format: LogFormat,
    /// An `EnvFilter` directive; default "info".
    pub(crate) level: String,
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One `apps.d/NAME.toml`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AppConfig {
    /// The file stem; matches `[a-z0-9][a-z0-9._-]*`.
    pub(crate) name: String,
    /// The file it came from.
    pub(crate) file: PathBuf,
    /// `client_id`: the Identity Center application's ARN.
    pub(crate) client_id: String,
    /// The Identity Center instance's region.
    pub(crate) region: String,
    /// `scopes`; `None` = all the app's scopes (omitted from the request).
    pub(crate) scopes: Option<Vec<String>>,
    /// Override of the OIDC endpoint, e.g. "http://127.0.0.1:8080".
    pub(crate) endpoint_url: Option<String>,
    /// The grant and its grant-specific keys.
    pub(crate) grant: Grant,
    /// `[aws]`, its defaults when absent.
    pub(crate) aws: AwsConfig,
    /// `[role]`, when present.
    pub(crate) role: Option<RoleConfig>,
    /// `[access]`, when present (it is then the whole list).
    pub(crate) access: Option<AccessConfig>,
    /// `[[sink]]` tables, in file order (CONTRACT §3, §7).
    pub(crate) sinks: Vec<SinkConfig>,
}

/// The grant an app runs, with the keys that belong to it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Grant {
    /// `grant = "authorization-code"`.
    AuthorizationCode {
        /// Loopback redirect URI, e.g. "http://127.0.0.1:8400/callback".
        redirect_uri: String,
    },
    /// `grant = "refresh-token"`.
    RefreshToken {
        /// Where the first refresh token comes from (absolute, or relative to the app file's dir).
        refresh_token_file: PathBuf,
    },
    /// `grant = "jwt-bearer"`.
    JwtBearer {
        /// Exactly one of `assertion_file` / `assertion_command`.
        assertion: AssertionSource,
    },
    /// `grant = "token-exchange"`.
    TokenExchange {
        /// Another app of this config; no cycles.
        subject_app: String,
        /// Default `AccessToken`.
        requested_token_type: RequestedTokenType,
    },
}

impl Grant {
    /// Which of the four grants this is.
    pub(crate) fn kind(&self) -> GrantKind {
        match self {
            Grant::AuthorizationCode { .. } => GrantKind::AuthorizationCode,
            Grant::RefreshToken { .. } => GrantKind::RefreshToken,
            Grant::JwtBearer { .. } => GrantKind::JwtBearer,
            Grant::TokenExchange { .. } => GrantKind::TokenExchange,
        }
    }
}

/// The four grants by name: `grant = "..."` in an app file, the `grant` field of the socket
/// API's app rows. This is the one place the contract's spellings are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum GrantKind {
    /// A browser login once (`iamtokend login`), then refresh tokens.
    AuthorizationCode,
    /// A refresh token read from a file, then rotated.
    RefreshToken,
    /// A JWT assertion from a file or a command, for every token.
    JwtBearer,
    /// Another app's token exchanged for this app's.
    TokenExchange,
}

impl GrantKind {
    /// Every grant, in the order messages list them.
    pub(crate) const ALL: [GrantKind; 4] = [
        GrantKind::AuthorizationCode,
        GrantKind::RefreshToken,
        GrantKind::JwtBearer,
        GrantKind::TokenExchange,
    ];

    /// The contract's spelling: "authorization-code", "refresh-token", "jwt-bearer", "token-exchange".
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GrantKind::AuthorizationCode => "authorization-code",
            GrantKind::RefreshToken => "refresh-token",
            GrantKind::JwtBearer => "jwt-bearer",
            GrantKind::TokenExchange => "token-exchange",
        }
    }
}

impl std::fmt::Display for GrantKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `grant` value that names none of the four grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnknownGrant;

impl std::str::FromStr for GrantKind {
    type Err = UnknownGrant;

    /// Exactly one of the [`GrantKind::as_str`] spellings; no case folding.
    fn from_str(s: &str) -> Result<GrantKind, UnknownGrant> {
        GrantKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or(UnknownGrant)
    }
}

/// Where a jwt-bearer assertion comes from; read anew before every grant call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AssertionSource {
    /// `assertion_file` (absolute, or relative to the app file's dir).
    File(PathBuf),
    /// `assertion_command`: argv, non-empty; stdout trimmed is the JWT.
    Command(Vec<String>),
}

/// `requested_token_type` of a token-exchange app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestedTokenType {
    /// "access_token" -> urn:ietf:params:oauth:token-type:access_token
    AccessToken,
    /// "refresh_token" -> urn:ietf:params:oauth:token-type:refresh_token
    RefreshToken,
}

impl RequestedTokenType {
    /// The URN sent as `requestedTokenType`.
    pub(crate) fn urn(self) -> &'static str {
        match self {
            RequestedTokenType::AccessToken => "urn:ietf:params:oauth:token-type:access_token",
            RequestedTokenType::RefreshToken => "urn:ietf:params:oauth:token-type:refresh_token",
        }
    }
}

/// `[aws]`: the IAM identity that signs this app's calls, and how its calls reach AWS.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AwsConfig {
    /// Named profile; `None` = the SDK's default credential chain.
    pub(crate) profile: Option<String>,
    /// `connect_timeout`: TCP + TLS connect of one upstream call. Default 5s; 100ms ..= 5m.
    pub(crate) connect_timeout: Duration,
    /// `read_timeout`: from a request sent to its answer read. Default 30s; 1s ..= 10m.
    /// One attempt is bounded by `connect_timeout + read_timeout` as a whole.
    pub(crate) read_timeout: Duration,
    /// `ca_bundle`: extra trust roots (TLS-intercepting networks), read and checked at load.
    pub(crate) ca_bundle: Option<CaBundle>,
}

/// `[aws] connect_timeout` default: what the SDK clients used before it was configurable.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `[aws] read_timeout` default: long enough for a slow region, short enough that a hung
/// connection does not hold an app (and a `max_concurrent` slot) for minutes.
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for AwsConfig {
    fn default() -> AwsConfig {
        AwsConfig {
            profile: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            ca_bundle: None,
        }
    }
}

/// A PEM bundle of extra trust roots, added to the system's roots.
///
/// The file is read once, when the config is loaded (so `check-config` reports a missing or
/// broken bundle, and a reload picks up a replaced one); the bytes are kept, so the
/// upstream clients never read a file that changed after it was checked.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CaBundle {
    /// `ca_bundle` as resolved (relative to the app file's directory).
    pub(crate) path: PathBuf,
    /// The file's contents: one or more PEM certificates, each known to parse.
    pub(crate) pem: Vec<u8>,
    /// How many certificates it holds (at least one).
    pub(crate) certificates: usize,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certificates", &self.certificates)
            .finish_non_exhaustive()
    }
}

/// `[role]`: identity-enhanced AWS credentials.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RoleConfig {
    /// `arn:aws:iam::123456789012:role/Name`.
    pub(crate) arn: String,
    /// 2-64 chars of `[\w+=,.@-]`; default "iamtokend-NAME" (truncated to 64).
    pub(crate) session_name: String,
    /// 15m ..= 12h; default 1h.
    pub(crate) duration: Duration,
    /// Override of the STS endpoint.
    pub(crate) endpoint_url: Option<String>,
}

/// `[access]`: who may read this app over the socket. When present it is the whole list
/// (root included only if listed); see `server::peer` for the check.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct AccessConfig {
    /// Numeric uids, taken as written (no look-up).
    pub(crate) uids: Vec<u32>,
    /// User names, resolved to uids when the config was loaded.
    pub(crate) users: Vec<Principal>,
    /// Group names (a peer's primary or supplementary group), resolved to gids at load.
    pub(crate) groups: Vec<Principal>,
}

/// A user or group name as written, and the id it resolved to at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    /// The name as written in the config.
    pub(crate) name: String,
    /// The uid or gid it named when the config was loaded.
    pub(crate) id: u32,
}

/// One `[[sink]]`: a file kept current with the app's token or role credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SinkConfig {
    /// `path`: absolute; its directory exists and is not world-writable (checked at load).
    pub(crate) path: PathBuf,
    /// `content`.
    pub(crate) content: SinkContent,
    /// `mode`, parsed from its octal string. Default 0o600.
    pub(crate) mode: u32,
    /// `user`: the file's owner (a name resolved at load, or a uid); `None` = the daemon's.
    pub(crate) user: Option<Principal>,
    /// `group`: the file's group (a name resolved at load, or a gid); `None` = the daemon's.
    pub(crate) group: Option<Principal>,
    /// `notify`: argv run after each successful write (no shell).
    pub(crate) notify: Option<Vec<String>>,
    /// `signal` + `pid_file`: a signal sent after each successful write.
    pub(crate) signal: Option<SinkSignal>,
}

/// `[[sink]] signal` and `pid_file`: whom to tell that the file changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SinkSignal {
    /// The signal's name without `SIG`, as written ("HUP").
    pub(crate) name: String,
    /// Its number.
    pub(crate) number: i32,
    /// `pid_file`: absolute; read anew before each signal.
    pub(crate) pid_file: PathBuf,
}

/// `[[sink]] content`: what the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SinkContent {
    /// The access token alone, no newline.
    AccessToken,
    /// The socket's token JSON.
    TokenJson,
    /// The credential_process JSON (needs `[role]`).
    CredentialsJson,
    /// An INI file with a `[default]` profile, for `AWS_SHARED_CREDENTIALS_FILE` (needs `[role]`).
    AwsCredentials,
}

impl SinkContent {
    /// Every content, in the order messages list them.
    pub(crate) const ALL: [SinkContent; 4] = [
        SinkContent::AccessToken,
        SinkContent::TokenJson,
        SinkContent::CredentialsJson,
        SinkContent::AwsCredentials,
    ];

    /// The contract's spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SinkContent::AccessToken => "access_token",
            SinkContent::TokenJson => "token_json",
            SinkContent::CredentialsJson => "credentials_json",
            SinkContent::AwsCredentials => "aws_credentials",
        }
    }

    /// Whether the file holds role credentials (and so needs `[role]`).
    pub(crate) fn is_credentials(self) -> bool {
        matches!(
            self,
            SinkContent::CredentialsJson | SinkContent::AwsCredentials
        )
    }
}
