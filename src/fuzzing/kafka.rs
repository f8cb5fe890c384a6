//! Targets for what a client sends: the byte stream cut into frames, and
//! each frame's header and body decoded as the dispatcher does, for every
//! API and version Sluice advertises.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use compio::BufResult;
use compio::io::AsyncRead;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::mutate::Rng;
use super::{Target, samples};
use crate::kafka::api::decode_body;
use crate::kafka::dispatch::{Head, read_head};
use crate::kafka::frame::{FrameError, FrameLimits, FrameReader, READ_CHUNK_BYTES};
use crate::kafka::request_budget::RequestBudget;
use crate::kafka::versions::SUPPORTED;
use crate::record_batch::{BatchBuilder, RecordSpec};

/// The byte stream of a connection, cut into frames by [`FrameReader`] and
/// by a model of the framing; both must agree frame for frame, and on how
/// the stream ends.
pub const REQUEST_FRAMES: Target = Target {
    name: "request_frames",
    run: request_frames,
    seeds: request_frames_seeds,
    allocation_max_bytes: |_| 2 * STREAM_BYTES_MAX + 2 * READ_CHUNK_BYTES,
    input_max_bytes: 4096,
};

/// One request frame (header and body, after the size): the header read
/// as the dispatcher reads it, then the body decoded as that API's handler
/// decodes it. What decodes must encode and decode back to the same value.
pub const KAFKA_REQUEST: Target = Target {
    name: "kafka_request",
    run: kafka_request,
    seeds: kafka_request_seeds,
    allocation_max_bytes: super::proportional_allocation_max_bytes,
    input_max_bytes: 64 * 1024,
};

/// The most bytes a [`REQUEST_FRAMES`] script expands to: enough for frames
/// past [`READ_CHUNK_BYTES`], which take the large-frame path.
const STREAM_BYTES_MAX: usize = 4 * READ_CHUNK_BYTES;
/// `kafka.request_max_bytes` values the stream target picks from: tiny,
/// around one read chunk, and above it.
const REQUEST_MAX_BYTES_CHOICES: [u32; 4] = [
    16,
    READ_CHUNK_BYTES as u32 - 4,
    READ_CHUNK_BYTES as u32 + 100,
    STREAM_BYTES_MAX as u32,
];

/// Input: byte 0 picks `request_max_bytes`, byte 1 seeds how the stream is
/// split into reads, and the rest is a script that builds the stream (see
/// [`build_stream`]), so small inputs can declare and carry large frames.
pub fn request_frames(data: &[u8]) {
    let [limit_choice, split_seed, script @ ..] = data else {
        return;
    };
    let request_max_bytes =
        REQUEST_MAX_BYTES_CHOICES[usize::from(*limit_choice) % REQUEST_MAX_BYTES_CHOICES.len()];
    let stream = build_stream(script);
    let expected = model_frames(&stream, request_max_bytes);
    let found = read_frames(stream, u64::from(*split_seed), request_max_bytes);
    assert_eq!(
        found, expected,
        "the frame reader and the model disagree (request_max_bytes {request_max_bytes})"
    );
}

/// How a stream of frames ended, or a frame it held.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Framed {
    Frame(Vec<u8>),
    Closed,
    Truncated,
    BadSize(i32),
    TooLarge(usize),
}

