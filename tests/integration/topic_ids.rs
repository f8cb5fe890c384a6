//! Topic ids end to end (issue 14, KIP-516): each topic gets a random id
//! that survives restarts and changes when the topic is created again;
//! Metadata returns and resolves them, and Fetch 13+, Produce 13 and
//! DeleteTopics 6 name topics by them, with UNKNOWN_TOPIC_ID for an id no
//! live topic has. Raw requests through `wire.rs`; librdkafka (which uses
//! Fetch by id against this broker) is covered by `real_clients_read_by_topic_id`.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::metadata_response::MetadataResponseTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, MetadataRequest, MetadataResponse,
    ProduceRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use uuid::Uuid;

use crate::broker_process::BrokerProcess;
use crate::kafka_bad_input::{batch, produce_code};
use crate::kafka_clients;
use crate::wire::Wire;

const UNKNOWN_TOPIC_ID: i16 = 100;

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

/// Create `topic` with CreateTopics v7, which returns its id.
pub fn create(wire: &mut Wire, topic: &str, partitions: i32) -> Uuid {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ]);
    let response = wire.call(7, &request);
    assert_eq!(response.topics[0].error_code, 0, "{response:?}");
    response.topics[0].topic_id
}

/// Delete `topic` by name (DeleteTopics v5).
fn delete_by_name(wire: &mut Wire, topic: &str) {
    let request = DeleteTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topic_names(vec![name(topic)]);
    let response = wire.call(5, &request);
    assert_eq!(response.responses[0].error_code, 0, "{response:?}");
}

fn delete_v6(wire: &mut Wire, topics: Vec<DeleteTopicState>) -> Vec<DeletableTopicResult> {
    let request = DeleteTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(topics);
    wire.call(6, &request).responses
}

fn by_id(id: Uuid) -> DeleteTopicState {
    DeleteTopicState::default().with_topic_id(id)
}

fn by_name(topic: &str) -> DeleteTopicState {
    DeleteTopicState::default().with_name(Some(name(topic)))
}

fn metadata(wire: &mut Wire, version: i16, topics: Vec<MetadataRequestTopic>) -> MetadataResponse {
    let request = MetadataRequest::default()
        .with_topics(Some(topics))
        .with_allow_auto_topic_creation(false);
    wire.call(version, &request)
}

fn metadata_by_name(wire: &mut Wire, version: i16, topic: &str) -> MetadataResponseTopic {
    let topics = vec![MetadataRequestTopic::default().with_name(Some(name(topic)))];
    metadata(wire, version, topics).topics.remove(0)
}

fn metadata_by_id(wire: &mut Wire, id: Uuid) -> MetadataResponseTopic {
    let topics = vec![MetadataRequestTopic::default().with_topic_id(id)];
    metadata(wire, 12, topics).topics.remove(0)
}

/// Fetch partitions `partitions` of the topic with id `id` from offset 0,
/// without waiting.
fn fetch_by_id(wire: &mut Wire, version: i16, id: Uuid, partitions: &[i32]) -> Vec<PartitionData> {
    let partitions = partitions
        .iter()
        .map(|&index| {
            FetchPartition::default()
                .with_partition(index)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)
        })
        .collect();
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic_id(id)
                .with_partitions(partitions),
        ]);
    let mut response = wire.call(version, &request);
    assert_eq!(response.error_code, 0, "v{version}: {response:?}");
    assert_eq!(response.responses.len(), 1, "v{version}");
    assert_eq!(
        response.responses[0].topic_id, id,
        "v{version}: topics are named by id"
    );
    response.responses.remove(0).partitions
}

/// Produce one batch of `records` records to partition 0 of the topic with
/// id `id` (Produce v13); returns (error code, base offset).
fn produce_by_id(wire: &mut Wire, id: Uuid, records: usize) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_topic_id(id)
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(batch(records, 8)))),
                ]),
        ]);
    let response = wire.call(13, &request);
    assert_eq!(response.responses[0].topic_id, id);
    let partition = &response.responses[0].partition_responses[0];
    (partition.error_code, partition.base_offset)
}

/// Kafka's topic ids are version-4 UUIDs drawn at random, never zero.
fn assert_fresh_uuid(id: Uuid) {
    assert!(!id.is_nil());
    assert_eq!(id.get_version_num(), 4, "{id}");
    assert_eq!(id.as_bytes()[8] & 0xc0, 0x80, "RFC 4122 variant: {id}");
}

