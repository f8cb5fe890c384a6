//! Log compaction (`cleanup.policy=compact`, issue 17) with real clients:
//! the latest value of every key survives, older ones and expired
//! tombstones go, offsets are kept, and a kill -9 at any moment of a pass
//! loses nothing and exposes no half-compacted partition.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::broker_process::BrokerProcess;
use crate::kafka_clients::{self, Record};

/// A cleaner that looks every 200 ms.
const FAST_CLEANER: &str = "[storage]\ncleaner_backoff_ms = 200\n";

fn start(dir: &Path, config: &str) -> BrokerProcess {
    let path = dir.join("compaction-test.toml");
    std::fs::write(&path, config).unwrap();
    BrokerProcess::start(&dir.join("data"), &["--config", path.to_str().unwrap()])
}

/// Create a compacted topic cleaned at any dirty ratio, with `extra` configs.
fn create_compacted(address: &str, topic: &str, partitions: i32, extra: &[(&str, &str)]) {
    let mut configs = vec![
        ("cleanup.policy", "compact"),
        ("min.cleanable.dirty.ratio", "0.01"),
    ];
    configs.extend_from_slice(extra);
    kafka_clients::create_topic(address, topic, partitions, &configs);
}

/// Write `count` updates over `keys` keys (`key-K` = `value-N`, N counting
/// from `first`), acks=all; the acknowledged records.
fn write_updates(
    address: &str,
    topic: &str,
    first: usize,
    count: usize,
    keys: usize,
) -> Vec<Record> {
    write_keys(address, topic, "key", first, count, keys)
}

/// [`write_updates`] with keys `PREFIX-K`.
pub(crate) fn write_keys(
    address: &str,
    topic: &str,
    prefix: &str,
    first: usize,
    count: usize,
    keys: usize,
) -> Vec<Record> {
    let (producer, acks) = kafka_clients::producer(address, &[("linger.ms", "20")]);
    for n in first..first + count {
        let key = format!("{prefix}-{}", n % keys);
        let value = format!("value-{n}");
        kafka_clients::send(
            &producer,
            topic,
            None,
            Some(key.as_bytes()),
            value.as_bytes(),
            &[],
        );
    }
    kafka_clients::flush(&producer, &acks)
}

/// The latest acknowledged record of each key: (partition, offset, value).
pub(crate) fn latest_by_key(acked: &[Record]) -> BTreeMap<Vec<u8>, (i32, i64, Vec<u8>)> {
    let mut latest: BTreeMap<Vec<u8>, (i32, i64, Vec<u8>)> = BTreeMap::new();
    for record in acked {
        let key = record.key.clone().expect("keyed");
        let entry = (record.partition, record.offset, record.payload.clone());
        match latest.get(&key) {
            Some((_, offset, _)) if *offset > record.offset => {}
            _ => {
                latest.insert(key, entry);
            }
        }
    }
    latest
}

