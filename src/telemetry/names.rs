//! Every metric's name, in one place, with its description.
//!
//! Labels: `api` (Kafka API name, `Produce`), `error` (Kafka error name,
//! `UnknownTopicOrPartition`, or `ConnectionClosed`), `topic`, `shard`
//! (`0`, `1`, ...), `reason`, `group`, `partition`, `ring`.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

pub const UP: &str = "sluice_up";
pub const READY: &str = "sluice_ready";

pub const KAFKA_REQUESTS: &str = "sluice_kafka_requests_total";
pub const KAFKA_REQUEST_DURATION: &str = "sluice_kafka_request_duration_seconds";
pub const KAFKA_REQUEST_ERRORS: &str = "sluice_kafka_request_errors_total";
pub const KAFKA_REQUEST_THREAD_TIME: &str = "sluice_kafka_request_thread_microseconds_total";
pub const KAFKA_CONNECTIONS: &str = "sluice_kafka_connections";
pub const KAFKA_SHARD_CONNECTIONS: &str = "sluice_kafka_shard_connections";
pub const KAFKA_SHARD_DATA_CONNECTIONS: &str = "sluice_kafka_shard_data_connections";
pub const KAFKA_CONNECTIONS_ACCEPTED: &str = "sluice_kafka_connections_accepted_total";
pub const KAFKA_CONNECTIONS_REFUSED: &str = "sluice_kafka_connections_refused_total";
pub const KAFKA_FETCH_FILE_BYTES: &str = "sluice_kafka_fetch_file_bytes_total";
pub const KAFKA_COLD_READ_POOL_EMPTY: &str = "sluice_kafka_cold_read_pool_empty_total";
pub const KAFKA_CONNECTIONS_CLOSED_BAD_INPUT: &str =
    "sluice_kafka_connections_closed_bad_input_total";
pub const KAFKA_QUEUED_REQUEST_BYTES: &str = "sluice_kafka_queued_request_bytes";
pub const KAFKA_SASL_AUTHENTICATIONS: &str = "sluice_kafka_sasl_authentications_total";
pub const KAFKA_TLS_HANDSHAKES: &str = "sluice_kafka_tls_handshakes_total";
pub const KAFKA_AUTHORIZATION_DENIALS: &str = "sluice_kafka_authorization_denials_total";
pub const KAFKA_QUOTA_THROTTLES: &str = "sluice_kafka_quota_throttles_total";
pub const KAFKA_CONNECTIONS_WAITING_FOR_BUDGET: &str =
    "sluice_kafka_connections_waiting_for_request_budget";

pub const TOPIC_BYTES_IN: &str = "sluice_topic_bytes_in_total";
pub const TOPIC_RECORDS_IN: &str = "sluice_topic_records_in_total";
pub const TOPIC_BYTES_OUT: &str = "sluice_topic_bytes_out_total";
pub const TOPIC_RECORDS_OUT: &str = "sluice_topic_records_out_total";

pub const LOG_FSYNC_DURATION: &str = "sluice_log_fsync_duration_seconds";
pub const LOG_FSYNC_SIZE: &str = "sluice_log_fsync_size_bytes";
pub const LOG_FSYNC_WAITERS: &str = "sluice_log_fsync_waiters";
pub const LOG_FLUSH_QUEUE_DEPTH: &str = "sluice_log_flush_queue_depth";
pub const LOG_UNFLUSHED_BYTES: &str = "sluice_log_unflushed_bytes";
pub const LOG_WRITES: &str = "sluice_log_writes_total";
pub const LOG_WRITTEN_BYTES: &str = "sluice_log_written_bytes_total";
pub const LOG_FSYNCS: &str = "sluice_log_fsyncs_total";
pub const LOG_RESERVE_WAITS: &str = "sluice_log_reserve_waits_total";
pub const LOG_TAIL_CACHE_BYTES: &str = "sluice_log_tail_cache_bytes";
pub const LOG_FETCH_BYTES: &str = "sluice_log_fetch_bytes_total";

