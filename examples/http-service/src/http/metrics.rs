//! Prometheus metrics: every request counted by route, method and status, with its latency;
//! issue outcomes per coupon, each campaign's stock and what is left of it, Redis trouble by
//! kind, and the request deadline (so an alert can compare the latency with it).

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::response::Response;
use pin_project_lite::pin_project;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGauge,
    pub outcomes: IntCounterVec,
    pub redis_errors: IntCounterVec,
    pub issue_retries: IntCounter,
    pub writes_refused: IntCounterVec,
    pub stock: IntGaugeVec,
    pub remaining: IntGaugeVec,
    pub request_timeout: Gauge,
    pub answered_locally: IntCounter,
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
                "Issue answers, by coupon and outcome",
            ),
            &["coupon", "outcome"],
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
        let writes_refused = IntCounterVec::new(
            Opts::new(
                "coupon_http_writes_refused_total",
                "Coupon writes Redis refused, by reason (oom: over maxmemory; eviction_unsafe: \
                 an allkeys-* maxmemory-policy)",
            ),
            &["reason"],
        )?;
        let stock = IntGaugeVec::new(
            Opts::new("coupon_http_coupon_stock", "Each campaign's stock"),
            &["coupon"],
        )?;
        let remaining = IntGaugeVec::new(
            Opts::new(
                "coupon_http_coupon_remaining",
                "Each campaign's stock not held by anyone, as Redis last answered (read every \
                 second)",
            ),
            &["coupon"],
        )?;
        let request_timeout = Gauge::new(
            "coupon_http_request_timeout_seconds",
            "The whole request's budget (--request-timeout-ms); past it the answer is 503",
        )?;
        let answered_locally = IntCounter::new(
            "coupon_http_issues_answered_locally_total",
            "Issue clicks the SDK answered itself (sold out, a holder's repeat) without sending \
             them to Redis (counted every second)",
        )?;
        registry.register(Box::new(answered_locally.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(outcomes.clone()))?;
        registry.register(Box::new(redis_errors.clone()))?;
        registry.register(Box::new(issue_retries.clone()))?;
        registry.register(Box::new(writes_refused.clone()))?;
        registry.register(Box::new(stock.clone()))?;
        registry.register(Box::new(remaining.clone()))?;
        registry.register(Box::new(request_timeout.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            latency,
            in_flight,
            outcomes,
            redis_errors,
            issue_retries,
            writes_refused,
            stock,
            remaining,
            request_timeout,
            answered_locally,
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
            Error::NotReplicated { .. } => "not_replicated",
        };
        self.redis_errors.with_label_values(&[kind]).inc();
        if let Error::Server(error) = error {
            if error.code() == Some("OOM") {
                self.writes_refused.with_label_values(&["oom"]).inc();
            } else if error.to_string().contains("coupon writes are refused") {
                self.writes_refused
                    .with_label_values(&["eviction_unsafe"])
                    .inc();
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> prometheus::Result<Vec<u8>> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

/// The layer that counts and times every request under its route template
/// (`/coupons/{coupon}`, not the coupon itself, so the label set stays small); unrouted
/// requests count as `unmatched`. A plain tower layer, like the deadline's, for the same
/// reason: no box and no service clone per request.
#[derive(Clone)]
pub struct TrackLayer {
    metrics: Arc<Metrics>,
}

impl TrackLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        TrackLayer { metrics }
    }
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        TrackFuture {
            in_flight: InFlight::enter(&self.metrics.in_flight),
            inner: self.inner.call(request),
            started: Instant::now(),
            route,
            method,
            metrics: self.metrics.clone(),
        }
    }
}

pin_project! {
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: Method,
        metrics: Arc<Metrics>,
        // Decremented on drop too: hyper drops the request's future if the client goes away.
        in_flight: InFlight,
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.inner.poll(cx));
        if let Ok(response) = &answer {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            let metrics = &this.metrics;
            metrics
                .requests
                .with_label_values(&[route, this.method.as_str(), response.status().as_str()])
                .inc();
            metrics
                .latency
                .with_label_values(&[route])
                .observe(this.started.elapsed().as_secs_f64());
        }
        Poll::Ready(answer)
    }
}

struct InFlight(IntGauge);

impl InFlight {
    fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
