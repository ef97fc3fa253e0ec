//! Stage 3, commit: one database transaction per batch holding its rows only — the
//! idempotent inserts and the updates of missing halves. Replaying a batch (a crash between
//! COMMIT and XACK) changes nothing and counts its events as duplicates. Checkpoints are not
//! written here but after the COMMIT, apart (see [`crate::checkpoint`]), so the
//! batches in flight share no row but those of their own events.
//!
//! [`plan`] decides what each event does to its row (and refuses the events that contradict
//! a persisted row); [`statements`] writes a batch with few statements whatever the number of
//! coupons in it.

pub mod plan;
pub mod statements;

use crate::db::Db;
use crate::event::{Event, Op};
use plan::Refused;
use sqlx::{Any, Transaction};
use std::future::Future;
use std::time::Duration;

/// How long the statements before COMMIT may take together, and COMMIT itself.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub statements: Duration,
    pub commit: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            statements: Duration::from_secs(30),
            commit: Duration::from_secs(120),
        }
    }
}

pub(crate) fn timed_out(what: &str, limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took longer than {limit:?}"),
    ))
}

pub(crate) fn aborted() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "shutting down: the transaction was rolled back before COMMIT",
    ))
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitStats {
    /// New rows.
    pub inserted: u64,
    /// Rows that got their missing half (a revoke, or the issue of a row an earlier version
    /// created from its revoke).
    pub updated: u64,
    /// Events already in the database (a replay after a crash, or a second delivery).
    pub duplicates: u64,
    /// Events not written (see [`plan`]): the caller leaves them pending, to be tried again
    /// and dead-lettered after the last delivery.
    pub refused: Vec<Refused>,
    /// Statements the batch took (COMMIT not counted).
    pub statements: u64,
}

/// Writes the rows of `events`, in one transaction. The statements before COMMIT are
/// abandoned (the transaction rolled back) after `limits.statements` or when `abort`
/// completes; COMMIT itself is only bounded by `limits.commit`, never cut short by `abort`.
pub async fn commit_batch(
    db: &Db,
    events: &[Event],
    limits: Limits,
    abort: impl Future<Output = ()>,
) -> Result<CommitStats, sqlx::Error> {
    let write = async {
        let mut tx = db.pool.begin().await?;
        let stats = write_batch(&mut tx, events).await?;
        Ok::<_, sqlx::Error>((tx, stats))
    };
    let (tx, stats) = tokio::select! {
        written = tokio::time::timeout(limits.statements, write) => match written {
            Ok(written) => written?,
            Err(_) => return Err(timed_out("the batch's statements", limits.statements)),
        },
        () = abort => return Err(aborted()),
    };
    match tokio::time::timeout(limits.commit, tx.commit()).await {
        Ok(done) => done?,
        // Committed or not is unknown: the retry replays the batch, which is idempotent.
        Err(_) => return Err(timed_out("COMMIT", limits.commit)),
    }
    Ok(stats)
}

/// Everything of a batch before COMMIT.
async fn write_batch(
    tx: &mut Transaction<'static, Any>,
    events: &[Event],
) -> Result<CommitStats, sqlx::Error> {
    let mut stats = CommitStats::default();
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_unstable_by(|a, b| plan::order(a, b));

    // Fresh events (the common case) have no row yet: only the rows of revokes whose issue is
    // not in the batch are looked up, the rest is inserted at once, and when an insert finds
    // a row there after all (a replay, a reused seq), every row is looked up and planned
    // again.
    let lone_revokes = lone_revokes(&sorted);
    let present = statements::lookup(tx, &lone_revokes, &mut stats).await?;
    let mut plan = plan::plan(&sorted, present);
    sqlx::query("SAVEPOINT fresh").execute(&mut **tx).await?;
    match statements::insert_rows(tx, &plan.new_rows, &mut stats).await {
        Ok(()) => {}
        Err(error) if is_duplicate(&error) => {
            sqlx::query("ROLLBACK TO SAVEPOINT fresh")
                .execute(&mut **tx)
                .await?;
            stats = CommitStats {
                statements: stats.statements + 2,
                ..CommitStats::default()
            };
            let present = statements::lookup(tx, &sorted, &mut stats).await?;
            plan = plan::plan(&sorted, present);
            statements::insert_rows(tx, &plan.new_rows, &mut stats).await?;
        }
        Err(error) => return Err(error),
    }
    stats.duplicates += plan.duplicates;
    statements::set_halves(tx, Op::Issue, &plan.set_issue, &mut stats).await?;
    statements::set_halves(tx, Op::Revoke, &plan.set_revoke, &mut stats).await?;
    stats.refused = plan.refused;
    Ok(stats)
}

