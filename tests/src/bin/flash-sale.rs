//! The quickstart: one command runs a whole flash sale end to end on this machine.
//!
//! It starts a redis-server with the module (unless `--redis-url` is given; with `--cluster`, a
//! local 3-primary Redis Cluster and one coupon on each primary) and the persister writing to
//! SQLite (or to `--database-url`), lets simulated users with repeat clicks race for the
//! coupons through the SDK, then proves that Redis and the database agree.

use clap::Parser;
use coupon_layout::holders_in;
use coupon_sdk::{Backend, Coupons, LocalAnswers, LocalStats};
use coupon_tests::load::{drive, scramble, LoadReport, Tally};
use coupon_tests::{events_key, key_in_slot, query_rows, Cluster, Flavor, Persister, Server};
use indicatif::{ProgressBar, ProgressStyle};
use redis::aio::ConnectionLike;
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Runs a flash sale end to end: Redis with the module, the persister, the SDK")]
struct Args {
    /// Users racing; each clicks one to three times.
    #[arg(long, default_value_t = 20_000)]
    users: u64,
    /// Coupons on sale.
    #[arg(long, default_value_t = 1_000)]
    stock: u64,
    /// Use this Redis (with the module loaded) instead of starting one.
    #[arg(long, env = "COUPON_REDIS_URL")]
    redis_url: Option<String>,
    /// Persist into this database (mysql://… or sqlite://…) instead of a temporary SQLite file.
    #[arg(long, env = "COUPON_DATABASE_URL")]
    database_url: Option<String>,
    /// Connections the simulated service uses (on a cluster: the cluster client's, one per
    /// primary).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Start a local Redis Cluster of three primaries instead, sell one coupon (each with
    /// `--stock`) on each primary through the SDK's cluster client, and prove each.
    #[arg(long, conflicts_with = "redis_url")]
    cluster: bool,
    /// Send every click to Redis: no local answers of sold-out clicks and repeats.
    #[arg(long)]
    no_local_answers: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(missing) = check_prerequisites(args.redis_url.is_none()) {
        eprintln!("cannot run the flash sale: {missing}");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("the flash sale failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// What a fresh machine may lack, as the one line `.cargo/preflight` prints: cargo runs that
/// check before a fresh build, and a binary already built asks it again here. `need_redis`:
/// the sale starts redis-server with the module, which it builds (bindgen needs libclang).
fn check_prerequisites(need_redis: bool) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cargo/preflight");
    if !need_redis || !script.exists() {
        return Ok(());
    }
    match Command::new(&script).args(["check", "quickstart"]).output() {
        Ok(out) if !out.status.success() => {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
        _ => Ok(()),
    }
}

/// Where the sale runs: one server (started here, or given), or a local cluster.
enum Target {
    One {
        url: String,
        _server: Option<Server>,
    },
    Cluster(Cluster),
}

impl Target {
    fn start(args: &Args) -> Target {
        if args.cluster {
            return Target::Cluster(Cluster::start(Flavor::Redis));
        }
        let server = args
            .redis_url
            .is_none()
            .then(|| Server::builder(Flavor::Redis).start());
        let url = args
            .redis_url
            .clone()
            .unwrap_or_else(|| server.as_ref().map(Server::url).unwrap_or_default());
        Target::One {
            url,
            _server: server,
        }
    }

    /// The URL the persister is given (on a cluster, any node: it learns the others).
    fn url(&self) -> String {
        match self {
            Target::One { url, .. } => url.clone(),
            Target::Cluster(cluster) => cluster.nodes[0].url(),
        }
    }

    /// The coupons on sale: one on a single server; on a cluster, one in a slot of each
    /// primary, so every primary sells.
    fn coupons(&self, prefix: &str) -> Vec<String> {
        match self {
            Target::One { .. } => vec![prefix.to_string()],
            Target::Cluster(cluster) => (0..cluster.nodes.len())
                .map(|node| {
                    let slot = *cluster.slots_of(node)[0].start();
                    key_in_slot(&format!("{prefix}:{node}"), slot)
                })
                .collect(),
        }
    }

    fn connection(&self) -> redis::RedisResult<Box<dyn redis::ConnectionLike>> {
        Ok(match self {
            Target::One { url, .. } => {
                Box::new(redis::Client::open(url.as_str())?.get_connection()?)
            }
            Target::Cluster(cluster) => {
                Box::new(redis::cluster::ClusterClient::new(cluster.urls())?.get_connection()?)
            }
        })
    }
}

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let workdir = tempfile::Builder::new()
        .prefix("coupon-flash-sale-")
        .tempdir()?;
    println!(
        "starting {} with the coupon module, and the persister …",
        if args.cluster {
            "a Redis Cluster of three primaries"
        } else {
            "redis-server"
        }
    );
    let target = Target::start(args);
    let redis_url = target.url();
    let database_url = args.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            workdir.path().join("coupons.db").display()
        )
    });
    let prefix = format!("flash-sale:{}", std::process::id());
    let coupons = target.coupons(&prefix);
    let pattern = if args.cluster {
        format!("{prefix}:*")
    } else {
        String::from_utf8_lossy(&events_key(prefix.as_bytes())).into_owned()
    };
    let mut persister =
        Persister::start(&redis_url, &database_url, &[("stream-pattern", &pattern)]);
    println!(
        "redis: {redis_url}\ndatabase: {database_url}\ncoupons: {}\n",
        coupons.join(", ")
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (report, tally, attempts, local) = runtime.block_on(async {
        match &target {
            Target::One { url, .. } => {
                let client = redis::Client::open(url.as_str())?;
                let local = match args.no_local_answers {
                    false => Some(LocalAnswers::connect(url.as_str()).await?),
                    true => None,
                };
                let mut clients = Vec::new();
                for _ in 0..args.connections.max(1) {
                    let coupons = Coupons::with_backend(
                        client.get_multiplexed_async_connection().await?,
                        Backend::Module,
                    );
                    clients.push(answering_locally(coupons, &local));
                }
                let (report, tally, attempts) = race(args, clients, &coupons).await;
                Ok::<_, Box<dyn std::error::Error>>((report, tally, attempts, local))
            }
            Target::Cluster(cluster) => {
                // Every task shares one cluster connection, as a service would.
                let shared = coupon_sdk::Cluster::connect(cluster.urls()).await?;
                let local = match args.no_local_answers {
                    false => Some(LocalAnswers::connect_cluster(&shared, cluster.urls()).await?),
                    true => None,
                };
                let coupons_on = Coupons::with_backend(shared, Backend::Module);
                let clients = vec![answering_locally(coupons_on, &local)];
                let (report, tally, attempts) = race(args, clients, &coupons).await;
                Ok((report, tally, attempts, local))
            }
        }
    })?;

    println!(
        "\n{} attempts by {} users for {} coupons{}",
        attempts,
        args.users,
        args.stock * coupons.len() as u64,
        if coupons.len() > 1 {
            format!(" ({} on each of {} primaries)", args.stock, coupons.len())
        } else {
            String::new()
        }
    );
    println!(
        "{:.0} attempts/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        report.per_second(),
        report.latency_ms(0.5),
        report.latency_ms(0.99),
        report.max_ms()
    );
    for (outcome, count) in tally.iter() {
        println!("  {outcome:<30} {count:>8}");
    }
    match local.as_ref().map(LocalAnswers::stats) {
        Some(LocalStats {
            answered_locally,
            sent_to_server,
            ..
        }) => println!(
            "answered by the SDK itself (sold out, repeats): {answered_locally} of {attempts} \
             clicks; sent to Redis: {sent_to_server}"
        ),
        None => println!("every click went to Redis (--no-local-answers)"),
    }

    let mut conn = target.connection()?;
    let mut proven = true;
    println!();
    for coupon in &coupons {
        let fields: u64 = redis::cmd("HLEN").arg(coupon).query(conn.as_mut())?;
        proven &= prove(coupon, holders_in(fields), args.stock, &database_url);
    }
    let stopped = persister.terminate(Duration::from_secs(10)).is_some();
    println!(
        "{}",
        if proven {
            "OK: no coupon over-issued, none lost, no user twice"
        } else {
            "MISMATCH: see the figures above"
        }
    );
    if !stopped {
        println!(
            "the persister did not stop within 10 s:\n{}",
            persister.log()
        );
    }
    Ok(proven && stopped)
}

