//! Broker settings as Kafka's admin APIs see them: DescribeConfigs on a
//! BROKER resource, and dynamic changes through (Incremental)AlterConfigs.
//!
//! Three kinds of names:
//! * **Topic defaults**: the broker-level synonym of each topic config
//!   (`log.retention.ms` for `retention.ms`, `message.max.bytes` for
//!   `max.message.bytes`, `log.roll.ms` for `segment.ms`, ...). Their static
//!   value comes from `sluice.toml` where Sluice has the setting, else it
//!   is Kafka's default. They are dynamic, as in Kafka (KIP-226): a change
//!   is checked with the topic config's rules, persisted in the metadata,
//!   and applied at once to every topic that does not override it.
//!   `log.segment.bytes` is the exception: it is the commit log's segment
//!   size (`storage.segment_bytes`), fixed for a data directory.
//! * **Read-only settings**: the broker's other settings, under Kafka's name
//!   where Kafka has one (`broker.id`, `listeners`, `num.partitions`, ...)
//!   and as `sluice.<section>.<key>` otherwise. They come from
//!   `sluice.toml` and cannot change at runtime (INVALID_REQUEST).
//! * **Other names**: Kafka accepts dynamic settings it does not check (a
//!   name that is not one of its static settings), and tools rely on it
//!   (librdkafka's admin test sets `sasl.kerberos.min.time.before.relogin`).
//!   Sluice keeps them, shows them, and they change nothing.
//!
//! Dynamic settings exist at two levels, as in Kafka: the cluster default
//! (resource name "") and this node (its id); the node's wins. A value's
//! source order is: this node, the cluster default, `sluice.toml` (when it
//! differs from the built-in default), the built-in default.

use std::collections::BTreeMap;

use super::config_value::ConfigType;
use super::topic_config::{
    TOPIC_CONFIGS, TopicConfig, TopicConfigDef, TopicLimits, checked_value, def_for_synonym,
};
use crate::config::Config;

/// Where a value comes from: DescribeConfigs' `config_source` (KIP-226).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    TopicOverride,
    DynamicBroker,
    DynamicDefaultBroker,
    StaticBroker,
    Default,
    /// A group config set on the group (GROUP_CONFIG, KIP-848).
    Group,
}

impl ConfigSource {
    pub fn code(self) -> i8 {
        match self {
            ConfigSource::TopicOverride => 1,
            ConfigSource::DynamicBroker => 2,
            ConfigSource::DynamicDefaultBroker => 3,
            ConfigSource::StaticBroker => 4,
            ConfigSource::Default => 5,
            ConfigSource::Group => 8,
        }
    }
}

/// Which BROKER resource a request names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BrokerScope {
    /// The empty name: the cluster-wide default.
    Cluster,
    /// This node's id.
    Node,
}

/// The scope a BROKER resource name denotes, or Kafka's INVALID_REQUEST
/// message for it.
pub fn scope_of(name: &str, node_id: i32) -> Result<BrokerScope, String> {
    if name.is_empty() {
        return Ok(BrokerScope::Cluster);
    }
    match name.parse::<i32>() {
        Ok(id) if id == node_id => Ok(BrokerScope::Node),
        Ok(id) => Err(format!(
            "unexpected broker id {id}: this broker is {node_id} (or use the empty name for the \
             cluster default)"
        )),
        Err(_) => Err(format!("broker id must be an integer, not {name:?}")),
    }
}

/// Dynamic broker settings, persisted in the cluster metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BrokerOverrides {
    /// The cluster default (resource name "").
    pub cluster: BTreeMap<String, String>,
    /// This node's (resource name: its id).
    pub node: BTreeMap<String, String>,
}

impl BrokerOverrides {
    pub fn of(&self, scope: BrokerScope) -> &BTreeMap<String, String> {
        match scope {
            BrokerScope::Cluster => &self.cluster,
            BrokerScope::Node => &self.node,
        }
    }