pub const IO_URING_SUBMISSIONS: &str = "sluice_io_uring_submissions_total";
pub const IO_URING_COMPLETIONS: &str = "sluice_io_uring_completions_total";
pub const IO_URING_QUEUE_FULL: &str = "sluice_io_uring_queue_full_total";

pub const SHARD_BUSY_RATIO: &str = "sluice_shard_busy_ratio";
pub const SHARD_PARTITIONS: &str = "sluice_shard_partitions";
pub const SHARD_SEGMENTS: &str = "sluice_shard_segments";
pub const SHARD_LOG_BYTES: &str = "sluice_shard_log_bytes";

pub const DISK_USAGE_RATIO: &str = "sluice_disk_usage_ratio";
pub const RETENTION_DELETED_SEGMENTS: &str = "sluice_retention_deleted_segments_total";
pub const RETENTION_DELETED_BYTES: &str = "sluice_retention_deleted_bytes_total";
pub const DISK_PRESSURE_DELETED_OFFSETS: &str = "sluice_disk_pressure_deleted_offsets_total";
pub const APPENDS_REJECTED: &str = "sluice_appends_rejected_total";

pub const COMPACTION_BYTES_READ: &str = "sluice_compaction_read_bytes_total";
pub const COMPACTION_BYTES_WRITTEN: &str = "sluice_compaction_written_bytes_total";
pub const COMPACTION_RECORDS_REMOVED: &str = "sluice_compaction_removed_records_total";
pub const COMPACTION_PASS_DURATION: &str = "sluice_compaction_pass_duration_seconds";
pub const COMPACTION_DIRTY_RATIO: &str = "sluice_compaction_dirty_ratio";
pub const COMPACTION_DELAY: &str = "sluice_compaction_delay_seconds";

pub const CONSUMER_GROUP_LAG: &str = "sluice_consumer_group_lag";

pub const TRANSACTIONS: &str = "sluice_transactions";
pub const TRANSACTION_MARKERS: &str = "sluice_transaction_markers_total";
pub const TRANSACTION_TIMEOUTS: &str = "sluice_transaction_timeouts_total";
pub const PARTITION_LSO_LAG: &str = "sluice_partition_lso_lag";

pub const REPLICA_LAG_BYTES: &str = "sluice_replica_lag_bytes";
pub const REPLICA_COPIED_BYTES: &str = "sluice_replica_copied_bytes_total";
pub const GROUP_IN_SYNC_REPLICAS: &str = "sluice_group_in_sync_replicas";
pub const GROUP_REPLICAS: &str = "sluice_group_replicas";
pub const GROUP_LEADERSHIPS_TAKEN: &str = "sluice_group_leaderships_taken_total";
pub const CLUSTER_CONTROLLER_LEADER: &str = "sluice_cluster_controller_leader";
pub const CLUSTER_NODES: &str = "sluice_cluster_nodes";
pub const CLUSTER_GROUPS_OFFLINE: &str = "sluice_cluster_groups_offline";
pub const CLUSTER_GROUPS_UNDER_REPLICATED: &str = "sluice_cluster_groups_under_replicated";

pub const DELAY_PENDING_RECORDS: &str = "sluice_delay_pending_records";
pub const DELAY_PENDING_BYTES: &str = "sluice_delay_pending_bytes";
pub const DELAY_DUE_LAG: &str = "sluice_delay_due_lag_seconds";
pub const DELAY_DELIVERED: &str = "sluice_delay_delivered_records_total";
pub const DELAY_DELIVERY_LATENESS: &str = "sluice_delay_delivery_lateness_seconds";
pub const DELAY_PENDING_BY_TOPIC: &str = "sluice_delay_pending_topic_records";
pub const DELAY_NEXT_DUE: &str = "sluice_delay_next_due_timestamp_seconds";
pub const RETRY_RECORDS: &str = "sluice_retry_records_total";
pub const DEAD_LETTER_RECORDS: &str = "sluice_dead_letter_records_total";
pub const RETRY_STUCK_RECORDS: &str = "sluice_retry_without_dead_letter_partition_records_total";

