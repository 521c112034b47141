//! File sinks (CONTRACT §3 `[[sink]]`, §7): files kept current with an app's token or role
//! credentials for programs that only read files.
//!
//! [`Sinks`] holds one task per configured sink. Each task watches its app's snapshot (the
//! same `watch` channel readers use) and, for credentials contents, the app's credential
//! cache on a timer (at the cache's `refresh_at`, so role credentials are refreshed without
//! anyone asking); it writes after every new token or credentials, removes the file when
//! what it held expires with nothing new, and retries a failed write with backoff. The file
//! operations themselves are in `write.rs`, on the blocking pool. What each sink did last
//! (path, last write, last error, expiry) is kept for `status` and `/metrics`; nothing here
//! can stop an app's refresh or its socket answers.

mod notify;
mod write;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::clock::BootInstant;
use tokio::sync::oneshot;
use tracing::{info, warn};
use zeroize::Zeroizing;

use crate::clock::{rfc3339, Clock};
use crate::config::{SinkConfig, SinkContent};
use crate::metrics::Metrics;
use crate::refresh::credentials::{credential_process_json, Credentials};
use crate::refresh::state::{AppState, Snapshot, Token};
use crate::refresh::AppHandle;

use write::Owner;

/// First wait after a failed write or removal; doubled per failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Cap of the retry backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// Least wait before asking the credential cache again, so a cache that holds off (after a
/// failed AssumeRole) is not asked in a tight loop.
const MIN_CREDENTIALS_WAIT: Duration = Duration::from_secs(1);
/// How long stopping a sink on reload waits for a write (and its `notify`) to finish.
const STOP_WAIT: Duration = Duration::from_secs(12);
/// How long shutdown waits for every sink's write in progress, all together.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// What a sink last did, as `status` and `/metrics` show it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SinkStatus {
    /// When the file was last written.
    pub(crate) last_write: Option<SystemTime>,
    /// The last failure; cleared by a success.
    pub(crate) last_error: Option<SinkError>,
    /// When what the file holds expires; `None` while the file holds nothing of ours.
    pub(crate) expires_at: Option<SystemTime>,
}

/// A failed write or removal. The message is the OS error: never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SinkError {
    /// "write_failed" or "remove_failed".
    pub(crate) code: &'static str,
    /// One human sentence.
    pub(crate) message: String,
    /// When it happened.
    pub(crate) at: SystemTime,
}

/// One sink as `status` lists it.
#[derive(Debug, Clone)]
pub(crate) struct SinkView {
    /// The configured path.
    pub(crate) path: PathBuf,
    /// The configured content.
    pub(crate) content: SinkContent,
    /// What it last did.
    pub(crate) status: SinkStatus,
}

/// What the file holds, to tell a new token or credentials from the ones written.
#[derive(Clone)]
enum Item {
    Token(Arc<Token>),
    Credentials(Arc<Credentials>),
}

impl Item {
    fn same(&self, other: &Item) -> bool {
        match (self, other) {
            (Item::Token(a), Item::Token(b)) => {
                Arc::ptr_eq(a, b)
                    || (a.access_token.expose() == b.access_token.expose()
                        && a.expires_at_wall == b.expires_at_wall)
            }
            (Item::Credentials(a), Item::Credentials(b)) => {
                Arc::ptr_eq(a, b)
                    || (a.role.access_key_id == b.role.access_key_id
                        && a.role.expiration == b.role.expiration)
            }
            _ => false,
        }
    }

    fn expires_at(&self) -> BootInstant {
        match self {
            Item::Token(t) => t.expires_at,
            Item::Credentials(c) => c.expires_at,
        }
    }

    fn expires_at_wall(&self) -> SystemTime {
        match self {
            Item::Token(t) => t.expires_at_wall,
            Item::Credentials(c) => c.role.expiration,
        }
    }
}

