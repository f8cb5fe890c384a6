//! Exactly-once pipelines of the clients users bring, against the real
//! binary (issue 13, design 5.3 items 6 and 10): each reads an input topic
//! that a plain producer filled with numbered records, writes each record,
//! transformed, to an output topic, and commits its consumer group's offsets
//! in the same transaction as the records (AddOffsetsToTxn, TxnOffsetCommit).
//! A confluent-kafka consume-transform-produce loop aborts every third
//! transaction and rewinds; a Quix Streams application with
//! `processing_guarantee="exactly-once"` is killed with kill -9 halfway and
//! started again.
//!
//! Afterwards a read_committed consumer of the output must see every input
//! record transformed exactly once, read_uncommitted must also see the
//! aborted copies (so the test really went through an abort), and the
//! group's committed offsets (OffsetFetch with `require_stable`) must be the
//! input's end offsets. The readers and the report of the transactional
//! scripts are `txn_clients`'s.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{GroupId, OffsetFetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice::storage::Isolation;

use crate::broker_process::BrokerProcess;
use crate::kafka_clients;
use crate::test_clients::{self, Acked};
use crate::txn_clients::{
    Outcome, TxnReport, assert_read_exactly, listed, read, read_records, stable_and_high_offsets,
};
use crate::wire::Wire;

/// Partitions of the input and output topics.
const PARTITIONS: i32 = 3;
/// How long a pipeline script may take to finish once told to.
const CLIENT_RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the markers of a transaction may take after its commit or abort
/// was answered.
const MARKERS_TIMEOUT: Duration = Duration::from_secs(10);

/// Records per input partition of the consume-transform-produce test.
const CTP_RECORDS_PER_PARTITION: usize = 30;
/// Records it takes from the consumer per transaction, at most.
const CTP_BATCH: usize = 10;
/// It aborts every third transaction.
const CTP_ABORT_EVERY: usize = 3;

/// Records per input partition of the Quix Streams test.
const QUIX_RECORDS_PER_PARTITION: usize = 100;
/// Records in each Quix checkpoint (`commit_every`): each is one
/// transaction, its output records and consumed offsets committed together.
const QUIX_COMMIT_EVERY: usize = 20;
/// The first application's transform stalls at this record, halfway, with
/// the records of the checkpoint before it in an open transaction; the test
/// kills it there.
const QUIX_STALL_AT: usize = QUIX_RECORDS_PER_PARTITION * PARTITIONS as usize / 2;
/// Records the first application commits: its whole checkpoints.
const QUIX_COMMITTED_AT_KILL: usize = (QUIX_STALL_AT - 1) / QUIX_COMMIT_EVERY * QUIX_COMMIT_EVERY;
/// Records of the checkpoint open at the kill, produced and never committed.
const QUIX_OPEN_AT_KILL: usize = QUIX_STALL_AT - 1 - QUIX_COMMITTED_AT_KILL;
// The kill hits a transaction with records, and the restarted application's
// checkpoints end exactly at the end of the input (no partial one left).
const _: () = assert!(QUIX_OPEN_AT_KILL > 0);
const _: () =
    assert!((QUIX_RECORDS_PER_PARTITION * PARTITIONS as usize).is_multiple_of(QUIX_COMMIT_EVERY));
/// `transaction.timeout.ms` of Quix's producer. Each start of a Quix
/// application has a new random transactional.id, so the transaction open
/// at the kill is not fenced by the restart: the coordinator aborts it once
/// this has passed (librdkafka's default is 60 s), and until then it holds
/// the output's last stable offset, so read_committed readers wait.
const QUIX_TRANSACTION_TIMEOUT_MS: u64 = 5000;
/// `session.timeout.ms` of Quix's consumer: the killed member leaves the
/// group after it (librdkafka's default is 45 s), and the restarted one is
/// assigned the partitions only then.
const QUIX_SESSION_TIMEOUT_MS: u64 = 3000;
/// How long the Quix application may take to reach each point of the test.
const QUIX_PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The broker settings of this module: a new group is assigned after 100 ms
/// instead of 3 s, session timeouts down to 1 s are allowed (for
/// [`QUIX_SESSION_TIMEOUT_MS`]), and open transactions are checked against
/// their timeout every 200 ms instead of 10 s.
const BROKER_CONFIG: &str = "\
[groups]
initial_rebalance_delay_ms = 100
session_timeout_min_ms = 1000

[transactions]
abort_check_interval_ms = 200
";

