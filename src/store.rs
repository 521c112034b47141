//! The state dir: the newest refresh token per app, and nothing re-derivable (CONTRACT §4).
//!
//! Files are `NAME.json` (`{"client_id", "refresh_token"}`), mode 0600 in a 0700 directory,
//! replaced atomically: write a temp file, fsync it, rename over the old one, fsync the
//! directory. A file that cannot be read back is moved aside as `NAME.json.corrupt-<unix
//! seconds>` and the app falls back to its configured source. The writes are small and rare
//! (once per refresh-token rotation), so they run inline on the app's owner task.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tracing::warn;

use crate::secret::Secret;

/// One app's saved state.
#[derive(Deserialize)]
struct Saved {
    client_id: String,
    refresh_token: Secret,
}

/// The state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Creates (0700) or tightens the directory.
    pub fn open(dir: &Path) -> io::Result<Store> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        Ok(Store {
            dir: dir.to_owned(),
        })
    }

    fn file(&self, app: &str) -> PathBuf {
        self.dir.join(format!("{app}.json"))
    }

    /// The saved refresh token of `app`, if one was saved for this `client_id`. A damaged
    /// file is moved aside (and logged); a file for another client id is ignored.
    pub fn load(&self, app: &str, client_id: &str, wall_secs: u64) -> Option<Secret> {
        let path = self.file(app);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(app, path = %path.display(), error = %e, "cannot read saved state; using the configured source");
                return None;
            }
        };
        match serde_json::from_slice::<Saved>(&bytes) {
            Ok(saved) if saved.refresh_token.is_empty() => {
                self.quarantine(app, &path, wall_secs, "empty refresh token");
                None
            }
            Ok(saved) if saved.client_id != client_id => {
                warn!(app, "saved state belongs to another client_id; ignoring it");
                None
            }
            Ok(saved) => Some(saved.refresh_token),
            Err(e) => {
                self.quarantine(app, &path, wall_secs, &e.classify_str());
                None
            }
        }
    }

    fn quarantine(&self, app: &str, path: &Path, wall_secs: u64, why: &str) {
        let aside = PathBuf::from(format!("{}.corrupt-{wall_secs}", path.display()));
        match fs::rename(path, &aside) {
            Ok(()) => {
                warn!(app, moved_to = %aside.display(), why, "damaged state file moved aside; using the configured source")
            }
            Err(e) => warn!(app, error = %e, why, "damaged state file could not be moved aside"),
        }
    }

    /// Saves `refresh_token` atomically and durably.
    pub fn save(&self, app: &str, client_id: &str, refresh_token: &Secret) -> io::Result<()> {
        let path = self.file(app);
        let tmp = self.dir.join(format!(".{app}.json.tmp"));
        let body = zeroize::Zeroizing::new(
            serde_json::json!({
                "client_id": client_id,
                "refresh_token": refresh_token.expose(),
            })
            .to_string(),
        );
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(body.as_bytes())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()
    }

    /// Forgets `app`'s state.
    pub fn remove(&self, app: &str) {
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
    use std::os::unix::fs::MetadataExt;

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
}
