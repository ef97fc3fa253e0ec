//! A flash sale against Redis with the module in a container: the shape of a service's own
//! integration test with the kit. Skips without Docker, except under CI.

use coupon_sdk::{Backend, Outcome};
use coupon_testkit::containers::skip_without_docker;
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread")]
async fn flash_sale_in_a_container() -> Result<(), coupon_testkit::Error> {
    if skip_without_docker("flash_sale_in_a_container").await {
        return Ok(());
    }
    let (_stack, coupons) = coupon_testkit::coupons().await?;
    assert_eq!(coupons.backend(), Backend::Module, "the module is loaded");

    // 500 users click twice each, all at once, for 100 coupons.
    let clicks = (0..1000).map(|i| {
        let coupons = coupons.clone();
        let user = format!("user-{}", i % 500);
        async move { (coupons.issue("sale", &user, 100).await, user) }
    });
    let mut holders = BTreeMap::new();
    let mut sold_out = 0;
    for (outcome, user) in futures::future::join_all(clicks).await {
        match outcome? {
            Outcome::Issued { seq } => assert!(holders.insert(user, seq).is_none(), "issued twice"),
            Outcome::AlreadyIssued { seq } => assert_eq!(holders.get(&user), Some(&seq)),
            Outcome::SoldOut => sold_out += 1,
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(holders.len(), 100, "exactly the stock is issued");
    let mut seqs: Vec<u64> = holders.values().copied().collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=100).collect::<Vec<_>>(),
        "seqs 1..=100, each once"
    );
    assert!(
        sold_out >= 800,
        "the other 400 users (twice each, or after a win) are turned away"
    );
    for (user, seq) in &holders {
        assert_eq!(coupons.check("sale", user).await?, Some(*seq));
    }
    assert_eq!(coupons.info("sale").await?.issued, 100);
    Ok(())
}
