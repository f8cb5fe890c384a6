//! DescribeTopicPartitions (API 75, v0; KIP-966): topics and their
//! partitions, paged, as the Kafka 4 admin client's `describeTopics` reads
//! them. Kafka's paging (`KRaftMetadataCache.getTopicMetadataForDescribeTopicResponse`):
//!
//! * the topics asked for (none: every topic), each once, in name order,
//!   from the cursor's topic on; the cursor's partition index is where its
//!   topic starts;
//! * at most `response_partition_limit` partitions (clamped to
//!   1..=[`PARTITIONS_PER_RESPONSE_MAX`]) per response: a topic cut short
//!   ends the response with a cursor at its next partition, and a limit
//!   used up exactly at a topic's end puts the cursor at the next topic's
//!   partition 0;
//! * a topic that does not exist, asked for by name, gets
//!   UNKNOWN_TOPIC_OR_PARTITION (INVALID_TOPIC_EXCEPTION for an invalid
//!   name) and takes none of the limit;
//! * a cursor whose topic is not among those asked for, or whose partition
//!   is negative, makes the request INVALID_REQUEST (every topic asked for
//!   gets it, with no partitions).
//!
//! A single broker leads every partition at epoch 0 with itself as the only
//! replica, in sync; the eligible leader replica lists (KIP-966) are empty.
//! Topics the principal may not DESCRIBE are left out of a request for
//! every topic, and get TOPIC_AUTHORIZATION_FAILED (taking none of the
//! limit) when asked for by name; each topic reports the operations the
//! principal is allowed on it (KIP-430).

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, TopicName,
};

use super::{decode, str_bytes};
use crate::broker::Broker;
use crate::broker::is_internal_topic;
use crate::broker::metadata::{ClusterMetadata, TopicMeta};
use crate::kafka::authorize::Authorizer;
use crate::kafka::dispatch::Request;
use crate::kafka::request_error::RequestError;
use crate::kafka::response::Response;
use crate::security::acl::{Operation, ResourceType};
use crate::storage::partition::validate_topic_name;

/// Most partitions one response describes, whatever the client asks:
/// Kafka's broker `max.request.partition.size.limit` default.
pub const PARTITIONS_PER_RESPONSE_MAX: i32 = 2000;

/// Where a page starts: a topic, and the partition index to start it at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageStart {
    pub topic: String,
    pub partition: i32,
}

/// One response's worth of topics, and where the next one starts.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub topics: Vec<PageTopic>,
    pub next: Option<PageStart>,
}

/// A cursor Kafka refuses: its topic is not among those asked for, or its
/// partition is negative (the request gets INVALID_REQUEST).
#[derive(Debug, PartialEq, Eq)]
pub struct CursorRefused;

/// A topic in a page: its partitions in the page, or why it has none.
#[derive(Debug, PartialEq, Eq)]
pub enum PageTopic {
    Found { name: String, partitions: Vec<i32> },
    Missing { name: String, error_code: i16 },
}

pub async fn handle(request: &Request<'_>, body: Bytes) -> Result<Response, RequestError> {
    let describe: DescribeTopicPartitionsRequest = decode(request, body)?;
    let asked: Vec<String> = describe
        .topics
        .iter()
        .map(|topic| topic.name.0.to_string())
        .collect();
    let start = describe.cursor.as_ref().map(|cursor| PageStart {
        topic: cursor.topic_name.0.to_string(),
        partition: cursor.partition_index,
    });
    let cluster = request.broker.metadata.snapshot();
    let authorizer = request.authorizer();
    let describable =
        |name: &str| authorizer.allows_quietly(Operation::Describe, ResourceType::Topic, name);
    let page = match page(
        &cluster,
        &describable,
        &asked,
        start,
        describe.response_partition_limit,
    ) {
        Ok(page) => page,
        Err(CursorRefused) => return request.respond(invalid_request(&asked)),
    };
    let topics = page
        .topics
        .into_iter()
        .map(|topic| match topic {
            PageTopic::Found { name, partitions } => {
                let meta = cluster.topic(&name).map(AsRef::as_ref);
                found_topic(request.broker, &authorizer, &name, meta, partitions)
            }
            PageTopic::Missing { name, error_code } => response_topic(&authorizer, &name)
                .with_error_code(error_code)
                .with_is_internal(is_internal_topic(&name)),
        })
        .collect();
    let next_cursor = page.next.map(|next| {
        Cursor::default()
            .with_topic_name(TopicName(str_bytes(&next.topic)))
            .with_partition_index(next.partition)
    });
    request.respond(
        DescribeTopicPartitionsResponse::default()
            .with_topics(topics)
            .with_next_cursor(next_cursor),
    )
}

