//! Hostile and broken clients on the socket: each gets a clean 4xx/5xx or a closed
//! connection, never a panic, and never holds up anyone else.
//!
//! The first tests speak raw bytes to the real binary (its default limits). The ones about
//! timeouts run `server::run_with_limits` in-process with sub-second limits, so they prove the
//! mechanism without waiting the production 10 s.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use iamtokend::server::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::support::raw_http::{raw, read_all, read_to_close, status_of};
use crate::support::TestEnv;

/// A connection that holds one of the daemon's slots: an answer proves it (slots are taken by
/// the connection's own task, so without it a later connect could overtake it). The rest of
/// the answer stays unread.
async fn holding_a_slot(socket: &Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).await.unwrap();
    s.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    s
}

/// Once held connections are dropped, the daemon sees the closes and gives their slots back:
/// the status of a health check once it is 200, or the last one after 100 tries 50 ms apart.
async fn health_once_slots_return(socket: &Path) -> u16 {
    let mut status = 0;
    for _ in 0..100 {
        status = status_of(
            &raw(
                socket,
                b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .await,
        );
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_get_clean_answers() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    let s = &daemon.socket;

    // HTTP/0.9 (no version): refused with a 4xx or closed, never served.
    let a = raw(s, b"GET /v1/apps/analytics/token\r\n\r\n").await;
    assert!(a.is_empty() || status_of(&a) / 100 == 4, "{a}");
    assert!(!a.contains("access_token"), "{a}");

    // Non-UTF-8 and non-ASCII bytes in the path: 400 from the parser.
    let a = raw(
        s,
        b"GET /v1/apps/\xff\xfe/token HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(a.is_empty() || status_of(&a) == 400, "{a}");

    // Percent-encoded app names are not decoded: no app has that name (README).
    let a = raw(
        s,
        b"GET /v1/apps/ana%6Cytics/token HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&a), 404, "{a}");
    assert!(a.contains("unknown_app"), "{a}");
    let a = raw(
        s,
        b"GET /v1/apps/..%2F..%2Fetc/token HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&a), 404, "{a}");

    // A head over 8 KiB: 431 and a close.
    let mut big = b"GET /v1/health HTTP/1.1\r\nhost: x\r\nx-junk: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 16 * 1024));
    big.extend(b"\r\n\r\n");
    let a = raw(s, &big).await;
    assert!(a.is_empty() || status_of(&a) == 431, "{a}");

    // Too many headers: 431.
    let mut many = b"GET /v1/health HTTP/1.1\r\nhost: x\r\n".to_vec();
    for i in 0..100 {
        many.extend(format!("x-h{i}: 1\r\n").as_bytes());
    }
    many.extend(b"\r\n");
    let a = raw(s, &many).await;
    assert!(a.is_empty() || status_of(&a) == 431, "{a}");

    // A body declared larger than the limit on the login route: 4xx, not read to the end.
    let a = raw(
        s,
        b"POST /v1/apps/analytics/login HTTP/1.1\r\nhost: x\r\ncontent-length: 99999999\r\nconnection: close\r\n\r\n{",
    )
    .await;
    assert!(a.is_empty() || status_of(&a) / 100 == 4, "{a}");

    // Garbage (a TLS hello, junk after the blank lines a parser may skip), a negative length, a broken chunked body on a
    // route that reads no body (health may answer before the parser sees the body).
    for junk in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"\r\n\r\n\x01\x02 \xff\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
        b"GET /v1/health HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/apps/analytics/login HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let a = raw(s, junk).await;
        let statuses: Vec<u16> = a
            .match_indices("HTTP/1.1 ")
            .map(|(i, _)| status_of(&a[i..]))
            .collect();
        assert!(
            statuses.iter().all(|s| *s == 200 || s / 100 == 4),
            "{statuses:?}: {a}"
        );
    }

    assert_eq!(daemon.get("/v1/health").await.0, 200);
    assert_eq!(daemon.get("/v1/apps/analytics/token").await.0, 200);
    assert!(!daemon.logs().contains("panicked"));
}

/// A client pipelining far more charged requests (ones that may call upstream; here a
/// `min_ttl` the cached token meets, so the daemon answers fast: forced refreshes would be
/// held to one a second by their app) than the per-connection rate allows gets the burst
/// answered, then one 429 `rate_limited`, then a close; other clients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_flood_is_cut_off() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    let stream = UnixStream::connect(&daemon.socket).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let request = b"GET /v1/apps/analytics/token?min_ttl=60 HTTP/1.1\r\nhost: x\r\n\r\n";
        let flood: Vec<u8> = request.repeat(2000);
        // The daemon stops reading once it closes; the write then fails, as it should.
        let _ = write.write_all(&flood).await;
        write
    });
    let mut answer = Vec::new();
    // The flood ends in a close (a reset after the 429 keeps what was read).
    read_to_close(&mut read, &mut answer).await.ok();
    let text = String::from_utf8_lossy(&answer);
    let ok = text.matches("HTTP/1.1 200").count();
    let limited = text.matches("HTTP/1.1 429").count();
    assert!(ok >= 200, "the burst is served: {ok}");
    assert!(ok < 2000, "the flood is not served in full: {ok}");
    assert_eq!(limited, 1, "one 429, then the close");
    assert!(text.trim_end().ends_with("}"), "the 429 is the last answer");
    assert!(text.contains("rate_limited"));
    let _ = writer.await;
    // A new connection is served at once.
    assert_eq!(daemon.get("/v1/health").await.0, 200);
}

/// #14 item 8: the charged-request rate is also counted per peer uid, across its
/// connections: 10 connections each pipelining 190 charged requests (each within the
/// per-connection burst of 200) get no more answered than the uid's burst (400) plus its rate
/// (100/s) over the flood, and the rest 429 `rate_limited`. Before, every one was answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_rate_is_counted_per_uid_across_connections() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    let start = tokio::time::Instant::now();
    let mut floods = Vec::new();
    for _ in 0..10 {
        let stream = UnixStream::connect(&daemon.socket).await.unwrap();
        floods.push(tokio::spawn(async move {
            let (mut read, mut write) = stream.into_split();
            let writer = tokio::spawn(async move {
                let request =
                    b"GET /v1/apps/analytics/token?min_ttl=60 HTTP/1.1\r\nhost: x\r\n\r\n";
                let mut flood = request.repeat(189);
                flood.extend_from_slice(
                    b"GET /v1/apps/analytics/token?min_ttl=60 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
                );
                // A connection cut off at its 429 stops reading; the write then fails.
                let _ = write.write_all(&flood).await;
                write
            });
            let mut answer = Vec::new();
            read_to_close(&mut read, &mut answer).await.ok();
            let _ = writer.await;
            let text = String::from_utf8_lossy(&answer);
            (
                text.matches("HTTP/1.1 200").count(),
                text.matches("HTTP/1.1 429").count(),
            )
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for f in floods {
        let (o, l) = f.await.unwrap();
        ok += o;
        limited += l;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let most = 400.0 + 100.0 * elapsed;
    assert!(
        (ok as f64) <= most,
        "{ok} of 1900 answered in {elapsed:.1} s; the uid's share is {most:.0}"
    );
    assert!(limited >= 1, "no 429 for {ok} answered in {elapsed:.1} s");
    assert!(ok >= 400, "the uid's burst is served: {ok}");
    // Another connection of the same uid is served again once the rate refills.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        daemon.get("/v1/apps/analytics/token?min_ttl=60").await.0,
        200
    );
}

/// Slow or silent clients hold a connection each, nothing more: others are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_block_others() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    // Ten clients: five silent, five trickling a request head a byte at a time.
    let mut slow = Vec::new();
    for i in 0..10 {
        let mut stream = UnixStream::connect(&daemon.socket).await.unwrap();
        slow.push(tokio::spawn(async move {
            if i % 2 == 0 {
                for b in b"GET /v1/apps/analytics/token HTTP/1.1\r\nhost: x\r\n" {
                    if stream.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            stream
        }));
    }
    for _ in 0..20 {
        assert_eq!(daemon.get("/v1/apps/analytics/token").await.0, 200);
    }
    for task in slow {
        assert!(!task.is_finished() || task.await.is_ok());
    }
}

/// Over the per-uid connection limit a client gets 503 `too_many_connections` at once (not
/// a hang); once connections close, new ones are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_then_recovery() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.daemon().await;
    let per_uid = Limits::default().max_connections_per_uid;
    let mut held = Vec::new();
    for _ in 0..per_uid {
        held.push(holding_a_slot(&daemon.socket).await);
    }
    let a = raw(
        &daemon.socket,
        b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&a), 503, "{a}");
    assert!(a.contains("too_many_connections"), "{a}");
    // A held connection still works (after the rest of its first answer).
    let mut first = held.remove(0);
    first
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_all(&mut first).await.matches("HTTP/1.1 200").count(),
        1
    );
    drop(held);
    // Slots come back once the daemon has seen the closes.
    assert_eq!(health_once_slots_return(&daemon.socket).await, 200);
}

// ---------------------------------------------------------------------------------------
// In-process, with short limits.

struct Server {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The real server and routes over a broker with one authorization-code app (no upstream
/// call happens before a login), with `limits`.
async fn server(limits: Limits) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("apps.d")).unwrap();
    std::fs::write(dir.path().join("iamtokend.toml"), "").unwrap();
    std::fs::write(
        dir.path().join("apps.d/portal.toml"),
        format!(
            "client_id = \"{}\"\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\n\
             grant = \"authorization-code\"\nredirect_uri = \"http://127.0.0.1:8400/cb\"\n",
            crate::support::client_id("portal")
        ),
    )
    .unwrap();
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
    let socket = dir.path().join("s.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(iamtokend::server::run_with_limits(
        listener,
        broker,
        async move {
            let _ = stopped.await;
        },
        limits,
    ));
    Server {
        _dir: dir,
        socket,
        stop: Some(stop),
        task: Some(task),
    }
}

fn short() -> Limits {
    Limits {
        header_read_timeout: Duration::from_millis(500),
        body_timeout: Duration::from_millis(500),
        ..Limits::default()
    }
}

/// A silent client, an idle keep-alive client and a trickling one are all closed at the
/// header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_idle_and_trickling_clients_are_closed() {
    let server = server(short()).await;

    let mut silent = UnixStream::connect(&server.socket).await.unwrap();
    assert_eq!(read_all(&mut silent).await, "", "closed without an answer");

    let mut idle = UnixStream::connect(&server.socket).await.unwrap();
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let a = read_all(&mut idle).await;
    assert_eq!(a.matches("HTTP/1.1 200").count(), 1, "{a}");

    let mut trickle = UnixStream::connect(&server.socket).await.unwrap();
    let writer = tokio::spawn(async move {
        for b in b"GET /v1/health HTTP/1.1\r\nhost: x\r\nx-slow: yes\r\n" {
            if trickle.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Still open after the whole trickle (5 s): the timeout did not fire.
        false
    });
    assert!(writer.await.unwrap(), "the trickling client was cut off");
}

/// A login body that never finishes: 408 `request_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_times_out() {
    let server = server(short()).await;
    let mut stream = UnixStream::connect(&server.socket).await.unwrap();
    stream
        .write_all(
            b"POST /v1/apps/portal/login HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"code\":",
        )
        .await
        .unwrap();
    let a = read_all(&mut stream).await;
    assert_eq!(status_of(&a), 408, "{a}");
    assert!(a.contains("request_timeout"), "{a}");
}

