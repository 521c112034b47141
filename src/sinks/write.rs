//! The file operations of a sink (CONTRACT §7), all blocking (callers run them on the
//! blocking pool): the atomic replace, the removal, and the clean-up of temporary files a
//! crash left behind.
//!
//! A write never follows a link and never exposes a partial or wrongly owned file: the
//! temporary file is created next to the path with a random name, `O_CREAT | O_EXCL |
//! O_NOFOLLOW` (a link planted at that name makes the open fail; nothing is written through
//! it), owner and mode are set on the open descriptor before any secret byte, then the bytes
//! are written and fsynced, the file is renamed over the path (rename replaces a link at the
//! path itself, never its target) and the directory is fsynced. Any failure removes the
//! temporary file.

use std::ffi::OsString;
use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Who owns a sink file and with which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Owner {
    /// `fchown` uid; `None` = left as created (the daemon's).
    pub(crate) uid: Option<u32>,
    /// `fchown` gid; `None` = left as created.
    pub(crate) gid: Option<u32>,
    /// Permission bits, set with `fchmod` (so the umask plays no part).
    pub(crate) mode: u32,
}

/// Marks our temporary files: `.NAME.iamtokend-RANDOM.tmp` next to `NAME`.
const TEMP_MARK: &str = ".iamtokend-";
const TEMP_SUFFIX: &str = ".tmp";

/// The prefix of `path`'s temporary names: `.NAME.iamtokend-`.
fn temp_prefix(path: &Path) -> Option<OsString> {
    let name = path.file_name()?;
    let mut prefix = OsString::from(".");
    prefix.push(name);
    prefix.push(TEMP_MARK);
    Some(prefix)
}

/// A fresh temporary name next to `path` (64 random bits: not guessable).
fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    let (Some(dir), Some(mut name)) = (path.parent(), temp_prefix(path)) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the sink path names no file",
        ));
    };
    name.push(format!("{:016x}", rand::random::<u64>()));
    name.push(TEMP_SUFFIX);
    Ok(dir.join(name))
}

/// Replaces the file at `path` with `bytes`, owned and moded as `owner`, atomically.
pub(crate) fn write_atomic(path: &Path, owner: Owner, bytes: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(path)?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&temp)?;
    let result = fill(&file, owner, bytes).and_then(|()| {
        drop(file);
        std::fs::rename(&temp, path)
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(path)
}

/// Owner and mode first, then the bytes, then fsync.
fn fill(file: &File, owner: Owner, bytes: &[u8]) -> std::io::Result<()> {
    if owner.uid.is_some() || owner.gid.is_some() {
        std::os::unix::fs::fchown(file, owner.uid, owner.gid)?;
    }
    file.set_permissions(Permissions::from_mode(owner.mode))?;
    let mut writer = file;
    writer.write_all(bytes)?;
    file.sync_all()
}

/// fsyncs the directory of `path`, so a rename or an unlink survives a crash.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)?.sync_all()
}

/// Removes the sink file (a link at the path is removed, not its target). A file already
/// gone is not an error. Returns whether a file was removed.
pub(crate) fn remove(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            sync_dir(path)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes every temporary file of `path`'s pattern left in its directory (a crash between
/// create and rename). Returns how many were removed; a directory that cannot be read
/// removes none (the write that follows reports the problem).
pub(crate) fn remove_stale_temps(path: &Path) -> usize {
    let (Some(dir), Some(prefix)) = (path.parent(), temp_prefix(path)) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let prefix = prefix.as_bytes();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.as_bytes();
        if name.starts_with(prefix)
            && name.ends_with(TEMP_SUFFIX.as_bytes())
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn owner(mode: u32) -> Owner {
        Owner {
            uid: None,
            gid: None,
            mode,
        }
    }

    #[test]
    fn a_write_sets_the_mode_exactly_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_atomic(&path, owner(0o640), b"one").unwrap();
        write_atomic(&path, owner(0o604), b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o604);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_link_at_the_path_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let path = dir.path().join("token");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        write_atomic(&path, owner(0o600), b"secret").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(!std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }

    #[test]
    fn a_failed_write_leaves_nothing_and_stale_temps_are_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone/token");
        assert!(write_atomic(&path, owner(0o600), b"x").is_err());
        let path = dir.path().join("token");
        std::fs::write(
            dir.path().join(".token.iamtokend-0123456789abcdef.tmp"),
            b"old",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".other.iamtokend-0123456789abcdef.tmp"),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.path().join("token.tmp"), b"x").unwrap();
        assert_eq!(remove_stale_temps(&path), 1);
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [".other.iamtokend-0123456789abcdef.tmp", "token.tmp"]
        );
    }
}
