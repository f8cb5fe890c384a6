//! Metadata commands: every change of the cluster metadata as a value, and
//! the one function that carries it out ([`ClusterMetadata::execute`]).
//!
//! A command is checked against the metadata it is executed on (a topic
//! that exists, an id that still names the topic, configs that hold under
//! the current defaults) and either refused with a [`Refusal`] (which maps
//! to Kafka's error code) or applied. The metadata store executes commands
//! one at a time on its writer thread, on a copy that replaces the
//! published snapshot only once persisted (`metadata.rs`); a validate-only
//! request executes the command on a throwaway copy. The cluster's
//! controller will execute the same commands in log order on every node
//! (ARCHITECTURE.md, "Cluster"), which is why a command carries every
//! choice made for it (a new topic's id) instead of making it when
//! executed.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::broker_config::{BrokerScope, StaticSettings};
use super::group::config::{
    CONFIGURED_GROUP_NAMES_BYTES_MAX, CONFIGURED_GROUPS_MAX, GROUP_NAME_BYTES_MAX,
};
use super::metadata::{ClusterMetadata, TopicId, TopicMeta};
use super::quota::{QUOTA_ENTITIES_MAX, QuotaEntity};
use super::topic_config::{ConfigIssue, TopicConfig, TopicLimits};
use crate::security::acl::{ACLS_MAX, AclBinding};
use crate::security::scram::{ScramCredential, ScramMechanism};

/// One change of the cluster metadata. Config maps are the overrides as
/// they will be stored: the caller has checked their names and normalised
/// their values where that needs no metadata (broker settings, group
/// configs); topic configs are checked here, against the defaults they
/// will combine with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetadataCommand {
    /// Create topic `name` with id `id` (drawn by the caller; refused if a
    /// live topic has it).
    CreateTopic {
        name: String,
        id: TopicId,
        partitions: u32,
        overrides: BTreeMap<String, String>,
    },
    /// Delete topic `name` if it is still the topic with id `id`.
    DeleteTopic { name: String, id: TopicId },
    /// Grow topic `name` (id `id`) to `total` partitions.
    CreatePartitions {
        name: String,
        id: TopicId,
        total: u32,
    },
    /// Replace topic `name`'s (id `id`) config overrides.
    SetTopicConfigs {
        name: String,
        id: TopicId,
        overrides: BTreeMap<String, String>,
    },
    /// Replace the dynamic broker settings of `scope` (KIP-226).
    SetBrokerConfigs {
        scope: BrokerScope,
        overrides: BTreeMap<String, String>,
    },
    /// Replace group `group`'s configs (none: forget the group's entry).
    SetGroupConfigs {
        group: String,
        overrides: BTreeMap<String, String>,
    },
    /// Set shard group `group`'s in-sync set (Kafka's AlterPartition, per
    /// shard group), as its leader at `leader_epoch` saw its followers:
    /// refused when the epoch is not the group's (a stale leader), or the
    /// set leaves out the leader or names a non-member.
    SetInSync {
        group: u32,
        leader_epoch: i32,
        in_sync: Vec<u64>,
    },
    /// Set user `user`'s `mechanism` credential, replacing any it had
    /// (AlterUserScramCredentials' upsertion, KIP-554). The caller checked
    /// the iteration count and drew the salt.
    SetScramCredential {
        user: String,
        mechanism: ScramMechanism,
        credential: ScramCredential,
    },
    /// Delete user `user`'s `mechanism` credential; refused when it has none.
    DeleteScramCredential {
        user: String,
        mechanism: ScramMechanism,
    },
    /// Add ACL bindings (CreateAcls, KIP-140; checked by the caller with
    /// `AclBinding::from_wire`); one already there is left as it is.
    /// Refused whole when the cluster would keep more than `ACLS_MAX`.
    CreateAcls { bindings: Vec<AclBinding> },
    /// Remove ACL bindings (DeleteAcls: those its filters matched when the
    /// request was served); one no longer there is skipped.
    DeleteAcls { bindings: Vec<AclBinding> },
    /// Set and remove client quotas of `entity` (AlterClientQuotas,
    /// KIP-546; keys and values checked by the caller); an entity left
    /// without quotas is forgotten. Refused when a new entity would pass
    /// `QUOTA_ENTITIES_MAX`.
    AlterClientQuotas {
        entity: QuotaEntity,
        set: BTreeMap<String, u64>,
        remove: Vec<String>,
    },
}