/// The total connection limit holds across uids too (one uid here, a smaller total): while
/// it is used up the daemon stops accepting, so a new connection waits in the kernel's
/// backlog (no answer, no descriptor of the daemon's) and is served once a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_connection_limit_holds() {
    let server = server(Limits {
        max_connections: 3,
        ..Limits::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        // Each accepted (answered) before the next.
        held.push(holding_a_slot(&server.socket).await);
    }
    let mut waiting = UnixStream::connect(&server.socket).await.unwrap();
    waiting
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), waiting.read_exact(&mut first))
            .await
            .is_err(),
        "answered while the total was used up: {:?}",
        String::from_utf8_lossy(&first)
    );
    drop(held.remove(0));
    let answer = tokio::time::timeout(Duration::from_secs(10), read_all(&mut waiting))
        .await
        .expect("served once a slot freed");
    assert_eq!(status_of(&answer), 200, "{answer}");
    drop(held);
    assert_eq!(health_once_slots_return(&server.socket).await, 200);
}

/// Over its uid's share a connection is refused at once (no wait for a slot to free: a
/// waiting connection would hold one of the daemon's descriptors for nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_share_is_refused_at_once() {
    let server = server(Limits {
        max_connections_per_uid: 2,
        ..Limits::default()
    })
    .await;
    let _held = [
        holding_a_slot(&server.socket).await,
        holding_a_slot(&server.socket).await,
    ];
    for _ in 0..3 {
        let start = tokio::time::Instant::now();
        let a = raw(
            &server.socket,
            b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await;
        let took = start.elapsed();
        assert_eq!(status_of(&a), 503, "{a}");
        assert!(a.contains("too_many_connections"), "{a}");
        assert!(took < Duration::from_millis(800), "refused after {took:?}");
    }
}

