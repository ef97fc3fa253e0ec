//! Local answers (`Coupons::with_local_answers`) against real servers, on both backends: after
//! the sell-out the server sees almost nothing but revokes, and what the SDK answers itself is
//! never an over-issue — a local `SoldOut` is at most one invalidation late, a revoke reaches
//! every client within one invalidation, and every way tracking can be lost (a killed
//! tracking connection, `FLUSHALL`, a failover, a resharding) drops the view. The race of a
//! fill against an invalidation is forced with the install-delay hook.

use coupon_layout::{hash_slot, CouponKey};
use coupon_sdk::{AnsweredBy, Backend, Coupons, LocalAnswers, LocalOptions, Outcome, Window};
use coupon_tests::figures::command_stats;
use coupon_tests::{key_in_slot, on_every_server, Cluster, Flavor, Server};
use redis::aio::MultiplexedConnection;
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long an invalidation may take to reach a client on loopback before a test calls it
/// lost (measured: well under 5 ms; this is for a loaded machine).
const INVALIDATION_BOUND: Duration = Duration::from_millis(250);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The command a backend's issue runs as, in `INFO commandstats`.
fn issue_command(backend: Backend) -> &'static str {
    match backend {
        Backend::Module => "coupon.issue",
        Backend::Script => "evalsha",
    }
}

/// A client of `server` on `backend`, with local answers of its own.
async fn local_client(
    server: &Server,
    backend: Backend,
    options: LocalOptions,
) -> (Coupons<MultiplexedConnection>, LocalAnswers) {
    let connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let local = options.connect(server.url()).await.expect("tracking");
    let coupons = Coupons::with_backend(connection, backend).with_local_answers(local.clone());
    (coupons, local)
}

async fn plain_client(server: &Server, backend: Backend) -> Coupons<MultiplexedConnection> {
    let connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    Coupons::with_backend(connection, backend)
}