/// A broker with [`BROKER_CONFIG`], the input and output topics
/// ([`PARTITIONS`] each), and `records_per_partition` records
/// `"in-<partition>-<index>"` in each input partition, keyed `"k<n>"`.
fn broker_with_input(
    dir: &Path,
    input: &str,
    output: &str,
    records_per_partition: usize,
) -> BrokerProcess {
    let config = dir.join("sluice.toml");
    std::fs::write(&config, BROKER_CONFIG).unwrap();
    let broker = BrokerProcess::start(
        &dir.join("data"),
        &["--config", config.to_str().expect("the temp path is UTF-8")],
    );
    for topic in [input, output] {
        kafka_clients::create_topic(&broker.address, topic, PARTITIONS, &[]);
    }
    let (producer, acks) = kafka_clients::producer(&broker.address, &[]);
    for index in 0..records_per_partition {
        for partition in 0..PARTITIONS {
            let key = format!("k{}", index * PARTITIONS as usize + partition as usize);
            let value = format!("in-{partition}-{index}");
            kafka_clients::send(
                &producer,
                input,
                Some(partition),
                Some(key.as_bytes()),
                value.as_bytes(),
                &[],
            );
        }
    }
    let acked = kafka_clients::flush(&producer, &acks);
    assert_eq!(acked.len(), records_per_partition * PARTITIONS as usize);
    broker
}

/// `"<label>-<partition>-<index>"` for every index of every partition.
fn numbered(label: &str, records_per_partition: usize) -> BTreeMap<i32, Vec<String>> {
    (0..PARTITIONS)
        .map(|partition| {
            let values = (0..records_per_partition)
                .map(|index| format!("{label}-{partition}-{index}"))
                .collect();
            (partition, values)
        })
        .collect()
}

/// `(error code, committed offset)` of each partition of `topic` for
/// `group`: OffsetFetch v7, the version with `require_stable` (KIP-447).
fn committed_offsets(
    address: &str,
    group: &str,
    topic: &str,
    require_stable: bool,
) -> Vec<(i16, i64)> {
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_require_stable(require_stable)
        .with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partition_indexes((0..PARTITIONS).collect()),
        ]));
    let mut response = Wire::connect(address).call(7, &request);
    assert_eq!(response.error_code, 0, "OffsetFetch {group}");
    let mut partitions = response.topics.remove(0).partitions;
    partitions.sort_by_key(|partition| partition.partition_index);
    partitions
        .iter()
        .map(|partition| (partition.error_code, partition.committed_offset))
        .collect()
}

/// Wait until the group's committed offsets are stable (no transaction
/// holds offsets of it pending) and equal the input's end offsets. A
/// commit's markers are written after EndTxn is answered, so this may take
/// a moment after the client's last commit returned.
fn wait_group_committed_the_input_end(address: &str, group: &str, input: &str) {
    let ends = kafka_clients::high_watermarks(address, input, PARTITIONS);
    let expected: Vec<(i16, i64)> = ends.iter().map(|end| (0, *end)).collect();
    wait_for(
        &format!(
            "(error code, committed offset) per partition of {input} for group {group}, \
             OffsetFetch with require_stable"
        ),
        expected,
        MARKERS_TIMEOUT,
        || committed_offsets(address, group, input, true),
    );
}

/// Records of `topic` (all partitions) past the last stable offset: those
/// of open transactions, and of ended ones whose markers are not written
/// yet.
fn unstable_records(address: &str, topic: &str) -> i64 {
    stable_and_high_offsets(address, topic, PARTITIONS)
        .iter()
        .map(|(stable, high)| high - stable)
        .sum()
}

