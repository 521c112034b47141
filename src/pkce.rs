//! PKCE (RFC 7636) S256 verifier and challenge, and the random `state` of a login.

use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Characters allowed in a verifier: RFC 7636 "unreserved".
const UNRESERVED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";

/// A fresh verifier: 64 characters (RFC 7636 allows 43-128), as the AWS CLI makes them.
pub fn verifier() -> Secret {
    let mut rng = rand::rng();
    let v: String = (0..64)
        .map(|_| UNRESERVED[rng.random_range(0..UNRESERVED.len())] as char)
        .collect();
    Secret::new(v)
}

/// The S256 challenge: unpadded base64url of SHA-256(verifier).
pub fn challenge(verifier: &Secret) -> String {
    let digest = Sha256::digest(verifier.expose().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// A random `state`: 32 alphanumerics.
pub(crate) fn state() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7636_appendix_b_vector() {
        let v = Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(challenge(&v), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn verifiers_are_valid_and_distinct() {
        let a = verifier();
        let b = verifier();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| UNRESERVED.contains(&c)));
        assert_eq!(state().len(), 32);
    }
}