/// Waits until `local` has a current view of `coupon`, clicking as a newcomer to get the
/// server's `SoldOut` that starts the fill.
async fn wait_current<C>(coupons: &Coupons<C>, local: &LocalAnswers, coupon: &str, limit: u64)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while !local.is_current(coupon) {
        assert!(
            Instant::now() < deadline,
            "the view of {coupon} never became current"
        );
        n += 1;
        let _ = coupons.issue(coupon, format!("prober-{n}"), limit).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn sell_out<C>(coupons: &Coupons<C>, coupon: &str, limit: u64) -> BTreeMap<String, u64>
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync,
{
    let mut winners = BTreeMap::new();
    for n in 0..limit {
        let user = format!("winner-{n}");
        match coupons.issue(coupon, &user, limit).await.expect("issue") {
            Outcome::Issued { seq } => winners.insert(user, seq),
            other => panic!("{user} got {other:?} before the sell-out"),
        };
    }
    winners
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn answers_rejections_and_repeats_locally(flavor: Flavor) {
    let server = Server::start(flavor);
    for backend in [Backend::Module, Backend::Script] {
        runtime().block_on(async {
            let coupon = format!("hot-{backend:?}");
            let (coupons, local) = local_client(&server, backend, LocalOptions::default()).await;
            let winners = sell_out(&coupons, &coupon, 20).await;
            assert!(!local.is_current(&coupon), "no view while the coupon sells");
            wait_current(&coupons, &local, &coupon, 20).await;

            let mut conn = server.connect();
            let (calls_before, _) = command_stats(&mut conn, issue_command(backend));
            let before = local.stats();
            assert!(before.view_bytes > 0, "a current view holds its holders");
            for n in 0..2_000 {
                let outcome = coupons
                    .issue(&coupon, format!("late-{n}"), 20)
                    .await
                    .unwrap();
                assert_eq!(outcome, Outcome::SoldOut);
            }
            for (user, seq) in &winners {
                let outcome = coupons.issue(&coupon, user, 20).await.unwrap();
                assert_eq!(
                    outcome,
                    Outcome::AlreadyIssued { seq: *seq },
                    "{user}'s repeat"
                );
            }
            // A larger limit is not sold out: the server is asked, and issues.
            let outcome = coupons.issue(&coupon, "late-0", 21).await.unwrap();
            assert!(
                matches!(outcome, Outcome::Issued { seq: 21 }),
                "{outcome:?}"
            );
            let (calls_after, _) = command_stats(&mut conn, issue_command(backend));
            let after = local.stats();
            assert_eq!(after.answered_locally - before.answered_locally, 2_020);
            assert_eq!(
                calls_after - calls_before,
                1,
                "only the issue under the larger limit reached the server"
            );

            // Windows: answered locally only when the clock is safely outside.
            let timed = format!("timed-{backend:?}");
            let hour = 3_600_000;
            let later = Window::between_ms(now_ms() + hour, now_ms() + 2 * hour);
            let earlier = Window::between_ms(now_ms() - 2 * hour, now_ms() - hour);
            let outcome = coupons
                .issue_in_window(&timed, "u", 5, later)
                .await
                .unwrap();
            assert_eq!(outcome, Outcome::NotStarted);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !local.is_current(&timed) {
                assert!(Instant::now() < deadline, "no view after NotStarted");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let before = local.stats();
            let outcome = coupons
                .issue_in_window(&timed, "v", 5, later)
                .await
                .unwrap();
            assert_eq!(outcome, Outcome::NotStarted);
            let outcome = coupons
                .issue_in_window(&timed, "v", 5, earlier)
                .await
                .unwrap();
            assert_eq!(outcome, Outcome::Ended);
            assert_eq!(local.stats().answered_locally - before.answered_locally, 2);
            // At the edge of a window the server decides, and issues.
            let opening = Window::between_ms(now_ms() - 50, now_ms() + hour);
            let outcome = coupons
                .issue_in_window(&timed, "v", 5, opening)
                .await
                .unwrap();
            assert!(matches!(outcome, Outcome::Issued { .. }), "{outcome:?}");
        });
    }
}

fn a_revoke_reaches_every_client_within_one_invalidation(flavor: Flavor) {
    let server = Server::start(flavor);
    runtime().block_on(async {
        let (coupon, limit) = ("shared", 10);
        let (a, local_a) = local_client(&server, Backend::Module, LocalOptions::default()).await;
        let (b, local_b) = local_client(&server, Backend::Script, LocalOptions::default()).await;
        let winners = sell_out(&a, coupon, limit).await;
        wait_current(&a, &local_a, coupon, limit).await;
        wait_current(&b, &local_b, coupon, limit).await;

        let mut delays = Vec::new();
        for (user, _) in winners.iter().take(5) {
            assert!(local_b.is_current(coupon));
            assert!(a.revoke(coupon, user).await.unwrap());
            let revoked = Instant::now();
            assert!(
                !local_a.is_current(coupon),
                "the revoking client drops its view at once"
            );
            while local_b.is_current(coupon) {
                assert!(
                    revoked.elapsed() < INVALIDATION_BOUND,
                    "the other client still answers locally {:?} after the revoke",
                    revoked.elapsed()
                );
                tokio::task::yield_now().await;
            }
            delays.push(revoked.elapsed());
            // The freed coupon goes to the next click, through the server.
            let outcome = b
                .issue(coupon, format!("{user}-again"), limit)
                .await
                .unwrap();
            assert!(matches!(outcome, Outcome::Issued { .. }), "{outcome:?}");
            wait_current(&b, &local_b, coupon, limit).await;
            wait_current(&a, &local_a, coupon, limit).await;
        }
        delays.sort();
        println!("invalidation delay after a revoke: max {:?}", delays.last());
    });
}

/// Several clients click at random while a revoker gives coupons back; every answer is logged
/// with whether it was local. Afterwards: holders within the limit, seqs unique, every Issued
/// in the event stream as that user's issue, and every local SoldOut backed by a moment, at
/// most one invalidation earlier, when the coupon was sold out.
fn random_clicks_with_revokes_never_over_issue(flavor: Flavor) {
    let server = Server::start(flavor);
    let (coupon, limit, users) = ("race", 15u64, 30u64);
    let answers = runtime().block_on(async {
        let mut tasks = Vec::new();
        for client in 0..4u64 {
            let backend = if client % 2 == 0 {
                Backend::Module
            } else {
                Backend::Script
            };
            let (coupons, local) = local_client(&server, backend, LocalOptions::default()).await;
            tasks.push(tokio::spawn(async move {
                let mut log = Vec::new();
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(3) {
                    let user = format!("user-{}", fastrand::u64(0..users));
                    let before = local.stats().answered_locally;
                    let sent_ms = now_ms();
                    let outcome = coupons.issue(coupon, &user, limit).await.expect("issue");
                    let was_local = local.stats().answered_locally > before;
                    log.push((sent_ms, now_ms(), user, outcome, was_local));
                    // A local answer awaits nothing: let the revoker run.
                    tokio::task::yield_now().await;
                }
                log
            }));
        }
        let revoker = plain_client(&server, Backend::Module).await;
        let revoking = tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let user = format!("user-{}", fastrand::u64(0..users));
                revoker.revoke(coupon, &user).await.expect("revoke");
                tokio::time::sleep(Duration::from_millis(fastrand::u64(1..10))).await;
            }
        });
        let mut answers = Vec::new();
        for task in tasks {
            answers.extend(task.await.expect("a client"));
        }
        revoking.await.expect("the revoker");
        answers
    });

    let mut conn = server.connect();
    let hash: BTreeMap<Vec<u8>, Vec<u8>> =
        redis::cmd("HGETALL").arg(coupon).query(&mut conn).unwrap();
    let held = hash.keys().filter(|field| !field.is_empty()).count() as u64;
    assert!(held <= limit, "{held} holders for {limit} coupons");
    let events: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
        .arg(CouponKey::new(coupon.as_bytes()).unwrap().events_key())
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    // The holder count over time, from the events (their ids carry the server's ms).
    let mut count = 0i64;
    let mut timeline = Vec::new();
    let mut issued = HashSet::new();
    let mut seqs = HashSet::new();
    for (id, fields) in &events {
        let at: u64 = id.split('-').next().unwrap().parse().unwrap();
        match fields["op"].as_str() {
            "issue" => {
                count += 1;
                assert!(
                    seqs.insert(fields["seq"].clone()),
                    "seq {} twice",
                    fields["seq"]
                );
                issued.insert((
                    fields["user"].clone(),
                    fields["seq"].parse::<u64>().unwrap(),
                ));
            }
            "revoke" => count -= 1,
            op => panic!("unexpected event {op}"),
        }
        assert!(count <= limit as i64, "over-issued at {id}");
        timeline.push((at, count));
    }
    let sold_out_within = |from: u64, to: u64| {
        let mut count_at_from = 0;
        for (at, c) in &timeline {
            if *at < from {
                count_at_from = *c;
            } else if *at <= to && *c >= limit as i64 {
                return true;
            }
        }
        count_at_from >= limit as i64
    };
    let bound = INVALIDATION_BOUND.as_millis() as u64;
    let (mut local_sold_out, mut issued_told) = (0, 0);
    for (sent_ms, answered_ms, user, outcome, was_local) in &answers {
        match outcome {
            Outcome::Issued { seq } => {
                assert!(!was_local, "an Issued answered locally");
                assert!(
                    issued.contains(&(user.clone(), *seq)),
                    "{user} told #{seq} with no event"
                );
                issued_told += 1;
            }
            Outcome::SoldOut if *was_local => {
                local_sold_out += 1;
                assert!(
                    sold_out_within(sent_ms.saturating_sub(bound), *answered_ms),
                    "a local SoldOut at {sent_ms} with the coupon not sold out since {bound} ms before"
                );
            }
            _ => {}
        }
    }
    println!(
        "{} clicks, {issued_told} issued, {local_sold_out} local sold-outs, {} events",
        answers.len(),
        events.len()
    );
    assert!(
        local_sold_out > 0,
        "the race never answered locally: it tested nothing"
    );
}

