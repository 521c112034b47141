//! The endpoint token of each app with a `[role]` (CONTRACT §5b, §7): `NAME@endpoint.json`
//! (`{"role", "token"}`) beside the app's refresh-token file, so the token survives restarts.
//! `role` is a fingerprint of the app's `[role]` table: a file made for another `[role]` is
//! not used (the caller makes a new token), which is how a changed `[role]` replaces it.
//!
//! `@` never appears in an app name (`[a-z0-9][a-z0-9._-]*`), so no app's refresh-token file
//! can be taken for another app's endpoint file (`a.endpoint.json` would be app
//! `a.endpoint`'s). Read and written with the same rules as the refresh-token files: no link
//! followed, a regular file of ours, at most [`MAX_STATE_BYTES`], written to an exclusive
//! temp file, mode 0600, fsync, rename, fsync of the directory; a damaged one is moved
//! aside. Not sealed yet: when `[state] seal` lands this file goes through it too.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use serde::Deserialize;
use tracing::warn;
use zeroize::Zeroizing;

use super::{Store, MAX_STATE_BYTES};
use crate::secret::Secret;

#[derive(Deserialize)]
struct SavedEndpoint {
    role: String,
    token: Secret,
}

impl Store {
    fn endpoint_file(&self, app: &str) -> PathBuf {
        self.dir.join(format!("{app}@endpoint.json"))
    }

    /// `app`'s saved endpoint token if it was made for the `[role]` whose fingerprint is
    /// `role`. A damaged file is moved aside (and logged), one for another role ignored.
    pub(crate) fn load_endpoint_token(
        &self,
        app: &str,
        role: &str,
        wall_secs: u64,
    ) -> Option<Secret> {
        let path = self.endpoint_file(app);
        // O_NONBLOCK: a FIFO planted here must not hang the open.
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path);
        let mut file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                self.quarantine(app, &path, wall_secs, "a symbolic link");
                return None;
            }
            Err(e) => {
                warn!(app, path = %path.display(), error = %e, "cannot read the saved endpoint token; making a new one");
                return None;
            }
        };
        let meta = file.metadata().ok()?;
        let uid = nix::unistd::geteuid().as_raw();
        if !meta.is_file() || meta.uid() != uid || meta.len() > MAX_STATE_BYTES as u64 {
            let why = "not a regular file of ours under the size limit";
            self.quarantine(app, &path, wall_secs, why);
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
                    warn!(app, path = %path.display(), error = %e, "cannot read the saved endpoint token; making a new one");
                    return None;
                }
            }
        }
        match serde_json::from_slice::<SavedEndpoint>(&buf[..len.min(MAX_STATE_BYTES)]) {
            Ok(saved) if len <= MAX_STATE_BYTES && !saved.token.is_empty() => {
                (saved.role == role).then_some(saved.token)
            }
            _ => {
                self.quarantine(app, &path, wall_secs, "not an endpoint token file");
                None
            }
        }
    }

    /// Saves `app`'s endpoint token, made for the role fingerprint `role`, atomically.
    pub(crate) fn save_endpoint_token(
        &self,
        app: &str,
        role: &str,
        token: &Secret,
    ) -> io::Result<()> {
        let path = self.endpoint_file(app);
        let tmp = self.dir.join(format!(
            ".{app}@endpoint.json.tmp-{:016x}",
            rand::random::<u64>()
        ));
        let body = Zeroizing::new(
            serde_json::json!({ "role": role, "token": token.expose() }).to_string(),
        );
        self.replace_file(&tmp, &path, body.as_bytes())
    }

    /// Forgets `app`'s endpoint token (the app went, or lost its `[role]`).
    pub(crate) fn remove_endpoint_token(&self, app: &str) {
        let _ = fs::remove_file(self.endpoint_file(app));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_per_role_0600_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        assert!(store.load_endpoint_token("a", "r1", 1).is_none());
        store
            .save_endpoint_token("a", "r1", &Secret::new("tok-1"))
            .unwrap();
        let file = state.join("a@endpoint.json");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            store.load_endpoint_token("a", "r1", 1).unwrap().expose(),
            "tok-1"
        );
        assert!(
            store.load_endpoint_token("a", "r2", 1).is_none(),
            "another [role]"
        );
        fs::write(&file, "{nope").unwrap();
        assert!(store.load_endpoint_token("a", "r1", 7).is_none());
        assert!(state.join("a@endpoint.json.corrupt-7").exists());
        store
            .save_endpoint_token("a", "r1", &Secret::new("tok-2"))
            .unwrap();
        store.remove_endpoint_token("a");
        assert!(!file.exists());
    }
}
