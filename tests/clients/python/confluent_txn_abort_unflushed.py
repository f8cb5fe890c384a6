"""confluent-kafka's transactional producer aborting without a flush (the
breaker trial's finding): TRANSACTIONS transactions of RECORDS records each
on partition 0 of TOPIC, committing the even-numbered ones ("t0", "t2", ...)
and aborting the odd-numbered ones PAUSE_MS after producing their records,
with no flush first, so that abort_transaction() purges what is still
queued.

Each aborted transaction begins right after a commit: its
AddPartitionsToTxn reaches the coordinator while the committed one's
markers are being written. librdkafka counts an AddPartitionsToTxn answered
CONCURRENT_TRANSACTIONS as one that may have added the partition, so the
abort then sends EndTxn(abort) whatever the coordinator did.

Prints the report described in txn_report.py; stops at the first error.

Usage: confluent_txn_abort_unflushed.py BOOTSTRAP TOPIC TRANSACTIONS RECORDS PAUSE_MS
"""

import sys
import time

from confluent_kafka import Producer

import txn_report

# Each call that talks to the coordinator may take this long.
CALL_TIMEOUT_SECONDS = 30


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    transactions, records, pause_ms = (int(argument) for argument in sys.argv[3:6])
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
            values = txn_report.produce(producer, topic, label, 1, records)
            if number % 2 == 0:
                at = f"{label} commit_transaction"
                producer.commit_transaction(CALL_TIMEOUT_SECONDS)
                report.transaction(label, values, "committed")
            else:
                time.sleep(pause_ms / 1000)
                at = f"{label} abort_transaction"
                producer.abort_transaction(CALL_TIMEOUT_SECONDS)
                report.transaction(label, values, "aborted")
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report.stopped(at, error)
    report.print()


if __name__ == "__main__":
    main()
