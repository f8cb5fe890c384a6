//! A transactional producer's transactions, for `sluice bench produce
//! --transactional` (KIP-98; issue 13, docs/exactly-once-design.md 5.4).
//!
//! Each producer connection has its own transactional id,
//! `<topic>-<index>` (the topic is the half's own, so ids are not shared
//! between halves; a rerun on the same topic bumps the id's epoch). It
//! asks FindCoordinator and InitProducerId once, then loops: AddPartitionsToTxn
//! with all of its partitions, `--txn-batches` batches per partition through
//! the produce pipeline (stamped with its producer id, epoch and sequences,
//! and the transactional attribute), a barrier until every one of them is
//! acknowledged, and EndTxn(commit). The EndTxn round trip is the commit
//! latency; AddPartitionsToTxn, from first request to acceptance, is the
//! begin latency, which includes the retries while the previous commit's
//! markers are still being written (the coordinator answers
//! CONCURRENT_TRANSACTIONS until they are stored). Every error fails the
//! run: a transaction left open would hold back the partitions' last
//! stable offset and measure nothing.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use kafka_protocol::messages::{AddPartitionsToTxnRequest, EndTxnRequest};
use serde_json::{Value, json};

use super::batch::IdempotentProducer;
use super::control::{Attempt, CONCURRENT_TRANSACTIONS, Control};
use super::stats::{Recorder, round};
use super::wire::{self, InitProducer, TxnProducer};
use crate::admin::describe_error;

/// The transaction timeout asked for: far above any transaction of the
/// bench (one transaction is at most a few seconds of sends), below the
/// broker's default maximum (`transactions.max_timeout_ms`, 15 min).
const TRANSACTION_TIMEOUT_MS: i32 = 60_000;
/// The pause before asking AddPartitionsToTxn again after
/// CONCURRENT_TRANSACTIONS. Kafka's Java client waits 20 ms here; a
/// shorter pause makes the begin latency show the broker's turnaround (the
/// markers' fsyncs) rather than the client's back-off.
const CONCURRENT_TRANSACTIONS_BACKOFF: Duration = Duration::from_millis(2);
/// AddPartitionsToTxn's answer for the partitions it did not try because
/// another one failed (that one's error is the cause).
const OPERATION_NOT_ATTEMPTED: i16 = 55;

/// One producer's transactions and their figures.
pub struct Transactions {
    transactional_id: String,
    producer_id: i64,
    producer_epoch: i16,
    topic: String,
    partitions: Vec<i32>,
    batches_per_transaction: usize,
    /// Batches still to send in the open transaction; 0 when none is open.
    batches_left: usize,
    pub figures: TxnFigures,
}

/// Commit and begin latencies, over the transactions whose EndTxn (or
/// AddPartitionsToTxn) was sent in the measured window.
#[derive(Default)]
pub struct TxnFigures {
    /// EndTxn(commit) round trips; `requests` counts the transactions.
    pub commits: Recorder,
    /// AddPartitionsToTxn from first request to acceptance.
    pub begins: Recorder,
    /// CONCURRENT_TRANSACTIONS answers to AddPartitionsToTxn.
    pub begin_retries: u64,
    /// When the last counted commit was answered: a transaction's records
    /// count once committed, so the measured time runs to here.
    pub last_commit: Option<Instant>,
}

impl TxnFigures {
    pub fn merge(&mut self, other: TxnFigures) {
        self.commits.merge(other.commits);
        self.begins.merge(other.begins);
        self.begin_retries += other.begin_retries;
        self.last_commit = self.last_commit.max(other.last_commit);
    }

    pub fn transactions(&self) -> u64 {
        self.commits.requests
    }

    pub fn to_json(&self) -> Value {
        json!({
            "transactions": self.transactions(),
            "commit_p50_ms": round(self.commits.percentile_ms(0.50)),
            "commit_p90_ms": round(self.commits.percentile_ms(0.90)),
            "commit_p99_ms": round(self.commits.percentile_ms(0.99)),
            "commit_max_ms": round(self.commits.percentile_ms(1.0)),
            "begin_p50_ms": round(self.begins.percentile_ms(0.50)),
            "begin_p99_ms": round(self.begins.percentile_ms(0.99)),
            "begin_retries": self.begin_retries,
        })
    }

