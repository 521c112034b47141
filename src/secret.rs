//! `Secret`: the one type for every token, refresh token, assertion, code, verifier and key.
//!
//! `Debug` prints `Secret(** redacted **)`; there is no `Display` or `Serialize`, so a secret
//! reaches output only through an explicit `expose()` (the socket answer, the upstream call).
//! The buffer is zeroed on drop.

use std::fmt;
use zeroize::Zeroizing;

/// A secret string. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(Zeroizing::new(value.into()))
    }

    /// The secret itself. Call only where the value must leave the process.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (an empty secret is never sent).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(** redacted **)")
    }
}

/// Deserializing is allowed (request bodies); serializing is not.
impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret::new)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Secret {
        Secret::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let s = Secret::new("canary-value-123");
        assert_eq!(format!("{s:?}"), "Secret(** redacted **)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(** redacted **))");
        assert_eq!(s.expose(), "canary-value-123");
    }
}
