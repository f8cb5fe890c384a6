//! Produce: validate each partition's batches, append them on the owner
//! shard, and answer when the durability `acks` asked for is reached.
//!
//! * acks=all (-1): after the fdatasync covering the batches.
//! * acks=1: once the batches are in the commit log's write path; written at
//!   the next flush, fsynced within the topic's `flush.ms`.
//! * acks=0: the same, and no response at all.
//!
//! Batches are checked on the shard that received them, before anything is
//! appended ([`ValidatedBatch::validate`]): the frame (magic 2, lengths,
//! CRC32C, `max.message.bytes`), the header fields Kafka checks, and every
//! record, decompressed through a fixed buffer up to
//! `storage.decompressed_batch_ratio_max` x `max.message.bytes`. A refused
//! record is named in the response's KIP-467 `record_errors` (v8+). Topics
//! with `message.timestamp.type = LogAppendTime` get the broker's time
//! stamped in; CreateTime batches whose `maxTimestamp` is not their records'
//! largest get it corrected, as Kafka does (either way with a new CRC).
//! CreateTime batches with a record timestamped outside the topic's
//! `message.timestamp.before.max.ms` / `after.max.ms` window around the
//! broker's clock (KIP-937) get INVALID_TIMESTAMP, the records named in
//! `record_errors`. On a topic whose `cleanup.policy` includes `compact`, a
//! batch with a record without a key gets INVALID_RECORD, each such record
//! named, as Kafka's `LogValidator` refuses them (the cleaner keeps the
//! latest record of each key, so a keyless one has no place). A topic whose
//! `compression.type` is a codec gets every
//! batch in another codec recompressed to it (`record_batch::recompress`)
//! and checked against `max.message.bytes` again; with `producer`, each
//! compression is stored as sent. Nothing invalid is ever stored.
//!
//! Batches of idempotent producers (producerId >= 0) are checked on the
//! owner shard against the partition's producer state
//! ([`crate::storage::producer_state`]): a retry of one of the producer's
//! last 5 batches is answered with its original base offset and stored once;
//! a sequence gap gets OUT_OF_ORDER_SEQUENCE_NUMBER, an older epoch
//! INVALID_PRODUCER_EPOCH.
//!
//! Transactional batches (KIP-98) need the request's transactional id and
//! a producer id. A producer's first transactional batch on a partition
//! opens its transaction there, so before it is appended the owner shard
//! asks the id's transaction coordinator, on this node or another one of
//! the cluster, whether the partition is in the producer's open
//! transaction (KIP-890's verification, `broker/txn/verify.rs`): INVALID_TXN_STATE if not, so a late batch of a finished
//! transaction cannot leave one open that nobody will end. A batch from the
//! producer outside its open transaction gets INVALID_TXN_STATE. From v12
//! (KIP-890's transactions v2) the broker adds the partition to the
//! producer's transaction itself, as Kafka's `addPartition` path does,
//! instead of only checking it: the client need not send AddPartitionsToTxn
//! first. A retriable coordinator answer (CONCURRENT_TRANSACTIONS, a
//! coordinator loading or unavailable) becomes NOT_ENOUGH_REPLICAS, which
//! every client retries, as in Kafka.
//!
//! From v10 a NOT_LEADER_OR_FOLLOWER names the partition's leader and its
//! endpoint (KIP-951): in a cluster, a partition another node leads; on a
//! single node only while shutting down, naming this broker. v11 may
//! answer TRANSACTION_ABORTABLE, which Sluice never needs.
//! From v13 topics are named by id (KIP-516): an unknown id gets
//! UNKNOWN_TOPIC_ID and is never auto-created.
//!
//! The request's size counts against the producer's `producer_byte_rate`
//! quota (`broker/quota.rs`): over it, the response carries
//! `throttle_time_ms` and the connection reads nothing more until then
//! (KIP-219).
//!
//! Authorization (`kafka/authorize.rs`): a request with a transactional id
//! needs WRITE on it (TRANSACTIONAL_ID_AUTHORIZATION_FAILED for every
//! partition otherwise), each topic needs WRITE (TOPIC_AUTHORIZATION_FAILED),
//! and a topic is auto-created only for a principal allowed CREATE on the
//! cluster or the topic (UNKNOWN_TOPIC_OR_PARTITION otherwise).
//!
//! The request passes the connection's turn once every partition's batches
//! are appended (or refused), so a pipelined Produce behind it appends after
//! it while both wait for the same group-commit fdatasync.

use crate::log_throttle::{LogThrottle, monotonic_ms};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use futures_util::future::{join, join_all};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse,
    TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, BrokerId, ProduceRequest, ProduceResponse};

use super::{decode, str_bytes};
use crate::broker::metadata::{TopicId, TopicMeta};
use crate::broker::quota::{QuotaKind, throttle_ms};
use crate::broker::replication;
use crate::broker::topic_config::{Recompression, TimestampType, TopicConfig};
use crate::broker::txn::verify::{VerifyRequest, verify as verify_with_coordinator};
use crate::broker::{Broker, create_partition_here};
use crate::ids::Offset;
use crate::kafka::authorize::Authorizer;
use crate::kafka::dispatch::Request;
use crate::kafka::error_code;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::record_batch::record_walk::Field;
use crate::record_batch::{self, BatchError, BatchLimits, ValidatedBatch};
use crate::security::acl::Operation;
use crate::shard::ShardContext;
use crate::storage::Durability;
use crate::storage::partition::validate_topic_name;
use crate::storage::producer_state::TxnToken;
use crate::storage::segment::now_ms;
use crate::telemetry;

/// The first Produce version that may carry zstd batches (KIP-110).
const ZSTD_FROM_PRODUCE_VERSION: i16 = 7;
/// The first version whose NOT_LEADER_OR_FOLLOWER carries the current
/// leader and its endpoint (KIP-951).
const LEADER_HINT_FROM_VERSION: i16 = 10;
/// The first version whose transactional batches add their partition to
/// the transaction (KIP-890 part 2).
const IMPLICIT_ADD_FROM_VERSION: i16 = 12;
/// The first version that names topics by id (KIP-516).
const TOPIC_IDS_FROM_VERSION: i16 = 13;
/// Kafka's codec id for zstd (attribute bits 0-2).
pub const ZSTD_CODEC: i16 = 4;
/// Most records one refused batch names in `record_errors` (KIP-467): a
/// batch of a million tiny records must not cost a response of a million
/// messages. The error message gives the full count.
const RECORD_ERRORS_MAX: usize = 100;

const ACKS_NONE: i16 = 0;
const ACKS_LEADER: i16 = 1;
const ACKS_ALL: i16 = -1;

