//! The broker: cluster metadata plus the topic operations that span shards.
//!
//! A topic change is made in the metadata first (durably, as a
//! [`metadata_command::MetadataCommand`]), then carried out
//! on the shards that own the affected partitions. Creating or deleting a
//! partition is idempotent on its owner, and every shard reconciles its
//! partitions with the metadata at startup, so a change interrupted by a
//! crash completes at the next start.

pub mod bootstrap_user;
pub mod broker_config;
pub mod config_value;
pub mod delay;
pub mod group;
pub mod internal_log;
pub mod metadata;
pub mod metadata_command;
pub mod peer;
pub mod producer_ids;
pub mod quota;
pub mod replica_log_starts;
pub mod replication;
pub mod retry;
pub mod topic_config;
pub mod txn;

use crate::log_throttle::{LogThrottle, monotonic_ms};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::broker::metadata::NodeInfo;
use crate::config::{Config, SecurityProtocol};
use crate::ids::ShardId;
use crate::shard::{ShardContext, ShardGone, Shards};
use crate::storage::partition::validate_topic_name;
use crate::storage::{NewPartition, PartitionError, ShardStore};
use broker_config::{BrokerScope, StaticSettings};
use metadata::{MetadataError, MetadataStore, TopicId, TopicMeta};
use metadata_command::{Applied, MetadataCommand, Refusal};
use topic_config::{ConfigIssue, TopicLimits};

/// Shared by every shard (Send + Sync): configuration, metadata, and how
/// clients reach this broker.
/// Failed topic auto-creations, logged at most 20 times per 10 s: one
/// request can name thousands of topics.
static AUTO_CREATE_FAILURES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);

pub struct Broker {
    pub config: Config,
    pub metadata: Arc<MetadataStore>,
    /// Host and port put in Metadata responses (the main listener's).
    pub advertised: (String, u16),
    /// The listeners besides the main one (`security.listeners`), in
    /// config order: listener `i + 1` of [`Broker::listener`].
    pub extra_listeners: Vec<ListenerEndpoint>,
    /// What the TLS listeners (SSL, SASL_SSL) accept with; `None` when no
    /// listener uses TLS.
    pub tls: Option<Arc<crate::security::tls::TlsServer>>,
    /// Every client quota's account, shared by the shards.
    pub quota_accounts: quota::QuotaAccounts,
    /// How this node's broker reaches the others' (set when it joins a
    /// cluster; never on a single node).
    pub peers: std::sync::OnceLock<Arc<dyn peer::PeerCaller>>,
}

/// A Kafka listener as its clients see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerEndpoint {
    pub name: String,
    pub protocol: SecurityProtocol,
    /// What its clients are told to connect to.
    pub advertised: (String, u16),
}

/// The main listener's index (`kafka.listen`).
pub const MAIN_LISTENER: usize = 0;

/// How a request names a topic: by name, or by id (KIP-516).
#[derive(Clone, Copy, Debug)]
pub enum TopicRef<'a> {
    Name(&'a str),
    Id(TopicId),
}

