//! The benchmark: in one run against one server, the module against the SDK's Lua backend,
//! a seeds-style Lua script and the plain-command ceilings; a flash sale through the SDK; and
//! the persister against a raw multi-row INSERT; and, as `coupon-bench http`, the example HTTP
//! service under a spike against its constant-answer ceiling; and, as `coupon-bench cluster`,
//! the flash sale on one node against a 3-primary cluster. See BENCHMARKS.md.

use clap::Parser;
use coupon_layout::holders_in;
use coupon_sdk::{Backend, Coupons, Outcome};
use coupon_tests::load::{drive, scramble, LoadReport};
use coupon_tests::{events_key, persister_path, query_rows, Flavor, MariaDb, Persister, Server};
use redis::aio::MultiplexedConnection;
use sqlx::Row;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "coupon-bench/cluster.rs"]
mod cluster;
#[path = "coupon-bench/lag.rs"]
mod lag;
#[path = "coupon-bench/local.rs"]
mod local;
#[path = "coupon-bench/replica_ack.rs"]
mod replica_ack;

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
    /// Holders of the coupon the rejecting runs click on (and members of the plain
    /// structures they are compared with).
    #[arg(long, default_value_t = 10_000)]
    holders: u64,
    /// Attempts in the flash-sale mix (users are a fifth of that, stock a hundredth).
    #[arg(long, default_value_t = 1_000_000)]
    attempts: u64,
    /// Requests in flight in the flash sale through the SDK (spread over the connections).
    #[arg(long, default_value_t = 256)]
    sale_in_flight: usize,
    /// Events the persister drains into MariaDB (0 skips that part).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Only the persister's parts (the drain and the lag at a steady rate).
    #[arg(long)]
    persister_only: bool,
    /// Events per second of the persister's lag run (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    lag_rate: u64,
    /// Seconds the steady rate is held (after a warm-up of a fifth of that).
    #[arg(long, default_value_t = 30)]
    lag_seconds: u64,
    /// Numbers of coupons the lag run spreads the events over, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    lag_coupons: Vec<u64>,
    /// Events per second to one live coupon in the hot-coupon lag runs (0 skips them).
    #[arg(long, default_value_t = 2_000)]
    lag_hot_rate: u64,
    /// Numbers of dormant coupons around the live one, one hot-coupon run each.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    lag_hot_coupons: Vec<u64>,
    /// Tiny counts: checks that every part works, measures nothing.
    #[arg(long)]
    smoke: bool,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// The seeds' test over HTTP: the example service under a 2,000-connection spike (wrk),
    /// against the same server answering a constant body.
    Http(coupon_tests::http::spike::SpikeArgs),
    /// The flash-sale mix over many coupons on one node and on a local 3-primary cluster,
    /// with the throughput per primary.
    Cluster(cluster::ClusterArgs),
    /// Issuing with replica acknowledgement (WAIT 1) against without, on a primary with one
    /// replica that it starts itself.
    ReplicaAck(replica_ack::ReplicaAckArgs),
    /// A national drop on one coupon through the SDK, with and without local answers
    /// (sell-out, then revokes at several rates).
    Local(local::LocalArgs),
}