    pub fn to_text(&self) -> String {
        format!(
            "  commit       p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms ({} transactions, \
             EndTxn round trip)\n  begin        p50 {:.3} ms  p99 {:.3} ms ({} \
             CONCURRENT_TRANSACTIONS retries while markers were written)\n",
            self.commits.percentile_ms(0.50),
            self.commits.percentile_ms(0.90),
            self.commits.percentile_ms(0.99),
            self.commits.percentile_ms(1.0),
            self.transactions(),
            self.begins.percentile_ms(0.50),
            self.begins.percentile_ms(0.99),
            self.begin_retries,
        )
    }
}

/// What a transactional producer is: its id, and what each transaction
/// writes.
pub struct TxnPlan {
    pub transactional_id: String,
    pub topic: String,
    pub partitions: Vec<i32>,
    pub batches_per_partition: usize,
}

impl Transactions {
    /// Find the id's coordinator and take its producer id and epoch, on
    /// `stream` before anything else is sent there. Returns the
    /// transactions and the stamps of their batches.
    pub fn start(
        control: &mut Control,
        stream: &mut TcpStream,
        plan: TxnPlan,
    ) -> anyhow::Result<(Transactions, IdempotentProducer)> {
        assert!(
            plan.batches_per_partition > 0,
            "--txn-batches is at least 1"
        );
        assert!(!plan.partitions.is_empty(), "a producer writes a partition");
        control.find_transaction_coordinator(stream, &plan.transactional_id)?;
        let (producer_id, producer_epoch) = control.init_producer_id(
            stream,
            InitProducer::Transactional {
                transactional_id: &plan.transactional_id,
                transaction_timeout_ms: TRANSACTION_TIMEOUT_MS,
            },
        )?;
        let stamps =
            IdempotentProducer::transactional(producer_id, producer_epoch, plan.partitions.len());
        let transactions = Transactions {
            producer_id,
            producer_epoch,
            batches_per_transaction: plan.batches_per_partition * plan.partitions.len(),
            transactional_id: plan.transactional_id,
            topic: plan.topic,
            partitions: plan.partitions,
            batches_left: 0,
            figures: TxnFigures::default(),
        };
        Ok((transactions, stamps))
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    pub fn is_open(&self) -> bool {
        self.batches_left > 0
    }

    fn producer(&self) -> TxnProducer<'_> {
        TxnProducer {
            transactional_id: &self.transactional_id,
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
        }
    }

    /// Open a transaction with all of the producer's partitions
    /// (AddPartitionsToTxn v3), retrying while the previous one's markers
    /// are written. Only while nothing is in flight on `stream`.
    pub fn begin(
        &mut self,
        control: &mut Control,
        stream: &mut TcpStream,
        measure_from: Instant,
    ) -> anyhow::Result<()> {
        assert!(!self.is_open(), "one transaction at a time");
        let sent = Instant::now();
        let producer = self.producer();
        let (topic, partitions) = (&self.topic, &self.partitions);
        let ((), retries) = control.retrying(
            "AddPartitionsToTxn",
            CONCURRENT_TRANSACTIONS_BACKOFF,
            |control| {
                let response = control.call::<AddPartitionsToTxnRequest>(
                    stream,
                    wire::ADD_PARTITIONS_TO_TXN_VERSION,
                    |correlation_id| {
                        wire::add_partitions_to_txn_request(
                            producer,
                            topic,
                            partitions,
                            correlation_id,
                        )
                    },
                )?;
                let results: Vec<(i32, i16)> = response
                    .results_by_topic_v3_and_below
                    .iter()
                    .flat_map(|topic| topic.results_by_partition.iter())
                    .map(|result| (result.partition_index, result.partition_error_code))
                    .collect();
                added(&results, partitions.len()).map_err(|error| {
                    anyhow::anyhow!(
                        "AddPartitionsToTxn for {} ({topic} {partitions:?}) from {}: {error}",
                        producer.transactional_id,
                        control.address()
                    )
                })
            },
        )?;
        if sent >= measure_from {
            self.figures.begins.latency(sent.elapsed());
            self.figures.begin_retries += retries;
        }
        self.batches_left = self.batches_per_transaction;
        Ok(())
    }

