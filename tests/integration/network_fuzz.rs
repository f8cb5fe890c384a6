//! The black-box network fuzzer (`sluice::fuzzing::network`) for a short
//! run against the real binary (issue 12): mutated requests of every
//! advertised API over many connections, while the broker must stay up,
//! keep its resident memory within a bound and answer a produce and a
//! read-back every two seconds. Then librdkafka produces and consumes, and
//! the broker stops cleanly. Long runs: `cargo run --example network_fuzz`
//! (fuzz/README.md). Below it, the findings of the fuzz targets that reach
//! the broker, each as a regression test.

use std::path::PathBuf;
use std::time::Duration;

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice::fuzzing::network::{self, NetworkFuzzOptions};
use sluice::record_batch::{self, BatchBuilder, RecordSpec};

use crate::broker_process::BrokerProcess;
use crate::kafka_bad_input::{batch, produce_code};
use crate::kafka_clients;
use crate::wire::Wire;

/// Seconds of fuzzing, unless `SLUICE_NETWORK_FUZZ_SECONDS` says otherwise.
const SECONDS_DEFAULT: u64 = 20;
/// What the broker may gain while fuzzed: well above what its caches and
/// the fuzzer's topics take, far below what one forged length would ask for.
const RSS_GROWTH_MAX_BYTES: u64 = 256 << 20;

/// The seed: `SLUICE_NETWORK_FUZZ_SEED`, else a new one each run (printed,
/// and in the failure message, to reproduce with the example).
fn seed() -> u64 {
    std::env::var("SLUICE_NETWORK_FUZZ_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as u64)
        })
}

#[test]
fn mutated_requests_on_many_connections_leave_the_broker_up_bounded_and_serving() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let seed = seed();
    let seconds = std::env::var("SLUICE_NETWORK_FUZZ_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(SECONDS_DEFAULT);
    eprintln!("network fuzz: seed {seed}, {seconds} s");
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/network-fuzz");
    let report = network::run(&NetworkFuzzOptions {
        address: broker.address.clone(),
        pid: broker.pid(),
        seed,
        duration: Duration::from_secs(seconds),
        workers: 4,
        rss_growth_max_bytes: RSS_GROWTH_MAX_BYTES,
        check_interval: Duration::from_secs(2),
        out_dir,
    });
    eprintln!("network fuzz: {report:?}");
    if let Some(failure) = &report.failure {
        let log = broker.log();
        let tail = &log[log.len().saturating_sub(40)..];
        panic!(
            "seed {seed}: {failure}\nreproducers: {:?}\nbroker log (tail):\n{}",
            report.saved,
            tail.join("\n")
        );
    }
    assert!(
        report.connections >= 100 && report.frames >= report.connections,
        "the fuzzer barely ran: {report:?}"
    );
    assert!(
        report.closed_by_broker > 0,
        "no bad request was refused with a close: {report:?}"
    );
    assert!(report.health_checks >= seconds / 2, "{report:?}");
    assert!(broker.is_running());

    let (producer, acks) = kafka_clients::producer(&broker.address, &[]);
    for index in 0..10u8 {
        kafka_clients::send(&producer, "after-fuzz", Some(0), None, &[index; 8], &[]);
    }
    let delivered = kafka_clients::flush(&producer, &acks);
    assert_eq!(delivered.len(), 10);
    let records = kafka_clients::consume(&broker.address, "after-fuzz", 1, 0, 10);
    let payloads: Vec<Vec<u8>> = records.into_iter().map(|record| record.payload).collect();
    assert_eq!(
        payloads,
        (0..10u8).map(|index| vec![index; 8]).collect::<Vec<_>>()
    );
    assert!(
        !broker.log().iter().any(|line| line.contains("panicked")),
        "a panic was logged"
    );
    assert!(
        broker.stop().success(),
        "the broker stops cleanly after the fuzzing"
    );
}

/// A batch whose records' timestamps overflow i64: a base near i64::MAX
/// and a record 100 ms after it.
fn batch_with_overflowing_timestamps() -> Vec<u8> {
    let mut builder = BatchBuilder::new(0);
    builder.push(RecordSpec {
        key: None,
        value: Some(b"late"),
        timestamp_delta_ms: 100,
    });
    let mut batch = builder.build();
    // baseTimestamp at 27, maxTimestamp at 35 (RecordBatch v2).
    batch[27..35].copy_from_slice(&(i64::MAX - 10).to_be_bytes());
    batch[35..43].copy_from_slice(&i64::MAX.to_be_bytes());
    record_batch::recompute_crc(&mut batch);
    batch
}

/// Issue 12, found by the `record_batch` fuzz target: ListOffsets by time
/// reads stored batches, and a record whose timestamp delta pushed its
/// batch's base past i64::MAX panicked the decoder ("attempt to add with
/// overflow") and so aborted the broker. Produce now refuses such a batch
/// (INVALID_RECORD, KIP-467) and ListOffsets by time answers; one already
/// on disk is read around (`kafka_poison_batches::
/// poison_batches_already_on_disk_do_not_stop_a_restart_or_lookups_by_time`).
#[test]
fn a_batch_with_overflowing_timestamps_is_refused_and_lookups_by_time_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(dir.path(), &[]);
    let mut wire = Wire::connect(&broker.address);
    let code = produce_code(&mut wire, "late", 0, batch_with_overflowing_timestamps());
    assert_eq!(code, 87, "INVALID_RECORD");
    assert_eq!(produce_code(&mut wire, "late", 0, batch(1, 7)), 0);
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("late")))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(1_700_000_000_000),
                ]),
        ]);
    let response = wire.call(7, &request);
    let partition = &response.topics[0].partitions[0];
    assert_eq!(partition.error_code, 0);
    assert!(broker.is_running(), "the broker survived the lookup");
    assert!(!broker.log().iter().any(|line| line.contains("panicked")));
}
