//! Bad input gets the proper Kafka error code, or a clean close with a log
//! line: never a panic, never stored data.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiVersionsResponse, ProduceRequest, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, StrBytes};
use sluice::record_batch::{BatchBuilder, RecordSpec};

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;
use crate::wire::Wire;

pub fn batch(values: usize, value_bytes: usize) -> Vec<u8> {
    let value = vec![b'v'; value_bytes];
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    for _ in 0..values {
        builder.push(RecordSpec {
            key: None,
            value: Some(&value),
            timestamp_delta_ms: 0,
        });
    }
    builder.build()
}

/// Produce `records` to `topic`/`partition` with acks=all; returns the
/// partition's error code.
pub fn produce_code(wire: &mut Wire, topic: &str, partition: i32, records: Vec<u8>) -> i16 {
    produce_with_acks(wire, topic, partition, records, -1)
}

pub fn produce_with_acks(
    wire: &mut Wire,
    topic: &str,
    partition: i32,
    records: Vec<u8>,
    acks: i16,
) -> i16 {
    produce_with_timeout(wire, topic, partition, records, acks, 10_000)
}

/// [`produce_with_acks`] with a request timeout of `timeout_ms`.
pub fn produce_with_timeout(
    wire: &mut Wire,
    topic: &str,
    partition: i32,
    records: Vec<u8>,
    acks: i16,
    timeout_ms: i32,
) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(Bytes::from(records))),
                ]),
        ]);
    let response = wire.call(9, &request);
    response.responses[0].partition_responses[0].error_code
}

#[test]
fn bad_batches_get_kafka_error_codes_and_are_never_stored() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(
        &broker.address,
        "strict",
        1,
        &[("max.message.bytes", "4096")],
    );
    let mut wire = Wire::connect(&broker.address);

    let mut flipped = batch(3, 10);
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    assert_eq!(
        produce_code(&mut wire, "strict", 0, flipped),
        ResponseError::CorruptMessage.code(),
        "bad CRC"
    );

    let mut old_magic = batch(1, 10);
    old_magic[16] = 1;
    assert_eq!(
        produce_code(&mut wire, "strict", 0, old_magic),
        ResponseError::InvalidRecord.code(),
        "wrong magic"
    );

    let truncated = batch(2, 10)[..40].to_vec();
    assert_eq!(
        produce_code(&mut wire, "strict", 0, truncated),
        ResponseError::CorruptMessage.code(),
        "truncated batch"
    );

    assert_eq!(
        produce_code(&mut wire, "strict", 0, batch(10, 1000)),
        ResponseError::MessageTooLarge.code(),
        "over max.message.bytes"
    );
    assert_eq!(
        produce_code(&mut wire, "strict", 7, batch(1, 10)),
        ResponseError::UnknownTopicOrPartition.code(),
        "unknown partition"
    );
    assert_eq!(
        produce_code(&mut wire, "bad/name", 0, batch(1, 10)),
        ResponseError::InvalidTopicException.code(),
        "invalid topic name"
    );
    assert_eq!(
        produce_with_acks(&mut wire, "strict", 0, batch(1, 10), 2),
        ResponseError::InvalidRequiredAcks.code(),
        "acks=2"
    );

    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "strict", 1),
        vec![0],
        "nothing invalid was stored"
    );
    assert_eq!(
        produce_code(&mut wire, "strict", 0, batch(1, 10)),
        0,
        "the same connection still works"
    );
    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "strict", 1),
        vec![1]
    );
    assert!(!broker.log().iter().any(|line| line.contains("panicked")));
}

/// acks=0 has no answer to carry an error, so a failed acks=0 Produce
/// closes the connection (Kafka's KafkaApis does the same), and the client
/// notices instead of losing every later record silently; one that
/// succeeds keeps it.
#[test]
fn a_failed_acks_zero_produce_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    kafka_clients::create_topic(&broker.address, "quiet", 1, &[]);
    let mut wire = Wire::connect(&broker.address);
    let send = |wire: &mut Wire, partition: i32| {
        wire.send(
            9,
            &ProduceRequest::default()
                .with_acks(0)
                .with_timeout_ms(10_000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_static_str("quiet")))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(partition)
                                .with_records(Some(Bytes::from(batch(1, 10)))),
                        ]),
                ]),
        );
    };
    send(&mut wire, 0);
    // Still open: the next request is answered (and the record is stored).
    assert_eq!(produce_code(&mut wire, "quiet", 0, batch(1, 10)), 0);
    send(&mut wire, 7);
    wire.set_read_timeout(std::time::Duration::from_secs(5));
    assert!(
        wire.closed_by_broker(),
        "a failed acks=0 produce left the connection open"
    );
    assert!(broker.wait_for_log("an acks=0 Produce failed (UnknownTopicOrPartition on quiet-7)"));
    assert!(
        crate::metrics::value(
            &broker.metrics,
            "sluice_kafka_connections_closed_bad_input_total{reason=\"acks0_produce_failed\"}"
        ) >= 1.0
    );
}

