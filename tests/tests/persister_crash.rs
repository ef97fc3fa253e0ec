//! The persister under failures: kill -9 (mid-batch, and between COMMIT and XACK), SIGTERM
//! under load, MariaDB killed and restarted, a second persister taking over a killed one's
//! entries, Redis restarted. After each, the database equals Redis.

use coupon_tests::{
    assert_persisted, event_streams, events_key, pending, query_rows, Flavor, Ledger, Load,
    MariaDb, Persister, Server, TestDb,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(40);

/// An entry ID as (ms, seq).
type Id = (u64, u64);

fn parse_id(text: &str) -> Id {
    let (ms, seq) = text.split_once('-').expect("an entry ID");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// The group `persister`'s checkpoint of `stream` in the database.
fn checkpoint(database_url: &str, stream: &[u8]) -> Option<Id> {
    let rows = query_rows(
        database_url,
        &format!(
            "SELECT last_ms, last_seq FROM coupon_checkpoint \
             WHERE consumer_group = 'persister' AND stream = '{}'",
            String::from_utf8_lossy(stream)
        ),
    )
    .ok()?;
    let row = rows.first()?;
    let ms: i64 = sqlx::Row::get(row, 0);
    let seq: i64 = sqlx::Row::get(row, 1);
    Some((ms as u64, seq as u64))
}

/// The ID of the last entry ever added to `stream` (trimmed or not).
fn last_entry(server: &Server, stream: &[u8]) -> Id {
    let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query(&mut server.connect())
        .expect("XINFO STREAM");
    let last: String =
        redis::from_redis_value(info["last-generated-id"].clone()).expect("last-generated-id");
    parse_id(&last)
}

/// Waits until `stream`'s checkpoint is `want`; returns how long that took.
fn wait_checkpoint(database_url: &str, stream: &[u8], want: Id, persister: &Persister) -> Duration {
    let started = Instant::now();
    while checkpoint(database_url, stream) != Some(want) {
        assert!(
            started.elapsed() < LIMIT,
            "the checkpoint is {:?}, not {want:?}\n{}",
            checkpoint(database_url, stream),
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

fn coupons(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn wait_no_pending(server: &Server, persister: &Persister) {
    let deadline = Instant::now() + LIMIT;
    while pending(server, "persister") > 0 {
        assert!(
            Instant::now() < deadline,
            "entries stay pending\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill_9_mid_run(db: TestDb) {
    let server = Server::start(Flavor::Redis);
    let load = Load::start(&server, coupons("k", 5), "k");
    let mut persister = Persister::start(&server.url(), &db.url(), &[("batch-size", "100")]);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700));
        persister.kill();
        std::thread::sleep(Duration::from_millis(200));
        persister.restart();
    }
    std::thread::sleep(Duration::from_millis(500));
    let ledger = load.stop();
    assert!(
        ledger.rows.len() > 1000,
        "load too small: {}",
        ledger.rows.len()
    );
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    wait_no_pending(&server, &persister);
}

#[test]
fn kill_9_mid_run_on_mariadb() {
    kill_9_mid_run(TestDb::mariadb());
}

#[test]
fn kill_9_mid_run_on_sqlite() {
    kill_9_mid_run(TestDb::sqlite());
}

/// The state a kill -9 between COMMIT and XACK leaves: rows committed, entries still pending
/// in the consumer's name. Made exactly by re-delivering every committed entry to `c1`
/// without acknowledging; the restarted `c1` drains them first, writes nothing, counts them
/// as duplicates and acknowledges them.
fn kill_9_between_commit_and_ack(db: TestDb) {
    let server = Server::start(Flavor::Redis);
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    for coupon in ["ca", "cb"] {
        let users: Vec<Vec<u8>> = (0..150).map(|i| format!("u{i}").into_bytes()).collect();
        ledger.issue(&mut conn, coupon.as_bytes(), &users, 1000);
        let revoked: Vec<Vec<u8>> = users.iter().step_by(10).cloned().collect();
        ledger.revoke(&mut conn, coupon.as_bytes(), &revoked);
    }
    let events = ledger.rows.len() + ledger.revoked();
    let mut persister = Persister::start(&server.url(), &db.url(), &[("batch-size", "64")]);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    wait_no_pending(&server, &persister);
    let (status, _) = persister
        .terminate(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(status.success());

    let mut redelivered = 0;
    for coupon in ["ca", "cb"] {
        let stream = events_key(coupon.as_bytes());
        let _: () = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&stream)
            .arg("persister")
            .arg("0")
            .query(&mut conn)
            .expect("XGROUP SETID");
        let read: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("persister")
            .arg("c1")
            .arg("COUNT")
            .arg(10_000)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query(&mut conn)
            .expect("XREADGROUP");
        drop(read);
        redelivered += 1;
    }
    assert_eq!(redelivered, 2);
    assert_eq!(pending(&server, "persister"), events as u64);

    persister.restart();
    wait_no_pending(&server, &persister);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    assert_eq!(
        persister.metric("coupon_persister_events_read_total{source=\"pending\"}"),
        events as f64
    );
    assert_eq!(
        persister.metric("coupon_persister_duplicates_skipped_total"),
        events as f64
    );
    assert_eq!(persister.metric("coupon_persister_rows_written_total"), 0.0);
}

#[test]
fn kill_9_between_commit_and_ack_on_mariadb() {
    kill_9_between_commit_and_ack(TestDb::mariadb());
}

#[test]
fn kill_9_between_commit_and_ack_on_sqlite() {
    kill_9_between_commit_and_ack(TestDb::sqlite());
}

/// A real kill -9 between COMMIT and XACK, timed without hooks in the persister: the test
/// holds the coupon's rows locked (and, in REPEATABLE READ, the gap after them where the new
/// seqs go) so the batch's insert waits, pauses Redis writes (XACK is one) meanwhile, lets
/// the COMMIT through, sees the rows committed, and kills the persister while its XACK
/// hangs. The checkpoint is left behind the committed rows (it is raised only once a batch
/// is settled); the next run finds the entries pending, writes nothing, acks, and the
/// checkpoint catches up.
#[test]
fn kill_9_while_xack_hangs_after_commit() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    let users: Vec<Vec<u8>> = (0..200).map(|i| format!("x{i}").into_bytes()).collect();
    ledger.issue(&mut conn, b"window", &users[..10], 1000);
    let mut persister = Persister::start(&server.url(), &db.url(), &[]);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    let stream = events_key(b"window");
    let first = last_entry(&server, &stream);
    wait_checkpoint(&db.url(), &stream, first, &persister);

    let mut lock = db.spawn_sql(
        "BEGIN; SELECT * FROM coupon.coupon_issuance WHERE coupon = 'window' FOR UPDATE; \
         SELECT SLEEP(3); COMMIT;",
    );
    std::thread::sleep(Duration::from_millis(500));
    ledger.issue(&mut conn, b"window", &users[10..], 1000);
    std::thread::sleep(Duration::from_millis(300));
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("WRITE")
        .query(&mut conn)
        .expect("CLIENT PAUSE");
    // Rows are visible only after COMMIT; the XACK behind it is held by the pause.
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    std::thread::sleep(Duration::from_millis(200));
    persister.kill();
    let _ = lock.wait();
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut conn)
        .expect("CLIENT UNPAUSE");
    assert_eq!(
        pending(&server, "persister"),
        190,
        "committed but not acknowledged"
    );
    assert_eq!(
        checkpoint(&db.url(), &stream),
        Some(first),
        "the checkpoint stays behind the rows"
    );

    persister.restart();
    wait_no_pending(&server, &persister);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    assert_eq!(
        persister.metric("coupon_persister_duplicates_skipped_total"),
        190.0
    );
    assert_eq!(persister.metric("coupon_persister_rows_written_total"), 0.0);
    let last = last_entry(&server, &stream);
    wait_checkpoint(&db.url(), &stream, last, &persister);
}

/// A real kill -9 inside a batch's transaction (its insert waiting on a lock the test holds
/// on the coupon's rows, no COMMIT yet): nothing of the batch is visible, its entries stay
/// pending, the checkpoint stays where it was, and the next run persists them once.
#[test]
fn kill_9_inside_the_transaction() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    let users: Vec<Vec<u8>> = (0..200).map(|i| format!("y{i}").into_bytes()).collect();
    ledger.issue(&mut conn, b"midway", &users[..10], 1000);
    let mut persister = Persister::start(&server.url(), &db.url(), &[]);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    let before = ledger.clone();
    let stream = events_key(b"midway");
    let first = last_entry(&server, &stream);
    wait_checkpoint(&db.url(), &stream, first, &persister);

    let mut lock = db.spawn_sql(
        "BEGIN; SELECT * FROM coupon.coupon_issuance WHERE coupon = 'midway' FOR UPDATE; \
         SELECT SLEEP(2); COMMIT;",
    );
    std::thread::sleep(Duration::from_millis(500));
    ledger.issue(&mut conn, b"midway", &users[10..], 1000);
    std::thread::sleep(Duration::from_millis(500));
    persister.kill();
    assert_eq!(pending(&server, "persister"), 190, "read, not acknowledged");
    let _ = lock.wait();
    assert_persisted(None, &db.url(), &before, LIMIT, || persister.log());
    assert_eq!(checkpoint(&db.url(), &stream), Some(first));

    persister.restart();
    wait_no_pending(&server, &persister);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    assert_eq!(
        persister.metric("coupon_persister_rows_written_total{kind=\"inserted\"}"),
        190.0
    );
    assert_eq!(
        persister.metric("coupon_persister_duplicates_skipped_total"),
        0.0
    );
}

/// A batch's transaction holds rows only: with every checkpoint row locked by another
/// connection, a burst on one hot coupon (twenty batches, two in flight, all on one stream)
/// lands and is acknowledged while the lock is still held; the checkpoint catches up once it
/// is released. (When batches advanced the checkpoint in their own transaction, each waited
/// for the lock, and for each other on that stream's checkpoint row.)
#[test]
fn rows_land_while_the_checkpoints_are_locked() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    let users: Vec<Vec<u8>> = (0..2010).map(|i| format!("p{i}").into_bytes()).collect();
    ledger.issue(&mut conn, b"hot", &users[..10], 100_000);
    let persister = Persister::start(&server.url(), &db.url(), &[("batch-size", "100")]);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    let stream = events_key(b"hot");
    let first = last_entry(&server, &stream);
    wait_checkpoint(&db.url(), &stream, first, &persister);
    let batches_before = persister.metric("coupon_persister_batch_size_count");

    let mut lock = db.spawn_sql(
        "BEGIN; SELECT * FROM coupon.coupon_checkpoint FOR UPDATE; SELECT SLEEP(10); COMMIT;",
    );
    std::thread::sleep(Duration::from_millis(500));
    let locked = Instant::now();
    for part in users[10..].chunks(200) {
        ledger.issue(&mut conn, b"hot", part, 100_000);
    }
    assert_persisted(
        Some(&server),
        &db.url(),
        &ledger,
        Duration::from_secs(6),
        || persister.log(),
    );
    wait_no_pending(&server, &persister);
    let landed = locked.elapsed();
    assert!(
        lock.try_wait().expect("the lock's client").is_none() && landed < Duration::from_secs(9),
        "the rows landed only after the checkpoint lock was released ({landed:?})"
    );
    let batches = persister.metric("coupon_persister_batch_size_count") - batches_before;
    assert!(batches >= 10.0, "{batches} batches");
    assert_eq!(
        checkpoint(&db.url(), &stream),
        Some(first),
        "locked: not written"
    );
    let _ = lock.wait();
    let last = last_entry(&server, &stream);
    let took = wait_checkpoint(&db.url(), &stream, last, &persister);
    assert!(took < Duration::from_secs(3), "caught up after {took:?}");
}

/// The entry IDs of `coupon`'s rows (issues and revokes) in the database.
fn row_entries(database_url: &str, coupon: &str) -> std::collections::HashSet<Id> {
    query_rows(
        database_url,
        &format!(
            "SELECT issue_entry_id, revoke_entry_id FROM coupon_issuance WHERE coupon = '{coupon}'"
        ),
    )
    .unwrap_or_default()
    .iter()
    .flat_map(|row| {
        let issue: Option<String> = sqlx::Row::get(row, 0);
        let revoke: Option<String> = sqlx::Row::get(row, 1);
        [issue, revoke]
    })
    .flatten()
    .map(|id| parse_id(&id))
    .collect()
}

/// A sale with trimming every 100 ms, the persister killed -9 mid-way and restarted: every
/// checkpoint sampled names an entry whose row is committed (read just after it), no
/// checkpoint ever moves back, every event lands exactly once, streams were trimmed, and
/// after the burst every checkpoint reaches its stream's last entry within about a second.
fn checkpoints_follow_the_rows(db: TestDb) {
    let server = Server::start(Flavor::Redis);
    let names = coupons("cp", 3);
    let load = Load::start(&server, names.clone(), "cp");
    let mut persister = Persister::start(
        &server.url(),
        &db.url(),
        &[("trim-interval-ms", "100"), ("batch-size", "100")],
    );
    let streams: Vec<(&String, Vec<u8>)> = names
        .iter()
        .map(|coupon| (coupon, events_key(coupon.as_bytes())))
        .collect();
    let mut highest: HashMap<&String, Id> = HashMap::new();
    let mut samples = 0;
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(4) {
        if !killed && started.elapsed() > Duration::from_millis(1500) {
            persister.kill();
            std::thread::sleep(Duration::from_millis(200));
            persister.restart();
            killed = true;
        }
        for (coupon, stream) in &streams {
            let Some(at) = checkpoint(&db.url(), stream) else {
                continue;
            };
            assert!(
                row_entries(&db.url(), coupon).contains(&at),
                "{coupon}: the checkpoint {at:?} is ahead of the committed rows"
            );
            if let Some(before) = highest.insert(coupon, at) {
                assert!(
                    before <= at,
                    "{coupon}: moved back from {before:?} to {at:?}"
                );
            }
            samples += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ledger = load.stop();
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    let mut slowest = Duration::ZERO;
    for (_, stream) in &streams {
        let last = last_entry(&server, stream);
        slowest = slowest.max(wait_checkpoint(&db.url(), stream, last, &persister));
    }
    eprintln!("checkpoints caught up {slowest:?} after the rows; {samples} samples");
    assert!(
        slowest < Duration::from_millis(2500),
        "caught up after {slowest:?}"
    );
    assert!(samples > 20, "{samples} samples");
    wait_no_pending(&server, &persister);
    let mut conn = server.connect();
    let trimmed = streams.iter().any(|(_, stream)| {
        let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(stream)
            .query(&mut conn)
            .expect("XINFO STREAM");
        let length: u64 = redis::from_redis_value(info["length"].clone()).expect("length");
        let added: u64 =
            redis::from_redis_value(info["entries-added"].clone()).expect("entries-added");
        length < added
    });
    assert!(trimmed, "nothing was trimmed\n{}", persister.log());
}

#[test]
fn checkpoints_follow_the_rows_on_mariadb() {
    checkpoints_follow_the_rows(TestDb::mariadb());
}

#[test]
fn checkpoints_follow_the_rows_on_sqlite() {
    checkpoints_follow_the_rows(TestDb::sqlite());
}

/// SIGTERM while events pour in: the process exits 0 within a bounded time, and everything
/// it had read was committed and acknowledged (nothing left pending in its name).
fn sigterm_under_load(db: TestDb) {
    let server = Server::start(Flavor::Redis);
    let load = Load::start(&server, coupons("s", 5), "s");
    let mut persister = Persister::start(&server.url(), &db.url(), &[("batch-size", "200")]);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1000));
        let (status, took) = persister
            .terminate(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", persister.log()));
        assert!(status.success(), "{status}\n{}", persister.log());
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert_eq!(
            pending(&server, "persister"),
            0,
            "read but not committed and acked\n{}",
            persister.log()
        );
        persister.restart();
    }
    std::thread::sleep(Duration::from_millis(300));
    let ledger = load.stop();
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    wait_no_pending(&server, &persister);
}

#[test]
fn sigterm_under_load_on_mariadb() {
    sigterm_under_load(TestDb::mariadb());
}

#[test]
fn sigterm_under_load_on_sqlite() {
    sigterm_under_load(TestDb::sqlite());
}

/// SIGTERM while the database is down: the batch in flight cannot commit, so the process
/// gives up after `--shutdown-timeout-ms`, exits 0 without acknowledging it, and the next
/// run persists it.
#[test]
fn sigterm_while_the_database_is_down() {
    sigterm_with_the_database_unavailable(&[], MariaDb::kill, MariaDb::restart);
}

/// SIGTERM while MariaDB is frozen (SIGSTOP: connections open, nothing answers), with
/// statement timeouts far longer than the shutdown timeout: the transaction waiting on the
/// database is abandoned at the shutdown deadline (rolled back, nothing acked) and the
/// process exits in bounded time. Once the database thaws, everything lands.
#[test]
fn sigterm_while_the_database_is_frozen() {
    sigterm_with_the_database_unavailable(
        &[("db-timeout-ms", "60000")],
        |db| db.freeze(),
        |db| db.thaw(),
    );
}

/// Persists a first half, makes the database unavailable, issues a second half, sends
/// SIGTERM: the process must exit 0 within bounds with the second half pending, not acked;
/// once the database is back, a restart persists everything.
fn sigterm_with_the_database_unavailable(
    flags: &[(&str, &str)],
    make_unavailable: impl FnOnce(&mut MariaDb),
    make_available: impl FnOnce(&mut MariaDb),
) {
    let server = Server::start(Flavor::Redis);
    let mut db = MariaDb::start();
    let mut persister = Persister::start(
        &server.url(),
        &db.url(),
        &[&[("shutdown-timeout-ms", "1500")], flags].concat(),
    );
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    let users: Vec<Vec<u8>> = (0..50).map(|i| format!("u{i}").into_bytes()).collect();
    ledger.issue(&mut conn, b"unavailable", &users[..25], 100);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    make_unavailable(&mut db);
    ledger.issue(&mut conn, b"unavailable", &users[25..], 100);
    std::thread::sleep(Duration::from_millis(500));
    let stopped = persister.terminate(Duration::from_secs(10));
    let pending_after_exit = pending(&server, "persister");
    make_available(&mut db);
    let (status, took) =
        stopped.unwrap_or_else(|| panic!("no exit after SIGTERM\n{}", persister.log()));
    assert!(status.success(), "{status}\n{}", persister.log());
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(5),
        "took {took:?}\n{}",
        persister.log()
    );
    assert_eq!(pending_after_exit, 25, "left pending, not acked");
    persister.restart();
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    wait_no_pending(&server, &persister);
}

