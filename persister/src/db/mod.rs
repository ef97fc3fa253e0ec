//! The database: MySQL 8 / MariaDB, or SQLite. Both go through sqlx's `Any` driver with the
//! same portable SQL; only the migrations differ in column types.

pub mod error;
pub mod migrate;
pub mod text;

pub use error::{classify, error_label, ErrorKind};

use anyhow::Context;
use sqlx::any::{install_default_drivers, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, Connection};
use std::time::Duration;

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
    /// The URL as sqlx takes it (`mariadb:` spelled `mysql:`).
    url: String,
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

/// The URL without its password, for the log.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
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
        Ok(Db { pool, backend, url })
    }

    /// A connection of its own, outside the pool: for what must not wait for the pool (the
    /// health probe) or must hold a session (the migration lock).
    pub async fn connect_alone(&self) -> Result<AnyConnection, sqlx::Error> {
        AnyConnection::connect(&self.url).await
    }
}

/// A migrated SQLite database in a temp dir, kept as long as the returned guard.
#[cfg(test)]
pub(crate) async fn scratch_sqlite() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let db = Db::open(&url).expect("open");
    migrate::migrate(&db).await.expect("migrate");
    (dir, db)
}
