//! Durability under simulated power loss, and poisoning after I/O errors.
//!
//! `kill -9` (crash.rs) cannot tell written from fsynced data: the page cache
//! survives a process crash. Here the commit log runs on [`SimDevice`], which
//! loses or keeps each unsynced sector at random when power is cut, so an
//! acknowledgement given before its covering fdatasync would show up as a
//! missing or torn batch.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use sluice::config::WriteMode;
use sluice::ids::{Offset, PartitionId};
use sluice::io::IoBackend;
use sluice::storage::{AppendError, Durability, ShardStore};

use crate::sim_device::SimDevice;
use crate::support::{self, batch, validated};

const PARTITIONS: u32 = 2;

fn open_on(dir: &Path, device: &SimDevice) -> Rc<ShardStore> {
    device.open_store(dir)
}

fn partitions(store: &ShardStore) -> Vec<PartitionId> {
    (0..PARTITIONS)
        .map(|index| {
            store
                .partition_id("power", index)
                .unwrap_or_else(|| support::create(store, "power", index))
        })
        .collect()
}

type Acks = Rc<RefCell<Vec<(usize, Offset, String)>>>;

async fn produce(
    store: Rc<ShardStore>,
    ids: Vec<PartitionId>,
    acks: Acks,
    task: usize,
    round: u64,
    fsync_stop: Rc<Cell<bool>>,
) {
    for seq in 0.. {
        if task.is_multiple_of(2) && fsync_stop.get() {
            return;
        }
        let partition = (task + seq) % ids.len();
        let label = format!("p{round}t{task}s{seq}");
        let bytes = batch(&label, 1 + seq % 3, (seq * 977 + task * 131) % 5000);
        let durability = if task.is_multiple_of(2) {
            Durability::Fsynced
        } else {
            Durability::Written
        };
        let Ok(receipt) = store
            .append(ids[partition], validated(&bytes), durability)
            .await
        else {
            return;
        };
        if store.wait(&receipt).await.is_err() {
            return;
        }
        if durability == Durability::Fsynced {
            acks.borrow_mut()
                .push((partition, receipt.base_offset, label));
        }
    }
}

fn check_acks(store: &ShardStore, ids: &[PartitionId], acks: &[(usize, Offset, String)]) {
    let served: Vec<Vec<(Offset, Vec<u8>)>> = ids
        .iter()
        .map(|&id| support::read_all(store, id, store.offsets(id).unwrap().log_start_offset))
        .collect();
    for (partition, offset, label) in acks {
        let found = served[*partition]
            .iter()
            .find(|(base, _)| base == offset)
            .unwrap_or_else(|| panic!("fsynced batch {label} at {offset} lost in a power cut"));
        let marker = format!("{label}-0");
        assert!(
            found
                .1
                .windows(marker.len())
                .any(|window| window == marker.as_bytes()),
            "offset {offset} holds another batch than {label}"
        );
    }
}

#[test]
fn fsynced_batches_survive_power_loss_of_unsynced_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let acks: Acks = Rc::new(RefCell::new(Vec::new()));
    let mut total_reverted = 0;
    for round in 0..16u64 {
        let device = SimDevice::new(round * 7919 + 1);
        let runtime = support::runtime(IoBackend::Epoll);
        runtime.block_on(async {
            let store = open_on(dir.path(), &device);
            let ids = partitions(&store);
            check_acks(&store, &ids, &acks.borrow());
            let fsync_stop = Rc::new(Cell::new(false));
            for task in 0..4 {
                compio::runtime::spawn(produce(
                    Rc::clone(&store),
                    ids.clone(),
                    Rc::clone(&acks),
                    task,
                    round,
                    Rc::clone(&fsync_stop),
                ))
                .detach();
            }
            compio::time::sleep(Duration::from_millis(30 + round * 7)).await;
            // On odd rounds only acks=1 producers run for a moment before the
            // cut: their writes are not fsynced (flush.ms is 1 s), so there
            // are unsynced sectors to lose. Even rounds cut mid-stream.
            if round % 2 == 1 {
                fsync_stop.set(true);
                compio::time::sleep(Duration::from_millis(10)).await;
            }
            total_reverted += device.power_cut();
        });
        drop(runtime);
    }
    assert!(
        acks.borrow().len() > 50,
        "too few acknowledged appends: {}",
        acks.borrow().len()
    );
    assert!(
        total_reverted > 0,
        "the power cuts never lost an unsynced sector"
    );
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let device = SimDevice::new(3);
        let store = open_on(dir.path(), &device);
        let ids = partitions(&store);
        check_acks(&store, &ids, &acks.borrow());
        support::shutdown(&store).await;
    });
}

