//! Default locations (CONTRACT §2 "Default paths"): the config file, the socket and the
//! state dir, each "first that applies" of flag/config > env > systemd > per-user or
//! system default.
//!
//! The environment is an injected [`Env`] rather than `std::env`, so tests can try every
//! precedence rule without mutating the process environment (which is shared by all test
//! threads). Only [`Env::from_process`] looks at the real process.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// File name of the main config inside a config directory.
const CONFIG_FILE_NAME: &str = "iamtokend.toml";
/// File name of the socket inside a runtime directory.
const SOCKET_FILE_NAME: &str = "iamtokend.sock";
/// Main config when running as root (or when no home directory can be found).
const SYSTEM_CONFIG_FILE: &str = "/etc/iamtokend/iamtokend.toml";
/// Socket when no runtime directory is known.
const SYSTEM_SOCKET: &str = "/run/iamtokend/iamtokend.sock";
/// Test only: replaces [`SYSTEM_SOCKET`] in a client's fallback list, so a test can stand a
/// "system" daemon up without root. It adds no power: whoever sets a client's environment can
/// set `IAMTOKEND_SOCKET` as well.
const TEST_SYSTEM_SOCKET_VAR: &str = "IAMTOKEND_TEST_SYSTEM_SOCKET";
/// State dir for root (or when no home directory can be found).
const SYSTEM_STATE_DIR: &str = "/var/lib/iamtokend";

/// What the default paths depend on: environment variables, whether we run as root, and
/// the user's config and data directories (as the `directories` crate computes them).
#[derive(Debug, Clone)]
pub(crate) struct Env {
    /// Environment variables; only the few named in this file are ever looked up.
    vars: HashMap<OsString, OsString>,
    /// Effective uid 0: system-wide defaults instead of per-user ones.
    is_root: bool,
    /// The user's config dir for this program, e.g. `~/.config/iamtokend`; `None` when
    /// no home directory is known.
    config_dir: Option<PathBuf>,
    /// The user's data dir for this program, e.g. `~/.local/share/iamtokend`.
    data_dir: Option<PathBuf>,
}

impl Env {
    /// The real process: its environment, its effective uid and `directories::ProjectDirs`.
    pub(crate) fn from_process() -> Env {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let is_root = unsafe { libc::geteuid() } == 0;
        let dirs = directories::ProjectDirs::from("", "", "iamtokend");
        Env {
            vars: std::env::vars_os().collect(),
            is_root,
            config_dir: dirs.as_ref().map(|d| d.config_dir().to_path_buf()),
            data_dir: dirs.as_ref().map(|d| d.data_dir().to_path_buf()),
        }
    }

    /// A made-up environment: `vars`, root or not, and a home directory from which the
    /// user dirs are derived the way `directories` does on Linux (`$XDG_CONFIG_HOME` /
    /// `$XDG_DATA_HOME` when absolute, else `HOME/.config` / `HOME/.local/share`).
    #[cfg(test)]
    pub(crate) fn for_test(vars: &[(&str, &str)], is_root: bool, home: &Path) -> Env {
        let vars: HashMap<OsString, OsString> = vars
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        let xdg = |name: &str, fallback: &str| {
            vars.get(OsStr::new(name))
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .unwrap_or_else(|| home.join(fallback))
                .join("iamtokend")
        };
        let config_dir = Some(xdg("XDG_CONFIG_HOME", ".config"));
        let data_dir = Some(xdg("XDG_DATA_HOME", ".local/share"));
        Env {
            vars,
            is_root,
            config_dir,
            data_dir,
        }
    }

    /// `$CREDENTIALS_DIRECTORY`: where systemd put the service's credentials (`state-key`).
    pub(crate) fn credentials_dir(&self) -> Option<PathBuf> {
        self.var("CREDENTIALS_DIRECTORY").map(PathBuf::from)
    }

    /// A variable's value, `None` when unset or empty (an empty value is treated as unset,
    /// as systemd and the XDG spec do).
    fn var(&self, name: &str) -> Option<&OsStr> {
        self.vars
            .get(OsStr::new(name))
            .map(OsString::as_os_str)
            .filter(|v| !v.is_empty())
    }

