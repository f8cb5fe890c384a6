//! The cluster's internal RPC: HTTP/1.1 (hyper) with JSON bodies on
//! `cluster.listen`, served and called on the cluster thread's tokio
//! runtime.
//!
//! Every request carries the sender's cluster id and node id in headers
//! ([`CLUSTER_ID_HEADER`], [`NODE_ID_HEADER`]); a node whose cluster id
//! differs from this node's is refused with 409 and the reason, so a node
//! started on another cluster's data never takes part in an election here.
//! Bodies are bounded ([`BODY_BYTES_MAX`]) in both directions: a body is
//! read as it arrives and refused past the bound, never allocated from a
//! declared length.
//!
//! Paths: `/raft/append`, `/raft/vote`, `/raft/snapshot` (openraft's three
//! RPCs), `/controller/propose` (a command for the leader), `/cluster/*`
//! (hello, heartbeat) and `/broker/*` (one node's broker asking another's,
//! [`crate::broker::peer`]).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

pub const CLUSTER_ID_HEADER: &str = "sluice-cluster-id";
pub const NODE_ID_HEADER: &str = "sluice-node-id";

/// Largest request or response body: a batch of at most
/// [`ENTRIES_PER_APPEND_MAX`] log entries of at most [`ENTRY_BYTES_MAX`]
/// each, or a snapshot chunk (openraft sends snapshots in 3 MiB chunks).
/// With the connection limit ([`connections_max`]) it bounds what the
/// listener buffers (1 GiB with two shards).
pub const BODY_BYTES_MAX: usize = 16 << 20;

/// Largest snapshot a node accepts from a leader (the metadata of many
/// thousands of topics fits in a few MiB).
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 30;

/// Largest controller command, as JSON: a bigger one is refused when
/// proposed (INVALID_REQUEST), so every entry fits an append.
pub const ENTRY_BYTES_MAX: usize = 1 << 20;

/// Entries per AppendEntries (openraft's `max_payload_entries`).
pub const ENTRIES_PER_APPEND_MAX: u64 = 8;

/// Connections the cluster listener keeps open at once; more are closed as
/// they arrive (peers open one per call and close it after).
pub const CONNECTIONS_MAX: usize = 64;

/// Connections a node's cluster listener keeps open at once:
/// [`CONNECTIONS_MAX`] for the controller and broker calls, plus the
/// replica fetches its followers hold open (one per follower copy: up to
/// `shards` per other node).
pub fn connections_max(shards: u32, peers: usize) -> usize {
    CONNECTIONS_MAX + shards as usize * peers.saturating_sub(1)
}

pub const PATH_APPEND: &str = "/raft/append";
pub const PATH_VOTE: &str = "/raft/vote";
pub const PATH_SNAPSHOT: &str = "/raft/snapshot";
pub const PATH_PROPOSE: &str = "/controller/propose";

/// Who this node is on the wire: its id and, once known, its cluster's.
#[derive(Clone)]
pub struct Identity {
    pub node_id: u64,
    pub cluster_id: Arc<RwLock<String>>,
    /// The configured peers' ids: requests from anyone else are refused.
    pub peers: Arc<Vec<u64>>,
}

/// How long a request body may take to arrive.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Refused cluster requests, logged at most once per 10 s.
static REFUSED_REQUESTS: crate::log_throttle::LogThrottle =
    crate::log_throttle::LogThrottle::new(std::time::Duration::from_secs(10));

fn log_refused(status: StatusCode, reason: &str) {
    // A peer at another leader epoch (409) or not ready (503) is part of
    // every leader change and restart, not a bad request.
    if matches!(
        status,
        StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE
    ) {
        tracing::debug!(%status, reason, "refused a cluster RPC request");
        return;
    }
    if let Some(refused) = REFUSED_REQUESTS.record(crate::log_throttle::monotonic_ms()) {
        tracing::warn!(%status, reason, refused, "refused a cluster RPC request (`refused` counts those since the last such line)");
    }
}

