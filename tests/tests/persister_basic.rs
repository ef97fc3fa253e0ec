//! The persister's semantics on a clean run, on MariaDB and on SQLite: issues and revokes
//! land exactly, new coupons are found without a restart, a revoke read before its issue
//! ends right, a poison entry is dead-lettered while its neighbours commit, and trimming
//! never passes what is committed.

use coupon_tests::{
    assert_persisted, db_rows, events_key, pending, persister_path, query_rows, Flavor, Ledger,
    Persister, Server, TestDb,
};
use redis::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);

fn users(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .collect()
}

fn plain_run(db: TestDb) {
    let server = Server::start(Flavor::Redis);
    // `migrate` on its own first; the daemon then finds nothing left to apply.
    let status = std::process::Command::new(persister_path())
        .args(["migrate", "--database-url", &db.url()])
        .status()
        .expect("coupon-persister migrate");
    assert!(status.success(), "migrate failed");
    assert!(db_rows(&db.url()).expect("the table exists").is_empty());

    // Started before any coupon exists: every stream is found while it runs.
    let persister = Persister::start(&server.url(), &db.url(), &[]);
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"sale", &users("u", 30), 25);
    ledger.issue(&mut conn, b"shop{7}:sale", &users("v", 10), 100);
    let binary = vec![b"\x00bin\xff".to_vec(), b"with space".to_vec(), "é".into()];
    ledger.issue(&mut conn, b"bytes", &binary, 10);
    ledger.revoke(&mut conn, b"sale", &[b"u3".to_vec(), b"u7".to_vec()]);
    ledger.revoke(&mut conn, b"bytes", &[b"\x00bin\xff".to_vec()]);
    assert_eq!(ledger.rows.len(), 25 + 10 + 3);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());

    // A coupon created later, and revokes of rows already persisted.
    ledger.issue(&mut conn, b"later", &users("w", 5), 5);
    ledger.revoke(&mut conn, b"sale", &[b"u0".to_vec()]);
    ledger.issue(&mut conn, b"sale", &[b"u3".to_vec()], 25);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());

    let deadline = Instant::now() + LIMIT;
    while pending(&server, "persister") > 0 {
        assert!(
            Instant::now() < deadline,
            "entries stay pending\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = (ledger.rows.len() + ledger.revoked()) as f64;
    assert_eq!(persister.metric("coupon_persister_acked_total"), events);
    assert_eq!(
        persister.metric("coupon_persister_rows_written_total{kind=\"inserted\"}"),
        ledger.rows.len() as f64,
        "one row per issue"
    );
    assert_eq!(
        persister.metric("coupon_persister_duplicates_skipped_total"),
        0.0
    );
    assert_eq!(persister.metric("coupon_persister_streams"), 4.0);
    let (status, body) = persister.http_get("/healthz").expect("/healthz answers");
    assert!(status.contains("200"), "{status} {body}");
}

#[test]
fn plain_run_on_mariadb() {
    plain_run(TestDb::mariadb());
}

#[test]
fn plain_run_on_sqlite() {
    plain_run(TestDb::sqlite());
}

fn xadd(conn: &mut redis::Connection, stream: &[u8], fields: &[(&str, &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    cmd.query(conn).expect("XADD")
}

/// A revoke can be read before the issue it undoes (another consumer holds the issue, or it
/// is claimed): it is written only with its issue — it waits, pending, until the issue is
/// persisted — and the row ends up issued and revoked, whatever the order and whether they
/// share a batch.
fn revoke_before_issue(db: TestDb) {
    let server = Server::start(Flavor::Redis);
    let mut conn = server.connect();
    let stream = events_key(b"early");
    let event = |op: &str, user: &[u8], seq: &str| -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("op", op.as_bytes().to_vec()),
            ("user", user.to_vec()),
            ("seq", seq.as_bytes().to_vec()),
        ]
    };
    let add = |conn: &mut redis::Connection, fields: Vec<(&'static str, Vec<u8>)>| {
        let borrowed: Vec<(&str, &[u8])> = fields.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        xadd(conn, &stream, &borrowed);
    };
    // The coupon's key, as the module leaves it (only a coupon's stream is read).
    let _: () = redis::cmd("HSET")
        .arg("early")
        .arg("")
        .arg(3)
        .query(&mut conn)
        .expect("HSET");
    // seq 1: revoke then issue, one entry per batch; seq 2: both in one batch (second run).
    add(&mut conn, event("revoke", b"ann", "1"));
    add(&mut conn, event("issue", b"ann", "1"));
    add(&mut conn, event("issue", b"bob", "3"));
    let mut ledger = Ledger::default();
    ledger
        .rows
        .insert((b"early".to_vec(), 1), (b"ann".to_vec(), true));
    ledger
        .rows
        .insert((b"early".to_vec(), 3), (b"bob".to_vec(), false));
    let mut persister = Persister::start(&server.url(), &db.url(), &[("batch-size", "1")]);
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    persister.kill();

    add(&mut conn, event("revoke", b"cat", "2"));
    add(&mut conn, event("issue", b"cat", "2"));
    ledger
        .rows
        .insert((b"early".to_vec(), 2), (b"cat".to_vec(), true));
    let persister = Persister::start(&server.url(), &db.url(), &[("linger-ms", "300")]);
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
}

#[test]
fn revoke_before_issue_on_mariadb() {
    revoke_before_issue(TestDb::mariadb());
}

#[test]
fn revoke_before_issue_on_sqlite() {
    revoke_before_issue(TestDb::sqlite());
}

/// Waits up to `LIMIT` for the first dead letters.
fn wait_for_dead_letters(
    conn: &mut redis::Connection,
    persister: &Persister,
) -> Vec<BTreeMap<String, Vec<u8>>> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let letters = dead_letters(conn);
        if !letters.is_empty() {
            return letters;
        }
        assert!(
            Instant::now() < deadline,
            "nothing dead-lettered\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dead_letters(conn: &mut redis::Connection) -> Vec<BTreeMap<String, Vec<u8>>> {
    let entries: Value = redis::cmd("XRANGE")
        .arg("coupon-persister:dead-letter")
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("XRANGE");
    let Value::Array(entries) = entries else {
        return Vec::new();
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(mut parts) = entry else {
                panic!("entry {entry:?}")
            };
            let fields: Vec<Vec<u8>> = redis::from_redis_value(parts.remove(1)).expect("fields");
            fields
                .chunks(2)
                .map(|pair| {
                    (
                        String::from_utf8_lossy(&pair[0]).into_owned(),
                        pair[1].clone(),
                    )
                })
                .collect()
        })
        .collect()
}