    pub fn of_mut(&mut self, scope: BrokerScope) -> &mut BTreeMap<String, String> {
        match scope {
            BrokerScope::Cluster => &mut self.cluster,
            BrokerScope::Node => &mut self.node,
        }
    }
}

/// A read-only broker setting: its name, type and what it is.
#[derive(Clone, Copy, Debug)]
pub struct ReadOnlySetting {
    pub name: &'static str,
    pub kind: ConfigType,
    pub doc: &'static str,
}

const fn read_only(name: &'static str, kind: ConfigType, doc: &'static str) -> ReadOnlySetting {
    ReadOnlySetting { name, kind, doc }
}

use ConfigType::{Boolean as BOOL, Double as DOUBLE, Int as INT, Long as LONG, String as STR};

/// The broker's read-only settings, in name order.
pub const READ_ONLY_SETTINGS: &[ReadOnlySetting] = &[
    read_only(
        "advertised.listeners",
        STR,
        "Where clients are told to connect (kafka.advertised).",
    ),
    read_only(
        "auto.create.topics.enable",
        BOOL,
        "Unknown topics are created on Metadata and Produce (kafka.auto_create_topics).",
    ),
    read_only("broker.id", INT, "This broker's node id (kafka.node_id)."),
    read_only(
        "connections.max.idle.ms",
        LONG,
        "Idle connections are closed after this long (kafka.idle_timeout_ms).",
    ),
    read_only(
        "default.replication.factor",
        INT,
        "Always 1: a single node.",
    ),
    read_only(
        "delete.topic.enable",
        BOOL,
        "Always true: DeleteTopics is served.",
    ),
    read_only(
        "fetch.max.bytes",
        INT,
        "Most bytes of batches in one Fetch response (kafka.fetch_max_bytes).",
    ),
    read_only(
        "group.initial.rebalance.delay.ms",
        INT,
        "A new group waits this long for more members (groups.initial_rebalance_delay_ms).",
    ),
    read_only(
        "group.max.session.timeout.ms",
        INT,
        "Longest session timeout a member may ask for (groups.session_timeout_max_ms).",
    ),
    read_only(
        "group.max.size",
        INT,
        "Most members in one group (groups.members_max).",
    ),
    read_only(
        "group.min.session.timeout.ms",
        INT,
        "Shortest session timeout a member may ask for (groups.session_timeout_min_ms).",
    ),
    read_only("listeners", STR, "The Kafka listener (kafka.listen)."),
    read_only(
        "log.cleaner.backoff.ms",
        LONG,
        "How often each shard's log cleaner looks for a compacted partition to clean (storage.cleaner_backoff_ms).",
    ),
    read_only(
        "log.cleaner.dedupe.buffer.size",
        LONG,
        "Memory of each shard's compaction key map; a pass holds at most this / 24 keys (storage.cleaner_dedupe_buffer_bytes).",
    ),
    read_only(
        "log.cleaner.io.max.bytes.per.second",
        DOUBLE,
        "Bytes each shard's log cleaner reads and writes per second at most (storage.cleaner_io_max_bytes_per_second).",
    ),
    read_only("log.dirs", STR, "The data directory (data_dir)."),
    read_only(
        "log.retention.check.interval.ms",
        LONG,
        "How often retention runs (retention.check_interval_ms).",
    ),
    read_only(
        "max.connections",
        INT,
        "Open client connections allowed (kafka.connections_max).",
    ),
    read_only("node.id", INT, "This broker's node id (kafka.node_id)."),
    read_only(
        "num.partitions",
        INT,
        "Partitions of an auto-created topic and the CreateTopics default (kafka.default_partitions).",
    ),
    read_only(
        "offset.metadata.max.bytes",
        INT,
        "Largest metadata string on a committed offset (groups.offset_metadata_max_bytes).",
    ),
    read_only(
        "offsets.retention.minutes",
        INT,
        "Offsets of an empty group expire after this long (groups.offsets_retention_ms).",
    ),
    read_only(
        "offsets.topic.num.partitions",
        INT,
        "Partitions of __consumer_offsets (groups.offsets_topic_partitions).",
    ),
    read_only(
        "producer.id.expiration.check.interval.ms",
        INT,
        "How often expired producers are looked for (storage.producer_id_expiration_check_interval_ms).",
    ),
    read_only(
        "producer.id.expiration.ms",
        INT,
        "An idle idempotent producer is forgotten after this long (storage.producer_id_expiration_ms).",
    ),
    read_only(
        "queued.max.request.bytes",
        LONG,
        "Bytes of requests being read or served at once (kafka.queued_requests_max_bytes).",
    ),
    read_only(
        "sluice.io.backend",
        STR,
        "auto, io_uring or epoll (io_backend).",
    ),
    read_only(
        "sluice.kafka.fetch.wait.max.ms",
        LONG,
        "Longest a Fetch long-polls (kafka.fetch_wait_max_ms).",
    ),
    read_only(
        "sluice.kafka.partitions.per.topic.max",
        INT,
        "Most partitions one topic may have (kafka.partitions_per_topic_max).",
    ),
    read_only(
        "sluice.kafka.request.read.timeout.ms",
        LONG,
        "A request not complete this long after its first byte closes the connection (kafka.request_read_timeout_ms).",
    ),
    read_only(
        "sluice.kafka.requests.in.flight.max",
        INT,
        "Requests one connection may have in progress (kafka.requests_in_flight_max).",
    ),
    read_only(
        "sluice.metrics.listen",
        STR,
        "The metrics and health endpoint (metrics.listen).",
    ),
    read_only(
        "sluice.pin.shards",
        BOOL,
        "Each shard thread is pinned to a core (pin_shards).",
    ),
    read_only(
        "sluice.retention.disk.check.interval.ms",
        LONG,
        "How often disk usage is sampled (retention.disk_check_interval_ms).",
    ),
    read_only(
        "sluice.retention.disk.clean.ratio",
        DOUBLE,
        "Above this used fraction expired segments go at every disk check (retention.disk_clean_ratio).",
    ),
    read_only(
        "sluice.retention.disk.force.clean.ratio",
        DOUBLE,
        "Above this the oldest segments go even unexpired, where topics allow it (retention.disk_force_clean_ratio).",
    ),
    read_only(
        "sluice.retention.disk.reject.ratio",
        DOUBLE,
        "Above this appends are refused (retention.disk_reject_ratio).",
    ),
    read_only(
        "sluice.shards",
        INT,
        "Shards: pinned threads with one commit log each (shards).",
    ),
    read_only(
        "sluice.storage.batch.ceiling.bytes",
        INT,
        "The largest batch the commit log holds, and so the most any max.message.bytes may be: half of storage.write_buffers x storage.flush_bytes.",
    ),
    read_only(
        "sluice.storage.checkpoint.interval.ms",
        LONG,
        "Checkpoint period (storage.checkpoint_interval_ms).",
    ),
    read_only(
        "sluice.storage.decompressed.batch.ratio.max",
        INT,
        "A compressed batch may decompress to at most this many times its limit (storage.decompressed_batch_ratio_max).",
    ),
    read_only(
        "sluice.storage.flush.bytes",
        INT,
        "Write-buffer size (storage.flush_bytes).",
    ),
    read_only(
        "sluice.storage.flush.interval.ms",
        LONG,
        "Longest a batch waits in a buffer on a busy shard (storage.flush_interval_ms).",
    ),
    read_only(
        "sluice.storage.inflight.writes.max",
        INT,
        "Writes in flight per shard (storage.inflight_writes_max).",
    ),
    read_only(
        "sluice.storage.write.buffers",
        INT,
        "Write buffers per shard (storage.write_buffers).",
    ),
    read_only(
        "sluice.storage.write.mode",
        STR,
        "direct (O_DIRECT) or buffered (storage.write_mode).",
    ),
    read_only(
        "socket.request.max.bytes",
        INT,
        "Largest request a client may send (kafka.request_max_bytes).",
    ),
    read_only(
        "transaction.abort.timed.out.transaction.cleanup.interval.ms",
        INT,
        "How often overdue transactions are aborted (transactions.abort_check_interval_ms).",
    ),
    read_only(
        "transaction.max.timeout.ms",
        INT,
        "Largest transaction.timeout.ms a producer may ask for (transactions.max_timeout_ms).",
    ),
    read_only(
        "transaction.state.log.num.partitions",
        INT,
        "Partitions of __transaction_state (transactions.state_topic_partitions).",
    ),
    read_only(
        "transactional.id.expiration.ms",
        INT,
        "A transactional id idle this long is forgotten (transactions.id_expiration_ms).",
    ),
];

