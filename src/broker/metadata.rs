//! Cluster metadata: topics, their partition counts, ids and config
//! overrides, the dynamic broker settings, group configs, and the cluster
//! id.
//!
//! Every topic has a [`TopicId`] (Kafka's topic UUID, KIP-516), drawn at
//! random when the topic is created and kept with it, so a topic deleted and
//! created again under the same name has a new id and requests naming the
//! old one get UNKNOWN_TOPIC_ID. Ids are unique among live topics; the
//! snapshot indexes them for requests that name topics by id (Fetch 13+,
//! Produce 13, Metadata 12+, DeleteTopics 6).
//!
//! Small and read on every request, so every shard reads an immutable
//! snapshot (`Arc<ClusterMetadata>`, swapped atomically: readers never
//! wait). Changes are commands (`metadata_command.rs`) executed one at a
//! time by the writer thread, on a copy that is persisted durably first, in
//! `<data_dir>/metadata.toml` (write, fsync, rename, fsync), then published;
//! shard threads await the outcome without waiting on the file system. Metadata is the source of
//! truth. At startup each shard creates the partitions it owns but lacks and
//! deletes the ones no topic claims, which finishes any topic change a
//! crash interrupted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::broker_config::{BrokerOverrides, BrokerView, StaticSettings};
use super::metadata_command::{Applied, ExecuteContext, MetadataCommand, Refusal};
use super::topic_config::{ConfigIssue, TopicConfig, TopicLimits};
use crate::broker::quota::{EntityName, QuotaEntity, Quotas};
use crate::ids::PartitionId;
use crate::security::acl::{AclBinding, AclSet};
use crate::security::scram::{ScramCredential, ScramMechanism};
use crate::storage::durable_file::write_atomic;

pub const METADATA_FILE: &str = "metadata.toml";
const METADATA_VERSION: u32 = 1;

/// A topic's 16-byte id (Kafka's topic UUID, KIP-516).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicId(pub [u8; 16]);

impl TopicId {
    /// Kafka's "no topic id" (`Uuid.ZERO_UUID`): what a request sends where
    /// it names a topic by name.
    pub const ZERO: TopicId = TopicId([0; 16]);
    /// Kafka's `Uuid.ONE_UUID`, reserved for its metadata topic.
    pub const ONE: TopicId = TopicId([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

    /// A fresh random id, as Kafka's `Uuid.randomUuid` draws them: a
    /// version-4 UUID, never one of the reserved ids, and never one whose
    /// printed form starts with `-` (command-line tools would read it as a
    /// flag).
    pub fn generate() -> TopicId {
        loop {
            let id = TopicId(random_bytes());
            if !id.is_reserved() && !id.to_string().starts_with('-') {
                return id;
            }
        }
    }

    /// Whether Kafka reserves this id (zero and one), so no topic has it.
    pub fn is_reserved(self) -> bool {
        self == TopicId::ZERO || self == TopicId::ONE
    }

    pub fn from_uuid(uuid: uuid::Uuid) -> TopicId {
        TopicId(*uuid.as_bytes())
    }

    pub fn to_uuid(self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.0)
    }
}

/// Stored and sent as 32 hex digits (as in `metadata.toml`).
impl Serialize for TopicId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format_id(*self))
    }
}

impl<'de> Deserialize<'de> for TopicId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_id(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not 32 hex digits")))
    }
}

/// Kafka's printed form of a UUID (`Uuid.toString`): URL-safe base64, no
/// padding, as `kafka-topics --describe` shows topic ids.
impl std::fmt::Display for TopicId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&base64_url(&self.0))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: String,
    pub id: TopicId,
    pub partitions: u32,
    /// Config overrides, as clients set them.
    pub overrides: BTreeMap<String, String>,
    /// Defaults with the overrides applied.
    pub config: TopicConfig,
    /// A cluster topic's partition ids, allocated by the controller so that
    /// a partition has the same id in every replica: (first partition
    /// index, its id) per range of consecutive partitions created together,
    /// in index order. Empty on a single node, whose shards number their
    /// partitions themselves.
    pub partition_ids: Vec<(u32, u32)>,
}

impl TopicMeta {
    /// What storage enforces for the topic's partitions. The internal
    /// topics are never handed to the log cleaner, whatever the broker's
    /// `log.cleanup.policy`: their coordinators keep them small themselves,
    /// copying what they still need forward out of the oldest segment.
    pub fn storage_config(&self) -> crate::storage::PartitionConfig {
        let mut config = self.config.partition_config();
        if super::is_internal_topic(&self.name) {
            config.compact = false;
            config.copies_forward = true;
        }
        config
    }

    /// The id the controller allocated to partition `index`, if it did.
    pub fn partition_id(&self, index: u32) -> Option<PartitionId> {
        if index >= self.partitions {
            return None;
        }
        let &(first_index, first_id) = self
            .partition_ids
            .iter()
            .rev()
            .find(|(first_index, _)| *first_index <= index)?;
        Some(PartitionId(first_id + (index - first_index)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub cluster_id: String,
    pub topics: BTreeMap<String, Arc<TopicMeta>>,
    /// Topic names by id, rebuilt from `topics` before each snapshot is
    /// published ([`MetadataStore::update`]).
    ids: BTreeMap<TopicId, String>,
    /// Dynamic broker settings (KIP-226), as clients set them.
    pub broker: BrokerOverrides,
    /// What a topic config is where a topic does not override it: the
    /// broker's settings at every level (see `broker_config.rs`).
    pub topic_defaults: TopicConfig,
    /// Group configs (`group/config.rs`), checked, by group id; a group
    /// without any has no entry.
    pub group_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// The nodes of a cluster, by node id (empty for a single node).
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// Where a cluster's partitions live (`None` for a single node).
    pub placement: Option<Placement>,
    /// A cluster's next free producer id (its controller allocates them;
    /// a single node keeps its own in `__producer_ids`).
    pub next_producer_id: i64,
    /// A cluster's next free partition id ([`TopicMeta::partition_ids`]),
    /// from [`PartitionId::CLUSTER_FIRST`].
    pub next_partition_id: u32,
    /// SASL/SCRAM credentials by user and mechanism (KIP-554): salted and
    /// hashed, never a password (`security/scram.rs`).
    pub scram_credentials: BTreeMap<String, BTreeMap<ScramMechanism, ScramCredential>>,
    /// The ACLs (`security/acl.rs`), shared between snapshots until one
    /// changes them.
    pub acls: Arc<AclSet>,
    /// Client quotas by entity (`broker/quota.rs`), bytes per second.
    pub client_quotas: Quotas,
}

/// A cluster's shard groups (ARCHITECTURE.md, "Placement"): group
/// `g = j·S + i` is shard `i` of `nodes[j]` (its preferred leader) and of
/// the next `replication_factor - 1` nodes in id order; partition `(t, p)`
/// belongs to group `partition_slot(t, p) mod (N·S)`, so its shard index is
/// the one a single node would give it. The nodes and shard count are fixed
/// when the cluster is created (the voters and the first leader's shard
/// count, which every node must run); each group's leader, leader epoch and
/// in-sync set are recorded in [`Placement::groups`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The voters' node ids, ascending.
    pub nodes: Vec<u64>,
    pub shards: u32,
    /// Members per shard group (`cluster.replication_factor` when the
    /// cluster was created).
    #[serde(default = "one")]
    pub replication_factor: u16,
    /// Every shard group's record, by group number (`N·S` of them). Empty
    /// in metadata stored before the records existed: [`Placement::new`]'s
    /// records are filled in when such metadata is loaded.
    #[serde(default)]
    pub groups: Vec<ShardGroup>,
}

/// One shard group as the controller records it (Kafka's partition
/// registration, per shard group; ARCHITECTURE.md, "Cluster II design").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardGroup {
    /// Its members, the preferred leader first.
    pub members: Vec<u64>,
    /// The member serving its partitions.
    pub leader: u64,
    /// Raised at every change of leader (KIP-101's leader epoch, kept per
    /// shard group); Metadata reports it for each partition of the group.
    pub leader_epoch: i32,
    /// The members holding every acknowledged record of the group's log
    /// (Kafka's ISR). Until followers copy the log (issue 16) only the
    /// leader does.
    pub in_sync: Vec<u64>,
}

fn one() -> u16 {
    1
}

impl Placement {
    /// The placement of a new cluster: every group led by its preferred
    /// leader at epoch 0, every member in sync (every copy of a new log is
    /// empty, so all hold everything; Kafka creates a partition with its
    /// ISR = its replicas). A member that does not start copying leaves the
    /// set after `cluster.replica_lag_time_max_ms`, or when it is fenced.
    pub fn new(nodes: Vec<u64>, shards: u32, replication_factor: u16) -> Placement {
        let mut placement = Placement {
            nodes,
            shards,
            replication_factor,
            groups: Vec::new(),
        };
        placement.fill_groups();
        for group in &mut placement.groups {
            group.in_sync = group.members.clone();
        }
        placement
    }

