//! The cluster thread: a current-thread tokio runtime running this node's
//! controller member (openraft), the internal RPC server, the node's
//! duties toward the cluster, and the proposals the shards send.
//!
//! * **Bootstrap.** The lowest configured node id initialises the voters
//!   (every peer) when its log is empty and no peer answers with a cluster
//!   id; the others wait to be contacted. Whoever leads a cluster without
//!   an id commits [`ControllerCommand::CreateCluster`] with a fresh one,
//!   then the internal topics.
//! * **Duties** (every [`DUTY_INTERVAL`]): record the cluster id in
//!   `node.toml` once known, register this node (its Kafka address and
//!   shard count) until the metadata shows it, and publish who leads.
//! * **Liveness**: every node heartbeats to the leader
//!   (`/cluster/heartbeat`) every `cluster.heartbeat_interval_ms`, and at
//!   once when it applied more of the log, with its applied index; the
//!   leader fences a node silent for `cluster.session_timeout_ms` (a new
//!   leader first gives every node that long), and a fenced node that is
//!   alive registers again, which unfences it.
//! * **Proposals**: a command from a shard is written by the leader
//!   (forwarded over `/controller/propose` when it is another node); the
//!   leader answers once every unfenced node reported it applied (at most
//!   [`APPLY_WAIT`]), and the proposing node once it applied it too, so a
//!   created topic is usable on every node when the client hears back.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use openraft::{BasicNode, Raft};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::log_store::LogStore;
use super::network::Network;
use super::rejoin;
use super::rpc::{self, Identity, PATH_APPEND, PATH_PROPOSE, PATH_SNAPSHOT, PATH_VOTE};
use super::state_machine::StateMachine;
use super::{ControllerCommand, ControllerOutcome, ControllerTypes};
use crate::broker::metadata::{MetadataProposer, MetadataStore, NodeInfo, random_bytes};
use crate::broker::metadata_command::{MetadataCommand, Refusal};
use crate::broker::peer::{PATH_PREFIX, PeerCaller, PeerService};
use crate::cluster::identity::NodeIdentity;
use crate::config::ClusterConfig;

/// Broker calls (`broker/peer.rs`) in flight to one peer at once: a
/// transaction over thousands of partitions must not open thousands of
/// connections to a node whose listener takes `rpc::CONNECTIONS_MAX`.
pub const PEER_CALLS_IN_FLIGHT_MAX: usize = 8;

/// How often a node looks at its duties.
pub const DUTY_INTERVAL: Duration = Duration::from_millis(200);
/// How long a proposal may take, retries through leader changes included.
pub const PROPOSAL_TIMEOUT: Duration = Duration::from_secs(15);
const PATH_HELLO: &str = "/cluster/hello";
const PATH_HEARTBEAT: &str = "/cluster/heartbeat";
/// How long the leader waits for every unfenced node to apply a write
/// before answering anyway (a slow node applies it later).
pub const APPLY_WAIT: Duration = Duration::from_secs(2);

/// A node's heartbeat to the controller leader.
#[derive(Debug, Serialize, Deserialize)]
struct Heartbeat {
    node_id: u64,
    /// The last log index its state machine applied.
    applied: u64,
}

/// What the leader knows of the nodes' heartbeats: when each was last
/// heard (or, after a leader change, the change), what it had applied, and
/// whether this leader heard it at all.
#[derive(Default)]
struct Liveness {
    seen: std::sync::Mutex<BTreeMap<u64, Seen>>,
}

