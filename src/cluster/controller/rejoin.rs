//! A member back on an empty data dir (a replaced disk): how it becomes a
//! controller voter again without breaking Raft's safety, and how the
//! cluster learns that its copies of the shard-group logs are gone.
//!
//! A Raft voter must never forget its vote or acknowledged log entries: a
//! member that forgot them could vote twice in one term or make a commit
//! majority out of entries it no longer holds. So a member that finds its
//! data dir empty while its peers list it (the `hello` answers) takes no
//! part in the controller's votes or appends (it answers them 503) and
//! asks the controller leader to rejoin (`/controller/rejoin`). The leader
//! removes it from the voters, keeping it as a learner (a joint-consensus
//! change committed by the other voters alone), and answers; from then on
//! the member takes the log as a learner, whose acknowledgements count for
//! nothing. Once it holds everything the leader applied, the leader's
//! duty makes it a voter again ([`promote_caught_up_learners`]); by then
//! its stored vote is at the leader's term. This is the remove-and-add
//! that Kafka's KIP-853 prescribes for a controller whose disk was
//! replaced.
//!
//! The member also registers with `lost_data` set, so its copies leave
//! every in-sync set and the groups it led move to in-sync members
//! ([`crate::broker::metadata::ClusterMetadata::forget_lost_copies`]);
//! refused, and the member stops with the reason, while it is a group's
//! only in-sync replica. A marker file (`controller/lost-data`) keeps that
//! flag across a restart until the registration is committed.
//!
//! Left open: a member's votes from before the wipe are trusted to lie in
//! terms no later than the leader's that removed it, which holds for a
//! three-node controller (a candidate that took such a vote, being one of
//! the two others, would have refused the removal) but not for every
//! partition of a five-node one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::StatusCode;
use openraft::Raft;
use serde::{Deserialize, Serialize};

use super::ControllerTypes;
use super::rpc::{self, Identity};
use crate::broker::metadata::MetadataStore;

/// Where a member asks the controller leader to take it back.
pub const PATH_REJOIN: &str = "/controller/rejoin";

/// The marker of a registration with `lost_data` still to be committed.
const LOST_DATA_MARKER: &str = "lost-data";

/// A member on an empty data dir asks to rejoin.
#[derive(Debug, Serialize, Deserialize)]
pub struct RejoinRequest {
    pub node_id: u64,
}

/// What the leader answers a [`RejoinRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RejoinAnswer {
    /// The member is a learner now: it may take the log.
    Learner,
    /// Ask this node instead (none known: ask again later).
    NotLeader { leader: Option<u64> },
    /// Rejoining would lose acknowledged records; the reason says which.
    Refused { reason: String },
}

fn marker(controller_dir: &Path) -> PathBuf {
    controller_dir.join(LOST_DATA_MARKER)
}

/// Record that this member's data is lost until its registration says so
/// (the directory is created when missing; the marker is made durable).
pub fn mark_lost_data(controller_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(controller_dir)?;
    let path = marker(controller_dir);
    let file = std::fs::File::create(&path)?;
    file.sync_all()?;
    std::fs::File::open(controller_dir)?.sync_all()
}

/// Whether a registration with `lost_data` is still to be committed.
pub fn lost_data_marked(controller_dir: &Path) -> bool {
    marker(controller_dir).exists()
}

/// The registration with `lost_data` was committed.
pub fn clear_lost_data(controller_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(marker(controller_dir)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// On any node: answer `request` from configured peer `sender`, which
/// must be the node it names (a peer cannot demote another). The leader
/// checks that the member's copies are not the only in-sync ones of any
/// group, then removes it from the voters, keeping it as a learner (within
/// `timeout`: it needs a majority of the other voters; a change cut short
/// is finished by [`finish_voter_changes`]).
pub async fn answer(
    raft: &Raft<ControllerTypes>,
    identity: &Identity,
    store: &MetadataStore,
    (sender, request): (u64, RejoinRequest),
    timeout: Duration,
) -> Result<RejoinAnswer, (StatusCode, String)> {
    let node = request.node_id;
    if node != sender {
        return Err((
            StatusCode::FORBIDDEN,
            format!("node {sender} asked to rejoin for node {node}: a node rejoins only itself"),
        ));
    }
    if node == identity.node_id {
        return Err((
            StatusCode::FORBIDDEN,
            format!("node {node} asked itself to rejoin"),
        ));
    }
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(identity.node_id) {
        return Ok(RejoinAnswer::NotLeader {
            leader: metrics.current_leader,
        });
    }
    let mut check = (*store.snapshot()).clone();
    if let Err(reason) = check.forget_lost_copies(node) {
        return Ok(RejoinAnswer::Refused { reason });
    }
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "a change of the controller's voters is under way; ask again".to_owned(),
        ));
    }
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    if voters.contains(&node) {
        let others: BTreeSet<u64> = voters.iter().copied().filter(|id| *id != node).collect();
        let change = tokio::time::timeout(timeout, raft.change_membership(others, true)).await;
        match change {
            Ok(Ok(_)) => {
                tracing::warn!(
                    node,
                    "node {node} came back with an empty data dir: it is a learner of the \
                     controller until it holds the log, then a voter again"
                );
            }
            Ok(Err(error)) => return Err((StatusCode::SERVICE_UNAVAILABLE, error.to_string())),
            Err(_) => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "the other voters did not take node {node} out within {timeout:?}; is a \
                         majority of them up?"
                    ),
                ));
            }
        }
    }
    Ok(RejoinAnswer::Learner)
}

