//! The command line: every flag can also come from an environment variable, so the same
//! binary runs from a shell, a systemd unit or a container.

mod campaign;

pub use campaign::{Campaign, Campaigns};

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "coupon-http",
    version,
    about = "An example HTTP service issuing first-come-first-served coupons through coupon-sdk"
)]
pub struct Cli {
    /// Address to listen on.
    #[arg(long, env = "COUPON_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Redis with the coupon module (or without: the SDK then uses its Lua script).
    #[arg(
        long,
        env = "COUPON_HTTP_REDIS_URL",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis_url: String,

    /// A coupon on sale: COUPON=STOCK, or COUPON=STOCK@START/END with RFC 3339 times.
    /// Repeat the flag for several; in the environment, separate them with commas.
    #[arg(
        long = "campaign",
        env = "COUPON_HTTP_CAMPAIGNS",
        value_delimiter = ','
    )]
    pub campaigns: Vec<Campaign>,

    /// A TOML file of campaigns (`[[campaign]]` tables: coupon, stock, optional starts/ends).
    #[arg(long, env = "COUPON_HTTP_CAMPAIGNS_FILE")]
    pub campaigns_file: Option<PathBuf>,

    /// Connections to Redis. Each multiplexes every request sent through it, so a few carry
    /// tens of thousands of requests a second; more only add system calls.
    #[arg(long, env = "COUPON_HTTP_REDIS_CONNECTIONS", default_value_t = 2)]
    pub redis_connections: usize,

    /// `--redis-url` names nodes of a Redis Cluster (one or more, separated by commas): every
    /// request then shares one SDK `Cluster` connection, which answers through reshardings,
    /// and `--redis-connections` does not apply.
    #[arg(long, env = "COUPON_HTTP_REDIS_CLUSTER")]
    pub redis_cluster: bool,

    /// Answer every click on a sold-out coupon with Redis' server-assisted client-side
    /// caching instead: sold-out clicks and holders' repeats are answered from a view the
    /// service keeps of the coupon (exact up to one invalidation), so after the sell-out Redis
    /// sees almost only revokes. This turns that off: every click goes to Redis.
    #[arg(long, env = "COUPON_HTTP_NO_LOCAL_ANSWERS")]
    pub no_local_answers: bool,

    /// How long one Redis call may take before the request gives up on it. It counts from
    /// the call to the answer being read, so on a saturated service it includes waiting for a
    /// worker thread: a spike of thousands of connections on two cores needs far more than
    /// Redis's sub-millisecond answer. A Redis that is down fails at once instead.
    #[arg(long, env = "COUPON_HTTP_REDIS_TIMEOUT_MS", default_value_t = 1_000)]
    pub redis_timeout_ms: u64,

    /// Extra attempts for an issue whose Redis call timed out. Safe: an attempt that did get
    /// through makes the retry answer "already issued" with the same seq.
    #[arg(long, env = "COUPON_HTTP_ISSUE_RETRIES", default_value_t = 1)]
    pub issue_retries: u32,

    /// The whole request's budget; past it the answer is 503.
    #[arg(long, env = "COUPON_HTTP_REQUEST_TIMEOUT_MS", default_value_t = 2_500)]
    pub request_timeout_ms: u64,

    /// The `Retry-After` of a 503, in seconds.
    #[arg(long, env = "COUPON_HTTP_RETRY_AFTER_SECS", default_value_t = 1)]
    pub retry_after_secs: u64,

    /// After SIGTERM, how long requests in flight may take before the process exits anyway.
    #[arg(
        long,
        env = "COUPON_HTTP_SHUTDOWN_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub shutdown_timeout_ms: u64,

    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "COUPON_HTTP_THREADS")]
    pub threads: Option<usize>,

    /// Connections the kernel may queue before they are accepted (a spike opens thousands at
    /// once).
    #[arg(long, env = "COUPON_HTTP_BACKLOG", default_value_t = 4_096)]
    pub backlog: u32,

    /// Benchmark ceiling: the same server answering `POST /coupons/{coupon}/issue` with a
    /// constant JSON body, without Redis. Not for production.
    #[arg(long)]
    pub ceiling: bool,
}

/// What each request may spend.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub redis_timeout: Duration,
    pub issue_retries: u32,
    pub request_timeout: Duration,
    pub retry_after_secs: u64,
}

impl Cli {
    pub fn limits(&self) -> Limits {
        Limits {
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
            issue_retries: self.issue_retries,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            retry_after_secs: self.retry_after_secs,
        }
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}
