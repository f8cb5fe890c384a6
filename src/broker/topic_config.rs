//! Topic configurations: every topic config Kafka 3.9 defines (and
//! `sluice.disk.pressure.delete`), how each is checked, its broker-level
//! synonym, and what Sluice does with it.
//!
//! A topic stores only its overrides (`name = value` strings, exactly as a
//! client set them). The effective configuration is the broker-level
//! defaults (see `broker_config.rs`: dynamic broker settings, then
//! `sluice.toml`, then Kafka's default) with the overrides applied,
//! computed whenever metadata changes. Values are checked with Kafka's rules
//! (type, range, allowed values; `config_value.rs`) plus Sluice's own
//! limits; an unknown name or a bad value is refused with INVALID_CONFIG
//! and a reason naming the key.
//!
//! Each config is [`Effect::Enforced`] (storage or Produce acts on it),
//! [`Effect::Recorded`] (kept and shown; honoured once the feature it needs
//! exists) or [`Effect::Inert`] (kept and shown; it has no meaning for a
//! single-node broker with one commit log per shard). docs/topic-configs.md
//! tabulates them with the reasons.

use std::collections::BTreeMap;

use super::config_value::{Check, ConfigType, ValueSpec};
use crate::record_batch::Codec;
use crate::storage::PartitionConfig;
use crate::storage::partition::MIN_CLEANABLE_DIRTY_RATIO_PPM_DEFAULT;

pub const CLEANUP_POLICY: &str = "cleanup.policy";
pub const COMPRESSION_GZIP_LEVEL: &str = "compression.gzip.level";
pub const COMPRESSION_LZ4_LEVEL: &str = "compression.lz4.level";
pub const COMPRESSION_TYPE: &str = "compression.type";
pub const COMPRESSION_ZSTD_LEVEL: &str = "compression.zstd.level";
pub const DELETE_RETENTION_MS: &str = "delete.retention.ms";
pub const FLUSH_MESSAGES: &str = "flush.messages";
pub const FLUSH_MS: &str = "flush.ms";
pub const MAX_COMPACTION_LAG_MS: &str = "max.compaction.lag.ms";
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
pub const MESSAGE_TIMESTAMP_AFTER_MAX_MS: &str = "message.timestamp.after.max.ms";
pub const MESSAGE_TIMESTAMP_BEFORE_MAX_MS: &str = "message.timestamp.before.max.ms";
pub const MESSAGE_TIMESTAMP_DIFFERENCE_MAX_MS: &str = "message.timestamp.difference.max.ms";
pub const MESSAGE_TIMESTAMP_TYPE: &str = "message.timestamp.type";
pub const MIN_CLEANABLE_DIRTY_RATIO: &str = "min.cleanable.dirty.ratio";
pub const MIN_COMPACTION_LAG_MS: &str = "min.compaction.lag.ms";
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
pub const REMOTE_STORAGE_ENABLE: &str = "remote.storage.enable";
pub const RETENTION_BYTES: &str = "retention.bytes";
pub const RETENTION_MS: &str = "retention.ms";
pub const SEGMENT_BYTES: &str = "segment.bytes";
pub const SEGMENT_MS: &str = "segment.ms";
/// Sluice's own: whether this topic's unexpired data may be deleted when
/// disk usage passes `retention.disk_force_clean_ratio` (RocketMQ's forced
/// file cleaning, per topic). Off by default: acknowledged data stays until
/// it expires, and appends are refused when the disk is nearly full.
pub const DISK_PRESSURE_DELETE: &str = "sluice.disk.pressure.delete";
/// Sluice's own: the delay of every record produced to the topic without
/// a delay header of its own (issue 18; `broker/delay.rs`), milliseconds;
/// 0 = none.
pub const DELIVERY_DELAY_MS: &str = "sluice.delivery.delay.ms";

/// Kafka's `compression.type` values for a topic (`BrokerCompressionType`).
const COMPRESSION_TYPES: &[&str] = &["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"];
const TIMESTAMP_TYPES: &[&str] = &["CreateTime", "LogAppendTime"];
const CLEANUP_POLICY_COMPACT: &str = "compact";
const CLEANUP_POLICY_DELETE: &str = "delete";
const CLEANUP_POLICIES: &[&str] = &[CLEANUP_POLICY_COMPACT, CLEANUP_POLICY_DELETE];
/// `min.cleanable.dirty.ratio` is handed to storage in parts per million,
/// so that [`PartitionConfig`] keeps `Eq`.
const RATIO_PPM_ONE: f64 = 1_000_000.0;
const INT_MAX: i64 = i32::MAX as i64;

/// What Sluice does with a config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Storage or Produce acts on it.
    Enforced,
    /// Kept and shown now; honoured once what it needs exists.
    Recorded,
    /// Kept and shown; it changes nothing in this storage.
    Inert,
}

