//! Test support: a temporary config tree, the simulator, and the real `iamtokend` binary
//! started on a temporary socket; `raw_http` for requests written by hand on a raw stream.

#![allow(dead_code)]

pub mod raw_http;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use http::Method;
use iamtokend::client::SocketClient;
use iamtokend::sim::{Sim, SimOptions};
use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_iamtokend")
}

/// A JWT-shaped assertion whose payload names `sub`.
pub fn assertion(sub: &str) -> String {
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        enc(r#"{"alg":"RS256"}"#),
        enc(&format!(r#"{{"sub":"{sub}"}}"#)),
        enc(&format!("sig-{sub}"))
    )
}

/// The application ARN used for app `name`.
pub fn client_id(name: &str) -> String {
    let hex: String = name
        .bytes()
        .map(|b| format!("{:02x}", b))
        .collect::<String>()
        .chars()
        .take(16)
        .collect();
    format!("arn:aws:sso::123456789012:application/ssoins-1111222233334444/apl-{hex:0<16}")
}

/// A config tree + simulator for one test.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub sim: Sim,
    pub options: SimOptions,
}

impl TestEnv {
    /// Simulator issuing tokens of `lifetime_secs`; main file with fast refresh settings.
    pub async fn new(lifetime_secs: u64) -> TestEnv {
        let options = SimOptions {
            token_lifetime: Duration::from_secs(lifetime_secs),
            ..SimOptions::default()
        };
        let sim = Sim::start(SimOptions {
            access_key_id: options.access_key_id.clone(),
            secret_access_key: options.secret_access_key.clone(),
            region: options.region.clone(),
            token_lifetime: options.token_lifetime,
        })
        .await
        .expect("simulator starts");
        let env = TestEnv {
            dir: tempfile::tempdir().unwrap(),
            sim,
            options,
        };
        std::fs::create_dir_all(env.path("apps.d")).unwrap();
        env.write_main("[refresh]\nmin_lead = \"1s\"\nmax_backoff = \"30s\"\n");
        env
    }

    /// The simulator's calls for `app`, in order.
    pub fn calls_for(&self, app: &str) -> Vec<iamtokend::sim::Call> {
        self.sim
            .calls()
            .into_iter()
            .filter(|c| c.client_id.as_deref() == Some(&client_id(app)))
            .collect()
    }

    /// Logs `app` in through the socket's login route with a code the simulator issued for
    /// a fresh verifier, as `iamtokend login` would after the browser's redirect. Returns the
    /// status, the answer, and the request body (to replay it).
    pub async fn sim_login(
        &self,
        daemon: &Daemon,
        app: &str,
        redirect_uri: &str,
    ) -> (u16, Value, Value) {
        let verifier = iamtokend::pkce::verifier();
        let code = self.sim.issue_auth_code(
            &client_id(app),
            redirect_uri,
            &iamtokend::pkce::challenge(&verifier),
        );
        let body = serde_json::json!({"code": code, "code_verifier": verifier.expose(),
            "redirect_uri": redirect_uri});
        let (status, answer) = daemon
            .post(&format!("/v1/apps/{app}/login"), Some(&body))
            .await;
        (status, answer, body)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn main_file(&self) -> PathBuf {
        self.path("iamtokend.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path("d.sock")
    }

    /// (Re)writes the main file: the socket line plus `extra` TOML.
    pub fn write_main(&self, extra: &str) {
        let text = format!(
            "[server]\nsocket = \"{}\"\n\n[state]\ndir = \"{}\"\n\n{extra}",
            self.socket().display(),
            self.path("state").display()
        );
        std::fs::write(self.main_file(), text).unwrap();
    }

    fn common(&self, name: &str) -> String {
        format!(
            "client_id = \"{}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            client_id(name),
            self.sim.endpoint_url()
        )
    }

    pub fn write_app(&self, name: &str, body: &str) {
        std::fs::write(
            self.path(&format!("apps.d/{name}.toml")),
            format!("{}{body}", self.common(name)),
        )
        .unwrap();
    }

    /// Appends `extra` TOML (e.g. an `[access]` or `[aws]` table) to app `name`'s file.
    pub fn append_app(&self, name: &str, extra: &str) {
        let path = self.path(&format!("apps.d/{name}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{extra}")).unwrap();
    }

    /// A jwt-bearer app reading `NAME.jwt` (written with `assertion(NAME)`).
    pub fn jwt_app(&self, name: &str) {
        std::fs::write(self.path(&format!("{name}.jwt")), assertion(name)).unwrap();
        self.write_app(
            name,
            &format!(
                "grant = \"jwt-bearer\"\nassertion_file = \"{}\"\n",
                self.path(&format!("{name}.jwt")).display()
            ),
        );
    }

    /// A refresh-token app whose seed refresh token the simulator knows.
    pub fn refresh_app(&self, name: &str, seed: &str) {
        self.sim.seed_refresh_token(&client_id(name), seed);
        std::fs::write(self.path(&format!("{name}.refresh")), seed).unwrap();
        self.write_app(
            name,
            &format!(
                "grant = \"refresh-token\"\nrefresh_token_file = \"{}\"\n",
                self.path(&format!("{name}.refresh")).display()
            ),
        );
    }

    pub fn exchange_app(&self, name: &str, subject: &str) {
        self.write_app(
            name,
            &format!("grant = \"token-exchange\"\nsubject_app = \"{subject}\"\n"),
        );
    }

    pub fn authcode_app(&self, name: &str, redirect_uri: &str) {
        self.write_app(
            name,
            &format!("grant = \"authorization-code\"\nredirect_uri = \"{redirect_uri}\"\n"),
        );
    }

    /// Starts `iamtokend serve` with the simulator's credentials.
    pub async fn daemon(&self) -> Daemon {
        self.daemon_with(&[]).await
    }

    /// Starts the daemon with extra environment (e.g. a wrong secret, RUST_LOG).
    pub async fn daemon_with(&self, env: &[(&str, &str)]) -> Daemon {
        let daemon = self.spawn_daemon(env);
        daemon.wait_listening().await;
        daemon
    }

    /// Starts the daemon without waiting.
    pub fn spawn_daemon(&self, env: &[(&str, &str)]) -> Daemon {
        self.spawn_daemon_under(&[], env)
    }

    /// Starts the daemon as the command of `wrapper` (e.g. `systemd-socket-activate -l PATH`)
    /// without waiting; the wrapper must exec it in place (signals go to the wrapper's pid).
    pub fn spawn_daemon_under(&self, wrapper: &[&str], env: &[(&str, &str)]) -> Daemon {
        self.spawn_daemon_full(wrapper, &[], env)
    }

    /// Starts the daemon without waiting, with the variables `remove` taken out of
    /// [`daemon_env`]'s clean environment (e.g. the simulator's keys) and `env` added.
    pub fn spawn_daemon_without(&self, remove: &[&str], env: &[(&str, &str)]) -> Daemon {
        self.spawn_daemon_full(&[], remove, env)
    }

    fn spawn_daemon_full(&self, wrapper: &[&str], remove: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = self.path(&format!("daemon-{}.log", rand_suffix()));
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(bin());
                cmd
            }
            None => Command::new(bin()),
        };
        cmd.arg("serve").arg("--config").arg(self.main_file());
        daemon_env(&mut cmd, &self.options, self.dir.path());
        for k in remove {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("daemon starts");
        Daemon {
            child: Some(child),
            socket: self.socket(),
            log,
        }
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A clean environment: the simulator's keys, no profile files, no IMDS.
pub fn daemon_env(cmd: &mut Command, options: &SimOptions, home: &Path) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_ACCESS_KEY_ID", &options.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &options.secret_access_key)
        .env("AWS_REGION", &options.region)
        .env("AWS_CONFIG_FILE", home.join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.join("no-aws-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "debug");
}

/// A running daemon. Killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn client(&self) -> SocketClient {
        SocketClient::new(&self.socket)
    }

    /// Waits (≤ 10 s) until `/v1/health` answers.
    pub async fn wait_listening(&self) {
        for _ in 0..200 {
            if let Ok(a) = self.client().request(Method::GET, "/v1/health", None).await {
                if a.status == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("daemon did not listen; log:\n{}", self.logs());
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let a = self
            .client()
            .request(Method::GET, path, None)
            .await
            .expect("request");
        (a.status.as_u16(), a.body)
    }

    pub async fn post(&self, path: &str, body: Option<&Value>) -> (u16, Value) {
        let a = self
            .client()
            .request(Method::POST, path, body)
            .await
            .expect("request");
        (a.status.as_u16(), a.body)
    }

    /// The access token the token route serves for `app` (asserting a 200).
    pub async fn token(&self, app: &str) -> String {
        let (status, body) = self.get(&format!("/v1/apps/{app}/token")).await;
        assert_eq!(status, 200, "{app}: {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    /// The `/v1/apps` row of `app`.
    pub async fn app(&self, app: &str) -> Value {
        let (_, body) = self.get("/v1/apps").await;
        body["apps"]
            .as_array()
            .and_then(|apps| apps.iter().find(|a| a["name"] == app).cloned())
            .unwrap_or(Value::Null)
    }

    /// Waits until `app` is in `state` (≤ `secs`).
    pub async fn wait_state(&self, app: &str, state: &str, secs: u64) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let row = self.app(app).await;
            if row["state"] == state {
                return row;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{app} not {state} within {secs}s: {row}\nlog:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs the binary as a client of this daemon (async: the simulator shares this runtime).
    pub async fn cli(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("IAMTOKEND_SOCKET")
            .env_remove("IAMTOKEND_CONFIG")
            .output()
            .await
            .expect("cli runs")
    }

    /// Waits (≤ `secs`) until the log holds `needle` at least `count` times; returns the log.
    pub async fn wait_log(&self, needle: &str, count: usize, secs: u64) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= count {
                return logs;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("log never said {needle:?} {count} times within {secs}s:\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGTERM and wait (≤ 10 s).
    pub fn stop(self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits for the process to exit (≤ 10 s).
    pub fn wait_exit(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        for _ in 0..200 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("daemon did not exit within 10s");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Log lines without terminal colour codes.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
