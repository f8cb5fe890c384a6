//! FetchResponse framing by hand, so record batches go to the socket as file
//! spans instead of being copied into an encoded message.
//!
//! Layout for the versions Sluice serves (4..=18); v12+ are "flexible":
//! compact strings, arrays and bytes (unsigned varint length + 1), a
//! tagged-field section at the end of every structure, and response header
//! v1. From v13 a topic is named by its 16-byte id instead of its name.
//! Sluice sends none of the tagged fields (diverging epoch, current leader,
//! snapshot id, v16's node endpoints): they answer followers and leader
//! changes.
//!
//! ```text
//! throttle_time_ms i32
//! [v7+] error_code i16, session_id i32
//! responses: [topic: string (v4-12) | topic_id: uuid (v13+),
//!             partitions: [partition_index i32, error_code i16,
//!                          high_watermark i64, last_stable_offset i64,
//!                          [v5+] log_start_offset i64,
//!                          aborted_transactions: nullable [producer_id i64, first_offset i64],
//!                          [v11+] preferred_read_replica i32,
//!                          records: nullable bytes]]
//! ```
//!
//! The unit tests decode this output with kafka-protocol's own decoder for
//! every version, so the hand framing cannot drift from the spec.

use bytes::{BufMut, BytesMut};

use super::response::Response;
use crate::broker::metadata::TopicId;
use crate::storage::{ReadBatch, ReadPart};

pub const FLEXIBLE_FROM_VERSION: i16 = 12;
/// The first version that names topics by id (KIP-516).
const TOPIC_IDS_FROM_VERSION: i16 = 13;

pub struct FetchedPartition {
    pub index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// The aborted transactions among the batches, as (producer id, first
    /// offset): `None` is null (read_uncommitted), `Some` a list
    /// (read_committed, KIP-98).
    pub aborted_transactions: Option<Vec<(i64, i64)>>,
    pub batches: Vec<ReadBatch>,
}

pub struct FetchedTopic {
    /// The topic's name (empty for an unknown id): what v4-12 send, and
    /// what the per-topic metrics count under.
    pub name: String,
    /// The topic's id as the request named it: what v13+ send.
    pub id: TopicId,
    pub partitions: Vec<FetchedPartition>,
}

struct Writer {
    flexible: bool,
    head: BytesMut,
    response: Response,
}

impl Writer {
    fn length(&mut self, length: usize) {
        if self.flexible {
            put_unsigned_varint(&mut self.head, length as u64 + 1);
        } else {
            self.head.put_i32(length as i32);
        }
    }

    fn null_length(&mut self) {
        if self.flexible {
            put_unsigned_varint(&mut self.head, 0);
        } else {
            self.head.put_i32(-1);
        }
    }

    fn string(&mut self, text: &str) {
        if self.flexible {
            put_unsigned_varint(&mut self.head, text.len() as u64 + 1);
        } else {
            self.head.put_i16(text.len() as i16);
        }
        self.head.put_slice(text.as_bytes());
    }

    fn tagged_fields(&mut self) {
        if self.flexible {
            put_unsigned_varint(&mut self.head, 0);
        }
    }

    /// Emit the buffered head, then the batches' parts.
    fn records(&mut self, batches: &[ReadBatch]) {
        let len: usize = batches.iter().map(|batch| batch.len as usize).sum();
        self.length(len);
        self.response.push_bytes(self.head.split().freeze());
        for batch in batches {
            for part in &batch.parts {
                match part {
                    ReadPart::File {
                        file,
                        offset,
                        len,
                        final_len,
                    } => self.response.push_file(
                        std::sync::Arc::clone(file),
                        *offset,
                        *len,
                        *final_len,
                    ),
                    ReadPart::Memory(bytes) => self.response.push_bytes(bytes.clone()),
                }
            }
        }
    }
}

/// Frame a whole FetchResponse (response header included).
pub fn encode(
    correlation_id: i32,
    version: i16,
    error_code: i16,
    session_id: i32,
    throttle_time_ms: i32,
    topics: &[FetchedTopic],
) -> Response {
    let flexible = version >= FLEXIBLE_FROM_VERSION;
    let mut writer = Writer {
        flexible,
        head: BytesMut::with_capacity(256),
        response: Response::default(),
    };
    writer.head.put_i32(correlation_id);
    writer.tagged_fields(); // response header v1 (flexible) only
    writer.head.put_i32(throttle_time_ms);
    if version >= 7 {
        writer.head.put_i16(error_code);
        writer.head.put_i32(session_id);
    }
    writer.length(topics.len());
    for topic in topics {
        if version >= TOPIC_IDS_FROM_VERSION {
            writer.head.put_slice(&topic.id.0);
        } else {
            writer.string(&topic.name);
        }
        writer.length(topic.partitions.len());
        for partition in &topic.partitions {
            encode_partition(&mut writer, version, partition);
        }
        writer.tagged_fields();
    }
    writer.tagged_fields();
    let tail = writer.head.split().freeze();
    writer.response.push_bytes(tail);
    writer.response
}

