//! `coupon-bench http`: the seeds' own test, end to end over HTTP. Redis with the module, the
//! persister into MariaDB and the example service are started; wrk opens 2,000 keep-alive
//! connections racing for 1,000 coupons; then the same server in `--ceiling` mode (a constant
//! JSON answer, no Redis) on the same port is driven the same way.

use super::service::HttpService;
use super::tools::{on_path, LoadRun, Wrk};
use crate::cpu::{cpu_ticks, redis_pid, ticks_per_second};
use crate::{assert_persisted, Flavor, Ledger, MariaDb, Persister, Server};
use std::time::Duration;

/// The best published figure of the HTTP services this project replaces (Spring + Redis,
/// Locust, 2,000 virtual users, 1,000 coupons, a 4-core app server).
const SEEDS_PER_SECOND: f64 = 996.0;
const SEEDS_P99_MS: f64 = 1_770.0;

#[derive(clap::Args, Debug, Clone)]
pub struct SpikeArgs {
    /// Concurrent keep-alive connections (the seeds' virtual users).
    #[arg(long, default_value_t = 2_000)]
    pub connections: usize,
    /// Coupons on sale.
    #[arg(long, default_value_t = 1_000)]
    pub stock: u64,
    /// Distinct users, picked at random for every request (so each clicks many times).
    #[arg(long, default_value_t = 2_000)]
    pub users: u64,
    /// Seconds each run lasts (the spike must make at least 200,000 requests).
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub wrk_threads: usize,
    /// The service's runtime worker threads (default: one per core).
    #[arg(long)]
    pub service_threads: Option<usize>,
    /// The service's connections to Redis.
    #[arg(long, default_value_t = 2)]
    pub redis_connections: usize,
    /// Tiny counts: checks that every part works, measures nothing.
    #[arg(long)]
    pub smoke: bool,
}

/// Runs the spike and the ceiling, prints the report; `false` if a proof failed.
pub fn run(args: &SpikeArgs) -> bool {
    let mut args = args.clone();
    if args.smoke {
        (args.connections, args.stock, args.users, args.duration) = (100, 100, 300, 2);
    }
    if !on_path("wrk") {
        eprintln!("coupon-bench http drives wrk: install it (apt-get install wrk)");
        return false;
    }
    // 2,000 connections are 2,000 descriptors in wrk and in the service.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cannot raise the open-files limit: {error}");
    }
    let server = Server::builder(Flavor::Redis).start();
    let database = MariaDb::start();
    let persister = Persister::start(&server.url(), &database.url(), &[]);
    let coupon = format!("spike:{}", std::process::id());
    let campaign = format!("{coupon}={}", args.stock);
    let (redis_url, connections) = (server.url(), args.redis_connections.to_string());
    let threads = args.service_threads.map(|t| t.to_string());
    let mut service_args = vec!["--campaign", &campaign, "--redis-url", &redis_url];
    service_args.extend(["--redis-connections", &connections]);
    service_args.extend(threads_flag(&threads));
    let mut service = HttpService::start(&service_args);
    let port = service.port();
    let url = format!("{}/coupons/{coupon}/issue", service.url());
    let wrk = Wrk {
        threads: args.wrk_threads,
        connections: args.connections,
        duration: Duration::from_secs(args.duration),
        users: args.users,
    };
    println!(
        "\n## HTTP spike: {} connections, {} users racing for {} coupons (wrk -t{} -c{} -d{}s)\n",
        args.connections, args.users, args.stock, args.wrk_threads, args.connections, args.duration
    );

    let redis_pid = redis_pid(&server);
    let (spike, spike_cpu) = measured(&wrk, &url, service.pid(), redis_pid);
    // The same spike once more against the sold-out coupon: by the service as it runs
    // (local answers), then by one sending every click to Redis.
    let sold_out = sold_out_run(&wrk, &url, &server, service.pid(), redis_pid);
    let stopped = service.terminate(Duration::from_secs(30));
    let mut every_click_args = service_args.clone();
    every_click_args.push("--no-local-answers");
    let every_click_service = HttpService::start_on(port, &every_click_args)
        .unwrap_or_else(|log| panic!("the service did not start again on port {port}:\n{log}"));
    let every_click = sold_out_run(&wrk, &url, &server, every_click_service.pid(), redis_pid);
    drop(every_click_service);
    let mut ceiling_args = vec!["--ceiling"];
    ceiling_args.extend(threads_flag(&threads));
    let ceiling_service = HttpService::start_on(port, &ceiling_args)
        .unwrap_or_else(|log| panic!("the ceiling did not start on port {port}:\n{log}"));
    let (ceiling, ceiling_cpu) = measured(&wrk, &url, ceiling_service.pid(), None);
    drop(ceiling_service);

    print_row("service (SDK, Redis)", &spike);
    print_row("ceiling (constant JSON)", &ceiling);
    println!(
        "ratio service/ceiling: {:.2}",
        spike.per_second() / ceiling.per_second()
    );
    println!(
        "CPU per request, µs: service process {:.1} (ceiling {:.1}), redis-server {:.1}, wrk {:.1} (ceiling {:.1})",
        spike_cpu.service, ceiling_cpu.service, spike_cpu.redis, spike_cpu.wrk, ceiling_cpu.wrk
    );
    println!(
        "seeds (Spring + Redis, Locust, 2,000 VUs, 4-core app server): {SEEDS_PER_SECOND:.0} req/s, p99 {SEEDS_P99_MS:.0} ms, 1,000 of 1,000 issued"
    );
    println!(
        "ours on 2 cores, load generator included: {:.1}x their req/s, p99 {:.1}x lower",
        spike.per_second() / SEEDS_PER_SECOND,
        SEEDS_P99_MS / spike.latency_ms("p99")
    );
    println!("answers: {}", spike.answers());
    println!("\nthe same spike against the sold-out coupon:");
    for (name, (run, cpu, issues)) in [
        ("local answers (default)", &sold_out),
        ("--no-local-answers", &every_click),
    ] {
        print_row(name, run);
        println!(
            "  {:<24} COUPON.ISSUE sent to Redis: {issues} ({:.3}% of requests); CPU per request, µs: service {:.1}, redis-server {:.1}",
            "",
            100.0 * *issues as f64 / run.requests.max(1) as f64,
            cpu.service,
            cpu.redis
        );
    }

    let mut ok = true;
    if spike.requests < 200_000 && !args.smoke {
        println!(
            "NOTE: {} requests, fewer than the 200,000 asked for: raise --duration",
            spike.requests
        );
    }
    if spike.socket_errors() + ceiling.socket_errors() > 0 {
        println!(
            "socket errors: service {:?}, ceiling {:?}",
            spike.errors, ceiling.errors
        );
    }
    if !matches!(stopped, Some(status) if status.success()) {
        println!("FAILED: the service did not stop cleanly on SIGTERM ({stopped:?})");
        ok = false;
    }
    match spike.check_issued(args.stock) {
        Ok(()) => {
            let mut ledger = Ledger::default();
            for (user, seq) in &spike.issued {
                ledger.rows.insert(
                    (coupon.as_bytes().to_vec(), *seq as i64),
                    (user.as_bytes().to_vec(), false),
                );
            }
            // Panics with the differences if the database or Redis disagree with the answers.
            assert_persisted(
                Some(&server),
                &database.url(),
                &ledger,
                Duration::from_secs(120),
                || persister.log(),
            );
            println!(
                "proof: {} answers 201 = stock {}; seqs 1..={} each once; {} distinct users; \
                 Redis holders = database rows = those answers (after the persister drained)",
                args.stock, args.stock, args.stock, args.stock
            );
            println!("OK: exactly the stock issued, no seq twice, no user twice, DB = Redis");
        }
        Err(problem) => {
            println!("FAILED: {problem}");
            ok = false;
        }
    }
    if args.smoke {
        println!("\nsmoke run: every part ran (figures at these counts mean nothing)");
    }
    ok
}