/// The page `start` and `limit` select among `asked` (empty: every topic
/// that is `describable`).
pub fn page(
    cluster: &ClusterMetadata,
    describable: &dyn Fn(&str) -> bool,
    asked: &[String],
    start: Option<PageStart>,
    limit: i32,
) -> Result<Page, CursorRefused> {
    let every_topic = asked.is_empty();
    let first_topic = start.as_ref().map_or("", |start| start.topic.as_str());
    let mut names: Vec<&str> = if every_topic {
        cluster
            .topics
            .keys()
            .map(String::as_str)
            .filter(|name| describable(name))
            .collect()
    } else {
        asked.iter().map(String::as_str).collect()
    };
    names.retain(|name| *name >= first_topic);
    names.sort_unstable();
    names.dedup();
    if let Some(start) = &start {
        let cursor_asked = every_topic || names.contains(&start.topic.as_str());
        if !cursor_asked || start.partition < 0 {
            return Err(CursorRefused);
        }
    }
    let mut remaining = i64::from(limit.clamp(1, PARTITIONS_PER_RESPONSE_MAX));
    let mut topics = Vec::new();
    for name in names {
        if remaining == 0 {
            return Ok(Page {
                topics,
                next: Some(PageStart {
                    topic: name.to_owned(),
                    partition: 0,
                }),
            });
        }
        if !describable(name) {
            topics.push(PageTopic::Missing {
                name: name.to_owned(),
                error_code: ResponseError::TopicAuthorizationFailed.code(),
            });
            continue;
        }
        let Some(meta) = cluster.topic(name) else {
            if !every_topic {
                topics.push(missing_topic(name));
            }
            continue;
        };
        let first = match &start {
            Some(start) if start.topic == name => i64::from(start.partition),
            _ => 0,
        };
        let count = i64::from(meta.partitions);
        let end = count.min(first + remaining);
        let partitions: Vec<i32> = (first..end)
            .filter_map(|index| i32::try_from(index).ok())
            .collect();
        remaining -= partitions.len() as i64;
        topics.push(PageTopic::Found {
            name: name.to_owned(),
            partitions,
        });
        if end < count {
            return Ok(Page {
                topics,
                next: Some(PageStart {
                    topic: name.to_owned(),
                    partition: i32::try_from(end).unwrap_or(i32::MAX),
                }),
            });
        }
    }
    Ok(Page { topics, next: None })
}

fn missing_topic(name: &str) -> PageTopic {
    let error = if validate_topic_name(name).is_err() {
        ResponseError::InvalidTopicException
    } else {
        ResponseError::UnknownTopicOrPartition
    };
    PageTopic::Missing {
        name: name.to_owned(),
        error_code: error.code(),
    }
}

fn found_topic(
    broker: &Broker,
    authorizer: &Authorizer,
    name: &str,
    meta: Option<&TopicMeta>,
    partitions: Vec<i32>,
) -> DescribeTopicPartitionsResponseTopic {
    let partitions = partitions
        .into_iter()
        .map(|index| {
            let leader = BrokerId(broker.partition_leader(name, index as u32));
            let (replicas, in_sync, offline) = broker.partition_replicas(name, index as u32);
            let ids = |nodes: Vec<i32>| nodes.into_iter().map(BrokerId).collect();
            let error = if leader.0 < 0 {
                ResponseError::LeaderNotAvailable.code()
            } else {
                0
            };
            DescribeTopicPartitionsResponsePartition::default()
                .with_partition_index(index)
                .with_error_code(error)
                .with_leader_id(leader)
                .with_leader_epoch(broker.partition_leader_epoch(name, index as u32))
                .with_replica_nodes(ids(replicas))
                .with_isr_nodes(ids(in_sync))
                .with_eligible_leader_replicas(Some(Vec::new()))
                .with_last_known_elr(Some(Vec::new()))
                .with_offline_replicas(ids(offline))
        })
        .collect();
    let topic = response_topic(authorizer, name)
        .with_is_internal(is_internal_topic(name))
        .with_partitions(partitions);
    match meta {
        Some(meta) => topic.with_topic_id(meta.id.to_uuid()),
        None => topic,
    }
}

fn response_topic(authorizer: &Authorizer, name: &str) -> DescribeTopicPartitionsResponseTopic {
    DescribeTopicPartitionsResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(name))))
        .with_topic_authorized_operations(authorizer.operations(true, ResourceType::Topic, name))
}