/// The longest SCRAM user name kept, in bytes.
pub const SCRAM_USER_BYTES_MAX: usize = 256;
/// The most users with SCRAM credentials a cluster keeps (every snapshot
/// of the metadata holds them all).
pub const SCRAM_USERS_MAX: usize = 10_000;

/// The most partitions any topic may have, whatever a node's
/// `kafka.partitions_per_topic_max`: a bound every node applies the same
/// way to a command from the controller's log.
pub const PARTITIONS_PER_TOPIC_HARD_MAX: u32 = 100_000;

/// What an executed command changed.
#[derive(Clone, Debug)]
pub enum Applied {
    /// A topic created, deleted or reconfigured: as it is (or was) after.
    Topic(Arc<TopicMeta>),
    /// Partitions `from..topic.partitions` were added.
    Grown { from: u32, topic: Arc<TopicMeta> },
    /// Broker or group configs changed.
    Configs,
}

/// Why a command was not executed, with what Kafka answers for it.
#[derive(Clone, Debug, Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// TOPIC_ALREADY_EXISTS.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// UNKNOWN_TOPIC_OR_PARTITION.
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    /// UNKNOWN_TOPIC_ID.
    #[error("no topic has id {0}")]
    UnknownTopicId(TopicId),
    /// INVALID_PARTITIONS.
    #[error("{0}")]
    InvalidPartitions(String),
    /// INVALID_CONFIG.
    #[error("{0}")]
    InvalidConfig(ConfigIssue),
    /// INVALID_REQUEST (a broker setting or group config refused whole).
    #[error("{0}")]
    InvalidRequest(String),
    /// RESOURCE_NOT_FOUND: a SCRAM credential to delete does not exist.
    #[error("{0}")]
    UnknownCredential(String),
    /// UNACCEPTABLE_CREDENTIAL: a user name or credential the broker keeps
    /// no such thing for.
    #[error("{0}")]
    UnacceptableCredential(String),
}

/// The node-local settings a command is executed with: the static broker
/// levels and the storage limits (topic configs combine with them).
#[derive(Clone, Copy)]
pub struct ExecuteContext<'a> {
    pub statics: &'a StaticSettings,
    pub limits: TopicLimits,
}

impl ClusterMetadata {
    /// Ids for `count` new partitions of a topic from index `first_index`:
    /// in a cluster, the next range of the controller's counter (as one
    /// [`TopicMeta::partition_ids`] range); none on a single node, whose
    /// shards number their own partitions.
    fn allocate_partition_ids(
        &mut self,
        first_index: u32,
        count: u32,
    ) -> Result<Vec<(u32, u32)>, Refusal> {
        if self.placement.is_none() {
            return Ok(Vec::new());
        }
        let first = self.next_partition_id;
        self.next_partition_id = first.checked_add(count).ok_or_else(|| {
            Refusal::InvalidPartitions(format!(
                "the cluster has used up its {} partition ids; no more partitions can be created",
                u32::MAX - crate::ids::PartitionId::CLUSTER_FIRST
            ))
        })?;
        Ok(vec![(first_index, first)])
    }

