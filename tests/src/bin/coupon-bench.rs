//! The benchmark: in one run against one server, the module against the SDK's Lua backend,
//! a seeds-style Lua script and the plain-command ceilings; a flash sale through the SDK; and
//! the persister against a raw multi-row INSERT; and, as `coupon-bench http`, the example HTTP
//! service under a spike against its constant-answer ceiling. See BENCHMARKS.md.

use clap::Parser;
use coupon_sdk::{Backend, Coupons, Outcome};
use coupon_tests::load::{drive, scramble, LoadReport};
use coupon_tests::{query_rows, Flavor, MariaDb, Persister, Server};
use redis::aio::MultiplexedConnection;
use sqlx::Row;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The state of the art this project replaces: SISMEMBER/SCARD/SADD plus a queue, in Lua.
const SEEDS_SCRIPT: &str = "\
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('XADD', KEYS[2], '*', 'user', ARGV[1])
return 1";

#[derive(Parser, Debug)]
#[command(about = "Measures COUPON.ISSUE against Lua and the plain-command ceilings, in one run")]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// Use this server (it must have the module loaded) instead of starting one.
    #[arg(long, env = "COUPON_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// Connections for the pipelined runs.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Requests in flight per connection in the pipelined runs.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    /// Requests per command benchmark.
    #[arg(long, default_value_t = 400_000)]
    requests: u64,
    /// Attempts in the flash-sale mix (users are a fifth of that, stock a hundredth).
    #[arg(long, default_value_t = 1_000_000)]
    attempts: u64,
    /// Requests in flight in the flash sale through the SDK (spread over the connections).
    #[arg(long, default_value_t = 256)]
    sale_in_flight: usize,
    /// Events the persister drains into MariaDB (0 skips that part).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Tiny counts: checks that every part works, measures nothing.
    #[arg(long)]
    smoke: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// The seeds' test over HTTP: the example service under a 2,000-connection spike (wrk),
    /// against the same server answering a constant body.
    Http(coupon_tests::http::spike::SpikeArgs),
}

fn main() {
    let mut args = Args::parse();
    if let Some(Mode::Http(spike)) = &args.mode {
        std::process::exit(if coupon_tests::http::spike::run(spike) {
            0
        } else {
            1
        });
    }
    if args.smoke {
        (args.requests, args.attempts, args.events) = (2_000, 5_000, 3_000);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let started_server = args.redis_url.is_none().then(|| {
        Server::builder(Flavor::Redis)
            .arg("maxclients", "2000")
            .start()
    });
    let url = args
        .redis_url
        .clone()
        .unwrap_or_else(|| started_server.as_ref().map(Server::url).unwrap_or_default());
    describe_machine(&url);

    let bench = runtime.block_on(Bench::connect(&url, args.connections));
    for (mode, in_flight) in [("pipelined", args.in_flight), ("unpipelined", 1)] {
        println!(
            "\n## {mode}: {} connections x {in_flight} in flight (redis-benchmark)\n",
            args.connections
        );
        let load = CommandLoad {
            url: &url,
            connections: args.connections,
            pipeline: in_flight,
            requests: args.requests,
        };
        print_group("issuing (fresh users)", &bench.issuing(&load), "SADD");
        print_group(
            "rejecting (stock gone)",
            &bench.rejecting(&load),
            "SISMEMBER",
        );
    }

    println!("\n## flash sale through the SDK\n");
    let (sale, outcomes, memory) =
        runtime.block_on(bench.flash_sale(args.attempts, args.sale_in_flight));
    println!(
        "{} attempts from {} users for {} coupons: {:.0} attempts/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.attempts,
        args.attempts / 5,
        args.attempts / 100,
        sale.per_second(),
        sale.latency_ms(0.5),
        sale.latency_ms(0.99),
        sale.max_ms()
    );
    println!("outcomes: {outcomes:?}");
    println!("memory per holder after the stream is trimmed: {memory:.1} bytes");

    if args.events > 0 {
        println!("\n## persister into MariaDB\n");
        let (persisted, ceiling) = persister_vs_insert(&runtime, &bench, &url, args.events);
        println!("persister: {persisted:.0} events/s; raw multi-row INSERT: {ceiling:.0} rows/s; ratio {:.2}", persisted / ceiling);
    }
    if args.smoke {
        println!("\nsmoke run: every part ran (figures at these counts mean nothing)");
    }
}

fn describe_machine(url: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let version = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("redis_version:"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    println!("# coupon benchmark\n\nmachine: {cores} cores, {cpu}; server {version}; client and server share the machine");
}

fn print_group(title: &str, rows: &[(&str, CommandReport)], ceiling: &str) {
    println!("{title}:");
    let rate = |name: &str| {
        rows.iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, r)| r.per_second)
    };
    for (name, report) in rows {
        println!(
            "  {name:<22} {:>10.0} ops/s   p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
            report.per_second, report.p50_ms, report.p99_ms, report.errors
        );
    }
    let module = rate("COUPON.ISSUE");
    println!(
        "  module/seeds-Lua {:.2}x   module/SDK-Lua {:.2}x   module/{ceiling} {:.2}",
        module / rate("seeds-style Lua"),
        module / rate("SDK Lua backend"),
        module / rate(ceiling)
    );
}