/// The view goes with its tracking: a killed tracking connection, then `FLUSHALL`.
fn losing_tracking_drops_the_view(flavor: Flavor) {
    let server = Server::start(flavor);
    runtime().block_on(async {
        let (coupon, limit) = ("tracked", 3);
        let (coupons, local) =
            local_client(&server, Backend::Module, LocalOptions::default()).await;
        sell_out(&coupons, coupon, limit).await;
        wait_current(&coupons, &local, coupon, limit).await;

        let mut conn = server.connect();
        let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
        let tracking: Vec<&str> = clients
            .lines()
            .filter(|line| {
                line.split(' ')
                    .any(|field| field.starts_with("flags=") && field.contains('t'))
            })
            .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
            .collect();
        assert_eq!(tracking.len(), 1, "one tracking connection: {clients}");
        let _: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(tracking[0])
            .query(&mut conn)
            .unwrap();
        let killed = Instant::now();
        while local.is_current(coupon) {
            assert!(
                killed.elapsed() < INVALIDATION_BOUND,
                "the view outlived its tracking connection"
            );
            tokio::task::yield_now().await;
        }
        // The next click is answered from a fresh view, read on a new tracking connection.
        let fills = local.stats().fills_installed;
        let answered = coupons
            .issue_answered(coupon, "after-kill", limit)
            .await
            .unwrap();
        assert_eq!(answered.outcome, Outcome::SoldOut);
        if answered.by != AnsweredBy::Server {
            assert_eq!(local.stats().fills_installed, fills + 1, "no fresh view");
        }
        let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
        assert!(
            !clients.contains(&format!("id={} ", tracking[0])),
            "{clients}"
        );

        // A new tracking connection, a current view again; then a flush drops it.
        wait_current(&coupons, &local, coupon, limit).await;
        let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
        let flushed = Instant::now();
        while local.is_current(coupon) {
            assert!(
                flushed.elapsed() < INVALIDATION_BOUND,
                "the view outlived FLUSHALL"
            );
            tokio::task::yield_now().await;
        }
        // The flushed coupon issues again, from the server.
        let outcome = coupons.issue(coupon, "after-flush", limit).await.unwrap();
        assert_eq!(outcome, Outcome::Issued { seq: 1 });
    });
}

