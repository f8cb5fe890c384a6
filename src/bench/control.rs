//! The request/response exchanges of a producer connection outside its
//! produce pipeline: InitProducerId, FindCoordinator, AddPartitionsToTxn and
//! EndTxn (KIP-98). Each is written and its response read on the producer's
//! own connection while no produce request is in flight there (before the
//! ack reader starts, or after it has answered a barrier), so the two never
//! read each other's responses. Control requests take correlation ids from
//! -1 down; produce requests count from 0 up.
//!
//! The errors a Kafka client retries (the coordinator still loading, or
//! busy with the id's previous change) are retried here with a pause, for
//! at most [`RETRYING_MAX`]; any other error fails the producer, and with it
//! the run.

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, InitProducerIdRequest};
use kafka_protocol::protocol::Request;

use super::wire::{self, InitProducer};
use crate::admin::describe_error;

/// The coordinator is loading its state (or, for InitProducerId without a
/// transactional id, cannot hand out ids yet): retriable.
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
/// No coordinator yet (FindCoordinator before the internal topic exists):
/// retriable.
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// The id's previous change is still being written (after EndTxn, until
/// every marker is stored): retriable.
pub const CONCURRENT_TRANSACTIONS: i16 = 51;
/// How long one request keeps being retried while the broker answers a
/// retriable error. A commit's markers are retried by the broker with a
/// back-off from 1 s, so this leaves room for a few of those.
pub const RETRYING_MAX: Duration = Duration::from_secs(10);
/// The pause before retrying a request the coordinator is not ready for.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// One connection's control exchanges: its address (for messages), the
/// next control correlation id, and a reused response buffer.
pub struct Control {
    address: String,
    next_correlation_id: i32,
    frame: Vec<u8>,
}

/// One answer to a request that may be retried.
pub enum Attempt<T> {
    Done(T),
    /// A retriable error code: try again after the pause.
    Retry(i16),
}

impl Control {
    pub fn new(address: &str) -> Control {
        Control {
            address: address.to_owned(),
            next_correlation_id: -1,
            frame: Vec::new(),
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Send the request `encode` builds (given its correlation id) at
    /// `version` and decode its response, checking that it answers it.
    pub fn call<R: Request>(
        &mut self,
        stream: &mut TcpStream,
        version: i16,
        encode: impl FnOnce(i32) -> Vec<u8>,
    ) -> anyhow::Result<R::Response> {
        let name = ApiKey::try_from(R::KEY)
            .map_or_else(|()| format!("API key {}", R::KEY), |key| format!("{key:?}"));
        let correlation_id = self.next_correlation_id;
        // Stay below 0, clear of the produce requests' ids.
        self.next_correlation_id = correlation_id.checked_sub(1).unwrap_or(-1);
        let request = encode(correlation_id);
        wire::write_all_vectored(stream, &[&request])
            .with_context(|| format!("sending {name} to {}", self.address))?;
        wire::read_frame(stream, &mut self.frame)
            .with_context(|| format!("reading the {name} response from {}", self.address))?;
        let (answered, response) = wire::decode_response::<R>(&self.frame, version)?;
        if answered != correlation_id {
            anyhow::bail!(
                "{name} to {}: the response answers request {answered}, not {correlation_id}",
                self.address
            );
        }
        Ok(response)
    }

    /// Run `attempt` until it is done, pausing `backoff` after each
    /// retriable answer, for at most [`RETRYING_MAX`]. Returns the result
    /// and how many retries it took.
    pub fn retrying<T>(
        &mut self,
        what: &str,
        backoff: Duration,
        mut attempt: impl FnMut(&mut Control) -> anyhow::Result<Attempt<T>>,
    ) -> anyhow::Result<(T, u64)> {
        let started = Instant::now();
        let mut retries = 0;
        loop {
            match attempt(self)? {
                Attempt::Done(value) => return Ok((value, retries)),
                Attempt::Retry(_) if started.elapsed() < RETRYING_MAX => {
                    retries += 1;
                    thread::sleep(backoff);
                }
                Attempt::Retry(code) => anyhow::bail!(
                    "{what} at {}: still {} after {retries} retries over {:?}",
                    self.address,
                    describe_error(code, None),
                    RETRYING_MAX
                ),
            }
        }
    }

    /// Ask InitProducerId for a producer id and epoch (KIP-98): an
    /// idempotent producer's, or a transactional id's (which fences any
    /// earlier producer with that id).
    pub fn init_producer_id(
        &mut self,
        stream: &mut TcpStream,
        producer: InitProducer<'_>,
    ) -> anyhow::Result<(i64, i16)> {
        let ((producer_id, epoch), _) =
            self.retrying("InitProducerId", RETRY_BACKOFF, |control| {
                let response = control.call::<InitProducerIdRequest>(
                    stream,
                    wire::INIT_PRODUCER_ID_VERSION,
                    |correlation_id| wire::init_producer_id_request(producer, correlation_id),
                )?;
                match response.error_code {
                    0 if response.producer_id.0 >= 0 => Ok(Attempt::Done((
                        response.producer_id.0,
                        response.producer_epoch,
                    ))),
                    0 => anyhow::bail!(
                        "InitProducerId from {} answered producer id {} without an error",
                        control.address,
                        response.producer_id.0
                    ),
                    code @ (COORDINATOR_LOAD_IN_PROGRESS | CONCURRENT_TRANSACTIONS) => {
                        Ok(Attempt::Retry(code))
                    }
                    code => anyhow::bail!(
                        "InitProducerId from {} failed: {}",
                        control.address,
                        describe_error(code, None)
                    ),
                }
            })?;
        Ok((producer_id, epoch))
    }

    /// Ask FindCoordinator (key type 1) which broker coordinates
    /// `transactional_id`, as a client does before InitProducerId. On a
    /// single node that is the broker this connection reaches, so the
    /// answer is checked but the connection is kept.
    pub fn find_transaction_coordinator(
        &mut self,
        stream: &mut TcpStream,
        transactional_id: &str,
    ) -> anyhow::Result<()> {
        self.retrying("FindCoordinator", RETRY_BACKOFF, |control| {
            let response = control.call::<FindCoordinatorRequest>(
                stream,
                wire::FIND_COORDINATOR_VERSION,
                |correlation_id| {
                    wire::find_transaction_coordinator_request(transactional_id, correlation_id)
                },
            )?;
            match response.error_code {
                0 if response.node_id.0 >= 0 => Ok(Attempt::Done(())),
                0 => anyhow::bail!(
                    "FindCoordinator from {} named node {} for {transactional_id}",
                    control.address,
                    response.node_id.0
                ),
                code @ (COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE) => {
                    Ok(Attempt::Retry(code))
                }
                code => anyhow::bail!(
                    "FindCoordinator for {transactional_id} from {} failed: {}",
                    control.address,
                    describe_error(code, response.error_message.as_deref())
                ),
            }
        })?;
        Ok(())
    }
}
