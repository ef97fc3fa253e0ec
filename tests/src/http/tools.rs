//! The load tools a user would reach for, run as processes with the scripts shipped in
//! `examples/http-service/load/`: `wrk` (C, with a Lua script) and Locust (Python). Each run
//! returns the answers by status and the (user, seq) of every coupon issued.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn load_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/http-service/load")
}

/// `examples/http-service/load/issue.lua`
pub fn wrk_script() -> PathBuf {
    load_dir().join("issue.lua")
}

/// `examples/http-service/load/locustfile.py`
pub fn locust_file() -> PathBuf {
    load_dir().join("locustfile.py")
}

/// Whether `name` is on PATH.
pub fn on_path(name: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|dir| Path::new(dir).join(name).is_file())
}

/// Whether a test needing `tool` can run: yes if installed; if not, under CI (`CI=true`) the
/// test fails, elsewhere it says how to install the tool and is skipped.
pub fn tool_or_skip(tool: &str, install: &str) -> bool {
    if on_path(tool) {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |ci| ci != "true"),
        "{tool} is not installed, and CI must run this test: {install}"
    );
    eprintln!("SKIPPED: {tool} is not installed ({install})");
    false
}

/// What a load run saw.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoadRun {
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// (user, seq) of every 201.
    pub issued: Vec<(String, u64)>,
    /// wrk only: requests completed.
    #[serde(default)]
    pub requests: u64,
    /// wrk only: the run's length, µs.
    #[serde(default)]
    pub duration_us: u64,
    /// wrk only: socket errors by kind (connect, read, write, timeout).
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// wrk only: latency quantiles from its HDR histogram, µs (p50, p90, p99, p999, max, mean).
    #[serde(default)]
    pub latency_us: BTreeMap<String, f64>,
    /// The tool's own output.
    #[serde(skip)]
    pub output: String,
}

impl LoadRun {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6).max(1e-9)
    }

    /// A latency from wrk's histogram, in ms (`p50`, `p99`, `max`, …).
    pub fn latency_ms(&self, which: &str) -> f64 {
        self.latency_us.get(which).copied().unwrap_or(f64::NAN) / 1_000.0
    }

    pub fn socket_errors(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn answers(&self) -> String {
        self.statuses
            .iter()
            .map(|(status, count)| format!("{status}={count}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Exactly `stock` coupons issued: as many 201s, seqs 1..=stock each once, no user twice.
    pub fn check_issued(&self, stock: u64) -> Result<(), String> {
        let created = self.statuses.get(&201).copied().unwrap_or(0);
        if created != stock || self.issued.len() as u64 != stock {
            return Err(format!(
                "{created} answers 201 and {} issued seqs seen, stock {stock}",
                self.issued.len()
            ));
        }
        let seqs: BTreeSet<u64> = self.issued.iter().map(|(_, seq)| *seq).collect();
        if seqs != (1..=stock).collect() {
            return Err(format!("the seqs are not 1..={stock} each once: {seqs:?}"));
        }
        let users: BTreeSet<&str> = self.issued.iter().map(|(u, _)| u.as_str()).collect();
        if users.len() as u64 != stock {
            return Err(format!(
                "{} distinct users for {stock} coupons",
                users.len()
            ));
        }
        Ok(())
    }
}

/// How to drive `wrk`.
#[derive(Debug, Clone)]
pub struct Wrk {
    pub threads: usize,
    pub connections: usize,
    pub duration: Duration,
    /// Distinct user ids the script picks from at random.
    pub users: u64,
}

impl Wrk {
    /// Runs wrk against `url` (the issue route) with the shipped script.
    pub fn run(&self, url: &str) -> LoadRun {
        let dir = tempfile::Builder::new()
            .prefix("coupon-wrk-")
            .tempdir()
            .expect("a temp dir for the wrk report");
        let report = dir.path().join("report.json");
        let output = Command::new("wrk")
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.duration.as_secs().max(1)))
            .args(["--timeout", "30s", "-s"])
            .arg(wrk_script())
            .arg(url)
            .arg("--")
            .arg(self.users.to_string())
            .arg(&report)
            .output()
            .expect("wrk runs (apt-get install wrk)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "wrk failed:\n{text}");
        let json = std::fs::read_to_string(&report)
            .unwrap_or_else(|e| panic!("wrk wrote no report ({e}):\n{text}"));
        let mut run: LoadRun = serde_json::from_str(&json)
            .unwrap_or_else(|e| panic!("wrk's report is not what the script writes ({e}): {json}"));
        run.output = text;
        run
    }
}

/// Runs Locust headless against `host` for `run_time`, `shoppers` simulated users picking
/// among `users` ids, buying `coupon`. Panics if Locust fails (it exits non-zero when any
/// answer was other than 200, 201 or 409).
pub fn run_locust(
    host: &str,
    coupon: &str,
    users: u64,
    shoppers: usize,
    run_time: Duration,
) -> LoadRun {
    let dir = tempfile::Builder::new()
        .prefix("coupon-locust-")
        .tempdir()
        .expect("a temp dir for the Locust report");
    let report = dir.path().join("report.json");
    let output = Command::new("locust")
        .arg("-f")
        .arg(locust_file())
        .args(["--headless", "--only-summary", "--host", host])
        .args([
            "--users",
            &shoppers.to_string(),
            "--spawn-rate",
            &shoppers.to_string(),
        ])
        .args(["--run-time", &format!("{}s", run_time.as_secs().max(1))])
        .env("COUPON", coupon)
        .env("COUPON_USERS", users.to_string())
        .env("COUPON_LOCUST_REPORT", &report)
        .current_dir(dir.path())
        .output()
        .expect("locust runs (pip install locust)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "locust failed:\n{text}");
    let json = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("locust wrote no report ({e}):\n{text}"));
    let mut run: LoadRun = serde_json::from_str(&json).unwrap_or_else(|e| {
        panic!("Locust's report is not what the locustfile writes ({e}): {json}")
    });
    run.output = text;
    run
}
