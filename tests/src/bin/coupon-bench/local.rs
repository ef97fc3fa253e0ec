//! `coupon-bench local`: a national drop on one coupon through the SDK, with and without local
//! answers, in one run. Each round sells the coupon out to fresh users, then keeps clicking as
//! fresh users while a revoker gives coupons back at a set rate (each freed coupon goes to
//! the next click, through the server); the server's commands and CPU are read off it.

use coupon_sdk::{AnsweredBy, Backend, Coupons, LocalAnswers, Outcome};
use coupon_tests::cpu::{cpu_ticks, redis_pid, ticks_per_second};
use coupon_tests::figures::command_stats;
use coupon_tests::{Flavor, Server};
use hdrhistogram::Histogram;
use redis::aio::MultiplexedConnection;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct LocalArgs {
    /// The coupon's stock (its holders once sold out).
    #[arg(long, default_value_t = 1_000)]
    stock: u64,
    /// Seconds of clicking after each sell-out.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Multiplexed connections the clicks are spread over.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Clicks in flight.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Revokes per second after the sell-out, one round (of each mode) per rate.
    #[arg(long, value_delimiter = ',', default_value = "0,10,100")]
    revoke_rates: Vec<u64>,
    /// Holder counts of the view-size table (memory and first fill).
    #[arg(long, value_delimiter = ',', default_value = "1000,1000000")]
    view_holders: Vec<u64>,
    /// Tiny counts: checks that it works, measures nothing.
    #[arg(long)]
    smoke: bool,
}

/// What one round measured, after the sell-out.
struct Round {
    clicks: u64,
    elapsed: Duration,
    issue_calls: u64,
    commands: u64,
    cpu_seconds: f64,
    local: Histogram<u64>,
    /// Local answers from a view that was current, and from one the click waited for.
    current: Histogram<u64>,
    after_fill: Histogram<u64>,
    server: Histogram<u64>,
    first_local: Option<Duration>,
    back_to_current: Histogram<u64>,
    revokes: u64,
    over_issued: bool,
}

pub fn run(args: &LocalArgs) -> bool {
    let (stock, seconds, rates, view_holders) = if args.smoke {
        (50, 1, vec![0, 10], vec![100])
    } else {
        let rates = args.revoke_rates.clone();
        (args.stock, args.seconds, rates, args.view_holders.clone())
    };
    let server = Server::builder(Flavor::Redis)
        .arg("maxclients", "4000")
        .start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "## a national drop on one coupon: local answers vs every click to the server\n\n\
         one redis-server with the module on this machine; a coupon of {stock} sold out to \
         fresh users, then {seconds} s of clicks by fresh users ({} in flight over {} \
         connections) while coupons are revoked at the rate shown (each freed coupon goes to \
         the next click). Latencies in µs, split by who answered.\n",
        args.in_flight, args.connections
    );
    println!(
        "| revokes/s | mode | clicks/s | server COUPON.ISSUE/s | share to server | server commands/s | server CPU | local p50 / p99 (from a current view · after waiting for a fill, share) | server p50 / p99 | sell-out → first local | revoke → current again p50 / max |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut proven = true;
    for rate in rates {
        let mut per_mode = Vec::new();
        for local in [false, true] {
            let coupon = format!("drop:{rate}:{}", if local { "local" } else { "server" });
            let round =
                runtime.block_on(round(&server, args, &coupon, stock, seconds, rate, local));
            proven &= !round.over_issued;
            print_row(rate, local, &round);
            per_mode.push(round.clicks as f64 / round.elapsed.as_secs_f64());
        }
        println!(
            "|  | ratio | {:.1}× | | | | | | | | |",
            per_mode[1] / per_mode[0].max(1e-9)
        );
    }
    println!(
        "\n### one process' view of a sold-out coupon\n\n\
         the first fill after the sell-out (tracked `HSCAN`s of 5,000, the first with `TIME`): the view's heap \
         bytes, the time from the server's SoldOut to a current view, and the server's time for \
         the `HSCAN`s (commandstats) — which every process pays once per fill.\n\n\
         | holders | view bytes | bytes per holder | first fill | server time of the fill |\n\
         |---|---|---|---|---|"
    );
    for holders in view_holders {
        runtime.block_on(view_size(&server, holders));
    }
    proven
}