/// One topic config: its name, type and checks, Kafka's default, the
/// broker setting it falls back to, what Sluice does with it, and the
/// documentation DescribeConfigs returns.
#[derive(Clone, Copy, Debug)]
pub struct TopicConfigDef {
    pub name: &'static str,
    pub spec: ValueSpec,
    /// Kafka's default, used where no broker setting supplies one.
    pub kafka_default: &'static str,
    /// The broker setting that supplies the default (Kafka's synonym).
    pub synonym: Option<&'static str>,
    pub effect: Effect,
    pub doc: &'static str,
}

const fn def(
    name: &'static str,
    spec: ValueSpec,
    kafka_default: &'static str,
    synonym: Option<&'static str>,
    effect: Effect,
    doc: &'static str,
) -> TopicConfigDef {
    TopicConfigDef {
        name,
        spec,
        kafka_default,
        synonym,
        effect,
        doc,
    }
}

const fn long_from(min: i64) -> ValueSpec {
    ValueSpec::new(ConfigType::Long, Check::Range { min, max: i64::MAX })
}

const fn int_between(min: i64, max: i64) -> ValueSpec {
    ValueSpec::new(ConfigType::Int, Check::Range { min, max })
}

const BOOLEAN: ValueSpec = ValueSpec::new(ConfigType::Boolean, Check::Any);
const THROTTLED: ValueSpec = ValueSpec::new(ConfigType::List, Check::ThrottledReplicas);
const LONG_MAX: &str = "9223372036854775807";

