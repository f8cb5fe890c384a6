//! ACLs and the authorizer (issue 20 item 4), with real clients: kcat
//! refused and then allowed by a prefixed ACL, `sluice acls`, ACLs kept
//! across a restart, Kafka's error codes API by API on the wire, and the
//! ACL admin calls of kafka-python, confluent-kafka and kafkajs.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_acls_request::DeleteAclsFilter;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, CreateAclsRequest, CreateTopicsRequest, DeleteAclsRequest,
    DeleteTopicsRequest, DescribeAclsRequest, DescribeConfigsRequest, DescribeLogDirsRequest,
    FetchRequest, FindCoordinatorRequest, GroupId, InitProducerIdRequest, JoinGroupRequest,
    ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetFetchRequest,
    SaslAuthenticateRequest, SaslHandshakeRequest, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use serde::Deserialize;

use crate::broker_process::BrokerProcess;
use crate::kcat_smoke::kcat;
use crate::test_clients;
use crate::wire::Wire;

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-secret-1";
const BOB: &str = "bob";
const BOB_PASSWORD: &str = "bob-secret-2";

/// Kafka's codes.
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const CLUSTER_AUTHORIZATION_FAILED: i16 = 31;
const INVALID_REQUEST: i16 = 42;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
const SECURITY_DISABLED: i16 = 54;

