//! Process hardening for the commands that hold secrets in memory (`serve`, `fetch`,
//! `token`, `credential-process`, `login`): no core dumps, and not dumpable.
//!
//! `prctl(PR_SET_DUMPABLE, 0)` stops other processes of the same uid from attaching with
//! ptrace or reading `/proc/PID/mem` and `/proc/PID/environ`, and stops the kernel from
//! writing a core file (including through a `core_pattern` pipe); `RLIMIT_CORE` 0 says the
//! same to anything that only looks at the limit. Both go through `nix`'s safe wrappers
//! rather than hand-written `libc` calls. Root can still read the process: that is the
//! kernel's rule, not ours to change.
//!
//! `serve` also raises its soft descriptor limit to the hard one ([`raise_fd_limit`]): every
//! connection, upstream call, assertion file and state write is a descriptor, and the usual
//! soft default of 1024 is far below what the server's connection limits and refresh work
//! need under a flood.

use nix::sys::prctl;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// What [`harden`] achieved, for one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hardened {
    /// `PR_GET_DUMPABLE` read back after setting it.
    pub(crate) dumpable: bool,
    /// Whether `RLIMIT_CORE` is now 0 (soft and hard).
    pub(crate) core_limit_zero: bool,
}

/// Makes the process non-dumpable and sets its core size limit to 0. Failures are not fatal
/// (a seccomp filter may forbid `prctl`); the result says what holds, and the caller logs it.
pub(crate) fn harden() -> Hardened {
    let _ = prctl::set_dumpable(false);
    let core_limit_zero = setrlimit(Resource::RLIMIT_CORE, 0, 0).is_ok();
    Hardened {
        dumpable: prctl::get_dumpable().unwrap_or(true),
        core_limit_zero,
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns (soft before, soft now). The
/// hard limit is the service manager's (`LimitNOFILE=`) or the shell's to set.
pub(crate) fn raise_fd_limit() -> nix::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, getrlimit(Resource::RLIMIT_NOFILE)?.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hardens the test process itself: harmless for the other tests (nothing here dumps core
    /// or is traced), and the only way to read the result back.
    #[test]
    fn harden_sets_both() {
        let h = harden();
        assert_eq!(
            h,
            Hardened {
                dumpable: false,
                core_limit_zero: true
            }
        );
        assert_eq!(
            nix::sys::resource::getrlimit(Resource::RLIMIT_CORE).unwrap(),
            (0, 0)
        );
    }

    /// Raises this test process's own soft limit (harmless: only more descriptors allowed).
    #[test]
    fn the_soft_descriptor_limit_becomes_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let (_, now) = raise_fd_limit().unwrap();
        assert_eq!(now, hard);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
