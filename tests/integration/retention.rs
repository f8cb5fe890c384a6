//! Retention: by age, by size per partition, and the disk-usage guards.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use sluice::config::WriteMode;
use sluice::ids::{Offset, PartitionId};
use sluice::record_batch::{BatchBuilder, RecordSpec};
use sluice::storage::retention::DiskPressure;
use sluice::storage::segment::now_ms;
use sluice::storage::{
    AppendError, Durability, PartitionConfig, ReadError, ShardStore, StoreHooks,
};

use crate::support::{self, batch, validated};

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("shard-0").join("log"))
        .unwrap()
        .count()
}

async fn fill(
    store: &ShardStore,
    ids: &[PartitionId],
    count: usize,
) -> Vec<(usize, Offset, usize)> {
    fill_as(store, ids, count, Durability::Written).await
}

async fn fill_as(
    store: &ShardStore,
    ids: &[PartitionId],
    count: usize,
    durability: Durability,
) -> Vec<(usize, Offset, usize)> {
    let mut appended = Vec::new();
    for seq in 0..count {
        let partition = seq % ids.len();
        let bytes = batch(&format!("ret{seq}"), 2, 1500);
        let receipt = store
            .append(ids[partition], validated(&bytes), durability)
            .await
            .unwrap();
        store.wait(&receipt).await.unwrap();
        appended.push((partition, receipt.base_offset, bytes.len()));
    }
    appended
}

fn with_config(store: &ShardStore, id: PartitionId, edit: impl Fn(&mut PartitionConfig)) {
    let mut config = support::default_partition_config();
    edit(&mut config);
    store.set_partition_config(id, config).unwrap();
}

/// Issue 19 item 5: a segment retention deletes is unlinked off the shard
/// and its blocks are freed a step at a time (on a filesystem mounted with
/// `discard`, freeing a gigabyte at once held every fdatasync on the disk
/// for half a second). A descriptor the test holds keeps the inode, so its
/// size shows the steps (mutation: unlinked whole, the size never lies
/// between full and zero: "never freed in steps").
#[test]
fn a_deleted_segment_is_unlinked_and_freed_in_steps() {
    const SEGMENT_BYTES: u64 = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let storage = sluice::config::StorageConfig {
        segment_bytes: SEGMENT_BYTES,
        flush_bytes: 256 * 1024,
        ..support::small_storage(WriteMode::Direct)
    };
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let options = support::options(dir.path(), storage, support::native_backend());
        let store = ShardStore::open(options).unwrap();
        let id = support::create(&store, "freed", 0);
        let bytes = batch("freed", 60, 1000);
        while store.log_ends().0.0 <= SEGMENT_BYTES {
            let receipt = store
                .append(id, validated(&bytes), Durability::Written)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
        }
        let path = dir.path().join(format!("shard-0/log/{:020}.log", 0));
        let held = std::fs::File::open(&path).unwrap();
        assert_eq!(held.metadata().unwrap().len(), SEGMENT_BYTES);

        with_config(&store, id, |config| config.retention_ms = 60_000);
        store.enforce_retention(now_ms() + 3_600_000);
        assert_eq!(store.gauges().segments, 1, "taken out of the log at once");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while path.exists() {
            assert!(std::time::Instant::now() < deadline, "never unlinked");
            compio::time::sleep(Duration::from_millis(1)).await;
        }
        // The blocking pool frees the blocks now; watch the size shrink.
        let mut between = 0;
        loop {
            let len = held.metadata().unwrap().len();
            if len == 0 {
                break;
            }
            between += usize::from(len < SEGMENT_BYTES);
            assert!(
                std::time::Instant::now() < deadline,
                "never freed: {len} bytes left"
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        assert!(between > 0, "never freed in steps");
        store.segment_files_removed().await;
        support::shutdown(&store).await;
    });
}

