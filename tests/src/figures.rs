//! Figures tests and benchmarks read off the servers: a command's calls and time from
//! `INFO commandstats`, the rows the persister wrote.

use sqlx::Row;

/// `command`'s calls and microseconds so far (`INFO commandstats`; lowercase name, e.g.
/// `xreadgroup`), zeros if it never ran.
pub fn command_stats(conn: &mut redis::Connection, command: &str) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .unwrap_or_default();
    let prefix = format!("cmdstat_{command}:");
    let line = info
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or("");
    let field = |name: &str| -> u64 {
        line.split([':', ','])
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("usec"))
}

/// Rows in `coupon_issuance` (0 while the database cannot tell).
pub fn issuance_rows(database_url: &str) -> i64 {
    crate::query_rows(database_url, "SELECT COUNT(*) FROM coupon_issuance")
        .ok()
        .and_then(|rows| rows.into_iter().next())
        .and_then(|row| row.try_get::<i64, _>(0).ok())
        .unwrap_or(0)
}
