"""Two confluent-kafka transactional producers with one transactional.id
(issue 13, KIP-98 fencing).

The first begins a transaction and produces RECORDS records ("first-...")
round-robin over PARTITIONS partitions of TOPIC, flushed, so they are stored
in an open transaction. Then the second calls init_transactions(), which
must fence the first and abort its transaction. The first then produces
RECORDS more ("late-...") and tries to commit: it must fail, fatally. Last the
second commits a transaction of its own ("second-..."). Prints the report
described in txn_report.py; the first's transaction has outcome "unknown"
unless its commit returned.

Usage: confluent_txn_fencing.py BOOTSTRAP TOPIC PARTITIONS RECORDS
"""

import sys

from confluent_kafka import Producer

import txn_report

CALL_TIMEOUT_SECONDS = 30


def producer(bootstrap, topic, name, report):
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"sluice-tests-{topic}",
            "linger.ms": 5,
            "error_cb": lambda error: report.error(f"{name} error_cb", error),
        }
    )


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    partitions, records = int(sys.argv[3]), int(sys.argv[4])
    report = txn_report.Report()
    at = "first init_transactions"
    try:
        first = producer(bootstrap, topic, "first", report)
        first.init_transactions(CALL_TIMEOUT_SECONDS)
        first.begin_transaction()
        at = "first produce"
        first_values = txn_report.produce(first, topic, "first", partitions, records)
        remaining = first.flush(CALL_TIMEOUT_SECONDS)
        if remaining:
            raise RuntimeError(f"{remaining} of the first's records unacknowledged after flush")
        print("first-produced", file=sys.stderr, flush=True)

        at = "second init_transactions"
        second = producer(bootstrap, topic, "second", report)
        second.init_transactions(CALL_TIMEOUT_SECONDS)
        print("second-initialised", file=sys.stderr, flush=True)

        # The fenced producer does not know yet: it goes on with its transaction.
        outcome = "unknown"
        try:
            at = "first produce after fencing"
            first_values += txn_report.produce(first, topic, "late", partitions, records)
            at = "first commit_transaction"
            first.commit_transaction(CALL_TIMEOUT_SECONDS)
            outcome = "committed"
        except Exception as error:  # noqa: BLE001 - the expected failure, reported
            report.error(at, error)
        report.transaction("first", first_values, outcome)

        at = "second begin_transaction"
        second.begin_transaction()
        at = "second produce"
        second_values = txn_report.produce(second, topic, "second", partitions, records)
        at = "second commit_transaction"
        second.commit_transaction(CALL_TIMEOUT_SECONDS)
        report.transaction("second", second_values, "committed")
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report.stopped(at, error)
    report.print()


if __name__ == "__main__":
    main()
