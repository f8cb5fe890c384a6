//! Recovery from damaged files: torn tails, corrupt frames in the middle,
//! deleted consume queues, segments left empty by a crash, and long logs that
//! roll over many segments.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sluice::config::WriteMode;
use sluice::ids::{Offset, PartitionId};
use sluice::storage::{Durability, ShardStore};

use crate::support::{self, batch, stored_form, validated};

fn log_dir(dir: &Path) -> PathBuf {
    dir.join("shard-0").join("log")
}

fn first_segment(dir: &Path) -> PathBuf {
    log_dir(dir).join("00000000000000000000.log")
}

fn segment_count(dir: &Path) -> usize {
    std::fs::read_dir(log_dir(dir)).unwrap().count()
}

/// Append `count` batches round-robin over `partitions`, each acknowledged
/// fsynced. Returns (partition index, base offset, original bytes).
async fn fill(
    store: &ShardStore,
    ids: &[PartitionId],
    count: usize,
    value_bytes: usize,
) -> Vec<(usize, Offset, Vec<u8>)> {
    let mut appended = Vec::new();
    for seq in 0..count {
        let partition = seq % ids.len();
        let bytes = batch(&format!("fill{seq}"), 2, value_bytes);
        let receipt = store
            .append(ids[partition], validated(&bytes), Durability::Fsynced)
            .await
            .unwrap();
        store.wait(&receipt).await.unwrap();
        appended.push((partition, receipt.base_offset, bytes));
    }
    appended
}

fn assert_all_served(
    store: &ShardStore,
    ids: &[PartitionId],
    appended: &[(usize, Offset, Vec<u8>)],
    except: &[usize],
) {
    for (partition, &id) in ids.iter().enumerate() {
        let served = support::read_all(store, id, Offset(0));
        let expected: Vec<_> = appended
            .iter()
            .enumerate()
            .filter(|(seq, (p, _, _))| *p == partition && !except.contains(seq))
            .map(|(_, (_, offset, bytes))| (*offset, stored_form(bytes, *offset)))
            .collect();
        assert_eq!(
            served.len(),
            expected.len(),
            "batches served for partition {partition}"
        );
        for (got, want) in served.iter().zip(&expected) {
            assert_eq!(got, want);
        }
    }
}

fn ids_of(store: &ShardStore, partitions: u32) -> Vec<PartitionId> {
    (0..partitions)
        .map(|index| {
            store
                .partition_id("rec", index)
                .unwrap_or_else(|| support::create(store, "rec", index))
        })
        .collect()
}

/// File offset of the frame holding `offset` of `partition` (frame header
/// included), for damaging it.
fn frame_file_offset(store: &ShardStore, id: PartitionId, offset: Offset) -> (u64, u32) {
    let batch = store.read(id, offset, 1).unwrap().batches.remove(0);
    assert_eq!(batch.base_offset, offset);
    assert!(
        batch.position.0 < 256 * 1024,
        "the batch is in the first segment"
    );
    (batch.position.0, batch.len)
}

fn damage(path: &Path, at: u64, bytes: &[u8]) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, at).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn torn_tail_is_truncated_and_appends_continue_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = ids_of(&store, 1);
        let appended = fill(&store, &ids, 10, 700).await;
        let (end, _, _) = store.log_ends();
        // Half of a copy of the last frame, written where the next would go:
        // a valid header whose batch never finished.
        let (last_at, last_len) = frame_file_offset(&store, ids[0], appended[9].1);
        let mut frame = vec![0u8; 20 + last_len as usize];
        std::fs::File::open(first_segment(dir.path()))
            .unwrap()
            .read_exact_at(&mut frame, last_at)
            .unwrap();
        support::shutdown(&store).await;
        let torn = &frame[..frame.len() / 2];
        damage(&first_segment(dir.path()), end.0, torn);

        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let report = store.recovery_report().clone();
        assert_eq!(report.truncated_at, Some(end));
        // Zeros at the very end of the torn copy look like preallocated space.
        assert!(report.truncated_bytes > 0 && report.truncated_bytes <= torn.len() as u64);
        assert_all_served(&store, &ids, &appended, &[]);
        let more = fill(&store, &ids, 3, 100).await;
        assert_eq!(
            more[0].1,
            Offset(20),
            "offsets continue after the torn batch"
        );
        support::shutdown(&store).await;

        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        assert_eq!(
            store.recovery_report().truncated_bytes,
            0,
            "the torn bytes stay gone"
        );
        let all: Vec<_> = appended.iter().chain(&more).cloned().collect();
        assert_all_served(&store, &ids, &all, &[]);
        support::shutdown(&store).await;
    });
}