#[derive(Clone)]
struct Outcome {
    error_code: i16,
    message: Option<String>,
    /// KIP-467: (index of the record in its batch, why it was refused).
    record_errors: Vec<(i32, String)>,
    base_offset: i64,
    log_append_time_ms: i64,
    log_start_offset: i64,
    /// NOT_LEADER_OR_FOLLOWER: the partition's leader and its leader
    /// epoch, for the KIP-951 hint (`None`: this node).
    leader: Option<(i32, i32)>,
}

impl Outcome {
    fn error(error_code: i16, message: impl Into<String>) -> Outcome {
        Outcome {
            error_code,
            message: Some(message.into()),
            record_errors: Vec::new(),
            base_offset: -1,
            log_append_time_ms: -1,
            log_start_offset: -1,
            leader: None,
        }
    }

    /// A refused batch; names the record at fault when there is one.
    fn batch(error: &BatchError) -> Outcome {
        let mut outcome = Outcome::error(error_code::for_batch(error), error.to_string());
        if let BatchError::Records(records) = error
            && let Some(index) = records.record_index()
        {
            outcome.record_errors.push((index, records.to_string()));
        }
        outcome
    }
}

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Option<Response>, RequestError> {
    let produce: ProduceRequest = decode(request, body)?;
    let acks = produce.acks;
    // How long acks=all may wait for its fdatasync; 0 or less: no limit.
    let timeout = match u64::try_from(produce.timeout_ms) {
        Ok(ms) if ms > 0 => Duration::from_millis(ms),
        _ => Duration::MAX,
    };
    let by_id = request.version >= TOPIC_IDS_FROM_VERSION;
    let authorizer = request.authorizer();
    let transactional_id_refused = produce
        .transactional_id
        .as_ref()
        .is_some_and(|id| !authorizer.transactional_id(Operation::Write, &id.0));
    let mut slots = Vec::new();
    let mut work = Vec::new();
    let mut appended = Vec::new();
    for (topic_slot, topic) in produce.topic_data.iter().enumerate() {
        let target = || {
            if by_id {
                Target::Id(TopicId::from_uuid(topic.topic_id))
            } else {
                Target::Name(topic.name.0.to_string())
            }
        };
        let access = if transactional_id_refused {
            Access::Refused(Outcome::error(
                ResponseError::TransactionalIdAuthorizationFailed.code(),
                "not allowed to WRITE to the request's transactional id",
            ))
        } else {
            access(request, &authorizer, &target())
        };
        for partition in &topic.partition_data {
            slots.push((topic_slot, partition.index));
            let target = target();
            let access = access.clone();
            let records = partition.records.clone();
            let transactional_id = produce.transactional_id.as_ref().map(|id| id.0.to_string());
            let (done, appended_here) = oneshot::channel();
            appended.push(appended_here);
            work.push(produce_partition(
                request,
                PartitionWrite {
                    target,
                    index: partition.index,
                    records,
                    acks,
                    transactional_id,
                    timeout,
                    appended: done,
                    access,
                },
            ));
        }
    }
    // A sender dropped unsent (a refused partition) counts as done too.
    let pass_turn = async {
        join_all(appended).await;
        request.pass_turn();
    };
    let (outcomes, ()) = join(join_all(work), pass_turn).await;
    // The request counts against its producer_byte_rate quota once served;
    // a throttle mutes the connection (even for acks=0, which hears nothing).
    let throttle = request.record_quota(QuotaKind::Produce, request.size as u64);
    if acks == ACKS_NONE {
        // Nothing is sent back, but the errors still count; and a failed
        // partition closes the connection, as Kafka's KafkaApis does, so
        // that the client notices (its next send reconnects and refreshes
        // its metadata) instead of losing every later record silently.
        let mut failed = None;
        for (slot, outcome) in slots.iter().zip(&outcomes) {
            if outcome.error_code != error_code::NONE {
                telemetry::kafka::error(ApiKey::Produce, outcome.error_code);
                failed.get_or_insert((slot, outcome.error_code));
            }
        }
        if let Some(((topic_slot, index), code)) = failed {
            let topic = &produce.topic_data[*topic_slot];
            let topic = if topic.name.is_empty() {
                topic.topic_id.to_string()
            } else {
                topic.name.to_string()
            };
            return Err(RequestError::AcksZeroProduceFailed {
                partition: format!("{topic}-{index}"),
                error: telemetry::kafka::error_name(code),
            });
        }
        return Ok(None);
    }
    let leader_hint = request.version >= LEADER_HINT_FROM_VERSION;
    let node = BrokerId(request.broker.config.kafka.node_id);
    let mut leaders: Vec<i32> = Vec::new();
    let mut responses: Vec<(usize, TopicProduceResponse)> = Vec::new();
    for ((topic_slot, index), outcome) in slots.into_iter().zip(outcomes) {
        if responses.last().is_none_or(|(slot, _)| *slot != topic_slot) {
            let topic = &produce.topic_data[topic_slot];
            responses.push((
                topic_slot,
                TopicProduceResponse::default()
                    .with_name(topic.name.clone())
                    .with_topic_id(topic.topic_id),
            ));
        }
        let (leader, epoch) = outcome
            .leader
            .map_or((node, crate::storage::LEADER_EPOCH), |(id, epoch)| {
                (BrokerId(id), epoch)
            });
        let mut partition = partition_response(index, outcome);
        if leader_hint && partition.error_code == ResponseError::NotLeaderOrFollower.code() {
            if !leaders.contains(&leader.0) {
                leaders.push(leader.0);
            }
            partition = partition.with_current_leader(
                LeaderIdAndEpoch::default()
                    .with_leader_id(leader)
                    .with_leader_epoch(epoch),
            );
        }
        responses
            .last_mut()
            .expect("pushed above")
            .1
            .partition_responses
            .push(partition);
    }
    let mut response = ProduceResponse::default()
        .with_responses(responses.into_iter().map(|(_, topic)| topic).collect())
        .with_throttle_time_ms(throttle_ms(throttle));
    if !leaders.is_empty() {
        let endpoints = request
            .broker
            .brokers(request.session.listener())
            .into_iter()
            .filter(|(id, ..)| leaders.contains(id))
            .map(|(id, host, port)| {
                NodeEndpoint::default()
                    .with_node_id(BrokerId(id))
                    .with_host(str_bytes(&host))
                    .with_port(i32::from(port))
            })
            .collect();
        response = response.with_node_endpoints(endpoints);
    }
    request.respond(response).map(Some)
}

fn partition_response(index: i32, outcome: Outcome) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(outcome.error_code)
        .with_error_message(outcome.message.map(|message| str_bytes(&message)))
        .with_record_errors(
            outcome
                .record_errors
                .iter()
                .map(|(index, message)| {
                    BatchIndexAndErrorMessage::default()
                        .with_batch_index(*index)
                        .with_batch_index_error_message(Some(str_bytes(message)))
                })
                .collect(),
        )
        .with_base_offset(outcome.base_offset)
        .with_log_append_time_ms(outcome.log_append_time_ms)
        .with_log_start_offset(outcome.log_start_offset)
}