/// Consume until exactly `expected` records come back (compaction is
/// asynchronous), at most 90 s.
pub(crate) fn consume_until(
    address: &str,
    topic: &str,
    partitions: i32,
    expected: usize,
) -> Vec<Record> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let records =
            kafka_clients::consume_all(address, topic, partitions, Duration::from_secs(1));
        if records.len() == expected || Instant::now() > deadline {
            return records;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every key's last record in the log is its latest acknowledged value at
/// its acknowledged offset, and no record of a key comes after it.
pub(crate) fn assert_latest_values(
    records: &[Record],
    latest: &BTreeMap<Vec<u8>, (i32, i64, Vec<u8>)>,
) {
    let mut last: BTreeMap<Vec<u8>, (i32, i64, Vec<u8>)> = BTreeMap::new();
    for record in records {
        let key = record
            .key
            .clone()
            .expect("a compacted topic holds keyed records only");
        last.insert(
            key,
            (record.partition, record.offset, record.payload.clone()),
        );
    }
    assert_eq!(last.len(), latest.len(), "every key is present");
    for (key, expected) in latest {
        assert_eq!(
            last.get(key),
            Some(expected),
            "key {:?}",
            String::from_utf8_lossy(key)
        );
    }
}

#[test]
fn a_compacted_topic_keeps_the_latest_value_of_each_of_1000_keys_after_100000_updates() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), FAST_CLEANER);
    let address = broker.address.clone();
    // Records a pass left below the dirty ratio (passes run while the
    // updates arrive) are cleaned once a second old.
    create_compacted(
        &address,
        "table",
        2,
        &[
            ("delete.retention.ms", "1000"),
            ("max.compaction.lag.ms", "1000"),
        ],
    );
    let acked = write_updates(&address, "table", 0, 100_000, 1000);
    let latest = latest_by_key(&acked);
    assert_eq!(latest.len(), 1000);
    let records = consume_until(&address, "table", 2, 1000);
    assert_eq!(records.len(), 1000, "compaction left one record per key");
    assert_latest_values(&records, &latest);

    // Tombstones for 100 keys: kept for delete.retention.ms, then removed
    // by a later pass.
    let (producer, acks) = kafka_clients::producer(&address, &[]);
    for key in 0..100 {
        let key = format!("key-{key}");
        let record: rdkafka::producer::BaseRecord<'_, [u8], [u8]> =
            rdkafka::producer::BaseRecord::to("table").key(key.as_bytes());
        producer.poll(Duration::ZERO);
        producer.send(record).map_err(|(error, _)| error).unwrap();
    }
    kafka_clients::flush(&producer, &acks);
    std::thread::sleep(Duration::from_millis(1500));
    // New writes (to other keys) make the partitions dirty again, so a
    // pass runs.
    let more = write_keys(&address, "table", "other", 0, 2_000, 50);
    let mut latest = latest_by_key(&[acked, more].concat());
    for key in 0..100 {
        latest.remove(format!("key-{key}").as_bytes());
    }
    let records = consume_until(&address, "table", 2, 950);
    assert_eq!(
        records.len(),
        950,
        "the expired tombstones and their keys are gone"
    );
    assert_latest_values(&records, &latest);

    // The compacted state survives a restart and a kill -9.
    let _ = broker.stop();
    let broker = start(dir.path(), FAST_CLEANER);
    assert_latest_values(
        &kafka_clients::consume_all(&broker.address, "table", 2, Duration::from_secs(1)),
        &latest,
    );
    broker.kill9();
    let broker = start(dir.path(), FAST_CLEANER);
    assert_latest_values(
        &kafka_clients::consume_all(&broker.address, "table", 2, Duration::from_secs(1)),
        &latest,
    );
    let _ = broker.stop();
}

#[test]
fn kill_9_during_compaction_passes_loses_no_latest_value() {
    let dir = tempfile::tempdir().unwrap();
    // A slow cleaner, so that kills land in the middle of passes, and small
    // consume-queue files, so that passes drop whole files of the head.
    let config = "[storage]\ncleaner_backoff_ms = 100\ncleaner_io_max_bytes_per_second = 1048576\n\
                  consume_queue_entries_per_file = 1024\n";
    let mut broker = start(dir.path(), config);
    create_compacted(&broker.address, "kv", 1, &[]);
    let mut acked = Vec::new();
    let mut killed_mid_pass = 0;
    for round in 0..5 {
        acked.extend(write_updates(
            &broker.address,
            "kv",
            round * 20_000,
            20_000,
            500,
        ));
        std::thread::sleep(Duration::from_millis(300 + 450 * round as u64));
        // The last pass the log mentions was started and not finished.
        let passes: Vec<bool> = broker
            .log()
            .iter()
            .filter_map(|line| {
                if line.contains("compacting a partition") {
                    Some(true)
                } else if line.contains("compacted a partition") {
                    Some(false)
                } else {
                    None
                }
            })
            .collect();
        if passes.last() == Some(&true) {
            killed_mid_pass += 1;
        }
        broker.kill9();
        broker = start(dir.path(), config);
        let records = kafka_clients::consume_all(&broker.address, "kv", 1, Duration::from_secs(3));
        assert_latest_values(&records, &latest_by_key(&acked));
        // Offsets only increase and each is served once.
        assert!(
            records
                .windows(2)
                .all(|pair| pair[0].offset < pair[1].offset)
        );
    }
    assert!(
        killed_mid_pass >= 2,
        "only {killed_mid_pass} of 5 kills landed inside a pass"
    );
    let records = consume_until(&broker.address, "kv", 1, 500);
    assert_eq!(records.len(), 500, "the last pass left one record per key");
    assert_latest_values(&records, &latest_by_key(&acked));
    let _ = broker.stop();
}

