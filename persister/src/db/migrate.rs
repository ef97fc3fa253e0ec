//! Applying the shipped migrations safely when several processes start at once or one is
//! killed half-way.
//!
//! MySQL cannot roll back DDL, so sqlx marks a migration as started (`success = 0`) before
//! running it and as done after; a process killed in between leaves the mark, and sqlx then
//! refuses to start ("partially applied"). Its own lock does not help on MariaDB, which
//! answers `GET_LOCK(name, -1)` with NULL at once instead of waiting. So:
//!
//! - the migrations run under a named lock of our own, taken with a real timeout on a
//!   connection held throughout: concurrent first starts wait for each other;
//! - every shipped migration is written to be run again (`IF NOT EXISTS`, `MODIFY`), so a
//!   mark left by a killed start of this program is repaired by deleting it and running the
//!   migration again, under the same lock.

use super::text::Name;
use super::{classify, Backend, Db, ErrorKind};
use sqlx::migrate::{Migrate, MigrateError, Migrator};
use sqlx::{AnyConnection, Connection, Row};

static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Checksums (SHA-384, as sqlx computes them) of earlier texts of migrations whose schema did
/// not change: made re-runnable, their text did. A database that recorded one is given the
/// current checksum.
const FORMER_CHECKSUMS: [(Backend, i64, &str); 2] = [
    (
        Backend::MySql,
        20261122000001,
        "33345e517839431733eaf14f4125f4304c01c7d02686007ae5e06eba26ccf56049a2882b27287c5e43f2efd637e1ab8c",
    ),
    (
        Backend::Sqlite,
        20261122000001,
        "adb5299c38cf3795ea948bd0e435e5417ec0aa414d567143665f39604f67abf67d7bd31222cea19d457f555dfd02eff3",
    ),
];

/// How long a start waits for another process's migrations, in seconds.
const LOCK_WAIT_S: i64 = 30;

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The database is unreachable, or another process held the lock too long: try again.
    #[error("{0}")]
    Retry(String),
    /// The configuration or the database's migration history is wrong: no retry helps.
    #[error("{0}")]
    Fatal(String),
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Failure {
        match classify(&error) {
            ErrorKind::Config => Failure::Fatal(format!("the database refused us: {error}")),
            _ => Failure::Retry(error.to_string()),
        }
    }
}

impl From<MigrateError> for Failure {
    fn from(error: MigrateError) -> Failure {
        match error {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => e.into(),
            MigrateError::VersionMismatch(_)
            | MigrateError::VersionMissing(_)
            | MigrateError::Dirty(_)
            | MigrateError::VersionNotPresent(_)
            | MigrateError::VersionTooOld(_, _)
            | MigrateError::VersionTooNew(_, _) => Failure::Fatal(format!(
                "the database's migrations do not match this version of coupon-persister \
                 ({error}); fix the _sqlx_migrations table or use a matching version"
            )),
            other => Failure::Retry(other.to_string()),
        }
    }
}

fn migrator(backend: Backend) -> &'static Migrator {
    match backend {
        Backend::MySql => &MYSQL_MIGRATIONS,
        Backend::Sqlite => &SQLITE_MIGRATIONS,
    }
}

/// Applies the shipped migrations that have not run yet, repairing one a killed start of
/// this program left half-applied.
pub async fn migrate(db: &Db) -> Result<(), Failure> {
    let mut conn = db.connect_alone().await?;
    let result = match db.backend {
        Backend::MySql => migrate_locked(&mut conn).await,
        // SQLite runs each migration in a transaction (its DDL is transactional) and lets one
        // writer in at a time: nothing is ever half-applied.
        Backend::Sqlite => run(&mut conn, Backend::Sqlite).await,
    };
    let _ = conn.close().await;
    result
}

/// The lock is per server, so its name carries the database's (a lock name holds at most 64
/// characters).
const LOCK_NAME: &str = "LEFT(CONCAT('coupon-persister-migrate:', DATABASE()), 64)";

async fn migrate_locked(conn: &mut AnyConnection) -> Result<(), Failure> {
    let got: Option<i64> = sqlx::query(&format!("SELECT GET_LOCK({LOCK_NAME}, ?)"))
        .bind(LOCK_WAIT_S)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    match got {
        Some(1) => {}
        Some(_) => {
            return Err(Failure::Retry(format!(
                "another process has been migrating the database for over {LOCK_WAIT_S} s"
            )))
        }
        None => return Err(Failure::Retry("GET_LOCK failed".into())),
    }
    let result = run(conn, Backend::MySql).await;
    // Closing the connection would release it too; this is in case the close is slow.
    let _ = sqlx::query(&format!("SELECT RELEASE_LOCK({LOCK_NAME})"))
        .execute(&mut *conn)
        .await;
    result
}

