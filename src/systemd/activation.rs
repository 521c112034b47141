//! Socket activation (sd_listen_fds(3)): when the service manager passed the listening
//! sockets (`LISTEN_PID` = this process, `LISTEN_FDS` = 1 or 2, from fd 3 on), the daemon
//! serves on them instead of binding, and leaves the socket file alone on exit (it belongs to
//! the `.socket` unit, which keeps listening while the daemon restarts).
//!
//! What each descriptor is for is told by its kind, not its order: the Unix stream socket is
//! the API socket (exactly one is required), a TCP socket on a loopback address is the
//! credentials endpoint's port (at most one; `[server] credentials_listen` must be set, which
//! is what turns the endpoint on). Anything else is a start-up error naming the descriptor.
//!
//! The variables are removed from the environment once read, whatever they said, so children
//! (`assertion_command`) never take them for their own.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// The first passed descriptor (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

/// Most descriptors taken: the Unix socket and the credentials endpoint's port.
const MAX_PASSED: u32 = 2;

/// One passed descriptor, as `LISTEN_*` named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Passed {
    /// The descriptor to listen on.
    pub(crate) fd: RawFd,
    /// Its `LISTEN_FDNAMES` name (the socket unit's `FileDescriptorName=`), if given.
    pub(crate) name: Option<String>,
}

/// The passed listeners, ready for the servers.
#[derive(Debug)]
pub(crate) struct Activated {
    /// The API socket: nonblocking, registered with the runtime.
    pub(crate) listener: tokio::net::UnixListener,
    /// The socket's path, when it has one (an abstract socket does not).
    pub(crate) path: Option<PathBuf>,
    /// The descriptor's name from `LISTEN_FDNAMES`.
    pub(crate) name: Option<String>,
    /// The credentials endpoint's port, when a loopback TCP socket was passed too.
    pub(crate) credentials: Option<(tokio::net::TcpListener, SocketAddr)>,
}

/// Why the passed sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActivationError {
    /// `LISTEN_PID` / `LISTEN_FDS` are not numbers.
    #[error("socket activation: {0}")]
    BadEnvironment(String),
    /// More descriptors than the daemon has uses for.
    #[error("socket activation passed {0} sockets; iamtokend takes one Unix socket (ListenStream=/path) and at most one loopback TCP port for the credentials endpoint (ListenStream=127.0.0.1:PORT)")]
    Count(u32),
    /// A descriptor that is neither a listening Unix stream socket nor a listening loopback
    /// TCP socket, or a second one of a kind.
    #[error("socket activation: fd {fd} {why}")]
    WrongKind {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong with it.
        why: String,
    },
    /// No Unix socket among the passed ones.
    #[error("socket activation passed no Unix socket (only a TCP port); add ListenStream=/run/iamtokend/iamtokend.sock to the .socket unit")]
    NoUnixSocket,
    /// A system call on the descriptor failed.
    #[error("socket activation: fd {fd}: {source}")]
    Io {
        /// The descriptor.
        fd: RawFd,
        /// The error.
        source: io::Error,
    },
}

