//! Configuration: the main `iamtokend.toml` plus one `apps.d/NAME.toml` per application
//! (CONTRACT §3), loaded into the typed [`Config`] the rest of the crate codes against.
//!
//! The files are walked through toml's spanned document tree instead of serde structs:
//! serde stops at the first unknown key or bad value, while a user running `check-config`
//! wants every problem in one pass. So each table is checked by hand, every problem becomes
//! a [`Diagnostic`] at its `FILE:LINE:COL`, and the walk goes on with a placeholder so later
//! keys are still checked (the placeholders never escape: any diagnostic means `Err`). A
//! TOML syntax error is reported once, at its span, and that file is not checked further.
//! Messages never quote a configured value that could be a secret (ARNs, URLs, commands):
//! they name the key and say what was expected.
//!
//! # Layout
//! - `types.rs`: the typed structs; every default already applied, no "not validated yet";
//!   [`GrantKind`], the one spelling of the four grant names.
//! - `cursor.rs`: parsing a file, spans to positions, typed getters that record diagnostics.
//! - `main_file.rs`: the main file's tables. `apps.rs`: listing and checking the app files
//!   (`[aws]`, `[role]`, `[access]`); `grant.rs`: one check per grant.
//! - `subjects.rs`: the `subject_app` graph: its diagnostics and the apps' start order.
//! - `syntax.rs`: pure checks of values (durations, octal modes, ARNs, regions, URLs).
//! - `system.rs`: the one seam to the host: the user/group database and `ca_bundle` files.
//! - `paths.rs`: default locations (config file, socket, state dir) from an injected [`paths::Env`].
//!
//! What it touches: the main file and the `*.toml` files of its apps dir, and, through
//! `system.rs`, the user/group database (NSS) for `[access]` names and the PEM bundles
//! `ca_bundle` names. It never reads the secrets a config names (assertion and refresh
//! token files are read at grant time), never reads the process environment except through
//! `paths::Env::from_process`, and depends on no other module of the crate, so
//! `check-config`, `serve` and a SIGHUP reload share it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

mod apps;
mod cursor;
mod grant;
mod main_file;
pub(crate) mod paths;
mod subjects;
mod syntax;
mod system;
#[cfg(test)]
mod tests;
mod types;

pub(crate) use types::*;

use cursor::{parse_toml, read_text, FileCx};
use system::{Host, System};

/// One problem in the configuration.
///
/// Display is `FILE:LINE:COL: message` (1-based; the column counts characters, not bytes)
/// or `FILE: message` when `line == 0`, for problems that have no position in the file
/// (it cannot be read, its name is wrong, a directory is missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in, as it was found (main file as given, apps as joined).
    pub(crate) file: PathBuf,
    /// 1-based line; 0 = the whole file.
    pub(crate) line: usize,
    /// 1-based column in characters; 0 when `line` is 0.
    pub(crate) col: usize,
    /// One human sentence. Never contains a configured secret-looking value: messages
    /// point at the key instead of quoting what was written there.
    pub(crate) message: String,
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
    load_with(main_file, &Host)
}

/// [`load`] against `sys` for the user database and the `ca_bundle` files.
fn load_with(main_file: &Path, sys: &dyn System) -> Result<Config, Diagnostics> {
    check_all(main_file, sys).map_err(|mut diags| {
        diags.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        diags.dedup();
        Diagnostics(diags)
    })
}

/// The main file, then its apps; the diagnostics unsorted.
fn check_all(main_file: &Path, sys: &dyn System) -> Result<Config, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let main_dir = main_file.parent().unwrap_or(Path::new("")).to_path_buf();

    let Some(text) = read_text(main_file, &mut diags) else {
        return Err(diags);
    };
    let mut cx = FileCx::new(main_file, &text, &mut diags);
    let Some(root) = parse_toml(&mut cx, &text) else {
        return Err(diags);
    };
    let main = main_file::check_main(&mut cx, root.get_ref(), &main_dir);

    let mut apps = BTreeMap::new();
    if let Some(apps_dir) = &main.apps_dir {
        let app_files = apps::list_app_files(&mut cx, apps_dir, main.apps_dir_span.clone());
        let mut sinks = Vec::new();
        apps::load_apps(&app_files, sys, &mut diags, &mut apps, &mut sinks);
        let env = sys.env();
        apps::check_sink_paths(
            &sinks,
            &paths::socket_path(main.server.socket.as_deref(), &env),
            &paths::state_dir(main.state.dir.as_deref(), &env),
            &mut diags,
        );
    }

    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(Config {
        main_file: main_file.to_path_buf(),
        // `apps_dir` is only `None` after a diagnostic, so this default is never seen.
        apps_dir: main.apps_dir.unwrap_or_default(),
        server: main.server,
        state: main.state,
        refresh: main.refresh,
        log: main.log,
        apps,
    })
}