/// Repairs, then runs sqlx's migrator; the caller holds the lock.
async fn run(conn: &mut AnyConnection, backend: Backend) -> Result<(), Failure> {
    let migrator = migrator(backend);
    conn.ensure_migrations_table().await?;
    if let Some(version) = conn.dirty_version().await? {
        if !migrator.version_exists(version) {
            return Err(Failure::Fatal(format!(
                "migration {version} in _sqlx_migrations is partially applied and is not one \
                 of coupon-persister's; fix the schema by hand, then delete its row from \
                 _sqlx_migrations"
            )));
        }
        tracing::warn!(
            version,
            "a previous start was stopped half-way through a migration; running it again \
             (every migration of coupon-persister can be re-run)"
        );
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = ? AND success = ?")
            .bind(version)
            .bind(false)
            .execute(&mut *conn)
            .await?;
    }
    for (of, version, former) in FORMER_CHECKSUMS {
        let Some(current) = migrator.iter().find(|m| m.version == version) else {
            continue;
        };
        if of != backend {
            continue;
        }
        let former = unhex(former);
        sqlx::query("UPDATE _sqlx_migrations SET checksum = ? WHERE version = ? AND checksum = ?")
            .bind(current.checksum.as_ref())
            .bind(version)
            .bind(former.as_slice())
            .execute(&mut *conn)
            .await?;
    }
    migrator.run(&mut *conn).await?;
    if backend == Backend::Sqlite {
        names_as_text(conn).await?;
    }
    Ok(())
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Earlier versions stored names as SQLite blobs; stores those that are UTF-8 as text, as
/// names are bound now (see [`Name`]), so old and new rows compare alike.
async fn names_as_text(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    for (table, columns) in [
        ("coupon_issuance", ["coupon", "user"].as_slice()),
        ("coupon_checkpoint", ["stream"].as_slice()),
    ] {
        for column in columns {
            let rows = sqlx::query(&format!(
                "SELECT rowid, {column} FROM {table} WHERE typeof({column}) = 'blob'"
            ))
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let rowid: i64 = row.try_get(0)?;
                let bytes: Vec<u8> = row.try_get(1)?;
                if let Name::Text(text) = Name::of(&bytes) {
                    sqlx::query(&format!("UPDATE {table} SET {column} = ? WHERE rowid = ?"))
                        .bind(text)
                        .bind(rowid)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("m.db").display());
        (dir, Db::open(&url).expect("open"))
    }

    /// The former checksums are what sqlx computes: SHA-384 of the file (checked on a
    /// migration whose text did not change).
    #[test]
    fn checksums_are_sha384_of_the_text() {
        let unchanged = MYSQL_MIGRATIONS
            .iter()
            .find(|m| m.version == 20261122000002)
            .expect("migration 2");
        assert_eq!(
            unchanged.checksum.as_ref(),
            unhex(
                "f7c731e167d7a67fc22d023fb20f15f1d6d2bc0565dc087d0ea7e3253f3f9cd962c2161efd43e71fab88d82d742f2b89"
            )
        );
    }

    /// Every migration can be run again over itself, and a database that recorded a former
    /// text of one is brought to the current checksum instead of being refused.
    #[tokio::test]
    async fn migrations_can_be_run_again() {
        let (_dir, db) = sqlite();
        migrate(&db).await.expect("first run");
        let mut conn = db.connect_alone().await.expect("connect");
        sqlx::query("DELETE FROM _sqlx_migrations")
            .execute(&mut conn)
            .await
            .expect("delete");
        migrate(&db)
            .await
            .expect("runs again over an existing schema");
        let (_, _, former) = FORMER_CHECKSUMS[1];
        sqlx::query("UPDATE _sqlx_migrations SET checksum = ?")
            .bind(unhex(former))
            .execute(&mut conn)
            .await
            .expect("update");
        migrate(&db).await.expect("a former checksum is accepted");
        sqlx::query("UPDATE _sqlx_migrations SET success = ?")
            .bind(false)
            .execute(&mut conn)
            .await
            .expect("update");
        migrate(&db).await.expect("a half-applied mark is repaired");
        let dirty: i64 = sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = ?")
            .bind(false)
            .fetch_one(&mut conn)
            .await
            .expect("count")
            .get(0);
        assert_eq!(dirty, 0);
        sqlx::query("UPDATE _sqlx_migrations SET checksum = ?")
            .bind(vec![0u8])
            .execute(&mut conn)
            .await
            .expect("update");
        assert!(matches!(migrate(&db).await, Err(Failure::Fatal(_))));
    }

    /// Names stored as blobs by earlier versions become text when they are UTF-8.
    #[tokio::test]
    async fn old_blob_names_become_text() {
        let (_dir, db) = sqlite();
        migrate(&db).await.expect("migrate");
        let mut conn = db.connect_alone().await.expect("connect");
        for (coupon, user) in [(&b"sale"[..], &b"ann"[..]), (b"bin\xff", b"bob")] {
            sqlx::query("INSERT INTO coupon_issuance (coupon, seq, user) VALUES (?, 1, ?)")
                .bind(coupon)
                .bind(user)
                .execute(&mut conn)
                .await
                .expect("insert");
        }
        migrate(&db).await.expect("migrate");
        let rows: Vec<(String, String)> = sqlx::query(
            "SELECT typeof(coupon), typeof(user) FROM coupon_issuance ORDER BY typeof(coupon)",
        )
        .fetch_all(&mut conn)
        .await
        .expect("select")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
        assert_eq!(
            rows,
            vec![
                ("blob".to_string(), "text".to_string()),
                ("text".to_string(), "text".to_string())
            ]
        );
        let found = sqlx::query("SELECT seq FROM coupon_issuance WHERE coupon = 'sale'")
            .fetch_all(&mut conn)
            .await
            .expect("select");
        assert_eq!(found.len(), 1);
    }
}
