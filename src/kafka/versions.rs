//! The APIs and versions Sluice implements: exactly what ApiVersions
//! advertises, and what the dispatcher accepts.
//!
//! Ranges stop before KIP-890's transaction versions (InitProducerId 5,
//! AddPartitionsToTxn 4+, EndTxn 4+) and features Sluice does not have, so
//! every advertised version is fully served; they reach the Kafka 4.1
//! versions of Fetch (18), Produce (13), ListOffsets (10), Metadata (13) and
//! DeleteTopics (6), topic ids included. librdkafka 2.0.2 (Debian) and
//! current clients negotiate within these ranges.

use kafka_protocol::messages::ApiKey;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Supported {
    pub key: ApiKey,
    pub min: i16,
    pub max: i16,
}

pub const SUPPORTED: &[Supported] = &[
    Supported {
        key: ApiKey::Produce,
        min: 3,
        max: 13,
    },
    Supported {
        key: ApiKey::InitProducerId,
        min: 0,
        max: 4,
    },
    Supported {
        key: ApiKey::AddPartitionsToTxn,
        min: 0,
        max: 3,
    },
    Supported {
        key: ApiKey::EndTxn,
        min: 0,
        max: 3,
    },
    Supported {
        key: ApiKey::AddOffsetsToTxn,
        min: 0,
        max: 3,
    },
    Supported {
        key: ApiKey::TxnOffsetCommit,
        min: 0,
        max: 3,
    },
    Supported {
        key: ApiKey::DeleteRecords,
        min: 0,
        max: 2,
    },
    Supported {
        key: ApiKey::DescribeProducers,
        min: 0,
        max: 0,
    },
    Supported {
        key: ApiKey::DescribeTransactions,
        min: 0,
        max: 0,
    },
    Supported {
        key: ApiKey::ListTransactions,
        min: 0,
        max: 1,
    },
    Supported {
        key: ApiKey::Fetch,
        min: 4,
        max: 18,
    },
    Supported {
        key: ApiKey::ListOffsets,
        min: 1,
        max: 10,
    },
    Supported {
        key: ApiKey::Metadata,
        min: 0,
        max: 13,
    },
    Supported {
        key: ApiKey::ApiVersions,
        min: 0,
        max: 3,
    },
    Supported {
        key: ApiKey::CreateTopics,
        min: 2,
        max: 7,
    },
    Supported {
        key: ApiKey::DeleteTopics,
        min: 1,
        max: 6,
    },
    Supported {
        key: ApiKey::CreatePartitions,
        min: 0,
        max: 3,
    },
    Supported {
        key: ApiKey::DescribeConfigs,
        min: 1,
        max: 4,
    },
    Supported {
        key: ApiKey::AlterConfigs,
        min: 0,
        max: 2,
    },
    Supported {
        key: ApiKey::IncrementalAlterConfigs,
        min: 0,
        max: 1,
    },
    Supported {
        key: ApiKey::DescribeTopicPartitions,
        min: 0,
        max: 0,
    },
    Supported {
        key: ApiKey::DescribeLogDirs,
        min: 1,
        max: 4,
    },
    Supported {
        key: ApiKey::DescribeCluster,
        min: 0,
        max: 1,
    },
    Supported {
        key: ApiKey::FindCoordinator,
        min: 0,
        max: 4,
    },
    Supported {
        key: ApiKey::JoinGroup,
        min: 0,
        max: 9,
    },
    Supported {
        key: ApiKey::SyncGroup,
        min: 0,
        max: 5,
    },
    Supported {
        key: ApiKey::Heartbeat,
        min: 0,
        max: 4,
    },
    Supported {
        key: ApiKey::LeaveGroup,
        min: 0,
        max: 5,
    },
    Supported {
        key: ApiKey::OffsetCommit,
        min: 2,
        max: 9,
    },
    Supported {
        key: ApiKey::OffsetFetch,
        min: 1,
        max: 9,
    },
    Supported {
        key: ApiKey::OffsetDelete,
        min: 0,
        max: 0,
    },
    Supported {
        key: ApiKey::ListGroups,
        min: 0,
        max: 5,
    },
    Supported {
        key: ApiKey::DescribeGroups,
        min: 0,
        max: 5,
    },
    Supported {
        key: ApiKey::DeleteGroups,
        min: 0,
        max: 2,
    },
    Supported {
        key: ApiKey::ConsumerGroupHeartbeat,
        min: 0,
        max: 1,
    },
    Supported {
        key: ApiKey::ConsumerGroupDescribe,
        min: 0,
        max: 1,
    },
    // v0 is listed because librdkafka needs it listed before it uses v1;
    // a v0 handshake (raw SASL tokens after it, before KIP-152) is refused
    // with UNSUPPORTED_VERSION and a log line (`sasl_handshake.rs`).
    Supported {
        key: ApiKey::SaslHandshake,
        min: 0,
        max: 1,
    },
    Supported {
        key: ApiKey::SaslAuthenticate,
        min: 0,
        max: 2,
    },
    Supported {
        key: ApiKey::DescribeUserScramCredentials,
        min: 0,
        max: 0,
    },
    Supported {
        key: ApiKey::AlterUserScramCredentials,
        min: 0,
        max: 0,
    },
    Supported {
        key: ApiKey::CreateAcls,
        min: 1,
        max: 3,
    },
    Supported {
        key: ApiKey::DescribeAcls,
        min: 1,
        max: 3,
    },
    Supported {
        key: ApiKey::DeleteAcls,
        min: 1,
        max: 3,
    },
    Supported {
        key: ApiKey::DescribeClientQuotas,
        min: 0,
        max: 1,
    },
    Supported {
        key: ApiKey::AlterClientQuotas,
        min: 0,
        max: 1,
    },
];