pub const RECOVERY_DURATION: &str = "sluice_recovery_duration_seconds";
pub const RECOVERY_TRUNCATED_BYTES: &str = "sluice_recovery_truncated_bytes";

/// Register every metric's help text and unit with the recorder.
pub fn describe() {
    describe_gauge!(UP, "1 while the broker process runs.");
    describe_gauge!(READY, "1 once every shard recovered and serves requests.");

    describe_counter!(
        KAFKA_REQUESTS,
        Unit::Count,
        "Kafka requests answered (or that closed the connection), by API."
    );
    describe_histogram!(
        KAFKA_REQUEST_DURATION,
        Unit::Seconds,
        "From reading a Kafka request to writing its response, by API (acks=all Produce includes the fdatasync)."
    );
    describe_counter!(
        KAFKA_REQUEST_THREAD_TIME,
        Unit::Microseconds,
        "Shard-thread time spent running Kafka requests' handlers, by API: what the request_percentage quota counts (waits for the disk, a long poll or the controller are not included)."
    );
    describe_counter!(
        KAFKA_REQUEST_ERRORS,
        Unit::Count,
        "Error codes returned, one per failed partition, topic, group or member, by API and Kafka error name; ConnectionClosed counts requests that closed the connection."
    );
    describe_gauge!(
        KAFKA_CONNECTIONS,
        Unit::Count,
        "Open Kafka client connections."
    );
    describe_gauge!(
        KAFKA_SHARD_CONNECTIONS,
        Unit::Count,
        "Kafka client connections each shard serves: a new connection goes to the shard with the fewest data connections, then the fewest connections."
    );
    describe_gauge!(
        KAFKA_SHARD_DATA_CONNECTIONS,
        Unit::Count,
        "Of those, the connections that sent a Produce or Fetch, or nothing yet but ApiVersions or SASL: what placing a new connection weighs first."
    );
    describe_counter!(
        KAFKA_CONNECTIONS_ACCEPTED,
        Unit::Count,
        "Kafka connections accepted, by shard."
    );
    describe_counter!(
        KAFKA_CONNECTIONS_REFUSED,
        Unit::Count,
        "Kafka connections refused at kafka.connections_max, by shard."
    );
    describe_counter!(
        KAFKA_FETCH_FILE_BYTES,
        Unit::Bytes,
        "Segment-file bytes sent in fetch responses, by shard and read: direct (O_DIRECT into the shard's read buffers, storage.cold_reads = \"direct\") or page_cache (spliced or copied through the page cache: cold_reads = \"page_cache\", buffered writes, or a part that found the shard's buffers all in use)."
    );
    describe_counter!(
        KAFKA_COLD_READ_POOL_EMPTY,
        Unit::Count,
        "Fetch-response file parts read through the page cache because all of the shard's O_DIRECT read buffers were in use (storage.cold_reads = \"direct\"; consumers that stop reading hold theirs while their sends wait), by shard."
    );
    describe_counter!(
        KAFKA_CONNECTIONS_CLOSED_BAD_INPUT,
        Unit::Count,
        "Kafka connections the broker closed for what the client sent, by reason: bad_size (a size prefix not positive), too_large (over kafka.request_max_bytes), read_timeout (kafka.request_read_timeout_ms), truncated (closed mid-request), read_error (a failed read; a connection reset by the client is a plain close), bad_request (a request it could not serve), acks0_produce_failed (an acks=0 Produce failed on some partition: closed so that the client notices, as Kafka does), tls_on_plaintext (a TLS handshake on a listener without TLS)."
    );
    describe_counter!(
        KAFKA_SASL_AUTHENTICATIONS,
        Unit::Count,
        "SASL authentications, by Kafka listener (its name), mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and outcome (succeeded, failed: a wrong password, an unknown user or a malformed exchange; the connection is closed)."
    );
    describe_counter!(
        KAFKA_QUOTA_THROTTLES,
        Unit::Count,
        "Responses that carried a quota's throttle time (the connection then reads nothing until it passes), by quota (producer_byte_rate, consumer_byte_rate, request_percentage)."
    );
    describe_counter!(
        KAFKA_AUTHORIZATION_DENIALS,
        Unit::Count,
        "Requests (or parts of them) the ACL authorizer refused, by operation (READ, WRITE, ...) and resource type (TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID); filtering a listing is not counted."
    );
    describe_counter!(
        KAFKA_TLS_HANDSHAKES,
        Unit::Count,
        "TLS handshakes on SSL and SASL_SSL listeners, by listener and outcome (succeeded; failed: a protocol or certificate error, a client certificate no principal mapping rule matches; timeout: not done within kafka.request_read_timeout_ms)."
    );
    describe_gauge!(
        KAFKA_QUEUED_REQUEST_BYTES,
        Unit::Bytes,
        "Bytes of Kafka requests being read or served, against kafka.queued_requests_max_bytes."
    );
    describe_gauge!(
        KAFKA_CONNECTIONS_WAITING_FOR_BUDGET,
        Unit::Count,
        "Kafka connections that stopped reading until kafka.queued_requests_max_bytes covers their next request."
    );

    describe_counter!(
        TOPIC_BYTES_IN,
        Unit::Bytes,
        "Record-batch bytes appended, by topic."
    );
    describe_counter!(TOPIC_RECORDS_IN, Unit::Count, "Records appended, by topic.");
    describe_counter!(
        TOPIC_BYTES_OUT,
        Unit::Bytes,
        "Record-batch bytes sent to fetchers, by topic."
    );
    describe_counter!(
        TOPIC_RECORDS_OUT,
        Unit::Count,
        "Records sent to fetchers (whole batches), by topic."
    );

    describe_histogram!(
        LOG_FSYNC_DURATION,
        Unit::Seconds,
        "Commit-log fdatasync latency, submission to completion (with its linked write, if any), by shard."
    );
    describe_histogram!(
        LOG_FSYNC_SIZE,
        Unit::Bytes,
        "Commit-log bytes each fdatasync made durable (group-commit size), by shard."
    );
    describe_histogram!(
        LOG_FSYNC_WAITERS,
        Unit::Count,
        "acks=all appends each fdatasync acknowledged (group-commit fan-in), by shard."
    );
    describe_gauge!(
        LOG_FLUSH_QUEUE_DEPTH,
        Unit::Count,
        "Commit-log writes and fdatasyncs in flight towards the device, by shard."
    );
    describe_gauge!(
        LOG_UNFLUSHED_BYTES,
        Unit::Bytes,
        "Commit-log bytes appended but not yet durable, by shard."
    );
    describe_counter!(
        LOG_WRITES,
        Unit::Count,
        "Commit-log writes submitted, by shard."
    );
    describe_counter!(
        LOG_WRITTEN_BYTES,
        Unit::Bytes,
        "Commit-log bytes submitted for writing (block padding included), by shard."
    );
    describe_counter!(
        LOG_FSYNCS,
        Unit::Count,
        "Commit-log fdatasyncs submitted, by shard."
    );
    describe_gauge!(
        LOG_TAIL_CACHE_BYTES,
        Unit::Bytes,
        "Memory held by the commit log's tail cache of its newest frames (storage.tail_cache_bytes), by shard."
    );
    describe_counter!(
        LOG_FETCH_BYTES,
        Unit::Bytes,
        "Record-batch bytes planned for fetch responses (consumers and followers), by shard and source: memory (the tail cache or the copy of the partial last block) or disk (segment files; sluice_kafka_fetch_file_bytes_total says how they were read)."
    );
    describe_counter!(
        LOG_RESERVE_WAITS,
        Unit::Count,
        "Appends that waited for disk space to be reserved ahead of the commit log's writes (storage.preallocate_bytes), by shard."
    );

    describe_counter!(
        IO_URING_SUBMISSIONS,
        Unit::Count,
        "Submission-queue entries pushed to a shard's io_uring, by shard and ring."
    );
    describe_counter!(
        IO_URING_COMPLETIONS,
        Unit::Count,
        "Completion-queue entries reaped from a shard's io_uring, by shard and ring."
    );
    describe_counter!(
        IO_URING_QUEUE_FULL,
        Unit::Count,
        "Operations that found a shard's io_uring full and waited for a later round, by shard and ring."
    );

    describe_gauge!(
        SHARD_BUSY_RATIO,
        "Fraction of the last refresh interval the shard thread spent on a CPU, by shard."
    );
    describe_gauge!(SHARD_PARTITIONS, Unit::Count, "Partitions a shard owns.");
    describe_gauge!(
        SHARD_SEGMENTS,
        Unit::Count,
        "Commit-log segment files of a shard."
    );
    describe_gauge!(
        SHARD_LOG_BYTES,
        Unit::Bytes,
        "Commit-log bytes a shard retains, from its oldest segment to the append end."
    );

    describe_gauge!(
        DISK_USAGE_RATIO,
        "Used fraction of the data directory's filesystem, as the disk guards see it."
    );
    describe_counter!(
        RETENTION_DELETED_SEGMENTS,
        Unit::Count,
        "Commit-log segments deleted, by shard and reason (retention, disk_pressure)."
    );
    describe_counter!(
        RETENTION_DELETED_BYTES,
        Unit::Bytes,
        "Commit-log bytes deleted with their segments, by shard."
    );
    describe_counter!(
        DISK_PRESSURE_DELETED_OFFSETS,
        Unit::Count,
        "Offsets of unexpired data deleted because disk usage passed \
         retention.disk_force_clean_ratio, by topic (only topics with \
         sluice.disk.pressure.delete=true)."
    );
    describe_counter!(
        APPENDS_REJECTED,
        Unit::Count,
        "Appends storage refused, by shard and reason (disk_full, too_large, poisoned, shutting_down, not_leader, sequence_after_failover, unknown_partition, storage, sequence, epoch, txn_state, coordinator_fenced)."
    );

    describe_counter!(
        COMPACTION_BYTES_READ,
        Unit::Bytes,
        "Bytes the log cleaner read from compacted partitions, by shard."
    );
    describe_counter!(
        COMPACTION_BYTES_WRITTEN,
        Unit::Bytes,
        "Bytes of surviving batches the log cleaner copied forward, by shard."
    );
    describe_counter!(
        COMPACTION_RECORDS_REMOVED,
        Unit::Count,
        "Records compaction removed (superseded, expired tombstones, keyless), by shard."
    );
    describe_histogram!(
        COMPACTION_PASS_DURATION,
        Unit::Seconds,
        "Duration of compaction passes, by shard."
    );
    describe_gauge!(
        COMPACTION_DELAY,
        Unit::Seconds,
        "Age of a compacted partition's oldest uncleaned batch (its max timestamp) when the cleaner last looked, by topic and partition (Kafka's max-compaction-delay-secs)."
    );
    describe_gauge!(
        COMPACTION_DIRTY_RATIO,
        "A compacted partition's cleanable share of its bytes (uncleaned, older than min.compaction.lag.ms, below the high watermark) when the cleaner last looked, by topic and partition (cleaned at min.cleanable.dirty.ratio)."
    );

    describe_gauge!(
        CONSUMER_GROUP_LAG,
        Unit::Count,
        "Records between a group's committed offset and the partition's high watermark."
    );

    describe_gauge!(
        TRANSACTIONS,
        Unit::Count,
        "Transactional ids a shard's transaction coordinator knows, by state."
    );
    describe_counter!(
        TRANSACTION_MARKERS,
        Unit::Count,
        "Transaction markers written to partitions, by result (commit, abort)."
    );
    describe_counter!(
        TRANSACTION_TIMEOUTS,
        Unit::Count,
        "Transactions aborted because they stayed open past their timeout."
    );
    describe_gauge!(
        REPLICA_LAG_BYTES,
        Unit::Bytes,
        "Bytes of a shard group's log this node's follower copy lacks, as of its last fetch \
         from the group's leader, by group (cluster nodes only)."
    );
    describe_counter!(
        REPLICA_COPIED_BYTES,
        Unit::Bytes,
        "Bytes of a shard group's log this node's follower copy appended from its leader, by \
         group (cluster nodes only; its rate is the copy's catch-up speed)."
    );
    describe_gauge!(
        GROUP_IN_SYNC_REPLICAS,
        Unit::Count,
        "Members of a shard group this node leads that are in sync (the leader included), by \
         group; below sluice_group_replicas the group's partitions are under-replicated."
    );
    describe_gauge!(
        GROUP_REPLICAS,
        Unit::Count,
        "Members of a shard group this node leads, by group (the replication factor)."
    );
    describe_counter!(
        GROUP_LEADERSHIPS_TAKEN,
        Unit::Count,
        "Times this node began to lead a shard group after a failover or a move back, by \
         group (cluster nodes only)."
    );
    describe_gauge!(
        CLUSTER_CONTROLLER_LEADER,
        "The controller leader's node id as this node knows it; -1 while none is known (no \
         majority of the peers reachable)."
    );
    describe_gauge!(
        CLUSTER_NODES,
        Unit::Count,
        "Registered cluster nodes by state (live, fenced), as this node's metadata says."
    );
    describe_gauge!(
        CLUSTER_GROUPS_OFFLINE,
        Unit::Count,
        "Shard groups whose leader is fenced (no in-sync member could take over): their \
         partitions take no writes and serve no reads."
    );
    describe_gauge!(
        CLUSTER_GROUPS_UNDER_REPLICATED,
        Unit::Count,
        "Shard groups with fewer members in sync than members, as this node's metadata says \
         (the same on every node)."
    );
    describe_gauge!(
        PARTITION_LSO_LAG,
        Unit::Count,
        "Offsets between a partition's last stable offset and its high watermark \
         (read_committed consumers wait there); set only while above 0."
    );

    describe_gauge!(
        DELAY_PENDING_RECORDS,
        "Delayed records (delay headers, a topic delay, retries, dead letters on their way) a shard holds until their due time."
    );
    describe_gauge!(
        DELAY_PENDING_BYTES,
        Unit::Bytes,
        "Bytes of the delayed records a shard holds until their due time."
    );
    describe_gauge!(
        DELAY_DUE_LAG,
        Unit::Seconds,
        "How far behind its due time the oldest due, undelivered delayed record of a shard is (0: none late)."
    );
    describe_histogram!(
        DELAY_DELIVERY_LATENESS,
        Unit::Seconds,
        "How long after its due time each delayed record was appended to its partition, by shard."
    );
    describe_counter!(
        DELAY_DELIVERED,
        "Delayed records a shard delivered to their partitions at their due time (retried records and dead letters moved to G.dlq included)."
    );
    describe_gauge!(
        DELAY_PENDING_BY_TOPIC,
        "Delayed records a shard holds for a topic, by when they are due (label due: overdue, or within 1m, 10m, 1h, 1d, 7d, later; by due minute). `sluice delays` reads it."
    );
    describe_gauge!(
        DELAY_NEXT_DUE,
        Unit::Seconds,
        "The start of the minute (epoch seconds) the next delayed record a shard holds for a topic is due in."
    );
    describe_counter!(
        RETRY_RECORDS,
        "Records a consumer group sent back to its retry topic G.retry, held for their back-off, by group."
    );
    describe_counter!(
        DEAD_LETTER_RECORDS,
        "Records past their retries moved to a group's dead-letter topic G.dlq, by group."
    );
    describe_counter!(
        RETRY_STUCK_RECORDS,
        "Records past their retries kept retrying because G.dlq has no partition in their retry partition's log, by group."
    );
    describe_gauge!(
        RECOVERY_DURATION,
        Unit::Seconds,
        "How long the shard's recovery took at this start."
    );
    describe_gauge!(
        RECOVERY_TRUNCATED_BYTES,
        Unit::Bytes,
        "Torn bytes recovery cut from the end of the shard's log at this start."
    );
}