    /// Give metadata stored before the group records existed the records
    /// [`Placement::new`] would have made (nothing had changed them then).
    pub fn fill_groups(&mut self) {
        if !self.groups.is_empty() || self.nodes.is_empty() || self.shards == 0 {
            return;
        }
        let count = usize::from(self.replication_factor).clamp(1, self.nodes.len());
        let per_node = self.shards as usize;
        self.groups = (0..self.nodes.len() * per_node)
            .map(|group| {
                let first = group / per_node;
                let members: Vec<u64> = (0..count)
                    .map(|offset| self.nodes[(first + offset) % self.nodes.len()])
                    .collect();
                ShardGroup {
                    leader: members[0],
                    leader_epoch: 0,
                    in_sync: vec![members[0]],
                    members,
                }
            })
            .collect();
    }

    /// The shard group holding partition `index` of `topic`.
    pub fn group(&self, topic: &str, index: u32) -> &ShardGroup {
        &self.groups[self.group_number(topic, index)]
    }

    /// The number of the shard group holding partition `index` of `topic`.
    pub fn group_number(&self, topic: &str, index: u32) -> usize {
        assert_eq!(
            self.groups.len(),
            self.nodes.len() * self.shards as usize,
            "a placement has a record per shard group"
        );
        let slot = crate::shard::mailbox::partition_slot(topic, index);
        (slot % self.groups.len() as u64) as usize
    }

    /// The node leading partition `index` of `topic`.
    pub fn leader(&self, topic: &str, index: u32) -> u64 {
        self.group(topic, index).leader
    }

    /// The members of partition `index` of `topic`'s shard group, the
    /// preferred leader first.
    pub fn replicas(&self, topic: &str, index: u32) -> Vec<u64> {
        self.group(topic, index).members.clone()
    }
}

/// A cluster node as clients reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its advertised Kafka host and port.
    pub host: String,
    pub port: u16,
    /// Its shard count (the same on every node).
    pub shards: u32,
    /// Silent past the session timeout: left out of Metadata until it
    /// registers again (its heartbeats resume).
    #[serde(default)]
    pub fenced: bool,
    /// The node's process start it registered from (drawn at random at
    /// each start): another one in a registration means it restarted.
    #[serde(default)]
    pub incarnation: u64,
    /// Its advertised `host:port` on each listener besides the main one,
    /// by listener name (`security.listeners`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, String>,
}

#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("cannot read cluster metadata {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cluster metadata {path} is damaged: {reason}; restore it from a backup (topics and their configs live there)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "cluster metadata {path} is damaged: {source}; restore it from a backup (topics and their configs live there)"
    )]
    Unparsable {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid built-in topic {topic}: {source}")]
    InvalidBuiltIn {
        topic: &'static str,
        #[source]
        source: ConfigIssue,
    },
    #[error("cannot encode cluster metadata for {path} (a bug): {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: toml::ser::Error,
    },
    #[error("the metadata writer has stopped (the broker is shutting down)")]
    WriterStopped,
    #[error("the cluster controller did not take the change: {0}")]
    Controller(String),
    #[error("cannot persist cluster metadata {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The stored form of the metadata (`metadata.toml`, controller snapshots).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Persisted {
    version: u32,
    cluster_id: String,
    #[serde(default)]
    topics: Vec<PersistedTopic>,
    /// Dynamic broker settings; absent in files written before they existed.
    #[serde(default)]
    broker_configs: PersistedBroker,
    /// Group configs by group id; absent in files written before them.
    #[serde(default)]
    group_configs: BTreeMap<String, BTreeMap<String, String>>,
    /// A cluster's nodes (controller snapshots only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    nodes: BTreeMap<String, NodeInfo>,
    /// A cluster's placement (controller snapshots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    placement: Option<Placement>,
    /// A cluster's next free producer id (controller snapshots only).
    #[serde(default, skip_serializing_if = "is_zero")]
    next_producer_id: i64,
    /// A cluster's next free partition id (controller snapshots only).
    #[serde(
        default = "cluster_first_partition_id",
        skip_serializing_if = "is_cluster_first"
    )]
    next_partition_id: u32,
    /// SCRAM credentials by user, then mechanism name; absent in files
    /// written before them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    scram_credentials: BTreeMap<String, BTreeMap<String, ScramCredential>>,
    /// ACL bindings; absent in files written before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    acls: Vec<AclBinding>,
    /// Client quotas; absent in files written before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    client_quotas: Vec<PersistedQuota>,
}

/// One entity's client quotas as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct PersistedQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<EntityName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<EntityName>,
    values: BTreeMap<String, u64>,
}

fn cluster_first_partition_id() -> u32 {
    PartitionId::CLUSTER_FIRST
}

