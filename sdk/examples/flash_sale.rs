//! A service-like flash sale: many users click at once (some twice) for a few coupons.
//!
//! ```sh
//! redis-server --loadmodule ./target/release/libcoupon.so &   # or any Redis: the SDK falls back to Lua
//! cargo run --release -p coupon-sdk --example flash_sale -- redis://127.0.0.1:6379/ 5000 100
//! ```

use coupon_sdk::{Coupons, Outcome};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let users: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5_000);
    let stock: u64 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(100);

    let connection = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let coupons = Coupons::connect(connection)
        .await?
        .with_timeout(Duration::from_secs(2));
    let coupon = format!("example-sale:{}", std::process::id());
    println!(
        "{users} users race for {stock} coupons of {coupon} ({:?} backend)",
        coupons.backend()
    );

    let started = Instant::now();
    // Every user clicks once; every tenth clicks again right away.
    let clicks = (0..users).chain((0..users).step_by(10));
    let tasks = clicks.map(|user| {
        let coupons = coupons.clone();
        let coupon = coupon.clone();
        tokio::spawn(async move { coupons.issue(&coupon, format!("user-{user}"), stock).await })
    });
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for task in futures::future::join_all(tasks).await {
        let label = match task? {
            Ok(Outcome::Issued { .. }) => "issued".to_string(),
            Ok(Outcome::AlreadyIssued { .. }) => "already issued".to_string(),
            Ok(other) => format!("{other:?}"),
            Err(error) => format!("error: {error}"),
        };
        *tally.entry(label).or_default() += 1;
    }
    let elapsed = started.elapsed();
    for (outcome, count) in &tally {
        println!("{outcome:>16}: {count}");
    }
    let info = coupons.info(&coupon).await?;
    println!(
        "holders now: {} (stock {stock}), last seq {}, events {}",
        info.issued, info.last_seq, info.events
    );
    println!("{} attempts in {elapsed:.2?}", tally.values().sum::<u64>());
    Ok(())
}