#[derive(Clone, Copy)]
struct Seen {
    at: Instant,
    applied: u64,
    heard: bool,
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Seen>> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, node: u64, applied: u64) {
        let mut seen = self.lock();
        let before = seen.get(&node).map_or(0, |seen| seen.applied);
        seen.insert(
            node,
            Seen {
                at: Instant::now(),
                applied: before.max(applied),
                heard: true,
            },
        );
    }

    /// A new leader counts every node as just heard from (for fencing),
    /// and waits for no one until it hears them.
    fn reset(&self, nodes: impl Iterator<Item = u64>) {
        let mut seen = self.lock();
        let now = Instant::now();
        for node in nodes {
            let applied = seen.get(&node).map_or(0, |seen| seen.applied);
            seen.insert(
                node,
                Seen {
                    at: now,
                    applied,
                    heard: false,
                },
            );
        }
    }

    /// Count `node` as silent for `silent` already (not heard since).
    fn backdate(&self, node: u64, silent: Duration) {
        if let Some(seen) = self.lock().get_mut(&node) {
            seen.at = Instant::now().checked_sub(silent).unwrap_or(seen.at);
        }
    }

    fn silent_for(&self, node: u64) -> Duration {
        self.lock()
            .get(&node)
            .map_or(Duration::MAX, |seen| seen.at.elapsed())
    }

    /// Wait until every node that heartbeats (heard within `recent`) but
    /// `me` reported `index` applied, or [`APPLY_WAIT`] passed. A node not
    /// heard lately is not waited for: it is down or about to be fenced.
    async fn wait_applied(&self, store: &MetadataStore, me: u64, index: u64, recent: Duration) {
        let deadline = Instant::now() + APPLY_WAIT;
        loop {
            let snapshot = store.snapshot();
            let behind: Vec<u64> = {
                let seen = self.lock();
                snapshot
                    .nodes
                    .iter()
                    .filter(|(id, node)| **id != me && !node.fenced)
                    .filter(|(id, _)| {
                        seen.get(id).is_some_and(|seen| {
                            seen.heard && seen.at.elapsed() < recent && seen.applied < index
                        })
                    })
                    .map(|(id, _)| *id)
                    .collect()
            };
            if behind.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                tracing::debug!(
                    index,
                    ?behind,
                    "answering before every node applied the write"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Why the controller could not start.
#[derive(Debug, Error)]
pub enum ControllerStartError {
    #[error("cannot start the cluster thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("cannot listen on cluster.listen {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the controller's log cannot be opened: {0}")]
    Log(String),
    #[error("the controller's state cannot be restored: {0}")]
    State(String),
    #[error("{0}")]
    Raft(String),
    #[error(
        "node {peer} at {address} belongs to cluster {theirs}, this data dir to cluster {ours}: \
         point this node at its own cluster's peers, or give it the data dir it had in this \
         cluster"
    )]
    OtherCluster {
        peer: i32,
        address: String,
        theirs: String,
        ours: String,
    },
    #[error("cannot record that this node's data dir was found empty: {0}")]
    LostDataMarker(#[source] std::io::Error),
}

/// Why a proposal failed (the command may or may not have been applied).
#[derive(Clone, Debug, Error, Serialize, Deserialize)]
pub enum ProposeError {
    #[error("no controller leader answered within {0:?}; is a majority of the nodes up?")]
    NoLeader(Duration),
    #[error("the cluster thread has stopped")]
    Stopped,
}

/// What the leader answers a forwarded proposal.
#[derive(Debug, Serialize, Deserialize)]
enum ProposeAnswer {
    Committed {
        index: u64,
        outcome: ControllerOutcome,
    },
    NotLeader {
        leader: Option<u64>,
    },
}

/// What `/cluster/hello` answers.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    node_id: u64,
    cluster_id: String,
    /// The nodes registered in the answering node's metadata.
    #[serde(default)]
    members: Vec<u64>,
}

/// A command from a shard and where its outcome goes.
struct Proposal {
    command: ControllerCommand,
    reply: futures_channel::oneshot::Sender<Result<ControllerOutcome, ProposeError>>,
}

/// A call from this node's broker to another node's, and where its answer
/// goes.
struct PeerCall {
    node: u64,
    path: &'static str,
    body: Vec<u8>,
    timeout: Duration,
    /// Waits its turn among [`PEER_CALLS_IN_FLIGHT_MAX`] to the node.
    queued: bool,
    reply: futures_channel::oneshot::Sender<Result<bytes::Bytes, String>>,
}

/// What this node's broker serves other nodes, once its shards run.
type BrokerService = Arc<std::sync::OnceLock<Arc<dyn PeerService>>>;

/// The shards' handle on the controller (Send + Sync, cheap to clone).
#[derive(Clone)]
pub struct ControllerHandle {
    proposals: flume::Sender<Proposal>,
    calls: flume::Sender<PeerCall>,
    broker_service: BrokerService,
    leader: Arc<AtomicI64>,
    /// Why the cluster refused this node's registration, if it did.
    refused: Arc<std::sync::Mutex<Option<String>>>,
    /// Whether this node's registration was committed since it started.
    registered: Arc<AtomicBool>,
    /// Set by [`ControllerHandle::leave`]: this node no longer registers.
    leaving: Arc<AtomicBool>,
}

impl ControllerHandle {
    /// Controlled shutdown (Kafka's ControlledShutdown; KIP-631's broker
    /// heartbeat asking to shut down): stop registering this node and
    /// fence it through the controller, so that each shard group it leads
    /// gets an in-sync follower as leader now instead of after
    /// `cluster.session_timeout_ms`, then wait until `store` shows no
    /// group led by this node that another in-sync member could lead. At
    /// most `timeout`; false when that did not happen in time (no
    /// controller majority: the groups then fail over as after a crash).
    pub async fn leave(&self, store: &MetadataStore, node_id: u64, timeout: Duration) -> bool {
        self.leaving.store(true, Ordering::Relaxed);
        // Nothing to hand over when this node leads no group another
        // in-sync member could take and is in no other leader's in-sync
        // set (the last node of a cluster stopping, which could not fence
        // itself without a majority anyway).
        let snapshot = store.snapshot();
        let needed = snapshot.placement.as_ref().is_some_and(|placement| {
            placement
                .groups
                .iter()
                .any(|group| group.in_sync.len() > 1 && group.in_sync.contains(&node_id))
        });
        if !needed {
            return true;
        }
        let deadline = Instant::now() + timeout;
        let handed_over = || {
            let snapshot = store.snapshot();
            let fenced = snapshot.nodes.get(&node_id).is_some_and(|node| node.fenced);
            let still_leading = snapshot.placement.as_ref().is_some_and(|placement| {
                placement
                    .groups
                    .iter()
                    .any(|group| group.leader == node_id && group.in_sync.len() > 1)
            });
            fenced && !still_leading
        };
        let fence = self.propose(ControllerCommand::FenceNode { node_id });
        if tokio::time::timeout(timeout, fence).await.is_err() {
            return false;
        }
        while !handed_over() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Propose `command` and wait until it is committed and applied on this
    /// node (then the store's snapshot shows it).
    pub async fn propose(
        &self,
        command: ControllerCommand,
    ) -> Result<ControllerOutcome, ProposeError> {
        let (reply, outcome) = futures_channel::oneshot::channel();
        if self.proposals.send(Proposal { command, reply }).is_err() {
            return Err(ProposeError::Stopped);
        }
        outcome.await.unwrap_or(Err(ProposeError::Stopped))
    }

    /// Serve other nodes' broker requests (paths under
    /// [`crate::broker::peer::PATH_PREFIX`]) with `service` from now on;
    /// until then they are answered 503 and retried by their senders.
    pub fn serve_broker(&self, service: Arc<dyn PeerService>) {
        let _ = self.broker_service.set(service);
    }

    /// Whether this node registered since it started: a majority committed
    /// it, so the cluster is live (a restarted node's stored metadata
    /// already lists it, and openraft may restore a stale leader).
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// The controller leader's node id, -1 while none is known.
    pub fn leader(&self) -> i64 {
        self.leader.load(Ordering::Relaxed)
    }

    /// Why the cluster refused to register this node (a shard count other
    /// than the cluster's), if it did: the node cannot serve.
    pub fn registration_refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl MetadataProposer for ControllerHandle {
    fn propose(
        &self,
        command: MetadataCommand,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<Refusal>, String>> {
        let handle = self.clone();
        Box::pin(async move {
            handle
                .propose(ControllerCommand::Metadata(command))
                .await
                .map(|outcome| outcome.refusal)
                .map_err(|error| error.to_string())
        })
    }

    fn allocate_producer_ids(
        &self,
        len: i32,
    ) -> futures_util::future::BoxFuture<'static, Result<i64, String>> {
        let handle = self.clone();
        Box::pin(async move {
            let outcome = handle
                .propose(ControllerCommand::AllocateProducerIds { len })
                .await
                .map_err(|error| error.to_string())?;
            match (outcome.refusal, outcome.producer_id_block_start) {
                (Some(refusal), _) => Err(refusal.to_string()),
                (None, Some(start)) => Ok(start),
                (None, None) => Err("the controller answered no block".to_owned()),
            }
        })
    }
}

impl PeerCaller for ControllerHandle {
    fn call(
        &self,
        node: u64,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
        queued: bool,
    ) -> futures_util::future::BoxFuture<'static, Result<bytes::Bytes, String>> {
        let (reply, answer) = futures_channel::oneshot::channel();
        let call = PeerCall {
            node,
            path,
            body,
            timeout,
            queued,
            reply,
        };
        let sent = self.calls.send(call).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(ProposeError::Stopped.to_string());
            }
            answer
                .await
                .unwrap_or_else(|_| Err(ProposeError::Stopped.to_string()))
        })
    }
}

