//! systemd's notification protocol (sd_notify(3)), spoken by the daemon itself: `READY=1` once
//! the socket is bound and the config loaded (not waiting for tokens), `RELOADING=1` with
//! `MONOTONIC_USEC=` around a reload, `STOPPING=1`, a one-line `STATUS=`, and `WATCHDOG=1`
//! pings only while the refresh machinery answers.
//!
//! Written against `$NOTIFY_SOCKET` with std rather than with the `sd-notify` crate: that crate
//! connects to the variable's value as a file path, so an abstract-namespace address
//! (`@name`, which sd_notify(3) allows) fails, and its `watchdog_enabled` requires
//! `WATCHDOG_PID`, which sd_watchdog_enabled(3) makes optional. The protocol is one datagram of
//! `KEY=VALUE` lines; this file is all of it.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd as `Type=notify`) every call is a no-op.
//! The variables are read once, at [`init`], and removed from the environment so that children
//! (`assertion_command`) do not talk to systemd in the daemon's name.
//!
//! `STATUS=` is a summary of the app states, polled every [`STATUS_EVERY`] and sent when it
//! changes: polling reads the broker's current app list each time, so it stays right across a
//! reload without subscribing to each app's channel.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tracing::{debug, error, info, warn};

use crate::broker::Broker;
use crate::refresh::AppState;

