//! Moving one member's current assignment towards its target (KIP-848's
//! reconciliation; Kafka's `CurrentAssignmentBuilder`).
//!
//! The rule that keeps a partition from having two consumers: a member is
//! given a partition only once no other member owns it. A member first
//! revokes what it must give up, staying at its epoch (state
//! `UnrevokedPartitions`) until its heartbeat's owned partitions no longer
//! list them; only then does it move to the target epoch. Partitions of its
//! target that another member still owns (or still has to revoke) are held
//! back (state `UnreleasedPartitions`) and handed over at a later heartbeat,
//! once their owner has let them go.

use std::collections::BTreeSet;

use super::member::{Assignment, CurrentAssignment, MemberState, overlaps};
use crate::broker::metadata::TopicId;

/// What the member's heartbeat says it owns: `None` when the request left
/// the field out (nothing can then be taken as revoked).
pub type Owned<'a> = Option<&'a [(TopicId, Vec<i32>)]>;

/// The inputs of one reconciliation step.
pub struct Reconcile<'a> {
    pub target_epoch: i32,
    pub target: &'a Assignment,
    /// Topics the member subscribes to now: partitions of other topics are
    /// revoked even before a new target says so.
    pub subscribed: &'a BTreeSet<TopicId>,
    /// Set when the subscription just changed: drop unsubscribed topics
    /// from the assignment at once.
    pub enforce_subscription: bool,
    /// Whether a member other than this one owns (or must still revoke)
    /// the partition.
    pub owned_by_another: &'a dyn Fn(TopicId, i32) -> bool,
    pub owned: Owned<'a>,
}

/// Why a member cannot be reconciled: it must rejoin with no partitions.
#[derive(Debug, PartialEq, Eq)]
pub struct MustRejoin;

/// The member's next current assignment (possibly the same).
pub fn reconcile(
    current: &CurrentAssignment,
    step: &Reconcile<'_>,
) -> Result<CurrentAssignment, MustRejoin> {
    match current.state {
        MemberState::Stable => {
            if current.epoch != step.target_epoch {
                Ok(next_assignment(current, current.epoch, step))
            } else if step.enforce_subscription {
                Ok(drop_unsubscribed(current, step))
            } else {
                Ok(current.clone())
            }
        }
        MemberState::UnrevokedPartitions => {
            if owns_any(step.owned, &current.pending_revocation) {
                if step.enforce_subscription {
                    return Ok(drop_unsubscribed(current, step));
                }
                return Ok(current.clone());
            }
            Ok(next_assignment(current, current.epoch, step))
        }
        MemberState::UnreleasedPartitions => Ok(next_assignment(current, current.epoch, step)),
        MemberState::Unknown => {
            if step.owned.is_none_or(|owned| !owned.is_empty()) {
                return Err(MustRejoin);
            }
            Ok(next_assignment(current, step.target_epoch, step))
        }
    }
}

/// Whether the member may still hold any of `pending`: it does unless its
/// heartbeat listed what it owns and none of them is there.
fn owns_any(owned: Owned<'_>, pending: &Assignment) -> bool {
    match owned {
        None => true,
        Some(owned) => overlaps(owned, pending),
    }
}

fn with_epoch(current: &CurrentAssignment, epoch: i32) -> (i32, i32) {
    (epoch, current.epoch)
}

fn next_assignment(
    current: &CurrentAssignment,
    member_epoch: i32,
    step: &Reconcile<'_>,
) -> CurrentAssignment {
    let mut assigned = Assignment::new();
    let mut revoke = Assignment::new();
    let mut to_assign = Assignment::new();
    let mut unreleased = false;
    let topics: BTreeSet<TopicId> = step
        .target
        .keys()
        .chain(current.assigned.keys())
        .copied()
        .collect();
    let empty = BTreeSet::new();
    for topic in topics {
        let target = if step.subscribed.contains(&topic) {
            step.target.get(&topic).unwrap_or(&empty)
        } else {
            &empty
        };
        let had = current.assigned.get(&topic).unwrap_or(&empty);
        let kept: BTreeSet<i32> = had.intersection(target).copied().collect();
        let gone: BTreeSet<i32> = had.difference(&kept).copied().collect();
        let mut wanted: BTreeSet<i32> = target.difference(&kept).copied().collect();
        let before = wanted.len();
        wanted.retain(|&partition| {
            let revoking_it_ourselves = current
                .pending_revocation
                .get(&topic)
                .is_some_and(|pending| pending.contains(&partition));
            revoking_it_ourselves || !(step.owned_by_another)(topic, partition)
        });
        unreleased |= wanted.len() != before;
        if !kept.is_empty() {
            assigned.insert(topic, kept);
        }
        if !gone.is_empty() {
            revoke.insert(topic, gone);
        }
        if !wanted.is_empty() {
            to_assign.insert(topic, wanted);
        }
    }
    if !revoke.is_empty() && owns_any(step.owned, &revoke) {
        let (epoch, previous_epoch) = with_epoch(current, member_epoch);
        return CurrentAssignment {
            epoch,
            previous_epoch,
            state: MemberState::UnrevokedPartitions,
            assigned,
            pending_revocation: revoke,
        };
    }
    let state = if unreleased {
        MemberState::UnreleasedPartitions
    } else {
        MemberState::Stable
    };
    for (topic, partitions) in to_assign {
        assigned.entry(topic).or_default().extend(partitions);
    }
    let (epoch, previous_epoch) = with_epoch(current, step.target_epoch);
    CurrentAssignment {
        epoch,
        previous_epoch,
        state,
        assigned,
        pending_revocation: Assignment::new(),
    }
}

