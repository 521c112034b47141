//! `iamtokend login`: the whole authorization-code flow with PKCE, the test playing the
//! browser (the simulator's `GET /authorize` redirects with a code, as a signed-in user's
//! browser would be sent).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

use crate::support::raw_http;
use crate::support::{bin, client_id, Daemon, TestEnv};

/// A free loopback port for a redirect URI.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 GET over a fresh TCP connection: status, Location header, body.
async fn http_get(url: &str) -> (u16, Option<String>, String) {
    let url = url::Url::parse(url).unwrap();
    let addr = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let answer = raw_http::get(stream, &addr, &target).await;
    let location = answer.header("location").map(str::to_owned);
    (answer.status, location, answer.body)
}

struct Login {
    child: Child,
    stderr: BufReader<ChildStderr>,
    seen: String,
}

impl Login {
    fn start(env: &TestEnv, daemon: &Daemon, app: &str, extra: &[&str]) -> Login {
        let mut child = Command::new(bin())
            .arg("--config")
            .arg(env.main_file())
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["login", app, "--no-browser"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        Login {
            child,
            stderr,
            seen: String::new(),
        }
    }

    /// The authorize URL it printed.
    async fn url(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.stderr.read_line(&mut line))
                .await
                .expect("login prints its URL")
                .unwrap();
            assert!(n > 0, "login ended before printing a URL: {}", self.seen);
            self.seen.push_str(&line);
            if let Some(url) = line.trim().strip_prefix("http") {
                return format!("http{url}");
            }
        }
    }

    /// Exit code, stdout and the rest of stderr.
    async fn finish(mut self) -> (i32, String, String) {
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).await.unwrap();
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .await
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("login exits")
            .unwrap();
        (status.code().unwrap_or(-1), stdout, self.seen + &rest)
    }
}

async fn portal_env() -> (TestEnv, Daemon, String) {
    let env = TestEnv::new(3600).await;
    let redirect = format!("http://127.0.0.1:{}/callback", free_port());
    env.authcode_app("portal", &redirect);
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("portal", "needs_login", 10).await;
    (env, daemon, redirect)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_runs_the_whole_pkce_flow_and_the_app_becomes_ready() {
    let (env, daemon, redirect) = portal_env().await;
    let mut login = Login::start(&env, &daemon, "portal", &[]);
    let url = login.url().await;
    let parsed = url::Url::parse(&url).unwrap();
    let q: std::collections::HashMap<_, _> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], client_id("portal"));
    assert_eq!(q["redirect_uri"], redirect);
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 16);

    // The "browser": the authorize page redirects to the loopback listener with a code.
    let (status, location, _) = http_get(&url).await;
    assert_eq!(status, 302);
    let location = location.expect("a redirect");
    assert!(location.starts_with(&redirect), "{location}");
    let (status, _, page) = http_get(&location).await;
    assert_eq!(status, 200);
    assert!(page.contains("You can close this tab"), "{page}");

    let (code, stdout, stderr) = login.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "", "nothing on stdout");
    assert!(stderr.contains("Logged in: portal is ready"), "{stderr}");
    daemon.wait_state("portal", "ready", 5).await;
    let call = env
        .sim
        .calls()
        .into_iter()
        .find(|c| c.client_id.as_deref() == Some(&client_id("portal")))
        .expect("the code was exchanged");
    assert_eq!(call.grant_type.as_deref(), Some("authorization_code"));
    assert_eq!(call.status, 200, "the simulator accepted the verifier");
    assert_eq!(call.params["redirectUri"], redirect);
    let verifier = &call.params["codeVerifier"];
    assert!((43..=128).contains(&verifier.len()));
    assert_eq!(
        iamtokend::pkce::challenge(&iamtokend::secret::Secret::new(verifier.clone())),
        q["code_challenge"]
    );
    // The secret halves of the flow never reach the daemon's log.
    assert!(!daemon.logs().contains(verifier.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_with_the_wrong_verifier_is_refused_at_token_time() {
    let (env, daemon, redirect) = portal_env().await;
    let code = env.sim.issue_auth_code(
        &client_id("portal"),
        &redirect,
        &iamtokend::pkce::challenge(&iamtokend::pkce::verifier()),
    );
    let body = serde_json::json!({"code": code,
        "code_verifier": iamtokend::pkce::verifier().expose(), "redirect_uri": redirect});
    let (status, answer) = daemon.post("/v1/apps/portal/login", Some(&body)).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("verifier"),
        "{answer}"
    );
    daemon.wait_state("portal", "needs_login", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_while_one_is_pending_is_refused() {
    let (env, daemon, _) = portal_env().await;
    let mut first = Login::start(&env, &daemon, "portal", &["--timeout", "20"]);
    first.url().await;
    let second = Login::start(&env, &daemon, "portal", &[]);
    let (code, _, stderr) = second.finish().await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("another `iamtokend login` waiting"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("http://127.0.0.1:"),
        "no URL for a login that cannot finish"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_nobody_finishes_times_out() {
    let (env, daemon, redirect) = portal_env().await;
    let mut login = Login::start(&env, &daemon, "portal", &["--timeout", "1"]);
    login.url().await;
    let (code, _, stderr) = login.finish().await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("no redirect reached {redirect} within 1s")),
        "{stderr}"
    );
    daemon.wait_state("portal", "needs_login", 5).await;
}

/// A redirect with a state that is not the login's (anyone on the host can send one) gets the
/// error page and does not end the login: the real redirect that follows completes it.
/// (Until issue 14 one wrong state ended the login; the contract now wants it waited past.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_state_is_refused_and_the_login_keeps_waiting_for_the_right_one() {
    let (env, daemon, _) = portal_env().await;
    env.sim.set_authorize_state(Some("forged-state"));
    let mut login = Login::start(&env, &daemon, "portal", &["--timeout", "60"]);
    let url = login.url().await;
    let (_, location, _) = http_get(&url).await;
    let forged = location.unwrap();
    let forged_code = url::Url::parse(&forged)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("the forged redirect carries a code");
    let (status, _, page) = http_get(&forged).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("still waiting"), "{page}");
    // A second forgery, then the browser's real redirect.
    let (status, _, _) = http_get(&forged).await;
    assert_eq!(status, 400);
    assert!(
        env.sim
            .calls()
            .iter()
            .all(|c| c.client_id.as_deref() != Some(&client_id("portal"))),
        "no code exchange on a forged redirect"
    );
    env.sim.set_authorize_state(None);
    let (_, location, _) = http_get(&url).await;
    let (status, _, page) = http_get(&location.unwrap()).await;
    assert_eq!(status, 200, "{page}");
    let (code, stdout, stderr) = login.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr.matches("whose state is not this login's").count(),
        2,
        "each forgery is reported: {stderr}"
    );
    assert!(!stderr.contains(&forged_code), "a code on stderr: {stderr}");
    assert!(stderr.contains("Logged in: portal is ready"), "{stderr}");
    daemon.wait_state("portal", "ready", 5).await;
}

