//! The persister's lag at a steady rate: events issued at a fixed rate over many coupons, or
//! all to one live coupon among many dormant ones, for a while, the persister running with
//! its defaults and trimming every second; the lag of each event (its commit time minus its
//! time) is read from the persister's histogram over the steady part of the run. Beside it,
//! what the persister costs Redis: `XREADGROUP`'s calls and time (`INFO commandstats`), the
//! commands over 1 ms (`SLOWLOG`), and the p99 of an independent client's `COUPON.ISSUE`.

use super::Bench;
use coupon_tests::figures::command_stats;
use coupon_tests::{query_rows, MariaDb, Persister};
use sqlx::Row;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Resident memory of a process, in kB (0 if unknown).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// How the events fall on the coupons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Evenly over every coupon.
    Spread,
    /// All on one coupon; the others stay dormant (a live sale on a platform).
    OneHot,
}

/// What the persister cost Redis during the steady part of a run.
#[derive(Debug, Default)]
struct RedisCost {
    xreadgroup_calls: u64,
    xreadgroup_usec: u64,
    /// Commands over 1 ms, by name (`SLOWLOG`, at most 128 kept).
    slow: BTreeMap<String, u64>,
    /// An independent client's `COUPON.ISSUE`, one every 10 ms: p99 round trip.
    probe_p99_ms: f64,
}

impl fmt::Display for RedisCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slow: Vec<String> = self.slow.iter().map(|(c, n)| format!("{c} {n}")).collect();
        write!(
            f,
            "XREADGROUP {} calls, {:.0} µs each; commands over 1 ms: {}; an independent \
             COUPON.ISSUE p99 {:.1} ms",
            self.xreadgroup_calls,
            self.xreadgroup_usec as f64 / self.xreadgroup_calls.max(1) as f64,
            if slow.is_empty() {
                "none".to_string()
            } else {
                slow.join(", ")
            },
            self.probe_p99_ms
        )
    }
}

/// Commands in the slow log, by name.
fn slow_commands(conn: &mut redis::Connection) -> BTreeMap<String, u64> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(128)
        .query(conn)
        .unwrap_or_default();
    let mut slow = BTreeMap::new();
    for entry in entries {
        let redis::Value::Array(fields) = entry else {
            continue;
        };
        let Some(redis::Value::Array(args)) = fields.get(3) else {
            continue;
        };
        if let Some(redis::Value::BulkString(name)) = args.first() {
            *slow
                .entry(String::from_utf8_lossy(name).to_uppercase())
                .or_insert(0) += 1;
        }
    }
    slow
}

/// What one run measured.
pub struct Lag {
    shape: Shape,
    coupons: u64,
    asked: u64,
    achieved: f64,
    events: f64,
    within_250ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_rss_kb: u64,
    cost: RedisCost,
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = match self.shape {
            Shape::Spread => "spread over",
            Shape::OneHot => "to one coupon among",
        };
        write!(
            f,
            "{shape} {} coupons, {} events/s asked, {:.0} issued: lag p50 {:.0} ms, p99 {:.0} \
             ms, {:.2}% within 250 ms ({:.0} events observed); persister RSS at most {:.1} \
             MB\n  Redis: {}",
            self.coupons,
            self.asked,
            self.achieved,
            self.p50_ms,
            self.p99_ms,
            100.0 * self.within_250ms,
            self.events,
            self.max_rss_kb as f64 / 1024.0,
            self.cost
        )
    }
}

/// The lag histogram's cumulative buckets: upper bound in seconds → count.
fn buckets(persister: &Persister) -> Vec<(f64, f64)> {
    let Some((_, body)) = persister.http_get("/metrics") else {
        return Vec::new();
    };
    let mut found: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("coupon_persister_lag_seconds_bucket{le=\"") else {
            continue;
        };
        let Some((le, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let le: f64 = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        if let Ok(value) = value.parse::<f64>() {
            found.insert(le.to_bits(), (le, value));
        }
    }
    let mut sorted: Vec<(f64, f64)> = found.into_values().collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    sorted
}

/// The quantile of a cumulative histogram, interpolated linearly within its bucket (as
/// Prometheus' `histogram_quantile` does), in seconds.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let inside = (count - lower.1).max(1e-9);
            return lower.0 + (le - lower.0) * (rank - lower.1) / inside;
        }
        lower = (le, count);
    }
    f64::NAN
}

