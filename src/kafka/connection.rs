//! One client connection: requests are read and served concurrently
//! (pipelining), responses go out in request order.
//!
//! Three parts run together on the connection's shard:
//! * the reader takes frames off the socket ([`super::frame`]: each takes
//!   its size from the broker-wide request budget, and must arrive within
//!   `kafka.request_read_timeout_ms` of its first byte) and starts a task
//!   per request, as long as the connection has fewer than
//!   `kafka.requests_in_flight_max` requests unanswered and their frames
//!   total under `kafka.request_max_bytes`; beyond that it stops reading and
//!   TCP flow control pushes back on the client;
//! * the writer awaits those tasks in arrival order and writes each response;
//! * the idle watch closes a connection with nothing in progress and no
//!   complete request or response for `kafka.idle_timeout_ms` (bytes of a
//!   request still arriving are not activity: a client trickling a frame is
//!   the read timeout's to close).
//!
//! Requests start in arrival order ([`super::turn`]), so what they change
//! happens in the order the client sent them. When the client closes its
//! side (seen by a read, or by polling while the reader waits), or sends a
//! frame that cannot be read, the connection hangs up ([`Hangup`]):
//! requests that only wait (a long-poll Fetch) answer at once, the
//! responses already due are written and then the connection closes. A
//! request that must close the connection (see [`dispatch`]) is answered by
//! closing it after the responses before it; nothing behind it runs. Ending
//! the connection drops its request tasks.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::net::TcpStream;
use compio::runtime::JoinHandle;
use futures_util::future::select;

use super::balance::ServingSlot;
use super::dispatch::{self, Outcome};
use super::frame::{Frame, FrameError, FrameLimits, FrameReader};
use super::hangup::Hangup;
use super::request_budget::RequestBudget;
use super::response::ResponseWriter;
use super::session::{AuthState, Session};
use super::transport::{HandshakeError, TlsStream, Transport};
use super::turn::Turns;
use crate::broker::Broker;
use crate::error_chain::error_chain;
use crate::io::IoBackend;
use crate::log_throttle::{LogThrottle, monotonic_ms};
use crate::shard::ShardContext;
use crate::shard::local_sync::Event;
use crate::telemetry;

/// A connection a shard serves: its socket, who is on the other end, which
/// listener accepted it, and its place in the shards' counts (told of each
/// request's API key, `balance.rs`).
pub struct Accepted<'a> {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// `Broker::listener`'s index.
    pub listener: usize,
    pub serving: &'a ServingSlot,
}

pub async fn serve(
    shard: Rc<ShardContext>,
    broker: Arc<Broker>,
    budget: Arc<RequestBudget>,
    backend: IoBackend,
    accepted: Accepted<'_>,
) {
    let Accepted {
        stream,
        peer,
        listener,
        serving,
    } = accepted;
    let _ = stream.set_nodelay(true);
    let endpoint = broker.listener(listener);
    let protocol = endpoint.protocol;
    let session = Rc::new(Session::new(protocol, listener));
    let kafka = &broker.config.kafka;
    let stream = if protocol.uses_tls() {
        match tls_handshake(&broker, stream, peer, &endpoint.name, &session).await {
            Some(stream) => stream,
            None => return,
        }
    } else {
        Transport::Plain(stream)
    };
    let stream = &stream;
    let pipeline = Pipeline {
        serving,
        requests_max: kafka.requests_in_flight_max as usize,
        bytes_max: kafka.request_max_bytes as usize,
        idle: Duration::from_millis(kafka.idle_timeout_ms),
        queue: RefCell::default(),
        requests: Cell::new(0),
        bytes: Cell::new(0),
        reading: Cell::new(true),
        changed: Event::default(),
        last_activity: Cell::new(Instant::now()),
        hangup: Rc::default(),
    };
    let read = pin!(read_requests(
        &shard, &broker, &budget, stream, peer, &pipeline, &session
    ));
    let writer = ResponseWriter::new(
        backend,
        broker.config.storage.direct_cold_reads(),
        crate::kafka::cold_read::FileReadMetrics::for_shard(shard.id),
    );
    let write = pin!(write_responses(stream, writer, peer, &pipeline));
    let idle = pin!(close_when_idle(&pipeline, peer));
    // The reader never finishes on its own; either of the others ends the
    // connection.
    let _ = select(read, select(write, idle)).await;
}

