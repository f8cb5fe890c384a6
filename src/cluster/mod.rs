//! The cluster layer (issues 15 and 16): several Sluice nodes sharing one
//! replicated metadata. Its design is ARCHITECTURE.md's section "Cluster
//! (`src/cluster/`)"; this module runs only when the config has a
//! `[cluster]` section ([`crate::config::ClusterConfig`]), and a single node
//! never touches it.
//!
//! Built: the settings and flags (`config/cluster.rs`), the node identity
//! file ([`identity`]), checked before any shard starts, and the
//! [`controller`] (openraft log, state machine, RPC, liveness), whose RPC
//! also carries the requests one node's broker makes of another's
//! ([`crate::broker::peer`]).

pub mod controller;
pub mod identity;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::broker::{Broker, internal_topics};
use crate::config::ClusterConfig;
use controller::runtime::{self, ControllerHandle, ControllerStartError, LocalNode};
use identity::{IdentityError, IdentityFile, NodeIdentity};

#[derive(Debug, Error)]
pub enum ClusterStartError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Controller(#[from] ControllerStartError),
    #[error("stopped by a signal before joining the cluster")]
    Cancelled,
    #[error("the cluster refused this node: {0}")]
    Refused(String),
}

/// Check the data dir before anything else touches it: refuse one that
/// belongs to another node or holds single-node data, and claim a fresh
/// one for `cluster.node_id`. Runs before the shards start, so a refused
/// node has changed nothing but `node.toml`.
pub fn check_identity(
    cluster: &ClusterConfig,
    data_dir: &Path,
) -> Result<NodeIdentity, ClusterStartError> {
    let node = IdentityFile::load(data_dir)?.check_node(cluster.node_id)?;
    tracing::info!(
        node_id = node.node_id(),
        cluster_id = node.cluster_id().unwrap_or("(not joined yet)"),
        data_dir = %data_dir.display(),
        "data dir belongs to this node"
    );
    Ok(node)
}

/// Before this node stops (SIGTERM): hand the shard groups it leads to
/// in-sync followers through the controller ([`ControllerHandle::leave`]),
/// waiting at most `cluster.session_timeout_ms`, the longest a crash would
/// leave them without a leader. Logs the outcome.
pub fn leave(handle: &ControllerHandle, broker: &Broker, cluster: &ClusterConfig) {
    let node_id = u64::try_from(cluster.node_id).expect("validated: node ids are >= 0");
    let timeout = Duration::from_millis(cluster.session_timeout_ms);
    let started = Instant::now();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::warn!(%error, "cannot hand this node's shard groups over before stopping; they fail over after cluster.session_timeout_ms");
            return;
        }
    };
    if runtime.block_on(handle.leave(&broker.metadata, node_id, timeout)) {
        // Groups this node leads alone in sync have nobody to go to.
        let kept = broker.metadata.snapshot().groups_led_by(node_id);
        let waited_ms = started.elapsed().as_millis() as u64;
        if kept.is_empty() {
            tracing::info!(
                waited_ms,
                "handed the shard groups this node led to in-sync followers (controlled shutdown)"
            );
        } else {
            tracing::warn!(
                waited_ms,
                groups = ?kept,
                "this node is the only in-sync replica of these shard groups: they are offline until it returns"
            );
        }
    } else {
        tracing::warn!(
            waited_ms = started.elapsed().as_millis() as u64,
            "could not hand this node's shard groups over before stopping (no controller majority?); they fail over after cluster.session_timeout_ms"
        );
    }
}

/// Refuse to start a single node on a cluster node's data dir (one with a
/// `node.toml`): it would serve none of the cluster's topics and create
/// new ones beside them.
pub fn check_single_node(data_dir: &Path) -> Result<(), ClusterStartError> {
    IdentityFile::load(data_dir)?.refuse_as_single_node()?;
    Ok(())
}

