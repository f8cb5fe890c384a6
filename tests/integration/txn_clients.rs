//! Transactions of the clients users bring, against the real binary (issue
//! 13, design 5.3 items 5, 7, 8 and a light 9): a kafkajs transaction
//! committed and one aborted; confluent-kafka transactions alternating
//! commit and abort; two confluent-kafka producers with one transactional
//! id, the newer fencing the older; confluent-kafka aborting without a
//! flush right after a commit; a transactional producer killed with
//! kill -9 inside a transaction, which the coordinator must abort after its
//! timeout; and a transactional producer committing through repeated kill
//! -9 of the broker.
//!
//! Each producer script (in `tests/clients/`) reports every transaction it
//! ended with its records' values and how it ended (the report
//! `tests/clients/python/txn_report.py` describes). The topics are then read
//! from offset 0 by a confluent-kafka consumer at both isolation levels:
//! read_committed must return exactly the committed transactions' records,
//! once each and in order within each partition, and read_uncommitted every
//! stored record, aborted ones included, so that what read_committed leaves
//! out was really there to leave out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{BrokerId, ListOffsetsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde::Deserialize;
use sluice::storage::Isolation;

use crate::broker_process::{BrokerProcess, Launch, free_loopback_address};
use crate::kafka_clients;
use crate::test_clients::{self, Acked, ClientProcess, Clients};
use crate::wire::Wire;

/// How long a producer script may take to run its transactions.
const CLIENT_RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a consumer script may take to read a topic to its end.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The errors librdkafka may report to a producer fenced by a newer one with
/// its transactional id: its own `_FENCED`, or the broker's codes
/// (KIP-588's PRODUCER_FENCED, the older INVALID_PRODUCER_EPOCH).
const FENCED_ERRORS: [&str; 3] = ["_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"];

/// `transaction.timeout.ms` of the producer the abandoned-transaction test
/// kills.
const ABANDONED_TIMEOUT_MS: u64 = 3000;
/// How often the broker looks for timed-out transactions in that test.
const ABANDONED_ABORT_CHECK_INTERVAL_MS: u64 = 200;
/// How long after the checks of the open transaction it must be aborted:
/// the rest of its timeout, a check interval, and the markers, with room for
/// a loaded machine.
const ABANDONED_ABORT_WITHIN: Duration = Duration::from_secs(15);

/// Broker kill -9 and restarts while the transactional producer runs.
const RESTARTS: usize = 2;
/// Transactions committed in each broker lifetime before it is killed.
const COMMITS_PER_LIFETIME: usize = 5;
/// How long the producer runs against no broker before the restart.
const BROKER_DOWN: Duration = Duration::from_millis(300);

/// What a transactional producer script reports.
#[derive(Debug, Deserialize)]
pub(crate) struct TxnReport {
    /// Client library and version.
    pub(crate) client: String,
    /// The transactions the script ended, in order.
    pub(crate) transactions: Vec<Transaction>,
    /// Every error the client raised or reported, in order.
    pub(crate) errors: Vec<ClientError>,
    /// The error that stopped the script, if one did.
    pub(crate) error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Transaction {
    pub(crate) label: String,
    /// `"<label>-<partition>-<index>"`, in the order produced.
    pub(crate) values: Vec<String>,
    pub(crate) outcome: Outcome,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Outcome {
    /// `commit_transaction()` returned.
    Committed,
    /// `abort_transaction()` returned.
    Aborted,
    /// The producer failed fatally first: all or nothing may be visible.
    Unknown,
    /// Never ended by the client.
    Open,
}

/// One error as the client classified it.
#[derive(Debug, Deserialize)]
pub(crate) struct ClientError {
    /// The call or callback that raised it.
    at: String,
    /// librdkafka's error name (`_FENCED`, `INVALID_REQUEST`, ...) or the
    /// kafkajs error type.
    name: String,
    fatal: bool,
    retriable: bool,
    abortable: bool,
    message: String,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ClientError {
            at,
            name,
            fatal,
            retriable,
            abortable,
            message,
        } = self;
        write!(
            f,
            "{at}: {name} (fatal {fatal}, retriable {retriable}, abortable {abortable}): {message}"
        )
    }
}

/// One error per line, for messages.
pub(crate) fn listed<'a>(errors: impl IntoIterator<Item = &'a ClientError>) -> String {
    errors
        .into_iter()
        .map(|error| format!("\n  {error}"))
        .collect()
}

