//! Sealing the state dir at rest (CONTRACT §7, `[state] seal`): where the key comes from,
//! how the file key is derived from it, and the sealed file format. [`crate::store`] decides
//! when to seal and what to do with a file that does not open; this module only seals and
//! opens.
//!
//! **Key.** systemd's credential `$CREDENTIALS_DIRECTORY/state-key` (from
//! `LoadCredentialEncrypted=state-key:...`, made by `systemd-creds encrypt`), read once at
//! start: any bytes, at least [`MIN_KEY_BYTES`] of them (a shorter one is a start-up error,
//! not a weak key), at most [`MAX_KEY_BYTES`]. For a key rotation, `state-key-previous` (the
//! old key) may be passed too: it only opens, and what it opens is resealed with the new one. The file key is HKDF-SHA256 of it (fixed salt
//! and info naming this format) into an AES-256-GCM key; the credential's bytes and the
//! derived key's bytes are zeroed as soon as the key is set up, and the AEAD context lives in
//! aws-lc, which cleanses its allocations when they are freed.
//!
//! **Format, version 1.** One JSON object, no secret in any encoding:
//!
//! ```json
//! {"v":1,"alg":"A256GCM","client_id":"arn:aws:sso::...","nonce":"<12 bytes, base64>","ct":"<ciphertext+16-byte tag, base64>"}
//! ```
//!
//! (an endpoint token's file has `"role":"<fingerprint>"` where a refresh token's has
//! `"client_id"`: [`Purpose::clear_field`]). The plaintext is the secret's UTF-8 bytes. The
//! nonce is 96 random bits from aws-lc's RNG, new for every write. The associated data is
//! `"iamtokend-state" 0x00 v(u8) | len(app) app | len(bound_to) bound_to | len(purpose) purpose`
//! (lengths u32 big-endian; `bound_to` is the client id or the role fingerprint): a file
//! copied to another app's name, another client id or `[role]`, or another purpose (a refresh
//! token presented as an endpoint token) does not open. The clear field is only there so that
//! a file of a replaced application or role is told apart (ignored, as an unsealed one is)
//! from a file that does not open (moved aside); the associated data uses the configured
//! one, so editing it gains nothing.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use aws_lc_rs::{aead, hkdf};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use zeroize::Zeroizing;

use crate::config::SealMode;
use crate::secret::Secret;

/// The credential's name in `$CREDENTIALS_DIRECTORY` (`LoadCredentialEncrypted=state-key:...`).
pub(crate) const CREDENTIAL_NAME: &str = "state-key";
/// The key being rotated away from, when given (`LoadCredentialEncrypted=state-key-previous:...`):
/// files it opens are rewritten with `state-key` at once. Never used to write.
pub(crate) const PREVIOUS_CREDENTIAL_NAME: &str = "state-key-previous";
/// Shortest credential accepted: 256 bits.
pub(crate) const MIN_KEY_BYTES: usize = 32;
/// Longest credential read (a larger file is a mistake, not a key).
pub(crate) const MAX_KEY_BYTES: usize = 64 * 1024;
/// The sealed format's version (`"v"`).
pub(crate) const FORMAT_VERSION: u64 = 1;
/// The sealed format's algorithm (`"alg"`), JOSE's name for AES-256-GCM.
pub(crate) const ALG: &str = "A256GCM";
/// The key source as `status` and the logs name it.
pub(crate) const KEY_SOURCE: &str = "credentials:state-key";

/// First bytes of the associated data: no other use of the key can produce the same.
const AAD_TAG: &[u8] = b"iamtokend-state\0";
const HKDF_SALT: &[u8] = b"iamtokend state-key";
const HKDF_INFO: &[u8] = b"iamtokend state file v1 A256GCM";

/// What a state file holds: bound into the associated data, so a secret written for one
/// purpose is never read back as another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The app's newest refresh token (`NAME.json`), bound to its `client_id`.
    RefreshToken,
    /// The app's credentials-endpoint token (`NAME@endpoint.json`), bound to its `[role]`'s
    /// fingerprint.
    EndpointToken,
}

