//! The controller's state machine: the cluster metadata, changed only by
//! applying committed [`ControllerCommand`]s in log order with
//! [`ClusterMetadata::execute`] (the same function a single node runs), and
//! published to this node's [`MetadataStore`] after each applied batch.
//!
//! It lives in memory; openraft replays the committed log after the latest
//! snapshot at a start. A snapshot is the state's stored form as JSON
//! (`controller/snapshot`, written atomically), built when openraft asks
//! (every `SNAPSHOT_ENTRIES` entries) and installed whole when a lagging
//! node receives one. Blocking file I/O runs on the controller's thread.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{ControllerCommand, ControllerOutcome, ControllerTypes};
use crate::broker::metadata::{ClusterMetadata, MetadataStore, NodeInfo, Persisted, Placement};
use crate::broker::metadata_command::{ExecuteContext, Refusal};
use crate::storage::durable_file::write_atomic;

const SNAPSHOT_FILE: &str = "snapshot";

type NodeId = u64;
type Node = openraft::BasicNode;

/// What a snapshot holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    last_log_id: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Node>,
    snapshot_id: String,
    metadata: Persisted,
}

/// The state and where it is published.
struct State {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, Node>,
    metadata: ClusterMetadata,
    /// The last snapshot built or installed (its bytes).
    snapshot: Option<(SnapshotMeta<NodeId, Node>, Vec<u8>)>,
}

/// The controller's state machine (cheap to clone: shared state).
#[derive(Clone)]
pub struct StateMachine {
    state: Arc<Mutex<State>>,
    store: Arc<MetadataStore>,
    dir: PathBuf,
}

