//! Client quotas (issue 20 item 5): `sluice quotas`; kcat producers and
//! consumers of two users at once, one under a byte-rate quota that holds
//! it to about its rate (measured) while the other runs free; and a client
//! in a Metadata loop held to its `request_percentage` of a thread.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AlterClientQuotasRequest, CreateTopicsRequest, DescribeClientQuotasRequest, ListGroupsRequest,
    ListOffsetsRequest, MetadataRequest, ProduceRequest, TopicName, alter_client_quotas_request,
    describe_client_quotas_request,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::acls::{kcat_as, sluice};
use crate::broker_process::BrokerProcess;
use crate::wire::Wire;

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-secret-1";
const PRODUCER: &str = "producer_byte_rate";
const CONSUMER: &str = "consumer_byte_rate";
const REQUEST: &str = "request_percentage";
/// alice's quota, bytes per second each way.
const QUOTA: u64 = 1_000_000;
/// What each user moves: 8 000 records of 1 000 bytes, in requests of at
/// most 64 KiB, so that the quota has requests to throttle (it acts on
/// what comes after a request that takes the rate over it, as Kafka's).
const RECORDS: usize = 8000;

/// A SASL broker whose quota windows are short (11 samples of 200 ms), so
/// a rate settles within the test, with users alice and bob (passwords
/// `alice-pw`, `bob-pw`).
fn quota_broker(dir: &Path) -> BrokerProcess {
    let config = dir.join("quotas.toml");
    std::fs::write(
        &config,
        "[kafka]\nquota_window_samples = 11\nquota_window_ms = 200\n\
         [security]\nsecurity_protocol = \"SASL_PLAINTEXT\"\nsasl_bootstrap_user = \"admin\"\n\
         sasl_enabled_mechanisms = [\"SCRAM-SHA-256\", \"SCRAM-SHA-512\", \"PLAIN\"]\n",
    )
    .unwrap();
    let mut command =
        BrokerProcess::command(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    command.env("SLUICE_SASL_BOOTSTRAP_PASSWORD", ADMIN_PASSWORD);
    let broker = BrokerProcess::start_command(command);
    for user in ["alice", "bob"] {
        admin_sluice(
            &broker.address,
            &["users", "create", user],
            &format!("{user}-pw\n"),
        );
    }
    broker
}

/// `sluice <args…>` as the admin, which must succeed; its output.
fn admin_sluice(address: &str, args: &[&str], stdin: &str) -> String {
    let (ok, output) = sluice(address, ADMIN, ADMIN_PASSWORD, args, stdin);
    assert!(ok, "sluice {args:?}: {output}");
    output
}

/// Run `work` for alice and bob at once; each one's seconds.
fn both(work: impl Fn(&str) -> bool + Sync) -> (f64, f64) {
    std::thread::scope(|scope| {
        let run = |user: &'static str| {
            let work = &work;
            scope.spawn(move || {
                let started = Instant::now();
                assert!(work(user), "{user}'s kcat failed");
                started.elapsed().as_secs_f64()
            })
        };
        let alice = run("alice");
        let bob = run("bob");
        (alice.join().unwrap(), bob.join().unwrap())
    })
}

fn metric(broker: &BrokerProcess, line_start: &str) -> f64 {
    crate::metrics::value(&broker.metrics, line_start)
}