impl Purpose {
    /// The name bound into the associated data; also the unsealed file's field that holds
    /// the secret.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Purpose::RefreshToken => "refresh_token",
            Purpose::EndpointToken => "token",
        }
    }

    /// The clear field that says what the secret is bound to ([`Binding::bound_to`]), in the
    /// sealed and the unsealed format alike.
    pub(crate) fn clear_field(self) -> &'static str {
        match self {
            Purpose::RefreshToken => "client_id",
            Purpose::EndpointToken => "role",
        }
    }
}

/// Whose secret a sealed file is: the associated data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Binding<'a> {
    /// The app's name (the file's name).
    pub(crate) app: &'a str,
    /// What the secret belongs to besides the app: its configured `client_id` for a refresh
    /// token, its `[role]` fingerprint for an endpoint token ([`Purpose::clear_field`]).
    pub(crate) bound_to: &'a str,
    /// What the file holds.
    pub(crate) purpose: Purpose,
}

impl Binding<'_> {
    fn aad(&self, version: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64 + self.app.len() + self.bound_to.len());
        aad.extend_from_slice(AAD_TAG);
        aad.push(version);
        for part in [self.app, self.bound_to, self.purpose.as_str()] {
            // Names and ARNs are far below 4 GiB; saturating keeps this total anyway.
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            aad.extend_from_slice(&len.to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad
    }
}

/// The AES-256-GCM key derived from the state-key credential.
pub(crate) struct StateKey {
    key: aead::LessSafeKey,
}

impl fmt::Debug for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateKey(** redacted **)")
    }
}

/// Why a key could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// The credential is shorter than [`MIN_KEY_BYTES`].
    #[error("the state key {path} is {len} bytes; it must be at least {MIN_KEY_BYTES} (make one with `head -c 32 /dev/urandom | systemd-creds encrypt --name=state-key - ...`)")]
    TooShort {
        /// The credential's path.
        path: String,
        /// Its length.
        len: usize,
    },
    /// The credential is larger than [`MAX_KEY_BYTES`].
    #[error("the state key {path} is larger than {MAX_KEY_BYTES} bytes")]
    TooLong {
        /// The credential's path.
        path: String,
    },
    /// The credential is there but cannot be read.
    #[error("cannot read the state key {path}: {error}")]
    Unreadable {
        /// The credential's path.
        path: String,
        /// The I/O error.
        error: String,
    },
    /// `seal = "required"` and there is no key.
    #[error("[state] seal = \"required\", but {0}")]
    Required(String),
}