/// Issue 14: a topic's id is persisted with it (the same after a restart,
/// in Metadata v10+ and resolvable by Metadata v12+), and a topic deleted
/// and created again under its name gets a new id; the old one is then
/// UNKNOWN_TOPIC_ID.
#[test]
fn topic_ids_survive_restarts_and_a_recreated_topic_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let first = create(&mut wire, "kept", 2);
    assert_fresh_uuid(first);
    for version in [10, 11, 12, 13] {
        let topic = metadata_by_name(&mut wire, version, "kept");
        assert_eq!((topic.error_code, topic.topic_id), (0, first), "v{version}");
    }
    let other = create(&mut wire, "other", 1);
    assert_ne!(other, first, "each topic has its own id");

    drop(wire);
    broker.stop();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(metadata_by_name(&mut wire, 12, "kept").topic_id, first);
    let found = metadata_by_id(&mut wire, first);
    assert_eq!(found.error_code, 0);
    assert_eq!(found.name, Some(name("kept")));
    assert_eq!(found.partitions.len(), 2);

    delete_by_name(&mut wire, "kept");
    let second = create(&mut wire, "kept", 2);
    assert_fresh_uuid(second);
    assert_ne!(second, first, "a re-created topic gets a new id");
    assert_eq!(metadata_by_name(&mut wire, 12, "kept").topic_id, second);
    let stale = metadata_by_id(&mut wire, first);
    assert_eq!(stale.error_code, UNKNOWN_TOPIC_ID);
    assert_eq!((stale.name, stale.topic_id), (None, first));
    assert_eq!(metadata_by_id(&mut wire, second).name, Some(name("kept")));
}

/// Issue 14: Metadata follows Kafka's rules for ids: a topic with no name
/// before v12 makes the request INVALID_REQUEST, a v12 request that names
/// any topic by id is answered by id only (never auto-creating), and v13
/// carries a top-level error code.
#[test]
fn metadata_resolves_ids_from_v12_and_refuses_nameless_topics_before() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let id = create(&mut wire, "described", 3);

    let nameless = vec![MetadataRequestTopic::default().with_topic_id(id)];
    let refused = metadata(&mut wire, 11, nameless);
    assert_eq!(
        refused.topics[0].error_code,
        ResponseError::InvalidRequest.code()
    );
    let mixed = vec![
        MetadataRequestTopic::default().with_name(Some(name("auto-created-if-named"))),
        MetadataRequestTopic::default().with_topic_id(id),
        MetadataRequestTopic::default().with_topic_id(Uuid::from_bytes([9; 16])),
    ];
    let request = MetadataRequest::default()
        .with_topics(Some(mixed))
        .with_allow_auto_topic_creation(true);
    let answered: MetadataResponse = wire.call(13, &request);
    assert_eq!(answered.error_code, 0, "v13's top-level code");
    let found: Vec<(Option<TopicName>, i16)> = answered
        .topics
        .iter()
        .map(|topic| (topic.name.clone(), topic.error_code))
        .collect();
    assert_eq!(
        found,
        vec![(Some(name("described")), 0), (None, UNKNOWN_TOPIC_ID)],
        "by id only; the named topic is neither described nor created"
    );
    let all: MetadataResponse = wire.call(12, &MetadataRequest::default().with_topics(None));
    assert!(
        all.topics
            .iter()
            .all(|topic| topic.name != Some(name("auto-created-if-named")))
    );
}

/// Issue 14: Fetch 13+ names topics by id: every version up to 18 reads what
/// was produced; an id never issued, or the id of a topic since deleted and
/// created again, gets UNKNOWN_TOPIC_ID per partition, and the new id reads
/// the new (empty) topic.
#[test]
fn fetch_by_topic_id_reads_data_and_a_stale_id_gets_unknown_topic_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let old = create(&mut wire, "fetched", 2);
    assert_eq!(produce_code(&mut wire, "fetched", 1, batch(3, 16)), 0);
    for version in 13..=18 {
        let partitions = fetch_by_id(&mut wire, version, old, &[0, 1, 7]);
        let codes: Vec<i16> = partitions.iter().map(|p| p.error_code).collect();
        let unknown_partition = ResponseError::UnknownTopicOrPartition.code();
        assert_eq!(codes, vec![0, 0, unknown_partition], "v{version}");
        assert_eq!(partitions[1].high_watermark, 3, "v{version}");
        assert!(
            partitions[1]
                .records
                .as_ref()
                .is_some_and(|r| !r.is_empty()),
            "v{version}: the batch is sent"
        );
    }
    let never = fetch_by_id(&mut wire, 13, Uuid::from_bytes([3; 16]), &[0]);
    assert_eq!(never[0].error_code, UNKNOWN_TOPIC_ID);

    delete_by_name(&mut wire, "fetched");
    let new = create(&mut wire, "fetched", 2);
    for version in [13, 16, 18] {
        let stale = fetch_by_id(&mut wire, version, old, &[0, 1]);
        assert!(
            stale.iter().all(|p| p.error_code == UNKNOWN_TOPIC_ID),
            "v{version}: {stale:?}"
        );
        let fresh = fetch_by_id(&mut wire, version, new, &[1]);
        assert_eq!(
            (fresh[0].error_code, fresh[0].high_watermark),
            (0, 0),
            "v{version}"
        );
    }
}