/// With a `localhost` redirect the listener holds both loopback addresses, so another program
/// cannot take `[::1]:PORT` (where a browser resolving `localhost` to ::1 would send the code);
/// the redirect works through either address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_localhost_redirect_holds_both_loopback_addresses() {
    let env = TestEnv::new(3600).await;
    let port = free_port();
    let redirect = format!("http://localhost:{port}/callback");
    env.authcode_app("portal", &redirect);
    let daemon = env.daemon().await;
    daemon.wait_state("portal", "needs_login", 10).await;
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let mut login = Login::start(&env, &daemon, "portal", &["--timeout", "60"]);
    let url = login.url().await;
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_err(),
        "127.0.0.1:{port} is not held by the login"
    );
    if ipv6 {
        let attacker = std::net::TcpListener::bind(("::1", port));
        assert!(
            attacker.is_err(),
            "another program could bind [::1]:{port} while the login waits"
        );
    } else {
        eprintln!("skipping the [::1] part: this machine has no IPv6 loopback");
    }
    let (_, location, _) = http_get(&url).await;
    let location = location.unwrap();
    assert!(location.starts_with(&redirect), "{location}");
    let browser = if ipv6 {
        location.replacen("localhost", "[::1]", 1)
    } else {
        location.replacen("localhost", "127.0.0.1", 1)
    };
    let (status, _, page) = http_get(&browser).await;
    assert_eq!(status, 200, "{page}");
    let (code, _, stderr) = login.finish().await;
    assert_eq!(code, 0, "{stderr}");
    daemon.wait_state("portal", "ready", 5).await;
}

/// An address of the redirect already taken is refused before the URL is printed: whoever
/// holds it would receive the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_localhost_redirect_with_ipv6_loopback_taken_is_refused() {
    let Ok(squatter) = std::net::TcpListener::bind("[::1]:0") else {
        eprintln!("skipping: this machine has no IPv6 loopback");
        return;
    };
    let port = squatter.local_addr().unwrap().port();
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        eprintln!("skipping: 127.0.0.1:{port} is in use by something else");
        return;
    }
    let env = TestEnv::new(3600).await;
    env.authcode_app("portal", &format!("http://localhost:{port}/callback"));
    let daemon = env.daemon().await;
    daemon.wait_state("portal", "needs_login", 10).await;
    let (code, _, stderr) = Login::start(&env, &daemon, "portal", &[]).finish().await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on [::1]:{port}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("http://localhost"),
        "no URL printed: {stderr}"
    );
    drop(squatter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_callback_is_reported() {
    let (env, daemon, _) = portal_env().await;
    env.sim.set_authorize_error(Some("access_denied"));
    let mut login = Login::start(&env, &daemon, "portal", &[]);
    let url = login.url().await;
    let (_, location, _) = http_get(&url).await;
    let (status, _, page) = http_get(&location.unwrap()).await;
    assert_eq!(status, 200);
    assert!(page.contains("access_denied"), "{page}");
    let (code, _, stderr) = login.finish().await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the login was refused: access_denied: The user denied the request."),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_of_an_app_that_is_not_authorization_code_is_refused() {
    let (env, daemon, _) = portal_env().await;
    let (code, _, stderr) = Login::start(&env, &daemon, "analytics", &[]).finish().await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("does not use the authorization-code grant"),
        "{stderr}"
    );
    let (code, _, stderr) = Login::start(&env, &daemon, "nosuchapp", &[]).finish().await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("no app nosuchapp"), "{stderr}");
}