/// A malformed entry amid good ones: the good ones commit in the same batch, the bad one is
/// retried until it was delivered `--max-deliveries` times, then dead-lettered and acked.
fn poison_entry(db: TestDb) {
    let server = Server::start(Flavor::Redis);
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"p", &users("a", 5), 100);
    let stream = events_key(b"p");
    let bad_id = xadd(
        &mut conn,
        &stream,
        &[("op", b"issue"), ("user", b"x"), ("seq", b"abc")],
    );
    ledger.issue(&mut conn, b"p", &users("b", 5), 100);
    let persister = Persister::start(
        &server.url(),
        &db.url(),
        &[
            ("max-deliveries", "3"),
            ("claim-idle-ms", "300"),
            ("linger-ms", "200"),
        ],
    );
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());

    let letters = wait_for_dead_letters(&mut conn, &persister);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter["id"], bad_id.as_bytes());
    assert_eq!(letter["stream"], stream);
    assert_eq!(letter["deliveries"], b"3");
    assert_eq!(letter["entry.seq"], b"abc");
    assert!(
        String::from_utf8_lossy(&letter["reason"]).contains("seq"),
        "{letter:?}"
    );
    let deadline = Instant::now() + LIMIT;
    while pending(&server, "persister") > 0 {
        assert!(
            Instant::now() < deadline,
            "still pending\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        persister.metric("coupon_persister_dead_lettered_total"),
        1.0
    );
    // The batch that held it committed its neighbours at the first delivery.
    assert_eq!(persister.metric("coupon_persister_batch_size_count"), 1.0);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
}

#[test]
fn poison_entry_on_mariadb() {
    poison_entry(TestDb::mariadb());
}

#[test]
fn poison_entry_on_sqlite() {
    poison_entry(TestDb::sqlite());
}

