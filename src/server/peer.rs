//! Who is on the other end of a connection (SO_PEERCRED, read once at accept) and whether
//! an app's `[access]` admits them (CONTRACT §3, §5).
//!
//! The socket file's mode and group are the first fence; this is the second. The decision is
//! [`admits`], a pure function of the app's policy, the daemon's uid and the peer's ids, so
//! every rule is table-tested without sockets or other users.
//!
//! The peer's groups are those its process held when it connected: the gid of `SO_PEERCRED`
//! and the supplementary groups of `SO_PEERGROUPS` (Linux >= 4.13), both read once at accept.
//! So a group the process dropped (`setpriv --clear-groups`) does not count, and one it holds
//! only at runtime (systemd's `SupplementaryGroups=`) does. Only when the kernel cannot say
//! (`SO_PEERGROUPS` fails: an older kernel) do the supplementary groups come from the user
//! database instead (`getgrouplist` of the peer uid's name, off the async workers, at most
//! once per connection and only when some app's `[access]` names groups).

use std::os::fd::{AsRawFd, RawFd};

use tokio::net::UnixStream;
use tokio::sync::OnceCell;

use crate::config::AccessConfig;

/// uid 0.
const ROOT: u32 = 0;

/// The credentials of a connected peer, as the kernel reported them at `connect`.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Effective uid of the connecting process.
    pub(crate) uid: u32,
    /// Effective gid of the connecting process (its primary group for `[access] groups`).
    pub(crate) gid: u32,
    /// Process id, for the logs; `None` when the kernel did not say.
    pub(crate) pid: Option<i32>,
    /// Primary gid plus supplementary groups: the kernel's, set at accept, or (when it could
    /// not say) the uid's user's, looked up on first need.
    groups: OnceCell<Vec<u32>>,
}

impl Peer {
    /// A peer with these ids whose supplementary groups, if needed, come from the user
    /// database.
    pub(crate) fn new(uid: u32, gid: u32, pid: Option<i32>) -> Peer {
        Peer {
            uid,
            gid,
            pid,
            groups: OnceCell::new(),
        }
    }

    /// Reads SO_PEERCRED and SO_PEERGROUPS. An error from the first (not a Unix socket peer)
    /// is the caller's to refuse; when only the second fails, the groups come from the user
    /// database.
    pub(crate) fn of(stream: &UnixStream) -> std::io::Result<Peer> {
        let cred = stream.peer_cred()?;
        let peer = Peer::new(cred.uid(), cred.gid(), cred.pid());
        match peer_groups(stream.as_raw_fd()) {
            Ok(supplementary) => {
                let mut groups = supplementary;
                groups.push(peer.gid);
                groups.sort_unstable();
                groups.dedup();
                Ok(Peer {
                    groups: OnceCell::from(groups),
                    ..peer
                })
            }
            Err(e) => {
                tracing::debug!(uid = peer.uid, error = %e, "SO_PEERGROUPS failed; the peer's groups will come from the user database");
                Ok(peer)
            }
        }
    }

    /// The peer's groups: its primary gid and its supplementary groups (see the module doc
    /// for where those come from).
    pub(crate) async fn groups(&self) -> &[u32] {
        self.groups
            .get_or_init(|| async {
                let (uid, gid) = (self.uid, self.gid);
                // NSS may go to the network (LDAP, sssd): keep it off the async workers.
                tokio::task::spawn_blocking(move || groups_of(uid, gid))
                    .await
                    .unwrap_or_else(|_| vec![gid])
            })
            .await
    }
}

/// The supplementary groups the peer process held at `connect` (`SO_PEERGROUPS`).
fn peer_groups(fd: RawFd) -> std::io::Result<Vec<u32>> {
    const SIZE: usize = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * SIZE) as libc::socklen_t;
        // SAFETY: `groups` is valid for writes of `len` bytes and `len` for one socklen_t; the
        // kernel writes at most `len` bytes and sets `len` to what it wrote (or, on ERANGE, to
        // what it needs). A bad fd is an error return.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let needed = len as usize / SIZE;
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let e = std::io::Error::last_os_error();
        // NGROUPS_MAX is 65536: the kernel never asks for more.
        if e.raw_os_error() == Some(libc::ERANGE) && needed > groups.len() && needed <= 65536 {
            groups.resize(needed, 0);
            continue;
        }
        return Err(e);
    }
}

/// `gid` plus `getgrouplist(name of uid, primary gid of uid)`. A uid with no user entry
/// (a container's, a deleted user's) has only the gid the kernel reported.
fn groups_of(uid: u32, gid: u32) -> Vec<u32> {
    use nix::unistd::{getgrouplist, Uid, User};
    let mut groups = vec![gid];
    let user = match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user,
        Ok(None) => return groups,
        Err(e) => {
            tracing::warn!(uid, error = %e, "cannot look up the peer's user; only its primary group counts");
            return groups;
        }
    };
    let Ok(name) = std::ffi::CString::new(user.name.as_bytes()) else {
        return groups;
    };
    match getgrouplist(&name, user.gid) {
        Ok(list) => groups.extend(list.into_iter().map(|g| g.as_raw())),
        Err(e) => {
            tracing::warn!(uid, error = %e, "cannot list the peer's groups; only its primary group counts")
        }
    }
    groups.sort_unstable();
    groups.dedup();
    groups
}