/// The one topic-default synonym that is not dynamic: the commit log's
/// segment size is fixed for a data directory.
const FIXED_TOPIC_DEFAULTS: &[&str] = &["log.segment.bytes"];

/// What a broker setting name is.
#[derive(Clone, Copy, Debug)]
pub enum SettingKind {
    /// The broker-level default of a topic config (dynamic).
    TopicDefault(&'static TopicConfigDef),
    /// Set in `sluice.toml` only.
    ReadOnly { kind: ConfigType, doc: &'static str },
    /// A name Sluice does not use; kept and shown, changes nothing.
    Unknown,
}

pub fn kind_of(name: &str) -> SettingKind {
    if let Some(def) = def_for_synonym(name) {
        if FIXED_TOPIC_DEFAULTS.contains(&name) {
            return SettingKind::ReadOnly {
                kind: def.spec.kind,
                doc: "The commit log's segment size (storage.segment_bytes), fixed for a data \
                      directory; the default of the topic config segment.bytes, which has no \
                      effect.",
            };
        }
        return SettingKind::TopicDefault(def);
    }
    match READ_ONLY_SETTINGS
        .iter()
        .find(|setting| setting.name == name)
    {
        Some(setting) => SettingKind::ReadOnly {
            kind: setting.kind,
            doc: setting.doc,
        },
        None => SettingKind::Unknown,
    }
}

/// Documentation of a name Sluice keeps but does not use.
const UNKNOWN_DOC: &str = "Not a Sluice setting: kept and shown because Kafka accepts dynamic \
                           settings it does not check, but it changes nothing.";

/// `raw` as a dynamic value of broker setting `name`, in the form
/// DescribeConfigs shows, or why it is refused (Kafka answers
/// INVALID_REQUEST for both, KAFKA-13609).
pub fn checked_dynamic(name: &str, raw: &str, limits: TopicLimits) -> Result<String, String> {
    match kind_of(name) {
        SettingKind::TopicDefault(def) => checked_value(def, raw, limits)
            .map_err(|reason| format!("invalid value {raw:?} for {name}: {reason}")),
        SettingKind::ReadOnly { .. } => Err(format!(
            "{name} cannot be changed at runtime: it is set in sluice.toml (read-only)"
        )),
        SettingKind::Unknown => Ok(raw.to_owned()),
    }
}

/// The broker settings `sluice.toml` (and the command line) gave: each
/// name's value and its built-in default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticSettings {
    /// Name -> (value now, built-in default).
    values: BTreeMap<&'static str, (String, String)>,
}

impl StaticSettings {
    pub fn from_config(config: &Config) -> StaticSettings {
        let builtin = Config::default();
        let mut values = BTreeMap::new();
        let names = READ_ONLY_SETTINGS
            .iter()
            .map(|setting| setting.name)
            .chain(TOPIC_CONFIGS.iter().filter_map(|def| def.synonym));
        for name in names {
            let Some(now) = static_value(name, config) else {
                continue;
            };
            let default = static_value(name, &builtin).unwrap_or_else(|| now.clone());
            values.insert(name, (now, default));
        }
        StaticSettings { values }
    }