/// Damage one frame in the middle of a log whose checkpoint is lost, so
/// recovery must scan through it.
fn damaged_middle_frame_is_skipped(damage_at: impl Fn(u64, u32) -> (u64, Vec<u8>)) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = ids_of(&store, 2);
        let appended = fill(&store, &ids, 12, 900).await;
        let victim = 5;
        let (partition, offset, _) = &appended[victim];
        let (frame_at, len) = frame_file_offset(&store, ids[*partition], *offset);
        support::shutdown(&store).await;
        std::fs::remove_file(dir.path().join("shard-0").join("checkpoint")).unwrap();
        let (at, bytes) = damage_at(frame_at, len);
        damage(&first_segment(dir.path()), at, &bytes);

        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let report = store.recovery_report().clone();
        assert_eq!(
            report.skipped.len(),
            1,
            "one damaged range: {:?}",
            report.skipped
        );
        assert_eq!(
            report.skipped[0].0.0, frame_at,
            "skipped from the damaged frame"
        );
        assert_eq!(report.truncated_bytes, 0);
        assert_all_served(&store, &ids, &appended, &[victim]);
        // Fetching the lost offset yields the next batch of that partition.
        let next = store
            .read(ids[*partition], *offset, 1)
            .unwrap()
            .batches
            .remove(0);
        assert_eq!(next.base_offset, appended[victim + 2].1);
        let more = fill(&store, &ids, 2, 10).await;
        assert!(more.iter().all(|(_, offset, _)| offset.0 >= 12));
        support::shutdown(&store).await;
    });
}

#[test]
fn corrupt_batch_in_the_middle_is_skipped_and_later_frames_survive() {
    damaged_middle_frame_is_skipped(|frame_at, len| {
        (frame_at + 20 + u64::from(len) - 3, vec![0xAA])
    });
}

#[test]
fn corrupt_frame_header_in_the_middle_is_skipped_by_resynchronising() {
    damaged_middle_frame_is_skipped(|frame_at, _| (frame_at, b"XXXX".to_vec()));
}

#[test]
fn deleted_consume_queue_is_rebuilt_from_the_commit_log() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = ids_of(&store, 2);
        // 1024 entries per queue file: partition 0 gets three files.
        let appended = fill(&store, &ids, 4200, 20).await;
        support::shutdown(&store).await;
        let queue_dir = dir
            .path()
            .join("shard-0")
            .join("partitions")
            .join(format!("{:010}", ids[0].0));
        let mut removed = 0;
        for entry in std::fs::read_dir(&queue_dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|extension| extension == "cq") {
                std::fs::remove_file(path).unwrap();
                removed += 1;
            }
        }
        assert!(removed >= 3, "partition 0 had {removed} queue files");

        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let report = store.recovery_report().clone();
        assert_eq!(report.queues_rebuilt, vec![ids[0]]);
        assert_eq!(report.frames_reindexed, 2100);
        assert_all_served(&store, &ids, &appended, &[]);
        let when = store.offset_for_timestamp(ids[0], 0).unwrap();
        assert_eq!(when.map(|(offset, _)| offset), Some(Offset(0)));
        support::shutdown(&store).await;
    });
}

/// Issue 12: consume-queue files of the version-1 layout (no header, 32-byte
/// entries without a checksum) are rebuilt from the commit log, as is a
/// queue whose header was damaged.
#[test]
fn queue_files_of_an_older_layout_are_rebuilt_from_the_commit_log() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = ids_of(&store, 2);
        let appended = fill(&store, &ids, 3000, 20).await;
        support::shutdown(&store).await;
        let queue_dir = |id: sluice::ids::PartitionId| {
            dir.path()
                .join("shard-0")
                .join("partitions")
                .join(format!("{:010}", id.0))
        };
        // Partition 0: every file in the old layout. Partition 1: the first
        // file's header damaged.
        for entry in std::fs::read_dir(queue_dir(ids[0])).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|extension| extension == "cq") {
                std::fs::write(&path, vec![0x11u8; 32 * 1024]).unwrap();
            }
        }
        let first = queue_dir(ids[1]).join(format!("{:020}.cq", 0));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[2] ^= 0xff;
        std::fs::write(&first, bytes).unwrap();

        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let mut rebuilt = store.recovery_report().queues_rebuilt.clone();
        rebuilt.sort();
        assert_eq!(rebuilt, ids);
        assert_all_served(&store, &ids, &appended, &[]);
        support::shutdown(&store).await;
    });
}

