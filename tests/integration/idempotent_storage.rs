//! Idempotent-producer state through the storage API (issue 13, step 1): a
//! retry of a stored batch is recognised after a clean restart and after a
//! power cut, because recovery rebuilds the state from the batches' own
//! producer fields.

use sluice::config::WriteMode;
use sluice::ids::LogPosition;
use sluice::ids::{Offset, PartitionId};
use sluice::io::IoBackend;
use sluice::record_batch::{BatchBuilder, RecordSpec};
use sluice::storage::producer_state::ProducerError;
use sluice::storage::recovery::CheckpointStatus;
use std::time::Duration;

use sluice::storage::{AppendError, Durability, PartitionConfig, ShardStore};

use crate::sim_device::SimDevice;
use crate::support;

const PRODUCER: i64 = 4242;
const EPOCH: i16 = 3;

/// The timestamp of every record [`producer_batch`] builds.
const BATCH_TIMESTAMP_MS: u64 = 1_700_000_000_000;

/// A batch of `records` records from [`PRODUCER`] at `EPOCH`.
fn producer_batch(base_sequence: i32, records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(BATCH_TIMESTAMP_MS as i64);
    builder.producer(PRODUCER, EPOCH, base_sequence);
    for index in 0..records {
        let value = format!("seq-{}", base_sequence as usize + index);
        builder.push(RecordSpec {
            value: Some(value.as_bytes()),
            ..RecordSpec::default()
        });
    }
    builder.build()
}

/// Append and wait for the fdatasync; returns (base offset, duplicate).
async fn append(
    store: &ShardStore,
    id: PartitionId,
    batch: &[u8],
) -> Result<(Offset, bool), AppendError> {
    let receipt = store
        .append(id, support::validated(batch), Durability::Fsynced)
        .await?;
    store.wait(&receipt).await?;
    Ok((receipt.base_offset, receipt.duplicate))
}

/// Appends seven 2-record batches (sequences 0..14) and returns them with
/// their offsets.
async fn seven_batches(store: &ShardStore, id: PartitionId) -> Vec<(Vec<u8>, Offset)> {
    let mut stored = Vec::new();
    for index in 0..7 {
        let batch = producer_batch(index * 2, 2);
        let (offset, duplicate) = append(store, id, &batch).await.expect("in sequence");
        assert!(!duplicate);
        stored.push((batch, offset));
    }
    stored
}

/// Four batches (sequences 0..8) and a clean shutdown, which leaves a
/// producer snapshot at the end of the log; then a restart that starts the
/// producers' scan there, three more batches (sequences 8..14) and a power
/// cut. Returns the seven batches with their offsets and the snapshot's
/// position; the snapshot file is still the shutdown's.
fn snapshot_then_power_cut(
    dir: &std::path::Path,
) -> (PartitionId, Vec<(Vec<u8>, Offset)>, LogPosition) {
    let runtime = support::runtime(IoBackend::Epoll);
    let device = SimDevice::new(21);
    let (id, mut stored, snapshot_at) = runtime.block_on(async {
        let store = device.open_store(dir);
        let id = support::create(&store, "idempotent", 0);
        let mut stored = Vec::new();
        for index in 0..4 {
            let batch = producer_batch(index * 2, 2);
            let (offset, _) = append(&store, id, &batch).await.expect("in sequence");
            stored.push((batch, offset));
        }
        support::shutdown(&store).await;
        (id, stored, store.log_ends().0)
    });
    drop(runtime);
    assert!(snapshot_at > LogPosition::ZERO);
    let runtime = support::runtime(IoBackend::Epoll);
    let device = SimDevice::new(22);
    runtime.block_on(async {
        let store = device.open_store(dir);
        let report = store.recovery_report().clone();
        assert_eq!(report.producer_scan_start, snapshot_at, "{report:?}");
        for index in 4..7 {
            let batch = producer_batch(index * 2, 2);
            let (offset, duplicate) = append(&store, id, &batch).await.expect("in sequence");
            assert!(!duplicate);
            stored.push((batch, offset));
        }
        device.power_cut();
    });
    drop(runtime);
    (id, stored, snapshot_at)
}

