//! A small HTTP/1.1 client over the daemon's Unix socket, for the client subcommands.
//! One connection, one request: these commands run once per AWS CLI call, so no pools.
//!
//! A socket path is only a name, and a program that reads our output (the AWS CLI reading
//! `credential-process`) trusts whatever we print, so the client checks who answers before it
//! sends anything: the server's `SO_PEERCRED` uid must be root, our own uid, or the daemon's
//! system user `iamtokend` (or the uid given with `--server-uid`). It bounds the whole
//! exchange in time (a stuck daemon must not hang every AWS call on the host) and the answer
//! in size, and wipes the answer's bytes once they are parsed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;
use tokio::time::Instant;
use zeroize::{Zeroize, Zeroizing};

/// How long a client waits for the daemon by default: a request may wait for one upstream
/// call (the `[aws] read_timeout` default is 30 s, plus connecting and STS), so twice that.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest answer accepted. The biggest real one (`/v1/apps` of many apps, a token with an
/// id token) is a few KiB.
pub(crate) const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The daemon's system user, as `systemd/iamtokend.sysusers` names it.
pub(crate) const SYSTEM_USER: &str = "iamtokend";

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on any of the socket paths tried (exit 3).
    #[error("cannot reach iamtokend at {}", tried_paths(.tried))]
    Unreachable {
        /// Each path tried, with why it failed.
        tried: Vec<(PathBuf, std::io::Error)>,
    },
    /// The server on the socket runs as a uid we do not trust (exit 3).
    #[error(
        "refusing the server at {}: it runs as uid {uid}, not root, uid {own} or the {SYSTEM_USER} \
         user (--server-uid UID to trust another)", .path.display()
    )]
    Untrusted {
        /// The socket path.
        path: PathBuf,
        /// The server's uid (`SO_PEERCRED`).
        uid: u32,
        /// Our own uid.
        own: u32,
    },
    /// The server accepted but gave no whole answer in time (exit 3).
    #[error("iamtokend at {} did not answer within {}s (--timeout SECS to wait longer)", .path.display(), .waited.as_secs())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// It answered, but not in a way we understand (exit 1).
    #[error("bad answer from iamtokend: {0}")]
    Protocol(String),
}

fn tried_paths(tried: &[(PathBuf, std::io::Error)]) -> String {
    tried
        .iter()
        .map(|(path, e)| format!("{} ({e})", path.display()))
        .collect::<Vec<_>>()
        .join(" nor at ")
}

/// An answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// JSON body.
    pub body: Value,
}

impl Answer {
    /// The error envelope's message, or the status.
    pub(crate) fn error_message(&self) -> String {
        self.body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the daemon answered {}", self.status))
    }
}

/// Overwrites every string in `value` (tokens, keys) with zeros before it is freed.
pub(crate) fn zeroize_json(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(zeroize_json),
        Value::Object(map) => map.values_mut().for_each(zeroize_json),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Which server uids a client believes: root, our own, and the daemon's.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TrustedServers {
    /// `--server-uid`: replaces the `iamtokend` user's uid.
    server_uid: Option<u32>,
}

impl TrustedServers {
    /// Root, our effective uid, and `server_uid` if given, else the `iamtokend` user's uid
    /// when that user exists.
    pub(crate) fn new(server_uid: Option<u32>) -> TrustedServers {
        TrustedServers { server_uid }
    }

    /// Whether a server running as `uid` may answer. The user database is asked only when
    /// the uid is neither root nor ours.
    pub(crate) fn admits(&self, uid: u32) -> bool {
        if uid == 0 || uid == own_uid() {
            return true;
        }
        let daemon = self.server_uid.or_else(|| {
            nix::unistd::User::from_name(SYSTEM_USER)
                .ok()
                .flatten()
                .map(|u| u.uid.as_raw())
        });
        daemon == Some(uid)
    }
}

fn own_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Talks to the daemon's socket: the first of its candidate paths that accepts.
#[derive(Debug, Clone)]
pub struct SocketClient {
    /// Tried in order; the first that accepts a connection is the daemon.
    paths: Vec<PathBuf>,
    /// Bound on a whole request: connect, send, the answer read whole.
    timeout: Duration,
    trust: TrustedServers,
}

impl SocketClient {
    /// A client of the socket at `path`, with the default timeout and trust.
    pub fn new(path: &Path) -> SocketClient {
        SocketClient::with_candidates(vec![path.to_owned()])
    }

    /// A client that tries `paths` in order (the user socket, then the system one).
    pub(crate) fn with_candidates(paths: Vec<PathBuf>) -> SocketClient {
        SocketClient {
            paths,
            timeout: DEFAULT_TIMEOUT,
            trust: TrustedServers::default(),
        }
    }

    /// Sets the bound on each request.
    pub(crate) fn with_timeout(mut self, timeout: Duration) -> SocketClient {
        self.timeout = timeout;
        self
    }

    /// Sets which server uids are believed.
    pub(crate) fn with_trust(mut self, trust: TrustedServers) -> SocketClient {
        self.trust = trust;
        self
    }

