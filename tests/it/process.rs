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
