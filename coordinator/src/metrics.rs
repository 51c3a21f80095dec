//! The API's own metrics: requests by route, method and status, with their latency
//! ([`ApiMetrics`], recorded by the [`record`] middleware); and the Prometheus text
//! format `GET /metrics` answers with ([`CONTENT_TYPE`]).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of `GET /metrics`: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the latency buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Methods named in the labels; any other is `other`, so that a client inventing
/// methods cannot grow the label set.
const METHODS: [&str; 8] =
    ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "BITS_POST"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route template (`/v1/jobs/{id}`), or `unmatched`.
    route: String,
    method: &'static str,
    status: u16,
}

type Latencies = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// Requests served and their latency, by route, method and status.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    requests: Latencies,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self { requests: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)) }
    }
}

impl ApiMetrics {
    /// Adds these metrics to `registry`, as `ferry_api_request_duration_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "ferry_api_request_duration",
            "API requests by route template, method and status, and how long they took",
            Unit::Seconds,
            self.requests.clone(),
        );
    }
}

/// Middleware recording each request in `metrics` once its response is ready.
pub async fn record(State(metrics): State<ApiMetrics>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = METHODS.into_iter().find(|m| *m == request.method().as_str()).unwrap_or("other");
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = RequestLabels { route, method, status: response.status().as_u16() };
    metrics.requests.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}
