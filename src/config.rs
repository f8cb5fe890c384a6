//! Every setting, its default and its limits.
//!
//! `sluice serve` reads `sluice.toml` (all keys optional) and then applies
//! command-line overrides. Defaults must serve a laptop. [`Config::validate`]
//! checks each value's range and the relations between values, and its errors
//! name the key and the fix, so a bad file never gets as far as a shard.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::storage::frame::FRAME_HEADER_BYTES;

mod cluster;
mod security;
pub use cluster::{ClusterConfig, ClusterFlags, NODE_ID_UNSET, Peer, PeerSyntax};
pub use security::{
    AuthorizerKind, BOOTSTRAP_PASSWORD_ENV, ClientAuth, ListenerConfig, SaslMechanism,
    SecurityConfig, SecurityProtocol, TlsConfig,
};

/// O_DIRECT and the kernel's logical block size for NVMe: writes, buffers and
/// file offsets are aligned to this in `direct` write mode.
pub const DIRECT_IO_ALIGNMENT_BYTES: u32 = 4096;
const _: () = assert!(DIRECT_IO_ALIGNMENT_BYTES.is_power_of_two());
/// Kafka's default `message.max.bytes` (1 MiB plus the record-batch overhead).
pub const MESSAGE_MAX_BYTES_DEFAULT: u32 = 1_048_588;
/// Kafka's default `log.roll.ms` / `segment.ms`: 7 days.
pub const SEGMENT_MS_DEFAULT: u64 = 7 * 24 * HOUR_MS as u64;
/// Largest value of a `[kafka]` time or size Kafka keeps in an `int`
/// (`i32::MAX`: about 24.8 days in milliseconds, 2 GiB in bytes).
const KAFKA_INT_MAX: u64 = i32::MAX as u64;
/// Default `kafka.fetch_max_bytes`: Kafka's `fetch.max.bytes` (55 MiB).
pub const FETCH_MAX_BYTES_DEFAULT: u64 = 57_671_680;
/// Default `storage.decompressed_batch_ratio_max`: see the field.
pub const DECOMPRESSED_BATCH_RATIO_MAX_DEFAULT: u32 = 32;
/// Largest `storage.decompressed_batch_ratio_max` accepted.
pub const DECOMPRESSED_BATCH_RATIO_LIMIT: u32 = 1024;
const MIB: u64 = 1024 * 1024;
/// Smallest `storage.producer_snapshot_interval_bytes`: a snapshot per
/// mebibyte of log already costs more than the rescan it saves.
const PRODUCER_SNAPSHOT_INTERVAL_BYTES_MIN: u64 = MIB;
const HOUR_MS: i64 = 3600 * 1000;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where shard directories live. Created if missing.
    pub data_dir: PathBuf,
    /// Number of shards (pinned threads, one commit log each); 0 = one per available core.
    pub shards: usize,
    /// `auto` (io_uring, else epoll with a logged reason), `io_uring` (refuse to
    /// start without it) or `epoll`.
    pub io_backend: IoBackendSetting,
    /// Pin each shard thread to one core. Turn off only when sharing a host.
    pub pin_shards: bool,
    pub kafka: KafkaConfig,
    pub metrics: MetricsConfig,
    pub storage: StorageConfig,
    pub retention: RetentionConfig,
    pub groups: GroupsConfig,
    pub transactions: TransactionsConfig,
    /// `[delay]`: delayed delivery and retries.
    pub delay: DelayConfig,
    /// `[security]`: client authentication (issue 20).
    pub security: SecurityConfig,
    /// `[cluster]`: this node's place in a cluster (issue 15). Absent (the
    /// default): one node, exactly as without clustering. See
    /// [`ClusterConfig`]; `--node-id`, `--cluster-listen` and
    /// `--cluster-peers` create it.
    pub cluster: Option<ClusterConfig>,
}