/// A SASL broker with the ACL authorizer; `admin` is its bootstrap (super)
/// user. PLAIN is offered so the wire tests can log in simply.
pub fn acl_broker(dir: &Path) -> BrokerProcess {
    let config = dir.join("acl.toml");
    std::fs::write(
        &config,
        "[security]\nsecurity_protocol = \"SASL_PLAINTEXT\"\n\
         sasl_enabled_mechanisms = [\"SCRAM-SHA-256\", \"SCRAM-SHA-512\", \"PLAIN\"]\n\
         sasl_bootstrap_user = \"admin\"\nauthorizer = \"acl\"\n",
    )
    .unwrap();
    let mut command =
        BrokerProcess::command(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    command.env("SLUICE_SASL_BOOTSTRAP_PASSWORD", ADMIN_PASSWORD);
    BrokerProcess::start_command(command)
}

/// `sluice <args…>` logged in as `user`; its success and its output.
pub fn sluice(
    address: &str,
    user: &str,
    password: &str,
    args: &[&str],
    stdin: &str,
) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .args(["--brokers", address])
        .env("SLUICE_SASL_USERNAME", user)
        .env("SLUICE_SASL_PASSWORD", password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Make `bob` a user (no ACLs).
pub fn create_bob(address: &str) {
    let (made, output) = sluice(
        address,
        ADMIN,
        ADMIN_PASSWORD,
        &["users", "create", BOB],
        &format!("{BOB_PASSWORD}\n"),
    );
    assert!(made, "{output}");
}

/// kcat as `user` with SCRAM-SHA-512, then `args`; (success, stdout, stderr).
pub fn kcat_as(
    address: &str,
    user: &str,
    password: &str,
    args: &[&str],
    input: Option<&[u8]>,
) -> (bool, String, String) {
    let mut all = vec![
        "-b".to_owned(),
        address.to_owned(),
        "-X".to_owned(),
        "security.protocol=SASL_PLAINTEXT".to_owned(),
        "-X".to_owned(),
        "sasl.mechanisms=SCRAM-SHA-512".to_owned(),
        "-X".to_owned(),
        format!("sasl.username={user}"),
        "-X".to_owned(),
        format!("sasl.password={password}"),
    ];
    all.extend(args.iter().map(|arg| arg.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let output = kcat(&all, input);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn produce_as(address: &str, user: &str, password: &str, topic: &str) -> (bool, String) {
    let (ok, _, stderr) = kcat_as(
        address,
        user,
        password,
        &[
            "-P",
            "-t",
            topic,
            "-X",
            "acks=all",
            "-X",
            "message.timeout.ms=5000",
        ],
        Some(b"one\ntwo\n"),
    );
    (ok && !stderr.contains("Delivery failed"), stderr)
}

#[test]
fn a_prefixed_acl_lets_kcat_write_where_it_was_refused_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = acl_broker(dir.path());
    let address = broker.address.clone();
    create_bob(&address);
    // The admin, a super user, may do anything: it makes the topics.
    for topic in ["orders-eu", "orders-us", "payments"] {
        let (ok, stderr) = produce_as(&address, ADMIN, ADMIN_PASSWORD, topic);
        assert!(ok, "{topic}: {stderr}");
    }

    let (ok, stderr) = produce_as(&address, BOB, BOB_PASSWORD, "orders-eu");
    assert!(
        !ok && stderr.contains("Topic authorization failed"),
        "bob wrote without an ACL: {stderr}"
    );
    // A user without ACLs sees no topics at all.
    let (_, listed, _) = kcat_as(&address, BOB, BOB_PASSWORD, &["-L"], None);
    assert!(!listed.contains("orders-eu"), "{listed}");

    // bob may not manage ACLs himself.
    let (added, output) = sluice(
        &address,
        BOB,
        BOB_PASSWORD,
        &[
            "acls",
            "add",
            "--principal",
            "User:bob",
            "--operation",
            "WRITE",
            "--topic",
            "orders-",
            "--prefixed",
        ],
        "",
    );
    assert!(
        !added && output.contains("ClusterAuthorizationFailed"),
        "{output}"
    );
    let (added, output) = sluice(
        &address,
        ADMIN,
        ADMIN_PASSWORD,
        &[
            "acls",
            "add",
            "--principal",
            "User:bob",
            "--operation",
            "WRITE,READ",
            "--topic",
            "orders-",
            "--prefixed",
        ],
        "",
    );
    assert!(added, "{output}");

    let (ok, stderr) = produce_as(&address, BOB, BOB_PASSWORD, "orders-eu");
    assert!(ok, "the prefixed ACL did not let bob write: {stderr}");
    let (ok, stderr) = produce_as(&address, BOB, BOB_PASSWORD, "payments");
    assert!(
        !ok && stderr.contains("Topic authorization failed"),
        "bob wrote to a topic outside the prefix: {stderr}"
    );
    // WRITE and READ imply DESCRIBE: Metadata lists the prefix's topics only.
    let (_, listed, _) = kcat_as(&address, BOB, BOB_PASSWORD, &["-L"], None);
    assert!(
        listed.contains("orders-eu") && listed.contains("orders-us"),
        "{listed}"
    );
    assert!(!listed.contains("payments"), "{listed}");
    let (_, consumed, stderr) = kcat_as(
        &address,
        BOB,
        BOB_PASSWORD,
        &["-C", "-t", "orders-eu", "-e", "-q"],
        None,
    );
    assert_eq!(consumed, "one\ntwo\none\ntwo\n", "{stderr}");

    // A DENY wins over the prefixed ALLOW.
    let (added, output) = sluice(
        &address,
        ADMIN,
        ADMIN_PASSWORD,
        &[
            "acls",
            "add",
            "--deny",
            "--principal",
            "User:bob",
            "--operation",
            "WRITE",
            "--topic",
            "orders-eu",
        ],
        "",
    );
    assert!(added, "{output}");
    let (ok, _) = produce_as(&address, BOB, BOB_PASSWORD, "orders-eu");
    assert!(!ok, "a DENY ACL did not stop bob");

    let (listed, table) = sluice(&address, ADMIN, ADMIN_PASSWORD, &["acls", "list"], "");
    assert!(listed, "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table.contains("DENY") && table.contains("PREFIXED") && table.contains("orders-"),
        "{table}"
    );

    // The ACLs are in the metadata and outlive the broker.
    broker.stop();
    let metadata = std::fs::read_to_string(dir.path().join("data/metadata.toml")).unwrap();
    assert!(metadata.contains("orders-"), "{metadata}");
    let broker = acl_broker(dir.path());
    let address = broker.address.clone();
    let (ok, stderr) = produce_as(&address, BOB, BOB_PASSWORD, "orders-us");
    assert!(ok, "after a restart: {stderr}");
    let (ok, _) = produce_as(&address, BOB, BOB_PASSWORD, "orders-eu");
    assert!(!ok, "the DENY was lost in the restart");

    // Removing the prefixed ACLs takes bob's access away again.
    let (removed, output) = sluice(
        &address,
        ADMIN,
        ADMIN_PASSWORD,
        &[
            "acls",
            "remove",
            "--principal",
            "User:bob",
            "--topic",
            "orders-",
            "--pattern",
            "prefixed",
        ],
        "",
    );
    assert!(removed, "{output}");
    assert_eq!(output.lines().count(), 3, "{output}");
    let (ok, _) = produce_as(&address, BOB, BOB_PASSWORD, "orders-us");
    assert!(!ok, "bob still writes after his ACL was removed");
}

/// A connection logged in as `user` with PLAIN.
pub fn login(address: &str, user: &str, password: &str) -> Wire {
    let mut wire = Wire::connect(address);
    let handshake = wire.call(
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    assert_eq!(handshake.error_code, 0);
    let token = format!("\0{user}\0{password}");
    let authenticated = wire.call(
        2,
        &SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::from(token)),
    );
    assert_eq!(authenticated.error_code, 0, "{user} logs in");
    wire
}

fn name(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

fn creation(resource_type: i8, resource: &str, pattern: i8, operation: i8) -> AclCreation {
    AclCreation::default()
        .with_resource_type(resource_type)
        .with_resource_name(name(resource))
        .with_resource_pattern_type(pattern)
        .with_principal(name("User:bob"))
        .with_host(name("*"))
        .with_operation(operation)
        .with_permission_type(3)
}

/// Every API bob calls without ACLs gets Kafka's authorization error; with
/// ACLs for a topic and a group, those succeed.
#[test]
fn each_api_answers_kafkas_authorization_error_until_an_acl_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = acl_broker(dir.path());
    let address = broker.address.clone();
    create_bob(&address);
    let mut admin = login(&address, ADMIN, ADMIN_PASSWORD);
    let created = admin.call(
        5,
        &CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(name("t")))
                    .with_num_partitions(1)
                    .with_replication_factor(-1),
            ])
            .with_timeout_ms(10_000),
    );
    assert_eq!(created.topics[0].error_code, 0);

    let mut bob = login(&address, BOB, BOB_PASSWORD);
    let everything = bob.call(12, &MetadataRequest::default().with_topics(None));
    assert!(everything.topics.is_empty(), "{everything:?}");
    let named = bob.call(
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(name("t")))),
        ])),
    );
    assert_eq!(named.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    let fetched = bob.call(
        12,
        &FetchRequest::default()
            .with_max_wait_ms(0)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(name("t")))
                    .with_partitions(vec![FetchPartition::default().with_partition(0)]),
            ]),
    );
    assert_eq!(
        fetched.responses[0].partitions[0].error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
    let listed = bob.call(
        7,
        &ListOffsetsRequest::default().with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(name("t")))
                .with_partitions(vec![ListOffsetsPartition::default().with_timestamp(-1)]),
        ]),
    );
    assert_eq!(
        listed.topics[0].partitions[0].error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
    let create = bob.call(
        5,
        &CreateTopicsRequest::default().with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(name("bobs")))
                .with_num_partitions(1)
                .with_replication_factor(-1),
        ]),
    );
    assert_eq!(create.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    let delete = bob.call(
        5,
        &DeleteTopicsRequest::default().with_topic_names(vec![TopicName(name("t"))]),
    );
    assert_eq!(delete.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    let join = |wire: &mut Wire| {
        wire.call(
            5,
            &JoinGroupRequest::default()
                .with_group_id(GroupId(name("g")))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_protocol_type(name("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default().with_name(name("range")),
                ]),
        )
        .error_code
    };
    assert_eq!(join(&mut bob), GROUP_AUTHORIZATION_FAILED);
    let coordinator = bob.call(3, &FindCoordinatorRequest::default().with_key(name("g")));
    assert_eq!(coordinator.error_code, GROUP_AUTHORIZATION_FAILED);
    let offsets = bob.call(
        7,
        &OffsetFetchRequest::default()
            .with_group_id(GroupId(name("g")))
            .with_topics(None),
    );
    assert_eq!(offsets.error_code, GROUP_AUTHORIZATION_FAILED);
    let transactional = bob.call(
        3,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(name("tx"))))
            .with_transaction_timeout_ms(10_000),
    );
    assert_eq!(
        transactional.error_code,
        TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    );
    let idempotent = bob.call(
        3,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(10_000),
    );
    assert_eq!(idempotent.error_code, CLUSTER_AUTHORIZATION_FAILED);
    let configs = bob.call(
        4,
        &DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(name("")),
        ]),
    );
    assert_eq!(configs.results[0].error_code, CLUSTER_AUTHORIZATION_FAILED);
    let dirs = bob.call(4, &DescribeLogDirsRequest::default().with_topics(None));
    assert_eq!(dirs.error_code, CLUSTER_AUTHORIZATION_FAILED);
    let acls = bob.call(
        3,
        &CreateAclsRequest::default().with_creations(vec![creation(2, "t", 3, 2)]),
    );
    assert_eq!(acls.results[0].error_code, CLUSTER_AUTHORIZATION_FAILED);

    // The admin grants READ on t and on group g (one bad creation beside
    // them is refused on its own).
    let granted = admin.call(
        3,
        &CreateAclsRequest::default().with_creations(vec![
            creation(2, "t", 3, 3),
            creation(3, "g", 3, 3),
            creation(3, "g", 3, 4), // WRITE is not a group operation
            creation(4, "not-the-cluster", 3, 7),
        ]),
    );
    let codes: Vec<i16> = granted.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, vec![0, 0, INVALID_REQUEST, INVALID_REQUEST]);

    let everything = bob.call(12, &MetadataRequest::default().with_topics(None));
    let names: Vec<&str> = everything
        .topics
        .iter()
        .filter_map(|topic| topic.name.as_ref().map(|name| name.0.as_str()))
        .collect();
    assert_eq!(names, vec!["t"]);
    let fetched = bob.call(
        12,
        &FetchRequest::default()
            .with_max_wait_ms(0)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(name("t")))
                    .with_partitions(vec![FetchPartition::default().with_partition(0)]),
            ]),
    );
    assert_eq!(fetched.responses[0].partitions[0].error_code, 0);
    assert_ne!(join(&mut bob), GROUP_AUTHORIZATION_FAILED);
    let groups = bob.call(4, &ListGroupsRequest::default());
    assert_eq!(groups.error_code, 0);

    // DescribeAcls with MATCH finds the bindings that apply to topic t;
    // DeleteAcls reports what it removed.
    let described = admin.call(
        3,
        &DescribeAclsRequest::default()
            .with_resource_type_filter(2)
            .with_resource_name_filter(Some(name("t")))
            .with_pattern_type_filter(2)
            .with_principal_filter(None)
            .with_host_filter(None)
            .with_operation(1)
            .with_permission_type(1),
    );
    assert_eq!(described.error_code, 0);
    assert_eq!(described.resources.len(), 1);
    assert_eq!(described.resources[0].acls[0].operation, 3);
    let deleted = admin.call(
        3,
        &DeleteAclsRequest::default().with_filters(vec![
            DeleteAclsFilter::default()
                .with_resource_type_filter(1)
                .with_resource_name_filter(None)
                .with_pattern_type_filter(1)
                .with_principal_filter(Some(name("User:bob")))
                .with_host_filter(None)
                .with_operation(1)
                .with_permission_type(1),
            DeleteAclsFilter::default()
                .with_resource_type_filter(9)
                .with_pattern_type_filter(1)
                .with_operation(1)
                .with_permission_type(1),
        ]),
    );
    assert_eq!(deleted.filter_results[0].error_code, 0);
    assert_eq!(deleted.filter_results[0].matching_acls.len(), 2);
    assert_eq!(deleted.filter_results[1].error_code, INVALID_REQUEST);
    assert_eq!(join(&mut bob), GROUP_AUTHORIZATION_FAILED);
}

