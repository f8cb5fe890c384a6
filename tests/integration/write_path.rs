//! When an append is acknowledged and what forces its fdatasync (issue 12,
//! found by reading `storage/write_path.rs`): a batch that is durable is
//! acknowledged even if a later write poisons the log, and a batch that had
//! to wait for buffer space counts its records once towards
//! `flush.messages`.

use std::path::Path;
use std::rc::Rc;

use sluice::config::WriteMode;
use sluice::io::IoBackend;
use sluice::storage::{AppendError, Durability, ShardStore, StoreHooks};

use crate::sim_device::SimDevice;
use crate::support::{self, batch, validated};

fn open_on(dir: &Path, device: &SimDevice) -> Rc<ShardStore> {
    let options = support::options(
        dir,
        support::small_storage(WriteMode::Direct),
        IoBackend::Epoll,
    );
    let hooks = StoreHooks {
        log_io: Some(device.log_io()),
        disk_probe: None,
    };
    ShardStore::open_with(options, hooks).unwrap()
}

/// The producer of a durable acks=all batch that looks only after a later
/// write failed used to get an error, and would send the batch again: a
/// duplicate.
#[test]
fn a_durable_batch_is_acknowledged_after_a_later_write_poisons_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let device = SimDevice::new(5);
        let store = open_on(dir.path(), &device);
        let id = support::create(&store, "acked", 0);
        let first = batch("durable", 2, 300);
        let durable = store
            .append(id, validated(&first), Durability::Fsynced)
            .await
            .unwrap();
        store.sync().await.unwrap();
        device.fail_write_after(1);
        let second = batch("doomed", 1, 300);
        let doomed = store
            .append(id, validated(&second), Durability::Fsynced)
            .await
            .unwrap();
        let error = store.wait(&doomed).await.unwrap_err();
        assert!(matches!(error, AppendError::Poisoned { .. }), "{error}");
        // Only now does the first batch's producer look.
        store
            .wait(&durable)
            .await
            .expect("a durable batch is acknowledged, poisoned log or not");
    });
}

/// An append that waits for buffer space tries again; its records used to
/// be counted at each try, forcing an fdatasync `flush.messages` did not ask
/// for yet.
#[test]
fn records_of_an_append_that_waited_for_buffers_count_once_towards_flush_messages() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let device = SimDevice::new(9);
        let store = open_on(dir.path(), &device);
        let id = support::create(&store, "counted", 0);
        let mut config = support::default_partition_config();
        config.flush_ms = 3_600_000;
        config.flush_messages = 1000;
        store.set_partition_config(id, config).unwrap();
        // 9 batches of 100 records, ~60 KiB each: 540 KiB against 256 KiB
        // of write buffers, so later appends wait for space and retry.
        let batches: Vec<Vec<u8>> = (0..9)
            .map(|seq| batch(&format!("b{seq}"), 100, 560))
            .collect();
        let appends = batches.iter().map(|bytes| {
            let store = Rc::clone(&store);
            let bytes = bytes.clone();
            compio::runtime::spawn(async move {
                let receipt = store
                    .append(id, validated(&bytes), Durability::Written)
                    .await
                    .unwrap();
                store.wait(&receipt).await.unwrap();
            })
        });
        for append in appends.collect::<Vec<_>>() {
            append.await.unwrap();
        }
        assert_eq!(
            store.stats().fsyncs,
            0,
            "900 records under flush.messages = 1000 forced an fdatasync"
        );
        // The 1000th record does force one.
        let last = batch("last", 100, 100);
        let receipt = store
            .append(id, validated(&last), Durability::Written)
            .await
            .unwrap();
        store.wait(&receipt).await.unwrap();
        assert!(store.stats().fsyncs >= 1);
    });
}
