//! Producer ids: unique forever, allocated in durable blocks (issue 13;
//! docs/exactly-once-design.md section 1; KIP-98).
//!
//! The state is the internal topic `__producer_ids` (one partition): each
//! record says "ids `[start, start + len)` now belong to shard s", and the
//! next free id is the end of the newest block. The shard owning the
//! partition runs the [`ProducerIdAllocator`]: it appends the next block
//! record, waits for its fdatasync and only then hands the block out, so a
//! crash at any point can skip ids but never hand one out twice. At start it
//! replays the partition from its log start. Each record states the whole
//! state, so once the newest is durable the partition's log start moves to
//! it and the older records stop pinning segments; and whenever that
//! record sits in the shard's oldest segment (checked every
//! [`REFRESH_CHECK_INTERVAL`]), it is appended again and the log start
//! follows, so the allocator never keeps retention from deleting segments.
//!
//! Every shard serves InitProducerId from its own cache of blocks
//! ([`next_producer_id`]), asking the allocator for a block of
//! [`PRODUCER_ID_BLOCK_LEN`] ids when it runs out, and for the next one in
//! the background once fewer than [`PREFETCH_BELOW_IDS`] are left (as
//! Kafka's producer-id manager prefetches), so a producer waits for a
//! mailbox round trip and an fdatasync about once per thousand.
//!
//! Belt and braces: before its first block after a start, the allocator
//! asks every shard for the largest producer id in its recovered producer
//! state; an id at or past the next free one means `__producer_ids` lost
//! records, which is logged as an error and allocation continues past it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use thiserror::Error;

use super::Broker;
use super::internal_log::{self, ReplayError, ReplayItem};
use crate::ids::{PartitionId, ShardId};
use crate::record_batch::{BatchError, ValidatedBatch};
use crate::shard::{ShardContext, ShardGone};
use crate::storage::{AppendError, Durability};

/// The internal topic holding producer-id blocks. Clients may read it but
/// not produce to it, delete it or change it.
pub const PRODUCER_IDS_TOPIC: &str = "__producer_ids";

/// Ids per block a shard takes at once.
pub const PRODUCER_ID_BLOCK_LEN: i32 = 1000;

/// A shard asks for its next block in the background once fewer than this
/// many ids are left in its cache (10 % of a block).
pub const PREFETCH_BELOW_IDS: i64 = PRODUCER_ID_BLOCK_LEN as i64 / 10;

/// How often the allocator checks whether its newest record keeps the
/// shard's oldest segment alive.
pub const REFRESH_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How far past the next free id a producer id recovered from the log may
/// lie and still be taken as a sign that `__producer_ids` lost records.
/// Clients stamp producer ids themselves, so an id far beyond anything
/// allocated (up to `i64::MAX`) is a forged one, and allocating past it
/// would exhaust the id space.
const RECOVERED_ID_WINDOW: i64 = 1 << 32;

/// Version of the record key and value this broker writes.
const RECORD_VERSION: i16 = 0;
/// Bytes of a version-0 key: the version.
const KEY_BYTES: usize = 2;
/// Bytes of a version-0 value: version, block start, block length, shard.
const VALUE_BYTES: usize = 2 + 8 + 4 + 2;

thread_local! {
    static ALLOCATOR: RefCell<Option<Rc<ProducerIdAllocator>>> = const { RefCell::new(None) };
    static CACHE: Rc<BlockCache> = Rc::new(BlockCache::default());
}

/// One allocation: ids `[start, start + len)` for `shard`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdBlock {
    pub start: i64,
    pub len: i32,
    /// The shard that asked for it (informative: ids are unique across
    /// shards either way).
    pub shard: u16,
}

impl ProducerIdBlock {
    /// The first id after the block, or `None` past `i64::MAX`.
    pub fn end(&self) -> Option<i64> {
        self.start.checked_add(i64::from(self.len))
    }

    pub fn ids(&self) -> Range<i64> {
        self.start..self.end().unwrap_or(i64::MAX)
    }

    /// The record key: `{version i16}`.
    pub fn encode_key() -> [u8; KEY_BYTES] {
        RECORD_VERSION.to_be_bytes()
    }

    /// The record value: `{version i16, start i64, len i32, shard u16}`,
    /// big-endian like every Kafka record field.
    pub fn encode_value(&self) -> [u8; VALUE_BYTES] {
        let mut value = [0u8; VALUE_BYTES];
        value[0..2].copy_from_slice(&RECORD_VERSION.to_be_bytes());
        value[2..10].copy_from_slice(&self.start.to_be_bytes());
        value[10..14].copy_from_slice(&self.len.to_be_bytes());
        value[14..16].copy_from_slice(&self.shard.to_be_bytes());
        value
    }

