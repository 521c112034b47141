//! The loopback credentials endpoint and `iamtokend exec` (CONTRACT §5b): aws-config's own
//! ECS provider and botocore resolve the simulator's credentials through the environment
//! `exec` sets; the token, `Origin`, wrong paths and hostile bytes on the TCP port; the token
//! kept across a restart and replaced with the `[role]`; exit codes and signals through
//! `exec`; the file removed after.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;
use iamtokend::sim::Service;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw_http::{read_to_close, status_of};
use crate::support::{bin, Daemon, TestEnv};

const ROLE: &str = "arn:aws:iam::123456789012:role/AnalyticsTIP";
const ASSUMED: &str = "arn:aws:sts::123456789012:assumed-role/AnalyticsTIP/iamtokend-analytics";

/// The main file with the endpoint on a free loopback port (or off with `None`).
fn write_main(env: &TestEnv, listen: Option<&str>) {
    let listen = listen
        .map(|l| format!("credentials_listen = \"{l}\"\n"))
        .unwrap_or_default();
    std::fs::write(
        env.main_file(),
        format!(
            "[server]\nsocket = \"{}\"\n{listen}\n[state]\ndir = \"{}\"\n\n[refresh]\nmin_lead = \"1s\"\n",
            env.socket().display(),
            env.path("state").display()
        ),
    )
    .unwrap();
}

/// A jwt-bearer app with the identity-context scope and a `[role]` of `role`.
fn role_app(env: &TestEnv, name: &str, role: &str) {
    std::fs::write(
        env.path(&format!("{name}.jwt")),
        crate::support::assertion(name),
    )
    .unwrap();
    env.write_app(
        name,
        &format!(
            "grant = \"jwt-bearer\"\nscopes = [\"openid\", \"aws\", \"sts:identity_context\"]\nassertion_file = \"{}\"\n\n[role]\narn = \"{role}\"\nendpoint_url = \"{}\"\n",
            env.path(&format!("{name}.jwt")).display(),
            env.sim.endpoint_url()
        ),
    );
}

/// A daemon with the endpoint on, app `analytics` (with a role) ready and `plain` (without).
async fn endpoint_daemon() -> (TestEnv, Daemon) {
    let env = TestEnv::new(3600).await;
    write_main(&env, Some("127.0.0.1:0"));
    role_app(&env, "analytics", ROLE);
    env.jwt_app("plain");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    (env, daemon)
}

/// `/v1/apps/{app}/endpoint`: the URL and the token (asserting a 200).
async fn endpoint_of(daemon: &Daemon, app: &str) -> (String, String) {
    let (status, body) = daemon.get(&format!("/v1/apps/{app}/endpoint")).await;
    assert_eq!(status, 200, "{body}");
    (
        body["url"].as_str().unwrap().to_owned(),
        body["authorization_token"].as_str().unwrap().to_owned(),
    )
}

/// `host:port` and path of an `http://` URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("plain http");
    let (host, path) = rest.split_once('/').unwrap();
    (host.to_owned(), format!("/{path}"))
}

