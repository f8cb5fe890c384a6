"""A confluent-kafka consumer that reads every partition of TOPIC from offset
0 to its end at ISOLATION ("read_committed" or "read_uncommitted") and prints
one JSON report on stdout: client, records [{partition, offset, value}] in the
order consumed, error (issue 13).

The end is librdkafka's partition EOF: the high watermark for
read_uncommitted, the last stable offset for read_committed, so a
read_committed reader stops in front of an open transaction.

Usage: confluent_consumer.py BOOTSTRAP TOPIC PARTITIONS ISOLATION
"""

import json
import sys
import time

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, TopicPartition

READ_TIMEOUT_SECONDS = 30


def main():
    bootstrap, topic, partitions, isolation = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    report = {
        "client": f"confluent-kafka {confluent_kafka.__version__} librdkafka {confluent_kafka.libversion()[0]}",
        "records": [],
        "error": None,
    }
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # librdkafka wants a group id even for assign(); nothing is committed.
            "group.id": "sluice-tests",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
            "fetch.wait.max.ms": 100,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, 0) for partition in range(partitions)])
        at_end = set()
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        while len(at_end) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only partitions {sorted(at_end)} reached their end in {READ_TIMEOUT_SECONDS} s")
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                    continue
                raise confluent_kafka.KafkaException(message.error())
            at_end.discard(message.partition())
            report["records"].append(
                {"partition": message.partition(), "offset": message.offset(), "value": message.value().decode()}
            )
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report["error"] = f"{type(error).__name__}: {error}"
    finally:
        consumer.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
