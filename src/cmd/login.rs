//! `iamtokend login APP`: PKCE S256 verifier and challenge, a random state, the authorize URL
//! (printed, and opened unless `--no-browser`), a loopback listener on every address of the app's
//! `redirect_uri`, then code + verifier to the daemon, which makes the token call.
//!
//! The URL and progress go to stderr: stdout carries only requested output, and a login
//! prints none.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::json;

use super::clients::app_path;
use super::{daemon_failure, Failure};
use crate::client::SocketClient;
use crate::config::{Grant, GrantKind};
use crate::login::{authorize_url, open_browser, AuthorizeRequest, Listener};

/// `login` flags.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Open the URL with the desktop's opener.
    pub(crate) open_browser: bool,
    /// How long to wait for the redirect.
    pub(crate) timeout: Duration,
}

/// Runs the login of `app` from the config at `file` against the daemon behind `client`.
pub(crate) async fn run(
    file: &Path,
    app: &str,
    client: &SocketClient,
    options: Options,
) -> Result<(), Failure> {
    let path = app_path(app, "login")?;
    let config = crate::config::load(file).map_err(|d| {
        Failure::failed(format!(
            "the config has errors\n{}",
            d.to_string().trim_end()
        ))
    })?;
    let settings = config
        .apps
        .get(app)
        .ok_or_else(|| Failure::failed(format!("no app {app} in {}", config.apps_dir.display())))?;
    let Grant::AuthorizationCode { redirect_uri } = &settings.grant else {
        return Err(Failure::failed(format!(
            "app {app} does not use the {} grant; login is only for those",
            GrantKind::AuthorizationCode
        )));
    };
    // The daemon first: a login it cannot take is not worth the user's time in a browser.
    let health = client.request(Method::GET, "/v1/health", None).await?;
    if !health.status.is_success() {
        return Err(daemon_failure(&health));
    }
    let listener = Listener::bind(redirect_uri)
        .await
        .map_err(Failure::failed)?;

    let verifier = crate::pkce::verifier();
    let state = crate::pkce::state();
    let endpoint = settings
        .endpoint_url
        .clone()
        .unwrap_or_else(|| format!("https://oidc.{}.amazonaws.com", settings.region));
    let url = authorize_url(&AuthorizeRequest {
        endpoint: &endpoint,
        client_id: &settings.client_id,
        redirect_uri,
        state: &state,
        code_challenge: &crate::pkce::challenge(&verifier),
        scopes: settings.scopes.as_deref(),
    })
    .map_err(|e| {
        Failure::failed(format!(
            "cannot build the authorize URL from {endpoint}: {e}"
        ))
    })?;

    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "To log in app {app}, open this URL in a browser:\n\n  {url}\n\n\
         Waiting up to {}s for the redirect to {redirect_uri} ...",
        options.timeout.as_secs()
    );
    if options.open_browser {
        if let Err(e) = open_browser(url.as_str()) {
            let _ = writeln!(
                err,
                "(could not open a browser: {e}; open the URL yourself)"
            );
        }
    }
    drop(err);

    let code = listener
        .wait(redirect_uri, &state, options.timeout)
        .await
        .map_err(|e| Failure::failed(e.to_string()))?;
    let body = json!({
        "code": code.expose(),
        "code_verifier": verifier.expose(),
        "redirect_uri": redirect_uri,
    });
    let answer = client.request(Method::POST, &path, Some(&body)).await?;
    if !answer.status.is_success() {
        return Err(daemon_failure(&answer));
    }
    let expires = answer.body["expires_at"].as_str().unwrap_or("unknown");
    eprintln!("Logged in: {app} is ready (token expires at {expires}).");
    Ok(())
}
