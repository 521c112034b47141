//! The app files: listing `apps.d/*.toml`, checking each (its common keys here, its grant
//! in `grant.rs`, then `[aws]`, `[role]`, `[access]` and `[[sink]]`), and the cross-app
//! checks once all are read: `subject_app` links, and sink paths (no two on one path, none
//! in the state dir or on the socket).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cursor::{integer_value, parse_toml, read_text, whole_file, FileCx, Section};
use super::grant::{check_grant, grant_keys, Declared};
use super::subjects::SubjectGraph;
use super::syntax::{
    is_app_name, is_http_url, is_region, is_role_arn, is_session_name, is_sso_application_arn,
    parse_octal_mode,
};
use super::system::System;
use super::types::*;
use super::Diagnostic;

/// The top-level keys every app file may have, besides the grant-specific ones.
const COMMON_KEYS: [&str; 9] = [
    "client_id",
    "region",
    "grant",
    "scopes",
    "endpoint_url",
    "aws",
    "role",
    "access",
    "sink",
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

/// An app file found in the apps dir.
pub(crate) struct AppFile {
    path: PathBuf,
    /// The stem when it is a valid app name.
    name: Option<String>,
}

/// Lists `*.toml` files directly in `dir` (not dotfiles, not directories), sorted.
pub(crate) fn list_app_files(
    cx: &mut FileCx<'_>,
    dir: &Path,
    span: Option<Range<usize>>,
) -> Vec<AppFile> {
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

/// A token-exchange app's `subject_app` and where it was written, for the cross-app checks.
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

/// A `[[sink]] path` and where it was written, for the cross-app checks.
pub(crate) struct SinkRef {
    app: String,
    path: PathBuf,
    file: PathBuf,
    line: usize,
    col: usize,
}

impl SinkRef {
    fn diag(&self, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            col: self.col,
            message,
        }
    }
}

/// Checks every app file into `apps` (only those without a problem of their own), then
/// the `subject_app` links across them. Every sink path read goes to `sinks`, for
/// [`check_sink_paths`].
pub(crate) fn load_apps(
    files: &[AppFile],
    sys: &dyn System,
    diags: &mut Vec<Diagnostic>,
    apps: &mut BTreeMap<String, AppConfig>,
    sinks: &mut Vec<SinkRef>,
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
        let root = Section::root(root.get_ref());
        let (app, subject) = check_app(&mut cx, &root, sys, &display_name, &file.path, sinks);
        if let Some(name) = &file.name {
            if let Some(subject) = subject {
                subjects.insert(name.clone(), subject);
            }
            if let Some(app) = app {
                apps.insert(name.clone(), app);
            }
        }
    }

    let graph = SubjectGraph::new(
        subjects
            .iter()
            .map(|(name, r)| (name.as_str(), r.subject.as_str())),
    );
    for (name, problem) in graph.problems(&known) {
        diags.push(subjects[name].diag(problem.message()));
    }
}

/// The token-exchange grant's `subject_app`, at its value.
fn subject_ref(
    cx: &FileCx<'_>,
    root: &Section<'_, '_>,
    grant: Option<&Grant>,
    file: &Path,
) -> Option<SubjectRef> {
    let Some(Grant::TokenExchange { subject_app, .. }) = grant else {
        return None;
    };
    let (_, value) = root.get("subject_app")?;
    let (line, col) = cx.pos(&value.span());
    Some(SubjectRef {
        subject: subject_app.clone(),
        file: file.to_path_buf(),
        line,
        col,
    })
}