/// A daemon started with a low soft descriptor limit (a shell's `ulimit -n 64`) raises it to
/// the hard limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    let daemon = env.spawn_daemon_under(&["prlimit", "--nofile=64:4096", "--"], &[]);
    daemon.wait_listening().await;
    assert_eq!(nofile_of(daemon.pid()), (4096, 4096), "{}", daemon.logs());
}

/// (soft, hard) of `Max open files` in /proc/PID/limits.
fn nofile_of(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

/// A socket directory another user may write (world- or group-writable, sticky or not, or
/// owned by another uid when run as root) is refused at start: one line, exit 1, no socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_dir_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let root = nix::unistd::geteuid().is_root();
    for (mode, owner, expected) in [
        (0o777, None, "is writable by other users (mode 777)"),
        (0o1777, None, "is writable by other users (mode 1777)"),
        (0o770, None, "is writable by other users (mode 770)"),
        (0o755, Some(65534), "is owned by uid 65534"),
    ] {
        if owner.is_some() && !root {
            eprintln!("skipped the nobody-owned case: needs root to chown");
            continue;
        }
        let env = TestEnv::new(3600).await;
        env.jwt_app("analytics");
        let dir = env.path("run");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
        }
        let socket = dir.join("d.sock");
        let main = std::fs::read_to_string(env.main_file()).unwrap();
        std::fs::write(
            env.main_file(),
            main.replace(
                &format!("socket = \"{}\"", env.socket().display()),
                &format!("socket = \"{}\"", socket.display()),
            ),
        )
        .unwrap();
        let daemon = env.spawn_daemon(&[("RUST_LOG", "info")]);
        let log = daemon.log.clone();
        let status = daemon.wait_exit();
        let stderr = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(1), "{mode:o}: {stderr}");
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("iamtokend: "))
            .collect();
        assert_eq!(ours.len(), 1, "{mode:o}: {stderr}");
        assert!(
            ours[0].contains(&format!(
                "the socket's directory {} {expected}",
                dir.display()
            )),
            "{mode:o}: {stderr}"
        );
        assert!(!socket.exists(), "{mode:o}: bound anyway");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{mode:o}: left something in the directory"
        );
    }
}

