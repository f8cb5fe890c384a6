//! Idempotent producers against the real binary (issue 13): InitProducerId
//! and idempotent Produce on the raw wire (most batches carry a producer id
//! picked by hand, as a client stamps them after InitProducerId), and
//! librdkafka's idempotent producer end to end.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{
    ApiVersionsRequest, DeleteTopicsRequest, InitProducerIdRequest, ListOffsetsRequest,
    ProduceRequest, ProducerId, TopicName, TransactionalId,
};
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
    // The hand-picked id was never allocated: the allocator, finding it in
    // the log, hands out ids past it (design section 1, belt and braces).
    let (error, allocated, _) = init_producer_id(&mut wire, 4, &idempotent_init());
    assert_eq!(error, 0);
    assert!(
        allocated > PRODUCER,
        "allocated {allocated}, in use {PRODUCER}"
    );
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

fn init_producer_id(
    wire: &mut Wire,
    version: i16,
    request: &InitProducerIdRequest,
) -> (i16, i64, i16) {
    let response = wire.call(version, request);
    (
        response.error_code,
        response.producer_id.0,
        response.producer_epoch,
    )
}

fn idempotent_init() -> InitProducerIdRequest {
    InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

/// (log start, next offset) of `__producer_ids-0`.
fn producer_ids_offsets(wire: &mut Wire) -> (i64, i64) {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let at = |wire: &mut Wire, timestamp: i64| {
        let request = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("__producer_ids")))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(timestamp),
                    ]),
            ]);
        let mut response = wire.call(5, &request);
        let partition = response.topics.remove(0).partitions.remove(0);
        assert_eq!(partition.error_code, 0);
        partition.offset
    };
    (at(wire, -2), at(wire, -1))
}

/// Issue 13, design section 1: every InitProducerId version a client sends
/// gets a new producer id and epoch 0; ids come from durable blocks, so
/// after kill -9 every id handed out is past every id handed out before,
/// and the allocator's log keeps only its newest record.
#[test]
fn init_producer_id_never_hands_out_an_id_twice_even_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let advertised = wire.call(
        3,
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("sluice-tests"))
            .with_client_software_version(StrBytes::from_static_str("1.0")),
    );
    let entry = advertised
        .api_keys
        .iter()
        .find(|entry| entry.api_key == 22)
        .expect("InitProducerId is advertised");
    assert_eq!((entry.min_version, entry.max_version), (0, 4));

    let mut before = Vec::new();
    for version in 0..=4 {
        let (error, id, epoch) = init_producer_id(&mut wire, version, &idempotent_init());
        assert_eq!((error, epoch), (0, 0), "InitProducerId v{version}");
        before.push(id);
    }
    // A KIP-360 bump of a non-transactional producer gets a fresh id too.
    let bump = idempotent_init()
        .with_producer_id(ProducerId(before[4]))
        .with_producer_epoch(0);
    let (error, id, epoch) = init_producer_id(&mut wire, 4, &bump);
    assert_eq!((error, epoch), (0, 0));
    before.push(id);
    // Past one block of 1000 on this connection's shard.
    for _ in 0..1500 {
        before.push(init_producer_id(&mut wire, 1, &idempotent_init()).1);
    }
    let mut sorted = before.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), before.len(), "ids are unique");
    assert!(
        before.windows(2).all(|pair| pair[0] < pair[1]),
        "one shard hands out its ids in increasing order"
    );
    let (log_start, next) = producer_ids_offsets(&mut wire);
    assert!(
        next >= 2,
        "at least two blocks were stored, next offset {next}"
    );
    assert_eq!(
        log_start,
        next - 1,
        "the newest block record states everything: the older ones are released"
    );
    drop(wire);
    broker.kill9();

    let broker = BrokerProcess::start(dir.path(), &[]);
    let largest_before = *before.iter().max().unwrap();
    for _ in 0..4 {
        let mut wire = Wire::connect(&broker.address);
        for _ in 0..20 {
            let (error, id, _) = init_producer_id(&mut wire, 4, &idempotent_init());
            assert_eq!(error, 0);
            assert!(
                id > largest_before,
                "id {id} after kill -9 is not past {largest_before}, the largest handed out before"
            );
        }
    }
    broker.stop();
}

