//! Raw TOML -> typed [`Config`], collecting every problem as a [`Diagnostic`].
//!
//! The files are parsed with toml's spanned document tree (`DeTable`) instead of serde
//! structs: serde stops at the first unknown key or bad value, while a user running
//! `check-config` wants every problem in one pass. So each table is walked by hand: unknown
//! keys are reported at the key, bad values at the value, missing keys at the table that
//! should hold them (line 1, column 1 for a file's top level), and the walk goes on with a
//! placeholder so later keys are still checked. The placeholders never escape: any
//! diagnostic means `Err`.
//!
//! A TOML syntax error is reported once, at its span, and that file is not checked further
//! (the parser's recovery after an error produces noise, not help).
//!
//! Messages never quote a configured value that could be a secret (ARNs, URLs, commands):
//! they name the key and say what was expected.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use super::types::*;
use super::Diagnostic;

type Key<'i> = Spanned<DeString<'i>>;
type Value<'i> = Spanned<DeValue<'i>>;

/// The grant names, as spelled in `grant = "..."`.
const GRANTS: [&str; 4] = [
    "authorization-code",
    "refresh-token",
    "jwt-bearer",
    "token-exchange",
];

/// Keys that belong to one grant only, and that grant.
const GRANT_KEYS: [(&str, &str); 6] = [
    ("assertion_file", "jwt-bearer"),
    ("assertion_command", "jwt-bearer"),
    ("refresh_token_file", "refresh-token"),
    ("subject_app", "token-exchange"),
    ("requested_token_type", "token-exchange"),
    ("redirect_uri", "authorization-code"),
];

/// Every top-level key an app file may have.
const APP_KEYS: [&str; 14] = [
    "client_id",
    "region",
    "grant",
    "scopes",
    "endpoint_url",
    "assertion_file",
    "assertion_command",
    "refresh_token_file",
    "subject_app",
    "requested_token_type",
    "redirect_uri",
    "aws",
    "role",
    "access",
];

/// `[role] duration` bounds: what STS `AssumeRole` accepts (15 minutes to 12 hours).
const ROLE_DURATION_MIN: Duration = Duration::from_secs(15 * 60);
const ROLE_DURATION_MAX: Duration = Duration::from_secs(12 * 3600);
/// `[role] duration` default: STS's own default session length.
const ROLE_DURATION_DEFAULT: Duration = Duration::from_secs(3600);
/// `[aws] connect_timeout` bounds: under 100ms fails on any real network; over 5m a dead
/// endpoint holds an app (and a `max_concurrent` slot) for too long.
const CONNECT_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT_MAX: Duration = Duration::from_secs(5 * 60);
/// `[aws] read_timeout` bounds, same reasoning.
const READ_TIMEOUT_MIN: Duration = Duration::from_secs(1);
const READ_TIMEOUT_MAX: Duration = Duration::from_secs(10 * 60);
/// `[refresh] max_backoff` floor: below a second the "backoff" would hammer the service.
const MAX_BACKOFF_MIN: Duration = Duration::from_secs(1);

/// Loads and validates everything; the caller sorts the diagnostics.
pub(super) fn load(main_file: &Path) -> Result<Config, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let main_dir = main_file.parent().unwrap_or(Path::new("")).to_path_buf();

    let Some(text) = read_text(main_file, &mut diags) else {
        return Err(diags);
    };
    let mut cx = FileCx::new(main_file, &text, &mut diags);
    let Some(root) = parse_toml(&mut cx, &text) else {
        return Err(diags);
    };
    let main = check_main(&mut cx, root.get_ref(), &main_dir);

    let mut apps = BTreeMap::new();
    if let Some(apps_dir) = &main.apps_dir {
        let app_files = list_app_files(&mut cx, apps_dir, main.apps_dir_span.clone());
        load_apps(&app_files, &mut diags, &mut apps);
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

// ---------------------------------------------------------------------------------------
// Files, positions, diagnostics

/// Reads a file as UTF-8; an I/O error or invalid UTF-8 becomes a diagnostic.
fn read_text(path: &Path, diags: &mut Vec<Diagnostic>) -> Option<String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) => {
            diags.push(whole_file(path, format!("cannot read: {err}")));
            return None;
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(err) => {
            let valid = err.utf8_error().valid_up_to();
            let bytes = err.into_bytes();
            // The prefix up to `valid` is valid UTF-8 by construction.
            let prefix = String::from_utf8_lossy(&bytes[..valid]);
            let (line, col) = LineIndex::new(&prefix).line_col(&prefix, valid);
            diags.push(Diagnostic {
                file: path.to_path_buf(),
                line,
                col,
                message: "invalid UTF-8: the file must be UTF-8 encoded TOML".to_string(),
            });
            None
        }
    }
}

fn whole_file(path: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        message,
    }
}

/// Byte offset -> 1-based line and column (in characters).
pub(crate) struct LineIndex {
    /// Byte offset where each line starts; `line_starts[0] == 0`.
    line_starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { line_starts }
    }

    /// 1-based (line, column) of `offset` in `text` (the text this index was built from).
    /// Offsets past the end clamp to the end; an offset inside a character counts as
    /// that character.
    pub(crate) fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let col = text[start..offset].chars().count() + 1;
        (line, col)
    }
}

/// One file being checked: where its diagnostics go and how spans become positions.
struct FileCx<'a> {
    file: PathBuf,
    text: &'a str,
    index: LineIndex,
    diags: &'a mut Vec<Diagnostic>,
}

