//! File sinks (`[[sink]]`): the four contents and their modes, owner and group as root,
//! rewrites on refresh with readers never seeing a partial file, links never followed,
//! removal on expiry and on reload, a vanished directory retried and reported, and the
//! check-config errors at their positions.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::support::{bin, Daemon, TestEnv};

const ROLE: &str = "arn:aws:iam::123456789012:role/AnalyticsTIP";
const WITH_CONTEXT: &str = r#"["openid", "aws", "sts:identity_context"]"#;

/// A `[[sink]]` table.
fn sink(path: &Path, content: &str, extra: &str) -> String {
    format!(
        "\n[[sink]]\npath = \"{}\"\ncontent = \"{content}\"\n{extra}",
        path.display()
    )
}

/// The directory the sinks of a test go to: 0755, made now.
fn out_dir(env: &TestEnv) -> PathBuf {
    let dir = env.path("out");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A jwt-bearer app with a `[role]`, so every content is allowed.
fn role_app(env: &TestEnv, name: &str, extra: &str) {
    std::fs::write(
        env.path(&format!("{name}.jwt")),
        crate::support::assertion(name),
    )
    .unwrap();
    env.write_app(
        name,
        &format!(
            "grant = \"jwt-bearer\"\nscopes = {WITH_CONTEXT}\nassertion_file = \"{}\"\n\n[role]\narn = \"{ROLE}\"\nendpoint_url = \"{}\"\n{extra}",
            env.path(&format!("{name}.jwt")).display(),
            env.sim.endpoint_url()
        ),
    );
}

/// Waits until `check` holds of the file at `path` (its bytes, or `None` when absent).
async fn wait_file(
    daemon: &Daemon,
    path: &Path,
    secs: u64,
    what: &str,
    check: impl Fn(Option<&[u8]>) -> bool,
) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let bytes = std::fs::read(path).ok();
        if check(bytes.as_deref()) {
            return bytes;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{}: not {what} within {secs}s (now {:?})\nlog:\n{}",
                path.display(),
                bytes.map(|b| String::from_utf8_lossy(&b).into_owned()),
                daemon.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Waits (up to 5 s) until `dir` holds exactly `expected`: a write in progress has its
/// temporary file for an instant, a leftover one stays and fails this.
async fn wait_names(dir: &Path, expected: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = names(dir);
        if got == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} holds {got:?}, expected {expected:?}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

/// The `/v1/apps` row's sink at `path`.
async fn sink_row(daemon: &Daemon, app: &str, path: &Path) -> Value {
    let row = daemon.app(app).await;
    row["sinks"]
        .as_array()
        .unwrap_or_else(|| panic!("no sinks in {row}"))
        .iter()
        .find(|s| s["path"] == path.display().to_string())
        .cloned()
        .unwrap_or_else(|| panic!("no sink {} in {row}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_contents_are_written_with_their_modes() {
    let env = TestEnv::new(3600).await;
    let out = out_dir(&env);
    let (token, json, creds, ini) = (
        out.join("token"),
        out.join("token.json"),
        out.join("creds.json"),
        out.join("credentials"),
    );
    role_app(
        &env,
        "analytics",
        &[
            sink(&token, "access_token", ""),
            sink(&json, "token_json", "mode = \"0640\"\n"),
            sink(&creds, "credentials_json", "mode = \"400\"\n"),
            sink(&ini, "aws_credentials", "mode = \"0o644\"\n"),
        ]
        .concat(),
    );
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    for path in [&token, &json, &creds, &ini] {
        wait_file(&daemon, path, 10, "written", |b| b.is_some()).await;
    }

    let served = daemon.token("analytics").await;
    assert_eq!(
        std::fs::read_to_string(&token).unwrap(),
        served,
        "no newline"
    );
    let as_json: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(as_json["access_token"], served);
    assert_eq!(as_json["token_type"], "Bearer");
    assert!(as_json["expires_at"].is_string() && as_json["expires_in"].is_u64());
    assert!(as_json.get("refresh_token").is_none());

    let (status, endpoint) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(status, 200, "{endpoint}");
    let file_creds: Value = serde_json::from_slice(&std::fs::read(&creds).unwrap()).unwrap();
    assert_eq!(file_creds, endpoint, "the same credential_process JSON");
    assert_eq!(file_creds["Version"], 1);
    let text = std::fs::read_to_string(&ini).unwrap();
    let expected = format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
        endpoint["AccessKeyId"].as_str().unwrap(),
        endpoint["SecretAccessKey"].as_str().unwrap(),
        endpoint["SessionToken"].as_str().unwrap()
    );
    assert!(text.ends_with(&expected), "{text}");
    assert!(text.starts_with('#'), "a comment line first: {text}");

    assert_eq!(
        [mode(&token), mode(&json), mode(&creds), mode(&ini)],
        [0o600, 0o640, 0o400, 0o644]
    );
    wait_names(&out, &["credentials", "creds.json", "token", "token.json"]).await;

    let row = sink_row(&daemon, "analytics", &token).await;
    assert_eq!(row["content"], "access_token");
    assert!(row["last_write_at"].is_string(), "{row}");
    assert!(row["expires_at"].is_string(), "{row}");
    assert!(row["last_error"].is_null(), "{row}");
    let status = daemon.cli(&["status"]).await;
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        table.contains(&format!(
            "  sink {} (access_token): written",
            token.display()
        )),
        "{table}"
    );

    let text = raw_metrics(&daemon).await;
    assert!(
        text.contains("iamtokend_sink_writes_total{app=\"analytics\",outcome=\"ok\"} 4"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "iamtokend_sink_expiry_timestamp_seconds{{app=\"analytics\",path=\"{}\"}}",
            token.display()
        )),
        "{text}"
    );
}

/// `/metrics` as text (the JSON helper does not parse it).
async fn raw_metrics(daemon: &Daemon) -> String {
    crate::support::raw_http::get_on_socket(&daemon.socket, "/metrics")
        .await
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_partial_or_missing_file_while_tokens_rotate() {
    // Two-second tokens: the daemon refreshes about every second on its own.
    let env = TestEnv::new(2).await;
    let out = out_dir(&env);
    let (token, json) = (out.join("token"), out.join("token.json"));
    env.jwt_app("rotor");
    env.append_app(
        "rotor",
        &[
            sink(&token, "access_token", ""),
            sink(&json, "token_json", ""),
        ]
        .concat(),
    );
    let daemon = env.daemon().await;
    daemon.wait_state("rotor", "ready", 10).await;
    wait_file(&daemon, &json, 10, "written", |b| b.is_some()).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = [token.clone(), json.clone()]
        .into_iter()
        .map(|path| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = BTreeSet::new();
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let bytes = std::fs::read(&path)
                        .unwrap_or_else(|e| panic!("{}: {e} after {reads} reads", path.display()));
                    let token = if path.extension().is_some() {
                        let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                            panic!("partial JSON after {reads} reads: {e}: {bytes:?}")
                        });
                        v["access_token"].as_str().unwrap_or_default().to_owned()
                    } else {
                        String::from_utf8(bytes).unwrap()
                    };
                    assert!(
                        token.len() == 36 && token.starts_with("aoa-"),
                        "not a whole token after {reads} reads: {token:?}"
                    );
                    seen.insert(token);
                    reads += 1;
                }
                (reads, seen.len())
            })
        })
        .collect();
    // Forced refreshes on top of the daemon's own (spaced: at most one call a second).
    for _ in 0..4 {
        let (status, body) = daemon.post("/v1/apps/rotor/refresh", None).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        let (reads, distinct) = reader.join().expect("reader saw only whole files");
        assert!(reads >= 2000, "only {reads} reads");
        assert!(
            distinct >= 4,
            "only {distinct} tokens seen in {reads} reads"
        );
    }
    assert_eq!(
        names(&out),
        ["token", "token.json"],
        "no temporary file left"
    );
    let calls = env.calls_for("rotor").len();
    assert!(calls >= 5, "{calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_link_at_the_path_or_a_temporary_name_never_gets_written_through() {
    let env = TestEnv::new(3600).await;
    let out = out_dir(&env);
    let victim = env.path("victim");
    std::fs::write(&victim, "keep").unwrap();
    let token = out.join("token");
    std::os::unix::fs::symlink(&victim, &token).unwrap();
    let planted = [
        ".token.iamtokend-0000000000000000.tmp",
        ".token.tmp",
        "token.tmp",
        ".token.iamtokend-.tmp",
    ];
    for name in planted {
        std::os::unix::fs::symlink(&victim, out.join(name)).unwrap();
    }
    env.jwt_app("app");
    env.append_app("app", &sink(&token, "access_token", ""));
    let daemon = env.daemon().await;
    daemon.wait_state("app", "ready", 10).await;
    let served = daemon.token("app").await;
    wait_file(&daemon, &token, 10, "the token", |b| {
        b == Some(served.as_bytes())
    })
    .await;
    let meta = std::fs::symlink_metadata(&token).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the link was replaced by a file"
    );
    for _ in 0..3 {
        daemon.post("/v1/apps/app/refresh", None).await;
    }
    let served = daemon.token("app").await;
    wait_file(&daemon, &token, 10, "the newest token", |b| {
        b == Some(served.as_bytes())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    // Links of our temporary pattern are removed at start (unlinked, not followed); others
    // are left alone.
    wait_names(&out, &[".token.tmp", "token", "token.tmp"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_removed_when_the_token_expires_with_nothing_new() {
    let env = TestEnv::new(3).await;
    let out = out_dir(&env);
    let token = out.join("token");
    env.jwt_app("app");
    env.append_app("app", &sink(&token, "access_token", ""));
    let daemon = env.daemon().await;
    daemon.wait_state("app", "ready", 10).await;
    wait_file(&daemon, &token, 10, "written", |b| b.is_some()).await;
    // No assertion any more: every refresh fails, the token runs out.
    std::fs::remove_file(env.path("app.jwt")).unwrap();
    wait_file(&daemon, &token, 15, "removed", |b| b.is_none()).await;
    let (status, _) = daemon.get("/v1/apps/app/token").await;
    assert_eq!(status, 503, "nothing valid to serve either");
    let row = sink_row(&daemon, "app", &token).await;
    assert!(row["expires_at"].is_null(), "{row}");
    assert!(names(&out).is_empty(), "{:?}", names(&out));
    // Back: a new token is written again.
    std::fs::write(env.path("app.jwt"), crate::support::assertion("app")).unwrap();
    daemon.post("/v1/apps/app/refresh", None).await;
    wait_file(&daemon, &token, 15, "written again", |b| b.is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_directory_is_retried_and_reported_and_the_app_stays_ready() {
    let env = TestEnv::new(3600).await;
    let out = out_dir(&env);
    let token = out.join("token");
    env.jwt_app("app");
    env.append_app("app", &sink(&token, "access_token", ""));
    let daemon = env.daemon().await;
    daemon.wait_state("app", "ready", 10).await;
    wait_file(&daemon, &token, 10, "written", |b| b.is_some()).await;

    std::fs::rename(&out, env.path("out-gone")).unwrap();
    let (status, _) = daemon.post("/v1/apps/app/refresh", None).await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let row = loop {
        let row = sink_row(&daemon, "app", &token).await;
        if row["last_error"].is_object() {
            break row;
        }
        assert!(tokio::time::Instant::now() < deadline, "{row}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row["last_error"]["code"], "write_failed", "{row}");
    // Retries (1 s, then 2 s) fail the same way: logged once.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let served = daemon.token("app").await;
    let app = daemon.app("app").await;
    assert_eq!(app["state"], "ready", "{app}");
    assert_eq!(
        daemon.logs().matches("sink file operation failed").count(),
        1,
        "{}",
        daemon.logs()
    );
    let metrics = raw_metrics(&daemon).await;
    let errors: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("iamtokend_sink_writes_total{app=\"app\",outcome=\"error\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(errors >= 2, "{errors} failed writes counted");

    std::fs::create_dir(&out).unwrap();
    wait_file(&daemon, &token, 15, "the current token", |b| {
        b == Some(served.as_bytes())
    })
    .await;
    let row = sink_row(&daemon, "app", &token).await;
    assert!(row["last_error"].is_null(), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_removes_and_keeps_sinks() {
    let env = TestEnv::new(3600).await;
    let out = out_dir(&env);
    let (kept, dropped, added, goner) = (
        out.join("kept"),
        out.join("dropped"),
        out.join("added"),
        out.join("goner"),
    );
    env.jwt_app("keeper");
    env.append_app(
        "keeper",
        &[
            sink(&kept, "access_token", ""),
            sink(&dropped, "token_json", ""),
        ]
        .concat(),
    );
    env.jwt_app("goner");
    env.append_app("goner", &sink(&goner, "access_token", ""));
    let daemon = env.daemon().await;
    daemon.wait_state("keeper", "ready", 10).await;
    daemon.wait_state("goner", "ready", 10).await;
    for path in [&kept, &dropped, &goner] {
        wait_file(&daemon, path, 10, "written", |b| b.is_some()).await;
    }
    let before = std::fs::metadata(&kept).unwrap();
    let keeper_calls = env.calls_for("keeper").len();

    std::fs::remove_file(env.path("apps.d/goner.toml")).unwrap();
    env.jwt_app("keeper");
    env.append_app(
        "keeper",
        &[
            sink(&kept, "access_token", ""),
            sink(&added, "access_token", "mode = \"0640\"\n"),
        ]
        .concat(),
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("config reloaded", 1, 10).await;

    let served = daemon.token("keeper").await;
    wait_file(&daemon, &added, 10, "written", |b| {
        b == Some(served.as_bytes())
    })
    .await;
    wait_file(&daemon, &dropped, 10, "removed", |b| b.is_none()).await;
    wait_file(&daemon, &goner, 10, "removed", |b| b.is_none()).await;
    assert_eq!(mode(&added), 0o640);
    let after = std::fs::metadata(&kept).unwrap();
    assert_eq!(
        (after.ino(), after.mtime_nsec(), after.mtime()),
        (before.ino(), before.mtime_nsec(), before.mtime()),
        "the unchanged sink was not rewritten"
    );
    assert_eq!(std::fs::read_to_string(&kept).unwrap(), served);
    assert_eq!(
        env.calls_for("keeper").len(),
        keeper_calls,
        "a change of sinks only: the app keeps its token"
    );
    wait_names(&out, &["added", "kept"]).await;

    // Shutdown leaves the files for readers.
    daemon.stop();
    assert_eq!(names(&out), ["added", "kept"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_sink_problems_at_their_positions() {
    let env = TestEnv::new(3600).await;
    let out = out_dir(&env);
    let open = env.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    env.jwt_app("a");
    env.append_app("a", &sink(&out.join("token"), "access_token", ""));
    env.jwt_app("b");
    env.append_app(
        "b",
        &[
            sink(&out.join("token"), "token_json", ""),
            sink(&open.join("token"), "token_json", ""),
            sink(&env.path("missing/token"), "access_token", ""),
            sink(&env.path("state/token"), "access_token", ""),
            sink(&env.socket(), "access_token", ""),
            sink(
                &out.join("creds"),
                "aws_credentials",
                "mode = \"0888\"\nuser = \"no-such-user-x\"\ngroup = \"no-such-group-x\"\n",
            ),
            sink(Path::new("relative"), "access_token", ""),
        ]
        .concat(),
    );
    std::fs::create_dir_all(env.path("state")).unwrap();
    let output = std::process::Command::new(bin())
        .arg("check-config")
        .arg("--config")
        .arg(env.main_file())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let root = format!("{}/", env.dir.path().display());
    let stderr = String::from_utf8_lossy(&output.stderr).replace(&root, "");
    // b.toml: 6 lines of app (common 3, grant 2) then each sink: a blank, [[sink]], path, content.
    for line in [
        "apps.d/b.toml:8:8: `path` out/token is already a sink of app `a` (apps.d/a.toml:8:8)",
        "apps.d/b.toml:12:8: the directory open of `path` is writable by everyone (mode 0777)",
        "apps.d/b.toml:16:8: the directory missing of `path` does not exist",
        "apps.d/b.toml:20:8: `path` state/token is inside the state dir state",
        "apps.d/b.toml:24:8: `path` d.sock is the daemon's socket",
        "apps.d/b.toml:29:11: `content = \"aws_credentials\"` needs a [role] in this app",
        "apps.d/b.toml:30:8: `mode` must be an octal string like \"0660\"",
        "apps.d/b.toml:31:8: user `no-such-user-x` does not exist",
        "apps.d/b.toml:32:9: group `no-such-group-x` does not exist",
        "apps.d/b.toml:35:8: `path` must be absolute, not relative",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in\n{stderr}");
    }
}

/// Owner and group set on the file as written (run as root by `.ci/run`).
mod as_root {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root"]
    async fn the_sink_gets_its_owner_and_group_before_its_bytes() {
        let env = TestEnv::new(3600).await;
        let out = out_dir(&env);
        let (by_name, by_id) = (out.join("by-name"), out.join("by-id"));
        env.jwt_app("app");
        env.append_app(
            "app",
            &[
                sink(
                    &by_name,
                    "access_token",
                    "mode = \"0640\"\nuser = \"nobody\"\ngroup = \"nogroup\"\n",
                ),
                sink(&by_id, "token_json", "user = 65534\n"),
            ]
            .concat(),
        );
        let daemon = env.daemon().await;
        daemon.wait_state("app", "ready", 10).await;
        for path in [&by_name, &by_id] {
            wait_file(&daemon, path, 10, "written", |b| b.is_some()).await;
        }
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let nogroup = nix::unistd::Group::from_name("nogroup").unwrap().unwrap();
        let meta = std::fs::metadata(&by_name).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (nobody.uid.as_raw(), nogroup.gid.as_raw(), 0o640)
        );
        let meta = std::fs::metadata(&by_id).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (65534, 0o600));
        // A refresh rewrites them with the same owner.
        daemon.post("/v1/apps/app/refresh", None).await;
        let served = daemon.token("app").await;
        wait_file(&daemon, &by_name, 10, "rewritten", |b| {
            b == Some(served.as_bytes())
        })
        .await;
        let meta = std::fs::metadata(&by_name).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid()),
            (nobody.uid.as_raw(), nogroup.gid.as_raw())
        );
    }
}

/// `serve --dev` keeps a sink of the analytics demo app, and its banner shows the `cat`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_writes_a_sink_and_the_banner_shows_it() {
    use std::io::BufRead;
    let runtime_dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["serve", "--dev"])
        .env("XDG_RUNTIME_DIR", runtime_dir.path())
        .env_remove("IAMTOKEND_SOCKET")
        .env_remove("IAMTOKEND_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut socket = None;
    let mut sink_path = None;
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        let line = line.trim().to_owned();
        if let Some(s) = line.strip_prefix("socket:") {
            socket = Some(PathBuf::from(s.trim()));
        }
        if let Some(rest) = line.strip_prefix("cat ") {
            sink_path = rest.split_whitespace().next().map(PathBuf::from);
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    let (socket, sink_path) = (socket.expect("socket line"), sink_path.expect("cat line"));
    let client = iamtokend::client::SocketClient::new(&socket);
    let mut token = None;
    for _ in 0..200 {
        if let Ok(a) = client
            .request(http::Method::GET, "/v1/apps/analytics/token", None)
            .await
        {
            if a.status == 200 {
                let served = a.body["access_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if std::fs::read_to_string(&sink_path).ok().as_deref() == Some(served.as_str()) {
                    token = Some(served);
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(
        token.is_some(),
        "{} never held the analytics token",
        sink_path.display()
    );
    assert_eq!(status.code(), Some(0));
}

/// After each write: the `notify` command runs (argv, the allowlisted environment only, the
/// sink's path in `IAMTOKEND_SINK`) and `signal` goes to the pid in `pid_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_runs_notify_and_signals_the_pid_file() {
    let env = TestEnv::new(3600).await;
    let out = out_dir(&env);
    let token = out.join("token");
    let notified = env.path("notified");
    let hups = env.path("hups");
    // A reader that counts its SIGHUPs.
    let mut reader = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "trap 'echo hup >> {}' HUP; while :; do sleep 0.05; done",
            hups.display()
        ))
        .spawn()
        .unwrap();
    let pid_file = env.path("reader.pid");
    std::fs::write(&pid_file, format!("{}\n", reader.id())).unwrap();
    env.jwt_app("app");
    env.append_app(
        "app",
        &sink(
            &token,
            "access_token",
            &format!(
                "notify = [\"/bin/sh\", \"-c\", \"echo \\\"$IAMTOKEND_APP $IAMTOKEND_SINK key=$AWS_SECRET_ACCESS_KEY\\\" >> {}\"]\nsignal = \"HUP\"\npid_file = \"{}\"\n",
                notified.display(),
                pid_file.display()
            ),
        ),
    );
    let daemon = env.daemon().await;
    daemon.wait_state("app", "ready", 10).await;
    let lines = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lines(&hups).is_empty() || lines(&notified).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notify/signal: {:?} {:?}\n{}",
            lines(&notified),
            lines(&hups),
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A refresh writes again: notified again.
    daemon.post("/v1/apps/app/refresh", None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lines(&hups).len() < 2 || lines(&notified).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{}", daemon.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = reader.kill();
    let _ = reader.wait();
    assert_eq!(
        lines(&notified)[0],
        format!("app {} key=", token.display()),
        "the daemon's AWS secret is not in the command's environment"
    );
}