#[test]
fn a_quota_holds_one_user_to_its_rate_while_another_runs_free() {
    let dir = tempfile::tempdir().unwrap();
    let broker = quota_broker(dir.path());
    let address = broker.address.clone();
    let rate = QUOTA.to_string();
    admin_sluice(
        &address,
        &[
            "quotas",
            "set",
            "--user",
            "alice",
            "--producer-byte-rate",
            &rate,
            "--consumer-byte-rate",
            &rate,
        ],
        "",
    );
    let table = admin_sluice(&address, &["quotas", "list"], "");
    assert!(
        table.contains("alice") && table.contains("producer_byte_rate"),
        "{table}"
    );

    let lines: String = (0..RECORDS)
        .map(|index| format!("{index:05}{}\n", "q".repeat(994)))
        .collect();
    let bytes = lines.len() as f64;
    let produce = |user: &str| {
        let (ok, _, stderr) = kcat_as(
            &address,
            user,
            &format!("{user}-pw"),
            &[
                "-P",
                "-t",
                &format!("{user}-topic"),
                "-X",
                "acks=1",
                "-X",
                "linger.ms=5",
                "-X",
                "batch.size=65536",
                "-X",
                "message.timeout.ms=60000",
            ],
            Some(lines.as_bytes()),
        );
        ok && !stderr.contains("failed")
    };
    let (alice, bob) = both(produce);
    let (alice_rate, bob_rate) = (bytes / alice, bytes / bob);
    eprintln!("produce: alice {alice_rate:.0} B/s, bob {bob_rate:.0} B/s");
    // The first burst is measured over the whole window (10 samples of
    // 200 ms: 2 s of quota), so 8 MB take at least 6 s at 1 MB/s.
    assert!(
        alice_rate < 2.0 * QUOTA as f64,
        "alice produced at {alice_rate:.0} B/s against a quota of {QUOTA}"
    );
    assert!(
        alice_rate > 0.4 * QUOTA as f64,
        "alice was held well under her quota: {alice_rate:.0} B/s"
    );
    assert!(
        bob_rate > 3.0 * alice_rate,
        "bob, without a quota, was slowed too: {bob_rate:.0} B/s against alice's {alice_rate:.0}"
    );
    assert!(
        metric(
            &broker,
            "sluice_kafka_quota_throttles_total{quota=\"producer_byte_rate\"}"
        ) >= 1.0
    );

    let consume = |user: &str| {
        let (ok, read, _) = kcat_as(
            &address,
            user,
            &format!("{user}-pw"),
            &[
                "-C",
                "-t",
                &format!("{user}-topic"),
                "-e",
                "-q",
                "-X",
                "message.max.bytes=65536",
                "-X",
                "fetch.max.bytes=65536",
                "-X",
                "fetch.message.max.bytes=65536",
            ],
            None,
        );
        ok && read == lines
    };
    let (alice, bob) = both(consume);
    let (alice_rate, bob_rate) = (bytes / alice, bytes / bob);
    eprintln!("fetch: alice {alice_rate:.0} B/s, bob {bob_rate:.0} B/s");
    assert!(
        alice_rate < 2.0 * QUOTA as f64,
        "alice fetched at {alice_rate:.0} B/s against a quota of {QUOTA}"
    );
    assert!(
        bob_rate > 3.0 * alice_rate,
        "bob, without a quota, was slowed too: {bob_rate:.0} B/s against alice's {alice_rate:.0}"
    );
    assert!(
        metric(
            &broker,
            "sluice_kafka_quota_throttles_total{quota=\"consumer_byte_rate\"}"
        ) >= 1.0
    );

    // Without the quota alice runs free again.
    admin_sluice(&address, &["quotas", "remove", "--user", "alice"], "");
    let started = Instant::now();
    assert!(produce("alice"));
    let free_rate = bytes / started.elapsed().as_secs_f64();
    assert!(
        free_rate > 2.0 * QUOTA as f64,
        "alice is still held after her quota was removed: {free_rate:.0} B/s"
    );
}

/// alice's `request_percentage`: 2 % of a thread, 20 ms a second.
const REQUEST_QUOTA_PERCENT: u64 = 2;
/// How long alice and bob each loop.
const LOOP_SECONDS: f64 = 4.0;

/// Call `call` over and over for `LOOP_SECONDS`: how many calls, and the
/// largest `throttle_time_ms` answered.
fn call_loop(mut call: impl FnMut() -> i32) -> (u64, i32) {
    let started = Instant::now();
    let (mut calls, mut throttle) = (0, 0);
    while started.elapsed().as_secs_f64() < LOOP_SECONDS {
        throttle = throttle.max(call());
        calls += 1;
    }
    (calls, throttle)
}

