//! Prometheus metrics: every request counted by route, method and status, with its latency;
//! issue outcomes and Redis trouble by kind.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;
use std::time::Instant;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGauge,
    pub outcomes: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub issue_retries: IntCounter,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "coupon_http_requests_total",
                "HTTP requests answered, by route template, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "coupon_http_request_duration_seconds",
                "Time from the request's arrival to its answer, by route template",
            )
            .buckets(prometheus::exponential_buckets(0.000_25, 2.0, 15)?),
            &["route"],
        )?;
        let in_flight = IntGauge::new(
            "coupon_http_requests_in_flight",
            "Requests being answered now",
        )?;
        let outcomes = IntCounterVec::new(
            Opts::new(
                "coupon_http_issue_outcomes_total",
                "Issue answers, by outcome",
            ),
            &["outcome"],
        )?;
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "coupon_http_redis_errors_total",
                "Failed Redis calls, by kind (timeout, connection, server, reply)",
            ),
            &["kind"],
        )?;
        let issue_retries = IntCounter::new(
            "coupon_http_issue_retries_total",
            "Issues sent again after a Redis timeout",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(redis_errors.clone()))?;
        registry.register(Box::new(issue_retries.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            in_flight,
            outcomes,
            redis_errors,
            issue_retries,
        })
    }

    /// Counts a failed Redis call.
    pub fn redis_error(&self, error: &coupon_sdk::Error) {
        use coupon_sdk::Error;
        let kind = match error {
            Error::Timeout(_) => "timeout",
            Error::Connection(_) => "connection",
            Error::Server(_) => "server",
            Error::UnexpectedReply(_) => "reply",
            Error::InvalidInput(_) => "input",
        };
        self.redis_errors.with_label_values(&[kind]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> prometheus::Result<Vec<u8>> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// Middleware: counts and times every request under its route template (`/coupons/{coupon}`,
/// not the coupon itself, so the label set stays small); unrouted requests count as
/// `unmatched`.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = request.method().clone();
    let response = {
        // Decremented on drop too: hyper drops the request's future if the client goes away.
        let _in_flight = InFlight::enter(&metrics.in_flight);
        next.run(request).await
    };
    metrics
        .requests
        .with_label_values(&[route, method.as_str(), response.status().as_str()])
        .inc();
    metrics
        .latency
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}

struct InFlight<'a>(&'a IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
