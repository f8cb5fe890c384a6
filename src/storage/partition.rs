//! A partition as its owning shard sees it: identity, settings, offsets and
//! consume queue.
//!
//! Each partition has a directory `partitions/<id, 10 digits>/` holding its
//! `partition.meta` (written once, at creation, and fsynced) and its consume
//! queue files. Offsets:
//!
//! * `log_start_offset`: the first offset still readable (retention moves it);
//! * `high_watermark`: every offset below it is written to the commit log and
//!   may be fetched;
//! * `next_offset`: the offset the next appended batch gets.
//!
//! Invariant: log_start_offset <= high_watermark <= next_offset.

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::compaction::clean_section::CleanSection;
use super::consume_queue::{ConsumeQueue, QueueEntry, QueueError};
use super::producer_state::ProducerStates;

/// What the consume queue records of a batch being appended.
#[derive(Clone, Copy, Debug)]
pub struct IndexedBatch {
    /// Bytes of the RecordBatch (the frame's payload).
    pub len: u32,
    pub last_offset_delta: u32,
    pub max_timestamp_ms: i64,
    /// Kafka RecordBatch attributes.
    pub attributes: u16,
}

impl IndexedBatch {
    /// What the queue records of a checked batch of `len` bytes.
    pub fn of(len: u32, header: &crate::record_batch::BatchHeader) -> IndexedBatch {
        IndexedBatch {
            len,
            last_offset_delta: u32::try_from(header.last_offset_delta)
                .expect("checked batches have a non-negative lastOffsetDelta"),
            max_timestamp_ms: header.max_timestamp_ms,
            attributes: header.attributes as u16,
        }
    }
}
use crate::config::{RetentionConfig, StorageConfig};
use crate::ids::{LogPosition, Offset, PartitionId};

pub const META_FILE: &str = "partition.meta";
const META_MAGIC: [u8; 4] = *b"SLPM";
const META_VERSION: u8 = 1;
/// Kafka's limit on topic name length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Kafka's defaults for the compaction settings (`log.cleaner.*`), used
/// until a partition gets its topic's configs.
pub const DELETE_RETENTION_MS_DEFAULT: i64 = 86_400_000;
pub const MIN_COMPACTION_LAG_MS_DEFAULT: i64 = 0;
pub const MAX_COMPACTION_LAG_MS_DEFAULT: i64 = i64::MAX;
pub const MIN_CLEANABLE_DIRTY_RATIO_PPM_DEFAULT: u32 = 500_000;

/// Per-partition settings that storage enforces (from the topic's configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionConfig {
    /// `retention.ms`; -1 keeps data forever. Applies only with `delete`.
    pub retention_ms: i64,
    /// `retention.bytes`; -1 means no size limit. Applies only with `delete`.
    pub retention_bytes: i64,
    /// `cleanup.policy` contains `delete`: retention by time and size
    /// applies. Without it (`compact` alone, or empty) nothing expires.
    pub delete: bool,
    /// `cleanup.policy` contains `compact`: the cleaner keeps the latest
    /// record of each key.
    pub compact: bool,
    /// `delete.retention.ms`: how long a tombstone outlives its compaction.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: records younger than this stay uncompacted.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: records older than this are due for
    /// compaction whatever the dirty ratio (>= `min_compaction_lag_ms`).
    pub max_compaction_lag_ms: i64,
    /// `min.cleanable.dirty.ratio` in parts per million (0..=1 000 000; an
    /// integer so the struct keeps `Eq`).
    pub min_cleanable_dirty_ratio_ppm: u32,
    /// `flush.ms`: data not asked to be durable is fsynced within this long.
    pub flush_ms: u64,
    /// `flush.messages`: an fsync is due at least every this many records.
    pub flush_messages: u64,
    /// `segment.ms`: the shard's active segment rolls once its first frame
    /// is older than the smallest of these among the partitions written to
    /// it (see `commit_log.rs`).
    pub segment_ms: u64,
    /// `sluice.disk.pressure.delete`: unexpired data may be deleted above
    /// `retention.disk_force_clean_ratio`.
    pub disk_pressure_delete: bool,
    /// The partition's owner copies the records it still needs forward out
    /// of the shard's oldest segment and moves its log start past them (the
    /// internal topics: `__consumer_offsets`, `__producer_ids`,
    /// `__transaction_state`), so its data never keeps the only segment's
    /// roll under disk pressure from freeing space
    /// (`retention_task.rs`). Not a topic config: the broker sets it.
    pub copies_forward: bool,
}