/// KIP-124: alice loops on Metadata for every topic (a classic runaway
/// client) under `request_percentage = 2`, while bob loops on ListGroups
/// with no quota. The broker's own count of Metadata's thread time, which
/// only alice asks for, shows her held to about 2 % of a thread; bob is
/// never throttled and makes many more calls.
#[test]
fn a_request_percentage_quota_holds_a_metadata_loop_to_its_share_of_a_thread() {
    let dir = tempfile::tempdir().unwrap();
    let broker = quota_broker(dir.path());
    let address = broker.address.clone();
    let mut admin = crate::acls::login(&address, ADMIN, ADMIN_PASSWORD);
    let topics = (0..100)
        .map(|index| {
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(format!("t{index:03}"))))
                .with_num_partitions(2)
                .with_replication_factor(1)
        })
        .collect();
    let created = admin.call(5, &CreateTopicsRequest::default().with_topics(topics));
    assert!(created.topics.iter().all(|topic| topic.error_code == 0));
    let percent = REQUEST_QUOTA_PERCENT.to_string();
    admin_sluice(
        &address,
        &[
            "quotas",
            "set",
            "--user",
            "alice",
            "--request-percentage",
            &percent,
        ],
        "",
    );
    let table = admin_sluice(&address, &["quotas", "list"], "");
    assert!(table.contains(REQUEST), "{table}");

    let metadata_micros = "sluice_kafka_request_thread_microseconds_total{api=\"Metadata\"}";
    let before = metric(&broker, metadata_micros);
    let ((alice_calls, alice_throttle), (bob_calls, bob_throttle)) = std::thread::scope(|scope| {
        let alice = scope.spawn(|| {
            let mut wire = crate::acls::login(&address, "alice", "alice-pw");
            call_loop(|| {
                let answer = wire.call(12, &MetadataRequest::default().with_topics(None));
                assert!(answer.topics.len() >= 100);
                answer.throttle_time_ms
            })
        });
        let bob = scope.spawn(|| {
            let mut wire = crate::acls::login(&address, "bob", "bob-pw");
            call_loop(|| wire.call(4, &ListGroupsRequest::default()).throttle_time_ms)
        });
        (alice.join().unwrap(), bob.join().unwrap())
    });
    let alice_micros = metric(&broker, metadata_micros) - before;
    // Her share over the loop; the first burst may take up to the whole
    // window's allowance (2 s of quota, as Kafka's first sample) on top.
    let quota_micros_per_second = REQUEST_QUOTA_PERCENT as f64 * 10_000.0;
    let allowance = quota_micros_per_second * (LOOP_SECONDS + 2.2);
    eprintln!(
        "alice: {alice_calls} Metadata calls, {alice_micros:.0} µs of thread time \
         (allowance {allowance:.0} µs), largest throttle {alice_throttle} ms; \
         bob: {bob_calls} ListGroups calls, largest throttle {bob_throttle} ms"
    );
    assert!(
        alice_micros < 1.5 * allowance,
        "alice took {alice_micros:.0} µs of thread time against an allowance of {allowance:.0}"
    );
    assert!(
        alice_micros > 0.4 * quota_micros_per_second * LOOP_SECONDS,
        "alice was held well under her quota: {alice_micros:.0} µs"
    );
    assert!(alice_throttle > 0, "alice's answers carried no throttle");
    assert_eq!(bob_throttle, 0, "bob, without a quota, was throttled");
    assert!(
        bob_calls > 3 * alice_calls,
        "bob made {bob_calls} calls against alice's {alice_calls}"
    );
    assert!(
        metric(
            &broker,
            "sluice_kafka_quota_throttles_total{quota=\"request_percentage\"}"
        ) >= 1.0
    );
}

/// Set `key` to `value` for client id `sluice-tests`, every test
/// connection's.
fn set_test_client_quota(wire: &mut Wire, key: &str, value: f64) {
    let altered = wire.call(
        1,
        &AlterClientQuotasRequest::default().with_entries(vec![
            alter_client_quotas_request::EntryData::default()
                .with_entity(vec![
                    alter_client_quotas_request::EntityData::default()
                        .with_entity_type(StrBytes::from_static_str("client-id"))
                        .with_entity_name(Some(StrBytes::from_static_str("sluice-tests"))),
                ])
                .with_ops(vec![op(key, value)]),
        ]),
    );
    assert_eq!(altered.entries[0].error_code, 0);
}

/// A batch of 2 000 gzip'd records of 100 bytes, all at timestamp 1000
/// but the last (2000): a ListOffsets by timestamp 2000 decompresses and
/// walks all of it.
fn heavy_batch() -> Bytes {
    let count = 2_000;
    let records: Vec<Record> = (0..count)
        .map(|index| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: index,
            // One batch: the encoder splits where offset - sequence changes.
            sequence: index as i32,
            timestamp: if index == count - 1 { 2000 } else { 1000 },
            key: None,
            value: Some(Bytes::from(vec![b'a'; 100])),
            headers: Default::default(),
        })
        .collect();
    let mut buffer = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buffer,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::Gzip,
        },
    )
    .unwrap();
    buffer.freeze()
}