/// Start the controller member and wait until this node has joined: a
/// majority committed its registration since it started, the cluster has
/// its id and internal topics, and the metadata lists this node, unfenced. `cancelled` is polled while waiting (SIGTERM).
pub fn join(
    cluster: &ClusterConfig,
    data_dir: &Path,
    broker: &Broker,
    identity: NodeIdentity,
    shards: u32,
    cancelled: &dyn Fn() -> bool,
) -> Result<ControllerHandle, ClusterStartError> {
    let (host, port) = broker.advertised.clone();
    let internal_topics: Vec<_> = internal_topics(&broker.config)
        .into_iter()
        .map(|(name, partitions, overrides, _)| (name.to_owned(), partitions, overrides))
        .collect();
    let wanted: Vec<String> = internal_topics
        .iter()
        .map(|(name, ..)| name.clone())
        .collect();
    let local = LocalNode {
        kafka_host: host,
        kafka_port: port,
        kafka_listeners: broker
            .extra_listeners
            .iter()
            .map(|listener| {
                let (host, port) = &listener.advertised;
                (listener.name.clone(), format!("{host}:{port}"))
            })
            .collect(),
        shards,
        replication_factor: cluster.replication_factor(),
        internal_topics,
    };
    let store = Arc::clone(&broker.metadata);
    let handle = runtime::start(cluster, data_dir, store, local, identity)?;
    broker.metadata.attach(Arc::new(handle.clone()));
    let _ = broker.peers.set(Arc::new(handle.clone()));
    let node_id = u64::try_from(cluster.node_id).expect("validated: node ids are >= 0");
    let started = Instant::now();
    let mut last_report = started;
    loop {
        let snapshot = broker.metadata.snapshot();
        // A restarted node has all of this in its stored metadata before
        // any peer answers (and openraft may restore it as leader): its
        // registration must also be committed since it started, which
        // takes a live majority, or it would serve stale metadata without
        // a quorum.
        let joined = !snapshot.cluster_id.is_empty()
            && handle.registered()
            && snapshot
                .nodes
                .get(&node_id)
                .is_some_and(|node| !node.fenced)
            && wanted.iter().all(|name| snapshot.topic(name).is_some());
        if joined {
            warn_if_peers_differ(cluster, &snapshot);
            tracing::info!(
                cluster_id = %snapshot.cluster_id,
                node_id,
                nodes = snapshot.nodes.len(),
                leader = handle.leader(),
                waited_ms = started.elapsed().as_millis() as u64,
                "joined the cluster"
            );
            return Ok(handle);
        }
        if cancelled() {
            return Err(ClusterStartError::Cancelled);
        }
        if let Some(reason) = handle.registration_refused() {
            return Err(ClusterStartError::Refused(reason));
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(
                leader = handle.leader(),
                peers = cluster.peers.len(),
                "waiting to join the cluster: a majority of the peers must be up"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Warn when `cluster.peers` names other nodes than the controller's voters
/// (fixed when the cluster was created): adding or removing a node is not
/// supported yet, so the difference has no effect.
fn warn_if_peers_differ(
    cluster: &ClusterConfig,
    snapshot: &crate::broker::metadata::ClusterMetadata,
) {
    let Some(placement) = &snapshot.placement else {
        return;
    };
    let mut configured: Vec<u64> = cluster
        .peers
        .iter()
        .filter_map(|peer| u64::try_from(peer.id).ok())
        .collect();
    configured.sort_unstable();
    if configured != placement.nodes {
        tracing::warn!(
            configured = ?configured,
            voters = ?placement.nodes,
            "cluster.peers names other nodes than the cluster was created with; adding or \
             removing nodes is not supported yet, so the cluster keeps its voters"
        );
    }
    // Found by the fresh-user trial: a node started with another
    // replication factor said nothing, and answered with its own default.
    if cluster.replication_factor() != placement.replication_factor {
        tracing::warn!(
            configured = cluster.replication_factor(),
            cluster = placement.replication_factor,
            "cluster.replication_factor differs from the one the cluster was created with, \
             which stays; set the same cluster.* settings on every node"
        );
    }
}