#[test]
fn segments_older_than_retention_ms_are_deleted_and_the_log_start_moves() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let id = support::create(&store, "aged", 0);
        fill(&store, &[id], 400).await;
        compio::time::sleep(Duration::from_millis(20)).await;
        let midpoint_ms = now_ms();
        compio::time::sleep(Duration::from_millis(20)).await;
        let recent = fill(&store, &[id], 100).await;
        let before = segment_count(dir.path());
        assert!(before >= 4, "{before} segments");

        with_config(&store, id, |config| config.retention_ms = 60_000);
        store.enforce_retention(midpoint_ms + 60_000);
        store.segment_files_removed().await;
        let after = segment_count(dir.path());
        assert!(after < before && after >= 1, "segments {before} -> {after}");
        let offsets = store.offsets(id).unwrap();
        assert!(offsets.log_start_offset > Offset(0));
        assert!(
            offsets.log_start_offset <= recent[0].1,
            "recent batches are retained"
        );
        assert!(matches!(
            store.read(id, Offset(0), 1 << 20),
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        let kept = support::read_all(&store, id, offsets.log_start_offset);
        assert_eq!(kept.last().unwrap().0, recent.last().unwrap().1);

        // Everything expires: only the active segment remains (with the
        // next one, if it was made ahead), offsets go on.
        store.enforce_retention(now_ms() + 3_600_000);
        store.segment_files_removed().await;
        assert_eq!(store.gauges().segments, 1);
        assert!(segment_count(dir.path()) <= 2);
        let offsets = store.offsets(id).unwrap();
        assert_eq!(offsets.log_start_offset, offsets.high_watermark);
        let next = fill(&store, &[id], 1).await;
        assert_eq!(next[0].1, offsets.next_offset);
        support::shutdown(&store).await;

        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        assert_eq!(
            store.offsets(id).unwrap().log_start_offset,
            offsets.log_start_offset,
            "log start survives a restart"
        );
        support::shutdown(&store).await;
    });
}

#[test]
fn retention_bytes_trims_one_partition_and_shared_segments_wait_for_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = [
            support::create(&store, "sized", 0),
            support::create(&store, "sized", 1),
        ];
        let appended = fill(&store, &ids, 600).await;
        let before = segment_count(dir.path());
        let limit = 40_000u64;
        with_config(&store, ids[0], |config| {
            config.retention_bytes = limit as i64
        });
        store.enforce_retention(now_ms());
        store.segment_files_removed().await;

        let start = store.offsets(ids[0]).unwrap().log_start_offset;
        let kept: u64 = appended
            .iter()
            .filter(|(partition, offset, _)| *partition == 0 && *offset >= start)
            .map(|(_, _, len)| *len as u64)
            .sum();
        let one_batch = appended[0].2 as u64;
        assert!(
            kept <= limit && kept + one_batch > limit,
            "kept {kept} bytes for a {limit}-byte limit"
        );
        assert_eq!(store.offsets(ids[1]).unwrap().log_start_offset, Offset(0));
        assert_eq!(
            segment_count(dir.path()),
            before,
            "partition 1 still needs every segment"
        );

        with_config(&store, ids[1], |config| {
            config.retention_bytes = limit as i64
        });
        store.enforce_retention(now_ms());
        store.segment_files_removed().await;
        assert!(
            segment_count(dir.path()) < before,
            "segments no partition needs are deleted"
        );
        for id in ids {
            let start = store.offsets(id).unwrap().log_start_offset;
            assert!(!support::read_all(&store, id, start).is_empty());
        }
        support::shutdown(&store).await;
    });
}

#[test]
fn disk_guards_reject_appends_and_force_delete_only_topics_that_allow_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let usage = Rc::new(Cell::new(0.5));
        let probe_usage = Rc::clone(&usage);
        let log_dir = dir.path().join("shard-0").join("log");
        // Force mode: usage shrinks as segments go: 84% with two segments,
        // one point more per extra segment.
        let force_mode = Rc::new(Cell::new(false));
        let probe_force = Rc::clone(&force_mode);
        let hooks = StoreHooks {
            log_io: None,
            disk_probe: Some(Rc::new(move || {
                if probe_force.get() {
                    let segments = std::fs::read_dir(&log_dir)?.count() as f64;
                    return Ok(0.84 + 0.01 * (segments - 2.0));
                }
                Ok(probe_usage.get())
            })),
        };
        let options = support::options(
            dir.path(),
            support::small_storage(WriteMode::Direct),
            support::native_backend(),
        );
        let store = ShardStore::open_with(options, hooks).unwrap();
        let id = support::create(&store, "guarded", 0);
        let kept = support::create(&store, "precious", 0);
        fill(&store, &[id, kept], 400).await;
        let before = segment_count(dir.path());
        assert!((4..8).contains(&before), "{before} segments");

        usage.set(0.95);
        assert_eq!(store.check_disk(), DiskPressure::Reject);
        let bytes = batch("refused", 1, 10);
        let error = store
            .append(id, validated(&bytes), Durability::Written)
            .await
            .unwrap_err();
        assert!(matches!(error, AppendError::DiskFull { .. }), "{error}");
        assert!(error.is_retriable());
        assert!(error.to_string().contains("disk_reject_ratio"), "{error}");

        usage.set(0.80);
        assert_eq!(store.check_disk(), DiskPressure::Clean);
        store
            .append(id, validated(&bytes), Durability::Written)
            .await
            .unwrap();
        store.enforce_retention(now_ms());
        store.segment_files_removed().await;
        assert_eq!(
            segment_count(dir.path()),
            before,
            "nothing is expired at 80%"
        );

        // Issue 12: by default unexpired data is never deleted for space,
        // whoever filled the disk.
        force_mode.set(true);
        assert_eq!(store.check_disk(), DiskPressure::ForceClean);
        store.enforce_retention(now_ms());
        store.segment_files_removed().await;
        assert_eq!(segment_count(dir.path()), before, "nothing was allowed");
        assert_eq!(store.offsets(id).unwrap().log_start_offset, Offset(0));

        // One topic allows it, but the other shares every segment.
        let allow = PartitionConfig {
            disk_pressure_delete: true,
            ..support::default_partition_config()
        };
        store.set_partition_config(id, allow).unwrap();
        store.enforce_retention(now_ms());
        store.segment_files_removed().await;
        assert_eq!(segment_count(dir.path()), before, "\"precious\" pins them");
        assert_eq!(store.offsets(kept).unwrap().log_start_offset, Offset(0));

        store.set_partition_config(kept, allow).unwrap();
        store.enforce_retention(now_ms());
        store.segment_files_removed().await;
        let after = segment_count(dir.path());
        assert_eq!(after, 2, "deletes oldest segments until usage is below 85%");
        for partition in [id, kept] {
            let start = store.offsets(partition).unwrap().log_start_offset;
            assert!(start > Offset(0));
            assert!(!support::read_all(&store, partition, start).is_empty());
        }
        support::shutdown(&store).await;
    });
}

