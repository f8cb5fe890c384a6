//! The load generator's side of the Kafka wire: Produce v8 and Fetch v11,
//! the last non-flexible versions, so a request is a short fixed prefix
//! followed by the batch (sent with one vectored write, never copied) and a
//! response is parsed in place from a reused buffer. The small requests of
//! idempotent and transactional producers (KIP-98) go through
//! kafka-protocol: InitProducerId v1 (once per connection, with a
//! transactional id for a transactional producer), FindCoordinator v3 with
//! key type 1 (transaction), AddPartitionsToTxn v3 and EndTxn v3 (once per
//! transaction each).

use std::io::{self, IoSlice, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, EndTxnRequest, FindCoordinatorRequest,
    InitProducerIdRequest, ProduceResponse, ProducerId, RequestHeader, ResponseHeader, TopicName,
    TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use crate::admin::describe_error;

pub const PRODUCE_VERSION: i16 = 8;
pub const FETCH_VERSION: i16 = 11;
/// The last non-flexible version; a null transactional id asks for an
/// idempotent producer's id.
pub const INIT_PRODUCER_ID_VERSION: i16 = 1;
/// The last version with one key per request (v4 batches them, KIP-699).
pub const FIND_COORDINATOR_VERSION: i16 = 3;
/// The last version a client sends (v4 is broker-to-broker, KIP-890).
pub const ADD_PARTITIONS_TO_TXN_VERSION: i16 = 3;
/// The last version before KIP-890's transaction version 2.
pub const END_TXN_VERSION: i16 = 3;
/// FindCoordinator's key type for a transactional id (KIP-98).
pub const COORDINATOR_TYPE_TRANSACTION: i8 = 1;
const PRODUCE_KEY: i16 = 0;
const CLIENT_ID: &[u8] = b"sluice-bench";
/// Offset of the correlation id in a request frame: size, key, version.
const CORRELATION_AT: usize = 8;
/// Largest response frame read.
const RESPONSE_MAX_BYTES: usize = 1 << 30;

/// How long a load-generator connection waits for the broker to take or
/// send the next bytes. Well above the 30 s produce timeout the requests
/// carry, so only a broker that has stopped answering reaches it.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Connect with Nagle off (the producer's writes are whole requests) and
/// reads and writes that give up after [`ANSWER_TIMEOUT`].
pub fn connect(address: &str) -> anyhow::Result<TcpStream> {
    let stream =
        TcpStream::connect(address).with_context(|| format!("cannot connect to {address}"))?;
    stream
        .set_nodelay(true)
        .with_context(|| format!("cannot turn Nagle off on {address}"))?;
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_TIMEOUT)))
        .with_context(|| format!("cannot set socket timeouts on {address}"))?;
    Ok(stream)
}

/// `error`, with a socket timeout (EAGAIN from `SO_RCVTIMEO` or
/// `SO_SNDTIMEO`) said plainly; other errors unchanged.
pub fn explain_timeout(error: io::Error) -> io::Error {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the broker has not answered for {} s",
                ANSWER_TIMEOUT.as_secs()
            ),
        ),
        _ => error,
    }
}

/// Where a produce request goes and how it is acknowledged.
pub struct ProduceTarget<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub acks: i16,
    pub timeout_ms: i32,
    /// A transactional producer's id (its batches are transactional);
    /// `None` for the others.
    pub transactional_id: Option<&'a str>,
}