impl StateKey {
    /// Derives the file key from the credential's bytes (`path` names it in errors).
    pub(crate) fn derive(credential: &[u8], path: &Path) -> Result<StateKey, KeyError> {
        if credential.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort {
                path: path.display().to_string(),
                len: credential.len(),
            });
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(credential);
        // Filled into a buffer of ours, zeroed on drop (`UnboundKey::from(Okm)` would leave
        // an unzeroed copy on its stack). aws-lc copies it into its context, and cleanses
        // that allocation when it is freed.
        let mut bytes = Zeroizing::new([0u8; 32]);
        prk.expand(&[HKDF_INFO], &aead::AES_256_GCM)
            .and_then(|okm| okm.fill(&mut bytes[..]))
            .expect("32 bytes is within HKDF-SHA256's output limit");
        let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, &bytes[..])
            .expect("a 32-byte key is an AES-256-GCM key");
        Ok(StateKey {
            key: aead::LessSafeKey::new(unbound),
        })
    }

    /// Seals `secret` for `binding`: the file's whole text.
    pub(crate) fn seal(&self, binding: &Binding<'_>, secret: &Secret) -> io::Result<String> {
        let mut nonce = [0u8; aead::NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| io::Error::other("the random number generator failed"))?;
        let mut in_out = Zeroizing::new(secret.expose().as_bytes().to_vec());
        in_out.reserve(aead::AES_256_GCM.tag_len());
        let version = FORMAT_VERSION as u8;
        self.key
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(binding.aad(version)),
                &mut *in_out,
            )
            .map_err(|_| io::Error::other("sealing failed"))?;
        let mut file = serde_json::json!({
            "v": FORMAT_VERSION,
            "alg": ALG,
            "nonce": B64.encode(nonce),
            "ct": B64.encode(&*in_out),
        });
        file[binding.purpose.clear_field()] = binding.bound_to.into();
        Ok(file.to_string())
    }

    /// Opens a sealed file's fields for `binding`.
    pub(crate) fn open(
        &self,
        binding: &Binding<'_>,
        sealed: &SealedFields,
    ) -> Result<Secret, OpenError> {
        sealed.check()?;
        let nonce = B64
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| <[u8; aead::NONCE_LEN]>::try_from(n).ok())
            .ok_or(OpenError::Malformed(
                "a nonce that is not 12 bytes of base64",
            ))?;
        let mut in_out = Zeroizing::new(
            B64.decode(&sealed.ct)
                .map_err(|_| OpenError::Malformed("a ciphertext that is not base64"))?,
        );
        if in_out.len() < aead::AES_256_GCM.tag_len() {
            return Err(OpenError::Malformed("a ciphertext shorter than its tag"));
        }
        let plain = self
            .key
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(binding.aad(FORMAT_VERSION as u8)),
                &mut in_out,
            )
            .map_err(|_| OpenError::NotOpened)?;
        let text = std::str::from_utf8(plain).map_err(|_| OpenError::NotUtf8)?;
        Ok(Secret::new(text))
    }
}

/// The fields of a sealed file other than its clear binding (the store reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedFields {
    /// `"v"`.
    pub(crate) v: u64,
    /// `"alg"`.
    pub(crate) alg: String,
    /// `"nonce"`, base64.
    pub(crate) nonce: String,
    /// `"ct"`, base64.
    pub(crate) ct: String,
}

impl SealedFields {
    fn check(&self) -> Result<(), OpenError> {
        if self.v != FORMAT_VERSION {
            return Err(OpenError::Version(self.v));
        }
        if self.alg != ALG {
            return Err(OpenError::Malformed("an algorithm other than A256GCM"));
        }
        Ok(())
    }
}

/// Why a sealed file did not open: the reason logged when it is moved aside (never its
/// contents).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    /// A format version this build does not know.
    #[error("sealed with format version {0}, which this version of iamtokend does not read")]
    Version(u64),
    /// Fields that cannot be a sealed file of ours.
    #[error("a sealed file with {0}")]
    Malformed(&'static str),
    /// The tag did not verify: another key, another app or client id, or changed bytes.
    #[error("it does not open with this state key (sealed with another key, for another app, or changed)")]
    NotOpened,
    /// Opened, but the secret is not text (cannot come from this daemon).
    #[error("it opened, but holds no text")]
    NotUtf8,
}

/// How state files are written, decided once at start.
#[derive(Debug)]
pub(crate) enum Sealing {
    /// `seal = "off"`: never sealed; a sealed file found is moved aside.
    Off,
    /// `seal = "auto"` and no key: written unsealed. The reason (which variable or file is
    /// missing) is logged at start.
    NoKey(String),
    /// Sealed with `key`; `previous` (the key rotated away from) also opens.
    Sealed {
        /// `state-key`: seals and opens.
        key: StateKey,
        /// `state-key-previous`, when passed: opens only.
        previous: Option<StateKey>,
    },
}

/// What `status`, `/v1/apps` and `/metrics` show about sealing. The default is "not sealed".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SealStatus {
    /// Whether state files are written sealed.
    pub(crate) sealed: bool,
    /// Where the key came from, when sealed ([`KEY_SOURCE`]).
    pub(crate) key_source: Option<&'static str>,
}

impl SealStatus {
    /// `{"sealed": bool, "key_source": "credentials:state-key" | null}`.
    pub(crate) fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "sealed": self.sealed, "key_source": self.key_source })
    }
}