/// The one producer snapshot file of shard 0.
fn snapshot_file(dir: &std::path::Path) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir.join("shard-0").join("producers"))
        .expect("snapshot dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().expect("one")
}

/// After reopening: each of the last 5 batches is a duplicate with its
/// original offset, nothing is stored, the sixth back is out of order, and
/// the next sequence is accepted.
async fn assert_state_survived(store: &ShardStore, id: PartitionId, stored: &[(Vec<u8>, Offset)]) {
    let next = store.offsets(id).expect("partition").next_offset;
    assert_eq!(next, Offset(14));
    for (batch, offset) in &stored[2..] {
        assert_eq!(
            append(store, id, batch).await.expect("a duplicate"),
            (*offset, true)
        );
    }
    assert_eq!(store.offsets(id).expect("partition").next_offset, next);
    let too_old = append(store, id, &stored[1].0).await;
    assert!(
        matches!(
            too_old,
            Err(AppendError::Producer(ProducerError::OutOfOrderSequence {
                expected: 14,
                found: 2,
                ..
            }))
        ),
        "{too_old:?}"
    );
    let gap = append(store, id, &producer_batch(15, 1)).await;
    assert!(
        matches!(
            gap,
            Err(AppendError::Producer(
                ProducerError::OutOfOrderSequence { .. }
            ))
        ),
        "{gap:?}"
    );
    assert_eq!(
        append(store, id, &producer_batch(14, 1))
            .await
            .expect("next"),
        (Offset(14), false)
    );
}

#[test]
fn retried_batch_after_a_clean_restart_gets_its_original_offset() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    let (id, stored) = runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let id = support::create(&store, "idempotent", 0);
        let stored = seven_batches(&store, id).await;
        support::shutdown(&store).await;
        (id, stored)
    });
    runtime.block_on(async {
        // The clean shutdown left a producer snapshot at the end of the log:
        // nothing is rescanned for the producers' state.
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let report = store.recovery_report().clone();
        assert_eq!(
            report.producer_snapshot,
            CheckpointStatus::Found(report.end),
            "{report:?}"
        );
        assert_eq!(report.producer_scan_start, report.end, "{report:?}");
        assert_state_survived(&store, id, &stored).await;
        support::shutdown(&store).await;
    });
}

#[test]
fn retried_batch_after_a_power_cut_gets_its_original_offset() {
    let dir = tempfile::tempdir().unwrap();
    let device = SimDevice::new(17);
    let runtime = support::runtime(IoBackend::Epoll);
    let (id, stored) = runtime.block_on(async {
        let store = device.open_store(dir.path());
        let id = support::create(&store, "idempotent", 0);
        let stored = seven_batches(&store, id).await;
        device.power_cut();
        (id, stored)
    });
    drop(runtime);
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let device = SimDevice::new(18);
        let store = device.open_store(dir.path());
        assert_state_survived(&store, id, &stored).await;
        support::shutdown(&store).await;
    });
}

#[test]
fn older_epoch_is_refused_by_storage() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let id = support::create(&store, "idempotent", 0);
        append(&store, id, &producer_batch(0, 1))
            .await
            .expect("first");
        let mut older = BatchBuilder::new(1_700_000_000_000);
        older
            .producer(PRODUCER, EPOCH - 1, 1)
            .push(RecordSpec::default());
        let refused = append(&store, id, &older.build()).await;
        assert!(
            matches!(
                refused,
                Err(AppendError::Producer(ProducerError::InvalidEpoch {
                    current: EPOCH,
                    ..
                }))
            ),
            "{refused:?}"
        );
        assert_eq!(store.offsets(id).expect("partition").next_offset, Offset(1));
        support::shutdown(&store).await;
    });
}

