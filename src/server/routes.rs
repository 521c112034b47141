//! The route table of CONTRACT §5. [`ENDPOINTS`] is the one place the path grammar is
//! written: [`resolve`] matches a request against it and returns a [`Route`] for every
//! request, refused ones included, carrying the metrics label and whether answering may call
//! upstream (which the per-connection rate limit charges). A new route is a row there, a
//! [`Serves`] variant, and its arm in the handlers' `answer` (the compiler asks for it).

use std::time::Duration;

use http::Method;

use super::error::ApiError;

/// The `route` label of a request whose path names no endpoint: a client cannot mint new
/// series (or plant text in a label) by asking for odd paths.
pub(crate) const OTHER: &str = "other";

/// One endpoint of CONTRACT §5.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The path, `{app}` standing for one segment that must name a configured app. Also the
    /// metrics `route` label: never client text.
    pub(crate) template: &'static str,
    /// The one method it takes; any other gets 405.
    pub(crate) method: Method,
    /// What it does.
    pub(crate) serves: Serves,
    /// When answering may call upstream however fresh the cache is.
    pub(crate) upstream: Upstream,
}

/// What an [`Endpoint`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Serves {
    /// `{"status":"ok"}`.
    Health,
    /// The apps this peer may read.
    Apps,
    /// The Prometheus exposition.
    Metrics,
    /// An app's token, refreshed first under `min_ttl`.
    Token,
    /// A forced refresh.
    Refresh,
    /// The authorization-code login.
    Login,
    /// The app's role credentials.
    Credentials,
    /// Where the app's credentials endpoint is, and its token (CONTRACT §5b).
    Endpoint,
}

/// When a request may make the daemon call upstream. Those requests count against their
/// connection's rate; cached reads do not: they cost microseconds, a client may legitimately
/// read its token at any rate, and one connection is one task, so a flood of them cannot
/// starve other clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// Never: answered from memory.
    Never,
    /// When the request carries a `min_ttl` (a cached token with less left is refreshed).
    WithMinTtl,
    /// Every time (a forced refresh, a login, role credentials).
    Always,
}

/// The route table.
pub(crate) static ENDPOINTS: [Endpoint; 8] = [
    Endpoint {
        template: "/v1/health",
        method: Method::GET,
        serves: Serves::Health,
        upstream: Upstream::Never,
    },
    Endpoint {
        template: "/v1/apps",
        method: Method::GET,
        serves: Serves::Apps,
        upstream: Upstream::Never,
    },
    Endpoint {
        template: "/v1/apps/{app}/token",
        method: Method::GET,
        serves: Serves::Token,
        upstream: Upstream::WithMinTtl,
    },
    Endpoint {
        template: "/v1/apps/{app}/refresh",
        method: Method::POST,
        serves: Serves::Refresh,
        upstream: Upstream::Always,
    },
    Endpoint {
        template: "/v1/apps/{app}/login",
        method: Method::POST,
        serves: Serves::Login,
        upstream: Upstream::Always,
    },
    Endpoint {
        template: "/v1/apps/{app}/credentials",
        method: Method::GET,
        serves: Serves::Credentials,
        upstream: Upstream::Always,
    },
    Endpoint {
        template: "/v1/apps/{app}/endpoint",
        method: Method::GET,
        serves: Serves::Endpoint,
        upstream: Upstream::Never,
    },
    Endpoint {
        template: "/metrics",
        method: Method::GET,
        serves: Serves::Metrics,
        upstream: Upstream::Never,
    },
];

/// Where `{app}` stands in a template.
const APP: &str = "{app}";

impl Endpoint {
    /// Whether `segments` (a path split at `/`, leading `/` removed) is this endpoint's path.
    fn matches(&self, segments: &[&str]) -> bool {
        let mut template = self.template.trim_start_matches('/').split('/');
        let mut path = segments.iter();
        loop {
            match (template.next(), path.next()) {
                (None, None) => return true,
                (Some(t), Some(p)) if t == APP || t == *p => {}
                _ => return false,
            }
        }
    }
}

