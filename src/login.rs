//! The browser half of `iamtokend login`: the authorize URL, and a loopback listener on the
//! app's `redirect_uri` that waits for the redirect, checks its `state`, and shows the user a
//! short page. The code exchange itself is the daemon's (`POST .../login`).
//!
//! Two local attacks shape the listener. A `localhost` redirect is bound on every loopback
//! address a browser may resolve `localhost` to (127.0.0.1 and ::1), so no other user can
//! hold the address we left free and receive the code. A redirect whose `state` is not ours
//! (anyone on the host can send one) gets the error page and a line on stderr, and the
//! listener keeps waiting for the real one until the timeout: it cannot end a login.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::secret::Secret;

/// What the authorize URL needs.
#[derive(Debug)]
pub(crate) struct AuthorizeRequest<'a> {
    /// The OIDC endpoint (`endpoint_url`, or `https://oidc.REGION.amazonaws.com`).
    pub(crate) endpoint: &'a str,
    /// The application ARN.
    pub(crate) client_id: &'a str,
    /// The app's `redirect_uri`, exactly as configured.
    pub(crate) redirect_uri: &'a str,
    /// The random state.
    pub(crate) state: &'a str,
    /// The PKCE S256 challenge.
    pub(crate) code_challenge: &'a str,
    /// The app's `scopes`, if set.
    pub(crate) scopes: Option<&'a [String]>,
}

/// The authorize URL, as the AWS CLI builds it for its own PKCE flow (the reference's §3):
/// `scopes` plural and space-separated.
pub(crate) fn authorize_url(req: &AuthorizeRequest<'_>) -> Result<url::Url, url::ParseError> {
    let mut url = url::Url::parse(req.endpoint)?.join("authorize")?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", req.client_id)
            .append_pair("redirect_uri", req.redirect_uri)
            .append_pair("state", req.state)
            .append_pair("code_challenge_method", "S256")
            .append_pair("code_challenge", req.code_challenge);
        if let Some(scopes) = req.scopes.filter(|s| !s.is_empty()) {
            q.append_pair("scopes", &scopes.join(" "));
        }
    }
    // form_urlencoded writes spaces as '+'; the reference asks for %20.
    let query = url.query().map(|q| q.replace('+', "%20"));
    url.set_query(query.as_deref());
    Ok(url)
}

/// The addresses and path a `redirect_uri` asks the listener for (the config loader only
/// accepts loopback URLs with a port). `localhost` is both 127.0.0.1 and ::1: browsers resolve
/// it to either (RFC 6761 loopback, whatever `/etc/hosts` says), so both are bound, the IPv4
/// one first.
pub(crate) fn listen_targets(redirect_uri: &str) -> Result<(Vec<SocketAddr>, String), String> {
    let url = url::Url::parse(redirect_uri).map_err(|e| format!("bad redirect_uri: {e}"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("redirect_uri {redirect_uri} has no port"))?;
    let not_loopback = || format!("redirect_uri {redirect_uri} is not a loopback address");
    let ips: Vec<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![ip.into()],
        Some(url::Host::Ipv6(ip)) => vec![ip.into()],
        Some(url::Host::Domain("localhost")) => {
            vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()]
        }
        _ => return Err(not_loopback()),
    };
    if !ips.iter().all(IpAddr::is_loopback) {
        return Err(not_loopback());
    }
    let addrs = ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    Ok((addrs, url.path().to_owned()))
}

/// What arrived on the redirect URI.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Callback {
    /// The code, with the expected state.
    Code(Secret),
    /// The authorization server refused: its `error` and `error_description`.
    Denied {
        /// OAuth `error`.
        error: String,
        /// OAuth `error_description`, if any.
        description: Option<String>,
    },
    /// A callback whose `state` is not ours: a forged or stale redirect.
    WrongState,
    /// Not the callback (another path, a favicon, no code or error): ignored.
    Other,
}

/// Judges one request to the listener: a pure function of its path and query.
pub(crate) fn judge(path: &str, query: Option<&str>, expected_path: &str, state: &str) -> Callback {
    if path != expected_path {
        return Callback::Other;
    }
    let mut code = None;
    let mut got_state = None;
    let mut error = None;
    let mut description = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "code" => code = Some(v.into_owned()),
            "state" => got_state = Some(v.into_owned()),
            "error" => error = Some(v.into_owned()),
            "error_description" => description = Some(v.into_owned()),
            _ => {}
        }
    }
    if code.is_none() && error.is_none() {
        return Callback::Other;
    }
    // The state is checked before anything else is believed, errors included.
    if got_state.as_deref() != Some(state) {
        return Callback::WrongState;
    }
    match (code, error) {
        (_, Some(error)) => Callback::Denied {
            error: sanitize(&error),
            description: description.map(|d| sanitize(&d)),
        },
        (Some(code), None) => Callback::Code(Secret::new(code)),
        (None, None) => Callback::Other,
    }
}

