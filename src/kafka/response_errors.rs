//! The error codes a response carries, for `sluice_kafka_request_errors_total`.
//!
//! Every response type the broker sends implements [`ErrorCodes`], so
//! [`super::dispatch::Request::respond`] counts each non-zero code it
//! returns: one per partition, topic, group or member that failed, as the
//! client sees them. Fetch frames its response by hand and counts its
//! partition errors itself.

use kafka_protocol::messages::{
    AddOffsetsToTxnResponse, AddPartitionsToTxnResponse, AlterConfigsResponse, ApiVersionsResponse,
    ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatResponse, CreatePartitionsResponse,
    CreateTopicsResponse, DeleteGroupsResponse, DeleteRecordsResponse, DeleteTopicsResponse,
    DescribeClusterResponse, DescribeConfigsResponse, DescribeGroupsResponse,
    DescribeLogDirsResponse, DescribeProducersResponse, DescribeTopicPartitionsResponse,
    DescribeTransactionsResponse, EndTxnResponse, FindCoordinatorResponse, HeartbeatResponse,
    IncrementalAlterConfigsResponse, InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse,
    ListGroupsResponse, ListOffsetsResponse, ListTransactionsResponse, MetadataResponse,
    OffsetCommitResponse, OffsetDeleteResponse, OffsetFetchResponse, ProduceResponse,
    SyncGroupResponse, TxnOffsetCommitResponse,
};
use kafka_protocol::messages::{
    AlterClientQuotasResponse, AlterUserScramCredentialsResponse, CreateAclsResponse,
    DeleteAclsResponse, DescribeAclsResponse, DescribeClientQuotasResponse,
    DescribeUserScramCredentialsResponse, SaslAuthenticateResponse, SaslHandshakeResponse,
};

/// Visit every error code in a response (zeros included; the caller skips them).
pub trait ErrorCodes {
    fn error_codes(&self, each: &mut dyn FnMut(i16));
}

/// Responses whose only error code is the top-level one.
macro_rules! top_level {
    ($($response:ty),*) => {$(
        impl ErrorCodes for $response {
            fn error_codes(&self, each: &mut dyn FnMut(i16)) {
                each(self.error_code);
            }
        }
    )*};
}

top_level!(
    ApiVersionsResponse,
    DescribeClusterResponse,
    JoinGroupResponse,
    SyncGroupResponse,
    HeartbeatResponse,
    InitProducerIdResponse,
    EndTxnResponse,
    AddOffsetsToTxnResponse,
    ListTransactionsResponse,
    ListGroupsResponse,
    ConsumerGroupHeartbeatResponse,
    SaslHandshakeResponse,
    SaslAuthenticateResponse,
    DescribeAclsResponse,
    DescribeClientQuotasResponse
);

/// Responses with one error code per item of a list, and optionally a
/// top-level code (its field in brackets).
macro_rules! per_item {
    ($($response:ty => $([$top:ident])? $list:ident),*) => {$(
        impl ErrorCodes for $response {
            fn error_codes(&self, each: &mut dyn FnMut(i16)) {
                $(each(self.$top);)?
                self.$list.iter().for_each(|item| each(item.error_code));
            }
        }
    )*};
}

per_item!(
    CreateTopicsResponse => topics,
    DeleteTopicsResponse => responses,
    CreatePartitionsResponse => results,
    DescribeConfigsResponse => results,
    IncrementalAlterConfigsResponse => responses,
    AlterConfigsResponse => responses,
    DescribeGroupsResponse => groups,
    ConsumerGroupDescribeResponse => groups,
    DeleteGroupsResponse => results,
    FindCoordinatorResponse => [error_code] coordinators,
    LeaveGroupResponse => [error_code] members,
    DescribeTransactionsResponse => transaction_states,
    DescribeLogDirsResponse => [error_code] results,
    DescribeUserScramCredentialsResponse => [error_code] results,
    AlterUserScramCredentialsResponse => results,
    CreateAclsResponse => results,
    DeleteAclsResponse => filter_results,
    AlterClientQuotasResponse => entries
);

/// Visit the code of every partition nested in `topics`.
macro_rules! partition_codes {
    ($each:ident, $topics:expr, $partitions:ident) => {
        for topic in $topics {
            topic
                .$partitions
                .iter()
                .for_each(|partition| $each(partition.error_code));
        }
    };
}

impl ErrorCodes for AddPartitionsToTxnResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        for topic in &self.results_by_topic_v3_and_below {
            topic
                .results_by_partition
                .iter()
                .for_each(|partition| each(partition.partition_error_code));
        }
    }
}

impl ErrorCodes for TxnOffsetCommitResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        partition_codes!(each, &self.topics, partitions);
    }
}

impl ErrorCodes for DeleteRecordsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        partition_codes!(each, &self.topics, partitions);
    }
}

impl ErrorCodes for DescribeProducersResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        partition_codes!(each, &self.topics, partitions);
    }
}

impl ErrorCodes for ProduceResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        partition_codes!(each, &self.responses, partition_responses);
    }
}

impl ErrorCodes for ListOffsetsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        partition_codes!(each, &self.topics, partitions);
    }
}

impl ErrorCodes for OffsetCommitResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        partition_codes!(each, &self.topics, partitions);
    }
}

impl ErrorCodes for OffsetDeleteResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        partition_codes!(each, &self.topics, partitions);
    }
}

impl ErrorCodes for MetadataResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        self.topics.iter().for_each(|topic| each(topic.error_code));
        partition_codes!(each, &self.topics, partitions);
    }
}

impl ErrorCodes for DescribeTopicPartitionsResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        self.topics.iter().for_each(|topic| each(topic.error_code));
        partition_codes!(each, &self.topics, partitions);
    }
}

impl ErrorCodes for OffsetFetchResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        // v0-7 carry one group at the top level, v8+ a list of groups.
        each(self.error_code);
        partition_codes!(each, &self.topics, partitions);
        for group in &self.groups {
            each(group.error_code);
            partition_codes!(each, &group.topics, partitions);
        }
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    use super::*;

    #[test]
    fn nested_partition_codes_are_all_visited() {
        let response = ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default().with_partition_responses(vec![
                PartitionProduceResponse::default().with_error_code(3),
                PartitionProduceResponse::default(),
            ]),
            TopicProduceResponse::default().with_partition_responses(vec![
                PartitionProduceResponse::default().with_error_code(10),
            ]),
        ]);
        let mut codes = Vec::new();
        response.error_codes(&mut |code| codes.push(code));
        assert_eq!(codes, vec![3, 0, 10]);
    }
}
