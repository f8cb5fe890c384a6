//! Transactions through the storage API (issue 13, step 3): transactional
//! batches hold the last stable offset back until their marker is
//! readable, read_committed reads stop there and list the aborted
//! transactions, and all of it is rebuilt from the log after a clean
//! restart (producer snapshot), a power cut (snapshot plus scan) and
//! without any snapshot (scan from the first segment).

use sluice::config::WriteMode;
use sluice::ids::{Offset, PartitionId};
use sluice::io::IoBackend;
use sluice::record_batch::control::{MarkerKind, TxnMarker};
use sluice::record_batch::{BatchBuilder, RecordSpec};
use sluice::storage::producer_state::ProducerError;
use sluice::storage::{AppendError, Durability, Isolation, ShardStore};

use crate::sim_device::SimDevice;
use crate::support;

const ABORTED: i64 = 100;
const COMMITTED: i64 = 200;
const OPEN: i64 = 300;

fn batch(producer: Option<(i64, i32)>, transactional: bool) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    if let Some((id, sequence)) = producer {
        builder.producer(id, 0, sequence);
    }
    if transactional {
        builder.transactional();
    }
    builder.push(RecordSpec {
        value: Some(b"value"),
        ..RecordSpec::default()
    });
    builder.build()
}

async fn append(store: &ShardStore, id: PartitionId, bytes: &[u8]) -> Result<Offset, AppendError> {
    let receipt = store
        .append(id, support::validated(bytes), Durability::Fsynced)
        .await?;
    store.wait(&receipt).await?;
    Ok(receipt.base_offset)
}

async fn end_txn(
    store: &ShardStore,
    id: PartitionId,
    producer: i64,
    epoch: i16,
    kind: MarkerKind,
) -> Result<Offset, AppendError> {
    let marker = TxnMarker {
        kind,
        coordinator_epoch: 0,
    };
    let receipt = store
        .append_marker(id, producer, epoch, &marker, Durability::Fsynced)
        .await?;
    store.wait(&receipt).await?;
    Ok(receipt.base_offset)
}

/// (base offsets of the batches read, aborted (producer, first offset)).
fn read(
    store: &ShardStore,
    id: PartitionId,
    from: i64,
    isolation: Isolation,
) -> (Vec<i64>, Option<Vec<(i64, i64)>>) {
    let result = store
        .read_isolated(id, Offset(from), 1 << 20, isolation)
        .expect("readable");
    (
        result
            .batches
            .iter()
            .map(|batch| batch.base_offset.0)
            .collect(),
        result.aborted.map(|aborted| {
            aborted
                .iter()
                .map(|txn| (txn.producer_id, txn.first_offset.0))
                .collect()
        }),
    )
}

/// The layout every reopen must find: 0 plain, 1 aborted txn, 2 plain, 3
/// its abort marker, 4 committed txn, 5 its commit marker, 6 an open txn, 7
/// plain.
fn assert_layout(store: &ShardStore, id: PartitionId) {
    let offsets = store.offsets(id).expect("partition");
    assert_eq!(offsets.high_watermark, Offset(8));
    assert_eq!(
        offsets.last_stable_offset,
        Offset(6),
        "the open transaction holds it"
    );
    assert_eq!(
        read(store, id, 0, Isolation::ReadUncommitted),
        ((0..8).collect(), None)
    );
    assert_eq!(
        read(store, id, 0, Isolation::ReadCommitted),
        ((0..6).collect(), Some(vec![(ABORTED, 1)]))
    );
    assert_eq!(
        read(store, id, 4, Isolation::ReadCommitted),
        ((4..6).collect(), Some(vec![])),
        "the abort marker is before the read"
    );
    assert_eq!(
        read(store, id, 2, Isolation::ReadCommitted),
        ((2..6).collect(), Some(vec![(ABORTED, 1)])),
        "a read after the aborted data but before its marker still lists it"
    );
    assert_eq!(
        read(store, id, 6, Isolation::ReadCommitted),
        (vec![], Some(vec![])),
        "nothing past the last stable offset"
    );
}

async fn write_layout(store: &ShardStore, id: PartitionId) {
    append(store, id, &batch(None, false)).await.unwrap();
    let first = append(store, id, &batch(Some((ABORTED, 0)), true))
        .await
        .unwrap();
    assert_eq!(first, Offset(1));
    assert_eq!(store.offsets(id).unwrap().last_stable_offset, Offset(1));
    append(store, id, &batch(None, false)).await.unwrap();
    end_txn(store, id, ABORTED, 0, MarkerKind::Abort)
        .await
        .unwrap();
    append(store, id, &batch(Some((COMMITTED, 0)), true))
        .await
        .unwrap();
    end_txn(store, id, COMMITTED, 0, MarkerKind::Commit)
        .await
        .unwrap();
    append(store, id, &batch(Some((OPEN, 0)), true))
        .await
        .unwrap();
    append(store, id, &batch(None, false)).await.unwrap();
}

/// After a reopen the producers' transaction state is back: the open
/// transaction's producer may not write outside it, an older epoch's
/// marker is refused, and its commit moves the last stable offset.
async fn assert_transactions_go_on(store: &ShardStore, id: PartitionId) {
    let outside = append(store, id, &batch(Some((OPEN, 1)), false)).await;
    assert!(
        matches!(
            outside,
            Err(AppendError::Producer(
                ProducerError::NonTransactionalInTransaction { producer_id: OPEN }
            ))
        ),
        "{outside:?}"
    );
    let commit = end_txn(store, id, OPEN, 0, MarkerKind::Commit)
        .await
        .unwrap();
    let offsets = store.offsets(id).unwrap();
    assert_eq!(offsets.last_stable_offset, offsets.high_watermark);
    assert_eq!(commit, Offset(8));
    let stale = end_txn(store, id, COMMITTED, -1, MarkerKind::Abort).await;
    assert!(
        matches!(
            stale,
            Err(AppendError::Producer(ProducerError::InvalidEpoch { .. }))
        ),
        "{stale:?}"
    );
}

#[test]
fn read_committed_stops_at_open_transactions_and_lists_aborted_ones_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    let id = runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let id = support::create(&store, "txn", 0);
        write_layout(&store, id).await;
        assert_layout(&store, id);
        support::shutdown(&store).await;
        id
    });
    // A clean restart: the state comes from the shutdown's snapshot.
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        let report = store.recovery_report().clone();
        assert_eq!(report.producer_scan_start, report.end, "{report:?}");
        assert_layout(&store, id);
        support::shutdown(&store).await;
    });
    // No snapshot: the state is rebuilt from the first segment.
    std::fs::remove_dir_all(dir.path().join("shard-0").join("producers")).unwrap();
    runtime.block_on(async {
        let store = support::open(dir.path(), WriteMode::Direct, IoBackend::Epoll);
        assert_eq!(store.recovery_report().producer_scan_start.0, 0);
        assert_layout(&store, id);
        assert_transactions_go_on(&store, id).await;
        support::shutdown(&store).await;
    });
}

#[test]
fn transaction_state_survives_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = support::runtime(IoBackend::Epoll);
    let id = runtime.block_on(async {
        let device = SimDevice::new(31);
        let store = device.open_store(dir.path());
        let id = support::create(&store, "txn", 0);
        write_layout(&store, id).await;
        device.power_cut();
        id
    });
    drop(runtime);
    let runtime = support::runtime(IoBackend::Epoll);
    runtime.block_on(async {
        let device = SimDevice::new(32);
        let store = device.open_store(dir.path());
        assert_layout(&store, id);
        assert_transactions_go_on(&store, id).await;
        support::shutdown(&store).await;
    });
}
