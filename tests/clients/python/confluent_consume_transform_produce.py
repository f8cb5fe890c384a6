"""confluent-kafka consume-transform-produce with exactly-once semantics
(issue 13, design 5.3 item 6): a consumer in GROUP (read_committed, no auto
commit, subscribed to INPUT) and a transactional producer. Each transaction
takes one batch of up to BATCH records, writes each "<label>-<partition>-<index>"
to the same partition of OUTPUT as "ctp-<partition>-<index>", and commits the
consumer's positions with it (`send_offsets_to_transaction`). Every
ABORT_EVERY-th transaction is aborted instead (its records flushed first, so
that they are stored and hidden by the abort marker); then the consumer is
rewound to the group's committed offsets, as an exactly-once application
does, and the batch is processed again in a later transaction.

Stops when the consumer has consumed every partition of INPUT to its end
and the last transaction committed. Prints the report described in
txn_report.py (one transaction per batch, labelled "t<number>", with its
output values); stops at the first error.

Usage: confluent_consume_transform_produce.py BOOTSTRAP INPUT OUTPUT PARTITIONS GROUP BATCH ABORT_EVERY
"""

import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

import txn_report

# Each call that talks to a coordinator may take this long.
CALL_TIMEOUT_SECONDS = 30
# How long the whole input may take.
RUN_TIMEOUT_SECONDS = 60
# How long one consume() waits for a batch.
CONSUME_TIMEOUT_SECONDS = 0.5


def transformed(message):
    _, partition, index = message.value().decode().rsplit("-", 2)
    return f"ctp-{partition}-{index}"


def rewind(consumer, next_offsets):
    """Seek every assigned partition back to the group's committed offset
    (the beginning where none is committed), and note it in NEXT_OFFSETS."""
    for committed in consumer.committed(consumer.assignment(), CALL_TIMEOUT_SECONDS):
        if committed.error is not None:
            raise KafkaException(committed.error)
        offset = committed.offset if committed.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(committed.topic, committed.partition, offset))
        next_offsets[committed.partition] = max(committed.offset, 0)


def main():
    bootstrap, input_topic, output_topic = sys.argv[1:4]
    partitions = int(sys.argv[4])
    group = sys.argv[5]
    batch, abort_every = int(sys.argv[6]), int(sys.argv[7])
    report = txn_report.Report()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "error_cb": report.on_error,
        }
    )
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"sluice-tests-{group}",
            "linger.ms": 5,
            "error_cb": report.on_error,
        }
    )
    at = "init_transactions"
    try:
        producer.init_transactions(CALL_TIMEOUT_SECONDS)
        at = "get_watermark_offsets"
        ends = [
            consumer.get_watermark_offsets(TopicPartition(input_topic, partition), CALL_TIMEOUT_SECONDS)[1]
            for partition in range(partitions)
        ]
        consumer.subscribe([input_topic])
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        number = 0
        # The offset after the last record consumed (or sought) per
        # partition: after a seek, librdkafka's position() is unknown until
        # a record of the partition comes, and a rewound partition may be at
        # its end already.
        next_offsets = {}
        while [next_offsets.get(partition) for partition in range(partitions)] != ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the input was not consumed within {RUN_TIMEOUT_SECONDS} s")
            at = "consume"
            messages = consumer.consume(batch, CONSUME_TIMEOUT_SECONDS)
            for message in messages:
                if message.error() is not None:
                    raise KafkaException(message.error())
                next_offsets[message.partition()] = message.offset() + 1
            if not messages:
                continue
            label = f"t{number}"
            at = f"{label} begin_transaction"
            producer.begin_transaction()
            at = f"{label} produce"
            values = []
            for message in messages:
                value = transformed(message)
                producer.produce(output_topic, value=value.encode(), key=message.key(), partition=message.partition())
                values.append(value)
            producer.poll(0)
            at = f"{label} send_offsets_to_transaction"
            consumed = sorted({message.partition() for message in messages})
            producer.send_offsets_to_transaction(
                consumer.position([TopicPartition(input_topic, partition) for partition in consumed]),
                consumer.consumer_group_metadata(),
                CALL_TIMEOUT_SECONDS,
            )
            if number % abort_every == abort_every - 1:
                at = f"{label} flush"
                remaining = producer.flush(CALL_TIMEOUT_SECONDS)
                if remaining:
                    raise RuntimeError(f"{remaining} records unacknowledged after flush")
                at = f"{label} abort_transaction"
                producer.abort_transaction(CALL_TIMEOUT_SECONDS)
                report.transaction(label, values, "aborted")
                at = f"{label} rewind"
                rewind(consumer, next_offsets)
            else:
                at = f"{label} commit_transaction"
                producer.commit_transaction(CALL_TIMEOUT_SECONDS)
                report.transaction(label, values, "committed")
            print(f"{label} {report.report['transactions'][-1]['outcome']} {len(values)}", file=sys.stderr, flush=True)
            number += 1
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report.stopped(at, error)
    finally:
        consumer.close()
    report.print()


if __name__ == "__main__":
    main()