/// How the request names a partition's topic: by name (v3–12), by id (v13+).
enum Target {
    Name(String),
    Id(TopicId),
}

/// What the principal may do with a partition's topic.
#[derive(Clone)]
enum Access {
    /// Write, and create the topic if it does not exist when `may_create`.
    /// On a retry topic, `provenance` checks that the records name only
    /// failed records of topics the principal may READ (`None`: no
    /// authorizer, or a super user).
    Write {
        may_create: bool,
        provenance: Option<Authorizer>,
    },
    /// Nothing: the partition's answer.
    Refused(Outcome),
}

/// `target`'s access for the request's principal. A topic id no topic has
/// is left to [`resolve_topic`] (UNKNOWN_TOPIC_ID).
fn access(request: &Request<'_>, authorizer: &Authorizer, target: &Target) -> Access {
    let snapshot;
    let name = match target {
        Target::Name(name) => name.as_str(),
        Target::Id(id) => {
            snapshot = request.broker.metadata.snapshot();
            match snapshot.topic_by_id(*id) {
                Some(topic) => topic.name.as_str(),
                None => {
                    return Access::Write {
                        may_create: false,
                        provenance: None,
                    };
                }
            }
        }
    };
    if !authorizer.topic(Operation::Write, name) {
        // By id, the name stays unsaid: the client may not even see it.
        let message = match target {
            Target::Name(_) => format!("not allowed to WRITE to topic {name}"),
            Target::Id(_) => "not allowed to WRITE to this topic".to_owned(),
        };
        return Access::Refused(Outcome::error(
            ResponseError::TopicAuthorizationFailed.code(),
            message,
        ));
    }
    let restricted = !matches!(authorizer, Authorizer::AllowAll);
    Access::Write {
        may_create: authorizer.may_create_topic(name),
        provenance: (restricted && crate::broker::retry::retry_group(name).is_some())
            .then(|| authorizer.clone()),
    }
}

/// One partition's part of a Produce request.
struct PartitionWrite {
    target: Target,
    index: i32,
    records: Option<Bytes>,
    acks: i16,
    /// The request's transactional id, which its transactional batches need.
    transactional_id: Option<String>,
    timeout: Duration,
    /// Signalled once the batches are appended, before the durability wait.
    appended: oneshot::Sender<()>,
    access: Access,
}

async fn produce_partition(request: &Request<'_>, write: PartitionWrite) -> Outcome {
    let PartitionWrite {
        target,
        index,
        records,
        acks,
        transactional_id,
        timeout,
        appended,
        access,
    } = write;
    let (may_create, provenance) = match access {
        Access::Write {
            may_create,
            provenance,
        } => (may_create, provenance),
        Access::Refused(outcome) => return outcome,
    };
    if !matches!(acks, ACKS_NONE | ACKS_LEADER | ACKS_ALL) {
        return Outcome::error(
            ResponseError::InvalidRequiredAcks.code(),
            format!("acks must be -1, 0 or 1, not {acks}"),
        );
    }
    let topic = match resolve_topic(request, target, may_create).await {
        Ok(topic) => topic,
        Err(outcome) => return outcome,
    };
    let name = topic.name.clone();
    let Ok(index) = u32::try_from(index) else {
        return Outcome::error(
            ResponseError::UnknownTopicOrPartition.code(),
            "negative partition",
        );
    };
    if index >= topic.partitions {
        return Outcome::error(
            ResponseError::UnknownTopicOrPartition.code(),
            format!("topic {name} has {} partitions", topic.partitions),
        );
    }
    if let Some(leader) = request.broker.leader_elsewhere(&name, index) {
        let epoch = request.broker.partition_leader_epoch(&name, index);
        return Outcome {
            leader: Some((leader, epoch)),
            ..Outcome::error(
                ResponseError::NotLeaderOrFollower.code(),
                format!("partition {index} of {name} is led by node {leader}"),
            )
        };
    }
    let Some(records) = records else {
        return Outcome::error(ResponseError::InvalidRecord.code(), "no records");
    };
    let ratio = request.broker.config.storage.decompressed_batch_ratio_max;
    let transactional = transactional_id.is_some();
    // zstd needs Produce v7 (KIP-110): older requests cannot carry it.
    let zstd_allowed = request.version >= ZSTD_FROM_PRODUCE_VERSION;
    let group = crate::broker::retry::retry_group(&name).map(str::to_owned);
    let retry = match &group {
        Some(group) => Some(
            crate::broker::retry::rules(request.broker, request.shard, &topic, index, group).await,
        ),
        None => None,
    };
    let mut policy = BatchPolicy::new(
        &topic.config,
        ratio,
        transactional,
        zstd_allowed,
        &request.broker.config.delay,
        retry,
    );
    policy.provenance = provenance;
    let (batches, log_append_time_ms) = match prepare(records, &policy) {
        Ok(prepared) => prepared,
        Err(outcome) => {
            log_refused_batch(request, &name, index, &outcome);
            return outcome;
        }
    };
    let retried = batches
        .iter()
        .fold(Retried::default(), |sum, batch| Retried {
            again: sum.again + batch.retried.again,
            dead_letters: sum.dead_letters + batch.retried.dead_letters,
            stuck: sum.stuck + batch.retried.stuck,
        });
    // acks=1 is answered once the batch is written to its segment file
    // (handed to the kernel: it survives a kill -9 of the broker, as Kafka's
    // and RocketMQ's async flush do); acks=0 has no answer to wait for.
    let durability = match acks {
        ACKS_ALL => Durability::Fsynced,
        ACKS_NONE => Durability::Buffered,
        _ => Durability::Written,
    };
    let owner = request.shard.shards.owner(&topic.name, index);
    let broker = Arc::clone(request.broker);
    let implicit_add = request.version >= IMPLICIT_ADD_FROM_VERSION;
    let appended = request
        .shard
        .run_on(owner, move |context| {
            append_on_owner(
                OwnerWrite {
                    context,
                    broker,
                    topic,
                    index,
                    transactional_id,
                    implicit_add,
                },
                batches,
                durability,
                timeout,
                appended,
            )
        })
        .await;
    if let (Ok(Ok(_)), Some(group)) = (&appended, group) {
        retried.count(&group);
    }
    match appended {
        Ok(Ok((base_offset, log_start_offset))) => Outcome {
            error_code: error_code::NONE,
            message: None,
            record_errors: Vec::new(),
            base_offset: base_offset.0,
            log_append_time_ms,
            log_start_offset: log_start_offset.0,
            leader: None,
        },
        Ok(Err(outcome)) => outcome,
        Err(gone) => Outcome::error(ResponseError::NotLeaderOrFollower.code(), gone.to_string()),
    }
}

