//! Where the coupon streams live: one Redis server, or every primary of a Redis Cluster.
//!
//! On a cluster, `CLUSTER SLOTS` (asked of the `--redis-url` node, else of any node seen
//! before) names the primaries and their slots; each primary is reached with the URL's
//! credentials and TLS settings at its own host and port. The daemon runs one pipeline per
//! primary (see [`crate::daemon`]) and looks the primaries up again every
//! `--topology-refresh-ms`, and at once when a node turns a stream away or stops answering.

use crate::reply::{self, BadReply};
use redis::aio::ConnectionLike;
use redis::{ConnectionAddr, RedisError, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one node may take to answer a topology question.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Reply(#[from] BadReply),
    #[error("no node answered CLUSTER SLOTS ({0})")]
    NoAnswer(String),
}

/// A primary and the slot ranges it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    pub host: String,
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

impl Primary {
    /// `host:port`, as `MOVED` replies name it.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The primaries, and every node as `(host, port)`.
pub type Slots = (Vec<Primary>, Vec<(String, u16)>);

/// Whether the server is a cluster node (`INFO cluster` says `cluster_enabled:1`).
pub async fn is_cluster<C: ConnectionLike + Send>(conn: &mut C) -> Result<bool, RedisError> {
    let info: String = redis::cmd("INFO").arg("cluster").query_async(conn).await?;
    Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
}

/// Every node a `CLUSTER SLOTS` reply names: the primaries with their slots (in the order
/// of their first slot), and every node (primaries and replicas) as `(host, port)`. A node
/// listed with an empty or unknown host (`""`, `"?"`) is at `asked`'s host.
pub fn parse_slots(answer: &Value, asked: &str) -> Result<Slots, BadReply> {
    let mut primaries: Vec<Primary> = Vec::new();
    let mut nodes: Vec<(String, u16)> = Vec::new();
    let endpoint = |node: &Value| -> Result<(String, u16), BadReply> {
        let fields = reply::items(node)?;
        let (Some(host), Some(port)) = (fields.first(), fields.get(1)) else {
            return Err(BadReply(format!("CLUSTER SLOTS node: {node:?}")));
        };
        let host = String::from_utf8_lossy(&reply::bytes(host)?).into_owned();
        let host = match host.as_str() {
            "" | "?" => asked.to_string(),
            _ => host,
        };
        let port = u16::try_from(reply::int(port)?)
            .map_err(|_| BadReply(format!("CLUSTER SLOTS port: {port:?}")))?;
        Ok((host, port))
    };
    for range in reply::items(answer)? {
        let fields = reply::items(range)?;
        let [first, last, primary, replicas @ ..] = fields else {
            return Err(BadReply(format!("CLUSTER SLOTS range: {range:?}")));
        };
        let slot = |value: &Value| {
            u16::try_from(reply::int(value)?)
                .map_err(|_| BadReply(format!("CLUSTER SLOTS slot: {value:?}")))
        };
        let slots = (slot(first)?, slot(last)?);
        let (host, port) = endpoint(primary)?;
        match primaries
            .iter_mut()
            .find(|p| p.host == host && p.port == port)
        {
            Some(known) => known.slots.push(slots),
            None => primaries.push(Primary {
                host: host.clone(),
                port,
                slots: vec![slots],
            }),
        }
        for node in std::iter::once(primary).chain(replicas) {
            let node = endpoint(node)?;
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
    }
    for primary in &mut primaries {
        primary.slots.sort_unstable();
    }
    primaries.sort_by_key(|p| p.slots.first().copied());
    Ok((primaries, nodes))
}

/// A client for the node at `host:port`, with everything else (credentials, database,
/// protocol, TLS) as in `base`'s URL.
pub fn client_for(
    base: &redis::Client,
    host: &str,
    port: u16,
) -> Result<redis::Client, RedisError> {
    let info = base.get_connection_info().clone();
    let addr = match info.addr().clone() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure,
            tls_params,
        },
        _ => ConnectionAddr::Tcp(host.to_string(), port),
    };
    redis::Client::open(info.set_addr(addr))
}

/// The host of `client`'s address ("" for a Unix socket).
fn host_of(client: &redis::Client) -> String {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, _) | ConnectionAddr::TcpTls { host, .. } => host.clone(),
        _ => String::new(),
    }
}

/// Asks the cluster for its primaries: the `--redis-url` node first, then every node seen
/// in earlier answers, until one answers.
pub struct Topology {
    base: redis::Client,
    seen: Vec<(String, u16)>,
}

impl Topology {
    pub fn new(base: redis::Client) -> Topology {
        Topology {
            base,
            seen: Vec::new(),
        }
    }

    /// The primaries and their slots, as the first node to answer sees them.
    pub async fn primaries(&mut self) -> Result<Vec<Primary>, TopologyError> {
        let mut clients = vec![self.base.clone()];
        for (host, port) in &self.seen {
            clients.push(client_for(&self.base, host, *port)?);
        }
        let mut errors = Vec::new();
        for client in clients {
            match tokio::time::timeout(ASK_TIMEOUT, ask(&client)).await {
                Ok(Ok((primaries, nodes))) if !primaries.is_empty() => {
                    self.seen = nodes;
                    return Ok(primaries);
                }
                Ok(Ok(_)) => errors.push(format!("{}: no slots served", host_of(&client))),
                Ok(Err(error)) => errors.push(error.to_string()),
                Err(_) => errors.push(format!("no answer within {ASK_TIMEOUT:?}")),
            }
        }
        errors.dedup();
        Err(TopologyError::NoAnswer(errors.join("; ")))
    }
}

async fn ask(client: &redis::Client) -> Result<Slots, TopologyError> {
    let mut conn = client.get_multiplexed_async_connection().await?;
    let answer: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    Ok(parse_slots(&answer, &host_of(client))?)
}

/// The primaries by address.
pub fn by_address(primaries: &[Primary]) -> BTreeMap<String, &Primary> {
    primaries.iter().map(|p| (p.address(), p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![bulk(host), Value::Int(port), bulk("id")])
    }

    #[test]
    fn cluster_slots_name_the_primaries_and_every_node() {
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("10.0.0.2", 7001),
                node("10.0.0.5", 7004),
            ]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("?", 7002)]),
            Value::Array(vec![Value::Int(20), Value::Int(20), node("", 7000)]),
        ]);
        let (primaries, nodes) = parse_slots(&answer, "10.0.0.1").expect("a valid reply");
        let shown: Vec<(String, Vec<(u16, u16)>)> = primaries
            .iter()
            .map(|p| (p.address(), p.slots.clone()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("10.0.0.1:7000".to_string(), vec![(0, 5460), (20, 20)]),
                ("10.0.0.2:7001".to_string(), vec![(5461, 10922)]),
                ("10.0.0.1:7002".to_string(), vec![(10923, 16383)]),
            ]
        );
        assert_eq!(nodes.len(), 5);
        assert!(parse_slots(&Value::Array(vec![Value::Int(1)]), "h").is_err());
    }

    #[test]
    fn a_node_client_keeps_the_urls_credentials() {
        let base = redis::Client::open("redis://user:secret@10.0.0.1:7000/0").expect("a URL");
        let node = client_for(&base, "10.0.0.2", 7001).expect("a client");
        let info = node.get_connection_info();
        assert_eq!(info.addr(), &ConnectionAddr::Tcp("10.0.0.2".into(), 7001));
        assert_eq!(info.redis_settings().username(), Some("user"));
        assert_eq!(info.redis_settings().password(), Some("secret"));
    }
}
