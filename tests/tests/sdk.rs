//! The SDK against real servers: one conformance scenario run on the module backend and on the
//! Lua backend (a server without the module) must give the same outcomes and leave the same
//! data; plus races, timeouts with retries, errors and reconnection.

use coupon_sdk::{Backend, CouponInfo, Coupons, Error, Outcome, Window};
use coupon_tests::{on_every_server, Flavor, Server};
use futures::future::join_all;
use redis::aio::MultiplexedConnection;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn coupons_on(server: &Server, backend: Option<Backend>) -> Coupons<MultiplexedConnection> {
    let connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    match backend {
        Some(backend) => Coupons::with_backend(connection, backend),
        None => Coupons::connect(connection)
            .await
            .expect("detect the backend"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything a client can observe, in order.
async fn scenario(coupons: &Coupons<MultiplexedConnection>) -> Vec<String> {
    let hour = 3_600_000;
    let mut seen = Vec::new();
    let mut note = |what: String| seen.push(what);
    for user in ["alice", "bob", "carol", "alice"] {
        note(format!("{:?}", coupons.issue("sale", user, 2).await));
    }
    note(format!("{:?}", coupons.issue("sale", "zero", 0).await));
    let later = Window::between_ms(now_ms() + hour, now_ms() + 2 * hour);
    let earlier = Window::between_ms(now_ms() - 2 * hour, now_ms() - hour);
    let open = Window::between_ms(now_ms() - hour, now_ms() + hour);
    note(format!(
        "{:?}",
        coupons.issue_in_window("timed", "dave", 5, later).await
    ));
    note(format!(
        "{:?}",
        coupons.issue_in_window("timed", "dave", 5, earlier).await
    ));
    note(format!(
        "{:?}",
        coupons.issue_in_window("timed", "dave", 5, open).await
    ));
    note(format!(
        "{:?}",
        coupons.issue_in_window("timed", "dave", 5, earlier).await
    ));
    note(format!("{:?}", coupons.revoke("sale", "alice").await));
    note(format!("{:?}", coupons.revoke("sale", "alice").await));
    note(format!("{:?}", coupons.revoke("sale", "nobody").await));
    note(format!("{:?}", coupons.check("sale", "bob").await));
    note(format!("{:?}", coupons.check("sale", "alice").await));
    note(format!("{:?}", coupons.issue("sale", "carol", 2).await));
    note(format!("{:?}", coupons.issue("sale", "alice", 2).await));
    note(format!(
        "{:?}",
        coupons.issue("sale", "erin", u64::MAX >> 1).await
    ));
    note(format!(
        "{:?}",
        coupons
            .issue("shop{7}", b"\x00\xff bin\r\n".as_slice(), 3)
            .await
    ));
    note(format!(
        "{:?}",
        coupons
            .issue("shop{7}", b"\x00\xff bin\r\n".as_slice(), 3)
            .await
    ));
    let from_db: [(&[u8], u64); 4] = [(b"bob", 2), (b"carol", 3), (b"zed", 11), (b"\x00\xff", 9)];
    note(format!("{:?}", coupons.restore("sale", 12, &from_db).await));
    note(format!("{:?}", coupons.restore("sale", 12, &from_db).await));
    note(format!(
        "{:?}",
        coupons.restore("floored", 5, &[] as &[(&str, u64)]).await
    ));
    note(format!("{:?}", coupons.info("sale").await));
    note(format!("{:?}", coupons.info("floored").await));
    note(format!("{:?}", coupons.info("never").await));
    seen
}

type Entry = Vec<(String, Vec<u8>)>;

/// The data left behind: holders, last seqs and event entries (their fields; the stream IDs
/// are the server's clock, checked separately).
fn dump(server: &Server) -> BTreeMap<String, String> {
    let mut conn = server.connect();
    let mut keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    keys.sort();
    let mut data = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
        let shown = match kind.as_str() {
            "hash" => {
                let map: BTreeMap<Vec<u8>, Vec<u8>> =
                    redis::cmd("HGETALL").arg(&key).query(&mut conn).unwrap();
                format!("{map:?}")
            }
            "stream" => {
                let entries: Vec<(String, Entry)> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query(&mut conn)
                    .unwrap();
                let before = now_ms();
                let fields: Vec<Entry> = entries
                    .into_iter()
                    .map(|(id, fields)| {
                        let id_ms: u64 = id.split('-').next().unwrap().parse().unwrap();
                        assert!(
                            id_ms <= before + 1 && before - id_ms < 60_000,
                            "entry {id} carries the server clock"
                        );
                        fields
                    })
                    .collect();
                format!("{fields:?}")
            }
            other => panic!("unexpected {other} key"),
        };
        data.insert(String::from_utf8_lossy(&key).into_owned(), shown);
    }
    data
}

fn both_backends_answer_and_write_the_same(flavor: Flavor) {
    let with_module = Server::start(flavor);
    let without_module = Server::builder(flavor).module(false).start();
    let script_on_module_server = Server::start(flavor);
    let rt = runtime();
    let (by_module, by_script, by_forced_script) = rt.block_on(async {
        let module = coupons_on(&with_module, None).await;
        assert_eq!(module.backend(), Backend::Module, "the module is detected");
        let script = coupons_on(&without_module, None).await;
        assert_eq!(
            script.backend(),
            Backend::Script,
            "no module: the script is used"
        );
        let forced = coupons_on(&script_on_module_server, Some(Backend::Script)).await;
        (
            scenario(&module).await,
            scenario(&script).await,
            scenario(&forced).await,
        )
    });
    assert!(
        by_module.iter().all(|line| line.starts_with("Ok(")),
        "{by_module:#?}"
    );
    assert_eq!(by_module[0], "Ok(Issued { seq: 1 })");
    assert_eq!(
        by_script, by_module,
        "the script answers as the module does"
    );
    assert_eq!(by_forced_script, by_module);
    let data = dump(&with_module);
    assert_eq!(data.len(), 8, "{data:#?}");
    assert_eq!(
        dump(&without_module),
        data,
        "the script leaves the module's data"
    );
    assert_eq!(dump(&script_on_module_server), data);
}

fn backends_can_be_mixed_on_one_coupon(flavor: Flavor) {
    let server = Server::start(flavor);
    runtime().block_on(async {
        let module = coupons_on(&server, Some(Backend::Module)).await;
        let script = coupons_on(&server, Some(Backend::Script)).await;
        for n in 1..=20u64 {
            let (first, second) = if n % 2 == 0 {
                (&module, &script)
            } else {
                (&script, &module)
            };
            let user = format!("user-{n}");
            assert_eq!(
                first.issue("mixed", &user, 15).await.unwrap().seq(),
                if n <= 15 { Some(n) } else { None }
            );
            let again = second.issue("mixed", &user, 15).await.unwrap();
            if n <= 15 {
                assert_eq!(again, Outcome::AlreadyIssued { seq: n });
            } else {
                assert_eq!(again, Outcome::SoldOut);
            }
        }
        assert!(script.revoke("mixed", "user-3").await.unwrap());
        assert_eq!(
            module.issue("mixed", "late", 15).await.unwrap(),
            Outcome::Issued { seq: 16 }
        );
        let info = module.info("mixed").await.unwrap();
        assert_eq!(
            info,
            CouponInfo {
                issued: 15,
                revoked: 1,
                last_seq: 16,
                events: 17
            }
        );
    });
}

fn thousands_of_tasks_on_one_connection_issue_exactly_the_stock(flavor: Flavor) {
    let with_module = Server::start(flavor);
    let without_module = Server::builder(flavor).module(false).start();
    runtime().block_on(async {
        for server in [&with_module, &without_module] {
            let coupons = coupons_on(server, None).await;
            let tasks = (0..5_000).map(|i| {
                let coupons = coupons.clone();
                tokio::spawn(async move {
                    let user = format!("user-{}", i % 3_000);
                    (
                        user.clone(),
                        coupons.issue("race", &user, 300).await.expect("issue"),
                    )
                })
            });
            let results: Vec<(String, Outcome)> = join_all(tasks)
                .await
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
            let mut won = BTreeMap::new();
            for (user, outcome) in &results {
                if let Outcome::Issued { seq } = outcome {
                    assert!(won.insert(user.clone(), *seq).is_none(), "{user} won twice");
                }
            }
            assert_eq!(won.len(), 300, "{:?}: exactly the stock", coupons.backend());
            assert_eq!(
                won.values().copied().collect::<BTreeSet<_>>(),
                (1..=300).collect()
            );
            for (user, outcome) in &results {
                if let Outcome::AlreadyIssued { seq } = outcome {
                    assert_eq!(won.get(user), Some(seq));
                }
            }
            assert_eq!(coupons.info("race").await.unwrap().issued, 300);
        }
    });
}

fn a_timed_out_issue_is_safe_to_retry(flavor: Flavor) {
    let with_module = Server::start(flavor);
    let without_module = Server::builder(flavor).module(false).start();
    runtime().block_on(async {
        for server in [&with_module, &without_module] {
            let coupons = coupons_on(server, None).await;
            // The script is cached from here on, so the timed-out EVALSHA itself runs.
            coupons.issue("warm-up", "someone", 1).await.unwrap();
            // Stall the server so the answer comes after the timeout; the command still runs.
            let url = server.url();
            let stall = std::thread::spawn(move || {
                let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
                redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(0.5)
                    .query::<()>(&mut conn)
                    .unwrap();
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let hasty = coupons.with_timeout(Duration::from_millis(100));
            let first = hasty.issue("retry", "alice", 10).await;
            assert!(matches!(first, Err(Error::Timeout(_))), "{first:?}");
            stall.join().unwrap();
            let again = coupons.issue("retry", "alice", 10).await.unwrap();
            assert_eq!(
                again,
                Outcome::AlreadyIssued { seq: 1 },
                "{:?}",
                coupons.backend()
            );
            assert_eq!(
                coupons.info("retry").await.unwrap().events,
                1,
                "issued once"
            );
        }
    });
}

fn errors_say_what_failed(flavor: Flavor) {
    let mut server = Server::start(flavor);
    runtime().block_on(async {
        let coupons = coupons_on(&server, None).await;
        for (result, what) in [
            (coupons.issue("sale", "", 5).await, "empty user"),
            (coupons.issue("", "u", 5).await, "empty coupon"),
            (coupons.issue("a}b", "u", 5).await, "stray brace"),
            (
                coupons.issue("sale", "u", u64::MAX).await,
                "limit too large",
            ),
            (
                coupons
                    .issue_in_window("sale", "u", 5, Window::between_ms(5, 5))
                    .await,
                "empty window",
            ),
        ] {
            assert!(
                matches!(result, Err(Error::InvalidInput(_))),
                "{what}: {result:?}"
            );
        }
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut server.connect())
            .unwrap();
        assert!(keys.is_empty(), "nothing was sent: {keys:?}");

        redis::cmd("SET")
            .arg("typed")
            .arg("x")
            .query::<()>(&mut server.connect())
            .unwrap();
        let wrong = coupons.issue("typed", "u", 5).await;
        assert!(
            matches!(&wrong, Err(Error::Server(e)) if e.code() == Some("WRONGTYPE")),
            "{wrong:?}"
        );
        let script = coupons_on(&server, Some(Backend::Script)).await;
        let wrong = script.issue("typed", "u", 5).await;
        assert!(matches!(&wrong, Err(Error::Server(_))), "{wrong:?}");

        server.kill();
        let gone = coupons.issue("sale", "u", 5).await;
        assert!(matches!(gone, Err(Error::Connection(_))), "{gone:?}");
    });
}

fn the_script_is_reloaded_after_a_flush(flavor: Flavor) {
    let server = Server::builder(flavor).module(false).start();
    runtime().block_on(async {
        let coupons = coupons_on(&server, None).await;
        assert_eq!(
            coupons.issue("s", "a", 5).await.unwrap(),
            Outcome::Issued { seq: 1 }
        );
        redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query::<()>(&mut server.connect())
            .unwrap();
        assert_eq!(
            coupons.issue("s", "b", 5).await.unwrap(),
            Outcome::Issued { seq: 2 }
        );
        assert!(coupons.revoke("s", "a").await.unwrap());
    });
}

fn the_connection_manager_reconnects_after_a_restart(flavor: Flavor) {
    let mut server = Server::builder(flavor).aof(true).start();
    runtime().block_on(async {
        let manager = redis::aio::ConnectionManager::new(server.client())
            .await
            .unwrap();
        let coupons = Coupons::connect(manager).await.unwrap();
        assert_eq!(
            coupons.issue("s", "a", 5).await.unwrap(),
            Outcome::Issued { seq: 1 }
        );
        server.restart(true);
        let mut outcome = coupons.issue("s", "b", 5).await;
        for _ in 0..50 {
            if outcome.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            outcome = coupons.issue("s", "b", 5).await;
        }
        assert_eq!(outcome.unwrap(), Outcome::Issued { seq: 2 });
    });
}

on_every_server!(
    both_backends_answer_and_write_the_same,
    backends_can_be_mixed_on_one_coupon,
    thousands_of_tasks_on_one_connection_issue_exactly_the_stock,
    a_timed_out_issue_is_safe_to_retry,
    errors_say_what_failed,
    the_script_is_reloaded_after_a_flush,
    the_connection_manager_reconnects_after_a_restart,
);

/// The cluster client routes each coupon to the node owning its slot; both backends work there,
/// on the SDK's `Cluster` and on a plain redis-rs `ClusterConnection`.
fn the_cluster_client_issues_across_slots(flavor: Flavor) {
    let cluster = coupon_tests::Cluster::start(flavor);
    runtime().block_on(async {
        let shared = coupon_sdk::Cluster::connect(cluster.urls()).await.unwrap();
        issues_across_slots(shared.clone(), "sale").await;
        let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
        let plain = client.get_async_connection().await.unwrap();
        issues_across_slots(plain, "plain").await;
        // Bad settings are refused.
        assert!(matches!(
            shared.with_max_in_flight(0),
            Err(coupon_sdk::Error::InvalidInput(_))
        ));
        let inverted =
            coupon_sdk::ClusterRetry::new(3, Duration::from_millis(20), Duration::from_millis(10));
        assert!(matches!(inverted, Err(coupon_sdk::Error::InvalidInput(_))));
    });
    let holders_per_node: Vec<i64> = cluster
        .nodes
        .iter()
        .map(|node| redis::cmd("DBSIZE").query(&mut node.connect()).unwrap())
        .collect();
    assert!(
        holders_per_node.iter().all(|keys| *keys > 0),
        "every node holds coupons: {holders_per_node:?}"
    );
}

/// Twenty coupons, which land on all three nodes, through both backends.
async fn issues_across_slots<C>(connection: C, prefix: &str)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync,
{
    let module = Coupons::connect(connection.clone()).await.unwrap();
    assert_eq!(module.backend(), Backend::Module);
    let script = Coupons::with_backend(connection, Backend::Script);
    for n in 0..20 {
        let coupon = format!("{prefix}-{n}");
        let client = if n % 2 == 0 { &module } else { &script };
        assert_eq!(
            client.issue(&coupon, "alice", 1).await.unwrap(),
            Outcome::Issued { seq: 1 }
        );
        assert_eq!(
            client.issue(&coupon, "bob", 1).await.unwrap(),
            Outcome::SoldOut
        );
        assert_eq!(module.check(&coupon, "alice").await.unwrap(), Some(1));
        assert!(script.revoke(&coupon, "alice").await.unwrap());
        assert_eq!(module.info(&coupon).await.unwrap().events, 2);
        assert_eq!(
            client.restore(&coupon, 5, &[("carol", 4)]).await.unwrap(),
            [coupon_sdk::Restore::Restored]
        );
        assert_eq!(module.info(&coupon).await.unwrap().last_seq, 5);
    }
}

mod cluster {
    #[test]
    fn on_redis() {
        super::the_cluster_client_issues_across_slots(coupon_tests::Flavor::Redis);
    }

    #[test]
    fn on_valkey() {
        super::the_cluster_client_issues_across_slots(coupon_tests::Flavor::Valkey);
    }

    #[test]
    fn on_redis8() {
        super::the_cluster_client_issues_across_slots(coupon_tests::Flavor::Redis8);
    }
}
