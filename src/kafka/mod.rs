//! The Kafka wire-protocol front end.
//!
//! Every shard accepts connections on the shared Kafka address (SO_REUSEPORT
//! sockets bound by [`listener`]) and serves them ([`connection`],
//! [`dispatch`], one module per API in [`api`]), or hands them to the shard
//! serving the fewest ([`balance`]). Work on a partition runs on
//! the partition's owner shard (`ShardContext::run_on`), reached through the
//! shard mailboxes; responses are assembled on the connection's shard.
//! Record batches are never re-encoded: produce stores them as sent, and
//! fetch sends them from the segment files ([`fetch_response`], [`response`]).

pub mod api;
pub mod authorize;
pub mod balance;
pub mod body_pool;
pub mod cold_read;
pub mod connection;
pub mod dispatch;
pub mod error_code;
pub mod fetch_response;
pub mod frame;
pub mod hangup;
pub mod listener;
pub mod request_budget;
pub mod request_error;
pub mod response;
pub mod response_errors;
pub mod response_throttle;
pub mod sasl_log;
pub mod session;
pub mod transport;
pub mod turn;
pub mod versions;

use std::rc::Rc;
use std::sync::{Arc, Mutex};

use crate::broker::group::coordinator::Coordinator;
use crate::broker::group::coordinator_error::CoordinatorStartError;
use crate::broker::producer_ids::{ProducerIdAllocator, ProducerIdsStartError};
use crate::broker::txn::coordinator::{TxnCoordinator, TxnStartError};
use crate::broker::{Broker, TopicError, reconcile_shard};
use crate::ids::ShardId;
use crate::io::IoBackend;
use crate::kafka::balance::{ConnectionBalance, Handoff, ServingSlot};
use crate::kafka::request_budget::RequestBudget;
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::shard::{ServiceError, ShardContext, ShardService};
use crate::telemetry;

/// Why the Kafka front end did not start on a shard (the shard, and so the
/// broker, does not start either).
#[derive(Debug, thiserror::Error)]
pub enum KafkaStartError {
    #[error("cannot reconcile partitions with the metadata: {source}")]
    Reconcile {
        #[source]
        source: TopicError,
    },
    #[error("cannot start the group coordinator: {source}")]
    Coordinator {
        #[source]
        source: CoordinatorStartError,
    },
    #[error("cannot start the transaction coordinator: {source}")]
    Transactions {
        #[source]
        source: TxnStartError,
    },
    #[error("cannot start the producer-id allocator: {source}")]
    ProducerIds {
        #[source]
        source: ProducerIdsStartError,
    },
    #[error("cannot open a follower copy of a shard group's log: {source}")]
    Followers {
        #[source]
        source: crate::storage::OpenError,
    },
    /// Each shard takes its own socket once; a second start is a bug.
    #[error("no listening socket for {shard}")]
    NoSocket { shard: ShardId },
    #[error("cannot watch the Kafka socket: {source}")]
    WatchSocket {
        #[source]
        source: std::io::Error,
    },
}

/// Starts the Kafka front end on each shard.
pub struct KafkaService {
    broker: Arc<Broker>,
    backend: IoBackend,
    /// Bytes of requests being read or served, across all shards
    /// (`kafka.queued_requests_max_bytes`).
    budget: Arc<RequestBudget>,
    /// Per listener (the main one first, `Broker::listener`), one bound
    /// socket per shard, taken by that shard at start.
    listeners: Mutex<Vec<Vec<Option<std::net::TcpListener>>>>,
    /// Which shard serves each new connection (`balance.rs`).
    balance: Arc<ConnectionBalance>,
}

impl KafkaService {
    pub fn new(
        broker: Arc<Broker>,
        backend: IoBackend,
        listeners: Vec<Vec<std::net::TcpListener>>,
    ) -> KafkaService {
        let budget = Arc::new(RequestBudget::new(
            broker.config.kafka.queued_requests_max_bytes,
        ));
        let shards = listeners.first().map_or(1, Vec::len).max(1);
        KafkaService {
            broker,
            backend,
            budget,
            balance: ConnectionBalance::new(shards),
            listeners: Mutex::new(
                listeners
                    .into_iter()
                    .map(|sockets| sockets.into_iter().map(Some).collect())
                    .collect(),
            ),
        }
    }
}

