//! Topic administration and offsets by time, through librdkafka's admin
//! client and consumer, and the raw protocol where librdkafka has no call
//! (IncrementalAlterConfigs).

use std::time::Duration;

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{DescribeConfigsRequest, IncrementalAlterConfigsRequest};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{
    AdminOptions, AlterConfig, ConfigSource, NewPartitions, ResourceSpecifier, TopicReplication,
};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;
use crate::wire::Wire;

fn topic_names(address: &str) -> Vec<String> {
    let admin = kafka_clients::admin(address);
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .map(|topic| topic.name().to_owned())
        .collect()
}

#[test]
fn topics_are_created_grown_and_deleted_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let address = &broker.address;
    kafka_clients::create_topic(address, "managed", 3, &[("retention.ms", "3600000")]);
    assert!(topic_names(address).contains(&"managed".to_owned()));

    let admin = kafka_clients::admin(address);
    let options = AdminOptions::new();
    // Creating it again fails with TOPIC_ALREADY_EXISTS.
    let again =
        rdkafka::admin::NewTopic::new("managed", 3, rdkafka::admin::TopicReplication::Fixed(1));
    let result = futures_executor::block_on(admin.create_topics([&again], &options)).unwrap();
    assert!(
        matches!(&result[0], Err((_, code)) if *code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)
    );
    // Replication factor 3 cannot be honoured by one broker.
    let replicated =
        rdkafka::admin::NewTopic::new("replicated", 1, rdkafka::admin::TopicReplication::Fixed(3));
    let result = futures_executor::block_on(admin.create_topics([&replicated], &options)).unwrap();
    assert!(
        matches!(&result[0], Err((_, code)) if *code == rdkafka::types::RDKafkaErrorCode::InvalidReplicationFactor)
    );

    let grown = futures_executor::block_on(
        admin.create_partitions([&NewPartitions::new("managed", 5)], &options),
    )
    .unwrap();
    assert!(grown[0].is_ok(), "{grown:?}");
    let shrink = futures_executor::block_on(
        admin.create_partitions([&NewPartitions::new("managed", 2)], &options),
    )
    .unwrap();
    assert!(shrink[0].is_err(), "partition counts only grow");
    let produced = {
        let (producer, acks) = kafka_clients::producer(address, &[]);
        kafka_clients::send(
            &producer,
            "managed",
            Some(4),
            None,
            b"on the new partition",
            &[],
        );
        kafka_clients::flush(&producer, &acks)
    };
    assert_eq!(produced[0].partition, 4);

    let deleted = futures_executor::block_on(admin.delete_topics(&["managed"], &options)).unwrap();
    assert!(deleted[0].is_ok(), "{deleted:?}");
    assert!(!topic_names(address).contains(&"managed".to_owned()));
    let missing = futures_executor::block_on(admin.delete_topics(&["managed"], &options)).unwrap();
    assert!(
        missing[0].is_err(),
        "deleting twice reports the unknown topic"
    );

    // The deletion is durable, and the name can be reused from scratch.
    assert!(broker.stop().success());
    let broker = BrokerProcess::start(dir.path(), &[]);
    assert!(!topic_names(&broker.address).contains(&"managed".to_owned()));
    kafka_clients::create_topic(&broker.address, "managed", 1, &[]);
    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "managed", 1),
        vec![0]
    );
}

