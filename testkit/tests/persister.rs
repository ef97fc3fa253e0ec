//! The persister container drains a containerised Redis with the module into a database
//! container; the database ends up equal to Redis. Skips without Docker, except under CI.

use coupon_testkit::containers::skip_without_docker;
use coupon_testkit::{Backend, Stack};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn persister_container_drains_into_the_database() -> Result<(), coupon_testkit::Error> {
    if skip_without_docker("persister_container_drains_into_the_database").await {
        return Ok(());
    }
    let stack = Stack::builder()
        .backend(Backend::Containers)
        .persister(true)
        .start()
        .await?;
    let coupons = stack.coupons().await?;

    for coupon in ["spring", "summer"] {
        for user in 0..300 {
            coupons.issue(coupon, format!("u{user}"), 200).await?;
        }
        // Every fifth holder gives the coupon back; a third of those take it again (new seq).
        for user in (0..200).step_by(5) {
            assert!(coupons.revoke(coupon, format!("u{user}")).await?);
        }
        for user in (0..200).step_by(15) {
            coupons.issue(coupon, format!("u{user}"), 200).await?;
        }
    }

    for coupon in ["spring", "summer"] {
        let info = coupons.info(coupon).await?;
        let rows = stack
            .wait_persisted(coupon, Duration::from_secs(60))
            .await?;
        assert_eq!(rows as u64, info.last_seq, "one row per seq ever issued");
        // 200 issued, 40 revoked, 14 of those issued again.
        assert_eq!((info.issued, info.revoked, info.last_seq), (174, 40, 214));
    }
    Ok(())
}