/// Issue 14: what DescribeLogDirs reports as a partition's size: the bytes
/// of its batches from the one holding the log start on, whatever slice
/// size the count is taken in, and unaffected by the other partition
/// sharing the log.
#[test]
fn stored_bytes_count_the_retained_batches_in_slices_of_any_size() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = [
            support::create(&store, "counted", 0),
            support::create(&store, "counted", 1),
        ];
        // Batches of 3 records each, of growing sizes, interleaved.
        let mut lengths = Vec::new();
        for seq in 0..14 {
            let bytes = batch(&format!("count{seq}"), 3, 100 + 37 * seq);
            let receipt = store
                .append(ids[seq % 2], validated(&bytes), Durability::Written)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
            if seq % 2 == 0 {
                lengths.push(bytes.len() as u64);
            }
        }
        let count = |entries_max: u64| {
            let mut total = 0;
            let mut from = None;
            loop {
                let step = store
                    .stored_bytes_step(ids[0], from, entries_max)
                    .unwrap()
                    .unwrap();
                total += step.bytes;
                match step.next {
                    Some(next) => from = Some(next),
                    None => return total,
                }
            }
        };
        let all: u64 = lengths.iter().sum();
        for entries_max in [1, 2, 3, 1000] {
            assert_eq!(count(entries_max), all, "slices of {entries_max}");
        }
        // Offset 7 lies inside the third batch (offsets 6-8): it still counts.
        store.advance_log_start(ids[0], Offset(7)).unwrap();
        let from_third: u64 = lengths[2..].iter().sum();
        for entries_max in [1, 2, 1000] {
            assert_eq!(count(entries_max), from_third, "slices of {entries_max}");
        }
        support::shutdown(&store).await;
    });
}

