use clap::Parser;
use coupon_persister::config::{Cli, Command};
use coupon_persister::db::redact;
use coupon_persister::metrics::Metrics;
use coupon_persister::policy::Shutdown;
use coupon_persister::{daemon, http, logging};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> ExitCode {
    logging::init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // One line that says what is wrong.
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit status of `reconcile` and `restore` when they found differences or conflicts.
const FOUND: u8 = 2;

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.settings;
    settings.validate()?;
    let (database_url, source) = settings.database_url()?;
    if source == "the default" {
        let file = std::env::current_dir()
            .map(|dir| dir.join("coupon-persister.db").display().to_string())
            .unwrap_or_else(|_| "coupon-persister.db".into());
        tracing::warn!(%file, "no database URL given: writing to a SQLite file");
    } else {
        tracing::info!(database = %redact(&database_url), from = source, "database");
    }
    let metrics = Arc::new(Metrics::new()?);

    if let Some(Command::Migrate) = cli.command {
        let wait = Duration::from_secs(60);
        daemon::migrate_only(&settings, &database_url, &metrics, wait).await?;
        tracing::info!("migrations applied");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(command @ (Command::Reconcile { .. } | Command::Restore)) = &cli.command {
        let found = daemon::repair(&settings, &database_url, command).await?;
        return Ok(if found == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(FOUND)
        });
    }

    // Bound before anything else: a port already taken stops the start.
    let listener = match settings.metrics_addr() {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let (trigger, shutdown) = Shutdown::new(settings.shutdown_grace());
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = interrupt.recv() => tracing::info!("SIGINT"),
            }
            trigger.fire();
        }
    });
    if let Some(listener) = listener {
        tokio::spawn(http::serve(listener, metrics.clone()));
    }
    daemon::run(settings, database_url, metrics, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