/// Found by issue 16's kill rounds: around a failover, a producer's
/// pipelined requests reach the new leader out of order (an earlier one was
/// refused while the copy still followed). A gap in a producer's sequence
/// on a store that began to lead after that producer's newest batch was
/// written is refused as retriable (NOT_LEADER_OR_FOLLOWER), so the client
/// resends from its oldest batch, which is then found as a duplicate, not
/// as OUT_OF_ORDER_SEQUENCE_NUMBER (on which librdkafka renumbers batches
/// that may be stored already, writing them twice). Once the producer
/// wrote under this leadership, a gap is out of order again.
#[test]
fn a_sequence_gap_right_after_taking_over_the_log_is_retriable() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let id = support::create(&store, "idempotent", 0);
        append(&store, id, &producer_batch(0, 2))
            .await
            .expect("first");
        // A gap while this store always led: out of order.
        let gap = append(&store, id, &producer_batch(3, 1)).await;
        assert!(
            matches!(
                gap,
                Err(AppendError::Producer(ProducerError::OutOfOrderSequence {
                    expected: 2,
                    ..
                }))
            ),
            "{gap:?}"
        );
        // It follows another leader for a while, then leads again.
        store.set_follower(true);
        store.set_follower(false);
        let gap = append(&store, id, &producer_batch(3, 1)).await;
        assert!(
            matches!(
                gap,
                Err(AppendError::SequenceGapAfterFailover {
                    expected: 2,
                    found: 3,
                    ..
                })
            ),
            "{gap:?}"
        );
        assert!(gap.unwrap_err().is_retriable());
        // A sequence behind what the store expects never becomes a
        // duplicate by waiting: out of order at once.
        let behind = append(&store, id, &producer_batch(1, 1)).await;
        assert!(
            matches!(
                behind,
                Err(AppendError::Producer(
                    ProducerError::OutOfOrderSequence { .. }
                ))
            ),
            "{behind:?}"
        );
        // The client resends from its oldest batch: a duplicate, then the
        // rest in order.
        assert_eq!(
            append(&store, id, &producer_batch(0, 2)).await.unwrap(),
            (Offset(0), true)
        );
        assert_eq!(
            append(&store, id, &producer_batch(2, 1)).await.unwrap(),
            (Offset(2), false)
        );
        assert_eq!(
            append(&store, id, &producer_batch(3, 1)).await.unwrap(),
            (Offset(3), false)
        );
        let gap = append(&store, id, &producer_batch(5, 1)).await;
        assert!(
            matches!(
                gap,
                Err(AppendError::Producer(ProducerError::OutOfOrderSequence {
                    expected: 4,
                    ..
                }))
            ),
            "{gap:?}"
        );
        support::shutdown(&store).await;
    });
}

#[test]
fn retry_asking_for_fsync_waits_for_the_original_batch_to_be_durable() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let config = PartitionConfig {
            flush_ms: 3_600_000,
            ..support::default_partition_config()
        };
        let id = store
            .create_partition("idempotent", 0, config)
            .expect("created");
        let batch = producer_batch(0, 3);
        // acks=1: buffered only, fsynced within the topic's flush.ms (1 h).
        let original = store
            .append(id, support::validated(&batch), Durability::Buffered)
            .await
            .expect("appended");
        let (original_end, _, _) = store.log_ends();
        let retry = store
            .append(id, support::validated(&batch), Durability::Fsynced)
            .await
            .expect("a duplicate");
        assert!(retry.duplicate);
        assert_eq!(retry.base_offset, original.base_offset);
        assert_eq!(store.log_ends().0, original_end, "nothing appended");
        compio::time::timeout(Duration::from_secs(30), store.wait(&retry))
            .await
            .expect("the retry waited for the original's flush.ms")
            .expect("durable");
        let (_, _, durable) = store.log_ends();
        assert!(
            durable >= original_end,
            "the retry was answered before the original was fsynced: {durable} < {original_end}"
        );
        support::shutdown(&store).await;
    });
}

/// Issue 13: recovery rebuilds the producers' state from the snapshot plus
/// the log after it, and a retry of a batch on either side of the
/// snapshot's position is still recognised.
#[test]
fn restart_scans_for_producers_only_after_the_snapshot_and_still_finds_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (id, stored, snapshot_at) = snapshot_then_power_cut(dir.path());
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let device = SimDevice::new(23);
        let store = device.open_store(dir.path());
        let report = store.recovery_report().clone();
        assert_eq!(
            report.producer_snapshot,
            CheckpointStatus::Found(snapshot_at)
        );
        assert_eq!(report.producer_scan_start, snapshot_at, "{report:?}");
        // stored[2..4] are in the snapshot, stored[4..] only in the log.
        assert_state_survived(&store, id, &stored).await;
        support::shutdown(&store).await;
    });
}