/// The breaker's two ways past `request_percentage`, closed: the work a
/// request makes another shard do (ListOffsets by timestamp on partitions
/// of both shards, decompressing a large batch on each), and a pipeline of
/// requests that all started before the first one's cost was counted. A
/// client held to 5 % of a thread, pipelining 8 such requests at a time,
/// makes the broker spend about that much CPU, not whole cores.
#[test]
fn a_request_percentage_quota_counts_other_shards_work_and_holds_pipelines() {
    const PERCENT: f64 = 5.0;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shards.toml");
    std::fs::write(
        &config,
        "shards = 2\npin_shards = false\n\
         [kafka]\nquota_window_samples = 11\nquota_window_ms = 200\n",
    )
    .unwrap();
    let broker = BrokerProcess::start_command(BrokerProcess::command(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    ));
    let mut wire = Wire::connect(&broker.address);
    let partitions = 4;
    let created = wire.call(
        5,
        &CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("heavy")))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ]),
    );
    assert_eq!(created.topics[0].error_code, 0);
    let batch = heavy_batch();
    let produced = wire.call(
        9,
        &ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("heavy")))
                    .with_partition_data(
                        (0..partitions)
                            .map(|index| {
                                PartitionProduceData::default()
                                    .with_index(index)
                                    .with_records(Some(batch.clone()))
                            })
                            .collect(),
                    ),
            ]),
    );
    for partition in &produced.responses[0].partition_responses {
        assert_eq!(partition.error_code, 0, "{:?}", partition.error_message);
    }
    set_test_client_quota(&mut wire, REQUEST, PERCENT);

    // Partitions alternate between the two shards, so one of the two
    // rounds asks only the shard the connection is not on.
    let lookup = |parity: i32| {
        ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("heavy")))
                    .with_partitions(
                        (0..partitions)
                            .filter(|index| index % 2 == parity)
                            .map(|index| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(index)
                                    .with_timestamp(2000)
                            })
                            .collect(),
                    ),
            ])
    };
    let mut hog = Wire::connect(&broker.address);
    let answer = hog.call(1, &lookup(0));
    assert!(
        answer.topics[0]
            .partitions
            .iter()
            .all(|p| p.offset == 1_999)
    );
    for parity in [0, 1] {
        let cpu_before = crate::kafka_fetch::cpu_time(broker.pid());
        let started = Instant::now();
        let mut answered = 0;
        while started.elapsed().as_secs_f64() < LOOP_SECONDS {
            for _ in 0..8 {
                hog.send(1, &lookup(parity));
            }
            for _ in 0..8 {
                hog.read_frame().expect("answered");
                answered += 1;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let cpu = (crate::kafka_fetch::cpu_time(broker.pid()) - cpu_before).as_secs_f64();
        // The allowance over the round, plus a first burst (2 s of quota).
        let allowance = PERCENT / 100.0 * (elapsed + 2.2);
        eprintln!(
            "partitions of parity {parity}: {answered} lookups in {elapsed:.1} s, broker CPU \
             {cpu:.2} s against an allowance of {allowance:.2} s"
        );
        assert!(
            cpu < 2.0 * allowance + 0.1,
            "the broker spent {cpu:.2} s of CPU on a client allowed {allowance:.2} s"
        );
        assert!(answered > 8, "the client was starved: {answered} answers");
    }

    // A byte rate of 100 kB/s against 16 pipelined produces of 50 kB at a
    // time: each waits for the throttle the ones before it earned. (Before,
    // each pipeline went through at once: 3.5 × the allowance.)
    const BYTE_RATE: f64 = 100_000.0;
    set_test_client_quota(&mut wire, PRODUCER, BYTE_RATE);
    let value = vec![b'p'; 50_000];
    let mut builder = sluice::record_batch::BatchBuilder::new(1_700_000_000_000);
    builder.push(sluice::record_batch::RecordSpec {
        key: None,
        value: Some(&value),
        timestamp_delta_ms: 0,
    });
    let produce = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("heavy")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(Bytes::from(builder.build()))),
                ]),
        ]);
    let mut producer = Wire::connect(&broker.address);
    let started = Instant::now();
    let mut stored = 0.0;
    while started.elapsed().as_secs_f64() < LOOP_SECONDS {
        for _ in 0..16 {
            producer.send(9, &produce);
        }
        for _ in 0..16 {
            producer.read_frame().expect("answered");
            stored += value.len() as f64;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowance = BYTE_RATE * (elapsed + 2.2);
    eprintln!("pipelined produce: {stored:.0} bytes in {elapsed:.1} s, allowance {allowance:.0}");
    assert!(
        stored < 1.5 * allowance,
        "a pipeline carried {stored:.0} bytes past an allowance of {allowance:.0}"
    );
}

fn entity(user: Option<&str>) -> Vec<alter_client_quotas_request::EntityData> {
    vec![
        alter_client_quotas_request::EntityData::default()
            .with_entity_type(StrBytes::from_static_str("user"))
            .with_entity_name(user.map(|user| StrBytes::from_string(user.to_owned()))),
    ]
}

fn op(key: &str, value: f64) -> alter_client_quotas_request::OpData {
    alter_client_quotas_request::OpData::default()
        .with_key(StrBytes::from_string(key.to_owned()))
        .with_value(value)
}

/// KIP-546's answers on the wire: each bad alteration refused on its own
/// with INVALID_REQUEST, filters by name, default and any, and
/// CLUSTER_AUTHORIZATION_FAILED for a user the ACLs do not allow.
#[test]
fn client_quota_apis_answer_as_kafka_does() {
    let dir = tempfile::tempdir().unwrap();
    let broker = crate::acls::acl_broker(dir.path());
    crate::acls::create_bob(&broker.address);
    let mut admin = crate::acls::login(&broker.address, ADMIN, ADMIN_PASSWORD);
    let ip = vec![
        alter_client_quotas_request::EntityData::default()
            .with_entity_type(StrBytes::from_static_str("ip"))
            .with_entity_name(Some(StrBytes::from_static_str("10.0.0.1"))),
    ];
    let entries = vec![
        (entity(Some("alice")), vec![op(PRODUCER, 1000.0)]),
        (entity(None), vec![op(CONSUMER, 5000.0)]),
        (entity(Some("carol")), vec![op(REQUEST, 10.0)]),
        (entity(Some("x")), vec![op(REQUEST, 12.5)]),
        (entity(Some("x")), vec![op(PRODUCER, -1.0)]),
        (
            entity(Some("x")),
            vec![op(PRODUCER, 1.0), op(PRODUCER, 2.0)],
        ),
        (ip, vec![op(PRODUCER, 1.0)]),
        (Vec::new(), vec![op(PRODUCER, 1.0)]),
    ];
    let altered = admin.call(
        1,
        &AlterClientQuotasRequest::default().with_entries(
            entries
                .into_iter()
                .map(|(entity, ops)| {
                    alter_client_quotas_request::EntryData::default()
                        .with_entity(entity)
                        .with_ops(ops)
                })
                .collect(),
        ),
    );
    let codes: Vec<i16> = altered
        .entries
        .iter()
        .map(|entry| entry.error_code)
        .collect();
    assert_eq!(codes, vec![0, 0, 0, 42, 42, 42, 42, 42]);

    let mut describe = |match_type: i8, name: Option<&str>| {
        admin
            .call(
                1,
                &DescribeClientQuotasRequest::default().with_components(vec![
                    describe_client_quotas_request::ComponentData::default()
                        .with_entity_type(StrBytes::from_static_str("user"))
                        .with_match_type(match_type)
                        .with_match(name.map(|name| StrBytes::from_string(name.to_owned()))),
                ]),
            )
            .entries
            .unwrap_or_default()
    };
    let exact = describe(0, Some("alice"));
    assert_eq!(exact.len(), 1);
    assert_eq!(exact[0].values[0].key.as_str(), PRODUCER);
    assert_eq!(exact[0].values[0].value, 1000.0);
    let default = describe(1, None);
    assert_eq!(default.len(), 1);
    assert_eq!(default[0].entity[0].entity_name, None);
    assert_eq!(describe(2, None).len(), 3);
    let carol = describe(0, Some("carol"));
    assert_eq!(carol[0].values[0].key.as_str(), REQUEST);
    assert_eq!(carol[0].values[0].value, 10.0);

    let mut bob = crate::acls::login(&broker.address, "bob", "bob-secret-2");
    let refused = bob.call(
        1,
        &AlterClientQuotasRequest::default().with_entries(vec![
            alter_client_quotas_request::EntryData::default()
                .with_entity(entity(Some("bob")))
                .with_ops(vec![op(PRODUCER, 1e9)]),
        ]),
    );
    assert_eq!(refused.entries[0].error_code, 31);
    let refused = bob.call(1, &DescribeClientQuotasRequest::default());
    assert_eq!(refused.error_code, 31);
}
