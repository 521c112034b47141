//! Configuration: the main `iamtokend.toml` plus one `apps.d/NAME.toml` per application
//! (CONTRACT §3), loaded into the typed [`Config`] the rest of the crate codes against.
//!
//! # Layout
//! - `types.rs`: the typed structs; every default already applied, no "not validated yet".
//! - `validate.rs`: reads the files, walks the spanned TOML trees and turns them into
//!   `types`, collecting every problem as a [`Diagnostic`] instead of stopping at the first.
//! - `paths.rs`: default locations (config file, socket, state dir) from an injected [`paths::Env`].
//!
//! This module owns *reading and judging* the configuration only: it never touches the
//! files a config names (assertions, refresh tokens are read at grant time), never reads
//! the process environment except through `paths::Env::from_process`, and depends on no
//! other module of the crate, so `check-config`, `serve` and a SIGHUP reload share it.

use std::fmt;
use std::path::{Path, PathBuf};

pub mod paths;
mod types;
mod validate;

pub use types::*;
pub use validate::parse_duration;

/// One problem in the configuration.
///
/// Display is `FILE:LINE:COL: message` (1-based; the column counts characters, not bytes)
/// or `FILE: message` when `line == 0`, for problems that have no position in the file
/// (it cannot be read, its name is wrong, a directory is missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in, as it was found (main file as given, apps as joined).
    pub file: PathBuf,
    /// 1-based line; 0 = the whole file.
    pub line: usize,
    /// 1-based column in characters; 0 when `line` is 0.
    pub col: usize,
    /// One human sentence. Never contains a configured secret-looking value: messages
    /// point at the key instead of quoting what was written there.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

/// Every problem found in one load, sorted by file, line, column.
///
/// Display is one [`Diagnostic`] per line (no trailing newline), which is exactly what
/// `check-config` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Reads the main file, then every `*.toml` directly in its apps dir, validates all of it
/// and returns the typed [`Config`], or every problem found (sorted by file, line, col).
///
/// Files the config merely names (assertion files, refresh token files) need not exist:
/// they are read at grant time, and checking them here would make a reload fail on a
/// secret that is mounted later.
///
/// # Errors
/// Every [`Diagnostic`] found: an unreadable main file or apps dir, TOML syntax, unknown
/// keys, bad values, missing keys, and cross-app `subject_app` problems.
pub fn load(main_file: &Path) -> Result<Config, Diagnostics> {
    validate::load(main_file).map_err(|mut diags| {
        diags.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        diags.dedup();
        Diagnostics(diags)
    })
}