/// Every topic config, in name order (DescribeConfigs lists them so).
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def(
        CLEANUP_POLICY,
        ValueSpec::new(ConfigType::List, Check::EachOf(CLEANUP_POLICIES)),
        "delete",
        Some("log.cleanup.policy"),
        Effect::Enforced,
        "\"delete\": retention.ms and retention.bytes move the log start. \"compact\": the \
         cleaner keeps the latest record of each key, and Produce refuses records without a \
         key (INVALID_RECORD). Both may be given (\"compact,delete\"); \"compact\" alone \
         deletes nothing by age or size. Empty: nothing is deleted.",
    ),
    def(
        COMPRESSION_GZIP_LEVEL,
        ValueSpec::new(ConfigType::Int, Check::GzipLevel),
        "-1",
        Some("compression.gzip.level"),
        Effect::Enforced,
        "Level of the broker's gzip recompression (compression.type=gzip): 1 to 9, or -1 for \
         the codec's default.",
    ),
    def(
        COMPRESSION_LZ4_LEVEL,
        int_between(1, 17),
        "9",
        Some("compression.lz4.level"),
        Effect::Enforced,
        "Level of the broker's lz4 recompression (compression.type=lz4): 1 to 17; 9 is lz4's \
         fast mode, other levels its high-compression mode.",
    ),
    def(
        COMPRESSION_TYPE,
        ValueSpec::new(ConfigType::String, Check::OneOf(COMPRESSION_TYPES)),
        "producer",
        Some("compression.type"),
        Effect::Enforced,
        "\"producer\" stores batches as sent. A codec (gzip, snappy, lz4, zstd, or uncompressed) \
         makes the broker recompress every batch in another codec to it at Produce; offsets, \
         timestamps, headers and producer fields are kept.",
    ),
    def(
        COMPRESSION_ZSTD_LEVEL,
        int_between(-131_072, 22),
        "3",
        Some("compression.zstd.level"),
        Effect::Enforced,
        "Level of the broker's zstd recompression (compression.type=zstd): -131072 to 22.",
    ),
    def(
        DELETE_RETENTION_MS,
        long_from(0),
        "86400000",
        Some("log.cleaner.delete.retention.ms"),
        Effect::Enforced,
        "Compacted topics: how long the cleaner keeps a tombstone (a record with a null value) \
         once it has compacted the part of the log holding it, so that consumers still see the \
         deletion.",
    ),
    def(
        "file.delete.delay.ms",
        long_from(0),
        "60000",
        Some("log.segment.delete.delay.ms"),
        Effect::Inert,
        "No effect: segments belong to a shard's commit log and are deleted at once when no \
         partition needs them.",
    ),
    def(
        FLUSH_MESSAGES,
        long_from(1),
        LONG_MAX,
        Some("log.flush.interval.messages"),
        Effect::Enforced,
        "Data is fsynced at least every this many records.",
    ),
    def(
        FLUSH_MS,
        long_from(0),
        LONG_MAX,
        Some("log.flush.interval.ms"),
        Effect::Enforced,
        "Data produced with acks=0/1 is fsynced within this many ms.",
    ),
    def(
        "follower.replication.throttled.replicas",
        THROTTLED,
        "",
        None,
        Effect::Inert,
        "No effect: a single node has no replication to throttle.",
    ),
    def(
        "index.interval.bytes",
        int_between(0, INT_MAX),
        "4096",
        Some("log.index.interval.bytes"),
        Effect::Inert,
        "No effect: the consume queue indexes every batch.",
    ),
    def(
        "leader.replication.throttled.replicas",
        THROTTLED,
        "",
        None,
        Effect::Inert,
        "No effect: a single node has no replication to throttle.",
    ),
    def(
        "local.retention.bytes",
        long_from(-2),
        "-2",
        Some("log.local.retention.bytes"),
        Effect::Inert,
        "No effect: there is no tiered storage, so all data is local (retention.bytes applies).",
    ),
    def(
        "local.retention.ms",
        long_from(-2),
        "-2",
        Some("log.local.retention.ms"),
        Effect::Inert,
        "No effect: there is no tiered storage, so all data is local (retention.ms applies).",
    ),
    def(
        MAX_COMPACTION_LAG_MS,
        long_from(1),
        LONG_MAX,
        Some("log.cleaner.max.compaction.lag.ms"),
        Effect::Enforced,
        "Compacted topics: the longest a record may stay uncompacted; the cleaner compacts the \
         log once a record is this old, whatever min.cleanable.dirty.ratio says. At least \
         min.compaction.lag.ms.",
    ),
    def(
        MAX_MESSAGE_BYTES,
        int_between(0, INT_MAX),
        "1048588",
        Some("message.max.bytes"),
        Effect::Enforced,
        "Largest record batch accepted for this topic (after any recompression), up to the \
         largest batch the commit log holds (sluice.storage.batch.ceiling.bytes).",
    ),
    def(
        "message.downconversion.enable",
        BOOLEAN,
        "true",
        Some("log.message.downconversion.enable"),
        Effect::Inert,
        "No effect: Fetch is served from v4, which reads record batch v2, so nothing is ever \
         down-converted.",
    ),
    def(
        "message.format.version",
        ValueSpec::new(ConfigType::String, Check::KafkaVersion),
        "3.0-IV1",
        Some("log.message.format.version"),
        Effect::Inert,
        "No effect (deprecated in Kafka 3.0): batches are always stored in format v2.",
    ),
    def(
        MESSAGE_TIMESTAMP_AFTER_MAX_MS,
        long_from(0),
        LONG_MAX,
        Some("log.message.timestamp.after.max.ms"),
        Effect::Enforced,
        "CreateTime topics: a batch with a record timestamped more than this far after the \
         broker's clock is refused with INVALID_TIMESTAMP (KIP-937).",
    ),
    def(
        MESSAGE_TIMESTAMP_BEFORE_MAX_MS,
        long_from(0),
        LONG_MAX,
        Some("log.message.timestamp.before.max.ms"),
        Effect::Enforced,
        "CreateTime topics: a batch with a record timestamped more than this far before the \
         broker's clock is refused with INVALID_TIMESTAMP (KIP-937).",
    ),
    def(
        MESSAGE_TIMESTAMP_DIFFERENCE_MAX_MS,
        long_from(0),
        LONG_MAX,
        Some("log.message.timestamp.difference.max.ms"),
        Effect::Enforced,
        "Deprecated: the bound in both directions where message.timestamp.before.max.ms or \
         message.timestamp.after.max.ms is left at its default.",
    ),
    def(
        MESSAGE_TIMESTAMP_TYPE,
        ValueSpec::new(ConfigType::String, Check::OneOf(TIMESTAMP_TYPES)),
        "CreateTime",
        Some("log.message.timestamp.type"),
        Effect::Enforced,
        "CreateTime keeps the producer's timestamps; LogAppendTime replaces them with the \
         broker's.",
    ),
    def(
        MIN_CLEANABLE_DIRTY_RATIO,
        ValueSpec::new(ConfigType::Double, Check::Fraction { min: 0.0, max: 1.0 }),
        "0.5",
        Some("log.cleaner.min.cleanable.ratio"),
        Effect::Enforced,
        "Compacted topics: the cleaner compacts a partition once the uncompacted part of its \
         log is at least this fraction of the whole.",
    ),
    def(
        MIN_COMPACTION_LAG_MS,
        long_from(0),
        "0",
        Some("log.cleaner.min.compaction.lag.ms"),
        Effect::Enforced,
        "Compacted topics: the shortest a record stays uncompacted; the cleaner leaves records \
         younger than this as written.",
    ),
    def(
        MIN_INSYNC_REPLICAS,
        int_between(1, INT_MAX),
        "1",
        Some("min.insync.replicas"),
        Effect::Recorded,
        "Kept and shown; honoured once replication exists. A single node is its only in-sync \
         replica, so acks=all waits for the local fsync.",
    ),
    def(
        "preallocate",
        BOOLEAN,
        "false",
        Some("log.preallocate"),
        Effect::Inert,
        "No effect: each shard's commit log always reserves disk space ahead of its writes.",
    ),
    def(
        "remote.log.copy.disable",
        BOOLEAN,
        "false",
        None,
        Effect::Inert,
        "No effect: there is no tiered storage.",
    ),
    def(
        "remote.log.delete.on.disable",
        BOOLEAN,
        "false",
        None,
        Effect::Inert,
        "No effect: there is no tiered storage.",
    ),
    def(
        REMOTE_STORAGE_ENABLE,
        BOOLEAN,
        "false",
        None,
        Effect::Inert,
        "Only false: there is no tiered storage, so true is refused as Kafka refuses it when \
         tiered storage is disabled.",
    ),
    def(
        RETENTION_BYTES,
        ValueSpec::new(ConfigType::Long, Check::Any),
        "-1",
        Some("log.retention.bytes"),
        Effect::Enforced,
        "Most bytes a partition keeps; negative for no limit.",
    ),
    def(
        RETENTION_MS,
        long_from(-1),
        "604800000",
        Some("log.retention.ms"),
        Effect::Enforced,
        "How long to keep data; -1 keeps it forever. Data expires with the commit-log segment \
         holding it (by the segment's last write).",
    ),
    def(
        SEGMENT_BYTES,
        int_between(14, INT_MAX),
        "1073741824",
        Some("log.segment.bytes"),
        Effect::Inert,
        "No effect: segments belong to a shard's commit log, shared by partitions, and have \
         one size (log.segment.bytes, storage.segment_bytes).",
    ),
    def(
        "segment.index.bytes",
        int_between(4, INT_MAX),
        "10485760",
        Some("log.index.size.max.bytes"),
        Effect::Inert,
        "No effect: the consume queue has fixed-size files of 40-byte entries.",
    ),
    def(
        "segment.jitter.ms",
        long_from(0),
        "0",
        Some("log.roll.jitter.ms"),
        Effect::Inert,
        "No effect: a shard's commit log rolls as one, so there are no per-partition rolls to \
         spread out.",
    ),
    def(
        SEGMENT_MS,
        long_from(1),
        "604800000",
        Some("log.roll.ms"),
        Effect::Enforced,
        "A shard's active commit-log segment rolls once its first record is older than the \
         smallest segment.ms of the topics written to it, so retention can delete it whole.",
    ),
    def(
        DELIVERY_DELAY_MS,
        ValueSpec::new(
            ConfigType::Long,
            Check::Range {
                min: 0,
                max: crate::config::YEAR_MS as i64,
            },
        ),
        "0",
        None,
        Effect::Enforced,
        "Sluice: every record produced to this topic without a sluice.delay.level,          sluice.delay.ms or sluice.deliver.at.ms header of its own is held this many          milliseconds, then delivered at a new offset (0, the default: none). At most the          broker's delay.max_delay_ms.",
    ),
    def(
        DISK_PRESSURE_DELETE,
        BOOLEAN,
        "false",
        None,
        Effect::Enforced,
        "Sluice: true lets this topic's unexpired data be deleted, oldest first, when disk \
         usage passes retention.disk_force_clean_ratio; false (the default) keeps it and appends \
         are refused near a full disk.",
    ),
    def(
        crate::broker::retry::MAX_RECONSUME_TIMES,
        ValueSpec::new(ConfigType::Int, Check::Range { min: -1, max: 1000 }),
        "-1",
        None,
        Effect::Enforced,
        "Sluice, on a retry topic G.retry: how many times group G retries a record before it \
         goes to G.dlq; -1 (the default): the broker's delay.max_reconsume_times (16).",
    ),
    def(
        "unclean.leader.election.enable",
        BOOLEAN,
        "false",
        Some("unclean.leader.election.enable"),
        Effect::Inert,
        "A cluster elects per shard group, so the cluster default (the broker-level \
         unclean.leader.election.enable) decides: true lets a member that is not in sync lead \
         when no in-sync one is live, losing what only the old leader held; a topic's own value \
         is stored but not used. No effect on a single node.",
    ),
];

