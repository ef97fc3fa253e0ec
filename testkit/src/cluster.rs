//! A small Redis Cluster on loopback: three masters with the module (and, if asked, replicas),
//! slots spread by redis-cli; the steps of moving a slot between them, by hand or with
//! `redis-cli --cluster reshard`; and a primary killed for its replica to take over.

use crate::{Flavor, Server};
use coupon_layout::hash_slot;
use std::ops::RangeInclusive;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three cluster-enabled masters holding all 16384 slots, each with its replicas if asked;
/// killed on drop.
pub struct Cluster {
    pub nodes: Vec<Server>,
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    flavor: Flavor,
    replicas: usize,
    node_timeout_ms: u64,
}

impl ClusterBuilder {
    /// Replicas per primary (0 by default).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// `cluster-node-timeout`: how long a silent primary takes to be failed over.
    pub fn node_timeout(mut self, ms: u64) -> Self {
        self.node_timeout_ms = ms;
        self
    }

    pub fn start(self) -> Cluster {
        let timeout = self.node_timeout_ms.to_string();
        let nodes: Vec<Server> = (0..3 * (1 + self.replicas))
            .map(|_| {
                Server::builder(self.flavor)
                    .arg("cluster-enabled", "yes")
                    .arg("cluster-config-file", "nodes.conf")
                    .arg("cluster-node-timeout", &timeout)
                    .start()
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let output = create
            .args([
                "--cluster-replicas",
                &self.replicas.to_string(),
                "--cluster-yes",
            ])
            .output()
            .expect("redis-cli (apt-get install redis-tools) creates the cluster");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Cluster { nodes };
        cluster.wait_until_ok();
        if self.replicas > 0 {
            cluster.wait_for_replicas(3 * self.replicas);
        }
        cluster
    }
}

impl Cluster {
    ///
    /// ```no_run
    /// use coupon_testkit::{Cluster, Flavor};
    ///
    /// let cluster = Cluster::builder(Flavor::Redis).replicas(1).start();
    /// assert_eq!(cluster.primaries().len(), 3);
    /// let seeds = cluster.urls(); // redis://127.0.0.1:<port>/ of every node, for a cluster client
    /// # drop(seeds);
    /// ```
    pub fn start(flavor: Flavor) -> Cluster {
        Cluster::builder(flavor).start()
    }

    pub fn builder(flavor: Flavor) -> ClusterBuilder {
        ClusterBuilder {
            flavor,
            replicas: 0,
            node_timeout_ms: 5000,
        }
    }

    /// The nodes running and serving slots as primaries, by their own account, in the
    /// order of their first slot.
    pub fn primaries(&self) -> Vec<usize> {
        let mut primaries: Vec<(u16, usize)> = (0..self.nodes.len())
            .filter(|&node| self.nodes[node].is_running())
            .filter_map(|node| {
                let first = self.slots_of(node).iter().map(|r| *r.start()).min()?;
                Some((first, node))
            })
            .collect();
        primaries.sort();
        primaries.into_iter().map(|(_, node)| node).collect()
    }

    /// `kill -9` of the `i`-th primary (see [`Cluster::primaries`]); its node index.
    pub fn kill_primary(&mut self, i: usize) -> usize {
        let node = self.primaries()[i];
        self.nodes[node].kill();
        node
    }

    /// Waits until the running nodes serve every slot again (a replica of each killed
    /// primary took over) and all of them say `cluster_state:ok`.
    pub fn wait_for_failover(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let served: usize = self
                .primaries()
                .iter()
                .flat_map(|&node| self.slots_of(node))
                .map(|range| usize::from(range.end() - range.start()) + 1)
                .sum();
            if served == 16384 && self.all_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no failover within {limit:?}: {served} slots served"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn all_ok(&self) -> bool {
        self.running().all(|node| {
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query::<String>(&mut node.connect())
                .is_ok_and(|info| info.contains("cluster_state:ok"))
        })
    }

    fn running(&self) -> impl Iterator<Item = &Server> {
        self.nodes.iter().filter(|node| node.is_running())
    }

    /// Waits until `count` replicas have synced with their primaries.
    fn wait_for_replicas(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let synced = self
                .running()
                .filter(|node| {
                    redis::cmd("INFO")
                        .arg("replication")
                        .query::<String>(&mut node.connect())
                        .is_ok_and(|info| info.contains("master_link_status:up"))
                })
                .count();
            if synced >= count && self.all_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{synced} of {count} replicas synced after 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Server::url).collect()
    }

    pub fn flavor(&self) -> Flavor {
        self.nodes[0].flavor()
    }

    /// The node's cluster id (`CLUSTER MYID`).
    pub fn node_id(&self, node: usize) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.nodes[node].connect())
            .expect("CLUSTER MYID")
    }

    /// `127.0.0.1:port` of the node, as it appears in `-ASK` and `-MOVED` replies.
    pub fn address(&self, node: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[node].port())
    }

    /// The slots `node` serves by its own account (its `myself` line in `CLUSTER NODES`).
    pub fn slots_of(&self, node: usize) -> Vec<RangeInclusive<u16>> {
        let nodes = self.cluster_nodes(node);
        own_line(&nodes)
            .split(' ')
            .skip(8)
            .filter(|field| !field.starts_with('['))
            .filter_map(|field| {
                let (first, last) = field.split_once('-').unwrap_or((field, field));
                Some(first.parse().ok()?..=last.parse().ok()?)
            })
            .collect()
    }

    /// The node that serves `slot` by its own account; panics unless exactly one does.
    pub fn owner_of(&self, slot: u16) -> usize {
        let owners: Vec<usize> = (0..self.nodes.len())
            .filter(|&node| self.nodes[node].is_running())
            .filter(|&node| {
                self.slots_of(node)
                    .iter()
                    .any(|range| range.contains(&slot))
            })
            .collect();
        assert_eq!(
            owners.len(),
            1,
            "slot {slot} is claimed by nodes {owners:?}"
        );
        owners[0]
    }

    /// Whether `node` has `slot` marked MIGRATING or IMPORTING.
    pub fn is_moving(&self, node: usize, slot: u16) -> bool {
        let nodes = self.cluster_nodes(node);
        let (out, into) = (format!("[{slot}->-"), format!("[{slot}-<-"));
        let line = own_line(&nodes);
        line.contains(&out) || line.contains(&into)
    }

    /// The first step of moving `slot` by hand: `IMPORTING` on the target, then `MIGRATING`
    /// on the source, as `redis-cli --cluster reshard` does.
    pub fn begin_slot_move(&self, slot: u16, from: usize, to: usize) {
        self.setslot(to, slot, "IMPORTING", &self.node_id(from));
        self.setslot(from, slot, "MIGRATING", &self.node_id(to));
    }

    /// One `MIGRATE` batch of `keys` from node `from` to node `to` (atomic for the batch).
    pub fn migrate(&self, from: usize, to: usize, keys: &[&[u8]]) {
        let reply: String = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(self.nodes[to].port())
            .arg("")
            .arg(0)
            .arg(10_000)
            .arg("KEYS")
            .arg(keys)
            .query(&mut self.nodes[from].connect())
            .unwrap_or_else(|e| panic!("MIGRATE of {keys:?} from node {from} to {to}: {e}"));
        assert_eq!(reply, "OK", "MIGRATE of {keys:?}");
    }

    /// The last step of moving `slot` by hand: `NODE <target>` on the target, the source,
    /// then every other node, so all of them route the slot to the target at once.
    pub fn finish_slot_move(&self, slot: u16, from: usize, to: usize) {
        let target = self.node_id(to);
        let others = (0..self.nodes.len()).filter(|node| *node != from && *node != to);
        for node in [to, from].into_iter().chain(others) {
            self.setslot(node, slot, "NODE", &target);
        }
    }

    /// Runs `redis-cli --cluster reshard`, moving the `count` lowest slots of `from` to `to`,
    /// `pipeline` keys per `MIGRATE`. Returns the running process.
    pub fn spawn_reshard(&self, from: usize, to: usize, count: u16, pipeline: u16) -> Child {
        Command::new("redis-cli")
            .args(["--cluster", "reshard", &self.address(from)])
            .args(["--cluster-from", &self.node_id(from)])
            .args(["--cluster-to", &self.node_id(to)])
            .args(["--cluster-slots", &count.to_string()])
            .args(["--cluster-pipeline", &pipeline.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("redis-cli (apt-get install redis-tools) reshards the cluster")
    }

    fn setslot(&self, node: usize, slot: u16, state: &str, id: &str) {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .arg(id)
            .query(&mut self.nodes[node].connect())
            .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {state} on node {node}: {e}"));
    }

    fn cluster_nodes(&self, node: usize) -> String {
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query(&mut self.nodes[node].connect())
            .expect("CLUSTER NODES")
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in self.running() {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.connect())
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never became ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The `myself` line of a `CLUSTER NODES` reply.
fn own_line(nodes: &str) -> &str {
    nodes
        .lines()
        .find(|line| {
            line.split(' ')
                .nth(2)
                .is_some_and(|flags| flags.split(',').any(|flag| flag == "myself"))
        })
        .expect("CLUSTER NODES has a myself line")
}

/// The first of `prefix-0`, `prefix-1`, … that hashes to `slot`: a key without a hash tag
/// whose slot is known in advance.
pub fn key_in_slot(prefix: &str, slot: u16) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|key| hash_slot(key.as_bytes()) == slot)
        .expect("every slot has keys")
}
