//! Server-side assignors (KIP-848): given the members, what each subscribes
//! to and the previous target, compute the next target assignment.
//!
//! * `uniform` (the default): every partition of a subscribed topic goes to
//!   exactly one member subscribed to it; counts are balanced (members that
//!   could take a partition from a member with two more than them do), and
//!   sticky: a partition stays with its previous owner unless balance needs
//!   it elsewhere. Kafka's uniform assignor has the same goals; its exact
//!   choices (which partition moves) may differ.
//! * `range`: per topic, the members subscribed to it (static members first
//!   by instance id, then the others by member id) get consecutive ranges,
//!   the first `partitions % members` one partition more; members with the
//!   same subscription and topics with equal partition counts are therefore
//!   co-partitioned. Kafka's server-side range assignor does the same.

use std::collections::{BTreeMap, BTreeSet};

use super::member::Assignment;
use crate::broker::metadata::TopicId;

pub const UNIFORM_ASSIGNOR: &str = "uniform";
pub const RANGE_ASSIGNOR: &str = "range";
/// Every assignor this broker has (`groups.consumer_assignors` chooses among them).
pub const ASSIGNORS: [&str; 2] = [UNIFORM_ASSIGNOR, RANGE_ASSIGNOR];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Assignor {
    Uniform,
    Range,
}

impl Assignor {
    pub fn from_name(name: &str) -> Option<Assignor> {
        match name {
            UNIFORM_ASSIGNOR => Some(Assignor::Uniform),
            RANGE_ASSIGNOR => Some(Assignor::Range),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Assignor::Uniform => UNIFORM_ASSIGNOR,
            Assignor::Range => RANGE_ASSIGNOR,
        }
    }

    /// The target assignment of every member (members without partitions
    /// get an empty one).
    pub fn assign(self, spec: &AssignmentSpec<'_>) -> BTreeMap<String, Assignment> {
        match self {
            Assignor::Uniform => uniform(spec),
            Assignor::Range => range(spec),
        }
    }
}

/// One member as an assignor sees it.
pub struct MemberSpec<'a> {
    pub id: &'a str,
    pub instance_id: Option<&'a str>,
    /// Subscribed topics that exist (with their partitions in the spec).
    pub topics: BTreeSet<TopicId>,
    /// Its previous target.
    pub previous: &'a Assignment,
}

pub struct AssignmentSpec<'a> {
    pub members: Vec<MemberSpec<'a>>,
    /// Partition counts of the subscribed topics.
    pub partitions: &'a BTreeMap<TopicId, u32>,
}

fn empty_targets(spec: &AssignmentSpec<'_>) -> BTreeMap<String, Assignment> {
    spec.members
        .iter()
        .map(|member| (member.id.to_owned(), Assignment::new()))
        .collect()
}

