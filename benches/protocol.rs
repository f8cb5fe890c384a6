//! Protocol hot paths (criterion), each next to a baseline measured in the
//! same run:
//!
//! * `frame/encode_prefix`: the commit-log frame header and its CRC32C
//!   (covering the header and the batch fields outside Kafka's CRC), once per
//!   appended batch. Baseline: `frame/crc32c_41B`, the bare CRC of as many
//!   bytes.
//! * `batch/validate/<size>`: `ValidatedBatch::validate` of a 1 KiB-record
//!   batch, as Produce does for every batch. Baseline:
//!   `batch/crc32c/<size>`, the bare CRC32C of the same bytes.
//! * `request/decode/produce_<size>`: request header + Produce v9 decode
//!   from the frame `Bytes` (records stay slices of it). Baseline:
//!   `request/copy/<size>`, one copy of the frame.
//! * `request/decode/fetch_<n>p`: header + Fetch v12 decode for n partitions.
//! * `response/encode/fetch_<n>p`: Sluice's hand-framed FetchResponse around
//!   stored batches (no copy of record bytes). Baseline:
//!   `response/kafka_protocol/fetch_<n>p`, the generic encoder, which copies
//!   the records into the response.
//! * `response/encode/produce_<n>p`: ProduceResponse encode for n partitions.
//!
//! The consume-queue lookup bench lives in `benches/storage.rs`.
//! Run: `cargo bench --bench protocol`.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice::ids::{LogPosition, Offset, PartitionId};
use sluice::kafka::fetch_response::{self, FetchedPartition, FetchedTopic};
use sluice::record_batch::{BatchBuilder, BatchLimits, RecordSpec, ValidatedBatch};
use sluice::storage::frame::{FRAME_PREFIX_BYTES, FrameHeader};
use sluice::storage::{ReadBatch, ReadPart};

const PRODUCE_VERSION: i16 = 9;
const FETCH_VERSION: i16 = 12;

fn batch(records: usize) -> Vec<u8> {
    let value = vec![b'x'; 1024];
    let mut builder = BatchBuilder::new(1_700_000_000_000);
    for _ in 0..records {
        builder.push(RecordSpec {
            key: None,
            value: Some(&value),
            timestamp_delta_ms: 0,
        });
    }
    builder.build()
}

fn size_name(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{}MiB", bytes >> 20)
    } else {
        format!("{}KiB", bytes >> 10)
    }
}

fn frame(criterion: &mut Criterion) {
    let batch = batch(1);
    let header = FrameHeader {
        payload_len: batch.len() as u32,
        partition: PartitionId(7),
    };
    let mut group = criterion.benchmark_group("frame");
    group.bench_function("encode_prefix", |bench| {
        let mut out = [0u8; FRAME_PREFIX_BYTES];
        bench.iter(|| {
            header.encode_prefix(black_box(&batch[..21]), &mut out);
            black_box(&out);
        })
    });
    group.bench_function("crc32c_41B", |bench| {
        bench.iter(|| black_box(crc32c::crc32c(black_box(&batch[..FRAME_PREFIX_BYTES]))))
    });
    group.finish();
}

fn batches(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("batch");
    for records in [16, 1000] {
        let bytes = batch(records);
        let name = size_name(bytes.len());
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("validate/{name}"), |bench| {
            bench.iter(|| {
                black_box(
                    ValidatedBatch::validate(black_box(&bytes), &BatchLimits::unlimited()).is_ok(),
                );
            })
        });
        group.bench_function(format!("crc32c/{name}"), |bench| {
            bench.iter(|| black_box(crc32c::crc32c(black_box(&bytes[21..]))))
        });
    }
    group.finish();
}

fn request_frame<R: Encodable>(key: ApiKey, version: i16, request: &R) -> Bytes {
    let mut out = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("bench")))
        .encode(&mut out, key.request_header_version(version))
        .unwrap();
    request.encode(&mut out, version).unwrap();
    out.freeze()
}