/// The largest request a connection may send before it has logged in
/// (Kafka's `sasl.server.max.receive.size` default).
const UNAUTHENTICATED_REQUEST_MAX_BYTES: u32 = 512 * 1024;

/// TLS handshakes that failed, logged at most 20 times per 10 s: anyone who
/// reaches a TLS listener can fail one per connection.
static FAILED_HANDSHAKES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);

/// The TLS side of a new connection on a TLS listener: the handshake, and
/// on an SSL listener the principal of a client certificate. `None` when
/// the connection is to close (logged, throttled, and counted).
async fn tls_handshake(
    broker: &Broker,
    stream: TcpStream,
    peer: SocketAddr,
    listener: &str,
    session: &Session,
) -> Option<Transport> {
    let tls = broker.tls.as_ref()?;
    let timeout = Duration::from_millis(broker.config.kafka.request_read_timeout_ms);
    let failed = |outcome: &'static str, error: &dyn std::fmt::Display| {
        telemetry::kafka::tls_handshake(listener.to_owned(), outcome);
        if let Some(failed) = FAILED_HANDSHAKES.record(monotonic_ms()) {
            tracing::info!(%peer, listener, %error, failed, "TLS handshake failed; closing the connection (`failed` counts since the last such line)");
        }
    };
    let stream = match TlsStream::accept(stream, tls.config(), timeout).await {
        Ok(stream) => stream,
        Err(error @ HandshakeError::Timeout(_)) => {
            failed("timeout", &error);
            return None;
        }
        Err(error) => {
            // A Kafka request where a ClientHello should be.
            let hint = if error.to_string().contains("InvalidContentType") {
                " (the client does not speak TLS: set its security.protocol to SSL or SASL_SSL)"
            } else {
                ""
            };
            failed("failed", &format!("{error}{hint}"));
            return None;
        }
    };
    if !session.protocol().uses_sasl()
        && let Some(certificate) = stream.peer_certificate()
    {
        match tls.principal(&certificate) {
            Ok(user) => session.set_state(AuthState::Authenticated(user)),
            Err(reason) => {
                failed("failed", &reason);
                return None;
            }
        }
    }
    telemetry::kafka::tls_handshake(listener.to_owned(), "succeeded");
    Some(Transport::Tls(Box::new(stream)))
}

/// Requests read but not yet answered.
struct Pipeline<'a> {
    /// The connection's place in the shards' counts, told each request's
    /// API key as it is read (`balance.rs`).
    serving: &'a ServingSlot,
    requests_max: usize,
    bytes_max: usize,
    idle: Duration,
    queue: RefCell<VecDeque<InFlight>>,
    /// Requests and frame bytes from reading until their response is written.
    requests: Cell<usize>,
    bytes: Cell<usize>,
    reading: Cell<bool>,
    /// Fires on every change to the above.
    changed: Event,
    /// When the last request was read whole or answered.
    last_activity: Cell<Instant>,
    /// Set once the client will send nothing more; shared with the request
    /// tasks.
    hangup: Rc<Hangup>,
}

struct InFlight {
    task: JoinHandle<Outcome>,
    bytes: usize,
    /// The request's API key (from the frame, before decoding) and when it
    /// was read: its metrics once answered.
    api_key: i16,
    read_at: Instant,
}

