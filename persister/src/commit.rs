//! Stage 3, commit: one database transaction per batch holding the idempotent inserts, the
//! revoke updates and the checkpoint. Replaying a batch (a crash between COMMIT and XACK)
//! changes nothing and counts its events as duplicates.
//!
//! Each event touches the row of its (coupon, seq): an issue sets the issue columns, a revoke
//! the revoke columns, whichever arrives first creates the row. So a revoke read before its
//! issue (another consumer, a claim) still ends with the right row. The statements come in a
//! few fixed shapes so prepared statements don't pile up.

use crate::db::Db;
use crate::event::{EntryId, Event, Op, StreamKey};
use sqlx::{Any, QueryBuilder, Row, Transaction};
use std::collections::{BTreeMap, HashMap};

/// Multi-row insert sizes: a batch's new rows are cut greedily into these, so at most four
/// insert statements are ever prepared. 256 rows × 7 columns stays far below MySQL's 65,535
/// bind parameters, and 256 rows of two 512-byte keys far below `max_allowed_packet`.
pub const INSERT_SHAPES: [usize; 4] = [256, 32, 4, 1];

/// An event that contradicts what is already persisted: another entry of the same stream
/// already recorded this (coupon, seq). Only a Redis that lost data or a recreated coupon
/// does that; the event is not written, and the caller dead-letters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub stream: StreamKey,
    pub id: EntryId,
    pub reason: String,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitStats {
    /// New rows.
    pub inserted: u64,
    /// Rows that got their missing half (the issue after an early revoke, or a revoke).
    pub updated: u64,
    /// Events already in the database (a replay after a crash, or a second delivery).
    pub duplicates: u64,
    /// Events not written because they contradict persisted ones.
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Default)]
struct NewRow<'a> {
    user: &'a [u8],
    issue: Option<(i64, String)>,
    revoke: Option<(i64, String)>,
}

/// The entry IDs a row already records.
#[derive(Debug, Clone, Default)]
struct Present {
    issue: Option<String>,
    revoke: Option<String>,
}

/// Whether `event` (with ID `id`) is new for a slot holding `recorded`: `Ok(true)` new,
/// `Ok(false)` the same event again, `Err` another event.
fn check_slot(recorded: Option<&str>, id: &str) -> Result<bool, String> {
    match recorded {
        None => Ok(true),
        Some(recorded) if recorded == id => Ok(false),
        Some(recorded) => Err(recorded.to_string()),
    }
}

/// Widest gap between two seqs looked up with one range query.
const MAX_SEQ_GAP: i64 = 1024;

/// Ranges covering sorted `seqs`, split where two neighbours are more than
/// [`MAX_SEQ_GAP`] apart.
pub fn seq_ranges(seqs: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut ranges: Vec<(i64, i64)> = Vec::new();
    for seq in seqs {
        match ranges.last_mut() {
            Some((_, high)) if seq >= *high && seq - *high <= MAX_SEQ_GAP => *high = seq,
            _ => ranges.push((seq, seq)),
        }
    }
    ranges
}

/// Sizes to cut `n` rows into, largest first, all from [`INSERT_SHAPES`].
pub fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    for shape in INSERT_SHAPES {
        while n >= shape {
            sizes.push(shape);
            n -= shape;
        }
    }
    sizes
}

/// Writes `events` and advances `group`'s checkpoint of each stream, in one transaction.
pub async fn commit_batch(
    db: &Db,
    group: &str,
    events: &[Event],
    now_ms: i64,
) -> Result<CommitStats, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let mut stats = CommitStats::default();

    let mut by_coupon: BTreeMap<&[u8], Vec<&Event>> = BTreeMap::new();
    for event in events {
        by_coupon.entry(&event.coupon).or_default().push(event);
    }
    for (coupon, mut coupon_events) in by_coupon {
        coupon_events.sort_by_key(|event| (event.seq, event.id));
        write_coupon(&mut tx, coupon, &coupon_events, &mut stats).await?;
    }

    // The checkpoint covers what was written, not the conflicting events.
    let conflicting: std::collections::HashSet<(&StreamKey, EntryId)> = stats
        .conflicts
        .iter()
        .map(|conflict| (&conflict.stream, conflict.id))
        .collect();
    let mut last_per_stream: BTreeMap<&StreamKey, EntryId> = BTreeMap::new();
    for event in events
        .iter()
        .filter(|event| !conflicting.contains(&(&event.stream, event.id)))
    {
        let last = last_per_stream.entry(&event.stream).or_insert(event.id);
        *last = (*last).max(event.id);
    }
    for (stream, last) in last_per_stream {
        advance_checkpoint(&mut tx, group, stream, last, now_ms).await?;
    }

    tx.commit().await?;
    Ok(stats)
}

