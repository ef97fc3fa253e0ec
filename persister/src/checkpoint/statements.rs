//! The checkpoint statements: raising a group's checkpoints in a transaction of their own,
//! and reading them. Portable SQL (MySQL 8 / MariaDB and SQLite alike): an `UPDATE` whose
//! `CASE` only ever raises, then an `INSERT` of the checkpoints not there yet; lists come in
//! the batch statements' fixed shapes (see [`crate::pipeline::commit::statements`]).

use crate::db::text::Name;
use crate::db::Db;
use crate::event::EntryId;
use crate::pipeline::commit::statements::{
    chunk_sizes, padded, padded_parts, to_i64, unhex, LIST_SHAPES,
};
use crate::pipeline::commit::{aborted, is_duplicate, timed_out, Limits};
use sqlx::{Any, QueryBuilder, Row, Transaction};
use std::collections::{HashMap, HashSet};
use std::future::Future;

/// Raises `group`'s checkpoint of each stream of `checkpoints` to its entry (never lowers
/// one), creating those not there yet, in one transaction. Returns the statements it took.
/// Bounded like a batch: the statements by `limits.statements` and `abort`, COMMIT by
/// `limits.commit` only.
pub async fn advance(
    db: &Db,
    group: &str,
    checkpoints: &[(&[u8], EntryId)],
    now_ms: i64,
    limits: Limits,
    abort: impl Future<Output = ()>,
) -> Result<u64, sqlx::Error> {
    tokio::pin!(abort);
    // Another consumer of the group may create one of these checkpoints between our UPDATE
    // and our INSERT: the INSERT then fails on the primary key, and the second try finds the
    // row and raises it.
    let mut tries = 0;
    loop {
        tries += 1;
        match advance_once(db, group, checkpoints, now_ms, limits, &mut abort).await {
            Err(error) if tries < 2 && is_duplicate(&error) => continue,
            done => return done,
        }
    }
}

async fn advance_once(
    db: &Db,
    group: &str,
    checkpoints: &[(&[u8], EntryId)],
    now_ms: i64,
    limits: Limits,
    abort: impl Future<Output = ()>,
) -> Result<u64, sqlx::Error> {
    let write = async {
        let mut tx = db.pool.begin().await?;
        let statements = raise(&mut tx, group, checkpoints, now_ms).await?;
        Ok::<_, sqlx::Error>((tx, statements))
    };
    let (tx, statements) = tokio::select! {
        written = tokio::time::timeout(limits.statements, write) => match written {
            Ok(written) => written?,
            Err(_) => return Err(timed_out("the checkpoints' statements", limits.statements)),
        },
        () = abort => return Err(aborted()),
    };
    match tokio::time::timeout(limits.commit, tx.commit()).await {
        Ok(done) => done?,
        // Committed or not is unknown: writing the same checkpoints again is harmless.
        Err(_) => return Err(timed_out("COMMIT of the checkpoints", limits.commit)),
    }
    Ok(statements)
}

async fn raise(
    tx: &mut Transaction<'static, Any>,
    group: &str,
    checkpoints: &[(&[u8], EntryId)],
    now_ms: i64,
) -> Result<u64, sqlx::Error> {
    let mut statements = 0;
    for (part, size) in padded_parts(checkpoints, &LIST_SHAPES) {
        // The comparison is in the UPDATE itself, so it holds against a checkpoint another
        // consumer committed meanwhile: the checkpoint never moves back. MySQL assigns left
        // to right with the new values, so `last_seq` (which compares the old `last_ms`)
        // comes first and `last_ms` only compares itself; SQLite reads the old values in
        // both.
        let mut update = QueryBuilder::<Any>::new("UPDATE coupon_checkpoint SET last_seq = CASE");
        for i in 0..size {
            let (stream, last) = *padded(part, i);
            let (ms, seq) = (to_i64(last.ms), to_i64(last.seq));
            update
                .push(" WHEN stream = ")
                .push_bind(Name::of(stream))
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
                .push_bind(Name::of(stream))
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
            streams.push_bind(Name::of(padded(part, i).0));
        }
        update.push(")");
        let matched = update.build().execute(&mut **tx).await?.rows_affected();
        statements += 1;
        // Rows matched, changed or not (MySQL connections report found rows).
        if matched >= part.len() as u64 {
            continue;
        }
        // The first checkpoint of some stream.
        let mut select = QueryBuilder::<Any>::new(
            "SELECT HEX(stream) FROM coupon_checkpoint WHERE consumer_group = ",
        );
        select.push_bind(group).push(" AND stream IN (");
        let mut streams = select.separated(", ");
        for i in 0..size {
            streams.push_bind(Name::of(padded(part, i).0));
        }
        select.push(")");
        let rows = select.build().fetch_all(&mut **tx).await?;
        statements += 1;
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
                    .push_bind(Name::of(stream))
                    .push_bind(to_i64(last.ms))
                    .push_bind(to_i64(last.seq))
                    .push_bind(now_ms);
            });
            insert.build().execute(&mut **tx).await?;
            statements += 1;
        }
    }
    Ok(statements)
}