/// Tests that attack as another uid: `#[ignore = "needs root"]`, run by `.ci/run` (as root)
/// with `cargo test --test it -- --ignored as_root::`.
mod as_root {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Stdio;
    use std::time::Duration;

    use crate::support::TestEnv;

    /// Run as `nobody` (setpriv): holds `HOLD` silent connections (more than a uid's share),
    /// then for `SECS` opens 100 more every 10 ms and closes them, all nonblocking, at most
    /// 200,000 in all. Prints what it did.
    const FLOOD: &str = r#"
import resource, socket, sys, time
path, hold, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def connect():
    s = socket.socket(socket.AF_UNIX)
    s.setblocking(False)
    try:
        s.connect(path)
        return s
    except OSError:
        s.close()
        return None
end = time.monotonic() + secs
held = []
while len(held) < hold and time.monotonic() < end:
    s = connect()
    if s:
        held.append(s)
    else:
        time.sleep(0.001)
made = refused = 0
while time.monotonic() < end and made < 200000:
    batch = []
    for _ in range(100):
        s = connect()
        if s:
            batch.append(s)
        else:
            refused += 1
    made += len(batch)
    time.sleep(0.01)
    for s in batch:
        s.close()
print("held", len(held), "made", made, "refused", refused, flush=True)
"#;