async fn write_coupon(
    tx: &mut Transaction<'static, Any>,
    coupon: &[u8],
    events: &[&Event],
    stats: &mut CommitStats,
) -> Result<(), sqlx::Error> {
    // One statement shape for any batch: a seq range. Batches carry runs of nearly
    // consecutive seqs; a far-off seq (an old entry reclaimed) gets a range of its own
    // instead of stretching one range over rows the batch does not touch.
    let mut present: HashMap<i64, Present> = HashMap::new();
    for (low, high) in seq_ranges(events.iter().map(|event| event.seq)) {
        let rows = sqlx::query(
            "SELECT seq, issue_entry_id, revoke_entry_id FROM coupon_issuance \
             WHERE coupon = ? AND seq BETWEEN ? AND ?",
        )
        .bind(coupon)
        .bind(low)
        .bind(high)
        .fetch_all(&mut **tx)
        .await?;
        for row in rows {
            let seq: i64 = row.try_get(0)?;
            let issue: Option<String> = row.try_get(1)?;
            let revoke: Option<String> = row.try_get(2)?;
            present.insert(seq, Present { issue, revoke });
        }
    }

    let mut new_rows: BTreeMap<i64, NewRow<'_>> = BTreeMap::new();
    let mut set_issue: Vec<&Event> = Vec::new();
    let mut set_revoke: Vec<&Event> = Vec::new();
    for event in events {
        let id = event.id.to_string();
        let op = match event.op {
            Op::Issue => "issue",
            Op::Revoke => "revoke",
        };
        let conflict = |recorded: String| Conflict {
            stream: event.stream.clone(),
            id: event.id,
            reason: format!(
                "conflict: the {op} of seq {} is already persisted from entry {recorded}",
                event.seq
            ),
        };
        if let Some(row) = present.get_mut(&event.seq) {
            let (slot, list) = match event.op {
                Op::Issue => (&mut row.issue, &mut set_issue),
                Op::Revoke => (&mut row.revoke, &mut set_revoke),
            };
            match check_slot(slot.as_deref(), &id) {
                Ok(true) => {
                    *slot = Some(id);
                    list.push(event);
                }
                Ok(false) => stats.duplicates += 1,
                Err(recorded) => stats.conflicts.push(conflict(recorded)),
            }
            continue;
        }
        let row = new_rows.entry(event.seq).or_insert_with(|| NewRow {
            user: &event.user,
            ..NewRow::default()
        });
        let slot = match event.op {
            Op::Issue => &mut row.issue,
            Op::Revoke => &mut row.revoke,
        };
        match check_slot(slot.as_ref().map(|(_, id)| id.as_str()), &id) {
            Ok(true) => *slot = Some((event.ts_ms, id)),
            Ok(false) => stats.duplicates += 1,
            Err(recorded) => stats.conflicts.push(conflict(recorded)),
        }
    }

    let new_rows: Vec<(i64, NewRow<'_>)> = new_rows.into_iter().collect();
    let mut rest = new_rows.as_slice();
    for size in chunk_sizes(rest.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut insert = QueryBuilder::<Any>::new(
            "INSERT INTO coupon_issuance (coupon, seq, user, issued_at_ms, issue_entry_id, \
             revoked_at_ms, revoke_entry_id) ",
        );
        insert.push_values(chunk, |mut values, (seq, row)| {
            let (issued_at, issue_id) = row.issue.clone().unzip();
            let (revoked_at, revoke_id) = row.revoke.clone().unzip();
            values
                .push_bind(coupon.to_vec())
                .push_bind(*seq)
                .push_bind(row.user.to_vec())
                .push_bind(issued_at)
                .push_bind(issue_id)
                .push_bind(revoked_at)
                .push_bind(revoke_id);
        });
        let done = insert.build().execute(&mut **tx).await?;
        stats.inserted += done.rows_affected();
    }

    for event in set_issue {
        let done = sqlx::query(
            "UPDATE coupon_issuance SET issued_at_ms = ?, issue_entry_id = ? \
             WHERE coupon = ? AND seq = ? AND issue_entry_id IS NULL",
        )
        .bind(event.ts_ms)
        .bind(event.id.to_string())
        .bind(coupon)
        .bind(event.seq)
        .execute(&mut **tx)
        .await?;
        count_update(stats, done.rows_affected());
    }
    for event in set_revoke {
        let done = sqlx::query(
            "UPDATE coupon_issuance SET revoked_at_ms = ?, revoke_entry_id = ? \
             WHERE coupon = ? AND seq = ? AND revoke_entry_id IS NULL",
        )
        .bind(event.ts_ms)
        .bind(event.id.to_string())
        .bind(coupon)
        .bind(event.seq)
        .execute(&mut **tx)
        .await?;
        count_update(stats, done.rows_affected());
    }
    Ok(())
}

/// An update that matched nothing lost a race with another consumer that wrote it first.
fn count_update(stats: &mut CommitStats, affected: u64) {
    if affected == 0 {
        stats.duplicates += 1;
    } else {
        stats.updated += affected;
    }
}

async fn advance_checkpoint(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    stream: &[u8],
    last: EntryId,
    now_ms: i64,
) -> Result<(), sqlx::Error> {
    let (ms, seq) = (to_i64(last.ms), to_i64(last.seq));
    // The comparison is in the UPDATE itself, so it holds against a checkpoint another
    // consumer committed meanwhile: the checkpoint never moves back.
    let advanced = sqlx::query(
        "UPDATE coupon_checkpoint SET last_ms = ?, last_seq = ?, updated_at_ms = ? \
         WHERE consumer_group = ? AND stream = ? \
         AND (last_ms < ? OR (last_ms = ? AND last_seq < ?))",
    )
    .bind(ms)
    .bind(seq)
    .bind(now_ms)
    .bind(group)
    .bind(stream)
    .bind(ms)
    .bind(ms)
    .bind(seq)
    .execute(&mut **tx)
    .await?;
    if advanced.rows_affected() > 0
        || read_checkpoint_in(&mut **tx, group, stream)
            .await?
            .is_some()
    {
        return Ok(());
    }
    // The first batch of this stream. Two consumers racing here make one INSERT fail on
    // the primary key; that batch is retried and then takes the UPDATE path.
    sqlx::query(
        "INSERT INTO coupon_checkpoint \
         (consumer_group, stream, last_ms, last_seq, updated_at_ms) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(group)
    .bind(stream)
    .bind(ms)
    .bind(seq)
    .bind(now_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

async fn read_checkpoint_in<'e, E>(
    executor: E,
    group: &str,
    stream: &[u8],
) -> Result<Option<EntryId>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let row = sqlx::query(
        "SELECT last_ms, last_seq FROM coupon_checkpoint WHERE consumer_group = ? AND stream = ?",
    )
    .bind(group)
    .bind(stream)
    .fetch_optional(executor)
    .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let ms: i64 = row.try_get(0)?;
            let seq: i64 = row.try_get(1)?;
            Ok(Some(EntryId {
                ms: u64::try_from(ms).unwrap_or(0),
                seq: u64::try_from(seq).unwrap_or(0),
            }))
        }
    }
}