/// Size, header v1 and the Produce v8 body up to the records' length, for a
/// request with one batch of `batch_len` bytes for one partition. The
/// correlation id is set per request with [`set_correlation_id`].
pub fn produce_prefix(target: &ProduceTarget<'_>, batch_len: usize) -> Vec<u8> {
    let ProduceTarget {
        topic,
        partition,
        acks,
        timeout_ms,
        transactional_id,
    } = *target;
    let transactional_len = transactional_id.map_or(0, str::len);
    let mut out = Vec::with_capacity(64 + topic.len() + transactional_len);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&PRODUCE_KEY.to_be_bytes());
    out.extend_from_slice(&PRODUCE_VERSION.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    put_string(&mut out, CLIENT_ID);
    match transactional_id {
        Some(id) => put_string(&mut out, id.as_bytes()),
        None => out.extend_from_slice(&(-1i16).to_be_bytes()), // null
    }
    out.extend_from_slice(&acks.to_be_bytes());
    out.extend_from_slice(&timeout_ms.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // one topic
    put_string(&mut out, topic.as_bytes());
    out.extend_from_slice(&1i32.to_be_bytes()); // one partition
    out.extend_from_slice(&partition.to_be_bytes());
    let batch_len = i32::try_from(batch_len).expect("batch under 2 GiB");
    out.extend_from_slice(&batch_len.to_be_bytes());
    let size = (out.len() - 4) as i32 + batch_len;
    out[..4].copy_from_slice(&size.to_be_bytes());
    out
}

fn put_string(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(&(text.len() as i16).to_be_bytes());
    out.extend_from_slice(text);
}

pub fn set_correlation_id(frame: &mut [u8], id: i32) {
    frame[CORRELATION_AT..CORRELATION_AT + 4].copy_from_slice(&id.to_be_bytes());
}

/// Write `parts` in full with as few system calls as the socket allows.
pub fn write_all_vectored(stream: &mut TcpStream, parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|part| IoSlice::new(part)).collect();
    let mut slices = slices.as_mut_slice();
    while !slices.is_empty() {
        let written = stream.write_vectored(slices).map_err(explain_timeout)?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Read one response frame (without its size) into `buf`.
pub fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(explain_timeout)?;
    let size = frame_size(size)?;
    // Read into spare capacity: no zeroing of megabytes per fetch answer.
    buf.clear();
    buf.reserve(size);
    let read = Read::take(&mut *stream, size as u64)
        .read_to_end(buf)
        .map_err(explain_timeout)?;
    if read < size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed {read} bytes into a {size}-byte frame"),
        ));
    }
    Ok(())
}

/// A response frame's length from its 4-byte size prefix: at least the
/// correlation id, at most [`RESPONSE_MAX_BYTES`].
pub fn frame_size(prefix: [u8; 4]) -> io::Result<usize> {
    let size = i32::from_be_bytes(prefix);
    usize::try_from(size)
        .ok()
        .filter(|size| *size <= RESPONSE_MAX_BYTES && *size >= 4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("frame of {size} bytes")))
}

/// Encode a whole request frame with kafka-protocol (for the small ones).
pub fn encode_request<R: Request + Encodable>(
    request: &R,
    version: i16,
    correlation_id: i32,
) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-bench")));
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    header
        .encode(&mut frame, R::header_version(version))
        .expect("request header encodes");
    request
        .encode(&mut frame, version)
        .expect("request encodes");
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    frame.to_vec()
}

/// Decode a whole response frame (without its size) to `R` at `version`
/// with kafka-protocol; returns its correlation id and body.
pub fn decode_response<R: Request>(
    frame: &[u8],
    version: i16,
) -> anyhow::Result<(i32, R::Response)> {
    let key = ApiKey::try_from(R::KEY)
        .map_err(|()| anyhow::anyhow!("API key {} is not one kafka-protocol knows", R::KEY))?;
    let mut body = bytes::Bytes::copy_from_slice(frame);
    let header = ResponseHeader::decode(&mut body, key.response_header_version(version))
        .with_context(|| format!("{key:?} v{version} response header"))?;
    let response = R::Response::decode(&mut body, version)
        .with_context(|| format!("{key:?} v{version} response body"))?;
    Ok((header.correlation_id, response))
}

/// A transactional producer's identity, as every transaction request
/// carries it.
#[derive(Clone, Copy, Debug)]
pub struct TxnProducer<'a> {
    pub transactional_id: &'a str,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// What InitProducerId asks for: an idempotent producer's id, or a
/// transactional id's producer id and epoch.
#[derive(Clone, Copy, Debug)]
pub enum InitProducer<'a> {
    Idempotent,
    Transactional {
        transactional_id: &'a str,
        transaction_timeout_ms: i32,
    },
}