    /// (value, source) of `name` at the static levels: `sluice.toml` when
    /// it differs from the built-in default, then the default.
    fn levels(&self, name: &str) -> Vec<(ConfigSource, String)> {
        let mut levels = Vec::new();
        if let Some((now, default)) = self.values.get(name) {
            if now != default {
                levels.push((ConfigSource::StaticBroker, now.clone()));
            }
            levels.push((ConfigSource::Default, default.clone()));
        } else if let Some(def) = def_for_synonym(name) {
            levels.push((ConfigSource::Default, def.kafka_default.to_owned()));
        }
        levels
    }
}

/// The value a `sluice.toml` setting gives broker setting `name`.
fn static_value(name: &str, config: &Config) -> Option<String> {
    let kafka = &config.kafka;
    let storage = &config.storage;
    let retention = &config.retention;
    let groups = &config.groups;
    let txn = &config.transactions;
    let (host, port) = kafka.advertised_address();
    Some(match name {
        "advertised.listeners" => {
            let main = format!(
                "{}://{host}:{port}",
                config.security.security_protocol.name()
            );
            let extra = config.security.listeners.iter().map(|listener| {
                let (host, port) =
                    crate::config::advertised_or_listen(&listener.advertised, &listener.listen);
                format!("{}://{host}:{port}", listener.name)
            });
            std::iter::once(main)
                .chain(extra)
                .collect::<Vec<_>>()
                .join(",")
        }
        "auto.create.topics.enable" => kafka.auto_create_topics.to_string(),
        "broker.id" | "node.id" => kafka.node_id.to_string(),
        "connections.max.idle.ms" => kafka.idle_timeout_ms.to_string(),
        "default.replication.factor" => config
            .cluster
            .as_ref()
            .map_or(1, |cluster| cluster.replication_factor())
            .to_string(),
        "min.insync.replicas" => config
            .cluster
            .as_ref()
            .map_or(1, |cluster| cluster.min_insync_replicas())
            .to_string(),
        "delete.topic.enable" => "true".to_owned(),
        "fetch.max.bytes" => kafka.fetch_max_bytes.to_string(),
        "group.initial.rebalance.delay.ms" => groups.initial_rebalance_delay_ms.to_string(),
        "group.max.session.timeout.ms" => groups.session_timeout_max_ms.to_string(),
        "group.max.size" => groups.members_max.to_string(),
        "group.min.session.timeout.ms" => groups.session_timeout_min_ms.to_string(),
        "listeners" => {
            let main = format!(
                "{}://{}",
                config.security.security_protocol.name(),
                kafka.listen
            );
            let extra = config
                .security
                .listeners
                .iter()
                .map(|listener| format!("{}://{}", listener.name, listener.listen));
            std::iter::once(main)
                .chain(extra)
                .collect::<Vec<_>>()
                .join(",")
        }
        "log.cleaner.backoff.ms" => storage.cleaner_backoff_ms.to_string(),
        "log.cleaner.dedupe.buffer.size" => storage.cleaner_dedupe_buffer_bytes.to_string(),
        "log.cleaner.io.max.bytes.per.second" => {
            (storage.cleaner_io_max_bytes_per_second as f64).to_string()
        }
        "log.dirs" => config.data_dir.display().to_string(),
        "log.flush.interval.ms" => retention.flush_ms.to_string(),
        "log.retention.bytes" => retention.retention_bytes.to_string(),
        "log.retention.check.interval.ms" => retention.check_interval_ms.to_string(),
        "log.retention.ms" => retention.retention_ms.to_string(),
        "log.roll.ms" => storage.segment_ms.to_string(),
        "log.segment.bytes" => storage.segment_bytes.to_string(),
        "max.connections" => kafka.connections_max.to_string(),
        "message.max.bytes" => storage.message_max_bytes.to_string(),
        "num.partitions" => kafka.default_partitions.to_string(),
        "offset.metadata.max.bytes" => groups.offset_metadata_max_bytes.to_string(),
        "offsets.retention.minutes" => (groups.offsets_retention_ms / 60_000).to_string(),
        "offsets.topic.num.partitions" => groups.offsets_topic_partitions.to_string(),
        "producer.id.expiration.check.interval.ms" => {
            storage.producer_id_expiration_check_interval_ms.to_string()
        }
        "producer.id.expiration.ms" => storage.producer_id_expiration_ms.to_string(),
        "queued.max.request.bytes" => kafka.queued_requests_max_bytes.to_string(),
        "sluice.io.backend" => format!("{:?}", config.io_backend).to_ascii_lowercase(),
        "sluice.kafka.fetch.wait.max.ms" => kafka.fetch_wait_max_ms.to_string(),
        "sluice.kafka.partitions.per.topic.max" => kafka.partitions_per_topic_max.to_string(),
        "sluice.kafka.request.read.timeout.ms" => kafka.request_read_timeout_ms.to_string(),
        "sluice.kafka.requests.in.flight.max" => kafka.requests_in_flight_max.to_string(),
        "sluice.metrics.listen" => config.metrics.listen.clone(),
        "sluice.pin.shards" => config.pin_shards.to_string(),
        "sluice.retention.disk.check.interval.ms" => retention.disk_check_interval_ms.to_string(),
        "sluice.retention.disk.clean.ratio" => retention.disk_clean_ratio.to_string(),
        "sluice.retention.disk.force.clean.ratio" => retention.disk_force_clean_ratio.to_string(),
        "sluice.retention.disk.reject.ratio" => retention.disk_reject_ratio.to_string(),
        "sluice.shards" => config.shard_count().to_string(),
        "sluice.storage.batch.ceiling.bytes" => storage.batch_ceiling_bytes().to_string(),
        "sluice.storage.checkpoint.interval.ms" => storage.checkpoint_interval_ms.to_string(),
        "sluice.storage.decompressed.batch.ratio.max" => {
            storage.decompressed_batch_ratio_max.to_string()
        }
        "sluice.storage.flush.bytes" => storage.flush_bytes.to_string(),
        "sluice.storage.flush.interval.ms" => storage.flush_interval_ms.to_string(),
        "sluice.storage.inflight.writes.max" => storage.inflight_writes_max.to_string(),
        "sluice.storage.write.buffers" => storage.write_buffers.to_string(),
        "sluice.storage.write.mode" => format!("{:?}", storage.write_mode).to_ascii_lowercase(),
        "socket.request.max.bytes" => kafka.request_max_bytes.to_string(),
        "transaction.abort.timed.out.transaction.cleanup.interval.ms" => {
            txn.abort_check_interval_ms.to_string()
        }
        "transaction.max.timeout.ms" => txn.max_timeout_ms.to_string(),
        "transaction.state.log.num.partitions" => txn.state_topic_partitions.to_string(),
        "transactional.id.expiration.ms" => txn.id_expiration_ms.to_string(),
        _ => return None,
    })
}

/// One row of a BROKER DescribeConfigs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerEntry {
    pub name: String,
    pub value: String,
    pub source: ConfigSource,
    pub read_only: bool,
    pub kind: ConfigType,
    /// Every level with a value, strongest first (KIP-226 synonyms).
    pub synonyms: Vec<(String, String, ConfigSource)>,
    pub doc: &'static str,
}

