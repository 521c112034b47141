//! The main file's checks (CONTRACT §3): `apps_dir`, `[server]`, `[state]`, `[refresh]`
//! and `[log]`, each table into its typed struct with the defaults applied.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::DeTable;

use super::cursor::{FileCx, Section};
use super::syntax::{parse_loopback_listen, parse_octal_mode};
use super::types::*;

/// `[refresh] max_backoff` floor: below a second the "backoff" would hammer the service.
const MAX_BACKOFF_MIN: Duration = Duration::from_secs(1);

/// What the main file yields; fields hold defaults where a value was bad (then a
/// diagnostic exists and they are never used).
pub(crate) struct MainParts {
    /// Resolved apps dir; `None` when `apps_dir` was bad (apps are then not loaded,
    /// since any report about them would be about the wrong directory).
    pub(crate) apps_dir: Option<PathBuf>,
    /// The `apps_dir` value, when set: where "does not exist" is reported.
    pub(crate) apps_dir_span: Option<Range<usize>>,
    pub(crate) server: ServerConfig,
    pub(crate) state: StateConfig,
    pub(crate) refresh: RefreshConfig,
    pub(crate) log: LogConfig,
}

pub(crate) fn check_main(cx: &mut FileCx<'_>, root: &DeTable<'_>, main_dir: &Path) -> MainParts {
    let root = Section::root(root);
    root.unknown_keys(cx, &["apps_dir", "server", "state", "refresh", "log"]);

    let (apps_dir, apps_dir_span) = if root.has("apps_dir") {
        match root.path(cx, "apps_dir", main_dir) {
            Some((dir, span)) => (Some(dir), Some(span)),
            None => (None, None),
        }
    } else {
        (Some(main_dir.join("apps.d")), None)
    };

    let server = root.table(cx, "server");
    let server = check_server(cx, server, main_dir);
    let state = root.table(cx, "state");
    let state = check_state(cx, state, main_dir);
    let refresh = match root.table(cx, "refresh") {
        Some(sec) => check_refresh(cx, &sec),
        None => default_refresh(),
    };
    let log = root.table(cx, "log");
    let log = check_log(cx, log);

    MainParts {
        apps_dir,
        apps_dir_span,
        server,
        state,
        refresh,
        log,
    }
}

/// `[server]`, or its defaults when the table is absent.
fn check_server(
    cx: &mut FileCx<'_>,
    sec: Option<Section<'_, '_>>,
    main_dir: &Path,
) -> ServerConfig {
    let mut server = ServerConfig {
        socket: None,
        socket_mode: 0o660,
        credentials_listen: None,
    };
    if let Some(sec) = sec {
        sec.unknown_keys(cx, &["socket", "socket_mode", "credentials_listen"]);
        server.socket = sec.path(cx, "socket", main_dir).map(|(p, _)| p);
        if let Some((s, span)) = sec.string(cx, "socket_mode") {
            match parse_octal_mode(s) {
                Ok(mode) => server.socket_mode = mode,
                Err(err) => cx.at(&span, format!("`socket_mode` {err}")),
            }
        }
        if let Some((s, span)) = sec.string(cx, "credentials_listen") {
            match parse_loopback_listen(s) {
                Ok(addr) => server.credentials_listen = Some(addr),
                Err(err) => cx.at(&span, format!("`credentials_listen` {err}")),
            }
        }
    }
    server
}

/// `[state]`, or its defaults when the table is absent.
fn check_state(cx: &mut FileCx<'_>, sec: Option<Section<'_, '_>>, main_dir: &Path) -> StateConfig {
    let mut state = StateConfig {
        dir: None,
        seal: SealMode::Auto,
    };
    if let Some(sec) = sec {
        sec.unknown_keys(cx, &["dir", "seal"]);
        state.dir = sec.path(cx, "dir", main_dir).map(|(p, _)| p);
        if let Some((s, span)) = sec.string(cx, "seal") {
            match s {
                "auto" => state.seal = SealMode::Auto,
                "off" => state.seal = SealMode::Off,
                "required" => state.seal = SealMode::Required,
                _ => cx.at(&span, "`seal` must be \"auto\", \"off\" or \"required\""),
            }
        }
    }
    state
}

/// `[log]`, or its defaults when the table is absent.
fn check_log(cx: &mut FileCx<'_>, sec: Option<Section<'_, '_>>) -> LogConfig {
    let mut log = LogConfig {
        format: LogFormat::Text,
        level: "info".to_string(),
    };
    if let Some(sec) = sec {
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
    log
}

pub(crate) fn default_refresh() -> RefreshConfig {
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
    check_at_jitter(cx, sec, &mut refresh);
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

/// `at` and `jitter` are checked alone first; the combined bound only when both are
/// sound, so one mistake gives one message.
fn check_at_jitter(cx: &mut FileCx<'_>, sec: &Section<'_, '_>, refresh: &mut RefreshConfig) {
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
}
