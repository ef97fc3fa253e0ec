//! Resharding while a sale runs, on a real three-master cluster: the coupon's slot moves to
//! another node while clients keep clicking through one shared [`coupon_sdk::Cluster`] — with
//! `redis-cli --cluster reshard`, and by hand with the coupon and its event stream arriving in
//! separate `MIGRATE` batches (stream first, then coupon first).
//!
//! While the two keys are on different nodes nothing may change: writes are answered
//! `-TRYAGAIN` (or `-ASK` towards the coupon) and retried by the client, reads still answer.
//! Afterwards the sale must be whole on the new owner: seqs 1..=stock once each, every winner
//! holding the seq they were told, one event per issue, and nothing left behind.

use coupon_layout::{hash_slot, CouponKey};
use coupon_sdk::{Backend, Coupons, Outcome};
use coupon_tests::{key_in_slot, on_every_server, Cluster, Flavor};
use futures::future::join_all;
use redis::{RedisResult, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Clients clicking as new users, and clients clicking again as users who already won.
const NEWCOMERS: usize = 6;
const REPEATERS: usize = 2;
/// Coupons released at each step of a move; each tranche is raced until sold out.
const TRANCHE: u64 = 25;
/// How long clients click at a coupon whose two keys are on different nodes.
const SPLIT: Duration = Duration::from_millis(300);
/// Keys sharing the coupon's slot in the `redis-cli` test, so its move lasts long enough
/// to click through.
const JUNK: usize = 1_500;
/// A sale that needs more clicks than this has gone wrong; the clients stop.
const MAX_CLICKS: usize = 200_000;
/// The SDK's client on its cluster connection.
type Client = Coupons<coupon_sdk::Cluster>;

/// The module's answer to a write while the coupon's keys are split between two nodes.
const TRYAGAIN: &str = "TRYAGAIN the coupon's keys are being migrated between nodes; retry";

/// Which of the coupon's keys `MIGRATE` carries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    StreamFirst,
    CouponFirst,
}

/// One click and when it happened, in steps of the move (see [`Sale::enter_step`]).
struct Click {
    user: String,
    limit: u64,
    sent: u32,
    answered: u32,
    outcome: Result<Outcome, String>,
}

/// A sale in progress, shared by the clients and the test moving its slot. Stock is released
/// in tranches (the limit sent with each click), so the sale runs into its limit at every
/// step of the move.
struct Sale {
    coupon: String,
    stock: AtomicU64,
    step: AtomicU32,
    closed: AtomicBool,
    newcomers: AtomicU64,
    highest_seq: AtomicU64,
    winners: Mutex<Vec<String>>,
    clicks: Mutex<Vec<Click>>,
}

impl Sale {
    fn new(coupon: &str) -> Arc<Sale> {
        Arc::new(Sale {
            coupon: coupon.to_string(),
            stock: AtomicU64::new(0),
            step: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            newcomers: AtomicU64::new(0),
            highest_seq: AtomicU64::new(0),
            winners: Mutex::new(Vec::new()),
            clicks: Mutex::new(Vec::new()),
        })
    }

    fn events(&self) -> Vec<u8> {
        CouponKey::new(self.coupon.as_bytes())
            .expect("a coupon key")
            .events_key()
    }

    fn slot(&self) -> u16 {
        hash_slot(self.coupon.as_bytes())
    }

    fn stock(&self) -> u64 {
        self.stock.load(Ordering::SeqCst)
    }

    fn highest_seq(&self) -> u64 {
        self.highest_seq.load(Ordering::SeqCst)
    }

