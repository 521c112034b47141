//! The set of running apps: builds one owner task per app in dependency order (a
//! token-exchange app after its subject) and hands out their handles.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;
use tracing::warn;

use crate::clock::Clock;
use crate::config::{Config, Grant};
use crate::metrics::Metrics;
use crate::refresh::credentials::CredentialCache;
use crate::refresh::owner::Shared;
use crate::refresh::policy::{LivePolicy, Policy};
use crate::refresh::state::AppState;
use crate::refresh::AppHandle;
use crate::store::Store;
use crate::upstream::clients::Upstreams;

/// Running apps by name, and what a reload needs to start more.
pub struct Broker {
    /// std `RwLock`: held only to clone an `Arc` or swap one entry, never across an await.
    apps: RwLock<BTreeMap<String, Arc<AppHandle>>>,
    clock: Clock,
    shared: Shared,
    upstreams: Upstreams,
    /// The config the running apps were started from, without its apps (each app's config is
    /// held once, by its handle); the lock also serializes reloads.
    config: tokio::sync::Mutex<Config>,
    /// Each `[role]` app's credentials-endpoint token, kept in step with the apps.
    endpoints: crate::endpoint::EndpointTokens,
    /// The apps' file sinks, kept in step with the apps at start and on every reload.
    sinks: crate::sinks::Sinks,
    /// The clock's resume detector ([`Clock::watch_resumes`]), stopped with the broker.
    resume_detector: tokio::task::AbortHandle,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.resume_detector.abort();
    }
}

/// What a reload did, for the log and for tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ReloadReport {
    /// Apps started that did not exist before.
    pub(crate) added: Vec<String>,
    /// Apps stopped, and their saved state deleted.
    pub(crate) removed: Vec<String>,
    /// Apps restarted with a new config (or because their subject app was).
    pub(crate) changed: Vec<String>,
    /// Apps whose change left their grant alone (only `[access]` or `[role]`, with or
    /// without `[[sink]]`): the new config applies, the token is kept, no upstream call.
    pub(crate) reconfigured: Vec<String>,
    /// Apps left running as they were.
    pub(crate) unchanged: Vec<String>,
    /// Settings that changed but apply only at restart.
    pub(crate) needs_restart: Vec<&'static str>,
}

impl Broker {
    /// Starts every app of `config`; each fetches its first token on its own.
    /// Saved refresh tokens in `store` are picked up first.
    pub async fn start(
        mut config: Config,
        upstreams: Upstreams,
        clock: Clock,
        store: Option<Arc<Store>>,
    ) -> Broker {
        let seal = store.as_ref().map(|s| s.seal_status());
        let shared = Shared::new(
            clock.clone(),
            LivePolicy::new(policy_of(&config)),
            Arc::new(Semaphore::new(config.refresh.max_concurrent.max(1))),
            store,
            Arc::new(Metrics::new()),
        );
        shared
            .metrics
            .set_state_sealed(seal.is_some_and(|s| s.sealed));
        let order = config.start_order();
        let roles = roles_of(&config, config.server.credentials_listen.is_some());
        let mut apps = std::mem::take(&mut config.apps);
        let shared_metrics = shared.metrics.clone();
        let broker = Broker {
            apps: RwLock::new(BTreeMap::new()),
            resume_detector: tokio::spawn(clock.clone().watch_resumes()).abort_handle(),
            sinks: crate::sinks::Sinks::new(clock.clone(), shared_metrics),
            clock,
            shared,
            upstreams,
            config: tokio::sync::Mutex::new(config),
            endpoints: crate::endpoint::EndpointTokens::default(),
        };
        broker.sync_endpoints(roles).await;
        for name in order {
            if let Some(app) = apps.remove(&name) {
                let handle = broker.spawn_app(Arc::new(app)).await;
                broker.write().insert(name, handle);
            }
        }
        let with_sinks: Vec<_> = broker
            .apps()
            .into_iter()
            .map(|app| {
                let sinks = app.config.sinks.clone();
                (app, sinks)
            })
            .collect();
        broker.sinks.sync(&with_sinks).await;
        broker
    }

