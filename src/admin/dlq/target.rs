//! Where a replayed dead letter goes. The topic: `--to TOPIC`, else the
//! topic of the record that failed (`sluice.dlq.topic`). The partition:
//! the record's own (`sluice.dlq.partition`) when it goes back to its
//! topic and that partition still exists, so a keyed record meets its
//! key's consumer again; else Kafka's default partitioner (murmur2 of the
//! key, as the Java client and librdkafka's `murmur2_random` place it;
//! round robin for a null key).
//!
//! Partition counts are learned from the broker before routing
//! ([`Targets::learn`]); routing itself ([`Targets::route`]) is pure and
//! deterministic for a given sequence of dead letters, so a dry run
//! predicts exactly where `--execute` sends each record.

use std::collections::BTreeMap;

use super::letter::DeadLetter;
use crate::admin::describe_error;

/// Why a dead letter has no target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unroutable {
    /// No `sluice.dlq.topic` header and no `--to`.
    NoTopic,
    /// The target topic's Metadata answer was this error (3,
    /// UNKNOWN_TOPIC_OR_PARTITION: it does not exist).
    Topic { topic: String, error_code: i16 },
}

impl std::fmt::Display for Unroutable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unroutable::NoTopic => write!(
                f,
                "it has no sluice.dlq.topic header: name its target with --to TOPIC"
            ),
            Unroutable::Topic { topic, error_code } => write!(
                f,
                "its target topic {topic}: {}",
                describe_error(*error_code, None)
            ),
        }
    }
}

/// The target topics' partition counts and the round-robin state.
#[derive(Debug, Default)]
pub struct Targets {
    /// `--to TOPIC`, if given.
    to: Option<String>,
    /// Each target topic's partition count, or its Metadata error code.
    partitions: BTreeMap<String, Result<i32, i16>>,
    /// The next round-robin partition of each topic, for null keys.
    round_robin: BTreeMap<String, u32>,
}

impl Targets {
    pub fn new(to: Option<&str>) -> Targets {
        Targets {
            to: to.map(str::to_owned),
            ..Targets::default()
        }
    }

    /// The topic `letter` goes to, if it has one.
    pub fn topic<'a>(&'a self, letter: &'a DeadLetter) -> Option<&'a str> {
        self.to
            .as_deref()
            .or_else(|| letter.provenance().map(|provenance| provenance.topic))
    }

    /// Target topics of `letters` whose partition count is not known yet.
    pub fn unknown<'a>(&'a self, letters: &'a [DeadLetter]) -> Vec<String> {
        let mut names: Vec<String> = letters
            .iter()
            .filter_map(|letter| self.topic(letter))
            .filter(|topic| !self.partitions.contains_key(*topic))
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Record what Metadata said of `topic`: its partition count or its
    /// error code. A topic without partitions cannot take a record.
    pub fn learn(&mut self, topic: &str, answer: Result<i32, i16>) {
        let answer = answer.and_then(|count| {
            if count > 0 {
                Ok(count)
            } else {
                Err(UNKNOWN_TOPIC_OR_PARTITION)
            }
        });
        self.partitions.insert(topic.to_owned(), answer);
    }

    /// The partition count learned for `topic`, or its Metadata error code
    /// (UNKNOWN_TOPIC_OR_PARTITION when not learned).
    pub fn partitions_of(&self, topic: &str) -> Result<i32, i16> {
        self.partitions
            .get(topic)
            .copied()
            .unwrap_or(Err(UNKNOWN_TOPIC_OR_PARTITION))
    }

    /// The topics learned that exist.
    pub fn known_topics(&self) -> Vec<&str> {
        self.partitions
            .iter()
            .filter(|(_, answer)| answer.is_ok())
            .map(|(topic, _)| topic.as_str())
            .collect()
    }

    /// Start the round robin over, for a second pass over the same records.
    pub fn restart(&mut self) {
        self.round_robin.clear();
    }

    /// The (topic, partition) `letter` goes to. Its topic's partition count
    /// must have been learned ([`Targets::unknown`]).
    pub fn route(&mut self, letter: &DeadLetter) -> Result<(String, i32), Unroutable> {
        let topic = self.topic(letter).ok_or(Unroutable::NoTopic)?.to_owned();
        let count = match self.partitions.get(&topic) {
            Some(Ok(count)) => *count,
            Some(Err(error_code)) => {
                return Err(Unroutable::Topic {
                    topic,
                    error_code: *error_code,
                });
            }
            None => panic!("route called before the partitions of {topic} were learned"),
        };
        let own = letter
            .provenance()
            .filter(|provenance| provenance.topic == topic)
            .and_then(|provenance| provenance.partition)
            .filter(|partition| (0..count).contains(partition));
        let partition = match (own, &letter.key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => key_partition(key, count),
            (None, None) => {
                let next = self.round_robin.entry(topic.clone()).or_default();
                let partition = (*next % count as u32) as i32;
                *next = next.wrapping_add(1);
                partition
            }
        };
        Ok((topic, partition))
    }
}