/// A consumer-protocol member's regex matches only the topics it may
/// describe (a breaker saw `.*` hand out every topic), and a retry record
/// may name as its failed record only a topic its producer may read (or a
/// dead-letter replay could be steered into any topic).
#[test]
fn regex_subscriptions_and_retry_records_stay_within_what_the_principal_may_see() {
    let dir = tempfile::tempdir().unwrap();
    let broker = acl_broker(dir.path());
    let address = broker.address.clone();
    create_bob(&address);
    let mut admin = login(&address, ADMIN, ADMIN_PASSWORD);
    let created = admin.call(
        5,
        &CreateTopicsRequest::default()
            .with_topics(
                ["visible", "secret", "g.retry"]
                    .into_iter()
                    .map(|topic| {
                        CreatableTopic::default()
                            .with_name(TopicName(name(topic)))
                            .with_num_partitions(1)
                            .with_replication_factor(-1)
                    })
                    .collect(),
            )
            .with_timeout_ms(10_000),
    );
    assert!(created.topics.iter().all(|topic| topic.error_code == 0));
    let granted = admin.call(
        3,
        &CreateAclsRequest::default().with_creations(vec![
            creation(3, "g", 3, 3),
            creation(2, "visible", 3, 3),
            creation(2, "g.retry", 3, 4),
        ]),
    );
    assert!(granted.results.iter().all(|result| result.error_code == 0));
    let ids = admin.call(12, &MetadataRequest::default().with_topics(None));
    let id_of = |topic: &str| {
        ids.topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .unwrap()
            .topic_id
    };

    let mut bob = login(&address, BOB, BOB_PASSWORD);
    let mut epoch = 0;
    let mut assigned = None;
    for _ in 0..20 {
        let answer = bob.call(
            1,
            &ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(name("g")))
                .with_member_id(name("bob-member-0000000001"))
                .with_member_epoch(epoch)
                .with_rebalance_timeout_ms(10_000)
                .with_subscribed_topic_regex(Some(name(".*")))
                .with_topic_partitions(Some(Vec::new())),
        );
        assert_eq!(answer.error_code, 0, "{answer:?}");
        epoch = answer.member_epoch;
        if let Some(assignment) = answer.assignment {
            assigned = Some(assignment);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let topics: std::collections::BTreeSet<uuid::Uuid> = assigned
        .expect("bob gets an assignment")
        .topic_partitions
        .iter()
        .map(|topic| topic.topic_id)
        .collect();
    // READ on visible and WRITE on g.retry both imply DESCRIBE.
    let expected = [id_of("visible"), id_of("g.retry")].into_iter().collect();
    assert_eq!(topics, expected, "secret: {}", id_of("secret"));

    let retry = |origin: &str| {
        kcat_as(
            &address,
            BOB,
            BOB_PASSWORD,
            &[
                "-P",
                "-t",
                "g.retry",
                "-H",
                &format!("sluice.retry.topic={origin}"),
                "-H",
                "sluice.retry.partition=0",
                "-H",
                "sluice.retry.offset=0",
                "-X",
                "message.timeout.ms=5000",
            ],
            Some(b"failed\n"),
        )
    };
    let (_, _, stderr) = retry("secret");
    assert!(
        stderr.contains("Topic authorization failed"),
        "a retry record named a topic bob may not read: {stderr}"
    );
    let (ok, _, stderr) = retry("visible");
    assert!(ok && !stderr.contains("failed"), "{stderr}");
}

#[test]
fn without_an_authorizer_the_acl_apis_answer_security_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let created = wire.call(
        3,
        &CreateAclsRequest::default().with_creations(vec![creation(2, "t", 3, 3)]),
    );
    assert_eq!(created.results[0].error_code, SECURITY_DISABLED);
    let described = wire.call(
        3,
        &DescribeAclsRequest::default()
            .with_resource_type_filter(1)
            .with_pattern_type_filter(1)
            .with_operation(1)
            .with_permission_type(1),
    );
    assert_eq!(described.error_code, SECURITY_DISABLED);
    // Everything else is allowed, as in Kafka without an authorizer.
    let metadata = wire.call(
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(name("auto")))),
        ])),
    );
    assert_eq!(metadata.topics[0].error_code, 0);
}