/// Ops, each a tag byte then its operands (missing operands read as 0):
/// * 0: `n` (1 byte), then `n` raw bytes;
/// * 1: a whole frame of a 3-byte (big-endian) size, its body a pattern;
/// * 2: a 3-byte declared size, then a 2-byte count of body bytes actually
///   sent (a frame cut short, or followed by more than it declared);
/// * 3: 4 raw bytes (any size prefix, negative ones included).
fn build_stream(script: &[u8]) -> Vec<u8> {
    let mut stream = Vec::new();
    let mut ops = script.iter().copied();
    while let Some(tag) = ops.next() {
        if stream.len() >= STREAM_BYTES_MAX {
            break;
        }
        let mut next = || ops.next().unwrap_or(0);
        match tag % 4 {
            0 => {
                let len = next();
                for _ in 0..len {
                    stream.push(next());
                }
            }
            1 => {
                let size = u24(next(), next(), next());
                stream.extend_from_slice(&(size as i32).to_be_bytes());
                push_pattern(&mut stream, size, tag);
            }
            2 => {
                let size = u24(next(), next(), next());
                let sent = usize::from(u16::from_be_bytes([next(), next()]));
                stream.extend_from_slice(&(size as i32).to_be_bytes());
                push_pattern(&mut stream, sent, tag);
            }
            _ => {
                let prefix = [next(), next(), next(), next()];
                stream.extend_from_slice(&prefix);
            }
        }
    }
    stream.truncate(STREAM_BYTES_MAX);
    stream
}

fn u24(high: u8, middle: u8, low: u8) -> usize {
    (usize::from(high) << 16) | (usize::from(middle) << 8) | usize::from(low)
}

/// `len` bytes that differ by position and by frame, so a frame cut at the
/// wrong place or mixed with another would not compare equal.
fn push_pattern(stream: &mut Vec<u8>, len: usize, salt: u8) {
    let room = STREAM_BYTES_MAX.saturating_sub(stream.len());
    let start = stream.len();
    stream.extend((0..len.min(room)).map(|index| (start + index) as u8 ^ salt));
}

/// The framing as the protocol guide defines it: a 4-byte big-endian size,
/// then that many bytes; sizes outside 1..=`request_max_bytes` end the
/// connection, and so does the end of the stream.
fn model_frames(stream: &[u8], request_max_bytes: u32) -> Vec<Framed> {
    let mut out = Vec::new();
    let mut rest = stream;
    loop {
        if rest.is_empty() {
            out.push(Framed::Closed);
            return out;
        }
        let Some((prefix, body)) = rest.split_first_chunk::<4>() else {
            out.push(Framed::Truncated);
            return out;
        };
        let size = i32::from_be_bytes(*prefix);
        if size <= 0 {
            out.push(Framed::BadSize(size));
            return out;
        }
        let size = size as usize;
        if size > request_max_bytes as usize {
            out.push(Framed::TooLarge(size));
            return out;
        }
        if body.len() < size {
            out.push(Framed::Truncated);
            return out;
        }
        out.push(Framed::Frame(body[..size].to_vec()));
        rest = &body[size..];
    }
}

/// Run the real [`FrameReader`] over `stream`, handed out in reads of
/// sizes drawn from `split_seed`.
fn read_frames(stream: Vec<u8>, split_seed: u64, request_max_bytes: u32) -> Vec<Framed> {
    let mut source = ScriptedStream {
        bytes: stream,
        at: 0,
        rng: Rng::new(split_seed),
    };
    let budget = Arc::new(RequestBudget::new(u64::from(request_max_bytes)));
    let mut reader = FrameReader::new(FrameLimits {
        request_max_bytes,
        read_timeout: Duration::from_secs(3600),
    });
    block_on(async move {
        let mut out = Vec::new();
        loop {
            match reader.next_frame(&mut source, &budget).await {
                Ok(frame) => {
                    assert_eq!(
                        budget.used_bytes(),
                        frame.body.len() as u64,
                        "a frame holds exactly its size of the budget"
                    );
                    out.push(Framed::Frame(frame.body.to_vec()));
                }
                Err(error) => {
                    out.push(match error {
                        FrameError::Closed => Framed::Closed,
                        FrameError::Truncated => Framed::Truncated,
                        FrameError::BadSize { size } => Framed::BadSize(size),
                        FrameError::TooLarge { size, .. } => Framed::TooLarge(size),
                        other => panic!("a stream that never stalls failed with: {other}"),
                    });
                    assert_eq!(budget.used_bytes(), 0, "the budget came back");
                    return out;
                }
            }
        }
    })
}