/// Issue 13: a damaged producer snapshot is ignored and the state is
/// rebuilt from the first segment, so duplicates are still recognised.
#[test]
fn damaged_producer_snapshot_falls_back_to_a_scan_from_the_first_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (id, stored, _) = snapshot_then_power_cut(dir.path());
    let file = snapshot_file(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    // The first sequence of the newest batch the snapshot holds (sequence
    // 6): header 20, partition 8, entry 32, three batches of 32 before it.
    bytes[20 + 8 + 32 + 3 * 32] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let device = SimDevice::new(24);
        let store = device.open_store(dir.path());
        let report = store.recovery_report().clone();
        assert!(
            matches!(report.producer_snapshot, CheckpointStatus::Damaged(_)),
            "{report:?}"
        );
        assert_eq!(report.producer_scan_start, LogPosition::ZERO, "{report:?}");
        assert_state_survived(&store, id, &stored).await;
        support::shutdown(&store).await;
    });
}

/// Issue 13: a periodic producer snapshot is copied at the append end but
/// written only once the log is durable up to there, so it never holds a
/// batch a crash could lose.
#[test]
fn periodic_producer_snapshot_is_written_only_once_the_log_is_durable_there() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let storage = sluice::config::StorageConfig {
            checkpoint_interval_ms: 3_600_000,
            producer_snapshot_interval_bytes: 1024 * 1024,
            ..support::small_storage(WriteMode::Direct)
        };
        let options = support::options(dir.path(), storage, IoBackend::Epoll);
        let store = ShardStore::open(options).expect("opened");
        let config = PartitionConfig {
            flush_ms: 3_600_000,
            ..support::default_partition_config()
        };
        let id = store
            .create_partition("idempotent", 0, config)
            .expect("created");
        let value = vec![b'v'; 50_000];
        let mut sequence = 0;
        while store.log_ends().0 < LogPosition(1024 * 1024) {
            let mut builder = BatchBuilder::new(1_700_000_000_000);
            builder
                .producer(PRODUCER, EPOCH, sequence)
                .push(RecordSpec {
                    value: Some(&value),
                    ..RecordSpec::default()
                });
            store
                .append(
                    id,
                    support::validated(&builder.build()),
                    Durability::Buffered,
                )
                .await
                .expect("appended");
            sequence += 1;
        }
        let snapshots = dir.path().join("shard-0").join("producers");
        let (append_end, _, durable) = store.log_ends();
        assert!(durable < append_end, "flush.ms 1 h: not yet durable");
        store.checkpoint().await.expect("checkpoint");
        assert!(
            !snapshots.exists() || std::fs::read_dir(&snapshots).unwrap().next().is_none(),
            "a snapshot was written before the log was durable at its position"
        );
        store.sync().await.expect("synced");
        store.checkpoint().await.expect("checkpoint");
        let file = snapshot_file(dir.path());
        let expected = sluice::storage::producer_snapshot::ProducerSnapshot::file_name(append_end);
        assert_eq!(
            file.file_name().and_then(|name| name.to_str()),
            Some(expected.as_str())
        );
        support::shutdown(&store).await;
    });
}

/// Issue 13, design 2.5: a producer whose newest batch is
/// `storage.producer_id_expiration_ms` old is forgotten, so its next batch is
/// accepted at any sequence (KIP-360); one replayed after a restart expires
/// again.
#[test]
fn producer_idle_for_the_expiration_is_forgotten_and_again_after_a_restart() {
    let expiration_ms = sluice::config::StorageConfig::default().producer_id_expiration_ms;
    let expired_at = BATCH_TIMESTAMP_MS + expiration_ms;
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    let id = runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let id = support::create(&store, "idempotent", 0);
        append(&store, id, &producer_batch(0, 2))
            .await
            .expect("first");
        assert_eq!(store.expire_producers(expired_at - 1), 0);
        let gap = append(&store, id, &producer_batch(10, 1)).await;
        assert!(
            matches!(
                gap,
                Err(AppendError::Producer(
                    ProducerError::OutOfOrderSequence { .. }
                ))
            ),
            "{gap:?}"
        );
        assert_eq!(store.expire_producers(expired_at), 1);
        assert_eq!(
            append(&store, id, &producer_batch(10, 1))
                .await
                .expect("accepted as an unknown producer"),
            (Offset(2), false)
        );
        support::shutdown(&store).await;
        id
    });
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        // The producer is back from the log (its batch at sequence 10) ...
        let gap = append(&store, id, &producer_batch(20, 1)).await;
        assert!(gap.is_err(), "{gap:?}");
        // ... and expires again at the next check.
        assert_eq!(store.expire_producers(expired_at), 1);
        assert_eq!(
            append(&store, id, &producer_batch(20, 1))
                .await
                .expect("accepted as an unknown producer"),
            (Offset(3), false)
        );
        support::shutdown(&store).await;
    });
}

