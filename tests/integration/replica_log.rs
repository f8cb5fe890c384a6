//! Issue 16, the storage side of replication: a follower's store copies its
//! leader's commit log frame for frame (`storage/replica.rs`), so offsets,
//! consume queues, producer state and segment layout are the leader's by
//! construction, and a copy that does not continue the log is refused.

use std::rc::Rc;

use sluice::config::WriteMode;
use sluice::ids::{LogPosition, Offset, PartitionId};
use sluice::io::IoBackend;
use sluice::record_batch::control::{MarkerKind, TxnMarker};
use sluice::record_batch::{BatchBuilder, RecordSpec};
use sluice::storage::replica::{LogRead, ReplicaAppendError};
use sluice::storage::{Durability, ShardStore};

use crate::support;

const PARTITIONS: [(&str, u32); 3] = [("orders", 0), ("orders", 1), ("payments", 0)];
const PRODUCER: i64 = 4242;
const EPOCH: i16 = 3;

/// A store on `dir` holding [`PARTITIONS`], created in that order (until
/// partition changes travel in the log, a follower creates them itself).
fn store_with_partitions(dir: &std::path::Path) -> (Rc<ShardStore>, Vec<PartitionId>) {
    let store = support::open(dir, WriteMode::Direct, IoBackend::Epoll);
    let ids = PARTITIONS
        .iter()
        .map(|(topic, index)| support::create(&store, topic, *index))
        .collect();
    (store, ids)
}

/// Append a mix of batches to `leader`: plain ones of varied sizes, an
/// idempotent producer's, and a transaction ended by a commit marker.
async fn write_round(leader: &ShardStore, ids: &[PartitionId], round: usize, sequence: &mut i32) {
    for (slot, &id) in ids.iter().enumerate() {
        let value_bytes = 200 + (round * 37 + slot * 911) % 9000;
        let bytes = support::batch(&format!("r{round}-p{slot}"), 5, value_bytes);
        leader
            .append(id, support::validated(&bytes), Durability::Buffered)
            .await
            .expect("appended");
    }
    let value = format!("idempotent-{round}").into_bytes();
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder
        .producer(PRODUCER, EPOCH, *sequence)
        .push(RecordSpec {
            value: Some(&value),
            ..RecordSpec::default()
        });
    if round % 4 == 3 {
        builder.transactional();
    }
    *sequence += 1;
    leader
        .append(
            ids[0],
            support::validated(&builder.build()),
            Durability::Buffered,
        )
        .await
        .expect("producer batch appended");
    if round % 4 == 3 {
        let marker = TxnMarker {
            kind: MarkerKind::Commit,
            coordinator_epoch: 0,
        };
        leader
            .append_marker(ids[0], PRODUCER, EPOCH, &marker, Durability::Buffered)
            .await
            .expect("marker appended");
    }
}

/// Copy everything `leader` has written that `follower` lacks, in reads of
/// at most `chunk` bytes; returns how many reads it took.
async fn catch_up(leader: &ShardStore, follower: &ShardStore, chunk: usize) -> usize {
    let mut reads = 0;
    loop {
        let from = follower.log_ends().0;
        let read = leader.read_log(from, chunk).expect("leader reads its log");
        if read.frames.is_empty() {
            return reads;
        }
        assert!(
            read.frames.len() <= chunk || frame_len(&read.frames) == read.frames.len(),
            "at most `chunk` bytes, or one bigger frame alone"
        );
        let end = follower
            .append_replicated(&read)
            .await
            .expect("the follower takes the copy");
        assert_eq!(end, read.end());
        reads += 1;
    }
}

/// Everything a consumer or producer sees of the partitions, and where the
/// log's segments begin.
fn observed(store: &ShardStore, ids: &[PartitionId]) -> Vec<String> {
    let mut seen = Vec::new();
    for &id in ids {
        let offsets = store.offsets(id).expect("partition exists");
        seen.push(format!(
            "{id}: next {} log start {} lso {}",
            offsets.next_offset.0, offsets.log_start_offset.0, offsets.last_stable_offset.0
        ));
        for (base, bytes) in support::read_all(store, id, Offset(0)) {
            seen.push(format!(
                "{id} @{}: {} bytes {:08x}",
                base.0,
                bytes.len(),
                crc(&bytes)
            ));
        }
        seen.push(format!("{id} producers {:?}", store.producers(id)));
    }
    seen
}