/// The install-delay hook holds a fill between its reply and installing the view; a revoke in
/// that gap must leave the view not current. Without the revoke the same fill installs, so
/// the test can tell the two apart.
fn an_invalidation_during_a_fill_leaves_the_view_not_current(flavor: Flavor) {
    let server = Server::start(flavor);
    runtime().block_on(async {
        let delay = Duration::from_millis(400);
        let options = LocalOptions {
            install_delay: delay,
            ..LocalOptions::default()
        };
        for revoke_in_the_gap in [false, true] {
            let coupon = format!("delayed-{revoke_in_the_gap}");
            let (coupons, local) = local_client(&server, Backend::Module, options.clone()).await;
            let winners = sell_out(&coupons, &coupon, 4).await;
            assert_eq!(
                coupons.issue(&coupon, "late", 4).await.unwrap(),
                Outcome::SoldOut
            );
            let fill_started = Instant::now();
            tokio::time::sleep(delay / 4).await; // the fill's reply is in; its install waits
            assert!(!local.is_current(&coupon));
            if revoke_in_the_gap {
                let other = plain_client(&server, Backend::Module).await;
                let first = winners.keys().next().unwrap();
                assert!(other.revoke(&coupon, first).await.unwrap());
            }
            tokio::time::sleep(delay.saturating_sub(fill_started.elapsed()) + delay / 2).await;
            let stats = local.stats();
            assert_eq!(stats.fills, 1);
            if revoke_in_the_gap {
                assert!(
                    !local.is_current(&coupon),
                    "a fill overtaken by an invalidation installed"
                );
                assert_eq!(stats.fills_installed, 0);
                let outcome = coupons.issue(&coupon, "late", 4).await.unwrap();
                assert!(matches!(outcome, Outcome::Issued { .. }), "{outcome:?}");
            } else {
                assert!(
                    local.is_current(&coupon),
                    "the delayed fill never installed"
                );
                assert_eq!(stats.fills_installed, 1);
            }
        }
    });
}

/// With replica acknowledgement on, every click needs its `WAIT`: none is answered locally.
fn replica_acknowledged_calls_always_reach_the_server(flavor: Flavor) {
    let server = Server::start(flavor);
    runtime().block_on(async {
        let (coupon, limit) = ("acked", 2);
        let (coupons, local) =
            local_client(&server, Backend::Module, LocalOptions::default()).await;
        sell_out(&coupons, coupon, limit).await;
        wait_current(&coupons, &local, coupon, limit).await;
        let acked = coupons.with_replica_ack(coupon_sdk::ReplicaAck {
            replicas: 0,
            timeout: Duration::from_millis(10),
        });
        let mut conn = server.connect();
        let (calls, _) = command_stats(&mut conn, "coupon.issue");
        for n in 0..10 {
            assert_eq!(
                acked
                    .issue(coupon, format!("late-{n}"), limit)
                    .await
                    .unwrap(),
                Outcome::SoldOut
            );
        }
        assert_eq!(command_stats(&mut conn, "coupon.issue").0, calls + 10);
    });
}