/// Found by a breaker trial (issue 19): a shard whose only segment filled
/// the disk stayed full for good once every topic's data had expired or
/// been deleted, since retention deletes only sealed segments, the active
/// one is aged from its last flush, and a refused append starts no age
/// roll. Under disk pressure the only segment is now rolled, aged from its
/// newest frame and deleted, once every partition with data in it lets
/// that data go; while one still retains its data, or without pressure,
/// it stays (mutation: without the roll, the first segment is never
/// removed).
#[test]
fn under_disk_pressure_a_shards_only_segment_is_rolled_and_deleted_once_its_data_may_go() {
    const SEGMENT_BYTES: u64 = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let storage = sluice::config::StorageConfig {
        segment_bytes: SEGMENT_BYTES,
        ..support::small_storage(WriteMode::Direct)
    };
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let usage = Rc::new(Cell::new(0.5));
        let probe_usage = Rc::clone(&usage);
        let hooks = StoreHooks {
            log_io: None,
            disk_probe: Some(Rc::new(move || Ok(probe_usage.get()))),
        };
        let options = support::options(dir.path(), storage, support::native_backend());
        let store = ShardStore::open_with(options, hooks).unwrap();
        let kept = support::create(&store, "kept", 0);
        let expiring = support::create(&store, "expiring", 0);
        let deleted = support::create(&store, "deleted", 0);
        fill(&store, &[kept, expiring, deleted], 30).await;
        let first = dir.path().join(format!("shard-0/log/{:020}.log", 0));
        assert_eq!(store.gauges().segments, 1);
        let an_hour_on = || now_ms() + 3_600_000;

        // Under pressure, while one partition still retains its data (the
        // 7-day default), the segment stays.
        usage.set(0.95);
        assert_eq!(store.check_disk(), DiskPressure::Reject);
        with_config(&store, expiring, |config| config.retention_ms = 60_000);
        store.delete_partition(deleted).unwrap();
        store.enforce_retention(an_hour_on());
        store.segment_files_removed().await;
        assert!(first.exists(), "deleted while data in it was retained");
        assert_eq!(support::read_all(&store, kept, Offset(0)).len(), 10);

        // Its data expires too, but without pressure nothing is rolled.
        usage.set(0.5);
        assert_eq!(store.check_disk(), DiskPressure::Normal);
        with_config(&store, kept, |config| config.retention_ms = 60_000);
        store.enforce_retention(an_hour_on());
        store.segment_files_removed().await;
        assert!(first.exists(), "rolled without disk pressure");
        assert_eq!(store.gauges().segments, 1);

        // Under pressure it is rolled and deleted in one pass.
        usage.set(0.95);
        assert_eq!(store.check_disk(), DiskPressure::Reject);
        store.enforce_retention(an_hour_on());
        store.segment_files_removed().await;
        assert!(
            !first.exists(),
            "the segment of expired data is still there"
        );
        assert_eq!(store.gauges().segments, 1);
        let offsets = store.offsets(kept).unwrap();
        assert_eq!(offsets.log_start_offset, offsets.high_watermark);

        // Space back: appends go on at the next offsets, in the new
        // segment, which is not rolled again.
        usage.set(0.5);
        assert_eq!(store.check_disk(), DiskPressure::Normal);
        let next = fill(&store, &[kept], 1).await;
        assert_eq!(next[0].1, offsets.high_watermark);
        assert_eq!(support::read_all(&store, kept, next[0].1).len(), 1);
        store.enforce_retention(now_ms());
        assert_eq!(store.gauges().segments, 1);
        support::shutdown(&store).await;
    });
}

/// A batch of `records` 1500-byte records from idempotent producer 77 at
/// epoch 0, from sequence `base_sequence`.
fn producer_batch(base_sequence: i32, records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(now_ms() as i64);
    builder.producer(77, 0, base_sequence);
    let value = vec![b'p'; 1500];
    for _ in 0..records {
        builder.push(RecordSpec {
            value: Some(&value),
            ..RecordSpec::default()
        });
    }
    builder.build()
}