fn main() {
    let mut args = Args::parse();
    let proven = match &args.mode {
        Some(Mode::Http(spike)) => Some(coupon_tests::http::spike::run(spike)),
        Some(Mode::Cluster(sale)) => Some(cluster::run(sale)),
        Some(Mode::ReplicaAck(ack)) => Some(replica_ack::run(ack)),
        Some(Mode::Local(drop)) => Some(local::run(drop)),
        None => None,
    };
    if let Some(proven) = proven {
        std::process::exit(if proven { 0 } else { 1 });
    }
    if args.smoke {
        (args.requests, args.attempts, args.events, args.holders) = (2_000, 5_000, 3_000, 500);
        (args.lag_rate, args.lag_seconds, args.lag_coupons) = (2_000, 5, vec![100]);
        (args.lag_hot_rate, args.lag_hot_coupons) = (500, vec![200]);
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
    if !args.persister_only {
        commands_and_sale(&runtime, &bench, &url, &args);
    }

    if args.events > 0 {
        println!("\n## persister into MariaDB\n");
        let drain = persister_vs_insert(&runtime, &bench, &url, args.events);
        println!(
            "persister: {:.0} events/s; raw multi-row INSERT: {:.0} rows/s (before {:.0}, \
             after {:.0}); ratio {:.2}; persister memory (RSS) at most {:.1} MB while draining",
            drain.persisted,
            drain.ceiling(),
            drain.ceilings[0],
            drain.ceilings[1],
            drain.persisted / drain.ceiling(),
            drain.max_rss_kb as f64 / 1024.0
        );
    }
    if args.lag_rate > 0 && args.lag_seconds > 0 {
        println!("\n## persister lag at a steady rate\n");
        for coupons in &args.lag_coupons {
            let lag = lag::at_steady_rate(
                &runtime,
                &bench,
                &url,
                args.lag_rate,
                *coupons,
                Duration::from_secs(args.lag_seconds),
                lag::Shape::Spread,
            );
            println!("{lag}");
        }
    }
    if args.lag_hot_rate > 0 && args.lag_seconds > 0 {
        println!("\n## persister lag: one live coupon among dormant ones\n");
        for coupons in &args.lag_hot_coupons {
            let lag = lag::at_steady_rate(
                &runtime,
                &bench,
                &url,
                args.lag_hot_rate,
                *coupons,
                Duration::from_secs(args.lag_seconds),
                lag::Shape::OneHot,
            );
            println!("{lag}");
        }
    }
    if args.smoke {
        println!("\nsmoke run: every part ran (figures at these counts mean nothing)");
    }
}

/// The command benchmarks and the flash sale through the SDK.
fn commands_and_sale(runtime: &tokio::runtime::Runtime, bench: &Bench, url: &str, args: &Args) {
    for (mode, in_flight) in [("pipelined", args.in_flight), ("unpipelined", 1)] {
        println!(
            "\n## {mode}: {} connections x {in_flight} in flight (redis-benchmark)\n",
            args.connections
        );
        let load = CommandLoad {
            url,
            connections: args.connections,
            pipeline: in_flight,
            requests: args.requests,
        };
        print_group(
            "issuing (fresh users, stock unlimited)",
            &bench.issuing(&load),
        );
        let sold_out = format!("sold out ({} holders, a non-holder clicks)", args.holders);
        print_group(&sold_out, &bench.sold_out(&load, args.holders));
        let duplicate = format!(
            "duplicate ({} holders, a holder clicks again)",
            args.holders
        );
        print_group(&duplicate, &bench.duplicate(&load, args.holders));
    }

    if args.attempts == 0 {
        return;
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
    println!(
        "memory per holder: {:.1} bytes with its issue event in the stream, {:.1} bytes once the persister has trimmed it",
        memory.with_events, memory.trimmed
    );
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

/// One scenario's rows, then the module's rate against each other row.
fn print_group(title: &str, rows: &[(String, CommandReport)]) {
    println!("{title}:");
    for (name, report) in rows {
        println!(
            "  {name:<24} {:>10.0} ops/s   p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
            report.per_second, report.p50_ms, report.p99_ms, report.errors
        );
    }
    let module = rows.first().map_or(f64::NAN, |(_, r)| r.per_second);
    let ratios: Vec<String> = rows
        .iter()
        .skip(1)
        .map(|(name, report)| format!("module/{name} {:.2}", module / report.per_second))
        .collect();
    println!("  {}", ratios.join("   "));
}

struct Bench {
    url: String,
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
            url: url.to_string(),
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

    /// A fresh user each time, no stock limit: the module, the SDK's script, the seeds script,
    /// and `SADD` (the bare write of a member) — each on its own key, growing from empty.
    fn issuing(&self, load: &CommandLoad<'_>) -> Vec<(String, CommandReport)> {
        let keys = self.keys("issue");
        let user = Clicks::new_users();
        let limit = i64::MAX.to_string();
        vec![
            (
                "COUPON.ISSUE".into(),
                load.run(&["COUPON.ISSUE", &keys.module, user.arg, &limit], &user),
            ),
            (
                "SDK Lua backend".into(),
                load.run(&keys.sdk_issue(&self.sdk_sha, user.arg, &limit), &user),
            ),
            (
                "seeds-style Lua".into(),
                load.run(&keys.seeds_issue(&self.seeds_sha, user.arg, &limit), &user),
            ),
            (
                "SADD".into(),
                load.run(&["SADD", &keys.set, user.arg], &user),
            ),
        ]
    }

    /// The stock is gone: a coupon with `holders` holders at its limit, clicked by users who
    /// are not among them (most of a flash sale's requests). The ceilings are the bare
    /// lookups of a missing member in a set, and of a missing field in a hash, of that size.
    fn sold_out(&self, load: &CommandLoad<'_>, holders: u64) -> Vec<(String, CommandReport)> {
        let keys = self.keys("sold-out");
        self.fill(&keys, holders);
        self.compare_reads(load, &keys, &Clicks::non_holders(), holders)
    }

    /// A holder clicks again (a retry, a double click): the module answers their seq. The
    /// ceilings are the bare lookups of a present member and a present field.
    fn duplicate(&self, load: &CommandLoad<'_>, holders: u64) -> Vec<(String, CommandReport)> {
        let keys = self.keys("duplicate");
        self.fill(&keys, holders);
        self.compare_reads(load, &keys, &Clicks::holder(holders), holders)
    }

    fn compare_reads(
        &self,
        load: &CommandLoad<'_>,
        keys: &BenchKeys,
        user: &Clicks,
        holders: u64,
    ) -> Vec<(String, CommandReport)> {
        let limit = holders.to_string();
        vec![
            (
                "COUPON.ISSUE".into(),
                load.run(&["COUPON.ISSUE", &keys.module, user.arg, &limit], user),
            ),
            (
                "SDK Lua backend".into(),
                load.run(&keys.sdk_issue(&self.sdk_sha, user.arg, &limit), user),
            ),
            (
                "seeds-style Lua".into(),
                load.run(&keys.seeds_issue(&self.seeds_sha, user.arg, &limit), user),
            ),
            (
                "SISMEMBER".into(),
                load.run(&["SISMEMBER", &keys.set, user.arg], user),
            ),
            (
                "HGET".into(),
                load.run(&["HGET", &keys.hash, user.arg], user),
            ),
        ]
    }

    fn keys(&self, tag: &str) -> BenchKeys {
        let module = format!("bench:{}:module:{tag}", self.run);
        let sdk = format!("bench:{}:sdk:{tag}", self.run);
        let seeds = format!("{{bench:{}:seeds:{tag}}}", self.run);
        BenchKeys {
            sdk_events: String::from_utf8_lossy(&events_key(sdk.as_bytes())).into_owned(),
            module,
            sdk,
            seeds_set: format!("{seeds}:set"),
            seeds_queue: format!("{seeds}:queue"),
            set: format!("bench:{}:set:{tag}", self.run),
            hash: format!("bench:{}:hash:{tag}", self.run),
        }
    }

    /// Gives every structure of `keys` the same `holders` users, named as redis-benchmark
    /// names them (`user-` and twelve digits), each the way its own path would.
    fn fill(&self, keys: &BenchKeys, holders: u64) {
        let limit = i64::MAX.to_string();
        let mut conn = redis::Client::open(self.url.as_str())
            .and_then(|client| client.get_connection())
            .expect("a connection to fill the coupons");
        for chunk in (0..holders).collect::<Vec<_>>().chunks(1_000) {
            let mut pipe = redis::pipe();
            for i in chunk {
                let user = format!("user-{i:012}");
                let mut add = |args: &[&str]| {
                    let command = pipe.cmd(args[0]);
                    args[1..].iter().for_each(|arg| {
                        command.arg(*arg);
                    });
                    command.ignore();
                };
                add(&["COUPON.ISSUE", &keys.module, &user, &limit]);
                add(&keys.sdk_issue(&self.sdk_sha, &user, &limit));
                add(&keys.seeds_issue(&self.seeds_sha, &user, &limit));
                add(&["SADD", &keys.set, &user]);
                add(&["HSET", &keys.hash, &user, "1"]);
            }
            pipe.query::<()>(&mut conn).expect("filling the coupons");
        }
    }

    /// `attempts` clicks from `attempts / 5` users (random, so most click several times) for
    /// `attempts / 100` coupons, through the SDK over all connections.
    async fn flash_sale(
        &self,
        attempts: u64,
        workers: usize,
    ) -> (LoadReport, BTreeMap<String, u64>, Memory) {
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
        let events = events_key(coupon.as_bytes());
        let fields: u64 = redis::cmd("HLEN")
            .arg(&coupon)
            .query_async(&mut conn)
            .await
            .unwrap_or(1);
        let holders = holders_in(fields).max(1) as f64;
        let with_events = coupon_bytes(&mut conn, &coupon, &events).await as f64 / holders;
        let _: i64 = redis::cmd("XTRIM")
            .arg(&events)
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap_or(0);
        let trimmed = coupon_bytes(&mut conn, &coupon, &events).await as f64 / holders;
        let tally = tally.lock().map(|t| t.clone()).unwrap_or_default();
        (
            report,
            tally,
            Memory {
                with_events,
                trimmed,
            },
        )
    }
}

/// The keys one scenario runs on: the module's coupon, the SDK script's coupon and events,
/// the seeds script's set and queue, and the plain set and hash of the ceilings.
struct BenchKeys {
    module: String,
    sdk: String,
    sdk_events: String,
    seeds_set: String,
    seeds_queue: String,
    set: String,
    hash: String,
}

impl BenchKeys {
    fn sdk_issue<'a>(&'a self, sha: &'a str, user: &'a str, limit: &'a str) -> [&'a str; 8] {
        [
            "EVALSHA",
            sha,
            "2",
            &self.sdk,
            &self.sdk_events,
            "issue",
            user,
            limit,
        ]
    }

    fn seeds_issue<'a>(&'a self, sha: &'a str, user: &'a str, limit: &'a str) -> [&'a str; 7] {
        [
            "EVALSHA",
            sha,
            "2",
            &self.seeds_set,
            &self.seeds_queue,
            user,
            limit,
        ]
    }
}

/// Who clicks: the user argument (with redis-benchmark's `__rand_int__`) and the range of its
/// random number.
struct Clicks {
    arg: &'static str,
    keyspace: u64,
}

impl Clicks {
    /// A new user on (almost) every request.
    fn new_users() -> Clicks {
        Clicks {
            arg: "user-__rand_int__",
            keyspace: 100_000_000_000,
        }
    }

    /// Users who are not among the filled-in holders (named `other-…`).
    fn non_holders() -> Clicks {
        Clicks {
            arg: "other-__rand_int__",
            ..Clicks::new_users()
        }
    }

    /// One of the first `holders` users, who all hold the coupon.
    fn holder(holders: u64) -> Clicks {
        Clicks {
            arg: "user-__rand_int__",
            keyspace: holders,
        }
    }
}

/// Bytes per holder of a coupon (`MEMORY USAGE` of its hash and its stream).
struct Memory {
    with_events: f64,
    trimmed: f64,
}

async fn coupon_bytes(conn: &mut MultiplexedConnection, coupon: &str, events: &[u8]) -> i64 {
    let mut bytes = 0;
    for key in [coupon.as_bytes(), events] {
        let usage: Option<i64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(conn)
            .await
            .unwrap_or(None);
        bytes += usage.unwrap_or(0);
    }
    bytes
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
    /// Runs `command`; `__rand_int__` in an argument becomes a random twelve-digit number
    /// below the keyspace of `clicks`.
    fn run(&self, command: &[impl AsRef<str>], clicks: &Clicks) -> CommandReport {
        let command: Vec<&str> = command.iter().map(AsRef::as_ref).collect();
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
                &clicks.keyspace.to_string(),
            ])
            .args([
                "-c",
                &self.connections.to_string(),
                "-P",
                &self.pipeline.to_string(),
                "-n",
                &self.requests.to_string(),
            ])
            .args(&command)
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

/// What the drain measured.
struct Drain {
    persisted: f64,
    /// The raw INSERT before and after the drain (the machine's load can change meanwhile).
    ceilings: [f64; 2],
    max_rss_kb: u64,
}

impl Drain {
    fn ceiling(&self) -> f64 {
        (self.ceilings[0] + self.ceilings[1]) / 2.0
    }
}

/// Issues `events` coupons over 50 coupons, lets the persister drain them into a fresh MariaDB,
/// and inserts the same rows with plain multi-row INSERTs just before and just after: events/s
/// for each, and the persister's largest resident memory while draining.
fn persister_vs_insert(
    runtime: &tokio::runtime::Runtime,
    bench: &Bench,
    url: &str,
    events: u64,
) -> Drain {
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
    let status = Command::new(persister_path())
        .args(["migrate", "--database-url", &database_url])
        .status()
        .expect("coupon-persister migrate");
    assert!(status.success(), "migrating failed");
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
    let before = raw_insert(runtime, &database, &rows, "ceiling_before");

    let started = Instant::now();
    let mut persister = Persister::start(
        url,
        &database_url,
        &[
            ("stream-pattern", &format!("{run}:*:events*")),
            ("trim-interval-ms", "1000"),
        ],
    );
    let count = |table: &str| {
        query_rows(&database_url, &format!("SELECT COUNT(*) FROM {table}"))
            .ok()
            .and_then(|rows| rows.first().and_then(|r| r.try_get::<i64, _>(0).ok()))
            .unwrap_or(0) as u64
    };
    // Timed from the first committed row, so start-up does not count.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let mut stored = 0;
    let mut max_rss_kb = 0;
    while stored < events {
        max_rss_kb = max_rss_kb.max(persister.pid().map_or(0, lag::rss_kb));
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
    let after = raw_insert(runtime, &database, &rows, "ceiling_after");
    Drain {
        persisted,
        ceilings: [before, after],
        max_rss_kb,
    }
}

/// Rows/s of plain multi-row INSERTs (1,000 rows a statement, one transaction each, one
/// connection) of `rows` into a fresh copy of the table.
fn raw_insert(
    runtime: &tokio::runtime::Runtime,
    database: &MariaDb,
    rows: &[(String, i64, String, i64)],
    table: &str,
) -> f64 {
    database.execute(&format!(
        "CREATE TABLE coupon.{table} LIKE coupon.coupon_issuance"
    ));
    runtime.block_on(async {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&database.url())
            .await
            .expect("connect to MariaDB");
        let started = Instant::now();
        for chunk in rows.chunks(1_000) {
            let mut insert = sqlx::QueryBuilder::new(format!(
                "INSERT INTO {table} (coupon, seq, user, issued_at_ms, issue_entry_id) "
            ));
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
        rows.len() as f64 / started.elapsed().as_secs_f64()
    })
}
