"""aiokafka's AIOKafkaProducer(enable_idempotence=True) against sluice (issue 13).

Sends COUNT records round-robin over PARTITIONS partitions of TOPIC (value
"<partition>-<sequence within partition>"), waits for every acknowledgement,
and prints one JSON report on stdout: acked [{partition, offset, value}],
failed, error.

Usage: aiokafka_idempotent_producer.py BOOTSTRAP TOPIC PARTITIONS COUNT
"""

import asyncio
import json
import logging
import sys

import aiokafka
from aiokafka import AIOKafkaProducer

WAIT_SECONDS = 30


async def produce(bootstrap, topic, partitions, count, report):
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    try:
        await producer.start()
        sent = []
        next_sequence = [0] * partitions
        for index in range(count):
            partition = index % partitions
            value = f"{partition}-{next_sequence[partition]}"
            next_sequence[partition] += 1
            # send() enqueues and returns a future of the acknowledgement.
            sent.append((value, await producer.send(topic, value=value.encode(), partition=partition)))
        for value, future in sent:
            try:
                metadata = await asyncio.wait_for(future, WAIT_SECONDS)
                report["acked"].append(
                    {"partition": metadata.partition, "offset": metadata.offset, "value": value}
                )
            except Exception as error:  # noqa: BLE001 - every failure goes into the report
                report["failed"].append(f"{value}: {type(error).__name__}: {error}")
    finally:
        await producer.stop()


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    partitions, count = int(sys.argv[3]), int(sys.argv[4])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = {"client": f"aiokafka {aiokafka.__version__}", "acked": [], "failed": [], "error": None}
    try:
        asyncio.run(asyncio.wait_for(produce(bootstrap, topic, partitions, count, report), 2 * WAIT_SECONDS))
    except Exception as error:  # noqa: BLE001
        report["error"] = f"{type(error).__name__}: {error}"
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