fn is_cluster_first(id: &u32) -> bool {
    *id == PartitionId::CLUSTER_FIRST
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct PersistedBroker {
    /// The cluster default (resource name "").
    #[serde(default)]
    cluster: BTreeMap<String, String>,
    /// This node's.
    #[serde(default)]
    node: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PersistedTopic {
    name: String,
    id: String,
    partitions: u32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
    /// [`TopicMeta::partition_ids`] (cluster topics only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    partition_ids: Vec<(u32, u32)>,
}

/// The cluster metadata of this node: the published snapshot and the
/// writer that changes it.
pub struct MetadataStore {
    shared: Arc<Shared>,
    writer: Writer,
}

/// Who executes commands.
enum Writer {
    /// A single node: the writer thread (it stops when this is dropped).
    Local(flume::Sender<Job>),
    /// A cluster node: the controller, once attached; its state machine
    /// publishes the snapshots.
    Replicated(std::sync::OnceLock<Arc<dyn MetadataProposer>>),
}

/// Where a cluster node's metadata commands go: the controller, which
/// answers once the command is committed and applied on this node.
pub trait MetadataProposer: Send + Sync {
    /// The command's refusal (`None`: applied), or why it may not have been
    /// made.
    fn propose(
        &self,
        command: MetadataCommand,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<Refusal>, String>>;

    /// The first id of a fresh block of `len` producer ids.
    fn allocate_producer_ids(
        &self,
        len: i32,
    ) -> futures_util::future::BoxFuture<'static, Result<i64, String>>;
}

/// What the store and its writer thread share.
struct Shared {
    path: PathBuf,
    statics: StaticSettings,
    limits: TopicLimits,
    /// The published snapshot, swapped whole: readers never wait.
    current: ArcSwap<ClusterMetadata>,
    /// Serialises commits (the writer thread's, and a start's before it).
    writer: Mutex<()>,
}

/// A command for the writer thread and where its outcome goes.
struct Job {
    command: MetadataCommand,
    reply: futures_channel::oneshot::Sender<Committed>,
}

/// A command's outcome: refused, or applied and durable. The outer error is
/// the metadata file's (nothing published).
pub type Committed = Result<Result<Applied, Refusal>, MetadataError>;

impl MetadataStore {
    /// Load the metadata of `data_dir`, or start a new cluster there, and
    /// start its writer thread.
    pub fn open(
        data_dir: &Path,
        statics: StaticSettings,
        limits: TopicLimits,
    ) -> Result<MetadataStore, MetadataError> {
        let path = data_dir.join(METADATA_FILE);
        let metadata = match std::fs::read_to_string(&path) {
            Ok(text) => decode(&text, &path, &statics, limits)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let fresh = ClusterMetadata::empty(new_cluster_id(), &statics);
                persist(&path, &fresh)?;
                fresh
            }
            Err(source) => return Err(MetadataError::Read { path, source }),
        };
        let shared = Arc::new(Shared {
            path,
            statics,
            limits,
            current: ArcSwap::from_pointee(metadata),
            writer: Mutex::new(()),
        });
        let (jobs, queue) = flume::unbounded::<Job>();
        let writer = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("sluice-metadata".to_owned())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    // The requester may have gone (its connection closed):
                    // the change stands regardless.
                    let _ = job.reply.send(writer.commit(job.command));
                }
            })
            .map_err(|source| MetadataError::Write {
                path: shared.path.clone(),
                source,
            })?;
        Ok(MetadataStore {
            shared,
            writer: Writer::Local(jobs),
        })
    }

    /// A block of `len` producer ids from the cluster's controller: its
    /// first id (a cluster node's InitProducerId draws from these).
    pub async fn allocate_producer_ids(&self, len: i32) -> Result<i64, MetadataError> {
        let Writer::Replicated(proposer) = &self.writer else {
            return Err(MetadataError::Controller(
                "a single node allocates producer ids itself".to_owned(),
            ));
        };
        let proposer = proposer.get().ok_or_else(|| {
            MetadataError::Controller("this node has not joined its cluster yet".to_owned())
        })?;
        proposer
            .allocate_producer_ids(len)
            .await
            .map_err(MetadataError::Controller)
    }

    /// The store of a cluster node: no file (the controller's log and
    /// snapshots hold the metadata) and an empty snapshot until the
    /// controller's state machine publishes one.
    pub fn replicated(statics: StaticSettings, limits: TopicLimits) -> MetadataStore {
        let empty = ClusterMetadata::empty(String::new(), &statics);
        MetadataStore {
            shared: Arc::new(Shared {
                path: PathBuf::new(),
                statics,
                limits,
                current: ArcSwap::from_pointee(empty),
                writer: Mutex::new(()),
            }),
            writer: Writer::Replicated(std::sync::OnceLock::new()),
        }
    }

    /// Send this cluster node's commands to `proposer` (once).
    pub fn attach(&self, proposer: Arc<dyn MetadataProposer>) {
        if let Writer::Replicated(slot) = &self.writer {
            let _ = slot.set(proposer);
        }
    }

    /// Whether the metadata is the cluster's (replicated by the
    /// controller) rather than this node's own.
    pub fn is_replicated(&self) -> bool {
        matches!(self.writer, Writer::Replicated(_))
    }

    /// The current metadata (lock-free).
    pub fn snapshot(&self) -> Arc<ClusterMetadata> {
        self.shared.current.load_full()
    }

    /// The broker settings `sluice.toml` gave (the static levels).
    pub fn statics(&self) -> &StaticSettings {
        &self.shared.statics
    }

    pub fn limits(&self) -> TopicLimits {
        self.shared.limits
    }

    fn context(&self) -> ExecuteContext<'_> {
        self.shared.context()
    }

    /// Execute `command` on the writer thread: refused, or applied,
    /// persisted and published before the future resolves. The calling
    /// thread never waits on the file system.
    pub async fn submit(&self, command: MetadataCommand) -> Committed {
        let jobs = match &self.writer {
            Writer::Local(jobs) => jobs,
            Writer::Replicated(proposer) => {
                let Some(proposer) = proposer.get() else {
                    return Err(MetadataError::Controller(
                        "this node has not joined its cluster yet".to_owned(),
                    ));
                };
                let before = self.snapshot();
                let refusal = proposer
                    .propose(command.clone())
                    .await
                    .map_err(MetadataError::Controller)?;
                return Ok(match refusal {
                    Some(refusal) => Err(refusal),
                    None => Ok(applied(&command, &before, &self.snapshot())),
                });
            }
        };
        let (reply, outcome) = futures_channel::oneshot::channel();
        if jobs.send(Job { command, reply }).is_err() {
            return Err(MetadataError::WriterStopped);
        }
        outcome.await.unwrap_or(Err(MetadataError::WriterStopped))
    }

    /// [`MetadataStore::submit`] on the calling thread, for a single node's
    /// start (before any shard serves) and tests.
    pub fn submit_blocking(&self, command: MetadataCommand) -> Committed {
        assert!(
            !self.is_replicated(),
            "a cluster node's commands go through the controller"
        );
        self.shared.commit(command)
    }

    /// What `command` would do to the current metadata, changing nothing
    /// (validate-only requests).
    pub fn dry_run(&self, command: MetadataCommand) -> Result<Applied, Refusal> {
        (*self.snapshot()).clone().execute(command, self.context())
    }

    /// Publish `metadata` as the current snapshot: the cluster controller's
    /// state machine does, after applying committed commands.
    pub fn publish(&self, metadata: Arc<ClusterMetadata>) {
        self.shared.current.store(metadata);
    }

    /// A fresh id for a new topic, not taken by a live one.
    pub fn new_topic_id(&self) -> TopicId {
        let snapshot = self.snapshot();
        loop {
            let id = TopicId::generate();
            if snapshot.topic_by_id(id).is_none() {
                return id;
            }
        }
    }
}

