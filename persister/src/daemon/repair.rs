//! The `reconcile` and `restore` subcommands: connects to one server or a cluster and runs
//! [`crate::repair`] there.

use super::redis_connection;
use crate::config::{ClusterMode, Settings};
use crate::db::Db;
use crate::topology;
use anyhow::Context;
use std::time::Duration;

/// Whether `--redis-url` is a cluster node, as `--cluster` says or the server answers.
async fn is_cluster(settings: &Settings, client: &redis::Client) -> anyhow::Result<bool> {
    Ok(match settings.cluster {
        ClusterMode::Yes => true,
        ClusterMode::No => false,
        ClusterMode::Auto => {
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .context("connecting to Redis")?;
            topology::is_cluster(&mut conn).await?
        }
    })
}

/// The `reconcile` and `restore` subcommands: the number of differences or conflicts found.
pub async fn repair(
    settings: &Settings,
    database_url: &str,
    command: &crate::config::Command,
) -> anyhow::Result<usize> {
    use crate::config::Command;
    use crate::repair;
    let db = Db::open(database_url)?;
    let client = redis::Client::open(settings.redis_url.as_str()).context("--redis-url")?;
    let cluster = is_cluster(settings, &client).await?;
    let drain = match command {
        Command::Reconcile { drain_timeout_ms } => Some(Duration::from_millis(*drain_timeout_ms)),
        _ => None,
    };
    if cluster {
        let conn = redis::cluster::ClusterClient::builder(vec![settings.redis_url.as_str()])
            .retries(10)
            .build()?
            .get_async_connection()
            .await
            .context("connecting to the cluster")?;
        match drain {
            Some(drain) => {
                let mut conn = conn;
                repair::reconcile(&mut conn, &db, &settings.group, drain).await
            }
            None => {
                let coupons = coupon_sdk::Coupons::connect(conn).await?;
                Ok(repair::restore(&coupons, &db).await?.conflicts)
            }
        }
    } else {
        let mut conn = redis_connection(&client)
            .await
            .context("connecting to Redis")?;
        match drain {
            Some(drain) => repair::reconcile(&mut conn, &db, &settings.group, drain).await,
            None => {
                let coupons = coupon_sdk::Coupons::connect(conn).await?;
                Ok(repair::restore(&coupons, &db).await?.conflicts)
            }
        }
    }
}