    /// A stored record back into a block. Tombstones carry nothing
    /// (`Ok(None)`); anything else this broker did not write is an error.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<Self>, BlockRecordError> {
        let key_version = match key {
            [high, low] => i16::from_be_bytes([*high, *low]),
            _ => return Err(BlockRecordError::KeyLength { len: key.len() }),
        };
        if key_version != RECORD_VERSION {
            return Err(BlockRecordError::Version {
                version: key_version,
            });
        }
        let Some(value) = value else {
            return Ok(None);
        };
        let value: &[u8; VALUE_BYTES] = value
            .try_into()
            .map_err(|_too_short_or_long| BlockRecordError::ValueLength { len: value.len() })?;
        let version = i16::from_be_bytes([value[0], value[1]]);
        if version != RECORD_VERSION {
            return Err(BlockRecordError::Version { version });
        }
        let block = ProducerIdBlock {
            start: i64::from_be_bytes(std::array::from_fn(|index| value[2 + index])),
            len: i32::from_be_bytes(std::array::from_fn(|index| value[10 + index])),
            shard: u16::from_be_bytes([value[14], value[15]]),
        };
        if block.start < 0 || block.len <= 0 || block.end().is_none() {
            return Err(BlockRecordError::Range {
                start: block.start,
                len: block.len,
            });
        }
        Ok(Some(block))
    }
}

/// A `__producer_ids` record this broker cannot use (skipped at replay with
/// a warning).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlockRecordError {
    #[error("key of {len} bytes (expected {KEY_BYTES})")]
    KeyLength { len: usize },
    #[error("value of {len} bytes (expected {VALUE_BYTES})")]
    ValueLength { len: usize },
    #[error("unknown record version {version}")]
    Version { version: i16 },
    #[error("block start {start} and length {len} are not a range of non-negative ids")]
    Range { start: i64, len: i32 },
}

/// Why the allocator did not start on its shard (the shard does not start
/// either: it would hand out ids it may already have handed out).
#[derive(Debug, Error)]
pub enum ProducerIdsStartError {
    #[error(
        "{PRODUCER_IDS_TOPIC}-0 has no storage on its owner shard (partitions are reconciled \
         with the metadata before the allocator starts: a bug)"
    )]
    NoStorage,
    #[error("cannot replay {PRODUCER_IDS_TOPIC}-0: {source}")]
    Replay {
        #[source]
        source: ReplayError,
    },
}

/// Why no producer id could be handed out (InitProducerId answers
/// COORDINATOR_LOAD_IN_PROGRESS, retriable, and the broker logs this).
#[derive(Debug, Error)]
pub enum ProducerIdError {
    #[error("the producer-id allocator is not running on its shard yet")]
    NotReady,
    #[error("producer ids are exhausted (the next block would pass {})", i64::MAX)]
    Exhausted,
    #[error("the {PRODUCER_IDS_TOPIC} record this broker built is invalid (a bug): {source}")]
    InvalidBatch {
        #[source]
        source: BatchError,
    },
    #[error("cannot store the next producer-id block: {source}")]
    Append {
        #[from]
        source: AppendError,
    },
    #[error("{0}")]
    ShardGone(#[from] ShardGone),
    /// A cluster node's block comes from the controller, which did not
    /// answer.
    #[error("cannot get a producer-id block from the cluster controller: {0}")]
    Controller(#[source] super::metadata::MetadataError),
}

/// Hands out producer-id blocks; runs on the shard owning
/// `__producer_ids-0` (see the module docs).
pub struct ProducerIdAllocator {
    context: Rc<ShardContext>,
    broker: Arc<Broker>,
    partition: PartitionId,
    /// The first id not yet in a stored block.
    next: Cell<i64>,
    /// The newest stored block (its end is `next`), copied forward when it
    /// pins the oldest segment.
    last_block: Cell<Option<ProducerIdBlock>>,
    /// Whether the shards' recovered producer ids were checked since start.
    floor_checked: Cell<bool>,
    /// One allocation at a time: blocks reach the log in id order.
    writer: futures_util::lock::Mutex<()>,
}

/// Removes this shard's allocator when dropped.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        ALLOCATOR.with(|local| local.borrow_mut().take());
    }
}

