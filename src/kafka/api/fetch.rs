//! Fetch: read partitions on their owner shards, long-poll until enough data
//! or the deadline, and send the batches without re-encoding them.
//!
//! * Each owner shard is asked once per round for all its partitions.
//! * If fewer than `min_bytes` are ready, the request waits on each owner
//!   for an append (a watermark advance past what it read), not a timer,
//!   until `max_wait_ms` capped at `kafka.fetch_wait_max_ms` (Kafka itself
//!   waits as long as the client asks), or until the connection hangs up: a
//!   client that sent a long poll and closed its socket gets (or fails to
//!   get) the answer at once, and its connection does not outlive it.
//! * `partition_max_bytes` and `max_bytes` (capped at
//!   `kafka.fetch_max_bytes`, Kafka's broker `fetch.max.bytes`, KIP-541) cap
//!   the response, except that the first batch found is always sent whole
//!   (KIP-74). Each owner shard reads its partitions in request order and
//!   stops reading data once `max_bytes` is used up (the rest are answered
//!   with their watermarks), so what a Fetch costs is bounded by
//!   `max_bytes` however many partitions it lists, or how often.
//! * From v13 topics are named by id (KIP-516): a partition of an id no
//!   live topic has (a topic deleted, or deleted and created again) gets
//!   UNKNOWN_TOPIC_ID, and the response names topics by id. The fields
//!   later versions add are a follower's (v15 replica state, v17 directory
//!   id, v18 high watermark) or describe leader changes (v16 node
//!   endpoints, sent with NOT_LEADER_OR_FOLLOWER, which a single broker
//!   that leads every partition never answers), so v14–18 read as v13.
//! * A topic the principal may not READ gets TOPIC_AUTHORIZATION_FAILED
//!   for each partition asked for (`kafka/authorize.rs`); an id no topic
//!   has is UNKNOWN_TOPIC_ID first.
//! * Fetch sessions (KIP-227) are declined: a full fetch gets session id 0,
//!   which clients understand as "no session". An incremental fetch on a
//!   session id gets FETCH_SESSION_ID_NOT_FOUND.
//! * Isolation levels (KIP-98): read_uncommitted reads up to the high
//!   watermark; read_committed up to the last stable offset (the first
//!   offset of the oldest transaction not yet decided in the log), with
//!   the aborted transactions among the batches listed so the client drops
//!   their records. Batches are still sent byte for byte: the bound is a
//!   batch boundary, and the broker never filters. Every response carries
//!   the last stable offset, and a read_committed long poll waits for it
//!   to move.

use std::collections::BTreeMap;
use std::pin::pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{join_all, select, select_all};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, FetchRequest};

use super::decode;
use crate::broker::metadata::TopicId;
use crate::broker::quota::{QuotaKind, throttle_ms};
use crate::ids::{Offset, ShardId};
use crate::kafka::api::produce::ZSTD_CODEC;
use crate::kafka::dispatch::Request;
use crate::kafka::error_code;
use crate::kafka::fetch_response::{self, FetchedPartition, FetchedTopic};
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;
use crate::shard::ShardContext;
use crate::storage::Isolation;

/// The first Fetch version that may receive zstd batches (KIP-110).
const ZSTD_FROM_FETCH_VERSION: i16 = 10;
/// The first Fetch version that names topics by id (KIP-516).
pub const TOPIC_IDS_FROM_FETCH_VERSION: i16 = 13;
use crate::telemetry;

const ISOLATION_READ_COMMITTED: i8 = 1;

