//! CreatePartitions: grow a topic; assignments may only name this broker.
//! A topic the principal may not ALTER gets TOPIC_AUTHORIZATION_FAILED.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use super::{decode, str_bytes};
use crate::kafka::dispatch::Request;
use crate::kafka::error_code;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let create: CreatePartitionsRequest = decode(request, body)?;
    let node = request.broker.config.kafka.node_id;
    let mut results = Vec::with_capacity(create.topics.len());
    let authorizer = request.authorizer();
    for topic in create.topics {
        let result = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
        if !authorizer.topic(Operation::Alter, &topic.name.0) {
            results.push(
                result
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes("not allowed to ALTER this topic"))),
            );
            continue;
        }
        let foreign = topic
            .assignments
            .iter()
            .flatten()
            .any(|assignment| assignment.broker_ids.iter().any(|id| id.0 != node));
        let outcome = if foreign {
            Err((
                ResponseError::InvalidReplicaAssignment.code(),
                format!("this cluster has only broker {node}"),
            ))
        } else {
            let total = u32::try_from(topic.count).unwrap_or(0);
            request
                .broker
                .add_partitions(
                    &request.shard.shards,
                    topic.name.0.as_str(),
                    total,
                    create.validate_only,
                )
                .await
                .map_err(|error| (error_code::for_topic(&error), error.to_string()))
        };
        results.push(match outcome {
            Ok(()) => result,
            Err((code, message)) => result
                .with_error_code(code)
                .with_error_message(Some(str_bytes(&message))),
        });
    }
    request.respond(CreatePartitionsResponse::default().with_results(results))
}