/// The broker's settings at every level: what DescribeConfigs shows and
/// where topics take their defaults.
pub struct BrokerView<'a> {
    pub statics: &'a StaticSettings,
    pub overrides: &'a BrokerOverrides,
}

impl BrokerView<'_> {
    /// (source, value) of `name` at each level that sets it, strongest first.
    pub fn levels(&self, name: &str) -> Vec<(ConfigSource, String)> {
        let dynamic = [
            (ConfigSource::DynamicBroker, &self.overrides.node),
            (ConfigSource::DynamicDefaultBroker, &self.overrides.cluster),
        ];
        let mut levels: Vec<_> = dynamic
            .into_iter()
            .filter_map(|(source, map)| map.get(name).map(|value| (source, value.clone())))
            .collect();
        levels.extend(self.statics.levels(name));
        levels
    }

    /// Every topic config's broker-level default.
    pub fn topic_defaults(&self) -> TopicConfig {
        TopicConfig::from_broker(|def| {
            let synonym = def.synonym?;
            self.levels(synonym)
                .into_iter()
                .next()
                .map(|(_, value)| value)
        })
    }

    /// The rows of a BROKER DescribeConfigs for `scope`, limited to `keys`
    /// when given. The node shows every setting; the cluster default only
    /// what is set at that level (as Kafka).
    pub fn describe(&self, scope: BrokerScope, keys: Option<&[String]>) -> Vec<BrokerEntry> {
        let mut names: Vec<String> = match scope {
            BrokerScope::Cluster => self.overrides.cluster.keys().cloned().collect(),
            BrokerScope::Node => TOPIC_CONFIGS
                .iter()
                .filter_map(|def| def.synonym)
                .chain(READ_ONLY_SETTINGS.iter().map(|setting| setting.name))
                .map(str::to_owned)
                .chain(self.overrides.node.keys().cloned())
                .chain(self.overrides.cluster.keys().cloned())
                .collect(),
        };
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|name| keys.is_none_or(|keys| keys.iter().any(|key| key == name)))
            .filter_map(|name| self.entry(scope, name))
            .collect()
    }

    fn entry(&self, scope: BrokerScope, name: String) -> Option<BrokerEntry> {
        let levels: Vec<_> = self
            .levels(&name)
            .into_iter()
            .filter(|(source, _)| {
                scope == BrokerScope::Node || *source == ConfigSource::DynamicDefaultBroker
            })
            .collect();
        let (source, value) = levels.first().cloned()?;
        let (read_only, kind, doc) = match kind_of(&name) {
            SettingKind::TopicDefault(def) => (false, def.spec.kind, def.doc),
            SettingKind::ReadOnly { kind, doc } => (true, kind, doc),
            SettingKind::Unknown => (false, ConfigType::String, UNKNOWN_DOC),
        };
        let synonyms = levels
            .into_iter()
            .map(|(source, value)| (name.clone(), value, source))
            .collect();
        Some(BrokerEntry {
            name,
            value,
            source,
            read_only,
            kind,
            synonyms,
            doc,
        })
    }

    /// The rows of a TOPIC DescribeConfigs (and of CreateTopics' answer)
    /// for a topic with `config` and `overrides`, limited to `keys` when
    /// given: every topic config, its source, and its synonyms (the
    /// topic's override, then its broker setting at each level), as Kafka's
    /// `ConfigHelper.createTopicConfigEntry`.
    pub fn describe_topic(
        &self,
        config: &TopicConfig,
        overrides: &BTreeMap<String, String>,
        keys: Option<&[String]>,
    ) -> Vec<TopicEntry> {
        TOPIC_CONFIGS
            .iter()
            .filter(|def| keys.is_none_or(|keys| keys.iter().any(|key| key == def.name)))
            .map(|def| {
                let value = config.value_of(def.name).unwrap_or_default().to_owned();
                let mut synonyms = Vec::new();
                if overrides.contains_key(def.name) {
                    synonyms.push((
                        def.name.to_owned(),
                        value.clone(),
                        ConfigSource::TopicOverride,
                    ));
                }
                if let Some(synonym) = def.synonym {
                    synonyms.extend(
                        self.levels(synonym)
                            .into_iter()
                            .map(|(source, value)| (synonym.to_owned(), value, source)),
                    );
                }
                let source = synonyms
                    .first()
                    .map_or(ConfigSource::Default, |(_, _, source)| *source);
                TopicEntry {
                    def,
                    value,
                    source,
                    synonyms,
                }
            })
            .collect()
    }
}

