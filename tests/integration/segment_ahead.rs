//! Issue 19 item 3: the next commit-log segment is made ahead, off the
//! shard thread (creating, sizing and reserving the file and fsyncing the
//! directory took 20–40 ms of the shard at every roll on a slow disk).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::ids::{Offset, PartitionId};
use sluice::storage::{Durability, ShardStore};

use crate::support::{self, KIB, validated};

const SEGMENT_BYTES: u64 = 256 * KIB;

fn segment_file(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("shard-0/log/{base:020}.log"))
}

async fn append(store: &ShardStore, id: PartitionId, seq: usize, kept: &mut Vec<Vec<u8>>) {
    let bytes = support::batch(&format!("a{seq}"), 2, 1000);
    let receipt = store
        .append(id, validated(&bytes), Durability::Written)
        .await
        .unwrap();
    store.wait(&receipt).await.unwrap();
    kept.push(bytes);
}

/// Wait (10 s at most) for the flusher to make segment file `path` ahead.
async fn made_ahead(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{path:?} was never made ahead");
        compio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Once the active segment is half written the next one appears on disk
/// before any roll, and the roll takes that very file (same inode); a
/// restart with one made ahead and unused drops it, and every batch reads
/// back and appends roll on (mutation: no segments made ahead fails "never made
/// ahead"; made in line at the roll, the inode differs).
#[test]
fn the_next_segment_is_made_ahead_and_the_roll_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let storage = support::small_storage(sluice::config::WriteMode::Direct);
    assert_eq!(storage.segment_bytes, SEGMENT_BYTES);
    let runtime = support::runtime(support::native_backend());
    let (id, kept) = runtime.block_on(async {
        let options = support::options(dir.path(), storage.clone(), support::native_backend());
        let store = ShardStore::open(options).unwrap();
        let id = support::create(&store, "ahead", 0);
        let mut kept = Vec::new();
        while store.log_ends().0.0 < SEGMENT_BYTES * 6 / 10 {
            append(&store, id, kept.len(), &mut kept).await;
        }
        let next = segment_file(dir.path(), SEGMENT_BYTES);
        made_ahead(&next).await;
        assert_eq!(store.gauges().segments, 1, "made ahead, before the roll");
        let inode = std::fs::metadata(&next).unwrap().ino();
        while store.gauges().segments < 2 {
            append(&store, id, kept.len(), &mut kept).await;
        }
        assert_eq!(
            std::fs::metadata(&next).unwrap().ino(),
            inode,
            "the roll took the segment made ahead"
        );
        // Past half of the second one: the third is made ahead, then the
        // store stops without using it.
        while store.log_ends().0.0 < SEGMENT_BYTES + SEGMENT_BYTES * 6 / 10 {
            append(&store, id, kept.len(), &mut kept).await;
        }
        let third = segment_file(dir.path(), 2 * SEGMENT_BYTES);
        made_ahead(&third).await;
        support::shutdown(&store).await;
        (id, kept)
    });
    drop(runtime);
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let options = support::options(dir.path(), storage, support::native_backend());
        let store = ShardStore::open(options).unwrap();
        assert_eq!(
            store.gauges().segments,
            2,
            "the unused one is not a segment"
        );
        let mut kept = kept;
        while store.gauges().segments < 4 {
            append(&store, id, kept.len(), &mut kept).await;
        }
        let read = support::read_all(&store, id, Offset(0));
        assert_eq!(read.len(), kept.len());
        for ((offset, bytes), original) in read.iter().zip(&kept) {
            assert_eq!(
                bytes,
                &support::stored_form(original, *offset),
                "batch at {offset:?} reads back as appended"
            );
        }
        support::shutdown(&store).await;
    });
}