#[derive(Debug, Deserialize)]
struct PythonAcls {
    create: PythonCreate,
    described: Vec<Vec<String>>,
    deleted: usize,
    described_after: Vec<Vec<String>>,
    refused: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PythonCreate {
    succeeded: usize,
    failed: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct KafkajsAcls {
    before_error: Option<String>,
    create_error: Option<String>,
    described: Vec<serde_json::Value>,
    after_error: Option<String>,
    other_error: Option<String>,
    deleted: usize,
    final_error: Option<String>,
    error: Option<String>,
}

/// kafka-python's and confluent-kafka's AdminClient create, describe and
/// delete ACLs; a user without ALTER on the cluster is refused; kafkajs's
/// admin grants a prefixed WRITE that its producer then relies on.
#[test]
fn python_and_node_admin_clients_manage_acls() {
    let Some(clients) = test_clients::installed("python_and_node_admin_clients_manage_acls") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = acl_broker(dir.path());
    let address = broker.address.clone();
    create_bob(&address);

    for mode in ["kafka_python", "confluent"] {
        let prefix = format!("{mode}-");
        let report: PythonAcls = clients
            .python(
                "acl_clients.py",
                &[
                    mode,
                    &address,
                    ADMIN,
                    ADMIN_PASSWORD,
                    BOB,
                    &prefix,
                    BOB_PASSWORD,
                ],
            )
            .finish_as(Duration::from_secs(120));
        assert_eq!(report.error, None, "{mode}: {report:?}");
        assert_eq!(report.create.succeeded, 2, "{mode}: {report:?}");
        assert!(report.create.failed.is_empty(), "{mode}: {report:?}");
        let expected_topic = vec![
            "TOPIC".to_owned(),
            prefix.clone(),
            "PREFIXED".to_owned(),
            "User:bob".to_owned(),
            "*".to_owned(),
            "READ".to_owned(),
            "ALLOW".to_owned(),
        ];
        // Only this mode's own ACLs (the other mode's are still there).
        let mine = |rows: &[Vec<String>]| -> Vec<Vec<String>> {
            rows.iter()
                .filter(|row| row[1].starts_with(&prefix))
                .cloned()
                .collect()
        };
        let described = mine(&report.described);
        let described_after = mine(&report.described_after);
        assert_eq!(described.len(), 2, "{mode}: {report:?}");
        assert!(described.contains(&expected_topic), "{mode}: {report:?}");
        assert_eq!(report.deleted, 1, "{mode}: {report:?}");
        assert_eq!(described_after.len(), 1, "{mode}: {report:?}");
        assert_eq!(described_after[0][0], "GROUP", "{mode}: {report:?}");
        let refused = report.refused.unwrap_or_default().to_uppercase();
        assert!(
            refused
                .replace('_', "")
                .contains("CLUSTERAUTHORIZATIONFAILED"),
            "{mode}: {refused}"
        );
    }

    let admin_topic = |topic: &str| {
        let (ok, stderr) = produce_as(&address, ADMIN, ADMIN_PASSWORD, topic);
        assert!(ok, "{topic}: {stderr}");
    };
    admin_topic("kjs-a");
    admin_topic("other-kjs");
    let report: KafkajsAcls = clients
        .node(
            "kafkajs_acls.js",
            &[&address, ADMIN, ADMIN_PASSWORD, BOB, BOB_PASSWORD, "kjs"],
        )
        .finish_as(Duration::from_secs(120));
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(
        report.before_error.as_deref(),
        Some("TOPIC_AUTHORIZATION_FAILED"),
        "{report:?}"
    );
    assert_eq!(report.create_error, None, "{report:?}");
    assert_eq!(report.described.len(), 1, "{report:?}");
    assert_eq!(report.after_error, None, "{report:?}");
    assert_eq!(
        report.other_error.as_deref(),
        Some("TOPIC_AUTHORIZATION_FAILED"),
        "{report:?}"
    );
    assert_eq!(report.deleted, 2, "{report:?}");
    assert_eq!(
        report.final_error.as_deref(),
        Some("TOPIC_AUTHORIZATION_FAILED"),
        "{report:?}"
    );
}