/// What one request asks for, once its method, path and query are understood. Built by
/// [`resolve`], which is pure, so routing can be tested (and fuzzed) without a broker. `A` is
/// what the app look-up returns (the app's handle in the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route<A> {
    /// The handler to run, or the refusal to send.
    pub(crate) target: Target<A>,
    /// The `route` label: the template of the endpoint the path names (whatever the method,
    /// app or query), or [`OTHER`].
    pub(crate) template: &'static str,
    /// Whether the request counts against its connection's rate: its endpoint's [`Upstream`]
    /// applies, or it is not a `GET`. The same whether it is answered or refused, so a client
    /// cannot flood writes or forced refreshes by getting them slightly wrong.
    pub(crate) charged: bool,
}

/// What answers a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target<A> {
    /// `GET /v1/health`.
    Health,
    /// `GET /v1/apps`.
    Apps,
    /// `GET /metrics`.
    Metrics,
    /// `/v1/apps/{app}/{action}` for an app that exists.
    App {
        /// The app, as the look-up returned it (looked up once per request).
        app: A,
        /// What to do with it.
        action: AppAction,
    },
    /// An answer without a handler: 404, 405 or 400.
    Refused(ApiError),
}

/// The per-app routes of CONTRACT §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppAction {
    /// `GET .../token[?min_ttl=SECS]`.
    Token {
        /// Refresh first if the cached token has less than this left.
        min_ttl: Duration,
    },
    /// `POST .../refresh`.
    Refresh,
    /// `POST .../login`.
    Login,
    /// `GET .../credentials`.
    Credentials,
    /// `GET .../endpoint`.
    Endpoint,
}

/// Method, path and query -> [`Route`]. `app` looks a name up among the configured apps.
/// Paths are taken as sent: no percent-decoding (an app name never needs encoding, so
/// `/v1/apps/ana%6Cytics/token` names no app and answers 404 `unknown_app`).
///
/// A refusal is 404 `unknown_app` / `not_found`, 405 `method_not_allowed` or 400
/// `bad_request` (query), checked in that order: an unknown app name answers `unknown_app`
/// whatever else is wrong with the request.
pub(crate) fn resolve<A>(
    method: &Method,
    path: &str,
    query: Option<&str>,
    app: impl FnOnce(&str) -> Option<A>,
) -> Route<A> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let endpoint = ENDPOINTS.iter().find(|e| e.matches(&segments));
    let template = endpoint.map_or(OTHER, |e| e.template);
    let charged = *method != Method::GET || endpoint.is_some_and(|e| e.upstream.applies(query));
    let target =
        target(endpoint, method, path, &segments, query, app).unwrap_or_else(Target::Refused);
    Route {
        target,
        template,
        charged,
    }
}

impl Upstream {
    /// Whether a request with `query` may call upstream.
    fn applies(self, query: Option<&str>) -> bool {
        match self {
            Upstream::Never => false,
            Upstream::WithMinTtl => query
                .unwrap_or("")
                .split('&')
                .any(|pair| pair.split('=').next() == Some("min_ttl")),
            Upstream::Always => true,
        }
    }
}

/// The per-app path shape `/v1/apps/{app}/{action}`: its app name, checked before the rest.
fn app_name<'a>(segments: &[&'a str]) -> Option<&'a str> {
    match segments {
        ["v1", "apps", name, _] => Some(name),
        _ => None,
    }
}

/// The handler for a request on `endpoint` (the one its path names, if any), or why not.
fn target<A>(
    endpoint: Option<&Endpoint>,
    method: &Method,
    path: &str,
    segments: &[&str],
    query: Option<&str>,
    look_up: impl FnOnce(&str) -> Option<A>,
) -> Result<Target<A>, ApiError> {
    let app = match app_name(segments) {
        Some(name) => Some(look_up(name).ok_or_else(|| ApiError::unknown_app(name))?),
        None => None,
    };
    let Some(endpoint) = endpoint else {
        return Err(match segments {
            [.., action] if app.is_some() => {
                ApiError::not_found(&format!("/v1/apps/{{app}}/{}", shown(action)))
            }
            _ => ApiError::not_found(&shown(path)),
        });
    };
    only(method, &endpoint.method)?;
    let action = match endpoint.serves {
        Serves::Health => return Ok(Target::Health),
        Serves::Apps => return Ok(Target::Apps),
        Serves::Metrics => return Ok(Target::Metrics),
        Serves::Token => AppAction::Token {
            min_ttl: parse_min_ttl(query)?,
        },
        Serves::Refresh => AppAction::Refresh,
        Serves::Login => AppAction::Login,
        Serves::Credentials => AppAction::Credentials,
        Serves::Endpoint => AppAction::Endpoint,
    };
    // Every per-app template has the `/v1/apps/{app}/` shape `app_name` reads.
    match app {
        Some(app) => Ok(Target::App { app, action }),
        None => Err(ApiError::not_found(&shown(path))),
    }
}

