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

/// The total connection limit holds across uids too (one uid here, a smaller total).
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
    let a = raw(&server.socket, b"GET /v1/health HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_of(&a), 503, "{a}");
    drop(held);
    assert_eq!(health_once_slots_return(&server.socket).await, 200);
}