/// A socket that hands out its bytes in reads of varying size (one byte,
/// a few, or as much as fits), writing them as compio's socket reads do:
/// from the start of the buffer it is given. At the end it reports EOF.
struct ScriptedStream {
    bytes: Vec<u8>,
    at: usize,
    rng: Rng,
}

impl AsyncRead for ScriptedStream {
    async fn read<B: compio::buf::IoBufMut>(&mut self, mut buf: B) -> BufResult<usize, B> {
        let left = self.bytes.len() - self.at;
        let want = match self.rng.below(4) {
            0 => 1,
            1 => 1 + self.rng.below(16),
            2 => 1 + self.rng.below(8192),
            _ => left,
        };
        let take = want.min(left).min(buf.buf_capacity());
        let spare = buf.as_uninit();
        for (slot, byte) in spare.iter_mut().zip(&self.bytes[self.at..self.at + take]) {
            slot.write(*byte);
        }
        self.at += take;
        // SAFETY: the first `take` bytes of the buffer were just written.
        unsafe { compio::buf::SetLen::advance_to(&mut buf, take) };
        BufResult(Ok(take), buf)
    }
}

thread_local! {
    /// One runtime per thread, made once: a target runs thousands of
    /// inputs a second.
    static RUNTIME: compio::runtime::Runtime =
        compio::runtime::Runtime::new().expect("a compio runtime for the frame target");
}

fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|runtime| runtime.block_on(future))
}

fn request_frames_seeds() -> Vec<Vec<u8>> {
    vec![
        // Two small frames, then the end.
        vec![0, 1, 1, 0, 0, 10, 1, 0, 0, 3],
        // A frame over one read chunk, under a limit that allows it.
        vec![2, 7, 1, 1, 0, 40, 1, 0, 0, 1],
        // A frame declared larger than it arrives.
        vec![3, 3, 2, 1, 0, 0, 0, 200],
        // Frames of exactly the limit, then one byte over it (16 and
        // READ_CHUNK_BYTES - 4).
        vec![0, 5, 1, 0, 0, 16, 1, 0, 0, 17],
        vec![1, 6, 1, 0, 0xff, 0xfc, 1, 0, 0xff, 0xfd],
        // A negative size prefix after a frame.
        vec![1, 0, 1, 0, 0, 5, 3, 0xff, 0xff, 0xff, 0xfe],
        // Raw bytes: a size prefix cut short.
        vec![1, 9, 0, 2, 0, 0],
    ]
}

/// Input: a request frame without its size prefix.
pub fn kafka_request(data: &[u8]) {
    let mut frame = Bytes::copy_from_slice(data);
    match read_head(&mut frame) {
        Head::Request {
            key,
            version,
            header,
        } => {
            let header_version = key.request_header_version(version);
            assert_round_trip(&header, header_version, "RequestHeader");
            decode_and_round_trip(key, version, frame);
        }
        Head::UnsupportedApiVersions { correlation_id } => {
            assert_eq!(&data[..2], &(ApiKey::ApiVersions as i16).to_be_bytes());
            assert_eq!(&data[4..8], &correlation_id.to_be_bytes());
            crate::kafka::api::api_versions::unsupported_version(correlation_id)
                .expect("the v0 UNSUPPORTED_VERSION reply encodes");
        }
        Head::Refused(_) => {}
    }
}

/// Something done with the request type a handler decodes, whichever it
/// is: see [`with_request_type`].
pub trait WithRequestType {
    type Output;
    fn call<M: Decodable + Encodable + PartialEq + Debug>(self) -> Self::Output;
}