fn encode_partition(writer: &mut Writer, version: i16, partition: &FetchedPartition) {
    writer.head.put_i32(partition.index);
    writer.head.put_i16(partition.error_code);
    writer.head.put_i64(partition.high_watermark);
    writer.head.put_i64(partition.last_stable_offset);
    if version >= 5 {
        writer.head.put_i64(partition.log_start_offset);
    }
    match &partition.aborted_transactions {
        Some(aborted) => {
            writer.length(aborted.len());
            for (producer_id, first_offset) in aborted {
                writer.head.put_i64(*producer_id);
                writer.head.put_i64(*first_offset);
                writer.tagged_fields();
            }
        }
        None => writer.null_length(),
    }
    if version >= 11 {
        writer.head.put_i32(-1); // preferred_read_replica: none
    }
    writer.records(&partition.batches);
    writer.tagged_fields();
}

fn put_unsigned_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use bytes::{Buf, Bytes};
    use kafka_protocol::messages::{FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;

    use super::*;
    use crate::ids::{LogPosition, Offset};
    use crate::record_batch::{BatchBuilder, RecordSpec};

    fn memory_batch(value: &[u8]) -> (ReadBatch, Bytes) {
        let mut builder = BatchBuilder::new(1000);
        builder.push(RecordSpec {
            key: None,
            value: Some(value),
            timestamp_delta_ms: 0,
        });
        let bytes = Bytes::from(builder.build());
        let batch = ReadBatch {
            position: LogPosition(0),
            attributes: 0,
            base_offset: Offset(0),
            last_offset: Offset(0),
            len: bytes.len() as u32,
            parts: vec![
                ReadPart::Memory(bytes.slice(..10)),
                ReadPart::Memory(bytes.slice(10..)),
            ],
        };
        (batch, bytes)
    }

    fn flatten(response: &Response) -> Bytes {
        let mut out = BytesMut::new();
        for part in response.parts() {
            match part {
                crate::kafka::response::Part::Bytes(bytes) => out.extend_from_slice(bytes),
                crate::kafka::response::Part::File { .. } => panic!("memory-only test"),
            }
        }
        out.freeze()
    }

    #[test]
    fn hand_framing_decodes_with_kafka_protocol_for_every_served_version() {
        for version in 4..=18 {
            let (first, first_bytes) = memory_batch(b"one");
            let (second, second_bytes) = memory_batch(b"two");
            let topics = vec![
                FetchedTopic {
                    name: "alpha".to_owned(),
                    id: TopicId([7; 16]),
                    partitions: vec![
                        FetchedPartition {
                            index: 0,
                            error_code: 0,
                            high_watermark: 7,
                            last_stable_offset: 7,
                            log_start_offset: 2,
                            aborted_transactions: Some(vec![(5, 1), (6, 3)]),
                            batches: vec![first, second],
                        },
                        FetchedPartition {
                            index: 3,
                            error_code: 1,
                            high_watermark: 9,
                            last_stable_offset: 9,
                            log_start_offset: 0,
                            aborted_transactions: None,
                            batches: Vec::new(),
                        },
                    ],
                },
                FetchedTopic {
                    name: "beta".to_owned(),
                    id: TopicId([9; 16]),
                    partitions: Vec::new(),
                },
            ];
            let response = encode(42, version, 0, 0, 0, &topics);
            let mut wire = flatten(&response);
            assert_eq!(wire.len(), response.len());
            let header_version = if version >= FLEXIBLE_FROM_VERSION {
                1
            } else {
                0
            };
            let header = ResponseHeader::decode(&mut wire, header_version).unwrap();
            assert_eq!(header.correlation_id, 42);
            let decoded = FetchResponse::decode(&mut wire, version).unwrap();
            assert!(!wire.has_remaining(), "v{version}: trailing bytes");
            assert_eq!(decoded.responses.len(), 2, "v{version}");
            let alpha = &decoded.responses[0];
            if version >= TOPIC_IDS_FROM_VERSION {
                assert_eq!(alpha.topic_id.as_bytes(), &[7; 16], "v{version}");
                assert_eq!(decoded.responses[1].topic_id.as_bytes(), &[9; 16]);
            } else {
                assert_eq!(alpha.topic.0.as_str(), "alpha");
            }
            let partition = &alpha.partitions[0];
            assert_eq!(
                (partition.partition_index, partition.high_watermark),
                (0, 7)
            );
            if version >= 5 {
                assert_eq!(partition.log_start_offset, 2);
            }
            let mut expected = BytesMut::new();
            expected.extend_from_slice(&first_bytes);
            expected.extend_from_slice(&second_bytes);
            assert_eq!(
                partition.records.as_deref(),
                Some(&expected[..]),
                "v{version}"
            );
            let aborted: Vec<(i64, i64)> = partition
                .aborted_transactions
                .as_ref()
                .expect("a read_committed list")
                .iter()
                .map(|aborted| (aborted.producer_id.0, aborted.first_offset))
                .collect();
            assert_eq!(aborted, vec![(5, 1), (6, 3)], "v{version}");
            assert_eq!(partition.last_stable_offset, 7);
            assert!(alpha.partitions[1].aborted_transactions.is_none());
            assert_eq!(alpha.partitions[1].error_code, 1);
            assert_eq!(alpha.partitions[1].records.as_deref(), Some(&[][..]));
        }
    }
}
