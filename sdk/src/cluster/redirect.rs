//! What a cluster's refusal asks of the client: go to another node, come back later, or
//! nothing (the refusal is the answer).

use redis::cluster_routing::SingleNodeRoutingInfo;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// A node named by a redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Node {
    pub host: String,
    pub port: u16,
}

impl Node {
    /// `127.0.0.1:7001`, `redis-2.internal:6379`, `[::1]:7001` (or `::1:7001`), as Redis
    /// names a node in `-ASK` and `-MOVED`. `None` for an unknown endpoint (`?:7001`, `:7001`).
    pub fn parse(address: &str) -> Option<Node> {
        let (host, port) = address.rsplit_once(':')?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || host == "?" {
            return None;
        }
        Some(Node {
            host: host.to_string(),
            port: port.parse().ok()?,
        })
    }

    pub fn routing(&self) -> SingleNodeRoutingInfo {
        SingleNodeRoutingInfo::ByAddress {
            host: self.host.clone(),
            port: self.port,
        }
    }
}

/// What to do after an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// `-ASK`: send the call once to this node, each command preceded by `ASKING`.
    Ask(Node),
    /// `-MOVED`: send it to this node (redis-rs refreshes its slot map meanwhile).
    Moved(Node),
    /// Nothing ran and it may run later: `-TRYAGAIN` (a multi-key command mid-migration),
    /// `-CLUSTERDOWN`, `-MASTERDOWN`, `-LOADING`, `-READONLY` (a primary demoted by a
    /// failover), a refused connection, no connection to the slot's node. Wait, then send
    /// it by slot again.
    Wait,
    /// The error is the call's answer. A connection that dropped after the call was sent is
    /// one: the call may have run.
    Answer,
}

impl Next {
    pub fn after(error: &RedisError) -> Next {
        let redirect = || {
            error
                .redirect_node()
                .and_then(|(node, _slot)| Node::parse(node))
        };
        match error.kind() {
            ErrorKind::Server(ServerErrorKind::Ask) => redirect().map_or(Next::Wait, Next::Ask),
            ErrorKind::Server(ServerErrorKind::Moved) => redirect().map_or(Next::Wait, Next::Moved),
            ErrorKind::Server(
                ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::BusyLoading
                | ServerErrorKind::ReadOnly,
            )
            | ErrorKind::ClusterConnectionNotFound => Next::Wait,
            _ if error.is_connection_refusal() => Next::Wait,
            _ => Next::Answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(line: &str) -> RedisError {
        let reply = redis::parse_redis_value(format!("-{line}\r\n").as_bytes()).expect("RESP");
        reply.extract_error().expect_err("an error reply")
    }

    fn node(host: &str, port: u16) -> Node {
        Node {
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn ask_and_moved_name_the_node_to_go_to() {
        assert_eq!(
            Next::after(&refusal("ASK 1974 127.0.0.1:7001")),
            Next::Ask(node("127.0.0.1", 7001))
        );
        assert_eq!(
            Next::after(&refusal("MOVED 3999 redis-2.internal:6380")),
            Next::Moved(node("redis-2.internal", 6380))
        );
        assert_eq!(
            Next::after(&refusal("ASK 0 [::1]:7002")),
            Next::Ask(node("::1", 7002))
        );
    }

    #[test]
    fn node_addresses_parse_as_redis_writes_them() {
        assert_eq!(Node::parse("10.0.0.5:6379"), Some(node("10.0.0.5", 6379)));
        assert_eq!(Node::parse("::1:7001"), Some(node("::1", 7001)));
        assert_eq!(Node::parse("[fe80::1]:7001"), Some(node("fe80::1", 7001)));
        for unknown in [
            "?:7001",
            ":7001",
            "127.0.0.1",
            "127.0.0.1:",
            "host:99999",
            "",
        ] {
            assert_eq!(Node::parse(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn a_redirect_to_an_unknown_endpoint_waits_and_goes_by_slot() {
        assert_eq!(Next::after(&refusal("MOVED 3999 :6380")), Next::Wait);
        assert_eq!(Next::after(&refusal("ASK 3999 ?:6380")), Next::Wait);
        assert_eq!(Next::after(&refusal("ASK 3999")), Next::Wait);
    }

    #[test]
    fn refusals_that_ran_nothing_wait() {
        for line in [
            "TRYAGAIN the coupon's keys are being migrated between nodes; retry",
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "CLUSTERDOWN The cluster is down",
            "MASTERDOWN Link with MASTER is down",
            "LOADING Redis is loading the dataset in memory",
            "READONLY You can't write against a read only replica.",
        ] {
            assert_eq!(Next::after(&refusal(line)), Next::Wait, "{line}");
        }
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(Next::after(&RedisError::from(refused)), Next::Wait);
        let missing = RedisError::from((ErrorKind::ClusterConnectionNotFound, "no connection"));
        assert_eq!(Next::after(&missing), Next::Wait);
    }

    #[test]
    fn other_errors_are_the_answer() {
        for line in [
            "ERR unknown command 'COUPON.ISSUE'",
            "NOSCRIPT No matching script",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "CROSSSLOT Keys in request don't hash to the same slot",
            "OOM command not allowed when used memory > 'maxmemory'",
        ] {
            assert_eq!(Next::after(&refusal(line)), Next::Answer, "{line}");
        }
        // Sent, then the connection dropped: the call may have run, so it is not re-sent.
        let dropped = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(Next::after(&RedisError::from(dropped)), Next::Answer);
    }
}
