//! The persister on a platform's Redis: a live sale among thousands of dormant campaigns.
//! It reads only the streams that changed (the module's change index names them), so a hot
//! coupon drains at full rate with reads that stay cheap for Redis, and a brand-new coupon is
//! persisted at once; the index being only a hint, a persister killed after learning of a
//! change and a server restart that loses the index lose nothing.

use coupon_tests::figures::{command_stats, issuance_rows};
use coupon_tests::{assert_persisted, Flavor, Ledger, Persister, Server, TestDb};
use std::process::Command;
use std::time::{Duration, Instant};

/// Past campaigns, each with its (persisted) event stream.
const DORMANT: usize = 3_000;
/// Issues to the live coupon.
const HOT: usize = 20_000;

/// Flags turning off every way but the change index to learn of new entries.
const HINTS_ONLY: [(&str, &str); 2] = [
    ("discover-interval-ms", "3600000"),
    ("sweep-interval-ms", "3600000"),
];

/// One issue to each of `coupons` (`prefix0`, `prefix1`, …), pipelined.
fn campaigns(conn: &mut redis::Connection, prefix: &str, coupons: usize) -> Ledger {
    let mut ledger = Ledger::default();
    for coupon in 0..coupons {
        let users = [b"first".to_vec()];
        ledger.issue(conn, format!("{prefix}{coupon}").as_bytes(), &users, 1);
    }
    ledger
}

fn users(from: usize, n: usize) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| format!("user-{i}").into_bytes())
        .collect()
}

#[test]
fn a_live_coupon_among_thousands_of_dormant_ones_drains_at_full_rate() {
    let server = Server::start(Flavor::Redis);
    let db = TestDb::mariadb();
    let mut conn = server.connect();
    let mut ledger = campaigns(&mut conn, "past", DORMANT);
    let persister = Persister::start(&server.url(), &db.url(), &[("batch-size", "5000")]);
    assert_persisted(None, &db.url(), &ledger, Duration::from_secs(60), || {
        persister.log()
    });

    let (calls_before, usec_before) = command_stats(&mut conn, "xreadgroup");
    let started = Instant::now();
    for chunk in 0..HOT / 1_000 {
        ledger.issue(&mut conn, b"live", &users(chunk * 1_000, 1_000), HOT as i64);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while issuance_rows(&db.url()) < (DORMANT + HOT) as i64 {
        assert!(
            Instant::now() < deadline,
            "not drained\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let drained = started.elapsed();
    let (calls_after, usec_after) = command_stats(&mut conn, "xreadgroup");
    let (calls, usec) = (calls_after - calls_before, usec_after - usec_before);
    eprintln!(
        "{HOT} issues to one coupon among {DORMANT}: persisted in {drained:?}; {calls} \
         XREADGROUP calls, {:.0} µs each",
        usec as f64 / calls.max(1) as f64
    );
    assert_persisted(
        Some(&server),
        &db.url(),
        &ledger,
        Duration::from_secs(60),
        || persister.log(),
    );
    // Reading every stream each time gives the live one a sliver of each read: one call per
    // entry or two. Reading the changed ones gives it the whole read.
    assert!(
        calls < (HOT / 20) as u64,
        "{calls} XREADGROUP calls for {HOT} entries of one stream\n{}",
        persister.log()
    );
    assert!(
        usec < calls * 1_000,
        "XREADGROUP took {} µs per call on average",
        usec / calls.max(1)
    );
}

#[test]
fn a_brand_new_coupon_is_persisted_at_once() {
    let server = Server::start(Flavor::Redis);
    let db = TestDb::mariadb();
    let mut conn = server.connect();
    let mut ledger = campaigns(&mut conn, "past", 100);
    let persister = Persister::start(&server.url(), &db.url(), &HINTS_ONLY);
    assert_persisted(None, &db.url(), &ledger, Duration::from_secs(30), || {
        persister.log()
    });
    // No scan will run for an hour: only the change index can name the new stream.
    let started = Instant::now();
    ledger.issue(&mut conn, b"brand-new", &users(0, 10), 100);
    assert_persisted(
        Some(&server),
        &db.url(),
        &ledger,
        Duration::from_secs(3),
        || persister.log(),
    );
    eprintln!(
        "a new coupon's first events persisted {:?} after the issue",
        started.elapsed()
    );
}

/// The persister's reader connection has asked `COUPON.CHANGES` and waits on `XREADGROUP`
/// (held back by `CLIENT PAUSE … WRITE`).
fn reader_waits_on_a_read(conn: &mut redis::Connection) -> bool {
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(conn)
        .expect("CLIENT LIST");
    clients.lines().any(|line| line.contains("cmd=xreadgroup"))
}

#[test]
fn a_persister_killed_between_learning_of_a_change_and_reading_it_loses_nothing() {
    let server = Server::start(Flavor::Redis);
    let db = TestDb::mariadb();
    let mut conn = server.connect();
    let mut ledger = campaigns(&mut conn, "past", 10);
    let mut persister = Persister::start(&server.url(), &db.url(), &HINTS_ONLY);
    assert_persisted(None, &db.url(), &ledger, Duration::from_secs(30), || {
        persister.log()
    });
    // The issues (to a coupon whose stream the persister reads already) and a pause of
    // every write in one step: the persister can still learn of them (COUPON.CHANGES is
    // read-only) but its XREADGROUP waits.
    let mut pipe = redis::pipe();
    pipe.atomic();
    for user in users(0, 50) {
        pipe.cmd("COUPON.ISSUE").arg("past3").arg(user).arg(100);
    }
    pipe.cmd("CLIENT").arg("PAUSE").arg(10_000).arg("WRITE");
    let replies: Vec<redis::Value> = pipe.query(&mut conn).expect("MULTI");
    assert_eq!(replies.len(), 51);
    for (user, reply) in users(0, 50).into_iter().zip(replies) {
        let (status, seq, _): (String, Option<i64>, i64) =
            redis::from_redis_value(reply).expect("an issue reply");
        assert_eq!(status, "ISSUED");
        let seq = seq.expect("an ISSUED reply has a seq");
        ledger.rows.insert((b"past3".to_vec(), seq), (user, false));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reader_waits_on_a_read(&mut conn) {
        assert!(Instant::now() < deadline, "the reader never read");
        std::thread::sleep(Duration::from_millis(20));
    }
    persister.kill();
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut conn)
        .expect("CLIENT UNPAUSE");
    persister.restart();
    assert_persisted(
        Some(&server),
        &db.url(),
        &ledger,
        Duration::from_secs(10),
        || persister.log(),
    );
}

/// Freezes (`STOP`) or thaws (`CONT`) a process.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn a_restart_of_redis_that_loses_the_change_index_loses_nothing() {
    let mut server = Server::builder(Flavor::Redis).aof(true).start();
    let db = TestDb::mariadb();
    let mut conn = server.connect();
    let mut ledger = campaigns(&mut conn, "past", 10);
    let persister = Persister::start(&server.url(), &db.url(), &HINTS_ONLY);
    assert_persisted(None, &db.url(), &ledger, Duration::from_secs(30), || {
        persister.log()
    });
    let pid = persister.pid().expect("running");
    signal(pid, "STOP");
    for coupon in ["past0", "past5", "fresh"] {
        ledger.issue(&mut conn, coupon.as_bytes(), &users(100, 20), 100);
    }
    // The new server's index starts empty: it never heard of these changes.
    server.restart(true);
    signal(pid, "CONT");
    assert_persisted(
        Some(&server),
        &db.url(),
        &ledger,
        Duration::from_secs(15),
        || persister.log(),
    );
}
