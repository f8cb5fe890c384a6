//! `kill -9` during acks=all and acks=1 production: after a restart, every
//! record the broker acknowledged comes back exactly once, at its offset,
//! and in order within its partition. acks=1 is answered once the batch is
//! written to its segment file (issue 19 item 4), so a crash of the broker
//! process (not of the machine) loses none of it either.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::producer::Producer;

use crate::broker_process::BrokerProcess;
use crate::kafka_clients::{self, Record};

const PARTITIONS: i32 = 4;

/// Produce with `acks` (`"all"` or `"1"`) for `lifetime`, then kill the
/// broker mid-stream. Returns the acknowledged records.
fn produce_until_killed(
    broker: BrokerProcess,
    round: usize,
    lifetime: Duration,
    acks_setting: &str,
) -> Vec<Record> {
    let settings = [
        ("linger.ms", "2"),
        ("message.timeout.ms", "4000"),
        ("retries", "0"),
        ("acks", acks_setting),
    ];
    let (producer, acks) = kafka_clients::producer(&broker.address, &settings);
    // Padding makes batches large enough that, with acks=1, a broker that
    // answered before writing would hold answered records in its buffers
    // at any moment.
    let padding = "p".repeat(if acks_setting == "1" { 1000 } else { 0 });
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < lifetime {
        let payload = format!("round{round}-seq{seq}-{padding}");
        let partition = (seq % PARTITIONS as u64) as i32;
        kafka_clients::send(
            &producer,
            "durable",
            Some(partition),
            None,
            payload.as_bytes(),
            &[],
        );
        seq += 1;
        if seq.is_multiple_of(200) {
            producer.poll(Duration::from_millis(1));
        }
    }
    broker.kill9();
    // Collect the reports already received; the rest fail against no broker.
    let _ = producer.flush(Duration::from_secs(6));
    let acked = acks.delivered.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "round {round}: nothing was acknowledged before the kill"
    );
    acked
}

#[test]
fn acked_records_survive_kill_9_exactly_once_and_in_order() {
    survive_kill_9("all");
}

/// Issue 19 item 4: acks=1 used to be answered while the batch sat in the
/// broker's write buffers, so a kill -9 lost the newest acknowledged
/// records (checked: answering acks=1 before the write fails this test).
#[test]
fn acks_1_records_survive_kill_9_exactly_once_and_in_order() {
    survive_kill_9("1");
}

fn survive_kill_9(acks_setting: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<Record> = Vec::new();
    for round in 0..2 {
        // Partly filled write buffers wait 300 ms (a debug-build
        // failpoint), so answers given before the write would be lost.
        let mut command = BrokerProcess::command(dir.path(), &[]);
        command.env("SLUICE_FAILPOINT", "log_partial_writes_wait");
        let broker = BrokerProcess::start_command(command);
        if round == 0 {
            kafka_clients::create_topic(&broker.address, "durable", PARTITIONS, &[]);
        }
        acked.extend(produce_until_killed(
            broker,
            round,
            Duration::from_millis(1500),
            acks_setting,
        ));
    }

    let broker = BrokerProcess::start(dir.path(), &[]);
    let stored: i64 = kafka_clients::high_watermarks(&broker.address, "durable", PARTITIONS)
        .iter()
        .sum();
    let consumed =
        kafka_clients::consume(&broker.address, "durable", PARTITIONS, 0, stored as usize);

    let mut copies: HashMap<&[u8], usize> = HashMap::new();
    for record in &consumed {
        *copies.entry(&record.payload).or_default() += 1;
    }
    let by_position: HashMap<(i32, i64), &[u8]> = consumed
        .iter()
        .map(|record| ((record.partition, record.offset), record.payload.as_slice()))
        .collect();
    for record in &acked {
        let at = by_position.get(&(record.partition, record.offset));
        assert_eq!(
            at.copied(),
            Some(record.payload.as_slice()),
            "acknowledged {:?} missing or replaced at partition {} offset {}",
            String::from_utf8_lossy(&record.payload[..record.payload.len().min(24)]),
            record.partition,
            record.offset
        );
        assert_eq!(
            copies[record.payload.as_slice()],
            1,
            "acknowledged record stored more than once"
        );
    }
    // Within a partition, a round's sequence numbers only increase.
    let mut last_seq: HashMap<(i32, String), u64> = HashMap::new();
    for record in &consumed {
        let text = String::from_utf8_lossy(&record.payload).to_string();
        let (round, rest) = text.split_once("-seq").expect("payload format");
        let seq: u64 = rest.split('-').next().unwrap().parse().unwrap();
        if let Some(previous) = last_seq.insert((record.partition, round.to_owned()), seq) {
            assert!(
                seq > previous,
                "partition {} out of order: {previous} then {seq}",
                record.partition
            );
        }
    }
    assert!(
        acked.len() > 500,
        "only {} records were acknowledged",
        acked.len()
    );
}