#[test]
fn api_versions_of_any_version_answers_with_the_v0_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    // ApiVersions v9: header v2 (key, version, correlation id, client id, tags).
    let mut request = vec![0, 18, 0, 9, 0, 0, 0, 42, 0, 4];
    request.extend_from_slice(b"test");
    request.push(0);
    wire.send_raw(&request);
    let mut frame = wire.read_frame().unwrap();
    let header = ResponseHeader::decode(&mut frame, 0).unwrap();
    assert_eq!(header.correlation_id, 42);
    let response = ApiVersionsResponse::decode(&mut frame, 0).unwrap();
    assert_eq!(
        response.error_code,
        ResponseError::UnsupportedVersion.code()
    );
    assert!(
        response
            .api_keys
            .iter()
            .any(|key| key.api_key == 18 && key.max_version >= 3)
    );
    assert!(
        response
            .api_keys
            .iter()
            .any(|key| key.api_key == 0 && key.min_version == 3)
    );
}

/// Requests that leave the stream untrustworthy end the connection, with a
/// log line saying why.
#[test]
fn malformed_requests_close_the_connection_with_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "negative size",
            vec![0xff, 0xff, 0xff, 0xff],
            "is not positive",
        ),
        (
            "size over kafka.request_max_bytes",
            200_000_000i32.to_be_bytes().to_vec(),
            "exceeds kafka.request_max_bytes",
        ),
        (
            "unknown API key",
            frame(&[0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff]),
            "unknown API key 9999",
        ),
        (
            "unsupported Produce version",
            frame(&[0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff]),
            "Produce v1 is not supported",
        ),
        (
            "garbage body",
            frame(&[
                0, 0, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0, 0x99, 0x99, 0x99, 0x99,
            ]),
            "malformed Produce v9",
        ),
    ];
    for (what, bytes, logged) in cases {
        let mut wire = Wire::connect(&broker.address);
        wire.send_bytes(&bytes);
        assert!(wire.closed_by_broker(), "{what}: the connection is closed");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            broker.log_contains(logged),
            "{what}: logged {logged:?}\n{:#?}",
            broker.log()
        );
    }
    // The broker keeps serving.
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(produce_code(&mut wire, "after", 0, batch(1, 1)), 0);
    assert!(!broker.log().iter().any(|line| line.contains("panicked")));
}

/// A frame: size prefix then `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Issue 12 (found by a new user): every connection closed for bad input
/// logged a WARN line, so any client that reached the port could flood the
/// log (500 connections with a size prefix of -1: 500 lines; a decoder
/// error also ended its line with an empty one). Now at most 20 lines per
/// 10 s, and a counter by reason has them all (the empty line:
/// `error_chain`'s unit tests).
#[test]
fn connections_closed_for_bad_input_are_counted_and_their_log_lines_throttled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    for _ in 0..10 {
        let mut wire = Wire::connect(&broker.address);
        // Produce v9 whose body stops after the transactional id.
        wire.send_bytes(&frame(&[0, 0, 0, 9, 0, 0, 0, 1, 0xff, 0xff, 0, 0]));
        assert!(wire.closed_by_broker());
    }
    for _ in 0..100 {
        let mut wire = Wire::connect(&broker.address);
        wire.send_bytes(&(-1i32).to_be_bytes());
        assert!(wire.closed_by_broker());
    }
    let (_, metrics) = crate::metrics::get(&broker.metrics, "/metrics");
    let counted = |reason: &str| {
        let prefix =
            format!("sluice_kafka_connections_closed_bad_input_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(counted("bad_size"), 100.0);
    assert_eq!(counted("bad_request"), 10.0);
    let log = broker.log();
    let lines = log
        .iter()
        .filter(|line| line.contains("closed a connection for bad input"))
        .count();
    assert!((10..=20).contains(&lines), "{lines} lines:\n{log:#?}");
    assert!(broker.log_contains("malformed Produce v9 request"));
}

/// Issue 14: ApiVersions v3 names the client's software; a name or
/// version outside KIP-511's pattern ("RP Console", "-lead") gets
/// INVALID_REQUEST and no API list, as Kafka answers.
#[test]
fn api_versions_v3_refuses_software_names_outside_kip_511() {
    use kafka_protocol::messages::ApiVersionsRequest;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let ask = |wire: &mut Wire, name: &'static str, version: &'static str| {
        wire.call(
            3,
            &ApiVersionsRequest::default()
                .with_client_software_name(StrBytes::from_static_str(name))
                .with_client_software_version(StrBytes::from_static_str(version)),
        )
    };
    let invalid = kafka_protocol::ResponseError::InvalidRequest.code();
    for (name, version) in [("RP Console", "1.0"), ("-lead", "1.0"), ("client", "")] {
        let response = ask(&mut wire, name, version);
        assert_eq!(response.error_code, invalid, "{name:?} {version:?}");
        assert!(response.api_keys.is_empty());
    }
    let response = ask(&mut wire, "librdkafka", "2.16.0");
    assert_eq!(response.error_code, 0);
    assert!(!response.api_keys.is_empty());
    broker.stop();
}
