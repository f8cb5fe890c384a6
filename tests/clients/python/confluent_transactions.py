"""confluent-kafka's transactional producer (issue 13): TRANSACTIONS
transactions of RECORDS records each, round-robin over PARTITIONS partitions of
TOPIC, committing the even-numbered ones ("t0", "t2", ...) and aborting the
odd-numbered ones (after flushing their records, so that they are stored
and hidden by the abort marker). Prints the report described in
txn_report.py; stops at the first error.

With UNFLUSHED_ABORT_MS, an aborted transaction is aborted that many ms
after producing, with no flush, so abort_transaction() purges what is still
queued (the breaker trial's finding): each such transaction begins right
after a commit, its AddPartitionsToTxn reaches the coordinator while the
committed one's markers are being written, and librdkafka counts an
AddPartitionsToTxn answered CONCURRENT_TRANSACTIONS as one that may have
added the partition, so the abort sends EndTxn(abort) whatever the
coordinator did.

Usage: confluent_transactions.py BOOTSTRAP TOPIC PARTITIONS TRANSACTIONS RECORDS [UNFLUSHED_ABORT_MS]
"""

import sys
import time

from confluent_kafka import Producer

import txn_report

# Each call that talks to the coordinator may take this long.
CALL_TIMEOUT_SECONDS = 30


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    partitions, transactions, records = (int(argument) for argument in sys.argv[3:6])
    unflushed_abort_ms = int(sys.argv[6]) if len(sys.argv) > 6 else None
    report = txn_report.Report()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"sluice-tests-{topic}",
            "linger.ms": 5,
            "error_cb": report.on_error,
        }
    )
    at = "init_transactions"
    try:
        producer.init_transactions(CALL_TIMEOUT_SECONDS)
        for number in range(transactions):
            label = f"t{number}"
            at = f"{label} begin_transaction"
            producer.begin_transaction()
            at = f"{label} produce"
            values = txn_report.produce(producer, topic, label, partitions, records)
            if number % 2 == 0:
                at = f"{label} commit_transaction"
                producer.commit_transaction(CALL_TIMEOUT_SECONDS)
                report.transaction(label, values, "committed")
            elif unflushed_abort_ms is not None:
                time.sleep(unflushed_abort_ms / 1000)
                at = f"{label} abort_transaction"
                producer.abort_transaction(CALL_TIMEOUT_SECONDS)
                report.transaction(label, values, "aborted")
            else:
                # abort_transaction() drops what is still queued; flushed
                # first, the records are stored and the abort marker is what
                # hides them.
                at = f"{label} flush"
                remaining = producer.flush(CALL_TIMEOUT_SECONDS)
                if remaining:
                    raise RuntimeError(f"{remaining} records unacknowledged after flush")
                at = f"{label} abort_transaction"
                producer.abort_transaction(CALL_TIMEOUT_SECONDS)
                report.transaction(label, values, "aborted")
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report.stopped(at, error)
    report.print()


if __name__ == "__main__":
    main()
