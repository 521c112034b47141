//! The watchdog and the `STATUS=` line: what runs beside the server while systemd supervises.
//! `WATCHDOG=1` is sent only while a probe (the refresh machinery answering) says yes, so a
//! wedged daemon is restarted; `STATUS=` is a summary line, polled every [`STATUS_EVERY`] and
//! sent when it changes. Both the probe and the summary are functions the caller hands in:
//! this module knows the notifier, not the broker.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{error, info};

use super::notify::Notifier;

/// How often the `STATUS=` line is recomputed (sent only when it changed).
pub(crate) const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Every `every`, asks `alive`; sends a ping (`ping`) only when it says yes. The first round
/// is at once. A `no` is logged once per stretch; pings resume when the answer comes back.
pub(crate) async fn watchdog<P, F>(every: Duration, mut alive: P, mut ping: impl FnMut())
where
    P: FnMut() -> F,
    F: Future<Output = bool>,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut withheld = false;
    loop {
        ticks.tick().await;
        if alive().await {
            if withheld {
                info!("the refresh tasks answer again; watchdog pings resume");
                withheld = false;
            }
            ping();
        } else if !withheld {
            error!("a refresh task does not answer; withholding watchdog pings so systemd restarts the daemon");
            withheld = true;
        }
    }
}