/// Checks one app file. Returns the app when every required piece could be built (it is
/// used only if no diagnostic exists at all), and its `subject_app` for the cross-app
/// checks (even when the app itself could not be built).
fn check_app(
    cx: &mut FileCx<'_>,
    root: &Section<'_, '_>,
    sys: &dyn System,
    name: &str,
    file: &Path,
    sink_refs: &mut Vec<SinkRef>,
) -> (Option<AppConfig>, Option<SubjectRef>) {
    let app_dir = file.parent().unwrap_or(Path::new(""));
    let allowed: Vec<&str> = COMMON_KEYS.into_iter().chain(grant_keys()).collect();
    root.unknown_keys(cx, &allowed);

    let client_id = root.required(cx, "client_id").map(|(s, span)| {
        if !is_sso_application_arn(s) {
            cx.at(
                &span,
                "`client_id` must be an application ARN like \
                 arn:aws:sso::123456789012:application/ssoins-ID/apl-ID",
            );
        }
        s.to_string()
    });
    let region = root.required(cx, "region").map(|(s, span)| {
        if !is_region(s) {
            cx.at(&span, "`region` must be an AWS region like \"us-east-1\"");
        }
        s.to_string()
    });
    let declared = Declared::check(cx, root);
    let scopes = check_scopes(cx, root);
    let endpoint_url = url(cx, root, "endpoint_url");
    let grant = declared.and_then(|declared| check_grant(cx, root, &declared, app_dir));
    let subject = subject_ref(cx, root, grant.as_ref(), file);

    let aws = match root.table(cx, "aws") {
        Some(sec) => check_aws(cx, &sec, sys, app_dir),
        None => AwsConfig::default(),
    };
    let role = root
        .table(cx, "role")
        .and_then(|sec| check_role(cx, &sec, name));
    let access = root
        .table(cx, "access")
        .map(|sec| check_access(cx, &sec, sys));
    let sinks = check_sinks(cx, root, sys, role.is_some() || root.has("role"));
    for (sink, span) in &sinks {
        let (line, col) = cx.pos(span);
        sink_refs.push(SinkRef {
            app: name.to_string(),
            path: sink.path.clone(),
            file: file.to_path_buf(),
            line,
            col,
        });
    }

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
            sinks: sinks.into_iter().map(|(sink, _)| sink).collect(),
        }),
        _ => None,
    };
    (app, subject)
}

