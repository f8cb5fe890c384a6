//! Requests one cluster node's broker makes of another's (issue 15).
//!
//! A transaction's coordinator and its partitions' leaders may be different
//! nodes: a partition's leader asks the coordinator node whether a
//! producer's first transactional batch belongs to its open transaction
//! (Kafka's verify-only AddPartitionsToTxn between brokers, KIP-890), and
//! the coordinator writes the markers that end a transaction on the nodes
//! leading its partitions (Kafka's WriteTxnMarkers). These requests travel
//! over the cluster RPC (`cluster.listen`: HTTP with JSON bodies, paths
//! under [`PATH_PREFIX`]), which accepts only the configured peers of the
//! same cluster. The broker names what it needs of that transport
//! ([`PeerCaller`]) and what it serves on it ([`PeerService`]), so it does
//! not depend on the cluster layer; a single node has neither.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::txn::{markers, verify};
use super::{Broker, replication};
use crate::shard::Shards;

/// Paths under this prefix on `cluster.listen` go to the broker.
pub const PATH_PREFIX: &str = "/broker/";

/// How long a call to another node's broker may take before the caller
/// treats the node as unreachable (and retries, or answers a retriable
/// error).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a request to another node's broker (the cluster layer implements
/// it over its RPC).
pub trait PeerCaller: Send + Sync {
    /// POST the JSON `body` to `path` on node `node`; the answer's body, or
    /// why there is none (unreachable, timed out, refused: the reason).
    /// A `queued` call waits its turn among a bounded number in flight to
    /// the node; a replica fetch (one per follower copy, held open by the
    /// leader while it has nothing new) does not, or copies would starve
    /// each other and every other call.
    fn call(
        &self,
        node: u64,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
        queued: bool,
    ) -> BoxFuture<'static, Result<Bytes, String>>;
}

/// Answers the requests other nodes' brokers send this one.
pub trait PeerService: Send + Sync {
    /// The JSON answer to `body` sent to `path`, or an HTTP status code and
    /// the reason it is refused.
    fn handle(&self, path: &str, body: Bytes)
    -> BoxFuture<'static, Result<Vec<u8>, (u16, String)>>;
}

/// Send `request` to `path` on node `node` and decode its answer. Errors
/// name the node and the cause; a single node (no caller) errors too.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    broker: &Broker,
    node: i32,
    path: &'static str,
    request: &Req,
) -> Result<Resp, String> {
    let answer = call_raw(broker, node, path, request, true).await?;
    serde_json::from_slice(&answer)
        .map_err(|error| format!("node {node} answered {path} with a bad body: {error}"))
}

/// [`call`] for an answer that is not JSON: its bytes (`queued`: see
/// [`PeerCaller::call`]).
pub async fn call_raw<Req: Serialize>(
    broker: &Broker,
    node: i32,
    path: &'static str,
    request: &Req,
    queued: bool,
) -> Result<Bytes, String> {
    let caller = broker
        .peers
        .get()
        .ok_or_else(|| "this node is not part of a cluster".to_owned())?;
    let id = u64::try_from(node).map_err(|_| format!("there is no node {node}"))?;
    let body = serde_json::to_vec(request).map_err(|error| error.to_string())?;
    caller.call(id, path, body, CALL_TIMEOUT, queued).await
}

/// What this node's broker serves other nodes: each request runs on the
/// shard that owns what it is about.
pub struct BrokerPeers {
    shards: Shards,
    broker: Arc<Broker>,
}

impl BrokerPeers {
    pub fn new(shards: Shards, broker: Arc<Broker>) -> BrokerPeers {
        BrokerPeers { shards, broker }
    }
}

impl PeerService for BrokerPeers {
    fn handle(
        &self,
        path: &str,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Vec<u8>, (u16, String)>> {
        let (shards, broker) = (self.shards.clone(), Arc::clone(&self.broker));
        let path = path.to_owned();
        Box::pin(async move {
            let bad_body = |error: serde_json::Error| (400, error.to_string());
            let answer = match path.as_str() {
                replication::PATH_FETCH => {
                    let request = serde_json::from_slice(&body).map_err(bad_body)?;
                    return replication::serve(shards, broker, request).await;
                }
                replication::PATH_EPOCHS => {
                    let request = serde_json::from_slice(&body).map_err(bad_body)?;
                    let answer = replication::serve_epochs(shards, broker, request).await?;
                    serde_json::to_vec(&answer)
                }
                verify::PATH_VERIFY => {
                    let request = serde_json::from_slice(&body).map_err(bad_body)?;
                    serde_json::to_vec(&verify::serve(shards, broker, request).await)
                }
                markers::PATH_MARKER => {
                    let request = serde_json::from_slice(&body).map_err(bad_body)?;
                    serde_json::to_vec(&markers::serve(shards, broker, request).await)
                }
                _ => return Err((404, format!("no broker request at {path}"))),
            };
            answer.map_err(|error| (500, error.to_string()))
        })
    }
}