/// Poison the log with `inject`, check nothing more is acknowledged, then
/// restart on a healthy device and check the data acknowledged before.
fn poison_then_recover(inject: impl Fn(&SimDevice)) {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    let acked = runtime.block_on(async {
        let device = SimDevice::new(11);
        let store = open_on(dir.path(), &device);
        let ids = partitions(&store);
        let mut acked = Vec::new();
        for seq in 0..20 {
            let label = format!("before{seq}");
            let bytes = batch(&label, 2, 300);
            let receipt = store
                .append(ids[0], validated(&bytes), Durability::Fsynced)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
            acked.push((0, receipt.base_offset, label));
        }
        inject(&device);
        let bytes = batch("doomed", 1, 100);
        let receipt = store
            .append(ids[0], validated(&bytes), Durability::Fsynced)
            .await
            .unwrap();
        let error = store.wait(&receipt).await.unwrap_err();
        assert!(matches!(error, AppendError::Poisoned { .. }), "{error}");
        assert!(
            error.to_string().contains("EIO") || error.to_string().contains("Input/output"),
            "{error}"
        );
        let later = store
            .append(ids[0], validated(&bytes), Durability::Written)
            .await
            .unwrap_err();
        assert!(
            matches!(later, AppendError::Poisoned { .. }),
            "a poisoned log accepts nothing: {later}"
        );
        assert!(!later.is_retriable());
        acked
    });
    drop(runtime);
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, support::native_backend());
        let ids = partitions(&store);
        check_acks(&store, &ids, &acked);
        let bytes = batch("after", 1, 100);
        let receipt = store
            .append(ids[0], validated(&bytes), Durability::Fsynced)
            .await
            .unwrap();
        store.wait(&receipt).await.unwrap();
        support::shutdown(&store).await;
    });
}

#[test]
fn failed_fsync_poisons_the_log_until_restart() {
    poison_then_recover(|device| device.fail_sync_after(1));
}

#[test]
fn failed_write_poisons_the_log_until_restart() {
    poison_then_recover(|device| device.fail_write_after(1));
}

/// fdatasync is per file. After a roll, an fdatasync of the new segment
/// must not count the previous segment's unsynced writes as durable: an
/// acks=all append may be acknowledged only once everything before it is
/// fsynced in its own file. Checked at the moment of the acknowledgement,
/// over many completion orders, then across a power cut after a checkpoint
/// (which must not vouch for torn frames).
#[test]
fn fdatasync_of_a_new_segment_does_not_make_the_previous_one_durable() {
    for seed in 0..24 {
        let dir = tempfile::tempdir().unwrap();
        let first_segment = dir.path().join("shard-0/log/00000000000000000000.log");
        let runtime = support::runtime(IoBackend::Epoll);
        runtime.block_on(async {
            let device = SimDevice::new(seed * 31 + 7);
            let store = open_on(dir.path(), &device);
            let id = partitions(&store)[0];
            let mut config = support::default_partition_config();
            config.flush_ms = 3_600_000; // acks=1 data: never forced to disk here
            store.set_partition_config(id, config).unwrap();
            // ~300 KiB of acks=1 data: the 256 KiB first segment fills and rolls.
            for seq in 0..100 {
                let bytes = batch(&format!("loose{seq}"), 1, 3000);
                let receipt = store
                    .append(id, validated(&bytes), Durability::Written)
                    .await
                    .unwrap();
                store.wait(&receipt).await.unwrap();
            }
            assert!(
                store.log_ends().1.0 > 256 * 1024,
                "the log rolled into a second segment"
            );
            assert!(device.unsynced_sectors(&first_segment) > 0);
            let bytes = batch("anchor", 1, 100);
            let receipt = store
                .append(id, validated(&bytes), Durability::Fsynced)
                .await
                .unwrap();
            compio::time::timeout(Duration::from_secs(10), store.wait(&receipt))
                .await
                .expect("the previous segment is never fsynced: the ack never comes")
                .unwrap();
            assert_eq!(
                device.unsynced_sectors(&first_segment),
                0,
                "seed {seed}: acks=all acknowledged while the previous segment was not fsynced"
            );
            store.checkpoint().await.unwrap();
            device.power_cut();
        });
        drop(runtime);
        let runtime = support::runtime(IoBackend::Epoll);
        runtime.block_on(async {
            let store = open_on(dir.path(), &SimDevice::new(seed));
            let id = partitions(&store)[0];
            let served = support::read_all(&store, id, Offset(0)); // panics on a torn batch
            assert_eq!(
                served.len(),
                101,
                "everything before the acked batch is durable"
            );
            assert!(served[100].1.windows(8).any(|window| window == b"anchor-0"));
            support::shutdown(&store).await;
        });
    }
}