impl<'a> FileCx<'a> {
    fn new(file: &Path, text: &'a str, diags: &'a mut Vec<Diagnostic>) -> FileCx<'a> {
        FileCx {
            file: file.to_path_buf(),
            text,
            index: LineIndex::new(text),
            diags,
        }
    }

    fn pos(&self, span: &Range<usize>) -> (usize, usize) {
        self.index.line_col(self.text, span.start)
    }

    /// A problem at `span` (its start).
    fn at(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, col) = self.pos(span);
        self.diags.push(Diagnostic {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    /// A problem with the file as a whole (line 0).
    fn whole(&mut self, message: impl Into<String>) {
        self.diags.push(whole_file(&self.file, message.into()));
    }
}

/// Parses a document; a syntax error becomes one diagnostic at its span.
fn parse_toml<'i>(cx: &mut FileCx<'_>, text: &'i str) -> Option<Spanned<DeTable<'i>>> {
    match DeTable::parse(text) {
        Ok(root) => Some(root),
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            let message = err.message().replace('\n', " ");
            cx.at(&span, format!("TOML syntax error: {message}"));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------
// Tables and typed getters

/// A table being checked, with what messages call it.
struct Section<'t, 'i> {
    table: &'t DeTable<'i>,
    /// Where a missing key is reported: the `[name]` header, or 0..0 (line 1, col 1)
    /// for a file's top level.
    span: Range<usize>,
    /// `None` for the top level, else the table name, e.g. `refresh`.
    name: Option<&'static str>,
}

impl<'t, 'i> Section<'t, 'i> {
    fn root(table: &'t Spanned<DeTable<'i>>) -> Section<'t, 'i> {
        Section {
            table: table.get_ref(),
            span: 0..0,
            name: None,
        }
    }

    fn get(&self, key: &str) -> Option<(&'t Key<'i>, &'t Value<'i>)> {
        self.table.get_key_value(key)
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// `" in [name]"` for messages, or "" at the top level.
    fn where_(&self) -> String {
        match self.name {
            Some(name) => format!(" in [{name}]"),
            None => String::new(),
        }
    }

    /// Reports every key not in `allowed`, at the key.
    fn unknown_keys(&self, cx: &mut FileCx<'_>, allowed: &[&str]) {
        for (key, _) in self.table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                let message = format!(
                    "unknown key `{}`{}",
                    key.get_ref().escape_debug(),
                    self.where_()
                );
                cx.at(&key.span(), message);
            }
        }
    }

    fn missing(&self, cx: &mut FileCx<'_>, key: &str) {
        let message = format!("missing required key `{key}`{}", self.where_());
        cx.at(&self.span, message);
    }

    /// A sub-table, or `None` when absent or (reported) not a table.
    fn table(&self, cx: &mut FileCx<'_>, key: &'static str) -> Option<Section<'t, 'i>> {
        let (_, value) = self.get(key)?;
        match value.get_ref() {
            DeValue::Table(table) => Some(Section {
                table,
                span: value.span(),
                name: Some(key),
            }),
            _ => {
                cx.at(&value.span(), format!("`{key}` must be a table"));
                None
            }
        }
    }

    /// A string value and its span.
    fn string(&self, cx: &mut FileCx<'_>, key: &str) -> Option<(&'t str, Range<usize>)> {
        let (_, value) = self.get(key)?;
        match value.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), value.span())),
            _ => {
                cx.at(&value.span(), format!("`{key}` must be a string"));
                None
            }
        }
    }

    /// A non-empty string.
    fn non_empty(&self, cx: &mut FileCx<'_>, key: &str) -> Option<(&'t str, Range<usize>)> {
        let (s, span) = self.string(cx, key)?;
        if s.is_empty() {
            cx.at(&span, format!("`{key}` must not be empty"));
            return None;
        }
        Some((s, span))
    }

    /// A non-empty path string, resolved against `base` when relative.
    fn path(&self, cx: &mut FileCx<'_>, key: &str, base: &Path) -> Option<(PathBuf, Range<usize>)> {
        let (s, span) = self.non_empty(cx, key)?;
        Some((base.join(s), span))
    }

    /// An integer or a float, as f64.
    fn number(&self, cx: &mut FileCx<'_>, key: &str) -> Option<(f64, Range<usize>)> {
        let (_, value) = self.get(key)?;
        let number = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .map(|i| i as f64),
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            _ => None,
        };
        if number.is_none() {
            cx.at(&value.span(), format!("`{key}` must be a number"));
        }
        number.map(|n| (n, value.span()))
    }

    /// An integer.
    fn integer(&self, cx: &mut FileCx<'_>, key: &str) -> Option<(i64, Range<usize>)> {
        let (_, value) = self.get(key)?;
        match integer_value(value.get_ref()) {
            Ok(i) => Some((i, value.span())),
            Err(what) => {
                cx.at(&value.span(), format!("`{key}` {what}"));
                None
            }
        }
    }

    /// A duration string (see [`parse_duration`]).
    fn duration(&self, cx: &mut FileCx<'_>, key: &str) -> Option<(Duration, Range<usize>)> {
        let (_, value) = self.get(key)?;
        let DeValue::String(s) = value.get_ref() else {
            cx.at(
                &value.span(),
                format!("`{key}` must be a duration string like \"5m\""),
            );
            return None;
        };
        match parse_duration(s) {
            Ok(d) => Some((d, value.span())),
            Err(err) => {
                cx.at(&value.span(), format!("`{key}`: {err}"));
                None
            }
        }
    }

    /// An array; `None` when absent or (reported) not an array.
    fn array(&self, cx: &mut FileCx<'_>, key: &str, what: &str) -> Option<&'t [Value<'i>]> {
        let (_, value) = self.get(key)?;
        match value.get_ref() {
            DeValue::Array(array) => Some(array.as_ref()),
            _ => {
                cx.at(&value.span(), format!("`{key}` must be an array of {what}"));
                None
            }
        }
    }

    /// An array of non-empty strings; each bad element is reported at the element.
    fn strings(&self, cx: &mut FileCx<'_>, key: &str) -> Option<Vec<String>> {
        let array = self.array(cx, key, "strings")?;
        let mut out = Vec::new();
        let mut ok = true;
        for item in array {
            match item.get_ref() {
                DeValue::String(s) if !s.is_empty() => out.push(s.to_string()),
                _ => {
                    cx.at(
                        &item.span(),
                        format!("`{key}` must contain only non-empty strings"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

/// An integer's value; `Err` says what is wrong ("must be an integer", "is out of range").
fn integer_value(value: &DeValue<'_>) -> Result<i64, &'static str> {
    match value {
        DeValue::Integer(i) => {
            i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| "is out of range")
        }
        _ => Err("must be an integer"),
    }
}

// ---------------------------------------------------------------------------------------
// Main file

/// What the main file yields; fields hold defaults where a value was bad (then a
/// diagnostic exists and they are never used).
struct MainParts {
    /// Resolved apps dir; `None` when `apps_dir` was bad (apps are then not loaded,
    /// since any report about them would be about the wrong directory).
    apps_dir: Option<PathBuf>,
    /// The `apps_dir` value, when set: where "does not exist" is reported.
    apps_dir_span: Option<Range<usize>>,
    server: ServerConfig,
    state: StateConfig,
    refresh: RefreshConfig,
    log: LogConfig,
}

fn check_main(cx: &mut FileCx<'_>, root: &DeTable<'_>, main_dir: &Path) -> MainParts {
    let root = Section {
        table: root,
        span: 0..0,
        name: None,
    };
    root.unknown_keys(cx, &["apps_dir", "server", "state", "refresh", "log"]);

    let (apps_dir, apps_dir_span) = if root.has("apps_dir") {
        match root.path(cx, "apps_dir", main_dir) {
            Some((dir, span)) => (Some(dir), Some(span)),
            None => (None, None),
        }
    } else {
        (Some(main_dir.join("apps.d")), None)
    };

    let mut server = ServerConfig {
        socket: None,
        socket_mode: 0o660,
    };
    if let Some(sec) = root.table(cx, "server") {
        sec.unknown_keys(cx, &["socket", "socket_mode"]);
        server.socket = sec.path(cx, "socket", main_dir).map(|(p, _)| p);
        if let Some((s, span)) = sec.string(cx, "socket_mode") {
            match parse_octal_mode(s) {
                Ok(mode) => server.socket_mode = mode,
                Err(err) => cx.at(&span, format!("`socket_mode` {err}")),
            }
        }
    }

    let mut state = StateConfig { dir: None };
    if let Some(sec) = root.table(cx, "state") {
        sec.unknown_keys(cx, &["dir"]);
        state.dir = sec.path(cx, "dir", main_dir).map(|(p, _)| p);
    }

    let refresh = match root.table(cx, "refresh") {
        Some(sec) => check_refresh(cx, &sec),
        None => default_refresh(),
    };

    let mut log = LogConfig {
        format: LogFormat::Text,
        level: "info".to_string(),
    };
    if let Some(sec) = root.table(cx, "log") {
        sec.unknown_keys(cx, &["format", "level"]);
        if let Some((s, span)) = sec.string(cx, "format") {
            match s {
                "text" => log.format = LogFormat::Text,
                "json" => log.format = LogFormat::Json,
                _ => cx.at(&span, "`format` must be \"text\" or \"json\""),
            }
        }
        if let Some((s, _)) = sec.non_empty(cx, "level") {
            log.level = s.to_string();
        }
    }

    MainParts {
        apps_dir,
        apps_dir_span,
        server,
        state,
        refresh,
        log,
    }
}

fn default_refresh() -> RefreshConfig {
    RefreshConfig {
        at: 0.5,
        jitter: 0.1,
        min_lead: Duration::from_secs(5 * 60),
        max_backoff: Duration::from_secs(5 * 60),
        max_concurrent: 8,
    }
}

fn check_refresh(cx: &mut FileCx<'_>, sec: &Section<'_, '_>) -> RefreshConfig {
    sec.unknown_keys(
        cx,
        &["at", "jitter", "min_lead", "max_backoff", "max_concurrent"],
    );
    let mut refresh = default_refresh();

    // `at` and `jitter` are checked alone first; the combined bound only when both are
    // sound, so one mistake gives one message.
    let mut at_ok = true;
    let mut at_span = None;
    if let Some((at, span)) = sec.number(cx, "at") {
        if at > 0.0 && at < 1.0 {
            refresh.at = at;
            at_span = Some(span);
        } else {
            cx.at(&span, "`at` must be between 0 and 1 (exclusive)");
            at_ok = false;
        }
    } else {
        at_ok = !sec.has("at");
    }
    let mut jitter_ok = true;
    let mut jitter_span = None;
    if let Some((jitter, span)) = sec.number(cx, "jitter") {
        if jitter >= 0.0 && jitter.is_finite() {
            refresh.jitter = jitter;
            jitter_span = Some(span);
        } else {
            cx.at(&span, "`jitter` must be 0 or more");
            jitter_ok = false;
        }
    } else {
        jitter_ok = !sec.has("jitter");
    }
    if at_ok
        && jitter_ok
        && !(refresh.at - refresh.jitter > 0.0 && refresh.at + refresh.jitter < 1.0)
    {
        let message = format!(
            "`at` +/- `jitter` must stay between 0 and 1 (exclusive), but {} +/- {} does not",
            refresh.at, refresh.jitter
        );
        // Point at whichever of the two was written; jitter first, it is usually the
        // one to change. Both absent cannot fail (the defaults are sound).
        if let Some(span) = jitter_span.or(at_span) {
            cx.at(&span, message);
        }
    }

    if let Some((d, _)) = sec.duration(cx, "min_lead") {
        refresh.min_lead = d;
    }
    if let Some((d, span)) = sec.duration(cx, "max_backoff") {
        if d >= MAX_BACKOFF_MIN {
            refresh.max_backoff = d;
        } else {
            cx.at(&span, "`max_backoff` must be at least 1s");
        }
    }
    if let Some((n, span)) = sec.integer(cx, "max_concurrent") {
        match usize::try_from(n) {
            Ok(n) if n >= 1 => refresh.max_concurrent = n,
            _ => cx.at(&span, "`max_concurrent` must be 1 or more"),
        }
    }
    refresh
}

/// Parses a file mode written as an octal string: "0660", "660" or "0o660"; at most 0777.
pub(crate) fn parse_octal_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err("must be an octal string like \"0660\"".to_string());
    }
    let significant = digits.trim_start_matches('0');
    if significant.len() > 3 {
        return Err("must be at most \"0777\"".to_string());
    }
    // At most three octal digits: always fits.
    Ok(u32::from_str_radix(
        if significant.is_empty() {
            "0"
        } else {
            significant
        },
        8,
    )
    .unwrap_or(0))
}

// ---------------------------------------------------------------------------------------
// Apps

/// An app file found in the apps dir.
struct AppFile {
    path: PathBuf,
    /// The stem when it is a valid app name.
    name: Option<String>,
}

/// Lists `*.toml` files directly in `dir` (not dotfiles, not directories), sorted.
fn list_app_files(cx: &mut FileCx<'_>, dir: &Path, span: Option<Range<usize>>) -> Vec<AppFile> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            let message = format!("cannot read apps dir {}: {err}", dir.display());
            match span {
                Some(span) => cx.at(&span, message),
                None => cx.whole(message),
            }
            return Vec::new();
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                cx.whole(format!("cannot read apps dir {}: {err}", dir.display()));
                continue;
            }
        };
        let path = entry.path();
        let file_name = entry.file_name();
        let file_name = file_name.as_encoded_bytes();
        if file_name.starts_with(b".") || !file_name.ends_with(b".toml") || !path.is_file() {
            continue;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| is_app_name(s))
            .map(str::to_string);
        files.push(AppFile { path, name });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// `[a-z0-9][a-z0-9._-]*`: the app's name everywhere (URLs, metrics, logs, state files).
pub(crate) fn is_app_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

/// A token-exchange app's `subject_app`, kept for the cross-app checks.
struct SubjectRef {
    subject: String,
    file: PathBuf,
    line: usize,
    col: usize,
}

impl SubjectRef {
    fn diag(&self, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
            message,
        }
    }
}

fn load_apps(
    files: &[AppFile],
    diags: &mut Vec<Diagnostic>,
    apps: &mut BTreeMap<String, AppConfig>,
) {
    // Every app file with a valid name counts as existing for `subject_app`, even when it
    // has errors of its own: "does not exist" would then be a second, wrong message.
    let known: BTreeSet<&str> = files.iter().filter_map(|f| f.name.as_deref()).collect();
    let mut subjects = BTreeMap::new();

    for file in files {
        let display_name = match &file.name {
            Some(name) => name.clone(),
            None => {
                let stem = file
                    .path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                diags.push(whole_file(
                    &file.path,
                    format!(
                        "app name `{}` (the file name without .toml) must match [a-z0-9][a-z0-9._-]*",
                        stem.escape_debug()
                    ),
                ));
                // Still check the contents, so every problem shows up at once.
                stem
            }
        };
        let Some(text) = read_text(&file.path, diags) else {
            continue;
        };
        let mut cx = FileCx::new(&file.path, &text, diags);
        let Some(root) = parse_toml(&mut cx, &text) else {
            continue;
        };
        let (app, subject) = check_app(&mut cx, &root, &display_name, &file.path);
        if let Some(name) = &file.name {
            if let Some(subject) = subject {
                subjects.insert(name.clone(), subject);
            }
            if let Some(app) = app {
                apps.insert(name.clone(), app);
            }
        }
    }

    check_subjects(&known, &subjects, diags);
}

/// `subject_app`s: existing, not self, no cycles.
fn check_subjects(
    known: &BTreeSet<&str>,
    subjects: &BTreeMap<String, SubjectRef>,
    diags: &mut Vec<Diagnostic>,
) {
    for (name, r) in subjects {
        if r.subject == *name {
            diags.push(r.diag("`subject_app` cannot name the app itself".to_string()));
        } else if !known.contains(r.subject.as_str()) {
            diags.push(r.diag(format!(
                "subject_app `{}` does not exist",
                r.subject.escape_debug()
            )));
        }
    }

    // Each app has at most one subject, so following the links from any app either ends
    // or enters exactly one cycle. Visit each app once; a link back into the current walk
    // closes a cycle.
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for start in subjects.keys() {
        let mut walk: Vec<&str> = Vec::new();
        let mut cur: &str = start;
        while !done.contains(cur) && !walk.contains(&cur) {
            let Some(r) = subjects.get(cur) else { break };
            walk.push(cur);
            cur = &r.subject;
        }
        if let Some(pos) = walk.iter().position(|n| *n == cur) {
            let cycle = &walk[pos..];
            // A one-app cycle is the "itself" message above.
            if cycle.len() > 1 {
                for (i, member) in cycle.iter().enumerate() {
                    let mut path: Vec<&str> = cycle[i..].to_vec();
                    path.extend_from_slice(&cycle[..=i]);
                    if let Some(r) = subjects.get(*member) {
                        diags.push(r.diag(format!("cycle: {}", path.join(" -> "))));
                    }
                }
            }
        }
        done.extend(walk);
    }
}

/// Checks one app file. Returns the app when its grant could be built (it is used only if
/// no diagnostic exists at all), and its `subject_app` for the cross-app checks.
fn check_app(
    cx: &mut FileCx<'_>,
    root: &Spanned<DeTable<'_>>,
    name: &str,
    file: &Path,
) -> (Option<AppConfig>, Option<SubjectRef>) {
    let root = Section::root(root);
    let app_dir = file.parent().unwrap_or(Path::new(""));
    root.unknown_keys(cx, &APP_KEYS);

    let client_id = required(cx, &root, "client_id").map(|(s, span)| {
        if !is_sso_application_arn(s) {
            cx.at(
                &span,
                "`client_id` must be an application ARN like \
                 arn:aws:sso::123456789012:application/ssoins-ID/apl-ID",
            );
        }
        s.to_string()
    });
    let region = required(cx, &root, "region").map(|(s, span)| {
        if !is_region(s) {
            cx.at(&span, "`region` must be an AWS region like \"us-east-1\"");
        }
        s.to_string()
    });

    let grant_kind =
        required(cx, &root, "grant").and_then(|(s, span)| match GRANTS.iter().find(|g| **g == s) {
            Some(g) => Some((*g, span)),
            None => {
                cx.at(
                    &span,
                    "`grant` must be one of \"authorization-code\", \"refresh-token\", \
                     \"jwt-bearer\", \"token-exchange\"",
                );
                None
            }
        });

    let scopes = root.strings(cx, "scopes").and_then(|scopes| {
        if scopes.is_empty() {
            if let Some((_, v)) = root.get("scopes") {
                cx.at(
                    &v.span(),
                    "`scopes` must not be empty (omit it to request all the app's scopes)",
                );
            }
            None
        } else {
            Some(scopes)
        }
    });
    let endpoint_url = url(cx, &root, "endpoint_url");

    let mut subject = None;
    let grant = grant_kind.and_then(|(kind, grant_span)| {
        for (key, owner) in GRANT_KEYS {
            if owner != kind {
                if let Some((k, _)) = root.get(key) {
                    cx.at(
                        &k.span(),
                        format!("`{key}` does not belong to grant \"{kind}\""),
                    );
                }
            }
        }
        let requires = |cx: &mut FileCx<'_>, what: &str| {
            cx.at(&grant_span, format!("grant \"{kind}\" requires {what}"));
        };
        match kind {
            "authorization-code" => {
                if !root.has("redirect_uri") {
                    requires(cx, "`redirect_uri`");
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
            "refresh-token" => {
                if !root.has("refresh_token_file") {
                    requires(cx, "`refresh_token_file`");
                    return None;
                }
                let (path, _) = root.path(cx, "refresh_token_file", app_dir)?;
                Some(Grant::RefreshToken {
                    refresh_token_file: path,
                })
            }
            "jwt-bearer" => {
                match (root.get("assertion_file"), root.get("assertion_command")) {
                    (None, None) => {
                        requires(cx, "one of `assertion_file` or `assertion_command`");
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
                    AssertionSource::Command(command(cx, &root, "assertion_command")?)
                };
                Some(Grant::JwtBearer { assertion })
            }
            _ => {
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
                    requires(cx, "`subject_app`");
                    return None;
                }
                let (s, span) = root.non_empty(cx, "subject_app")?;
                let (line, col) = cx.pos(&span);
                subject = Some(SubjectRef {
                    subject: s.to_string(),
                    file: file.to_path_buf(),
                    line,
                    col,
                });
                Some(Grant::TokenExchange {
                    subject_app: s.to_string(),
                    requested_token_type,
                })
            }
        }
    });

    let aws = match root.table(cx, "aws") {
        Some(sec) => check_aws(cx, &sec, app_dir),
        None => AwsConfig::default(),
    };
    let role = root
        .table(cx, "role")
        .and_then(|sec| check_role(cx, &sec, name));
    let access = root.table(cx, "access").map(|sec| check_access(cx, &sec));

    let app = match (client_id, region, grant) {
        (Some(client_id), Some(region), Some(grant)) => Some(AppConfig {
            name: name.to_string(),
            file: file.to_path_buf(),
            client_id,
            region,
            scopes,
            endpoint_url,
            grant,
            aws,
            role,
            access,
        }),
        _ => None,
    };
    (app, subject)
}

/// A required string key; missing is reported at the table.
fn required<'t>(
    cx: &mut FileCx<'_>,
    sec: &Section<'t, '_>,
    key: &str,
) -> Option<(&'t str, Range<usize>)> {
    if !sec.has(key) {
        sec.missing(cx, key);
        return None;
    }
    sec.string(cx, key)
}

/// An optional endpoint URL: http(s) with a host.
fn url(cx: &mut FileCx<'_>, sec: &Section<'_, '_>, key: &str) -> Option<String> {
    let (s, span) = sec.string(cx, key)?;
    if !is_http_url(s) {
        cx.at(
            &span,
            format!("`{key}` must be an http:// or https:// URL with a host"),
        );
        return None;
    }
    Some(s.to_string())
}

/// A command: a non-empty array of strings whose first element (the program) is non-empty.
fn command(cx: &mut FileCx<'_>, sec: &Section<'_, '_>, key: &str) -> Option<Vec<String>> {
    let (_, value) = sec.get(key)?;
    let argv: Option<Vec<String>> = value.get_ref().as_array().and_then(|array| {
        array
            .iter()
            .map(|item| item.get_ref().as_str().map(str::to_string))
            .collect()
    });
    match argv {
        Some(argv) if argv.first().is_some_and(|program| !program.is_empty()) => Some(argv),
        _ => {
            cx.at(
                &value.span(),
                format!(
                    "`{key}` must be a non-empty array of strings (program first, then its arguments)"
                ),
            );
            None
        }
    }
}

fn check_role(cx: &mut FileCx<'_>, sec: &Section<'_, '_>, app_name: &str) -> Option<RoleConfig> {
    sec.unknown_keys(cx, &["arn", "session_name", "duration", "endpoint_url"]);
    let arn = required(cx, sec, "arn").map(|(s, span)| {
        if !is_role_arn(s) {
            cx.at(
                &span,
                "`arn` must be an IAM role ARN like arn:aws:iam::123456789012:role/NAME",
            );
        }
        s.to_string()
    });
    let session_name = match sec.string(cx, "session_name") {
        Some((s, span)) => {
            if !is_session_name(s) {
                cx.at(
                    &span,
                    "`session_name` must be 2 to 64 characters of A-Z a-z 0-9 _ + = , . @ -",
                );
            }
            s.to_string()
        }
        None => {
            let mut default = format!("iamtokend-{app_name}");
            default.truncate(64);
            default
        }
    };
    let duration = match sec.duration(cx, "duration") {
        Some((d, span)) => {
            if !(ROLE_DURATION_MIN..=ROLE_DURATION_MAX).contains(&d) {
                cx.at(&span, "`duration` must be between 15m and 12h");
            }
            d
        }
        None => ROLE_DURATION_DEFAULT,
    };
    let endpoint_url = url(cx, sec, "endpoint_url");
    Some(RoleConfig {
        arn: arn?,
        session_name,
        duration,
        endpoint_url,
    })
}

fn check_aws(cx: &mut FileCx<'_>, sec: &Section<'_, '_>, app_dir: &Path) -> AwsConfig {
    sec.unknown_keys(
        cx,
        &["profile", "connect_timeout", "read_timeout", "ca_bundle"],
    );
    let mut aws = AwsConfig {
        profile: sec.non_empty(cx, "profile").map(|(s, _)| s.to_string()),
        ..AwsConfig::default()
    };
    if let Some((d, span)) = sec.duration(cx, "connect_timeout") {
        if (CONNECT_TIMEOUT_MIN..=CONNECT_TIMEOUT_MAX).contains(&d) {
            aws.connect_timeout = d;
        } else {
            cx.at(&span, "`connect_timeout` must be between 100ms and 5m");
        }
    }
    if let Some((d, span)) = sec.duration(cx, "read_timeout") {
        if (READ_TIMEOUT_MIN..=READ_TIMEOUT_MAX).contains(&d) {
            aws.read_timeout = d;
        } else {
            cx.at(&span, "`read_timeout` must be between 1s and 10m");
        }
    }
    if let Some((path, span)) = sec.path(cx, "ca_bundle", app_dir) {
        match read_ca_bundle(&path) {
            Ok(bundle) => aws.ca_bundle = Some(bundle),
            Err(message) => cx.at(&span, format!("`ca_bundle`: {message}")),
        }
    }
    aws
}

/// Reads a PEM bundle and checks every certificate in it the way the TLS stack will take
/// it as a trust root (the SDK's client panics on one it cannot parse, so none may reach it).
fn read_ca_bundle(path: &Path) -> Result<CaBundle, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate bundle: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            format!(
                "certificate {} of {} cannot be used as a trust root: {e}",
                i + 1,
                path.display()
            )
        })?;
    }
    Ok(CaBundle {
        path: path.to_path_buf(),
        certificates: roots.len(),
        pem,
    })
}

