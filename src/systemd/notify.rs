//! systemd's notification protocol (sd_notify(3)), spoken by the daemon itself: `READY=1` once
//! the socket is bound and the config loaded (not waiting for tokens), `RELOADING=1` with
//! `MONOTONIC_USEC=` around a reload, `STOPPING=1`, a one-line `STATUS=`, and `WATCHDOG=1`.
//!
//! Written against `$NOTIFY_SOCKET` with std rather than with the `sd-notify` crate: that crate
//! connects to the variable's value as a file path, so an abstract-namespace address
//! (`@name`, which sd_notify(3) allows) fails, and its `watchdog_enabled` requires
//! `WATCHDOG_PID`, which sd_watchdog_enabled(3) makes optional. The protocol is one datagram of
//! `KEY=VALUE` lines; this file is all of it.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd as `Type=notify`) every call is a no-op.
//! The variables are read once, by [`Notifier::from_environment`], and removed from the
//! environment; there is no process-global notifier: `serve` builds one and passes it down.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use tracing::{debug, warn};

/// A connection to the service manager, or nothing.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// Where to send and the unbound socket to send from; `None`: not supervised.
    target: Option<(SocketAddr, UnixDatagram)>,
    /// Half of `WATCHDOG_USEC`, when the watchdog applies to this process.
    watchdog_every: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing.
    #[cfg(test)]
    pub(crate) fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog_every: None,
        }
    }

    /// From the values of `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, for process
    /// `pid`. A bad value is logged and that part disabled: the daemon still serves.
    pub(crate) fn from_vars(
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

    /// The process's notifier, from `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`,
    /// which it removes from the environment so that children (`assertion_command`) do not
    /// talk to systemd in the daemon's name. `serve` builds it once, before it starts anything
    /// that could spawn a child, and hands it to whatever sends.
    pub(crate) fn from_environment() -> Notifier {
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
    }

    /// Whether a service manager listens.
    pub(crate) fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1` (half of `WATCHDOG_USEC`), if the watchdog is on.
    pub(crate) fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// Sends one datagram of `KEY=VALUE` lines. `Ok` without sending when not supervised.
    pub(crate) fn send(&self, message: &str) -> io::Result<()> {
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
    pub(crate) fn send_logged(&self, message: &str) {
        if let Err(e) = self.send(message) {
            let what = message.lines().next().unwrap_or_default();
            warn!(message = what, error = %e, "cannot notify systemd");
        }
    }

    /// `READY=1`: startup or a reload finished.
    pub(crate) fn ready(&self) {
        self.send_logged("READY=1");
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` in the same datagram, as `Type=notify-reload`
    /// requires; follow with [`Notifier::ready`] once the reload is done (or rejected).
    pub(crate) fn reloading(&self) {
        self.send_logged(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::clock::monotonic_usec()
        ));
    }

    /// `STOPPING=1`.
    pub(crate) fn stopping(&self) {
        self.send_logged("STOPPING=1\nSTATUS=stopping");
    }

    /// `STATUS=line` (newlines would end the field: they become spaces).
    pub(crate) fn status(&self, line: &str) {
        self.send_logged(&format!("STATUS={}", one_line(line)));
    }

    /// `WATCHDOG=1`.
    pub(crate) fn watchdog(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
