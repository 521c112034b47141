//! Process basics: SIGTERM, stale and live sockets, `serve --dev`.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{bin, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_removes_the_socket_and_exits_0() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    let socket = daemon.socket.clone();
    assert!(socket.exists());
    let status = daemon.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!socket.exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    // A dead daemon's socket file: bound, then the listener dropped without unlinking.
    drop(std::os::unix::net::UnixListener::bind(env.socket()).unwrap());
    assert!(env.socket().exists());
    let first = env.daemon().await;
    // A second daemon on the same socket must refuse, not steal it.
    let second = env.spawn_daemon(&[]);
    let status = second.wait_exit();
    assert_eq!(status.code(), Some(1));
    let (s, _) = first.get("/v1/health").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_mode_is_applied() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new(3600).await;
    env.write_main("[server]\n");
    // write_main puts [server] first; rewrite with a mode.
    std::fs::write(
        env.main_file(),
        format!(
            "[server]\nsocket = \"{}\"\nsocket_mode = \"0600\"\n[state]\ndir = \"{}\"\n",
            env.socket().display(),
            env.path("state").display()
        ),
    )
    .unwrap();
    env.jwt_app("analytics");
    let _daemon = env.daemon().await;
    let mode = std::fs::metadata(env.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_runs_every_demo_app() {
    let runtime_dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args(["serve", "--dev"])
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .env_remove("IAMTOKEND_SOCKET")
        .env_remove("IAMTOKEND_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let socket = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.trim()
                .strip_prefix("socket:")
                .map(|s| s.trim().to_owned())
        })
        .expect("banner names the socket");
    let daemon_client = iamtokend::client::SocketClient::new(std::path::Path::new(&socket));
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(a) = daemon_client
            .request(http::Method::GET, "/v1/apps", None)
            .await
        {
            let apps = a.body["apps"].as_array().cloned().unwrap_or_default();
            if apps.len() == 4 && apps.iter().all(|a| a["state"] == "ready") {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = daemon_client
        .request(http::Method::GET, "/v1/apps/warehouse/token", None)
        .await
        .unwrap();
    let creds = daemon_client
        .request(http::Method::GET, "/v1/apps/analytics/credentials", None)
        .await
        .unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(ready, "not every demo app reached ready");
    assert_eq!(token.status, 200);
    assert!(token.body["access_token"].as_str().is_some());
    assert_eq!(creds.status, 200, "{}", creds.body);
    assert_eq!(creds.body["Version"], 1);
    assert_eq!(status.code(), Some(0));
    assert!(!std::path::Path::new(&socket).exists());
}

/// #14 item 1: another user pre-creates `$TMPDIR/iamtokend-dev-<PID>` for the next PIDs with
/// an app whose `assertion_command` is theirs. `serve --dev` must not load it (the marker
/// never appears) and must serve from a fresh directory of its own, mode 0700.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dev_ignores_dirs_planted_for_its_pid() {
    use nix::unistd::{Uid, User};
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    const WINDOW: u32 = 3000;

    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("planted-command-ran");
    // As root, the planted dirs belong to `nobody`, as the attacker's would.
    let attacker = Uid::effective()
        .is_root()
        .then(|| User::from_name("nobody").ok().flatten())
        .flatten();
    let planted_app = format!(
        "client_id = \"{}\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\n\
         grant = \"jwt-bearer\"\nassertion_command = [\"/bin/sh\", \"-c\", \"touch '{}'\"]\n",
        crate::support::client_id("planted"),
        marker.display()
    );
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // PIDs wrap to 300 past pid_max.
    let next = |i: u32| {
        let p = last + i;
        if p < pid_max {
            p
        } else {
            300 + (p - pid_max)
        }
    };
    let planted: std::collections::HashSet<u32> = (1..=WINDOW).map(next).collect();
    for pid in &planted {
        let dir = tmp.path().join(format!("iamtokend-dev-{pid}"));
        std::fs::create_dir_all(dir.join("apps.d")).unwrap();
        std::fs::write(dir.join("apps.d/planted.toml"), &planted_app).unwrap();
        for p in [&dir, &dir.join("apps.d")] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        if let Some(u) = &attacker {
            for p in [&dir, &dir.join("apps.d"), &dir.join("apps.d/planted.toml")] {
                chown(p, Some(u.uid.as_raw()), Some(u.gid.as_raw())).unwrap();
            }
        }
    }

    let mut child = Command::new(bin())
        .args(["serve", "--dev"])
        .env("TMPDIR", tmp.path())
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("IAMTOKEND_SOCKET")
        .env_remove("IAMTOKEND_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let socket = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.trim()
                .strip_prefix("socket:")
                .map(|s| s.trim().to_owned())
        });
    let dev_dir = socket
        .as_deref()
        .and_then(|s| std::path::Path::new(s).parent())
        .map(|p| p.to_path_buf());
    let meta = dev_dir
        .as_ref()
        .and_then(|d| std::fs::symlink_metadata(d).ok());
    // Every demo app ready means start-up has run each loaded app's grant once.
    let mut ready = false;
    if let Some(socket) = &socket {
        let client = iamtokend::client::SocketClient::new(std::path::Path::new(socket));
        for _ in 0..200 {
            if let Ok(a) = client.request(http::Method::GET, "/v1/apps", None).await {
                let apps = a.body["apps"].as_array().cloned().unwrap_or_default();
                let demo = ["analytics", "reports", "warehouse", "portal"];
                if demo.iter().all(|n| {
                    apps.iter()
                        .any(|a| a["name"] == *n && a["state"] == "ready")
                }) {
                    ready = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Give a planted command (started with the others) time to show.
    for _ in 0..20 {
        if marker.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();

    assert!(
        planted.contains(&pid),
        "the daemon's pid {pid} fell outside the {WINDOW} planted; the test proved nothing"
    );
    assert!(!marker.exists(), "the planted assertion_command ran");
    let dev_dir = dev_dir.expect("banner names the socket");
    let meta = meta.expect("the dev dir exists while serving");
    let name = dev_dir.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(dev_dir.parent(), Some(tmp.path()), "dev dir under $TMPDIR");
    assert!(name.starts_with("iamtokend-dev-"), "{name}");
    assert!(
        !planted.iter().any(|p| name == format!("iamtokend-dev-{p}")),
        "reused the planted {name}"
    );
    assert!(meta.is_dir(), "a real directory");
    assert_eq!(meta.mode() & 0o777, 0o700, "dev dir mode");
    assert_eq!(meta.uid(), Uid::effective().as_raw(), "dev dir owner");
    assert!(ready, "not every demo app reached ready");
    assert_eq!(status.code(), Some(0));
    assert!(!dev_dir.exists(), "dev dir left behind");
}