impl ProducerIdAllocator {
    /// On the owner shard of `__producer_ids-0`: replay it, install the
    /// allocator on this thread and return the task that holds the
    /// installation until the shard stops. Elsewhere: `Ok(None)`.
    pub fn start(
        context: &Rc<ShardContext>,
        broker: &Arc<Broker>,
    ) -> Result<Option<compio::runtime::JoinHandle<()>>, ProducerIdsStartError> {
        if context.shards.owner(PRODUCER_IDS_TOPIC, 0) != context.id {
            return Ok(None);
        }
        let partition = context
            .store()
            .partition_id(PRODUCER_IDS_TOPIC, 0)
            .ok_or(ProducerIdsStartError::NoStorage)?;
        let limit = broker
            .config
            .storage
            .stored_batch_limits()
            .decompressed_max_bytes;
        let mut next = 0i64;
        let mut last_block = None;
        let label = format!("{PRODUCER_IDS_TOPIC}-0");
        let records = internal_log::replay(
            &context.store(),
            partition,
            &label,
            limit,
            |item: ReplayItem<'_>| {
                let ReplayItem::Record(record) = item else {
                    return false;
                };
                match ProducerIdBlock::decode(record.key, record.value) {
                    Ok(Some(block)) => {
                        let end = block.end().unwrap_or(i64::MAX);
                        if end >= next {
                            next = end;
                            last_block = Some(block);
                        }
                        true
                    }
                    Ok(None) => false,
                    Err(error) => {
                        tracing::warn!(offset = record.offset.0, %error, "skipping a bad {PRODUCER_IDS_TOPIC} record");
                        false
                    }
                }
            },
        )
        .map_err(|source| ProducerIdsStartError::Replay { source })?;
        tracing::info!(
            shard = %context.id,
            records,
            next_producer_id = next,
            "producer-id allocator recovered"
        );
        let allocator = Rc::new(ProducerIdAllocator {
            context: Rc::clone(context),
            broker: Arc::clone(broker),
            partition,
            next: Cell::new(next),
            last_block: Cell::new(last_block),
            floor_checked: Cell::new(false),
            writer: futures_util::lock::Mutex::new(()),
        });
        let refresher = Rc::downgrade(&allocator);
        ALLOCATOR.with(|local| *local.borrow_mut() = Some(allocator));
        let installed = Installed;
        Ok(Some(compio::runtime::spawn(async move {
            let _installed = installed;
            loop {
                compio::time::sleep(REFRESH_CHECK_INTERVAL).await;
                let Some(allocator) = refresher.upgrade() else {
                    return;
                };
                if let Err(error) = allocator.refresh_if_pinning().await {
                    tracing::warn!(%error, "cannot copy the newest {PRODUCER_IDS_TOPIC} record forward");
                }
            }
        })))
    }

    /// This shard's allocator, if it runs here.
    pub fn local() -> Option<Rc<ProducerIdAllocator>> {
        ALLOCATOR.with(|local| local.borrow().clone())
    }

    /// The first id no stored block covers yet.
    pub fn next_free(&self) -> i64 {
        self.next.get()
    }

    /// Store the next block for `shard` and return it once it is durable.
    pub async fn allocate(&self, shard: ShardId) -> Result<ProducerIdBlock, ProducerIdError> {
        let _writing = self.writer.lock().await;
        if self.broker.metadata.is_replicated() {
            // A cluster's ids are unique across its nodes: the controller
            // hands out the blocks (KIP-730), in its replicated log.
            let start = self
                .broker
                .metadata
                .allocate_producer_ids(PRODUCER_ID_BLOCK_LEN)
                .await
                .map_err(ProducerIdError::Controller)?;
            tracing::info!(
                shard = shard.0,
                start,
                len = PRODUCER_ID_BLOCK_LEN,
                "got a producer-id block from the controller"
            );
            return Ok(ProducerIdBlock {
                start,
                len: PRODUCER_ID_BLOCK_LEN,
                shard: shard.0,
            });
        }
        if !self.floor_checked.get() {
            self.raise_past_recovered_ids().await?;
            self.floor_checked.set(true);
        }
        let block = ProducerIdBlock {
            start: self.next.get(),
            len: PRODUCER_ID_BLOCK_LEN,
            shard: shard.0,
        };
        let end = block.end().ok_or(ProducerIdError::Exhausted)?;
        self.store_block(block, false, || self.next.set(end))
            .await?;
        tracing::info!(
            shard = shard.0,
            start = block.start,
            len = block.len,
            "allocated a producer-id block"
        );
        Ok(block)
    }

    /// Append `block` (above the disk reject ratio when `freeing`: a copy
    /// forward lets space be freed), call `placed` once it has its place in
    /// the log, wait for its fdatasync, then move the log start to it: the
    /// newest record states the whole allocator state. The caller holds
    /// the writer.
    async fn store_block(
        &self,
        block: ProducerIdBlock,
        freeing: bool,
        placed: impl FnOnce(),
    ) -> Result<(), ProducerIdError> {
        let key = ProducerIdBlock::encode_key();
        let value = block.encode_value();
        let bytes = internal_log::encode_batch(
            [(&key[..], Some(&value[..]))],
            super::group::coordinator::now_ms(),
        );
        let limits = self.broker.config.storage.stored_batch_limits();
        let batch = ValidatedBatch::validate(&bytes, &limits)
            .map_err(|source| ProducerIdError::InvalidBatch { source })?;
        let store = &self.context.store();
        let receipt = if freeing {
            store
                .append_to_free_space(self.partition, batch, Durability::Fsynced)
                .await?
        } else {
            store
                .append(self.partition, batch, Durability::Fsynced)
                .await?
        };
        // The block has its place in the log: never offer these ids again in
        // this process, even if the fdatasync below fails.
        placed();
        self.last_block.set(Some(block));
        store.wait(&receipt).await?;
        if let Err(error) = store.advance_log_start(self.partition, receipt.base_offset) {
            tracing::warn!(%error, "cannot move the log start of {PRODUCER_IDS_TOPIC}-0 to its newest block");
        }
        Ok(())
    }

    /// Copy the newest block record forward if it keeps the shard's oldest
    /// segment alive (see the module docs).
    async fn refresh_if_pinning(&self) -> Result<(), ProducerIdError> {
        let _writing = self.writer.lock().await;
        let Some(block) = self.last_block.get() else {
            return Ok(());
        };
        if !self.context.store().pins_the_oldest_segment(self.partition) {
            return Ok(());
        }
        self.store_block(block, true, || {}).await?;
        tracing::debug!(
            start = block.start,
            "copied the newest producer-id block forward"
        );
        Ok(())
    }

    /// Raise `next` past every producer id the shards recovered from their
    /// logs (see the module docs).
    async fn raise_past_recovered_ids(&self) -> Result<(), ProducerIdError> {
        let mut largest = None;
        for shard in self.context.shards.ids() {
            let found = self
                .context
                .run_on(shard, |context| async move {
                    context.store().largest_producer_id()
                })
                .await?;
            largest = largest.max(found);
        }
        if let Some(largest) = largest
            && largest >= self.next.get()
            && largest - self.next.get() >= RECOVERED_ID_WINDOW
        {
            tracing::warn!(
                largest_in_log = largest,
                next_free = self.next.get(),
                "a producer id far beyond every allocated block is in a partition's log: a client \
                 stamped it without InitProducerId; not allocating past it"
            );
        } else if let Some(largest) = largest
            && largest >= self.next.get()
        {
            tracing::error!(
                largest_in_log = largest,
                next_free = self.next.get(),
                "producer ids up to {largest} are in the partitions' logs but {PRODUCER_IDS_TOPIC} \
                 allocates from {}: its records were lost; allocating past them",
                self.next.get()
            );
            self.next.set(largest.saturating_add(1));
        }
        Ok(())
    }
}