/// What an applied `command` changed, from the snapshots before and after
/// it (a cluster node learns the change through its state machine).
fn applied(
    command: &MetadataCommand,
    before: &ClusterMetadata,
    after: &ClusterMetadata,
) -> Applied {
    let topic = |metadata: &ClusterMetadata, name: &str| {
        metadata.topic(name).cloned().unwrap_or_else(|| {
            Arc::new(TopicMeta {
                name: name.to_owned(),
                id: TopicId::ZERO,
                partitions: 0,
                overrides: BTreeMap::new(),
                config: metadata.topic_defaults.clone(),
                partition_ids: Vec::new(),
            })
        })
    };
    match command {
        MetadataCommand::CreateTopic { name, .. }
        | MetadataCommand::SetTopicConfigs { name, .. } => Applied::Topic(topic(after, name)),
        MetadataCommand::DeleteTopic { name, .. } => Applied::Topic(topic(before, name)),
        MetadataCommand::CreatePartitions { name, .. } => Applied::Grown {
            from: topic(before, name).partitions,
            topic: topic(after, name),
        },
        MetadataCommand::SetBrokerConfigs { .. }
        | MetadataCommand::SetGroupConfigs { .. }
        | MetadataCommand::SetInSync { .. }
        | MetadataCommand::SetScramCredential { .. }
        | MetadataCommand::DeleteScramCredential { .. }
        | MetadataCommand::CreateAcls { .. }
        | MetadataCommand::DeleteAcls { .. }
        | MetadataCommand::AlterClientQuotas { .. } => Applied::Configs,
    }
}

impl Shared {
    fn context(&self) -> ExecuteContext<'_> {
        ExecuteContext {
            statics: &self.statics,
            limits: self.limits,
        }
    }

    /// Execute `command` on a copy of the metadata, persist the copy, then
    /// publish it. Commits are serialised; a refusal writes nothing.
    fn commit(&self, command: MetadataCommand) -> Committed {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = (*self.current.load_full()).clone();
        let applied = match next.execute(command, self.context()) {
            Ok(applied) => applied,
            Err(refusal) => return Ok(Err(refusal)),
        };
        persist(&self.path, &next)?;
        self.current.store(Arc::new(next));
        Ok(Ok(applied))
    }
}