/// An InitProducerId v1 request frame.
pub fn init_producer_id_request(producer: InitProducer<'_>, correlation_id: i32) -> Vec<u8> {
    let (transactional_id, timeout_ms) = match producer {
        InitProducer::Idempotent => (None, -1),
        InitProducer::Transactional {
            transactional_id,
            transaction_timeout_ms,
        } => (Some(transactional_id), transaction_timeout_ms),
    };
    let request = InitProducerIdRequest::default()
        .with_transactional_id(transactional_id.map(transactional_id_of))
        .with_transaction_timeout_ms(timeout_ms);
    encode_request(&request, INIT_PRODUCER_ID_VERSION, correlation_id)
}

fn transactional_id_of(id: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(id.to_owned()))
}

/// A FindCoordinator v3 request frame for a transactional id's coordinator.
pub fn find_transaction_coordinator_request(
    transactional_id: &str,
    correlation_id: i32,
) -> Vec<u8> {
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(transactional_id.to_owned()))
        .with_key_type(COORDINATOR_TYPE_TRANSACTION);
    encode_request(&request, FIND_COORDINATOR_VERSION, correlation_id)
}

/// An AddPartitionsToTxn v3 request frame adding `partitions` of `topic`
/// to `producer`'s transaction.
pub fn add_partitions_to_txn_request(
    producer: TxnProducer<'_>,
    topic: &str,
    partitions: &[i32],
    correlation_id: i32,
) -> Vec<u8> {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(transactional_id_of(producer.transactional_id))
        .with_v3_and_below_producer_id(ProducerId(producer.producer_id))
        .with_v3_and_below_producer_epoch(producer.producer_epoch)
        .with_v3_and_below_topics(vec![
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(partitions.to_vec()),
        ]);
    encode_request(&request, ADD_PARTITIONS_TO_TXN_VERSION, correlation_id)
}

/// An EndTxn v3 request frame: commit (`committed`) or abort `producer`'s
/// transaction.
pub fn end_txn_request(producer: TxnProducer<'_>, committed: bool, correlation_id: i32) -> Vec<u8> {
    let request = EndTxnRequest::default()
        .with_transactional_id(transactional_id_of(producer.transactional_id))
        .with_producer_id(ProducerId(producer.producer_id))
        .with_producer_epoch(producer.producer_epoch)
        .with_committed(committed);
    encode_request(&request, END_TXN_VERSION, correlation_id)
}

/// What an InitProducerId response said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitProducerIdAnswer {
    pub correlation_id: i32,
    pub error_code: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

/// Decode an InitProducerId v1 response frame (without its size).
pub fn parse_init_producer_id_response(frame: &[u8]) -> anyhow::Result<InitProducerIdAnswer> {
    let (correlation_id, response) =
        decode_response::<InitProducerIdRequest>(frame, INIT_PRODUCER_ID_VERSION)?;
    Ok(InitProducerIdAnswer {
        correlation_id,
        error_code: response.error_code,
        producer_id: response.producer_id.0,
        producer_epoch: response.producer_epoch,
    })
}

/// What a Produce v8 response for one partition said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceAnswer {
    pub correlation_id: i32,
    /// The first partition error, named, with the broker's message.
    pub error: Option<String>,
    /// The first partition's base offset.
    pub base_offset: Option<i64>,
}

