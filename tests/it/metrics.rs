//! `GET /metrics`: the Prometheus text exposition parses, every family has HELP and TYPE and a
//! conventional name, counters move with token requests, forced refreshes, injected faults and
//! STS calls, and no label value (nor anything else in the text) carries a secret.

use std::collections::{BTreeMap, BTreeSet};

use iamtokend::sim::Fault;

use crate::support::raw_http::get_on_socket;
use crate::support::{client_id, Daemon, TestEnv};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition (Prometheus text format 0.0.4).
#[derive(Debug, Default)]
struct Exposition {
    help: BTreeMap<String, String>,
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the text format strictly enough to catch a malformed line: label values are quoted
/// with `\\`, `\"` and `\n` escapes, values are floats (or +Inf/-Inf/NaN).
fn parse(text: &str) -> Exposition {
    let mut out = Exposition::default();
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(valid_name(name), "line {n}: bad name {name:?}");
            assert!(
                out.help.insert(name.into(), help.into()).is_none(),
                "line {n}: second HELP for {name}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "line {n}: type {kind:?}"
            );
            assert!(
                out.types.insert(name.into(), kind.into()).is_none(),
                "line {n}: second TYPE for {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "line {n}: unknown comment {line:?}");
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("line {n}: no value: {line:?}"));
        let name = &line[..name_end];
        assert!(valid_name(name), "line {n}: bad name {name:?}");
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let used = parse_labels(after, n, &mut labels);
            rest = &after[used..];
        }
        let value = rest.trim_start();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("line {n}: bad value {v:?}")),
        };
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    out
}

/// Parses `key="value",...}` from `tail`; returns how many bytes were used (through `}`).
fn parse_labels(tail: &str, n: usize, labels: &mut BTreeMap<String, String>) -> usize {
    let bytes = tail.as_bytes();
    let mut i = 0;
    loop {
        if bytes.get(i) == Some(&b'}') {
            return i + 1;
        }
        let eq = tail[i..].find('=').expect("label =") + i;
        let key = &tail[i..eq];
        assert!(valid_name(key), "line {n}: bad label name {key:?}");
        assert_eq!(bytes.get(eq + 1), Some(&b'"'), "line {n}: unquoted value");
        let mut value = String::new();
        i = eq + 2;
        loop {
            match bytes.get(i) {
                Some(b'\\') => {
                    match bytes.get(i + 1) {
                        Some(b'\\') => value.push('\\'),
                        Some(b'"') => value.push('"'),
                        Some(b'n') => value.push('\n'),
                        other => panic!("line {n}: bad escape {other:?}"),
                    }
                    i += 2;
                }
                Some(b'"') => break,
                Some(_) => {
                    let c = tail[i..].chars().next().unwrap();
                    value.push(c);
                    i += c.len_utf8();
                }
                None => panic!("line {n}: unterminated label value"),
            }
        }
        assert!(
            labels.insert(key.to_owned(), value).is_none(),
            "line {n}: label {key} twice"
        );
        i += 1;
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return i + 1,
            other => panic!("line {n}: after a label value: {other:?}"),
        }
    }
}

impl Exposition {
    /// The family a sample belongs to (histogram series carry suffixes).
    fn family_of(&self, sample: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = sample.strip_suffix(suffix) {
                if self.types.get(base).map(String::as_str) == Some("histogram") {
                    return base.to_owned();
                }
            }
        }
        sample.to_owned()
    }

    /// Sum of the samples of `name` whose labels include every pair of `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                want.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    fn has(&self, name: &str, want: &[(&str, &str)]) -> bool {
        self.samples.iter().any(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }
}

async fn scrape(daemon: &Daemon) -> (String, Exposition) {
    let answer = get_on_socket(&daemon.socket, "/metrics").await;
    let body = answer.body.clone();
    assert_eq!(answer.status, 200, "{body}");
    let content_type = answer.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let parsed = parse(&body);
    (body, parsed)
}

/// Every family: a HELP, a TYPE, the `iamtokend_` prefix; counters end in `_total`; every
/// sample belongs to a declared family.
fn check_conventions(e: &Exposition) {
    assert!(!e.types.is_empty());
    for (name, kind) in &e.types {
        assert!(name.starts_with("iamtokend_"), "{name}");
        assert!(
            e.help.get(name).is_some_and(|h| !h.is_empty()),
            "{name} has no HELP"
        );
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name}");
        }
        if name.contains("duration") || name.contains("expires_in") {
            assert!(name.ends_with("_seconds"), "{name} has no unit suffix");
        }
    }
    for sample in &e.samples {
        let family = e.family_of(&sample.name);
        assert!(
            e.types.contains_key(&family),
            "sample {} has no TYPE",
            sample.name
        );
    }
}