impl Identity {
    pub fn cluster_id(&self) -> String {
        self.cluster_id
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Why a call to another node failed.
#[derive(Debug, Error)]
pub enum RpcError {
    #[error("cannot reach node at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {address} failed: {source}")]
    Http {
        address: String,
        #[source]
        source: hyper::Error,
    },
    #[error("no answer from {address} within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("{address} answered {status}: {reason}")]
    Refused {
        address: String,
        status: StatusCode,
        reason: String,
    },
    #[error("bad body from {address}: {reason}")]
    Body { address: String, reason: String },
}

/// POST `body` as JSON to `path` on `address` and decode the JSON answer.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    identity: &Identity,
    address: &str,
    path: &str,
    body: &Req,
    timeout: Duration,
) -> Result<Resp, RpcError> {
    let body_error = |reason: String| RpcError::Body {
        address: address.to_owned(),
        reason,
    };
    let encoded = serde_json::to_vec(body).map_err(|error| body_error(error.to_string()))?;
    let answer = call_raw(identity, address, path, encoded, timeout).await?;
    serde_json::from_slice(&answer).map_err(|error| body_error(error.to_string()))
}

/// POST the JSON `body` to `path` on `address`; the answer's body, which
/// a success status says is JSON.
pub async fn call_raw(
    identity: &Identity,
    address: &str,
    path: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Bytes, RpcError> {
    match tokio::time::timeout(timeout, exchange(identity, address, path, body)).await {
        Ok(answer) => answer,
        Err(_) => Err(RpcError::Timeout {
            address: address.to_owned(),
            timeout,
        }),
    }
}

async fn exchange(
    identity: &Identity,
    address: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Bytes, RpcError> {
    let body_error = |reason: String| RpcError::Body {
        address: address.to_owned(),
        reason,
    };
    let http_error = |source| RpcError::Http {
        address: address.to_owned(),
        source,
    };
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|source| RpcError::Connect {
            address: address.to_owned(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    tokio::spawn(async move {
        // Ends with the exchange; its error, if any, is the request's.
        let _ = connection.await;
    });
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(hyper::header::HOST, address)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(CLUSTER_ID_HEADER, identity.cluster_id())
        .header(NODE_ID_HEADER, identity.node_id.to_string())
        .body(Full::new(Bytes::from(body)))
        .map_err(|error| body_error(error.to_string()))?;
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status();
    let bytes = Limited::new(response.into_body(), BODY_BYTES_MAX)
        .collect()
        .await
        .map_err(|error| body_error(error.to_string()))?
        .to_bytes();
    if !status.is_success() {
        return Err(RpcError::Refused {
            address: address.to_owned(),
            status,
            reason: String::from_utf8_lossy(&bytes).into_owned(),
        });
    }
    Ok(bytes)
}

/// A request as the server hands it to its handler: the path and the body.
pub struct Call {
    pub path: String,
    pub body: Bytes,
    /// The configured peer the request names as its sender.
    pub sender: u64,
}

/// Read, check and route one request: the cluster id must match (or one
/// side must not know it yet), the body must fit [`BODY_BYTES_MAX`].
pub async fn accept<H, Fut>(
    identity: &Identity,
    request: Request<Incoming>,
    handle: H,
) -> Response<Full<Bytes>>
where
    H: FnOnce(Call) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<u8>, (StatusCode, String)>>,
{
    let sender_cluster = request
        .headers()
        .get(CLUSTER_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let ours = identity.cluster_id();
    if !sender_cluster.is_empty() && !ours.is_empty() && sender_cluster != ours {
        let sender = request
            .headers()
            .get(NODE_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("?")
            .to_owned();
        tracing::warn!(sender, their_cluster = %sender_cluster, our_cluster = %ours, "refused a node of another cluster");
        return plain(
            StatusCode::CONFLICT,
            format!(
                "this node belongs to cluster {ours}, the sender to cluster {sender_cluster}: a node \
                 joins only the cluster its data dir belongs to"
            ),
        );
    }
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST only".to_owned());
    }
    let sender = request
        .headers()
        .get(NODE_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let Some(sender) = sender.filter(|id| identity.peers.contains(id)) else {
        return plain(
            StatusCode::FORBIDDEN,
            format!("{NODE_ID_HEADER} must name one of this cluster's configured peers"),
        );
    };
    let path = request.uri().path().to_owned();
    let collect = Limited::new(request.into_body(), BODY_BYTES_MAX).collect();
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) => {
            return plain(StatusCode::PAYLOAD_TOO_LARGE, error.to_string());
        }
        Err(_) => {
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {BODY_READ_TIMEOUT:?}"),
            );
        }
    };
    match handle(Call { path, body, sender }).await {
        Ok(answer) => Response::builder()
            .status(StatusCode::OK)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(answer)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
        Err((status, reason)) => plain(status, reason),
    }
}

fn plain(status: StatusCode, reason: String) -> Response<Full<Bytes>> {
    log_refused(status, &reason);
    let mut response = Response::new(Full::new(Bytes::from(reason)));
    *response.status_mut() = status;
    response
}

/// Decode a JSON request body (400 with the reason otherwise).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, (StatusCode, String)> {
    serde_json::from_slice(body).map_err(|error| (StatusCode::BAD_REQUEST, error.to_string()))
}

/// Encode a JSON answer.
pub fn encode<T: Serialize>(answer: &T) -> Result<Vec<u8>, (StatusCode, String)> {
    serde_json::to_vec(answer)
        .map_err(|error| (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))
}