impl ClusterMetadata {
    /// Metadata with no topics and no dynamic settings.
    pub fn empty(cluster_id: String, statics: &StaticSettings) -> ClusterMetadata {
        let broker = BrokerOverrides::default();
        ClusterMetadata {
            cluster_id,
            topics: BTreeMap::new(),
            ids: BTreeMap::new(),
            topic_defaults: topic_defaults(statics, &broker),
            broker,
            group_configs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            placement: None,
            next_producer_id: 0,
            next_partition_id: PartitionId::CLUSTER_FIRST,
            scram_credentials: BTreeMap::new(),
            acls: Arc::default(),
            client_quotas: Quotas::new(),
        }
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    /// The node leading partition `index` of `topic` in a cluster (`None`
    /// for a single node, which leads everything).
    pub fn leader_of(&self, topic: &str, index: u32) -> Option<u64> {
        self.placement
            .as_ref()
            .map(|placement| placement.leader(topic, index))
    }

    /// Node `fenced` was just fenced: it leaves every in-sync set (Kafka's
    /// controller shrinks the ISR of a fenced broker, so acks=all writes no
    /// longer wait for it), and each shard group it led gets a new leader
    /// at the next leader epoch: the first of its other in-sync members
    /// that is not fenced, in member order (Kafka's election from the
    /// ISR). With none, the group keeps its leader and stays offline until
    /// that node returns, unless `unclean.leader.election.enable` is true
    /// as the cluster default: then the first live member leads, alone in
    /// sync, and what only the old leader held may be lost.
    pub fn elect_leaders_without(&mut self, fenced: u64) {
        let unclean = self
            .topic_defaults
            .value_of("unclean.leader.election.enable")
            == Some("true");
        let live: BTreeSet<u64> = self
            .nodes
            .iter()
            .filter(|(id, node)| !node.fenced && **id != fenced)
            .map(|(id, _)| *id)
            .collect();
        let Some(placement) = self.placement.as_mut() else {
            return;
        };
        for (number, group) in placement.groups.iter_mut().enumerate() {
            group.in_sync.retain(|member| *member != fenced);
            if group.leader != fenced {
                continue;
            }
            let clean = group
                .in_sync
                .iter()
                .copied()
                .find(|member| live.contains(member));
            let unclean_choice = || {
                group
                    .members
                    .iter()
                    .copied()
                    .find(|member| live.contains(member))
            };
            let (leader, in_sync) = match clean {
                Some(leader) => (leader, group.in_sync.clone()),
                None => match unclean.then(unclean_choice).flatten() {
                    Some(leader) => {
                        tracing::warn!(
                            group = number,
                            leader,
                            "no in-sync member of a shard group is live: unclean.leader.election.enable elects an out-of-sync one, and records only the old leader held may be lost"
                        );
                        (leader, vec![leader])
                    }
                    None => {
                        // Keeps the fenced leader in its in-sync set: it
                        // holds every acknowledged record.
                        group.in_sync = vec![fenced];
                        continue;
                    }
                },
            };
            group.leader = leader;
            group.leader_epoch += 1;
            group.in_sync = in_sync;
            if !group.in_sync.contains(&leader) {
                group.in_sync.insert(0, leader);
            }
        }
    }

    /// Node `node` registered again after a restart: a new incarnation,
    /// which may lack the tail of its log that its followers copied (a
    /// power cut loses what it had not fsynced; a damaged disk, more). As
    /// Kafka's controller does for a broker back from an unclean shutdown
    /// (KIP-966), it leaves every in-sync set and each group it led gets
    /// another in-sync member as leader ([`ClusterMetadata::elect_leaders_
    /// without`]); a group with none keeps it as leader, alone in sync, at
    /// the next leader epoch, so that the other copies cut what it lacks
    /// by epoch instead of asking it for positions past its end.
    pub fn restart_node(&mut self, node: u64) {
        self.elect_leaders_without(node);
        let Some(placement) = self.placement.as_mut() else {
            return;
        };
        for group in &mut placement.groups {
            if group.leader == node {
                group.leader_epoch += 1;
            }
        }
    }

    /// The shard groups `node` leads (by number).
    pub fn groups_led_by(&self, node: u64) -> Vec<usize> {
        self.placement
            .iter()
            .flat_map(|placement| placement.groups.iter().enumerate())
            .filter(|(_, group)| group.leader == node)
            .map(|(number, _)| number)
            .collect()
    }

    /// Node `node` came back on an empty data dir (its disk was replaced,
    /// or wiped): none of its copies holds anything any more. As for a
    /// fenced node ([`ClusterMetadata::elect_leaders_without`]), it leaves
    /// every in-sync set and each group it led gets another in-sync member
    /// as leader at the next leader epoch; it then copies every group from
    /// its leader and rejoins each in-sync set once caught up. Refused,
    /// changing nothing, while it is the only in-sync member of a group
    /// (and `unclean.leader.election.enable` is off): that group's
    /// acknowledged records exist on no other node, and leading it empty
    /// would drop them. The reason names the groups.
    pub fn forget_lost_copies(&mut self, node: u64) -> Result<(), String> {
        let mut changed = self.clone();
        changed.elect_leaders_without(node);
        let only_copy = changed.groups_led_by(node);
        if !only_copy.is_empty() {
            return Err(format!(
                "node {node} came back with an empty data dir, but it is the only in-sync \
                 replica of shard groups {only_copy:?}: their acknowledged records are on no \
                 other node. Restart it on the data dir it had (or bring back an in-sync \
                 member of those groups first); to give them up instead, set \
                 unclean.leader.election.enable=true as the cluster default"
            ));
        }
        *self = changed;
        Ok(())
    }

    /// The shard groups led by another member than their preferred leader
    /// (their first member) while that one is live (not fenced) and in
    /// sync: what [`ClusterMetadata::elect_preferred_leaders`] would move.
    pub fn preferred_leaders_due(&self) -> Vec<u32> {
        let Some(placement) = &self.placement else {
            return Vec::new();
        };
        placement
            .groups
            .iter()
            .enumerate()
            .filter(|(_, group)| {
                group.members.first().is_some_and(|&preferred| {
                    preferred != group.leader
                        && group.in_sync.contains(&preferred)
                        && self.nodes.get(&preferred).is_some_and(|node| !node.fenced)
                })
            })
            .map(|(number, _)| number as u32)
            .collect()
    }

    /// Give each of `groups` that is in
    /// [`ClusterMetadata::preferred_leaders_due`] back to its preferred
    /// leader at the next leader epoch (its in-sync set unchanged: the
    /// preferred leader is in it, so it holds every acknowledged record);
    /// the groups moved.
    pub fn elect_preferred_leaders(&mut self, groups: &[u32]) -> Vec<u32> {
        let mut due = self.preferred_leaders_due();
        due.retain(|group| groups.contains(group));
        if let Some(placement) = self.placement.as_mut() {
            for &number in &due {
                let group = &mut placement.groups[number as usize];
                group.leader = group.members[0];
                group.leader_epoch += 1;
            }
        }
        due
    }

    /// The live topic with id `id`; `None` for a deleted topic's id, an id
    /// never issued, or a reserved one.
    pub fn topic_by_id(&self, id: TopicId) -> Option<&Arc<TopicMeta>> {
        let name = self.ids.get(&id)?;
        self.topics.get(name)
    }

    /// Metadata of `topics` (name, id, partitions) with the built-in
    /// defaults, for unit tests of what reads it.
    #[cfg(test)]
    pub fn with_topics(topics: &[(&str, TopicId, u32)]) -> ClusterMetadata {
        let statics = StaticSettings::from_config(&crate::config::Config::default());
        let mut metadata = ClusterMetadata::empty("test".to_owned(), &statics);
        for &(name, id, partitions) in topics {
            let topic = TopicMeta {
                name: name.to_owned(),
                id,
                partitions,
                overrides: BTreeMap::new(),
                config: metadata.topic_defaults.clone(),
                partition_ids: Vec::new(),
            };
            metadata.topics.insert(name.to_owned(), Arc::new(topic));
        }
        metadata.reindex();
        metadata
    }

    pub(super) fn reindex(&mut self) {
        self.ids = self
            .topics
            .values()
            .map(|topic| (topic.id, topic.name.clone()))
            .collect();
        assert_eq!(
            self.ids.len(),
            self.topics.len(),
            "topic ids are unique among live topics"
        );
    }

    /// Replace the dynamic broker settings and recompute the topic
    /// defaults and every topic's configuration from them. Refused (with
    /// the topic and its issue, nothing changed) if a topic's overrides no
    /// longer hold against the new defaults.
    pub fn set_broker_overrides(
        &mut self,
        broker: BrokerOverrides,
        statics: &StaticSettings,
        limits: TopicLimits,
    ) -> Result<(), (String, ConfigIssue)> {
        let defaults = topic_defaults(statics, &broker);
        let mut configs = Vec::with_capacity(self.topics.len());
        for topic in self.topics.values() {
            let config = TopicConfig::with_overrides(&defaults, &topic.overrides, limits)
                .map_err(|issue| (topic.name.clone(), issue))?;
            configs.push(config);
        }
        for (topic, config) in self.topics.values_mut().zip(configs) {
            Arc::make_mut(topic).config = config;
        }
        self.broker = broker;
        self.topic_defaults = defaults;
        Ok(())
    }
}

/// Every topic config's default under `broker`'s dynamic settings.
fn topic_defaults(statics: &StaticSettings, broker: &BrokerOverrides) -> TopicConfig {
    BrokerView {
        statics,
        overrides: broker,
    }
    .topic_defaults()
}

fn decode(
    text: &str,
    path: &Path,
    statics: &StaticSettings,
    limits: TopicLimits,
) -> Result<ClusterMetadata, MetadataError> {
    let persisted: Persisted =
        toml::from_str(text).map_err(|source| MetadataError::Unparsable {
            path: path.to_owned(),
            source,
        })?;
    ClusterMetadata::from_stored(persisted, statics, limits).map_err(|reason| {
        MetadataError::Corrupt {
            path: path.to_owned(),
            reason,
        }
    })
}

impl ClusterMetadata {
    /// The stored form: what `metadata.toml` and the controller's
    /// snapshots hold (the effective topic configs are derived).
    pub fn to_stored(&self) -> Persisted {
        Persisted {
            version: METADATA_VERSION,
            cluster_id: self.cluster_id.clone(),
            topics: self
                .topics
                .values()
                .map(|topic| PersistedTopic {
                    name: topic.name.clone(),
                    id: format_id(topic.id),
                    partitions: topic.partitions,
                    configs: topic.overrides.clone(),
                    partition_ids: topic.partition_ids.clone(),
                })
                .collect(),
            broker_configs: PersistedBroker {
                cluster: self.broker.cluster.clone(),
                node: self.broker.node.clone(),
            },
            group_configs: self.group_configs.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|(id, node)| (id.to_string(), node.clone()))
                .collect(),
            placement: self.placement.clone(),
            next_producer_id: self.next_producer_id,
            next_partition_id: self.next_partition_id,
            scram_credentials: self
                .scram_credentials
                .iter()
                .map(|(user, credentials)| {
                    let by_name = credentials
                        .iter()
                        .map(|(mechanism, credential)| {
                            (mechanism.name().to_owned(), credential.clone())
                        })
                        .collect();
                    (user.clone(), by_name)
                })
                .collect(),
            acls: self.acls.iter().cloned().collect(),
            client_quotas: self
                .client_quotas
                .iter()
                .map(|(entity, values)| PersistedQuota {
                    user: entity.user.clone(),
                    client_id: entity.client_id.clone(),
                    values: values.clone(),
                })
                .collect(),
        }
    }

