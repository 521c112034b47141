//! HTTP/1.1 written and read by hand on a raw stream: for requests `SocketClient` would never
//! send (garbage, HTTP/0.9, floods, half-written heads) and for answers whose head a test reads
//! itself (the exact status line, `content-type`, `Location`).
//!
//! Every read is bounded: a peer that never closes fails the test instead of hanging it.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long a peer may take to send its whole answer and close.
const CLOSE_WITHIN: Duration = Duration::from_secs(15);

/// Reads into `answer` until the peer closes (≤ 15 s, else a panic); the read's own result,
/// so a caller decides whether a reset after some bytes counts.
pub async fn read_to_close<S: AsyncRead + Unpin>(
    stream: &mut S,
    answer: &mut Vec<u8>,
) -> io::Result<usize> {
    tokio::time::timeout(CLOSE_WITHIN, stream.read_to_end(answer))
        .await
        .expect("the peer closes the connection")
}

/// Everything the daemon sends until it closes, as text; a reset ends the answer where it
/// stands (a daemon may cut a hostile client off mid-stream).
pub async fn read_all(stream: &mut UnixStream) -> String {
    let mut answer = Vec::new();
    read_to_close(stream, &mut answer).await.ok();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `request` (any bytes) on a fresh connection to `socket`; the whole answer. The
/// daemon may answer and close before reading (a connection over the limits gets its 503 at
/// once), so a failed write still reads what was answered.
pub async fn raw(socket: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).await.unwrap();
    let _ = stream.write_all(request).await;
    read_all(&mut stream).await
}

/// The status code of the first status line of `answer`; 0 when there is none.
pub fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A whole, well-formed answer: status, head, body.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET target` with `Host: host` and `Connection: close` on `stream`, read to the close:
/// the answer must be UTF-8 with a head and a body, and the read must not fail.
pub async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    target: &str,
) -> Answer {
    let request = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    read_to_close(&mut stream, &mut answer)
        .await
        .expect("the answer is read to the end");
    let text = String::from_utf8(answer).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    Answer {
        status: head.split(' ').nth(1).unwrap().parse().unwrap(),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `GET path` on a fresh connection to the daemon's `socket`.
pub async fn get_on_socket(socket: &Path, path: &str) -> Answer {
    get(
        UnixStream::connect(socket).await.unwrap(),
        "localhost",
        path,
    )
    .await
}
