//! Prometheus metrics for `GET /metrics` (Prometheus text format 0.0.4).
//!
//! Counters and the latency histogram live in one [`Metrics`] that the broker hands to every
//! app's owner task; the narrow points that bump them are the upstream call in the refresh
//! job, the STS call in the credential cache, and the socket router. Per-app gauges (state,
//! seconds to expiry, consecutive failures) are not kept up to date on every change: they are
//! computed at scrape time from the snapshots the owners already publish ([`AppSample`]), so
//! the refresh path pays nothing for them.
//!
//! Label values are app names from the config, grant and operation labels, route templates
//! (`/v1/apps/{app}/token`, never a path a client sent) and fixed outcome words. Never a
//! token, an error message, or anything else a client or the upstream chose.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::refresh::AppState;
use crate::upstream::UpstreamError;

/// `Content-Type` of the exposition.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Prefix of every metric name.
const PREFIX: &str = "iamtokend";

/// Upper bounds of the upstream latency buckets, seconds: loopback and VPC endpoints answer in
/// milliseconds, a far region in hundreds, and the call timeout is 30 s.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every state an app can report, in contract order: `iamtokend_app_state` has one series per
/// state per app, 1 for the current one.
const STATES: [AppState; 6] = [
    AppState::Pending,
    AppState::Ready,
    AppState::Refreshing,
    AppState::Failing,
    AppState::NeedsLogin,
    AppState::Expired,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    app: String,
    grant: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppOutcomeLabels {
    app: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    app: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StaleLabels {
    app: String,
    kind: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// The daemon's counters and histograms, and the registry that names them.
pub(crate) struct Metrics {
    registry: Registry,
    upstream_calls: Family<UpstreamLabels, Counter>,
    upstream_duration: HistogramFamily<OperationLabels>,
    sts_calls: Family<AppOutcomeLabels, Counter>,
    refreshes: Family<RefreshLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    served_stale: Family<StaleLabels, Counter>,
    state_sealed: Gauge,
    sink_writes: Family<AppOutcomeLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Every metric registered, all at zero.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let upstream_calls = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "upstream_calls",
            "CreateTokenWithIAM calls by app, grant and outcome (ok, invalid_grant, slow_down, transient, config_fault)",
            upstream_calls.clone(),
        );
        let upstream_duration: HistogramFamily<OperationLabels> =
            Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register_with_unit(
            "upstream_call_duration",
            "Duration of upstream calls by operation (create_token_with_iam, assume_role)",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let sts_calls = Family::<AppOutcomeLabels, Counter>::default();
        registry.register(
            "sts_assume_role_calls",
            "STS AssumeRole calls (role credentials) by app and outcome",
            sts_calls.clone(),
        );
        let refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register(
            "refreshes",
            "Refresh attempts by app and result (ok, upstream_error, source_error, needs_login); one attempt may make two upstream calls",
            refreshes.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "socket_requests",
            "Socket API requests by route template and HTTP status",
            requests.clone(),
        );
        let served_stale = Family::<StaleLabels, Counter>::default();
        registry.register(
            "served_stale",
            "Tokens or credentials served while the app's last refresh had failed (the last good one, still valid)",
            served_stale.clone(),
        );
        let state_sealed = Gauge::default();
        registry.register(
            "state_sealed",
            "1 when state files are written sealed (AES-256-GCM with the state-key credential), 0 when not",
            state_sealed.clone(),
        );
        let sink_writes = Family::<AppOutcomeLabels, Counter>::default();
        registry.register(
            "sink_writes",
            "File sink writes by app and outcome (ok, error); a failed write is retried with backoff",
            sink_writes.clone(),
        );
        Metrics {
            registry,
            sink_writes,
            upstream_calls,
            upstream_duration,
            sts_calls,
            refreshes,
            requests,
            served_stale,
            state_sealed,
        }
    }

    /// Whether state files are written sealed; set once at start.
    pub(crate) fn set_state_sealed(&self, sealed: bool) {
        self.state_sealed.set(i64::from(sealed));
    }

    /// One `CreateTokenWithIAM` call finished.
    pub(crate) fn upstream_call(
        &self,
        app: &str,
        grant: &'static str,
        result: Result<(), &UpstreamError>,
        took: Duration,
    ) {
        self.upstream_calls
            .get_or_create(&UpstreamLabels {
                app: app.to_owned(),
                grant,
                outcome: outcome(result),
            })
            .inc();
        self.upstream_duration
            .get_or_create(&OperationLabels {
                operation: "create_token_with_iam",
            })
            .observe(took.as_secs_f64());
    }

    /// One STS `AssumeRole` call finished.
    pub(crate) fn assume_role_call(
        &self,
        app: &str,
        result: Result<(), &UpstreamError>,
        took: Duration,
    ) {
        self.sts_calls
            .get_or_create(&AppOutcomeLabels {
                app: app.to_owned(),
                outcome: outcome(result),
            })
            .inc();
        self.upstream_duration
            .get_or_create(&OperationLabels {
                operation: "assume_role",
            })
            .observe(took.as_secs_f64());
    }

    /// One refresh attempt of an app ended; `result` is one of the fixed words of
    /// `iamtokend_refreshes_total`.
    pub(crate) fn refresh_done(&self, app: &str, result: &'static str) {
        self.refreshes
            .get_or_create(&RefreshLabels {
                app: app.to_owned(),
                result,
            })
            .inc();
    }

    /// One socket request answered. `route` is the template of the route table
    /// ([`crate::server::routes::Route::template`]): never a path a client sent.
    pub(crate) fn request(&self, route: &'static str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
    }

    /// The last good token (`kind` = "token") or credentials ("credentials") were served while
    /// the app was failing.
    pub(crate) fn served_stale(&self, app: &str, kind: &'static str) {
        self.served_stale
            .get_or_create(&StaleLabels {
                app: app.to_owned(),
                kind,
            })
            .inc();
    }

    /// One file sink write of `app` finished.
    pub(crate) fn sink_write(&self, app: &str, ok: bool) {
        self.sink_writes
            .get_or_create(&AppOutcomeLabels {
                app: app.to_owned(),
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// The exposition: every counter, then the per-app gauges of `apps`.
    pub(crate) fn encode(&self, apps: Vec<AppSample>) -> String {
        let mut out = String::with_capacity(4096 + apps.len() * 400);
        let mut per_scrape = Registry::with_prefix(PREFIX);
        per_scrape.register_collector(Box::new(AppGauges(apps)));
        // Writing to a String cannot fail; a collector error would only cut the text short.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &per_scrape);
        out
    }
}

/// The `outcome` label of an upstream call.
fn outcome(result: Result<(), &UpstreamError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(UpstreamError::InvalidGrant { .. }) => "invalid_grant",
        Err(UpstreamError::SlowDown { .. }) => "slow_down",
        Err(UpstreamError::Transient { .. }) => "transient",
        Err(UpstreamError::ConfigFault { .. }) => "config_fault",
    }
}

/// What the per-app gauges show of one app, read from its snapshot at scrape time.
#[derive(Debug, Clone)]
pub(crate) struct AppSample {
    /// The `app` label: the name from the config, never client text.
    pub(crate) app: String,
    /// The state a reader would report now.
    pub(crate) state: AppState,
    /// Seconds until the held token expires (0 once expired); `None` when no token is held.
    pub(crate) expires_in: Option<f64>,
    /// Consecutive failed attempts (0 after a success).
    pub(crate) consecutive_failures: u32,
    /// The app's file sinks: path and the Unix time what the file holds expires (`None`
    /// while it holds nothing of ours).
    pub(crate) sinks: Vec<(String, Option<f64>)>,
}

#[derive(Debug)]
struct AppGauges(Vec<AppSample>);

impl Collector for AppGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "app_state",
            "1 for the app's current state, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for sample in &self.0 {
            for state in STATES {
                let labels = [("app", sample.app.as_str()), ("state", state.as_str())];
                ConstGauge::new(i64::from(sample.state == state))
                    .encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "token_expires_in",
            "Seconds until the app's current token expires (0 once expired); absent while no token is held.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for sample in &self.0 {
            if let Some(secs) = sample.expires_in {
                ConstGauge::new(secs)
                    .encode(metric.encode_family(&[("app", sample.app.as_str())])?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "refresh_consecutive_failures",
            "Failed refresh attempts in a row (the backoff step); 0 after a success.",
            None,
            MetricType::Gauge,
        )?;
        for sample in &self.0 {
            ConstGauge::new(sample.consecutive_failures)
                .encode(metric.encode_family(&[("app", sample.app.as_str())])?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "sink_expiry_timestamp",
            "Unix time at which what a file sink holds expires; absent while it holds nothing.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for sample in &self.0 {
            for (path, expiry) in &sample.sinks {
                if let Some(expiry) = expiry {
                    let labels = [("app", sample.app.as_str()), ("path", path.as_str())];
                    ConstGauge::new(*expiry).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_types_and_values() {
        let metrics = Metrics::new();
        metrics.upstream_call("a", "jwt_bearer", Ok(()), Duration::from_millis(20));
        metrics.upstream_call(
            "a",
            "refresh_token",
            Err(&UpstreamError::InvalidGrant {
                code: "invalid_grant".into(),
                message: "m".into(),
            }),
            Duration::from_millis(3),
        );
        metrics.request("/v1/apps/{app}/token", 200);
        metrics.refresh_done("a", "ok");
        metrics.set_state_sealed(true);
        metrics.sink_write("a", true);
        metrics.sink_write("a", false);
        metrics.sink_write("a", false);
        let text = metrics.encode(vec![AppSample {
            app: "a".into(),
            state: AppState::Failing,
            expires_in: Some(12.5),
            consecutive_failures: 3,
            sinks: vec![
                ("/run/a/token".into(), Some(1_800_000_000.0)),
                ("/run/a/none".into(), None),
            ],
        }]);
        assert!(!text.contains("/run/a/none"), "{text}");
        for line in [
            "# TYPE iamtokend_upstream_calls_total counter",
            "iamtokend_upstream_calls_total{app=\"a\",grant=\"jwt_bearer\",outcome=\"ok\"} 1",
            "iamtokend_upstream_calls_total{app=\"a\",grant=\"refresh_token\",outcome=\"invalid_grant\"} 1",
            "# TYPE iamtokend_upstream_call_duration_seconds histogram",
            "iamtokend_upstream_call_duration_seconds_count{operation=\"create_token_with_iam\"} 2",
            "iamtokend_upstream_call_duration_seconds_bucket{operation=\"create_token_with_iam\",le=\"0.005\"} 1",
            "iamtokend_socket_requests_total{route=\"/v1/apps/{app}/token\",status=\"200\"} 1",
            "iamtokend_refreshes_total{app=\"a\",result=\"ok\"} 1",
            "# TYPE iamtokend_app_state gauge",
            "iamtokend_app_state{app=\"a\",state=\"failing\"} 1",
            "iamtokend_app_state{app=\"a\",state=\"ready\"} 0",
            "iamtokend_token_expires_in_seconds{app=\"a\"} 12.5",
            "iamtokend_refresh_consecutive_failures{app=\"a\"} 3",
            "# TYPE iamtokend_state_sealed gauge",
            "iamtokend_state_sealed 1",
            "iamtokend_sink_writes_total{app=\"a\",outcome=\"ok\"} 1",
            "iamtokend_sink_writes_total{app=\"a\",outcome=\"error\"} 2",
            "iamtokend_sink_expiry_timestamp_seconds{app=\"a\",path=\"/run/a/token\"} 1800000000.0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