    /// Applies `new`: apps added are started, removed ones stopped (their saved refresh token
    /// deleted), changed ones restarted; an unchanged app keeps running with its token and
    /// makes no call. A token-exchange app whose subject app is restarted is restarted too,
    /// so it watches the new one. `[refresh]` applies to every app from its next scheduling
    /// decision; `[server]`, `[state]` and `[log]` only at restart (reported).
    pub(crate) async fn reload(&self, mut new: Config) -> ReloadReport {
        let mut current = self.config.lock().await;
        let mut report = ReloadReport::default();
        if current.server != new.server {
            report.needs_restart.push("[server]");
        }
        if current.state != new.state {
            report.needs_restart.push("[state]");
        }
        if current.log != new.log {
            report.needs_restart.push("[log]");
        }
        if current.refresh != new.refresh {
            self.shared.policy.set(policy_of(&new));
            resize(
                &self.shared.permits,
                current.refresh.max_concurrent.max(1),
                new.refresh.max_concurrent.max(1),
            );
        }
        let running: Vec<String> = self.read().keys().cloned().collect();
        for name in running {
            if !new.apps.contains_key(&name) {
                let handle = self.write().remove(&name);
                if let Some(handle) = handle {
                    handle.stop().await;
                }
                if let Some(store) = self.shared.store.clone() {
                    let app = name.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        store.remove(&app);
                        store.remove_endpoint_token(&app);
                    })
                    .await;
                }
                report.removed.push(name);
            }
        }
        // Before the apps restart: a client may read a new app's endpoint at once.
        // `[server]` applies at restart: the running config says whether the endpoint is on.
        let enabled = current.server.credentials_listen.is_some();
        self.sync_endpoints(roles_of(&new, enabled)).await;
        let order = new.start_order();
        let mut apps = std::mem::take(&mut new.apps);
        let sinks_of: BTreeMap<String, Vec<crate::config::SinkConfig>> = apps
            .iter()
            .map(|(name, app)| (name.clone(), app.sinks.clone()))
            .collect();
        for name in order {
            let Some(app) = apps.remove(&name) else {
                continue;
            };
            let subject_restarted = match &app.grant {
                Grant::TokenExchange { subject_app, .. } => report
                    .added
                    .iter()
                    .chain(&report.changed)
                    .any(|n| n == subject_app),
                _ => false,
            };
            let old = self.app(&name);
            match old {
                Some(old) if same_but_sinks(&old.config, &app) && !subject_restarted => {
                    // Unchanged, or only its `[[sink]]` tables changed: it keeps its token.
                    report.unchanged.push(name);
                    continue;
                }
                Some(old) if same_grant(&old.config, &app) && !subject_restarted => {
                    // Only `[access]` or `[role]` (and maybe sinks): the same owner goes on
                    // under the new config; a changed `[role]` gets new role credentials.
                    let keep = old.config.role == app.role;
                    let credentials = if keep {
                        None
                    } else {
                        self.credential_cache(&app).await
                    };
                    let handle = old.reconfigured(Arc::new(app), credentials, keep);
                    self.write().insert(name.clone(), Arc::new(handle));
                    report.reconfigured.push(name);
                    continue;
                }
                Some(old) => {
                    // Stopped first: a rotation in flight is saved before the new owner
                    // loads the saved refresh token.
                    old.stop().await;
                    report.changed.push(name.clone());
                }
                None => report.added.push(name.clone()),
            }
            let handle = self.spawn_app(Arc::new(app)).await;
            self.write().insert(name, handle);
        }
        // Sinks of removed apps and removed sinks lose their files; unchanged ones are left.
        let with_sinks: Vec<_> = self
            .apps()
            .into_iter()
            .map(|app| {
                let sinks = sinks_of.get(app.name()).cloned().unwrap_or_default();
                (app, sinks)
            })
            .collect();
        self.sinks.sync(&with_sinks).await;
        *current = new;
        report
    }

    /// Starts one app's owner (and credential cache), with its saved refresh token.
    async fn spawn_app(&self, app: Arc<crate::config::AppConfig>) -> Arc<AppHandle> {
        let subject = match &app.grant {
            Grant::TokenExchange { subject_app, .. } => {
                self.app(subject_app).map(|s| s.subscribe())
            }
            _ => None,
        };
        let issuer = self.upstreams.token_issuer(&app).await;
        let wall_secs = self
            .clock
            .wall_now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Off the async workers: a read, and a rename when the file is damaged.
        let saved = match self.shared.store.clone() {
            Some(store) => {
                let for_load = app.clone();
                tokio::task::spawn_blocking(move || {
                    store.load(&for_load.name, &for_load.client_id, wall_secs)
                })
                .await
                .unwrap_or(None)
            }
            None => None,
        };
        let mut handle = AppHandle::spawn(app.clone(), issuer, subject, self.shared.clone(), saved);
        if let Some(cache) = self.credential_cache(&app).await {
            handle = handle.with_credentials(cache);
        }
        Arc::new(handle)
    }

    /// A new role-credential cache for `app`, when it has a `[role]`.
    async fn credential_cache(&self, app: &crate::config::AppConfig) -> Option<CredentialCache> {
        let assumer = self.upstreams.role_assumer(app).await?;
        Some(CredentialCache::new(
            assumer,
            self.shared.policy.clone(),
            self.clock.clone(),
            self.shared.permits.clone(),
        ))
    }

    /// Stops every app at once, letting calls in flight finish within `limit` (so a rotated
    /// refresh token is saved); whatever is still running after that is left to process exit.
    pub(crate) async fn stop(&self, limit: std::time::Duration) {
        // The sink files stay: readers keep working through a restart until they expire.
        self.sinks.stop().await;
        let apps = std::mem::take(&mut *self.write());
        let mut stopping = tokio::task::JoinSet::new();
        for app in apps.into_values() {
            stopping.spawn(async move { app.stop().await });
        }
        let all = async { while stopping.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!(
                apps = stopping.len(),
                "calls still in flight at exit are abandoned"
            );
        }
    }

    /// The file sinks of `app`, for `status` and `/metrics`.
    pub(crate) fn sinks_of(&self, app: &str) -> Vec<crate::sinks::SinkView> {
        self.sinks.of(app)
    }

    /// The credentials endpoint's tokens and address (CONTRACT §5b).
    pub(crate) fn endpoints(&self) -> &crate::endpoint::EndpointTokens {
        &self.endpoints
    }

    async fn sync_endpoints(&self, roles: Vec<(String, Option<String>)>) {
        let wall_secs = self
            .clock
            .wall_now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.endpoints
            .sync(roles, self.shared.store.clone(), wall_secs)
            .await;
    }

    /// The daemon's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Resolves once every app has finished its first attempt (whatever its outcome), so
    /// the start-up wave of calls is over.
    pub(crate) async fn settled(&self) {
        for app in self.apps() {
            let mut snapshots = app.subscribe();
            let _ = snapshots
                .wait_for(|s| !matches!(s.state, AppState::Pending | AppState::Refreshing))
                .await;
        }
    }

    /// Whether state files are written sealed (not sealed when there is no state dir).
    pub(crate) fn seal_status(&self) -> crate::seal::SealStatus {
        self.shared
            .store
            .as_ref()
            .map_or(crate::seal::SealStatus::default(), |s| s.seal_status())
    }

    /// The clock every app runs on.
    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// One app.
    pub(crate) fn app(&self, name: &str) -> Option<Arc<AppHandle>> {
        self.read().get(name).cloned()
    }

    /// Every app, by name.
    pub(crate) fn apps(&self) -> Vec<Arc<AppHandle>> {
        self.read().values().cloned().collect()
    }

    /// The refresh machinery's liveness (the systemd watchdog): every app's owner task answers
    /// a ping, all within `wait`. Owners answer at once, even mid-call, so `false` means one
    /// is dead or wedged. With no apps there is nothing to be wedged: `true`.
    pub(crate) async fn alive(&self, wait: std::time::Duration) -> bool {
        let apps = self.apps();
        let all = async {
            for app in &apps {
                if !app.ping(wait).await {
                    tracing::warn!(app = %app.name(), "the app's refresh task does not answer");
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(wait, all).await.unwrap_or(false)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<AppHandle>>> {
        // A panic while holding the lock cannot leave the map half-written (every change is
        // one insert or remove), so a poisoned lock is still a consistent map.
        self.apps.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<AppHandle>>> {
        self.apps.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether `a` and `b` differ at most in their `[[sink]]` tables (which the sink registry
/// applies without restarting the app).
fn same_but_sinks(a: &crate::config::AppConfig, b: &crate::config::AppConfig) -> bool {
    crate::config::AppConfig {
        sinks: Vec::new(),
        ..a.clone()
    } == crate::config::AppConfig {
        sinks: Vec::new(),
        ..b.clone()
    }
}

/// Whether `a` and `b` have the same grant: they differ at most in `[access]`, `[role]` and
/// `[[sink]]`, which apply to a running owner without a new token (CONTRACT §6).
fn same_grant(a: &crate::config::AppConfig, b: &crate::config::AppConfig) -> bool {
    let grant_only = |c: &crate::config::AppConfig| crate::config::AppConfig {
        access: None,
        role: None,
        sinks: Vec::new(),
        ..c.clone()
    };
    grant_only(a) == grant_only(b)
}

/// Moves the number of upstream call permits from `old` to `new`. Permits held by calls in
/// flight are not taken back: shrinking completes as they are released.
fn resize(permits: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        permits.add_permits(new - old);
    } else if old > new {
        let excess = old - new;
        let held = excess - permits.forget_permits(excess);
        if held > 0 {
            let permits = permits.clone();
            tokio::spawn(async move {
                // u32: at most max_concurrent, which the config bounds far below u32::MAX.
                let n = u32::try_from(held).unwrap_or(u32::MAX);
                if let Ok(p) = permits.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
    }
}

/// Each app's name and its `[role]`'s fingerprint (what keeps its endpoint token); none at
/// all while the endpoint is off, so no token is made (and no saved one touched) for nothing.
fn roles_of(config: &Config, endpoint_on: bool) -> Vec<(String, Option<String>)> {
    if !endpoint_on {
        return Vec::new();
    }
    config
        .apps
        .values()
        .map(|app| {
            let role = app.role.as_ref().map(crate::endpoint::role_fingerprint);
            (app.name.clone(), role)
        })
        .collect()
}

/// `[refresh]` as the policy functions take it.
pub(crate) fn policy_of(config: &Config) -> Policy {
    Policy {
        at: config.refresh.at,
        jitter: config.refresh.jitter,
        min_lead: config.refresh.min_lead,
        max_backoff: config.refresh.max_backoff,
    }
}

/// Hands the heap's free pages back to the kernel (glibc keeps them otherwise). Called after
/// the start-up wave and after a reload: both allocate and free a burst of per-app call
/// state, which would else stay in the daemon's RSS for good.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
