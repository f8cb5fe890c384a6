"""A confluent-kafka transactional producer that begins a transaction,
produces RECORDS records ("abandoned-<partition>-<index>") round-robin over
PARTITIONS partitions of TOPIC, flushes them (so they are stored in the open
transaction), writes "produced" to stderr and then waits, never ending the
transaction, until the test kills it with SIGKILL (issue 13). The
coordinator must abort the transaction after TIMEOUT_MS
(transaction.timeout.ms). Prints the report described in txn_report.py only
if stdin closes first or something fails.

Usage: confluent_txn_abandoned.py BOOTSTRAP TOPIC PARTITIONS RECORDS TIMEOUT_MS
"""

import sys

from confluent_kafka import Producer

import txn_report

CALL_TIMEOUT_SECONDS = 30


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    partitions, records, timeout_ms = (int(argument) for argument in sys.argv[3:6])
    report = txn_report.Report()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"sluice-tests-{topic}",
            "transaction.timeout.ms": timeout_ms,
            "linger.ms": 5,
            "error_cb": report.on_error,
        }
    )
    at = "init_transactions"
    try:
        producer.init_transactions(CALL_TIMEOUT_SECONDS)
        at = "begin_transaction"
        producer.begin_transaction()
        at = "produce"
        values = txn_report.produce(producer, topic, "abandoned", partitions, records)
        remaining = producer.flush(CALL_TIMEOUT_SECONDS)
        if remaining:
            raise RuntimeError(f"{remaining} records unacknowledged after flush")
        report.transaction("abandoned", values, "open")
        print("produced", file=sys.stderr, flush=True)
        sys.stdin.readline()
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report.stopped(at, error)
    report.print()


if __name__ == "__main__":
    main()
