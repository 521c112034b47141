//! The socket file the daemon binds itself (not under socket activation): [`bind`] and the
//! [`SocketFile`] that removes it on exit.
//!
//! The file never exists at its path with a looser mode than configured, and no path another
//! user can change is ever chmod'ed: the socket is bound inside a fresh private directory
//! (mode 0700, a random name, created exclusively beside the final path, so no other uid can
//! reach or replace what is in it), narrowed to the configured mode there, and renamed into
//! place (a rename replaces whatever is at the path, a planted symlink included, and follows
//! nothing). The process umask is never touched (it is process-wide and other threads create
//! files). A socket directory that anyone but the daemon's uid and root may write is refused:
//! a writer could take the name while the daemon is down, or replace the socket while it runs.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tracing::info;

/// The socket file we created; removed on drop if it is still ours (same inode).
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    ino: u64,
    dev: u64,
}

impl SocketFile {
    /// Where the socket was bound (and what drop removes).
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if meta.ino() == self.ino && meta.dev() == self.dev {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds `path` with `mode`. The directory is created (0755) if missing and must be writable
/// by no one but the daemon's uid and root. A socket file nobody answers on (a dead daemon's)
/// is replaced; one a live process answers on is refused; anything that is not a socket is
/// left alone.
pub(crate) fn bind(path: &Path, mode: u32) -> io::Result<(UnixListener, SocketFile)> {
    bind_with(path, mode, |_| {})
}

/// [`bind`], calling `after_bind` with the final path right after the `bind(2)` (tests look
/// at the path then, or swap a symlink in, as a racing user would).
fn bind_with(
    path: &Path,
    mode: u32,
    after_bind: impl FnOnce(&Path),
) -> io::Result<(UnixListener, SocketFile)> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        ));
    };
    if !parent.exists() {
        create_dir(&parent)?;
    }
    let meta = std::fs::metadata(&parent)?;
    let daemon_uid = nix::unistd::geteuid().as_raw();
    check_dir_writers(&parent, meta.uid(), meta.mode(), daemon_uid)?;
    refuse_live_or_foreign(path)?;

    let private = PrivateDir::create(&parent)?;
    let bound = private.path.join("s");
    let listener = UnixListener::bind(&bound)?;
    after_bind(path);
    // By path, but inside the private directory: no other uid can reach or replace it.
    std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(mode))?;
    let meta = std::fs::symlink_metadata(&bound)?;
    std::fs::rename(&bound, parent.join(name))?;
    drop(private);
    Ok((
        listener,
        SocketFile {
            path: path.to_owned(),
            ino: meta.ino(),
            dev: meta.dev(),
        },
    ))
}

/// Creates a missing socket directory (and its parents) with mode 0755 whatever the umask
/// (clients must reach the socket in it), set on the opened directory, not by path.
fn create_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)?;
    opened.set_permissions(std::fs::Permissions::from_mode(0o755))
}

/// Refuses a socket directory that a uid other than `daemon_uid` and root may write: owned by
/// another uid, or group or other writable (sticky or not: the sticky bit stops others from
/// removing our socket, not from taking its name first while the daemon is down).
fn check_dir_writers(dir: &Path, owner: u32, mode: u32, daemon_uid: u32) -> io::Result<()> {
    let why = if owner != daemon_uid && owner != 0 {
        Some(format!("is owned by uid {owner}"))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "is writable by other users (mode {:o})",
            mode & 0o7777
        ))
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the socket's directory {} {why}; it must be writable only by the daemon's \
                 user (uid {daemon_uid}) and root: fix its owner or mode, or set [server] socket \
                 to a path in a directory of the daemon's own",
                dir.display()
            ),
        )),
    }
}

/// What is at `path` already: nothing, or a dead daemon's socket (replaced by the rename),
/// is fine; a socket a live process answers on, or anything that is not a socket, is refused.
fn refuse_live_or_foreign(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("another process is serving on {}", path.display()),
                ));
            }
            info!(socket = %path.display(), "replacing a stale socket file");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A fresh directory of mode 0700 with a random name (created exclusively: an existing one
/// is an error, never reused), removed with whatever is left in it on drop.
struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    fn create(parent: &Path) -> io::Result<PrivateDir> {
        // Short: the bound path must fit in sun_path (108 bytes) as the final one does.
        let path = parent.join(format!(".{:08x}", rand::random::<u32>()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(PrivateDir { path })
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path.join("s"));
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    /// At the moment the socket is bound (umask 022 here: a bare bind gives 0755), nothing
    /// at the configured path is looser than the configured 0600, and afterwards it is 0600.
    #[tokio::test]
    async fn the_socket_never_appears_looser_than_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let (_listener, file) = bind_with(&path, 0o600, |path| {
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                let mode = meta.mode() & 0o777;
                assert_eq!(mode & !0o600, 0, "bound at {mode:o} before it was narrowed");
            }
        })
        .unwrap();
        assert_eq!(file.path(), path);
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket());
        assert_eq!(mode_of(&path), 0o600);
        // Nothing is left behind beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["d.sock"]);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }

    /// Another user who can write the directory swaps a symlink in at the socket path right
    /// after the bind: the daemon neither chmods the link's target nor serves elsewhere.
    #[tokio::test]
    async fn a_symlink_swapped_in_at_the_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root's file").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (_listener, _file) = bind_with(&path, 0o666, |path| {
            let _ = std::fs::remove_file(path);
            std::os::unix::fs::symlink(&victim, path).unwrap();
        })
        .unwrap();
        assert_eq!(mode_of(&victim), 0o600, "the link's target was chmod'ed");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket(), "{:?}", meta.file_type());
        assert_eq!(mode_of(&path), 0o666);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }

    /// A directory other users may write (group or others, sticky or not) is refused with
    /// one sentence naming it; the daemon's own 0755 or 0700 directory is fine.
    #[tokio::test]
    async fn a_socket_dir_others_can_write_is_refused() {
        for mode in [0o777, 0o770, 0o1777, 0o730, 0o702] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let path = dir.path().join("d.sock");
            let err = bind(&path, 0o600).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains(&dir.path().display().to_string()) && text.contains("writable"),
                "{mode:o}: {text}"
            );
            assert!(!path.exists(), "{mode:o}: bound anyway");
        }
        for mode in [0o755, 0o700, 0o750, 0o1755] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            bind(&dir.path().join("d.sock"), 0o600).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        }
    }

    #[test]
    fn who_may_write_the_socket_dir() {
        // (owner, mode, daemon uid) -> refused?
        for (owner, mode, daemon, refused) in [
            (1000, 0o755, 1000, false),
            (0, 0o755, 1000, false),
            (0, 0o755, 0, false),
            (1001, 0o755, 1000, true),
            (1001, 0o700, 0, true),
            (1000, 0o775, 1000, true),
            (1000, 0o757, 1000, true),
            (0, 0o1777, 0, true),
        ] {
            assert_eq!(
                check_dir_writers(Path::new("/d"), owner, mode, daemon).is_err(),
                refused,
                "owner {owner} mode {mode:o} daemon {daemon}"
            );
        }
    }
}