/// Issue 13, design 5.3 item 6: confluent-kafka consume-transform-produce.
/// A read_committed consumer in a group and a transactional producer turn
/// 90 numbered records of 3 partitions into output records, 10 per
/// transaction, committing the consumer's positions with each transaction
/// (`send_offsets_to_transaction`); every third transaction is aborted
/// after its records and offsets are stored, and the consumer rewinds to
/// the group's committed offsets and processes the batch again. The output
/// read read_committed is every input record exactly once, in input order
/// per partition; read_uncommitted also has the aborted copies; the group's
/// committed offsets are the input's end offsets.
#[test]
fn confluent_kafka_consume_transform_produce_with_aborts_outputs_each_record_once() {
    let test = "confluent_kafka_consume_transform_produce";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    let (input, output, group) = ("ctp-input", "ctp-output", "ctp-group");
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_input(dir.path(), input, output, CTP_RECORDS_PER_PARTITION);

    let mut pipeline = clients.python(
        "confluent_consume_transform_produce.py",
        &[
            &broker.address,
            input,
            output,
            &PARTITIONS.to_string(),
            group,
            &CTP_BATCH.to_string(),
            &CTP_ABORT_EVERY.to_string(),
        ],
    );
    let report: TxnReport = pipeline.finish_as(CLIENT_RUN_TIMEOUT);
    report.assert_finished(&pipeline);
    assert!(
        report.errors.is_empty(),
        "{}: errors:{}",
        report.client,
        listed(&report.errors)
    );
    let outcomes = report.outcomes();
    let every_third_aborted: Vec<Outcome> = (0..outcomes.len())
        .map(|number| {
            if number % CTP_ABORT_EVERY == CTP_ABORT_EVERY - 1 {
                Outcome::Aborted
            } else {
                Outcome::Committed
            }
        })
        .collect();
    assert_eq!(outcomes, every_third_aborted, "{}", report.client);
    assert!(
        outcomes.contains(&Outcome::Aborted),
        "{}: no transaction was aborted: {outcomes:?}",
        report.client
    );
    eprintln!(
        "{test}: {}: {} transactions, {} aborted and their batches processed again",
        report.client,
        outcomes.len(),
        outcomes
            .iter()
            .filter(|outcome| **outcome == Outcome::Aborted)
            .count()
    );

    wait_for(
        &format!("records of {output} past its last stable offset"),
        0,
        MARKERS_TIMEOUT,
        || unstable_records(&broker.address, output),
    );
    let committed = read(
        clients,
        &broker.address,
        output,
        PARTITIONS,
        Isolation::ReadCommitted,
    );
    assert_read_exactly(
        &committed,
        &numbered("ctp", CTP_RECORDS_PER_PARTITION),
        "read_committed output",
    );
    let everything = read(
        clients,
        &broker.address,
        output,
        PARTITIONS,
        Isolation::ReadUncommitted,
    );
    assert_read_exactly(
        &everything,
        &report.values_where(|_| true),
        "read_uncommitted output",
    );
    wait_group_committed_the_input_end(&broker.address, group, input);
}

/// Each `"quix-<input partition>-<index>"` of the Quix application's input
/// is read exactly once, and within each output partition the records of
/// one input partition come in input order (one key stays on one output
/// partition, and Quix processes an input partition in order).
fn assert_quix_output_exactly_once(read: &[Acked]) {
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for record in read {
        *copies.entry(record.value.as_str()).or_default() += 1;
    }
    let expected: Vec<String> = numbered("quix", QUIX_RECORDS_PER_PARTITION)
        .into_values()
        .flatten()
        .collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|value| !copies.contains_key(value.as_str()))
        .collect();
    let mut duplicated: Vec<(&&str, &usize)> =
        copies.iter().filter(|(_, count)| **count > 1).collect();
    duplicated.sort();
    assert!(
        missing.is_empty() && duplicated.is_empty() && read.len() == expected.len(),
        "read_committed output: {} records for {} inputs; missing {} (first {:?}), duplicated \
         {} (first {:?})",
        read.len(),
        expected.len(),
        missing.len(),
        &missing[..missing.len().min(10)],
        duplicated.len(),
        &duplicated[..duplicated.len().min(10)],
    );

    // Every value is one of `expected` now, so it parses.
    let mut last_index: HashMap<(i32, &str), usize> = HashMap::new();
    for record in read {
        let (input_partition, index) = record.value["quix-".len()..]
            .split_once('-')
            .expect("an expected value");
        let index: usize = index.parse().expect("an expected value");
        if let Some(previous) = last_index.insert((record.partition, input_partition), index) {
            assert!(
                previous < index,
                "output partition {}: {:?} at offset {} after index {previous} of input \
                 partition {input_partition}",
                record.partition,
                record.value,
                record.offset
            );
        }
    }
}

