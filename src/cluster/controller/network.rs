//! openraft's network for the controller: its three RPCs as calls of the
//! cluster RPC (`rpc.rs`) to the target's cluster address. A call that
//! cannot connect is `Unreachable` (openraft backs off), one that times out
//! or breaks is a `Network` error (retried), and an error the target's
//! Raft returned comes back as a `RemoteError`.

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::ControllerTypes;
use super::rpc::{self, Identity, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE, RpcError};

type NodeId = u64;

/// Failed calls to peers, logged at most once per 10 s (openraft's own
/// lines about them are off unless `RUST_LOG` names openraft).
static FAILED_CALLS: crate::log_throttle::LogThrottle =
    crate::log_throttle::LogThrottle::new(std::time::Duration::from_secs(10));

/// Makes a client per peer.
pub struct Network {
    pub identity: Identity,
}

/// A client of one peer.
pub struct PeerClient {
    identity: Identity,
    target: NodeId,
    node: BasicNode,
}

impl RaftNetworkFactory<ControllerTypes> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            identity: self.identity.clone(),
            target,
            node: node.clone(),
        }
    }
}

impl PeerClient {
    async fn send<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = rpc::call(
            &self.identity,
            &self.node.addr,
            path,
            request,
            option.hard_ttl(),
        )
        .await
        .map_err(|error| {
            if let Some(failed) = FAILED_CALLS.record(crate::log_throttle::monotonic_ms()) {
                tracing::warn!(peer = self.target, %error, failed, "a controller call to a peer failed (`failed` counts those since the last such line)");
            }
            match error {
                RpcError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&error)),
                other => RPCError::Network(NetworkError::new(&other)),
            }
        })?;
        answer.map_err(|error| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                error,
            ))
        })
    }
}

impl RaftNetwork<ControllerTypes> for PeerClient {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<ControllerTypes>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(PATH_APPEND, &request, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<ControllerTypes>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(PATH_SNAPSHOT, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(PATH_VOTE, &request, &option).await
    }
}