impl PartitionConfig {
    pub fn from_defaults(retention: &RetentionConfig, storage: &StorageConfig) -> PartitionConfig {
        PartitionConfig {
            retention_ms: retention.retention_ms,
            retention_bytes: retention.retention_bytes,
            delete: true,
            compact: false,
            delete_retention_ms: DELETE_RETENTION_MS_DEFAULT,
            min_compaction_lag_ms: MIN_COMPACTION_LAG_MS_DEFAULT,
            max_compaction_lag_ms: MAX_COMPACTION_LAG_MS_DEFAULT,
            min_cleanable_dirty_ratio_ppm: MIN_CLEANABLE_DIRTY_RATIO_PPM_DEFAULT,
            flush_ms: retention.flush_ms,
            flush_messages: u64::MAX,
            segment_ms: storage.segment_ms,
            disk_pressure_delete: false,
            copies_forward: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMeta {
    pub id: PartitionId,
    pub topic: String,
    pub index: u32,
}

#[derive(Debug, Error)]
pub enum MetaError {
    #[error("cannot access partition metadata {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("partition metadata {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("partition metadata {path} has a topic name that is not UTF-8: {source}")]
    NotUtf8 {
        path: PathBuf,
        #[source]
        source: std::str::Utf8Error,
    },
}

impl PartitionMeta {
    pub fn encode(&self) -> Vec<u8> {
        let topic = self.topic.as_bytes();
        assert!(topic.len() <= TOPIC_NAME_BYTES_MAX);
        let mut out = Vec::with_capacity(20 + topic.len());
        out.extend_from_slice(&META_MAGIC);
        out.push(META_VERSION);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&self.id.0.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        out.extend_from_slice(topic);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<PartitionMeta, MetaError> {
        let corrupt = |reason: &str| MetaError::Corrupt {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if bytes.len() < 22 || bytes[..4] != META_MAGIC {
            return Err(corrupt("no partition.meta magic"));
        }
        if bytes[4] != META_VERSION {
            return Err(corrupt("unsupported version"));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(corrupt("CRC mismatch"));
        }
        let read_u32 =
            |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let topic_len = u16::from_le_bytes([body[16], body[17]]) as usize;
        if body.len() != 18 + topic_len {
            return Err(corrupt("topic length does not match the file"));
        }
        // Issue 12 (found by the partition_meta fuzz target): a longer name
        // was accepted here though no partition can have one, and `encode`
        // asserts it away.
        if topic_len > TOPIC_NAME_BYTES_MAX {
            return Err(corrupt("topic name longer than Kafka's 249 bytes"));
        }
        let topic = std::str::from_utf8(&body[18..])
            .map_err(|source| MetaError::NotUtf8 {
                path: path.to_owned(),
                source,
            })?
            .to_owned();
        Ok(PartitionMeta {
            id: PartitionId(read_u32(8)),
            index: read_u32(12),
            topic,
        })
    }
}

/// One slice of [`Partition::stored_bytes_step`]: the bytes counted, and
/// the queue index to continue from (`None`: done).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredBytesStep {
    pub bytes: u64,
    pub next: Option<u64>,
}

pub struct Partition {
    pub meta: PartitionMeta,
    pub config: PartitionConfig,
    pub dir: PathBuf,
    pub queue: ConsumeQueue,
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
    pub next_offset: Offset,
    /// Records appended since an fsync was last forced for `flush.messages`.
    pub records_since_forced_sync: u64,
    /// Idempotent producers' latest batches, checked by every append.
    pub producers: ProducerStates,
    /// A compacted partition's clean section: offsets below its end are
    /// read through it, the rest through `queue` (ARCHITECTURE.md, "Log
    /// compaction").
    pub clean: Option<CleanSection>,
}

/// A place in a partition's index: an entry of the clean section or of the
/// main queue. Walk with [`Partition::cursor`], [`Partition::entry`] and
/// [`Partition::advance`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    Clean(u64),
    Main(u64),
}

impl Partition {
    /// A partition over its (recovered) queue; offsets follow from the queue
    /// and what the checkpoint remembered.
    pub fn new(
        meta: PartitionMeta,
        config: PartitionConfig,
        dir: PathBuf,
        queue: ConsumeQueue,
        remembered: Option<(Offset, Offset)>,
    ) -> Partition {
        let (remembered_start, remembered_next) = remembered.unwrap_or((Offset(0), Offset(0)));
        // Recovery checked the first entry (a damaged one makes it rebuild
        // the queue); should it fail now, the checkpoint's start stands.
        let first = match queue.first() {
            Ok(first) => first.map(|entry| entry.base_offset),
            Err(error) => {
                tracing::error!(%error, "cannot read the first consume-queue entry");
                Some(remembered_start)
            }
        };
        let next_from_queue = queue.last().map_or(Offset(0), |entry| entry.next_offset());
        let next_offset = next_from_queue.max(remembered_next).max(remembered_start);
        let log_start_offset = match first {
            Some(first) => first.max(remembered_start),
            None => next_offset,
        };
        assert!(
            log_start_offset <= next_offset,
            "log start {log_start_offset} past next offset {next_offset}"
        );
        Partition {
            meta,
            config,
            dir,
            queue,
            log_start_offset,
            high_watermark: next_offset,
            next_offset,
            records_since_forced_sync: 0,
            producers: ProducerStates::default(),
            clean: None,
        }
    }

    /// Give the partition its clean section (recovery). The log start is
    /// then what the checkpoint remembered (`remembered_start`), or the
    /// first clean batch: the main queue's first entry, which
    /// [`Partition::new`] went by, lies in the head.
    pub fn with_clean(
        mut self,
        clean: Option<CleanSection>,
        remembered_start: Option<Offset>,
    ) -> Partition {
        if let Some(clean) = &clean
            && let Ok(Some(first)) = clean.queue.first()
        {
            self.log_start_offset = remembered_start
                .unwrap_or(first.base_offset)
                .min(self.next_offset);
        }
        self.clean = clean;
        self
    }

    /// The first offset of the head: the clean end, or `Offset(i64::MIN)`
    /// for a partition never compacted.
    pub fn clean_end(&self) -> Offset {
        self.clean
            .as_ref()
            .map_or(Offset(i64::MIN), |clean| clean.end)
    }

    /// The entry holding `offset`, or the next one after a gap: in the
    /// clean section below its end, else in the main queue from the clean
    /// end on.
    pub fn cursor(&self, offset: Offset) -> Result<Cursor, QueueError> {
        if let Some(clean) = &self.clean
            && offset < clean.end
        {
            let index = clean.queue.search_offset(offset)?;
            if index < clean.queue.tail_index() {
                return Ok(Cursor::Clean(index));
            }
        }
        Ok(Cursor::Main(
            self.queue.search_offset(offset.max(self.clean_end()))?,
        ))
    }

    /// The entry at `cursor` (`None`: past the last one).
    pub fn entry(&self, cursor: Cursor) -> Result<Option<QueueEntry>, QueueError> {
        match (cursor, &self.clean) {
            (Cursor::Clean(index), Some(clean)) => clean.queue.get(index),
            (Cursor::Clean(_), None) => Ok(None),
            (Cursor::Main(index), _) => self.queue.get(index),
        }
    }

    /// The place after `cursor`.
    pub fn advance(&self, cursor: Cursor) -> Result<Cursor, QueueError> {
        match (cursor, &self.clean) {
            (Cursor::Clean(index), Some(clean)) if index + 1 < clean.queue.tail_index() => {
                Ok(Cursor::Clean(index + 1))
            }
            (Cursor::Clean(_), _) => Ok(Cursor::Main(self.queue.search_offset(self.clean_end())?)),
            (Cursor::Main(index), _) => Ok(Cursor::Main(index + 1)),
        }
    }

    /// The first entry whose running max timestamp is at or past
    /// `timestamp_ms`, from the log start on (`None`: none is).
    pub fn first_entry_at_time(&self, timestamp_ms: i64) -> Result<Option<QueueEntry>, QueueError> {
        if let Some(clean) = &self.clean {
            let index = clean
                .queue
                .search_timestamp(timestamp_ms)?
                .max(clean.queue.search_offset(self.log_start_offset)?);
            if let Some(entry) = clean.queue.get(index)? {
                return Ok(Some(entry));
            }
        }
        let from = self.log_start_offset.max(self.clean_end());
        let index = self
            .queue
            .search_timestamp(timestamp_ms)?
            .max(self.queue.search_offset(from)?);
        self.queue.get(index)
    }

    pub fn id(&self) -> PartitionId {
        self.meta.id
    }

    /// Running maximum timestamp over the partition's batches.
    pub fn max_timestamp_ms(&self) -> i64 {
        self.queue
            .last()
            .map_or(i64::MIN, |entry| entry.max_timestamp_ms)
    }

    /// Index a batch that was just placed at `position`.
    pub fn index_batch(
        &mut self,
        position: LogPosition,
        batch: &IndexedBatch,
    ) -> Result<(), QueueError> {
        let entry = QueueEntry {
            base_offset: self.next_offset,
            position,
            batch_len: batch.len,
            last_offset_delta: batch.last_offset_delta,
            max_timestamp_ms: batch.max_timestamp_ms.max(self.max_timestamp_ms()),
            attributes: batch.attributes,
        };
        self.queue.append(entry)?;
        self.next_offset = entry.next_offset();
        Ok(())
    }

    /// Move the log start forward (retention, or data deleted underneath).
    pub fn advance_log_start(&mut self, offset: Offset) -> Result<(), QueueError> {
        if offset <= self.log_start_offset {
            return Ok(());
        }
        self.log_start_offset = offset.min(self.next_offset);
        assert!(
            self.log_start_offset <= self.next_offset,
            "the log start never passes the next offset"
        );
        // Nothing below the log start is readable, so the high watermark is
        // at least there (a copy applying its leader's log start may hold
        // records its own high watermark does not show yet).
        self.high_watermark = self.high_watermark.max(self.log_start_offset);
        self.queue.drop_files_before(self.log_start_offset)?;
        if let Some(clean) = &mut self.clean {
            clean.queue.drop_files_before(self.log_start_offset)?;
        }
        self.producers.prune_aborted(self.log_start_offset);
        Ok(())
    }

    /// Count the bytes of this partition's readable batches (from the one
    /// holding the log start up to the high watermark, as the consume queue
    /// indexes them), at most `entries_max` queue entries from queue index
    /// `from` (`None`: the log start's batch). A caller sums the steps,
    /// continuing from `next`, so a long queue is counted in slices.
    pub fn stored_bytes_step(
        &self,
        from: Option<u64>,
        entries_max: u64,
    ) -> Result<StoredBytesStep, QueueError> {
        // The log start may have moved since the last slice: its batch is
        // where counting resumes at the earliest.
        let first = self
            .queue
            .search_offset(self.log_start_offset.max(self.clean_end()))?;
        let start = from.map_or(first, |from| from.max(first));
        let end = self
            .queue
            .tail_index()
            .min(start.saturating_add(entries_max));
        // The clean section is counted whole with the first slice.
        let mut bytes = match (&self.clean, from) {
            (Some(clean), None) => clean.bytes_from(self.log_start_offset)?,
            _ => 0,
        };
        for index in start..end {
            let Some(entry) = self.queue.get(index)? else {
                return Ok(StoredBytesStep { bytes, next: None });
            };
            if entry.base_offset >= self.high_watermark {
                return Ok(StoredBytesStep { bytes, next: None });
            }
            bytes += u64::from(entry.batch_len);
        }
        let next = (end < self.queue.tail_index()).then_some(end);
        Ok(StoredBytesStep { bytes, next })
    }

    /// The last stable offset (KIP-98): below it every transaction is
    /// decided and its marker written; read_committed consumers read up to
    /// it. The first offset of the oldest open or undecided-in-the-log
    /// transaction, else the high watermark; never below the log start.
    pub fn last_stable_offset(&self) -> Offset {
        self.producers
            .first_unstable_offset()
            .map_or(self.high_watermark, |first| first.min(self.high_watermark))
            .max(self.log_start_offset)
    }

    /// What a checkpoint records for this partition when the log is indexed
    /// up to `indexed`: the queue entries below it, and the next offset.
    /// A damaged entry met on the way is not vouched for, so the next start
    /// re-indexes from it.
    pub fn checkpoint_position(&self, indexed: LogPosition) -> (u64, Offset) {
        let entries = match self.queue.count_below(indexed) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, topic = %self.meta.topic, index = self.meta.index, "checkpoint stops before a damaged consume-queue entry");
                error.corrupt_index().unwrap_or(self.queue.head_index())
            }
        };
        let previous = match entries.checked_sub(1) {
            Some(last) => self.queue.get(last).ok().flatten(),
            None => None,
        };
        let next_offset = previous.map_or(self.log_start_offset, |entry| entry.next_offset());
        (entries, next_offset)
    }
}

