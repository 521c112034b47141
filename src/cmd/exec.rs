//! `iamtokend exec APP [--] CMD [ARGS...]` (CONTRACT §5b): asks the socket for the app's
//! credentials endpoint, and runs CMD with the environment every AWS SDK's container
//! provider reads, so CMD fetches and refreshes its credentials itself for as long as it
//! runs. The token goes to a fresh 0600 file (no trailing newline: botocore, Go and Rust
//! reject one) in a fresh 0700 directory, with an empty shared-credentials file beside it;
//! both are removed when CMD ends.
//!
//! Not hardened like the other secret-holding commands: `RLIMIT_CORE` would be inherited by
//! CMD, and the token is in a file CMD's user can read anyway.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use http::Method;
use serde_json::Value;
use tokio::signal::unix::{signal, SignalKind};
use zeroize::Zeroizing;

use super::clients::app_path;
use super::{daemon_failure, Failure};
use crate::client::{zeroize_json, SocketClient};

/// What an SDK would try before the container provider, taken out of CMD's environment.
pub(crate) const REMOVED: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
];

/// Keys of a shared-config default profile that resolve credentials before the container
/// provider in the SDKs' default chains.
const WINNING_KEYS: [&str; 5] = [
    "credential_process",
    "role_arn",
    "aws_access_key_id",
    "web_identity_token_file",
    "sso_",
];

/// Runs `command` under `app`'s endpoint; `Ok` only when it exits 0, else its status (or
/// 128+N for signal N) as the failure's code with nothing to print.
pub(crate) async fn run(
    client: &SocketClient,
    app: &str,
    command: Vec<OsString>,
) -> Result<(), Failure> {
    let Some((program, args)) = command.split_first() else {
        return Err(Failure::usage("exec needs a command to run"));
    };
    let (socket, mut answer) = client
        .request_via(Method::GET, &app_path(app, "endpoint")?, None)
        .await?;
    if !answer.status.is_success() {
        let failure = daemon_failure(&answer);
        zeroize_json(&mut answer.body);
        return Err(Failure::failed(failure.message));
    }
    let url = answer
        .body
        .get("url")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let token = answer
        .body
        .get("authorization_token")
        .and_then(Value::as_str)
        .map(|t| Zeroizing::new(t.to_owned()));
    zeroize_json(&mut answer.body);
    let (Some(url), Some(token)) = (url, token) else {
        return Err(Failure::failed(
            "the daemon's /endpoint answer has no url or authorization_token",
        ));
    };
    let dir = PrivateDir::create(app)
        .map_err(|e| Failure::failed(format!("cannot create the token file: {e}")))?;
    let token_file = dir.path.join("token");
    let credentials_file = dir.path.join("credentials");
    write_new(&token_file, token.as_bytes())
        .and_then(|()| write_new(&credentials_file, b""))
        .map_err(|e| Failure::failed(format!("cannot write the token file: {e}")))?;
    drop(token);
    if let Some(warning) = default_profile_warning(&shared_config_file()) {
        eprintln!("iamtokend: warning: {warning}");
    }

    // Registered before CMD starts, so a signal meant for it never kills us first.
    let forwarded = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ];
    let mut streams = Vec::new();
    for kind in forwarded {
        streams.push(
            signal(kind).map_err(|e| Failure::failed(format!("cannot forward signals: {e}")))?,
        );
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", &url)
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file)
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials_file)
        .env("IAMTOKEND_SOCKET", &socket)
        .env("IAMTOKEND_APP", app);
    for name in REMOVED {
        cmd.env_remove(name);
    }
    let mut child = cmd.spawn().map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        };
        Failure {
            code,
            message: format!("cannot run {}: {e}", Path::new(program).display()),
        }
    })?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let status = loop {
        let [int, term, hup] = &mut streams[..] else {
            unreachable!("three streams were registered")
        };
        let sig = tokio::select! {
            status = child.wait() => break status,
            _ = int.recv() => nix::sys::signal::Signal::SIGINT,
            _ = term.recv() => nix::sys::signal::Signal::SIGTERM,
            _ = hup.recv() => nix::sys::signal::Signal::SIGHUP,
        };
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    };
    drop(dir);
    let status =
        status.map_err(|e| Failure::failed(format!("cannot wait for the command: {e}")))?;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    match u8::try_from(code) {
        Ok(0) => Ok(()),
        Ok(code) => Err(Failure {
            code,
            message: String::new(),
        }),
        Err(_) => Err(Failure {
            code: 255,
            message: String::new(),
        }),
    }
}