    /// The first entry of a colon-separated systemd directory list
    /// (`ConfigurationDirectory=a b` gives `$CONFIGURATION_DIRECTORY=/etc/a:/etc/b`).
    fn first_dir(&self, name: &str) -> Option<PathBuf> {
        let value = self.var(name)?;
        value
            .as_bytes()
            .split(|b| *b == b':')
            .find(|part| !part.is_empty())
            .map(|part| PathBuf::from(OsStr::from_bytes(part)))
    }
}

/// The main config file: `--config` > `$IAMTOKEND_CONFIG` >
/// `$CONFIGURATION_DIRECTORY/iamtokend.toml` > `/etc/iamtokend/iamtokend.toml` when root >
/// the user's config dir (`~/.config/iamtokend/iamtokend.toml`).
pub(crate) fn config_file(flag: Option<&Path>, env: &Env) -> PathBuf {
    if let Some(flag) = flag {
        return flag.to_path_buf();
    }
    if let Some(file) = env.var("IAMTOKEND_CONFIG") {
        return PathBuf::from(file);
    }
    if let Some(dir) = env.first_dir("CONFIGURATION_DIRECTORY") {
        return dir.join(CONFIG_FILE_NAME);
    }
    if env.is_root {
        return PathBuf::from(SYSTEM_CONFIG_FILE);
    }
    match &env.config_dir {
        Some(dir) => dir.join(CONFIG_FILE_NAME),
        // No home directory: the system file is the only sensible guess left.
        None => PathBuf::from(SYSTEM_CONFIG_FILE),
    }
}

/// The socket: `[server] socket` > `$RUNTIME_DIRECTORY/iamtokend.sock` >
/// `$XDG_RUNTIME_DIR/iamtokend/iamtokend.sock` > `/run/iamtokend/iamtokend.sock`.
pub(crate) fn socket_path(configured: Option<&Path>, env: &Env) -> PathBuf {
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    if let Some(dir) = env.first_dir("RUNTIME_DIRECTORY") {
        return dir.join(SOCKET_FILE_NAME);
    }
    if let Some(dir) = env.var("XDG_RUNTIME_DIR") {
        return Path::new(dir).join("iamtokend").join(SOCKET_FILE_NAME);
    }
    PathBuf::from(SYSTEM_SOCKET)
}

/// Where a client subcommand looks for the daemon when `--socket` / `$IAMTOKEND_SOCKET` is
/// not given, in order: `[server] socket`, or `$RUNTIME_DIRECTORY/iamtokend.sock`, alone when
/// set; otherwise the user socket under `$XDG_RUNTIME_DIR` (when set) and then the system one
/// (a login session sets `XDG_RUNTIME_DIR` on a host that may run only the system service).
pub(crate) fn client_sockets(configured: Option<&Path>, env: &Env) -> Vec<PathBuf> {
    if configured.is_some() || env.first_dir("RUNTIME_DIRECTORY").is_some() {
        return vec![socket_path(configured, env)];
    }
    let system = env
        .var(TEST_SYSTEM_SOCKET_VAR)
        .map_or_else(|| PathBuf::from(SYSTEM_SOCKET), PathBuf::from);
    match env.var("XDG_RUNTIME_DIR") {
        Some(dir) => vec![
            Path::new(dir).join("iamtokend").join(SOCKET_FILE_NAME),
            system,
        ],
        None => vec![system],
    }
}