/// What this node tells the cluster about itself.
#[derive(Clone)]
pub struct LocalNode {
    pub kafka_host: String,
    pub kafka_port: u16,
    /// Advertised `host:port` of each listener besides the main one.
    pub kafka_listeners: BTreeMap<String, String>,
    pub shards: u32,
    /// `cluster.replication_factor`, fixed when the cluster is created.
    pub replication_factor: u16,
    /// The internal topics and their partition counts, created by the
    /// first leader.
    pub internal_topics: Vec<(String, u32, BTreeMap<String, String>)>,
}

/// Start the cluster thread on `data_dir` (locked by the caller). Returns
/// once the RPC listener is bound and the controller member runs; joining
/// (a leader, the cluster id, this node registered) happens after.
pub fn start(
    config: &ClusterConfig,
    data_dir: &Path,
    store: Arc<MetadataStore>,
    local: LocalNode,
    identity: NodeIdentity,
) -> Result<ControllerHandle, ControllerStartError> {
    let (proposals, queue) = flume::unbounded::<Proposal>();
    let (calls, call_queue) = flume::unbounded::<PeerCall>();
    let broker_service = BrokerService::default();
    let leader = Arc::new(AtomicI64::new(-1));
    let refused = Arc::new(std::sync::Mutex::new(None));
    let registered = Arc::new(AtomicBool::new(false));
    let leaving = Arc::new(AtomicBool::new(false));
    let handle = ControllerHandle {
        proposals,
        calls,
        registered: Arc::clone(&registered),
        leaving: Arc::clone(&leaving),
        broker_service: Arc::clone(&broker_service),
        leader: Arc::clone(&leader),
        refused: Arc::clone(&refused),
    };
    let (started, outcome) = std::sync::mpsc::channel();
    let config = config.clone();
    let data_dir = data_dir.to_owned();
    std::thread::Builder::new()
        .name("sluice-cluster".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started.send(Err(ControllerStartError::Thread(error)));
                    return;
                }
            };
            runtime.block_on(async move {
                let shared = Shared {
                    store,
                    leader,
                    refused,
                    registered,
                    leaving,
                    broker_service,
                };
                let shards = local.shards;
                let member = match Member::start(&config, &data_dir, identity, shared, shards).await
                {
                    Ok(member) => member,
                    Err(error) => {
                        let _ = started.send(Err(error));
                        return;
                    }
                };
                let _ = started.send(Ok(()));
                member.run(local, queue, call_queue).await;
            });
        })
        .map_err(ControllerStartError::Thread)?;
    match outcome.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(ControllerStartError::Raft(
            "the cluster thread stopped while starting".to_owned(),
        )),
    }
}

/// What the cluster thread shares with the [`ControllerHandle`] and the
/// rest of the node.
struct Shared {
    store: Arc<MetadataStore>,
    leader: Arc<AtomicI64>,
    refused: Arc<std::sync::Mutex<Option<String>>>,
    registered: Arc<AtomicBool>,
    leaving: Arc<AtomicBool>,
    broker_service: BrokerService,
}

/// This node's controller member and what it needs.
struct Member {
    raft: Raft<ControllerTypes>,
    identity: Identity,
    node_identity: NodeIdentity,
    store: Arc<MetadataStore>,
    peers: BTreeMap<u64, BasicNode>,
    leader: Arc<AtomicI64>,
    liveness: Arc<Liveness>,
    heartbeat_interval: Duration,
    session_timeout: Duration,
    /// Whether this node led at the last duty tick.
    leading: bool,
    /// The last controller leader other than this node, and the shortest
    /// election timeout: a node that takes over was not reached by that
    /// leader for at least that long, so its silence counts from then.
    other_leader: Option<u64>,
    election_timeout_min: Duration,
    /// `cluster.leader_rebalance_interval_ms` (none: 0, never), and when
    /// this node last looked as the leader.
    leader_rebalance_interval: Option<Duration>,
    last_rebalance: Option<Instant>,
    /// The applied index last reported to the leader.
    reported_applied: u64,
    /// Where a refused registration is reported to the start.
    refused: Arc<std::sync::Mutex<Option<String>>>,
    /// Set once this node's registration is committed after its start.
    registered: Arc<AtomicBool>,
    /// Set when this node shuts down: it no longer registers.
    leaving: Arc<AtomicBool>,
    /// Drawn at this start: its registrations carry it, so the controller
    /// tells a restart from a repeated registration.
    incarnation: u64,
    /// Per peer, the broker calls that may be in flight to it at once.
    peer_call_slots: BTreeMap<u64, Arc<tokio::sync::Semaphore>>,
    /// Set at start when this member found its data dir empty while the
    /// cluster lists it: it answers no vote, append or snapshot (shared
    /// with the [`Server`]) and asks the leader to take it back as a
    /// learner before anything else.
    passive: Arc<AtomicBool>,
    /// Its next registration says its copies are lost (rejoin.rs).
    lost_data: bool,
    controller_dir: std::path::PathBuf,
}