#[test]
fn topic_configs_are_described_and_altered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let address = &broker.address;
    kafka_clients::create_topic(address, "tuned", 1, &[("retention.ms", "7200000")]);

    let admin = kafka_clients::admin(address);
    let described = futures_executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic("tuned")], &AdminOptions::new()),
    )
    .unwrap();
    let resource = described[0].as_ref().unwrap();
    let entry = |name: &str| {
        resource
            .get(name)
            .unwrap_or_else(|| panic!("{name} is described"))
    };
    assert_eq!(entry("retention.ms").value.as_deref(), Some("7200000"));
    assert!(!entry("retention.ms").is_default);
    assert!(entry("retention.bytes").is_default);
    for key in [
        "cleanup.policy",
        "max.message.bytes",
        "flush.ms",
        "flush.messages",
        "message.timestamp.type",
        "segment.bytes",
    ] {
        entry(key);
    }

    let mut wire = Wire::connect(address);
    let alter = |configs: Vec<AlterableConfig>| {
        IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("tuned"))
                .with_configs(configs),
        ])
    };
    let set = |name: &'static str, value: &'static str| {
        AlterableConfig::default()
            .with_name(StrBytes::from_static_str(name))
            .with_config_operation(0)
            .with_value(Some(StrBytes::from_static_str(value)))
    };
    let response = wire.call(
        1,
        &alter(vec![
            set("retention.bytes", "1048576"),
            set("max.message.bytes", "2048"),
        ]),
    );
    assert_eq!(
        response.responses[0].error_code, 0,
        "{:?}",
        response.responses[0].error_message
    );
    // As Kafka: a config named twice is INVALID_REQUEST, and nothing of
    // the request applies (found by a tester).
    let twice = wire.call(
        1,
        &alter(vec![
            set("retention.ms", "1000"),
            set("retention.ms", "2000"),
        ]),
    );
    assert_eq!(twice.responses[0].error_code, 42, "INVALID_REQUEST");
    let bad = wire.call(1, &alter(vec![set("retention.ms", "soon")]));
    assert_eq!(
        bad.responses[0].error_code,
        kafka_protocol::ResponseError::InvalidConfig.code()
    );
    assert!(
        bad.responses[0]
            .error_message
            .as_ref()
            .unwrap()
            .contains("retention.ms")
    );
    let delete = AlterableConfig::default()
        .with_name(StrBytes::from_static_str("retention.ms"))
        .with_config_operation(1);
    assert_eq!(
        wire.call(1, &alter(vec![delete])).responses[0].error_code,
        0
    );

    let describe = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("tuned"))
            .with_configuration_keys(None),
    ]);
    let configs = &wire.call(4, &describe).results[0].configs;
    let value = |name: &str| {
        configs
            .iter()
            .find(|config| config.name.as_str() == name)
            .unwrap()
            .value
            .as_ref()
            .unwrap()
            .to_string()
    };
    assert_eq!(value("retention.bytes"), "1048576");
    assert_eq!(
        value("retention.ms"),
        "259200000",
        "deleting the override restores the default"
    );

    // The new max.message.bytes is enforced on produce.
    let (producer, acks) = kafka_clients::producer(address, &[("compression.codec", "none")]);
    let big = vec![7u8; 4096];
    producer
        .send(BaseRecord::<(), [u8]>::to("tuned").payload(&big[..]))
        .unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let failed = acks.failed.lock().unwrap().clone();
    assert!(
        failed
            .iter()
            .any(|error| error.contains("MessageSizeTooLarge")),
        "{failed:?}"
    );

    // Configs survive a restart.
    assert!(broker.stop().success());
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let configs = &wire.call(4, &describe).results[0].configs;
    assert!(
        configs
            .iter()
            .any(|config| config.name.as_str() == "retention.bytes"
                && config.value.as_deref() == Some("1048576"))
    );
}

/// The value and source (`ConfigSource`'s name) of each of `names` on
/// `topic`, as librdkafka's admin client describes them.
fn described(address: &str, topic: &str, names: &[&str]) -> Vec<(String, Option<String>, String)> {
    let admin = kafka_clients::admin(address);
    let described = futures_executor::block_on(
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new()),
    )
    .unwrap();
    let resource = described[0].as_ref().unwrap();
    names
        .iter()
        .map(|name| {
            let entry = resource
                .get(name)
                .unwrap_or_else(|| panic!("{name} is described"));
            (
                entry.name.clone(),
                entry.value.clone(),
                format!("{:?}", entry.source),
            )
        })
        .collect()
}

const COMPACTION_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "delete.retention.ms",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "min.cleanable.dirty.ratio",
];

