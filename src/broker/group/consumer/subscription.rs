//! What a consumer group's members subscribe to, resolved against the
//! cluster's topics: topic names and regular expressions become topic ids
//! with their partition counts, and a hash of those topics tells the group
//! when a topic it reads was created, deleted, re-created or grown (its
//! epoch is then bumped and a new target computed, as Kafka does with its
//! subscription metadata).
//!
//! Regular expressions: Kafka compiles `subscribed_topic_regex` with RE2/J
//! and a topic matches when the whole name matches. Here the `regex` crate
//! (RE2's design and syntax for what consumers write: classes, alternation,
//! repetition, anchors, Unicode classes) compiles it anchored at both ends.
//! Where the two differ: `\Q...\E` quoting (RE2/J takes it) is refused as
//! INVALID_REGULAR_EXPRESSION; a repeated repetition (`a*+`) and
//! class set operations (`[a-z&&[^x]]`), which RE2/J refuses or reads
//! literally, are taken with this crate's meaning; `\d`, `\w` and `\s` are
//! Unicode-aware (RE2/J's are ASCII), which ASCII topic names cannot tell
//! apart. A regex is also refused if it compiles to more than
//! [`REGEX_COMPILED_BYTES_MAX`]. Kafka resolves a
//! new regex asynchronously and bumps the epoch when it is done; here it is
//! resolved at the heartbeat that brings it, so that heartbeat's answer
//! already holds the partitions. Like Kafka, every topic can match,
//! internal ones included.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Weak};

use super::member::ConsumerMember;
use crate::broker::metadata::{ClusterMetadata, TopicId};

/// Most memory one compiled subscription regex may take, and its lazy DFA's
/// cache: a topic-name pattern needs a few KiB, and every member of every
/// group may bring its own (a breaker saw 1.7 MB per regex with 1 MiB).
pub const REGEX_COMPILED_BYTES_MAX: usize = 128 << 10;
pub const REGEX_DFA_CACHE_BYTES_MAX: usize = 64 << 10;

/// The group's subscriptions resolved against one metadata snapshot.
#[derive(Debug, Default)]
pub struct Subscriptions {
    /// Each member's subscribed topics that exist.
    pub per_member: BTreeMap<String, BTreeSet<TopicId>>,
    /// Partition counts of every subscribed topic that exists.
    pub partitions: BTreeMap<TopicId, u32>,
    /// Names of every subscribed topic that exists.
    pub names: BTreeSet<String>,
    /// A hash of the subscribed topics' names, ids and partition counts.
    pub hash: u64,
}

/// A resolution kept until the metadata or a subscription changes. The
/// snapshot is held weakly: while the weak pointer upgrades to the current
/// snapshot, nothing the resolution read has changed (a dropped snapshot's
/// memory is not reused while a weak pointer holds it).
#[derive(Clone, Debug, Default)]
pub struct ResolvedCache {
    resolved: Option<(Weak<ClusterMetadata>, u64, Arc<Subscriptions>)>,
    /// Members' regexes compiled (`None`: does not compile), kept for the
    /// regexes members still use, so a resolution after a topic or
    /// subscription change matches names without compiling them again.
    compiled: HashMap<String, Option<regex::Regex>>,
}

impl ResolvedCache {
    /// The subscriptions of `members` as of `cluster`; `version` changes
    /// whenever a member's subscription does.
    pub fn resolve<'a>(
        &mut self,
        cluster: &Arc<ClusterMetadata>,
        version: u64,
        members: impl Iterator<Item = &'a ConsumerMember>,
    ) -> Arc<Subscriptions> {
        if let Some((snapshot, cached_version, resolved)) = &self.resolved
            && *cached_version == version
            && snapshot
                .upgrade()
                .is_some_and(|snapshot| Arc::ptr_eq(&snapshot, cluster))
        {
            return Arc::clone(resolved);
        }
        let members: Vec<&ConsumerMember> = members.collect();
        let in_use: BTreeSet<&str> = members
            .iter()
            .filter_map(|member| member.metadata.regex())
            .collect();
        self.compiled
            .retain(|regex, _| in_use.contains(regex.as_str()));
        for regex in in_use {
            if !self.compiled.contains_key(regex) {
                // Regexes are checked when a member brings one; one that
                // no longer compiles (a record from another version)
                // matches nothing.
                self.compiled.insert(regex.to_owned(), compile(regex).ok());
            }
        }
        let resolved = Arc::new(resolve(cluster, members, &self.compiled));
        self.resolved = Some((Arc::downgrade(cluster), version, Arc::clone(&resolved)));
        resolved
    }
}