impl Member {
    async fn start(
        config: &ClusterConfig,
        data_dir: &Path,
        node_identity: NodeIdentity,
        shared: Shared,
        shards: u32,
    ) -> Result<Member, ControllerStartError> {
        let Shared {
            store,
            leader,
            refused,
            registered,
            leaving,
            broker_service,
        } = shared;
        let node_id = u64::try_from(config.node_id).expect("validated: node ids are >= 0");
        let known_cluster = node_identity.cluster_id().unwrap_or_default().to_owned();
        let identity = Identity {
            node_id,
            cluster_id: Arc::new(std::sync::RwLock::new(known_cluster.clone())),
            peers: Arc::new(
                config
                    .peers
                    .iter()
                    .filter_map(|peer| u64::try_from(peer.id).ok())
                    .collect(),
            ),
        };
        let peers: BTreeMap<u64, BasicNode> = config
            .peers
            .iter()
            .map(|peer| {
                (
                    u64::try_from(peer.id).expect("validated: node ids are >= 0"),
                    BasicNode::new(peer.address.clone()),
                )
            })
            .collect();
        let answers = hello_peers(&identity, config).await;
        let controller_dir = data_dir.join("controller");
        // A member whose data dir is empty (a replaced disk) rejoins as a
        // learner first (rejoin.rs).
        let rejoin = known_cluster.is_empty()
            && answers.iter().find(|(_, _, theirs, members)| {
                !theirs.is_empty() && members.contains(&node_id)
            }).inspect(|(peer, address, theirs, _)| {
                tracing::warn!(peer, address, cluster = %theirs, "this node is a member of the cluster but its data dir is empty: rejoining, and copying every shard-group log it keeps from its leader");
            }).is_some();
        if rejoin {
            rejoin::mark_lost_data(&controller_dir)
                .map_err(ControllerStartError::LostDataMarker)?;
        }
        let lost_data = rejoin::lost_data_marked(&controller_dir);
        if !known_cluster.is_empty()
            && let Some((peer, address, theirs, _)) = answers
                .iter()
                .find(|(_, _, theirs, _)| !theirs.is_empty() && *theirs != known_cluster)
        {
            return Err(ControllerStartError::OtherCluster {
                peer: *peer,
                address: address.clone(),
                theirs: theirs.clone(),
                ours: known_cluster,
            });
        }
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|source| ControllerStartError::Listen {
                address: config.listen.clone(),
                source,
            })?;
        if let Ok(bound) = listener.local_addr() {
            crate::exposure::warn_cluster(bound);
        }
        let log = LogStore::open(&LogStore::dir_in(data_dir))
            .map_err(|error| ControllerStartError::Log(crate::error_chain::error_chain(&error)))?;
        let state = StateMachine::open(&controller_dir, Arc::clone(&store))
            .map_err(ControllerStartError::State)?;
        let raft_config = openraft::Config {
            cluster_name: "sluice".to_owned(),
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            heartbeat_interval: config.raft_heartbeat_interval_ms(),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_payload_entries: rpc::ENTRIES_PER_APPEND_MAX,
            ..Default::default()
        }
        .validate()
        .map_err(|error| ControllerStartError::Raft(error.to_string()))?;
        let network = Network {
            identity: identity.clone(),
        };
        let raft = Raft::new(node_id, Arc::new(raft_config), network, log, state)
            .await
            .map_err(|error| ControllerStartError::Raft(error.to_string()))?;
        let liveness = Arc::new(Liveness::default());
        let passive = Arc::new(AtomicBool::new(rejoin));
        let server = Server {
            passive: Arc::clone(&passive),
            membership_change_timeout: Duration::from_millis(config.session_timeout_ms),
            raft: raft.clone(),
            identity: identity.clone(),
            liveness: Arc::clone(&liveness),
            store: Arc::clone(&store),
            recent: Duration::from_millis(config.heartbeat_interval_ms * 3),
            broker_service,
            connections_max: rpc::connections_max(shards, peers.len()),
        };
        tokio::spawn(server.serve(listener));
        let lowest = peers.keys().next().copied() == Some(node_id);
        let initialized = raft.is_initialized().await.unwrap_or(true);
        let cluster_exists = answers.iter().any(|(_, _, theirs, _)| !theirs.is_empty());
        if lowest && !initialized && !cluster_exists {
            match raft.initialize(peers.clone()).await {
                Ok(()) => {
                    tracing::info!(voters = ?peers.keys().collect::<Vec<_>>(), "initialised the controller's voters")
                }
                Err(error) => tracing::info!(%error, "controller already initialised"),
            }
        }
        let peer_call_slots = peers
            .keys()
            .map(|&id| {
                (
                    id,
                    Arc::new(tokio::sync::Semaphore::new(PEER_CALLS_IN_FLIGHT_MAX)),
                )
            })
            .collect();
        Ok(Member {
            raft,
            identity,
            node_identity,
            store,
            peers,
            leader,
            liveness,
            heartbeat_interval: Duration::from_millis(config.heartbeat_interval_ms),
            session_timeout: Duration::from_millis(config.session_timeout_ms),
            leading: false,
            other_leader: None,
            election_timeout_min: Duration::from_millis(config.election_timeout_min_ms),
            leader_rebalance_interval: (config.leader_rebalance_interval_ms > 0)
                .then(|| Duration::from_millis(config.leader_rebalance_interval_ms)),
            last_rebalance: None,
            reported_applied: 0,
            refused,
            registered,
            leaving,
            incarnation: {
                let bytes = crate::broker::metadata::random_bytes();
                u64::from_le_bytes([
                    bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                ])
                .max(1)
            },
            peer_call_slots,
            passive,
            lost_data,
            controller_dir,
        })
    }

    async fn run(
        mut self,
        local: LocalNode,
        queue: flume::Receiver<Proposal>,
        calls: flume::Receiver<PeerCall>,
    ) {
        if self.passive.load(Ordering::Relaxed) {
            let peers: Vec<(u64, String)> = self
                .peers
                .iter()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            if let Err(reason) = rejoin::ask_to_rejoin(&self.identity, &peers).await {
                *self
                    .refused
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
                return;
            }
            self.passive.store(false, Ordering::Relaxed);
        }
        // Fencing is a duty: looked at at least once a heartbeat interval.
        let mut duties = tokio::time::interval(DUTY_INTERVAL.min(self.heartbeat_interval));
        let mut heartbeats = tokio::time::interval(self.heartbeat_interval);
        let mut metrics = self.raft.metrics();
        loop {
            tokio::select! {
                // A new leader is published at once (clients are told it in
                // Metadata), not at the next duty tick; more of the log
                // applied is reported at once (writers wait for it).
                changed = metrics.changed() => {
                    let stopped = changed.is_err() || metrics.borrow().running_state.is_err();
                    if stopped {
                        // openraft stops its core on a storage error (a full
                        // disk, a bad snapshot): this node's metadata would
                        // freeze while it keeps serving. Stop the process so
                        // it restarts and recovers from its log (acknowledged
                        // data is on disk).
                        let state = metrics.borrow().running_state.clone();
                        tracing::error!(?state, "the cluster controller stopped; exiting so that this node restarts and recovers");
                        std::process::exit(70);
                    }
                    let leader = metrics.borrow().current_leader;
                    self.publish_leader(leader, metrics.borrow().current_term);
                    let applied = metrics.borrow().last_applied.map_or(0, |log_id| log_id.index);
                    if applied > self.reported_applied {
                        self.heartbeat();
                    }
                }
                _ = heartbeats.tick() => self.heartbeat(),
                proposal = queue.recv_async() => {
                    let Ok(proposal) = proposal else { return };
                    let member = self.proposer();
                    tokio::spawn(async move {
                        let outcome = member.propose(proposal.command).await;
                        let _ = proposal.reply.send(outcome);
                    });
                }
                call = calls.recv_async() => {
                    let Ok(call) = call else { return };
                    self.send_peer_call(call);
                }
                // Bounded: a proposal that cannot commit (no majority)
                // must not hold up heartbeats, peer calls and the gauges
                // (found with the controller-leader gauge test); an
                // unfinished duty runs again at the next tick.
                _ = duties.tick() => {
                    let bound = self.session_timeout / 4;
                    let _ = tokio::time::timeout(bound, self.duties(&local)).await;
                }
            }
        }
    }

    /// Send a broker's call to its node, at most
    /// [`PEER_CALLS_IN_FLIGHT_MAX`] at once per node (the others wait,
    /// within their timeout); the answer goes back to the caller (the
    /// reason when there is none).
    fn send_peer_call(&self, call: PeerCall) {
        let address = self.peers.get(&call.node).map(|node| node.addr.clone());
        let slots = self.peer_call_slots.get(&call.node).cloned();
        let (Some(address), Some(slots)) = (address, slots) else {
            let _ = call
                .reply
                .send(Err(format!("node {} is not a configured peer", call.node)));
            return;
        };
        let identity = self.identity.clone();
        tokio::spawn(async move {
            let PeerCall {
                node,
                path,
                body,
                timeout,
                queued,
                reply,
            } = call;
            let exchange = async {
                let _slot = if queued {
                    Some(slots.acquire().await.map_err(|error| error.to_string())?)
                } else {
                    None
                };
                rpc::call_raw(&identity, &address, path, body, timeout)
                    .await
                    .map_err(|error| error.to_string())
            };
            let answer = tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "no answer from node {node} within {timeout:?} (calls to it queued)"
                    ))
                });
            let _ = reply.send(answer);
        });
    }

    fn proposer(&self) -> Proposer {
        Proposer {
            raft: self.raft.clone(),
            identity: self.identity.clone(),
            peers: self.peers.clone(),
            liveness: Arc::clone(&self.liveness),
            store: Arc::clone(&self.store),
            recent: self.heartbeat_interval * 3,
        }
    }

    /// Tell the leader this node is alive and what it applied (recorded
    /// directly when this node leads).
    fn heartbeat(&mut self) {
        let metrics = self.raft.metrics().borrow().clone();
        let applied = metrics.last_applied.map_or(0, |log_id| log_id.index);
        self.reported_applied = applied;
        let me = self.identity.node_id;
        let Some(leader) = metrics.current_leader else {
            return;
        };
        if leader == me {
            self.liveness.record(me, applied);
            return;
        }
        let Some(address) = self.peers.get(&leader).map(|node| node.addr.clone()) else {
            return;
        };
        let identity = self.identity.clone();
        let timeout = self.heartbeat_interval;
        tokio::spawn(async move {
            let sent: Result<bool, _> = rpc::call(
                &identity,
                &address,
                PATH_HEARTBEAT,
                &Heartbeat {
                    node_id: me,
                    applied,
                },
                timeout,
            )
            .await;
            if let Err(error) = sent {
                tracing::debug!(%error, leader, "heartbeat to the controller leader failed");
            }
        });
    }

    /// As the leader: fence the nodes silent past the session timeout (a
    /// new leader first counts everyone as just heard from, but the
    /// previous leader as silent since an election timeout ago: it had not
    /// reached this node for that long, or no election would have begun).
    async fn fence_silent_nodes(&mut self, snapshot: &crate::broker::metadata::ClusterMetadata) {
        if !self.leading {
            self.leading = true;
            self.liveness.reset(snapshot.nodes.keys().copied());
            if let Some(previous) = self.other_leader.take() {
                self.liveness.backdate(previous, self.election_timeout_min);
            }
            return;
        }
        let proposer = self.proposer();
        for (node_id, node) in &snapshot.nodes {
            if *node_id == self.identity.node_id || node.fenced {
                continue;
            }
            let silent = self.liveness.silent_for(*node_id);
            if silent > self.session_timeout {
                let command = ControllerCommand::FenceNode { node_id: *node_id };
                match proposer.propose(command).await {
                    Ok(_) => {
                        tracing::warn!(
                            node_id,
                            silent_ms = silent.as_millis() as u64,
                            "node fenced: the controller has not heard from it within \
                             cluster.session_timeout_ms; it leaves every in-sync set and each \
                             shard group it led gets an in-sync follower as leader"
                        );
                        let offline = self.store.snapshot().groups_led_by(*node_id);
                        if !offline.is_empty() {
                            tracing::warn!(
                                node_id,
                                groups = ?offline,
                                "these shard groups are offline: their only in-sync replica is \
                                 the fenced node, and they come back when it returns (or with \
                                 unclean.leader.election.enable=true, losing what only it holds)"
                            );
                        }
                    }
                    Err(error) => tracing::debug!(%error, node_id, "fencing not done yet"),
                }
            }
        }
    }

    /// As the leader, every `cluster.leader_rebalance_interval_ms`: give
    /// the shard groups whose preferred leader is live and in sync again
    /// back to it (Kafka's automatic preferred leader election).
    async fn rebalance_leaders(&mut self, snapshot: &crate::broker::metadata::ClusterMetadata) {
        let Some(interval) = self.leader_rebalance_interval else {
            return;
        };
        let now = Instant::now();
        let last = *self.last_rebalance.get_or_insert(now);
        if now.saturating_duration_since(last) < interval {
            return;
        }
        self.last_rebalance = Some(now);
        // Only to a node heard within the last heartbeats: one killed a
        // moment ago is not fenced yet, and would leave the groups without
        // a serving leader until it is.
        let recent = self.heartbeat_interval * 3;
        let mut due = snapshot.preferred_leaders_due();
        due.retain(|&group| {
            snapshot
                .placement
                .as_ref()
                .and_then(|placement| placement.groups.get(group as usize))
                .and_then(|record| record.members.first())
                .is_some_and(|&preferred| self.liveness.silent_for(preferred) <= recent)
        });
        if due.is_empty() {
            return;
        }
        match self
            .proposer()
            .propose(ControllerCommand::ElectPreferredLeaders {
                groups: due.clone(),
            })
            .await
        {
            Ok(_) => tracing::info!(
                groups = ?due,
                "shard groups moved back to their preferred leaders (cluster.leader_rebalance_interval_ms)"
            ),
            Err(error) => tracing::debug!(%error, "preferred leader election not done yet"),
        }
    }

    /// Tell the handle who leads (logged on change).
    fn publish_leader(&mut self, leader: Option<u64>, term: u64) {
        if let Some(other) = leader.filter(|&id| id != self.identity.node_id) {
            self.other_leader = Some(other);
        }
        let id = leader.map_or(-1, |id| id as i64);
        if self.leader.swap(id, Ordering::Relaxed) != id && id >= 0 {
            tracing::info!(leader = id, term, "controller leader");
        }
    }

    /// Publish the leader, record the cluster id, and make the cluster
    /// whole: an id, the internal topics, this node registered.
    async fn duties(&mut self, local: &LocalNode) {
        let metrics = self.raft.metrics().borrow().clone();
        self.publish_leader(metrics.current_leader, metrics.current_term);
        let leader = metrics.current_leader.map_or(-1, |id| id as i64);
        let snapshot = self.store.snapshot();
        // A leader no majority acknowledged lately leads nothing: the
        // metadata cannot change (found by the fresh-user trial: with two
        // of three nodes down the survivor still reported itself).
        let quorum_lost = metrics.current_leader == Some(self.identity.node_id)
            && metrics
                .millis_since_quorum_ack
                .is_none_or(|ms| u128::from(ms) > self.session_timeout.as_millis());
        let reachable_leader = if quorum_lost {
            -1
        } else {
            self.leader.load(Ordering::Relaxed)
        };
        publish_cluster_gauges(reachable_leader, &snapshot);
        if !snapshot.cluster_id.is_empty() && self.identity.cluster_id() != snapshot.cluster_id {
            if let Err(error) = self.node_identity.record_cluster_id(&snapshot.cluster_id) {
                tracing::error!(%error, "cannot record the cluster id in node.toml; retrying");
                return;
            }
            *self
                .identity
                .cluster_id
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = snapshot.cluster_id.clone();
        }
        let proposer = self.proposer();
        if metrics.current_leader != Some(self.identity.node_id) {
            self.leading = false;
        }
        if metrics.current_leader == Some(self.identity.node_id) {
            self.fence_silent_nodes(&snapshot).await;
            self.rebalance_leaders(&snapshot).await;
            let peers: std::collections::BTreeSet<u64> = self.peers.keys().copied().collect();
            rejoin::finish_voter_changes(&self.raft, &peers).await;
            if snapshot.cluster_id.is_empty() {
                let cluster_id = crate::broker::metadata::base64_url(&random_bytes());
                let command = ControllerCommand::CreateCluster {
                    cluster_id,
                    nodes: self.peers.keys().copied().collect(),
                    shards: local.shards,
                    replication_factor: local.replication_factor,
                };
                let _ = proposer.propose(command).await;
                return;
            }
            for (name, partitions, overrides) in &local.internal_topics {
                if snapshot.topic(name).is_none() {
                    let command = MetadataCommand::CreateTopic {
                        name: name.clone(),
                        id: self.store.new_topic_id(),
                        partitions: *partitions,
                        overrides: overrides.clone(),
                    };
                    let _ = proposer.propose(ControllerCommand::Metadata(command)).await;
                }
            }
        }
        if leader < 0 || snapshot.cluster_id.is_empty() {
            return;
        }
        let me = NodeInfo {
            host: local.kafka_host.clone(),
            port: local.kafka_port,
            shards: local.shards,
            fenced: false,
            incarnation: self.incarnation,
            listeners: local.kafka_listeners.clone(),
        };
        // Registered once per start even when the stored metadata lists
        // this node: the commit proves a live majority (see `registered`).
        if self.leaving.load(Ordering::Relaxed) {
            return;
        }
        if !self.registered.load(Ordering::Relaxed)
            || snapshot.nodes.get(&self.identity.node_id) != Some(&me)
        {
            let command = ControllerCommand::RegisterNode {
                node_id: self.identity.node_id,
                kafka_host: me.host,
                kafka_port: me.port,
                shards: me.shards,
                incarnation: me.incarnation,
                lost_data: self.lost_data,
                listeners: me.listeners,
            };
            match proposer.propose(command).await {
                Ok(ControllerOutcome {
                    refusal: Some(refusal),
                    ..
                }) => {
                    *self
                        .refused
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(refusal.to_string());
                }
                Ok(_) => {
                    if self.lost_data {
                        if let Err(error) = rejoin::clear_lost_data(&self.controller_dir) {
                            tracing::error!(%error, "cannot remove the lost-data marker; retrying");
                            return;
                        }
                        self.lost_data = false;
                    }
                    self.registered.store(true, Ordering::Relaxed);
                }
                Err(error) => tracing::debug!(%error, "registration not done yet"),
            }
        }
    }
}