    /// Count one batch sent in the open transaction; true when it was the
    /// last, so the transaction is due to commit.
    pub fn sent(&mut self) -> bool {
        assert!(self.is_open(), "batches are sent in a transaction");
        self.batches_left -= 1;
        self.batches_left == 0
    }

    /// Commit the transaction (EndTxn v3) once every batch of it is
    /// acknowledged; only while nothing is in flight on `stream`.
    pub fn commit(
        &mut self,
        control: &mut Control,
        stream: &mut TcpStream,
        measure_from: Instant,
    ) -> anyhow::Result<()> {
        assert!(!self.is_open(), "every batch of the transaction was sent");
        let sent = Instant::now();
        let producer = self.producer();
        let response =
            control.call::<EndTxnRequest>(stream, wire::END_TXN_VERSION, |correlation_id| {
                wire::end_txn_request(producer, true, correlation_id)
            })?;
        let answered = Instant::now();
        if response.error_code != 0 {
            anyhow::bail!(
                "EndTxn(commit) for {} from {} failed: {}",
                self.transactional_id,
                control.address(),
                describe_error(response.error_code, None)
            );
        }
        if sent >= measure_from {
            self.figures.commits.latency(answered.duration_since(sent));
            self.figures.commits.requests += 1;
            self.figures.last_commit = Some(answered);
        }
        Ok(())
    }
}

/// Judge AddPartitionsToTxn's per-partition answers for `expected`
/// partitions: done when all were added, retry when the id is busy, and
/// the first other error otherwise (OPERATION_NOT_ATTEMPTED only says
/// another partition failed).
fn added(results: &[(i32, i16)], expected: usize) -> Result<Attempt<()>, String> {
    if let Some((partition, code)) = results
        .iter()
        .find(|(_, code)| !matches!(*code, 0 | CONCURRENT_TRANSACTIONS | OPERATION_NOT_ATTEMPTED))
    {
        return Err(format!(
            "partition {partition}: {}",
            describe_error(*code, None)
        ));
    }
    if results
        .iter()
        .any(|(_, code)| *code == CONCURRENT_TRANSACTIONS)
    {
        return Ok(Attempt::Retry(CONCURRENT_TRANSACTIONS));
    }
    if let Some((partition, _)) = results.iter().find(|(_, code)| *code != 0) {
        return Err(format!(
            "partition {partition}: OPERATION_NOT_ATTEMPTED with no failed partition"
        ));
    }
    if results.len() != expected {
        return Err(format!(
            "{} partition results for {expected} partitions",
            results.len()
        ));
    }
    Ok(Attempt::Done(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(results: &[(i32, i16)]) -> Result<&'static str, String> {
        added(results, 2).map(|attempt| match attempt {
            Attempt::Done(()) => "done",
            Attempt::Retry(_) => "retry",
        })
    }

    #[test]
    fn add_partitions_retries_only_while_the_id_is_busy() {
        assert_eq!(judged(&[(0, 0), (1, 0)]), Ok("done"));
        assert_eq!(judged(&[(0, 51), (1, 51)]), Ok("retry"));
        assert_eq!(judged(&[(0, 51), (1, 55)]), Ok("retry"));
        // Another error is fatal, even beside a busy partition.
        let fenced = judged(&[(0, 55), (1, 90)]).unwrap_err();
        assert!(fenced.contains("partition 1"), "{fenced}");
        assert!(judged(&[(0, 51), (1, 3)]).is_err());
        // An answer that leaves a partition out adds nothing.
        assert!(judged(&[(0, 0)]).is_err());
        assert!(judged(&[(0, 0), (1, 55)]).is_err());
    }
}
