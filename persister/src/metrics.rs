//! Prometheus metrics and the `/metrics` + `/healthz` HTTP endpoints.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Metrics {
    pub registry: Registry,
    pub events_read: IntCounterVec,
    pub rows_written: IntCounterVec,
    pub duplicates: IntCounter,
    pub dead_lettered: IntCounter,
    pub conflicts: IntCounter,
    pub vanished: IntCounter,
    pub retries: IntCounterVec,
    pub errors: IntCounterVec,
    pub acked: IntCounter,
    pub trimmed: IntCounter,
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub lag_seconds: Histogram,
    pub pending: IntGauge,
    pub streams: IntGauge,
    /// Whether the last database and Redis calls succeeded.
    healthy: AtomicBool,
    /// Unix ms of the main loop's last turn.
    heartbeat_ms: AtomicI64,
}

type MetricResult<T> = Result<T, prometheus::Error>;

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> MetricResult<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), &[label])?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn counter(r: &Registry, name: &str, help: &str) -> MetricResult<IntCounter> {
    let metric = IntCounter::new(name, help)?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(r: &Registry, name: &str, help: &str) -> MetricResult<IntGauge> {
    let metric = IntGauge::new(name, help)?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> MetricResult<Histogram> {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    r.register(Box::new(metric.clone()))?;
    Ok(metric)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Metrics {
    /// Registers every metric in a registry of its own.
    pub fn new() -> MetricResult<Metrics> {
        let registry = Registry::new();
        let r = &registry;
        Ok(Metrics {
            events_read: counter_vec(
                r,
                "coupon_persister_events_read_total",
                "Stream entries read, by how they were obtained (new, pending, claimed)",
                "source",
            )?,
            rows_written: counter_vec(
                r,
                "coupon_persister_rows_written_total",
                "Database rows written, by kind (inserted, updated)",
                "kind",
            )?,
            duplicates: counter(
                r,
                "coupon_persister_duplicates_skipped_total",
                "Events already in the database (replays after a crash, second deliveries)",
            )?,
            dead_lettered: counter(
                r,
                "coupon_persister_dead_lettered_total",
                "Entries moved to the dead-letter stream",
            )?,
            conflicts: counter(
                r,
                "coupon_persister_conflicts_total",
                "ALARM: events contradicting persisted rows (same coupon and seq, another entry: \
                 Redis lost data or the coupon was recreated); not written, dead-lettered",
            )?,
            vanished: counter(
                r,
                "coupon_persister_pending_payload_missing_total",
                "ALARM: pending entries whose payload was trimmed or deleted from the stream",
            )?,
            retries: counter_vec(
                r,
                "coupon_persister_retries_total",
                "Retries after a failure, by stage",
                "stage",
            )?,
            errors: counter_vec(
                r,
                "coupon_persister_errors_total",
                "Errors, by kind",
                "kind",
            )?,
            acked: counter(r, "coupon_persister_acked_total", "Entries acknowledged")?,
            trimmed: counter(
                r,
                "coupon_persister_trimmed_total",
                "Committed entries trimmed from the streams",
            )?,
            batch_size: histogram(
                r,
                "coupon_persister_batch_size",
                "Entries per committed batch",
                vec![1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0],
            )?,
            commit_seconds: histogram(
                r,
                "coupon_persister_commit_seconds",
                "Time of one batch transaction, BEGIN to COMMIT",
                prometheus::exponential_buckets(0.001, 2.0, 14)?,
            )?,
            lag_seconds: histogram(
                r,
                "coupon_persister_lag_seconds",
                "End-to-end lag: commit time minus the event's time",
                prometheus::exponential_buckets(0.005, 2.0, 16)?,
            )?,
            pending: gauge(
                r,
                "coupon_persister_stream_pending",
                "Entries pending in the consumer group, over all streams (sampled)",
            )?,
            streams: gauge(
                r,
                "coupon_persister_streams",
                "Coupon event streams being read",
            )?,
            healthy: AtomicBool::new(true),
            heartbeat_ms: AtomicI64::new(now_ms()),
            registry,
        })
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    pub fn retry(&self, stage: &str) {
        self.retries.with_label_values(&[stage]).inc();
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Healthy when the last calls succeeded and the loop turned within `stall`.
    pub fn health(&self, stall: Duration) -> Result<(), &'static str> {
        if !self.healthy.load(Ordering::Relaxed) {
            return Err("a dependency is failing; retrying");
        }
        let age = now_ms() - self.heartbeat_ms.load(Ordering::Relaxed);
        if age > i64::try_from(stall.as_millis()).unwrap_or(i64::MAX) {
            return Err("the main loop is stalled");
        }
        Ok(())
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.render() {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            e.to_string(),
        ),
    }
}

async fn health_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.health(Duration::from_secs(60)) {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Serves `/metrics` and `/healthz` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    axum::serve(listener, app).await?;
    Ok(())
}
