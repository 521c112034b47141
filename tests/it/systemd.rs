//! Running under systemd, without systemd as PID 1: a datagram socket stands in for
//! `NOTIFY_SOCKET`, `systemd-socket-activate` (the systemd package; `.ci/run` installs it)
//! passes the listening socket, and a second SIGTERM cuts the drain short.

use std::path::Path;
use std::time::Duration;

use iamtokend::sim::Fault;
use tokio::net::UnixDatagram;

use crate::support::{assertion, Daemon, TestEnv};

/// A jwt-bearer app whose `assertion_command` also writes its environment to `env_file`, so a
/// test can see what the daemon's children inherit.
fn app_dumping_child_env(env: &TestEnv, name: &str, env_file: &Path) {
    let jwt = env.path(&format!("{name}.jwt"));
    std::fs::write(&jwt, assertion(name)).unwrap();
    env.write_app(
        name,
        &format!(
            "grant = \"jwt-bearer\"\nassertion_command = [\"/bin/sh\", \"-c\", \"env > '{}'; cat '{}'\"]\n",
            env_file.display(),
            jwt.display()
        ),
    );
}

/// No line of the environment `app_dumping_child_env` wrote to `env_file` starts with one of
/// `vars` (each given as `NAME=`).
fn assert_not_inherited(env_file: &Path, vars: &[&str]) {
    let inherited = std::fs::read_to_string(env_file).expect("assertion_command ran");
    for var in vars {
        assert!(
            !inherited.lines().any(|l| l.starts_with(var)),
            "child inherited {var}"
        );
    }
}

/// The next datagram (≤ 10 s), or a panic naming what was expected.
async fn next_message(socket: &UnixDatagram, waiting_for: &str, daemon: &Daemon) -> String {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8(buf[..n].to_vec()).expect("notifications are UTF-8"),
        Ok(Err(e)) => panic!("reading the notify socket: {e}"),
        Err(_) => panic!(
            "no notification within 10s while waiting for {waiting_for}; log:\n{}",
            daemon.logs()
        ),
    }
}

/// Reads datagrams into `seen` until one has the line `line` (≤ 20 s: pings keep arriving, so
/// the per-message wait alone would not end a wait for a line that never comes).
async fn until_line(
    socket: &UnixDatagram,
    line: &str,
    seen: &mut Vec<String>,
    daemon: &Daemon,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let message = next_message(socket, line, daemon).await;
        seen.push(message.clone());
        if message.lines().any(|l| l == line) {
            return message;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no {line:?} within 20s; got {:?}\nlog:\n{}",
                &seen[seen.len().saturating_sub(5)..],
                daemon.logs()
            );
        }
    }
}