    /// Execute `command` on this metadata: refused (nothing changed) or
    /// applied. Deterministic given the metadata and the context.
    pub fn execute(
        &mut self,
        command: MetadataCommand,
        context: ExecuteContext<'_>,
    ) -> Result<Applied, Refusal> {
        match command {
            MetadataCommand::CreateTopic {
                name,
                id,
                partitions,
                overrides,
            } => {
                if let Err(reason) = crate::storage::partition::validate_topic_name(&name) {
                    return Err(Refusal::InvalidRequest(format!(
                        "invalid topic name {name:?}: {reason}"
                    )));
                }
                if !(1..=PARTITIONS_PER_TOPIC_HARD_MAX).contains(&partitions) {
                    return Err(Refusal::InvalidPartitions(format!(
                        "partition count {partitions} must be between 1 and \
                         {PARTITIONS_PER_TOPIC_HARD_MAX}"
                    )));
                }
                if self.topics.contains_key(&name) {
                    return Err(Refusal::TopicExists(name));
                }
                if id.is_reserved() || self.topic_by_id(id).is_some() {
                    // A 122-bit collision: the caller draws another id.
                    return Err(Refusal::InvalidRequest(format!(
                        "topic id {id} is taken; try again"
                    )));
                }
                let config =
                    TopicConfig::with_overrides(&self.topic_defaults, &overrides, context.limits)
                        .map_err(Refusal::InvalidConfig)?;
                let partition_ids = self.allocate_partition_ids(0, partitions)?;
                let topic = Arc::new(TopicMeta {
                    name: name.clone(),
                    id,
                    partitions,
                    overrides,
                    config,
                    partition_ids,
                });
                self.topics.insert(name, Arc::clone(&topic));
                self.reindex();
                Ok(Applied::Topic(topic))
            }
            MetadataCommand::DeleteTopic { name, id } => {
                self.topic_named(&name, id)?;
                let removed = self
                    .topics
                    .remove(&name)
                    .expect("topic_named found the topic");
                self.reindex();
                Ok(Applied::Topic(removed))
            }
            MetadataCommand::CreatePartitions { name, id, total } => {
                let current = self.topic_named(&name, id)?;
                let from = current.partitions;
                if total > PARTITIONS_PER_TOPIC_HARD_MAX {
                    return Err(Refusal::InvalidPartitions(format!(
                        "partition count {total} must be at most {PARTITIONS_PER_TOPIC_HARD_MAX}"
                    )));
                }
                if total <= from {
                    return Err(Refusal::InvalidPartitions(format!(
                        "topic {name} has {from} partitions; the new count must be larger"
                    )));
                }
                let added = self.allocate_partition_ids(from, total - from)?;
                let topic = self.topics.get_mut(&name).expect("topic_named found it");
                let grown = Arc::make_mut(topic);
                grown.partitions = total;
                grown.partition_ids.extend(added);
                Ok(Applied::Grown {
                    from,
                    topic: Arc::clone(topic),
                })
            }
            MetadataCommand::SetTopicConfigs {
                name,
                id,
                overrides,
            } => {
                self.topic_named(&name, id)?;
                let config =
                    TopicConfig::with_overrides(&self.topic_defaults, &overrides, context.limits)
                        .map_err(Refusal::InvalidConfig)?;
                let topic = self.topics.get_mut(&name).expect("topic_named found it");
                let changed = Arc::make_mut(topic);
                changed.overrides = overrides;
                changed.config = config;
                Ok(Applied::Topic(Arc::clone(topic)))
            }
            MetadataCommand::SetBrokerConfigs { scope, overrides } => {
                let mut broker = self.broker.clone();
                *broker.of_mut(scope) = overrides;
                self.set_broker_overrides(broker, context.statics, context.limits)
                    .map_err(|(topic, issue)| {
                        Refusal::InvalidRequest(format!(
                            "topic {topic} would no longer be valid: {issue}"
                        ))
                    })?;
                Ok(Applied::Configs)
            }
            MetadataCommand::SetGroupConfigs { group, overrides } => {
                if overrides.is_empty() {
                    self.group_configs.remove(&group);
                    return Ok(Applied::Configs);
                }
                if group.len() > GROUP_NAME_BYTES_MAX {
                    return Err(Refusal::InvalidRequest(format!(
                        "a group id of {} bytes is longer than a group's records hold \
                         ({GROUP_NAME_BYTES_MAX} bytes)",
                        group.len()
                    )));
                }
                let names_bytes: usize = self.group_configs.keys().map(String::len).sum();
                if !self.group_configs.contains_key(&group)
                    && (self.group_configs.len() >= CONFIGURED_GROUPS_MAX
                        || names_bytes + group.len() > CONFIGURED_GROUP_NAMES_BYTES_MAX)
                {
                    return Err(Refusal::InvalidRequest(format!(
                        "{} groups ({names_bytes} bytes of names) have configs already, the most \
                         Sluice keeps is {CONFIGURED_GROUPS_MAX} groups or \
                         {CONFIGURED_GROUP_NAMES_BYTES_MAX} bytes of names; delete the configs of \
                         groups no longer used",
                        self.group_configs.len()
                    )));
                }
                self.group_configs.insert(group, overrides);
                Ok(Applied::Configs)
            }
            MetadataCommand::SetScramCredential {
                user,
                mechanism,
                credential,
            } => {
                if user.is_empty() || user.len() > SCRAM_USER_BYTES_MAX {
                    return Err(Refusal::UnacceptableCredential(format!(
                        "a user name must be 1 to {SCRAM_USER_BYTES_MAX} bytes, not {}",
                        user.len()
                    )));
                }
                let iterations = i32::try_from(credential.iterations).unwrap_or(i32::MAX);
                if !ScramCredential::iterations_valid(iterations) {
                    return Err(Refusal::UnacceptableCredential(format!(
                        "{} iterations is outside {}..={}",
                        credential.iterations,
                        crate::security::scram::ITERATIONS_MIN,
                        crate::security::scram::ITERATIONS_MAX
                    )));
                }
                if !self.scram_credentials.contains_key(&user)
                    && self.scram_credentials.len() >= SCRAM_USERS_MAX
                {
                    return Err(Refusal::UnacceptableCredential(format!(
                        "{SCRAM_USERS_MAX} users have credentials already, the most Sluice keeps"
                    )));
                }
                self.scram_credentials
                    .entry(user)
                    .or_default()
                    .insert(mechanism, credential);
                Ok(Applied::Configs)
            }
            MetadataCommand::DeleteScramCredential { user, mechanism } => {
                let credentials = self.scram_credentials.get_mut(&user);
                let Some(credentials) =
                    credentials.filter(|credentials| credentials.contains_key(&mechanism))
                else {
                    return Err(Refusal::UnknownCredential(format!(
                        "user {user:?} has no {} credential",
                        mechanism.name()
                    )));
                };
                credentials.remove(&mechanism);
                if credentials.is_empty() {
                    self.scram_credentials.remove(&user);
                }
                Ok(Applied::Configs)
            }
            MetadataCommand::CreateAcls { bindings } => {
                let new = bindings
                    .iter()
                    .filter(|binding| !self.acls.contains(binding))
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                if self.acls.len() + new > ACLS_MAX {
                    return Err(Refusal::InvalidRequest(format!(
                        "{} ACLs exist and {new} more would pass {ACLS_MAX}, the most Sluice \
                         keeps; use prefixed or wildcard bindings, or delete unused ones",
                        self.acls.len()
                    )));
                }
                let acls = Arc::make_mut(&mut self.acls);
                for binding in bindings {
                    acls.insert(binding);
                }
                Ok(Applied::Configs)
            }
            MetadataCommand::AlterClientQuotas {
                entity,
                set,
                remove,
            } => {
                if !self.client_quotas.contains_key(&entity)
                    && !set.is_empty()
                    && self.client_quotas.len() >= QUOTA_ENTITIES_MAX
                {
                    return Err(Refusal::InvalidRequest(format!(
                        "{QUOTA_ENTITIES_MAX} entities have quotas already, the most Sluice keeps; \
                         use default entities, or remove unused quotas"
                    )));
                }
                let values = self.client_quotas.entry(entity.clone()).or_default();
                for key in remove {
                    values.remove(&key);
                }
                values.extend(set);
                if values.is_empty() {
                    self.client_quotas.remove(&entity);
                }
                Ok(Applied::Configs)
            }
            MetadataCommand::DeleteAcls { bindings } => {
                let acls = Arc::make_mut(&mut self.acls);
                for binding in &bindings {
                    acls.remove(binding);
                }
                Ok(Applied::Configs)
            }
            MetadataCommand::SetInSync {
                group,
                leader_epoch,
                in_sync,
            } => {
                let fenced = |node: &u64| self.nodes.get(node).is_some_and(|info| info.fenced);
                let joining_fenced: Vec<u64> = self
                    .placement
                    .as_ref()
                    .and_then(|placement| placement.groups.get(group as usize))
                    .map(|record| {
                        in_sync
                            .iter()
                            .copied()
                            .filter(|node| !record.in_sync.contains(node) && fenced(node))
                            .collect()
                    })
                    .unwrap_or_default();
                // A leader's view of a follower can predate its fencing
                // (KIP-903): a fenced node rejoins only after it registered
                // again and caught up anew.
                if !joining_fenced.is_empty() {
                    return Err(Refusal::InvalidRequest(format!(
                        "nodes {joining_fenced:?} are fenced: they cannot join shard group {group}'s \
                         in-sync set"
                    )));
                }
                let record = self
                    .placement
                    .as_mut()
                    .and_then(|placement| placement.groups.get_mut(group as usize))
                    .ok_or_else(|| {
                        Refusal::InvalidRequest(format!("there is no shard group {group}"))
                    })?;
                if record.leader_epoch != leader_epoch {
                    return Err(Refusal::InvalidRequest(format!(
                        "shard group {group} is at leader epoch {}, not {leader_epoch}",
                        record.leader_epoch
                    )));
                }
                let members = in_sync.iter().all(|node| record.members.contains(node));
                if !in_sync.contains(&record.leader) || !members {
                    return Err(Refusal::InvalidRequest(format!(
                        "an in-sync set of shard group {group} holds its leader {} and members \
                         of {:?} only, not {in_sync:?}",
                        record.leader, record.members
                    )));
                }
                // Kept in member order, so equal sets compare equal.
                record.in_sync = record
                    .members
                    .iter()
                    .copied()
                    .filter(|node| in_sync.contains(node))
                    .collect();
                Ok(Applied::Configs)
            }
        }
    }