struct Bench {
    connections: Vec<MultiplexedConnection>,
    sdk_sha: String,
    seeds_sha: String,
    run: String,
}

impl Bench {
    async fn connect(url: &str, count: usize) -> Bench {
        let client = redis::Client::open(url).expect("a valid Redis URL");
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let mut connections = Vec::new();
        for _ in 0..count.max(1) {
            connections.push(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .expect("connect"),
            );
        }
        let mut conn = connections[0].clone();
        let load = |source: &'static str| redis::cmd("SCRIPT").arg("LOAD").arg(source).to_owned();
        let sdk_sha: String = load(coupon_sdk::SCRIPT_SOURCE)
            .query_async(&mut conn)
            .await
            .expect("SCRIPT LOAD");
        let seeds_sha: String = load(SEEDS_SCRIPT)
            .query_async(&mut conn)
            .await
            .expect("SCRIPT LOAD");
        let run = format!("{}", std::process::id());
        Bench {
            connections,
            sdk_sha,
            seeds_sha,
            run,
        }
    }

    /// Runs `command(i)` `total` times from `workers` tasks spread over the connections.
    async fn measure(
        &self,
        total: u64,
        workers: usize,
        command: impl Fn(u64) -> redis::Cmd + Send + Sync + 'static,
    ) -> LoadReport {
        let connections = Arc::new(self.connections.clone());
        drive(
            total,
            workers,
            move |i| {
                let mut conn = connections[(i as usize) % connections.len()].clone();
                let command = command(i);
                async move { command.query_async::<redis::Value>(&mut conn).await.is_ok() }
            },
            |_| {},
        )
        .await
    }

    /// Four ways to record a fresh user: the module, the SDK's script, the seeds script, SADD.
    fn issuing(&self, load: &CommandLoad<'_>) -> Vec<(&'static str, CommandReport)> {
        self.compare(load, "issue", &i64::MAX.to_string(), "SADD")
    }

    /// The same with no stock left (limit 0), against SISMEMBER.
    fn rejecting(&self, load: &CommandLoad<'_>) -> Vec<(&'static str, CommandReport)> {
        self.compare(load, "reject", "0", "SISMEMBER")
    }

