//! Effects replication: a replica and an AOF, both without the module, end up byte-identical.

use coupon_tests::{mixed_workload, on_every_server, Flavor, Server};
use std::time::{Duration, Instant};

const EMPTY_DIGEST: &str = "0000000000000000000000000000000000000000";

fn replica_of(master: &Server, module: bool) -> Server {
    Server::builder(master.flavor())
        .module(module)
        .arg("replicaof", &format!("127.0.0.1 {}", master.port()))
        .start()
}

/// Waits until the replica has acknowledged everything written on `conn`. WAIT counts the
/// offset of the connection it is sent on, so it must be the one that wrote.
fn wait_for_replica(conn: &mut redis::Connection) {
    let acked: i64 = redis::cmd("WAIT").arg(1).arg(10_000).query(conn).unwrap();
    assert_eq!(acked, 1, "the replica did not catch up");
}

fn wait_for_sync(replica: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.connect())
            .unwrap();
        if info.contains("master_link_status:up") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the replica never linked:\n{}", replica.log());
}

fn a_replica_without_the_module_matches_the_master(flavor: Flavor) {
    let master = Server::start(flavor);
    let mut conn = master.connect();
    // Part before the replica exists (reaches it by full sync), part after (by the stream).
    mixed_workload(&mut conn, 10);
    let replica = replica_of(&master, false);
    wait_for_sync(&replica);
    let writes = mixed_workload(&mut conn, 20);
    assert!(writes > 100, "the workload must write: {writes}");
    wait_for_replica(&mut conn);
    let digest = master.digest();
    assert_ne!(digest, EMPTY_DIGEST);
    assert_eq!(
        replica.key_digests(),
        master.key_digests(),
        "per-key digests"
    );
    assert_eq!(replica.digest(), digest);
}

fn a_replica_with_the_module_matches_too(flavor: Flavor) {
    let master = Server::start(flavor);
    let replica = replica_of(&master, true);
    wait_for_sync(&replica);
    let mut writer = master.connect();
    mixed_workload(&mut writer, 15);
    wait_for_replica(&mut writer);
    assert_eq!(replica.digest(), master.digest());
    // The replica answers reads with the module and refuses writes.
    let mut conn = replica.connect();
    let seq: Option<i64> = redis::cmd("COUPON.CHECK")
        .arg("tiny")
        .arg("user-0")
        .query(&mut conn)
        .unwrap();
    let master_seq: Option<i64> = redis::cmd("COUPON.CHECK")
        .arg("tiny")
        .arg("user-0")
        .query(&mut master.connect())
        .unwrap();
    assert_eq!(seq, master_seq);
    let refused = redis::cmd("COUPON.ISSUE")
        .arg("tiny")
        .arg("x")
        .arg(5)
        .query::<redis::Value>(&mut conn);
    let refusal = refused.unwrap_err().to_string();
    assert!(refusal.contains("read only"), "{refusal}");
}

on_every_server!(
    a_replica_without_the_module_matches_the_master,
    a_replica_with_the_module_matches_too,
);