/// Text from a URL, made safe to print on one line: control characters dropped, length capped.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Why no code came.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoginError {
    /// The listener could not be bound (often: another login is waiting on it).
    #[error("cannot listen on {addr} for the redirect: {source}{hint}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
        /// A hint for the usual cause.
        hint: &'static str,
    },
    /// Nothing came in time.
    #[error("no redirect reached {redirect_uri} within {}s; run the login again", .waited.as_secs())]
    Timeout {
        /// The redirect URI.
        redirect_uri: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The authorization server answered with an error.
    #[error("the login was refused: {error}{}", .description.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Denied {
        /// OAuth `error`.
        error: String,
        /// OAuth `error_description`.
        description: Option<String>,
    },
}

/// Connections the listener serves at once. Anyone on the host can connect to a loopback
/// port; a flood must not take this process's descriptors, and a browser needs one or two.
const MAX_CONNECTIONS: usize = 16;

/// How long one connection may take to send its request and read the page.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound listeners, before the user is sent to the browser (so a bind failure is reported
/// before anything else happens).
#[derive(Debug)]
pub(crate) struct Listener {
    listeners: Vec<TcpListener>,
    path: String,
}

impl Listener {
    /// Binds every loopback address of the `redirect_uri` (both 127.0.0.1 and ::1 for
    /// `localhost`). An address already taken is an error: whoever holds it would receive the
    /// code. Only ::1 on a host without IPv6 may be missing, when 127.0.0.1 is bound.
    pub(crate) async fn bind(redirect_uri: &str) -> Result<Listener, String> {
        let (addrs, path) = listen_targets(redirect_uri)?;
        let mut listeners = Vec::with_capacity(addrs.len());
        for &addr in &addrs {
            match TcpListener::bind(addr).await {
                Ok(listener) => listeners.push(listener),
                Err(e) if addr.is_ipv6() && addrs.len() > 1 && ipv6_unavailable(&e) => {}
                Err(source) => {
                    let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
                        " (is another `iamtokend login` waiting? finish or cancel it first; \
                         otherwise another program holds the port)"
                    } else {
                        ""
                    };
                    return Err(LoginError::Bind { addr, source, hint }.to_string());
                }
            }
        }
        Ok(Listener { listeners, path })
    }

    /// The addresses actually bound.
    #[cfg(test)]
    pub(crate) fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves the redirect URI until a callback with our state arrives (or `timeout`), then
    /// stops. Callbacks with another state are answered with the error page, reported on
    /// stderr (never their code), and waited past.
    pub(crate) async fn wait(
        self,
        redirect_uri: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<Secret, LoginError> {
        let (tx, mut rx) = mpsc::channel::<Callback>(1);
        let expected = Arc::new((self.path, state.to_owned()));
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        // Dropped (so aborted) when the wait ends.
        let mut accepting = JoinSet::new();
        for listener in self.listeners {
            accepting.spawn(accept_loop(
                listener,
                tx.clone(),
                expected.clone(),
                slots.clone(),
            ));
        }
        drop(tx);
        let outcome = tokio::select! {
            verdict = rx.recv() => verdict,
            _ = tokio::time::sleep(timeout) => None,
        };
        // Let the page reach the browser before the listener goes away.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(accepting);
        match outcome {
            Some(Callback::Code(code)) => Ok(code),
            Some(Callback::Denied { error, description }) => {
                Err(LoginError::Denied { error, description })
            }
            Some(Callback::WrongState | Callback::Other) | None => Err(LoginError::Timeout {
                redirect_uri: redirect_uri.to_owned(),
                waited: timeout,
            }),
        }
    }
}

/// Whether a bind error means the host has no IPv6 loopback (IPv6 disabled or absent).
fn ipv6_unavailable(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EADDRNOTAVAIL | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT)
    )
}