const REQUESTS: &str = "iamtokend_socket_requests_total";
const CALLS: &str = "iamtokend_upstream_calls_total";
const STATE: &str = "iamtokend_app_state";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposition_parses_and_counters_move() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    env.refresh_app("reports", "seed-refresh-token");
    env.authcode_app("portal", "http://127.0.0.1:8400/callback");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    daemon.wait_state("reports", "ready", 10).await;

    let (_, m) = scrape(&daemon).await;
    check_conventions(&m);
    for (family, kind) in [
        (CALLS, "counter"),
        ("iamtokend_upstream_call_duration_seconds", "histogram"),
        ("iamtokend_refreshes_total", "counter"),
        (REQUESTS, "counter"),
        (STATE, "gauge"),
        ("iamtokend_token_expires_in_seconds", "gauge"),
        ("iamtokend_refresh_consecutive_failures", "gauge"),
    ] {
        assert_eq!(
            m.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    // One start-up call per app that can run its grant, each with its grant's label.
    let ok = |app, grant| [("app", app), ("grant", grant), ("outcome", "ok")];
    assert_eq!(m.sum(CALLS, &ok("analytics", "jwt_bearer")), 1.0);
    assert_eq!(m.sum(CALLS, &ok("reports", "refresh_token")), 1.0);
    assert_eq!(m.sum(CALLS, &[("app", "portal")]), 0.0);
    assert_eq!(
        m.sum(
            "iamtokend_upstream_call_duration_seconds_count",
            &[("operation", "create_token_with_iam")]
        ),
        2.0
    );
    // States: one series per state per app, exactly one of them 1.
    for (app, state) in [
        ("analytics", "ready"),
        ("reports", "ready"),
        ("portal", "needs_login"),
    ] {
        assert_eq!(m.sum(STATE, &[("app", app), ("state", state)]), 1.0);
        assert_eq!(m.sum(STATE, &[("app", app)]), 1.0);
        assert_eq!(
            m.samples
                .iter()
                .filter(|s| s.name == STATE && s.labels["app"] == app)
                .count(),
            6
        );
    }
    let ttl = m.sum(
        "iamtokend_token_expires_in_seconds",
        &[("app", "analytics")],
    );
    assert!(ttl > 3500.0 && ttl <= 3600.0, "{ttl}");
    assert!(!m.has("iamtokend_token_expires_in_seconds", &[("app", "portal")]));

    // A token request: counted under the route template with its status.
    let token_route = [("route", "/v1/apps/{app}/token"), ("status", "200")];
    let before = m.sum(REQUESTS, &token_route);
    let (status, _) = daemon.get("/v1/apps/analytics/token").await;
    assert_eq!(status, 200);
    let (status, _) = daemon.get("/v1/apps/nope/token").await;
    assert_eq!(status, 404);
    let (_, m) = scrape(&daemon).await;
    assert_eq!(m.sum(REQUESTS, &token_route), before + 1.0);
    assert_eq!(
        m.sum(
            REQUESTS,
            &[("route", "/v1/apps/{app}/token"), ("status", "404")]
        ),
        1.0
    );
    // The scrape before this one was counted (a scrape is counted once answered).
    assert_eq!(
        m.sum(REQUESTS, &[("route", "/metrics"), ("status", "200")]),
        1.0
    );

    // A forced refresh: one more call and one more successful refresh.
    let (status, _) = daemon.post("/v1/apps/analytics/refresh", None).await;
    assert_eq!(status, 200);
    let (_, m) = scrape(&daemon).await;
    assert_eq!(m.sum(CALLS, &ok("analytics", "jwt_bearer")), 2.0);
    assert_eq!(
        m.sum(
            "iamtokend_refreshes_total",
            &[("app", "analytics"), ("result", "ok")]
        ),
        2.0
    );

    // Injected faults: the refresh fails (transient), the app is failing with one failure in a
    // row, and a token request is served the last good token: counted as served stale. The
    // extra faults keep the automatic retries failing while the test looks.
    for _ in 0..3 {
        env.sim
            .push_fault_for(&client_id("analytics"), Fault::server_error());
    }
    let (status, _) = daemon.post("/v1/apps/analytics/refresh", None).await;
    assert_eq!(status, 503);
    let (status, _) = daemon.get("/v1/apps/analytics/token").await;
    assert_eq!(status, 200);
    let (_, m) = scrape(&daemon).await;
    assert!(
        m.sum(
            CALLS,
            &[
                ("app", "analytics"),
                ("grant", "jwt_bearer"),
                ("outcome", "transient")
            ]
        ) >= 1.0
    );
    assert!(
        m.sum(
            "iamtokend_refreshes_total",
            &[("app", "analytics"), ("result", "upstream_error")]
        ) >= 1.0
    );
    assert!(
        m.sum(
            "iamtokend_refresh_consecutive_failures",
            &[("app", "analytics")]
        ) >= 1.0
    );
    assert_eq!(
        m.sum(STATE, &[("app", "analytics"), ("state", "ready")]),
        0.0
    );
    assert_eq!(
        m.sum(
            "iamtokend_served_stale_total",
            &[("app", "analytics"), ("kind", "token")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            REQUESTS,
            &[("route", "/v1/apps/{app}/refresh"), ("status", "503")]
        ),
        1.0
    );
    // Once the faults are used up the app recovers on its own and the gauge goes back to 0.
    daemon.wait_state("analytics", "ready", 30).await;
    let (_, m) = scrape(&daemon).await;
    assert_eq!(
        m.sum(
            "iamtokend_refresh_consecutive_failures",
            &[("app", "analytics")]
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_calls_are_counted() {
    let env = TestEnv::new(3600).await;
    std::fs::write(
        env.path("analytics.jwt"),
        crate::support::assertion("analytics"),
    )
    .unwrap();
    env.write_app(
        "analytics",
        &format!(
            "grant = \"jwt-bearer\"\nscopes = [\"openid\", \"aws\", \"sts:identity_context\"]\nassertion_file = \"{}\"\n\n[role]\narn = \"arn:aws:iam::123456789012:role/AnalyticsTIP\"\nendpoint_url = \"{}\"\n",
            env.path("analytics.jwt").display(),
            env.sim.endpoint_url()
        ),
    );
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    for _ in 0..3 {
        let (status, body) = daemon.get("/v1/apps/analytics/credentials").await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, m) = scrape(&daemon).await;
    check_conventions(&m);
    // Cached after the first: one call.
    assert_eq!(
        m.sum(
            "iamtokend_sts_assume_role_calls_total",
            &[("app", "analytics"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            "iamtokend_upstream_call_duration_seconds_count",
            &[("operation", "assume_role")]
        ),
        1.0
    );
    assert_eq!(
        m.sum(
            REQUESTS,
            &[("route", "/v1/apps/{app}/credentials"), ("status", "200")]
        ),
        3.0
    );
}

/// Canary secrets planted through the simulator (an access token it hands out, a refresh
/// token, the signing secret) and a canary in a requested path never reach the exposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_exposition() {
    let env = TestEnv::new(3600).await;
    env.jwt_app("analytics");
    env.refresh_app("reports", "canary-refresh-9c1d2e");
    let daemon = env.daemon().await;
    daemon.wait_state("analytics", "ready", 10).await;
    daemon.wait_state("reports", "ready", 10).await;

    let canary_token = "aoa-canary-token-4f2b7a91d3";
    env.sim.push_fault_for(
        &client_id("analytics"),
        Fault::Raw {
            status: 200,
            content_type: "application/json".into(),
            body: format!(
                r#"{{"accessToken":"{canary_token}","tokenType":"Bearer","expiresIn":3600}}"#
            ),
        },
    );
    let (status, body) = daemon.post("/v1/apps/analytics/refresh", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], canary_token, "the canary was served");
    let (status, _) = daemon.get(&format!("/v1/apps/{canary_token}/token")).await;
    assert_eq!(status, 404);
    let status = get_on_socket(&daemon.socket, &format!("/{canary_token}"))
        .await
        .status;
    assert_eq!(status, 404);

    let mut canaries: BTreeSet<String> = [
        canary_token.to_owned(),
        "canary-refresh-9c1d2e".to_owned(),
        env.options.secret_access_key.clone(),
        crate::support::assertion("analytics"),
    ]
    .into();
    let (_, token) = daemon.get("/v1/apps/reports/token").await;
    canaries.insert(token["access_token"].as_str().unwrap().to_owned());
    for call in env.sim.calls() {
        for key in ["refreshToken", "assertion"] {
            if let Some(v) = call.params.get(key) {
                canaries.insert(v.clone());
            }
        }
    }

    let (text, m) = scrape(&daemon).await;
    check_conventions(&m);
    let apps: BTreeSet<&str> = ["analytics", "reports"].into();
    for sample in &m.samples {
        for (key, value) in &sample.labels {
            for canary in &canaries {
                assert!(
                    !value.contains(canary.as_str()),
                    "a secret in label {key} of {}",
                    sample.name
                );
            }
            if key == "app" {
                assert!(apps.contains(value.as_str()), "app label {value:?}");
            }
            if key == "route" {
                assert!(
                    value == "other" || value == "/metrics" || value.starts_with("/v1/"),
                    "route label {value:?}"
                );
                assert!(!value.contains("canary"), "{value}");
            }
        }
    }
    for canary in &canaries {
        assert!(
            !text.contains(canary.as_str()),
            "a secret in the exposition"
        );
    }
    assert!(m.sum(REQUESTS, &[("route", "other"), ("status", "404")]) >= 1.0);
}
