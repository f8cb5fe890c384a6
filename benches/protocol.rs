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
//! * `batch/validate_headers/1000x100B`: the same for 1000 records of
//!   100 bytes with three headers each (two 11- and 12-byte keys as tracing
//!   adds them, and `sluice.delay.ms`): the header walk, which reads each
//!   key's first 7 bytes for the `sluice.` prefix. Baseline:
//!   `batch/validate_headerless/1000x100B`, the same records without
//!   headers.
//! * `batch/validate_<codec>/1000x1KiB`: `ValidatedBatch::validate` of a
//!   load-generator batch (1000 records of 1 KiB lowercase letters) in each
//!   codec: the record walk through the streaming decompressor. Baseline:
//!   `batch/decode_<codec>/1000x1KiB`, kafka-protocol's `RecordBatchDecoder`
//!   (decompresses into memory and builds every record).
//! * `batch/recompress_<from>_to_<to>/1000x1KiB`: `record_batch::recompress`
//!   of a load-generator batch, what Produce adds for a topic whose
//!   `compression.type` differs from the producer's codec (issue 14).
//!   Baseline: `batch/validate_<from>/1000x1KiB`, what Produce already
//!   spends on every such batch.
//! * `batch/refuse_bomb_<codec>`: validating a bomb (200 MiB of records with
//!   1 MiB zero values) under the default limits (1 MiB batches, ratio 32):
//!   the CPU one refused bomb costs, which the cap bounds.
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
use sluice::bench::batch::{BatchTemplate, Compression};
use sluice::config::{DECOMPRESSED_BATCH_RATIO_MAX_DEFAULT, MESSAGE_MAX_BYTES_DEFAULT};
use sluice::ids::{LogPosition, Offset, PartitionId};
use sluice::kafka::fetch_response::{self, FetchedPartition, FetchedTopic};
use sluice::record_batch::record_walk::RecordsError;
use sluice::record_batch::{
    BatchBuilder, BatchError, BatchLimits, HeaderFields, RecordSpec, ValidatedBatch, assemble,
};
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
        kind: Default::default(),
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

/// 1000 records of 100 bytes, each with `headers` (key, value).
fn batch_with_headers(headers: &[(&str, &[u8])]) -> Bytes {
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let records: Vec<Record> = (0..1000)
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
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(vec![b'v'; 100])),
            headers: headers
                .iter()
                .map(|(key, value)| {
                    (
                        StrBytes::from_string((*key).to_owned()),
                        Some(Bytes::copy_from_slice(value)),
                    )
                })
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let mut bytes = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: kafka_protocol::records::Compression::None,
    };
    RecordBatchEncoder::encode(&mut bytes, &records, &options).unwrap();
    bytes.freeze()
}

fn header_batches(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("batch");
    let limits = BatchLimits::unlimited();
    let traced = batch_with_headers(&[
        ("traceparent", &[b't'; 55]),
        ("content-type", b"application/json"),
        ("sluice.delay.ms", b"1000"),
    ]);
    let plain = batch_with_headers(&[]);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("validate_headers/1000x100B", |bench| {
        bench.iter(|| black_box(ValidatedBatch::validate(black_box(&traced), &limits).is_ok()))
    });
    group.bench_function("validate_headerless/1000x100B", |bench| {
        bench.iter(|| black_box(ValidatedBatch::validate(black_box(&plain), &limits).is_ok()))
    });
    group.finish();
}

fn codec_batches(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("batch");
    let limits = BatchLimits::new(
        MESSAGE_MAX_BYTES_DEFAULT as usize,
        DECOMPRESSED_BATCH_RATIO_MAX_DEFAULT,
    );
    for compression in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let codec = compression.name();
        let template = BatchTemplate::new(1000, 1024, compression, 7);
        let bytes = Bytes::copy_from_slice(template.bytes());
        // Records per second is what matters; bytes are the uncompressed size.
        group.throughput(Throughput::Bytes(1000 * 1024));
        group.bench_function(format!("validate_{codec}/1000x1KiB"), |bench| {
            bench.iter(|| black_box(ValidatedBatch::validate(black_box(&bytes), &limits).is_ok()))
        });
        group.bench_function(format!("decode_{codec}/1000x1KiB"), |bench| {
            bench.iter(|| {
                let mut buf = black_box(bytes.clone());
                black_box(kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).is_ok())
            })
        });
    }
    recompress_batches(&mut group, &limits);
    group.sample_size(10);
    for (codec, id) in [("gzip", 1i16), ("lz4", 3), ("zstd", 4)] {
        let bomb = bomb(id);
        let refused = ValidatedBatch::validate(&bomb, &limits).map(|_| ());
        assert!(
            matches!(
                refused,
                Err(BatchError::Records(
                    RecordsError::DecompressedTooLarge { .. }
                ))
            ),
            "{codec}: refused at the cap, not earlier: {refused:?}"
        );
        group.throughput(Throughput::Bytes(limits.decompressed_max_bytes));
        group.bench_function(format!("refuse_bomb_{codec}"), |bench| {
            bench.iter(|| black_box(ValidatedBatch::validate(black_box(&bomb), &limits).is_err()))
        });
    }
    group.finish();
}