fn check_access(cx: &mut FileCx<'_>, sec: &Section<'_, '_>) -> AccessConfig {
    sec.unknown_keys(cx, &["uids", "users", "groups"]);
    let mut access = AccessConfig::default();
    if let Some(array) = sec.array(cx, "uids", "non-negative integers") {
        for item in array {
            match integer_value(item.get_ref()).map(u32::try_from) {
                Ok(Ok(uid)) => access.uids.push(uid),
                _ => cx.at(
                    &item.span(),
                    "`uids` must contain only non-negative integers (uids)",
                ),
            }
        }
    }
    access.users = principals(cx, sec, "users", "user", lookup_user);
    access.groups = principals(cx, sec, "groups", "group", lookup_group);
    access
}

/// `users` / `groups`: each name resolved now, so a typo is a config error at its element
/// rather than a silent "nobody matches" at request time.
fn principals(
    cx: &mut FileCx<'_>,
    sec: &Section<'_, '_>,
    key: &str,
    what: &str,
    lookup: fn(&str) -> Result<Option<u32>, String>,
) -> Vec<Principal> {
    let Some(array) = sec.array(cx, key, "strings") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in array {
        let Some(name) = item.get_ref().as_str().filter(|s| !s.is_empty()) else {
            cx.at(
                &item.span(),
                format!("`{key}` must contain only non-empty strings"),
            );
            continue;
        };
        match lookup(name) {
            Ok(Some(id)) => out.push(Principal {
                name: name.to_string(),
                id,
            }),
            Ok(None) => cx.at(
                &item.span(),
                format!("{what} `{}` does not exist", name.escape_debug()),
            ),
            Err(e) => cx.at(
                &item.span(),
                format!("cannot look up {what} `{}`: {e}", name.escape_debug()),
            ),
        }
    }
    out
}

