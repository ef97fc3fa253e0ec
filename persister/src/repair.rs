//! After a failover or a Redis data loss: `reconcile` compares the database with Redis
//! coupon by coupon and says every difference in plain words; `restore` puts back, through
//! `COUPON.RESTORE`, the holders and last seqs the database knows and Redis lost — never
//! overwriting what Redis holds, reporting every conflict instead.
//!
//! Both read each coupon from the node that owns it (a cluster connection on a cluster).

use crate::db::Db;
use crate::event::StreamKey;
use crate::maintain::sample;
use crate::pipeline::commit::statements::unhex;
use coupon_layout::{CouponKey, LAST_SEQ_FIELD};
use coupon_sdk::{Coupons, Restore};
use redis::aio::ConnectionLike;
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the database knows of one coupon: seq → (user, revoked).
pub type DbCoupon = BTreeMap<u64, (Vec<u8>, bool)>;

/// Every row of `coupon_issuance`, by coupon.
pub async fn db_coupons(db: &Db) -> anyhow::Result<BTreeMap<Vec<u8>, DbCoupon>> {
    let rows = sqlx::query(
        "SELECT HEX(coupon), seq, HEX(user), revoke_entry_id FROM coupon_issuance \
         ORDER BY coupon, seq",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut coupons: BTreeMap<Vec<u8>, DbCoupon> = BTreeMap::new();
    for row in rows {
        let coupon = unhex(&row.try_get::<String, _>(0)?);
        let seq: i64 = row.try_get(1)?;
        let user = unhex(&row.try_get::<String, _>(2)?);
        let revoked = row.try_get::<Option<String>, _>(3)?.is_some();
        let seq = u64::try_from(seq).map_err(|_| anyhow::anyhow!("a negative seq: {seq}"))?;
        coupons
            .entry(coupon)
            .or_default()
            .insert(seq, (user, revoked));
    }
    Ok(coupons)
}

/// A coupon as Redis holds it: user → seq, and the last seq (`None`: no coupon key).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RedisCoupon {
    pub holders: BTreeMap<Vec<u8>, u64>,
    pub last_seq: Option<u64>,
}