/// A shard's cache of producer-id blocks.
#[derive(Default)]
struct BlockCache {
    /// Unused ids, oldest block first.
    blocks: RefCell<VecDeque<Range<i64>>>,
    /// One block request at a time per shard.
    fetching: futures_util::lock::Mutex<()>,
    prefetching: Cell<bool>,
}

impl BlockCache {
    fn take(&self) -> Option<i64> {
        let mut blocks = self.blocks.borrow_mut();
        loop {
            let block = blocks.front_mut()?;
            match block.next() {
                Some(id) => return Some(id),
                None => {
                    blocks.pop_front();
                }
            }
        }
    }

    fn remaining(&self) -> i64 {
        self.blocks
            .borrow()
            .iter()
            .map(|block| block.end - block.start)
            .sum()
    }
}

/// A producer id never handed out before, from this shard's cache (see the
/// module docs). Fails only when a block cannot be stored (the disk refuses
/// appends, the shard stops) or the allocator has not started yet.
pub async fn next_producer_id(shard: &Rc<ShardContext>) -> Result<i64, ProducerIdError> {
    let cache = CACHE.with(Rc::clone);
    loop {
        if let Some(id) = cache.take() {
            if cache.remaining() < PREFETCH_BELOW_IDS && !cache.prefetching.get() {
                cache.prefetching.set(true);
                compio::runtime::spawn(prefetch(Rc::clone(shard), Rc::clone(&cache))).detach();
            }
            return Ok(id);
        }
        let _fetching = cache.fetching.lock().await;
        if cache.remaining() > 0 {
            continue;
        }
        let block = fetch_block(shard).await?;
        cache.blocks.borrow_mut().push_back(block.ids());
    }
}