/// The definition of topic config `name`, if Sluice knows it.
pub fn config_def(name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS.iter().find(|def| def.name == name)
}

/// The topic config whose broker-level synonym is `broker_name`.
pub fn def_for_synonym(broker_name: &str) -> Option<&'static TopicConfigDef> {
    TOPIC_CONFIGS
        .iter()
        .find(|def| def.synonym == Some(broker_name))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The codec and level a topic's `compression.type` makes the broker
/// recompress to (none for `producer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recompression {
    pub codec: Codec,
    /// Kafka's level for the codec (KIP-390); unused by snappy and none.
    pub level: i32,
}

/// Broker-wide limits that topic values are checked against.
#[derive(Clone, Copy, Debug)]
pub struct TopicLimits {
    /// The largest batch the commit log holds
    /// ([`crate::config::StorageConfig::batch_ceiling_bytes`]).
    pub batch_max_bytes: u32,
    /// The longest delay a record may ask for (`delay.max_delay_ms`): the
    /// most `sluice.delivery.delay.ms` may be.
    pub max_delay_ms: u64,
}

/// A refused config: which key, what value, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConfigIssue {
    pub key: String,
    pub value: String,
    pub reason: String,
    /// The key names no topic config (the value was not looked at).
    #[serde(default)]
    pub unknown_key: bool,
}

impl ConfigIssue {
    fn new(key: &str, value: &str, reason: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
            unknown_key: false,
        }
    }
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.unknown_key {
            return write!(f, "unknown topic config {}: {}", self.key, self.reason);
        }
        write!(
            f,
            "invalid value {:?} for {}: {}",
            self.value, self.key, self.reason
        )
    }
}

