//! DeleteTopics: by name (the versions served name topics).

use bytes::Bytes;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse};

use super::{decode, str_bytes};
use crate::kafka::dispatch::Request;
use crate::kafka::error_code;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let delete: DeleteTopicsRequest = decode(request, body)?;
    let mut results = Vec::with_capacity(delete.topic_names.len());
    for name in delete.topic_names {
        let deleted = request
            .broker
            .delete_topic(&request.shard.shards, name.0.as_str())
            .await;
        let mut result = DeletableTopicResult::default().with_name(Some(name));
        if let Err(error) = deleted {
            result = result
                .with_error_code(error_code::for_topic(&error))
                .with_error_message(Some(str_bytes(&error.to_string())));
        }
        results.push(result);
    }
    request.respond(&DeleteTopicsResponse::default().with_responses(results))
}
