//! Empty batches (records count 0, offsets kept), which Kafka's cleaner
//! leaves behind to keep producer state and which issue 18's design stores
//! where a produced batch's records were all delayed: clients read past
//! them, in the middle of a partition and at its end.

use std::time::Duration;

use sluice::record_batch::{BatchBuilder, HeaderFields, RecordSpec, assemble};

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;
use crate::kafka_poison_batches::store_under_the_validator;

/// An empty batch spanning `offsets` offsets.
fn empty(offsets: i32) -> Vec<u8> {
    assemble(
        &HeaderFields {
            attributes: 0,
            last_offset_delta: offsets - 1,
            base_timestamp_ms: 1_700_000_000_000,
            max_timestamp_ms: 1_700_000_000_000,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: 0,
        },
        &[],
    )
}

fn one(value: &str) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder.push(RecordSpec {
        key: None,
        value: Some(value.as_bytes()),
        timestamp_delta_ms: 0,
    });
    builder.build()
}

/// (Checked by hand the same way, 2026-12-01: kafka-python 3.0.12 and
/// kafkajs read a@0, c@3 and e@5 too.)
#[test]
fn librdkafka_reads_past_empty_batches_in_the_middle_and_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, "gaps", 1, &[]);
    assert!(broker.stop().success());
    // a@0, empty 1-2, c@3, empty 4: the high watermark is 5.
    store_under_the_validator(
        dir.path(),
        "gaps",
        &[one("a"), empty(2), one("c"), empty(1)],
    );
    let broker = BrokerProcess::start(dir.path(), &[]);
    let seen = |records: Vec<kafka_clients::Record>| -> Vec<(i64, Vec<u8>)> {
        records
            .into_iter()
            .map(|record| (record.offset, record.payload))
            .collect()
    };
    let all = kafka_clients::consume_all(&broker.address, "gaps", 1, Duration::from_secs(2));
    assert_eq!(seen(all), vec![(0, b"a".to_vec()), (3, b"c".to_vec())]);
    // A record after the trailing empty batch: a consumer at 4 reaches it.
    let (producer, acks) = kafka_clients::producer(&broker.address, &[]);
    kafka_clients::send(&producer, "gaps", Some(0), None, b"e", &[]);
    let acked = kafka_clients::flush(&producer, &acks);
    assert_eq!(acked[0].offset, 5, "offsets go on after the empty batch");
    let after = kafka_clients::consume(&broker.address, "gaps", 1, 4, 1);
    assert_eq!(seen(after), vec![(5, b"e".to_vec())]);
    let _ = broker.stop();
}
