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

/// Partitions in the test below: more than its open-files limit.
const PAST_THE_LIMIT: i32 = 2000;

/// Found by a breaker trial (issue 19): each partition held its
/// consume-queue file open, so 20 000 partitions ran a 20 000 open-files
/// limit out: creating a topic failed half-way, appends were refused, and
/// after a kill -9 the broker could not start again. Queue files are now
/// mapped and closed. Under a limit of 1024 descriptors a broker creates
/// 2000 partitions, takes a record in each, is killed, starts again under
/// the same limit and serves every record (mutation: keeping each queue
/// file open fails the creation with "Too many open files").
#[test]
fn partitions_past_the_open_files_limit_take_records_and_survive_kill_9() {
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{FetchRequest, ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use crate::broker_process::{BrokerProcess, Launch};
    use crate::wire::Wire;

    let dir = tempfile::tempdir().unwrap();
    let launch = Launch {
        open_files: Some((1024, 1024)),
        ..Launch::default()
    };
    let topic = TopicName(StrBytes::from_static_str("wide"));
    let broker = BrokerProcess::start_with(dir.path(), &[], &launch);
    crate::kafka_clients::create_topic(&broker.address, "wide", PAST_THE_LIMIT, &[]);
    let records = Bytes::from(crate::kafka_bad_input::batch(1, 100));
    let produce = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic.clone())
                .with_partition_data(
                    (0..PAST_THE_LIMIT)
                        .map(|index| {
                            PartitionProduceData::default()
                                .with_index(index)
                                .with_records(Some(records.clone()))
                        })
                        .collect(),
                ),
        ]);
    let mut wire = Wire::connect(&broker.address);
    wire.set_read_timeout(std::time::Duration::from_secs(60));
    let response = wire.call(9, &produce);
    let refused: Vec<_> = response.responses[0]
        .partition_responses
        .iter()
        .filter(|partition| partition.error_code != 0)
        .map(|partition| (partition.index, partition.error_code))
        .collect();
    assert!(refused.is_empty(), "refused appends: {refused:?}");
    assert_eq!(
        response.responses[0].partition_responses.len(),
        PAST_THE_LIMIT as usize
    );
    drop(wire);
    broker.kill9();

    let broker = BrokerProcess::start_with(dir.path(), &[], &launch);
    let fetch = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(0)
        .with_max_bytes(64 << 20)
        .with_topics(vec![
            FetchTopic::default().with_topic(topic).with_partitions(
                (0..PAST_THE_LIMIT)
                    .map(|index| {
                        FetchPartition::default()
                            .with_partition(index)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20)
                    })
                    .collect(),
            ),
        ]);
    let mut wire = Wire::connect(&broker.address);
    wire.set_read_timeout(std::time::Duration::from_secs(60));
    let response = wire.call(4, &fetch);
    let partitions = &response.responses[0].partitions;
    assert_eq!(partitions.len(), PAST_THE_LIMIT as usize);
    for partition in partitions {
        assert_eq!(
            (partition.error_code, partition.high_watermark),
            (0, 1),
            "partition {} after the restart",
            partition.partition_index
        );
        assert_eq!(
            partition.records.as_ref().map(|records| &records[..]),
            Some(&support::stored_form(&records, sluice::ids::Offset(0))[..]),
            "partition {}'s record as stored",
            partition.partition_index
        );
    }
    assert!(
        !broker.log_contains("Too many open files"),
        "{:?}",
        broker.log()
    );
    assert_eq!(broker.stop().code(), Some(0));
}