impl TxnReport {
    /// Panics, with the client's errors and stderr, if the script stopped on
    /// an error.
    /// The scripts commit even-numbered transactions and abort odd ones:
    /// `transactions` of them must have ended that way.
    fn assert_alternating_outcomes(&self, transactions: usize) {
        let expected: Vec<Outcome> = (0..transactions)
            .map(|number| {
                if number % 2 == 0 {
                    Outcome::Committed
                } else {
                    Outcome::Aborted
                }
            })
            .collect();
        assert_eq!(self.outcomes(), expected, "{}", self.client);
    }

    pub(crate) fn assert_finished(&self, client: &ClientProcess) {
        assert!(
            self.error.is_none(),
            "{}: stopped by {:?}; errors:{};\n{}",
            self.client,
            self.error,
            listed(&self.errors),
            client.stderr_tail()
        );
    }

    pub(crate) fn outcomes(&self) -> Vec<Outcome> {
        self.transactions
            .iter()
            .map(|transaction| transaction.outcome)
            .collect()
    }

    /// The values of the transactions `visible` picks, per partition, in the
    /// order they were produced.
    pub(crate) fn values_where(
        &self,
        visible: impl Fn(&Transaction) -> bool,
    ) -> BTreeMap<i32, Vec<String>> {
        by_partition(
            self.transactions
                .iter()
                .filter(|transaction| visible(transaction))
                .flat_map(|transaction| transaction.values.iter().map(String::as_str)),
        )
    }
}

/// What `confluent_consumer.py` reports.
#[derive(Debug, Deserialize)]
struct Consumed {
    client: String,
    /// Every record read, in the order consumed.
    records: Vec<Acked>,
    error: Option<String>,
}

/// The partition a `"<label>-<partition>-<index>"` value was written to.
fn partition_of(value: &str) -> i32 {
    let mut fields = value.rsplitn(3, '-');
    let (_index, partition) = (fields.next(), fields.next());
    partition
        .and_then(|partition| partition.parse().ok())
        .unwrap_or_else(|| panic!("value {value:?} is not <label>-<partition>-<index>"))
}

pub(crate) fn by_partition<'a>(
    values: impl Iterator<Item = &'a str>,
) -> BTreeMap<i32, Vec<String>> {
    let mut partitions: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for value in values {
        partitions
            .entry(partition_of(value))
            .or_default()
            .push(value.to_owned());
    }
    partitions
}

/// Every record of `topic`, read from offset 0 to the end `isolation` sets
/// (the high watermark, or the last stable offset) by a confluent-kafka
/// consumer; each value `"<label>-<partition>-<index>"` must be read from
/// its partition.
pub(crate) fn read(
    clients: &Clients,
    address: &str,
    topic: &str,
    partitions: i32,
    isolation: Isolation,
) -> Vec<Acked> {
    let records = read_records(clients, address, topic, partitions, isolation);
    for record in &records {
        assert_eq!(
            partition_of(&record.value),
            record.partition,
            "{:?} read from partition {} at offset {}",
            record.value,
            record.partition,
            record.offset
        );
    }
    records
}

/// [`read`] for values that say nothing of their partition.
pub(crate) fn read_records(
    clients: &Clients,
    address: &str,
    topic: &str,
    partitions: i32,
    isolation: Isolation,
) -> Vec<Acked> {
    let level = match isolation {
        Isolation::ReadUncommitted => "read_uncommitted",
        Isolation::ReadCommitted => "read_committed",
    };
    let partitions = partitions.to_string();
    let mut consumer = clients.python(
        "confluent_consumer.py",
        &[address, topic, &partitions, level],
    );
    let consumed: Consumed = consumer.finish_as(READ_TIMEOUT);
    assert!(
        consumed.error.is_none(),
        "{} reading {topic} {level}: {:?};\n{}",
        consumed.client,
        consumed.error,
        consumer.stderr_tail()
    );
    consumed.records
}

