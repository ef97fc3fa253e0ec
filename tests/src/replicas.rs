//! Replicas in tests and benchmarks.

use crate::Server;

/// Waits until `primary`'s replica has acknowledged: after a diskless full sync a primary
/// streams to its replica only once the replica has sent its first `REPLCONF ACK` (up to a
/// second later), and until then a `WAIT` waits for it.
pub fn wait_for_first_ack(primary: &Server) {
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(10_000)
        .query(&mut primary.connect())
        .expect("WAIT");
    assert_eq!(acked, 1, "the replica never acknowledged");
}