impl Pipeline<'_> {
    /// A request of unknown size may be read: under both limits, and always
    /// when nothing is in progress (a request up to `request_max_bytes`
    /// must get through).
    fn has_room(&self) -> bool {
        let requests = self.requests.get();
        requests == 0 || (requests < self.requests_max && self.bytes.get() < self.bytes_max)
    }

    async fn room(&self) {
        loop {
            let changed = self.changed.wait();
            if self.has_room() {
                return;
            }
            changed.await;
        }
    }

    async fn drained(&self) {
        loop {
            let changed = self.changed.wait();
            if self.requests.get() == 0 {
                return;
            }
            changed.await;
        }
    }

    fn push(&self, in_flight: InFlight) {
        self.serving.saw_request(in_flight.api_key);
        self.requests.set(self.requests.get() + 1);
        self.bytes.set(self.bytes.get() + in_flight.bytes);
        self.queue.borrow_mut().push_back(in_flight);
        self.last_activity.set(Instant::now());
        self.changed.notify_all();
    }

    /// The oldest request in progress; `None` once reading has ended and
    /// every request is answered.
    async fn next(&self) -> Option<InFlight> {
        loop {
            let changed = self.changed.wait();
            if let Some(in_flight) = self.queue.borrow_mut().pop_front() {
                return Some(in_flight);
            }
            if !self.reading.get() {
                return None;
            }
            changed.await;
        }
    }

    fn answered(&self, bytes: usize) {
        self.requests.set(self.requests.get() - 1);
        self.bytes.set(self.bytes.get() - bytes);
        self.last_activity.set(Instant::now());
        self.changed.notify_all();
    }

    fn stop_reading(&self) {
        self.reading.set(false);
        self.hangup.hang_up();
        self.changed.notify_all();
    }
}

async fn read_requests(
    shard: &Rc<ShardContext>,
    broker: &Arc<Broker>,
    budget: &Arc<RequestBudget>,
    stream: &Transport,
    peer: SocketAddr,
    pipeline: &Pipeline<'_>,
    session: &Rc<Session>,
) {
    let kafka = &broker.config.kafka;
    let mut reader = FrameReader::new(FrameLimits {
        request_max_bytes: kafka.request_max_bytes,
        read_timeout: Duration::from_millis(kafka.request_read_timeout_ms),
    });
    let mut turns = Turns::default();
    loop {
        if !session.is_authenticated() {
            // The SASL exchange goes one request at a time: the next one
            // is read once this one is answered and its state is set.
            hangup_watch_drained(stream, pipeline).await;
        }
        // Before login a frame may reserve at most a SASL exchange's worth
        // of the broker-wide request budget (Kafka's
        // sasl.server.max.receive.size), so unauthenticated connections
        // cannot hold it for everyone.
        reader.set_request_max_bytes(if session.is_authenticated() {
            kafka.request_max_bytes
        } else {
            kafka
                .request_max_bytes
                .min(UNAUTHENTICATED_REQUEST_MAX_BYTES)
        });
        // A quota's throttle (KIP-219): nothing is read until it passes.
        wait_out_mute(session, pipeline, stream).await;
        let frame = match read_frame(&mut reader, budget, stream, pipeline).await {
            Ok(frame) => frame,
            Err(error) => {
                if let Some(reason) = error.reason() {
                    closed_for_bad_input(peer, reason, &error);
                }
                break;
            }
        };
        // Muted while this request was arriving: it waits too.
        wait_out_mute(session, pipeline, stream).await;
        let bytes = frame.body.len();
        let api_key = frame
            .body
            .get(..2)
            .map_or(-1, |key| i16::from_be_bytes([key[0], key[1]]));
        let served = dispatch::handle(
            Rc::clone(shard),
            Arc::clone(broker),
            peer,
            frame.body,
            turns.take(),
            Rc::clone(&pipeline.hangup),
            Rc::clone(session),
        );
        let lease = frame.lease;
        // The frame's budget comes back when its task ends (or is dropped
        // with the connection): by then its bytes are no longer used.
        let task = compio::runtime::spawn(async move {
            let outcome = served.await;
            drop(lease);
            outcome
        });
        pipeline.push(InFlight {
            task,
            bytes,
            api_key,
            read_at: Instant::now(),
        });
    }
    pipeline.stop_reading();
    std::future::pending::<()>().await;
}

/// Wait until every request read is answered, watching for the client's FIN.
/// Wait until the connection's quota throttle, if any, has passed (or the
/// client hangs up).
async fn wait_out_mute(session: &Session, pipeline: &Pipeline<'_>, stream: &Transport) {
    if let Some(until) = session.muted_until() {
        let wait = until.saturating_duration_since(Instant::now());
        pipeline
            .hangup
            .watch_while(stream.as_fd(), compio::time::sleep(wait))
            .await;
    }
}