/// `visitor` called with the request type the broker's handler for `key`
/// decodes; `None` for a key no handler serves. The one list of advertised
/// APIs and their request types for the fuzz targets and the allocation
/// tests.
pub fn with_request_type<V: WithRequestType>(key: ApiKey, visitor: V) -> Option<V::Output> {
    Some(match key {
        ApiKey::Produce => visitor.call::<ProduceRequest>(),
        ApiKey::Fetch => visitor.call::<FetchRequest>(),
        ApiKey::ListOffsets => visitor.call::<ListOffsetsRequest>(),
        ApiKey::Metadata => visitor.call::<MetadataRequest>(),
        ApiKey::ApiVersions => visitor.call::<ApiVersionsRequest>(),
        ApiKey::CreateTopics => visitor.call::<CreateTopicsRequest>(),
        ApiKey::DeleteTopics => visitor.call::<DeleteTopicsRequest>(),
        ApiKey::CreatePartitions => visitor.call::<CreatePartitionsRequest>(),
        ApiKey::DescribeConfigs => visitor.call::<DescribeConfigsRequest>(),
        ApiKey::AlterConfigs => visitor.call::<AlterConfigsRequest>(),
        ApiKey::IncrementalAlterConfigs => visitor.call::<IncrementalAlterConfigsRequest>(),
        ApiKey::DescribeCluster => visitor.call::<DescribeClusterRequest>(),
        ApiKey::DescribeTopicPartitions => visitor.call::<DescribeTopicPartitionsRequest>(),
        ApiKey::DescribeLogDirs => visitor.call::<DescribeLogDirsRequest>(),
        ApiKey::FindCoordinator => visitor.call::<FindCoordinatorRequest>(),
        ApiKey::JoinGroup => visitor.call::<JoinGroupRequest>(),
        ApiKey::SyncGroup => visitor.call::<SyncGroupRequest>(),
        ApiKey::Heartbeat => visitor.call::<HeartbeatRequest>(),
        ApiKey::LeaveGroup => visitor.call::<LeaveGroupRequest>(),
        ApiKey::OffsetCommit => visitor.call::<OffsetCommitRequest>(),
        ApiKey::OffsetFetch => visitor.call::<OffsetFetchRequest>(),
        ApiKey::OffsetDelete => visitor.call::<OffsetDeleteRequest>(),
        ApiKey::ListGroups => visitor.call::<ListGroupsRequest>(),
        ApiKey::DescribeGroups => visitor.call::<DescribeGroupsRequest>(),
        ApiKey::DeleteGroups => visitor.call::<DeleteGroupsRequest>(),
        ApiKey::InitProducerId => visitor.call::<InitProducerIdRequest>(),
        ApiKey::AddPartitionsToTxn => visitor.call::<AddPartitionsToTxnRequest>(),
        ApiKey::EndTxn => visitor.call::<EndTxnRequest>(),
        ApiKey::AddOffsetsToTxn => visitor.call::<AddOffsetsToTxnRequest>(),
        ApiKey::TxnOffsetCommit => visitor.call::<TxnOffsetCommitRequest>(),
        ApiKey::DescribeProducers => visitor.call::<DescribeProducersRequest>(),
        ApiKey::DeleteRecords => visitor.call::<DeleteRecordsRequest>(),
        ApiKey::DescribeTransactions => visitor.call::<DescribeTransactionsRequest>(),
        ApiKey::ListTransactions => visitor.call::<ListTransactionsRequest>(),
        ApiKey::ConsumerGroupHeartbeat => visitor.call::<ConsumerGroupHeartbeatRequest>(),
        ApiKey::ConsumerGroupDescribe => visitor.call::<ConsumerGroupDescribeRequest>(),
        ApiKey::SaslHandshake => visitor.call::<SaslHandshakeRequest>(),
        ApiKey::SaslAuthenticate => visitor.call::<SaslAuthenticateRequest>(),
        ApiKey::DescribeUserScramCredentials => {
            visitor.call::<DescribeUserScramCredentialsRequest>()
        }
        ApiKey::AlterUserScramCredentials => visitor.call::<AlterUserScramCredentialsRequest>(),
        ApiKey::CreateAcls => visitor.call::<CreateAclsRequest>(),
        ApiKey::DescribeAcls => visitor.call::<DescribeAclsRequest>(),
        ApiKey::DeleteAcls => visitor.call::<DeleteAclsRequest>(),
        ApiKey::DescribeClientQuotas => visitor.call::<DescribeClientQuotasRequest>(),
        ApiKey::AlterClientQuotas => visitor.call::<AlterClientQuotasRequest>(),
        _ => return None,
    })
}