/// Kafka refuses DeleteRecords on a topic whose cleanup policy lacks
/// `delete` (POLICY_VIOLATION) and takes it with `compact,delete`.
#[test]
fn delete_records_needs_the_delete_policy() {
    const POLICY_VIOLATION: i16 = 44;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), FAST_CLEANER);
    let address = broker.address.clone();
    kafka_clients::create_topic(
        &address,
        "only-compact",
        1,
        &[("cleanup.policy", "compact")],
    );
    kafka_clients::create_topic(
        &address,
        "compact-delete",
        1,
        &[("cleanup.policy", "compact,delete")],
    );
    for topic in ["only-compact", "compact-delete"] {
        write_keys(&address, topic, "k", 0, 10, 10);
    }
    assert_eq!(
        crate::cluster::delete_records(&address, "only-compact", 0, 5).0,
        POLICY_VIOLATION
    );
    assert_eq!(
        crate::cluster::delete_records(&address, "compact-delete", 0, 5),
        (0, 5)
    );
    let _ = broker.stop();
}

/// A transaction's records take part in compaction once it is decided:
/// a committed one supersedes older values like any record, an aborted
/// one's records are removed and never hide the committed value, and the
/// markers stay so read_committed readers still find each transaction's end.
#[test]
fn aborted_transactions_are_removed_and_committed_ones_win() {
    use rdkafka::producer::{BaseRecord, Producer};
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), FAST_CLEANER);
    let address = broker.address.clone();
    create_compacted(&address, "txn-table", 1, &[]);
    // Plain updates: a=plain-N, b=plain-N.
    write_keys(&address, "txn-table", "plain", 0, 200, 2);
    let (producer, acks) = kafka_clients::producer(
        &address,
        &[("transactional.id", "compaction-txn"), ("linger.ms", "0")],
    );
    producer.init_transactions(Duration::from_secs(10)).unwrap();
    let send = |key: &str, value: &str| {
        producer
            .send(BaseRecord::to("txn-table").key(key).payload(value))
            .map_err(|(error, _)| error)
            .unwrap();
    };
    producer.begin_transaction().unwrap();
    send("plain-0", "committed");
    producer
        .commit_transaction(Duration::from_secs(10))
        .unwrap();
    producer.begin_transaction().unwrap();
    send("plain-0", "aborted");
    send("plain-1", "aborted");
    producer.flush(Duration::from_secs(10)).unwrap();
    producer.abort_transaction(Duration::from_secs(10)).unwrap();
    // Later plain writes make the partition dirty past the transactions.
    write_keys(&address, "txn-table", "other", 0, 50, 1);
    drop(acks);
    for isolation in ["read_uncommitted", "read_committed"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let values = loop {
            let records =
                consume_all_with(&address, "txn-table", &[("isolation.level", isolation)]);
            let values: Vec<(String, String)> = records
                .iter()
                .map(|record| {
                    (
                        String::from_utf8_lossy(record.key.as_deref().unwrap_or_default())
                            .into_owned(),
                        String::from_utf8_lossy(&record.payload).into_owned(),
                    )
                })
                .collect();
            if values.len() <= 3 || Instant::now() > deadline {
                break values;
            }
            std::thread::sleep(Duration::from_millis(300));
        };
        assert_eq!(
            values,
            [
                ("plain-1".to_owned(), "value-199".to_owned()),
                ("plain-0".to_owned(), "committed".to_owned()),
                ("other-0".to_owned(), "value-49".to_owned()),
            ],
            "{isolation}"
        );
    }
    let _ = broker.stop();
}

/// Every record of partition 0 of `topic` from offset 0 with consumer
/// `settings`, read until none comes for a second.
fn consume_all_with(address: &str, topic: &str, settings: &[(&str, &str)]) -> Vec<Record> {
    use rdkafka::consumer::Consumer;
    let consumer = kafka_clients::consumer(address, settings);
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(0))
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(1) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                records.push(kafka_clients::to_record(&message));
                last = Instant::now();
            }
            Some(Err(error)) => panic!("consume failed: {error}"),
            None => {}
        }
    }
    records
}

