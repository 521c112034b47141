//! The set of running apps: builds one owner task per app in dependency order (a
//! token-exchange app after its subject) and hands out their handles.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::config::{Config, Grant};
use crate::metrics::Metrics;
use crate::refresh::credentials::CredentialCache;
use crate::refresh::policy::Policy;
use crate::refresh::scheduler::Shared;
use crate::refresh::AppHandle;
use crate::store::Store;
use crate::upstream::oidc::Upstreams;

/// Running apps by name.
pub struct Broker {
    /// std `RwLock`: held only to clone an `Arc`, never across an await.
    apps: RwLock<BTreeMap<String, Arc<AppHandle>>>,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Broker {
    /// Starts every app of `config`; each fetches its first token on its own.
    /// Saved refresh tokens in `store` are picked up first.
    pub async fn start(
        config: &Config,
        upstreams: &Upstreams,
        clock: Clock,
        store: Option<Arc<Store>>,
    ) -> Broker {
        let shared = Shared {
            clock,
            policy: policy_of(config),
            permits: Arc::new(Semaphore::new(config.refresh.max_concurrent.max(1))),
            store: store.clone(),
            metrics: Arc::new(Metrics::new()),
        };
        let wall_secs = clock
            .wall_now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut apps: BTreeMap<String, Arc<AppHandle>> = BTreeMap::new();
        for name in dependency_order(config) {
            let app = Arc::new(config.apps[&name].clone());
            let subject = match &app.grant {
                Grant::TokenExchange { subject_app, .. } => {
                    apps.get(subject_app).map(|s| s.subscribe())
                }
                _ => None,
            };
            let issuer = upstreams.token_issuer(&app).await;
            let saved = store
                .as_ref()
                .and_then(|s| s.load(&name, &app.client_id, wall_secs));
            let mut handle = AppHandle::spawn(app.clone(), issuer, subject, shared.clone(), saved);
            if let Some(assumer) = upstreams.role_assumer(&app).await {
                handle = handle.with_credentials(CredentialCache::new(
                    assumer,
                    shared.policy,
                    clock,
                    shared.permits.clone(),
                ));
            }
            apps.insert(name, Arc::new(handle));
        }
        Broker {
            apps: RwLock::new(apps),
            clock,
            metrics: shared.metrics.clone(),
        }
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The clock every app runs on.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// One app.
    pub fn app(&self, name: &str) -> Option<Arc<AppHandle>> {
        self.read().get(name).cloned()
    }

    /// Every app, by name.
    pub fn apps(&self) -> Vec<Arc<AppHandle>> {
        self.read().values().cloned().collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<AppHandle>>> {
        // A panic while holding the lock cannot leave the map half-written (inserts are
        // single calls), so a poisoned lock is still a consistent map.
        self.apps.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// `[refresh]` as the policy functions take it.
pub fn policy_of(config: &Config) -> Policy {
    Policy {
        at: config.refresh.at,
        jitter: config.refresh.jitter,
        min_lead: config.refresh.min_lead,
        max_backoff: config.refresh.max_backoff,
    }
}

/// App names with every token-exchange app after its subject. The config loader has already
/// rejected cycles and dangling subjects; anything left over is appended, never dropped.
pub fn dependency_order(config: &Config) -> Vec<String> {
    let mut order: Vec<String> = Vec::with_capacity(config.apps.len());
    let mut placed = std::collections::BTreeSet::new();
    let mut progress = true;
    while progress && order.len() < config.apps.len() {
        progress = false;
        for (name, app) in &config.apps {
            if placed.contains(name) {
                continue;
            }
            let ready = match &app.grant {
                Grant::TokenExchange { subject_app, .. } => {
                    placed.contains(subject_app) || !config.apps.contains_key(subject_app)
                }
                _ => true,
            };
            if ready {
                placed.insert(name.clone());
                order.push(name.clone());
                progress = true;
            }
        }
    }
    for name in config.apps.keys() {
        if !placed.contains(name) {
            order.push(name.clone());
        }
    }
    order
}
