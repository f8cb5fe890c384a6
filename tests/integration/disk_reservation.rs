//! Issue 19 item 7, "first start small": a fresh broker used to fallocate a
//! whole 1 GiB segment per shard before its first record (2 GiB for the
//! default 2 shards, and 18 GiB for a 3-node cluster), which also filled the
//! CI machine's disk under parallel tests. The commit log now reserves disk
//! space in steps just ahead of its writes, off the shard thread.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::broker_process::BrokerProcess;
use crate::delayed_delivery::metric_sum;
use crate::kafka_bad_input::{batch, produce_with_acks};
use crate::kafka_clients;
use crate::wire::Wire;

const MIB: u64 = 1024 * 1024;

/// Bytes the file system has allocated for every file under `dir`.
fn allocated_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        total += if metadata.is_dir() {
            allocated_bytes(&entry.path())
        } else {
            metadata.blocks() * 512
        };
    }
    total
}

/// Allocated bytes of the shards' commit-log directories.
fn log_allocated_bytes(data: &Path) -> u64 {
    (0..2)
        .map(|shard| allocated_bytes(&data.join(format!("shard-{shard}/log"))))
        .sum()
}

/// A fresh broker takes a few MiB; as records arrive, the space reserved
/// grows with them, a bounded step ahead (never the whole 1 GiB segment),
/// every acknowledged record reads back, and a restarted broker reserves
/// at its recovered end and goes on appending.
#[test]
fn a_fresh_broker_takes_a_few_mib_and_reserves_space_just_ahead_of_its_writes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let fresh = allocated_bytes(&data);
    assert!(
        fresh <= 8 * MIB,
        "a fresh 2-shard broker allocated {fresh} bytes"
    );
    kafka_clients::create_topic(&broker.address, "steps", 2, &[]);
    let mut wire = Wire::connect(&broker.address);
    // 2 x 40 batches of 100 x 8000-byte records: ~32 MiB per shard (the
    // topic's two partitions land on both shards), past several doubling
    // steps of the reservation (1, 2, 4, 8, 16, 32 MiB).
    let mut acked = 0usize;
    for round in 0..40 {
        for partition in 0..2 {
            let acks = if round % 2 == 0 { -1 } else { 1 };
            let code = produce_with_acks(&mut wire, "steps", partition, batch(100, 8000), acks);
            assert_eq!(code, 0, "round {round} partition {partition}");
            acked += 100;
        }
    }
    let produced = 2 * 40 * 100 * 8000u64;
    let allocated = log_allocated_bytes(&data);
    assert!(
        allocated >= produced,
        "{allocated} bytes allocated for {produced} bytes of records"
    );
    // Each shard holds its data plus at most a step and a half (32 MiB
    // steps at this size): far below the two 1 GiB segments of old.
    assert!(
        allocated <= produced + 2 * 100 * MIB,
        "{allocated} bytes allocated for {produced} bytes of records"
    );
    assert!(
        metric_sum(&broker.metrics, "sluice_log_reserve_waits_total") >= 0.0,
        "the reservation-wait counter is exported"
    );
    let records = kafka_clients::consume(&broker.address, "steps", 2, 0, acked);
    assert_eq!(records.len(), acked);
    assert!(records.iter().all(|record| record.payload.len() == 8000));
    assert_eq!(broker.stop().code(), Some(0));

    let broker = BrokerProcess::start(&data, &[]);
    let mut wire = Wire::connect(&broker.address);
    for round in 0..10 {
        for partition in 0..2 {
            let code = produce_with_acks(&mut wire, "steps", partition, batch(100, 8000), -1);
            assert_eq!(
                code, 0,
                "after the restart, round {round} partition {partition}"
            );
            acked += 100;
        }
    }
    assert_eq!(
        kafka_clients::high_watermarks(&broker.address, "steps", 2)
            .iter()
            .sum::<i64>(),
        acked as i64
    );
    let records = kafka_clients::consume(&broker.address, "steps", 2, 0, acked);
    assert_eq!(records.len(), acked);
    let allocated = log_allocated_bytes(&data);
    assert!(
        allocated <= 2 * 50 * 100 * 8000 + 2 * 100 * MIB,
        "{allocated} bytes allocated after the restart"
    );
    assert_eq!(broker.stop().code(), Some(0));
}
