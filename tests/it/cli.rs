//! Client subcommands: only the requested output on stdout, exit codes 0/1/2/3.

use std::process::Command;

use crate::support::{bin, TestEnv};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn token_status_refresh_and_exit_codes() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    env.authcode_app("portal", "http://127.0.0.1:8400/callback");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;

    let out = daemon.cli(&["token", "analytics", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["token_type"], "Bearer");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let out = daemon.cli(&["token", "analytics", "--min-ttl", "60"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().count(), 1);

    // A failure the daemon reports: exit 1, one line on stderr, nothing on stdout.
    let out = daemon.cli(&["token", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
    let out = daemon.cli(&["token", "portal"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("login"), "{}", text(&out.stderr));

    // status: a table with a row per app; exit 1 because portal is not ready.
    let out = daemon.cli(&["status"]);
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(table.lines().next().unwrap().starts_with("APP"));
    assert!(
        table.contains("analytics") && table.contains("ready"),
        "{table}"
    );
    assert!(
        table.contains("portal") && table.contains("needs_login"),
        "{table}"
    );
    let out = daemon.cli(&["status", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["apps"].as_array().unwrap().len(), 2);

    let out = daemon.cli(&["refresh", "analytics"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty());

    // Usage error: exit 2.
    let out = daemon.cli(&["token"]);
    assert_eq!(out.status.code(), Some(2));
    let out = daemon.cli(&["token", "Bad/Name"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn unreachable_daemon_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["--socket"])
        .arg(dir.path().join("none.sock"))
        .args(["token", "analytics"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
}