/// The topic a partition write names: by name, created if auto-creation is
/// on and the principal `may_create` it; by id, only a live topic's.
async fn resolve_topic(
    request: &Request<'_>,
    target: Target,
    may_create: bool,
) -> Result<Arc<TopicMeta>, Outcome> {
    let name = match target {
        Target::Name(name) => name,
        Target::Id(id) => {
            return match request.broker.metadata.snapshot().topic_by_id(id) {
                Some(topic) if crate::broker::is_internal_topic(&topic.name) => {
                    Err(internal_topic(&topic.name))
                }
                Some(topic) => Ok(Arc::clone(topic)),
                None => Err(Outcome::error(
                    ResponseError::UnknownTopicId.code(),
                    format!("no topic has id {id}"),
                )),
            };
        }
    };
    if let Err(reason) = validate_topic_name(&name) {
        return Err(Outcome::error(
            ResponseError::InvalidTopicException.code(),
            reason,
        ));
    }
    if crate::broker::is_internal_topic(&name) {
        return Err(internal_topic(&name));
    }
    let topic = if may_create {
        request.broker.ensure_topic(request.shard, &name).await
    } else {
        request.broker.metadata.snapshot().topic(&name).cloned()
    };
    topic.ok_or_else(|| {
        Outcome::error(
            ResponseError::UnknownTopicOrPartition.code(),
            format!("topic {name} does not exist"),
        )
    })
}

fn internal_topic(name: &str) -> Outcome {
    Outcome::error(
        ResponseError::InvalidTopicException.code(),
        format!("{name} is an internal topic: only the broker writes it"),
    )
}

/// What a partition's batches are checked against and how they are changed.
struct BatchPolicy {
    limits: BatchLimits,
    /// LogAppendTime topics: the broker's time, stamped into every batch.
    append_time: Option<i64>,
    /// CreateTime topics: the timestamps records may carry.
    timestamps: TimestampWindow,
    recompression: Option<Recompression>,
    /// `cleanup.policy` includes `compact`: every record needs a key.
    compacted: bool,
    transactional_request: bool,
    zstd_allowed: bool,
    /// Levels, longest delay and the topic's delay (issue 18).
    delay: DelayPolicy,
    /// A retry topic's back-off and dead-letter partition (issue 18,
    /// `broker/retry.rs`): every record is held.
    retry: Option<crate::broker::retry::RetryRules>,
    /// On a retry topic under the ACL authorizer: the producer, who may
    /// name (`sluice.retry.topic`) only failed records of topics it may
    /// READ, so that a dead-letter replay cannot be steered into a topic it
    /// could not write to itself.
    provenance: Option<Authorizer>,
}

/// What decides which records of a batch are delayed, and until when
/// (`broker/delay.rs`), with the broker's clock at Produce.
struct DelayPolicy {
    levels_ms: Vec<u64>,
    max_delay_ms: u64,
    topic_delay_ms: u64,
    now_ms: i64,
}

impl BatchPolicy {
    fn new(
        config: &TopicConfig,
        decompressed_ratio_max: u32,
        transactional_request: bool,
        zstd_allowed: bool,
        delay: &crate::config::DelayConfig,
        retry: Option<crate::broker::retry::RetryRules>,
    ) -> BatchPolicy {
        let size_max = usize::try_from(config.max_message_bytes).unwrap_or(0);
        let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
        BatchPolicy {
            limits: BatchLimits::new(size_max, decompressed_ratio_max),
            append_time: (config.timestamp_type == TimestampType::LogAppendTime).then_some(now),
            timestamps: TimestampWindow {
                now_ms: now,
                before_max_ms: config.timestamp_before_max_ms,
                after_max_ms: config.timestamp_after_max_ms,
            },
            recompression: config.recompression,
            compacted: config.compact_policy,
            transactional_request,
            zstd_allowed,
            delay: DelayPolicy {
                levels_ms: delay.levels_ms.clone(),
                max_delay_ms: delay.max_delay_ms,
                topic_delay_ms: u64::try_from(config.delivery_delay_ms).unwrap_or(0),
                now_ms: crate::broker::delay::clock_ms(),
            },
            retry,
            provenance: None,
        }
    }
}

/// The record timestamps a CreateTime topic accepts: within
/// `before_max_ms` before and `after_max_ms` after the broker's clock
/// (Kafka's `LogValidator.validateTimestamp`; -1, no timestamp, passes).
#[derive(Clone, Copy)]
struct TimestampWindow {
    now_ms: i64,
    before_max_ms: i64,
    after_max_ms: i64,
}

impl TimestampWindow {
    fn admits(&self, timestamp_ms: i64) -> bool {
        let difference = i128::from(self.now_ms) - i128::from(timestamp_ms);
        timestamp_ms == record_batch::record_walk::NO_TIMESTAMP
            || (difference <= i128::from(self.before_max_ms)
                && -difference <= i128::from(self.after_max_ms))
    }

    /// Whether every record the walk summarised is admitted: the smallest
    /// and largest timestamps bound the others (a batch of NO_TIMESTAMP
    /// records only has no smallest).
    fn admits_all(&self, summary: &record_batch::record_walk::RecordsSummary) -> bool {
        summary.min_timestamp_ms.is_none_or(|min| self.admits(min))
            && self.admits(summary.max_timestamp_ms)
    }

    fn bounds(&self) -> (i128, i128) {
        // Timestamps are i64: a bound past either end is that end.
        let clamp = |bound: i128| bound.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
        (
            clamp(i128::from(self.now_ms) - i128::from(self.before_max_ms)),
            clamp(i128::from(self.now_ms) + i128::from(self.after_max_ms)),
        )
    }
}

/// A checked batch ready to store: the batch the partition serves and, when
/// some of its records are delayed, the timer batch holding them
/// (`storage/timer/held.rs`).
struct Prepared {
    batch: Bytes,
    held: Option<Bytes>,
    /// What became of the records of a batch produced to a retry topic.
    retried: Retried,
}

/// The records of a batch produced to a retry topic, by what became of
/// them (`broker/retry.rs`).
#[derive(Clone, Copy, Default)]
struct Retried {
    again: u64,
    dead_letters: u64,
    /// Past their retries with no dead-letter partition to go to.
    stuck: u64,
}

impl Retried {
    /// Count them in group `group`'s metrics.
    fn count(&self, group: &str) {
        use crate::telemetry::names;
        for (name, records) in [
            (names::RETRY_RECORDS, self.again),
            (names::DEAD_LETTER_RECORDS, self.dead_letters),
            (names::RETRY_STUCK_RECORDS, self.stuck),
        ] {
            if records > 0 {
                metrics::counter!(name, "group" => group.to_owned()).increment(records);
            }
        }
    }
}

impl Prepared {
    fn plain(batch: Bytes) -> Prepared {
        Prepared {
            batch,
            held: None,
            retried: Retried::default(),
        }
    }
}

