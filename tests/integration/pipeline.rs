//! Deep pipelines of large appends with production-sized buffers: every
//! append completes (regression test for a stall found by the benchmarks).

use std::collections::VecDeque;
use std::time::Duration;

use sluice::config::{RetentionConfig, StorageConfig, WriteMode};
use sluice::ids::ShardId;
use sluice::storage::{Durability, ShardStore, StoreOptions};

use crate::support::{self, batch, validated};

fn run(write_mode: WriteMode, durability: Durability, in_flight: usize, batches: usize) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let options = StoreOptions {
            shard: ShardId(0),
            data_dir: dir.path().to_owned(),
            storage: StorageConfig {
                write_mode,
                segment_bytes: 64 * 1024 * 1024,
                ..StorageConfig::default()
            },
            retention: RetentionConfig::default(),
            backend: support::native_backend(),
        };
        let store = ShardStore::open(options).unwrap();
        let id = support::create(&store, "deep", 0);
        let bytes = batch("deep", 1000, 1000);
        let work = async {
            let mut receipts = VecDeque::new();
            for _ in 0..batches {
                receipts.push_back(
                    store
                        .append(id, validated(&bytes), durability)
                        .await
                        .unwrap(),
                );
                if receipts.len() >= in_flight {
                    store.wait(&receipts.pop_front().unwrap()).await.unwrap();
                }
            }
            for receipt in &receipts {
                store.wait(receipt).await.unwrap();
            }
            store.sync().await.unwrap();
        };
        compio::time::timeout(Duration::from_secs(60), work)
            .await
            .expect("appends stalled");
        support::shutdown(&store).await;
    });
}

#[test]
fn deep_pipeline_of_megabyte_batches_never_stalls() {
    run(WriteMode::Direct, Durability::Written, 64, 300);
}

#[test]
fn deep_pipeline_of_megabyte_batches_never_stalls_with_fsync() {
    run(WriteMode::Direct, Durability::Fsynced, 4, 200);
}

#[test]
fn shutdown_completes_after_a_checkpoint_is_cancelled_midway() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let id = support::create(&store, "cancel", 0);
        for seq in 0..50 {
            let bytes = batch(&format!("c{seq}"), 1, 100);
            let receipt = store
                .append(id, validated(&bytes), Durability::Fsynced)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
        }
        // Start a checkpoint, let it reach its blocking fsync, cancel it.
        let checkpoint = compio::runtime::spawn({
            let store = std::rc::Rc::clone(&store);
            async move { store.checkpoint().await }
        });
        for _ in 0..3 {
            sluice::shard::local_sync::yield_now().await;
        }
        checkpoint.cancel().await;
        compio::time::timeout(Duration::from_secs(20), store.shutdown())
            .await
            .expect("shutdown hung after a cancelled checkpoint")
            .unwrap();
    });
}