    fn compare(
        &self,
        load: &CommandLoad<'_>,
        tag: &str,
        limit: &str,
        ceiling: &'static str,
    ) -> Vec<(&'static str, CommandReport)> {
        let user = "user-__rand_int__";
        let module_key = format!("bench:{}:module:{tag}", self.run);
        let sdk = format!("bench:{}:sdk:{tag}", self.run);
        let (sdk_holders, sdk_meta, sdk_events) = (
            format!("{{{sdk}}}:holders"),
            format!("{{{sdk}}}:meta"),
            format!("{{{sdk}}}:events"),
        );
        let seeds = format!("{{bench:{}:seeds:{tag}}}", self.run);
        let (seeds_set, seeds_queue) = (format!("{seeds}:set"), format!("{seeds}:queue"));
        let plain_key = format!("bench:{}:plain", self.run);
        vec![
            (
                "COUPON.ISSUE",
                load.run(&["COUPON.ISSUE", &module_key, user, limit]),
            ),
            (
                "SDK Lua backend",
                load.run(&[
                    "EVALSHA",
                    &self.sdk_sha,
                    "3",
                    &sdk_holders,
                    &sdk_meta,
                    &sdk_events,
                    "issue",
                    &sdk,
                    user,
                    limit,
                ]),
            ),
            (
                "seeds-style Lua",
                load.run(&[
                    "EVALSHA",
                    &self.seeds_sha,
                    "2",
                    &seeds_set,
                    &seeds_queue,
                    user,
                    limit,
                ]),
            ),
            (ceiling, load.run(&[ceiling, &plain_key, user])),
        ]
    }

    /// `attempts` clicks from `attempts / 5` users (random, so most click several times) for
    /// `attempts / 100` coupons, through the SDK over all connections.
    async fn flash_sale(
        &self,
        attempts: u64,
        workers: usize,
    ) -> (LoadReport, BTreeMap<String, u64>, f64) {
        let coupon = format!("bench:{}:sale", self.run);
        let (users, stock) = ((attempts / 5).max(1), (attempts / 100).max(1));
        let clients: Arc<Vec<_>> = Arc::new(
            self.connections
                .iter()
                .map(|c| Coupons::with_backend(c.clone(), Backend::Module))
                .collect(),
        );
        let tally: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
        let (coupon_c, tally_c) = (coupon.clone(), tally.clone());
        let report = drive(
            attempts,
            workers,
            move |i| {
                let coupons = clients[(i as usize) % clients.len()].clone();
                let user = format!("user-{}", scramble(i) % users);
                let (coupon, tally) = (coupon_c.clone(), tally_c.clone());
                async move {
                    let outcome = coupons.issue(&coupon, &user, stock).await;
                    let label = match &outcome {
                        Ok(Outcome::Issued { .. }) => "issued".to_string(),
                        Ok(Outcome::AlreadyIssued { .. }) => "already issued".to_string(),
                        Ok(other) => format!("{other:?}"),
                        Err(e) => format!("error: {e}"),
                    };
                    *tally
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(label)
                        .or_default() += 1;
                    outcome.is_ok()
                }
            },
            |_| {},
        )
        .await;
        let mut conn = self.connections[0].clone();
        let prefix = format!("{{{coupon}}}");
        let _: i64 = redis::cmd("XTRIM")
            .arg(format!("{prefix}:events"))
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        let mut bytes = 0i64;
        for suffix in ["holders", "meta", "events"] {
            let usage: Option<i64> = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(format!("{prefix}:{suffix}"))
                .arg("SAMPLES")
                .arg(0)
                .query_async(&mut conn)
                .await
                .unwrap_or(None);
            bytes += usage.unwrap_or(0);
        }
        let holders: i64 = redis::cmd("HLEN")
            .arg(format!("{prefix}:holders"))
            .query_async(&mut conn)
            .await
            .unwrap_or(1);
        let tally = tally.lock().map(|t| t.clone()).unwrap_or_default();
        (report, tally, bytes as f64 / holders.max(1) as f64)
    }
}

/// One command measured by `redis-benchmark` (C, one thread, far cheaper per request than any
/// async client), so the server, not the client, is what runs out of CPU.
struct CommandLoad<'a> {
    url: &'a str,
    connections: usize,
    pipeline: usize,
    requests: u64,
}

