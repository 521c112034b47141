//! Socket activation (sd_listen_fds(3)): when the service manager passed the listening socket
//! (`LISTEN_PID` = this process, `LISTEN_FDS` = 1, the socket at fd 3), the daemon serves on it
//! instead of binding, and leaves the socket file alone on exit (it belongs to the `.socket`
//! unit, which keeps listening while the daemon restarts).
//!
//! The variables are removed from the environment once read, whatever they said, so children
//! (`assertion_command`) never take them for their own.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// The first passed descriptor (SD_LISTEN_FDS_START).
const LISTEN_FDS_START: RawFd = 3;

/// What `LISTEN_*` said, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Passed {
    /// The descriptor to listen on.
    pub(crate) fd: RawFd,
    /// Its `LISTEN_FDNAMES` name (the socket unit's `FileDescriptorName=`), if given.
    pub(crate) name: Option<String>,
}

/// The passed listener, ready for the server.
#[derive(Debug)]
pub(crate) struct Activated {
    /// Nonblocking, registered with the runtime.
    pub(crate) listener: tokio::net::UnixListener,
    /// The socket's path, when it has one (an abstract socket does not).
    pub(crate) path: Option<PathBuf>,
    /// The descriptor's name from `LISTEN_FDNAMES`.
    pub(crate) name: Option<String>,
}

/// Why the passed socket cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ActivationError {
    /// `LISTEN_PID` / `LISTEN_FDS` are not numbers.
    #[error("socket activation: {0}")]
    BadEnvironment(String),
    /// Not exactly one descriptor.
    #[error("socket activation passed {0} sockets; iamtokend listens on exactly one (one ListenStream= in the .socket unit)")]
    Count(u32),
    /// fd 3 is not a listening Unix stream socket.
    #[error("socket activation: fd {fd} is not a listening Unix stream socket ({why}); use ListenStream=/path in the .socket unit")]
    WrongKind {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong with it.
        why: String,
    },
    /// A system call on the descriptor failed.
    #[error("socket activation: fd {fd}: {source}")]
    Io {
        /// The descriptor.
        fd: RawFd,
        /// The error.
        source: io::Error,
    },
}

/// Reads `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` for process `pid`. `Ok(None)`: not
/// activated (unset, another process's, or zero descriptors).
pub(crate) fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    pid: u32,
) -> Result<Option<Passed>, ActivationError> {
    let Some(listen_pid) = listen_pid else {
        return Ok(None);
    };
    let for_pid: u32 = listen_pid.trim().parse().map_err(|_| {
        ActivationError::BadEnvironment(format!("LISTEN_PID={listen_pid:?} is not a pid"))
    })?;
    if for_pid != pid {
        return Ok(None);
    }
    let Some(listen_fds) = listen_fds else {
        return Ok(None);
    };
    let count: u32 = listen_fds.trim().parse().map_err(|_| {
        ActivationError::BadEnvironment(format!("LISTEN_FDS={listen_fds:?} is not a number"))
    })?;
    match count {
        0 => Ok(None),
        1 => Ok(Some(Passed {
            fd: LISTEN_FDS_START,
            name: listen_fdnames
                .and_then(|names| names.split(':').next())
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
        })),
        n => Err(ActivationError::Count(n)),
    }
}

/// Set once the passed descriptor has been wrapped: it is owned by that listener, and a
/// second wrap would close it twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// The socket the service manager passed, if any. Reads and removes `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES`; must run inside the tokio runtime.
pub(crate) fn take() -> Result<Option<Activated>, ActivationError> {
    const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];
    let [pid, fds, names] = VARS.map(|v| std::env::var(v).ok());
    for var in VARS {
        // Edition 2021: safe to call; done at start-up, before any child is spawned.
        std::env::remove_var(var);
    }
    let passed = match parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )? {
        Some(p) => p,
        None => return Ok(None),
    };
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    let fd = passed.fd;
    check_listening_unix_stream(fd)?;
    let io_err = |source| ActivationError::Io { fd, source };
    set_cloexec(fd).map_err(io_err)?;
    // SAFETY: fd 3 was passed to this process by the service manager for it to listen on
    // (LISTEN_PID names us), it was just checked to be a listening Unix stream socket, and
    // `TAKEN` makes this the only owner: the listener closes it on drop.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_listener.set_nonblocking(true).map_err(io_err)?;
    let path = std_listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.to_path_buf()));
    let listener = tokio::net::UnixListener::from_std(std_listener).map_err(io_err)?;
    Ok(Some(Activated {
        listener,
        path,
        name: passed.name,
    }))
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

fn check_listening_unix_stream(fd: RawFd) -> Result<(), ActivationError> {
    let wrong = |why: &str| ActivationError::WrongKind {
        fd,
        why: why.to_owned(),
    };
    let domain = sockopt(fd, libc::SO_DOMAIN).map_err(|e| wrong(&e.to_string()))?;
    if domain != libc::AF_UNIX {
        return Err(wrong("not AF_UNIX"));
    }
    let kind = sockopt(fd, libc::SO_TYPE).map_err(|e| wrong(&e.to_string()))?;
    if kind != libc::SOCK_STREAM {
        return Err(wrong("not SOCK_STREAM"));
    }
    let listening = sockopt(fd, libc::SO_ACCEPTCONN).map_err(|e| wrong(&e.to_string()))?;
    if listening == 0 {
        return Err(wrong("not listening"));
    }
    Ok(())
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
        assert_eq!(parse(None, None, None, 7).unwrap(), None);
        assert_eq!(parse(None, Some("1"), None, 7).unwrap(), None);
        assert_eq!(parse(Some("8"), Some("1"), None, 7).unwrap(), None);
        assert_eq!(parse(Some("7"), None, None, 7).unwrap(), None);
        assert_eq!(parse(Some("7"), Some("0"), None, 7).unwrap(), None);
    }

    #[test]
    fn one_passed_socket_is_fd_3() {
        assert_eq!(
            parse(Some("7"), Some("1"), None, 7).unwrap(),
            Some(Passed { fd: 3, name: None })
        );
        assert_eq!(
            parse(Some("7"), Some("1"), Some("iamtokend.socket"), 7).unwrap(),
            Some(Passed {
                fd: 3,
                name: Some("iamtokend.socket".into())
            })
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let err = parse(Some("seven"), Some("1"), None, 7).unwrap_err();
        assert!(err.to_string().contains("LISTEN_PID"), "{err}");
        let err = parse(Some("7"), Some("many"), None, 7).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDS"), "{err}");
        let err = parse(Some("7"), Some("2"), None, 7).unwrap_err();
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn only_a_listening_unix_stream_socket_is_accepted() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        check_listening_unix_stream(listener.as_raw_fd()).unwrap();
        let datagram = std::os::unix::net::UnixDatagram::bind(dir.path().join("d")).unwrap();
        let err = check_listening_unix_stream(datagram.as_raw_fd()).unwrap_err();
        assert!(err.to_string().contains("SOCK_STREAM"), "{err}");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = check_listening_unix_stream(tcp.as_raw_fd()).unwrap_err();
        assert!(err.to_string().contains("AF_UNIX"), "{err}");
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(check_listening_unix_stream(file.as_raw_fd()).is_err());
    }
}