fn only(method: &Method, allowed: &Method) -> Result<(), ApiError> {
    if method == allowed {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed(allowed.as_str()))
    }
}

/// Echoes a client-supplied path piece safely: bounded, debug-quoted.
pub(crate) fn shown(s: &str) -> String {
    let cut: String = s.chars().take(80).collect();
    format!("{cut:?}")
}

/// `min_ttl=SECS`: whole non-negative seconds; other query keys are refused so a typo
/// (`minttl=`) does not silently mean 0.
fn parse_min_ttl(query: Option<&str>) -> Result<Duration, ApiError> {
    let mut min_ttl = Duration::ZERO;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "min_ttl" {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {}",
                shown(key)
            )));
        }
        let secs: u64 = value
            .parse()
            .map_err(|_| ApiError::bad_request("min_ttl must be a whole number of seconds"))?;
        if secs > 86_400 * 365 {
            return Err(ApiError::bad_request("min_ttl is larger than a year"));
        }
        min_ttl = Duration::from_secs(secs);
    }
    Ok(min_ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves against one app, `a` (looked up as its name).
    fn r(method: Method, path: &str) -> Route<String> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        resolve(&method, path, query, |n| (n == "a").then(|| n.to_owned()))
    }

    #[test]
    fn route_templates_never_carry_client_text() {
        for (method, path, template) in [
            (Method::GET, "/v1/health", "/v1/health"),
            (Method::GET, "/v1/apps", "/v1/apps"),
            (Method::GET, "/metrics", "/metrics"),
            (
                Method::GET,
                "/v1/apps/a/token?min_ttl=5",
                "/v1/apps/{app}/token",
            ),
            (Method::POST, "/v1/apps/a/refresh", "/v1/apps/{app}/refresh"),
            (Method::POST, "/v1/apps/a/login", "/v1/apps/{app}/login"),
            (
                Method::GET,
                "/v1/apps/a/credentials",
                "/v1/apps/{app}/credentials",
            ),
            (
                Method::GET,
                "/v1/apps/a/endpoint",
                "/v1/apps/{app}/endpoint",
            ),
            // Refused requests: the template their path has, or `other`.
            (
                Method::GET,
                "/v1/apps/analytics/token",
                "/v1/apps/{app}/token",
            ),
            (
                Method::GET,
                "/v1/apps/secret-looking-thing/credentials",
                "/v1/apps/{app}/credentials",
            ),
            (
                Method::GET,
                "/v1/apps/a/token?minttl=5",
                "/v1/apps/{app}/token",
            ),
            (Method::DELETE, "/v1/health", "/v1/health"),
            (Method::GET, "/v1/apps/x/token/extra", OTHER),
            (Method::GET, "/v1/apps/x/bogus", OTHER),
            (Method::GET, "/v1/apps/a/bogus", OTHER),
            (Method::GET, "/aoa-canary", OTHER),
        ] {
            assert_eq!(r(method, path).template, template, "{path}");
        }
    }

    #[test]
    fn only_requests_that_may_call_upstream_are_charged() {
        let charged = |m: Method, p: &str| r(m, p).charged;
        assert!(!charged(Method::GET, "/v1/health"));
        assert!(!charged(Method::GET, "/v1/apps"));
        assert!(!charged(Method::GET, "/v1/apps/a/token"));
        assert!(!charged(Method::GET, "/metrics"));
        assert!(charged(Method::GET, "/v1/apps/a/token?min_ttl=60"));
        assert!(charged(Method::GET, "/v1/apps/a/token?min_ttl=0"));
        assert!(charged(Method::GET, "/v1/apps/a/credentials"));
        assert!(charged(Method::POST, "/v1/apps/a/refresh"));
        assert!(charged(Method::POST, "/v1/apps/a/login"));
        assert!(charged(Method::DELETE, "/v1/health"));
        assert!(charged(Method::POST, "/v1/apps/nope/refresh"));
        assert!(charged(Method::GET, "/v1/apps/nope/token?min_ttl=60"));
        assert!(charged(Method::GET, "/v1/apps/nope/credentials"));
        assert!(!charged(Method::GET, "/v1/apps/nope/token"));
        assert!(!charged(Method::GET, "/v1/apps/a/endpoint"));
    }

    #[test]
    fn min_ttl_parsing() {
        assert_eq!(parse_min_ttl(None).unwrap(), Duration::ZERO);
        assert_eq!(
            parse_min_ttl(Some("min_ttl=90")).unwrap(),
            Duration::from_secs(90)
        );
        assert!(parse_min_ttl(Some("min_ttl=-1")).is_err());
        assert!(parse_min_ttl(Some("min_ttl=abc")).is_err());
        assert!(parse_min_ttl(Some("minttl=5")).is_err());
        assert!(parse_min_ttl(Some("min_ttl=99999999999999999999")).is_err());
    }
}