/// Decode a Produce v8 response frame (without its size).
pub fn parse_produce_response(frame: &[u8]) -> anyhow::Result<ProduceAnswer> {
    let mut body = bytes::Bytes::copy_from_slice(frame);
    let header = ResponseHeader::decode(&mut body, 0).context("Produce response header")?;
    let response = ProduceResponse::decode(&mut body, PRODUCE_VERSION)
        .with_context(|| format!("Produce v{PRODUCE_VERSION} response body"))?;
    let mut partitions = response
        .responses
        .iter()
        .flat_map(|topic| topic.partition_responses.iter());
    let base_offset = partitions
        .clone()
        .next()
        .map(|partition| partition.base_offset);
    let error = partitions
        .find(|partition| partition.error_code != 0)
        .map(|partition| {
            format!(
                "partition {}: {}",
                partition.index,
                describe_error(partition.error_code, partition.error_message.as_deref())
            )
        });
    Ok(ProduceAnswer {
        correlation_id: header.correlation_id,
        error,
        base_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{InitProducerIdResponse, ProduceRequest};

    #[test]
    fn produce_prefix_and_batch_decode_as_a_produce_request() {
        let batch = crate::record_batch::BatchBuilder::new(1)
            .push(crate::record_batch::RecordSpec {
                key: None,
                value: Some(b"v"),
                timestamp_delta_ms: 0,
            })
            .build();
        for transactional_id in [None, Some("bench-txn-1")] {
            let target = ProduceTarget {
                topic: "bench",
                partition: 3,
                acks: -1,
                timeout_ms: 30_000,
                transactional_id,
            };
            let mut frame = produce_prefix(&target, batch.len());
            set_correlation_id(&mut frame, 77);
            frame.extend_from_slice(&batch);
            let size = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(size, frame.len() - 4);
            let mut body = bytes::Bytes::copy_from_slice(&frame[4..]);
            let header = RequestHeader::decode(&mut body, 1).unwrap();
            assert_eq!(header.correlation_id, 77);
            assert_eq!(header.request_api_version, PRODUCE_VERSION);
            let request = ProduceRequest::decode(&mut body, PRODUCE_VERSION).unwrap();
            assert_eq!(request.acks, -1);
            assert_eq!(
                request.transactional_id.as_ref().map(|id| id.0.as_str()),
                transactional_id
            );
            let partition = &request.topic_data[0].partition_data[0];
            assert_eq!(partition.index, 3);
            assert_eq!(partition.records.as_deref(), Some(batch.as_slice()));
            assert!(body.is_empty(), "nothing after the batch");
        }
    }

    /// The body of a request frame encoded here, decoded as the broker
    /// would: checks the header's key, version and correlation id.
    fn decode_request<R: Request + Decodable>(frame: &[u8], version: i16, correlation: i32) -> R {
        let size = i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(size, frame.len() - 4);
        let mut body = bytes::Bytes::copy_from_slice(&frame[4..]);
        let header = RequestHeader::decode(&mut body, R::header_version(version)).unwrap();
        assert_eq!(
            (
                header.request_api_key,
                header.request_api_version,
                header.correlation_id
            ),
            (R::KEY, version, correlation)
        );
        let request = R::decode(&mut body, version).unwrap();
        assert!(body.is_empty(), "nothing after the request");
        request
    }

    /// A response frame as the broker sends it (without its size).
    fn response_frame<R: Request>(
        response: &R::Response,
        version: i16,
        correlation: i32,
    ) -> Vec<u8> {
        let key = ApiKey::try_from(R::KEY).unwrap();
        let mut frame = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(correlation)
            .encode(&mut frame, key.response_header_version(version))
            .unwrap();
        response.encode(&mut frame, version).unwrap();
        frame.to_vec()
    }

    #[test]
    fn transaction_requests_decode_as_the_broker_reads_them() {
        let producer = TxnProducer {
            transactional_id: "bench-1-transactional-0",
            producer_id: 4_000_017,
            producer_epoch: 3,
        };
        let find: FindCoordinatorRequest = decode_request(
            &find_transaction_coordinator_request(producer.transactional_id, -2),
            FIND_COORDINATOR_VERSION,
            -2,
        );
        assert_eq!(find.key.as_str(), producer.transactional_id);
        assert_eq!(find.key_type, COORDINATOR_TYPE_TRANSACTION);

        let init: InitProducerIdRequest = decode_request(
            &init_producer_id_request(
                InitProducer::Transactional {
                    transactional_id: producer.transactional_id,
                    transaction_timeout_ms: 60_000,
                },
                -1,
            ),
            INIT_PRODUCER_ID_VERSION,
            -1,
        );
        assert_eq!(
            init.transactional_id.as_ref().map(|id| id.0.as_str()),
            Some(producer.transactional_id)
        );
        assert_eq!(init.transaction_timeout_ms, 60_000);

        let add: AddPartitionsToTxnRequest = decode_request(
            &add_partitions_to_txn_request(producer, "bench-1-transactional", &[1, 3], 40),
            ADD_PARTITIONS_TO_TXN_VERSION,
            40,
        );
        assert_eq!(
            add.v3_and_below_transactional_id.0.as_str(),
            producer.transactional_id
        );
        assert_eq!(
            (
                add.v3_and_below_producer_id.0,
                add.v3_and_below_producer_epoch
            ),
            (4_000_017, 3)
        );
        let topic = &add.v3_and_below_topics[0];
        assert_eq!(add.v3_and_below_topics.len(), 1);
        assert_eq!(topic.name.0.as_str(), "bench-1-transactional");
        assert_eq!(topic.partitions, [1, 3]);

        for committed in [true, false] {
            let end: EndTxnRequest = decode_request(
                &end_txn_request(producer, committed, 41),
                END_TXN_VERSION,
                41,
            );
            assert_eq!(end.transactional_id.0.as_str(), producer.transactional_id);
            assert_eq!((end.producer_id.0, end.producer_epoch), (4_000_017, 3));
            assert_eq!(end.committed, committed);
        }
    }

    #[test]
    fn transaction_responses_decode_with_their_flexible_headers() {
        use kafka_protocol::messages::add_partitions_to_txn_response::{
            AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
        };
        use kafka_protocol::messages::{
            AddPartitionsToTxnResponse, EndTxnResponse, FindCoordinatorResponse,
        };
        let found = FindCoordinatorResponse::default()
            .with_node_id(kafka_protocol::messages::BrokerId(0))
            .with_host(StrBytes::from_static_str("127.0.0.1"))
            .with_port(9092);
        let frame = response_frame::<FindCoordinatorRequest>(&found, FIND_COORDINATOR_VERSION, 7);
        let (correlation, decoded) =
            decode_response::<FindCoordinatorRequest>(&frame, FIND_COORDINATOR_VERSION).unwrap();
        assert_eq!((correlation, decoded.port, decoded.node_id.0), (7, 9092, 0));

        let added = AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(vec![
            AddPartitionsToTxnTopicResult::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_results_by_partition(vec![
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(1)
                        .with_partition_error_code(51),
                ]),
        ]);
        let frame =
            response_frame::<AddPartitionsToTxnRequest>(&added, ADD_PARTITIONS_TO_TXN_VERSION, 8);
        let (correlation, decoded) =
            decode_response::<AddPartitionsToTxnRequest>(&frame, ADD_PARTITIONS_TO_TXN_VERSION)
                .unwrap();
        assert_eq!(correlation, 8);
        assert_eq!(decoded, added);

        let ended = EndTxnResponse::default().with_error_code(48);
        let frame = response_frame::<EndTxnRequest>(&ended, END_TXN_VERSION, 9);
        let (correlation, decoded) =
            decode_response::<EndTxnRequest>(&frame, END_TXN_VERSION).unwrap();
        assert_eq!((correlation, decoded.error_code), (9, 48));
    }

    #[test]
    fn init_producer_id_round_trips_through_kafka_protocol() {
        let frame = init_producer_id_request(InitProducer::Idempotent, 9);
        let mut body = bytes::Bytes::copy_from_slice(&frame[4..]);
        let header = RequestHeader::decode(&mut body, 1).unwrap();
        assert_eq!(header.correlation_id, 9);
        assert_eq!(header.request_api_version, INIT_PRODUCER_ID_VERSION);
        let request = InitProducerIdRequest::decode(&mut body, INIT_PRODUCER_ID_VERSION).unwrap();
        assert_eq!(request.transactional_id, None);

        let mut response = BytesMut::new();
        ResponseHeader::default()
            .with_correlation_id(9)
            .encode(&mut response, 0)
            .unwrap();
        InitProducerIdResponse::default()
            .with_producer_id(kafka_protocol::messages::ProducerId(1_000_123))
            .with_producer_epoch(2)
            .encode(&mut response, INIT_PRODUCER_ID_VERSION)
            .unwrap();
        assert_eq!(
            parse_init_producer_id_response(&response).unwrap(),
            InitProducerIdAnswer {
                correlation_id: 9,
                error_code: 0,
                producer_id: 1_000_123,
                producer_epoch: 2,
            }
        );
    }
}
