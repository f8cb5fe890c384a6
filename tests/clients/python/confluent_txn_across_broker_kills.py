"""confluent-kafka's transactional producer committing transactions in a loop
while the broker is killed with kill -9 and restarted under it (issue 13).

Each transaction "t<n>" produces RECORDS records round-robin over PARTITIONS
partitions of TOPIC, flushes them, writes "stored t<n>" to stderr, waits
STORED_PAUSE_SECONDS with the transaction open and its records stored, and
commits; it writes "<outcome> t<n>" to stderr when the transaction has
ended. It handles errors as librdkafka
documents them: a retriable error from commit_transaction() or
abort_transaction() is retried by calling it again, one that requires an
abort is answered by abort_transaction(), and a fatal one by a new producer
with the same transactional.id (its init_transactions() fences the old one),
the transaction's outcome then being "unknown": the broker may have
committed or aborted it, all or nothing. Runs until a line or end of file
arrives on stdin, then prints the report described in txn_report.py.

Usage: confluent_txn_across_broker_kills.py BOOTSTRAP TOPIC PARTITIONS RECORDS
"""

import sys
import threading
import time

from confluent_kafka import KafkaException, Producer

import txn_report

# One call (init, commit, abort) waits this long before it times out, which
# librdkafka reports as retriable.
CALL_TIMEOUT_SECONDS = 10
# A call that keeps failing retriably fails the script after this long: the
# broker is down for far less.
RETRY_SECONDS_MAX = 45
# The pause between a transaction's records being stored and its commit.
STORED_PAUSE_SECONDS = 0.1


class Fatal(Exception):
    """The producer can do nothing more: make a new one."""


def retried(report, at, call):
    """Call CALL until it returns; retry while librdkafka says retriable."""
    deadline = time.monotonic() + RETRY_SECONDS_MAX
    while True:
        try:
            return call(CALL_TIMEOUT_SECONDS)
        except KafkaException as exception:
            error = report.error(at, exception)
            if error.fatal():
                raise Fatal(at) from exception
            if not error.retriable() or time.monotonic() > deadline:
                raise


def new_producer(bootstrap, topic, report):
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"sluice-tests-{topic}",
            "linger.ms": 5,
            # Reconnect quickly to the restarted broker (defaults back off to 10 s).
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "error_cb": report.on_error,
        }
    )
    retried(report, "init_transactions", producer.init_transactions)
    return producer


def one_transaction(producer, topic, label, partitions, records, report):
    """Run transaction LABEL; returns (values, outcome)."""
    values = []
    try:
        producer.begin_transaction()
        values = txn_report.produce(producer, topic, label, partitions, records)
        # Flushed first, the records are stored in the open transaction
        # (commit_transaction() flushes whatever remains); the pause is the
        # test's moment to kill the broker with the transaction open.
        producer.flush(CALL_TIMEOUT_SECONDS)
        print(f"stored {label}", file=sys.stderr, flush=True)
        time.sleep(STORED_PAUSE_SECONDS)
        retried(report, f"{label} commit_transaction", producer.commit_transaction)
        return values, "committed"
    except Fatal:
        return values, "unknown"
    except KafkaException as exception:
        error = report.error(f"{label}", exception)
        if error.fatal():
            return values, "unknown"
        # Abortable, or anything else that is not fatal: abort (KIP-98).
        try:
            retried(report, f"{label} abort_transaction", producer.abort_transaction)
        except Fatal:
            return values, "unknown"
        return values, "aborted"


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    partitions, records = int(sys.argv[3]), int(sys.argv[4])
    report = txn_report.Report()
    stop = threading.Event()

    def wait_for_stop():
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    at = "init_transactions"
    try:
        producer = None
        number = 0
        while not stop.is_set():
            if producer is None:
                at = "init_transactions"
                try:
                    producer = new_producer(bootstrap, topic, report)
                except Fatal:
                    continue
            label = f"t{number}"
            number += 1
            at = label
            values, outcome = one_transaction(producer, topic, label, partitions, records, report)
            report.transaction(label, values, outcome)
            print(f"{outcome} {label}", file=sys.stderr, flush=True)
            if outcome == "unknown":
                producer = None
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report.stopped(at, error)
    report.print()


if __name__ == "__main__":
    main()