fn uniform(spec: &AssignmentSpec<'_>) -> BTreeMap<String, Assignment> {
    let members = &spec.members;
    // owner[topic][partition] = index into `members`.
    let mut owner: BTreeMap<TopicId, Vec<Option<usize>>> = spec
        .partitions
        .iter()
        .filter(|(topic, _)| members.iter().any(|member| member.topics.contains(topic)))
        .map(|(topic, &count)| (*topic, vec![None; count as usize]))
        .collect();
    let mut counts = vec![0usize; members.len()];
    // Keep what each member had, where it still may have it.
    for (index, member) in members.iter().enumerate() {
        for (topic, partitions) in member.previous {
            if !member.topics.contains(topic) {
                continue;
            }
            let Some(slots) = owner.get_mut(topic) else {
                continue;
            };
            for &partition in partitions {
                if let Some(slot) = usize::try_from(partition)
                    .ok()
                    .and_then(|at| slots.get_mut(at))
                    && slot.is_none()
                {
                    *slot = Some(index);
                    counts[index] += 1;
                }
            }
        }
    }
    // Give every free partition to the least loaded member that may take it.
    for (topic, slots) in &mut owner {
        for slot in slots.iter_mut().filter(|slot| slot.is_none()) {
            if let Some(index) = least_loaded(members, &counts, *topic) {
                *slot = Some(index);
                counts[index] += 1;
            }
        }
    }
    // Move partitions from members with two more than an eligible member,
    // until none can move. Each move lowers the sum of squared counts, so
    // this ends.
    loop {
        let mut moved = false;
        for (topic, slots) in &mut owner {
            for slot in slots.iter_mut() {
                let Some(from) = *slot else { continue };
                if let Some(to) = least_loaded(members, &counts, *topic)
                    && counts[to] + 1 < counts[from]
                {
                    *slot = Some(to);
                    counts[from] -= 1;
                    counts[to] += 1;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let mut targets = empty_targets(spec);
    for (topic, slots) in owner {
        for (partition, slot) in slots.into_iter().enumerate() {
            if let Some(index) = slot
                && let Some(target) = targets.get_mut(members[index].id)
            {
                target.entry(topic).or_default().insert(partition as i32);
            }
        }
    }
    targets
}

/// The member subscribed to `topic` with the fewest partitions (the first
/// in member order among equals).
fn least_loaded(members: &[MemberSpec<'_>], counts: &[usize], topic: TopicId) -> Option<usize> {
    members
        .iter()
        .enumerate()
        .filter(|(_, member)| member.topics.contains(&topic))
        .min_by_key(|(index, _)| counts[*index])
        .map(|(index, _)| index)
}

fn range(spec: &AssignmentSpec<'_>) -> BTreeMap<String, Assignment> {
    let mut order: Vec<&MemberSpec<'_>> = spec.members.iter().collect();
    order.sort_by(|a, b| match (a.instance_id, b.instance_id) {
        (Some(a), Some(b)) => a.cmp(b),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.id.cmp(b.id),
    });
    let mut targets = empty_targets(spec);
    for (topic, &count) in spec.partitions {
        let subscribers: Vec<&&MemberSpec<'_>> = order
            .iter()
            .filter(|member| member.topics.contains(topic))
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let quota = count as usize / subscribers.len();
        let mut extra = count as usize % subscribers.len();
        let mut next = 0usize;
        for member in subscribers {
            let mut size = quota;
            if extra > 0 {
                size += 1;
                extra -= 1;
            }
            let end = (next + size).min(count as usize);
            if next < end
                && let Some(target) = targets.get_mut(member.id)
            {
                target
                    .entry(*topic)
                    .or_default()
                    .extend((next..end).map(|partition| partition as i32));
            }
            next = end;
        }
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: TopicId = TopicId([1; 16]);
    const B: TopicId = TopicId([2; 16]);

    fn member<'a>(id: &'a str, topics: &[TopicId], previous: &'a Assignment) -> MemberSpec<'a> {
        MemberSpec {
            id,
            instance_id: None,
            topics: topics.iter().copied().collect(),
            previous,
        }
    }

    fn count(assignment: &Assignment) -> usize {
        assignment.values().map(BTreeSet::len).sum()
    }

    fn every_partition_once(
        targets: &BTreeMap<String, Assignment>,
        partitions: &BTreeMap<TopicId, u32>,
    ) {
        for (topic, &total) in partitions {
            let mut seen: Vec<i32> = targets
                .values()
                .filter_map(|target| target.get(topic))
                .flatten()
                .copied()
                .collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..total as i32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn uniform_balances_and_keeps_what_members_had() {
        let partitions = BTreeMap::from([(A, 4u32)]);
        let none = Assignment::new();
        let spec = AssignmentSpec {
            members: vec![member("m1", &[A], &none)],
            partitions: &partitions,
        };
        let first = Assignor::Uniform.assign(&spec);
        assert_eq!(count(&first["m1"]), 4);
        // A second member joins: it gets two, m1 keeps two of its four.
        let spec = AssignmentSpec {
            members: vec![member("m1", &[A], &first["m1"]), member("m2", &[A], &none)],
            partitions: &partitions,
        };
        let second = Assignor::Uniform.assign(&spec);
        every_partition_once(&second, &partitions);
        assert_eq!((count(&second["m1"]), count(&second["m2"])), (2, 2));
        // Nothing changes: nothing moves.
        let spec = AssignmentSpec {
            members: vec![
                member("m1", &[A], &second["m1"]),
                member("m2", &[A], &second["m2"]),
            ],
            partitions: &partitions,
        };
        assert_eq!(Assignor::Uniform.assign(&spec), second);
    }

    #[test]
    fn uniform_gives_each_topic_only_to_its_subscribers() {
        let partitions = BTreeMap::from([(A, 3u32), (B, 3u32)]);
        let none = Assignment::new();
        let spec = AssignmentSpec {
            members: vec![
                member("m1", &[A], &none),
                member("m2", &[A, B], &none),
                member("m3", &[B], &none),
            ],
            partitions: &partitions,
        };
        let targets = Assignor::Uniform.assign(&spec);
        every_partition_once(&targets, &partitions);
        assert!(!targets["m1"].contains_key(&B));
        assert!(!targets["m3"].contains_key(&A));
        let counts: Vec<usize> = targets.values().map(count).collect();
        assert_eq!(counts, [2, 2, 2]);
    }

    #[test]
    fn range_co_partitions_topics_of_equal_size() {
        let partitions = BTreeMap::from([(A, 3u32), (B, 3u32)]);
        let none = Assignment::new();
        let spec = AssignmentSpec {
            members: vec![member("m2", &[A, B], &none), member("m1", &[A, B], &none)],
            partitions: &partitions,
        };
        let targets = Assignor::Range.assign(&spec);
        every_partition_once(&targets, &partitions);
        let of = |id: &str, topic| -> Vec<i32> {
            targets[id]
                .get(&topic)
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default()
        };
        assert_eq!(of("m1", A), [0, 1]);
        assert_eq!(of("m1", B), [0, 1]);
        assert_eq!(of("m2", A), [2]);
        assert_eq!(of("m2", B), [2]);
    }
}