    /// Metadata from its stored form under this node's settings, or why the
    /// stored form is damaged (an unknown version, a bad or repeated id). A
    /// topic config no longer valid under the settings is logged and the
    /// topic runs with the defaults.
    pub fn from_stored(
        persisted: Persisted,
        statics: &StaticSettings,
        limits: TopicLimits,
    ) -> Result<ClusterMetadata, String> {
        if persisted.version != METADATA_VERSION {
            return Err(format!("version {} is not supported", persisted.version));
        }
        let broker = BrokerOverrides {
            cluster: persisted.broker_configs.cluster,
            node: persisted.broker_configs.node,
        };
        let defaults = topic_defaults(statics, &broker);
        let mut topics = BTreeMap::new();
        let mut seen_ids = BTreeMap::new();
        for topic in persisted.topics {
            let id = parse_id(&topic.id)
                .filter(|id| !id.is_reserved())
                .ok_or_else(|| format!("topic {} has a bad id", topic.name))?;
            if let Some(other) = seen_ids.insert(id, topic.name.clone()) {
                return Err(format!(
                    "topics {other} and {} have the same id",
                    topic.name
                ));
            }
            let config = TopicConfig::with_overrides(&defaults, &topic.configs, limits).unwrap_or_else(|issue| {
                tracing::warn!(topic = %topic.name, %issue, "stored topic config no longer valid; using broker defaults for the topic");
                defaults.clone()
            });
            let meta = TopicMeta {
                name: topic.name.clone(),
                id,
                partitions: topic.partitions,
                overrides: topic.configs,
                config,
                partition_ids: topic.partition_ids,
            };
            topics.insert(topic.name, Arc::new(meta));
        }
        let mut nodes = BTreeMap::new();
        for (id, node) in persisted.nodes {
            let id: u64 = id
                .parse()
                .map_err(|_| format!("node id {id:?} is not a number"))?;
            nodes.insert(id, node);
        }
        let mut scram_credentials = BTreeMap::new();
        for (user, stored) in persisted.scram_credentials {
            let mut credentials = BTreeMap::new();
            for (name, credential) in stored {
                let mechanism = ScramMechanism::from_name(&name).ok_or_else(|| {
                    format!("user {user:?} has a credential for unknown mechanism {name:?}")
                })?;
                credentials.insert(mechanism, credential);
            }
            scram_credentials.insert(user, credentials);
        }
        let mut metadata = ClusterMetadata {
            cluster_id: persisted.cluster_id,
            topics,
            ids: BTreeMap::new(),
            broker,
            topic_defaults: defaults,
            group_configs: persisted.group_configs,
            nodes,
            placement: persisted.placement.map(|mut placement| {
                placement.fill_groups();
                placement
            }),
            next_producer_id: persisted.next_producer_id,
            next_partition_id: persisted.next_partition_id,
            scram_credentials,
            acls: Arc::new(AclSet::new(persisted.acls)),
            client_quotas: persisted
                .client_quotas
                .into_iter()
                .map(|stored| {
                    let entity = QuotaEntity {
                        user: stored.user,
                        client_id: stored.client_id,
                    };
                    (entity, stored.values)
                })
                .collect(),
        };
        metadata.reindex();
        Ok(metadata)
    }
}

fn persist(path: &Path, metadata: &ClusterMetadata) -> Result<(), MetadataError> {
    let persisted = metadata.to_stored();
    let text = toml::to_string(&persisted).map_err(|source| MetadataError::Encode {
        path: path.to_owned(),
        source,
    })?;
    write_atomic(path, text.as_bytes()).map_err(|source| MetadataError::Write {
        path: path.to_owned(),
        source,
    })
}