/// The cluster's state as this node sees it, for operators' alerts: the
/// controller leader, live and fenced nodes, offline and under-replicated
/// shard groups (the same on every node once the metadata reached it).
fn publish_cluster_gauges(leader: i64, snapshot: &crate::broker::metadata::ClusterMetadata) {
    use crate::telemetry::names;
    metrics::gauge!(names::CLUSTER_CONTROLLER_LEADER).set(leader as f64);
    let fenced = snapshot.nodes.values().filter(|node| node.fenced).count();
    metrics::gauge!(names::CLUSTER_NODES, "state" => "live")
        .set((snapshot.nodes.len() - fenced) as f64);
    metrics::gauge!(names::CLUSTER_NODES, "state" => "fenced").set(fenced as f64);
    let groups = snapshot
        .placement
        .as_ref()
        .map_or(&[][..], |placement| &placement.groups[..]);
    let offline = groups
        .iter()
        .filter(|group| {
            snapshot
                .nodes
                .get(&group.leader)
                .is_none_or(|node| node.fenced)
        })
        .count();
    let under_replicated = groups
        .iter()
        .filter(|group| group.in_sync.len() < group.members.len())
        .count();
    metrics::gauge!(names::CLUSTER_GROUPS_OFFLINE).set(offline as f64);
    metrics::gauge!(names::CLUSTER_GROUPS_UNDER_REPLICATED).set(under_replicated as f64);
}

