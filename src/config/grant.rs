//! An app file's grant: `grant = "..."` and the keys that belong to that grant, one
//! function per grant. A key of another grant is reported at the key; a missing one at the
//! `grant` value ("grant \"X\" requires ...").

use std::ops::Range;
use std::path::Path;

use super::cursor::{FileCx, Section};
use super::syntax::is_loopback_redirect;
use super::types::*;

/// The keys only `kind` may have.
fn own_keys(kind: GrantKind) -> &'static [&'static str] {
    match kind {
        GrantKind::AuthorizationCode => &["redirect_uri"],
        GrantKind::RefreshToken => &["refresh_token_file"],
        GrantKind::JwtBearer => &["assertion_file", "assertion_command"],
        GrantKind::TokenExchange => &["subject_app", "requested_token_type"],
    }
}

/// Every grant-specific key (the app file's top level allows them all).
pub(crate) fn grant_keys() -> impl Iterator<Item = &'static str> {
    GrantKind::ALL
        .into_iter()
        .flat_map(|kind| own_keys(kind).iter().copied())
}

/// The `grant` value, parsed, and where it was written.
pub(crate) struct Declared {
    pub(crate) kind: GrantKind,
    pub(crate) span: Range<usize>,
}

impl Declared {
    /// `grant`, a required key naming one of the four grants.
    pub(crate) fn check(cx: &mut FileCx<'_>, root: &Section<'_, '_>) -> Option<Declared> {
        let (s, span) = root.required(cx, "grant")?;
        match s.parse::<GrantKind>() {
            Ok(kind) => Some(Declared { kind, span }),
            Err(UnknownGrant) => {
                let names: Vec<String> = GrantKind::ALL
                    .iter()
                    .map(|kind| format!("\"{kind}\""))
                    .collect();
                cx.at(
                    &span,
                    format!("`grant` must be one of {}", names.join(", ")),
                );
                None
            }
        }
    }

    /// "grant \"X\" requires WHAT", at the `grant` value.
    fn requires(&self, cx: &mut FileCx<'_>, what: &str) {
        cx.at(
            &self.span,
            format!("grant \"{}\" requires {what}", self.kind),
        );
    }
}

/// Builds the declared grant from its keys; keys of the other grants are reported.
/// `None` when a key it needs is missing or bad (then a diagnostic exists).
pub(crate) fn check_grant(
    cx: &mut FileCx<'_>,
    root: &Section<'_, '_>,
    declared: &Declared,
    app_dir: &Path,
) -> Option<Grant> {
    for other in GrantKind::ALL.into_iter().filter(|k| *k != declared.kind) {
        for key in own_keys(other) {
            if let Some((k, _)) = root.get(key) {
                let message = format!("`{key}` does not belong to grant \"{}\"", declared.kind);
                cx.at(&k.span(), message);
            }
        }
    }
    match declared.kind {
        GrantKind::AuthorizationCode => authorization_code(cx, root, declared),
        GrantKind::RefreshToken => refresh_token(cx, root, declared, app_dir),
        GrantKind::JwtBearer => jwt_bearer(cx, root, declared, app_dir),
        GrantKind::TokenExchange => token_exchange(cx, root, declared),
    }
}

fn authorization_code(
    cx: &mut FileCx<'_>,
    root: &Section<'_, '_>,
    declared: &Declared,
) -> Option<Grant> {
    if !root.has("redirect_uri") {
        declared.requires(cx, "`redirect_uri`");
        return None;
    }
    let (uri, span) = root.string(cx, "redirect_uri")?;
    if !is_loopback_redirect(uri) {
        cx.at(
            &span,
            "`redirect_uri` must be a loopback http URL with a port: \
             http://127.0.0.1:PORT/..., http://localhost:PORT/... or http://[::1]:PORT/...",
        );
    }
    Some(Grant::AuthorizationCode {
        redirect_uri: uri.to_string(),
    })
}

fn refresh_token(
    cx: &mut FileCx<'_>,
    root: &Section<'_, '_>,
    declared: &Declared,
    app_dir: &Path,
) -> Option<Grant> {
    if !root.has("refresh_token_file") {
        declared.requires(cx, "`refresh_token_file`");
        return None;
    }
    let (path, _) = root.path(cx, "refresh_token_file", app_dir)?;
    Some(Grant::RefreshToken {
        refresh_token_file: path,
    })
}

fn jwt_bearer(
    cx: &mut FileCx<'_>,
    root: &Section<'_, '_>,
    declared: &Declared,
    app_dir: &Path,
) -> Option<Grant> {
    match (root.get("assertion_file"), root.get("assertion_command")) {
        (None, None) => {
            declared.requires(cx, "one of `assertion_file` or `assertion_command`");
            return None;
        }
        (Some((file_key, _)), Some((command_key, _))) => {
            let later = if file_key.span().start > command_key.span().start {
                file_key
            } else {
                command_key
            };
            cx.at(
                &later.span(),
                "set only one of `assertion_file` and `assertion_command`",
            );
            return None;
        }
        _ => {}
    }
    let assertion = if root.has("assertion_file") {
        AssertionSource::File(root.path(cx, "assertion_file", app_dir)?.0)
    } else {
        AssertionSource::Command(root.command(cx, "assertion_command")?)
    };
    Some(Grant::JwtBearer { assertion })
}

/// The cross-app checks of `subject_app` (it exists, no cycle) are `subjects.rs`'s, once
/// every app file has been read.
fn token_exchange(
    cx: &mut FileCx<'_>,
    root: &Section<'_, '_>,
    declared: &Declared,
) -> Option<Grant> {
    let requested_token_type = match root.string(cx, "requested_token_type") {
        Some(("access_token", _)) | None => RequestedTokenType::AccessToken,
        Some(("refresh_token", _)) => RequestedTokenType::RefreshToken,
        Some((_, span)) => {
            cx.at(
                &span,
                "`requested_token_type` must be \"access_token\" or \"refresh_token\"",
            );
            RequestedTokenType::AccessToken
        }
    };
    if !root.has("subject_app") {
        declared.requires(cx, "`subject_app`");
        return None;
    }
    let (subject, _) = root.non_empty(cx, "subject_app")?;
    Some(Grant::TokenExchange {
        subject_app: subject.to_string(),
        requested_token_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_kinds_round_trip() {
        for kind in GrantKind::ALL {
            assert_eq!(kind.as_str().parse::<GrantKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        for bad in [
            "",
            "jwt_bearer",
            "JWT-BEARER",
            " jwt-bearer",
            "client-credentials",
        ] {
            assert_eq!(bad.parse::<GrantKind>(), Err(UnknownGrant), "{bad:?}");
        }
    }

    /// Every grant-only key belongs to exactly one grant.
    #[test]
    fn grant_keys_are_disjoint() {
        let keys: Vec<&str> = grant_keys().collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(keys.len(), unique.len(), "{keys:?}");
        assert_eq!(keys.len(), 6);
    }
}
