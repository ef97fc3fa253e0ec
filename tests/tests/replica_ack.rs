//! Replica-acknowledged writes in the SDK (`Coupons::with_replica_ack`): a write is reported
//! only once a replica has it, `Error::NotReplicated` when it did not confirm in time, and a
//! retry from a new client waits for the earlier write too.

use coupon_sdk::{Answer, Backend, Coupons, Error, Outcome, ReplicaAck, Restore};
use coupon_tests::replicas::wait_for_first_ack;
use coupon_tests::{key_in_slot, on_every_server, Cluster, Flavor, Server};
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn ack(replicas: u32, timeout_ms: u64) -> ReplicaAck {
    ReplicaAck {
        replicas,
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn info_field(server: &Server, section: &str, field: &str) -> String {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut server.connect())
        .expect("INFO");
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .map(|value| value.trim().to_string())
        .unwrap_or_default()
}

fn replica_of(master: &Server) -> Server {
    let replica = Server::builder(master.flavor())
        .module(false)
        .arg("replicaof", &format!("127.0.0.1 {}", master.port()))
        .start();
    wait_until(|| info_field(&replica, "replication", "master_link_status") == "up");
    wait_until(|| info_field(master, "replication", "connected_slaves") == "1");
    wait_for_first_ack(master);
    replica
}

fn wait_until(mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "gave up waiting");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The replica's process stopped (SIGSTOP: its connections stay open, it reads and acks
/// nothing) until dropped.
struct Frozen(libc::pid_t);

impl Frozen {
    fn freeze(server: &Server) -> Frozen {
        let pid: libc::pid_t = info_field(server, "server", "process_id")
            .parse()
            .expect("INFO server names the pid");
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

async fn coupons_on(server: &Server, backend: Backend) -> Coupons<MultiplexedConnection> {
    // No response timeout of the connection's own (redis-rs' default is 500 ms): a `WAIT`
    // may take up to its own timeout, which the SDK's replica acknowledgement sets.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let connection = server
        .client()
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect");
    Coupons::with_backend(connection, backend)
}

fn hget(server: &Server, key: &str, field: &str) -> Option<u64> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(&mut server.connect())
        .expect("HGET")
}

/// With the replica up every write is confirmed, and is on the replica when the call returns.
fn confirmed_while_the_replica_keeps_up(flavor: Flavor) {
    let master = Server::start(flavor);
    let replica = replica_of(&master);
    runtime().block_on(async {
        for backend in [Backend::Module, Backend::Script] {
            let coupons = coupons_on(&master, backend)
                .await
                .with_replica_ack(ack(1, 5_000));
            let coupon = format!("sale-{backend:?}");
            assert_eq!(
                coupons.issue(&coupon, "alice", 10).await.unwrap(),
                Outcome::Issued { seq: 1 }
            );
            assert_eq!(hget(&replica, &coupon, "alice"), Some(1), "{backend:?}");
            assert_eq!(
                coupons.issue(&coupon, "alice", 10).await.unwrap(),
                Outcome::AlreadyIssued { seq: 1 }
            );
            assert_eq!(
                coupons.restore(&coupon, 5, &[("bob", 4)]).await.unwrap(),
                [Restore::Restored]
            );
            assert_eq!(hget(&replica, &coupon, "bob"), Some(4));
            assert!(coupons.revoke(&coupon, "alice").await.unwrap());
            assert_eq!(hget(&replica, &coupon, "alice"), None);
            // Two replicas asked for, one there: written, reported as not replicated.
            let two = coupons.with_replica_ack(ack(2, 100));
            match two.issue(&coupon, "carol", 10).await {
                Err(Error::NotReplicated {
                    answer,
                    acked: 1,
                    wanted: 2,
                }) => assert_eq!(
                    answer,
                    Answer::Issue {
                        outcome: Outcome::Issued { seq: 6 }
                    }
                ),
                other => panic!("{other:?}"),
            }
        }
    });
    assert_eq!(replica.digest(), master.digest());
}

/// A frozen replica: the issue happens on the primary and is reported NotReplicated within
/// the timeout; a retry from a new client (a fresh connection, which wrote nothing) also
/// waits for that issue; once the replica is back, a retry confirms the same seq.
fn a_frozen_replica_leaves_the_issue_unconfirmed_until_a_retry(flavor: Flavor) {
    let master = Server::start(flavor);
    let replica = replica_of(&master);
    runtime().block_on(async {
        for backend in [Backend::Module, Backend::Script] {
            let coupon = format!("sale-{backend:?}");
            let frozen = Frozen::freeze(&replica);
            let first = coupons_on(&master, backend)
                .await
                .with_replica_ack(ack(1, 300));
            let started = Instant::now();
            let unconfirmed = first.issue(&coupon, "alice", 10).await;
            let waited = started.elapsed();
            match unconfirmed {
                Err(Error::NotReplicated {
                    answer,
                    acked: 0,
                    wanted: 1,
                }) => assert_eq!(
                    answer,
                    Answer::Issue {
                        outcome: Outcome::Issued { seq: 1 }
                    }
                ),
                other => panic!("{other:?}"),
            }
            assert!(
                waited >= Duration::from_millis(290) && waited < Duration::from_secs(3),
                "answered after {waited:?}"
            );
            assert_eq!(hget(&master, &coupon, "alice"), Some(1), "on the primary");

            // A new client's connection has written nothing, yet its WAIT counts the issue.
            let fresh = coupons_on(&master, backend)
                .await
                .with_replica_ack(ack(1, 300));
            match fresh.issue(&coupon, "alice", 10).await {
                Err(Error::NotReplicated {
                    answer, acked: 0, ..
                }) => assert_eq!(
                    answer,
                    Answer::Issue {
                        outcome: Outcome::AlreadyIssued { seq: 1 }
                    }
                ),
                other => panic!("a fresh client's retry must wait too: {other:?}"),
            }

            drop(frozen);
            let retry = coupons_on(&master, backend)
                .await
                .with_replica_ack(ack(1, 5_000));
            assert_eq!(
                retry.issue(&coupon, "alice", 10).await.unwrap(),
                Outcome::AlreadyIssued { seq: 1 }
            );
            assert_eq!(hget(&replica, &coupon, "alice"), Some(1), "on the replica");
        }
    });
    assert_eq!(replica.digest(), master.digest());
}

on_every_server!(
    confirmed_while_the_replica_keeps_up,
    a_frozen_replica_leaves_the_issue_unconfirmed_until_a_retry,
);

/// On a cluster, WAIT goes with the write to the node holding the coupon: with a replica
/// added to node 0 only, a coupon there is confirmed and one on node 1 is not.
fn cluster_wait_is_answered_by_the_coupons_node(flavor: Flavor) {
    let cluster = Cluster::start(flavor);
    let replica = Server::builder(flavor)
        .module(false)
        .arg("cluster-enabled", "yes")
        .arg("cluster-config-file", "nodes.conf")
        .arg("cluster-node-timeout", "5000")
        .start();
    let mut conn = replica.connect();
    redis::cmd("CLUSTER")
        .arg("MEET")
        .arg("127.0.0.1")
        .arg(cluster.nodes[0].port())
        .query::<()>(&mut conn)
        .expect("CLUSTER MEET");
    let primary = cluster.node_id(0);
    wait_until(|| {
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut replica.connect())
            .unwrap_or_default();
        nodes.contains(&primary)
    });
    redis::cmd("CLUSTER")
        .arg("REPLICATE")
        .arg(&primary)
        .query::<()>(&mut conn)
        .expect("CLUSTER REPLICATE");
    wait_until(|| info_field(&replica, "replication", "master_link_status") == "up");
    wait_for_first_ack(&cluster.nodes[0]);
    for node in cluster.nodes.iter().chain([&replica]) {
        wait_until(|| {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut node.connect())
                .unwrap_or_default();
            info.contains("cluster_state:ok")
        });
    }

    let on_node = |node: usize| {
        let slot = *cluster.slots_of(node)[0].start();
        key_in_slot(&format!("sale-on-{node}"), slot)
    };
    let (replicated, alone) = (on_node(0), on_node(1));
    runtime().block_on(async {
        let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
        let connection = client.get_async_connection().await.unwrap();
        for backend in [Backend::Module, Backend::Script] {
            // Time enough for a replica that keeps up on a busy machine; the node without one
            // is asked with a short wait (below any response timeout of the connection).
            let coupons =
                Coupons::with_backend(connection.clone(), backend).with_replica_ack(ack(1, 5_000));
            let unreplicated =
                Coupons::with_backend(connection.clone(), backend).with_replica_ack(ack(1, 200));
            let coupon = format!("{replicated}-{backend:?}");
            let coupon = key_in_slot(&coupon, coupon_layout::hash_slot(replicated.as_bytes()));
            assert_eq!(
                coupons.issue(&coupon, "alice", 10).await.unwrap(),
                Outcome::Issued { seq: 1 },
                "{backend:?}: node 0 has a replica"
            );
            let mut read = replica.connect();
            redis::cmd("READONLY").query::<()>(&mut read).unwrap();
            let seq: Option<u64> = redis::cmd("HGET")
                .arg(&coupon)
                .arg("alice")
                .query(&mut read)
                .unwrap();
            assert_eq!(seq, Some(1), "on node 0's replica");
            let coupon = format!("{alone}-{backend:?}");
            let coupon = key_in_slot(&coupon, coupon_layout::hash_slot(alone.as_bytes()));
            match unreplicated.issue(&coupon, "alice", 10).await {
                Err(Error::NotReplicated { acked: 0, .. }) => {}
                other => panic!("{backend:?}: node 1 has no replica: {other:?}"),
            }
            assert_eq!(hget(&cluster.nodes[1], &coupon, "alice"), Some(1));
        }
    });
}

mod cluster {
    #[test]
    fn on_redis() {
        super::cluster_wait_is_answered_by_the_coupons_node(coupon_tests::Flavor::Redis);
    }

    #[test]
    fn on_valkey() {
        super::cluster_wait_is_answered_by_the_coupons_node(coupon_tests::Flavor::Valkey);
    }

    #[test]
    fn on_redis8() {
        super::cluster_wait_is_answered_by_the_coupons_node(coupon_tests::Flavor::Redis8);
    }
}