/// Ask every other peer for its cluster id and registered nodes: (peer id,
/// address, cluster id, members) of the peers that answered.
async fn hello_peers(
    identity: &Identity,
    config: &ClusterConfig,
) -> Vec<(i32, String, String, Vec<u64>)> {
    // Sent without a cluster id, so that a peer of another cluster answers
    // with its id instead of refusing.
    let anonymous = Identity {
        node_id: identity.node_id,
        cluster_id: Arc::new(std::sync::RwLock::new(String::new())),
        peers: Arc::clone(&identity.peers),
    };
    let mut answers = Vec::new();
    for peer in config.peers.iter().filter(|peer| peer.id != config.node_id) {
        let hello: Result<Hello, _> = rpc::call(
            &anonymous,
            &peer.address,
            PATH_HELLO,
            &(),
            Duration::from_millis(500),
        )
        .await;
        if let Ok(hello) = hello {
            answers.push((
                peer.id,
                peer.address.clone(),
                hello.cluster_id,
                hello.members,
            ));
        }
    }
    answers
}

/// INVALID_REQUEST for a command too large for one log entry.
fn too_large(command: &ControllerCommand) -> Option<Refusal> {
    let bytes = serde_json::to_vec(command).map_or(usize::MAX, |json| json.len());
    (bytes > rpc::ENTRY_BYTES_MAX).then(|| {
        Refusal::InvalidRequest(format!(
            "this metadata change takes {bytes} bytes, more than the {} a controller entry \
             may hold",
            rpc::ENTRY_BYTES_MAX
        ))
    })
}

