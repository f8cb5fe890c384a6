"""A kafka-python consumer that fails every record (issue 18: retry and
dead letters), written as a user of sluice writes one: plain KafkaProducer
and KafkaConsumer calls, no library of sluice's.

Produces COUNT records ("r0", "r1", ...) to partition 0 of TOPIC. A consumer
of group GROUP subscribed to TOPIC and GROUP.retry fails each record it
gets: it produces it to GROUP.retry with the headers it received, adding, on
a record from TOPIC, sluice.retry.topic/partition/offset naming it. Another
consumer reads GROUP.dlq. Stops when COUNT dead letters came (or after
TIMEOUT seconds), waits QUIET seconds more for anything extra, and prints one
JSON report on stdout:

  client, error,
  seen: [{value, topic, partition, offset, times, arrived_ms}] (every record
        the group consumed, times = its sluice.reconsume.times or 0),
  sent: [{value, times, sent_ms}] (every retry sent, times as received),
  dead: [{value, partition, offset, headers: {name: value}}],
  origin: {value: offset in TOPIC}

Usage: kafka_python_retry_consumer.py BOOTSTRAP TOPIC GROUP COUNT TIMEOUT QUIET
"""

import json
import logging
import sys
import time

import kafka
from kafka import KafkaConsumer, KafkaProducer


def now_ms():
    return int(time.time() * 1000)


def header(headers, name):
    for key, value in headers or []:
        if key == name:
            return value.decode()
    return None


def main():
    bootstrap, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
    count, timeout, quiet = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
    retry_topic, dlq_topic = f"{group}.retry", f"{group}.dlq"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = {
        "client": f"kafka-python {kafka.__version__}",
        "error": None,
        "seen": [],
        "sent": [],
        "dead": [],
        "origin": {},
    }
    producer = consumer = dead_letters = None
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for index in range(count):
            value = f"r{index}"
            metadata = producer.send(topic, key=b"k", value=value.encode(), partition=0).get(30)
            report["origin"][value] = metadata.offset
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
        )
        consumer.subscribe([topic, retry_topic])
        dead_letters = KafkaConsumer(
            dlq_topic,
            bootstrap_servers=bootstrap,
            group_id=f"{group}-dlq-reader",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=50,
            metadata_max_age_ms=500,
        )
        deadline = time.time() + timeout
        quiet_until = None
        while time.time() < (quiet_until or deadline):
            for records in consumer.poll(timeout_ms=50).values():
                for record in records:
                    arrived = now_ms()
                    value = record.value.decode()
                    times = int(header(record.headers, "sluice.reconsume.times") or 0)
                    report["seen"].append(
                        {
                            "value": value,
                            "topic": record.topic,
                            "partition": record.partition,
                            "offset": record.offset,
                            "times": times,
                            "arrived_ms": arrived,
                        }
                    )
                    # The record failed: send it back with its headers.
                    headers = list(record.headers or [])
                    if record.topic == topic:
                        headers += [
                            ("sluice.retry.topic", record.topic.encode()),
                            ("sluice.retry.partition", str(record.partition).encode()),
                            ("sluice.retry.offset", str(record.offset).encode()),
                        ]
                    report["sent"].append({"value": value, "times": times, "sent_ms": now_ms()})
                    producer.send(retry_topic, key=record.key, value=record.value, headers=headers)
                    producer.flush(30)
            for records in dead_letters.poll(timeout_ms=10).values():
                for record in records:
                    report["dead"].append(
                        {
                            "value": record.value.decode(),
                            "partition": record.partition,
                            "offset": record.offset,
                            "headers": {key: value.decode() for key, value in record.headers},
                        }
                    )
            if quiet_until is None and len(report["dead"]) >= count:
                quiet_until = time.time() + quiet
    except Exception as error:  # noqa: BLE001 - every failure goes into the report
        report["error"] = f"{type(error).__name__}: {error}"
    finally:
        for client in (consumer, dead_letters, producer):
            if client is not None:
                client.close()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
