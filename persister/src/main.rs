use clap::Parser;
use coupon_persister::config::{Cli, Command};
use coupon_persister::daemon::{self, Daemon};
use coupon_persister::db::Db;
use coupon_persister::metrics::{self, Metrics};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let settings = cli.settings;
    settings.validate()?;
    let metrics = Arc::new(Metrics::new()?);

    if let Some(Command::Migrate) = cli.command {
        let db = Db::open(&settings.database_url)?;
        daemon::migrate(&db, &settings, &metrics, Duration::from_secs(30)).await?;
        tracing::info!("migrations applied");
        return Ok(());
    }

    let (stop, shutdown) = watch::channel(None);
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = interrupt.recv() => tracing::info!("SIGINT"),
        }
        let _ = stop.send(Some(Instant::now()));
    });

    if let Some(addr) = settings.metrics_socket()? {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = metrics::serve(addr, metrics).await {
                tracing::error!(%error, "the metrics server stopped");
            }
        });
    }

    match Daemon::start(settings, metrics, shutdown).await? {
        Some(daemon) => daemon.run().await,
        None => Ok(()),
    }
}
