//! The state dir: per app, the newest refresh token and the credentials-endpoint token, and
//! nothing re-derivable (CONTRACT §4, §7).
//!
//! Files are `NAME.json` (`{"client_id", "refresh_token"}`) and `NAME@endpoint.json`
//! ([`endpoint`]: `{"role", "token"}`), mode 0600 in a 0700 directory, both read and written
//! by one pair of functions ([`Store::load_secret`], [`Store::save_secret`]) and replaced
//! atomically: write a temp file, fsync it, rename over the old one, fsync the directory. A
//! file that cannot be read back is moved aside as `<file>.corrupt-<unix seconds>` (`.<n>`
//! added when that name is taken: never replaced) and the
//! app falls back to its configured source (or makes a new endpoint token). Every call
//! blocks (fsyncs), so the owner task and the broker call it through `spawn_blocking`.
//!
//! The directory holds secrets, so nothing in it may be another user's: [`Store::open`]
//! refuses a state dir that is a symlink, not a directory, owned by another uid, or writable
//! by group or others ([`OpenError::Unsafe`]: `serve` does not start). Temp files get a
//! random name and are created exclusively without following links; state files are read
//! without following links, only when they are regular files of ours, and at most
//! [`MAX_STATE_BYTES`] (a bigger one is damaged). The read buffer is zeroed after use.
//!
//! Sealing ([`crate::seal`], `[state] seal`): with a key, both files are written in the
//! sealed format (`{"v":1,"alg":"A256GCM","client_id" or "role","nonce","ct"}`, bound to the
//! app, its client id or role fingerprint, and the purpose). An unsealed file is still read,
//! and rewritten sealed at once. A sealed file that does not open (another key,
//! another app, changed or cut bytes, an unknown version), or any sealed file while sealing
//! is off or has no key, is moved aside like a damaged one, with the reason logged: the app
//! falls back to its configured source, and the file is kept for whoever restores the key.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::seal::{self, Binding, Purpose, SealStatus, SealedFields, Sealing};
use crate::secret::Secret;

mod endpoint;

/// Largest state file read; a bigger one is treated as damaged (a real one is under 4 KiB).
pub(crate) const MAX_STATE_BYTES: usize = 64 * 1024;

/// One state file, either format and either purpose: unsealed (`client_id` and
/// `refresh_token`, or `role` and `token`) or sealed (the clear field, `v`, `alg`, `nonce`,
/// `ct`). One struct of optional fields rather than an untagged enum: serde would buffer an
/// untagged value (the secret) in a copy it never zeroes.
#[derive(Deserialize)]
struct Saved {
    client_id: Option<String>,
    role: Option<String>,
    refresh_token: Option<Secret>,
    token: Option<Secret>,
    v: Option<u64>,
    alg: Option<String>,
    nonce: Option<String>,
    ct: Option<String>,
}

/// Renames `path` to `<path>.corrupt-<wall_secs>`, or `.corrupt-<wall_secs>.<n>` when that
/// name is taken: a file moved aside earlier in the same second is never replaced (each may
/// be the one a restored key opens). `RENAME_NOREPLACE`, so a name taken between the check
/// and the rename is not replaced either.
fn move_aside(path: &Path, wall_secs: u64) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let from = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    for n in 0..1000u32 {
        let aside = match n {
            0 => PathBuf::from(format!("{}.corrupt-{wall_secs}", path.display())),
            n => PathBuf::from(format!("{}.corrupt-{wall_secs}.{n}", path.display())),
        };
        let to = std::ffi::CString::new(aside.as_os_str().as_bytes())?;
        // SAFETY: two NUL-terminated paths that live across the call; errors come back
        // through the return value and errno.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(aside);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Err(io::Error::other(
        "1000 files already moved aside in this second",
    ))
}

/// What the app does when its file gives nothing (the end of a log line).
fn fallback(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::RefreshToken => "using the configured source",
        Purpose::EndpointToken => "making a new endpoint token",
    }
}

/// Why [`Store::open`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The directory is there but someone else could have read or planted files in it:
    /// the daemon refuses to start. One sentence naming the dir and what is wrong.
    #[error("{0}")]
    Unsafe(String),
    /// The directory could not be created or opened (the daemon runs without persistence).
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Decided once at start; [`Sealing::Off`] unless [`Store::with_sealing`] said otherwise.
    sealing: Sealing,
}

