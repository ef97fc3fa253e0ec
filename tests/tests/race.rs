//! 10,000 concurrent clients, each on its own connection, race for 1,000 coupons; users
//! repeat (two clients per user, each clicking twice). Exactly 1,000 win, seqs 1..=1000.

use coupon_tests::{on_every_server, Flavor, Server};
use futures::future::join_all;
use futures::stream::{self, StreamExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;

const CLIENTS: usize = 10_000;
const USERS: usize = 5_000;
const STOCK: i64 = 1_000;

type Reply = (String, Option<i64>, i64);

/// One race at a time: each holds 10,000 sockets, and the process may open 20,000 files.
static ONE_RACE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ten_thousand_clients_race_for_a_thousand_coupons(flavor: Flavor) {
    let _turn = ONE_RACE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let server = Server::builder(flavor).arg("maxclients", "11000").start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let replies: Vec<(String, Vec<Reply>)> = runtime.block_on(async {
        let client = server.client();
        // Connect everyone first (a few hundred handshakes at a time, within the listen
        // backlog), then release them at once.
        // 10,000 requests land at once: give replies time to come back from the queue.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(30)))
            .set_response_timeout(Some(Duration::from_secs(60)));
        let connect = |_| client.get_multiplexed_async_connection_with_config(&config);
        let connections: Vec<_> = stream::iter((0..CLIENTS).map(connect))
            .buffer_unordered(256)
            .collect()
            .await;
        let start = Arc::new(Barrier::new(CLIENTS));
        let tasks = connections.into_iter().enumerate().map(|(i, connection)| {
            let mut connection = connection.expect("connect");
            let start = start.clone();
            tokio::spawn(async move {
                let user = format!("user-{}", i % USERS);
                start.wait().await;
                let mut replies = Vec::new();
                for _ in 0..2 {
                    let reply: Reply = redis::cmd("COUPON.ISSUE")
                        .arg("flash")
                        .arg(&user)
                        .arg(STOCK)
                        .query_async(&mut connection)
                        .await
                        .expect("COUPON.ISSUE");
                    replies.push(reply);
                }
                (user, replies)
            })
        });
        join_all(tasks)
            .await
            .into_iter()
            .map(|r| r.expect("task"))
            .collect()
    });

    let mut won: BTreeMap<String, i64> = BTreeMap::new();
    for (user, replies) in &replies {
        for (status, seq, holders) in replies {
            assert!(*holders <= STOCK, "over-issued: {holders} holders");
            if status == "ISSUED" {
                let seq = seq.expect("ISSUED carries a seq");
                assert!(
                    won.insert(user.clone(), seq).is_none(),
                    "{user} issued twice"
                );
            }
        }
    }
    assert_eq!(won.len() as i64, STOCK, "exactly the stock is issued");
    let seqs: BTreeSet<i64> = won.values().copied().collect();
    assert_eq!(seqs, (1..=STOCK).collect(), "seqs are exactly 1..=1000");
    for (user, replies) in &replies {
        for (status, seq, _) in replies {
            match status.as_str() {
                "DUPLICATE" => assert_eq!(seq.as_ref(), won.get(user), "{user}'s duplicate seq"),
                "SOLD_OUT" => assert!(!won.contains_key(user), "{user} won yet was told SOLD_OUT"),
                "ISSUED" => {}
                other => panic!("unexpected {other}"),
            }
        }
    }

    let mut conn = server.connect();
    let mut holders: BTreeMap<String, i64> =
        redis::cmd("HGETALL").arg("flash").query(&mut conn).unwrap();
    assert_eq!(holders.remove(""), Some(STOCK), "the last seq is the stock");
    assert_eq!(holders, won, "the holders hash is exactly the winners");
    let events: Vec<(String, BTreeMap<String, String>)> = redis::cmd("XRANGE")
        .arg("flash:events{flash}")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert_eq!(events.len() as i64, STOCK, "one issue event per winner");
    let from_events: BTreeMap<String, i64> = events
        .iter()
        .map(|(_, fields)| {
            assert_eq!(fields["op"], "issue");
            (fields["user"].clone(), fields["seq"].parse().unwrap())
        })
        .collect();
    assert_eq!(
        from_events, won,
        "the events name exactly the winners and their seqs"
    );
    let in_order: Vec<i64> = events
        .iter()
        .map(|(_, f)| f["seq"].parse().unwrap())
        .collect();
    assert_eq!(
        in_order,
        (1..=STOCK).collect::<Vec<_>>(),
        "events are appended in seq order"
    );
}

on_every_server!(ten_thousand_clients_race_for_a_thousand_coupons);