/// A sink's state shared between its task and the registry; it outlives a task when the
/// sink's app is restarted with the sink unchanged, so the file is not rewritten needlessly.
#[derive(Default)]
struct Shared {
    status: SinkStatus,
    /// What the file holds now, when we wrote it.
    written: Option<Item>,
    /// Whether the file is known to be ours or absent (false until the first write or
    /// removal: a file left by an earlier run is of unknown age).
    known: bool,
}

/// One running sink task.
struct Running {
    app: String,
    config: SinkConfig,
    /// The handle it watches (a restarted app has a new one).
    handle: Arc<AppHandle>,
    shared: Arc<Mutex<Shared>>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Every sink of every app, by path (no two sinks share one: checked at load).
pub(crate) struct Sinks {
    clock: Clock,
    metrics: Arc<Metrics>,
    running: tokio::sync::Mutex<BTreeMap<PathBuf, Running>>,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // Every change is a whole-field assignment: a poisoned lock is still consistent.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sinks {
    /// No sinks yet.
    pub(crate) fn new(clock: Clock, metrics: Arc<Metrics>) -> Sinks {
        Sinks {
            clock,
            metrics,
            running: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// Makes the running sinks those of `apps`: a sink whose app and config are unchanged is
    /// left alone; one whose app was restarted is moved to the new handle and keeps what it
    /// wrote (a file holding the same token is not rewritten); a changed one starts afresh;
    /// the file of a sink no longer configured is removed.
    ///
    /// `apps` pairs each running app with the sinks its current config lists (an app whose
    /// only change was its `[[sink]]` tables keeps running, so its handle's config may list
    /// the old ones).
    pub(crate) async fn sync(&self, apps: &[(Arc<AppHandle>, Vec<SinkConfig>)]) {
        let mut running = self.running.lock().await;
        let mut wanted: BTreeMap<PathBuf, (Arc<AppHandle>, SinkConfig)> = BTreeMap::new();
        for (app, sinks) in apps {
            for sink in sinks {
                wanted.insert(sink.path.clone(), (app.clone(), sink.clone()));
            }
        }
        let paths: Vec<PathBuf> = running.keys().cloned().collect();
        let mut kept_state: BTreeMap<PathBuf, Arc<Mutex<Shared>>> = BTreeMap::new();
        for path in paths {
            let (same, same_handle) = match (running.get(&path), wanted.get(&path)) {
                (Some(r), Some((app, sink))) if r.app == app.name() && r.config == *sink => {
                    (true, Arc::ptr_eq(&r.handle, app))
                }
                _ => (false, false),
            };
            if same_handle {
                wanted.remove(&path);
                continue;
            }
            let Some(r) = running.remove(&path) else {
                continue;
            };
            let shared = r.shared.clone();
            stop_task(r).await;
            if same {
                kept_state.insert(path, shared);
            } else if !wanted.contains_key(&path) {
                let held_ours = lock(&shared).written.is_some();
                let for_remove = path.clone();
                let removed = tokio::task::spawn_blocking(move || write::remove(&for_remove))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                match removed {
                    Ok(true) => {
                        info!(path = %path.display(), "sink removed from the config; its file is removed")
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(path = %path.display(), held_ours, error = %e, "cannot remove the file of a sink removed from the config")
                    }
                }
            }
        }
        for (path, (app, sink)) in wanted {
            let shared = kept_state.remove(&path).unwrap_or_default();
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(run(
                app.clone(),
                sink.clone(),
                shared.clone(),
                self.clock.clone(),
                self.metrics.clone(),
                stopped,
            ));
            running.insert(
                path,
                Running {
                    app: app.name().to_owned(),
                    config: sink,
                    handle: app,
                    shared,
                    stop,
                    task,
                },
            );
        }
    }

    /// Stops every sink task; the files stay (readers keep working through a restart until
    /// what they hold expires).
    ///
    /// All are told at once; what has not finished within [`SHUTDOWN_WAIT`] (a write or a
    /// `notify` command in progress) is aborted — a temporary file cut short this way is
    /// removed by the next start.
    pub(crate) async fn stop(&self) {
        let running = std::mem::take(&mut *self.running.lock().await);
        let mut tasks = Vec::new();
        for r in running.into_values() {
            let _ = r.stop.send(());
            tasks.push(r.task);
        }
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_WAIT, all).await.is_err() {
            warn!("sink writes still in progress at exit are abandoned");
            for abort in aborts {
                abort.abort();
            }
        }
    }

    /// The sinks of `app`, in path order.
    pub(crate) fn of(&self, app: &str) -> Vec<SinkView> {
        let Ok(running) = self.running.try_lock() else {
            // A reload is re-arranging the sinks right now; the next status read sees them.
            return Vec::new();
        };
        running
            .iter()
            .filter(|(_, r)| r.app == app)
            .map(|(path, r)| SinkView {
                path: path.clone(),
                content: r.config.content,
                status: lock(&r.shared).status.clone(),
            })
            .collect()
    }
}

async fn stop_task(r: Running) {
    let _ = r.stop.send(());
    let mut task = r.task;
    if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
        warn!(path = %r.config.path.display(), "a sink write did not finish; abandoning it");
        task.abort();
    }
}

/// The file's bytes for `item`.
fn render(content: SinkContent, item: &Item, now: BootInstant) -> Zeroizing<Vec<u8>> {
    match (content, item) {
        (SinkContent::AccessToken, Item::Token(t)) => {
            Zeroizing::new(t.access_token.expose().as_bytes().to_vec())
        }
        (SinkContent::TokenJson, Item::Token(t)) => {
            Zeroizing::new(crate::server::response::token_json(t, now))
        }
        (SinkContent::CredentialsJson, Item::Credentials(c)) => {
            Zeroizing::new(credential_process_json(c).to_string().into_bytes())
        }
        (SinkContent::AwsCredentials, Item::Credentials(c)) => Zeroizing::new(
            format!(
                "# written by iamtokend; expires {}\n[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
                rfc3339(c.role.expiration),
                c.role.access_key_id,
                c.role.secret_access_key.expose(),
                c.role.session_token.expose(),
            )
            .into_bytes(),
        ),
        // The task only pairs a content with its own kind of item.
        _ => Zeroizing::new(Vec::new()),
    }
}

/// The backoff after `failures` failures in a row (at least one).
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// A sink's task: see the module doc.
async fn run(
    app: Arc<AppHandle>,
    sink: SinkConfig,
    shared: Arc<Mutex<Shared>>,
    clock: Clock,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) {
    let name = app.name().to_owned();
    let path = sink.path.clone();
    let owner = Owner {
        uid: sink.user.as_ref().map(|u| u.id),
        gid: sink.group.as_ref().map(|g| g.id),
        mode: sink.mode,
    };
    let for_clean = path.clone();
    if let Ok(n @ 1..) =
        tokio::task::spawn_blocking(move || write::remove_stale_temps(&for_clean)).await
    {
        info!(app = %name, path = %path.display(), removed = n, "removed temporary sink files left by an earlier run");
    }
    let mut snapshots = app.subscribe();
    let mut failures = 0u32;
    let mut retry_at: Option<BootInstant> = None;
    let mut channel_open = true;
    loop {
        let snapshot: Snapshot = snapshots.borrow_and_update().clone();
        let now = clock.now();
        let token = snapshot.valid_token(now).cloned();
        let written = lock(&shared).written.clone();
        let written_valid = written.clone().filter(|w| now < w.expires_at());
        let mut credentials_refresh: Option<BootInstant> = None;

        let want: Option<Item> = if sink.content.is_credentials() {
            if token.is_some() {
                let asked = tokio::select! {
                    _ = &mut stop => return,
                    r = app.credentials() => r,
                };
                match asked {
                    Ok(c) if now < c.expires_at => {
                        credentials_refresh = Some(c.refresh_at.max(now + MIN_CREDENTIALS_WAIT));
                        Some(Item::Credentials(c))
                    }
                    _ => {
                        credentials_refresh =
                            Some(now + backoff(failures.max(1)).max(MIN_CREDENTIALS_WAIT));
                        written_valid.clone()
                    }
                }
            } else {
                written_valid.clone()
            }
        } else {
            // A snapshot without a token (an app just restarted by a reload) leaves a
            // still valid file alone.
            token.map(Item::Token).or_else(|| written_valid.clone())
        };

        let due = retry_at.is_none_or(|at| now >= at);
        match &want {
            Some(item) if due && !written.as_ref().is_some_and(|w| w.same(item)) => {
                let bytes = render(sink.content, item, now);
                let for_write = path.clone();
                let result = tokio::task::spawn_blocking(move || {
                    write::write_atomic(&for_write, owner, &bytes)
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                metrics.sink_write(&name, result.is_ok());
                let mut notify_now = false;
                {
                    let mut s = lock(&shared);
                    match result {
                        Ok(()) => {
                            if s.status.last_error.is_some() {
                                info!(app = %name, path = %path.display(), "sink written again");
                            }
                            s.written = Some(item.clone());
                            s.known = true;
                            s.status.last_write = Some(clock.wall_now());
                            s.status.last_error = None;
                            s.status.expires_at = Some(item.expires_at_wall());
                            failures = 0;
                            retry_at = None;
                            notify_now = true;
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            let wait = backoff(failures);
                            retry_at = Some(now + wait);
                            failed(&mut s, &name, &path, "write_failed", &e, wait, &clock);
                        }
                    }
                }
                if notify_now {
                    if let Some(argv) = &sink.notify {
                        notify::run_notify(&name, &path, argv).await;
                    }
                    if let Some(signal) = &sink.signal {
                        notify::send_signal(&name, &path, signal).await;
                    }
                }
            }
            Some(_) => {}
            None => {
                // Nothing valid to hold: the file goes once it held ours, or once the app
                // has settled with nothing (a file left by an earlier run may be expired).
                let settled = !matches!(
                    snapshot.effective_state(now),
                    AppState::Pending | AppState::Refreshing
                );
                let remove = {
                    let s = lock(&shared);
                    due && (s.written.is_some() || (settled && !s.known))
                };
                if remove {
                    let for_remove = path.clone();
                    let result = tokio::task::spawn_blocking(move || write::remove(&for_remove))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
                    let mut s = lock(&shared);
                    match result {
                        Ok(removed) => {
                            if removed {
                                info!(app = %name, path = %path.display(), "nothing valid to hold (expired with nothing new); the sink file is removed");
                            }
                            s.written = None;
                            s.known = true;
                            s.status.expires_at = None;
                            s.status.last_error = None;
                            failures = 0;
                            retry_at = None;
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            let wait = backoff(failures);
                            retry_at = Some(now + wait);
                            failed(&mut s, &name, &path, "remove_failed", &e, wait, &clock);
                        }
                    }
                }
            }
        }

        // Wake for the first of: a new snapshot, what the file holds expiring, a retry,
        // the credentials being due.
        let held = lock(&shared).written.clone();
        let wake = [
            held.as_ref().map(Item::expires_at),
            retry_at,
            credentials_refresh,
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = async {
            match wake {
                // On the expiry timeline, and woken by a resume too: a file whose token died
                // in a suspend is removed (or rewritten) within the resume check.
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            changed = snapshots.changed(), if channel_open => {
                // The app's owner is gone (stopped or restarted): the registry moves or
                // stops this sink; until then only the timers matter.
                channel_open = changed.is_ok();
            }
            () = sleep => {}
        }
    }
}

/// Records a failure; logs it only when it differs from the last one (no log flood).
fn failed(
    s: &mut Shared,
    app: &str,
    path: &Path,
    code: &'static str,
    error: &std::io::Error,
    wait: Duration,
    clock: &Clock,
) {
    let message = format!("{}: {error}", path.display());
    let same = s
        .status
        .last_error
        .as_ref()
        .is_some_and(|e| e.code == code && e.message == message);
    if !same {
        warn!(app = %app, path = %path.display(), code, error = %error, retry_in = wait.as_secs_f64(), "sink file operation failed; retrying with backoff");
    }
    s.status.last_error = Some(SinkError {
        code,
        message,
        at: clock.wall_now(),
    });
}

#[cfg(test)]
mod tests;
