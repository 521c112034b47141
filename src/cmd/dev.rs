//! `serve --dev`: the daemon doing its real job against the built-in simulator, like
//! `vault server -dev`. Starts the simulator on an ephemeral loopback port, writes a demo
//! config (one app per grant, 60 s tokens so refreshes show within a minute) into a fresh
//! directory, logs the demo authorization-code app in, and serves until Ctrl-C.
//!
//! The directory is made the way `mkdtemp` makes one: a random name, created exclusively,
//! mode 0700, never one that already exists (another user could have planted apps in it), and
//! every file in it created new (no link followed). It is removed when dev mode ends.
//!
//! The credentials endpoint is on (a free loopback port), so `exec` works at once.

use std::path::{Path, PathBuf};

use aws_credential_types::Credentials;
use base64::Engine;
use http::Method;
use tracing::{info, warn};

use super::Failure;
use crate::client::SocketClient;
use crate::config::LogFormat;
use crate::secret::Secret;
use crate::sim::{Sim, SimOptions};
use crate::upstream::clients::Upstreams;

/// Lifetime of the simulator's tokens in dev mode.
pub(crate) const DEV_TOKEN_LIFETIME_SECS: u64 = 60;

const ACCOUNT: &str = "123456789012";
const REDIRECT_URI: &str = "http://127.0.0.1:8400/callback";

fn client_id(app: &str) -> String {
    format!("arn:aws:sso::{ACCOUNT}:application/ssoins-7223000000000001/apl-{app}0000000001")
}

/// A JWT-shaped assertion for the demo jwt-bearer app (the simulator checks shape, not
/// signature).
fn demo_assertion() -> String {
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        enc(r#"{"alg":"RS256","typ":"JWT"}"#),
        enc(r#"{"sub":"dev-user","iss":"https://idp.dev.invalid","aud":"iamtokend"}"#),
        enc("demo-signature")
    )
}

/// Creates `path` (which must not exist: no link followed, nothing reused) with `mode` and
/// writes `contents`.
fn write_new(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?
        .write_all(contents.as_bytes())
}

/// Writes the demo config under `dir` (a fresh, empty directory of ours: every file is
/// created new); returns the main file.
pub(crate) fn write_demo_config(dir: &Path, endpoint: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let apps = dir.join("apps.d");
    std::fs::DirBuilder::new().mode(0o700).create(&apps)?;
    write_new(&dir.join("assertion.jwt"), &demo_assertion(), 0o600)?;
    write_new(
        &dir.join("reports.refresh"),
        "dev-seed-refresh-token",
        0o600,
    )?;
    let main = dir.join("iamtokend.toml");
    write_new(
        &main,
        &format!(
            r#"# Written by `iamtokend serve --dev`; removed when it exits.
apps_dir = "apps.d"

[server]
socket = "{socket}"
socket_mode = "0600"
credentials_listen = "127.0.0.1:0"

[state]
dir = "{state}"

[refresh]
at = 0.5
jitter = 0.1
min_lead = "10s"
max_backoff = "30s"
max_concurrent = 8
"#,
            socket = dir.join("iamtokend.sock").display(),
            state = dir.join("state").display(),
        ),
        0o600,
    )?;
    let common = |name: &str| {
        format!(
            "client_id = \"{}\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n",
            client_id(name)
        )
    };
    let apps_toml = [
        (
            "analytics",
            format!(
                "{}grant = \"jwt-bearer\"\nscopes = [\"openid\", \"aws\", \"sts:identity_context\"]\nassertion_file = \"../assertion.jwt\"\n\n[role]\narn = \"arn:aws:iam::123456789012:role/DevAnalytics\"\nendpoint_url = \"{endpoint}\"\n\n[[sink]]\npath = \"{sink}\"\ncontent = \"access_token\"\n",
                common("analytics"),
                sink = dir.join("analytics.token").display()
            ),
        ),
        (
            "reports",
            format!(
                "{}grant = \"refresh-token\"\nrefresh_token_file = \"../reports.refresh\"\n",
                common("reports")
            ),
        ),
        (
            "warehouse",
            format!(
                "{}grant = \"token-exchange\"\nsubject_app = \"analytics\"\nrequested_token_type = \"access_token\"\n",
                common("warehouse")
            ),
        ),
        (
            "portal",
            format!(
                "{}grant = \"authorization-code\"\nredirect_uri = \"{REDIRECT_URI}\"\n",
                common("portal")
            ),
        ),
    ];
    for (name, body) in apps_toml {
        write_new(&apps.join(format!("{name}.toml")), &body, 0o600)?;
    }
    Ok(main)
}

/// Runs dev mode until SIGINT/SIGTERM.
pub(crate) async fn run() -> Result<(), Failure> {
    crate::logging::init(LogFormat::Text, "info");
    let options = SimOptions {
        token_lifetime: std::time::Duration::from_secs(DEV_TOKEN_LIFETIME_SECS),
        ..SimOptions::default()
    };
    let credentials = Credentials::new(
        options.access_key_id.clone(),
        options.secret_access_key.clone(),
        None,
        None,
        "iamtokend-dev",
    );
    let sim = Sim::start(options)
        .await
        .map_err(|e| Failure::failed(format!("cannot start the simulator: {e}")))?;
    sim.seed_refresh_token(&client_id("reports"), "dev-seed-refresh-token");
    let base = dev_base();
    let dev_dir = tempfile::Builder::new()
        .prefix("iamtokend-dev-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|e| {
            Failure::failed(format!(
                "cannot create a dev directory in {}: {e}",
                base.display()
            ))
        })?;
    let dir = dev_dir.path().to_owned();
    let main = write_demo_config(&dir, &sim.endpoint_url())
        .map_err(|e| Failure::failed(format!("cannot write the demo config: {e}")))?;
    let config = crate::config::load(&main)
        .map_err(|d| Failure::failed(format!("the demo config is invalid (a bug):\n{d}")))?;
    info!(simulator = %sim.endpoint_url(), config = %main.display(), "dev mode");

    let portal_code = {
        let verifier = crate::pkce::verifier();
        let code = sim.issue_auth_code(
            &client_id("portal"),
            REDIRECT_URI,
            &crate::pkce::challenge(&verifier),
        );
        (Secret::new(code), verifier)
    };
    let result = super::serve::serve(config, Upstreams::with_credentials(credentials), |socket| {
        print_banner(socket, &main, &sim.endpoint_url());
        let socket = socket.to_owned();
        tokio::spawn(async move { log_in_portal(&socket, portal_code).await });
    })
    .await;
    sim.shutdown().await;
    if let Err(e) = dev_dir.close() {
        warn!(dir = %dir.display(), error = %e, "cannot remove the dev directory");
    }
    result
}