/// `min.compaction.lag.ms` keeps young records out of a pass whatever the
/// dirty ratio; `max.compaction.lag.ms` makes a pass due whatever the ratio.
#[test]
fn compaction_lags_hold_back_young_records_and_force_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), FAST_CLEANER);
    let address = broker.address.clone();
    create_compacted(
        &address,
        "lagged",
        1,
        &[("min.compaction.lag.ms", "3600000")],
    );
    create_compacted(&address, "forced", 1, &[]);
    write_keys(&address, "lagged", "k", 0, 1_000, 10);
    let acked = write_keys(&address, "forced", "k", 0, 1_000, 10);
    assert_eq!(consume_until(&address, "forced", 1, 10).len(), 10);
    // A clean section of 10 records, then a head too small for the ratio
    // (0.99): only the max lag can make it due.
    let admin = kafka_clients::admin(&address);
    let alter = |configs: &[(&str, &str)]| {
        let mut resource =
            rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic("forced"));
        for (key, value) in configs {
            resource = resource.set(key, value);
        }
        let results = futures_executor::block_on(
            admin.alter_configs([&resource], &rdkafka::admin::AdminOptions::new()),
        )
        .unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    };
    alter(&[
        ("cleanup.policy", "compact"),
        ("min.cleanable.dirty.ratio", "0.99"),
    ]);
    let more = write_keys(&address, "forced", "k", 5_000, 5, 10);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        kafka_clients::consume_all(&address, "forced", 1, Duration::from_secs(1)).len(),
        15,
        "below the dirty ratio nothing is cleaned"
    );
    alter(&[
        ("cleanup.policy", "compact"),
        ("min.cleanable.dirty.ratio", "0.99"),
        ("max.compaction.lag.ms", "1000"),
    ]);
    let records = consume_until(&address, "forced", 1, 10);
    assert_eq!(records.len(), 10, "the max lag forced a pass");
    assert_latest_values(&records, &latest_by_key(&[acked, more].concat()));
    assert_eq!(
        kafka_clients::consume_all(&address, "lagged", 1, Duration::from_secs(1)).len(),
        1_000,
        "records younger than min.compaction.lag.ms stay"
    );
    let _ = broker.stop();
}

/// Found by a fresh user: when the newest records of a partition were
/// tombstones that expired at once, a pass removed every batch up to the
/// high watermark and consumers at those offsets waited forever for a batch.
/// The last batch stays while nothing follows it, so every consumer reaches
/// the end.
#[test]
fn consumers_reach_the_end_after_the_newest_records_are_cleaned_away() {
    use rdkafka::producer::BaseRecord;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), FAST_CLEANER);
    let address = broker.address.clone();
    create_compacted(&address, "ends", 1, &[("delete.retention.ms", "0")]);
    let acked = write_keys(&address, "ends", "g", 0, 5, 5);
    let (producer, acks) = kafka_clients::producer(&address, &[]);
    for key in ["g-1", "g-2"] {
        producer
            .send(BaseRecord::<str, [u8]>::to("ends").key(key))
            .map_err(|(error, _)| error)
            .unwrap();
    }
    kafka_clients::flush(&producer, &acks);
    let mut latest = latest_by_key(&acked);
    latest.remove(&b"g-1"[..]);
    latest.remove(&b"g-2"[..]);
    // Until a pass removed the deleted keys' values (and the expired
    // tombstones before the last batch).
    let deadline = Instant::now() + Duration::from_secs(60);
    while kafka_clients::consume_all(&address, "ends", 1, Duration::from_secs(1))
        .iter()
        .any(|record| record.key.as_deref() == Some(&b"g-1"[..]) && !record.payload.is_empty())
    {
        assert!(Instant::now() < deadline, "no pass removed g-1's value");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A consumer from the start, and one at each offset up to the end,
    // reach the end of the partition.
    for from in 0..7 {
        let records = read_to_the_end(&address, "ends", from);
        if from == 0 {
            let live: Vec<Record> = records
                .into_iter()
                .filter(|record| !record.payload.is_empty())
                .collect();
            assert_latest_values(&live, &latest);
        }
    }
    let _ = broker.stop();
}