/// Dead-lettering that fails at run time (the dead-letter key holds a string, so `XADD`
/// answers WRONGTYPE) does not acknowledge the entry: it stays pending, stored nowhere else.
#[test]
fn failed_dead_lettering_leaves_the_entry_pending() {
    let db = TestDb::sqlite();
    let server = Server::start(Flavor::Redis);
    let mut conn = server.connect();
    let _: () = redis::cmd("SET")
        .arg("coupon-persister:dead-letter")
        .arg("not a stream")
        .query(&mut conn)
        .expect("SET");
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"w", &users("a", 3), 100);
    let stream = events_key(b"w");
    xadd(
        &mut conn,
        &stream,
        &[("op", b"issue"), ("user", b"x"), ("seq", b"abc")],
    );
    let persister = Persister::start(
        &server.url(),
        &db.url(),
        &[("max-deliveries", "2"), ("claim-idle-ms", "200")],
    );
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    let failures = r#"coupon_persister_errors_total{kind="redis_dead_letter"}"#;
    let deadline = Instant::now() + LIMIT;
    while persister.metric(failures) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "dead-lettering was never tried\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pending(&server, "persister"), 1, "{}", persister.log());
    assert_eq!(
        persister.metric("coupon_persister_dead_lettered_total"),
        0.0
    );
    let kind: String = redis::cmd("TYPE")
        .arg("coupon-persister:dead-letter")
        .query(&mut conn)
        .expect("TYPE");
    assert_eq!(kind, "string");
}

/// `XREADGROUP … COUNT count STREAMS stream >`: the IDs delivered.
fn read_group(
    conn: &mut redis::Connection,
    stream: &[u8],
    group: &str,
    consumer: &str,
    count: usize,
) -> Vec<(u64, u64)> {
    let answer: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(conn)
        .expect("XREADGROUP");
    let Value::Array(streams) = answer else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for entry_list in streams {
        let Value::Array(mut parts) = entry_list else {
            continue;
        };
        let Value::Array(entries) = parts.remove(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut fields) = entry else {
                continue;
            };
            let id: String = redis::from_redis_value(fields.remove(0)).expect("id");
            ids.push(parse_id(&id));
        }
    }
    ids
}

fn ack(conn: &mut redis::Connection, stream: &[u8], group: &str, ids: &[(u64, u64)]) {
    for chunk in ids.chunks(1000) {
        let mut xack = redis::cmd("XACK");
        xack.arg(stream).arg(group);
        for (ms, seq) in chunk {
            xack.arg(format!("{ms}-{seq}"));
        }
        let _: u64 = xack.query(conn).expect("XACK");
    }
}

