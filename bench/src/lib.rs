//! Shared pieces of the benchmark: an HTTP/1.1 load generator over Unix sockets or loopback
//! TCP (keep-alive connections, closed loop), latency percentiles, and /proc readers.
//!
//! The generator is deliberately plain: one hyper client connection per task, each sending
//! its next request as soon as the previous answer is read, so "N connections" means N
//! requests in flight. The same generator drives the daemon and the floor server in the same
//! run, so what differs between their figures is the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

/// Where the load generator connects.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Unix socket.
    Unix(PathBuf),
    /// A loopback TCP address, each request carrying this `Authorization` (the credentials
    /// endpoint's token), as an SDK's container provider sends it.
    Tcp {
        /// `host:port`.
        addr: String,
        /// The `Authorization` header's value.
        authorization: String,
    },
}

/// One keep-alive HTTP/1.1 connection to a Unix socket or a TCP address.
pub struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    authorization: Option<http::HeaderValue>,
}

impl Connection {
    /// Connects and completes the HTTP/1.1 handshake; the connection task runs on the
    /// current runtime.
    pub async fn open(socket: &Path) -> std::io::Result<Connection> {
        Connection::connect(&Target::Unix(socket.to_owned())).await
    }

    /// [`Connection::open`] for any [`Target`].
    pub async fn connect(target: &Target) -> std::io::Result<Connection> {
        match target {
            Target::Unix(socket) => {
                let stream = UnixStream::connect(socket).await?;
                Connection::handshake(stream, None).await
            }
            Target::Tcp {
                addr,
                authorization,
            } => {
                let stream = TcpStream::connect(addr.as_str()).await?;
                stream.set_nodelay(true)?;
                let value =
                    http::HeaderValue::from_str(authorization).map_err(std::io::Error::other)?;
                Connection::handshake(stream, Some(value)).await
            }
        }
    }

    async fn handshake<S>(
        stream: S,
        authorization: Option<http::HeaderValue>,
    ) -> std::io::Result<Connection>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Connection {
            sender,
            authorization,
        })
    }

    /// One request; the whole body is read.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Bytes), String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost");
        if let Some(value) = &self.authorization {
            request = request.header(http::header::AUTHORIZATION, value.clone());
        }
        let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes), String> {
        self.request(Method::GET, path).await
    }
}

/// One request on a fresh connection.
pub async fn get_once(socket: &Path, path: &str) -> Result<(StatusCode, Bytes), String> {
    let mut connection = Connection::open(socket).await.map_err(|e| e.to_string())?;
    connection.get(path).await
}

/// Latency figures of a run.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    /// Requests answered 200 per second.
    pub rps: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile latency, microseconds.
    pub p99_us: f64,
    /// Requests answered 200.
    pub ok: u64,
    /// Requests that failed or were not 200.
    pub errors: u64,
}

/// The `q` quantile (0..=1) of sorted nanoseconds, in microseconds (nearest rank).
pub fn quantile_us(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted_ns.len() as f64).ceil() as usize).clamp(1, sorted_ns.len());
    sorted_ns[rank - 1] as f64 / 1000.0
}

/// Closed-loop load: `connections` keep-alive connections each sending `GET path` back to
/// back for `duration` after `warmup`. Only answers completed inside the measured window
/// count.
pub async fn load(
    socket: &Path,
    path: &str,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Figures {
    load_target(
        &Target::Unix(socket.to_owned()),
        path,
        connections,
        warmup,
        duration,
    )
    .await
}

/// [`load`] on any [`Target`].
pub async fn load_target(
    target: &Target,
    path: &str,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> Figures {
    let socket: Arc<Target> = Arc::new(target.clone());
    let path: Arc<str> = Arc::from(path);
    let start = Instant::now() + warmup + Duration::from_millis(50 * connections.min(20) as u64);
    let end = start + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let socket = socket.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u64> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut connection = match Connection::connect(&socket).await {
                Ok(c) => c,
                Err(_) => return (latencies, 1),
            };
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let result = connection.get(&path).await;
                let done = Instant::now();
                let ok = matches!(result, Ok((StatusCode::OK, _)));
                if sent >= start {
                    if ok {
                        latencies.push((done - sent).as_nanos() as u64);
                    } else {
                        errors += 1;
                    }
                }
                if result.is_err() {
                    // A broken connection: open a new one rather than spin on the dead one.
                    match Connection::connect(&socket).await {
                        Ok(c) => connection = c,
                        Err(_) => return (latencies, errors + 1),
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((latencies, e)) = task.await {
            all.extend(latencies);
            errors += e;
        } else {
            errors += 1;
        }
    }
    all.sort_unstable();
    Figures {
        rps: all.len() as f64 / duration.as_secs_f64(),
        p50_us: quantile_us(&all, 0.50),
        p99_us: quantile_us(&all, 0.99),
        ok: all.len() as u64,
        errors,
    }
}

/// Waits (≤ `limit`) until a socket answers `GET /v1/health`-like `path` with 200.
pub async fn wait_answering(socket: &Path, path: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok((StatusCode::OK, _)) = get_once(socket, path).await {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not answer {path} within {limit:?}",
                socket.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// utime + stime of a process, seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are space-separated.
    let after = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) as f64 / ticks.max(1) as f64)
}

/// Raises this process's open-file limit to its hard limit (1000 connections need more than
/// the usual 1024 soft limit); children inherit it.
pub fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    limit.rlim_cur
}

/// Median and 99th percentile (nearest rank) of durations, milliseconds.
pub fn p50_p99_ms(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let ns: Vec<u64> = samples.iter().map(|d| d.as_nanos() as u64).collect();
    (
        quantile_us(&ns, 0.5) / 1000.0,
        quantile_us(&ns, 0.99) / 1000.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let ns: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(quantile_us(&ns, 0.5), 50.0);
        assert_eq!(quantile_us(&ns, 0.99), 99.0);
        assert_eq!(quantile_us(&ns[..1], 0.99), 1.0);
    }
}