#[derive(Debug, Error)]
pub enum TopicError {
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{0} is an internal topic: only the broker changes it")]
    Internal(String),
    #[error("topic {0} already exists")]
    AlreadyExists(String),
    #[error("topic {0} does not exist")]
    Unknown(String),
    #[error("no topic has id {0}")]
    UnknownId(TopicId),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidConfig(ConfigIssue),
    /// A replication factor past the copies the cluster keeps (1 on a
    /// single node; `cluster.replication_factor` in a cluster, where every
    /// topic gets that many, at least what was asked).
    #[error("{}", replication_factor_refusal(*asked, *copies))]
    InvalidReplicationFactor { asked: i16, copies: i16 },
    /// A request refused whole (INVALID_REQUEST).
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Metadata(#[from] MetadataError),
    #[error("partition storage failed: {source}")]
    Storage {
        #[source]
        source: PartitionError,
    },
    /// The shard owning a partition stopped (the broker is shutting down).
    #[error("{0}")]
    ShardGone(#[from] ShardGone),
}

fn replication_factor_refusal(asked: i16, copies: i16) -> String {
    if copies == 1 {
        format!("replication factor {asked} is not supported by a single broker; use 1 or -1")
    } else {
        format!(
            "replication factor {asked} is not possible: this cluster keeps {copies} copies of \
             every partition (cluster.replication_factor); ask for 1 to {copies} (each topic \
             gets {copies}) or -1"
        )
    }
}

/// Why a change of dynamic broker settings was not made.
#[derive(Debug, Error)]
pub enum BrokerConfigError {
    /// A value or name the broker refuses (Kafka: INVALID_REQUEST).
    #[error("{0}")]
    Refused(String),
    /// Persisting or applying the change failed.
    #[error("{0}")]
    Topic(TopicError),
}

/// Why a change of a group's configs was not made.
#[derive(Debug, Error)]
pub enum GroupConfigError {
    /// A bad name or value (Kafka: INVALID_CONFIG).
    #[error("{0}")]
    Invalid(String),
    /// A request Kafka refuses whole: an empty group name, or too many
    /// configured groups (INVALID_REQUEST).
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Metadata(#[from] MetadataError),
}

impl From<Refusal> for TopicError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TopicExists(name) => TopicError::AlreadyExists(name),
            Refusal::UnknownTopic(name) => TopicError::Unknown(name),
            Refusal::UnknownTopicId(id) => TopicError::UnknownId(id),
            Refusal::InvalidPartitions(message) => TopicError::InvalidPartitions(message),
            Refusal::InvalidConfig(issue) => TopicError::InvalidConfig(issue),
            Refusal::InvalidRequest(message)
            | Refusal::UnknownCredential(message)
            | Refusal::UnacceptableCredential(message) => TopicError::InvalidRequest(message),
        }
    }
}

impl From<PartitionError> for TopicError {
    fn from(source: PartitionError) -> Self {
        TopicError::Storage { source }
    }
}

impl Broker {
    pub fn new(config: Config, advertised: (String, u16)) -> Result<Broker, MetadataError> {
        let limits = TopicLimits {
            batch_max_bytes: config.storage.batch_ceiling_bytes(),
            max_delay_ms: config.delay.max_delay_ms,
        };
        let statics = StaticSettings::from_config(&config);
        let quota_accounts = quota::QuotaAccounts::new(
            Duration::from_millis(config.kafka.quota_window_ms),
            config.kafka.quota_window_samples as usize,
        );
        if config.cluster.is_some() {
            // The controller holds the metadata; its first leader creates
            // the internal topics (`cluster/controller/runtime.rs`).
            return Ok(Broker {
                metadata: Arc::new(MetadataStore::replicated(statics, limits)),
                config,
                advertised,
                extra_listeners: Vec::new(),
                tls: None,
                quota_accounts,
                peers: std::sync::OnceLock::new(),
            });
        }
        let metadata = MetadataStore::open(&config.data_dir, statics, limits)?;
        for (name, partitions, overrides, setting) in internal_topics(&config) {
            ensure_internal_topic(&metadata, name, partitions, overrides, setting)?;
        }
        Ok(Broker {
            config,
            metadata: Arc::new(metadata),
            advertised,
            extra_listeners: Vec::new(),
            tls: None,
            quota_accounts,
            peers: std::sync::OnceLock::new(),
        })
    }

    /// Listener `index`: 0 is the main one (`kafka.listen`), then
    /// `security.listeners` in order.
    pub fn listener(&self, index: usize) -> ListenerEndpoint {
        match index.checked_sub(1) {
            None => ListenerEndpoint {
                name: self.config.security.security_protocol.name().to_owned(),
                protocol: self.config.security.security_protocol,
                advertised: self.advertised.clone(),
            },
            Some(extra) => self.extra_listeners[extra].clone(),
        }
    }

    /// Where a client of listener `listener` reaches `node`: its main
    /// address, or its address on the listener of the same name (`None`
    /// when it registered none).
    fn node_address(&self, listener: usize, node: &NodeInfo) -> Option<(String, u16)> {
        if listener == MAIN_LISTENER {
            return Some((node.host.clone(), node.port));
        }
        let name = &self.extra_listeners.get(listener - 1)?.name;
        let address = node.listeners.get(name)?;
        let (host, port) = address.rsplit_once(':')?;
        Some((host.to_owned(), port.parse().ok()?))
    }

