//! The persister at the edges an operator meets in the first month: first starts that run
//! together or are killed, reused seqs, a stream replaced by another type, coupons deleted
//! by the thousand, foreign streams, health while a dependency freezes, configuration that
//! can never work, and where the database URL comes from.

use coupon_tests::{
    assert_persisted, db_rows, events_key, persister_path, query_rows, Flavor, Ledger, MariaDb,
    Persister, Server, TestDb,
};
use redis::Value;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

fn users(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .collect()
}

fn wait_for(what: &str, limit: Duration, log: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(url: &str, sql: &str) -> i64 {
    use sqlx::Row;
    query_rows(url, sql)
        .ok()
        .and_then(|rows| rows.into_iter().next())
        .map(|row| row.get::<i64, _>(0))
        .unwrap_or(-1)
}

fn database_url(db: &MariaDb, name: &str) -> String {
    format!("mysql://root@127.0.0.1:{}/{name}", db.port())
}

/// Lines of `log` containing every one of `words`.
fn lines_with(log: &str, words: &[&str]) -> usize {
    log.lines()
        .filter(|line| words.iter().all(|word| line.contains(word)))
        .count()
}

/// A stream entry: its ID and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

fn dead_letters(conn: &mut redis::Connection) -> Vec<BTreeMap<String, Vec<u8>>> {
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg("coupon-persister:dead-letter")
        .arg("-")
        .arg("+")
        .query(conn)
        .unwrap_or_default();
    entries
        .into_iter()
        .map(|(_, fields)| fields.into_iter().collect())
        .collect()
}

fn migrated_versions(db: &MariaDb, name: &str) -> (i64, i64) {
    let url = database_url(db, name);
    let done = count(
        &url,
        "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 1",
    );
    let dirty = count(
        &url,
        "SELECT COUNT(*) FROM _sqlx_migrations WHERE success = 0",
    );
    (done, dirty)
}

/// Three first starts at once on each of several empty databases: every one succeeds, and
/// each database ends with every migration applied once (MariaDB answers sqlx's own lock,
/// `GET_LOCK(name, -1)`, at once without locking; the persister's lock waits).
#[test]
fn concurrent_first_starts_converge_on_mariadb() {
    let db = MariaDb::start();
    let names: Vec<String> = (0..6).map(|i| format!("first{i}")).collect();
    for name in &names {
        db.execute(&format!("CREATE DATABASE {name}"));
    }
    let mut children = Vec::new();
    for name in &names {
        for _ in 0..3 {
            let child = Command::new(persister_path())
                .args(["migrate", "--database-url", &database_url(&db, name)])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("coupon-persister migrate");
            children.push((name.clone(), child));
        }
    }
    let mut failures = Vec::new();
    for (name, child) in children {
        let out = child.wait_with_output().expect("wait");
        if !out.status.success() {
            failures.push(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} starts failed: {failures:#?}",
        failures.len()
    );
    let shipped = count(
        &database_url(&db, "first0"),
        "SELECT COUNT(*) FROM _sqlx_migrations",
    );
    assert!(shipped >= 2);
    for name in &names {
        assert_eq!(migrated_versions(&db, name), (shipped, 0), "{name}");
    }
}

/// A first start killed half-way through a migration leaves it marked as started
/// (`success = 0`) with part of its schema; the next start repairs it and runs. Shown on the
/// exact state, and with real kill -9s at moments spread over the first 80 ms.
#[test]
fn a_first_start_killed_half_way_is_repaired_on_mariadb() {
    let db = MariaDb::start();
    let server = Server::start(Flavor::Redis);
    db.execute("CREATE DATABASE dirty");
    let url = database_url(&db, "dirty");
    let status = Command::new(persister_path())
        .args(["migrate", "--database-url", &url])
        .status()
        .expect("migrate");
    assert!(status.success());
    // What a kill between creating the first table and the second leaves behind.
    db.execute(
        "DROP TABLE dirty.coupon_checkpoint; \
         DELETE FROM dirty._sqlx_migrations WHERE version > 20261122000001; \
         UPDATE dirty._sqlx_migrations SET success = 0",
    );
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"repaired", &users("u", 5), 10);
    let persister = Persister::start(&server.url(), &url, &[]);
    assert_persisted(Some(&server), &url, &ledger, LIMIT, || persister.log());
    assert!(
        persister.log().contains("running it again"),
        "{}",
        persister.log()
    );
    assert_eq!(migrated_versions(&db, "dirty").1, 0);

    for i in 0..10u64 {
        let name = format!("killed{i}");
        db.execute(&format!("CREATE DATABASE {name}"));
        let url = database_url(&db, &name);
        let mut first = Command::new(persister_path())
            .args(["migrate", "--database-url", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("migrate");
        std::thread::sleep(Duration::from_millis(8 * i));
        let _ = first.kill();
        let _ = first.wait();
        let out = Command::new(persister_path())
            .args(["migrate", "--database-url", &url])
            .output()
            .expect("migrate");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(migrated_versions(&db, &name).1, 0, "{name}");
    }
}

/// After a coupon is deleted and created again, seqs restart at 1: carol's issue and revoke
/// of seq 1 are conflicts with alice's persisted row — never written onto it — counted once
/// each, logged and dead-lettered with the coupon, the seq and both users. A revoke of a seq
/// never issued writes nothing and is dead-lettered too.
#[test]
fn a_reused_seq_is_a_conflict_never_an_update() {
    let server = Server::start(Flavor::Redis);
    let db = TestDb::mariadb();
    let persister = Persister::start(
        &server.url(),
        &db.url(),
        &[("max-deliveries", "3"), ("claim-idle-ms", "300")],
    );
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(
        &mut conn,
        b"reuse",
        &[b"alice".to_vec(), b"bob".to_vec()],
        10,
    );
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());

    let stream = events_key(b"reuse");
    let _: i64 = redis::cmd("DEL")
        .arg("reuse")
        .arg(&stream)
        .query(&mut conn)
        .expect("DEL");
    let reissued: (String, i64, i64) = redis::cmd("COUPON.ISSUE")
        .arg("reuse")
        .arg("carol")
        .arg(10)
        .query(&mut conn)
        .expect("COUPON.ISSUE");
    assert_eq!(reissued.1, 1, "seqs restart at 1");
    let _: i64 = redis::cmd("COUPON.REVOKE")
        .arg("reuse")
        .arg("carol")
        .query(&mut conn)
        .expect("COUPON.REVOKE");
    let never_issued: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("op")
        .arg("revoke")
        .arg("user")
        .arg("dave")
        .arg("seq")
        .arg(9)
        .query(&mut conn)
        .expect("XADD");

    wait_for(
        "three dead letters",
        LIMIT,
        || persister.log(),
        || dead_letters(&mut conn).len() >= 3,
    );
    let letters = dead_letters(&mut conn);
    assert_eq!(letters.len(), 3, "{letters:?}");
    let carol: Vec<_> = letters
        .iter()
        .filter(|l| l.get("user").map(Vec::as_slice) == Some(b"carol"))
        .collect();
    assert_eq!(carol.len(), 2, "{letters:?}");
    for letter in &carol {
        assert_eq!(letter["coupon"], b"reuse");
        assert_eq!(letter["seq"], b"1");
        assert_eq!(letter["persisted_user"], b"alice");
        let reason = String::from_utf8_lossy(&letter["reason"]);
        assert!(
            reason.contains("conflict") && reason.contains("alice"),
            "{reason}"
        );
    }
    let dave = letters
        .iter()
        .find(|l| l["id"] == never_issued.as_bytes())
        .expect("the revoke of seq 9 is dead-lettered");
    assert!(String::from_utf8_lossy(&dave["reason"]).contains("no issue"));

    // alice's row is untouched, and no row was made for seq 9.
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    // Counted and logged once per event, though each was delivered three times.
    assert_eq!(persister.metric("coupon_persister_conflicts_total"), 2.0);
    let log = persister.log();
    assert_eq!(lines_with(&log, &["ALARM", "carol", "alice"]), 2, "{log}");
    assert!(lines_with(&log, &[&never_issued]) <= 2, "{log}");
}

/// A discovered stream replaced by a string: the other coupons go on being persisted at
/// once, the stream is named in the log once. Names are stored as text in SQLite, so they
/// can be queried as text.
#[test]
fn a_stream_replaced_by_a_string_stalls_only_itself() {
    let server = Server::start(Flavor::Redis);
    let db = TestDb::sqlite();
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    for coupon in ["a", "b", "c"] {
        ledger.issue(&mut conn, coupon.as_bytes(), &users("u", 5), 1000);
    }
    // A stream that gets no new entries is read again only by a sweep: sweeps often, so the
    // replaced one is found out within the test (and logged once however many sweeps read it).
    let persister = Persister::start(&server.url(), &db.url(), &[("sweep-interval-ms", "500")]);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());

    let broken = events_key(b"b");
    let _: i64 = redis::cmd("DEL")
        .arg(&broken)
        .query(&mut conn)
        .expect("DEL");
    let _: () = redis::cmd("SET")
        .arg(&broken)
        .arg("x")
        .query(&mut conn)
        .expect("SET");
    let started = Instant::now();
    for round in 0..20 {
        for coupon in ["a", "c"] {
            let more = users(&format!("r{round}-"), 10);
            ledger.issue(&mut conn, coupon.as_bytes(), &more, 1000);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_persisted(None, &db.url(), &ledger, Duration::from_secs(10), || {
        persister.log()
    });
    assert!(started.elapsed() < Duration::from_secs(12));
    let log = persister.log();
    let named = String::from_utf8_lossy(&broken).into_owned();
    // Once that it is no longer read (as gone, or as refused: the probe may come between the
    // DEL and the SET), and at most twice more: when it was joined, and if a batch of it
    // was being acknowledged.
    assert_eq!(lines_with(&log, &[&named, "no longer read"]), 1, "{log}");
    assert!(lines_with(&log, &[&named]) <= 3, "{log}");
    let found = count(
        &db.url(),
        "SELECT COUNT(*) FROM coupon_issuance WHERE coupon = 'a' AND user = 'u1'",
    );
    assert_eq!(found, 1);
}

/// Histogram buckets of `coupon_persister_lag_seconds`: le → count.
fn lag_buckets(persister: &Persister) -> BTreeMap<String, f64> {
    let (_, body) = persister.http_get("/metrics").expect("/metrics");
    body.lines()
        .filter_map(|line| line.strip_prefix("coupon_persister_lag_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"} ")?;
            Some((le.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// 3,000 coupons, one deleted every 100 ms while events keep coming to the others, with
/// trimming every 200 ms: the events are persisted within two seconds, and the first
/// discovery is one log line, not one per stream.
#[test]
fn thousands_of_streams_deletions_and_maintenance_stall_nothing() {
    const COUPONS: usize = 3_000;
    let server = Server::start(Flavor::Redis);
    let db = TestDb::sqlite();
    let mut conn = server.connect();
    let name = |i: usize| format!("many{i}");
    let mut pipe = redis::pipe();
    for i in 0..COUPONS {
        pipe.cmd("COUPON.ISSUE")
            .arg(name(i))
            .arg("first")
            .arg(10)
            .ignore();
    }
    let _: () = pipe.query(&mut conn).expect("COUPON.ISSUE");
    let persister = Persister::start(
        &server.url(),
        &db.url(),
        // Deleted streams get no new entries, so only a sweep finds them gone: often here.
        &[
            ("trim-interval-ms", "200"),
            ("claim-idle-ms", "400"),
            ("sweep-interval-ms", "1000"),
        ],
    );
    wait_for(
        "the first events",
        Duration::from_secs(60),
        || persister.log(),
        || count(&db.url(), "SELECT COUNT(*) FROM coupon_issuance") == COUPONS as i64,
    );
    let before = lag_buckets(&persister);
    let mut ledger = Ledger::default();
    let started = Instant::now();
    let mut deleted = 0;
    while started.elapsed() < Duration::from_secs(10) {
        // Deleted from the top, events to the bottom half.
        let victim = name(COUPONS - 1 - deleted);
        let _: i64 = redis::cmd("DEL")
            .arg(&victim)
            .arg(events_key(victim.as_bytes()))
            .query(&mut conn)
            .expect("DEL");
        deleted += 1;
        let target = name(deleted % (COUPONS / 2));
        ledger.issue(
            &mut conn,
            target.as_bytes(),
            &users(&format!("p{deleted}-"), 5),
            1000,
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let probes = ledger.rows.len() as i64;
    wait_for(
        "the probe events",
        Duration::from_secs(10),
        || persister.log(),
        || {
            count(
                &db.url(),
                "SELECT COUNT(*) FROM coupon_issuance WHERE user LIKE 'p%'",
            ) == probes
        },
    );
    let after = lag_buckets(&persister);
    let delta =
        |le: &str| after.get(le).copied().unwrap_or(0.0) - before.get(le).copied().unwrap_or(0.0);
    let (within, all) = (delta("2"), delta("+Inf"));
    assert!(
        all >= probes as f64,
        "{all} events observed, {probes} issued"
    );
    assert!(
        within >= 0.99 * all,
        "{within} of {all} events persisted within 2 s\n{}",
        persister.log()
    );
    let log = persister.log();
    assert!(lines_with(&log, &["coupon streams"]) <= 3, "{log}");
    wait_for(
        "the deleted streams forgotten by a sweep",
        Duration::from_secs(10),
        || persister.log(),
        || persister.metric("coupon_persister_streams") <= (COUPONS - deleted + 5) as f64,
    );
}

/// Streams of other applications are never joined, even under the default pattern: one
/// not named as a coupon's (`app:events`), one named so but without a coupon (no hash), one
/// whose would-be coupon key is a string. Nothing of theirs is written or dead-lettered,
/// and each is logged once.
#[test]
fn foreign_streams_are_never_adopted() {
    let server = Server::start(Flavor::Redis);
    let db = TestDb::sqlite();
    let mut conn = server.connect();
    let _: () = redis::cmd("SET")
        .arg("y")
        .arg("1")
        .query(&mut conn)
        .expect("SET");
    for (stream, n) in [
        ("app:events", 200),
        ("x:events{x}", 50),
        ("y:events{y}", 20),
    ] {
        let mut pipe = redis::pipe();
        for i in 0..n {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("op")
                .arg("issue")
                .arg("user")
                .arg(format!("f{i}"))
                .arg("seq")
                .arg(i + 1)
                .ignore();
        }
        let _: () = pipe.query(&mut conn).expect("XADD");
    }
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"real", &users("u", 5), 10);
    let persister = Persister::start(&server.url(), &db.url(), &[]);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    std::thread::sleep(Duration::from_millis(1500));
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    assert!(dead_letters(&mut conn).is_empty());
    for stream in ["app:events", "x:events{x}", "y:events{y}"] {
        let groups: Value = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query(&mut conn)
            .expect("XINFO GROUPS");
        assert_eq!(groups, Value::Array(vec![]), "{stream}");
    }
    assert_eq!(persister.metric("coupon_persister_streams"), 1.0);
    assert_eq!(persister.metric("coupon_persister_streams_ignored"), 3.0);
    let log = persister.log();
    assert_eq!(lines_with(&log, &["app:events"]), 1, "{log}");
}

fn health(persister: &Persister) -> (String, String) {
    persister.http_get("/healthz").unwrap_or_default()
}

/// `/healthz` turns 503 within a few seconds of the database or Redis no longer answering,
/// with no traffic at all, and back to 200 once they answer; the backlog, pending and
/// oldest-entry gauges follow events the database cannot take.
#[test]
fn health_and_gauges_follow_the_dependencies() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let persister = Persister::start(&server.url(), &db.url(), &[]);
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"healthy", &users("u", 5), 100);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    wait_for(
        "200",
        LIMIT,
        || persister.log(),
        || health(&persister).0.contains("200"),
    );

    db.freeze();
    let frozen = Instant::now();
    let deadline = Duration::from_secs(5);
    wait_for(
        "503 with the database frozen",
        deadline,
        || persister.log(),
        || health(&persister).0.contains("503"),
    );
    assert!(
        health(&persister).1.contains("database"),
        "{:?}",
        health(&persister)
    );
    ledger.issue(&mut conn, b"healthy", &users("v", 50), 100);
    wait_for(
        "the gauges to show 50 events",
        Duration::from_secs(5),
        || persister.log(),
        || {
            persister.metric("coupon_persister_backlog")
                + persister.metric("coupon_persister_stream_pending")
                >= 50.0
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let oldest = persister.metric("coupon_persister_oldest_unpersisted_seconds");
    db.thaw();
    assert!(
        oldest >= 1.5,
        "oldest unpersisted {oldest} s after {:?}",
        frozen.elapsed()
    );
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    wait_for(
        "200 after the thaw",
        Duration::from_secs(10),
        || persister.log(),
        || health(&persister).0.contains("200"),
    );
    wait_for(
        "the gauges back to 0",
        Duration::from_secs(5),
        || persister.log(),
        || {
            persister.metric("coupon_persister_backlog") == 0.0
                && persister.metric("coupon_persister_oldest_unpersisted_seconds") == 0.0
        },
    );

    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(6000)
        .arg("ALL")
        .query(&mut conn)
        .expect("CLIENT PAUSE");
    wait_for(
        "503 with Redis paused",
        deadline,
        || persister.log(),
        || health(&persister).0.contains("503"),
    );
    assert!(
        health(&persister).1.contains("redis"),
        "{:?}",
        health(&persister)
    );
    wait_for(
        "200 after the pause",
        Duration::from_secs(15),
        || persister.log(),
        || health(&persister).0.contains("200"),
    );
}

/// Exits non-zero within a few seconds, with one ERROR line containing `expected`.
fn stops_with(mut persister: Persister, expected: &str) {
    let status = persister
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("still running\n{}", persister.log()));
    assert!(!status.success(), "{status}\n{}", persister.log());
    let log = persister.log();
    assert_eq!(lines_with(&log, &["ERROR"]), 1, "{log}");
    assert_eq!(lines_with(&log, &["ERROR", expected]), 1, "{log}");
}

/// Configuration that can never work stops the start with one clear line and a non-zero
/// exit: an unknown database, an unsupported URL, Redis refusing our password, the metrics
/// port taken. A Redis that refuses connections may be starting: that is waited for, and a
/// SIGTERM before it ever answered exits non-zero too. A host name is a valid metrics address.
#[test]
fn configuration_that_can_never_work_stops_the_start() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let redis = server.url();
    stops_with(
        Persister::start(&redis, &database_url(&db, "nope"), &[]),
        "Unknown database",
    );
    stops_with(
        Persister::start(&redis, "postgres://db/coupons", &[]),
        "unsupported database URL",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    stops_with(
        Persister::start(&redis, &db.url(), &[("metrics-addr", &addr)]),
        "--metrics-addr",
    );
    drop(taken);

    // A host name.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let named = Persister::start(
        &redis,
        &db.url(),
        &[("metrics-addr", &format!("localhost:{port}"))],
    );
    wait_for(
        "metrics on localhost",
        LIMIT,
        || named.log(),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    drop(named);

    // Refused connections are waited for; stopped before Redis ever answered: non-zero.
    let nobody = format!("redis://127.0.0.1:{port}/");
    let mut waiting = Persister::start(&nobody, &db.url(), &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(waiting.is_running(), "{}", waiting.log());
    let (status, _) = waiting
        .terminate(Duration::from_secs(10))
        .expect("exits on SIGTERM");
    assert!(!status.success(), "{}", waiting.log());
    assert!(
        waiting.log().contains("ever succeeded"),
        "{}",
        waiting.log()
    );

    let mut conn = server.connect();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("secret")
        .query(&mut conn)
        .expect("CONFIG SET requirepass");
    stops_with(Persister::start(&redis, &db.url(), &[]), "NOAUTH");
    let wrong = format!("redis://:wrong@127.0.0.1:{}/", server.port());
    stops_with(Persister::start(&wrong, &db.url(), &[]), "Redis");
}

/// With no database URL given, `DATABASE_URL` (the variable most tools read) is used — the
/// events go to MariaDB, no SQLite file appears — and with only another `*DATABASE_URL`
/// variable set, the start is refused rather than falling back to a SQLite file.
#[test]
fn a_database_url_in_the_environment_is_never_ignored() {
    let server = Server::start(Flavor::Redis);
    let db = MariaDb::start();
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"env", &users("u", 5), 10);
    let persister =
        Persister::start_with_env(&server.url(), None, &[], &[("DATABASE_URL", &db.url())]);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    assert!(!persister.work_dir().join("coupon-persister.db").exists());
    assert_eq!(db_rows(&db.url()).expect("rows").len(), 5);

    let refused =
        Persister::start_with_env(&server.url(), None, &[], &[("APP_DATABASE_URL", &db.url())]);
    let dir = refused.work_dir().to_path_buf();
    stops_with(refused, "APP_DATABASE_URL");
    assert!(!dir.join("coupon-persister.db").exists());
}