/// The highest entry ID `group` has committed of each of `streams` that has a checkpoint.
pub async fn read_checkpoints(
    pool: &sqlx::AnyPool,
    group: &str,
    streams: &[&[u8]],
) -> Result<HashMap<Vec<u8>, EntryId>, sqlx::Error> {
    let mut found = HashMap::new();
    for (part, size) in padded_parts(streams, &LIST_SHAPES) {
        let mut select = QueryBuilder::<Any>::new(
            "SELECT HEX(stream), last_ms, last_seq FROM coupon_checkpoint WHERE consumer_group = ",
        );
        select.push_bind(group).push(" AND stream IN (");
        let mut names = select.separated(", ");
        for i in 0..size {
            let name: &&[u8] = padded(part, i);
            names.push_bind(Name::of(name));
        }
        select.push(")");
        for row in select.build().fetch_all(pool).await? {
            let stream = unhex(&row.try_get::<String, _>(0)?);
            let ms: i64 = row.try_get(1)?;
            let seq: i64 = row.try_get(2)?;
            let id = EntryId {
                ms: u64::try_from(ms).unwrap_or(0),
                seq: u64::try_from(seq).unwrap_or(0),
            };
            found.insert(stream, id);
        }
    }
    Ok(found)
}

/// The highest entry ID of `stream` that `group` has committed, as its checkpoint says.
pub async fn read_checkpoint(
    db: &Db,
    group: &str,
    stream: &[u8],
) -> Result<Option<EntryId>, sqlx::Error> {
    let found = read_checkpoints(&db.pool, group, &[stream]).await?;
    Ok(found.get(stream).copied())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::scratch_sqlite;

    fn id(ms: u64, seq: u64) -> EntryId {
        EntryId { ms, seq }
    }

    async fn write(db: &Db, group: &str, checkpoints: &[(&[u8], EntryId)]) -> u64 {
        advance(
            db,
            group,
            checkpoints,
            0,
            Limits::default(),
            std::future::pending(),
        )
        .await
        .expect("advance")
    }

    /// Created on first write, raised after, never lowered (by ms or by seq within one ms),
    /// and each group keeps its own.
    #[tokio::test]
    async fn checkpoints_only_move_up_per_group() {
        let (_dir, db) = scratch_sqlite().await;
        let (a, b): (&[u8], &[u8]) = (b"a:events{a}", b"b:events{b}");
        write(&db, "g", &[(a, id(10, 5)), (b, id(20, 0))]).await;
        write(&db, "g", &[(a, id(10, 7)), (b, id(19, 9))]).await;
        assert_eq!(
            read_checkpoint(&db, "g", a).await.expect("read"),
            Some(id(10, 7))
        );
        assert_eq!(
            read_checkpoint(&db, "g", b).await.expect("read"),
            Some(id(20, 0))
        );
        write(&db, "g", &[(a, id(10, 6)), (b, id(21, 0))]).await;
        assert_eq!(
            read_checkpoint(&db, "g", a).await.expect("read"),
            Some(id(10, 7))
        );
        assert_eq!(
            read_checkpoint(&db, "g", b).await.expect("read"),
            Some(id(21, 0))
        );
        write(&db, "g", &[(a, id(9, 99))]).await;
        assert_eq!(
            read_checkpoint(&db, "g", a).await.expect("read"),
            Some(id(10, 7))
        );
        assert_eq!(read_checkpoint(&db, "other", a).await.expect("read"), None);
        write(&db, "other", &[(a, id(1, 0))]).await;
        assert_eq!(
            read_checkpoint(&db, "other", a).await.expect("read"),
            Some(id(1, 0))
        );
        assert_eq!(
            read_checkpoint(&db, "g", a).await.expect("read"),
            Some(id(10, 7))
        );
    }

    /// Hundreds of streams take a few statements: one update per 128, and for new streams
    /// one select per 128 and the inserts.
    #[tokio::test]
    async fn many_streams_take_few_statements() {
        let (_dir, db) = scratch_sqlite().await;
        let names: Vec<String> = (0..300).map(|i| format!("{{c{i}}}:events")).collect();
        let first: Vec<(&[u8], EntryId)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.as_bytes(), id(100 + i as u64, 0)))
            .collect();
        // 3 parts (128, 128, 44 of 128): update, select, inserts (128 = 1; 44 = 32+8+4).
        assert!(write(&db, "g", &first).await <= 11);
        let later: Vec<(&[u8], EntryId)> = first
            .iter()
            .map(|(name, last)| (*name, id(last.ms + 1000, 3)))
            .collect();
        assert_eq!(write(&db, "g", &later).await, 3);
        let names: Vec<&[u8]> = first.iter().map(|(name, _)| *name).collect();
        let found = read_checkpoints(&db.pool, "g", &names).await.expect("read");
        assert_eq!(found.len(), 300);
        for (name, last) in &later {
            assert_eq!(found.get(*name), Some(last));
        }
    }

    /// A write stuck before COMMIT is abandoned on `abort`, and nothing is written.
    #[tokio::test]
    async fn a_stuck_write_is_abandoned() {
        let (_dir, db) = scratch_sqlite().await;
        let held = db.pool.acquire().await.expect("acquire");
        let stream: &[u8] = b"a:events{a}";
        let abort = tokio::time::sleep(std::time::Duration::from_millis(200));
        let error = advance(&db, "g", &[(stream, id(1, 0))], 0, Limits::default(), abort)
            .await
            .expect_err("aborted");
        assert!(error.to_string().contains("rolled back"), "{error}");
        drop(held);
        assert_eq!(read_checkpoint(&db, "g", stream).await.expect("read"), None);
    }
}