/// How often the `STATUS=` line is recomputed (sent only when it changed).
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// A connection to the service manager, or nothing.
#[derive(Debug)]
pub struct Notifier {
    /// Where to send and the unbound socket to send from; `None`: not supervised.
    target: Option<(SocketAddr, UnixDatagram)>,
    /// Half of `WATCHDOG_USEC`, when the watchdog applies to this process.
    watchdog_every: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog_every: None,
        }
    }

    /// From the values of `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, for process
    /// `pid`. A bad value is logged and that part disabled: the daemon still serves.
    pub fn from_vars(
        notify_socket: Option<&OsString>,
        watchdog_usec: Option<&OsString>,
        watchdog_pid: Option<&OsString>,
        pid: u32,
    ) -> Notifier {
        let target =
            notify_socket
                .filter(|v| !v.is_empty())
                .and_then(|value| match address(value) {
                    Ok(addr) => match UnixDatagram::unbound() {
                        Ok(socket) => Some((addr, socket)),
                        Err(e) => {
                            warn!(error = %e, "cannot create a socket for systemd notifications");
                            None
                        }
                    },
                    Err(e) => {
                        warn!(notify_socket = ?value, error = %e, "ignoring NOTIFY_SOCKET");
                        None
                    }
                });
        let watchdog_every = if target.is_some() {
            watchdog_interval(watchdog_usec, watchdog_pid, pid)
        } else {
            None
        };
        Notifier {
            target,
            watchdog_every,
        }
    }

    /// Whether a service manager listens.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), if the watchdog is on.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// Sends one datagram of `KEY=VALUE` lines. `Ok` without sending when not supervised.
    pub fn send(&self, message: &str) -> io::Result<()> {
        let Some((addr, socket)) = &self.target else {
            return Ok(());
        };
        let sent = socket.send_to_addr(message.as_bytes(), addr)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notification was cut short",
            ));
        }
        Ok(())
    }

    /// [`Notifier::send`], logging a failure (notifications are advisory: never fatal).
    fn send_logged(&self, message: &str) {
        if let Err(e) = self.send(message) {
            let what = message.lines().next().unwrap_or_default();
            warn!(message = what, error = %e, "cannot notify systemd");
        }
    }

    /// `READY=1`: startup or a reload finished.
    pub fn ready(&self) {
        self.send_logged("READY=1");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` in the same datagram, as `Type=notify-reload`
    /// requires; follow with [`Notifier::ready`] once the reload is done (or rejected).
    pub fn reloading(&self) {
        self.send_logged(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::clock::monotonic_usec()
        ));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=stopping");
    }

    /// `STATUS=line` (newlines would end the field: they become spaces).
    pub fn status(&self, line: &str) {
        self.send_logged(&format!("STATUS={}", one_line(line)));
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send_logged("WATCHDOG=1");
    }
}

/// `NOTIFY_SOCKET` as an address: `/path` or `@abstract-name`.
fn address(value: &OsString) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(value),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only absolute paths and @abstract names are supported",
        )),
    }
}

/// Half of `WATCHDOG_USEC` when it is a positive number and `WATCHDOG_PID` is unset or names
/// `pid` (sd_watchdog_enabled(3)).
fn watchdog_interval(
    usec: Option<&OsString>,
    for_pid: Option<&OsString>,
    pid: u32,
) -> Option<Duration> {
    let usec = usec?;
    let usec = match usec.to_str().and_then(|s| s.trim().parse::<u64>().ok()) {
        Some(n) if n > 0 => n,
        _ => {
            warn!(watchdog_usec = ?usec, "ignoring a WATCHDOG_USEC that is not a positive number");
            return None;
        }
    };
    if let Some(for_pid) = for_pid.filter(|p| !p.is_empty()) {
        match for_pid.to_str().and_then(|s| s.trim().parse::<u32>().ok()) {
            Some(p) if p == pid => {}
            Some(_) => {
                debug!("WATCHDOG_PID names another process; no watchdog pings");
                return None;
            }
            None => {
                warn!(watchdog_pid = ?for_pid, "ignoring the watchdog: WATCHDOG_PID is not a pid");
                return None;
            }
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

fn one_line(line: &str) -> String {
    line.replace(['\n', '\r'], " ")
}

static GLOBAL: OnceLock<Notifier> = OnceLock::new();

/// The process's notifier. The first call reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and
/// `WATCHDOG_PID` and removes them from the environment; `serve` calls it before it starts
/// anything that could spawn a child.
pub fn init() -> &'static Notifier {
    GLOBAL.get_or_init(|| {
        const VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];
        let [socket, usec, pid] = VARS.map(std::env::var_os);
        for var in VARS {
            // Edition 2021: safe to call. Done once, before the daemon spawns children or
            // starts tasks that read the environment.
            std::env::remove_var(var);
        }
        Notifier::from_vars(
            socket.as_ref(),
            usec.as_ref(),
            pid.as_ref(),
            std::process::id(),
        )
    })
}

/// `READY=1`: the reload is done (the lead's SIGHUP path calls this after [`reloading`]).
pub fn ready() {
    init().ready();
}

/// `RELOADING=1` + `MONOTONIC_USEC=`, in one datagram: a reload starts.
pub fn reloading() {
    init().reloading();
}

/// `STOPPING=1`.
pub fn stopping() {
    init().stopping();
}

/// `STATUS=line`.
pub fn status(line: &str) {
    init().status(line);
}

/// The one-line `STATUS=` summary: "4 apps: 3 ready, 1 failing" (states with no app left out,
/// in the order an operator reads them: good, in progress, bad).
pub fn summary(states: impl IntoIterator<Item = AppState>) -> String {
    const ORDER: [AppState; 6] = [
        AppState::Ready,
        AppState::Refreshing,
        AppState::Pending,
        AppState::Failing,
        AppState::Expired,
        AppState::NeedsLogin,
    ];
    let mut counts = [0usize; ORDER.len()];
    let mut total = 0;
    for state in states {
        total += 1;
        if let Some(i) = ORDER.iter().position(|s| *s == state) {
            counts[i] += 1;
        }
    }
    if total == 0 {
        return "no apps configured".into();
    }
    let parts: Vec<String> = ORDER
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect();
    let noun = if total == 1 { "app" } else { "apps" };
    format!("{total} {noun}: {}", parts.join(", "))
}

/// The summary of `broker`'s apps now.
pub fn broker_summary(broker: &Broker) -> String {
    let now = broker.clock().now();
    summary(
        broker
            .apps()
            .iter()
            .map(|app| app.snapshot().effective_state(now)),
    )
}

/// Every `every`, asks `alive`; sends a ping (`ping`) only when it says yes. The first round
/// is at once. A `no` is logged once per stretch; pings resume when the answer comes back.
pub async fn watchdog<P, F>(every: Duration, mut alive: P, mut ping: impl FnMut())
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
pub struct Supervisor {
    notifier: &'static Notifier,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// Sends `READY=1` with the first `STATUS=`, then starts the watchdog (when
    /// `WATCHDOG_USEC` applies) and the status updates. A no-op without `NOTIFY_SOCKET`.
    pub fn start(broker: Arc<Broker>) -> Supervisor {
        let notifier = init();
        let mut tasks = Vec::new();
        if notifier.is_active() {
            let mut line = broker_summary(&broker);
            notifier.send_logged(&format!("READY=1\nSTATUS={line}"));
            if let Some(every) = notifier.watchdog_every() {
                info!(
                    every_ms = every.as_millis() as u64,
                    "systemd watchdog on: pinging while the refresh tasks answer"
                );
                let broker = broker.clone();
                // An owner answers a ping at once; half the period leaves the other half for
                // the ping itself to arrive before systemd's deadline.
                let wait = every / 2;
                tasks.push(tokio::spawn(async move {
                    watchdog(
                        every,
                        || {
                            let broker = broker.clone();
                            async move { broker.alive(wait).await }
                        },
                        || notifier.watchdog(),
                    )
                    .await
                }));
            }
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(STATUS_EVERY);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let now = broker_summary(&broker);
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
    pub fn stopping(&mut self) {
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

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    fn recv(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(Some(&path.clone().into_os_string()), None, None, 1);
        assert!(n.is_active());
        n.ready();
        assert_eq!(recv(&listener), "READY=1");
        n.status("2 apps:\n1 ready");
        assert_eq!(recv(&listener), "STATUS=2 apps: 1 ready");
        n.stopping();
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn reloading_carries_the_monotonic_time_in_the_same_datagram() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::from_vars(Some(&path.clone().into_os_string()), None, None, 1);
        let before = crate::clock::monotonic_usec();
        n.reloading();
        let after = crate::clock::monotonic_usec();
        let message = recv(&listener);
        let lines: Vec<&str> = message.lines().collect();
        assert_eq!(lines.len(), 2, "{message}");
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(before <= usec && usec <= after, "{before} {usec} {after}");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("iamtokend-test-{}-{}", std::process::id(), line!());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::from_vars(Some(&os(&format!("@{name}"))), None, None, 1);
        n.watchdog();
        assert_eq!(recv(&listener), "WATCHDOG=1");
    }

    #[test]
    fn unset_or_unusable_notify_socket_is_a_no_op() {
        let n = Notifier::from_vars(None, Some(&os("1000000")), None, 1);
        assert!(!n.is_active());
        assert_eq!(n.watchdog_every(), None);
        n.ready();
        n.send("READY=1").unwrap();
        for bad in ["", "relative/path", "vsock:2:1234"] {
            let n = Notifier::from_vars(Some(&os(bad)), None, None, 1);
            assert!(!n.is_active(), "{bad:?}");
        }
        assert!(!Notifier::disabled().is_active());
    }

    #[test]
    fn sending_to_a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let n = Notifier::from_vars(Some(&path.into_os_string()), None, None, 1);
        assert!(n.send("READY=1").is_err());
        n.ready(); // logged, not fatal
    }

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled() {
        let usec = os("200000");
        let half = Some(Duration::from_millis(100));
        assert_eq!(watchdog_interval(Some(&usec), None, 42), half);
        assert_eq!(watchdog_interval(Some(&usec), Some(&os("")), 42), half);
        assert_eq!(watchdog_interval(Some(&usec), Some(&os("42")), 42), half);
        assert_eq!(watchdog_interval(Some(&usec), Some(&os("41")), 42), None);
        assert_eq!(watchdog_interval(Some(&usec), Some(&os("x")), 42), None);
        assert_eq!(watchdog_interval(None, None, 42), None);
        for bad in ["0", "-5", "soon", ""] {
            assert_eq!(watchdog_interval(Some(&os(bad)), None, 42), None, "{bad}");
        }
    }

    #[test]
    fn the_status_line_counts_states() {
        use AppState::*;
        assert_eq!(summary([]), "no apps configured");
        assert_eq!(summary([Ready]), "1 app: 1 ready");
        assert_eq!(
            summary([Failing, Ready, NeedsLogin, Ready, Ready]),
            "5 apps: 3 ready, 1 failing, 1 needs_login"
        );
        assert_eq!(
            summary([Expired, Pending, Refreshing]),
            "3 apps: 1 refreshing, 1 pending, 1 expired"
        );
    }

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