/// Split `records` into batches and check each; stamp LogAppendTime topics,
/// correct a wrong `maxTimestamp`, recompress to the topic's codec, and
/// take the delayed records out.
fn prepare(records: Bytes, policy: &BatchPolicy) -> Result<(Vec<Prepared>, i64), Outcome> {
    let mut batches = Vec::new();
    let mut rest = records;
    while !rest.is_empty() {
        let size = record_batch::declared_size(&rest)
            .filter(|&size| size <= rest.len())
            .ok_or_else(|| {
                Outcome::error(
                    ResponseError::CorruptMessage.code(),
                    "record batch length runs past the request",
                )
            })?;
        let batch = rest.split_to(size);
        let (rewrite, may_delay) = check(&batch, policy)?;
        let batch = match rewrite {
            None => batch,
            Some(rewrite) => {
                let mut copy = BytesMut::from(&batch[..]);
                match rewrite {
                    Rewrite::LogAppendTime(now) => {
                        record_batch::set_log_append_time(&mut copy, now)
                    }
                    Rewrite::MaxTimestamp(max) => record_batch::set_max_timestamp(&mut copy, max),
                }
                copy.freeze()
            }
        };
        let batch = match policy.recompression {
            Some(target) => recompressed(batch, target, &policy.limits)?,
            None => batch,
        };
        batches.push(if may_delay {
            hold_delayed(batch, policy)?
        } else {
            Prepared::plain(batch)
        });
    }
    if batches.is_empty() {
        return Err(Outcome::error(
            ResponseError::InvalidRecord.code(),
            "no record batches",
        ));
    }
    Ok((batches, policy.append_time.unwrap_or(-1)))
}

/// `batch` in the topic's codec (itself if already in it), within the
/// topic's `max.message.bytes` afterwards (Kafka checks the size again
/// after recompression: MESSAGE_TOO_LARGE).
fn recompressed(
    batch: Bytes,
    target: Recompression,
    limits: &BatchLimits,
) -> Result<Bytes, Outcome> {
    let rebuilt = record_batch::recompress(
        &batch,
        target.codec,
        target.level,
        limits.decompressed_max_bytes,
    )
    .map_err(|error| Outcome::batch(&error))?;
    let Some(rebuilt) = rebuilt else {
        return Ok(batch);
    };
    if rebuilt.len() > limits.size_max_bytes {
        return Err(Outcome::error(
            ResponseError::MessageTooLarge.code(),
            format!(
                "the batch is {} bytes once recompressed with the topic's compression.type {}, \
                 above its max.message.bytes ({})",
                rebuilt.len(),
                target.codec.name(),
                limits.size_max_bytes
            ),
        ));
    }
    Ok(Bytes::from(rebuilt))
}

/// A partition a transactional batch is written to.
struct TxnPartition<'a> {
    transactional_id: &'a str,
    topic: &'a str,
    index: u32,
    id: crate::ids::PartitionId,
    /// Add it to the transaction (Produce v12+) rather than only check it.
    implicit_add: bool,
}

/// Take the producer's token on the partition and, unless its transaction
/// is open here already, ask the coordinator to add the partition to it
/// (Produce v12+) or whether it is in it (see the module docs).
async fn verify(
    context: &std::rc::Rc<ShardContext>,
    broker: &Broker,
    partition: TxnPartition<'_>,
    header: &record_batch::BatchHeader,
) -> Result<TxnToken, Outcome> {
    let TxnPartition {
        transactional_id,
        topic,
        index,
        id,
        implicit_add,
    } = partition;
    let token = context
        .store_for(topic, index)
        .txn_token(id, header.producer_id)
        .ok_or_else(|| {
            Outcome::error(
                ResponseError::UnknownTopicOrPartition.code(),
                "partition vanished",
            )
        })?;
    if token.joins_open_transaction(header.producer_epoch) {
        return Ok(token);
    }
    // Produce answers a fenced producer with INVALID_PRODUCER_EPOCH (KIP-588).
    let request = VerifyRequest {
        transactional_id: transactional_id.to_owned(),
        producer_id: header.producer_id,
        epoch: header.producer_epoch,
        topic: topic.to_owned(),
        partition: index,
        implicit_add,
        fenced: ResponseError::InvalidProducerEpoch.code(),
    };
    let (producer_id, epoch) = (header.producer_id, header.producer_epoch);
    let verified = verify_with_coordinator(context, broker, request).await;
    match verified {
        Ok(()) => Ok(token),
        Err(code) if is_retriable_coordinator_error(code) => Err(Outcome::error(
            ResponseError::NotEnoughReplicas.code(),
            format!(
                "unable to verify that {topic}-{index} is in the transaction of \
                 {transactional_id}: the coordinator answered error code {code}; retry"
            ),
        )),
        Err(code) if implicit_add => Err(Outcome::error(
            code,
            format!(
                "{topic}-{index} cannot join the transaction of {transactional_id} at producer \
                 {producer_id} epoch {epoch}"
            ),
        )),
        Err(code) => Err(Outcome::error(
            code,
            format!(
                "{topic}-{index} is not in an open transaction of {transactional_id} at producer \
                 {producer_id} epoch {epoch}: add it with AddPartitionsToTxn first"
            ),
        )),
    }
}

/// The coordinator answers that Kafka turns into NOT_ENOUGH_REPLICAS for
/// Produce, so that clients of every version retry without a metadata
/// refresh (`ReplicaManager`'s transaction verification).
fn is_retriable_coordinator_error(code: i16) -> bool {
    [
        ResponseError::ConcurrentTransactions,
        ResponseError::NetworkException,
        ResponseError::CoordinatorLoadInProgress,
        ResponseError::CoordinatorNotAvailable,
        ResponseError::NotCoordinator,
    ]
    .iter()
    .any(|error| error.code() == code)
}

/// Produce batches refused by validation, logged at most 20 times per 10 s.
static REFUSED_BATCHES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);

/// Say why a client's batch was refused (the client gets the code and, from
/// Produce v8, the message; the operator gets this line), throttled.
fn log_refused_batch(request: &Request<'_>, topic: &str, index: u32, outcome: &Outcome) {
    if let Some(refused) = REFUSED_BATCHES.record(monotonic_ms()) {
        tracing::warn!(
            peer = %request.peer,
            %topic,
            partition = index,
            error_code = outcome.error_code,
            reason = %outcome.message.as_deref().unwrap_or(""),
            refused,
            "refused a produce batch (`refused` counts refusals since the last such line)"
        );
    }
}

/// A change the broker makes to a valid batch before storing it.
enum Rewrite {
    LogAppendTime(i64),
    MaxTimestamp(i64),
}