pub async fn redis_coupon<C: ConnectionLike + Send>(
    conn: &mut C,
    coupon: &[u8],
) -> anyhow::Result<RedisCoupon> {
    let mut fields: BTreeMap<Vec<u8>, u64> =
        redis::cmd("HGETALL").arg(coupon).query_async(conn).await?;
    let last_seq = fields.remove(LAST_SEQ_FIELD);
    Ok(RedisCoupon {
        holders: fields,
        last_seq,
    })
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every difference between the database's rows of a coupon and Redis' state of it, in
/// plain words (without the coupon's name).
pub fn differences(db: &DbCoupon, redis: &RedisCoupon) -> Vec<String> {
    let mut found = Vec::new();
    let Some(last_seq) = redis.last_seq else {
        let held = db.values().filter(|(_, revoked)| !revoked).count();
        return vec![format!(
            "the coupon is missing in Redis; the database has {} seqs, {held} of them held",
            db.len()
        )];
    };
    let owner_in_redis: BTreeMap<u64, &[u8]> = redis
        .holders
        .iter()
        .map(|(user, seq)| (*seq, user.as_slice()))
        .collect();
    for (seq, (user, revoked)) in db {
        let (name, redis_seq) = (show(user), redis.holders.get(user));
        if *revoked {
            if redis_seq == Some(seq) {
                found.push(format!(
                    "{name}'s seq {seq} is revoked in the database but still held in Redis"
                ));
            }
            continue;
        }
        match (redis_seq, owner_in_redis.get(seq)) {
            (Some(held), _) if held == seq => {}
            (Some(held), _) => found.push(format!(
                "{name} holds seq {seq} in the database but seq {held} in Redis"
            )),
            (None, Some(other)) => found.push(format!(
                "seq {seq} is {name}'s in the database but {}'s in Redis",
                show(other)
            )),
            (None, None) => found.push(format!(
                "{name} holds seq {seq} in the database but not in Redis"
            )),
        }
    }
    for (user, seq) in &redis.holders {
        let name = show(user);
        match db.get(seq) {
            None => found.push(format!(
                "{name} holds seq {seq} in Redis but the database has no row for it"
            )),
            Some((owner, true)) if owner != user => found.push(format!(
                "seq {seq} is {}'s (revoked) in the database but {name}'s in Redis",
                show(owner)
            )),
            // Same user: reported above; another holder: reported from its row.
            Some(_) => {}
        }
    }
    if let Some(max) = db.keys().next_back() {
        if last_seq < *max {
            found.push(format!(
                "Redis' last seq {last_seq} is below the database's {max}"
            ));
        }
    }
    found
}

/// Waits until the group has persisted and acknowledged every entry of the coupons'
/// streams (nothing pending, nothing undelivered), up to `limit`. Returns the streams
/// still behind, with how many entries.
pub async fn wait_drained<C: ConnectionLike + Send>(
    conn: &mut C,
    coupons: &[Vec<u8>],
    group: &str,
    limit: Duration,
) -> anyhow::Result<Vec<(Vec<u8>, u64)>> {
    let deadline = Instant::now() + limit;
    let streams: Vec<(Vec<u8>, StreamKey)> = coupons
        .iter()
        .filter_map(|coupon| {
            let stream = CouponKey::new(coupon).ok()?.events_key();
            Some((coupon.clone(), Arc::from(stream)))
        })
        .collect();
    loop {
        let mut behind = Vec::new();
        for (coupon, stream) in &streams {
            // One stream per call: on a cluster, each goes to its own node.
            let states = sample::sample(conn, std::slice::from_ref(stream), group, false).await?;
            let totals = sample::totals(&states, group);
            let left = totals.pending + totals.backlog;
            if left > 0 {
                behind.push((coupon.clone(), left));
            }
        }
        if behind.is_empty() || Instant::now() >= deadline {
            return Ok(behind);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The outcome of `reconcile`: differences found, by coupon.
pub async fn reconcile<C: ConnectionLike + Send>(
    conn: &mut C,
    db: &Db,
    group: &str,
    drain: Duration,
) -> anyhow::Result<usize> {
    let coupons = db_coupons(db).await?;
    let names: Vec<Vec<u8>> = coupons.keys().cloned().collect();
    let behind = wait_drained(conn, &names, group, drain).await?;
    let mut total = 0;
    let mut differing = 0;
    for (coupon, left) in &behind {
        println!(
            "{}: {left} events not yet persisted by group {group} after {drain:?} (is the \
             persister running?)",
            show(coupon)
        );
        total += 1;
    }
    for (coupon, rows) in &coupons {
        let redis = redis_coupon(conn, coupon).await?;
        let found = differences(rows, &redis);
        if !found.is_empty() {
            differing += 1;
        }
        for difference in &found {
            println!("{}: {difference}", show(coupon));
        }
        total += found.len();
    }
    if total == 0 {
        println!(
            "reconcile: {} coupons compared, the database and Redis agree",
            coupons.len()
        );
    } else {
        println!(
            "reconcile: {} coupons compared, {differing} differ; {total} differences",
            coupons.len()
        );
    }
    Ok(total)
}

/// Counts of what `restore` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub coupons: usize,
    pub restored: usize,
    pub held: usize,
    pub conflicts: usize,
}

/// Puts back every coupon from the database: the last seq raised to the database's highest
/// seq, and every holder (row not revoked) Redis lost. Conflicts are printed, never resolved.
pub async fn restore<C>(coupons_client: &Coupons<C>, db: &Db) -> anyhow::Result<Restored>
where
    C: ConnectionLike + Clone + Send + Sync,
{
    let coupons = db_coupons(db).await?;
    let mut done = Restored::default();
    for (coupon, rows) in &coupons {
        let floor = rows.keys().next_back().copied().unwrap_or(0);
        let holders: Vec<(&[u8], u64)> = rows
            .iter()
            .filter(|(_, (_, revoked))| !revoked)
            .map(|(seq, (user, _))| (user.as_slice(), *seq))
            .collect();
        let answers = coupons_client
            .restore(coupon, floor, &holders)
            .await
            .map_err(|error| anyhow::anyhow!("{}: {error}", show(coupon)))?;
        done.coupons += 1;
        for ((user, seq), answer) in holders.iter().zip(answers) {
            let name = show(user);
            match answer {
                Restore::Restored => done.restored += 1,
                Restore::Held => done.held += 1,
                Restore::UserHolds { seq: other } => {
                    done.conflicts += 1;
                    println!(
                        "{}: {name} holds seq {seq} in the database but seq {other} in Redis: \
                         left as it is",
                        show(coupon)
                    );
                }
                Restore::SeqTaken { user: other } => {
                    done.conflicts += 1;
                    println!(
                        "{}: seq {seq} is {name}'s in the database but {}'s in Redis: left as \
                         it is",
                        show(coupon),
                        show(&other)
                    );
                }
            }
        }
    }
    println!(
        "restore: {} coupons; {} holders restored, {} already held; {} conflicts",
        done.coupons, done.restored, done.held, done.conflicts
    );
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(rows: &[(u64, &str, bool)]) -> DbCoupon {
        rows.iter()
            .map(|(seq, user, revoked)| (*seq, (user.as_bytes().to_vec(), *revoked)))
            .collect()
    }

    fn redis(holders: &[(&str, u64)], last_seq: u64) -> RedisCoupon {
        RedisCoupon {
            holders: holders
                .iter()
                .map(|(user, seq)| (user.as_bytes().to_vec(), *seq))
                .collect(),
            last_seq: Some(last_seq),
        }
    }

    #[test]
    fn each_difference_in_plain_words() {
        let rows = db(&[
            (1, "alice", false),
            (2, "bob", true),
            (3, "carol", false),
            (4, "dave", false),
            (5, "erin", false),
        ]);
        let same = redis(&[("alice", 1), ("carol", 3), ("dave", 4), ("erin", 5)], 5);
        assert_eq!(differences(&rows, &same), Vec::<String>::new());
        let lost = redis(&[("bob", 2), ("carol", 6), ("zed", 4), ("erin", 5)], 3);
        assert_eq!(
            differences(&rows, &lost),
            vec![
                "alice holds seq 1 in the database but not in Redis",
                "bob's seq 2 is revoked in the database but still held in Redis",
                "carol holds seq 3 in the database but seq 6 in Redis",
                "seq 4 is dave's in the database but zed's in Redis",
                "carol holds seq 6 in Redis but the database has no row for it",
                "Redis' last seq 3 is below the database's 5",
            ]
        );
        let gone = RedisCoupon::default();
        assert_eq!(
            differences(&rows, &gone),
            vec!["the coupon is missing in Redis; the database has 5 seqs, 4 of them held"]
        );
    }
}
