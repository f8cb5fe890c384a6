//! DeleteTopics (versions 1–6): by name, and from v6 by name or by topic id
//! (KIP-516), with Kafka's answers (its `ControllerApis.deleteTopics`):
//!
//! * a topic named both by name and by id in one entry, or by neither, gets
//!   INVALID_REQUEST;
//! * a name or an id listed twice gets one INVALID_REQUEST for all its
//!   entries, and so does a name whose topic's id is also listed;
//! * an unknown name gets UNKNOWN_TOPIC_OR_PARTITION, an unknown id (say,
//!   one of a topic since deleted and created again) UNKNOWN_TOPIC_ID;
//! * an internal topic gets INVALID_TOPIC_EXCEPTION (only the broker
//!   changes them);
//! * a topic the principal may not DELETE gets TOPIC_AUTHORIZATION_FAILED
//!   (without its name when asked for by id).
//!
//! Each result carries the topic's name and, from v6, its id where known.
//! Results follow the request's order (Kafka shuffles them).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};

use super::{decode, str_bytes};
use crate::broker::TopicRef;
use crate::broker::metadata::{ClusterMetadata, TopicId};
use crate::kafka::dispatch::Request;
use crate::kafka::error_code;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::Operation;

/// One entry of the request, as Kafka reads it.
enum Entry {
    Delete(Target),
    Refused(Option<String>, TopicId, &'static str),
    /// Answered by another entry's result.
    Skip,
}

enum Target {
    Name(String),
    Id(TopicId),
}

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let delete: DeleteTopicsRequest = decode(request, body)?;
    let named: Vec<(Option<String>, TopicId)> = delete
        .topic_names
        .iter()
        .map(|name| (Some(name.0.to_string()), TopicId::ZERO))
        .chain(delete.topics.iter().map(|topic| {
            (
                topic.name.as_ref().map(|name| name.0.to_string()),
                TopicId::from_uuid(topic.topic_id),
            )
        }))
        .collect();
    let entries = classify(&named, &request.broker.metadata.snapshot());
    let authorizer = request.authorizer();
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        let target = match entry {
            Entry::Skip => continue,
            Entry::Refused(name, id, message) => {
                results.push(
                    result(name.as_deref(), id)
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_error_message(Some(str_bytes(message))),
                );
                continue;
            }
            Entry::Delete(target) => target,
        };
        let (topic_ref, name, id) = match &target {
            Target::Name(name) => (TopicRef::Name(name), Some(name.as_str()), TopicId::ZERO),
            Target::Id(id) => (TopicRef::Id(*id), None, *id),
        };
        let snapshot = request.broker.metadata.snapshot();
        let topic_name = match &target {
            Target::Name(name) => Some(name.as_str()),
            Target::Id(id) => snapshot.topic_by_id(*id).map(|topic| topic.name.as_str()),
        };
        if topic_name.is_some_and(|topic| !authorizer.topic(Operation::Delete, topic)) {
            results.push(
                result(name, id)
                    .with_error_code(ResponseError::TopicAuthorizationFailed.code())
                    .with_error_message(Some(str_bytes("not allowed to DELETE this topic"))),
            );
            continue;
        }
        let deleted = request
            .broker
            .delete_topic(&request.shard.shards, topic_ref)
            .await;
        results.push(match deleted {
            Ok(topic) => result(Some(&topic.name), topic.id),
            Err(error) => result(name, id)
                .with_error_code(error_code::for_topic(&error))
                .with_error_message(Some(str_bytes(&error.to_string()))),
        });
    }
    request.respond(DeleteTopicsResponse::default().with_responses(results))
}

/// Kafka's checks on the request as a whole, entry by entry in request
/// order: what to delete, what to refuse, and which entries another
/// entry's result answers.
fn classify(named: &[(Option<String>, TopicId)], cluster: &ClusterMetadata) -> Vec<Entry> {
    let mut name_counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut id_counts: BTreeMap<TopicId, usize> = BTreeMap::new();
    for (name, id) in named {
        match (name, *id) {
            (Some(name), TopicId::ZERO) => *name_counts.entry(name).or_default() += 1,
            (None, id) if id != TopicId::ZERO => *id_counts.entry(id).or_default() += 1,
            _ => {}
        }
    }
    // Ids also reached through a name listed once: the name's entry answers
    // for both.
    let named_ids: BTreeMap<TopicId, &str> = name_counts
        .iter()
        .filter(|(_, count)| **count == 1)
        .filter_map(|(name, _)| cluster.topic(name).map(|topic| (topic.id, *name)))
        .filter(|(id, _)| id_counts.get(id) == Some(&1))
        .collect();
    let mut answered_names = BTreeSet::new();
    let mut answered_ids = BTreeSet::new();
    named
        .iter()
        .map(|(name, id)| match (name, *id) {
            (None, TopicId::ZERO) => Entry::Refused(
                None,
                TopicId::ZERO,
                "Neither topic name nor id were specified.",
            ),
            (Some(name), id) if id != TopicId::ZERO => Entry::Refused(
                Some(name.clone()),
                id,
                "You may not specify both topic name and topic id.",
            ),
            (Some(name), _) if name_counts[name.as_str()] > 1 => {
                if answered_names.insert(name.as_str()) {
                    Entry::Refused(Some(name.clone()), TopicId::ZERO, "Duplicate topic name.")
                } else {
                    Entry::Skip
                }
            }
            (Some(name), _) => match named_ids.iter().find(|(_, other)| **other == name) {
                Some((&id, _)) => Entry::Refused(
                    Some(name.clone()),
                    id,
                    "The provided topic name maps to an ID that was already supplied.",
                ),
                None => Entry::Delete(Target::Name(name.clone())),
            },
            (None, id) if named_ids.contains_key(&id) => Entry::Skip,
            (None, id) if id_counts[&id] > 1 => {
                if answered_ids.insert(id) {
                    Entry::Refused(None, id, "Duplicate topic id.")
                } else {
                    Entry::Skip
                }
            }
            (None, id) => Entry::Delete(Target::Id(id)),
        })
        .collect()
}

fn result(name: Option<&str>, id: TopicId) -> DeletableTopicResult {
    DeletableTopicResult::default()
        .with_name(name.map(|name| TopicName(str_bytes(name))))
        .with_topic_id(id.to_uuid())
}
