//! `iamtokend check-config`: every problem as FILE:LINE:COL: message on stderr; exit 1 on any.
//! A valid config may still get warning lines: a secret file the daemon reads (an app's
//! `assertion_file` or `refresh_token_file`, the `AWS_SHARED_CREDENTIALS_FILE` of this
//! environment) that its group or others can read. Warnings never change the exit code.
//! Also the state key `serve` would read (`[state] seal`): missing when required, or too short.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Failure;
use crate::config::{AssertionSource, Config, Grant};

/// Validates the config at `file`; warns about secret files readable by group or others.
pub(crate) fn run(file: &Path) -> Result<(), Failure> {
    match crate::config::load(file) {
        Ok(config) => {
            // The key `serve` would read: `seal = "required"` without one, or a key too
            // short, fails here too (run it under the unit's credentials to see the real one).
            let env = crate::config::paths::Env::from_process();
            let sealing = crate::seal::Sealing::from_credentials(
                config.state.seal,
                env.credentials_dir().as_deref(),
            )
            .map_err(|e| Failure::failed(format!("{}: {e}", file.display())))?;
            let aws_credentials = aws_shared_credentials_file(
                std::env::var_os("AWS_SHARED_CREDENTIALS_FILE"),
                std::env::var_os("HOME"),
            );
            for warning in exposed_secret_files(&secret_files(&config, aws_credentials)) {
                eprintln!("iamtokend: warning: {warning}");
            }
            eprintln!(
                "{}: ok ({} app{}); state {}",
                file.display(),
                config.apps.len(),
                if config.apps.len() == 1 { "" } else { "s" },
                if sealing.status().sealed {
                    "sealed"
                } else {
                    "not sealed"
                }
            );
            Ok(())
        }
        Err(diagnostics) => Err(Failure::failed(
            diagnostics.to_string().trim_end().to_owned(),
        )),
    }
}

/// A file whose contents are a secret the daemon reads, and which setting names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretFile {
    /// Where the setting points (the daemon follows links, so does the check).
    pub(crate) path: PathBuf,
    /// The setting, for the warning: "app analytics: `assertion_file`".
    pub(crate) named_by: String,
}

/// Every secret file `config` names, plus the AWS shared credentials file when one is set.
/// `ca_bundle` is left out: trust roots are public. `assertion_command`s are programs, not
/// secrets at rest.
pub(crate) fn secret_files(config: &Config, aws_credentials: Option<PathBuf>) -> Vec<SecretFile> {
    let mut files: Vec<SecretFile> = config
        .apps
        .values()
        .filter_map(|app| {
            let (path, key) = match &app.grant {
                Grant::JwtBearer {
                    assertion: AssertionSource::File(path),
                } => (path, "assertion_file"),
                Grant::RefreshToken { refresh_token_file } => {
                    (refresh_token_file, "refresh_token_file")
                }
                _ => return None,
            };
            Some(SecretFile {
                path: path.clone(),
                named_by: format!("app {}: `{key}`", app.name),
            })
        })
        .collect();
    if let Some(path) = aws_credentials {
        files.push(SecretFile {
            path,
            named_by: "AWS_SHARED_CREDENTIALS_FILE".to_owned(),
        });
    }
    files
}

/// `AWS_SHARED_CREDENTIALS_FILE` as the AWS SDK reads it: unset or empty is none, and a
/// leading `~/` is the home directory.
pub(crate) fn aws_shared_credentials_file(
    value: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let path = PathBuf::from(value.filter(|v| !v.is_empty())?);
    match (path.strip_prefix("~"), home) {
        (Ok(rest), Some(home)) => Some(Path::new(&home).join(rest)),
        _ => Some(path),
    }
}

/// One warning line per file of `files` that its group or others may read. A file that
/// does not exist or cannot be looked at is skipped: the daemon reports it when it reads it,
/// and the files a config names need not exist yet.
pub(crate) fn exposed_secret_files(files: &[SecretFile]) -> Vec<String> {
    files
        .iter()
        .filter_map(|file| {
            let mode = std::fs::metadata(&file.path).ok()?.permissions().mode();
            readable_by_group_or_others(mode).then(|| {
                format!(
                    "{}: {} is readable by its group or others (mode {:04o}); make it readable \
                     by the daemon alone (owner iamtokend, mode 0600, or a systemd credential)",
                    file.path.display(),
                    file.named_by,
                    mode & 0o7777
                )
            })
        })
        .collect()
}

/// Whether a file of mode `mode` may be read by someone other than its owner (and root).
pub(crate) fn readable_by_group_or_others(mode: u32) -> bool {
    mode & 0o044 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_by_group_or_others_reads_only_the_read_bits() {
        let cases = [
            (0o600, false),
            (0o400, false),
            (0o700, false),
            (0o100600, false), // a regular file's st_mode, type bits included
            (0o4700, false),   // setuid is not a read bit
            (0o620, false),    // group may write but not read: not a disclosure
            (0o602, false),
            (0o640, true),
            (0o604, true),
            (0o644, true),
            (0o040, true),
            (0o004, true),
            (0o100644, true),
            (0o777, true),
        ];
        for (mode, want) in cases {
            assert_eq!(readable_by_group_or_others(mode), want, "{mode:o}");
        }
    }

    #[test]
    fn aws_shared_credentials_file_follows_the_sdk() {
        let os = |s: &str| Some(OsString::from(s));
        let cases = [
            (None, os("/h"), None),
            (os(""), os("/h"), None),
            (os("/etc/c"), os("/h"), Some("/etc/c")),
            (os("~/.aws/c"), os("/h"), Some("/h/.aws/c")),
            (os("~/.aws/c"), None, Some("~/.aws/c")),
            (os("rel/c"), os("/h"), Some("rel/c")),
        ];
        for (value, home, want) in cases {
            assert_eq!(
                aws_shared_credentials_file(value.clone(), home),
                want.map(PathBuf::from),
                "{value:?}"
            );
        }
    }

    #[test]
    fn only_exposed_existing_files_warn() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, "secret").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            SecretFile {
                path,
                named_by: format!("test {name}"),
            }
        };
        let files = [
            file("private", 0o600),
            file("group", 0o640),
            file("world", 0o644),
            SecretFile {
                path: dir.path().join("missing"),
                named_by: "test missing".to_owned(),
            },
        ];
        let warnings = exposed_secret_files(&files);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("test group is readable") && warnings[0].contains("0640"));
        assert!(warnings[1].contains("test world is readable") && warnings[1].contains("0644"));
    }
}
