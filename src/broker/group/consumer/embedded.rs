//! The consumer protocol embedded in classic JoinGroup and SyncGroup bytes
//! (Kafka's `ConsumerProtocol`): a member's subscription (topics, the
//! partitions it owns, its rack) and the assignment handed back. A consumer
//! group reads them to take in members that join with the classic protocol
//! and to hand them their partitions.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// The newest version of the embedded messages this broker reads; a newer
/// one is read as this one (its extra fields come last, as Kafka's
/// clients assume).
const EMBEDDED_VERSION_MAX: i16 = 3;

/// What a classic member's protocol metadata says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    pub topics: Vec<String>,
    /// Partitions it owns, by topic name (v1+; cooperative rebalancing).
    pub owned: Vec<(String, Vec<i32>)>,
    pub rack_id: Option<String>,
}

/// Decode a ConsumerProtocolSubscription (its version first); `None` if the
/// bytes are not one.
pub fn decode_subscription(metadata: &Bytes) -> Option<Subscription> {
    let mut bytes = metadata.clone();
    if bytes.remaining() < 2 {
        return None;
    }
    let version = bytes.get_i16().clamp(0, EMBEDDED_VERSION_MAX);
    let subscription = ConsumerProtocolSubscription::decode(&mut bytes, version).ok()?;
    Some(Subscription {
        topics: subscription
            .topics
            .iter()
            .map(ToString::to_string)
            .collect(),
        owned: subscription
            .owned_partitions
            .iter()
            .map(|owned| (owned.topic.0.to_string(), owned.partitions.clone()))
            .collect(),
        rack_id: subscription.rack_id.as_ref().map(ToString::to_string),
    })
}

/// Encode an assignment as Kafka's coordinator does for a classic member of
/// a consumer group (ConsumerProtocolAssignment, its newest version).
pub fn encode_assignment(partitions: &[(String, Vec<i32>)]) -> Bytes {
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        partitions
            .iter()
            .map(|(topic, partitions)| {
                AssignedTopic::default()
                    .with_topic(StrBytes::from_string(topic.clone()).into())
                    .with_partitions(partitions.clone())
            })
            .collect(),
    );
    let mut out = BytesMut::new();
    out.put_i16(EMBEDDED_VERSION_MAX);
    // Encoding a message this broker built cannot fail (no field is out of
    // its version); an empty assignment would be the fallback.
    if assignment.encode(&mut out, EMBEDDED_VERSION_MAX).is_err() {
        return Bytes::new();
    }
    out.freeze()
}

/// Decode a ConsumerProtocolAssignment (as a classic leader handed it out);
/// `None` if the bytes are not one. Empty bytes: no assignment.
pub fn decode_assignment(bytes: &Bytes) -> Option<Vec<(String, Vec<i32>)>> {
    let mut bytes = bytes.clone();
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    if bytes.remaining() < 2 {
        return None;
    }
    let version = bytes.get_i16().clamp(0, EMBEDDED_VERSION_MAX);
    let assignment = ConsumerProtocolAssignment::decode(&mut bytes, version).ok()?;
    Some(
        assignment
            .assigned_partitions
            .iter()
            .map(|topic| (topic.topic.0.to_string(), topic.partitions.clone()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_round_trip() {
        let partitions = vec![
            ("orders".to_owned(), vec![0, 2]),
            ("audit".to_owned(), vec![1]),
        ];
        let bytes = encode_assignment(&partitions);
        assert_eq!(decode_assignment(&bytes), Some(partitions));
        assert_eq!(decode_assignment(&Bytes::new()), Some(Vec::new()));
        assert_eq!(decode_assignment(&Bytes::from_static(b"\x00")), None);
    }

    #[test]
    fn subscriptions_carry_owned_partitions_and_racks() {
        use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition;
        let subscription = ConsumerProtocolSubscription::default()
            .with_topics(vec![StrBytes::from_static_str("orders")])
            .with_owned_partitions(vec![
                TopicPartition::default()
                    .with_topic(StrBytes::from_static_str("orders").into())
                    .with_partitions(vec![1]),
            ])
            .with_rack_id(Some(StrBytes::from_static_str("r1")));
        let mut bytes = BytesMut::new();
        bytes.put_i16(3);
        subscription.encode(&mut bytes, 3).unwrap();
        let decoded = decode_subscription(&bytes.freeze()).unwrap();
        assert_eq!(decoded.topics, ["orders"]);
        assert_eq!(decoded.owned, [("orders".to_owned(), vec![1])]);
        assert_eq!(decoded.rack_id.as_deref(), Some("r1"));
        assert_eq!(decode_subscription(&Bytes::from_static(b"\x00")), None);
    }
}
