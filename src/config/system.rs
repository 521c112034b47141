//! The system look-ups config loading makes beyond its own files: the user and group
//! database for `[access] users` / `groups` and `[[sink]] user` / `group`, the PEM bundle a
//! `[aws] ca_bundle` names, a sink's directory, and the environment the default socket and
//! state dir come from (a sink may not be either).
//! All of them go through [`System`], so a test can load a config against a made-up host
//! (users that do not exist here, a look-up that fails, a bundle that cannot be read);
//! [`Host`] is the real one `config::load` uses.

use std::path::Path;

/// What the loader asks of the host. Each answer is final for this load: names are resolved
/// and bundles read once, at load, so a later change needs a reload to be seen.
pub(crate) trait System {
    /// The uid of user `name`; `Ok(None)` when there is no such user, `Err` with a
    /// human reason when the database cannot be asked.
    fn user_id(&self, name: &str) -> Result<Option<u32>, String>;
    /// The gid of group `name`, as [`System::user_id`].
    fn group_id(&self, name: &str) -> Result<Option<u32>, String>;
    /// The bytes of the `ca_bundle` file at `path`.
    fn read_ca_bundle(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// The permission bits of directory `dir` (following links); `Ok(None)` when it exists
    /// but is not a directory.
    fn dir_mode(&self, dir: &Path) -> std::io::Result<Option<u32>>;
    /// The environment `paths::socket_path` / `paths::state_dir` resolve defaults from.
    fn env(&self) -> super::paths::Env;
}

/// The real host: NSS (`getpwnam_r` / `getgrnam_r` through nix, as `id NAME` sees it) and
/// the file system.
pub(crate) struct Host;

impl System for Host {
    fn user_id(&self, name: &str) -> Result<Option<u32>, String> {
        nix::unistd::User::from_name(name)
            .map(|u| u.map(|u| u.uid.as_raw()))
            .map_err(|e| e.desc().to_string())
    }

    fn group_id(&self, name: &str) -> Result<Option<u32>, String> {
        nix::unistd::Group::from_name(name)
            .map(|g| g.map(|g| g.gid.as_raw()))
            .map_err(|e| e.desc().to_string())
    }

    fn read_ca_bundle(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn dir_mode(&self, dir: &Path) -> std::io::Result<Option<u32>> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dir)?;
        Ok(meta.is_dir().then(|| meta.permissions().mode() & 0o7777))
    }

    fn env(&self) -> super::paths::Env {
        super::paths::Env::from_process()
    }
}