    /// Create a topic and its partitions. With `validate_only`, only check.
    pub async fn create_topic(
        &self,
        shards: &Shards,
        name: &str,
        partitions: u32,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<TopicMeta>, TopicError> {
        validate_topic_name(name).map_err(|reason| TopicError::InvalidName {
            name: name.to_owned(),
            reason,
        })?;
        self.check_partition_count(partitions)?;
        let command = MetadataCommand::CreateTopic {
            name: name.to_owned(),
            id: self.metadata.new_topic_id(),
            partitions,
            overrides,
        };
        if validate_only {
            return Ok(changed_topic(self.metadata.dry_run(command)?));
        }
        let topic = changed_topic(self.metadata.submit(command).await??);
        tracing::info!(topic = name, partitions, id = %topic.id, "created topic");
        self.create_partitions_on_owners(shards, &topic, 0..partitions)
            .await?;
        Ok(topic)
    }

    /// Create `name` with the default partition count if auto-creation is on
    /// and it does not exist; returns the topic if it exists afterwards. A
    /// dead-letter topic (`G.dlq`, `broker/retry.rs`) gets at least a
    /// partition per commit log, so that every retry partition has one in
    /// its own log.
    pub async fn ensure_topic(&self, context: &ShardContext, name: &str) -> Option<Arc<TopicMeta>> {
        let mut partitions = self.config.kafka.default_partitions;
        if name.ends_with(retry::DLQ_SUFFIX) {
            partitions = partitions.max(context.placement_count());
        }
        let shards = &context.shards;
        if let Some(topic) = self.metadata.snapshot().topic(name) {
            return Some(Arc::clone(topic));
        }
        if !self.config.kafka.auto_create_topics || validate_topic_name(name).is_err() {
            return None;
        }
        match self
            .create_topic(shards, name, partitions, BTreeMap::new(), false)
            .await
        {
            Ok(topic) => Some(topic),
            Err(TopicError::AlreadyExists(_)) => self.metadata.snapshot().topic(name).cloned(),
            Err(error) => {
                if let Some(failed) = AUTO_CREATE_FAILURES.record(monotonic_ms()) {
                    tracing::warn!(topic = name, %error, failed, "auto-creating topic failed (`failed` counts failures since the last such line)");
                }
                None
            }
        }
    }

    /// Delete the topic `target` names and its partitions; returns what was
    /// deleted (its id included).
    pub async fn delete_topic(
        &self,
        shards: &Shards,
        target: TopicRef<'_>,
    ) -> Result<Arc<TopicMeta>, TopicError> {
        let unknown = || match target {
            TopicRef::Name(name) => TopicError::Unknown(name.to_owned()),
            TopicRef::Id(id) => TopicError::UnknownId(id),
        };
        let (name, id) = {
            let snapshot = self.metadata.snapshot();
            let topic = match target {
                TopicRef::Name(name) => snapshot.topic(name),
                TopicRef::Id(id) => snapshot.topic_by_id(id),
            };
            let topic = topic.ok_or_else(unknown)?;
            (topic.name.clone(), topic.id)
        };
        let name = name.as_str();
        refuse_internal(name)?;
        // The command names the topic by name and id: one deleted and
        // created again in between is not the topic asked for.
        let command = MetadataCommand::DeleteTopic {
            name: name.to_owned(),
            id,
        };
        let removed = match self.metadata.submit(command).await? {
            Ok(applied) => changed_topic(applied),
            Err(Refusal::UnknownTopic(_) | Refusal::UnknownTopicId(_)) => return Err(unknown()),
            Err(refusal) => return Err(refusal.into()),
        };
        tracing::info!(
            topic = name,
            id = %removed.id,
            partitions = removed.partitions,
            "deleted topic"
        );
        for index in 0..removed.partitions {
            let topic = name.to_owned();
            shards
                .call(shards.owner(name, index), move |context| async move {
                    delete_partition_here(&context, &topic, index)
                })
                .await??;
        }
        // Groups forget their committed offsets for it (Kafka does), so a
        // re-created topic of the same name is not read from old offsets.
        for shard in shards.ids() {
            let topic = name.to_owned();
            let forgotten = shards
                .call(shard, move |_| async move {
                    match group::coordinator::Coordinator::local() {
                        Some(coordinator) => coordinator.forget_topics(|gone| gone == topic).await,
                        None => 0,
                    }
                })
                .await?;
            if forgotten > 0 {
                tracing::info!(
                    topic = name,
                    forgotten,
                    "forgot the deleted topic's committed offsets"
                );
            }
        }
        Ok(removed)
    }

    /// Grow `name` to `total` partitions.
    pub async fn add_partitions(
        &self,
        shards: &Shards,
        name: &str,
        total: u32,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        refuse_internal(name)?;
        self.check_partition_count(total)?;
        let current = self
            .metadata
            .snapshot()
            .topic(name)
            .cloned()
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        if total <= current.partitions {
            return Err(TopicError::InvalidPartitions(format!(
                "topic {name} has {} partitions; the new count must be larger",
                current.partitions
            )));
        }
        let command = MetadataCommand::CreatePartitions {
            name: name.to_owned(),
            id: current.id,
            total,
        };
        if validate_only {
            return self
                .metadata
                .dry_run(command)
                .map(drop)
                .map_err(by_name(name));
        }
        let (old, grown) = match self
            .metadata
            .submit(command)
            .await?
            .map_err(by_name(name))?
        {
            Applied::Grown { from, topic } => (from, topic),
            other => unreachable!("CreatePartitions applied as {other:?}"),
        };
        tracing::info!(topic = name, from = old, to = total, "added partitions");
        self.create_partitions_on_owners(shards, &grown, old..total)
            .await
    }

    /// Replace `name`'s config overrides by `overrides` and apply them.
    pub async fn set_topic_overrides(
        &self,
        shards: &Shards,
        name: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        refuse_internal(name)?;
        let id = self
            .metadata
            .snapshot()
            .topic(name)
            .map(|topic| topic.id)
            .ok_or_else(|| TopicError::Unknown(name.to_owned()))?;
        let command = MetadataCommand::SetTopicConfigs {
            name: name.to_owned(),
            id,
            overrides,
        };
        if validate_only {
            return self
                .metadata
                .dry_run(command)
                .map(drop)
                .map_err(by_name(name));
        }
        let topic = changed_topic(
            self.metadata
                .submit(command)
                .await?
                .map_err(by_name(name))?,
        );
        tracing::info!(topic = name, overrides = ?topic.overrides, "changed topic config");
        apply_partition_configs(shards, &topic).await
    }

    /// Replace the dynamic broker settings of `scope` (the cluster default
    /// or this node) by `overrides`, persist them, and apply the topic
    /// defaults they change to every topic at once. Each value must pass
    /// [`broker_config::checked_dynamic`]; a refusal is
    /// [`BrokerConfigError`]. With `validate_only`, only check.
    pub async fn set_broker_overrides(
        &self,
        shards: &Shards,
        scope: BrokerScope,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), BrokerConfigError> {
        if scope == BrokerScope::Node && self.metadata.is_replicated() {
            // The replicated metadata holds one set of node overrides, which
            // would apply to every node.
            return Err(BrokerConfigError::Refused(
                "per-node dynamic settings are not supported in a cluster yet (issue 15): set the \
                 cluster default (the empty resource name) instead"
                    .to_owned(),
            ));
        }
        let limits = self.metadata.limits();
        let mut checked = BTreeMap::new();
        for (name, raw) in overrides {
            let value = broker_config::checked_dynamic(&name, &raw, limits)
                .map_err(BrokerConfigError::Refused)?;
            checked.insert(name, value);
        }
        let command = MetadataCommand::SetBrokerConfigs {
            scope,
            overrides: checked.clone(),
        };
        let refused = |refusal: Refusal| BrokerConfigError::Refused(refusal.to_string());
        if validate_only {
            return self.metadata.dry_run(command).map(drop).map_err(refused);
        }
        self.metadata
            .submit(command)
            .await
            .map_err(|error| BrokerConfigError::Topic(TopicError::Metadata(error)))?
            .map_err(refused)?;
        tracing::info!(?scope, overrides = ?checked, "changed dynamic broker settings");
        for topic in self.metadata.snapshot().topics.values() {
            apply_partition_configs(shards, topic)
                .await
                .map_err(BrokerConfigError::Topic)?;
        }
        Ok(())
    }

    /// The brokers clients are told of, (node id, host, port) in id order:
    /// a cluster's registered nodes that are not fenced, or this node
    /// alone.
    pub fn brokers(&self, listener: usize) -> Vec<(i32, String, u16)> {
        let snapshot = self.metadata.snapshot();
        if snapshot.nodes.is_empty() {
            let (host, port) = self.listener(listener).advertised;
            return vec![(self.config.kafka.node_id, host, port)];
        }
        snapshot
            .nodes
            .iter()
            .filter(|(_, node)| !node.fenced)
            .filter_map(|(id, node)| {
                let (host, port) = self.node_address(listener, node)?;
                Some((i32::try_from(*id).ok()?, host, port))
            })
            .collect()
    }

    /// The node leading partition `index` of `topic`, as clients are told:
    /// its placement's leader in a cluster (-1 while that node is fenced or
    /// not registered: Cluster I has no other replica to lead), this node
    /// otherwise. An internal topic's partition is led by the node that
    /// coordinates its keys (every node keeps a copy of the internal topics
    /// for itself, but only the coordinator's is the one that counts, so
    /// every node names the same leader).
    pub fn partition_leader(&self, topic: &str, index: u32) -> i32 {
        let snapshot = self.metadata.snapshot();
        let Some(leader) = snapshot.leader_of(topic, index) else {
            return self.config.kafka.node_id;
        };
        match (i32::try_from(leader), snapshot.nodes.get(&leader)) {
            (Ok(id), _) if id == self.config.kafka.node_id => id,
            (Ok(id), Some(node)) if !node.fenced => id,
            _ => -1,
        }
    }

    /// Whether partition `index` of `topic` lives on this node: always for
    /// a single node; in a cluster, where the placement leads it, except
    /// the internal topics, which every node keeps for itself until their
    /// coordinators are placed too (issue 15).
    pub fn is_placed_here(
        &self,
        cluster: &metadata::ClusterMetadata,
        topic: &str,
        index: u32,
    ) -> bool {
        is_internal_topic(topic)
            || cluster
                .leader_of(topic, index)
                .is_none_or(|leader| i64::from(self.config.kafka.node_id) == leader as i64)
    }

    /// The replicas of partition `index` of `topic` as clients are told:
    /// (replicas, in-sync replicas, offline replicas). In a cluster they
    /// are its shard group's record: the members, the preferred leader
    /// first, the in-sync set, and the fenced members as offline. Fencing
    /// takes a node out of every in-sync set but where it was the only
    /// member: an offline partition lists its last in-sync replica, the
    /// node it waits for, as Kafka does. This node alone otherwise.
    pub fn partition_replicas(&self, topic: &str, index: u32) -> (Vec<i32>, Vec<i32>, Vec<i32>) {
        let own = self.config.kafka.node_id;
        let snapshot = self.metadata.snapshot();
        let Some(placement) = &snapshot.placement else {
            return (vec![own], vec![own], Vec::new());
        };
        let fenced = |id: &&u64| snapshot.nodes.get(id).is_none_or(|node| node.fenced);
        let ids = |nodes: &mut dyn Iterator<Item = &u64>| -> Vec<i32> {
            nodes.map(|&id| i32::try_from(id).unwrap_or(-1)).collect()
        };
        let group = placement.group(topic, index);
        (
            ids(&mut group.members.iter()),
            ids(&mut group.in_sync.iter()),
            ids(&mut group.members.iter().filter(fenced)),
        )
    }

    /// The leader epoch of partition `index` of `topic`: its shard group's
    /// in a cluster (KIP-101; raised at every change of leader), the
    /// single node's constant otherwise.
    pub fn partition_leader_epoch(&self, topic: &str, index: u32) -> i32 {
        let snapshot = self.metadata.snapshot();
        match &snapshot.placement {
            Some(placement) => placement.group(topic, index).leader_epoch,
            None => crate::storage::LEADER_EPOCH,
        }
    }

    /// The node coordinating the keys of partition `index` of an internal
    /// topic (`__consumer_offsets` for groups, `__transaction_state` for
    /// transactional ids): its placement's leader in a cluster, this node
    /// otherwise; (node id, host, port). Cluster I keeps each node's copy of
    /// the internal topics to itself, so a group's state lives on its
    /// coordinator only.
    pub fn coordinator_of(&self, topic: &str, index: u32) -> (i32, String, u16) {
        self.coordinator_on(topic, index, MAIN_LISTENER)
    }

    /// [`Broker::coordinator_of`] with the addresses of listener
    /// `listener` (FindCoordinator answers with the client's listener).
    pub fn coordinator_on(&self, topic: &str, index: u32, listener: usize) -> (i32, String, u16) {
        let own = || {
            let (host, port) = self.listener(listener).advertised;
            (self.config.kafka.node_id, host, port)
        };
        let snapshot = self.metadata.snapshot();
        let Some(leader) = snapshot.leader_of(topic, index) else {
            return own();
        };
        match (i32::try_from(leader), snapshot.nodes.get(&leader)) {
            (Ok(id), _) if id == self.config.kafka.node_id => own(),
            (Ok(id), Some(node)) if !node.fenced => match self.node_address(listener, node) {
                Some((host, port)) => (id, host, port),
                None => (-1, String::new(), 0),
            },
            // Fenced or not registered yet: no one to send the client to.
            _ => (-1, String::new(), 0),
        }
    }

    /// Whether this node coordinates the keys of partition `index` of the
    /// internal `topic` ([`Broker::coordinator_of`]).
    pub fn coordinates(&self, topic: &str, index: u32) -> bool {
        self.coordinator_of(topic, index).0 == self.config.kafka.node_id
    }

    /// The node clients must send requests for partition `index` of
    /// `topic` to, when it is not this one (a cluster places partitions on
    /// nodes): Kafka's NOT_LEADER_OR_FOLLOWER, with this leader where the
    /// response has the field (KIP-951).
    pub fn leader_elsewhere(&self, topic: &str, index: u32) -> Option<i32> {
        let leader = self.partition_leader(topic, index);
        (leader != self.config.kafka.node_id).then_some(leader)
    }

    /// The controller clients are told of: this node. Every node takes
    /// admin requests and forwards them to the controller leader, as KRaft
    /// brokers answer with a live broker rather than the quorum leader
    /// (KIP-590); naming the Raft leader left clients that cache it (a
    /// long-lived librdkafka admin client) stuck on a dead node.
    pub fn controller_id(&self) -> i32 {
        self.config.kafka.node_id
    }

    /// What consumer group `group` runs with: its configs over the broker's
    /// defaults.
    pub fn group_settings(&self, group: &str) -> group::config::GroupSettings {
        let cluster = self.metadata.snapshot();
        group::config::GroupSettings::resolve(&self.config.groups, cluster.group_configs.get(group))
    }

    /// Replace group `group`'s configs by `overrides` (`group/config.rs`);
    /// the group's coordinator reads them on the members' next heartbeat.
    pub async fn set_group_overrides(
        &self,
        group: &str,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<(), GroupConfigError> {
        if group.is_empty() {
            return Err(GroupConfigError::Refused(
                "Group name must not be empty".to_owned(),
            ));
        }
        let checked = group::config::checked(&self.config.groups, overrides)
            .map_err(GroupConfigError::Invalid)?;
        let command = MetadataCommand::SetGroupConfigs {
            group: group.to_owned(),
            overrides: checked.clone(),
        };
        let refused = |refusal: Refusal| GroupConfigError::Refused(refusal.to_string());
        if validate_only {
            return self.metadata.dry_run(command).map(drop).map_err(refused);
        }
        self.metadata.submit(command).await?.map_err(refused)?;
        tracing::info!(group, configs = ?checked, "changed group configs");
        Ok(())
    }

    fn check_partition_count(&self, partitions: u32) -> Result<(), TopicError> {
        let max = self.config.kafka.partitions_per_topic_max;
        if partitions == 0 || partitions > max {
            return Err(TopicError::InvalidPartitions(format!(
                "partition count {partitions} must be between 1 and {max} (kafka.partitions_per_topic_max)"
            )));
        }
        Ok(())
    }

    async fn create_partitions_on_owners(
        &self,
        shards: &Shards,
        topic: &Arc<TopicMeta>,
        indexes: std::ops::Range<u32>,
    ) -> Result<(), TopicError> {
        // In a cluster the other nodes create theirs when they see the
        // change (`reconcile_on_change`).
        // Each owner shard gets its partitions in one call and makes their
        // files off its thread; the shards work at the same time.
        let cluster = self.metadata.snapshot();
        let mut by_owner: BTreeMap<ShardId, Vec<u32>> = BTreeMap::new();
        for index in indexes.filter(|&index| self.is_placed_here(&cluster, &topic.name, index)) {
            by_owner
                .entry(shards.owner(&topic.name, index))
                .or_default()
                .push(index);
        }
        let calls = by_owner.into_iter().map(|(owner, indexes)| {
            let topic = Arc::clone(topic);
            shards.call(owner, move |context| async move {
                create_partitions_here(&context, &topic, indexes).await
            })
        });
        for created in futures_util::future::join_all(calls).await {
            created??;
        }
        Ok(())
    }
}

/// The topic an executed topic command created, deleted or changed.
fn changed_topic(applied: Applied) -> Arc<TopicMeta> {
    match applied {
        Applied::Topic(topic) | Applied::Grown { topic, .. } => topic,
        Applied::Configs => unreachable!("a topic command applies to a topic"),
    }
}

/// A refusal of a command made for a topic a request named by name: the
/// topic was deleted (and maybe created again) since, so the name is
/// unknown.
fn by_name(name: &str) -> impl Fn(Refusal) -> TopicError + '_ {
    move |refusal| match refusal {
        Refusal::UnknownTopicId(_) => TopicError::Unknown(name.to_owned()),
        other => other.into(),
    }
}

/// Push `topic`'s partition config to the shards owning its partitions.
async fn apply_partition_configs(shards: &Shards, topic: &TopicMeta) -> Result<(), TopicError> {
    for index in 0..topic.partitions {
        let partition_config = topic.storage_config();
        let topic_name = topic.name.clone();
        shards
            .call(
                shards.owner(&topic.name, index),
                move |context| async move {
                    let store = context.store_for(&topic_name, index);
                    match store.partition_id(&topic_name, index) {
                        Some(id) => store
                            .set_partition_config(id, partition_config)
                            .map_err(TopicError::from),
                        None => Ok(()),
                    }
                },
            )
            .await??;
    }
    Ok(())
}

/// Create partition `index` of `topic` on this shard if it is missing.
pub fn create_partition_here(
    context: &ShardContext,
    topic: &TopicMeta,
    index: u32,
) -> Result<(), TopicError> {
    let config = topic.storage_config();
    let id = topic.partition_id(index);
    match context
        .store_for(&topic.name, index)
        .create_partition_as(&topic.name, index, id, config)
    {
        Ok(_) | Err(PartitionError::AlreadyExists { .. }) => Ok(()),
        Err(source) => Err(TopicError::Storage { source }),
    }
}

/// Create the partitions `indexes` of `topic` this shard owns and lacks,
/// their files made off the shard thread
/// ([`crate::storage::ShardStore::create_partitions`]).
pub async fn create_partitions_here(
    context: &ShardContext,
    topic: &TopicMeta,
    indexes: Vec<u32>,
) -> Result<(), TopicError> {
    // On a cluster node partitions spread over several shard-group stores.
    let mut by_store: Vec<(Rc<ShardStore>, Vec<NewPartition>)> = Vec::new();
    for index in indexes {
        let store = context.store_for(&topic.name, index);
        let wanted = NewPartition {
            topic: topic.name.clone(),
            index,
            id: topic.partition_id(index),
            config: topic.storage_config(),
        };
        match by_store
            .iter_mut()
            .find(|(held, _)| Rc::ptr_eq(held, &store))
        {
            Some((_, batch)) => batch.push(wanted),
            None => by_store.push((store, vec![wanted])),
        }
    }
    for (store, batch) in by_store {
        for created in store.create_partitions(batch).await {
            match created {
                Ok(_) | Err(PartitionError::AlreadyExists { .. }) => {}
                Err(source) => return Err(TopicError::Storage { source }),
            }
        }
    }
    Ok(())
}

fn delete_partition_here(
    context: &ShardContext,
    topic: &str,
    index: u32,
) -> Result<(), TopicError> {
    let store = context.store_for(topic, index);
    let Some(id) = store.partition_id(topic, index) else {
        return Ok(());
    };
    store.delete_partition(id).map_err(TopicError::from)
}

/// On a cluster node, reconcile this shard whenever the metadata changes
/// (a topic created, grown or deleted through another node): checked every
/// `RECONCILE_INTERVAL`, a pointer comparison when nothing changed.
pub async fn reconcile_on_change(context: Rc<ShardContext>, broker: Arc<Broker>) {
    let mut seen = broker.metadata.snapshot();
    loop {
        compio::time::sleep(RECONCILE_INTERVAL).await;
        let current = broker.metadata.snapshot();
        if Arc::ptr_eq(&current, &seen) {
            continue;
        }
        seen = current;
        if let Err(error) = reconcile_shard(&context, &broker) {
            tracing::warn!(shard = %context.id, %error, "cannot match this shard's partitions to the metadata; trying again at the next change");
        }
    }
}

/// How often a cluster node's shards look for a metadata change.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(50);

/// Make this shard's partitions match the metadata: create what it owns but
/// lacks, delete what no topic claims, and apply every topic's config.
pub fn reconcile_shard(context: &ShardContext, broker: &Broker) -> Result<(), TopicError> {
    if broker.metadata.is_replicated() {
        // Each shard-group log this shard keeps holds its group's
        // partitions, whichever node leads the group.
        return replication::reconcile_groups(context, broker).map_err(TopicError::from);
    }
    let cluster = broker.metadata.snapshot();
    let placed_here = |topic: &str, index: u32| {
        context.shards.owner(topic, index) == context.id
            && broker.is_placed_here(&cluster, topic, index)
    };
    for topic in cluster.topics.values() {
        for index in (0..topic.partitions).filter(|&index| placed_here(&topic.name, index)) {
            create_partition_here(context, topic, index)?;
            if let Some(id) = context.store().partition_id(&topic.name, index) {
                context
                    .store()
                    .set_partition_config(id, topic.storage_config())?;
            }
        }
    }
    for (topic, index, id) in context.store().partitions() {
        let claimed = cluster
            .topic(&topic)
            .is_some_and(|meta| index < meta.partitions)
            && placed_here(&topic, index);
        if !claimed {
            tracing::info!(shard = %context.id, %topic, index, "deleting partition no topic claims");
            context.store().delete_partition(id)?;
        }
    }
    Ok(())
}

/// The internal topics a broker with `config` needs: (name, partitions,
/// overrides, the setting that chose the count, empty for a fixed one).
/// Their records are compacted by the service that writes them
/// (copy-forward snapshots, or a newest record that states everything), so
/// time and size retention are off.
pub fn internal_topics(
    config: &Config,
) -> Vec<(&'static str, u32, BTreeMap<String, String>, &'static str)> {
    let overrides = BTreeMap::from([
        (topic_config::RETENTION_MS.to_owned(), "-1".to_owned()),
        (topic_config::RETENTION_BYTES.to_owned(), "-1".to_owned()),
    ]);
    vec![
        (
            group::OFFSETS_TOPIC,
            config.groups.offsets_topic_partitions,
            overrides.clone(),
            "groups.offsets_topic_partitions",
        ),
        (producer_ids::PRODUCER_IDS_TOPIC, 1, overrides.clone(), ""),
        (
            txn::TXN_TOPIC,
            config.transactions.state_topic_partitions,
            overrides,
            "transactions.state_topic_partitions",
        ),
    ]
}

/// Create the internal topic `name` in the metadata if it is missing (its
/// partitions are created by each shard's reconcile). The partition count
/// is fixed once the topic exists: a key's partition must not move.
fn ensure_internal_topic(
    metadata: &MetadataStore,
    name: &'static str,
    partitions: u32,
    overrides: BTreeMap<String, String>,
    setting: &str,
) -> Result<(), MetadataError> {
    if let Some(topic) = metadata.snapshot().topic(name) {
        if topic.partitions != partitions {
            tracing::warn!(
                existing = topic.partitions,
                configured = partitions,
                "{setting} differs from the existing {name}; keeping {} (a key's partition must not move)",
                topic.partitions
            );
        }
        return Ok(());
    }
    let command = MetadataCommand::CreateTopic {
        name: name.to_owned(),
        id: metadata.new_topic_id(),
        partitions,
        overrides,
    };
    match metadata.submit_blocking(command)? {
        Ok(_) => {}
        Err(Refusal::InvalidConfig(source)) => {
            return Err(MetadataError::InvalidBuiltIn {
                topic: name,
                source,
            });
        }
        Err(refusal) => unreachable!("{name} was missing a moment ago: {refusal}"),
    }
    tracing::info!(partitions, "created {name}");
    Ok(())
}

/// Topics only the broker writes: clients may read them, never produce to,
/// delete or change them.
pub fn is_internal_topic(name: &str) -> bool {
    name == group::OFFSETS_TOPIC
        || name == producer_ids::PRODUCER_IDS_TOPIC
        || name == txn::TXN_TOPIC
}

fn refuse_internal(name: &str) -> Result<(), TopicError> {
    if is_internal_topic(name) {
        return Err(TopicError::Internal(name.to_owned()));
    }
    Ok(())
}
