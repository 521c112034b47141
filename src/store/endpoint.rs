//! The endpoint token of each app with a `[role]` (CONTRACT §5b, §7): `NAME@endpoint.json`
//! (`{"role", "token"}`, or sealed: `{"role", "v", "alg", "nonce", "ct"}`) beside the app's
//! refresh-token file, so the token survives restarts. `role` is a fingerprint of the app's
//! `[role]` table: a file made for another `[role]` is not used (the caller makes a new
//! token), which is how a changed `[role]` replaces it.
//!
//! `@` never appears in an app name (`[a-z0-9][a-z0-9._-]*`), so no app's refresh-token file
//! can be taken for another app's endpoint file (`a.endpoint.json` would be app
//! `a.endpoint`'s). Read, written and sealed by the same code as the refresh-token files
//! ([`Store::load_secret`], [`Store::save_secret`]), with [`Purpose::EndpointToken`] in the
//! associated data: no link followed, a regular file of ours, at most
//! [`super::MAX_STATE_BYTES`], an atomic 0600 replace; a damaged one is moved aside.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::Store;
use crate::seal::{Binding, Purpose};
use crate::secret::Secret;

impl Store {
    pub(super) fn endpoint_file(&self, app: &str) -> PathBuf {
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
        self.load_secret(&binding(app, role), wall_secs)
    }

    /// Saves `app`'s endpoint token, made for the role fingerprint `role`, atomically (and
    /// sealed when there is a key).
    pub(crate) fn save_endpoint_token(
        &self,
        app: &str,
        role: &str,
        token: &Secret,
    ) -> io::Result<()> {
        self.save_secret(&binding(app, role), token)
    }

    /// Forgets `app`'s endpoint token (the app went, or lost its `[role]`).
    pub(crate) fn remove_endpoint_token(&self, app: &str) {
        let _ = fs::remove_file(self.endpoint_file(app));
    }
}

fn binding<'a>(app: &'a str, role: &'a str) -> Binding<'a> {
    Binding {
        app,
        bound_to: role,
        purpose: Purpose::EndpointToken,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::*;
    use crate::seal::{Sealing, StateKey};

    fn sealed_store(state: &Path, byte: u8) -> Store {
        let key = StateKey::derive(&[byte; 32], Path::new("/k")).unwrap();
        Store::open(state).unwrap().with_sealing(Sealing::Sealed {
            key,
            previous: None,
        })
    }

    const TOKEN: &str = "ep-token-canary-0123456789abcdefghij";

    #[test]
    fn sealed_with_a_key_unsealed_ones_migrated_and_bound_to_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let file = state.join("a@endpoint.json");
        // An unsealed file from before sealing: read, and rewritten sealed at once.
        Store::open(&state)
            .unwrap()
            .save_endpoint_token("a", "r1", &Secret::new(TOKEN))
            .unwrap();
        assert!(fs::read_to_string(&file).unwrap().contains(TOKEN));
        let store = sealed_store(&state, 1);
        assert_eq!(
            store.load_endpoint_token("a", "r1", 1).unwrap().expose(),
            TOKEN
        );
        let text = fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&TOKEN[..16]), "not rewritten sealed: {text}");
        assert!(
            text.contains(r#""role":"r1""#) && text.contains(r#""v":1"#),
            "{text}"
        );
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        // Another role: ignored, left in place; the right one still opens.
        assert!(store.load_endpoint_token("a", "r2", 2).is_none());
        assert_eq!(
            store.load_endpoint_token("a", "r1", 3).unwrap().expose(),
            TOKEN
        );
        // Another key: moved aside.
        let sealed = fs::read(&file).unwrap();
        assert!(sealed_store(&state, 2)
            .load_endpoint_token("a", "r1", 4)
            .is_none());
        assert!(state.join("a@endpoint.json.corrupt-4").exists());
        // Presented as the app's refresh-token file (its clear field renamed): does not open.
        let as_refresh = String::from_utf8(sealed.clone())
            .unwrap()
            .replace(r#""role":"r1""#, r#""client_id":"r1""#);
        fs::write(state.join("a.json"), as_refresh).unwrap();
        fs::set_permissions(state.join("a.json"), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(store.load("a", "r1", 5).is_none());
        assert!(state.join("a.json.corrupt-5").exists());
        // A flipped bit in the ciphertext: moved aside.
        let mut text: serde_json::Value = serde_json::from_slice(&sealed).unwrap();
        let ct = text["ct"].as_str().unwrap().to_owned();
        let flipped = if ct.starts_with('A') { "B" } else { "A" };
        text["ct"] = format!("{flipped}{}", &ct[1..]).into();
        fs::write(&file, text.to_string()).unwrap();
        assert!(store.load_endpoint_token("a", "r1", 6).is_none());
        assert!(state.join("a@endpoint.json.corrupt-6").exists());
    }

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