/// Property tests: `resolve` never panics, and answers a known status for any method, path
/// and query; names that are apps route, others never do.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "v1",
                "apps",
                "health",
                "token",
                "refresh",
                "login",
                "credentials",
                "metrics",
                "analytics",
                "",
                ".",
                "..",
                "%2F",
                "ana%6Cytics",
            ])
            .prop_map(str::to_owned),
            "[ -~]{0,12}",
            "\\PC{0,6}",
        ]
    }

    fn method() -> impl Strategy<Value = Method> {
        prop_oneof![
            Just(Method::GET),
            Just(Method::POST),
            Just(Method::PUT),
            Just(Method::DELETE),
            Just(Method::HEAD),
            Just(Method::OPTIONS),
            "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
        ]
    }

    fn query() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            "min_ttl=[0-9]{0,25}",
            "(min_ttl|minttl|x)=[ -~]{0,10}(&[ -~]{0,10})?",
            "[ -~]{0,30}",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn resolve_never_panics_and_answers_a_known_status(
            method in method(),
            segments in prop::collection::vec(segment(), 0..6),
            leading_slash in any::<bool>(),
            query in query(),
        ) {
            let path = format!("{}{}", if leading_slash { "/" } else { "" }, segments.join("/"));
            let app = |name: &str| (name == "analytics").then(|| name.to_owned());
            let route = resolve(&method, &path, query.as_deref(), app);
            prop_assert!(
                route.template == OTHER || ENDPOINTS.iter().any(|e| e.template == route.template),
                "{}", route.template
            );
            match route.target {
                Target::App { app, action } => {
                    prop_assert_eq!(app, "analytics");
                    if let AppAction::Token { min_ttl } = action {
                        prop_assert!(min_ttl <= Duration::from_secs(86_400 * 365));
                    }
                }
                Target::Refused(e) => {
                    prop_assert!(
                        matches!(e.status.as_u16(), 400 | 404 | 405),
                        "{} {}", e.status, e.code
                    );
                    prop_assert!(e.message.chars().count() <= 200, "{}", e.message);
                }
                _ => {}
            }
        }
    }

    #[test]
    fn known_routes() {
        let app = |n: &str| (n == "analytics").then_some("analytics");
        let r = |m: Method, p: &'static str, q: Option<&str>| resolve(&m, p, q, app).target;
        let refused = |target: Target<&str>| match target {
            Target::Refused(e) => e.code,
            other => panic!("not refused: {other:?}"),
        };
        assert_eq!(r(Method::GET, "/v1/health", None), Target::Health);
        assert_eq!(r(Method::GET, "/v1/apps", None), Target::Apps);
        assert_eq!(r(Method::GET, "/metrics", None), Target::Metrics);
        assert_eq!(
            r(Method::GET, "/v1/apps/analytics/token", Some("min_ttl=60")),
            Target::App {
                app: "analytics",
                action: AppAction::Token {
                    min_ttl: Duration::from_secs(60)
                }
            }
        );
        assert_eq!(
            refused(r(Method::GET, "/v1/apps/ana%6Cytics/token", None)),
            "unknown_app"
        );
        assert_eq!(
            refused(r(Method::GET, "/v1/apps/analytics/refresh", None)),
            "method_not_allowed"
        );
        // An unknown app is named first, whatever else is wrong.
        assert_eq!(
            refused(r(Method::POST, "/v1/apps/nope/bogus", Some("x=1"))),
            "unknown_app"
        );
        assert_eq!(
            refused(r(Method::GET, "/v1/apps/analytics/bogus", None)),
            "not_found"
        );
        assert_eq!(
            refused(r(Method::GET, "/v1/apps/analytics/token", Some("minttl=5"))),
            "bad_request"
        );
    }
}