/// The revokes of `sorted` (in [`plan::order`]) whose issue is not in the batch.
fn lone_revokes<'a>(sorted: &[&'a Event]) -> Vec<&'a Event> {
    let mut lone = Vec::new();
    let mut issued: Option<(&[u8], i64)> = None;
    for event in sorted {
        let key = (event.coupon.as_slice(), event.seq);
        match event.op {
            Op::Issue | Op::Restore => issued = Some(key),
            Op::Revoke if issued != Some(key) => lone.push(*event),
            Op::Revoke => {}
        }
    }
    lone
}

pub(crate) fn is_duplicate(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::scratch_sqlite;
    use crate::event::EntryId;
    use sqlx::Row;
    use std::sync::Arc;

    fn event(op: Op, user: &str, seq: i64, id_ms: u64) -> Event {
        Event {
            stream: Arc::from(&b"c:events{c}"[..]),
            id: EntryId { ms: id_ms, seq: 0 },
            op,
            coupon: b"c".to_vec(),
            user: user.as_bytes().to_vec(),
            seq,
            ts_ms: i64::try_from(id_ms).unwrap_or(0),
        }
    }

    async fn commit(db: &Db, events: &[Event]) -> Result<CommitStats, sqlx::Error> {
        commit_batch(db, events, Limits::default(), std::future::pending()).await
    }

    async fn rows(db: &Db) -> Vec<(i64, Vec<u8>, Option<i64>, Option<i64>)> {
        sqlx::query(
            "SELECT seq, CAST(user AS BLOB), issued_at_ms, revoked_at_ms FROM coupon_issuance \
             ORDER BY seq",
        )
        .fetch_all(&db.pool)
        .await
        .expect("select")
        .iter()
        .map(|row| {
            (
                row.get::<i64, _>(0),
                row.get::<Vec<u8>, _>(1),
                row.get::<Option<i64>, _>(2),
                row.get::<Option<i64>, _>(3),
            )
        })
        .collect()
    }

    /// The commit stage alone, on SQLite: replays change nothing, a revoke whose issue is
    /// not persisted yet waits (not written) and lands once its issue has, and the batch's
    /// transaction holds rows only (no checkpoint: they are written apart, after COMMIT).
    #[tokio::test]
    async fn commits_are_idempotent_and_revokes_wait_for_their_issue() {
        let (_dir, db) = scratch_sqlite().await;

        let first = [
            event(Op::Issue, "a", 1, 10),
            event(Op::Issue, "b", 2, 20),
            event(Op::Revoke, "b", 2, 30),
        ];
        let stats = commit(&db, &first).await.expect("commit");
        assert_eq!((stats.inserted, stats.updated, stats.duplicates), (2, 0, 0));
        let stats = commit(&db, &first).await.expect("replay");
        assert_eq!((stats.inserted, stats.updated, stats.duplicates), (0, 0, 3));

        // The revoke of seq 3 comes before its issue (read by another consumer).
        let early = [event(Op::Revoke, "c", 3, 50)];
        let stats = commit(&db, &early).await.expect("commit");
        assert_eq!((stats.inserted, stats.updated), (0, 0));
        assert_eq!(stats.refused.len(), 1);
        assert!(!stats.refused[0].is_conflict());
        let issue = [
            event(Op::Issue, "c", 3, 40),
            event(Op::Issue, "d", 5000, 60),
        ];
        let stats = commit(&db, &issue).await.expect("commit");
        assert_eq!((stats.inserted, stats.updated), (2, 0));
        let stats = commit(&db, &early).await.expect("the revoke again");
        assert_eq!((stats.updated, stats.refused.len()), (1, 0));
        assert_eq!(
            rows(&db).await,
            vec![
                (1, b"a".to_vec(), Some(10), None),
                (2, b"b".to_vec(), Some(20), Some(30)),
                (3, b"c".to_vec(), Some(40), Some(50)),
                (5000, b"d".to_vec(), Some(60), None),
            ]
        );
        let checkpoints: i64 = sqlx::query("SELECT COUNT(*) FROM coupon_checkpoint")
            .fetch_one(&db.pool)
            .await
            .expect("count")
            .get(0);
        assert_eq!(checkpoints, 0, "a batch's transaction writes rows only");
    }

    /// Another entry claiming an already persisted (coupon, seq), or another user revoking
    /// it, is not written over it and is reported; the rest of the batch commits.
    #[tokio::test]
    async fn conflicting_events_are_reported_not_written() {
        let (_dir, db) = scratch_sqlite().await;
        commit(&db, &[event(Op::Issue, "alice", 1, 10)])
            .await
            .expect("commit");
        let reborn = [
            event(Op::Issue, "carol", 1, 50),
            event(Op::Issue, "y", 2, 60),
            event(Op::Revoke, "carol", 1, 70),
        ];
        let stats = commit(&db, &reborn).await.expect("commit");
        assert_eq!((stats.inserted, stats.updated, stats.duplicates), (1, 0, 0));
        assert_eq!(stats.refused.len(), 2);
        assert!(stats.refused.iter().all(|r| r.is_conflict()));
        assert_eq!(stats.refused[0].id, EntryId { ms: 50, seq: 0 });
        let reason = stats.refused[1].reason();
        assert!(
            reason.contains("\"alice\"") && reason.contains("10-0"),
            "{reason}"
        );
        assert_eq!(
            rows(&db).await,
            vec![
                (1, b"alice".to_vec(), Some(10), None),
                (2, b"y".to_vec(), Some(60), None),
            ]
        );
        // Names are stored as text, so they can be queried as text.
        let found =
            sqlx::query("SELECT seq FROM coupon_issuance WHERE coupon = 'c' AND user = 'y'")
                .fetch_all(&db.pool)
                .await
                .expect("select");
        assert_eq!(found.len(), 1);
    }

    fn spread(op: Op, coupons: usize, per_coupon: usize, first_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        for n in 0..per_coupon {
            for c in 0..coupons {
                let ms = first_ms + (n * coupons + c) as u64;
                let mut event = event(op, &format!("u{c}-{n}"), n as i64 + 1, ms);
                event.coupon = format!("coupon-{c}").into_bytes();
                event.stream = Arc::from(format!("{{coupon-{c}}}:events").as_bytes());
                events.push(event);
            }
        }
        events
    }

    /// A batch over many coupons and streams takes a handful of statements, not a few per
    /// coupon or stream: one lookup, the inserts, one update per kind of half.
    #[tokio::test]
    async fn a_batch_over_many_coupons_takes_few_statements() {
        let (_dir, db) = scratch_sqlite().await;
        let issues = spread(Op::Issue, 50, 20, 1000);
        let stats = commit(&db, &issues).await.expect("commit");
        assert_eq!(
            (stats.inserted, stats.updated, stats.duplicates),
            (1000, 0, 0)
        );
        // no lookup (no lone revoke) + 6 inserts (512+256+128+64+32+8)
        assert!(stats.statements <= 6, "{stats:?}");
        let revokes = spread(Op::Revoke, 50, 20, 5000);
        let stats = commit(&db, &revokes).await.expect("commit");
        assert_eq!(
            (stats.inserted, stats.updated, stats.duplicates),
            (0, 1000, 0)
        );
        // lookup (50 ranges) + 8 revoke updates of 128
        assert!(stats.statements <= 9, "{stats:?}");
        let stats = commit(&db, &revokes).await.expect("replay");
        assert_eq!(
            (stats.inserted, stats.updated, stats.duplicates),
            (0, 0, 1000)
        );
        assert!(stats.statements <= 2, "{stats:?}");
        let revoked: i64 = sqlx::query(
            "SELECT COUNT(*) FROM coupon_issuance WHERE revoke_entry_id IS NOT NULL \
             AND issue_entry_id IS NOT NULL",
        )
        .fetch_one(&db.pool)
        .await
        .expect("count")
        .get(0);
        assert_eq!(revoked, 1000);
    }

    /// Statements stuck before COMMIT are abandoned on `abort`, and nothing is written.
    #[tokio::test]
    async fn abort_rolls_back_before_commit() {
        let (_dir, db) = scratch_sqlite().await;
        // The only connection is taken: BEGIN cannot even start.
        let held = db.pool.acquire().await.expect("acquire");
        let events = [event(Op::Issue, "a", 1, 10)];
        let started = std::time::Instant::now();
        let limits = Limits {
            statements: Duration::from_secs(60),
            commit: Duration::from_secs(60),
        };
        let abort = tokio::time::sleep(Duration::from_millis(200));
        let error = commit_batch(&db, &events, limits, abort)
            .await
            .expect_err("aborted");
        assert!(started.elapsed() < Duration::from_secs(2), "{error}");
        let limits = Limits {
            statements: Duration::from_millis(200),
            commit: Duration::from_secs(60),
        };
        let error = commit_batch(&db, &events, limits, std::future::pending())
            .await
            .expect_err("timed out");
        assert!(error.to_string().contains("longer than"), "{error}");
        drop(held);
        assert_eq!(rows(&db).await, Vec::new());
    }
}