/// The records read are exactly `expected`: the same values in the same
/// order within each partition, none missing, none twice, nothing else.
pub(crate) fn assert_read_exactly(
    read: &[Acked],
    expected: &BTreeMap<i32, Vec<String>>,
    what: &str,
) {
    let found = by_partition(read.iter().map(|record| record.value.as_str()));
    for partition in found.keys().chain(expected.keys()) {
        let found = found.get(partition).map(Vec::as_slice).unwrap_or_default();
        let expected = expected
            .get(partition)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if found != expected {
            let missing: Vec<_> = expected.iter().filter(|v| !found.contains(v)).collect();
            let extra: Vec<_> = found.iter().filter(|v| !expected.contains(v)).collect();
            panic!(
                "{what}, partition {partition}: read {} records, expected {}; missing {:?}, \
                 not expected {:?}; read in order: {found:?}",
                found.len(),
                expected.len(),
                &missing[..missing.len().min(10)],
                &extra[..extra.len().min(10)],
            );
        }
    }
}

/// `(last stable offset, high watermark)` of each partition: ListOffsets
/// for the latest offset at read_committed and at read_uncommitted.
pub(crate) fn stable_and_high_offsets(
    address: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i64, i64)> {
    let mut wire = Wire::connect(address);
    let mut latest = |isolation_level: i8| -> Vec<i64> {
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_isolation_level(isolation_level)
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(
                        (0..partitions)
                            .map(|partition| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(partition)
                                    .with_timestamp(-1)
                            })
                            .collect(),
                    ),
            ]);
        let mut response = wire.call(5, &request);
        let mut answers = response.topics.remove(0).partitions;
        answers.sort_by_key(|answer| answer.partition_index);
        answers
            .iter()
            .map(|answer| {
                assert_eq!(
                    answer.error_code, 0,
                    "ListOffsets {topic}/{} isolation {isolation_level}",
                    answer.partition_index
                );
                answer.offset
            })
            .collect()
    };
    let stable = latest(1);
    let high = latest(0);
    stable.into_iter().zip(high).collect()
}

/// A fresh broker (the default config plus `extra`) with `topic` created.
fn broker_with_topic(
    dir: &std::path::Path,
    extra: &[&str],
    topic: &str,
    partitions: i32,
) -> BrokerProcess {
    let broker = BrokerProcess::start(&dir.join("data"), extra);
    kafka_clients::create_topic(&broker.address, topic, partitions, &[]);
    broker
}

/// Issue 13, design 5.3 item 5: kafkajs's
/// `producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 })`
/// commits a transaction over 2 partitions, aborts the next and commits a
/// third. read_committed sees exactly the committed two; read_uncommitted
/// sees all three; the commit and abort markers take an offset each but are
/// never handed to the consumer as records.
#[test]
fn kafkajs_transactions_committed_are_read_committed_and_aborted_are_not() {
    let test = "kafkajs_transactions";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    const PARTITIONS: i32 = 2;
    const RECORDS: usize = 10;
    let topic = "kafkajs-transactions";
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topic(dir.path(), &[], topic, PARTITIONS);

    let mut producer = clients.node(
        "kafkajs_transactions.js",
        &[
            &broker.address,
            topic,
            &PARTITIONS.to_string(),
            &RECORDS.to_string(),
        ],
    );
    let report: TxnReport = producer.finish_as(CLIENT_RUN_TIMEOUT);
    report.assert_finished(&producer);
    assert_eq!(
        report.outcomes(),
        [Outcome::Committed, Outcome::Aborted, Outcome::Committed],
        "{}",
        report.client
    );

    let committed = read(
        clients,
        &broker.address,
        topic,
        PARTITIONS,
        Isolation::ReadCommitted,
    );
    assert_read_exactly(
        &committed,
        &report.values_where(|transaction| transaction.outcome == Outcome::Committed),
        "read_committed",
    );
    let everything = read(
        clients,
        &broker.address,
        topic,
        PARTITIONS,
        Isolation::ReadUncommitted,
    );
    assert_read_exactly(
        &everything,
        &report.values_where(|_| true),
        "read_uncommitted",
    );

    let markers_per_partition = report.transactions.len() as i64;
    let records_per_partition = (everything.len() as i64) / i64::from(PARTITIONS);
    for (partition, (stable, high)) in stable_and_high_offsets(&broker.address, topic, PARTITIONS)
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            (stable, high),
            (
                records_per_partition + markers_per_partition,
                records_per_partition + markers_per_partition
            ),
            "partition {partition}: (last stable offset, high watermark) after {} records and \
             one marker per transaction",
            records_per_partition
        );
    }
}