/// The broker's recompression (a topic's `compression.type`) from the
/// producer's codec to the topic's, at Kafka's default levels, with the
/// validation of the same batch as the baseline.
fn recompress_batches(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    limits: &BatchLimits,
) {
    use sluice::record_batch::{Codec, recompress};
    for (from, to, level) in [
        (Compression::None, Codec::Zstd, 3),
        (Compression::None, Codec::Lz4, 9),
        (Compression::None, Codec::Gzip, -1),
        (Compression::None, Codec::Snappy, 0),
        (Compression::Lz4, Codec::Zstd, 3),
        (Compression::Zstd, Codec::None, 0),
    ] {
        let template = BatchTemplate::new(1000, 1024, from, 7);
        let bytes = Bytes::copy_from_slice(template.bytes());
        let name = format!("{}_to_{}", from.name(), to.name());
        group.throughput(Throughput::Bytes(1000 * 1024));
        // The compressed sources' baselines are `validate_<codec>` above.
        if from == Compression::None && to == Codec::Zstd {
            group.bench_function("validate_none/1000x1KiB", |bench| {
                bench
                    .iter(|| black_box(ValidatedBatch::validate(black_box(&bytes), limits).is_ok()))
            });
        }
        group.bench_function(format!("recompress_{name}/1000x1KiB"), |bench| {
            bench.iter(|| {
                black_box(recompress(
                    black_box(&bytes),
                    to,
                    level,
                    limits.decompressed_max_bytes,
                ))
            })
        });
    }
}

const BOMB_RECORDS: i32 = 200;
const BOMB_VALUE_BYTES: usize = 1 << 20;

/// 200 records, each a 1 MiB value of zeros, compressed with codec `id`
/// (it fits a 1 MiB batch in every codec; decompressing stops at the cap).
fn bomb(id: i16) -> Vec<u8> {
    let compressed = match id {
        1 => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            write_bomb_records(&mut encoder);
            encoder.finish().unwrap()
        }
        3 => {
            let mut encoder = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max4MB)
                .build(Vec::new())
                .unwrap();
            write_bomb_records(&mut encoder);
            let (out, result) = encoder.finish();
            result.unwrap();
            out
        }
        _ => {
            let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            write_bomb_records(&mut encoder);
            encoder.finish().unwrap()
        }
    };
    let fields = HeaderFields {
        attributes: id,
        last_offset_delta: BOMB_RECORDS - 1,
        base_timestamp_ms: 1_700_000_000_000,
        max_timestamp_ms: 1_700_000_000_000,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
        records_count: BOMB_RECORDS,
    };
    let batch = assemble(&fields, &compressed);
    assert!(
        batch.len() < MESSAGE_MAX_BYTES_DEFAULT as usize,
        "the bomb fits one batch"
    );
    batch
}

fn write_bomb_records(out: &mut impl std::io::Write) {
    let zeros = vec![0u8; BOMB_VALUE_BYTES];
    for index in 0..BOMB_RECORDS {
        let mut head = vec![0]; // attributes
        put_varint(&mut head, 0); // timestamp delta
        put_varint(&mut head, i64::from(index));
        put_varint(&mut head, -1); // null key
        put_varint(&mut head, BOMB_VALUE_BYTES as i64);
        let mut record = Vec::new();
        put_varint(&mut record, (head.len() + BOMB_VALUE_BYTES + 1) as i64);
        record.extend_from_slice(&head);
        out.write_all(&record).unwrap();
        out.write_all(&zeros).unwrap();
        out.write_all(&[0]).unwrap(); // no headers
    }
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
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
            id: sluice::broker::metadata::TopicId([7; 16]),
            partitions: (0..partitions)
                .map(|index| FetchedPartition {
                    index,
                    error_code: 0,
                    high_watermark: 2_000_000,
                    last_stable_offset: 2_000_000,
                    log_start_offset: 0,
                    aborted_transactions: None,
                    batches: vec![ReadBatch {
                        position: LogPosition(0),
                        attributes: 0,
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
                black_box(fetch_response::encode(1, FETCH_VERSION, 0, 0, 0, &topics));
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

criterion_group!(
    benches,
    frame,
    batches,
    header_batches,
    codec_batches,
    requests,
    responses
);
criterion_main!(benches);