fn crc(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("shard-0").join("log"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".log"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_follower_copying_the_log_frame_for_frame_has_the_leaders_offsets_producers_and_segments() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let (leader, ids) = store_with_partitions(leader_dir.path());
        let (follower, follower_ids) = store_with_partitions(follower_dir.path());
        assert_eq!(ids, follower_ids);
        let mut sequence = 0;
        // Rounds of writes, each copied in small reads while the leader's
        // log rolls over several 256 KiB segments.
        let mut reads = 0;
        for round in 0..60 {
            write_round(&leader, &ids, round, &mut sequence).await;
            leader.sync().await.expect("leader synced");
            reads += catch_up(&leader, &follower, 20 * 1024).await;
        }
        assert!(reads > 60, "small reads: {reads}");
        follower.sync().await.expect("follower synced");
        assert_eq!(follower.log_ends().0, leader.log_ends().0);
        let segments = segment_files(leader_dir.path());
        assert!(segments.len() >= 4, "the log rolled: {segments:?}");
        assert_eq!(segment_files(follower_dir.path()), segments);
        let expected = observed(&leader, &ids);
        assert_eq!(observed(&follower, &ids), expected);
        assert!(
            expected
                .iter()
                .any(|line| line.contains("producers Some([ProducerSummary")),
            "{expected:?}"
        );
        // Recovery rebuilds the same state from the copied files.
        support::shutdown(&follower).await;
        drop(follower);
        let follower = support::open(follower_dir.path(), WriteMode::Direct, IoBackend::Epoll);
        assert_eq!(observed(&follower, &ids), expected);
        // And it goes on following from where it stopped.
        write_round(&leader, &ids, 60, &mut sequence).await;
        leader.sync().await.expect("leader synced");
        catch_up(&leader, &follower, 1 << 20).await;
        follower.sync().await.expect("follower synced");
        assert_eq!(observed(&follower, &ids), observed(&leader, &ids));
        support::shutdown(&follower).await;
        support::shutdown(&leader).await;
    });
}

#[test]
fn a_copy_that_does_not_continue_the_followers_log_is_refused_and_changes_nothing() {
    let (leader_dir, follower_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let (leader, ids) = store_with_partitions(leader_dir.path());
        let (follower, _) = store_with_partitions(follower_dir.path());
        let mut sequence = 0;
        for round in 0..3 {
            write_round(&leader, &ids, round, &mut sequence).await;
        }
        leader.sync().await.expect("leader synced");
        let whole = leader.read_log(LogPosition::ZERO, 1 << 20).unwrap();
        let first_len = frame_len(&whole.frames);
        let second = LogRead {
            position: whole.position.plus(first_len as u64),
            frames: whole.frames[first_len..].to_vec(),
        };
        let before = observed(&follower, &ids);
        // Frames that start past the follower's end: a gap.
        let refused = follower.append_replicated(&second).await;
        assert!(
            matches!(refused, Err(ReplicaAppendError::Gap { .. })),
            "{refused:?}"
        );
        // A damaged byte in a batch: refused before anything is stored.
        let refused = follower
            .append_replicated(&LogRead {
                position: LogPosition::ZERO,
                frames: {
                    let mut first = whole.frames[..first_len].to_vec();
                    first[first_len - 1] ^= 0x40;
                    first
                },
            })
            .await;
        assert!(
            matches!(refused, Err(ReplicaAppendError::BadFrame { .. })),
            "{refused:?}"
        );
        assert_eq!(observed(&follower, &ids), before);
        // A follower whose partition took a batch of its own: the leader's
        // offsets do not follow its partition's, so the logs diverged.
        let own = support::batch("not-from-the-leader", 1, 10);
        follower
            .append(ids[0], support::validated(&own), Durability::Fsynced)
            .await
            .unwrap();
        let diverged = follower
            .append_replicated(&LogRead {
                position: follower.log_ends().0,
                frames: whole.frames[..first_len].to_vec(),
            })
            .await;
        assert!(
            matches!(diverged, Err(ReplicaAppendError::OffsetMismatch { .. })),
            "{diverged:?}"
        );
        // Reads outside the leader's log are refused.
        let past = leader.read_log(leader.log_ends().1.plus(1), 1024);
        assert!(past.is_err(), "{past:?}");
        let inside = leader.read_log(LogPosition(1), 1024);
        assert!(inside.is_err(), "no frame starts at 1: {inside:?}");
        support::shutdown(&follower).await;
        support::shutdown(&leader).await;
    });
}

/// The length of the frame at the start of `frames` (its header's
/// little-endian payload length at bytes 8..12, plus the 20-byte header).
fn frame_len(frames: &[u8]) -> usize {
    let payload = u32::from_le_bytes(frames[8..12].try_into().unwrap()) as usize;
    20 + payload
}