/// A spike against a coupon already sold out: the run, its CPU, and the `COUPON.ISSUE`
/// calls Redis saw meanwhile.
fn sold_out_run(
    wrk: &Wrk,
    url: &str,
    server: &Server,
    service: Option<u32>,
    redis: Option<u32>,
) -> (LoadRun, CpuPerRequest, u64) {
    let issues = || crate::figures::command_stats(&mut server.connect(), "coupon.issue").0;
    let before = issues();
    let (run, cpu) = measured(wrk, url, service, redis);
    (run, cpu, issues() - before)
}

/// CPU time each process spent per request during a run, in µs.
#[derive(Debug, Clone, Copy, Default)]
struct CpuPerRequest {
    service: f64,
    redis: f64,
    wrk: f64,
}

/// Runs wrk and measures the CPU the service, Redis and wrk itself used meanwhile: on a
/// machine they share, throughput says what they got, CPU per request what each costs.
fn measured(
    wrk: &Wrk,
    url: &str,
    service: Option<u32>,
    redis: Option<u32>,
) -> (LoadRun, CpuPerRequest) {
    let process =
        |pid: Option<u32>| pid.and_then(|pid| cpu_ticks(&format!("/proc/{pid}/stat"), 13));
    let (service0, redis0) = (process(service), process(redis));
    // wrk is a child we wait for: its CPU lands in our children's times.
    let children0 = cpu_ticks("/proc/self/stat", 15);
    let run = wrk.run(url);
    let per_request = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(before), Some(after)) => {
            after.saturating_sub(before) as f64 * 1e6
                / ticks_per_second()
                / run.requests.max(1) as f64
        }
        _ => f64::NAN,
    };
    let cpu = CpuPerRequest {
        service: per_request(service0, process(service)),
        redis: redis.map_or(0.0, |_| per_request(redis0, process(redis))),
        wrk: per_request(children0, cpu_ticks("/proc/self/stat", 15)),
    };
    (run, cpu)
}

fn threads_flag(threads: &Option<String>) -> Vec<&str> {
    match threads {
        Some(threads) => vec!["--threads", threads],
        None => Vec::new(),
    }
}

fn print_row(name: &str, run: &LoadRun) {
    println!(
        "  {name:<24} {:>8.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  requests {}",
        run.per_second(),
        run.latency_ms("p50"),
        run.latency_ms("p99"),
        run.latency_ms("max"),
        run.requests
    );
}