    /// Topic `name`, if it is still the topic with id `id`: one deleted and
    /// created again in between is not the topic the command was made for.
    fn topic_named(&self, name: &str, id: TopicId) -> Result<&Arc<TopicMeta>, Refusal> {
        match self.topics.get(name) {
            Some(topic) if topic.id == id => Ok(topic),
            Some(_) => Err(Refusal::UnknownTopicId(id)),
            None => Err(Refusal::UnknownTopic(name.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn context(statics: &StaticSettings) -> ExecuteContext<'_> {
        ExecuteContext {
            statics,
            limits: TopicLimits {
                batch_max_bytes: 1 << 20,
                max_delay_ms: 30 * 24 * 3_600_000,
            },
        }
    }

    fn create(name: &str, id: TopicId, overrides: &[(&str, &str)]) -> MetadataCommand {
        MetadataCommand::CreateTopic {
            name: name.to_owned(),
            id,
            partitions: 2,
            overrides: overrides
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_cluster_numbers_every_partition_once_and_a_single_node_leaves_it_to_its_shards() {
        use crate::ids::PartitionId;
        let statics = StaticSettings::from_config(&Config::default());
        let context = context(&statics);
        let mut single = ClusterMetadata::with_topics(&[]);
        single
            .execute(create("t", TopicId::generate(), &[]), context)
            .unwrap();
        assert_eq!(single.topic("t").unwrap().partition_id(0), None);

        let mut cluster = ClusterMetadata::with_topics(&[]);
        cluster.placement = Some(crate::broker::metadata::Placement::new(vec![1, 2], 2, 2));
        let (t, u) = (TopicId::generate(), TopicId::generate());
        cluster.execute(create("t", t, &[]), context).unwrap();
        cluster.execute(create("u", u, &[]), context).unwrap();
        let grow = MetadataCommand::CreatePartitions {
            name: "t".to_owned(),
            id: t,
            total: 4,
        };
        cluster.execute(grow, context).unwrap();
        let refused = cluster.execute(create("u", TopicId::generate(), &[]), context);
        assert!(refused.is_err(), "a refused command allocates nothing");
        let first = PartitionId::CLUSTER_FIRST;
        let ids = |name: &str, count: u32| -> Vec<Option<u32>> {
            let topic = cluster.topic(name).unwrap();
            (0..count)
                .map(|index| topic.partition_id(index).map(|id| id.0))
                .collect()
        };
        assert_eq!(
            ids("t", 5),
            [
                Some(first),
                Some(first + 1),
                Some(first + 4),
                Some(first + 5),
                None
            ]
        );
        assert_eq!(ids("u", 2), [Some(first + 2), Some(first + 3)]);
        assert_eq!(cluster.next_partition_id, first + 6);
        // The stored form keeps them.
        let restored =
            ClusterMetadata::from_stored(cluster.to_stored(), &statics, context.limits).unwrap();
        assert_eq!(restored.topic("t"), cluster.topic("t"));
        assert_eq!(restored.next_partition_id, first + 6);
    }

    #[test]
    fn topic_commands_check_names_ids_and_configs_against_the_metadata() {
        let statics = StaticSettings::from_config(&Config::default());
        let context = context(&statics);
        let mut metadata = ClusterMetadata::with_topics(&[]);
        let first = TopicId::generate();
        metadata
            .execute(create("t", first, &[("retention.ms", "1000")]), context)
            .unwrap();
        let again = metadata.execute(create("t", TopicId::generate(), &[]), context);
        assert_eq!(again.unwrap_err(), Refusal::TopicExists("t".to_owned()));
        let taken = metadata.execute(create("u", first, &[]), context);
        assert!(matches!(taken, Err(Refusal::InvalidRequest(_))));
        let bad = metadata.execute(
            create("u", TopicId::generate(), &[("retention.ms", "x")]),
            context,
        );
        assert!(matches!(bad, Err(Refusal::InvalidConfig(_))));
        assert!(
            metadata.topic("u").is_none(),
            "a refused create adds nothing"
        );

        // A command made for the old "t" does not touch a new "t".
        metadata
            .execute(
                MetadataCommand::DeleteTopic {
                    name: "t".to_owned(),
                    id: first,
                },
                context,
            )
            .unwrap();
        let second = TopicId::generate();
        metadata.execute(create("t", second, &[]), context).unwrap();
        let stale = metadata.execute(
            MetadataCommand::CreatePartitions {
                name: "t".to_owned(),
                id: first,
                total: 5,
            },
            context,
        );
        assert!(matches!(stale, Err(Refusal::UnknownTopicId(id)) if id == first));
        let grown = metadata
            .execute(
                MetadataCommand::CreatePartitions {
                    name: "t".to_owned(),
                    id: second,
                    total: 5,
                },
                context,
            )
            .unwrap();
        assert!(matches!(grown, Applied::Grown { from: 2, ref topic } if topic.partitions == 5));
        let unknown = metadata.execute(
            MetadataCommand::DeleteTopic {
                name: "nope".to_owned(),
                id: TopicId::generate(),
            },
            context,
        );
        assert_eq!(
            unknown.unwrap_err(),
            Refusal::UnknownTopic("nope".to_owned())
        );
    }

    #[test]
    fn group_configs_are_bounded_in_name_length_and_total_size() {
        let statics = StaticSettings::from_config(&Config::default());
        let context = context(&statics);
        let mut metadata = ClusterMetadata::with_topics(&[]);
        let set = |group: String| MetadataCommand::SetGroupConfigs {
            group,
            overrides: BTreeMap::from([(
                "consumer.session.timeout.ms".to_owned(),
                "50000".to_owned(),
            )]),
        };
        let too_long = metadata.execute(set("g".repeat(GROUP_NAME_BYTES_MAX + 1)), context);
        assert!(matches!(too_long, Err(Refusal::InvalidRequest(ref m)) if m.contains("longer")));
        let fits = CONFIGURED_GROUP_NAMES_BYTES_MAX / GROUP_NAME_BYTES_MAX;
        for index in 0..fits {
            let name = format!("{index:05}{}", "g".repeat(GROUP_NAME_BYTES_MAX - 5));
            metadata.execute(set(name), context).unwrap();
        }
        let full = metadata.execute(set("h".repeat(GROUP_NAME_BYTES_MAX)), context);
        assert!(
            matches!(full, Err(Refusal::InvalidRequest(ref m)) if m.contains("bytes of names"))
        );
        // A group already configured may still change.
        let name = format!("{:05}{}", 0, "g".repeat(GROUP_NAME_BYTES_MAX - 5));
        metadata.execute(set(name), context).unwrap();
        assert_eq!(metadata.group_configs.len(), fits);
    }
}
