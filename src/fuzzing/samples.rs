//! A valid request body of every API Sluice advertises, for every version:
//! the seeds the request fuzz targets start from and the templates the
//! network fuzzer mutates. One element in each array and a value in each
//! field the version has, so a mutation can reach every decoder path.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_log_dirs_request::DescribableLogDirTopic;
use kafka_protocol::messages::describe_topic_partitions_request::{
    Cursor as TopicPartitionsCursor, TopicRequest,
};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

/// The topic id of the samples that name topics by id.
const SAMPLE_TOPIC_ID: uuid::Uuid = uuid::Uuid::from_bytes([7; 16]);

fn name(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn topic(text: &'static str) -> TopicName {
    TopicName(name(text))
}

fn group(text: &'static str) -> GroupId {
    GroupId(name(text))
}

/// A valid request of each API with one element in each array, for
/// `version`: fields a version lacks are left at their defaults, as the
/// encoder requires. `records` is the Produce request's record batch.
pub fn sample_request(
    key: ApiKey,
    version: i16,
    records: Bytes,
    out: &mut BytesMut,
) -> anyhow::Result<()> {
    match key {
        ApiKey::Produce => ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(1000)
            .with_topic_data(vec![
                if version >= 13 {
                    TopicProduceData::default().with_topic_id(SAMPLE_TOPIC_ID)
                } else {
                    TopicProduceData::default().with_name(topic("t"))
                }
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(records)),
                ]),
            ])
            .encode(out, version),
        ApiKey::Fetch => FetchRequest::default()
            .with_max_wait_ms(100)
            .with_topics(vec![
                if version >= 13 {
                    FetchTopic::default().with_topic_id(SAMPLE_TOPIC_ID)
                } else {
                    FetchTopic::default().with_topic(topic("t"))
                }
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(5)
                        .with_partition_max_bytes(1024),
                ]),
            ])
            .with_forgotten_topics_data(if version >= 13 {
                vec![
                    ForgottenTopic::default()
                        .with_topic_id(SAMPLE_TOPIC_ID)
                        .with_partitions(vec![1]),
                ]
            } else if version >= 7 {
                vec![
                    ForgottenTopic::default()
                        .with_topic(topic("f"))
                        .with_partitions(vec![1]),
                ]
            } else {
                vec![]
            })
            .with_rack_id(if version >= 11 {
                name("rack")
            } else {
                name("")
            })
            .encode(out, version),
        ApiKey::ListOffsets => ListOffsetsRequest::default()
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-1),
                    ]),
            ])
            .encode(out, version),
        ApiKey::Metadata => MetadataRequest::default()
            .with_topics(Some(vec![
                MetadataRequestTopic::default().with_name(Some(topic("t"))),
            ]))
            .encode(out, version),
        ApiKey::ApiVersions => ApiVersionsRequest::default()
            .with_client_software_name(name("client"))
            .with_client_software_version(name("1.0"))
            .encode(out, version),
        ApiKey::CreateTopics => CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic("t"))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
                    .with_assignments(vec![
                        CreatableReplicaAssignment::default()
                            .with_partition_index(0)
                            .with_broker_ids(vec![BrokerId(1)]),
                    ])
                    .with_configs(vec![
                        CreatableTopicConfig::default()
                            .with_name(name("retention.ms"))
                            .with_value(Some(name("1000"))),
                    ]),
            ])
            .encode(out, version),
        ApiKey::DeleteTopics => DeleteTopicsRequest::default()
            .with_topics(if version >= 6 {
                vec![DeleteTopicState::default().with_name(Some(topic("t")))]
            } else {
                vec![]
            })
            .with_topic_names(if version < 6 {
                vec![topic("t")]
            } else {
                vec![]
            })
            .encode(out, version),
        ApiKey::CreatePartitions => CreatePartitionsRequest::default()
            .with_topics(vec![
                CreatePartitionsTopic::default()
                    .with_name(topic("t"))
                    .with_count(2)
                    .with_assignments(Some(vec![
                        CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(1)]),
                    ])),
            ])
            .encode(out, version),
        ApiKey::DescribeConfigs => DescribeConfigsRequest::default()
            .with_resources(vec![
                DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name("t"))
                    .with_configuration_keys(Some(vec![name("retention.ms")])),
            ])
            .encode(out, version),
        ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::default()
            .with_resources(vec![
                AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name("t"))
                    .with_configs(vec![
                        AlterableConfig::default()
                            .with_name(name("retention.ms"))
                            .with_value(Some(name("1000"))),
                    ]),
            ])
            .encode(out, version),
        ApiKey::AlterConfigs => AlterConfigsRequest::default()
            .with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(name("t"))
                    .with_configs(vec![
                        alter_configs_request::AlterableConfig::default()
                            .with_name(name("retention.ms"))
                            .with_value(Some(name("1000"))),
                    ]),
            ])
            .encode(out, version),
        ApiKey::DescribeCluster => DescribeClusterRequest::default().encode(out, version),
        ApiKey::DescribeTopicPartitions => DescribeTopicPartitionsRequest::default()
            .with_topics(vec![TopicRequest::default().with_name(topic("t"))])
            .with_response_partition_limit(10)
            .with_cursor(Some(
                TopicPartitionsCursor::default()
                    .with_topic_name(topic("t"))
                    .with_partition_index(1),
            ))
            .encode(out, version),
        ApiKey::DescribeLogDirs => DescribeLogDirsRequest::default()
            .with_topics(Some(vec![
                DescribableLogDirTopic::default()
                    .with_topic(topic("t"))
                    .with_partitions(vec![0]),
            ]))
            .encode(out, version),
        ApiKey::FindCoordinator => FindCoordinatorRequest::default()
            .with_key(if version < 4 { name("g") } else { name("") })
            .with_coordinator_keys(if version >= 4 {
                vec![name("g")]
            } else {
                vec![]
            })
            .encode(out, version),
        ApiKey::JoinGroup => JoinGroupRequest::default()
            .with_group_id(group("g"))
            .with_session_timeout_ms(10_000)
            .with_member_id(name("m"))
            .with_protocol_type(name("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(name("range"))
                    .with_metadata(Bytes::from_static(b"meta")),
            ])
            .encode(out, version),
        ApiKey::SyncGroup => SyncGroupRequest::default()
            .with_group_id(group("g"))
            .with_member_id(name("m"))
            .with_assignments(vec![
                SyncGroupRequestAssignment::default()
                    .with_member_id(name("m"))
                    .with_assignment(Bytes::from_static(b"assignment")),
            ])
            .encode(out, version),
        ApiKey::Heartbeat => HeartbeatRequest::default()
            .with_group_id(group("g"))
            .with_member_id(name("m"))
            .encode(out, version),
        ApiKey::LeaveGroup => LeaveGroupRequest::default()
            .with_group_id(group("g"))
            .with_member_id(if version < 3 { name("m") } else { name("") })
            .with_members(if version >= 3 {
                vec![MemberIdentity::default().with_member_id(name("m"))]
            } else {
                vec![]
            })
            .encode(out, version),
        ApiKey::OffsetCommit => OffsetCommitRequest::default()
            .with_group_id(group("g"))
            .with_member_id(name("m"))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(42)
                            .with_committed_metadata(Some(name("meta"))),
                    ]),
            ])
            .encode(out, version),
        ApiKey::OffsetFetch if version < 8 => OffsetFetchRequest::default()
            .with_group_id(group("g"))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(topic("t"))
                    .with_partition_indexes(vec![0]),
            ]))
            .encode(out, version),
        ApiKey::OffsetFetch => OffsetFetchRequest::default()
            .with_groups(vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(group("g"))
                    .with_topics(Some(vec![
                        OffsetFetchRequestTopics::default()
                            .with_name(topic("t"))
                            .with_partition_indexes(vec![0]),
                    ])),
            ])
            .encode(out, version),
        ApiKey::OffsetDelete => OffsetDeleteRequest::default()
            .with_group_id(group("g"))
            .with_topics(vec![
                OffsetDeleteRequestTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        OffsetDeleteRequestPartition::default().with_partition_index(0),
                    ]),
            ])
            .encode(out, version),
        ApiKey::ListGroups => ListGroupsRequest::default()
            .with_states_filter(if version >= 4 {
                vec![name("Stable")]
            } else {
                vec![]
            })
            .with_types_filter(if version >= 5 {
                vec![name("classic")]
            } else {
                vec![]
            })
            .encode(out, version),
        ApiKey::DescribeGroups => DescribeGroupsRequest::default()
            .with_groups(vec![group("g")])
            .encode(out, version),
        ApiKey::DeleteGroups => DeleteGroupsRequest::default()
            .with_groups_names(vec![group("g")])
            .encode(out, version),
        ApiKey::AddPartitionsToTxn => AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(TransactionalId(name("txn")))
            .with_v3_and_below_producer_id(ProducerId(5))
            .with_v3_and_below_producer_epoch(0)
            .with_v3_and_below_topics(vec![
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![0, 1]),
            ])
            .encode(out, version),
        ApiKey::EndTxn => EndTxnRequest::default()
            .with_transactional_id(TransactionalId(name("txn")))
            .with_producer_id(ProducerId(5))
            .with_producer_epoch(0)
            .with_committed(true)
            .encode(out, version),
        ApiKey::AddOffsetsToTxn => AddOffsetsToTxnRequest::default()
            .with_transactional_id(TransactionalId(name("txn")))
            .with_producer_id(ProducerId(5))
            .with_producer_epoch(0)
            .with_group_id(group("g"))
            .encode(out, version),
        ApiKey::TxnOffsetCommit => TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(name("txn")))
            .with_group_id(group("g"))
            .with_producer_id(ProducerId(5))
            .with_producer_epoch(0)
            .with_generation_id(if version >= 3 { 1 } else { -1 })
            .with_member_id(if version >= 3 { name("m") } else { name("") })
            .with_topics(vec![
                txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(7)
                            .with_committed_metadata(Some(name("meta"))),
                    ]),
            ])
            .encode(out, version),
        ApiKey::DeleteRecords => DeleteRecordsRequest::default()
            .with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(0)
                            .with_offset(3),
                    ]),
            ])
            .with_timeout_ms(1000)
            .encode(out, version),
        ApiKey::DescribeProducers => DescribeProducersRequest::default()
            .with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(topic("t"))
                    .with_partition_indexes(vec![0, 1]),
            ])
            .encode(out, version),
        ApiKey::DescribeTransactions => DescribeTransactionsRequest::default()
            .with_transactional_ids(vec![TransactionalId(name("txn"))])
            .encode(out, version),
        ApiKey::ListTransactions => ListTransactionsRequest::default()
            .with_state_filters(vec![name("Ongoing")])
            .with_producer_id_filters(vec![ProducerId(5)])
            .with_duration_filter(if version >= 1 { 1000 } else { -1 })
            .encode(out, version),
        ApiKey::InitProducerId => InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .encode(out, version),
        ApiKey::ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest::default()
            .with_group_id(group("g"))
            .with_member_id(name("m"))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(Some(vec![topic("t")]))
            .with_subscribed_topic_regex(if version >= 1 {
                Some(name("t.*"))
            } else {
                None
            })
            .with_server_assignor(Some(name("uniform")))
            .with_topic_partitions(Some(vec![
                consumer_group_heartbeat_request::TopicPartitions::default()
                    .with_topic_id(uuid::Uuid::from_bytes([7; 16]))
                    .with_partitions(vec![0, 1]),
            ]))
            .encode(out, version),
        ApiKey::ConsumerGroupDescribe => ConsumerGroupDescribeRequest::default()
            .with_group_ids(vec![group("g")])
            .with_include_authorized_operations(true)
            .encode(out, version),
        ApiKey::SaslHandshake => SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-256"))
            .encode(out, version),
        ApiKey::SaslAuthenticate => SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from_static(b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL"))
            .encode(out, version),
        ApiKey::DescribeUserScramCredentials => DescribeUserScramCredentialsRequest::default()
            .with_users(Some(vec![
                describe_user_scram_credentials_request::UserName::default()
                    .with_name(StrBytes::from_static_str("alice")),
            ]))
            .encode(out, version),
        ApiKey::AlterUserScramCredentials => AlterUserScramCredentialsRequest::default()
            .with_deletions(vec![
                alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                    .with_name(StrBytes::from_static_str("bob"))
                    .with_mechanism(1),
            ])
            .with_upsertions(vec![
                alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                    .with_name(StrBytes::from_static_str("alice"))
                    .with_mechanism(2)
                    .with_iterations(8192)
                    .with_salt(Bytes::from_static(b"salt"))
                    .with_salted_password(Bytes::from_static(&[7; 64])),
            ])
            .encode(out, version),
        ApiKey::CreateAcls => CreateAclsRequest::default()
            .with_creations(vec![
                create_acls_request::AclCreation::default()
                    .with_resource_type(2)
                    .with_resource_name(name("orders-"))
                    .with_resource_pattern_type(4)
                    .with_principal(name("User:alice"))
                    .with_host(name("*"))
                    .with_operation(4)
                    .with_permission_type(3),
            ])
            .encode(out, version),
        ApiKey::DescribeAcls => DescribeAclsRequest::default()
            .with_resource_type_filter(1)
            .with_resource_name_filter(Some(name("orders")))
            .with_pattern_type_filter(2)
            .with_principal_filter(Some(name("User:alice")))
            .with_host_filter(None)
            .with_operation(1)
            .with_permission_type(1)
            .encode(out, version),
        ApiKey::DeleteAcls => DeleteAclsRequest::default()
            .with_filters(vec![
                delete_acls_request::DeleteAclsFilter::default()
                    .with_resource_type_filter(2)
                    .with_resource_name_filter(Some(name("orders-")))
                    .with_pattern_type_filter(4)
                    .with_principal_filter(None)
                    .with_host_filter(None)
                    .with_operation(1)
                    .with_permission_type(1),
            ])
            .encode(out, version),
        ApiKey::DescribeClientQuotas => DescribeClientQuotasRequest::default()
            .with_components(vec![
                describe_client_quotas_request::ComponentData::default()
                    .with_entity_type(name("user"))
                    .with_match_type(0)
                    .with_match(Some(name("alice"))),
            ])
            .with_strict(false)
            .encode(out, version),
        ApiKey::AlterClientQuotas => AlterClientQuotasRequest::default()
            .with_entries(vec![
                alter_client_quotas_request::EntryData::default()
                    .with_entity(vec![
                        alter_client_quotas_request::EntityData::default()
                            .with_entity_type(name("user"))
                            .with_entity_name(Some(name("alice"))),
                    ])
                    .with_ops(vec![
                        alter_client_quotas_request::OpData::default()
                            .with_key(name("producer_byte_rate"))
                            .with_value(1048576.0),
                    ]),
            ])
            .encode(out, version),
        other => anyhow::bail!("no sample request for {other:?}"),
    }
}

/// A request frame as it follows the 4-byte size on the wire: the request
/// header (at the version `key` and `version` call for, client id
/// `fuzz`), then [`sample_request`]'s body.
pub fn sample_frame(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    records: Bytes,
) -> anyhow::Result<Vec<u8>> {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(name("fuzz")))
        .encode(&mut out, key.request_header_version(version))?;
    sample_request(key, version, records, &mut out)?;
    Ok(out.to_vec())
}