/// One partition to read: (topic index, partition index in request order).
#[derive(Clone, Debug)]
struct Wanted {
    slot: (usize, usize),
    topic: String,
    index: u32,
    offset: i64,
    max_bytes: u32,
    isolation: Isolation,
    /// Whether the request's version may receive zstd batches (Fetch v10+,
    /// KIP-110).
    zstd_allowed: bool,
}

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let fetch: FetchRequest = decode(request, body)?;
    let version = request.version;
    if version >= 7 && fetch.session_id != 0 {
        let code = ResponseError::FetchSessionIdNotFound.code();
        telemetry::kafka::error(ApiKey::Fetch, code);
        return Ok(fetch_response::encode(
            request.correlation_id(),
            version,
            code,
            0,
            0,
            &[],
        ));
    }
    let read_committed = fetch.isolation_level == ISOLATION_READ_COMMITTED;
    let (mut topics, wanted) = plan(request, &fetch, read_committed);
    let deadline = Instant::now() + max_wait(request, fetch.max_wait_ms);
    let min_bytes = u64::try_from(fetch.min_bytes).unwrap_or(0);
    let max_bytes = u64::try_from(fetch.max_bytes)
        .unwrap_or(u64::MAX)
        .min(request.broker.config.kafka.fetch_max_bytes);
    loop {
        let read = read_round(request.shard, &wanted, max_bytes).await;
        let ready: u64 = read
            .iter()
            .map(|(_, partition)| partition_bytes(partition))
            .sum();
        let failed = read
            .iter()
            .any(|(_, partition)| partition.error_code != error_code::NONE);
        let enough = ready >= min_bytes || failed || wanted.is_empty();
        if enough || Instant::now() >= deadline || request.hangup.happened() {
            for ((topic, partition), fetched) in read {
                topics[topic].partitions[partition] = fetched;
            }
            break;
        }
        // Wait for data past what this round saw: a partition with some
        // data but fewer than `min_bytes` must not end the wait at once, or
        // the request would spin reading the same bytes until its deadline.
        let seen = past_what_was_read(&wanted, &read);
        let data = pin!(wait_for_data(request.shard, &seen, deadline));
        let _ = select(data, pin!(request.hangup.wait())).await;
    }
    if version >= TOPIC_IDS_FROM_FETCH_VERSION {
        drop_recreated_topics(request, &mut topics);
    }
    apply_max_bytes(&mut topics, max_bytes);
    // The larger of the byte-rate and request-time throttles (Kafka's
    // `KafkaApis` sends the larger of the two).
    let throttle = throttle_for_quota(request, &mut topics).max(request.record_request_time());
    count_sent(&topics);
    Ok(fetch_response::encode(
        request.correlation_id(),
        version,
        error_code::NONE,
        0,
        throttle_ms(throttle),
        &topics,
    ))
}

/// Count the response's record bytes against the consumer's
/// `consumer_byte_rate` quota (`broker/quota.rs`), as KIP-219 throttles:
/// when the consumer is over its quota already, the response goes out
/// without records (not counted) and with `throttle_time_ms`; else the
/// records go out, and if they take it over the quota the response carries
/// the throttle. Either way the connection reads nothing more until the
/// throttle ends. (Kafka empties a response whose own bytes would cross
/// the quota; a response larger than the whole window's allowance would
/// then never go out, so Sluice sends it and throttles after.)
fn throttle_for_quota(request: &Request<'_>, topics: &mut [FetchedTopic]) -> Duration {
    let already = request.quota_throttle_now(QuotaKind::Fetch);
    if !already.is_zero() {
        for partition in topics.iter_mut().flat_map(|topic| &mut topic.partitions) {
            partition.batches.clear();
            if let Some(aborted) = &mut partition.aborted_transactions {
                aborted.clear();
            }
        }
        return already;
    }
    let bytes: u64 = topics
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(partition_bytes)
        .sum();
    request.record_quota(QuotaKind::Fetch, bytes)
}

/// `wanted` with each offset moved up to what its partition could be read
/// up to in `read` (the high watermark, or the last stable offset for
/// read_committed): what a long poll waits to see move.
fn past_what_was_read(
    wanted: &[Wanted],
    read: &[((usize, usize), FetchedPartition)],
) -> Vec<Wanted> {
    let seen: BTreeMap<(usize, usize), i64> = read
        .iter()
        .map(|(slot, partition)| {
            let readable = match partition.aborted_transactions {
                Some(_) => partition.last_stable_offset,
                None => partition.high_watermark,
            };
            (*slot, readable)
        })
        .collect();
    wanted
        .iter()
        .map(|partition| Wanted {
            offset: partition
                .offset
                .max(seen.get(&partition.slot).copied().unwrap_or(-1)),
            ..partition.clone()
        })
        .collect()
}

