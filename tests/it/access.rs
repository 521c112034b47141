//! Per-app `[access]` over the socket (CONTRACT §3, §5): 403 `forbidden`, `/v1/apps` filtered,
//! `/v1/health` open, names resolved at load.
//!
//! The suite runs as one uid (root in CI). Root is admitted by the default policy but not by
//! an `[access]` that does not list it, so "deny" is tested by listing another user. The test
//! with a second, real peer uid (the CLI run as `nobody`) needs root to switch users: it lives
//! in `as_root`, is `#[ignore = "needs root"]` so a non-root run shows it as ignored rather
//! than passing it, and `.ci/run` (root) runs it with `--ignored as_root::`. The decision
//! itself is table-tested in `server::peer`.

use crate::support::{bin, strip_ansi, TestEnv};
use nix::unistd::{Gid, Group, Uid, User};

/// The test process's user and primary group names.
fn me() -> (String, String) {
    let user = User::from_uid(Uid::effective()).unwrap().unwrap();
    let group = Group::from_gid(Gid::effective()).unwrap().unwrap();
    (user.name, group.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlisted_peer_gets_403_and_does_not_see_the_app() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("open");
    env.jwt_app("locked");
    // `nobody` exists on every Linux; the test process is not it.
    env.append_app("locked", "[access]\nusers = [\"nobody\"]\n");
    let daemon = env.daemon().await;
    daemon.wait_state("open", "ready", 10).await;

    for (method, path) in [
        ("GET", "/v1/apps/locked/token"),
        ("GET", "/v1/apps/locked/token?min_ttl=60"),
        ("POST", "/v1/apps/locked/refresh"),
        ("GET", "/v1/apps/locked/credentials"),
    ] {
        let (status, body) = if method == "GET" {
            daemon.get(path).await
        } else {
            daemon.post(path, None).await
        };
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked"));
    }
    // The app list shows only what this peer may read; health is open.
    let (status, body) = daemon.get("/v1/apps").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["open"]);
    assert_eq!(daemon.get("/v1/health").await.0, 200);
    assert_eq!(daemon.get("/v1/apps/open/token").await.0, 200);

    // The CLI reports it as a failure (exit 1) with the daemon's sentence.
    let out = daemon.cli(&["token", "locked"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not read"));

    // The refusal is logged with the peer's uid and pid.
    let logs = strip_ansi(&daemon.logs());
    let line = logs
        .lines()
        .find(|l| l.contains("peer refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{logs}"));
    let uid = Uid::effective().as_raw();
    assert!(line.contains(&format!("uid={uid}")), "{line}");
    assert!(line.contains("pid="), "{line}");
    assert!(line.contains("app=\"locked\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_uid_user_or_group_is_admitted() {
    let env = TestEnv::new(3600).await;
    let (user, group) = me();
    let uid = Uid::effective().as_raw();
    for (name, access) in [
        ("by-uid", format!("uids = [{uid}]")),
        ("by-user", format!("users = [\"{user}\"]")),
        ("by-group", format!("groups = [\"{group}\"]")),
        (
            "by-any",
            format!("uids = [65533]\nusers = [\"nobody\"]\ngroups = [\"{group}\"]"),
        ),
    ] {
        env.jwt_app(name);
        env.append_app(name, &format!("[access]\n{access}\n"));
    }
    let daemon = env.daemon().await;
    for name in ["by-uid", "by-user", "by-group", "by-any"] {
        daemon.wait_state(name, "ready", 10).await;
        let (status, body) = daemon.get(&format!("/v1/apps/{name}/token")).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    assert_eq!(
        daemon.get("/v1/apps").await.1["apps"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_are_config_errors_with_positions() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("a");
    let lines = std::fs::read_to_string(env.path("apps.d/a.toml"))
        .unwrap()
        .lines()
        .count();
    env.append_app(
        "a",
        "[access]\nusers = [\"no-such-user-x7q\"]\ngroups = [\"root\", \"no-such-group-x7q\"]\n",
    );
    let out = tokio::process::Command::new(bin())
        .args(["check-config", "--config"])
        .arg(env.main_file())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = env.path("apps.d/a.toml");
    assert!(
        stderr.contains(&format!(
            "{}:{}:10: user `no-such-user-x7q` does not exist",
            file.display(),
            lines + 2
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}:{}:19: group `no-such-group-x7q` does not exist",
            file.display(),
            lines + 3
        )),
        "{stderr}"
    );
    // serve refuses the same config.
    let out = tokio::process::Command::new(bin())
        .args(["serve", "--config"])
        .arg(env.main_file())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// Tests that switch users: `#[ignore = "needs root"]`, run by `.ci/run` (as root) with
/// `cargo test --test it -- --ignored as_root::`.
mod as_root {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    use nix::unistd::{Group, Uid, User};

    use crate::support::{bin, TestEnv};

    /// Runs the CLI as `nobody` (uid/gid 65534 on Debian-likes, looked up by name) against
    /// `socket`.
    async fn as_nobody(socket: &std::path::Path, args: &[&str]) -> std::process::Output {
        let nobody = User::from_name("nobody").unwrap().expect("a `nobody` user");
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("--socket")
            .arg(socket)
            .args(args)
            .env_clear()
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw());
        tokio::process::Command::from(cmd)
            .output()
            .await
            .expect("cli runs as nobody")
    }

    /// A second real peer uid: the default policy refuses it, `[access]` naming it (or its
    /// group) admits it, and then root, unlisted, is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root"]
    async fn another_uid_is_judged_by_the_policy() {
        assert!(
            Uid::effective().is_root(),
            "needs root to run a peer under another uid"
        );
        let env = TestEnv::new(3600).await;
        // Let `nobody` reach the socket: the first fence is opened wide on purpose here.
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let main = std::fs::read_to_string(env.main_file()).unwrap();
        std::fs::write(
            env.main_file(),
            main.replacen("[server]\n", "[server]\nsocket_mode = \"0666\"\n", 1),
        )
        .unwrap();
        env.jwt_app("default");
        env.jwt_app("for-nobody");
        env.jwt_app("for-nogroup");
        let nogroup = User::from_name("nobody")
            .unwrap()
            .and_then(|u| Group::from_gid(u.gid).unwrap())
            .map(|g| g.name)
            .unwrap_or_else(|| "nogroup".to_owned());
        for (name, access) in [
            ("for-nobody", "users = [\"nobody\"]".to_owned()),
            ("for-nogroup", format!("groups = [\"{nogroup}\"]")),
        ] {
            env.append_app(name, &format!("[access]\n{access}\n"));
        }
        let daemon = env.daemon().await;
        // Root may not list the two [access] apps; wait on the one it may read, then on the
        // others through `nobody`.
        daemon.wait_state("default", "ready", 10).await;
        let out = as_nobody(&daemon.socket, &["token", "default"]).await;
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("may not read"));
        for name in ["for-nobody", "for-nogroup"] {
            let mut out = as_nobody(&daemon.socket, &["token", name]).await;
            for _ in 0..100 {
                if out.status.success() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                out = as_nobody(&daemon.socket, &["token", name]).await;
            }
            assert!(out.status.success(), "{name}: {out:?}");
            assert!(!out.stdout.is_empty());
            // Root is not implied once [access] exists.
            assert_eq!(
                daemon.get(&format!("/v1/apps/{name}/token")).await.0,
                403,
                "{name}"
            );
        }
        // nobody's app list is what it may read.
        let out = as_nobody(&daemon.socket, &["status", "--format", "json"]).await;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let text = status.to_string();
        assert!(
            text.contains("for-nobody") && text.contains("for-nogroup"),
            "{text}"
        );
        assert!(!text.contains("\"default\""), "{text}");
    }

    /// Runs the CLI under `setpriv ARGS` (uid, gid and groups as given) against `socket`.
    async fn under_setpriv(
        setpriv: &[&str],
        socket: &std::path::Path,
        args: &[&str],
    ) -> std::process::Output {
        tokio::process::Command::new("setpriv")
            .args(setpriv)
            .arg("--")
            .arg(bin())
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env_clear()
            .output()
            .await
            .expect("setpriv runs")
    }

    /// A daemon whose socket `nobody` can reach, serving `app` with `[access] groups = [group]`.
    async fn daemon_for_group(env: &TestEnv, group: &str) -> crate::support::Daemon {
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let main = std::fs::read_to_string(env.main_file()).unwrap();
        std::fs::write(
            env.main_file(),
            main.replacen("[server]\n", "[server]\nsocket_mode = \"0666\"\n", 1),
        )
        .unwrap();
        env.jwt_app("app");
        env.append_app("app", &format!("[access]\ngroups = [\"{group}\"]\n"));
        env.daemon().await
    }

    /// `nobody` with its primary group (which the user database gives it) dropped for another
    /// gid: `[access] groups = [nobody's group]` refuses it, since the process does not hold
    /// that group. With the group held, the same app is served (so the refusal is the group's).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root"]
    async fn a_group_the_caller_dropped_does_not_admit_it() {
        assert!(Uid::effective().is_root(), "needs root to switch users");
        let nobody = User::from_name("nobody").unwrap().expect("a `nobody` user");
        let group = Group::from_gid(nobody.gid)
            .unwrap()
            .expect("nobody's group");
        let env = TestEnv::new(3600).await;
        let daemon = daemon_for_group(&env, &group.name).await;
        let uid = format!("--reuid={}", nobody.uid);
        let held = format!("--regid={}", nobody.gid);
        // Any gid other than nobody's: the user database never lists it for nobody.
        let other = nobody.gid.as_raw() - 1;
        let dropped = format!("--regid={other}");
        let mut out = under_setpriv(
            &[&uid, &held, "--clear-groups"],
            &daemon.socket,
            &["token", "app"],
        )
        .await;
        for _ in 0..100 {
            if out.status.success() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            out = under_setpriv(
                &[&uid, &held, "--clear-groups"],
                &daemon.socket,
                &["token", "app"],
            )
            .await;
        }
        assert!(out.status.success(), "holding the group: {out:?}");
        let out = under_setpriv(
            &[&uid, &dropped, "--clear-groups"],
            &daemon.socket,
            &["token", "app"],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "with the group dropped: {out:?}"
        );
        assert!(out.stdout.is_empty());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("may not read"),
            "{out:?}"
        );
    }

    /// `nobody` holding, at runtime only (as systemd's `SupplementaryGroups=` gives it), a
    /// group the user database does not list for it is admitted by `[access]` naming it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root"]
    async fn a_group_held_only_at_runtime_admits_the_caller() {
        assert!(Uid::effective().is_root(), "needs root to switch users");
        let nobody = User::from_name("nobody").unwrap().expect("a `nobody` user");
        let name = std::ffi::CString::new(nobody.name.as_str()).unwrap();
        let listed = nix::unistd::getgrouplist(&name, nobody.gid).unwrap();
        // A group every Linux has that nobody is not a member of.
        let group = ["daemon", "adm", "bin", "sys", "root"]
            .into_iter()
            .filter_map(|n| Group::from_name(n).unwrap())
            .find(|g| !listed.contains(&g.gid))
            .expect("a group nobody is not in");
        let env = TestEnv::new(3600).await;
        let daemon = daemon_for_group(&env, &group.name).await;
        let uid = format!("--reuid={}", nobody.uid);
        let gid = format!("--regid={}", nobody.gid);
        let groups = format!("--groups={}", group.gid);
        // Without it: refused (403, whatever the app's state).
        let out = under_setpriv(
            &[&uid, &gid, "--clear-groups"],
            &daemon.socket,
            &["token", "app"],
        )
        .await;
        assert_eq!(out.status.code(), Some(1), "without the group: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("may not read"),
            "{out:?}"
        );
        let mut out =
            under_setpriv(&[&uid, &gid, &groups], &daemon.socket, &["token", "app"]).await;
        for _ in 0..100 {
            if out.status.success() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            out = under_setpriv(&[&uid, &gid, &groups], &daemon.socket, &["token", "app"]).await;
        }
        assert!(
            out.status.success(),
            "holding {} at runtime: {out:?}",
            group.name
        );
        assert!(!out.stdout.is_empty());
    }
}