/// The state dir: `[state] dir` > `$STATE_DIRECTORY` > `/var/lib/iamtokend` when root >
/// the user's data dir (`~/.local/share/iamtokend`).
pub(crate) fn state_dir(configured: Option<&Path>, env: &Env) -> PathBuf {
    if let Some(path) = configured {
        return path.to_path_buf();
    }
    if let Some(dir) = env.first_dir("STATE_DIRECTORY") {
        return dir;
    }
    if env.is_root {
        return PathBuf::from(SYSTEM_STATE_DIR);
    }
    env.data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(SYSTEM_STATE_DIR))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    const HOME: &str = "/home/alice";

    #[test]
    fn config_file_precedence() {
        let home = Path::new(HOME);
        let all = [
            ("IAMTOKEND_CONFIG", "/env/i.toml"),
            ("CONFIGURATION_DIRECTORY", "/etc/sd1:/etc/sd2"),
        ];
        let env = Env::for_test(&all, true, home);
        assert_eq!(
            config_file(Some(Path::new("/flag.toml")), &env),
            p("/flag.toml")
        );
        assert_eq!(config_file(None, &env), p("/env/i.toml"));
        let env = Env::for_test(&all[1..], true, home);
        assert_eq!(config_file(None, &env), p("/etc/sd1/iamtokend.toml"));
        let env = Env::for_test(&[("IAMTOKEND_CONFIG", "")], true, home);
        assert_eq!(config_file(None, &env), p("/etc/iamtokend/iamtokend.toml"));
        let env = Env::for_test(&[], false, home);
        assert_eq!(
            config_file(None, &env),
            p("/home/alice/.config/iamtokend/iamtokend.toml")
        );
        let env = Env::for_test(&[("XDG_CONFIG_HOME", "/xdg/cfg")], false, home);
        assert_eq!(
            config_file(None, &env),
            p("/xdg/cfg/iamtokend/iamtokend.toml")
        );
        // A relative XDG_CONFIG_HOME is invalid per the XDG spec and ignored.
        let env = Env::for_test(&[("XDG_CONFIG_HOME", "rel")], false, home);
        assert_eq!(
            config_file(None, &env),
            p("/home/alice/.config/iamtokend/iamtokend.toml")
        );
    }

    #[test]
    fn socket_path_precedence() {
        let home = Path::new(HOME);
        let all = [
            ("RUNTIME_DIRECTORY", ":/run/sd:/run/other"),
            ("XDG_RUNTIME_DIR", "/run/user/1000"),
        ];
        let env = Env::for_test(&all, false, home);
        assert_eq!(
            socket_path(Some(Path::new("/cfg.sock")), &env),
            p("/cfg.sock")
        );
        assert_eq!(socket_path(None, &env), p("/run/sd/iamtokend.sock"));
        let env = Env::for_test(&all[1..], false, home);
        assert_eq!(
            socket_path(None, &env),
            p("/run/user/1000/iamtokend/iamtokend.sock")
        );
        let env = Env::for_test(&[], true, home);
        assert_eq!(socket_path(None, &env), p("/run/iamtokend/iamtokend.sock"));
    }

    #[test]
    fn clients_try_the_user_socket_then_the_system_one() {
        let home = Path::new(HOME);
        let xdg = ("XDG_RUNTIME_DIR", "/run/user/1000");
        let env = Env::for_test(&[xdg], false, home);
        assert_eq!(
            client_sockets(None, &env),
            vec![
                p("/run/user/1000/iamtokend/iamtokend.sock"),
                p("/run/iamtokend/iamtokend.sock")
            ]
        );
        let env = Env::for_test(&[], false, home);
        assert_eq!(
            client_sockets(None, &env),
            vec![p("/run/iamtokend/iamtokend.sock")]
        );
        // A configured socket or systemd's runtime directory is the one place to look.
        let env = Env::for_test(&[xdg, ("RUNTIME_DIRECTORY", "/run/sd")], false, home);
        assert_eq!(
            client_sockets(None, &env),
            vec![p("/run/sd/iamtokend.sock")]
        );
        let env = Env::for_test(&[xdg], false, home);
        assert_eq!(
            client_sockets(Some(Path::new("/cfg.sock")), &env),
            vec![p("/cfg.sock")]
        );
        let env = Env::for_test(&[xdg, (TEST_SYSTEM_SOCKET_VAR, "/tmp/t.sock")], false, home);
        assert_eq!(client_sockets(None, &env)[1], p("/tmp/t.sock"));
    }

    #[test]
    fn state_dir_precedence() {
        let home = Path::new(HOME);
        let all = [("STATE_DIRECTORY", "/var/lib/sd:/var/lib/x")];
        let env = Env::for_test(&all, true, home);
        assert_eq!(state_dir(Some(Path::new("/cfg")), &env), p("/cfg"));
        assert_eq!(state_dir(None, &env), p("/var/lib/sd"));
        let env = Env::for_test(&[], true, home);
        assert_eq!(state_dir(None, &env), p("/var/lib/iamtokend"));
        let env = Env::for_test(&[], false, home);
        assert_eq!(
            state_dir(None, &env),
            p("/home/alice/.local/share/iamtokend")
        );
        let env = Env::for_test(&[("XDG_DATA_HOME", "/data")], false, home);
        assert_eq!(state_dir(None, &env), p("/data/iamtokend"));
    }

    #[test]
    fn from_process_does_not_panic() {
        let env = Env::from_process();
        assert!(config_file(None, &env).ends_with("iamtokend.toml"));
        assert!(socket_path(None, &env).ends_with("iamtokend.sock"));
        let _ = state_dir(None, &env);
    }
}