/// One row of a TOPIC DescribeConfigs.
#[derive(Clone, Debug)]
pub struct TopicEntry {
    pub def: &'static TopicConfigDef,
    pub value: String,
    pub source: ConfigSource,
    /// (name, value, source) at each level that sets it, strongest first.
    pub synonyms: Vec<(String, String, ConfigSource)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> TopicLimits {
        TopicLimits {
            batch_max_bytes: 8 << 20,
            max_delay_ms: 30 * 24 * 3_600_000,
        }
    }

    #[test]
    fn read_only_settings_are_in_name_order_and_all_have_values() {
        assert!(
            READ_ONLY_SETTINGS
                .windows(2)
                .all(|pair| pair[0].name < pair[1].name)
        );
        let config = Config::default();
        for setting in READ_ONLY_SETTINGS {
            assert!(
                static_value(setting.name, &config).is_some(),
                "{}",
                setting.name
            );
            assert!(def_for_synonym(setting.name).is_none(), "{}", setting.name);
        }
    }

    #[test]
    fn levels_run_from_the_node_to_the_built_in_default() {
        let mut config = Config::default();
        config.retention.retention_ms = 1000;
        let statics = StaticSettings::from_config(&config);
        let mut overrides = BrokerOverrides::default();
        overrides
            .cluster
            .insert("log.retention.ms".into(), "2000".into());
        overrides
            .node
            .insert("log.retention.ms".into(), "3000".into());
        let view = BrokerView {
            statics: &statics,
            overrides: &overrides,
        };
        let sources = view.levels("log.retention.ms");
        assert_eq!(
            sources,
            vec![
                (ConfigSource::DynamicBroker, "3000".to_owned()),
                (ConfigSource::DynamicDefaultBroker, "2000".to_owned()),
                (ConfigSource::StaticBroker, "1000".to_owned()),
                (ConfigSource::Default, "259200000".to_owned()),
            ]
        );
        assert_eq!(view.topic_defaults().retention_ms, 3000);
        let cluster = view.describe(BrokerScope::Cluster, None);
        assert_eq!(cluster.len(), 1);
        assert_eq!(cluster[0].source, ConfigSource::DynamicDefaultBroker);
        assert_eq!(cluster[0].value, "2000");
    }