/// Issue 17: `cleanup.policy=compact` and the four compaction configs are
/// accepted at CreateTopics, IncrementalAlterConfigs and AlterConfigs, and
/// Kafka's check that `min.compaction.lag.ms` is not above
/// `max.compaction.lag.ms` holds wherever the two values come from.
#[test]
fn compacted_topic_configs_are_created_described_and_altered() {
    const TOPIC: i8 = 2;
    const SET: i8 = 0;
    const APPEND: i8 = 2;
    const SUBTRACT: i8 = 3;
    let invalid_config = kafka_protocol::ResponseError::InvalidConfig.code();
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let address = &broker.address;
    kafka_clients::create_topic(
        address,
        "changelog",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("delete.retention.ms", "60000"),
            ("min.compaction.lag.ms", "1000"),
            ("max.compaction.lag.ms", "3600000"),
            ("min.cleanable.dirty.ratio", "0.1"),
        ],
    );
    let topic_value = |name: &str, value: &str| {
        (
            name.to_owned(),
            Some(value.to_owned()),
            format!("{:?}", ConfigSource::DynamicTopic),
        )
    };
    assert_eq!(
        described(address, "changelog", COMPACTION_CONFIGS),
        vec![
            topic_value("cleanup.policy", "compact"),
            topic_value("delete.retention.ms", "60000"),
            topic_value("min.compaction.lag.ms", "1000"),
            topic_value("max.compaction.lag.ms", "3600000"),
            topic_value("min.cleanable.dirty.ratio", "0.1"),
        ]
    );

    let mut wire = Wire::connect(address);
    let alter = |wire: &mut Wire, operations: &[(&str, i8, Option<&str>)]| {
        crate::topic_configs::alter_incremental(wire, TOPIC, "changelog", operations)
    };
    let (code, message) = alter(
        &mut wire,
        &[
            ("cleanup.policy", APPEND, Some("delete")),
            ("min.compaction.lag.ms", SET, Some("2000")),
            ("min.cleanable.dirty.ratio", SET, Some("0.75")),
        ],
    );
    assert_eq!(code, 0, "{message}");
    let policy_and_lag = ["cleanup.policy", "min.compaction.lag.ms"];
    assert_eq!(
        described(address, "changelog", &policy_and_lag),
        vec![
            topic_value("cleanup.policy", "compact,delete"),
            topic_value("min.compaction.lag.ms", "2000"),
        ]
    );
    let (code, message) = alter(&mut wire, &[("cleanup.policy", SUBTRACT, Some("delete"))]);
    assert_eq!(code, 0, "{message}");
    assert_eq!(
        described(address, "changelog", &["cleanup.policy"])[0]
            .1
            .as_deref(),
        Some("compact")
    );

    // min.compaction.lag.ms above max.compaction.lag.ms, by either key:
    // INVALID_CONFIG naming both, and nothing of the request applies.
    for operations in [
        vec![("min.compaction.lag.ms", SET, Some("7200000"))],
        vec![
            ("cleanup.policy", APPEND, Some("delete")),
            ("max.compaction.lag.ms", SET, Some("1000")),
        ],
    ] {
        let (code, message) = alter(&mut wire, &operations);
        assert_eq!(code, invalid_config, "{operations:?}: {message}");
        assert!(
            message.contains("min.compaction.lag.ms") && message.contains("max.compaction.lag.ms"),
            "{message}"
        );
    }
    assert_eq!(
        described(address, "changelog", &policy_and_lag),
        vec![
            topic_value("cleanup.policy", "compact"),
            topic_value("min.compaction.lag.ms", "2000"),
        ]
    );
    // The same check at CreateTopics, with librdkafka's error.
    let admin = kafka_clients::admin(address);
    let lagging = rdkafka::admin::NewTopic::new("lagging", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("min.compaction.lag.ms", "10")
        .set("max.compaction.lag.ms", "5");
    let result =
        futures_executor::block_on(admin.create_topics([&lagging], &AdminOptions::new())).unwrap();
    assert!(
        matches!(&result[0], Err((_, code)) if *code == RDKafkaErrorCode::InvalidConfig),
        "{result:?}"
    );
    assert!(!topic_names(address).contains(&"lagging".to_owned()));

    // Legacy AlterConfigs (librdkafka's alter_configs) replaces the whole
    // override set: the policy given stays, the others go back to Kafka's
    // defaults.
    let replace = AlterConfig::new(ResourceSpecifier::Topic("changelog"))
        .set("cleanup.policy", "delete,compact");
    let result =
        futures_executor::block_on(admin.alter_configs([&replace], &AdminOptions::new())).unwrap();
    assert!(result[0].is_ok(), "{result:?}");
    let default_value = |name: &str, value: &str| {
        (
            name.to_owned(),
            Some(value.to_owned()),
            format!("{:?}", ConfigSource::Default),
        )
    };
    assert_eq!(
        described(address, "changelog", COMPACTION_CONFIGS),
        vec![
            topic_value("cleanup.policy", "delete,compact"),
            default_value("delete.retention.ms", "86400000"),
            default_value("min.compaction.lag.ms", "0"),
            default_value("max.compaction.lag.ms", "9223372036854775807"),
            default_value("min.cleanable.dirty.ratio", "0.5"),
        ]
    );
}

