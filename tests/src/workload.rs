//! A deterministic mixed workload: issues, duplicates, sold-out attempts, windows and revokes
//! over several coupons, so replication and persistence tests compare non-trivial data.

use redis::Connection;

/// Runs `rounds` rounds of the workload; returns how many commands changed data.
pub fn mixed_workload(conn: &mut Connection, rounds: usize) -> usize {
    let mut writes = 0;
    for round in 0..rounds {
        for coupon in ["flash", "shop{7}:vip", "tiny"] {
            let limit = if coupon == "tiny" { 3 } else { 1_000 };
            for user in 0..20 {
                let user = format!("user-{}", (round * 7 + user) % 45);
                let (status, _, _): (String, Option<i64>, i64) = redis::cmd("COUPON.ISSUE")
                    .arg(coupon)
                    .arg(&user)
                    .arg(limit)
                    .query(conn)
                    .expect("COUPON.ISSUE");
                writes += usize::from(status == "ISSUED");
            }
            for user in 0..5 {
                let user = format!("user-{}", (round * 3 + user) % 45);
                let revoked: i64 = redis::cmd("COUPON.REVOKE")
                    .arg(coupon)
                    .arg(&user)
                    .query(conn)
                    .expect("COUPON.REVOKE");
                writes += revoked as usize;
            }
        }
        let (_, _, _): (String, Option<i64>, i64) = redis::cmd("COUPON.ISSUE")
            .arg("windowed")
            .arg(format!("late-{round}"))
            .arg(10)
            .arg("WINDOW")
            .arg(0)
            .arg(i64::MAX)
            .query(conn)
            .expect("COUPON.ISSUE WINDOW");
    }
    writes
}