/// Found by a breaker trial (issue 19): the only segment's roll under disk
/// pressure never came on a shard that had an idempotent producer or an
/// internal topic (a committed consumer offset): the internal topic's
/// records pinned the segment. An internal topic now lets the roll go
/// ahead (its owner copies its records forward, after which retention
/// deletes the rolled segment once a producer snapshot covers it), and the
/// new segment is not rolled again for the internal topic's copies alone.
/// Mutations: with the internal topic holding the roll back, "the only
/// segment was not rolled"; without the guard, "rolled again".
#[test]
fn under_disk_pressure_an_internal_topic_and_an_idempotent_producer_let_the_only_segment_go() {
    const SEGMENT_BYTES: u64 = 32 << 20;
    let dir = tempfile::tempdir().unwrap();
    let storage = sluice::config::StorageConfig {
        segment_bytes: SEGMENT_BYTES,
        ..support::small_storage(WriteMode::Direct)
    };
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let usage = Rc::new(Cell::new(0.5));
        let probe_usage = Rc::clone(&usage);
        let hooks = StoreHooks {
            log_io: None,
            disk_probe: Some(Rc::new(move || Ok(probe_usage.get()))),
        };
        let options = support::options(dir.path(), storage, support::native_backend());
        let store = ShardStore::open_with(options, hooks).unwrap();
        let user = support::create(&store, "user", 0);
        let offsets = support::create(&store, "__consumer_offsets", 0);
        with_config(&store, offsets, |config| {
            config.copies_forward = true;
            config.retention_ms = -1;
        });
        let mut last = Vec::new();
        for index in 0..10 {
            last = producer_batch(index * 2, 2);
            let receipt = store
                .append(user, validated(&last), Durability::Fsynced)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
        }
        fill_as(&store, &[offsets], 3, Durability::Fsynced).await;
        let first = dir.path().join(format!("shard-0/log/{:020}.log", 0));
        let an_hour_on = || now_ms() + 3_600_000;

        // The producer's data expires; under pressure the first pass asks
        // for a producer snapshot, the checkpoint writes it, and the next
        // pass rolls. The internal topic still needs the rolled segment.
        with_config(&store, user, |config| config.retention_ms = 60_000);
        usage.set(0.95);
        assert_eq!(store.check_disk(), DiskPressure::Reject);
        for _ in 0..2 {
            store.enforce_retention(an_hour_on());
            store.checkpoint().await.unwrap();
        }
        store.segment_files_removed().await;
        assert_eq!(
            store.gauges().segments,
            2,
            "the only segment was not rolled"
        );
        assert!(first.exists(), "deleted while the internal topic needed it");

        // Its owner copies its record forward (appends of internal records
        // go on below the reject ratio) and moves its log start; the rolled
        // segment then goes once a producer snapshot covers it.
        usage.set(0.87);
        assert_eq!(store.check_disk(), DiskPressure::ForceClean);
        let copied = fill_as(&store, &[offsets], 1, Durability::Fsynced).await[0].1;
        store.advance_log_start(offsets, copied).unwrap();
        for _ in 0..2 {
            store.enforce_retention(an_hour_on());
            store.checkpoint().await.unwrap();
        }
        store.segment_files_removed().await;
        assert!(
            !first.exists(),
            "the rolled segment waits for a producer snapshot"
        );
        assert_eq!(store.gauges().segments, 1);

        // Still under pressure, the segment of the copy alone stays.
        for _ in 0..2 {
            store.enforce_retention(an_hour_on());
            store.checkpoint().await.unwrap();
        }
        assert_eq!(
            store.gauges().segments,
            1,
            "rolled again for the internal topic's copy alone"
        );
        assert_eq!(support::read_all(&store, offsets, copied).len(), 1);

        // The producer's state outlived its segment, across a restart too:
        // a retry of its last batch is recognised.
        usage.set(0.5);
        assert_eq!(store.check_disk(), DiskPressure::Normal);
        drop(store);
        let options = support::options(
            dir.path(),
            sluice::config::StorageConfig {
                segment_bytes: SEGMENT_BYTES,
                ..support::small_storage(WriteMode::Direct)
            },
            support::native_backend(),
        );
        let store = ShardStore::open(options).unwrap();
        let receipt = store
            .append(user, validated(&last), Durability::Fsynced)
            .await
            .unwrap();
        assert!(receipt.duplicate, "the retry was stored again");
        support::shutdown(&store).await;
    });
}

/// Found with the test above: after a segment is rolled, a producer
/// snapshot taken at the log's end lies past the last frame, and it waited
/// for the next frame to be durable before it was written, so the rolled
/// segment of an idempotent producer's expired data stayed until the next
/// append: for good on a disk full enough to refuse it. The snapshot is
/// written once nothing is pending (mutation: without that the segment
/// stays, "waits for the next frame").
#[test]
fn an_idle_segment_rolled_for_its_age_goes_with_an_idempotent_producers_data_and_no_frame_after() {
    let dir = tempfile::tempdir().unwrap();
    let storage = sluice::config::StorageConfig {
        segment_bytes: 32 << 20,
        ..support::small_storage(WriteMode::Direct)
    };
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let options = support::options(dir.path(), storage, support::native_backend());
        let store = ShardStore::open(options).unwrap();
        let user = support::create(&store, "user", 0);
        with_config(&store, user, |config| {
            config.retention_ms = 60_000;
            config.segment_ms = 60_000;
        });
        for index in 0..10 {
            let batch = producer_batch(index * 2, 2);
            let receipt = store
                .append(user, validated(&batch), Durability::Fsynced)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
        }
        let first = dir.path().join(format!("shard-0/log/{:020}.log", 0));
        let an_hour_on = now_ms() + 3_600_000;
        for _ in 0..3 {
            store.enforce_retention(an_hour_on);
            store.checkpoint().await.unwrap();
        }
        store.segment_files_removed().await;
        assert!(!first.exists(), "waits for the next frame");
        assert_eq!(store.gauges().segments, 1);
        let offsets = store.offsets(user).unwrap();
        assert_eq!(offsets.log_start_offset, offsets.high_watermark);
        support::shutdown(&store).await;
    });
}