/// Poll `probe` until its value is `wanted`; panics with `what` and the
/// last value after `timeout`.
fn wait_for<T: PartialEq + std::fmt::Debug>(
    what: &str,
    wanted: T,
    timeout: Duration,
    mut probe: impl FnMut() -> T,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = probe();
        if seen == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {seen:?} after {timeout:?}, waiting for {wanted:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 13, design 5.3 item 10: a stateless Quix Streams application
/// (`processing_guarantee="exactly-once"`, Quix's own producer settings
/// but a 5 s `transaction.timeout.ms`) turns 300 numbered records of 3
/// partitions into output records with `sdf.apply`, 20 per checkpoint. Its
/// transform stalls at the 150th record: 7 checkpoints (140 records) are
/// committed and the 9 records of the 8th are stored in an open
/// transaction. It is killed there with kill -9 and started again; the
/// coordinator aborts the killed one's transaction after its timeout, and
/// the new application resumes from the committed offsets, processing
/// exactly the other 160 records. The output read read_committed is every
/// input record exactly once; read_uncommitted also has the 9 aborted ones;
/// the group's committed offsets are the input's end offsets.
#[test]
fn quix_streams_exactly_once_across_a_kill_9_outputs_each_record_once() {
    let test = "quix_streams_exactly_once";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    let (input, output, group) = ("quix-input", "quix-output", "quix-group");
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_input(dir.path(), input, output, QUIX_RECORDS_PER_PARTITION);
    let address = broker.address.clone();
    let records = QUIX_RECORDS_PER_PARTITION * PARTITIONS as usize;
    let state_dir = dir.path().join("quix-state");
    let args = |stall_at: usize| -> Vec<String> {
        vec![
            address.clone(),
            input.to_owned(),
            output.to_owned(),
            group.to_owned(),
            state_dir
                .to_str()
                .expect("the temp path is UTF-8")
                .to_owned(),
            QUIX_SESSION_TIMEOUT_MS.to_string(),
            QUIX_TRANSACTION_TIMEOUT_MS.to_string(),
            QUIX_COMMIT_EVERY.to_string(),
            stall_at.to_string(),
        ]
    };
    let start = |stall_at: usize| {
        let args = args(stall_at);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        clients.quix("quix_pipeline.py", &args)
    };
    let committed_sum = || -> i64 {
        committed_offsets(&address, group, input, false)
            .iter()
            .map(|(_, offset)| (*offset).max(0))
            .sum()
    };

    let mut first = start(QUIX_STALL_AT);
    assert!(
        first.wait_for_stderr("stalled ", QUIX_PROGRESS_TIMEOUT),
        "the first application never reached record {QUIX_STALL_AT};\n{}",
        first.stderr_tail()
    );
    wait_for(
        "(records committed, records stored in the open transaction) while the first \
         application stalls",
        (QUIX_COMMITTED_AT_KILL as i64, QUIX_OPEN_AT_KILL as i64),
        QUIX_PROGRESS_TIMEOUT,
        || (committed_sum(), unstable_records(&address, output)),
    );
    first.kill9();

    let mut second = start(0);
    let started = Instant::now();
    wait_for(
        "records committed by the restarted application",
        records as i64,
        QUIX_PROGRESS_TIMEOUT,
        committed_sum,
    );
    let caught_up = started.elapsed();
    #[derive(serde::Deserialize)]
    struct QuixReport {
        client: String,
        error: Option<String>,
    }
    let report: QuixReport = second.finish_as(CLIENT_RUN_TIMEOUT);
    assert!(
        report.error.is_none(),
        "{}: {:?};\n{}",
        report.client,
        report.error,
        second.stderr_tail()
    );
    eprintln!(
        "{test}: {}: killed with {QUIX_COMMITTED_AT_KILL} records committed and \
         {QUIX_OPEN_AT_KILL} in its open transaction; the restart committed all {records} in \
         {caught_up:?}",
        report.client,
    );
    assert_eq!(
        second.stderr_lines("processed "),
        records - QUIX_COMMITTED_AT_KILL,
        "the restarted application processes everything after the committed offsets, once"
    );
    // The killed application's transaction had no offsets (Quix sends them
    // with the commit), so the restart did not wait for its abort; until
    // the coordinator aborts it, it holds the last stable offset and
    // read_committed readers wait.
    wait_for(
        &format!("records of {output} past its last stable offset after the restart"),
        0,
        QUIX_PROGRESS_TIMEOUT,
        || unstable_records(&address, output),
    );

    let committed = read_records(
        clients,
        &address,
        output,
        PARTITIONS,
        Isolation::ReadCommitted,
    );
    assert_quix_output_exactly_once(&committed);
    let everything = read_records(
        clients,
        &address,
        output,
        PARTITIONS,
        Isolation::ReadUncommitted,
    );
    assert_eq!(
        everything.len(),
        records + QUIX_OPEN_AT_KILL,
        "read_uncommitted reads every output record and the aborted ones of the killed \
         application"
    );
    wait_group_committed_the_input_end(&address, group, input);
}