/// On a member that found its data dir empty: ask the peers until the
/// leader made this member a learner (`Ok`) or refused it (`Err`, the
/// reason). Logs every few seconds while no leader takes it.
pub async fn ask_to_rejoin(identity: &Identity, peers: &[(u64, String)]) -> Result<(), String> {
    let request = RejoinRequest {
        node_id: identity.node_id,
    };
    let mut last_report = tokio::time::Instant::now();
    let mut target = None;
    loop {
        let candidates: Vec<&(u64, String)> = peers
            .iter()
            .filter(|(id, _)| *id != identity.node_id && target.is_none_or(|leader| leader == *id))
            .collect();
        target = None;
        let mut error = None;
        for (id, address) in candidates {
            let answer: Result<RejoinAnswer, _> = rpc::call(
                identity,
                address,
                PATH_REJOIN,
                &request,
                Duration::from_secs(20),
            )
            .await;
            match answer {
                Ok(RejoinAnswer::Learner) => {
                    tracing::info!(
                        leader = id,
                        "the controller took this node back as a learner; it becomes a voter again once it holds the log"
                    );
                    return Ok(());
                }
                Ok(RejoinAnswer::Refused { reason }) => return Err(reason),
                Ok(RejoinAnswer::NotLeader {
                    leader: Some(leader),
                }) if leader != *id => {
                    target = Some(leader);
                    break;
                }
                Ok(RejoinAnswer::NotLeader { .. }) => {}
                Err(failed) => error = Some(failed.to_string()),
            }
        }
        if target.is_none() {
            if last_report.elapsed() >= Duration::from_secs(5) {
                last_report = tokio::time::Instant::now();
                tracing::info!(
                    last_error = error.as_deref().unwrap_or("no controller leader known"),
                    "this node's data dir is empty but the cluster lists it: waiting for the controller leader to take it back"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// On the controller leader, each duty: finish a change of the voters left
/// in its joint stage (openraft leaves the joint config in place when the
/// change's caller is gone: a rejoin that timed out waiting for a down
/// voter, a leader that changed; found by the breaker trial, where it
/// wedged a rejoining node for good), else make each configured peer that
/// is a learner (it rejoined on an empty data dir) a voter again once it
/// has taken everything the leader applied. Bounded by the caller's duty
/// bound; what it cuts short the next duty takes up.
pub async fn finish_voter_changes(raft: &Raft<ControllerTypes>, peers: &BTreeSet<u64>) {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let configs = membership.get_joint_config();
    if configs.len() > 1 {
        let goal = configs.last().cloned().unwrap_or_default();
        // Refused while the joint entry is not committed yet: the next
        // duty asks again.
        match raft.change_membership(goal.clone(), true).await {
            Ok(_) => tracing::info!(voters = ?goal, "finished a change of the controller's voters"),
            Err(error) => {
                tracing::debug!(%error, "a joint change of the voters is not finished yet")
            }
        }
        return;
    }
    let applied = metrics.last_applied.map_or(0, |log_id| log_id.index);
    let matched = |id: &u64| {
        metrics
            .replication
            .as_ref()
            .and_then(|replication| replication.get(id))
            .and_then(|log_id| log_id.as_ref())
            .map(|log_id| log_id.index)
    };
    let caught_up: Vec<u64> = membership
        .learner_ids()
        .filter(|id| peers.contains(id) && matched(id).is_some_and(|index| index >= applied))
        .collect();
    if caught_up.is_empty() {
        return;
    }
    let mut voters: BTreeSet<u64> = membership.voter_ids().collect();
    voters.extend(caught_up.iter().copied());
    match raft.change_membership(voters, false).await {
        Ok(_) => tracing::info!(
            nodes = ?caught_up,
            "nodes that rejoined on an empty data dir are controller voters again"
        ),
        Err(error) => tracing::debug!(%error, "a caught-up learner is not a voter yet"),
    }
}