fn answering_locally<C>(coupons: Coupons<C>, local: &Option<LocalAnswers>) -> Coupons<C>
where
    C: ConnectionLike + Clone + Send + Sync,
{
    match local {
        Some(local) => coupons.with_local_answers(local.clone()),
        None => coupons,
    }
}

/// The sale: every user clicks once, a third of them twice, a ninth three times, in a
/// scrambled order; user `u` wants coupon `u % coupons`. Returns the load report, the
/// outcomes counted, and the attempts made.
async fn race<C>(
    args: &Args,
    clients: Vec<Coupons<C>>,
    coupons: &[String],
) -> (LoadReport, BTreeMap<&'static str, u64>, u64)
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    let clicks: Vec<u64> = (0..args.users)
        .flat_map(|u| std::iter::repeat_n(u, 1 + usize::from(u % 3 == 0) + usize::from(u % 9 == 0)))
        .collect();
    let mut order: Vec<u64> = (0..clicks.len() as u64).collect();
    order.sort_by_key(|i| scramble(*i));
    let attempts = clicks.len() as u64;
    let progress = ProgressBar::new(attempts).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} attempts  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let tally = Tally::default();
    let (clients, clicks, order, counted, coupons, stock) = (
        Arc::new(clients),
        Arc::new(clicks),
        Arc::new(order),
        tally.clone(),
        Arc::new(coupons.to_vec()),
        args.stock,
    );
    let bar = progress.clone();
    let report = drive(
        attempts,
        args.connections.max(1) * 64,
        move |i| {
            let client = clients[i as usize % clients.len()].clone();
            let user = clicks[order[i as usize] as usize];
            let coupon = coupons[(user % coupons.len() as u64) as usize].clone();
            let tally = counted.clone();
            async move {
                let outcome = client.issue(&coupon, format!("user-{user}"), stock).await;
                tally.count(&outcome, "already issued (repeat click)")
            }
        },
        move |done| bar.set_position(done),
    )
    .await;
    progress.finish();
    (report, tally.counts(), attempts)
}

