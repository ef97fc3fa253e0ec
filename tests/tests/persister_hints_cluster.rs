//! The change index is only a hint, on a cluster too: with sweeps and scans turned off (an
//! hour apart), a coupon stream whose slot moves to another primary while its hint is
//! pending, and a failover that loses the hints the persister had learned, still leave every
//! event in MariaDB exactly once and nothing pending.

use coupon_layout::hash_slot;
use coupon_tests::{assert_persisted, key_in_slot, pending, Cluster, Flavor, Ledger, MariaDb};
use coupon_tests::{on_every_server, Persister, Server};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);
const GROUP: &str = "persister";

on_every_server!(
    a_stream_resharded_while_its_hint_is_pending_lands_once,
    a_failover_that_loses_hints_loses_nothing,
);

/// Only the change index can tell the persister of new entries or streams: sweeps and
/// scans come an hour apart.
fn start_persister(cluster: &Cluster, db: &MariaDb) -> Persister {
    Persister::start(
        &cluster.nodes[0].url(),
        &db.url(),
        &[
            ("topology-refresh-ms", "300"),
            ("discover-interval-ms", "3600000"),
            ("sweep-interval-ms", "3600000"),
        ],
    )
}

fn users(tag: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{tag}-{i}").into_bytes()).collect()
}

/// Freezes (`SIGSTOP`) a process until dropped: its connections stay open, it does nothing.
struct Frozen(libc::pid_t);

