//! `coupon-http`: the example coupon service. `coupon-http --help` lists the flags.

use clap::Parser;
use coupon_http_example::config::Cli;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

// Every request allocates a little (its future, headers, the Redis command and reply) on
// whichever worker thread runs it; glibc's malloc spent about a sixth of the service's CPU on
// that under load, mimalloc a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Every client connection is a file descriptor: a spike of thousands needs more than the
    // usual soft limit of 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime
        .enable_all()
        .build()?
        .block_on(coupon_http_example::run(cli))
}