impl Sealing {
    /// Reads the key as `mode` asks: not at all for `off`; for `auto` and `required` from
    /// `credentials_dir/state-key` when there is one. A key that is there but unreadable,
    /// too short or too long is an error in either mode; no key is one only for `required`.
    pub(crate) fn from_credentials(
        mode: SealMode,
        credentials_dir: Option<&Path>,
    ) -> Result<Sealing, KeyError> {
        if mode == SealMode::Off {
            return Ok(Sealing::Off);
        }
        let no_key = |why: String| match mode {
            SealMode::Required => Err(KeyError::Required(why)),
            _ => Ok(Sealing::NoKey(why)),
        };
        let Some(dir) = credentials_dir else {
            return no_key(
                "$CREDENTIALS_DIRECTORY is not set (no systemd credential state-key was passed)"
                    .into(),
            );
        };
        let path: PathBuf = dir.join(CREDENTIAL_NAME);
        let credential = match read_capped(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                return no_key(format!("there is no {}", path.display()));
            }
            Err(e) => return Err(e),
        };
        let key = StateKey::derive(&credential, &path)?;
        let previous_path = dir.join(PREVIOUS_CREDENTIAL_NAME);
        let previous = match read_capped(&previous_path)? {
            Some(bytes) => Some(StateKey::derive(&bytes, &previous_path)?),
            None => None,
        };
        Ok(Sealing::Sealed { key, previous })
    }

    /// Whether files are written sealed, and with which key source.
    pub(crate) fn status(&self) -> SealStatus {
        match self {
            Sealing::Sealed { .. } => SealStatus {
                sealed: true,
                key_source: Some(KEY_SOURCE),
            },
            Sealing::Off | Sealing::NoKey(_) => SealStatus {
                sealed: false,
                key_source: None,
            },
        }
    }

    /// The key that seals, when sealing.
    pub(crate) fn key(&self) -> Option<&StateKey> {
        match self {
            Sealing::Sealed { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The previous key of a rotation, when one was passed.
    pub(crate) fn previous_key(&self) -> Option<&StateKey> {
        match self {
            Sealing::Sealed { previous, .. } => previous.as_ref(),
            _ => None,
        }
    }
}

/// The credential's bytes (zeroed on drop); `None` when the file does not exist.
fn read_capped(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
    let unreadable = |e: io::Error| KeyError::Unreadable {
        path: path.display().to_string(),
        error: e.to_string(),
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e)),
    };
    // A fixed buffer, never grown: no copy of the key left behind by a realloc.
    let mut buf = Zeroizing::new(vec![0u8; MAX_KEY_BYTES + 1]);
    let mut len = 0;
    let mut file = file.take(MAX_KEY_BYTES as u64 + 1);
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(unreadable(e)),
        }
    }
    if len > MAX_KEY_BYTES {
        return Err(KeyError::TooLong {
            path: path.display().to_string(),
        });
    }
    let mut key = Zeroizing::new(Vec::with_capacity(len));
    key.extend_from_slice(&buf[..len]);
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "aorAAAAAGd1-refresh-token-canary-0123456789abcdef";

    fn key(byte: u8) -> StateKey {
        StateKey::derive(&[byte; 32], Path::new("/k")).unwrap()
    }

    fn binding<'a>(app: &'a str, client_id: &'a str) -> Binding<'a> {
        Binding {
            app,
            bound_to: client_id,
            purpose: Purpose::RefreshToken,
        }
    }

    fn fields(text: &str) -> (String, SealedFields) {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        let s = |k: &str| v[k].as_str().unwrap().to_owned();
        (
            s("client_id"),
            SealedFields {
                v: v["v"].as_u64().unwrap(),
                alg: s("alg"),
                nonce: s("nonce"),
                ct: s("ct"),
            },
        )
    }

    #[test]
    fn round_trip_and_no_secret_in_the_file() {
        let k = key(7);
        let b = binding("reports", "cid");
        let text = k.seal(&b, &Secret::new(TOKEN)).unwrap();
        let (client_id, sealed) = fields(&text);
        assert_eq!(client_id, "cid");
        assert_eq!((sealed.v, sealed.alg.as_str()), (1, "A256GCM"));
        assert_eq!(k.open(&b, &sealed).unwrap().expose(), TOKEN);
        let b64 = B64.encode(TOKEN);
        for piece in [TOKEN, &TOKEN[10..26], &b64, &b64[4..20]] {
            assert!(!text.contains(piece), "{piece:?} in {text}");
        }
        // A new nonce every write.
        let again = k.seal(&b, &Secret::new(TOKEN)).unwrap();
        assert_ne!(fields(&again).1.nonce, sealed.nonce);
        assert_ne!(again, text);
    }

    #[test]
    fn another_app_client_id_or_purpose_does_not_open() {
        let k = key(7);
        let (_, sealed) = fields(&k.seal(&binding("a", "cid"), &Secret::new(TOKEN)).unwrap());
        assert_eq!(
            k.open(&binding("b", "cid"), &sealed).unwrap_err(),
            OpenError::NotOpened
        );
        assert_eq!(
            k.open(&binding("a", "cid2"), &sealed).unwrap_err(),
            OpenError::NotOpened
        );
        // Length prefixes: moving bytes between app and client id changes the data.
        assert_eq!(
            k.open(&binding("ac", "id"), &sealed).unwrap_err(),
            OpenError::NotOpened
        );
        // The same app and binding string, sealed as an endpoint token: not a refresh token.
        let as_endpoint = Binding {
            purpose: Purpose::EndpointToken,
            ..binding("a", "cid")
        };
        let text = k.seal(&as_endpoint, &Secret::new(TOKEN)).unwrap();
        assert!(
            text.contains(r#""role":"cid""#) && !text.contains("client_id"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let endpoint_sealed = SealedFields {
            v: 1,
            alg: ALG.into(),
            nonce: v["nonce"].as_str().unwrap().into(),
            ct: v["ct"].as_str().unwrap().into(),
        };
        assert_eq!(
            k.open(&binding("a", "cid"), &endpoint_sealed).unwrap_err(),
            OpenError::NotOpened
        );
        assert_eq!(
            k.open(&as_endpoint, &sealed).unwrap_err(),
            OpenError::NotOpened
        );
        assert_ne!(binding("a", "bc").aad(1), binding("ab", "c").aad(1));
        assert_ne!(binding("a", "b").aad(1), binding("a", "b").aad(2));
    }

    #[test]
    fn another_key_does_not_open() {
        let b = binding("a", "cid");
        let (_, sealed) = fields(&key(7).seal(&b, &Secret::new(TOKEN)).unwrap());
        assert_eq!(key(8).open(&b, &sealed).unwrap_err(), OpenError::NotOpened);
        // Any length from 32 up is a key of its own; HKDF takes all of it.
        let long = StateKey::derive(&[7; 33], Path::new("/k")).unwrap();
        assert_eq!(long.open(&b, &sealed).unwrap_err(), OpenError::NotOpened);
    }

    #[test]
    fn another_version_or_algorithm_is_refused() {
        let k = key(7);
        let b = binding("a", "cid");
        let (_, sealed) = fields(&k.seal(&b, &Secret::new(TOKEN)).unwrap());
        let v2 = SealedFields {
            v: 2,
            ..sealed.clone()
        };
        assert_eq!(k.open(&b, &v2).unwrap_err(), OpenError::Version(2));
        assert!(OpenError::Version(2).to_string().contains("version 2"));
        let other = SealedFields {
            alg: "A128GCM".into(),
            ..sealed
        };
        assert!(matches!(
            k.open(&b, &other).unwrap_err(),
            OpenError::Malformed(_)
        ));
    }

    #[test]
    fn truncated_or_flipped_bytes_do_not_open() {
        let k = key(7);
        let b = binding("a", "cid");
        let (_, sealed) = fields(&k.seal(&b, &Secret::new(TOKEN)).unwrap());
        let ct = B64.decode(&sealed.ct).unwrap();
        let with_ct = |bytes: &[u8]| SealedFields {
            ct: B64.encode(bytes),
            ..sealed.clone()
        };
        assert_eq!(
            k.open(&b, &with_ct(&ct[..ct.len() - 1])).unwrap_err(),
            OpenError::NotOpened
        );
        assert!(matches!(
            k.open(&b, &with_ct(&ct[..15])).unwrap_err(),
            OpenError::Malformed(_)
        ));
        for i in [0, ct.len() / 2, ct.len() - 1] {
            let mut flipped = ct.clone();
            flipped[i] ^= 0x01;
            assert_eq!(
                k.open(&b, &with_ct(&flipped)).unwrap_err(),
                OpenError::NotOpened,
                "byte {i}"
            );
        }
        let mut nonce = B64.decode(&sealed.nonce).unwrap();
        nonce[0] ^= 0x80;
        let moved = SealedFields {
            nonce: B64.encode(&nonce),
            ..sealed.clone()
        };
        assert_eq!(k.open(&b, &moved).unwrap_err(), OpenError::NotOpened);
        let short = SealedFields {
            nonce: B64.encode(&nonce[..11]),
            ..sealed.clone()
        };
        assert!(matches!(
            k.open(&b, &short).unwrap_err(),
            OpenError::Malformed(_)
        ));
        let garbage = SealedFields {
            ct: "not base64!".into(),
            ..sealed
        };
        assert!(matches!(
            k.open(&b, &garbage).unwrap_err(),
            OpenError::Malformed(_)
        ));
    }

    #[test]
    fn the_key_comes_from_the_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path();
        // No directory, no file: auto runs unsealed, required refuses.
        assert!(matches!(
            Sealing::from_credentials(SealMode::Auto, None).unwrap(),
            Sealing::NoKey(_)
        ));
        let err = Sealing::from_credentials(SealMode::Required, Some(creds)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("[state] seal = \"required\", but there is no "),
            "{err}"
        );
        assert!(
            !Sealing::from_credentials(SealMode::Auto, Some(creds))
                .unwrap()
                .status()
                .sealed
        );
        // Short: an error in every mode but off, naming the length, never the bytes.
        std::fs::write(creds.join("state-key"), b"short-key-material-31-bytes-xyz").unwrap();
        for mode in [SealMode::Auto, SealMode::Required] {
            let err = Sealing::from_credentials(mode, Some(creds)).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("is 31 bytes; it must be at least 32"),
                "{text}"
            );
            assert!(!text.contains("short-key-material"), "{text}");
        }
        assert!(matches!(
            Sealing::from_credentials(SealMode::Off, Some(creds)).unwrap(),
            Sealing::Off
        ));
        // 32 bytes and more: sealed.
        std::fs::write(creds.join("state-key"), [9u8; 32]).unwrap();
        let sealing = Sealing::from_credentials(SealMode::Required, Some(creds)).unwrap();
        assert_eq!(
            sealing.status(),
            SealStatus {
                sealed: true,
                key_source: Some("credentials:state-key")
            }
        );
        assert_eq!(
            format!("{:?}", sealing),
            "Sealed { key: StateKey(** redacted **), previous: None }"
        );
        // A previous key is read too, and checked the same way.
        std::fs::write(creds.join("state-key-previous"), [8u8; 31]).unwrap();
        let err = Sealing::from_credentials(SealMode::Auto, Some(creds)).unwrap_err();
        assert!(
            err.to_string().contains("state-key-previous is 31 bytes"),
            "{err}"
        );
        std::fs::write(creds.join("state-key-previous"), [8u8; 32]).unwrap();
        let sealing = Sealing::from_credentials(SealMode::Auto, Some(creds)).unwrap();
        assert!(sealing.previous_key().is_some());
        std::fs::write(creds.join("state-key"), vec![1u8; MAX_KEY_BYTES + 1]).unwrap();
        assert!(matches!(
            Sealing::from_credentials(SealMode::Auto, Some(creds)).unwrap_err(),
            KeyError::TooLong { .. }
        ));
    }
}