/// Issue 16: a cluster leader's high watermark. Written and even durable
/// batches stay invisible past the store's visible limit (what the in-sync
/// followers hold), become visible as the limit advances, and all of them
/// once it is lifted; the limit never moves back.
#[test]
fn batches_past_the_visible_limit_stay_invisible_until_it_advances() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let (store, ids) = store_with_partitions(dir.path());
        let id = ids[0];
        let high = |store: &ShardStore| store.offsets(id).unwrap().high_watermark.0;
        let first = support::batch("visible", 2, 10);
        store
            .append(id, support::validated(&first), Durability::Fsynced)
            .await
            .unwrap();
        let visible_end = store.log_ends().0;
        store.set_visible_limit(visible_end);
        let mut ends = Vec::new();
        for round in 0..3 {
            let bytes = support::batch(&format!("held-{round}"), 2, 10);
            let receipt = store
                .append(id, support::validated(&bytes), Durability::Fsynced)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
            ends.push(receipt.end());
        }
        assert_eq!(high(&store), 2, "durable but past the limit: invisible");
        // Between the high watermark and the log end: nothing yet, not out
        // of range (a new leader's high watermark may lag the one its
        // predecessor showed consumers); past the log end: out of range.
        let read = |offset: i64| store.read(id, Offset(offset), 1 << 20);
        assert!(read(4).unwrap().batches.is_empty());
        assert!(read(8).unwrap().batches.is_empty());
        assert!(matches!(
            read(9),
            Err(sluice::storage::ReadError::OffsetOutOfRange { .. })
        ));
        store.set_visible_limit(ends[0]);
        assert_eq!(high(&store), 4);
        store.set_visible_limit(visible_end);
        assert_eq!(high(&store), 4, "the limit never moves back");
        store.clear_visible_limit();
        assert_eq!(high(&store), 8);
        assert_eq!(support::read_all(&store, id, Offset(0)).len(), 4);
        support::shutdown(&store).await;
    });
}

/// Found by issue 16's breaker trial: a copy applies its leader's log
/// start (DeleteRecords up to the high watermark) while its own high
/// watermark still lags behind it. The log start never passes the high
/// watermark (the records below it are gone), so the records that become
/// visible later do not break the store's invariants (it aborted).
#[test]
fn a_log_start_past_the_high_watermark_raises_it() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let (store, ids) = store_with_partitions(dir.path());
        let id = ids[0];
        store.set_visible_limit(LogPosition::ZERO);
        for round in 0..3 {
            let bytes = support::batch(&format!("held-{round}"), 2, 10);
            let receipt = store
                .append(id, support::validated(&bytes), Durability::Fsynced)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
        }
        let offsets = store.offsets(id).unwrap();
        assert_eq!((offsets.high_watermark.0, offsets.next_offset.0), (0, 6));
        store.advance_log_start(id, Offset(4)).unwrap();
        let offsets = store.offsets(id).unwrap();
        assert_eq!(
            (offsets.log_start_offset.0, offsets.high_watermark.0),
            (4, 4)
        );
        store.clear_visible_limit();
        assert_eq!(store.offsets(id).unwrap().high_watermark.0, 6);
        assert_eq!(support::read_all(&store, id, Offset(4)).len(), 1);
        support::shutdown(&store).await;
    });
}