#[test]
fn offsets_are_found_by_time_inside_batches() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let address = &broker.address;
    for codec in ["none", "zstd"] {
        let topic = format!("timed-{codec}");
        kafka_clients::create_topic(address, &topic, 1, &[]);
        // 100 records at 1000, 1010, 1020, ...: librdkafka packs them in
        // few batches, so the answer must come from inside a batch.
        let (producer, acks) = kafka_clients::producer(
            address,
            &[("linger.ms", "100"), ("compression.codec", codec)],
        );
        for index in 0..100i64 {
            let payload = format!("t{index}");
            let record = BaseRecord::<(), [u8]>::to(&topic)
                .payload(payload.as_bytes())
                .timestamp(1000 + index * 10);
            producer.send(record).unwrap();
        }
        kafka_clients::flush(&producer, &acks);
        let found = kafka_clients::offsets_for_time(address, &topic, 1, 1255);
        assert_eq!(
            found[&0],
            rdkafka::Offset::Offset(26),
            "{codec}: first record at or after 1255 is t26 (1260)"
        );
        let found = kafka_clients::offsets_for_time(address, &topic, 1, 1000);
        assert_eq!(found[&0], rdkafka::Offset::Offset(0));
        let found = kafka_clients::offsets_for_time(address, &topic, 1, 999_999);
        assert_eq!(
            found[&0],
            rdkafka::Offset::End,
            "{codec}: nothing that late"
        );
    }
}

#[test]
fn log_append_time_replaces_the_producer_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let address = &broker.address;
    kafka_clients::create_topic(
        address,
        "stamped",
        1,
        &[
            ("message.timestamp.type", "LogAppendTime"),
            ("flush.messages", "1"),
        ],
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (producer, acks) = kafka_clients::producer(address, &[("acks", "1")]);
    let record = BaseRecord::<(), [u8]>::to("stamped")
        .payload(&b"when?"[..])
        .timestamp(5);
    producer.send(record).unwrap();
    kafka_clients::flush(&producer, &acks);
    let consumed = kafka_clients::consume(address, "stamped", 1, 0, 1);
    let timestamp = consumed[0].timestamp.expect("a timestamp");
    assert!(
        timestamp >= before,
        "the broker's append time ({timestamp}) replaced the producer's (5)"
    );
}

/// As Kafka, CreateTopics refuses a config named twice (INVALID_REQUEST)
/// and one with a null value (INVALID_CONFIG), and creates nothing; both
/// were accepted, the first with the last value, the second ignored
/// (found by a tester).
#[test]
fn create_topics_refuses_a_config_named_twice_or_without_a_value() {
    use kafka_protocol::messages::CreateTopicsRequest;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};

    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let config = |name: &'static str, value: Option<&'static str>| {
        CreatableTopicConfig::default()
            .with_name(StrBytes::from_static_str(name))
            .with_value(value.map(StrBytes::from_static_str))
    };
    let cases = [
        (
            "twice",
            vec![
                config("retention.ms", Some("1")),
                config("retention.ms", Some("2")),
            ],
            42,
        ),
        ("null", vec![config("retention.ms", None)], 40),
    ];
    for (topic, configs, code) in cases {
        let response = wire.call(
            5,
            &CreateTopicsRequest::default()
                .with_timeout_ms(10_000)
                .with_topics(vec![
                    CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str(topic)))
                        .with_num_partitions(1)
                        .with_replication_factor(1)
                        .with_configs(configs),
                ]),
        );
        assert_eq!(response.topics[0].error_code, code, "{topic}");
        assert!(!topic_names(&broker.address).contains(&topic.to_owned()));
    }
}
