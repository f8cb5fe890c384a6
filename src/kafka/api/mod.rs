//! One module per Kafka API. Each decodes its request with kafka-protocol,
//! does the work (on the owner shards where partitions are involved) and
//! encodes its response; fetch frames its records by hand for zero-copy.

pub mod acls;
pub mod add_offsets_to_txn;
pub mod add_partitions_to_txn;
pub mod alter_configs;
pub mod api_versions;
pub mod client_quotas;
pub mod consumer_group_describe;
pub mod consumer_group_heartbeat;
pub mod create_partitions;
pub mod create_topics;
pub mod delete_groups;
pub mod delete_records;
pub mod delete_topics;
pub mod describe_cluster;
pub mod describe_configs;
pub mod describe_groups;
pub mod describe_log_dirs;
pub mod describe_producers;
pub mod describe_topic_partitions;
pub mod describe_transactions;
pub mod end_txn;
pub mod fetch;
pub mod find_coordinator;
pub mod heartbeat;
pub mod incremental_alter_configs;
pub mod init_producer_id;
pub mod join_group;
pub mod leave_group;
pub mod list_groups;
pub mod list_offsets;
pub mod list_transactions;
pub mod metadata;
pub mod offset_commit;
pub mod offset_delete;
pub mod offset_fetch;
pub mod produce;
pub mod sasl_authenticate;
pub mod sasl_handshake;
pub mod sync_group;
pub mod topic_access;
pub mod txn_offset_commit;
pub mod user_scram_credentials;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::dispatch::Request;
use super::request_error::RequestError;
use super::response::Response;

/// Most partitions one transaction request (AddPartitionsToTxn,
/// TxnOffsetCommit, DescribeProducers) or DeleteRecords may name. Clients name the
/// partitions they just wrote to or consumed, a few thousand at most; a
/// request naming more is closed with a log line rather than answered,
/// since its answer costs the broker many times the request's size.
pub const TXN_REQUEST_PARTITIONS_MAX: usize = 10_000;

/// Close the connection if `count` partitions are more than
/// [`TXN_REQUEST_PARTITIONS_MAX`].
pub fn check_partition_count(request: &Request<'_>, count: usize) -> Result<(), RequestError> {
    if count > TXN_REQUEST_PARTITIONS_MAX {
        return Err(RequestError::TooManyPartitions {
            key: request.key,
            count,
            limit: TXN_REQUEST_PARTITIONS_MAX,
        });
    }
    Ok(())
}

