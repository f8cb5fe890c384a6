//! The cluster controller: an openraft (0.9) group whose voters are the
//! configured peers and whose state machine is the cluster metadata. Every
//! metadata change is a [`ControllerCommand`] appended to its log; every
//! node applies the committed log in order with the same function
//! (`broker::metadata_command`), so all nodes hold the same metadata.
//!
//! Runs on the cluster thread's tokio runtime (openraft needs tokio); the
//! shards reach it through channels.

pub mod log_store;
pub mod network;
pub mod rejoin;
pub mod rpc;
pub mod runtime;
pub mod state_machine;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::broker::metadata_command::{MetadataCommand, Refusal};

openraft::declare_raft_types!(
    /// The controller's Raft types: node ids are the configured
    /// `cluster.node_id`s, a node is known by its cluster address, entries
    /// carry [`ControllerCommand`]s and snapshots are the serialised state.
    pub ControllerTypes:
        D = ControllerCommand,
        R = ControllerOutcome,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// One entry of the controller's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerCommand {
    /// The first command of a new cluster: its id, drawn by the first
    /// leader, and its placement (the voters, and the first leader's shard
    /// count, which every node must run). Every node records the id and
    /// refuses data of another cluster.
    CreateCluster {
        cluster_id: String,
        nodes: Vec<u64>,
        shards: u32,
        /// Members per shard group (`cluster.replication_factor`).
        replication_factor: u16,
    },
    /// A node announces how clients reach it and how many shards it runs
    /// (every node must run the same count).
    RegisterNode {
        node_id: u64,
        kafka_host: String,
        kafka_port: u16,
        shards: u32,
        /// Drawn at the node's start: a registration with another one
        /// than the stored one is a restart (0 in logs written before).
        #[serde(default)]
        incarnation: u64,
        /// The node started on an empty data dir after it had been a
        /// member (a replaced disk): it holds no copy of any shard group
        /// ([`crate::broker::metadata::ClusterMetadata::forget_lost_copies`]).
        #[serde(default)]
        lost_data: bool,
        /// Its advertised `host:port` on each listener besides the main
        /// one, by name (absent in logs written before listeners).
        #[serde(default)]
        listeners: BTreeMap<String, String>,
    },
    /// A change of the cluster metadata.
    Metadata(MetadataCommand),
    /// The controller leader has not heard from this node for
    /// `cluster.session_timeout_ms`: it is fenced (left out of Metadata,
    /// its partitions without a leader) until it registers again.
    FenceNode { node_id: u64 },
    /// Hand out the next `len` producer ids (Kafka's AllocateProducerIds,
    /// KIP-730): the outcome carries the block's first id, and no id is
    /// handed out twice in the cluster's life.
    AllocateProducerIds { len: i32 },
    /// Move the leadership of these shard groups back to their preferred
    /// leader (first member), each that is still live, in sync and not
    /// leading when applied, at the next leader epoch (Kafka's preferred
    /// replica election, run by `auto.leader.rebalance.enable`).
    ElectPreferredLeaders { groups: Vec<u32> },
}

/// What applying a command gave: nothing to say, or the refusal a command
/// met when it was applied (the proposer answers its client with it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerOutcome {
    pub refusal: Option<Refusal>,
    /// AllocateProducerIds: the first id of the block.
    #[serde(default)]
    pub producer_id_block_start: Option<i64>,
}