/// The supported range for `key`, if Sluice implements it at all.
pub fn supported(key: ApiKey) -> Option<Supported> {
    SUPPORTED.iter().copied().find(|entry| entry.key == key)
}

pub fn is_supported(key: ApiKey, version: i16) -> bool {
    supported(key).is_some_and(|entry| (entry.min..=entry.max).contains(&version))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    use super::*;

    #[test]
    fn advertised_ranges_lie_within_what_the_codec_handles() {
        let codec = |key: ApiKey| match key {
            ApiKey::Produce => ProduceRequest::VERSIONS,
            ApiKey::Fetch => FetchRequest::VERSIONS,
            ApiKey::ListOffsets => ListOffsetsRequest::VERSIONS,
            ApiKey::Metadata => MetadataRequest::VERSIONS,
            ApiKey::ApiVersions => ApiVersionsRequest::VERSIONS,
            ApiKey::CreateTopics => CreateTopicsRequest::VERSIONS,
            ApiKey::DeleteTopics => DeleteTopicsRequest::VERSIONS,
            ApiKey::CreatePartitions => CreatePartitionsRequest::VERSIONS,
            ApiKey::DescribeConfigs => DescribeConfigsRequest::VERSIONS,
            ApiKey::AlterConfigs => AlterConfigsRequest::VERSIONS,
            ApiKey::IncrementalAlterConfigs => IncrementalAlterConfigsRequest::VERSIONS,
            ApiKey::DescribeCluster => DescribeClusterRequest::VERSIONS,
            ApiKey::DescribeTopicPartitions => DescribeTopicPartitionsRequest::VERSIONS,
            ApiKey::DescribeLogDirs => DescribeLogDirsRequest::VERSIONS,
            ApiKey::FindCoordinator => FindCoordinatorRequest::VERSIONS,
            ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
            ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
            ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
            ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
            ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
            ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
            ApiKey::OffsetDelete => OffsetDeleteRequest::VERSIONS,
            ApiKey::ListGroups => ListGroupsRequest::VERSIONS,
            ApiKey::DescribeGroups => DescribeGroupsRequest::VERSIONS,
            ApiKey::DeleteGroups => DeleteGroupsRequest::VERSIONS,
            ApiKey::InitProducerId => InitProducerIdRequest::VERSIONS,
            ApiKey::AddPartitionsToTxn => AddPartitionsToTxnRequest::VERSIONS,
            ApiKey::EndTxn => EndTxnRequest::VERSIONS,
            ApiKey::AddOffsetsToTxn => AddOffsetsToTxnRequest::VERSIONS,
            ApiKey::TxnOffsetCommit => TxnOffsetCommitRequest::VERSIONS,
            ApiKey::DescribeProducers => DescribeProducersRequest::VERSIONS,
            ApiKey::DeleteRecords => DeleteRecordsRequest::VERSIONS,
            ApiKey::DescribeTransactions => DescribeTransactionsRequest::VERSIONS,
            ApiKey::ListTransactions => ListTransactionsRequest::VERSIONS,
            ApiKey::ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest::VERSIONS,
            ApiKey::ConsumerGroupDescribe => ConsumerGroupDescribeRequest::VERSIONS,
            ApiKey::SaslHandshake => SaslHandshakeRequest::VERSIONS,
            ApiKey::SaslAuthenticate => SaslAuthenticateRequest::VERSIONS,
            ApiKey::DescribeUserScramCredentials => DescribeUserScramCredentialsRequest::VERSIONS,
            ApiKey::AlterUserScramCredentials => AlterUserScramCredentialsRequest::VERSIONS,
            ApiKey::CreateAcls => CreateAclsRequest::VERSIONS,
            ApiKey::DescribeAcls => DescribeAclsRequest::VERSIONS,
            ApiKey::DeleteAcls => DeleteAclsRequest::VERSIONS,
            ApiKey::DescribeClientQuotas => DescribeClientQuotasRequest::VERSIONS,
            ApiKey::AlterClientQuotas => AlterClientQuotasRequest::VERSIONS,
            other => panic!("no codec listed for {other:?}"),
        };
        for entry in SUPPORTED {
            let range = codec(entry.key);
            assert!(
                range.min <= entry.min && entry.max <= range.max,
                "{entry:?} vs {range:?}"
            );
        }
    }
}
