//! The statements of a batch: the lookup of the rows it touches, the multi-row inserts and
//! the `CASE` updates of missing halves. They come in a few fixed shapes (lists are padded by
//! repeating their last item) so prepared statements don't pile up. Names (coupon, user,
//! stream) are always bound through [`Name`].

use super::plan::{Key, NewRow, Present, SetHalf};
use super::CommitStats;
use crate::db::text::Name;
use crate::event::{Event, Op};
use sqlx::{Any, QueryBuilder, Row, Transaction};
use std::collections::{HashMap, HashSet};

/// Multi-row insert sizes: a batch's new rows are cut greedily into these. 2048 rows × 7
/// columns stays far below MySQL's 65,535 bind parameters (and SQLite's 32,766), and 2048
/// rows of two 512-byte keys (about 2.3 MB) below `max_allowed_packet` (16 MB on MariaDB,
/// 64 MB on MySQL 8 by default).
pub const INSERT_SHAPES: [usize; 12] = [2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1];

/// List sizes of the lookups and updates: a list is cut into the first size, and its last
/// part padded up to the smallest size that holds it.
pub(crate) const LIST_SHAPES: [usize; 3] = [128, 16, 2];

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
pub(crate) fn padded<T>(part: &[T], i: usize) -> &T {
    &part[i.min(part.len() - 1)]
}

/// What the database holds for the rows `events` (sorted by key) touch: one range per run
/// of nearby seqs of a coupon, many ranges per statement.
pub async fn lookup<'a>(
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
            "SELECT HEX(coupon), seq, HEX(user), issue_entry_id, revoke_entry_id \
             FROM coupon_issuance WHERE ",
        );
        for i in 0..size {
            let (coupon, low, high) = *padded(part, i);
            if i > 0 {
                select.push(" OR ");
            }
            select
                .push("(coupon = ")
                .push_bind(Name::of(coupon))
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
            let user = unhex(&row.try_get::<String, _>(2)?);
            let issue: Option<String> = row.try_get(3)?;
            let revoke: Option<String> = row.try_get(4)?;
            present.insert(
                (coupon, seq),
                Present {
                    user,
                    issue,
                    revoke,
                },
            );
        }
    }
    Ok(present)
}

/// Multi-row inserts of the new rows, all coupons together.
pub async fn insert_rows(
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
                .push_bind(Name::of(row.key.0))
                .push_bind(row.key.1)
                .push_bind(Name::of(row.user))
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
pub async fn set_halves(
    tx: &mut Transaction<'static, Any>,
    op: Op,
    halves: &[SetHalf<'_>],
    stats: &mut CommitStats,
) -> Result<(), sqlx::Error> {
    let (at, id_column) = match op {
        Op::Issue | Op::Restore => ("issued_at_ms", "issue_entry_id"),
        Op::Revoke => ("revoked_at_ms", "revoke_entry_id"),
    };
    for (part, size) in padded_parts(halves, &LIST_SHAPES) {
        let mut update =
            QueryBuilder::<Any>::new(format!("UPDATE coupon_issuance SET {at} = CASE"));
        for i in 0..size {
            let half = padded(part, i);
            update
                .push(" WHEN coupon = ")
                .push_bind(Name::of(half.key.0))
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
                .push_bind(Name::of(half.key.0))
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
                .push_bind(Name::of(half.key.0))
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

/// Bytes from `HEX()` (either case).
pub(crate) fn unhex(text: &str) -> Vec<u8> {
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

pub(crate) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