/// Found by the breaker (issue 18): a partition whose last batch was a
/// produced batch of delayed records only (stored empty, its records held
/// by the timer) lost that batch to a pass, and consumers at its offset
/// waited forever below the high watermark. An empty last batch now stays.
#[test]
fn an_empty_last_batch_of_held_records_survives_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), FAST_CLEANER);
    let address = broker.address.clone();
    create_compacted(&address, "held", 1, &[]);
    write_keys(&address, "held", "a", 0, 4, 1);
    let (producer, acks) = kafka_clients::producer(&address, &[]);
    kafka_clients::send(
        &producer,
        "held",
        Some(0),
        Some(b"b"),
        b"later",
        &[("sluice.delay.ms", b"600000")],
    );
    kafka_clients::flush(&producer, &acks);
    // Until a pass removed a's older values.
    let deadline = Instant::now() + Duration::from_secs(60);
    while kafka_clients::consume_all(&address, "held", 1, Duration::from_secs(1)).len() > 1 {
        assert!(
            Instant::now() < deadline,
            "no pass removed a's older values"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for from in [0, 3, 4] {
        read_to_the_end(&address, "held", from);
    }
    let _ = broker.stop();
}

/// The records of partition 0 of `topic` from offset `from` until the
/// consumer reaches the partition's end (librdkafka's partition EOF);
/// panics if it does not within 10 s.
fn read_to_the_end(address: &str, topic: &str, from: i64) -> Vec<Record> {
    use rdkafka::consumer::Consumer;
    let consumer = kafka_clients::consumer(address, &[("enable.partition.eof", "true")]);
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(from))
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut records = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "a consumer of {topic} from offset {from} never reached the end (read {records:?})"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => records.push(kafka_clients::to_record(&message)),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => return records,
            Some(Err(error)) => panic!("consume failed: {error}"),
            None => {}
        }
    }
}

/// Found by the breaker: one record stamped a year ahead held every later
/// batch out of passes for good (`min.compaction.lag.ms` 0 applies no lag).
#[test]
fn a_record_stamped_in_the_future_does_not_stop_compaction() {
    use rdkafka::producer::BaseRecord;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), FAST_CLEANER);
    let address = broker.address.clone();
    create_compacted(&address, "future", 1, &[]);
    let (producer, acks) = kafka_clients::producer(&address, &[]);
    let year_ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 365 * 24 * 3_600_000;
    producer
        .send(
            BaseRecord::to("future")
                .key("ahead")
                .payload("later")
                .timestamp(year_ahead),
        )
        .map_err(|(error, _)| error)
        .unwrap();
    kafka_clients::flush(&producer, &acks);
    let acked = write_keys(&address, "future", "k", 0, 1_000, 10);
    let mut latest = latest_by_key(&acked);
    latest.insert(b"ahead".to_vec(), (0, 0, b"later".to_vec()));
    let records = consume_until(&address, "future", 1, 11);
    assert_eq!(records.len(), 11, "compacted to one record per key");
    assert_latest_values(&records, &latest);
    let _ = broker.stop();
}

/// A batch with more distinct keys than the key map holds
/// (`storage.cleaner_dedupe_buffer_bytes` 1 MiB: 43 690 keys; the batch
/// has 50 000) still compacts: the first batch of a pass goes into the map
/// whatever its size (mutation: refused like any batch that overflows the
/// map → the pass stops before it every time and the partition never
/// compacts).
#[test]
fn a_batch_with_more_keys_than_the_key_map_holds_still_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(
        dir.path(),
        &format!("{FAST_CLEANER}cleaner_dedupe_buffer_bytes = 1048576\n"),
    );
    let address = broker.address.clone();
    create_compacted(&address, "wide", 1, &[("max.compaction.lag.ms", "1000")]);
    // One lz4 batch of 50 000 records, each about 17 bytes uncompressed.
    let (producer, acks) = kafka_clients::producer(
        &address,
        &[
            ("linger.ms", "2000"),
            ("compression.type", "lz4"),
            ("batch.num.messages", "100000"),
            ("batch.size", "1000000"),
        ],
    );
    for n in 0..50_000 {
        let key = format!("w{n:05}");
        kafka_clients::send(&producer, "wide", Some(0), Some(key.as_bytes()), b"a", &[]);
    }
    let mut acked = kafka_clients::flush(&producer, &acks);
    // 1 000 of its keys again, in ordinary batches.
    let (producer, acks) = kafka_clients::producer(&address, &[]);
    for n in 0..1_000 {
        let key = format!("w{n:05}");
        kafka_clients::send(&producer, "wide", Some(0), Some(key.as_bytes()), b"b", &[]);
    }
    acked.extend(kafka_clients::flush(&producer, &acks));
    let latest = latest_by_key(&acked);
    assert_eq!(latest.len(), 50_000);
    let records = consume_until(&address, "wide", 1, latest.len());
    assert_eq!(
        records.len(),
        latest.len(),
        "compacted to one record per key"
    );
    assert_latest_values(&records, &latest);
    let _ = broker.stop();
}

