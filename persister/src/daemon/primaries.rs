//! On a Redis Cluster: one pipeline per primary, each under its own shutdown, started and
//! stopped as the topology changes.

use super::node::{self, Shared};
use crate::db::redact;
use crate::logging::Repeats;
use crate::policy::{Shutdown, Trigger};
use crate::topology::{self, Topology};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// On a cluster, dead letters go to `<name>{<tag>}`: a name with braces would carry its own
/// hash tag (another slot), and a name ending in `:events` would make `<name>{<tag>}` the
/// event stream of coupon `<tag>`.
pub(super) fn check_dead_letter_name(name: &str) -> anyhow::Result<()> {
    if name.contains(['{', '}']) {
        anyhow::bail!(
            "--dead-letter-stream {name:?}: on a cluster, dead letters go to \
             `<name>{{<stream's hash tag>}}`, so the name must not have braces of its own"
        );
    }
    if name.ends_with(":events") {
        anyhow::bail!(
            "--dead-letter-stream {name:?}: on a cluster, `<name>{{<tag>}}` would be a \
             coupon's event stream; choose a name not ending in \":events\""
        );
    }
    Ok(())
}

/// One pipeline per primary, each under its own shutdown: started for new primaries,
/// stopped for nodes no longer primaries (their uncommitted entries stay pending in the
/// group and move with the keys: the new owner's pipeline reads them again).
pub(super) async fn run(
    shared: Arc<Shared>,
    client: redis::Client,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let refresh = Arc::new(Notify::new());
    let every = Duration::from_millis(shared.settings.topology_refresh_ms);
    let mut topology = Topology::new(client.clone());
    let mut running: BTreeMap<String, (Trigger, JoinHandle<()>)> = BTreeMap::new();
    let mut stopping: Vec<JoinHandle<()>> = Vec::new();
    let mut failures = Repeats::default();
    tracing::info!(
        group = %shared.settings.group,
        consumer = %shared.consumer,
        redis = %redact(&shared.settings.redis_url),
        "Redis Cluster: one pipeline per primary"
    );
    while !shutdown.requested() {
        match topology.primaries().await {
            Ok(primaries) => {
                if failures.clear() > 0 {
                    tracing::info!("the cluster's primaries can be looked up again");
                }
                let now = topology::by_address(&primaries);
                for (address, (trigger, handle)) in std::mem::take(&mut running) {
                    if now.contains_key(&address) && !handle.is_finished() {
                        running.insert(address, (trigger, handle));
                    } else {
                        tracing::info!(node = %address, "no longer a primary: stopping its pipeline");
                        trigger.fire();
                        shared.metrics.forget_node(&address);
                        stopping.push(handle);
                    }
                }
                for (address, primary) in now {
                    if running.contains_key(&address) {
                        continue;
                    }
                    let node = match topology::client_for(&client, &primary.host, primary.port) {
                        Ok(node) => node,
                        Err(error) => {
                            tracing::warn!(node = %address, %error, "cannot address the node");
                            continue;
                        }
                    };
                    tracing::info!(node = %address, slots = ?primary.slots, "primary: starting its pipeline");
                    let (trigger, child) = shutdown.child();
                    let (shared, refresh, label) =
                        (shared.clone(), refresh.clone(), address.clone());
                    let handle = tokio::spawn(async move {
                        if let Err(error) =
                            node::run(&shared, node, Some(label.clone()), Some(refresh), child)
                                .await
                        {
                            tracing::warn!(node = %label, "the node's pipeline stopped: {error:#}");
                        }
                    });
                    running.insert(address, (trigger, handle));
                }
            }
            Err(error) => {
                shared.metrics.error("redis_topology");
                if let Some(unlogged) = failures.note(Instant::now()) {
                    tracing::warn!(%error, unlogged, "cannot look up the cluster's primaries");
                }
            }
        }
        stopping.retain(|handle| !handle.is_finished());
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = refresh.notified() => {
                // Several pipelines may ask at once; one look a little later answers them all.
                shutdown.pause(Duration::from_millis(100)).await;
            }
            () = shutdown.requested_wait() => {}
        }
    }
    for (_, (_, handle)) in running {
        let _ = handle.await;
    }
    for handle in stopping {
        let _ = handle.await;
    }
    tracing::info!("persister stopped");
    Ok(())
}