/// Accepts on one listener and serves each connection: the page for its verdict, and the
/// verdict to `tx` when it ends the wait (our state with a code or an error).
async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<Callback>,
    expected: Arc<(String, String)>,
    slots: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or the like: wait a little instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tx = tx.clone();
        let expected = expected.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<Incoming>| {
                let verdict = judge(
                    req.uri().path(),
                    req.uri().query(),
                    &expected.0,
                    &expected.1,
                );
                if verdict == Callback::WrongState {
                    eprintln!(
                        "iamtokend: ignored a redirect from {peer} whose state is not this \
                         login's (a stale tab or a forged redirect); still waiting"
                    );
                }
                let page = page(&verdict);
                let tx = tx.clone();
                async move {
                    if matches!(verdict, Callback::Code(_) | Callback::Denied { .. }) {
                        let _ = tx.try_send(verdict);
                    }
                    Ok::<_, Infallible>(page)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

/// The page the browser shows after the redirect.
fn page(verdict: &Callback) -> Response<Full<Bytes>> {
    let (status, title, text) = match verdict {
        Callback::Code(_) => (
            StatusCode::OK,
            "Login received",
            "iamtokend has the login. You can close this tab.".to_owned(),
        ),
        Callback::Denied { error, .. } => (
            StatusCode::OK,
            "Login refused",
            format!(
                "The login was refused ({}). You can close this tab.",
                html_escape(error)
            ),
        ),
        Callback::WrongState => (
            StatusCode::BAD_REQUEST,
            "Login not accepted",
            "This redirect does not belong to the login that is waiting (a stale tab or a \
             forged link). The login is still waiting: finish it from the URL it printed."
                .to_owned(),
        ),
        Callback::Other => (
            StatusCode::NOT_FOUND,
            "Not found",
            "Nothing here.".to_owned(),
        ),
    };
    let body = format!(
        "<!doctype html><meta charset=\"utf-8\"><title>{title}</title>\
         <body style=\"font-family:sans-serif;margin:3em\"><h1>{title}</h1><p>{text}</p></body>\n"
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn html_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// Opens `url` with the desktop's opener (`open` on macOS, `xdg-open` elsewhere), without
/// waiting for it. An error means the user has to open the URL by hand.
pub(crate) fn open_browser(url: &str) -> std::io::Result<()> {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let mut child = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // Reaped in the background so it never lingers as a zombie.
    std::thread::spawn(move || child.wait());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_url_carries_every_parameter() {
        let scopes = vec!["openid".to_owned(), "aws".to_owned()];
        let url = authorize_url(&AuthorizeRequest {
            endpoint: "https://oidc.eu-west-1.amazonaws.com",
            client_id: "arn:aws:sso::123456789012:application/ssoins-1/apl-1",
            redirect_uri: "http://127.0.0.1:8400/callback",
            state: "st",
            code_challenge: "ch",
            scopes: Some(&scopes),
        })
        .unwrap();
        assert_eq!(url.path(), "/authorize");
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:8400/callback");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["scopes"], "openid aws");
        assert!(url.as_str().contains("scopes=openid%20aws"), "{url}");
    }

    #[test]
    fn callbacks_are_judged_state_first() {
        let j = |q: &str| judge("/cb", Some(q), "/cb", "good");
        assert_eq!(j("code=abc&state=good"), Callback::Code(Secret::new("abc")));
        assert_eq!(j("code=abc&state=bad"), Callback::WrongState);
        assert_eq!(j("code=abc"), Callback::WrongState);
        assert_eq!(j("error=access_denied&state=bad"), Callback::WrongState);
        assert_eq!(
            j("error=access_denied&error_description=no%0Athanks&state=good"),
            Callback::Denied {
                error: "access_denied".into(),
                description: Some("nothanks".into())
            }
        );
        assert_eq!(j("state=good"), Callback::Other);
        assert_eq!(judge("/favicon.ico", None, "/cb", "good"), Callback::Other);
    }

    #[test]
    fn listen_targets_are_loopback_only_and_localhost_is_both() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            listen_targets("http://localhost:8400/cb").unwrap(),
            (
                vec![addr("127.0.0.1:8400"), addr("[::1]:8400")],
                "/cb".to_owned()
            )
        );
        assert_eq!(
            listen_targets("http://[::1]:9/").unwrap().0,
            vec![addr("[::1]:9")]
        );
        assert_eq!(
            listen_targets("http://127.0.0.1:9/").unwrap().0,
            vec![addr("127.0.0.1:9")]
        );
        assert!(listen_targets("http://example.com:80/cb").is_err());
        assert!(listen_targets("http://10.0.0.1:80/cb").is_err());
    }

    /// One GET on a fresh connection; the status code.
    async fn get_status(addr: SocketAddr, target: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        raw.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn a_wrong_state_does_not_end_the_wait_and_the_right_one_does() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri = format!("http://127.0.0.1:{port}/cb");
        let listener = Listener::bind(&uri).await.unwrap();
        let addr = listener.local_addrs()[0];
        let wait =
            tokio::spawn(async move { listener.wait(&uri, "good", Duration::from_secs(20)).await });
        assert_eq!(get_status(addr, "/cb?code=forged&state=bad").await, 400);
        assert_eq!(
            get_status(addr, "/cb?error=access_denied&state=bad").await,
            400
        );
        assert!(!wait.is_finished(), "a wrong state ended the wait");
        assert_eq!(get_status(addr, "/cb?code=real&state=good").await, 200);
        let code = wait.await.unwrap().unwrap();
        assert_eq!(code, Secret::new("real"));
    }

    #[tokio::test]
    async fn an_access_denied_with_our_state_ends_the_wait() {
        let listener = Listener::bind("http://127.0.0.1:0/cb").await;
        // Port 0 is refused by the config loader; here it just picks a free port.
        let listener = listener.unwrap();
        let addr = listener.local_addrs()[0];
        let wait = tokio::spawn(async move {
            listener
                .wait("http://127.0.0.1:0/cb", "good", Duration::from_secs(20))
                .await
        });
        assert_eq!(
            get_status(addr, "/cb?error=access_denied&state=good").await,
            200
        );
        let err = wait.await.unwrap().unwrap_err();
        assert!(matches!(err, LoginError::Denied { .. }), "{err}");
    }
}