/// Validate one batch; say what must be rewritten in it, if anything, and
/// whether some of its records may be delayed (a `sluice.` header, or a
/// topic delay).
fn check(batch: &[u8], policy: &BatchPolicy) -> Result<(Option<Rewrite>, bool), Outcome> {
    let validated =
        ValidatedBatch::validate(batch, &policy.limits).map_err(|error| Outcome::batch(&error))?;
    let header = validated.header();
    if !policy.zstd_allowed && header.compression_codec() == ZSTD_CODEC {
        return Err(Outcome::error(
            ResponseError::UnsupportedCompressionType.code(),
            "zstd batches need Produce v7 or later (KIP-110)",
        ));
    }
    if header.is_transactional() && !policy.transactional_request {
        return Err(Outcome::error(
            ResponseError::InvalidRequest.code(),
            "a transactional batch needs the request's transactional id",
        ));
    }
    if header.is_transactional() && !header.has_producer() {
        return Err(Outcome::error(
            ResponseError::InvalidRecord.code(),
            "a transactional batch needs a producer id",
        ));
    }
    check_records(batch, &validated, policy)?;
    let may_delay = policy.delay.topic_delay_ms > 0
        || policy.retry.is_some()
        || validated
            .records()
            .is_none_or(|summary| summary.sluice_header_records > 0);
    if let Some(now) = policy.append_time {
        return Ok((Some(Rewrite::LogAppendTime(now)), may_delay));
    }
    let claimed = validated.header().max_timestamp_ms;
    let rewrite = validated
        .records()
        .map(|summary| summary.max_timestamp_ms)
        .filter(|&found| found != claimed)
        .map(Rewrite::MaxTimestamp);
    Ok((rewrite, may_delay))
}

/// `batch` with its delayed records taken out into a timer batch (issue
/// 18; `broker/delay.rs` says which and until when). A record with a bad
/// delay header refuses the batch with INVALID_RECORD naming it (KIP-467);
/// so does a delayed record in a transactional batch, which the timer
/// cannot hold back until the transaction ends.
fn hold_delayed(batch: Bytes, policy: &BatchPolicy) -> Result<Prepared, Outcome> {
    use crate::broker::delay::{self, DelayRules, Delivery};
    use crate::storage::compaction::records::Records;
    use crate::storage::timer::held::Hold;
    let max = policy.limits.decompressed_max_bytes;
    let records = Records::parse(&batch, max)
        .map_err(|reason| Outcome::error(ResponseError::CorruptMessage.code(), reason))?;
    let rules = DelayRules {
        levels_ms: &policy.delay.levels_ms,
        max_delay_ms: policy.delay.max_delay_ms,
        topic_delay_ms: policy.delay.topic_delay_ms,
    };
    let mut due = Vec::with_capacity(records.records.len());
    let mut record_errors = Vec::new();
    let mut refused = 0usize;
    let mut first_reason = None;
    let mut retried = Retried::default();
    for (index, record) in records.records.iter().enumerate() {
        let bytes = &records.plain[record.bytes.clone()];
        let headers = crate::storage::timer::notes::record_headers(bytes)
            .map_err(|reason| Outcome::error(ResponseError::CorruptMessage.code(), reason))?;
        if let Some(producer) = &policy.provenance {
            let named = headers.iter().find_map(|(key, value)| {
                let key = &bytes[key.clone()];
                (key == crate::broker::retry::RETRY_TOPIC.as_bytes())
                    .then(|| value.clone().map(|value| &bytes[value]))
                    .flatten()
            });
            if let Some(topic) = named.map(String::from_utf8_lossy)
                && !producer.topic(Operation::Read, &topic)
            {
                return Err(Outcome::error(
                    ResponseError::TopicAuthorizationFailed.code(),
                    format!(
                        "record {index} names a failed record of topic {topic:?} \
                         ({}), which this principal may not READ",
                        crate::broker::retry::RETRY_TOPIC
                    ),
                ));
            }
        }
        let headers = headers.iter().map(|(key, value)| {
            (
                &bytes[key.clone()],
                value.clone().map(|value| &bytes[value]),
            )
        });
        let delivery = match &policy.retry {
            Some(rules) => {
                use crate::broker::retry::Retry;
                crate::broker::retry::retry(headers, policy.delay.now_ms, rules).map(|retry| {
                    Some(match retry {
                        Retry::Again(hold) => {
                            retried.again += 1;
                            hold
                        }
                        Retry::DeadLetter(hold) => {
                            retried.dead_letters += 1;
                            hold
                        }
                        Retry::NoDeadLetterPartition(hold) => {
                            retried.stuck += 1;
                            hold
                        }
                    })
                })
            }
            None => {
                delay::delivery(headers, policy.delay.now_ms, &rules).map(|delivery| match delivery
                {
                    Delivery::Now => None,
                    Delivery::At(at) => Some(Hold::at(at)),
                })
            }
        };
        match delivery {
            Ok(None) => due.push(None),
            Ok(Some(Hold { due_ms: at, .. })) if records.header.is_transactional() => {
                refused += 1;
                let reason = if policy.retry.is_some() {
                    format!(
                        "a record sent back to a retry topic (held until {at}) in a \
                         transactional batch: retries cannot be part of a transaction"
                    )
                } else {
                    format!(
                        "a delayed record (due at {at}) in a transactional batch: delayed \
                         records cannot be part of a transaction"
                    )
                };
                first_reason.get_or_insert_with(|| reason.clone());
                if record_errors.len() < RECORD_ERRORS_MAX {
                    record_errors.push((index as i32, reason));
                }
            }
            Ok(Some(hold)) => due.push(Some(hold)),
            Err(reason) => {
                refused += 1;
                first_reason.get_or_insert_with(|| reason.clone());
                if record_errors.len() < RECORD_ERRORS_MAX {
                    record_errors.push((index as i32, reason));
                }
            }
        }
    }
    if refused > 0 {
        return Err(Outcome {
            record_errors,
            ..Outcome::error(
                ResponseError::InvalidRecord.code(),
                format!(
                    "{refused} record(s) refused for their delay; the first: {}",
                    first_reason.unwrap_or_default()
                ),
            )
        });
    }
    if due.iter().all(Option::is_none) {
        return Ok(Prepared::plain(batch));
    }
    let split = crate::storage::timer::held::split(&batch, &due, max)
        .map_err(|reason| Outcome::error(ResponseError::CorruptMessage.code(), reason))?;
    Ok(Prepared {
        batch: Bytes::from(split.visible),
        held: Some(Bytes::from(split.held)),
        retried,
    })
}

