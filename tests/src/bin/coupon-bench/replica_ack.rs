//! `coupon-bench replica-ack`: what replica acknowledgement costs an issue. One primary with
//! the module and one replica (without it), started here; fresh users issue through the SDK,
//! with and without `with_replica_ack(1 replica)`, alternating in one run.

use coupon_sdk::{Backend, Coupons, Outcome, ReplicaAck};
use coupon_tests::load::{drive, LoadReport};
use coupon_tests::{Flavor, Server};
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct ReplicaAckArgs {
    /// Issues per measured round (each to a fresh user, stock unlimited).
    #[arg(long, default_value_t = 200_000)]
    attempts: u64,
    /// Multiplexed connections the calls are spread over.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Calls in flight (spread over the connections).
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Rounds of each mode, alternating (the machine's load drifts).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// WAIT's timeout, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    timeout_ms: u64,
    /// Tiny counts: checks that it works, measures nothing.
    #[arg(long)]
    smoke: bool,
}

/// Runs the comparison and prints it; false if a call failed.
pub fn run(args: &ReplicaAckArgs) -> bool {
    let (attempts, rounds) = if args.smoke {
        (2_000, 1)
    } else {
        (args.attempts, args.rounds.max(1))
    };
    let primary = Server::builder(Flavor::Redis)
        .arg("maxclients", "2000")
        .start();
    let replica = Server::builder(Flavor::Redis)
        .module(false)
        .arg("replicaof", &format!("127.0.0.1 {}", primary.port()))
        .start();
    wait_for_link(&replica);
    // The measured WAITs start once the replica streams.
    coupon_tests::replicas::wait_for_first_ack(&primary);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let ack = ReplicaAck {
        replicas: 1,
        timeout: Duration::from_millis(args.timeout_ms),
    };
    println!(
        "## issue with replica ack (WAIT 1) vs without\n\n\
         one primary with the module and one replica, both redis-server on this machine; \
         {attempts} issues per round to fresh users through the SDK, {} connections, {} in \
         flight, {rounds} round(s) of each, alternating\n",
        args.connections, args.in_flight
    );
    let mut ok = true;
    let mut totals = [(0.0, 0u64), (0.0, 0u64)];
    runtime.block_on(async {
        let mut connections = Vec::with_capacity(args.connections);
        for _ in 0..args.connections.max(1) {
            // No response timeout of the connection's own (redis-rs' default is 500 ms): a
            // WAIT may take its whole timeout.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
            let connection = primary
                .client()
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .expect("connect to the primary");
            connections.push(connection);
        }
        for round in 0..rounds {
            for (mode, with_ack) in [(0, false), (1, true)] {
                let clients: Vec<Coupons<MultiplexedConnection>> = connections
                    .iter()
                    .map(|c| {
                        let coupons = Coupons::with_backend(c.clone(), Backend::Module);
                        if with_ack {
                            coupons.with_replica_ack(ack)
                        } else {
                            coupons
                        }
                    })
                    .collect();
                let coupon = format!("bench:ack:{round}:{with_ack}");
                let report = issue_all(clients, coupon, attempts, args.in_flight).await;
                let label = if with_ack {
                    "with replica ack (WAIT 1)"
                } else {
                    "without replica ack"
                };
                print_row(label, &report);
                ok &= report.errors == 0;
                totals[mode].0 += report.per_second();
                totals[mode].1 += 1;
            }
        }
    });
    let mean = |(sum, n): (f64, u64)| sum / n.max(1) as f64;
    let (without, with) = (mean(totals[0]), mean(totals[1]));
    println!(
        "\nmean: without {without:.0} issues/s, with replica ack {with:.0} issues/s; \
         ratio with/without {:.3}",
        with / without.max(1e-9)
    );
    let digests_match = primary.digest() == replica.digest();
    println!("replica digest matches the primary's: {digests_match}");
    if args.smoke {
        println!("smoke run: it ran (figures at these counts mean nothing)");
    }
    ok && digests_match
}

async fn issue_all(
    clients: Vec<Coupons<MultiplexedConnection>>,
    coupon: String,
    attempts: u64,
    in_flight: usize,
) -> LoadReport {
    let clients = std::sync::Arc::new(clients);
    drive(
        attempts,
        in_flight,
        move |i| {
            let coupons = clients[(i as usize) % clients.len()].clone();
            let coupon = coupon.clone();
            async move {
                let user = format!("user-{i}");
                match coupons.issue(&coupon, &user, i64::MAX as u64).await {
                    Ok(Outcome::Issued { .. }) => true,
                    other => {
                        eprintln!("issue {i}: {other:?}");
                        false
                    }
                }
            }
        },
        |_| {},
    )
    .await
}

fn print_row(label: &str, report: &LoadReport) {
    println!(
        "  {label:<28} {:>9.0} issues/s   p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  errors {}",
        report.per_second(),
        report.latency_ms(0.5),
        report.latency_ms(0.99),
        report.max_ms(),
        report.errors
    );
}

fn wait_for_link(replica: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.connect())
            .unwrap_or_default();
        if info.contains("master_link_status:up") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the replica never linked:\n{}", replica.log());
}
