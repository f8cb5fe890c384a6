//! When an append is acknowledged, what forces its fdatasync, and what a
//! failed segment roll does (issue 12, found by reading
//! `storage/write_path.rs` and `storage/commit_log.rs`): a batch that is
//! durable is acknowledged even if a later write poisons the log; a batch
//! that had to wait for buffer space counts its records once towards
//! `flush.messages`; a roll whose directory fsync fails poisons the log and
//! leaves no segment file behind.

use std::path::Path;
use std::rc::Rc;

use sluice::io::IoBackend;
use sluice::storage::{AppendError, Durability, ShardStore};

use crate::sim_device::SimDevice;
use crate::support::{self, batch, validated};

fn open_on(dir: &Path, device: &SimDevice) -> Rc<ShardStore> {
    device.open_store(dir)
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

/// Issue 19 item 4: sync by bytes as well as by time. With `flush.ms` an
/// hour and `flush.messages` out of reach, an fdatasync still comes once
/// `storage.sync_interval_bytes` are written and not durable, so the
/// durable end follows the append end within that many bytes (without it,
/// nothing here would be fsynced for an hour: the test above).
#[test]
fn an_fdatasync_is_forced_every_sync_interval_bytes_whatever_flush_ms_says() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let mut storage = support::small_storage(sluice::config::WriteMode::Direct);
        storage.sync_interval_bytes = 64 * 1024;
        let options = support::options(dir.path(), storage, IoBackend::Epoll);
        let store = ShardStore::open(options).unwrap();
        let id = support::create(&store, "by-bytes", 0);
        let mut config = support::default_partition_config();
        config.flush_ms = 3_600_000;
        config.flush_messages = u64::MAX;
        store.set_partition_config(id, config).unwrap();
        // 12 batches of ~30 KiB: 360 KiB, more than five intervals.
        for seq in 0..12 {
            let bytes = batch(&format!("b{seq}"), 50, 560);
            let receipt = store
                .append(id, validated(&bytes), Durability::Written)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (appended, _, durable) = store.log_ends();
            if appended.0 - durable.0 < 64 * 1024 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "durable end {durable} stayed more than 64 KiB behind the append end {appended}"
            );
            compio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            store.stats().fsyncs >= 4,
            "{} fdatasyncs for 360 KiB at one per 64 KiB",
            store.stats().fsyncs
        );
    });
}

/// Issue 19 item 5: an acks=all batch spanning several write chunks costs
/// one fdatasync, issued once all its chunks are written, not one linked to
/// each chunk's write (each is a flush of the device's write cache: two per
/// 1 MB batch doubled the acks=all tail). Mutation (an fdatasync linked to
/// every write while one is due): "93 fdatasyncs for 20 batches".
#[test]
fn an_acks_all_batch_spanning_several_chunks_costs_one_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let backend = support::native_backend();
    let runtime = support::runtime(backend);
    runtime.block_on(async {
        let storage = sluice::config::StorageConfig {
            // No roll: a roll leaves the previous segment its own fdatasync.
            segment_bytes: 4 << 20,
            ..support::small_storage(sluice::config::WriteMode::Direct)
        };
        let options = support::options(dir.path(), storage, backend);
        let store = ShardStore::open(options).unwrap();
        let id = support::create(&store, "spanning", 0);
        store.sync().await.unwrap();
        let (writes_before, fsyncs_before) = (store.stats().writes, store.stats().fsyncs);
        let batches = 20;
        for seq in 0..batches {
            // ~58 KiB: four 16 KiB chunks or five.
            let bytes = batch(&format!("b{seq}"), 100, 580);
            let receipt = store
                .append(id, validated(&bytes), Durability::Fsynced)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
        }
        let writes = store.stats().writes - writes_before;
        let fsyncs = store.stats().fsyncs - fsyncs_before;
        assert!(
            writes >= 4 * batches,
            "{writes} writes for {batches} batches"
        );
        assert_eq!(fsyncs, batches, "{fsyncs} fdatasyncs for {batches} batches");
        support::shutdown(&store).await;
    });
}

/// The new segment's directory entry was not fsynced: the file used to stay,
/// every later roll failed with EEXIST, and appends failed forever with a
/// "retriable" error on a log that was never poisoned.
#[test]
fn a_roll_whose_directory_fsync_fails_poisons_the_log_and_removes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let log_dir = dir.path().join("shard-0").join("log");
    let segments = || std::fs::read_dir(&log_dir).unwrap().count();
    let runtime = support::runtime(IoBackend::Epoll);
    let acked = runtime.block_on(async {
        let device = SimDevice::new(3);
        let store = open_on(dir.path(), &device);
        let id = support::create(&store, "rolled", 0);
        device.fail_dir_sync_after(1);
        let mut acked = 0;
        let error = loop {
            let bytes = batch("fill", 4, 1000);
            match store
                .append(id, validated(&bytes), Durability::Fsynced)
                .await
            {
                Ok(receipt) => {
                    store.wait(&receipt).await.unwrap();
                    acked += 4;
                }
                Err(error) => break error,
            }
        };
        assert!(matches!(error, AppendError::Poisoned { .. }), "{error}");
        assert!(!error.is_retriable(), "{error}");
        assert!(error.to_string().contains("directory"), "{error}");
        assert_eq!(segments(), 1, "the half-created segment is removed");
        let bytes = batch("after", 1, 10);
        let later = store
            .append(id, validated(&bytes), Durability::Written)
            .await
            .unwrap_err();
        assert!(matches!(later, AppendError::Poisoned { .. }), "{later}");
        acked
    });
    drop(runtime);
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let store = open_on(dir.path(), &SimDevice::new(4));
        let id = store.partition_id("rolled", 0).unwrap();
        let served: usize = support::read_all(&store, id, sluice::ids::Offset(0))
            .iter()
            .map(|(_, bytes)| {
                sluice::record_batch::BatchHeader::parse(bytes)
                    .unwrap()
                    .records_count as usize
            })
            .sum();
        assert_eq!(served, acked);
        let bytes = batch("restarted", 1, 10);
        let receipt = store
            .append(id, validated(&bytes), Durability::Fsynced)
            .await
            .unwrap();
        store.wait(&receipt).await.unwrap();
    });
}