fn parse_id(text: &str) -> (u64, u64) {
    let (ms, seq) = text.split_once('-').expect("an entry ID");
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

/// Under load with trimming every 100 ms: whenever sampled, every entry already trimmed
/// from a stream (all entries below the oldest one left, or all of them when it is empty)
/// is at or below the group's checkpoint in the database, read just after. Which entries
/// existed is known at the end: every event ID is in the database then.
#[test]
fn trimming_never_passes_the_checkpoint() {
    let server = Server::start(Flavor::Redis);
    let db = TestDb::mariadb();
    let coupons: Vec<String> = (0..3).map(|i| format!("trim{i}")).collect();
    let load = coupon_tests::Load::start(&server, coupons.clone(), "t");
    let mut conn = server.connect();
    // Another group on trim1 reads the first entries, acknowledges them and stalls: what it
    // has not read must stay.
    let slow_stream = events_key(b"trim1");
    let deadline = Instant::now() + LIMIT;
    while redis::cmd("XLEN")
        .arg(&slow_stream)
        .query::<u64>(&mut conn)
        .expect("XLEN")
        < 50
    {
        assert!(Instant::now() < deadline, "no load");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&slow_stream)
        .arg("slow")
        .arg("0")
        .query(&mut conn)
        .expect("XGROUP CREATE");
    let slow_ids = read_group(&mut conn, &slow_stream, "slow", "r", 50);
    let slow_last = *slow_ids.last().expect("the slow group read entries");
    ack(&mut conn, &slow_stream, "slow", &slow_ids);

    // Claims only after the sampling below: a second consumer's pending entries stay put.
    let persister = Persister::start(
        &server.url(),
        &db.url(),
        &[
            ("trim-interval-ms", "100"),
            ("batch-size", "50"),
            ("claim-idle-ms", "8000"),
        ],
    );
    // A second consumer of the same group takes entries of trim0 mid-run and holds them:
    // the persister's checkpoint moves past them, trimming must not.
    let held_stream = events_key(b"trim0");
    let deadline = Instant::now() + LIMIT;
    while pending(&server, "persister") == 0
        && query_rows(&db.url(), "SELECT 1 FROM coupon_checkpoint").map_or(true, |r| r.is_empty())
    {
        assert!(
            Instant::now() < deadline,
            "nothing read\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    // It races the persister for new entries: try until it wins some.
    let deadline = Instant::now() + LIMIT;
    let held = loop {
        let held = read_group(&mut conn, &held_stream, "persister", "c2", 5);
        if !held.is_empty() {
            break held;
        }
        assert!(Instant::now() < deadline, "c2 never got an entry");
    };
    let held_lowest = held[0];

    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        for coupon in &coupons {
            let stream = events_key(coupon.as_bytes());
            let info: redis::RedisResult<BTreeMap<String, Value>> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&stream)
                .query(&mut conn);
            let Ok(info) = info else { continue };
            let oldest_kept = match info.get("first-entry") {
                Some(Value::Array(entry)) => {
                    let id: String = redis::from_redis_value(entry[0].clone()).expect("id");
                    Some(parse_id(&id))
                }
                _ => None,
            };
            let last: String =
                redis::from_redis_value(info["last-generated-id"].clone()).expect("last id");
            let last = parse_id(&last);
            let checkpoint = query_rows(
                &db.url(),
                &format!(
                    "SELECT last_ms, last_seq FROM coupon_checkpoint WHERE stream = '{}'",
                    String::from_utf8_lossy(&stream)
                ),
            )
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .map(|row| {
                use sqlx::Row;
                let ms: i64 = row.get(0);
                let seq: i64 = row.get(1);
                (ms as u64, seq as u64)
            });
            // Entries below `gone_below` are trimmed.
            let gone_below = oldest_kept.unwrap_or((last.0, last.1 + 1));
            samples.push((coupon.clone(), gone_below, checkpoint));
        }
    }
    let ledger = load.stop();
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    let mut ids: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for row in db_rows(&db.url()).expect("rows") {
        let coupon = String::from_utf8_lossy(&row.coupon).into_owned();
        for id in [&row.issue_entry_id, &row.revoke_entry_id]
            .into_iter()
            .flatten()
        {
            ids.entry(coupon.clone()).or_default().push(parse_id(id));
        }
    }
    let mut trimmed_samples = 0;
    let mut held_samples = 0;
    let mut slow_samples = 0;
    for (coupon, gone_below, checkpoint) in &samples {
        let trimmed = ids[coupon].iter().filter(|id| *id < gone_below);
        if coupon == "trim0" && checkpoint.is_some_and(|c| c > held_lowest) {
            held_samples += 1;
            assert!(
                held_lowest >= *gone_below,
                "an entry pending in c2 ({held_lowest:?}) was trimmed (below {gone_below:?})"
            );
        }
        if coupon == "trim1" {
            slow_samples += 1;
            let unread = trimmed.clone().filter(|id| **id > slow_last).max();
            assert_eq!(
                unread, None,
                "entries the slow group never read were trimmed"
            );
        }
        if let Some(highest) = trimmed.max() {
            trimmed_samples += 1;
            let checkpoint = checkpoint
                .unwrap_or_else(|| panic!("{coupon}: {highest:?} trimmed before any checkpoint"));
            assert!(
                *highest <= checkpoint,
                "{coupon}: {highest:?} trimmed while the checkpoint was {checkpoint:?}"
            );
        }
    }
    assert!(
        trimmed_samples > 10,
        "{trimmed_samples} of {} samples saw trimming",
        samples.len()
    );
    assert!(
        held_samples > 5,
        "{held_samples}: the checkpoint never passed c2's entries"
    );
    assert!(slow_samples > 5, "{slow_samples} samples of trim1");
    // The slow group catches up; then everything can go.
    loop {
        let ids = read_group(&mut conn, &slow_stream, "slow", "r", 10_000);
        if ids.is_empty() {
            break;
        }
        ack(&mut conn, &slow_stream, "slow", &ids);
    }
    // Trimming happened: once everything is committed the streams shrink to nothing.
    let deadline = Instant::now() + LIMIT;
    loop {
        let left: u64 = coupons
            .iter()
            .map(|c| -> u64 {
                redis::cmd("XLEN")
                    .arg(events_key(c.as_bytes()))
                    .query(&mut conn)
                    .expect("XLEN")
            })
            .sum();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} entries never trimmed\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(persister.metric("coupon_persister_trimmed_total") >= ledger.rows.len() as f64);
}

/// An entry the database itself refuses (here: a user longer than the column, after the
/// column was narrowed) inside a batch: the batch is retried entry by entry, the neighbours
/// commit, and the refused entry is dead-lettered after `--max-deliveries`.
#[test]
fn entry_refused_by_the_database_is_dead_lettered() {
    let server = Server::start(Flavor::Redis);
    let db = coupon_tests::MariaDb::start();
    let status = std::process::Command::new(persister_path())
        .args(["migrate", "--database-url", &db.url()])
        .status()
        .expect("coupon-persister migrate");
    assert!(status.success());
    db.execute("ALTER TABLE coupon.coupon_issuance MODIFY user VARBINARY(16) NOT NULL");
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"narrow", &users("a", 5), 100);
    let long_user = vec![b'x'; 40];
    let bad_id = xadd(
        &mut conn,
        &events_key(b"narrow"),
        &[("op", b"issue"), ("user", &long_user), ("seq", b"99")],
    );
    ledger.issue(&mut conn, b"narrow", &users("b", 5), 100);
    let persister = Persister::start(
        &server.url(),
        &db.url(),
        &[
            ("max-deliveries", "3"),
            ("claim-idle-ms", "300"),
            ("linger-ms", "200"),
        ],
    );
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    let letters = wait_for_dead_letters(&mut conn, &persister);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["id"], bad_id.as_bytes());
    assert_eq!(letters[0]["entry.user"], long_user);
    assert!(
        String::from_utf8_lossy(&letters[0]["reason"]).contains("database refused"),
        "{:?}",
        letters[0]
    );
    let deadline = Instant::now() + LIMIT;
    while pending(&server, "persister") > 0 {
        assert!(
            Instant::now() < deadline,
            "still pending\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
}

/// A pending entry whose payload was deleted from the stream raises the alarm (metric and
/// log) and is never acknowledged; its neighbours are persisted.
#[test]
fn pending_entry_without_payload_raises_the_alarm() {
    let server = Server::start(Flavor::Redis);
    let db = TestDb::sqlite();
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"gone", &users("a", 3), 100);
    let stream = events_key(b"gone");
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("persister")
        .arg("0")
        .query(&mut conn)
        .expect("XGROUP CREATE");
    // Read by `c1` (then it "crashed"), and the middle entry deleted before it came back.
    let read: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("persister")
        .arg("c1")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut conn)
        .expect("XREADGROUP");
    drop(read);
    let ids: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .expect("XRANGE");
    let _: i64 = redis::cmd("XDEL")
        .arg(&stream)
        .arg(&ids[1].0)
        .query(&mut conn)
        .expect("XDEL");
    ledger.rows.remove(&(b"gone".to_vec(), 2));

    let persister = Persister::start(&server.url(), &db.url(), &[]);
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    let deadline = Instant::now() + LIMIT;
    while persister.metric("coupon_persister_pending_payload_missing_total") < 1.0 {
        assert!(Instant::now() < deadline, "no alarm\n{}", persister.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        pending(&server, "persister"),
        1,
        "the gone entry stays pending"
    );
    assert!(persister.log().contains("ALARM"), "{}", persister.log());
}

