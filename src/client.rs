//! A small HTTP/1.1 client over the daemon's Unix socket, for the client subcommands.
//! One connection, one request: these commands run once per AWS CLI call, so no pools.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (exit 3).
    #[error("cannot reach iamtokend at {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It answered, but not in a way we understand (exit 1).
    #[error("bad answer from iamtokend: {0}")]
    Protocol(String),
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
    pub fn error_message(&self) -> String {
        self.body
            .pointer("/error/message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the daemon answered {}", self.status))
    }
}

/// Talks to one socket.
pub struct SocketClient {
    path: PathBuf,
}

impl SocketClient {
    /// A client of the socket at `path`.
    pub fn new(path: &Path) -> SocketClient {
        SocketClient {
            path: path.to_owned(),
        }
    }

    /// One request; `body` is sent as JSON.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: self.path.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        // Driven alongside the request, and awaited once the answer is read, so the socket is
        // closed when `request` returns: a busy caller never holds idle connections (the
        // daemon counts open connections per uid).
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        drop(sender);
        let _ = connection.await;
        let body = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Protocol(format!("answer is not JSON ({e})")))?;
        Ok(Answer { status, body })
    }
}