/// Issue 13, design 5.3: a confluent-kafka transactional producer runs six
/// transactions over 3 partitions, committing and aborting in turn. A
/// read_committed confluent-kafka consumer reads exactly the committed
/// records, in order, once each; read_uncommitted reads the aborted ones too.
#[test]
fn confluent_kafka_transactions_alternating_commit_and_abort_read_committed_exactly() {
    let test = "confluent_kafka_transactions";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    const PARTITIONS: i32 = 3;
    const TRANSACTIONS: usize = 6;
    const RECORDS: usize = 12;
    let topic = "confluent-transactions";
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topic(dir.path(), &[], topic, PARTITIONS);

    let mut producer = clients.python(
        "confluent_transactions.py",
        &[
            &broker.address,
            topic,
            &PARTITIONS.to_string(),
            &TRANSACTIONS.to_string(),
            &RECORDS.to_string(),
        ],
    );
    let report: TxnReport = producer.finish_as(CLIENT_RUN_TIMEOUT);
    report.assert_finished(&producer);
    report.assert_alternating_outcomes(TRANSACTIONS);

    let committed = read(
        clients,
        &broker.address,
        topic,
        PARTITIONS,
        Isolation::ReadCommitted,
    );
    assert_read_exactly(
        &committed,
        &report.values_where(|transaction| transaction.outcome == Outcome::Committed),
        "read_committed",
    );
    let everything = read(
        clients,
        &broker.address,
        topic,
        PARTITIONS,
        Isolation::ReadUncommitted,
    );
    assert_read_exactly(
        &everything,
        &report.values_where(|_| true),
        "read_uncommitted",
    );
    for (partition, (stable, high)) in stable_and_high_offsets(&broker.address, topic, PARTITIONS)
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            stable, high,
            "partition {partition}: no transaction is open, so the last stable offset is the \
             high watermark"
        );
    }
}