/// A frozen MariaDB makes a batch's statements time out after `--db-timeout-ms`: the
/// transaction is rolled back and retried, and the batch lands once the database thaws.
#[test]
fn frozen_database_times_out_and_is_retried() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let persister = Persister::start(&server.url(), &db.url(), &[("db-timeout-ms", "500")]);
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    let users: Vec<Vec<u8>> = (0..40).map(|i| format!("t{i}").into_bytes()).collect();
    ledger.issue(&mut conn, b"thaw", &users[..20], 100);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    db.freeze();
    ledger.issue(&mut conn, b"thaw", &users[20..], 100);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !persister.log().contains("took longer than") {
        if Instant::now() >= deadline {
            db.thaw();
            panic!("no statement timeout while frozen\n{}", persister.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    db.thaw();
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    wait_no_pending(&server, &persister);
}

/// MariaDB killed mid-run: /healthz turns 503, the persister backs off and retries, and when
/// the database is back everything lands, once.
#[test]
fn mariadb_killed_and_restarted_mid_run() {
    let server = Server::start(Flavor::Redis);
    let mut db = MariaDb::start();
    let load = Load::start(&server, coupons("m", 4), "m");
    let persister = Persister::start(&server.url(), &db.url(), &[("batch-size", "200")]);
    std::thread::sleep(Duration::from_millis(800));
    db.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = persister.http_get("/healthz").expect("/healthz answers");
        if status.contains("503") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still healthy with the database down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    db.restart();
    std::thread::sleep(Duration::from_millis(700));
    let ledger = load.stop();
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    wait_no_pending(&server, &persister);
    assert!(persister.metric("coupon_persister_retries_total{stage=\"commit\"}") > 0.0);
    let (status, _) = persister.http_get("/healthz").expect("/healthz answers");
    assert!(status.contains("200"), "{status}");
}

/// Two persisters in one group; one is killed and never comes back. The other takes over its
/// pending entries (and those of a consumer that read and vanished) once they are idle.
#[test]
fn two_persisters_one_killed() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    let users: Vec<Vec<u8>> = (0..100).map(|i| format!("g{i}").into_bytes()).collect();
    ledger.issue(&mut conn, b"ghost", &users, 1000);
    let stream = events_key(b"ghost");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("persister")
        .arg("0")
        .query(&mut conn)
        .expect("XGROUP CREATE");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("persister")
        .arg("vanished")
        .arg("COUNT")
        .arg(30)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut conn)
        .expect("XREADGROUP");

    let flags = [("claim-idle-ms", "1000"), ("batch-size", "100")];
    let load = Load::start(&server, coupons("t", 4), "t");
    let mut first = Persister::start(
        &server.url(),
        &db.url(),
        &[flags[0], flags[1], ("consumer", "c1")],
    );
    // The first takes over the vanished consumer's entries and persists the rest.
    let ghost_rows = || {
        query_rows(
            &db.url(),
            "SELECT COUNT(*) FROM coupon_issuance WHERE coupon = 'ghost'",
        )
        .ok()
        .and_then(|rows| rows.first().map(|row| sqlx::Row::get::<i64, _>(row, 0)))
        .unwrap_or(0)
    };
    let deadline = Instant::now() + LIMIT;
    while ghost_rows() < 100 {
        assert!(
            Instant::now() < deadline,
            "ghost not persisted\n{}",
            first.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    // Its next batches of ghost cannot commit (ghost's rows are locked, and the gap after
    // them): killed with them read and pending.
    let mut lock = db.spawn_sql(
        "BEGIN; SELECT * FROM coupon.coupon_issuance WHERE coupon = 'ghost' FOR UPDATE; \
         SELECT SLEEP(3); COMMIT;",
    );
    std::thread::sleep(Duration::from_millis(500));
    let more: Vec<Vec<u8>> = (0..50).map(|i| format!("h{i}").into_bytes()).collect();
    ledger.issue(&mut conn, b"ghost", &more, 1000);
    std::thread::sleep(Duration::from_millis(700));
    let held = pending_of(&server, "c1");
    first.kill();
    let _ = lock.wait();
    assert!(held >= 50, "the killed persister held {held} entries");

    let second = Persister::start(
        &server.url(),
        &db.url(),
        &[flags[0], flags[1], ("consumer", "c2")],
    );
    std::thread::sleep(Duration::from_millis(1500));
    ledger.merge(load.stop());
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || {
        format!("{}\n{}", first.log(), second.log())
    });
    wait_no_pending(&server, &second);
    assert_eq!(pending_of(&server, "c1"), 0);
    let claimed = second.metric("coupon_persister_events_read_total{source=\"claimed\"}");
    assert!(
        claimed >= held as f64,
        "claimed {claimed} of the {held} the killed one held\n{}",
        second.log()
    );
}

/// Entries pending in the group `persister` in `consumer`'s name, over every stream.
fn pending_of(server: &Server, consumer: &str) -> u64 {
    let mut conn = server.connect();
    let mut total = 0;
    for stream in event_streams(server) {
        let summary: redis::Value = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("persister")
            .query(&mut conn)
            .unwrap_or(redis::Value::Nil);
        let redis::Value::Array(mut parts) = summary else {
            continue;
        };
        if parts.len() < 4 {
            continue;
        }
        let per_consumer: Vec<(String, String)> =
            redis::from_redis_value(parts.remove(3)).unwrap_or_default();
        for (name, count) in per_consumer {
            if name == consumer {
                total += count.parse::<u64>().expect("a count");
            }
        }
    }
    total
}

/// Redis restarted (from its append-only file) between two waves of issues: the persister
/// reconnects and persists both.
#[test]
fn redis_restarted_mid_run() {
    let mut server = Server::builder(Flavor::Redis).aof(true).start();
    let db = MariaDb::start();
    let persister = Persister::start(&server.url(), &db.url(), &[]);
    let mut ledger = Load::start(&server, coupons("r", 3), "r1").stop();
    std::thread::sleep(Duration::from_millis(300));
    let load = Load::start(&server, coupons("r", 3), "r2");
    std::thread::sleep(Duration::from_millis(500));
    ledger.merge(load.stop());
    server.restart(true);
    let deadline = Instant::now() + LIMIT;
    // Answers CONFIG while still loading its AOF; commands wait for PING.
    while redis::cmd("PING")
        .query::<String>(&mut server.connect())
        .is_err()
    {
        assert!(Instant::now() < deadline, "Redis never finished loading");
        std::thread::sleep(Duration::from_millis(20));
    }
    let load = Load::start(&server, coupons("r", 3), "r3");
    std::thread::sleep(Duration::from_millis(700));
    ledger.merge(load.stop());
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    wait_no_pending(&server, &persister);
}

/// Redis restarted *without* its data (no persistence): the persister joins the new streams,
/// and a reborn coupon's events that contradict persisted rows (same seq, other entry) are
/// not written over them but dead-lettered and counted, while other coupons go on.
#[test]
fn redis_losing_its_data_never_overwrites_persisted_rows() {
    let mut server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let persister = Persister::start(
        &server.url(),
        &db.url(),
        &[("max-deliveries", "2"), ("claim-idle-ms", "300")],
    );
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    let users = |prefix: &str, n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{prefix}{i}").into_bytes())
            .collect()
    };
    ledger.issue(&mut conn, b"reborn", &users("a", 3), 100);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());

    server.restart(true);
    let mut conn = server.connect();
    let mut lost = Ledger::default();
    lost.issue(&mut conn, b"reborn", &users("n", 2), 100);
    assert_eq!(lost.rows.len(), 2, "seqs 1 and 2 again");
    ledger.issue(&mut conn, b"fresh", &users("f", 2), 100);
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());

    let deadline = Instant::now() + LIMIT;
    while persister.metric("coupon_persister_dead_lettered_total") < 2.0 {
        assert!(
            Instant::now() < deadline,
            "not dead-lettered\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let letters: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("coupon-persister:dead-letter")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    assert_eq!(letters.len(), 2);
    for (_, fields) in &letters {
        let reason = fields
            .iter()
            .find(|(k, _)| k == "reason")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        assert!(reason.contains("conflict"), "{fields:?}");
    }
    assert!(
        persister.metric("coupon_persister_conflicts_total") >= 2.0,
        "conflicts not counted\n{}",
        persister.log()
    );
    wait_no_pending(&server, &persister);
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
}