impl ShardService for KafkaService {
    fn start(
        &self,
        context: &Rc<ShardContext>,
    ) -> Result<Vec<compio::runtime::JoinHandle<()>>, ServiceError> {
        if self.broker.metadata.is_replicated() {
            crate::broker::replication::open_groups(context, &self.broker)
                .map_err(|source| KafkaStartError::Followers { source })?;
        }
        reconcile_shard(context, &self.broker)
            .map_err(|source| KafkaStartError::Reconcile { source })?;
        let group_timers = Coordinator::start(context, &self.broker)
            .map_err(|source| KafkaStartError::Coordinator { source })?;
        let producer_ids = ProducerIdAllocator::start(context, &self.broker)
            .map_err(|source| KafkaStartError::ProducerIds { source })?;
        let txn_timers = TxnCoordinator::start(context, &self.broker)
            .map_err(|source| KafkaStartError::Transactions { source })?;
        let mut accepts = Vec::new();
        let connections = Rc::new(ShardConnections::new(
            Rc::clone(context),
            Arc::clone(&self.broker),
            Arc::clone(&self.budget),
            self.backend,
        ));
        let listener_count = self.broker.extra_listeners.len() + 1;
        for index in 0..listener_count {
            let socket = self
                .listeners
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_mut(index)
                .and_then(|sockets| sockets.get_mut(usize::from(context.id.0)))
                .and_then(Option::take)
                .ok_or(KafkaStartError::NoSocket { shard: context.id })?;
            let listener = compio::net::TcpListener::from_std(socket)
                .map_err(|source| KafkaStartError::WatchSocket { source })?;
            accepts.push(compio::runtime::spawn(accept_loop(
                Rc::clone(&connections),
                (listener, index),
                Arc::clone(&self.balance),
            )));
        }
        if let Some(handed) = self.balance.take_receiver(usize::from(context.id.0)) {
            accepts.push(compio::runtime::spawn(adopt_loop(connections, handed)));
        }
        let refresh = telemetry::refresh::run(
            Rc::clone(context),
            (Arc::clone(&self.budget), Arc::clone(&self.balance)),
            std::time::Duration::from_millis(self.broker.config.metrics.refresh_interval_ms),
        );
        let mut tasks = accepts;
        tasks.extend([group_timers, compio::runtime::spawn(refresh)]);
        tasks.extend(producer_ids);
        tasks.push(txn_timers);
        if self.broker.metadata.is_replicated() {
            tasks.push(compio::runtime::spawn(crate::broker::reconcile_on_change(
                Rc::clone(context),
                Arc::clone(&self.broker),
            )));
            tasks.extend(crate::broker::replication::run_groups(
                context,
                &self.broker,
            ));
            tasks.push(compio::runtime::spawn(
                crate::broker::replication::maintain_in_sync(
                    Rc::clone(context),
                    Arc::clone(&self.broker),
                ),
            ));
        }
        if context.id.0 == 0 {
            let limit = self.broker.config.kafka.connections_max;
            tasks.push(compio::runtime::spawn(report_refusals(limit)));
        }
        Ok(tasks)
    }
}

/// How often refused connections and failed accepts may log a line.
const REFUSAL_LOG_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// How often shard 0 looks for a burst to close with its count.
const REFUSAL_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Connections closed at once for being over `kafka.connections_max`, by
/// every shard.
static REFUSALS: LogThrottle = LogThrottle::new(REFUSAL_LOG_WINDOW);
/// Failed accepts (EMFILE when the open-files limit is reached), by every shard.
static ACCEPT_FAILURES: LogThrottle = LogThrottle::new(REFUSAL_LOG_WINDOW);

fn log_refused(limit: u32, refused: u64) {
    tracing::warn!(
        limit,
        refused,
        "refusing Kafka connections: kafka.connections_max reached (`refused` counts since the \
         last such line; one line per 10 s at most)"
    );
}

fn log_accept_failed(error: &std::io::Error, failed: u64) {
    tracing::warn!(
        %error,
        failed,
        "Kafka accept failed (`failed` counts since the last such line; one line per 10 s at \
         most); EMFILE means the open-files limit is too low: raise it (ulimit -n, LimitNOFILE=)"
    );
}

/// Closes each burst of refusals with a line carrying its count, once the
/// window after the previous line has passed. Runs on shard 0.
async fn report_refusals(limit: u32) {
    loop {
        compio::time::sleep(REFUSAL_FLUSH_INTERVAL).await;
        let now_ms = monotonic_ms();
        if let Some(refused) = REFUSALS.flush(now_ms) {
            log_refused(limit, refused);
        }
        if let Some(failed) = ACCEPT_FAILURES.flush(now_ms) {
            tracing::warn!(
                failed,
                "Kafka accepts failed since the last such line; if they were EMFILE, raise the \
                 open-files limit (ulimit -n, LimitNOFILE=)"
            );
        }
    }
}

/// Open connections across all shards, against `kafka.connections_max`.
pub fn open_connections() -> u32 {
    OPEN_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed)
}

static OPEN_CONNECTIONS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// One connection under `kafka.connections_max`, for as long as it is held.
pub struct ConnectionSlot(());

