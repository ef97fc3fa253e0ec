//! A closed-loop load generator: `workers` tasks each keep one request in flight until `total`
//! requests are done; every latency goes into an HDR histogram.

use hdrhistogram::Histogram;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub latency: Histogram<u64>,
}

impl LoadReport {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1_000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency.max() as f64 / 1_000.0
    }
}

/// Runs `request(i)` for i in 0..total from `workers` concurrent tasks; `request` answers
/// whether it succeeded. `on_done` is called with the running count (for progress bars).
pub async fn drive<F, Fut>(
    total: u64,
    workers: usize,
    request: F,
    on_done: impl Fn(u64) + Send + Sync + 'static,
) -> LoadReport
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let on_done = Arc::new(on_done);
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (next, done, request, on_done) =
                (next.clone(), done.clone(), request.clone(), on_done.clone());
            tokio::spawn(async move {
                let mut latency = new_histogram();
                let mut errors = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let sent = Instant::now();
                    let ok = request(i).await;
                    let micros = sent.elapsed().as_micros() as u64;
                    let _ = latency.record(micros.max(1));
                    errors += u64::from(!ok);
                    on_done(done.fetch_add(1, Ordering::Relaxed) + 1);
                }
                (latency, errors)
            })
        })
        .collect();
    let mut latency = new_histogram();
    let mut errors = 0;
    for task in tasks {
        if let Ok((part, part_errors)) = task.await {
            let _ = latency.add(&part);
            errors += part_errors;
        }
    }
    LoadReport {
        requests: total,
        errors,
        elapsed: started.elapsed(),
        latency,
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("1 µs to 60 s at 3 digits is a valid range")
}

/// A cheap bijective scramble of 0..n (splitmix64's finaliser), so simulated users arrive in a
/// random order and repeat, the same in every run.
pub fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The SDK's answers of a run, counted by label; clones count into the same totals.
#[derive(Debug, Clone, Default)]
pub struct Tally(Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>>);

impl Tally {
    /// Counts what `issue` answered (`already`: the label of a repeat click); whether it
    /// was an answer rather than an error.
    pub fn count(
        &self,
        answer: &coupon_sdk::Result<coupon_sdk::Outcome>,
        already: &'static str,
    ) -> bool {
        use coupon_sdk::Outcome;
        let label = match answer {
            Ok(Outcome::Issued { .. }) => "issued",
            Ok(Outcome::AlreadyIssued { .. }) => already,
            Ok(Outcome::SoldOut) => "sold out",
            Ok(Outcome::NotStarted | Outcome::Ended) => "outside the window",
            Err(_) => "error",
        };
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label)
            .or_default() += 1;
        answer.is_ok()
    }

    pub fn counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}
