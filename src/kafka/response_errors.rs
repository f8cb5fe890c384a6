//! The error codes a response carries, for `sluice_kafka_request_errors_total`.
//!
//! Every response type the broker sends implements [`ErrorCodes`], so
//! [`super::dispatch::Request::respond`] counts each non-zero code it
//! returns: one per partition, topic, group or member that failed, as the
//! client sees them. Fetch frames its response by hand and counts its
//! partition errors itself.

use kafka_protocol::messages::{
    ApiVersionsResponse, CreatePartitionsResponse, CreateTopicsResponse, DeleteGroupsResponse,
    DeleteTopicsResponse, DescribeClusterResponse, DescribeConfigsResponse, DescribeGroupsResponse,
    FindCoordinatorResponse, HeartbeatResponse, IncrementalAlterConfigsResponse, JoinGroupResponse,
    LeaveGroupResponse, ListGroupsResponse, ListOffsetsResponse, MetadataResponse,
    OffsetCommitResponse, OffsetDeleteResponse, OffsetFetchResponse, ProduceResponse,
    SyncGroupResponse,
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
    ListGroupsResponse
);

/// Responses with one error code per item of a list.
macro_rules! per_item {
    ($($response:ty => $list:ident),*) => {$(
        impl ErrorCodes for $response {
            fn error_codes(&self, each: &mut dyn FnMut(i16)) {
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
    DescribeGroupsResponse => groups,
    DeleteGroupsResponse => results
);

/// Responses with one error code per partition, nested under topics.
macro_rules! per_partition {
    ($($response:ty => $topics:ident . $partitions:ident),*) => {$(
        impl ErrorCodes for $response {
            fn error_codes(&self, each: &mut dyn FnMut(i16)) {
                for topic in &self.$topics {
                    topic.$partitions.iter().for_each(|partition| each(partition.error_code));
                }
            }
        }
    )*};
}

per_partition!(
    ProduceResponse => responses.partition_responses,
    ListOffsetsResponse => topics.partitions,
    OffsetCommitResponse => topics.partitions
);

impl ErrorCodes for MetadataResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        for topic in &self.topics {
            each(topic.error_code);
            topic
                .partitions
                .iter()
                .for_each(|partition| each(partition.error_code));
        }
    }
}

impl ErrorCodes for FindCoordinatorResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        self.coordinators
            .iter()
            .for_each(|coordinator| each(coordinator.error_code));
    }
}

impl ErrorCodes for LeaveGroupResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        self.members
            .iter()
            .for_each(|member| each(member.error_code));
    }
}

impl ErrorCodes for OffsetDeleteResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        each(self.error_code);
        for topic in &self.topics {
            topic
                .partitions
                .iter()
                .for_each(|partition| each(partition.error_code));
        }
    }
}

impl ErrorCodes for OffsetFetchResponse {
    fn error_codes(&self, each: &mut dyn FnMut(i16)) {
        // v0-7 carry one group at the top level, v8+ a list of groups.
        each(self.error_code);
        for topic in &self.topics {
            topic
                .partitions
                .iter()
                .for_each(|partition| each(partition.error_code));
        }
        for group in &self.groups {
            each(group.error_code);
            for topic in &group.topics {
                topic
                    .partitions
                    .iter()
                    .for_each(|partition| each(partition.error_code));
            }
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