/// The demo's authorization-code app is logged in the way `iamtokend login` would: a code
/// the simulator issued for our PKCE challenge, handed to the daemon over the socket.
async fn log_in_portal(socket: &Path, (code, verifier): (Secret, Secret)) {
    let body = serde_json::json!({
        "code": code.expose(),
        "code_verifier": verifier.expose(),
        "redirect_uri": REDIRECT_URI,
    });
    match SocketClient::new(socket)
        .request(Method::POST, "/v1/apps/portal/login", Some(&body))
        .await
    {
        Ok(answer) if answer.status.is_success() => info!(app = "portal", "demo login done"),
        Ok(answer) => warn!(app = "portal", error = %answer.error_message(), "demo login failed"),
        Err(e) => warn!(app = "portal", error = %e, "demo login failed"),
    }
}

/// Where the dev directory is made: `$XDG_RUNTIME_DIR`, else `$TMPDIR` (or `/tmp`).
fn dev_base() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir)
}

/// How to run this binary again from a shell: its path (`current_exe`), or `iamtokend` when
/// that is the one `PATH` finds.
fn this_binary() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "iamtokend".to_owned();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::canonicalize(dir.join("iamtokend")).is_ok_and(|found| found == exe))
    });
    if on_path {
        return "iamtokend".to_owned();
    }
    let shown = exe.display().to_string();
    if shown
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
    {
        shown
    } else {
        format!("'{}'", shown.replace('\'', r"'\''"))
    }
}

/// Prints the banner on stdout. Write errors are ignored: a closed stdout (the terminal went
/// away, a pipe reader quit) must not take the daemon down, as `println!` would.
fn print_banner(socket: &Path, config: &Path, simulator: &str) {
    use std::io::Write;
    let s = socket.display();
    let bin = this_binary();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        r#"
iamtokend is running in dev mode against a simulated Identity Center at {simulator}
(no AWS account or network used; tokens live {DEV_TOKEN_LIFETIME_SECS} s, so refreshes show within a minute).

  socket:  {s}
  config:  {config}
  apps:    analytics (jwt-bearer, with a [role] for AWS credentials), reports (refresh-token),
           warehouse (token-exchange of analytics), portal (authorization-code, logged in for you)
  STS:     simulated too, at the same address
  AWS credentials endpoint: on, on a free loopback port (`exec` below finds it)

Try, in another terminal:
  export IAMTOKEND_SOCKET={s}
  {bin} status
  {bin} token analytics
  {bin} refresh warehouse
  {bin} credential-process analytics
  {bin} exec analytics -- env
  AWS_REGION=us-east-1 {bin} exec analytics -- aws sts get-caller-identity --endpoint-url {simulator}
  curl --unix-socket {s} http://localhost/v1/apps
  curl --unix-socket {s} http://localhost/v1/apps/portal/token
  cat {dir}/analytics.token        # a file sink, rewritten after every refresh

Ctrl-C stops it and removes {dir}.
"#,
        config = config.display(),
        dir = config
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    );
}
