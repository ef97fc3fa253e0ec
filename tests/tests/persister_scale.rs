//! 100,000 issuances across 50 coupons, issued by pipelining COUPON.ISSUE while the
//! persister runs: every one lands once. Prints the throughput observed.

use coupon_tests::figures::issuance_rows;
use coupon_tests::{assert_persisted, Flavor, Ledger, Persister, Server, TestDb};
use std::time::{Duration, Instant};

const COUPONS: usize = 50;
const PER_COUPON: usize = 2_000;

fn hundred_thousand(db: TestDb, name: &str) {
    let server = Server::start(Flavor::Redis);
    let persister = Persister::start(&server.url(), &db.url(), &[]);
    // Wait until it runs (the migrations are applied) so the clock measures persisting.
    let _ = persister.metric("coupon_persister_streams");
    let started = Instant::now();
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    for chunk in 0..PER_COUPON / 500 {
        for coupon in 0..COUPONS {
            let users: Vec<Vec<u8>> = (0..500)
                .map(|i| format!("user-{}", chunk * 500 + i).into_bytes())
                .collect();
            ledger.issue(
                &mut conn,
                format!("bulk{coupon}").as_bytes(),
                &users,
                PER_COUPON as i64,
            );
        }
    }
    let issued = started.elapsed();
    assert_eq!(ledger.rows.len(), COUPONS * PER_COUPON);
    let deadline = Instant::now() + Duration::from_secs(120);
    while issuance_rows(&db.url()) < (COUPONS * PER_COUPON) as i64 {
        assert!(
            Instant::now() < deadline,
            "not all persisted\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let persisted = started.elapsed();
    eprintln!(
        "{name}: issued 100,000 in {issued:?}; all persisted {persisted:?} after the first \
         issue: {:.0} events/s",
        (COUPONS * PER_COUPON) as f64 / persisted.as_secs_f64()
    );
    assert_persisted(
        Some(&server),
        &db.url(),
        &ledger,
        Duration::from_secs(30),
        || persister.log(),
    );
    assert_eq!(
        persister.metric("coupon_persister_duplicates_skipped_total"),
        0.0
    );
}

#[test]
fn hundred_thousand_issuances_on_mariadb() {
    hundred_thousand(TestDb::mariadb(), "MariaDB");
}

#[test]
fn hundred_thousand_issuances_on_sqlite() {
    hundred_thousand(TestDb::sqlite(), "SQLite");
}