    /// One request; `body` is sent as JSON.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        self.request_via(method, path, body).await.map(|(_, a)| a)
    }

    /// [`SocketClient::request`], and the socket that answered (`exec` passes it on).
    pub(crate) async fn request_via(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(PathBuf, Answer), ClientError> {
        let deadline = Instant::now() + self.timeout;
        let timed_out = |socket: &Path| ClientError::Timeout {
            path: socket.to_owned(),
            waited: self.timeout,
        };
        let first = self
            .paths
            .first()
            .map(PathBuf::as_path)
            .unwrap_or(Path::new(""));
        let (socket, stream) = tokio::time::timeout_at(deadline, self.connect())
            .await
            .map_err(|_| timed_out(first))??;
        let answer = tokio::time::timeout_at(deadline, exchange(stream, method, path, body))
            .await
            .map_err(|_| timed_out(socket))??;
        Ok((socket.to_owned(), answer))
    }

    /// Connects to the first candidate that accepts and checks who runs it.
    async fn connect(&self) -> Result<(&Path, UnixStream), ClientError> {
        let mut tried = Vec::new();
        for socket in &self.paths {
            match UnixStream::connect(socket).await {
                Ok(stream) => {
                    let uid = stream
                        .peer_cred()
                        .map_err(|e| {
                            ClientError::Protocol(format!(
                                "cannot tell who serves {}: {e}",
                                socket.display()
                            ))
                        })?
                        .uid();
                    if !self.trust.admits(uid) {
                        return Err(ClientError::Untrusted {
                            path: socket.clone(),
                            uid,
                            own: own_uid(),
                        });
                    }
                    return Ok((socket, stream));
                }
                Err(e) => tried.push((socket.clone(), e)),
            }
        }
        Err(ClientError::Unreachable { tried })
    }
}

/// Sends the request on `stream` and reads the answer (at most [`MAX_ANSWER_BYTES`]).
async fn exchange(
    stream: UnixStream,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Answer, ClientError> {
    let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol(e.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| protocol(&e))?;
    // Driven alongside the request, and awaited once the answer is read, so the socket is
    // closed when `request` returns: a busy caller never holds idle connections (the daemon
    // counts open connections per uid). Aborted if we give up early (timeout, too large).
    let connection = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(payload)))
        .map_err(|e| protocol(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| protocol(&e))?;
    let status = response.status();
    let too_large = || {
        ClientError::Protocol(format!(
            "the answer is larger than {} KiB",
            MAX_ANSWER_BYTES / 1024
        ))
    };
    let declared = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(too_large());
    }
    // Reserved up front so the buffer never reallocates (which would leave copies behind).
    let capacity = declared.map_or(16 * 1024, |n| n as usize);
    let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
    let mut incoming = response.into_body();
    while let Some(frame) = incoming.frame().await {
        let Ok(data) = frame.map_err(|e| protocol(&e))?.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > MAX_ANSWER_BYTES {
            wipe(data);
            return Err(too_large());
        }
        bytes.extend_from_slice(&data);
        wipe(data);
    }
    drop(sender);
    let mut connection = connection;
    let _ = (&mut connection.0).await;
    let body = serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Protocol(format!("answer is not JSON ({e})")))?;
    Ok(Answer { status, body })
}

/// Zeroes a body chunk when we hold its only reference (hyper's read buffer itself is not
/// ours to reach).
fn wipe(data: Bytes) {
    if let Ok(mut owned) = data.try_into_mut() {
        owned.as_mut().zeroize();
    }
}

/// A task that is aborted when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// A server on a temp socket that answers each connection with `answer` (or, when `None`,
    /// accepts and stays silent).
    fn serve(answer: Option<Vec<u8>>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                if let Some(answer) = &answer {
                    let _ = stream.write_all(answer).await;
                }
                held.push(stream);
            }
        });
        (dir, path)
    }

    fn http(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn an_answer_from_our_own_uid_is_read() {
        let (_dir, path) = serve(Some(http(r#"{"status":"ok"}"#)));
        let answer = SocketClient::new(&path)
            .request(Method::GET, "/v1/health", None)
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body["status"], "ok");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let (_dir, path) = serve(None);
        let err = SocketClient::new(&path)
            .with_timeout(Duration::from_millis(300))
            .request(Method::GET, "/v1/health", None)
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("did not answer within"), "{err}");
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_refused_declared_or_not() {
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_ANSWER_BYTES));
        let (_dir, path) = serve(Some(http(&big)));
        let err = SocketClient::new(&path)
            .request(Method::GET, "/", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");
        // No content-length: read until close, stopped at the cap.
        let mut chunked = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n".to_vec();
        chunked.extend_from_slice(big.as_bytes());
        let (_dir, path) = serve(Some(chunked));
        let err = SocketClient::new(&path)
            .with_timeout(Duration::from_secs(5))
            .request(Method::GET, "/", None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");
    }

    #[tokio::test]
    async fn candidates_are_tried_in_order_and_all_named_when_none_answers() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("user.sock"), dir.path().join("system.sock"));
        let err = SocketClient::with_candidates(vec![a.clone(), b.clone()])
            .request(Method::GET, "/v1/health", None)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ClientError::Unreachable { .. }));
        assert!(
            text.contains(&a.display().to_string()) && text.contains(&b.display().to_string()),
            "{text}"
        );
        let (_srv, live) = serve(Some(http(r#"{"status":"ok"}"#)));
        let answer = SocketClient::with_candidates(vec![a, live])
            .request(Method::GET, "/v1/health", None)
            .await
            .unwrap();
        assert_eq!(answer.body["status"], "ok");
    }

    #[test]
    fn trust_is_root_ourselves_and_the_daemon_user() {
        let trust = TrustedServers::new(Some(4242));
        assert!(trust.admits(0));
        assert!(trust.admits(own_uid()));
        assert!(trust.admits(4242));
        let stranger = if own_uid() == 4243 { 4244 } else { 4243 };
        assert!(!trust.admits(stranger));
    }

    #[test]
    fn json_strings_are_wiped() {
        let mut v = serde_json::json!({"a": ["secret", {"b": "key"}], "n": 1});
        zeroize_json(&mut v);
        assert_eq!(v, serde_json::json!({"a": ["", {"b": ""}], "n": 1}));
    }
}