/// Fills a coupon with `holders` directly (as issues would leave it), then times one view.
async fn view_size(server: &Server, holders: u64) {
    let coupon = format!("view:{holders}");
    let mut conn = server.connect();
    for chunk in (0..holders).collect::<Vec<_>>().chunks(10_000) {
        let mut hset = redis::cmd("HSET");
        hset.arg(&coupon);
        for n in chunk {
            hset.arg(format!("user-{n:08}")).arg(n + 1);
        }
        let _: redis::RedisResult<u64> = hset.query(&mut conn);
    }
    let _: redis::RedisResult<u64> = redis::cmd("HSET")
        .arg(&coupon)
        .arg(coupon_layout::LAST_SEQ_FIELD)
        .arg(holders)
        .query(&mut conn);
    let options = coupon_sdk::LocalOptions {
        max_holders: u64::MAX,
        ..coupon_sdk::LocalOptions::default()
    };
    let local = options.connect(server.url()).await.expect("tracking");
    let client = clients(server, 1, Some(&local)).await.remove(0);
    let (calls, usec) = command_stats(&mut conn, "hscan");
    let asked = Instant::now();
    let _ = client.issue(&coupon, "late", holders).await;
    while !local.is_current(&coupon) && asked.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let filled = asked.elapsed();
    let (calls_after, usec_after) = command_stats(&mut conn, "hscan");
    let bytes = local.stats().view_bytes;
    println!(
        "| {holders} | {:.1} MB | {:.0} | {:.1} ms | {:.1} ms ({} calls) |",
        bytes as f64 / 1e6,
        bytes as f64 / holders.max(1) as f64,
        filled.as_secs_f64() * 1_000.0,
        (usec_after - usec) as f64 / 1_000.0,
        calls_after - calls
    );
    let _: redis::RedisResult<u64> = redis::cmd("DEL").arg(&coupon).query(&mut conn);
}

fn print_row(rate: u64, local: bool, round: &Round) {
    let secs = round.elapsed.as_secs_f64();
    let quantiles = |h: &Histogram<u64>| {
        if h.is_empty() {
            "–".to_string()
        } else {
            format!(
                "{} / {}",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99)
            )
        }
    };
    let current = if round.back_to_current.is_empty() {
        "–".to_string()
    } else {
        format!(
            "{:.1} / {:.1} ms",
            round.back_to_current.value_at_quantile(0.5) as f64 / 1_000.0,
            round.back_to_current.max() as f64 / 1_000.0
        )
    };
    println!(
        "| {rate} | {} | {:.0} | {:.0} | {:.2}% | {:.0} | {:.0}% | {} | {} | {} | {current} |",
        if local {
            "local answers"
        } else {
            "every click to the server"
        },
        round.clicks as f64 / secs,
        round.issue_calls as f64 / secs,
        100.0 * round.issue_calls as f64 / round.clicks.max(1) as f64,
        round.commands as f64 / secs,
        100.0 * round.cpu_seconds / secs,
        local_quantiles(round, &quantiles),
        quantiles(&round.server),
        round.first_local.map_or("–".to_string(), |d| format!(
            "{:.1} ms",
            d.as_secs_f64() * 1_000.0
        )),
    );
    if round.revokes > 0 {
        eprintln!("({} revokes in the round)", round.revokes);
    }
}

fn local_quantiles(round: &Round, quantiles: &dyn Fn(&Histogram<u64>) -> String) -> String {
    if round.local.is_empty() {
        return "–".to_string();
    }
    let waited = 100.0 * round.after_fill.len() as f64 / round.local.len() as f64;
    format!(
        "{} ({} · {}, {waited:.2}%)",
        quantiles(&round.local),
        quantiles(&round.current),
        quantiles(&round.after_fill)
    )
}

async fn clients(
    server: &Server,
    count: usize,
    local: Option<&LocalAnswers>,
) -> Vec<Coupons<MultiplexedConnection>> {
    let client = server.client();
    let mut clients = Vec::new();
    for _ in 0..count.max(1) {
        let connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let coupons = Coupons::with_backend(connection, Backend::Module);
        clients.push(match local {
            Some(local) => coupons.with_local_answers(local.clone()),
            None => coupons,
        });
    }
    clients
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("a histogram")
}

/// Reads the server's counters: COUPON.ISSUE calls, commands processed, CPU ticks.
fn counters(server: &Server, pid: Option<u32>) -> (u64, u64, u64) {
    let mut conn = server.connect();
    let (issues, _) = command_stats(&mut conn, "coupon.issue");
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut conn)
        .unwrap_or_default();
    let commands = info
        .lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let ticks = pid
        .and_then(|pid| cpu_ticks(&format!("/proc/{pid}/stat"), 13))
        .unwrap_or(0);
    (issues, commands, ticks)
}

