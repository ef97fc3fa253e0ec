//! After Redis lost data: `coupon-persister reconcile` lists every difference with the
//! database and exits 2; `coupon-persister restore` puts the lost holders and the last seq
//! back (then reconcile agrees, a new issue gets a seq above the database's, a second
//! restore finds everything held); a seq Redis handed out again to another user is reported
//! by both and left alone.

use coupon_tests::{assert_persisted, persister_path, Flavor, Ledger, MariaDb, Persister, Server};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(40);

/// Runs a subcommand: its exit code and what it printed.
fn run(command: &str, server: &Server, db: &MariaDb) -> (i32, String) {
    let mut run = Command::new(persister_path());
    run.arg(command)
        .args(["--redis-url", &server.url(), "--database-url", &db.url()])
        .args(["--group", "persister"]);
    if command == "reconcile" {
        run.args(["--drain-timeout-ms", "10000"]);
    }
    let output = run.output().expect("coupon-persister runs");
    let code = output.status.code().unwrap_or(-1);
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let logged = String::from_utf8_lossy(&output.stderr);
    eprintln!("{command}: {code}\n{printed}{logged}");
    (code, printed)
}

fn sale(server: &Server, db: &MariaDb) -> (Persister, redis::Connection) {
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    let users: Vec<Vec<u8>> = ["alice", "bob", "carol", "dave", "erin"]
        .iter()
        .map(|u| u.as_bytes().to_vec())
        .collect();
    ledger.issue(&mut conn, b"sale", &users, 100);
    ledger.revoke(&mut conn, b"sale", &[b"erin".to_vec()]);
    let persister = Persister::start(&server.url(), &db.url(), &[]);
    assert_persisted(Some(server), &db.url(), &ledger, LIMIT, || persister.log());
    (persister, conn)
}

fn hset(conn: &mut redis::Connection, field: &str, value: i64) {
    let _: () = redis::cmd("HSET")
        .arg("sale")
        .arg(field)
        .arg(value)
        .query(conn)
        .expect("HSET");
}

#[test]
fn lost_holders_and_a_lowered_last_seq_are_listed_then_restored() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let (_persister, mut conn) = sale(&server, &db);
    let (code, printed) = run("reconcile", &server, &db);
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains("the database and Redis agree"),
        "{printed}"
    );

    // What a failover with replication lag leaves: two holders and the last seq gone.
    let _: () = redis::cmd("HDEL")
        .arg("sale")
        .arg("alice")
        .arg("dave")
        .query(&mut conn)
        .expect("HDEL");
    hset(&mut conn, "", 3);
    let (code, printed) = run("reconcile", &server, &db);
    assert_eq!(code, 2, "{printed}");
    for line in [
        "sale: alice holds seq 1 in the database but not in Redis",
        "sale: dave holds seq 4 in the database but not in Redis",
        "sale: Redis' last seq 3 is below the database's 5",
        "reconcile: 1 coupons compared, 1 differ; 3 differences",
    ] {
        assert!(printed.contains(line), "{line:?} missing from\n{printed}");
    }

    let (code, printed) = run("restore", &server, &db);
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains("restore: 1 coupons; 2 holders restored, 2 already held; 0 conflicts"),
        "{printed}"
    );
    let (code, printed) = run("reconcile", &server, &db);
    assert_eq!(code, 0, "{printed}");
    let (status, seq, _): (String, Option<i64>, i64) = redis::cmd("COUPON.ISSUE")
        .arg("sale")
        .arg("frank")
        .arg(100)
        .query(&mut conn)
        .expect("COUPON.ISSUE");
    assert_eq!((status.as_str(), seq), ("ISSUED", Some(6)));
    let (code, printed) = run("restore", &server, &db);
    assert_eq!(code, 0, "{printed}");
    assert!(printed.contains("0 holders restored"), "{printed}");
}

#[test]
fn a_seq_handed_out_again_is_reported_by_both_and_left_alone() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let (_persister, mut conn) = sale(&server, &db);
    // Redis lost bob's seq 2 and handed it to zed.
    let _: () = redis::cmd("HDEL")
        .arg("sale")
        .arg("bob")
        .query(&mut conn)
        .expect("HDEL");
    hset(&mut conn, "zed", 2);
    let (code, printed) = run("reconcile", &server, &db);
    assert_eq!(code, 2, "{printed}");
    assert!(
        printed.contains("sale: seq 2 is bob's in the database but zed's in Redis"),
        "{printed}"
    );
    let (code, printed) = run("restore", &server, &db);
    assert_eq!(code, 2, "{printed}");
    assert!(
        printed.contains("sale: seq 2 is bob's in the database but zed's in Redis: left as it is"),
        "{printed}"
    );
    let zed: Option<i64> = redis::cmd("HGET")
        .arg("sale")
        .arg("zed")
        .query(&mut conn)
        .expect("HGET");
    assert_eq!(zed, Some(2));
}
