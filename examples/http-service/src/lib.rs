//! An example HTTP service issuing first-come-first-served coupons through `coupon-sdk`:
//! the shape a production service takes around the SDK (configuration, routes and status
//! codes, problem documents, timeouts and retries, metrics, graceful shutdown). See
//! `docs/http-service.md`.

pub mod app;
pub mod config;
pub mod http;
pub mod pool;
pub mod routes;
pub mod shutdown;

use app::App;
use config::{Campaigns, Cli};
use http::metrics::Metrics;
use pool::RedisPool;
use shutdown::Signals;
use std::sync::Arc;
use std::time::Duration;

/// Runs the service until SIGTERM or SIGINT and its requests in flight are answered.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    let metrics = Arc::new(Metrics::new()?);
    let limits = cli.limits();
    let router = if cli.ceiling {
        tracing::warn!("--ceiling: answering a constant body without Redis (benchmark only)");
        routes::ceiling(metrics, limits)
    } else {
        let campaigns = Campaigns::load(cli.campaigns.clone(), cli.campaigns_file.as_deref())?;
        let local_answers = !cli.no_local_answers;
        let redis = if cli.redis_cluster {
            RedisPool::connect_cluster(&cli.redis_url, limits.redis_timeout, local_answers).await?
        } else {
            let connections = cli.redis_connections;
            RedisPool::connect(
                &cli.redis_url,
                connections,
                limits.redis_timeout,
                local_answers,
            )
            .await?
        };
        for campaign in campaigns.iter() {
            tracing::info!(coupon = %campaign.coupon, stock = campaign.stock, window = ?campaign.window, "selling");
        }
        let app = Arc::new(App {
            campaigns,
            redis,
            metrics,
            limits,
        });
        tokio::spawn(app.clone().watch_stock(Duration::from_secs(1)));
        routes::service(app)
    };
    let listener = http::listener::bind(cli.listen, cli.backlog)?;
    tracing::info!(addr = %cli.listen, "listening");
    signals
        .serve(
            |stopping| axum::serve(listener, router).with_graceful_shutdown(stopping.requested()),
            cli.shutdown_timeout(),
        )
        .await?;
    tracing::info!("stopped");
    Ok(())
}