/// Found by the breaker trial: a confluent-kafka producer that aborts
/// without flushing, right after a commit, must not fail fatally. Its
/// AddPartitionsToTxn reaches the coordinator while the committed
/// transaction's markers are written (a debug-build failpoint holds them
/// 300 ms); librdkafka counts that request as one that may have added the
/// partition even when it was refused with CONCURRENT_TRANSACTIONS, and
/// sends EndTxn(abort), which the coordinator answered INVALID_TXN_STATE
/// once the commit had completed: fatal for the producer, around its third
/// transaction. Every transaction must end as the script asked, and
/// read_committed read exactly the committed ones.
#[test]
fn confluent_kafka_abort_without_flush_right_after_a_commit_is_not_fatal() {
    let test = "confluent_kafka_abort_unflushed";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    const TRANSACTIONS: usize = 8;
    const RECORDS: usize = 10;
    // Inside the 300 ms the failpoint holds the markers: the abort comes
    // while the coordinator is still busy with the commit before it.
    const PAUSE_BEFORE_ABORT_MS: u64 = 100;
    let topic = "confluent-abort-unflushed";
    let dir = tempfile::tempdir().unwrap();
    let mut command = BrokerProcess::command(&dir.path().join("data"), &[]);
    command.env("SLUICE_FAILPOINT", "txn_slow_markers");
    let broker = BrokerProcess::start_command(command);
    kafka_clients::create_topic(&broker.address, topic, 1, &[]);

    let mut producer = clients.python(
        "confluent_transactions.py",
        &[
            &broker.address,
            topic,
            "1",
            &TRANSACTIONS.to_string(),
            &RECORDS.to_string(),
            &PAUSE_BEFORE_ABORT_MS.to_string(),
        ],
    );
    let report: TxnReport = producer.finish_as(CLIENT_RUN_TIMEOUT);
    report.assert_finished(&producer);
    report.assert_alternating_outcomes(TRANSACTIONS);

    let committed = read(clients, &broker.address, topic, 1, Isolation::ReadCommitted);
    assert_read_exactly(
        &committed,
        &report.values_where(|transaction| transaction.outcome == Outcome::Committed),
        "read_committed",
    );
    // EndTxn is answered once the outcome is decided, before the markers
    // are written (KIP-98), and the failpoint holds them 300 ms: the last
    // abort's marker may land just after the reads above.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (stable, high) = stable_and_high_offsets(&broker.address, topic, 1)[0];
        if stable == high {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a transaction is left open on the partition: last stable offset {stable}, high \
             watermark {high}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 13, design 5.3 item 8 (KIP-98 fencing): a second confluent-kafka
/// producer with the first's transactional id calls `init_transactions()`
/// while the first has records stored in an open transaction. The first's
/// next produce and commit fail with a fatal fenced error, and its late
/// records are refused; its open transaction is aborted; the second commits
/// normally and read_committed sees only the second's records.
#[test]
fn second_producer_with_the_transactional_id_fences_the_first_and_aborts_its_transaction() {
    let test = "confluent_kafka_fencing";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    const PARTITIONS: i32 = 2;
    const RECORDS: usize = 6;
    let topic = "confluent-fencing";
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topic(dir.path(), &[], topic, PARTITIONS);

    let mut producers = clients.python(
        "confluent_txn_fencing.py",
        &[
            &broker.address,
            topic,
            &PARTITIONS.to_string(),
            &RECORDS.to_string(),
        ],
    );
    let report: TxnReport = producers.finish_as(CLIENT_RUN_TIMEOUT);
    report.assert_finished(&producers);
    let [first, second] = &report.transactions[..] else {
        panic!("two transactions reported: {:#?}", report.transactions);
    };
    let first_errors: Vec<&ClientError> = report
        .errors
        .iter()
        .filter(|error| error.at.starts_with("first"))
        .collect();
    eprintln!(
        "{}: the fenced producer was told:{}",
        report.client,
        listed(first_errors.iter().copied())
    );
    assert_ne!(
        first.outcome,
        Outcome::Committed,
        "the fenced producer's commit returned; its errors:{}",
        listed(first_errors.iter().copied())
    );
    assert!(
        first_errors
            .iter()
            .any(|error| error.at == "first commit_transaction"
                && error.fatal
                && FENCED_ERRORS.contains(&error.name.as_str())),
        "the fenced producer's commit failed with a fatal fenced error; its errors:{}",
        listed(first_errors.iter().copied())
    );
    assert_eq!(second.outcome, Outcome::Committed);
    assert!(
        report
            .errors
            .iter()
            .all(|error| !error.at.starts_with("second")),
        "the newer producer saw errors:{}",
        listed(&report.errors)
    );

    let committed = read(
        clients,
        &broker.address,
        topic,
        PARTITIONS,
        Isolation::ReadCommitted,
    );
    assert_read_exactly(
        &committed,
        &report.values_where(|transaction| transaction.label == "second"),
        "read_committed",
    );
    // The first's records from before the fencing are stored (aborted); the
    // ones it sent after are refused, never stored.
    let everything = read(
        clients,
        &broker.address,
        topic,
        PARTITIONS,
        Isolation::ReadUncommitted,
    );
    assert_read_exactly(
        &everything,
        &by_partition(
            report
                .transactions
                .iter()
                .flat_map(|transaction| &transaction.values)
                .map(String::as_str)
                .filter(|value| !value.starts_with("late-")),
        ),
        "read_uncommitted",
    );
}

/// Issue 13, design 5.3 item 7: a transactional producer
/// (`transaction.timeout.ms` 3000) stores records in an open transaction and
/// is killed with kill -9. Plain records written after it wait behind the
/// open transaction: the last stable offset stays at its first record and a
/// read_committed consumer reads nothing. Within seconds of the timeout the
/// coordinator (checking every 200 ms) aborts it: the last stable offset
/// reaches the high watermark and read_committed reads the plain records,
/// never the abandoned ones.
#[test]
fn transaction_of_a_killed_producer_is_aborted_after_its_timeout() {
    let test = "abandoned_transaction_times_out";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    const PARTITIONS: i32 = 2;
    const RECORDS: usize = 6;
    let topic = "abandoned-transaction";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("transactions.toml");
    std::fs::write(
        &config,
        format!("[transactions]\nabort_check_interval_ms = {ABANDONED_ABORT_CHECK_INTERVAL_MS}\n"),
    )
    .unwrap();
    let broker = broker_with_topic(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        topic,
        PARTITIONS,
    );

    let mut producer = clients.python(
        "confluent_txn_abandoned.py",
        &[
            &broker.address,
            topic,
            &PARTITIONS.to_string(),
            &RECORDS.to_string(),
            &ABANDONED_TIMEOUT_MS.to_string(),
        ],
    );
    if !producer.wait_for_stderr("produced", Duration::from_secs(30)) {
        let report: TxnReport = producer.finish_as(CLIENT_RUN_TIMEOUT);
        report.assert_finished(&producer);
        panic!(
            "the producer never stored its transaction;\n{}",
            producer.stderr_tail()
        );
    }
    let produced_at = Instant::now();
    producer.kill9();

    let (plain, acks) = kafka_clients::producer(&broker.address, &[]);
    let mut plain_values = Vec::new();
    for index in 0..RECORDS {
        let partition = (index as i32) % PARTITIONS;
        let value = format!("plain-{partition}-{}", index as i32 / PARTITIONS);
        kafka_clients::send(&plain, topic, Some(partition), None, value.as_bytes(), &[]);
        plain_values.push(value);
    }
    kafka_clients::flush(&plain, &acks);

    let offsets = stable_and_high_offsets(&broker.address, topic, PARTITIONS);
    let blocked = read(
        clients,
        &broker.address,
        topic,
        PARTITIONS,
        Isolation::ReadCommitted,
    );
    let checked_within = produced_at.elapsed();
    assert!(
        checked_within < Duration::from_millis(ABANDONED_TIMEOUT_MS),
        "the checks of the open transaction took {checked_within:?}, past its timeout: too \
         slow a machine for this test"
    );
    let abandoned_per_partition = RECORDS as i64 / i64::from(PARTITIONS);
    for (partition, (stable, high)) in offsets.iter().enumerate() {
        assert_eq!(
            (*stable, *high),
            (0, 2 * abandoned_per_partition),
            "partition {partition}: (last stable offset, high watermark) with the transaction \
             open at offset 0 and plain records after it"
        );
    }
    assert!(
        blocked.is_empty(),
        "read_committed read past the open transaction: {blocked:?}"
    );

    let deadline = Instant::now() + ABANDONED_ABORT_WITHIN;
    let offsets = loop {
        let offsets = stable_and_high_offsets(&broker.address, topic, PARTITIONS);
        if offsets.iter().all(|(stable, high)| stable == high) {
            break offsets;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned transaction was not aborted within {ABANDONED_ABORT_WITHIN:?} \
             after the checks: (last stable offset, high watermark) {offsets:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "{test}: the open transaction was checked {checked_within:?} and the last stable \
         offset reached the high watermark {:?} after the producer stored its records \
         (timeout {ABANDONED_TIMEOUT_MS} ms): {offsets:?}",
        produced_at.elapsed()
    );
    for (partition, (_, high)) in offsets.iter().enumerate() {
        assert_eq!(
            *high,
            2 * abandoned_per_partition + 1,
            "partition {partition}: the abort marker follows the abandoned and plain records"
        );
    }

    let committed = read(
        clients,
        &broker.address,
        topic,
        PARTITIONS,
        Isolation::ReadCommitted,
    );
    assert_read_exactly(
        &committed,
        &by_partition(plain_values.iter().map(String::as_str)),
        "read_committed after the abort",
    );
    let everything = read(
        clients,
        &broker.address,
        topic,
        PARTITIONS,
        Isolation::ReadUncommitted,
    );
    let abandoned = everything
        .iter()
        .filter(|record| record.value.starts_with("abandoned-"))
        .count();
    assert_eq!(
        (abandoned, everything.len()),
        (RECORDS, 2 * RECORDS),
        "read_uncommitted reads the abandoned records and the plain ones: {everything:?}"
    );
}

/// Issue 13, design 5.3 item 9 (light): a confluent-kafka transactional
/// producer commits transactions of 30 records over 3 partitions in a loop
/// while the broker is killed with kill -9 and restarted on the same port
/// twice (first while a transaction is open with its records stored, then
/// just after a commit returned), handling each error as librdkafka classifies it (retriable: call
/// again; abortable: abort; fatal: a new producer with the same
/// transactional id). Afterwards read_committed reads every record of every
/// transaction whose commit returned exactly once and in order, nothing of
/// the aborted ones, and all or nothing of each whose producer failed
/// fatally inside it.
#[test]
fn confluent_kafka_transactions_across_broker_kill_9_commit_exactly_once() {
    let test = "confluent_kafka_transactions_across_kill_9";
    let Some(clients) = test_clients::installed(test) else {
        return;
    };
    const PARTITIONS: i32 = 3;
    const RECORDS: usize = 30;
    let topic = "confluent-transactions-kill-9";
    let dir = tempfile::tempdir().unwrap();
    let address = free_loopback_address();
    let launch = Launch {
        listen: &address,
        ..Launch::default()
    };
    let mut broker = BrokerProcess::start_with(dir.path(), &[], &launch);
    assert_eq!(broker.address, address, "the broker listens where asked");
    kafka_clients::create_topic(&address, topic, PARTITIONS, &[]);

    let mut producer = clients.python(
        "confluent_txn_across_broker_kills.py",
        &[
            &address,
            topic,
            &PARTITIONS.to_string(),
            &RECORDS.to_string(),
        ],
    );
    let mut committed_at_kill = Vec::with_capacity(RESTARTS);
    for _ in 0..=RESTARTS {
        let wanted = producer.stderr_lines("committed ") + COMMITS_PER_LIFETIME;
        if !producer.wait_for_stderr_lines("committed ", wanted, Duration::from_secs(30)) {
            let report: TxnReport = producer.finish_as(CLIENT_RUN_TIMEOUT);
            report.assert_finished(&producer);
            panic!(
                "{}: fewer than {COMMITS_PER_LIFETIME} commits within 30 s of the broker's \
                 start (committed at each kill: {committed_at_kill:?}); errors:{};\n{}",
                report.client,
                listed(&report.errors),
                producer.stderr_tail()
            );
        }
        if committed_at_kill.len() == RESTARTS {
            break;
        }
        if committed_at_kill.len() % 2 == 0 {
            // Kill with a transaction open and its records stored: the
            // restarted coordinator must still know it to commit it.
            let stored = producer.stderr_lines("stored ") + 1;
            assert!(
                producer.wait_for_stderr_lines("stored ", stored, Duration::from_secs(30)),
                "no further transaction stored its records;\n{}",
                producer.stderr_tail()
            );
        }
        committed_at_kill.push(producer.stderr_lines("committed "));
        broker.kill9();
        std::thread::sleep(BROKER_DOWN);
        broker = BrokerProcess::start_with(dir.path(), &[], &launch);
    }
    let report: TxnReport = producer.finish_as(CLIENT_RUN_TIMEOUT);
    report.assert_finished(&producer);

    let count = |outcome| {
        report
            .transactions
            .iter()
            .filter(|transaction| transaction.outcome == outcome)
            .count()
    };
    let error_names: BTreeMap<&str, usize> =
        report
            .errors
            .iter()
            .fold(BTreeMap::new(), |mut names, error| {
                *names.entry(error.name.as_str()).or_default() += 1;
                names
            });
    eprintln!(
        "{}: across {RESTARTS} broker kill -9 restarts (committed at each kill: \
         {committed_at_kill:?}): {} transactions committed, {} aborted, {} unknown; errors by \
         name: {error_names:?}",
        report.client,
        count(Outcome::Committed),
        count(Outcome::Aborted),
        count(Outcome::Unknown),
    );

    let committed = read(
        clients,
        &address,
        topic,
        PARTITIONS,
        Isolation::ReadCommitted,
    );
    // Each transaction whose producer failed fatally is visible whole or not
    // at all; which, the read says.
    let read_values: std::collections::HashSet<&str> = committed
        .iter()
        .map(|record| record.value.as_str())
        .collect();
    for transaction in &report.transactions {
        if transaction.outcome == Outcome::Unknown {
            let visible = transaction
                .values
                .iter()
                .filter(|value| read_values.contains(value.as_str()))
                .count();
            assert!(
                visible == 0 || visible == transaction.values.len(),
                "transaction {} (outcome unknown) is partly visible: {visible} of {} records",
                transaction.label,
                transaction.values.len()
            );
        }
    }
    let visible = report.values_where(|transaction| match transaction.outcome {
        Outcome::Committed => true,
        Outcome::Unknown => transaction
            .values
            .first()
            .is_some_and(|value| read_values.contains(value.as_str())),
        Outcome::Aborted | Outcome::Open => false,
    });
    assert_read_exactly(&committed, &visible, "read_committed");
    drop(broker);
}