impl Store {
    /// Creates the directory (and missing parents) mode 0700, or checks the existing one: a
    /// real directory (not a symlink), owned by our effective uid, not group/other writable;
    /// read or search bits for group/other are then removed (through the open directory,
    /// never by path). Stale temp files of ours are removed.
    pub(crate) fn open(dir: &Path) -> Result<Store, OpenError> {
        match fs::symlink_metadata(dir) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            }
            Err(e) => return Err(e.into()),
        }
        let uid = nix::unistd::geteuid().as_raw();
        let unsafe_dir = |what: String| {
            OpenError::Unsafe(format!(
                "state dir {} {what}; it must be a directory owned by uid {uid}, not writable by group or others",
                dir.display()
            ))
        };
        let meta = fs::symlink_metadata(dir)?;
        if meta.file_type().is_symlink() {
            return Err(unsafe_dir("is a symbolic link".into()));
        }
        if !meta.is_dir() {
            return Err(unsafe_dir("is not a directory".into()));
        }
        // Checked again on the opened directory itself, so a swap after the lstat is caught.
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => unsafe_dir("is a symbolic link".into()),
                Some(libc::ENOTDIR) => unsafe_dir("is not a directory".into()),
                _ => OpenError::Io(e),
            })?;
        let meta = handle.metadata()?;
        if meta.uid() != uid {
            return Err(unsafe_dir(format!("is owned by uid {}", meta.uid())));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(unsafe_dir(format!(
                "is writable by group or others (mode {mode:04o})"
            )));
        }
        if mode & 0o077 != 0 {
            handle.set_permissions(fs::Permissions::from_mode(0o700))?;
        }
        let store = Store {
            dir: dir.to_owned(),
            sealing: Sealing::Off,
        };
        store.remove_stale_temp_files();
        Ok(store)
    }

    /// Seals files from now on as `sealing` says (`serve` reads the key once, at start).
    pub(crate) fn with_sealing(mut self, sealing: Sealing) -> Store {
        self.sealing = sealing;
        self
    }

    /// Whether files are written sealed, and with which key source.
    pub(crate) fn seal_status(&self) -> SealStatus {
        self.sealing.status()
    }

    fn file(&self, app: &str) -> PathBuf {
        self.dir.join(format!("{app}.json"))
    }

    /// Temp files of a save: `.NAME.json.tmp-<16 hex>`, and `.NAME.json.tmp` of older
    /// versions. Left behind only by a crash mid-save; removed (unlinked, never followed).
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = name.starts_with('.')
                && (name.ends_with(".json.tmp")
                    || name
                        .rsplit_once(".json.tmp-")
                        .is_some_and(|(_, tail)| tail.len() == 16));
            if !ours {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => info!(file = name, "removed a stale temp file from the state dir"),
                Err(e) => {
                    warn!(file = name, error = %e, "cannot remove a stale temp file from the state dir")
                }
            }
        }
    }

    /// The saved refresh token of `app`, if one was saved for this `client_id`. A damaged
    /// file (not JSON, a symlink, not a regular file of ours, over [`MAX_STATE_BYTES`]) is
    /// moved aside (and logged); a file for another client id is ignored.
    pub(crate) fn load(&self, app: &str, client_id: &str, wall_secs: u64) -> Option<Secret> {
        let binding = Binding {
            app,
            bound_to: client_id,
            purpose: Purpose::RefreshToken,
        };
        self.load_secret(&binding, wall_secs)
    }

    /// Saves `refresh_token` atomically and durably, sealed when there is a key.
    pub(crate) fn save(
        &self,
        app: &str,
        client_id: &str,
        refresh_token: &Secret,
    ) -> io::Result<()> {
        let binding = Binding {
            app,
            bound_to: client_id,
            purpose: Purpose::RefreshToken,
        };
        self.save_secret(&binding, refresh_token)
    }

    /// The file that holds `binding`'s secret.
    fn path_of(&self, binding: &Binding<'_>) -> PathBuf {
        match binding.purpose {
            Purpose::RefreshToken => self.file(binding.app),
            Purpose::EndpointToken => self.endpoint_file(binding.app),
        }
    }

    /// The secret `binding` names, from its file in either format. The one reading of every
    /// state file: hardened ([`Store::read_capped`]), then the clear binding compared (another
    /// client id or role: ignored, left in place), then unsealed or opened. An unsealed file
    /// or one sealed with the previous key is rewritten with the current key at once;
    /// anything else that does not give the secret is moved aside with the reason logged.
    fn load_secret(&self, binding: &Binding<'_>, wall_secs: u64) -> Option<Secret> {
        let app = binding.app;
        let purpose = binding.purpose;
        let path = self.path_of(binding);
        let buf = self.read_capped(binding, &path, wall_secs)?;
        let saved = match serde_json::from_slice::<Saved>(&buf) {
            Ok(saved) => saved,
            Err(e) => {
                self.quarantine(binding, &path, wall_secs, &e.classify_str());
                return None;
            }
        };
        let (bound_to, plain) = match purpose {
            Purpose::RefreshToken => (saved.client_id, saved.refresh_token),
            Purpose::EndpointToken => (saved.role, saved.token),
        };
        let Some(bound_to) = bound_to else {
            let why = format!("no \"{}\" field", purpose.clear_field());
            self.quarantine(binding, &path, wall_secs, &why);
            return None;
        };
        if bound_to != binding.bound_to {
            match purpose {
                Purpose::RefreshToken => {
                    warn!(app, "saved state belongs to another client_id; ignoring it")
                }
                Purpose::EndpointToken => {
                    info!(
                        app,
                        "the saved endpoint token was made for another [role]; making a new one"
                    )
                }
            }
            return None;
        }
        let secret = match (plain, saved.v) {
            (Some(_), Some(_)) => {
                self.quarantine(binding, &path, wall_secs, "both sealed and unsealed fields");
                return None;
            }
            (Some(secret), None) => {
                if self.sealing.key().is_some() && !secret.is_empty() {
                    self.migrate(binding, &secret);
                }
                secret
            }
            (None, Some(v)) => {
                let (Some(alg), Some(nonce), Some(ct)) = (saved.alg, saved.nonce, saved.ct) else {
                    self.quarantine(
                        binding,
                        &path,
                        wall_secs,
                        "a sealed file with fields missing",
                    );
                    return None;
                };
                let fields = SealedFields { v, alg, nonce, ct };
                let key = match &self.sealing {
                    Sealing::Sealed { key, .. } => key,
                    Sealing::Off => {
                        let why = "sealed, but [state] seal = \"off\" (restore seal = \"auto\" and the key to use it)";
                        self.quarantine(binding, &path, wall_secs, why);
                        return None;
                    }
                    Sealing::NoKey(no_key) => {
                        let why = format!("sealed, but there is no state key: {no_key}");
                        self.quarantine(binding, &path, wall_secs, &why);
                        return None;
                    }
                };
                let opened = match (key.open(binding, &fields), self.sealing.previous_key()) {
                    (Err(seal::OpenError::NotOpened), Some(previous)) => {
                        let opened = previous.open(binding, &fields);
                        if let Ok(secret) = &opened {
                            if !secret.is_empty() {
                                info!(app, file = purpose.as_str(), "state file sealed with state-key-previous; resealing it with state-key");
                                self.migrate(binding, secret);
                            }
                        }
                        opened
                    }
                    (opened, _) => opened,
                };
                match opened {
                    Ok(secret) => secret,
                    Err(e) => {
                        self.quarantine(binding, &path, wall_secs, &e.to_string());
                        return None;
                    }
                }
            }
            (None, None) => {
                let why = format!("neither \"{}\" nor a sealed one", purpose.as_str());
                self.quarantine(binding, &path, wall_secs, &why);
                return None;
            }
        };
        if secret.is_empty() {
            let why = format!("an empty \"{}\"", purpose.as_str());
            self.quarantine(binding, &path, wall_secs, &why);
            return None;
        }
        Some(secret)
    }

    /// The bytes of the state file at `path`, read the hardened way: no link followed (a
    /// link is moved aside), no FIFO waited on, only a regular file of ours of at most
    /// [`MAX_STATE_BYTES`], into one fixed buffer that is zeroed when dropped (never grown,
    /// so no copy of the secret is left behind by a realloc). `None`: no file, or one moved
    /// aside or unreadable (logged).
    fn read_capped(
        &self,
        binding: &Binding<'_>,
        path: &Path,
        wall_secs: u64,
    ) -> Option<Zeroizing<Vec<u8>>> {
        let app = binding.app;
        let fallback = fallback(binding.purpose);
        // O_NONBLOCK: a FIFO planted here must not hang the open; no effect on a regular file.
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.quarantine(binding, path, wall_secs, "a symbolic link");
                return None;
            }
            Err(e) => {
                warn!(app, path = %path.display(), error = %e, "cannot read saved state; {fallback}");
                return None;
            }
        };
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => {
                warn!(app, path = %path.display(), error = %e, "cannot read saved state; {fallback}");
                return None;
            }
        };
        let uid = nix::unistd::geteuid().as_raw();
        if !meta.is_file() {
            self.quarantine(binding, path, wall_secs, "not a regular file");
            return None;
        }
        if meta.uid() != uid {
            let why = format!("owned by uid {}, not {uid}", meta.uid());
            self.quarantine(binding, path, wall_secs, &why);
            return None;
        }
        let too_big = format!("larger than {MAX_STATE_BYTES} bytes");
        if meta.len() > MAX_STATE_BYTES as u64 {
            self.quarantine(binding, path, wall_secs, &too_big);
            return None;
        }
        let mut buf = Zeroizing::new(vec![0u8; MAX_STATE_BYTES + 1]);
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!(app, path = %path.display(), error = %e, "cannot read saved state; {fallback}");
                    return None;
                }
            }
        }
        if len > MAX_STATE_BYTES {
            self.quarantine(binding, path, wall_secs, &too_big);
            return None;
        }
        // Shortened in place: the capacity (and the zeroing on drop) stays the buffer's.
        buf.truncate(len);
        Some(buf)
    }

    /// A file read while sealing that is unsealed, or sealed with the previous key:
    /// rewritten sealed with the current key now, so no plain or old-key copy waits for the
    /// next rotation (which may be hours away, or never for a non-rotating token).
    fn migrate(&self, binding: &Binding<'_>, secret: &Secret) {
        let app = binding.app;
        let file = binding.purpose.as_str();
        match self.save_secret(binding, secret) {
            Ok(()) => info!(app, file, "state file rewritten sealed with state-key"),
            Err(e) => {
                warn!(app, file, error = %e, "cannot rewrite the state file sealed; it stays as it is until the next save")
            }
        }
    }

    fn quarantine(&self, binding: &Binding<'_>, path: &Path, wall_secs: u64, why: &str) {
        let app = binding.app;
        let fallback = fallback(binding.purpose);
        match move_aside(path, wall_secs) {
            Ok(aside) => {
                warn!(app, moved_to = %aside.display(), why, "damaged state file moved aside; {fallback}")
            }
            Err(e) => warn!(app, error = %e, why, "damaged state file could not be moved aside"),
        }
    }

    /// Saves `secret` for `binding` atomically and durably: sealed when there is a key,
    /// else unsealed (`{"client_id","refresh_token"}` or `{"role","token"}`).
    fn save_secret(&self, binding: &Binding<'_>, secret: &Secret) -> io::Result<()> {
        let path = self.path_of(binding);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| io::Error::other("a state file name that is not UTF-8"))?;
        let tmp = self
            .dir
            .join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
        let body = Zeroizing::new(match self.sealing.key() {
            Some(key) => key.seal(binding, secret)?,
            None => {
                let mut plain = serde_json::Map::new();
                let purpose = binding.purpose;
                plain.insert(purpose.clear_field().into(), binding.bound_to.into());
                plain.insert(purpose.as_str().into(), secret.expose().into());
                serde_json::Value::Object(plain).to_string()
            }
        });
        self.replace_file(&tmp, &path, body.as_bytes())
    }

    /// The atomic replace every state file gets: `tmp` (a fresh random name) created
    /// exclusively without following links, exactly 0600 whatever the umask, `body` written and
    /// fsynced, renamed over `path`, the directory fsynced; `tmp` removed on any failure.
    fn replace_file(&self, tmp: &Path, path: &Path, body: &[u8]) -> io::Result<()> {
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(tmp)?;
            // Exactly 0600 whatever the umask (on the descriptor, not the path).
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(body)?;
            file.sync_all()?;
            fs::rename(tmp, path)
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(tmp);
            return Err(e);
        }
        File::open(&self.dir)?.sync_all()
    }

    /// Forgets `app`'s state.
    pub(crate) fn remove(&self, app: &str) {
        let _ = fs::remove_file(self.file(app));
    }
}