/// How long the request may wait: the client's `max_wait_ms` (negative is
/// none), at most `kafka.fetch_wait_max_ms`.
fn max_wait(request: &Request<'_>, max_wait_ms: i32) -> Duration {
    let asked = u64::try_from(max_wait_ms).unwrap_or(0);
    Duration::from_millis(asked.min(request.broker.config.kafka.fetch_wait_max_ms))
}

/// The response skeleton in request order, and the partitions that exist.
fn plan(
    request: &Request<'_>,
    fetch: &FetchRequest,
    read_committed: bool,
) -> (Vec<FetchedTopic>, Vec<Wanted>) {
    let cluster = request.broker.metadata.snapshot();
    let authorizer = request.authorizer();
    let by_id = request.version >= TOPIC_IDS_FROM_FETCH_VERSION;
    let mut topics = Vec::with_capacity(fetch.topics.len());
    let mut wanted = Vec::new();
    for (topic_slot, topic) in fetch.topics.iter().enumerate() {
        let id = TopicId::from_uuid(topic.topic_id);
        let meta = if by_id {
            cluster.topic_by_id(id)
        } else {
            cluster.topic(topic.topic.0.as_str())
        };
        let name = match (by_id, meta) {
            (false, _) => topic.topic.0.to_string(),
            (true, Some(meta)) => meta.name.clone(),
            (true, None) => String::new(),
        };
        let refused = (!by_id || meta.is_some()) && !authorizer.topic(Operation::Read, &name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for (partition_slot, partition) in topic.partitions.iter().enumerate() {
            let exists = !refused
                && meta.is_some_and(|meta| {
                    u32::try_from(partition.partition).is_ok_and(|index| index < meta.partitions)
                });
            // A cluster places each partition on one node: the others
            // answer NOT_LEADER_OR_FOLLOWER and the client refreshes its
            // metadata (Cluster I: no followers to read from yet).
            let elsewhere = exists
                && request
                    .broker
                    .leader_elsewhere(&name, partition.partition as u32)
                    .is_some();
            let exists = exists && !elsewhere;
            let code = match (exists, meta) {
                _ if refused => ResponseError::TopicAuthorizationFailed.code(),
                _ if elsewhere => ResponseError::NotLeaderOrFollower.code(),
                (true, _) => error_code::NONE,
                // Fetch 13+ (KIP-516): an id no live topic has, such as one
                // of a topic deleted and created again.
                (false, None) if by_id => ResponseError::UnknownTopicId.code(),
                (false, _) => ResponseError::UnknownTopicOrPartition.code(),
            };
            let isolation = if read_committed {
                Isolation::ReadCommitted
            } else {
                Isolation::ReadUncommitted
            };
            partitions.push(empty_partition(partition.partition, code, isolation));
            if exists {
                wanted.push(Wanted {
                    slot: (topic_slot, partition_slot),
                    topic: name.clone(),
                    index: partition.partition as u32,
                    offset: partition.fetch_offset,
                    max_bytes: u32::try_from(partition.partition_max_bytes).unwrap_or(0),
                    isolation,
                    zstd_allowed: request.version >= ZSTD_FROM_FETCH_VERSION,
                });
            }
        }
        topics.push(FetchedTopic {
            name,
            id,
            partitions,
        });
    }
    (topics, wanted)
}

/// A partition with no data yet; the aborted list's presence is the
/// request's isolation level.
fn empty_partition(index: i32, error_code: i16, isolation: Isolation) -> FetchedPartition {
    FetchedPartition {
        index,
        error_code,
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
        aborted_transactions: (isolation == Isolation::ReadCommitted).then(Vec::new),
        batches: Vec::new(),
    }
}

fn by_owner(context: &ShardContext, wanted: &[Wanted]) -> BTreeMap<ShardId, Vec<Wanted>> {
    let mut groups: BTreeMap<ShardId, Vec<Wanted>> = BTreeMap::new();
    for partition in wanted {
        let owner = context.shards.owner(&partition.topic, partition.index);
        groups.entry(owner).or_default().push(partition.clone());
    }
    groups
}

/// Read every wanted partition once, one call per owner shard. Each owner
/// reads its partitions in request order until `max_bytes` of batches are
/// read (at least one batch, if any partition has one), and only the
/// watermarks of the rest.
async fn read_round(
    context: &Rc<ShardContext>,
    wanted: &[Wanted],
    max_bytes: u64,
) -> Vec<((usize, usize), FetchedPartition)> {
    let calls = by_owner(context, wanted)
        .into_iter()
        .map(|(owner, partitions)| {
            context.run_on(owner, move |owner_context| async move {
                let mut remaining = max_bytes;
                let mut read_any = false;
                partitions
                    .iter()
                    .map(|partition| {
                        let limit = if read_any && remaining == 0 {
                            None
                        } else {
                            Some(u64::from(partition.max_bytes).min(remaining))
                        };
                        let fetched = read_partition(&owner_context, partition, limit);
                        let bytes = partition_bytes(&fetched);
                        read_any |= bytes > 0;
                        remaining = remaining.saturating_sub(bytes);
                        (partition.slot, fetched)
                    })
                    .collect::<Vec<_>>()
            })
        });
    join_all(calls)
        .await
        .into_iter()
        .flat_map(|result| result.unwrap_or_default())
        .collect()
}

/// The partition's watermarks and, unless `limit` is `None`, its batches
/// from the wanted offset up to `limit` bytes (at least one batch).
fn read_partition(context: &ShardContext, wanted: &Wanted, limit: Option<u64>) -> FetchedPartition {
    let store = &context.store_for(&wanted.topic, wanted.index);
    let Some(id) = store.partition_id(&wanted.topic, wanted.index) else {
        return empty_partition(
            wanted.index as i32,
            ResponseError::UnknownTopicOrPartition.code(),
            wanted.isolation,
        );
    };
    let offsets = store.offsets(id);
    let mut fetched = empty_partition(wanted.index as i32, error_code::NONE, wanted.isolation);
    if let Some(offsets) = offsets {
        fetched.high_watermark = offsets.high_watermark.0;
        fetched.last_stable_offset = offsets.last_stable_offset.0;
        fetched.log_start_offset = offsets.log_start_offset.0;
    }
    let Some(limit) = limit else {
        return fetched;
    };
    match store.read_isolated(id, Offset(wanted.offset), limit, wanted.isolation) {
        Ok(result) => {
            let zstd = |batch: &crate::storage::ReadBatch| {
                i16::try_from(batch.attributes & 0x7).ok() == Some(ZSTD_CODEC)
            };
            if !wanted.zstd_allowed && result.batches.iter().any(zstd) {
                // Kafka will not send zstd data to a client too old for it.
                fetched.error_code = ResponseError::UnsupportedCompressionType.code();
                return fetched;
            }
            fetched.batches = result.batches;
            fetched.aborted_transactions = result.aborted.map(|aborted| {
                aborted
                    .iter()
                    .map(|txn| (txn.producer_id, txn.first_offset.0))
                    .collect()
            });
        }
        Err(error) => fetched.error_code = error_code::for_read(&error),
    }
    fetched
}

fn partition_bytes(partition: &FetchedPartition) -> u64 {
    partition
        .batches
        .iter()
        .map(|batch| u64::from(batch.len))
        .sum()
}

/// Wait until an owner sees new data for one of its wanted partitions, or
/// the deadline.
async fn wait_for_data(context: &Rc<ShardContext>, wanted: &[Wanted], deadline: Instant) {
    let waits: Vec<_> = by_owner(context, wanted)
        .into_iter()
        .map(|(owner, partitions)| {
            Box::pin(context.run_on(owner, move |owner_context| async move {
                wait_on_owner(&owner_context, &partitions, deadline).await;
            }))
        })
        .collect();
    if waits.is_empty() {
        return;
    }
    let _ = select_all(waits).await;
}

async fn wait_on_owner(context: &ShardContext, partitions: &[Wanted], deadline: Instant) {
    loop {
        // In a cluster a shard may lead several shard groups' logs: wait on
        // each store a wanted partition is in.
        let mut stores: Vec<Rc<crate::storage::ShardStore>> = Vec::new();
        let mut has_data = false;
        for partition in partitions {
            let store = context.store_for(&partition.topic, partition.index);
            has_data |= store
                .partition_id(&partition.topic, partition.index)
                .and_then(|id| store.offsets(id))
                .is_some_and(|offsets| {
                    let readable = match partition.isolation {
                        Isolation::ReadUncommitted => offsets.high_watermark,
                        Isolation::ReadCommitted => offsets.last_stable_offset,
                    };
                    readable.0 > partition.offset
                });
            if !stores.iter().any(|known| Rc::ptr_eq(known, &store)) {
                stores.push(store);
            }
        }
        if has_data || stores.is_empty() {
            return;
        }
        let progress = select_all(
            stores
                .iter()
                .map(|store| Box::pin(store.wait_for_progress())),
        );
        if compio::time::timeout_at(deadline, progress).await.is_err() {
            return;
        }
    }
}

/// Owners read partitions by topic name: a topic deleted and created again
/// under its name while the request ran may have been read in place of the
/// one its id named. Checked once every read is done (a re-creation after
/// this cannot have been read), such a topic's partitions are answered
/// UNKNOWN_TOPIC_ID with no data, as if the id had been stale from the start.
fn drop_recreated_topics(request: &Request<'_>, topics: &mut [FetchedTopic]) {
    let cluster = request.broker.metadata.snapshot();
    for topic in topics {
        let still_named = cluster
            .topic_by_id(topic.id)
            .is_some_and(|meta| meta.name == topic.name);
        if still_named || topic.name.is_empty() {
            continue;
        }
        for partition in &mut topic.partitions {
            *partition = empty_partition(
                partition.index,
                ResponseError::UnknownTopicId.code(),
                if partition.aborted_transactions.is_some() {
                    Isolation::ReadCommitted
                } else {
                    Isolation::ReadUncommitted
                },
            );
        }
    }
}

/// Per-topic bytes and records out, and partition errors (the response is
/// framed by hand, so `Request::respond` does not see its codes).
fn count_sent(topics: &[FetchedTopic]) {
    for topic in topics {
        let mut bytes = 0u64;
        let mut records = 0u64;
        for partition in &topic.partitions {
            if partition.error_code != error_code::NONE {
                telemetry::kafka::error(ApiKey::Fetch, partition.error_code);
            }
            for batch in &partition.batches {
                bytes += u64::from(batch.len);
                records +=
                    u64::try_from(batch.last_offset.0 - batch.base_offset.0 + 1).unwrap_or(0);
            }
        }
        if bytes > 0 {
            let counters = telemetry::kafka::topic(&topic.name);
            counters.bytes_out.increment(bytes);
            counters.records_out.increment(records);
        }
    }
}

/// Keep whole batches, in request order, while the response stays within
/// `max_bytes`; the first batch is always kept.
fn apply_max_bytes(topics: &mut [FetchedTopic], max_bytes: u64) {
    let mut used = 0u64;
    let mut kept_any = false;
    for partition in topics
        .iter_mut()
        .flat_map(|topic| topic.partitions.iter_mut())
    {
        let mut keep = 0;
        for batch in &partition.batches {
            let len = u64::from(batch.len);
            if kept_any && used + len > max_bytes {
                break;
            }
            used += len;
            kept_any = true;
            keep += 1;
        }
        partition.batches.truncate(keep);
    }
}