/// Sends `request` on a fresh TCP connection to `addr`; everything until the close.
async fn tcp_raw(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    read_to_close(&mut stream, &mut answer).await.ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// A GET on the endpoint with these extra header lines, `connection: close`.
async fn tcp_get(addr: &str, path: &str, headers: &str) -> (u16, Value) {
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{headers}connection: close\r\n\r\n");
    let answer = tcp_raw(addr, request.as_bytes()).await;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status_of(&answer),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// `iamtokend --socket S exec ARGS` in a clean environment plus `vars`.
fn exec_command(
    daemon: &Daemon,
    env: &TestEnv,
    args: &[&str],
    vars: &[(&str, &str)],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg("--socket")
        .arg(&daemon.socket)
        .arg("exec")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", env.dir.path())
        .env("AWS_CONFIG_FILE", env.path("no-aws-config"));
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd
}

async fn exec(daemon: &Daemon, env: &TestEnv, args: &[&str], vars: &[(&str, &str)]) -> Output {
    exec_command(daemon, env, args, vars)
        .output()
        .await
        .expect("exec runs")
}

fn sts_calls(env: &TestEnv, action: &str) -> usize {
    env.sim
        .calls()
        .iter()
        .filter(|c| c.service == Service::Sts && c.operation == action)
        .count()
}

/// An `exec` killed with SIGKILL cannot remove its token file: the next `exec` of the same
/// user removes it (its pid is gone), and leaves a running one's and a stranger's entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_exec_removes_the_token_dir_of_a_killed_one() {
    let (env, daemon) = endpoint_daemon().await;
    let runtime = env.path("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let xdg = [("XDG_RUNTIME_DIR", runtime.to_str().unwrap())];
    let dirs = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&runtime)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    // A stranger's name that parses as a dead pid but is a plain file: left alone.
    std::fs::write(runtime.join("iamtokend-exec-999999999-x-0"), "").unwrap();
    let mut killed = exec_command(&daemon, &env, &["analytics", "sleep", "3"], &xdg)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut waited = 0;
    while dirs().len() < 2 {
        assert!(waited < 200, "the token dir never appeared: {:?}", dirs());
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    let orphan = dirs()
        .into_iter()
        .find(|n| n.contains("-analytics-"))
        .unwrap();
    assert!(orphan.starts_with(&format!("iamtokend-exec-{}-", killed.id().unwrap())));
    killed.start_kill().unwrap();
    killed.wait().await.unwrap();
    // Its CMD (`sleep`) outlives it; the directory is the exec's, named by the exec's pid.
    assert!(runtime.join(&orphan).join("token").exists());

    let out = exec(&daemon, &env, &["analytics", "true"], &xdg).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        dirs(),
        ["iamtokend-exec-999999999-x-0"],
        "the killed exec's dir was not removed"
    );
}

/// aws-config's own container provider, run as `exec`'s CMD (this test binary again, its
/// child test below), resolves the credentials the socket serves and signs a
/// `GetCallerIdentity` with them that the simulator accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdks_ecs_provider_resolves_credentials_through_exec() {
    let (env, daemon) = endpoint_daemon().await;
    let me = std::env::current_exe().unwrap();
    let me = me.to_str().unwrap();
    let sim = env.sim.endpoint_url();
    let out = exec(
        &daemon,
        &env,
        &[
            "analytics",
            "--",
            me,
            "--exact",
            "endpoint::ecs_provider_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
        &[("IAMTOKEND_TEST_SIM", &sim)],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("ECS-CHILD ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("the child did not run: {stdout}\n{stderr}"));
    let (key, arn) = line.split_once(' ').unwrap();
    assert_eq!(arn, ASSUMED);
    let (_, creds) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(creds["AccessKeyId"], key, "the socket's cached credentials");
    assert_eq!(sts_calls(&env, "AssumeRole"), 1, "one AssumeRole for both");
    assert_eq!(sts_calls(&env, "GetCallerIdentity"), 1);
    // The token never reaches the log.
    let (_, token) = endpoint_of(&daemon, "analytics").await;
    assert!(!daemon.logs().contains(&token));
}

/// The CMD of the test above; does nothing when run any other way.
#[tokio::test]
#[ignore = "run as exec's CMD by the_rust_sdks_ecs_provider_resolves_credentials_through_exec"]
async fn ecs_provider_child() {
    let Ok(sim) = std::env::var("IAMTOKEND_TEST_SIM") else {
        println!("not under exec; nothing to do");
        return;
    };
    let provider = aws_config::ecs::EcsCredentialsProvider::builder().build();
    let creds = provider
        .provide_credentials()
        .await
        .expect("the ECS provider resolves credentials");
    assert!(creds.expiry().is_some());
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(sim)
        .credentials_provider(provider)
        .build();
    let me = aws_sdk_sts::Client::from_conf(config)
        .get_caller_identity()
        .send()
        .await
        .expect("GetCallerIdentity signed with them");
    println!("ECS-CHILD {} {}", creds.access_key_id(), me.arn().unwrap());
}

/// The Python the botocore test runs: `$IAMTOKEND_TEST_PYTHON` (`.ci/run` sets it to its venv
/// with boto3), else that venv's usual place.
fn test_python() -> Option<PathBuf> {
    let python = std::env::var_os("IAMTOKEND_TEST_PYTHON")
        .map(PathBuf::from)
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(PathBuf::from(home).join(".cache/iamtokend-ci/venv/bin/python3"))
        })?;
    python.exists().then_some(python)
}

/// botocore's container provider, in the Python that `exec` runs, resolves the credentials
/// (method `container-role`) and a `GetCallerIdentity` with them succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn botocore_resolves_credentials_through_exec() {
    let Some(python) = test_python() else {
        println!(
            "SKIPPED: no Python with boto3 (set IAMTOKEND_TEST_PYTHON, or run .ci/run, which makes ~/.cache/iamtokend-ci/venv)"
        );
        return;
    };
    let (env, daemon) = endpoint_daemon().await;
    let script = "import boto3, sys\n\
s = boto3.Session()\n\
c = s.get_credentials()\n\
f = c.get_frozen_credentials()\n\
arn = s.client('sts', endpoint_url=sys.argv[1], region_name='us-east-1').get_caller_identity()['Arn']\n\
print('BOTO', c.method, f.access_key, arn)\n";
    let sim = env.sim.endpoint_url();
    let out = exec(
        &daemon,
        &env,
        &[
            "analytics",
            "--",
            python.to_str().unwrap(),
            "-c",
            script,
            &sim,
        ],
        &[],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BOTO "))
        .unwrap_or_else(|| panic!("{stdout}\n{stderr}"));
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts[0], "container-role", "{line}");
    assert!(parts[1].starts_with("ASIA"), "{line}");
    assert_eq!(parts[2], ASSUMED);
    let (_, creds) = daemon.get("/v1/apps/analytics/credentials").await;
    assert_eq!(creds["AccessKeyId"], parts[1]);
}