impl std::error::Error for ConfigIssue {}

/// `raw` as the value of topic config `def`, in the form DescribeConfigs
/// shows it, or why it is refused: Kafka's checks, then Sluice's.
pub fn checked_value(
    def: &TopicConfigDef,
    raw: &str,
    limits: TopicLimits,
) -> Result<String, String> {
    let value = def.spec.normalize(raw)?;
    match def.name {
        MAX_MESSAGE_BYTES
            if value.parse::<i64>().unwrap_or(i64::MAX) > i64::from(limits.batch_max_bytes) =>
        {
            Err(format!(
                "above the largest batch this broker's commit log holds ({} bytes, half of \
                 storage.write_buffers x storage.flush_bytes; raise storage.write_buffers to \
                 allow more)",
                limits.batch_max_bytes
            ))
        }
        DELIVERY_DELAY_MS if value.parse::<u64>().unwrap_or(u64::MAX) > limits.max_delay_ms => {
            Err(format!(
                "above the longest delay this broker holds a record for (delay.max_delay_ms, {} ms)",
                limits.max_delay_ms
            ))
        }
        REMOTE_STORAGE_ENABLE if value == "true" => Err(
            "tiered storage is not available on this broker, so a topic cannot use remote \
             log storage"
                .to_owned(),
        ),
        _ => Ok(value),
    }
}