impl ConnectionSlot {
    /// A slot, if fewer than `limit` connections are open.
    fn admit(limit: u32) -> Option<ConnectionSlot> {
        if OPEN_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= limit {
            OPEN_CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        Some(ConnectionSlot(()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn accept_loop(
    connections: Rc<ShardConnections>,
    (listener, listener_index): (compio::net::TcpListener, usize),
    balance: Arc<ConnectionBalance>,
) {
    let (context, broker) = (&connections.context, &connections.broker);
    let here = usize::from(context.id.0);
    let shard = telemetry::storage::shard_label(context.id);
    let accepted =
        metrics::counter!(telemetry::names::KAFKA_CONNECTIONS_ACCEPTED, "shard" => shard.clone());
    let refused = metrics::counter!(telemetry::names::KAFKA_CONNECTIONS_REFUSED, "shard" => shard);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(failed) = ACCEPT_FAILURES.record(monotonic_ms()) {
                    log_accept_failed(&error, failed);
                }
                compio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let limit = broker.config.kafka.connections_max;
        let Some(open) = ConnectionSlot::admit(limit) else {
            refused.increment(1);
            if let Some(count) = REFUSALS.record(monotonic_ms()) {
                log_refused(limit, count);
            }
            drop(stream);
            continue;
        };
        accepted.increment(1);
        let serving = balance.place(here);
        let (stream, serving, open) = if serving.shard() == here {
            (stream, serving, open)
        } else {
            match hand_off(&balance, stream, peer, listener_index, serving, open) {
                Ok(()) => continue,
                Err((stream, open)) => (stream, balance.serve_here(here), open),
            }
        };
        connections.serve(stream, peer, listener_index, (serving, open));
    }
}

/// Hand a connection just accepted to the shard its `serving` slot names;
/// gives it back (to be served here) when that cannot be done: no
/// descriptor left to duplicate, or that shard is stopping.
fn hand_off(
    balance: &ConnectionBalance,
    stream: compio::net::TcpStream,
    peer: std::net::SocketAddr,
    listener_index: usize,
    serving: ServingSlot,
    open: ConnectionSlot,
) -> Result<(), (compio::net::TcpStream, ConnectionSlot)> {
    let plain = match balance::detach(&stream) {
        Ok(plain) => plain,
        Err(error) => {
            tracing::debug!(%peer, %error, "cannot hand a connection to another shard; serving it here");
            return Err((stream, open));
        }
    };
    let handoff = Handoff {
        stream: plain,
        peer,
        listener_index,
        serving,
        open,
    };
    match balance.hand_off(handoff) {
        Ok(()) => Ok(()),
        // The duplicate is dropped with the returned handoff; `stream`
        // still holds the connection.
        Err(returned) => Err((stream, returned.open)),
    }
}

/// Serve the connections other shards hand to this one (`balance.rs`), as
/// the accept loop serves its own.
async fn adopt_loop(connections: Rc<ShardConnections>, handed: flume::Receiver<Handoff>) {
    while let Ok(handoff) = handed.recv_async().await {
        let Handoff {
            stream,
            peer,
            listener_index,
            serving,
            open,
        } = handoff;
        let stream = match compio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%peer, %error, "cannot serve a connection handed from another shard; closing it");
                continue;
            }
        };
        connections.serve(stream, peer, listener_index, (serving, open));
    }
}

/// The connections a shard serves, and what serving one takes: the tasks
/// are dropped (so cancelled, with their requests) with the shard's accept
/// and adoption loops, at shutdown.
struct ShardConnections {
    context: Rc<ShardContext>,
    broker: Arc<Broker>,
    budget: Arc<RequestBudget>,
    backend: IoBackend,
    tasks: std::cell::RefCell<Vec<compio::runtime::JoinHandle<()>>>,
    prune_at: std::cell::Cell<usize>,
}

impl ShardConnections {
    fn new(
        context: Rc<ShardContext>,
        broker: Arc<Broker>,
        budget: Arc<RequestBudget>,
        backend: IoBackend,
    ) -> ShardConnections {
        ShardConnections {
            context,
            broker,
            budget,
            backend,
            tasks: std::cell::RefCell::new(Vec::new()),
            prune_at: std::cell::Cell::new(64),
        }
    }

    /// Serve `stream` on this shard, holding its slots until it closes.
    fn serve(
        &self,
        stream: compio::net::TcpStream,
        peer: std::net::SocketAddr,
        listener_index: usize,
        slots: (ServingSlot, ConnectionSlot),
    ) {
        let (context, broker, budget, backend) = (
            Rc::clone(&self.context),
            Arc::clone(&self.broker),
            Arc::clone(&self.budget),
            self.backend,
        );
        let mut tasks = self.tasks.borrow_mut();
        if tasks.len() >= self.prune_at.get() {
            tasks.retain(|task| !task.is_finished());
            self.prune_at.set((tasks.len() * 2).max(64));
        }
        tasks.push(compio::runtime::spawn(async move {
            let (serving, open) = slots;
            let accepted = connection::Accepted {
                stream,
                peer,
                listener: listener_index,
                serving: &serving,
            };
            connection::serve(context, broker, budget, backend, accepted).await;
            drop((serving, open));
        }));
    }
}