/// The highest entry ID of `stream` that `group` has committed.
pub async fn read_checkpoint(
    db: &Db,
    group: &str,
    stream: &[u8],
) -> Result<Option<EntryId>, sqlx::Error> {
    read_checkpoint_in(&db.pool, group, stream).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Op;
    use std::sync::Arc;

    fn event(op: Op, user: &str, seq: i64, id_ms: u64) -> Event {
        Event {
            stream: Arc::from(&b"{c}:events"[..]),
            id: EntryId { ms: id_ms, seq: 0 },
            op,
            coupon: b"c".to_vec(),
            user: user.as_bytes().to_vec(),
            seq,
            ts_ms: i64::try_from(id_ms).unwrap_or(0),
        }
    }

    async fn rows(db: &Db) -> Vec<(i64, Vec<u8>, Option<i64>, Option<i64>)> {
        sqlx::query(
            "SELECT seq, user, issued_at_ms, revoked_at_ms FROM coupon_issuance ORDER BY seq",
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

    /// The commit stage alone, on SQLite: replays change nothing, a revoke committed before
    /// its issue ends with the right row, and the checkpoint never moves back.
    #[tokio::test]
    async fn commits_are_idempotent_and_order_free() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::open(&url).expect("open");
        db.migrate().await.expect("migrate");

        let first = [event(Op::Issue, "a", 1, 10), event(Op::Revoke, "b", 2, 30)];
        let stats = commit_batch(&db, "g", &first, 0).await.expect("commit");
        assert_eq!((stats.inserted, stats.updated, stats.duplicates), (2, 0, 0));
        let stats = commit_batch(&db, "g", &first, 0).await.expect("replay");
        assert_eq!((stats.inserted, stats.updated, stats.duplicates), (0, 0, 2));

        // The issue of seq 2 arrives after its revoke, with a far newer event.
        let second = [
            event(Op::Issue, "b", 2, 20),
            event(Op::Issue, "c", 5000, 40),
        ];
        let stats = commit_batch(&db, "g", &second, 0).await.expect("commit");
        assert_eq!((stats.inserted, stats.updated, stats.duplicates), (1, 1, 0));
        assert_eq!(
            rows(&db).await,
            vec![
                (1, b"a".to_vec(), Some(10), None),
                (2, b"b".to_vec(), Some(20), Some(30)),
                (5000, b"c".to_vec(), Some(40), None),
            ]
        );
        let checkpoint = read_checkpoint(&db, "g", b"{c}:events")
            .await
            .expect("read");
        assert_eq!(checkpoint, Some(EntryId { ms: 40, seq: 0 }));
        // An older batch (another consumer's, or a replay) leaves it where it is.
        commit_batch(&db, "g", &first, 0).await.expect("replay");
        let checkpoint = read_checkpoint(&db, "g", b"{c}:events")
            .await
            .expect("read");
        assert_eq!(checkpoint, Some(EntryId { ms: 40, seq: 0 }));
        assert_eq!(
            read_checkpoint(&db, "other", b"{c}:events")
                .await
                .expect("read"),
            None
        );
    }

    /// Another entry claiming an already persisted (coupon, seq) is not written over it and
    /// is reported; the rest of the batch commits.
    #[tokio::test]
    async fn conflicting_events_are_reported_not_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::open(&url).expect("open");
        db.migrate().await.expect("migrate");
        commit_batch(&db, "g", &[event(Op::Issue, "a", 1, 10)], 0)
            .await
            .expect("commit");
        let reborn = [event(Op::Issue, "z", 1, 50), event(Op::Issue, "y", 2, 60)];
        let stats = commit_batch(&db, "g", &reborn, 0).await.expect("commit");
        assert_eq!((stats.inserted, stats.duplicates), (1, 0));
        assert_eq!(stats.conflicts.len(), 1);
        assert_eq!(stats.conflicts[0].id, EntryId { ms: 50, seq: 0 });
        assert!(
            stats.conflicts[0].reason.contains("10-0"),
            "{:?}",
            stats.conflicts
        );
        assert_eq!(
            rows(&db).await,
            vec![
                (1, b"a".to_vec(), Some(10), None),
                (2, b"y".to_vec(), Some(60), None),
            ]
        );
    }

    #[test]
    fn far_apart_seqs_get_ranges_of_their_own() {
        assert_eq!(seq_ranges([]), Vec::<(i64, i64)>::new());
        assert_eq!(seq_ranges([1, 1, 2, 5, 900]), vec![(1, 900)]);
        assert_eq!(
            seq_ranges([3, 4, 1_000_000, 1_000_001]),
            vec![(3, 4), (1_000_000, 1_000_001)]
        );
    }

    #[test]
    fn batches_are_cut_into_few_shapes() {
        assert_eq!(chunk_sizes(0), Vec::<usize>::new());
        assert_eq!(chunk_sizes(1), vec![1]);
        assert_eq!(chunk_sizes(300), vec![256, 32, 4, 4, 4]);
        for n in 0..2000 {
            let sizes = chunk_sizes(n);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| INSERT_SHAPES.contains(s)));
        }
    }
}
