//! The browser half of `iamtokend login`: the authorize URL, and a one-shot loopback
//! listener on the app's `redirect_uri` that waits for the redirect, checks its `state`, and
//! shows the user a short page. The code exchange itself is the daemon's (`POST .../login`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::secret::Secret;

/// What the authorize URL needs.
#[derive(Debug)]
pub struct AuthorizeRequest<'a> {
    /// The OIDC endpoint (`endpoint_url`, or `https://oidc.REGION.amazonaws.com`).
    pub endpoint: &'a str,
    /// The application ARN.
    pub client_id: &'a str,
    /// The app's `redirect_uri`, exactly as configured.
    pub redirect_uri: &'a str,
    /// The random state.
    pub state: &'a str,
    /// The PKCE S256 challenge.
    pub code_challenge: &'a str,
    /// The app's `scopes`, if set.
    pub scopes: Option<&'a [String]>,
}

/// The authorize URL, as the AWS CLI builds it for its own PKCE flow (the reference's §3):
/// `scopes` plural and space-separated.
pub fn authorize_url(req: &AuthorizeRequest<'_>) -> Result<url::Url, url::ParseError> {
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

/// The address and path a `redirect_uri` asks the listener for. `localhost` is bound as
/// 127.0.0.1 (the config loader only accepts loopback URLs with a port).
pub fn listen_target(redirect_uri: &str) -> Result<(SocketAddr, String), String> {
    let url = url::Url::parse(redirect_uri).map_err(|e| format!("bad redirect_uri: {e}"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| format!("redirect_uri {redirect_uri} has no port"))?;
    let ip: std::net::IpAddr = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.into(),
        Some(url::Host::Ipv6(ip)) => ip.into(),
        Some(url::Host::Domain("localhost")) => std::net::Ipv4Addr::LOCALHOST.into(),
        _ => {
            return Err(format!(
                "redirect_uri {redirect_uri} is not a loopback address"
            ))
        }
    };
    if !ip.is_loopback() {
        return Err(format!(
            "redirect_uri {redirect_uri} is not a loopback address"
        ));
    }
    Ok((SocketAddr::new(ip, port), url.path().to_owned()))
}

/// What arrived on the redirect URI.
#[derive(Debug, PartialEq, Eq)]
pub enum Callback {
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
pub fn judge(path: &str, query: Option<&str>, expected_path: &str, state: &str) -> Callback {
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
pub enum LoginError {
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
    /// A redirect carried a state that is not this login's.
    #[error("the redirect carried a state that does not match this login (a stale tab or a forged redirect); run the login again")]
    WrongState,
}

/// The bound listener, before the user is sent to the browser (so a bind failure is reported
/// before anything else happens).
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    path: String,
}

impl Listener {
    /// Binds the `redirect_uri`'s loopback address.
    pub async fn bind(redirect_uri: &str) -> Result<Listener, String> {
        let (addr, path) = listen_target(redirect_uri)?;
        let listener = TcpListener::bind(addr).await.map_err(|source| {
            let hint = if source.kind() == std::io::ErrorKind::AddrInUse {
                " (is another `iamtokend login` waiting? finish or cancel it first)"
            } else {
                ""
            };
            LoginError::Bind { addr, source, hint }.to_string()
        })?;
        Ok(Listener { listener, path })
    }

    /// Serves the redirect URI until the callback arrives (or `timeout`), then stops.
    pub async fn wait(
        self,
        redirect_uri: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<Secret, LoginError> {
        let (tx, mut rx) = mpsc::channel::<Callback>(1);
        let expected = Arc::new((self.path, state.to_owned()));
        let accept = async {
            loop {
                let Ok((stream, _)) = self.listener.accept().await else {
                    continue;
                };
                let tx = tx.clone();
                let expected = expected.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let verdict = judge(
                            req.uri().path(),
                            req.uri().query(),
                            &expected.0,
                            &expected.1,
                        );
                        let page = page(&verdict);
                        let tx = tx.clone();
                        async move {
                            if verdict != Callback::Other {
                                let _ = tx.try_send(verdict);
                            }
                            Ok::<_, Infallible>(page)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
                });
            }
        };
        let outcome = tokio::select! {
            verdict = rx.recv() => verdict,
            _ = accept => None,
            _ = tokio::time::sleep(timeout) => None,
        };
        // Let the page reach the browser before the listener goes away.
        tokio::time::sleep(Duration::from_millis(50)).await;
        match outcome {
            Some(Callback::Code(code)) => Ok(code),
            Some(Callback::Denied { error, description }) => {
                Err(LoginError::Denied { error, description })
            }
            Some(Callback::WrongState) => Err(LoginError::WrongState),
            Some(Callback::Other) | None => Err(LoginError::Timeout {
                redirect_uri: redirect_uri.to_owned(),
                waited: timeout,
            }),
        }
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
            "This redirect does not belong to the login that is waiting. Run the login again."
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
pub fn open_browser(url: &str) -> std::io::Result<()> {
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
    fn listen_targets_are_loopback_only() {
        assert_eq!(
            listen_target("http://localhost:8400/cb").unwrap(),
            ("127.0.0.1:8400".parse().unwrap(), "/cb".to_owned())
        );
        assert_eq!(
            listen_target("http://[::1]:9/").unwrap().0,
            "[::1]:9".parse().unwrap()
        );
        assert!(listen_target("http://example.com:80/cb").is_err());
        assert!(listen_target("http://10.0.0.1:80/cb").is_err());
    }
}