    #[test]
    fn dynamic_values_are_checked_by_kind() {
        assert_eq!(
            checked_dynamic("log.retention.ms", " 5 ", limits()).unwrap(),
            "5"
        );
        assert!(checked_dynamic("log.retention.ms", "-5", limits()).is_err());
        // Issue 17: compaction is a cluster-wide default too, as in Kafka.
        assert_eq!(
            checked_dynamic("log.cleanup.policy", "delete, compact", limits()).unwrap(),
            "delete,compact"
        );
        assert!(
            checked_dynamic("log.cleanup.policy", "delete,shred", limits())
                .unwrap_err()
                .contains("log.cleanup.policy")
        );
        assert!(
            checked_dynamic("num.partitions", "3", limits())
                .unwrap_err()
                .contains("read-only")
        );
        assert!(checked_dynamic("log.segment.bytes", "3", limits()).is_err());
        assert_eq!(
            checked_dynamic("sasl.kerberos.min.time.before.relogin", "58000", limits()).unwrap(),
            "58000"
        );
    }

    #[test]
    fn broker_names_parse_as_kafka_parses_them() {
        assert_eq!(scope_of("", 3), Ok(BrokerScope::Cluster));
        assert_eq!(scope_of("3", 3), Ok(BrokerScope::Node));
        assert!(scope_of("4", 3).is_err());
        assert!(scope_of("three", 3).is_err());
    }
}