/// Kafka's answer to a refused cursor: INVALID_REQUEST for every topic
/// asked for.
fn invalid_request(asked: &[String]) -> DescribeTopicPartitionsResponse {
    let topics = asked
        .iter()
        .map(|name| {
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(Some(TopicName(str_bytes(name))))
                .with_error_code(ResponseError::InvalidRequest.code())
        })
        .collect();
    DescribeTopicPartitionsResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::metadata::TopicId;

    fn cluster(topics: &[(&str, u32)]) -> std::sync::Arc<ClusterMetadata> {
        let topics: Vec<(&str, TopicId, u32)> = topics
            .iter()
            .map(|&(name, partitions)| (name, TopicId::generate(), partitions))
            .collect();
        std::sync::Arc::new(ClusterMetadata::with_topics(&topics))
    }

    fn found(name: &str, partitions: std::ops::Range<i32>) -> PageTopic {
        PageTopic::Found {
            name: name.to_owned(),
            partitions: partitions.collect(),
        }
    }

    fn at(topic: &str, partition: i32) -> Option<PageStart> {
        Some(PageStart {
            topic: topic.to_owned(),
            partition,
        })
    }

    #[test]
    fn topics_not_describable_are_hidden_or_refused_and_take_no_limit() {
        let cluster = cluster(&[("a", 2), ("secret", 3), ("z", 1)]);
        let describable = |name: &str| name != "secret";
        let every = page(&cluster, &describable, &[], None, 3).unwrap();
        assert_eq!(every.topics, vec![found("a", 0..2), found("z", 0..1)]);
        let asked = ["secret", "z"].map(str::to_owned);
        let named = page(&cluster, &describable, &asked, None, 1).unwrap();
        let refused = PageTopic::Missing {
            name: "secret".to_owned(),
            error_code: ResponseError::TopicAuthorizationFailed.code(),
        };
        assert_eq!(named.topics, vec![refused, found("z", 0..1)]);
    }

    #[test]
    fn pages_cut_topics_at_the_limit_and_resume_at_the_cursor() {
        let cluster = cluster(&[("b", 3), ("a", 2), ("c", 4)]);
        let asked = ["c", "a", "b", "a"].map(str::to_owned);
        let first = page(&cluster, &|_| true, &asked, None, 4).unwrap();
        assert_eq!(first.topics, vec![found("a", 0..2), found("b", 0..2)]);
        assert_eq!(first.next, at("b", 2));
        let second = page(&cluster, &|_| true, &asked, first.next, 4).unwrap();
        assert_eq!(second.topics, vec![found("b", 2..3), found("c", 0..3)]);
        assert_eq!(second.next, at("c", 3));
        let third = page(&cluster, &|_| true, &asked, second.next, 4).unwrap();
        assert_eq!(third.topics, vec![found("c", 3..4)]);
        assert_eq!(third.next, None);
    }

    #[test]
    fn a_limit_used_up_at_a_topic_end_points_at_the_next_topic() {
        let cluster = cluster(&[("a", 2), ("b", 1)]);
        let page = page(&cluster, &|_| true, &[], None, 2).unwrap();
        assert_eq!(page.topics, vec![found("a", 0..2)]);
        assert_eq!(page.next, at("b", 0));
    }

    #[test]
    fn missing_topics_take_none_of_the_limit_and_bad_cursors_are_refused() {
        let cluster = cluster(&[("a", 2)]);
        let asked = ["a", "nope", "bad name"].map(str::to_owned);
        let whole = page(&cluster, &|_| true, &asked, None, 3).unwrap();
        assert_eq!(
            whole.topics,
            vec![
                found("a", 0..2),
                PageTopic::Missing {
                    name: "bad name".to_owned(),
                    error_code: ResponseError::InvalidTopicException.code(),
                },
                PageTopic::Missing {
                    name: "nope".to_owned(),
                    error_code: ResponseError::UnknownTopicOrPartition.code(),
                },
            ]
        );
        assert_eq!(whole.next, None);
        // Kafka points the cursor at the next topic once the limit is used
        // up, whether or not that topic exists.
        let cut = page(&cluster, &|_| true, &asked, None, 2).unwrap();
        assert_eq!(cut.topics, vec![found("a", 0..2)]);
        assert_eq!(cut.next, at("bad name", 0));
        assert!(page(&cluster, &|_| true, &asked, at("zzz", 0), 2).is_err());
        assert!(page(&cluster, &|_| true, &asked, at("a", -1), 2).is_err());
        // With every topic asked for, any cursor topic is allowed.
        assert_eq!(
            page(&cluster, &|_| true, &[], at("b", 0), 2)
                .unwrap()
                .topics,
            vec![]
        );
    }
}