pub fn format_id(id: TopicId) -> String {
    id.0.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn parse_id(text: &str) -> Option<TopicId> {
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (index, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(TopicId(id))
}

/// 16 random bytes from the kernel, as a version-4 UUID.
pub fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: getrandom writes at most the requested length into our buffer.
        let written = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if written > 0 {
            filled += written as usize;
        }
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    bytes
}

/// A cluster id as Kafka prints them: a UUID in URL-safe base64, no padding.
fn new_cluster_id() -> String {
    base64_url(&random_bytes())
}

/// 16 bytes in URL-safe base64 without padding (22 characters), Kafka's
/// `Uuid.toString`.
pub fn base64_url(bytes: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut width = 0;
    let mut out = String::new();
    for &byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        width += 8;
        while width >= 6 {
            width -= 6;
            out.push(ALPHABET[((bits >> width) & 0x3f) as usize] as char);
        }
    }
    if width > 0 {
        out.push(ALPHABET[((bits << (6 - width)) & 0x3f) as usize] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::broker_config::BrokerScope;
    use crate::config::Config;

    fn store(dir: &Path) -> MetadataStore {
        MetadataStore::open(
            dir,
            StaticSettings::from_config(&Config::default()),
            TopicLimits {
                batch_max_bytes: 1 << 20,
                max_delay_ms: 30 * 24 * 3_600_000,
            },
        )
        .unwrap()
    }

    fn create(metadata: &MetadataStore, name: &str, overrides: &[(&str, &str)]) -> TopicId {
        let id = metadata.new_topic_id();
        let command = MetadataCommand::CreateTopic {
            name: name.to_owned(),
            id,
            partitions: 3,
            overrides: overrides
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        };
        metadata.submit_blocking(command).unwrap().unwrap();
        id
    }

    #[test]
    fn topics_and_the_cluster_id_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = store(dir.path());
        create(&metadata, "orders", &[("retention.ms", "1000")]);
        let before = metadata.snapshot();
        let after = store(dir.path()).snapshot();
        assert_eq!(before, after);
        assert_eq!(after.topic("orders").unwrap().config.retention_ms, 1000);
        assert_eq!(after.cluster_id.len(), 22);
    }

    #[test]
    fn commands_submitted_from_another_thread_are_durable_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = store(dir.path());
        let command = MetadataCommand::SetGroupConfigs {
            group: "g\n\"quoted\" \u{1F600}".to_owned(),
            overrides: BTreeMap::from([(
                "consumer.session.timeout.ms".to_owned(),
                "50000".to_owned(),
            )]),
        };
        let outcome = compio::runtime::Runtime::new()
            .unwrap()
            .block_on(metadata.submit(command));
        assert!(matches!(outcome, Ok(Ok(Applied::Configs))));
        let reopened = store(dir.path()).snapshot();
        assert_eq!(reopened.group_configs, metadata.snapshot().group_configs);
        assert_eq!(reopened.group_configs.len(), 1);
    }

    /// Nodes 1, 2 and 3, live, one shard each, three groups of three.
    fn three_live_nodes(statics: &StaticSettings) -> ClusterMetadata {
        let mut metadata = ClusterMetadata::empty("c".to_owned(), statics);
        for id in [1, 2, 3] {
            let node = NodeInfo {
                host: "127.0.0.1".to_owned(),
                port: 9000 + id as u16,
                shards: 1,
                fenced: false,
                incarnation: 0,
                listeners: BTreeMap::new(),
            };
            metadata.nodes.insert(id, node);
        }
        metadata.placement = Some(Placement::new(vec![1, 2, 3], 1, 3));
        metadata
    }

    #[test]
    fn leadership_returns_to_a_live_in_sync_preferred_leader_at_the_next_epoch() {
        let statics = StaticSettings::from_config(&Config::default());
        let mut metadata = three_live_nodes(&statics);
        metadata.nodes.get_mut(&1).unwrap().fenced = true;
        metadata.elect_leaders_without(1);
        assert_eq!(
            metadata.preferred_leaders_due(),
            Vec::<u32>::new(),
            "node 1 is down"
        );
        // Back, but not yet in sync: stays with the new leader.
        metadata.nodes.get_mut(&1).unwrap().fenced = false;
        assert_eq!(metadata.preferred_leaders_due(), Vec::<u32>::new());
        metadata.placement.as_mut().unwrap().groups[0].in_sync = vec![2, 3, 1];
        assert_eq!(metadata.preferred_leaders_due(), vec![0]);
        assert_eq!(
            metadata.elect_preferred_leaders(&[1, 2]),
            Vec::<u32>::new(),
            "not asked"
        );
        assert_eq!(metadata.elect_preferred_leaders(&[0]), vec![0]);
        let group = &metadata.placement.as_ref().unwrap().groups[0];
        assert_eq!((group.leader, group.leader_epoch), (1, 2));
        assert_eq!(group.in_sync, [2, 3, 1]);
        assert!(
            metadata.elect_preferred_leaders(&[0]).is_empty(),
            "nothing left to move"
        );
    }

    #[test]
    fn a_restarted_node_leaves_the_in_sync_sets_and_leads_only_where_it_is_alone_at_a_new_epoch() {
        let statics = StaticSettings::from_config(&Config::default());
        let mut metadata = three_live_nodes(&statics);
        {
            let placement = metadata.placement.as_mut().unwrap();
            placement.groups[0].in_sync = vec![1, 2, 3];
            placement.groups[1].in_sync = vec![2, 1];
            placement.groups[2].leader = 1;
            placement.groups[2].in_sync = vec![1];
        }
        metadata.restart_node(1);
        let groups = &metadata.placement.as_ref().unwrap().groups;
        assert_eq!((groups[0].leader, groups[0].leader_epoch), (2, 1));
        assert_eq!(groups[0].in_sync, [2, 3]);
        assert_eq!((groups[1].leader, groups[1].leader_epoch), (2, 0));
        assert_eq!(groups[1].in_sync, [2]);
        assert_eq!(
            (
                groups[2].leader,
                groups[2].leader_epoch,
                groups[2].in_sync.clone()
            ),
            (1, 1, vec![1]),
            "alone in sync: it keeps leading, at the next epoch"
        );
    }

    #[test]
    fn a_node_back_without_its_data_leads_nothing_and_is_refused_where_it_was_alone_in_sync() {
        let statics = StaticSettings::from_config(&Config::default());
        let mut metadata = three_live_nodes(&statics);
        {
            let placement = metadata.placement.as_mut().unwrap();
            placement.groups[0].in_sync = vec![1, 2, 3];
            placement.groups[1].in_sync = vec![2, 1];
        }
        let mut alone = metadata.clone();
        {
            let group = &mut alone.placement.as_mut().unwrap().groups[2];
            group.leader = 1;
            group.in_sync = vec![1];
        }
        let unchanged = alone.clone();
        let refused = alone.forget_lost_copies(1).unwrap_err();
        assert!(refused.contains("shard groups [2]"), "{refused}");
        assert_eq!(alone, unchanged, "a refusal changes nothing");
        metadata.forget_lost_copies(1).unwrap();
        let groups = &metadata.placement.as_ref().unwrap().groups;
        assert_eq!((groups[0].leader, groups[0].leader_epoch), (2, 1));
        assert_eq!(groups[0].in_sync, [2, 3]);
        assert_eq!(groups[1].in_sync, [2]);
        assert!(groups.iter().all(|group| !group.in_sync.contains(&1)));
        // Given up explicitly: another live member leads, alone in sync.
        let mut broker = BrokerOverrides::default();
        broker.cluster.insert(
            "unclean.leader.election.enable".to_owned(),
            "true".to_owned(),
        );
        let limits = TopicLimits {
            batch_max_bytes: 1 << 20,
            max_delay_ms: 30 * 24 * 3_600_000,
        };
        alone
            .set_broker_overrides(broker, &statics, limits)
            .unwrap();
        alone.forget_lost_copies(1).unwrap();
        let group = &alone.placement.as_ref().unwrap().groups[2];
        assert_eq!(
            (group.leader, group.in_sync.clone()),
            (3, vec![3]),
            "its first live member"
        );
    }

    #[test]
    fn a_fenced_node_cannot_join_an_in_sync_set_but_may_stay_in_one() {
        let statics = StaticSettings::from_config(&Config::default());
        let context = || ExecuteContext {
            statics: &statics,
            limits: TopicLimits {
                batch_max_bytes: 1 << 20,
                max_delay_ms: 30 * 24 * 3_600_000,
            },
        };
        let mut metadata = three_live_nodes(&statics);
        metadata.placement.as_mut().unwrap().groups[0].in_sync = vec![1, 2];
        metadata.nodes.get_mut(&3).unwrap().fenced = true;
        let set = |in_sync: Vec<u64>| MetadataCommand::SetInSync {
            group: 0,
            leader_epoch: 0,
            in_sync,
        };
        let refused = metadata.execute(set(vec![1, 2, 3]), context());
        assert!(
            matches!(&refused, Err(Refusal::InvalidRequest(why)) if why.contains("fenced")),
            "{refused:?}"
        );
        metadata.nodes.get_mut(&3).unwrap().fenced = false;
        metadata.execute(set(vec![1, 2, 3]), context()).unwrap();
        // A leader's shrink that still names a member fenced meanwhile is
        // taken: it only ever removes.
        metadata.nodes.get_mut(&3).unwrap().fenced = true;
        metadata.execute(set(vec![1, 3]), context()).unwrap();
        let group = &metadata.placement.as_ref().unwrap().groups[0];
        assert_eq!(group.in_sync, [1, 3]);
    }

    #[test]
    fn fencing_a_leader_elects_the_next_live_in_sync_member_at_the_next_epoch() {
        let statics = StaticSettings::from_config(&Config::default());
        let limits = TopicLimits {
            batch_max_bytes: 1 << 20,
            max_delay_ms: 30 * 24 * 3_600_000,
        };
        let mut metadata = three_live_nodes(&statics);
        let groups = |metadata: &ClusterMetadata| metadata.placement.clone().unwrap().groups;
        {
            let placement = metadata.placement.as_mut().unwrap();
            placement.groups[0].in_sync = vec![1, 2, 3];
            placement.groups[1].in_sync = vec![2, 3];
            // Group 2 (led by 3): alone in sync.
            placement.groups[2].in_sync = vec![3];
        }
        metadata.nodes.get_mut(&1).unwrap().fenced = true;
        metadata.elect_leaders_without(1);
        let after = groups(&metadata);
        assert_eq!((after[0].leader, after[0].leader_epoch), (2, 1));
        assert_eq!(after[0].in_sync, [2, 3]);
        assert_eq!((after[1].leader, after[1].leader_epoch), (2, 0));
        assert_eq!(after[2].in_sync, [3]);

        // Node 3 led group 2 alone: nothing clean to elect, so it stays
        // offline with its leader, which holds what was acknowledged.
        metadata.nodes.get_mut(&3).unwrap().fenced = true;
        metadata.elect_leaders_without(3);
        let after = groups(&metadata);
        assert_eq!((after[2].leader, after[2].leader_epoch), (3, 0));
        assert_eq!(after[2].in_sync, [3]);
        assert_eq!(after[0].in_sync, [2], "a fenced follower leaves the set");

        // Unless unclean election is the cluster default.
        let mut broker = BrokerOverrides::default();
        broker.cluster.insert(
            "unclean.leader.election.enable".to_owned(),
            "true".to_owned(),
        );
        metadata
            .set_broker_overrides(broker, &statics, limits)
            .unwrap();
        metadata.placement.as_mut().unwrap().groups[2].in_sync = vec![3];
        metadata.elect_leaders_without(3);
        let after = groups(&metadata);
        assert_eq!(
            (after[2].leader, after[2].leader_epoch),
            (2, 1),
            "the first live member"
        );
        assert_eq!(after[2].in_sync, [2]);
    }

    #[test]
    fn a_placement_stored_before_the_group_records_gets_the_records_a_new_one_has() {
        let stored = r#"{"nodes":[1,2,3],"shards":2,"replication_factor":3}"#;
        let mut old: Placement = serde_json::from_str(stored).unwrap();
        assert!(old.groups.is_empty());
        old.fill_groups();
        let new = Placement::new(vec![1, 2, 3], 2, 3);
        // Group j·S + i is led by node j at epoch 0: in a new cluster every
        // member is in sync, in one stored before the records (before any
        // copy existed) the leader alone.
        for (number, (group, stored)) in new.groups.iter().zip(&old.groups).enumerate() {
            let leader = [1, 2, 3][number / 2];
            assert_eq!((group.leader, group.leader_epoch), (leader, 0));
            assert_eq!(group.members[0], leader);
            assert_eq!(group.members.len(), 3);
            assert_eq!(group.in_sync, group.members);
            assert_eq!(stored.members, group.members);
            assert_eq!(stored.in_sync, [leader]);
        }
    }

    #[test]
    fn placement_spreads_partitions_over_nodes_and_keeps_the_single_node_shard() {
        let placement = Placement::new(vec![1, 2, 5], 2, 2);
        for topic in ["orders", "a", "payments-eu"] {
            let leaders: Vec<u64> = (0..6).map(|index| placement.leader(topic, index)).collect();
            let mut distinct = leaders.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct, [1, 2, 5], "{topic}: {leaders:?}");
            for index in 0..6 {
                let replicas = placement.replicas(topic, index);
                assert_eq!(replicas.len(), 2);
                assert_eq!(
                    replicas[0],
                    placement.leader(topic, index),
                    "the leader first"
                );
                assert_ne!(replicas[0], replicas[1]);
            }
            // Consecutive partitions fill a node's shards, then move on.
            for index in 0..6 {
                let slot = crate::shard::mailbox::partition_slot(topic, index);
                let shard = crate::shard::mailbox::owner(topic, index, 2);
                assert_eq!(
                    u64::from(shard.0),
                    slot % 2,
                    "the shard a single node would use"
                );
            }
        }
    }

    #[test]
    fn generated_ids_are_random_v4_uuids_kafka_would_draw() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let id = TopicId::generate();
            assert!(!id.is_reserved());
            assert_eq!(id.to_uuid().get_version_num(), 4);
            let printed = id.to_string();
            assert_eq!(printed.len(), 22);
            assert!(!printed.starts_with('-'), "{printed}");
            assert!(seen.insert(id), "ids do not repeat");
        }
    }

    #[test]
    fn ids_print_as_kafka_prints_them() {
        assert_eq!(TopicId::ZERO.to_string(), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(TopicId::ONE.to_string(), "AAAAAAAAAAAAAAAAAAAAAQ");
        assert_eq!(TopicId([0xff; 16]).to_string(), "_____________________w");
    }

    #[test]
    fn a_stored_id_that_is_reserved_or_taken_twice_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let id = format_id(TopicId::generate());
        for ids in [
            [id.clone(), id.clone()],
            [id.clone(), format_id(TopicId::ZERO)],
        ] {
            let text = format!(
                "version = 1\ncluster_id = \"c\"\n\n[[topics]]\nname = \"a\"\nid = \"{}\"\npartitions = 1\n\n[[topics]]\nname = \"b\"\nid = \"{}\"\npartitions = 1\n",
                ids[0], ids[1]
            );
            std::fs::write(dir.path().join(METADATA_FILE), text).unwrap();
            let defaults =
                crate::broker::broker_config::StaticSettings::from_config(&Config::default());
            let limits = TopicLimits {
                batch_max_bytes: 1 << 20,
                max_delay_ms: 30 * 24 * 3_600_000,
            };
            let opened = MetadataStore::open(dir.path(), defaults, limits);
            assert!(
                matches!(opened, Err(MetadataError::Corrupt { .. })),
                "{ids:?}"
            );
        }
    }

    #[test]
    fn a_topic_created_again_gets_a_new_id_and_the_old_one_resolves_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = store(dir.path());
        let first = create(&metadata, "again", &[]);
        assert_eq!(
            metadata.snapshot().topic_by_id(first).unwrap().name,
            "again"
        );
        let delete = MetadataCommand::DeleteTopic {
            name: "again".to_owned(),
            id: first,
        };
        metadata.submit_blocking(delete).unwrap().unwrap();
        let second = create(&metadata, "again", &[]);
        assert_ne!(first, second);
        let snapshot = metadata.snapshot();
        assert!(snapshot.topic_by_id(first).is_none());
        assert_eq!(snapshot.topic_by_id(second).unwrap().name, "again");
    }

    #[test]
    fn dynamic_broker_settings_survive_a_reopen_and_set_topic_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = store(dir.path());
        create(&metadata, "orders", &[]);
        for (scope, key, value) in [
            (BrokerScope::Cluster, "log.retention.ms", "5000"),
            (
                BrokerScope::Node,
                "sasl.kerberos.min.time.before.relogin",
                "58000",
            ),
        ] {
            let command = MetadataCommand::SetBrokerConfigs {
                scope,
                overrides: BTreeMap::from([(key.to_owned(), value.to_owned())]),
            };
            metadata.submit_blocking(command).unwrap().unwrap();
        }
        let after = store(dir.path()).snapshot();
        assert_eq!(after.broker.cluster["log.retention.ms"], "5000");
        assert_eq!(
            after.broker.node["sasl.kerberos.min.time.before.relogin"],
            "58000"
        );
        assert_eq!(after.topic_defaults.retention_ms, 5000);
        assert_eq!(after.topic("orders").unwrap().config.retention_ms, 5000);
    }

    #[test]
    fn a_refused_command_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = store(dir.path());
        create(&metadata, "orders", &[]);
        let before = std::fs::read(dir.path().join(METADATA_FILE)).unwrap();
        let command = MetadataCommand::CreateTopic {
            name: "orders".to_owned(),
            id: metadata.new_topic_id(),
            partitions: 1,
            overrides: BTreeMap::new(),
        };
        let outcome = metadata.submit_blocking(command).unwrap();
        assert_eq!(
            outcome.unwrap_err(),
            Refusal::TopicExists("orders".to_owned())
        );
        assert_eq!(
            std::fs::read(dir.path().join(METADATA_FILE)).unwrap(),
            before
        );
    }
}
