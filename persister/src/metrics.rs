//! Prometheus metrics, and the health state `/healthz` reports.

use crate::health::Health;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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
    pub checkpoint_writes: IntCounter,
    pub trimmed: IntCounter,
    pub batch_size: Histogram,
    pub commit_seconds: Histogram,
    pub lag_seconds: Histogram,
    pub pending: IntGauge,
    pub backlog: IntGauge,
    pub oldest_seconds: Gauge,
    pub streams: IntGauge,
    pub streams_ignored: IntGauge,
    pub up: IntGaugeVec,
    pub health: Health,
    /// Each Redis node's share of the sampled gauges (one node, "", outside a cluster).
    nodes: Mutex<BTreeMap<String, NodeGauges>>,
}

/// One node's share of the gauges over all streams: summed over the nodes (the oldest
/// entry's age: the highest).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct NodeGauges {
    pub streams: i64,
    pub streams_ignored: i64,
    pub pending: i64,
    pub backlog: i64,
    pub oldest_seconds: f64,
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

fn gauge_f64(r: &Registry, name: &str, help: &str) -> MetricResult<Gauge> {
    let metric = Gauge::new(name, help)?;
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
            checkpoint_writes: counter(
                r,
                "coupon_persister_checkpoint_writes_total",
                "Checkpoint transactions committed (at most one a second per pipeline)",
            )?,
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
                vec![
                    0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0,
                    10.0, 30.0, 60.0, 300.0,
                ],
            )?,
            pending: gauge(
                r,
                "coupon_persister_stream_pending",
                "Entries delivered to the consumer group and not yet acknowledged, over all \
                 streams (sampled every --sample-interval-ms)",
            )?,
            backlog: gauge(
                r,
                "coupon_persister_backlog",
                "Entries not yet delivered to the consumer group, over all streams (sampled)",
            )?,
            oldest_seconds: gauge_f64(
                r,
                "coupon_persister_oldest_unpersisted_seconds",
                "Age of the oldest entry not yet persisted and acknowledged (pending or not yet \
                 delivered), 0 when there is none (sampled)",
            )?,
            streams: gauge(
                r,
                "coupon_persister_streams",
                "Coupon event streams being read",
            )?,
            streams_ignored: gauge(
                r,
                "coupon_persister_streams_ignored",
                "Streams matching --stream-pattern that are not coupon event streams",
            )?,
            up: {
                let metric = IntGaugeVec::new(
                    Opts::new(
                        "coupon_persister_up",
                        "Whether the dependency answered its last health probe (1) or not (0)",
                    ),
                    &["dependency"],
                )?;
                r.register(Box::new(metric.clone()))?;
                metric
            },
            health: Health::default(),
            nodes: Mutex::default(),
            registry,
        })
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    pub fn retry(&self, stage: &str) {
        self.retries.with_label_values(&[stage]).inc();
    }

    /// Updates one node's share of the stream gauges, and the gauges.
    pub fn node_gauges(&self, node: &str, update: impl FnOnce(&mut NodeGauges)) {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        update(nodes.entry(node.to_string()).or_default());
        self.set_totals(&nodes);
    }

    /// Drops a node's share (its pipeline stopped: the node is no longer a primary).
    pub fn forget_node(&self, node: &str) {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        nodes.remove(node);
        self.set_totals(&nodes);
    }

    fn set_totals(&self, nodes: &BTreeMap<String, NodeGauges>) {
        let total = |share: fn(&NodeGauges) -> i64| nodes.values().map(share).sum::<i64>();
        self.streams.set(total(|g| g.streams));
        self.streams_ignored.set(total(|g| g.streams_ignored));
        self.pending.set(total(|g| g.pending));
        self.backlog.set(total(|g| g.backlog));
        let oldest = nodes.values().map(|g| g.oldest_seconds).fold(0.0, f64::max);
        self.oldest_seconds.set(oldest);
    }

    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