/// `scopes`: absent means all the app's scopes, so an empty list is refused.
fn check_scopes(cx: &mut FileCx<'_>, root: &Section<'_, '_>) -> Option<Vec<String>> {
    let scopes = root.strings(cx, "scopes")?;
    if scopes.is_empty() {
        if let Some((_, v)) = root.get("scopes") {
            cx.at(
                &v.span(),
                "`scopes` must not be empty (omit it to request all the app's scopes)",
            );
        }
        return None;
    }
    Some(scopes)
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

fn check_role(cx: &mut FileCx<'_>, sec: &Section<'_, '_>, app_name: &str) -> Option<RoleConfig> {
    sec.unknown_keys(cx, &["arn", "session_name", "duration", "endpoint_url"]);
    let arn = sec.required(cx, "arn").map(|(s, span)| {
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

fn check_aws(
    cx: &mut FileCx<'_>,
    sec: &Section<'_, '_>,
    sys: &dyn System,
    app_dir: &Path,
) -> AwsConfig {
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
        match read_ca_bundle(sys, &path) {
            Ok(bundle) => aws.ca_bundle = Some(bundle),
            Err(message) => cx.at(&span, format!("`ca_bundle`: {message}")),
        }
    }
    aws
}

/// Reads a PEM bundle and checks every certificate in it the way the TLS stack will take
/// it as a trust root (the SDK's client panics on one it cannot parse, so none may reach it).
fn read_ca_bundle(sys: &dyn System, path: &Path) -> Result<CaBundle, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pem = sys
        .read_ca_bundle(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
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

fn check_access(cx: &mut FileCx<'_>, sec: &Section<'_, '_>, sys: &dyn System) -> AccessConfig {
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
    access.users = principals(cx, sec, "users", "user", &|name| sys.user_id(name));
    access.groups = principals(cx, sec, "groups", "group", &|name| sys.group_id(name));
    access
}

/// `users` / `groups`: each name resolved now, so a typo is a config error at its element
/// rather than a silent "nobody matches" at request time.
fn principals(
    cx: &mut FileCx<'_>,
    sec: &Section<'_, '_>,
    key: &str,
    what: &str,
    lookup: &dyn Fn(&str) -> Result<Option<u32>, String>,
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

/// `[[sink]]` tables: each sink and the span of its `path` (for the cross-app checks). A
/// sink with a problem of its own is reported and left out. `has_role`: whether the app has
/// a `[role]` (credentials contents need one).
fn check_sinks(
    cx: &mut FileCx<'_>,
    root: &Section<'_, '_>,
    sys: &dyn System,
    has_role: bool,
) -> Vec<(SinkConfig, Range<usize>)> {
    let Some(tables) = root.tables(cx, "sink") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for sec in tables {
        sec.unknown_keys(
            cx,
            &[
                "path", "content", "mode", "user", "group", "notify", "signal", "pid_file",
            ],
        );
        let path = sec.required(cx, "path").and_then(|(s, span)| {
            sink_path(sys, Path::new(s))
                .map_err(|message| cx.at(&span, message))
                .ok()
                .map(|path| (path, span))
        });
        let content = sec.required(cx, "content").and_then(|(s, span)| {
            let Some(content) = SinkContent::ALL.into_iter().find(|c| c.as_str() == s) else {
                let names: Vec<&str> = SinkContent::ALL.iter().map(|c| c.as_str()).collect();
                cx.at(
                    &span,
                    format!("`content` must be one of {}", names.join(", ")),
                );
                return None;
            };
            if content.is_credentials() && !has_role {
                cx.at(
                    &span,
                    format!(
                        "`content = \"{}\"` needs a [role] in this app (role credentials are what it holds)",
                        content.as_str()
                    ),
                );
                return None;
            }
            Some(content)
        });
        let mode = match sec.string(cx, "mode") {
            Some((s, span)) => match parse_octal_mode(s) {
                Ok(mode) => Some(mode),
                Err(e) => {
                    cx.at(&span, format!("`mode` {e}"));
                    None
                }
            },
            None if sec.has("mode") => None,
            None => Some(0o600),
        };
        let user = owner(cx, &sec, "user", &|name| sys.user_id(name));
        let group = owner(cx, &sec, "group", &|name| sys.group_id(name));
        let notify = sec.command(cx, "notify");
        let notify_ok = notify.is_some() || !sec.has("notify");
        let signal = sink_signal(cx, &sec);
        if let (Some((path, span)), Some(content), Some(mode), Ok(user), Ok(group), Ok(signal)) =
            (path, content, mode, user, group, signal)
        {
            if notify_ok {
                out.push((
                    SinkConfig {
                        path,
                        content,
                        mode,
                        user,
                        group,
                        notify,
                        signal,
                    },
                    span,
                ));
            }
        }
    }
    out
}

/// The signals a sink may send after a write (what readers reload on).
const SINK_SIGNALS: [(&str, i32); 5] = [
    ("HUP", libc::SIGHUP),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("INT", libc::SIGINT),
    ("TERM", libc::SIGTERM),
];

/// `signal` and `pid_file`: both or neither; `Err(())` after a reported problem.
fn sink_signal(cx: &mut FileCx<'_>, sec: &Section<'_, '_>) -> Result<Option<SinkSignal>, ()> {
    let signal = sec.string(cx, "signal");
    let pid_file = sec.non_empty(cx, "pid_file");
    match (signal, pid_file) {
        (None, None) if !sec.has("signal") && !sec.has("pid_file") => Ok(None),
        (Some((name, span)), Some((pid_file, pid_span))) => {
            let bare = name.strip_prefix("SIG").unwrap_or(name);
            let Some((_, number)) = SINK_SIGNALS.iter().find(|(n, _)| *n == bare) else {
                let names: Vec<&str> = SINK_SIGNALS.iter().map(|(n, _)| *n).collect();
                cx.at(
                    &span,
                    format!("`signal` must be one of {}", names.join(", ")),
                );
                return Err(());
            };
            if !Path::new(pid_file).is_absolute() {
                cx.at(
                    &pid_span,
                    format!("`pid_file` must be absolute, not {pid_file}"),
                );
                return Err(());
            }
            Ok(Some(SinkSignal {
                name: bare.to_string(),
                number: *number,
                pid_file: PathBuf::from(pid_file),
            }))
        }
        (Some(_), None) if !sec.has("pid_file") => {
            if let Some((_, v)) = sec.get("signal") {
                cx.at(
                    &v.span(),
                    "`signal` needs a `pid_file` (whom to send it to)",
                );
            }
            Err(())
        }
        (None, Some(_)) if !sec.has("signal") => {
            if let Some((_, v)) = sec.get("pid_file") {
                cx.at(&v.span(), "`pid_file` needs a `signal` (what to send)");
            }
            Err(())
        }
        // A value of the wrong type, already reported.
        _ => Err(()),
    }
}

/// A sink's path: absolute, a file name after its directory, and that directory existing
/// and not writable by everyone (anyone could then replace what readers find there).
fn sink_path(sys: &dyn System, path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("`path` must be absolute, not {}", path.display()));
    }
    let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(format!("`path` {} names no file", path.display()));
    };
    if path.as_os_str().as_encoded_bytes().ends_with(b"/")
        || path.ends_with(".")
        || path.ends_with("..")
    {
        return Err(format!("`path` {} names no file", path.display()));
    }
    match sys.dir_mode(dir) {
        Ok(Some(mode)) if mode & 0o002 != 0 => Err(format!(
            "the directory {} of `path` is writable by everyone (mode {:04o}); use a directory only the readers' owner can write",
            dir.display(),
            mode
        )),
        Ok(Some(_)) => Ok(path.to_path_buf()),
        Ok(None) => Err(format!(
            "the directory {} of `path` is not a directory",
            dir.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
            "the directory {} of `path` does not exist",
            dir.display()
        )),
        Err(e) => Err(format!(
            "cannot check the directory {} of `path`: {e}",
            dir.display()
        )),
    }
}

/// A sink's `user` / `group`: a name resolved now (like `[access]`), or a numeric id taken
/// as written. `Ok(None)` when absent; `Err(())` after a reported problem.
fn owner(
    cx: &mut FileCx<'_>,
    sec: &Section<'_, '_>,
    key: &str,
    lookup: &dyn Fn(&str) -> Result<Option<u32>, String>,
) -> Result<Option<Principal>, ()> {
    let Some((_, value)) = sec.get(key) else {
        return Ok(None);
    };
    if let Ok(id) = integer_value(value.get_ref()) {
        return match u32::try_from(id) {
            Ok(id) => Ok(Some(Principal {
                name: id.to_string(),
                id,
            })),
            Err(_) => {
                cx.at(&value.span(), format!("`{key}` is out of range"));
                Err(())
            }
        };
    }
    let Some(name) = value.get_ref().as_str().filter(|s| !s.is_empty()) else {
        cx.at(
            &value.span(),
            format!("`{key}` must be a {key} name or a numeric id"),
        );
        return Err(());
    };
    match lookup(name) {
        Ok(Some(id)) => Ok(Some(Principal {
            name: name.to_string(),
            id,
        })),
        Ok(None) => {
            cx.at(
                &value.span(),
                format!("{key} `{}` does not exist", name.escape_debug()),
            );
            Err(())
        }
        Err(e) => {
            cx.at(
                &value.span(),
                format!("cannot look up {key} `{}`: {e}", name.escape_debug()),
            );
            Err(())
        }
    }
}

/// The whole-config sink checks: no two sinks (in any apps) on one path, none inside the
/// state dir, none on the socket. Each problem is reported at the later sink's `path`.
pub(crate) fn check_sink_paths(
    sinks: &[SinkRef],
    socket: &Path,
    state_dir: &Path,
    diags: &mut Vec<Diagnostic>,
) {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    // The directory resolved through links, so `/run/x/../y` or a linked dir still matches.
    let resolved = |p: &Path| match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => canonical(dir).join(name),
        _ => p.to_path_buf(),
    };
    let socket = resolved(socket);
    let state_dir = canonical(state_dir);
    let mut seen: BTreeMap<PathBuf, &SinkRef> = BTreeMap::new();
    for sink in sinks {
        let path = resolved(&sink.path);
        if path == socket {
            diags.push(sink.diag(format!(
                "`path` {} is the daemon's socket",
                sink.path.display()
            )));
        } else if path.starts_with(&state_dir) {
            diags.push(sink.diag(format!(
                "`path` {} is inside the state dir {}",
                sink.path.display(),
                state_dir.display()
            )));
        }
        match seen.get(&path) {
            Some(first) => diags.push(sink.diag(format!(
                "`path` {} is already a sink of app `{}` ({}:{}:{})",
                sink.path.display(),
                first.app,
                first.file.display(),
                first.line,
                first.col
            ))),
            None => {
                seen.insert(path, sink);
            }
        }
    }
}