/// What a proposal needs (cloned into its own task).
#[derive(Clone)]
struct Proposer {
    raft: Raft<ControllerTypes>,
    identity: Identity,
    peers: BTreeMap<u64, BasicNode>,
    liveness: Arc<Liveness>,
    store: Arc<MetadataStore>,
    /// A node heard within this long is waited for (3 heartbeats).
    recent: Duration,
}

impl Proposer {
    async fn propose(&self, command: ControllerCommand) -> Result<ControllerOutcome, ProposeError> {
        if let Some(refusal) = too_large(&command) {
            return Ok(ControllerOutcome {
                refusal: Some(refusal),
                producer_id_block_start: None,
            });
        }
        let deadline = Instant::now() + PROPOSAL_TIMEOUT;
        loop {
            match self.write_once(&command).await {
                Some((index, outcome)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let applied = self
                        .raft
                        .wait(Some(left.max(Duration::from_millis(1))))
                        .applied_index_at_least(Some(index), "proposal applied here")
                        .await;
                    return match applied {
                        Ok(_) => Ok(outcome),
                        Err(_) => Err(ProposeError::NoLeader(PROPOSAL_TIMEOUT)),
                    };
                }
                None if Instant::now() >= deadline => {
                    return Err(ProposeError::NoLeader(PROPOSAL_TIMEOUT));
                }
                None => tokio::time::sleep(DUTY_INTERVAL / 2).await,
            }
        }
    }

    /// One attempt: write on this node if it leads, else forward to the
    /// leader. `None`: no leader, or it changed; try again.
    async fn write_once(&self, command: &ControllerCommand) -> Option<(u64, ControllerOutcome)> {
        let leader = self.raft.metrics().borrow().current_leader?;
        if leader == self.identity.node_id {
            return match self.raft.client_write(command.clone()).await {
                Ok(written) => {
                    let index = written.log_id.index;
                    self.liveness
                        .wait_applied(&self.store, self.identity.node_id, index, self.recent)
                        .await;
                    Some((index, written.data))
                }
                Err(error) => {
                    tracing::debug!(%error, "controller write not taken");
                    None
                }
            };
        }
        let address = &self.peers.get(&leader)?.addr;
        let answer: Result<ProposeAnswer, _> = rpc::call(
            &self.identity,
            address,
            PATH_PROPOSE,
            command,
            PROPOSAL_TIMEOUT,
        )
        .await;
        match answer {
            Ok(ProposeAnswer::Committed { index, outcome }) => Some((index, outcome)),
            Ok(ProposeAnswer::NotLeader { .. }) => None,
            Err(error) => {
                tracing::debug!(%error, leader, "forwarding a proposal failed");
                None
            }
        }
    }
}

/// Connections refused at the cluster listener's limit, logged at most
/// once per 10 s.
static REFUSED_CONNECTIONS: crate::log_throttle::LogThrottle =
    crate::log_throttle::LogThrottle::new(Duration::from_secs(10));