/// A failover as the storage sees it: the old leader's log holds a tail the
/// new leader never copied, the new leader writes on at a new epoch, and
/// the old leader, cut back where its epoch ends in the new leader's
/// history, copies the new leader's log and ends up with the same log,
/// offsets and producer state (before and after its recovery).
#[test]
fn a_diverged_copy_cut_where_its_epoch_ends_follows_the_new_leader_to_the_same_log() {
    use sluice::storage::leader_epochs::LeaderEpochs;
    use sluice::storage::truncate::truncate_closed;
    let (old_dir, new_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let (old_leader, ids) = store_with_partitions(old_dir.path());
        let (new_leader, _) = store_with_partitions(new_dir.path());
        let mut sequence = 0;
        for round in 0..12 {
            write_round(&old_leader, &ids, round, &mut sequence).await;
            old_leader.sync().await.expect("synced");
            catch_up(&old_leader, &new_leader, 64 * 1024).await;
        }
        new_leader.sync().await.expect("synced");
        // The old leader writes a tail nobody copies, then is replaced.
        let mut old_sequence = sequence;
        for round in 12..15 {
            write_round(&old_leader, &ids, round, &mut old_sequence).await;
        }
        old_leader.sync().await.expect("synced");
        let mut history = LeaderEpochs::default();
        let took_over = new_leader.log_ends().0;
        history.begin(1, took_over);
        for round in 100..104 {
            write_round(&new_leader, &ids, round, &mut sequence).await;
        }
        new_leader.sync().await.expect("synced");
        assert!(
            old_leader.log_ends().0 > took_over,
            "the old leader diverged"
        );
        let cut = history.end_of(0, new_leader.log_ends().0);
        assert_eq!(cut, took_over);

        let options = old_leader.options().clone();
        support::shutdown(&old_leader).await;
        drop(old_leader);
        let truncated = truncate_closed(&options, cut).expect("cut");
        assert!(truncated.checkpoint_removed, "{truncated:?}");
        let old_leader = ShardStore::open(options.clone()).expect("reopens");
        assert_eq!(old_leader.log_ends().0, cut, "recovery ends at the cut");
        catch_up(&new_leader, &old_leader, 64 * 1024).await;
        old_leader.sync().await.expect("synced");
        let expected = observed(&new_leader, &ids);
        assert_eq!(observed(&old_leader, &ids), expected);
        assert_eq!(segment_files(old_dir.path()), segment_files(new_dir.path()));
        support::shutdown(&old_leader).await;
        drop(old_leader);
        let old_leader = ShardStore::open(options).expect("reopens");
        assert_eq!(observed(&old_leader, &ids), expected);
        support::shutdown(&old_leader).await;
        support::shutdown(&new_leader).await;
    });
}

/// Issue 16: a copy that ends before its leader's log start is emptied and
/// started again there (`truncate::restart_closed`): it opens as an empty
/// log at that position, each partition continuing from the leader's
/// offset; a process killed right after the restart was written down
/// finishes it when the store opens (mutation: no finishing at open →
/// the old log and offsets come back).
#[test]
fn a_copy_started_again_at_its_leaders_log_start_opens_empty_there_even_after_a_crash_midway() {
    use sluice::storage::truncate::{LogRestart, RESTART_FILE, restart_closed};
    let (dir, crashed_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start = LogPosition(3 << 20);
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let (store, ids) = store_with_partitions(dir.path());
        let mut sequence = 0;
        for round in 0..6 {
            write_round(&store, &ids, round, &mut sequence).await;
        }
        store.sync().await.expect("synced");
        assert!(store.offsets(ids[0]).unwrap().next_offset > Offset(0));
        let options = store.options().clone();
        support::shutdown(&store).await;
        drop(store);
        let copied = std::process::Command::new("cp")
            .args(["-a", "--", &format!("{}/.", dir.path().display())])
            .arg(crashed_dir.path())
            .status()
            .unwrap();
        assert!(copied.success());
        let offsets = vec![
            (ids[0], Offset(500)),
            (ids[1], Offset(7)),
            (ids[2], Offset(0)),
        ];
        let check = |options: sluice::storage::StoreOptions| {
            let ids = ids.clone();
            async move {
                let store = ShardStore::open(options).expect("reopens");
                assert_eq!(store.log_start(), start);
                assert_eq!(store.log_ends().0, start, "empty");
                let next: Vec<(Offset, Offset)> = ids
                    .iter()
                    .map(|&id| {
                        let offsets = store.offsets(id).unwrap();
                        (offsets.log_start_offset, offsets.next_offset)
                    })
                    .collect();
                assert_eq!(
                    next,
                    [
                        (Offset(500), Offset(500)),
                        (Offset(7), Offset(7)),
                        (Offset(0), Offset(0))
                    ]
                );
                let bytes = support::batch("after", 3, 100);
                let receipt = store
                    .append(ids[0], support::validated(&bytes), Durability::Buffered)
                    .await
                    .expect("appended");
                assert_eq!(receipt.base_offset, Offset(500));
                support::shutdown(&store).await;
            }
        };
        restart_closed(
            &options,
            &LogRestart {
                start,
                offsets: offsets.clone(),
            },
        )
        .expect("restarted");
        check(options.clone()).await;
        // Killed right after writing the restart down.
        let crashed = sluice::storage::StoreOptions {
            data_dir: crashed_dir.path().to_owned(),
            ..options
        };
        let record = format!(
            "{{\"start\":{},\"offsets\":[{}]}}",
            start.0,
            offsets
                .iter()
                .map(|(id, offset)| format!("[{},{}]", id.0, offset.0))
                .collect::<Vec<_>>()
                .join(",")
        );
        std::fs::write(
            crashed_dir.path().join("shard-0").join(RESTART_FILE),
            record,
        )
        .unwrap();
        check(crashed).await;
    });
}