/// Compile a subscription regex as Kafka matches it: the whole topic name.
pub fn compile(regex: &str) -> Result<regex::Regex, regex::Error> {
    // Alone first, so a regex that only parses once wrapped (`a)|(b`) is
    // refused as RE2/J refuses it.
    regex::RegexBuilder::new(regex)
        .size_limit(REGEX_COMPILED_BYTES_MAX)
        .dfa_size_limit(REGEX_DFA_CACHE_BYTES_MAX)
        .build()?;
    regex::RegexBuilder::new(&format!("^(?:{regex})$"))
        .size_limit(REGEX_COMPILED_BYTES_MAX)
        .dfa_size_limit(REGEX_DFA_CACHE_BYTES_MAX)
        .build()
}

fn resolve(
    cluster: &ClusterMetadata,
    members: Vec<&ConsumerMember>,
    compiled: &HashMap<String, Option<regex::Regex>>,
) -> Subscriptions {
    let mut by_regex: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for regex in members.iter().filter_map(|member| member.metadata.regex()) {
        if by_regex.contains_key(regex) {
            continue;
        }
        let matched = match compiled.get(regex) {
            Some(Some(compiled)) => cluster
                .topics
                .keys()
                .filter(|name| compiled.is_match(name))
                .map(String::as_str)
                .collect(),
            _ => Vec::new(),
        };
        by_regex.insert(regex, matched);
    }
    let mut subscriptions = Subscriptions::default();
    for member in members {
        let regex_topics = member
            .metadata
            .regex()
            .and_then(|regex| by_regex.get(regex))
            .into_iter()
            .flatten()
            .copied()
            .filter(|name| member.viewer.may_describe_topic(&cluster.acls, name));
        let mut topics = BTreeSet::new();
        for name in member
            .metadata
            .subscribed_topic_names
            .iter()
            .map(String::as_str)
            .chain(regex_topics)
        {
            if let Some(topic) = cluster.topic(name) {
                topics.insert(topic.id);
                subscriptions.partitions.insert(topic.id, topic.partitions);
                subscriptions.names.insert(name.to_owned());
            }
        }
        subscriptions.per_member.insert(member.id.clone(), topics);
    }
    subscriptions.hash = metadata_hash(cluster, &subscriptions.names);
    subscriptions
}

/// FNV-1a (64 bits) over each topic's name, id and partition count, in
/// name order: stable across builds, since it is stored.
fn metadata_hash(cluster: &ClusterMetadata, names: &BTreeSet<String>) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = FNV_OFFSET;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
    };
    for name in names {
        if let Some(topic) = cluster.topic(name) {
            feed(name.as_bytes());
            feed(&[0]);
            feed(&topic.id.0);
            feed(&topic.partitions.to_be_bytes());
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_match_whole_topic_names() {
        let regex = compile("orders-.*").unwrap();
        assert!(regex.is_match("orders-eu"));
        assert!(!regex.is_match("old-orders-eu"), "anchored at the start");
        let regex = compile("a|b").unwrap();
        assert!(
            !regex.is_match("ab"),
            "the alternation is anchored as a whole"
        );
        assert!(compile("a)|(b").is_err(), "refused as RE2/J refuses it");
    }

    /// Found by a breaker: each member may bring a regex, so a large one
    /// is refused rather than kept (it took 1.7 MB each under a 1 MiB cap).
    #[test]
    fn topic_patterns_compile_and_huge_ones_are_refused() {
        for regex in [
            "orders-.*",
            "payments-\\d+",
            "(eu|us|ap)-[a-z0-9._-]{1,200}",
            "\\w+-events",
        ] {
            assert!(compile(regex).is_ok(), "{regex}");
        }
        let huge = format!("m1\\w{{15}}|{}", "x".repeat(10));
        assert!(compile(&huge).is_err(), "{huge}");
    }

    /// The differences from RE2/J listed in the module doc.
    #[test]
    fn re2j_syntax_this_crate_reads_differently() {
        for (regex, refused) in [
            ("\\Qa.b\\E", true),
            ("a*+", false),
            ("[a-z&&[^x]]", false),
            ("\\p{Greek}+", false),
        ] {
            assert_eq!(compile(regex).is_err(), refused, "{regex}");
        }
        let intersection = compile("[a-z&&[^x]]+").unwrap();
        assert!(intersection.is_match("abc") && !intersection.is_match("axc"));
    }
}
