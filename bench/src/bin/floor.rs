//! The floor: a bare hyper HTTP/1.1 server on a Unix socket answering every request with the
//! same fixed body (the daemon's token JSON), on the same multi-thread tokio runtime the
//! daemon uses. What the daemon cannot beat.
//!
//! `bench-floor SOCKET BODY_FILE`, or `bench-floor tcp:127.0.0.1:PORT BODY_FILE` for the
//! floor of the loopback credentials endpoint (it ignores the `Authorization` header: the
//! floor does no work the daemon must do besides answering).

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, Response};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, body_file] = args.as_slice() else {
        eprintln!("usage: bench-floor SOCKET BODY_FILE");
        std::process::exit(2);
    };
    let body = Bytes::from(std::fs::read(body_file).expect("body file"));
    if !socket.starts_with("tcp:") {
        let _ = std::fs::remove_file(socket);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        if let Some(addr) = socket.strip_prefix("tcp:") {
            let listener = TcpListener::bind(addr).await.expect("bind");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream, body.clone()));
            }
        }
        let listener = UnixListener::bind(socket).expect("bind");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream, body.clone()));
        }
    });
}

/// Answers every request on `stream` with `body`.
async fn serve<S>(stream: S, body: Bytes)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |_request| {
        let mut response = Response::new(Full::new(body.clone()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        async move { Ok::<_, Infallible>(response) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}