/// getpwnam_r through nix: the system's user database (NSS), as `id NAME` sees it.
fn lookup_user(name: &str) -> Result<Option<u32>, String> {
    nix::unistd::User::from_name(name)
        .map(|u| u.map(|u| u.uid.as_raw()))
        .map_err(|e| e.desc().to_string())
}

/// getgrnam_r through nix.
fn lookup_group(name: &str) -> Result<Option<u32>, String> {
    nix::unistd::Group::from_name(name)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(|e| e.desc().to_string())
}

// ---------------------------------------------------------------------------------------
// Value syntax

/// "90s", "5m", "1h", "1h30m", "250ms", "2d" -> Duration.
///
/// One or more `<digits><unit>` parts, unit one of `ms`, `s`, `m`, `h`, `d`; no spaces,
/// no sign, no fractions. A bare number is refused: "300" could mean seconds or
/// milliseconds, and guessing wrong is a silent 1000x error.
///
/// # Errors
/// A message saying what is wrong and how to write it; it quotes only the offending
/// number or unit, never the whole value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "write e.g. \"90s\", \"5m\" or \"1h30m\"";
    if s.is_empty() {
        return Err(format!("empty duration; {HINT}"));
    }
    if s.starts_with('-') {
        return Err("a duration cannot be negative".to_string());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "a bare number is not a duration, add a unit; {HINT}"
        ));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(format!("expected a number; {HINT}"));
        }
        let (digits, after) = rest.split_at(digits_len);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let millis_per_unit: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if after.starts_with('.') => {
                return Err(format!("fractions are not supported; {HINT}"))
            }
            "" => return Err(format!("missing unit after `{digits}`; {HINT}")),
            _ => {
                return Err(format!(
                    "unknown unit `{}`; use ms, s, m, h or d",
                    unit.escape_debug()
                ))
            }
        };
        let part = digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(millis_per_unit))
            .ok_or_else(|| "duration is too large".to_string())?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(|| "duration is too large".to_string())?;
        rest = after;
    }
    Ok(total)
}

