//! Command line: every flag can also come from an environment variable.

use crate::commit::Limits;
use crate::db::DEFAULT_DATABASE_URL;
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "coupon-persister",
    version,
    about = "Moves every coupon issue/revoke event from Redis streams into MySQL (or SQLite), \
             exactly once"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the streams and write the database until SIGTERM (the default).
    Run,
    /// Apply the database migrations and exit.
    Migrate,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Redis (with the coupon module) holding the event streams.
    #[arg(
        long,
        env = "COUPON_PERSISTER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/",
        global = true
    )]
    pub redis_url: String,

    /// mysql://user:pass@host/db, or sqlite:path (the default: a SQLite file here).
    #[arg(long, env = "COUPON_PERSISTER_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    pub database_url: String,

    /// Consumer group: one per deployment; every process of a deployment shares it.
    #[arg(
        long,
        env = "COUPON_PERSISTER_GROUP",
        default_value = "coupon-persister",
        global = true
    )]
    pub group: String,

    /// Consumer name, unique per process and stable across its restarts (so its pending
    /// entries are drained first). Default: host name and process ID.
    #[arg(long, env = "COUPON_PERSISTER_CONSUMER", global = true)]
    pub consumer: Option<String>,

    /// Most events per database transaction. Under a backlog, bigger batches spread the
    /// fixed cost of a transaction (lookup, checkpoint, COMMIT) over more rows; a batch that
    /// does not fill up commits after the linger time anyway.
    #[arg(long, env = "COUPON_PERSISTER_BATCH_SIZE", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=10_000), global = true)]
    pub batch_size: u32,

    /// Longest wait for a batch to fill before committing what it has, in ms.
    #[arg(
        long,
        env = "COUPON_PERSISTER_LINGER_MS",
        default_value_t = 50,
        global = true
    )]
    pub linger_ms: u64,

    /// Take over entries another consumer left pending this long, in ms.
    #[arg(
        long,
        env = "COUPON_PERSISTER_CLAIM_IDLE_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub claim_idle_ms: u64,

    /// Deliveries after which an entry that keeps failing goes to the dead-letter stream.
    #[arg(long, env = "COUPON_PERSISTER_MAX_DELIVERIES", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..), global = true)]
    pub max_deliveries: u64,

    /// Stream that receives dead-lettered entries with the reason.
    #[arg(
        long,
        env = "COUPON_PERSISTER_DEAD_LETTER_STREAM",
        default_value = "coupon-persister:dead-letter",
        global = true
    )]
    pub dead_letter_stream: String,

    /// Address of /metrics and /healthz; "off" serves nothing.
    #[arg(
        long,
        env = "COUPON_PERSISTER_METRICS_ADDR",
        default_value = "127.0.0.1:9187",
        global = true
    )]
    pub metrics_addr: String,

    /// SCAN pattern of the coupon event streams; of the streams it matches, only those a
    /// coupon would have (`K:events{K}`, or `K:events` for a key with a hash tag) are taken.
    #[arg(
        long,
        env = "COUPON_PERSISTER_STREAM_PATTERN",
        default_value = "*:events*",
        global = true
    )]
    pub stream_pattern: String,

    /// How often to look for new coupon streams, in ms.
    #[arg(
        long,
        env = "COUPON_PERSISTER_DISCOVER_INTERVAL_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub discover_interval_ms: u64,

    /// How often to trim committed entries from the streams, in ms; 0 never trims.
    #[arg(
        long,
        env = "COUPON_PERSISTER_TRIM_INTERVAL_MS",
        default_value_t = 60_000,
        global = true
    )]
    pub trim_interval_ms: u64,

    /// Cap of the exponential backoff while the database or Redis is down, in ms.
    #[arg(
        long,
        env = "COUPON_PERSISTER_BACKOFF_MAX_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub backoff_max_ms: u64,

    /// Longest time the statements of one batch may take before COMMIT, in ms; past it the
    /// transaction is rolled back and retried. COMMIT itself may take four times as long.
    #[arg(
        long,
        env = "COUPON_PERSISTER_DB_TIMEOUT_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true
    )]
    pub db_timeout_ms: u64,

    /// After SIGTERM, stop retrying the batch in flight after this long, in ms (its entries
    /// stay pending and are persisted by the next run or another consumer).
    #[arg(
        long,
        env = "COUPON_PERSISTER_SHUTDOWN_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub shutdown_timeout_ms: u64,
}

/// Longest consumer group name: the checkpoint's `consumer_group` column holds 255
/// characters.
pub const MAX_GROUP_CHARS: usize = 255;

impl Settings {
    /// Checks what the flags' parsers cannot: refused at start rather than by the database
    /// later (a group too long for the checkpoint would fail every batch).
    pub fn validate(&self) -> anyhow::Result<()> {
        let chars = self.group.chars().count();
        if chars == 0 || chars > MAX_GROUP_CHARS {
            anyhow::bail!("--group must have 1 to {MAX_GROUP_CHARS} characters, not {chars}");
        }
        Ok(())
    }

    pub fn consumer_name(&self) -> String {
        if let Some(name) = &self.consumer {
            return name.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "persister".into());
        format!("{host}-{}", std::process::id())
    }

    pub fn metrics_socket(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.metrics_addr == "off" || self.metrics_addr.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.metrics_addr.parse().map_err(|e| {
            anyhow::anyhow!("--metrics-addr {:?}: {e}", self.metrics_addr)
        })?))
    }

    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    pub fn db_limits(&self) -> Limits {
        let statements = Duration::from_millis(self.db_timeout_ms);
        Limits {
            statements,
            commit: statements.saturating_mul(4),
        }
    }

    pub fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_only_the_urls() {
        let cli = Cli::try_parse_from([
            "coupon-persister",
            "--redis-url",
            "redis://r/",
            "--database-url",
            "mysql://m/db",
        ])
        .expect("valid");
        assert!(cli.command.is_none());
        assert_eq!(cli.settings.batch_size, 5000);
        assert_eq!(cli.settings.max_deliveries, 5);
        let cli = Cli::try_parse_from(["coupon-persister", "migrate", "--batch-size", "7"])
            .expect("valid");
        assert!(matches!(cli.command, Some(Command::Migrate)));
        assert_eq!(cli.settings.batch_size, 7);
        assert!(Cli::try_parse_from(["coupon-persister", "--batch-size", "0"]).is_err());
        assert!(cli.settings.validate().is_ok());
        let long = "é".repeat(MAX_GROUP_CHARS + 1);
        let cli = Cli::try_parse_from(["coupon-persister", "--group", &long]).expect("parses");
        assert!(cli.settings.validate().is_err());
        let longest = "é".repeat(MAX_GROUP_CHARS);
        let cli = Cli::try_parse_from(["coupon-persister", "--group", &longest]).expect("parses");
        assert!(cli.settings.validate().is_ok());
    }
}
