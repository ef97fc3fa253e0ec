//! A small Redis Cluster on loopback: three masters with the module, slots spread by redis-cli;
//! and the steps of moving a slot between them, by hand or with `redis-cli --cluster reshard`.

use crate::{Flavor, Server};
use coupon_layout::hash_slot;
use std::ops::RangeInclusive;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three cluster-enabled masters holding all 16384 slots; killed on drop.
pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    pub fn start(flavor: Flavor) -> Cluster {
        let nodes: Vec<Server> = (0..3)
            .map(|_| {
                Server::builder(flavor)
                    .arg("cluster-enabled", "yes")
                    .arg("cluster-config-file", "nodes.conf")
                    .arg("cluster-node-timeout", "5000")
                    .start()
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port()));
        }
        let output = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (apt-get install redis-tools) creates the cluster");
        assert!(
            output.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = Cluster { nodes };
        cluster.wait_until_ok();
        cluster
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
        for node in &self.nodes {
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