/// UNKNOWN_TOPIC_OR_PARTITION.
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// The partition of `key` among `partitions`, as Kafka's default
/// partitioner computes it: `toPositive(murmur2(key)) % partitions`.
pub fn key_partition(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Kafka's 32-bit murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`),
/// seed 0x9747b28c.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        for (index, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * index);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::dlq::letter::Header;
    use crate::broker::retry::{DLQ_PARTITION, DLQ_TOPIC};

    fn letter(key: Option<&str>, topic: Option<&str>, partition: Option<&str>) -> DeadLetter {
        let header = |key: &str, value: &str| Header {
            key: key.as_bytes().to_vec(),
            value: Some(value.as_bytes().to_vec()),
        };
        let mut headers = Vec::new();
        headers.extend(topic.map(|topic| header(DLQ_TOPIC, topic)));
        headers.extend(partition.map(|partition| header(DLQ_PARTITION, partition)));
        DeadLetter {
            partition: 0,
            offset: 0,
            timestamp_ms: 0,
            key: key.map(|key| key.as_bytes().to_vec()),
            value: None,
            headers,
        }
    }

    fn targets(to: Option<&str>) -> Targets {
        let mut targets = Targets::new(to);
        targets.learn("orders", Ok(6));
        targets.learn("audit", Ok(4));
        targets.learn("gone", Err(UNKNOWN_TOPIC_OR_PARTITION));
        targets
    }

    #[test]
    fn murmur2_matches_kafkas() {
        // Kafka's UtilsTest.testMurmur2.
        for (text, hash) in [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(text.as_bytes()), hash, "{text}");
        }
    }

    #[test]
    fn a_letter_goes_back_to_its_own_partition_of_its_own_topic() {
        let mut targets = targets(None);
        let letter = letter(Some("k"), Some("orders"), Some("5"));
        assert_eq!(targets.route(&letter), Ok(("orders".to_owned(), 5)));
        let mut to_same = self::targets(Some("orders"));
        assert_eq!(to_same.route(&letter), Ok(("orders".to_owned(), 5)));
    }

    #[test]
    fn a_letter_sent_elsewhere_or_whose_partition_is_gone_is_placed_by_its_key() {
        let keyed = letter(Some("k"), Some("orders"), Some("5"));
        let mut elsewhere = targets(Some("audit"));
        assert_eq!(
            elsewhere.route(&keyed),
            Ok(("audit".to_owned(), key_partition(b"k", 4)))
        );
        let mut shrunk = targets(None);
        shrunk.learn("orders", Ok(3));
        assert_eq!(
            shrunk.route(&keyed),
            Ok(("orders".to_owned(), key_partition(b"k", 3)))
        );
        let unnumbered = letter(Some("k"), Some("orders"), Some("five"));
        assert_eq!(
            targets(None).route(&unnumbered),
            Ok(("orders".to_owned(), key_partition(b"k", 6)))
        );
    }

    #[test]
    fn null_keys_are_spread_round_robin_and_restart_alike() {
        let mut targets = targets(Some("audit"));
        let keyless = letter(None, Some("orders"), Some("5"));
        let first: Vec<i32> = (0..6).map(|_| targets.route(&keyless).unwrap().1).collect();
        assert_eq!(first, [0, 1, 2, 3, 0, 1]);
        targets.restart();
        let again: Vec<i32> = (0..6).map(|_| targets.route(&keyless).unwrap().1).collect();
        assert_eq!(again, first);
    }

    #[test]
    fn a_letter_without_a_topic_or_with_a_missing_one_is_unroutable() {
        let mut targets = targets(None);
        assert_eq!(
            targets.route(&letter(Some("k"), None, None)),
            Err(Unroutable::NoTopic)
        );
        assert_eq!(
            targets.route(&letter(Some("k"), Some("gone"), Some("0"))),
            Err(Unroutable::Topic {
                topic: "gone".to_owned(),
                error_code: UNKNOWN_TOPIC_OR_PARTITION,
            })
        );
        let letters = [
            letter(None, Some("new"), None),
            letter(None, Some("orders"), None),
        ];
        assert_eq!(targets.unknown(&letters), ["new"]);
        assert_eq!(Targets::new(Some("x")).unknown(&letters), ["x"]);
    }
}