trait ClassifyStr {
    fn classify_str(&self) -> String;
}

impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> String {
        // Position only: the file's content is a secret.
        format!(
            "not a state file (line {}, column {})",
            self.line(),
            self.column()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_modes_and_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        assert!(store.load("a", "cid", 1).is_none());
        store.save("a", "cid", &Secret::new("rt-1")).unwrap();
        store.save("a", "cid", &Secret::new("rt-2")).unwrap();
        assert_eq!(
            fs::metadata(state.join("a.json")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(store.load("a", "cid", 1).unwrap().expose(), "rt-2");
        assert!(store.load("a", "other-cid", 1).is_none());
        fs::write(state.join("a.json"), "{not json").unwrap();
        assert!(store.load("a", "cid", 42).is_none());
        assert!(state.join("a.json.corrupt-42").exists());
        assert!(!state.join("a.json").exists());
        store.save("b", "cid", &Secret::new("x")).unwrap();
        store.remove("b");
        assert!(store.load("b", "cid", 1).is_none());
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A file outside the state dir that the attacker (uid 65534 when the test runs as root)
    /// owns and points a planted link at.
    fn attacker_file(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, body).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
        if is_root() {
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        }
        path
    }

    #[test]
    fn a_file_moved_aside_in_the_same_second_does_not_replace_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        fs::write(state.join("a.json"), "{first").unwrap();
        assert!(store.load("a", "cid", 3).is_none());
        fs::write(state.join("a.json"), "{second").unwrap();
        assert!(store.load("a", "cid", 3).is_none());
        assert_eq!(
            fs::read_to_string(state.join("a.json.corrupt-3")).unwrap(),
            "{first"
        );
        assert_eq!(
            fs::read_to_string(state.join("a.json.corrupt-3.1")).unwrap(),
            "{second"
        );
    }

    #[test]
    fn a_state_dir_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("state");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Store::open(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(err.contains(&link.display().to_string()), "{err}");
        // The link's target was left alone (the old code chmod'ed it through the link).
        assert_eq!(fs::metadata(&real).unwrap().mode() & 0o777, 0o755);
    }

    #[test]
    fn a_state_dir_owned_by_another_uid_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root to chown the dir to 65534");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        let err = Store::open(&state).unwrap_err().to_string();
        assert!(err.contains("owned by uid 65534"), "{err}");
    }

    #[test]
    fn a_group_or_world_writable_state_dir_is_refused() {
        for mode in [0o770, 0o707, 0o1777] {
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("state");
            fs::create_dir(&state).unwrap();
            fs::set_permissions(&state, fs::Permissions::from_mode(mode)).unwrap();
            let err = Store::open(&state).unwrap_err().to_string();
            assert!(
                err.contains("writable by group or others"),
                "{mode:o}: {err}"
            );
            assert_eq!(fs::metadata(&state).unwrap().mode() & 0o7777, mode);
        }
        // A file where the dir should be is refused too.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state");
        fs::write(&file, "").unwrap();
        let err = Store::open(&file).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn a_readable_dir_of_ours_is_tightened_and_a_missing_one_created_0700() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(&state).unwrap();
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
        let deep = dir.path().join("a/b/state");
        Store::open(&deep).unwrap();
        assert_eq!(fs::metadata(&deep).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn a_symlink_planted_at_a_state_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        let planted = attacker_file(
            dir.path(),
            "attacker.json",
            r#"{"client_id":"cid","refresh_token":"planted"}"#,
        );
        std::os::unix::fs::symlink(&planted, state.join("a.json")).unwrap();
        assert!(store.load("a", "cid", 7).is_none(), "the link was followed");
        // The link itself was moved aside; the target is untouched.
        let aside = state.join("a.json.corrupt-7");
        assert!(fs::symlink_metadata(&aside)
            .unwrap()
            .file_type()
            .is_symlink());
        store.save("a", "cid", &Secret::new("rt-new")).unwrap();
        assert_eq!(
            fs::read_to_string(&planted).unwrap(),
            r#"{"client_id":"cid","refresh_token":"planted"}"#
        );
        assert_eq!(store.load("a", "cid", 8).unwrap().expose(), "rt-new");
    }

    #[test]
    fn a_state_file_owned_by_another_uid_is_not_loaded() {
        if !is_root() {
            eprintln!("skipped: needs root to chown the file to 65534");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        let path = state.join("a.json");
        fs::write(&path, r#"{"client_id":"cid","refresh_token":"planted"}"#).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        assert!(store.load("a", "cid", 9).is_none());
        assert!(state.join("a.json.corrupt-9").exists());
    }

    #[test]
    fn a_symlink_at_the_old_temp_name_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        // Planted while the dir was still open to others, before this start.
        let before = attacker_file(dir.path(), "before", "");
        std::os::unix::fs::symlink(&before, state.join(".a.json.tmp")).unwrap();
        let store = Store::open(&state).unwrap();
        // Planted after open (e.g. by an earlier daemon's leftover): never opened either.
        let after = attacker_file(dir.path(), "after", "");
        std::os::unix::fs::symlink(&after, state.join(".b.json.tmp")).unwrap();
        store.save("a", "cid", &Secret::new("rt-a")).unwrap();
        store.save("b", "cid", &Secret::new("rt-b")).unwrap();
        assert_eq!(
            fs::read_to_string(&before).unwrap(),
            "",
            "token written through a link"
        );
        assert_eq!(
            fs::read_to_string(&after).unwrap(),
            "",
            "token written through a link"
        );
        assert_eq!(store.load("a", "cid", 1).unwrap().expose(), "rt-a");
        assert_eq!(store.load("b", "cid", 1).unwrap().expose(), "rt-b");
    }

    #[test]
    fn stale_temp_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        for name in [".a.json.tmp", ".a.json.tmp-0123456789abcdef", "keep.txt"] {
            fs::write(state.join(name), "x").unwrap();
        }
        Store::open(&state).unwrap();
        let mut left: Vec<String> = fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["keep.txt"]);
    }

    #[test]
    fn an_oversize_state_file_is_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        let big = format!(
            r#"{{"client_id":"cid","refresh_token":"{}"}}"#,
            "x".repeat(100 * 1024)
        );
        fs::write(state.join("a.json"), big).unwrap();
        assert!(
            store.load("a", "cid", 5).is_none(),
            "an oversize file was loaded"
        );
        assert!(state.join("a.json.corrupt-5").exists());
        assert!(!state.join("a.json").exists());
        // Just under the cap loads.
        let fits = format!(
            r#"{{"client_id":"cid","refresh_token":"{}"}}"#,
            "y".repeat(60 * 1024)
        );
        fs::write(state.join("a.json"), &fits).unwrap();
        assert_eq!(store.load("a", "cid", 6).unwrap().expose().len(), 60 * 1024);
    }

    fn sealed_store(state: &Path, byte: u8) -> Store {
        let key = crate::seal::StateKey::derive(&[byte; 32], Path::new("/k")).unwrap();
        Store::open(state).unwrap().with_sealing(Sealing::Sealed {
            key,
            previous: None,
        })
    }

    fn names(state: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn sealed_saves_hold_no_token_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = sealed_store(&state, 1);
        assert!(store.seal_status().sealed);
        store
            .save("a", "cid", &Secret::new("rt-sealed-0123456789"))
            .unwrap();
        let text = fs::read_to_string(state.join("a.json")).unwrap();
        assert!(!text.contains("rt-sealed"), "{text}");
        assert!(
            text.starts_with(r#"{"#) && text.contains(r#""v":1"#),
            "{text}"
        );
        assert_eq!(
            fs::metadata(state.join("a.json")).unwrap().mode() & 0o777,
            0o600
        );
        assert_eq!(
            store.load("a", "cid", 1).unwrap().expose(),
            "rt-sealed-0123456789"
        );
        // Another client id: ignored and left in place, as an unsealed one is.
        assert!(store.load("a", "cid2", 1).is_none());
        assert!(state.join("a.json").exists());
    }

    #[test]
    fn an_unsealed_file_is_read_and_rewritten_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        Store::open(&state)
            .unwrap()
            .save("a", "cid", &Secret::new("rt-plain-0123456789"))
            .unwrap();
        assert!(fs::read_to_string(state.join("a.json"))
            .unwrap()
            .contains("rt-plain-0123456789"));
        let store = sealed_store(&state, 1);
        assert_eq!(
            store.load("a", "cid", 1).unwrap().expose(),
            "rt-plain-0123456789"
        );
        let text = fs::read_to_string(state.join("a.json")).unwrap();
        assert!(!text.contains("rt-plain"), "not rewritten: {text}");
        assert_eq!(names(&state), ["a.json"]);
        assert_eq!(
            store.load("a", "cid", 2).unwrap().expose(),
            "rt-plain-0123456789"
        );
    }

    #[test]
    fn a_sealed_file_that_does_not_open_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        sealed_store(&state, 1)
            .save("a", "cid", &Secret::new("rt-1"))
            .unwrap();
        let sealed = fs::read(state.join("a.json")).unwrap();
        // Another key.
        assert!(sealed_store(&state, 2).load("a", "cid", 10).is_none());
        assert_eq!(names(&state), ["a.json.corrupt-10"]);
        // Copied to another app's name.
        fs::write(state.join("b.json"), &sealed).unwrap();
        assert!(sealed_store(&state, 1).load("b", "cid", 11).is_none());
        assert!(state.join("b.json.corrupt-11").exists());
        // Cut short: no longer JSON.
        fs::write(state.join("a.json"), &sealed[..sealed.len() - 10]).unwrap();
        assert!(sealed_store(&state, 1).load("a", "cid", 12).is_none());
        assert!(state.join("a.json.corrupt-12").exists());
        // Sealing off, or no key: a sealed file is not read, and moved aside.
        fs::write(state.join("a.json"), &sealed).unwrap();
        assert!(Store::open(&state).unwrap().load("a", "cid", 13).is_none());
        assert!(state.join("a.json.corrupt-13").exists());
        fs::write(state.join("a.json"), &sealed).unwrap();
        let no_key = Store::open(&state)
            .unwrap()
            .with_sealing(Sealing::NoKey("test".into()));
        assert!(!no_key.seal_status().sealed);
        assert!(no_key.load("a", "cid", 14).is_none());
        assert!(state.join("a.json.corrupt-14").exists());
        // The right key still opens the original.
        fs::write(state.join("a.json"), &sealed).unwrap();
        assert_eq!(
            sealed_store(&state, 1)
                .load("a", "cid", 15)
                .unwrap()
                .expose(),
            "rt-1"
        );
    }

    #[test]
    fn a_file_sealed_with_the_previous_key_opens_and_is_resealed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        sealed_store(&state, 1)
            .save("a", "cid", &Secret::new("rt-old-key"))
            .unwrap();
        let derive = |b: u8| crate::seal::StateKey::derive(&[b; 32], Path::new("/k")).unwrap();
        let rotating = Store::open(&state).unwrap().with_sealing(Sealing::Sealed {
            key: derive(2),
            previous: Some(derive(1)),
        });
        assert_eq!(rotating.load("a", "cid", 1).unwrap().expose(), "rt-old-key");
        // Resealed with the new key: the new key alone opens it now, the old one not.
        assert_eq!(
            sealed_store(&state, 2)
                .load("a", "cid", 2)
                .unwrap()
                .expose(),
            "rt-old-key"
        );
        assert!(sealed_store(&state, 1).load("a", "cid", 3).is_none());
        assert_eq!(names(&state), ["a.json.corrupt-3"]);
    }
}