/// Counts an open cluster connection until dropped.
struct OpenConnection(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The internal RPC server.
struct Server {
    /// A member rejoining on an empty data dir takes no part in votes or
    /// appends until it is a learner (rejoin.rs).
    passive: Arc<AtomicBool>,
    /// How long a rejoin may wait for the other voters.
    membership_change_timeout: Duration,
    raft: Raft<ControllerTypes>,
    identity: Identity,
    liveness: Arc<Liveness>,
    store: Arc<MetadataStore>,
    /// A node heard within this long is waited for (3 heartbeats).
    recent: Duration,
    broker_service: BrokerService,
    /// [`rpc::connections_max`] for this cluster.
    connections_max: usize,
}

impl Server {
    async fn serve(self, listener: tokio::net::TcpListener) {
        let server = Arc::new(self);
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cluster listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Peers open a connection per call: a bound on those open at
            // once keeps a flood of idle connections from growing memory.
            if open.load(Ordering::Relaxed) >= server.connections_max {
                if let Some(refused) =
                    REFUSED_CONNECTIONS.record(crate::log_throttle::monotonic_ms())
                {
                    tracing::warn!(%peer, refused, limit = server.connections_max, "cluster listener at its connection limit; closing new connections");
                }
                drop(stream);
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let server = Arc::clone(&server);
            let open = Arc::clone(&open);
            tokio::spawn(async move {
                let _open = OpenConnection(open);
                let service = hyper::service::service_fn(move |request| {
                    let server = Arc::clone(&server);
                    async move {
                        let response = rpc::accept(&server.identity, request, |call| {
                            server.handle(call.path, call.body, call.sender)
                        })
                        .await;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                // Peers open a connection per call: one answer closes it,
                // so an idle connection holds a slot for at most the header
                // read timeout.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .keep_alive(false)
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "cluster RPC connection ended");
                }
            });
        }
    }

    async fn handle(
        &self,
        path: String,
        body: bytes::Bytes,
        sender: u64,
    ) -> Result<Vec<u8>, (StatusCode, String)> {
        let raft_path = matches!(path.as_str(), PATH_APPEND | PATH_VOTE | PATH_SNAPSHOT);
        if raft_path && self.passive.load(Ordering::Relaxed) {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "this node found its data dir empty and takes no part in the controller's votes \
                 until the leader took it back as a learner"
                    .to_owned(),
            ));
        }
        match path.as_str() {
            PATH_APPEND => {
                let request = rpc::decode(&body)?;
                rpc::encode(&self.raft.append_entries(request).await)
            }
            PATH_VOTE => {
                let request = rpc::decode(&body)?;
                rpc::encode(&self.raft.vote(request).await)
            }
            PATH_SNAPSHOT => {
                let request: openraft::raft::InstallSnapshotRequest<ControllerTypes> =
                    rpc::decode(&body)?;
                // The chunk is written at its offset into a buffer in
                // memory: an offset past any snapshot this metadata makes
                // would have it allocate whatever the sender says.
                let end = request.offset.checked_add(request.data.len() as u64);
                if end.is_none_or(|end| end > rpc::SNAPSHOT_BYTES_MAX) {
                    return Err((
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "a snapshot chunk at offset {} runs past the {} bytes a snapshot may take",
                            request.offset,
                            rpc::SNAPSHOT_BYTES_MAX
                        ),
                    ));
                }
                rpc::encode(&self.raft.install_snapshot(request).await)
            }
            path if path.starts_with(PATH_PREFIX) => {
                let Some(service) = self.broker_service.get() else {
                    return Err((
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this node's shards are still starting".to_owned(),
                    ));
                };
                service
                    .handle(path, body)
                    .await
                    .map_err(|(status, reason)| {
                        let status = StatusCode::from_u16(status)
                            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        (status, reason)
                    })
            }
            PATH_PROPOSE => {
                let command: ControllerCommand = rpc::decode(&body)?;
                if let Some(refusal) = too_large(&command) {
                    return Err((StatusCode::PAYLOAD_TOO_LARGE, refusal.to_string()));
                }
                let leader = self.raft.metrics().borrow().current_leader;
                if leader != Some(self.identity.node_id) {
                    return rpc::encode(&ProposeAnswer::NotLeader { leader });
                }
                match self.raft.client_write(command).await {
                    Ok(written) => {
                        let index = written.log_id.index;
                        self.liveness
                            .wait_applied(&self.store, self.identity.node_id, index, self.recent)
                            .await;
                        rpc::encode(&ProposeAnswer::Committed {
                            index,
                            outcome: written.data,
                        })
                    }
                    Err(error) => {
                        tracing::debug!(%error, "forwarded controller write not taken");
                        rpc::encode(&ProposeAnswer::NotLeader {
                            leader: self.raft.metrics().borrow().current_leader,
                        })
                    }
                }
            }
            rejoin::PATH_REJOIN => {
                let request = rpc::decode(&body)?;
                let answer = rejoin::answer(
                    &self.raft,
                    &self.identity,
                    &self.store,
                    (sender, request),
                    self.membership_change_timeout,
                )
                .await?;
                rpc::encode(&answer)
            }
            PATH_HEARTBEAT => {
                let heartbeat: Heartbeat = rpc::decode(&body)?;
                let leading =
                    self.raft.metrics().borrow().current_leader == Some(self.identity.node_id);
                if leading {
                    self.liveness.record(heartbeat.node_id, heartbeat.applied);
                }
                rpc::encode(&leading)
            }
            PATH_HELLO => rpc::encode(&Hello {
                node_id: self.identity.node_id,
                cluster_id: self.identity.cluster_id(),
                members: self.store.snapshot().nodes.keys().copied().collect(),
            }),
            other => Err((StatusCode::NOT_FOUND, format!("no such path {other}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::metadata::TopicId;

    #[test]
    fn a_command_too_large_for_one_entry_is_refused() {
        let command = |value_bytes: usize| {
            ControllerCommand::Metadata(MetadataCommand::CreateTopic {
                name: "big".to_owned(),
                id: TopicId::generate(),
                partitions: 1,
                overrides: BTreeMap::from([(
                    "leader.replication.throttled.replicas".to_owned(),
                    "x".repeat(value_bytes),
                )]),
            })
        };
        assert!(too_large(&command(1000)).is_none());
        let refusal = too_large(&command(rpc::ENTRY_BYTES_MAX)).unwrap();
        assert!(
            matches!(refusal, Refusal::InvalidRequest(ref message) if message.contains("controller entry"))
        );
        // Every entry that fits, times the entries per append, fits a body.
        assert!(
            rpc::ENTRY_BYTES_MAX as u64 * rpc::ENTRIES_PER_APPEND_MAX < rpc::BODY_BYTES_MAX as u64
        );
    }
}