/// Issue 14: Produce 13 names topics by id; an unknown id gets
/// UNKNOWN_TOPIC_ID and creates nothing, even with auto-creation on.
#[test]
fn produce_v13_writes_by_topic_id_and_never_creates_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let id = create(&mut wire, "produced", 1);
    assert_eq!(produce_by_id(&mut wire, id, 2), (0, 0));
    assert_eq!(produce_by_id(&mut wire, id, 3), (0, 2));
    let read = fetch_by_id(&mut wire, 13, id, &[0]);
    assert_eq!(read[0].high_watermark, 5);
    let all_topics = |wire: &mut Wire| {
        let all: MetadataResponse = wire.call(12, &MetadataRequest::default().with_topics(None));
        all.topics.len()
    };
    let before = all_topics(&mut wire);
    let unknown = Uuid::from_bytes([5; 16]);
    assert_eq!(produce_by_id(&mut wire, unknown, 1).0, UNKNOWN_TOPIC_ID);
    assert_eq!(all_topics(&mut wire), before, "nothing was created");
}

/// Issue 14: DeleteTopics v6 deletes by name or by id and answers as Kafka:
/// name and id together, or neither, INVALID_REQUEST; an unknown id
/// UNKNOWN_TOPIC_ID; an unknown name UNKNOWN_TOPIC_OR_PARTITION; a name
/// listed twice, or a name whose topic's id is also listed, one
/// INVALID_REQUEST and nothing deleted.
#[test]
fn delete_topics_v6_deletes_by_id_and_refuses_what_kafka_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let a = create(&mut wire, "del-a", 1);
    let b = create(&mut wire, "del-b", 1);
    let c = create(&mut wire, "del-c", 1);
    let invalid = ResponseError::InvalidRequest.code();

    let results = delete_v6(
        &mut wire,
        vec![
            by_id(a),
            by_name("del-b"),
            by_name("del-c").with_topic_id(c),
            by_id(Uuid::from_bytes([4; 16])),
            by_name("del-nope"),
            DeleteTopicState::default(),
        ],
    );
    let seen: Vec<(Option<TopicName>, Uuid, i16)> = results
        .iter()
        .map(|result| (result.name.clone(), result.topic_id, result.error_code))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Some(name("del-a")), a, 0),
            (Some(name("del-b")), b, 0),
            (Some(name("del-c")), c, invalid),
            (None, Uuid::from_bytes([4; 16]), UNKNOWN_TOPIC_ID),
            (
                Some(name("del-nope")),
                Uuid::nil(),
                ResponseError::UnknownTopicOrPartition.code()
            ),
            (None, Uuid::nil(), invalid),
        ]
    );
    assert_eq!(metadata_by_name(&mut wire, 12, "del-a").error_code, 3);
    assert_eq!(metadata_by_name(&mut wire, 12, "del-c").error_code, 0);

    let twice = delete_v6(&mut wire, vec![by_name("del-c"), by_name("del-c")]);
    assert_eq!(twice.len(), 1, "{twice:?}");
    assert_eq!(twice[0].error_code, invalid);
    let both_ways = delete_v6(&mut wire, vec![by_id(c), by_name("del-c")]);
    assert_eq!(both_ways.len(), 1, "{both_ways:?}");
    assert_eq!(
        (
            both_ways[0].name.clone(),
            both_ways[0].topic_id,
            both_ways[0].error_code
        ),
        (Some(name("del-c")), c, invalid)
    );
    assert_eq!(metadata_by_name(&mut wire, 12, "del-c").error_code, 0);

    assert_eq!(delete_v6(&mut wire, vec![by_id(c)])[0].error_code, 0);
    assert_eq!(
        delete_v6(&mut wire, vec![by_id(c)])[0].error_code,
        UNKNOWN_TOPIC_ID
    );
}

/// Issue 14: librdkafka negotiates the topic-id versions (Metadata 12+,
/// Fetch 13+) against this broker and consumes through them, also after the
/// topic was deleted and created again under its name (a new id).
#[test]
fn real_clients_read_by_topic_id() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let address = &broker.address;
    for round in 0..2 {
        kafka_clients::create_topic(address, "rd-ids", 1, &[]);
        let (producer, acks) = kafka_clients::producer(address, &[]);
        let value = format!("round {round}");
        kafka_clients::send(&producer, "rd-ids", Some(0), None, value.as_bytes(), &[]);
        kafka_clients::flush(&producer, &acks);
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", address)
            .set("group.id", format!("rd-ids-{round}"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["rd-ids"]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut read = None;
        while read.is_none() && std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(200)) {
                let message = message.expect("the consumer reads without error");
                read = message.payload().map(<[u8]>::to_vec);
            }
        }
        assert_eq!(read.as_deref(), Some(value.as_bytes()), "round {round}");
        drop(consumer);
        let mut wire = Wire::connect(address);
        delete_by_name(&mut wire, "rd-ids");
    }
}