/// INVALID_RECORD or INVALID_TIMESTAMP naming each refused record, as
/// Kafka's `LogValidator.validateRecord` checks them: a record without a key
/// on a compacted topic, else, on a CreateTime topic, a record timestamped
/// outside the window. The walk's summary (keyless count, smallest and
/// largest timestamps) settles most batches; only a refused one is walked
/// again to name its records. Control batches never get here: clients may
/// not send them, and the broker writes its markers without Produce.
fn check_records(
    batch: &[u8],
    validated: &ValidatedBatch<'_>,
    policy: &BatchPolicy,
) -> Result<(), Outcome> {
    let Some(summary) = validated.records() else {
        return Ok(());
    };
    // LogAppendTime topics replace the timestamps: none is refused.
    let window = policy.append_time.is_none().then_some(policy.timestamps);
    let keys_refused = policy.compacted && summary.keyless_records > 0;
    if !keys_refused && window.is_none_or(|window| window.admits_all(summary)) {
        return Ok(());
    }
    let mut refused = RefusedRecords::default();
    let walked =
        record_batch::walk_records(batch, policy.limits.decompressed_max_bytes, |record| {
            if policy.compacted && record.key == Field::Null {
                refused.no_key(record.index);
            } else if let Some(window) = window
                && !window.admits(record.timestamp_ms)
            {
                refused.timestamp(record.index, record.timestamp_ms, window.bounds());
            }
            std::ops::ControlFlow::Continue(())
        });
    if let Err(error) = walked {
        return Err(Outcome::batch(&error));
    }
    Err(refused.outcome(&policy.timestamps))
}

/// The records of one batch that Produce refuses, and why (KIP-467).
#[derive(Default)]
struct RefusedRecords {
    keyless: usize,
    bad_timestamps: usize,
    /// At most [`RECORD_ERRORS_MAX`]; the counts above are complete.
    record_errors: Vec<(i32, String)>,
}

impl RefusedRecords {
    fn no_key(&mut self, index: i32) {
        self.keyless += 1;
        self.name(
            index,
            format!("Compacted topic cannot accept message without key: record {index} has no key"),
        );
    }

    fn timestamp(&mut self, index: i32, timestamp_ms: i64, (earliest, latest): (i128, i128)) {
        self.bad_timestamps += 1;
        self.name(
            index,
            format!("timestamp {timestamp_ms} of record {index} is outside [{earliest}, {latest}]"),
        );
    }

    fn name(&mut self, index: i32, message: String) {
        if self.record_errors.len() < RECORD_ERRORS_MAX {
            self.record_errors.push((index, message));
        }
    }

    /// As Kafka: INVALID_TIMESTAMP if any timestamp is refused, else
    /// INVALID_RECORD; `record_errors` names both kinds.
    fn outcome(self, window: &TimestampWindow) -> Outcome {
        let (earliest, latest) = window.bounds();
        let timestamps = (self.bad_timestamps > 0).then(|| {
            format!(
                "{} record(s) have timestamps outside [{earliest}, {latest}], the topic's \
                 message.timestamp.before.max.ms ({}) and message.timestamp.after.max.ms ({}) \
                 around the broker's clock ({})",
                self.bad_timestamps, window.before_max_ms, window.after_max_ms, window.now_ms
            )
        });
        let keyless = (self.keyless > 0).then(|| {
            format!(
                "{} record(s) have no key: the topic's cleanup.policy includes compact, which \
                 keeps the latest record of each key, so every record needs one",
                self.keyless
            )
        });
        let code = if timestamps.is_some() {
            ResponseError::InvalidTimestamp
        } else {
            ResponseError::InvalidRecord
        };
        let message: Vec<String> = timestamps.into_iter().chain(keyless).collect();
        Outcome {
            record_errors: self.record_errors,
            ..Outcome::error(code.code(), message.join("; "))
        }
    }
}

/// Where a partition's batches go, on its owner shard.
struct OwnerWrite {
    context: std::rc::Rc<ShardContext>,
    broker: Arc<Broker>,
    topic: Arc<TopicMeta>,
    index: u32,
    transactional_id: Option<String>,
    /// Add the partition to the producer's transaction rather than only
    /// check that it is in it (Produce v12+).
    implicit_add: bool,
}