/// A fresh 0700 directory for the token file, removed (with its files) on drop.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Under `$XDG_RUNTIME_DIR` (per-user, often tmpfs) when set, else the temp dir, named
    /// `iamtokend-exec-<pid>-<app>-<16 hex>`. The directories of earlier `exec`s that were
    /// killed (SIGKILL leaves no chance to clean up) are removed first: ours, by a pid that
    /// no longer runs.
    fn create(app: &str) -> std::io::Result<PrivateDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        remove_orphans(&base);
        let pid = std::process::id();
        let mut last = None;
        for _ in 0..8 {
            let path = base.join(format!(
                "{DIR_PREFIX}{pid}-{app}-{:016x}",
                rand::random::<u64>()
            ));
            // Exclusive: an existing entry (a planted link included) is an error, never used.
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free name")))
    }
}

/// The start of every token directory's name.
const DIR_PREFIX: &str = "iamtokend-exec-";

/// Removes the token directories in `base` left by `exec`s that are gone: named
/// `iamtokend-exec-<pid>-…` with a pid that does not run, a real directory (not a link)
/// owned by our uid. A pid reused since is taken as alive: such a directory waits for a
/// later sweep, never removed from under a running `exec`.
fn remove_orphans(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let uid = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
            .filter(|pid| *pid > 0)
        else {
            continue;
        };
        let ours = fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        if ours && gone {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Creates `path` (it must not exist), mode 0600, with exactly `bytes`. Not synced: the file
/// lives only as long as CMD, and a crash loses nothing the daemon cannot hand out again.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(bytes)
}

/// `$AWS_CONFIG_FILE`, else `~/.aws/config`.
fn shared_config_file() -> PathBuf {
    if let Some(file) = std::env::var_os("AWS_CONFIG_FILE").filter(|f| !f.is_empty()) {
        return PathBuf::from(file);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".aws").join("config")
}

/// One sentence when the shared config's default profile resolves credentials by itself
/// (an SDK's default chain may pick that before the endpoint).
fn default_profile_warning(file: &Path) -> Option<String> {
    let text = fs::read_to_string(file).ok()?;
    let keys = default_profile_keys(&text);
    if keys.is_empty() {
        return None;
    }
    Some(format!(
        "the default profile in {} sets {}; an AWS SDK may use that instead of the iamtokend endpoint",
        file.display(),
        keys.join(", ")
    ))
}

/// The keys of `[default]` / `[profile default]` that resolve credentials.
fn default_profile_keys(text: &str) -> Vec<String> {
    let mut in_default = false;
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.split_whitespace().collect::<Vec<_>>();
            in_default = matches!(section[..], ["default"] | ["profile", "default"]);
            continue;
        }
        if !in_default || line.starts_with(['#', ';']) {
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let wins = WINNING_KEYS.iter().any(|k| {
            if k.ends_with('_') {
                key.starts_with(k)
            } else {
                key == *k
            }
        });
        if wins && !found.contains(&key) {
            found.push(key);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_profile_is_read_for_keys_that_win() {
        let text = "\
[profile dev]
credential_process = x
[default]
region = eu-west-1
# credential_process = commented
sso_session = corp
Role_Arn = arn:aws:iam::1:role/R
[profile default ]
credential_process = y
[sso-session corp]
sso_start_url = https://x
";
        assert_eq!(
            default_profile_keys(text),
            ["sso_session", "role_arn", "credential_process"]
        );
        assert!(default_profile_keys("[default]\nregion = x\n").is_empty());
        assert!(default_profile_keys("[dev]\ncredential_process = x\n").is_empty());
        assert!(default_profile_keys("").is_empty());
    }

    #[test]
    fn the_private_dir_is_0700_and_goes_with_its_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = PrivateDir::create("a").unwrap();
        let path = dir.path.clone();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        write_new(&path.join("token"), b"t").unwrap();
        assert!(
            write_new(&path.join("token"), b"t").is_err(),
            "never reused"
        );
        assert_eq!(
            fs::metadata(path.join("token"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        drop(dir);
        assert!(!path.exists());
    }
}