/// What runs beside the server while systemd supervises: the watchdog and the `STATUS=` line.
/// [`Supervisor::stopping`] (or drop) ends both.
#[derive(Debug)]
pub(crate) struct Supervisor {
    /// Where `STOPPING=1` goes once shutdown begins.
    notifier: Arc<Notifier>,
    /// The watchdog and status tasks, aborted at [`Supervisor::stopping`] or drop.
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// Sends `READY=1` with the first `STATUS=` (`summary()`), then starts the watchdog (when
    /// `WATCHDOG_USEC` applies), which pings while `probe(wait)` says yes within `wait`, and
    /// the status updates. A no-op when `notifier` is not active.
    ///
    /// `summary` is polled rather than pushed, so a summary that reads the current app list
    /// stays right across a reload without subscribing to each app.
    pub(crate) fn start<P, F, S>(notifier: Arc<Notifier>, probe: P, summary: S) -> Supervisor
    where
        P: Fn(Duration) -> F + Send + 'static,
        F: Future<Output = bool> + Send,
        S: Fn() -> String + Send + 'static,
    {
        let mut tasks = Vec::new();
        if notifier.is_active() {
            let mut line = summary();
            notifier.send_logged(&format!("READY=1\nSTATUS={line}"));
            if let Some(every) = notifier.watchdog_every() {
                info!(
                    every_ms = every.as_millis() as u64,
                    "systemd watchdog on: pinging while the refresh tasks answer"
                );
                // An owner answers a ping at once; half the period leaves the other half for
                // the ping itself to arrive before systemd's deadline.
                let wait = every / 2;
                let notifier = notifier.clone();
                tasks.push(tokio::spawn(async move {
                    watchdog(every, move || probe(wait), move || notifier.watchdog()).await
                }));
            }
            let notifier = notifier.clone();
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(STATUS_EVERY);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let now = summary();
                    if now != line {
                        notifier.status(&now);
                        line = now;
                    }
                }
            }));
        }
        Supervisor { notifier, tasks }
    }

    /// Shutdown begins: stops the pings and status updates, then sends `STOPPING=1`.
    pub(crate) fn stopping(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        self.notifier.stopping();
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_pings_only_while_the_probe_answers() {
        let alive = Arc::new(AtomicBool::new(true));
        let pings = Arc::new(AtomicUsize::new(0));
        let task = {
            let (alive, pings) = (alive.clone(), pings.clone());
            tokio::spawn(async move {
                watchdog(
                    Duration::from_secs(15),
                    || {
                        let alive = alive.clone();
                        async move { alive.load(Ordering::SeqCst) }
                    },
                    || {
                        pings.fetch_add(1, Ordering::SeqCst);
                    },
                )
                .await
            })
        };
        // Pings at 0, 15 and 30 s.
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 3);
        // The machinery wedges: a minute passes without a single ping.
        alive.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(pings.load(Ordering::SeqCst), 3);
        // It answers again: pings resume.
        alive.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert!(pings.load(Ordering::SeqCst) > 3);
        task.abort();
    }

    /// The real probe: an app whose owner task dies stops the pings.
    #[tokio::test(start_paused = true)]
    async fn a_dead_owner_task_stops_the_pings() {
        use crate::config::{AppConfig, AssertionSource, AwsConfig, Grant};
        use crate::refresh::owner::Shared;
        use crate::refresh::AppHandle;
        use crate::upstream::{BoxFuture, GrantRequest, IssuedToken, TokenIssuer, UpstreamError};

        /// Issues a one-hour token, then dies on the next call (as a bug would).
        struct Issuer(AtomicUsize);
        impl TokenIssuer for Issuer {
            fn create_token(
                &self,
                _grant: GrantRequest,
            ) -> BoxFuture<'_, Result<IssuedToken, UpstreamError>> {
                Box::pin(async move {
                    if self.0.fetch_add(1, Ordering::SeqCst) > 0 {
                        panic!("test issuer: the owner task dies here");
                    }
                    Ok(IssuedToken {
                        access_token: crate::secret::Secret::new("t"),
                        token_type: "Bearer".into(),
                        expires_in: 3600,
                        refresh_token: None,
                        id_token: None,
                        issued_token_type: None,
                        scopes: None,
                        identity_context: None,
                    })
                })
            }
        }

        let dir = tempfile::tempdir().unwrap();
        let assertion = dir.path().join("a.jwt");
        std::fs::write(&assertion, "h.p.s").unwrap();
        let app = Arc::new(AppConfig {
            name: "app".into(),
            file: "apps.d/app.toml".into(),
            client_id: "arn:aws:sso::123456789012:application/ssoins-1/apl-1".into(),
            region: "us-east-1".into(),
            scopes: None,
            endpoint_url: None,
            grant: Grant::JwtBearer {
                assertion: AssertionSource::File(assertion),
            },
            aws: AwsConfig::default(),
            role: None,
            access: None,
            sinks: Vec::new(),
        });
        let shared = Shared::new(
            crate::clock::Clock::system(),
            crate::refresh::policy::LivePolicy::new(crate::refresh::policy::Policy {
                at: 0.5,
                jitter: 0.0,
                min_lead: Duration::from_secs(300),
                max_backoff: Duration::from_secs(300),
            }),
            Arc::new(tokio::sync::Semaphore::new(8)),
            None,
            Arc::new(crate::metrics::Metrics::new()),
        );
        let handle = Arc::new(AppHandle::spawn(
            app,
            Arc::new(Issuer(AtomicUsize::new(0))),
            None,
            shared,
            None,
        ));
        let pings = Arc::new(AtomicUsize::new(0));
        let task = {
            let (handle, pings) = (handle.clone(), pings.clone());
            tokio::spawn(async move {
                watchdog(
                    Duration::from_secs(15),
                    || {
                        let handle = handle.clone();
                        async move { handle.ping(Duration::from_secs(7)).await }
                    },
                    || {
                        pings.fetch_add(1, Ordering::SeqCst);
                    },
                )
                .await
            })
        };
        // The token is refreshed at half its hour: until then the owner answers.
        tokio::time::sleep(Duration::from_secs(1790)).await;
        let before = pings.load(Ordering::SeqCst);
        assert!(before >= 100, "{before} pings in the first half hour");
        // The refresh kills the owner; from then on no ping.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let at_death = pings.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(pings.load(Ordering::SeqCst), at_death);
        assert!(at_death <= before + 1);
        task.abort();
    }
}
