"""The report the transactional client scripts print (issue 13), shared by
the confluent-kafka scripts in this directory; tests/integration/txn_clients.rs
parses it.

One JSON object on the last stdout line:
  client        client library and version
  transactions  [{label, values, outcome}] in the order they ended; values in
                the order they were produced, each "<label>-<partition>-<index>"
                (index counts within the transaction and partition); outcome is
                "committed" or "aborted" when commit_transaction() or
                abort_transaction() returned, "unknown" when the producer hit a
                fatal error first (the broker may complete either way, all or
                nothing), "open" when the script never ended it
  errors        [{at, name, code, fatal, retriable, abortable, message}]: every
                error the client raised or reported, in order
  error         the error that stopped the script, or null
"""

import json
import sys

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException


def client_name():
    return f"confluent-kafka {confluent_kafka.__version__} librdkafka {confluent_kafka.libversion()[0]}"


def values(label, partitions, count):
    """(partition, value) pairs for COUNT records round-robin over PARTITIONS."""
    within = [0] * partitions
    pairs = []
    for index in range(count):
        partition = index % partitions
        pairs.append((partition, f"{label}-{partition}-{within[partition]}"))
        within[partition] += 1
    return pairs


def produce(producer, topic, label, partitions, count):
    """Produce one transaction's records; returns their values."""
    pairs = values(label, partitions, count)
    for partition, value in pairs:
        producer.produce(topic, value=value.encode(), partition=partition)
    producer.poll(0)
    return [value for _, value in pairs]


class Report:
    def __init__(self):
        self.report = {"client": client_name(), "transactions": [], "errors": [], "error": None}

    def on_error(self, error):
        """confluent-kafka's error_cb."""
        self.error("error_cb", error)

    def error(self, at, error):
        """Record a KafkaError, or an exception (KafkaException or other)."""
        if isinstance(error, KafkaException) and error.args and isinstance(error.args[0], KafkaError):
            error = error.args[0]
        if isinstance(error, KafkaError):
            entry = {
                "at": at,
                "name": error.name(),
                "code": error.code(),
                "fatal": error.fatal(),
                "retriable": error.retriable(),
                "abortable": error.txn_requires_abort(),
                "message": error.str(),
            }
        else:
            entry = {
                "at": at,
                "name": type(error).__name__,
                "code": None,
                "fatal": False,
                "retriable": False,
                "abortable": False,
                "message": str(error),
            }
        self.report["errors"].append(entry)
        print(f"{at}: {entry}", file=sys.stderr, flush=True)
        return error

    def transaction(self, label, values, outcome):
        self.report["transactions"].append({"label": label, "values": values, "outcome": outcome})

    def stopped(self, at, error):
        self.error(at, error)
        self.report["error"] = f"{at}: {type(error).__name__}: {error}"

    def print(self):
        print(json.dumps(self.report), flush=True)