/// The subscription changed: partitions of topics no longer subscribed
/// leave the assignment now (to be revoked), without waiting for a target.
fn drop_unsubscribed(current: &CurrentAssignment, step: &Reconcile<'_>) -> CurrentAssignment {
    let mut assigned = current.assigned.clone();
    let mut pending = current.pending_revocation.clone();
    let mut removed_any = false;
    assigned.retain(|topic, partitions| {
        if step.subscribed.contains(topic) {
            return true;
        }
        pending
            .entry(*topic)
            .or_default()
            .extend(partitions.iter().copied());
        removed_any = true;
        false
    });
    if !removed_any {
        return current.clone();
    }
    let (epoch, previous_epoch) = with_epoch(current, current.epoch);
    if !pending.is_empty() && owns_any(step.owned, &pending) {
        return CurrentAssignment {
            epoch,
            previous_epoch,
            state: MemberState::UnrevokedPartitions,
            assigned,
            pending_revocation: pending,
        };
    }
    CurrentAssignment {
        epoch,
        previous_epoch,
        state: current.state,
        assigned,
        pending_revocation: current.pending_revocation.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: TopicId = TopicId([1; 16]);

    fn parts(list: &[i32]) -> Assignment {
        let mut assignment = Assignment::new();
        if !list.is_empty() {
            assignment.insert(T, list.iter().copied().collect());
        }
        assignment
    }

    fn at(epoch: i32, assigned: &[i32]) -> CurrentAssignment {
        CurrentAssignment {
            epoch,
            previous_epoch: epoch - 1,
            state: MemberState::Stable,
            assigned: parts(assigned),
            pending_revocation: Assignment::new(),
        }
    }

    fn step<'a>(
        target_epoch: i32,
        target: &'a Assignment,
        subscribed: &'a BTreeSet<TopicId>,
        taken: &'a dyn Fn(TopicId, i32) -> bool,
        owned: Owned<'a>,
    ) -> Reconcile<'a> {
        Reconcile {
            target_epoch,
            target,
            subscribed,
            enforce_subscription: false,
            owned_by_another: taken,
            owned,
        }
    }

    #[test]
    fn a_member_revokes_before_its_epoch_advances_and_then_gets_the_rest() {
        let subscribed = BTreeSet::from([T]);
        let target = parts(&[0, 1]);
        let free = |_: TopicId, _: i32| false;
        let owned = vec![(T, vec![0, 1, 2, 3])];
        let current = at(1, &[0, 1, 2, 3]);
        let next = reconcile(
            &current,
            &step(2, &target, &subscribed, &free, Some(&owned)),
        )
        .unwrap();
        assert_eq!(next.state, MemberState::UnrevokedPartitions);
        assert_eq!(next.epoch, 1, "the epoch waits for the revocation");
        assert_eq!(next.pending_revocation, parts(&[2, 3]));
        // Still owned: nothing moves.
        let again = reconcile(&next, &step(2, &target, &subscribed, &free, Some(&owned))).unwrap();
        assert_eq!(again, next);
        // Revoked: the member reaches the target epoch.
        let owned = vec![(T, vec![0, 1])];
        let done = reconcile(&next, &step(2, &target, &subscribed, &free, Some(&owned))).unwrap();
        assert_eq!(done.state, MemberState::Stable);
        assert_eq!(done.epoch, 2);
        assert_eq!(done.assigned, parts(&[0, 1]));
    }

    #[test]
    fn partitions_another_member_still_owns_are_held_back() {
        let subscribed = BTreeSet::from([T]);
        let target = parts(&[2, 3]);
        let taken = |_: TopicId, partition: i32| partition == 3;
        let owned = vec![];
        let next = reconcile(
            &at(0, &[]),
            &step(2, &target, &subscribed, &taken, Some(&owned)),
        )
        .unwrap();
        assert_eq!(next.state, MemberState::UnreleasedPartitions);
        assert_eq!(next.epoch, 2);
        assert_eq!(next.assigned, parts(&[2]));
        let free = |_: TopicId, _: i32| false;
        let later = reconcile(&next, &step(2, &target, &subscribed, &free, Some(&owned))).unwrap();
        assert_eq!(later.state, MemberState::Stable);
        assert_eq!(later.assigned, parts(&[2, 3]));
    }

    #[test]
    fn an_unknown_state_fences_a_member_that_owns_partitions() {
        let subscribed = BTreeSet::from([T]);
        let target = parts(&[0]);
        let free = |_: TopicId, _: i32| false;
        let mut current = at(3, &[0]);
        current.state = MemberState::Unknown;
        let owned = vec![(T, vec![0])];
        assert_eq!(
            reconcile(
                &current,
                &step(3, &target, &subscribed, &free, Some(&owned))
            ),
            Err(MustRejoin)
        );
        let none = vec![];
        let next = reconcile(&current, &step(3, &target, &subscribed, &free, Some(&none))).unwrap();
        assert_eq!(next.state, MemberState::Stable);
    }

    #[test]
    fn unsubscribing_revokes_at_once_when_asked_to() {
        let subscribed = BTreeSet::new();
        let target = parts(&[0]);
        let free = |_: TopicId, _: i32| false;
        let owned = vec![(T, vec![0])];
        let mut request = step(1, &target, &subscribed, &free, Some(&owned));
        request.enforce_subscription = true;
        let next = reconcile(&at(1, &[0]), &request).unwrap();
        assert_eq!(next.state, MemberState::UnrevokedPartitions);
        assert!(next.assigned.is_empty());
        assert_eq!(next.pending_revocation, parts(&[0]));
    }
}
