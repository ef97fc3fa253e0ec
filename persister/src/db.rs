//! The database: MySQL 8 / MariaDB, or SQLite when no URL is given. Both go through sqlx's
//! `Any` driver with the same portable SQL; only the migrations differ in column types.

use anyhow::Context;
use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::AnyPool;
use std::time::Duration;

static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The embedded default: a SQLite file in the working directory, created if missing.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://coupon-persister.db?mode=rwc";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    MySql,
    Sqlite,
}

#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

impl Backend {
    pub fn of_url(url: &str) -> anyhow::Result<Backend> {
        if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Backend::MySql)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            anyhow::bail!("unsupported database URL (expected mysql://… or sqlite:…)")
        }
    }
}

impl Db {
    /// A lazy pool: no connection is made until first use, so a database that is down at
    /// start is waited for like one that goes down later.
    pub fn open(url: &str) -> anyhow::Result<Db> {
        install_default_drivers();
        let backend = Backend::of_url(url)?;
        let url = match url.strip_prefix("mariadb:") {
            Some(rest) => format!("mysql:{rest}"),
            None => url.to_string(),
        };
        // SQLite takes one writer at a time: one connection avoids busy errors in-process.
        let max = match backend {
            Backend::MySql => 4,
            Backend::Sqlite => 1,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(3))
            // A dead connection fails its statement and the batch is retried: no ping.
            .test_before_acquire(false)
            .connect_lazy(&url)
            .context("invalid database URL")?;
        Ok(Db { pool, backend })
    }

    /// Applies the shipped migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let migrator = match self.backend {
            Backend::MySql => &MYSQL_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        migrator.run(&self.pool).await
    }
}

/// Whether a migration error is about the database's migration history itself (a shipped
/// migration changed or missing, or one left half applied): retrying cannot fix it.
pub fn migration_is_broken(error: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    matches!(
        error,
        MigrateError::VersionMismatch(_)
            | MigrateError::VersionMissing(_)
            | MigrateError::Dirty(_)
            | MigrateError::VersionNotPresent(_)
            | MigrateError::VersionTooOld(_, _)
            | MigrateError::VersionTooNew(_, _)
    )
}

/// What to do about a failed database call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connection lost, server restarting, deadlock, a concurrent insert of the same row…:
    /// retry the same work after a pause.
    Transient,
    /// The data of some row was refused (too long, out of range…): retrying the same rows
    /// fails again, so find the culprit.
    Data,
}

/// Sorts an error; anything not known to be about the data is treated as transient, so an
/// unexpected failure delays work instead of dead-lettering good events.
pub fn classify(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            // SQLSTATE class 22 is "data exception" (MySQL reports SQLSTATE in `code`).
            if code.starts_with("22") {
                return ErrorKind::Data;
            }
            // SQLite reports its extended result code: 18 = SQLITE_TOOBIG, 20 = MISMATCH.
            if code == "18" || code == "20" {
                return ErrorKind::Data;
            }
            ErrorKind::Transient
        }
        sqlx::Error::Encode(_) => ErrorKind::Data,
        _ => ErrorKind::Transient,
    }
}

/// A short label for metrics.
pub fn error_label(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Database(_) => "db_database",
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => "db_io",
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => "db_unavailable",
        sqlx::Error::Protocol(_) => "db_protocol",
        _ => "db_other",
    }
}
