//! Stage 3, commit: one database transaction per batch holding the idempotent inserts, the
//! revoke updates and the checkpoint. Replaying a batch (a crash between COMMIT and XACK)
//! changes nothing and counts its events as duplicates.
//!
//! Each event touches the row of its (coupon, seq): an issue sets the issue columns, a revoke
//! the revoke columns, whichever arrives first creates the row. So a revoke read before its
//! issue (another consumer, a claim) still ends with the right row.
//!
//! A batch is written with few statements whatever the number of coupons and streams in it:
//! one lookup of the rows it touches, multi-row inserts of the new ones, one `CASE` update per
//! kind of missing half, one checkpoint update. The statements come in a few fixed shapes
//! (lists are padded by repeating their last item) so prepared statements don't pile up.

use crate::db::Db;
use crate::event::{EntryId, Event, Op, StreamKey};
use sqlx::{Any, QueryBuilder, Row, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

/// Multi-row insert sizes: a batch's new rows are cut greedily into these. 2048 rows × 7
/// columns stays far below MySQL's 65,535 bind parameters (and SQLite's 32,766), and 2048
/// rows of two 512-byte keys (about 2.3 MB) below `max_allowed_packet` (16 MB on MariaDB,
/// 64 MB on MySQL 8 by default).
pub const INSERT_SHAPES: [usize; 12] = [2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1];

/// List sizes of the lookups and updates: a list is cut into the first size, and its last
/// part padded up to the smallest size that holds it.
const LIST_SHAPES: [usize; 3] = [128, 16, 2];

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

fn timed_out(what: &str, limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} took longer than {limit:?}"),
    ))
}

fn aborted() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::Interrupted,
        "shutting down: the transaction was rolled back before COMMIT",
    ))
}

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
    /// Statements the batch took (COMMIT not counted).
    pub statements: u64,
}

/// A row's key: (coupon, seq).
type Key<'a> = (&'a [u8], i64);

#[derive(Debug)]
struct NewRow<'a> {
    key: Key<'a>,
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

/// A missing half to fill in on an existing row.
#[derive(Debug)]
struct SetHalf<'a> {
    key: Key<'a>,
    ts_ms: i64,
    id: String,
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

/// Widest gap between two seqs looked up with one range.
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

/// Cuts `items` into parts of the first (largest) of `shapes`, each with the size it is
/// padded to: the smallest shape that holds it.
pub fn padded_parts<'i, T>(items: &'i [T], shapes: &[usize]) -> Vec<(&'i [T], usize)> {
    let first = shapes.first().copied().unwrap_or(1).max(1);
    items
        .chunks(first)
        .map(|part| {
            let size = shapes
                .iter()
                .rev()
                .copied()
                .find(|size| *size >= part.len())
                .unwrap_or(first);
            (part, size)
        })
        .collect()
}

/// The `i`th item of a part padded by repeating its last item.
fn padded<T>(part: &[T], i: usize) -> &T {
    &part[i.min(part.len() - 1)]
}

