//! Issue 19 item 3: creating partitions does its file-system work (the id
//! counter, directories, metadata, the first consume-queue file, several
//! fsyncs each) off the shard thread. Made on the shard, 10 000 partitions
//! held its appends and fetches for tens of seconds.

use std::cell::Cell;
use std::rc::Rc;

use sluice::storage::{Durability, NewPartition, PartitionError, ShardStore};

use crate::support::{self, validated};

const CREATED: u32 = 300;

fn wanted(topic: &str, count: u32) -> Vec<NewPartition> {
    (0..count)
        .map(|index| NewPartition {
            topic: topic.to_owned(),
            index,
            id: None,
            config: support::default_partition_config(),
        })
        .collect()
}

/// While 300 partitions are created, an existing partition on the same
/// shard keeps taking appends; every new partition has its metadata and its
/// first consume-queue file before it is announced, and all of them, with
/// their ids, survive a restart, after which a new partition gets a fresh
/// id (mutation: making the files on the shard thread, as before, lets no
/// append through while they are made).
#[test]
fn creating_many_partitions_leaves_the_shard_serving_appends() {
    let dir = tempfile::tempdir().unwrap();
    let storage = support::small_storage(sluice::config::WriteMode::Direct);
    let runtime = support::runtime(support::native_backend());
    let ids = runtime.block_on(async {
        let options = support::options(dir.path(), storage.clone(), support::native_backend());
        let store = ShardStore::open(options).unwrap();
        let busy = support::create(&store, "busy", 0);
        let appended = Rc::new(Cell::new(0u32));
        let appended_while_creating = Rc::new(Cell::new(None));
        let creating = compio::runtime::spawn({
            let (store, appended, seen) = (
                Rc::clone(&store),
                Rc::clone(&appended),
                Rc::clone(&appended_while_creating),
            );
            async move {
                let results = store.create_partitions(wanted("many", CREATED)).await;
                seen.set(Some(appended.get()));
                results
            }
        });
        let bytes = support::batch("busy", 4, 100);
        while appended_while_creating.get().is_none() {
            let receipt = store
                .append(busy, validated(&bytes), Durability::Written)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
            appended.set(appended.get() + 1);
        }
        let results = creating.await.expect("the creating task ran");
        let ids: Vec<_> = results
            .into_iter()
            .map(|result| result.expect("partition created"))
            .collect();
        let during = appended_while_creating.get().unwrap();
        assert!(
            during >= 3,
            "only {during} appends went through while {CREATED} partitions were created"
        );
        for (index, &id) in (0..CREATED).zip(&ids) {
            assert_eq!(store.partition_id("many", index), Some(id));
            let dir = store.root_dir().join(format!("partitions/{:010}", id.0));
            assert!(dir.join("partition.meta").is_file(), "{dir:?}");
            assert!(
                dir.join(format!("{:020}.cq", 0)).is_file(),
                "the first consume-queue file is made with the partition: {dir:?}"
            );
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "ids are distinct");
        support::shutdown(&store).await;
        ids
    });
    drop(runtime);
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let options = support::options(dir.path(), storage, support::native_backend());
        let store = ShardStore::open(options).unwrap();
        for (index, &id) in (0..CREATED).zip(&ids) {
            assert_eq!(
                store.partition_id("many", index),
                Some(id),
                "after a restart"
            );
        }
        let fresh = support::create(&store, "fresh", 0);
        assert!(
            ids.iter().all(|&id| id < fresh),
            "a new partition's id {fresh} is above every earlier one"
        );
        support::shutdown(&store).await;
    });
}

/// A name being created is taken: creating it again meanwhile is refused
/// with the id it is getting, and the first creation completes.
#[test]
fn a_partition_being_created_is_not_created_twice() {
    let dir = tempfile::tempdir().unwrap();
    let storage = support::small_storage(sluice::config::WriteMode::Direct);
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let options = support::options(dir.path(), storage, support::native_backend());
        let store = ShardStore::open(options).unwrap();
        let mut creating = std::pin::pin!(store.create_partitions(wanted("twice", 1)));
        assert!(futures_util::poll!(creating.as_mut()).is_pending());
        let again = store.create_partition("twice", 0, support::default_partition_config());
        let Err(PartitionError::AlreadyExists { id: taken, .. }) = again else {
            panic!("created twice: {again:?}");
        };
        let created = creating.await.pop().unwrap().unwrap();
        assert_eq!(created, taken);
        assert_eq!(store.partition_id("twice", 0), Some(created));
        support::shutdown(&store).await;
    });
}

/// Blocks under a partition's next consume-queue entries are reserved
/// ahead, off the shard thread: the partition is made with its queue's
/// first file and page, and over 8000 appends (five 64 KiB steps) the
/// shard reserves in line at most once, should a reservation ahead be late
/// (mutation: no reservations ahead makes it reserve at every step).
#[test]
fn consume_queue_blocks_are_reserved_ahead_off_the_shard() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = support::small_storage(sluice::config::WriteMode::Direct);
    // One file for all of them: a new file is made, and its first blocks
    // reserved, when the entry before it is written.
    storage.consume_queue_entries_per_file = 100_000;
    let runtime = support::runtime(support::native_backend());
    runtime.block_on(async {
        let options = support::options(dir.path(), storage, support::native_backend());
        let store = ShardStore::open(options).unwrap();
        let id = support::create(&store, "ahead", 0);
        assert_eq!(store.queue_reserved_in_line(id), Some(0));
        let bytes = support::batch("ahead", 1, 10);
        for _ in 0..8000 {
            let receipt = store
                .append(id, validated(&bytes), Durability::Written)
                .await
                .unwrap();
            store.wait(&receipt).await.unwrap();
        }
        let in_line = store.queue_reserved_in_line(id).unwrap();
        assert!(
            in_line <= 1,
            "{in_line} reservations on the shard thread for 8000 entries"
        );
        support::shutdown(&store).await;
    });
}