pub fn validate_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "topic name must be 1..={TOPIC_NAME_BYTES_MAX} bytes"
        ));
    }
    if topic == "." || topic == ".." {
        return Err("topic name cannot be \".\" or \"..\"".to_owned());
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "topic name has illegal character {bad:?}: use [a-zA-Z0-9._-]"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_and_detects_damage() {
        let meta = PartitionMeta {
            id: PartitionId(12),
            topic: "orders.eu".to_owned(),
            index: 3,
        };
        let mut bytes = meta.encode();
        assert_eq!(PartitionMeta::decode(&bytes, Path::new("x")).unwrap(), meta);
        bytes[10] ^= 1;
        assert!(PartitionMeta::decode(&bytes, Path::new("x")).is_err());
    }

    /// Issue 12 (the partition_meta fuzz target): a file whose CRC matches
    /// but whose topic is longer than Kafka allows is corrupt, not a
    /// partition whose metadata cannot be written back.
    #[test]
    fn a_topic_longer_than_kafka_allows_is_corrupt() {
        let mut bytes = PartitionMeta {
            id: PartitionId(1),
            topic: "x".repeat(TOPIC_NAME_BYTES_MAX),
            index: 0,
        }
        .encode();
        assert!(PartitionMeta::decode(&bytes, Path::new("x")).is_ok());
        let body_len = bytes.len() - 4;
        bytes.truncate(body_len);
        bytes.push(b'x');
        bytes[16..18].copy_from_slice(&(TOPIC_NAME_BYTES_MAX as u16 + 1).to_le_bytes());
        let crc = crc32c::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            PartitionMeta::decode(&bytes, Path::new("x")),
            Err(MetaError::Corrupt { reason, .. }) if reason.contains("249")
        ));
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("a.b_c-9").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("bad/name").is_err());
        assert!(validate_topic_name(&"x".repeat(250)).is_err());
    }
}