/// Serve one request; `Ok(None)` means no response is sent (acks=0).
pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Option<Response>, RequestError> {
    match request.key {
        ApiKey::ApiVersions => api_versions::handle(request, body).map(Some),
        ApiKey::Metadata => metadata::handle(request, body).await.map(Some),
        ApiKey::SaslHandshake => sasl_handshake::handle(request, body).map(Some),
        ApiKey::SaslAuthenticate => sasl_authenticate::handle(request, body).await.map(Some),
        ApiKey::DescribeUserScramCredentials => {
            user_scram_credentials::describe(request, body).map(Some)
        }
        ApiKey::AlterUserScramCredentials => {
            user_scram_credentials::alter(request, body).await.map(Some)
        }
        ApiKey::DescribeClientQuotas => client_quotas::describe(request, body).map(Some),
        ApiKey::AlterClientQuotas => client_quotas::alter(request, body).await.map(Some),
        ApiKey::CreateAcls => acls::create(request, body).await.map(Some),
        ApiKey::DescribeAcls => acls::describe(request, body).map(Some),
        ApiKey::DeleteAcls => acls::delete(request, body).await.map(Some),
        ApiKey::Produce => produce::handle(request, body).await,
        ApiKey::InitProducerId => init_producer_id::handle(request, body).await.map(Some),
        ApiKey::AddPartitionsToTxn => add_partitions_to_txn::handle(request, body).await.map(Some),
        ApiKey::EndTxn => end_txn::handle(request, body).await.map(Some),
        ApiKey::AddOffsetsToTxn => add_offsets_to_txn::handle(request, body).await.map(Some),
        ApiKey::TxnOffsetCommit => txn_offset_commit::handle(request, body).await.map(Some),
        ApiKey::DescribeProducers => describe_producers::handle(request, body).await.map(Some),
        ApiKey::DeleteRecords => delete_records::handle(request, body).await.map(Some),
        ApiKey::DescribeTransactions => {
            describe_transactions::handle(request, body).await.map(Some)
        }
        ApiKey::ListTransactions => list_transactions::handle(request, body).await.map(Some),
        ApiKey::Fetch => fetch::handle(request, body).await.map(Some),
        ApiKey::ListOffsets => list_offsets::handle(request, body).await.map(Some),
        ApiKey::CreateTopics => create_topics::handle(request, body).await.map(Some),
        ApiKey::DeleteTopics => delete_topics::handle(request, body).await.map(Some),
        ApiKey::CreatePartitions => create_partitions::handle(request, body).await.map(Some),
        ApiKey::DescribeConfigs => describe_configs::handle(request, body).map(Some),
        ApiKey::AlterConfigs => alter_configs::handle(request, body).await.map(Some),
        ApiKey::IncrementalAlterConfigs => incremental_alter_configs::handle(request, body)
            .await
            .map(Some),
        ApiKey::DescribeCluster => describe_cluster::handle(request, body).map(Some),
        ApiKey::DescribeTopicPartitions => describe_topic_partitions::handle(request, body)
            .await
            .map(Some),
        ApiKey::DescribeLogDirs => describe_log_dirs::handle(request, body).await.map(Some),
        ApiKey::FindCoordinator => find_coordinator::handle(request, body).map(Some),
        ApiKey::JoinGroup => join_group::handle(request, body).await.map(Some),
        ApiKey::SyncGroup => sync_group::handle(request, body).await.map(Some),
        ApiKey::Heartbeat => heartbeat::handle(request, body).await.map(Some),
        ApiKey::LeaveGroup => leave_group::handle(request, body).await.map(Some),
        ApiKey::OffsetCommit => offset_commit::handle(request, body).await.map(Some),
        ApiKey::OffsetFetch => offset_fetch::handle(request, body).await.map(Some),
        ApiKey::OffsetDelete => offset_delete::handle(request, body).await.map(Some),
        ApiKey::ListGroups => list_groups::handle(request, body).await.map(Some),
        ApiKey::DescribeGroups => describe_groups::handle(request, body).await.map(Some),
        ApiKey::DeleteGroups => delete_groups::handle(request, body).await.map(Some),
        ApiKey::ConsumerGroupHeartbeat => consumer_group_heartbeat::handle(request, body)
            .await
            .map(Some),
        ApiKey::ConsumerGroupDescribe => consumer_group_describe::handle(request, body)
            .await
            .map(Some),
        key => Err(RequestError::NotImplemented { key }),
    }
}

/// Decode the request body, or say why it is malformed.
pub fn decode<M: Decodable>(request: &Request<'_>, body: Bytes) -> Result<M, RequestError> {
    decode_body(request.key, request.version, body)
}

/// Decode the body of a `key` request of `version`, or say why it is
/// malformed (the decoder's error is the source). The decoder (kafka-protocol, patched in `vendor/`) sizes no
/// allocation by a length or count before the bytes behind it are seen, so a
/// hostile body costs at most its own size (issue 12).
pub fn decode_body<M: Decodable>(
    key: ApiKey,
    version: i16,
    mut body: Bytes,
) -> Result<M, RequestError> {
    M::decode(&mut body, version).map_err(|source| RequestError::MalformedBody {
        key,
        version,
        source,
    })
}

pub use crate::kafka::authorize::AUTHORIZED_OPERATIONS_UNKNOWN;

pub fn str_bytes(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// Items gathered under their topic, keeping request order (consecutive
/// items of one topic share an entry), for responses nested by topic.
pub fn by_topic<P>(items: impl IntoIterator<Item = (String, P)>) -> Vec<(String, Vec<P>)> {
    let mut topics: Vec<(String, Vec<P>)> = Vec::new();
    for (topic, item) in items {
        match topics.last_mut() {
            Some((name, list)) if *name == topic => list.push(item),
            _ => topics.push((topic, vec![item])),
        }
    }
    topics
}
