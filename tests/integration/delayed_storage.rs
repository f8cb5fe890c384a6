//! Issue 18, through the storage API: a produced batch's delayed records
//! go into a held frame appended right before the partition's visible
//! batch (ARCHITECTURE.md, "Delayed delivery, retry and dead letters").

use sluice::config::WriteMode;
use sluice::ids::Offset;
use sluice::record_batch::{self, BatchBuilder, RecordSpec, ValidatedBatch};
use sluice::storage::frame::{FRAME_HEADER_BYTES, FrameKind};
use sluice::storage::segment_reader::check_frame;
use sluice::storage::{Durability, ShardStore};

use crate::support;

fn batch(values: &[&str], producer: Option<(i64, i16, i32)>) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    if let Some((id, epoch, sequence)) = producer {
        builder.producer(id, epoch, sequence);
    }
    for value in values {
        builder.push(RecordSpec {
            key: None,
            value: Some(value.as_bytes()),
            timestamp_delta_ms: 0,
        });
    }
    builder.build()
}

/// Shard 0's first segment file.
fn first_segment(dir: &std::path::Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("shard-0").join("log"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    segments.sort();
    segments.swap_remove(0)
}

/// The frames of shard 0's first segment, in order: (kind, base offset,
/// the batch's partitionLeaderEpoch field).
fn frames(dir: &std::path::Path) -> Vec<(FrameKind, i64, i32)> {
    let bytes = std::fs::read(first_segment(dir)).unwrap();
    let mut at = 0;
    let mut found = Vec::new();
    while let Ok(frame) = check_frame(&bytes[at..], 1 << 20) {
        let epoch_at = at + FRAME_HEADER_BYTES + 12;
        let epoch = i32::from_be_bytes(bytes[epoch_at..epoch_at + 4].try_into().unwrap());
        found.push((frame.header.kind, frame.batch.base_offset, epoch));
        at += frame.header.frame_len() as usize;
    }
    found
}

async fn append(
    store: &ShardStore,
    id: sluice::ids::PartitionId,
    held: &[u8],
    visible: &[u8],
) -> sluice::storage::AppendReceipt {
    let held = ValidatedBatch::frame_only(held, usize::MAX).unwrap();
    let receipt = store
        .append_with_held(
            id,
            held,
            support::validated(visible),
            Durability::Fsynced,
            None,
        )
        .await
        .unwrap();
    store.wait(&receipt).await.unwrap();
    receipt
}

/// The held frame lands right before its batch at the same base offset,
/// carrying the batch's CRC; reads, restarts and offsets see the batch
/// only; a retry of the stored batch appends neither frame (mutation: the
/// held frame appended before the producer check → a second held frame).
#[test]
fn a_held_frame_goes_right_before_its_batch_and_a_retry_writes_neither() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    let visible = batch(&["a", "b", "c"], Some((7, 0, 0)));
    let held = batch(&["later"], None);
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let id = support::create(&store, "later", 0);
        let first = append(&store, id, &held, &visible).await;
        assert_eq!((first.base_offset, first.duplicate), (Offset(0), false));
        let end = store.log_ends().0;
        let retry = append(&store, id, &held, &visible).await;
        assert_eq!((retry.base_offset, retry.duplicate), (Offset(0), true));
        assert_eq!(store.log_ends().0, end, "a retry appends nothing");
        let after = append(&store, id, &held, &batch(&["d"], Some((7, 0, 3)))).await;
        assert_eq!(after.base_offset, Offset(3));
        let read = support::read_all(&store, id, Offset(0));
        assert_eq!(
            read.iter().map(|(offset, _)| *offset).collect::<Vec<_>>(),
            [Offset(0), Offset(3)],
            "reads see the visible batches only"
        );
        support::shutdown(&store).await;
    });
    let crc = |bytes: &[u8]| record_batch::stored_crc(bytes) as i32;
    let found = frames(dir.path());
    let data: Vec<_> = found
        .iter()
        .filter(|(kind, ..)| matches!(kind, FrameKind::Batch | FrameKind::DelayHeld))
        .copied()
        .collect();
    let visible_after = batch(&["d"], Some((7, 0, 3)));
    assert_eq!(
        data.iter()
            .map(|(kind, base, _)| (*kind, *base))
            .collect::<Vec<_>>(),
        [
            (FrameKind::DelayHeld, 0),
            (FrameKind::Batch, 0),
            (FrameKind::DelayHeld, 3),
            (FrameKind::Batch, 3),
        ]
    );
    assert_eq!(data[0].2, crc(&visible), "the held frame names its batch");
    assert_eq!(data[2].2, crc(&visible_after));
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let id = store.partition_id("later", 0).unwrap();
        assert_eq!(store.offsets(id).unwrap().next_offset, Offset(4));
        assert_eq!(support::read_all(&store, id, Offset(0)).len(), 2);
        support::shutdown(&store).await;
    });
}

/// (kind, start, end) of each frame in shard 0's first segment.
fn frame_spans(dir: &std::path::Path) -> (std::path::PathBuf, Vec<(FrameKind, usize, usize)>) {
    let segment = first_segment(dir);
    let bytes = std::fs::read(&segment).unwrap();
    let mut at = 0;
    let mut spans = Vec::new();
    while let Ok(frame) = check_frame(&bytes[at..], 1 << 20) {
        let end = at + frame.header.frame_len() as usize;
        spans.push((frame.header.kind, at, end));
        at = end;
    }
    (segment, spans)
}

/// Recovery counts a held frame only with its visible batch right after
/// it: a crash between the two appends (the batch's bytes never reached
/// the disk) leaves the held frame as dead bytes, never a delayed record
/// of an unacknowledged batch (mutation: every held frame counted → the
/// orphan counted; the pairing's own rules are unit-tested in
/// `storage/timer/pairing.rs`).
#[test]
fn recovery_counts_a_held_frame_only_when_its_batch_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    let checkpoint = dir.path().join("shard-0").join("checkpoint");
    let recovered = |runtime: &compio::runtime::Runtime| {
        runtime.block_on(async {
            let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
            let held: Vec<(u32, i64)> = store
                .recovery_report()
                .timer_frames
                .iter()
                .map(|held| (held.partition.0, held.base_offset))
                .collect();
            let id = store.partition_id("later", 0).unwrap();
            let next = store.offsets(id).unwrap().next_offset;
            support::shutdown(&store).await;
            (held, next, id.0)
        })
    };
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let id = support::create(&store, "later", 0);
        let held = batch(&["later"], None);
        append(&store, id, &held, &batch(&["a", "b"], None)).await;
        append(&store, id, &held, &batch(&["c"], None)).await;
        support::shutdown(&store).await;
    });
    std::fs::remove_file(&checkpoint).unwrap();
    let (held, next, id) = recovered(&runtime);
    assert_eq!(held, [(id, 0), (id, 2)], "both held frames, scanned again");
    assert_eq!(next, Offset(3));
    // Cut the log between the second held frame and its batch.
    let (segment, spans) = frame_spans(dir.path());
    let last = spans
        .iter()
        .rposition(|(kind, ..)| *kind == FrameKind::Batch)
        .unwrap();
    assert_eq!(spans[last - 1].0, FrameKind::DelayHeld, "its held frame");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[spans[last].1..].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    std::fs::remove_file(&checkpoint).unwrap();
    let (held, next, id) = recovered(&runtime);
    assert_eq!(held, [(id, 0)], "the orphan held frame does not count");
    assert_eq!(next, Offset(2));
}