/// On a cluster: the view is filled from the coupon's node, a resharding of its slot drops
/// it (the move deletes the key on the old owner), and it comes back from the new owner.
fn a_resharding_drops_the_view_on_a_cluster(flavor: Flavor) {
    let cluster = Cluster::start(flavor);
    let from = cluster.primaries()[0];
    let slot = *cluster.slots_of(from)[0].start();
    let to = cluster.primaries()[1];
    let coupon = key_in_slot("moving", slot);
    assert_eq!(hash_slot(coupon.as_bytes()), slot);
    runtime().block_on(async {
        let sdk = coupon_sdk::Cluster::connect(cluster.urls()).await.unwrap();
        let local = LocalAnswers::connect_cluster(&sdk, cluster.urls())
            .await
            .unwrap();
        let coupons = Coupons::connect(sdk)
            .await
            .unwrap()
            .with_local_answers(local.clone());
        let limit = 5;
        let winners = sell_out(&coupons, &coupon, limit).await;
        wait_current(&coupons, &local, &coupon, limit).await;

        cluster.begin_slot_move(slot, from, to);
        let events = CouponKey::new(coupon.as_bytes()).unwrap().events_key();
        cluster.migrate(from, to, &[coupon.as_bytes(), &events]);
        let moved = Instant::now();
        while local.is_current(&coupon) {
            assert!(
                moved.elapsed() < INVALIDATION_BOUND,
                "the view outlived the key's move"
            );
            tokio::task::yield_now().await;
        }
        cluster.finish_slot_move(slot, from, to);
        // The server (the new owner) answers; the view is filled there again.
        wait_current(&coupons, &local, &coupon, limit).await;
        let (user, seq) = winners.iter().next().unwrap();
        assert_eq!(
            coupons.issue(&coupon, user, limit).await.unwrap(),
            Outcome::AlreadyIssued { seq: *seq }
        );
        // A revoke on the new owner reaches the view.
        assert!(coupons.revoke(&coupon, user).await.unwrap());
        assert!(!local.is_current(&coupon));
        let outcome = coupons.issue(&coupon, "newcomer", limit).await.unwrap();
        assert!(matches!(outcome, Outcome::Issued { .. }), "{outcome:?}");
    });
}

/// On a cluster with replicas: killing the coupon's primary drops the view (its tracking
/// connection closes), and after the failover the view is filled from the new primary.
fn a_failover_drops_the_view_on_a_cluster(flavor: Flavor) {
    let mut cluster = Cluster::builder(flavor)
        .replicas(1)
        .node_timeout(1_000)
        .start();
    let owner = cluster.primaries()[0];
    let slot = *cluster.slots_of(owner)[0].start();
    let coupon = key_in_slot("failing", slot);
    let urls = cluster.urls();
    runtime().block_on(async {
        let sdk = coupon_sdk::Cluster::connect(urls.clone()).await.unwrap();
        let local = LocalAnswers::connect_cluster(&sdk, urls.clone())
            .await
            .unwrap();
        let coupons = Coupons::connect(sdk)
            .await
            .unwrap()
            .with_local_answers(local.clone());
        let limit = 5;
        sell_out(&coupons, &coupon, limit).await;
        // The replica has the sale before its primary goes.
        let mut conn = cluster.nodes[owner].connect();
        let _: i64 = redis::cmd("WAIT")
            .arg(1)
            .arg(2_000)
            .query(&mut conn)
            .unwrap();
        wait_current(&coupons, &local, &coupon, limit).await;

        cluster.kill_primary(0);
        let killed = Instant::now();
        while local.is_current(&coupon) {
            assert!(
                killed.elapsed() < Duration::from_secs(2),
                "the view outlived its primary"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        cluster.wait_for_failover(Duration::from_secs(30));
        wait_current(&coupons, &local, &coupon, limit).await;
        assert_eq!(
            coupons.issue(&coupon, "late", limit).await.unwrap(),
            Outcome::SoldOut
        );
    });
}

on_every_server!(
    answers_rejections_and_repeats_locally,
    a_revoke_reaches_every_client_within_one_invalidation,
    random_clicks_with_revokes_never_over_issue,
    losing_tracking_drops_the_view,
    an_invalidation_during_a_fill_leaves_the_view_not_current,
    replica_acknowledged_calls_always_reach_the_server,
    a_resharding_drops_the_view_on_a_cluster,
    a_failover_drops_the_view_on_a_cluster,
);