fn consumers(conn: &mut redis::Connection, stream: &[u8]) -> Vec<(String, i64)> {
    let rows: Vec<BTreeMap<String, Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg("persister")
        .query(conn)
        .expect("XINFO CONSUMERS");
    rows.into_iter()
        .map(|row| {
            (
                redis::from_redis_value(row["name"].clone()).expect("name"),
                redis::from_redis_value(row["pending"].clone()).expect("pending"),
            )
        })
        .collect()
}

/// Consumers of processes gone for good are forgotten once idle for ten claim times with
/// no pending entry: a killed persister's at once, one that read and vanished only after its
/// entries were claimed and persisted.
#[test]
fn idle_consumers_are_forgotten() {
    let server = Server::start(Flavor::Redis);
    let db = TestDb::sqlite();
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"idle", &users("a", 10), 100);
    let stream = events_key(b"idle");
    let mut gone = Persister::start(&server.url(), &db.url(), &[("consumer", "gone")]);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || gone.log());
    gone.kill();
    ledger.issue(&mut conn, b"idle", &users("b", 3), 100);
    let _: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("persister")
        .arg("holding")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut conn)
        .expect("XREADGROUP");
    let holding = consumers(&mut conn, &stream);
    assert!(holding.contains(&("holding".to_string(), 3)), "{holding:?}");

    let watcher = Persister::start(
        &server.url(),
        &db.url(),
        &[
            ("consumer", "watcher"),
            ("claim-idle-ms", "200"),
            ("trim-interval-ms", "100"),
        ],
    );
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = consumers(&mut conn, &stream);
        if left == vec![("watcher".to_string(), 0)] {
            break;
        }
        assert!(Instant::now() < deadline, "{left:?}\n{}", watcher.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || watcher.log());
}