/// The transaction coordinator (KIP-98): where transactions are recorded
/// and how long they and their ids may live.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransactionsConfig {
    /// Partitions of the internal `__transaction_state` topic; a
    /// transactional id's coordinator is the shard owning its partition.
    /// Default 50, 1 to 1000; fixed once the topic exists (Kafka
    /// `transaction.state.log.num.partitions`).
    pub state_topic_partitions: u32,
    /// Largest `transaction.timeout.ms` a producer may ask for; larger gets
    /// INVALID_TRANSACTION_TIMEOUT. Default 900000 (15 min), at least 1000
    /// (Kafka `transaction.max.timeout.ms`).
    pub max_timeout_ms: u64,
    /// A transactional id idle this long (no transaction in progress) is
    /// forgotten. Default 604800000 (7 days), at least 1000 (Kafka
    /// `transactional.id.expiration.ms`).
    pub id_expiration_ms: u64,
    /// How often open transactions are checked against their timeout (the
    /// overdue ones are aborted and their producers fenced). Default 10000,
    /// at least 10 (Kafka
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`).
    pub abort_check_interval_ms: u64,
}

impl Default for TransactionsConfig {
    fn default() -> Self {
        TransactionsConfig {
            state_topic_partitions: 50,
            max_timeout_ms: 900_000,
            id_expiration_ms: 7 * 24 * HOUR_MS as u64,
            abort_check_interval_ms: 10_000,
        }
    }
}

impl TransactionsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=1000).contains(&self.state_topic_partitions) {
            return invalid(
                "transactions.state_topic_partitions",
                self.state_topic_partitions,
                "between 1 and 1000",
            );
        }
        if !(1000..=i32::MAX as u64).contains(&self.max_timeout_ms) {
            return invalid(
                "transactions.max_timeout_ms",
                self.max_timeout_ms,
                format!("between 1000 and {}", i32::MAX),
            );
        }
        if self.id_expiration_ms < 1000 {
            return invalid(
                "transactions.id_expiration_ms",
                self.id_expiration_ms,
                "at least 1000",
            );
        }
        if !(10..=3_600_000).contains(&self.abort_check_interval_ms) {
            return invalid(
                "transactions.abort_check_interval_ms",
                self.abort_check_interval_ms,
                "between 10 and 3600000",
            );
        }
        Ok(())
    }
}

/// Consumer groups: the coordinator and committed offsets.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Partitions of the internal `__consumer_offsets` topic; a group's
    /// coordinator is the shard owning its partition. Fixed once the topic
    /// exists (a later change is logged and ignored).
    pub offsets_topic_partitions: u32,
    /// Committed offsets of a group with no members expire this long after
    /// the later of their commit and the group becoming empty (Kafka
    /// `offsets.retention.minutes`).
    pub offsets_retention_ms: u64,
    /// How long a new group waits for more members before its first
    /// assignment (Kafka `group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: u64,
    /// Smallest and largest session timeout a member may ask for (Kafka
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms`).
    pub session_timeout_min_ms: u64,
    pub session_timeout_max_ms: u64,
    /// Most members one group may have (Kafka `group.max.size`, and
    /// `group.consumer.max.size` for consumer-protocol groups).
    pub members_max: u32,
    /// How often a consumer-protocol (KIP-848) member heartbeats, told to
    /// it in every ConsumerGroupHeartbeat answer (Kafka
    /// `group.consumer.heartbeat.interval.ms`). Default 5000; below
    /// `consumer_session_timeout_ms`.
    pub consumer_heartbeat_interval_ms: u64,
    /// A consumer-protocol member that does not heartbeat for this long is
    /// removed and its partitions reassigned (Kafka
    /// `group.consumer.session.timeout.ms`). Default 45000.
    pub consumer_session_timeout_ms: u64,
    /// Range a group's `consumer.session.timeout.ms` config may take (Kafka
    /// `group.consumer.min.session.timeout.ms` / `...max...`; defaults
    /// 45000 and 60000). `consumer_session_timeout_ms` lies within it.
    pub consumer_session_timeout_min_ms: u64,
    pub consumer_session_timeout_max_ms: u64,
    /// Range a group's `consumer.heartbeat.interval.ms` config may take
    /// (Kafka `group.consumer.min.heartbeat.interval.ms` / `...max...`;
    /// defaults 5000 and 15000). `consumer_heartbeat_interval_ms` lies
    /// within it.
    pub consumer_heartbeat_interval_min_ms: u64,
    pub consumer_heartbeat_interval_max_ms: u64,
    /// The server-side assignors consumer-protocol members may name, the
    /// first being the default (Kafka `group.consumer.assignors`): any of
    /// `uniform` and `range`. Default both, `uniform` first.
    pub consumer_assignors: Vec<String>,
    /// Whether a group switches protocol while it has members (Kafka
    /// `group.consumer.migration.policy`): `upgrade` lets a
    /// ConsumerGroupHeartbeat turn a classic group into a consumer group,
    /// `downgrade` lets the last consumer-protocol member leaving turn a
    /// consumer group whose other members joined with JoinGroup back into a
    /// classic one, `bidirectional` (the default, as in Kafka 4) both,
    /// `disabled` neither. An empty group switches either way regardless.
    pub consumer_migration_policy: MigrationPolicy,
    /// Largest metadata string a commit may carry (Kafka
    /// `offset.metadata.max.bytes`). Default 4096; at most 32767, the
    /// longest string an offset record holds (i16 length).
    pub offset_metadata_max_bytes: u32,
}

/// The Kafka listener and how it treats clients.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Address every shard listens on (SO_REUSEPORT), `host:port`.
    pub listen: String,
    /// `host:port` clients are told to connect to; empty = `listen` (with the
    /// host name instead of an unspecified address).
    pub advertised: String,
    /// This broker's node id in Metadata responses.
    pub node_id: i32,
    /// Largest request a client may send (Kafka `socket.request.max.bytes`).
    pub request_max_bytes: u32,
    /// Requests one connection may have in progress at once (pipelining);
    /// their total size is also capped at `request_max_bytes`. Responses
    /// still go out in request order.
    pub requests_in_flight_max: u32,
    /// Open client connections per broker; more are accepted and closed at once.
    pub connections_max: u32,
    /// Close connections idle for longer than this (Kafka `connections.max.idle.ms`):
    /// nothing in progress and no request read whole or answered. Bytes of a
    /// request still arriving are not activity.
    pub idle_timeout_ms: u64,
    /// Close a connection whose request is not complete this long after its
    /// first byte arrived (time waiting for `queued_requests_max_bytes` does
    /// not count), with a log line; the same span as a client's
    /// `request.timeout.ms` default. Stops a client that trickles or stalls
    /// a request from holding its connection and its share of the budget.
    /// Default 30000; must be positive.
    pub request_read_timeout_ms: u64,
    /// Bytes of requests being read or served at once, across all
    /// connections and shards (Kafka `queued.max.request.bytes`). A request
    /// takes its declared size when its size prefix arrives and gives it
    /// back when it is done; while the budget cannot cover a request, its
    /// connection stops reading and TCP pushes back on the client. Bounds
    /// the memory clients can make the broker hold, whatever sizes they
    /// declare. Default 512 MiB (five requests of the largest default size,
    /// hundreds of typical 1 MiB produce requests); at least
    /// `request_max_bytes`, so any allowed request can be read.
    pub queued_requests_max_bytes: u64,
    /// Longest a Fetch waits for `min_bytes` (the client's `max_wait_ms` is
    /// capped at this). Kafka waits as long as the client asks; Sluice
    /// caps it so a long poll cannot hold a connection past what any client
    /// waits for (clients default to 500 ms and time requests out after
    /// 30 s). Default 30000; must be positive.
    pub fetch_wait_max_ms: u64,
    /// Client quotas (`broker/quota.rs`) measure a rate over this many
    /// samples (Kafka's `quota.window.num`). Default 11; 2 to 100.
    pub quota_window_samples: u32,
    /// Each sample's length, in ms (Kafka's `quota.window.size.seconds`).
    /// Default 1000; 1 to 3600000.
    pub quota_window_ms: u64,
    /// Most bytes of record batches one Fetch response carries (Kafka's
    /// broker `fetch.max.bytes`, KIP-541): a client's larger `max_bytes` is
    /// capped at this, and the owner shards stop reading partitions once it
    /// is used up, so a Fetch that lists partitions many times over with
    /// huge per-partition limits costs no more than this. The first batch
    /// found is still sent whole (KIP-74). Default 57671680 (55 MiB, as
    /// Kafka); must be positive.
    pub fetch_max_bytes: u64,
    /// Create unknown topics on Metadata and Produce requests.
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, and the CreateTopics default.
    pub default_partitions: u32,
    /// Most partitions a topic may have.
    pub partitions_per_topic_max: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the metrics and health endpoint, `host:port`.
    pub listen: String,
    /// How often each shard sets its gauges (busy ratio, log sizes,
    /// consumer lag). Scrapes in between see the last values.
    pub refresh_interval_ms: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IoBackendSetting {
    Auto,
    IoUring,
    Epoll,
}

/// `groups.consumer_migration_policy`: which online protocol switches a
/// group with members may make (Kafka `group.consumer.migration.policy`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MigrationPolicy {
    Disabled,
    Upgrade,
    Downgrade,
    Bidirectional,
}

impl MigrationPolicy {
    pub fn upgrade_enabled(self) -> bool {
        matches!(
            self,
            MigrationPolicy::Upgrade | MigrationPolicy::Bidirectional
        )
    }

    pub fn downgrade_enabled(self) -> bool {
        matches!(
            self,
            MigrationPolicy::Downgrade | MigrationPolicy::Bidirectional
        )
    }
}

/// `storage.cold_reads`: how fetches read segment files.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ColdReads {
    /// O_DIRECT into reused buffers, then a copy to the socket.
    Direct,
    /// Spliced through the page cache.
    PageCache,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// O_DIRECT: no page-cache copy, aligned writes (the default; see ARCHITECTURE.md).
    Direct,
    /// Through the page cache.
    Buffered,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Commit-log segment size; a multiple of `flush_bytes`.
    pub segment_bytes: u64,
    /// The largest step of disk space reserved (fallocate) ahead of the
    /// commit log's write position, in bytes: a fresh log reserves 1 MiB
    /// and each step doubles up to this, off the shard thread, so a fresh
    /// broker takes a few MiB while a busy log never waits for space.
    /// Default 64 MiB; at least 4096 and a multiple of it.
    pub preallocate_bytes: u64,
    /// Sync by bytes as well as by time: once this many bytes of a shard's
    /// commit log are written and not yet durable, an fdatasync is forced,
    /// whatever the topics' `flush.ms` allows. Bounds what acks=1 data can
    /// lose in a power cut and the length of any one fdatasync (the acks=1
    /// latency tail: O_DIRECT writes into unwritten extents wait for the
    /// journal commit of a running fdatasync, which grows with what it
    /// covers). Default 8 MiB (measured in benches/README.md "acks=1");
    /// at least `flush_bytes`.
    pub sync_interval_bytes: u64,
    /// Memory per shard for the tail cache: the newest frames of its commit
    /// log, copied there as they are appended, so fetches of recently
    /// written data (tailing consumers, followers, a consumer a little
    /// behind) are answered from memory instead of disk (O_DIRECT writes
    /// leave nothing in the page cache). Older data is read from the
    /// segment files. Default 256 MiB; 0 turns the cache off.
    pub tail_cache_bytes: u64,
    /// How fetches read what the tail cache no longer holds, with
    /// `write_mode = "direct"`: `"direct"` (the default) reads it with
    /// O_DIRECT into a few reused buffers per shard and copies it to the
    /// socket, leaving the page cache alone; `"page_cache"` splices it
    /// through the page cache (zero-copy, but it fills the cache with data
    /// read once). With `write_mode = "buffered"` fetches always use the
    /// page cache, which holds what was written. See
    /// `src/kafka/cold_read.rs`.
    pub cold_reads: ColdReads,
    pub write_mode: WriteMode,
    /// Size of one write buffer: a write is issued as soon as this much is buffered.
    pub flush_bytes: u32,
    /// Number of write buffers per shard (memory = `flush_bytes` x this).
    pub write_buffers: u32,
    /// Writes in flight at once per shard (queue depth towards the disk).
    pub inflight_writes_max: u32,
    /// Longest an appended batch waits in a buffer while the shard stays busy.
    pub flush_interval_ms: u64,
    /// How often the checkpoint (durable position, queue positions) is written.
    pub checkpoint_interval_ms: u64,
    /// Kafka's `log.cleaner.io.max.bytes.per.second`: the log cleaner of
    /// each shard reads and writes at most this many bytes per second
    /// together. Default 64 MiB/s.
    pub cleaner_io_max_bytes_per_second: u64,
    /// Kafka's `log.cleaner.dedupe.buffer.size`: memory of each shard's
    /// key map; a pass holds at most this ÷ 24 keys. Default 128 MiB.
    pub cleaner_dedupe_buffer_bytes: u64,
    /// Kafka's `log.cleaner.backoff.ms`: how often each shard's cleaner
    /// looks for a partition to compact. Default 15 s.
    pub cleaner_backoff_ms: u64,
    /// Kafka's `message.max.bytes`: the default of every topic's
    /// `max.message.bytes`, and the largest batch the broker writes to its
    /// internal topics. A topic may allow more, up to
    /// [`StorageConfig::batch_ceiling_bytes`]. Default 1048588.
    pub message_max_bytes: u32,
    /// Kafka's `log.roll.ms`: the default of every topic's `segment.ms`. A
    /// shard's active segment is rolled once its first frame is older than
    /// the smallest `segment.ms` of the topics written to it (see
    /// ARCHITECTURE.md, Retention), so retention can delete it whole.
    /// Default 604800000 (7 days, as Kafka); at least 1.
    pub segment_ms: u64,
    /// The soonest a shard's active segment is rolled for its age, whatever
    /// `segment.ms` a topic asks for. Segments are shared by every
    /// partition of the shard, and one holding any retained batch stays
    /// (with two open files) until the oldest end of the log expires, so
    /// a topic with `segment.ms=1` would otherwise create a file per
    /// append until the process runs out of descriptors. Default 600000
    /// (10 minutes); at least 1.
    pub segment_roll_min_ms: u64,
    /// A compressed batch may decompress to at most this many times its
    /// topic's `max.message.bytes` (at Produce) or `message_max_bytes` (when
    /// a stored batch is read: ListOffsets by time, the offsets replay).
    /// Kafka has no such cap; it bounds the CPU one batch can cost (the
    /// broker streams a batch through a fixed buffer, so memory is bounded
    /// anyway). 32 lets a full 1 MiB batch of text that compresses 30x
    /// through (librdkafka never sends more than `message.max.bytes`
    /// uncompressed; the Java producer sizes batches by compressed size) and
    /// costs at most 32 MiB of decompression, tens of milliseconds, per
    /// batch. Larger: MESSAGE_TOO_LARGE. 1 to 1024.
    pub decompressed_batch_ratio_max: u32,
    /// Entries per consume-queue file (40 bytes each) for new queues; an
    /// existing queue keeps the size its files record.
    pub consume_queue_entries_per_file: u32,
    /// How far the commit log advances between two snapshots of the
    /// idempotent producers' state (also written at shutdown): recovery
    /// after a crash rescans at most about this much for it. Default
    /// 256 MiB; at least 1 MiB.
    pub producer_snapshot_interval_bytes: u64,
    /// An idempotent producer whose newest batch on a partition is this much
    /// older (by the batch's timestamp, against the broker's clock) is
    /// forgotten there; its next batch is accepted as a new producer's
    /// (Kafka's `producer.id.expiration.ms`, KIP-360). Default 86 400 000
    /// (one day); positive, at most `i32::MAX` (Kafka keeps it in an `int`).
    pub producer_id_expiration_ms: u64,
    /// How often expired producers are looked for, by the retention task.
    /// Default 600 000 (Kafka's `producer.id.expiration.check.interval.ms`);
    /// positive, at most `i32::MAX`.
    pub producer_id_expiration_check_interval_ms: u64,
    /// The span of each shard's delayed-delivery timer wheel, seconds: one
    /// 16-byte slot per second in memory (7 days: 9.7 MB). A record due
    /// later waits in the wheel's last slot and is listed again when that
    /// slot comes up. Default 604800 (7 days); 60 to 31536000 (a year).
    pub timer_wheel_window_s: u64,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Default topic `retention.ms`; -1 keeps data forever.
    pub retention_ms: i64,
    /// Default topic `retention.bytes` per partition; -1 means no size limit.
    pub retention_bytes: i64,
    /// Default topic `flush.ms`: acks=1 data is fsynced within this long.
    pub flush_ms: u64,
    /// How often retention runs.
    pub check_interval_ms: u64,
    /// How often disk usage is sampled.
    pub disk_check_interval_ms: u64,
    /// Above this used fraction, expired segments are deleted at every disk check.
    pub disk_clean_ratio: f64,
    /// Above this, the oldest segments are deleted even if not expired, as
    /// long as every partition with unexpired data in them belongs to a topic
    /// with `sluice.disk.pressure.delete = true` (off by default, so by
    /// default nothing acknowledged is deleted before it expires).
    pub disk_force_clean_ratio: f64,
    /// Above this, appends are rejected with a retriable error.
    pub disk_reject_ratio: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            shards: 0,
            io_backend: IoBackendSetting::Auto,
            pin_shards: true,
            kafka: KafkaConfig::default(),
            metrics: MetricsConfig::default(),
            storage: StorageConfig::default(),
            retention: RetentionConfig::default(),
            groups: GroupsConfig::default(),
            transactions: TransactionsConfig::default(),
            delay: DelayConfig::default(),
            security: SecurityConfig::default(),
            cluster: None,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            listen: "127.0.0.1:9092".to_owned(),
            advertised: String::new(),
            node_id: 0,
            request_max_bytes: 100 * MIB as u32,
            requests_in_flight_max: 32,
            connections_max: 10_000,
            idle_timeout_ms: 600_000,
            request_read_timeout_ms: 30_000,
            queued_requests_max_bytes: 512 * MIB,
            fetch_wait_max_ms: 30_000,
            quota_window_samples: 11,
            quota_window_ms: 1000,
            fetch_max_bytes: FETCH_MAX_BYTES_DEFAULT,
            auto_create_topics: true,
            default_partitions: 1,
            partitions_per_topic_max: 10_000,
        }
    }
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            offsets_topic_partitions: 50,
            offsets_retention_ms: 7 * 24 * HOUR_MS as u64,
            initial_rebalance_delay_ms: 3000,
            session_timeout_min_ms: 6000,
            session_timeout_max_ms: 1_800_000,
            members_max: 1000,
            consumer_heartbeat_interval_ms: 5000,
            consumer_session_timeout_ms: 45_000,
            consumer_session_timeout_min_ms: 45_000,
            consumer_session_timeout_max_ms: 60_000,
            consumer_heartbeat_interval_min_ms: 5000,
            consumer_heartbeat_interval_max_ms: 15_000,
            consumer_assignors: vec!["uniform".to_owned(), "range".to_owned()],
            consumer_migration_policy: MigrationPolicy::Bidirectional,
            offset_metadata_max_bytes: 4096,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: "127.0.0.1:9644".to_owned(),
            refresh_interval_ms: 5000,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            segment_bytes: 1024 * MIB,
            preallocate_bytes: 64 * MIB,
            sync_interval_bytes: 8 * MIB,
            tail_cache_bytes: 256 * MIB,
            cold_reads: ColdReads::Direct,
            write_mode: WriteMode::Direct,
            flush_bytes: 2 * MIB as u32,
            write_buffers: 8,
            inflight_writes_max: 4,
            flush_interval_ms: 2,
            checkpoint_interval_ms: 1000,
            cleaner_io_max_bytes_per_second: 64 * MIB,
            cleaner_dedupe_buffer_bytes: 128 * MIB,
            cleaner_backoff_ms: 15_000,
            message_max_bytes: MESSAGE_MAX_BYTES_DEFAULT,
            segment_ms: SEGMENT_MS_DEFAULT,
            segment_roll_min_ms: 600_000,
            decompressed_batch_ratio_max: DECOMPRESSED_BATCH_RATIO_MAX_DEFAULT,
            consume_queue_entries_per_file: 262_144,
            producer_snapshot_interval_bytes: 256 * MIB,
            producer_id_expiration_ms: 24 * HOUR_MS as u64,
            producer_id_expiration_check_interval_ms: 600_000,
            timer_wheel_window_s: 7 * 24 * 3600,
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            retention_ms: 72 * HOUR_MS,
            retention_bytes: -1,
            flush_ms: 1000,
            check_interval_ms: 10_000,
            disk_check_interval_ms: 1000,
            disk_clean_ratio: 0.75,
            disk_force_clean_ratio: 0.85,
            disk_reject_ratio: 0.90,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("setting `{key}` = {value} is invalid: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("setting `{key}` is missing: {fix}")]
    Missing { key: &'static str, fix: String },
    #[error(
        "setting `{key}` = {value:?} is not an address ({source}): expected an IP address and \
         port, e.g. 127.0.0.1:9092 or [::]:9092 (host names are not resolved)"
    )]
    InvalidAddress {
        key: &'static str,
        value: String,
        #[source]
        source: std::net::AddrParseError,
    },
}

impl Config {
    /// Load `path`, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The settings in `text` (TOML); keys left out keep their defaults,
    /// unknown keys are refused. Not validated: see [`Config::validate`].
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// Shards to run: the setting, or one per available core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            return self.shards;
        }
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shards > usize::from(u16::MAX) {
            return invalid("shards", self.shards, "at most 65535 shards");
        }
        self.kafka.validate(&self.storage)?;
        self.security.validate()?;
        parse_address("metrics.listen", &self.metrics.listen)?;
        if !(100..=3_600_000).contains(&self.metrics.refresh_interval_ms) {
            return invalid(
                "metrics.refresh_interval_ms",
                self.metrics.refresh_interval_ms,
                "between 100 and 3600000",
            );
        }
        self.storage.validate()?;
        self.retention.validate()?;
        self.groups.validate()?;
        self.transactions.validate()?;
        self.delay.validate()?;
        match &self.cluster {
            Some(cluster) => cluster.validate(&self.kafka, &self.metrics),
            None => Ok(()),
        }
    }
}

impl GroupsConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.offsets_topic_partitions == 0 || self.offsets_topic_partitions > 1000 {
            return invalid(
                "groups.offsets_topic_partitions",
                self.offsets_topic_partitions,
                "between 1 and 1000",
            );
        }
        for (key, value) in [
            ("groups.offsets_retention_ms", self.offsets_retention_ms),
            ("groups.session_timeout_min_ms", self.session_timeout_min_ms),
            ("groups.members_max", u64::from(self.members_max)),
            (
                "groups.consumer_heartbeat_interval_ms",
                self.consumer_heartbeat_interval_ms,
            ),
        ] {
            if value == 0 {
                return invalid(key, value, "must be positive");
            }
        }
        if self.session_timeout_max_ms < self.session_timeout_min_ms {
            return invalid(
                "groups.session_timeout_max_ms",
                self.session_timeout_max_ms,
                "must be at least groups.session_timeout_min_ms",
            );
        }
        if self.consumer_session_timeout_ms <= self.consumer_heartbeat_interval_ms
            || self.consumer_session_timeout_ms > i32::MAX as u64
        {
            return invalid(
                "groups.consumer_session_timeout_ms",
                self.consumer_session_timeout_ms,
                "must be above groups.consumer_heartbeat_interval_ms and fit an i32",
            );
        }
        for (default_key, default, min_key, min, max_key, max) in [
            (
                "groups.consumer_session_timeout_ms",
                self.consumer_session_timeout_ms,
                "groups.consumer_session_timeout_min_ms",
                self.consumer_session_timeout_min_ms,
                "groups.consumer_session_timeout_max_ms",
                self.consumer_session_timeout_max_ms,
            ),
            (
                "groups.consumer_heartbeat_interval_ms",
                self.consumer_heartbeat_interval_ms,
                "groups.consumer_heartbeat_interval_min_ms",
                self.consumer_heartbeat_interval_min_ms,
                "groups.consumer_heartbeat_interval_max_ms",
                self.consumer_heartbeat_interval_max_ms,
            ),
        ] {
            if min == 0 {
                return invalid(min_key, min, "must be positive");
            }
            if max > i32::MAX as u64 {
                return invalid(max_key, max, "must fit an i32");
            }
            if !(min..=max).contains(&default) {
                return invalid(
                    default_key,
                    default,
                    format!("must lie within {min_key} ({min}) and {max_key} ({max})"),
                );
            }
        }
        let known = crate::broker::group::consumer::assignor::ASSIGNORS;
        if self.consumer_assignors.is_empty() {
            return invalid(
                "groups.consumer_assignors",
                "[]",
                format!("name at least one of {known:?}"),
            );
        }
        for name in &self.consumer_assignors {
            if !known.contains(&name.as_str()) {
                return invalid(
                    "groups.consumer_assignors",
                    name,
                    format!("unknown assignor; known: {known:?}"),
                );
            }
        }
        let metadata_max = crate::broker::group::offsets::RECORD_STRING_BYTES_MAX;
        if self.offset_metadata_max_bytes as usize > metadata_max {
            return invalid(
                "groups.offset_metadata_max_bytes",
                self.offset_metadata_max_bytes,
                format!("at most {metadata_max}, the longest string an offset record holds"),
            );
        }
        Ok(())
    }
}

impl KafkaConfig {
    fn validate(&self, storage: &StorageConfig) -> Result<(), ConfigError> {
        parse_address("kafka.listen", &self.listen)?;
        check_advertised("kafka.advertised", &self.advertised)?;
        if self.node_id < 0 {
            return invalid("kafka.node_id", self.node_id, "must be >= 0");
        }
        if self.request_max_bytes < storage.message_max_bytes {
            return invalid(
                "kafka.request_max_bytes",
                self.request_max_bytes,
                format!(
                    "must be at least storage.message_max_bytes ({}) so the largest batch fits",
                    storage.message_max_bytes
                ),
            );
        }
        for (key, value) in [
            (
                "kafka.requests_in_flight_max",
                u64::from(self.requests_in_flight_max),
            ),
            ("kafka.connections_max", u64::from(self.connections_max)),
            ("kafka.idle_timeout_ms", self.idle_timeout_ms),
            (
                "kafka.request_read_timeout_ms",
                self.request_read_timeout_ms,
            ),
            ("kafka.fetch_wait_max_ms", self.fetch_wait_max_ms),
            ("kafka.fetch_max_bytes", self.fetch_max_bytes),
        ] {
            if value == 0 {
                return invalid(key, value, "must be positive");
            }
        }
        if !(2..=100).contains(&self.quota_window_samples) {
            return invalid(
                "kafka.quota_window_samples",
                self.quota_window_samples,
                "must be 2 to 100",
            );
        }
        if !(1..=3_600_000).contains(&self.quota_window_ms) {
            return invalid(
                "kafka.quota_window_ms",
                self.quota_window_ms,
                "must be 1 to 3600000",
            );
        }
        for (key, value) in [
            ("kafka.idle_timeout_ms", self.idle_timeout_ms),
            (
                "kafka.request_read_timeout_ms",
                self.request_read_timeout_ms,
            ),
            ("kafka.fetch_wait_max_ms", self.fetch_wait_max_ms),
            ("kafka.fetch_max_bytes", self.fetch_max_bytes),
        ] {
            if value > KAFKA_INT_MAX {
                return invalid(
                    key,
                    value,
                    format!("must be at most {KAFKA_INT_MAX} (Kafka's int settings' limit)"),
                );
            }
        }
        if self.queued_requests_max_bytes < u64::from(self.request_max_bytes) {
            return invalid(
                "kafka.queued_requests_max_bytes",
                self.queued_requests_max_bytes,
                format!(
                    "must be at least kafka.request_max_bytes ({}) so the largest request can be read",
                    self.request_max_bytes
                ),
            );
        }
        if self.default_partitions == 0 || self.default_partitions > self.partitions_per_topic_max {
            return invalid(
                "kafka.default_partitions",
                self.default_partitions,
                "between 1 and kafka.partitions_per_topic_max",
            );
        }
        Ok(())
    }

    /// `host:port` to put in Metadata responses.
    pub fn advertised_address(&self) -> (String, u16) {
        advertised_or_listen(&self.advertised, &self.listen)
    }
}

/// `advertised` as host and port, or when it is empty `listen` with this
/// host's name in place of an unspecified address (port 9092 where none is
/// given).
pub fn advertised_or_listen(advertised: &str, listen: &str) -> (String, u16) {
    let address = if advertised.is_empty() {
        listen
    } else {
        advertised
    };
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "9092"));
    let port = port.parse().unwrap_or(9092);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = match host {
        "0.0.0.0" | "::" | "" => hostname().unwrap_or_else(|| "localhost".to_owned()),
        host => host.to_owned(),
    };
    (host, port)
}

/// An advertised `host:port` (empty: the listen address).
fn check_advertised(key: &'static str, advertised: &str) -> Result<(), ConfigError> {
    if !advertised.is_empty() {
        let (host, port) = advertised.rsplit_once(':').unwrap_or(("", ""));
        if host.is_empty() || port.parse::<u16>().is_err() {
            return invalid(key, advertised, "expected host:port");
        }
    }
    Ok(())
}

/// The listener address `value` of setting `key` (an IP address and port).
pub fn parse_address(key: &'static str, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    value.parse().map_err(|source| ConfigError::InvalidAddress {
        key,
        value: value.to_owned(),
        source,
    })
}

fn hostname() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most buffer.len() bytes into our buffer.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return None;
    }
    let end = buffer
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(buffer.len());
    String::from_utf8(buffer[..end].to_vec()).ok()
}

impl StorageConfig {
    /// Whether fetches read segment files with O_DIRECT
    /// (`storage.cold_reads`, effective only with direct writes).
    pub fn direct_cold_reads(&self) -> bool {
        self.write_mode == WriteMode::Direct && self.cold_reads == ColdReads::Direct
    }

    /// Alignment of writes and buffers for the configured write mode.
    pub fn block_bytes(&self) -> u32 {
        match self.write_mode {
            WriteMode::Direct => DIRECT_IO_ALIGNMENT_BYTES,
            WriteMode::Buffered => 1,
        }
    }

    /// Limits a stored batch is read under: the largest batch storage
    /// holds, and the decompressed cap relative to it (no topic may allow
    /// more).
    pub fn stored_batch_limits(&self) -> crate::record_batch::BatchLimits {
        crate::record_batch::BatchLimits::new(
            self.batch_ceiling_bytes() as usize,
            self.decompressed_batch_ratio_max,
        )
    }

    /// The largest record batch the commit log can hold, and so the most
    /// any topic's `max.message.bytes` may be: a frame must fit in a
    /// segment, and the write buffers must hold two of the largest frames
    /// (the rule `validate` applies to `message_max_bytes`). With the
    /// defaults, 16 x 1 MiB buffers: 8 MiB less the frame header. Kafka's
    /// only bound is the request size (`kafka.request_max_bytes`, 100 MiB);
    /// here the write buffers are the bound, and raising
    /// `storage.write_buffers` raises it.
    pub fn batch_ceiling_bytes(&self) -> u32 {
        let buffered = u64::from(self.flush_bytes) * u64::from(self.write_buffers) / 2;
        let frame_max = buffered.min(self.segment_bytes);
        let batch_max = frame_max.saturating_sub(FRAME_HEADER_BYTES as u64);
        u32::try_from(batch_max).unwrap_or(u32::MAX)
    }

    /// Largest frame (header + batch) an append can carry.
    pub fn frame_max_bytes(&self) -> u64 {
        u64::from(self.message_max_bytes) + FRAME_HEADER_BYTES as u64
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let flush = u64::from(self.flush_bytes);
        if self.flush_bytes < DIRECT_IO_ALIGNMENT_BYTES
            || !self.flush_bytes.is_multiple_of(DIRECT_IO_ALIGNMENT_BYTES)
        {
            return invalid(
                "storage.flush_bytes",
                self.flush_bytes,
                "must be a positive multiple of 4096",
            );
        }
        if self.segment_bytes < flush || !self.segment_bytes.is_multiple_of(flush) {
            return invalid(
                "storage.segment_bytes",
                self.segment_bytes,
                format!("must be a multiple of storage.flush_bytes ({flush})"),
            );
        }
        if self.segment_bytes < self.frame_max_bytes() {
            return invalid(
                "storage.segment_bytes",
                self.segment_bytes,
                format!(
                    "must hold at least one frame of storage.message_max_bytes: at least {} \
                     bytes, rounded up to a multiple of storage.flush_bytes ({flush}), that is {}",
                    self.frame_max_bytes(),
                    self.frame_max_bytes().div_ceil(flush) * flush
                ),
            );
        }
        if self.write_buffers < 2 {
            return invalid("storage.write_buffers", self.write_buffers, "at least 2");
        }
        let buffered_max = flush * u64::from(self.write_buffers);
        if buffered_max < 2 * self.frame_max_bytes() {
            return invalid(
                "storage.write_buffers",
                self.write_buffers,
                format!(
                    "write_buffers x flush_bytes ({buffered_max}) must hold two of the largest \
                     frames (2 x {}); raise write_buffers or lower message_max_bytes",
                    self.frame_max_bytes()
                ),
            );
        }
        if self.inflight_writes_max == 0 || self.inflight_writes_max > self.write_buffers {
            return invalid(
                "storage.inflight_writes_max",
                self.inflight_writes_max,
                "between 1 and storage.write_buffers",
            );
        }
        if self.message_max_bytes < crate::record_batch::HEADER_BYTES as u32 {
            return invalid(
                "storage.message_max_bytes",
                self.message_max_bytes,
                "must hold at least a record-batch header (61 bytes)",
            );
        }
        if !(1..=DECOMPRESSED_BATCH_RATIO_LIMIT).contains(&self.decompressed_batch_ratio_max) {
            return invalid(
                "storage.decompressed_batch_ratio_max",
                self.decompressed_batch_ratio_max,
                format!("between 1 and {DECOMPRESSED_BATCH_RATIO_LIMIT}"),
            );
        }
        if self.consume_queue_entries_per_file < 1024 {
            return invalid(
                "storage.consume_queue_entries_per_file",
                self.consume_queue_entries_per_file,
                "at least 1024",
            );
        }
        if self.checkpoint_interval_ms == 0 {
            return invalid("storage.checkpoint_interval_ms", 0, "must be positive");
        }
        if self.cleaner_io_max_bytes_per_second < MIB {
            return invalid(
                "storage.cleaner_io_max_bytes_per_second",
                self.cleaner_io_max_bytes_per_second,
                "at least 1048576 (1 MiB/s)",
            );
        }
        if self.cleaner_dedupe_buffer_bytes < MIB {
            return invalid(
                "storage.cleaner_dedupe_buffer_bytes",
                self.cleaner_dedupe_buffer_bytes,
                "at least 1048576",
            );
        }
        if self.cleaner_backoff_ms == 0 {
            return invalid("storage.cleaner_backoff_ms", 0, "must be positive");
        }
        if !(1..=i64::MAX as u64).contains(&self.segment_ms) {
            return invalid(
                "storage.segment_ms",
                self.segment_ms,
                format!("between 1 and {}", i64::MAX),
            );
        }
        if self.segment_roll_min_ms == 0 {
            return invalid("storage.segment_roll_min_ms", 0, "must be positive");
        }
        if self.sync_interval_bytes < flush {
            return invalid(
                "storage.sync_interval_bytes",
                self.sync_interval_bytes,
                format!("at least storage.flush_bytes ({flush})"),
            );
        }
        let block = u64::from(DIRECT_IO_ALIGNMENT_BYTES);
        if self.preallocate_bytes < block || !self.preallocate_bytes.is_multiple_of(block) {
            return invalid(
                "storage.preallocate_bytes",
                self.preallocate_bytes,
                "must be a positive multiple of 4096",
            );
        }
        if self.producer_snapshot_interval_bytes < PRODUCER_SNAPSHOT_INTERVAL_BYTES_MIN {
            return invalid(
                "storage.producer_snapshot_interval_bytes",
                self.producer_snapshot_interval_bytes,
                format!("at least {PRODUCER_SNAPSHOT_INTERVAL_BYTES_MIN}"),
            );
        }
        for (key, value) in [
            (
                "storage.producer_id_expiration_ms",
                self.producer_id_expiration_ms,
            ),
            (
                "storage.producer_id_expiration_check_interval_ms",
                self.producer_id_expiration_check_interval_ms,
            ),
        ] {
            if !(1..=KAFKA_INT_MAX).contains(&value) {
                return invalid(key, value, format!("between 1 and {KAFKA_INT_MAX}"));
            }
        }
        if !(60..=YEAR_MS / 1000).contains(&self.timer_wheel_window_s) {
            return invalid(
                "storage.timer_wheel_window_s",
                self.timer_wheel_window_s,
                format!("between 60 and {} (a year)", YEAR_MS / 1000),
            );
        }
        Ok(())
    }
}

/// A year of milliseconds: the longest delay a record may ask for.
pub const YEAR_MS: u64 = 365 * 24 * 3_600_000;

/// `[delay]`: delayed delivery and consumer retries (issue 18; see
/// ARCHITECTURE.md, "Delayed delivery, retry and dead letters").
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DelayConfig {
    /// Level `n` of the `sluice.delay.level` header waits `levels_ms[n - 1]`
    /// milliseconds. Default RocketMQ's 18 levels (`messageDelayLevel`,
    /// 1 s to 2 h); 1 to 64 levels, each from 1 to `max_delay_ms`. A
    /// retried record's attempt `k` (from 0) waits level `k + 3`.
    pub levels_ms: Vec<u64>,
    /// The longest delay a record may ask for; longer is refused with
    /// INVALID_RECORD. Default 2592000000 (30 days); 1000 to a year.
    pub max_delay_ms: u64,
    /// A retried record consumed and failed this many times goes to the
    /// group's dead-letter topic instead (RocketMQ's
    /// `maxReconsumeTimes`). Default 16; 0 to 1000.
    pub max_reconsume_times: u32,
}

impl Default for DelayConfig {
    fn default() -> Self {
        DelayConfig {
            levels_ms: crate::broker::delay::ROCKETMQ_LEVELS_MS.to_vec(),
            max_delay_ms: 30 * 24 * 3_600_000,
            max_reconsume_times: 16,
        }
    }
}

impl DelayConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1000..=YEAR_MS).contains(&self.max_delay_ms) {
            return invalid(
                "delay.max_delay_ms",
                self.max_delay_ms,
                format!("between 1000 and {YEAR_MS} (a year)"),
            );
        }
        if !(1..=64).contains(&self.levels_ms.len()) {
            return invalid(
                "delay.levels_ms",
                format!("{:?}", self.levels_ms),
                "1 to 64 levels",
            );
        }
        if let Some(level) = self
            .levels_ms
            .iter()
            .find(|&&level| level == 0 || level > self.max_delay_ms)
        {
            return invalid(
                "delay.levels_ms",
                level,
                format!(
                    "each level must lie between 1 and delay.max_delay_ms ({} ms); the levels \
                     default to RocketMQ's, up to 7200000 (2 h), so a shorter max_delay_ms needs \
                     its own levels_ms too, a list of milliseconds such as [1000, 5000, 10000]",
                    self.max_delay_ms
                ),
            );
        }
        if self.max_reconsume_times > 1000 {
            return invalid(
                "delay.max_reconsume_times",
                self.max_reconsume_times,
                "between 0 and 1000",
            );
        }
        Ok(())
    }
}

impl RetentionConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.retention_ms < -1 || self.retention_ms == 0 {
            return invalid(
                "retention.retention_ms",
                self.retention_ms,
                "-1 or positive",
            );
        }
        if self.retention_bytes < -1 || self.retention_bytes == 0 {
            return invalid(
                "retention.retention_bytes",
                self.retention_bytes,
                "-1 or positive",
            );
        }
        if self.check_interval_ms == 0 || self.disk_check_interval_ms == 0 {
            return invalid(
                "retention.check_interval_ms",
                0,
                "intervals must be positive",
            );
        }
        let ratios = [
            self.disk_clean_ratio,
            self.disk_force_clean_ratio,
            self.disk_reject_ratio,
        ];
        let ordered = ratios.windows(2).all(|pair| pair[0] < pair[1]);
        if !ordered || ratios[0] <= 0.0 || ratios[2] > 1.0 {
            return invalid(
                "retention.disk_*_ratio",
                format!("{ratios:?}"),
                "need 0 < disk_clean_ratio < disk_force_clean_ratio < disk_reject_ratio <= 1",
            );
        }
        Ok(())
    }
}

fn invalid<T>(
    key: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn cold_reads_are_direct_only_with_direct_writes() {
        assert!(Config::default().storage.direct_cold_reads());
        let config = Config::parse("[storage]\ncold_reads = \"page_cache\"\n").unwrap();
        assert!(!config.storage.direct_cold_reads());
        let config = Config::parse("[storage]\nwrite_mode = \"buffered\"\n").unwrap();
        assert!(
            !config.storage.direct_cold_reads(),
            "buffered writes fill the page cache"
        );
        let error = Config::parse("[storage]\ncold_reads = \"mmap\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("cold_reads") || error.contains("mmap"),
            "{error}"
        );
    }

    #[test]
    fn the_example_file_documents_exactly_the_defaults() {
        let example = Config::parse(include_str!("../sluice.example.toml")).unwrap();
        assert_eq!(example, Config::default());
    }

    #[test]
    fn the_production_example_is_valid() {
        let production = Config::parse(include_str!("../packaging/sluice.toml")).unwrap();
        production.validate().unwrap();
        assert_eq!(production.data_dir, PathBuf::from("/var/lib/sluice"));
        assert_eq!(production.io_backend, IoBackendSetting::IoUring);
    }

    /// Issue 12: the production example listened on 0.0.0.0, every
    /// interface, with no authentication.
    #[test]
    fn the_production_example_listens_on_one_private_interface() {
        let production = Config::parse(include_str!("../packaging/sluice.toml")).unwrap();
        for (key, listen) in [
            ("kafka.listen", &production.kafka.listen),
            ("metrics.listen", &production.metrics.listen),
        ] {
            let address: std::net::SocketAddr = listen.parse().unwrap();
            let std::net::IpAddr::V4(ip) = address.ip() else {
                panic!("{key} = {listen}: expected an IPv4 example");
            };
            assert!(
                ip.is_private(),
                "{key} = {listen}: a private interface, not every interface or a public one"
            );
        }
    }

    #[test]
    fn producer_id_expiration_is_positive_and_fits_kafkas_int() {
        for key in [
            "producer_id_expiration_ms",
            "producer_id_expiration_check_interval_ms",
        ] {
            for bad in [0, KAFKA_INT_MAX + 1] {
                let config = Config::parse(&format!("[storage]\n{key} = {bad}\n")).unwrap();
                let error = config.validate().unwrap_err().to_string();
                assert!(error.contains(key), "{key} = {bad}: {error}");
            }
            let config = Config::parse(&format!("[storage]\n{key} = {KAFKA_INT_MAX}\n")).unwrap();
            config.validate().unwrap();
        }
    }

    #[test]
    fn metrics_refresh_interval_is_bounded() {
        let config = Config::parse("[metrics]\nrefresh_interval_ms = 10\n").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("metrics.refresh_interval_ms"), "{error}");
    }

    /// Issue 12: metadata is stored with an i16 length.
    #[test]
    fn offset_metadata_max_bytes_fits_an_offset_record() {
        let config = Config::parse("[groups]\noffset_metadata_max_bytes = 32767\n").unwrap();
        config.validate().unwrap();
        let config = Config::parse("[groups]\noffset_metadata_max_bytes = 32768\n").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("groups.offset_metadata_max_bytes"),
            "{error}"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let error = Config::parse("shardz = 3").unwrap_err();
        assert!(error.to_string().contains("shardz"), "{error}");
    }

    #[test]
    fn a_listen_address_that_is_not_an_ip_says_why_and_what_to_write() {
        let mut config = Config::default();
        config.kafka.listen = "localhost:9092".to_owned();
        let error = config.validate().unwrap_err();
        let source = std::error::Error::source(&error).expect("the parse error is kept");
        assert_eq!(source.to_string(), "invalid socket address syntax");
        let text = crate::error_chain::error_chain(&error);
        assert!(
            text.contains("`kafka.listen` = \"localhost:9092\""),
            "{text}"
        );
        assert!(text.contains("invalid socket address syntax"), "{text}");
        assert!(text.contains("host names are not resolved"), "{text}");
    }

    #[test]
    fn a_config_file_that_is_not_toml_keeps_the_parser_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "[kafka\nlisten = 1\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        let source = std::error::Error::source(&error).expect("the TOML error is kept");
        let text = crate::error_chain::error_chain(&error);
        assert!(text.contains("sluice.toml is not valid"), "{text}");
        assert!(text.contains(source.to_string().trim_end()), "{text}");
        assert!(text.contains("line 1"), "{text}");
    }

    #[test]
    fn decompressed_batch_ratio_is_bounded() {
        for ratio in [0, DECOMPRESSED_BATCH_RATIO_LIMIT + 1] {
            let config = Config::parse(&format!(
                "[storage]\ndecompressed_batch_ratio_max = {ratio}\n"
            ))
            .unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("decompressed_batch_ratio_max"), "{error}");
        }
        let storage = StorageConfig::default();
        let limits = storage.stored_batch_limits();
        assert_eq!(
            limits.decompressed_max_bytes,
            u64::from(storage.batch_ceiling_bytes())
                * u64::from(DECOMPRESSED_BATCH_RATIO_MAX_DEFAULT)
        );
    }

    #[test]
    fn the_batch_ceiling_is_half_the_write_buffers_within_a_segment() {
        let storage = StorageConfig::default();
        assert_eq!(
            storage.batch_ceiling_bytes(),
            (8 << 20) - FRAME_HEADER_BYTES as u32
        );
        assert!(storage.batch_ceiling_bytes() >= storage.message_max_bytes);
        let small = Config::parse(
            "[storage]
segment_bytes = 4194304
write_buffers = 64
",
        )
        .unwrap()
        .storage;
        assert_eq!(
            small.batch_ceiling_bytes(),
            (4 << 20) - FRAME_HEADER_BYTES as u32
        );
    }

    #[test]
    fn segment_ms_must_be_positive() {
        let config = Config::parse(
            "[storage]
segment_ms = 0
",
        )
        .unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("storage.segment_ms"), "{error}");
    }

    #[test]
    fn segment_must_be_a_multiple_of_the_write_buffer() {
        let config = Config::parse("[storage]\nsegment_bytes = 3000000\n").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("storage.segment_bytes"), "{error}");
    }

    #[test]
    fn the_request_budget_must_hold_the_largest_request() {
        let config = Config::parse(
            "[kafka]\nrequest_max_bytes = 2000000\nqueued_requests_max_bytes = 1999999\n",
        )
        .unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.queued_requests_max_bytes"), "{error}");
        let config = Config::parse(
            "[kafka]\nrequest_max_bytes = 2000000\nqueued_requests_max_bytes = 2000000\n",
        )
        .unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn connection_timeouts_must_be_positive_and_fit_an_int() {
        for key in [
            "idle_timeout_ms",
            "request_read_timeout_ms",
            "fetch_wait_max_ms",
            "fetch_max_bytes",
        ] {
            for value in [0, 2_147_483_648u64] {
                let config = Config::parse(&format!("[kafka]\n{key} = {value}\n")).unwrap();
                let error = config.validate().unwrap_err().to_string();
                assert!(error.contains(&format!("kafka.{key}")), "{error}");
            }
            let config = Config::parse(&format!("[kafka]\n{key} = 2147483647\n")).unwrap();
            config.validate().unwrap();
        }
    }

    #[test]
    fn buffers_must_hold_two_largest_frames() {
        let config =
            Config::parse("[storage]\nwrite_buffers = 2\nmessage_max_bytes = 2000000\n").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("write_buffers"), "{error}");
    }
}