/// What `exec` gives CMD: the four variables, a fresh 0600 token file of exactly the token
/// (no newline), an empty shared-credentials file, none of the static or profile variables;
/// and the file is gone once CMD ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sets_the_environment_and_removes_the_file() {
    let (env, daemon) = endpoint_daemon().await;
    let (url, token) = endpoint_of(&daemon, "analytics").await;
    std::fs::write(
        env.path("aws-config"),
        "[default]\nregion = us-east-1\ncredential_process = /bin/false\n",
    )
    .unwrap();
    let script = r#"f="$AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
echo "MODE $(stat -c %a "$f") $(stat -c %a "$(dirname "$f")")"
echo "SIZE $(wc -c < "$f")"
echo "CREDSIZE $(wc -c < "$AWS_SHARED_CREDENTIALS_FILE")"
echo "TOKEN $(cat "$f")"
env"#;
    let out = exec(
        &daemon,
        &env,
        &["analytics", "sh", "-c", script],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIASTATIC"),
            ("AWS_SECRET_ACCESS_KEY", "static"),
            ("AWS_SESSION_TOKEN", "static"),
            ("AWS_PROFILE", "dev"),
            ("AWS_DEFAULT_PROFILE", "dev"),
            ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/x"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "x"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/x"),
            ("AWS_ROLE_ARN", "arn:x"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_CONFIG_FILE", env.path("aws-config").to_str().unwrap()),
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let var = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    assert_eq!(
        var("AWS_CONTAINER_CREDENTIALS_FULL_URI").as_deref(),
        Some(url.as_str())
    );
    assert_eq!(var("IAMTOKEND_APP").as_deref(), Some("analytics"));
    assert_eq!(
        var("IAMTOKEND_SOCKET").map(PathBuf::from),
        Some(daemon.socket.clone())
    );
    assert_eq!(
        var("AWS_REGION").as_deref(),
        Some("us-east-1"),
        "others pass through"
    );
    for removed in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ] {
        assert_eq!(var(removed), None, "{removed} is removed");
    }
    assert!(stdout.contains("MODE 600 700"), "{stdout}");
    assert!(
        stdout.contains(&format!("SIZE {}", token.len())),
        "no newline: {stdout}"
    );
    assert!(stdout.contains("CREDSIZE 0"), "{stdout}");
    assert!(stdout.contains(&format!("TOKEN {token}")));
    let file = PathBuf::from(var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").unwrap());
    assert!(!file.exists(), "removed after");
    assert!(!file.parent().unwrap().exists(), "its directory too");
    // One warning line: the default profile's credential_process could win.
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("credential_process"), "{stderr}");
}