/// Writes `events` and advances `group`'s checkpoint of each stream, in one transaction.
/// The statements before COMMIT are abandoned (the transaction rolled back) after
/// `limits.statements` or when `abort` completes; COMMIT itself is only bounded by
/// `limits.commit`, never cut short by `abort`.
pub async fn commit_batch(
    db: &Db,
    group: &str,
    events: &[Event],
    now_ms: i64,
    limits: Limits,
    abort: impl Future<Output = ()>,
) -> Result<CommitStats, sqlx::Error> {
    let write = async {
        let mut tx = db.pool.begin().await?;
        let stats = write_batch(&mut tx, group, events, now_ms).await?;
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
    group: &str,
    events: &[Event],
    now_ms: i64,
) -> Result<CommitStats, sqlx::Error> {
    let mut stats = CommitStats::default();
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_unstable_by(|a, b| (&a.coupon, a.seq, a.id).cmp(&(&b.coupon, b.seq, b.id)));

    let present = lookup(tx, &sorted, &mut stats).await?;
    let mut present = present;
    let mut new_rows: Vec<NewRow<'_>> = Vec::new();
    let mut set_issue: Vec<SetHalf<'_>> = Vec::new();
    let mut set_revoke: Vec<SetHalf<'_>> = Vec::new();
    for event in &sorted {
        let key: Key<'_> = (&event.coupon, event.seq);
        let id = event.id.to_string();
        let conflict = |recorded: String| Conflict {
            stream: event.stream.clone(),
            id: event.id,
            reason: format!(
                "conflict: the {} of seq {} is already persisted from entry {recorded}",
                match event.op {
                    Op::Issue => "issue",
                    Op::Revoke => "revoke",
                },
                event.seq
            ),
        };
        if let Some(row) = present.get_mut(&key) {
            let (slot, list) = match event.op {
                Op::Issue => (&mut row.issue, &mut set_issue),
                Op::Revoke => (&mut row.revoke, &mut set_revoke),
            };
            match check_slot(slot.as_deref(), &id) {
                Ok(true) => {
                    *slot = Some(id.clone());
                    list.push(SetHalf {
                        key,
                        ts_ms: event.ts_ms,
                        id,
                    });
                }
                Ok(false) => stats.duplicates += 1,
                Err(recorded) => stats.conflicts.push(conflict(recorded)),
            }
            continue;
        }
        // Sorted by key: the row of this event, if new, is the last one pushed.
        if new_rows.last().is_none_or(|row| row.key != key) {
            new_rows.push(NewRow {
                key,
                user: &event.user,
                issue: None,
                revoke: None,
            });
        }
        let Some(row) = new_rows.last_mut() else {
            continue;
        };
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

    insert_rows(tx, &new_rows, &mut stats).await?;
    set_halves(tx, Op::Issue, &set_issue, &mut stats).await?;
    set_halves(tx, Op::Revoke, &set_revoke, &mut stats).await?;

    // The checkpoint covers what was written, not the conflicting events.
    let conflicting: HashSet<(&StreamKey, EntryId)> = stats
        .conflicts
        .iter()
        .map(|conflict| (&conflict.stream, conflict.id))
        .collect();
    let mut last_per_stream: BTreeMap<&[u8], EntryId> = BTreeMap::new();
    for event in events
        .iter()
        .filter(|event| conflicting.is_empty() || !conflicting.contains(&(&event.stream, event.id)))
    {
        let last = last_per_stream.entry(&event.stream).or_insert(event.id);
        *last = (*last).max(event.id);
    }
    let checkpoints: Vec<(&[u8], EntryId)> = last_per_stream.into_iter().collect();
    advance_checkpoints(tx, group, &checkpoints, now_ms, &mut stats).await?;
    Ok(stats)
}

/// The entry IDs already recorded for the rows `events` (sorted by key) touch: one range
/// per run of nearby seqs of a coupon, many ranges per statement.
async fn lookup<'a>(
    tx: &mut Transaction<'static, Any>,
    events: &[&'a Event],
    stats: &mut CommitStats,
) -> Result<HashMap<Key<'a>, Present>, sqlx::Error> {
    let mut ranges: Vec<(&'a [u8], i64, i64)> = Vec::new();
    let mut start = 0;
    while start < events.len() {
        let coupon: &'a [u8] = &events[start].coupon;
        let end = events[start..]
            .iter()
            .position(|event| event.coupon != coupon)
            .map_or(events.len(), |n| start + n);
        for (low, high) in seq_ranges(events[start..end].iter().map(|event| event.seq)) {
            ranges.push((coupon, low, high));
        }
        start = end;
    }
    let coupons: HashSet<&'a [u8]> = ranges.iter().map(|(coupon, _, _)| *coupon).collect();
    let mut present: HashMap<Key<'a>, Present> = HashMap::new();
    for (part, size) in padded_parts(&ranges, &LIST_SHAPES) {
        let mut select = QueryBuilder::<Any>::new(
            "SELECT HEX(coupon), seq, issue_entry_id, revoke_entry_id FROM coupon_issuance WHERE ",
        );
        for i in 0..size {
            let (coupon, low, high) = *padded(part, i);
            if i > 0 {
                select.push(" OR ");
            }
            select
                .push("(coupon = ")
                .push_bind(coupon)
                .push(" AND seq BETWEEN ")
                .push_bind(low)
                .push(" AND ")
                .push_bind(high)
                .push(")");
        }
        let rows = select.build().fetch_all(&mut **tx).await?;
        stats.statements += 1;
        for row in rows {
            // Binary columns come back through the `Any` driver as text on MySQL: hex them.
            let coupon = unhex(&row.try_get::<String, _>(0)?);
            let Some(coupon) = coupons.get(coupon.as_slice()).copied() else {
                continue;
            };
            let seq: i64 = row.try_get(1)?;
            let issue: Option<String> = row.try_get(2)?;
            let revoke: Option<String> = row.try_get(3)?;
            present.insert((coupon, seq), Present { issue, revoke });
        }
    }
    Ok(present)
}

/// Multi-row inserts of the new rows, all coupons together.
async fn insert_rows(
    tx: &mut Transaction<'static, Any>,
    rows: &[NewRow<'_>],
    stats: &mut CommitStats,
) -> Result<(), sqlx::Error> {
    let mut rest = rows;
    for size in chunk_sizes(rows.len()) {
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut insert = QueryBuilder::<Any>::new(
            "INSERT INTO coupon_issuance (coupon, seq, user, issued_at_ms, issue_entry_id, \
             revoked_at_ms, revoke_entry_id) ",
        );
        insert.push_values(chunk, |mut values, row| {
            let issue = row.issue.as_ref();
            let revoke = row.revoke.as_ref();
            values
                .push_bind(row.key.0)
                .push_bind(row.key.1)
                .push_bind(row.user)
                .push_bind(issue.map(|(ts, _)| *ts))
                .push_bind(issue.map(|(_, id)| id.as_str()))
                .push_bind(revoke.map(|(ts, _)| *ts))
                .push_bind(revoke.map(|(_, id)| id.as_str()));
        });
        let done = insert.build().execute(&mut **tx).await?;
        stats.statements += 1;
        stats.inserted += done.rows_affected();
    }
    Ok(())
}

/// Fills in the issue (or revoke) half of existing rows, many rows per statement. A row
/// whose half another consumer wrote meanwhile is not touched and counts as a duplicate.
async fn set_halves(
    tx: &mut Transaction<'static, Any>,
    op: Op,
    halves: &[SetHalf<'_>],
    stats: &mut CommitStats,
) -> Result<(), sqlx::Error> {
    let (at, id_column) = match op {
        Op::Issue => ("issued_at_ms", "issue_entry_id"),
        Op::Revoke => ("revoked_at_ms", "revoke_entry_id"),
    };
    for (part, size) in padded_parts(halves, &LIST_SHAPES) {
        let mut update =
            QueryBuilder::<Any>::new(format!("UPDATE coupon_issuance SET {at} = CASE"));
        for i in 0..size {
            let half = padded(part, i);
            update
                .push(" WHEN coupon = ")
                .push_bind(half.key.0)
                .push(" AND seq = ")
                .push_bind(half.key.1)
                .push(" THEN ")
                .push_bind(half.ts_ms);
        }
        update.push(format!(" ELSE {at} END, {id_column} = CASE"));
        for i in 0..size {
            let half = padded(part, i);
            update
                .push(" WHEN coupon = ")
                .push_bind(half.key.0)
                .push(" AND seq = ")
                .push_bind(half.key.1)
                .push(" THEN ")
                .push_bind(half.id.as_str());
        }
        update.push(format!(
            " ELSE {id_column} END WHERE {id_column} IS NULL AND ("
        ));
        for i in 0..size {
            let half = padded(part, i);
            if i > 0 {
                update.push(" OR ");
            }
            update
                .push("(coupon = ")
                .push_bind(half.key.0)
                .push(" AND seq = ")
                .push_bind(half.key.1)
                .push(")");
        }
        update.push(")");
        let done = update.build().execute(&mut **tx).await?;
        stats.statements += 1;
        let affected = done.rows_affected().min(part.len() as u64);
        stats.updated += affected;
        // An update that matched nothing lost a race with another consumer that wrote it.
        stats.duplicates += part.len() as u64 - affected;
    }
    Ok(())
}

/// Moves `group`'s checkpoint of each stream up to its last written entry, creating the
/// checkpoints not there yet.
async fn advance_checkpoints(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    checkpoints: &[(&[u8], EntryId)],
    now_ms: i64,
    stats: &mut CommitStats,
) -> Result<(), sqlx::Error> {
    for (part, size) in padded_parts(checkpoints, &LIST_SHAPES) {
        // The comparison is in the UPDATE itself, so it holds against a checkpoint another
        // consumer committed meanwhile: the checkpoint never moves back. MySQL assigns left
        // to right with the new values, so `last_seq` (which compares the old `last_ms`)
        // comes first and `last_ms` only compares itself.
        let mut update = QueryBuilder::<Any>::new("UPDATE coupon_checkpoint SET last_seq = CASE");
        for i in 0..size {
            let (stream, last) = *padded(part, i);
            let (ms, seq) = (to_i64(last.ms), to_i64(last.seq));
            update
                .push(" WHEN stream = ")
                .push_bind(stream)
                .push(" AND (last_ms < ")
                .push_bind(ms)
                .push(" OR (last_ms = ")
                .push_bind(ms)
                .push(" AND last_seq < ")
                .push_bind(seq)
                .push(")) THEN ")
                .push_bind(seq);
        }
        update.push(" ELSE last_seq END, last_ms = CASE");
        for i in 0..size {
            let (stream, last) = *padded(part, i);
            let ms = to_i64(last.ms);
            update
                .push(" WHEN stream = ")
                .push_bind(stream)
                .push(" AND last_ms < ")
                .push_bind(ms)
                .push(" THEN ")
                .push_bind(ms);
        }
        update
            .push(" ELSE last_ms END, updated_at_ms = ")
            .push_bind(now_ms)
            .push(" WHERE consumer_group = ")
            .push_bind(group)
            .push(" AND stream IN (");
        let mut streams = update.separated(", ");
        for i in 0..size {
            streams.push_bind(padded(part, i).0);
        }
        update.push(")");
        let matched = update.build().execute(&mut **tx).await?.rows_affected();
        stats.statements += 1;
        // Rows matched, changed or not (MySQL connections report found rows).
        if matched >= part.len() as u64 {
            continue;
        }
        // The first batch of some stream. Two consumers racing here make one INSERT fail on
        // the primary key; that batch is retried and then takes the UPDATE path.
        let mut select = QueryBuilder::<Any>::new(
            "SELECT HEX(stream) FROM coupon_checkpoint WHERE consumer_group = ",
        );
        select.push_bind(group).push(" AND stream IN (");
        let mut streams = select.separated(", ");
        for i in 0..size {
            streams.push_bind(padded(part, i).0);
        }
        select.push(")");
        let rows = select.build().fetch_all(&mut **tx).await?;
        stats.statements += 1;
        let mut known: HashSet<Vec<u8>> = HashSet::new();
        for row in rows {
            known.insert(unhex(&row.try_get::<String, _>(0)?));
        }
        let missing: Vec<(&[u8], EntryId)> = part
            .iter()
            .filter(|(stream, _)| !known.contains(*stream))
            .copied()
            .collect();
        let mut rest = missing.as_slice();
        for size in chunk_sizes(missing.len()) {
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            let mut insert = QueryBuilder::<Any>::new(
                "INSERT INTO coupon_checkpoint \
                 (consumer_group, stream, last_ms, last_seq, updated_at_ms) ",
            );
            insert.push_values(chunk, |mut values, (stream, last)| {
                values
                    .push_bind(group)
                    .push_bind(*stream)
                    .push_bind(to_i64(last.ms))
                    .push_bind(to_i64(last.seq))
                    .push_bind(now_ms);
            });
            insert.build().execute(&mut **tx).await?;
            stats.statements += 1;
        }
    }
    Ok(())
}

/// Bytes from `HEX()` (either case).
fn unhex(text: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    };
    text.as_bytes()
        .chunks(2)
        .map(|pair| (digit(pair[0]) << 4) | pair.get(1).map_or(0, |c| digit(*c)))
        .collect()
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

    /// A migrated SQLite database in a temp dir (kept alive by the returned guard).
    async fn migrated_sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let db = Db::open(&url).expect("open");
        db.migrate().await.expect("migrate");
        (dir, db)
    }

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
        commit_batch(
            db,
            "g",
            events,
            0,
            Limits::default(),
            std::future::pending(),
        )
        .await
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
        let (_dir, db) = migrated_sqlite().await;

        let first = [event(Op::Issue, "a", 1, 10), event(Op::Revoke, "b", 2, 30)];
        let stats = commit(&db, &first).await.expect("commit");
        assert_eq!((stats.inserted, stats.updated, stats.duplicates), (2, 0, 0));
        let stats = commit(&db, &first).await.expect("replay");
        assert_eq!((stats.inserted, stats.updated, stats.duplicates), (0, 0, 2));

        // The issue of seq 2 arrives after its revoke, with a far newer event.
        let second = [
            event(Op::Issue, "b", 2, 20),
            event(Op::Issue, "c", 5000, 40),
        ];
        let stats = commit(&db, &second).await.expect("commit");
        assert_eq!((stats.inserted, stats.updated, stats.duplicates), (1, 1, 0));
        assert_eq!(
            rows(&db).await,
            vec![
                (1, b"a".to_vec(), Some(10), None),
                (2, b"b".to_vec(), Some(20), Some(30)),
                (5000, b"c".to_vec(), Some(40), None),
            ]
        );
        let checkpoint = read_checkpoint(&db, "g", b"c:events{c}")
            .await
            .expect("read");
        assert_eq!(checkpoint, Some(EntryId { ms: 40, seq: 0 }));
        // An older batch (another consumer's, or a replay) leaves it where it is.
        commit(&db, &first).await.expect("replay");
        let checkpoint = read_checkpoint(&db, "g", b"c:events{c}")
            .await
            .expect("read");
        assert_eq!(checkpoint, Some(EntryId { ms: 40, seq: 0 }));
        assert_eq!(
            read_checkpoint(&db, "other", b"c:events{c}")
                .await
                .expect("read"),
            None
        );
    }

    /// Another entry claiming an already persisted (coupon, seq) is not written over it and
    /// is reported; the rest of the batch commits.
    #[tokio::test]
    async fn conflicting_events_are_reported_not_written() {
        let (_dir, db) = migrated_sqlite().await;
        commit(&db, &[event(Op::Issue, "a", 1, 10)])
            .await
            .expect("commit");
        let reborn = [event(Op::Issue, "z", 1, 50), event(Op::Issue, "y", 2, 60)];
        let stats = commit(&db, &reborn).await.expect("commit");
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
        assert_eq!(chunk_sizes(300), vec![256, 32, 8, 4]);
        assert_eq!(chunk_sizes(1000), vec![512, 256, 128, 64, 32, 8]);
        for n in 0..10_000 {
            let sizes = chunk_sizes(n);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|s| INSERT_SHAPES.contains(s)));
            assert!(sizes.len() <= n / 2048 + INSERT_SHAPES.len());
        }
        let items: Vec<usize> = (0..300).collect();
        let parts = padded_parts(&items, &LIST_SHAPES);
        let sizes: Vec<(usize, usize)> = parts.iter().map(|(p, s)| (p.len(), *s)).collect();
        assert_eq!(sizes, vec![(128, 128), (128, 128), (44, 128)]);
        let parts = padded_parts(&items[..17], &LIST_SHAPES);
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].1, *padded(parts[0].0, 100)), (128, 16));
        assert_eq!(padded_parts(&items[..1], &LIST_SHAPES)[0].1, 2);
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
    /// coupon: one lookup, the inserts, one update per kind of half, one checkpoint update.
    #[tokio::test]
    async fn a_batch_over_many_coupons_takes_few_statements() {
        let (_dir, db) = migrated_sqlite().await;
        let issues = spread(Op::Issue, 50, 20, 1000);
        let stats = commit(&db, &issues).await.expect("commit");
        assert_eq!(
            (stats.inserted, stats.updated, stats.duplicates),
            (1000, 0, 0)
        );
        // lookup + 6 inserts (512+256+128+64+32+8) + checkpoint update, select and the
        // first checkpoints (32+16+2)
        assert!(stats.statements <= 12, "{stats:?}");
        let revokes = spread(Op::Revoke, 50, 20, 5000);
        let stats = commit(&db, &revokes).await.expect("commit");
        assert_eq!(
            (stats.inserted, stats.updated, stats.duplicates),
            (0, 1000, 0)
        );
        // lookup (50 ranges) + 8 revoke updates of 128 + 1 checkpoint update
        assert!(stats.statements <= 10, "{stats:?}");
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
        for c in [0, 49] {
            let stream = format!("{{coupon-{c}}}:events");
            let checkpoint = read_checkpoint(&db, "g", stream.as_bytes())
                .await
                .expect("read");
            let last = revokes
                .iter()
                .filter(|e| *e.stream == *stream.as_bytes())
                .map(|e| e.id)
                .max();
            assert_eq!(checkpoint, last);
        }
        // An older batch leaves every checkpoint where it is.
        commit(&db, &issues).await.expect("replay");
        let stream = b"{coupon-7}:events";
        let checkpoint = read_checkpoint(&db, "g", stream).await.expect("read");
        assert!(
            checkpoint >= Some(EntryId { ms: 5000, seq: 0 }),
            "{checkpoint:?}"
        );
    }

    /// Statements stuck before COMMIT are abandoned on `abort`, and nothing is written.
    #[tokio::test]
    async fn abort_rolls_back_before_commit() {
        let (_dir, db) = migrated_sqlite().await;
        // The only connection is taken: BEGIN cannot even start.
        let held = db.pool.acquire().await.expect("acquire");
        let events = [event(Op::Issue, "a", 1, 10)];
        let started = std::time::Instant::now();
        let limits = Limits {
            statements: Duration::from_secs(60),
            commit: Duration::from_secs(60),
        };
        let abort = tokio::time::sleep(Duration::from_millis(200));
        let error = commit_batch(&db, "g", &events, 0, limits, abort)
            .await
            .expect_err("aborted");
        assert!(started.elapsed() < Duration::from_secs(2), "{error}");
        let limits = Limits {
            statements: Duration::from_millis(200),
            commit: Duration::from_secs(60),
        };
        let error = commit_batch(&db, "g", &events, 0, limits, std::future::pending())
            .await
            .expect_err("timed out");
        assert!(error.to_string().contains("longer than"), "{error}");
        drop(held);
        assert_eq!(rows(&db).await, Vec::new());
    }
}
