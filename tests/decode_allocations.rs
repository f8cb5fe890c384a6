//! No length or count read from the network sizes an allocation before the
//! bytes behind it have been seen (issue 12).
//!
//! For every API and version Sluice advertises, a valid request body is
//! encoded, and then every position in it in turn is overwritten with a huge
//! count (int32, int16, and 5-byte varints) and decoded with the function the
//! dispatcher uses. Decoding may fail or succeed; what it may not do is ask
//! the allocator for more than [`allocation_limit_bytes`] at once. A second
//! pass writes counts that trailing padding could back, so that what is
//! reserved for a count that passes the bytes-remaining check is bounded
//! too. The request header, and record batches, which the broker decodes
//! when it reads stored batches back (ListOffsets by time, the offsets-topic
//! replay), get the same treatment.
//!
//! This is its own test binary, apart from `tests/integration/`, because it
//! installs a counting `#[global_allocator]`: that is process-wide, and the
//! integration binary's threads and child processes must not be measured
//! (or slowed) by it. The allocator measures only the thread that armed it.
//!
//! An allocation too large to be served aborts the process (Rust's
//! allocation-error handler); the allocator first prints the case that
//! asked for it, so the abort says which API, version and byte position.

#[path = "common/counting_allocator.rs"]
mod counting_allocator;

use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use counting_allocator::Counting;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice::fuzzing::kafka::{WithRequestType, with_request_type};
use sluice::fuzzing::samples::sample_request;
use sluice::kafka::api::decode_body;
use sluice::kafka::request_error::RequestError;
use sluice::kafka::versions::SUPPORTED;
use sluice::record_batch::recompute_crc;

/// What is being decoded: (label, version, byte position, pattern name).
type Case = (&'static str, i16, usize, &'static str);

thread_local! {
    /// Largest allocation allowed now on this thread; 0 when not measuring.
    static LIMIT_BYTES: Cell<usize> = const { Cell::new(0) };
    /// Largest allocation seen since the thread was armed.
    static LARGEST_BYTES: Cell<usize> = const { Cell::new(0) };
    /// What is being decoded: (label, version, position, pattern).
    static CASE: Cell<Case> = const { Cell::new(("", 0, 0, "")) };
}