/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` for process `pid`. Empty: not
/// activated (unset, another process's, or zero descriptors).
pub(crate) fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> Result<Vec<Passed>, ActivationError> {
    let Some(listen_pid) = listen_pid else {
        return Ok(Vec::new());
    };
    let for_pid: u32 = listen_pid.trim().parse().map_err(|_| {
        ActivationError::BadEnvironment(format!("LISTEN_PID={listen_pid:?} is not a pid"))
    })?;
    if for_pid != pid {
        return Ok(Vec::new());
    }
    let Some(listen_fds) = listen_fds else {
        return Ok(Vec::new());
    };
    let count: u32 = listen_fds.trim().parse().map_err(|_| {
        ActivationError::BadEnvironment(format!("LISTEN_FDS={listen_fds:?} is not a number"))
    })?;
    if count > MAX_PASSED {
        return Err(ActivationError::Count(count));
    }
    let mut names = listen_fdnames.unwrap_or("").split(':');
    Ok((0..count)
        .map(|i| Passed {
            fd: LISTEN_FDS_START + i as RawFd,
            name: names.next().filter(|n| !n.is_empty()).map(str::to_owned),
        })
        .collect())
}

/// Set once the passed descriptors have been wrapped: they are owned by their listeners, and
/// a second wrap would close them twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The sockets the service manager passed, if any. Reads and removes `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES`; must run inside the tokio runtime.
pub(crate) fn take() -> Result<Option<Activated>, ActivationError> {
    const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
    let [pid, fds, names] = VARS.map(|v| std::env::var(v).ok());
    for var in VARS {
        // Edition 2021: safe to call; done at start-up, before any child is spawned.
        std::env::remove_var(var);
    }
    let passed = parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?;
    if passed.is_empty() || TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let mut unix: Option<(RawFd, Option<String>)> = None;
    let mut tcp: Option<RawFd> = None;
    for p in passed {
        let slot_taken = |what: &str| ActivationError::WrongKind {
            fd: p.fd,
            why: format!("is a second {what}; pass one"),
        };
        match kind_of(p.fd)? {
            Kind::Unix if unix.is_some() => return Err(slot_taken("Unix socket")),
            Kind::Unix => unix = Some((p.fd, p.name)),
            Kind::Tcp if tcp.is_some() => return Err(slot_taken("TCP port")),
            Kind::Tcp => tcp = Some(p.fd),
        }
    }
    let Some((fd, name)) = unix else {
        return Err(ActivationError::NoUnixSocket);
    };
    let io_err = |fd| move |source| ActivationError::Io { fd, source };
    set_cloexec(fd).map_err(io_err(fd))?;
    // SAFETY: the fd was passed to this process by the service manager for it to listen on
    // (LISTEN_PID names us), it was just checked to be a listening Unix stream socket, and
    // `TAKEN` makes this the only owner: the listener closes it on drop.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true).map_err(io_err(fd))?;
    let path = std_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
    let listener = tokio::net::UnixListener::from_std(std_listener).map_err(io_err(fd))?;
    let credentials = match tcp {
        None => None,
        Some(fd) => {
            set_cloexec(fd).map_err(io_err(fd))?;
            // SAFETY: as above, checked to be a listening TCP socket; owned by this listener
            // alone.
            let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            std_listener.set_nonblocking(true).map_err(io_err(fd))?;
            let addr = std_listener.local_addr().map_err(io_err(fd))?;
            if !addr.ip().is_loopback() {
                return Err(ActivationError::WrongKind {
                    fd,
                    why: format!("is a TCP port on {addr}, not on a loopback address; the credentials endpoint listens on loopback only (ListenStream=127.0.0.1:PORT)"),
                });
            }
            let listener = tokio::net::TcpListener::from_std(std_listener).map_err(io_err(fd))?;
            Some((listener, addr))
        }
    };
    Ok(Some(Activated {
        listener,
        path,
        name,
        credentials,
    }))
}

/// What a passed descriptor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A listening Unix stream socket: the API socket.
    Unix,
    /// A listening TCP socket: the credentials endpoint's port.
    Tcp,
}

fn sockopt(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given; a bad fd is an error
    // return, not undefined behaviour.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn kind_of(fd: RawFd) -> Result<Kind, ActivationError> {
    let wrong = |why: &str| {
        ActivationError::WrongKind {
        fd,
        why: format!("is not a listening Unix stream socket or loopback TCP socket ({why}); use ListenStream=/path or ListenStream=127.0.0.1:PORT in the .socket unit"),
    }
    };
    let domain = sockopt(fd, libc::SO_DOMAIN).map_err(|e| wrong(&e.to_string()))?;
    let kind = match domain {
        libc::AF_UNIX => Kind::Unix,
        libc::AF_INET | libc::AF_INET6 => Kind::Tcp,
        _ => return Err(wrong("not AF_UNIX, AF_INET or AF_INET6")),
    };
    let socket_type = sockopt(fd, libc::SO_TYPE).map_err(|e| wrong(&e.to_string()))?;
    if socket_type != libc::SOCK_STREAM {
        return Err(wrong("not SOCK_STREAM"));
    }
    let listening = sockopt(fd, libc::SO_ACCEPTCONN).map_err(|e| wrong(&e.to_string()))?;
    if listening == 0 {
        return Err(wrong("not listening"));
    }
    Ok(kind)
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd we own; failure is reported through the return value.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_activated_unless_the_variables_name_this_process() {
        assert_eq!(parse(None, None, None, 7).unwrap(), []);
        assert_eq!(parse(None, Some("1"), None, 7).unwrap(), []);
        assert_eq!(parse(Some("8"), Some("1"), None, 7).unwrap(), []);
        assert_eq!(parse(Some("7"), None, None, 7).unwrap(), []);
        assert_eq!(parse(Some("7"), Some("0"), None, 7).unwrap(), []);
    }

    #[test]
    fn passed_sockets_start_at_fd_3_with_their_names() {
        assert_eq!(
            parse(Some("7"), Some("1"), None, 7).unwrap(),
            [Passed { fd: 3, name: None }]
        );
        assert_eq!(
            parse(Some("7"), Some("1"), Some("iamtokend.socket"), 7).unwrap(),
            [Passed {
                fd: 3,
                name: Some("iamtokend.socket".into())
            }]
        );
        assert_eq!(
            parse(Some("7"), Some("2"), Some("api:credentials"), 7).unwrap(),
            [
                Passed {
                    fd: 3,
                    name: Some("api".into())
                },
                Passed {
                    fd: 4,
                    name: Some("credentials".into())
                }
            ]
        );
        // Fewer names than descriptors: the rest have none.
        assert_eq!(
            parse(Some("7"), Some("2"), Some("api"), 7).unwrap()[1],
            Passed { fd: 4, name: None }
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = parse(Some("seven"), Some("1"), None, 7).unwrap_err();
        assert!(err.to_string().contains("LISTEN_PID"), "{err}");
        let err = parse(Some("7"), Some("many"), None, 7).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDS"), "{err}");
        let err = parse(Some("7"), Some("3"), None, 7).unwrap_err();
        assert!(err.to_string().contains("passed 3 sockets"), "{err}");
        assert!(
            err.to_string().contains("at most one loopback TCP port"),
            "{err}"
        );
    }

    #[test]
    fn a_descriptor_is_told_by_its_kind() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        assert_eq!(kind_of(listener.as_raw_fd()).unwrap(), Kind::Unix);
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(kind_of(tcp.as_raw_fd()).unwrap(), Kind::Tcp);
        let datagram = std::os::unix::net::UnixDatagram::bind(dir.path().join("d")).unwrap();
        let err = kind_of(datagram.as_raw_fd()).unwrap_err();
        assert!(err.to_string().contains("SOCK_STREAM"), "{err}");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = kind_of(udp.as_raw_fd()).unwrap_err();
        assert!(err.to_string().contains("SOCK_STREAM"), "{err}");
        let connected = std::os::unix::net::UnixStream::connect(dir.path().join("s")).unwrap();
        let err = kind_of(connected.as_raw_fd()).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(kind_of(file.as_raw_fd()).is_err());
    }
}