/// CMD's exit code comes back; a signal that ends it comes back as 128+N; SIGTERM to `exec`
/// reaches CMD; CMD that is not there is 127.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_returns_the_status_and_forwards_signals() {
    let (env, daemon) = endpoint_daemon().await;
    let out = exec(&daemon, &env, &["analytics", "sh", "-c", "exit 7"], &[]).await;
    assert_eq!(out.status.code(), Some(7));
    let out = exec(
        &daemon,
        &env,
        &["analytics", "--", "sh", "-c", "kill -TERM $$"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    let out = exec(&daemon, &env, &["analytics", "--", "/no/such/cmd"], &[]).await;
    assert_eq!(out.status.code(), Some(127));
    let out = exec(&daemon, &env, &["analytics", "true"], &[]).await;
    assert_eq!(out.status.code(), Some(0));

    for (signal, code) in [(libc::SIGTERM, 42), (libc::SIGHUP, 43), (libc::SIGINT, 44)] {
        let script = "trap 'exit 42' TERM; trap 'exit 43' HUP; trap 'exit 44' INT; echo ready; while :; do sleep 0.05; done";
        let mut child = exec_command(&daemon, &env, &["analytics", "sh", "-c", script], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        tokio::time::timeout(Duration::from_secs(15), async {
            let mut buf = [0u8; 64];
            while !String::from_utf8_lossy(&seen).contains("ready") {
                let n = stdout.read(&mut buf).await.unwrap();
                assert!(n > 0, "CMD ended early");
                seen.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("CMD started");
        unsafe {
            libc::kill(child.id().unwrap() as i32, signal);
        }
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("exec ends")
            .unwrap();
        assert_eq!(status.code(), Some(code), "signal {signal} forwarded");
    }
}

/// No endpoint, or an app without a `[role]`: exit 1 with one line, CMD never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_refuses_without_an_endpoint_or_a_role() {
    let (env, daemon) = endpoint_daemon().await;
    let marker = env.path("ran");
    let touch = format!("touch {}", marker.display());
    let out = exec(&daemon, &env, &["plain", "sh", "-c", &touch], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("role"), "{stderr}");
    assert!(!marker.exists(), "CMD never started");
    let (status, body) = daemon.get("/v1/apps/plain/endpoint").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("no_role"))
    );
    let saved = env.path("state/analytics@endpoint.json");
    let before = std::fs::read(&saved).unwrap();
    assert!(
        !env.path("state/plain@endpoint.json").exists(),
        "no token without a role"
    );
    drop(daemon);

    // The endpoint off: no token handed out, and the saved one is left as it was.
    write_main(&env, None);
    let daemon = env.daemon().await;
    assert_eq!(std::fs::read(&saved).unwrap(), before);
    let (status, body) = daemon.get("/v1/apps/analytics/endpoint").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("endpoint_disabled"))
    );
    let out = exec(&daemon, &env, &["analytics", "sh", "-c", &touch], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("credentials_listen"), "{stderr}");
    assert!(!marker.exists(), "CMD never started");
}