    /// `nobody` floods the socket of a root daemon whose descriptor limit is pinned at 1024
    /// (soft and hard: raising the limit cannot help): root's requests are all served
    /// meanwhile, and the app's 4 s token keeps being refreshed (its assertion file opened, the
    /// upstream called) while the flood holds nobody's share of connections.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs root"]
    async fn a_connection_flood_by_one_uid_stops_neither_others_nor_refresh() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root to flood as nobody"
        );
        const SECS: u64 = 8;
        let env = TestEnv::new(4).await;
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let main = std::fs::read_to_string(env.main_file()).unwrap();
        std::fs::write(
            env.main_file(),
            main.replacen("[server]\n", "[server]\nsocket_mode = \"0666\"\n", 1),
        )
        .unwrap();
        env.jwt_app("analytics");
        let daemon = env.spawn_daemon_under(
            &["prlimit", "--nofile=1024:1024", "--"],
            &[("RUST_LOG", "info")],
        );
        daemon.wait_listening().await;
        daemon.wait_state("analytics", "ready", 10).await;
        let calls_before = env.calls_for("analytics").len();

        let flood = tokio::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(["/usr/bin/python3", "-c", FLOOD])
            .arg(&daemon.socket)
            .args(["300", &SECS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("setpriv and /usr/bin/python3 run");
        // Let the flood take nobody's share first.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let until = tokio::time::Instant::now() + Duration::from_secs(SECS - 2);
        let mut served = 0;
        let mut tokens = std::collections::HashSet::new();
        while tokio::time::Instant::now() < until {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                daemon
                    .client()
                    .request(http::Method::GET, "/v1/apps/analytics/token", None),
            )
            .await;
            let answer = match answer {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => panic!(
                    "root's request failed during the flood: {e}\n{}",
                    daemon.logs()
                ),
                Err(_) => panic!("root's request hung during the flood\n{}", daemon.logs()),
            };
            assert_eq!(answer.status, 200, "{}", answer.body);
            tokens.insert(answer.body["access_token"].as_str().unwrap().to_owned());
            served += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let refreshed = env.calls_for("analytics").len() - calls_before;
        let out = flood.wait_with_output().await.unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "the flood ran: {out:?}");
        let made: u64 = report
            .split_whitespace()
            .skip_while(|w| *w != "made")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        eprintln!(
            "flood: {}; root served {served} times; {refreshed} refreshes",
            report.trim()
        );
        assert!(made >= 2000, "the flood was a flood: {report}");
        assert!(served >= 10, "root was served {served} times");
        assert!(
            refreshed >= 2,
            "{refreshed} refreshes during the flood\n{}",
            daemon.logs()
        );
        assert!(
            tokens.len() >= 2,
            "root saw the refreshed token: {tokens:?}"
        );
        let logs = daemon.logs();
        assert!(!logs.contains("Too many open files"), "{logs}");
        assert!(!logs.contains("accept failed"), "{logs}");
    }
}