/// Issue 13, design 2.5: the retention task runs the expiry by itself every
/// `storage.producer_id_expiration_check_interval_ms` (the batches' 2023
/// timestamps are far more than a day old by the broker's clock).
#[test]
fn retention_task_expires_idle_producers_periodically() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let storage = sluice::config::StorageConfig {
            producer_id_expiration_check_interval_ms: 1,
            ..support::small_storage(WriteMode::Direct)
        };
        let mut options = support::options(dir.path(), storage, IoBackend::Epoll);
        options.retention.disk_check_interval_ms = 10;
        let store = ShardStore::open(options).expect("opened");
        let id = support::create(&store, "idempotent", 0);
        append(&store, id, &producer_batch(0, 2))
            .await
            .expect("first");
        let accepted = compio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Ok(stored) = append(&store, id, &producer_batch(10, 1)).await {
                    return stored;
                }
                compio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the retention task expired the producer");
        assert_eq!(accepted, (Offset(2), false));
        support::shutdown(&store).await;
    });
}

/// Issue 17 (a breaker's finding): while producers have state, retention
/// deletes no segment past the newest producer snapshot, and asks for one;
/// so after a power cut a retry of a producer's batch is still recognised
/// even when every segment that held its batches expired (mutation: no
/// such bound → the segments go at once and the retries are stored again).
#[test]
fn retention_waits_for_a_producer_snapshot_before_deleting_a_producers_batches() {
    let dir = tempfile::tempdir().unwrap();
    let segments = || {
        std::fs::read_dir(dir.path().join("shard-0").join("log"))
            .unwrap()
            .count()
    };
    let runtime = support::runtime(IoBackend::Epoll);
    let device = SimDevice::new(31);
    let (id, stored, end) = runtime.block_on(async {
        let store = device.open_store(dir.path());
        let id = support::create(&store, "idempotent", 0);
        let stored = seven_batches(&store, id).await;
        // Batches of no producer fill several more segments.
        let filler = support::batch("filler", 2, 20_000);
        while segments() < 4 {
            append(&store, id, &filler).await.expect("appended");
        }
        let config = PartitionConfig {
            retention_ms: 1,
            ..support::default_partition_config()
        };
        store.set_partition_config(id, config).unwrap();
        let before = segments();
        let later = sluice::storage::segment::now_ms() + 3_600_000;
        store.enforce_retention(later);
        store.segment_files_removed().await;
        assert_eq!(
            segments(),
            before,
            "no producer snapshot covers the producer's batches yet"
        );
        // Everything appended was fsynced: the requested snapshot is
        // written at once.
        store.checkpoint().await.expect("checkpoint");
        store.enforce_retention(later);
        store.segment_files_removed().await;
        assert_eq!(segments(), 1, "the snapshot covers them now");
        let end = store.offsets(id).expect("partition").next_offset;
        device.power_cut();
        (id, stored, end)
    });
    drop(runtime);
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let device = SimDevice::new(32);
        let store = device.open_store(dir.path());
        assert_eq!(store.offsets(id).expect("partition").next_offset, end);
        for (batch, offset) in &stored[2..] {
            assert_eq!(
                append(&store, id, batch).await.expect("a duplicate"),
                (*offset, true),
                "a retry after its segment expired"
            );
        }
        assert_eq!(store.offsets(id).expect("partition").next_offset, end);
        let (offset, duplicate) = append(&store, id, &producer_batch(14, 2))
            .await
            .expect("the next sequence");
        assert_eq!((offset, duplicate), (end, false));
        support::shutdown(&store).await;
    });
}
