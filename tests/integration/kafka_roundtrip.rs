//! Produce and consume through the real broker with librdkafka: every
//! compression, keys and headers, many partitions, large batches, restarts.

use crate::broker_process::BrokerProcess;
use crate::kafka_clients::{self, Record};

/// Produce `count` keyed records with headers round-robin over `partitions`;
/// returns what the broker acknowledged.
fn produce(
    address: &str,
    topic: &str,
    partitions: i32,
    count: usize,
    value_bytes: usize,
    settings: &[(&str, &str)],
) -> Vec<Record> {
    let (producer, acks) = kafka_clients::producer(address, settings);
    for seq in 0..count {
        let key = format!("key-{seq}");
        let mut payload = format!("{topic}-{seq}-").into_bytes();
        payload.resize(value_bytes.max(payload.len()), b'~');
        let partition = (seq as i32) % partitions;
        let seq_text = seq.to_string();
        let headers: [(&str, &[u8]); 2] = [("seq", seq_text.as_bytes()), ("kind", b"test")];
        kafka_clients::send(
            &producer,
            topic,
            Some(partition),
            Some(key.as_bytes()),
            &payload,
            &headers,
        );
    }
    let mut delivered = kafka_clients::flush(&producer, &acks);
    assert_eq!(delivered.len(), count);
    delivered.sort_by_key(|record| (record.partition, record.offset));
    delivered
}

/// Everything acknowledged comes back, with keys and headers, and each
/// partition's records in offset order.
fn assert_consumed_matches(address: &str, topic: &str, partitions: i32, acked: &[Record]) {
    let mut consumed = kafka_clients::consume(address, topic, partitions, 0, acked.len());
    let mut previous = std::collections::HashMap::new();
    for record in &consumed {
        if let Some(before) = previous.insert(record.partition, record.offset) {
            assert!(
                record.offset > before,
                "offsets increase within partition {}",
                record.partition
            );
        }
    }
    consumed.sort_by_key(|record| (record.partition, record.offset));
    for (got, want) in consumed.iter().zip(acked) {
        assert_eq!((got.partition, got.offset), (want.partition, want.offset));
        assert_eq!(got.key, want.key);
        assert_eq!(got.payload, want.payload);
        assert_eq!(got.headers, want.headers);
    }
}

#[test]
fn every_compression_round_trips_with_keys_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("codec-{codec}");
        kafka_clients::create_topic(&broker.address, &topic, 3, &[]);
        let acked = produce(
            &broker.address,
            &topic,
            3,
            600,
            200,
            &[("compression.codec", codec)],
        );
        assert_consumed_matches(&broker.address, &topic, 3, &acked);
    }
    assert!(
        !broker.log_contains("closing connection after a bad request"),
        "{:#?}",
        broker.log()
    );
}

#[test]
fn sixty_four_partitions_keep_per_partition_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, "wide", 64, &[]);
    let acked = produce(&broker.address, "wide", 64, 64 * 20, 64, &[]);
    assert!((0..64).all(|partition| acked.iter().any(|record| record.partition == partition)));
    assert_consumed_matches(&broker.address, "wide", 64, &acked);
    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "wide", 64),
        vec![20; 64]
    );
}

#[test]
fn large_batches_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, "large", 2, &[]);
    // ~1 MB batches: 1 KiB records, up to 1 MB per batch, lingering to fill.
    let settings = [
        ("batch.size", "1000000"),
        ("linger.ms", "50"),
        ("compression.codec", "none"),
    ];
    let acked = produce(&broker.address, "large", 2, 4000, 1024, &settings);
    assert_consumed_matches(&broker.address, "large", 2, &acked);
}

#[test]
fn offsets_survive_a_clean_restart_and_continue() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, "kept", 2, &[]);
    let first = produce(&broker.address, "kept", 2, 300, 100, &[]);
    assert!(broker.stop().success(), "SIGTERM stops the broker cleanly");

    let broker = BrokerProcess::start(dir.path(), &[]);
    assert!(broker.log_contains("recovered"));
    assert_consumed_matches(&broker.address, "kept", 2, &first);
    let more = produce(&broker.address, "kept", 2, 100, 100, &[]);
    assert!(
        more.iter().all(|record| record.offset >= 150),
        "offsets continue after the restart"
    );
    let all: Vec<Record> = {
        let mut all = [first, more].concat();
        all.sort_by_key(|record| (record.partition, record.offset));
        all
    };
    assert_consumed_matches(&broker.address, "kept", 2, &all);
}

#[test]
fn topics_are_created_on_first_use() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let acked = produce(&broker.address, "born-on-produce", 1, 10, 10, &[]);
    assert_consumed_matches(&broker.address, "born-on-produce", 1, &acked);
    assert!(broker.log_contains("created topic"));
}