/// Issue 13: Kafka's request rules for InitProducerId: a half-given
/// producer id and epoch, an empty transactional id and a transaction
/// timeout above `transactions.max_timeout_ms` are refused. The allocator's
/// and the coordinator's topics are internal.
#[test]
fn init_producer_id_refuses_half_given_ids_and_bad_transactional_requests() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let invalid = ResponseError::InvalidRequest.code();
    let id_without_epoch = idempotent_init().with_producer_id(ProducerId(5));
    assert_eq!(
        init_producer_id(&mut wire, 3, &id_without_epoch),
        (invalid, -1, -1)
    );
    let epoch_without_id = idempotent_init().with_producer_epoch(2);
    assert_eq!(
        init_producer_id(&mut wire, 3, &epoch_without_id),
        (invalid, -1, -1)
    );
    let empty = idempotent_init()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(""))));
    assert_eq!(init_producer_id(&mut wire, 4, &empty), (invalid, -1, -1));
    let too_long = idempotent_init()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str("txn-1"))))
        .with_transaction_timeout_ms(900_001);
    assert_eq!(
        init_producer_id(&mut wire, 4, &too_long),
        (ResponseError::InvalidTransactionTimeout.code(), -1, -1)
    );
    for internal in ["__producer_ids", "__transaction_state"] {
        let delete = DeleteTopicsRequest::default()
            .with_topic_names(vec![TopicName(StrBytes::from_static_str(internal))])
            .with_timeout_ms(5_000);
        let response = wire.call(4, &delete);
        assert_ne!(
            response.responses[0].error_code, 0,
            "{internal} is internal and cannot be deleted"
        );
    }
    drop(wire);
    broker.stop();
}

/// Issue 13: librdkafka's idempotent producer (what confluent-kafka, kcat
/// and Quix Streams use) gets its id, and a retried batch is stored once:
/// every record is read back exactly once.
#[test]
fn librdkafka_idempotent_producer_stores_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, TOPIC, 3, &[]);
    let (producer, acks) =
        kafka_clients::producer(&broker.address, &[("enable.idempotence", "true")]);
    let sent: Vec<String> = (0..3000).map(|index| format!("value-{index}")).collect();
    for (index, value) in sent.iter().enumerate() {
        let partition = Some((index % 3) as i32);
        kafka_clients::send(&producer, TOPIC, partition, None, value.as_bytes(), &[]);
    }
    let delivered = kafka_clients::flush(&producer, &acks);
    assert_eq!(delivered.len(), sent.len(), "every record acknowledged");
    assert!(broker.log_contains("allocated a producer-id block"));
    let mut read: Vec<String> = kafka_clients::consume(&broker.address, TOPIC, 3, 0, sent.len())
        .into_iter()
        .map(|record| String::from_utf8(record.payload).unwrap())
        .collect();
    read.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(read, expected, "every record exactly once");
    broker.stop();
}

/// Issue 13, design section 1 ("Space"): the allocator's newest record is
/// copied forward once segments roll past it, so `__producer_ids` never
/// keeps retention from deleting its shard's old segments.
#[test]
fn the_newest_producer_id_block_is_copied_forward_as_segments_roll() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small-segments.toml");
    std::fs::write(&config, "[storage]\nsegment_bytes = 2097152\n").unwrap();
    let broker = BrokerProcess::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(init_producer_id(&mut wire, 4, &idempotent_init()).0, 0);
    assert_eq!(producer_ids_offsets(&mut wire), (0, 1));
    kafka_clients::create_topic(&broker.address, "filler", 2, &[]);
    let (producer, acks) = kafka_clients::producer(&broker.address, &[]);
    let value = vec![b'x'; 8192];
    for index in 0..1000 {
        kafka_clients::send(&producer, "filler", Some(index % 2), None, &value, &[]);
    }
    kafka_clients::flush(&producer, &acks);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let (log_start, next) = producer_ids_offsets(&mut wire);
        if log_start > 0 {
            assert_eq!(log_start, next - 1, "only the newest record is kept");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the block record was never copied forward"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The copy is the same block: the next id still comes after it.
    assert_eq!(init_producer_id(&mut wire, 4, &idempotent_init()).0, 0);
    drop(wire);
    broker.stop();
}