fn requests(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("request");
    for records in [16, 1000] {
        let records_bytes = Bytes::from(batch(records));
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("bench")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(records_bytes)),
                    ]),
            ]);
        let frame = request_frame(ApiKey::Produce, PRODUCE_VERSION, &request);
        let name = size_name(frame.len());
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(format!("decode/produce_{name}"), |bench| {
            bench.iter(|| {
                let mut body = frame.clone();
                let header = RequestHeader::decode(&mut body, 2).unwrap();
                let request = ProduceRequest::decode(&mut body, header.request_api_version);
                black_box(request.unwrap());
            })
        });
        group.bench_function(format!("copy/{name}"), |bench| {
            bench.iter(|| black_box(frame.to_vec()))
        });
    }
    group.throughput(Throughput::Elements(1));
    for partitions in [2, 1000] {
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_bytes(64 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("bench")))
                    .with_partitions(
                        (0..partitions)
                            .map(|index| {
                                FetchPartition::default()
                                    .with_partition(index)
                                    .with_fetch_offset(1_000_000)
                                    .with_partition_max_bytes(1 << 20)
                            })
                            .collect(),
                    ),
            ]);
        let frame = request_frame(ApiKey::Fetch, FETCH_VERSION, &request);
        group.bench_function(format!("decode/fetch_{partitions}p"), |bench| {
            bench.iter(|| {
                let mut body = frame.clone();
                let header = RequestHeader::decode(&mut body, 2).unwrap();
                black_box(FetchRequest::decode(&mut body, header.request_api_version).unwrap());
            })
        });
    }
    group.finish();
}

fn responses(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("response");
    let stored = Bytes::from(batch(1000));
    for partitions in [2, 1000] {
        // Each partition returns one 1 MiB batch (2 partitions) or one
        // 16-record batch (1000 partitions), as a catch-up fetch would.
        let one = if partitions == 2 {
            stored.clone()
        } else {
            Bytes::from(batch(16))
        };
        let topics = vec![FetchedTopic {
            name: "bench".into(),
            partitions: (0..partitions)
                .map(|index| FetchedPartition {
                    index,
                    error_code: 0,
                    high_watermark: 2_000_000,
                    last_stable_offset: 2_000_000,
                    log_start_offset: 0,
                    aborted_transactions_empty: false,
                    batches: vec![ReadBatch {
                        position: LogPosition(0),
                        base_offset: Offset(1_000_000),
                        last_offset: Offset(1_000_999),
                        len: one.len() as u32,
                        parts: vec![ReadPart::Memory(one.clone())],
                    }],
                })
                .collect(),
        }];
        group.throughput(Throughput::Bytes(one.len() as u64 * partitions as u64));
        group.bench_function(format!("encode/fetch_{partitions}p"), |bench| {
            bench.iter(|| {
                black_box(fetch_response::encode(1, FETCH_VERSION, 0, 0, &topics));
            })
        });
        let generic = FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("bench")))
                .with_partitions(
                    (0..partitions)
                        .map(|index| {
                            PartitionData::default()
                                .with_partition_index(index)
                                .with_high_watermark(2_000_000)
                                .with_records(Some(one.clone()))
                        })
                        .collect(),
                ),
        ]);
        group.bench_function(format!("kafka_protocol/fetch_{partitions}p"), |bench| {
            bench.iter(|| {
                let mut out = BytesMut::new();
                generic.encode(&mut out, FETCH_VERSION).unwrap();
                black_box(out);
            })
        });
        let produce = ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("bench")))
                .with_partition_responses(
                    (0..partitions)
                        .map(|index| {
                            PartitionProduceResponse::default()
                                .with_index(index)
                                .with_base_offset(1_000_000)
                        })
                        .collect(),
                ),
        ]);
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("encode/produce_{partitions}p"), |bench| {
            bench.iter(|| {
                let mut out = BytesMut::new();
                produce.encode(&mut out, PRODUCE_VERSION).unwrap();
                black_box(out);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frame, batches, requests, responses);
criterion_main!(benches);