/// With `message.timestamp.type=LogAppendTime` a tombstone's age counts
/// from the broker's time, not the producer's: a tombstone the producer
/// stamped two days ago stays for `delete.retention.ms` (one day) after it
/// arrived (a new user's finding; mutation: record timestamps from the
/// batch's base timestamp → the first pass removes it).
#[test]
fn a_log_append_time_tombstone_ages_from_the_brokers_time() {
    use rdkafka::producer::BaseRecord;
    let dir = tempfile::tempdir().unwrap();
    let broker = start(dir.path(), FAST_CLEANER);
    let address = broker.address.clone();
    create_compacted(
        &address,
        "appended",
        1,
        &[("message.timestamp.type", "LogAppendTime")],
    );
    let (producer, acks) = kafka_clients::producer(&address, &[("linger.ms", "0")]);
    let two_days_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 2 * 24 * 3_600_000;
    kafka_clients::send(&producer, "appended", Some(0), Some(b"a"), b"1", &[]);
    kafka_clients::flush(&producer, &acks);
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to("appended")
                .partition(0)
                .key(&b"a"[..])
                .timestamp(two_days_ago),
        )
        .map_err(|(error, _)| error)
        .unwrap();
    kafka_clients::flush(&producer, &acks);
    // Ten updates of `b` after it: a pass leaves a's tombstone and b's
    // latest value.
    write_keys(&address, "appended", "b", 0, 10, 1);
    let records = consume_until(&address, "appended", 1, 2);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0].key.as_deref(), Some(&b"a"[..]));
    assert!(records[0].payload.is_empty(), "a's tombstone stays");
    let _ = broker.stop();
}

/// With small segments and write buffers (64 KiB segments, 16 KiB
/// buffers, 8 KiB batches: a valid configuration) a pass over 2 500
/// surviving batches commits them in parts that each fit the log's
/// largest batch (a breaker's finding: parts of 26 000 entries made a
/// 100 KB commit frame, and "frame larger than a segment" aborted the
/// broker at every start; mutation, with compaction frames now checked
/// like any append: such parts → every pass stops and nothing compacts).
#[test]
fn a_pass_commits_in_parts_that_fit_small_segments() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(
        dir.path(),
        "[storage]\ncleaner_backoff_ms = 200\nsegment_bytes = 65536\nflush_bytes = 16384\n\
         message_max_bytes = 8192\n",
    );
    let address = broker.address.clone();
    // Passes run while the records arrive; the last few left below the
    // dirty ratio are cleaned once a second old.
    create_compacted(&address, "narrow", 1, &[("max.compaction.lag.ms", "1000")]);
    // One record per batch: 2 500 batches of distinct keys all survive;
    // then 500 of them again, enough for the 1 % dirty ratio over them.
    let (producer, acks) =
        kafka_clients::producer(&address, &[("batch.num.messages", "1"), ("linger.ms", "0")]);
    for n in (0..2_500).chain(0..500) {
        let key = format!("k-{n}");
        kafka_clients::send(
            &producer,
            "narrow",
            Some(0),
            Some(key.as_bytes()),
            b"v",
            &[],
        );
    }
    let acked = kafka_clients::flush(&producer, &acks);
    let latest = latest_by_key(&acked);
    assert_eq!(latest.len(), 2_500);
    let records = consume_until(&address, "narrow", 1, latest.len());
    assert_eq!(
        records.len(),
        latest.len(),
        "compacted to one record per key"
    );
    assert_latest_values(&records, &latest);
    assert!(broker.log_contains("compacted a partition"), "a pass ran");
    let _ = broker.stop();
}