async fn round(
    server: &Server,
    args: &LocalArgs,
    coupon: &str,
    stock: u64,
    seconds: u64,
    revokes_per_second: u64,
    with_local: bool,
) -> Round {
    let local = match with_local {
        true => Some(LocalAnswers::connect(server.url()).await.expect("tracking")),
        false => None,
    };
    let clients = Arc::new(clients(server, args.connections, local.as_ref()).await);
    let holders = Arc::new(Mutex::new(Vec::new()));
    let next_user = Arc::new(AtomicU64::new(0));
    // The sell-out, by fresh users.
    for n in 0..stock {
        let user = format!("user-{n}");
        match clients[0].issue(coupon, &user, stock).await {
            Ok(Outcome::Issued { .. }) => holders.lock().expect("holders").push(user),
            other => panic!("the sell-out answered {other:?}"),
        }
    }
    next_user.store(stock, Ordering::Relaxed);
    let sold_out = Instant::now();
    let pid = redis_pid(server);
    let before = counters(server, pid);
    let deadline = sold_out + Duration::from_secs(seconds);
    let first_local = Arc::new(AtomicU64::new(u64::MAX));

    let revoker = {
        let (clients, holders, local) = (clients.clone(), holders.clone(), local.clone());
        let coupon = coupon.to_string();
        tokio::spawn(async move {
            let mut back_to_current = histogram();
            let mut revokes = 0;
            if revokes_per_second == 0 {
                return (back_to_current, revokes);
            }
            let period = Duration::from_secs_f64(1.0 / revokes_per_second as f64);
            let mut tick = tokio::time::interval(period);
            while Instant::now() < deadline {
                tick.tick().await;
                let user = {
                    let mut holders = holders.lock().expect("holders");
                    let n = holders.len();
                    if n == 0 {
                        continue;
                    }
                    holders.swap_remove(fastrand::usize(0..n))
                };
                if clients[0].revoke(&coupon, &user).await.unwrap_or(false) {
                    revokes += 1;
                    let revoked = Instant::now();
                    if let Some(local) = &local {
                        // Until a click takes the freed coupon, the server answers; then the
                        // view is filled again.
                        while !local.is_current(&coupon) && revoked.elapsed() < period * 4 {
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                        if local.is_current(&coupon) {
                            let _ = back_to_current.record(revoked.elapsed().as_micros() as u64);
                        }
                    }
                }
            }
            (back_to_current, revokes)
        })
    };

    let clickers: Vec<_> = (0..args.in_flight.max(1))
        .map(|task| {
            let (clients, holders, next_user, first_local) = (
                clients.clone(),
                holders.clone(),
                next_user.clone(),
                first_local.clone(),
            );
            let coupon = coupon.to_string();
            tokio::spawn(async move {
                let (mut local, mut server, mut clicks) = (histogram(), histogram(), 0u64);
                let (mut current, mut after_fill) = (histogram(), histogram());
                let client = &clients[task % clients.len()];
                while Instant::now() < deadline {
                    let user = format!("user-{}", next_user.fetch_add(1, Ordering::Relaxed));
                    let sent = Instant::now();
                    let Ok(answered) = client.issue_answered(&coupon, &user, stock).await else {
                        continue;
                    };
                    let micros = sent.elapsed().as_micros() as u64;
                    clicks += 1;
                    match answered.by {
                        AnsweredBy::Locally | AnsweredBy::AfterFill => {
                            let _ = local.record(micros.max(1));
                            let since = sold_out.elapsed().as_micros() as u64;
                            first_local.fetch_min(since, Ordering::Relaxed);
                            // A local answer awaits nothing: let the others run.
                            tokio::task::yield_now().await;
                        }
                        AnsweredBy::Server => {
                            let _ = server.record(micros.max(1));
                        }
                    }
                    match answered.by {
                        AnsweredBy::Locally => {
                            let _ = current.record(micros.max(1));
                        }
                        AnsweredBy::AfterFill => {
                            let _ = after_fill.record(micros.max(1));
                        }
                        AnsweredBy::Server => {}
                    }
                    if let Outcome::Issued { .. } = answered.outcome {
                        holders.lock().expect("holders").push(user);
                    }
                }
                (local, server, clicks, current, after_fill)
            })
        })
        .collect();
    let (mut local_latency, mut server_latency, mut clicks) = (histogram(), histogram(), 0);
    let (mut current_latency, mut after_fill_latency) = (histogram(), histogram());
    for clicker in clickers {
        let (local, server, n, current, after_fill) = clicker.await.expect("a clicker");
        current_latency.add(&current).expect("same bounds");
        after_fill_latency.add(&after_fill).expect("same bounds");
        local_latency.add(&local).expect("same bounds");
        server_latency.add(&server).expect("same bounds");
        clicks += n;
    }
    let elapsed = sold_out.elapsed();
    let after = counters(server, pid);
    let (back_to_current, revokes) = revoker.await.expect("the revoker");
    let fields: u64 = redis::cmd("HLEN")
        .arg(coupon)
        .query(&mut server.connect())
        .unwrap_or(0);
    let first_local = first_local.load(Ordering::Relaxed);
    Round {
        clicks,
        elapsed,
        issue_calls: after.0 - before.0,
        commands: after.1 - before.1,
        cpu_seconds: (after.2 - before.2) as f64 / ticks_per_second(),
        local: local_latency,
        current: current_latency,
        after_fill: after_fill_latency,
        server: server_latency,
        first_local: (first_local != u64::MAX).then(|| Duration::from_micros(first_local)),
        back_to_current,
        revokes,
        over_issued: coupon_layout::holders_in(fields) > stock,
    }
}