impl Frozen {
    fn freeze(persister: &Persister) -> Frozen {
        let pid = persister.pid().expect("the persister runs") as libc::pid_t;
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// `field:value` of `INFO replication` on `node`.
fn replication(node: &Server, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut node.connect())
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(|value| value.trim().to_string())
}

/// Waits until the replica of `primary` has all the primary has written.
fn wait_replicated(cluster: &Cluster, primary: usize) {
    let port = cluster.nodes[primary].port().to_string();
    let offset = |node: &Server| -> u64 {
        replication(node, "master_repl_offset")
            .and_then(|offset| offset.parse().ok())
            .unwrap_or(0)
    };
    let target = offset(&cluster.nodes[primary]);
    let replica = cluster
        .nodes
        .iter()
        .find(|node| replication(node, "master_port").as_deref() == Some(port.as_str()))
        .expect("the primary has a replica");
    let deadline = Instant::now() + LIMIT;
    while offset(replica) < target {
        assert!(Instant::now() < deadline, "the replica lags behind");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every key of `slot` on `node`.
fn keys_in_slot(node: &Server, slot: u16) -> Vec<Vec<u8>> {
    redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(1000)
        .query(&mut node.connect())
        .expect("CLUSTER GETKEYSINSLOT")
}

/// Moves `slot` by hand, stopping after the keys moved (the target still `IMPORTING`) unless
/// `finish`.
fn move_slot(cluster: &Cluster, slot: u16, from: usize, to: usize, finish: bool) {
    cluster.begin_slot_move(slot, from, to);
    let keys = keys_in_slot(&cluster.nodes[from], slot);
    assert!(!keys.is_empty(), "slot {slot} holds keys");
    let keys: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    cluster.migrate(from, to, &keys);
    if finish {
        cluster.finish_slot_move(slot, from, to);
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

/// Two slots of one primary, each with a coupon the persister already reads and a brand-new
/// one, get new entries while the persister is frozen. The first slot moves to another
/// primary entirely before the persister thaws: only the target's index names its streams.
/// The second slot's keys move, but the persister thaws while the target is still
/// `IMPORTING` (it hears of the streams there before that node serves them, and of them on
/// the source, which now redirects), and only then does the move finish. Every event lands
/// exactly once, with nothing left pending.
fn a_stream_resharded_while_its_hint_is_pending_lands_once(flavor: Flavor) {
    let cluster = Cluster::start(flavor);
    let db = MariaDb::start();
    let primaries = cluster.primaries();
    let (from, to) = (primaries[0], primaries[1]);
    let lowest = *cluster.slots_of(from)[0].start();
    let slots = [lowest, lowest + 1];
    let known: Vec<String> = slots.iter().map(|&s| key_in_slot("known", s)).collect();
    let fresh: Vec<String> = slots.iter().map(|&s| key_in_slot("fresh", s)).collect();
    let mut conn = cluster.nodes[from].connect();
    let mut ledger = Ledger::default();
    for coupon in &known {
        ledger.issue(&mut conn, coupon.as_bytes(), &users("before", 10), i64::MAX);
    }
    let persister = start_persister(&cluster, &db);
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());

    let frozen = Frozen::freeze(&persister);
    for coupon in known.iter().chain(&fresh) {
        ledger.issue(&mut conn, coupon.as_bytes(), &users("while", 30), i64::MAX);
    }
    move_slot(&cluster, slots[0], from, to, true);
    move_slot(&cluster, slots[1], from, to, false);
    drop(frozen);
    // Long enough for the persister to look at every node's index several times.
    std::thread::sleep(Duration::from_millis(1500));
    cluster.finish_slot_move(slots[1], from, to);
    for coupon in known.iter().chain(&fresh) {
        assert_eq!(cluster.owner_of(hash_slot(coupon.as_bytes())), to);
    }
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    coupon_tests::assert_redis_matches(&cluster.nodes[to], &ledger);
    wait_no_pending(&cluster, &persister);
}

/// A primary's coupons (one the persister reads, one brand-new) get new entries, replicated,
/// and the primary then pauses writes (`CLIENT PAUSE WRITE`: `COUPON.CHANGES` is read-only,
/// `XREADGROUP` is not), so the persister hears of them from the index but cannot read them.
/// The primary is killed (-9) and its replica takes over, with an index of its own (another
/// epoch): the hints the persister held are gone with the node. Every event lands exactly
/// once, with nothing left pending.
fn a_failover_that_loses_hints_loses_nothing(flavor: Flavor) {
    let mut cluster = Cluster::builder(flavor)
        .replicas(1)
        .node_timeout(1000)
        .start();
    let db = MariaDb::start();
    let primary = cluster.primaries()[0];
    let lowest = *cluster.slots_of(primary)[0].start();
    let (known, fresh) = (key_in_slot("known", lowest), key_in_slot("fresh", lowest));
    let mut conn = cluster.nodes[primary].connect();
    let mut ledger = Ledger::default();
    ledger.issue(&mut conn, known.as_bytes(), &users("before", 10), i64::MAX);
    let persister = start_persister(&cluster, &db);
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());

    // The issues and the pause in one transaction: the persister cannot read in between.
    let mut pipe = redis::pipe();
    pipe.atomic();
    let mut issued = Vec::new();
    for coupon in [&known, &fresh] {
        for user in users("while", 30) {
            pipe.cmd("COUPON.ISSUE")
                .arg(coupon)
                .arg(&user)
                .arg(i64::MAX);
            issued.push((coupon.as_bytes().to_vec(), user));
        }
    }
    pipe.cmd("CLIENT")
        .arg("PAUSE")
        .arg(60_000)
        .arg("WRITE")
        .ignore();
    let replies: Vec<(String, Option<i64>, i64)> = pipe.query(&mut conn).expect("MULTI");
    for ((coupon, user), (status, seq, _)) in issued.into_iter().zip(replies) {
        assert_eq!(status, "ISSUED");
        let seq = seq.expect("an ISSUED reply has a seq");
        ledger.rows.insert((coupon, seq), (user, false));
    }
    // (`WAIT` would only time out: a pause holds back replicas' acknowledgements.)
    wait_replicated(&cluster, primary);
    // Long enough for the persister to hear of them from the index, several times over.
    std::thread::sleep(Duration::from_millis(1000));
    let stuck = pending(&cluster.nodes[primary], GROUP);
    assert_eq!(stuck, 0, "nothing was read during the pause");
    assert_eq!(cluster.kill_primary(0), primary);
    cluster.wait_for_failover(LIMIT);
    assert_persisted(None, &db.url(), &ledger, LIMIT, || persister.log());
    let owner = cluster.owner_of(lowest);
    coupon_tests::assert_redis_matches(&cluster.nodes[owner], &ledger);
    wait_no_pending(&cluster, &persister);
}
