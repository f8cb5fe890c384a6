//! Pipelined requests on one connection: served concurrently, applied in
//! request order, answered in request order.

use std::net::Shutdown;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse,
    ListOffsetsRequest, ProduceRequest, ProduceResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Request, StrBytes};
use sluice::record_batch::{BatchBuilder, RecordSpec};

use crate::broker_process::BrokerProcess;
use crate::wire::Wire;

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn batch(value: &[u8]) -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder.push(RecordSpec {
        key: None,
        value: Some(value),
        timestamp_delta_ms: 0,
    });
    Bytes::from(builder.build())
}

fn produce(topic: &str, partition: i32, value: &[u8]) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(batch(value))),
                ]),
        ])
}

fn create_topic(topic: &str, partitions: i32) -> CreateTopicsRequest {
    CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ])
}

/// Read the next response, check it answers `correlation_id`, decode it.
fn receive<R: Request>(wire: &mut Wire, version: i16, correlation_id: i32) -> R::Response {
    let mut frame = wire.read_frame().expect("the broker answers");
    let key = ApiKey::try_from(R::KEY).unwrap();
    let header = ResponseHeader::decode(&mut frame, key.response_header_version(version)).unwrap();
    assert_eq!(
        header.correlation_id, correlation_id,
        "responses come in request order"
    );
    R::Response::decode(&mut frame, version).unwrap()
}

fn log_end_offset(wire: &mut Wire, topic: &str, partition: i32) -> i64 {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(-1),
                ]),
        ]);
    let response = wire.call(7, &request);
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    partition.offset
}

/// A topic created and written in one burst of requests: each request sees
/// what the ones before it did, and appends land in request order.
#[test]
fn pipelined_requests_apply_and_answer_in_request_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[kafka]\nauto_create_topics = false\n").unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &["--config", config.to_str().unwrap()]);
    let mut wire = Wire::connect(&broker.address);
    let create_id = wire.send(5, &create_topic("burst", 3));
    let produce_ids: Vec<i32> = (0..100)
        .map(|index| wire.send(9, &produce("burst", 2, format!("value-{index}").as_bytes())))
        .collect();

    let created: CreateTopicsResponse = receive::<CreateTopicsRequest>(&mut wire, 5, create_id);
    assert_eq!(
        created.topics[0].error_code, 0,
        "{:?}",
        created.topics[0].error_message
    );
    for (index, id) in produce_ids.into_iter().enumerate() {
        let response: ProduceResponse = receive::<ProduceRequest>(&mut wire, 9, id);
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(
            partition.error_code, 0,
            "produce {index}: {:?}",
            partition.error_message
        );
        assert_eq!(
            partition.base_offset, index as i64,
            "produce {index} appended in request order"
        );
    }
    assert_eq!(log_end_offset(&mut wire, "burst", 2), 100);
}

/// A Fetch of partition 0 from offset 0 that waits up to `max_wait_ms` for a byte.
/// A Fetch of partition 0 of `topic` from offset 0 that waits up to
/// `max_wait_ms` for a byte.
pub fn long_poll(topic: &str, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ])
}

/// A long-poll Fetch does not hold up the requests behind it: a Produce sent
/// after it on the same connection runs meanwhile and wakes it with data.
#[test]
fn a_waiting_fetch_does_not_block_the_produce_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    wire.call(5, &create_topic("wake", 1));

    let fetch_id = wire.send(12, &long_poll("wake", 8_000));
    let produce_id = wire.send(9, &produce("wake", 0, b"wake up"));

    let fetched: FetchResponse = receive::<FetchRequest>(&mut wire, 12, fetch_id);
    let partition = &fetched.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert_eq!(
        partition.high_watermark, 1,
        "the produce behind the fetch ran while it waited"
    );
    assert!(
        partition
            .records
            .as_ref()
            .is_some_and(|records| !records.is_empty())
    );
    let produced: ProduceResponse = receive::<ProduceRequest>(&mut wire, 9, produce_id);
    assert_eq!(produced.responses[0].partition_responses[0].error_code, 0);
}

/// After a request that closes the connection nothing behind it runs, even
/// while a request before it is still in progress (a long poll here); the
/// requests before it are answered first.
#[test]
fn nothing_behind_a_bad_request_runs() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    wire.call(5, &create_topic("halt", 1));

    let before = wire.send(12, &long_poll("halt", 1_000));
    wire.send_raw(&[0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff]); // unknown API key
    for index in 0..20 {
        wire.send(9, &produce("halt", 0, format!("after-{index}").as_bytes()));
    }
    let answered: FetchResponse = receive::<FetchRequest>(&mut wire, 12, before);
    assert_eq!(
        answered.responses[0].partitions[0].high_watermark, 0,
        "the produces behind the bad request did not run while the fetch waited"
    );
    assert!(wire.closed_by_broker(), "closed at the bad request");
    assert!(
        broker.wait_for_log("unknown API key 9999"),
        "{:#?}",
        broker.log()
    );

    let mut wire = Wire::connect(&broker.address);
    assert_eq!(
        log_end_offset(&mut wire, "halt", 0),
        0,
        "no produce after the bad request was stored"
    );
}

/// A client that sends its requests and shuts down its side still gets
/// every answer before the broker closes.
#[test]
fn requests_sent_before_a_half_close_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let ids: Vec<i32> = (0..10)
        .map(|index| wire.send(9, &produce("half", 0, &[index])))
        .collect();
    wire.shutdown(Shutdown::Write);
    for (index, id) in ids.into_iter().enumerate() {
        let response: ProduceResponse = receive::<ProduceRequest>(&mut wire, 9, id);
        assert_eq!(
            response.responses[0].partition_responses[0].base_offset,
            index as i64
        );
    }
    assert!(wire.closed_by_broker());
}