/// The TCP port: the container-credentials JSON for the right token only; a missing or wrong
/// token, an unknown app or an `Origin` header get 403; the third failure closes the
/// connection; other paths 404, other methods 405; concurrent first fetches share one
/// AssumeRole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_port_answers_only_the_right_token() {
    let (env, daemon) = endpoint_daemon().await;
    let (url, token) = endpoint_of(&daemon, "analytics").await;
    let (addr, path) = split_url(&url);
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert_eq!(path, "/v1/apps/analytics/credentials");
    assert!(daemon.logs().contains(&addr), "the real port is logged");

    let auth = format!("authorization: {token}\r\n");
    let fetches: Vec<_> = (0..8)
        .map(|_| {
            let (addr, path, auth) = (addr.clone(), path.clone(), auth.clone());
            tokio::spawn(async move { tcp_get(&addr, &path, &auth).await })
        })
        .collect();
    let mut keys = Vec::new();
    for fetch in fetches {
        let (status, body) = fetch.await.unwrap();
        assert_eq!(status, 200, "{body}");
        for field in ["AccessKeyId", "SecretAccessKey", "Token", "Expiration"] {
            assert!(
                body[field].as_str().is_some_and(|v| !v.is_empty()),
                "{field}: {body}"
            );
        }
        assert_eq!(body["AccountId"], "123456789012");
        keys.push(body["AccessKeyId"].as_str().unwrap().to_owned());
    }
    keys.dedup();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(
        sts_calls(&env, "AssumeRole"),
        1,
        "concurrent fetches share one"
    );

    let forbidden = |(status, body): (u16, Value)| {
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{body}"
        );
    };
    forbidden(tcp_get(&addr, &path, "").await);
    forbidden(tcp_get(&addr, &path, "authorization: wrong\r\n").await);
    forbidden(tcp_get(&addr, &path, &format!("authorization: {token}x\r\n")).await);
    forbidden(tcp_get(&addr, &path, &format!("authorization: Bearer {token}\r\n")).await);
    forbidden(tcp_get(&addr, "/v1/apps/plain/credentials", &auth).await);
    forbidden(tcp_get(&addr, "/v1/apps/nope/credentials", &auth).await);
    forbidden(
        tcp_get(
            &addr,
            &path,
            &format!("{auth}origin: http://127.0.0.1:8000\r\n"),
        )
        .await,
    );
    forbidden(tcp_get(&addr, &path, &format!("{auth}origin: null\r\n")).await);

    let (status, _) = tcp_get(&addr, "/v1/apps/analytics/token", &auth).await;
    assert_eq!(status, 404);
    let (status, _) = tcp_get(&addr, "/v1/apps/analytics/endpoint", &auth).await;
    assert_eq!(status, 404);
    let (status, _) = tcp_get(&addr, "/v1/health", "").await;
    assert_eq!(status, 404);
    let answer = tcp_raw(
        &addr,
        format!("POST {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 405, "{answer}");

    // Three wrong tokens on one keep-alive connection, then the close; the right token on
    // the same connection is never answered after it.
    let wrong = format!("GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: wrong\r\n\r\n");
    let right = format!("GET {path} HTTP/1.1\r\nhost: x\r\n{auth}\r\n");
    let pipelined = format!("{wrong}{wrong}{wrong}{right}");
    let answer = tcp_raw(&addr, pipelined.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 403").count(), 3, "{answer}");
    assert!(!answer.contains("AccessKeyId"), "{answer}");
    assert!(!daemon.logs().contains(&token), "the token is never logged");
    let (_, status) = daemon.get("/v1/apps").await;
    assert!(!status.to_string().contains(&token), "nor in the apps list");
    let metrics = crate::support::raw_http::get_on_socket(&daemon.socket, "/metrics").await;
    assert!(!metrics.body.contains(&token), "nor in the metrics");
    assert!(
        metrics
            .body
            .contains(r#"route="tcp:/v1/apps/{app}/credentials",status="403""#),
        "refusals on the port are counted: {}",
        metrics.body
    );
}

/// Garbage and an oversize head on the TCP port get clean refusals, and the daemon still
/// answers the right token afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_on_the_port_get_clean_answers() {
    let (_env, daemon) = endpoint_daemon().await;
    let (url, token) = endpoint_of(&daemon, "analytics").await;
    let (addr, path) = split_url(&url);

    let answer = tcp_raw(
        &addr,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    )
    .await;
    assert!(answer.is_empty() || status_of(&answer) == 400, "{answer}");
    let answer = tcp_raw(&addr, b"GET /v1/apps/analytics/credentials\r\n\r\n").await;
    assert!(
        answer.is_empty() || status_of(&answer) / 100 == 4,
        "{answer}"
    );
    assert!(!answer.contains("AccessKeyId"));
    let big = format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let answer = tcp_raw(&addr, big.as_bytes()).await;
    assert!(answer.is_empty() || status_of(&answer) == 431, "{answer}");
    let many: String = (0..100).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = tcp_raw(
        &addr,
        format!("GET {path} HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.is_empty() || status_of(&answer) == 431, "{answer}");

    let (status, _) = tcp_get(&addr, &path, &format!("authorization: {token}\r\n")).await;
    assert_eq!(status, 200);
}

/// A silent client and an idle keep-alive client on the port are closed at the header
/// timeout (the real accept loop and limits, shortened, in this process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_port_clients_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("apps.d")).unwrap();
    std::fs::write(dir.path().join("iamtokend.toml"), "").unwrap();
    let config = iamtokend::config::load(&dir.path().join("iamtokend.toml")).unwrap();
    let upstreams = iamtokend::upstream::clients::Upstreams::with_credentials(
        aws_credential_types::Credentials::new("AKID", "secret", None, None, "test"),
    );
    let broker = Arc::new(
        iamtokend::broker::Broker::start(
            config,
            upstreams,
            iamtokend::clock::Clock::system(),
            None,
        )
        .await,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = iamtokend::server::Limits {
        header_read_timeout: Duration::from_millis(500),
        ..iamtokend::server::Limits::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(iamtokend::server::endpoint::run(
        listener,
        broker,
        async move {
            let _ = stopped.await;
        },
        limits,
    ));

    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut answer = Vec::new();
    read_to_close(&mut silent, &mut answer).await.ok();
    assert!(answer.is_empty(), "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(5));

    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /v1/apps/a/credentials HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    read_to_close(&mut idle, &mut answer).await.ok();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 403").count(), 1, "{answer}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("drains")
        .unwrap();
}

/// The token survives a restart and an unchanged reload, and is replaced when `[role]`
/// changes; the file is 0600 and holds no copy of the token in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_kept_across_restarts_and_replaced_with_the_role() {
    use std::os::unix::fs::PermissionsExt;
    let (env, daemon) = endpoint_daemon().await;
    let (first_url, first) = endpoint_of(&daemon, "analytics").await;
    let file = env.path("state/analytics@endpoint.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(daemon.stop().success());

    let daemon = env.daemon().await;
    let (url, token) = endpoint_of(&daemon, "analytics").await;
    assert_eq!(token, first, "kept across a restart");
    assert_ne!(url, first_url, "a new free port");
    let (addr, path) = split_url(&url);
    let (status, _) = tcp_get(&addr, &path, &format!("authorization: {token}\r\n")).await;
    assert_eq!(status, 200, "the restarted daemon takes the kept token");

    // A change that leaves [role] alone ([access] naming us): the endpoint token stays, and
    // so does the app's token (no upstream call, CONTRACT §6).
    let calls = env.calls_for("analytics").len();
    let me = nix::unistd::geteuid().as_raw();
    env.append_app("analytics", &format!("\n[access]\nuids = [{me}]\n"));
    daemon.signal(libc::SIGHUP);
    let logs = daemon.wait_log("config reloaded", 1, 10).await;
    assert!(logs.contains("reconfigured=[\"analytics\"]"), "{logs}");
    let (_, token) = endpoint_of(&daemon, "analytics").await;
    assert_eq!(token, first, "kept while [role] is unchanged");

    // A changed [role]: a new endpoint token and new role credentials, the same app token.
    role_app(&env, "analytics", "arn:aws:iam::123456789012:role/Other");
    daemon.signal(libc::SIGHUP);
    let logs = daemon.wait_log("config reloaded", 2, 10).await;
    assert!(
        logs.matches("reconfigured=[\"analytics\"]").count() == 2,
        "{logs}"
    );
    let (_, token) = endpoint_of(&daemon, "analytics").await;
    assert_ne!(token, first, "a changed [role] replaces it");
    let (url, _) = endpoint_of(&daemon, "analytics").await;
    let (addr2, path2) = split_url(&url);
    let (status, creds) = tcp_get(&addr2, &path2, &format!("authorization: {token}\r\n")).await;
    assert_eq!(status, 200, "{creds}");
    assert_eq!(
        env.calls_for("analytics").len(),
        calls,
        "an [access] or [role] change made a CreateTokenWithIAM call"
    );
    let (status, _) = tcp_get(&addr, &path, &format!("authorization: {first}\r\n")).await;
    assert_eq!(status, 403, "the old token is refused");

    std::fs::remove_file(env.path("apps.d/analytics.toml")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("config reloaded", 3, 10).await;
    assert!(!file.exists(), "a removed app's token file goes");
    assert!(!daemon.logs().contains(&token) && !daemon.logs().contains(&first));
}

/// With a state key (issue 13) the endpoint token's file is sealed: no piece of the token in
/// it, `role` as its clear field; the same key gives the same token after a restart, another
/// key moves the file aside and a new token is made (the old one refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_sealed_with_a_state_key() {
    use base64::Engine;
    let env = TestEnv::new(3600).await;
    write_main(&env, Some("127.0.0.1:0"));
    role_app(&env, "analytics", ROLE);
    let creds = |name: &str, byte: u8| {
        let dir = env.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state-key"), [byte; 32]).unwrap();
        dir.to_str().unwrap().to_owned()
    };
    let (key_a, key_b) = (creds("creds-a", 1), creds("creds-b", 2));
    let daemon = env.daemon_with(&[("CREDENTIALS_DIRECTORY", &key_a)]).await;
    daemon.wait_state("analytics", "ready", 10).await;
    let (_, first) = endpoint_of(&daemon, "analytics").await;
    assert!(daemon.stop().success());
    let file = env.path("state/analytics@endpoint.json");
    let text = std::fs::read_to_string(&file).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let mut keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(keys, ["alg", "ct", "nonce", "role", "v"], "{text}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&first);
    for whole in [first.as_str(), b64.as_str()] {
        for i in 0..=whole.len() - 16 {
            assert!(
                !text.contains(&whole[i..i + 16]),
                "a piece of the token: {text}"
            );
        }
    }

    let daemon = env.daemon_with(&[("CREDENTIALS_DIRECTORY", &key_a)]).await;
    daemon.wait_state("analytics", "ready", 10).await;
    let (_, token) = endpoint_of(&daemon, "analytics").await;
    assert_eq!(token, first, "the same key opens it after a restart");
    assert!(daemon.stop().success());

    let daemon = env.daemon_with(&[("CREDENTIALS_DIRECTORY", &key_b)]).await;
    daemon.wait_state("analytics", "ready", 10).await;
    let (url, token) = endpoint_of(&daemon, "analytics").await;
    assert_ne!(token, first, "another key: a new token");
    let (addr, path) = split_url(&url);
    let (status, _) = tcp_get(&addr, &path, &format!("authorization: {first}\r\n")).await;
    assert_eq!(status, 403, "the old token is refused");
    let aside: Vec<String> = std::fs::read_dir(env.path("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("analytics@endpoint.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the file that does not open is moved aside");
    let logs = daemon.logs();
    assert!(logs.contains("damaged state file moved aside"), "{logs}");
    assert!(!logs.contains(&first) && !logs.contains(&token));
}

/// A non-loopback `credentials_listen` is a config error at its place; `serve` refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_is_refused() {
    let env = TestEnv::new(3600).await;
    role_app(&env, "analytics", ROLE);
    for addr in ["0.0.0.0:9911", "192.168.1.10:0", "[::]:9911"] {
        write_main(&env, Some(addr));
        let out = tokio::process::Command::new(bin())
            .arg("check-config")
            .arg("--config")
            .arg(env.main_file())
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let all = format!("{stdout}{stderr}");
        assert!(
            all.contains("iamtokend.toml:3:22: `credentials_listen` must be a loopback address"),
            "{all}"
        );
        let status = env.spawn_daemon(&[]).wait_exit();
        assert_eq!(status.code(), Some(1), "serve refuses to start");
    }
}

/// Dev mode: the endpoint is on, the banner names this binary and shows `exec` and the
/// `get-caller-identity` line, and that line's call works (through botocore when there is a
/// Python with boto3, else through aws-config's ECS provider, both via `exec`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_serves_the_endpoint_and_its_banner_line_works() {
    use std::io::BufRead;
    let runtime_dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(bin())
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
    let banner: Vec<String> = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.starts_with("Ctrl-C"))
        .collect();
    let banner = banner.join("\n");
    let socket = banner
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("socket:")
                .map(|s| s.trim().to_owned())
        })
        .expect("banner names the socket");
    let caller_line = banner
        .lines()
        .find(|l| l.contains("get-caller-identity"))
        .unwrap_or_else(|| panic!("{banner}"));
    let sim = caller_line
        .split_once("--endpoint-url ")
        .map(|(_, url)| url.trim().to_owned())
        .unwrap();
    assert!(
        caller_line.contains(&format!(
            "{} exec analytics -- aws sts get-caller-identity",
            bin()
        )),
        "names the running binary: {caller_line}"
    );
    assert!(!banner.contains("cargo run"), "{banner}");

    let client = iamtokend::client::SocketClient::new(std::path::Path::new(&socket));
    let mut endpoint = None;
    for _ in 0..200 {
        if let Ok(a) = client
            .request(http::Method::GET, "/v1/apps/analytics/endpoint", None)
            .await
        {
            if a.status == 200 {
                endpoint = Some(a.body);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let endpoint = endpoint.expect("the endpoint is on in dev mode");
    assert!(endpoint["url"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));

    let me = std::env::current_exe().unwrap();
    let (program, args): (String, Vec<String>) = match test_python() {
        Some(python) => (
            python.display().to_string(),
            vec![
                "-c".into(),
                "import boto3, sys; print('CALLER', boto3.client('sts', endpoint_url=sys.argv[1], region_name='us-east-1').get_caller_identity()['Arn'])".into(),
                sim.clone(),
            ],
        ),
        None => (
            me.display().to_string(),
            ["--exact", "endpoint::ecs_provider_child", "--ignored", "--nocapture"]
                .map(String::from)
                .to_vec(),
        ),
    };
    let out = tokio::process::Command::new(bin())
        .arg("--socket")
        .arg(&socket)
        .args(["exec", "analytics", "--", &program])
        .args(&args)
        .env("IAMTOKEND_TEST_SIM", &sim)
        .env("AWS_CONFIG_FILE", runtime_dir.path().join("no-aws-config"))
        .output()
        .await
        .unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("arn:aws:sts::123456789012:assumed-role/DevAnalytics/iamtokend-analytics"),
        "{stdout}"
    );
    assert_eq!(status.code(), Some(0));
}