/// On the owner shard: append the batches in order, then wait for the
/// durability asked for. Returns (first base offset, log start offset).
async fn append_on_owner(
    write: OwnerWrite,
    batches: Vec<Prepared>,
    durability: Durability,
    timeout: Duration,
    appended: oneshot::Sender<()>,
) -> Result<(Offset, Offset), Outcome> {
    let OwnerWrite {
        context,
        broker,
        topic,
        index,
        transactional_id,
        implicit_add,
    } = write;
    let store = &context.store_for(&topic.name, index);
    let id = match store.partition_id(&topic.name, index) {
        Some(id) => id,
        None => {
            // The topic may have been deleted since this request looked it
            // up: never create a partition the metadata no longer claims
            // (the check and the creation run on this shard with no await
            // between, and a deletion publishes the metadata first).
            let claimed = broker
                .metadata
                .snapshot()
                .topic(&topic.name)
                .is_some_and(|current| current.id == topic.id && index < current.partitions);
            if !claimed {
                return Err(Outcome::error(
                    ResponseError::UnknownTopicOrPartition.code(),
                    "the topic was deleted",
                ));
            }
            create_partition_here(&context, &topic, index).map_err(|error| {
                Outcome::error(error_code::for_topic(&error), error.to_string())
            })?;
            store.partition_id(&topic.name, index).ok_or_else(|| {
                Outcome::error(
                    ResponseError::UnknownTopicOrPartition.code(),
                    "partition vanished",
                )
            })?
        }
    };
    let started = std::time::Instant::now();
    // The epoch the append is made at: acks=all answers only if the group
    // keeps this leader and epoch until the in-sync set holds the batch.
    let leader_epoch = broker.partition_leader_epoch(&topic.name, index);
    if durability == Durability::Fsynced
        && let Err(code) = replication::check_in_sync(&broker, &topic.name, index)
    {
        return Err(Outcome::error(
            code,
            format!(
                "{}-{index} has fewer in-sync replicas than its min.insync.replicas",
                topic.name
            ),
        ));
    }
    let mut first = None;
    let mut last = None;
    let counters = telemetry::kafka::topic(&topic.name);
    for Prepared {
        batch: bytes, held, ..
    } in &batches
    {
        let batch = ValidatedBatch::revalidated(bytes).map_err(|error| Outcome::batch(&error))?;
        let header = *batch.header();
        let records = u64::try_from(header.records_count).unwrap_or(0);
        let appended = match (&transactional_id, header.is_transactional()) {
            (Some(transactional_id), true) => {
                let token = verify(
                    &context,
                    &broker,
                    TxnPartition {
                        transactional_id,
                        topic: &topic.name,
                        index,
                        id,
                        implicit_add,
                    },
                    &header,
                )
                .await?;
                store.append_verified(id, batch, durability, token).await
            }
            _ => match held {
                Some(held) => {
                    let held = ValidatedBatch::frame_only(held, held.len())
                        .map_err(|error| Outcome::batch(&error))?;
                    store
                        .append_with_held(id, held, batch, durability, None)
                        .await
                }
                None => store.append(id, batch, durability).await,
            },
        };
        let receipt = appended
            .map_err(|error| Outcome::error(error_code::for_append(&error), error.to_string()))?;
        if !receipt.duplicate {
            // A batch's held records (delayed, retried) count as produced.
            let (held_bytes, held_records) = held.as_ref().map_or((0, 0), |held| {
                let count = record_batch::BatchHeader::parse(held)
                    .map_or(0, |header| u64::try_from(header.records_count).unwrap_or(0));
                (held.len() as u64, count)
            });
            counters.bytes_in.increment(bytes.len() as u64 + held_bytes);
            counters.records_in.increment(records + held_records);
        }
        first.get_or_insert(receipt.base_offset);
        last = Some(receipt);
    }
    let last = last.expect("at least one batch");
    let _ = appended.send(());
    let waited = if timeout == Duration::MAX {
        Ok(store.wait(&last).await)
    } else {
        compio::time::timeout(timeout, store.wait(&last)).await
    };
    match waited {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            return Err(Outcome::error(
                error_code::for_append(&error),
                error.to_string(),
            ));
        }
        Err(_) => {
            return Err(Outcome::error(
                ResponseError::RequestTimedOut.code(),
                "the batch is stored but was not durable within the request timeout",
            ));
        }
    }
    if durability == Durability::Fsynced {
        // In a cluster, acks=all also waits for the shard group's in-sync
        // followers to hold it durably.
        let deadline = (timeout != Duration::MAX).then(|| started + timeout);
        replication::wait_in_sync(
            &broker,
            &topic.name,
            index,
            last.end(),
            leader_epoch,
            deadline,
        )
        .await
        .map_err(|code| {
            Outcome::error(
                code,
                format!(
                    "the batch is stored on the leader but not yet on every in-sync replica \
                         of {}-{index}",
                    topic.name
                ),
            )
        })?;
    }
    let log_start = store
        .offsets(id)
        .map_or(Offset(0), |offsets| offsets.log_start_offset);
    Ok((first.expect("at least one batch"), log_start))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::broker::topic_config::TopicLimits;
    use crate::record_batch::{BatchBuilder, RecordSpec};

    const DECOMPRESSED_RATIO_MAX: u32 = 10;

    fn policy(overrides: &[(&str, &str)]) -> BatchPolicy {
        let overrides: BTreeMap<String, String> = overrides
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect();
        let limits = TopicLimits {
            batch_max_bytes: 8 << 20,
            max_delay_ms: 30 * 24 * 3_600_000,
        };
        let config =
            TopicConfig::with_overrides(&TopicConfig::from_broker(|_| None), &overrides, limits)
                .unwrap();
        BatchPolicy::new(
            &config,
            DECOMPRESSED_RATIO_MAX,
            false,
            true,
            &crate::config::DelayConfig::default(),
            None,
        )
    }

    /// A batch timestamped now whose records have the given keys, then
    /// records timestamped `late_ms` later.
    fn batch(keys: &[Option<&[u8]>], late: &[Option<&[u8]>], late_ms: i64) -> Bytes {
        let mut builder = BatchBuilder::new(i64::try_from(now_ms()).unwrap());
        let records = keys
            .iter()
            .map(|key| (key, 0))
            .chain(late.iter().map(|key| (key, late_ms)));
        for (key, timestamp_delta_ms) in records {
            builder.push(RecordSpec {
                key: *key,
                value: Some(b"value"),
                timestamp_delta_ms,
            });
        }
        Bytes::from(builder.build())
    }

    fn refused(records: Bytes, policy: &BatchPolicy) -> Outcome {
        match prepare(records, policy) {
            Ok(_) => panic!("the batch was accepted"),
            Err(outcome) => outcome,
        }
    }

    fn named(outcome: &Outcome) -> Vec<i32> {
        outcome
            .record_errors
            .iter()
            .map(|(index, _)| *index)
            .collect()
    }

    /// Issue 17: Kafka's LogValidator refuses a keyless record on a
    /// compacted topic, and the whole batch with it.
    #[test]
    fn a_keyless_record_on_a_compacted_topic_refuses_its_batch_naming_it() {
        let key: Option<&[u8]> = Some(b"k");
        for policy_value in ["compact", "compact,delete", "delete,compact"] {
            let compacted = policy(&[("cleanup.policy", policy_value)]);
            let outcome = refused(batch(&[key, None, key], &[], 0), &compacted);
            assert_eq!(outcome.error_code, ResponseError::InvalidRecord.code());
            assert_eq!(named(&outcome), vec![1], "{policy_value}");
            assert!(outcome.record_errors[0].1.contains("without key"));
            let message = outcome.message.unwrap();
            assert!(message.contains("1 record(s) have no key"), "{message}");
            assert!(prepare(batch(&[key, key, key], &[], 0), &compacted).is_ok());
        }
        for policy_value in ["delete", ""] {
            let kept = policy(&[("cleanup.policy", policy_value)]);
            assert!(prepare(batch(&[None, None], &[], 0), &kept).is_ok());
        }
        // LogAppendTime replaces timestamps, not keys.
        let stamped = policy(&[
            ("cleanup.policy", "compact"),
            ("message.timestamp.type", "LogAppendTime"),
        ]);
        let outcome = refused(batch(&[None], &[], 0), &stamped);
        assert_eq!(outcome.error_code, ResponseError::InvalidRecord.code());
    }

    #[test]
    fn keyless_records_are_named_up_to_the_cap_and_all_counted() {
        let compacted = policy(&[("cleanup.policy", "compact")]);
        let keys = vec![None; RECORD_ERRORS_MAX + 5];
        let outcome = refused(batch(&keys, &[], 0), &compacted);
        assert_eq!(outcome.record_errors.len(), RECORD_ERRORS_MAX);
        let message = outcome.message.unwrap();
        let count = format!("{} record(s) have no key", RECORD_ERRORS_MAX + 5);
        assert!(message.contains(&count), "{message}");
    }

    /// As Kafka's `processRecordErrors`: a record's key is checked before
    /// its timestamp, and any bad timestamp makes the batch's error
    /// INVALID_TIMESTAMP, every refused record named.
    #[test]
    fn a_bad_timestamp_beside_a_keyless_record_is_invalid_timestamp_naming_both() {
        let key: Option<&[u8]> = Some(b"k");
        let compacted = policy(&[
            ("cleanup.policy", "compact"),
            ("message.timestamp.after.max.ms", "60000"),
        ]);
        let hour_ms = 3_600_000;
        let outcome = refused(batch(&[None, key], &[key, None], hour_ms), &compacted);
        assert_eq!(outcome.error_code, ResponseError::InvalidTimestamp.code());
        assert_eq!(named(&outcome), vec![0, 2, 3]);
        assert!(outcome.record_errors[1].1.contains("timestamp"));
        assert!(outcome.record_errors[2].1.contains("without key"));
        let message = outcome.message.unwrap();
        assert!(
            message.contains("1 record(s) have timestamps") && message.contains("2 record(s)"),
            "{message}"
        );
    }
}
