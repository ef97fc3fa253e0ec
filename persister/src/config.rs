//! Command line: every flag can also come from an environment variable.

use crate::db::DEFAULT_DATABASE_URL;
use crate::pipeline::commit::Limits;
use crate::policy::RetryPolicy;
use clap::{Args, Parser, Subcommand, ValueEnum};
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
    /// Compare the database with Redis coupon by coupon (after waiting for the group to
    /// persist what is pending) and print every difference; exit status 2 if any.
    Reconcile {
        /// Longest wait for the group to persist every coupon's pending entries, in ms.
        #[arg(long, default_value_t = 30_000)]
        drain_timeout_ms: u64,
    },
    /// Put back into Redis, with COUPON.RESTORE, the holders and last seqs the database
    /// knows (never overwriting: conflicts are printed); exit status 2 if any.
    Restore,
}

/// Whether `--redis-url` names a node of a Redis Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClusterMode {
    /// Asked at start (`INFO cluster`: `cluster_enabled:1`).
    Auto,
    /// A cluster node: every primary's streams are read.
    Yes,
    /// One server (a cluster node's own streams only).
    No,
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

    /// mysql://user:pass@host/db, or sqlite:path. Without it, `DATABASE_URL` is used if set;
    /// else a SQLite file here (refused when another `*DATABASE_URL` variable is set).
    #[arg(long, env = "COUPON_PERSISTER_DATABASE_URL", global = true)]
    pub database_url: Option<String>,

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
    /// fixed cost of a transaction (lookup, COMMIT) over more rows; a batch that
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

    /// Address (host:port) of /metrics and /healthz; "off" serves nothing.
    #[arg(
        long,
        env = "COUPON_PERSISTER_METRICS_ADDR",
        default_value = "127.0.0.1:9187",
        global = true
    )]
    pub metrics_addr: String,

    /// Whether --redis-url is a node of a Redis Cluster: then the primaries are found with
    /// CLUSTER SLOTS and each is read by a pipeline of its own (same credentials and TLS).
    #[arg(
        long,
        env = "COUPON_PERSISTER_CLUSTER",
        value_enum,
        default_value_t = ClusterMode::Auto,
        global = true
    )]
    pub cluster: ClusterMode,

    /// On a cluster, how often to look the primaries up again, in ms (also at once when a
    /// node turns a stream away or stops answering).
    #[arg(
        long,
        env = "COUPON_PERSISTER_TOPOLOGY_REFRESH_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(10..),
        global = true
    )]
    pub topology_refresh_ms: u64,

    /// SCAN pattern of the coupon event streams; of the streams it matches, only those a
    /// coupon would have (`K:events{K}`, or `K:events` for a key with a hash tag) are taken.
    #[arg(
        long,
        env = "COUPON_PERSISTER_STREAM_PATTERN",
        default_value = "*:events*",
        global = true
    )]
    pub stream_pattern: String,

    /// How often to scan for new coupon streams on a Redis without the coupon module, in ms.
    /// With the module, its change index names new streams at once (see
    /// `--sweep-interval-ms`).
    #[arg(
        long,
        env = "COUPON_PERSISTER_DISCOVER_INTERVAL_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub discover_interval_ms: u64,

    /// With the coupon module: how often every coupon stream is read and scanned for even if
    /// the module's change index named no change, in ms. The index is only a hint: a sweep
    /// also runs at every start, reconnect, failover and whenever the index lost track.
    #[arg(
        long,
        env = "COUPON_PERSISTER_SWEEP_INTERVAL_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(100..),
        global = true
    )]
    pub sweep_interval_ms: u64,

    /// How often to sample the streams for the pending, backlog and oldest-entry gauges and
    /// for entries idle long enough to claim, in ms.
    #[arg(
        long,
        env = "COUPON_PERSISTER_SAMPLE_INTERVAL_MS",
        default_value_t = 2_000,
        value_parser = clap::value_parser!(u64).range(10..),
        global = true
    )]
    pub sample_interval_ms: u64,

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
    /// later (a group too long for the checkpoint would fail every checkpoint write).
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

    /// The address to serve /metrics and /healthz on, unless "off".
    pub fn metrics_addr(&self) -> Option<&str> {
        match self.metrics_addr.as_str() {
            "off" | "" => None,
            addr => Some(addr),
        }
    }

    /// The database URL to use, and where it came from. Without one given, `DATABASE_URL`
    /// (the name most tools read) is used; the SQLite default only when no variable in the
    /// environment looks like a database URL, so events never go to a file by mistake.
    pub fn database_url(&self) -> anyhow::Result<(String, &'static str)> {
        self.database_url_in(std::env::vars_os())
    }

    fn database_url_in(
        &self,
        environment: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    ) -> anyhow::Result<(String, &'static str)> {
        if let Some(url) = &self.database_url {
            return Ok((url.clone(), "--database-url"));
        }
        let mut others = Vec::new();
        for (name, value) in environment {
            let name = name.to_string_lossy().into_owned();
            if value.is_empty() {
                continue;
            }
            if name == "DATABASE_URL" {
                let url = value
                    .into_string()
                    .map_err(|_| anyhow::anyhow!("DATABASE_URL is not valid UTF-8"))?;
                return Ok((url, "DATABASE_URL"));
            }
            if name.ends_with("DATABASE_URL") {
                others.push(name);
            }
        }
        if !others.is_empty() {
            others.sort();
            anyhow::bail!(
                "no database URL given, but {} is set: pass --database-url (or set \
                 COUPON_PERSISTER_DATABASE_URL); not falling back to a SQLite file",
                others.join(", ")
            );
        }
        Ok((DEFAULT_DATABASE_URL.to_string(), "the default"))
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

    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_millis(100),
            Duration::from_millis(self.backoff_max_ms),
        )
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
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

    fn env(
        vars: &[(&str, &str)],
    ) -> impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)> {
        vars.iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_sqlite_default_is_never_taken_over_a_database_url_variable() {
        let given = Cli::try_parse_from(["p", "--database-url", "mysql://h/db"]).expect("valid");
        let url = given
            .settings
            .database_url_in(env(&[("DATABASE_URL", "mysql://x/y")]));
        assert_eq!(url.expect("given").0, "mysql://h/db");
        let none = Cli::try_parse_from(["p"]).expect("valid");
        let url = none
            .settings
            .database_url_in(env(&[("DATABASE_URL", "mysql://x/y")]));
        assert_eq!(
            url.expect("from the environment"),
            ("mysql://x/y".into(), "DATABASE_URL")
        );
        let url = none
            .settings
            .database_url_in(env(&[("APP_DATABASE_URL", "mysql://x/y")]));
        let error = url.expect_err("refused").to_string();
        assert!(error.contains("APP_DATABASE_URL"), "{error}");
        let url = none.settings.database_url_in(env(&[("HOME", "/root")]));
        assert_eq!(url.expect("default").0, DEFAULT_DATABASE_URL);
    }
}