struct CommandReport {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

impl CommandLoad<'_> {
    /// Runs `command`; `__rand_int__` in an argument becomes a random 11-digit number, so every
    /// request names a fresh user.
    fn run(&self, command: &[&str]) -> CommandReport {
        let info =
            redis::IntoConnectionInfo::into_connection_info(self.url).expect("a valid Redis URL");
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
            other => panic!("redis-benchmark needs a TCP address, not {other:?}"),
        };
        let output = Command::new("redis-benchmark")
            .args([
                "-h",
                &host,
                "-p",
                &port.to_string(),
                "--csv",
                "-r",
                "100000000000",
            ])
            .args([
                "-c",
                &self.connections.to_string(),
                "-P",
                &self.pipeline.to_string(),
                "-n",
                &self.requests.to_string(),
            ])
            .args(command)
            .output()
            .expect("redis-benchmark runs (apt-get install redis-tools)");
        let csv = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<f64> = csv
            .lines()
            .last()
            .unwrap_or_default()
            .split("\",\"")
            .skip(1)
            .map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN))
            .collect();
        let errors =
            u64::from(!output.status.success() || fields.len() < 7 || !output.stderr.is_empty());
        if errors > 0 {
            eprintln!(
                "{command:?}: {csv}{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let field = |i: usize| fields.get(i).copied().unwrap_or(f64::NAN);
        CommandReport {
            per_second: field(0),
            p50_ms: field(3),
            p99_ms: field(5),
            errors,
        }
    }
}

/// Issues `events` coupons over 50 coupons, lets the persister drain them into a fresh MariaDB,
/// then inserts the same rows with plain multi-row INSERTs: events/s for each.
fn persister_vs_insert(
    runtime: &tokio::runtime::Runtime,
    bench: &Bench,
    url: &str,
    events: u64,
) -> (f64, f64) {
    let coupons = 50;
    let run = format!("persist:{}", bench.run);
    let workers = bench.connections.len() * 16;
    let key = run.clone();
    let load = runtime.block_on(bench.measure(events, workers, move |i| {
        redis::cmd("COUPON.ISSUE")
            .arg(format!("{key}:{}", i % coupons))
            .arg(format!("user-{i}"))
            .arg(i64::MAX)
            .to_owned()
    }));
    assert_eq!(load.errors, 0, "issuing the events failed");

    let database = MariaDb::start();
    let database_url = database.url();
    let started = Instant::now();
    let mut persister = Persister::start(
        url,
        &database_url,
        &[
            ("stream-pattern", &format!("{{{run}:*}}:events")),
            ("trim-interval-ms", "1000"),
        ],
    );
    let count = |table: &str| {
        query_rows(&database_url, &format!("SELECT COUNT(*) FROM {table}"))
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r.try_get::<i64, _>(0).ok()))
            .unwrap_or(0) as u64
    };
    // Timed from the first committed row, so start-up and migrations do not count.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let mut stored = 0;
    while stored < events {
        assert!(
            Instant::now() < deadline && persister.is_running(),
            "the persister stalled:\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
        stored = count("coupon_issuance");
        if first.is_none() && stored > 0 {
            first = Some((Instant::now(), stored));
        }
    }
    let (since, already) = first.unwrap_or((started, 0));
    let persisted = (events - already) as f64 / since.elapsed().as_secs_f64().max(1e-3);
    persister.terminate(Duration::from_secs(10));

    database.execute("CREATE TABLE coupon.issuance_ceiling LIKE coupon.coupon_issuance");
    let rows: Vec<(String, i64, String, i64)> = (0..events)
        .map(|i| {
            (
                format!("{run}:{}", i % coupons),
                (i / coupons + 1) as i64,
                format!("user-{i}"),
                1_795_000_000_000 + i as i64,
            )
        })
        .collect();
    let ceiling = runtime.block_on(async {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&database_url)
            .await
            .expect("connect to MariaDB");
        let started = Instant::now();
        for chunk in rows.chunks(1_000) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO issuance_ceiling (coupon, seq, user, issued_at_ms, issue_entry_id) ",
            );
            insert.push_values(chunk, |mut row, (coupon, seq, user, ts)| {
                row.push_bind(coupon.as_bytes())
                    .push_bind(seq)
                    .push_bind(user.as_bytes())
                    .push_bind(ts)
                    .push_bind(format!("{ts}-0"));
            });
            let mut tx = pool.begin().await.expect("begin");
            insert.build().execute(&mut *tx).await.expect("insert");
            tx.commit().await.expect("commit");
        }
        events as f64 / started.elapsed().as_secs_f64()
    });
    (persisted, ceiling)
}
