//! What a client subcommand believes: only a server run by root, by us or by the daemon's
//! user (`--server-uid` for others); an answer within `--timeout`; an answer under 1 MiB; and,
//! without a configured socket, the user socket first, then the system one.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::support::{bin, TestEnv};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The binary as a client, with none of the environment that picks a socket or a trust.
async fn client(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args);
    for var in [
        "IAMTOKEND_SOCKET",
        "IAMTOKEND_CONFIG",
        "IAMTOKEND_TIMEOUT",
        "IAMTOKEND_SERVER_UID",
        "IAMTOKEND_TEST_SYSTEM_SOCKET",
        "RUNTIME_DIRECTORY",
        "XDG_RUNTIME_DIR",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("cli runs")
}

/// A server on `path` that reads each request and answers `answer`, or, when `None`, accepts
/// and never answers (a wedged or SIGSTOPped daemon).
fn fake_server(path: &Path, answer: Option<Vec<u8>>) -> tokio::task::JoinHandle<()> {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            if let Some(answer) = &answer {
                let _ = stream.write_all(answer).await;
            }
            held.push(stream);
        }
    })
}

fn one_line(out: &Output) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_never_answers_fails_within_the_timeout_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("wedged.sock");
    let server = fake_server(&socket, None);
    let s = socket.to_str().unwrap();
    for args in [
        vec![
            "--socket",
            s,
            "credential-process",
            "analytics",
            "--timeout",
            "1",
        ],
        vec!["--socket", s, "--timeout", "1", "status"],
        vec!["--socket", s, "token", "analytics", "--timeout", "1"],
    ] {
        let started = tokio::time::Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(20), client(&args, &[]))
            .await
            .expect("the client gives up by itself");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(out.status.code(), Some(3), "{args:?}: {out:?}");
        let line = one_line(&out);
        assert!(line.contains("did not answer within 1s"), "{line}");
    }
    // IAMTOKEND_TIMEOUT too.
    let out = client(
        &["--socket", s, "status"],
        &[("IAMTOKEND_TIMEOUT", Path::new("1"))],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_one_mib_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("big.sock");
    let body = format!(r#"{{"Version":1,"AccessKeyId":"{}"}}"#, "A".repeat(2 << 20));
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body.as_bytes());
    let server = fake_server(&socket, Some(answer));
    let out = client(
        &[
            "--socket",
            socket.to_str().unwrap(),
            "credential-process",
            "analytics",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(one_line(&out).contains("larger than 1024 KiB"));
    server.abort();
}

/// Kills the fake server when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An attacker (uid 65534) serving credential JSON on a socket path the client was pointed
/// at: `credential-process` refuses it, names the uid, prints nothing. `--server-uid` (or its
/// env) is the one way to believe such a server, which shows the fake really answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_process_refuses_a_server_run_by_another_uid() {
    if nix::unistd::geteuid().as_raw() != 0 {
        eprintln!("skipping: needs root to run the fake server as uid 65534");
        return;
    }
    if !Path::new("/usr/bin/python3").exists() || !Path::new("/usr/bin/setpriv").exists() {
        eprintln!("skipping: needs /usr/bin/python3 and /usr/bin/setpriv");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket = shared.join("iamtokend.sock");
    let script = r#"
import socket, sys
body = b'{"Version":1,"AccessKeyId":"ASIAPLANTED","SecretAccessKey":"planted-secret","SessionToken":"planted","Expiration":"2099-01-01T00:00:00Z"}'
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(8)
while True:
    c, _ = s.accept()
    try:
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    c.close()
"#;
    let _server = KillOnDrop(
        std::process::Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["/usr/bin/python3", "-c", script])
            .arg(&socket)
            .stdin(Stdio::null())
            .spawn()
            .expect("setpriv runs"),
    );
    wait_for(&socket).await;
    let s = socket.to_str().unwrap();

    let out = client(&["--socket", s, "credential-process", "analytics"], &[]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let line = one_line(&out);
    assert!(line.contains("uid 65534"), "{line}");
    assert!(!line.contains("planted"), "{line}");
    let out = client(&["--socket", s, "token", "analytics"], &[]).await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let out = client(
        &[
            "--socket",
            s,
            "--server-uid",
            "65534",
            "credential-process",
            "analytics",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stdout).contains("ASIAPLANTED"));
    let out = client(
        &["--socket", s, "credential-process", "analytics"],
        &[("IAMTOKEND_SERVER_UID", Path::new("65534"))],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// Waits until something listens on `path` (the file appears at bind, before listen).
async fn wait_for(path: &Path) {
    for _ in 0..200 {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

/// Neither the user socket (under an empty `$XDG_RUNTIME_DIR`) nor the system one answers:
/// exit 3, one line naming both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_socket_the_error_names_the_user_and_the_system_paths() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let system = dir.path().join("system/iamtokend.sock");
    let no_config = dir.path().join("none.toml");
    let args = ["--config", no_config.to_str().unwrap(), "status"];
    let out = client(
        &args,
        &[
            ("XDG_RUNTIME_DIR", &runtime),
            ("IAMTOKEND_TEST_SYSTEM_SOCKET", &system),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let line = one_line(&out);
    let user = runtime.join("iamtokend/iamtokend.sock");
    assert!(line.contains(&user.display().to_string()), "{line}");
    assert!(line.contains(&system.display().to_string()), "{line}");
    // The real system path, when this machine has no daemon there.
    let real: PathBuf = "/run/iamtokend/iamtokend.sock".into();
    if !real.exists() {
        let out = client(&args, &[("XDG_RUNTIME_DIR", &runtime)]).await;
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert!(one_line(&out).contains("/run/iamtokend/iamtokend.sock"));
    }
}

/// A login session sets `$XDG_RUNTIME_DIR` on a host that runs only the system service: the
/// client falls back to the system socket and finds the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_system_socket_is_found_when_the_user_one_is_absent() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    let runtime = env.path("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let no_config = env.path("none.toml");
    let out = client(
        &[
            "--config",
            no_config.to_str().unwrap(),
            "token",
            "analytics",
        ],
        &[
            ("XDG_RUNTIME_DIR", &runtime),
            ("IAMTOKEND_TEST_SYSTEM_SOCKET", &daemon.socket),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), daemon.token("analytics").await);
}