#[test]
fn segments_roll_over_and_every_batch_reads_back_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = ids_of(&store, 3);
        // ~1.2 MiB into 256 KiB segments.
        let appended = fill(&store, &ids, 300, 2000).await;
        assert!(
            segment_count(dir.path()) >= 5,
            "{} segments",
            segment_count(dir.path())
        );
        assert_all_served(&store, &ids, &appended, &[]);
        support::shutdown(&store).await;
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        assert_all_served(&store, &ids, &appended, &[]);
        support::shutdown(&store).await;
    });
}

#[test]
fn empty_segment_left_by_a_crash_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = ids_of(&store, 1);
        let appended = fill(&store, &ids, 5, 100).await;
        support::shutdown(&store).await;
        // A crash right after creating the next segment: it holds no frames.
        let next = log_dir(dir.path()).join(format!("{:020}.log", 256 * 1024));
        std::fs::File::create(&next)
            .unwrap()
            .set_len(256 * 1024)
            .unwrap();
        std::fs::remove_file(dir.path().join("shard-0").join("checkpoint")).unwrap();

        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        assert!(!next.exists(), "the empty trailing segment is removed");
        assert_all_served(&store, &ids, &appended, &[]);
        let more = fill(&store, &ids, 2, 100).await;
        assert_eq!(more[0].1, Offset(10));
        support::shutdown(&store).await;
    });
}

#[test]
fn frames_of_a_deleted_partition_are_ignored_by_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = ids_of(&store, 2);
        let appended = fill(&store, &ids, 10, 100).await;
        store.delete_partition(ids[1]).unwrap();
        support::shutdown(&store).await;
        std::fs::remove_file(dir.path().join("shard-0").join("checkpoint")).unwrap();

        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        assert_eq!(store.recovery_report().orphan_frames, 5);
        assert_eq!(store.partition_id("rec", 1), None);
        assert_all_served(&store, &ids[..1], &appended, &[]);
        // A new partition never reuses the deleted one's id.
        let again = support::create(&store, "rec", 1);
        assert!(again.0 > ids[1].0);
        assert_eq!(store.offsets(again).unwrap().next_offset, Offset(0));
        support::shutdown(&store).await;
    });
}

/// Issue 12: a damaged consume-queue entry whose batch retention already
/// deleted cannot be re-indexed. Recovery says so and serves what the log
/// still holds, from its oldest batch on, with nothing wrong and no panic.
#[test]
fn a_damaged_queue_entry_whose_segment_is_gone_serves_what_remains() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = ids_of(&store, 1);
        // ~600 KiB into 256 KiB segments: three of them.
        let appended = fill(&store, &ids, 300, 1000).await;
        let in_first_segment: Vec<usize> = appended
            .iter()
            .enumerate()
            .filter(|(_, (_, offset, _))| {
                let batch = store.read(ids[0], *offset, 1).unwrap().batches.remove(0);
                batch.position.0 < 256 * 1024
            })
            .map(|(seq, _)| seq)
            .collect();
        assert!(in_first_segment.len() > 10 && in_first_segment.len() < appended.len());
        support::shutdown(&store).await;
        // Retention's work, without its bookkeeping: the oldest segment is
        // gone while the queue still indexes it, and then entry 3 is damaged.
        std::fs::remove_file(first_segment(dir.path())).unwrap();
        let queue = dir
            .path()
            .join("shard-0")
            .join("partitions")
            .join(format!("{:010}", ids[0].0))
            .join(format!("{:020}.cq", 0));
        damage(&queue, 64 + 3 * 40 + 12, &[0x77]);

        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let report = store.recovery_report().clone();
        assert_eq!(report.damaged_queue_entries, vec![(ids[0], 3)]);
        assert_eq!(report.queues_rebuilt, vec![ids[0]]);
        let first_kept = appended[in_first_segment.len()].1;
        let offsets = store.offsets(ids[0]).unwrap();
        assert_eq!(offsets.log_start_offset, first_kept);
        assert_eq!(offsets.next_offset, Offset(600));
        let served = support::read_all(&store, ids[0], first_kept);
        let expected: Vec<_> = appended[in_first_segment.len()..]
            .iter()
            .map(|(_, offset, bytes)| (*offset, stored_form(bytes, *offset)))
            .collect();
        assert_eq!(served, expected);
        let more = fill(&store, &ids, 2, 10).await;
        assert_eq!(more[0].1, Offset(600));
        support::shutdown(&store).await;
    });
}