fn has_line(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

async fn wait_exit(daemon: Daemon) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || daemon.wait_exit())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_gets_ready_watchdog_status_and_stopping_in_order() {
    let env = TestEnv::new(3600).await;
    let child_env = env.path("child-env");
    app_dumping_child_env(&env, "analytics", &child_env);
    // The first token takes 2 s: READY=1 must not wait for it.
    env.sim.push_fault(Fault::Delay(Duration::from_secs(2)));
    let notify_path = env.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let daemon = env.spawn_daemon(&[
        ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "200000"),
    ]);
    let mut seen = Vec::new();

    let ready = until_line(&notify, "READY=1", &mut seen, &daemon).await;
    assert_eq!(seen.len(), 1, "something came before READY=1: {seen:?}");
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .expect("READY=1 carries a STATUS= line");
    assert!(status.starts_with("1 app: "), "{status}");
    assert!(
        !status.contains("ready"),
        "READY=1 waited for the token: {status}"
    );
    // The socket is bound by then.
    let (code, _) = daemon.get("/v1/health").await;
    assert_eq!(code, 200);

    // Pings every 100 ms (half of WATCHDOG_USEC, WATCHDOG_PID unset).
    until_line(&notify, "WATCHDOG=1", &mut seen, &daemon).await;
    until_line(&notify, "WATCHDOG=1", &mut seen, &daemon).await;
    // The status line follows the app to ready (polled every 5 s).
    until_line(&notify, "STATUS=1 app: 1 ready", &mut seen, &daemon).await;

    daemon.signal(libc::SIGTERM);
    until_line(&notify, "STOPPING=1", &mut seen, &daemon).await;
    let log = daemon.log.clone();
    let status = wait_exit(daemon).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    // Nothing after STOPPING=1: the watchdog stopped with it.
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.try_recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let stopping = seen.iter().position(|m| has_line(m, "STOPPING=1")).unwrap();
    assert_eq!(
        stopping,
        seen.len() - 1,
        "messages after STOPPING=1: {seen:?}"
    );
    let pings = seen.iter().filter(|m| has_line(m, "WATCHDOG=1")).count();
    assert!(pings >= 2, "{seen:?}");
    assert_eq!(
        seen.iter().filter(|m| has_line(m, "READY=1")).count(),
        1,
        "{seen:?}"
    );

    // The daemon's children do not inherit the notification variables.
    assert_not_inherited(
        &child_env,
        &["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_the_socket_systemd_socket_activate_passes_and_leaves_it() {
    let env = TestEnv::new(3600).await;
    let child_env = env.path("child-env");
    app_dumping_child_env(&env, "analytics", &child_env);
    // The config names another path: the passed socket wins and the configured one is never
    // created.
    let passed = env.path("activated.sock");
    let daemon = activated_daemon(&env, &[passed.to_str().unwrap()], &passed).await;
    daemon.wait_state("analytics", "ready", 10).await;
    let (code, body) = daemon.get("/v1/apps/analytics/token").await;
    assert_eq!(code, 200, "{body}");
    assert!(body["access_token"].as_str().is_some());
    let out = daemon.cli(&["status", "--format", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(daemon
        .logs()
        .contains("using the socket passed by the service manager"));
    assert!(
        !env.socket().exists(),
        "the configured socket was bound too"
    );

    let log = daemon.log.clone();
    let status = wait_exit_after_term(daemon).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    // The socket belongs to whoever passed it: still there after the daemon exits.
    assert!(passed.exists(), "the passed socket file was removed");

    assert_not_inherited(
        &child_env,
        &["LISTEN_PID=", "LISTEN_FDS=", "LISTEN_FDNAMES="],
    );
}

/// `systemd-socket-activate` with the arguments that pass `listen` (in order) and the
/// simulator's credentials to the daemon (it hands the command only TERM, PATH, USER, HOME
/// and what `-E` names).
fn activate_wrapper(listen: &[&str]) -> Vec<String> {
    let activate = which("systemd-socket-activate").expect(
        "systemd-socket-activate not found: install the Debian package `systemd` (.ci/run does)",
    );
    let mut wrapper = vec![activate.to_str().unwrap().to_owned()];
    for l in listen {
        wrapper.extend(["-l".to_owned(), (*l).to_owned()]);
    }
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_EC2_METADATA_DISABLED",
        "RUST_LOG",
    ] {
        wrapper.extend(["-E".to_owned(), var.to_owned()]);
    }
    wrapper
}

/// The daemon under `systemd-socket-activate` passing `listen`, the API socket at `socket`;
/// returns once the first connection has made the wrapper exec it.
async fn activated_daemon(env: &TestEnv, listen: &[&str], socket: &Path) -> Daemon {
    let wrapper = activate_wrapper(listen);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut daemon = env.spawn_daemon_under(&wrapper, &[]);
    daemon.socket = socket.to_owned();
    daemon.wait_listening().await;
    daemon
}

/// A free loopback port (bound and released; the wrapper binds it again at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The credentials endpoint's port passed as a second descriptor (listed first, so it is fd
/// 3: the kind tells them apart, not the order) serves the SDK route; a passed port without
/// `credentials_listen` is a one-line refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credentials_port_can_be_passed_as_a_second_socket() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::new(3600).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    std::fs::write(
        env.main_file(),
        format!(
            "[server]\nsocket = \"{}\"\ncredentials_listen = \"{addr}\"\n\n[state]\ndir = \"{}\"\n",
            env.socket().display(),
            env.path("state").display()
        ),
    )
    .unwrap();
    let jwt = env.path("analytics.jwt");
    std::fs::write(&jwt, assertion("analytics")).unwrap();
    env.write_app(
        "analytics",
        &format!(
            "grant = \"jwt-bearer\"\nscopes = [\"openid\", \"aws\", \"sts:identity_context\"]\nassertion_file = \"{}\"\n\n[role]\narn = \"arn:aws:iam::123456789012:role/AnalyticsTIP\"\nendpoint_url = \"{}\"\n",
            jwt.display(),
            env.sim.endpoint_url()
        ),
    );
    let passed = env.path("activated.sock");
    let daemon = activated_daemon(&env, &[&addr, passed.to_str().unwrap()], &passed).await;
    daemon.wait_state("analytics", "ready", 10).await;
    let (code, body) = daemon.get("/v1/apps/analytics/endpoint").await;
    assert_eq!(code, 200, "{body}");
    let url = body["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("http://{addr}/v1/apps/analytics/credentials"),
        "the passed port is the one handed out"
    );
    let token = body["authorization_token"].as_str().unwrap();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /v1/apps/analytics/credentials HTTP/1.1\r\nhost: {addr}\r\nauthorization: {token}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    crate::support::raw_http::read_to_close(&mut stream, &mut answer)
        .await
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(
        crate::support::raw_http::status_of(&answer),
        200,
        "{answer}"
    );
    assert!(answer.contains("\"AccessKeyId\""), "{answer}");
    let logs = daemon.logs();
    assert!(
        logs.contains("using the credentials endpoint port passed by the service manager"),
        "{logs}"
    );
    assert!(!logs.contains(token), "the endpoint token reached the log");
    let log = daemon.log.clone();
    let status = wait_exit_after_term(daemon).await;
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );

    // The same sockets, the endpoint not configured: refused at start, with one line.
    env.write_main("");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let passed = env.path("activated2.sock");
    let wrapper = activate_wrapper(&[passed.to_str().unwrap(), &addr]);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let daemon = env.spawn_daemon_under(&wrapper, &[]);
    // The first connection makes the wrapper exec the daemon.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::UnixStream::connect(&passed).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "never listening");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = daemon.log.clone();
    let status = wait_exit(daemon).await;
    let logs = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(
        logs.contains(&format!(
            "socket activation passed the TCP port {addr}, but [server] credentials_listen is not set"
        )),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    // A forced refresh whose upstream call hangs: a request in flight for the drain to wait on.
    env.sim.push_fault(Fault::Delay(Duration::from_secs(60)));
    let client = daemon.client();
    let in_flight = tokio::spawn(async move {
        client
            .request(http::Method::POST, "/v1/apps/analytics/refresh", None)
            .await
    });
    daemon.wait_state("analytics", "refreshing", 10).await;

    daemon.signal(libc::SIGTERM);
    daemon.wait_log("shutting down", 1, 10).await;
    assert!(!in_flight.is_finished());
    daemon.signal(libc::SIGTERM);
    let socket = daemon.socket.clone();
    let log = daemon.log.clone();
    let status = wait_exit(daemon).await;
    let logs = std::fs::read_to_string(log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(logs.contains("second signal"), "{logs}");
    assert!(
        !logs.contains("requests still in flight"),
        "the drain ran out its timeout instead: {logs}"
    );
    assert!(!socket.exists(), "socket file left behind");
    // The request in flight was cut, not answered.
    if let Ok(answer) = in_flight.await.unwrap() {
        panic!("the request was answered: {}", answer.status);
    }
}

async fn wait_exit_after_term(daemon: Daemon) -> std::process::ExitStatus {
    daemon.signal(libc::SIGTERM);
    wait_exit(daemon).await
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_reloading_with_monotonic_usec_then_ready() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let notify_path = env.path("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let daemon = env.spawn_daemon(&[("NOTIFY_SOCKET", notify_path.to_str().unwrap())]);
    let mut seen = Vec::new();
    until_line(&notify, "READY=1", &mut seen, &daemon).await;
    daemon.wait_state("analytics", "ready", 10).await;

    env.jwt_app("reports");
    daemon.signal(libc::SIGHUP);
    let reloading = until_line(&notify, "RELOADING=1", &mut seen, &daemon).await;
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC= in the same datagram as RELOADING=1")
        .parse()
        .expect("a number");
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    assert!(
        usec <= now_usec && now_usec - usec < 10_000_000,
        "{usec} vs {now_usec}"
    );
    until_line(&notify, "READY=1", &mut seen, &daemon).await;
    daemon.wait_log("config reloaded", 1, 10).await;
    daemon.wait_state("reports", "ready", 10).await;
}