impl StateMachine {
    /// The state machine of `dir` (`<data_dir>/controller`), restored from
    /// its snapshot if it has one, publishing to `store`.
    pub fn open(dir: &Path, store: Arc<MetadataStore>) -> Result<StateMachine, String> {
        let path = dir.join(SNAPSHOT_FILE);
        let mut state = State {
            last_applied: None,
            last_membership: StoredMembership::default(),
            metadata: (*store.snapshot()).clone(),
            snapshot: None,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes)
                    .map_err(|error| format!("{}: {error}", path.display()))?;
                let meta = SnapshotMeta {
                    last_log_id: stored.last_log_id,
                    last_membership: stored.last_membership.clone(),
                    snapshot_id: stored.snapshot_id.clone(),
                };
                state.metadata =
                    ClusterMetadata::from_stored(stored.metadata, store.statics(), store.limits())
                        .map_err(|reason| format!("{}: {reason}", path.display()))?;
                state.last_applied = stored.last_log_id;
                state.last_membership = stored.last_membership;
                state.snapshot = Some((meta, bytes));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("{}: {error}", path.display())),
        }
        store.publish(Arc::new(state.metadata.clone()));
        Ok(StateMachine {
            state: Arc::new(Mutex::new(state)),
            store,
            dir: dir.to_owned(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Apply one command to `metadata`.
    fn apply_command(
        metadata: &mut ClusterMetadata,
        command: &ControllerCommand,
        context: ExecuteContext<'_>,
    ) -> ControllerOutcome {
        let refusal = match command {
            ControllerCommand::CreateCluster {
                cluster_id,
                nodes,
                shards,
                replication_factor,
            } => {
                if metadata.cluster_id.is_empty() {
                    metadata.cluster_id = cluster_id.clone();
                    let mut nodes = nodes.clone();
                    nodes.sort_unstable();
                    nodes.dedup();
                    tracing::info!(
                        cluster_id,
                        ?nodes,
                        shards,
                        "the cluster has its id and placement"
                    );
                    metadata.placement = Some(Placement::new(nodes, *shards, *replication_factor));
                    None
                } else {
                    Some(Refusal::InvalidRequest(format!(
                        "the cluster already has id {}",
                        metadata.cluster_id
                    )))
                }
            }
            ControllerCommand::RegisterNode {
                node_id,
                kafka_host,
                kafka_port,
                shards,
                incarnation,
                lost_data,
                listeners,
            } => {
                let node = NodeInfo {
                    listeners: listeners.clone(),
                    host: kafka_host.clone(),
                    port: *kafka_port,
                    shards: *shards,
                    fenced: false,
                    incarnation: *incarnation,
                };
                let placed = metadata
                    .placement
                    .as_ref()
                    .map(|placement| placement.shards);
                match placed {
                    Some(count) if count != *shards => Some(Refusal::InvalidRequest(format!(
                        "node {node_id} runs {shards} shards, the cluster's nodes run {count}: \
                         every node must run the same shard count (--shards {count})"
                    ))),
                    _ => {
                        if metadata.nodes.get(node_id) != Some(&node) {
                            // Debug: a restart replays every registration;
                            // the node logs its own joining.
                            tracing::debug!(node_id, host = %node.host, port = node.port, shards, "node registered");
                        }
                        // Another incarnation than the listed one is a
                        // restart; the same one registers again after a
                        // fencing, or repeats a registration whose answer
                        // was lost.
                        let restarted = metadata
                            .nodes
                            .get(node_id)
                            .is_some_and(|listed| listed.incarnation != *incarnation);
                        if *lost_data && restarted {
                            if let Err(reason) = metadata.forget_lost_copies(*node_id) {
                                return ControllerOutcome {
                                    refusal: Some(Refusal::InvalidRequest(reason)),
                                    producer_id_block_start: None,
                                };
                            }
                        } else if restarted {
                            metadata.restart_node(*node_id);
                        }
                        metadata.nodes.insert(*node_id, node);
                        None
                    }
                }
            }
            ControllerCommand::FenceNode { node_id } => {
                if let Some(node) = metadata.nodes.get_mut(node_id)
                    && !node.fenced
                {
                    node.fenced = true;
                    // Debug: a restart replays every fencing; the leader
                    // that fenced the node logged it.
                    tracing::debug!(node_id, "node fenced");
                    metadata.elect_leaders_without(*node_id);
                }
                None
            }
            ControllerCommand::ElectPreferredLeaders { groups } => {
                let moved = metadata.elect_preferred_leaders(groups);
                if !moved.is_empty() {
                    // Debug: a restart replays it; the proposer logs it.
                    tracing::debug!(?moved, "shard groups led by their preferred leaders again");
                }
                None
            }
            ControllerCommand::AllocateProducerIds { len } => {
                let start = metadata.next_producer_id;
                return match i64::from(*len).checked_add(start).filter(|_| *len > 0) {
                    Some(end) => {
                        metadata.next_producer_id = end;
                        ControllerOutcome {
                            refusal: None,
                            producer_id_block_start: Some(start),
                        }
                    }
                    None => ControllerOutcome {
                        refusal: Some(Refusal::InvalidRequest(if *len > 0 {
                            format!("no block of {len} producer ids is left after {start}")
                        } else {
                            format!("a producer-id block needs a positive length, not {len}")
                        })),
                        producer_id_block_start: None,
                    },
                };
            }
            ControllerCommand::Metadata(command) => {
                metadata.execute(command.clone(), context).err()
            }
        };
        ControllerOutcome {
            refusal,
            producer_id_block_start: None,
        }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }
}

fn write_error(path: &Path, error: &std::io::Error) -> StorageError<NodeId> {
    StorageIOError::write_snapshot(None, openraft::AnyError::new(error)).into_storage(path)
}

/// StorageIOError into StorageError, naming the file in the log.
trait IntoStorage {
    fn into_storage(self, path: &Path) -> StorageError<NodeId>;
}

impl IntoStorage for StorageIOError<NodeId> {
    fn into_storage(self, path: &Path) -> StorageError<NodeId> {
        tracing::error!(path = %path.display(), error = %self, "controller snapshot I/O failed");
        StorageError::IO { source: self }
    }
}

impl RaftSnapshotBuilder<ControllerTypes> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<ControllerTypes>, StorageError<NodeId>> {
        let (stored, meta) = {
            let state = self.lock();
            let snapshot_id = match state.last_applied {
                Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
                None => "empty".to_owned(),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.last_membership.clone(),
                snapshot_id: snapshot_id.clone(),
            };
            let stored = StoredSnapshot {
                last_log_id: state.last_applied,
                last_membership: state.last_membership.clone(),
                snapshot_id,
                metadata: state.metadata.to_stored(),
            };
            (stored, meta)
        };
        let bytes = serde_json::to_vec(&stored).map_err(|error| {
            StorageIOError::write_snapshot(Some(meta.signature()), &error).into_storage(&self.dir)
        })?;
        let path = self.snapshot_path();
        write_atomic(&path, &bytes).map_err(|error| write_error(&path, &error))?;
        self.lock().snapshot = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<ControllerTypes> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let state = self.lock();
        Ok((state.last_applied, state.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ControllerOutcome>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<ControllerTypes>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let context = ExecuteContext {
            statics: self.store.statics(),
            limits: self.store.limits(),
        };
        let mut outcomes = Vec::new();
        let published = {
            let mut state = self.lock();
            for entry in entries {
                state.last_applied = Some(entry.log_id);
                outcomes.push(match entry.payload {
                    EntryPayload::Blank => ControllerOutcome::default(),
                    EntryPayload::Normal(command) => {
                        Self::apply_command(&mut state.metadata, &command, context)
                    }
                    EntryPayload::Membership(membership) => {
                        state.last_membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        ControllerOutcome::default()
                    }
                });
            }
            Arc::new(state.metadata.clone())
        };
        self.store.publish(published);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|error| {
            StorageIOError::read_snapshot(Some(meta.signature()), &error).into_storage(&self.dir)
        })?;
        let metadata = ClusterMetadata::from_stored(
            stored.metadata,
            self.store.statics(),
            self.store.limits(),
        )
        .map_err(|reason| {
            StorageIOError::read_snapshot(Some(meta.signature()), &std::io::Error::other(reason))
                .into_storage(&self.dir)
        })?;
        let path = self.snapshot_path();
        write_atomic(&path, &bytes).map_err(|error| write_error(&path, &error))?;
        let published = Arc::new(metadata.clone());
        {
            let mut state = self.lock();
            state.metadata = metadata;
            state.last_applied = meta.last_log_id;
            state.last_membership = meta.last_membership.clone();
            state.snapshot = Some((meta.clone(), bytes));
        }
        tracing::info!(snapshot = %meta.snapshot_id, "installed a controller snapshot");
        self.store.publish(published);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<ControllerTypes>>, StorageError<NodeId>> {
        Ok(self.lock().snapshot.clone().map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