/// `aws`, `aws-cn`, `aws-us-gov`, `aws-iso-b`, ...: "aws" then `-[a-z0-9]+` parts.
fn is_partition(s: &str) -> bool {
    let mut parts = s.split('-');
    parts.next() == Some("aws")
        && parts.all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_alnum(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Splits `arn:PARTITION:SERVICE::ACCOUNT:RESOURCE` (empty region), checking all but
/// the resource; returns the resource.
fn arn_resource<'s>(s: &'s str, service: &str) -> Option<&'s str> {
    let mut parts = s.splitn(6, ':');
    let ok = parts.next() == Some("arn")
        && parts.next().is_some_and(is_partition)
        && parts.next() == Some(service)
        && parts.next() == Some("")
        && parts.next().is_some_and(is_account_id);
    if ok {
        parts.next()
    } else {
        None
    }
}

/// `arn:<partition>:sso::<12 digits>:application/ssoins-<alnum>/apl-<alnum>`.
pub(crate) fn is_sso_application_arn(s: &str) -> bool {
    let Some(resource) = arn_resource(s, "sso") else {
        return false;
    };
    let parts: Vec<&str> = resource.split('/').collect();
    matches!(
        parts.as_slice(),
        ["application", instance, app]
            if instance.strip_prefix("ssoins-").is_some_and(is_alnum)
                && app.strip_prefix("apl-").is_some_and(is_alnum)
    )
}

/// `arn:<partition>:iam::<12 digits>:role/<path/>name`, name 1-64 of `[\w+=,.@-]`.
pub(crate) fn is_role_arn(s: &str) -> bool {
    let Some(path) = arn_resource(s, "iam").and_then(|r| r.strip_prefix("role/")) else {
        return false;
    };
    let name = path.rsplit('/').next().unwrap_or("");
    name.len() <= 64
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg.chars().all(is_iam_name_char))
}

fn is_iam_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '=' | ',' | '.' | '@' | '-')
}