    /// Marks a step of the move; clicks record the step they were sent and answered in.
    fn enter_step(&self) -> u32 {
        self.step.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn release(&self, more: u64) {
        self.stock.fetch_add(more, Ordering::SeqCst);
    }

    fn release_and_sell_out(&self) {
        self.release(TRANCHE);
        self.wait_until_sold_out();
    }

    /// Waits until clients have taken every coupon released so far.
    fn wait_until_sold_out(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.highest_seq() < self.stock() {
            assert!(
                !self.closed.load(Ordering::SeqCst),
                "the clients gave up after {MAX_CLICKS} clicks: {:?}",
                self.last_errors()
            );
            assert!(
                Instant::now() < deadline,
                "{} of {} coupons issued after 30 s; last clicks: {:?}",
                self.highest_seq(),
                self.stock(),
                self.last_errors()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn a_winner(&self, n: usize) -> Option<String> {
        let winners = self.winners.lock().unwrap();
        (!winners.is_empty()).then(|| winners[n * 7919 % winners.len()].clone())
    }

    fn record(&self, click: Click) {
        if let Ok(Outcome::Issued { seq }) = click.outcome {
            self.winners.lock().unwrap().push(click.user.clone());
            self.highest_seq.fetch_max(seq, Ordering::SeqCst);
        }
        let mut clicks = self.clicks.lock().unwrap();
        clicks.push(click);
        if clicks.len() >= MAX_CLICKS {
            self.closed.store(true, Ordering::SeqCst);
        }
    }

    fn last_errors(&self) -> Vec<String> {
        let clicks = self.clicks.lock().unwrap();
        let errors = clicks.iter().filter_map(|c| c.outcome.as_ref().err());
        errors.take(5).cloned().collect()
    }

    /// How many clicks were sent and answered between the steps `from` and `until`, and how
    /// many of those issued a coupon or told a holder their seq.
    fn clicks_between(&self, from: u32, until: u32) -> (usize, usize, usize) {
        let clicks = self.clicks.lock().unwrap();
        let within = clicks
            .iter()
            .filter(|c| c.sent >= from && c.answered < until);
        within.fold((0, 0, 0), |(all, issued, repeated), click| {
            match click.outcome {
                Ok(Outcome::Issued { .. }) => (all + 1, issued + 1, repeated),
                Ok(Outcome::AlreadyIssued { .. }) => (all + 1, issued, repeated + 1),
                _ => (all + 1, issued, repeated),
            }
        })
    }
}

/// Clicks until the sale closes: as a new user each time, or as a user who already won.
async fn click_until_closed(sale: Arc<Sale>, coupons: Client, repeater: bool) {
    let mut n = 0;
    while !sale.closed.load(Ordering::SeqCst) {
        n += 1;
        let user = if repeater {
            sale.a_winner(n)
        } else {
            Some(format!(
                "user-{}",
                sale.newcomers.fetch_add(1, Ordering::SeqCst)
            ))
        };
        let Some(user) = user else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let (limit, sent) = (sale.stock(), sale.step.load(Ordering::SeqCst));
        let outcome = coupons.issue(&sale.coupon, &user, limit).await;
        let writes_nothing = repeater || !matches!(outcome, Ok(Outcome::Issued { .. }));
        sale.record(Click {
            user,
            limit,
            sent,
            answered: sale.step.load(Ordering::SeqCst),
            outcome: outcome.map_err(|e| e.to_string()),
        });
        if writes_nothing {
            // Cheap answers (and errors) in a tight loop would crowd out the servers.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The clients of one sale, running on their own runtime while the test drives the move.
struct Crowd {
    runtime: Runtime,
    coupons: Client,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Crowd {
    fn join(cluster: &Cluster, sale: &Arc<Sale>, backend: Backend) -> Crowd {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        // Every client shares one connection, with the SDK's default retries.
        let connection = runtime
            .block_on(coupon_sdk::Cluster::connect(cluster.urls()))
            .expect("connect to the cluster");
        let coupons = Coupons::with_backend(connection, backend);
        let clients = (0..NEWCOMERS + REPEATERS)
            .map(|n| {
                let task = click_until_closed(sale.clone(), coupons.clone(), n >= NEWCOMERS);
                runtime.spawn(task)
            })
            .collect();
        Crowd {
            runtime,
            coupons,
            clients,
        }
    }

    fn leave(self, sale: &Sale) -> Runtime {
        sale.closed.store(true, Ordering::SeqCst);
        for client in self.runtime.block_on(join_all(self.clients)) {
            client.expect("a client task");
        }
        self.runtime
    }
}

/// The steps of one move, as numbered by [`Sale::enter_step`].
struct Move {
    marked: u32,
    split: u32,
    joined: u32,
    done: u32,
}

/// Moves the sale's slot from `from` to `to` by hand, one key per `MIGRATE`, with clients
/// clicking at every step: while the slot is marked, while the keys are split, once both are
/// on the target, and after.
fn move_by_hand(cluster: &Cluster, sale: &Sale, from: usize, to: usize, order: Order) -> Move {
    let (coupon, events) = (sale.coupon.as_bytes().to_vec(), sale.events());
    let (first, second) = match order {
        Order::StreamFirst => (&events, &coupon),
        Order::CouponFirst => (&coupon, &events),
    };
    let marked = sale.enter_step();
    cluster.begin_slot_move(sale.slot(), from, to);
    // Both keys still on the source, which serves them while MIGRATING.
    sale.release_and_sell_out();

    cluster.migrate(from, to, &[first]);
    let split = sale.enter_step();
    let digests = (cluster.nodes[from].digest(), cluster.nodes[to].digest());
    let issued = sale.highest_seq();
    writes_are_turned_away_while_split(cluster, sale, from, to, order);
    let told_to_retry = tryagains(cluster, from) + tryagains(cluster, to);
    sale.release(TRANCHE);
    std::thread::sleep(SPLIT);
    assert_eq!(
        (cluster.nodes[from].digest(), cluster.nodes[to].digest()),
        digests,
        "nothing may change while the coupon and its stream are on different nodes"
    );
    assert_eq!(
        sale.highest_seq(),
        issued,
        "a coupon was issued while split"
    );
    assert!(
        tryagains(cluster, from) + tryagains(cluster, to) > told_to_retry,
        "the clients' writes were not told TRYAGAIN while split"
    );

    cluster.migrate(from, to, &[second]);
    let joined = sale.enter_step();
    // The tranche released while split is issued on the target, the clients sent there by -ASK.
    sale.wait_until_sold_out();
    cluster.finish_slot_move(sale.slot(), from, to);
    let done = sale.enter_step();
    Move {
        marked,
        split,
        joined,
        done,
    }
}

/// Raw commands to both nodes while the keys are split: reads answer where the coupon is,
/// writes are told to retry, and a source without the coupon sends the client to it.
fn writes_are_turned_away_while_split(
    cluster: &Cluster,
    sale: &Sale,
    from: usize,
    to: usize,
    order: Order,
) {
    let holder = sale.a_winner(0).expect("someone won before the split");
    let seq = sale.seq_told_to(&holder);
    let (with_coupon, with_stream) = match order {
        Order::StreamFirst => (from, to),
        Order::CouponFirst => (to, from),
    };
    let mut at_coupon = Probe::new(cluster, with_coupon, with_coupon == to);
    let mut at_stream = Probe::new(cluster, with_stream, with_stream == to);
    let coupon = sale.coupon.as_str();
    assert_eq!(
        at_coupon.send(&["COUPON.ISSUE", coupon, &holder, "1000000"]),
        format!("DUPLICATE {seq} {}", sale.highest_seq())
    );
    assert_eq!(
        at_coupon.send(&["COUPON.CHECK", coupon, &holder]),
        seq.to_string()
    );
    assert_eq!(
        at_coupon.send(&["COUPON.ISSUE", coupon, "probe", "1000000"]),
        TRYAGAIN
    );
    assert_eq!(
        at_coupon.send(&["COUPON.REVOKE", coupon, &holder]),
        TRYAGAIN
    );
    assert_eq!(
        at_coupon.send(&[
            "COUPON.RESTORE",
            coupon,
            "0",
            "probe",
            "4611686018427387903"
        ]),
        TRYAGAIN
    );
    let expected = if with_stream == from {
        format!("ASK {} {}", sale.slot(), cluster.address(to))
    } else {
        TRYAGAIN.to_string()
    };
    assert_eq!(
        at_stream.send(&["COUPON.ISSUE", coupon, "probe", "1000000"]),
        expected
    );
    // The Lua fallback declares both keys: Redis itself answers TRYAGAIN on either node.
    let events = String::from_utf8(sale.events()).expect("a UTF-8 key");
    for probe in [&mut at_coupon, &mut at_stream] {
        let script = [
            "EVAL",
            coupon_sdk::SCRIPT_SOURCE,
            "2",
            coupon,
            &events,
            "issue",
            "probe",
            "1000000",
        ];
        let answer = probe.send(&script);
        assert!(answer.starts_with("TRYAGAIN "), "{answer}");
    }
}

impl Sale {
    fn seq_told_to(&self, user: &str) -> u64 {
        let clicks = self.clicks.lock().unwrap();
        clicks
            .iter()
            .filter(|c| c.user == user)
            .find_map(|c| c.outcome.as_ref().ok()?.seq())
            .expect("the user won")
    }
}

/// A plain connection to one node, sending `ASKING` before each command if it is the target.
struct Probe {
    connection: redis::Connection,
    asking: bool,
}

impl Probe {
    fn new(cluster: &Cluster, node: usize, asking: bool) -> Probe {
        Probe {
            connection: cluster.nodes[node].connect(),
            asking,
        }
    }

    fn send(&mut self, words: &[&str]) -> String {
        if self.asking {
            let _: () = redis::cmd("ASKING").query(&mut self.connection).unwrap();
        }
        let mut command = redis::cmd(words[0]);
        for word in &words[1..] {
            command.arg(*word);
        }
        one_line(command.query(&mut self.connection))
    }
}

/// A reply as one line: `DUPLICATE 3 7`, `1`, `TRYAGAIN …`, `ASK 1974 127.0.0.1:7001`.
fn one_line(reply: RedisResult<Value>) -> String {
    fn word(value: &Value) -> String {
        match value {
            Value::SimpleString(text) => text.clone(),
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::Int(n) => n.to_string(),
            Value::Nil => "nil".to_string(),
            Value::Array(items) => items.iter().map(word).collect::<Vec<_>>().join(" "),
            other => format!("{other:?}"),
        }
    }
    match reply {
        Ok(value) => word(&value),
        Err(e) => format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or("")),
    }
}

/// How many `-TRYAGAIN` replies the node has sent since it started.
fn tryagains(cluster: &Cluster, node: usize) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("errorstats")
        .query(&mut cluster.nodes[node].connect())
        .expect("INFO errorstats");
    stats
        .lines()
        .find_map(|line| line.strip_prefix("errorstat_TRYAGAIN:count="))
        .map_or(0, |count| count.trim().parse().expect("a count"))
}

/// After the sale: every click answered; seqs 1..=stock once each, none above the limit its
/// click was sent with; every winner (and every holder told their seq again) holds that seq
/// on the new owner; one issue event per seq there; the slot wholly on `owner`, which every
/// other node sends clients to.
fn assert_the_sale_is_whole(
    cluster: &Cluster,
    sale: &Sale,
    runtime: &Runtime,
    coupons: &Client,
    owner: usize,
    keys_in_slot: i64,
) {
    let clicks = sale.clicks.lock().unwrap();
    let errors: Vec<&String> = clicks
        .iter()
        .filter_map(|c| c.outcome.as_ref().err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} clicks failed: {errors:?}",
        errors.len()
    );
    let mut winners: BTreeMap<String, u64> = BTreeMap::new();
    for click in clicks.iter() {
        if let Ok(Outcome::Issued { seq }) = click.outcome {
            assert!(
                seq <= click.limit,
                "seq {seq} issued under limit {}",
                click.limit
            );
            let earlier = winners.insert(click.user.clone(), seq);
            assert!(earlier.is_none(), "{} was issued twice", click.user);
        }
    }
    for click in clicks.iter() {
        if let Ok(Outcome::AlreadyIssued { seq }) = click.outcome {
            assert_eq!(winners.get(&click.user), Some(&seq), "{}", click.user);
        }
    }
    let mut seqs: Vec<u64> = winners.values().copied().collect();
    seqs.sort_unstable();
    let stock = sale.stock();
    assert!(
        seqs.iter().copied().eq(1..=stock),
        "seqs are not 1..={stock} once each"
    );

    let mut on_owner = cluster.nodes[owner].connect();
    let coupon = sale.coupon.as_str();
    let hash: BTreeMap<String, u64> = redis::cmd("HGETALL")
        .arg(coupon)
        .query(&mut on_owner)
        .unwrap();
    let mut expected = winners.clone();
    expected.insert(String::new(), stock);
    assert_eq!(hash, expected, "the coupon on the new owner");
    runtime.block_on(async {
        for (user, seq) in &winners {
            let held = coupons
                .check(coupon, user)
                .await
                .expect("HGET through the cluster");
            assert_eq!(held, Some(*seq), "{user} through the cluster client");
        }
    });
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(sale.events())
        .arg("-")
        .arg("+")
        .query(&mut on_owner)
        .unwrap();
    let events: Vec<String> = entries
        .iter()
        .map(|(_, fields)| fields.iter().map(|(f, v)| format!("{f}={v} ")).collect())
        .collect();
    let mut by_seq: Vec<(&u64, &String)> = winners.iter().map(|(u, s)| (s, u)).collect();
    by_seq.sort();
    let issues: Vec<String> = by_seq
        .iter()
        .map(|(seq, user)| format!("op=issue user={user} seq={seq} "))
        .collect();
    assert_eq!(events, issues, "one event per issue, in seq order");

    assert_eq!(cluster.owner_of(sale.slot()), owner);
    for node in 0..cluster.nodes.len() {
        let keys: i64 = redis::cmd("CLUSTER")
            .arg("COUNTKEYSINSLOT")
            .arg(sale.slot())
            .query(&mut cluster.nodes[node].connect())
            .unwrap();
        let expected = if node == owner { keys_in_slot } else { 0 };
        assert_eq!(keys, expected, "keys of the slot on node {node}");
        if node != owner {
            let answer = Probe::new(cluster, node, false).send(&["COUPON.CHECK", coupon, "x"]);
            let moved = format!("MOVED {} {}", sale.slot(), cluster.address(owner));
            assert_eq!(answer, moved, "node {node} routes the slot");
        }
    }
}

/// One sale, its slot moved twice by hand: node 0 → 1 with the stream first, then 1 → 2 with
/// the coupon first. `tagged`: the coupon key has a hash tag (its stream is then `K:events`).
fn a_sale_survives_moves_by_hand(flavor: Flavor, backend: Backend, tagged: bool) {
    let cluster = Cluster::start(flavor);
    let name = key_in_slot("sale", *cluster.slots_of(0)[0].start());
    // A tagged key (`shop{sale-N}`, stream `shop{sale-N}:events`) lives in the same slot.
    let coupon = if tagged {
        format!("shop{{{name}}}")
    } else {
        name
    };
    let sale = Sale::new(&coupon);
    let crowd = Crowd::join(&cluster, &sale, backend);
    sale.release_and_sell_out();
    let moves = [
        move_by_hand(&cluster, &sale, 0, 1, Order::StreamFirst),
        move_by_hand(&cluster, &sale, 1, 2, Order::CouponFirst),
    ];
    sale.release_and_sell_out();
    let coupons = crowd.coupons.clone();
    let runtime = crowd.leave(&sale);

    for (n, step) in moves.iter().enumerate() {
        let (during, issued, _) = sale.clicks_between(step.marked, step.done);
        assert!(
            issued > 0,
            "move {n}: {during} clicks during the move, none issued"
        );
        let (_, issued, repeated) = sale.clicks_between(step.split, step.joined);
        assert_eq!(issued, 0, "move {n}: issued while split");
        if backend == Backend::Module {
            // The module answers a holder from the coupon alone; the script needs both keys.
            assert!(repeated > 0, "move {n}: no holder was answered while split");
        }
    }
    assert_the_sale_is_whole(&cluster, &sale, &runtime, &coupons, 2, 2);
}

/// `redis-cli --cluster reshard` moves the coupon's slot, one key per `MIGRATE`, while clients
/// click and stock keeps being released.
fn a_sale_survives_redis_cli_reshard(flavor: Flavor, backend: Backend) {
    let cluster = Cluster::start(flavor);
    let (from, to) = (0, 1);
    // redis-cli moves the source's lowest slots first: put the coupon in the lowest.
    let slot = *cluster.slots_of(from)[0].start();
    let coupon = key_in_slot("sale", slot);
    fill_slot(&cluster, from, &coupon);
    let sale = Sale::new(&coupon);
    let crowd = Crowd::join(&cluster, &sale, backend);
    sale.release_and_sell_out();

    let mut reshard = cluster.spawn_reshard(from, to, 1, 1);
    let (mut marked, mut done) = (None, None);
    let mut released = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while reshard.try_wait().expect("redis-cli runs").is_none() {
        assert!(Instant::now() < deadline, "the reshard took over 60 s");
        let moving = cluster.is_moving(from, slot);
        if moving && marked.is_none() {
            marked = Some(sale.enter_step());
        }
        if !moving && marked.is_some() && done.is_none() {
            done = Some(sale.enter_step());
        }
        if moving && released.elapsed() > Duration::from_millis(20) {
            sale.release(5);
            released = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let output = reshard.wait_with_output().expect("redis-cli's output");
    let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "redis-cli failed:\n{said}");
    assert!(
        !said.contains("BUSYKEY") && !said.contains("[ERR]"),
        "redis-cli:\n{said}"
    );
    let marked = marked.expect("the slot was never seen MIGRATING: the move was too quick");
    let done = done.unwrap_or_else(|| sale.enter_step());
    sale.release_and_sell_out();
    let coupons = crowd.coupons.clone();
    let runtime = crowd.leave(&sale);

    let (during, issued, _) = sale.clicks_between(marked, done);
    assert!(
        issued > 0,
        "{during} clicks during the reshard, none issued"
    );
    let keys_in_slot = 2 + JUNK as i64;
    assert_the_sale_is_whole(&cluster, &sale, &runtime, &coupons, to, keys_in_slot);
}

/// Other keys in the coupon's slot (its name as their hash tag), for redis-cli to move too.
fn fill_slot(cluster: &Cluster, node: usize, coupon: &str) {
    let mut pipe = redis::pipe();
    for n in 0..JUNK {
        pipe.cmd("SET")
            .arg(format!("{{{coupon}}}:other:{n}"))
            .arg(n)
            .ignore();
    }
    let _: () = pipe.query(&mut cluster.nodes[node].connect()).unwrap();
}

/// The module's commands are probed in both tests: here with a tagged key, there without.
fn moves_by_hand_with_the_module(flavor: Flavor) {
    a_sale_survives_moves_by_hand(flavor, Backend::Module, true);
}

fn moves_by_hand_with_the_script(flavor: Flavor) {
    a_sale_survives_moves_by_hand(flavor, Backend::Script, false);
}

fn redis_cli_reshard_with_the_module(flavor: Flavor) {
    a_sale_survives_redis_cli_reshard(flavor, Backend::Module);
}

fn redis_cli_reshard_with_the_script(flavor: Flavor) {
    a_sale_survives_redis_cli_reshard(flavor, Backend::Script);
}

on_every_server!(
    moves_by_hand_with_the_module,
    moves_by_hand_with_the_script,
    redis_cli_reshard_with_the_module,
    redis_cli_reshard_with_the_script,
);

/// Many tasks share one cluster connection, as the SDK's docs suggest, while the coupon's
/// slot is MIGRATING with both keys already on the target, so every call is sent there with
/// -ASK; midway the move ends, and the calls meet -MOVED while the client refreshes its slot
/// map. Every click must be answered, and issued.
///
/// On redis-rs 1.8.1's own `ClusterConnection` 199 of 200 calls here were never answered:
/// it sends ASKING as a request of its own on the connection the tasks share, so another
/// call can take the one-shot flag and the redirected one bounces. `coupon_sdk::Cluster`
/// sends ASKING and the command as one pipeline.
fn a_shared_cluster_connection_answers_every_click_during_a_move(flavor: Flavor) {
    const TASKS: usize = 200;
    const CLICKS: usize = 5;
    let cluster = Cluster::start(flavor);
    let coupon = key_in_slot("sale", *cluster.slots_of(0)[0].start());
    let events = CouponKey::new(coupon.as_bytes()).unwrap().events_key();
    let first = Probe::new(&cluster, 0, false).send(&["COUPON.ISSUE", &coupon, "alice", "1000"]);
    assert_eq!(first, "ISSUED 1 1");
    let slot = hash_slot(coupon.as_bytes());
    cluster.begin_slot_move(slot, 0, 1);
    cluster.migrate(0, 1, &[coupon.as_bytes(), &events]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let answered = Arc::new(AtomicU64::new(0));
    let urls = cluster.urls();
    let outcomes = std::thread::scope(|scope| {
        let clients = scope.spawn(|| {
            runtime.block_on(async {
                let connection = coupon_sdk::Cluster::connect(urls).await;
                let coupons = Coupons::connect(connection.expect("connect"))
                    .await
                    .unwrap();
                let clicks = (0..TASKS).map(|n| {
                    let (coupons, coupon) = (coupons.clone(), coupon.clone());
                    let answered = answered.clone();
                    tokio::spawn(async move {
                        let mut outcomes = Vec::with_capacity(CLICKS);
                        for k in 0..CLICKS {
                            let user = format!("user-{n}-{k}");
                            outcomes.push(coupons.issue(&coupon, user, 10_000).await);
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        outcomes
                    })
                });
                tokio::time::timeout(Duration::from_secs(30), join_all(clicks)).await
            })
        });
        // The move ends while the clicks go on.
        let deadline = Instant::now() + Duration::from_secs(30);
        while answered.load(Ordering::SeqCst) < TASKS as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        cluster.finish_slot_move(slot, 0, 1);
        let moved_at = answered.load(Ordering::SeqCst);
        let outcomes = clients.join().expect("the clients' thread");
        assert!(
            moved_at < (TASKS * CLICKS) as u64,
            "every click was answered before the move ended"
        );
        outcomes
    });
    let total = TASKS * CLICKS;
    let outcomes = outcomes.unwrap_or_else(|_| panic!("not all {total} clicks answered in 30 s"));
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .flat_map(|task| task.expect("a task"))
        .collect();
    let errors: Vec<String> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().err())
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{} of {total} clicks failed, e.g. {:?}",
        errors.len(),
        errors.first()
    );
    let mut seqs: Vec<u64> = outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(Outcome::Issued { seq }) => *seq,
            other => panic!("a newcomer was answered {other:?}"),
        })
        .collect();
    seqs.sort_unstable();
    assert!(
        seqs.iter().copied().eq(2..=total as u64 + 1),
        "seqs 2..={} once each (alice has 1)",
        total + 1
    );
    let holders = Probe::new(&cluster, 1, false).send(&["HLEN", &coupon]);
    assert_eq!(
        holders,
        (total + 2).to_string(),
        "every winner on the new owner"
    );
    runtime.shutdown_background();
}

mod shared_connection {
    #[test]
    fn on_redis() {
        super::a_shared_cluster_connection_answers_every_click_during_a_move(
            coupon_tests::Flavor::Redis,
        );
    }

    #[test]
    fn on_valkey() {
        super::a_shared_cluster_connection_answers_every_click_during_a_move(
            coupon_tests::Flavor::Valkey,
        );
    }

    #[test]
    fn on_redis8() {
        super::a_shared_cluster_connection_answers_every_click_during_a_move(
            coupon_tests::Flavor::Redis8,
        );
    }
}
