//! `coupon-bench cluster`: the flash-sale mix through the SDK over many coupons, on one node
//! and then on a local 3-primary Redis Cluster, in one run. Every server and the load
//! generator share this machine's cores, so the cluster's figure is what three primaries
//! sharing them give, reported per primary next to the single node's.

use coupon_layout::holders_in;
use coupon_sdk::{Backend, Coupons};
use coupon_tests::cpu::{cpu_ticks, redis_pid, ticks_per_second};
use coupon_tests::load::{drive, scramble, LoadReport, Tally};
use coupon_tests::{Cluster, Flavor, Server};
use redis::aio::ConnectionLike;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Attempts in each run (users are a fifth of that).
    #[arg(long, default_value_t = 1_000_000)]
    attempts: u64,
    /// Coupons the attempts are spread over (the cluster spreads them over its primaries).
    #[arg(long, default_value_t = 1_000)]
    coupons: u64,
    /// Stock of each coupon.
    #[arg(long, default_value_t = 10)]
    stock: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Connections of the single-node run, and cluster clients of the cluster run (each
    /// with a connection to every primary).
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

/// One run of the mix: what the load generator saw and what the servers hold afterwards.
struct SaleRun {
    report: LoadReport,
    outcomes: BTreeMap<&'static str, u64>,
    /// `COUPON.ISSUE` calls each server answered.
    calls_per_server: Vec<u64>,
    /// CPU per attempt, in µs: the load generator (this process, SDK included), and all
    /// the servers together.
    client_cpu: f64,
    servers_cpu: f64,
    over_issued: u64,
}

/// Runs both, prints them and their ratio; false if a coupon was over-issued or a request
/// failed.
pub fn run(args: &ClusterArgs) -> bool {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "# flash sale over {} coupons (stock {} each): one node, then a 3-primary cluster\n",
        args.coupons, args.stock
    );
    let single = Server::builder(Flavor::Redis).start();
    let clock = Cpu::start(&[&single]);
    let one = runtime.block_on(async {
        let client = redis::Client::open(single.url()).expect("a valid URL");
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            let conn = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect to the single node");
            clients.push(Coupons::with_backend(conn, Backend::Module));
        }
        sale(args, "one", clients).await
    });
    let mut one = clock.stop(one);
    one = finish(one, &[&single], args.stock);
    drop(single);

    let cluster = Cluster::start(Flavor::Redis);
    let nodes: Vec<&Server> = cluster.nodes.iter().collect();
    let clock = Cpu::start(&nodes);
    let three = runtime.block_on(async {
        let client = redis::cluster::ClusterClient::new(cluster.urls()).expect("cluster URLs");
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            let conn = client
                .get_async_connection()
                .await
                .expect("connect to the cluster");
            clients.push(Coupons::with_backend(conn, Backend::Module));
        }
        sale(args, "three", clients).await
    });
    let three = finish(clock.stop(three), &nodes, args.stock);

    println!(
        "| run | attempts/s | per primary | p50 ms | p99 ms | max ms | CPU µs per attempt: client, servers | COUPON.ISSUE per server |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---|");
    for (name, run) in [("one node", &one), ("cluster, 3 primaries", &three)] {
        let primaries = run.calls_per_server.len() as f64;
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2}, {:.2} | {:?} |",
            run.report.per_second(),
            run.report.per_second() / primaries,
            run.report.latency_ms(0.5),
            run.report.latency_ms(0.99),
            run.report.max_ms(),
            run.client_cpu,
            run.servers_cpu,
            run.calls_per_server
        );
    }
    println!(
        "\ncluster / one node: {:.2} in all, {:.2} per primary",
        three.report.per_second() / one.report.per_second(),
        three.report.per_second() / 3.0 / one.report.per_second()
    );
    let mut proven = true;
    for (name, run) in [("one node", &one), ("cluster", &three)] {
        println!("outcomes ({name}): {:?}", run.outcomes);
        if run.over_issued > 0 || run.report.errors > 0 {
            println!(
                "MISMATCH ({name}): {} coupons over their stock, {} failed requests",
                run.over_issued, run.report.errors
            );
            proven = false;
        }
    }
    if proven {
        println!("OK: no coupon over its stock, no request failed, on either");
    }
    proven
}

