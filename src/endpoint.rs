//! The credentials endpoint's authorization (CONTRACT §5b): one endpoint token per app with a
//! `[role]`, made here, kept in the state dir (`store::endpoint`), checked here in constant
//! time, and the container-credentials JSON the endpoint answers with. The loopback listener
//! itself is `server::endpoint`; handing the token out over the Unix socket is the
//! `/v1/apps/{app}/endpoint` route.
//!
//! A token lives as long as the app's `[role]` table is unchanged: it is reused across
//! reloads (from memory) and restarts (from the state dir), and replaced when the `[role]`
//! changes, since an SDK holding the old one then reads a different role's credentials. An
//! app that goes, or loses its `[role]`, loses its token and its file.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};

use base64::Engine;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::config::RoleConfig;
use crate::refresh::credentials::Credentials;
use crate::secret::Secret;
use crate::store::Store;

/// One app's endpoint token. `Debug` never shows it.
pub(crate) struct EndpointToken {
    /// [`role_fingerprint`] of the `[role]` it was made for.
    role: String,
    token: Secret,
}

impl fmt::Debug for EndpointToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EndpointToken(** redacted **)")
    }
}

impl EndpointToken {
    /// A new token: 32 random bytes (`ThreadRng`, a CSPRNG seeded by the OS), base64url.
    fn generate(role: String) -> EndpointToken {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        rand::Rng::fill(&mut rand::rng(), &mut bytes[..]);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..]);
        EndpointToken {
            role,
            token: Secret::new(token),
        }
    }

    /// The token, for the Unix socket's `/endpoint` answer only.
    pub(crate) fn expose(&self) -> &str {
        self.token.expose()
    }

    /// Whether `presented` (an `Authorization` header's bytes) is this token. Both sides are
    /// hashed first and the digests compared without an early exit, so the time taken says
    /// nothing about how many leading bytes (or how many bytes) were right.
    pub(crate) fn admits(&self, presented: &[u8]) -> bool {
        let ours = Sha256::digest(self.token.expose().as_bytes());
        let theirs = Sha256::digest(presented);
        let diff = ours
            .iter()
            .zip(theirs.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

/// What identifies a `[role]` table: a token is replaced when this changes. A digest, so the
/// file holds no copy of the config to drift from it.
pub(crate) fn role_fingerprint(role: &RoleConfig) -> String {
    let mut hash = Sha256::new();
    for part in [
        role.arn.as_str(),
        role.session_name.as_str(),
        &role.duration.as_secs().to_string(),
        role.endpoint_url.as_deref().unwrap_or(""),
    ] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The account of a role ARN (`arn:aws:iam::123456789012:role/Name`), `""` if it has none.
pub(crate) fn account_of(role_arn: &str) -> &str {
    role_arn.split(':').nth(4).unwrap_or("")
}

/// The container-credentials JSON every SDK's container provider reads.
pub(crate) fn container_json(creds: &Credentials, role_arn: &str) -> serde_json::Value {
    serde_json::json!({
        "AccessKeyId": creds.role.access_key_id,
        "SecretAccessKey": creds.role.secret_access_key.expose(),
        "Token": creds.role.session_token.expose(),
        "Expiration": crate::clock::rfc3339(creds.role.expiration),
        "AccountId": account_of(role_arn),
    })
}

/// [`container_json`] as the endpoint's answer body: rendered once per set of credentials
/// (every SDK fetch between two `AssumeRole` calls gets the same bytes), again only for
/// another role ARN.
pub(crate) fn container_body(creds: &Credentials, role_arn: &str) -> bytes::Bytes {
    let render =
        || zeroize::Zeroizing::new(container_json(creds, role_arn).to_string().into_bytes());
    let (arn, body) = creds
        .container
        .get_or_init(|| (role_arn.to_owned(), render()));
    if arn == role_arn {
        bytes::Bytes::copy_from_slice(body)
    } else {
        bytes::Bytes::copy_from_slice(&render())
    }
}

/// Every app's endpoint token, and where the endpoint listens once bound.
#[derive(Debug, Default)]
pub(crate) struct EndpointTokens {
    /// std `RwLock`: held to clone an `Arc` or swap the map, never across an await.
    tokens: RwLock<BTreeMap<String, Arc<EndpointToken>>>,
    /// The bound address (the real port when `credentials_listen` asked for port 0); unset
    /// while the endpoint is off.
    addr: OnceLock<SocketAddr>,
}

impl EndpointTokens {
    /// `app`'s token, if it has a `[role]`.
    pub(crate) fn get(&self, app: &str) -> Option<Arc<EndpointToken>> {
        self.read().get(app).cloned()
    }

    /// Records where the endpoint listens (once; later calls are ignored).
    pub(crate) fn set_addr(&self, addr: SocketAddr) {
        let _ = self.addr.set(addr);
    }

    /// Where the endpoint listens, when it does.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.addr.get().copied()
    }

    /// Makes the tokens match `apps` (each app's name and `[role]`): an app whose role is
    /// unchanged keeps its token, one with a new or changed role gets the saved token made
    /// for that role or a new one (saved), and the others lose theirs (file removed).
    pub(crate) async fn sync(
        &self,
        apps: Vec<(String, Option<String>)>,
        store: Option<Arc<Store>>,
        wall_secs: u64,
    ) {
        let old = self.read().clone();
        let mut new = BTreeMap::new();
        let mut forget = Vec::new();
        let mut load = Vec::new();
        for (name, role) in apps {
            match role {
                None => forget.push(name),
                Some(role) => match old.get(&name) {
                    Some(token) if token.role == role => {
                        new.insert(name, token.clone());
                    }
                    _ => load.push((name, role)),
                },
            }
        }
        forget.extend(
            old.keys()
                .filter(|name| !new.contains_key(*name) && !load.iter().any(|(n, _)| n == *name))
                .cloned(),
        );
        // Off the async workers: reads, writes and fsyncs.
        let made = tokio::task::spawn_blocking(move || {
            let mut made = Vec::new();
            for (name, role) in load {
                let saved = store
                    .as_ref()
                    .and_then(|s| s.load_endpoint_token(&name, &role, wall_secs));
                let token = match saved {
                    Some(token) => EndpointToken { role, token },
                    None => {
                        let token = EndpointToken::generate(role);
                        if let Some(store) = &store {
                            if let Err(e) = store.save_endpoint_token(&name, &token.role, &token.token) {
                                warn!(app = %name, error = %e, "cannot save the endpoint token; it changes at the next restart");
                            }
                        }
                        token
                    }
                };
                made.push((name, Arc::new(token)));
            }
            if let Some(store) = &store {
                for name in &forget {
                    store.remove_endpoint_token(name);
                }
            }
            made
        })
        .await
        .unwrap_or_default();
        new.extend(made);
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<EndpointToken>>> {
        // Every change is one whole-map swap, so a poisoned lock still holds a consistent map.
        self.tokens.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn role(arn: &str) -> RoleConfig {
        RoleConfig {
            arn: arn.into(),
            session_name: "s".into(),
            duration: Duration::from_secs(3600),
            endpoint_url: None,
        }
    }

    #[test]
    fn tokens_are_32_random_bytes_compared_whole() {
        let a = EndpointToken::generate("r".into());
        let b = EndpointToken::generate("r".into());
        assert_eq!(a.expose().len(), 43);
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(a.expose())
            .unwrap();
        assert_eq!(decoded.len(), 32);
        assert_ne!(a.expose(), b.expose());
        assert!(a.admits(a.expose().as_bytes()));
        assert!(!a.admits(b.expose().as_bytes()));
        assert!(!a.admits(&a.expose().as_bytes()[..42]));
        assert!(!a.admits(format!("{} ", a.expose()).as_bytes()));
        assert!(!a.admits(b""));
        assert_eq!(format!("{a:?}"), "EndpointToken(** redacted **)");
        assert!(!format!("{:?}", EndpointTokens::default()).contains(a.expose()));
    }

    #[test]
    fn accounts_and_fingerprints() {
        assert_eq!(
            account_of("arn:aws:iam::123456789012:role/R"),
            "123456789012"
        );
        assert_eq!(account_of("nonsense"), "");
        let r = role("arn:aws:iam::123456789012:role/R");
        assert_eq!(role_fingerprint(&r), role_fingerprint(&r.clone()));
        let mut other = r.clone();
        other.duration = Duration::from_secs(1800);
        assert_ne!(role_fingerprint(&r), role_fingerprint(&other));
        assert_ne!(
            role_fingerprint(&r),
            role_fingerprint(&role("arn:aws:iam::123456789012:role/S"))
        );
    }

    #[tokio::test]
    async fn kept_while_the_role_is_unchanged_replaced_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s")).unwrap());
        let tokens = EndpointTokens::default();
        let apps = |r: Option<&str>| {
            vec![
                ("a".to_string(), r.map(str::to_owned)),
                ("b".to_string(), None),
            ]
        };
        tokens.sync(apps(Some("r1")), Some(store.clone()), 1).await;
        let first = tokens.get("a").unwrap().expose().to_owned();
        assert!(tokens.get("b").is_none());
        tokens.sync(apps(Some("r1")), Some(store.clone()), 1).await;
        assert_eq!(
            tokens.get("a").unwrap().expose(),
            first,
            "a reload keeps it"
        );
        // A restart: a new registry reads the saved one.
        let restarted = EndpointTokens::default();
        restarted
            .sync(apps(Some("r1")), Some(store.clone()), 1)
            .await;
        assert_eq!(
            restarted.get("a").unwrap().expose(),
            first,
            "a restart keeps it"
        );
        restarted
            .sync(apps(Some("r2")), Some(store.clone()), 1)
            .await;
        let second = restarted.get("a").unwrap().expose().to_owned();
        assert_ne!(second, first, "a changed [role] replaces it");
        restarted.sync(vec![], Some(store.clone()), 1).await;
        assert!(restarted.get("a").is_none());
        assert!(
            !dir.path().join("s/a@endpoint.json").exists(),
            "an app gone loses its file"
        );
    }
}