async fn prefetch(shard: Rc<ShardContext>, cache: Rc<BlockCache>) {
    {
        let _fetching = cache.fetching.lock().await;
        if cache.remaining() < PREFETCH_BELOW_IDS {
            match fetch_block(&shard).await {
                Ok(block) => cache.blocks.borrow_mut().push_back(block.ids()),
                Err(error) => {
                    tracing::warn!(shard = %shard.id, %error, "cannot prefetch a producer-id block (retried when the next id is taken)");
                }
            }
        }
    }
    cache.prefetching.set(false);
}

async fn fetch_block(shard: &Rc<ShardContext>) -> Result<ProducerIdBlock, ProducerIdError> {
    let owner = shard.shards.owner(PRODUCER_IDS_TOPIC, 0);
    let requester = shard.id;
    shard
        .run_on(owner, move |_| async move {
            match ProducerIdAllocator::local() {
                Some(allocator) => allocator.allocate(requester).await,
                None => Err(ProducerIdError::NotReady),
            }
        })
        .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(start: i64, len: i32) -> ProducerIdBlock {
        ProducerIdBlock {
            start,
            len,
            shard: 3,
        }
    }

    #[test]
    fn a_block_record_round_trips() {
        let original = block(123_456, PRODUCER_ID_BLOCK_LEN);
        let decoded = ProducerIdBlock::decode(
            &ProducerIdBlock::encode_key(),
            Some(&original.encode_value()),
        );
        assert_eq!(decoded, Ok(Some(original)));
    }

    #[test]
    fn a_tombstone_carries_no_block() {
        assert_eq!(
            ProducerIdBlock::decode(&ProducerIdBlock::encode_key(), None),
            Ok(None)
        );
    }

    #[test]
    fn truncated_or_padded_records_are_refused() {
        let value = block(0, 1000).encode_value();
        for len in 0..value.len() {
            assert_eq!(
                ProducerIdBlock::decode(&ProducerIdBlock::encode_key(), Some(&value[..len])),
                Err(BlockRecordError::ValueLength { len })
            );
        }
        let mut padded = value.to_vec();
        padded.push(0);
        assert!(ProducerIdBlock::decode(&ProducerIdBlock::encode_key(), Some(&padded)).is_err());
        assert_eq!(
            ProducerIdBlock::decode(&[0], Some(&value)),
            Err(BlockRecordError::KeyLength { len: 1 })
        );
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut value = block(0, 1000).encode_value();
        value[1] = 1;
        assert_eq!(
            ProducerIdBlock::decode(&ProducerIdBlock::encode_key(), Some(&value)),
            Err(BlockRecordError::Version { version: 1 })
        );
        assert_eq!(
            ProducerIdBlock::decode(&1i16.to_be_bytes(), Some(&block(0, 1).encode_value())),
            Err(BlockRecordError::Version { version: 1 })
        );
    }

    #[test]
    fn blocks_outside_the_id_space_are_refused() {
        for (start, len) in [(-1, 10), (0, 0), (5, -3), (i64::MAX - 5, 10)] {
            assert_eq!(
                ProducerIdBlock::decode(
                    &ProducerIdBlock::encode_key(),
                    Some(&block(start, len).encode_value())
                ),
                Err(BlockRecordError::Range { start, len })
            );
        }
    }

    #[test]
    fn the_cache_hands_out_each_id_once_in_order_across_blocks() {
        let cache = BlockCache::default();
        cache.blocks.borrow_mut().push_back(0..2);
        cache.blocks.borrow_mut().push_back(10..11);
        assert_eq!(cache.remaining(), 3);
        let taken: Vec<i64> = std::iter::from_fn(|| cache.take()).collect();
        assert_eq!(taken, vec![0, 1, 10]);
        assert_eq!(cache.remaining(), 0);
    }
}