/// The mix: user `scramble(i) % users` clicks coupon `scramble(user) % coupons`, so each user
/// sticks to one coupon and clicks it about five times.
async fn sale<C>(args: &ClusterArgs, run: &'static str, clients: Vec<Coupons<C>>) -> SaleRun
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let users = (args.attempts / 5).max(1);
    let (coupons, stock) = (args.coupons.max(1), args.stock);
    let clients = Arc::new(clients);
    let tally = Tally::default();
    let counted = tally.clone();
    let report = drive(
        args.attempts,
        args.in_flight,
        move |i| {
            let coupons_c = clients[(i as usize) % clients.len()].clone();
            let user = scramble(i) % users;
            let coupon = coupon_name(run, scramble(user) % coupons);
            let tally = counted.clone();
            async move {
                let outcome = coupons_c
                    .issue(&coupon, format!("user-{user}"), stock)
                    .await;
                tally.count(&outcome, "already issued")
            }
        },
        |_| {},
    )
    .await;
    let outcomes = tally.counts();
    SaleRun {
        report,
        outcomes,
        calls_per_server: Vec::new(),
        client_cpu: f64::NAN,
        servers_cpu: f64::NAN,
        over_issued: 0,
    }
}

fn coupon_name(run: &str, index: u64) -> String {
    format!("bench:{run}:{index}")
}

/// Reads, from each server, the calls it answered and every coupon it holds, counting the
/// coupons with more holders than `stock`.
fn finish(mut run: SaleRun, servers: &[&Server], stock: u64) -> SaleRun {
    for server in servers {
        let mut conn = server.connect();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut conn)
            .unwrap_or_default();
        run.calls_per_server.push(issue_calls(&stats));
        let coupons: Vec<String> = redis::cmd("KEYS")
            .arg("bench:*")
            .query(&mut conn)
            .unwrap_or_default();
        for coupon in coupons.iter().filter(|key| !key.contains(":events")) {
            let fields: u64 = redis::cmd("HLEN").arg(coupon).query(&mut conn).unwrap_or(0);
            run.over_issued += u64::from(holders_in(fields) > stock);
        }
    }
    run
}

/// `calls=` of `cmdstat_coupon.issue` in an `INFO commandstats` reply.
fn issue_calls(stats: &str) -> u64 {
    stats
        .lines()
        .find(|line| line.starts_with("cmdstat_coupon.issue:"))
        .and_then(|line| line.split(['=', ',']).nth(1))
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// CPU time of this process and of the servers, from the start of a run.
struct Cpu {
    client: Option<u64>,
    servers: Vec<Option<u32>>,
    servers_before: Option<u64>,
}

impl Cpu {
    fn start(servers: &[&Server]) -> Cpu {
        let servers: Vec<Option<u32>> = servers.iter().map(|server| redis_pid(server)).collect();
        Cpu {
            client: cpu_ticks("/proc/self/stat", 13),
            servers_before: servers_ticks(&servers),
            servers,
        }
    }

    /// Puts the CPU per attempt since `start` into `run`.
    fn stop(self, mut run: SaleRun) -> SaleRun {
        let per_attempt = |before: Option<u64>, after: Option<u64>| match (before, after) {
            (Some(before), Some(after)) => {
                after.saturating_sub(before) as f64 * 1e6
                    / ticks_per_second()
                    / run.report.requests.max(1) as f64
            }
            _ => f64::NAN,
        };
        run.client_cpu = per_attempt(self.client, cpu_ticks("/proc/self/stat", 13));
        run.servers_cpu = per_attempt(self.servers_before, servers_ticks(&self.servers));
        run
    }
}

fn servers_ticks(pids: &[Option<u32>]) -> Option<u64> {
    pids.iter()
        .map(|pid| cpu_ticks(&format!("/proc/{}/stat", (*pid)?), 13))
        .sum()
}