/// The effective configuration of one topic: every config's value, and the
/// ones Sluice acts on, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    /// Every config in [`TOPIC_CONFIGS`], in the form DescribeConfigs shows.
    values: BTreeMap<&'static str, String>,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    /// `cleanup.policy` contains `delete`: retention applies.
    pub delete_policy: bool,
    /// `cleanup.policy` contains `compact`: the cleaner compacts the topic,
    /// and Produce refuses records without a key.
    pub compact_policy: bool,
    pub delete_retention_ms: i64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio` in parts per million.
    pub min_cleanable_dirty_ratio_ppm: u32,
    pub segment_ms: i64,
    pub max_message_bytes: i32,
    pub flush_ms: i64,
    pub flush_messages: i64,
    pub timestamp_type: TimestampType,
    /// How far before and after the broker's clock a CreateTime record's
    /// timestamp may be (KIP-937, with the deprecated
    /// `message.timestamp.difference.max.ms` filling in for a default).
    pub timestamp_before_max_ms: i64,
    pub timestamp_after_max_ms: i64,
    /// `compression.type`, unless `producer`.
    pub recompression: Option<Recompression>,
    pub min_insync_replicas: i32,
    /// [`DISK_PRESSURE_DELETE`].
    pub disk_pressure_delete: bool,
    /// [`DELIVERY_DELAY_MS`].
    pub delivery_delay_ms: i64,
    /// [`crate::broker::retry::MAX_RECONSUME_TIMES`]; -1: the broker's.
    pub max_reconsume_times: i64,
}

impl TopicConfig {
    /// Defaults from the broker level: `value_of(def)` gives each config's
    /// broker-level value (already checked where it was set), or `None`
    /// for Kafka's default. A value that does not read as its type (a
    /// `sluice.toml` setting wider than Kafka's INT) is shown as given and
    /// decoded as the nearest value.
    pub fn from_broker(value_of: impl Fn(&TopicConfigDef) -> Option<String>) -> TopicConfig {
        let values = TOPIC_CONFIGS
            .iter()
            .map(|def| {
                let raw = value_of(def).unwrap_or_else(|| def.kafka_default.to_owned());
                let shown = def.spec.normalize(&raw).unwrap_or(raw);
                (def.name, shown)
            })
            .collect();
        TopicConfig::decode(values)
    }

    /// `defaults` with `overrides` applied; the first bad override is refused.
    pub fn with_overrides(
        defaults: &TopicConfig,
        overrides: &BTreeMap<String, String>,
        limits: TopicLimits,
    ) -> Result<TopicConfig, ConfigIssue> {
        let mut values = defaults.values.clone();
        for (key, raw) in overrides {
            let Some(def) = config_def(key) else {
                return Err(ConfigIssue {
                    unknown_key: true,
                    ..ConfigIssue::new(
                        key,
                        raw,
                        "no topic config has this name (Kafka's topic configs and \
                         sluice.disk.pressure.delete are known)",
                    )
                });
            };
            let value = checked_value(def, raw, limits)
                .map_err(|reason| ConfigIssue::new(key, raw, reason))?;
            values.insert(def.name, value);
        }
        check_relations(&values)?;
        Ok(TopicConfig::decode(values))
    }

    fn decode(values: BTreeMap<&'static str, String>) -> TopicConfig {
        let long = |key: &str, fallback: i64| {
            values
                .get(key)
                .and_then(|value| value.parse::<i64>().ok())
                .unwrap_or(fallback)
        };
        let int = |key: &str, fallback: i32| {
            i32::try_from(long(key, i64::from(fallback))).unwrap_or(i32::MAX)
        };
        let text = |key: &str| values.get(key).map_or("", String::as_str);
        let difference = long(MESSAGE_TIMESTAMP_DIFFERENCE_MAX_MS, i64::MAX);
        let bound = |key: &str| match long(key, i64::MAX) {
            i64::MAX => difference,
            set => set,
        };
        let level = |key: &str, fallback: i32| int(key, fallback);
        let policy = super::config_value::list_items(text(CLEANUP_POLICY));
        let recompression = match text(COMPRESSION_TYPE) {
            "gzip" => Some((Codec::Gzip, level(COMPRESSION_GZIP_LEVEL, -1))),
            "snappy" => Some((Codec::Snappy, 0)),
            "lz4" => Some((Codec::Lz4, level(COMPRESSION_LZ4_LEVEL, 9))),
            "zstd" => Some((Codec::Zstd, level(COMPRESSION_ZSTD_LEVEL, 3))),
            "uncompressed" => Some((Codec::None, 0)),
            _ => None,
        }
        .map(|(codec, level)| Recompression { codec, level });
        TopicConfig {
            retention_ms: long(RETENTION_MS, -1),
            retention_bytes: long(RETENTION_BYTES, -1),
            delete_policy: policy.contains(&CLEANUP_POLICY_DELETE),
            compact_policy: policy.contains(&CLEANUP_POLICY_COMPACT),
            delete_retention_ms: long(DELETE_RETENTION_MS, i64::MAX),
            min_compaction_lag_ms: long(MIN_COMPACTION_LAG_MS, 0),
            max_compaction_lag_ms: long(MAX_COMPACTION_LAG_MS, i64::MAX),
            min_cleanable_dirty_ratio_ppm: ratio_ppm(text(MIN_CLEANABLE_DIRTY_RATIO)),
            segment_ms: long(SEGMENT_MS, i64::MAX),
            max_message_bytes: int(MAX_MESSAGE_BYTES, i32::MAX),
            flush_ms: long(FLUSH_MS, i64::MAX),
            flush_messages: long(FLUSH_MESSAGES, i64::MAX),
            timestamp_type: match text(MESSAGE_TIMESTAMP_TYPE) {
                "LogAppendTime" => TimestampType::LogAppendTime,
                _ => TimestampType::CreateTime,
            },
            timestamp_before_max_ms: bound(MESSAGE_TIMESTAMP_BEFORE_MAX_MS),
            timestamp_after_max_ms: bound(MESSAGE_TIMESTAMP_AFTER_MAX_MS),
            recompression,
            min_insync_replicas: int(MIN_INSYNC_REPLICAS, 1),
            disk_pressure_delete: text(DISK_PRESSURE_DELETE) == "true",
            delivery_delay_ms: long(DELIVERY_DELAY_MS, 0),
            max_reconsume_times: long(crate::broker::retry::MAX_RECONSUME_TIMES, -1),
            values,
        }
    }

    /// What storage enforces for each partition of the topic. Without the
    /// `delete` cleanup policy nothing expires (retention looks at
    /// [`PartitionConfig::delete`]); with `compact` the cleaner works on it.
    pub fn partition_config(&self) -> PartitionConfig {
        PartitionConfig {
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            delete: self.delete_policy,
            compact: self.compact_policy,
            delete_retention_ms: self.delete_retention_ms,
            min_compaction_lag_ms: self.min_compaction_lag_ms,
            max_compaction_lag_ms: self.max_compaction_lag_ms,
            min_cleanable_dirty_ratio_ppm: self.min_cleanable_dirty_ratio_ppm,
            flush_ms: u64::try_from(self.flush_ms).unwrap_or(u64::MAX),
            flush_messages: u64::try_from(self.flush_messages).unwrap_or(u64::MAX),
            segment_ms: u64::try_from(self.segment_ms).unwrap_or(u64::MAX),
            disk_pressure_delete: self.disk_pressure_delete,
            copies_forward: false,
        }
    }

    /// The effective value of `key`, as DescribeConfigs shows it.
    pub fn value_of(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// `min.cleanable.dirty.ratio` (a checked fraction) in parts per million;
/// a value that does not read as one (a broker setting shown as given) is
/// Kafka's default, half.
fn ratio_ppm(value: &str) -> u32 {
    let ratio = value
        .parse::<f64>()
        .ok()
        .filter(|ratio| (0.0..=1.0).contains(ratio));
    // In [0, 1], so the product is in [0, 1e6] and fits u32.
    ratio.map_or(MIN_CLEANABLE_DIRTY_RATIO_PPM_DEFAULT, |ratio| {
        (ratio * RATIO_PPM_ONE).round() as u32
    })
}

/// Checks between configs (Kafka's `LogConfig.validateValues`).
fn check_relations(values: &BTreeMap<&'static str, String>) -> Result<(), ConfigIssue> {
    let long = |key| {
        values
            .get(key)
            .and_then(|value: &String| value.parse::<i64>().ok())
    };
    if let (Some(min), Some(max)) = (long(MIN_COMPACTION_LAG_MS), long(MAX_COMPACTION_LAG_MS))
        && min > max
    {
        return Err(ConfigIssue::new(
            MIN_COMPACTION_LAG_MS,
            &min.to_string(),
            format!("must not be above {MAX_COMPACTION_LAG_MS} ({max})"),
        ));
    }
    Ok(())
}

/// Validate overrides without applying them (CreateTopics, validate_only).
pub fn validate_overrides(
    defaults: &TopicConfig,
    overrides: &BTreeMap<String, String>,
    limits: TopicLimits,
) -> Result<(), ConfigIssue> {
    TopicConfig::with_overrides(defaults, overrides, limits).map(|_| ())
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

    fn defaults() -> TopicConfig {
        TopicConfig::from_broker(|_| None)
    }

    fn with(pairs: &[(&str, &str)]) -> Result<TopicConfig, ConfigIssue> {
        let overrides = pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        TopicConfig::with_overrides(&defaults(), &overrides, limits())
    }

    #[test]
    fn the_table_is_in_name_order_with_defaults_that_pass_their_own_checks() {
        assert!(
            TOPIC_CONFIGS
                .windows(2)
                .all(|pair| pair[0].name < pair[1].name)
        );
        for def in TOPIC_CONFIGS {
            let checked = checked_value(def, def.kafka_default, limits());
            assert_eq!(checked.as_deref(), Ok(def.kafka_default), "{}", def.name);
            assert!(!def.doc.is_empty());
        }
    }

    #[test]
    fn overrides_apply_over_defaults() {
        let config = with(&[
            (RETENTION_MS, "60000"),
            (MESSAGE_TIMESTAMP_TYPE, "LogAppendTime"),
            (COMPRESSION_TYPE, "zstd"),
            (COMPRESSION_ZSTD_LEVEL, "7"),
            ("preallocate", "TRUE"),
        ])
        .unwrap();
        assert_eq!(config.retention_ms, 60_000);
        assert_eq!(config.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(
            config.recompression,
            Some(Recompression {
                codec: Codec::Zstd,
                level: 7
            })
        );
        assert_eq!(config.value_of("preallocate"), Some("true"));
        assert_eq!(config.value_of(RETENTION_BYTES), Some("-1"));
    }

    #[test]
    fn timestamp_bounds_fall_back_to_the_deprecated_difference() {
        let config = with(&[(MESSAGE_TIMESTAMP_DIFFERENCE_MAX_MS, "5000")]).unwrap();
        assert_eq!(config.timestamp_before_max_ms, 5000);
        assert_eq!(config.timestamp_after_max_ms, 5000);
        let config = with(&[
            (MESSAGE_TIMESTAMP_DIFFERENCE_MAX_MS, "5000"),
            (MESSAGE_TIMESTAMP_AFTER_MAX_MS, "10"),
        ])
        .unwrap();
        assert_eq!(config.timestamp_before_max_ms, 5000);
        assert_eq!(config.timestamp_after_max_ms, 10);
        assert_eq!(defaults().timestamp_before_max_ms, i64::MAX);
    }

    #[test]
    fn an_empty_cleanup_policy_keeps_everything() {
        let config = with(&[(CLEANUP_POLICY, ""), (RETENTION_MS, "1000")]).unwrap();
        let partition = config.partition_config();
        assert!(!partition.delete && !partition.compact);
        let config = with(&[(RETENTION_MS, "1000")]).unwrap();
        let partition = config.partition_config();
        assert!(partition.delete && !partition.compact);
        assert_eq!(partition.retention_ms, 1000);
    }

    /// Issue 17: every policy Kafka accepts, in either order and spacing,
    /// reaches storage as its two flags.
    #[test]
    fn compact_and_delete_policies_are_accepted_and_reach_storage() {
        for (policy, shown, delete, compact) in [
            ("compact", "compact", false, true),
            ("delete", "delete", true, false),
            ("compact,delete", "compact,delete", true, true),
            (" delete , compact", "delete,compact", true, true),
            ("", "", false, false),
        ] {
            let config = with(&[(CLEANUP_POLICY, policy)]).unwrap();
            assert_eq!(config.value_of(CLEANUP_POLICY), Some(shown), "{policy:?}");
            let partition = config.partition_config();
            assert_eq!(
                (partition.delete, partition.compact),
                (delete, compact),
                "{policy:?}"
            );
        }
    }

    #[test]
    fn compaction_settings_reach_storage() {
        let config = with(&[
            (CLEANUP_POLICY, "compact"),
            (DELETE_RETENTION_MS, "1000"),
            (MIN_COMPACTION_LAG_MS, "2000"),
            (MAX_COMPACTION_LAG_MS, "3000"),
            (MIN_CLEANABLE_DIRTY_RATIO, "0.125"),
        ])
        .unwrap();
        let partition = config.partition_config();
        assert_eq!(partition.delete_retention_ms, 1000);
        assert_eq!(partition.min_compaction_lag_ms, 2000);
        assert_eq!(partition.max_compaction_lag_ms, 3000);
        assert_eq!(partition.min_cleanable_dirty_ratio_ppm, 125_000);
        for (ratio, ppm) in [("0", 0), ("1", 1_000_000), ("0.000001", 1)] {
            let config = with(&[(MIN_CLEANABLE_DIRTY_RATIO, ratio)]).unwrap();
            assert_eq!(config.min_cleanable_dirty_ratio_ppm, ppm, "{ratio}");
        }
    }

    /// Storage's defaults for a partition not yet given its topic's configs
    /// are Kafka's, the ones this table gives a topic.
    #[test]
    fn storage_defaults_match_the_topic_defaults() {
        use crate::config::{RetentionConfig, StorageConfig};
        let table = defaults().partition_config();
        let storage =
            PartitionConfig::from_defaults(&RetentionConfig::default(), &StorageConfig::default());
        assert_eq!(
            (table.delete, table.compact),
            (storage.delete, storage.compact)
        );
        assert_eq!(table.delete_retention_ms, storage.delete_retention_ms);
        assert_eq!(table.min_compaction_lag_ms, storage.min_compaction_lag_ms);
        assert_eq!(table.max_compaction_lag_ms, storage.max_compaction_lag_ms);
        assert_eq!(
            table.min_cleanable_dirty_ratio_ppm,
            storage.min_cleanable_dirty_ratio_ppm
        );
    }

    #[test]
    fn bad_values_name_the_key_and_the_reason() {
        for (key, value, reason) in [
            (RETENTION_MS, "soon", "64-bit integer"),
            (RETENTION_MS, "-2", "at least -1"),
            (MAX_MESSAGE_BYTES, "999999999", "storage.write_buffers"),
            (CLEANUP_POLICY, "shred", "not one of"),
            (CLEANUP_POLICY, "compact,shred", "not one of"),
            (COMPRESSION_TYPE, "none", "one of"),
            (COMPRESSION_GZIP_LEVEL, "0", "between 1 and 9"),
            (COMPRESSION_LZ4_LEVEL, "18", "between 1 and 17"),
            (COMPRESSION_ZSTD_LEVEL, "23", "between -131072 and 22"),
            (SEGMENT_MS, "0", "at least 1"),
            (MIN_INSYNC_REPLICAS, "0", "at least 1"),
            ("min.cleanable.dirty.ratio", "2", "between 0 and 1"),
            (
                "leader.replication.throttled.replicas",
                "all",
                "partition:broker",
            ),
            (REMOTE_STORAGE_ENABLE, "true", "tiered storage"),
            (DISK_PRESSURE_DELETE, "yes", "true or false"),
            ("no.such.key", "1", "no topic config has this name"),
        ] {
            let issue = with(&[(key, value)]).unwrap_err();
            assert_eq!(issue.key, key);
            // Found by a new user: an unknown name is not an "invalid value".
            let unknown = issue.to_string().starts_with("unknown topic config");
            assert_eq!(unknown, key == "no.such.key", "{issue}");
            assert!(
                issue.reason.contains(reason),
                "{key}={value}: {}",
                issue.reason
            );
        }
        // Kafka's LogConfig.validateValues: min.compaction.lag.ms must not
        // exceed max.compaction.lag.ms, wherever each value comes from.
        let issue =
            with(&[(MIN_COMPACTION_LAG_MS, "10"), (MAX_COMPACTION_LAG_MS, "5")]).unwrap_err();
        assert_eq!(issue.key, MIN_COMPACTION_LAG_MS);
        assert!(issue.reason.contains(MAX_COMPACTION_LAG_MS), "{issue}");
        assert!(with(&[(MAX_COMPACTION_LAG_MS, "0")]).is_err(), "below 1");
        assert!(with(&[(MIN_COMPACTION_LAG_MS, "5"), (MAX_COMPACTION_LAG_MS, "5")]).is_ok());
    }

    #[test]
    fn max_message_bytes_may_go_up_to_the_commit_logs_ceiling() {
        assert_eq!(
            with(&[(MAX_MESSAGE_BYTES, "2097164")])
                .unwrap()
                .max_message_bytes,
            2_097_164
        );
        let ceiling = (8 << 20).to_string();
        assert!(with(&[(MAX_MESSAGE_BYTES, &ceiling)]).is_ok());
        let above = ((8 << 20) + 1).to_string();
        assert!(with(&[(MAX_MESSAGE_BYTES, &above)]).is_err());
    }

    /// A topic delay longer than a record may ask for is refused where it
    /// is set, not at every Produce.
    #[test]
    fn a_topic_delay_is_at_most_the_brokers_longest_delay() {
        let month = (30 * 24 * 3_600_000u64).to_string();
        let config = with(&[(DELIVERY_DELAY_MS, &month)]).unwrap();
        assert_eq!(config.delivery_delay_ms, 2_592_000_000);
        let above = (30 * 24 * 3_600_000u64 + 1).to_string();
        let refused = with(&[(DELIVERY_DELAY_MS, &above)]).unwrap_err();
        assert!(refused.reason.contains("delay.max_delay_ms"), "{refused:?}");
    }
}
