//! `iamtokend login` with a real browser: headless Chromium (Debian's `chromium`, which
//! `.ci/run` installs) opens the authorize URL `login` prints, follows the simulator's
//! redirect to the loopback listener, and renders the page it gets. The DOM Chromium dumps
//! is checked, and a screenshot of the success page is kept for a person to look at.
//!
//! A missing `/usr/bin/chromium` fails these tests with a message saying how to install it:
//! a browser test that quietly passes without a browser would prove nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

use crate::support::{bin, Daemon, TestEnv};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Where the screenshots go: `<target>/tmp/browser/`, kept after the run.
fn shot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What Chromium made of a URL: the DOM after load, and the screenshot if one was asked for.
struct Rendered {
    dom: String,
    screenshot: Option<PathBuf>,
}

/// Opens `url` in a fresh headless Chromium profile (one visit: the listener serves each
/// callback once), dumping the DOM and, with `screenshot`, saving an 800x600 PNG there.
async fn chromium(url: &str, screenshot: Option<&Path>) -> Rendered {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the browser tests need Debian's chromium \
         (`apt-get install chromium`; .ci/run installs it)"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=800,600",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .arg("--dump-dom");
    if let Some(path) = screenshot {
        let _ = std::fs::remove_file(path);
        cmd.arg(format!("--screenshot={}", path.display()));
    }
    let child = cmd
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    // Generous: Chromium's first start on a loaded 2-core machine takes seconds.
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finishes within 90s")
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Rendered {
        dom,
        screenshot: screenshot.map(Path::to_owned),
    }
}

/// The width and height in a PNG's IHDR, or None if `bytes` is not a PNG.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR")
        .then(|| (be(&bytes[16..20]), be(&bytes[20..24])))
}

/// A running `iamtokend login APP --no-browser`.
struct Login {
    child: Child,
    stderr: BufReader<ChildStderr>,
    seen: String,
}

impl Login {
    fn start(env: &TestEnv, daemon: &Daemon, app: &str) -> Login {
        let mut child = Command::new(bin())
            .arg("--config")
            .arg(env.main_file())
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["login", app, "--no-browser", "--timeout", "120"])
            .stdout(Stdio::null())
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

    /// The exit code and everything it wrote on stderr.
    async fn finish(mut self) -> (i32, String) {
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).await.unwrap();
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .expect("login exits")
            .unwrap();
        (status.code().unwrap_or(-1), self.seen + &rest)
    }
}

async fn portal_env() -> (TestEnv, Daemon) {
    let env = TestEnv::new(3600).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.authcode_app("portal", &format!("http://127.0.0.1:{port}/callback"));
    let daemon = env.daemon().await;
    daemon.wait_state("portal", "needs_login", 10).await;
    (env, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_follows_the_redirect_and_the_success_page_renders() {
    let (env, daemon) = portal_env().await;
    let mut login = Login::start(&env, &daemon, "portal");
    let url = login.url().await;

    let shot = shot_dir().join("login-success.png");
    let page = chromium(&url, Some(&shot)).await;
    assert!(page.dom.contains("<h1>Login received</h1>"), "{}", page.dom);
    assert!(page.dom.contains("You can close this tab."), "{}", page.dom);
    let shot = page.screenshot.unwrap();
    let png = std::fs::read(&shot).expect("chromium saved the screenshot");
    assert_eq!(png_size(&png), Some((800, 600)), "{}", shot.display());
    println!("screenshot of the success page: {}", shot.display());

    let (code, stderr) = login.finish().await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("Logged in: portal is ready"), "{stderr}");
    daemon.wait_state("portal", "ready", 5).await;
    let token = daemon.token("portal").await;
    assert!(!token.is_empty());
    let exchange = env.calls_for("portal");
    assert_eq!(exchange.len(), 1, "one code exchange: {exchange:?}");
    assert_eq!(
        exchange[0].grant_type.as_deref(),
        Some("authorization_code")
    );
    assert_eq!(exchange[0].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_the_refusal_page_for_access_denied() {
    let (env, daemon) = portal_env().await;
    env.sim.set_authorize_error(Some("access_denied"));
    let mut login = Login::start(&env, &daemon, "portal");
    let url = login.url().await;

    let shot = shot_dir().join("login-refused.png");
    let page = chromium(&url, Some(&shot)).await;
    assert!(page.dom.contains("<h1>Login refused</h1>"), "{}", page.dom);
    assert!(
        page.dom.contains("The login was refused (access_denied)."),
        "{}",
        page.dom
    );
    let png = std::fs::read(page.screenshot.unwrap()).unwrap();
    assert_eq!(png_size(&png), Some((800, 600)));

    let (code, stderr) = login.finish().await;
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("the login was refused: access_denied"),
        "{stderr}"
    );
    assert!(env.calls_for("portal").is_empty(), "no code exchange");
    daemon.wait_state("portal", "needs_login", 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_the_not_accepted_page_for_a_wrong_state() {
    let (env, daemon) = portal_env().await;
    env.sim.set_authorize_state(Some("forged-state"));
    let mut login = Login::start(&env, &daemon, "portal");
    let url = login.url().await;

    let page = chromium(&url, None).await;
    assert!(
        page.dom.contains("<h1>Login not accepted</h1>"),
        "{}",
        page.dom
    );
    assert!(env.calls_for("portal").is_empty(), "no code exchange");
    assert_eq!(daemon.app("portal").await["state"], "needs_login");
    // Whether the login then ends or keeps waiting is login.rs's business; it is killed here.
    drop(login);
}