/// Decode `body` with the decoder `key`'s handler uses; whether it
/// decoded.
fn decode_and_round_trip(key: ApiKey, version: i16, body: Bytes) -> bool {
    struct RoundTrip {
        key: ApiKey,
        version: i16,
        body: Bytes,
    }
    impl WithRequestType for RoundTrip {
        type Output = bool;
        fn call<M: Decodable + Encodable + PartialEq + Debug>(self) -> bool {
            let Ok(decoded) = decode_body::<M>(self.key, self.version, self.body) else {
                return false;
            };
            assert_round_trip(&decoded, self.version, self.key);
            true
        }
    }
    with_request_type(key, RoundTrip { key, version, body })
        .unwrap_or_else(|| panic!("{key:?} is advertised but has no decoder here"))
}

/// A decoded value encodes at the version it was decoded at, and those
/// bytes decode to the same value.
///
/// Except one known kafka-protocol 0.18 limitation: an unknown tagged field
/// whose tag is 2^31 or more decodes as a negative `i32` tag, which the
/// encoder counts but does not write (it writes tags from 0 up), so the
/// re-encoded bytes do not decode (found by this target; see
/// fuzz/README.md). The broker never re-encodes a request and its
/// responses carry no unknown tags, so values holding one are let be.
pub(crate) fn assert_round_trip<M: Decodable + Encodable + PartialEq + Debug>(
    decoded: &M,
    version: i16,
    what: impl Debug,
) {
    if format!("{decoded:?}").contains("unknown_tagged_fields: {-") {
        return;
    }
    let mut encoded = BytesMut::new();
    if let Err(error) = decoded.encode(&mut encoded, version) {
        panic!("{what:?} v{version} decoded but does not encode: {error}\n{decoded:?}");
    }
    let encoded = encoded.freeze();
    match M::decode(&mut encoded.clone(), version) {
        Ok(again) => assert_eq!(
            &again, decoded,
            "{what:?} v{version} changed in a round trip"
        ),
        Err(error) => panic!(
            "{what:?} v{version} re-encoded does not decode: {error}\n{decoded:?}\n\
             encoded: {encoded:02x?}"
        ),
    }
}

/// A small valid batch, the records of the Produce seeds.
pub(crate) fn sample_batch() -> Bytes {
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    builder.push(RecordSpec {
        key: Some(b"k"),
        value: Some(b"value"),
        timestamp_delta_ms: 0,
    });
    builder.push(RecordSpec {
        key: None,
        value: Some(b"v2"),
        timestamp_delta_ms: 3,
    });
    Bytes::from(builder.build())
}

/// A valid frame of every advertised API and version.
fn kafka_request_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for entry in SUPPORTED {
        for version in entry.min..=entry.max {
            let frame = samples::sample_frame(entry.key, version, 7, sample_batch())
                .unwrap_or_else(|error| panic!("{:?} v{version}: {error}", entry.key));
            seeds.push(frame);
        }
    }
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_advertised_seed_reaches_its_body_decoder() {
        for seed in kafka_request_seeds() {
            let mut frame = Bytes::from(seed);
            let Head::Request { key, version, .. } = read_head(&mut frame) else {
                panic!("a sample frame is refused");
            };
            assert!(
                decode_and_round_trip(key, version, frame),
                "{key:?} v{version} does not decode"
            );
        }
    }

    #[test]
    fn the_frame_model_agrees_with_the_reader_on_the_seeds() {
        for seed in request_frames_seeds() {
            request_frames(&seed);
        }
        let stream = build_stream(&[1, 0, 0, 10, 1, 0, 0, 3]);
        assert_eq!(stream.len(), 4 + 10 + 4 + 3);
        let frames = model_frames(&stream, 100);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2], Framed::Closed);
    }
}
