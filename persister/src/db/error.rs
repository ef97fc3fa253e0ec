//! What a database error calls for: try again, find the entry whose data was refused, or
//! stop because the configuration can never work.

use sqlx::mysql::MySqlDatabaseError;
use sqlx::sqlite::SqliteError;

/// What to do about a failed database call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Connection lost, server restarting, deadlock, a concurrent insert of the same row…:
    /// retry the same work after a pause.
    Transient,
    /// The data of some row was refused (too long, out of range…): retrying the same rows
    /// fails again, so find the culprit.
    Data,
    /// The configuration is wrong (password refused, unknown database, bad URL, a SQLite
    /// file that cannot be opened): no retry can succeed.
    Config,
}

/// MySQL error numbers that mean the URL names something the server refuses.
const MYSQL_CONFIG_ERRORS: [u16; 6] = [
    1044, // ER_DBACCESS_DENIED_ERROR: the user may not use the database
    1045, // ER_ACCESS_DENIED_ERROR: wrong user or password
    1049, // ER_BAD_DB_ERROR: unknown database
    1251, // ER_NOT_SUPPORTED_AUTH_MODE
    1698, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
    1227, // ER_SPECIFIC_ACCESS_DENIED_ERROR
];

/// SQLite primary result codes: 14 CANTOPEN, 26 NOTADB, 23 AUTH, 8 READONLY.
const SQLITE_CONFIG_ERRORS: [i64; 4] = [14, 26, 23, 8];

/// Sorts an error; anything not known to be about the data or the configuration is treated
/// as transient, so an unexpected failure delays work instead of losing it.
pub fn classify(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::Database(db) => {
            if let Some(mysql) = db.try_downcast_ref::<MySqlDatabaseError>() {
                if MYSQL_CONFIG_ERRORS.contains(&mysql.number()) {
                    return ErrorKind::Config;
                }
                // SQLSTATE class 22 is "data exception".
                if mysql.code().is_some_and(|state| state.starts_with("22")) {
                    return ErrorKind::Data;
                }
                return ErrorKind::Transient;
            }
            if db.try_downcast_ref::<SqliteError>().is_some() {
                // The extended result code; its low byte is the primary one.
                let code: i64 = db.code().and_then(|c| c.parse().ok()).unwrap_or(0);
                return match code & 0xff {
                    // SQLITE_TOOBIG, SQLITE_MISMATCH
                    18 | 20 => ErrorKind::Data,
                    primary if SQLITE_CONFIG_ERRORS.contains(&primary) => ErrorKind::Config,
                    _ => ErrorKind::Transient,
                };
            }
            ErrorKind::Transient
        }
        sqlx::Error::Encode(_) => ErrorKind::Data,
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => ErrorKind::Config,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_io_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert_eq!(classify(&io), ErrorKind::Transient);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorKind::Transient);
        let config = sqlx::Error::Configuration("bad url".into());
        assert_eq!(classify(&config), ErrorKind::Config);
    }
}
