//! The cluster layer (issues 15 and 16): several Sluice nodes sharing one
//! replicated metadata. Its design is ARCHITECTURE.md's section "Cluster
//! (`src/cluster/`)"; this module runs only when the config has a
//! `[cluster]` section ([`crate::config::ClusterConfig`]), and a single node
//! never touches it.
//!
//! Built so far: the settings and flags (`config/cluster.rs`), the node
//! identity file ([`identity`]), checked before any shard starts, and the
//! pieces of the [`controller`] (openraft types and state machine).

pub mod controller;
pub mod identity;

use std::path::Path;

use thiserror::Error;

use crate::config::ClusterConfig;
use identity::{IdentityError, IdentityFile};

#[derive(Debug, Error)]
pub enum ClusterStartError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(
        "cluster mode is not available yet (issue 15 is in progress): remove the [cluster] \
         section / --cluster-* flags to run a single node"
    )]
    NotAvailable,
}

/// Start this node's part of the cluster on `data_dir` (locked by the
/// caller): refuse a data dir that belongs to another node or holds
/// single-node data, and claim a fresh one for `cluster.node_id`. Runs
/// before the shards start, so a refused node has changed nothing but
/// `node.toml`.
pub fn start(cluster: &ClusterConfig, data_dir: &Path) -> Result<(), ClusterStartError> {
    let node = IdentityFile::load(data_dir)?.check_node(cluster.node_id)?;
    tracing::info!(
        node_id = node.node_id(),
        cluster_id = node.cluster_id().unwrap_or("(not joined yet)"),
        data_dir = %data_dir.display(),
        "data dir belongs to this node"
    );
    // The controller (issue 15, item 2) starts here.
    Err(ClusterStartError::NotAvailable)
}
