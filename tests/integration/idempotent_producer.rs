//! Idempotent Produce on the raw wire against the real binary (issue 13,
//! step 1). InitProducerId is not served yet, so the batches carry producer
//! ids picked by hand, as a client stamps them after InitProducerId.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice::record_batch::{BatchBuilder, RecordSpec, assemble};

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;
use crate::wire::Wire;

const TOPIC: &str = "idempotent";
const PRODUCER: i64 = 1_000_001;
const TRANSACTIONAL: i16 = 0x10;

fn batch(epoch: i16, base_sequence: i32, records: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder.producer(PRODUCER, epoch, base_sequence);
    for index in 0..records {
        let value = format!("record-{}", base_sequence as usize + index);
        builder.push(RecordSpec {
            value: Some(value.as_bytes()),
            ..RecordSpec::default()
        });
    }
    builder.build()
}

fn produce(wire: &mut Wire, records: Vec<u8>) -> PartitionProduceResponse {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(records))),
                ]),
        ]);
    let mut response = wire.call(9, &request);
    response.responses.remove(0).partition_responses.remove(0)
}

/// (error code, base offset) of a Produce of `records`.
fn send(wire: &mut Wire, records: &[u8]) -> (i16, i64) {
    let response = produce(wire, records.to_vec());
    (response.error_code, response.base_offset)
}

#[test]
fn retried_batch_gets_its_original_offset_and_is_stored_once_even_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    let first = batch(0, 0, 2);
    let second = batch(0, 2, 1);
    assert_eq!(send(&mut wire, &first), (0, 0));
    assert_eq!(send(&mut wire, &second), (0, 2));
    assert_eq!(
        send(&mut wire, &first),
        (0, 0),
        "a retry is answered, no error"
    );
    assert_eq!(send(&mut wire, &second), (0, 2));
    // Stored once: the next batch follows the two originals directly.
    assert_eq!(send(&mut wire, &batch(0, 3, 1)), (0, 3));
    drop(wire);
    broker.kill9();

    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(send(&mut wire, &second), (0, 2), "recognised after kill -9");
    assert_eq!(send(&mut wire, &batch(0, 4, 1)), (0, 4));
    drop(wire);
    broker.stop();
}

#[test]
fn sequence_gap_and_older_epoch_get_kafka_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(send(&mut wire, &batch(5, 0, 1)), (0, 0));
    let gap = produce(&mut wire, batch(5, 2, 1));
    assert_eq!(
        gap.error_code,
        ResponseError::OutOfOrderSequenceNumber.code()
    );
    assert_eq!(gap.error_code, 45);
    let fenced = produce(&mut wire, batch(4, 1, 1));
    assert_eq!(
        fenced.error_code,
        ResponseError::InvalidProducerEpoch.code()
    );
    assert_eq!(fenced.error_code, 47);
    // A new epoch starts at sequence 0.
    assert_eq!(send(&mut wire, &batch(6, 0, 1)), (0, 1));

    // Transactional batches wait for the transaction coordinator.
    let plain = batch(6, 1, 1);
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder.producer(PRODUCER, 6, 1).push(RecordSpec::default());
    let mut fields = builder.header_fields();
    fields.attributes |= TRANSACTIONAL;
    let transactional = assemble(&fields, builder.records());
    assert_eq!(
        produce(&mut wire, transactional).error_code,
        ResponseError::InvalidRequest.code()
    );
    assert_eq!(send(&mut wire, &plain), (0, 2), "nothing was stored");
    drop(wire);
    broker.stop();
}

/// Issue 13, design 2.5: a producer idle for `storage.producer_id_expiration_ms`
/// is forgotten by the running broker (its batches' 2023 timestamps are more
/// than the default day old), so a batch that was a sequence gap is then
/// accepted as an unknown producer's (KIP-360).
#[test]
fn idle_producer_expires_and_its_next_batch_is_accepted_at_any_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("expiry.toml");
    std::fs::write(
        &config,
        "[storage]\nproducer_id_expiration_check_interval_ms = 50\n\
         [retention]\ndisk_check_interval_ms = 50\n",
    )
    .unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    kafka_clients::create_topic(&broker.address, TOPIC, 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(send(&mut wire, &batch(0, 0, 2)), (0, 0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let accepted = loop {
        let (error, offset) = send(&mut wire, &batch(0, 10, 1));
        if error == 0 {
            break offset;
        }
        assert_eq!(error, ResponseError::OutOfOrderSequenceNumber.code());
        assert!(
            std::time::Instant::now() < deadline,
            "the producer never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(accepted, 2);
    drop(wire);
    broker.stop();
}
