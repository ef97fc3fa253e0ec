//! The quickstart: one command runs a whole flash sale end to end on this machine.
//!
//! It starts a redis-server with the module (unless `--redis-url` is given) and the persister
//! writing to SQLite (or to `--database-url`), lets simulated users with repeat clicks race for
//! the coupons through the SDK, then proves that Redis and the database agree.

use clap::Parser;
use coupon_layout::holders_in;
use coupon_sdk::{Backend, Coupons, Outcome};
use coupon_tests::load::{drive, scramble};
use coupon_tests::{events_key, query_rows, Flavor, Persister, Server};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::Row;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};
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
    /// Connections the simulated service uses.
    #[arg(long, default_value_t = 8)]
    connections: usize,
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

fn run(args: &Args) -> Result<bool, Box<dyn std::error::Error>> {
    let workdir = tempfile::Builder::new()
        .prefix("coupon-flash-sale-")
        .tempdir()?;
    println!("starting redis-server with the coupon module, and the persister …");
    let server = args
        .redis_url
        .is_none()
        .then(|| Server::builder(Flavor::Redis).start());
    let redis_url = args
        .redis_url
        .clone()
        .unwrap_or_else(|| server.as_ref().map(Server::url).unwrap_or_default());
    let database_url = args.database_url.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}?mode=rwc",
            workdir.path().join("coupons.db").display()
        )
    });
    let coupon = format!("flash-sale:{}", std::process::id());
    let stream = String::from_utf8_lossy(&events_key(coupon.as_bytes())).into_owned();
    let mut persister = Persister::start(&redis_url, &database_url, &[("stream-pattern", &stream)]);
    println!("redis: {redis_url}\ndatabase: {database_url}\ncoupon: {coupon}\n");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Every user clicks once, a third click twice, a ninth three times, in a scrambled order.
    let clicks: Vec<u64> = (0..args.users)
        .flat_map(|u| std::iter::repeat_n(u, 1 + usize::from(u % 3 == 0) + usize::from(u % 9 == 0)))
        .collect();
    let mut order: Vec<u64> = (0..clicks.len() as u64).collect();
    order.sort_by_key(|i| scramble(*i));
    let attempts = clicks.len() as u64;

    let progress = ProgressBar::new(attempts).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} attempts  {per_sec}  {elapsed}",
    )?);
    let tally: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    let report = runtime.block_on(async {
        let client = redis::Client::open(redis_url.as_str())?;
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            clients.push(Coupons::with_backend(
                client.get_multiplexed_async_connection().await?,
                Backend::Module,
            ));
        }
        let (clients, clicks, order, tally, coupon, stock) = (
            Arc::new(clients),
            Arc::new(clicks),
            Arc::new(order),
            tally.clone(),
            coupon.clone(),
            args.stock,
        );
        let bar = progress.clone();
        let report = drive(
            attempts,
            args.connections.max(1) * 64,
            move |i| {
                let coupons = clients[i as usize % clients.len()].clone();
                let user = format!("user-{}", clicks[order[i as usize] as usize]);
                let (tally, coupon) = (tally.clone(), coupon.clone());
                async move {
                    let outcome = coupons.issue(&coupon, &user, stock).await;
                    let label = match outcome {
                        Ok(Outcome::Issued { .. }) => "issued",
                        Ok(Outcome::AlreadyIssued { .. }) => "already issued (repeat click)",
                        Ok(Outcome::SoldOut) => "sold out",
                        Ok(Outcome::NotStarted | Outcome::Ended) => "outside the window",
                        Err(_) => "error",
                    };
                    *tally
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(label)
                        .or_default() += 1;
                    label != "error"
                }
            },
            move |done| bar.set_position(done),
        )
        .await;
        Ok::<_, redis::RedisError>(report)
    })?;
    progress.finish();

    println!(
        "\n{} attempts by {} users for {} coupons",
        attempts, args.users, args.stock
    );
    println!(
        "{:.0} attempts/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        report.per_second(),
        report.latency_ms(0.5),
        report.latency_ms(0.99),
        report.max_ms()
    );
    for (outcome, count) in tally.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!("  {outcome:<30} {count:>8}");
    }

    let mut conn = redis::Client::open(redis_url.as_str())?.get_connection()?;
    let holders = holders_in(redis::cmd("HLEN").arg(&coupon).query(&mut conn)?);
    let count = |sql: &str| -> u64 {
        query_rows(&database_url, sql)
            .ok()
            .and_then(|rows| rows.first().and_then(|row| row.try_get::<i64, _>(0).ok()))
            .unwrap_or(0) as u64
    };
    // The coupon key is plain text, stored as text where the database has it (SQLite) and as
    // bytes (MySQL's VARBINARY): a quoted literal matches both.
    let where_coupon = format!("WHERE coupon = '{coupon}' AND revoked_at_ms IS NULL");
    let waiting = ProgressBar::new_spinner()
        .with_message("waiting for the persister to store every issuance");
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&format!(
        "SELECT COUNT(*) FROM coupon_issuance {where_coupon}"
    )) < holders
        && Instant::now() < deadline
    {
        waiting.tick();
        std::thread::sleep(Duration::from_millis(100));
    }
    waiting.finish_and_clear();
    let rows = count(&format!(
        "SELECT COUNT(*) FROM coupon_issuance {where_coupon}"
    ));
    let users = count(&format!(
        "SELECT COUNT(DISTINCT user) FROM coupon_issuance {where_coupon}"
    ));
    let seqs = count(&format!(
        "SELECT COUNT(DISTINCT seq) FROM coupon_issuance {where_coupon} AND seq BETWEEN 1 AND {}",
        args.stock
    ));
    let stopped = persister.terminate(Duration::from_secs(10)).is_some();

    let proven = holders == args.stock && rows == holders && users == rows && seqs == rows;
    println!("\nproof: holders in Redis {holders} = rows in the database {rows} = stock {}; distinct users {users}; seqs 1..={} each once: {seqs}", args.stock, args.stock);
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