async fn hangup_watch_drained(stream: &Transport, pipeline: &Pipeline<'_>) {
    if pipeline.requests.get() > 0 {
        pipeline
            .hangup
            .watch_while(stream.as_fd(), pipeline.drained())
            .await;
    }
}

/// The next frame, once the pipeline has room and the budget covers it.
/// While the connection is not reading it watches for the client's FIN.
async fn read_frame(
    reader: &mut FrameReader,
    budget: &Arc<RequestBudget>,
    stream: &Transport,
    pipeline: &Pipeline<'_>,
) -> Result<Frame, FrameError> {
    let hangup = &pipeline.hangup;
    if !pipeline.has_room() {
        hangup.watch_while(stream.as_fd(), pipeline.room()).await;
    }
    let mut source = stream;
    let size = reader.read_size(&mut source).await?;
    let waiting_since = Instant::now();
    let lease = hangup
        .watch_while(stream.as_fd(), budget.acquire(size as u64))
        .await;
    let body = reader
        .read_body(&mut source, size, waiting_since.elapsed())
        .await?;
    Ok(Frame { body, lease })
}

async fn write_responses(
    stream: &Transport,
    mut writer: ResponseWriter,
    peer: SocketAddr,
    pipeline: &Pipeline<'_>,
) {
    while let Some(in_flight) = writer.while_quiet(pipeline.next()).await {
        let outcome = match writer.while_quiet(in_flight.task).await {
            Ok(outcome) => outcome,
            Err(error) => {
                tracing::error!(%peer, ?error, "a request task failed; closing connection");
                return;
            }
        };
        match outcome {
            Outcome::Respond(response) => {
                if let Err(error) = writer.send(stream, response).await {
                    tracing::debug!(%peer, %error, "could not send a response; closing");
                    return;
                }
            }
            Outcome::RespondAndClose(response) => {
                telemetry::kafka::request_done(in_flight.api_key, in_flight.read_at);
                if let Err(error) = writer.send(stream, response).await {
                    tracing::debug!(%peer, %error, "could not send a response; closing");
                }
                return;
            }
            Outcome::Silent => {}
            Outcome::Close(error) => {
                telemetry::kafka::request_done(in_flight.api_key, in_flight.read_at);
                telemetry::kafka::connection_closed_by(in_flight.api_key);
                if error.is_client_fault() {
                    closed_for_bad_input(peer, error.close_reason(), &error);
                } else {
                    let error = error_chain(&error);
                    tracing::error!(%peer, %error, "closing a connection: the broker failed to serve its request");
                }
                return;
            }
        }
        telemetry::kafka::request_done(in_flight.api_key, in_flight.read_at);
        pipeline.answered(in_flight.bytes);
    }
}

/// Connections closed for bad input, logged at most 20 times per 10 s:
/// any client that reaches the port can cause one per connection.
static BAD_INPUT_CLOSES: LogThrottle = LogThrottle::with_lines(Duration::from_secs(10), 20);

/// Count a connection closed for what its client sent (answers before the
/// bad request are still written) and log it, throttled: the line names
/// this connection's peer and error, and `closed` counts such connections
/// since the previous line.
fn closed_for_bad_input(peer: SocketAddr, reason: &'static str, error: &dyn std::error::Error) {
    telemetry::kafka::connection_closed_bad_input(reason);
    if let Some(closed) = BAD_INPUT_CLOSES.record(monotonic_ms()) {
        let error = error_chain(error);
        tracing::warn!(
            %peer,
            %error,
            closed,
            "closed a connection for bad input, after answering the requests before it (`closed` counts such connections since the last such line; sluice_kafka_connections_closed_bad_input_total has them by reason)"
        );
    }
}

async fn close_when_idle(pipeline: &Pipeline<'_>, peer: SocketAddr) {
    loop {
        let quiet = pipeline.last_activity.get().elapsed();
        if pipeline.requests.get() == 0 && quiet >= pipeline.idle {
            tracing::debug!(%peer, "closing a connection idle for {} ms", quiet.as_millis());
            return;
        }
        let check_in = if pipeline.requests.get() == 0 {
            pipeline.idle - quiet.min(pipeline.idle)
        } else {
            pipeline.idle
        };
        compio::time::sleep(check_in.max(Duration::from_millis(1))).await;
    }
}