/// The allocator hook: remember the largest allocation on an armed thread,
/// and report one past the limit. Must not allocate.
fn note_allocation(size: usize) {
    let limit = LIMIT_BYTES.try_with(Cell::get).unwrap_or(0);
    if limit == 0 {
        return;
    }
    let _ = LARGEST_BYTES.try_with(|largest| largest.set(largest.get().max(size)));
    if size > limit {
        // Report once: what follows (an abort's backtrace) is not the
        // decoder's doing.
        let _ = LIMIT_BYTES.try_with(|cell| cell.set(0));
        let case = CASE.try_with(Cell::get).unwrap_or(("?", 0, 0, "?"));
        report_oversized(size, limit, case);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting {
    note: note_allocation,
};

/// Print the case behind an oversized allocation without allocating (the
/// allocation may be about to abort the process).
fn report_oversized(size: usize, limit: usize, case: Case) {
    use std::io::Write;
    let mut line = [0u8; 256];
    let mut cursor = &mut line[..];
    let _ = writeln!(
        cursor,
        "oversized allocation: {size} bytes (limit {limit}) decoding {} v{} with {} at byte {}",
        case.0, case.1, case.3, case.2
    );
    let written = 256 - cursor.len();
    // SAFETY: `line[..written]` is initialised memory; fd 2 is stderr.
    unsafe { libc::write(2, line.as_ptr().cast(), written) };
}

/// The most one decode may allocate at once: a generous multiple of the
/// input, so that decoding legitimately may copy and box what it read, but
/// nothing near what a forged count would ask for.
fn allocation_limit_bytes(input_bytes: usize) -> usize {
    64 * input_bytes + 64 * 1024
}

/// A count or length as one of Kafka's encodings writes it.
struct Pattern {
    name: &'static str,
    bytes: &'static [u8],
    /// A varint: an honest small count takes one byte where the forged one
    /// takes more, so it is also spliced in place of one byte.
    varint: bool,
}

/// Counts no input of the test's size could back, in each of Kafka's
/// length encodings: every one must be refused before it sizes anything.
const HUGE_COUNTS: &[Pattern] = &[
    Pattern {
        name: "int32 0x7fffffff",
        bytes: &[0x7f, 0xff, 0xff, 0xff],
        varint: false,
    },
    Pattern {
        name: "int16 0x7fff",
        bytes: &[0x7f, 0xff],
        varint: false,
    },
    Pattern {
        name: "unsigned varint 0x7fffffff",
        bytes: &[0xff, 0xff, 0xff, 0xff, 0x07],
        varint: true,
    },
    Pattern {
        name: "unsigned varint 0xffffffff",
        bytes: &[0xff, 0xff, 0xff, 0xff, 0x0f],
        varint: true,
    },
    Pattern {
        name: "zigzag varint i32::MAX",
        bytes: &[0xfe, 0xff, 0xff, 0xff, 0x0f],
        varint: true,
    },
];

/// Counts that [`PADDING_BYTES`] of trailing input could back, one byte an
/// element: they pass the "count within the bytes remaining" check, so the
/// capacity reserved for them must still be bounded by those bytes.
const PLAUSIBLE_COUNTS: &[Pattern] = &[
    Pattern {
        name: "int32 16384 before padding",
        bytes: &[0x00, 0x00, 0x40, 0x00],
        varint: false,
    },
    Pattern {
        name: "unsigned varint 16385 before padding",
        bytes: &[0x81, 0x80, 0x01],
        varint: true,
    },
];

/// Zero bytes appended to a body after a plausible count is written into it.
const PADDING_BYTES: usize = 16 * 1024;

/// Every input derived from `valid`: each pattern written over each
/// position where it fits (and varints also spliced in place of the byte
/// there), then `padding` zero bytes appended.
fn mutations(
    valid: &[u8],
    patterns: &[Pattern],
    padding: usize,
) -> Vec<(usize, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for pattern in patterns {
        let len = pattern.bytes.len();
        for position in 0..valid.len() {
            if position + len <= valid.len() {
                let mut body = valid.to_vec();
                body[position..position + len].copy_from_slice(pattern.bytes);
                out.push((position, pattern.name, body));
            }
            if pattern.varint {
                let mut body = valid[..position].to_vec();
                body.extend_from_slice(pattern.bytes);
                body.extend_from_slice(&valid[position + 1..]);
                out.push((position, pattern.name, body));
            }
        }
    }
    for (_, _, body) in &mut out {
        body.resize(body.len() + padding, 0);
    }
    out
}

/// Decode `input` with `decode`, measuring the largest allocation; returns
/// it if it is over the limit.
fn largest_allocation(
    label: &'static str,
    version: i16,
    (position, pattern, input): (usize, &'static str, Vec<u8>),
    decode: impl FnOnce(Bytes),
) -> Option<String> {
    let limit = allocation_limit_bytes(input.len());
    let input = Bytes::from(input);
    CASE.with(|case| case.set((label, version, position, pattern)));
    LARGEST_BYTES.with(|largest| largest.set(0));
    LIMIT_BYTES.with(|cell| cell.set(limit));
    decode(input);
    LIMIT_BYTES.with(|cell| cell.set(0));
    let largest = LARGEST_BYTES.with(Cell::get);
    (largest > limit).then(|| {
        format!(
            "{label} v{version}: {pattern} at byte {position}: allocated {largest} bytes at once (limit {limit})"
        )
    })
}

fn name(text: &'static str) -> StrBytes {
    StrBytes::from_static_str(text)
}

fn topic(text: &'static str) -> TopicName {
    TopicName(name(text))
}

/// A valid request of each API with one element in each array, for
/// `version` (the fuzz targets' seeds).
fn sample(key: ApiKey, version: i16, out: &mut BytesMut) -> anyhow::Result<()> {
    sample_request(key, version, Bytes::from_static(b"records"), out)
}

/// Decode `body` as a `key` request of `version`, as the dispatcher does.
fn decode_request(key: ApiKey, version: i16, body: Bytes) -> Result<(), RequestError> {
    struct Decode {
        key: ApiKey,
        version: i16,
        body: Bytes,
    }
    impl WithRequestType for Decode {
        type Output = Result<(), RequestError>;
        fn call<M: Decodable + Encodable + PartialEq + std::fmt::Debug>(self) -> Self::Output {
            decode_body::<M>(self.key, self.version, self.body).map(|request| {
                std::hint::black_box(request);
            })
        }
    }
    with_request_type(key, Decode { key, version, body })
        .unwrap_or_else(|| panic!("no decoder listed for {key:?}"))
}

/// A request with an unknown tagged field, for flexible versions, so the
/// tagged-field size is forged too.
fn with_unknown_tag(key: ApiKey, version: i16, body: &mut BytesMut) {
    if key.request_header_version(version) < 2 {
        return;
    }
    // Flexible bodies end with their tagged fields: 0 fields → 1 field.
    assert_eq!(
        body.last(),
        Some(&0),
        "{key:?} v{version} ends with no tags"
    );
    body.truncate(body.len() - 1);
    body.extend_from_slice(&[1, 99, 1, b'x']);
}

#[test]
fn forged_counts_in_any_advertised_request_allocate_no_more_than_the_request() {
    let mut failures = Vec::new();
    let mut cases = 0usize;
    for entry in SUPPORTED {
        // The allocator's report may not allocate: name the API up front.
        let label: &'static str = format!("{:?}", entry.key).leak();
        for version in entry.min..=entry.max {
            let mut body = BytesMut::new();
            sample(entry.key, version, &mut body)
                .unwrap_or_else(|error| panic!("{label} v{version}: {error}"));
            with_unknown_tag(entry.key, version, &mut body);
            decode_request(entry.key, version, Bytes::from(body.to_vec()))
                .unwrap_or_else(|error| panic!("the sample does not decode: {error}"));
            let huge = mutations(&body, HUGE_COUNTS, 0);
            let plausible = mutations(&body, PLAUSIBLE_COUNTS, PADDING_BYTES);
            for mutation in huge.into_iter().chain(plausible) {
                cases += 1;
                failures.extend(largest_allocation(label, version, mutation, |input| {
                    let _ = decode_request(entry.key, version, input);
                }));
            }
        }
    }
    assert!(cases > 10_000, "only {cases} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn forged_counts_in_a_request_header_allocate_no_more_than_the_header() {
    let mut failures = Vec::new();
    for header_version in 1..=2 {
        let mut body = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(3)
            .with_request_api_version(9)
            .with_correlation_id(7)
            .with_client_id(Some(name("client-id")))
            .encode(&mut body, header_version)
            .unwrap();
        for mutation in mutations(&body, HUGE_COUNTS, 0) {
            failures.extend(largest_allocation(
                "RequestHeader",
                header_version,
                mutation,
                |mut input| {
                    let _ = std::hint::black_box(RequestHeader::decode(&mut input, header_version));
                },
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// JoinGroup's member metadata is a ConsumerProtocolSubscription the broker
/// decodes too (for the subscribed topics): a version, then the body.
#[test]
fn forged_counts_in_a_consumer_subscription_allocate_no_more_than_the_metadata() {
    use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition;
    let mut failures = Vec::new();
    for version in 0..=3i16 {
        let mut body = BytesMut::from(&version.to_be_bytes()[..]);
        ConsumerProtocolSubscription::default()
            .with_topics(vec![name("t")])
            .with_user_data(Some(Bytes::from_static(b"user")))
            .with_owned_partitions(if version >= 1 {
                vec![
                    TopicPartition::default()
                        .with_topic(topic("t"))
                        .with_partitions(vec![0]),
                ]
            } else {
                vec![]
            })
            .with_generation_id(if version >= 2 { 3 } else { -1 })
            .with_rack_id(if version >= 3 {
                Some(name("rack"))
            } else {
                None
            })
            .encode(&mut body, version)
            .unwrap();
        let huge = mutations(&body, HUGE_COUNTS, 0);
        let plausible = mutations(&body, PLAUSIBLE_COUNTS, PADDING_BYTES);
        for mutation in huge.into_iter().chain(plausible) {
            failures.extend(largest_allocation(
                "ConsumerProtocolSubscription",
                version,
                mutation,
                |mut input| {
                    let version = bytes::Buf::get_i16(&mut input).clamp(0, 3);
                    let _ = std::hint::black_box(ConsumerProtocolSubscription::decode(
                        &mut input, version,
                    ));
                },
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A stored batch of two records with keys, values and a header each.
fn record_batch(compression: Compression) -> Vec<u8> {
    let records: Vec<Record> = (0..2)
        .map(|index| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: index,
            sequence: index as i32,
            timestamp: 1_700_000_000_000 + index,
            key: Some(Bytes::from_static(b"key")),
            value: Some(Bytes::from_static(b"value")),
            headers: IndexMap::from([(name("h"), Some(Bytes::from_static(b"v")))]),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    out.to_vec()
}

/// A batch whose records are raw (unframed) snappy, which the decoder also
/// accepts: the varint uncompressed length, then one literal.
fn raw_snappy_batch() -> Vec<u8> {
    let mut batch = record_batch(Compression::None);
    let records = batch.split_off(sluice::record_batch::HEADER_BYTES);
    assert!(
        records.len() <= 256,
        "one literal, its length in its tag or one byte"
    );
    let mut compressed = Vec::new();
    let mut declared = records.len();
    while declared >= 0x80 {
        compressed.push(declared as u8 | 0x80);
        declared >>= 7;
    }
    compressed.push(declared as u8);
    if records.len() <= 60 {
        compressed.push(((records.len() - 1) as u8) << 2);
    } else {
        compressed.extend_from_slice(&[60 << 2, (records.len() - 1) as u8]);
    }
    compressed.extend_from_slice(&records);
    batch.extend_from_slice(&compressed);
    let length = (batch.len() - sluice::record_batch::LOG_OVERHEAD_BYTES) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    batch[21..23].copy_from_slice(&2i16.to_be_bytes());
    recompute_crc(&mut batch);
    batch
}

#[test]
fn forged_counts_in_a_stored_batch_allocate_no_more_than_the_batch() {
    let batches = [
        ("batch, uncompressed", record_batch(Compression::None)),
        ("batch, snappy", record_batch(Compression::Snappy)),
        ("batch, raw snappy", raw_snappy_batch()),
    ];
    let mut failures = Vec::new();
    for (label, batch) in batches {
        let decoded = RecordBatchDecoder::decode(&mut Bytes::from(batch.clone()))
            .unwrap_or_else(|error| panic!("{label}: {error}"));
        assert_eq!(decoded.records.len(), 2, "{label}");
        for (position, pattern, mut input) in mutations(&batch, HUGE_COUNTS, 0) {
            // The CRC would catch the change before any count is read;
            // the broker's own batches carry a correct one.
            if input.len() >= sluice::record_batch::HEADER_BYTES {
                recompute_crc(&mut input);
            }
            failures.extend(largest_allocation(
                label,
                2,
                (position, pattern, input),
                |mut input| {
                    let _ = std::hint::black_box(RecordBatchDecoder::decode(&mut input));
                },
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_allocator_counts_what_it_is_asked_for() {
    let failure = largest_allocation("self-check", 0, (0, "no pattern", vec![0; 16]), |_| {
        let big = vec![0u8; 2 * allocation_limit_bytes(16)];
        std::hint::black_box(&big);
    });
    assert!(failure.is_some(), "a too-large allocation is seen");
}
