"""kafka-python 3.x's *default* KafkaProducer against sluice (issue 13).

Since kafka-python 3.0 (KIP-679 defaults) a plain
`KafkaProducer(bootstrap_servers=...)` is idempotent: it calls InitProducerId
before its first Produce and stamps every batch with the producer id, epoch
and sequence. Sends COUNT records round-robin over PARTITIONS partitions of
TOPIC (value "<partition>-<sequence within partition>"), flushes, and prints
one JSON report on stdout: acked [{partition, offset, value}], failed, error.

Usage: kafka_python_default_producer.py BOOTSTRAP TOPIC PARTITIONS COUNT
"""

import json
import logging
import sys

import kafka
from kafka import KafkaProducer

WAIT_SECONDS = 30


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    partitions, count = int(sys.argv[3]), int(sys.argv[4])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = {"client": f"kafka-python {kafka.__version__}", "acked": [], "failed": [], "error": None}
    producer = None
    try:
        # The defaults, exactly as a user writes it: no idempotence setting.
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        report["idempotent"] = producer.config["enable_idempotence"]
        sent = []
        next_sequence = [0] * partitions
        for index in range(count):
            partition = index % partitions
            value = f"{partition}-{next_sequence[partition]}"
            next_sequence[partition] += 1
            sent.append((value, producer.send(topic, value=value.encode(), partition=partition)))
        producer.flush(timeout=WAIT_SECONDS)
        for value, future in sent:
            try:
                metadata = future.get(timeout=WAIT_SECONDS)
                report["acked"].append(
                    {"partition": metadata.partition, "offset": metadata.offset, "value": value}
                )
            except Exception as error:  # noqa: BLE001 - every failure goes into the report
                report["failed"].append(f"{value}: {type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001
        report["error"] = f"{type(error).__name__}: {error}"
    finally:
        if producer is not None:
            producer.close(timeout=5)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