/// Issues `rate` events a second to `coupons` coupons as `shape` says for a fifth of `hold`
/// (warm-up) and then `hold`, with a persister draining them into a fresh MariaDB.
pub fn at_steady_rate(
    runtime: &tokio::runtime::Runtime,
    bench: &Bench,
    url: &str,
    rate: u64,
    coupons: u64,
    hold: Duration,
    shape: Shape,
) -> Lag {
    let tag = format!("lag{coupons}:{}", bench.run);
    let key = tag.clone();
    // The coupons exist (their first events persisted) before the run, as in production.
    let workers = bench.connections.len() * 16;
    let created = runtime.block_on(bench.measure(coupons, workers, move |i| {
        redis::cmd("COUPON.ISSUE")
            .arg(format!("{key}:{i}"))
            .arg("first")
            .arg(i64::MAX)
            .to_owned()
    }));
    assert_eq!(created.errors, 0, "creating the coupons failed");
    let database = MariaDb::start();
    let database_url = database.url();
    let mut persister = Persister::start(
        url,
        &database_url,
        &[
            ("stream-pattern", &format!("{tag}:*:events*")),
            ("linger-ms", "50"),
            ("claim-idle-ms", "30000"),
            ("trim-interval-ms", "1000"),
        ],
    );
    let rows = || {
        query_rows(&database_url, "SELECT COUNT(*) FROM coupon_issuance")
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r.try_get::<i64, _>(0).ok()))
            .unwrap_or(0) as u64
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while rows() < coupons {
        assert!(
            Instant::now() < deadline && persister.is_running(),
            "the coupons' first events were not persisted:\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let warm_up = hold / 5;
    let issued = Arc::new(AtomicU64::new(0));
    let connections = bench.connections.clone();
    let (counter, key) = (issued.clone(), tag.clone());
    let load = runtime.spawn(async move {
        // One pipeline every 10 ms; a tick missed is caught up at once.
        let per_tick = (rate / 100).max(1);
        let mut ticks = tokio::time::interval(Duration::from_millis(10));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut next = 0u64;
        let mut sends = tokio::task::JoinSet::new();
        while started.elapsed() < warm_up + hold {
            ticks.tick().await;
            let mut pipe = redis::pipe();
            for i in next..next + per_tick {
                pipe.cmd("COUPON.ISSUE")
                    .arg(match shape {
                        Shape::Spread => format!("{key}:{}", i % coupons),
                        Shape::OneHot => format!("{key}:0"),
                    })
                    .arg(format!("u{i}"))
                    .arg(i64::MAX)
                    .ignore();
            }
            let mut conn = connections[(next / per_tick) as usize % connections.len()].clone();
            let counter = counter.clone();
            sends.spawn(async move {
                if pipe.query_async::<()>(&mut conn).await.is_ok() {
                    counter.fetch_add(per_tick, Ordering::Relaxed);
                }
            });
            next += per_tick;
            while sends.try_join_next().is_some() {}
        }
        while sends.join_next().await.is_some() {}
    });
    std::thread::sleep(warm_up);
    let client = redis::Client::open(url).expect("a valid Redis URL");
    let mut stats = client
        .get_connection()
        .expect("a connection for the figures");
    let _: redis::RedisResult<()> = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(1000)
        .query(&mut stats);
    let _: redis::RedisResult<()> = redis::cmd("SLOWLOG").arg("RESET").query(&mut stats);
    let (calls_before, usec_before) = command_stats(&mut stats, "xreadgroup");
    let before = buckets(&persister);
    let issued_before = issued.load(Ordering::Relaxed);
    let started = Instant::now();
    let probe = {
        let client = client.clone();
        let probe_key = format!("{tag}-probe");
        std::thread::spawn(move || {
            let mut round_trips = Vec::new();
            let Ok(mut conn) = client.get_connection() else {
                return round_trips;
            };
            let mut i = 0u64;
            while started.elapsed() < hold {
                let sent = Instant::now();
                let _: redis::RedisResult<redis::Value> = redis::cmd("COUPON.ISSUE")
                    .arg(&probe_key)
                    .arg(format!("p{i}"))
                    .arg(1)
                    .query(&mut conn);
                round_trips.push(sent.elapsed());
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            round_trips
        })
    };
    let mut max_rss_kb = 0;
    while started.elapsed() < hold {
        max_rss_kb = max_rss_kb.max(persister.pid().map_or(0, rss_kb));
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = buckets(&persister);
    let (calls_after, usec_after) = command_stats(&mut stats, "xreadgroup");
    let mut round_trips = probe.join().unwrap_or_default();
    round_trips.sort();
    let cost = RedisCost {
        xreadgroup_calls: calls_after.saturating_sub(calls_before),
        xreadgroup_usec: usec_after.saturating_sub(usec_before),
        slow: slow_commands(&mut stats),
        probe_p99_ms: round_trips
            .get(round_trips.len() * 99 / 100)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0),
    };
    let achieved =
        (issued.load(Ordering::Relaxed) - issued_before) as f64 / started.elapsed().as_secs_f64();
    let _ = runtime.block_on(load);
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c);
            (le, count - earlier)
        })
        .collect();
    let events = delta.last().map_or(0.0, |b| b.1);
    let within = delta
        .iter()
        .find(|(le, _)| (*le - 0.25).abs() < 1e-9)
        .map_or(0.0, |(_, c)| *c);
    let total = coupons + issued.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    while rows() < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    Lag {
        shape,
        coupons,
        asked: rate,
        achieved,
        events,
        within_250ms: within / events.max(1.0),
        p50_ms: 1000.0 * quantile(&delta, 0.5),
        p99_ms: 1000.0 * quantile(&delta, 0.99),
        max_rss_kb,
        cost,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets = [
            (0.1, 50.0),
            (0.2, 90.0),
            (0.5, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((quantile(&buckets, 0.5) - 0.1).abs() < 1e-9);
        assert!((quantile(&buckets, 0.7) - 0.15).abs() < 1e-9);
        assert!((quantile(&buckets, 0.99) - 0.47).abs() < 1e-9);
    }
}
