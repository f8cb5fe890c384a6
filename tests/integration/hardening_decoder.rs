//! Requests whose lengths and counts promise more than they carry (issue 12):
//! each is refused with a clean close and a log line, and the broker stays
//! up, small, and serving. Also: an OffsetCommit whose group id cannot be
//! stored gets INVALID_GROUP_ID rather than reaching the record encoder.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::broker_process::BrokerProcess;
use crate::kafka_bad_input::{batch, produce_code};
use crate::kafka_clients;
use crate::wire::Wire;

/// Far above the broker's idle footprint (tens of MB), far below what any
/// forged count asked for (tens to hundreds of GB).
const RESIDENT_BYTES_MAX: u64 = 200 * 1024 * 1024;

/// A request header v1 (key, version, correlation id, client id "r"), or v2
/// with its empty tagged fields.
fn header(key: i16, version: i16, header_version: i16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&key.to_be_bytes());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&1i32.to_be_bytes());
    out.extend_from_slice(&[0, 1, b'r']);
    if header_version >= 2 {
        out.push(0);
    }
    out
}

/// A size-prefixed frame of `parts`.
fn frame(parts: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

const COUNT_INT32: [u8; 4] = [0x7f, 0xff, 0xff, 0xff];
/// 0x7fffffff as an unsigned varint: a compact array of 2^31 - 2 elements.
const COUNT_VARINT: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x07];

/// (what, the whole request on the wire, what the close logs).
fn forged_requests() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    vec![
        (
            "Metadata v1 with 0x7fffffff topics, as reported",
            vec![
                0x00, 0x00, 0x00, 0x0f, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01,
                0x72, 0x7f, 0xff, 0xff, 0xff,
            ],
            "malformed Metadata v1 request",
        ),
        (
            "Produce v8 with 0x7fffffff topics",
            frame(&[
                &header(0, 8, 1),
                &[0xff, 0xff],          // transactional id: null
                &(-1i16).to_be_bytes(), // acks
                &1000i32.to_be_bytes(), // timeout
                &COUNT_INT32,           // topic data
            ]),
            "malformed Produce v8 request",
        ),
        (
            "Fetch v4 with 0x7fffffff topics",
            frame(&[
                &header(1, 4, 1),
                &(-1i32).to_be_bytes(),      // replica id
                &100i32.to_be_bytes(),       // max wait
                &1i32.to_be_bytes(),         // min bytes
                &(1i32 << 20).to_be_bytes(), // max bytes
                &[0],                        // isolation level
                &COUNT_INT32,                // topics
            ]),
            "malformed Fetch v4 request",
        ),
        (
            "OffsetCommit v2 with 0x7fffffff topics",
            frame(&[
                &header(8, 2, 1),
                &[0, 1, b'g'],          // group id
                &(-1i32).to_be_bytes(), // generation
                &[0, 0],                // member id
                &(-1i64).to_be_bytes(), // retention time
                &COUNT_INT32,           // topics
            ]),
            "malformed OffsetCommit v2 request",
        ),
        (
            "Metadata v9 with a compact array of 2^31 - 2 topics",
            frame(&[&header(3, 9, 2), &COUNT_VARINT]),
            "malformed Metadata v9 request",
        ),
    ]
}

/// Issue 12: a count of 0x7fffffff made the decoder reserve ~150 GB and
/// abort the process. Each forged request now closes its connection with a
/// log line; the broker stays up and small, and serves a client afterwards.
#[test]
fn forged_array_counts_close_the_connection_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    for (what, request, logged) in forged_requests() {
        let mut wire = Wire::connect(&broker.address);
        wire.send_bytes(&request);
        assert!(wire.closed_by_broker(), "{what}: the connection is closed");
        assert!(broker.is_running(), "{what}: the broker is still running");
        assert!(
            broker.wait_for_log(logged),
            "{what}: logged {logged:?}\n{:#?}",
            broker.log()
        );
        let resident = broker.resident_bytes();
        assert!(
            resident < RESIDENT_BYTES_MAX,
            "{what}: the broker holds {resident} bytes"
        );
    }
    assert!(broker.log_contains("but only 0 bytes remaining"));

    let mut wire = Wire::connect(&broker.address);
    assert_eq!(produce_code(&mut wire, "after", 0, batch(1, 7)), 0);
    let records = kafka_clients::consume(&broker.address, "after", 1, 0, 1);
    assert_eq!(records[0].payload, vec![b'v'; 7]);
    assert!(!broker.log().iter().any(|line| line.contains("panicked")));
}

pub fn commit_request(group: &str, topic: &str) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(1)
                        .with_committed_leader_epoch(-1),
                ]),
        ])
}

pub fn committed_offset(wire: &mut Wire, group: &str) -> i64 {
    let request = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
            .with_topics(None),
    ]);
    let response = wire.call(8, &request);
    let group = &response.groups[0];
    assert_eq!(group.error_code, 0);
    group.topics[0].partitions[0].committed_offset
}

/// Issue 12: an OffsetCommit v8 (compact strings, lengths up to 2^32) with a
/// group id of 32 KiB reached an `expect` when the offset record, whose
/// strings have i16 lengths, was encoded. It now gets INVALID_GROUP_ID; the
/// longest id a record holds (32767 bytes) still commits.
#[test]
fn an_offset_commit_with_a_group_id_too_long_to_store_gets_invalid_group_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    assert_eq!(produce_code(&mut wire, "positions", 0, batch(1, 1)), 0);

    let too_long = "g".repeat(32 * 1024);
    let response = wire.call(8, &commit_request(&too_long, "positions"));
    assert_eq!(
        response.topics[0].partitions[0].error_code,
        ResponseError::InvalidGroupId.code()
    );

    let longest = "g".repeat(usize::from(i16::MAX as u16));
    let response = wire.call(8, &commit_request(&longest, "positions"));
    assert_eq!(response.topics[0].partitions[0].error_code, 0);
    assert_eq!(committed_offset(&mut wire, &longest), 1);

    assert!(broker.is_running());
    assert!(!broker.log().iter().any(|line| line.contains("panicked")));
}