/// Waits for the persister to store the coupon's `holders`, then prints and checks the
/// proof: holders = rows = stock, each user once, seqs 1..=stock each once.
fn prove(coupon: &str, holders: u64, stock: u64, database_url: &str) -> bool {
    let count = |sql: &str| -> u64 {
        query_rows(database_url, sql)
            .ok()
            .and_then(|rows| rows.first().and_then(|row| row.try_get::<i64, _>(0).ok()))
            .unwrap_or(0) as u64
    };
    // The coupon key is plain text, stored as text where the database has it (SQLite) and as
    // bytes (MySQL's VARBINARY): a quoted literal matches both.
    let where_coupon = format!("WHERE coupon = '{coupon}' AND revoked_at_ms IS NULL");
    let waiting = ProgressBar::new_spinner().with_message(format!(
        "waiting for the persister to store {coupon}'s issuances"
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows_sql = format!("SELECT COUNT(*) FROM coupon_issuance {where_coupon}");
    while count(&rows_sql) < holders && Instant::now() < deadline {
        waiting.tick();
        std::thread::sleep(Duration::from_millis(100));
    }
    waiting.finish_and_clear();
    let rows = count(&rows_sql);
    let users = count(&format!(
        "SELECT COUNT(DISTINCT user) FROM coupon_issuance {where_coupon}"
    ));
    let seqs = count(&format!(
        "SELECT COUNT(DISTINCT seq) FROM coupon_issuance {where_coupon} AND seq BETWEEN 1 AND {stock}"
    ));
    println!("proof ({coupon}): holders in Redis {holders} = rows in the database {rows} = stock {stock}; distinct users {users}; seqs 1..={stock} each once: {seqs}");
    holders == stock && rows == holders && users == rows && seqs == rows
}
