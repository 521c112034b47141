//! Client subcommands: only the requested output on stdout, exit codes 0/1/2/3.

use std::process::Command;

use crate::support::{bin, TestEnv};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_status_refresh_and_exit_codes() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    env.authcode_app("portal", "http://127.0.0.1:8400/callback");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;

    let out = daemon
        .cli(&["token", "analytics", "--format", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["token_type"], "Bearer");
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let out = daemon.cli(&["token", "analytics", "--min-ttl", "60"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().count(), 1);

    // A failure the daemon reports: exit 1, one line on stderr, nothing on stdout.
    let out = daemon.cli(&["token", "nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("nope"), "{}", text(&out.stderr));
    let out = daemon.cli(&["token", "portal"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("login"), "{}", text(&out.stderr));

    // status: a table with a row per app; exit 1 because portal is not ready.
    let out = daemon.cli(&["status"]).await;
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
    let out = daemon.cli(&["status", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["apps"].as_array().unwrap().len(), 2);

    let out = daemon.cli(&["refresh", "analytics"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stdout.is_empty());

    // Usage error: exit 2.
    let out = daemon.cli(&["token"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = daemon.cli(&["token", "Bad/Name"]).await;
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

/// `check-config` on the shipped examples (valid) and on every broken fixture: exit 1 and
/// exactly the expected `FILE:LINE:COL: message` lines on stderr, all at once.
#[test]
fn check_config_reports_every_problem_with_file_line_col() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |dir: &std::path::Path| {
        Command::new(bin())
            .current_dir(dir)
            .args(["check-config", "--config", "iamtokend.toml"])
            .env_remove("IAMTOKEND_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(&root.join("config"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    for dir in std::fs::read_dir(root.join("tests/fixtures/config/valid")).unwrap() {
        let dir = dir.unwrap().path();
        let out = run(&dir);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            dir.display(),
            text(&out.stderr)
        );
    }
    let mut cases = 0;
    for dir in std::fs::read_dir(root.join("tests/fixtures/config/invalid")).unwrap() {
        let dir = dir.unwrap().path();
        let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
        let out = run(&dir);
        assert_eq!(out.status.code(), Some(1), "{}", dir.display());
        assert!(out.stdout.is_empty());
        let got: Vec<String> = text(&out.stderr)
            .lines()
            .map(|l| l.strip_prefix("iamtokend: ").unwrap_or(l).to_owned())
            .collect();
        let want: Vec<&str> = expected.lines().collect();
        assert_eq!(got, want, "{}", dir.display());
        cases += 1;
    }
    assert!(cases >= 12, "{cases} invalid fixtures");
}

/// `fetch` runs the grant once with no daemon: a token-exchange app runs its subject's grant
/// first. Tokens are masked unless `--show-secrets`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_runs_a_grant_once_without_a_daemon() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    env.exchange_app("warehouse", "analytics");
    let fetch = |args: &[&str]| {
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(env.main_file())
            .arg("fetch")
            .args(args);
        crate::support::daemon_env(&mut cmd, &env.options, env.dir.path());
        tokio::process::Command::from(cmd).output()
    };
    let out = fetch(&["warehouse", "--format", "json"]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["accessToken"].as_str().unwrap().starts_with("****"),
        "{json}"
    );
    assert_eq!(json["tokenType"], "Bearer");
    assert_eq!(json["expiresIn"], 3600);
    let grants: Vec<String> = env
        .sim
        .calls()
        .iter()
        .filter_map(|c| c.grant_type.clone())
        .collect();
    assert_eq!(
        grants,
        [
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ]
    );

    let out = fetch(&["analytics", "--show-secrets"]).await.unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.lines().any(|l| l.starts_with("accessToken: aoa-")),
        "{shown}"
    );

    let out = fetch(&["nope"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

/// `status` as a health check: exit 0 when every app is ready (table and JSON alike), non-zero
/// as soon as one is failing, and the failing one's row carries its last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_0_only_when_every_app_is_ready() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    env.refresh_app("reports", "seed-refresh-token");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    daemon.wait_state("reports", "ready", 10).await;
    for format in ["table", "json"] {
        let out = daemon.cli(&["status", "--format", format]).await;
        assert_eq!(out.status.code(), Some(0), "{format}: {out:?}");
        assert!(out.stderr.is_empty(), "{}", text(&out.stderr));
    }
    drop(daemon);

    // A config fault is retried only every max_backoff (30 s): the app stays failing.
    env.jwt_app("billing");
    env.sim.push_fault_for(
        &crate::support::client_id("billing"),
        iamtokend::sim::Fault::invalid_client(),
    );
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    daemon.wait_state("billing", "failing", 10).await;
    for format in ["table", "json"] {
        let out = daemon.cli(&["status", "--format", format]).await;
        assert_eq!(out.status.code(), Some(1), "{format}: {out:?}");
        assert!(
            text(&out.stderr).contains("not ready: billing"),
            "{}",
            text(&out.stderr)
        );
        let shown = text(&out.stdout);
        assert!(shown.contains("invalid_client"), "{shown}");
    }
}

/// The LAST REFRESH column tells when the last successful refresh finished, for every app and
/// in particular refresh-token apps: right after start it is now, a later forced refresh
/// moves it, and a failed refresh leaves it where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_when_each_app_last_refreshed() {
    use std::time::{Duration, SystemTime};
    #[allow(clippy::disallowed_methods)] // the test's own wall clock
    fn now() -> SystemTime {
        SystemTime::now()
    }
    let at = |row: &serde_json::Value, key: &str| {
        humantime::parse_rfc3339(row[key].as_str().unwrap_or_else(|| panic!("{key}: {row}")))
            .unwrap()
    };
    let row_of = |json: &serde_json::Value, app: &str| {
        json["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == app)
            .cloned()
            .unwrap()
    };
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    env.refresh_app("reports", "seed-refresh-token");
    let daemon = env.daemon().await;
    let started = now();
    daemon.wait_state("analytics", "ready", 10).await;
    daemon.wait_state("reports", "ready", 10).await;

    let out = daemon.cli(&["status", "--format", "json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut first = std::collections::BTreeMap::new();
    for app in ["analytics", "reports"] {
        let row = row_of(&json, app);
        let last = at(&row, "last_refresh_at");
        // Whole seconds: within a few seconds of when the daemon started.
        assert!(
            last + Duration::from_secs(1) >= started && last <= now(),
            "{row}"
        );
        // A 3600 s token issued then: expires an hour after, next refresh in between.
        let lifetime = at(&row, "expires_at").duration_since(last).unwrap();
        assert!(
            lifetime.as_secs().abs_diff(3600) <= 1,
            "{lifetime:?}: {row}"
        );
        let next = at(&row, "next_refresh_at");
        assert!(next > last && next < at(&row, "expires_at"), "{row}");
        first.insert(app, last);
    }
    let out = daemon.cli(&["status"]).await;
    let table = text(&out.stdout);
    assert!(table.lines().next().unwrap().contains("LAST REFRESH"));
    // App rows end at the blank line before the `state: ...` line.
    let rows: Vec<&str> = table
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    for line in rows {
        // Columns: APP GRANT STATE EXPIRES(in ..) NEXT REFRESH(in ..) LAST REFRESH(.. ago).
        assert!(line.contains(" ago"), "no last refresh shown: {table}");
    }

    // A forced refresh of the refresh-token app moves its LAST REFRESH forward.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let out = daemon.cli(&["refresh", "reports"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let refreshed = now();
    let (_, json) = daemon.get("/v1/apps").await;
    let row = row_of(&json, "reports");
    let last = at(&row, "last_refresh_at");
    assert!(last > first["reports"], "{row}");
    assert!(
        last + Duration::from_secs(2) >= refreshed && last <= now(),
        "{row}"
    );
    assert_eq!(
        at(&row_of(&json, "analytics"), "last_refresh_at"),
        first["analytics"]
    );

    // A failed refresh leaves it where it was and shows the error.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.sim.push_fault_for(
        &crate::support::client_id("reports"),
        iamtokend::sim::Fault::invalid_client(),
    );
    let out = daemon.cli(&["refresh", "reports"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let row = daemon.wait_state("reports", "failing", 5).await;
    assert_eq!(at(&row, "last_refresh_at"), last, "{row}");
    assert_eq!(row["last_error"]["code"], "invalid_client", "{row}");
}