/// Whether `access` needs the peer's group list to decide (so it is looked up only then).
pub(crate) fn needs_groups(access: Option<&AccessConfig>) -> bool {
    access.is_some_and(|a| !a.groups.is_empty())
}

/// Whether a peer with `uid` and `groups` may read an app with policy `access`, in a daemon
/// running as `daemon_uid`.
///
/// - No `[access]`: the daemon's own uid and root.
/// - `[access]` present: it is the whole list. The uid in `uids`, the uid of a name in
///   `users`, or one of `groups` among the peer's groups (primary or supplementary); root
///   only if listed like anyone else, and an empty `[access]` admits nobody.
pub(crate) fn admits(
    access: Option<&AccessConfig>,
    daemon_uid: u32,
    uid: u32,
    groups: &[u32],
) -> bool {
    match access {
        None => uid == daemon_uid || uid == ROOT,
        Some(access) => {
            access.uids.contains(&uid)
                || access.users.iter().any(|u| u.id == uid)
                || access.groups.iter().any(|g| groups.contains(&g.id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Principal;

    fn p(name: &str, id: u32) -> Principal {
        Principal {
            name: name.to_string(),
            id,
        }
    }

    #[test]
    fn default_policy_is_the_daemon_uid_and_root() {
        // Daemon as uid 1000: itself and root, nobody else, whatever their groups.
        assert!(admits(None, 1000, 1000, &[]));
        assert!(admits(None, 1000, 0, &[]));
        assert!(!admits(None, 1000, 1001, &[1000, 0]));
        // Daemon as root: root only.
        assert!(admits(None, 0, 0, &[]));
        assert!(!admits(None, 0, 1000, &[0]));
    }

    #[test]
    fn an_access_table_is_the_whole_list() {
        let access = AccessConfig {
            uids: vec![1000],
            users: vec![p("alice", 1001)],
            groups: vec![p("analytics", 500)],
        };
        let a = Some(&access);
        assert!(admits(a, 0, 1000, &[]), "listed uid");
        assert!(admits(a, 0, 1001, &[]), "listed user's uid");
        assert!(admits(a, 0, 2000, &[100, 500]), "a supplementary group");
        assert!(admits(a, 0, 2000, &[500]), "the primary group");
        assert!(!admits(a, 0, 2000, &[100]), "no listed id");
        // Root and the daemon's own uid are not implied once [access] exists.
        assert!(!admits(a, 0, 0, &[0]), "root, unlisted");
        assert!(!admits(a, 3000, 3000, &[3000]), "daemon uid, unlisted");
        // Listing root admits root.
        let with_root = AccessConfig {
            uids: vec![0],
            ..AccessConfig::default()
        };
        assert!(admits(Some(&with_root), 1000, 0, &[]));
        let root_user = AccessConfig {
            users: vec![p("root", 0)],
            ..AccessConfig::default()
        };
        assert!(admits(Some(&root_user), 1000, 0, &[]));
    }

    #[test]
    fn an_empty_access_table_admits_nobody() {
        let empty = AccessConfig::default();
        for uid in [0, 1000, 65534] {
            assert!(!admits(Some(&empty), uid, uid, &[uid]));
        }
    }

    #[test]
    fn groups_are_needed_only_when_listed() {
        assert!(!needs_groups(None));
        assert!(!needs_groups(Some(&AccessConfig {
            uids: vec![1],
            ..AccessConfig::default()
        })));
        assert!(needs_groups(Some(&AccessConfig {
            groups: vec![p("g", 5)],
            ..AccessConfig::default()
        })));
    }

    /// SO_PEERGROUPS on a socket pair names this process's own supplementary groups.
    #[tokio::test]
    async fn the_kernel_reports_the_peers_own_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        mine.sort_unstable();
        let mut got = peer_groups(a.as_raw_fd()).unwrap();
        got.sort_unstable();
        assert_eq!(got, mine);
        let peer = Peer::of(&a).unwrap();
        let mut expected = mine.clone();
        expected.push(nix::unistd::getegid().as_raw());
        expected.sort_unstable();
        expected.dedup();
        assert_eq!(peer.groups().await, expected);
        // Not a socket: an error, not a panic.
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(peer_groups(file.as_raw_fd()).is_err());
    }

    #[test]
    fn own_groups_include_the_primary_gid() {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let groups = groups_of(uid, gid);
        assert!(groups.contains(&gid), "{groups:?}");
        // A uid with no user entry keeps just the kernel's gid.
        assert_eq!(groups_of(u32::MAX - 7, 4242), vec![4242]);
    }
}