/// Waits for a persister expected to stop by itself; its log.
fn exits_by_itself(persister: &mut Persister) -> String {
    let deadline = Instant::now() + LIMIT;
    while persister.is_running() {
        assert!(
            Instant::now() < deadline,
            "still running\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    persister.log()
}

/// Entries read from many streams at once never make a batch bigger than `--batch-size`:
/// what does not fit waits for the next batch.
#[test]
fn batches_never_exceed_the_batch_size() {
    let db = TestDb::sqlite();
    let server = Server::start(Flavor::Redis);
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    for c in 0..30 {
        ledger.issue(
            &mut conn,
            format!("many{c}").as_bytes(),
            &users("u", 8),
            100,
        );
    }
    let persister = Persister::start(&server.url(), &db.url(), &[("batch-size", "10")]);
    assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
    let batches = persister.metric("coupon_persister_batch_size_count");
    let small = persister.metric(r#"coupon_persister_batch_size_bucket{le="10"}"#);
    assert!(batches >= 24.0, "{batches} batches for 240 events");
    assert_eq!(small, batches, "some batches held more than 10 events");
}

/// A consumer group the checkpoint cannot hold is refused at start, with a clear message.
#[test]
fn a_group_name_too_long_is_refused_at_start() {
    let db = TestDb::sqlite();
    let server = Server::start(Flavor::Redis);
    let group = "g".repeat(256);
    let mut persister = Persister::start(&server.url(), &db.url(), &[("group", &group)]);
    let log = exits_by_itself(&mut persister);
    assert!(log.contains("--group"), "{log}");
}

/// A database whose migration history contradicts the shipped migrations (one edited after
/// it ran) stops the persister with a clear message instead of retrying forever.
#[test]
fn a_broken_migration_history_is_fatal() {
    let db = TestDb::sqlite();
    let server = Server::start(Flavor::Redis);
    let status = std::process::Command::new(persister_path())
        .args(["migrate", "--database-url", &db.url()])
        .status()
        .expect("coupon-persister migrate");
    assert!(status.success(), "migrate failed");
    query_rows(&db.url(), "UPDATE _sqlx_migrations SET checksum = X'00'").expect("UPDATE");
    let mut persister = Persister::start(&server.url(), &db.url(), &[]);
    let log = exits_by_itself(&mut persister);
    assert!(log.contains("do not match this version"), "{log}");
    let status = std::process::Command::new(persister_path())
        .args(["migrate", "--database-url", &db.url()])
        .status()
        .expect("coupon-persister migrate");
    assert!(!status.success(), "migrate succeeded on a broken history");
}

/// Consumer groups differing only in case are two groups in Redis and keep two checkpoints.
#[test]
fn checkpoints_of_groups_differing_in_case_are_apart() {
    let db = TestDb::mariadb();
    let server = Server::start(Flavor::Redis);
    let mut conn = server.connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, b"case", &users("u", 5), 100);
    for group in ["persister", "Persister"] {
        let mut persister = Persister::start(
            &server.url(),
            &db.url(),
            &[("group", group), ("consumer", group)],
        );
        assert_persisted(Some(&server), &db.url(), &ledger, LIMIT, || persister.log());
        let deadline = Instant::now() + LIMIT;
        while pending(&server, group) > 0 || persister.metric("coupon_persister_acked_total") < 5.0
        {
            assert!(Instant::now() < deadline, "not acked\n{}", persister.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        persister.terminate(Duration::from_secs(10));
    }
    let rows = query_rows(
        &db.url(),
        "SELECT HEX(consumer_group) FROM coupon_checkpoint ORDER BY 1",
    )
    .expect("SELECT");
    let groups: Vec<String> = rows
        .iter()
        .map(|row| sqlx::Row::get::<String, _>(row, 0))
        .collect();
    assert_eq!(groups.len(), 2, "{groups:?}");
}