/// STS `RoleSessionName`: 2-64 of `[\w+=,.@-]`.
fn is_session_name(s: &str) -> bool {
    (2..=64).contains(&s.len()) && s.chars().all(is_iam_name_char)
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, `us-isob-east-1`: two letters, one or
/// more lowercase words, a number.
pub(crate) fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// A port: 1-65535, digits only.
fn is_port(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && matches!(s.parse::<u16>(), Ok(p) if p > 0)
}

/// `http://` or `https://`, a host, an optional port, then an optional path/query.
pub(crate) fn is_http_url(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    if s.chars().any(char::is_whitespace) {
        return false;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        match after {
            "" => (addr, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (addr, Some(port)),
                None => return false,
            },
        }
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    !host.is_empty() && port.is_none_or(is_port)
}

/// `http://127.0.0.1:PORT[/...]`, `http://localhost:PORT[/...]`, `http://[::1]:PORT[/...]`:
/// the login flow listens there, so it must be loopback, plain http, with an explicit port.
pub(crate) fn is_loopback_redirect(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("http://") else {
        return false;
    };
    if s.chars().any(char::is_whitespace) || s.contains('#') {
        return false;
    }
    let Some(after_host) = ["127.0.0.1:", "localhost:", "[::1]:"]
        .iter()
        .find_map(|host| rest.strip_prefix(host))
    else {
        return false;
    };
    let port_end = after_host.find(['/', '?']).unwrap_or(after_host.len());
    is_port(&after_host[..port_end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, Diagnostics};

    fn manifest_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// Sorted subdirectories of `dir`.
    fn cases(dir: &Path) -> Vec<PathBuf> {
        let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        cases.sort();
        cases
    }

    /// Diagnostics as `check-config` prints them, paths relative to `case`.
    fn relative(diags: &Diagnostics, case: &Path) -> String {
        diags
            .to_string()
            .replace(&format!("{}/", case.display()), "")
    }

    /// Every `invalid/<case>` yields exactly its `expected.txt` (whole-string compare, so
    /// a wrong line or column fails), and every `valid/<case>` loads.
    #[test]
    fn fixture_trees() {
        let root = manifest_dir().join("tests/fixtures/config");
        let mut failures = Vec::new();

        let invalid = cases(&root.join("invalid"));
        assert!(invalid.len() >= 12, "only {} invalid cases", invalid.len());
        for case in &invalid {
            let expected = std::fs::read_to_string(case.join("expected.txt"))
                .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
            match load(&case.join("iamtokend.toml")) {
                Ok(_) => failures.push(format!("{}: loaded, expected errors", case.display())),
                Err(diags) => {
                    let got = relative(&diags, case);
                    if got.trim_end() != expected.trim_end() {
                        failures.push(format!(
                            "{}:\n--- expected\n{}\n--- got\n{}\n",
                            case.display(),
                            expected.trim_end(),
                            got
                        ));
                    }
                }
            }
        }
        for case in cases(&root.join("valid")) {
            if let Err(diags) = load(&case.join("iamtokend.toml")) {
                failures.push(format!(
                    "{}:\n{}\n",
                    case.display(),
                    relative(&diags, &case)
                ));
            }
        }
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    #[test]
    fn example_config_is_valid() {
        let dir = manifest_dir().join("config");
        let config = load(&dir.join("iamtokend.toml")).unwrap_or_else(|d| panic!("{d}"));
        let names: Vec<&str> = config.apps.keys().map(String::as_str).collect();
        assert_eq!(names, ["analytics", "portal", "reports", "warehouse"]);
        let kinds: Vec<&str> = config.apps.values().map(|a| a.grant.kind()).collect();
        assert_eq!(
            kinds,
            [
                "jwt-bearer",
                "authorization-code",
                "refresh-token",
                "token-exchange"
            ]
        );
        // The example shows the defaults, so it must equal an empty main file's result.
        assert_eq!(config.refresh, default_refresh());
        assert_eq!(config.server.socket_mode, 0o660);
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.log.level, "info");
        let analytics = &config.apps["analytics"];
        assert!(analytics.role.is_some() && analytics.access.is_some());
        match &config.apps["warehouse"].grant {
            Grant::TokenExchange { subject_app, .. } => assert_eq!(subject_app, "portal"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn minimal_gets_defaults() {
        let case = manifest_dir().join("tests/fixtures/config/valid/minimal");
        let config = load(&case.join("iamtokend.toml")).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(config.apps_dir, case.join("apps.d"));
        assert_eq!(
            config.server,
            ServerConfig {
                socket: None,
                socket_mode: 0o660
            }
        );
        assert_eq!(config.state, StateConfig { dir: None });
        assert_eq!(config.refresh, default_refresh());
        assert_eq!(
            config.log,
            LogConfig {
                format: LogFormat::Text,
                level: "info".to_string()
            }
        );
        // Dotfiles, other extensions and subdirectories are ignored.
        assert_eq!(config.apps.keys().collect::<Vec<_>>(), ["app"]);
        let app = &config.apps["app"];
        assert_eq!(app.file, case.join("apps.d/app.toml"));
        assert_eq!(app.scopes, None);
        assert_eq!(app.endpoint_url, None);
        assert_eq!(app.aws, AwsConfig::default());
        assert_eq!(app.role, None);
        assert_eq!(app.access, None);
        assert_eq!(
            app.grant,
            Grant::JwtBearer {
                assertion: AssertionSource::File(case.join("apps.d/secrets/app.jwt"))
            }
        );
    }

    #[test]
    fn full_sets_every_key() {
        let case = manifest_dir().join("tests/fixtures/config/valid/full");
        let config = load(&case.join("iamtokend.toml")).unwrap_or_else(|d| panic!("{d}"));
        let apps = case.join("apps");
        assert_eq!(config.apps_dir, apps);
        assert_eq!(config.server.socket, Some(case.join("run/iamtokend.sock")));
        assert_eq!(config.server.socket_mode, 0o600);
        assert_eq!(config.state.dir, Some(PathBuf::from("/var/lib/custom")));
        assert_eq!(
            config.refresh,
            RefreshConfig {
                at: 0.75,
                jitter: 0.0,
                min_lead: Duration::from_secs(90),
                max_backoff: Duration::from_secs(5400),
                max_concurrent: 2,
            }
        );
        assert_eq!(config.log.format, LogFormat::Json);
        assert_eq!(config.log.level, "debug,hyper=info");

        let a = &config.apps["a-1"];
        assert_eq!(
            a.scopes,
            Some(vec!["openid".to_string(), "aws".to_string()])
        );
        assert_eq!(a.endpoint_url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(
            a.grant,
            Grant::JwtBearer {
                assertion: AssertionSource::Command(vec![
                    "/bin/get-jwt".to_string(),
                    "--aud".to_string(),
                    "idc".to_string()
                ])
            }
        );
        assert_eq!(a.aws.profile.as_deref(), Some("broker"));
        assert_eq!(a.aws.connect_timeout, Duration::from_secs(2));
        assert_eq!(a.aws.read_timeout, Duration::from_secs(90));
        let bundle = a.aws.ca_bundle.as_ref().unwrap();
        assert_eq!(bundle.path, apps.join("intercept-ca.pem"));
        assert_eq!(bundle.certificates, 1);
        assert!(bundle.pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
        assert_eq!(config.apps["b"].aws, AwsConfig::default());
        let role = a.role.as_ref().unwrap();
        assert_eq!(role.session_name, "iamtokend-a-1");
        assert_eq!(role.duration, Duration::from_secs(12 * 3600));
        assert_eq!(
            a.access,
            Some(AccessConfig {
                uids: vec![0, 1000],
                users: vec![Principal {
                    name: "root".to_string(),
                    id: 0
                }],
                groups: vec![Principal {
                    name: "root".to_string(),
                    id: 0
                }],
            })
        );
        assert_eq!(
            config.apps["b"].grant,
            Grant::TokenExchange {
                subject_app: "c".to_string(),
                requested_token_type: RequestedTokenType::RefreshToken
            }
        );
        assert_eq!(
            config.apps["c"].grant,
            Grant::TokenExchange {
                subject_app: "d.e_f".to_string(),
                requested_token_type: RequestedTokenType::AccessToken
            }
        );
        let d = &config.apps["d.e_f"];
        assert_eq!(d.role.as_ref().unwrap().duration, Duration::from_secs(3600));
        assert_eq!(
            config.apps["r"].grant,
            Grant::RefreshToken {
                refresh_token_file: apps.join("../tokens/r.refresh")
            }
        );
    }

    #[test]
    fn default_session_name_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("apps.d")).unwrap();
        std::fs::write(dir.path().join("iamtokend.toml"), "").unwrap();
        let name = "n".repeat(70);
        std::fs::write(
            dir.path().join(format!("apps.d/{name}.toml")),
            "client_id = \"arn:aws:sso::123456789012:application/ssoins-1/apl-2\"\n\
             region = \"us-east-1\"\ngrant = \"jwt-bearer\"\nassertion_file = \"/a\"\n\
             [role]\narn = \"arn:aws:iam::123456789012:role/R\"\n",
        )
        .unwrap();
        let config = load(&dir.path().join("iamtokend.toml")).unwrap_or_else(|d| panic!("{d}"));
        let session = &config.apps[&name].role.as_ref().unwrap().session_name;
        assert_eq!(session.len(), 64);
        assert!(session.starts_with("iamtokend-nnn"));
    }

    /// Messages point at keys; the values written there (which may be secrets) never
    /// appear in the output.
    #[test]
    fn secrets_are_not_echoed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("apps.d")).unwrap();
        std::fs::write(dir.path().join("iamtokend.toml"), "").unwrap();
        let canary = "CANARY-s3cr3t";
        std::fs::write(
            dir.path().join("apps.d/a.toml"),
            format!(
                "client_id = \"{canary}\"\nregion = \"{canary}\"\ngrant = \"{canary}\"\n\
                 endpoint_url = \"{canary}\"\nassertion_command = [1, \"{canary}\"]\n\
                 [role]\narn = \"{canary}\"\nsession_name = \"{canary} \"\n\
                 endpoint_url = \"https://{canary}@\"\n"
            ),
        )
        .unwrap();
        let diags = load(&dir.path().join("iamtokend.toml")).unwrap_err();
        assert!(diags.0.len() >= 6, "{diags}");
        assert!(!diags.to_string().contains("CANARY"), "{diags}");
    }

    #[test]
    fn never_panics_on_odd_input() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("apps.d")).unwrap();
        std::fs::write(dir.path().join("iamtokend.toml"), "").unwrap();
        let inputs: &[&[u8]] = &[
            b"",
            b"\xff\xfe",
            b"[[role]]\n[[role]]\n",
            b"role = []\naccess = { uids = [1e3, 99999999999] }\n",
            b"grant = \"jwt-bearer\"\nassertion_command = [[]]\n",
            b"grant = \"token-exchange\"\nsubject_app = 3\nrequested_token_type = 4\n",
            b"x.y.z = 1\n\"\" = 2\n'\xc3\xa9' = 3\n",
            b"scopes = [\"a\", [\"b\"]]\nendpoint_url = \"http://[::1\"\n",
            b"endpoint_url = \"http://:80\"\n[aws]\nprofile = 1\nzone = 2\n",
        ];
        for input in inputs {
            std::fs::write(dir.path().join("apps.d/a.toml"), input).unwrap();
            let result = load(&dir.path().join("iamtokend.toml"));
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn durations() {
        let ok = [
            ("90s", 90_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("2d", 172_800_000),
            ("0s", 0),
            ("1m30s500ms", 90_500),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        let hint = "write e.g. \"90s\", \"5m\" or \"1h30m\"";
        let bad = [
            ("", format!("empty duration; {hint}")),
            (
                "90",
                format!("a bare number is not a duration, add a unit; {hint}"),
            ),
            ("-5m", "a duration cannot be negative".to_string()),
            ("5x", "unknown unit `x`; use ms, s, m, h or d".to_string()),
            ("5 m", format!("missing unit after `5`; {hint}")),
            ("1h30", format!("missing unit after `30`; {hint}")),
            ("1.5h", format!("fractions are not supported; {hint}")),
            ("h", format!("expected a number; {hint}")),
            (" 5m", format!("expected a number; {hint}")),
            ("99999999999999999999s", "duration is too large".to_string()),
        ];
        for (s, message) in bad {
            assert_eq!(parse_duration(s), Err(message), "{s:?}");
        }
    }

    #[test]
    fn octal_modes() {
        assert_eq!(parse_octal_mode("0660"), Ok(0o660));
        assert_eq!(parse_octal_mode("660"), Ok(0o660));
        assert_eq!(parse_octal_mode("0o600"), Ok(0o600));
        assert_eq!(parse_octal_mode("0777"), Ok(0o777));
        assert_eq!(parse_octal_mode("0000"), Ok(0));
        assert_eq!(parse_octal_mode("0000777"), Ok(0o777));
        for bad in ["", "0o", "0x1ff", "0668", "rw-rw----", "-660", " 660"] {
            assert!(
                parse_octal_mode(bad).unwrap_err().contains("octal"),
                "{bad}"
            );
        }
        for big in ["1000", "0o1777", "77777777777777777777"] {
            assert_eq!(
                parse_octal_mode(big),
                Err("must be at most \"0777\"".to_string()),
                "{big}"
            );
        }
    }

    #[test]
    fn line_col_mapping() {
        let text = "ab\nçd€f\n\nx";
        let index = LineIndex::new(text);
        let at = |offset| index.line_col(text, offset);
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(1), (1, 2));
        assert_eq!(at(2), (1, 3)); // the newline itself
        assert_eq!(at(3), (2, 1)); // ç
        assert_eq!(at(5), (2, 2)); // d: ç is two bytes, one column
        assert_eq!(at(6), (2, 3)); // €
        assert_eq!(at(7), (2, 3)); // inside €: counts as €
        assert_eq!(at(9), (2, 4)); // f: € is three bytes
        assert_eq!(at(11), (3, 1)); // the empty line
        assert_eq!(at(12), (4, 1)); // x
        assert_eq!(at(13), (4, 2)); // end of text
        assert_eq!(at(1000), (4, 2)); // clamped
        let empty = LineIndex::new("");
        assert_eq!(empty.line_col("", 5), (1, 1));
    }

    #[test]
    fn diagnostic_display() {
        let d = |line, col| Diagnostic {
            file: PathBuf::from("apps.d/a.toml"),
            line,
            col,
            message: "boom".to_string(),
        };
        assert_eq!(d(3, 7).to_string(), "apps.d/a.toml:3:7: boom");
        assert_eq!(d(0, 0).to_string(), "apps.d/a.toml: boom");
        assert_eq!(
            Diagnostics(vec![d(1, 1), d(0, 0)]).to_string(),
            "apps.d/a.toml:1:1: boom\napps.d/a.toml: boom"
        );
    }

    #[test]
    fn value_syntax() {
        assert!(is_sso_application_arn(
            "arn:aws-cn:sso::123456789012:application/ssoins-abc123/apl-DEF456"
        ));
        for bad in [
            "arn:aws:sso::123456789012:application/ssoins-abc/apl-",
            "arn:aws:sso::123456789012:application/ssoins-abc/apl-x/y",
            "arn:aws:sso:us-east-1:123456789012:application/ssoins-abc/apl-def",
            "arn:aws:iam::123456789012:application/ssoins-abc/apl-def",
            "arn:aws-:sso::123456789012:application/ssoins-abc/apl-def",
            "arn:aws:sso::123456789012:application/ssoins-a_b/apl-def",
        ] {
            assert!(!is_sso_application_arn(bad), "{bad}");
        }
        assert!(is_role_arn(
            "arn:aws:iam::123456789012:role/a/b/Name+=,.@-_"
        ));
        for bad in [
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::123456789012:role//x",
            "arn:aws:iam::123456789012:role/a b",
            "arn:aws:iam::1234567890123:role/x",
        ] {
            assert!(!is_role_arn(bad), "{bad}");
        }
        assert!(!is_role_arn(&format!(
            "arn:aws:iam::123456789012:role/{}",
            "r".repeat(65)
        )));
        for good in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "us-isob-east-1",
        ] {
            assert!(is_region(good), "{good}");
        }
        for bad in [
            "us-east",
            "useast-1",
            "us-East-1",
            "u-east-1",
            "us--1",
            "us-east-1a",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
        for good in [
            "https://oidc.us-east-1.amazonaws.com",
            "http://127.0.0.1:8080/x?y",
            "http://[::1]:80",
            "https://user@host",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in [
            "ftp://x",
            "https://",
            "http://:80",
            "http://h:0",
            "http://h:x",
            "http://[::1",
            "https://a b",
        ] {
            assert!(!is_http_url(bad), "{bad}");
        }
        for good in [
            "http://127.0.0.1:8400/callback",
            "http://localhost:1",
            "http://[::1]:65535/a?b=c",
        ] {
            assert!(is_loopback_redirect(good), "{good}");
        }
        for bad in [
            "http://127.0.0.1/cb",
            "http://127.0.0.1:/cb",
            "http://localhost:0/cb",
            "http://localhost.evil.com:80/cb",
            "http://127.0.0.1:80#frag",
            "http://127.0.0.1:80x/cb",
        ] {
            assert!(!is_loopback_redirect(bad), "{bad}");
        }
        assert!(is_app_name("a") && is_app_name("0a.b_c-d"));
        assert!(!is_app_name("") && !is_app_name(".a") && !is_app_name("A") && !is_app_name("a b"));
    }
}

/// Property tests: the loader never panics on any text, and every well-formed config (random
/// values inside the documented bounds) loads with no diagnostic and the values written.
#[cfg(test)]
mod proptests {
    use super::*;
    use crate::config::load;
    use proptest::prelude::*;

    /// A config tree in a temp dir: `main` as the main file, `app` as `apps.d/a.toml`.
    fn load_texts(main: &[u8], app: &[u8]) -> Result<Config, crate::config::Diagnostics> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("apps.d")).unwrap();
        std::fs::write(dir.path().join("iamtokend.toml"), main).unwrap();
        std::fs::write(dir.path().join("apps.d/a.toml"), app).unwrap();
        load(&dir.path().join("iamtokend.toml"))
    }

    /// TOML-ish text: the characters TOML is made of, so the parser gets past the first byte.
    fn tomlish() -> impl Strategy<Value = String> {
        let line = prop_oneof![
            "[a-z_]{1,12} = \"[ -~]{0,20}\"",
            "[a-z_]{1,12} = [0-9-]{1,12}",
            "[a-z_]{1,12} = \\[[\"a-z0-9, ]{0,20}\\]",
            "\\[{1,2}[a-z_.]{0,12}\\]{1,2}",
            "[a-z_]{1,12} = [0-9]{1,3}(ms|s|m|h|d|x)?",
            "[ -~]{0,30}",
        ];
        prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
    }

    /// Keys the app files know, with values of every type.
    fn app_key_soup() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "client_id",
            "region",
            "grant",
            "scopes",
            "endpoint_url",
            "assertion_file",
            "assertion_command",
            "refresh_token_file",
            "subject_app",
            "requested_token_type",
            "redirect_uri",
            "aws.profile",
            "aws.connect_timeout",
            "aws.read_timeout",
            "aws.ca_bundle",
            "role.arn",
            "role.duration",
            "role.session_name",
            "access.uids",
            "access.users",
            "access.groups",
        ]);
        let value = prop_oneof![
            Just("\"jwt-bearer\"".to_string()),
            Just("\"token-exchange\"".to_string()),
            Just("\"a\"".to_string()),
            Just("\"5m\"".to_string()),
            Just("[\"root\", \"\"]".to_string()),
            Just("[-1, 0, 4294967296]".to_string()),
            Just("{ x = 1 }".to_string()),
            Just("1e400".to_string()),
            Just("nan".to_string()),
            "\"[ -~]{0,24}\"",
            "-?[0-9]{1,20}",
        ];
        prop::collection::vec((key, value), 0..10).prop_map(|kvs| {
            kvs.into_iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    fn duration_text(ms: u64) -> String {
        if ms.is_multiple_of(3_600_000) {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn any_bytes_never_panic(main in prop::collection::vec(any::<u8>(), 0..200),
                                 app in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = load_texts(&main, &app);
        }

        #[test]
        fn tomlish_text_never_panics(main in tomlish(), app in tomlish()) {
            let _ = load_texts(main.as_bytes(), app.as_bytes());
        }

        #[test]
        fn app_keys_with_odd_values_never_panic(app in app_key_soup()) {
            // Dotted keys make the tables; every diagnostic has a position in the file.
            if let Err(diags) = load_texts(b"", app.as_bytes()) {
                for d in &diags.0 {
                    prop_assert!(!d.message.is_empty());
                    prop_assert!(d.line <= app.lines().count() + 1, "{d}");
                }
            }
        }

        /// Random values inside every documented bound: loads, and reads back what was written.
        #[test]
        fn valid_configs_load_with_their_values(
            at in 0.2f64..0.8,
            jitter in 0.0f64..0.15,
            min_lead_s in 0u64..7200,
            max_backoff_s in 1u64..7200,
            max_concurrent in 1usize..64,
            mode in 0u32..0o777,
            json_logs in any::<bool>(),
            scopes in prop::option::of(prop::collection::vec("[a-z:_]{1,20}", 1..5)),
            connect_ms in 100u64..300_000,
            read_s in 1u64..600,
            role_minutes in 15u64..=720,
            uids in prop::collection::vec(any::<u32>(), 0..4),
            grant in 0usize..3,
        ) {
            let main = format!(
                "[server]\nsocket_mode = \"{mode:o}\"\n[refresh]\nat = {at}\njitter = {jitter}\n\
                 min_lead = \"{}\"\nmax_backoff = \"{}\"\nmax_concurrent = {max_concurrent}\n\
                 [log]\nformat = \"{}\"\n",
                duration_text(min_lead_s * 1000),
                duration_text(max_backoff_s * 1000),
                if json_logs { "json" } else { "text" },
            );
            let scopes_line = scopes
                .as_ref()
                .map(|s| format!("scopes = {s:?}\n"))
                .unwrap_or_default();
            let grant_lines = match grant {
                0 => "grant = \"jwt-bearer\"\nassertion_file = \"a.jwt\"\n",
                1 => "grant = \"refresh-token\"\nrefresh_token_file = \"a.refresh\"\n",
                _ => "grant = \"authorization-code\"\nredirect_uri = \"http://127.0.0.1:8400/cb\"\n",
            };
            let app = format!(
                "client_id = \"arn:aws:sso::123456789012:application/ssoins-1/apl-2\"\n\
                 region = \"eu-west-3\"\n{scopes_line}{grant_lines}\
                 [aws]\nconnect_timeout = \"{}\"\nread_timeout = \"{}\"\n\
                 [role]\narn = \"arn:aws:iam::123456789012:role/R\"\nduration = \"{}\"\n\
                 [access]\nuids = {uids:?}\nusers = [\"root\"]\ngroups = [\"root\"]\n",
                duration_text(connect_ms),
                duration_text(read_s * 1000),
                duration_text(role_minutes * 60_000),
            );
            let config = match load_texts(main.as_bytes(), app.as_bytes()) {
                Ok(config) => config,
                Err(diags) => return Err(TestCaseError::fail(format!("{diags}\n--\n{main}\n--\n{app}"))),
            };
            prop_assert_eq!(config.server.socket_mode, mode);
            prop_assert_eq!(config.refresh.at, at);
            prop_assert_eq!(config.refresh.jitter, jitter);
            prop_assert_eq!(config.refresh.min_lead, Duration::from_secs(min_lead_s));
            prop_assert_eq!(config.refresh.max_backoff, Duration::from_secs(max_backoff_s));
            prop_assert_eq!(config.refresh.max_concurrent, max_concurrent);
            let a = &config.apps["a"];
            prop_assert_eq!(&a.scopes, &scopes);
            prop_assert_eq!(a.aws.connect_timeout, Duration::from_millis(connect_ms));
            prop_assert_eq!(a.aws.read_timeout, Duration::from_secs(read_s));
            prop_assert_eq!(a.role.as_ref().unwrap().duration, Duration::from_secs(role_minutes * 60));
            let access = a.access.as_ref().unwrap();
            prop_assert_eq!(&access.uids, &uids);
            prop_assert_eq!(access.users[0].id, 0);
            prop_assert_eq!(access.groups[0].id, 0);
        }
    }
}
